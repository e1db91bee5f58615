//! The event store, on embedded SQLite (plain `cargo test`) and on the test environment's real
//! PostgreSQL: numbering, order, durability across reopen, caps, deletion, retention, and
//! change notifications seen by another connection (as `devset api` sees the controller's).

mod common;

use devset::{
    api::RunPhase,
    events::{
        Append, Event, EventLog, Limits, MESSAGE_PUBLISHED, Retention, RunKey, STAGE_STARTED, Store,
    },
};
use jiff::{SignedDuration, Timestamp};
use std::{collections::BTreeMap, time::Duration};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        Timestamp::now().as_nanosecond() % 1_000_000_000
    )
}

fn message(run: &RunKey, n: u64, payload: &str) -> Event {
    Event {
        stage: Some("send".into()),
        sequence: Some(n),
        key: Some(format!("k-{n}")),
        headers: Some(BTreeMap::from([("h".to_string(), n.to_string())])),
        payload: Some(payload.into()),
        ..Event::new(run, MESSAGE_PUBLISHED)
    }
}

fn appends(run: &RunKey, events: Vec<Event>) -> Vec<Append> {
    events
        .into_iter()
        .map(|event| Append {
            run: run.clone(),
            event,
        })
        .collect()
}

const LIMITS: Limits = Limits {
    max_payload_bytes: 8,
    max_message_events: 5,
};

async fn numbering_order_and_reopen(url: &str) {
    let store = Store::open(url, LIMITS).await.unwrap();
    let a = RunKey::new(unique("ns"), "a");
    let b = RunKey::new(a.namespace.clone(), "b");
    let mut batch = appends(
        &a,
        vec![Event::phase(&a, RunPhase::Running, "Running", "go")],
    );
    batch.extend(appends(&b, vec![Event::new(&b, STAGE_STARTED)]));
    batch.extend(appends(&a, (1..=3).map(|n| message(&a, n, "p")).collect()));
    store.append(&mut batch, &BTreeMap::new()).await.unwrap();
    // A second batch goes on from the last number, in a new store handle (a restart).
    drop(store);
    let store = Store::open(url, LIMITS).await.unwrap();
    store
        .append(
            &mut appends(&a, vec![Event::new(&a, STAGE_STARTED)]),
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    let events = store.events(&a, 0, 100).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "run.phase",
            "message.published",
            "message.published",
            "message.published",
            "stage.started"
        ]
    );
    // The JSON carries the number and the message's details.
    let third = events[2].event().unwrap();
    assert_eq!(third.seq, 3);
    assert_eq!(third.key.as_deref(), Some("k-2"));
    assert_eq!(third.headers.unwrap()["h"], "2");
    assert_eq!(store.events(&b, 0, 100).await.unwrap().len(), 1);
    // Pages: after and limit.
    let page: Vec<u64> = store
        .events(&a, 2, 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(page, vec![3, 4]);
    assert_eq!(store.event(&a, 4).await.unwrap().unwrap().seq, 4);
    assert!(store.event(&a, 9).await.unwrap().is_none());
    let log = store.log(&a).await.unwrap().unwrap();
    assert_eq!(log.last_seq, 5);
    assert_eq!(log.final_phase, None);
}

async fn caps_keep_lifecycle_events(url: &str) {
    let store = Store::open(url, LIMITS).await.unwrap();
    let run = RunKey::new(unique("ns"), "capped");
    let mut events: Vec<Event> = (1..=8).map(|n| message(&run, n, "0123456789")).collect();
    events.push(Event::phase(
        &run,
        RunPhase::Completed,
        "Completed",
        "every stage succeeded",
    ));
    store
        .append(
            &mut appends(&run, events),
            &BTreeMap::from([(run.clone(), 10u64)]),
        )
        .await
        .unwrap();
    let stored = store.events(&run, 0, 100).await.unwrap();
    assert_eq!(stored.len(), 6, "5 messages (the cap) and the phase");
    assert_eq!(stored.last().unwrap().kind, "run.phase");
    assert!(stored.last().unwrap().is_terminal());
    let first = stored[0].event().unwrap();
    assert_eq!(first.payload.as_deref(), Some("01234567"));
    assert!(first.payload_truncated);
    assert_eq!(first.payload_bytes, Some(10));
    let log = store.log(&run).await.unwrap().unwrap();
    assert_eq!(log.message_events, 5);
    assert_eq!(log.dropped_message_events, 3 + 10);
    assert_eq!(log.final_phase, Some(RunPhase::Completed));
    assert!(log.finished_at.is_some());
}

async fn delete_and_expire(url: &str) {
    let store = Store::open(url, LIMITS).await.unwrap();
    let ns = unique("ns");
    let gone = RunKey::new(ns.clone(), "gone");
    store
        .append(
            &mut appends(&gone, vec![Event::new(&gone, STAGE_STARTED)]),
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    store.delete(&gone).await.unwrap();
    assert!(store.log(&gone).await.unwrap().is_none());
    assert!(store.events(&gone, 0, 10).await.unwrap().is_empty());

    // Three runs that ended 40 days ago, one in each final phase: only the stopped one is
    // past its retention (30 days; completed 90, failed 180).
    let ago = Timestamp::now() - SignedDuration::from_hours(40 * 24);
    let mut keys = Vec::new();
    for phase in [RunPhase::Completed, RunPhase::Failed, RunPhase::Stopped] {
        let run = RunKey::new(ns.clone(), format!("{phase:?}").to_lowercase());
        let mut end = Event::phase(&run, phase, "Done", "ended");
        end.time = ago;
        store
            .append(
                &mut appends(&run, vec![Event::new(&run, STAGE_STARTED), end]),
                &BTreeMap::new(),
            )
            .await
            .unwrap();
        keys.push(run);
    }
    store
        .expire(Timestamp::now(), &Retention::default())
        .await
        .unwrap();
    let left: Vec<usize> = futures::future::join_all(keys.iter().map(|k| store.events(k, 0, 10)))
        .await
        .into_iter()
        .map(|r| r.unwrap().len())
        .collect();
    assert_eq!(left, vec![2, 2, 0], "completed, failed, stopped");
    assert!(store.log(&keys[2]).await.unwrap().unwrap().expired);
    assert!(!store.log(&keys[0]).await.unwrap().unwrap().expired);
    // A shorter retention takes the completed one too.
    let short = Retention {
        completed: Duration::from_secs(3600),
        ..Retention::default()
    };
    store.expire(Timestamp::now(), &short).await.unwrap();
    assert!(store.events(&keys[0], 0, 10).await.unwrap().is_empty());
    assert_eq!(store.events(&keys[1], 0, 10).await.unwrap().len(), 2);
}

/// Another handle (as `devset api` is another process) learns of appends through `changes()`,
/// and an EventLog keeps order across many small appends and a delete.
async fn writer_and_changes(url: &str) {
    let reader = Store::open(url, Limits::default()).await.unwrap();
    let mut changes = reader.changes();
    let log = EventLog::start(Store::open(url, Limits::default()).await.unwrap());
    let run = RunKey::new(unique("ns"), "live");
    changes.borrow_and_update();
    log.append(&run, Event::phase(&run, RunPhase::Running, "Running", "go"));
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("the reader hears of the append")
        .unwrap();
    for n in 1..=2_000 {
        log.append(&run, message(&run, n, "payload"));
    }
    log.append(
        &run,
        Event::phase(&run, RunPhase::Completed, "Completed", "done"),
    );
    log.flush().await;
    let events = reader.events(&run, 0, 5_000).await.unwrap();
    assert_eq!(events.len(), 2_002);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1)
    );
    let sequences: Vec<u64> = events[1..2_001]
        .iter()
        .map(|e| e.event().unwrap().sequence.unwrap())
        .collect();
    assert_eq!(sequences, (1..=2_000).collect::<Vec<_>>());
    assert!(events.last().unwrap().is_terminal());
    log.delete(&run).await.unwrap();
    assert!(reader.log(&run).await.unwrap().is_none());
}

fn sqlite_url() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("sub/events.db").display());
    (dir, url)
}

#[tokio::test]
async fn sqlite_numbering_order_and_reopen() {
    let (_d, url) = sqlite_url();
    numbering_order_and_reopen(&url).await;
}

#[tokio::test]
async fn sqlite_caps_keep_lifecycle_events() {
    let (_d, url) = sqlite_url();
    caps_keep_lifecycle_events(&url).await;
}

#[tokio::test]
async fn sqlite_delete_and_expire() {
    let (_d, url) = sqlite_url();
    delete_and_expire(&url).await;
}

#[tokio::test]
async fn sqlite_writer_and_changes() {
    let (_d, url) = sqlite_url();
    writer_and_changes(&url).await;
}

/// Events with kilobyte payloads take about their own size on disk, not a page each: 2,000
/// events of 1,200 payload bytes (~1.4 kB rows, 2.8 MB) fit in under 4.5 MB of pages. (In a
/// WITHOUT ROWID table each such row took an overflow page of 4 KiB: 8 MB and more.)
#[tokio::test]
async fn sqlite_stores_kilobyte_events_in_about_their_size() {
    use sqlx::Connection;
    let (_d, url) = sqlite_url();
    let store = Store::open(&url, Limits::default()).await.unwrap();
    let run = RunKey::new("ns", "big");
    let payload = "x".repeat(1_200);
    let mut batch = appends(
        &run,
        (1..=2_000).map(|n| message(&run, n, &payload)).collect(),
    );
    store.append(&mut batch, &BTreeMap::new()).await.unwrap();
    assert_eq!(store.log(&run).await.unwrap().unwrap().last_seq, 2_000);
    let mut c = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let bytes = pages * page_size;
    assert!(
        bytes < 4_500_000,
        "2,000 events of 1.2 kB take {bytes} bytes ({pages} pages of {page_size})"
    );
}

#[tokio::test]
async fn a_store_url_without_a_file_is_a_clear_error() {
    let err = Store::open("sqlite://", Limits::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("names no SQLite file"), "{err}");
}

fn pg() -> String {
    common::env().var("DATABASE_URL").to_owned()
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn postgres_numbering_order_and_reopen() {
    numbering_order_and_reopen(&pg()).await;
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn postgres_caps_keep_lifecycle_events() {
    caps_keep_lifecycle_events(&pg()).await;
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn postgres_delete_and_expire() {
    delete_and_expire(&pg()).await;
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn postgres_writer_and_changes() {
    writer_and_changes(&pg()).await;
}
