//! Kafka expect: one `expect` stage reading a whole topic (`from: Earliest`, `count: N`, a
//! `where` that every message matches), run by the engine in this process, against a raw
//! rdkafka `BaseConsumer` poll loop with the same fetch settings, reading the same topic in the
//! same run, alternating the order across repetitions. The topic is filled once, before the
//! repetitions, by a raw producer with the messages of the Kafka publish part (key `order-N`,
//! header `source: devset`, payload `{"seq":N,"pad":"xxx…"}`).
//!
//! Besides msg/s, each side's CPU time per message (the bench process's, all threads; the
//! broker's not included), which a busy machine disturbs less than the wall time. Rows that
//! break the engine's time down (`--expect-breakdown false` leaves them out): devset's consumer
//! alone (`brokers::Consumer`, what the stage reads through, without `where`) and the `where`
//! alone (`Expr::matches` on messages in memory: native for a simple `where`, else CEL).
//! Stalls of the fetcher (librdkafka pauses fetching when its prefetch queue is full, 1 s by
//! default) are logged per run.

use crate::{
    Args, Side,
    kafka::{payload_template, render_raw},
    procs,
    stats::{self, Row, Unit, median, thousands},
};
use devset::{
    api::{ExpectAction, ExpectFrom, Stage, WorkflowSpec},
    brokers::{BrokerConfig, Consumer, Delivery, Incoming, Received, Source, StartAt},
    engine::{
        approval::NoApprovals,
        expr::{Expr, MESSAGE_VARIABLES, root_scope, with_message},
        outputs::Stages,
        runner::{self, Observer, RunInput, RunOutcome, StageOutcome},
    },
    message::{Message, Target},
};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer as _},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer},
};
use std::{
    collections::BTreeMap,
    hint::black_box,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// How long one side may take to read the topic before the bench gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Distinct messages the `where`-alone measurement cycles through.
const WHERE_SAMPLES: u64 = 10_000;

/// The fetch settings of the raw side: those of devset's consumer (src/brokers/kafka_consumer.rs)
/// when this was written, so that the two differ in their code only. `--expect-raw-config`
/// adds or overrides settings.
const FETCH: [(&str, &str); 3] = [
    ("fetch.min.bytes", "1"),
    ("queued.max.messages.kbytes", "16384"),
    // librdkafka's default (1 s) stalls a consumer for a second whenever its prefetch queue
    // is full: 1,000,000 messages took ~2 s instead of ~0.9 s.
    ("fetch.queue.backoff.ms", "10"),
];

pub async fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let bootstrap = Args::env("KAFKA_BOOTSTRAP")?;
    let n = args.expect_messages();
    let size = args.expect_size;
    let wheres = &args.expect_where;
    anyhow::ensure!(!wheres.is_empty(), "--expect-where: give at least one");
    for w in wheres {
        Expr::compile(w, MESSAGE_VARIABLES)
            .map_err(|e| anyhow::anyhow!("--expect-where {w:?}: {e}"))?;
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let watermarks: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let topic = format!("bench-expect-{size}-{}", std::process::id());
    admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    let res = measure(args, &bootstrap, &watermarks, &topic, n, size, wheres).await;
    if let Err(e) = admin.delete_topics(&[&topic], &AdminOptions::new()).await {
        eprintln!("[bench] deleting topic {topic}: {e}");
    }
    res
}

async fn measure(
    args: &Args,
    bootstrap: &str,
    watermarks: &BaseConsumer,
    topic: &str,
    n: u64,
    size: usize,
    wheres: &[String],
) -> anyhow::Result<Vec<Row>> {
    wait_for_leaders(watermarks, topic).await?;
    let (_, pad) = payload_template(size);
    let took = {
        let (b, t, p) = (bootstrap.to_string(), topic.to_string(), pad.clone());
        tokio::task::spawn_blocking(move || fill(&b, &t, n, &p)).await??
    };
    let stored = total_messages(watermarks, topic)?;
    anyhow::ensure!(
        stored == n as i64,
        "the topic holds {stored} messages, not {n}"
    );
    eprintln!(
        "[bench] expect: filled {topic} with {} × {size} B in {:.2} s ({} msg/s)",
        thousands(n),
        took.as_secs_f64(),
        thousands((n as f64 / took.as_secs_f64()) as u64)
    );

    // The sides of one repetition: the raw loop, devset's consumer alone, the engine per
    // `where`.
    #[derive(Clone, Copy, Debug)]
    enum Run {
        Raw,
        Consumer,
        Engine(usize),
    }
    let mut sides = Vec::new();
    if args.sides.contains(&Side::Raw) {
        sides.push(Run::Raw);
    }
    if args.sides.contains(&Side::Engine) {
        if args.expect_breakdown {
            sides.push(Run::Consumer);
        }
        sides.extend((0..wheres.len()).map(Run::Engine));
    }
    anyhow::ensure!(
        !sides.is_empty(),
        "--sides: the expect part has raw and engine"
    );
    let broker = BrokerConfig::kafka(bootstrap);
    // Per side (the raw loop, devset's consumer alone, the engine per `where`): the seconds and
    // the bench process's CPU nanoseconds per message of each repetition.
    let slot = |r: Run| match r {
        Run::Raw => 0,
        Run::Consumer => 1,
        Run::Engine(i) => 2 + i,
    };
    let mut secs = vec![Vec::new(); 2 + wheres.len()];
    let mut cpu = vec![Vec::new(); 2 + wheres.len()];
    for rep in 0..args.reps() {
        let mut order = sides.clone();
        let k = rep % order.len();
        order.rotate_left(k);
        for side in order {
            let cpu_before = cpu_seconds()?;
            let threads_before = thread_ticks();
            let (took, what) = match side {
                Run::Raw => {
                    let (b, t) = (bootstrap.to_string(), topic.to_string());
                    let extra = args.expect_raw_config.clone();
                    let (took, close) =
                        tokio::task::spawn_blocking(move || raw(&b, &t, n, &extra)).await??;
                    let what = format!("Raw (close {:.0} ms)", close.as_secs_f64() * 1e3);
                    (took, what)
                }
                Run::Consumer => {
                    let (took, close) = consumer_alone(&broker, topic, n).await?;
                    let what = format!(
                        "devset consumer alone (close {:.0} ms)",
                        close.as_secs_f64() * 1e3
                    );
                    (took, what)
                }
                Run::Engine(i) => {
                    let took = engine(&broker, topic, n, &wheres[i]).await?;
                    (took, format!("Engine, where `{}`", wheres[i]))
                }
            };
            let cpu_ns = (cpu_seconds()? - cpu_before) * 1e9 / n as f64;
            let by_thread = busy_threads(&threads_before, &thread_ticks());
            secs[slot(side)].push(took.as_secs_f64());
            cpu[slot(side)].push(cpu_ns);
            eprintln!(
                "[bench] expect {size} B rep {rep} {what}: {} msg/s ({:.2} s; {cpu_ns:.0} ns CPU per message; threads still alive: {by_thread}; load {})",
                thousands((n as f64 / took.as_secs_f64()) as u64),
                took.as_secs_f64(),
                stats::loadavg()
            );
        }
    }

    let per_sec = |v: &[f64]| v.iter().map(|s| n as f64 / s).collect::<Vec<_>>();
    let case = format!("{} × {size} B, 3 partitions", thousands(n));
    let with_raw = |row: Row, raw: Vec<f64>| {
        if raw.is_empty() { row } else { row.raw(raw) }
    };
    let raw_rate = per_sec(&secs[0]);
    let mut rows = Vec::new();
    for (i, w) in wheres.iter().enumerate() {
        let (s, c) = (&secs[2 + i], &cpu[2 + i]);
        if s.is_empty() {
            continue;
        }
        rows.push(with_raw(
            Row::new("Kafka expect", &case, "msg/s, engine", Unit::PerSec)
                .values(per_sec(s))
                .note(format!(
                    "where `{w}` (every message matches), from: Earliest, count: N; `runner::run`, counting observer; raw: BaseConsumer poll loop, same fetch settings, counts N"
                )),
            raw_rate.clone(),
        ));
        rows.push(with_raw(
            Row::new("Kafka expect", &case, "CPU ns/message, engine", Unit::Nanos)
                .values(c.clone())
                .note(format!(
                    "where `{w}`: the bench process's CPU time (all its threads; not the broker's) over N"
                )),
            cpu[0].clone(),
        ));
    }
    if !secs[1].is_empty() {
        rows.push(with_raw(
            Row::new(
                "Kafka expect",
                &case,
                "msg/s, devset consumer alone",
                Unit::PerSec,
            )
            .values(per_sec(&secs[1]))
            .note("`brokers::Consumer` open, `next_batch_with` ×N copying each message as a match is, close: the stage without `where`"),
            raw_rate.clone(),
        ));
        rows.push(with_raw(
            Row::new(
                "Kafka expect",
                &case,
                "CPU ns/message, devset consumer alone",
                Unit::Nanos,
            )
            .values(cpu[1].clone()),
            cpu[0].clone(),
        ));
    }
    if args.sides.contains(&Side::Engine) && args.expect_breakdown {
        for w in wheres {
            let (ns, cel_ns, fast) = where_alone(w, n, &pad, args.reps())?;
            let how = if fast {
                "native (`Expr::matches`' fast path)"
            } else {
                "CEL (no fast path for it)"
            };
            eprintln!(
                "[bench] expect where `{w}` alone: {:.0} ns CPU per message, {how}; through CEL: {cel_ns:.0} ns",
                median(&ns)
            );
            rows.push(
                Row::new("Kafka expect", &case, "CPU ns/message, `where` alone", Unit::Nanos)
                    .values(ns)
                    .note(format!(
                        "`{w}` on messages in memory, `Expr::matches`: {how}; through CEL (scope and all) {cel_ns:.0} ns"
                    )),
            );
        }
    }
    Ok(rows)
}

/// Fills `topic` with messages 1..=n as the raw loop of the Kafka publish part renders them,
/// through a producer with devset's settings; the time to the last acknowledgement.
fn fill(bootstrap: &str, topic: &str, n: u64, pad: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "raw-fill")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "60000")
        .create()?;
    let (mut key, mut payload) = (String::new(), String::new());
    for seq in 1..=n {
        render_raw(seq, pad, &mut key, &mut payload);
        let mut record = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(payload.as_bytes())
            .headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                key: "source",
                value: Some("devset".as_bytes()),
            }));
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => anyhow::bail!("fill: send: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(start.elapsed())
}

/// The raw loop: a BaseConsumer assigned to every partition from the beginning, polled until it
/// has seen `n` messages, then closed. Returns the time from creating it to the end of its close
/// (as the engine's time includes its consumer's close), and the close alone.
fn raw(
    bootstrap: &str,
    topic: &str,
    n: u64,
    extra: &[String],
) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "raw-expect")
        .set("group.id", format!("bench-raw-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in FETCH {
        config.set(k, v);
    }
    for kv in extra {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--expect-raw-config {kv:?}: not KEY=VALUE"))?;
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    anyhow::ensure!(tpl.count() > 0, "raw: topic {topic} has no partitions");
    consumer.assign(&tpl)?;
    let opened = start.elapsed();
    let (mut count, mut bytes) = (0u64, 0usize);
    let mut gaps = Gaps::default();
    while count < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                count += 1;
                bytes += m.payload_len();
                if count % 1024 == 1 {
                    gaps.tick();
                }
            }
            Some(Err(e)) => eprintln!("[bench] raw consumer: {e}"),
            None => anyhow::ensure!(
                start.elapsed() < READ_TIMEOUT,
                "raw: {count} of {n} messages within {READ_TIMEOUT:?}"
            ),
        }
    }
    black_box(bytes);
    let closing = Instant::now();
    drop(consumer);
    eprintln!(
        "[bench]   raw: open {:.0} ms, {gaps}",
        opened.as_secs_f64() * 1e3
    );
    Ok((start.elapsed(), closing.elapsed()))
}

/// devset's consumer alone: opened on the topic from the beginning, `next_batch_with` until `n`
/// messages, each copied into one reused `Received` as the stage copies a match, closed. The
/// time from opening to the end of the close, and the close alone.
async fn consumer_alone(
    broker: &BrokerConfig,
    topic: &str,
    n: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    let source = Source::Topic {
        topic: topic.to_string(),
        from: StartAt::Earliest,
    };
    let mut consumer = Consumer::open(broker, &source).await?;
    let opened = start.elapsed();
    let mut copy = Received::default();
    let mut got = 0u64;
    let mut gaps = Gaps::default();
    while got < n {
        let k = tokio::time::timeout(
            READ_TIMEOUT,
            consumer.next_batch_with(1024, |m| {
                m.copy_to(&mut copy);
                black_box(&copy);
                true
            }),
        )
        .await
        .map_err(|_| anyhow::anyhow!("consumer alone: {got} of {n} messages"))??;
        gaps.tick();
        got += k as u64;
    }
    let closing = Instant::now();
    consumer.close().await;
    eprintln!(
        "[bench]   consumer alone: open {:.0} ms, {gaps}",
        opened.as_secs_f64() * 1e3
    );
    anyhow::ensure!(
        got == n,
        "consumer alone: read {got}, more than the {n} there"
    );
    Ok((start.elapsed(), closing.elapsed()))
}

/// The waits of 20 ms or more between batches (stalls).
#[derive(Default)]
struct Gaps {
    last: Option<Instant>,
    stalls: u32,
    stalled: Duration,
    longest: Duration,
}

impl Gaps {
    fn tick(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.last {
            let gap = now - last;
            if gap >= Duration::from_millis(20) {
                self.stalls += 1;
                self.stalled += gap;
            }
            self.longest = self.longest.max(gap);
        }
        self.last = Some(now);
    }
}

impl std::fmt::Display for Gaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} stalls of 20 ms or more between batches ({:.0} ms in all, longest {:.0} ms)",
            self.stalls,
            self.stalled.as_secs_f64() * 1e3,
            self.longest.as_secs_f64() * 1e3
        )
    }
}

/// Counts the messages the stage matched and keeps its outputs.
#[derive(Default)]
struct Matched {
    received: AtomicU64,
    outputs: Mutex<BTreeMap<String, String>>,
}

impl Observer for Matched {
    fn stage_started(&self, _: &str, _: u32) {}
    fn published(&self, _: &str, _: &str, _: &Target, _: &Message, _: &Delivery) {}
    fn received(&self, _: &str, _: &str, _: &Target, _: &Message, _: &Delivery) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
    fn stage_retrying(&self, _: &str, _: u32, _: &str, _: &str) {}
    fn stage_outputs(&self, _: &str, outputs: &BTreeMap<String, String>) {
        *self.outputs.lock().unwrap() = outputs.clone();
    }
    fn stage_finished(&self, _: &str, _: &StageOutcome) {}
}

/// Runs one expect stage with the engine; the time of `runner::run` (compiling the checks,
/// opening the consumer, reading, closing it).
async fn engine(
    broker: &BrokerConfig,
    topic: &str,
    n: u64,
    where_: &str,
) -> anyhow::Result<Duration> {
    let action = ExpectAction {
        topic: Some(topic.to_string()),
        from: Some(ExpectFrom::Earliest),
        count: (n as i64).into(),
        where_: Some(where_.to_string()),
        timeout: Some(format!("{}s", READ_TIMEOUT.as_secs())),
        ..Default::default()
    };
    let input = RunInput {
        run_name: "bench".into(),
        run_namespace: "bench".into(),
        run_uid: String::new(),
        spec: WorkflowSpec {
            stages: vec![Stage {
                name: "expect".into(),
                expect: Some(action),
                ..Default::default()
            }],
            ..Default::default()
        },
        params: BTreeMap::new(),
        resume: BTreeMap::new(),
        brokers: BTreeMap::from([("b".to_string(), broker.clone())]),
        default_connector: "b".into(),
        started_at: jiff::Timestamp::now(),
        approvals: Arc::new(NoApprovals),
        pause: CancellationToken::new(),
    };
    let observer = Arc::new(Matched::default());
    let start = Instant::now();
    let outcome = runner::run(input, observer.clone(), CancellationToken::new()).await;
    let took = start.elapsed();
    anyhow::ensure!(
        outcome == RunOutcome::Completed,
        "engine expect stage: {outcome:?}"
    );
    let matched = observer.received.load(Ordering::Relaxed);
    let outputs = observer.outputs.lock().unwrap().clone();
    anyhow::ensure!(
        matched == n && outputs.get("received") == Some(&n.to_string()),
        "engine expect stage: {matched} of {n} matched (outputs {outputs:?})"
    );
    if outputs.get("read") != Some(&n.to_string()) {
        eprintln!("[bench] engine expect stage: outputs {outputs:?}");
    }
    Ok(took)
}

/// The CPU nanoseconds per message of `where_` alone, one value per repetition: what the
/// stage does per message (`Expr::matches` on the message in place) on at least 300,000
/// evaluations over [`WHERE_SAMPLES`] messages rendered as the topic's. Also the same through
/// CEL (a child scope with the message, `eval_bool`), the median over the repetitions, and
/// whether the expression has a fast path. CPU time rather than wall time, so that other
/// processes on the machine do not count; this thread is the only busy one of the process
/// meanwhile.
fn where_alone(
    where_: &str,
    n: u64,
    pad: &str,
    reps: usize,
) -> anyhow::Result<(Vec<f64>, f64, bool)> {
    let expr = Expr::compile(where_, MESSAGE_VARIABLES).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = root_scope(&BTreeMap::new(), &Stages::new());
    let delivery = Delivery::default();
    let msgs: Vec<Message> = (1..=WHERE_SAMPLES)
        .map(|seq| {
            let (mut key, mut payload) = (String::new(), String::new());
            render_raw(seq, pad, &mut key, &mut payload);
            Message {
                seq,
                key: Some(key),
                headers: vec![("source".into(), "devset".into())],
                payload,
                routing_key: None,
            }
        })
        .collect();
    let n = n.max(300_000);
    let msg = |i: u64| Incoming::of(&msgs[(i % WHERE_SAMPLES) as usize], &delivery);
    let (mut total, mut cel) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let cpu = cpu_seconds()?;
        for i in 0..n {
            let m = msg(i);
            let matched = with_message(&root, &m, |scope| expr.eval_bool(scope))
                .map_err(|e| anyhow::anyhow!("where `{where_}` on message {}: {e}", m.seq()))?;
            black_box(matched);
        }
        cel.push((cpu_seconds()? - cpu) * 1e9 / n as f64);
        let cpu = cpu_seconds()?;
        for i in 0..n {
            let m = msg(i);
            let matched = expr
                .matches(&root, &m)
                .map_err(|e| anyhow::anyhow!("where `{where_}` on message {}: {e}", m.seq()))?;
            anyhow::ensure!(
                matched,
                "where `{where_}` does not match message {}",
                m.seq()
            );
        }
        total.push((cpu_seconds()? - cpu) * 1e9 / n as f64);
    }
    Ok((total, median(&cel), expr.has_fast_path()))
}

/// The CPU time of this process so far (all its threads), from `/proc/self/stat`.
fn cpu_seconds() -> anyhow::Result<f64> {
    let s = procs::sample(std::process::id())
        .ok_or_else(|| anyhow::anyhow!("cannot read /proc/self/stat"))?;
    // /proc counts in USER_HZ, which is 100 on Linux.
    Ok(s.cpu_ticks as f64 / 100.0)
}

/// Each thread's CPU time so far, in clock ticks, by thread id (with its name), from
/// `/proc/self/task`.
fn thread_ticks() -> BTreeMap<u32, (String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return BTreeMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
            let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some((tid, (name, ticks)))
        })
        .collect()
}

/// The CPU milliseconds of the threads that used 20 ms or more between two [`thread_ticks`],
/// summed by thread name, busiest first: `tokio-rt-worker 1630 ms, rdk:broker1 410 ms`.
fn busy_threads(
    before: &BTreeMap<u32, (String, u64)>,
    after: &BTreeMap<u32, (String, u64)>,
) -> String {
    let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
    for (tid, (name, ticks)) in after {
        let was = before.get(tid).map_or(0, |(_, t)| *t);
        *by_name.entry(name.as_str()).or_default() += ticks.saturating_sub(was);
    }
    let mut v: Vec<(&str, u64)> = by_name.into_iter().filter(|(_, t)| *t >= 2).collect();
    v.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    let parts: Vec<String> = v
        .iter()
        .map(|(name, t)| format!("{name} {} ms", t * 10))
        .collect();
    if parts.is_empty() {
        "no thread busy".into()
    } else {
        parts.join(", ")
    }
}

/// Waits until every partition of a new topic has a leader (its watermarks can be read).
async fn wait_for_leaders(c: &BaseConsumer, topic: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        match total_messages(c, topic) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                return Err(e.context(format!("topic {topic} has no leaders after 30 s")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Messages in all partitions of `topic` (the sum of the high watermarks).
fn total_messages(c: &BaseConsumer, topic: &str) -> anyhow::Result<i64> {
    tokio::task::block_in_place(|| {
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut sum = 0;
        for t in md.topics() {
            anyhow::ensure!(
                !t.partitions().is_empty(),
                "topic {topic}: no partitions yet"
            );
            for p in t.partitions() {
                anyhow::ensure!(p.leader() >= 0, "topic {topic}: a partition has no leader");
                let (lo, hi) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                sum += hi - lo;
            }
        }
        Ok(sum)
    })
}
