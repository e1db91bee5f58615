//! Broker adapters: publish rendered [`Message`]s to Kafka (rdkafka) or RabbitMQ (lapin), consume
//! them for `expect` stages ([`Consumer`]) and probe whether a broker is reachable.
//!
//! Nothing here imports kube: [`BrokerConfig::from_spec`] takes the connector's spec and a
//! Secret lookup function, so the whole module is unit-testable without a cluster.
//!
//! No password ever appears in a `Debug` or `Display` output of these types, nor in an error
//! message.

mod consumer;
mod kafka;
mod kafka_consumer;
mod kafka_txn;
mod rabbitmq;
mod rabbitmq_consumer;

pub use consumer::{
    Consumer, Incoming, Received, Source, StartAt, declare_tap, delete_tap, end_offsets,
};
pub use kafka_txn::{PROGRESS_TOPIC, TxnFailure, progress_topic};

use crate::api::{
    BrokerConnectorSpec, CredentialsSecretRef, KafkaSecurityProtocol, SaslMechanism, TlsConfig,
};
use crate::message::{Message, Target};
use std::{collections::BTreeMap, fmt, time::Duration};

/// The data of a Secret, key to value.
type SecretData = BTreeMap<String, Vec<u8>>;

/// How to reach one broker, with the credentials resolved from Secrets.
#[derive(Clone, Debug, PartialEq)]
pub enum BrokerConfig {
    /// An Apache Kafka cluster.
    Kafka(KafkaConfig),
    /// A RabbitMQ broker over AMQP 0-9-1.
    RabbitMq(RabbitMqConfig),
}

/// How to reach a Kafka cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list (`bootstrap.servers`).
    pub bootstrap_servers: String,
    /// The `security.protocol`.
    pub security_protocol: KafkaSecurityProtocol,
    /// SASL credentials, with `SASL_PLAINTEXT` and `SASL_SSL`.
    pub sasl: Option<SaslCredentials>,
    /// TLS material, with `SSL` and `SASL_SSL`.
    pub tls: TlsMaterial,
}

/// A SASL mechanism with its username and password. `Debug` does not show the password.
#[derive(Clone, PartialEq)]
pub struct SaslCredentials {
    /// The SASL mechanism.
    pub mechanism: SaslMechanism,
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &REDACTED)
            .finish()
    }
}

/// How to reach a RabbitMQ broker. `Debug` does not show the password.
#[derive(Clone, PartialEq)]
pub struct RabbitMqConfig {
    /// The AMQP URL as in the spec, `amqp://host:port/vhost` or `amqps://…`, without credentials.
    pub url: String,
    /// The username; without it the broker's default (`guest`) applies.
    pub username: Option<String>,
    /// The password.
    pub password: Option<String>,
    /// TLS material, with `amqps://`.
    pub tls: TlsMaterial,
}

impl fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("tls", &self.tls)
            .finish()
    }
}

/// PEM material for a TLS connection. `Debug` does not show the private key.
#[derive(Clone, Default, PartialEq)]
pub struct TlsMaterial {
    /// The CA bundle that signs the broker's certificate; without it the system roots are used.
    pub ca_pem: Option<String>,
    /// The client certificate, for client certificate authentication.
    pub client_cert_pem: Option<String>,
    /// The client certificate's private key.
    pub client_key_pem: Option<String>,
    /// Skip verifying the broker's certificate (development only).
    pub insecure_skip_verify: bool,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field(
                "client_cert_pem",
                &self.client_cert_pem.as_ref().map(|_| "<pem>"),
            )
            .field(
                "client_key_pem",
                &self.client_key_pem.as_ref().map(|_| REDACTED),
            )
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

const REDACTED: &str = "<redacted>";

/// Why a connector's spec does not give a usable [`BrokerConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A Secret the spec names does not exist.
    #[error("Secret {name:?} not found")]
    SecretNotFound {
        /// The Secret's name.
        name: String,
    },
    /// A Secret the spec names lacks a key.
    #[error("Secret {name:?} has no key {key:?}")]
    SecretKeyMissing {
        /// The Secret's name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// Anything else wrong with the spec; the message names the field.
    #[error("invalid connector: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// The condition reason: `SecretNotFound` for a missing Secret or key, else `InvalidConfig`.
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigError::SecretNotFound { .. } | ConfigError::SecretKeyMissing { .. } => {
                "SecretNotFound"
            }
            ConfigError::Invalid(_) => "InvalidConfig",
        }
    }
}

impl BrokerConfig {
    /// Resolves a `BrokerConnector` spec into a config, reading credentials and TLS material
    /// from Secrets.
    ///
    /// `secret(name)` returns the data of the Secret `name` in the connector's namespace (None
    /// if it does not exist). It takes no kube types so that this is unit-testable.
    pub fn from_spec(
        spec: &BrokerConnectorSpec,
        secret: impl Fn(&str) -> Option<SecretData>,
    ) -> Result<BrokerConfig, ConfigError> {
        match (&spec.kafka, &spec.rabbitmq) {
            (Some(k), None) => {
                let sasl_protocol = matches!(
                    k.security_protocol,
                    KafkaSecurityProtocol::SaslPlaintext | KafkaSecurityProtocol::SaslSsl
                );
                let sasl = match &k.sasl {
                    Some(s) if sasl_protocol => {
                        let (username, password) = credentials(&s.secret_ref, &secret)?;
                        Some(SaslCredentials {
                            mechanism: s.mechanism,
                            username,
                            password,
                        })
                    }
                    Some(_) => {
                        return Err(ConfigError::Invalid(
                            "spec.kafka.sasl needs securityProtocol SASL_PLAINTEXT or SASL_SSL"
                                .into(),
                        ));
                    }
                    None if sasl_protocol => {
                        return Err(ConfigError::Invalid(
                            "spec.kafka.securityProtocol SASL_PLAINTEXT and SASL_SSL need spec.kafka.sasl"
                                .into(),
                        ));
                    }
                    None => None,
                };
                if k.bootstrap_servers.trim().is_empty() {
                    return Err(ConfigError::Invalid(
                        "spec.kafka.bootstrapServers is empty".into(),
                    ));
                }
                Ok(BrokerConfig::Kafka(KafkaConfig {
                    bootstrap_servers: k.bootstrap_servers.clone(),
                    security_protocol: k.security_protocol,
                    sasl,
                    tls: tls_material(k.tls.as_ref(), &secret)?,
                }))
            }
            (None, Some(r)) => {
                let url = parse_amqp_url(&r.url)
                    .map_err(|e| ConfigError::Invalid(format!("spec.rabbitmq.url: {e}")))?;
                if url.password().is_some() || !url.username().is_empty() {
                    return Err(ConfigError::Invalid(
                        "spec.rabbitmq.url must not contain credentials; put them in a Secret and reference it with spec.rabbitmq.secretRef".into(),
                    ));
                }
                let (username, password) = match &r.secret_ref {
                    Some(s) => {
                        let (u, p) = credentials(s, &secret)?;
                        (Some(u), Some(p))
                    }
                    None => (None, None),
                };
                let tls = tls_material(r.tls.as_ref(), &secret)?;
                if tls.insecure_skip_verify {
                    // lapin's TLS configuration has no switch for this.
                    return Err(ConfigError::Invalid(
                        "spec.rabbitmq.tls.insecureSkipVerify is not supported for RabbitMQ; give the CA that signs the broker's certificate in spec.rabbitmq.tls.caSecretRef".into(),
                    ));
                }
                Ok(BrokerConfig::RabbitMq(RabbitMqConfig {
                    url: r.url.clone(),
                    username,
                    password,
                    tls,
                }))
            }
            _ => Err(ConfigError::Invalid(
                "exactly one of spec.kafka and spec.rabbitmq must be set".into(),
            )),
        }
    }

    /// A plaintext Kafka config for a bootstrap string (tests, CLI).
    pub fn kafka(bootstrap: &str) -> BrokerConfig {
        BrokerConfig::Kafka(KafkaConfig {
            bootstrap_servers: bootstrap.to_string(),
            security_protocol: KafkaSecurityProtocol::Plaintext,
            sasl: None,
            tls: TlsMaterial::default(),
        })
    }

    /// A RabbitMQ config from a full AMQP URL that may carry `user:pass@` (tests, CLI): the
    /// credentials are percent-decoded and split out of the URL.
    pub fn amqp(url: &str) -> Result<BrokerConfig, ConfigError> {
        let mut parsed = parse_amqp_url(url).map_err(ConfigError::Invalid)?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| {
                    ConfigError::Invalid("the AMQP URL's credentials are not UTF-8".into())
                })
        };
        let username = match parsed.username() {
            "" => None,
            u => Some(decode(u)?),
        };
        let password = parsed.password().map(decode).transpose()?;
        // Neither can fail on a URL with a host, which parse_amqp_url checked.
        let _ = parsed.set_password(None);
        let _ = parsed.set_username("");
        Ok(BrokerConfig::RabbitMq(RabbitMqConfig {
            url: parsed.to_string(),
            username,
            password,
            tls: TlsMaterial::default(),
        }))
    }

    /// `"kafka"` or `"rabbitmq"`, as in the connector's `status.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerConfig::Kafka(_) => "kafka",
            BrokerConfig::RabbitMq(_) => "rabbitmq",
        }
    }

    /// What this config reaches, for messages: `Kafka at host:9092` or
    /// `RabbitMQ at amqp://host:5672/%2f`. Never contains a password.
    pub fn describe(&self) -> String {
        match self {
            BrokerConfig::Kafka(k) => format!("Kafka at {}", k.bootstrap_servers),
            BrokerConfig::RabbitMq(r) => format!("RabbitMQ at {}", redact_url(&r.url)),
        }
    }
}

/// Parses an `amqp://` or `amqps://` URL with a host.
fn parse_amqp_url(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "amqp" | "amqps") {
        return Err("must start with amqp:// or amqps://".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(parsed)
}

/// The URL without its credentials (the username stays, the password is masked).
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("xxxxx"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparsable: show only the part before any `@`, which is where credentials would be.
        Err(_) => match url.rsplit_once('@') {
            Some((_, host)) => format!("…@{host}"),
            None => url.to_string(),
        },
    }
}

/// Replaces every occurrence of `secret` in `text` (error messages from the client libraries).
fn scrub(text: String, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() && text.contains(s) => text.replace(s, REDACTED),
        _ => text,
    }
}

fn secret_value(
    secret: &impl Fn(&str) -> Option<SecretData>,
    name: &str,
    key: &str,
) -> Result<String, ConfigError> {
    let data = secret(name).ok_or_else(|| ConfigError::SecretNotFound {
        name: name.to_string(),
    })?;
    let value = data.get(key).ok_or_else(|| ConfigError::SecretKeyMissing {
        name: name.to_string(),
        key: key.to_string(),
    })?;
    String::from_utf8(value.clone())
        .map_err(|_| ConfigError::Invalid(format!("key {key:?} of Secret {name:?} is not UTF-8")))
}

fn credentials(
    r: &CredentialsSecretRef,
    secret: &impl Fn(&str) -> Option<SecretData>,
) -> Result<(String, String), ConfigError> {
    Ok((
        secret_value(secret, &r.name, &r.username_key)?,
        secret_value(secret, &r.name, &r.password_key)?,
    ))
}

fn tls_material(
    tls: Option<&TlsConfig>,
    secret: &impl Fn(&str) -> Option<SecretData>,
) -> Result<TlsMaterial, ConfigError> {
    let Some(tls) = tls else {
        return Ok(TlsMaterial::default());
    };
    let ca_pem = tls
        .ca_secret_ref
        .as_ref()
        .map(|r| secret_value(secret, &r.name, &r.key))
        .transpose()?;
    let (client_cert_pem, client_key_pem) = match &tls.client_cert_secret_ref {
        Some(r) => (
            Some(secret_value(secret, &r.name, "tls.crt")?),
            Some(secret_value(secret, &r.name, "tls.key")?),
        ),
        None => (None, None),
    };
    Ok(TlsMaterial {
        ca_pem,
        client_cert_pem,
        client_key_pem,
        insecure_skip_verify: tls.insecure_skip_verify,
    })
}

/// Why talking to a broker failed. Messages never contain passwords.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached (connection refused, DNS, all brokers down).
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// The broker refused the credentials.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The broker refused to take a message (RabbitMQ nack).
    #[error("the broker rejected the message: {0}")]
    Nacked(String),
    /// No queue is bound to receive the message (RabbitMQ mandatory publish returned).
    #[error("the message published to {target} was returned: no queue is bound to receive it")]
    Unroutable {
        /// The target the message was published to, e.g. `exchange orders (routing key x)`.
        target: String,
    },
    /// The broker did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A topic, queue or exchange does not exist; the message names it, e.g. `topic orders`.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A Kafka transactional producer was fenced: another producer with the same
    /// `transactional.id` (a newer execution of the same run stage) took over.
    #[error("fenced by a newer producer of the same stage: {0}")]
    Fenced(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl BrokerError {
    /// A short label for conditions and metrics: `Unreachable`, `AuthFailed`, `Nacked`,
    /// `Unroutable`, `Timeout`, `NotFound`, `Fenced` or `BrokerError`.
    pub fn reason(&self) -> &'static str {
        match self {
            BrokerError::Unreachable(_) => "Unreachable",
            BrokerError::AuthFailed(_) => "AuthFailed",
            BrokerError::Nacked(_) => "Nacked",
            BrokerError::Unroutable { .. } => "Unroutable",
            BrokerError::Timeout(_) => "Timeout",
            BrokerError::NotFound(_) => "NotFound",
            BrokerError::Fenced(_) => "Fenced",
            BrokerError::Other(_) => "BrokerError",
        }
    }
}

/// Probes the broker: a Kafka metadata request, or opening (and closing) an AMQP connection,
/// within `timeout`. Ok tells what was reached, e.g. `Kafka at 127.0.0.1:9092: 1 broker(s)`.
/// Failures are classified into [`BrokerError::Unreachable`] and [`BrokerError::AuthFailed`]
/// where the client tells them apart.
pub async fn probe(cfg: &BrokerConfig, timeout: Duration) -> Result<String, BrokerError> {
    match cfg {
        BrokerConfig::Kafka(k) => kafka::probe(k, timeout).await,
        BrokerConfig::RabbitMq(r) => rabbitmq::probe(r, timeout).await,
    }
}

/// Tuning of a [`Producer`].
#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// How long a message may wait for its acknowledgement: Kafka's `message.timeout.ms`, the
    /// wait for a RabbitMQ publisher confirm.
    pub delivery_timeout: Duration,
    /// At most this many RabbitMQ publisher confirms outstanding; `send` waits for a slot.
    pub max_in_flight: usize,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            delivery_timeout: Duration::from_secs(30),
            max_in_flight: 1000,
        }
    }
}

/// Where the broker stored a message: partition and offset on Kafka, the publisher-confirm
/// delivery tag on RabbitMQ.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    /// The Kafka partition.
    pub partition: Option<i32>,
    /// The offset in the Kafka partition.
    pub offset: Option<i64>,
    /// The RabbitMQ delivery tag of the channel.
    pub delivery_tag: Option<u64>,
}

/// The broker's acknowledgement of one message, still to come.
pub type PendingDelivery = futures::future::BoxFuture<'static, Result<Delivery, BrokerError>>;

/// A connection to one broker that publishes messages with acknowledgements: an idempotent
/// rdkafka producer with `acks=all`, or a lapin channel in confirm mode.
pub struct Producer {
    inner: ProducerInner,
}

enum ProducerInner {
    Kafka(kafka::KafkaProducer),
    RabbitMq(Box<rabbitmq::RabbitProducer>),
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            ProducerInner::Kafka(_) => "kafka",
            ProducerInner::RabbitMq(_) => "rabbitmq",
        };
        f.debug_struct("Producer").field("kind", &kind).finish()
    }
}

impl Producer {
    /// Connects to the broker. Fails with [`BrokerError::Unreachable`] or
    /// [`BrokerError::AuthFailed`] when the broker cannot be used.
    pub async fn connect(
        cfg: &BrokerConfig,
        opts: ProducerOptions,
    ) -> Result<Producer, BrokerError> {
        let inner = match cfg {
            BrokerConfig::Kafka(k) => {
                ProducerInner::Kafka(kafka::KafkaProducer::connect(k, &opts).await?)
            }
            BrokerConfig::RabbitMq(r) => ProducerInner::RabbitMq(Box::new(
                rabbitmq::RabbitProducer::connect(r, &opts).await?,
            )),
        };
        Ok(Producer { inner })
    }

    /// Enqueues one message and returns at once with a future of its broker acknowledgement,
    /// so that callers keep many in flight (they bound the window themselves, e.g. with
    /// `FuturesUnordered`). Waits, without blocking the thread, only while the client's local
    /// queue is full (Kafka) or `max_in_flight` confirms are outstanding (RabbitMQ). A message
    /// counts as published only when its future resolves to `Ok`.
    ///
    /// A target that does not fit the broker (a topic on RabbitMQ, a queue or an exchange on
    /// Kafka) is [`BrokerError::Other`].
    pub async fn send(
        &self,
        target: &Target,
        msg: &Message,
    ) -> Result<PendingDelivery, BrokerError> {
        match (&self.inner, target) {
            (ProducerInner::Kafka(p), Target::Topic(topic)) => p.send(topic, msg).await,
            (ProducerInner::RabbitMq(p), Target::Exchange(exchange)) => {
                let routing_key = msg.routing_key.as_deref().unwrap_or("");
                p.send(exchange, routing_key, target, msg).await
            }
            (ProducerInner::RabbitMq(p), Target::Queue(queue)) => {
                p.send("", queue, target, msg).await
            }
            (ProducerInner::Kafka(_), _) => Err(BrokerError::Other(format!(
                "cannot publish to {target} on Kafka: Kafka has topics only"
            ))),
            (ProducerInner::RabbitMq(_), _) => Err(BrokerError::Other(format!(
                "cannot publish to {target} on RabbitMQ: use an exchange or a queue"
            ))),
        }
    }

    /// Waits for every outstanding delivery (a Kafka flush, the RabbitMQ confirms) and closes
    /// the connection.
    pub async fn close(self) -> Result<(), BrokerError> {
        match self.inner {
            ProducerInner::Kafka(p) => p.close().await,
            ProducerInner::RabbitMq(p) => p.close().await,
        }
    }
}

/// A Kafka transactional producer for one run stage (`publish.delivery: ExactlyOnce`): messages
/// go out in transactions that also commit the stage's progress to a compacted topic
/// ([`progress_topic`]), so a `read_committed` consumer sees each message once, and a newer
/// producer of the same `transactional.id` fences this one.
pub struct TransactionalProducer {
    inner: kafka_txn::TxnProducer,
}

impl fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionalProducer").finish()
    }
}

impl TransactionalProducer {
    /// Connects to Kafka as `transactional_id`, fencing every older producer of that id (its
    /// open transaction is aborted), and reads the progress the id last committed (None when
    /// it never committed). The progress topic is created (compacted) when missing.
    pub async fn connect(
        cfg: &KafkaConfig,
        transactional_id: &str,
        progress_topic: &str,
        opts: ProducerOptions,
    ) -> Result<(TransactionalProducer, Option<u64>), BrokerError> {
        let (inner, committed) = kafka_txn::TxnProducer::connect(
            cfg,
            transactional_id,
            progress_topic,
            opts.delivery_timeout,
        )
        .await?;
        Ok((TransactionalProducer { inner }, committed))
    }

    /// Begins a transaction.
    pub fn begin(&self) -> Result<(), TxnFailure> {
        self.inner.begin()
    }

    /// Enqueues a message in the open transaction; see [`Producer::send`]. A message counts
    /// only once its transaction committed.
    pub async fn send(
        &mut self,
        topic: &str,
        msg: &Message,
    ) -> Result<PendingDelivery, BrokerError> {
        self.inner.send(topic, msg).await
    }

    /// Adds the progress record `published` (messages committed, this transaction's included)
    /// and commits. On an abortable failure the transaction is aborted (`aborted: true`).
    pub async fn commit(&self, published: u64) -> Result<(), TxnFailure> {
        self.inner.commit(published).await
    }

    /// `e`, or [`BrokerError::Fenced`] when this producer was fenced (its fatal error).
    pub fn fenced_or(&self, e: BrokerError) -> BrokerError {
        self.inner.fenced_or(e)
    }

    /// Aborts the open transaction.
    pub async fn abort(&self) -> Result<(), TxnFailure> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{KafkaConnection, KafkaSasl, RabbitMqConnection, SecretKeyRef, SecretRef};

    fn secrets(list: &[(&str, &[(&str, &str)])]) -> impl Fn(&str) -> Option<SecretData> + use<> {
        let map: BTreeMap<String, SecretData> = list
            .iter()
            .map(|(name, data)| {
                let data = data
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect();
                (name.to_string(), data)
            })
            .collect();
        move |name| map.get(name).cloned()
    }

    fn creds_ref(name: &str) -> CredentialsSecretRef {
        CredentialsSecretRef {
            name: name.into(),
            username_key: "username".into(),
            password_key: "password".into(),
        }
    }

    fn rabbit_spec(secret: Option<&str>) -> BrokerConnectorSpec {
        BrokerConnectorSpec {
            kafka: None,
            rabbitmq: Some(RabbitMqConnection {
                url: "amqp://rabbitmq:5672/%2f".into(),
                secret_ref: secret.map(creds_ref),
                tls: None,
            }),
        }
    }

    fn kafka_spec() -> BrokerConnectorSpec {
        BrokerConnectorSpec {
            kafka: Some(KafkaConnection {
                bootstrap_servers: "kafka-0:9092,kafka-1:9092".into(),
                security_protocol: KafkaSecurityProtocol::SaslSsl,
                sasl: Some(KafkaSasl {
                    mechanism: SaslMechanism::ScramSha256,
                    secret_ref: creds_ref("kafka-creds"),
                }),
                tls: Some(TlsConfig {
                    ca_secret_ref: Some(SecretKeyRef {
                        name: "ca".into(),
                        key: "ca.crt".into(),
                    }),
                    client_cert_secret_ref: Some(SecretRef {
                        name: "client".into(),
                    }),
                    insecure_skip_verify: false,
                }),
            }),
            rabbitmq: None,
        }
    }

    #[test]
    fn kafka_spec_with_secrets() {
        let secret = secrets(&[
            (
                "kafka-creds",
                &[("username", "alice"), ("password", "s3cret-pw")],
            ),
            ("ca", &[("ca.crt", "CA PEM")]),
            ("client", &[("tls.crt", "CERT PEM"), ("tls.key", "KEY PEM")]),
        ]);
        let cfg = BrokerConfig::from_spec(&kafka_spec(), secret).unwrap();
        assert_eq!(cfg.kind(), "kafka");
        assert_eq!(cfg.describe(), "Kafka at kafka-0:9092,kafka-1:9092");
        let BrokerConfig::Kafka(k) = &cfg else {
            panic!("not kafka: {cfg:?}")
        };
        assert_eq!(k.security_protocol, KafkaSecurityProtocol::SaslSsl);
        assert_eq!(
            k.sasl,
            Some(SaslCredentials {
                mechanism: SaslMechanism::ScramSha256,
                username: "alice".into(),
                password: "s3cret-pw".into(),
            })
        );
        assert_eq!(k.tls.ca_pem.as_deref(), Some("CA PEM"));
        assert_eq!(k.tls.client_cert_pem.as_deref(), Some("CERT PEM"));
        assert_eq!(k.tls.client_key_pem.as_deref(), Some("KEY PEM"));
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("s3cret-pw"), "{debug}");
        assert!(!debug.contains("KEY PEM"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
    }

    #[test]
    fn missing_secrets_and_keys() {
        let err = BrokerConfig::from_spec(&kafka_spec(), secrets(&[])).unwrap_err();
        assert!(
            matches!(&err, ConfigError::SecretNotFound { name } if name == "kafka-creds"),
            "{err:?}"
        );
        assert_eq!(err.reason(), "SecretNotFound");
        assert_eq!(err.to_string(), "Secret \"kafka-creds\" not found");

        let secret = secrets(&[
            ("kafka-creds", &[("username", "alice"), ("password", "pw")]),
            ("ca", &[("ca.crt", "CA PEM")]),
            ("client", &[("tls.crt", "CERT PEM")]),
        ]);
        let err = BrokerConfig::from_spec(&kafka_spec(), secret).unwrap_err();
        assert!(
            matches!(&err, ConfigError::SecretKeyMissing { name, key } if name == "client" && key == "tls.key"),
            "{err:?}"
        );
        assert_eq!(err.reason(), "SecretNotFound");
        assert_eq!(err.to_string(), "Secret \"client\" has no key \"tls.key\"");

        let secret = secrets(&[("rabbit", &[("username", "bob")])]);
        let err = BrokerConfig::from_spec(&rabbit_spec(Some("rabbit")), secret).unwrap_err();
        assert!(
            matches!(&err, ConfigError::SecretKeyMissing { key, .. } if key == "password"),
            "{err:?}"
        );
    }

    #[test]
    fn rabbitmq_spec_with_and_without_secret() {
        let cfg = BrokerConfig::from_spec(&rabbit_spec(None), secrets(&[])).unwrap();
        assert_eq!(
            cfg,
            BrokerConfig::RabbitMq(RabbitMqConfig {
                url: "amqp://rabbitmq:5672/%2f".into(),
                username: None,
                password: None,
                tls: TlsMaterial::default(),
            })
        );
        assert_eq!(cfg.kind(), "rabbitmq");
        assert_eq!(cfg.describe(), "RabbitMQ at amqp://rabbitmq:5672/%2f");

        let secret = secrets(&[("rabbit", &[("username", "bob"), ("password", "hunter2!")])]);
        let cfg = BrokerConfig::from_spec(&rabbit_spec(Some("rabbit")), secret).unwrap();
        let BrokerConfig::RabbitMq(r) = &cfg else {
            panic!("{cfg:?}")
        };
        assert_eq!(r.username.as_deref(), Some("bob"));
        assert_eq!(r.password.as_deref(), Some("hunter2!"));
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert!(!cfg.describe().contains("hunter2"));
    }

    #[test]
    fn invalid_specs() {
        let both = BrokerConnectorSpec {
            kafka: kafka_spec().kafka,
            rabbitmq: rabbit_spec(None).rabbitmq,
        };
        let err = BrokerConfig::from_spec(&both, secrets(&[])).unwrap_err();
        assert_eq!(err.reason(), "InvalidConfig");
        let err =
            BrokerConfig::from_spec(&BrokerConnectorSpec::default(), secrets(&[])).unwrap_err();
        assert_eq!(err.reason(), "InvalidConfig");

        let mut spec = rabbit_spec(None);
        spec.rabbitmq.as_mut().unwrap().url = "amqp://u:p@rabbitmq:5672/%2f".into();
        let err = BrokerConfig::from_spec(&spec, secrets(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "{err:?}");
        assert!(!err.to_string().contains("u:p"), "{err}");

        spec.rabbitmq.as_mut().unwrap().url = "http://rabbitmq".into();
        let err = BrokerConfig::from_spec(&spec, secrets(&[])).unwrap_err();
        assert!(err.to_string().contains("spec.rabbitmq.url"), "{err}");

        let mut spec = kafka_spec();
        spec.kafka.as_mut().unwrap().sasl = None;
        let err = BrokerConfig::from_spec(&spec, secrets(&[])).unwrap_err();
        assert!(err.to_string().contains("spec.kafka.sasl"), "{err}");
    }

    #[test]
    fn amqp_url_credentials_are_split_out() {
        let cfg = BrokerConfig::amqp("amqp://devset:p%40ss%3Aw0rd@127.0.0.1:5672/%2f").unwrap();
        let BrokerConfig::RabbitMq(r) = &cfg else {
            panic!("{cfg:?}")
        };
        assert_eq!(r.url, "amqp://127.0.0.1:5672/%2f");
        assert_eq!(r.username.as_deref(), Some("devset"));
        assert_eq!(r.password.as_deref(), Some("p@ss:w0rd"));
        assert_eq!(cfg.describe(), "RabbitMQ at amqp://127.0.0.1:5672/%2f");
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains("p@ss") && !debug.contains("p%40ss"),
            "{debug}"
        );

        let cfg = BrokerConfig::amqp("amqps://broker/vhost").unwrap();
        assert_eq!(
            cfg,
            BrokerConfig::RabbitMq(RabbitMqConfig {
                url: "amqps://broker/vhost".into(),
                username: None,
                password: None,
                tls: TlsMaterial::default(),
            })
        );
        assert!(BrokerConfig::amqp("https://broker").is_err());
        assert!(BrokerConfig::amqp("not a url").is_err());
    }

    #[test]
    fn describe_and_debug_never_show_passwords() {
        let cfg = BrokerConfig::RabbitMq(RabbitMqConfig {
            url: "amqp://guest:topsecret@h:5672/%2f".into(),
            username: Some("guest".into()),
            password: Some("topsecret".into()),
            tls: TlsMaterial {
                client_key_pem: Some("PRIVATE KEY".into()),
                ..Default::default()
            },
        });
        for text in [cfg.describe(), format!("{cfg:?}")] {
            assert!(!text.contains("topsecret"), "{text}");
            assert!(!text.contains("PRIVATE KEY"), "{text}");
        }
        assert_eq!(
            scrub("bad password topsecret".into(), Some("topsecret")),
            "bad password <redacted>"
        );
    }

    #[test]
    fn error_reasons() {
        let cases = [
            (BrokerError::Unreachable("x".into()), "Unreachable"),
            (BrokerError::AuthFailed("x".into()), "AuthFailed"),
            (BrokerError::Nacked("x".into()), "Nacked"),
            (
                BrokerError::Unroutable {
                    target: "exchange e".into(),
                },
                "Unroutable",
            ),
            (BrokerError::Timeout("x".into()), "Timeout"),
            (BrokerError::NotFound("topic x".into()), "NotFound"),
            (BrokerError::Fenced("x".into()), "Fenced"),
            (BrokerError::Other("x".into()), "BrokerError"),
        ];
        for (err, reason) in cases {
            assert_eq!(err.reason(), reason, "{err}");
        }
        assert_eq!(ConfigError::Invalid("x".into()).reason(), "InvalidConfig");
    }

    #[test]
    fn producer_options_defaults() {
        let o = ProducerOptions::default();
        assert_eq!(o.delivery_timeout, Duration::from_secs(30));
        assert_eq!(o.max_in_flight, 1000);
    }
}
