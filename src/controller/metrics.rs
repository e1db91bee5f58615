//! Prometheus metrics of the controller, and the HTTP server of `/metrics`, `/healthz` and
//! `/readyz` (on `--metrics-addr`).
//!
//! One registry with the prefix `devset` and a sub-registry per subsystem:
//! - `devset_reconcile_runs_total{controller}`, `devset_reconcile_errors_total{controller,error}`,
//!   `devset_reconcile_duration_seconds{controller}` (histogram);
//! - `devset_runs_by_phase{phase}` (computed at scrape time from the WorkflowRun store),
//!   `devset_runs_active` (runs this controller is executing);
//! - `devset_engine_messages_published_total{broker}`,
//!   `devset_engine_messages_received_total{broker}` (matches of expect stages),
//!   `devset_engine_approvals_total{decision}`,
//!   `devset_engine_stage_duration_seconds{action,outcome}` (histogram);
//! - `devset_events_appended_total`, `devset_events_dropped_total`,
//!   `devset_events_append_errors_total`, `devset_events_queued` (the run event log).

use crate::{
    api::{RunPhase, WorkflowRun},
    brokers::BrokerConfig,
    engine::runner::{RunInput, StageOutcome},
};
use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The controllers' names, the value of the `controller` label.
pub const WORKFLOWRUN: &str = "workflowrun";
pub const WORKFLOW: &str = "workflow";
pub const BROKERCONNECTOR: &str = "brokerconnector";

/// Every phase, so that `devset_runs_by_phase` always shows all of them (zeros included).
const PHASES: [RunPhase; 7] = [
    RunPhase::Pending,
    RunPhase::Running,
    RunPhase::Stopping,
    RunPhase::WaitingForApproval,
    RunPhase::Stopped,
    RunPhase::Completed,
    RunPhase::Failed,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabels {
    broker: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    action: &'static str,
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The controller's metrics; cheap to share (`Arc`), counters are atomics.
pub struct Metrics {
    registry: Registry,
    pub reconcile: ReconcileMetrics,
    pub engine: EngineMetrics,
    /// `/readyz` answers 200 once this is set.
    ready: AtomicBool,
    /// 1 while this replica runs the reconcilers (holds the Lease, or election is off).
    leader: Gauge,
}

/// `devset_reconcile_*`.
pub struct ReconcileMetrics {
    runs: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: HistogramFamily<ControllerLabels>,
}

/// `devset_runs_active` and `devset_engine_*`.
pub struct EngineMetrics {
    active_runs: Gauge,
    published_kafka: Counter,
    published_rabbitmq: Counter,
    received_kafka: Counter,
    received_rabbitmq: Counter,
    approvals: Family<DecisionLabels, Counter>,
    stage_duration: HistogramFamily<StageLabels>,
}

impl Metrics {
    /// Builds the registry; `runs` is the WorkflowRun store `devset_runs_by_phase` is read from,
    /// `log` the event log writer's counters.
    pub fn new(runs: crate::watch::Stores<WorkflowRun>, log: &crate::events::LogMetrics) -> Self {
        let mut registry = Registry::with_prefix("devset");

        let reconcile = ReconcileMetrics {
            runs: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                // 5 ms .. ~10 s
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            }),
        };
        let sub = registry.sub_registry_with_prefix("reconcile");
        sub.register("runs", "Reconciles, by controller", reconcile.runs.clone());
        sub.register(
            "errors",
            "Reconciles that failed, by controller and error kind",
            reconcile.errors.clone(),
        );
        sub.register(
            "duration_seconds",
            "How long reconciles took, by controller",
            reconcile.duration.clone(),
        );

        let published = Family::<BrokerLabels, Counter>::default();
        let received = Family::<BrokerLabels, Counter>::default();
        let engine = EngineMetrics {
            active_runs: Gauge::default(),
            published_kafka: published.get_or_create_owned(&BrokerLabels { broker: "kafka" }),
            published_rabbitmq: published.get_or_create_owned(&BrokerLabels { broker: "rabbitmq" }),
            received_kafka: received.get_or_create_owned(&BrokerLabels { broker: "kafka" }),
            received_rabbitmq: received.get_or_create_owned(&BrokerLabels { broker: "rabbitmq" }),
            approvals: Family::default(),
            stage_duration: Family::new_with_constructor(|| {
                // 10 ms .. ~45 min
                Histogram::new(exponential_buckets(0.01, 4.0, 10))
            }),
        };
        let sub = registry.sub_registry_with_prefix("runs");
        sub.register(
            "active",
            "Runs this controller is executing",
            engine.active_runs.clone(),
        );
        sub.register_collector(Box::new(PhaseCollector { store: runs }));
        let sub = registry.sub_registry_with_prefix("engine");
        sub.register(
            "messages_published",
            "Messages the brokers acknowledged, by broker type",
            published,
        );
        sub.register(
            "messages_received",
            "Messages expect stages read that matched, by broker type",
            received,
        );
        sub.register(
            "approvals",
            "Decisions on approval stages, by decision",
            engine.approvals.clone(),
        );
        sub.register(
            "stage_duration_seconds",
            "How long stages took (all attempts), by action and outcome",
            engine.stage_duration.clone(),
        );

        let sub = registry.sub_registry_with_prefix("events");
        sub.register(
            "appended",
            "Run events written to the event log",
            log.appended.clone(),
        );
        sub.register(
            "dropped",
            "message.published events beyond the per-run cap, counted and not kept",
            log.dropped.clone(),
        );
        sub.register(
            "append_errors",
            "Event log batches that failed and were tried again",
            log.errors.clone(),
        );
        sub.register(
            "queued",
            "Run events waiting to be written",
            log.queued.clone(),
        );

        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the reconcilers (it holds the Lease, or election is off)",
            leader.clone(),
        );

        Self {
            registry,
            reconcile,
            engine,
            ready: AtomicBool::new(false),
            leader,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The metrics of one run's execution: each stage's action and the counter of its broker
    /// are looked up here, once, so that counting a published message is one atomic add.
    pub fn run(self: &Arc<Self>, input: &RunInput) -> RunMetrics {
        let stages = input
            .spec
            .stages
            .iter()
            .map(|stage| {
                let broker = |named: Option<&crate::api::LocalObjectRef>| {
                    let connector = named.map_or(&input.default_connector, |r| &r.name);
                    input.brokers.get(connector)
                };
                let published = stage.publish.as_ref().and_then(|p| {
                    broker(p.connector_ref.as_ref()).map(|b| self.engine.published(b))
                });
                let received = stage.expect.as_ref().and_then(|e| {
                    broker(e.connector_ref.as_ref()).map(|b| self.engine.received(b))
                });
                let action = if stage.publish.is_some() {
                    "publish"
                } else if stage.approval.is_some() {
                    "approval"
                } else if stage.expect.is_some() {
                    "expect"
                } else {
                    "delay"
                };
                let meta = StageMeta {
                    action,
                    published: published.or(received),
                    started: OnceLock::new(),
                };
                (stage.name.clone(), meta)
            })
            .collect();
        RunMetrics {
            metrics: self.clone(),
            stages,
        }
    }
}

/// What [`Metrics::run`] prepared for one run; fed by the run's observer.
pub struct RunMetrics {
    metrics: Arc<Metrics>,
    stages: HashMap<String, StageMeta>,
}

struct StageMeta {
    action: &'static str,
    /// The counter of the stage's broker: published messages (publish stages) or matching
    /// ones (expect stages).
    published: Option<Counter>,
    /// The start of the stage's first attempt in this execution.
    started: OnceLock<Instant>,
}

impl RunMetrics {
    pub fn stage_started(&self, stage: &str) {
        if let Some(m) = self.stages.get(stage) {
            m.started.get_or_init(Instant::now);
        }
    }

    /// Counts a decision on an approval stage.
    pub fn decided(&self, approved: bool) {
        self.metrics.engine.decided(approved);
    }

    /// Per message (published, or received by an expect stage): one lookup in a small map and
    /// an atomic add.
    pub fn published(&self, stage: &str) {
        if let Some(c) = self.stages.get(stage).and_then(|m| m.published.as_ref()) {
            c.inc();
        }
    }

    pub fn stage_finished(&self, stage: &str, outcome: &StageOutcome) {
        if let Some(m) = self.stages.get(stage) {
            let took = m.started.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
            self.metrics.engine.stage_finished(m.action, outcome, took);
        }
    }
}

impl ReconcileMetrics {
    /// Counts a reconcile of `controller` and measures it until the returned guard drops.
    pub fn count_and_measure(&self, controller: &'static str) -> ReconcileTimer<'_> {
        let labels = ControllerLabels { controller };
        self.runs.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self,
            labels,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile (from `error_policy`).
    pub fn set_failure(&self, controller: &'static str, err: &super::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                error: err.metric_label(),
            })
            .inc();
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a ReconcileMetrics,
    labels: ControllerLabels,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl EngineMetrics {
    /// The counter of messages published to `broker`: get it once, increment it per message.
    pub fn published(&self, broker: &BrokerConfig) -> Counter {
        match broker {
            BrokerConfig::Kafka(_) => self.published_kafka.clone(),
            BrokerConfig::RabbitMq(_) => self.published_rabbitmq.clone(),
        }
    }

    /// The counter of matching messages read from `broker`.
    pub fn received(&self, broker: &BrokerConfig) -> Counter {
        match broker {
            BrokerConfig::Kafka(_) => self.received_kafka.clone(),
            BrokerConfig::RabbitMq(_) => self.received_rabbitmq.clone(),
        }
    }

    /// Counts a decision on an approval stage.
    pub fn decided(&self, approved: bool) {
        let decision = if approved { "approved" } else { "rejected" };
        self.approvals
            .get_or_create(&DecisionLabels { decision })
            .inc();
    }

    /// Records a finished stage; `action` is `publish`, `delay`, `approval` or `expect`.
    pub fn stage_finished(&self, action: &'static str, outcome: &StageOutcome, took: f64) {
        let outcome = match outcome {
            StageOutcome::Succeeded => "succeeded",
            StageOutcome::Stopped => "stopped",
            StageOutcome::Failed { .. } => "failed",
            StageOutcome::Skipped { .. } => "skipped",
        };
        self.stage_duration
            .get_or_create(&StageLabels { action, outcome })
            .observe(took);
    }

    /// Counts a run as active until the returned guard drops.
    pub fn run_active(&self) -> ActiveRun {
        self.active_runs.inc();
        ActiveRun(self.active_runs.clone())
    }
}

/// One executing run in `devset_runs_active`, until dropped.
pub struct ActiveRun(Gauge);

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `devset_runs_by_phase`: counted from the WorkflowRun store on each scrape.
#[derive(Debug)]
struct PhaseCollector {
    store: crate::watch::Stores<WorkflowRun>,
}

impl Collector for PhaseCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut counts = [0i64; PHASES.len()];
        for run in self.store.state() {
            let phase = run
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or_default();
            if let Some(i) = PHASES.iter().position(|p| *p == phase) {
                counts[i] += 1;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "by_phase",
            "WorkflowRuns the controller watches, by phase.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (phase, n) in PHASES.iter().zip(counts) {
            let labels = [("phase", format!("{phase:?}"))];
            ConstGauge::new(n).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", axum::routing::get(metrics_handler))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(metrics);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(error = %e, "the metrics server stopped");
    }
}

/// Binds the metrics address; fails with the address in the message.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --metrics-addr {addr}: {e}"))
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;

    fn metrics() -> Metrics {
        let (store, _writer) = reflector::store::<WorkflowRun>();
        Metrics::new(crate::watch::Stores(vec![store]), &Default::default())
    }

    #[test]
    fn names_and_labels() {
        let m = metrics();
        let _ = m.reconcile.count_and_measure(WORKFLOW);
        let err = super::super::Error::Serialize(
            serde_json::from_str::<u8>("x").expect_err("not a number"),
        );
        m.reconcile.set_failure(WORKFLOW, &err);
        let kafka = m.engine.published_kafka.clone();
        for _ in 0..3 {
            kafka.inc();
        }
        m.engine
            .stage_finished("delay", &StageOutcome::Succeeded, 0.2);
        let active = m.engine.run_active();
        let text = m.encode();
        for line in [
            r#"devset_reconcile_runs_total{controller="workflow"} 1"#,
            r#"devset_reconcile_errors_total{controller="workflow",error="serialize"} 1"#,
            r#"devset_reconcile_duration_seconds_count{controller="workflow"} 1"#,
            r#"devset_engine_messages_published_total{broker="kafka"} 3"#,
            r#"devset_engine_messages_published_total{broker="rabbitmq"} 0"#,
            r#"devset_engine_stage_duration_seconds_count{action="delay",outcome="succeeded"} 1"#,
            "devset_runs_active 1",
            r#"devset_runs_by_phase{phase="Completed"} 0"#,
            r#"devset_runs_by_phase{phase="Pending"} 0"#,
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        drop(active);
        assert!(m.encode().contains("devset_runs_active 0"));
    }
}
