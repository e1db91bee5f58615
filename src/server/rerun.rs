//! `POST /api/v1/namespaces/{ns}/workflowruns/{name}/retry` and `…/rerun`: a new run that
//! repeats a finished one (`spec.rerunOf`), from the start or from a stage.
//!
//! Bodies: retry `{"params": {…}, "connector": "…"}`, re-run `{"fromStage": "…", "params":
//! {…}, "connector": "…"}` (all optional but `fromStage`). The new run uses the current
//! Workflow, the source's connector and params unless the body sets them (params key by key),
//! is labelled `devset.io/rerun-of=SOURCE` and `devset.io/rerun-root=FIRST` (the first run of
//! the lineage), and carries the source's other labels. Answers: 413/400 for the body, 401, 403
//! without `create` on workflowruns, 404 for an unserved namespace, a source, Workflow or
//! BrokerConnector that does not exist, 409 when the source has not finished, 400 for a
//! `fromStage` the Workflow does not have or params it does not take; else 201 with the new run
//! and `Location`.

use super::{
    AppState, S,
    auth::Verb,
    create::{self, NewRun},
    error::ApiError,
    routes::{check_namespace, not_found},
};
use crate::api::{RERUN_OF_LABEL, RERUN_ROOT_LABEL, RerunOf, WorkflowRun};
use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::HeaderMap,
    response::Response,
    routing::post,
};
use kube::{Api, ResourceExt};
use std::{collections::BTreeMap, sync::Arc};

pub(super) fn router() -> Router<Arc<AppState>> {
    let run = "/api/v1/namespaces/{namespace}/workflowruns/{name}";
    Router::new()
        .route(&format!("{run}/retry"), post(retry))
        .route(&format!("{run}/rerun"), post(rerun))
}

#[utoipa::path(
    post,
    path = "/api/v1/namespaces/{namespace}/workflowruns/{name}/retry",
    tag = "runs",
    params(super::runs::RunPath),
    request_body(
        description = "{\"params\", \"connector\"} (optional)",
        content_type = "application/json"
    ),
    responses(super::openapi::RepeatAnswers)
)]
async fn retry(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    repeat(&state, &headers, &ns, &name, body, false).await
}

#[utoipa::path(
    post,
    path = "/api/v1/namespaces/{namespace}/workflowruns/{name}/rerun",
    tag = "runs",
    params(super::runs::RunPath),
    request_body(
        description = "{\"fromStage\", \"params\", \"connector\"}",
        content_type = "application/json"
    ),
    responses(super::openapi::RepeatAnswers)
)]
async fn rerun(
    State(state): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    repeat(&state, &headers, &ns, &name, body, true).await
}

/// The labels of a run repeating `source`: its own but devset's, and the lineage.
pub fn lineage_labels(source: &WorkflowRun) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = source
        .labels()
        .iter()
        .filter(|(k, _)| !k.starts_with("devset.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let name = source.name_any();
    let root = source
        .labels()
        .get(RERUN_ROOT_LABEL)
        .cloned()
        .unwrap_or_else(|| name.clone());
    // A label value holds at most 63 characters: longer names are not labelled.
    if name.len() <= 63 {
        labels.insert(RERUN_OF_LABEL.into(), name);
    }
    if root.len() <= 63 {
        labels.insert(RERUN_ROOT_LABEL.into(), root);
    }
    labels
}

async fn repeat(
    state: &AppState,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
    body: Body,
    from_a_stage: bool,
) -> Result<Response, ApiError> {
    let bytes = create::read_body(body).await?;
    let caller = state.auth.check(headers, ns, Verb::Create, None).await?;
    check_namespace(state, ns)?;
    let m = create::json_object(&bytes)?;
    let what = if from_a_stage { "re-run" } else { "retry" };
    if !from_a_stage && m.contains_key("fromStage") {
        return Err(ApiError::bad_request(
            "fromStage: a retry runs from the start; POST …/rerun runs from a stage",
        ));
    }
    let fields: &[&str] = if from_a_stage {
        &["fromStage", "params", "connector"]
    } else {
        &["params", "connector"]
    };
    create::only_fields(&m, fields)?;
    let from_stage = if from_a_stage {
        Some(create::name_field(&m, "fromStage", true)?)
    } else {
        None
    };
    let params = create::params_field(&m)?;
    let connector = create::string_field(&m, "connector")?;
    let source = Api::<WorkflowRun>::namespaced(state.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| ApiError::unavailable(format!("reading the run: {e}")))?
        .ok_or_else(|| not_found(ns, name))?;
    let phase = source
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or_default();
    if !phase.is_finished() {
        return Err(ApiError::conflict(format!(
            "workflowrun {name:?} is {phase:?}; only a finished run can be the source of a \
             {what} (wait for it to end, or stop it)"
        )));
    }
    let (workflow, their_connector, mut all_params) = source.started_with();
    all_params.extend(params);
    let labels = lineage_labels(&source);
    let new = NewRun {
        namespace: ns.to_owned(),
        prefix: labels
            .get(RERUN_ROOT_LABEL)
            .cloned()
            .unwrap_or_else(|| name.to_owned()),
        workflow,
        connector: connector.unwrap_or(their_connector),
        params: all_params,
        labels,
        rerun_of: Some(RerunOf {
            name: name.to_owned(),
            from_stage: from_stage.clone(),
        }),
        idempotency: None,
    };
    let wf = create::check_references(state, &new).await?;
    if let Some(f) = &from_stage
        && !wf.spec.stages.iter().any(|s| &s.name == f)
    {
        let names: Vec<&str> = wf.spec.stages.iter().map(|s| s.name.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "fromStage: Workflow {:?} has no stage {f:?}; its stages are {names:?}",
            new.workflow
        )));
    }
    let created = create::create(state, &caller, new).await?;
    tracing::info!(namespace = %ns, source = %name, name = %created.run().name_any(), caller = caller.name(), "{what} created");
    Ok(create::answer(&created, created.run()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_keeps_user_labels_and_names_its_lineage() {
        let mut src: WorkflowRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "devset.io/v1alpha1", "kind": "WorkflowRun",
            "metadata": {"name": "orders-1", "labels": {"team": "pay", "devset.io/schedule": "s"}},
            "spec": {"workflowRef": {"name": "w"}, "connectorRef": {"name": "k"}}
        }))
        .unwrap();
        let l = lineage_labels(&src);
        assert_eq!(
            l,
            [
                (RERUN_OF_LABEL.to_owned(), "orders-1".to_owned()),
                (RERUN_ROOT_LABEL.to_owned(), "orders-1".to_owned()),
                ("team".to_owned(), "pay".to_owned()),
            ]
            .into()
        );
        // A repeat of a repeat keeps the root.
        src.metadata.name = Some("orders-1-x1".into());
        src.metadata.labels = Some(l);
        let l = lineage_labels(&src);
        assert_eq!(l[RERUN_OF_LABEL], "orders-1-x1");
        assert_eq!(l[RERUN_ROOT_LABEL], "orders-1");
        assert_eq!(src.started_with().0, "w");
    }
}
