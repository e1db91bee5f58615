use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// Limits keep the CEL rules below within the API server's cost budget.
/// Most stages a workflow may have.
pub const MAX_STAGES: usize = 50;
/// Most params a workflow may declare.
pub const MAX_PARAMS: usize = 64;

/// The workflow's params and stages.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "devset.io",
    version = "v1alpha1",
    kind = "Workflow",
    plural = "workflows",
    shortname = "wf",
    namespaced,
    doc = "A reusable event-driven workflow: stages that publish messages to Kafka or RabbitMQ and wait. Run it by creating a WorkflowRun.",
    status = "WorkflowStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Description",
        type_ = "string",
        json_path = ".spec.description",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "self.stages.all(s, !has(s.dependsOn) || s.dependsOn.all(d, self.stages.exists(t, t.name == d)))"
).message("every dependsOn entry must name a stage of this workflow").field_path(".stages"))]
#[x_kube(validation = Rule::new(
    "self.stages.all(s, !has(s.dependsOn) || !(s.name in s.dependsOn))"
).message("a stage cannot depend on itself").field_path(".stages"))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// What this workflow is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// Parameters a run can set (`WorkflowRun.spec.params`), usable in templates as
    /// `{{ params.NAME }}`. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 64))]
    pub params: Vec<ParamSpec>,
    /// The stages, in order. Without `dependsOn` a stage follows the one before it in the list;
    /// with `dependsOn` it starts once all the stages it names have succeeded, and stages that
    /// are ready at the same time run concurrently. Names are unique.
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(min = 1, max = 50))]
    pub stages: Vec<Stage>,
}

/// A parameter of the workflow.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParamSpec {
    /// The parameter's name: a letter or `_`, then letters, digits or `_` (so that templates
    /// can say `{{ params.NAME }}`).
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')")
        .message("must start with a letter or '_' and hold only letters, digits and '_'"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The value's type. Defaults to `string`.
    #[serde(default)]
    pub r#type: ParamType,
    /// The value used when a run does not set the param.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::any_value")]
    pub default: Option<serde_json::Value>,
    /// A run must set this param (a `default` does not count).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// What the param means, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// The type of a param's value.
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    #[default]
    String,
    Integer,
    Number,
    Boolean,
}

/// One step of the workflow. It has exactly one action: `publish` or `delay`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.publish), has(self.delay)].filter(x, x).size() == 1")
    .message("a stage needs exactly one action: set one of publish or delay"))]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// The stage's name, unique in the workflow: a DNS label (lowercase letters, digits and
    /// '-', starting and ending with a letter or digit, at most 63 characters).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The stages that must succeed before this one starts. Without it the stage follows the
    /// one before it in the list (the first stage starts at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63)))]
    pub depends_on: Option<Vec<String>>,
    /// How long one attempt of the stage may take, e.g. `30s`, `5m`, `1h30m`. Without it there
    /// is no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$')")
        .message("must be a duration such as 500ms, 30s, 5m or 1h30m"))]
    #[schemars(length(max = 64))]
    pub timeout: Option<String>,
    /// How many times to try the stage again after a failed attempt. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,
    /// Publish messages to Kafka or RabbitMQ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishAction>,
    /// Wait for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayAction>,
}

/// Publish `count` messages. The target is a Kafka `topic`, or a RabbitMQ `exchange` with a
/// `routingKey`, or a RabbitMQ `queue` (through the default exchange). `key`, `headers` and
/// `payload` are templates rendered for every message; they can use `{{ seq }}` (1, 2, …),
/// `{{ uuid }}`, `{{ now }}`, `{{ run.name }}`, `{{ run.namespace }}`, `{{ stage }}` and
/// `{{ params.NAME }}`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.topic) ? 1 : 0) + (has(self.exchange) ? 1 : 0) + (has(self.queue) ? 1 : 0) == 1")
    .message("publish needs exactly one target: topic (Kafka), exchange (RabbitMQ) or queue (RabbitMQ default exchange)"))]
#[x_kube(validation = Rule::new("!has(self.routingKey) || has(self.exchange)")
    .message("routingKey goes with exchange; for a queue or a topic leave it out"))]
#[serde(rename_all = "camelCase")]
pub struct PublishAction {
    /// The Kafka topic to publish to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    pub topic: Option<String>,
    /// The RabbitMQ exchange to publish to (with `routingKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub exchange: Option<String>,
    /// The RabbitMQ routing key, a template. Defaults to empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub routing_key: Option<String>,
    /// The RabbitMQ queue to publish to through the default exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub queue: Option<String>,
    /// The BrokerConnector (in the run's namespace) this stage publishes through. Without it,
    /// the run's `spec.connectorRef`. Lets one workflow publish to Kafka and RabbitMQ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_ref: Option<crate::api::LocalObjectRef>,
    /// How many messages to publish. Defaults to 1.
    #[serde(default = "default_count")]
    #[schemars(range(min = 0))]
    pub count: i64,
    /// Pace publishing to this many messages per second. Without it, publish as fast as the
    /// broker acknowledges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0").message("must be greater than 0"))]
    pub rate_per_second: Option<f64>,
    /// The message key template (Kafka key; a header for RabbitMQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub key: Option<String>,
    /// Header name to value template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The message body template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576))]
    pub payload: Option<String>,
}

fn default_count() -> i64 {
    1
}

/// Wait before the next stages start.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DelayAction {
    /// How long to wait, e.g. `500ms`, `10s`, `2m`.
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$')")
        .message("must be a duration such as 500ms, 30s, 5m or 1h30m"))]
    #[schemars(length(min = 1, max = 64))]
    pub duration: String,
}

/// What the controller found when it checked the workflow.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is `False` with a reason when the workflow has a problem CEL cannot catch
    /// (a dependency cycle, a bad template, an undeclared param).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
