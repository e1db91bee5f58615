//! The consumer side of `expect` stages: read a Kafka topic (every partition, assigned, never
//! committing), consume a RabbitMQ queue, or tap a RabbitMQ exchange through a queue of its own.
//!
//! Like the producers, nothing here imports kube. The client settings (TLS, SASL, credentials)
//! are the producers' own (`kafka::client_config`, `rabbitmq::open`).

use super::{BrokerConfig, BrokerError, Delivery, kafka_consumer, rabbitmq_consumer};
use crate::message::Message;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use std::{borrow::Cow, fmt, time::Duration};

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

/// A message where the consumer holds it, read in place: nothing is copied or decoded until
/// asked for, so a message that does not match costs no allocation. Text is as in
/// [`Received`]: invalid UTF-8 replaced with U+FFFD.
pub struct Incoming<'a> {
    seq: u64,
    src: Src<'a>,
}

enum Src<'a> {
    /// A message in librdkafka's memory.
    Kafka(&'a BorrowedMessage<'a>),
    /// A message already owned.
    Owned(&'a Message, &'a Delivery),
}

impl<'a> Incoming<'a> {
    /// A message already owned (a RabbitMQ delivery, the last match kept for captures).
    pub fn of(msg: &'a Message, delivery: &'a Delivery) -> Incoming<'a> {
        Incoming {
            seq: msg.seq,
            src: Src::Owned(msg, delivery),
        }
    }

    pub(super) fn kafka(msg: &'a BorrowedMessage<'a>, seq: u64) -> Incoming<'a> {
        Incoming {
            seq,
            src: Src::Kafka(msg),
        }
    }

    /// Its number among the messages the consumer read: 1, 2, 3, …
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The key as text.
    pub fn key(&self) -> Option<Cow<'a, str>> {
        match self.src {
            Src::Kafka(m) => m.key().map(text),
            Src::Owned(m, _) => m.key.as_deref().map(Cow::Borrowed),
        }
    }

    /// The payload as text.
    pub fn payload(&self) -> Cow<'a, str> {
        match self.src {
            Src::Kafka(m) => text(m.payload().unwrap_or_default()),
            Src::Owned(m, _) => Cow::Borrowed(&m.payload),
        }
    }

    /// The value of the last header named `name`, as text (a Kafka header without a value is
    /// empty).
    pub fn header(&self, name: &str) -> Option<Cow<'a, str>> {
        let mut found = None;
        self.each_header(|k, v| {
            if k == name {
                found = Some(v);
            }
        });
        found.map(text)
    }

    /// Calls `f` with each header's name and value bytes, in order.
    pub fn each_header(&self, mut f: impl FnMut(&'a str, &'a [u8])) {
        match self.src {
            Src::Kafka(m) => {
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        f(h.key, h.value.unwrap_or_default());
                    }
                }
            }
            Src::Owned(m, _) => {
                for (k, v) in &m.headers {
                    f(k, v.as_bytes());
                }
            }
        }
    }

    /// Where the broker had it.
    pub fn delivery(&self) -> Delivery {
        match self.src {
            Src::Kafka(m) => Delivery {
                partition: Some(m.partition()),
                offset: Some(m.offset()),
                delivery_tag: None,
            },
            Src::Owned(_, d) => d.clone(),
        }
    }

    /// Copies the message into `out`, reusing its buffers (no allocation once they are large
    /// enough).
    pub fn copy_to(&self, out: &mut Received) {
        let msg = &mut out.msg;
        msg.seq = self.seq;
        match self.src {
            Src::Kafka(m) => {
                match m.key() {
                    Some(k) => set_text(msg.key.get_or_insert_with(String::new), k),
                    None => msg.key = None,
                }
                set_text(&mut msg.payload, m.payload().unwrap_or_default());
                msg.routing_key = None;
            }
            Src::Owned(m, _) => {
                msg.key.clone_from(&m.key);
                msg.payload.clone_from(&m.payload);
                msg.routing_key.clone_from(&m.routing_key);
            }
        }
        let mut n = 0;
        self.each_header(|k, v| {
            match msg.headers.get_mut(n) {
                Some((name, value)) => {
                    name.clear();
                    name.push_str(k);
                    set_text(value, v);
                }
                None => msg.headers.push((k.to_owned(), lossy(v))),
            }
            n += 1;
        });
        msg.headers.truncate(n);
        out.delivery = self.delivery();
    }
}

impl fmt::Debug for Incoming<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("seq", &self.seq)
            .field("delivery", &self.delivery())
            .finish_non_exhaustive()
    }
}

/// A consumer of one [`Source`].
pub struct Consumer {
    inner: Inner,
    read: u64,
    /// RabbitMQ: the deliveries of the current [`Consumer::next_batch_with`].
    scratch: Vec<Received>,
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
        Ok(Consumer {
            inner,
            read: 0,
            scratch: Vec::new(),
        })
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

    /// Like [`Consumer::next_batch`], but hands each message to `f` where the consumer holds
    /// it, without copying it; `f` copies what it keeps ([`Incoming::copy_to`]) and returns
    /// whether it wants more of this batch. Returns how many messages `f` was given. Cancel-safe
    /// in the same way: `f` is called only once the wait is over, never across an await.
    ///
    /// On Kafka a message `f` was not given stays for the next call. On RabbitMQ the messages
    /// of a batch are taken off the queue together: those after the one `f` stopped at are
    /// counted as read and dropped (ask for no more than you want).
    pub async fn next_batch_with<F>(&mut self, max: usize, mut f: F) -> Result<usize, BrokerError>
    where
        F: FnMut(&Incoming<'_>) -> bool,
    {
        if max == 0 {
            return Ok(0);
        }
        let (n, taken) = match &mut self.inner {
            Inner::Kafka(c) => {
                let n = c.next_batch_with(max, &mut f).await?;
                (n, n)
            }
            Inner::RabbitMq(c) => {
                self.scratch.clear();
                let taken = c.next_batch(&mut self.scratch, max, self.read).await?;
                let mut n = 0;
                for r in &self.scratch {
                    n += 1;
                    if !f(&Incoming::of(&r.msg, &r.delivery)) {
                        break;
                    }
                }
                (n, taken)
            }
        };
        self.read += taken as u64;
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
    text(bytes).into_owned()
}

/// Bytes as text without copying them when they are valid UTF-8 (checked with the fast
/// `str::from_utf8`; only bad bytes take the slower lossy path).
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Replaces `dst` with `bytes` as text, reusing its buffer.
fn set_text(dst: &mut String, bytes: &[u8]) {
    dst.clear();
    dst.push_str(&text(bytes));
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
        let mut s = String::from("a longer text than what comes");
        set_text(&mut s, b"x\xffy");
        assert_eq!(s, "x\u{fffd}y");
    }

    #[test]
    fn an_owned_message_reads_and_copies_in_place() {
        let msg = Message {
            seq: 7,
            key: Some("k".into()),
            headers: vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("a".into(), "3".into()),
            ],
            payload: "p".into(),
            routing_key: Some("r".into()),
        };
        let delivery = Delivery {
            delivery_tag: Some(4),
            ..Default::default()
        };
        let m = Incoming::of(&msg, &delivery);
        assert_eq!(m.seq(), 7);
        assert_eq!(m.key().as_deref(), Some("k"));
        assert_eq!(m.header("a").as_deref(), Some("3"), "the last one");
        assert_eq!(m.header("c"), None);
        assert_eq!(m.payload(), "p");
        // Into a buffer that held a bigger message: every field is replaced.
        let mut out = Received {
            msg: Message {
                seq: 1,
                key: None,
                headers: vec![("x".into(), "y".into()); 5],
                payload: "old".repeat(10),
                routing_key: None,
            },
            delivery: Delivery::default(),
        };
        m.copy_to(&mut out);
        assert_eq!(out.msg, msg);
        assert_eq!(out.delivery, delivery);
    }
}
