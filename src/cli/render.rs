//! One line of text per event, for `devset run` and `devset logs`.

use crate::events::{self, Event};
use std::fmt::Write;

/// Payloads longer than this are cut in a text line.
const PAYLOAD_CHARS: usize = 80;

/// How the events are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line: the event as the event log and the SSE API serve it.
    Json,
}

/// `#SEQ HH:MM:SS.mmm WHAT`, e.g.
/// `#3 12:00:01.250 message create-orders #1 -> topic orders via kafka p0@41 key=order-1 {...}`.
pub fn line(e: &Event) -> String {
    let mut s = format!("#{} {} ", e.seq, e.time.strftime("%H:%M:%S%.3f"));
    let stage = e.stage.as_deref().unwrap_or("?");
    let attempt = e.attempt.unwrap_or(1);
    let reason = e.reason.as_deref().unwrap_or_default();
    let message = e.message.as_deref().unwrap_or_default();
    let _ = match e.kind.as_str() {
        events::RUN_PHASE => {
            let phase = e.phase.map(crate::events::phase_name).unwrap_or_default();
            write!(s, "run {phase}").and_then(|_| match (reason, message) {
                ("", "") => Ok(()),
                (r, "") => write!(s, " ({r})"),
                (r, m) if r == phase => write!(s, ": {m}"),
                (r, m) => write!(s, " ({r}): {m}"),
            })
        }
        events::STAGE_STARTED => write!(s, "stage {stage} started (attempt {attempt})"),
        events::STAGE_RETRYING => write!(
            s,
            "stage {stage} attempt {attempt} failed ({reason}): {message}; retrying"
        ),
        events::STAGE_COMPLETED => write!(s, "stage {stage} completed"),
        events::STAGE_STOPPED => write!(s, "stage {stage} stopped"),
        events::STAGE_FAILED => write!(s, "stage {stage} failed ({reason}): {message}"),
        events::MESSAGE_PUBLISHED => {
            let _ = write!(s, "message {stage} #{}", e.sequence.unwrap_or_default());
            if let Some(t) = &e.target {
                let _ = write!(s, " -> {t}");
            }
            match (e.partition, e.offset, e.delivery_tag) {
                (Some(p), Some(o), _) => {
                    let _ = write!(s, " p{p}@{o}");
                }
                (_, _, Some(tag)) => {
                    let _ = write!(s, " tag {tag}");
                }
                _ => {}
            }
            if let Some(k) = &e.key {
                let _ = write!(s, " key={k}");
            }
            match &e.payload {
                Some(p) if p.chars().count() > PAYLOAD_CHARS => {
                    let cut: String = p.chars().take(PAYLOAD_CHARS).collect();
                    write!(s, " {cut}…")
                }
                Some(p) if !p.is_empty() => write!(s, " {p}"),
                _ => Ok(()),
            }
        }
        other => {
            let _ = write!(s, "{other}");
            if let Some(st) = &e.stage {
                let _ = write!(s, " stage {st}");
            }
            if !message.is_empty() {
                let _ = write!(s, ": {message}");
            }
            Ok(())
        }
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::RunPhase,
        brokers::Delivery,
        engine::runner::StageOutcome,
        events::RunKey,
        message::{Message, Target},
    };

    fn at(mut e: Event, seq: u64) -> Event {
        e.seq = seq;
        e.time = "2026-01-02T12:00:01.25Z".parse().unwrap();
        e
    }

    #[test]
    fn lines() {
        let run = RunKey::new("ns", "r");
        let msg = Message {
            seq: 7,
            key: Some("k-7".into()),
            payload: "x".repeat(100),
            ..Default::default()
        };
        let delivery = Delivery {
            partition: Some(0),
            offset: Some(41),
            delivery_tag: None,
        };
        let cases = [
            (
                Event::phase(&run, RunPhase::Running, "Running", "running workflow \"w\""),
                "#1 12:00:01.250 run Running: running workflow \"w\"",
            ),
            (
                Event::phase(
                    &run,
                    RunPhase::Failed,
                    "Timeout",
                    "stage \"a\" failed: slow",
                ),
                "#1 12:00:01.250 run Failed (Timeout): stage \"a\" failed: slow",
            ),
            (
                Event {
                    attempt: Some(2),
                    ..Event::stage(&run, events::STAGE_STARTED, "a")
                },
                "#1 12:00:01.250 stage a started (attempt 2)",
            ),
            (
                Event::stage_finished(
                    &run,
                    "a",
                    &StageOutcome::Failed {
                        reason: "Unreachable".into(),
                        message: "Kafka at k:9092: down".into(),
                    },
                ),
                "#1 12:00:01.250 stage a failed (Unreachable): Kafka at k:9092: down",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(line(&at(e, 1)), want);
        }
        let e = Event::published(
            &run,
            "a",
            "kafka",
            &Target::Topic("orders".into()),
            &msg,
            &delivery,
            1 << 16,
        );
        assert_eq!(
            line(&at(e, 9)),
            format!(
                "#9 12:00:01.250 message a #7 -> topic orders via kafka p0@41 key=k-7 {}…",
                "x".repeat(80)
            )
        );
    }
}
