//! `devset controller`: the reconcilers of BrokerConnector, Workflow and WorkflowRun.

pub mod conditions;
mod connector;
pub mod metrics;
mod run;
mod workflow;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde::Serialize;
use std::{sync::Arc, time::Duration};
use tracing::{info, warn};

/// The field manager of every status write.
pub const MANAGER: &str = "devset-controller";
/// The finalizer that stops a run's execution before the run goes away.
pub const FINALIZER: &str = "devset.io/run";

/// Settings of `devset controller`.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// At most this many runs are Running or Stopping at once; the rest wait as Pending/Queued.
    #[arg(long, env = "DEVSET_ENGINE_MAX_ACTIVE_RUNS", default_value_t = 10)]
    pub max_active_runs: usize,
    /// How often a BrokerConnector is probed again, in seconds.
    #[arg(long, env = "DEVSET_PROBE_INTERVAL_SECONDS", default_value_t = 60)]
    pub probe_interval_seconds: u64,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "DEVSET_NAMESPACE")]
    pub namespace: Option<String>,
    /// Where to serve `/metrics` (Prometheus), `/healthz` and `/readyz`.
    #[arg(long, env = "DEVSET_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub events: crate::events::EventSettings,
}

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("serialize status: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("{0}")]
    Events(#[from] crate::events::StoreError),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Serialize(_) => "serialize",
            Error::Events(_) => "events",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every reconciler shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    pub runs: run::Runs,
    pub metrics: Arc<metrics::Metrics>,
    /// The run event log.
    pub events: crate::events::EventLog,
}

impl Context {
    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Publishes a Kubernetes Event on `obj` (shown by `kubectl describe`); failures are logged.
    async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, "cannot publish event");
        }
    }
}

/// Writes `status` with server-side apply under [`MANAGER`], on the status subresource only.
async fn apply_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// Checks that the CRDs are installed; says how to install them when they are not.
async fn check_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    for name in [
        "brokerconnectors.devset.io",
        "workflows.devset.io",
        "workflowruns.devset.io",
    ] {
        match crds.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(name),
            Err(e) => anyhow::bail!(
                "cannot read CustomResourceDefinitions ({e}); is the cluster reachable?"
            ),
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "the CRDs {} are not installed; install them with:\n  devset crds | kubectl apply --server-side -f -",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Runs the three controllers until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let listener = metrics::bind(settings.metrics_addr).await?;
    let client = Client::try_default().await?;
    check_crds(&client).await?;
    let store = settings
        .events
        .store
        .open_waiting(settings.events.limits())
        .await?;
    let log_metrics = crate::events::LogMetrics::default();
    let events = crate::events::EventLog::start_with_metrics(store.clone(), log_metrics.clone());
    let expiry = tokio::spawn(crate::events::expire_periodically(
        store.clone(),
        settings.events.retention(),
    ));
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let (runs_ctl, runs) = run::controller(client.clone(), &settings);
    let metrics = Arc::new(metrics::Metrics::new(runs.store.clone(), &log_metrics));
    let stop_server = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        stop_server.clone(),
    ));
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        settings: settings.clone(),
        runs,
        metrics,
        events,
    });
    info!(
        max_active_runs = settings.max_active_runs,
        event_store = store.describe(),
        "devset controller starting"
    );

    let connectors = connector::controller(ctx.clone());
    let workflows = workflow::controller(ctx.clone());
    let runs = runs_ctl(ctx.clone());
    ctx.metrics.set_ready(true);
    tokio::join!(connectors, workflows, runs);
    ctx.metrics.set_ready(false);
    // The run controller ended on a signal: stop the runs in flight gracefully so that a
    // restarted controller resumes them from their status.
    ctx.runs.shutdown(Duration::from_secs(20)).await;
    expiry.abort();
    ctx.events.flush().await;
    stop_server.cancel();
    let _ = server.await;
    info!("devset controller stopped");
    Ok(())
}

/// Drives a controller stream to its end, logging each reconcile's result.
async fn drain<S, T, E>(name: &'static str, stream: S)
where
    S: futures::Stream<Item = std::result::Result<T, E>>,
    T: std::fmt::Debug,
    E: std::fmt::Display,
{
    stream
        .for_each(|res| async move {
            match res {
                Ok(obj) => tracing::debug!(controller = name, ?obj, "reconciled"),
                Err(e) => tracing::debug!(controller = name, error = %e, "reconcile failed"),
            }
        })
        .await;
}

fn watcher_api<K>(client: &Client, settings: &Settings) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
