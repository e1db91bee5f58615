//! Deciding approval stages: `POST …/workflowruns/{name}/stages/{stage}/approve` and
//! `…/reject`, body `{"comment": "…"}` (optional).
//!
//! The checks, in order, each with its answer:
//! - 401: no bearer token, or one the TokenReview does not accept;
//! - 403: the SubjectAccessReview denies the custom verb `approve` on `workflowruns.devset.io`
//!   (the run, in its namespace);
//! - 400: a body that is not `{"comment": "…"}`, or a comment longer than 1024 characters;
//! - 404: the namespace is not served, the run does not exist, or its pinned workflow
//!   (`status.workflow`) has no such stage;
//! - 400: the stage exists but is not an approval stage (it takes no decisions; a path that
//!   exists for no stage of that kind is a mistake of the request, not a missing object);
//! - 403: the stage's `approvers` are set and do not admit the caller (user name or groups of
//!   the TokenReview);
//! - 409: the run has not started (no pinned workflow yet) or has ended, the stage is not
//!   `WaitingForApproval`, or a decision is already written on the run.
//!
//! On success the decision goes onto the run as the annotation `approval.devset.io/{stage}`
//! (an [`ApprovalRecord`] as JSON: decision, the TokenReview's user name, comment, now), with a
//! JSON merge patch (field manager `devset-api`) that carries the `resourceVersion` it checked:
//! two deciders at once cannot both win, and a concurrent status write makes it check again.
//! The controller reads the annotation and feeds it to the waiting stage. With `--auth=none`
//! there are no checks (not even `approvers`) and the user is `anonymous`.

use super::{
    AppState,
    auth::Verb,
    error::ApiError,
    routes::{check_namespace, not_found},
};
use crate::api::{
    ApprovalRecord, Decision, StagePhase, WorkflowRun, WorkflowRunStatus, approval_annotation,
};
use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::HeaderMap,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The longest comment, in characters (as `ApprovalRecord.comment` allows).
pub const MAX_COMMENT_CHARS: usize = 1024;
/// The field manager of the annotation writes.
const FIELD_MANAGER: &str = "devset-api";
/// How often a write that lost a race with another write of the run is checked and tried again.
const ATTEMPTS: usize = 5;

/// The body of a decision: everything is optional, an empty body too.
#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Why, for the record (at most 1024 characters).
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
}

/// The answer to a decision that was recorded on the run.
#[derive(Serialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Decided {
    pub namespace: String,
    pub name: String,
    pub stage: String,
    /// `Approved` or `Rejected`.
    pub decision: Decision,
    /// Who decided: the caller's Kubernetes user name (`anonymous` with `--auth=none`).
    pub user: String,
}

#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/workflowruns/{name}/stages/{stage}/approve",
    tag = "approvals",
    params(super::runs::RunPath, ("stage" = String, Path, description = "The approval stage")),
    request_body = DecisionRequest,
    responses(super::openapi::DecisionAnswers))]
pub(super) async fn approve(
    State(state): State<Arc<AppState>>,
    Path((ns, name, stage)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Decided>, ApiError> {
    decide(
        &state,
        &headers,
        &ns,
        &name,
        &stage,
        Decision::Approved,
        &body,
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/workflowruns/{name}/stages/{stage}/reject",
    tag = "approvals",
    params(super::runs::RunPath, ("stage" = String, Path, description = "The approval stage")),
    request_body = DecisionRequest,
    responses(super::openapi::DecisionAnswers))]
pub(super) async fn reject(
    State(state): State<Arc<AppState>>,
    Path((ns, name, stage)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Decided>, ApiError> {
    decide(
        &state,
        &headers,
        &ns,
        &name,
        &stage,
        Decision::Rejected,
        &body,
    )
    .await
}

/// The comment of a request body (empty, or `{"comment": "…"}`).
fn comment(body: &[u8]) -> Result<Option<String>, ApiError> {
    let req: DecisionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body must be empty or a JSON object {{\"comment\": \"…\"}}: {e}"
            ))
        })?
    };
    let comment = req.comment.filter(|c| !c.trim().is_empty());
    if let Some(c) = &comment {
        let n = c.chars().count();
        if n > MAX_COMMENT_CHARS {
            return Err(ApiError::bad_request(format!(
                "the comment has {n} characters; at most {MAX_COMMENT_CHARS} are allowed"
            )));
        }
    }
    Ok(comment)
}

fn verb_of(d: Decision) -> &'static str {
    match d {
        Decision::Approved => "approved",
        Decision::Rejected => "rejected",
    }
}

/// Why `stage` of `run` cannot take a decision now (409), or `None` when it can. Checks the
/// pinned workflow, the stage's kind and `approvers` first (404, 400, 403 as errors).
fn check_stage(
    run: &WorkflowRun,
    stage: &str,
    caller_user: &str,
    caller_groups: &[String],
    check_approvers: bool,
) -> Result<Option<String>, ApiError> {
    let name = run.name_any();
    let none = WorkflowRunStatus::default();
    let status = run.status.as_ref().unwrap_or(&none);
    let phase = status.phase.unwrap_or_default();
    let Some(workflow) = status.workflow.as_ref() else {
        // Not started: no pinned workflow tells which stages it has.
        return Ok(Some(format!(
            "run {name:?} has not started (its phase is {phase:?}); stage {stage:?} is not \
             waiting for approval"
        )));
    };
    let Some(spec) = workflow.stages.iter().find(|s| s.name == stage) else {
        let known: Vec<&str> = workflow.stages.iter().map(|s| s.name.as_str()).collect();
        return Err(ApiError::not_found(format!(
            "run {name:?} has no stage {stage:?}; its stages are {known:?}"
        )));
    };
    let Some(approval) = spec.approval.as_ref() else {
        let kind = if spec.publish.is_some() {
            "a publish"
        } else if spec.delay.is_some() {
            "a delay"
        } else if spec.expect.is_some() {
            "an expect"
        } else {
            "not an approval"
        };
        return Err(ApiError::bad_request(format!(
            "stage {stage:?} of run {name:?} is {kind} stage; only approval stages take \
             decisions"
        )));
    };
    if check_approvers
        && let Some(approvers) = &approval.approvers
        && !approvers.admits(caller_user, caller_groups)
    {
        let mut who = Vec::new();
        if !approvers.users.is_empty() {
            who.push(format!("the users {:?}", approvers.users));
        }
        if !approvers.groups.is_empty() {
            who.push(format!("members of the groups {:?}", approvers.groups));
        }
        let who = if who.is_empty() {
            "nobody (its approvers list no user and no group)".to_owned()
        } else {
            who.join(" and ")
        };
        return Err(ApiError::forbidden(format!(
            "{caller_user} is not an approver of stage {stage:?} of run {name:?}: only {who} \
             may decide it"
        )));
    }
    if let Some(earlier) = run.decisions().get(stage) {
        return Ok(Some(match earlier {
            Ok(r) => format!(
                "stage {stage:?} of run {name:?} was already {} by {}{}",
                verb_of(r.decision),
                r.user,
                r.time
                    .as_ref()
                    .map(|t| format!(" at {}", t.0))
                    .unwrap_or_default()
            ),
            Err(e) => format!(
                "stage {stage:?} of run {name:?} already carries a decision ({e}); remove the \
                 annotation {} to decide again",
                approval_annotation(stage)
            ),
        }));
    }
    if phase.is_finished() {
        return Ok(Some(format!(
            "run {name:?} has already ended ({phase:?}); stage {stage:?} takes no decision"
        )));
    }
    let st = status.stages.iter().find(|s| s.name == stage);
    match st {
        Some(s) if s.phase == StagePhase::WaitingForApproval => Ok(None),
        Some(s) => {
            let by = s
                .approval
                .as_ref()
                .map(|r| format!(" ({} by {})", verb_of(r.decision), r.user))
                .unwrap_or_default();
            Ok(Some(format!(
                "stage {stage:?} of run {name:?} is not waiting for approval: it is {:?}{by}",
                s.phase
            )))
        }
        None => Ok(Some(format!(
            "stage {stage:?} of run {name:?} is not waiting for approval: it has not started \
             (the run is {phase:?})"
        ))),
    }
}

async fn decide(
    state: &AppState,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
    stage: &str,
    decision: Decision,
    body: &[u8],
) -> Result<Json<Decided>, ApiError> {
    let caller = state
        .auth
        .check(headers, ns, Verb::Approve, Some(name))
        .await?;
    let comment = comment(body)?;
    check_namespace(state, ns)?;
    let user = caller.name().to_owned();
    let groups = caller.user.groups.clone().unwrap_or_default();
    let api: Api<WorkflowRun> = Api::namespaced(state.client.clone(), ns);
    for _ in 0..ATTEMPTS {
        let run = api
            .get_opt(name)
            .await
            .map_err(|e| ApiError::unavailable(format!("reading the run: {e}")))?
            .ok_or_else(|| not_found(ns, name))?;
        if let Some(why) = check_stage(&run, stage, &user, &groups, state.auth.checks())? {
            return Err(ApiError::conflict(why));
        }
        let record = ApprovalRecord {
            decision,
            user: user.clone(),
            comment: comment.clone(),
            time: Some(Time(jiff::Timestamp::now())),
        };
        let value = serde_json::to_string(&record)
            .map_err(|e| ApiError::internal(format!("encoding the decision: {e}")))?;
        // The resourceVersion is a precondition: the patch fails with 409 when the run changed
        // since it was checked.
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": run.resource_version(),
                "annotations": { approval_annotation(stage): value },
            }
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(
                    namespace = %ns,
                    name = %name,
                    stage = %stage,
                    decision = ?decision,
                    user = %user,
                    comment = comment.as_deref().unwrap_or(""),
                    "approval decided through the API"
                );
                return Ok(Json(Decided {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    stage: stage.to_owned(),
                    decision,
                    user,
                }));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => return Err(not_found(ns, name)),
            Err(e) => {
                return Err(ApiError::unavailable(format!(
                    "writing the decision on the run: {e}"
                )));
            }
        }
    }
    Err(ApiError::conflict(format!(
        "run {name:?} kept changing while the decision was written ({ATTEMPTS} attempts); try \
         again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        ApprovalAction, Approvers, DelayAction, RunPhase, Stage, StageStatus, WorkflowSpec,
    };
    use axum::http::StatusCode;

    fn run(phase: StagePhase, approvers: Option<Approvers>) -> WorkflowRun {
        let mut run = WorkflowRun::new("r1", Default::default());
        run.metadata.namespace = Some("ns".into());
        run.status = Some(WorkflowRunStatus {
            phase: Some(RunPhase::WaitingForApproval),
            workflow: Some(WorkflowSpec {
                stages: vec![
                    Stage {
                        name: "wait".into(),
                        delay: Some(DelayAction {
                            duration: "1s".into(),
                        }),
                        ..Default::default()
                    },
                    Stage {
                        name: "go-live".into(),
                        approval: Some(ApprovalAction {
                            approvers,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            stages: vec![StageStatus {
                name: "go-live".into(),
                phase,
                ..Default::default()
            }],
            ..Default::default()
        });
        run
    }

    fn code(r: Result<Option<String>, ApiError>) -> u16 {
        match r {
            Ok(None) => 200,
            Ok(Some(_)) => 409,
            Err(e) => e.code.as_u16(),
        }
    }

    #[test]
    fn a_waiting_approval_stage_takes_a_decision_from_an_approver() {
        let approvers = Approvers {
            users: vec!["alice".into()],
            groups: vec!["release-managers".into()],
        };
        let r = run(StagePhase::WaitingForApproval, Some(approvers));
        assert_eq!(code(check_stage(&r, "go-live", "alice", &[], true)), 200);
        let groups = ["release-managers".to_owned()];
        assert_eq!(code(check_stage(&r, "go-live", "bob", &groups, true)), 200);
        let e = check_stage(&r, "go-live", "bob", &[], true).unwrap_err();
        assert_eq!(e.code, StatusCode::FORBIDDEN);
        assert!(
            e.message.contains("alice") && e.message.contains("release-managers"),
            "{}",
            e.message
        );
        // --auth=none: no approvers check.
        assert_eq!(
            code(check_stage(&r, "go-live", "anonymous", &[], false)),
            200
        );
    }

    #[test]
    fn unknown_stages_other_kinds_and_stages_not_waiting_are_refused() {
        let r = run(StagePhase::WaitingForApproval, None);
        assert_eq!(code(check_stage(&r, "nope", "u", &[], true)), 404);
        let e = check_stage(&r, "wait", "u", &[], true).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("a delay stage"), "{}", e.message);
        let r = run(StagePhase::Pending, None);
        let why = check_stage(&r, "go-live", "u", &[], true).unwrap().unwrap();
        assert!(why.contains("it is Pending"), "{why}");
        let mut r = run(StagePhase::WaitingForApproval, None);
        r.status.as_mut().unwrap().workflow = None;
        assert_eq!(code(check_stage(&r, "go-live", "u", &[], true)), 409);
    }

    #[test]
    fn a_decision_already_written_is_a_conflict_naming_who_decided() {
        let mut r = run(StagePhase::WaitingForApproval, None);
        let earlier = ApprovalRecord {
            decision: Decision::Rejected,
            user: "carol".into(),
            comment: None,
            time: None,
        };
        r.annotations_mut().insert(
            approval_annotation("go-live"),
            serde_json::to_string(&earlier).unwrap(),
        );
        let why = check_stage(&r, "go-live", "u", &[], true).unwrap().unwrap();
        assert!(why.contains("already rejected by carol"), "{why}");
    }

    #[test]
    fn comments_are_optional_and_at_most_1024_characters() {
        assert_eq!(comment(b"").unwrap(), None);
        assert_eq!(comment(b"{}").unwrap(), None);
        assert_eq!(
            comment(br#"{"comment":"ship it"}"#).unwrap().as_deref(),
            Some("ship it")
        );
        let long = format!(r#"{{"comment":"{}"}}"#, "é".repeat(1024));
        assert!(comment(long.as_bytes()).is_ok());
        let long = format!(r#"{{"comment":"{}"}}"#, "x".repeat(1025));
        assert_eq!(
            comment(long.as_bytes()).unwrap_err().code,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            comment(br#"{"coment":"typo"}"#).unwrap_err().code,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(comment(b"yes").unwrap_err().code, StatusCode::BAD_REQUEST);
    }
}
