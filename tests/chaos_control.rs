//! Chaos scenarios 3, 6 and 9 of issue 15, on the control plane: the controller SIGKILLed right
//! after a run's final status write (no stage runs again), the API server and etcd restarted
//! mid-run (no phase moves backwards, no status lost), and an approval and a schedule across
//! controller restarts and a leader change (decided once, fired once).
//!
//! Outcomes come from independent clients: a watch of the run of our own (kube-rs, dynamic
//! objects) samples its phase and `messagesPublished`; `kafka-count` counts the broker; the event
//! log is read through `devset api`'s JSON route; Kubernetes Events and schedules through kubectl.

mod common;

use common::{
    chaos::*,
    runs::{all_events, event_reasons, schedule_runs, stage_field, status},
    *,
};
use futures::StreamExt;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

const MINUTE: Duration = Duration::from_secs(60);
const RUN_RECONCILES: &str = "devset_reconcile_runs_total{controller=\"workflowrun\"";

/// The runtime the test's own Kubernetes client runs on (the tests themselves block).
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// `WorkflowRun`s of `ns` as dynamic objects: read without the crate's own types.
fn runs_api(ns: &str) -> Api<DynamicObject> {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        rt().block_on(async {
            let kubeconfig = Kubeconfig::read_from(env().var("KUBECONFIG")).unwrap();
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .unwrap();
            Client::try_from(config).unwrap()
        })
    });
    let gvk = GroupVersionKind::gvk("devset.io", "v1alpha1", "WorkflowRun");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "workflowruns");
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// What one look at a run showed.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    phase: String,
    published: i64,
}

impl Sample {
    fn of(obj: &DynamicObject) -> Self {
        let st = &obj.data["status"];
        Sample {
            at: Instant::now(),
            phase: st["phase"].as_str().unwrap_or_default().to_owned(),
            published: st["messagesPublished"].as_i64().unwrap_or(0),
        }
    }

    fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "Completed" | "Failed" | "Stopped")
    }
}

/// The order of phases: a run never goes from a higher rank to a lower one (Running and
/// WaitingForApproval alternate, so they share a rank).
fn rank(phase: &str) -> u8 {
    match phase {
        "" | "Pending" => 0,
        "Running" | "WaitingForApproval" => 1,
        "Stopping" => 2,
        _ => 3,
    }
}

/// A watch of one run (re-listing after errors, as the controller's does) recording every
/// version of it it sees.
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(ns: &str, run: &str) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let api = runs_api(ns);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={run}"));
        let into = samples.clone();
        let task = rt().spawn(async move {
            let mut stream = watcher(api, cfg)
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(obj) = ev {
                    into.lock().unwrap().push(Sample::of(&obj));
                }
            }
        });
        Self { samples, task }
    }

    fn all(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Waits (polling every 2 ms) for a sample that `f` selects; returns it.
    fn wait(&self, timeout: Duration, what: &str, f: impl Fn(&Sample) -> bool) -> Sample {
        let start = Instant::now();
        loop {
            if let Some(s) = self.all().into_iter().find(&f) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; seen {:?}",
                self.all()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every step back seen: a phase of lower rank, or fewer messages, after a later one.
    fn backwards(&self) -> Vec<String> {
        let all = self.all();
        all.windows(2)
            .filter(|w| rank(&w[1].phase) < rank(&w[0].phase) || w[1].published < w[0].published)
            .map(|w| {
                format!(
                    "{} ({} published) then {} ({})",
                    w[0].phase, w[0].published, w[1].phase, w[1].published
                )
            })
            .collect()
    }

    fn phases(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        for s in self.all() {
            if out.last() != Some(&s.phase) {
                out.push(s.phase.clone());
            }
        }
        out.join("→")
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sum of the lines of a controller's `/metrics` that start with `prefix`.
fn metric(port: u16, prefix: &str) -> Option<u64> {
    let (code, body) = http_get(port, "/metrics").ok()?;
    (code == 200).then(|| {
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    })
}

fn run_yaml(name: &str, workflow: &str) -> String {
    format!(
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {name}}}\n\
         spec: {{workflowRef: {{name: {workflow}}}, connectorRef: {{name: kafka}}}}\n"
    )
}

/// The events of `types` per stage in a run's log: (stage, count) where a stage has more than
/// one (a stage that ran again, a decision taken twice).
fn repeated(events: &[serde_json::Value], kind: &str) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for e in events.iter().filter(|e| e["type"] == kind) {
        *counts
            .entry(e["stage"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    counts.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// `run.phase` events of the log with reason `Resumed`.
fn resumed_in_log(events: &[serde_json::Value]) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == "run.phase" && e["reason"] == "Resumed")
        .count()
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// min / median / max of some durations.
fn spread(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort();
    format!(
        "min {} / median {} / max {}",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

/// Scenario 3: the controller SIGKILLed 0–500 ms after a run's phase turned Completed (as our
/// watch saw it), and a new one started: it must run no stage of the finished run again.
#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn s3_a_restart_right_after_the_final_status_write_reruns_nothing() {
    let _serial = serial();
    install_crds();
    let tns = TestNamespace::new("chaos3");
    let ns = tns.name.as_str();
    let count = reps(3, 20);
    let mut s = Scenario::new(
        "3",
        "Stale cache: controller SIGKILLed and started again right after a run's final status write",
        count,
    );
    let topic = unique("chaos3");
    env().apply(ns, &env().connectors());
    env().apply(
        ns,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: three}}\n\
             spec:\n  stages:\n\
             \x20   - {{name: first, publish: {{topic: {topic}, count: 100, ratePerSecond: 1000, payload: 'a {{{{ seq }}}}'}}}}\n\
             \x20   - {{name: pause, delay: {{duration: 100ms}}}}\n\
             \x20   - {{name: last, publish: {{topic: {topic}, count: 50, payload: 'b {{{{ seq }}}}'}}}}\n"
        ),
    );
    let per_run = 150;
    let store = sqlite_store(ns);
    let offsets: &[u64] = if full() {
        &[0, 10, 25, 50, 100, 200, 350, 500]
    } else {
        &[0, 50, 200]
    };
    let start = || {
        let port = free_port();
        (
            ControllerProcess::start_with_store(ns, 10, port, &store),
            port,
        )
    };
    let mut ctl = start();
    let mut moved_back = Vec::new();
    let mut wrong_status = Vec::new();
    let mut restart_reconcile = Vec::new();
    for i in 0..count {
        let run = format!("r{i}");
        let watch = Sampler::start(ns, &run);
        env().apply(ns, &run_yaml(&run, "three"));
        let done = watch.wait(MINUTE, "the run to finish", Sample::finished);
        assert_eq!(done.phase, "Completed", "run {run}: {done:?}");
        let offset = Duration::from_millis(offsets[i % offsets.len()]);
        std::thread::sleep((done.at + offset).saturating_duration_since(Instant::now()));
        ctl.0.kill();
        let killed = Instant::now();
        ctl = start();
        // The new controller has reconciled every run of the namespace, this one included.
        wait_until(MINUTE, "the new controller to reconcile every run", || {
            (metric(ctl.1, RUN_RECONCILES)? > i as u64).then_some(())
        });
        restart_reconcile.push(killed.elapsed());
        // Time for a resumed stage to start and publish again, were it resumed.
        std::thread::sleep(Duration::from_millis(1500));
        moved_back.extend(watch.backwards().into_iter().map(|b| format!("{run}: {b}")));
        let last = watch.all().last().cloned().unwrap();
        if last.phase != "Completed" || last.published != per_run {
            wrong_status.push(format!("{run}: {} {}", last.phase, last.published));
        }
        eprintln!(
            "  rep {i}: killed {} after Completed; phases {}",
            ms(offset),
            watch.phases()
        );
    }
    drop(ctl);
    let api = ApiProcess::start(ns, &store, "none");
    let (mut reruns, mut resumed, mut k8s_resumed) = (Vec::new(), 0, 0);
    for i in 0..count {
        let run = format!("r{i}");
        let log = all_events(api.port, ns, &run);
        let started = log.iter().filter(|e| e["type"] == "stage.started").count();
        if started != 3 {
            reruns.push(format!("{run}: {started} stage.started"));
        }
        reruns.extend(
            repeated(&log, "stage.started")
                .into_iter()
                .map(|(st, n)| format!("{run}/{st} started {n} times")),
        );
        resumed += resumed_in_log(&log);
        k8s_resumed += event_reasons(ns, &run)
            .iter()
            .filter(|r| *r == "Resumed")
            .count();
    }
    let on_broker = env().count("kafka-count", &topic);
    let expected = per_run * count as i64;
    s.figure(
        "kill offsets after Completed",
        format!("{offsets:?} ms, in turn"),
    );
    s.figure(
        "kill to the new controller's reconcile of every run",
        spread(restart_reconcile),
    );
    s.figure(
        "messages on the broker",
        format!("{on_broker} of {expected}"),
    );
    s.hold(
        reruns.is_empty(),
        if reruns.is_empty() {
            format!("no stage ran again: one stage.started per stage in each of the {count} runs")
        } else {
            format!("no stage ran again (but: {})", reruns.join(", "))
        },
    );
    s.hold(
        on_broker == expected,
        format!("the broker holds exactly the runs' messages ({on_broker} of {expected})"),
    );
    s.hold(
        resumed == 0 && k8s_resumed == 0,
        format!(
            "no finished run resumed ({resumed} Resumed in the log, {k8s_resumed} Kubernetes Events)"
        ),
    );
    s.hold(
        moved_back.is_empty() && wrong_status.is_empty(),
        format!(
            "status stayed Completed with {per_run} messages ({} steps back, {} wrong: {})",
            moved_back.len(),
            wrong_status.len(),
            [moved_back, wrong_status].concat().join("; ")
        ),
    );
    s.finish();
}

/// The port etcd's clients use, from the command `tests/env/up` recorded for it.
fn etcd_port() -> u16 {
    let cmd = std::fs::read_to_string(
        std::path::Path::new(env().var("DEVSET_ENV_DIR")).join("cmds/etcd"),
    )
    .expect("the environment records etcd's command (tests/env/up)");
    let url = cmd
        .split_whitespace()
        .skip_while(|w| *w != "--listen-client-urls")
        .nth(1)
        .expect("--listen-client-urls");
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn apiserver_port() -> u16 {
    let url = env().var("KUBE_APISERVER_URL");
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Scenario 6: `process` (kube-apiserver or etcd) stopped mid-run for `down` and started again.
/// With `leader`, the controller runs with leader election as the chart does (a 15 s Lease,
/// renewed within 10 s): an outage past that makes it exit, and it is started again as the
/// kubelet would.
fn control_plane_restart(id: &str, process: &str, port: u16, leader: bool, count: usize) {
    let _serial = serial();
    install_crds();
    let tns = TestNamespace::new(&format!("chaos{id}"));
    let ns = tns.name.as_str();
    let down = Duration::from_secs(if leader { 9 } else { 2 });
    let mut s = Scenario::new(
        id,
        &format!(
            "{process} stopped mid-run for {} s and started again{}",
            down.as_secs(),
            if leader {
                " (leader election on, the chart's 15 s Lease)"
            } else {
                ""
            }
        ),
        count,
    );
    env().apply(ns, &env().connectors());
    let topic = unique(&format!("chaos{id}"));
    let total = 3_000;
    // 500/s ends the run while the API server is away; 150/s goes on after it is back.
    let rates = [500, 150];
    for rate in rates {
        env().apply(
            ns,
            &format!(
                "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: paced{rate}}}\n\
                 spec:\n  stages:\n\
                 \x20   - {{name: send, publish: {{topic: {topic}, count: {total}, ratePerSecond: {rate}, payload: 'm {{{{ seq }}}}'}}}}\n\
                 \x20   - {{name: after, delay: {{duration: 200ms}}}}\n"
            ),
        );
    }
    let (store, lease) = (sqlite_store(ns), unique("lease"));
    let start = || {
        let port = free_port();
        if leader {
            elected(ns, &lease, &store, port, 15)
        } else {
            ControllerProcess::start_with_store(ns, 10, port, &store)
        }
    };
    let mut ctl = start();
    let pid = ctl.child.id();
    let (mut recover, mut downs, mut back_after) = (Vec::new(), Vec::new(), Vec::new());
    let (mut moved_back, mut lost, mut phases) = (Vec::new(), Vec::new(), Vec::new());
    let (mut exits, mut duplicates) = (Vec::new(), Vec::new());
    for i in 0..count {
        let run = format!("r{i}");
        let rate = rates[i % rates.len()];
        let watch = Sampler::start(ns, &run);
        env().apply(ns, &run_yaml(&run, &format!("paced{rate}")));
        watch.wait(MINUTE, "500 messages", |x| x.published >= 500);
        let before = watch.all().last().cloned().unwrap();
        let api = runs_api(ns);
        let rv_before = rt()
            .block_on(api.get(&run))
            .unwrap()
            .metadata
            .resource_version;
        let outage = Outage::stop(process, Some(port));
        let stopped = Instant::now();
        std::thread::sleep(down);
        outage.restore();
        downs.push(stopped.elapsed());
        // Back: the first read of the run that succeeds; then the controller's first write
        // (already there at that read when it came first: 0 ms).
        let started = Instant::now();
        let back = wait_until(MINUTE, "the API server to answer again", || {
            rt().block_on(api.get(&run))
                .ok()
                .map(|o| (Instant::now(), o))
        });
        back_after.push(back.0 - started);
        // A controller that exited (a lost Lease) is started again, as the kubelet would.
        std::thread::sleep(Duration::from_millis(300));
        if let Some(code) = ctl.child.try_wait().unwrap() {
            let why = ctl
                .log_text()
                .lines()
                .rev()
                .find(|l| l.contains("ERROR") || l.contains("Error"))
                .unwrap_or("no error line")
                .to_owned();
            exits.push(format!(
                "{code}: {}",
                why.chars().take(160).collect::<String>()
            ));
            ctl = start();
        }
        let written = if back.1.metadata.resource_version != rv_before {
            back.0
        } else {
            wait_until(MINUTE, "a status write after the restart", || {
                let o = rt().block_on(api.get(&run)).ok()?;
                (o.metadata.resource_version != rv_before).then_some(Instant::now())
            })
        };
        recover.push(written - back.0);
        let end = watch.wait(2 * MINUTE, "the run to finish", Sample::finished);
        std::thread::sleep(Duration::from_millis(500));
        let published: i64 = status(ns, &run, "{.status.messagesPublished}")
            .parse()
            .unwrap_or(-1);
        let on_broker = env().count("kafka-count", &topic)
            - total
            - duplicates.iter().sum::<i64>()
            - (total * i as i64);
        duplicates.push(on_broker);
        // Without leader election the same process goes on: no message is sent twice.
        let exact = on_broker == 0 || (leader && on_broker > 0);
        if end.phase != "Completed" || published != total || !exact {
            lost.push(format!(
                "{run}: {} with {published} published, {} on the broker (before the \
                 outage: {} at {})",
                end.phase,
                total + on_broker,
                before.published,
                before.phase
            ));
        }
        moved_back.extend(watch.backwards().into_iter().map(|b| format!("{run}: {b}")));
        phases.push(watch.phases());
    }
    let same = ctl.child.try_wait().unwrap().is_none() && ctl.child.id() == pid;
    s.figure("down (stop, pause, start)", spread(downs));
    s.figure(
        "back (first read that succeeds) after start",
        spread(back_after),
    );
    s.figure(
        "time to recover (back to the controller's first status write)",
        spread(recover),
    );
    s.figure("phases seen by the watch", phases.join(", "));
    s.hold(
        moved_back.is_empty(),
        format!(
            "no phase or count moved backwards ({} steps back{})",
            moved_back.len(),
            if moved_back.is_empty() {
                String::new()
            } else {
                format!(": {}", moved_back.join("; "))
            }
        ),
    );
    let what = if leader {
        format!("broker count >= messagesPublished = {total}")
    } else {
        format!("messagesPublished = the broker's count = {total}")
    };
    s.hold(
        lost.is_empty(),
        if lost.is_empty() {
            format!("every run completed with {what}")
        } else {
            format!("every run completed with {what} (not: {})", lost.join("; "))
        },
    );
    if leader {
        s.figure(
            "controller exits (a lost Lease; started again)",
            format!("{} in {count} outages: {}", exits.len(), exits.join("; ")),
        );
        s.figure(
            "duplicates on the broker per run",
            format!("{duplicates:?}"),
        );
    } else {
        s.hold(
            same && exits.is_empty(),
            if same {
                format!("the controller kept running: the same process (pid {pid}) at the end")
            } else {
                format!(
                    "the controller kept running (but it exited: {}; log tail: {})",
                    exits.join("; "),
                    tail(&ctl.log_text())
                )
            },
        );
    }
    s.finish();
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn s6a_the_api_server_restarted_mid_run() {
    control_plane_restart("6a", "kube-apiserver", apiserver_port(), false, reps(1, 6));
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn s6b_etcd_restarted_mid_run() {
    control_plane_restart("6b", "etcd", etcd_port(), false, reps(1, 6));
}

/// Full version only: an outage past the Lease's renew deadline makes the leader exit.
#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn s6c_the_api_server_away_past_the_lease_with_leader_election() {
    if !full() {
        eprintln!("scenario 6c runs in the full version only");
        return;
    }
    control_plane_restart("6c", "kube-apiserver", apiserver_port(), true, 2);
}

/// A controller with leader election on the Lease `lease` of `ns` (`seconds` long), its metrics
/// on `port`.
fn elected(ns: &str, lease: &str, store: &str, port: u16, seconds: u32) -> ControllerProcess {
    ControllerProcess::start_with_env(
        ns,
        10,
        port,
        store,
        &[
            ("DEVSET_LEADER_ELECT", "true"),
            ("DEVSET_LEADER_ELECTION_ID", lease),
            ("DEVSET_LEADER_ELECTION_NAMESPACE", ns),
            ("DEVSET_LEADER_ELECTION_LEASE_SECONDS", &seconds.to_string()),
        ],
    )
}

/// Which of the controllers on `ports` leads, once exactly one does.
fn leader_of(ports: &[u16]) -> usize {
    wait_until(MINUTE, "exactly one controller to lead", || {
        let leads: Vec<_> = ports.iter().map(|p| metric(*p, "devset_leader ")).collect();
        if leads.iter().any(Option::is_none) {
            return None;
        }
        let leaders: Vec<_> = (0..ports.len()).filter(|i| leads[*i] == Some(1)).collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
}

/// Approves `stage` of `run` through `devset api` (started with `--auth=none`).
fn approve(api: &ApiProcess, ns: &str, run: &str, stage: &str, comment: &str) {
    let url = api.url(&format!(
        "/api/v1/namespaces/{ns}/workflowruns/{run}/stages/{stage}/approve"
    ));
    let (code, body) = rt().block_on(async {
        let r = reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({ "comment": comment }))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    });
    assert_eq!(code, 200, "approve {run}/{stage}: {body}");
}

/// How the controller goes away around a pending approval, in turn.
const WAYS: [&str; 3] = [
    "leader SIGKILLed and replaced, then approved after the takeover",
    "leader SIGKILLed, approved while no controller leads",
    "approved, then the leader SIGKILLed 0-100 ms later",
];

/// Scenario 9a: an approval pending across a controller restart and a leader change (two
/// controllers on one Lease, PostgreSQL as their shared event store).
#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn s9a_an_approval_across_a_restart_and_a_leader_change_is_decided_once() {
    let _serial = serial();
    install_crds();
    let tns = TestNamespace::new("chaos9a");
    let ns = tns.name.as_str();
    let count = reps(3, 9);
    let mut s = Scenario::new(
        "9a",
        "An approval pending across a controller restart and a leader change",
        count,
    );
    let (before, after) = (unique("chaos9-before"), unique("chaos9-after"));
    env().apply(ns, &env().connectors());
    env().apply(
        ns,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: gated}}\n\
             spec:\n  stages:\n\
             \x20   - {{name: first, publish: {{topic: {before}, count: 3, payload: 'o {{{{ seq }}}}'}}}}\n\
             \x20   - {{name: go-live, approval: {{message: 'ship it?'}}}}\n\
             \x20   - {{name: rest, publish: {{topic: {after}, count: 5, payload: 'r {{{{ seq }}}}'}}}}\n"
        ),
    );
    let store = env().var("DATABASE_URL").to_owned();
    let lease = unique("lease");
    let mut ports = vec![free_port(), free_port()];
    let mut ctls: Vec<ControllerProcess> = ports
        .iter()
        .map(|p| elected(ns, &lease, &store, *p, 4))
        .collect();
    let api = ApiProcess::start(ns, &store, "none");
    let (mut takeovers, mut wrong) = (Vec::new(), Vec::new());
    let (mut logged_twice, mut rerun) = (0, 0);
    for i in 0..count {
        let run = format!("g{i}");
        let leader = leader_of(&ports);
        env().apply(ns, &run_yaml(&run, "gated"));
        let watch = Sampler::start(ns, &run);
        watch.wait(MINUTE, "the run to wait for a decision", |x| {
            x.phase == "WaitingForApproval"
        });
        let way = i % WAYS.len();
        let comment = format!("rep {i}");
        if way == 2 {
            approve(&api, ns, &run, "go-live", &comment);
            std::thread::sleep(Duration::from_millis([0, 20, 100][(i / 3) % 3]));
        }
        ctls[leader].kill();
        let killed = Instant::now();
        if way == 1 {
            approve(&api, ns, &run, "go-live", &comment);
        }
        // The dead one comes back (as the standby, or the leader if it wins the Lease).
        ports[leader] = free_port();
        ctls[leader] = elected(ns, &lease, &store, ports[leader], 4);
        leader_of(&ports);
        takeovers.push(killed.elapsed());
        if way == 0 {
            approve(&api, ns, &run, "go-live", &comment);
        }
        let end = watch.wait(MINUTE, "the run to finish", Sample::finished);
        std::thread::sleep(Duration::from_millis(500));
        let log = all_events(api.port, ns, &run);
        let decided: Vec<_> = log
            .iter()
            .filter(|e| e["type"] == "stage.approved" || e["type"] == "stage.rejected")
            .collect();
        // The same decision (user, comment) however often it was logged.
        let mut distinct: Vec<_> = decided
            .iter()
            .map(|e| (e["user"].to_string(), e["message"].to_string()))
            .collect();
        distinct.dedup();
        let of_rest = |kind: &str| {
            log.iter()
                .filter(|e| e["type"] == kind && e["stage"] == "rest")
                .count()
        };
        let (rest_started, rest_sent) = (of_rest("stage.started"), of_rest("message.published"));
        let decision = stage_field(ns, &run, "go-live", "approval.decision");
        let said = stage_field(ns, &run, "go-live", "approval.comment");
        let published = status(ns, &run, "{.status.messagesPublished}");
        eprintln!(
            "  rep {i} ({}): {} decision(s) logged, rest started {rest_started}x, {rest_sent} \
             sent, phases {}",
            WAYS[way],
            decided.len(),
            watch.phases()
        );
        let problem = format!(
            "{run} ({}): {} with {} decision events ({} distinct), rest started {rest_started} \
             times ({rest_sent} sent), status decision {decision:?} ({said:?}), {published} \
             published",
            WAYS[way],
            end.phase,
            decided.len(),
            distinct.len()
        );
        // Always: one decision, the run's own, in status; the run completes.
        if end.phase != "Completed"
            || distinct.len() != 1
            || decision != "Approved"
            || said != comment
            || published != "8"
        {
            wrong.push(problem);
        } else if way == 2 {
            // The leader killed just after the decision: it may have logged it, or sent some of
            // the next stage, before its status said so (the AtLeastOnce window).
            logged_twice += usize::from(decided.len() > 1);
            rerun += usize::from(rest_started > 1);
        } else if decided.len() != 1 || rest_started != 1 || rest_sent != 5 {
            wrong.push(problem);
        }
    }
    let (first, rest) = (
        env().count("kafka-count", &before),
        env().count("kafka-count", &after),
    );
    let n = count as i64;
    let raced = (0..count).filter(|i| i % WAYS.len() == 2).count();
    s.figure("ways, in turn", WAYS.join("; "));
    s.figure("kill to a leader again", spread(takeovers));
    s.figure(
        "killed just after the decision: decision logged twice (same decision)",
        format!("{logged_twice} of {raced} runs"),
    );
    s.figure(
        "killed just after the decision: next stage resumed mid-way (AtLeastOnce)",
        format!("{rerun} of {raced} runs, {} duplicates", rest - 5 * n),
    );
    s.hold(
        wrong.is_empty(),
        if wrong.is_empty() {
            format!(
                "each of {count} runs completed with its one decision in status; decided while \
                 no controller ran it: one stage.approved, the next stage started once"
            )
        } else {
            format!("decided once (not: {})", wrong.join("; "))
        },
    );
    s.hold(
        first == 3 * n && rest >= 5 * n,
        format!(
            "the broker holds the stage before the approval once ({first} of {}) and every \
             message after it ({rest} of {})",
            3 * n,
            5 * n
        ),
    );
    drop(ctls);
    s.finish();
}

/// How the controller is restarted around the schedule's minute, in turn: (killed at, started
/// at), in ms relative to the minute.
const AROUND_THE_MINUTE: [(i64, i64); 3] = [(-300, 0), (-50, 300), (0, 100)];

/// Scenario 9b: a WorkflowSchedule firing every minute across a controller restart at its
/// minute. Full version only (each repetition waits for a minute boundary).
#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn s9b_a_schedule_across_a_restart_at_its_minute_fires_once() {
    let _serial = serial();
    let count = reps(0, 3);
    if count == 0 {
        eprintln!("scenario 9b waits for minute boundaries: it runs in the full version only");
        return;
    }
    install_crds();
    env().kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/workflowschedules.devset.io",
    ]);
    let tns = TestNamespace::new("chaos9b");
    let ns = tns.name.as_str();
    let mut s = Scenario::new(
        "9b",
        "A schedule (every minute) across a controller restart at its minute",
        count,
    );
    env().apply(ns, &env().connectors());
    env().apply(
        ns,
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: quick}\n\
         spec:\n  stages:\n  - {name: wait, delay: {duration: 100ms}}\n---\n\
         apiVersion: devset.io/v1alpha1\nkind: WorkflowSchedule\nmetadata: {name: tick}\n\
         spec:\n  schedule: '* * * * *'\n  runTemplate:\n    \
         spec: {workflowRef: {name: quick}, connectorRef: {name: kafka}}\n",
    );
    let mut ctl = ControllerProcess::start(ns, 10);
    let (mut wrong, mut minutes, mut late) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..count {
        let next: jiff::Timestamp = wait_until(MINUTE, "the next schedule time", || {
            let t: jiff::Timestamp = env()
                .jsonpath(ns, "workflowschedule", "tick", "{.status.nextScheduleTime}")
                .parse()
                .ok()?;
            // At least a second ahead, so the kill can come before it.
            (t.as_millisecond() > jiff::Timestamp::now().as_millisecond() + 1000).then_some(t)
        });
        let (kill_at, start_at) = AROUND_THE_MINUTE[i % AROUND_THE_MINUTE.len()];
        let until = |offset: i64| {
            let ms = next.as_millisecond() + offset - jiff::Timestamp::now().as_millisecond();
            std::thread::sleep(Duration::from_millis(ms.max(0) as u64));
        };
        until(kill_at);
        ctl.kill();
        until(start_at);
        ctl = ControllerProcess::start(ns, 10);
        let name = format!("tick-{}", next.as_second() / 60);
        let fired = wait_until(MINUTE, "the run of the minute", || {
            schedule_runs(ns, "tick")
                .iter()
                .any(|(n, _)| *n == name)
                .then(jiff::Timestamp::now)
        });
        late.push(Duration::from_millis(
            (fired.as_millisecond() - next.as_millisecond()).max(0) as u64,
        ));
        // A second restart within the minute: nothing more may fire for it.
        ctl.kill();
        ctl = ControllerProcess::start(ns, 10);
        std::thread::sleep(Duration::from_secs(3));
        let of_minute: Vec<_> = schedule_runs(ns, "tick")
            .into_iter()
            .filter(|(_, at)| *at == next.to_string())
            .collect();
        if of_minute.len() != 1 || of_minute[0].0 != name {
            wrong.push(format!("{next}: {of_minute:?}"));
        }
        minutes.push(format!("{kill_at}/{start_at}"));
    }
    // Every run of the schedule has its minute's name, and no minute has two.
    let all = schedule_runs(ns, "tick");
    let mut ats: Vec<_> = all.iter().map(|(_, at)| at.clone()).collect();
    ats.sort();
    ats.dedup();
    let named = all.iter().all(|(n, at)| {
        at.parse::<jiff::Timestamp>()
            .is_ok_and(|t| *n == format!("tick-{}", t.as_second() / 60))
    });
    s.figure(
        "killed / started (ms from the minute), in turn",
        minutes.join(", "),
    );
    s.figure("the minute to its run, seen by kubectl", spread(late));
    s.figure(
        "Fired Events on the schedule",
        event_reasons(ns, "tick")
            .iter()
            .filter(|r| *r == "Fired")
            .count(),
    );
    s.hold(
        wrong.is_empty(),
        if wrong.is_empty() {
            format!("each of the {count} minutes fired exactly one run, SCHEDULE-<Unix minute>")
        } else {
            format!("each minute fired once (not: {})", wrong.join("; "))
        },
    );
    s.hold(
        ats.len() == all.len() && named,
        format!(
            "no minute has two runs and each is named by its minute ({} runs, {} minutes)",
            all.len(),
            ats.len()
        ),
    );
    s.finish();
}
