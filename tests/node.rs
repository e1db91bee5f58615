//! The chart's pods on a real node (`tests/env/up … node`), from the image `tests/env/image`
//! builds: `helm install` into a namespace that enforces Pod Security `restricted`, both
//! containers Ready through their probes, a sample run `Completed` with its messages counted on
//! Kafka by an independent client, `devset logs -f` through `kubectl port-forward` to the
//! chart's Service, and `helm uninstall` leaving nothing but the CRDs. Also: the node sends
//! nothing off this machine (an image pull is refused locally).

mod common;

use common::*;
use serde_json::Value;
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const MINUTE: Duration = Duration::from_secs(60);
const CHART: &str = "charts/devset-operator";
/// The image `tests/env/image` imports into the node's containerd (tests/run does that).
const IMAGE_REPO: &str = "devset/devset-operator";
const IMAGE_TAG: &str = "test";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What a failure on the node needs to be understood: the node's conditions and taints, the
/// free space where its containerd and kubelet keep their state, and the kubelet's last
/// eviction or image-GC lines.
fn node_diagnostics() -> String {
    let nodes = env()
        .kubectl(&[
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}: {range .status.conditions[*]}{.type}={.status} {end}taints={.spec.taints}{"\n"}{end}"#,
        ])
        .stdout;
    let dir = std::env::var("DEVSET_ENV_DIR").unwrap_or_else(|_| "/".into());
    let df = Command::new("df")
        .args(["-h", &dir])
        .output()
        .map(|o| text(&o.stdout));
    let kubelet_log = std::path::Path::new(&dir).join("node/kubelet.log");
    let evictions: Vec<String> = std::fs::read_to_string(&kubelet_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("eviction") || l.contains("image_gc") || l.contains("DiskPressure"))
        .map(str::to_owned)
        .collect();
    format!(
        "\nnodes: {}\ndf: {}\nkubelet ({}), last eviction/image-GC lines:\n{}",
        text(&nodes),
        df.unwrap_or_default(),
        kubelet_log.display(),
        evictions[evictions.len().saturating_sub(10)..].join("\n")
    )
}

/// Panics unless the environment has a node and the image was imported into it.
fn require_node_image() {
    let sock = env().var("CONTAINERD_ADDRESS");
    let out = Command::new("ctr")
        .args(["-a", sock, "-n", "k8s.io", "images", "ls", "-q"])
        .output()
        .expect("ctr runs");
    let want = format!("docker.io/{IMAGE_REPO}:{IMAGE_TAG}");
    assert!(
        text(&out.stdout).lines().any(|l| l == want),
        "{want} is not on the node: run tests/env/image (tests/run does) — {}{}",
        text(&out.stderr),
        node_diagnostics()
    );
}

/// A namespace that enforces Pod Security `restricted`.
fn restricted_namespace(prefix: &str) -> TestNamespace {
    let ns = TestNamespace::new(prefix);
    env().kubectl_ok(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ]);
    ns
}

/// `helm install` of the chart with the node's image, watching only `ns`.
fn install(release: &str, ns: &str, extra: &[&str]) {
    let mut args = vec![
        "install",
        release,
        CHART,
        "-n",
        ns,
        "--set",
        "image.repository=devset/devset-operator",
        "--set",
        "image.tag=test",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "leaderElection.leaseSeconds=5",
    ];
    let watch = format!("watchNamespaces={{{ns}}}");
    args.extend(["--set", &watch]);
    args.extend(extra);
    env().helm_ok(&args);
}

/// Waits until the release's pods (`replicas` of them) have every container Ready.
fn wait_ready(ns: &str, release: &str, replicas: usize) {
    let selector = format!("app.kubernetes.io/instance={release}");
    wait_until(3 * MINUTE, "the operator's containers to be Ready", || {
        let out = env().kubectl_ok(&[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            &selector,
            "-o",
            "jsonpath={range .items[*]}{.metadata.deletionTimestamp}/{range .status.containerStatuses[*]}{.ready} {end}{\"\\n\"}{end}",
        ]);
        let pods: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        let ready = pods
            .iter()
            .filter(|l| l.starts_with('/') && l.trim_end() == "/true true")
            .count();
        (pods.len() == replicas && ready == replicas).then_some(())
    });
}

/// What the pods of a release show when they are not Ready (for a failing assertion).
fn describe(ns: &str) -> String {
    text(&env().kubectl(&["describe", "pods", "-n", ns]).stdout)
}

fn connectors_for_pods(ns: &str, topic: &str, count: u32, rate: u32) {
    let kafka = env().var("KAFKA_POD_BOOTSTRAP");
    env().apply(
        ns,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: kafka}}\n\
             spec: {{kafka: {{bootstrapServers: \"{kafka}\"}}}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: orders}}\nspec:\n  stages:\n\
             \x20 - name: create-orders\n    publish: {{topic: {topic}, count: {count}, ratePerSecond: {rate}, key: 'order-{{{{ seq }}}}', payload: '{{\"seq\": {{{{ seq }}}}}}'}}\n"
        ),
    );
}

fn start_run(ns: &str, name: &str) {
    env().apply(
        ns,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {name}}}\n\
             spec: {{workflowRef: {{name: orders}}, connectorRef: {{name: kafka}}}}\n"
        ),
    );
}

fn phase(ns: &str, run: &str) -> String {
    env().jsonpath(ns, "run", run, "{.status.phase}")
}

fn wait_phase(ns: &str, run: &str, want: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let p = phase(ns, run);
        if p == want {
            return;
        }
        assert!(
            p != "Failed" && start.elapsed() < timeout,
            "run {run} is {p:?}, not {want}, after {:?}: {}\n{}",
            start.elapsed(),
            env().kubectl_ok(&["get", "run", run, "-n", ns, "-o", "yaml"]),
            describe(ns)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `kubectl port-forward svc/SERVICE PORT:8082`, running until dropped.
struct PortForward {
    child: Child,
    port: u16,
}

impl PortForward {
    fn start(ns: &str, target: &str, remote: u16) -> Self {
        let port = free_port();
        let mut child = env()
            .command("kubectl")
            .args([
                "port-forward",
                "-n",
                ns,
                target,
                &format!("{port}:{remote}"),
                "--address=127.0.0.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl port-forward runs");
        // It prints "Forwarding from 127.0.0.1:PORT -> 8082" once it listens.
        let mut first = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut first).unwrap();
        // It prints a line per connection: keep reading, or it dies of SIGPIPE.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        if !first.starts_with("Forwarding from") {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("kubectl port-forward: {first}{}", text(&out.stderr));
        }
        Self { child, port }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubeconfig whose identity (a ServiceAccount token) may get runs in `ns`.
fn reader_kubeconfig(ns: &str) -> std::path::PathBuf {
    env().kubectl_ok(&["-n", ns, "create", "serviceaccount", "reader"]);
    env().kubectl_ok(&[
        "-n",
        ns,
        "create",
        "role",
        "reader",
        "--verb=get",
        "--resource=workflowruns.devset.io",
    ]);
    env().kubectl_ok(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        "reader",
        "--role=reader",
        &format!("--serviceaccount={ns}:reader"),
    ]);
    let token = env().kubectl_ok(&["-n", ns, "create", "token", "reader"]);
    token_kubeconfig(&format!("{ns}-reader"), token.trim())
}

/// `devset logs RUN -f -o json` through a port-forward to the chart's Service: the events.
fn logs_follow(ns: &str, run: &str, service: &str) -> Vec<Value> {
    let pf = PortForward::start(ns, &format!("svc/{service}"), 8082);
    let kubeconfig = reader_kubeconfig(ns);
    let out = env()
        .command(env!("CARGO_BIN_EXE_devset"))
        .args(["logs", run, "-f", "-o", "json", "-n", ns])
        .args(["--server", &format!("http://127.0.0.1:{}", pf.port)])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("devset logs runs");
    assert!(out.status.success(), "devset logs: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls `f` for up to `timeout`; whether it became true.
fn wait_until_or(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    true
}

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

#[test]
#[ignore = "needs the test environment with a node: tests/env/up k8s kafka rabbitmq postgres node, then tests/env/image; or tests/run"]
fn helm_install_runs_the_operator_on_the_node_and_a_sample_run_completes() {
    let _one = one_release();
    require_node_image();
    install_crds();
    let ns = restricted_namespace("node");
    let release = unique("dso");
    let service = format!("{release}-devset-operator");
    let topic = unique("orders");
    connectors_for_pods(&ns.name, &topic, 300, 300);

    let t0 = Instant::now();
    install(&release, &ns.name, &[]);
    wait_ready(&ns.name, &release, 1);
    eprintln!(
        "helm install to both containers Ready: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    // The pod passed the namespace's Pod Security admission (restricted): it exists at all.
    let pod = env().kubectl_ok(&[
        "get",
        "pods",
        "-n",
        &ns.name,
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "jsonpath={.items[0].spec.nodeName} {.items[0].spec.containers[*].name}",
    ]);
    assert_eq!(pod, "devset-node controller api");

    start_run(&ns.name, "orders-1");
    wait_phase(&ns.name, "orders-1", "Completed", 3 * MINUTE);
    assert_eq!(env().count("kafka-count", &topic), 300);

    let events = logs_follow(&ns.name, "orders-1", &service);
    assert_eq!(of_type(&events, "message.published").len(), 300);
    assert_eq!(events.last().unwrap()["phase"], "Completed", "{events:?}");

    // helm uninstall leaves the CRDs (helm never deletes those), and nothing of the release.
    env().helm_ok(&["uninstall", &release, "-n", &ns.name, "--wait"]);
    let selector = format!("app.kubernetes.io/instance={release}");
    // The pod goes within its grace period (30 s) after the Deployment.
    let left = || {
        env().kubectl_ok(&[
        "get",
        "deployments,services,serviceaccounts,roles,rolebindings,configmaps,secrets,pods,clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings",
        "-A",
        "-l",
        &selector,
        "-o",
        "name",
    ])
    };
    let gone = wait_until_or(MINUTE, || left().trim().is_empty());
    assert!(gone, "left behind by helm uninstall: {}", left());
    env().kubectl_ok(&["get", "crd", "workflowruns.devset.io"]);
}

#[test]
#[ignore = "needs the test environment with a node: tests/env/up k8s kafka rabbitmq postgres node; or tests/run"]
fn the_node_refuses_an_image_pull_from_a_public_registry_locally() {
    let ns = TestNamespace::new("egress");
    env().kubectl_ok(&[
        "run",
        "pull",
        "-n",
        &ns.name,
        "--image=docker.io/library/busybox:1.36",
        "--image-pull-policy=Always",
        "--restart=Never",
    ]);
    let mut message = String::new();
    let failed = wait_until_or(MINUTE, || {
        message = env().jsonpath(
            &ns.name,
            "pod",
            "pull",
            "{.status.containerStatuses[0].state.waiting.message}",
        );
        !message.is_empty()
    });
    assert!(
        failed,
        "the pull did not fail within a minute: {}{}",
        text(
            &env()
                .kubectl(&["describe", "pod", "pull", "-n", &ns.name])
                .stdout
        ),
        node_diagnostics()
    );
    // The guard rejects the first packet (the resolver's) on this machine.
    assert!(
        message.contains("operation not permitted") || message.contains("connection refused"),
        "the pull was not refused locally: {message}"
    );
}

/// One chart release at a time: each takes a good part of the machine's two CPUs.
static ONE_RELEASE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_release() -> std::sync::MutexGuard<'static, ()> {
    ONE_RELEASE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Secret `pg` with the URL of the environment's PostgreSQL as pods reach it.
fn postgres_secret(ns: &str) {
    env().kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "pg",
        "-n",
        ns,
        &format!("--from-literal=url={}", env().var("DATABASE_POD_URL")),
    ]);
}

/// The names of the release's pods.
fn pods_of(ns: &str, release: &str) -> Vec<String> {
    env()
        .kubectl_ok(&[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs the test environment with a node: tests/env/up k8s kafka rabbitmq postgres node, then tests/env/image; or tests/run"]
fn deleting_the_operator_pod_mid_run_resumes_the_run_in_the_new_pod() {
    let _one = one_release();
    require_node_image();
    install_crds();
    let ns = restricted_namespace("node-del");
    let release = unique("dso");
    let topic = unique("orders");
    // 1,200 messages at 100/s: about 12 s, long enough to delete the pod in the middle.
    connectors_for_pods(&ns.name, &topic, 1200, 100);
    postgres_secret(&ns.name);
    install(
        &release,
        &ns.name,
        &[
            "--set",
            "store.type=postgres",
            "--set",
            "store.postgres.secretRef.name=pg",
        ],
    );
    wait_ready(&ns.name, &release, 1);
    start_run(&ns.name, "orders-1");
    wait_until(MINUTE, "the run to publish some messages", || {
        (env().count("kafka-count", &topic) >= 200).then_some(())
    });
    let old = pods_of(&ns.name, &release);
    assert_eq!(old.len(), 1, "{old:?}");
    env().kubectl_ok(&["delete", "pod", &old[0], "-n", &ns.name, "--wait=false"]);
    assert_ne!(
        phase(&ns.name, "orders-1"),
        "Completed",
        "the run ended too soon"
    );

    wait_phase(&ns.name, "orders-1", "Completed", 3 * MINUTE);
    let new = pods_of(&ns.name, &release);
    assert!(
        !new.contains(&old[0]),
        "the run completed in a new pod: {new:?}"
    );
    let sent = env().count("kafka-count", &topic);
    eprintln!(
        "delete pod mid-run: {sent} messages on the topic for 1200 wanted ({} duplicates)",
        sent - 1200
    );
    assert!(sent >= 1200, "every message sent at least once: {sent}");
    assert!(
        sent < 2400,
        "the new pod resumed, it did not start over: {sent}"
    );
    env().helm_ok(&["uninstall", &release, "-n", &ns.name, "--wait"]);
}

#[test]
#[ignore = "needs the test environment with a node: tests/env/up k8s kafka rabbitmq postgres node, then tests/env/image; or tests/run"]
fn two_replicas_on_postgres_hand_the_lease_over_in_a_rolling_upgrade_mid_run() {
    let _one = one_release();
    require_node_image();
    install_crds();
    let ns = restricted_namespace("node-ha");
    let release = unique("dso");
    let lease = format!("{release}-devset-operator");
    let topic = unique("orders");
    connectors_for_pods(&ns.name, &topic, 1500, 100);
    postgres_secret(&ns.name);
    let values = [
        "--set",
        "replicas=2",
        "--set",
        "store.type=postgres",
        "--set",
        "store.postgres.secretRef.name=pg",
    ];
    install(&release, &ns.name, &values);
    wait_ready(&ns.name, &release, 2);
    let before = wait_until(MINUTE, "a leader", || {
        let h = env().jsonpath(&ns.name, "lease", &lease, "{.spec.holderIdentity}");
        (!h.is_empty()).then_some(h)
    });
    start_run(&ns.name, "orders-1");
    wait_until(MINUTE, "the run to publish some messages", || {
        (env().count("kafka-count", &topic) >= 200).then_some(())
    });
    // A rolling upgrade (a new pod template): every old pod goes, the leader among them.
    let mut args = vec![
        "upgrade",
        &release,
        CHART,
        "-n",
        &ns.name,
        "--reuse-values",
        "--set",
        "podAnnotations.rev=second",
    ];
    args.extend(values);
    env().helm_ok(&args);
    wait_phase(&ns.name, "orders-1", "Completed", 4 * MINUTE);
    // The run may finish before the rollout has replaced the old leader: wait (bounded) for the
    // Lease to be taken by a new pod.
    let deadline = std::time::Instant::now() + 3 * MINUTE;
    let mut after = env().jsonpath(&ns.name, "lease", &lease, "{.spec.holderIdentity}");
    while (after.is_empty() || after == before) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_secs(1));
        after = env().jsonpath(&ns.name, "lease", &lease, "{.spec.holderIdentity}");
    }
    assert!(
        !after.is_empty() && after != before,
        "the Lease moved to a new pod: {before} -> {after}"
    );
    let sent = env().count("kafka-count", &topic);
    eprintln!(
        "rolling upgrade mid-run: {sent} messages for 1500 wanted ({} duplicates)",
        sent - 1500
    );
    assert!(sent >= 1500, "every message sent at least once: {sent}");
    assert!(sent < 3000, "the stage did not run twice: {sent}");
    env().helm_ok(&["uninstall", &release, "-n", &ns.name, "--wait"]);
}

/// A kustomize overlay of `config/default`: the node's image, and only `devset-system` watched
/// (the other tests' runs in the same API server are not its business).
fn default_overlay(dir: &std::path::Path) {
    // kustomize takes relative paths only: the overlay is in target/.
    let base = "../../config/default";
    let env_patch = |container: &str| {
        format!(
            "- op: add\n  path: /spec/template/spec/containers/{container}/env/-\n  \
             value: {{name: DEVSET_NAMESPACE, value: devset-system}}\n"
        )
    };
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {base}\n\
             images:\n- {{name: devset/devset-operator, newTag: {IMAGE_TAG}}}\n\
             patches:\n- path: watch.yaml\n  target: {{kind: Deployment}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("watch.yaml"),
        format!("{}{}", env_patch("0"), env_patch("1")),
    )
    .unwrap();
}

#[test]
#[ignore = "needs the test environment with a node: tests/env/up k8s kafka rabbitmq postgres node, then tests/env/image; or tests/run"]
fn kubectl_apply_k_config_default_gives_the_same_running_operator() {
    let _one = one_release();
    require_node_image();
    let dir = tempfile::tempdir_in(repo().join("target")).unwrap();
    default_overlay(dir.path());
    let overlay = dir.path().to_str().unwrap();
    env().kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-k", overlay]);
    let ns = "devset-system";
    let topic = unique("orders");
    wait_until(3 * MINUTE, "the operator's containers to be Ready", || {
        let out = env().kubectl_ok(&[
            "get",
            "pods",
            "-n",
            ns,
            "-o",
            "jsonpath={range .items[*]}{range .status.containerStatuses[*]}{.ready} {end}{end}",
        ]);
        (out.trim() == "true true").then_some(())
    });
    connectors_for_pods(ns, &topic, 100, 200);
    start_run(ns, "orders-k");
    wait_phase(ns, "orders-k", "Completed", 3 * MINUTE);
    assert_eq!(env().count("kafka-count", &topic), 100);
    env().kubectl_ok(&["delete", "run", "orders-k", "-n", ns]);
    env().kubectl_ok(&["delete", "deployment", "--all", "-n", ns, "--wait=true"]);
}
