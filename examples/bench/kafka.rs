//! Kafka publish: a devset stage against a raw rdkafka producer loop with the settings of
//! src/brokers/kafka.rs (idempotent, acks=all, linger.ms=5, the same queue bounds), on the same
//! broker and topic, alternating the order across repetitions.

use crate::{
    Args, Side, cluster, stage,
    stats::{Row, Unit, thousands},
};
use devset::{
    api::{DeliveryGuarantee, PublishAction},
    brokers::BrokerConfig,
    events::{Limits, Store},
};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use std::time::{Duration, Instant};

/// Deliveries the raw loop keeps outstanding at most: the engine's `MAX_IN_FLIGHT`.
const RAW_MAX_IN_FLIGHT: usize = 50_000;

/// The payload `{"seq":N,"pad":"xxx…"}`, `size` bytes long for a 7-digit N.
pub fn payload_template(size: usize) -> (String, String) {
    let pad = "x".repeat(size.saturating_sub(r#"{"seq":,"pad":""}"#.len() + 7));
    (format!(r#"{{"seq":{{{{ seq }}}},"pad":"{pad}"}}"#), pad)
}

/// The raw loop's rendering of what the template renders: the same bytes.
pub fn render_raw(seq: u64, pad: &str, key: &mut String, payload: &mut String) {
    let mut n = itoa::Buffer::new();
    let seq = n.format(seq);
    key.clear();
    key.push_str("order-");
    key.push_str(seq);
    payload.clear();
    payload.push_str(r#"{"seq":"#);
    payload.push_str(seq);
    payload.push_str(r#","pad":""#);
    payload.push_str(pad);
    payload.push_str(r#""}"#);
}

/// Payload bytes of messages 1..=n.
pub fn payload_bytes(n: u64, pad: &str) -> u64 {
    let fixed = (r#"{"seq":,"pad":""}"#.len() + pad.len()) as u64;
    (1..=n).map(|s| fixed + s.ilog10() as u64 + 1).sum()
}

pub fn action(target: PublishAction, n: u64, size: usize) -> PublishAction {
    PublishAction {
        count: (n as i64).into(),
        key: Some("order-{{ seq }}".into()),
        headers: [("source".to_string(), "devset".to_string())].into(),
        payload: Some(payload_template(size).0),
        ..target
    }
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let bootstrap = Args::env("KAFKA_BOOTSTRAP")?;
    let n = args.kafka_messages();
    let part = cluster::Part::start(args, "kafka", 10).await?;
    let (client, ns, store_url) = (&part.client, part.ns.clone(), part.store.clone());
    let store = Store::open(&store_url, Limits::default()).await?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let watermarks: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let mut rows = Vec::new();
    for &size in &args.kafka_sizes {
        let (_, pad) = payload_template(size);
        let mb = payload_bytes(n, &pad) as f64 / 1e6;
        let mut secs = [Vec::new(), Vec::new(), Vec::new()];
        let mut exactly_once = Vec::new();
        for rep in 0..args.reps() {
            let topic = format!("bench-{size}-{rep}-{}", std::process::id());
            admin
                .create_topics(
                    &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
                )
                .await?;
            wait_for_leaders(&watermarks, &topic).await?;
            let mut order = [Side::Raw, Side::Engine, Side::Controller];
            order.rotate_left(rep % 3);
            for side in order.into_iter().filter(|s| args.sides.contains(s)) {
                let before = total_messages(&watermarks, &topic)?;
                let target = PublishAction {
                    topic: Some(topic.clone()),
                    ..Default::default()
                };
                let took = match side {
                    Side::Raw => raw(&bootstrap, &topic, n, &pad).await?,
                    Side::Engine => {
                        stage::engine(&action(target, n, size), BrokerConfig::kafka(&bootstrap))
                            .await?
                    }
                    Side::Controller => {
                        let name = format!("k{size}-{rep}");
                        stage::controller(
                            client,
                            &ns,
                            &store,
                            &name,
                            "kafka",
                            &action(target, n, size),
                        )
                        .await?
                    }
                };
                let added = total_messages(&watermarks, &topic)? - before;
                anyhow::ensure!(
                    added == n as i64,
                    "{side:?}: the topic gained {added} messages, not {n}"
                );
                let rate = n as f64 / took.as_secs_f64();
                eprintln!(
                    "[bench] kafka {size} B rep {rep} {side:?}: {} msg/s ({:.2} s)",
                    thousands(rate as u64),
                    took.as_secs_f64()
                );
                secs[side as usize].push(took.as_secs_f64());
            }
            if args.sides.contains(&Side::Engine) {
                let target = PublishAction {
                    topic: Some(topic.clone()),
                    delivery: Some(DeliveryGuarantee::ExactlyOnce),
                    ..Default::default()
                };
                let before = total_messages(&watermarks, &topic)?;
                let took = stage::engine(&action(target, n, size), BrokerConfig::kafka(&bootstrap))
                    .await?;
                // The offsets count the transactions' commit markers too (one per partition).
                let added = total_messages(&watermarks, &topic)? - before;
                anyhow::ensure!(
                    added >= n as i64 && added <= n as i64 + 3 * (n as i64 / 10 + 10),
                    "ExactlyOnce: the topic gained {added} offsets for {n} messages"
                );
                eprintln!(
                    "[bench] kafka {size} B rep {rep} engine ExactlyOnce: {} msg/s ({:.2} s)",
                    thousands((n as f64 / took.as_secs_f64()) as u64),
                    took.as_secs_f64()
                );
                exactly_once.push(took.as_secs_f64());
            }
            admin.delete_topics(&[&topic], &AdminOptions::new()).await?;
            wait_deleted(&topic).await;
        }
        let per_sec = |v: &[f64], x: f64| v.iter().map(|s| x / s).collect::<Vec<_>>();
        let case = format!("{} × {size} B", thousands(n));
        let [raw_s, engine_s, ctl_s] = &secs;
        rows.push(
            Row::new("Kafka publish", &case, "msg/s, engine", Unit::PerSec)
                .values(per_sec(engine_s, n as f64))
                .raw(per_sec(raw_s, n as f64))
                .note("`runner::run`, counting observer"),
        );
        rows.push(
            Row::new("Kafka publish", &case, "MB/s, engine", Unit::MBps)
                .values(per_sec(engine_s, mb))
                .raw(per_sec(raw_s, mb))
                .note("payload bytes"),
        );
        rows.push(
            Row::new(
                "Kafka publish",
                &case,
                "msg/s, engine ExactlyOnce",
                Unit::PerSec,
            )
            .values(per_sec(&exactly_once, n as f64))
            .raw(per_sec(engine_s, n as f64))
            .note("transactions of ≤ 1,000 messages or 100 ms; the raw column: the engine with AtLeastOnce"),
        );
        rows.push(
            Row::new("Kafka publish", &case, "msg/s, controller", Unit::PerSec)
                .values(per_sec(ctl_s, n as f64))
                .raw(per_sec(raw_s, n as f64))
                .note("a WorkflowRun: status writes, event log (SQLite)"),
        );
        rows.push(
            Row::new("Kafka publish", &case, "MB/s, controller", Unit::MBps)
                .values(per_sec(ctl_s, mb))
                .raw(per_sec(raw_s, mb)),
        );
    }
    part.finish().await?;
    Ok(rows)
}

/// Waits (up to 3 minutes) until the test environment's broker has removed a deleted topic's
/// files (a minute after the deletion): a repetition of 1 KiB messages leaves 3.3 GB.
async fn wait_deleted(topic: &str) {
    let Ok(dir) = std::env::var("DEVSET_ENV_DIR") else {
        return;
    };
    let data = std::path::Path::new(&dir).join("kafka/data");
    let prefix = format!("{topic}-");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(180) {
        let left = std::fs::read_dir(&data).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        });
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("[bench] topic {topic}: files still on disk after 180 s");
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

/// The raw loop: a FutureProducer with devset's settings and window, every delivery future
/// polled; the time from creating the producer to the last acknowledgement.
async fn raw(bootstrap: &str, topic: &str, n: u64, pad: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "raw")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "30000")
        .create()?;
    let mut in_flight = FuturesUnordered::new();
    let mut acked = 0u64;
    let mut check = |r: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, _>| match r
    {
        Ok(Ok(_)) => {
            acked += 1;
            Ok(())
        }
        Ok(Err((e, _))) => Err(anyhow::anyhow!("delivery failed: {e}")),
        Err(_) => Err(anyhow::anyhow!("delivery canceled")),
    };
    let (mut key, mut payload) = (String::new(), String::new());
    for seq in 1..=n {
        render_raw(seq, pad, &mut key, &mut payload);
        let mut record = FutureRecord::to(topic)
            .key(key.as_bytes())
            .payload(payload.as_bytes())
            .headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                key: "source",
                value: Some("devset".as_bytes()),
            }));
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    match in_flight.next().await {
                        Some(r) => check(r)?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => anyhow::bail!("send: {e}"),
            }
        }
        while let Some(Some(r)) = in_flight.next().now_or_never() {
            check(r)?;
        }
        // The engine's window: without it the loop queues all its messages at once, and a
        // broker that slows down lets the last ones time out (message.timeout.ms).
        while in_flight.len() >= RAW_MAX_IN_FLIGHT {
            if let Some(r) = in_flight.next().await {
                check(r)?;
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        check(r)?;
    }
    anyhow::ensure!(acked == n, "raw: {acked} of {n} acknowledged");
    Ok(start.elapsed())
}
