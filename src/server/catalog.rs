//! What the web page lists to offer choices, and what the caller may do:
//!
//! - `GET /api/v1/namespaces`: the namespaces this API serves (`--namespace`), else those that
//!   hold runs or Workflows; of these, only those where the caller may `list` workflowruns.
//! - `GET /api/v1/namespaces/{ns}/workflows` (`list` on workflows): each Workflow's params and
//!   stages, for the New Run form.
//! - `GET /api/v1/namespaces/{ns}/brokerconnectors` (`list` on brokerconnectors): each
//!   connector's name and broker type, nothing else (no address, no Secret).
//! - `GET /api/v1/namespaces/{ns}/permissions`: which of the page's actions the caller may take
//!   there, each with the reason when not (SubjectAccessReviews, as the action's route would).

use super::{
    AppState, S,
    auth::{Caller, Verb},
    error::ApiError,
    routes::check_namespace,
};
use crate::api::{BrokerConnector, ParamType, Stage, Workflow};
use axum::{
    Json,
    extract::{Path, State},
    http::HeaderMap,
};
use futures::{StreamExt, TryStreamExt};
use kube::{Api, ResourceExt, api::ListParams};
use serde::Serialize;
use serde_json::Value;
use std::{collections::BTreeSet, sync::Arc};
use utoipa_axum::{router::OpenApiRouter, routes};

/// SubjectAccessReviews asked at once.
const REVIEWS_AT_ONCE: usize = 16;

pub(super) fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(namespaces))
        .routes(routes!(workflows))
        .routes(routes!(connectors))
        .routes(routes!(permissions))
}

/// Namespaces, by name.
#[derive(Serialize, schemars::JsonSchema)]
pub struct NamespaceList {
    pub items: Vec<String>,
}

/// The Workflows of a namespace, by name.
#[derive(Serialize, schemars::JsonSchema)]
pub struct WorkflowList {
    pub items: Vec<WorkflowSummary>,
}

/// A Workflow, as the New Run form needs it.
#[derive(Serialize, schemars::JsonSchema, Debug, PartialEq)]
pub struct WorkflowSummary {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub params: Vec<ParamSummary>,
    pub stages: Vec<StageSummary>,
}

/// A param of a Workflow.
#[derive(Serialize, schemars::JsonSchema, Debug, PartialEq)]
pub struct ParamSummary {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: ParamType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The action of a stage.
#[derive(Serialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Publish,
    Delay,
    Approval,
    Expect,
}

/// A stage of a Workflow.
#[derive(Serialize, schemars::JsonSchema, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageSummary {
    pub name: String,
    pub kind: StageKind,
    /// The stages it waits for: its `dependsOn`, or without one the stage before it in the
    /// list (none for the first).
    pub depends_on: Vec<String>,
}

fn stage_kind(s: &Stage) -> StageKind {
    if s.delay.is_some() {
        StageKind::Delay
    } else if s.approval.is_some() {
        StageKind::Approval
    } else if s.expect.is_some() {
        StageKind::Expect
    } else {
        StageKind::Publish
    }
}

pub(super) fn workflow_summary(w: &Workflow) -> WorkflowSummary {
    let stages = &w.spec.stages;
    WorkflowSummary {
        name: w.name_any(),
        description: w.spec.description.clone(),
        params: w
            .spec
            .params
            .iter()
            .map(|p| ParamSummary {
                name: p.name.clone(),
                type_: p.r#type,
                default: p.default.clone(),
                required: p.required,
                description: p.description.clone(),
            })
            .collect(),
        stages: stages
            .iter()
            .enumerate()
            .map(|(i, s)| StageSummary {
                name: s.name.clone(),
                kind: stage_kind(s),
                depends_on: s.depends_on.clone().unwrap_or_else(|| {
                    i.checked_sub(1)
                        .map(|p| stages[p].name.clone())
                        .into_iter()
                        .collect()
                }),
            })
            .collect(),
    }
}

/// The BrokerConnectors of a namespace, by name.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ConnectorList {
    pub items: Vec<ConnectorSummary>,
}

/// The broker a connector reaches.
#[derive(Serialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BrokerType {
    Kafka,
    Rabbitmq,
}

/// A BrokerConnector: its name and broker type only.
#[derive(Serialize, schemars::JsonSchema, Debug, PartialEq)]
pub struct ConnectorSummary {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: BrokerType,
}

/// What the caller may do in a namespace.
#[derive(Serialize, schemars::JsonSchema, Debug, PartialEq)]
pub struct Permissions {
    pub user: String,
    pub actions: Actions,
}

/// The page's actions: `create` (a run: `create` workflowruns), `stop` (`patch`), `delete`,
/// `approve` (the verb `approve`), `export` (`get`), `fire` (a schedule: `create`
/// workflowruns), `suspend` (`patch` workflowschedules).
#[derive(Serialize, schemars::JsonSchema, Debug, PartialEq)]
pub struct Actions {
    pub create: Allowed,
    pub stop: Allowed,
    pub delete: Allowed,
    pub approve: Allowed,
    pub export: Allowed,
    pub fire: Allowed,
    pub suspend: Allowed,
}

/// Whether an action is allowed, and why not when it is not.
#[derive(Serialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
pub struct Allowed {
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn unavailable(what: &str, e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            ApiError::forbidden(format!("devset api may not list {what}: {}", s.message))
        }
        e => ApiError::unavailable(format!("listing {what}: {e}")),
    }
}

/// The namespaces the caller may list runs in: those this API serves, else those that hold
/// runs or Workflows.
#[utoipa::path(get, path = "/api/v1/namespaces", tag = "catalog",
    responses((status = 200, body = NamespaceList)))]
async fn namespaces(State(state): S, headers: HeaderMap) -> Result<Json<NamespaceList>, ApiError> {
    let caller = state.auth.caller(&headers).await?;
    let mut names: BTreeSet<String> = state.namespaces.iter().cloned().collect();
    if names.is_empty() {
        names.extend(state.runs.state().iter().filter_map(|r| r.namespace()));
        match Api::<Workflow>::all(state.client.clone())
            .list_metadata(&ListParams::default())
            .await
        {
            Ok(list) => names.extend(list.items.iter().filter_map(|w| w.namespace())),
            // Still useful without: the namespaces with runs.
            Err(e) => tracing::warn!(error = %e, "cannot list Workflows in all namespaces"),
        }
    }
    let caller = &caller;
    let state = &state;
    let items = futures::stream::iter(names)
        .map(|ns| async move {
            let denied = state.auth.denial(caller, &ns, Verb::List, None).await?;
            Ok::<_, ApiError>(denied.is_none().then_some(ns))
        })
        .buffered(REVIEWS_AT_ONCE)
        .try_filter_map(|ns| async move { Ok(ns) })
        .try_collect()
        .await?;
    Ok(Json(NamespaceList { items }))
}

/// The Workflows of a namespace with their params and stages (needs `list` on workflows).
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/workflows", tag = "catalog",
    params(("namespace" = String, Path, description = "The namespace")),
    responses((status = 200, body = WorkflowList),
        (status = 403, description = "No `list` on workflows"),
        (status = 404, description = "A namespace this API does not serve")))]
async fn workflows(
    State(state): S,
    Path(ns): Path<String>,
    headers: HeaderMap,
) -> Result<Json<WorkflowList>, ApiError> {
    state
        .auth
        .check(&headers, &ns, Verb::ListWorkflows, None)
        .await?;
    check_namespace(&state, &ns)?;
    let list = Api::<Workflow>::namespaced(state.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| unavailable("Workflows", e))?;
    let mut items: Vec<_> = list.items.iter().map(workflow_summary).collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(WorkflowList { items }))
}

/// The BrokerConnectors of a namespace: name and broker type (needs `list` on
/// brokerconnectors).
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/brokerconnectors", tag = "catalog",
    params(("namespace" = String, Path, description = "The namespace")),
    responses((status = 200, body = ConnectorList),
        (status = 403, description = "No `list` on brokerconnectors"),
        (status = 404, description = "A namespace this API does not serve")))]
async fn connectors(
    State(state): S,
    Path(ns): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ConnectorList>, ApiError> {
    state
        .auth
        .check(&headers, &ns, Verb::ListConnectors, None)
        .await?;
    check_namespace(&state, &ns)?;
    let list = Api::<BrokerConnector>::namespaced(state.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| unavailable("BrokerConnectors", e))?;
    let mut items: Vec<_> = list.items.iter().filter_map(connector_summary).collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(ConnectorList { items }))
}

fn connector_summary(c: &BrokerConnector) -> Option<ConnectorSummary> {
    let type_ = match (&c.spec.kafka, &c.spec.rabbitmq) {
        (Some(_), _) => BrokerType::Kafka,
        (None, Some(_)) => BrokerType::Rabbitmq,
        (None, None) => return None,
    };
    Some(ConnectorSummary {
        name: c.name_any(),
        type_,
    })
}

/// Which of the page's actions the caller may take in the namespace, and why not.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/permissions", tag = "catalog",
    params(("namespace" = String, Path, description = "The namespace")),
    responses((status = 200, body = Permissions),
        (status = 404, description = "A namespace this API does not serve")))]
async fn permissions(
    State(state): S,
    Path(ns): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Permissions>, ApiError> {
    let caller = state.auth.caller(&headers).await?;
    check_namespace(&state, &ns)?;
    let may = |verb| allowed(&state, &caller, &ns, verb);
    let (create, stop, delete, approve, export, suspend) = futures::try_join!(
        may(Verb::Create),
        may(Verb::Patch),
        may(Verb::Delete),
        may(Verb::Approve),
        may(Verb::Get),
        may(Verb::PatchSchedule),
    )?;
    Ok(Json(Permissions {
        user: caller.name().to_owned(),
        actions: Actions {
            fire: create.clone(),
            create,
            stop,
            delete,
            approve,
            export,
            suspend,
        },
    }))
}

async fn allowed(
    state: &AppState,
    caller: &Caller,
    ns: &str,
    verb: Verb,
) -> Result<Allowed, ApiError> {
    let reason = state.auth.denial(caller, ns, verb, None).await?;
    Ok(Allowed {
        allowed: reason.is_none(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ParamSpec, WorkflowSpec};

    fn stage(name: &str, depends_on: Option<&[&str]>, yaml_action: &str) -> Stage {
        let mut s: Stage = serde_yaml::from_str(yaml_action).unwrap();
        s.name = name.into();
        s.depends_on = depends_on.map(|d| d.iter().map(|s| s.to_string()).collect());
        s
    }

    #[test]
    fn a_workflow_lists_its_params_and_each_stage_kind_and_what_it_waits_for() {
        let w = Workflow::new(
            "orders",
            WorkflowSpec {
                description: Some("Orders".into()),
                params: vec![
                    ParamSpec {
                        name: "count".into(),
                        r#type: ParamType::Integer,
                        default: Some(10.into()),
                        ..Default::default()
                    },
                    ParamSpec {
                        name: "region".into(),
                        required: true,
                        description: Some("where".into()),
                        ..Default::default()
                    },
                ],
                stages: vec![
                    stage("a", None, "{name: x, publish: {topic: t, count: 1}}"),
                    stage("b", None, "{name: x, delay: {duration: 1s}}"),
                    stage("c", Some(&["a"]), "{name: x, approval: {}}"),
                    stage("d", Some(&[]), "{name: x, expect: {topic: t, count: 1}}"),
                ],
            },
        );
        let json = serde_json::to_value(workflow_summary(&w)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "orders",
                "description": "Orders",
                "params": [
                    {"name": "count", "type": "integer", "default": 10, "required": false},
                    {"name": "region", "type": "string", "required": true, "description": "where"},
                ],
                "stages": [
                    {"name": "a", "kind": "publish", "dependsOn": []},
                    {"name": "b", "kind": "delay", "dependsOn": ["a"]},
                    {"name": "c", "kind": "approval", "dependsOn": ["a"]},
                    {"name": "d", "kind": "expect", "dependsOn": []},
                ],
            })
        );
    }

    #[test]
    fn a_connector_shows_its_broker_type_only() {
        let c: BrokerConnector = serde_yaml::from_str(
            "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {name: r}\n\
             spec: {rabbitmq: {url: 'amqp://h:5672', secretRef: {name: s}}}",
        )
        .unwrap();
        let json = serde_json::to_value(connector_summary(&c).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"name": "r", "type": "rabbitmq"}));
    }
}
