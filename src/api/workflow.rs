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
    doc = "A reusable event-driven workflow: stages that publish messages to Kafka or RabbitMQ, consume and check them, wait, and ask a person. Run it by creating a WorkflowRun.",
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

/// One step of the workflow. It has exactly one action: `publish`, `delay`, `approval` or
/// `expect`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.publish), has(self.delay), has(self.approval), has(self.expect)].filter(x, x).size() == 1")
    .message("a stage needs exactly one action: set one of publish, delay, approval or expect"))]
#[x_kube(validation = Rule::new("!has(self.retryBackoff) || (has(self.retries) && self.retries > 0)")
    .message("retryBackoff needs retries greater than 0"))]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// The stage's name, unique in the workflow: a DNS label (lowercase letters, digits and
    /// '-', starting and ending with a letter or digit, at most 63 characters).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The stages that must be done (succeeded, skipped by `when`, or failed with
    /// `continueOnError`) before this one starts. Without it the stage follows the one before
    /// it in the list (the first stage starts at once).
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
    /// The wait between attempts when `retries` is set. Without it, 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<RetryBackoff>,
    /// A CEL expression over `params` and `stages` (e.g.
    /// `params.region == "eu" && stages.check.outputs.received != "0"`). When it is false the
    /// stage does not run: its phase is `Skipped` (reason `ConditionFalse`) and it counts as
    /// done for the stages that depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub when: Option<String>,
    /// When true, a failure of this stage does not fail the run: the stages after it still
    /// run, and the run ends `Completed` with reason `CompletedWithFailures`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
    /// Publish messages to Kafka or RabbitMQ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishAction>,
    /// Wait for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayAction>,
    /// Wait for a person to approve or reject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalAction>,
    /// Consume messages from Kafka or RabbitMQ and check them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<ExpectAction>,
}

/// The wait between the attempts of a stage: `duration` after the first failure, multiplied by
/// `factor` after each next one, at most `maxDuration`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryBackoff {
    /// The first wait, e.g. `1s`.
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$')")
        .message("must be a duration such as 500ms, 30s, 5m or 1h30m"))]
    #[schemars(length(min = 1, max = 64))]
    pub duration: String,
    /// What each next wait is multiplied by. Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1.0").message("must be at least 1"))]
    pub factor: Option<f64>,
    /// The longest wait. Without it, no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$')")
        .message("must be a duration such as 500ms, 30s, 5m or 1h30m"))]
    #[schemars(length(max = 64))]
    pub max_duration: Option<String>,
}

/// A number of messages: an integer, or a template that renders to one when the run starts,
/// e.g. `"{{ params.orders }}"`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Count {
    Number(i64),
    Template(String),
}

impl Default for Count {
    fn default() -> Self {
        Count::Number(1)
    }
}

impl From<i64> for Count {
    fn from(n: i64) -> Self {
        Count::Number(n)
    }
}

impl schemars::JsonSchema for Count {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Count".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true, "maxLength": 256 })
    }
    fn inline_schema() -> bool {
        true
    }
}

/// A rate: a number, or a template that renders to one when the run starts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Rate {
    Number(f64),
    Template(String),
}

impl From<f64> for Rate {
    fn from(n: f64) -> Self {
        Rate::Number(n)
    }
}

impl schemars::JsonSchema for Rate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rate".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // A number or a string: no structural type covers both, and CEL cannot see an untyped
        // field, so the field keeps any value and the Workflow check (its Ready condition,
        // `devset lint`) and the run's start check it.
        schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
    }
    fn inline_schema() -> bool {
        true
    }
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
#[x_kube(validation = Rule::new("!has(self.delivery) || self.delivery != 'ExactlyOnce' || has(self.topic)")
    .message("delivery ExactlyOnce is for Kafka only: it needs a topic; for an exchange or a queue use AtLeastOnce"))]
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
    /// How many messages to publish: a number, or a template such as `"{{ params.orders }}"`
    /// checked when the run starts. Defaults to 1.
    #[serde(default)]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 0 : (self.matches('^[0-9]+$') || self.contains('{{'))")
        .message("must be a number of at least 0, or a template such as \"{{ params.orders }}\""))]
    pub count: Count,
    /// Pace publishing to this many messages per second (a number, or a template checked when
    /// the run starts). Without it, publish as fast as the broker acknowledges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<Rate>,
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
    /// The delivery guarantee: `AtLeastOnce` (the default: after a crash or a leader change
    /// the stage may publish again what the broker acknowledged since its last recorded
    /// progress) or `ExactlyOnce` (Kafka only: messages are published in transactions that
    /// also commit the stage's progress, so a `read_committed` consumer sees each message
    /// once across crashes, and a stale leader is fenced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryGuarantee>,
}

/// The delivery guarantee: `AtLeastOnce` (the default: after a crash or a leader change the
/// stage may publish again what the broker acknowledged since its last recorded progress) or
/// `ExactlyOnce` (Kafka only: messages go out in transactions that also commit the stage's
/// progress, so a `read_committed` consumer sees each message once across crashes, and a
/// stale leader is fenced).
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DeliveryGuarantee {
    /// Every message reaches the broker at least once; a crash or a leader change may send
    /// again what was acknowledged since the last recorded progress.
    #[default]
    AtLeastOnce,
    /// Kafka only: a transactional producer whose progress is committed in the same
    /// transaction; a `read_committed` consumer sees every message exactly once.
    ExactlyOnce,
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

/// Wait for a person's decision. Decide with `devset approve RUN STAGE` / `devset reject`, or
/// `POST …/workflowruns/RUN/stages/STAGE/approve` (or `…/reject`) on `devset api`; either
/// needs the RBAC verb `approve` on `workflowruns`. While it waits, the stage (and the run, when
/// nothing else executes) is `WaitingForApproval`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalAction {
    /// What to ask, shown to approvers: a template (`{{ params.NAME }}`,
    /// `{{ stages.NAME.outputs.KEY }}`, `{{ run.name }}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
    /// How long to wait for a decision, e.g. `1h`. Without it, the run waits until someone
    /// decides or stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$')")
        .message("must be a duration such as 500ms, 30s, 5m or 1h30m"))]
    #[schemars(length(max = 64))]
    pub timeout: Option<String>,
    /// The decision when `timeout` passes: `Reject` (the default) or `Approve`.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Who may decide, on top of the RBAC verb `approve`: any of these users or members of
    /// these groups. Without it, anyone with the verb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Approvers>,
}

/// What an approval stage decides when its timeout passes.
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum OnTimeout {
    #[default]
    Reject,
    Approve,
}

/// The users and groups who may decide an approval.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Approvers {
    /// Kubernetes user names, e.g. `alice` or `system:serviceaccount:ops:release-bot`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub users: Vec<String>,
    /// Kubernetes groups, e.g. `release-managers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub groups: Vec<String>,
}

impl Approvers {
    /// Whether `user` (a member of `groups`) is one of the approvers.
    pub fn admits(&self, user: &str, groups: &[String]) -> bool {
        self.users.iter().any(|u| u == user) || self.groups.iter().any(|g| groups.contains(g))
    }
}

/// Consume messages and check them: `count` messages that match `where` must arrive within
/// `timeout`. The source is a Kafka `topic`, a RabbitMQ `queue` (consumed), or a RabbitMQ
/// `exchange` with a `routingKey` (read through a temporary queue bound when the run starts,
/// so nothing published in between is missed, and deleted when the run ends).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.topic) ? 1 : 0) + (has(self.exchange) ? 1 : 0) + (has(self.queue) ? 1 : 0) == 1")
    .message("expect needs exactly one source: topic (Kafka), queue (RabbitMQ) or exchange with routingKey (RabbitMQ)"))]
#[x_kube(validation = Rule::new("has(self.routingKey) == has(self.exchange)")
    .message("exchange and routingKey go together (use '#' for every routing key of a topic exchange)"))]
#[x_kube(validation = Rule::new("!has(self.from) || has(self.topic)")
    .message("from is a Kafka start position; it goes with topic"))]
#[x_kube(validation = Rule::new("!has(self.atMost) || type(self.count) != int || self.atMost >= self.count")
    .message("atMost must be at least count").field_path(".atMost"))]
#[serde(rename_all = "camelCase")]
pub struct ExpectAction {
    /// The Kafka topic to read (every partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    pub topic: Option<String>,
    /// The RabbitMQ queue to consume: what the stage reads is taken off the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub queue: Option<String>,
    /// The RabbitMQ exchange to tap (with `routingKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub exchange: Option<String>,
    /// The binding key of the tap on `exchange` (`#` and `*` work on topic exchanges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub routing_key: Option<String>,
    /// The BrokerConnector (in the run's namespace) to read through. Without it, the run's
    /// `spec.connectorRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_ref: Option<crate::api::LocalObjectRef>,
    /// Where reading a Kafka topic starts: `RunStart` (the default: messages from the run's
    /// start on), `StageStart` (only messages that arrive after the stage starts) or
    /// `Earliest` (the whole topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ExpectFrom>,
    /// How many matching messages are needed: a number, or a template checked when the run
    /// starts. Defaults to 1.
    #[serde(default)]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 0 : (self.matches('^[0-9]+$') || self.contains('{{'))")
        .message("must be a number of at least 0, or a template such as \"{{ params.orders }}\""))]
    pub count: Count,
    /// Fail when more than this many messages match: the stage then waits its whole `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub at_most: Option<i64>,
    /// A CEL expression a message must satisfy to count, over `key`, `headers`, `payload`
    /// (the parsed JSON when the payload is JSON, else the text), `params` and `stages`.
    /// Without it, every message matches.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub where_: Option<String>,
    /// How long to wait for `count` matches. Defaults to `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$')")
        .message("must be a duration such as 500ms, 30s, 5m or 1h30m"))]
    #[schemars(length(max = 64))]
    pub timeout: Option<String>,
    /// Outputs taken from the last matching message: output name (a letter or `_`, then
    /// letters, digits or `_`) to a CEL expression over the same variables as `where`, e.g.
    /// `lastOrder: payload.orderId`. Later stages read them as
    /// `{{ stages.NAME.outputs.lastOrder }}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 4096)))]
    pub capture: BTreeMap<String, String>,
}

/// Where an expect stage starts reading a Kafka topic.
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum ExpectFrom {
    /// Messages from the run's start on.
    #[default]
    RunStart,
    /// Messages that arrive after the stage starts.
    StageStart,
    /// The whole topic.
    Earliest,
}

impl ExpectAction {
    /// The default `timeout`.
    pub const DEFAULT_TIMEOUT: &str = "1m";
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
