//! `devset controller` and `devset api` processes, and their CPU and memory from `/proc`.

use crate::Args;
use anyhow::Context as _;
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// A `devset` subcommand running in the background; killed when dropped.
pub struct Devset {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Devset {
    /// `devset controller` for namespace `ns` with its event log at `store`.
    pub async fn controller(
        args: &Args,
        ns: &str,
        max_active_runs: usize,
        store: &str,
    ) -> anyhow::Result<Devset> {
        let port = free_port()?;
        Self::start(
            args,
            "controller",
            ns,
            &[
                "--max-active-runs",
                &max_active_runs.to_string(),
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--event-store",
                store,
                "--probe-interval-seconds",
                "600",
            ],
            port,
        )
        .await
    }

    /// `devset api` for namespace `ns`, reading the event log at `store`, with Kubernetes auth.
    pub async fn api(args: &Args, ns: &str, store: &str) -> anyhow::Result<Devset> {
        let port = free_port()?;
        Self::start(
            args,
            "api",
            ns,
            &[
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--auth",
                "kubernetes",
                "--event-store",
                store,
            ],
            port,
        )
        .await
    }

    async fn start(
        args: &Args,
        cmd: &str,
        ns: &str,
        flags: &[&str],
        port: u16,
    ) -> anyhow::Result<Devset> {
        let log = args.work.join("logs").join(format!("{cmd}-{ns}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&args.devset)
            .arg(cmd)
            .args(flags)
            .args(["--namespace", ns])
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {} {cmd}", args.devset.display()))?;
        let mut p = Devset { child, port, log };
        let url = format!("http://127.0.0.1:{port}/readyz");
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(p);
            }
            if let Some(status) = p.child.try_wait()? {
                anyhow::bail!(
                    "devset {cmd} exited ({status}); its log {}:\n{}",
                    p.log.display(),
                    tail(&p.log)
                );
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "devset {cmd} not ready after 60 s; log {}",
                p.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Devset {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A process's CPU time and memory at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

/// Reads `/proc/PID/stat` (utime, stime) and `/proc/PID/status` (VmRSS).
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its ')' are 3, 4, …
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status_kib(&status, "VmRSS:")?;
    Some(Sample {
        at: Instant::now(),
        cpu_ticks: utime + stime,
        rss_kib,
    })
}

/// `VmHWM`: the process's peak resident set so far, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmHWM:")
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Samples a process every 100 ms on a thread of its own until stopped.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Some(x) = sample(pid) {
                    s.lock().unwrap().push(x);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling (after one last sample) and returns the samples.
    pub fn finish(mut self, pid: u32) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut v = std::mem::take(&mut *self.samples.lock().unwrap());
        v.extend(sample(pid));
        Usage(v)
    }
}

/// A process's samples over a stretch of time.
pub struct Usage(Vec<Sample>);

impl Usage {
    /// CPU used between `from` and `to`, in percent of one CPU (from the samples that bracket
    /// the window).
    pub fn cpu_percent(&self, from: Instant, to: Instant) -> f64 {
        let a = self
            .0
            .iter()
            .rev()
            .find(|s| s.at <= from)
            .or(self.0.first());
        let b = self.0.iter().find(|s| s.at >= to).or(self.0.last());
        match (a, b) {
            (Some(a), Some(b)) if b.at > a.at => {
                let cpu = (b.cpu_ticks - a.cpu_ticks) as f64 / clock_ticks();
                100.0 * cpu / (b.at - a.at).as_secs_f64()
            }
            _ => f64::NAN,
        }
    }

    /// The largest resident set sampled between `from` and `to`, in MiB.
    pub fn peak_rss_mib(&self, from: Instant, to: Instant) -> f64 {
        self.0
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0) as f64
            / 1024.0
    }
}
