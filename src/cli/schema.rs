//! The CRDs' structural schemas and CEL rules (`x-kubernetes-validations`), applied offline
//! the way the API server applies them on `kubectl apply`: unknown fields, defaults, types,
//! enums, lengths, bounds, list-map keys, then the CEL rules. The schemas are the ones
//! [`crate::api::crds`] generates (the same as `crds/`), and the rules are evaluated with a CEL
//! interpreter, so there is no second copy of either to keep in step.
//!
//! Transition rules (those using `oldSelf`) need the object's previous version and are skipped.

use serde_json::Value;
use std::{cell::RefCell, collections::HashMap, rc::Rc};

/// The `apiVersion` of every devset kind.
pub const API_VERSION: &str = "devset.io/v1alpha1";

/// A problem at a field path such as `spec.stages[0].name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Validates objects against the CRDs of the devset API.
pub struct Validator {
    /// `openAPIV3Schema` by kind.
    schemas: HashMap<String, Value>,
    programs: RefCell<HashMap<String, Result<Rc<cel::Program>, String>>>,
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    pub fn new() -> Validator {
        let schemas = crate::api::crds()
            .into_iter()
            .filter_map(|crd| {
                let kind = crd.spec.names.kind.clone();
                let schema = crd.spec.versions.first()?.schema.as_ref()?;
                let schema = serde_json::to_value(schema.open_api_v3_schema.as_ref()?).ok()?;
                Some((kind, schema))
            })
            .collect();
        Validator {
            schemas,
            programs: RefCell::default(),
        }
    }

    /// Whether `kind` is a kind of the devset API.
    pub fn knows(&self, kind: &str) -> bool {
        self.schemas.contains_key(kind)
    }

    /// Validates one object of a devset kind and returns it with the schema's defaults filled
    /// in, or the problems found. `status` is ignored, as the API server ignores it on create.
    pub fn validate(&self, object: &Value) -> Result<Value, Vec<FieldError>> {
        let mut out = Vec::new();
        let mut v = object.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        let Some(schema) = self.schemas.get(&kind) else {
            return Err(vec![err(
                "kind",
                format!(
                    "Unsupported value: {kind:?}: supported values: {}",
                    quoted(self.schemas.keys())
                ),
            )]);
        };
        if v["apiVersion"] != API_VERSION {
            out.push(err(
                "apiVersion",
                format!(
                    "Unsupported value: {}: supported values: \"{API_VERSION}\"",
                    v["apiVersion"]
                ),
            ));
        }
        let meta = &v["metadata"];
        if meta["name"].as_str().is_none_or(str::is_empty)
            && meta["generateName"].as_str().is_none_or(str::is_empty)
        {
            out.push(err(
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
        self.walk(&mut v, schema, "", &mut out);
        if out.is_empty() { Ok(v) } else { Err(out) }
    }

    fn walk(&self, v: &mut Value, s: &Value, path: &str, out: &mut Vec<FieldError>) {
        let before = out.len();
        let preserve = s["x-kubernetes-preserve-unknown-fields"] == true;
        if v.is_null() && s["nullable"] == true {
            return;
        }
        match s["type"].as_str() {
            None if preserve => return,
            Some("object") => self.object(v, s, path, preserve, out),
            Some("array") => self.array(v, s, path, out),
            Some(t) => scalar(v, s, t, path, out),
            None => {}
        }
        if let Some(allowed) = s["enum"].as_array()
            && !allowed.contains(v)
        {
            out.push(err(
                path,
                format!(
                    "Unsupported value: {v}: supported values: {}",
                    allowed
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        // CEL rules run on a node whose own schema checks passed (as the API server's do on
        // well-typed data).
        if out.len() == before {
            self.rules(v, s, path, out);
        }
    }

    fn object(
        &self,
        v: &mut Value,
        s: &Value,
        path: &str,
        preserve: bool,
        out: &mut Vec<FieldError>,
    ) {
        let Some(o) = v.as_object_mut() else {
            out.push(type_error(path, v, "object"));
            return;
        };
        let props = s["properties"].as_object();
        // A null of a non-nullable field counts as absent (the API server drops it).
        o.retain(|k, val| {
            !val.is_null()
                || props
                    .and_then(|p| p.get(k))
                    .is_some_and(|p| p["nullable"] == true)
        });
        for (k, ps) in props.into_iter().flatten() {
            if !o.contains_key(k)
                && let Some(d) = ps.get("default")
            {
                o.insert(k.clone(), d.clone());
            }
        }
        for r in s["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap_or_default();
            if !o.contains_key(r) {
                out.push(err(&join(path, r), "Required value"));
            }
        }
        let extra = s.get("additionalProperties").filter(|a| a.is_object());
        for (k, child) in o.iter_mut() {
            let at = join(path, k);
            match (props.and_then(|p| p.get(k)), extra) {
                (Some(ps), _) | (None, Some(ps)) => self.walk(child, ps, &at, out),
                (None, None)
                    if preserve
                        || (path.is_empty()
                            && matches!(k.as_str(), "apiVersion" | "kind" | "metadata")) => {}
                (None, None) => out.push(err(&at, format!("unknown field {k:?}"))),
            }
        }
    }

    fn array(&self, v: &mut Value, s: &Value, path: &str, out: &mut Vec<FieldError>) {
        let Some(items) = v.as_array_mut() else {
            out.push(type_error(path, v, "array"));
            return;
        };
        let n = items.len() as u64;
        if let Some(min) = s["minItems"].as_u64()
            && n < min
        {
            out.push(err(
                path,
                format!("Invalid value: {n}: should have at least {min} items"),
            ));
        }
        if let Some(max) = s["maxItems"].as_u64()
            && n > max
        {
            out.push(err(
                path,
                format!("Too many: {n}: must have at most {max} items"),
            ));
        }
        for (i, item) in items.iter_mut().enumerate() {
            self.walk(item, &s["items"], &format!("{path}[{i}]"), out);
        }
        // Uniqueness, with the list's keys.
        let key = |item: &Value| -> Value {
            match s["x-kubernetes-list-type"].as_str() {
                Some("map") => {
                    let keys = s["x-kubernetes-list-map-keys"].as_array();
                    Value::Object(
                        keys.into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(|k| (k.to_owned(), item[k].clone()))
                            .collect(),
                    )
                }
                _ => item.clone(),
            }
        };
        if matches!(s["x-kubernetes-list-type"].as_str(), Some("map" | "set")) {
            for (i, item) in items.iter().enumerate() {
                let k = key(item);
                if items[..i].iter().any(|prev| key(prev) == k) {
                    out.push(err(
                        &format!("{path}[{i}]"),
                        format!("Duplicate value: {k}"),
                    ));
                }
            }
        }
    }

    fn rules(&self, v: &Value, s: &Value, path: &str, out: &mut Vec<FieldError>) {
        let Some(rules) = s["x-kubernetes-validations"].as_array() else {
            return;
        };
        for r in rules {
            let rule = r["rule"].as_str().unwrap_or_default();
            if rule.contains("oldSelf") {
                continue;
            }
            let at = match r["fieldPath"].as_str() {
                Some(f) if path.is_empty() => f.trim_start_matches('.').to_owned(),
                Some(f) => format!("{path}{f}"),
                None => path.to_owned(),
            };
            match self.evaluate(rule, v, s) {
                Ok(true) => {}
                Ok(false) => {
                    let message = r["message"]
                        .as_str()
                        .map_or_else(|| format!("failed rule: {rule}"), str::to_owned);
                    out.push(err(&at, message));
                }
                Err(e) => out.push(err(
                    &at,
                    format!("the rule {rule:?} could not be evaluated: {e}"),
                )),
            }
        }
    }

    /// Evaluates one CEL rule with `self` = `v` (typed by its schema `s`).
    pub fn evaluate(&self, rule: &str, v: &Value, s: &Value) -> Result<bool, String> {
        let program = self.program(rule)?;
        let mut ctx = cel::Context::default();
        ctx.add_variable_from_value("self", to_cel(v, s));
        match program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("it gave {other:?}, not a boolean")),
            Err(e) => Err(e.to_string()),
        }
    }

    fn program(&self, rule: &str) -> Result<Rc<cel::Program>, String> {
        self.programs
            .borrow_mut()
            .entry(rule.to_owned())
            .or_insert_with(|| {
                cel::Program::compile(rule)
                    .map(Rc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// Every CEL rule of every schema, with its message and whether it is a transition rule.
    pub fn all_rules(&self) -> Vec<(String, String, Option<String>)> {
        fn collect(kind: &str, s: &Value, out: &mut Vec<(String, String, Option<String>)>) {
            for r in s["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                out.push((
                    kind.to_owned(),
                    r["rule"].as_str().unwrap_or_default().to_owned(),
                    r["message"].as_str().map(str::to_owned),
                ));
            }
            for p in s["properties"].as_object().into_iter().flatten() {
                collect(kind, p.1, out);
            }
            for key in ["items", "additionalProperties"] {
                if s[key].is_object() {
                    collect(kind, &s[key], out);
                }
            }
        }
        let mut out = Vec::new();
        let mut kinds: Vec<_> = self.schemas.iter().collect();
        kinds.sort_by_key(|(k, _)| k.as_str());
        for (kind, s) in kinds {
            collect(kind, s, &mut out);
        }
        out
    }
}

fn scalar(v: &Value, s: &Value, t: &str, path: &str, out: &mut Vec<FieldError>) {
    let ok = match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        out.push(type_error(path, v, t));
        return;
    }
    if let Some(text) = v.as_str() {
        // `format: date-time` (an RFC 3339 time, e.g. a schedule's `startAt`), as the API
        // server checks it.
        if s["format"] == "date-time" && text.parse::<jiff::Timestamp>().is_err() {
            out.push(err(
                path,
                format!("Invalid value: {v}: {path} in body must be of type date-time: {v}"),
            ));
        }
        let n = text.chars().count() as u64;
        if let Some(min) = s["minLength"].as_u64()
            && n < min
        {
            out.push(err(
                path,
                format!("Invalid value: {v}: should be at least {min} chars long"),
            ));
        }
        if let Some(max) = s["maxLength"].as_u64()
            && n > max
        {
            out.push(err(
                path,
                format!("Too long: may not be more than {max} characters"),
            ));
        }
    }
    if let Some(x) = v.as_f64() {
        let bounds = [
            ("minimum", "exclusiveMinimum", "greater than"),
            ("maximum", "exclusiveMaximum", "less than"),
        ];
        for (key, exclusive_key, op) in bounds {
            let Some(bound) = s[key].as_f64() else {
                continue;
            };
            let exclusive = s[exclusive_key] == true;
            let beyond = if key == "minimum" {
                x < bound
            } else {
                x > bound
            };
            if beyond || (exclusive && x == bound) {
                let op = if exclusive {
                    op.to_owned()
                } else {
                    format!("{op} or equal to")
                };
                out.push(err(
                    path,
                    format!("Invalid value: {v}: should be {op} {}", num(bound)),
                ));
            }
        }
    }
}

/// A JSON value as CEL sees it under its schema: `number` fields are doubles even when
/// written as integers.
fn to_cel(v: &Value, s: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) if s["type"] == "number" => cel::Value::Float(n.as_f64().unwrap_or(0.0)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(t) => cel::Value::String(t.clone().into()),
        Value::Array(items) => cel::Value::List(
            items
                .iter()
                .map(|i| to_cel(i, &s["items"]))
                .collect::<Vec<_>>()
                .into(),
        ),
        Value::Object(o) => {
            // A field set to null is not set for the rules (`has(self.f)` is false), as on the
            // API server.
            let map: HashMap<String, cel::Value> = o
                .iter()
                .filter(|(_, val)| !val.is_null())
                .map(|(k, val)| {
                    let ps = s["properties"]
                        .get(k)
                        .or_else(|| s.get("additionalProperties"))
                        .unwrap_or(&Value::Null);
                    (k.clone(), to_cel(val, ps))
                })
                .collect();
            cel::Value::from(map)
        }
    }
}

/// A bound as people write it: `10`, not `10.0`.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

fn err(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn type_error(path: &str, v: &Value, want: &str) -> FieldError {
    let got = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    err(
        path,
        format!("Invalid value: {got:?}: must be of type {want}"),
    )
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn quoted<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let mut v: Vec<_> = items.map(|k| format!("{k:?}")).collect();
    v.sort();
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Vec<(String, String)> {
        match Validator::new().validate(&v) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    fn workflow(spec: Value) -> Value {
        json!({"apiVersion": API_VERSION, "kind": "Workflow", "metadata": {"name": "w"}, "spec": spec})
    }

    #[test]
    fn every_cel_rule_of_the_crds_compiles_and_every_one_is_evaluated() {
        let v = Validator::new();
        let rules = v.all_rules();
        assert!(rules.len() >= 14, "{rules:?}");
        for (kind, rule, _) in &rules {
            if rule.contains("oldSelf") {
                continue;
            }
            v.program(rule)
                .unwrap_or_else(|e| panic!("{kind}: {rule}: {e}"));
        }
        // Only the immutability rules of WorkflowRun are transition rules.
        let transition: Vec<_> = rules
            .iter()
            .filter(|(_, r, _)| r.contains("oldSelf"))
            .map(|(k, r, _)| (k.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            transition,
            [
                ("WorkflowRun", "self == oldSelf"),
                ("WorkflowRun", "self == oldSelf")
            ]
        );
    }

    #[test]
    fn null_fields_and_date_times_are_checked_as_the_api_server_does() {
        // A field set to null is unset for the rules: a stage whose only action is null has
        // none, and one with a null action beside a real one has one.
        let only_null = check(workflow(
            json!({"stages": [{"name": "a", "publish": null}]}),
        ));
        assert_eq!(only_null.len(), 1, "{only_null:?}");
        assert!(
            only_null[0].1.contains("exactly one action"),
            "{only_null:?}"
        );
        let beside =
            json!({"stages": [{"name": "a", "publish": null, "delay": {"duration": "1s"}}]});
        assert_eq!(check(workflow(beside)), []);
        let schedule = |end_at: Value| {
            check(
                json!({"apiVersion": API_VERSION, "kind": "WorkflowSchedule",
                "metadata": {"name": "s"},
                "spec": {"schedule": "0 * * * *", "endAt": end_at,
                    "runTemplate": {"spec": {"workflowRef": {"name": "w"}, "connectorRef": {"name": "c"}}}}}),
            )
        };
        assert_eq!(schedule(Value::Null), []);
        assert_eq!(schedule(json!("2030-01-01T00:00:00Z")), []);
        assert_eq!(
            schedule(json!("tomorrow")),
            [(
                "spec.endAt".to_owned(),
                "Invalid value: \"tomorrow\": spec.endAt in body must be of type date-time: \"tomorrow\"".to_owned()
            )]
        );
    }

    #[test]
    fn a_good_workflow_gets_its_defaults() {
        let v = Validator::new()
            .validate(&workflow(json!({
                "params": [{"name": "n"}],
                "stages": [{"name": "a", "publish": {"topic": "t", "ratePerSecond": 5}}]
            })))
            .unwrap();
        assert_eq!(v["spec"]["params"][0]["type"], "string");
        assert_eq!(v["spec"]["stages"][0]["publish"]["count"], 1);
    }

    #[test]
    fn schema_problems_name_the_field() {
        let p = check(workflow(json!({
            "stages": [
                {"name": "a", "retries": 11, "publish": {"topic": "t", "count": "x", "extra": 1}},
                {"name": "b", "delay": {}}
            ]
        })));
        assert_eq!(
            p,
            [
                (
                    "spec.stages[0].publish.count".into(),
                    "must be a number of at least 0, or a template such as \"{{ params.orders }}\""
                        .into()
                ),
                (
                    "spec.stages[0].publish.extra".into(),
                    "unknown field \"extra\"".into()
                ),
                (
                    "spec.stages[0].retries".into(),
                    "Invalid value: 11: should be less than or equal to 10".into()
                ),
                (
                    "spec.stages[1].delay.duration".into(),
                    "Required value".into()
                ),
            ]
        );
        let p = check(json!({"apiVersion": "v1", "kind": "Workflow", "spec": {"stages": []}}));
        let paths: Vec<_> = p.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["apiVersion", "metadata.name", "spec.stages"]);
    }

    #[test]
    fn cel_rules_apply_with_defaults_and_number_types() {
        // retryBackoff.factor is a number: an integer literal is a double to CEL.
        assert_eq!(
            check(workflow(json!({"stages": [{"name": "a", "retries": 1,
                "retryBackoff": {"duration": "1s", "factor": 0}, "delay": {"duration": "1s"}}]}))),
            [(
                "spec.stages[0].retryBackoff.factor".to_string(),
                "must be at least 1".to_string()
            )]
        );
        // count is an int or a string: each type meets its side of the rule.
        assert_eq!(
            check(workflow(
                json!({"stages": [{"name": "a", "publish": {"topic": "t", "count": "{{ params.n }}"}}]})
            )),
            []
        );
        // securityProtocol defaults to PLAINTEXT before the rule about sasl sees it.
        let p = check(json!({
            "apiVersion": API_VERSION, "kind": "BrokerConnector", "metadata": {"name": "k"},
            "spec": {"kafka": {"bootstrapServers": "k:9092", "sasl": {"secretRef": {"name": "s"}}}}
        }));
        assert_eq!(
            p,
            [(
                "spec.kafka".to_string(),
                "spec.kafka.sasl needs securityProtocol SASL_PLAINTEXT or SASL_SSL".to_string()
            )]
        );
    }
}
