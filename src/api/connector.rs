use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// How to reach the broker: set exactly one of `kafka` and `rabbitmq`.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "devset.io",
    version = "v1alpha1",
    kind = "BrokerConnector",
    plural = "brokerconnectors",
    shortname = "bc",
    namespaced,
    doc = "How to reach one message broker, Kafka or RabbitMQ. The controller probes it and reports a Ready condition. Credentials come from a Secret, never inline.",
    status = "BrokerConnectorStatus",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".status.type",
        description = "kafka or rabbitmq"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.kafka) != has(self.rabbitmq)")
    .message("exactly one of spec.kafka and spec.rabbitmq must be set"))]
#[serde(rename_all = "camelCase")]
pub struct BrokerConnectorSpec {
    /// Connect to an Apache Kafka cluster. Set exactly one of `kafka` and `rabbitmq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConnection>,
    /// Connect to a RabbitMQ broker over AMQP 0-9-1. Set exactly one of `kafka` and `rabbitmq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitMqConnection>,
}

/// A Kafka cluster.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.sasl) || self.securityProtocol in ['SASL_PLAINTEXT', 'SASL_SSL']")
    .message("spec.kafka.sasl needs securityProtocol SASL_PLAINTEXT or SASL_SSL"))]
#[serde(rename_all = "camelCase")]
pub struct KafkaConnection {
    /// Comma-separated `host:port` list of bootstrap brokers, e.g. `kafka-0.kafka:9092,kafka-1.kafka:9092`.
    #[x_kube(validation = Rule::new("self.matches('^[^,: ]+:[0-9]{1,5}(,[^,: ]+:[0-9]{1,5})*$')")
        .message("must be a comma-separated list of host:port"))]
    #[schemars(length(min = 1, max = 2048))]
    pub bootstrap_servers: String,
    /// How to talk to the brokers. Defaults to `PLAINTEXT`.
    #[serde(default)]
    pub security_protocol: KafkaSecurityProtocol,
    /// SASL authentication; the username and password come from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// TLS settings, used with `SSL` and `SASL_SSL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// The Kafka `security.protocol`.
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[allow(clippy::upper_case_acronyms)]
pub enum KafkaSecurityProtocol {
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    #[serde(rename = "SSL")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

/// SASL settings for Kafka.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// The SASL mechanism. Defaults to `SCRAM-SHA-512`.
    #[serde(default)]
    pub mechanism: SaslMechanism,
    /// The Secret holding the username and password.
    pub secret_ref: CredentialsSecretRef,
}

/// A SASL mechanism.
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// A RabbitMQ broker.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RabbitMqConnection {
    /// The AMQP URL, `amqp://host:port/vhost` or `amqps://…`. It must not contain a password:
    /// put the credentials in a Secret and name it in `secretRef`. An empty vhost (`/`) or
    /// `%2f` means the default vhost `/`.
    #[x_kube(validation = Rule::new("self.matches('^amqps?://')")
        .message("must start with amqp:// or amqps://"))]
    #[x_kube(validation = Rule::new("!self.matches('^amqps?://[^/@]*:[^/@]*@')")
        .message("must not contain a password; put the credentials in a Secret and reference it with spec.rabbitmq.secretRef"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// The Secret holding the username and password. Without it the broker's defaults apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<CredentialsSecretRef>,
    /// TLS settings, used with `amqps://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// A Secret in the connector's namespace that holds a username and a password.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key of the username in the Secret. Defaults to `username`.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// The key of the password in the Secret. Defaults to `password`.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

/// TLS settings for a broker connection.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// A Secret key holding the PEM CA bundle that signs the broker's certificate. Without it
    /// the system roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A Secret of type `kubernetes.io/tls` (keys `tls.crt`, `tls.key`) for client
    /// certificate authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretRef>,
    /// Skip verifying the broker's certificate. For development only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// A Secret in the same namespace.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One key of a Secret in the same namespace.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What the controller last saw of the broker.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerConnectorStatus {
    /// `kafka` or `rabbitmq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` tells whether the last probe reached the broker; its reason is one of
    /// `Connected`, `Unreachable`, `AuthFailed`, `SecretNotFound`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
