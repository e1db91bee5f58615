//! The `approval` action: ask, wait for a person's decision through the [`Approvals`] port,
//! or let `timeout` decide. The controller answers the port with decisions made through
//! `devset api` (or written on the run); `devset run` with the terminal or a flag.

use super::{
    duration::parse_duration,
    runner::{Attempt, Shared, StageOutcome, StageState, failed},
    template::{RunContext, Template},
};
use crate::api::{ApprovalAction, Approvers, OnTimeout, Stage};
use futures::future::BoxFuture;
use std::collections::BTreeMap;

/// The reason of a rejected approval stage (not retried).
pub const REJECTED: &str = "Rejected";

/// The user a timeout's decision is recorded under.
pub const TIMEOUT_USER: &str = "devset:timeout";

/// A decision on an approval stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Approved (true) or rejected (false).
    pub approved: bool,
    /// Who decided: a Kubernetes user name, [`TIMEOUT_USER`], or the local user of `devset run`.
    pub user: String,
    /// What they said.
    pub comment: Option<String>,
    /// When.
    pub time: jiff::Timestamp,
}

/// What an approval stage asks.
#[derive(Clone, Debug, PartialEq)]
pub struct ApprovalAsk {
    /// The rendered `message` (or a default question).
    pub message: String,
    /// Who may decide, on top of RBAC.
    pub approvers: Option<Approvers>,
    /// When `timeout` decides, if it is set.
    pub deadline: Option<jiff::Timestamp>,
    /// What `timeout` decides.
    pub on_timeout: OnTimeout,
}

/// Where decisions come from.
pub trait Approvals: Send + Sync + 'static {
    /// Waits for the decision on `stage`. The engine drops the future on a stop or when the
    /// stage's timeout passes, so it must be cancel-safe: a decision it has not returned is
    /// not lost.
    fn decide<'a>(&'a self, stage: &'a str, ask: &'a ApprovalAsk) -> BoxFuture<'a, Verdict>;

    /// Waits until the decision just taken on `stage` is recorded where whoever resumes the
    /// run finds it (the controller: the run's status on the API server), so that no stage
    /// runs on a decision that a crash could make be taken again. Default: at once.
    fn recorded<'a>(&'a self, _stage: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Approvals that never come: for runs whose workflows have no approval stage.
pub struct NoApprovals;

impl Approvals for NoApprovals {
    fn decide<'a>(&'a self, _: &'a str, _: &'a ApprovalAsk) -> BoxFuture<'a, Verdict> {
        Box::pin(futures::future::pending())
    }
}

/// The question an approval stage asks, rendered for this run.
pub(crate) fn question(
    shared: &Shared,
    stage: &Stage,
    action: &ApprovalAction,
) -> Result<String, String> {
    let Some(src) = &action.message else {
        return Ok(format!(
            "approve stage {:?} of run {}?",
            stage.name, shared.input.run_name
        ));
    };
    let t = Template::compile(src).map_err(|e| format!("approval.message: {e}"))?;
    let ctx = RunContext {
        run_name: &shared.input.run_name,
        run_namespace: &shared.input.run_namespace,
        stage: &stage.name,
        params: &shared.input.params,
        stages: &shared.stages(),
    };
    t.render_once(&ctx)
        .map_err(|e| format!("approval.message: {e}"))
}

pub(crate) async fn run(
    shared: &Shared,
    stage: &Stage,
    action: &ApprovalAction,
    state: &mut StageState,
) -> Attempt {
    let message = match question(shared, stage, action) {
        Ok(m) => m,
        Err(e) => return failed("TemplateError", e).into(),
    };
    let timeout = match action.timeout.as_deref().map(parse_duration).transpose() {
        Ok(t) => t,
        Err(e) => return failed("InvalidDuration", format!("approval.timeout: {e}")).into(),
    };
    // The timeout counts from when the stage first waited, across restarts.
    let deadline = timeout.map(|t| {
        state
            .started_at
            .checked_add(jiff::SignedDuration::try_from(t).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(jiff::Timestamp::MAX)
    });
    let ask = ApprovalAsk {
        message,
        approvers: action.approvers.clone(),
        deadline,
        on_timeout: action.on_timeout,
    };
    let verdict = match state.resume.decided.take() {
        // Decided before a restart: the decision stands, it is not asked again.
        Some(v) => v,
        None => {
            shared.observer.stage_waiting(&stage.name, &ask);
            let until_deadline = async {
                match deadline {
                    Some(d) => {
                        let left = jiff::Timestamp::now().duration_until(d);
                        let left = std::time::Duration::try_from(left).unwrap_or_default();
                        tokio::time::sleep(left).await
                    }
                    None => futures::future::pending().await,
                }
            };
            let v = tokio::select! {
                v = shared.input.approvals.decide(&stage.name, &ask) => v,
                _ = until_deadline => Verdict {
                    approved: action.on_timeout == OnTimeout::Approve,
                    user: TIMEOUT_USER.into(),
                    comment: Some(format!(
                        "no decision within {}",
                        action.timeout.as_deref().unwrap_or_default()
                    )),
                    time: jiff::Timestamp::now(),
                },
                _ = shared.stop.cancelled() => return StageOutcome::Stopped.into(),
            };
            shared.observer.stage_decided(&stage.name, &v);
            // Nothing after the decision runs before it is recorded; a stop meanwhile leaves
            // the stage to be decided again from the same decision.
            tokio::select! {
                _ = shared.input.approvals.recorded(&stage.name) => {}
                _ = shared.stop.cancelled() => return StageOutcome::Stopped.into(),
            }
            v
        }
    };
    let mut outputs = BTreeMap::new();
    outputs.insert(
        "decision".to_string(),
        if verdict.approved {
            "Approved"
        } else {
            "Rejected"
        }
        .to_string(),
    );
    outputs.insert("user".to_string(), verdict.user.clone());
    outputs.insert(
        "comment".to_string(),
        verdict.comment.clone().unwrap_or_default(),
    );
    let outcome = if verdict.approved {
        StageOutcome::Succeeded
    } else {
        let by = if verdict.user == TIMEOUT_USER {
            "the timeout".to_string()
        } else {
            verdict.user.clone()
        };
        failed(
            REJECTED,
            match &verdict.comment {
                Some(c) if !c.is_empty() => format!("rejected by {by}: {c}"),
                _ => format!("rejected by {by}"),
            },
        )
    };
    Attempt { outcome, outputs }
}
