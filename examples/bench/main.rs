//! The benchmark driver behind `tests/bench`: devset against the raw clients on the test
//! environment's real Kafka, RabbitMQ and API server. Prints one markdown table and writes it
//! to `--out`. It reports timings; it asserts none (only that each side did all its work).
//!
//!   tests/bench                     everything, at the sizes of the issue
//!   tests/bench --quick             small sizes, for development
//!   tests/bench --only kafka,sse    some parts
//!   tests/bench --only expect       one part
//!
//! Run it through `tests/bench`, which brings the environment up, builds the release binaries,
//! raises the open-files limit and tears down what it started. By hand:
//!
//!   source target/testenv/env.sh
//!   cargo run --release --example bench -- --devset target/release/devset --quick

mod cluster;
mod control;
mod expect;
mod kafka;
mod procs;
mod rabbitmq;
mod sse;
mod stage;
mod stats;
mod templates;

use clap::Parser;
use stats::Row;
use std::{path::PathBuf, time::Instant};

/// Benchmarks of devset against the raw clients, on the test environment.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench")]
pub struct Args {
    /// The parts to run, comma-separated: kafka, expect, rabbitmq, templates, sse, control.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kafka,expect,rabbitmq,templates,sse,control"
    )]
    pub only: Vec<Part>,
    /// Small sizes for development (each size flag still overrides).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of every measurement (default 3, quick 2).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Messages per Kafka run (default 1,000,000).
    #[arg(long)]
    pub kafka_messages: Option<u64>,
    /// Kafka payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    pub kafka_sizes: Vec<usize>,
    /// Messages in the topic the expect part reads, and its stage's `count` (default
    /// 1,000,000).
    #[arg(long)]
    pub expect_messages: Option<u64>,
    /// Their payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub expect_size: usize,
    /// The `where` of the expect stage, one row each, separated by ';'. Each must match every
    /// message: key `order-N`, header `source: devset`, payload `{"seq":N,"pad":"xxx…"}`.
    #[arg(
        long,
        value_delimiter = ';',
        default_value = r#"key.startsWith("order-");payload.seq > 0"#
    )]
    pub expect_where: Vec<String>,
    /// Extra rdkafka settings of the expect part's raw consumer, KEY=VALUE, comma-separated
    /// (e.g. `fetch.queue.backoff.ms=10`); the default is devset's consumer settings.
    #[arg(long, value_delimiter = ',')]
    pub expect_raw_config: Vec<String>,
    /// Also the rows that break the expect stage's time down (devset's consumer alone, the
    /// `where` alone); `--expect-breakdown false` leaves them out (for profiling the stage).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub expect_breakdown: bool,
    /// Messages per RabbitMQ run (default 200,000).
    #[arg(long)]
    pub rabbitmq_messages: Option<u64>,
    /// RabbitMQ payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub rabbitmq_size: usize,
    /// Renders per template measurement (default 1,000,000).
    #[arg(long)]
    pub template_renders: Option<u64>,
    /// Concurrent SSE clients, one measurement each (default 100,1000,5000).
    #[arg(long, value_delimiter = ',')]
    pub sse_clients: Option<Vec<usize>>,
    /// Messages the live run of the SSE benchmark publishes (default 300).
    #[arg(long)]
    pub sse_messages: Option<u64>,
    /// Their rate, per second.
    #[arg(long, default_value_t = 20.0)]
    pub sse_rate: f64,
    /// WorkflowRuns applied at once in the control-plane benchmark (default 500).
    #[arg(long)]
    pub runs: Option<usize>,
    /// The controller's --max-active-runs there (default 50).
    #[arg(long)]
    pub max_active_runs: Option<usize>,
    /// The sides of the Kafka and RabbitMQ comparisons to run (all three by default; one alone
    /// is for profiling). The expect part has raw and engine (with devset's consumer alone).
    #[arg(long, value_delimiter = ',', default_value = "raw,engine,controller")]
    pub sides: Vec<Side>,
    /// The `devset` binary (a release build).
    #[arg(long, default_value = "target/release/devset")]
    pub devset: PathBuf,
    /// Where the table goes.
    #[arg(long, default_value = "target/bench/results.md")]
    pub out: PathBuf,
    /// Logs, event stores and scratch files.
    #[arg(long, default_value = "target/bench")]
    pub work: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Kafka,
    Expect,
    Rabbitmq,
    Templates,
    Sse,
    Control,
}

/// One side of a publish comparison.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The raw client loop.
    Raw,
    /// A devset stage run by the engine in the bench process (`runner::run`).
    Engine,
    /// A devset stage run by `devset controller` as a WorkflowRun.
    Controller,
}

impl Args {
    pub fn reps(&self) -> usize {
        self.reps.unwrap_or(if self.quick { 2 } else { 3 }).max(1)
    }
    fn pick<T: Clone>(&self, set: &Option<T>, full: T, quick: T) -> T {
        set.clone().unwrap_or(if self.quick { quick } else { full })
    }
    pub fn kafka_messages(&self) -> u64 {
        self.pick(&self.kafka_messages, 1_000_000, 20_000)
    }
    pub fn expect_messages(&self) -> u64 {
        self.pick(&self.expect_messages, 1_000_000, 100_000)
    }
    pub fn rabbitmq_messages(&self) -> u64 {
        self.pick(&self.rabbitmq_messages, 200_000, 5_000)
    }
    pub fn template_renders(&self) -> u64 {
        self.pick(&self.template_renders, 1_000_000, 100_000)
    }
    pub fn sse_clients(&self) -> Vec<usize> {
        self.pick(&self.sse_clients, vec![100, 1_000, 5_000], vec![10, 100])
    }
    pub fn sse_messages(&self) -> u64 {
        self.pick(&self.sse_messages, 300, 60)
    }
    pub fn runs(&self) -> usize {
        self.pick(&self.runs, 500, 50)
    }
    pub fn max_active_runs(&self) -> usize {
        self.pick(&self.max_active_runs, 50, 10)
    }
    /// The test environment's setting `key` (from `source target/testenv/env.sh`).
    pub fn env(key: &str) -> anyhow::Result<String> {
        std::env::var(key).map_err(|_| {
            anyhow::anyhow!("{key} is not set: bring the test environment up and source target/testenv/env.sh (tests/bench does both)")
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.devset.is_file(),
        "{} is missing: cargo build --release (tests/bench does it)",
        args.devset.display()
    );
    std::fs::create_dir_all(args.work.join("logs"))?;
    let t0 = Instant::now();
    let load_before = stats::loadavg();
    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for part in [
        Part::Templates,
        Part::Kafka,
        Part::Expect,
        Part::Rabbitmq,
        Part::Sse,
        Part::Control,
    ] {
        if !args.only.contains(&part) {
            continue;
        }
        eprintln!("[bench] == {part:?} (load {})", stats::loadavg());
        let res = match part {
            Part::Kafka => kafka::run(&args).await,
            Part::Expect => expect::run(&args).await,
            Part::Rabbitmq => rabbitmq::run(&args).await,
            Part::Templates => templates::run(&args),
            Part::Sse => sse::run(&args).await,
            Part::Control => control::run(&args).await,
        };
        match res {
            Ok(r) => {
                eprint!("{}", stats::table(&r));
                rows.extend(r);
            }
            Err(e) => {
                eprintln!("[bench] {part:?} failed: {e:#}");
                failures.push(format!("{part:?}: {e:#}"));
            }
        }
    }
    let load_after = stats::loadavg();
    let mut text = stats::table(&rows);
    text.push_str(&format!(
        "\n{} repetition(s) per row; median, and min–max over the repetitions. Load average (1/5/15 min) before: {load_before}; after: {load_after}; {} CPUs; {:.0} s in all.\n",
        args.reps(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        t0.elapsed().as_secs_f64()
    ));
    for f in &failures {
        text.push_str(&format!("\nFAILED: {f}\n"));
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &text)?;
    println!("{text}");
    eprintln!("[bench] table written to {}", args.out.display());
    anyhow::ensure!(failures.is_empty(), "{} part(s) failed", failures.len());
    Ok(())
}
