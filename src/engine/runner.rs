//! Executes one run of a pinned workflow: stages in list order or as a DAG, publish stages
//! with many messages in flight, pacing, timeouts, retries, a graceful stop, and resumption
//! from recorded progress. Kube-free: the controller (and `devset run`) observe it through
//! [`Observer`].

use crate::{
    api::{Stage, WorkflowSpec},
    brokers::{BrokerConfig, BrokerError, Delivery, PendingDelivery, Producer, ProducerOptions},
    engine::{
        dag::{self, Plan},
        duration::parse_duration,
        template::{PublishTemplates, RunContext, target_of},
    },
    message::{Message, Target},
};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// Most deliveries one publish stage keeps outstanding; the clients bound this further.
const MAX_IN_FLIGHT: usize = 50_000;

/// Rendered messages a publish stage keeps for reuse at most.
const SPARE_MESSAGES: usize = 1_024;

/// What the engine needs to run.
pub struct RunInput {
    pub run_name: String,
    pub run_namespace: String,
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
}

/// What an earlier execution recorded of one stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageResume {
    /// The stage already succeeded: skip it.
    pub succeeded: bool,
    /// Messages already acknowledged: continue from the next sequence number.
    pub published: u64,
    /// Attempts already made.
    pub attempts: u32,
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
}

/// How the run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    Completed,
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
    /// An attempt failed and the stage will try again.
    fn stage_retrying(&self, stage: &str, attempt: u32, reason: &str, message: &str);
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
    let shared = Arc::new(Shared {
        input,
        producers,
        observer,
        // A failing stage stops its siblings through this child, without marking the
        // caller's token as a user's stop.
        stop: stop.child_token(),
    });
    let outcome = drive(&shared, &plan).await;
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

struct Shared {
    input: RunInput,
    /// One producer per connector, connected when a stage first needs it.
    producers: BTreeMap<String, OnceCell<Producer>>,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
}

async fn drive(shared: &Arc<Shared>, plan: &Plan) -> RunOutcome {
    let stages = &shared.input.spec.stages;
    let n = plan.len();
    let mut succeeded = vec![false; n];
    let mut started = vec![false; n];
    for (i, stage) in stages.iter().enumerate() {
        if shared
            .input
            .resume
            .get(&stage.name)
            .is_some_and(|r| r.succeeded)
        {
            succeeded[i] = true;
            started[i] = true;
        }
    }
    let mut running = FuturesUnordered::new();
    let mut failure: Option<RunOutcome> = None;
    let mut stopped = false;
    loop {
        if failure.is_none() && !stopped && !shared.stop.is_cancelled() {
            for i in plan.ready(&succeeded, &started) {
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
        let name = stages.get(i).map(|s| s.name.clone()).unwrap_or_default();
        match outcome {
            StageOutcome::Succeeded => succeeded[i] = true,
            StageOutcome::Stopped => stopped = true,
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
    } else if succeeded.iter().all(|s| *s) {
        RunOutcome::Completed
    } else {
        RunOutcome::Stopped
    }
}

async fn run_stage(shared: &Shared, i: usize) -> StageOutcome {
    let stage = &shared.input.spec.stages[i];
    let resume = shared
        .input
        .resume
        .get(&stage.name)
        .cloned()
        .unwrap_or_default();
    let retries = stage.retries.unwrap_or(0).max(0) as u32;
    let timeout = match stage.timeout.as_deref().map(parse_duration).transpose() {
        Ok(t) => t,
        Err(e) => {
            return finish(
                shared,
                stage,
                failed("InvalidDuration", format!("timeout: {e}")),
            );
        }
    };
    let mut published = resume.published;
    let mut attempt = resume.attempts;
    loop {
        attempt += 1;
        shared.observer.stage_started(&stage.name, attempt);
        let work = attempt_stage(shared, stage, &mut published);
        let outcome = match timeout {
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(o) => o,
                Err(_) => failed(
                    "Timeout",
                    format!(
                        "attempt {attempt} did not finish within {}",
                        stage.timeout.as_deref().unwrap_or_default()
                    ),
                ),
            },
            None => work.await,
        };
        match outcome {
            StageOutcome::Failed { reason, message }
                if attempt <= retries && !shared.stop.is_cancelled() =>
            {
                shared
                    .observer
                    .stage_retrying(&stage.name, attempt, &reason, &message);
                // A short pause before the next attempt, cut short by a stop.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shared.stop.cancelled() => {}
                }
            }
            other => return finish(shared, stage, other),
        }
    }
}

fn finish(shared: &Shared, stage: &Stage, outcome: StageOutcome) -> StageOutcome {
    shared.observer.stage_finished(&stage.name, &outcome);
    outcome
}

fn failed(reason: &str, message: impl Into<String>) -> StageOutcome {
    StageOutcome::Failed {
        reason: reason.into(),
        message: message.into(),
    }
}

async fn attempt_stage(shared: &Shared, stage: &Stage, published: &mut u64) -> StageOutcome {
    if let Some(delay) = &stage.delay {
        let d = match parse_duration(&delay.duration) {
            Ok(d) => d,
            Err(e) => return failed("InvalidDuration", format!("delay.duration: {e}")),
        };
        return tokio::select! {
            _ = tokio::time::sleep(d) => StageOutcome::Succeeded,
            _ = shared.stop.cancelled() => StageOutcome::Stopped,
        };
    }
    if stage.publish.is_some() {
        return publish(shared, stage, published).await;
    }
    failed("InvalidWorkflow", "the stage has no action")
}

async fn publish(shared: &Shared, stage: &Stage, published: &mut u64) -> StageOutcome {
    let action = stage.publish.as_ref().expect("a publish stage");
    let input = &shared.input;
    let templates = match PublishTemplates::compile(action) {
        Ok(t) => t,
        Err((field, e)) => return failed("TemplateError", format!("publish.{field}: {e}")),
    };
    let ctx = RunContext {
        run_name: &input.run_name,
        run_namespace: &input.run_namespace,
        stage: &stage.name,
        params: &input.params,
    };
    let bound = match templates.bind(&ctx) {
        Ok(b) => b,
        Err((field, e)) => return failed("TemplateError", format!("publish.{field}: {e}")),
    };
    let total = action.count.max(0) as u64;
    if *published >= total {
        return StageOutcome::Succeeded;
    }
    let connector = action
        .connector_ref
        .as_ref()
        .map_or(&input.default_connector, |r| &r.name);
    let (Some(broker), Some(cell)) = (
        input.brokers.get(connector),
        shared.producers.get(connector),
    ) else {
        return failed(
            "ConnectorNotFound",
            format!("BrokerConnector {connector:?} was not resolved"),
        );
    };
    let producer = match cell
        .get_or_try_init(|| Producer::connect(broker, ProducerOptions::default()))
        .await
    {
        Ok(p) => p,
        Err(e) => return broker_failure(broker, e),
    };
    let target = target_of(action);
    let interval = action
        .rate_per_second
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let start = Instant::now();
    let first = *published + 1;
    let mut in_flight: FuturesUnordered<futures::future::Map<PendingDelivery, _>> =
        FuturesUnordered::new();
    let mut error: Option<BrokerError> = None;
    let observer = &shared.observer;
    // Messages whose delivery is done, kept to render the next ones into: their buffers are
    // reused instead of five allocations per message (the allocator was most of the engine's
    // cost over the raw client's; see README, Benchmarks).
    let mut spare: Vec<Message> = Vec::new();
    let on_done = |res: (Message, Result<Delivery, BrokerError>),
                   published: &mut u64,
                   error: &mut Option<BrokerError>,
                   spare: &mut Vec<Message>| {
        let msg = match res {
            (msg, Ok(d)) => {
                *published += 1;
                observer.published(&stage.name, connector, &target, &msg, &d);
                msg
            }
            (msg, Err(e)) => {
                if error.is_none() {
                    *error = Some(e);
                }
                msg
            }
        };
        if spare.len() < SPARE_MESSAGES {
            spare.push(msg);
        }
    };
    for seq in first..=total {
        if shared.stop.is_cancelled() || error.is_some() {
            break;
        }
        if let Some(iv) = interval {
            let due = start + iv.mul_f64((seq - first) as f64);
            if due > Instant::now() + Duration::from_millis(1) {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = shared.stop.cancelled() => break,
                }
            }
        }
        let mut msg = spare.pop().unwrap_or_default();
        bound.render_into(seq, &mut msg);
        // Keep collecting acknowledgements while `send` waits for room: a client may free its
        // window only as the deliveries already handed out are polled to completion.
        let sent = {
            let send = producer.send(&target, &msg);
            tokio::pin!(send);
            loop {
                tokio::select! {
                    biased;
                    r = &mut send => break r,
                    Some(res) = in_flight.next(), if !in_flight.is_empty() => on_done(res, published, &mut error, &mut spare),
                }
            }
        };
        match sent {
            Ok(pending) => in_flight.push(pending.map(move |r| (msg, r))),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        // Collect what is already acknowledged without waiting; wait only when the window is full.
        while let Some(Some(res)) = in_flight.next().now_or_never() {
            on_done(res, published, &mut error, &mut spare);
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(res) = in_flight.next().await {
                on_done(res, published, &mut error, &mut spare);
            }
        }
    }
    while let Some(res) = in_flight.next().await {
        on_done(res, published, &mut error, &mut spare);
    }
    if let Some(e) = error {
        return broker_failure(broker, e);
    }
    if *published >= total {
        StageOutcome::Succeeded
    } else {
        StageOutcome::Stopped
    }
}

fn broker_failure(broker: &BrokerConfig, e: BrokerError) -> StageOutcome {
    failed(e.reason(), format!("{}: {e}", broker.describe()))
}
