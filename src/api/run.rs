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
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRunSpec {
    /// The `Workflow` to run, in the same namespace. Cannot change once the run exists.
    #[x_kube(validation = Rule::new("self == oldSelf").message("cannot change once the run exists; create a new run instead"))]
    pub workflow_ref: LocalObjectRef,
    /// The `BrokerConnector` to publish through, in the same namespace. Cannot change once the
    /// run exists.
    #[x_kube(validation = Rule::new("self == oldSelf").message("cannot change once the run exists; create a new run instead"))]
    pub connector_ref: LocalObjectRef,
    /// Values for the workflow's params, by name. Unset params take their default. The run
    /// uses the values it had when it started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::api::map_of_any_value")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Set to true to stop the run gracefully: publishing halts at the next message, in-flight
    /// deliveries are awaited, and the run ends `Stopped`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop: bool,
}

/// A reference to an object in the same namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct LocalObjectRef {
    /// The object's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
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
    /// Halted by a stop before completion.
    Stopped,
    /// Every stage succeeded.
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
    /// Done.
    Succeeded,
    /// Failed after its retries.
    Failed,
    /// Halted by a stop.
    Stopped,
    /// Never started, because the run failed or stopped first.
    Skipped,
}

/// The run's progress as the controller last wrote it.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRunStatus {
    /// `Pending`, `Running`, `Stopping`, `Stopped`, `Completed` or `Failed`.
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
}

/// The progress of one stage.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// The stage's name.
    pub name: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Stopped` or `Skipped`.
    #[serde(default)]
    pub phase: StagePhase,
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
    /// What happened, e.g. the error of a failed stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
