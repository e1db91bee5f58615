//! Helpers for the integration tests that need the test environment (`tests/env/up`).
//!
//! The settings come from the env file that `tests/env/up` writes: `$DEVSET_ENV_FILE`, else
//! `$DEVSET_ENV_DIR/env.sh`, else `target/testenv/env.sh`.
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

pub mod chaos;
pub mod consume;
pub mod runs;

pub const NEEDS_ENV: &str =
    "needs the test environment: tests/env/up, or run everything with tests/run";

/// The connection settings of the running test environment.
pub struct TestEnv {
    vars: BTreeMap<String, String>,
    path: String,
}

impl TestEnv {
    /// A setting such as `KUBECONFIG`, `KAFKA_BOOTSTRAP` or `AMQP_URL`; panics with the way to
    /// get one when the environment is not up.
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key} is not set: this test {NEEDS_ENV}"))
    }

    /// A command with the environment's settings and `PATH` (its kubectl, helm, …).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(&self.vars).env("PATH", &self.path);
        cmd
    }

    /// Runs kubectl with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.command("kubectl")
            .args(args)
            .output()
            .expect("kubectl runs (from the test environment's PATH)")
    }

    /// Runs kubectl and returns its stdout; panics with its stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs helm (the environment's) from the repository.
    pub fn helm(&self, args: &[&str]) -> Output {
        self.command("helm")
            .args(args)
            .current_dir(repo())
            .output()
            .expect("helm runs (from the test environment's PATH)")
    }

    /// Runs helm and returns its stdout; panics with its output when it fails.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        let out = self.helm(args);
        assert!(
            out.status.success(),
            "helm {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs one of the independent client scripts in `tests/bin/`.
    pub fn client(&self, script: &str, args: &[&str]) -> Output {
        self.command(repo().join("tests/bin").join(script))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("tests/bin/{script} runs: {e}"))
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test environment, read once.
pub fn env() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut vars: BTreeMap<String, String> = std::env::vars().collect();
        let mut path = std::env::var("PATH").unwrap_or_default();
        // The env file wins over the process environment, so that a KUBECONFIG of your own
        // never makes these tests touch another cluster.
        let file = std::env::var("DEVSET_ENV_FILE")
            .map(PathBuf::from)
            .or_else(|_| std::env::var("DEVSET_ENV_DIR").map(|d| PathBuf::from(d).join("env.sh")))
            .unwrap_or_else(|_| repo().join("target/testenv/env.sh"));
        match std::fs::read_to_string(&file) {
            Ok(text) => parse_env_file(&text, &mut vars, &mut path),
            Err(e) => panic!("cannot read {}: {e}; this test {NEEDS_ENV}", file.display()),
        }
        TestEnv { vars, path }
    })
}

/// Reads the `export KEY='VALUE'` lines of the env file; `PATH` lines prepend to the path.
fn parse_env_file(text: &str, vars: &mut BTreeMap<String, String>, path: &mut String) {
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("export ") else {
            continue;
        };
        let Some((key, value)) = rest.split_once('=') else {
            continue;
        };
        // The value is single-quoted; a PATH line adds `:"$PATH"` after the quotes.
        let quoted = value.strip_prefix('\'').and_then(|v| v.split_once('\''));
        let Some((value, _)) = quoted else { continue };
        if key == "PATH" {
            *path = format!("{value}:{path}");
        } else {
            vars.insert(key.to_string(), value.to_string());
        }
    }
}

/// A name no other test (or earlier run) uses: `prefix-<pid><counter><time>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{:x}{:x}{:x}",
        std::process::id() % 4096,
        N.fetch_add(1, Ordering::Relaxed),
        t % 65536
    )
}

/// A namespace of its own for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn new(prefix: &str) -> Self {
        let name = unique(&format!("it-{prefix}"));
        env().kubectl_ok(&["create", "namespace", &name]);
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = env().kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// Installs the CRDs from `crds/` once per test binary and waits until they are Established.
pub fn install_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crds = repo().join("crds");
        env().kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=devset-tests",
            "-f",
            crds.to_str().unwrap(),
        ]);
        env().kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/brokerconnectors.devset.io",
            "crd/workflows.devset.io",
            "crd/workflowruns.devset.io",
        ]);
        // Discovery can lag a moment behind Established; wait until `kubectl get runs` resolves.
        wait_for(Duration::from_secs(30), || {
            env().kubectl(&["get", "runs", "-A"]).status.success()
        });
    });
}

/// Polls `f` until it returns true; panics after `timeout`.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `# expect: …` lines at the top of a fixture file.
pub fn expectations(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_string)
        .collect()
}

impl TestEnv {
    /// `kubectl apply -n NS -f -` with `yaml` on stdin; panics with kubectl's error.
    pub fn apply(&self, ns: &str, yaml: &str) {
        use std::io::Write;
        let mut child = self
            .command("kubectl")
            .args(["apply", "-n", ns, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get RESOURCE NAME -n NS -o jsonpath=PATH` ("" when the object is missing).
    pub fn jsonpath(&self, ns: &str, resource: &str, name: &str, path: &str) -> String {
        let out = self.kubectl(&[
            "get",
            resource,
            name,
            "-n",
            ns,
            "-o",
            &format!("jsonpath={path}"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The manifests of a Secret with the RabbitMQ credentials and two BrokerConnectors, `kafka`
    /// and `rabbit`, for the test environment's brokers.
    pub fn connectors(&self) -> String {
        let (url, user, pass) = self.amqp_parts();
        let kafka = self.var("KAFKA_BOOTSTRAP");
        format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: rabbit-creds}}
stringData: {{username: "{user}", password: "{pass}"}}
---
apiVersion: devset.io/v1alpha1
kind: BrokerConnector
metadata: {{name: kafka}}
spec: {{kafka: {{bootstrapServers: "{kafka}"}}}}
---
apiVersion: devset.io/v1alpha1
kind: BrokerConnector
metadata: {{name: rabbit}}
spec: {{rabbitmq: {{url: "{url}", secretRef: {{name: rabbit-creds}}}}}}
"#
        )
    }

    /// The number a counting client of `tests/bin/` prints for `target` (`kafka-count TOPIC`,
    /// `rabbitmq-count QUEUE`); panics with its error.
    pub fn count(&self, script: &str, target: &str) -> i64 {
        let out = self.client(script, &[target]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!(
                    "{script} {target}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// The AMQP URL without its credentials, and the user and password it carried.
    pub fn amqp_parts(&self) -> (String, String, String) {
        let url = self.var("AMQP_URL");
        let (scheme, rest) = url.split_once("://").unwrap();
        let (creds, host) = rest.split_once('@').unwrap();
        let (user, pass) = creds.split_once(':').unwrap();
        (
            format!("{scheme}://{host}"),
            user.to_string(),
            pass.to_string(),
        )
    }
}

/// Polls `f` until it returns Some; panics with `what` and the last value after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `devset controller` running outside the cluster, watching one namespace; killed on drop.
pub struct ControllerProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl ControllerProcess {
    /// Serves its metrics on a port of the system's choosing (so that several can run at once).
    pub fn start(ns: &str, max_active_runs: usize) -> Self {
        Self::start_with_metrics(ns, max_active_runs, 0)
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `127.0.0.1:metrics_port` (see
    /// [`free_port`]).
    pub fn start_with_metrics(ns: &str, max_active_runs: usize, metrics_port: u16) -> Self {
        Self::start_with_store(ns, max_active_runs, metrics_port, &sqlite_store(ns))
    }

    /// With the event store at `store` (see [`sqlite_store`]).
    pub fn start_with_store(
        ns: &str,
        max_active_runs: usize,
        metrics_port: u16,
        store: &str,
    ) -> Self {
        Self::start_with_env(ns, max_active_runs, metrics_port, store, &[])
    }

    /// With more environment variables (they override the defaults: `KUBECONFIG`,
    /// `DEVSET_LEADER_ELECT`, …).
    pub fn start_with_env(
        ns: &str,
        max_active_runs: usize,
        metrics_port: u16,
        store: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let (mut cmd, log, file) = devset_command("controller", ns, store);
        let child = cmd
            .env("DEVSET_ENGINE_MAX_ACTIVE_RUNS", max_active_runs.to_string())
            .env("DEVSET_PROBE_INTERVAL_SECONDS", "5")
            .env("DEVSET_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .envs(extra.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("devset controller starts");
        Self { child, log }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as Kubernetes stops a pod; waits for the exit and returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- controller log {} ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// An SQLite event store of one namespace's own, under `target/it-stores/`.
pub fn sqlite_store(ns: &str) -> String {
    let dir = repo().join("target/it-stores");
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}", dir.join(format!("{ns}.db")).display())
}

/// `devset api` running outside the cluster for one namespace, with the admin kubeconfig as
/// its own identity; killed on drop.
pub struct ApiProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
    pub port: u16,
}

impl ApiProcess {
    /// Starts it with `--auth=auth` on a free port and waits until `/readyz` answers 200.
    pub fn start(ns: &str, store: &str, auth: &str) -> Self {
        Self::start_with_env(ns, store, auth, &[])
    }

    /// With more environment variables (e.g. `KUBECONFIG`).
    pub fn start_with_env(ns: &str, store: &str, auth: &str, extra: &[(&str, &str)]) -> Self {
        Self::start_on(ns, store, auth, free_port(), extra)
    }

    /// On a given port (to restart one where its clients expect it).
    pub fn start_on(ns: &str, store: &str, auth: &str, port: u16, extra: &[(&str, &str)]) -> Self {
        let (mut cmd, log, file) = devset_command("api", ns, store);
        let child = cmd
            .args(["--addr", &format!("127.0.0.1:{port}"), "--auth", auth])
            .envs(extra.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("devset api starts");
        let api = Self { child, log, port };
        wait_until(Duration::from_secs(30), "devset api to be ready", || {
            matches!(http_get(port, "/readyz"), Ok((200, _))).then_some(())
        });
        api
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- api log {} ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// A TCP port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `GET path` over HTTP/1.0 on `127.0.0.1:port`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head}")))?;
    Ok((code, body.to_string()))
}

/// Declares a durable queue on the test environment's RabbitMQ (publishes to a queue that does
/// not exist are returned as unroutable).
pub async fn declare_queue(queue: &str) {
    use lapin::{
        Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable,
    };
    let conn = Connection::connect(env().var("AMQP_URL"), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn.close(200, "ok".into()).await.ok();
}

/// Sends SIGTERM to `child` and waits (up to a minute) for it to exit.
pub fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A kubeconfig for the test API server that authenticates with `token` (e.g. from
/// `kubectl create token`), written under `target/it-logs/`; returns its path.
pub fn token_kubeconfig(name: &str, token: &str) -> PathBuf {
    let get = |path: &str| {
        env().kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
    };
    let server = get(".clusters[0].cluster.server");
    let ca = get(".clusters[0].cluster.certificate-authority-data");
    let dir = repo().join("target/it-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\n\
             contexts:\n- name: {name}\n  context: {{cluster: test, user: {name}}}\ncurrent-context: {name}\n"
        ),
    )
    .unwrap();
    path
}

/// `devset SUBCOMMAND` for namespace `ns` and event store `store`, with the environment's
/// settings, logging to a new file under `target/it-logs/` (returned with its path).
fn devset_command(sub: &str, ns: &str, store: &str) -> (Command, PathBuf, std::fs::File) {
    let dir = repo().join("target/it-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join(format!("{sub}-{ns}-{}.log", unique(&sub[..1])));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = env().command(env!("CARGO_BIN_EXE_devset"));
    cmd.arg(sub)
        .env("DEVSET_NAMESPACE", ns)
        .env("DEVSET_EVENT_STORE", store)
        .env("RUST_LOG", "info,devset=debug,kube=warn");
    (cmd, log, file)
}
