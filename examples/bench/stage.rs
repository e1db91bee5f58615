//! A devset publish stage, run two ways: by the engine in this process (`runner::run`, the code
//! path of the controller without Kubernetes and the event log), and by `devset controller`
//! as a WorkflowRun (status writes and the event log included).

use crate::cluster;
use devset::{
    api::{PublishAction, RunPhase, Stage, WorkflowSpec},
    brokers::{BrokerConfig, Delivery},
    engine::runner::{self, Observer, RunInput, RunOutcome, StageOutcome},
    events::{self, RunKey, Store},
    message::{Message, Target},
};
use kube::Client;
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// Counts acknowledged messages; nothing else (the cheapest observer).
struct Count(AtomicU64);

impl Observer for Count {
    fn stage_started(&self, _: &str, _: u32) {}
    fn published(&self, _: &str, _: &str, _: &Target, _: &Message, _: &Delivery) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn stage_retrying(&self, _: &str, _: u32, _: &str, _: &str) {}
    fn stage_finished(&self, _: &str, _: &StageOutcome) {}
}

/// Runs one publish stage with the engine; the time from start to the last acknowledgement
/// (and the producer's close).
pub async fn engine(action: &PublishAction, broker: BrokerConfig) -> anyhow::Result<Duration> {
    let input = RunInput {
        run_name: "bench".into(),
        run_namespace: "bench".into(),
        run_uid: uuid::Uuid::new_v4().to_string(),
        spec: WorkflowSpec {
            stages: vec![Stage {
                name: "publish".into(),
                publish: Some(action.clone()),
                ..Default::default()
            }],
            ..Default::default()
        },
        params: BTreeMap::new(),
        resume: BTreeMap::new(),
        brokers: BTreeMap::from([("b".to_string(), broker)]),
        default_connector: "b".into(),
        started_at: jiff::Timestamp::now(),
        approvals: Arc::new(devset::engine::approval::NoApprovals),
        pause: CancellationToken::new(),
    };
    let count = Arc::new(Count(AtomicU64::new(0)));
    let start = Instant::now();
    let outcome = runner::run(input, count.clone(), CancellationToken::new()).await;
    let took = start.elapsed();
    anyhow::ensure!(
        outcome == RunOutcome::Completed,
        "engine stage: {outcome:?}"
    );
    let n = count.0.load(Ordering::Relaxed);
    let want = match action.count {
        devset::api::Count::Number(c) => c as u64,
        devset::api::Count::Template(_) => {
            anyhow::bail!("the bench publishes a number of messages")
        }
    };
    anyhow::ensure!(n == want, "engine stage: {n} of {want} acknowledged");
    Ok(took)
}

/// Runs one publish stage as a WorkflowRun through the controller that watches `ns` and writes
/// its event log to `store`; the stage's time between its `stage.started` and
/// `stage.completed` events.
pub async fn controller(
    client: &Client,
    ns: &str,
    store: &Store,
    name: &str,
    connector: &str,
    action: &PublishAction,
) -> anyhow::Result<Duration> {
    let stage = serde_json::json!([{"name": "publish", "publish": action}]);
    cluster::workflow(client, ns, name, stage).await?;
    cluster::create_run(client, ns, name, name, connector).await?;
    let run = cluster::wait_completed(client, ns, name, Duration::from_secs(900)).await?;
    let st = run.status.unwrap_or_default();
    let want = match action.count {
        devset::api::Count::Number(c) => c,
        devset::api::Count::Template(_) => {
            anyhow::bail!("the bench publishes a number of messages")
        }
    };
    anyhow::ensure!(
        st.phase == Some(RunPhase::Completed) && st.messages_published == Some(want),
        "run {name}: {:?} with {:?} of {want} messages",
        st.phase,
        st.messages_published,
    );
    let key = RunKey::new(ns, name);
    let last = store
        .log(&key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("run {name} has no event log"))?
        .last_seq;
    let mut head = store.events(&key, 0, 10).await?;
    head.extend(store.events(&key, last.saturating_sub(10), 10).await?);
    let time_of = |kind: &str| {
        head.iter()
            .find(|e| e.kind == kind)
            .map(|e| e.time_us)
            .ok_or_else(|| anyhow::anyhow!("run {name}: no {kind} event in its log"))
    };
    let us = time_of(events::STAGE_COMPLETED)? - time_of(events::STAGE_STARTED)?;
    Ok(Duration::from_micros(us.max(0) as u64))
}
