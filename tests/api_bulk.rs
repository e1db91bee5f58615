//! The bulk and single-run operations of `devset api` (delete, stop, export) against the real
//! API server (TokenReview, SubjectAccessReview, RBAC with resource names), the real Kafka and
//! the SQLite event store; outcomes read independently (kubectl, the store, Kafka's count).

mod common;

use common::{
    ApiProcess, ControllerProcess, TestNamespace, env, install_crds, sqlite_store, unique,
    wait_until,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// A ServiceAccount whose Role allows `verbs` on the runs `names` only (all runs when empty);
/// returns its token.
fn account(ns: &str, name: &str, verbs: &str, names: &[&str]) -> String {
    let names = if names.is_empty() {
        String::new()
    } else {
        format!("    resourceNames: [{}]\n", names.join(", "))
    };
    env().apply(
        ns,
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}}}\n\
             rules:\n  - apiGroups: [devset.io]\n    resources: [workflowruns]\n{names}\
             \x20   verbs: [{verbs}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\n\
             subjects: [{{kind: ServiceAccount, name: {name}, namespace: {ns}}}]\n"
        ),
    );
    let token = env().kubectl_ok(&["-n", ns, "create", "token", name]);
    token.trim().to_owned()
}

/// `devset ARGS...` (the CLI, as a person runs it).
fn devset(args: &[&str]) -> std::process::Output {
    let out = env()
        .command(env!("CARGO_BIN_EXE_devset"))
        .args(args)
        .output();
    out.expect("devset runs")
}

fn start_run(ns: &str, run: &str, topic: &str, count: u64, rate: u32) {
    env().apply(
        ns,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: {run}}}\nspec:\n  stages:\n\
             \x20   - name: publish\n      publish: {{topic: {topic}, count: {count}, ratePerSecond: {rate}, \
             key: 'k-{{{{ seq }}}}', payload: 'm {{{{ seq }}}}'}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {run}}}\n\
             spec: {{workflowRef: {{name: {run}}}, connectorRef: {{name: kafka}}}}\n"
        ),
    );
}

fn phase(ns: &str, run: &str) -> String {
    env().jsonpath(ns, "workflowrun", run, "{.status.phase}")
}

fn exists(ns: &str, run: &str) -> bool {
    env()
        .kubectl(&["-n", ns, "get", "workflowrun", run, "-o", "name"])
        .status
        .success()
}

fn kafka_count(topic: &str) -> i64 {
    env().count("kafka-count", topic)
}

fn runs(ns: &str, names: &[&str]) -> Value {
    let runs: Vec<Value> = names
        .iter()
        .map(|n| match n.split_once('/') {
            Some((other, name)) => json!({"namespace": other, "name": name}),
            None => json!({"namespace": ns, "name": n}),
        })
        .collect();
    json!({ "runs": runs })
}

async fn send(api: &ApiProcess, path: &str, token: &str, body: &Value) -> reqwest::Response {
    let req = reqwest::Client::new()
        .post(api.url(path))
        .bearer_auth(token);
    req.json(body).send().await.expect("devset api answers")
}

async fn post(api: &ApiProcess, path: &str, token: &str, body: &Value) -> (StatusCode, Value) {
    let res = send(api, path, token, body).await;
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `(name, status)` of each item of a bulk answer.
fn statuses(answer: &Value) -> Vec<(String, u64)> {
    answer["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items in {answer}"))
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn bulk_stop_export_and_delete_are_authorized_run_by_run() {
    install_crds();
    let ns = TestNamespace::new("bulk");
    let ns = ns.name.as_str();
    let store = sqlite_store(ns);
    let kafka = env().var("KAFKA_BOOTSTRAP");
    env().apply(
        ns,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: kafka}}\n\
             spec: {{kafka: {{bootstrapServers: \"{kafka}\"}}}}\n"
        ),
    );
    let _controller = ControllerProcess::start_with_store(ns, 10, 0, &store);
    let api = ApiProcess::start(ns, &store, "kubernetes");
    // `ops` may act on the runs a and b only; `admin` on every run of the namespace.
    let ops = account(ns, "ops", "get, list, patch, delete", &["a", "b"]);
    let admin = account(ns, "admin", "get, list, patch, delete", &[]);
    let (topic_a, topic_b) = (unique("bulk-a"), unique("bulk-b"));
    start_run(ns, "a", &topic_a, 100_000, 100);
    start_run(ns, "c", &unique("bulk-c"), 100_000, 100);
    start_run(ns, "b", &topic_b, 25, 1_000);
    wait_until(MINUTE, "a and c Running, b Completed", || {
        (phase(ns, "a") == "Running"
            && phase(ns, "c") == "Running"
            && phase(ns, "b") == "Completed")
            .then_some(())
    });

    // Stop several: a stops, c is not ops's (403), x does not exist (admin: 404), b is finished.
    let (code, answer) = post(
        &api,
        "/api/v1/workflowruns:stop",
        &ops,
        &runs(ns, &["a", "c"]),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(statuses(&answer), [("a".into(), 202), ("c".into(), 403)]);
    assert_eq!(answer["items"][1]["reason"], "Forbidden");
    assert!(
        answer["items"][1]["message"]
            .as_str()
            .unwrap()
            .contains("ops"),
        "{answer}"
    );
    let (_, answer) = post(
        &api,
        "/api/v1/workflowruns:stop",
        &admin,
        &runs(ns, &["x", "b"]),
    )
    .await;
    assert_eq!(statuses(&answer), [("x".into(), 404), ("b".into(), 409)]);
    wait_until(MINUTE, "a to be Stopped", || {
        (phase(ns, "a") == "Stopped").then_some(())
    });
    assert_eq!(phase(ns, "c"), "Running");

    // Export JSON: a and b with their whole logs; c and a run of another namespace refused (403).
    let body = runs(ns, &["a", "b", "c", "elsewhere/z"]);
    let (code, export) = post(&api, "/api/v1/workflowruns:export", &ops, &body).await;
    assert_eq!(code, StatusCode::OK, "{export}");
    let items = export["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{export}");
    let errors: Vec<(String, u64)> = export["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(errors, [("c".into(), 403), ("z".into(), 403)]);
    for (item, topic) in items.iter().zip([&topic_a, &topic_b]) {
        let events = item["events"].as_array().unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{}",
            item["name"]
        );
        let published = events
            .iter()
            .filter(|e| e["type"] == "message.published")
            .count();
        assert_eq!(published as i64, kafka_count(topic), "{}", item["name"]);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "run.phase");
        assert_eq!(item["run"]["name"], item["name"]);
    }
    assert_eq!(
        items[1]["events"].as_array().unwrap().last().unwrap()["phase"],
        "Completed"
    );

    // Export CSV: one header, then a row per event of a and b, each naming its run.
    let mut csv_body = runs(ns, &["a", "b"]);
    csv_body["format"] = json!("csv");
    let res = send(&api, "/api/v1/workflowruns:export", &ops, &csv_body).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = res.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .take(3)
        .map(str::to_owned)
        .collect();
    assert_eq!(header, ["namespace", "name", "seq"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    for (i, run) in ["a", "b"].iter().enumerate() {
        let n = rows.iter().filter(|r| &r[1] == *run && &r[0] == ns).count();
        assert_eq!(n, items[i]["events"].as_array().unwrap().len(), "{run}");
    }
    // CSV has no place for a refused run: the whole export is refused, naming it.
    csv_body["runs"] = runs(ns, &["a", "c"])["runs"].clone();
    let (code, status) = post(&api, "/api/v1/workflowruns:export", &ops, &csv_body).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{ns}/c")),
        "{status}"
    );

    // `devset export`: the same JSON to a file, and CSV.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    let (server, path) = (api.url(""), file.to_str().unwrap());
    let api_args = ["-n", ns, "--server", &server, "--token", &ops];
    let out = devset(&[&["export", "a", "b", "-o", path][..], &api_args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let from_cli: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(from_cli["items"], export["items"]);
    let c = format!("{ns}/c");
    let out = devset(&[&["export", "b", &c, "--format", "csv"][..], &api_args].concat());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("403") && stderr.contains(&c), "{stderr}");

    // Bad bodies name the field; no token is 401 for the whole request.
    let (code, status) = post(
        &api,
        "/api/v1/workflowruns:delete",
        &ops,
        &json!({"runs": [{"name": "a"}]}),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("runs[0].namespace"),
        "{status}"
    );
    let many: Vec<Value> = (0..501)
        .map(|i| json!({"namespace": ns, "name": format!("r{i}")}))
        .collect();
    let (code, status) = post(
        &api,
        "/api/v1/workflowruns:delete",
        &ops,
        &json!({"runs": many}),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        status["message"].as_str().unwrap().contains("at most 500"),
        "{status}"
    );
    let (code, _) = post(
        &api,
        "/api/v1/workflowruns:delete",
        "not-a-token",
        &runs(ns, &["b"]),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(exists(ns, "b"));

    // Delete several: b goes with its log, c is not ops's.
    let (code, answer) = post(
        &api,
        "/api/v1/workflowruns:delete",
        &ops,
        &runs(ns, &["b", "c"]),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(statuses(&answer), [("b".into(), 200), ("c".into(), 403)]);
    wait_until(MINUTE, "b to be gone", || (!exists(ns, "b")).then_some(()));
    assert!(exists(ns, "c"));
    let events = devset::events::Store::open(&store, Default::default())
        .await
        .unwrap();
    let key = devset::events::RunKey::new(ns, "b");
    assert!(
        events.log(&key).await.unwrap().is_none(),
        "b's log is removed"
    );

    // Delete one: 403 for c, then a with its log.
    let client = reqwest::Client::new();
    let delete = |name: &str, token: &str| {
        let url = api.url(&format!("/api/v1/namespaces/{ns}/workflowruns/{name}"));
        client.delete(url).bearer_auth(token).send()
    };
    assert_eq!(
        delete("c", &ops).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let res = delete("a", &ops).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["name"], "a");
    wait_until(MINUTE, "a to be gone", || (!exists(ns, "a")).then_some(()));
    let key = devset::events::RunKey::new(ns, "a");
    let log = events.log(&key).await.unwrap();
    assert!(log.is_none(), "a's log is removed");
    assert_eq!(
        delete("a", &admin).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // The run list filters by who started a run.
    let by = env().jsonpath(ns, "workflowrun", "c", "{.status.triggeredBy}");
    let list = |by: &str| {
        let path = format!(
            "/api/v1/namespaces/{ns}/workflowruns?triggeredBy={}",
            percent_encode(by)
        );
        let req = client.get(api.url(&path)).bearer_auth(&admin);
        async move {
            let page: Value = req.send().await.unwrap().json().await.unwrap();
            let items = page["items"].as_array().cloned().unwrap_or_default();
            items
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("nobody-at-all").await, Vec::<String>::new());
    assert!(!by.is_empty(), "the controller writes status.triggeredBy");
    assert_eq!(list(&by).await, ["c"], "runs started by {by}");
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn the_served_openapi_document_names_the_bulk_routes() {
    install_crds();
    let ns = TestNamespace::new("openapi");
    let api = ApiProcess::start(&ns.name, &sqlite_store(&ns.name), "kubernetes");
    // Open to all, like /healthz.
    let doc: Value = reqwest::get(api.url("/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/api/v1/workflowruns:delete",
        "/api/v1/workflowruns:stop",
        "/api/v1/workflowruns:export",
        "/api/v1/trigger",
    ] {
        assert!(doc["paths"][path]["post"].is_object(), "{path}");
    }
    let run = &doc["paths"]["/api/v1/namespaces/{namespace}/workflowruns/{name}"];
    assert!(run["get"].is_object() && run["delete"].is_object());
    assert!(doc["components"]["schemas"]["BulkResults"].is_object());
}
