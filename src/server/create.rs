//! The one path that creates runs for `devset api`: `POST /api/v1/trigger`, `…/retry`,
//! `…/rerun` (and the web page's New Run). It checks what the run references (404 for a
//! Workflow or BrokerConnector that does not exist, 400 for params the Workflow does not take),
//! then creates the run in one request, as devset api's ServiceAccount, with the caller's
//! Kubernetes user name in the annotation `devset.io/triggered-by` (the chart's admission policy
//! lets only that ServiceAccount name someone else there). Either the run exists afterwards,
//! whole, or nothing was written.

use super::{AppState, auth::Caller, error::ApiError};
use crate::{
    api::{
        BrokerConnector, LocalObjectRef, RerunOf, TRIGGERED_BY_ANNOTATION, Workflow, WorkflowRun,
        WorkflowRunSpec,
    },
    engine::params::resolve_params,
};
use axum::{
    Json,
    body::{Body, Bytes},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, ObjectMeta, PostParams},
};
use serde_json::Value;
use std::collections::BTreeMap;

/// The largest request body of the creating routes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The label that holds the hash of a trigger's `Idempotency-Key`.
pub const IDEMPOTENCY_LABEL: &str = "devset.io/idempotency-key";
/// How long an `Idempotency-Key` names the run it created.
pub const IDEMPOTENCY_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);
/// The field manager of the runs devset api creates.
const FIELD_MANAGER: &str = "devset-api";

/// A run to create.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewRun {
    pub namespace: String,
    /// The start of the generated name (`generateName`), e.g. the workflow's name.
    pub prefix: String,
    pub workflow: String,
    pub connector: String,
    pub params: BTreeMap<String, Value>,
    pub labels: BTreeMap<String, String>,
    pub rerun_of: Option<RerunOf>,
    /// The hash of an `Idempotency-Key`: the run gets a name derived from it (so that two
    /// replicas answering the same key at once create one run) and the label
    /// [`IDEMPOTENCY_LABEL`].
    pub idempotency: Option<String>,
}

/// The request body, at most [`MAX_BODY_BYTES`] (413 beyond).
pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        })
}

/// The body as a JSON object (an empty body is `{}`); 400 otherwise.
pub fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// Refuses fields other than `allowed`, naming the first.
pub fn only_fields(m: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(format!(
            "unknown field {k:?}; the body's fields are {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// An optional string field.
pub fn string_field(
    m: &serde_json::Map<String, Value>,
    f: &str,
) -> Result<Option<String>, ApiError> {
    match m.get(f) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => {
            Err(ApiError::bad_request(format!("{f} must not be empty")))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::bad_request(format!(
            "{f} must be a string, not {v}"
        ))),
    }
}

/// A required string field that must be a Kubernetes object name (a DNS subdomain; a DNS label
/// for namespaces and stages).
pub fn name_field(
    m: &serde_json::Map<String, Value>,
    f: &str,
    label: bool,
) -> Result<String, ApiError> {
    let v = string_field(m, f)?.ok_or_else(|| ApiError::bad_request(format!("{f} is required")))?;
    let ok = if label {
        is_dns_label(&v)
    } else {
        v.len() <= 253 && v.split('.').all(is_dns_label)
    };
    if !ok {
        let what = if label {
            "a DNS label"
        } else {
            "a DNS subdomain"
        };
        return Err(ApiError::bad_request(format!(
            "{f}: {v:?} is not a valid name ({what}: lower-case letters, digits and '-')"
        )));
    }
    Ok(v)
}

/// The optional `params` object.
pub fn params_field(
    m: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, Value>, ApiError> {
    match m.get("params") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(p)) => Ok(p.clone().into_iter().collect()),
        Some(v) => Err(ApiError::bad_request(format!(
            "params must be an object of param names to values, not {v}"
        ))),
    }
}

/// The optional `labels` object: valid Kubernetes labels, none under `devset.io/` (reserved for
/// what devset writes: lineage, idempotency, schedules).
pub fn labels_field(
    m: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let obj = match m.get("labels") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "labels must be an object of label keys to string values, not {v}"
            )));
        }
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let Value::String(v) = v else {
            return Err(ApiError::bad_request(format!(
                "labels.{k:?} must be a string, not {v}"
            )));
        };
        if let Err(e) = check_label(k, v) {
            return Err(ApiError::bad_request(format!("labels.{k:?}: {e}")));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A label name or value: at most 63 characters, alphanumerics and `-_.`, alphanumeric at both
/// ends (a value may be empty).
fn is_label_word(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// Checks a label as Kubernetes does, and refuses devset's own prefix.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.len() > 253 || !p.split('.').all(is_dns_label) {
            return Err("the key's prefix must be a DNS subdomain".into());
        }
        if p == "devset.io" || p.ends_with(".devset.io") {
            return Err("the prefix devset.io/ is reserved for devset's own labels".into());
        }
    }
    if name.is_empty() || !is_label_word(name) {
        return Err(
            "a label key's name is 1-63 characters: alphanumerics, '-', '_' or '.', \
             starting and ending with an alphanumeric"
                .into(),
        );
    }
    if !is_label_word(value) {
        return Err(
            "a label value is at most 63 characters: alphanumerics, '-', '_' or '.', \
             starting and ending with an alphanumeric"
                .into(),
        );
    }
    Ok(())
}

/// The hash of an `Idempotency-Key` as a label value (40 hex digits of its SHA-256).
pub fn key_hash(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    digest.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// `prefix` cut so that `prefix-XXXXX` is a valid name.
fn name_prefix(prefix: &str) -> String {
    let mut p: String = prefix.chars().take(200).collect();
    while p.ends_with(['-', '.']) {
        p.pop();
    }
    if p.is_empty() { "run".into() } else { p }
}

/// Checks that the Workflow and the BrokerConnector exist (404) and that the Workflow takes the
/// params (400).
pub async fn check_references(state: &AppState, new: &NewRun) -> Result<Workflow, ApiError> {
    let ns = &new.namespace;
    let unavailable =
        |what: &str, e: kube::Error| ApiError::unavailable(format!("reading {what}: {e}"));
    let wf = Api::<Workflow>::namespaced(state.client.clone(), ns)
        .get_opt(&new.workflow)
        .await
        .map_err(|e| unavailable("the Workflow", e))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "workflow: workflows.devset.io {:?} not found in the namespace {ns:?}",
                new.workflow
            ))
        })?;
    Api::<BrokerConnector>::namespaced(state.client.clone(), ns)
        .get_opt(&new.connector)
        .await
        .map_err(|e| unavailable("the BrokerConnector", e))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "connector: brokerconnectors.devset.io {:?} not found in the namespace {ns:?}",
                new.connector
            ))
        })?;
    resolve_params(&wf.spec.params, &new.params)
        .map_err(|e| ApiError::bad_request(format!("params: {e} (Workflow {:?})", new.workflow)))?;
    Ok(wf)
}

/// The run an `Idempotency-Key` (its hash) created in `ns` within the window, the first if
/// several.
pub async fn find_idempotent(
    state: &AppState,
    ns: &str,
    hash: &str,
) -> Result<Option<WorkflowRun>, ApiError> {
    let api: Api<WorkflowRun> = Api::namespaced(state.client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(&format!("{IDEMPOTENCY_LABEL}={hash}")))
        .await
        .map_err(|e| ApiError::unavailable(format!("looking up the Idempotency-Key: {e}")))?;
    Ok(list
        .items
        .into_iter()
        .filter(|r| within_window(r, hash))
        .min_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0)))
}

fn within_window(run: &WorkflowRun, hash: &str) -> bool {
    let created = run.metadata.creation_timestamp.as_ref().map(|t| t.0);
    run.labels().get(IDEMPOTENCY_LABEL).map(String::as_str) == Some(hash)
        && run.metadata.deletion_timestamp.is_none()
        && created.is_some_and(|c| jiff::Timestamp::now().duration_since(c) < IDEMPOTENCY_WINDOW)
}

/// What [`create`] did.
pub enum Created {
    /// A new run.
    New(WorkflowRun),
    /// The run an earlier request with the same `Idempotency-Key` created.
    Existing(WorkflowRun),
}

/// Creates the run as devset api, naming `caller` in `devset.io/triggered-by`.
pub async fn create(state: &AppState, caller: &Caller, new: NewRun) -> Result<Created, ApiError> {
    let api: Api<WorkflowRun> = Api::namespaced(state.client.clone(), &new.namespace);
    let mut labels = new.labels.clone();
    let mut meta = ObjectMeta {
        namespace: Some(new.namespace.clone()),
        generate_name: Some(format!("{}-", name_prefix(&new.prefix))),
        annotations: Some([(TRIGGERED_BY_ANNOTATION.to_owned(), caller.name().to_owned())].into()),
        ..Default::default()
    };
    if let Some(h) = &new.idempotency {
        labels.insert(IDEMPOTENCY_LABEL.into(), h.clone());
        meta.name = Some(format!("{}-{}", name_prefix(&new.prefix), &h[..10]));
    }
    meta.labels = Some(labels);
    let run = WorkflowRun {
        metadata: meta,
        spec: WorkflowRunSpec {
            workflow_ref: LocalObjectRef {
                name: new.workflow.clone(),
            },
            connector_ref: LocalObjectRef {
                name: new.connector.clone(),
            },
            params: new.params.clone(),
            rerun_of: new.rerun_of.clone(),
            ..Default::default()
        },
        status: None,
    };
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let failed = |e: kube::Error| match e {
        kube::Error::Api(s) if s.code == 403 => {
            ApiError::forbidden(format!("devset api may not create the run: {}", s.message))
        }
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            ApiError::bad_request(format!("the API server refused the run: {}", s.message))
        }
        e => ApiError::unavailable(format!("creating the run: {e}")),
    };
    match api.create(&pp, &run).await {
        Ok(r) => Ok(Created::New(r)),
        Err(kube::Error::Api(s)) if s.code == 409 && new.idempotency.is_some() => {
            // The name of this key is taken: by the run of the same key (another replica, a
            // retried request), or by one older than the window.
            let hash = new.idempotency.as_deref().unwrap_or_default();
            let name = run.metadata.name.clone().unwrap_or_default();
            match api.get_opt(&name).await.map_err(failed)? {
                Some(r) if within_window(&r, hash) => Ok(Created::Existing(r)),
                _ => {
                    let mut again = run;
                    again.metadata.name = None;
                    api.create(&pp, &again)
                        .await
                        .map(Created::New)
                        .map_err(failed)
                }
            }
        }
        Err(e) => Err(failed(e)),
    }
}

/// The answer: 201 (or 200 for an existing run) with `body`, and `Location`.
pub fn answer(created: &Created, body: impl serde::Serialize) -> Response {
    let (code, run) = match created {
        Created::New(r) => (StatusCode::CREATED, r),
        Created::Existing(r) => (StatusCode::OK, r),
    };
    let location = format!(
        "/api/v1/namespaces/{}/workflowruns/{}",
        run.namespace().unwrap_or_default(),
        run.name_any()
    );
    let mut res = (code, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

impl Created {
    pub fn run(&self) -> &WorkflowRun {
        match self {
            Created::New(r) | Created::Existing(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        assert!(json_object(b"").unwrap().is_empty());
        assert_eq!(
            json_object(b"[1]").unwrap_err().message,
            "the body must be a JSON object"
        );
        assert!(
            json_object(b"{")
                .unwrap_err()
                .message
                .starts_with("the body is not valid JSON")
        );
        let m = obj(json!({"namespace": "Bad_NS", "workflow": 3, "x": 1}));
        assert_eq!(
            only_fields(&m, &["namespace", "workflow"])
                .unwrap_err()
                .message,
            "unknown field \"x\"; the body's fields are namespace, workflow"
        );
        assert!(
            name_field(&m, "namespace", true)
                .unwrap_err()
                .message
                .starts_with("namespace: \"Bad_NS\" is not a valid name")
        );
        assert_eq!(
            name_field(&m, "workflow", false).unwrap_err().message,
            "workflow must be a string, not 3"
        );
        assert_eq!(
            name_field(&m, "connector", false).unwrap_err().message,
            "connector is required"
        );
        assert_eq!(
            name_field(&obj(json!({"w": "a.b-c"})), "w", false).unwrap(),
            "a.b-c"
        );
        assert!(
            params_field(&obj(json!({"params": []})))
                .unwrap_err()
                .message
                .starts_with("params must be an object")
        );
        assert_eq!(
            params_field(&obj(json!({"params": {"n": 1}}))).unwrap()["n"],
            json!(1)
        );
    }

    #[test]
    fn labels_are_kubernetes_labels_outside_devset_io() {
        let ok = labels_field(&obj(
            json!({"labels": {"team": "payments", "example.com/x": ""}}),
        ))
        .unwrap();
        assert_eq!(ok.len(), 2);
        for (labels, want) in [
            (json!({"team": 1}), "labels.\"team\" must be a string"),
            (
                json!({"devset.io/rerun-of": "x"}),
                "labels.\"devset.io/rerun-of\": the prefix devset.io/ is reserved",
            ),
            (json!({"-bad": "x"}), "labels.\"-bad\": a label key's name"),
            (json!({"ok": "no spaces"}), "labels.\"ok\": a label value"),
        ] {
            let e = labels_field(&obj(json!({ "labels": labels }))).unwrap_err();
            assert!(e.message.starts_with(want), "{}", e.message);
        }
    }

    #[test]
    fn keys_hash_to_label_values_and_names_stay_valid() {
        let h = key_hash("order-42");
        assert_eq!(h.len(), 40);
        assert_eq!(h, key_hash("order-42"));
        assert_ne!(h, key_hash("order-43"));
        assert!(check_label(IDEMPOTENCY_LABEL.split('/').nth(1).unwrap(), &h).is_ok());
        assert_eq!(name_prefix(&"a".repeat(300)).len(), 200);
        assert_eq!(name_prefix("orders-"), "orders");
        assert_eq!(name_prefix(""), "run");
    }
}
