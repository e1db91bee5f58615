//! A message as the engine renders it and a broker adapter sends it.

/// One rendered message of a publish stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The sequence number in its stage: 1, 2, 3, …
    pub seq: u64,
    /// The Kafka key; for RabbitMQ it travels as the `devset.key` header.
    pub key: Option<String>,
    /// Header name to value.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub payload: String,
    /// The RabbitMQ routing key when the target is an exchange.
    pub routing_key: Option<String>,
}

/// Where a publish stage sends its messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Kafka topic.
    Topic(String),
    /// A RabbitMQ exchange; each message's `routing_key` routes it.
    Exchange(String),
    /// A RabbitMQ queue, through the default exchange.
    Queue(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Topic(t) => write!(f, "topic {t}"),
            Target::Exchange(e) => write!(f, "exchange {e}"),
            Target::Queue(q) => write!(f, "queue {q}"),
        }
    }
}
