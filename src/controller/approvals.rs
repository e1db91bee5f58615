//! Decisions on approval stages, from the run's `approval.devset.io/STAGE` annotations (which
//! `devset api` writes after its RBAC and `approvers` checks) to the engine's [`Approvals`] port;
//! and the active-run slot a waiting run gives back and takes again once decided.
//!
//! A decision lives on the run itself, so a controller restart or a leader change loses none:
//! the next controller reads the annotation again. Once the engine took it, the status records it
//! (`status.stages[].approval`), and a resumed run uses that record instead of asking again.

use super::run::Runs;
use crate::{
    api::{ApprovalRecord, Decision},
    engine::approval::{ApprovalAsk, Approvals, Verdict},
};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use tokio::sync::watch;

/// The engine's approval port for one run executed by the controller.
pub(super) struct RunApprovals {
    decisions: watch::Sender<BTreeMap<String, ApprovalRecord>>,
    runs: Runs,
    key: String,
}

impl RunApprovals {
    pub(super) fn new(runs: Runs, key: String) -> Self {
        RunApprovals {
            decisions: watch::Sender::new(BTreeMap::new()),
            runs,
            key,
        }
    }

    /// Hands the decisions found on the run to the stages that wait for them.
    pub(super) fn offer(&self, decisions: BTreeMap<String, ApprovalRecord>) {
        self.decisions.send_if_modified(|d| {
            let changed = *d != decisions;
            *d = decisions;
            changed
        });
    }
}

/// The verdict of a recorded decision.
pub(super) fn verdict(r: &ApprovalRecord) -> Verdict {
    Verdict {
        approved: r.decision == Decision::Approved,
        user: r.user.clone(),
        comment: r.comment.clone().filter(|c| !c.is_empty()),
        time: r.time.as_ref().map_or_else(jiff::Timestamp::now, |t| t.0),
    }
}

impl Approvals for RunApprovals {
    fn decide<'a>(&'a self, stage: &'a str, _ask: &'a ApprovalAsk) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let mut rx = self.decisions.subscribe();
            let v = loop {
                if let Some(r) = rx.borrow_and_update().get(stage) {
                    break verdict(r);
                }
                if rx.changed().await.is_err() {
                    futures::future::pending::<()>().await;
                }
            };
            // Decided: continue once a slot is free, ahead of queued runs.
            self.runs.take_slot(&self.key).await;
            v
        })
    }

    fn recorded<'a>(&'a self, stage: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // The status written to the API server records the decision: a controller that
            // takes over from here finds it there and does not take it again.
            let Some(tracker) = self.runs.tracker(&self.key).await else {
                return;
            };
            let mut rx = tracker.recorded.subscribe();
            let _ = rx.wait_for(|r| r.contains(stage)).await;
        })
    }
}
