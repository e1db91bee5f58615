//! RabbitMQ publish with confirms: a devset stage against a raw lapin loop with the same
//! confirm window (devset's default, 1,000 outstanding), message size, headers, `mandatory`
//! and persistent delivery, to the same durable queue, alternating the order.

use crate::{
    Args, Side, cluster, kafka, stage,
    stats::{Row, Unit, thousands},
};
use devset::{
    api::PublishAction,
    brokers::{BrokerConfig, ProducerOptions},
    events::{Limits, Store},
};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
        QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use std::time::{Duration, Instant};

pub async fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let url = Args::env("AMQP_URL")?;
    let n = args.rabbitmq_messages();
    let size = args.rabbitmq_size;
    let window = ProducerOptions::default().max_in_flight;
    let part = cluster::Part::start(args, "rabbitmq", 10).await?;
    let (client, ns, store_url) = (&part.client, part.ns.clone(), part.store.clone());
    let store = Store::open(&store_url, Limits::default()).await?;
    let admin_conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let admin = admin_conn.create_channel().await?;
    let (_, pad) = kafka::payload_template(size);
    let mut secs = [Vec::new(), Vec::new(), Vec::new()];
    for rep in 0..args.reps() {
        let queue = format!("bench-{rep}-{}", std::process::id());
        admin
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut order = [Side::Raw, Side::Engine, Side::Controller];
        order.rotate_left(rep % 3);
        for side in order.into_iter().filter(|s| args.sides.contains(s)) {
            let target = PublishAction {
                queue: Some(queue.clone()),
                ..Default::default()
            };
            let took = match side {
                Side::Raw => raw(&url, &queue, n, &pad, window).await?,
                Side::Engine => {
                    stage::engine(
                        &kafka::action(target, n, size),
                        BrokerConfig::amqp(&url).map_err(anyhow::Error::msg)?,
                    )
                    .await?
                }
                Side::Controller => {
                    let name = format!("r-{rep}");
                    stage::controller(
                        client,
                        &ns,
                        &store,
                        &name,
                        "rabbit",
                        &kafka::action(target, n, size),
                    )
                    .await?
                }
            };
            // The broker's own count: every message is in the queue.
            let q = admin
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            anyhow::ensure!(
                q.message_count() as u64 == n,
                "{side:?}: the queue holds {} messages, not {n}",
                q.message_count()
            );
            admin
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await?;
            eprintln!(
                "[bench] rabbitmq rep {rep} {side:?}: {} msg/s ({:.2} s)",
                thousands((n as f64 / took.as_secs_f64()) as u64),
                took.as_secs_f64()
            );
            secs[side as usize].push(took.as_secs_f64());
        }
        admin
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    part.finish().await?;
    let per_sec = |v: &[f64]| v.iter().map(|s| n as f64 / s).collect::<Vec<_>>();
    let case = format!("{} × {size} B, confirms", thousands(n));
    let [raw_s, engine_s, ctl_s] = &secs;
    Ok(vec![
        Row::new("RabbitMQ publish", &case, "msg/s, engine", Unit::PerSec)
            .values(per_sec(engine_s))
            .raw(per_sec(raw_s))
            .note(format!(
                "window {window} confirms; durable queue, persistent, mandatory"
            )),
        Row::new("RabbitMQ publish", &case, "msg/s, controller", Unit::PerSec)
            .values(per_sec(ctl_s))
            .raw(per_sec(raw_s))
            .note("a WorkflowRun: status writes, event log (SQLite)"),
    ])
}

/// The raw loop: one channel in confirm mode, at most `window` confirms outstanding; the time
/// from connecting to the connection's close after the last confirm (as devset's stage).
async fn raw(url: &str, queue: &str, n: u64, pad: &str, window: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch: Channel = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut in_flight = FuturesUnordered::new();
    let check = |r: lapin::Result<Confirmation>| match r? {
        Confirmation::Ack(None) => Ok(()),
        other => Err(anyhow::anyhow!("not acknowledged: {other:?}")),
    };
    let (mut key, mut payload) = (String::new(), String::new());
    for seq in 1..=n {
        kafka::render_raw(seq, pad, &mut key, &mut payload);
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("source"),
            AMQPValue::LongString(LongString::from("devset")),
        );
        headers.insert(
            ShortString::from("devset.key"),
            AMQPValue::LongString(LongString::from(key.as_str())),
        );
        let confirm = ch
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                payload.as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await?;
        in_flight.push(confirm);
        while in_flight.len() >= window {
            if let Some(r) = in_flight.next().await {
                check(r)?;
            }
        }
        while let Some(Some(r)) = in_flight.next().now_or_never() {
            check(r)?;
        }
    }
    while let Some(r) = in_flight.next().await {
        check(r)?;
    }
    let _ = ch.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(start.elapsed())
}
