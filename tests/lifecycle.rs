//! The run lifecycle against the real API server and Kafka, with `devset controller` and `devset
//! api` outside the cluster: retry and re-run from a stage (`spec.rerunOf`, the API routes), the
//! HTTP trigger with `Idempotency-Key`, `status.triggeredBy` and the chart's policy that keeps it
//! unforgeable, and `spec.ttlSecondsAfterFinished`. Messages are counted on Kafka with an
//! independent client (`tests/bin/kafka-count`, `kafka-consume`); status is read with kubectl.

mod common;

use common::{
    ApiProcess, ControllerProcess, TestNamespace, env, install_crds,
    runs::{stage_field, status, wait_phase},
    sqlite_store, unique, wait_until,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// A ServiceAccount of `ns` with `verbs` on workflowruns there; its token.
fn account(ns: &str, name: &str, verbs: &[&str]) -> String {
    env().kubectl_ok(&["-n", ns, "create", "serviceaccount", name]);
    if !verbs.is_empty() {
        env().kubectl_ok(&[
            "-n",
            ns,
            "create",
            "role",
            name,
            &format!("--verb={}", verbs.join(",")),
            "--resource=workflowruns.devset.io",
        ]);
        env().kubectl_ok(&[
            "-n",
            ns,
            "create",
            "rolebinding",
            name,
            &format!("--role={name}"),
            &format!("--serviceaccount={ns}:{name}"),
        ]);
    }
    env()
        .kubectl_ok(&["-n", ns, "create", "token", name, "--duration=1h"])
        .trim()
        .to_owned()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(MINUTE).build().unwrap()
}

/// POSTs `body` (raw) to `url` with `token` (none when empty) and extra headers.
async fn post_raw(
    url: &str,
    token: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut req = http()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let (code, h) = (res.status(), res.headers().clone());
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, json, h)
}

async fn post(url: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let (c, b, _) = post_raw(url, token, body.to_string().into_bytes(), &[]).await;
    (c, b)
}

fn message(b: &Value) -> String {
    b["message"].as_str().unwrap_or_default().to_owned()
}

/// Connectors, and the workflow `chain`: `first` publishes `orders` messages to topic `a`, `second`
/// publishes 2 to topic `b` that carry `first`'s output; and `slow`: a delay, then a publish.
fn setup(ns: &str, a: &str, b: &str) {
    env().apply(ns, &env().connectors());
    env().apply(
        ns,
        &format!(
            r#"
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: chain}}
spec:
  params: [{{name: orders, type: integer, default: 3}}]
  stages:
    - name: first
      publish: {{topic: {a}, count: "{{{{ params.orders }}}}", payload: 'a {{{{ seq }}}}'}}
    - name: second
      publish: {{topic: {b}, count: 2, payload: 'after {{{{ stages.first.outputs.published }}}}'}}
---
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: slow}}
spec:
  stages:
    - name: wait
      delay: {{duration: 6s}}
    - name: last
      publish: {{topic: {a}-slow, count: 1, payload: 'done'}}
"#
        ),
    );
}

fn run_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

fn consume(topic: &str, n: usize) -> Vec<String> {
    let out = env().client("kafka-consume", &[topic, &n.to_string(), "30"]);
    assert!(
        out.status.success(),
        "kafka-consume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn retry_and_rerun_inherit_what_they_should_and_leave_the_source_alone() {
    install_crds();
    let ns = TestNamespace::new("rerun");
    let n = ns.name.as_str();
    let (a, b) = (unique("rerun-a"), unique("rerun-b"));
    let _controller = ControllerProcess::start(n, 4);
    let api = ApiProcess::start(n, &sqlite_store(n), "kubernetes");
    setup(n, &a, &b);
    let maker = account(n, "maker", &["create"]);
    let reader = account(n, "reader", &["get", "list"]);
    let maker_name = format!("system:serviceaccount:{n}:maker");

    env().apply(
        n,
        &run_yaml(
            "src",
            "{workflowRef: {name: chain}, connectorRef: {name: kafka}, params: {orders: 3}}",
        ),
    );
    wait_phase(n, "src", "Completed", MINUTE);
    assert_eq!(env().count("kafka-count", &a), 3);
    assert_eq!(env().count("kafka-count", &b), 2);
    // kubectl apply: the field manager that created it.
    assert_eq!(
        status(n, "src", "{.status.triggeredBy}"),
        "kubectl-client-side-apply"
    );
    let before = env().kubectl_ok(&["get", "run", "src", "-n", n, "-o", "json"]);

    // A re-run from `second`: `first` is inherited (nothing published to a), `second` runs with
    // first's output.
    let url = |run: &str, action: &str| {
        api.url(&format!(
            "/api/v1/namespaces/{n}/workflowruns/{run}/{action}"
        ))
    };
    let (code, run) = post(&url("src", "rerun"), &maker, json!({"fromStage": "second"})).await;
    assert_eq!(code, StatusCode::CREATED, "{run}");
    let rerun = run["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(
        run["spec"]["rerunOf"],
        json!({"name": "src", "fromStage": "second"})
    );
    assert_eq!(run["metadata"]["labels"]["devset.io/rerun-of"], "src");
    assert_eq!(run["metadata"]["labels"]["devset.io/rerun-root"], "src");
    wait_phase(n, &rerun, "Completed", MINUTE);
    assert_eq!(stage_field(n, &rerun, "first", "phase"), "Inherited");
    assert_eq!(stage_field(n, &rerun, "first", "outputs.published"), "3");
    assert_eq!(stage_field(n, &rerun, "second", "phase"), "Succeeded");
    assert_eq!(status(n, &rerun, "{.status.triggeredBy}"), maker_name);
    assert_eq!(status(n, &rerun, "{.status.progress}"), "2/2");
    assert_eq!(
        env().count("kafka-count", &a),
        3,
        "the inherited stage published"
    );
    assert_eq!(env().count("kafka-count", &b), 4);
    // (Partitions do not keep the order across them: count the values.)
    let bs = consume(&b, 4);
    assert!(bs.iter().all(|v| v == "after 3"), "{bs:?}");

    // A retry with one param changed: every stage again.
    let (code, run) = post(
        &url("src", "retry"),
        &maker,
        json!({"params": {"orders": 1}}),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{run}");
    let retry = run["metadata"]["name"].as_str().unwrap().to_owned();
    wait_phase(n, &retry, "Completed", MINUTE);
    assert_eq!(env().count("kafka-count", &a), 4);
    let bs = consume(&b, 6);
    assert_eq!(bs.iter().filter(|v| *v == "after 1").count(), 2, "{bs:?}");
    // The lineage, listed by label.
    let lineage = env().kubectl_ok(&[
        "get",
        "runs",
        "-n",
        n,
        "-l",
        "devset.io/rerun-root=src",
        "-o",
        "name",
    ]);
    assert_eq!(lineage.lines().count(), 2, "{lineage}");

    // The source is untouched.
    let after = env().kubectl_ok(&["get", "run", "src", "-n", n, "-o", "json"]);
    let strip = |s: &str| {
        let mut v: Value = serde_json::from_str(s).unwrap();
        v["metadata"]["managedFields"] = Value::Null;
        v
    };
    assert_eq!(strip(&before), strip(&after));

    // Refusals, each naming what is wrong.
    let (code, body) = post(&url("src", "rerun"), &maker, json!({"fromStage": "nope"})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        message(&body).starts_with("fromStage: Workflow \"chain\" has no stage \"nope\""),
        "{body}"
    );
    let (code, body) = post(&url("src", "rerun"), &maker, json!({})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(message(&body), "fromStage is required");
    let (code, body) = post(&url("src", "retry"), &maker, json!({"fromStage": "second"})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(message(&body).starts_with("fromStage: a retry runs from the start"));
    let (code, body) = post(&url("src", "retry"), &maker, json!({"params": {"zz": 1}})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(message(&body).starts_with("params: "), "{body}");
    let (code, _) = post(&url("ghost", "retry"), &maker, json!({})).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = post(&url("src", "retry"), "", json!({})).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, body) = post(&url("src", "retry"), &reader, json!({})).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        message(&body).contains("cannot create workflowruns.devset.io"),
        "{body}"
    );

    // The CLI: one line naming the new run, or the refusal with exit 2.
    let devset = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_devset"))
            .env_remove("DEVSET_API_SERVER")
            .env_remove("DEVSET_TOKEN")
            .args(args)
            .args(["-n", n, "--server", &api.url(""), "--token", &maker])
            .output()
            .unwrap()
    };
    let out = devset(&["rerun", "src", "--from", "second", "-p", "orders=2"]);
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = line
        .strip_prefix("workflowrun/")
        .and_then(|l| l.split_once(' '))
        .map(|(name, rest)| {
            assert_eq!(
                rest.trim(),
                "created: a re-run of \"src\" from stage \"second\""
            );
            name.to_owned()
        })
        .unwrap_or_else(|| panic!("{line}"));
    wait_phase(n, &created, "Completed", MINUTE);
    assert_eq!(status(n, &created, "{.status.params.orders}"), "2");
    assert_eq!(
        env().count("kafka-count", &a),
        4,
        "the inherited stage published"
    );
    let out = devset(&["rerun", "src", "--from", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: devset api answered 400 Bad Request: fromStage:"),
        "{err}"
    );

    // kubectl users write spec.rerunOf themselves: an unknown stage can never work.
    env().apply(
        n,
        &run_yaml("bad-from", "{rerunOf: {name: src, fromStage: nope}}"),
    );
    wait_phase(n, "bad-from", "Failed", MINUTE);
    assert_eq!(
        status(n, "bad-from", "{.status.reason}"),
        "InvalidFromStage"
    );
    assert!(
        status(n, "bad-from", "{.status.message}").starts_with("spec.rerunOf.fromStage:"),
        "{}",
        status(n, "bad-from", "{.status.message}")
    );
    // A source that does not exist (yet): Pending, saying so.
    env().apply(n, &run_yaml("of-ghost", "{rerunOf: {name: ghost}}"));
    wait_until(MINUTE, "of-ghost to wait for its source", || {
        (status(n, "of-ghost", "{.status.reason}") == "SourceNotFound").then_some(())
    });
    assert_eq!(status(n, "of-ghost", "{.status.phase}"), "Pending");

    // A running source: the API answers 409; a rerunOf waits Pending, then starts.
    env().apply(
        n,
        &run_yaml(
            "slow1",
            "{workflowRef: {name: slow}, connectorRef: {name: kafka}}",
        ),
    );
    wait_phase(n, "slow1", "Running", MINUTE);
    let (code, body) = post(&url("slow1", "retry"), &maker, json!({})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        message(&body).contains("is Running; only a finished run"),
        "{body}"
    );
    env().apply(n, &run_yaml("slow2", "{rerunOf: {name: slow1}}"));
    wait_until(MINUTE, "slow2 to wait for slow1", || {
        (status(n, "slow2", "{.status.reason}") == "SourceNotFinished").then_some(())
    });
    assert_eq!(status(n, "slow2", "{.status.phase}"), "Pending");
    wait_phase(n, "slow1", "Completed", MINUTE);
    wait_phase(n, "slow2", "Completed", MINUTE);
    assert_eq!(status(n, "slow2", "{.status.workflowRef.name}"), "slow");
    assert_eq!(status(n, "slow2", "{.status.connectorRef.name}"), "kafka");
    assert_eq!(env().count("kafka-count", &format!("{a}-slow")), 2);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn the_trigger_creates_one_run_per_idempotency_key_and_names_the_caller() {
    install_crds();
    let ns = TestNamespace::new("trigger");
    let n = ns.name.as_str();
    let (a, b) = (unique("trig-a"), unique("trig-b"));
    let _controller = ControllerProcess::start(n, 4);
    let store = sqlite_store(n);
    let mut api = ApiProcess::start(n, &store, "kubernetes");
    setup(n, &a, &b);
    let maker = account(n, "maker", &["create"]);
    let reader = account(n, "reader", &["get", "list"]);
    let body = json!({"namespace": n, "workflow": "chain", "connector": "kafka",
                      "params": {"orders": 2}, "labels": {"team": "payments"}});
    let url = api.url("/api/v1/trigger");

    let (code, first, headers) = post_raw(&url, &maker, body.to_string().into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{first}");
    let name = first["name"].as_str().unwrap().to_owned();
    assert_eq!(first["namespace"], n);
    assert_eq!(
        headers["location"],
        format!("/api/v1/namespaces/{n}/workflowruns/{name}").as_str()
    );
    wait_phase(n, &name, "Completed", MINUTE);
    assert_eq!(
        status(n, &name, "{.status.triggeredBy}"),
        format!("system:serviceaccount:{n}:maker")
    );
    assert_eq!(env().count("kafka-count", &a), 2);
    assert_eq!(
        env().jsonpath(n, "run", &name, "{.metadata.labels.team}"),
        "payments"
    );

    // The same key twice (and after a restart of devset api): one run.
    let key = [("Idempotency-Key", "order-42")];
    let (code, one, _) = post_raw(&url, &maker, body.to_string().into_bytes(), &key).await;
    assert_eq!(code, StatusCode::CREATED, "{one}");
    let (code, two, _) = post_raw(&url, &maker, body.to_string().into_bytes(), &key).await;
    assert_eq!(code, StatusCode::OK, "{two}");
    assert_eq!(one["name"], two["name"]);
    let port = api.port;
    drop(api);
    api = ApiProcess::start_on(n, &store, "kubernetes", port, &[]);
    let (code, three, _) = post_raw(&url, &maker, body.to_string().into_bytes(), &key).await;
    assert_eq!((code, &three["name"]), (StatusCode::OK, &one["name"]));
    let keyed = env().kubectl_ok(&[
        "get",
        "runs",
        "-n",
        n,
        "-l",
        "devset.io/idempotency-key",
        "-o",
        "name",
    ]);
    assert_eq!(keyed.lines().count(), 1, "{keyed}");
    let other = [("Idempotency-Key", "order-43")];
    let (code, four, _) = post_raw(&url, &maker, body.to_string().into_bytes(), &other).await;
    assert_eq!(code, StatusCode::CREATED);
    assert_ne!(four["name"], one["name"]);

    // Refusals.
    let runs_before = env().kubectl_ok(&["get", "runs", "-n", n, "-o", "name"]);
    let (code, _) = post(&url, "", body.clone()).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, b403) = post(&url, &reader, body.clone()).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{b403}");
    let mut bad = body.clone();
    bad["workflow"] = json!("nope");
    let (code, b404) = post(&url, &maker, bad).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        message(&b404).starts_with("workflow: workflows.devset.io \"nope\" not found"),
        "{b404}"
    );
    for (bad, want) in [
        (json!({"workflow": "chain"}), "namespace is required"),
        (
            json!({"namespace": n, "workflow": "chain", "connector": "kafka", "extra": 1}),
            "unknown field \"extra\"",
        ),
        (
            json!({"namespace": n, "workflow": "chain", "connector": 7}),
            "connector must be a string",
        ),
        (
            json!({"namespace": n, "workflow": "chain", "connector": "kafka", "params": {"orders": "x"}}),
            "params: ",
        ),
        (
            json!({"namespace": n, "workflow": "chain", "connector": "kafka", "labels": {"devset.io/rerun-of": "x"}}),
            "labels.\"devset.io/rerun-of\"",
        ),
    ] {
        let (code, e) = post(&url, &maker, bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{e}");
        assert!(message(&e).starts_with(want), "{want}: {e}");
    }
    let (code, e, _) = post_raw(&url, &maker, b"{not json".to_vec(), &[]).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(message(&e).starts_with("the body is not valid JSON"));
    let huge = format!(
        r#"{{"namespace":"{n}","workflow":"chain","connector":"kafka","params":{{"orders":"{}"}}}}"#,
        "9".repeat(70_000)
    );
    let (code, e, _) = post_raw(&url, &maker, huge.into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    // Never a half-created run.
    assert_eq!(
        runs_before,
        env().kubectl_ok(&["get", "runs", "-n", n, "-o", "name"])
    );
    // TriggeredBy is a column of -o wide.
    let wide = env().kubectl_ok(&["get", "runs", "-n", n, "-o", "wide"]);
    assert!(
        wide.lines().next().unwrap().contains("TRIGGEREDBY"),
        "{wide}"
    );
    assert!(
        wide.contains(&format!("system:serviceaccount:{n}:maker")),
        "{wide}"
    );
    drop(api);
}

/// kubectl as the holder of `token` only (the admin kubeconfig's client certificate would win
/// over a --token flag).
fn kubectl_as(
    ns: &str,
    who: &str,
    token: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String) {
    use std::io::Write;
    let kubeconfig = common::token_kubeconfig(&format!("{ns}-{who}"), token);
    let mut child = env()
        .command("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .arg("-n")
        .arg(ns)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn the_chart_policy_keeps_triggered_by_unforgeable() {
    install_crds();
    let ns = TestNamespace::new("forge");
    let n = ns.name.as_str();
    let out = env()
        .command("helm")
        .args(["template", n])
        .arg(common::repo().join("charts/devset-operator"))
        .args(["-n", n, "--show-only", "templates/triggered-by-policy.yaml"])
        .args(["--set", &format!("watchNamespaces={{{n}}}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env().apply(n, &String::from_utf8_lossy(&out.stdout));
    let policy = format!("{n}-devset-operator-triggered-by");
    let eve = account(n, "eve", &["create", "get", "patch"]);
    let eve_name = format!("system:serviceaccount:{n}:eve");
    let run = |name: &str, annotation: Option<&str>| {
        let ann = annotation.map_or(String::new(), |a| {
            format!(", annotations: {{devset.io/triggered-by: \"{a}\"}}")
        });
        format!(
            "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {name}{ann}}}\n\
             spec: {{workflowRef: {{name: w}}, connectorRef: {{name: c}}}}\n"
        )
    };

    // Naming someone else is refused (the policy takes a moment to be enforced once created).
    let mut i = 0;
    let refused = loop {
        i += 1;
        let name = format!("forged{i}");
        let (ok, err) = kubectl_as(
            n,
            "eve",
            &eve,
            &["create", "-f", "-"],
            Some(&run(&name, Some("alice"))),
        );
        if !ok {
            break err;
        }
        assert!(i < 120, "the policy {policy} was never enforced");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        refused.contains("may only name the user who creates the run"),
        "{refused}"
    );
    // A field manager posing as a user: refused; a known tool's: created.
    let (ok, err) = kubectl_as(
        n,
        "eve",
        &eve,
        &["create", "--field-manager=alice", "-f", "-"],
        Some(&run("fm", None)),
    );
    assert!(!ok, "a run created by the field manager alice");
    assert!(err.contains("only these tools may be"), "{err}");
    let (ok, err) = kubectl_as(
        n,
        "eve",
        &eve,
        &["apply", "-f", "-"],
        Some(&run("plain", None)),
    );
    assert!(ok, "{err}");
    // Naming oneself: created.
    let (ok, err) = kubectl_as(
        n,
        "eve",
        &eve,
        &["create", "-f", "-"],
        Some(&run("mine", Some(&eve_name))),
    );
    assert!(ok, "{err}");
    // Nobody but the operator changes, adds or removes it.
    for args in [
        vec![
            "annotate",
            "--overwrite",
            "run/mine",
            "devset.io/triggered-by=alice",
        ],
        vec!["annotate", "run/mine", "devset.io/triggered-by-"],
        vec![
            "annotate",
            "run/plain",
            &format!("devset.io/triggered-by={eve_name}"),
        ],
    ] {
        let (ok, err) = kubectl_as(n, "eve", &eve, &args, None);
        assert!(!ok, "{args:?} went through");
        assert!(err.contains("cannot be added, changed or removed"), "{err}");
    }
    // Other changes are not the policy's business; an admin may do anything.
    let (ok, err) = kubectl_as(n, "eve", &eve, &["annotate", "run/mine", "team=x"], None);
    assert!(ok, "{err}");
    env().kubectl_ok(&[
        "-n",
        n,
        "annotate",
        "run/plain",
        "devset.io/triggered-by=schedule/nightly",
    ]);
    env().kubectl_ok(&[
        "delete",
        "validatingadmissionpolicybinding,validatingadmissionpolicy",
        &policy,
    ]);
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn a_finished_run_is_deleted_with_its_log_after_its_ttl_across_a_restart() {
    install_crds();
    let ns = TestNamespace::new("ttl");
    let n = ns.name.as_str();
    let a = unique("ttl-a");
    let store = sqlite_store(n);
    let mut controller = ControllerProcess::start_with_store(n, 4, 0, &store);
    let api = ApiProcess::start(n, &store, "none");
    setup(n, &a, &unique("ttl-b"));
    env().apply(
        n,
        &run_yaml(
            "short",
            "{workflowRef: {name: chain}, connectorRef: {name: kafka}, params: {orders: 1}, ttlSecondsAfterFinished: 6}",
        ),
    );
    env().apply(
        n,
        &run_yaml(
            "kept",
            "{workflowRef: {name: chain}, connectorRef: {name: kafka}, params: {orders: 1}}",
        ),
    );
    wait_phase(n, "short", "Completed", MINUTE);
    wait_phase(n, "kept", "Completed", MINUTE);
    let events = format!("/api/v1/namespaces/{n}/workflowruns/short/events");
    let (code, body) = common::http_get(api.port, &events).unwrap();
    assert_eq!(code, 200, "{body}");
    // A controller restart before the time is up: the new one deletes it when due.
    controller.kill();
    let done = std::time::Instant::now();
    let _controller = ControllerProcess::start_with_store(n, 4, 0, &store);
    wait_until(MINUTE, "the run to be deleted", || {
        (!env()
            .kubectl(&["get", "run", "short", "-n", n])
            .status
            .success())
        .then_some(())
    });
    assert!(
        done.elapsed() >= Duration::from_secs(3),
        "deleted before its TTL"
    );
    wait_until(MINUTE, "its event log to be deleted", || {
        let (code, _) = common::http_get(api.port, &events).unwrap();
        (code == 404).then_some(())
    });
    // A run without a TTL stays.
    assert_eq!(status(n, "kept", "{.status.phase}"), "Completed");
}
