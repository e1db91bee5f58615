//! `devset controller`: the reconcilers of BrokerConnector, Workflow and WorkflowRun.

mod approvals;
pub mod conditions;
mod connector;
pub mod leader;
mod lifecycle;
pub mod metrics;
mod run;
mod schedule;
mod tracker;
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
use tokio_util::sync::CancellationToken;
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
    /// Watch only these namespaces, comma-separated (default: all namespaces).
    #[arg(long = "namespace", env = "DEVSET_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Where to serve `/metrics` (Prometheus), `/healthz` and `/readyz`.
    #[arg(long, env = "DEVSET_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub events: crate::events::EventSettings,
    #[command(flatten)]
    pub leader: leader::LeaderSettings,
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
    /// Cancelled on SIGTERM/Ctrl-C or when leadership is lost: the controllers wind down.
    pub stop: CancellationToken,
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
        "workflowschedules.devset.io",
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

/// Runs the three controllers until SIGTERM or Ctrl-C (or, with leader election, until the
/// Lease is lost: then it returns an error so that the container restarts as a candidate).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let listener = metrics::bind(settings.metrics_addr).await?;
    let client = Client::try_default().await?;
    check_crds(&client).await?;
    let stop = CancellationToken::new();
    tokio::spawn(cancel_on_signal(stop.clone()));
    let store = tokio::select! {
        store = settings.events.store.open_waiting(settings.events.limits()) => store?,
        _ = stop.cancelled() => return Ok(()),
    };
    let log_metrics = crate::events::LogMetrics::default();
    let events = crate::events::EventLog::start_with_metrics(store.clone(), log_metrics.clone());
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let (runs_ctl, runs) = run::controller(client.clone(), &settings, stop.clone());
    let metrics = Arc::new(metrics::Metrics::new(runs.store.clone(), &log_metrics));
    let stop_server = CancellationToken::new();
    let server = tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        stop_server.clone(),
    ));
    // A standby replica is healthy and ready: its pod's API sidecar serves too.
    metrics.set_ready(true);
    let mut election = settings
        .leader
        .leader_elect
        .then(|| leader::Election::new(client.clone(), &settings.leader));
    if let Some(election) = &mut election {
        info!(lease = %election.lease(), identity = election.identity(), "leader election on");
        tokio::select! {
            _ = election.acquire() => {}
            _ = stop.cancelled() => {
                stop_server.cancel();
                let _ = server.await;
                return Ok(());
            }
        }
    }
    metrics.set_leader(true);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        settings: settings.clone(),
        runs,
        metrics,
        events,
        stop: stop.clone(),
    });
    info!(
        max_active_runs = settings.max_active_runs,
        event_store = store.describe(),
        "devset controller starting"
    );
    let expiry = tokio::spawn(crate::events::expire_periodically(
        store.clone(),
        settings.events.retention(),
    ));
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holder = election.map(|mut election| {
        let (stop, lost) = (stop.clone(), lost.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = election.hold() => {
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    stop.cancel();
                }
                _ = stop.cancelled() => {}
            }
            election
        })
    });

    let connectors = connector::controller(ctx.clone());
    let workflows = workflow::controller(ctx.clone());
    let runs = runs_ctl(ctx.clone());
    let schedules = schedule::controller(ctx.clone());
    tokio::join!(connectors, workflows, runs, schedules);
    ctx.metrics.set_leader(false);
    // The controllers ended on a signal or a lost Lease: stop the runs in flight gracefully so
    // that the next leader resumes them from their status.
    let grace = if lost.load(std::sync::atomic::Ordering::SeqCst) {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(20)
    };
    ctx.runs.shutdown(grace).await;
    expiry.abort();
    ctx.events.flush().await;
    if let Some(holder) = holder {
        let mut election = holder.await?;
        if lost.load(std::sync::atomic::Ordering::SeqCst) {
            stop_server.cancel();
            let _ = server.await;
            anyhow::bail!(
                "lost the leadership of Lease {}; exiting to run for it again",
                election.lease()
            );
        }
        election.release().await;
    }
    stop_server.cancel();
    let _ = server.await;
    info!("devset controller stopped");
    Ok(())
}

/// Cancels `stop` on SIGTERM or Ctrl-C; a second signal exits at once.
async fn cancel_on_signal(stop: CancellationToken) {
    let signal = || async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    signal().await;
    info!(
        "shutting down: runs in flight stop and keep their status (a second signal exits at once)"
    );
    stop.cancel();
    signal().await;
    warn!("second signal: exiting at once");
    std::process::exit(130);
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

/// Runs one controller of `K` per watched namespace (or one over all) until `ctx.stop`.
async fn reconcile_per_namespace<K, R, F, P>(
    ctx: Arc<Context>,
    label: &'static str,
    reconcile: R,
    error_policy: P,
) where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    R: FnMut(Arc<K>, Arc<Context>) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Result<kube::runtime::controller::Action>> + Send + 'static,
    P: Fn(Arc<K>, &Error, Arc<Context>) -> kube::runtime::controller::Action
        + Clone
        + Send
        + Sync
        + 'static,
{
    let streams = watcher_apis::<K>(&ctx.client, &ctx.settings)
        .into_iter()
        .map(|api| {
            kube::runtime::Controller::new(api, kube::runtime::watcher::Config::default())
                .graceful_shutdown_on(ctx.stop.clone().cancelled_owned())
                .run(reconcile.clone(), error_policy.clone(), ctx.clone())
                .boxed()
        });
    drain(label, futures::stream::select_all(streams)).await;
}

/// One `Api` per watched namespace (or one over all).
fn watcher_apis<K>(client: &Client, settings: &Settings) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    crate::watch::apis(client, &settings.namespaces)
}
