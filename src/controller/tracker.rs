//! The live status of one executing run: the engine's [`Observer`], writing the run's event log
//! as things happen and keeping the status the writer task sends to the API server, coalesced.

use super::{apply_status, metrics::RunMetrics};
use crate::api::WorkflowRun;
use crate::{
    api::{ApprovalRecord, Decision, RunPhase, StagePhase, StageStatus, WorkflowRunStatus},
    brokers::Delivery,
    engine::{
        approval::{ApprovalAsk, Verdict},
        runner::{Observer, StageOutcome},
    },
    events::{self, Event, EventLog, RunKey},
    message::{Message, Target},
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::Api;
use std::time::Duration;
use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};
use tokio::sync::Notify;
use tracing::warn;

/// The live status of one executing run, fed by the engine and read by the status writer.
pub(super) struct Tracker {
    pub(super) status: Mutex<WorkflowRunStatus>,
    /// Wakes the writer at once (stage transitions, phase changes).
    pub(super) changed: Notify,
    pub(super) metrics: RunMetrics,
    pub(super) log: EventLog,
    pub(super) key: RunKey,
    /// Message events handed to the log by this execution, against the store's cap.
    pub(super) logged: AtomicU64,
    /// Message events beyond the cap not yet counted in the log: they go to it in one number
    /// with each status pass, not one command per message.
    pub(super) unlogged: AtomicU64,
    /// The run only waits for approvals: it holds no active-run slot.
    pub(super) waiting: AtomicBool,
    /// The approval stages whose decision the last status written to the API server records:
    /// the engine goes on after a decision only once it is there (see [`RunApprovals`]).
    ///
    /// [`RunApprovals`]: super::approvals::RunApprovals
    pub(super) recorded: tokio::sync::watch::Sender<std::collections::BTreeSet<String>>,
    /// Called when the run starts or stops only waiting (a slot freed or taken).
    pub(super) on_waiting: Box<dyn Fn(bool) + Send + Sync>,
}

/// Stages done out of all stages, e.g. `2/5`: succeeded, inherited, skipped by their `when`,
/// or failed with `continueOnError`.
pub(super) fn progress(st: &WorkflowRunStatus) -> String {
    let continues = |name: &str| {
        st.workflow.as_ref().is_some_and(|w| {
            w.stages
                .iter()
                .any(|s| s.name == name && s.continue_on_error)
        })
    };
    let done = st
        .stages
        .iter()
        .filter(|s| match s.phase {
            StagePhase::Succeeded | StagePhase::Inherited => true,
            StagePhase::Skipped => s.reason.is_some(),
            StagePhase::Failed => continues(&s.name),
            _ => false,
        })
        .count();
    format!("{done}/{}", st.stages.len())
}

/// The approval record of a verdict.
pub(super) fn record(v: &Verdict) -> ApprovalRecord {
    ApprovalRecord {
        decision: if v.approved {
            Decision::Approved
        } else {
            Decision::Rejected
        },
        user: v.user.clone(),
        comment: v.comment.clone(),
        time: Some(Time(v.time)),
    }
}

impl Tracker {
    /// Hands the count of message events left out since the last call to the log.
    pub(super) fn count_unlogged(&self) {
        let n = self.unlogged.swap(0, Ordering::Relaxed);
        if n > 0 {
            self.log.dropped(&self.key, n);
        }
    }

    /// Appends a message event made by `make` (given the payload cap) while the run is under
    /// the store's cap of message events; beyond it, counts the event instead.
    fn log_message(&self, make: impl FnOnce(usize) -> Event) {
        let limits = self.log.store().limits();
        if self.logged.fetch_add(1, Ordering::Relaxed) < limits.max_message_events {
            self.log.append(&self.key, make(limits.max_payload_bytes));
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
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

    pub(super) fn set_phase(&self, phase: RunPhase) {
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

    /// The run is `WaitingForApproval` when an approval stage waits and no other stage
    /// executes, else `Running` (unless a stop is under way). Logs the change of phase.
    fn update_run_phase(&self) {
        let mut st = self.status.lock().unwrap();
        if matches!(st.phase, Some(RunPhase::Stopping)) {
            return;
        }
        let waiting = st
            .stages
            .iter()
            .any(|s| s.phase == StagePhase::WaitingForApproval)
            && !st.stages.iter().any(|s| s.phase == StagePhase::Running);
        let (phase, reason, message) = if waiting {
            let names: Vec<_> = st
                .stages
                .iter()
                .filter(|s| s.phase == StagePhase::WaitingForApproval)
                .map(|s| s.name.as_str())
                .collect();
            (
                RunPhase::WaitingForApproval,
                "WaitingForApproval",
                format!("waiting for a decision on stage {}", names.join(", ")),
            )
        } else {
            (RunPhase::Running, "Running", String::new())
        };
        if st.phase == Some(phase) {
            return;
        }
        st.phase = Some(phase);
        st.reason = Some(reason.into());
        if waiting {
            st.message = Some(message.clone());
        } else {
            st.message = Some("stages are executing".into());
        }
        drop(st);
        let message = if waiting {
            message
        } else {
            "decided; stages are executing".into()
        };
        self.log
            .append(&self.key, Event::phase(&self.key, phase, reason, &message));
        if self.waiting.swap(waiting, Ordering::SeqCst) != waiting {
            (self.on_waiting)(waiting);
        }
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
        self.update_run_phase();
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
        self.log_message(|max| {
            Event::published(&self.key, stage, connector, target, msg, delivery, max)
        });
        self.metrics.published(stage);
        self.stage(stage, |s, st| {
            *s.published.get_or_insert(0) += 1;
            *st.messages_published.get_or_insert(0) += 1;
        });
    }

    fn received(
        &self,
        stage: &str,
        connector: &str,
        source: &Target,
        msg: &Message,
        delivery: &Delivery,
    ) {
        self.log_message(|max| {
            Event::received(&self.key, stage, connector, source, msg, delivery, max)
        });
        self.metrics.published(stage);
        self.stage(stage, |s, _| *s.received.get_or_insert(0) += 1);
    }

    fn stage_waiting(&self, stage: &str, ask: &ApprovalAsk) {
        self.log.append(
            &self.key,
            Event {
                message: Some(ask.message.clone()),
                ..Event::stage(&self.key, events::STAGE_WAITING, stage)
            },
        );
        self.stage(stage, |s, _| {
            s.phase = StagePhase::WaitingForApproval;
            s.message = Some(ask.message.clone());
        });
        self.update_run_phase();
        self.changed.notify_one();
    }

    fn stage_decided(&self, stage: &str, verdict: &Verdict) {
        self.log
            .append(&self.key, Event::decided(&self.key, stage, verdict));
        self.metrics.decided(verdict.approved);
        self.stage(stage, |s, _| {
            s.phase = StagePhase::Running;
            s.approval = Some(record(verdict));
        });
        self.update_run_phase();
        self.changed.notify_one();
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

    fn stage_outputs(&self, stage: &str, outputs: &BTreeMap<String, String>) {
        self.stage(stage, |s, _| s.outputs = outputs.clone());
    }

    fn stage_finished(&self, stage: &str, outcome: &StageOutcome) {
        let outputs = self
            .stage(stage, |s, _| s.outputs.clone())
            .filter(|o| !o.is_empty());
        self.log.append(
            &self.key,
            Event {
                outputs,
                ..Event::stage_finished(&self.key, stage, outcome)
            },
        );
        self.metrics.stage_finished(stage, outcome);
        self.stage(stage, |s, _| {
            s.completed_at = Some(Time(Timestamp::now()));
            match outcome {
                StageOutcome::Succeeded => {
                    s.phase = StagePhase::Succeeded;
                    s.reason = None;
                    s.message = None;
                }
                StageOutcome::Stopped => s.phase = StagePhase::Stopped,
                StageOutcome::Failed { reason, message } => {
                    s.phase = StagePhase::Failed;
                    s.reason = Some(reason.clone());
                    s.message = Some(format!("{reason}: {message}"));
                }
                StageOutcome::Skipped { reason, message } => {
                    s.phase = StagePhase::Skipped;
                    s.reason = Some(reason.clone());
                    s.message = Some(message.clone());
                }
            }
        });
        let mut st = self.status.lock().unwrap();
        st.progress = Some(progress(&st));
        drop(st);
        self.update_run_phase();
        self.changed.notify_one();
    }
}

/// The Kubernetes Events of what changed between two written statuses: the run starts or stops
/// waiting for a decision, and each decision.
pub(super) fn phase_events(
    stages: &[StageStatus],
    now: &WorkflowRunStatus,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for s in &now.stages {
        let was = stages.iter().find(|o| o.name == s.name);
        if s.phase == StagePhase::WaitingForApproval
            && was.is_none_or(|o| o.phase != StagePhase::WaitingForApproval)
        {
            out.push((
                "WaitingForApproval",
                format!(
                    "stage {:?} waits for a decision: {}",
                    s.name,
                    s.message.as_deref().unwrap_or_default()
                ),
            ));
        }
        if let Some(a) = &s.approval
            && was.is_none_or(|o| o.approval.is_none())
        {
            let (reason, verb) = match a.decision {
                crate::api::Decision::Approved => ("Approved", "approved"),
                crate::api::Decision::Rejected => ("Rejected", "rejected"),
            };
            let comment = a
                .comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            out.push((
                reason,
                format!("stage {:?} {verb} by {}{comment}", s.name, a.user),
            ));
        }
    }
    out
}

/// Writes a run's final status, retrying until it lands: until then the status still says
/// Running, and a reconcile after a re-list (or a restarted controller) would resume the run and
/// run its last stages again. So while the API server (or etcd) is away it keeps trying, with a
/// growing pause up to 5 s, and the run keeps its place among the active runs meanwhile. It gives
/// up only when the run is gone (404) or the API server refuses the status itself (another 4xx,
/// after six attempts).
pub(super) async fn write_final(
    api: &Api<WorkflowRun>,
    run: &WorkflowRun,
    status: &WorkflowRunStatus,
) -> bool {
    let mut wait = Duration::from_millis(200);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let e = match apply_status(api, run, status).await {
            Ok(()) => return true,
            Err(e) => e,
        };
        let refused = match &e {
            super::Error::Kube(kube::Error::Api(s)) if s.code == 404 => {
                warn!(error = %e, "the run is gone: its final status is not written");
                return false;
            }
            super::Error::Kube(kube::Error::Api(s)) => s.code < 500 && s.code != 429,
            super::Error::Kube(_) => false,
            _ => true,
        };
        if refused && attempt >= 6 {
            warn!(error = %e, "cannot write the final status; giving up");
            return false;
        }
        warn!(error = %e, attempt, "cannot write the final status; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

pub(super) async fn write_if_changed(
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
        Ok(()) => {
            let decided = now.stages.iter().filter(|s| s.approval.is_some());
            let decided: std::collections::BTreeSet<_> = decided.map(|s| s.name.clone()).collect();
            tracker.recorded.send_if_modified(|r| {
                let changed = *r != decided;
                *r = decided;
                changed
            });
            now
        }
        Err(e) => {
            warn!(error = %e, "cannot write run progress; will retry");
            written
        }
    }
}
