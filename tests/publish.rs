//! The broker adapters (`devset::brokers`) against the real brokers of the test environment;
//! outcomes are checked with the independent clients in `tests/bin/`.

mod common;

use common::{env, unique};
use devset::brokers::{BrokerConfig, BrokerError, Delivery, Producer, ProducerOptions, probe};
use devset::message::{Message, Target};
use futures::stream::{FuturesUnordered, StreamExt};
use std::time::{Duration, Instant};

const N: u64 = 1000;

fn message(i: u64) -> Message {
    Message {
        seq: i,
        key: Some(format!("k-{i}")),
        headers: vec![
            ("seq".into(), i.to_string()),
            ("source".into(), "devset".into()),
        ],
        payload: format!("payload {i}"),
        routing_key: None,
    }
}

/// Sends `n` messages with all acknowledgements in flight at once; returns the deliveries and
/// the messages per second from the first send to the last acknowledgement.
async fn publish_all(producer: &Producer, target: &Target, n: u64) -> (Vec<Delivery>, f64) {
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 1..=n {
        pending.push(producer.send(target, &message(i)).await.expect("send"));
    }
    let mut deliveries = Vec::new();
    while let Some(d) = pending.next().await {
        deliveries.push(d.expect("the broker acknowledges every message"));
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    (deliveries, rate)
}

fn stdout_ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn amqp_config() -> BrokerConfig {
    BrokerConfig::amqp(env().var("AMQP_URL")).expect("AMQP_URL parses")
}

async fn lapin_channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(
        env().var("AMQP_URL"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("AMQP connection");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_producer_publishes_a_thousand_messages_with_keys_and_headers() {
    let topic = unique("it-publish");
    let cfg = BrokerConfig::kafka(env().var("KAFKA_BOOTSTRAP"));
    let producer = Producer::connect(&cfg, ProducerOptions::default())
        .await
        .expect("connect");
    let (deliveries, rate) = publish_all(&producer, &Target::Topic(topic.clone()), N).await;
    producer.close().await.expect("close");
    eprintln!("kafka: {N} messages in flight at once: {rate:.0} msg/s");

    assert_eq!(deliveries.len() as u64, N);
    for d in &deliveries {
        assert!(
            matches!((d.partition, d.offset, d.delivery_tag), (Some(p), Some(o), None) if p >= 0 && o >= 0),
            "{d:?}"
        );
    }
    let mut positions: Vec<_> = deliveries.iter().map(|d| (d.partition, d.offset)).collect();
    positions.sort();
    positions.dedup();
    assert_eq!(
        positions.len() as u64,
        N,
        "every message has its own offset"
    );

    let count = stdout_ok(env().client("kafka-count", &[&topic]), "kafka-count");
    assert_eq!(count.trim(), N.to_string());

    let out = stdout_ok(
        env().client("kafka-consume", &["-k", "-H", &topic, "5", "60"]),
        "kafka-consume",
    );
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    for line in lines {
        // HEADERS<TAB>KEY<TAB>VALUE
        let fields: Vec<_> = line.split('\t').collect();
        let [headers, key, value] = fields[..] else {
            panic!("unexpected line {line:?}")
        };
        let i = value
            .strip_prefix("payload ")
            .unwrap_or_else(|| panic!("unexpected payload in {line:?}"));
        assert_eq!(key, format!("k-{i}"), "{line}");
        assert_eq!(headers, format!("seq:{i},source:devset"), "{line}");
    }
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_producer_publishes_a_thousand_messages_to_a_queue() {
    use lapin::{options::*, types::FieldTable};
    let queue = unique("it-publish");
    let (conn, channel) = lapin_channel().await;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue_declare");

    let producer = Producer::connect(&amqp_config(), ProducerOptions::default())
        .await
        .expect("connect");
    let (deliveries, rate) = publish_all(&producer, &Target::Queue(queue.clone()), N).await;
    producer.close().await.expect("close");
    eprintln!("rabbitmq: {N} messages, up to 1000 confirms outstanding: {rate:.0} msg/s");

    let mut tags: Vec<_> = deliveries
        .iter()
        .map(|d| {
            assert_eq!((d.partition, d.offset), (None, None), "{d:?}");
            d.delivery_tag.expect("a delivery tag")
        })
        .collect();
    tags.sort();
    assert_eq!(tags, (1..=N).collect::<Vec<_>>());

    let count = stdout_ok(env().client("rabbitmq-count", &[&queue]), "rabbitmq-count");
    assert_eq!(count.trim(), N.to_string());
    let body = stdout_ok(env().client("amqp-get", &[&queue, "1"]), "amqp-get");
    assert_eq!(body.trim_end(), "payload 1");

    // The second message, read with lapin, carries the headers and the key.
    let got = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic_get")
        .expect("a message");
    assert_eq!(got.delivery.data, b"payload 2");
    let props = &got.delivery.properties;
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    assert_eq!(props.content_type(), &None);
    let headers = props.headers().as_ref().expect("headers");
    let header = |name: &str| match headers.inner().get(name) {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {name}: {other:?}"),
    };
    assert_eq!(header("devset.key"), "k-2");
    assert_eq!(header("seq"), "2");
    assert_eq!(header("source"), "devset");

    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue_delete");
    conn.close(200, "done".into()).await.ok();
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_message_that_routes_nowhere_is_unroutable() {
    use lapin::{ExchangeKind, options::*, types::FieldTable};
    let exchange = unique("it-publish-x");
    let (conn, channel) = lapin_channel().await;
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange_declare");

    let producer = Producer::connect(&amqp_config(), ProducerOptions::default())
        .await
        .expect("connect");
    let mut msg = message(1);
    msg.routing_key = Some("no-such-binding".into());
    let err = producer
        .send(&Target::Exchange(exchange.clone()), &msg)
        .await
        .expect("send")
        .await
        .expect_err("the message is returned");
    assert!(
        matches!(&err, BrokerError::Unroutable { target } if target.contains(&exchange)),
        "{err:?}"
    );
    assert_eq!(err.reason(), "Unroutable");

    // A queue that does not exist is unroutable too, and the channel stays usable.
    let err = producer
        .send(&Target::Queue(unique("it-no-such-queue")), &message(2))
        .await
        .expect("send")
        .await
        .expect_err("the message is returned");
    assert_eq!(err.reason(), "Unroutable", "{err}");

    // A Kafka target does not fit RabbitMQ.
    let err = producer
        .send(&Target::Topic("t".into()), &message(3))
        .await
        .err()
        .expect("a topic on RabbitMQ is an error");
    assert_eq!(err.reason(), "BrokerError", "{err}");
    producer.close().await.expect("close");

    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .ok();
    conn.close(200, "done".into()).await.ok();
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn probe_tells_reachable_unreachable_and_bad_credentials_apart() {
    let timeout = Duration::from_secs(3);

    let kafka = BrokerConfig::kafka(env().var("KAFKA_BOOTSTRAP"));
    let ok = probe(&kafka, timeout).await.expect("Kafka is reachable");
    assert!(
        ok.starts_with("Kafka at ") && ok.contains("1 broker(s)"),
        "{ok}"
    );

    let amqp = amqp_config();
    let ok = probe(&amqp, timeout).await.expect("RabbitMQ is reachable");
    assert!(ok.starts_with("RabbitMQ at amqp://"), "{ok}");

    for cfg in [
        BrokerConfig::kafka("127.0.0.1:1"),
        BrokerConfig::amqp("amqp://127.0.0.1:1/%2f").unwrap(),
    ] {
        let start = Instant::now();
        let err = probe(&cfg, timeout)
            .await
            .expect_err("nothing listens there");
        let took = start.elapsed();
        assert_eq!(err.reason(), "Unreachable", "{}: {err}", cfg.describe());
        assert!(
            took < timeout + Duration::from_secs(3),
            "{}: took {took:?}",
            cfg.describe()
        );
        eprintln!("{}: {err} ({took:?})", cfg.describe());
    }

    let mut url = url::Url::parse(env().var("AMQP_URL")).unwrap();
    let password = url.password().expect("AMQP_URL has a password").to_string();
    url.set_password(Some("wrong-password")).unwrap();
    let bad = BrokerConfig::amqp(url.as_str()).unwrap();
    let err = probe(&bad, timeout).await.expect_err("wrong password");
    assert_eq!(err.reason(), "AuthFailed", "{err}");
    let text = format!("{err} {err:?} {bad:?} {}", bad.describe());
    assert!(!text.contains("wrong-password"), "{text}");
    assert!(!text.contains(&password), "{text}");
    eprintln!("{}: {err}", bad.describe());

    // A producer fails the same way.
    let err = Producer::connect(&bad, ProducerOptions::default())
        .await
        .expect_err("wrong password");
    assert_eq!(err.reason(), "AuthFailed", "{err}");
}
