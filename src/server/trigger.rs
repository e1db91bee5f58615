//! `POST /api/v1/trigger`: other systems start a run.
//!
//! Body `{"namespace", "workflow", "connector", "params", "labels"}` (at most 64 KiB). Answers,
//! in the order they are checked: 413 for a larger body; 400 for a body that is not such an
//! object (the message names the field); 401 without a valid bearer token; 403 when the caller
//! may not `create` workflowruns in that namespace (SubjectAccessReview); 404 for a namespace
//! this API does not serve, or a Workflow or BrokerConnector that does not exist; 400 for params
//! the Workflow does not take; else 201 with `{"namespace", "name"}` and `Location`.
//!
//! With an `Idempotency-Key` header, the same key in the same namespace within 24 hours answers
//! 200 with the run the first request created. The key's hash is a label of that run (and its
//! name derives from it), so the answer survives a restart of devset api and holds across
//! replicas: two requests racing with one key create one run.

use super::{
    AppState, S,
    auth::Verb,
    create::{self, Created, NewRun},
    error::ApiError,
    routes::check_namespace,
};
use axum::{
    Router, body::Body, extract::State, http::HeaderMap, response::Response, routing::post,
};
use kube::ResourceExt;
use serde::Serialize;
use std::sync::Arc;

/// The fields of a trigger's body.
const FIELDS: [&str; 5] = ["namespace", "workflow", "connector", "params", "labels"];
/// The header that makes a trigger idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/trigger", post(trigger))
}

/// The answer to a trigger: the run it created (or, with the same `Idempotency-Key`, found).
#[derive(Serialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
pub struct Triggered {
    pub namespace: String,
    pub name: String,
}

/// The `Idempotency-Key` header: 1-255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

#[utoipa::path(post, path = "/api/v1/trigger", tag = "trigger",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "The same key in the same namespace within 24 hours answers the first run")),
    request_body(description = "{\"namespace\", \"workflow\", \"connector\", \"params\", \"labels\"}",
        content_type = "application/json"),
    responses((status = 201, body = Triggered, description = "The run is created"),
        (status = 200, body = Triggered, description = "The run an earlier request with this Idempotency-Key created"),
        (status = 400, description = "A bad body (the message names the field) or params the Workflow does not take"),
        (status = 403, description = "No `create` on workflowruns in the namespace"),
        (status = 404, description = "An unserved namespace, or no such Workflow or BrokerConnector"),
        (status = 413, description = "A body over 64 KiB")))]
async fn trigger(State(state): S, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = create::read_body(body).await?;
    let m = create::json_object(&bytes)?;
    let ns = create::name_field(&m, "namespace", true)?;
    let caller = state.auth.check(&headers, &ns, Verb::Create, None).await?;
    create::only_fields(&m, &FIELDS)?;
    let new = NewRun {
        namespace: ns.clone(),
        prefix: create::name_field(&m, "workflow", false)?,
        workflow: create::name_field(&m, "workflow", false)?,
        connector: create::name_field(&m, "connector", false)?,
        params: create::params_field(&m)?,
        labels: create::labels_field(&m)?,
        rerun_of: None,
        idempotency: idempotency_key(&headers)?.map(|k| create::key_hash(&k)),
    };
    check_namespace(&state, &ns)?;
    if let Some(h) = &new.idempotency
        && let Some(run) = create::find_idempotent(&state, &ns, h).await?
    {
        return Ok(answer(&Created::Existing(run)));
    }
    create::check_references(&state, &new).await?;
    let created = create::create(&state, &caller, new).await?;
    if let Created::New(r) = &created {
        tracing::info!(namespace = %ns, name = %r.name_any(), caller = caller.name(), "run triggered");
    }
    Ok(answer(&created))
}

fn answer(created: &Created) -> Response {
    let run = created.run();
    let body = Triggered {
        namespace: run.namespace().unwrap_or_default(),
        name: run.name_any(),
    };
    create::answer(created, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_short_visible_text() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert(IDEMPOTENCY_KEY, "order 42".parse().unwrap());
        assert_eq!(idempotency_key(&h).unwrap().as_deref(), Some("order 42"));
        h.insert(IDEMPOTENCY_KEY, "x".repeat(256).parse().unwrap());
        assert!(
            idempotency_key(&h)
                .unwrap_err()
                .message
                .starts_with("the Idempotency-Key")
        );
        h.insert(IDEMPOTENCY_KEY, " ".parse().unwrap());
        assert!(idempotency_key(&h).is_err());
    }
}
