//! The Kafka adapter: an idempotent rdkafka `FutureProducer` with `acks=all`.

use super::{BrokerError, Delivery, KafkaConfig, PendingDelivery, ProducerOptions, scrub};
use crate::api::{KafkaSecurityProtocol, SaslMechanism};
use crate::message::Message;
use rdkafka::{
    ClientConfig, ClientContext,
    config::RDKafkaLogLevel,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

/// How long `send` sleeps when the local queue is full before trying again.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// The rdkafka client settings for a config (shared by the producer and the consumer, so that
/// TLS and SASL apply alike).
pub(super) fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("client.id", "devset")
        .set(
            "security.protocol",
            match cfg.security_protocol {
                KafkaSecurityProtocol::Plaintext => "plaintext",
                KafkaSecurityProtocol::Ssl => "ssl",
                KafkaSecurityProtocol::SaslPlaintext => "sasl_plaintext",
                KafkaSecurityProtocol::SaslSsl => "sasl_ssl",
            },
        );
    if let Some(sasl) = &cfg.sasl {
        c.set(
            "sasl.mechanism",
            match sasl.mechanism {
                SaslMechanism::Plain => "PLAIN",
                SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            },
        )
        .set("sasl.username", &sasl.username)
        .set("sasl.password", &sasl.password);
    }
    let tls = &cfg.tls;
    if let Some(ca) = &tls.ca_pem {
        c.set("ssl.ca.pem", ca);
    }
    if let Some(cert) = &tls.client_cert_pem {
        c.set("ssl.certificate.pem", cert);
    }
    if let Some(key) = &tls.client_key_pem {
        c.set("ssl.key.pem", key);
    }
    if tls.insecure_skip_verify {
        c.set("enable.ssl.certificate.verification", "false")
            .set("ssl.endpoint.identification.algorithm", "none");
    }
    c
}

/// A client context that remembers the last client-level error librdkafka reported (a refused
/// connection, a failed SASL handshake), so that a failed or timed-out request can say why.
#[derive(Clone, Default)]
pub(super) struct Context {
    last_error: Arc<Mutex<Option<(KafkaError, String)>>>,
    password: Option<String>,
}

impl Context {
    pub(super) fn new(cfg: &KafkaConfig) -> Self {
        Context {
            last_error: Arc::default(),
            password: cfg.sasl.as_ref().map(|s| s.password.clone()),
        }
    }

    fn last_error(&self) -> Option<(KafkaError, String)> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// The code of the last client-level error.
    pub(super) fn last_code(&self) -> Option<RDKafkaErrorCode> {
        self.last_error().and_then(|(e, _)| code_of(&e))
    }

    pub(super) fn scrub(&self, text: String) -> String {
        scrub(text, self.password.as_deref())
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let msg = self.scrub(log_message.to_string());
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac}: {msg}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {msg}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac}: {msg}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {msg}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let reason = self.scrub(reason.to_string());
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((error, reason));
        }
    }
}

pub(super) fn is_auth_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
    )
}

/// A transactional producer was fenced: another producer with its `transactional.id` started.
pub(super) fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

pub(super) fn is_unreachable_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::SSL
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
    )
}

/// The error code inside an rdkafka error, where it has one.
fn code_of(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// Classifies an error of a request to the cluster (metadata, connect) using the last
/// client-level error as the explanation.
pub(super) fn classify_request_error(e: KafkaError, ctx: &Context, what: &str) -> BrokerError {
    let last = ctx.last_error();
    let detail = match &last {
        Some((le, reason)) => format!("{what}: {e}; last client error: {le}: {reason}"),
        None => format!("{what}: {e}"),
    };
    let detail = ctx.scrub(detail);
    let last_code = last.as_ref().and_then(|(le, _)| code_of(le));
    if code_of(&e).is_some_and(is_auth_code) || last_code.is_some_and(is_auth_code) {
        return BrokerError::AuthFailed(detail);
    }
    if code_of(&e).is_some_and(is_unreachable_code)
        || last_code.is_some_and(is_unreachable_code)
        || matches!(e, KafkaError::MetadataFetch(_))
    {
        return BrokerError::Unreachable(detail);
    }
    BrokerError::Other(detail)
}

/// Classifies the error of a message's delivery report.
pub(super) fn classify_delivery_error(e: KafkaError, ctx: &Context, topic: &str) -> BrokerError {
    let code = code_of(&e);
    let detail = |e: &KafkaError| {
        let base = format!("message to topic {topic}: {e}");
        match ctx.last_error() {
            Some((le, reason)) => ctx.scrub(format!("{base}; last client error: {le}: {reason}")),
            None => ctx.scrub(base),
        }
    };
    match code {
        Some(c) if is_fenced_code(c) => BrokerError::Fenced(detail(&e)),
        Some(c) if is_auth_code(c) => BrokerError::AuthFailed(detail(&e)),
        Some(RDKafkaErrorCode::MessageTimedOut) => {
            // Timed out in the local queue: usually because no broker could be reached.
            let last_code = ctx.last_error().and_then(|(le, _)| code_of(&le));
            if last_code.is_some_and(is_auth_code) {
                BrokerError::AuthFailed(detail(&e))
            } else {
                BrokerError::Timeout(detail(&e))
            }
        }
        Some(c) if is_unreachable_code(c) => BrokerError::Unreachable(detail(&e)),
        _ => BrokerError::Other(detail(&e)),
    }
}

/// Asks the cluster for its metadata; see [`super::probe`].
pub(super) async fn probe(cfg: &KafkaConfig, timeout: Duration) -> Result<String, BrokerError> {
    let ctx = Context::new(cfg);
    let mut config = client_config(cfg);
    // Keep the probe's client from retrying for long after it is dropped.
    config.set("socket.timeout.ms", timeout.as_millis().max(10).to_string());
    let producer: FutureProducer<Context> = config
        .create_with_context(ctx.clone())
        .map_err(|e| BrokerError::Other(ctx.scrub(format!("Kafka client: {e}"))))?;
    let brokers = fetch_brokers(producer, timeout, &ctx).await?;
    Ok(format!(
        "Kafka at {}: {brokers} broker(s)",
        cfg.bootstrap_servers
    ))
}

/// Runs a metadata request on a blocking thread; returns the number of brokers.
pub(super) async fn fetch_brokers(
    producer: FutureProducer<Context>,
    timeout: Duration,
    ctx: &Context,
) -> Result<usize, BrokerError> {
    let res = tokio::time::timeout(
        timeout + Duration::from_secs(2),
        tokio::task::spawn_blocking(move || {
            let metadata = producer.client().fetch_metadata(None, timeout)?;
            Ok::<_, KafkaError>(metadata.brokers().len())
        }),
    )
    .await;
    match res {
        Ok(Ok(Ok(n))) => Ok(n),
        Ok(Ok(Err(e))) => Err(classify_request_error(e, ctx, "metadata request")),
        Ok(Err(join)) => Err(BrokerError::Other(format!("metadata request: {join}"))),
        Err(_) => Err(classify_request_error(
            KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut),
            ctx,
            "metadata request",
        )),
    }
}

/// The rdkafka record of a message, with its headers and key.
fn record<'a>(topic: &'a str, msg: &'a Message) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(msg.headers.len());
    for (key, value) in &msg.headers {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
        .payload(msg.payload.as_bytes())
        .headers(headers);
    if let Some(key) = &msg.key {
        record = record.key(key.as_bytes());
    }
    record
}

/// Enqueues `msg` on `producer` (waiting while the local queue is full) and returns the future
/// of its delivery report; shared by the plain and the transactional producer.
pub(super) async fn send(
    producer: &FutureProducer<Context>,
    ctx: &Context,
    topic: Arc<str>,
    msg: &Message,
) -> Result<PendingDelivery, BrokerError> {
    let mut record = record(&topic, msg);
    loop {
        match producer.send_result(record) {
            Ok(future) => {
                let ctx = ctx.clone();
                let topic = topic.clone();
                return Ok(Box::pin(async move {
                    match future.await {
                        Ok(Ok(d)) => Ok(Delivery {
                            partition: Some(d.partition),
                            offset: Some(d.offset),
                            delivery_tag: None,
                        }),
                        Ok(Err((e, _))) => Err(classify_delivery_error(e, &ctx, &topic)),
                        Err(_canceled) => Err(BrokerError::Other(format!(
                            "message to topic {topic}: the producer was dropped before its delivery report"
                        ))),
                    }
                }));
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
            }
            Err((e, _)) => return Err(classify_delivery_error(e, ctx, &topic)),
        }
    }
}

/// See [`super::Producer`].
pub(super) struct KafkaProducer {
    producer: FutureProducer<Context>,
    ctx: Context,
    delivery_timeout: Duration,
    /// The topic last sent to, shared by the pending deliveries (for their error messages)
    /// rather than copied for each message.
    topic: Mutex<Option<Arc<str>>>,
}

impl KafkaProducer {
    pub(super) async fn connect(
        cfg: &KafkaConfig,
        opts: &ProducerOptions,
    ) -> Result<KafkaProducer, BrokerError> {
        let ctx = Context::new(cfg);
        let timeout_ms = opts.delivery_timeout.as_millis().clamp(1, i32::MAX as u128);
        let producer: FutureProducer<Context> = client_config(cfg)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", timeout_ms.to_string())
            .create_with_context(ctx.clone())
            .map_err(|e| BrokerError::Other(ctx.scrub(format!("Kafka producer: {e}"))))?;
        // Fail early, and with the right reason, when the cluster cannot be used.
        let check = opts.delivery_timeout.min(Duration::from_secs(10));
        fetch_brokers(producer.clone(), check, &ctx).await?;
        Ok(KafkaProducer {
            producer,
            ctx,
            delivery_timeout: opts.delivery_timeout,
            topic: Mutex::default(),
        })
    }

    fn topic_name(&self, topic: &str) -> Arc<str> {
        let mut last = self.topic.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some(t) if **t == *topic => t.clone(),
            _ => last.insert(Arc::from(topic)).clone(),
        }
    }

    pub(super) async fn send(
        &self,
        topic: &str,
        msg: &Message,
    ) -> Result<PendingDelivery, BrokerError> {
        send(&self.producer, &self.ctx, self.topic_name(topic), msg).await
    }

    pub(super) async fn close(self) -> Result<(), BrokerError> {
        let producer = self.producer.clone();
        // Every message has its own delivery timeout; allow for it plus a margin.
        let timeout = self.delivery_timeout + Duration::from_secs(5);
        let res = tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| BrokerError::Other(format!("flush: {e}")))?;
        match res {
            Ok(()) => Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                Err(BrokerError::Timeout(format!(
                    "messages still in flight after {}s",
                    timeout.as_secs()
                )))
            }
            Err(e) => Err(classify_request_error(e, &self.ctx, "flush")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::{SaslCredentials, TlsMaterial};

    #[test]
    fn client_config_maps_security_settings() {
        let cfg = KafkaConfig {
            bootstrap_servers: "k:9093".into(),
            security_protocol: KafkaSecurityProtocol::SaslSsl,
            sasl: Some(SaslCredentials {
                mechanism: SaslMechanism::ScramSha512,
                username: "u".into(),
                password: "p".into(),
            }),
            tls: TlsMaterial {
                ca_pem: Some("CA".into()),
                client_cert_pem: Some("CERT".into()),
                client_key_pem: Some("KEY".into()),
                insecure_skip_verify: true,
            },
        };
        let c = client_config(&cfg);
        for (k, v) in [
            ("bootstrap.servers", "k:9093"),
            ("client.id", "devset"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
            ("ssl.ca.pem", "CA"),
            ("ssl.certificate.pem", "CERT"),
            ("ssl.key.pem", "KEY"),
            ("enable.ssl.certificate.verification", "false"),
        ] {
            assert_eq!(c.get(k), Some(v), "{k}");
        }
        let plain = client_config(&KafkaConfig {
            bootstrap_servers: "k:9092".into(),
            security_protocol: KafkaSecurityProtocol::Plaintext,
            sasl: None,
            tls: TlsMaterial::default(),
        });
        assert_eq!(plain.get("security.protocol"), Some("plaintext"));
        assert_eq!(plain.get("sasl.mechanism"), None);
        assert_eq!(plain.get("enable.ssl.certificate.verification"), None);
    }

    #[test]
    fn errors_are_classified() {
        let ctx = Context::default();
        let e = classify_request_error(
            KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown),
            &ctx,
            "metadata",
        );
        assert_eq!(e.reason(), "Unreachable");
        let e = classify_delivery_error(
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            &ctx,
            "t",
        );
        assert_eq!(e.reason(), "Timeout");
        ctx.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed",
        );
        let e = classify_request_error(
            KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut),
            &ctx,
            "metadata",
        );
        assert_eq!(e.reason(), "AuthFailed", "{e}");
    }
}
