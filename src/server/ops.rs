//! Operations: `/metrics` (Prometheus), `/healthz`, `/readyz` and `/api/v1/openapi.json`, and
//! the request counter every route passes through.

use super::{AppState, S};
use axum::{
    Extension,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

pub(super) fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The OpenAPI document, made once when the router is (see `openapi.rs`).
#[derive(Clone)]
pub(super) struct Document(pub axum::body::Bytes);

/// Counts every answer by route and status code (middleware).
pub(super) async fn count_requests(State(state): S, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let res = next.run(req).await;
    state
        .metrics
        .requests
        .get_or_create(&super::metrics::RequestLabels {
            route,
            code: res.status().as_u16(),
        })
        .inc();
    res
}

/// Prometheus metrics (no authentication).
#[utoipa::path(get, path = "/metrics", tag = "ops", security(()),
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn metrics(State(state): S) -> impl IntoResponse {
    state
        .metrics
        .watched_runs
        .set(state.hub.watched_runs() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Liveness (no authentication).
#[utoipa::path(get, path = "/healthz", tag = "ops", security(()),
    responses((status = 200, description = "ok", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: once the run cache has listed (no authentication).
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    responses((status = 200, description = "ok", body = String, content_type = "text/plain"),
        (status = 503, description = "Starting", body = String, content_type = "text/plain")))]
async fn readyz(State(state): S) -> impl IntoResponse {
    // Ready once the run cache has listed (an empty cluster answers too).
    if state.runs.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// This document (no authentication).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "ops", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API",
        content_type = "application/json")))]
async fn openapi_json(Extension(doc): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}
