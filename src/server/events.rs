//! A run's event log: `GET …/workflowruns/{name}/events` (SSE, JSON pages or CSV) and
//! `GET …/workflowruns/{name}/events/{seq}`.

use super::{
    AppState, S,
    auth::Verb,
    error::ApiError,
    hub::Frame,
    routes::{cached_run, check_namespace, not_found},
};
use crate::{
    api::RunPhase,
    events::{Event, RunKey, StoredEvent},
};
use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{sync::Arc, time::Duration};
use tokio::sync::mpsc;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Events of a JSON page by default, and at most.
const PAGE_DEFAULT: u32 = 100;
pub(super) const PAGE_MAX: u32 = 1_000;
/// How often an idle SSE stream gets a comment.
const HEARTBEAT: Duration = Duration::from_secs(15);

pub(super) fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(event))
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Events after this sequence number.
    after: Option<u64>,
    /// At most this many events in a JSON page (default 100, at most 1000).
    limit: Option<u32>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// A page of a run's events.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    /// The events, oldest first.
    #[schemars(with = "Vec<Event>")]
    pub items: Vec<Box<RawValue>>,
    /// The sequence number to pass as `after` for the next page.
    pub next: u64,
    /// More events are stored after this page.
    pub more: bool,
    /// The run's log has ended (its terminal event is stored) and this page reaches it.
    pub complete: bool,
}

/// Authorizes a read of `name`'s events and checks that the run or its log exists.
pub(super) async fn readable(
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

/// The run's event log (needs `get`): with `Accept: text/event-stream` an SSE stream (replay
/// after `Last-Event-ID` or `after`, then live, until the run's last event), else a JSON page
/// or, with `format=csv`, all of it as CSV.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/workflowruns/{name}/events",
    tag = "events",
    params(super::runs::RunPath, EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume an SSE stream after this event")),
    responses((status = 200, description = "A page, a CSV export or an SSE stream", content(
            (EventPage = "application/json"), (String = "text/csv"), (String = "text/event-stream"))),
        (status = 400, description = "A bad query or Last-Event-ID"),
        (status = 403, description = "No `get` on the run"),
        (status = 404, description = "No such run or log")))]
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

/// One event with its full headers and payload (needs `get`).
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/workflowruns/{name}/events/{seq}",
    tag = "events",
    params(super::runs::RunPath, ("seq" = u64, Path, description = "The event's sequence number")),
    responses((status = 200, body = Event),
        (status = 400, description = "seq is not a number"),
        (status = 403, description = "No `get` on the run"),
        (status = 404, description = "No such run or event")))]
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

pub(super) const CSV_COLUMNS: [&str; 18] = [
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

pub(super) fn csv_row(e: &Event) -> [String; 18] {
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
