//! Helpers shared by the consumer tests (`tests/consume.rs`, `tests/consume_rabbitmq.rs`).

use devset::brokers::{Consumer, Received};
use std::time::{Duration, Instant};

/// Reads until `n` messages were read (panics after `within`), then checks that nothing more
/// comes for `quiet`.
pub async fn read_exactly(
    c: &mut Consumer,
    n: usize,
    within: Duration,
    quiet: Duration,
) -> Vec<Received> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    let mut out = Vec::new();
    while all.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.next_batch(&mut out, 1024)).await {
            Ok(r) => {
                let k = r.expect("next_batch");
                assert!(k > 0 && k <= 1024 && k == out.len(), "{k} of {}", out.len());
                all.append(&mut out);
            }
            Err(_) => panic!("read {} of {n} messages within {within:?}", all.len()),
        }
    }
    assert_eq!(all.len(), n, "more than expected");
    if !quiet.is_zero() {
        let more = tokio::time::timeout(quiet, c.next_batch(&mut out, 1024)).await;
        assert!(more.is_err(), "an unexpected message: {out:?}");
        assert!(out.is_empty());
    }
    assert_eq!(c.read(), n as u64);
    all
}

pub fn assert_seq(all: &[Received]) {
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.msg.seq, i as u64 + 1, "seq in read order");
    }
}

/// Reads `n` messages, each `next_batch` (of at most `max`) under a timeout of 0 to 250 µs
/// that often drops it; checks that a dropped call appended nothing. Returns the messages and
/// how many calls were dropped.
pub async fn read_with_cancellations(
    c: &mut Consumer,
    n: usize,
    max: usize,
) -> (Vec<Received>, u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut all = Vec::new();
    let mut dropped = 0;
    let mut i = 0u64;
    let stop = tokio_util::sync::CancellationToken::new();
    while all.len() < n {
        assert!(Instant::now() < deadline, "read {} of {n}", all.len());
        i += 1;
        let mut out = Vec::new();
        let wait = Duration::from_micros((i * 7919) % 250);
        // As the engine uses it: in a select! with a timeout and a stop token.
        let done = tokio::select! {
            r = c.next_batch(&mut out, max) => Some(r.expect("next_batch")),
            _ = tokio::time::sleep(wait) => None,
            _ = stop.cancelled() => None,
        };
        match done {
            Some(k) => {
                assert!(k >= 1 && k <= max && k == out.len());
                all.extend(out);
            }
            None => {
                assert!(out.is_empty(), "a cancelled next_batch appended {out:?}");
                dropped += 1;
            }
        }
        if i.is_multiple_of(5) {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(all.len(), n);
    let mut out = Vec::new();
    let more = tokio::time::timeout(Duration::from_millis(500), c.next_batch(&mut out, max)).await;
    assert!(more.is_err(), "an extra message: {out:?}");
    (all, dropped)
}
