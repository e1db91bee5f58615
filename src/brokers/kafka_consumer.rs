//! The Kafka side of [`super::Consumer`]: an rdkafka `BaseConsumer` assigned to every partition
//! of a topic at resolved offsets. `next_batch_with` hands what librdkafka has prefetched to its
//! caller with non-blocking polls, in place (nothing is copied unless the caller keeps it), and
//! waits (for librdkafka's "queue became non-empty" callback) only when nothing is there: one
//! task wakeup per batch at most, no thread hop, and each message's memory is allocated and freed
//! on the same thread.
//!
//! The consumer has a throwaway `group.id` (librdkafka needs one to assign partitions) but never
//! joins the group and never commits or stores offsets.

use super::{
    BrokerError, KafkaConfig,
    consumer::{Incoming, Received, StartAt},
    kafka::{Context, classify_request_error, client_config, is_auth_code},
};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _, ConsumerContext},
    error::{KafkaError, RDKafkaErrorCode},
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::Notify;

impl ConsumerContext for Context {}

/// How long the requests of `open` (metadata, offsets) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `next_batch` waits for the non-empty callback before it polls again anyway (a
/// backstop: the callback is what wakes it).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long `close` waits for librdkafka to close the consumer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rdkafka settings of an expect consumer: the producer's connection and security settings,
/// no commits, and fetch settings for throughput.
pub(super) fn consumer_config(cfg: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("client.id", "devset-expect")
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        // A resolved offset that is out of range (the topic was recreated, retention removed
        // it) starts over at the beginning rather than skipping messages.
        .set("auto.offset.reset", "earliest")
        // Answer a fetch as soon as there is a byte, and keep up to 16 MiB prefetched per
        // consumer (librdkafka's default is 64 MiB; many stages may read at once).
        .set("fetch.min.bytes", "1")
        .set("queued.max.messages.kbytes", "16384")
        // When the prefetch queue is full librdkafka pauses fetching for this long; its default
        // (1 s) stalls a consumer that is merely a little slower than the broker, so that it
        // reads at a fraction of its speed (measured: 170k instead of 1.2M messages/s).
        .set("fetch.queue.backoff.ms", "10");
    c
}

/// A consumer group id no one else has: `devset-expect-<uuid>`.
fn throwaway_group_id() -> String {
    format!("devset-expect-{}", uuid::Uuid::new_v4())
}

/// See [`super::Consumer`].
pub(super) struct KafkaConsumer {
    /// `None` once closed.
    consumer: Option<BaseConsumer<Context>>,
    /// Notified by librdkafka (from its threads) when the consumer queue becomes non-empty.
    /// `Notify` keeps a permit when no one waits, so a notification between a poll that found
    /// nothing and the wait is not lost.
    nonempty: Arc<Notify>,
    /// The `seq` of the last message converted.
    seq: u64,
    /// A fatal error met after some messages of a batch: returned by the next call.
    pending_error: Option<BrokerError>,
    topic: String,
}

/// See [`super::end_offsets`].
pub(super) async fn topic_end_offsets(
    cfg: &KafkaConfig,
    topic: &str,
) -> Result<Vec<(i32, i64)>, BrokerError> {
    let ctx = Context::new(cfg);
    let consumer: BaseConsumer<Context> = consumer_config(cfg, &throwaway_group_id())
        .create_with_context(ctx.clone())
        .map_err(|e| BrokerError::Other(ctx.scrub(format!("Kafka consumer: {e}"))))?;
    let topic_name = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let partitions = partitions(&consumer, &ctx, &topic_name)?;
        end_offsets(&consumer, &ctx, &topic_name, &partitions)
    })
    .await
    .map_err(|e| BrokerError::Other(format!("reading the end offsets of topic {topic}: {e}")))?
}

impl KafkaConsumer {
    pub(super) async fn open(
        cfg: &KafkaConfig,
        topic: &str,
        from: StartAt,
    ) -> Result<KafkaConsumer, BrokerError> {
        let ctx = Context::new(cfg);
        let consumer: BaseConsumer<Context> = consumer_config(cfg, &throwaway_group_id())
            .create_with_context(ctx.clone())
            .map_err(|e| BrokerError::Other(ctx.scrub(format!("Kafka consumer: {e}"))))?;
        let topic_name = topic.to_string();
        let consumer = tokio::task::spawn_blocking(move || {
            position(&consumer, &ctx, &topic_name, from)?;
            Ok::<_, BrokerError>(consumer)
        })
        .await
        .map_err(|e| BrokerError::Other(format!("opening a consumer of topic {topic}: {e}")))??;
        Ok(KafkaConsumer::new(consumer, topic))
    }

    fn new(mut consumer: BaseConsumer<Context>, topic: &str) -> KafkaConsumer {
        let nonempty = Arc::new(Notify::new());
        let notify = nonempty.clone();
        consumer.set_nonempty_callback(move || notify.notify_one());
        KafkaConsumer {
            consumer: Some(consumer),
            nonempty,
            seq: 0,
            pending_error: None,
            topic: topic.to_string(),
        }
    }

    pub(super) async fn next_batch(
        &mut self,
        out: &mut Vec<Received>,
        max: usize,
    ) -> Result<usize, BrokerError> {
        self.next_batch_with(max, &mut |m: &Incoming<'_>| {
            let mut r = Received::default();
            m.copy_to(&mut r);
            out.push(r);
            true
        })
        .await
    }

    /// See [`super::Consumer::next_batch_with`].
    pub(super) async fn next_batch_with<F>(
        &mut self,
        max: usize,
        f: &mut F,
    ) -> Result<usize, BrokerError>
    where
        F: FnMut(&Incoming<'_>) -> bool,
    {
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        // Cancel-safe: the only await is the wait below, which holds no message; `drain` takes
        // messages and hands them to `f` without awaiting.
        loop {
            let n = self.drain(max, f)?;
            if n > 0 {
                return Ok(n);
            }
            tokio::select! {
                _ = self.nonempty.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    /// Hands up to `max` messages that are already there to `f`, without blocking, until `f`
    /// says it has enough.
    fn drain<F>(&mut self, max: usize, f: &mut F) -> Result<usize, BrokerError>
    where
        F: FnMut(&Incoming<'_>) -> bool,
    {
        let Some(consumer) = &self.consumer else {
            return Err(BrokerError::Other("the consumer is closed".into()));
        };
        let mut n = 0;
        while n < max {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    self.seq += 1;
                    n += 1;
                    if !f(&Incoming::kafka(&m, self.seq)) {
                        break;
                    }
                }
                Some(Err(e)) => {
                    if let Some(e) = fatal(e, &self.topic, consumer) {
                        if n == 0 {
                            return Err(e);
                        }
                        self.pending_error = Some(e);
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(n)
    }

    pub(super) async fn close(mut self) {
        if let Some(c) = self.consumer.take() {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, tokio::task::spawn_blocking(move || drop(c)))
                    .await;
        }
    }
}

impl Drop for KafkaConsumer {
    /// Dropped without `close` (the stage was cancelled): librdkafka's close blocks briefly, so
    /// it happens on a blocking thread.
    fn drop(&mut self) {
        if let Some(c) = self.consumer.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn_blocking(move || drop(c));
        }
    }
}

/// Resolves the start offset of every partition of `topic` and assigns them.
fn position(
    consumer: &BaseConsumer<Context>,
    ctx: &Context,
    topic: &str,
    from: StartAt,
) -> Result<(), BrokerError> {
    let partitions = partitions(consumer, ctx, topic)?;
    let mut assignment = TopicPartitionList::with_capacity(partitions.len());
    match from {
        StartAt::Offsets(known) => {
            for &p in &partitions {
                let start = known
                    .iter()
                    .find(|(q, _)| *q == p)
                    .map_or(Offset::Beginning, |(_, o)| Offset::Offset(*o));
                add(&mut assignment, topic, p, start)?;
            }
        }
        StartAt::Earliest => {
            for &p in &partitions {
                add(&mut assignment, topic, p, Offset::Beginning)?;
            }
        }
        StartAt::Latest => {
            for (p, end) in end_offsets(consumer, ctx, topic, &partitions)? {
                add(&mut assignment, topic, p, Offset::Offset(end))?;
            }
        }
        StartAt::Time(t) => {
            // The ends first: a partition with nothing at or after `t` starts where it ended
            // before the lookup, so that nothing produced meanwhile is missed.
            let ends = end_offsets(consumer, ctx, topic, &partitions)?;
            let by_time = offsets_for(
                consumer,
                ctx,
                topic,
                &partitions,
                Offset::Offset(t.as_millisecond()),
            )?;
            for (p, offset) in start_offsets(&ends, &by_time) {
                add(&mut assignment, topic, p, offset)?;
            }
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|e| classify_request_error(e, ctx, &format!("assigning topic {topic}")))
}

fn add(
    tpl: &mut TopicPartitionList,
    topic: &str,
    partition: i32,
    offset: Offset,
) -> Result<(), BrokerError> {
    tpl.add_partition_offset(topic, partition, offset)
        .map_err(|e| BrokerError::Other(format!("topic {topic} partition {partition}: {e}")))
}

/// Where each partition starts for [`StartAt::Time`]: the offset found by time, or the end
/// offset where none was found (`Offset::End` from the lookup).
fn start_offsets(ends: &[(i32, i64)], by_time: &[(i32, Offset)]) -> Vec<(i32, Offset)> {
    ends.iter()
        .map(|&(p, end)| {
            let found = by_time.iter().find(|(q, _)| *q == p).map(|(_, o)| *o);
            match found {
                Some(Offset::Offset(o)) if o >= 0 => (p, Offset::Offset(o)),
                _ => (p, Offset::Offset(end)),
            }
        })
        .collect()
}

/// The partition ids of `topic`; a topic that does not exist is [`BrokerError::NotFound`].
fn partitions(
    consumer: &BaseConsumer<Context>,
    ctx: &Context,
    topic: &str,
) -> Result<Vec<i32>, BrokerError> {
    let deadline = Instant::now() + OPEN_TIMEOUT;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), OPEN_TIMEOUT)
            .map_err(|e| classify_request_error(e, ctx, &format!("metadata of topic {topic}")))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(BrokerError::NotFound(format!("topic {topic}")));
        };
        let code = t.error().map(RDKafkaErrorCode::from);
        match code {
            None if !t.partitions().is_empty() => {
                return Ok(t.partitions().iter().map(|p| p.id()).collect());
            }
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                return Err(BrokerError::NotFound(format!("topic {topic}")));
            }
            Some(c) if is_auth_code(c) => {
                return Err(BrokerError::AuthFailed(format!("topic {topic}: {c}")));
            }
            // A topic just created may have no leader yet: ask again for a while.
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => {
                return Err(BrokerError::Other(format!(
                    "topic {topic} has no partitions"
                )));
            }
            Some(c) => {
                return Err(BrokerError::Other(format!(
                    "metadata of topic {topic}: {c}"
                )));
            }
        }
    }
}

/// The end offset of each partition (the last stable offset under `read_committed`), with one
/// `ListOffsets` request.
fn end_offsets(
    consumer: &BaseConsumer<Context>,
    ctx: &Context,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<(i32, i64)>, BrokerError> {
    offsets_for(consumer, ctx, topic, partitions, Offset::End)?
        .into_iter()
        .map(|(p, o)| match o {
            Offset::Offset(o) => Ok((p, o)),
            other => Err(BrokerError::Other(format!(
                "topic {topic} partition {p}: no end offset ({other:?})"
            ))),
        })
        .collect()
}

/// `ListOffsets` for every partition: `query` is a timestamp (`Offset::Offset(ms)`) or
/// `Offset::End` for the end offsets.
fn offsets_for(
    consumer: &BaseConsumer<Context>,
    ctx: &Context,
    topic: &str,
    partitions: &[i32],
    query: Offset,
) -> Result<Vec<(i32, Offset)>, BrokerError> {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for &p in partitions {
        add(&mut tpl, topic, p, query)?;
    }
    let what = match query {
        Offset::End => format!("end offsets of topic {topic}"),
        _ => format!("offsets by time of topic {topic}"),
    };
    let found = consumer
        .offsets_for_times(tpl, OPEN_TIMEOUT)
        .map_err(|e| classify_request_error(e, ctx, &what))?;
    found
        .elements()
        .iter()
        .map(|e| match e.error() {
            Ok(()) => Ok((e.partition(), e.offset())),
            Err(err) => Err(classify_request_error(
                err,
                ctx,
                &format!("{what}, partition {}", e.partition()),
            )),
        })
        .collect()
}

/// Whether a consume error ends the consumer (an error to report) or is one librdkafka
/// recovers from by itself (logged).
fn fatal(e: KafkaError, topic: &str, consumer: &BaseConsumer<Context>) -> Option<BrokerError> {
    let code = e.rdkafka_error_code();
    let ctx = consumer.context();
    match (&e, code) {
        (_, Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)) => {
            Some(BrokerError::NotFound(format!("topic {topic}")))
        }
        (_, Some(c)) if is_auth_code(c) => Some(BrokerError::AuthFailed(
            ctx.scrub(format!("reading topic {topic}: {e}")),
        )),
        (KafkaError::MessageConsumptionFatal(_), _) => Some(BrokerError::Other(
            ctx.scrub(format!("reading topic {topic}: {e}")),
        )),
        _ => {
            tracing::debug!(topic, error = %ctx.scrub(e.to_string()), "Kafka consumer error; retrying");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{KafkaSecurityProtocol, SaslMechanism};
    use crate::brokers::{SaslCredentials, TlsMaterial};

    #[test]
    fn the_consumer_shares_the_producer_security_settings_and_never_commits() {
        let cfg = KafkaConfig {
            bootstrap_servers: "k:9093".into(),
            security_protocol: KafkaSecurityProtocol::SaslSsl,
            sasl: Some(SaslCredentials {
                mechanism: SaslMechanism::ScramSha256,
                username: "u".into(),
                password: "p".into(),
            }),
            tls: TlsMaterial {
                ca_pem: Some("CA".into()),
                insecure_skip_verify: true,
                ..Default::default()
            },
        };
        let group = throwaway_group_id();
        assert!(group.starts_with("devset-expect-"), "{group}");
        assert_ne!(group, throwaway_group_id());
        let c = consumer_config(&cfg, &group);
        let producer = client_config(&cfg);
        // (config_map masks the secrets: compare with get.)
        for k in producer.config_map().keys() {
            if *k != "client.id" {
                assert_eq!(c.get(k), producer.get(k), "{k}");
            }
        }
        for (k, v) in [
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("fetch.queue.backoff.ms", "10"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("ssl.ca.pem", "CA"),
        ] {
            assert_eq!(c.get(k), Some(v), "{k}");
        }
    }

    #[test]
    fn partitions_without_a_message_at_the_time_start_at_their_end() {
        let ends = [(0, 10), (1, 20), (2, 30)];
        let by_time = [
            (0, Offset::Offset(4)),
            (1, Offset::End),
            (2, Offset::Offset(30)),
        ];
        assert_eq!(
            start_offsets(&ends, &by_time),
            vec![
                (0, Offset::Offset(4)),
                (1, Offset::Offset(20)),
                (2, Offset::Offset(30))
            ]
        );
    }
}
