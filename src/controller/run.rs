//! WorkflowRun: references, params, the concurrency limit, then the engine in a task of its
//! own whose progress is written to status, coalesced.

use super::{
    Context, Error, FINALIZER, Result, apply_status,
    approvals::{RunApprovals, verdict},
    conditions, connector, drain,
    lifecycle::{self, Blocked},
    metrics::WORKFLOWRUN,
    tracker::{Tracker, phase_events, progress, write_final, write_if_changed},
    watcher_apis,
};
use crate::watch::Stores;
use crate::{
    api::{
        BrokerConnector, LocalObjectRef, RunPhase, StagePhase, StageStatus, Workflow, WorkflowRun,
        WorkflowRunStatus, WorkflowSpec, conditions::SUCCEEDED,
    },
    brokers::BrokerConfig,
    engine::{
        amounts,
        check::check_workflow,
        params::resolve_params,
        runner::{self, Observer, RunInput, RunOutcome, StageResume},
    },
    events::{Event, RunKey},
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
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
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
    /// Decided runs waiting for a slot: they go before queued runs.
    resuming: Arc<AtomicUsize>,
    /// Notified whenever a slot may have freed.
    slot_freed: Arc<Notify>,
}

struct Active {
    stop: CancellationToken,
    tracker: Arc<Tracker>,
    approvals: Arc<RunApprovals>,
    done: watch::Receiver<bool>,
}

/// Runs that hold an active-run slot: those executing, not only waiting for a decision, plus
/// decided runs waiting for a slot (they go first).
fn busy(runs: &Runs, active: &HashMap<String, Active>) -> usize {
    active
        .values()
        .filter(|a| !a.tracker.waiting.load(Ordering::SeqCst))
        .count()
        + runs.resuming.load(Ordering::SeqCst)
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
        resuming: Default::default(),
        slot_freed: Default::default(),
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
    let mut status = run.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    // Who started it, copied once; every status write below carries it.
    let unattributed = status.triggered_by.is_none();
    if unattributed {
        status.triggered_by = Some(lifecycle::triggered_by(&run));
    }
    if phase.is_finished() {
        ctx.runs.finished.lock().unwrap().remove(&key(&run));
        if unattributed {
            // A run that finished before runs were attributed.
            apply_status(
                &ctx.api::<WorkflowRun>(&run.namespace().unwrap_or_default()),
                run.as_ref(),
                &status,
            )
            .await?;
        }
        return lifecycle::expire(&run, &status, ctx).await;
    }
    if ctx.runs.finished.lock().unwrap().contains(&key(&run)) {
        // A cached object older than the final status written; its update is on the way.
        return Ok(Action::await_change());
    }
    {
        let active = ctx.runs.active.lock().await;
        if let Some(a) = active.get(&key(&run)) {
            offer_decisions(&run, a, ctx).await;
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
        RunPhase::Running | RunPhase::Stopping | RunPhase::WaitingForApproval => {
            resume(run, status, ctx).await
        }
        _ => start(run, status, ctx).await,
    }
}

/// Hands the decisions written on the run to its approval stages; a decision that does not parse
/// is reported, not taken.
async fn offer_decisions(run: &WorkflowRun, a: &Active, ctx: &Context) {
    let mut good = BTreeMap::new();
    for (stage, d) in run.decisions() {
        match d {
            Ok(r) => {
                good.insert(stage, r);
            }
            Err(e) => {
                warn!(error = %e, "ignoring a decision that does not parse");
                ctx.event(run, EventType::Warning, "InvalidDecision", e)
                    .await;
            }
        }
    }
    a.approvals.offer(good);
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
        if busy(&ctx.runs, &active) + queued_ahead(&ctx.runs.store, &run, &active) >= ctx.runs.max {
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    }
    let resolved = match lifecycle::resolve(ctx, &run).await? {
        Ok(r) => r,
        Err(Blocked::Wait(reason, msg)) => return pending(&run, status, ctx, reason, msg).await,
        Err(Blocked::Fail(reason, msg)) => {
            return finish_pending(&run, status, ctx, RunPhase::Failed, reason, msg).await;
        }
    };
    let wf_name = &resolved.workflow;
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
    let inherited = match &resolved.source {
        Some(src) => match lifecycle::inherited(&wf.spec, wf_name, src) {
            Ok(i) => i,
            Err((reason, msg)) => {
                return finish_pending(&run, status, ctx, RunPhase::Failed, reason, msg).await;
            }
        },
        None => BTreeMap::new(),
    };
    let brokers = match resolve_brokers(ctx, &ns, &resolved.connector, &wf.spec).await? {
        Ok(b) => b,
        Err((reason, msg)) => return pending(&run, status, ctx, reason, msg).await,
    };
    let params = match resolve_params(&wf.spec.params, &resolved.params) {
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
    if let Err(e) = amounts::check(&wf.spec, &params) {
        let msg = format!("Workflow {wf_name:?}: {e}");
        return finish_pending(
            &run,
            status,
            ctx,
            RunPhase::Failed,
            amounts::INVALID_AMOUNT,
            msg,
        )
        .await;
    }

    // Admission: a free slot for this run after every older queued run has one. The oldest
    // queued runs start together as slots free (one at a time, a wave of runs that ended
    // together left its slots empty until the next periodic requeue).
    let mut active = ctx.runs.active.lock().await;
    let ahead = queued_ahead(&ctx.runs.store, &run, &active);
    if busy(&ctx.runs, &active) + ahead >= ctx.runs.max {
        drop(active);
        // The counts as the run was queued; not rewritten as the queue moves (rewriting every
        // queued run's status each time made the writes grow with the square of the queue).
        let msg = match (&status.reason, &status.message) {
            (Some(r), Some(m)) if r == "Queued" => m.clone(),
            _ => format!(
                "waiting for a slot: {} of {} runs active, {ahead} queued ahead when it was \
                 queued; queued runs start oldest first",
                busy(&ctx.runs, &*ctx.runs.active.lock().await),
                ctx.runs.max
            ),
        };
        return pending(&run, status, ctx, "Queued", msg).await;
    }
    let now = Timestamp::now();
    let repeats = resolved.source.as_ref().map_or(String::new(), |s| {
        let from = s
            .from_stage
            .as_ref()
            .map_or(String::new(), |f| format!(" from stage {f:?}"));
        format!(" (a re-run of {:?}{from})", s.name)
    });
    let mut new = WorkflowRunStatus {
        phase: Some(RunPhase::Running),
        reason: Some("Running".into()),
        message: Some(format!(
            "running workflow {wf_name:?} through {}{repeats}",
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
            .map(|s| {
                inherited
                    .get(&s.name)
                    .cloned()
                    .unwrap_or_else(|| StageStatus {
                        name: s.name.clone(),
                        ..Default::default()
                    })
            })
            .collect(),
        workflow: Some(wf.spec.clone()),
        workflow_ref: Some(LocalObjectRef {
            name: wf_name.clone(),
        }),
        connector_ref: Some(LocalObjectRef {
            name: resolved.connector.clone(),
        }),
        params: Some(resolved.params.clone()),
        ..status
    };
    new.progress = Some(progress(&new));
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
    let approvals = Arc::new(RunApprovals::new(ctx.runs.clone(), key(&run)));
    let input = RunInput {
        run_name: run.name_any(),
        run_namespace: ns,
        run_uid: run.uid().unwrap_or_default(),
        spec: wf.spec.clone(),
        params,
        resume: lifecycle::resume_of(&inherited),
        brokers,
        default_connector: resolved.connector.clone(),
        started_at: now,
        approvals: approvals.clone(),
        pause: ctx.runs.shutdown.child_token(),
    };
    let a = spawn(run.clone(), new, input, approvals, ctx);
    offer_decisions(&run, &a, ctx).await;
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
    // What it started with (recorded in status; runs started before that, their spec).
    let connector = status
        .connector_ref
        .as_ref()
        .map_or_else(|| run.spec.connector_ref.name.clone(), |c| c.name.clone());
    let given = status
        .params
        .clone()
        .unwrap_or_else(|| run.spec.params.clone());
    let brokers = match resolve_brokers(ctx, &ns, &connector, &spec).await? {
        Ok(b) => b,
        Err((reason, msg)) => {
            return finish_pending(&run, status, ctx, RunPhase::Failed, reason, msg).await;
        }
    };
    let params = match resolve_params(&spec.params, &given) {
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
    let continues = |name: &str| {
        spec.stages
            .iter()
            .any(|s| s.name == name && s.continue_on_error)
    };
    let resume = status
        .stages
        .iter()
        .map(|s| {
            // A stage that failed without continueOnError runs again (its run never ended).
            let finished = match s.phase {
                StagePhase::Succeeded | StagePhase::Inherited => Some(s.phase),
                StagePhase::Skipped if s.reason.is_some() => Some(s.phase),
                StagePhase::Failed if continues(&s.name) => Some(s.phase),
                _ => None,
            };
            let r = StageResume {
                finished,
                published: s.published.unwrap_or(0).max(0) as u64,
                received: s.received.unwrap_or(0).max(0) as u64,
                attempts: s.attempts.unwrap_or(0).max(0) as u32,
                started_at: s.started_at.as_ref().map(|t| t.0),
                outputs: s.outputs.clone(),
                decided: s.approval.as_ref().map(verdict),
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
    let approvals = Arc::new(RunApprovals::new(ctx.runs.clone(), key(&run)));
    let input = RunInput {
        run_name: run.name_any(),
        run_namespace: ns,
        run_uid: run.uid().unwrap_or_default(),
        spec,
        params,
        resume,
        brokers,
        default_connector: connector,
        started_at: status
            .started_at
            .as_ref()
            .map_or_else(Timestamp::now, |t| t.0),
        approvals: approvals.clone(),
        pause: ctx.runs.shutdown.child_token(),
    };
    let mut active = ctx.runs.active.lock().await;
    let a = spawn(run.clone(), status, input, approvals, ctx);
    offer_decisions(&run, &a, ctx).await;
    active.insert(key(&run), a);
    Ok(Action::await_change())
}

/// The brokers of the run's connector and of every connector its stages name. A missing
/// connector or Secret is `Err((reason, message))`: the run waits for it.
async fn resolve_brokers(
    ctx: &Context,
    ns: &str,
    connector: &str,
    spec: &WorkflowSpec,
) -> Result<std::result::Result<BTreeMap<String, BrokerConfig>, (&'static str, String)>> {
    let mut names = vec![connector.to_owned()];
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
    // Compared with what is stored (the caller's status may carry a new triggeredBy).
    if Some(&new) != run.status.as_ref() {
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
    // A re-run waiting for its source looks again soon (the source may finish any moment).
    Ok(Action::requeue(Duration::from_secs(match reason {
        "Queued" => 30,
        lifecycle::SOURCE_NOT_FOUND | lifecycle::SOURCE_NOT_FINISHED => 3,
        _ => 60,
    })))
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
    status.progress = Some(progress(status));
}

/// Starts the engine for `run` and the task that writes its progress.
fn spawn(
    run: Arc<WorkflowRun>,
    status: WorkflowRunStatus,
    input: RunInput,
    approvals: Arc<RunApprovals>,
    ctx: &Context,
) -> Active {
    let runs_for_wait = ctx.runs.clone();
    let waiting = status.phase == Some(RunPhase::WaitingForApproval);
    let tracker = Arc::new(Tracker {
        status: Mutex::new(status.clone()),
        changed: Notify::new(),
        metrics: ctx.metrics.run(&input),
        log: ctx.events.clone(),
        key: log_key(&run),
        logged: AtomicU64::new(0),
        unlogged: AtomicU64::new(0),
        waiting: AtomicBool::new(waiting),
        recorded: Default::default(),
        // A run that only waits gives its slot back: queued runs may start.
        on_waiting: Box::new(move |waiting| {
            if waiting {
                runs_for_wait.wake();
            }
        }),
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
    // Cancelled alone (without a shutdown) when a stage was fenced: a newer execution of the
    // run (another controller) owns it now, so this one writes nothing more.
    let pause = input.pause.clone();
    let fenced_shutdown = shutdown.clone();
    let fenced = move || pause.is_cancelled() && !fenced_shutdown.is_cancelled();
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
            if fenced() {
                continue;
            }
            let before = written.stages.clone();
            written = write_if_changed(&api, &run, &t, written).await;
            for (reason, note) in phase_events(&before, &written) {
                let ev = kube::runtime::events::Event {
                    type_: EventType::Normal,
                    reason: reason.into(),
                    note: Some(note),
                    action: reason.into(),
                    secondary: None,
                };
                let _ = recorder
                    .publish(&ev, &kube::Resource::object_ref(run.as_ref(), &()))
                    .await;
            }
            // Coalesce: at most one periodic write per interval.
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        relay.abort();
        t.count_unlogged();
        let mut last = t.status.lock().unwrap().clone();
        if outcome == RunOutcome::Stopped && fenced() {
            warn!(namespace = ?run.namespace(), name = %run.name_any(),
                  "fenced: another controller publishes this run now; leaving its status to it");
        } else if shutdown.is_cancelled() && outcome == RunOutcome::Stopped {
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
        approvals,
        done: done_rx,
    }
}

impl Runs {
    /// The live status of the run `key` while this controller executes it.
    pub(super) async fn tracker(&self, key: &str) -> Option<Arc<Tracker>> {
        self.active.lock().await.get(key).map(|a| a.tracker.clone())
    }

    /// Reconciles every run again: a slot is free, so the oldest queued run may start.
    fn wake(&self) {
        self.slot_freed.notify_waiters();
        for t in &self.triggers {
            let _ = t.unbounded_send(());
        }
    }

    /// Waits, for the decided run `key` that gave its slot back while it waited, until a slot
    /// is free, and takes it (ahead of queued runs, which count the runs waiting here).
    pub(super) async fn take_slot(&self, key: &str) {
        struct Resuming(Arc<AtomicUsize>);
        impl Drop for Resuming {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        loop {
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let active = self.active.lock().await;
                let Some(me) = active.get(key) else { return };
                if !me.tracker.waiting.load(Ordering::SeqCst) {
                    return;
                }
                let others = active
                    .iter()
                    .filter(|(k, a)| *k != key && !a.tracker.waiting.load(Ordering::SeqCst))
                    .count();
                if others < self.max {
                    me.tracker.waiting.store(false, Ordering::SeqCst);
                    return;
                }
            }
            let _resuming = {
                self.resuming.fetch_add(1, Ordering::SeqCst);
                Resuming(self.resuming.clone())
            };
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
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
