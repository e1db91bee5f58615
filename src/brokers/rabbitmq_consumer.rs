//! The RabbitMQ side of [`super::Consumer`]: a lapin consumer on its own connection, with a
//! prefetch window, handing out what the client has buffered in batches and acknowledging each
//! batch with one `basic.ack` (`multiple`), sent by a task of its own so that `next_batch`
//! never awaits after it took messages. Also the tap queues of exchanges.

use super::{
    BrokerError, Delivery, RabbitMqConfig,
    consumer::{Received, lossy, lossy_owned},
    rabbitmq::{KEY_HEADER, classify, open},
};
use crate::message::Message;
use futures::{FutureExt as _, StreamExt as _};
use lapin::{
    Channel, Connection, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::mpsc, task::JoinHandle};

/// How long connecting (and each setup request) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages the broker may send ahead of their acks.
const PREFETCH: u16 = 1000;
/// How long `close` waits for the outstanding acks to be sent.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The AMQP reply code of a missing queue or exchange.
const NOT_FOUND: u16 = 404;

/// Whether a lapin error is the broker's 404 NOT_FOUND.
fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == NOT_FOUND)
}

/// Runs one setup request within [`CONNECT_TIMEOUT`]; the outer error is the timeout.
async fn request<T>(
    what: &str,
    fut: impl Future<Output = lapin::Result<T>>,
) -> Result<lapin::Result<T>, BrokerError> {
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| {
            BrokerError::Timeout(format!(
                "{what}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })
}

/// A connection with one channel.
async fn channel(cfg: &RabbitMqConfig) -> Result<(Connection, Channel), BrokerError> {
    let conn = open(cfg, CONNECT_TIMEOUT).await?;
    match request("opening a channel", conn.create_channel()).await {
        Ok(Ok(ch)) => Ok((conn, ch)),
        Ok(Err(e)) => {
            close_quietly(&conn).await;
            Err(classify(&e, "opening a channel", cfg))
        }
        Err(e) => {
            close_quietly(&conn).await;
            Err(e)
        }
    }
}

async fn close_quietly(conn: &Connection) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "done".into())).await;
}

/// The queue declare arguments of a tap: `x-expires` in milliseconds.
fn tap_arguments(idle_expiry: Duration) -> FieldTable {
    let ms = idle_expiry.as_millis().clamp(1, i64::MAX as u128) as i64;
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-expires"), AMQPValue::LongLongInt(ms));
    args
}

/// See [`super::declare_tap`].
pub(super) async fn declare_tap(
    cfg: &RabbitMqConfig,
    exchange: &str,
    routing_key: &str,
    queue: &str,
    idle_expiry: Duration,
) -> Result<(), BrokerError> {
    if exchange.is_empty() {
        return Err(BrokerError::Other(
            "the default exchange cannot be tapped: read the queue itself".into(),
        ));
    }
    let (conn, ch) = channel(cfg).await?;
    let res = async {
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = request(
            "exchange.declare",
            ch.exchange_declare(
                ShortString::from(exchange),
                ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            ),
        )
        .await?;
        match declared {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {
                return Err(BrokerError::NotFound(format!("exchange {exchange}")));
            }
            Err(e) => return Err(classify(&e, &format!("checking exchange {exchange}"), cfg)),
        }
        let options = QueueDeclareOptions {
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
        };
        request(
            "queue.declare",
            ch.queue_declare(ShortString::from(queue), options, tap_arguments(idle_expiry)),
        )
        .await?
        .map_err(|e| classify(&e, &format!("declaring tap queue {queue}"), cfg))?;
        request(
            "queue.bind",
            ch.queue_bind(
                ShortString::from(queue),
                ShortString::from(exchange),
                ShortString::from(routing_key),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?
        .map_err(|e| {
            classify(
                &e,
                &format!("binding tap queue {queue} to exchange {exchange} with routing key {routing_key:?}"),
                cfg,
            )
        })?;
        Ok(())
    }
    .await;
    close_quietly(&conn).await;
    res
}

/// See [`super::delete_tap`].
pub(super) async fn delete_tap(cfg: &RabbitMqConfig, queue: &str) -> Result<(), BrokerError> {
    let (conn, ch) = channel(cfg).await?;
    let res = request(
        "queue.delete",
        ch.queue_delete(ShortString::from(queue), QueueDeleteOptions::default()),
    )
    .await;
    close_quietly(&conn).await;
    match res? {
        Ok(_) => Ok(()),
        // Older brokers answer a missing queue with 404 rather than ok.
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(classify(&e, &format!("deleting tap queue {queue}"), cfg)),
    }
}

/// See [`super::Consumer`].
pub(super) struct RabbitConsumer {
    /// `None` once closed.
    conn: Option<Connection>,
    channel: Channel,
    consumer: lapin::Consumer,
    /// The delivery tag to ack (`multiple`) after each batch; `None` at close.
    acks: Option<mpsc::UnboundedSender<u64>>,
    acker: Option<JoinHandle<()>>,
    /// The first error of the acker, reported by the next `next_batch`.
    ack_error: Arc<Mutex<Option<BrokerError>>>,
    /// An error the consumer reported after some messages: returned by the next call.
    pending_error: Option<BrokerError>,
    cfg: RabbitMqConfig,
    queue: String,
}

impl RabbitConsumer {
    pub(super) async fn open(
        cfg: &RabbitMqConfig,
        queue: &str,
    ) -> Result<RabbitConsumer, BrokerError> {
        let (conn, channel) = channel(cfg).await?;
        match Self::start(cfg, &channel, queue).await {
            Ok(consumer) => {
                let (acks, acker, ack_error) = spawn_acker(channel.clone(), cfg.clone());
                Ok(RabbitConsumer {
                    conn: Some(conn),
                    channel,
                    consumer,
                    acks: Some(acks),
                    acker: Some(acker),
                    ack_error,
                    pending_error: None,
                    cfg: cfg.clone(),
                    queue: queue.to_string(),
                })
            }
            Err(e) => {
                close_quietly(&conn).await;
                Err(e)
            }
        }
    }

    async fn start(
        cfg: &RabbitMqConfig,
        ch: &Channel,
        queue: &str,
    ) -> Result<lapin::Consumer, BrokerError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match request(
            "queue.declare",
            ch.queue_declare(ShortString::from(queue), passive, FieldTable::default()),
        )
        .await?
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                return Err(BrokerError::NotFound(format!("queue {queue}")));
            }
            Err(e) => return Err(classify(&e, &format!("checking queue {queue}"), cfg)),
        }
        request(
            "basic.qos",
            ch.basic_qos(PREFETCH, BasicQosOptions::default()),
        )
        .await?
        .map_err(|e| classify(&e, "basic.qos", cfg))?;
        let tag = format!("devset-expect-{}", uuid::Uuid::new_v4());
        request(
            "basic.consume",
            ch.basic_consume(
                ShortString::from(queue),
                ShortString::from(tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?
        .map_err(|e| match is_not_found(&e) {
            true => BrokerError::NotFound(format!("queue {queue}")),
            false => classify(&e, &format!("consuming queue {queue}"), cfg),
        })
    }

    /// `read` is the number of messages handed out before, for `seq`.
    pub(super) async fn next_batch(
        &mut self,
        out: &mut Vec<Received>,
        max: usize,
        read: u64,
    ) -> Result<usize, BrokerError> {
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        if let Some(e) = self
            .ack_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        // The only await: the stream's next item, which stays in the stream if the future is
        // dropped. Everything after it is synchronous.
        let first = match self.consumer.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(self.consume_error(&e)),
            None => return Err(self.cancelled()),
        };
        let mut last_tag = first.delivery_tag;
        out.push(convert(first, read + 1));
        let mut n = 1;
        while n < max {
            match self.consumer.next().now_or_never() {
                Some(Some(Ok(d))) => {
                    last_tag = d.delivery_tag;
                    n += 1;
                    out.push(convert(d, read + n as u64));
                }
                Some(Some(Err(e))) => {
                    self.pending_error = Some(self.consume_error(&e));
                    break;
                }
                Some(None) => {
                    self.pending_error = Some(self.cancelled());
                    break;
                }
                None => break,
            }
        }
        if let Some(acks) = &self.acks {
            let _ = acks.send(last_tag);
        }
        Ok(n)
    }

    fn consume_error(&self, e: &lapin::Error) -> BrokerError {
        if is_not_found(e) {
            return BrokerError::NotFound(format!("queue {}", self.queue));
        }
        classify(e, &format!("consuming queue {}", self.queue), &self.cfg)
    }

    fn cancelled(&self) -> BrokerError {
        BrokerError::Other(format!(
            "the broker cancelled the consumer of queue {} (was the queue deleted?)",
            self.queue
        ))
    }

    pub(super) async fn close(mut self) {
        // The acks first: a message handed out and then put back by the channel's close would
        // be read again.
        drop(self.acks.take());
        if let Some(acker) = self.acker.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, acker).await;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.channel.close(200, "done".into())).await;
        if let Some(conn) = self.conn.take() {
            close_quietly(&conn).await;
        }
    }
}

impl Drop for RabbitConsumer {
    fn drop(&mut self) {
        // Dropped without `close` (the stage was cancelled): close the connection once the
        // acks are sent, in the background.
        let (Some(acks), Some(acker), Some(conn)) =
            (self.acks.take(), self.acker.take(), self.conn.take())
        else {
            return;
        };
        drop(acks);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, acker).await;
                close_quietly(&conn).await;
            });
        }
    }
}

/// The task that sends the acks, in order, coalescing those that queued up into one.
fn spawn_acker(
    channel: Channel,
    cfg: RabbitMqConfig,
) -> (
    mpsc::UnboundedSender<u64>,
    JoinHandle<()>,
    Arc<Mutex<Option<BrokerError>>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let error = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&error);
    let task = tokio::spawn(async move {
        while let Some(mut tag) = rx.recv().await {
            while let Ok(t) = rx.try_recv() {
                tag = t;
            }
            let acked = channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await;
            if let Err(e) = acked {
                let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert_with(|| classify(&e, "acknowledging messages", &cfg));
                return;
            }
        }
    });
    (tx, task, error)
}

fn convert(d: lapin::message::Delivery, seq: u64) -> Received {
    let mut key = None;
    let mut headers = Vec::new();
    if let Some(table) = d.properties.headers() {
        headers.reserve(table.inner().len());
        for (k, v) in table {
            if k.as_str() == KEY_HEADER {
                key = Some(header_text(v));
            } else {
                headers.push((k.to_string(), header_text(v)));
            }
        }
    }
    Received {
        msg: Message {
            seq,
            key,
            headers,
            payload: lossy_owned(d.data),
            routing_key: Some(d.routing_key.to_string()),
        },
        delivery: Delivery {
            partition: None,
            offset: None,
            delivery_tag: Some(d.delivery_tag),
        },
    }
}

/// A header value as text: strings as they are, numbers and booleans as written in JSON,
/// arrays and tables as JSON, `void` as the empty string.
fn header_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => lossy(s.as_bytes()),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::ByteArray(b) => lossy(b.as_slice()),
        AMQPValue::Void => String::new(),
        other => match header_json(other) {
            serde_json::Value::String(s) => s,
            json => json.to_string(),
        },
    }
}

fn header_json(v: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Float(f) => (*f as f64).into(),
        AMQPValue::Double(f) => (*f).into(),
        AMQPValue::DecimalValue(d) => {
            let scaled = d.value as f64 / 10f64.powi(d.scale.into());
            scaled.into()
        }
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::ShortString(s) => s.as_str().into(),
        AMQPValue::LongString(s) => lossy(s.as_bytes()).into(),
        AMQPValue::ByteArray(b) => lossy(b.as_slice()).into(),
        AMQPValue::FieldArray(a) => a.as_slice().iter().map(header_json).collect(),
        AMQPValue::FieldTable(t) => Value::Object(
            t.into_iter()
                .map(|(k, v)| (k.to_string(), header_json(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, DecimalValue, FieldArray, LongString};

    #[test]
    fn header_values_become_text() {
        let s = |t: &str| AMQPValue::LongString(LongString::from(t));
        assert_eq!(header_text(&s("plain")), "plain");
        assert_eq!(
            header_text(&AMQPValue::LongString(LongString::from(b"a\xffb".to_vec()))),
            "a\u{fffd}b"
        );
        assert_eq!(
            header_text(&AMQPValue::ShortString("short".into())),
            "short"
        );
        assert_eq!(header_text(&AMQPValue::LongLongInt(-42)), "-42");
        assert_eq!(header_text(&AMQPValue::LongUInt(7)), "7");
        assert_eq!(header_text(&AMQPValue::Boolean(true)), "true");
        assert_eq!(header_text(&AMQPValue::Double(1.5)), "1.5");
        assert_eq!(header_text(&AMQPValue::Timestamp(1700000000)), "1700000000");
        assert_eq!(
            header_text(&AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 1234
            })),
            "12.34"
        );
        assert_eq!(header_text(&AMQPValue::Void), "");
        assert_eq!(
            header_text(&AMQPValue::ByteArray(ByteArray::from(b"raw".to_vec()))),
            "raw"
        );
        let array = AMQPValue::FieldArray(FieldArray::from(vec![s("x"), AMQPValue::LongInt(1)]));
        assert_eq!(header_text(&array), r#"["x",1]"#);
        let mut table = FieldTable::default();
        table.insert("b".into(), AMQPValue::Boolean(false));
        table.insert("a".into(), s("y"));
        assert_eq!(
            header_text(&AMQPValue::FieldTable(table)),
            r#"{"a":"y","b":false}"#
        );
    }

    #[test]
    fn the_key_header_becomes_the_key() {
        let mut table = FieldTable::default();
        table.insert(
            KEY_HEADER.into(),
            AMQPValue::LongString(LongString::from("order-1")),
        );
        table.insert("h".into(), AMQPValue::LongString(LongString::from("v")));
        let mut d = lapin::message::Delivery::mock(
            9,
            "orders".into(),
            "created".into(),
            false,
            b"{\"id\":1}".to_vec(),
        );
        d.properties = d.properties.with_headers(table);
        let r = convert(d, 3);
        assert_eq!(
            r,
            Received {
                msg: Message {
                    seq: 3,
                    key: Some("order-1".into()),
                    headers: vec![("h".into(), "v".into())],
                    payload: "{\"id\":1}".into(),
                    routing_key: Some("created".into()),
                },
                delivery: Delivery {
                    partition: None,
                    offset: None,
                    delivery_tag: Some(9),
                },
            }
        );
    }

    #[test]
    fn tap_queues_expire_when_idle() {
        let args = tap_arguments(Duration::from_secs(3600));
        assert_eq!(
            args.inner().get("x-expires"),
            Some(&AMQPValue::LongLongInt(3_600_000))
        );
        assert_eq!(
            tap_arguments(Duration::ZERO).inner().get("x-expires"),
            Some(&AMQPValue::LongLongInt(1))
        );
    }
}
