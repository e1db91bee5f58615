//! The `expect` action: consume a Kafka topic, a RabbitMQ queue, or a RabbitMQ exchange through
//! a tap queue, count the messages that match `where`, and capture outputs from the last match.
//!
//! A Kafka topic is read by a consumer of the stage's own, assigned to every partition and never
//! committing offsets, so no group a user's service owns is touched. A tap is a queue the run
//! declares and binds before its first stage starts (so nothing published in between is missed)
//! and deletes when it ends.

use super::{
    amounts::{self, INVALID_AMOUNT},
    duration::parse_duration,
    expr::{Expr, MESSAGE_VARIABLES, root_scope, to_output, with_message},
    runner::{Attempt, Shared, StageOutcome, StageState, broker_failure, failed},
};
use crate::{
    api::{ExpectAction, ExpectFrom, Stage},
    brokers::{self, Consumer, Incoming, Received, Source, StartAt},
    message::Target,
};
use std::{collections::BTreeMap, time::Duration};

/// Messages taken from the consumer at a time.
const BATCH: usize = 1024;

/// How long an abandoned tap queue lives after its last use (a run whose controller went away
/// for good).
const TAP_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// The reason of a stage that did not see its `count` (or saw more than `atMost`).
pub const EXPECTATION_NOT_MET: &str = "ExpectationNotMet";
/// The reason of a `where` or `capture` that does not compile, or a capture that fails.
pub const INVALID_EXPRESSION: &str = "InvalidExpression";

/// The name of the tap queue of an expect stage: unique per run and stage, stable across
/// restarts.
pub fn tap_queue(namespace: &str, run: &str, stage: &str) -> String {
    format!("devset.tap.{namespace}.{run}.{stage}")
}

/// Records where `from: RunStart` is for every Kafka expect stage of a run that starts now (not
/// one resumed after a restart: that one goes by the run's start time): the topic's end offsets,
/// exact whatever the clocks say. A topic that does not exist yet is read from its beginning
/// once it does; a broker that cannot be asked leaves the stage to go by time.
pub(crate) async fn mark_run_start(shared: &Shared) {
    for s in &shared.input.spec.stages {
        let Some(e) = &s.expect else { continue };
        let (Some(topic), ExpectFrom::RunStart) = (&e.topic, e.from.unwrap_or_default()) else {
            continue;
        };
        if shared.input.resume.contains_key(&s.name) {
            continue;
        }
        let Ok(broker) = shared.broker(shared.connector(e.connector_ref.as_ref())) else {
            continue;
        };
        let start = match brokers::end_offsets(broker, topic).await {
            Ok(offsets) => StartAt::Offsets(offsets),
            Err(brokers::BrokerError::NotFound(_)) => StartAt::Offsets(Vec::new()),
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot read where the run starts on the topic; going by time");
                continue;
            }
        };
        shared
            .run_start
            .lock()
            .unwrap()
            .insert(s.name.clone(), start);
    }
}

/// Declares and binds the taps of every expect stage that reads an exchange (and has not
/// finished). Fails with the first stage whose tap cannot be made.
pub(crate) async fn declare_taps(shared: &Shared) -> Result<(), (String, StageOutcome)> {
    for (stage, action) in taps(shared) {
        let connector = shared.connector(action.connector_ref.as_ref());
        let broker = shared
            .broker(connector)
            .map_err(|f| (stage.name.clone(), f))?;
        let (Some(exchange), Some(routing_key)) = (&action.exchange, &action.routing_key) else {
            continue;
        };
        let queue = tap_queue(
            &shared.input.run_namespace,
            &shared.input.run_name,
            &stage.name,
        );
        brokers::declare_tap(broker, exchange, routing_key, &queue, TAP_EXPIRY)
            .await
            .map_err(|e| (stage.name.clone(), broker_failure(broker, e)))?;
    }
    Ok(())
}

/// Deletes the taps of the run's expect stages (best effort: an unreachable broker lets the
/// queue expire by itself).
pub(crate) async fn delete_taps(shared: &Shared) {
    for (stage, action) in taps(shared) {
        let connector = shared.connector(action.connector_ref.as_ref());
        let Ok(broker) = shared.broker(connector) else {
            continue;
        };
        let queue = tap_queue(
            &shared.input.run_namespace,
            &shared.input.run_name,
            &stage.name,
        );
        if let Err(e) = brokers::delete_tap(broker, &queue).await {
            tracing::warn!(queue, error = %e, "cannot delete the tap queue; it expires by itself");
        }
    }
}

fn taps(shared: &Shared) -> impl Iterator<Item = (&Stage, &ExpectAction)> {
    shared.input.spec.stages.iter().filter_map(|s| {
        let e = s.expect.as_ref()?;
        let finished = shared
            .input
            .resume
            .get(&s.name)
            .is_some_and(|r| r.finished.is_some());
        (e.exchange.is_some() && !finished).then_some((s, e))
    })
}

/// The compiled checks of an expect stage.
pub struct Checks {
    /// `where`, if set.
    pub filter: Option<Expr>,
    /// `capture`: output name to expression.
    pub captures: Vec<(String, Expr)>,
}

impl Checks {
    /// Compiles `where` and `capture`; an error names the field.
    pub fn compile(action: &ExpectAction) -> Result<Checks, (String, String)> {
        let filter = action
            .where_
            .as_deref()
            .map(|w| Expr::compile(w, MESSAGE_VARIABLES))
            .transpose()
            .map_err(|e| ("expect.where".to_string(), e))?;
        let captures = action
            .capture
            .iter()
            .map(|(k, src)| {
                if !is_identifier(k) {
                    return Err((
                        format!("expect.capture.{k}"),
                        "a capture name must start with a letter or '_' and hold only letters, \
                         digits and '_' (templates read it as stages.NAME.outputs.KEY)"
                            .to_string(),
                    ));
                }
                Expr::compile(src, MESSAGE_VARIABLES)
                    .map(|e| (k.clone(), e))
                    .map_err(|e| (format!("expect.capture.{k}"), e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Checks { filter, captures })
    }
}

fn is_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

pub(crate) async fn run(
    shared: &Shared,
    stage: &Stage,
    action: &ExpectAction,
    state: &mut StageState,
) -> Attempt {
    let input = &shared.input;
    let checks = match Checks::compile(action) {
        Ok(c) => c,
        Err((field, e)) => return failed(INVALID_EXPRESSION, format!("{field}: {e}")).into(),
    };
    let count = match amounts::count(&action.count, &input.params) {
        Ok(n) => n,
        Err(e) => return failed(INVALID_AMOUNT, format!("expect.count: {e}")).into(),
    };
    let timeout_text = action
        .timeout
        .as_deref()
        .unwrap_or(ExpectAction::DEFAULT_TIMEOUT);
    let timeout = match parse_duration(timeout_text) {
        Ok(t) => t,
        Err(e) => return failed("InvalidDuration", format!("expect.timeout: {e}")).into(),
    };
    let at_most = action.at_most.map(|n| n.max(0) as u64);
    let connector = shared.connector(action.connector_ref.as_ref());
    let broker = match shared.broker(connector) {
        Ok(b) => b,
        Err(f) => return f.into(),
    };
    let resumed = state.attempt > 1 || state.resume.attempts > 0;
    let (source, target) = match (&action.topic, &action.queue, &action.exchange) {
        (Some(topic), _, _) => {
            let recorded = shared.run_start.lock().unwrap().get(&stage.name).cloned();
            let from = match action.from.unwrap_or_default() {
                ExpectFrom::RunStart => recorded.unwrap_or(StartAt::Time(input.started_at)),
                // A later attempt or execution reads from when the stage first started.
                ExpectFrom::StageStart if resumed => StartAt::Time(state.started_at),
                ExpectFrom::StageStart => StartAt::Latest,
                ExpectFrom::Earliest => StartAt::Earliest,
            };
            let source = Source::Topic {
                topic: topic.clone(),
                from,
            };
            (source, Target::Topic(topic.clone()))
        }
        (None, Some(queue), _) => (
            Source::Queue {
                queue: queue.clone(),
            },
            Target::Queue(queue.clone()),
        ),
        (None, None, Some(exchange)) => (
            Source::Tap {
                exchange: exchange.clone(),
                routing_key: action.routing_key.clone().unwrap_or_default(),
                queue: tap_queue(&input.run_namespace, &input.run_name, &stage.name),
            },
            Target::Exchange(exchange.clone()),
        ),
        _ => return failed("InvalidWorkflow", "expect has no source").into(),
    };
    // A Kafka topic is read again from the same position, so the count starts over; what a
    // queue gave an earlier execution is gone from it, so its count carries on.
    let matched = match source {
        Source::Topic { .. } => 0,
        _ => state.resume.received,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut consumer = match Consumer::open(broker, &source).await {
        Ok(c) => c,
        Err(e) => return broker_failure(broker, e).into(),
    };
    let root = root_scope(&input.params, &shared.stages());
    let mut tally = Tally {
        matched,
        ..Tally::default()
    };
    let enough = |matched: u64| at_most.is_none() && matched >= count;
    let outcome = loop {
        if enough(tally.matched) {
            break StageOutcome::Succeeded;
        }
        // What a RabbitMQ consumer hands out leaves the queue: take no more than still needed.
        let max = match (&source, at_most) {
            (Source::Topic { .. }, _) | (_, Some(_)) => BATCH,
            _ => (count - tally.matched).clamp(1, BATCH as u64) as usize,
        };
        let got = tokio::select! {
            r = consumer.next_batch_with(max, |m| {
                tally.see(m, checks.filter.as_ref(), &root, |r| {
                    shared.observer.received(&stage.name, connector, &target, &r.msg, &r.delivery);
                });
                !enough(tally.matched)
            }) => r,
            _ = tokio::time::sleep_until(deadline) => break timed_out(count, at_most, tally.matched, consumer.read(), timeout_text, tally.errors, &tally.first_error),
            _ = shared.stop.cancelled() => break StageOutcome::Stopped,
        };
        if let Err(e) = got {
            break broker_failure(broker, e);
        }
        if let Some(max) = at_most
            && tally.matched > max
        {
            break failed(
                EXPECTATION_NOT_MET,
                format!(
                    "{} messages matched, more than atMost {max} ({} messages read)",
                    tally.matched,
                    consumer.read()
                ),
            );
        }
    };
    let read = consumer.read();
    consumer.close().await;
    let (matched, last) = (tally.matched, tally.last);
    state.resume.received = matched;
    let mut outputs = BTreeMap::from([
        ("received".to_string(), matched.to_string()),
        ("read".to_string(), read.to_string()),
    ]);
    if outcome != StageOutcome::Succeeded {
        return Attempt { outcome, outputs };
    }
    let Some(r) = &last else {
        return Attempt { outcome, outputs };
    };
    let captured: Result<(), String> =
        with_message(&root, &Incoming::of(&r.msg, &r.delivery), |scope| {
            for (name, expr) in &checks.captures {
                let v = expr.eval(scope).and_then(|v| to_output(&v)).map_err(|e| {
                    format!(
                        "expect.capture.{name}: {e} (on message {} of the stage)",
                        r.msg.seq
                    )
                })?;
                outputs.insert(name.clone(), v);
            }
            Ok(())
        });
    let outcome = match captured {
        Ok(()) => outcome,
        Err(e) => failed(INVALID_EXPRESSION, e),
    };
    Attempt { outcome, outputs }
}

/// What the stage saw so far.
#[derive(Default)]
struct Tally {
    matched: u64,
    /// Messages on which `where` failed, and the first failure.
    errors: u64,
    first_error: Option<String>,
    /// A match is copied here (the buffers are reused), reported, then swapped with `last`.
    current: Received,
    /// The last match, for the captures.
    last: Option<Received>,
}

impl Tally {
    /// Checks a message where the consumer holds it; a match is copied, counted and reported.
    fn see(
        &mut self,
        m: &Incoming<'_>,
        filter: Option<&Expr>,
        root: &cel::Context<'_, '_>,
        report: impl FnOnce(&Received),
    ) {
        let is_match = match filter {
            None => true,
            Some(f) => f.matches(root, m).unwrap_or_else(|e| {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                false
            }),
        };
        if is_match {
            self.matched += 1;
            m.copy_to(&mut self.current);
            report(&self.current);
            std::mem::swap(
                &mut self.current,
                self.last.get_or_insert_with(Received::default),
            );
        }
    }
}

fn timed_out(
    count: u64,
    at_most: Option<u64>,
    matched: u64,
    read: u64,
    timeout: &str,
    errors: u64,
    first_error: &Option<String>,
) -> StageOutcome {
    if at_most.is_some_and(|max| matched <= max) && matched >= count {
        return StageOutcome::Succeeded;
    }
    let mut message =
        format!("matched {matched} of {count} within {timeout} ({read} messages read");
    if let Some(e) = first_error {
        message.push_str(&format!("; where failed on {errors} of them, first: {e}"));
    }
    message.push(')');
    failed(EXPECTATION_NOT_MET, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_message_counts_matches_and_reads() {
        assert_eq!(
            timed_out(100, None, 3, 412, "2m", 0, &None),
            failed(
                EXPECTATION_NOT_MET,
                "matched 3 of 100 within 2m (412 messages read)"
            )
        );
        assert_eq!(
            timed_out(1, None, 0, 2, "5s", 2, &Some("no such key: status".into())),
            failed(
                EXPECTATION_NOT_MET,
                "matched 0 of 1 within 5s (2 messages read; where failed on 2 of them, first: no such key: status)"
            )
        );
        assert_eq!(
            timed_out(2, Some(3), 3, 10, "1s", 0, &None),
            StageOutcome::Succeeded
        );
    }

    #[test]
    fn checks_name_their_field() {
        let a: ExpectAction = serde_json::from_value(serde_json::json!({
            "topic": "t", "where": "payload.x ==", "capture": {"a": "payload.a"}
        }))
        .unwrap();
        let Err((field, e)) = Checks::compile(&a) else {
            panic!("compiled")
        };
        assert_eq!(field, "expect.where");
        assert!(e.starts_with("does not compile"), "{e}");
        let a: ExpectAction = serde_json::from_value(serde_json::json!({
            "topic": "t", "capture": {"a": "nope.a"}
        }))
        .unwrap();
        let Err((field, e)) = Checks::compile(&a) else {
            panic!("compiled")
        };
        assert_eq!(field, "expect.capture.a");
        assert!(e.starts_with("unknown variable \"nope\""), "{e}");
    }
}
