//! The `devset.io/v1alpha1` API: the custom resources users apply with `kubectl`.
//!
//! Doc comments on fields become the CRD schema descriptions that `kubectl explain` shows, so
//! they are written for users; notes for developers are `//` comments.

// Each `printcolumn(...)` of the kube derive repeats the same keys, which this lint mistakes
// for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

mod connector;
mod run;
mod schedule;
mod workflow;

pub use connector::*;
pub use run::*;
pub use schedule::*;
pub use workflow::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::Schema;

/// The API group of every devset kind.
pub const GROUP: &str = "devset.io";
/// The API version of every devset kind.
pub const VERSION: &str = "v1alpha1";

/// Condition types and reasons shared by the kinds.
pub mod conditions {
    /// `BrokerConnector` and `Workflow`: the object is usable.
    pub const READY: &str = "Ready";
    /// `WorkflowRun`: `Unknown` while in flight, `True` on `Completed`, `False` on
    /// `Failed`/`Stopped`, so that `kubectl wait --for=condition=Succeeded` works.
    pub const SUCCEEDED: &str = "Succeeded";
}

/// Every CRD of the API, in a stable order (the order `devset crds` prints them).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        BrokerConnector::crd(),
        Workflow::crd(),
        WorkflowRun::crd(),
        WorkflowSchedule::crd(),
    ]
}

// Schema helpers for fields whose value may be any JSON scalar (params, defaults). Kubernetes
// needs `x-kubernetes-preserve-unknown-fields` on a node without a type to keep it structural.
pub(crate) fn any_value(_: &mut schemars::SchemaGenerator) -> Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

// The pinned copy of a workflow in a run's status: validated when the Workflow was applied, so
// its schema here only keeps the fields (and none of the CEL cost).
pub(crate) fn pinned_workflow(_: &mut schemars::SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "The workflow spec as it was when the run started.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

pub(crate) fn map_of_any_value(_: &mut schemars::SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
        let path = format!("{}/config/samples/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .find(|v| v["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("{path} has no {kind}"));
        serde_yaml::from_value(doc).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
    use serde::Deserialize;

    #[test]
    fn samples_parse_into_the_api_types() {
        let wf: Workflow = sample("workflow.yaml", "Workflow");
        let names: Vec<_> = wf.spec.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["create-orders", "settle", "payments"]);
        let publish = wf.spec.stages[0].publish.as_ref().unwrap();
        assert_eq!(
            (&publish.count, &publish.rate_per_second),
            (&Count::Number(100), &Some(Rate::Number(500.0)))
        );
        assert_eq!(wf.spec.params[0].r#type, ParamType::Integer);
        assert_eq!(wf.spec.params[0].default, Some(serde_json::json!(100)));

        let run: WorkflowRun = sample("workflowrun.yaml", "WorkflowRun");
        assert_eq!(run.spec.workflow_ref.name, "orders");
        assert_eq!(run.spec.params["region"], "us-east");
        assert!(!run.spec.stop);

        let kafka: BrokerConnector = sample("kafka-connector.yaml", "BrokerConnector");
        let k = kafka.spec.kafka.unwrap();
        assert_eq!(k.security_protocol, KafkaSecurityProtocol::Plaintext);
        let rabbit: BrokerConnector = sample("rabbitmq-connector.yaml", "BrokerConnector");
        let r = rabbit.spec.rabbitmq.unwrap();
        assert_eq!(r.secret_ref.unwrap().password_key, "password");
    }

    #[test]
    fn defaults_fill_what_a_manifest_leaves_out() {
        let stage: Stage = serde_json::from_value(serde_json::json!({
            "name": "a", "publish": {"queue": "q"}
        }))
        .unwrap();
        assert_eq!(stage.publish.unwrap().count, Count::Number(1));
        let p: ParamSpec = serde_json::from_value(serde_json::json!({"name": "x"})).unwrap();
        assert_eq!((p.r#type, p.required), (ParamType::String, false));
    }

    #[test]
    fn finished_phases() {
        let finished: Vec<_> = [
            RunPhase::Pending,
            RunPhase::Running,
            RunPhase::Stopping,
            RunPhase::Stopped,
            RunPhase::Completed,
            RunPhase::Failed,
        ]
        .into_iter()
        .filter(|p| p.is_finished())
        .collect();
        assert_eq!(
            finished,
            [RunPhase::Stopped, RunPhase::Completed, RunPhase::Failed]
        );
    }

    #[test]
    fn status_lists_merge_by_key() {
        // Server-side apply of status relies on these list types.
        let crd = serde_json::to_value(WorkflowRun::crd()).unwrap();
        let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"];
        assert_eq!(
            status["conditions"]["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        assert_eq!(
            status["stages"]["x-kubernetes-list-map-keys"],
            serde_json::json!(["name"])
        );
        let names: Vec<_> = crd["spec"]["names"]["shortNames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names, ["wfr", "run", "runs"]);
    }
}
