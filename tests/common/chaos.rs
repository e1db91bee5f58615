//! Fault scenarios (`tests/chaos_*.rs`, issue 15): how many times each runs, faults on the test
//! environment's processes, and the row each scenario adds to the table.
//!
//! `tests/run` runs the short version of every scenario (`reps(short, full)` gives `short`);
//! `tests/chaos` runs them with `DEVSET_CHAOS_FULL=1` (`full`) and prints the rows (written to
//! `$DEVSET_CHAOS_ROWS`, else `target/chaos/rows.jsonl`) as one markdown table
//! (`target/chaos/results.md`).
//!
//! A scenario records what it measured and what held, then fails the test when something did
//! not hold, so a failed scenario is still a row of the table:
//!
//! ```ignore
//! let mut s = Scenario::new("1a", "SIGKILL of the controller mid-publish (AtLeastOnce)", reps(2, 10));
//! s.figure("duplicates", dups);
//! s.hold(on_broker >= total, format!("the broker holds every message ({on_broker} of {total})"));
//! s.finish();
//! ```

use super::repo;
use std::{
    fmt::Display,
    io::Write,
    process::Command,
    sync::{Mutex, MutexGuard},
};

/// Whether this is the full run of `tests/chaos` (`DEVSET_CHAOS_FULL=1`).
pub fn full() -> bool {
    std::env::var("DEVSET_CHAOS_FULL").is_ok_and(|v| v == "1")
}

/// Repetitions: `short` in `tests/run`, `full` in `tests/chaos`.
pub fn reps(short: usize, full_count: usize) -> usize {
    if full() { full_count } else { short }
}

/// One lock for the tests of a chaos binary: a fault on a shared process (Kafka stopped, the
/// API server restarted) must not hit another scenario running beside it. Test binaries run
/// one after the other, so this serializes every scenario that holds it.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// `tests/env/proc ACTION NAME [PORT]` on the environment's process NAME (`kafka`, `rabbitmq`,
/// `postgres`, `etcd`, `kube-apiserver`); panics with its output when it fails.
pub fn proc(action: &str, name: &str, port: Option<u16>) {
    let mut cmd = Command::new(repo().join("tests/env/proc"));
    cmd.args([action, name]);
    if let Some(p) = port {
        cmd.arg(p.to_string());
    }
    cmd.env("DEVSET_ENV_DIR", super::env().var("DEVSET_ENV_DIR"));
    let out = cmd.output().expect("tests/env/proc runs");
    assert!(
        out.status.success(),
        "tests/env/proc {action} {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process of the environment taken down for a while: stopped (or killed, or paused) now,
/// started again (resumed) by [`Outage::restore`] or, whatever happens in the test, on drop.
pub struct Outage {
    name: String,
    port: Option<u16>,
    paused: bool,
    restored: bool,
}

impl Outage {
    /// `tests/env/proc stop NAME`; `port` is waited for when it starts again.
    pub fn stop(name: &str, port: Option<u16>) -> Self {
        proc("stop", name, None);
        Self::down(name, port, false)
    }

    /// `tests/env/proc kill NAME` (SIGKILL, as a crash).
    pub fn kill(name: &str, port: Option<u16>) -> Self {
        proc("kill", name, None);
        Self::down(name, port, false)
    }

    /// `tests/env/proc pause NAME` (SIGSTOP); restored with SIGCONT.
    pub fn pause(name: &str) -> Self {
        proc("pause", name, None);
        Self::down(name, None, true)
    }

    fn down(name: &str, port: Option<u16>, paused: bool) -> Self {
        Self {
            name: name.to_owned(),
            port,
            paused,
            restored: false,
        }
    }

    /// Starts (or resumes) the process again and waits for its port.
    pub fn restore(mut self) {
        self.bring_back();
    }

    fn bring_back(&mut self) {
        if self.restored {
            return;
        }
        self.restored = true;
        if self.paused {
            proc("resume", &self.name, None);
        } else {
            proc("start", &self.name, self.port);
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.restored {
            // Never leave the shared environment without its broker, even when a test failed.
            let restore = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.bring_back();
            }));
            if restore.is_err() {
                eprintln!("could not bring {} back up", self.name);
            }
        }
    }
}

/// One row of the chaos table: what a scenario measured and what held.
pub struct Scenario {
    id: String,
    name: String,
    reps: usize,
    figures: Vec<(String, String)>,
    held: Vec<String>,
    failed: Vec<String>,
}

impl Scenario {
    /// `id` orders the table (the scenario's number in issue 15: "1a", "4b", …).
    pub fn new(id: &str, name: &str, reps: usize) -> Self {
        eprintln!("chaos scenario {id}: {name} ({reps} repetition(s))");
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            reps,
            figures: Vec::new(),
            held: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// A measured figure ("duplicates", "12 per kill (max 40)").
    pub fn figure(&mut self, name: &str, value: impl Display) {
        eprintln!("  {name}: {value}");
        self.figures.push((name.to_owned(), value.to_string()));
    }

    /// A property that must hold; `what` says it with the figures ("0 duplicates of 20000").
    /// Returns `ok`.
    pub fn hold(&mut self, ok: bool, what: impl Into<String>) -> bool {
        let what = what.into();
        eprintln!("  {}: {what}", if ok { "held" } else { "DID NOT HOLD" });
        if ok {
            self.held.push(what);
        } else {
            self.failed.push(what);
        }
        ok
    }

    /// Writes the row to `target/chaos/rows.jsonl`, then fails the test when anything did not
    /// hold.
    pub fn finish(self) {
        let row = serde_json::json!({
            "id": self.id,
            "scenario": self.name,
            "reps": self.reps,
            "full": full(),
            "held": self.failed.is_empty(),
            "holds": self.held,
            "failed": self.failed,
            "figures": self.figures.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>(),
        });
        // `tests/chaos` names its own file, so that two runs side by side keep their rows.
        let path = std::env::var_os("DEVSET_CHAOS_ROWS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| repo().join("target/chaos/rows.jsonl"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the rows' directory");
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // One write per line: rows of scenarios running side by side never interleave.
        f.write_all(format!("{row}\n").as_bytes())
            .expect("a row written");
        assert!(
            self.failed.is_empty(),
            "scenario {} ({}) did not hold: {}",
            self.id,
            self.name,
            self.failed.join("; ")
        );
    }
}
