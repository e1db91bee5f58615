//! WorkflowSchedule: at each time of the schedule, a WorkflowRun named after that time; the
//! concurrency policy, missed times, history limits, and a status with the next time.
//!
//! The arithmetic is in [`crate::schedule`]; this file reads the runs of the schedule, creates
//! or stops runs, and writes status. A time is fired by creating the run
//! `SCHEDULE-<Unix minutes>`: when that meets `AlreadyExists` the time was fired before (by this
//! process before a restart, or by another replica), so no time fires twice.

use super::{Context, Error, Result, apply_status, conditions, drain, watcher_apis};
use crate::{
    api::{
        ConcurrencyPolicy, RunPhase, SCHEDULE_LABEL, WorkflowRun, WorkflowSchedule,
        WorkflowScheduleStatus, conditions::READY,
    },
    schedule::{self, Due},
};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::{api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, events::EventType, watcher},
};
use std::{sync::Arc, time::Duration};
use tracing::{info, instrument, warn};

/// The metrics label of this controller.
pub const WORKFLOWSCHEDULE: &str = "workflowschedule";
/// The longest a schedule waits between two looks at the clock, so that a wall clock that
/// jumps is noticed within this time.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Runs the WorkflowSchedule controllers (one per watched namespace) until `ctx.stop`.
pub async fn controller(ctx: Arc<Context>) {
    let runs = watcher_apis::<WorkflowRun>(&ctx.client, &ctx.settings);
    let streams = watcher_apis::<WorkflowSchedule>(&ctx.client, &ctx.settings)
        .into_iter()
        .zip(runs)
        .map(|(api, runs)| {
            Controller::new(api, watcher::Config::default())
                // Only the runs a schedule created wake it.
                .owns(runs, watcher::Config::default().labels(SCHEDULE_LABEL))
                .with_config(
                    kube::runtime::controller::Config::default()
                        .debounce(Duration::from_millis(500)),
                )
                .graceful_shutdown_on(ctx.stop.clone().cancelled_owned())
                .run(reconcile, error_policy, ctx.clone())
                .boxed()
        });
    drain(WORKFLOWSCHEDULE, futures::stream::select_all(streams)).await;
}

fn error_policy(_: Arc<WorkflowSchedule>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile.set_failure(WORKFLOWSCHEDULE, err);
    warn!(error = %err, label = err.metric_label(), "WorkflowSchedule reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

fn phase(run: &WorkflowRun) -> RunPhase {
    run.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or_default()
}

fn reference(run: &WorkflowRun) -> ObjectReference {
    ObjectReference {
        api_version: Some(WorkflowRun::api_version(&()).into()),
        kind: Some(WorkflowRun::kind(&()).into()),
        name: run.metadata.name.clone(),
        namespace: run.metadata.namespace.clone(),
        uid: run.metadata.uid.clone(),
        ..Default::default()
    }
}

#[instrument(skip_all, fields(namespace = s.namespace().unwrap_or_default(), name = s.name_any()))]
async fn reconcile(s: Arc<WorkflowSchedule>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile.count_and_measure(WORKFLOWSCHEDULE);
    if s.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let runs_api: Api<WorkflowRun> = ctx.api(&ns);
    let now = Timestamp::now();
    // A name too long for a label has no runs (and cannot be a label selector): Ready says so.
    let mut runs: Vec<WorkflowRun> = if name.len() > schedule::MAX_NAME {
        Vec::new()
    } else {
        runs_api
            .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
            .await?
            .items
    };
    runs.retain(|r| s.owns(r) && r.metadata.deletion_timestamp.is_none());
    let old = s.status.clone().unwrap_or_default();
    let mut last_schedule_time = old.last_schedule_time.as_ref().map(|t| t.0);
    let (mut ready, mut reason) = ("True", "Scheduled");
    let message: String;
    let mut next = None;

    match s.parse() {
        Err(e) => {
            (ready, reason) = ("False", e.reason());
            message = e.to_string();
        }
        Ok((sched, window)) => {
            let created = s.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let handled = last_schedule_time.or(created).unwrap_or(now);
            let plan = schedule::plan(&sched, &window, handled, now);
            if s.spec.suspend {
                (reason, message) = ("Suspended", "spec.suspend is true".to_string());
            } else {
                next = plan.next;
                match plan.due {
                    Due::Nothing => {}
                    Due::Fire(t) => {
                        if let Some(run) = fire(&s, &ctx, &runs_api, &runs, t).await? {
                            runs.push(run);
                        }
                        last_schedule_time = Some(t);
                    }
                    Due::Missed { time, late } => {
                        let note = format!(
                            "missed the run for {time}: {}s late, past startingDeadlineSeconds {}",
                            late.as_secs(),
                            s.spec.starting_deadline_seconds.unwrap_or_default()
                        );
                        ctx.event(s.as_ref(), EventType::Warning, "MissedSchedule", note)
                            .await;
                        last_schedule_time = Some(time);
                    }
                }
                message = match next {
                    Some(t) => format!("next run at {t}"),
                    None => {
                        reason = "Ended";
                        "no time left before endAt".into()
                    }
                };
            }
        }
    }
    prune_history(&s, &ctx, &runs_api, &mut runs).await;

    let mut active: Vec<_> = runs
        .iter()
        .filter(|r| !phase(r).is_finished())
        .map(reference)
        .collect();
    active.sort_by(|a, b| a.name.cmp(&b.name));
    let last_run_name = runs
        .iter()
        .max_by_key(|r| (r.creation_timestamp().map(|t| t.0), r.name_any()))
        .map(|r| r.name_any())
        .or(old.last_run_name.clone());
    let generation = s.metadata.generation;
    let new = WorkflowScheduleStatus {
        last_schedule_time: last_schedule_time.map(Time),
        next_schedule_time: next.map(Time),
        active,
        last_run_name,
        observed_generation: generation,
        conditions: conditions::set(
            &old.conditions,
            READY,
            ready,
            reason,
            &message,
            generation,
            now,
        ),
    };
    if new != old {
        let was =
            conditions::get(&old.conditions, READY).map(|c| (c.status.clone(), c.reason.clone()));
        if ready == "False" && was != Some((ready.into(), reason.into())) {
            ctx.event(s.as_ref(), EventType::Warning, reason, message.clone())
                .await;
        }
        apply_status(&ctx.api::<WorkflowSchedule>(&ns), s.as_ref(), &new).await?;
    }
    Ok(match next {
        Some(t) => {
            let wait = Duration::try_from(t.duration_since(Timestamp::now()))
                .unwrap_or_default()
                .min(MAX_WAIT);
            Action::requeue(wait.max(Duration::from_millis(10)))
        }
        // Invalid, suspended or ended: the next change of the schedule wakes it.
        None => Action::await_change(),
    })
}

/// Fires the time `t` under the concurrency policy; returns the run it created. A run that
/// already exists under the time's name means the time was fired before.
async fn fire(
    s: &WorkflowSchedule,
    ctx: &Context,
    api: &Api<WorkflowRun>,
    runs: &[WorkflowRun],
    t: Timestamp,
) -> Result<Option<WorkflowRun>> {
    let name = schedule::run_name(&s.name_any(), t);
    if runs.iter().any(|r| r.name_any() == name) {
        return Ok(None);
    }
    let active: Vec<&WorkflowRun> = runs.iter().filter(|r| !phase(r).is_finished()).collect();
    let names = || {
        active
            .iter()
            .map(|r| r.name_any())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match s.spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => {
            let note = format!(
                "skipped the run for {t}: concurrencyPolicy Forbid and {} still active",
                names()
            );
            ctx.event(s, EventType::Normal, "Skipped", note).await;
            return Ok(None);
        }
        ConcurrencyPolicy::Replace if !active.is_empty() => {
            let stop = serde_json::json!({ "spec": { "stop": true } });
            for r in active.iter().filter(|r| !r.spec.stop) {
                match api
                    .patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(&stop))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let note = format!(
                "stopping {} to start {name} (concurrencyPolicy Replace)",
                names()
            );
            ctx.event(s, EventType::Normal, "Replaced", note).await;
        }
        _ => {}
    }
    let run = s.new_run(
        Some(name.clone()),
        Some(t),
        &format!("schedule/{}", s.name_any()),
    );
    match api.create(&PostParams::default(), &run).await {
        Ok(run) => {
            info!(run = %name, time = %t, "scheduled run created");
            ctx.event(
                s,
                EventType::Normal,
                "Fired",
                format!("created run {name} for {t}"),
            )
            .await;
            Ok(Some(run))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        // The template is wrong (the API server rejected the run): say so; the time is spent.
        Err(kube::Error::Api(e)) if (400..500).contains(&e.code) && e.code != 429 => {
            let note = format!("cannot create run {name} for {t}: {}", e.message);
            ctx.event(s, EventType::Warning, "FailedCreate", note).await;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the oldest finished runs beyond the history limits (their finalizer removes their
/// event logs); `runs` loses them.
async fn prune_history(
    s: &WorkflowSchedule,
    ctx: &Context,
    api: &Api<WorkflowRun>,
    runs: &mut Vec<WorkflowRun>,
) {
    let finished_at = |r: &WorkflowRun| {
        let done = r.status.as_ref().and_then(|st| st.completed_at.clone());
        (done.or(r.creation_timestamp()).map(|t| t.0), r.name_any())
    };
    let mut doomed = Vec::new();
    for (limit, succeeded) in [
        (s.spec.successful_runs_history_limit, true),
        (s.spec.failed_runs_history_limit, false),
    ] {
        let mut kept: Vec<&WorkflowRun> = runs
            .iter()
            .filter(|r| phase(r).is_finished() && (phase(r) == RunPhase::Completed) == succeeded)
            .collect();
        kept.sort_by_key(|r| std::cmp::Reverse(finished_at(r)));
        let limit = usize::try_from(limit.max(0)).unwrap_or_default();
        doomed.extend(kept.iter().skip(limit).map(|r| r.name_any()));
    }
    if doomed.is_empty() {
        return;
    }
    let mut deleted = Vec::new();
    for name in &doomed {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => deleted.push(name.clone()),
            Err(kube::Error::Api(e)) if e.code == 404 => deleted.push(name.clone()),
            Err(e) => {
                warn!(run = %name, error = %e, "cannot delete a run beyond the history limit")
            }
        }
    }
    runs.retain(|r| !deleted.contains(&r.name_any()));
    if !deleted.is_empty() {
        let note = format!(
            "deleted finished runs beyond the history limits: {}",
            deleted.join(", ")
        );
        ctx.event(s, EventType::Normal, "DeletedRuns", note).await;
    }
}
