//! The OpenAPI 3.1 document of the API, served at `/api/v1/openapi.json`.
//!
//! It is generated, never written by hand: every route is registered in [`super::router`]
//! through `utoipa_axum`'s `routes!` from a handler carrying `#[utoipa::path(…)]`, so the path,
//! its method, parameters and answers come from the handler, and the router and the document
//! cannot drift (a test checks both ways). The body schemas come from the Rust types the
//! handlers read and write, through schemars (the same derive that makes the CRDs' schemas):
//! the types are listed once in [`schemars_schemas!`] below, which gives utoipa their names,
//! and [`document`] puts their schemars definitions under `components.schemas`. Error answers
//! (4xx, 5xx) a handler lists without a body get the `Status` body every error has.

use super::{
    approval::{Decided, DecisionRequest},
    bulk::{BulkRequest, BulkResults, Export},
    catalog::{ConnectorList, NamespaceList, Permissions, WorkflowList},
    error::Status,
    events::EventPage,
    runs::{RunList, RunSummary},
    session::{Session, SignIn},
    trigger::Triggered,
};
use crate::events::Event;
use serde_json::{Value, json};
use std::borrow::Cow;
use utoipa::openapi::{OpenApi, RefOr, schema::Schema};

/// Makes utoipa refer to each type by its name; the schema itself is schemars' (see
/// [`document`]).
macro_rules! schemars_schemas {
    ($($t:ident),* $(,)?) => {
        $(
            impl utoipa::PartialSchema for $t {
                fn schema() -> RefOr<Schema> {
                    Schema::default().into()
                }
            }
            impl utoipa::ToSchema for $t {
                fn name() -> Cow<'static, str> {
                    Cow::Borrowed(stringify!($t))
                }
            }
        )*

        /// The schemars definitions of the listed types and of every type they use.
        fn definitions() -> serde_json::Map<String, Value> {
            let mut generator = schemars::generate::SchemaSettings::draft2020_12()
                .with(|s| {
                    s.definitions_path = "/components/schemas".into();
                    s.meta_schema = None;
                })
                .into_generator();
            $( generator.subschema_for::<$t>(); )*
            generator.take_definitions(true).into_iter().collect()
        }
    };
}

schemars_schemas!(
    RunSummary,
    RunList,
    Event,
    EventPage,
    Status,
    Decided,
    DecisionRequest,
    Triggered,
    BulkRequest,
    BulkResults,
    Export,
    Session,
    SignIn,
    NamespaceList,
    WorkflowList,
    ConnectorList,
    Permissions,
);

/// The document of the router's OpenAPI part, completed: title, the bearer-token scheme,
/// schemars' schemas, and the `Status` body of error answers.
pub fn document(api: &OpenApi) -> Value {
    let mut doc = serde_json::to_value(api).unwrap_or_else(|_| json!({}));
    doc["info"] = json!({
        "title": "devset api",
        "version": "v1",
        "description": "The event log, runs and approvals of devset-operator. Callers send a \
            Kubernetes bearer token; each route is authorized with SubjectAccessReview.",
    });
    doc["components"]["schemas"] = Value::Object(definitions());
    doc["components"]["securitySchemes"] = json!({
        "bearer": { "type": "http", "scheme": "bearer",
                    "description": "A Kubernetes token (kubectl create token …)" },
    });
    doc["security"] = json!([{ "bearer": [] }]);
    super::live::document_stream(&mut doc);
    let status =
        json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|i| i.values_mut())
            {
                // `security: [{}]` marks the routes open to all (ops.rs).
                let open = op["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().all(|r| r == &json!({})));
                if !open {
                    op["responses"]["401"] = json!({ "description": "No valid bearer token" });
                }
                let responses = op.get_mut("responses").and_then(Value::as_object_mut);
                for (code, r) in responses.into_iter().flatten() {
                    if (code.starts_with('4') || code.starts_with('5'))
                        && r.get("content").is_none()
                    {
                        r["content"] = status.clone();
                    }
                }
            }
        }
    }
    doc
}

/// The answers of `POST /api/v1/workflowruns:delete` and `:stop`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only
pub(super) enum BulkAnswers {
    /// One result per run, in the order asked
    #[response(status = 200)]
    Results(BulkResults),
    /// A body that is not {"runs": [...]}; the message names the field
    #[response(status = 400)]
    BadRequest,
    /// A body over 64 KiB
    #[response(status = 413)]
    TooLarge,
}

/// The answers of `…/stages/{stage}/approve` and `…/reject`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only
pub(super) enum DecisionAnswers {
    #[response(status = 200, description = "The decision is written on the run")]
    Decided(Decided),
    #[response(
        status = 409,
        description = "The stage is not waiting, or is already decided"
    )]
    Conflict,
    #[response(status = 404, description = "No such run or stage")]
    NotFound,
    #[response(
        status = 403,
        description = "No `approve` on the run, or not one of the stage's approvers"
    )]
    Forbidden,
    #[response(
        status = 400,
        description = "A bad body, or a stage that is not an approval stage"
    )]
    BadRequest,
}

/// The answers of `…/workflowruns/{name}/retry` and `…/rerun`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only
pub(super) enum RepeatAnswers {
    /// The new WorkflowRun
    #[response(status = 201)]
    Created,
    /// A bad body, an unknown fromStage or params the Workflow does not take
    #[response(status = 400)]
    BadRequest,
    /// No `create` on workflowruns
    #[response(status = 403)]
    Forbidden,
    /// No such run, Workflow or BrokerConnector
    #[response(status = 404)]
    NotFound,
    /// The run has not finished
    #[response(status = 409)]
    Conflict,
    /// A body over 64 KiB
    #[response(status = 413)]
    TooLarge,
}

/// A router whose handlers are documented apart from their registration (files that still
/// build a plain axum `Router`): the test below checks that both agree.
pub(super) fn documented<S>(
    router: axum::Router<S>,
    paths: OpenApi,
) -> utoipa_axum::router::OpenApiRouter<S>
where
    S: Send + Sync + Clone + 'static,
{
    let mut r = utoipa_axum::router::OpenApiRouter::from(router);
    r.get_openapi_mut().merge(paths);
    r
}

/// The documents of `trigger.rs`, `rerun.rs` and `schedules.rs` (their handlers carry
/// `#[utoipa::path]`, their routers register them).
pub(super) fn trigger_paths() -> OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(super::trigger::trigger))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub(super) fn rerun_paths() -> OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(super::rerun::retry, super::rerun::rerun))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub(super) fn schedules_paths() -> OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(
        super::schedules::list,
        super::schedules::get_one,
        super::schedules::fire,
        super::schedules::suspend,
        super::schedules::resume
    ))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

#[cfg(test)]
mod tests {
    use axum::routing::{MethodFilter, on};
    use serde_json::Value;
    use std::{collections::BTreeSet, panic::AssertUnwindSafe};

    const METHODS: [(&str, MethodFilter); 5] = [
        ("get", MethodFilter::GET),
        ("post", MethodFilter::POST),
        ("put", MethodFilter::PUT),
        ("patch", MethodFilter::PATCH),
        ("delete", MethodFilter::DELETE),
    ];

    type Routes = BTreeSet<(&'static str, String)>;

    /// The (method, path) pairs `router` serves that `doc` lacks, and those `doc` names that
    /// `router` does not serve.
    fn disagreements<S: Clone + Send + Sync + 'static>(
        router: &axum::Router<S>,
        doc: &Value,
    ) -> (Routes, Routes) {
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, _) in METHODS {
                if item.get(method).is_some() {
                    documented.insert((method, path.clone()));
                }
            }
        }
        // The paths the router serves: axum's Debug of a router lists them.
        let debug = format!("{router:?}");
        let paths: BTreeSet<&str> = debug.split('"').filter(|s| s.starts_with('/')).collect();
        assert!(paths.contains("/healthz"), "{paths:?}");
        // The methods of each path: axum refuses (panics on) a second handler for a method a
        // path already serves.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let mut served = BTreeSet::new();
        for path in &paths {
            for (method, filter) in METHODS {
                let r = router.clone();
                let add = AssertUnwindSafe(|| r.route(path, on(filter, || async {})));
                if std::panic::catch_unwind(add).is_err() {
                    served.insert((method, path.to_string()));
                }
            }
        }
        std::panic::set_hook(hook);
        (
            served.difference(&documented).cloned().collect(),
            documented.difference(&served).cloned().collect(),
        )
    }

    #[test]
    fn every_route_served_is_documented_and_every_documented_route_is_served() {
        let (router, api) = super::super::api().split_for_parts();
        let doc = super::document(&api);
        let (undocumented, unserved) = disagreements(&router, &doc);
        assert!(
            undocumented.is_empty(),
            "served, not documented: {undocumented:?}"
        );
        assert!(unserved.is_empty(), "documented, not served: {unserved:?}");
        let export = &doc["paths"]["/api/v1/workflowruns:export"]["post"];
        assert!(export.is_object());
        // The check sees a route added with plain `.route(…)`, and a document entry without
        // a route.
        let (router, api) = super::super::api().split_for_parts();
        let extra = router.route("/api/v1/extra", axum::routing::delete(|| async {}));
        let mut doc = super::document(&api);
        doc["paths"]["/api/v1/ghost"] = serde_json::json!({ "get": {} });
        let (undocumented, unserved) = disagreements(&extra, &doc);
        assert_eq!(
            undocumented,
            [("delete", "/api/v1/extra".to_owned())].into()
        );
        assert_eq!(unserved, [("get", "/api/v1/ghost".to_owned())].into());
    }

    #[test]
    fn the_document_resolves_every_reference_and_errors_have_the_status_body() {
        let (_, api) = super::super::api().split_for_parts();
        let doc = super::document(&api);
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "{name} is defined");
        }
        for name in [
            "Event",
            "RunSummary",
            "Decided",
            "DecisionRequest",
            "BulkResults",
        ] {
            assert!(schemas.contains_key(name), "{name} is in the document");
        }
        let approve = &doc["paths"]["/api/v1/namespaces/{namespace}/workflowruns/{name}/stages/{stage}/approve"]
            ["post"];
        for code in ["200", "400", "401", "403", "404", "409"] {
            assert!(
                approve["responses"].get(code).is_some(),
                "approve answers {code}"
            );
        }
        let forbidden = &approve["responses"]["403"]["content"]["application/json"]["schema"];
        assert_eq!(forbidden["$ref"], "#/components/schemas/Status");
        let list = &doc["paths"]["/api/v1/namespaces/{namespace}/workflowruns"]["get"];
        let params: Vec<&str> = list["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for p in ["namespace", "phase", "triggeredBy", "limit", "continue"] {
            assert!(params.contains(&p), "the run list takes {p}: {params:?}");
        }
        assert!(
            list["responses"]["401"].is_object(),
            "token routes answer 401"
        );
        let content = &list["responses"]["200"]["content"];
        assert!(content["text/event-stream"].is_object(), "{content}");
        assert!(content["application/json"].is_object(), "{content}");
        for name in ["Session", "Permissions", "WorkflowList", "ConnectorList"] {
            assert!(schemas.contains_key(name), "{name} is in the document");
        }
        let page = &doc["paths"]["/runs"]["get"];
        assert!(page["responses"].get("401").is_none(), "{page}");
        let healthz = &doc["paths"]["/healthz"]["get"];
        assert!(healthz["responses"].get("401").is_none(), "{healthz}");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        assert!(matches!(doc["info"]["title"], Value::String(_)));
    }
}
