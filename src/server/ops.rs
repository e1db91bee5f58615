//! Operations: `/metrics` (Prometheus), `/healthz`, `/readyz` and `/api/v1/openapi.json`, and
//! the request counter every route passes through.

use super::{AppState, S, openapi};
use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use std::sync::Arc;

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

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

async fn readyz(State(state): S) -> impl IntoResponse {
    // Ready once the run cache has listed (an empty cluster answers too).
    if state.runs.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn openapi_json() -> impl IntoResponse {
    Json(openapi::document())
}
