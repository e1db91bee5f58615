//! The test environment's brokers work with the clients the operator uses: a message produced
//! with rdkafka and one published with lapin are each read back by an independent client
//! (Kafka's own console consumer, and `amqp-get` from amqp-tools).

mod common;

use common::{env, unique};
use std::time::Duration;

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_message_produced_with_rdkafka_is_read_back_by_the_console_consumer() {
    use rdkafka::{
        ClientConfig,
        producer::{FutureProducer, FutureRecord},
    };
    let topic = unique("it-env");
    let payload = format!("hello from {topic}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env().var("KAFKA_BOOTSTRAP"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("rdkafka producer");
    let delivery = producer
        .send(
            FutureRecord::to(&topic).key("k1").payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the broker acknowledges the message");
    assert!(delivery.partition >= 0 && delivery.offset >= 0);

    let out = env().client("kafka-consume", &[&topic, "1", "60"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka-consume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), payload);

    let count = env().client("kafka-count", &[&topic]);
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "1");
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_message_published_with_lapin_is_read_back_by_amqp_get() {
    use lapin::{BasicProperties, Connection, ConnectionProperties, options::*, types::FieldTable};
    let queue = unique("it-env");
    let payload = format!("hello from {queue}");
    let conn = Connection::connect(env().var("AMQP_URL"), ConnectionProperties::default())
        .await
        .expect("AMQP connection");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue_declare");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm_select");
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("basic_publish")
        .await
        .expect("publisher confirm");
    assert!(confirm.is_ack(), "the broker confirms the message");
    assert!(
        confirm.take_message().is_none(),
        "the message was routed to the queue"
    );

    let count = env().client("rabbitmq-count", &[&queue]);
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        "1",
        "{count:?}"
    );
    let out = env().client("amqp-get", &[&queue, "1"]);
    assert!(
        out.status.success(),
        "amqp-get failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), payload);

    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue_delete");
    conn.close(200, "done".into()).await.ok();
}
