//! What the controller's Workflow check and `devset lint` report beyond the CRD's CEL rules.

use super::amounts;
use super::dag::{DagError, Plan, plan};
use super::duration::parse_duration;
use super::expect::Checks;
use super::expr::{Expr, STAGE_VARIABLES};
use super::params::{ParamError, check_defaults};
use super::template::{PublishTemplates, Template};
use crate::api::WorkflowSpec;

/// The reason of a [`Problem`] with the stages' dependencies: a cycle.
pub const DEPENDENCY_CYCLE: &str = "DependencyCycle";
/// The reason of a [`Problem`] with a `dependsOn` entry that names no stage.
pub const UNKNOWN_DEPENDENCY: &str = "UnknownDependency";
/// The reason of a [`Problem`] with two stages, or two params, of the same name (which the API
/// server's list-map rules reject, but a manifest checked offline may have).
pub const DUPLICATE_NAME: &str = "DuplicateName";
/// The reason of a [`Problem`] with a template that does not compile.
pub const TEMPLATE_ERROR: &str = "TemplateError";
/// The reason of a [`Problem`] with a template that uses a param the workflow does not declare.
pub const UNDECLARED_PARAM: &str = "UndeclaredParam";
/// The reason of a [`Problem`] with a param default not of the param's type.
pub const INVALID_DEFAULT: &str = "InvalidDefault";
/// The reason of a [`Problem`] with a `timeout` or `delay.duration` that does not parse.
pub const INVALID_DURATION: &str = "InvalidDuration";
/// The reason of a [`Problem`] with a CEL expression (`when`, `where`, `capture`) that does
/// not compile or reads an unknown variable.
pub const INVALID_EXPRESSION: &str = "InvalidExpression";
/// The reason of a [`Problem`] with a reference to the outputs of a stage that is not an
/// ancestor (a stage this one waits for, directly or through others), or is no stage at all.
pub const NOT_AN_ANCESTOR: &str = "NotAnAncestor";

/// One thing wrong with a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Where: a field path such as `spec.stages[1].publish.payload`, or `spec.stages`.
    pub field: String,
    /// A CamelCase reason for conditions and metrics: one of the constants of this module,
    /// e.g. [`DEPENDENCY_CYCLE`] or [`TEMPLATE_ERROR`].
    pub reason: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks what the CRD's CEL rules cannot: that the stages can be ordered, that every template
/// compiles and uses only declared params, that param defaults match their types, and that
/// every `timeout` and `delay.duration` parses. An empty result means the workflow is fine.
pub fn check_workflow(spec: &WorkflowSpec) -> Vec<Problem> {
    let mut problems = Vec::new();
    let declared = |name: &str| spec.params.iter().any(|p| p.name == name);
    let mut problem = |field: String, reason, message: String| {
        problems.push(Problem {
            field,
            reason,
            message,
        })
    };

    for (i, p) in spec.params.iter().enumerate() {
        if spec.params[..i].iter().any(|q| q.name == p.name) {
            problem(
                format!("spec.params[{i}].name"),
                DUPLICATE_NAME,
                format!("more than one param is named {:?}", p.name),
            );
        }
        if let Err(e) = check_defaults(std::slice::from_ref(p)) {
            let message = match e {
                ParamError::WrongType { .. } => format!("default: {e}"),
                _ => e.to_string(),
            };
            problem(
                format!("spec.params[{i}].default"),
                INVALID_DEFAULT,
                message,
            );
        }
    }

    let planned = plan(&spec.stages);
    if let Err(e) = &planned {
        let (field, reason) = match e {
            DagError::Cycle { .. } => ("spec.stages".to_owned(), DEPENDENCY_CYCLE),
            DagError::UnknownStage { stage, depends_on } => {
                let at = spec.stages.iter().enumerate().find_map(|(i, s)| {
                    let j = s.depends_on.as_ref()?.iter().position(|d| d == depends_on);
                    (&s.name == stage).then_some(j).flatten().map(|j| (i, j))
                });
                let field = match at {
                    Some((i, j)) => format!("spec.stages[{i}].dependsOn[{j}]"),
                    None => "spec.stages".to_owned(),
                };
                (field, UNKNOWN_DEPENDENCY)
            }
            DagError::DuplicateName(name) => {
                let i = spec
                    .stages
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| &s.name == name)
                    .nth(1)
                    .map_or(0, |(i, _)| i);
                (format!("spec.stages[{i}].name"), DUPLICATE_NAME)
            }
        };
        problem(field, reason, e.to_string());
    }

    let plan = planned.ok();
    for (field, message) in amounts::check_templates(spec) {
        problem(field, TEMPLATE_ERROR, message);
    }
    for (i, stage) in spec.stages.iter().enumerate() {
        let at = format!("spec.stages[{i}]");
        // Reads of other stages' outputs, checked below: they must name ancestors.
        let mut read_list: Vec<(String, Vec<String>)> = Vec::new();
        let mut reads = |field: String, names: Vec<String>| read_list.push((field, names));
        if let Some(w) = &stage.when {
            match Expr::compile(w, STAGE_VARIABLES) {
                Ok(e) => reads(format!("{at}.when"), e.stages_read()),
                Err(e) => problem(format!("{at}.when"), INVALID_EXPRESSION, e),
            }
        }
        if let Some(a) = &stage.approval
            && let Some(m) = &a.message
        {
            match Template::compile(m) {
                Ok(t) => {
                    reads(
                        format!("{at}.approval.message"),
                        t.stages_used().into_iter().map(String::from).collect(),
                    );
                    for name in t.params_used().into_iter().filter(|n| !declared(n)) {
                        problem(
                            format!("{at}.approval.message"),
                            UNDECLARED_PARAM,
                            undeclared(name),
                        );
                    }
                }
                Err(e) => problem(
                    format!("{at}.approval.message"),
                    TEMPLATE_ERROR,
                    e.to_string(),
                ),
            }
        }
        if let Some(e) = &stage.expect {
            match Checks::compile(e) {
                Ok(c) => {
                    if let Some(f) = &c.filter {
                        reads(format!("{at}.expect.where"), f.stages_read());
                    }
                    for (k, x) in &c.captures {
                        reads(format!("{at}.expect.capture.{k}"), x.stages_read());
                    }
                }
                Err((field, e)) => problem(format!("{at}.{field}"), INVALID_EXPRESSION, e),
            }
        }
        let durations = [
            (
                "approval.timeout",
                stage.approval.as_ref().and_then(|a| a.timeout.as_ref()),
            ),
            (
                "expect.timeout",
                stage.expect.as_ref().and_then(|e| e.timeout.as_ref()),
            ),
            (
                "retryBackoff.duration",
                stage.retry_backoff.as_ref().map(|b| &b.duration),
            ),
            (
                "retryBackoff.maxDuration",
                stage
                    .retry_backoff
                    .as_ref()
                    .and_then(|b| b.max_duration.as_ref()),
            ),
        ];
        for (field, d) in durations {
            if let Some(d) = d
                && let Err(e) = parse_duration(d)
            {
                problem(format!("{at}.{field}"), INVALID_DURATION, e.to_string());
            }
        }
        if let Some(t) = &stage.timeout
            && let Err(e) = parse_duration(t)
        {
            problem(format!("{at}.timeout"), INVALID_DURATION, e.to_string());
        }
        if let Some(d) = &stage.delay
            && let Err(e) = parse_duration(&d.duration)
        {
            problem(
                format!("{at}.delay.duration"),
                INVALID_DURATION,
                e.to_string(),
            );
        }
        if let Some(publish) = &stage.publish {
            match PublishTemplates::compile(publish) {
                Err((field, e)) => problem(
                    format!("{at}.publish.{field}"),
                    TEMPLATE_ERROR,
                    e.to_string(),
                ),
                Ok(templates) => {
                    for (field, names) in templates.stages_by_field() {
                        reads(
                            format!("{at}.publish.{field}"),
                            names.into_iter().map(String::from).collect(),
                        );
                    }
                    for (field, names) in templates.params_by_field() {
                        for name in names.into_iter().filter(|n| !declared(n)) {
                            problem(
                                format!("{at}.publish.{field}"),
                                UNDECLARED_PARAM,
                                undeclared(name),
                            );
                        }
                    }
                }
            }
        }
        if let Some(plan) = &plan {
            for (field, names) in read_list {
                for name in names {
                    if let Some(message) = not_an_ancestor(spec, plan, i, &name) {
                        problem(field.clone(), NOT_AN_ANCESTOR, message);
                    }
                }
            }
        }
    }
    problems
}

fn undeclared(name: &str) -> String {
    format!(
        "a template uses {{{{ params.{name} }}}}, but the workflow declares no param {name:?}; \
         add it to spec.params"
    )
}

/// Why stage `i` may not read the outputs of stage `name`, if it may not.
fn not_an_ancestor(spec: &WorkflowSpec, plan: &Plan, i: usize, name: &str) -> Option<String> {
    let me = &spec.stages[i].name;
    match spec.stages.iter().position(|s| s.name == name) {
        None => Some(format!(
            "reads stage {name:?}, which is not a stage of this workflow"
        )),
        Some(j) if plan.ancestors(i).contains(&j) => None,
        Some(_) => Some(format!(
            "reads stage {name:?}, which stage {me:?} does not wait for: a stage can read only \
             the stages it depends on, directly or through others (add {name:?} to dependsOn)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> WorkflowSpec {
        serde_json::from_value(v).unwrap()
    }

    fn reasons(p: &[Problem]) -> Vec<(&str, &str)> {
        p.iter().map(|p| (p.field.as_str(), p.reason)).collect()
    }

    #[test]
    fn a_good_workflow_has_no_problems() {
        let s = spec(json!({
            "params": [
                { "name": "region", "default": "eu" },
                { "name": "n", "type": "integer", "default": "5" }
            ],
            "stages": [
                { "name": "a", "timeout": "1h30m", "publish": {
                    "exchange": "x", "routingKey": "r.{{ params.region }}",
                    "key": "{{ seq }}", "headers": { "h": "{{ uuid }}" },
                    "payload": "{{ params.n }} {{ now }} {{ now_ms }} {{ stage }}"
                } },
                { "name": "b", "delay": { "duration": "500ms" } },
                { "name": "c", "dependsOn": ["a"], "publish": { "topic": "t" } }
            ]
        }));
        assert_eq!(check_workflow(&s), []);
    }

    #[test]
    fn the_sample_workflow_has_no_problems() {
        let path = format!(
            "{}/config/samples/workflow.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        use serde::Deserialize;
        let wf = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .find(|v| v["kind"].as_str() == Some("Workflow"))
            .unwrap();
        let wf: crate::api::Workflow = serde_yaml::from_value(wf).unwrap();
        assert_eq!(check_workflow(&wf.spec), []);
    }

    #[test]
    fn dependency_cycle() {
        let s = spec(json!({ "stages": [
            { "name": "a", "dependsOn": ["b"], "delay": { "duration": "1s" } },
            { "name": "b", "delay": { "duration": "1s" } }
        ]}));
        let p = check_workflow(&s);
        assert_eq!(reasons(&p), [("spec.stages", DEPENDENCY_CYCLE)]);
        assert_eq!(p[0].message, "dependency cycle: a -> b -> a");
        assert_eq!(
            p[0].to_string(),
            "spec.stages: dependency cycle: a -> b -> a"
        );
    }

    #[test]
    fn unknown_dependency() {
        let s = spec(json!({ "stages": [
            { "name": "a", "delay": { "duration": "1s" } },
            { "name": "b", "dependsOn": ["a", "zed"], "delay": { "duration": "1s" } }
        ]}));
        let p = check_workflow(&s);
        assert_eq!(
            reasons(&p),
            [("spec.stages[1].dependsOn[1]", UNKNOWN_DEPENDENCY)]
        );
        assert!(p[0].message.contains("\"zed\""), "{}", p[0].message);
    }

    #[test]
    fn duplicate_names() {
        let s = spec(json!({
            "params": [{ "name": "p" }, { "name": "p" }],
            "stages": [
                { "name": "a", "delay": { "duration": "1s" } },
                { "name": "a", "delay": { "duration": "1s" } }
            ]
        }));
        assert_eq!(
            reasons(&check_workflow(&s)),
            [
                ("spec.params[1].name", DUPLICATE_NAME),
                ("spec.stages[1].name", DUPLICATE_NAME)
            ]
        );
    }

    #[test]
    fn template_errors_name_the_field() {
        let s = spec(json!({ "stages": [
            { "name": "a", "publish": { "topic": "t", "payload": "{{ seq }} {{ sequence }}" } },
            { "name": "b", "publish": { "topic": "t", "headers": { "x": "{{" } } }
        ]}));
        let p = check_workflow(&s);
        assert_eq!(
            reasons(&p),
            [
                ("spec.stages[0].publish.payload", TEMPLATE_ERROR),
                ("spec.stages[1].publish.headers.x", TEMPLATE_ERROR)
            ]
        );
        assert!(
            p[0].message
                .starts_with("unknown variable \"sequence\" at byte 10")
        );
        assert_eq!(p[1].message, "unclosed {{ at byte 0");
    }

    #[test]
    fn undeclared_params() {
        let s = spec(json!({
            "params": [{ "name": "region" }],
            "stages": [{ "name": "a", "publish": {
                "topic": "t", "key": "{{ params.region }}{{ params.zone }}",
                "payload": "{{ params.zone }}{{ params.tier }}"
            } }]
        }));
        let p = check_workflow(&s);
        assert_eq!(
            reasons(&p),
            [
                ("spec.stages[0].publish.key", UNDECLARED_PARAM),
                ("spec.stages[0].publish.payload", UNDECLARED_PARAM),
                ("spec.stages[0].publish.payload", UNDECLARED_PARAM)
            ]
        );
        assert_eq!(
            p[0].message,
            "a template uses {{ params.zone }}, but the workflow declares no param \"zone\"; \
             add it to spec.params"
        );
        assert!(p[1].message.contains("\"zone\""));
        assert!(p[2].message.contains("\"tier\""));
    }

    #[test]
    fn the_language_checks_name_the_field() {
        let s = spec(json!({
            "params": [{ "name": "n", "type": "integer", "default": 1 }],
            "stages": [
                { "name": "a", "publish": { "topic": "t", "count": "{{ params.n }}",
                  "payload": "{{ stages.c.outputs.x }}" } },
                { "name": "b", "when": "stages.a.outputs.published == '1' && params.n > 0",
                  "approval": { "message": "go {{ params.m }} {{ stages.a.outputs.published }}",
                                "timeout": "1 hour" } },
                { "name": "c", "expect": { "topic": "t", "where": "payload.x == stages.d.phase",
                  "capture": { "k": "payload.(" }, "timeout": "2m" } },
                { "name": "d", "dependsOn": [], "when": "params.n >", "expect": { "topic": "t",
                  "where": "stages.b.outputs.decision == 'Approved'" },
                  "retries": 1, "retryBackoff": { "duration": "1x" } },
                { "name": "e", "publish": { "topic": "t", "count": "{{ stages.a.outputs.n }}" } }
            ]
        }));
        assert_eq!(
            reasons(&check_workflow(&s)),
            [
                ("spec.stages[4].publish.count", TEMPLATE_ERROR),
                ("spec.stages[0].publish.payload", NOT_AN_ANCESTOR),
                ("spec.stages[1].approval.message", UNDECLARED_PARAM),
                ("spec.stages[1].approval.timeout", INVALID_DURATION),
                ("spec.stages[2].expect.capture.k", INVALID_EXPRESSION),
                ("spec.stages[3].when", INVALID_EXPRESSION),
                ("spec.stages[3].retryBackoff.duration", INVALID_DURATION),
                ("spec.stages[3].expect.where", NOT_AN_ANCESTOR),
            ]
        );
        let ok = spec(json!({ "stages": [
            { "name": "a", "publish": { "topic": "t" } },
            { "name": "b", "expect": { "topic": "u", "where": "payload.id == stages.a.outputs.published",
              "capture": { "id": "payload.id" } } },
            { "name": "c", "when": "stages.b.outputs.id != ''",
              "publish": { "topic": "v", "payload": "{{ stages.b.outputs.id }}" } }
        ]}));
        assert_eq!(check_workflow(&ok), []);
    }

    #[test]
    fn invalid_defaults() {
        let s = spec(json!({
            "params": [
                { "name": "ok", "type": "boolean", "default": "true" },
                { "name": "n", "type": "integer", "default": 1.5 },
                { "name": "b", "type": "boolean", "default": "yes" }
            ],
            "stages": [{ "name": "a", "delay": { "duration": "1s" } }]
        }));
        let p = check_workflow(&s);
        assert_eq!(
            reasons(&p),
            [
                ("spec.params[1].default", INVALID_DEFAULT),
                ("spec.params[2].default", INVALID_DEFAULT)
            ]
        );
        assert_eq!(
            p[0].message,
            "default: param \"n\": expected integer, got 1.5"
        );
    }

    #[test]
    fn invalid_durations() {
        let s = spec(json!({ "stages": [
            { "name": "a", "timeout": "5 minutes", "delay": { "duration": "1d" } },
            { "name": "b", "timeout": "5m", "delay": { "duration": "" } }
        ]}));
        let p = check_workflow(&s);
        assert_eq!(
            reasons(&p),
            [
                ("spec.stages[0].timeout", INVALID_DURATION),
                ("spec.stages[0].delay.duration", INVALID_DURATION),
                ("spec.stages[1].delay.duration", INVALID_DURATION)
            ]
        );
        assert!(p[0].message.contains("\"5 minutes\""));
    }

    #[test]
    fn problems_of_several_kinds_are_all_reported() {
        let s = spec(json!({
            "params": [{ "name": "n", "type": "number", "default": "x" }],
            "stages": [
                { "name": "a", "dependsOn": ["a"], "timeout": "soon",
                  "publish": { "topic": "t", "key": "{{ params.m }}" } }
            ]
        }));
        assert_eq!(
            reasons(&check_workflow(&s)),
            [
                ("spec.params[0].default", INVALID_DEFAULT),
                ("spec.stages", DEPENDENCY_CYCLE),
                ("spec.stages[0].timeout", INVALID_DURATION),
                ("spec.stages[0].publish.key", UNDECLARED_PARAM)
            ]
        );
    }
}
