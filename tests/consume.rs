//! The consumer of `expect` stages on Kafka (`devset::brokers::Consumer`; the RabbitMQ half is
//! `tests/consume_rabbitmq.rs`) against the real brokers of the test environment. Messages are put on the brokers with
//! clients independent of the code under test (an rdkafka producer and Kafka's console producer,
//! lapin and `amqp-publish`), and what is left on them is checked with `tests/bin/` clients and
//! rdkafka's admin requests.

mod common;

use common::consume::{assert_seq, read_exactly, read_with_cancellations};
use common::{env, repo, unique};
use devset::brokers::{BrokerConfig, BrokerError, Consumer, Received, Source, StartAt};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer as _},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    process::Stdio,
    time::{Duration, Instant},
};

fn kafka() -> BrokerConfig {
    BrokerConfig::kafka(env().var("KAFKA_BOOTSTRAP"))
}

// ---------------------------------------------------------------------------------------------
// Kafka helpers (independent of the code under test)

async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", env().var("KAFKA_BOOTSTRAP"))
        .create()
        .expect("admin client");
    let res = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics");
    for r in res {
        r.expect("the topic is created");
    }
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", env().var("KAFKA_BOOTSTRAP"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("rdkafka producer")
}

/// One message to produce: partition, key, payload, timestamp (ms; None = now).
struct Rec {
    partition: i32,
    key: String,
    payload: String,
    timestamp: Option<i64>,
}

fn rec(partition: i32, i: usize) -> Rec {
    Rec {
        partition,
        key: format!("k-{i}"),
        payload: format!("payload {i}"),
        timestamp: None,
    }
}

/// Produces the records (all in flight at once) with an `i` header; panics unless every one is
/// acknowledged.
async fn produce(topic: &str, recs: &[Rec]) {
    produce_with(&producer(), topic, recs).await;
}

async fn produce_with(producer: &FutureProducer, topic: &str, recs: &[Rec]) {
    let mut pending = Vec::new();
    for r in recs {
        let headers = OwnedHeaders::new().insert(Header {
            key: "i",
            value: Some(r.payload.as_bytes()),
        });
        let mut record = FutureRecord::to(topic)
            .partition(r.partition)
            .key(&r.key)
            .payload(&r.payload)
            .headers(headers);
        if let Some(ts) = r.timestamp {
            record = record.timestamp(ts);
        }
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    for p in pending {
        p.await
            .expect("delivery report")
            .map_err(|(e, _)| e)
            .expect("the broker acknowledges the message");
    }
}

/// Sends lines with Kafka's own console producer (`tests/bin/kafka-produce -k`).
fn console_produce(topic: &str, lines: &[String]) {
    let mut child = env()
        .command(repo().join("tests/bin/kafka-produce"))
        .args(["-k", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kafka-produce runs");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kafka-produce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The groups the broker knows.
fn group_names() -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env().var("KAFKA_BOOTSTRAP"))
        .create()
        .expect("rdkafka client");
    let list = c
        .fetch_group_list(None, Duration::from_secs(10))
        .expect("ListGroups");
    list.groups().iter().map(|g| g.name().to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Kafka

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_from_earliest_reads_every_partition_with_keys_headers_and_offsets() {
    let topic = unique("it-consume");
    create_topic(&topic, 3).await;
    let n = 3000;
    let recs: Vec<Rec> = (1..=n).map(|i| rec((i % 3) as i32, i)).collect();
    produce(&topic, &recs).await;

    let source = Source::Topic {
        topic: topic.clone(),
        from: StartAt::Earliest,
    };
    let mut c = Consumer::open(&kafka(), &source).await.expect("open");
    let all = read_exactly(
        &mut c,
        n,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    c.close().await;
    assert_seq(&all);

    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let mut payloads = BTreeSet::new();
    for r in &all {
        let i: usize = r.msg.payload["payload ".len()..].parse().unwrap();
        assert_eq!(r.msg.key.as_deref(), Some(format!("k-{i}").as_str()));
        assert_eq!(
            r.msg.headers,
            vec![("i".to_string(), r.msg.payload.clone())]
        );
        assert_eq!(r.msg.routing_key, None);
        let partition = r.delivery.partition.expect("a partition");
        assert_eq!(partition, (i % 3) as i32, "message {i}");
        assert_eq!(r.delivery.delivery_tag, None);
        offsets
            .entry(partition)
            .or_default()
            .push(r.delivery.offset.expect("an offset"));
        payloads.insert(i);
    }
    assert_eq!(payloads, (1..=n).collect::<BTreeSet<_>>());
    assert_eq!(offsets.len(), 3);
    for (p, o) in offsets {
        assert_eq!(o, (0..o.len() as i64).collect::<Vec<_>>(), "partition {p}");
    }

    // A consumer dropped without close (a cancelled stage) goes away by itself.
    let mut c = Consumer::open(&kafka(), &source).await.expect("open");
    let mut out = Vec::new();
    let k = c.next_batch(&mut out, 10).await.expect("next_batch");
    assert!(k >= 1 && out[0].msg.seq == 1);
    drop(c);
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_from_latest_reads_only_what_is_produced_after_open() {
    let topic = unique("it-consume");
    create_topic(&topic, 2).await;
    produce(
        &topic,
        &(1..=10).map(|i| rec((i % 2) as i32, i)).collect::<Vec<_>>(),
    )
    .await;

    let source = Source::Topic {
        topic: topic.clone(),
        from: StartAt::Latest,
    };
    let mut c = Consumer::open(&kafka(), &source).await.expect("open");
    // Right after open, with Kafka's own console producer.
    let lines: Vec<String> = (1..=5).map(|i| format!("after-{i}\tlate {i}")).collect();
    console_produce(&topic, &lines);
    let all = read_exactly(
        &mut c,
        5,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    c.close().await;
    assert_seq(&all);
    let got: BTreeSet<(String, String)> = all
        .iter()
        .map(|r| (r.msg.key.clone().unwrap(), r.msg.payload.clone()))
        .collect();
    let want: BTreeSet<(String, String)> = (1..=5)
        .map(|i| (format!("after-{i}"), format!("late {i}")))
        .collect();
    assert_eq!(got, want);
    assert!(all.iter().all(|r| r.msg.headers.is_empty()));
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_from_a_time_starts_at_the_first_message_at_or_after_it() {
    let topic = unique("it-consume");
    create_topic(&topic, 2).await;
    let now = jiff::Timestamp::now();
    let old = now.as_millisecond() - 600_000;
    let recent = now.as_millisecond() - 1_000;
    // Partition 0: three old messages then two recent ones; partition 1: four old ones only.
    let mut recs = Vec::new();
    for i in 1..=3 {
        recs.push(Rec {
            timestamp: Some(old + i as i64),
            ..rec(0, i)
        });
    }
    for i in 4..=5 {
        recs.push(Rec {
            timestamp: Some(recent + i as i64),
            ..rec(0, i)
        });
    }
    for i in 6..=9 {
        recs.push(Rec {
            timestamp: Some(old + i as i64),
            ..rec(1, i)
        });
    }
    produce(&topic, &recs).await;

    let from = jiff::Timestamp::from_millisecond(now.as_millisecond() - 60_000).unwrap();
    let source = Source::Topic {
        topic: topic.clone(),
        from: StartAt::Time(from),
    };
    let mut c = Consumer::open(&kafka(), &source).await.expect("open");
    // Partition 1 had nothing at or after the time: it starts at its end, so this is read.
    produce(&topic, &[rec(1, 10)]).await;
    let all = read_exactly(
        &mut c,
        3,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    c.close().await;
    let got: BTreeSet<(i32, i64, String)> = all
        .iter()
        .map(|r| {
            (
                r.delivery.partition.unwrap(),
                r.delivery.offset.unwrap(),
                r.msg.payload.clone(),
            )
        })
        .collect();
    let want = BTreeSet::from([
        (0, 3, "payload 4".to_string()),
        (0, 4, "payload 5".to_string()),
        (1, 4, "payload 10".to_string()),
    ]);
    assert_eq!(got, want);

    // A time after everything: every partition starts at its end.
    let future = jiff::Timestamp::from_millisecond(now.as_millisecond() + 3_600_000).unwrap();
    let source = Source::Topic {
        topic: topic.clone(),
        from: StartAt::Time(future),
    };
    let mut c = Consumer::open(&kafka(), &source).await.expect("open");
    produce(&topic, &[rec(0, 11)]).await;
    let all = read_exactly(
        &mut c,
        1,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    c.close().await;
    assert_eq!(all[0].msg.payload, "payload 11");
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_consumers_join_no_group_and_commit_no_offsets() {
    let topic = unique("it-consume");
    create_topic(&topic, 2).await;
    produce(
        &topic,
        &(1..=50).map(|i| rec((i % 2) as i32, i)).collect::<Vec<_>>(),
    )
    .await;
    for from in [StartAt::Earliest, StartAt::Latest] {
        let source = Source::Topic {
            topic: topic.clone(),
            from: from.clone(),
        };
        let mut c = Consumer::open(&kafka(), &source).await.expect("open");
        if from == StartAt::Earliest {
            read_exactly(&mut c, 50, Duration::from_secs(60), Duration::ZERO).await;
        }
        // While it is open, too.
        let groups = group_names();
        assert!(
            !groups.iter().any(|g| g.starts_with("devset-expect")),
            "{groups:?}"
        );
        c.close().await;
    }
    // A group with committed offsets is listed (as Empty) after its members left.
    let groups = group_names();
    assert!(
        !groups.iter().any(|g| g.starts_with("devset-expect")),
        "{groups:?}"
    );
    // Kafka's own tool agrees.
    let out = env().client(
        "kafka-java",
        &[
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            env().var("KAFKA_BOOTSTRAP"),
            "--list",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ConsumerGroupCommand: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("devset-expect"), "{stdout}");
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_missing_topic_is_not_found_and_is_not_created() {
    let topic = unique("it-consume-missing");
    let source = Source::Topic {
        topic: topic.clone(),
        from: StartAt::Earliest,
    };
    let err = Consumer::open(&kafka(), &source)
        .await
        .expect_err("no such topic");
    assert_eq!(err.reason(), "NotFound", "{err}");
    assert!(matches!(&err, BrokerError::NotFound(t) if t == &format!("topic {topic}")));
    assert_eq!(err.to_string(), format!("topic {topic} does not exist"));
    let count = env().client("kafka-count", &[&topic]);
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "0");
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_unreachable_broker() {
    let source = Source::Topic {
        topic: "t".into(),
        from: StartAt::Earliest,
    };
    let start = Instant::now();
    let err = Consumer::open(&BrokerConfig::kafka("127.0.0.1:1"), &source)
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.reason(), "Unreachable", "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_read_in_place_gives_what_the_copies_give_and_leaves_what_it_did_not_take() {
    let topic = unique("it-consume");
    create_topic(&topic, 2).await;
    let n = 500;
    let recs: Vec<Rec> = (1..=n).map(|i| rec((i % 2) as i32, i)).collect();
    produce(&topic, &recs).await;
    // Bytes that are not UTF-8 (read as text with U+FFFD, in place and in the copies alike),
    // and a header without a value.
    let raw = producer();
    raw.send(
        FutureRecord::to(&topic)
            .partition(0)
            .key(b"k-\xff".as_slice())
            .payload(b"p-\xfe".as_slice())
            .headers(OwnedHeaders::new().insert(Header::<&[u8]> {
                key: "nothing",
                value: None,
            })),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .expect("the broker acknowledges the message");
    let n = n + 1;
    let source = Source::Topic {
        topic: topic.clone(),
        from: StartAt::Earliest,
    };
    let mut c = Consumer::open(&kafka(), &source).await.expect("open");
    let copies = read_exactly(&mut c, n, Duration::from_secs(60), Duration::ZERO).await;
    c.close().await;

    // In place, stopping after every 7th message: the next call starts with the one after.
    let mut c = Consumer::open(&kafka(), &source).await.expect("open");
    let mut seen: Vec<Received> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < n {
        assert!(
            Instant::now() < deadline,
            "read {} of {n} in place",
            seen.len()
        );
        let before = seen.len();
        let k = tokio::time::timeout(
            Duration::from_secs(10),
            c.next_batch_with(1024, |m| {
                let mut r = Received::default();
                m.copy_to(&mut r);
                assert_eq!(m.seq(), r.msg.seq);
                assert_eq!(m.key().as_deref(), r.msg.key.as_deref());
                assert_eq!(m.payload(), r.msg.payload);
                for (name, value) in &r.msg.headers {
                    assert_eq!(m.header(name).as_deref(), Some(value.as_str()));
                }
                assert_eq!(m.delivery(), r.delivery);
                seen.push(r);
                !seen.len().is_multiple_of(7)
            }),
        )
        .await
        .expect("a batch within 10 s")
        .expect("next_batch_with");
        assert_eq!(k, seen.len() - before);
        assert!(k <= 7, "{k} after a stop");
        assert_eq!(c.read(), seen.len() as u64);
    }
    c.close().await;
    assert_seq(&seen);
    let by_place = |all: &[Received]| -> BTreeMap<(i32, i64), Received> {
        all.iter()
            .map(|r| {
                let mut r = r.clone();
                r.msg.seq = 0;
                (
                    (r.delivery.partition.unwrap(), r.delivery.offset.unwrap()),
                    r,
                )
            })
            .collect()
    };
    assert_eq!(by_place(&seen), by_place(&copies));
    let odd = copies
        .iter()
        .find(|r| r.msg.key.as_deref() == Some("k-\u{fffd}"))
        .expect("the message with bytes that are not UTF-8");
    assert_eq!(odd.msg.payload, "p-\u{fffd}");
    assert_eq!(
        odd.msg.headers,
        vec![("nothing".to_string(), String::new())]
    );
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_next_batch_dropped_by_timeouts_loses_no_message() {
    let topic = unique("it-consume");
    create_topic(&topic, 3).await;
    let n = 5000;
    // Half is there before, half comes in bursts while the consumer reads, so that calls are
    // dropped both while messages are there and while they wait for more.
    produce(
        &topic,
        &(1..=n / 2)
            .map(|i| rec((i % 3) as i32, i))
            .collect::<Vec<_>>(),
    )
    .await;
    let source = Source::Topic {
        topic: topic.clone(),
        from: StartAt::Earliest,
    };
    let mut c = Consumer::open(&kafka(), &source).await.expect("open");
    let bursts = tokio::spawn({
        let topic = topic.clone();
        async move {
            let producer = producer();
            for start in (n / 2 + 1..=n).step_by(50) {
                let recs: Vec<Rec> = (start..start + 50)
                    .map(|i| rec((i % 3) as i32, i))
                    .collect();
                produce_with(&producer, &topic, &recs).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    });
    let (all, dropped) = read_with_cancellations(&mut c, n, 7).await;
    bursts.await.unwrap();
    c.close().await;
    assert!(dropped > 0, "no next_batch was cancelled");
    assert_seq(&all);
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &all {
        per_partition
            .entry(r.delivery.partition.unwrap())
            .or_default()
            .push(r.delivery.offset.unwrap());
    }
    for (p, o) in per_partition {
        assert_eq!(o, (0..o.len() as i64).collect::<Vec<_>>(), "partition {p}");
    }
    let payloads: BTreeSet<String> = all.iter().map(|r| r.msg.payload.clone()).collect();
    assert_eq!(payloads.len(), n);
    eprintln!("{n} messages read with {dropped} next_batch calls cancelled");
}
