//! The OpenAPI 3 document of the API, served at `/api/v1/openapi.json`. The schemas come
//! from the Rust types the handlers serialize (schemars), the paths are declared here.

use super::{
    approval::{Decided, DecisionRequest},
    error::Status,
    runs::{RunList, RunSummary},
};
use crate::events::Event;
use serde_json::{Value, json};

fn params(names: &[(&str, &str, &str, &str)]) -> Vec<Value> {
    names
        .iter()
        .map(|(name, within, ty, desc)| {
            json!({
                "name": name, "in": within, "required": *within == "path",
                "description": desc, "schema": { "type": ty },
            })
        })
        .collect()
}

/// The document.
pub fn document() -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let run = generator.subschema_for::<RunSummary>();
    let runs = generator.subschema_for::<RunList>();
    let event = generator.subschema_for::<Event>();
    let status = generator.subschema_for::<Status>();
    let decided = generator.subschema_for::<Decided>();
    let decision_request = generator.subschema_for::<DecisionRequest>();
    let mut schemas: serde_json::Map<String, Value> =
        generator.take_definitions(true).into_iter().collect();
    schemas.insert(
        "EventPage".into(),
        json!({
            "type": "object",
            "required": ["items", "next", "more", "complete"],
            "properties": {
                "items": { "type": "array", "items": event },
                "next": { "type": "integer", "format": "uint64",
                          "description": "Pass as `after` for the next page." },
                "more": { "type": "boolean", "description": "More events follow this page." },
                "complete": { "type": "boolean",
                              "description": "The run has ended and this page reaches its last event." },
            },
        }),
    );
    let errors = |codes: &[(&str, &str)]| -> Value {
        codes
            .iter()
            .map(|(code, desc)| {
                (
                    code.to_string(),
                    json!({ "description": desc,
                            "content": { "application/json": { "schema": status } } }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let common = [
        ("401", "No bearer token, or an invalid one"),
        ("403", "The caller's RBAC does not allow this"),
        ("404", "No such run"),
    ];
    let with = |ok: Value, extra: &[(&str, &str)]| -> Value {
        let mut r = errors(&common);
        let m = r.as_object_mut().expect("an object");
        for (k, v) in errors(extra).as_object().expect("an object") {
            m.insert(k.clone(), v.clone());
        }
        if let Value::Object(ok) = ok {
            m.extend(ok);
        }
        r
    };
    let ns_name = params(&[
        ("namespace", "path", "string", "The run's namespace"),
        ("name", "path", "string", "The run's name"),
    ]);
    let mut events_params = ns_name.clone();
    events_params.extend(params(&[
        (
            "after",
            "query",
            "integer",
            "Only events after this sequence number (like Last-Event-ID)",
        ),
        (
            "limit",
            "query",
            "integer",
            "At most this many events in a JSON page (default 100, at most 1000)",
        ),
        ("format", "query", "string", "json (default) or csv"),
        (
            "Last-Event-ID",
            "header",
            "integer",
            "Resume an SSE stream after this event",
        ),
    ]));
    let mut list_params = params(&[("namespace", "path", "string", "The namespace")]);
    list_params.extend(params(&[
        ("phase", "query", "string", "Only runs in this phase"),
        ("workflow", "query", "string", "Only runs of this Workflow"),
        (
            "since",
            "query",
            "string",
            "Only runs created at or after this RFC 3339 time",
        ),
        (
            "until",
            "query",
            "string",
            "Only runs created before this RFC 3339 time",
        ),
        (
            "limit",
            "query",
            "integer",
            "At most this many runs (default 100, at most 500)",
        ),
        (
            "continue",
            "query",
            "string",
            "The `continue` token of the previous page",
        ),
    ]));
    let mut seq_params = ns_name.clone();
    seq_params.extend(params(&[(
        "seq",
        "path",
        "integer",
        "The event's sequence number",
    )]));
    let mut stage_params = ns_name.clone();
    stage_params.extend(params(&[(
        "stage",
        "path",
        "string",
        "The approval stage's name",
    )]));
    let decide = |what: &str, verb: &str| -> Value {
        json!({
            "summary": format!(
                "{what} an approval stage that is WaitingForApproval: writes the decision on the \
                 run (annotation approval.devset.io/STAGE), which the controller records in \
                 status.stages[].approval (needs the RBAC verb approve on workflowruns, then one of \
                 the stage's approvers when it has any)"
            ),
            "parameters": stage_params,
            "requestBody": {
                "required": false,
                "description": "An optional comment for the record",
                "content": { "application/json": { "schema": decision_request } },
            },
            "responses": with(json!({ "200": { "description": format!("The stage is {verb}"),
                "content": { "application/json": { "schema": decided } } } }),
                &[
                    ("400", "The stage is not an approval stage, or a bad body (a comment \
                             longer than 1024 characters)"),
                    ("403", "No RBAC verb approve on workflowruns, or the caller is not one of \
                             the stage's approvers"),
                    ("404", "No such run, or no such stage in the run's workflow"),
                    ("409", "The stage is not waiting for approval (the run has not started, \
                             has ended, or the stage is in another phase), or it was decided \
                             already"),
                ]),
        })
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "devset API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Run event logs of devset WorkflowRuns: live over server-sent events, \
                            paged, exported as CSV; runs listed and stopped; approval stages decided. Authenticate with a \
                            Kubernetes bearer token; access follows the RBAC on workflowruns.devset.io.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
        "security": [ { "bearer": [] } ],
        "paths": {
            "/api/v1/namespaces/{namespace}/workflowruns": {
                "get": {
                    "summary": "List runs, newest first (needs list on workflowruns)",
                    "parameters": list_params,
                    "responses": with(json!({ "200": { "description": "A page of runs",
                        "content": { "application/json": { "schema": runs } } } }),
                        &[("400", "A bad filter")]),
                },
            },
            "/api/v1/namespaces/{namespace}/workflowruns/{name}": {
                "get": {
                    "summary": "One run's status summary and event log counts (needs get)",
                    "parameters": ns_name,
                    "responses": with(json!({ "200": { "description": "The run",
                        "content": { "application/json": { "schema": run } } } }), &[]),
                },
            },
            "/api/v1/namespaces/{namespace}/workflowruns/{name}/stop": {
                "post": {
                    "summary": "Stop a run: sets spec.stop (needs patch on workflowruns)",
                    "parameters": ns_name,
                    "responses": with(json!({ "202": { "description": "The stop is asked",
                        "content": { "application/json": { "schema": run } } } }),
                        &[("409", "The run has already ended")]),
                },
            },
            "/api/v1/namespaces/{namespace}/workflowruns/{name}/stages/{stage}/approve": {
                "post": decide("Approve", "approved"),
            },
            "/api/v1/namespaces/{namespace}/workflowruns/{name}/stages/{stage}/reject": {
                "post": decide("Reject", "rejected"),
            },
            "/api/v1/namespaces/{namespace}/workflowruns/{name}/events": {
                "get": {
                    "summary": "The run's event log (needs get): SSE with Accept: text/event-stream \
                                (backfill after Last-Event-ID or ?after, then live; ends after the \
                                run's last event), else a JSON page, or CSV with ?format=csv",
                    "parameters": events_params,
                    "responses": with(json!({ "200": { "description": "Events",
                        "content": {
                            "text/event-stream": { "schema": { "type": "string",
                                "description": "id: sequence number, event: type, data: an Event as JSON" } },
                            "application/json": { "schema": { "$ref": "#/components/schemas/EventPage" } },
                            "text/csv": { "schema": { "type": "string" } },
                        } } }), &[("400", "A bad parameter")]),
                },
            },
            "/api/v1/namespaces/{namespace}/workflowruns/{name}/events/{seq}": {
                "get": {
                    "summary": "One event with its full headers and payload (needs get)",
                    "parameters": seq_params,
                    "responses": with(json!({ "200": { "description": "The event",
                        "content": { "application/json": { "schema": event } } } }), &[]),
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_names_every_route_and_resolves_its_references() {
        let doc = super::document();
        let text = doc.to_string();
        for path in [
            "/api/v1/namespaces/{namespace}/workflowruns",
            "/api/v1/namespaces/{namespace}/workflowruns/{name}",
            "/api/v1/namespaces/{namespace}/workflowruns/{name}/stop",
            "/api/v1/namespaces/{namespace}/workflowruns/{name}/stages/{stage}/approve",
            "/api/v1/namespaces/{namespace}/workflowruns/{name}/stages/{stage}/reject",
            "/api/v1/namespaces/{namespace}/workflowruns/{name}/events",
            "/api/v1/namespaces/{namespace}/workflowruns/{name}/events/{seq}",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} is documented");
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        // Every $ref points at a schema of the document.
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "{name} is defined");
        }
        assert!(schemas.contains_key("Event") && schemas.contains_key("RunSummary"));
        assert!(schemas.contains_key("Decided") && schemas.contains_key("DecisionRequest"));
        let approve = &doc["paths"]["/api/v1/namespaces/{namespace}/workflowruns/{name}/stages/{stage}/approve"]
            ["post"];
        for code in ["200", "400", "401", "403", "404", "409"] {
            assert!(
                approve["responses"].get(code).is_some(),
                "approve answers {code}"
            );
        }
    }
}
