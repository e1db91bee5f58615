//! Runs: `GET /api/v1/namespaces/{ns}/workflowruns` (list, from the watch cache),
//! `GET …/workflowruns/{name}` and `POST …/workflowruns/{name}/stop`.

use super::{
    AppState, S,
    auth::Verb,
    error::ApiError,
    routes::{cached_run, check_namespace, not_found},
};
use crate::{
    api::{RunPhase, StageStatus, WorkflowRun},
    events::RunKey,
};
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Runs of a list page by default, and at most.
const RUNS_DEFAULT: usize = 100;
const RUNS_MAX: usize = 500;

pub(super) fn router() -> Router<Arc<AppState>> {
    let base = "/api/v1/namespaces/{namespace}/workflowruns";
    Router::new()
        .route(base, get(list_runs))
        .route(&format!("{base}/{{name}}"), get(get_run))
        .route(&format!("{base}/{{name}}/stop"), post(stop_run))
}

/// One run, as the API shows it.
#[derive(Serialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The Workflow it runs.
    pub workflow: String,
    /// Its default BrokerConnector.
    pub connector: String,
    pub phase: RunPhase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Stages done of all, e.g. `2/3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_published: Option<i64>,
    /// A stop was asked (`spec.stop`).
    pub stop: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub stages: Vec<StageStatus>,
    /// The run's event log (single-run answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<LogSummary>,
}

/// What the event log holds of a run.
#[derive(Serialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogSummary {
    /// The number of the last event (0: none yet).
    pub last_seq: u64,
    /// `message.published` events kept.
    pub stored_message_events: u64,
    /// `message.published` events beyond the per-run cap: counted, not kept.
    pub dropped_message_events: u64,
    /// The events expired under the retention policy.
    pub expired: bool,
}

/// A page of runs, newest first.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RunList {
    pub items: Vec<RunSummary>,
    /// Pass as `continue` for the next page; absent on the last page.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_: Option<String>,
}

fn summary(run: &WorkflowRun) -> RunSummary {
    let st = run.status.clone().unwrap_or_default();
    let time = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map(|t| t.0.to_string())
    };
    RunSummary {
        namespace: run.namespace().unwrap_or_default(),
        name: run.name_any(),
        uid: run.uid(),
        workflow: run.spec.workflow_ref.name.clone(),
        connector: run.spec.connector_ref.name.clone(),
        phase: st.phase.unwrap_or_default(),
        reason: st.reason,
        message: st.message,
        progress: st.progress,
        messages_published: st.messages_published,
        stop: run.spec.stop,
        created_at: time(run.metadata.creation_timestamp.as_ref()),
        started_at: time(st.started_at.as_ref()),
        completed_at: time(st.completed_at.as_ref()),
        stages: st.stages,
        events: None,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only runs in this phase.
    phase: Option<String>,
    /// Only runs of this Workflow.
    workflow: Option<String>,
    /// Only runs created at or after this time (RFC 3339).
    since: Option<String>,
    /// Only runs created before this time (RFC 3339).
    until: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

fn parse_time(field: &str, v: &Option<String>) -> Result<Option<Timestamp>, ApiError> {
    v.as_deref()
        .map(|s| {
            s.parse::<Timestamp>().map_err(|e| {
                ApiError::bad_request(format!(
                    "{field}={s:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z: {e}"
                ))
            })
        })
        .transpose()
}

fn parse_phase(v: &str) -> Result<RunPhase, ApiError> {
    serde_json::from_value(serde_json::Value::String(v.to_owned())).map_err(|_| {
        ApiError::bad_request(format!(
            "phase={v:?} is not a run phase: Pending, Running, Stopping, Stopped, Completed or Failed"
        ))
    })
}

/// The sort key of the run list: newest first, then by name. The `continue` token is the last
/// item's key: `SECONDS:NAME`.
fn list_key(run: &WorkflowRun) -> (i64, String) {
    (
        run.metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        run.name_any(),
    )
}

async fn list_runs(
    State(state): S,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<RunList>, ApiError> {
    state.auth.check(&headers, &ns, Verb::List, None).await?;
    check_namespace(&state, &ns)?;
    let phase = q.phase.as_deref().map(parse_phase).transpose()?;
    let since = parse_time("since", &q.since)?;
    let until = parse_time("until", &q.until)?;
    let limit = q.limit.unwrap_or(RUNS_DEFAULT).clamp(1, RUNS_MAX);
    let after = q
        .continue_
        .as_deref()
        .map(|c| {
            c.split_once(':')
                .and_then(|(s, n)| Some((s.parse::<i64>().ok()?, n.to_owned())))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("continue={c:?} is not a token this API gave"))
                })
        })
        .transpose()?;
    let mut runs: Vec<Arc<WorkflowRun>> = state
        .runs
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
        .filter(|r| {
            phase.is_none_or(|p| r.status.as_ref().and_then(|s| s.phase).unwrap_or_default() == p)
        })
        .filter(|r| {
            q.workflow
                .as_ref()
                .is_none_or(|w| &r.spec.workflow_ref.name == w)
        })
        .filter(|r| {
            let created = r.metadata.creation_timestamp.as_ref().map(|t| t.0);
            since.is_none_or(|s| created.is_some_and(|c| c >= s))
                && until.is_none_or(|u| created.is_some_and(|c| c < u))
        })
        .collect();
    // Newest first; ties by name.
    runs.sort_by(|a, b| {
        let (ta, na) = list_key(a);
        let (tb, nb) = list_key(b);
        tb.cmp(&ta).then(na.cmp(&nb))
    });
    let start = match &after {
        Some((t, n)) => runs
            .iter()
            .position(|r| {
                let (rt, rn) = list_key(r);
                rt < *t || (rt == *t && rn > *n)
            })
            .unwrap_or(runs.len()),
        None => 0,
    };
    let page: Vec<_> = runs.iter().skip(start).take(limit).collect();
    let continue_ = (start + page.len() < runs.len())
        .then(|| {
            page.last().map(|r| {
                let (t, n) = list_key(r);
                format!("{t}:{n}")
            })
        })
        .flatten();
    Ok(Json(RunList {
        items: page.into_iter().map(|r| summary(r)).collect(),
        continue_,
    }))
}

async fn get_run(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<RunSummary>, ApiError> {
    state
        .auth
        .check(&headers, &ns, Verb::Get, Some(&name))
        .await?;
    check_namespace(&state, &ns)?;
    let run = cached_run(&state, &ns, &name).ok_or_else(|| not_found(&ns, &name))?;
    let mut s = summary(&run);
    let log = state
        .hub
        .store()
        .log(&RunKey::new(&ns, &name))
        .await?
        .unwrap_or_default();
    s.events = Some(LogSummary {
        last_seq: log.last_seq,
        stored_message_events: log.message_events,
        dropped_message_events: log.dropped_message_events,
        expired: log.expired,
    });
    Ok(Json(s))
}

async fn stop_run(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<RunSummary>), ApiError> {
    let caller = state
        .auth
        .check(&headers, &ns, Verb::Patch, Some(&name))
        .await?;
    check_namespace(&state, &ns)?;
    let api: Api<WorkflowRun> = Api::namespaced(state.client.clone(), &ns);
    let run = api
        .get_opt(&name)
        .await
        .map_err(|e| ApiError::unavailable(format!("reading the run: {e}")))?
        .ok_or_else(|| not_found(&ns, &name))?;
    let phase = run
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or_default();
    if phase.is_finished() {
        return Err(ApiError::conflict(format!(
            "workflowrun {name:?} is already {phase:?}; there is nothing to stop"
        )));
    }
    if run.spec.stop {
        return Ok((StatusCode::ACCEPTED, Json(summary(&run))));
    }
    let patch = serde_json::json!({ "spec": { "stop": true } });
    let run = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => not_found(&ns, &name),
            e => ApiError::unavailable(format!("setting spec.stop: {e}")),
        })?;
    tracing::info!(namespace = %ns, name = %name, caller = caller.name(), "stop requested through the API");
    Ok((StatusCode::ACCEPTED, Json(summary(&run))))
}
