//! Executes one run of a pinned workflow: stages in list order or as a DAG, each stage's `when`,
//! its attempts with timeouts, retries and backoff, `continueOnError`, a graceful stop, outputs
//! for later stages, and resumption from recorded progress. The actions live in modules of their
//! own ([`publish`](super::publish), [`delay`](super::delay), [`approval`](super::approval),
//! [`expect`](super::expect)). Kube-free: the controller (and `devset run`) observe the engine
//! through [`Observer`] and answer approvals through [`Approvals`].

use crate::{
    api::{Stage, StagePhase, WorkflowSpec},
    brokers::{BrokerConfig, BrokerError, Delivery, Producer},
    engine::{
        approval::{self, ApprovalAsk, Approvals, Verdict},
        dag::{self, Plan},
        delay,
        duration::parse_duration,
        expect,
        expr::{Expr, STAGE_VARIABLES, root_scope},
        outputs::{self, StageResult, Stages},
        publish,
    },
    message::{Message, Target},
};
use futures::{StreamExt, stream::FuturesUnordered};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// What the engine needs to run.
pub struct RunInput {
    pub run_name: String,
    pub run_namespace: String,
    /// The run's uid (unique to this run object; with `ExactlyOnce`, part of each stage's
    /// Kafka `transactional.id`).
    pub run_uid: String,
    /// The pinned workflow.
    pub spec: WorkflowSpec,
    /// Effective params (declarations checked, defaults filled in).
    pub params: BTreeMap<String, serde_json::Value>,
    /// Progress recorded by an earlier execution, by stage name.
    pub resume: BTreeMap<String, StageResume>,
    /// The brokers, by BrokerConnector name: the run's own and those stages name.
    pub brokers: BTreeMap<String, BrokerConfig>,
    /// The connector of stages that name none (the run's `spec.connectorRef`).
    pub default_connector: String,
    /// When the run started (its first execution): where `expect` stages with
    /// `from: RunStart` begin reading.
    pub started_at: jiff::Timestamp,
    /// Where approval stages get their decisions.
    pub approvals: Arc<dyn Approvals>,
    /// Cancelled when the run is paused rather than stopped (a controller shutdown: the next
    /// controller resumes it). The caller cancels `stop` too; this only keeps what outlives an
    /// execution (the taps of expect stages).
    pub pause: CancellationToken,
}

/// What an earlier execution recorded of one stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageResume {
    /// The stage had ended: `Succeeded`, `Skipped`, `Inherited`, or `Failed` (with
    /// `continueOnError`). Such a stage is not executed again; its outputs count.
    pub finished: Option<StagePhase>,
    /// Messages already acknowledged: continue from the next sequence number.
    pub published: u64,
    /// Matching messages an expect stage already counted.
    pub received: u64,
    /// Attempts already made.
    pub attempts: u32,
    /// When the stage first started.
    pub started_at: Option<jiff::Timestamp>,
    /// The stage's outputs.
    pub outputs: BTreeMap<String, String>,
    /// The decision recorded on an approval stage.
    pub decided: Option<Verdict>,
}

/// How a stage attempt or a stage ended.
#[derive(Clone, Debug, PartialEq)]
pub enum StageOutcome {
    Succeeded,
    Stopped,
    /// `reason` is a CamelCase word (`Unreachable`, `Timeout`, `TemplateError`, …).
    Failed {
        reason: String,
        message: String,
    },
    /// Not executed: `when` was false (`ConditionFalse`).
    Skipped {
        reason: String,
        message: String,
    },
}

/// How the run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    Completed,
    /// Every stage ended, and these stages (with `continueOnError`) failed.
    CompletedWithFailures {
        stages: Vec<String>,
    },
    Stopped,
    Failed {
        stage: String,
        reason: String,
        message: String,
    },
}

impl RunOutcome {
    /// The run's final phase, reason and message, as the run's status and its terminal
    /// `run.phase` event state them.
    pub fn end(&self) -> (crate::api::RunPhase, String, String) {
        use crate::api::RunPhase;
        match self {
            RunOutcome::Completed => (
                RunPhase::Completed,
                "Completed".into(),
                "every stage succeeded".into(),
            ),
            RunOutcome::CompletedWithFailures { stages } => (
                RunPhase::Completed,
                "CompletedWithFailures".into(),
                format!(
                    "every stage ended; failed (continueOnError): {}",
                    stages.join(", ")
                ),
            ),
            RunOutcome::Stopped => (
                RunPhase::Stopped,
                "Stopped".into(),
                "stopped on request".into(),
            ),
            RunOutcome::Failed {
                stage,
                reason,
                message,
            } => (
                RunPhase::Failed,
                reason.clone(),
                if stage.is_empty() {
                    message.clone()
                } else {
                    format!("stage {stage:?} failed: {message}")
                },
            ),
        }
    }
}

/// Receives the engine's progress. Called inline from the engine's tasks: keep it cheap.
pub trait Observer: Send + Sync + 'static {
    /// A stage attempt starts (`attempt` counts from 1, across restarts).
    fn stage_started(&self, stage: &str, attempt: u32);
    /// The broker acknowledged a message sent through `connector` to `target`.
    fn published(
        &self,
        stage: &str,
        connector: &str,
        target: &Target,
        msg: &Message,
        delivery: &Delivery,
    );
    /// An expect stage read a message that matched (`msg.seq` is its number among the
    /// messages the stage read).
    fn received(
        &self,
        _stage: &str,
        _connector: &str,
        _source: &Target,
        _msg: &Message,
        _delivery: &Delivery,
    ) {
    }
    /// An approval stage waits for a decision.
    fn stage_waiting(&self, _stage: &str, _ask: &ApprovalAsk) {}
    /// An approval stage got its decision.
    fn stage_decided(&self, _stage: &str, _verdict: &Verdict) {}
    /// An attempt failed and the stage will try again after `wait`.
    fn stage_retrying(&self, stage: &str, attempt: u32, reason: &str, message: &str);
    /// The stage's outputs, just before it finishes (not called when it has none).
    fn stage_outputs(&self, _stage: &str, _outputs: &BTreeMap<String, String>) {}
    /// The stage ended.
    fn stage_finished(&self, stage: &str, outcome: &StageOutcome);
}

/// Runs the workflow to its end. `stop` asks for a graceful stop: publishing halts at the next
/// message, outstanding deliveries are awaited, and the outcome is `Stopped`.
pub async fn run(
    input: RunInput,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) -> RunOutcome {
    let plan = match dag::plan(&input.spec.stages) {
        Ok(plan) => plan,
        Err(e) => {
            return RunOutcome::Failed {
                stage: String::new(),
                reason: "InvalidWorkflow".into(),
                message: e.to_string(),
            };
        }
    };
    let producers = input
        .brokers
        .keys()
        .map(|k| (k.clone(), OnceCell::new()))
        .collect();
    let results = input
        .resume
        .iter()
        .filter_map(|(name, r)| {
            let phase = r.finished?;
            Some((
                name.clone(),
                StageResult {
                    phase: phase_name(phase).into(),
                    outputs: r.outputs.clone(),
                },
            ))
        })
        .collect();
    let shared = Arc::new(Shared {
        input,
        producers,
        observer,
        // A failing stage stops its siblings through this child, without marking the
        // caller's token as a user's stop.
        stop: stop.child_token(),
        results: Mutex::new(results),
        run_start: Mutex::new(BTreeMap::new()),
    });
    // Where `RunStart` is on each topic, and the taps of exchanges, are settled before any
    // stage runs, so nothing published meanwhile is missed.
    expect::mark_run_start(&shared).await;
    let outcome = match expect::declare_taps(&shared).await {
        Ok(()) => drive(&shared, &plan).await,
        Err((stage, outcome)) => {
            let StageOutcome::Failed { reason, message } = outcome else {
                unreachable!("declare_taps fails with Failed")
            };
            shared.observer.stage_finished(
                &stage,
                &StageOutcome::Failed {
                    reason: reason.clone(),
                    message: message.clone(),
                },
            );
            RunOutcome::Failed {
                stage,
                reason,
                message,
            }
        }
    };
    if !shared.input.pause.is_cancelled() {
        // The run is over (a paused run keeps its taps for the execution that resumes it).
        expect::delete_taps(&shared).await;
    }
    if let Some(shared) = Arc::into_inner(shared) {
        for producer in shared
            .producers
            .into_values()
            .filter_map(OnceCell::into_inner)
        {
            let _ = producer.close().await;
        }
    }
    outcome
}

/// The phase name a finished stage shows to `stages.NAME.phase`.
fn phase_name(p: StagePhase) -> &'static str {
    match p {
        StagePhase::Pending => "Pending",
        StagePhase::Running => "Running",
        StagePhase::WaitingForApproval => "WaitingForApproval",
        StagePhase::Succeeded => "Succeeded",
        StagePhase::Failed => "Failed",
        StagePhase::Stopped => "Stopped",
        StagePhase::Skipped => "Skipped",
        StagePhase::Inherited => "Inherited",
    }
}

/// What the stages of one run share.
pub(crate) struct Shared {
    pub(crate) input: RunInput,
    /// One producer per connector, connected when a stage first needs it.
    pub(crate) producers: BTreeMap<String, OnceCell<Producer>>,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) stop: CancellationToken,
    /// The finished stages' phases and outputs.
    pub(crate) results: Mutex<Stages>,
    /// Where each Kafka expect stage reading from `RunStart` starts: the topic's end offsets
    /// when the run started (this execution's start; a resumed run goes by time instead).
    pub(crate) run_start: Mutex<BTreeMap<String, crate::brokers::StartAt>>,
}

impl Shared {
    /// The finished stages so far.
    pub(crate) fn stages(&self) -> Stages {
        self.results.lock().unwrap().clone()
    }

    /// The connector a stage names, or the run's.
    pub(crate) fn connector<'a>(
        &'a self,
        named: Option<&'a crate::api::LocalObjectRef>,
    ) -> &'a str {
        named.map_or(&self.input.default_connector, |r| &r.name)
    }

    /// The broker of a connector, or the failure of a stage that names an unresolved one.
    pub(crate) fn broker(&self, connector: &str) -> Result<&BrokerConfig, StageOutcome> {
        self.input.brokers.get(connector).ok_or_else(|| {
            failed(
                "ConnectorNotFound",
                format!("BrokerConnector {connector:?} was not resolved"),
            )
        })
    }

    /// The resumed record of a stage.
    pub(crate) fn resume(&self, stage: &str) -> StageResume {
        self.input.resume.get(stage).cloned().unwrap_or_default()
    }
}

async fn drive(shared: &Arc<Shared>, plan: &Plan) -> RunOutcome {
    let stages = &shared.input.spec.stages;
    let n = plan.len();
    // Done for the stages that depend on it: succeeded, skipped, inherited, or failed with
    // continueOnError.
    let mut done = vec![false; n];
    let mut started = vec![false; n];
    let mut failed_stages = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        if let Some(phase) = shared
            .input
            .resume
            .get(&stage.name)
            .and_then(|r| r.finished)
        {
            done[i] = true;
            started[i] = true;
            if phase == StagePhase::Failed {
                failed_stages.push(stage.name.clone());
            }
        }
    }
    let mut running = FuturesUnordered::new();
    let mut failure: Option<RunOutcome> = None;
    let mut stopped = false;
    loop {
        if failure.is_none() && !stopped && !shared.stop.is_cancelled() {
            for i in plan.ready(&done, &started) {
                started[i] = true;
                let shared = shared.clone();
                running.push(tokio::spawn(async move {
                    let outcome = run_stage(&shared, i).await;
                    (i, outcome)
                }));
            }
        }
        let Some(joined) = running.next().await else {
            break;
        };
        let (i, outcome) = match joined {
            Ok(r) => r,
            Err(e) => (
                usize::MAX,
                StageOutcome::Failed {
                    reason: "InternalError".into(),
                    message: format!("stage task panicked: {e}"),
                },
            ),
        };
        let stage = stages.get(i);
        let name = stage.map(|s| s.name.clone()).unwrap_or_default();
        match outcome {
            StageOutcome::Succeeded | StageOutcome::Skipped { .. } => done[i] = true,
            StageOutcome::Stopped => stopped = true,
            StageOutcome::Failed { .. } if stage.is_some_and(|s| s.continue_on_error) => {
                done[i] = true;
                failed_stages.push(name);
            }
            StageOutcome::Failed { reason, message } => {
                if failure.is_none() {
                    failure = Some(RunOutcome::Failed {
                        stage: name,
                        reason,
                        message,
                    });
                    // Let the other stages finish gracefully, as with a stop.
                    shared.stop.cancel();
                }
            }
        }
    }
    if let Some(f) = failure {
        f
    } else if done.iter().all(|s| *s) {
        if failed_stages.is_empty() {
            RunOutcome::Completed
        } else {
            RunOutcome::CompletedWithFailures {
                stages: failed_stages,
            }
        }
    } else {
        RunOutcome::Stopped
    }
}

/// What one attempt of a stage gives: how it ended and its outputs.
pub(crate) struct Attempt {
    pub(crate) outcome: StageOutcome,
    pub(crate) outputs: BTreeMap<String, String>,
}

impl From<StageOutcome> for Attempt {
    fn from(outcome: StageOutcome) -> Self {
        Attempt {
            outcome,
            outputs: BTreeMap::new(),
        }
    }
}

/// The per-stage state that lasts across attempts.
pub(crate) struct StageState {
    /// Messages published so far (publish stages resume from here).
    pub(crate) published: u64,
    /// When the stage first started.
    pub(crate) started_at: jiff::Timestamp,
    /// The run's record of the stage from an earlier execution.
    pub(crate) resume: StageResume,
    /// Attempts made, this one included.
    pub(crate) attempt: u32,
}

async fn run_stage(shared: &Shared, i: usize) -> StageOutcome {
    let stage = &shared.input.spec.stages[i];
    let resume = shared.resume(&stage.name);
    if let Some(when) = &stage.when {
        match evaluate_when(shared, when) {
            Ok(true) => {}
            Ok(false) => {
                let skipped = StageOutcome::Skipped {
                    reason: "ConditionFalse".into(),
                    message: format!("when is false: {when}"),
                };
                return finish(shared, stage, skipped, BTreeMap::new());
            }
            Err(e) => {
                return finish(
                    shared,
                    stage,
                    failed("InvalidCondition", format!("when: {e}")),
                    BTreeMap::new(),
                );
            }
        }
    }
    let retries = stage.retries.unwrap_or(0).max(0) as u32;
    let timeout = match stage.timeout.as_deref().map(parse_duration).transpose() {
        Ok(t) => t,
        Err(e) => {
            return finish(
                shared,
                stage,
                failed("InvalidDuration", format!("timeout: {e}")),
                BTreeMap::new(),
            );
        }
    };
    let backoff = match Backoff::of(stage) {
        Ok(b) => b,
        Err(e) => return finish(shared, stage, failed("InvalidDuration", e), BTreeMap::new()),
    };
    let mut state = StageState {
        published: resume.published,
        started_at: resume.started_at.unwrap_or_else(jiff::Timestamp::now),
        attempt: resume.attempts,
        resume,
    };
    loop {
        state.attempt += 1;
        let attempt = state.attempt;
        shared.observer.stage_started(&stage.name, attempt);
        let work = attempt_stage(shared, stage, &mut state);
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(o) => o,
                Err(_) => failed(
                    "Timeout",
                    format!(
                        "attempt {attempt} did not finish within {}",
                        stage.timeout.as_deref().unwrap_or_default()
                    ),
                )
                .into(),
            },
            None => work.await,
        };
        match result.outcome {
            // A person's rejection is final: it is not retried.
            StageOutcome::Failed { reason, message }
                if attempt <= retries
                    && !shared.stop.is_cancelled()
                    && reason != approval::REJECTED =>
            {
                shared
                    .observer
                    .stage_retrying(&stage.name, attempt, &reason, &message);
                // The pause before the next attempt, cut short by a stop.
                tokio::select! {
                    _ = tokio::time::sleep(backoff.wait(attempt)) => {}
                    _ = shared.stop.cancelled() => {}
                }
            }
            other => return finish(shared, stage, other, result.outputs),
        }
    }
}

fn evaluate_when(shared: &Shared, when: &str) -> Result<bool, String> {
    let expr = Expr::compile(when, STAGE_VARIABLES)?;
    let scope = root_scope(&shared.input.params, &shared.stages());
    expr.eval_bool(&scope)
}

/// The waits between attempts: `retryBackoff`, or 1s each without it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    first: Duration,
    factor: f64,
    max: Option<Duration>,
}

impl Backoff {
    /// The backoff of a stage, or what is wrong with its `retryBackoff`.
    pub fn of(stage: &Stage) -> Result<Backoff, String> {
        let Some(b) = &stage.retry_backoff else {
            return Ok(Backoff {
                first: Duration::from_secs(1),
                factor: 1.0,
                max: None,
            });
        };
        let first =
            parse_duration(&b.duration).map_err(|e| format!("retryBackoff.duration: {e}"))?;
        let max = b
            .max_duration
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| format!("retryBackoff.maxDuration: {e}"))?;
        Ok(Backoff {
            first,
            factor: b.factor.unwrap_or(2.0).max(1.0),
            max,
        })
    }

    /// The wait after failed attempt number `attempt` (from 1).
    pub fn wait(&self, attempt: u32) -> Duration {
        let exp = self.factor.powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = (self.first.as_secs_f64() * exp).min(86_400.0 * 365.0);
        let d = Duration::from_secs_f64(secs);
        self.max.map_or(d, |m| d.min(m))
    }
}

fn finish(
    shared: &Shared,
    stage: &Stage,
    outcome: StageOutcome,
    mut outputs: BTreeMap<String, String>,
) -> StageOutcome {
    outputs::bound(&mut outputs);
    if !outputs.is_empty() {
        shared.observer.stage_outputs(&stage.name, &outputs);
    }
    let phase = match &outcome {
        StageOutcome::Succeeded => StagePhase::Succeeded,
        StageOutcome::Stopped => StagePhase::Stopped,
        StageOutcome::Failed { .. } => StagePhase::Failed,
        StageOutcome::Skipped { .. } => StagePhase::Skipped,
    };
    shared.results.lock().unwrap().insert(
        stage.name.clone(),
        StageResult {
            phase: phase_name(phase).into(),
            outputs,
        },
    );
    shared.observer.stage_finished(&stage.name, &outcome);
    outcome
}

pub(crate) fn failed(reason: &str, message: impl Into<String>) -> StageOutcome {
    StageOutcome::Failed {
        reason: reason.into(),
        message: message.into(),
    }
}

async fn attempt_stage(shared: &Shared, stage: &Stage, state: &mut StageState) -> Attempt {
    if let Some(d) = &stage.delay {
        return delay::run(shared, d).await.into();
    }
    if let Some(p) = &stage.publish {
        return publish::run(shared, stage, p, state).await;
    }
    if let Some(a) = &stage.approval {
        return approval::run(shared, stage, a, state).await;
    }
    if let Some(e) = &stage.expect {
        return expect::run(shared, stage, e, state).await;
    }
    failed("InvalidWorkflow", "the stage has no action").into()
}

pub(crate) fn broker_failure(broker: &BrokerConfig, e: BrokerError) -> StageOutcome {
    failed(e.reason(), format!("{}: {e}", broker.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::Delivery;

    fn stage(v: serde_json::Value) -> Stage {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn backoff_grows_by_its_factor_up_to_its_max() {
        let s = stage(serde_json::json!({
            "name": "a", "retries": 5, "delay": {"duration": "1s"},
            "retryBackoff": {"duration": "100ms", "factor": 3, "maxDuration": "1s"}
        }));
        let b = Backoff::of(&s).unwrap();
        let waits: Vec<_> = (1..=4).map(|a| b.wait(a).as_millis()).collect();
        assert_eq!(waits, [100, 300, 900, 1000]);
        let plain = Backoff::of(&stage(
            serde_json::json!({"name": "a", "delay": {"duration": "1s"}}),
        ))
        .unwrap();
        assert_eq!(plain.wait(3), Duration::from_secs(1));
        let doubling = Backoff::of(&stage(serde_json::json!({
            "name": "a", "retries": 2, "delay": {"duration": "1s"},
            "retryBackoff": {"duration": "1s"}
        })))
        .unwrap();
        assert_eq!(doubling.wait(3), Duration::from_secs(4));
        assert!(
            Backoff::of(&stage(serde_json::json!({
                "name": "a", "retries": 2, "delay": {"duration": "1s"},
                "retryBackoff": {"duration": "soon"}
            })))
            .unwrap_err()
            .starts_with("retryBackoff.duration")
        );
    }

    /// Rejects every approval, and counts what the engine reports.
    struct Rejecting;
    impl Approvals for Rejecting {
        fn decide<'a>(
            &'a self,
            _: &'a str,
            _: &'a ApprovalAsk,
        ) -> futures::future::BoxFuture<'a, Verdict> {
            Box::pin(async {
                Verdict {
                    approved: false,
                    user: "bob".into(),
                    comment: None,
                    time: jiff::Timestamp::now(),
                }
            })
        }
    }

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl Observer for Seen {
        fn stage_started(&self, stage: &str, attempt: u32) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{stage} started {attempt}"));
        }
        fn published(&self, _: &str, _: &str, _: &Target, _: &Message, _: &Delivery) {}
        fn stage_decided(&self, stage: &str, v: &Verdict) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{stage} decided {}", v.approved));
        }
        fn stage_retrying(&self, stage: &str, _: u32, _: &str, _: &str) {
            self.0.lock().unwrap().push(format!("{stage} retrying"));
        }
        fn stage_finished(&self, stage: &str, outcome: &StageOutcome) {
            let what = match outcome {
                StageOutcome::Succeeded => "succeeded".to_string(),
                StageOutcome::Stopped => "stopped".to_string(),
                StageOutcome::Failed { reason, .. } => format!("failed {reason}"),
                StageOutcome::Skipped { reason, .. } => format!("skipped {reason}"),
            };
            self.0.lock().unwrap().push(format!("{stage} {what}"));
        }
    }

    fn input(stages: serde_json::Value) -> RunInput {
        RunInput {
            run_name: "r".into(),
            run_namespace: "ns".into(),
            run_uid: "uid".into(),
            spec: serde_json::from_value(serde_json::json!({
                "params": [{"name": "region", "default": "eu"}],
                "stages": stages
            }))
            .unwrap(),
            params: [("region".to_string(), serde_json::json!("eu"))].into(),
            resume: BTreeMap::new(),
            brokers: BTreeMap::new(),
            default_connector: "none".into(),
            started_at: jiff::Timestamp::now(),
            approvals: Arc::new(Rejecting),
            pause: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_rejection_is_final_and_continue_on_error_and_when_shape_the_run() {
        let seen = Arc::new(Seen::default());
        let outcome = run(
            input(serde_json::json!([
                {"name": "gate", "retries": 3, "approval": {}},
                {"name": "after", "delay": {"duration": "1ms"}}
            ])),
            seen.clone(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(
            outcome,
            RunOutcome::Failed {
                stage: "gate".into(),
                reason: "Rejected".into(),
                message: "rejected by bob".into()
            }
        );
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "gate started 1",
                "gate decided false",
                "gate failed Rejected"
            ]
        );

        let seen = Arc::new(Seen::default());
        let outcome = run(
            input(serde_json::json!([
                {"name": "gate", "continueOnError": true, "approval": {}},
                {"name": "us", "when": "params.region == 'us'", "delay": {"duration": "1ms"}},
                {"name": "after", "when": "stages.gate.outputs.decision == 'Rejected' && stages.us.phase == 'Skipped'",
                 "delay": {"duration": "1ms"}}
            ])),
            seen.clone(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(
            outcome,
            RunOutcome::CompletedWithFailures {
                stages: vec!["gate".into()]
            }
        );
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "gate started 1",
                "gate decided false",
                "gate failed Rejected",
                "us skipped ConditionFalse",
                "after started 1",
                "after succeeded"
            ]
        );
    }

    #[tokio::test]
    async fn exactly_once_through_rabbitmq_fails_the_stage_naming_the_field() {
        let mut input = input(serde_json::json!([
            {"name": "send", "publish": {"topic": "t", "count": 3, "delivery": "ExactlyOnce"}}
        ]));
        // Never connected to: the check comes first.
        input.brokers = [(
            "none".to_string(),
            BrokerConfig::amqp("amqp://127.0.0.1:1/%2f").unwrap(),
        )]
        .into();
        let seen = Arc::new(Seen::default());
        let outcome = run(input, seen.clone(), CancellationToken::new()).await;
        let RunOutcome::Failed {
            stage,
            reason,
            message,
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            (stage.as_str(), reason.as_str()),
            ("send", "InvalidDelivery")
        );
        assert!(
            message.contains("stage \"send\"") && message.contains("publish.delivery"),
            "{message}"
        );
    }

    #[test]
    fn transactional_ids_are_stable_per_run_stage() {
        let id = crate::engine::publish::transactional_id("ns", "r", "u-1", "send");
        assert_eq!(id, "devset/ns/r/u-1/send");
        assert_ne!(
            id,
            crate::engine::publish::transactional_id("ns", "r", "u-2", "send")
        );
    }

    #[test]
    fn completed_with_failures_names_the_stages() {
        let (phase, reason, message) = RunOutcome::CompletedWithFailures {
            stages: vec!["a".into(), "c".into()],
        }
        .end();
        assert_eq!(phase, crate::api::RunPhase::Completed);
        assert_eq!(reason, "CompletedWithFailures");
        assert_eq!(message, "every stage ended; failed (continueOnError): a, c");
    }
}
