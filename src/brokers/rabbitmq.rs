//! The RabbitMQ adapter: one lapin connection with one channel in publisher-confirm mode.

use super::{BrokerError, Delivery, PendingDelivery, ProducerOptions, RabbitMqConfig, scrub};
use crate::message::{Message, Target};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    DefaultConnectionBuilder, ErrorKind,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    tcp::{OwnedIdentity, OwnedTLSConfig},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    uri::AMQPUri,
};
use std::{sync::Arc, time::Duration};
use tokio::sync::{Mutex, Semaphore};

/// The header that carries a message's key.
pub(super) const KEY_HEADER: &str = "devset.key";

/// The AMQP URI with the credentials of the config. It is built as a value, never formatted:
/// its `Display` would show the password.
fn amqp_uri(cfg: &RabbitMqConfig) -> Result<AMQPUri, BrokerError> {
    let mut uri: AMQPUri = cfg.url.parse().map_err(|e| {
        BrokerError::Other(format!("AMQP URL {}: {e}", super::redact_url(&cfg.url)))
    })?;
    // amq-protocol takes only a domain name as the host; keep an IP address too.
    if let Ok(url) = url::Url::parse(&cfg.url)
        && let Some(host) = url.host_str()
    {
        uri.authority.host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
    }
    if let Some(username) = &cfg.username {
        uri.authority.userinfo.username = username.clone();
    }
    if let Some(password) = &cfg.password {
        uri.authority.userinfo.password = password.clone();
    }
    Ok(uri)
}

fn tls_config(cfg: &RabbitMqConfig) -> OwnedTLSConfig {
    let identity = match (&cfg.tls.client_cert_pem, &cfg.tls.client_key_pem) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: cert.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
        }),
        _ => None,
    };
    OwnedTLSConfig {
        identity,
        cert_chain: cfg.tls.ca_pem.clone(),
    }
}

/// Classifies a lapin error; `what` says what failed.
pub(super) fn classify(e: &lapin::Error, what: &str, cfg: &RabbitMqConfig) -> BrokerError {
    let detail = scrub(format!("{what}: {e}"), cfg.password.as_deref());
    match e.kind() {
        // A channel or connection that a lost connection left closed or in error.
        ErrorKind::IOError(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidConnectionState(_) => BrokerError::Unreachable(detail),
        ErrorKind::AuthProviderError(_) => BrokerError::AuthFailed(detail),
        // 403 ACCESS_REFUSED (bad credentials), 530 NOT_ALLOWED (no access to the vhost).
        ErrorKind::ProtocolError(p) if matches!(p.get_id(), 403 | 530) => {
            BrokerError::AuthFailed(detail)
        }
        _ if detail.contains("ACCESS_REFUSED") => BrokerError::AuthFailed(detail),
        _ => BrokerError::Other(detail),
    }
}

pub(super) async fn open(
    cfg: &RabbitMqConfig,
    timeout: Duration,
) -> Result<Connection, BrokerError> {
    let uri = amqp_uri(cfg)?;
    let builder = DefaultConnectionBuilder::new()
        .map_err(|e| BrokerError::Other(format!("AMQP runtime: {e}")))?
        .with_uri(uri)
        .with_tls_config(tls_config(cfg))
        .with_properties(ConnectionProperties::default().with_connection_name("devset".into()));
    let where_ = super::redact_url(&cfg.url);
    match tokio::time::timeout(timeout, builder.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(classify(&e, &format!("connecting to {where_}"), cfg)),
        Err(_) => Err(BrokerError::Unreachable(format!(
            "connecting to {where_}: no answer within {}s",
            timeout.as_secs_f32()
        ))),
    }
}

/// Opens and closes a connection; see [`super::probe`].
pub(super) async fn probe(cfg: &RabbitMqConfig, timeout: Duration) -> Result<String, BrokerError> {
    let conn = open(cfg, timeout).await?;
    let _ = tokio::time::timeout(timeout, conn.close(200, "probe done".into())).await;
    Ok(format!("RabbitMQ at {}", super::redact_url(&cfg.url)))
}

/// See [`super::Producer`].
pub(super) struct RabbitProducer {
    /// The connection and its channel; held while publishing so that tags match the broker's.
    link: Mutex<Link>,
    cfg: RabbitMqConfig,
    in_flight: Arc<Semaphore>,
    confirm_timeout: Duration,
}

/// A connection with one channel in confirm mode.
struct Link {
    conn: Connection,
    channel: Channel,
    /// The channel's next delivery tag.
    next_tag: u64,
}

impl Link {
    async fn open(cfg: &RabbitMqConfig, timeout: Duration) -> Result<Link, BrokerError> {
        let conn = open(cfg, timeout).await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| classify(&e, "opening a channel", cfg))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| classify(&e, "confirm.select", cfg))?;
        Ok(Link {
            conn,
            channel,
            next_tag: 1,
        })
    }
}

impl RabbitProducer {
    pub(super) async fn connect(
        cfg: &RabbitMqConfig,
        opts: &ProducerOptions,
    ) -> Result<RabbitProducer, BrokerError> {
        Ok(RabbitProducer {
            link: Mutex::new(Link::open(cfg, opts.delivery_timeout).await?),
            cfg: cfg.clone(),
            in_flight: Arc::new(Semaphore::new(opts.max_in_flight.max(1))),
            confirm_timeout: opts.delivery_timeout,
        })
    }

    pub(super) async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        target: &Target,
        msg: &Message,
    ) -> Result<PendingDelivery, BrokerError> {
        let permit = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| BrokerError::Other("the producer is closed".into()))?;
        let mut headers = FieldTable::default();
        for (k, v) in &msg.headers {
            headers.insert(
                ShortString::from(k.as_str()),
                AMQPValue::LongString(LongString::from(v.as_str())),
            );
        }
        if let Some(key) = &msg.key {
            headers.insert(
                ShortString::from(KEY_HEADER),
                AMQPValue::LongString(LongString::from(key.as_str())),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let describe_target = || match target {
            Target::Exchange(_) => format!("{target} with routing key {routing_key:?}"),
            _ => target.to_string(),
        };
        let (tag, confirm) = {
            let mut link = self.link.lock().await;
            if !link.channel.status().connected() {
                // The connection was lost (a broker restart): the publishes still awaiting
                // their confirms fail with it, and a later attempt of the stage publishes on a
                // new connection rather than failing at once on the dead one.
                let fresh = Link::open(&self.cfg, self.confirm_timeout).await?;
                let old = std::mem::replace(&mut *link, fresh);
                let _ = old.conn.close(200, "reconnected".into()).await;
            }
            let confirm = link
                .channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(routing_key),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    msg.payload.as_bytes(),
                    properties,
                )
                .await
                .map_err(|e| {
                    classify(
                        &e,
                        &format!("publishing to {}", describe_target()),
                        &self.cfg,
                    )
                })?;
            let tag = link.next_tag;
            link.next_tag += 1;
            (tag, confirm)
        };
        let cfg = self.cfg.clone();
        let timeout = self.confirm_timeout;
        let target = describe_target();
        Ok(Box::pin(async move {
            let _permit = permit; // released when the confirm resolves
            let confirmation = match tokio::time::timeout(timeout, confirm).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(classify(&e, &format!("publishing to {target}"), &cfg)),
                Err(_) => {
                    return Err(BrokerError::Timeout(format!(
                        "no publisher confirm for the message to {target} within {}s",
                        timeout.as_secs_f32()
                    )));
                }
            };
            match confirmation {
                Confirmation::Ack(None) => Ok(Delivery {
                    partition: None,
                    offset: None,
                    delivery_tag: Some(tag),
                }),
                Confirmation::Ack(Some(_returned)) => Err(BrokerError::Unroutable { target }),
                Confirmation::Nack(_) => Err(BrokerError::Nacked(format!(
                    "the broker nacked the message to {target}"
                ))),
                Confirmation::NotRequested => Err(BrokerError::Other(
                    "the channel is not in confirm mode".into(),
                )),
            }
        }))
    }

    pub(super) async fn close(self) -> Result<(), BrokerError> {
        let link = self.link.into_inner();
        let waited =
            tokio::time::timeout(self.confirm_timeout, link.channel.wait_for_confirms()).await;
        self.in_flight.close();
        let _ = link.channel.close(200, "done".into()).await;
        let _ = link.conn.close(200, "done".into()).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify(&e, "waiting for publisher confirms", &self.cfg)),
            Err(_) => Err(BrokerError::Timeout(format!(
                "publisher confirms still outstanding after {}s",
                self.confirm_timeout.as_secs_f32()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::{BrokerConfig, TlsMaterial};

    #[test]
    fn uri_carries_the_credentials_and_an_ip_host() {
        let BrokerConfig::RabbitMq(cfg) =
            BrokerConfig::amqp("amqp://dev%20set:p%40ss@127.0.0.1:5673/%2f").unwrap()
        else {
            unreachable!()
        };
        let uri = amqp_uri(&cfg).unwrap();
        assert_eq!(uri.authority.host, "127.0.0.1");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.authority.userinfo.username, "dev set");
        assert_eq!(uri.authority.userinfo.password, "p@ss");
        assert_eq!(uri.vhost, "/");
    }

    #[test]
    fn without_credentials_the_defaults_apply() {
        let cfg = RabbitMqConfig {
            url: "amqps://rabbit.example/prod".into(),
            username: None,
            password: None,
            tls: TlsMaterial {
                ca_pem: Some("CA".into()),
                client_cert_pem: Some("CERT".into()),
                client_key_pem: Some("KEY".into()),
                insecure_skip_verify: false,
            },
        };
        let uri = amqp_uri(&cfg).unwrap();
        assert_eq!(uri.authority.host, "rabbit.example");
        assert_eq!(uri.authority.port, 5671);
        assert_eq!(uri.authority.userinfo.username, "guest");
        assert_eq!(uri.vhost, "prod");
        let tls = tls_config(&cfg);
        assert_eq!(tls.cert_chain.as_deref(), Some("CA"));
        assert!(matches!(tls.identity, Some(OwnedIdentity::PKCS8 { .. })));
    }
}
