//! Schedules: `GET /api/v1/namespaces/{ns}/workflowschedules` (`list` on workflowschedules) and
//! `GET …/workflowschedules/{name}` (`get`) answer each schedule's summary: its times, policy,
//! `Ready` condition and active runs.
//!
//! `POST /api/v1/namespaces/{ns}/workflowschedules/{name}/fire` starts a run of the
//! schedule now, outside its times (also when it is suspended, and whatever its concurrency
//! policy: a person asked for it). Authorized as `create` on `workflowruns`. The run is the
//! schedule's `runTemplate`, named `SCHEDULE-manual-XXXXX`, labelled `devset.io/schedule=NAME`,
//! owned by the schedule (so its history limits apply), with the caller's user name in
//! `devset.io/triggered-by`. Answers: 401, 403 without `create` on workflowruns, 404 for an
//! unserved namespace or a schedule that does not exist, 400 when the API server refuses the
//! run (a template it does not accept); else 201 with the new run and `Location`.
//!
//! `POST …/workflowschedules/{name}/suspend` and `…/resume` set `spec.suspend` to true or
//! false (`patch` on workflowschedules) and answer 200 with the schedule's summary.

use super::{AppState, S, auth::Verb, error::ApiError, routes::check_namespace};
use crate::{
    api::{ConcurrencyPolicy, WorkflowRun, WorkflowSchedule, conditions::READY},
    controller::conditions,
};
use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde::Serialize;
use std::sync::Arc;

pub(super) fn router() -> Router<Arc<AppState>> {
    let base = "/api/v1/namespaces/{namespace}/workflowschedules";
    Router::new()
        .route(base, get(list))
        .route(&format!("{base}/{{name}}"), get(get_one))
        .route(&format!("{base}/{{name}}/fire"), post(fire))
        .route(&format!("{base}/{{name}}/suspend"), post(suspend))
        .route(&format!("{base}/{{name}}/resume"), post(resume))
}

/// One schedule, as the API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSummary {
    pub namespace: String,
    pub name: String,
    pub schedule: String,
    pub time_zone: String,
    pub suspend: bool,
    pub concurrency_policy: ConcurrencyPolicy,
    pub workflow: String,
    pub connector: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run_name: Option<String>,
    /// The runs of the schedule that have not finished.
    pub active: Vec<String>,
    /// The `Ready` condition: `True`/`False`, its reason and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadySummary>,
}

#[derive(Serialize)]
pub struct ReadySummary {
    pub status: String,
    pub reason: String,
    pub message: String,
}

fn summary(s: &WorkflowSchedule) -> ScheduleSummary {
    let status = s.status.clone().unwrap_or_default();
    let spec = &s.spec;
    ScheduleSummary {
        namespace: s.namespace().unwrap_or_default(),
        name: s.name_any(),
        schedule: spec.schedule.clone(),
        time_zone: spec
            .time_zone
            .clone()
            .filter(|z| !z.is_empty())
            .unwrap_or_else(|| crate::schedule::DEFAULT_TIME_ZONE.into()),
        suspend: spec.suspend,
        concurrency_policy: spec.concurrency_policy,
        workflow: spec.run_template.spec.workflow_ref.name.clone(),
        connector: spec.run_template.spec.connector_ref.name.clone(),
        next_schedule_time: status.next_schedule_time.map(|t| t.0),
        last_schedule_time: status.last_schedule_time.map(|t| t.0),
        last_run_name: status.last_run_name,
        active: status.active.into_iter().filter_map(|r| r.name).collect(),
        ready: conditions::get(&status.conditions, READY).map(|c| ReadySummary {
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        }),
    }
}

fn schedules(state: &AppState, ns: &str) -> Api<WorkflowSchedule> {
    Api::namespaced(state.client.clone(), ns)
}

fn unavailable(e: kube::Error) -> ApiError {
    ApiError::unavailable(format!("reading WorkflowSchedules: {e}"))
}

fn not_found(ns: &str, name: &str) -> ApiError {
    ApiError::not_found(format!(
        "workflowschedules.devset.io {name:?} not found in the namespace {ns:?}"
    ))
}

/// The schedules of a namespace, by name.
#[derive(Serialize)]
pub struct ScheduleList {
    pub items: Vec<ScheduleSummary>,
}

#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/workflowschedules", tag = "schedules",
    params(("namespace" = String, Path, description = "The namespace")),
    responses((status = 200, description = "{\"items\": [schedule summaries]}", content_type = "application/json"),
        (status = 403, description = "No `list` on workflowschedules"),
        (status = 404, description = "A namespace this API does not serve")))]
async fn list(
    State(state): S,
    Path(ns): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ScheduleList>, ApiError> {
    state
        .auth
        .check(&headers, &ns, Verb::ListSchedules, None)
        .await?;
    check_namespace(&state, &ns)?;
    let list = schedules(&state, &ns)
        .list(&ListParams::default())
        .await
        .map_err(unavailable)?;
    let mut items: Vec<_> = list.items.iter().map(summary).collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(ScheduleList { items }))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/workflowschedules/{name}", tag = "schedules",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The schedule")),
    responses((status = 200, description = "The schedule's summary: times, policy, Ready, active runs", content_type = "application/json"),
        (status = 403, description = "No `get` on the schedule"),
        (status = 404, description = "No such schedule")))]
async fn get_one(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ScheduleSummary>, ApiError> {
    state
        .auth
        .check(&headers, &ns, Verb::GetSchedule, Some(&name))
        .await?;
    check_namespace(&state, &ns)?;
    let s = schedules(&state, &ns)
        .get_opt(&name)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(&ns, &name))?;
    Ok(Json(summary(&s)))
}

#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/workflowschedules/{name}/fire", tag = "schedules",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The schedule")),
    responses((status = 201, description = "The new WorkflowRun", content_type = "application/json"),
        (status = 400, description = "The API server refuses the run"),
        (status = 403, description = "No `create` on workflowruns"),
        (status = 404, description = "No such schedule")))]
async fn fire(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.auth.check(&headers, &ns, Verb::Create, None).await?;
    check_namespace(&state, &ns)?;
    let schedule = schedules(&state, &ns)
        .get_opt(&name)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(&ns, &name))?;
    let run = schedule.new_run(None, None, caller.name());
    let pp = PostParams {
        field_manager: Some("devset-api".into()),
        ..Default::default()
    };
    let run = Api::<WorkflowRun>::namespaced(state.client.clone(), &ns)
        .create(&pp, &run)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 403 => {
                ApiError::forbidden(format!("devset api may not create the run: {}", s.message))
            }
            kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
                ApiError::bad_request(format!(
                    "the API server refused the run of the schedule {name:?}: {}",
                    s.message
                ))
            }
            e => ApiError::unavailable(format!("creating the run: {e}")),
        })?;
    tracing::info!(namespace = %ns, schedule = %name, name = %run.name_any(), caller = caller.name(), "schedule fired through the API");
    let location = format!("/api/v1/namespaces/{ns}/workflowruns/{}", run.name_any());
    let mut res = (StatusCode::CREATED, Json(run)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/workflowschedules/{name}/suspend", tag = "schedules",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The schedule")),
    responses((status = 200, description = "The schedule's summary, with suspend: true", content_type = "application/json"),
        (status = 403, description = "No `patch` on the schedule"),
        (status = 404, description = "No such schedule")))]
async fn suspend(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ScheduleSummary>, ApiError> {
    set_suspend(&state, &headers, &ns, &name, true).await
}

#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/workflowschedules/{name}/resume", tag = "schedules",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The schedule")),
    responses((status = 200, description = "The schedule's summary, with suspend: false", content_type = "application/json"),
        (status = 403, description = "No `patch` on the schedule"),
        (status = 404, description = "No such schedule")))]
async fn resume(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ScheduleSummary>, ApiError> {
    set_suspend(&state, &headers, &ns, &name, false).await
}

/// Sets `spec.suspend` of a schedule once the caller may patch it.
async fn set_suspend(
    state: &AppState,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
    suspend: bool,
) -> Result<Json<ScheduleSummary>, ApiError> {
    let caller = state
        .auth
        .check(headers, ns, Verb::PatchSchedule, Some(name))
        .await?;
    check_namespace(state, ns)?;
    let patch = serde_json::json!({ "spec": { "suspend": suspend } });
    let s = schedules(state, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => not_found(ns, name),
            kube::Error::Api(s) if s.code == 403 => ApiError::forbidden(format!(
                "devset api may not patch the schedule: {}",
                s.message
            )),
            e => ApiError::unavailable(format!("setting spec.suspend: {e}")),
        })?;
    tracing::info!(namespace = %ns, schedule = %name, suspend, caller = caller.name(), "schedule suspended or resumed through the API");
    Ok(Json(summary(&s)))
}
