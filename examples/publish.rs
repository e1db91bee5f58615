//! Publishes N messages through the run engine (the same code path as the controller) and
//! prints messages per second. Used for the figures in the README; not a test.
//!
//!   source target/testenv/env.sh
//!   cargo run --release --example publish -- kafka 100000
//!   cargo run --release --example publish -- rabbitmq 100000

use devset::{
    api::{PublishAction, Stage, WorkflowSpec},
    brokers::{BrokerConfig, Delivery},
    engine::runner::{self, Observer, RunInput, StageOutcome},
    message::{Message, Target},
};
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};
use tokio_util::sync::CancellationToken;

struct Count(AtomicU64);

impl Observer for Count {
    fn stage_started(&self, _: &str, _: u32) {}
    fn published(&self, _: &str, _: &str, _: &Target, _: &Message, _: &Delivery) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn stage_retrying(&self, _: &str, _: u32, _: &str, _: &str) {}
    fn stage_finished(&self, _: &str, _: &StageOutcome) {}
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let kind = args.get(1).map(String::as_str).unwrap_or("kafka");
    let count: i64 = args
        .get(2)
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(100_000);
    let name = format!("bench-{}", std::process::id());
    let (broker, mut publish) = match kind {
        "kafka" => (
            BrokerConfig::kafka(&std::env::var("KAFKA_BOOTSTRAP")?),
            PublishAction {
                topic: Some(name.clone()),
                ..Default::default()
            },
        ),
        "rabbitmq" => (
            BrokerConfig::amqp(&std::env::var("AMQP_URL")?)?,
            // The default exchange with a routing key nobody binds would be unroutable; the
            // amq.fanout exchange with no queue bound is too, so declare nothing and publish
            // to a queue the example declares below.
            PublishAction {
                queue: Some(name.clone()),
                ..Default::default()
            },
        ),
        other => anyhow::bail!("unknown broker {other}: kafka or rabbitmq"),
    };
    if kind == "rabbitmq" {
        use lapin::{
            Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable,
        };
        let conn =
            Connection::connect(&std::env::var("AMQP_URL")?, ConnectionProperties::default())
                .await?;
        let ch = conn.create_channel().await?;
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    publish.count = count;
    publish.key = Some("order-{{ seq }}".into());
    publish.payload = Some(format!(
        r#"{{"seq": {{{{ seq }}}}, "id": "{{{{ uuid }}}}", "pad": "{}"}}"#,
        "x".repeat(40)
    ));
    let input = RunInput {
        run_name: name.clone(),
        run_namespace: "bench".into(),
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
    };
    let counter = Arc::new(Count(AtomicU64::new(0)));
    let start = Instant::now();
    let outcome = runner::run(input, counter.clone(), CancellationToken::new()).await;
    let secs = start.elapsed().as_secs_f64();
    let n = counter.0.load(Ordering::Relaxed);
    println!(
        "{kind}: {outcome:?}: {n} messages in {secs:.2}s = {:.0} msg/s",
        n as f64 / secs
    );
    Ok(())
}
