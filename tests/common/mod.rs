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
