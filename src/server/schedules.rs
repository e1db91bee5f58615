//! Schedules: `POST /api/v1/namespaces/{ns}/workflowschedules/{name}/fire` starts a run of the
//! schedule now, outside its times (also when it is suspended, and whatever its concurrency
//! policy: a person asked for it). Authorized as `create` on `workflowruns`. The run is the
//! schedule's `runTemplate`, named `SCHEDULE-manual-XXXXX`, labelled `devset.io/schedule=NAME`,
//! owned by the schedule (so its history limits apply), with the caller's user name in
//! `devset.io/triggered-by`. Answers: 401, 403 without `create` on workflowruns, 404 for an
//! unserved namespace or a schedule that does not exist, 400 when the API server refuses the
//! run (a template it does not accept); else 201 with the new run and `Location`.

use super::{AppState, S, auth::Verb, error::ApiError, routes::check_namespace};
use crate::api::{WorkflowRun, WorkflowSchedule};
use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use kube::{Api, ResourceExt, api::PostParams};
use std::sync::Arc;

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new().route(
        "/api/v1/namespaces/{namespace}/workflowschedules/{name}/fire",
        post(fire),
    )
}

async fn fire(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.auth.check(&headers, &ns, Verb::Create, None).await?;
    check_namespace(&state, &ns)?;
    let schedule = Api::<WorkflowSchedule>::namespaced(state.client.clone(), &ns)
        .get_opt(&name)
        .await
        .map_err(|e| ApiError::unavailable(format!("reading the WorkflowSchedule: {e}")))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "workflowschedules.devset.io {name:?} not found in the namespace {ns:?}"
            ))
        })?;
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
