//! SSE: N concurrent clients on one live run, through `devset api` with Kubernetes auth.
//!
//! The run is created first and waits (Pending, its Workflow missing) while the clients
//! connect; creating the Workflow then starts it. The latency of an event is the time from its
//! `time` (stamped by the controller when it appends the event) to its receipt by a client, on
//! the same machine's clock; only events stamped after every client was connected count. The
//! clients are minimal HTTP/1.0 readers (no chunked encoding) in this process, so their own
//! scheduling is part of the figure.

use crate::{
    Args, cluster, kafka,
    procs::{self, Devset, Sampler},
    stats::{Row, Unit, percentile, thousands},
};
use devset::api::PublishAction;
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
};

/// Streams opening at once at most (each does a store read; the listen backlog is finite).
const CONNECTING: usize = 200;

struct Measure {
    p50_ms: f64,
    p99_ms: f64,
    rss_mib: f64,
    cpu: f64,
    complete: usize,
    events: usize,
    connect_s: f64,
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let part = cluster::Part::start(args, "sse", 10).await?;
    let (client, ns, store) = (&part.client, part.ns.clone(), part.store.clone());
    let token = cluster::reader_token(&ns, "reader")?;
    let m = args.sse_messages();
    let mut rows = Vec::new();
    for clients in args.sse_clients() {
        let mut got: Vec<Measure> = Vec::new();
        for rep in 0..args.reps() {
            let api = Devset::api(args, &ns, &store).await?;
            let name = format!("sse-{clients}-{rep}");
            let x = measure(args, client, &ns, &name, &token, &api, clients, m).await?;
            eprintln!(
                "[bench] sse {clients} clients rep {rep}: p50 {:.1} ms, p99 {:.1} ms, RSS {:.0} MiB, CPU {:.0}%, {}/{clients} complete, connected in {:.1} s",
                x.p50_ms, x.p99_ms, x.rss_mib, x.cpu, x.complete, x.connect_s
            );
            got.push(x);
        }
        let col = |f: fn(&Measure) -> f64| got.iter().map(f).collect::<Vec<_>>();
        let complete: usize = got.iter().map(|x| x.complete).min().unwrap_or(0);
        let case = format!("{} clients", thousands(clients as u64));
        let events = got.first().map_or(0, |x| x.events);
        rows.push(
            Row::new("SSE", &case, "append → delivery p50, ms", Unit::Millis)
                .values(col(|x| x.p50_ms))
                .note(format!(
                    "{m} messages at {}/s, {events} events per stream; complete streams (min over reps) {complete}/{clients}",
                    args.sse_rate
                )),
        );
        rows.push(
            Row::new("SSE", &case, "append → delivery p99, ms", Unit::Millis)
                .values(col(|x| x.p99_ms)),
        );
        rows.push(
            Row::new("SSE", &case, "`devset api` RSS peak, MiB", Unit::MiB)
                .values(col(|x| x.rss_mib))
                .note("VmHWM of a fresh `devset api` per rep: streams opening, then live"),
        );
        rows.push(
            Row::new("SSE", &case, "`devset api` CPU, % of one core", Unit::Cpu)
                .values(col(|x| x.cpu))
                .note("while the run is live (utime+stime)"),
        );
        rows.push(
            Row::new("SSE", &case, "time to open all streams, s", Unit::Seconds)
                .values(col(|x| x.connect_s))
                .note(format!(
                    "TokenReview/SubjectAccessReview auth; {CONNECTING} opening at once"
                )),
        );
    }
    part.finish().await?;
    Ok(rows)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &Args,
    client: &kube::Client,
    ns: &str,
    name: &str,
    token: &str,
    api: &Devset,
    clients: usize,
    m: u64,
) -> anyhow::Result<Measure> {
    // The run first: Pending until its Workflow exists.
    cluster::create_run(client, ns, name, name, "kafka").await?;
    let path = format!("/api/v1/namespaces/{ns}/workflowruns/{name}/events");
    let http = reqwest::Client::new();
    let start = Instant::now();
    // Until the API's cache knows the run; this also warms its auth cache.
    loop {
        let r = http
            .get(format!("http://127.0.0.1:{}{path}", api.port))
            .bearer_auth(token)
            .send()
            .await?;
        if r.status().is_success() {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the API does not serve {path}: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sampler = Sampler::start(api.pid());
    let connected = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let t_connect = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (path, token) = (path.clone(), token.to_owned());
            let (connected, gate, port) = (connected.clone(), gate.clone(), api.port);
            tokio::spawn(async move { read_stream(port, &path, &token, &gate, &connected).await })
        })
        .collect();
    while connected.load(Ordering::Relaxed) < clients {
        anyhow::ensure!(
            t_connect.elapsed() < Duration::from_secs(300),
            "only {} of {clients} streams open after 300 s",
            connected.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    let all_open_us = jiff::Timestamp::now().as_microsecond();
    // Go: the Workflow makes the controller start the run.
    let (template, _) = kafka::payload_template(100);
    let publish = PublishAction {
        topic: Some(format!("bench-{ns}-{name}")),
        count: (m as i64).into(),
        rate_per_second: Some(args.sse_rate.into()),
        key: Some("k-{{ seq }}".into()),
        headers: [("source".to_string(), "devset".to_string())].into(),
        payload: Some(template),
        ..Default::default()
    };
    let live_from = Instant::now();
    cluster::workflow(
        client,
        ns,
        name,
        serde_json::json!([{"name": "publish", "publish": publish}]),
    )
    .await?;
    let mut lags: Vec<f64> = Vec::new();
    let mut complete = 0;
    let mut events = 0;
    for t in tasks {
        let got = t.await??;
        if got.complete {
            complete += 1;
        }
        events = events.max(got.seqs);
        lags.extend(
            got.lags
                .iter()
                .filter(|(time, _)| *time >= all_open_us)
                .map(|(_, lag)| *lag as f64 / 1000.0),
        );
    }
    let live_to = Instant::now();
    let usage = sampler.finish(api.pid());
    let hwm = procs::peak_rss_kib(api.pid()).unwrap_or(0) as f64 / 1024.0;
    lags.sort_by(f64::total_cmp);
    anyhow::ensure!(!lags.is_empty(), "no event arrived live");
    Ok(Measure {
        p50_ms: percentile(&lags, 0.5),
        p99_ms: percentile(&lags, 0.99),
        rss_mib: hwm,
        cpu: usage.cpu_percent(live_from, live_to),
        complete,
        events,
        connect_s,
    })
}

/// What one stream received.
struct Got {
    /// (event time, receipt − event time), microseconds.
    lags: Vec<(i64, i64)>,
    /// Events received.
    seqs: usize,
    /// Every event from 1 on, in order, and the stream ended after the terminal one.
    complete: bool,
}

/// Opens one SSE stream over HTTP/1.0 and reads it to its end.
async fn read_stream(
    port: u16,
    path: &str,
    token: &str,
    gate: &Semaphore,
    connected: &AtomicUsize,
) -> anyhow::Result<Got> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut conn;
    {
        let _permit = gate.acquire().await?;
        conn = TcpStream::connect(("127.0.0.1", port)).await?;
        conn.set_nodelay(true)?;
        conn.write_all(
            format!(
                "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        // The response head.
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                anyhow::ensure!(
                    head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
                    "the stream did not open: {}",
                    head.lines().next().unwrap_or("")
                );
                buf.drain(..end + 4);
                break;
            }
            anyhow::ensure!(read_more(&mut conn, &mut buf).await? > 0, "closed early");
        }
    }
    connected.fetch_add(1, Ordering::Relaxed);
    let mut got = Got {
        lags: Vec::new(),
        seqs: 0,
        complete: false,
    };
    let mut next_seq = 1u64;
    let mut in_order = true;
    let mut ended = false;
    loop {
        let now_us = jiff::Timestamp::now().as_microsecond();
        while let Some(end) = find(&buf, b"\n\n") {
            let frame = std::str::from_utf8(&buf[..end])?;
            let (mut id, mut data, mut kind) = (None, None, "");
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse::<u64>().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v);
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = v;
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                in_order &= id == next_seq;
                next_seq = id + 1;
                got.seqs += 1;
                if let Some(t) = event_time_us(data) {
                    got.lags.push((t, now_us - t));
                }
                ended = kind == "run.phase"
                    && ["Completed", "Failed", "Stopped"]
                        .iter()
                        .any(|p| data.contains(&format!("\"phase\":\"{p}\"")));
            }
            buf.drain(..end + 2);
        }
        if read_more(&mut conn, &mut buf).await? == 0 {
            break;
        }
    }
    got.complete = in_order && ended;
    Ok(got)
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = conn.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The event's `"time":"…"`, in microseconds since the epoch.
fn event_time_us(data: &str) -> Option<i64> {
    let at = data.find("\"time\":\"")? + 8;
    let end = at + data[at..].find('"')?;
    Some(
        data[at..end]
            .parse::<jiff::Timestamp>()
            .ok()?
            .as_microsecond(),
    )
}
