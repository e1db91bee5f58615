//! The routes of `devset api`.

use super::{AppState, approval, auth::Verb, error::ApiError, hub::Frame, openapi};
use crate::{
    api::{RunPhase, StageStatus, WorkflowRun},
    events::{Event, RunKey, StoredEvent},
};
use axum::{
    Json, Router,
    body::Body,
    extract::{MatchedPath, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::StreamExt;
use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::reflector::ObjectRef,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{sync::Arc, time::Duration};
use tokio::sync::mpsc;

type S = State<Arc<AppState>>;

/// Events of a JSON page by default, and at most.
const PAGE_DEFAULT: u32 = 100;
const PAGE_MAX: u32 = 1_000;
/// Runs of a list page by default, and at most.
const RUNS_DEFAULT: usize = 100;
const RUNS_MAX: usize = 500;
/// How often an idle SSE stream gets a comment.
const HEARTBEAT: Duration = Duration::from_secs(15);

pub(super) fn router(state: Arc<AppState>) -> Router {
    let base = "/api/v1/namespaces/{namespace}/workflowruns";
    Router::new()
        .route(base, get(list_runs))
        .route(&format!("{base}/{{name}}"), get(get_run))
        .route(&format!("{base}/{{name}}/stop"), post(stop_run))
        .route(
            &format!("{base}/{{name}}/stages/{{stage}}/approve"),
            post(approval::approve),
        )
        .route(
            &format!("{base}/{{name}}/stages/{{stage}}/reject"),
            post(approval::reject),
        )
        .route(&format!("{base}/{{name}}/events"), get(events))
        .route(&format!("{base}/{{name}}/events/{{seq}}"), get(event))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(State(state): S, req: Request, next: Next) -> Response {
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

// ---------------------------------------------------------------------------------------------
// Runs

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

pub(super) fn check_namespace(state: &AppState, ns: &str) -> Result<(), ApiError> {
    if crate::watch::serves(&state.namespaces, ns) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "this API serves the namespaces {:?} only",
            state.namespaces
        )))
    }
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

fn cached_run(state: &AppState, ns: &str, name: &str) -> Option<Arc<WorkflowRun>> {
    state.runs.get(&ObjectRef::new(name).within(ns))
}

pub(super) fn not_found(ns: &str, name: &str) -> ApiError {
    ApiError::not_found(format!(
        "workflowruns.devset.io {name:?} not found in the namespace {ns:?}"
    ))
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

// ---------------------------------------------------------------------------------------------
// Events

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Events after this sequence number.
    after: Option<u64>,
    /// At most this many events (JSON pages).
    limit: Option<u32>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// A page of a run's events.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub items: Vec<Box<RawValue>>,
    /// The sequence number to pass as `after` for the next page.
    pub next: u64,
    /// More events are stored after this page.
    pub more: bool,
    /// The run's log has ended (its terminal event is stored) and this page reaches it.
    pub complete: bool,
}

/// Authorizes a read of `name`'s events and checks that the run or its log exists.
async fn readable(
    state: &AppState,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
) -> Result<RunKey, ApiError> {
    state.auth.check(headers, ns, Verb::Get, Some(name)).await?;
    check_namespace(state, ns)?;
    let key = RunKey::new(ns, name);
    if cached_run(state, ns, name).is_none() && state.hub.store().log(&key).await?.is_none() {
        return Err(not_found(ns, name));
    }
    Ok(key)
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

async fn events(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = readable(&state, &headers, &ns, &name).await?;
    // A reconnecting EventSource says where it was with Last-Event-ID.
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Last-Event-ID must be an event's sequence number")
                })?,
        ),
        None => None,
    };
    let after = last_event_id.or(q.after).unwrap_or(0);
    if wants_sse(&headers) {
        // A run that ended without a log (it finished before the log existed) has nothing to
        // stream: end at once rather than wait for a terminal event that never comes.
        let ended = cached_run(&state, &ns, &name)
            .and_then(|r| r.status.as_ref()?.phase)
            .is_some_and(RunPhase::is_finished);
        if ended && state.hub.store().log(&key).await?.is_none() {
            return Ok(Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::empty())
                .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response()));
        }
        return Ok(stream(state, key, after));
    }
    match q.format.as_deref().unwrap_or("json") {
        "json" => page(&state, &key, after, q.limit).await,
        "csv" => Ok(csv_export(state, key, after)),
        f => Err(ApiError::bad_request(format!(
            "format={f:?} is not known: use json or csv (or Accept: text/event-stream)"
        ))),
    }
}

async fn page(
    state: &AppState,
    key: &RunKey,
    after: u64,
    limit: Option<u32>,
) -> Result<Response, ApiError> {
    let limit = limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let store = state.hub.store();
    // One more than asked tells whether more follow.
    let mut events = store.events(key, after, limit + 1).await?;
    let more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let next = events.last().map_or(after, |e| e.seq);
    let complete = !more && events.last().is_some_and(StoredEvent::is_terminal)
        || (!more
            && events.is_empty()
            && store
                .log(key)
                .await?
                .is_some_and(|l| l.final_phase.is_some() && after >= l.last_seq));
    let items = events
        .iter()
        .map(|e| RawValue::from_string(e.data.to_string()))
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::internal(format!("a stored event is not JSON: {e}")))?;
    Ok(Json(EventPage {
        items,
        next,
        more,
        complete,
    })
    .into_response())
}

async fn event(
    State(state): S,
    Path((ns, name, seq)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = readable(&state, &headers, &ns, &name).await?;
    let seq: u64 = seq.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{seq:?} is not an event sequence number (1, 2, 3, …)"
        ))
    })?;
    let ev = state
        .hub
        .store()
        .event(&key, seq)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {name:?} has no event {seq}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        ev.data.to_string(),
    )
        .into_response())
}

/// Open streams, counted for `/metrics` while alive.
struct StreamGuard(Arc<AppState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.metrics.open_streams.dec();
    }
}

/// An SSE stream of the run's log: the frames the hub renders once for every stream, and a
/// heartbeat comment on idle streams.
fn stream(state: Arc<AppState>, key: RunKey, after: u64) -> Response {
    let (tx, rx) = mpsc::channel::<Arc<Frame>>(256);
    let hub = state.hub.clone();
    let run = key.clone();
    tokio::spawn(async move {
        if let Err(e) = hub.follow(run.clone(), after, tx).await {
            tracing::warn!(run = %run, error = %e, "an event stream failed");
        }
    });
    state.metrics.open_streams.inc();
    let guard = StreamGuard(state.clone());
    let shutdown = state.shutdown.clone();
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let frames = futures::stream::unfold(
        (rx, guard, heartbeat),
        |(mut rx, guard, mut heartbeat)| async move {
            let bytes = tokio::select! {
                f = rx.recv() => {
                    let f = f?;
                    let m = &guard.0.metrics;
                    m.events_sent.inc();
                    let lag_us = Timestamp::now().as_microsecond() - f.time_us;
                    m.lag.observe(lag_us.max(0) as f64 / 1e6);
                    heartbeat.reset();
                    f.bytes.clone()
                }
                _ = heartbeat.tick() => axum::body::Bytes::from_static(b": heartbeat\n\n"),
            };
            Some((
                Ok::<_, std::convert::Infallible>(bytes),
                (rx, guard, heartbeat),
            ))
        },
    )
    .take_until(shutdown.cancelled_owned());
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        // Proxies must not buffer a live stream.
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(frames))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

const CSV_COLUMNS: [&str; 18] = [
    "seq",
    "time",
    "type",
    "stage",
    "attempt",
    "phase",
    "reason",
    "message",
    "connector",
    "target",
    "sequence",
    "partition",
    "offset",
    "deliveryTag",
    "key",
    "headers",
    "payload",
    "payloadTruncated",
];

fn csv_row(e: &Event) -> [String; 18] {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let target = e.target.as_ref();
    [
        e.seq.to_string(),
        e.time.to_string(),
        e.kind.clone(),
        opt(e.stage.clone()),
        num(e.attempt.map(i64::from)),
        opt(e.phase.map(|p| format!("{p:?}"))),
        opt(e.reason.clone()),
        opt(e.message.clone()),
        opt(target.map(|t| t.connector.clone())),
        opt(target.map(|t| {
            let s = t.to_string();
            s.rsplit_once(" via ")
                .map_or(s.clone(), |(a, _)| a.to_owned())
        })),
        num(e.sequence.map(|n| n as i64)),
        num(e.partition.map(i64::from)),
        num(e.offset),
        num(e.delivery_tag.map(|n| n as i64)),
        opt(e.key.clone()),
        e.headers
            .as_ref()
            .map(|h| serde_json::to_string(h).unwrap_or_default())
            .unwrap_or_default(),
        opt(e.payload.clone()),
        if e.payload_truncated { "true" } else { "" }.to_owned(),
    ]
}

/// The whole log after `after` as CSV, read from the store a page at a time.
fn csv_export(state: Arc<AppState>, key: RunKey, after: u64) -> Response {
    let filename = format!("{}-{}-events.csv", key.namespace, key.name);
    let header_line = {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record(CSV_COLUMNS);
        w.into_inner().unwrap_or_default()
    };
    let rows = futures::stream::unfold(Some(after), move |cursor| {
        let state = state.clone();
        let key = key.clone();
        async move {
            let cursor = cursor?;
            match state.hub.store().events(&key, cursor, PAGE_MAX).await {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let next = page.last().map(|e| e.seq);
                    let mut w = csv::Writer::from_writer(Vec::new());
                    for ev in &page {
                        match ev.event() {
                            Ok(e) => {
                                let _ = w.write_record(csv_row(&e));
                            }
                            Err(e) => return Some((Err(std::io::Error::other(e)), None)),
                        }
                    }
                    let bytes = w.into_inner().unwrap_or_default();
                    let next = (page.len() == PAGE_MAX as usize).then_some(next).flatten();
                    Some((Ok(bytes), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        }
    });
    let body =
        futures::stream::once(async move { Ok::<_, std::io::Error>(header_line) }).chain(rows);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        )
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}
