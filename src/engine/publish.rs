//! The `publish` action: render the stage's messages and publish them with many in flight,
//! paced by `ratePerSecond`, resuming after the last acknowledged one.

use super::{
    amounts::{self, INVALID_AMOUNT},
    runner::{Attempt, Shared, StageState, broker_failure, failed},
    template::{PublishTemplates, RunContext, target_of},
};
use crate::{
    api::{PublishAction, Stage},
    brokers::{BrokerError, Delivery, PendingDelivery, Producer, ProducerOptions},
    engine::runner::StageOutcome,
    message::Message,
};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use std::time::{Duration, Instant};

/// Most deliveries one publish stage keeps outstanding; the clients bound this further.
const MAX_IN_FLIGHT: usize = 50_000;

/// Rendered messages a publish stage keeps for reuse at most.
const SPARE_MESSAGES: usize = 1_024;

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
    if *published >= total {
        return StageOutcome::Succeeded;
    }
    let connector = shared.connector(action.connector_ref.as_ref());
    let broker = match shared.broker(connector) {
        Ok(b) => b,
        Err(failure) => return failure,
    };
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
    let interval = rate
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
