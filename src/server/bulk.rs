//! Several runs at once, across namespaces, the way the web page's "select several" works:
//! `POST /api/v1/workflowruns:delete`, `…:stop` and `…:export`, each with the body
//! `{"runs": [{"namespace": "…", "name": "…"}, …]}` (at most [`MAX_RUNS`]; `:export` also takes
//! `"format": "json"` (default) or `"csv"`).
//!
//! Every run is authorized on its own with SubjectAccessReview, with the verb its single route
//! needs (`delete`, `patch`, `get`). Delete and stop answer 200 with one result per run, in the
//! order asked: `{"items": [{"namespace", "name", "status", "reason", "message"}]}`, where
//! `status` is the HTTP code the single route would have answered (200, 202, 403, 404, 409, …).
//! The whole request fails only when it cannot be read (400 naming the field, 413) or the
//! caller has no valid token (401).
//!
//! The export streams (a page of events at a time, never a whole log in memory). JSON:
//! `{"items": [{"namespace", "name", "run": {…}, "events": [...]}, …], "errors": [results of
//! the runs not exported]}`. CSV: the columns of a single run's CSV export after `namespace`
//! and `name`; CSV has no place for per-run errors, so a run the caller may not read (or that
//! does not exist) fails the whole CSV export with its status and a message naming every such
//! run.

use super::{
    AppState, S,
    auth::Verb,
    create::{json_object, only_fields, read_body},
    error::ApiError,
    events::{CSV_COLUMNS, PAGE_MAX, csv_row, readable},
    routes::cached_run,
    runs::{self, RunSummary},
};
use crate::events::{Event, RunKey};
use axum::{
    Json,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::{collections::HashSet, future::Future, sync::Arc};
use tokio::sync::mpsc;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Runs in one request at most.
pub const MAX_RUNS: usize = 500;
/// Runs worked on at once.
const PARALLEL: usize = 8;

pub(super) fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(delete_runs))
        .routes(routes!(stop_runs))
        .routes(routes!(export_runs))
}

/// A run named in a request.
#[derive(Deserialize, Serialize, schemars::JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunRef {
    pub namespace: String,
    pub name: String,
}

/// The body of the bulk routes.
#[derive(Deserialize, schemars::JsonSchema)]
#[allow(dead_code)] // read field by field (for messages naming the field); here for the schema
pub struct BulkRequest {
    /// The runs, at most 500, each once.
    pub runs: Vec<RunRef>,
    /// `:export` only: `json` (default) or `csv`.
    pub format: Option<String>,
}

/// What happened to one run.
#[derive(Serialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
pub struct BulkResult {
    pub namespace: String,
    pub name: String,
    /// The HTTP status the single-run route would have answered (200, 202, 403, 404, 409, …).
    pub status: u16,
    /// `Success`, or the error's reason (`Forbidden`, `NotFound`, `Conflict`, …).
    pub reason: String,
    pub message: String,
}

/// One result per run, in the order asked.
#[derive(Serialize, schemars::JsonSchema)]
pub struct BulkResults {
    pub items: Vec<BulkResult>,
}

/// One run in a JSON export.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ExportedRun {
    pub namespace: String,
    pub name: String,
    /// The run, when it still exists (a deleted run's log may outlive it).
    pub run: Option<RunSummary>,
    /// Its whole event log, oldest first.
    pub events: Vec<Event>,
}

/// A JSON export (streamed).
#[derive(Serialize, schemars::JsonSchema)]
pub struct Export {
    pub items: Vec<ExportedRun>,
    /// The runs not exported, with why.
    pub errors: Vec<BulkResult>,
}

/// Reads `{"runs": [...], "format": …}`: 400 naming the field that is wrong.
fn parse(body: &[u8], export: bool) -> Result<(Vec<RunRef>, Option<String>), ApiError> {
    let m = json_object(body)?;
    only_fields(
        &m,
        if export {
            &["runs", "format"]
        } else {
            &["runs"]
        },
    )?;
    let items = match m.get("runs") {
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::bad_request("runs must name at least one run"));
        }
        Some(Value::Array(a)) if a.len() > MAX_RUNS => {
            return Err(ApiError::bad_request(format!(
                "runs names {} runs; at most {MAX_RUNS} per request",
                a.len()
            )));
        }
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "runs must be a list, not {v}"
            )));
        }
        None => {
            return Err(ApiError::bad_request(
                "runs is required: [{\"namespace\": \"…\", \"name\": \"…\"}, …]",
            ));
        }
    };
    let mut seen = HashSet::new();
    let mut runs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |f: &str| -> Result<String, ApiError> {
            match item.get(f) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                None | Some(Value::Null) => {
                    Err(ApiError::bad_request(format!("runs[{i}].{f} is required")))
                }
                Some(v) => Err(ApiError::bad_request(format!(
                    "runs[{i}].{f} must be a non-empty string, not {v}"
                ))),
            }
        };
        let Value::Object(o) = item else {
            return Err(ApiError::bad_request(format!(
                "runs[{i}] must be an object {{\"namespace\": \"…\", \"name\": \"…\"}}, not {item}"
            )));
        };
        if let Some(k) = o.keys().find(|k| *k != "namespace" && *k != "name") {
            return Err(ApiError::bad_request(format!(
                "runs[{i}].{k} is not a field; a run is {{\"namespace\", \"name\"}}"
            )));
        }
        let run = RunRef {
            namespace: field("namespace")?,
            name: field("name")?,
        };
        if !seen.insert(run.clone()) {
            return Err(ApiError::bad_request(format!(
                "runs[{i}] repeats {}/{}",
                run.namespace, run.name
            )));
        }
        runs.push(run);
    }
    let format = match m.get("format") {
        None | Some(Value::Null) => None,
        Some(Value::String(f)) if f == "json" || f == "csv" => Some(f.clone()),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "format must be \"json\" or \"csv\", not {v}"
            )));
        }
    };
    Ok((runs, format))
}

fn result(run: &RunRef, r: Result<StatusCode, ApiError>, done: &str) -> BulkResult {
    let (status, reason, message) = match r {
        Ok(code) => (code.as_u16(), "Success".to_owned(), done.to_owned()),
        Err(e) => (e.code.as_u16(), e.reason.to_owned(), e.message),
    };
    BulkResult {
        namespace: run.namespace.clone(),
        name: run.name.clone(),
        status,
        reason,
        message,
    }
}

/// A change made to several runs.
#[derive(Clone, Copy)]
enum Action {
    Delete,
    Stop,
}

/// Does `action` to each run of the body (a few at once), each authorized on its own first;
/// 401 fails all.
async fn each(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    action: Action,
) -> Result<Json<BulkResults>, ApiError> {
    let (runs, _) = parse(&read_body(body).await?, false)?;
    let (verb, done) = match action {
        Action::Delete => (Verb::Delete, "deleted; its event log goes with it"),
        Action::Stop => (Verb::Patch, "stop asked"),
    };
    let one = |run: RunRef| async move {
        state
            .auth
            .check(headers, &run.namespace, verb, Some(&run.name))
            .await?;
        let (ns, name) = (&run.namespace, &run.name);
        let code = match action {
            Action::Delete => runs::delete(state, ns, name).await.map(|_| StatusCode::OK),
            Action::Stop => runs::stop(state, ns, name)
                .await
                .map(|_| StatusCode::ACCEPTED),
        }?;
        tracing::info!(namespace = %ns, name = %name, done, "bulk request through the API");
        Ok(code)
    };
    let results: Vec<(RunRef, Result<StatusCode, ApiError>)> = futures::stream::iter(runs)
        .map(|run| async move { (run.clone(), one(run).await) })
        .buffered(PARALLEL)
        .collect()
        .await;
    if let Some((_, Err(e))) = results
        .iter()
        .find(|(_, r)| matches!(r, Err(e) if e.code == StatusCode::UNAUTHORIZED))
    {
        return Err(e.clone());
    }
    Ok(Json(BulkResults {
        items: results
            .into_iter()
            .map(|(run, r)| result(&run, r, done))
            .collect(),
    }))
}

/// Deletes several runs (each needs `delete`); their finalizers remove their event logs.
#[utoipa::path(post, path = "/api/v1/workflowruns:delete", tag = "bulk",
    request_body = BulkRequest, responses(super::openapi::BulkAnswers))]
async fn delete_runs(
    State(state): S,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BulkResults>, ApiError> {
    each(&state, &headers, body, Action::Delete).await
}

/// Asks several runs to stop (each needs `patch`).
#[utoipa::path(post, path = "/api/v1/workflowruns:stop", tag = "bulk",
    request_body = BulkRequest, responses(super::openapi::BulkAnswers))]
async fn stop_runs(
    State(state): S,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BulkResults>, ApiError> {
    each(&state, &headers, body, Action::Stop).await
}

/// Exports several runs with their whole event logs, as JSON or CSV (each needs `get`).
#[utoipa::path(post, path = "/api/v1/workflowruns:export", tag = "bulk",
    request_body = BulkRequest,
    responses((status = 200, description = "The export, streamed", content(
            (Export = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A body that is not {\"runs\": [...]}; the message names the field"),
        (status = 403, description = "CSV: a run the caller may not get"),
        (status = 404, description = "CSV: a run that does not exist"),
        (status = 413, description = "A body over 64 KiB")))]
async fn export_runs(
    State(state): S,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (runs, format) = parse(&read_body(body).await?, true)?;
    let checked: Vec<(RunRef, Result<RunKey, ApiError>)> = futures::stream::iter(runs)
        .map(|run| {
            let (state, headers) = (&state, &headers);
            async move {
                let r = readable(state, headers, &run.namespace, &run.name).await;
                (run, r)
            }
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let failed: Vec<(&RunRef, &ApiError)> = checked
        .iter()
        .filter_map(|(run, r)| r.as_ref().err().map(|e| (run, e)))
        .collect();
    if let Some((_, e)) = failed
        .iter()
        .find(|(_, e)| e.code == StatusCode::UNAUTHORIZED)
    {
        return Err((*e).clone());
    }
    let csv = format.as_deref() == Some("csv");
    if csv && let Some((_, first)) = failed.first() {
        let names: Vec<String> = failed
            .iter()
            .map(|(r, e)| format!("{}/{} ({})", r.namespace, r.name, e.code.as_u16()))
            .collect();
        return Err(ApiError::new(
            first.code,
            first.reason,
            format!(
                "cannot export {}: {}",
                names.join(", "),
                failed
                    .iter()
                    .map(|(_, e)| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    let errors: Vec<BulkResult> = failed
        .iter()
        .map(|(run, e)| result(run, Err((*e).clone()), ""))
        .collect();
    let keys: Vec<RunKey> = checked.into_iter().filter_map(|(_, r)| r.ok()).collect();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let n = keys.len();
    if csv {
        tokio::spawn(write_csv(state, keys, tx));
    } else {
        tokio::spawn(write_json(state, keys, errors, tx));
    }
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let (ext, ty) = if csv {
        ("csv", "text/csv; charset=utf-8")
    } else {
        ("json", "application/json")
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, ty)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"devset-export-{n}-runs.{ext}\""),
        )
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response()))
}

type Sink = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Sends a chunk; false once the client has gone.
async fn send(tx: &Sink, bytes: Vec<u8>) -> bool {
    tx.send(Ok(Bytes::from(bytes))).await.is_ok()
}

/// Calls `f` with each page of the run's log, oldest first, until it returns false.
async fn pages(
    state: &AppState,
    key: &RunKey,
    tx: &Sink,
    mut f: impl AsyncPage,
) -> Result<bool, ()> {
    let mut after = 0;
    loop {
        let page = match state.hub.store().events(key, after, PAGE_MAX).await {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e))).await;
                return Err(());
            }
        };
        let Some(last) = page.last() else {
            return Ok(true);
        };
        after = last.seq;
        let full = page.len() == PAGE_MAX as usize;
        if !f.page(&page, tx).await {
            return Ok(false);
        }
        if !full {
            return Ok(true);
        }
    }
}

/// What [`pages`] does with a page.
trait AsyncPage {
    fn page(
        &mut self,
        page: &[crate::events::StoredEvent],
        tx: &Sink,
    ) -> impl Future<Output = bool> + Send;
}

/// The events of a JSON export: their stored JSON, comma-separated.
struct JsonEvents {
    first: bool,
}

impl AsyncPage for JsonEvents {
    async fn page(&mut self, page: &[crate::events::StoredEvent], tx: &Sink) -> bool {
        let mut buf = Vec::new();
        for e in page {
            if !std::mem::take(&mut self.first) {
                buf.push(b',');
            }
            buf.extend_from_slice(e.data.as_bytes());
        }
        send(tx, buf).await
    }
}

/// The rows of a CSV export: the run's namespace and name, then the event's columns.
struct CsvRows<'a>(&'a RunKey);

impl AsyncPage for CsvRows<'_> {
    async fn page(&mut self, page: &[crate::events::StoredEvent], tx: &Sink) -> bool {
        let mut w = csv::Writer::from_writer(Vec::new());
        for ev in page {
            match ev.event() {
                Ok(e) => {
                    let mut row = vec![self.0.namespace.clone(), self.0.name.clone()];
                    row.extend(csv_row(&e));
                    let _ = w.write_record(row);
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return false;
                }
            }
        }
        send(tx, w.into_inner().unwrap_or_default()).await
    }
}

async fn write_json(state: Arc<AppState>, keys: Vec<RunKey>, errors: Vec<BulkResult>, tx: Sink) {
    if !send(&tx, b"{\"items\":[".to_vec()).await {
        return;
    }
    for (i, key) in keys.iter().enumerate() {
        let run = cached_run(&state, &key.namespace, &key.name).map(|r| runs::summary(&r));
        let head = serde_json::json!({ "namespace": key.namespace, "name": key.name, "run": run });
        let mut head = head.to_string();
        head.pop(); // the closing brace: the events follow
        let sep = if i == 0 { "" } else { "," };
        if !send(&tx, format!("{sep}{head},\"events\":[").into_bytes()).await {
            return;
        }
        match pages(&state, key, &tx, JsonEvents { first: true }).await {
            Ok(true) => {}
            _ => return,
        }
        if !send(&tx, b"]}".to_vec()).await {
            return;
        }
    }
    let tail = format!(
        "],\"errors\":{}}}",
        serde_json::to_string(&errors).unwrap_or_else(|_| "[]".into())
    );
    send(&tx, tail.into_bytes()).await;
}

async fn write_csv(state: Arc<AppState>, keys: Vec<RunKey>, tx: Sink) {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(["namespace", "name"].iter().chain(CSV_COLUMNS.iter()));
    if !send(&tx, w.into_inner().unwrap_or_default()).await {
        return;
    }
    for key in &keys {
        match pages(&state, key, &tx, CsvRows(key)).await {
            Ok(true) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str, export: bool) -> String {
        parse(body.as_bytes(), export).unwrap_err().message
    }

    #[test]
    fn bodies_are_read_and_bad_ones_name_the_field() {
        let (runs, format) = parse(
            br#"{"runs":[{"namespace":"a","name":"r1"},{"namespace":"b","name":"r1"}],"format":"csv"}"#,
            true,
        )
        .unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].namespace, "b");
        assert_eq!(format.as_deref(), Some("csv"));
        assert!(bad("{}", false).contains("runs is required"));
        assert!(bad(r#"{"runs":[]}"#, false).contains("at least one"));
        assert!(bad(r#"{"runs":{}}"#, false).contains("runs must be a list"));
        assert!(bad(r#"{"runs":[{"name":"x"}]}"#, false).contains("runs[0].namespace is required"));
        assert!(bad(r#"{"runs":[{"namespace":"a","name":3}]}"#, false).contains("runs[0].name"));
        assert!(
            bad(
                r#"{"runs":[{"namespace":"a","name":"x","uid":"u"}]}"#,
                false
            )
            .contains("runs[0].uid")
        );
        assert!(bad(r#"{"runs":["a/x"]}"#, false).contains("runs[0] must be an object"));
        let twice = r#"{"runs":[{"namespace":"a","name":"x"},{"namespace":"a","name":"x"}]}"#;
        assert!(bad(twice, false).contains("runs[1] repeats a/x"));
        assert!(
            bad(
                r#"{"runs":[{"namespace":"a","name":"x"}],"format":"csv"}"#,
                false
            )
            .contains("\"format\"")
        );
        assert!(
            bad(
                r#"{"runs":[{"namespace":"a","name":"x"}],"format":"xml"}"#,
                true
            )
            .contains("format must be")
        );
        assert!(bad("[1]", false).contains("JSON object"));
        let many: Vec<Value> = (0..=MAX_RUNS)
            .map(|i| serde_json::json!({"namespace": "a", "name": format!("r{i}")}))
            .collect();
        let many = serde_json::json!({ "runs": many }).to_string();
        assert!(bad(&many, false).contains("at most 500"));
    }
}
