//! The run lifecycle around the engine: who started a run (`status.triggeredBy`), what a retry
//! or re-run (`spec.rerunOf`) takes from the run it repeats, and the deletion of finished runs
//! `spec.ttlSecondsAfterFinished` after they ended.

use super::{Context, Result};
use crate::{
    api::{
        StagePhase, StageStatus, TRIGGERED_BY_ANNOTATION, WorkflowRun, WorkflowRunStatus,
        WorkflowSpec,
    },
    engine::{dag, runner::StageResume},
};
use k8s_openapi::jiff::Timestamp;
use kube::{
    ResourceExt,
    api::{DeleteParams, Preconditions},
    runtime::controller::Action,
};
use serde_json::Value;
use std::{collections::BTreeMap, time::Duration};
use tracing::info;

/// A run's source is missing or still running: the run waits `Pending` with this reason.
pub(super) const SOURCE_NOT_FOUND: &str = "SourceNotFound";
pub(super) const SOURCE_NOT_FINISHED: &str = "SourceNotFinished";

/// Who or what created `run`: the annotation [`TRIGGERED_BY_ANNOTATION`] (written by
/// `devset api` or the schedule controller, guarded by the chart's admission policy), else the
/// field manager that wrote its spec first (`kubectl-client-side-apply`, `helm`, …).
pub(super) fn triggered_by(run: &WorkflowRun) -> String {
    if let Some(v) = run.annotations().get(TRIGGERED_BY_ANNOTATION)
        && !v.is_empty()
    {
        return v.clone();
    }
    let entries = run.metadata.managed_fields.iter().flatten();
    let main = entries
        .filter(|e| e.subresource.as_deref().unwrap_or_default().is_empty())
        .filter(|e| e.manager.is_some());
    let owns_spec = |e: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry| {
        e.fields_v1
            .as_ref()
            .is_some_and(|f| f.0.get("f:spec").is_some())
    };
    let creator = main
        .clone()
        .filter(owns_spec)
        .min_by_key(|e| e.time.as_ref().map(|t| t.0))
        .or_else(|| main.clone().next());
    creator
        .and_then(|e| e.manager.clone())
        .unwrap_or_else(|| "unknown".into())
}

/// What a run starts with: its workflow, connector and params, resolved through the run it
/// repeats; and for a re-run, what it inherits.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Resolved {
    pub workflow: String,
    pub connector: String,
    pub params: BTreeMap<String, Value>,
    pub source: Option<Source>,
}

/// The finished run a retry or re-run repeats.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Source {
    pub name: String,
    pub from_stage: Option<String>,
    pub stages: Vec<StageStatus>,
    pub workflow: Option<WorkflowSpec>,
}

/// Why a run cannot start: it waits `Pending` (the reason may clear), or it fails (never).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Blocked {
    Wait(&'static str, String),
    Fail(&'static str, String),
}

/// Resolves `run` against the run it repeats (`source`, fetched by the caller; `None` when it
/// does not exist). Pure: the controller and the tests share it.
pub(super) fn resolve_with(
    run: &WorkflowRun,
    source: Option<&WorkflowRun>,
) -> std::result::Result<Resolved, Blocked> {
    let own = Resolved {
        workflow: run.spec.workflow_ref.name.clone(),
        connector: run.spec.connector_ref.name.clone(),
        params: run.spec.params.clone(),
        source: None,
    };
    let Some(of) = &run.spec.rerun_of else {
        return Ok(own);
    };
    let ns = run.namespace().unwrap_or_default();
    if of.name == run.name_any() {
        return Err(Blocked::Fail(
            "InvalidRerun",
            format!(
                "spec.rerunOf.name: a run cannot repeat itself ({:?})",
                of.name
            ),
        ));
    }
    let Some(src) = source else {
        return Err(Blocked::Wait(
            SOURCE_NOT_FOUND,
            format!(
                "spec.rerunOf.name: WorkflowRun {:?} not found in namespace {ns:?}; the run \
                 starts when it exists and has finished",
                of.name
            ),
        ));
    };
    let status = src.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    if !phase.is_finished() {
        return Err(Blocked::Wait(
            SOURCE_NOT_FINISHED,
            format!(
                "spec.rerunOf.name: WorkflowRun {:?} is {phase:?}; the run starts when it has \
                 finished",
                of.name
            ),
        ));
    }
    let (workflow, connector, mut params) = src.started_with();
    params.extend(run.spec.params.clone());
    let pick = |own: String, theirs: String| if own.is_empty() { theirs } else { own };
    Ok(Resolved {
        workflow: pick(own.workflow, workflow),
        connector: pick(own.connector, connector),
        params,
        source: Some(Source {
            name: of.name.clone(),
            from_stage: of.from_stage.clone(),
            stages: status.stages,
            workflow: status.workflow,
        }),
    })
}

/// Resolves `run`, fetching the run it repeats.
pub(super) async fn resolve(
    ctx: &Context,
    run: &WorkflowRun,
) -> Result<std::result::Result<Resolved, Blocked>> {
    let source = match &run.spec.rerun_of {
        Some(of) => {
            ctx.api::<WorkflowRun>(&run.namespace().unwrap_or_default())
                .get_opt(&of.name)
                .await?
        }
        None => None,
    };
    Ok(resolve_with(run, source.as_ref()))
}

/// The stages of `spec` a re-run from `source.from_stage` does not execute: those `fromStage`
/// depends on, directly or not, with their outputs from the source. Fails when `fromStage` is
/// not a stage of the workflow, or when one of those stages did not end well in the source.
pub(super) fn inherited(
    spec: &WorkflowSpec,
    workflow: &str,
    source: &Source,
) -> std::result::Result<BTreeMap<String, StageStatus>, (&'static str, String)> {
    let Some(from) = &source.from_stage else {
        return Ok(BTreeMap::new());
    };
    let Some(i) = spec.stages.iter().position(|s| &s.name == from) else {
        let names: Vec<&str> = spec.stages.iter().map(|s| s.name.as_str()).collect();
        return Err((
            "InvalidFromStage",
            format!(
                "spec.rerunOf.fromStage: Workflow {workflow:?} has no stage {from:?}; its \
                 stages are {names:?}"
            ),
        ));
    };
    let plan = dag::plan(&spec.stages).map_err(|e| ("InvalidWorkflow", e.to_string()))?;
    let continues = |name: &str| {
        source.workflow.as_ref().is_some_and(|w| {
            w.stages
                .iter()
                .any(|s| s.name == name && s.continue_on_error)
        })
    };
    let mut out = BTreeMap::new();
    for j in plan.ancestors(i) {
        let name = &spec.stages[j].name;
        let earlier = source.stages.iter().find(|s| &s.name == name);
        let ok = earlier.is_some_and(|s| match s.phase {
            StagePhase::Succeeded | StagePhase::Inherited | StagePhase::Skipped => true,
            StagePhase::Failed => continues(name),
            _ => false,
        });
        if !ok {
            let was = earlier.map_or("not in that run".to_owned(), |s| format!("{:?}", s.phase));
            return Err((
                "SourceStageNotSucceeded",
                format!(
                    "spec.rerunOf.fromStage: stage {from:?} depends on stage {name:?}, which did \
                     not succeed in run {:?} ({was}); re-run from an earlier stage",
                    source.name
                ),
            ));
        }
        let earlier = earlier.expect("checked above");
        out.insert(
            name.clone(),
            StageStatus {
                name: name.clone(),
                phase: StagePhase::Inherited,
                reason: Some("Inherited".into()),
                outputs: earlier.outputs.clone(),
                message: Some(format!(
                    "not executed: inherited from run {:?}",
                    source.name
                )),
                ..Default::default()
            },
        );
    }
    Ok(out)
}

/// What the engine resumes from for inherited stages: finished, with their outputs.
pub(super) fn resume_of(
    inherited: &BTreeMap<String, StageStatus>,
) -> BTreeMap<String, StageResume> {
    inherited
        .iter()
        .map(|(name, s)| {
            let r = StageResume {
                finished: Some(StagePhase::Inherited),
                outputs: s.outputs.clone(),
                ..Default::default()
            };
            (name.clone(), r)
        })
        .collect()
}

/// When a finished run is due for deletion, if it has a TTL.
pub(super) fn expires_at(run: &WorkflowRun, status: &WorkflowRunStatus) -> Option<Timestamp> {
    let ttl = run.spec.ttl_seconds_after_finished?.max(0);
    let done = status.completed_at.as_ref()?.0;
    done.checked_add(jiff::SignedDuration::from_secs(ttl)).ok()
}

/// A finished run: deleted once its TTL is over (the finalizer then deletes its event log),
/// else looked at again when it is due. A controller restart reconciles every run, so a due
/// time survives it.
pub(super) async fn expire(
    run: &WorkflowRun,
    status: &WorkflowRunStatus,
    ctx: &Context,
) -> Result<Action> {
    let Some(due) = expires_at(run, status) else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    if now < due {
        let wait = now.duration_until(due).unsigned_abs();
        return Ok(Action::requeue(wait.max(Duration::from_millis(100))));
    }
    if run.metadata.deletion_timestamp.is_none() {
        info!(
            ttl = run.spec.ttl_seconds_after_finished,
            "deleting the finished run: its ttlSecondsAfterFinished is over"
        );
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: run.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        let api = ctx.api::<WorkflowRun>(&run.namespace().unwrap_or_default());
        match api.delete(&run.name_any(), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LocalObjectRef, RunPhase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
    use serde_json::json;

    fn run(name: &str, spec: Value) -> WorkflowRun {
        let mut r: WorkflowRun = serde_json::from_value(json!({
            "apiVersion": "devset.io/v1alpha1", "kind": "WorkflowRun",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec
        }))
        .unwrap();
        r.status = None;
        r
    }

    fn finished(mut r: WorkflowRun, stages: Value) -> WorkflowRun {
        r.status = Some(WorkflowRunStatus {
            phase: Some(RunPhase::Failed),
            stages: serde_json::from_value(stages).unwrap(),
            ..Default::default()
        });
        r
    }

    fn workflow() -> WorkflowSpec {
        serde_json::from_value(json!({"stages": [
            {"name": "a", "delay": {"duration": "1s"}},
            {"name": "b", "delay": {"duration": "1s"}},
            {"name": "c", "delay": {"duration": "1s"}},
            {"name": "side", "dependsOn": [], "delay": {"duration": "1s"}}
        ]}))
        .unwrap()
    }

    #[test]
    fn the_annotation_wins_then_the_manager_that_wrote_the_spec() {
        let mut r = run("r", json!({"workflowRef": {"name": "w"}}));
        let entry = |manager: &str, sub: Option<&str>, f: Value, secs: i64| ManagedFieldsEntry {
            manager: Some(manager.into()),
            subresource: sub.map(Into::into),
            fields_v1: Some(FieldsV1(f)),
            time: Some(Time(Timestamp::from_second(secs).unwrap())),
            ..Default::default()
        };
        r.metadata.managed_fields = Some(vec![
            entry(
                "devset-controller",
                Some("status"),
                json!({"f:status": {}}),
                1,
            ),
            entry(
                "kube-rs",
                None,
                json!({"f:metadata": {"f:finalizers": {}}}),
                2,
            ),
            entry("kubectl-edit", None, json!({"f:spec": {"f:stop": {}}}), 9),
            entry("helm", None, json!({"f:spec": {"f:workflowRef": {}}}), 3),
        ]);
        assert_eq!(triggered_by(&r), "helm");
        r.metadata.annotations = Some([(TRIGGERED_BY_ANNOTATION.into(), "alice".into())].into());
        assert_eq!(triggered_by(&r), "alice");
        r.metadata.annotations = None;
        r.metadata.managed_fields = None;
        assert_eq!(triggered_by(&r), "unknown");
    }

    #[test]
    fn a_rerun_takes_workflow_connector_and_params_from_its_source_unless_set() {
        let mut src = run(
            "src",
            json!({"workflowRef": {"name": "w"}, "connectorRef": {"name": "k"},
                   "params": {"n": 1, "region": "eu"}}),
        );
        let new = run(
            "new",
            json!({"rerunOf": {"name": "src"}, "params": {"n": 2}}),
        );
        assert_eq!(
            resolve_with(&new, None),
            Err(Blocked::Wait(SOURCE_NOT_FOUND, "spec.rerunOf.name: WorkflowRun \"src\" not found in namespace \"ns\"; the run starts when it exists and has finished".into()))
        );
        src.status = Some(WorkflowRunStatus {
            phase: Some(RunPhase::Running),
            ..Default::default()
        });
        assert!(matches!(
            resolve_with(&new, Some(&src)),
            Err(Blocked::Wait(SOURCE_NOT_FINISHED, _))
        ));
        let src = finished(src, json!([]));
        let r = resolve_with(&new, Some(&src)).unwrap();
        assert_eq!((r.workflow.as_str(), r.connector.as_str()), ("w", "k"));
        assert_eq!(
            r.params,
            [("n".into(), json!(2)), ("region".into(), json!("eu"))].into()
        );
        // Its own refs win; a rerun of a rerun goes by what the source recorded.
        let own = run(
            "own",
            json!({"rerunOf": {"name": "src"}, "connectorRef": {"name": "other"}}),
        );
        assert_eq!(resolve_with(&own, Some(&src)).unwrap().connector, "other");
        let mut mid = finished(run("mid", json!({"rerunOf": {"name": "src"}})), json!([]));
        let st = mid.status.as_mut().unwrap();
        st.workflow_ref = Some(LocalObjectRef { name: "w".into() });
        st.connector_ref = Some(LocalObjectRef { name: "k".into() });
        st.params = Some([("n".into(), json!(5))].into());
        let last = run("last", json!({"rerunOf": {"name": "mid"}}));
        let r = resolve_with(&last, Some(&mid)).unwrap();
        assert_eq!(
            (r.workflow.as_str(), r.params["n"].clone()),
            ("w", json!(5))
        );
        let selfish = run("me", json!({"rerunOf": {"name": "me"}}));
        assert!(matches!(
            resolve_with(&selfish, None),
            Err(Blocked::Fail("InvalidRerun", _))
        ));
        let plain = run(
            "p",
            json!({"workflowRef": {"name": "w"}, "connectorRef": {"name": "k"}}),
        );
        assert_eq!(resolve_with(&plain, None).unwrap().source, None);
    }

    fn source(from: Option<&str>, stages: Value) -> Source {
        Source {
            name: "src".into(),
            from_stage: from.map(Into::into),
            stages: serde_json::from_value(stages).unwrap(),
            workflow: Some(workflow()),
        }
    }

    #[test]
    fn a_rerun_from_a_stage_inherits_what_it_depends_on_with_outputs() {
        let stages = json!([
            {"name": "a", "phase": "Succeeded", "outputs": {"published": "10"}},
            {"name": "b", "phase": "Skipped", "reason": "ConditionFalse"},
            {"name": "c", "phase": "Failed"},
            {"name": "side", "phase": "Succeeded"}
        ]);
        let got = inherited(&workflow(), "w", &source(Some("c"), stages.clone())).unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(got["a"].phase, StagePhase::Inherited);
        assert_eq!(got["a"].outputs["published"], "10");
        let resume = resume_of(&got);
        assert_eq!(resume["a"].finished, Some(StagePhase::Inherited));
        assert_eq!(resume["a"].outputs["published"], "10");
        // A retry inherits nothing; a stage with no dependencies neither.
        assert!(
            inherited(&workflow(), "w", &source(None, stages.clone()))
                .unwrap()
                .is_empty()
        );
        assert!(
            inherited(&workflow(), "w", &source(Some("a"), stages.clone()))
                .unwrap()
                .is_empty()
        );
        assert!(
            inherited(&workflow(), "w", &source(Some("side"), stages.clone()))
                .unwrap()
                .is_empty()
        );
        // An unknown stage, or one whose ancestors did not succeed, can never work.
        let (reason, msg) =
            inherited(&workflow(), "w", &source(Some("nope"), stages.clone())).unwrap_err();
        assert_eq!(reason, "InvalidFromStage");
        assert!(
            msg.starts_with("spec.rerunOf.fromStage: Workflow \"w\" has no stage \"nope\""),
            "{msg}"
        );
        let failed_a = json!([{"name": "a", "phase": "Failed"}]);
        let (reason, msg) = inherited(&workflow(), "w", &source(Some("b"), failed_a)).unwrap_err();
        assert_eq!(reason, "SourceStageNotSucceeded");
        assert!(
            msg.contains("stage \"a\", which did not succeed in run \"src\" (Failed)"),
            "{msg}"
        );
    }

    #[test]
    fn the_ttl_counts_from_completion() {
        let mut r = run("r", json!({"workflowRef": {"name": "w"}}));
        let st = WorkflowRunStatus {
            completed_at: Some(Time(Timestamp::from_second(1_000).unwrap())),
            ..Default::default()
        };
        assert_eq!(expires_at(&r, &st), None);
        r.spec.ttl_seconds_after_finished = Some(60);
        assert_eq!(
            expires_at(&r, &st),
            Some(Timestamp::from_second(1_060).unwrap())
        );
        assert_eq!(expires_at(&r, &WorkflowRunStatus::default()), None);
    }
}
