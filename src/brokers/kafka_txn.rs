//! The Kafka transactional producer of a publish stage with `delivery: ExactlyOnce`.
//!
//! One producer per run stage, with a stable `transactional.id`: a new producer of the same
//! stage (a restarted controller, a new leader) calls `init_transactions`, which bumps the
//! producer epoch, aborts the old one's open transaction and fences it (its next send or commit
//! fails with `ProducerFenced`). Every transaction carries, besides its messages, one progress
//! record (key: the transactional id, value: the count of messages committed) to a compacted
//! topic, [`PROGRESS_TOPIC`]; a resumed stage reads it back with a `read_committed` consumer.

use super::kafka::{
    Context, classify_delivery_error, classify_request_error, client_config, fetch_brokers,
    is_fenced_code, send,
};
use super::{BrokerError, KafkaConfig, PendingDelivery};
use crate::message::Message;
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    consumer::{BaseConsumer, Consumer as _},
    error::{KafkaError, RDKafkaErrorCode},
    message::Message as _,
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// The compacted topic that holds the progress of `ExactlyOnce` stages (created when missing);
/// `DEVSET_PROGRESS_TOPIC` names another.
pub const PROGRESS_TOPIC: &str = "devset-progress";

/// Partitions of the progress topic when devset creates it: a stage reads only its own, so an
/// open transaction of another stage holds it up less often.
const PROGRESS_PARTITIONS: i32 = 8;

/// The progress topic's name: `DEVSET_PROGRESS_TOPIC`, else [`PROGRESS_TOPIC`].
pub fn progress_topic() -> String {
    std::env::var("DEVSET_PROGRESS_TOPIC")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| PROGRESS_TOPIC.to_string())
}

/// Why a transaction did not commit.
#[derive(Debug)]
pub struct TxnFailure {
    /// What went wrong; [`BrokerError::Fenced`] when a newer producer took over.
    pub error: BrokerError,
    /// The transaction was aborted: none of its messages is visible to `read_committed`
    /// consumers, and the producer can begin another one.
    pub aborted: bool,
}

/// See [`super::TransactionalProducer`].
pub(super) struct TxnProducer {
    producer: FutureProducer<Context>,
    ctx: Context,
    id: String,
    progress_topic: String,
    progress_partition: i32,
    timeout: Duration,
    topic: Option<Arc<str>>,
}

impl TxnProducer {
    /// Connects, fences every older producer of `id` and reads the progress it committed.
    pub(super) async fn connect(
        cfg: &KafkaConfig,
        id: &str,
        progress_topic: &str,
        timeout: Duration,
    ) -> Result<(TxnProducer, Option<u64>), BrokerError> {
        let ctx = Context::new(cfg);
        let ms = timeout
            .as_millis()
            .clamp(1000, i32::MAX as u128)
            .to_string();
        let producer: FutureProducer<Context> = client_config(cfg)
            .set("transactional.id", id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", &ms)
            .set("transaction.timeout.ms", &ms)
            .create_with_context(ctx.clone())
            .map_err(|e| BrokerError::Other(ctx.scrub(format!("Kafka producer: {e}"))))?;
        let check = timeout.min(Duration::from_secs(10));
        fetch_brokers(producer.clone(), check, &ctx).await?;
        let partitions = ensure_progress_topic(cfg, &producer, &ctx, progress_topic, check).await?;
        let p = producer.clone();
        blocking(move || retry_retriable(timeout, || p.init_transactions(timeout)))
            .await
            .map_err(|e| txn_error(e, &ctx, "init_transactions").error)?;
        let progress_partition = partition_of(id, partitions);
        let (c, t, k) = (cfg.clone(), progress_topic.to_string(), id.to_string());
        let ctx2 = ctx.clone();
        let committed = tokio::task::spawn_blocking(move || {
            read_progress(&c, &ctx2, &t, progress_partition, &k, timeout)
        })
        .await
        .map_err(|e| BrokerError::Other(format!("reading the progress: {e}")))??;
        Ok((
            TxnProducer {
                producer,
                ctx,
                id: id.to_string(),
                progress_topic: progress_topic.to_string(),
                progress_partition,
                timeout,
                topic: None,
            },
            committed,
        ))
    }

    pub(super) fn begin(&self) -> Result<(), TxnFailure> {
        self.producer
            .begin_transaction()
            .map_err(|e| self.or_fenced(txn_error(e, &self.ctx, "begin_transaction")))
    }

    pub(super) fn fenced_or(&self, error: BrokerError) -> BrokerError {
        self.or_fenced(TxnFailure {
            error,
            aborted: false,
        })
        .error
    }

    /// `f`, its error made [`BrokerError::Fenced`] when the producer's fatal error is a
    /// fencing (librdkafka reports most errors after it as a plain `_FATAL`).
    fn or_fenced(&self, mut f: TxnFailure) -> TxnFailure {
        if let Some((code, reason)) = self.producer.client().fatal_error()
            && (is_fenced_code(code) || reason.contains("fenced"))
        {
            f.error = BrokerError::Fenced(self.ctx.scrub(reason));
        }
        f
    }

    pub(super) async fn send(
        &mut self,
        topic: &str,
        msg: &Message,
    ) -> Result<PendingDelivery, BrokerError> {
        let name = match &self.topic {
            Some(t) if **t == *topic => t.clone(),
            _ => self.topic.insert(Arc::from(topic)).clone(),
        };
        send(&self.producer, &self.ctx, name, msg)
            .await
            .map_err(|error| {
                self.or_fenced(TxnFailure {
                    error,
                    aborted: false,
                })
                .error
            })
    }

    /// Adds the progress record `published` to the transaction and commits it. An abortable
    /// failure is aborted here.
    pub(super) async fn commit(&self, published: u64) -> Result<(), TxnFailure> {
        self.commit_progress(published)
            .await
            .map_err(|f| self.or_fenced(f))
    }

    async fn commit_progress(&self, published: u64) -> Result<(), TxnFailure> {
        let value = published.to_string();
        let record = FutureRecord::to(&self.progress_topic)
            .partition(self.progress_partition)
            .key(self.id.as_bytes())
            .payload(value.as_bytes());
        // Wait for its delivery here: rdkafka's commit_transaction flushes first, and its flush
        // sleeps 100 ms whenever anything is still in flight.
        let delivered = match self.producer.send_result(record) {
            Ok(future) => match future.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_) => Err(KafkaError::Canceled),
            },
            Err((e, _)) => Err(e),
        };
        if let Err(e) = delivered {
            let error = classify_delivery_error(e, &self.ctx, &self.progress_topic);
            return Err(self.abort_after(error).await);
        }
        let (p, timeout) = (self.producer.clone(), self.timeout);
        match blocking(move || retry_retriable(timeout, || p.commit_transaction(timeout))).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let failure = txn_error(e, &self.ctx, "commit_transaction");
                if failure.aborted {
                    Err(self.abort_after(failure.error).await)
                } else {
                    Err(failure)
                }
            }
        }
    }

    /// Aborts the open transaction after `error`; the failure says whether that worked.
    async fn abort_after(&self, error: BrokerError) -> TxnFailure {
        let (p, timeout) = (self.producer.clone(), self.timeout);
        match blocking(move || retry_retriable(timeout, || p.abort_transaction(timeout))).await {
            Ok(()) => TxnFailure {
                error,
                aborted: true,
            },
            Err(e) => TxnFailure {
                error: match txn_error(e, &self.ctx, "abort_transaction").error {
                    fenced @ BrokerError::Fenced(_) => fenced,
                    _ => error,
                },
                aborted: false,
            },
        }
    }

    /// Aborts the open transaction (a stop before its commit).
    pub(super) async fn abort(&self) -> Result<(), TxnFailure> {
        let (p, timeout) = (self.producer.clone(), self.timeout);
        blocking(move || retry_retriable(timeout, || p.abort_transaction(timeout)))
            .await
            .map_err(|e| self.or_fenced(txn_error(e, &self.ctx, "abort_transaction")))
    }
}

/// Runs a blocking rdkafka call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// Calls `f` again while it fails with a retriable error, for at most `within`.
fn retry_retriable(
    within: Duration,
    mut f: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Classifies the error of a transactional call.
fn txn_error(e: KafkaError, ctx: &Context, what: &str) -> TxnFailure {
    let (fenced, abortable) = match &e {
        KafkaError::Transaction(t) => (
            is_fenced_code(t.code()) || (t.is_fatal() && ctx_fenced(ctx)),
            t.txn_requires_abort(),
        ),
        other => (
            other.rdkafka_error_code().is_some_and(is_fenced_code),
            false,
        ),
    };
    if fenced {
        return TxnFailure {
            error: BrokerError::Fenced(ctx.scrub(format!("{what}: {e}"))),
            aborted: false,
        };
    }
    TxnFailure {
        error: classify_request_error(e, ctx, what),
        aborted: abortable,
    }
}

/// Whether the client's last error was a fencing (librdkafka raises it as the fatal error).
fn ctx_fenced(ctx: &Context) -> bool {
    ctx.last_code().is_some_and(is_fenced_code)
}

/// The partition of the progress topic that holds `id`'s records (FNV-1a of the id).
fn partition_of(id: &str, partitions: i32) -> i32 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % partitions.max(1) as u64) as i32
}

/// Creates the progress topic (compacted) when it is missing; returns its partition count.
async fn ensure_progress_topic(
    cfg: &KafkaConfig,
    producer: &FutureProducer<Context>,
    ctx: &Context,
    topic: &str,
    timeout: Duration,
) -> Result<i32, BrokerError> {
    if let Some(n) = partitions(producer, ctx, topic, timeout).await? {
        return Ok(n);
    }
    let admin: AdminClient<Context> = client_config(cfg)
        .create_with_context(ctx.clone())
        .map_err(|e| BrokerError::Other(ctx.scrub(format!("Kafka admin client: {e}"))))?;
    let new = NewTopic::new(topic, PROGRESS_PARTITIONS, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| classify_request_error(e, ctx, &format!("creating topic {topic}")))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(BrokerError::Other(format!(
                    "cannot create the progress topic {topic}: {code}"
                )));
            }
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = partitions(producer, ctx, topic, timeout).await? {
            return Ok(n);
        }
        if Instant::now() > deadline {
            return Err(BrokerError::NotFound(format!("topic {topic}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The partition count of `topic`, None when it does not exist.
async fn partitions(
    producer: &FutureProducer<Context>,
    ctx: &Context,
    topic: &str,
    timeout: Duration,
) -> Result<Option<i32>, BrokerError> {
    let (p, t) = (producer.clone(), topic.to_string());
    let md = blocking(move || {
        let md = p.client().fetch_metadata(Some(&t), timeout)?;
        Ok(md
            .topics()
            .first()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32))
    })
    .await;
    md.map_err(|e| classify_request_error(e, ctx, &format!("metadata of topic {topic}")))
}

/// Reads `partition` of the progress topic to its end with a `read_committed` consumer; the
/// last value of `key` is the progress committed.
fn read_progress(
    cfg: &KafkaConfig,
    ctx: &Context,
    topic: &str,
    partition: i32,
    key: &str,
    timeout: Duration,
) -> Result<Option<u64>, BrokerError> {
    let what = format!("reading the progress from topic {topic}");
    let consumer: BaseConsumer<Context> = consumer_config(cfg)
        .create_with_context(ctx.clone())
        .map_err(|e| BrokerError::Other(ctx.scrub(format!("Kafka consumer: {e}"))))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(|e| classify_request_error(e, ctx, &what))?;
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(|e| BrokerError::Other(format!("{what}: {e}")))?;
    consumer
        .assign(&tpl)
        .map_err(|e| classify_request_error(e, ctx, &what))?;
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let position = |c: &BaseConsumer<Context>| -> i64 {
        c.position()
            .ok()
            .and_then(|tpl| {
                tpl.find_partition(topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
            })
            .unwrap_or(-1)
    };
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if m.key() == Some(key.as_bytes()) {
                    last = m
                        .payload()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                }
                if m.offset() + 1 >= high {
                    return Ok(last);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {
                if position(&consumer) >= high {
                    return Ok(last);
                }
            }
            Some(Err(e)) => return Err(classify_request_error(e, ctx, &what)),
        }
        if Instant::now() > deadline {
            return Err(BrokerError::Timeout(format!(
                "{what}: partition {partition} not read to offset {high} within {}s (a transaction of another stage still open?)",
                timeout.as_secs()
            )));
        }
    }
}

fn consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("client.id", "devset-progress")
        .set(
            "group.id",
            format!("devset-progress-{}", uuid::Uuid::new_v4()),
        )
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_keeps_its_partition() {
        let a = partition_of("devset/ns/run/uid/send", 8);
        assert_eq!(a, partition_of("devset/ns/run/uid/send", 8));
        assert!((0..8).contains(&a));
        assert_eq!(partition_of("x", 1), 0);
        let spread: std::collections::BTreeSet<_> =
            (0..64).map(|i| partition_of(&format!("s{i}"), 8)).collect();
        assert!(spread.len() > 4, "{spread:?}");
    }
}
