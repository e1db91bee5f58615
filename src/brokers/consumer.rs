//! The consumer side of `expect` stages: read a Kafka topic (every partition, assigned, never
//! committing), consume a RabbitMQ queue, or tap a RabbitMQ exchange through a queue of its own.
//!
//! Like the producers, nothing here imports kube. The client settings (TLS, SASL, credentials)
//! are the producers' own (`kafka::client_config`, `rabbitmq::open`).

use super::{BrokerConfig, BrokerError, Delivery, kafka_consumer, rabbitmq_consumer};
use crate::message::Message;
use std::{fmt, time::Duration};

/// Where a Kafka consumer starts reading each partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// These offsets, by partition (from [`end_offsets`] earlier); a partition not in the list
    /// (one added since) starts at its beginning.
    Offsets(Vec<(i32, i64)>),
    /// The first offset whose timestamp is at or after this (Kafka's `ListOffsets` by time);
    /// a partition with no such message starts at its end as of when the consumer opens.
    Time(jiff::Timestamp),
    /// The end of each partition when the consumer opens: only messages produced after
    /// [`Consumer::open`] returns are read (the end offsets are resolved before it returns).
    Latest,
    /// The beginning of each partition.
    Earliest,
}

/// What an `expect` stage reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Kafka topic, every partition, assigned (never subscribed): no consumer-group
    /// membership, no offset commits.
    Topic {
        /// The topic.
        topic: String,
        /// Where each partition starts.
        from: StartAt,
    },
    /// A RabbitMQ queue, consumed: each message handed out by [`Consumer::next_batch`] is acked
    /// (taken off the queue). The queue must exist.
    Queue {
        /// The queue.
        queue: String,
    },
    /// A RabbitMQ exchange tapped through the queue `queue` that [`declare_tap`] made, bound
    /// with `routing_key`.
    Tap {
        /// The exchange.
        exchange: String,
        /// The binding's routing key.
        routing_key: String,
        /// The tap queue.
        queue: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Topic { topic, .. } => write!(f, "topic {topic}"),
            Source::Queue { queue } => write!(f, "queue {queue}"),
            Source::Tap {
                exchange, queue, ..
            } => write!(f, "exchange {exchange} (tap queue {queue})"),
        }
    }
}

/// One consumed message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Received {
    /// The message: `seq` counts 1, 2, 3, … in read order; `key` is the Kafka key, or the
    /// `devset.key` header on RabbitMQ (which is then not among `headers`); header values and
    /// the payload are text (invalid UTF-8 replaced with U+FFFD); `routing_key` is set on
    /// RabbitMQ.
    pub msg: Message,
    /// Partition and offset on Kafka, the delivery tag on RabbitMQ.
    pub delivery: Delivery,
}

/// A consumer of one [`Source`].
pub struct Consumer {
    inner: Inner,
    read: u64,
}

enum Inner {
    Kafka(kafka_consumer::KafkaConsumer),
    RabbitMq(Box<rabbitmq_consumer::RabbitConsumer>),
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            Inner::Kafka(_) => "kafka",
            Inner::RabbitMq(_) => "rabbitmq",
        };
        f.debug_struct("Consumer")
            .field("kind", &kind)
            .field("read", &self.read)
            .finish()
    }
}

impl Consumer {
    /// Connects and positions. A topic, queue or tap queue that does not exist is
    /// [`BrokerError::NotFound`]; an unreachable broker or refused credentials are
    /// [`BrokerError::Unreachable`] and [`BrokerError::AuthFailed`] as for the producers. A
    /// source that does not fit the broker (a queue on Kafka, a topic on RabbitMQ) is
    /// [`BrokerError::Other`].
    pub async fn open(cfg: &BrokerConfig, source: &Source) -> Result<Consumer, BrokerError> {
        let inner = match (cfg, source) {
            (BrokerConfig::Kafka(k), Source::Topic { topic, from }) => {
                Inner::Kafka(kafka_consumer::KafkaConsumer::open(k, topic, from.clone()).await?)
            }
            (BrokerConfig::RabbitMq(r), Source::Queue { queue } | Source::Tap { queue, .. }) => {
                Inner::RabbitMq(Box::new(
                    rabbitmq_consumer::RabbitConsumer::open(r, queue).await?,
                ))
            }
            (BrokerConfig::Kafka(_), _) => {
                return Err(BrokerError::Other(format!(
                    "cannot read {source} on Kafka: Kafka has topics only"
                )));
            }
            (BrokerConfig::RabbitMq(_), _) => {
                return Err(BrokerError::Other(format!(
                    "cannot read {source} on RabbitMQ: use a queue or an exchange"
                )));
            }
        };
        Ok(Consumer { inner, read: 0 })
    }

    /// Waits until at least one message is there, then appends up to `max` messages to `out`
    /// without waiting further; returns how many were appended (0 only when `max` is 0).
    ///
    /// Cancel-safe: when the future is dropped before it completes, nothing was appended to
    /// `out` and no message is lost; the next call returns it. On RabbitMQ, the messages
    /// appended are acknowledged (with one `multiple` ack per batch, sent in the background).
    /// An error that happens after some messages were taken is returned by the next call.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Received>,
        max: usize,
    ) -> Result<usize, BrokerError> {
        if max == 0 {
            return Ok(0);
        }
        let n = match &mut self.inner {
            Inner::Kafka(c) => c.next_batch(out, max).await?,
            Inner::RabbitMq(c) => c.next_batch(out, max, self.read).await?,
        };
        self.read += n as u64;
        Ok(n)
    }

    /// Messages read so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// Stops reading and disconnects: on RabbitMQ, after the acks of every message handed
    /// out are sent (the messages the client had prefetched but not handed out go back to the
    /// queue).
    pub async fn close(self) {
        match self.inner {
            Inner::Kafka(c) => c.close().await,
            Inner::RabbitMq(c) => c.close().await,
        }
    }
}

/// Kafka: the end offset of every partition of `topic` now, to start a later [`Consumer`] at
/// with [`StartAt::Offsets`]. A topic that does not exist is [`BrokerError::NotFound`].
pub async fn end_offsets(cfg: &BrokerConfig, topic: &str) -> Result<Vec<(i32, i64)>, BrokerError> {
    match cfg {
        BrokerConfig::Kafka(k) => kafka_consumer::topic_end_offsets(k, topic).await,
        BrokerConfig::RabbitMq(_) => Err(BrokerError::Other(format!(
            "cannot read topic {topic} on RabbitMQ: use a queue or an exchange"
        ))),
    }
}

/// RabbitMQ: declares `queue` (non-exclusive, non-durable, not auto-delete, with `x-expires` =
/// `idle_expiry`, so that the queue of a run that went away disappears by itself) and binds it
/// to `exchange` with `routing_key`. Idempotent. An exchange that does not exist is
/// [`BrokerError::NotFound`]. Kafka has no taps: [`BrokerError::Other`].
pub async fn declare_tap(
    cfg: &BrokerConfig,
    exchange: &str,
    routing_key: &str,
    queue: &str,
    idle_expiry: Duration,
) -> Result<(), BrokerError> {
    match cfg {
        BrokerConfig::RabbitMq(r) => {
            rabbitmq_consumer::declare_tap(r, exchange, routing_key, queue, idle_expiry).await
        }
        BrokerConfig::Kafka(_) => Err(BrokerError::Other(format!(
            "cannot tap exchange {exchange} on Kafka: Kafka has topics only"
        ))),
    }
}

/// RabbitMQ: deletes the tap queue (and the messages in it); a queue that does not exist is
/// fine.
pub async fn delete_tap(cfg: &BrokerConfig, queue: &str) -> Result<(), BrokerError> {
    match cfg {
        BrokerConfig::RabbitMq(r) => rabbitmq_consumer::delete_tap(r, queue).await,
        BrokerConfig::Kafka(_) => Err(BrokerError::Other(format!(
            "cannot delete queue {queue} on Kafka: Kafka has topics only"
        ))),
    }
}

/// Bytes as text, invalid UTF-8 replaced with U+FFFD.
pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Owned bytes as text without copying them when they are valid UTF-8.
pub(super) fn lossy_owned(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| lossy(e.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sources_that_do_not_fit_the_broker() {
        let kafka = BrokerConfig::kafka("127.0.0.1:1");
        let rabbit = BrokerConfig::amqp("amqp://127.0.0.1:1/%2f").unwrap();
        let queue = Source::Queue { queue: "q".into() };
        let err = Consumer::open(&kafka, &queue).await.unwrap_err();
        assert_eq!(err.reason(), "BrokerError");
        assert_eq!(
            err.to_string(),
            "cannot read queue q on Kafka: Kafka has topics only"
        );
        let topic = Source::Topic {
            topic: "t".into(),
            from: StartAt::Latest,
        };
        let err = Consumer::open(&rabbit, &topic).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read topic t on RabbitMQ: use a queue or an exchange"
        );
        let err = declare_tap(&kafka, "e", "k", "q", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "BrokerError");
        assert!(delete_tap(&kafka, "q").await.is_err());
    }

    #[test]
    fn sources_display() {
        let tap = Source::Tap {
            exchange: "orders".into(),
            routing_key: "#".into(),
            queue: "devset.tap.ns.run.s".into(),
        };
        assert_eq!(
            tap.to_string(),
            "exchange orders (tap queue devset.tap.ns.run.s)"
        );
    }

    #[test]
    fn text_is_lossy() {
        assert_eq!(lossy(b"caf\xc3\xa9"), "café");
        assert_eq!(lossy(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(lossy_owned(b"ok".to_vec()), "ok");
        assert_eq!(lossy_owned(b"\xfe".to_vec()), "\u{fffd}");
    }
}
