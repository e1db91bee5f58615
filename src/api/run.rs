use crate::api::WorkflowSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which workflow to run, against which connector, with which params.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "devset.io",
    version = "v1alpha1",
    kind = "WorkflowRun",
    plural = "workflowruns",
    shortname = "wfr",
    shortname = "run",
    shortname = "runs",
    namespaced,
    doc = "One execution of a Workflow against a BrokerConnector. The controller drives its stages and reports the phase and per-stage progress in status. A finished run is never retried; to run again, create a new WorkflowRun.",
    status = "WorkflowRunStatus",
    printcolumn(
        name = "Workflow",
        type_ = "string",
        json_path = ".spec.workflowRef.name"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress",
        description = "stages done/total"
    ),
    printcolumn(
        name = "Messages",
        type_ = "integer",
        json_path = ".status.messagesPublished"
    ),
    printcolumn(
        name = "Connector",
        type_ = "string",
        json_path = ".spec.connectorRef.name",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        priority = 1
    ),
    printcolumn(
        name = "TriggeredBy",
        type_ = "string",
        json_path = ".status.triggeredBy",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.workflowRef) || has(self.rerunOf)")
    .message("spec.workflowRef is required unless spec.rerunOf names the run to repeat")
    .field_path(".workflowRef")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("has(self.connectorRef) || has(self.rerunOf)")
    .message("spec.connectorRef is required unless spec.rerunOf names the run to repeat")
    .field_path(".connectorRef")
    .reason(Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRunSpec {
    /// The `Workflow` to run, in the same namespace. Cannot change once the run exists.
    /// Optional with `rerunOf`: the repeated run's workflow (as it is now).
    // An absent ref reads as an empty name (and is not written back), so that code reading
    // `spec.workflowRef.name` keeps working; `WorkflowRun::workflow_name` resolves it.
    #[serde(default, skip_serializing_if = "LocalObjectRef::is_empty")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("cannot change once the run exists; create a new run instead"))]
    pub workflow_ref: LocalObjectRef,
    /// The `BrokerConnector` to publish through, in the same namespace. Cannot change once the
    /// run exists. Optional with `rerunOf`: the repeated run's connector.
    #[serde(default, skip_serializing_if = "LocalObjectRef::is_empty")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("cannot change once the run exists; create a new run instead"))]
    pub connector_ref: LocalObjectRef,
    /// Values for the workflow's params, by name. Unset params take their default (with
    /// `rerunOf`: the repeated run's value first). The run uses the values it had when it
    /// started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::api::map_of_any_value")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Set to true to stop the run gracefully: publishing halts at the next message, in-flight
    /// deliveries are awaited, and the run ends `Stopped`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop: bool,
    /// Repeat an earlier run of the same namespace: a retry (from the start), or a re-run from
    /// `fromStage`. The run uses the current Workflow; `workflowRef`, `connectorRef` and each
    /// param default to the earlier run's. The earlier run must have finished (until then this
    /// run waits `Pending`) and is never modified. Read when the run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<RerunOf>,
    /// Delete the run (and its event log) this many seconds after it finished. Unset: kept
    /// until deleted (its event log expires with the event store's retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// The run that a retry or re-run repeats.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RerunOf {
    /// The earlier WorkflowRun, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Run from this stage: the stages it depends on (directly or not) are not executed; they
    /// are `Inherited`, with their outputs copied from the earlier run. Unset: a retry from the
    /// start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub from_stage: Option<String>,
}

/// A reference to an object in the same namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct LocalObjectRef {
    /// The object's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl LocalObjectRef {
    /// No name: the reference was left out.
    pub fn is_empty(&self) -> bool {
        self.name.is_empty()
    }
}

/// Where a run is in its life.
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum RunPhase {
    /// Accepted, not started yet: queued for a slot, or waiting for its references.
    #[default]
    Pending,
    /// Stages are executing.
    Running,
    /// A stop was asked; in-flight stage work is finishing.
    Stopping,
    /// An approval stage waits for a person's decision and no other stage is executing.
    WaitingForApproval,
    /// Halted by a stop before completion.
    Stopped,
    /// Every stage succeeded (or, with `continueOnError`, ended: reason
    /// `CompletedWithFailures`).
    Completed,
    /// An unrecoverable error; `reason` and `message` say which stage and why.
    Failed,
}

impl RunPhase {
    /// The run is over and will not change again.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Stopped | Self::Completed | Self::Failed)
    }
}

/// Where a stage is in its life.
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum StagePhase {
    /// Waiting for the stages it depends on.
    #[default]
    Pending,
    /// Executing.
    Running,
    /// An approval stage waits for a person's decision.
    WaitingForApproval,
    /// Done.
    Succeeded,
    /// Failed after its retries.
    Failed,
    /// Halted by a stop.
    Stopped,
    /// Not executed: its `when` was false (reason `ConditionFalse`), or the run failed or
    /// stopped first.
    Skipped,
    /// Not executed in this run: a re-run took its result and outputs from the earlier run.
    Inherited,
}

impl StagePhase {
    /// The stage is over, and counts as done for the stages that depend on it unless it
    /// `Failed` (without `continueOnError`) or `Stopped`.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Stopped | Self::Skipped | Self::Inherited
        )
    }
}

/// The run's progress as the controller last wrote it.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRunStatus {
    /// `Pending`, `Running`, `Stopping`, `WaitingForApproval`, `Stopped`, `Completed` or
    /// `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// A CamelCase word for why the run is in its phase, e.g. `Queued`, `WorkflowNotFound`,
    /// `StageFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence for people: what happened, in which stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Succeeded`: `Unknown` while in flight, `True` on `Completed`, `False` on `Failed` or
    /// `Stopped`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the first stage started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Stages done out of all stages, e.g. `2/5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Messages the brokers acknowledged, over all stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_published: Option<i64>,
    /// One entry per stage, in workflow order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub stages: Vec<StageStatus>,
    /// The workflow spec as it was when the run started. The run executes this copy, so
    /// editing the Workflow does not change a run in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::pinned_workflow")]
    pub workflow: Option<WorkflowSpec>,
    /// Who or what created the run: the Kubernetes user for runs created through `devset api`,
    /// `schedule/NAME` for scheduled runs, else the field manager that created it (e.g.
    /// `kubectl-client-side-apply`, `helm`). Written once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_by: Option<String>,
    /// The Workflow the run started (its own `workflowRef`, or the repeated run's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_ref: Option<LocalObjectRef>,
    /// The BrokerConnector the run started with (its own, or the repeated run's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_ref: Option<LocalObjectRef>,
    /// The params the run was given when it started (its own over the repeated run's); unset
    /// params took the workflow's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::map_of_any_value")]
    pub params: Option<BTreeMap<String, serde_json::Value>>,
}

/// The progress of one stage.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// The stage's name.
    pub name: String,
    /// `Pending`, `Running`, `WaitingForApproval`, `Succeeded`, `Failed`, `Stopped`,
    /// `Skipped` or `Inherited`.
    #[serde(default)]
    pub phase: StagePhase,
    /// A CamelCase word for why the stage ended as it did, e.g. `ConditionFalse`, `Rejected`,
    /// `ExpectationNotMet`, `Timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the stage's first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the stage finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Attempts so far (1 plus the retries used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// Messages of this stage the broker acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<i64>,
    /// Messages an expect stage found matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<i64>,
    /// What the stage produced, for later stages (`{{ stages.NAME.outputs.KEY }}`): publish
    /// stages `published`; expect stages `received`, `read` and their captures; approval stages
    /// `decision`, `user` and `comment`. At most 32 keys, values cut at 1 KiB.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// The decision of an approval stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRecord>,
    /// What happened, e.g. the error of a failed stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The decision on an approval stage.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// `Approved` or `Rejected`.
    pub decision: Decision,
    /// Who decided: a Kubernetes user name, or `devset:timeout` when the stage's timeout
    /// decided.
    pub user: String,
    /// What the person said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// An approval decision.
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum Decision {
    #[default]
    Approved,
    Rejected,
}

/// The annotation that names who or what created a run: the Kubernetes user for runs created
/// through `devset api` (`system:serviceaccount:NS:NAME`, `alice`), `schedule/NAME` for runs a
/// WorkflowSchedule created. Set once at creation; the controller copies it into
/// `status.triggeredBy`. The chart's admission policy lets a creator set it only to their own
/// user name, and nobody but the operator or a cluster admin change or remove it.
pub const TRIGGERED_BY_ANNOTATION: &str = "devset.io/triggered-by";

/// The label of a run created as a retry or re-run: the name of the run it repeats.
pub const RERUN_OF_LABEL: &str = "devset.io/rerun-of";

/// The label of a run created as a retry or re-run: the first run of its lineage (the source's
/// own root label, or the source's name when it has none), so that
/// `kubectl get runs -l devset.io/rerun-root=RUN` lists every repetition of RUN.
pub const RERUN_ROOT_LABEL: &str = "devset.io/rerun-root";

/// The prefix of the annotations that carry decisions on approval stages:
/// `approval.devset.io/STAGE`, whose value is an [`ApprovalRecord`] as JSON. `devset api` writes
/// it after checking the RBAC verb `approve` and the stage's `approvers`; the controller reads
/// it, and records the decision in `status.stages[].approval`.
pub const APPROVAL_ANNOTATION_PREFIX: &str = "approval.devset.io/";

/// The annotation that carries the decision on `stage`.
pub fn approval_annotation(stage: &str) -> String {
    format!("{APPROVAL_ANNOTATION_PREFIX}{stage}")
}

impl WorkflowRun {
    /// The workflow, connector and params the run started with: recorded in its status when it
    /// started (resolved through the run it repeats), else its spec's.
    pub fn started_with(&self) -> (String, String, BTreeMap<String, serde_json::Value>) {
        let st = self.status.clone().unwrap_or_default();
        let or = |own: &LocalObjectRef, recorded: Option<LocalObjectRef>| {
            recorded.map_or_else(|| own.name.clone(), |r| r.name)
        };
        (
            or(&self.spec.workflow_ref, st.workflow_ref),
            or(&self.spec.connector_ref, st.connector_ref),
            st.params.unwrap_or_else(|| self.spec.params.clone()),
        )
    }

    /// The decisions written on the run, by stage; a value that does not parse is an error
    /// naming the annotation.
    pub fn decisions(&self) -> BTreeMap<String, Result<ApprovalRecord, String>> {
        self.metadata
            .annotations
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let stage = k.strip_prefix(APPROVAL_ANNOTATION_PREFIX)?;
                let parsed = serde_json::from_str::<ApprovalRecord>(v)
                    .map_err(|e| format!("annotation {k}: {e}"));
                Some((stage.to_owned(), parsed))
            })
            .collect()
    }
}
