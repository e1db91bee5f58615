//! The CLI as people run it: `devset run` (embedded broker, the test environment's Kafka and
//! RabbitMQ, Ctrl-C, bad input), `devset lint` (every broken fixture, the samples) and
//! `devset logs -f` against a cluster run across a restart of `devset api`.
//!
//! The tests of `run` on the embedded broker and of `lint` need nothing but the binary; the
//! others need the test environment (`tests/env/up`, or `tests/run`).

mod common;

use common::{
    ApiProcess, ControllerProcess, TestNamespace, declare_queue, env, expectations, free_port,
    install_crds, repo, sqlite_store, unique, wait_until,
};
use serde_json::Value;
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

const MINUTE: Duration = Duration::from_secs(60);

fn devset() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_devset"));
    c.env_remove("RUST_LOG").env_remove("DEVSET_API_SERVER");
    c
}

fn run(args: &[&str]) -> Output {
    devset().args(args).output().expect("devset runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The JSON lines of `devset run -o json`.
fn events(stdout: &[u8]) -> Vec<Value> {
    text(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// A file in a temporary directory that lives as long as the returned guard.
fn write_temp(name: &str, body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

fn sample(name: &str) -> String {
    repo()
        .join("config/samples")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn run_of_the_sample_on_the_embedded_broker_completes_and_the_broker_holds_its_messages() {
    let out = run(&["run", "-f", &sample("workflow.yaml"), "-o", "json"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(
        stderr.contains("publishing to an embedded Kafka broker (librdkafka's mock cluster)"),
        "it says so at start: {stderr}"
    );
    let ev = events(&out.stdout);
    // Numbered 1..N, as the event log numbers them.
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=ev.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        (&ev[0]["type"], &ev[0]["phase"], &ev[0]["run"]),
        (
            &"run.phase".into(),
            &"Running".into(),
            &"orders-local".into()
        )
    );
    let last = ev.last().unwrap();
    assert_eq!(
        (&last["type"], &last["phase"]),
        (&"run.phase".into(), &"Completed".into())
    );
    for (stage, topic) in [("create-orders", "orders"), ("payments", "payments")] {
        let msgs: Vec<&Value> = of_type(&ev, "message.published")
            .into_iter()
            .filter(|e| e["stage"] == stage)
            .collect();
        let mut sequences: Vec<u64> = msgs
            .iter()
            .map(|e| e["sequence"].as_u64().unwrap())
            .collect();
        sequences.sort();
        assert_eq!(sequences, (1..=100).collect::<Vec<_>>(), "{stage}");
        for m in msgs {
            assert_eq!(m["target"]["topic"], topic);
            assert_eq!(m["key"], format!("order-{}", m["sequence"]));
            assert!(m["offset"].is_i64(), "{m}");
        }
    }
    // The payload template saw the param's default.
    assert!(
        of_type(&ev, "message.published")[0]["payload"]
            .as_str()
            .unwrap()
            .contains("\"region\": \"eu-west\"")
    );
    assert_eq!(of_type(&ev, "stage.completed").len(), 3);
    // Read back from the broker by a client of its own: the high watermarks.
    assert!(
        stderr.contains("embedded Kafka broker received: orders 100, payments 100"),
        "{stderr}"
    );
    assert!(stderr.contains("run orders-local Completed"), "{stderr}");
    assert!(stderr.contains("total: 200 messages"), "{stderr}");
}

#[test]
fn text_output_has_event_lines_and_a_summary_with_each_stage_and_the_rate() {
    let out = run(&[
        "run",
        "-f",
        &sample("workflow.yaml"),
        "--param",
        "region=ap-south",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    for want in [
        "run Running: running workflow \"orders\" through the embedded Kafka broker",
        "stage create-orders started (attempt 1)",
        "stage settle completed",
        "stage payments completed",
        "run Completed: every stage succeeded",
        "run orders-local Completed in",
        "STAGE",
        "MSG/S",
        "total: 200 messages in",
        "embedded Kafka broker received: orders 100, payments 100",
    ] {
        assert!(stdout.contains(want), "{want:?} missing:\n{stdout}");
    }
    let summary = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("settle"))
        .unwrap();
    assert!(
        summary.contains("Succeeded") && summary.contains("1.0"),
        "{summary}"
    );
    assert!(
        !stdout.contains("message create-orders #"),
        "message lines only on request"
    );
    let out = run(&["run", "-f", &sample("workflow.yaml"), "--show-messages"]);
    assert!(text(&out.stdout).contains("message create-orders #1 -> topic orders via local"));
}

#[test]
fn embedded_broker_throughput() {
    let (_dir, wf) = write_temp(
        "burst.yaml",
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: burst}\nspec:\n  stages:\n\
         \x20 - name: burst\n    publish: {topic: burst, count: 50000, key: 'k-{{ seq }}', payload: '{\"n\": {{ seq }}}'}\n",
    );
    let start = Instant::now();
    let out = run(&["run", "-f", wf.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    assert!(
        stdout.contains("embedded Kafka broker received: burst 50000"),
        "{stdout}"
    );
    let total = stdout.lines().find(|l| l.starts_with("total:")).unwrap();
    println!(
        "embedded broker, 50,000 messages: {total} (command took {:?})",
        start.elapsed()
    );
}

/// `devset run -o json` started in the background; its stdout lines arrive on a channel.
fn spawn_run(args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = devset()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    (child, rx)
}

/// The lines a child writes to its piped stdout, as they come.
fn stdout_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn sigint(child: &std::process::Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn ctrl_c_stops_the_run_gracefully_with_phase_and_exit_code_stopped() {
    let (_dir, wf) = write_temp(
        "slow.yaml",
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: slow}\nspec:\n  stages:\n\
         \x20 - name: slow\n    publish: {topic: slow, count: 100000, ratePerSecond: 200}\n\
         \x20 - name: after\n    delay: {duration: 1s}\n",
    );
    let (mut child, rx) = spawn_run(&["run", "-f", wf.to_str().unwrap(), "-o", "json"]);
    let mut lines = Vec::new();
    // Stop once some messages went out.
    let mut sent = 0;
    while sent < 50 {
        let line = rx.recv_timeout(MINUTE).expect("events before the stop");
        sent += usize::from(line.contains("message.published"));
        lines.push(line);
    }
    sigint(&child);
    let status = child.wait().unwrap();
    lines.extend(rx.iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let ev: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let phases: Vec<&str> = of_type(&ev, "run.phase")
        .iter()
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["Running", "Stopping", "Stopped"]);
    assert_eq!(of_type(&ev, "stage.stopped").len(), 1);
    assert!(
        of_type(&ev, "stage.started")
            .iter()
            .all(|e| e["stage"] == "slow"),
        "no stage starts after the stop"
    );
    let published = of_type(&ev, "message.published").len();
    assert!((50..100_000).contains(&published), "{published}");
    // Every message sent was acknowledged and counted before the end: the broker agrees.
    assert!(
        stderr.contains(&format!("embedded Kafka broker received: slow {published}")),
        "{published} published:\n{stderr}"
    );
    assert!(stderr.contains("run slow-local Stopped"), "{stderr}");
}

#[test]
fn a_second_ctrl_c_quits_at_once() {
    // The embedded broker answers 1.5 s late, so the graceful stop waits for acknowledgements
    // long enough for a second Ctrl-C to cut it short.
    let (_dir, wf) = write_temp(
        "wait.yaml",
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: wait}\nspec:\n  stages:\n\
         \x20 - name: many\n    publish: {topic: t, count: 1000000}\n",
    );
    let mut child = devset()
        .args(["run", "-f", wf.to_str().unwrap(), "-o", "json"])
        .env("DEVSET_EMBEDDED_BROKER_RTT_MS", "1500")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let mut lines: Vec<String> = Vec::new();
    let mut wait_for = |what: &str| loop {
        let line = rx.recv_timeout(MINUTE).expect(what);
        let found = line.contains(what);
        lines.push(line);
        if found {
            break;
        }
    };
    wait_for("message.published");
    sigint(&child);
    wait_for("\"Stopping\"");
    let start = Instant::now();
    sigint(&child);
    let status = child.wait().unwrap();
    lines.extend(rx.iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    // No timing bound beyond a sanity one: on a loaded machine signals can take a while.
    assert!(start.elapsed() < MINUTE, "{:?}", start.elapsed());
    assert!(
        stderr.contains("second Ctrl-C: quitting at once"),
        "{stderr}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("\"Stopped\"")),
        "no graceful end: {}",
        lines.last().unwrap()
    );
}

/// Runs `devset ARGS` expecting bad input: exit 2 and exactly one line on stderr, `error: …`
/// with every `want`, and no panic.
fn bad_input(args: &[&str], want: &[&str]) {
    let out = run(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("devset: "))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: one error line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for w in want {
        assert!(lines[0].contains(w), "{args:?}: {w:?} missing in: {stderr}");
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"));
}

#[test]
fn bad_input_is_one_clear_line_naming_the_file_field_param_or_broker() {
    let wf = sample("workflow.yaml");
    bad_input(
        &["run", "-f", &wf, "--param", "zone=x"],
        &[
            "--param zone=x",
            "has no param \"zone\"",
            "it declares orders, region",
        ],
    );
    bad_input(
        &["run", "-f", &wf, "--param", "orders=many"],
        &["--param orders=many", "expected integer"],
    );
    bad_input(
        &["run", "-f", "/nonexistent/wf.yaml"],
        &["/nonexistent/wf.yaml: cannot read"],
    );
    let (_d, broken) = write_temp("broken.yaml", "kind: Workflow\nspec: [\n");
    bad_input(
        &["run", "-f", broken.to_str().unwrap()],
        &["broken.yaml: not valid YAML"],
    );
    let fixture = repo().join("tests/fixtures/invalid/stage-name-not-dns-label.yaml");
    bad_input(
        &["run", "-f", fixture.to_str().unwrap()],
        &["stage-name-not-dns-label.yaml:spec.stages[0].name: must be a DNS label"],
    );
    bad_input(
        &["run", "-f", &wf, "--kafka", "127.0.0.1:1"],
        &["cannot reach Kafka at 127.0.0.1:1 (--kafka)", "unreachable"],
    );
    // The RabbitMQ connector sample names a Secret of its own file; the Kafka one has none.
    let run_yaml = sample("workflowrun.yaml");
    let kafka = sample("kafka-connector.yaml");
    bad_input(
        &["run", "-f", &wf, "-f", &run_yaml, "-f", &kafka],
        &["cannot reach Kafka at kafka-bootstrap.kafka.svc:9092 (BrokerConnector \"kafka\" in "],
    );
    let (_d2, q) = write_temp(
        "q.yaml",
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: q}\nspec:\n  stages:\n\
         \x20 - {name: q, publish: {queue: q, connectorRef: {name: rabbitmq}}}\n---\n\
         apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {name: rabbitmq}\n\
         spec: {rabbitmq: {url: 'amqp://127.0.0.1:1/%2f', secretRef: {name: missing}}}\n",
    );
    bad_input(
        &["run", "-f", q.to_str().unwrap()],
        &["q.yaml: BrokerConnector \"rabbitmq\": Secret \"missing\" not found in the given files"],
    );
}

// --- lint -------------------------------------------------------------------------------

#[test]
fn lint_reports_each_broken_manifest_with_its_field_path() {
    let dir = repo().join("tests/fixtures/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 20);
    let mut problems = Vec::new();
    for file in &files {
        let expect = expectations(file);
        let (path, messages) = expect.split_first().expect("an expected field path");
        let f = file.to_str().unwrap();
        let out = run(&["lint", "-f", f]);
        let stdout = text(&out.stdout);
        if out.status.code() != Some(1) {
            problems.push(format!("{f}: exit {:?}: {stdout}", out.status));
        }
        let prefix = format!("{f}:{path}: ");
        let Some(line) = stdout.lines().find(|l| l.starts_with(&prefix)) else {
            problems.push(format!("{f}: no line for {path}:\n{stdout}"));
            continue;
        };
        for m in messages {
            if !line.contains(m.as_str()) {
                problems.push(format!("{f}: {line:?} lacks {m:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // All at once: one line per problem, each file named.
    let mut args = vec!["lint".to_owned()];
    for f in &files {
        args.extend(["-f".to_owned(), f.display().to_string()]);
    }
    let out = devset().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for f in &files {
        assert!(
            stdout.contains(&format!("{}:", f.display())),
            "{}",
            f.display()
        );
    }
}

#[test]
fn every_cel_rule_of_the_crds_has_a_broken_fixture() {
    let mut messages = Vec::new();
    for entry in std::fs::read_dir(repo().join("tests/fixtures/invalid")).unwrap() {
        messages.extend(expectations(&entry.unwrap().path()));
    }
    let validator = devset::cli::schema::Validator::new();
    for (kind, rule, message) in validator.all_rules() {
        if rule.contains("oldSelf") {
            continue; // transition rules need the old object: the API server checks them
        }
        let message = message.unwrap_or_default();
        assert!(
            messages
                .iter()
                .any(|m| message.contains(m.as_str()) && m.len() > 10),
            "{kind}: no fixture in tests/fixtures/invalid expects the message of {rule:?} ({message:?})"
        );
    }
}

#[test]
fn lint_accepts_the_samples_and_reports_engine_checks() {
    let mut args = vec!["lint".to_owned()];
    for entry in std::fs::read_dir(repo().join("config/samples")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap() != "kustomization.yaml" {
            args.extend(["-f".to_owned(), p.display().to_string()]);
        }
    }
    let out = devset().args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("no problems"));

    let (_d, f) = write_temp(
        "wf.yaml",
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  stages:\n\
         \x20 - {name: a, dependsOn: [b], delay: {duration: 1s}}\n\
         \x20 - {name: b, dependsOn: [a], publish: {topic: t, key: '{{ nope }}'}}\n",
    );
    let out = run(&["lint", "-f", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let f = f.display();
    assert!(
        stdout.contains(&format!("{f}:spec.stages: dependency cycle: a -> b -> a")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{f}:spec.stages[1].publish.key: unknown variable \"nope\""
        )),
        "{stdout}"
    );
}

// --- against the test environment ---------------------------------------------------------

fn count(script: &str, target: &str) -> i64 {
    let out = env().client(script, &[target]);
    text(&out.stdout).trim().parse().unwrap_or_else(|_| {
        panic!(
            "{script} {target}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// A workflow with a Kafka stage and a RabbitMQ stage (through connector `rabbitmq`).
fn two_broker_workflow(topic: &str, queue: &str) -> String {
    format!(
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: both}}\nspec:\n  stages:\n\
         \x20 - name: to-kafka\n    publish: {{topic: {topic}, count: 2000, key: 'k-{{{{ seq }}}}', payload: 'kafka {{{{ seq }}}}'}}\n\
         \x20 - name: to-rabbitmq\n    publish: {{queue: {queue}, count: 1500, connectorRef: {{name: rabbitmq}}, payload: 'rabbit {{{{ seq }}}}'}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn run_against_the_real_kafka_and_rabbitmq_with_flags() {
    let (topic, queue) = (unique("cli-k"), unique("cli-q"));
    declare_queue(&queue).await;
    let (_d, wf) = write_temp("both.yaml", &two_broker_workflow(&topic, &queue));
    let out = env()
        .command(env!("CARGO_BIN_EXE_devset"))
        .args(["run", "-f", wf.to_str().unwrap(), "-o", "json"])
        .args([
            "--kafka",
            env().var("KAFKA_BOOTSTRAP"),
            "--amqp",
            env().var("AMQP_URL"),
        ])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("embedded"), "{stderr}");
    let ev = events(&out.stdout);
    assert_eq!(ev.last().unwrap()["phase"], "Completed");
    let msgs = of_type(&ev, "message.published");
    assert_eq!(
        msgs.iter()
            .filter(|m| m["target"]["topic"] == topic.as_str())
            .count(),
        2000
    );
    assert_eq!(
        msgs.iter()
            .filter(|m| m["target"]["queue"] == queue.as_str())
            .count(),
        1500
    );
    // Counted by the brokers' own tools.
    assert_eq!(count("kafka-count", &topic), 2000);
    assert_eq!(count("rabbitmq-count", &queue), 1500);
    println!(
        "{}",
        stderr
            .lines()
            .find(|l| l.starts_with("total:"))
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn run_against_the_real_brokers_from_connector_files_with_a_secret() {
    let (topic, queue) = (unique("cli-k"), unique("cli-q"));
    declare_queue(&queue).await;
    let (url, user, pass) = env().amqp_parts();
    let kafka = env().var("KAFKA_BOOTSTRAP");
    let manifests = format!(
        "{}---\napiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: kafka}}\n\
         spec: {{kafka: {{bootstrapServers: '{kafka}'}}}}\n---\n\
         apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: rabbitmq}}\n\
         spec: {{rabbitmq: {{url: '{url}', secretRef: {{name: creds}}}}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\nstringData: {{username: '{user}', password: '{pass}'}}\n---\n\
         apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: both-1}}\n\
         spec: {{workflowRef: {{name: both}}, connectorRef: {{name: kafka}}}}\n",
        two_broker_workflow(&topic, &queue)
    );
    let (_d, f) = write_temp("all.yaml", &manifests);
    let out = env()
        .command(env!("CARGO_BIN_EXE_devset"))
        .args(["run", "-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("run both-1 Completed"), "{stdout}");
    assert!(
        stdout.contains("BrokerConnector \"rabbitmq\" in"),
        "{stdout}"
    );
    assert_eq!(count("kafka-count", &topic), 2000);
    assert_eq!(count("rabbitmq-count", &queue), 1500);

    // A wrong password in the Secret is one clear line naming the broker.
    let wrong = manifests.replace(&format!("password: '{pass}'"), "password: 'wrong'");
    let (_d2, f2) = write_temp("wrong.yaml", &wrong);
    let out = env()
        .command(env!("CARGO_BIN_EXE_devset"))
        .args(["run", "-f", f2.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: cannot reach RabbitMQ at")
            && stderr.contains("authentication failed"),
        "{stderr}"
    );
}

// --- logs ---------------------------------------------------------------------------------

/// A kubeconfig whose user is a ServiceAccount token and whose context's namespace is `ns`;
/// its second context, `with-api`, also names devset api's address.
fn reader_kubeconfig(dir: &Path, ns: &str, token: &str, api: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:1'}}\n\
             users:\n- name: u\n  user: {{token: '{token}'}}\ncontexts:\n\
             - name: x\n  context: {{cluster: c, user: u, namespace: {ns}}}\n\
             - name: with-api\n  context:\n    cluster: c\n    user: u\n    namespace: {ns}\n\
             \x20   extensions:\n    - name: devset.io/api-server\n      extension: {{server: '{api}'}}\n\
             current-context: x\n"
        ),
    )
    .unwrap();
    path
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn logs_follow_prints_every_event_exactly_once_across_a_restart_of_the_api() {
    install_crds();
    let ns = TestNamespace::new("logs");
    let store = sqlite_store(&ns.name);
    let kafka = env().var("KAFKA_BOOTSTRAP");
    let topic = unique("logs");
    env().apply(
        &ns.name,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: kafka}}\n\
             spec: {{kafka: {{bootstrapServers: \"{kafka}\"}}}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: wf}}\nspec:\n  stages:\n\
             \x20 - name: publish\n    publish: {{topic: {topic}, count: 1500, ratePerSecond: 300, payload: 'm {{{{ seq }}}}'}}\n"
        ),
    );
    let _controller = ControllerProcess::start_with_store(&ns.name, 10, 0, &store);
    let port = free_port();
    let mut api = Some(ApiProcess::start_on(
        &ns.name,
        &store,
        "kubernetes",
        port,
        &[],
    ));
    // A reader's identity, in a kubeconfig of its own: token and namespace come from there.
    env().kubectl_ok(&["-n", &ns.name, "create", "serviceaccount", "reader"]);
    env().kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "role",
        "reader",
        "--verb=get",
        "--resource=workflowruns.devset.io",
    ]);
    env().kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "rolebinding",
        "reader",
        "--role=reader",
        &format!("--serviceaccount={}:reader", ns.name),
    ]);
    let token = env().kubectl_ok(&["-n", &ns.name, "create", "token", "reader"]);
    let dir = tempfile::tempdir().unwrap();
    let server = format!("http://127.0.0.1:{port}");
    let kubeconfig = reader_kubeconfig(dir.path(), &ns.name, token.trim(), &server);
    env().apply(
        &ns.name,
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {name: r1}\n\
         spec: {workflowRef: {name: wf}, connectorRef: {name: kafka}}\n",
    );
    let mut child = devset()
        .args(["logs", "r1", "-f", "-o", "json", "--server", &server])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let mut lines = Vec::new();
    while lines.len() < 300 {
        lines.push(rx.recv_timeout(MINUTE).expect("events before the restart"));
    }
    // Kill devset api mid-stream, leave it down a moment, start it again on the same port.
    drop(api.take());
    std::thread::sleep(Duration::from_secs(2));
    api = Some(ApiProcess::start_on(
        &ns.name,
        &store,
        "kubernetes",
        port,
        &[],
    ));
    let status = wait_until(2 * MINUTE, "devset logs -f to end", || {
        child.try_wait().unwrap()
    });
    lines.extend(rx.iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("reconnecting after #"),
        "a reconnect happened: {stderr}"
    );
    let ev: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let n = seqs.len() as u64;
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    assert_eq!(of_type(&ev, "message.published").len(), 1500);
    assert_eq!(ev.last().unwrap()["phase"], "Completed");
    assert_eq!(count("kafka-count", &topic), 1500);

    // Without -f: the whole log as text, one line per event; the address from the context.
    let out = devset()
        .args(["logs", "r1", "--context", "with-api"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let text_lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text_lines.len() as u64, n);
    assert!(text_lines[0].starts_with("#1 ") && text_lines[0].contains("run Running"));
    assert!(text_lines.last().unwrap().contains("run Completed"));
    let out = devset()
        .args(["logs", "r1", "--after", &(n - 2).to_string(), "-o", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .env("DEVSET_API_SERVER", &server)
        .output()
        .unwrap();
    assert_eq!(events(&out.stdout).len(), 2);

    // As a kubectl plugin: `kubectl devset logs …` finds kubectl-devset on PATH.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_devset"), bin.join("kubectl-devset")).unwrap();
    let env_path = env().command("printenv").arg("PATH").output().unwrap();
    let path = text(&env_path.stdout).trim().to_owned();
    let out = env()
        .command("kubectl")
        .env("PATH", format!("{}:{path}", bin.display()))
        .env("KUBECONFIG", &kubeconfig)
        .args(["devset", "logs", "r1", "-f", "--server", &server])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count() as u64, n);
    let help = env()
        .command("kubectl")
        .env("PATH", format!("{}:{path}", bin.display()))
        .args(["devset", "logs", "--help"])
        .output()
        .unwrap();
    assert!(
        text(&help.stdout).contains("Usage: kubectl devset logs"),
        "{}",
        text(&help.stdout)
    );

    // A token without RBAC on runs, and a run that does not exist: one error line each.
    let out = devset()
        .args(["logs", "nope", "-f", "--server", &server])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: devset api answered 404"),
        "{}",
        text(&out.stderr)
    );
    drop(api);
}
