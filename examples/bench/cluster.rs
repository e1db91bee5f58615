//! The test environment's API server: namespaces, connectors, workflows, runs, and the API
//! server's own request counters.

use crate::{Args, procs::Devset};
use anyhow::Context as _;
use devset::api::{BrokerConnector, RunPhase, Workflow, WorkflowRun};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

/// What one part of the bench runs in: a namespace with the connectors `kafka` and `rabbit`,
/// and a `devset controller` for it with its own SQLite event log.
pub struct Part {
    pub client: Client,
    pub ns: String,
    /// The event log's `sqlite://` URL.
    pub store: String,
    pub controller: Devset,
}

impl Part {
    pub async fn start(args: &Args, name: &str, max_active_runs: usize) -> anyhow::Result<Part> {
        let client = Client::try_default().await?;
        let ns = namespace(&client, name).await?;
        connectors(&client, &ns).await?;
        let store = format!(
            "sqlite://{}",
            std::fs::canonicalize(&args.work)?
                .join(format!("{ns}.db"))
                .display()
        );
        let controller = Devset::controller(args, &ns, max_active_runs, &store).await?;
        Ok(Part {
            client,
            ns,
            store,
            controller,
        })
    }

    /// Removes the runs (and the namespace), stops the controller and removes its event log
    /// (a publish stage's log holds 100,000 message events).
    pub async fn finish(self) -> anyhow::Result<()> {
        let res = cleanup(&self.client, &self.ns).await;
        drop(self.controller);
        if let Some(path) = self.store.strip_prefix("sqlite://") {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        }
        res
    }
}

/// A namespace of its own for one part of the bench, named `bench-PART-XXXX`.
pub async fn namespace(client: &Client, part: &str) -> anyhow::Result<String> {
    let name = format!(
        "bench-{part}-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
            % 0xffffff
    );
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

/// The BrokerConnectors `kafka` and `rabbit` (with its Secret) in `ns`.
pub async fn connectors(client: &Client, ns: &str) -> anyhow::Result<()> {
    let kafka = Args::env("KAFKA_BOOTSTRAP")?;
    let amqp = url::Url::parse(&Args::env("AMQP_URL")?)?;
    let user = percent_encoding::percent_decode_str(amqp.username()).decode_utf8()?;
    let pass = percent_encoding::percent_decode_str(amqp.password().unwrap_or("")).decode_utf8()?;
    let mut bare = amqp.clone();
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "rabbit-creds"},
        "stringData": {"username": user, "password": pass},
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let api = Api::<BrokerConnector>::namespaced(client.clone(), ns);
    for bc in [
        json!({"metadata": {"name": "kafka"}, "spec": {"kafka": {"bootstrapServers": kafka}}}),
        json!({"metadata": {"name": "rabbit"}, "spec": {"rabbitmq": {
            "url": bare.as_str(), "secretRef": {"name": "rabbit-creds"}}}}),
    ] {
        let mut bc = bc;
        bc["apiVersion"] = json!("devset.io/v1alpha1");
        bc["kind"] = json!("BrokerConnector");
        api.create(&PostParams::default(), &serde_json::from_value(bc)?)
            .await?;
    }
    Ok(())
}

/// A Workflow named `name` with `stages` (JSON, as in the CRD).
pub async fn workflow(
    client: &Client,
    ns: &str,
    name: &str,
    stages: serde_json::Value,
) -> anyhow::Result<()> {
    let wf: Workflow = serde_json::from_value(json!({
        "apiVersion": "devset.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"stages": stages},
    }))?;
    Api::<Workflow>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &wf)
        .await
        .with_context(|| format!("creating Workflow {name}"))?;
    Ok(())
}

/// A WorkflowRun of `workflow` through `connector`.
pub fn run_object(name: &str, workflow: &str, connector: &str) -> anyhow::Result<WorkflowRun> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "devset.io/v1alpha1", "kind": "WorkflowRun",
        "metadata": {"name": name},
        "spec": {"workflowRef": {"name": workflow}, "connectorRef": {"name": connector}},
    }))?)
}

pub async fn create_run(
    client: &Client,
    ns: &str,
    name: &str,
    workflow: &str,
    connector: &str,
) -> anyhow::Result<()> {
    Api::<WorkflowRun>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &run_object(name, workflow, connector)?,
        )
        .await
        .with_context(|| format!("creating WorkflowRun {name}"))?;
    Ok(())
}

/// Waits until the run has ended; returns it. A run that ends other than Completed is an error.
pub async fn wait_completed(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<WorkflowRun> {
    let api = Api::<WorkflowRun>::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        let run = api.get(name).await?;
        let st = run.status.clone().unwrap_or_default();
        match st.phase {
            Some(RunPhase::Completed) => return Ok(run),
            Some(p) if p.is_finished() => anyhow::bail!(
                "run {ns}/{name} ended {p:?}: {}",
                st.message.unwrap_or_default()
            ),
            _ => {}
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "run {ns}/{name} not done after {timeout:?} (phase {:?}, {})",
            st.phase,
            st.message.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the namespace's runs while its controller still runs (their finalizer needs it), so
/// that the bench leaves no run behind, then the namespace (which a control plane without a
/// namespace controller keeps as Terminating).
pub async fn cleanup(client: &Client, ns: &str) -> anyhow::Result<()> {
    let api = Api::<WorkflowRun>::namespaced(client.clone(), ns);
    api.delete_collection(&DeleteParams::background(), &ListParams::default())
        .await?;
    let start = Instant::now();
    while !api.list(&ListParams::default()).await?.items.is_empty() {
        if start.elapsed() > Duration::from_secs(180) {
            eprintln!("[bench] runs in {ns} still there after 180 s; leaving them");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::background())
        .await?;
    Ok(())
}

/// `kubectl …`: stdout, or an error with its stderr.
pub fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .context("running kubectl (from the test environment's PATH)")?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A ServiceAccount `name` in `ns` that may get, list and patch WorkflowRuns there; its token.
pub fn reader_token(ns: &str, name: &str) -> anyhow::Result<String> {
    kubectl(&["-n", ns, "create", "serviceaccount", name])?;
    kubectl(&[
        "-n",
        ns,
        "create",
        "role",
        name,
        "--verb=get,list,patch",
        "--resource=workflowruns.devset.io",
    ])?;
    kubectl(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        name,
        &format!("--role={name}"),
        &format!("--serviceaccount={ns}:{name}"),
    ])?;
    Ok(
        kubectl(&["-n", ns, "create", "token", name, "--duration=2h"])?
            .trim()
            .to_owned(),
    )
}

/// The write verbs of `apiserver_request_total`.
pub const WRITES: &[&str] = &[
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];
/// Its read verbs (watches are counted apart, as long-running requests).
pub const READS: &[&str] = &["GET", "LIST"];

/// Requests with `verbs` the API server counted (`apiserver_request_total`), by
/// `resource[/subresource] VERB`, for the resources of `groups` ("" is the core group).
pub fn apiserver_requests(
    groups: &[&str],
    verbs: &[&str],
) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = kubectl(&["get", "--raw", "/metrics"])?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let verb = label("verb");
        if !verbs.contains(&verb.as_str()) || !groups.contains(&label("group").as_str()) {
            continue;
        }
        let mut key = label("resource");
        let sub = label("subresource");
        if !sub.is_empty() {
            key = format!("{key}/{sub}");
        }
        *out.entry(format!("{key} {verb}")).or_default() += value.trim().parse::<f64>()?;
    }
    Ok(out)
}

/// `after - before`, leaving out what did not change.
pub fn diff(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}
