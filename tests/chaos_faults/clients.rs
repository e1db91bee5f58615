//! Independent broker clients of the fault scenarios (tests/chaos_faults.rs): what is on a
//! Kafka topic or a RabbitMQ queue, and messages put there, by clients of the test's own.

use super::common::{env, unique};
use std::time::{Duration, Instant};

/// Every payload on a Kafka topic, read from its beginning by an rdkafka consumer of its own.
pub fn kafka_payloads(topic: &str, at_least: usize) -> Vec<String> {
    use rdkafka::{
        ClientConfig, Message, Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer},
    };
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env().var("KAFKA_BOOTSTRAP"))
        .set("group.id", unique("chaos-check"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(if out.len() >= at_least { 1 } else { 20 }) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            quiet = Instant::now();
        }
    }
    out
}

/// Produces `payloads` to `topic` with an rdkafka producer of the test's own (acks=all).
pub async fn kafka_produce(topic: &str, payloads: &[String]) {
    use rdkafka::{
        ClientConfig,
        producer::{FutureProducer, FutureRecord},
    };
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env().var("KAFKA_BOOTSTRAP"))
        .set("acks", "all")
        .create()
        .unwrap();
    for payload in payloads {
        p.send(
            FutureRecord::<(), _>::to(topic).payload(payload),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    }
}

pub async fn amqp() -> lapin::Connection {
    lapin::Connection::connect(
        env().var("AMQP_URL"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap()
}

/// Publishes `payloads` to `queue` through the default exchange, with confirms.
pub async fn amqp_publish(queue: &str, payloads: &[String]) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let conn = amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for payload in payloads {
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload.as_bytes(),
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    conn.close(200, "ok".into()).await.ok();
}

/// Takes every message off `queue` (basic.get) and returns the payloads.
pub async fn amqp_drain(queue: &str) -> Vec<String> {
    use lapin::options::BasicGetOptions;
    let conn = amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    conn.close(200, "ok".into()).await.ok();
    out
}
