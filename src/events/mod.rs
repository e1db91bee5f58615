//! The run event log: everything that happened in each run, numbered from 1, durable once
//! appended. The controller appends through [`EventLog`]; `devset api` reads the [`Store`].
//!
//! Two stores sit behind one interface: embedded SQLite (the default, a file on a volume the
//! controller and the API share) and PostgreSQL (several replicas, long retention).
//!
//! Bounds: payloads are cut at [`Limits::max_payload_bytes`] (the event says so), and a run
//! keeps at most [`Limits::max_message_events`] `message.published` events; the store counts
//! the ones beyond. Lifecycle events (phases, stages) are never dropped.

mod store;
mod writer;

pub use store::Store;
pub use writer::{EventLog, LogMetrics};

use crate::{
    api::RunPhase,
    brokers::Delivery,
    engine::{approval::Verdict, runner::StageOutcome},
    message::{Message, Target},
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, sync::Arc, time::Duration};

/// `run.phase`: the run entered `phase`.
pub const RUN_PHASE: &str = "run.phase";
/// `stage.started`: an attempt of a stage began.
pub const STAGE_STARTED: &str = "stage.started";
/// `stage.retrying`: an attempt failed and the stage tries again.
pub const STAGE_RETRYING: &str = "stage.retrying";
/// `stage.completed`: the stage succeeded.
pub const STAGE_COMPLETED: &str = "stage.completed";
/// `stage.failed`: the stage failed; `reason` and `message` say why.
pub const STAGE_FAILED: &str = "stage.failed";
/// `stage.stopped`: a stop halted the stage.
pub const STAGE_STOPPED: &str = "stage.stopped";
/// `stage.skipped`: the stage did not run (`when` was false: reason `ConditionFalse`).
pub const STAGE_SKIPPED: &str = "stage.skipped";
/// `stage.waiting`: an approval stage waits for a decision; `message` is its question.
pub const STAGE_WAITING: &str = "stage.waiting";
/// `stage.approved`: an approval stage was approved; `user` decided, `message` is the comment.
pub const STAGE_APPROVED: &str = "stage.approved";
/// `stage.rejected`: an approval stage was rejected; `user` decided, `message` is the comment.
pub const STAGE_REJECTED: &str = "stage.rejected";
/// `message.published`: the broker acknowledged a message.
pub const MESSAGE_PUBLISHED: &str = "message.published";
/// `message.received`: an expect stage read a message that matched.
pub const MESSAGE_RECEIVED: &str = "message.received";

/// Whether events of `kind` are messages: kept up to the per-run cap, counted beyond it.
pub fn is_message(kind: &str) -> bool {
    kind == MESSAGE_PUBLISHED || kind == MESSAGE_RECEIVED
}

/// One event of a run, as stored and as served (the `data:` of an SSE event).
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The sequence number in the run: 1, 2, 3, … (0 until appended).
    pub seq: u64,
    /// When it happened (RFC 3339).
    #[schemars(with = "String")]
    pub time: Timestamp,
    /// `run.phase`, `stage.started`, `stage.completed`, `stage.failed`, `message.published`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The run's namespace.
    pub namespace: String,
    /// The run's name.
    pub run: String,
    /// The run phase (`run.phase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// The stage (stage and message events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The stage attempt, from 1 (stage events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// A CamelCase word for why (phase changes, failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who decided an approval (`stage.approved`, `stage.rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The stage's outputs (`stage.completed`, `stage.failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<BTreeMap<String, String>>,
    /// Where a message went (`message.published`) or came from (`message.received`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<EventTarget>,
    /// The message's sequence number in its stage, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// The Kafka partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// The offset in the Kafka partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// The RabbitMQ publisher-confirm delivery tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_tag: Option<u64>,
    /// The message key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The message headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// The message payload, cut at the store's payload cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload's size in bytes before any cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<u64>,
    /// The payload was cut at the cap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payload_truncated: bool,
}

/// Where a published message went.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EventTarget {
    /// The BrokerConnector it went through.
    pub connector: String,
    /// The Kafka topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The RabbitMQ exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// The RabbitMQ routing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// The RabbitMQ queue (through the default exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

impl EventTarget {
    /// The target of a message sent through `connector`.
    pub fn new(connector: &str, target: &Target, routing_key: Option<&str>) -> Self {
        let mut t = EventTarget {
            connector: connector.to_owned(),
            ..Default::default()
        };
        match target {
            Target::Topic(x) => t.topic = Some(x.clone()),
            Target::Exchange(x) => {
                t.exchange = Some(x.clone());
                t.routing_key = routing_key.map(str::to_owned);
            }
            Target::Queue(x) => t.queue = Some(x.clone()),
        }
        t
    }
}

impl std::fmt::Display for EventTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(t) = &self.topic {
            write!(f, "topic {t}")?;
        } else if let Some(x) = &self.exchange {
            write!(f, "exchange {x}")?;
            if let Some(k) = &self.routing_key {
                write!(f, " key {k}")?;
            }
        } else if let Some(q) = &self.queue {
            write!(f, "queue {q}")?;
        }
        write!(f, " via {}", self.connector)
    }
}

impl Event {
    /// A new event of `kind` in a run, timed now.
    pub fn new(run: &RunKey, kind: &str) -> Self {
        Event {
            time: Timestamp::now(),
            kind: kind.to_owned(),
            namespace: run.namespace.clone(),
            run: run.name.clone(),
            ..Default::default()
        }
    }

    /// `run.phase`.
    pub fn phase(run: &RunKey, phase: RunPhase, reason: &str, message: &str) -> Self {
        Event {
            phase: Some(phase),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            ..Event::new(run, RUN_PHASE)
        }
    }

    /// An event of `stage` (`stage.started`, `stage.retrying`, …).
    pub fn stage(run: &RunKey, kind: &str, stage: &str) -> Self {
        Event {
            stage: Some(stage.to_owned()),
            ..Event::new(run, kind)
        }
    }

    /// The end of a stage: `stage.completed`, `stage.stopped`, `stage.skipped`, or
    /// `stage.failed` with its reason and message.
    pub fn stage_finished(run: &RunKey, stage: &str, outcome: &StageOutcome) -> Self {
        match outcome {
            StageOutcome::Succeeded => Event::stage(run, STAGE_COMPLETED, stage),
            StageOutcome::Stopped => Event::stage(run, STAGE_STOPPED, stage),
            StageOutcome::Failed { reason, message } => Event {
                reason: Some(reason.clone()),
                message: Some(message.clone()),
                ..Event::stage(run, STAGE_FAILED, stage)
            },
            StageOutcome::Skipped { reason, message } => Event {
                reason: Some(reason.clone()),
                message: Some(message.clone()),
                ..Event::stage(run, STAGE_SKIPPED, stage)
            },
        }
    }

    /// `stage.approved` or `stage.rejected`: who decided, and their comment.
    pub fn decided(run: &RunKey, stage: &str, verdict: &Verdict) -> Self {
        let kind = if verdict.approved {
            STAGE_APPROVED
        } else {
            STAGE_REJECTED
        };
        Event {
            time: verdict.time,
            user: Some(verdict.user.clone()),
            message: verdict.comment.clone(),
            ..Event::stage(run, kind, stage)
        }
    }

    /// `message.received`: a message an expect stage read and found matching, its payload cut
    /// at `max_payload` bytes.
    pub fn received(
        run: &RunKey,
        stage: &str,
        connector: &str,
        source: &Target,
        msg: &Message,
        delivery: &Delivery,
        max_payload: usize,
    ) -> Self {
        Event {
            kind: MESSAGE_RECEIVED.to_owned(),
            ..Event::published(run, stage, connector, source, msg, delivery, max_payload)
        }
    }

    /// `message.published`: a message the broker acknowledged, its payload cut at
    /// `max_payload` bytes (only that much is copied).
    pub fn published(
        run: &RunKey,
        stage: &str,
        connector: &str,
        target: &Target,
        msg: &Message,
        delivery: &Delivery,
        max_payload: usize,
    ) -> Self {
        let mut end = max_payload.min(msg.payload.len());
        while !msg.payload.is_char_boundary(end) {
            end -= 1;
        }
        Event {
            target: Some(EventTarget::new(
                connector,
                target,
                msg.routing_key.as_deref(),
            )),
            sequence: Some(msg.seq),
            partition: delivery.partition,
            offset: delivery.offset,
            delivery_tag: delivery.delivery_tag,
            key: msg.key.clone(),
            headers: (!msg.headers.is_empty()).then(|| msg.headers.iter().cloned().collect()),
            payload: Some(msg.payload[..end].to_owned()),
            payload_bytes: Some(msg.payload.len() as u64),
            payload_truncated: end < msg.payload.len(),
            ..Event::stage(run, MESSAGE_PUBLISHED, stage)
        }
    }

    /// Whether this event ends its run's log: a `run.phase` into a final phase.
    pub fn is_terminal(&self) -> bool {
        self.kind == RUN_PHASE && self.phase.is_some_and(RunPhase::is_finished)
    }

    /// Cuts the payload at `max` bytes (on a character boundary), marking the event;
    /// `payload_bytes` keeps the size before the first cut.
    pub fn cap_payload(&mut self, max: usize) {
        let Some(p) = &mut self.payload else { return };
        self.payload_bytes.get_or_insert(p.len() as u64);
        if p.len() > max {
            let mut cut = max;
            while !p.is_char_boundary(cut) {
                cut -= 1;
            }
            p.truncate(cut);
            self.payload_truncated = true;
        }
    }
}

/// A run, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    pub namespace: String,
    pub name: String,
}

impl RunKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        RunKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An event as read back: its number, type, time and JSON, served as is.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub kind: String,
    /// Microseconds since the Unix epoch.
    pub time_us: i64,
    /// The [`Event`] as JSON.
    pub data: Arc<str>,
}

impl StoredEvent {
    /// The event, parsed.
    pub fn event(&self) -> Result<Event, StoreError> {
        serde_json::from_str(&self.data).map_err(StoreError::Corrupt)
    }

    /// Whether this event ends its run's log (see [`Event::is_terminal`]).
    pub fn is_terminal(&self) -> bool {
        self.kind == RUN_PHASE
            && (self.data.contains("\"phase\":\"Completed\"")
                || self.data.contains("\"phase\":\"Failed\"")
                || self.data.contains("\"phase\":\"Stopped\""))
    }
}

/// What the store knows of one run's log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogInfo {
    /// The number of the last event (0: none yet).
    pub last_seq: u64,
    /// Stored `message.published` events.
    pub message_events: u64,
    /// `message.published` events beyond the per-run cap, counted and not stored.
    pub dropped_message_events: u64,
    /// The final phase, once the run has ended.
    pub final_phase: Option<RunPhase>,
    /// When the run ended.
    pub finished_at: Option<Timestamp>,
    /// The events expired under the retention policy and are gone.
    pub expired: bool,
}

/// The bounds the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Payloads longer than this are cut (and marked).
    pub max_payload_bytes: usize,
    /// At most this many `message.published` events are stored per run.
    pub max_message_events: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 64 * 1024,
            max_message_events: 100_000,
        }
    }
}

/// How long the events of finished runs are kept, by final phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub completed: Duration,
    pub failed: Duration,
    pub stopped: Duration,
}

const DAY: u64 = 24 * 3600;

impl Default for Retention {
    /// 90 days for completed runs, 180 for failed ones, 30 for stopped ones.
    fn default() -> Self {
        Retention {
            completed: Duration::from_secs(90 * DAY),
            failed: Duration::from_secs(180 * DAY),
            stopped: Duration::from_secs(30 * DAY),
        }
    }
}

impl Retention {
    /// The retention of runs that ended in `phase`.
    pub fn of(&self, phase: RunPhase) -> Option<Duration> {
        match phase {
            RunPhase::Completed => Some(self.completed),
            RunPhase::Failed => Some(self.failed),
            RunPhase::Stopped => Some(self.stopped),
            _ => None,
        }
    }
}

/// Parses a retention such as `90d`, `12h` or `30m`.
pub fn parse_retention(s: &str) -> Result<Duration, String> {
    if let Some(days) = s.strip_suffix('d') {
        return days
            .parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(DAY))
            .map(Duration::from_secs)
            .ok_or_else(|| format!("invalid retention {s:?}: must be like 90d, 12h or 30m"));
    }
    crate::engine::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// An error of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("event store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("event store: a stored event is not valid JSON: {0}")]
    Corrupt(#[source] serde_json::Error),
    #[error("event store: {0}")]
    Config(String),
}

/// One event to append to a run's log.
#[derive(Clone, Debug)]
pub struct Append {
    pub run: RunKey,
    pub event: Event,
}

/// What an append did to one run's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub run: RunKey,
    /// The run's last sequence number after the append.
    pub last_seq: u64,
}

/// Where the event store is (`devset controller` and `devset api`).
#[derive(Clone, Debug, clap::Args)]
pub struct StoreArgs {
    /// The event store: `sqlite://PATH` (or a plain path) for embedded SQLite, or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` for PostgreSQL.
    #[arg(
        long,
        env = "DEVSET_EVENT_STORE",
        default_value = "sqlite://devset-events.db"
    )]
    pub event_store: String,
}

impl StoreArgs {
    /// Opens the store with `limits`. A store that cannot be reached (PostgreSQL starting up,
    /// say) is waited for, with a warning every few seconds; a wrong setting fails at once.
    pub async fn open_waiting(&self, limits: Limits) -> anyhow::Result<Store> {
        loop {
            match Store::open(&self.event_store, limits).await {
                Ok(s) => return Ok(s),
                Err(e @ StoreError::Db(_)) => {
                    tracing::warn!(
                        store = %redact(&self.event_store),
                        error = %e,
                        "cannot open the event store; retrying in 5 s"
                    );
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "opening the event store {}",
                        redact(&self.event_store)
                    )));
                }
            }
        }
    }
}

/// The event log settings of `devset controller`.
#[derive(Clone, Debug, clap::Args)]
pub struct EventSettings {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Message payloads longer than this many bytes are cut in the event log (and marked
    /// truncated).
    #[arg(
        long,
        env = "DEVSET_EVENTS_MAX_PAYLOAD_BYTES",
        default_value_t = 65_536
    )]
    pub events_max_payload_bytes: usize,
    /// At most this many `message.published` events are kept per run; the rest are counted.
    #[arg(
        long,
        env = "DEVSET_EVENTS_MAX_MESSAGES_PER_RUN",
        default_value_t = 100_000
    )]
    pub events_max_messages_per_run: u64,
    /// How long the events of Completed runs are kept (e.g. 90d, 12h).
    #[arg(long, env = "DEVSET_EVENTS_RETENTION_COMPLETED", default_value = "90d", value_parser = parse_retention)]
    pub events_retention_completed: Duration,
    /// How long the events of Failed runs are kept.
    #[arg(long, env = "DEVSET_EVENTS_RETENTION_FAILED", default_value = "180d", value_parser = parse_retention)]
    pub events_retention_failed: Duration,
    /// How long the events of Stopped runs are kept.
    #[arg(long, env = "DEVSET_EVENTS_RETENTION_STOPPED", default_value = "30d", value_parser = parse_retention)]
    pub events_retention_stopped: Duration,
}

impl EventSettings {
    /// The bounds of the store.
    pub fn limits(&self) -> Limits {
        Limits {
            max_payload_bytes: self.events_max_payload_bytes,
            max_message_events: self.events_max_messages_per_run,
        }
    }

    /// The retention by final phase.
    pub fn retention(&self) -> Retention {
        Retention {
            completed: self.events_retention_completed,
            failed: self.events_retention_failed,
            stopped: self.events_retention_stopped,
        }
    }
}

/// A store URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// How often expired events are removed.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

/// Removes expired events now and every few minutes, for ever.
pub async fn expire_periodically(store: Store, retention: Retention) {
    loop {
        match store.expire(Timestamp::now(), &retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "expired the events of finished runs"),
            Err(e) => tracing::warn!(error = %e, "cannot expire old events"),
        }
        tokio::time::sleep(EXPIRY_INTERVAL).await;
    }
}

/// The final phase as stored (`Completed`, …).
pub(crate) fn phase_name(p: RunPhase) -> &'static str {
    match p {
        RunPhase::Pending => "Pending",
        RunPhase::Running => "Running",
        RunPhase::Stopping => "Stopping",
        RunPhase::WaitingForApproval => "WaitingForApproval",
        RunPhase::Stopped => "Stopped",
        RunPhase::Completed => "Completed",
        RunPhase::Failed => "Failed",
    }
}

pub(crate) fn parse_phase(s: &str) -> Option<RunPhase> {
    [
        RunPhase::Pending,
        RunPhase::Running,
        RunPhase::Stopping,
        RunPhase::WaitingForApproval,
        RunPhase::Stopped,
        RunPhase::Completed,
        RunPhase::Failed,
    ]
    .into_iter()
    .find(|p| phase_name(*p) == s)
}

/// Per-run state of an append, shared by both stores: numbering and the message cap.
pub(crate) struct RunState {
    pub last_seq: u64,
    pub message_events: u64,
    pub dropped: u64,
    pub final_phase: Option<RunPhase>,
    pub finished_at: Option<Timestamp>,
}

impl From<LogInfo> for RunState {
    fn from(l: LogInfo) -> Self {
        RunState {
            last_seq: l.last_seq,
            message_events: l.message_events,
            dropped: l.dropped_message_events,
            final_phase: l.final_phase,
            finished_at: l.finished_at,
        }
    }
}

impl RunState {
    /// Numbers `event` and returns its row, or `None` when it is a message beyond the cap.
    /// The event is numbered and its payload cut in place (no copy of the payload); doing
    /// it again, as a retried batch does, gives the same row.
    pub fn admit(&mut self, event: &mut Event, limits: &Limits) -> Option<Row> {
        if is_message(&event.kind) {
            if self.message_events >= limits.max_message_events {
                self.dropped += 1;
                return None;
            }
            self.message_events += 1;
            event.cap_payload(limits.max_payload_bytes);
        }
        if event.is_terminal() {
            self.final_phase = event.phase;
            self.finished_at = Some(event.time);
        }
        self.last_seq += 1;
        event.seq = self.last_seq;
        let data = serde_json::to_string(&*event).expect("an event serializes");
        Some(Row {
            seq: self.last_seq as i64,
            kind: event.kind.clone(),
            time_us: event.time.as_microsecond(),
            data,
        })
    }
}

/// A row to insert.
pub(crate) struct Row {
    pub seq: i64,
    pub kind: String,
    pub time_us: i64,
    pub data: String,
}

/// Groups appends by run, keeping each run's order.
pub(crate) fn by_run(events: &mut [Append]) -> BTreeMap<&RunKey, Vec<&mut Event>> {
    let mut m: BTreeMap<&RunKey, Vec<&mut Event>> = BTreeMap::new();
    for Append { run, event } in events {
        m.entry(&*run).or_default().push(event);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_cut_on_a_char_boundary_and_marked() {
        let mut e = Event {
            payload: Some("héllo".into()),
            ..Default::default()
        };
        e.cap_payload(2);
        assert_eq!(e.payload.as_deref(), Some("h"));
        assert!(e.payload_truncated);
        assert_eq!(e.payload_bytes, Some(6));
        let mut e = Event {
            payload: Some("ok".into()),
            ..Default::default()
        };
        e.cap_payload(2);
        assert!(!e.payload_truncated);
        assert_eq!(e.payload.as_deref(), Some("ok"));
    }

    #[test]
    fn terminal_events_are_recognised_in_json() {
        let run = RunKey::new("ns", "r");
        for (phase, terminal) in [
            (RunPhase::Running, false),
            (RunPhase::Completed, true),
            (RunPhase::Failed, true),
            (RunPhase::Stopped, true),
        ] {
            let e = Event::phase(&run, phase, "R", "m");
            assert_eq!(e.is_terminal(), terminal);
            let s = StoredEvent {
                seq: 1,
                kind: e.kind.clone(),
                time_us: 0,
                data: serde_json::to_string(&e).unwrap().into(),
            };
            assert_eq!(s.is_terminal(), terminal, "{}", s.data);
        }
    }

    #[test]
    fn retention_parses_days_and_durations() {
        assert_eq!(parse_retention("90d"), Ok(Duration::from_secs(90 * DAY)));
        assert_eq!(parse_retention("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(parse_retention("soon").is_err());
        assert!(parse_retention("d").is_err());
    }

    #[test]
    fn message_cap_counts_what_it_drops_and_keeps_lifecycle_events() {
        let run = RunKey::new("ns", "r");
        let limits = Limits {
            max_payload_bytes: 4,
            max_message_events: 2,
        };
        let mut st = RunState {
            last_seq: 0,
            message_events: 0,
            dropped: 0,
            final_phase: None,
            finished_at: None,
        };
        let msg = || Event {
            payload: Some("123456".into()),
            ..Event::new(&run, MESSAGE_PUBLISHED)
        };
        let seqs: Vec<Option<i64>> = [
            msg(),
            msg(),
            msg(),
            Event::phase(&run, RunPhase::Completed, "Completed", "done"),
        ]
        .into_iter()
        .map(|mut e| st.admit(&mut e, &limits).map(|r| r.seq))
        .collect();
        assert_eq!(seqs, vec![Some(1), Some(2), None, Some(3)]);
        assert_eq!(st.dropped, 1);
        assert_eq!(st.final_phase, Some(RunPhase::Completed));
    }
}
