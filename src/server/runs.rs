//! Runs: `GET /api/v1/namespaces/{ns}/workflowruns` (list, from the watch cache),
//! `GET …/workflowruns/{name}`, `DELETE …/workflowruns/{name}` and
//! `POST …/workflowruns/{name}/stop`.

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
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
};
use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Runs of a list page by default, and at most.
const RUNS_DEFAULT: usize = 100;
const RUNS_MAX: usize = 500;

pub(super) fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_runs))
        .routes(routes!(get_run, delete_run))
        .routes(routes!(stop_run))
}

/// The path parameters of one run.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the OpenAPI document only
pub(super) struct RunPath {
    /// The run's namespace.
    namespace: String,
    /// The run's name.
    name: String,
}

/// One run, as the API shows it.
#[derive(Serialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The object's `metadata.resourceVersion`: of two summaries of one run, the one with the
    /// greater value is the newer (the page keeps it, whichever answer arrives last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
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
    /// Who or what started it (`status.triggeredBy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triggered_by: Option<String>,
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

pub(super) fn summary(run: &WorkflowRun) -> RunSummary {
    let st = run.status.clone().unwrap_or_default();
    let (workflow, connector, _) = run.started_with();
    let time = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map(|t| t.0.to_string())
    };
    RunSummary {
        namespace: run.namespace().unwrap_or_default(),
        name: run.name_any(),
        uid: run.uid(),
        resource_version: run.resource_version(),
        workflow,
        connector,
        phase: st.phase.unwrap_or_default(),
        reason: st.reason,
        message: st.message,
        progress: st.progress,
        messages_published: st.messages_published,
        triggered_by: st.triggered_by,
        stop: run.spec.stop,
        created_at: time(run.metadata.creation_timestamp.as_ref()),
        started_at: time(st.started_at.as_ref()),
        completed_at: time(st.completed_at.as_ref()),
        stages: st.stages,
        events: None,
    }
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only runs in this phase.
    phase: Option<String>,
    /// Only runs of this Workflow.
    workflow: Option<String>,
    /// Only runs created at or after this time (RFC 3339).
    since: Option<String>,
    /// Only runs created before this time (RFC 3339).
    until: Option<String>,
    /// Only runs started by this user or thing (`status.triggeredBy`, e.g. `alice`,
    /// `schedule/nightly`).
    #[serde(rename = "triggeredBy")]
    triggered_by: Option<String>,
    /// At most this many runs (default 100, at most 500).
    limit: Option<usize>,
    /// The `continue` of the previous page.
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

/// Lists runs, newest first, from the watch cache (needs `list`).
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/workflowruns", tag = "runs",
    params(("namespace" = String, Path, description = "The namespace"), ListQuery),
    responses((status = 200, body = RunList), (status = 400, description = "A bad filter"),
        (status = 403, description = "No `list` on workflowruns"),
        (status = 404, description = "A namespace this API does not serve")))]
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
            q.triggered_by
                .as_ref()
                .is_none_or(|t| r.status.as_ref().and_then(|s| s.triggered_by.as_ref()) == Some(t))
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

/// One run with a summary of its event log (needs `get`).
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/workflowruns/{name}", tag = "runs",
    params(RunPath),
    responses((status = 200, body = RunSummary),
        (status = 403, description = "No `get` on the run"),
        (status = 404, description = "No such run")))]
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

/// Asks a run to stop (`spec.stop: true`; needs `patch`).
#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/workflowruns/{name}/stop",
    tag = "runs", params(RunPath),
    responses((status = 202, body = RunSummary, description = "The stop is asked"),
        (status = 403, description = "No `patch` on the run"),
        (status = 404, description = "No such run"),
        (status = 409, description = "The run has already finished")))]
async fn stop_run(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<RunSummary>), ApiError> {
    let caller = state
        .auth
        .check(&headers, &ns, Verb::Patch, Some(&name))
        .await?;
    let run = stop(&state, &ns, &name).await?;
    tracing::info!(namespace = %ns, name = %name, caller = caller.name(), "stop requested through the API");
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// Deletes a run (needs `delete`). Its finalizer stops it if it is in flight and removes its
/// event log; until then the run shows `deletionTimestamp` to `kubectl`.
#[utoipa::path(delete, path = "/api/v1/namespaces/{namespace}/workflowruns/{name}",
    tag = "runs", params(RunPath),
    responses((status = 200, body = RunSummary, description = "The deletion is under way"),
        (status = 403, description = "No `delete` on the run"),
        (status = 404, description = "No such run")))]
async fn delete_run(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<RunSummary>, ApiError> {
    let caller = state
        .auth
        .check(&headers, &ns, Verb::Delete, Some(&name))
        .await?;
    let run = delete(&state, &ns, &name).await?;
    tracing::info!(namespace = %ns, name = %name, caller = caller.name(), "run deleted through the API");
    Ok(Json(run))
}

/// Deletes one run once the caller is authorized: 404 when it does not exist.
pub(super) async fn delete(state: &AppState, ns: &str, name: &str) -> Result<RunSummary, ApiError> {
    check_namespace(state, ns)?;
    let api: Api<WorkflowRun> = Api::namespaced(state.client.clone(), ns);
    let run = api
        .delete(name, &DeleteParams::background())
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => not_found(ns, name),
            e => ApiError::unavailable(format!("deleting the run: {e}")),
        })?;
    Ok(run.either(|r| summary(&r), |_| RunSummary::gone(ns, name)))
}

impl RunSummary {
    /// A run deleted at once (it had no finalizer).
    fn gone(ns: &str, name: &str) -> RunSummary {
        RunSummary {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            uid: None,
            resource_version: None,
            workflow: String::new(),
            connector: String::new(),
            phase: RunPhase::default(),
            reason: Some("Deleted".into()),
            message: None,
            progress: None,
            messages_published: None,
            triggered_by: None,
            stop: false,
            created_at: None,
            started_at: None,
            completed_at: None,
            stages: Vec::new(),
            events: None,
        }
    }
}

/// Asks one run to stop once the caller is authorized: 404 when it does not exist, 409 when
/// it has finished; a run already stopping answers as it is.
pub(super) async fn stop(state: &AppState, ns: &str, name: &str) -> Result<RunSummary, ApiError> {
    check_namespace(state, ns)?;
    let (ns, name) = (ns.to_owned(), name.to_owned());
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
        return Ok(summary(&run));
    }
    let patch = serde_json::json!({ "spec": { "stop": true } });
    let run = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => not_found(&ns, &name),
            e => ApiError::unavailable(format!("setting spec.stop: {e}")),
        })?;
    Ok(summary(&run))
}
