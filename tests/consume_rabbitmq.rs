//! The consumer of `expect` stages on RabbitMQ (`devset::brokers::Consumer`, `declare_tap`,
//! `delete_tap`) against the real broker of the test environment. Messages are put on it with
//! clients independent of the code under test (lapin and `amqp-publish`), and what is left on it
//! is checked with `tests/bin/` clients. The Kafka half is `tests/consume.rs`.

mod common;

use common::consume::{assert_seq, read_exactly, read_with_cancellations};
use common::{env, unique};
use devset::brokers::{BrokerConfig, Consumer, Received, Source, declare_tap, delete_tap};
use std::{
    io::Write as _,
    process::Stdio,
    time::{Duration, Instant},
};

fn amqp() -> BrokerConfig {
    BrokerConfig::amqp(env().var("AMQP_URL")).expect("AMQP_URL parses")
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ helpers (independent of the code under test)

async fn lapin_channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(
        env().var("AMQP_URL"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("AMQP connection");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm_select");
    (conn, channel)
}

async fn declare_queue(ch: &lapin::Channel, queue: &str) {
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("queue_declare");
}

/// Publishes `payload i` for i in `range`, with the key `k-i` in the `devset.key` header and an
/// `i` header, and waits for every confirm.
async fn publish(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    range: std::ops::RangeInclusive<usize>,
) {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let mut confirms = Vec::new();
    for i in range {
        let mut headers = FieldTable::default();
        headers.insert(
            "devset.key".into(),
            AMQPValue::LongString(LongString::from(format!("k-{i}"))),
        );
        headers.insert("i".into(), AMQPValue::LongLongInt(i as i64));
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                format!("payload {i}").as_bytes(),
                lapin::BasicProperties::default().with_headers(headers),
            )
            .await
            .expect("basic_publish");
        confirms.push(confirm);
    }
    for c in confirms {
        let c = c.await.expect("confirm");
        assert!(c.is_ack());
        assert!(c.take_message().is_none(), "the message was routed");
    }
}

/// `rabbitmq-count QUEUE`: Some(messages), or None when there is no such queue.
fn queue_count(queue: &str) -> Option<u64> {
    let out = env().client("rabbitmq-count", &[queue]);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no queue"), "rabbitmq-count: {stderr}");
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a count"),
    )
}

fn payload_numbers(all: &[Received]) -> Vec<usize> {
    all.iter()
        .map(|r| r.msg.payload["payload ".len()..].parse().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_queue_is_consumed_and_left_empty() {
    let queue = unique("it-consume");
    let (conn, ch) = lapin_channel().await;
    declare_queue(&ch, &queue).await;
    let n = 2500;
    publish(&ch, "", &queue, 1..=n).await;
    assert_eq!(queue_count(&queue), Some(n as u64));

    let source = Source::Queue {
        queue: queue.clone(),
    };
    let mut c = Consumer::open(&amqp(), &source).await.expect("open");
    let all = read_exactly(
        &mut c,
        n,
        Duration::from_secs(60),
        Duration::from_millis(300),
    )
    .await;
    c.close().await;
    assert_seq(&all);
    assert_eq!(
        payload_numbers(&all),
        (1..=n).collect::<Vec<_>>(),
        "queue order"
    );
    for (i, r) in (1..).zip(&all) {
        assert_eq!(r.msg.key.as_deref(), Some(format!("k-{i}").as_str()));
        assert_eq!(r.msg.headers, vec![("i".to_string(), i.to_string())]);
        assert_eq!(r.msg.routing_key.as_deref(), Some(queue.as_str()));
        assert!(r.delivery.delivery_tag.is_some());
        assert_eq!(r.delivery.partition, None);
    }
    assert_eq!(queue_count(&queue), Some(0), "every message read was acked");
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .ok();
    conn.close(200, "done".into()).await.ok();
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_messages_not_handed_out_stay_in_the_queue() {
    let queue = unique("it-consume");
    let (conn, ch) = lapin_channel().await;
    declare_queue(&ch, &queue).await;
    publish(&ch, "", &queue, 1..=10).await;
    let source = Source::Queue {
        queue: queue.clone(),
    };
    let mut c = Consumer::open(&amqp(), &source).await.expect("open");
    let mut out = Vec::new();
    let k = tokio::time::timeout(Duration::from_secs(10), c.next_batch(&mut out, 4))
        .await
        .expect("a message within 10s")
        .expect("next_batch");
    assert!((1..=4).contains(&k), "{k}");
    assert_eq!(payload_numbers(&out), (1..=k).collect::<Vec<_>>());
    c.close().await;
    assert_eq!(queue_count(&queue), Some(10 - k as u64));
    // The rest is there for an independent client, in order.
    let rest = env().client("amqp-get", &[&queue, &(10 - k).to_string()]);
    let rest = String::from_utf8_lossy(&rest.stdout).into_owned();
    let want: Vec<String> = (k + 1..=10).map(|i| format!("payload {i}")).collect();
    assert_eq!(rest.lines().collect::<Vec<_>>(), want);
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .ok();
    conn.close(200, "done".into()).await.ok();
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_tap_reads_what_is_published_to_the_exchange_and_is_deleted() {
    let exchange = unique("it-consume-x");
    let queue = format!("devset.tap.{}", unique("it"));
    let (conn, ch) = lapin_channel().await;
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("exchange_declare");

    let cfg = amqp();
    declare_tap(
        &cfg,
        &exchange,
        "orders.*",
        &queue,
        Duration::from_secs(600),
    )
    .await
    .expect("declare_tap");
    // Again, as when a controller resumes the run.
    declare_tap(
        &cfg,
        &exchange,
        "orders.*",
        &queue,
        Duration::from_secs(600),
    )
    .await
    .expect("declare_tap is idempotent");
    let args = env().client(
        "rabbitmqctl-env",
        &[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "arguments",
        ],
    );
    let listing = String::from_utf8_lossy(&args.stdout).into_owned();
    let line = listing
        .lines()
        .find(|l| l.split('\t').next() == Some(queue.as_str()))
        .unwrap_or_else(|| panic!("no tap queue in {listing}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(&fields[1..4], ["false", "false", "false"], "{line}");
    assert!(
        fields[4].contains("x-expires") && fields[4].contains("600000"),
        "{line}"
    );

    // With an independent C client, one message per line; a routing key that does not match.
    let publish_lines = |routing_key: &str, lines: &str| {
        let mut child = std::process::Command::new("/usr/bin/amqp-publish")
            .args([
                &format!("--url={}", env().var("AMQP_URL")),
                "-e",
                &exchange,
                "-r",
                routing_key,
                "-l",
                "-H",
                "source: amqp-publish",
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("amqp-publish runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    publish_lines("orders.created", "payload 1\npayload 2\npayload 3\n");
    publish_lines("payments.settled", "payload 100\n");
    // And with lapin, keys included.
    publish(&ch, &exchange, "orders.paid", 4..=6).await;

    let source = Source::Tap {
        exchange: exchange.clone(),
        routing_key: "orders.*".into(),
        queue: queue.clone(),
    };
    let mut c = Consumer::open(&cfg, &source).await.expect("open");
    let all = read_exactly(
        &mut c,
        6,
        Duration::from_secs(30),
        Duration::from_millis(300),
    )
    .await;
    c.close().await;
    assert_seq(&all);
    let payloads: Vec<&str> = all.iter().map(|r| r.msg.payload.as_str()).collect();
    // amqp-publish -l keeps each line's newline in the body.
    assert_eq!(
        payloads,
        [
            "payload 1\n",
            "payload 2\n",
            "payload 3\n",
            "payload 4",
            "payload 5",
            "payload 6"
        ]
    );
    for r in &all[..3] {
        assert_eq!(r.msg.routing_key.as_deref(), Some("orders.created"));
        assert_eq!(r.msg.key, None);
        assert_eq!(
            r.msg.headers,
            vec![("source".to_string(), "amqp-publish".to_string())]
        );
    }
    for r in &all[3..] {
        assert_eq!(r.msg.routing_key.as_deref(), Some("orders.paid"));
        assert!(r.msg.key.as_deref().is_some_and(|k| k.starts_with("k-")));
    }
    assert_eq!(queue_count(&queue), Some(0));

    delete_tap(&cfg, &queue).await.expect("delete_tap");
    assert_eq!(queue_count(&queue), None, "the tap queue is gone");
    delete_tap(&cfg, &queue)
        .await
        .expect("deleting a missing tap queue is fine");
    let err = Consumer::open(&cfg, &source)
        .await
        .expect_err("the tap queue is gone");
    assert_eq!(err.reason(), "NotFound", "{err}");
    assert_eq!(err.to_string(), format!("queue {queue} does not exist"));

    ch.exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .ok();
    conn.close(200, "done".into()).await.ok();
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_missing_exchange_and_queue_are_not_found() {
    let cfg = amqp();
    let exchange = unique("it-consume-missing-x");
    let queue = unique("it-consume-missing-q");
    let err = declare_tap(&cfg, &exchange, "#", &queue, Duration::from_secs(60))
        .await
        .expect_err("no such exchange");
    assert_eq!(err.reason(), "NotFound", "{err}");
    assert_eq!(
        err.to_string(),
        format!("exchange {exchange} does not exist")
    );
    assert_eq!(queue_count(&queue), None, "no tap queue was made");

    let err = Consumer::open(
        &cfg,
        &Source::Queue {
            queue: queue.clone(),
        },
    )
    .await
    .expect_err("no such queue");
    assert_eq!(err.reason(), "NotFound", "{err}");
    assert_eq!(err.to_string(), format!("queue {queue} does not exist"));
    assert_eq!(queue_count(&queue), None, "the queue was not created");
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_bad_credentials_are_auth_failed_without_the_password() {
    let mut url = url::Url::parse(env().var("AMQP_URL")).unwrap();
    url.set_password(Some("wrong-password-x")).unwrap();
    let bad = BrokerConfig::amqp(url.as_str()).unwrap();
    let source = Source::Queue { queue: "q".into() };
    let err = Consumer::open(&bad, &source)
        .await
        .expect_err("wrong password");
    assert_eq!(err.reason(), "AuthFailed", "{err}");
    let err2 = declare_tap(&bad, "amq.topic", "#", "q", Duration::from_secs(60))
        .await
        .expect_err("wrong password");
    assert_eq!(err2.reason(), "AuthFailed", "{err2}");
    let text = format!("{err} {err:?} {err2} {err2:?}");
    assert!(!text.contains("wrong-password-x"), "{text}");
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_next_batch_dropped_by_timeouts_loses_no_message() {
    let queue = unique("it-consume");
    let (conn, ch) = lapin_channel().await;
    declare_queue(&ch, &queue).await;
    let n = 3000;
    publish(&ch, "", &queue, 1..=n / 2).await;
    let source = Source::Queue {
        queue: queue.clone(),
    };
    let mut c = Consumer::open(&amqp(), &source).await.expect("open");
    // The other half in bursts while the consumer reads.
    let bursts = tokio::spawn({
        let ch = ch.clone();
        let queue = queue.clone();
        async move {
            for start in (n / 2 + 1..=n).step_by(50) {
                publish(&ch, "", &queue, start..=start + 49).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    });
    let (all, dropped) = read_with_cancellations(&mut c, n, 7).await;
    bursts.await.unwrap();
    c.close().await;
    assert!(dropped > 0, "no next_batch was cancelled");
    assert_seq(&all);
    assert_eq!(payload_numbers(&all), (1..=n).collect::<Vec<_>>());
    assert_eq!(queue_count(&queue), Some(0));
    eprintln!("{n} messages read with {dropped} next_batch calls cancelled");
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .ok();
    conn.close(200, "done".into()).await.ok();
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_a_consumer_dropped_without_close_acks_what_it_handed_out() {
    let queue = unique("it-consume");
    let (conn, ch) = lapin_channel().await;
    declare_queue(&ch, &queue).await;
    publish(&ch, "", &queue, 1..=20).await;
    let source = Source::Queue {
        queue: queue.clone(),
    };
    let mut c = Consumer::open(&amqp(), &source).await.expect("open");
    let all = read_exactly(&mut c, 20, Duration::from_secs(30), Duration::ZERO).await;
    assert_eq!(all.len(), 20);
    drop(c);
    // The acks and the close happen in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_count(&queue) != Some(0) {
        assert!(Instant::now() < deadline, "the queue still has messages");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .ok();
    conn.close(200, "done".into()).await.ok();
}
