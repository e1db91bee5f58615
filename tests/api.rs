//! `devset api` with `devset controller`, both outside the cluster, against the real API server
//! (TokenReview, SubjectAccessReview, RBAC), the real Kafka, and both event stores. Clients are
//! independent: reqwest with an SSE parser, kubectl for tokens and RBAC, Kafka's own tools for
//! counts.

mod common;

use common::{
    ApiProcess, ControllerProcess, TestNamespace, env, install_crds, sqlite_store, unique,
    wait_until,
};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::{StatusCode, header};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

const MINUTE: Duration = Duration::from_secs(60);

/// A namespace with a Kafka connector, a controller and an API on one event store.
struct Setup {
    api: ApiProcess,
    _controller: ControllerProcess,
    ns: TestNamespace,
    /// A token of a ServiceAccount that may get, list and patch WorkflowRuns here.
    token: String,
}

impl Setup {
    fn new(prefix: &str, store: Option<&str>) -> Setup {
        Setup::with_env(prefix, store, &[])
    }

    /// With more environment variables for the controller.
    fn with_env(prefix: &str, store: Option<&str>, controller_env: &[(&str, &str)]) -> Setup {
        install_crds();
        let ns = TestNamespace::new(prefix);
        let store = store.map_or_else(|| sqlite_store(&ns.name), str::to_owned);
        let kafka = env().var("KAFKA_BOOTSTRAP");
        env().apply(
            &ns.name,
            &format!(
                "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: kafka}}\n\
                 spec: {{kafka: {{bootstrapServers: \"{kafka}\"}}}}\n"
            ),
        );
        let controller = ControllerProcess::start_with_env(&ns.name, 10, 0, &store, controller_env);
        let api = ApiProcess::start(&ns.name, &store, "kubernetes");
        let token = service_account(&ns.name, "operator", Some("get,list,patch"));
        Setup {
            api,
            _controller: controller,
            ns,
            token,
        }
    }

    fn events_url(&self, run: &str) -> String {
        self.api.url(&format!(
            "/api/v1/namespaces/{}/workflowruns/{run}/events",
            self.ns.name
        ))
    }

    fn run_url(&self, run: &str) -> String {
        self.api.url(&format!(
            "/api/v1/namespaces/{}/workflowruns/{run}",
            self.ns.name
        ))
    }

    /// Applies a Workflow of one publish stage and a run of it.
    fn start_run(&self, run: &str, topic: &str, count: u64, rate: u32) {
        env().apply(
            &self.ns.name,
            &format!(
                "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: {run}}}\nspec:\n  stages:\n\
                 \x20   - name: publish\n      publish: {{topic: {topic}, count: {count}, ratePerSecond: {rate}, \
                 key: 'k-{{{{ seq }}}}', headers: {{source: devset}}, payload: 'm {{{{ seq }}}}'}}\n---\n\
                 apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {run}}}\n\
                 spec: {{workflowRef: {{name: {run}}}, connectorRef: {{name: kafka}}}}\n"
            ),
        );
    }

    fn phase(&self, run: &str) -> String {
        env().jsonpath(&self.ns.name, "workflowrun", run, "{.status.phase}")
    }
}

/// A ServiceAccount, with a Role of `verbs` on workflowruns when given; returns its token.
fn service_account(ns: &str, name: &str, verbs: Option<&str>) -> String {
    env().kubectl_ok(&["-n", ns, "create", "serviceaccount", name]);
    if let Some(verbs) = verbs {
        env().kubectl_ok(&[
            "-n",
            ns,
            "create",
            "role",
            name,
            &format!("--verb={verbs}"),
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
        .kubectl_ok(&["-n", ns, "create", "token", name])
        .trim()
        .to_owned()
}

/// GET `url` with `token`; the answer's JSON.
async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl, token: &str) -> Value {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// One received SSE event.
#[derive(Clone, Debug)]
struct Got {
    seq: u64,
    kind: String,
    /// The `data:` field, a JSON object (parsed on demand: 200 clients parse a lot).
    raw: String,
    /// Microseconds from the event's time to its receipt; `None` for events appended before
    /// the stream opened (backfill, not live).
    lag_us: Option<i64>,
}

/// Polls an async check until it gives a value; panics after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Got {
    fn data(&self) -> Value {
        serde_json::from_str(&self.raw).expect("data is one JSON object")
    }
}

/// The `time` of an event's JSON, without parsing the rest.
fn event_time_us(raw: &str) -> i64 {
    let at = raw.find("\"time\":\"").expect("a time field") + 8;
    let end = at + raw[at..].find('"').unwrap();
    raw[at..end]
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_microsecond()
}

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// Opens an SSE stream (retrying while the API does not know the run yet).
async fn open_stream(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    last_event_id: Option<u64>,
) -> reqwest::Response {
    let start = Instant::now();
    loop {
        let mut req = client
            .get(url)
            .bearer_auth(token)
            .header(header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let res = req.send().await.expect("the API answers");
        if res.status() == StatusCode::NOT_FOUND && start.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        let ct = res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        return res;
    }
}

/// Reads a stream until it ends (or `limit` events); the stream must end within `timeout`.
async fn read_stream(res: reqwest::Response, limit: Option<usize>, timeout: Duration) -> Vec<Got> {
    let opened = now_us();
    let mut out = Vec::new();
    let mut events = res.bytes_stream().eventsource();
    let read = async {
        while let Some(ev) = events.next().await {
            let ev = ev.expect("a well-formed SSE event");
            let time = event_time_us(&ev.data);
            out.push(Got {
                seq: ev.id.parse().expect("id is the sequence number"),
                kind: ev.event.clone(),
                lag_us: (time >= opened).then(|| now_us() - time),
                raw: ev.data,
            });
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .expect("the stream ends after the run's last event");
    out
}

fn percentile(mut v: Vec<i64>, p: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i] as f64 / 1000.0
}

fn seqs(events: &[Got]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn kafka_count(topic: &str) -> i64 {
    let out = env().client("kafka-count", &[topic]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "kafka-count {topic}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The full log of a 1,000-message run over SSE, live, in order, checked against the broker.
async fn full_log_of_a_run(store: Option<&str>) {
    let s = Setup::new("sse", store);
    let topic = unique("sse");
    s.start_run("full", &topic, 1_000, 1_000);
    let client = http();
    let res = open_stream(&client, &s.events_url("full"), &s.token, None).await;
    let events = read_stream(res, None, 2 * MINUTE).await;
    let n = events.len() as u64;
    assert_eq!(
        seqs(&events),
        (1..=n).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(events[0].kind, "run.phase");
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.data()["phase"].as_str()),
        ("run.phase", Some("Completed"))
    );
    let messages: Vec<&Got> = events
        .iter()
        .filter(|e| e.kind == "message.published")
        .collect();
    assert_eq!(messages.len(), 1_000);
    let sequences: BTreeSet<u64> = messages
        .iter()
        .map(|e| e.data()["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=1_000).collect());
    for m in &messages {
        let d = m.data();
        let k = d["sequence"].as_u64().unwrap();
        assert_eq!(d["target"]["topic"], topic.as_str());
        assert_eq!(d["target"]["connector"], "kafka");
        assert_eq!(d["stage"], "publish");
        assert_eq!(d["key"], format!("k-{k}"));
        assert_eq!(d["payload"], format!("m {k}"));
        assert_eq!(d["headers"]["source"], "devset");
        assert!(d["partition"].is_i64() && d["offset"].is_i64(), "{d}");
    }
    for kind in ["stage.started", "stage.completed"] {
        assert_eq!(
            events.iter().filter(|e| e.kind == kind).count(),
            1,
            "{kind}"
        );
    }
    // The broker has what the log says, counted by Kafka's own consumer.
    assert_eq!(kafka_count(&topic), 1_000);
    // The run's summary agrees.
    let run: Value = get_json(&client, s.run_url("full"), &s.token).await;
    assert_eq!(run["events"]["lastSeq"], n);
    assert_eq!(run["events"]["storedMessageEvents"], 1_000);
    wait_until(MINUTE, "the run to be Completed", || {
        (s.phase("full") == "Completed").then_some(())
    });
    let lags: Vec<i64> = messages.iter().filter_map(|e| e.lag_us).collect();
    println!(
        "SSE ({}): {n} events, {} received live; append-to-receipt latency p50 {:.1} ms, p99 {:.1} ms",
        store.map_or("sqlite", |_| "postgres"),
        lags.len(),
        percentile(lags.clone(), 0.5),
        percentile(lags, 0.99)
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn sse_streams_the_full_log_of_a_1000_message_run_in_order_sqlite() {
    full_log_of_a_run(None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn sse_streams_the_full_log_of_a_1000_message_run_in_order_postgres() {
    let url = env().var("DATABASE_URL").to_owned();
    full_log_of_a_run(Some(&url)).await;
}

async fn reconnect(store: Option<&str>) {
    let s = Setup::new("resume", store);
    s.start_run("resume", &unique("resume"), 1_000, 500);
    let client = http();
    let url = s.events_url("resume");
    // Read part of the stream, then drop the connection.
    let first = read_stream(
        open_stream(&client, &url, &s.token, None).await,
        Some(200),
        MINUTE,
    )
    .await;
    assert_eq!(seqs(&first), (1..=200).collect::<Vec<_>>());
    // An EventSource reconnects with the last id it saw.
    let rest = read_stream(
        open_stream(&client, &url, &s.token, Some(200)).await,
        None,
        2 * MINUTE,
    )
    .await;
    let mut all = seqs(&first);
    all.extend(seqs(&rest));
    let n = all.len() as u64;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "exactly 1..N: no gap, no duplicate"
    );
    assert!(n > 1_000, "every message and the lifecycle events: {n}");
    assert_eq!(rest.last().unwrap().data()["phase"], "Completed");

    // The same log as JSON pages, and `?after=` on SSE once the run has ended.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page: Value =
            get_json(&client, format!("{url}?after={after}&limit=150"), &s.token).await;
        let items = page["items"].as_array().unwrap();
        paged.extend(items.iter().map(|e| e["seq"].as_u64().unwrap()));
        after = page["next"].as_u64().unwrap();
        if !page["more"].as_bool().unwrap() {
            assert!(page["complete"].as_bool().unwrap(), "{page}");
            break;
        }
        assert_eq!(items.len(), 150);
    }
    assert_eq!(paged, all);
    let tail = read_stream(
        open_stream(&client, &format!("{url}?after={}", n - 3), &s.token, None).await,
        None,
        MINUTE,
    )
    .await;
    assert_eq!(seqs(&tail), vec![n - 2, n - 1, n]);
    // Nothing after the end: the stream closes at once.
    let none = read_stream(
        open_stream(&client, &url, &s.token, Some(n)).await,
        None,
        Duration::from_secs(10),
    )
    .await;
    assert!(none.is_empty());

    // CSV export: a header and one row per event.
    let res = client
        .get(format!("{url}?format=csv"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = res.text().await.unwrap();
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let header_row = rows.headers().unwrap().clone();
    assert_eq!(&header_row[0], "seq");
    assert!(header_row.iter().any(|h| h == "payload"));
    let recs: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(recs.len() as u64, n);
    assert_eq!(&recs[0][0], "1");

    // One event in full.
    let msg = rest.iter().find(|e| e.kind == "message.published").unwrap();
    let one: Value = get_json(&client, format!("{url}/{}", msg.seq), &s.token).await;
    assert_eq!(one, msg.data());
    let missing = client
        .get(format!("{url}/{}", n + 10))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn a_reconnect_with_last_event_id_ends_with_exactly_1_to_n_and_pages_csv_detail_agree() {
    reconnect(None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn a_reconnect_with_last_event_id_on_postgres() {
    let url = env().var("DATABASE_URL").to_owned();
    reconnect(Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn two_hundred_concurrent_clients_all_receive_every_event() {
    let s = Setup::new("fanout", None);
    s.start_run("fanout", &unique("fanout"), 1_000, 1_000);
    let client = http();
    let url = s.events_url("fanout");
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let (client, url, token) = (client.clone(), url.clone(), s.token.clone());
            tokio::spawn(async move {
                let res = open_stream(&client, &url, &token, None).await;
                read_stream(res, None, 3 * MINUTE).await
            })
        })
        .collect();
    let mut lags = Vec::new();
    let mut n = None;
    for c in clients {
        let got = c.await.unwrap();
        let len = got.len() as u64;
        assert_eq!(seqs(&got), (1..=len).collect::<Vec<_>>());
        assert_eq!(got.last().unwrap().data()["phase"], "Completed");
        assert_eq!(*n.get_or_insert(len), len, "every client got the same log");
        lags.extend(
            got.iter()
                .filter(|e| e.kind == "message.published")
                .filter_map(|e| e.lag_us),
        );
    }
    assert!(n.unwrap() > 1_000);
    println!(
        "SSE, 200 clients: {} events each, {} received live in all; append-to-receipt latency p50 {:.1} ms, p99 {:.1} ms",
        n.unwrap(),
        lags.len(),
        percentile(lags.clone(), 0.5),
        percentile(lags, 0.99)
    );
    let metrics = client
        .get(s.api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sent: f64 = metrics
        .lines()
        .find(|l| l.starts_with("devset_api_events_sent_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("devset_api_events_sent_total");
    assert!(sent >= 200.0 * n.unwrap() as f64, "{sent}");
    // The API's own view: append to write on the socket, from its histogram.
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("devset_api_event_lag_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_owned();
            Some((le, l.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    let under = |q: f64| {
        buckets
            .iter()
            .find(|b| b.1 >= q * total)
            .map_or("?".to_owned(), |b| b.0.clone())
    };
    println!(
        "SSE, 200 clients, at the API (all events): p50 <= {} s, p99 <= {} s",
        under(0.5),
        under(0.99)
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn tokens_and_rbac_decide_401_403_and_stop_works_only_with_patch() {
    let s = Setup::new("auth", None);
    let ns = s.ns.name.clone();
    let reader = service_account(&ns, "reader", Some("get,list"));
    let nobody = service_account(&ns, "nobody", None);
    s.start_run("long", &unique("auth"), 100_000, 200);
    wait_until(MINUTE, "the run to be Running", || {
        (s.phase("long") == "Running").then_some(())
    });
    let client = http();
    let events = s.events_url("long");
    let list = s.api.url(&format!("/api/v1/namespaces/{ns}/workflowruns"));
    let stop = format!("{}/stop", s.run_url("long"));

    let res = client.get(&events).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("Unauthorized"))
    );
    let res = client
        .get(&events)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for url in [&events, &list] {
        let res = client.get(url).bearer_auth(&nobody).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{url}");
        let body: Value = res.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("nobody"),
            "{body}"
        );
    }
    // Reading is not stopping.
    let res = client
        .get(&events)
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = client
        .post(&stop)
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(s.phase("long"), "Running");

    // A stream open while the run is stopped ends with the Stopped phase.
    let stream = open_stream(&client, &events, &reader, None).await;
    let res = client
        .post(&stop)
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["stop"], true);
    let got = read_stream(stream, None, MINUTE).await;
    let phases: Vec<String> = got
        .iter()
        .filter(|e| e.kind == "run.phase")
        .map(|e| e.data()["phase"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        phases.ends_with(&["Stopping".to_string(), "Stopped".to_string()]),
        "{phases:?}"
    );
    // The log's terminal event is durable before the status is written: wait for the status.
    wait_until(MINUTE, "the run to be Stopped", || {
        (s.phase("long") == "Stopped").then_some(())
    });
    let res = client
        .post(&stop)
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);

    // The run list: filters and pages.
    s.start_run("short", &unique("auth"), 10, 1_000);
    wait_until(MINUTE, "the short run to be Completed", || {
        (s.phase("short") == "Completed").then_some(())
    });
    let get = |q: &str| {
        let (client, url, token) = (client.clone(), format!("{list}{q}"), reader.clone());
        async move {
            let res = client.get(&url).bearer_auth(&token).send().await.unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    eventually(
        MINUTE,
        "the API's cache to see both runs finished",
        || async {
            let (_, all) = get("").await;
            let phases: Vec<String> = all["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["phase"].as_str().unwrap().to_owned())
                .collect();
            (phases.len() == 2 && phases.iter().all(|p| p == "Stopped" || p == "Completed"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(names(&get("?phase=Stopped").await.1), vec!["long"]);
    assert_eq!(
        names(&get("?phase=Completed&workflow=short").await.1),
        vec!["short"]
    );
    assert!(names(&get("?workflow=other").await.1).is_empty());
    assert!(names(&get("?since=2999-01-01T00:00:00Z").await.1).is_empty());
    assert_eq!(names(&get("?until=2999-01-01T00:00:00Z").await.1).len(), 2);
    let (code, body) = get("?phase=Bogus").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("phase"),
        "{body}"
    );
    let (_, first) = get("?limit=1").await;
    let token = first["continue"]
        .as_str()
        .expect("a continue token")
        .to_owned();
    let (_, second) = get(&format!("?limit=1&continue={token}")).await;
    let mut both = names(&first);
    both.extend(names(&second));
    both.sort();
    assert_eq!(both, vec!["long", "short"]);
    assert!(second.get("continue").is_none());

    // The OpenAPI document.
    let doc: Value = client
        .get(s.api.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/api/v1/namespaces/{namespace}/workflowruns/{name}/events"].is_object());
}

/// Beyond the per-run cap the controller counts message events instead of storing them; the
/// lifecycle events are all kept, and the count adds up to what the broker received.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn beyond_the_per_run_cap_message_events_are_counted_not_kept() {
    let s = Setup::with_env(
        "cap",
        None,
        &[("DEVSET_EVENTS_MAX_MESSAGES_PER_RUN", "150")],
    );
    let topic = unique("cap");
    s.start_run("capped", &topic, 3_000, 1_000_000);
    wait_until(2 * MINUTE, "the run to be Completed", || {
        (s.phase("capped") == "Completed").then_some(())
    });
    let client = http();
    let run: Value = get_json(&client, s.run_url("capped"), &s.token).await;
    assert_eq!(run["events"]["storedMessageEvents"], 150, "{run}");
    assert_eq!(run["events"]["droppedMessageEvents"], 2_850, "{run}");
    let page: Value = get_json(
        &client,
        format!("{}?limit=1000", s.events_url("capped")),
        &s.token,
    )
    .await;
    let items = page["items"].as_array().unwrap();
    let count = |kind: &str| items.iter().filter(|e| e["type"] == kind).count();
    assert_eq!(count("message.published"), 150);
    assert_eq!((count("stage.started"), count("stage.completed")), (1, 1));
    let last = items.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["phase"].as_str()),
        (Some("run.phase"), Some("Completed"))
    );
    assert_eq!(run["events"]["lastSeq"], items.len());
    assert_eq!(kafka_count(&topic), 3_000);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn deleting_a_run_removes_its_events() {
    let s = Setup::new("delete", None);
    s.start_run("gone", &unique("delete"), 20, 1_000);
    wait_until(MINUTE, "the run to be Completed", || {
        (s.phase("gone") == "Completed").then_some(())
    });
    let client = http();
    let page: Value = get_json(&client, s.events_url("gone"), &s.token).await;
    assert!(page["items"].as_array().unwrap().len() > 20);
    env().kubectl_ok(&[
        "-n",
        &s.ns.name,
        "delete",
        "workflowrun",
        "gone",
        "--wait=true",
    ]);
    // The store no longer has the log (read directly, as an independent check).
    let store = devset::events::Store::open(&sqlite_store(&s.ns.name), Default::default())
        .await
        .unwrap();
    let key = devset::events::RunKey::new(&s.ns.name, "gone");
    assert!(store.log(&key).await.unwrap().is_none());
    assert!(store.events(&key, 0, 10).await.unwrap().is_empty());
    eventually(MINUTE, "the API to answer 404", || async {
        let res = client
            .get(s.events_url("gone"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        (res.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn auth_none_warns_and_idle_streams_get_heartbeats() {
    install_crds();
    let ns = TestNamespace::new("idle");
    // No controller: the run stays as applied, its log empty, its stream idle.
    env().apply(
        &ns.name,
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {name: idle}\n\
         spec: {workflowRef: {name: nothing}, connectorRef: {name: nothing}}\n",
    );
    let api = ApiProcess::start(&ns.name, &sqlite_store(&ns.name), "none");
    assert!(
        api.log_text().contains("--auth=none"),
        "a warning at start: {}",
        api.log_text()
    );
    let url = api.url(&format!(
        "/api/v1/namespaces/{}/workflowruns/idle/events",
        ns.name
    ));
    let res = open_stream(&http(), &url, "", None).await;
    let mut body = res.bytes_stream();
    let start = Instant::now();
    let mut seen = Vec::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(25), body.next()).await {
        seen.extend_from_slice(&chunk.unwrap());
        if seen.windows(12).any(|w| w == b": heartbeat\n") {
            break;
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&seen),
        ": heartbeat\n\n",
        "one heartbeat comment and nothing else"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(14) && waited < Duration::from_secs(20),
        "every 15 s: {waited:?}"
    );
}
