//! The `publish` action: render the stage's messages and publish them with many in flight,
//! paced by `ratePerSecond`, resuming after the last acknowledged one.

use super::{
    amounts::{self, INVALID_AMOUNT},
    runner::{Attempt, Shared, StageState, broker_failure, failed},
    template::{BoundPublish, PublishTemplates, RunContext, target_of},
};
use crate::{
    api::{DeliveryGuarantee, PublishAction, Stage},
    brokers::{
        BrokerConfig, BrokerError, Delivery, PendingDelivery, Producer, ProducerOptions,
        TransactionalProducer, TxnFailure, progress_topic,
    },
    engine::runner::StageOutcome,
    message::{Message, Target},
};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use std::time::{Duration, Instant};

/// Most deliveries one publish stage keeps outstanding; the clients bound this further.
const MAX_IN_FLIGHT: usize = 50_000;

/// Rendered messages a publish stage keeps for reuse at most.
const SPARE_MESSAGES: usize = 1_024;

/// The reason of a stage whose `publish.delivery` its broker cannot give.
pub const INVALID_DELIVERY: &str = "InvalidDelivery";

/// An `ExactlyOnce` transaction commits after this many messages at most…
const TXN_MAX_MESSAGES: usize = 1_000;
/// …or once it has been open this long.
const TXN_MAX_AGE: Duration = Duration::from_millis(100);
/// Transactions aborted in a row (abortable errors) before the stage fails.
const TXN_RETRIES: u32 = 3;

/// Publishes the stage's messages from `state.published + 1` on; its output `published` is the
/// count acknowledged.
pub(crate) async fn run(
    shared: &Shared,
    stage: &Stage,
    action: &PublishAction,
    state: &mut StageState,
) -> Attempt {
    let outcome = publish(shared, stage, action, &mut state.published).await;
    Attempt {
        outcome,
        outputs: [("published".to_string(), state.published.to_string())].into(),
    }
}

async fn publish(
    shared: &Shared,
    stage: &Stage,
    action: &PublishAction,
    published: &mut u64,
) -> StageOutcome {
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
        stages: &shared.stages(),
    };
    let bound = match templates.bind(&ctx) {
        Ok(b) => b,
        Err((field, e)) => return failed("TemplateError", format!("publish.{field}: {e}")),
    };
    let total = match amounts::count(&action.count, &input.params) {
        Ok(n) => n,
        Err(e) => return failed(INVALID_AMOUNT, format!("publish.count: {e}")),
    };
    let rate = match action
        .rate_per_second
        .as_ref()
        .map(|r| amounts::rate(r, &input.params))
        .transpose()
    {
        Ok(r) => r,
        Err(e) => return failed(INVALID_AMOUNT, format!("publish.ratePerSecond: {e}")),
    };
    let connector = shared.connector(action.connector_ref.as_ref());
    let exactly_once = action.delivery == Some(DeliveryGuarantee::ExactlyOnce);
    if exactly_once && let Ok(BrokerConfig::RabbitMq(_)) = shared.broker(connector) {
        return failed(
            INVALID_DELIVERY,
            format!(
                "stage {:?}: publish.delivery ExactlyOnce needs a Kafka connector; BrokerConnector {connector:?} is RabbitMQ (use AtLeastOnce)",
                stage.name
            ),
        );
    }
    if *published >= total {
        return StageOutcome::Succeeded;
    }
    let broker = match shared.broker(connector) {
        Ok(b) => b,
        Err(failure) => return failure,
    };
    let interval = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    if exactly_once {
        let job = Txn {
            shared,
            stage,
            connector,
            broker,
            bound: &bound,
            target: target_of(action),
            total,
            interval,
        };
        return job.run(published).await;
    }
    let Some(cell) = shared.producers.get(connector) else {
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
    let start = Instant::now();
    let first = *published + 1;
    let mut in_flight: FuturesUnordered<futures::future::Map<PendingDelivery, _>> =
        FuturesUnordered::new();
    let mut error: Option<BrokerError> = None;
    let observer = &shared.observer;
    // Messages whose delivery is done, kept to render the next ones into: their buffers are
    // reused instead of five allocations per message (the allocator was most of the engine's
    // cost over the raw client's; see docs/benchmarks.md).
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

/// An `ExactlyOnce` publish stage: a transactional producer of its own (a stable
/// `transactional.id` per run stage), messages committed in transactions of at most
/// [`TXN_MAX_MESSAGES`] or [`TXN_MAX_AGE`], each with the stage's progress.
struct Txn<'a> {
    shared: &'a Shared,
    stage: &'a Stage,
    connector: &'a str,
    broker: &'a BrokerConfig,
    bound: &'a BoundPublish,
    target: Target,
    total: u64,
    interval: Option<Duration>,
}

/// The `transactional.id` of a run stage: the same for every execution of the stage (so a new
/// one fences the old), different for another run object of the same name (the uid).
pub fn transactional_id(namespace: &str, run: &str, uid: &str, stage: &str) -> String {
    format!("devset/{namespace}/{run}/{uid}/{stage}")
}

impl Txn<'_> {
    async fn run(&self, published: &mut u64) -> StageOutcome {
        let (shared, stage) = (self.shared, self.stage);
        let BrokerConfig::Kafka(kafka) = self.broker else {
            unreachable!("checked by publish")
        };
        let Target::Topic(topic) = &self.target else {
            return failed(
                INVALID_DELIVERY,
                format!(
                    "stage {:?}: publish.delivery ExactlyOnce needs publish.topic (Kafka)",
                    stage.name
                ),
            );
        };
        let input = &shared.input;
        let id = transactional_id(
            &input.run_namespace,
            &input.run_name,
            &input.run_uid,
            &stage.name,
        );
        let (mut producer, committed) = match TransactionalProducer::connect(
            kafka,
            &id,
            &progress_topic(),
            ProducerOptions::default(),
        )
        .await
        {
            Ok(p) => p,
            Err(e) => return self.failure(e),
        };
        // The broker's record is the truth: messages committed after the last status write
        // are reported now (they were never reported: the observer hears of a message only
        // once its transaction committed).
        if let Some(done) = committed.map(|c| c.min(self.total))
            && done > *published
        {
            let mut msg = Message::default();
            for seq in *published + 1..=done {
                self.bound.render_into(seq, &mut msg);
                shared.observer.published(
                    &stage.name,
                    self.connector,
                    &self.target,
                    &msg,
                    &Delivery::default(),
                );
            }
            *published = done;
        }
        let start = Instant::now();
        let first = *published + 1;
        let mut aborted_in_a_row = 0;
        let mut batch: Vec<(Message, PendingDelivery)> = Vec::with_capacity(TXN_MAX_MESSAGES);
        let mut spare: Vec<Message> = Vec::new();
        while *published < self.total && !shared.stop.is_cancelled() {
            // Wait for the next message before the transaction opens: at a slow rate, an open
            // transaction would outlive its timeout.
            if let Some(iv) = self.interval {
                let due = start + iv.mul_f64((*published + 1 - first) as f64);
                if due > Instant::now() + Duration::from_millis(1) {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        _ = shared.stop.cancelled() => break,
                    }
                }
            }
            if let Err(f) = producer.begin() {
                return self.failure(f.error);
            }
            let opened = Instant::now();
            let mut seq = *published + 1;
            let mut send_error = None;
            while seq <= self.total && batch.len() < TXN_MAX_MESSAGES {
                if let Some(iv) = self.interval {
                    let due = start + iv.mul_f64((seq - first) as f64);
                    if due > opened + TXN_MAX_AGE && !batch.is_empty() {
                        break;
                    }
                    if due > Instant::now() + Duration::from_millis(1) {
                        tokio::select! {
                            _ = tokio::time::sleep_until(due.into()) => {}
                            _ = shared.stop.cancelled() => break,
                        }
                    }
                } else if opened.elapsed() >= TXN_MAX_AGE {
                    break;
                }
                if shared.stop.is_cancelled() {
                    break;
                }
                let mut msg = spare.pop().unwrap_or_default();
                self.bound.render_into(seq, &mut msg);
                match producer.send(topic, &msg).await {
                    Ok(pending) => batch.push((msg, pending)),
                    Err(e) => {
                        send_error = Some(e);
                        break;
                    }
                }
                seq += 1;
            }
            if let Some(e) = send_error {
                let _ = producer.abort().await;
                return self.failure(e);
            }
            // Every delivery report first (the commit would wait for them in 100 ms steps).
            let mut deliveries = Vec::with_capacity(batch.len());
            for (msg, pending) in batch.drain(..) {
                match pending.await {
                    Ok(d) => deliveries.push((msg, d)),
                    Err(e) => send_error = send_error.or(Some(e)),
                }
            }
            if let Some(e) = send_error {
                let _ = producer.abort().await;
                return self.failure(producer.fenced_or(e));
            }
            let progress = *published + deliveries.len() as u64;
            match producer.commit(progress).await {
                Ok(()) => {
                    aborted_in_a_row = 0;
                    for (msg, delivery) in deliveries.drain(..) {
                        shared.observer.published(
                            &stage.name,
                            self.connector,
                            &self.target,
                            &msg,
                            &delivery,
                        );
                        *published += 1;
                        if spare.len() < SPARE_MESSAGES {
                            spare.push(msg);
                        }
                    }
                }
                Err(TxnFailure {
                    error,
                    aborted: true,
                }) if aborted_in_a_row < TXN_RETRIES => {
                    tracing::warn!(stage = %stage.name, %error, "transaction aborted; sending its messages again");
                    aborted_in_a_row += 1;
                    spare.extend(deliveries.drain(..).map(|(m, _)| m));
                }
                Err(f) => return self.failure(f.error),
            }
        }
        if *published >= self.total {
            StageOutcome::Succeeded
        } else {
            StageOutcome::Stopped
        }
    }

    /// How the stage ends after `e`: a fenced producer stops without counting anything more
    /// (a newer execution of the stage took over), anything else fails it.
    fn failure(&self, e: BrokerError) -> StageOutcome {
        if let BrokerError::Fenced(why) = &e {
            tracing::warn!(stage = %self.stage.name, %why, "fenced: a newer producer publishes this stage; stopping");
            // This execution no longer owns the run: stop without writing it off.
            self.shared.input.pause.cancel();
            self.shared.stop.cancel();
            return StageOutcome::Stopped;
        }
        broker_failure(self.broker, e)
    }
}
