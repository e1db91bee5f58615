//! `devset controller`, running outside the cluster against the real API server, Kafka and
//! RabbitMQ. Outcomes are checked with independent clients: message counts on the brokers
//! (Kafka's own tools, rabbitmqctl, amqp-get) and `.status` read with kubectl.

mod common;

use common::{
    ControllerProcess, TestNamespace, declare_queue, env, free_port, http_get, install_crds,
    runs::{status, wait_phase},
    unique, wait_until,
};
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);

fn run_yaml(name: &str, workflow: &str, connector: &str) -> String {
    format!(
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {name}}}\n\
         spec: {{workflowRef: {{name: {workflow}}}, connectorRef: {{name: {connector}}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn happy_path_publishes_to_kafka_and_rabbitmq_and_completes() {
    install_crds();
    let ns = TestNamespace::new("happy");
    let topic = unique("happy");
    let queue = unique("happy");
    declare_queue(&queue).await;
    let _controller = ControllerProcess::start(&ns.name, 10);
    env().apply(&ns.name, &env().connectors());
    env().apply(
        &ns.name,
        &format!(
            r#"
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: three}}
spec:
  params:
    - {{name: region, default: eu-west}}
  stages:
    - name: to-kafka
      publish:
        topic: {topic}
        count: 1000
        key: "order-{{{{ seq }}}}"
        headers: {{source: devset, run: "{{{{ run.name }}}}"}}
        payload: '{{"seq": {{{{ seq }}}}, "region": "{{{{ params.region }}}}", "stage": "{{{{ stage }}}}"}}'
    - name: pause
      delay: {{duration: 200ms}}
    - name: to-rabbit
      publish:
        queue: {queue}
        connectorRef: {{name: rabbit}}
        count: 1000
        key: "k-{{{{ seq }}}}"
        payload: 'rabbit {{{{ seq }}}}'
"#
        ),
    );
    let start = Instant::now();
    env().apply(&ns.name, &run_yaml("r1", "three", "kafka"));
    wait_phase(&ns.name, "r1", "Running", MINUTE);
    eprintln!("apply -> Running: {:?}", start.elapsed());
    wait_phase(&ns.name, "r1", "Completed", 2 * MINUTE);
    eprintln!("apply -> Completed: {:?}", start.elapsed());

    // kubectl wait sees the Succeeded condition.
    env().kubectl_ok(&[
        "wait",
        "--for=condition=Succeeded",
        "--timeout=10s",
        "-n",
        &ns.name,
        "workflowrun/r1",
    ]);
    assert_eq!(status(&ns.name, "r1", "{.status.progress}"), "3/3");
    assert_eq!(
        status(&ns.name, "r1", "{.status.messagesPublished}"),
        "2000"
    );
    let stages = status(
        &ns.name,
        "r1",
        r#"{range .status.stages[*]}{.name}={.phase}/{.published}/{.attempts};{end}"#,
    );
    assert_eq!(
        stages,
        "to-kafka=Succeeded/1000/1;pause=Succeeded//1;to-rabbit=Succeeded/1000/1;"
    );

    // Independent clients count exactly the configured messages.
    assert_eq!(env().count("kafka-count", &topic), 1000);
    assert_eq!(env().count("rabbitmq-count", &queue), 1000);
    // And the templates were rendered per message.
    let out = env().client("kafka-consume", &["-k", "-H", &topic, "1000", "30"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for seq in [1, 500, 1000] {
        let payload = format!(r#"{{"seq": {seq}, "region": "eu-west", "stage": "to-kafka"}}"#);
        let line = text
            .lines()
            .find(|l| l.contains(&payload))
            .unwrap_or_else(|| {
                panic!(
                    "no message with payload {payload} in:\n{}",
                    &text[..text.len().min(2000)]
                )
            });
        assert!(
            line.contains(&format!("order-{seq}")),
            "key of message {seq}: {line}"
        );
        assert!(
            line.contains("source:devset") && line.contains("run:r1"),
            "headers of message {seq}: {line}"
        );
    }
    let got = env().client("amqp-get", &[&queue, "1"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "rabbit 1");
}

fn publish_workflow(name: &str, topic: &str, count: u64, rate: Option<u32>) -> String {
    let rate = rate
        .map(|r| format!(", ratePerSecond: {r}"))
        .unwrap_or_default();
    format!(
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: {name}}}\nspec:\n  stages:\n\
         \x20   - name: publish\n      publish: {{topic: {topic}, count: {count}{rate}, payload: 'm {{{{ seq }}}}'}}\n"
    )
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn a_run_waits_for_its_workflow_then_starts() {
    install_crds();
    let ns = TestNamespace::new("missing");
    let topic = unique("missing");
    let _controller = ControllerProcess::start(&ns.name, 10);
    env().apply(&ns.name, &env().connectors());
    env().apply(&ns.name, &run_yaml("early", "later", "kafka"));
    wait_until(MINUTE, "reason WorkflowNotFound", || {
        (status(&ns.name, "early", "{.status.reason}") == "WorkflowNotFound").then_some(())
    });
    assert_eq!(status(&ns.name, "early", "{.status.phase}"), "Pending");
    env().apply(&ns.name, &publish_workflow("later", &topic, 10, None));
    wait_phase(&ns.name, "early", "Completed", MINUTE);
    assert_eq!(env().count("kafka-count", &topic), 10);
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn stop_goes_through_stopping_to_stopped_and_publishing_halts() {
    install_crds();
    let ns = TestNamespace::new("stop");
    let topic = unique("stop");
    let _controller = ControllerProcess::start(&ns.name, 10);
    env().apply(&ns.name, &env().connectors());
    env().apply(
        &ns.name,
        &publish_workflow("slow", &topic, 100_000, Some(200)),
    );
    env().apply(&ns.name, &run_yaml("s1", "slow", "kafka"));
    wait_until(MINUTE, "some messages published", || {
        let n: i64 = status(&ns.name, "s1", "{.status.messagesPublished}")
            .parse()
            .unwrap_or(0);
        (n >= 100).then_some(())
    });
    env().kubectl_ok(&[
        "patch",
        "run",
        "s1",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"stop":true}}"#,
    ]);
    wait_phase(&ns.name, "s1", "Stopped", MINUTE);
    let published: i64 = status(&ns.name, "s1", "{.status.messagesPublished}")
        .parse()
        .unwrap();
    assert!(
        published > 0 && published < 100_000,
        "published {published}"
    );
    let on_broker = env().count("kafka-count", &topic);
    assert_eq!(
        on_broker, published,
        "the broker holds exactly what status reports"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        env().count("kafka-count", &topic),
        on_broker,
        "nothing is published after Stopped"
    );
    assert_eq!(
        status(
            &ns.name,
            "s1",
            r#"{.status.conditions[?(@.type=="Succeeded")].status}"#
        ),
        "False"
    );
    let events = env().kubectl_ok(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "--field-selector",
        "involvedObject.name=s1",
    ]);
    assert!(
        events.contains("Stopping") && events.contains("Stopped"),
        "{events}"
    );
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn an_unreachable_broker_fails_the_connector_and_the_run() {
    install_crds();
    let ns = TestNamespace::new("unreach");
    let _controller = ControllerProcess::start(&ns.name, 10);
    env().apply(
        &ns.name,
        "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {name: nowhere}\n\
         spec: {kafka: {bootstrapServers: \"127.0.0.1:1\"}}\n",
    );
    wait_until(MINUTE, "connector Ready=False/Unreachable", || {
        let c = env().jsonpath(&ns.name, "bc", "nowhere", r#"{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}"#);
        (c == "False/Unreachable").then_some(())
    });
    env().apply(
        &ns.name,
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  stages:\n\
         \x20   - name: push\n      timeout: 5s\n      publish: {topic: t, count: 5}\n",
    );
    env().apply(&ns.name, &run_yaml("u1", "w", "nowhere"));
    wait_phase(&ns.name, "u1", "Failed", MINUTE);
    let msg = status(&ns.name, "u1", "{.status.message}");
    assert!(msg.contains("push"), "the message names the stage: {msg}");
    let stage = status(&ns.name, "u1", "{.status.stages[0].phase}");
    assert_eq!(stage, "Failed");
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn at_most_max_active_runs_run_at_once_and_start_oldest_first() {
    install_crds();
    let ns = TestNamespace::new("limit");
    let _controller = ControllerProcess::start(&ns.name, 2);
    env().apply(&ns.name, &env().connectors());
    env().apply(
        &ns.name,
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: wait}\nspec:\n  stages:\n\
         \x20   - name: wait\n      delay: {duration: 3s}\n",
    );
    let names = ["c1", "c2", "c3", "c4", "c5"];
    for name in names {
        env().apply(&ns.name, &run_yaml(name, "wait", "kafka"));
    }
    // Poll the phases; record when each run is first seen active.
    let mut first_active = [usize::MAX; 5];
    let mut max_active = 0;
    let deadline = Instant::now() + 2 * MINUTE;
    for poll in 0.. {
        assert!(
            Instant::now() < deadline,
            "runs did not all complete: {first_active:?}"
        );
        let phases = env().kubectl_ok(&[
            "get",
            "runs",
            "-n",
            &ns.name,
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.status.phase};{end}"#,
        ]);
        let phase_of = |n: &str| {
            phases
                .split(';')
                .find_map(|kv| kv.strip_prefix(&format!("{n}=")))
                .unwrap_or("")
                .to_string()
        };
        let mut active = 0;
        let mut completed = 0;
        for (i, n) in names.iter().enumerate() {
            match phase_of(n).as_str() {
                "Running" | "Stopping" => {
                    active += 1;
                    first_active[i] = first_active[i].min(poll);
                }
                "Completed" => {
                    completed += 1;
                    first_active[i] = first_active[i].min(poll);
                }
                "Failed" => panic!("run {n} failed"),
                _ => {}
            }
        }
        max_active = max_active.max(active);
        assert!(active <= 2, "{active} runs active at once: {phases}");
        if completed == 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(max_active, 2, "the limit was used");
    assert!(
        first_active.windows(2).all(|w| w[0] <= w[1]),
        "runs started in creation order: {first_active:?}"
    );
    let reason = env().kubectl_ok(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "--field-selector",
        "involvedObject.name=c5",
    ]);
    assert!(reason.contains("Queued"), "c5 was queued: {reason}");
    // A run that finished is never started again from an older cached copy of itself.
    let events = env().kubectl_ok(&["get", "events", "-n", &ns.name]);
    assert!(
        !events.contains("Resumed"),
        "no run was resumed by this one controller: {events}"
    );
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn a_killed_controller_resumes_the_run_from_its_status() {
    install_crds();
    let ns = TestNamespace::new("crash");
    let topic = unique("crash");
    let total = 20_000;
    let mut controller = ControllerProcess::start(&ns.name, 10);
    env().apply(&ns.name, &env().connectors());
    env().apply(
        &ns.name,
        &publish_workflow("steady", &topic, total, Some(2_000)),
    );
    env().apply(&ns.name, &run_yaml("k1", "steady", "kafka"));
    wait_until(MINUTE, "a few thousand messages", || {
        let n: u64 = status(&ns.name, "k1", "{.status.messagesPublished}")
            .parse()
            .unwrap_or(0);
        (n >= 3_000).then_some(())
    });
    controller.kill();
    let at_kill: u64 = status(&ns.name, "k1", "{.status.messagesPublished}")
        .parse()
        .unwrap();
    assert_eq!(status(&ns.name, "k1", "{.status.phase}"), "Running");
    let _controller = ControllerProcess::start(&ns.name, 10);
    wait_phase(&ns.name, "k1", "Completed", 2 * MINUTE);
    let published: u64 = status(&ns.name, "k1", "{.status.messagesPublished}")
        .parse()
        .unwrap();
    let on_broker = env().count("kafka-count", &topic) as u64;
    eprintln!(
        "crash test: killed at {at_kill} recorded, status {published}, broker {on_broker}: {} duplicate(s)",
        on_broker - total
    );
    assert_eq!(published, total, "status counts each sequence number once");
    assert!(on_broker >= total, "at least once: {on_broker} >= {total}");
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn deleting_a_running_run_stops_it_and_the_object_goes() {
    install_crds();
    let ns = TestNamespace::new("delete");
    let topic = unique("delete");
    let _controller = ControllerProcess::start(&ns.name, 10);
    env().apply(&ns.name, &env().connectors());
    env().apply(
        &ns.name,
        &publish_workflow("slow", &topic, 100_000, Some(200)),
    );
    env().apply(&ns.name, &run_yaml("d1", "slow", "kafka"));
    wait_until(MINUTE, "some messages published", || {
        let n: i64 = status(&ns.name, "d1", "{.status.messagesPublished}")
            .parse()
            .unwrap_or(0);
        (n >= 50).then_some(())
    });
    let finalizers = status(&ns.name, "d1", "{.metadata.finalizers}");
    assert!(finalizers.contains("devset.io/run"), "{finalizers}");
    env().kubectl_ok(&["delete", "run", "d1", "-n", &ns.name, "--timeout=60s"]);
    let gone = env().kubectl(&["get", "run", "d1", "-n", &ns.name]);
    assert!(!gone.status.success(), "the run is gone");
    let after = env().count("kafka-count", &topic);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        env().count("kafka-count", &topic),
        after,
        "publishing stopped"
    );
    assert!(after < 100_000);
}

/// The value of the sample `series` (name and labels exactly) in a `/metrics` text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn metrics_count_reconciles_runs_and_published_messages() {
    install_crds();
    let ns = TestNamespace::new("metrics");
    let topic = unique("metrics");
    let port = free_port();
    let _controller = ControllerProcess::start_with_metrics(&ns.name, 10, port);
    // Up and ready once the controllers have started.
    wait_until(MINUTE, "/readyz to answer 200", || {
        matches!(http_get(port, "/readyz"), Ok((200, _))).then_some(())
    });
    let (code, body) = http_get(port, "/healthz").unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    env().apply(&ns.name, &env().connectors());
    env().apply(&ns.name, &publish_workflow("twenty", &topic, 20, None));
    env().apply(&ns.name, &run_yaml("m1", "twenty", "kafka"));
    wait_phase(&ns.name, "m1", "Completed", MINUTE);
    assert_eq!(env().count("kafka-count", &topic), 20);

    // The store behind runs_by_phase sees Completed a moment after kubectl does.
    let text = wait_until(Duration::from_secs(30), "runs_by_phase Completed 1", || {
        let (code, text) = http_get(port, "/metrics").ok()?;
        assert_eq!(code, 200, "{text}");
        (sample(&text, r#"devset_runs_by_phase{phase="Completed"}"#) == Some(1.0)).then_some(text)
    });
    let published = sample(
        &text,
        r#"devset_engine_messages_published_total{broker="kafka"}"#,
    );
    assert!(
        published >= Some(20.0),
        "published {published:?} in:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"devset_engine_messages_published_total{broker="rabbitmq"}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(sample(&text, "devset_runs_active"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, r#"devset_runs_by_phase{phase="Running"}"#),
        Some(0.0),
        "{text}"
    );
    for controller in ["workflowrun", "workflow", "brokerconnector"] {
        let runs = sample(
            &text,
            &format!(r#"devset_reconcile_runs_total{{controller="{controller}"}}"#),
        );
        assert!(
            runs >= Some(1.0),
            "{controller} reconciles {runs:?} in:\n{text}"
        );
        let timed = sample(
            &text,
            &format!(r#"devset_reconcile_duration_seconds_count{{controller="{controller}"}}"#),
        );
        // A reconcile in flight during the scrape is counted but not timed yet.
        assert!(
            timed >= Some(1.0) && timed <= runs,
            "{controller} reconciles timed {timed:?} of {runs:?}"
        );
    }
    assert_eq!(
        sample(
            &text,
            r#"devset_engine_stage_duration_seconds_count{action="publish",outcome="succeeded"}"#
        ),
        Some(1.0),
        "{text}"
    );
    // The event log: 20 messages, 2 stage events and the phases, all written (the terminal
    // phase is written before the status says Completed), none queued or dropped.
    let appended = sample(&text, "devset_events_appended_total");
    assert!(appended >= Some(24.0), "appended {appended:?} in:\n{text}");
    assert_eq!(sample(&text, "devset_events_queued"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "devset_events_dropped_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "devset_events_append_errors_total"),
        Some(0.0),
        "{text}"
    );
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn problems_cel_cannot_see_show_up_in_status_with_a_reason() {
    install_crds();
    let ns = TestNamespace::new("problems");
    let _controller = ControllerProcess::start(&ns.name, 10);
    let (url, _, _) = env().amqp_parts();
    env().apply(&ns.name, &env().connectors());
    env().apply(
        &ns.name,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: nosecret}}\n\
             spec: {{rabbitmq: {{url: \"{url}\", secretRef: {{name: missing}}}}}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: cycle}}\nspec:\n  stages:\n\
             \x20   - {{name: a, dependsOn: [b], delay: {{duration: 1s}}}}\n\
             \x20   - {{name: b, dependsOn: [a], delay: {{duration: 1s}}}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: typed}}\nspec:\n\
             \x20 params: [{{name: num, type: integer, required: true}}]\n  stages:\n\
             \x20   - {{name: p, publish: {{topic: t, payload: 'n={{{{ params.num }}}}'}}}}\n"
        ),
    );
    let ready = |kind: &str, name: &str| {
        env().jsonpath(
            &ns.name,
            kind,
            name,
            r#"{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}"#,
        )
    };
    wait_until(MINUTE, "connector without its Secret", || {
        (ready("bc", "nosecret") == "False/SecretNotFound").then_some(())
    });
    wait_until(MINUTE, "workflow with a cycle", || {
        (ready("wf", "cycle") == "False/DependencyCycle").then_some(())
    });
    assert_eq!(ready("wf", "typed"), "True/Valid");

    // A run of the cyclic workflow fails with the workflow's reason.
    env().apply(&ns.name, &run_yaml("cyc", "cycle", "kafka"));
    wait_phase(&ns.name, "cyc", "Failed", MINUTE);
    assert_eq!(
        status(&ns.name, "cyc", "{.status.reason}"),
        "DependencyCycle"
    );
    // A param of the wrong type fails the run, naming the param.
    env().apply(
        &ns.name,
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {name: badparam}\n\
         spec: {workflowRef: {name: typed}, connectorRef: {name: kafka}, params: {num: many}}\n",
    );
    wait_phase(&ns.name, "badparam", "Failed", MINUTE);
    assert_eq!(
        status(&ns.name, "badparam", "{.status.reason}"),
        "InvalidParam"
    );
    let msg = status(&ns.name, "badparam", "{.status.message}");
    assert!(
        msg.contains("\"num\""),
        "the message names the param: {msg}"
    );
    // A run through the connector whose Secret is missing waits for it.
    env().apply(
        &ns.name,
        &run_yaml("waits", "typed", "nosecret").replace("}}\n", "}, params: {num: 3}}\n"),
    );
    wait_until(MINUTE, "run waiting for the Secret", || {
        (status(&ns.name, "waits", "{.status.phase}/{.status.reason}") == "Pending/SecretNotFound")
            .then_some(())
    });
}
