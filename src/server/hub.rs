//! Live fan-out of run logs: one tail per watched run reads new events from the store when it
//! changes and broadcasts them to every stream of that run. Each stream backfills from the
//! store, then follows the broadcast, skipping what it has and refilling any gap from the store,
//! so that it sees every event once, in order.

use crate::events::{RunKey, Store, StoreError, StoredEvent};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

/// Events buffered per run for slow streams; a stream that falls further behind refills from
/// the store.
const BROADCAST: usize = 4_096;
/// Events read from the store at a time, at most (a stream reads no more than its channel has
/// room for).
const PAGE: u32 = 1_000;

/// One event as an SSE frame (`id:`, `event:`, `data:`), rendered once and shared by every
/// stream that sends it.
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    /// Microseconds since the Unix epoch: when the event happened.
    pub time_us: i64,
    /// The run's log ends with this event.
    pub terminal: bool,
    pub bytes: axum::body::Bytes,
}

impl Frame {
    fn new(ev: StoredEvent) -> Arc<Frame> {
        // The data is compact JSON: one line, as an SSE `data:` field needs.
        let text = format!("id: {}\nevent: {}\ndata: {}\n\n", ev.seq, ev.kind, ev.data);
        Arc::new(Frame {
            seq: ev.seq,
            time_us: ev.time_us,
            terminal: ev.is_terminal(),
            bytes: text.into(),
        })
    }
}

/// The tails of the runs being watched.
pub struct Hub {
    store: Store,
    tails: Mutex<HashMap<RunKey, broadcast::Sender<Arc<Frame>>>>,
}

impl Hub {
    pub fn new(store: Store) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            tails: Mutex::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs with a live tail (for metrics).
    pub fn watched_runs(&self) -> usize {
        self.tails.lock().unwrap().len()
    }

    /// Subscribes to `run`'s live events, starting its tail when it has none. A new tail
    /// starts after the last event stored *before* the subscription, so that what a subscriber
    /// then reads from the store and what the tail broadcasts leave no gap between them.
    async fn subscribe(
        self: &Arc<Self>,
        run: &RunKey,
    ) -> Result<broadcast::Receiver<Arc<Frame>>, StoreError> {
        if let Some(tx) = self.tails.lock().unwrap().get(run) {
            return Ok(tx.subscribe());
        }
        let last = patiently(|| self.store.log(run))
            .await?
            .map_or(0, |l| l.last_seq);
        let mut tails = self.tails.lock().unwrap();
        if let Some(tx) = tails.get(run) {
            return Ok(tx.subscribe());
        }
        let (tx, rx) = broadcast::channel(BROADCAST);
        tails.insert(run.clone(), tx.clone());
        tokio::spawn(tail(self.clone(), run.clone(), last, tx));
        Ok(rx)
    }

    /// Streams `run`'s events after `after` into `out`, in order, each once: first what is
    /// stored, then live. Ends after the run's terminal event, when the log is gone or
    /// expired, or when `out` closes.
    pub async fn follow(
        self: Arc<Self>,
        run: RunKey,
        after: u64,
        out: mpsc::Sender<Arc<Frame>>,
    ) -> Result<(), StoreError> {
        // Subscribe first: what is appended from now on arrives here, what was before comes
        // from the store.
        let mut live = self.subscribe(&run).await?;
        let mut cursor = after;
        if let Some(log) = patiently(|| self.store.log(&run)).await?
            && (log.expired || (log.final_phase.is_some() && cursor >= log.last_seq))
        {
            return Ok(());
        }
        if self.backfill(&run, &mut cursor, &out).await? {
            return Ok(());
        }
        loop {
            let ev = tokio::select! {
                ev = live.recv() => ev,
                _ = out.closed() => return Ok(()),
            };
            match ev {
                Ok(ev) if ev.seq <= cursor => {}
                Ok(ev) if ev.seq == cursor + 1 => {
                    cursor = ev.seq;
                    let end = ev.terminal;
                    if out.send(ev).await.is_err() || end {
                        return Ok(());
                    }
                }
                // A gap (this stream joined a tail that was ahead of the store's reads, or
                // lagged): the store has everything.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    if self.backfill(&run, &mut cursor, &out).await? {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }

    /// Sends what the store has after `cursor`; true when the stream is over (terminal event
    /// sent, or `out` closed).
    async fn backfill(
        &self,
        run: &RunKey,
        cursor: &mut u64,
        out: &mpsc::Sender<Arc<Frame>>,
    ) -> Result<bool, StoreError> {
        loop {
            // Read no more than the stream has room for: a client that stops reading holds its
            // channel's frames, not a page of the store besides (issue 15, scenario 8b).
            if out.reserve().await.is_err() {
                return Ok(true);
            }
            let room = out.capacity().clamp(1, PAGE as usize) as u32;
            let page = patiently(|| self.store.events(run, *cursor, room)).await?;
            let full = page.len() == room as usize;
            for ev in page {
                *cursor = ev.seq;
                let end = ev.is_terminal();
                if out.send(Frame::new(ev)).await.is_err() || end {
                    return Ok(true);
                }
            }
            if !full {
                return Ok(false);
            }
        }
    }
}

/// How long a stream waits out a busy store before it gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// Reads from the store, waiting out a busy one: when every pooled connection is taken (as when
/// hundreds of streams backfill at once), SQLite is busy or a connection broke, the read is
/// tried again after a growing pause, for up to [`PATIENCE`]; other errors end the stream.
async fn patiently<T, Fut>(mut read: impl FnMut() -> Fut) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut pause = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    loop {
        match read().await {
            Err(StoreError::Db(e)) if transient(&e) && waited < PATIENCE => {
                tokio::time::sleep(pause).await;
                waited += pause;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            done => return done,
        }
    }
}

/// A store error that goes away by itself.
fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        // SQLITE_BUSY and SQLITE_LOCKED
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("5" | "6")),
        _ => false,
    }
}

/// Follows one run's log while anyone listens.
async fn tail(hub: Arc<Hub>, run: RunKey, mut last: u64, tx: broadcast::Sender<Arc<Frame>>) {
    let mut changes = hub.store.changes();
    changes.borrow_and_update();
    loop {
        {
            let mut tails = hub.tails.lock().unwrap();
            if tx.receiver_count() == 0 {
                tails.remove(&run);
                return;
            }
        }
        loop {
            match hub.store.events(&run, last, PAGE).await {
                Ok(page) => {
                    let full = page.len() == PAGE as usize;
                    for ev in page {
                        last = ev.seq;
                        let _ = tx.send(Frame::new(ev));
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    warn!(run = %run, error = %e, "cannot read the run's log");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { tokio::time::sleep(Duration::from_secs(1)).await },
            // Notice when every stream has gone, even on an idle log.
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::RunPhase,
        events::{Event, EventLog, Limits, MESSAGE_PUBLISHED},
    };

    #[tokio::test]
    async fn a_busy_store_is_waited_out_and_other_errors_are_not() {
        let mut tries = 0;
        let got = patiently(|| {
            tries += 1;
            let busy = tries < 3;
            async move {
                if busy {
                    Err(StoreError::Db(sqlx::Error::PoolTimedOut))
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(got.unwrap(), 7);
        assert_eq!(tries, 3);
        let mut tries = 0;
        let got: Result<u8, _> = patiently(|| {
            tries += 1;
            async { Err(StoreError::Config("broken".into())) }
        })
        .await;
        assert!(got.is_err());
        assert_eq!(tries, 1);
    }

    async fn collect(hub: Arc<Hub>, run: RunKey, after: u64) -> Vec<u64> {
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(hub.follow(run, after, tx));
        let mut seqs = Vec::new();
        while let Some(f) = rx.recv().await {
            seqs.push(f.seq);
        }
        task.await.unwrap().unwrap();
        seqs
    }

    /// Streams that join before, during and after a log is written, with a slow reader
    /// (an 8-frame channel) among them, each get every event once, in order, and end after the
    /// terminal event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_stream_gets_every_event_once_in_order_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("e.db").display());
        let log = EventLog::start(Store::open(&url, Limits::default()).await.unwrap());
        let hub = Hub::new(Store::open(&url, Limits::default()).await.unwrap());
        let run = RunKey::new("ns", "r");
        let early: Vec<_> = (0..5)
            .map(|_| tokio::spawn(collect(hub.clone(), run.clone(), 0)))
            .collect();
        let n = 3_000u64;
        let mut during = Vec::new();
        for i in 1..n {
            log.append(&run, Event::new(&run, MESSAGE_PUBLISHED));
            if i % 500 == 0 {
                during.push(tokio::spawn(collect(hub.clone(), run.clone(), 0)));
                during.push(tokio::spawn(collect(hub.clone(), run.clone(), i / 2)));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        log.append(
            &run,
            Event::phase(&run, RunPhase::Completed, "Completed", "done"),
        );
        log.flush().await;
        let late = collect(hub.clone(), run.clone(), 0).await;
        assert_eq!(late, (1..=n).collect::<Vec<_>>());
        for t in early {
            assert_eq!(t.await.unwrap(), (1..=n).collect::<Vec<_>>());
        }
        for (k, t) in during.into_iter().enumerate() {
            let got = t.await.unwrap();
            let from = if k % 2 == 0 { 1 } else { got[0] };
            assert_eq!(got, (from..=n).collect::<Vec<_>>());
        }
        // Nothing after the end: a stream from the last event ends at once.
        assert!(collect(hub.clone(), run.clone(), n).await.is_empty());
    }
}
