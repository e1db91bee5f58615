//! The terminal side of `devset run`: the engine's [`Observer`] that draws a progress bar per
//! stage, prints each event (text or JSON) and sums up the run.

use super::{
    render::{self, Output},
    run::{Plan, RunArgs},
};
use crate::{
    api::RunPhase,
    brokers::Delivery,
    engine::{
        amounts,
        approval::{ApprovalAsk, Verdict},
        duration::parse_duration,
        runner::{Observer, StageOutcome},
    },
    events::{self, Event, RunKey},
    message::{Message, Target},
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::{
    collections::BTreeMap,
    io::Write,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

/// One stage's live numbers and bar.
struct StageLine {
    bar: ProgressBar,
    /// The message count of a publish stage; the delay of a delay stage.
    total: Option<u64>,
    delay: Option<Duration>,
    published: AtomicU64,
    started: Mutex<Option<Instant>>,
    ended: Mutex<Option<(Instant, String)>>,
    outputs: Mutex<BTreeMap<String, String>>,
}

/// The engine's [`Observer`] for the terminal: bars, events to the printer thread, numbers
/// for the summary.
pub(super) struct Reporter {
    key: RunKey,
    stages: BTreeMap<String, StageLine>,
    order: Vec<String>,
    /// Events to print; `None` once closed.
    tx: Mutex<Option<mpsc::Sender<Event>>>,
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
    /// Whether message events are printed.
    messages: bool,
}

/// The payload cap of message events, as the event log's default.
const MAX_PAYLOAD: usize = 64 * 1024;

impl Reporter {
    pub(super) fn new(plan: &Plan, args: &RunArgs, multi: &MultiProgress) -> Reporter {
        let width = plan
            .workflow
            .spec
            .stages
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        let mut stages = BTreeMap::new();
        let mut order = Vec::new();
        for s in &plan.workflow.spec.stages {
            let (total, delay, template) = match (&s.publish, &s.delay, &s.expect) {
                (Some(p), _, _) => (
                    Some(amounts::count(&p.count, &plan.params).unwrap_or(0)),
                    None,
                    "{prefix} [{bar:30.cyan/blue}] {pos}/{len} msgs {rate} eta {eta} {msg}",
                ),
                (_, Some(d), _) => (
                    None,
                    parse_duration(&d.duration).ok(),
                    "{prefix} [{bar:30.yellow/blue}] delay {msg}",
                ),
                (_, _, Some(e)) => (
                    Some(amounts::count(&e.count, &plan.params).unwrap_or(0)),
                    None,
                    "{prefix} [{bar:30.green/blue}] {pos}/{len} matched {msg}",
                ),
                _ => (None, None, "{prefix} {msg}"),
            };
            let len = total.or(delay.map(|d| d.as_millis() as u64)).unwrap_or(1);
            let bar = multi.add(ProgressBar::new(len));
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key(
                    "rate",
                    |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0}/s", st.per_sec());
                    },
                )
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(format!("{:<width$}", s.name));
            bar.set_message("pending");
            stages.insert(
                s.name.clone(),
                StageLine {
                    bar,
                    total,
                    delay,
                    published: AtomicU64::new(0),
                    started: Mutex::new(None),
                    ended: Mutex::new(None),
                    outputs: Mutex::new(BTreeMap::new()),
                },
            );
            order.push(s.name.clone());
        }
        let (tx, rx) = mpsc::channel();
        Reporter {
            key: plan.key.clone(),
            stages,
            order,
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(Some(rx)),
            messages: args.output == Output::Json || args.show_messages,
        }
    }

    /// Counts a message of `stage` (published, or matched by an expect stage) on its bar, and
    /// prints its event when messages are shown.
    fn message(&self, stage: &str, make: impl FnOnce() -> Event) {
        if let Some(line) = self.stages.get(stage) {
            line.published.fetch_add(1, Ordering::Relaxed);
            line.bar.inc(1);
        }
        if self.messages {
            self.emit(make());
        }
    }

    pub(super) fn emit(&self, e: Event) {
        if let Some(tx) = self.tx.lock().unwrap().as_ref() {
            let _ = tx.send(e);
        }
    }

    pub(super) fn close(&self) {
        self.tx.lock().unwrap().take();
    }

    pub(super) fn phase(&self, phase: RunPhase, reason: &str, message: &str) {
        self.emit(Event::phase(&self.key, phase, reason, message));
    }

    /// A thread that numbers and prints the events, above the bars.
    pub(super) fn printer(
        &self,
        output: Output,
        multi: MultiProgress,
    ) -> std::thread::JoinHandle<()> {
        let rx = self.rx.lock().unwrap().take().expect("one printer");
        std::thread::spawn(move || {
            let mut seq = 0;
            let mut batch = Vec::new();
            while let Ok(first) = rx.recv() {
                batch.push(first);
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                    if batch.len() >= 4096 {
                        break;
                    }
                }
                let write = |batch: &mut Vec<Event>, seq: &mut u64| {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    for mut e in batch.drain(..) {
                        *seq += 1;
                        e.seq = *seq;
                        let _ = match output {
                            Output::Json => serde_json::to_writer(&mut out, &e)
                                .map_err(std::io::Error::from)
                                .and_then(|_| out.write_all(b"\n")),
                            Output::Text => writeln!(out, "{}", render::line(&e)),
                        };
                    }
                    let _ = out.flush();
                };
                if multi.is_hidden() {
                    write(&mut batch, &mut seq);
                } else {
                    multi.suspend(|| write(&mut batch, &mut seq));
                }
            }
        })
    }

    /// Moves the bars of running delay stages.
    pub(super) fn tick_delays(&self) {
        for line in self.stages.values() {
            if line.delay.is_some()
                && line.ended.lock().unwrap().is_none()
                && let Some(t) = *line.started.lock().unwrap()
            {
                line.bar.set_position(t.elapsed().as_millis() as u64);
            }
        }
    }

    pub(super) fn summary(&self, phase: RunPhase, elapsed: Duration) -> String {
        let mut s = format!(
            "\nrun {} {} in {:.2}s\n",
            self.key.name,
            events::phase_name(phase),
            elapsed.as_secs_f64()
        );
        let mut total = 0;
        let mut rows = vec![[
            "STAGE".to_owned(),
            "RESULT".to_owned(),
            "DURATION".to_owned(),
            "MESSAGES".to_owned(),
            "MSG/S".to_owned(),
        ]];
        for name in &self.order {
            let line = &self.stages[name];
            let n = line.published.load(Ordering::Relaxed);
            total += n;
            let started = *line.started.lock().unwrap();
            let ended = line.ended.lock().unwrap().clone();
            let (result, took) = match (started, ended) {
                (None, Some((_, result))) => (result, None),
                (None, None) => ("skipped".to_owned(), None),
                (Some(t), Some((end, result))) => (result, Some(end - t)),
                (Some(t), None) => ("unfinished".to_owned(), Some(t.elapsed())),
            };
            let duration = took.map_or("-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
            let (messages, rate) = match (line.total, took) {
                (Some(_), Some(d)) if d.as_secs_f64() > 0.0 => {
                    (n.to_string(), format!("{:.0}", n as f64 / d.as_secs_f64()))
                }
                (Some(_), _) => (n.to_string(), "-".to_owned()),
                (None, _) => ("-".to_owned(), "-".to_owned()),
            };
            rows.push([name.clone(), result, duration, messages, rate]);
        }
        let w: Vec<usize> = (0..5)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for [name, result, duration, messages, rate] in &rows {
            s.push_str(&format!(
                "  {name:<w0$}  {result:<w1$}  {duration:>w2$}  {messages:>w3$}  {rate:>w4$}\n",
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3],
                w4 = w[4]
            ));
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        s.push_str(&format!(
            "total: {total} messages in {:.2}s, {:.0} msg/s\n",
            elapsed.as_secs_f64(),
            total as f64 / secs
        ));
        s
    }
}

impl Observer for Reporter {
    fn stage_started(&self, stage: &str, attempt: u32) {
        self.emit(Event {
            attempt: Some(attempt),
            ..Event::stage(&self.key, events::STAGE_STARTED, stage)
        });
        if let Some(line) = self.stages.get(stage) {
            line.started
                .lock()
                .unwrap()
                .get_or_insert_with(Instant::now);
            line.bar.reset_eta();
            line.bar.set_message(match (attempt, line.delay) {
                (1, Some(d)) => format!("{:.1}s", d.as_secs_f64()),
                (1, None) => String::new(),
                (n, _) => format!("attempt {n}"),
            });
        }
    }

    fn published(
        &self,
        stage: &str,
        connector: &str,
        target: &Target,
        msg: &Message,
        delivery: &Delivery,
    ) {
        self.message(stage, || {
            Event::published(
                &self.key,
                stage,
                connector,
                target,
                msg,
                delivery,
                MAX_PAYLOAD,
            )
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
        self.message(stage, || {
            Event::received(
                &self.key,
                stage,
                connector,
                source,
                msg,
                delivery,
                MAX_PAYLOAD,
            )
        });
    }

    fn stage_waiting(&self, stage: &str, ask: &ApprovalAsk) {
        self.emit(Event {
            message: Some(ask.message.clone()),
            ..Event::stage(&self.key, events::STAGE_WAITING, stage)
        });
        if let Some(line) = self.stages.get(stage) {
            line.bar.set_message("waiting for approval");
        }
    }

    fn stage_decided(&self, stage: &str, verdict: &Verdict) {
        self.emit(Event::decided(&self.key, stage, verdict));
    }

    fn stage_outputs(&self, stage: &str, outputs: &BTreeMap<String, String>) {
        if let Some(line) = self.stages.get(stage) {
            *line.outputs.lock().unwrap() = outputs.clone();
        }
    }

    fn stage_retrying(&self, stage: &str, attempt: u32, reason: &str, message: &str) {
        self.emit(Event {
            attempt: Some(attempt),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            ..Event::stage(&self.key, events::STAGE_RETRYING, stage)
        });
        if let Some(line) = self.stages.get(stage) {
            line.bar
                .set_message(format!("attempt {attempt} failed ({reason}); retrying"));
        }
    }

    fn stage_finished(&self, stage: &str, outcome: &StageOutcome) {
        let Some(line) = self.stages.get(stage) else {
            return;
        };
        let outputs = line.outputs.lock().unwrap().clone();
        self.emit(Event {
            outputs: (!outputs.is_empty()).then_some(outputs),
            ..Event::stage_finished(&self.key, stage, outcome)
        });
        let result = match outcome {
            StageOutcome::Succeeded => "Succeeded".to_owned(),
            StageOutcome::Stopped => "Stopped".to_owned(),
            StageOutcome::Failed { reason, .. } => format!("Failed ({reason})"),
            StageOutcome::Skipped { reason, .. } => format!("Skipped ({reason})"),
        };
        let now = Instant::now();
        let took = line
            .started
            .lock()
            .unwrap()
            .map_or(Duration::ZERO, |t| now - t);
        *line.ended.lock().unwrap() = Some((now, result.clone()));
        if line.delay.is_some() && *outcome == StageOutcome::Succeeded {
            line.bar.set_position(line.bar.length().unwrap_or(0));
        }
        let text = format!("{result} in {:.2}s", took.as_secs_f64());
        match outcome {
            StageOutcome::Succeeded => line.bar.finish_with_message(text),
            _ => line.bar.abandon_with_message(text),
        }
    }
}
