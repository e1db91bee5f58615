//! WorkflowRun: references, params, the concurrency limit, then the engine in a task of its
//! own whose progress is written to status, coalesced.

use super::{
    Context, Error, FINALIZER, Result, apply_status, conditions, connector, drain,
    metrics::{RunMetrics, WORKFLOWRUN},
    watcher_apis,
};
use crate::watch::Stores;
use crate::{
    api::{
        BrokerConnector, RunPhase, StagePhase, StageStatus, Workflow, WorkflowRun,
        WorkflowRunStatus, WorkflowSpec, conditions::SUCCEEDED,
    },
    brokers::{BrokerConfig, Delivery},
    engine::{
        check::check_workflow,
        params::resolve_params,
        runner::{self, Observer, RunInput, RunOutcome, StageOutcome, StageResume},
    },
    events::{self, Event, EventLog, RunKey},
    message::{Message, Target},
};
use futures::{StreamExt, channel::mpsc};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

/// How often a running run's progress is written at most (plus once per stage transition).
const WRITE_INTERVAL: Duration = Duration::from_millis(500);

/// The runs this controller is executing, and the concurrency limit.
#[derive(Clone)]
pub struct Runs {
    pub(super) store: Stores<WorkflowRun>,
    active: Arc<tokio::sync::Mutex<HashMap<String, Active>>>,
    /// Runs this controller brought to a final phase whose final status the cache has not
    /// shown yet: a reconcile of the older, cached object must not start or resume them again.
    finished: Arc<Mutex<HashSet<String>>>,
    /// Wakes every run controller (one per namespace) to reconcile all its runs.
    triggers: Vec<mpsc::UnboundedSender<()>>,
    max: usize,
    shutdown: CancellationToken,
}

struct Active {
    stop: CancellationToken,
    tracker: Arc<Tracker>,
    done: watch::Receiver<bool>,
}

/// Builds the WorkflowRun controllers (one per watched namespace); returns them (to run with
/// the shared context) and the run registry the context holds.
pub fn controller(
    client: Client,
    settings: &super::Settings,
    stop: CancellationToken,
) -> (
    impl FnOnce(Arc<Context>) -> futures::future::BoxFuture<'static, ()>,
    Runs,
) {
    let mut ctls = Vec::new();
    let mut stores = Vec::new();
    let mut triggers = Vec::new();
    let workflows = watcher_apis::<Workflow>(&client, settings);
    let connectors = watcher_apis::<BrokerConnector>(&client, settings);
    for ((api, wf_api), bc_api) in watcher_apis::<WorkflowRun>(&client, settings)
        .into_iter()
        .zip(workflows)
        .zip(connectors)
    {
        let ctl = Controller::new(api, watcher::Config::default());
        let store = ctl.store();
        let (trigger, triggered) = mpsc::unbounded();
        let (wf_store, bc_store) = (store.clone(), store.clone());
        let ctl = ctl
            .watches(wf_api, watcher::Config::default(), move |wf| {
                referencing(&wf_store, &wf.namespace().unwrap_or_default(), |r| {
                    r.spec.workflow_ref.name == wf.name_any()
                })
            })
            .watches(bc_api, watcher::Config::default(), move |bc| {
                referencing(&bc_store, &bc.namespace().unwrap_or_default(), |r| {
                    r.spec.connector_ref.name == bc.name_any()
                })
            })
            .reconcile_all_on(triggered)
            .graceful_shutdown_on(stop.clone().cancelled_owned());
        ctls.push(ctl);
        stores.push(store);
        triggers.push(trigger);
    }
    let runs = Runs {
        store: Stores(stores),
        active: Default::default(),
        finished: Default::default(),
        triggers,
        max: settings.max_active_runs.max(1),
        shutdown: CancellationToken::new(),
    };
    let run = move |ctx: Arc<Context>| -> futures::future::BoxFuture<'static, ()> {
        let streams = ctls
            .into_iter()
            .map(|ctl| ctl.run(reconcile, error_policy, ctx.clone()).boxed());
        Box::pin(drain(WORKFLOWRUN, futures::stream::select_all(streams)))
    };
    (run, runs)
}

/// Pending runs in `ns` that `pred` selects: a change of what they reference may start them.
fn referencing(
    store: &Store<WorkflowRun>,
    ns: &str,
    pred: impl Fn(&WorkflowRun) -> bool,
) -> Vec<ObjectRef<WorkflowRun>> {
    store
        .state()
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(ns) && phase(r) == RunPhase::Pending && pred(r)
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

fn phase(run: &WorkflowRun) -> RunPhase {
    run.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or_default()
}

fn error_policy(_: Arc<WorkflowRun>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile.set_failure(WORKFLOWRUN, err);
    warn!(error = %err, label = err.metric_label(), "WorkflowRun reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[instrument(skip_all, fields(namespace = run.namespace().unwrap_or_default(), name = run.name_any()))]
async fn reconcile(run: Arc<WorkflowRun>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile.count_and_measure(WORKFLOWRUN);
    let api: Api<WorkflowRun> = ctx.api(&run.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(run, &ctx).await,
            Finalizer::Cleanup(run) => cleanup(run, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn key(run: &WorkflowRun) -> String {
    run.uid()
        .unwrap_or_else(|| format!("{}/{}", run.namespace().unwrap_or_default(), run.name_any()))
}

/// The run's key in the event log.
fn log_key(run: &WorkflowRun) -> RunKey {
    RunKey::new(run.namespace().unwrap_or_default(), run.name_any())
}

/// Appends a `run.phase` event to the run's log.
fn log_phase(ctx: &Context, run: &WorkflowRun, phase: RunPhase, reason: &str, message: &str) {
    ctx.events.append(
        &log_key(run),
        Event::phase(&log_key(run), phase, reason, message),
    );
}

async fn cleanup(run: Arc<WorkflowRun>, ctx: &Context) -> Result<Action> {
    ctx.runs.finished.lock().unwrap().remove(&key(&run));
    let active = ctx.runs.active.lock().await.remove(&key(&run));
    if let Some(active) = active {
        info!("run deleted while active: stopping it");
        active.stop.cancel();
        let mut done = active.done.clone();
        let _ = tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d)).await;
        ctx.runs.wake();
    }
    // The finalizer stays until the run's events are gone.
    ctx.events.delete(&log_key(&run)).await?;
    Ok(Action::await_change())
}

async fn apply(run: Arc<WorkflowRun>, ctx: &Context) -> Result<Action> {
    let status = run.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    if phase.is_finished() {
        ctx.runs.finished.lock().unwrap().remove(&key(&run));
        return Ok(Action::await_change());
    }
    if ctx.runs.finished.lock().unwrap().contains(&key(&run)) {
        // A cached object older than the final status written; its update is on the way.
        return Ok(Action::await_change());
    }
    {
        let active = ctx.runs.active.lock().await;
        if let Some(a) = active.get(&key(&run)) {
            if run.spec.stop && !a.stop.is_cancelled() {
                info!("stop requested");
                a.tracker.set_phase(RunPhase::Stopping);
                a.stop.cancel();
                ctx.event(
                    run.as_ref(),
                    EventType::Normal,
                    "Stopping",
                    "a stop was requested".into(),
                )
                .await;
            }
            return Ok(Action::await_change());
        }
    }
    match phase {
        RunPhase::Running | RunPhase::Stopping => resume(run, status, ctx).await,
        _ => start(run, status, ctx).await,
    }
}

/// A Pending run: stop it, wait for its references or a slot, or start it.
async fn start(run: Arc<WorkflowRun>, status: WorkflowRunStatus, ctx: &Context) -> Result<Action> {
    let ns = run.namespace().unwrap_or_default();
    if run.spec.stop {
        return finish_pending(
            &run,
            status,
            ctx,
            RunPhase::Stopped,
            "Stopped",
            "stopped before it started".into(),
        )
        .await;
    }
    // A queued run that still has no slot waits without a request to the API server: every
    // slot that frees reconciles all runs, and fetching each queued run's Workflow, connector
    // and Secret every time made the reads grow with the square of the queue.
    if status.reason.as_deref() == Some("Queued") {
        let active = ctx.runs.active.lock().await;
        if active.len() + queued_ahead(&ctx.runs.store, &run, &active) >= ctx.runs.max {
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    }
    let wf_name = &run.spec.workflow_ref.name;
    let Some(wf) = ctx.api::<Workflow>(&ns).get_opt(wf_name).await? else {
        let msg = format!(
            "Workflow {wf_name:?} not found in namespace {ns:?}; the run starts when it appears"
        );
        return pending(&run, status, ctx, "WorkflowNotFound", msg).await;
    };
    if let Some(p) = check_workflow(&wf.spec).first() {
        let msg = format!(
            "Workflow {wf_name:?} is not ready: {}: {}",
            p.field, p.message
        );
        return finish_pending(&run, status, ctx, RunPhase::Failed, p.reason, msg).await;
    }
    let brokers = match resolve_brokers(ctx, &ns, &run, &wf.spec).await? {
        Ok(b) => b,
        Err((reason, msg)) => return pending(&run, status, ctx, reason, msg).await,
    };
    let params = match resolve_params(&wf.spec.params, &run.spec.params) {
        Ok(p) => p,
        Err(e) => {
            return finish_pending(
                &run,
                status,
                ctx,
                RunPhase::Failed,
                "InvalidParam",
                format!("spec.params: {e}"),
            )
            .await;
        }
    };

    // Admission: a free slot for this run after every older queued run has one. The oldest
    // queued runs start together as slots free (one at a time, a wave of runs that ended
    // together left its slots empty until the next periodic requeue).
    let mut active = ctx.runs.active.lock().await;
    let ahead = queued_ahead(&ctx.runs.store, &run, &active);
    if active.len() + ahead >= ctx.runs.max {
        drop(active);
        // The counts as the run was queued; not rewritten as the queue moves (rewriting every
        // queued run's status each time made the writes grow with the square of the queue).
        let msg = match (&status.reason, &status.message) {
            (Some(r), Some(m)) if r == "Queued" => m.clone(),
            _ => format!(
                "waiting for a slot: {} of {} runs active, {ahead} queued ahead when it was \
                 queued; queued runs start oldest first",
                ctx.runs.active.lock().await.len(),
                ctx.runs.max
            ),
        };
        return pending(&run, status, ctx, "Queued", msg).await;
    }
    let now = Timestamp::now();
    let mut new = WorkflowRunStatus {
        phase: Some(RunPhase::Running),
        reason: Some("Running".into()),
        message: Some(format!(
            "running workflow {wf_name:?} through {}",
            brokers
                .values()
                .map(|b| b.describe())
                .collect::<Vec<_>>()
                .join(" and ")
        )),
        observed_generation: run.metadata.generation,
        started_at: Some(Time(now)),
        completed_at: None,
        messages_published: Some(0),
        stages: wf
            .spec
            .stages
            .iter()
            .map(|s| StageStatus {
                name: s.name.clone(),
                ..Default::default()
            })
            .collect(),
        workflow: Some(wf.spec.clone()),
        ..status
    };
    new.progress = Some(progress(&new.stages));
    new.conditions = conditions::set(
        &new.conditions,
        SUCCEEDED,
        "Unknown",
        "Running",
        "the run is in flight",
        run.metadata.generation,
        now,
    );
    log_phase(
        ctx,
        &run,
        RunPhase::Running,
        "Running",
        new.message.as_deref().unwrap_or_default(),
    );
    apply_status(&ctx.api::<WorkflowRun>(&ns), run.as_ref(), &new).await?;
    let input = RunInput {
        run_name: run.name_any(),
        run_namespace: ns,
        spec: wf.spec.clone(),
        params,
        resume: BTreeMap::new(),
        brokers,
        default_connector: run.spec.connector_ref.name.clone(),
    };
    let a = spawn(run.clone(), new, input, ctx);
    active.insert(key(&run), a);
    // Admissions wait for this lock: publish the Event without holding it.
    drop(active);
    ctx.event(
        run.as_ref(),
        EventType::Normal,
        "Started",
        format!("running workflow {wf_name:?}"),
    )
    .await;
    Ok(Action::await_change())
}

/// A run that was Running or Stopping when the controller went away: continue from status.
async fn resume(run: Arc<WorkflowRun>, status: WorkflowRunStatus, ctx: &Context) -> Result<Action> {
    let ns = run.namespace().unwrap_or_default();
    if run.spec.stop || status.phase == Some(RunPhase::Stopping) {
        return finish_pending(
            &run,
            status,
            ctx,
            RunPhase::Stopped,
            "Stopped",
            "stopped".into(),
        )
        .await;
    }
    let Some(spec) = status.workflow.clone() else {
        return finish_pending(
            &run,
            status,
            ctx,
            RunPhase::Failed,
            "LostState",
            "the run has no pinned workflow to resume".into(),
        )
        .await;
    };
    let brokers = match resolve_brokers(ctx, &ns, &run, &spec).await? {
        Ok(b) => b,
        Err((reason, msg)) => {
            return finish_pending(&run, status, ctx, RunPhase::Failed, reason, msg).await;
        }
    };
    let params = match resolve_params(&spec.params, &run.spec.params) {
        Ok(p) => p,
        Err(e) => {
            return finish_pending(
                &run,
                status,
                ctx,
                RunPhase::Failed,
                "InvalidParam",
                format!("spec.params: {e}"),
            )
            .await;
        }
    };
    let resume = status
        .stages
        .iter()
        .map(|s| {
            let r = StageResume {
                succeeded: s.phase == StagePhase::Succeeded,
                published: s.published.unwrap_or(0).max(0) as u64,
                attempts: s.attempts.unwrap_or(0).max(0) as u32,
            };
            (s.name.clone(), r)
        })
        .collect();
    info!("resuming a run left in flight by an earlier controller");
    log_phase(
        ctx,
        &run,
        RunPhase::Running,
        "Resumed",
        "resumed from its status after a controller restart",
    );
    ctx.event(
        run.as_ref(),
        EventType::Normal,
        "Resumed",
        "resumed from its status after a controller restart".into(),
    )
    .await;
    let input = RunInput {
        run_name: run.name_any(),
        run_namespace: ns,
        spec,
        params,
        resume,
        brokers,
        default_connector: run.spec.connector_ref.name.clone(),
    };
    let mut active = ctx.runs.active.lock().await;
    let a = spawn(run.clone(), status, input, ctx);
    active.insert(key(&run), a);
    Ok(Action::await_change())
}

/// The brokers of the run's connector and of every connector its stages name. A missing
/// connector or Secret is `Err((reason, message))`: the run waits for it.
async fn resolve_brokers(
    ctx: &Context,
    ns: &str,
    run: &WorkflowRun,
    spec: &WorkflowSpec,
) -> Result<std::result::Result<BTreeMap<String, BrokerConfig>, (&'static str, String)>> {
    let mut names = vec![run.spec.connector_ref.name.clone()];
    names.extend(
        spec.stages
            .iter()
            .filter_map(|s| s.publish.as_ref()?.connector_ref.as_ref())
            .map(|r| r.name.clone()),
    );
    names.sort();
    names.dedup();
    let mut brokers = BTreeMap::new();
    for name in names {
        let Some(bc) = ctx.api::<BrokerConnector>(ns).get_opt(&name).await? else {
            let msg = format!(
                "BrokerConnector {name:?} not found in namespace {ns:?}; the run starts when it appears"
            );
            return Ok(Err(("ConnectorNotFound", msg)));
        };
        match connector::resolve(ctx, &bc).await? {
            Ok(b) => brokers.insert(name, b),
            Err(e) => return Ok(Err((e.reason(), format!("BrokerConnector {name:?}: {e}")))),
        };
    }
    Ok(Ok(brokers))
}

/// Older runs that are Pending/Queued (the queue is oldest first).
/// Runs admitted here but whose Running status the store has not seen yet do not count.
fn queued_ahead(
    store: &Stores<WorkflowRun>,
    run: &WorkflowRun,
    active: &HashMap<String, Active>,
) -> usize {
    let mine = (run.creation_timestamp(), run.namespace(), run.name_any());
    store
        .state()
        .iter()
        .filter(|r| {
            phase(r) == RunPhase::Pending
                && !r.spec.stop
                && !active.contains_key(&key(r))
                && r.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Queued")
                && (r.creation_timestamp(), r.namespace(), r.name_any()) < mine
        })
        .count()
}

/// Keeps a run Pending with a reason; writes only when something changed.
async fn pending(
    run: &WorkflowRun,
    status: WorkflowRunStatus,
    ctx: &Context,
    reason: &str,
    message: String,
) -> Result<Action> {
    let now = Timestamp::now();
    let mut new = WorkflowRunStatus {
        phase: Some(RunPhase::Pending),
        reason: Some(reason.into()),
        message: Some(message.clone()),
        observed_generation: run.metadata.generation,
        ..status.clone()
    };
    new.conditions = conditions::set(
        &new.conditions,
        SUCCEEDED,
        "Unknown",
        reason,
        &message,
        run.metadata.generation,
        now,
    );
    if new != status {
        if status.phase != Some(RunPhase::Pending) || status.reason.as_deref() != Some(reason) {
            log_phase(ctx, run, RunPhase::Pending, reason, &message);
        }
        apply_status(
            &ctx.api::<WorkflowRun>(&run.namespace().unwrap_or_default()),
            run,
            &new,
        )
        .await?;
        if status.reason.as_deref() != Some(reason) {
            ctx.event(run, EventType::Normal, reason, message).await;
        }
    }
    // References are watched, queued runs are woken when a slot frees; this is a safety net.
    Ok(Action::requeue(Duration::from_secs(
        if reason == "Queued" { 30 } else { 60 },
    )))
}

/// Ends a run that has no task (Stopped before start, or Failed on its references).
async fn finish_pending(
    run: &WorkflowRun,
    status: WorkflowRunStatus,
    ctx: &Context,
    phase: RunPhase,
    reason: &str,
    message: String,
) -> Result<Action> {
    let mut new = status;
    finalize(&mut new, phase, reason, &message, run.metadata.generation);
    // The log's terminal event is durable before the status says the run is over.
    log_phase(ctx, run, phase, reason, &message);
    ctx.events.flush().await;
    apply_status(
        &ctx.api::<WorkflowRun>(&run.namespace().unwrap_or_default()),
        run,
        &new,
    )
    .await?;
    ctx.runs.finished.lock().unwrap().insert(key(run));
    let type_ = if phase == RunPhase::Failed {
        EventType::Warning
    } else {
        EventType::Normal
    };
    ctx.event(run, type_, reason, message).await;
    Ok(Action::await_change())
}

fn finalize(
    status: &mut WorkflowRunStatus,
    phase: RunPhase,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let now = Timestamp::now();
    status.phase = Some(phase);
    status.reason = Some(reason.into());
    status.message = Some(message.into());
    status.observed_generation = generation;
    status.completed_at = Some(Time(now));
    let succeeded = if phase == RunPhase::Completed {
        "True"
    } else {
        "False"
    };
    status.conditions = conditions::set(
        &status.conditions,
        SUCCEEDED,
        succeeded,
        reason,
        message,
        generation,
        now,
    );
    for s in &mut status.stages {
        if matches!(s.phase, StagePhase::Pending) {
            s.phase = StagePhase::Skipped;
        }
    }
    status.progress = Some(progress(&status.stages));
}

fn progress(stages: &[StageStatus]) -> String {
    let done = stages
        .iter()
        .filter(|s| s.phase == StagePhase::Succeeded)
        .count();
    format!("{done}/{}", stages.len())
}

/// The live status of one executing run, fed by the engine and read by the status writer.
struct Tracker {
    status: Mutex<WorkflowRunStatus>,
    /// Wakes the writer at once (stage transitions, phase changes).
    changed: Notify,
    metrics: RunMetrics,
    log: EventLog,
    key: RunKey,
    /// Message events handed to the log by this execution, against the store's cap.
    logged: AtomicU64,
    /// Message events beyond the cap not yet counted in the log: they go to it in one number
    /// with each status pass, not one command per message.
    unlogged: AtomicU64,
}

impl Tracker {
    /// Hands the count of message events left out since the last call to the log.
    fn count_unlogged(&self) {
        let n = self.unlogged.swap(0, Ordering::Relaxed);
        if n > 0 {
            self.log.dropped(&self.key, n);
        }
    }

    fn stage<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut StageStatus, &mut WorkflowRunStatus) -> R,
    ) -> Option<R> {
        let mut st = self.status.lock().unwrap();
        let i = st.stages.iter().position(|s| s.name == name)?;
        let mut stage = std::mem::take(&mut st.stages[i]);
        let r = f(&mut stage, &mut st);
        st.stages[i] = stage;
        Some(r)
    }

    fn set_phase(&self, phase: RunPhase) {
        let mut st = self.status.lock().unwrap();
        st.phase = Some(phase);
        if phase == RunPhase::Stopping {
            st.reason = Some("Stopping".into());
            st.message = Some("a stop was requested; in-flight work is finishing".into());
        }
        drop(st);
        if phase == RunPhase::Stopping {
            self.log.append(
                &self.key,
                Event::phase(
                    &self.key,
                    phase,
                    "Stopping",
                    "a stop was requested; in-flight work is finishing",
                ),
            );
        }
        self.changed.notify_one();
    }
}

impl Observer for Tracker {
    fn stage_started(&self, stage: &str, attempt: u32) {
        self.log.append(
            &self.key,
            Event {
                attempt: Some(attempt),
                ..Event::stage(&self.key, events::STAGE_STARTED, stage)
            },
        );
        self.metrics.stage_started(stage);
        self.stage(stage, |s, _| {
            s.phase = StagePhase::Running;
            s.started_at.get_or_insert(Time(Timestamp::now()));
            s.attempts = Some(attempt as i32);
        });
        self.changed.notify_one();
    }

    fn published(
        &self,
        stage: &str,
        connector: &str,
        target: &Target,
        msg: &Message,
        delivery: &Delivery,
    ) {
        let limits = self.log.store().limits();
        if self.logged.fetch_add(1, Ordering::Relaxed) < limits.max_message_events {
            let e = Event::published(
                &self.key,
                stage,
                connector,
                target,
                msg,
                delivery,
                limits.max_payload_bytes,
            );
            self.log.append(&self.key, e);
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.published(stage);
        self.stage(stage, |s, st| {
            *s.published.get_or_insert(0) += 1;
            *st.messages_published.get_or_insert(0) += 1;
        });
    }

    fn stage_retrying(&self, stage: &str, attempt: u32, reason: &str, message: &str) {
        self.log.append(
            &self.key,
            Event {
                attempt: Some(attempt),
                reason: Some(reason.to_owned()),
                message: Some(message.to_owned()),
                ..Event::stage(&self.key, events::STAGE_RETRYING, stage)
            },
        );
        self.stage(stage, |s, _| {
            s.message = Some(format!(
                "attempt {attempt} failed ({reason}): {message}; retrying"
            ))
        });
        self.changed.notify_one();
    }

    fn stage_finished(&self, stage: &str, outcome: &StageOutcome) {
        self.log
            .append(&self.key, Event::stage_finished(&self.key, stage, outcome));
        self.metrics.stage_finished(stage, outcome);
        self.stage(stage, |s, _| {
            s.completed_at = Some(Time(Timestamp::now()));
            match outcome {
                StageOutcome::Succeeded => {
                    s.phase = StagePhase::Succeeded;
                    s.message = None;
                }
                StageOutcome::Stopped => s.phase = StagePhase::Stopped,
                StageOutcome::Failed { reason, message } => {
                    s.phase = StagePhase::Failed;
                    s.message = Some(format!("{reason}: {message}"));
                }
            }
        });
        let mut st = self.status.lock().unwrap();
        st.progress = Some(progress(&st.stages));
        drop(st);
        self.changed.notify_one();
    }
}

/// Starts the engine for `run` and the task that writes its progress.
fn spawn(
    run: Arc<WorkflowRun>,
    status: WorkflowRunStatus,
    input: RunInput,
    ctx: &Context,
) -> Active {
    let tracker = Arc::new(Tracker {
        status: Mutex::new(status.clone()),
        changed: Notify::new(),
        metrics: ctx.metrics.run(&input),
        log: ctx.events.clone(),
        key: log_key(&run),
        logged: AtomicU64::new(0),
        unlogged: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let (done_tx, done_rx) = watch::channel(false);
    let api: Api<WorkflowRun> = ctx.api(&input.run_namespace);
    let runs = ctx.runs.clone();
    let recorder = ctx.recorder.clone();
    let t = tracker.clone();
    let engine_stop = stop.clone();
    let shutdown = runs.shutdown.clone();
    let generation = run.metadata.generation;
    let active_run = ctx.metrics.engine.run_active();
    tokio::spawn(async move {
        let _active_run = active_run;
        // A controller shutdown stops the engine too, but the run stays Running (to resume).
        let engine_token = engine_stop.clone();
        let watch_shutdown = shutdown.clone();
        let relay = tokio::spawn(async move {
            watch_shutdown.cancelled().await;
            engine_token.cancel();
        });
        let observer: Arc<dyn Observer> = t.clone();
        let mut engine = tokio::spawn(runner::run(input, observer, engine_stop));
        let mut written = status;
        let outcome = loop {
            tokio::select! {
                res = &mut engine => break res.unwrap_or_else(|e| RunOutcome::Failed {
                    stage: String::new(), reason: "InternalError".into(), message: e.to_string() }),
                _ = t.changed.notified() => {}
                _ = tokio::time::sleep(WRITE_INTERVAL) => {}
            }
            t.count_unlogged();
            written = write_if_changed(&api, &run, &t, written).await;
            // Coalesce: at most one periodic write per interval.
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        relay.abort();
        t.count_unlogged();
        let mut last = t.status.lock().unwrap().clone();
        if shutdown.is_cancelled() && outcome == RunOutcome::Stopped {
            // Keep it Running: the next controller resumes it from these counts.
            let _ = apply_status(&api, run.as_ref(), &last).await;
        } else {
            let (phase, reason, message) = outcome.end();
            finalize(&mut last, phase, &reason, &message, generation);
            // The log's terminal event is durable before the status says the run is over.
            t.log
                .append(&t.key, Event::phase(&t.key, phase, &reason, &message));
            t.log.flush().await;
            if write_final(&api, &run, &last).await {
                runs.finished.lock().unwrap().insert(key(&run));
            }
            let type_ = if phase == RunPhase::Failed {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let ev = kube::runtime::events::Event {
                type_,
                reason: reason.clone(),
                note: Some(message.clone()),
                action: reason.clone(),
                secondary: None,
            };
            let _ = recorder
                .publish(&ev, &kube::Resource::object_ref(run.as_ref(), &()))
                .await;
            info!(namespace = ?run.namespace(), name = %run.name_any(), ?phase, "run finished");
        }
        runs.active.lock().await.remove(&key(&run));
        let _ = done_tx.send(true);
        runs.wake();
    });
    Active {
        stop,
        tracker,
        done: done_rx,
    }
}

/// Writes a run's final status, retrying for a while: until it lands, the status still says
/// Running, and a restarted controller would resume the run.
async fn write_final(
    api: &Api<WorkflowRun>,
    run: &WorkflowRun,
    status: &WorkflowRunStatus,
) -> bool {
    let mut wait = Duration::from_millis(200);
    for attempt in 1..=6 {
        match apply_status(api, run, status).await {
            Ok(()) => return true,
            Err(e) if attempt < 6 => {
                warn!(error = %e, attempt, "cannot write the final status; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => warn!(error = %e, "cannot write the final status; giving up"),
        }
    }
    false
}

async fn write_if_changed(
    api: &Api<WorkflowRun>,
    run: &WorkflowRun,
    tracker: &Tracker,
    written: WorkflowRunStatus,
) -> WorkflowRunStatus {
    let now = tracker.status.lock().unwrap().clone();
    if now == written {
        return written;
    }
    match apply_status(api, run, &now).await {
        Ok(()) => now,
        Err(e) => {
            warn!(error = %e, "cannot write run progress; will retry");
            written
        }
    }
}

impl Runs {
    /// Reconciles every run again: a slot is free, so the oldest queued run may start.
    fn wake(&self) {
        for t in &self.triggers {
            let _ = t.unbounded_send(());
        }
    }

    /// Stops every run in flight for a controller shutdown; their status stays Running so a
    /// new controller resumes them.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.cancel();
        let dones: Vec<_> = self
            .active
            .lock()
            .await
            .values()
            .map(|a| a.done.clone())
            .collect();
        for mut d in dones {
            let _ = tokio::time::timeout(grace, d.wait_for(|x| *x)).await;
        }
    }
}
