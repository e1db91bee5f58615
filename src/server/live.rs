//! Live runs: `GET /api/v1/namespaces/{ns}/workflowruns` (`list` on workflowruns there) and
//! `GET /api/v1/workflowruns` (all the namespaces this API serves: a cluster-wide `list`, or
//! `list` in each namespace of `--namespace`) with `Accept: text/event-stream` answer a stream
//! of the runs' changes, fed by the watch behind the run cache (no polling):
//!
//! 1. every current run as `event: ADDED` with `data:` the run's summary (the JSON the list
//!    route gives per item), newest first;
//! 2. `event: SYNCED` with `data: {}`;
//! 3. then live `ADDED`, `MODIFIED` and `DELETED` (the run's last summary), and a heartbeat
//!    comment every 15 s of quiet.
//!
//! When the watch lists again (after a lost connection to the API server) a stream sends a new
//! snapshot, ADDED… then SYNCED: a client rebuilds its list on each SYNCED. A stream that falls
//! [`BUFFER`] changes behind is closed; its client reconnects and gets a fresh snapshot.
//!
//! `GET /api/v1/namespaces/{ns}/workflowruns?name=RUN` with `Accept: text/event-stream` is the
//! same stream for that one run (`get` on it): the run page follows its status with it, from the
//! same watch as the run list, so it never misses a change the run's event log announced
//! before the watch delivered it.
//!
//! Without `Accept: text/event-stream` the namespaced route is the JSON list of `runs.rs` and
//! `GET /api/v1/workflowruns` answers every run served, newest first, in one `RunList`.

use super::{
    AppState, S,
    auth::Verb,
    error::ApiError,
    routes::check_namespace,
    runs::{RunList, summary},
};
use crate::api::WorkflowRun;
use axum::{
    Json,
    body::{Body, Bytes},
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use kube::{ResourceExt, runtime::watcher};
use serde_json::Value;
use std::{collections::HashSet, sync::Arc, time::Duration};
use tokio::sync::{broadcast, mpsc};
use utoipa_axum::{router::OpenApiRouter, routes};

/// The route of one namespace's runs (its JSON answer is in `runs.rs`).
pub(super) const NAMESPACED: &str = "/api/v1/namespaces/{namespace}/workflowruns";
/// Changes a stream may fall behind before it is closed.
pub const BUFFER: usize = 1_024;
/// How often an idle stream gets a comment.
const HEARTBEAT: Duration = Duration::from_secs(15);

pub(super) fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(all_runs))
}

/// A run's namespace and name.
type Key = (String, String);

/// What one stream follows: a namespace's runs (every served run when `ns` is `None`), or one
/// run of it.
#[derive(Clone, Debug, Default)]
struct Scope {
    ns: Option<String>,
    name: Option<String>,
}

impl Scope {
    fn holds(&self, ns: &str, name: &str) -> bool {
        self.ns.as_deref().is_none_or(|n| n == ns) && self.name.as_deref().is_none_or(|n| n == name)
    }
}

/// One change the watch saw, its summary rendered once for every stream.
#[derive(Debug)]
enum Change {
    /// Created or changed: `ADDED` for a stream that has not sent the run, else `MODIFIED`.
    Applied(Key, Bytes),
    Deleted(Key, Bytes),
    /// The watch listed again: streams send a fresh snapshot.
    Relisted,
}

/// The watch's changes, broadcast to every open stream.
pub struct Changes {
    tx: broadcast::Sender<Arc<Change>>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            tx: broadcast::channel(BUFFER).0,
        }
    }
}

fn key(run: &WorkflowRun) -> Key {
    (run.namespace().unwrap_or_default(), run.name_any())
}

fn rendered(run: &WorkflowRun) -> Bytes {
    serde_json::to_vec(&summary(run)).unwrap_or_default().into()
}

impl Changes {
    /// Passes on one event of the reflector's watch (after the cache has applied it).
    pub fn publish(&self, ev: &watcher::Event<WorkflowRun>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let change = match ev {
            watcher::Event::Apply(r) => Change::Applied(key(r), rendered(r)),
            watcher::Event::Delete(r) => Change::Deleted(key(r), rendered(r)),
            watcher::Event::InitDone => Change::Relisted,
            watcher::Event::Init | watcher::Event::InitApply(_) => return,
        };
        let _ = self.tx.send(Arc::new(change));
    }
}

/// One SSE frame.
fn frame(event: &str, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(data.len() + event.len() + 16);
    f.extend_from_slice(b"event: ");
    f.extend_from_slice(event.as_bytes());
    f.extend_from_slice(b"\ndata: ");
    f.extend_from_slice(data);
    f.extend_from_slice(b"\n\n");
    f
}

/// The runs of `scope`, newest first, then by name.
fn current(state: &AppState, scope: &Scope) -> Vec<Arc<WorkflowRun>> {
    let mut runs: Vec<_> = state
        .runs
        .state()
        .into_iter()
        .filter(|r| scope.holds(&r.namespace().unwrap_or_default(), &r.name_any()))
        .collect();
    runs.sort_by_cached_key(|r| {
        let created = r.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (std::cmp::Reverse(created), r.name_any())
    });
    runs
}

/// Every current run as ADDED, then SYNCED; `known` becomes the runs sent.
fn snapshot(state: &AppState, scope: &Scope, known: &mut HashSet<Key>) -> Bytes {
    known.clear();
    let mut out = Vec::new();
    for r in current(state, scope) {
        out.extend(frame("ADDED", &rendered(&r)));
        known.insert(key(&r));
    }
    out.extend(frame("SYNCED", b"{}"));
    out.into()
}

/// The frame a stream of `scope` sends for `change`, updating what it has sent in `known`.
fn frame_for(change: &Change, scope: &Scope, known: &mut HashSet<Key>) -> Option<Vec<u8>> {
    let ours = |k: &Key| scope.holds(&k.0, &k.1);
    match change {
        Change::Applied(k, data) if ours(k) => {
            let event = if known.insert(k.clone()) {
                "ADDED"
            } else {
                "MODIFIED"
            };
            Some(frame(event, data))
        }
        Change::Deleted(k, data) if known.remove(k) => Some(frame("DELETED", data)),
        _ => None,
    }
}

/// Feeds one stream: the snapshot, then the changes, until the client goes or falls behind.
async fn follow(
    state: Arc<AppState>,
    scope: Scope,
    mut changes: broadcast::Receiver<Arc<Change>>,
    out: mpsc::Sender<Bytes>,
) {
    let scope = &scope;
    for store in &state.runs.0 {
        tokio::select! {
            _ = store.wait_until_ready() => {}
            _ = out.closed() => return,
        }
    }
    let mut known = HashSet::new();
    if out.send(snapshot(&state, scope, &mut known)).await.is_err() {
        return;
    }
    loop {
        let change = tokio::select! {
            c = changes.recv() => c,
            _ = out.closed() => return,
        };
        let bytes = match change {
            Ok(c) => match &*c {
                Change::Relisted => snapshot(&state, scope, &mut known),
                c => match frame_for(c, scope, &mut known) {
                    Some(f) => f.into(),
                    None => continue,
                },
            },
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(behind = n, "a run stream fell behind; closing it");
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if out.send(bytes).await.is_err() {
            return;
        }
    }
}

/// The SSE answer of a stream of `scope`.
fn stream(state: Arc<AppState>, scope: Scope) -> Response {
    // Subscribe before the snapshot is read: no change falls between the two.
    let changes = state.changes.tx.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(follow(state.clone(), scope, changes, tx));
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = futures::stream::unfold((rx, heartbeat), |(mut rx, mut heartbeat)| async move {
        let bytes = tokio::select! {
            b = rx.recv() => {
                heartbeat.reset();
                b?
            }
            _ = heartbeat.tick() => Bytes::from_static(b": heartbeat\n\n"),
        };
        Some((Ok::<_, std::convert::Infallible>(bytes), (rx, heartbeat)))
    })
    .take_until(state.shutdown.clone().cancelled_owned());
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

/// Whether the client asks for an event stream.
fn event_stream_asked(headers: &HeaderMap) -> bool {
    let accept = headers.get_all(header::ACCEPT).iter();
    accept
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// Serves `GET /api/v1/namespaces/{ns}/workflowruns` with `Accept: text/event-stream` as a
/// stream; everything else goes on to the routes (a route layer: it sees the matched path).
pub(super) async fn intercept(State(state): S, req: Request, next: Next) -> Response {
    let Some(ns) = namespace_stream_asked(&req) else {
        return next.run(req).await;
    };
    let name = run_name(req.uri().query());
    let headers = req.into_parts().0.headers;
    let open = async {
        let verb = if name.is_some() {
            Verb::Get
        } else {
            Verb::List
        };
        state
            .auth
            .check(&headers, &ns, verb, name.as_deref())
            .await?;
        check_namespace(&state, &ns)?;
        Ok::<_, ApiError>(stream(
            state.clone(),
            Scope {
                ns: Some(ns.clone()),
                name,
            },
        ))
    };
    open.await.unwrap_or_else(IntoResponse::into_response)
}

/// The run a stream is limited to: the query's `name=RUN`.
fn run_name(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == "name" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// The namespace of a `GET` of [`NAMESPACED`] that asks for an event stream.
fn namespace_stream_asked(req: &Request) -> Option<String> {
    let matched = req.extensions().get::<MatchedPath>()?;
    if req.method() != Method::GET
        || matched.as_str() != NAMESPACED
        || !event_stream_asked(req.headers())
    {
        return None;
    }
    let ns = req
        .uri()
        .path()
        .strip_prefix("/api/v1/namespaces/")?
        .split('/')
        .next()?;
    Some(
        percent_encoding::percent_decode_str(ns)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// Every run this API serves (needs `list` in all namespaces, or in each served namespace):
/// with `Accept: text/event-stream` a stream of their changes, else one list, newest first.
#[utoipa::path(get, path = "/api/v1/workflowruns", tag = "runs",
    responses((status = 200, description = "The runs, or with Accept: text/event-stream a stream: \
            ADDED per run, SYNCED, then ADDED/MODIFIED/DELETED", content(
            (RunList = "application/json"), (String = "text/event-stream"))),
        (status = 403, description = "No `list` on workflowruns in all namespaces")))]
async fn all_runs(State(state): S, headers: HeaderMap) -> Result<Response, ApiError> {
    if state.namespaces.is_empty() {
        state.auth.check(&headers, "", Verb::List, None).await?;
    } else {
        for ns in &state.namespaces {
            state.auth.check(&headers, ns, Verb::List, None).await?;
        }
    }
    if event_stream_asked(&headers) {
        return Ok(stream(state, Scope::default()));
    }
    let items = current(&state, &Scope::default())
        .iter()
        .map(|r| summary(r))
        .collect();
    Ok(Json(RunList {
        items,
        continue_: None,
    })
    .into_response())
}

/// Adds the event stream to the OpenAPI entry of the namespaced run list (its handler, in
/// `runs.rs`, documents the JSON answer).
pub(super) fn document_stream(doc: &mut Value) {
    let ok = &mut doc["paths"][NAMESPACED]["get"]["responses"]["200"];
    if ok.is_object() {
        ok["content"]["text/event-stream"] = serde_json::json!({ "schema": { "type": "string" } });
        ok["description"] = "A page of runs, or with Accept: text/event-stream a stream: ADDED \
            per run, SYNCED, then ADDED/MODIFIED/DELETED"
            .into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(ns: &str, name: &str) -> Change {
        Change::Applied((ns.into(), name.into()), Bytes::from_static(b"{\"x\":1}"))
    }

    fn deleted(ns: &str, name: &str) -> Change {
        Change::Deleted((ns.into(), name.into()), Bytes::from_static(b"{}"))
    }

    fn text(f: Option<Vec<u8>>) -> Option<String> {
        f.map(|f| String::from_utf8(f).unwrap())
    }

    #[test]
    fn a_stream_says_added_then_modified_then_deleted_for_its_namespace_only() {
        let mut known = HashSet::new();
        let mut next = |c: Change, ns: Option<&str>| {
            let scope = Scope {
                ns: ns.map(str::to_owned),
                name: None,
            };
            text(frame_for(&c, &scope, &mut known))
        };
        assert_eq!(
            next(applied("a", "r1"), Some("a")).as_deref(),
            Some("event: ADDED\ndata: {\"x\":1}\n\n")
        );
        assert_eq!(
            next(applied("a", "r1"), Some("a")).as_deref(),
            Some("event: MODIFIED\ndata: {\"x\":1}\n\n")
        );
        assert_eq!(
            next(applied("b", "r1"), Some("a")),
            None,
            "another namespace"
        );
        assert_eq!(
            next(deleted("b", "r1"), Some("a")),
            None,
            "a run never sent"
        );
        assert_eq!(
            next(deleted("a", "r1"), Some("a")).as_deref(),
            Some("event: DELETED\ndata: {}\n\n")
        );
        assert_eq!(next(deleted("a", "r1"), Some("a")), None, "deleted once");
        // All namespaces.
        assert!(
            next(applied("b", "r1"), None)
                .unwrap()
                .starts_with("event: ADDED")
        );
        assert!(
            next(applied("b", "r1"), None)
                .unwrap()
                .starts_with("event: MODIFIED")
        );
        assert_eq!(next(Change::Relisted, None), None);
    }

    #[test]
    fn a_stream_of_one_run_says_nothing_of_the_others() {
        let scope = Scope {
            ns: Some("a".into()),
            name: Some("r1".into()),
        };
        let mut known = HashSet::new();
        assert!(frame_for(&applied("a", "r2"), &scope, &mut known).is_none());
        assert!(frame_for(&applied("b", "r1"), &scope, &mut known).is_none());
        let f = text(frame_for(&applied("a", "r1"), &scope, &mut known)).unwrap();
        assert!(f.starts_with("event: ADDED"), "{f}");
        assert_eq!(run_name(Some("name=r1&x=2")).as_deref(), Some("r1"));
        assert_eq!(run_name(Some("name=")), None);
        assert_eq!(run_name(Some("a%20b=1")), None);
        assert_eq!(run_name(None), None);
    }
}
