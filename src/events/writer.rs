//! The controller's side of the event log: appends queue without blocking the engine, and one
//! task writes them in batches, each batch one transaction.

use super::{Append, Event, RunKey, Store, StoreError};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::{collections::BTreeMap, time::Duration};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Events per transaction at most.
const MAX_BATCH: usize = 5_000;

enum Cmd {
    Append(Box<Append>),
    Dropped(RunKey, u64),
    Delete(RunKey, oneshot::Sender<Result<(), StoreError>>),
    Flush(oneshot::Sender<()>),
}

/// Counters of the writer, for `/metrics` (clones share their values).
#[derive(Clone, Debug, Default)]
pub struct LogMetrics {
    /// Events handed to the store in committed batches.
    pub appended: Counter,
    /// `message.published` events left out beyond the per-run cap (counted in the store).
    pub dropped: Counter,
    /// Batches that failed and were tried again.
    pub errors: Counter,
    /// Events queued and not yet committed.
    pub queued: Gauge,
}

/// Appends to the event store in order, in batches. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::UnboundedSender<Cmd>,
    store: Store,
    metrics: LogMetrics,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventLog({:?})", self.store)
    }
}

impl EventLog {
    /// Starts the writer task on `store`.
    pub fn start(store: Store) -> EventLog {
        Self::start_with_metrics(store, LogMetrics::default())
    }

    /// Starts the writer task on `store`, counting into `metrics`.
    pub fn start_with_metrics(store: Store, metrics: LogMetrics) -> EventLog {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write(store.clone(), rx, metrics.clone()));
        EventLog { tx, store, metrics }
    }

    /// The store it writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Queues `event` for `run`; it gets its sequence number when written. Never blocks.
    pub fn append(&self, run: &RunKey, event: Event) {
        self.metrics.queued.inc();
        let _ = self.tx.send(Cmd::Append(Box::new(Append {
            run: run.clone(),
            event,
        })));
    }

    /// Counts `n` message events of `run` that were left out (beyond the cap) without
    /// building them.
    pub fn dropped(&self, run: &RunKey, n: u64) {
        self.metrics.dropped.inc_by(n);
        let _ = self.tx.send(Cmd::Dropped(run.clone(), n));
    }

    /// Removes `run`'s log, after everything queued before.
    pub async fn delete(&self, run: &RunKey) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Delete(run.clone(), tx))
            .map_err(|_| StoreError::Config("the event log writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Config("the event log writer has stopped".into()))?
    }

    /// Waits until everything queued so far is durable.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write(store: Store, mut rx: mpsc::UnboundedReceiver<Cmd>, metrics: LogMetrics) {
    let mut batch: Vec<Append> = Vec::new();
    let mut dropped: BTreeMap<RunKey, u64> = BTreeMap::new();
    let mut flushed: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Take what is queued, up to a batch; a delete ends the batch so that it applies
        // after the events queued before it.
        let mut delete = None;
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Append(a) => batch.push(*a),
                Cmd::Dropped(run, n) => *dropped.entry(run).or_default() += n,
                Cmd::Flush(tx) => flushed.push(tx),
                Cmd::Delete(run, tx) => {
                    delete = Some((run, tx));
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() || !dropped.is_empty() {
            commit(&store, &mut batch, &dropped, &metrics).await;
            metrics.queued.dec_by(batch.len() as i64);
            batch.clear();
            dropped.clear();
        }
        for tx in flushed.drain(..) {
            let _ = tx.send(());
        }
        if let Some((run, tx)) = delete {
            let _ = tx.send(store.delete(&run).await);
        }
    }
}

/// Writes one batch; on an error it waits and tries again, so that nothing is lost.
async fn commit(
    store: &Store,
    batch: &mut [Append],
    dropped: &BTreeMap<RunKey, u64>,
    metrics: &LogMetrics,
) {
    let mut wait = Duration::from_millis(100);
    loop {
        match store.append(batch, dropped).await {
            Ok(_) => {
                metrics.appended.inc_by(batch.len() as u64);
                return;
            }
            Err(e) => {
                metrics.errors.inc();
                warn!(error = %e, events = batch.len(), "cannot append to the event log; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
