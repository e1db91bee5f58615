//! Control plane: N WorkflowRuns applied at once to a controller with `--max-active-runs`,
//! each of three small stages. Latencies come from a watch (the first version with phase
//! Running, against the moment its create was sent); writes are the API server's own counts
//! (`apiserver_request_total`), before and after.

use crate::{
    Args, cluster,
    procs::Sampler,
    stats::{Row, Unit, percentile, thousands},
};
use devset::api::{RunPhase, WorkflowRun};
use futures::{StreamExt, TryStreamExt};
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Stages per run (the bound on writes per run is 2 × this + 10).
const STAGES: usize = 3;

#[derive(Default)]
struct Seen {
    running: HashMap<String, Instant>,
    done: HashMap<String, (Instant, RunPhase)>,
}

struct Measure {
    p50: f64,
    p99: f64,
    total: f64,
    rss: f64,
    cpu: f64,
    writes: f64,
    event_writes: f64,
    breakdown: String,
    reads: f64,
    reads_breakdown: String,
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let n = args.runs();
    let max = args.max_active_runs();
    let mut got = Vec::new();
    for rep in 0..args.reps() {
        let x = measure(args, n, max).await?;
        eprintln!(
            "[bench] control rep {rep}: Running p50 {:.2} s p99 {:.2} s, last done {:.1} s, RSS {:.0} MiB, CPU {:.0}%, {:.1} writes/run ({}), {:.1} Event writes/run, {:.1} reads/run ({})",
            x.p50,
            x.p99,
            x.total,
            x.rss,
            x.cpu,
            x.writes,
            x.breakdown,
            x.event_writes,
            x.reads,
            x.reads_breakdown
        );
        got.push(x);
    }
    let col = |f: fn(&Measure) -> f64| got.iter().map(f).collect::<Vec<_>>();
    let case = format!(
        "{} runs at once, --max-active-runs {max}, {STAGES} small stages",
        thousands(n as u64)
    );
    let bound = 2 * STAGES + 10;
    Ok(vec![
        Row::new("Control plane", &case, "apply → Running p50, s", Unit::Seconds)
            .values(col(|x| x.p50))
            .note("from the create request to the first watched version with phase Running"),
        Row::new("Control plane", &case, "apply → Running p99, s", Unit::Seconds)
            .values(col(|x| x.p99)),
        Row::new("Control plane", &case, "until the last run completes, s", Unit::Seconds)
            .values(col(|x| x.total))
            .note("from the first create request"),
        Row::new("Control plane", &case, "controller RSS peak, MiB", Unit::MiB).values(col(|x| x.rss)),
        Row::new("Control plane", &case, "controller CPU, % of one core", Unit::Cpu)
            .values(col(|x| x.cpu))
            .note("from the first create to the last completion"),
        Row::new(
            "Control plane",
            &case,
            "API-server writes per run, workflowruns",
            Unit::Count,
        )
        .values(col(|x| x.writes))
        .note(format!(
            "`apiserver_request_total`, the bench's own creates left out; bound 2×{STAGES}+10 = {bound}; last rep: {}",
            got.last().map_or("", |x| x.breakdown.as_str())
        )),
        Row::new(
            "Control plane",
            &case,
            "API-server writes per run, Events",
            Unit::Count,
        )
        .values(col(|x| x.event_writes))
        .note("`events.k8s.io` (kubectl describe)"),
        Row::new(
            "Control plane",
            &case,
            "API-server reads per run (GET, LIST)",
            Unit::Count,
        )
        .values(col(|x| x.reads))
        .note(format!(
            "devset.io and core resources; last rep: {}",
            got.last().map_or("", |x| x.reads_breakdown.as_str())
        )),
    ])
}

async fn measure(args: &Args, n: usize, max: usize) -> anyhow::Result<Measure> {
    let part = cluster::Part::start(args, "cp", max).await?;
    let (client, ns, controller) = (&part.client, part.ns.clone(), &part.controller);
    let topic = format!("bench-{ns}");
    let publish = serde_json::json!({
        "topic": topic, "count": 10, "key": "k-{{ seq }}", "payload": "{\"seq\":{{ seq }},\"run\":\"{{ run.name }}\"}"
    });
    cluster::workflow(
        client,
        &ns,
        "small",
        serde_json::json!([
            {"name": "first", "publish": publish},
            {"name": "pause", "delay": {"duration": "500ms"}},
            {"name": "second", "publish": publish},
        ]),
    )
    .await?;
    // Watch before creating anything.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api: Api<WorkflowRun> = Api::namespaced(client.clone(), &ns);
    let watch = {
        let seen = seen.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(run)) = stream.try_next().await {
                let now = Instant::now();
                let phase = run.status.as_ref().and_then(|s| s.phase);
                let mut s = seen.lock().unwrap();
                if matches!(phase, Some(RunPhase::Running)) {
                    s.running.entry(run.name_any()).or_insert(now);
                }
                if let Some(p) = phase.filter(|p| p.is_finished()) {
                    s.done.entry(run.name_any()).or_insert((now, p));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let groups = ["devset.io", "events.k8s.io"];
    let before = cluster::apiserver_requests(&groups, cluster::WRITES)?;
    let reads_before = cluster::apiserver_requests(&["devset.io", ""], cluster::READS)?;
    let sampler = Sampler::start(controller.pid());
    let t0 = Instant::now();
    let created: Vec<(String, Instant)> = futures::stream::iter(0..n)
        .map(|i| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let name = format!("run-{i:04}");
                let at = Instant::now();
                cluster::create_run(&client, &ns, &name, "small", "kafka").await?;
                anyhow::Ok((name, at))
            }
        })
        .buffer_unordered(50)
        .try_collect()
        .await?;
    loop {
        let done = seen.lock().unwrap().done.len();
        if done >= n {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(900),
            "only {done} of {n} runs ended after 900 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_done = Instant::now();
    // Trailing writes (Events after the final status) land within a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cluster::apiserver_requests(&groups, cluster::WRITES)?;
    let reads_after = cluster::apiserver_requests(&["devset.io", ""], cluster::READS)?;
    let usage = sampler.finish(controller.pid());
    watch.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let failed: Vec<_> = seen
        .done
        .iter()
        .filter(|(_, (_, p))| *p != RunPhase::Completed)
        .map(|(k, (_, p))| format!("{k} {p:?}"))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} runs did not complete: {failed:?}",
        failed.len()
    );
    let mut to_running: Vec<f64> = created
        .iter()
        .filter_map(|(name, at)| Some(seen.running.get(name)?.duration_since(*at).as_secs_f64()))
        .collect();
    anyhow::ensure!(
        to_running.len() == n,
        "the watch saw {} of {n} runs Running",
        to_running.len()
    );
    to_running.sort_by(f64::total_cmp);
    let last = seen
        .done
        .values()
        .map(|(t, _)| *t)
        .max()
        .unwrap_or(last_done);
    let writes = cluster::diff(&before, &after);
    let runs_writes: BTreeMap<_, _> = writes
        .iter()
        .filter(|(k, _)| k.starts_with("workflowruns") && k.as_str() != "workflowruns POST")
        .collect();
    let breakdown = runs_writes
        .iter()
        .map(|(k, v)| format!("{k} {:.2}", *v / n as f64))
        .collect::<Vec<_>>()
        .join(", ");
    let event_writes: f64 = writes
        .iter()
        .filter(|(k, _)| k.starts_with("events"))
        .map(|(_, v)| v)
        .sum();
    let reads = cluster::diff(&reads_before, &reads_after);
    let reads_breakdown = reads
        .iter()
        .filter(|(_, v)| **v >= n as f64 / 10.0)
        .map(|(k, v)| format!("{k} {:.1}", *v / n as f64))
        .collect::<Vec<_>>()
        .join(", ");
    let m = Measure {
        reads: reads.values().sum::<f64>() / n as f64,
        reads_breakdown,
        p50: percentile(&to_running, 0.5),
        p99: percentile(&to_running, 0.99),
        total: last.duration_since(t0).as_secs_f64(),
        rss: usage.peak_rss_mib(t0, last),
        cpu: usage.cpu_percent(t0, last),
        writes: runs_writes.values().copied().sum::<f64>() / n as f64,
        event_writes: event_writes / n as f64,
        breakdown,
    };
    timeline(&part, &created, &seen).await?;
    part.finish().await?;
    Ok(m)
}

/// Where a run's time goes, from its event log (medians over the runs, printed to stderr).
async fn timeline(
    part: &cluster::Part,
    created: &[(String, Instant)],
    seen: &Seen,
) -> anyhow::Result<()> {
    let store = devset::events::Store::open(&part.store, devset::events::Limits::default()).await?;
    let mut spans: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (name, _) in created {
        let key = devset::events::RunKey::new(&part.ns, name);
        let evs = store.events(&key, 0, 1000).await?;
        let mut prev: Option<(String, i64)> = None;
        for e in &evs {
            if e.kind == devset::events::MESSAGE_PUBLISHED {
                continue;
            }
            let label = if e.kind == devset::events::RUN_PHASE {
                let ev = e.event()?;
                format!("run.phase {:?}", ev.phase)
            } else {
                format!("{} {}", e.kind, e.event()?.stage.unwrap_or_default())
            };
            if let Some((p, t)) = &prev {
                spans
                    .entry(format!("{p} → {label}"))
                    .or_default()
                    .push((e.time_us - t) as f64 / 1e3);
            }
            prev = Some((label, e.time_us));
        }
    }
    let _ = seen;
    for (k, mut v) in spans {
        v.sort_by(f64::total_cmp);
        eprintln!(
            "[bench]   {k}: p50 {:.1} ms, p99 {:.1} ms ({} runs)",
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.len()
        );
    }
    Ok(())
}
