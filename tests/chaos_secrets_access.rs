//! Issue 15, scenarios 8, 11 and 12 (see `tests/common/chaos.rs`): an SSE stream cut and resumed
//! at random points with `Last-Event-ID` (8a) and `devset api`'s memory with clients that never
//! read (8b); a canary password of connectors' Secrets searched for everywhere devset writes or
//! answers (11); every route of the OpenAPI document with no token, a foreign, an expired and a
//! proper one, and what a user of another namespace sees (12).
//!
//! The file's name sorts it after the other `chaos_*` files and its tests run in name order
//! (`s08…`, `s11…`, `s12…`): scenario 11 scans the logs the others left in `target/it-logs/`.

mod common;
#[path = "chaos_secrets_access/routes.rs"]
mod routes;
#[path = "chaos_secrets_access/scan.rs"]
mod scan;
#[path = "chaos_secrets_access/views.rs"]
mod views;

use common::{chaos::*, *};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::{Method, StatusCode, header};
use routes::*;
use scan::*;
use serde_json::{Value, json};
use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use views::*;

const MINUTE: Duration = Duration::from_secs(60);
/// The log filter of the controllers and APIs of 8 and 12 (11 runs them at `debug`).
const LOGS: &str = "info,devset=debug,kube=warn";
/// Every RBAC verb the API checks on runs.
const RUN_VERBS: &str = "get, list, watch, patch, delete, create, approve";

/// The test `$name` of the environment: `$scenario` alone ([`serial`]) on a runtime of its own.
macro_rules! scenario_test {
    ($name:ident, $scenario:ident) => {
        #[test]
        #[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
        fn $name() {
            let _serial = serial();
            block_on($scenario());
        }
    };
}

/// Namespaces served by one `devset controller` and one `devset api` (`--auth kubernetes`) on
/// one SQLite store, each namespace with a Kafka connector `kafka`.
struct Site {
    api: ApiProcess,
    controller: ControllerProcess,
    ns: Vec<TestNamespace>,
}

impl Site {
    fn new(prefixes: &[&str], rust_log: &str) -> Site {
        install_crds();
        let ns: Vec<TestNamespace> = prefixes.iter().map(|p| TestNamespace::new(p)).collect();
        let served = ns.iter().map(|n| n.name.as_str()).collect::<Vec<_>>();
        let served = served.join(",");
        let store = sqlite_store(&ns[0].name);
        let kafka = env().var("KAFKA_BOOTSTRAP");
        for n in &ns {
            env().apply(
                &n.name,
                &format!(
                    "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: kafka}}\n\
                     spec: {{kafka: {{bootstrapServers: \"{kafka}\"}}}}\n"
                ),
            );
        }
        let log = [("RUST_LOG", rust_log)];
        let controller = ControllerProcess::start_with_env(&served, 10, 0, &store, &log);
        let api = ApiProcess::start_with_env(&served, &store, "kubernetes", &log);
        Site {
            api,
            controller,
            ns,
        }
    }

    fn ns(&self, i: usize) -> &str {
        &self.ns[i].name
    }

    /// `/api/v1/namespaces/NS/workflowruns/RUN` of the `i`th namespace.
    fn run_path(&self, i: usize, run: &str) -> String {
        format!("/api/v1/namespaces/{}/workflowruns/{run}", self.ns(i))
    }

    /// The run's summary as the API serves it (`None` until it knows the run).
    async fn summary(&self, i: usize, run: &str, token: &str) -> Option<Value> {
        let res = http()
            .get(self.api.url(&self.run_path(i, run)))
            .bearer_auth(token)
            .send()
            .await
            .ok()?;
        if res.status() != StatusCode::OK {
            return None;
        }
        res.json().await.ok()
    }

    /// The body of an open route of the API (`/metrics`, `/runs`, …).
    async fn text(&self, path: &str) -> String {
        let res = http().get(self.api.url(path)).send().await;
        res.unwrap().text().await.unwrap()
    }

    /// A value of the API's `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let text = self.text("/metrics").await;
        text.lines()
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    }
}

/// Applies a Workflow `run` (`stages`: YAML flow sequence) and a run of it on `connector`.
fn apply_run(ns: &str, run: &str, connector: &str, stages: &str) {
    env().apply(
        ns,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: {run}}}\n\
             spec: {{stages: {stages}}}\n---\napiVersion: devset.io/v1alpha1\nkind: WorkflowRun\n\
             metadata: {{name: {run}}}\nspec: {{workflowRef: {{name: {run}}}, connectorRef: {{name: {connector}}}}}\n"
        ),
    );
}

/// A publish stage of `count` messages of about `size` bytes each to `topic`.
fn publish_stage(topic: &str, count: u64, rate: u32, size: usize) -> String {
    let pad = "x".repeat(size);
    format!(
        "[{{name: publish, publish: {{topic: {topic}, count: {count}, ratePerSecond: {rate}, \
         key: 'k-{{{{ seq }}}}', payload: 'm {{{{ seq }}}} {pad}'}}}}]"
    )
}

/// Lets the ServiceAccount `sa` of `home` (created when missing) use `rules` (resource of
/// devset.io, verbs) in `ns`: a Role and a RoleBinding applied at once.
fn grant(home: &str, sa: &str, ns: &str, rules: &[(&str, &str)]) {
    env().apply(
        home,
        &format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}}}\n"),
    );
    let rules: String = rules
        .iter()
        .map(|(res, verbs)| {
            format!("- {{apiGroups: [devset.io], resources: [{res}], verbs: [{verbs}]}}\n")
        })
        .collect();
    let name = format!("{sa}-of-{home}");
    env().apply(
        ns,
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}}}\n\
             rules:\n{rules}---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
             metadata: {{name: {name}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\n\
             subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {home}}}]\n"
        ),
    );
}

/// A token of the ServiceAccount `sa` of `ns` (TokenRequest).
fn token(ns: &str, sa: &str) -> String {
    env()
        .kubectl_ok(&["-n", ns, "create", "token", sa])
        .trim()
        .to_owned()
}

/// A client that follows no redirect and keeps no cookie.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(2 * MINUTE)
        .build()
        .unwrap()
}

/// Reads the events of an SSE answer (sequence number, type, data) until it ends, `stop`
/// says so or no event came for `idle`.
async fn read_sse(
    res: reqwest::Response,
    idle: Duration,
    mut stop: impl FnMut(u64, &str, &str) -> bool,
) -> Vec<(u64, String, String)> {
    let mut got = Vec::new();
    let mut events = res.bytes_stream().eventsource();
    while let Ok(Some(ev)) = tokio::time::timeout(idle, events.next()).await {
        let ev = ev.expect("a well-formed SSE event");
        let seq = ev.id.parse().unwrap_or(0);
        let done = stop(seq, &ev.event, &ev.data);
        got.push((seq, ev.event, ev.data));
        if done {
            break;
        }
    }
    got
}

/// A small xorshift generator: the scenario prints its seed.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        Rng(t.as_nanos() as u64 | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

scenario_test!(
    s08a_sse_reconnects_with_last_event_id_lose_and_repeat_nothing,
    reconnects
);

/// 8a: the log of a run read by one client that drops its connection at random events and
/// reconnects with `Last-Event-ID`, as an EventSource does.
async fn reconnects() {
    let reconnects = reps(20, 100);
    let messages: u64 = if full() { 10_000 } else { 2_000 };
    let mut s = Scenario::new(
        "8a",
        "SSE: reconnects at random events of a run, with Last-Event-ID",
        reconnects,
    );
    let site = Site::new(&["chaos-resume"], LOGS);
    grant(site.ns(0), "reader", site.ns(0), &[("workflowruns", "get")]);
    let reader = token(site.ns(0), "reader");
    let topic = unique("resume");
    // About 10 s of publishing in the short version, 20 s in the full one: the cuts fall while
    // the log grows.
    let rate = if full() { 500 } else { 200 };
    apply_run(
        site.ns(0),
        "resume",
        "kafka",
        &publish_stage(&topic, messages, rate, 64),
    );
    let mut rng = Rng::seeded();
    s.figure("seed", rng.0);
    let mut cuts = BTreeSet::new();
    while cuts.len() < reconnects {
        cuts.insert(1 + rng.below(messages));
    }
    let mut cuts = cuts.into_iter();
    let client = http();
    let url = site
        .api
        .url(&format!("{}/events", site.run_path(0, "resume")));
    let start = Instant::now();
    let mut seqs: Vec<u64> = Vec::new();
    let mut published = 0;
    let mut connections = 0;
    loop {
        let cut = cuts.next();
        let res = wait_for_async(MINUTE, "the API to serve the run's events", || {
            let mut req = client
                .get(&url)
                .bearer_auth(&reader)
                .header(header::ACCEPT, "text/event-stream");
            if let Some(last) = seqs.last() {
                req = req.header("Last-Event-ID", last.to_string());
            }
            async move {
                req.send()
                    .await
                    .ok()
                    .filter(|r| r.status() == StatusCode::OK)
            }
        })
        .await;
        connections += 1;
        let got = read_sse(res, MINUTE, |seq, _, _| cut.is_some_and(|c| seq >= c)).await;
        published += got.iter().filter(|g| g.1 == "message.published").count();
        let cut_reached = cut.is_some_and(|c| got.last().is_some_and(|g| g.0 >= c));
        seqs.extend(got.iter().map(|g| g.0));
        if !cut_reached {
            break;
        }
        assert!(connections <= reconnects + 1, "more streams than cuts");
    }
    s.figure("read in", format!("{:.1} s", start.elapsed().as_secs_f64()));
    runs::wait_phase(site.ns(0), "resume", "Completed", MINUTE);
    let summary = site.summary(0, "resume", &reader).await.expect("the run");
    let last = summary["events"]["lastSeq"].as_u64().expect("lastSeq");
    let unique_seqs: BTreeSet<u64> = seqs.iter().copied().collect();
    let duplicates = seqs.len() - unique_seqs.len();
    let gaps = (1..=last).filter(|q| !unique_seqs.contains(q)).count();
    let on_broker = env().count("kafka-count", &topic);
    s.figure("events (lastSeq)", last);
    s.figure("reconnects", connections - 1);
    s.figure("duplicates", duplicates);
    s.figure("gaps", gaps);
    s.hold(
        connections - 1 == reconnects,
        format!(
            "{} of {reconnects} reconnects made, each at a random event",
            connections - 1
        ),
    );
    s.hold(
        seqs == (1..=last).collect::<Vec<_>>(),
        format!("the union of {connections} streams is exactly 1..{last}, in order"),
    );
    s.hold(duplicates == 0, format!("{duplicates} duplicates"));
    s.hold(gaps == 0, format!("{gaps} gaps"));
    s.hold(
        published as u64 == messages && on_broker >= messages as i64,
        format!("{published} message events for {messages} messages ({on_broker} on the broker)"),
    );
    s.finish();
}

/// Runs a scenario on a runtime of its own.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Polls an async check until it gives a value; panics after `timeout`.
async fn wait_for_async<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "no {what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The resident memory of a process, in bytes (`VmRSS` of /proc/PID/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// An SSE request for `path` on a socket with a 4 KiB receive buffer that is never read.
async fn stalled_client(port: u16, path: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    conn
}

/// Frames a stalled stream may hold in `devset api`: its channel's (256, `events.rs`) and the
/// one being sent; the store's pages it backfills from are no larger than the channel's room
/// (`hub.rs`).
const FRAMES_PER_STREAM: u64 = 256 + 1;
/// What hyper buffers at most per connection before it stops polling the body (its default
/// `max_buf_size`: 8 KiB + 100 × 4 KiB).
const HYPER_BUFFER: u64 = 8_192 + 4_096 * 100;
/// The allocator's pages around those buffers: twice what they hold.
const ALLOCATOR: u64 = 2;
/// Memory of the API that does not depend on the streams: the store's page cache, the normal
/// reader's stream.
const BASE_SLACK: u64 = 64 << 20;

scenario_test!(
    s08b_clients_that_stop_reading_do_not_grow_the_api_memory,
    stalled_clients
);

/// 8b: 100 clients open a run's stream and never read while the run appends a big log; the
/// API's memory stays within what its per-stream buffers allow, and a normal reader beside
/// them gets the whole log.
async fn stalled_clients() {
    let clients = 100;
    let messages: u64 = if full() { 100_000 } else { 20_000 };
    let mut s = Scenario::new(
        "8b",
        "SSE: 100 clients that never read while a big run appends",
        1,
    );
    let site = Site::new(&["chaos-stall"], LOGS);
    grant(site.ns(0), "reader", site.ns(0), &[("workflowruns", "get")]);
    let reader = token(site.ns(0), "reader");
    let topic = unique("stall");
    // A pause first, so that half the clients stall from the log's start, and 1 KiB payloads.
    let stages = publish_stage(&topic, messages, 1_000_000, 1_024).replacen(
        '[',
        "[{name: wait, delay: {duration: 3s}}, ",
        1,
    );
    apply_run(site.ns(0), "stall", "kafka", &stages);
    wait_for_async(MINUTE, "the API to know the run", || {
        site.summary(0, "stall", &reader)
    })
    .await;
    let pid = site.api.child.id();
    let path = format!("{}/events", site.run_path(0, "stall"));
    let before = rss(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut stalled = Vec::new();
    for _ in 0..clients / 2 {
        stalled.push(stalled_client(site.api.port, &path, &reader).await);
    }
    // The normal reader, beside them.
    let res = http()
        .get(site.api.url(&path))
        .bearer_auth(&reader)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let normal = tokio::spawn(read_sse(res, MINUTE, |_, _, _| false));
    // The other half join a third of the way in: they start from the store (backfill).
    wait_for_async(2 * MINUTE, "a third of the log", || async {
        let v = site.summary(0, "stall", &reader).await?;
        (v["events"]["lastSeq"].as_u64()? >= messages / 3).then_some(())
    })
    .await;
    for _ in clients / 2..clients {
        stalled.push(stalled_client(site.api.port, &path, &reader).await);
    }
    let got = tokio::time::timeout(5 * MINUTE, normal)
        .await
        .expect("the normal reader ends")
        .unwrap();
    runs::wait_phase(site.ns(0), "stall", "Completed", MINUTE);
    let open = site.metric("devset_api_open_streams").await;
    let at_end = rss(pid);
    drop(stalled);
    let closing = Instant::now();
    let mut left = open;
    while left > 0.0 && closing.elapsed() < MINUTE {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = site.metric("devset_api_open_streams").await;
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let after = rss(pid);
    let peak = peak.load(Ordering::Relaxed);
    let n = got.len() as u64;
    let log_bytes: u64 = got.iter().map(|g| g.2.len() as u64 + 40).sum();
    let biggest = got.iter().map(|g| g.2.len() as u64 + 40).max().unwrap_or(0);
    let per_stream = FRAMES_PER_STREAM * biggest + HYPER_BUFFER;
    let bound = clients as u64 * per_stream * ALLOCATOR + BASE_SLACK;
    let unbounded = clients as u64 * log_bytes;
    s.figure("events", n);
    s.figure("log", mib(log_bytes));
    s.figure("stalled clients", clients);
    s.figure("API RSS before", mib(before));
    s.figure("peak", mib(peak));
    s.figure("at the run's end", mib(at_end));
    s.figure("after the clients closed", mib(after));
    s.figure(
        "per stalled client",
        mib(peak.saturating_sub(before) / clients as u64),
    );
    s.hold(
        got.iter().map(|g| g.0).eq(1..=n) && got.last().is_some_and(|g| g.1 == "run.phase"),
        format!("the reader beside them got 1..{n}, ending with the run's phase"),
    );
    s.hold(
        open >= clients as f64,
        format!("{open} streams open at the run's end (the stalled ones were served)"),
    );
    s.hold(
        peak.saturating_sub(before) <= bound && bound < unbounded,
        format!(
            "RSS grew {} at the peak, within {} = {clients} clients × {ALLOCATOR} × ({FRAMES_PER_STREAM} \
             frames × {biggest} B + hyper's {HYPER_BUFFER} B) + {} (buffering the whole log per \
             client: {})",
            mib(peak.saturating_sub(before)),
            mib(bound),
            mib(BASE_SLACK),
            mib(unbounded)
        ),
    );
    s.hold(
        left == 0.0,
        format!(
            "the streams closed when their clients went ({left} open {:.1} s later)",
            closing.elapsed().as_secs_f64()
        ),
    );
    s.finish();
}

scenario_test!(
    s11_a_canary_password_of_a_connector_secret_appears_nowhere,
    canary
);

/// 11: a canary password in the Secrets of four connectors — one RabbitMQ connector the node
/// accepts it from, one whose node does not answer, one whose user is unknown, and a Kafka
/// connector with SASL against a broker without it — is searched for in every status, Event,
/// debug log, answer and export of devset, and in every log the other tests left.
async fn canary() {
    let mut s = Scenario::new(
        "11",
        "Secrets: a canary password of connectors' Secrets, searched for everywhere",
        1,
    );
    let canary = format!("Cnry{}", random_hex(16));
    let user = unique("canary");
    let _user = RabbitUser::new(&user, &canary);
    let site = Site::new(&["chaos-secrets"], "debug");
    let ns = site.ns(0).to_owned();
    let (amqp, _, _) = env().amqp_parts();
    let kafka = env().var("KAFKA_BOOTSTRAP");
    let refused = format!("amqp://127.0.0.1:{}/%2f", free_port());
    let queue = unique("canary");
    declare_queue(&queue).await;
    let connector = |name: &str, spec: String| {
        format!(
            "---\napiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: {name}}}\n\
             spec: {spec}\n"
        )
    };
    let rabbit = |url: &str, secret: &str| {
        format!("{{rabbitmq: {{url: \"{url}\", secretRef: {{name: {secret}}}}}}}")
    };
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: canary}}\n\
         stringData: {{username: \"{user}\", password: \"{canary}\"}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: canary-stranger}}\n\
         stringData: {{username: \"stranger-{user}\", password: \"{canary}\"}}\n"
    );
    yaml += &connector("rabbit", rabbit(&amqp, "canary"));
    yaml += &connector("rabbit-refused", rabbit(&refused, "canary"));
    yaml += &connector("rabbit-denied", rabbit(&amqp, "canary-stranger"));
    yaml += &connector(
        "kafka-sasl",
        format!(
            "{{kafka: {{bootstrapServers: \"{kafka}\", securityProtocol: SASL_PLAINTEXT, \
             sasl: {{mechanism: PLAIN, secretRef: {{name: canary}}}}}}}}"
        ),
    );
    env().apply(&ns, &yaml);
    let to_queue = format!(
        "[{{name: publish, publish: {{queue: {queue}, count: 50, payload: 'm {{{{ seq }}}}'}}}}]"
    );
    let runs_on = [
        ("ok", "rabbit"),
        ("refused", "rabbit-refused"),
        ("denied", "rabbit-denied"),
        ("sasl", "kafka-sasl"),
    ];
    for (run, conn) in &runs_on[..3] {
        apply_run(&ns, run, conn, &to_queue);
    }
    apply_run(
        &ns,
        "sasl",
        "kafka-sasl",
        &publish_stage(&unique("canary"), 50, 1_000, 8),
    );
    grant(
        &ns,
        "auditor",
        &ns,
        &[
            ("workflowruns", RUN_VERBS),
            ("workflowschedules", "get, list, patch"),
            ("workflows, brokerconnectors", "get, list"),
        ],
    );
    let auditor = token(&ns, "auditor");

    // The canary works: RabbitMQ takes the run's messages with it.
    runs::wait_phase(&ns, "ok", "Completed", 2 * MINUTE);
    let on_queue = env().count("rabbitmq-count", &queue);
    s.hold(
        on_queue == 50,
        format!("RabbitMQ accepted the canary password: the run put {on_queue} of 50 messages on the queue"),
    );
    // The failing connectors say why, and their runs end (or at least say why they wait).
    let ready = |c: &str, f: &str| {
        env().jsonpath(
            &ns,
            "brokerconnector",
            c,
            &format!("{{.status.conditions[?(@.type==\"Ready\")].{f}}}"),
        )
    };
    let start = Instant::now();
    while start.elapsed() < MINUTE
        && runs_on[1..].iter().any(|(run, c)| {
            ready(c, "status") != "False"
                || !matches!(
                    runs::status(&ns, run, "{.status.phase}").as_str(),
                    "Failed" | "Completed" | "Stopped"
                )
        })
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let states: Vec<String> = runs_on
        .iter()
        .map(|(run, c)| {
            format!(
                "{c} {} {}, run {}",
                ready(c, "status"),
                ready(c, "reason"),
                runs::status(&ns, run, "{.status.phase}")
            )
        })
        .collect();
    s.figure("connectors", states.join(", "));
    s.hold(
        runs_on[1..]
            .iter()
            .all(|(_, c)| ready(c, "status") == "False"),
        "the three connectors the canary cannot open are not Ready (their errors were made)",
    );

    // Every answer of the API on every run: the routes of its document (SSE included), with
    // their error answers (re-runs of runs that did not finish, approvals of stages that are
    // not approvals, …), the JSON and CSV exports, every event in full.
    let asset = String::new();
    let mut answers = String::new();
    let ops = operations(&site).await;
    let calls = ops
        .iter()
        .filter(|op| op.method != Method::DELETE && !op.path.ends_with(":delete"));
    let calls: Vec<&Op> = calls.collect();
    let mut made = 0;
    for (i, (run, _)) in runs_on.iter().enumerate() {
        let name = run.to_string();
        let target = Target {
            ns: ns.clone(),
            run: Box::new(move |_| name.clone()),
            stage: "publish".into(),
            schedule: "none".into(),
            workflow: run.to_string(),
            connector: runs_on[i].1.into(),
            asset: asset.clone(),
            port: site.api.port,
        };
        for op in calls
            .iter()
            .filter(|op| i == 0 || op.path.contains("{name}"))
        {
            let (code, body) = call(op, &target, Some(&auditor), Duration::from_millis(1500)).await;
            answers += &format!("{} {code}\n{body}\n", op.label());
            made += 1;
        }
        let run_path = site.run_path(0, run);
        for q in ["/events?limit=1000", "/events?format=csv"] {
            let res = http()
                .get(site.api.url(&format!("{run_path}{q}")))
                .bearer_auth(&auditor)
                .send()
                .await
                .unwrap();
            answers += &res.text().await.unwrap();
            made += 1;
        }
        let last = site
            .summary(0, run, &auditor)
            .await
            .map_or(0, |v| v["events"]["lastSeq"].as_u64().unwrap_or(0));
        for seq in 1..=last {
            let url = site.api.url(&format!("{run_path}/events/{seq}"));
            answers += &http()
                .get(url)
                .bearer_auth(&auditor)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            made += 1;
        }
    }
    let all: Vec<Value> = runs_on
        .iter()
        .map(|(r, _)| json!({"namespace": ns, "name": r}))
        .collect();
    for format in ["json", "csv"] {
        let res = http()
            .post(site.api.url("/api/v1/workflowruns:export"))
            .bearer_auth(&auditor)
            .json(&json!({"runs": all, "format": format}))
            .send()
            .await
            .unwrap();
        answers += &res.text().await.unwrap();
        made += 1;
    }
    s.figure("API requests", made);

    let (plain, url) = (b64(canary.as_bytes(), false), b64(canary.as_bytes(), true));
    let needles = vec![
        ("the canary", canary.as_str()),
        ("its base64", plain.as_str()),
        ("its base64url", url.as_str()),
    ];
    let mut found = Search::default();
    found.scan(
        "API answers (routes, streams, exports, errors)",
        &answers,
        &needles,
    );
    let kubectl = |args: &[&str]| env().kubectl_ok(args);
    found.scan(
        "run statuses",
        &kubectl(&["get", "workflowruns", "-n", &ns, "-o", "json"]),
        &needles,
    );
    found.scan(
        "connector statuses",
        &kubectl(&["get", "brokerconnectors", "-n", &ns, "-o", "json"]),
        &needles,
    );
    found.scan(
        "Kubernetes Events",
        &kubectl(&["get", "events", "-A", "-o", "json"]),
        &needles,
    );
    found.scan(
        "controller log (debug)",
        &site.controller.log_text(),
        &needles,
    );
    found.scan("API log (debug)", &site.api.log_text(), &needles);
    // Every log of target/it-logs (the other tests' included); the environment's own
    // passwords too in the devset logs (other tests' Secrets hold them; the manifests and
    // kubeconfigs tests write there as input do too, so only `.log` files for those).
    let env_secrets = [
        ("the RabbitMQ password", url_password(env().var("AMQP_URL"))),
        (
            "the PostgreSQL password",
            url_password(env().var("DATABASE_URL")),
        ),
    ];
    let mut with_env = needles.clone();
    with_env.extend(env_secrets.iter().map(|(w, p)| (*w, p.as_str())));
    let (mut n_files, mut n_bytes) = (0, 0u64);
    for f in files(&repo().join("target/it-logs")) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).into_owned();
        let is_log = f.extension().is_some_and(|e| e == "log");
        let place = f.strip_prefix(repo()).unwrap_or(&f).display().to_string();
        found.scan(&place, &text, if is_log { &with_env } else { &needles });
        n_files += 1;
        n_bytes += text.len() as u64;
    }
    s.figure(
        "places scanned",
        format!(
            "{} ({n_files} files of target/it-logs among them, {})",
            found.places.len(),
            mib(n_bytes)
        ),
    );
    s.figure("bytes scanned", mib(found.bytes));
    s.figure("occurrences", found.hits.len());
    s.hold(
        found.hits.is_empty(),
        format!(
            "the canary (plain, base64, base64url) in 0 of {} places, {} scanned{}",
            found.places.len(),
            mib(found.bytes),
            if found.hits.is_empty() {
                String::new()
            } else {
                format!(": {}", found.hits.join("; "))
            }
        ),
    );
    s.finish();
}

scenario_test!(s12_every_route_answers_each_token_as_documented, access);

/// 12: every operation of the OpenAPI document (and the event-stream answers) with no token,
/// an expired one, a foreign one (a ServiceAccount of another namespace with rights only
/// there) and a proper one; what that foreign user sees of the namespace in lists, exports
/// and streams.
async fn access() {
    let mut s = Scenario::new(
        "12",
        "Access: every route × no, expired, foreign and proper token; another namespace's view",
        1,
    );
    let site = Site::new(&["chaos-access", "chaos-foreign"], LOGS);
    let (a, b) = (site.ns(0).to_owned(), site.ns(1).to_owned());
    let rules = [
        ("workflowruns", RUN_VERBS),
        ("workflowschedules", "get, list, patch"),
        ("workflows, brokerconnectors", "get, list"),
    ];
    grant(&a, "owner", &a, &rules);
    // The list of every served namespace's runs needs `list` in each.
    grant(&a, "owner", &b, &[("workflowruns", "get, list")]);
    grant(&b, "intruder", &b, &rules);
    let quick = publish_stage(&unique("access"), 5, 1_000, 8);
    for run in ["done", "done2", "done3"] {
        apply_run(&a, run, "kafka", &quick);
    }
    apply_run(&b, "b-done", "kafka", &quick);
    let gate = "[{name: gate, approval: {message: chaos, timeout: 1h}}]";
    apply_run(&a, "gate-a", "kafka", gate);
    apply_run(&a, "gate-r", "kafka", gate);
    apply_run(
        &a,
        "long",
        "kafka",
        "[{name: wait, delay: {duration: 10m}}]",
    );
    env().apply(
        &a,
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowSchedule\nmetadata: {name: nightly}\n\
         spec: {schedule: '0 3 * * *', runTemplate: {spec: {workflowRef: {name: done}, connectorRef: {name: kafka}}}}\n",
    );
    let proper = token(&a, "owner");
    let foreign = token(&b, "intruder");
    // An expired token: `kubectl create token` will not go below 10 minutes, so the owner's
    // token is issued again with its lifetime moved to end 5 minutes ago, signed with the API server's
    // own key; the same re-signing without the shift must be accepted (the signature is right).
    let expired = reissued(&proper, Some(300));
    let control = token_review(&reissued(&proper, None));
    let refused = token_review(&expired);
    s.figure(
        "expired token",
        format!(
            "the owner's TokenRequest token moved to expire 5 min ago, re-signed with the service-account key \
             (TokenReview: {})",
            refused["error"].as_str().unwrap_or("?")
        ),
    );
    s.hold(
        control["authenticated"] == true
            && refused["authenticated"] != true
            && refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("expired")),
        "the API server accepts the re-signed token and refuses the shifted one as expired",
    );
    for run in ["done", "done2", "done3"] {
        runs::wait_phase(&a, run, "Completed", MINUTE);
    }
    runs::wait_phase(&b, "b-done", "Completed", MINUTE);
    for run in ["gate-a", "gate-r"] {
        runs::wait_phase(&a, run, "WaitingForApproval", MINUTE);
    }
    runs::wait_phase(&a, "long", "Running", MINUTE);

    let mut leaks = visibility(&site, &a, &b, &foreign).await;
    s.figure("views of the foreign user checked", leaks.0);
    s.hold(
        leaks.1.is_empty(),
        format!(
            "a user with rights only in another namespace sees no run of this one in {} lists, \
             exports, streams and bulk actions{}",
            leaks.0,
            leaks.1.iter().map(|l| format!("; {l}")).collect::<String>()
        ),
    );
    leaks.1.clear();

    let index = site.text("/runs").await;
    let asset = index
        .split("/assets/")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("index.html names an asset")
        .to_owned();
    let target = Target {
        ns: a.clone(),
        run: Box::new(|op: &Op| {
            let p = &op.path;
            match () {
                _ if p.ends_with("/approve") => "gate-a",
                _ if p.ends_with("/reject") => "gate-r",
                _ if p.ends_with("/stop") || p.ends_with(":stop") => "long",
                _ if op.method == Method::DELETE => "done2",
                _ if p.ends_with(":delete") => "done3",
                _ => "done",
            }
            .to_owned()
        }),
        stage: "publish".into(),
        schedule: "nightly".into(),
        workflow: "done".into(),
        connector: "kafka".into(),
        asset,
        port: site.api.port,
    };
    let ops = operations(&site).await;
    let mut mismatches = Vec::new();
    let mut checks = 0;
    for op in &ops {
        let mut none = 0;
        for (kind, tok) in [
            (Token::None, None),
            (Token::Expired, Some(expired.as_str())),
            (Token::Foreign, Some(foreign.as_str())),
            (Token::Proper, Some(proper.as_str())),
        ] {
            let (code, body) = call(op, &target, tok, Duration::from_millis(300)).await;
            if kind == Token::None {
                none = code;
            }
            let want = expected(op, kind, none);
            checks += 1;
            // An open route answers as it documents, and never asks for a token.
            let open_ok = !op.open || op.signs_in() || op.codes.contains(&code) && code != 401;
            if !want.contains(&code) || !open_ok {
                let body: String = body.chars().take(200).collect();
                mismatches.push(format!(
                    "{} with {kind:?} token: {code}, not {want:?} ({body})",
                    op.label()
                ));
            }
        }
    }
    s.figure(
        "routes",
        format!(
            "{} (document operations and their event streams)",
            ops.len()
        ),
    );
    s.figure("routes × tokens checked", checks);
    s.figure("mismatches", mismatches.len());
    s.hold(
        mismatches.is_empty(),
        format!(
            "{checks} answers as documented: 401 without or with an expired token, 403 (or nothing of \
             the namespace) to a foreign one, 2xx to the proper one{}",
            mismatches.iter().map(|m| format!("; {m}")).collect::<String>()
        ),
    );
    s.finish();
}
