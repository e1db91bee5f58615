//! The run engine on the real brokers, without Kubernetes: more messages than the clients'
//! in-flight windows, checked with independent clients.

mod common;

use common::{env, unique};
use devset::{
    api::{PublishAction, Stage, WorkflowSpec},
    brokers::{BrokerConfig, Delivery},
    engine::runner::{self, Observer, RunInput, RunOutcome, StageOutcome},
    message::{Message, Target},
};
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Count(AtomicU64);

impl Observer for Count {
    fn stage_started(&self, _: &str, _: u32) {}
    fn published(&self, _: &str, _: &str, _: &Target, _: &Message, _: &Delivery) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn stage_retrying(&self, _: &str, _: u32, _: &str, _: &str) {}
    fn stage_finished(&self, _: &str, _: &StageOutcome) {}
}

fn input(broker: BrokerConfig, publish: PublishAction) -> RunInput {
    RunInput {
        run_name: "engine-it".into(),
        run_namespace: "none".into(),
        run_uid: String::new(),
        spec: WorkflowSpec {
            stages: vec![Stage {
                name: "publish".into(),
                publish: Some(publish),
                ..Default::default()
            }],
            ..Default::default()
        },
        params: BTreeMap::new(),
        resume: BTreeMap::new(),
        brokers: BTreeMap::from([("b".to_string(), broker)]),
        default_connector: "b".into(),
        started_at: jiff::Timestamp::now(),
        approvals: std::sync::Arc::new(devset::engine::approval::NoApprovals),
        pause: tokio_util::sync::CancellationToken::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn rabbitmq_stage_larger_than_the_confirm_window_completes() {
    use lapin::{
        Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable,
    };
    let queue = unique("engine");
    let conn = Connection::connect(env().var("AMQP_URL"), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let publish = PublishAction {
        queue: Some(queue.clone()),
        count: 5_000.into(),
        payload: Some("m {{ seq }}".into()),
        ..Default::default()
    };
    let count = Arc::new(Count::default());
    let broker = BrokerConfig::amqp(env().var("AMQP_URL")).unwrap();
    let run = runner::run(
        input(broker, publish),
        count.clone(),
        CancellationToken::new(),
    );
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the stage finishes");
    assert_eq!(outcome, RunOutcome::Completed);
    assert_eq!(count.0.load(Ordering::Relaxed), 5_000);
    let out = env().client("rabbitmq-count", &[&queue]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5000");
    conn.close(200, "ok".into()).await.ok();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn kafka_stage_paced_by_rate_and_stopped_halts_at_a_message_boundary() {
    let topic = unique("engine");
    let publish = PublishAction {
        topic: Some(topic.clone()),
        count: 100_000.into(),
        rate_per_second: Some(500.0.into()),
        ..Default::default()
    };
    let count = Arc::new(Count::default());
    let stop = CancellationToken::new();
    let broker = BrokerConfig::kafka(env().var("KAFKA_BOOTSTRAP"));
    let run = tokio::spawn(runner::run(
        input(broker, publish),
        count.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stop.cancel();
    let outcome = run.await.unwrap();
    assert_eq!(outcome, RunOutcome::Stopped);
    let n = count.0.load(Ordering::Relaxed);
    // 500/s for about 2 s (plus the producer's connect time on top).
    assert!((300..=1_200).contains(&n), "published {n}");
    let out = env().client("kafka-count", &[&topic]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), n.to_string());
}
