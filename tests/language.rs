//! The workflow language against the real API server, Kafka and RabbitMQ, with `devset
//! controller` outside the cluster: approval stages (decided, rejected, timed out, across a
//! controller kill), expect stages on Kafka (RunStart, StageStart, Earliest, where, atMost,
//! captures flowing into a later publish) and RabbitMQ (a queue consumed, an exchange tapped),
//! `when`, `continueOnError` and `retryBackoff`. Messages come from independent clients (Kafka's
//! console producer, `amqp-publish`) and are checked with them; status is read with kubectl; the
//! event log through `devset api`.

mod common;

use common::{
    ApiProcess, ControllerProcess, TestNamespace, declare_queue, env, install_crds,
    runs::{stage_field, status, wait_phase},
    sqlite_store, unique, wait_until,
};
use std::{io::Write, process::Stdio, time::Duration};

const MINUTE: Duration = Duration::from_secs(60);

fn run_yaml(name: &str, workflow: &str, connector: &str, params: &str) -> String {
    format!(
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {name}}}\n\
         spec: {{workflowRef: {{name: {workflow}}}, connectorRef: {{name: {connector}}}, params: {{{params}}}}}\n"
    )
}

/// Produces `lines` (KEY<TAB>VALUE) to `topic` with Kafka's console producer.
fn produce(topic: &str, lines: &[String]) {
    let mut child = env()
        .command(common::repo().join("tests/bin/kafka-produce"))
        .args(["-k", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kafka-produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn order(id: &str, status: &str) -> String {
    format!("{id}\t{{\"orderId\":\"{id}\",\"status\":\"{status}\"}}")
}

/// The event log of a run through `devset api`, as (type, event JSON).
fn events(api: &ApiProcess, ns: &str, run: &str) -> Vec<serde_json::Value> {
    let path = format!("/api/v1/namespaces/{ns}/workflowruns/{run}/events?limit=1000");
    let (code, body) = common::http_get(api.port, &path).unwrap();
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    page["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn an_approval_waits_survives_a_controller_kill_and_is_decided_once() {
    install_crds();
    let ns = TestNamespace::new("approve");
    let before = unique("before");
    let after = unique("after");
    let mut controller = ControllerProcess::start(&ns.name, 1);
    env().apply(&ns.name, &env().connectors());
    env().apply(
        &ns.name,
        &format!(
            r#"
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: gated}}
spec:
  params: [{{name: orders, type: integer, default: 3}}]
  stages:
    - name: first
      publish: {{topic: {before}, count: "{{{{ params.orders }}}}", payload: 'o {{{{ seq }}}}'}}
    - name: go-live
      approval:
        message: "publish the rest after {{{{ stages.first.outputs.published }}}} orders?"
    - name: rest
      publish:
        topic: {after}
        count: 4
        payload: 'approved by {{{{ stages.go-live.outputs.user }}}}: {{{{ stages.go-live.outputs.comment }}}}'
---
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: plain}}
spec:
  stages: [{{name: wait, delay: {{duration: 300ms}}}}]
"#
        ),
    );
    env().apply(&ns.name, &run_yaml("gated-1", "gated", "kafka", ""));
    wait_phase(&ns.name, "gated-1", "WaitingForApproval", MINUTE);
    assert_eq!(
        stage_field(&ns.name, "gated-1", "go-live", "phase"),
        "WaitingForApproval"
    );
    assert_eq!(
        stage_field(&ns.name, "gated-1", "go-live", "message"),
        "publish the rest after 3 orders?"
    );
    // kubectl get runs shows it.
    let table = env().kubectl_ok(&["get", "runs", "-n", &ns.name]);
    assert!(table.contains("WaitingForApproval"), "{table}");
    // A run that only waits gives its slot back: with a limit of 1, another run completes.
    env().apply(&ns.name, &run_yaml("other", "plain", "kafka", ""));
    wait_phase(&ns.name, "other", "Completed", MINUTE);

    // The controller dies while the run waits; the decision comes meanwhile, through devset
    // api, from a ServiceAccount that holds the `approve` verb.
    controller.kill();
    let api = ApiProcess::start(&ns.name, &sqlite_store(&ns.name), "kubernetes");
    for args in [
        vec!["create", "serviceaccount", "alice"],
        vec![
            "create",
            "role",
            "approver",
            "--verb=approve,get",
            "--resource=workflowruns.devset.io",
        ],
        vec!["create", "rolebinding", "alice-approves", "--role=approver"],
    ] {
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        if args[1] == "rolebinding" {
            args.push(format!("--serviceaccount={}:alice", ns.name));
        }
        let mut full = vec!["-n".to_string(), ns.name.clone()];
        full.extend(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        env().kubectl_ok(&refs);
    }
    let token = env()
        .kubectl_ok(&["-n", &ns.name, "create", "token", "alice"])
        .trim()
        .to_owned();
    let alice = format!("system:serviceaccount:{}:alice", ns.name);
    let answer = reqwest::Client::new()
        .post(api.url(&format!(
            "/api/v1/namespaces/{}/workflowruns/gated-1/stages/go-live/approve",
            ns.name
        )))
        .bearer_auth(&token)
        .json(&serde_json::json!({"comment": "ship it"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    let _controller = ControllerProcess::start(&ns.name, 1);
    wait_phase(&ns.name, "gated-1", "Completed", MINUTE);
    assert_eq!(
        stage_field(&ns.name, "gated-1", "go-live", "approval.decision"),
        "Approved"
    );
    assert_eq!(
        stage_field(&ns.name, "gated-1", "go-live", "approval.user"),
        alice
    );
    assert_eq!(
        stage_field(&ns.name, "gated-1", "go-live", "outputs.comment"),
        "ship it"
    );
    assert_eq!(status(&ns.name, "gated-1", "{.status.progress}"), "3/3");
    assert_eq!(env().count("kafka-count", &before), 3);
    assert_eq!(
        env().count("kafka-count", &after),
        4,
        "the rest is published once"
    );
    let out = env().client("kafka-consume", &[&after, "1", "20"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        Some(format!("approved by {alice}: ship it").as_str())
    );
    // The decision is in the log once, naming the user.
    let reader = ApiProcess::start(&ns.name, &sqlite_store(&ns.name), "none");
    let log = events(&reader, &ns.name, "gated-1");
    let approved: Vec<_> = log
        .iter()
        .filter(|e| e["type"] == "stage.approved")
        .collect();
    assert_eq!(approved.len(), 1, "{log:#?}");
    assert_eq!(approved[0]["user"], alice.as_str());
    assert_eq!(approved[0]["message"], "ship it");
    assert!(log.iter().any(|e| e["type"] == "stage.waiting"));
    // A Kubernetes Event tells the phase changes.
    let evs = env().kubectl_ok(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "--field-selector",
        "involvedObject.name=gated-1",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(evs.contains("WaitingForApproval"), "{evs}");
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn rejections_and_timeouts_decide_as_configured() {
    install_crds();
    let ns = TestNamespace::new("reject");
    let _controller = ControllerProcess::start(&ns.name, 10);
    env().apply(&ns.name, &env().connectors());
    env().apply(
        &ns.name,
        r#"
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {name: ask}
spec:
  stages:
    - {name: gate, approval: {message: "go?"}}
    - {name: after, delay: {duration: 100ms}}
---
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {name: late-no}
spec:
  stages:
    - {name: gate, approval: {timeout: 2s}}
---
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {name: late-yes}
spec:
  stages:
    - {name: gate, approval: {timeout: 2s, onTimeout: Approve}}
    - {name: after, delay: {duration: 100ms}}
"#,
    );
    env().apply(&ns.name, &run_yaml("rejected", "ask", "kafka", ""));
    env().apply(&ns.name, &run_yaml("late-no", "late-no", "kafka", ""));
    env().apply(&ns.name, &run_yaml("late-yes", "late-yes", "kafka", ""));
    wait_phase(&ns.name, "rejected", "WaitingForApproval", MINUTE);
    env().kubectl_ok(&[
        "annotate",
        "-n",
        &ns.name,
        "workflowrun/rejected",
        r#"approval.devset.io/gate={"decision":"Rejected","user":"bob","comment":"not today"}"#,
    ]);
    wait_phase(&ns.name, "rejected", "Failed", MINUTE);
    assert_eq!(status(&ns.name, "rejected", "{.status.reason}"), "Rejected");
    assert_eq!(
        status(&ns.name, "rejected", "{.status.message}"),
        "stage \"gate\" failed: rejected by bob: not today"
    );
    assert_eq!(
        stage_field(&ns.name, "rejected", "gate", "reason"),
        "Rejected"
    );
    assert_eq!(
        stage_field(&ns.name, "rejected", "after", "phase"),
        "Skipped"
    );

    wait_phase(&ns.name, "late-no", "Failed", MINUTE);
    assert_eq!(status(&ns.name, "late-no", "{.status.reason}"), "Rejected");
    assert_eq!(
        stage_field(&ns.name, "late-no", "gate", "approval.user"),
        "devset:timeout"
    );
    wait_phase(&ns.name, "late-yes", "Completed", MINUTE);
    assert_eq!(
        stage_field(&ns.name, "late-yes", "gate", "approval.decision"),
        "Approved"
    );
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn when_continue_on_error_and_backoff() {
    install_crds();
    let ns = TestNamespace::new("when");
    let topic = unique("when");
    let empty = unique("empty");
    let _controller = ControllerProcess::start(&ns.name, 10);
    env().apply(&ns.name, &env().connectors());
    // An empty topic to expect on: created by producing nothing? Kafka auto-creates on first
    // metadata request only when allowed, so make it with one message the stage filters out.
    produce(&empty, &[order("x", "noise")]);
    env().apply(
        &ns.name,
        &format!(
            r#"
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: flow}}
spec:
  params: [{{name: region, default: eu}}]
  stages:
    - name: seed
      publish: {{topic: {topic}, count: 2, payload: 's {{{{ seq }}}}'}}
    - name: us-only
      when: params.region == "us"
      publish: {{topic: {topic}, count: 5}}
    - name: flaky
      continueOnError: true
      retries: 2
      retryBackoff: {{duration: 500ms, factor: 2, maxDuration: 10s}}
      expect: {{topic: {empty}, from: Earliest, where: 'payload.status == "paid"', timeout: 1s}}
    - name: last
      when: stages.flaky.phase == "Failed" && stages.seed.outputs.published == "2"
      publish: {{topic: {topic}, count: 1, payload: 'after {{{{ stages.flaky.outputs.read }}}}'}}
"#
        ),
    );
    env().apply(&ns.name, &run_yaml("w1", "flow", "kafka", ""));
    wait_phase(&ns.name, "w1", "Completed", MINUTE);
    assert_eq!(
        status(&ns.name, "w1", "{.status.reason}"),
        "CompletedWithFailures"
    );
    assert!(
        status(&ns.name, "w1", "{.status.message}").contains("flaky"),
        "{}",
        status(&ns.name, "w1", "{.status.message}")
    );
    assert_eq!(
        status(
            &ns.name,
            "w1",
            r#"{.status.conditions[?(@.type=="Succeeded")].status}/{.status.conditions[?(@.type=="Succeeded")].reason}"#
        ),
        "True/CompletedWithFailures"
    );
    assert_eq!(stage_field(&ns.name, "w1", "us-only", "phase"), "Skipped");
    assert_eq!(
        stage_field(&ns.name, "w1", "us-only", "reason"),
        "ConditionFalse"
    );
    assert_eq!(stage_field(&ns.name, "w1", "flaky", "phase"), "Failed");
    assert_eq!(stage_field(&ns.name, "w1", "flaky", "attempts"), "3");
    assert_eq!(
        stage_field(&ns.name, "w1", "flaky", "reason"),
        "ExpectationNotMet"
    );
    let msg = stage_field(&ns.name, "w1", "flaky", "message");
    assert!(
        msg.contains("matched 0 of 1 within 1s (1 messages read)"),
        "{msg}"
    );
    assert_eq!(stage_field(&ns.name, "w1", "last", "phase"), "Succeeded");
    assert_eq!(status(&ns.name, "w1", "{.status.progress}"), "4/4");
    // seed 2 + last 1; us-only published nothing.
    assert_eq!(env().count("kafka-count", &topic), 3);

    // Backoff: the attempts of `flaky` start at least timeout + 0.5s, then timeout + 1s apart.
    let api = ApiProcess::start(&ns.name, &sqlite_store(&ns.name), "none");
    let log = events(&api, &ns.name, "w1");
    let starts: Vec<jiff::Timestamp> = log
        .iter()
        .filter(|e| e["type"] == "stage.started" && e["stage"] == "flaky")
        .map(|e| e["time"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 3, "{log:#?}");
    let gap = |a: jiff::Timestamp, b: jiff::Timestamp| b.duration_since(a).as_secs_f64();
    assert!(gap(starts[0], starts[1]) >= 1.5, "{starts:?}");
    assert!(gap(starts[1], starts[2]) >= 2.0, "{starts:?}");
    assert!(
        log.iter()
            .any(|e| e["type"] == "stage.skipped" && e["reason"] == "ConditionFalse")
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn expect_on_kafka_counts_matches_from_where_it_starts_and_captures() {
    install_crds();
    let ns = TestNamespace::new("expect");
    let topic = unique("payments");
    let out_topic = unique("out");
    // One partition, so that the order of the messages is the order they were produced in.
    create_topic(&topic, 1);
    let _controller = ControllerProcess::start(&ns.name, 10);
    env().apply(&ns.name, &env().connectors());
    // Before the run: 3 paid orders. Only `Earliest` may see them.
    produce(
        &topic,
        &[
            order("pre-1", "paid"),
            order("pre-2", "paid"),
            order("pre-3", "paid"),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    env().apply(
        &ns.name,
        &format!(
            r#"
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: settle}}
spec:
  stages:
    - name: pause
      delay: {{duration: 6s}}
    - name: from-run
      dependsOn: [pause]
      expect:
        topic: {topic}
        count: 2
        where: 'payload.status == "paid" && key != ""'
        timeout: 30s
        capture: {{lastOrder: payload.orderId}}
    - name: from-stage
      dependsOn: [pause]
      expect:
        topic: {topic}
        from: StageStart
        count: 1
        atMost: 1
        where: 'payload.status == "paid"'
        timeout: 8s
        capture: {{order: payload.orderId}}
    - name: earliest
      dependsOn: [pause]
      expect:
        topic: {topic}
        from: Earliest
        count: 3
        where: 'payload.status == "paid"'
        timeout: 30s
        capture: {{third: payload.orderId}}
    - name: forward
      dependsOn: [from-run, from-stage, earliest]
      publish:
        topic: {out_topic}
        key: '{{{{ stages.from-stage.outputs.order }}}}'
        payload: '{{{{ stages.from-run.outputs.lastOrder }}}},{{{{ stages.earliest.outputs.third }}}}'
"#
        ),
    );
    env().apply(&ns.name, &run_yaml("e1", "settle", "kafka", ""));
    wait_phase(&ns.name, "e1", "Running", MINUTE);
    std::thread::sleep(Duration::from_millis(1000));
    // During the pause: some match, some do not, one is not JSON.
    produce(
        &topic,
        &[
            order("run-1", "pending"),
            order("run-2", "paid"),
            "text\tnot json".to_string(),
            order("run-3", "paid"),
            order("run-4", "refunded"),
        ],
    );
    wait_until(MINUTE, "from-stage running", || {
        (stage_field(&ns.name, "e1", "from-stage", "phase") == "Running").then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    produce(
        &topic,
        &[order("stage-1", "paid"), order("stage-2", "open")],
    );
    wait_phase(&ns.name, "e1", "Completed", MINUTE);

    assert_eq!(stage_field(&ns.name, "e1", "from-run", "received"), "2");
    assert_eq!(
        stage_field(&ns.name, "e1", "from-run", "outputs.lastOrder"),
        "run-3"
    );
    assert_eq!(
        stage_field(&ns.name, "e1", "from-stage", "outputs.order"),
        "stage-1"
    );
    assert_eq!(
        stage_field(&ns.name, "e1", "earliest", "outputs.third"),
        "pre-3"
    );
    // The captures flowed into the publish: read back by Kafka's own consumer.
    let out = env().client("kafka-consume", &["-k", &out_topic, "1", "20"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "stage-1\trun-3,pre-3"
    );
    // Every match is a message.received event with its payload.
    let api = ApiProcess::start(&ns.name, &sqlite_store(&ns.name), "none");
    let log = events(&api, &ns.name, "e1");
    let received: Vec<_> = log
        .iter()
        .filter(|e| e["type"] == "message.received" && e["stage"] == "from-run")
        .collect();
    assert_eq!(received.len(), 2, "{log:#?}");
    assert_eq!(
        received[1]["payload"],
        r#"{"orderId":"run-3","status":"paid"}"#
    );
    assert_eq!(received[1]["key"], "run-3");
    assert!(received[1]["offset"].is_number());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn expect_on_rabbitmq_consumes_a_queue_and_taps_an_exchange() {
    install_crds();
    let ns = TestNamespace::new("rexpect");
    let queue = unique("settled");
    let key = unique("pay");
    declare_queue(&queue).await;
    let _controller = ControllerProcess::start(&ns.name, 10);
    env().apply(&ns.name, &env().connectors());
    let publish = |exchange: &str, routing_key: &str, body: &str| {
        let (url, user, pass) = env().amqp_parts();
        let host = url.trim_start_matches("amqp://");
        let (server, _vhost) = host.split_once('/').unwrap_or((host, ""));
        let out = env()
            .command("amqp-publish")
            .args([
                "--server",
                server,
                "--username",
                &user,
                "--password",
                &pass,
                "-e",
                exchange,
                "-r",
                routing_key,
                "-b",
                body,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "amqp-publish: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for i in 1..=4 {
        let status = if i % 2 == 0 { "paid" } else { "open" };
        publish("", &queue, &format!(r#"{{"n":{i},"status":"{status}"}}"#));
    }
    env().apply(
        &ns.name,
        &format!(
            r#"
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: rabbit}}
spec:
  stages:
    - name: pause
      delay: {{duration: 4s}}
    - name: settled
      expect: {{queue: {queue}, count: 2, where: 'payload.status == "paid"', timeout: 20s,
                capture: {{last: string(payload.n)}}}}
    - name: tapped
      expect: {{exchange: amq.topic, routingKey: "{key}.eu.*", count: 2, atMost: 2, timeout: 3s}}
"#
        ),
    );
    env().apply(&ns.name, &run_yaml("r1", "rabbit", "rabbit", ""));
    // The tap is bound before the first stage starts.
    wait_until(MINUTE, "the first stage to start", || {
        (stage_field(&ns.name, "r1", "pause", "phase") == "Running").then_some(())
    });
    // Published while the first stage pauses: the tap was bound when the run started.
    publish("amq.topic", &format!("{key}.eu.1"), "a");
    publish("amq.topic", &format!("{key}.us.1"), "b");
    publish("amq.topic", &format!("{key}.eu.2"), "c");
    wait_phase(&ns.name, "r1", "Completed", MINUTE);
    assert_eq!(stage_field(&ns.name, "r1", "settled", "received"), "2");
    assert_eq!(stage_field(&ns.name, "r1", "settled", "outputs.last"), "4");
    assert_eq!(stage_field(&ns.name, "r1", "tapped", "received"), "2");
    // The queue was consumed: what the stage read is gone.
    assert_eq!(env().count("rabbitmq-count", &queue), 0);
    // The tap queue is gone with the run.
    let tap = format!("devset.tap.{}.r1.tapped", ns.name);
    let out = env().client("rabbitmqctl-env", &["list_queues", "-q", "name"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&tap),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Creates a topic with Kafka's own admin tool.
fn create_topic(topic: &str, partitions: u32) {
    let out = env()
        .command(common::repo().join("tests/bin/kafka-java"))
        .args([
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            env().var("KAFKA_BOOTSTRAP"),
            "--create",
            "--topic",
            topic,
            "--partitions",
            &partitions.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn the_readme_example_runs_against_a_small_payments_service() {
    install_crds();
    let ns = TestNamespace::new("readme");
    let orders = unique("orders");
    let payments = unique("payments");
    create_topic(&orders, 3);
    create_topic(&payments, 3);
    let _controller = ControllerProcess::start(&ns.name, 10);
    env().apply(&ns.name, &env().connectors());
    // The system under test: answers each of the first 20 orders with a payment.
    let service = env()
        .command(common::repo().join("tests/bin/payments-service"))
        .args([&orders, &payments, "20", "90"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let example =
        std::fs::read_to_string(common::repo().join("examples/workflows/orders-payments.yaml"))
            .unwrap()
            .replace("topic: orders", &format!("topic: {orders}"))
            .replace("topic: payments", &format!("topic: {payments}"));
    env().apply(&ns.name, &example);
    wait_phase(
        &ns.name,
        "orders-payments-1",
        "WaitingForApproval",
        2 * MINUTE,
    );
    let out = service.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "payments-service: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = "orders-payments-1";
    assert_eq!(
        stage_field(&ns.name, run, "payments-settled", "received"),
        "20"
    );
    let last = stage_field(&ns.name, run, "payments-settled", "outputs.lastOrder");
    assert_eq!(last.len(), 36, "a UUID: {last}");
    let question = stage_field(&ns.name, run, "go-live", "message");
    assert!(
        question.starts_with("20 payments settled (the last for order"),
        "{question}"
    );
    assert_eq!(
        env().count("kafka-count", &orders),
        20,
        "only the first batch before the decision"
    );
    env().kubectl_ok(&[
        "annotate",
        "-n",
        &ns.name,
        &format!("workflowrun/{run}"),
        r#"approval.devset.io/go-live={"decision":"Approved","user":"carol","comment":"payments look right"}"#,
    ]);
    wait_phase(&ns.name, run, "Completed", MINUTE);
    assert_eq!(env().count("kafka-count", &orders), 40);
    assert_eq!(env().count("kafka-count", &payments), 20);
    assert_eq!(status(&ns.name, run, "{.status.progress}"), "4/4");
}
