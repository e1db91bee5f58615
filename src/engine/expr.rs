//! CEL expressions of the workflow language: a stage's `when`, and an expect stage's `where` and
//! `capture`. They read `params` and `stages` (`stages.NAME.phase`, `stages.NAME.outputs.KEY`),
//! and `where`/`capture` also the message: `key`, `headers` and `payload` (the parsed JSON when
//! the payload is JSON, else its text).
//!
//! A root [`Scope`] holds what a whole stage shares (params, stages) and is built once; each
//! message gets a cheap child scope on top of it.

use super::outputs::Stages;
use crate::message::Message;
use cel::{Context, Program, Value};
use std::collections::{BTreeMap, HashMap};

/// A compiled CEL expression and what it reads.
pub struct Expr {
    program: Program,
    /// The expression reads `payload`: parse it for every message.
    reads_payload: bool,
    /// Which of a message's variables the expression reads.
    reads: Reads,
}

/// Which of a message's variables to put in its scope: what an expression does not read is not
/// built (a headers map and a parsed payload per message are most of the cost of a `where`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reads {
    pub key: bool,
    pub headers: bool,
    pub payload: bool,
}

impl Reads {
    /// Every variable of a message.
    pub const ALL: Reads = Reads {
        key: true,
        headers: true,
        payload: true,
    };
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expr")
            .field("reads_payload", &self.reads_payload)
            .finish_non_exhaustive()
    }
}

/// The variables of an expression of a stage that does not read messages.
pub const STAGE_VARIABLES: &[&str] = &["params", "stages"];
/// The variables of `where` and `capture`.
pub const MESSAGE_VARIABLES: &[&str] = &["params", "stages", "key", "headers", "payload"];

impl Expr {
    /// Compiles `src`, checking that it reads only `variables`.
    pub fn compile(src: &str, variables: &[&str]) -> Result<Expr, String> {
        let program = Program::compile(src).map_err(|e| {
            let text = e.to_string();
            format!("does not compile: {}", text.trim())
        })?;
        let refs = program.references();
        let mut unknown: Vec<&str> = refs
            .variables()
            .into_iter()
            .filter(|v| !variables.contains(v))
            .collect();
        unknown.sort_unstable();
        if let Some(v) = unknown.first() {
            return Err(format!(
                "unknown variable {v:?}: use {}",
                variables.join(", ")
            ));
        }
        let reads_payload = refs.has_variable("payload");
        let reads = Reads {
            key: refs.has_variable("key"),
            headers: refs.has_variable("headers"),
            payload: reads_payload,
        };
        Ok(Expr {
            program,
            reads_payload,
            reads,
        })
    }

    /// The stage names the expression reads through `stages.NAME` or `stages["NAME"]`.
    pub fn stages_read(&self) -> Vec<String> {
        let mut names = Vec::new();
        walk(self.program.expression(), &mut |e| {
            use cel::common::ast::{Expr as E, LiteralValue};
            let name = match e {
                E::Select(s) if matches!(&s.operand.expr, E::Ident(i) if i == "stages") => {
                    Some(s.field.clone())
                }
                E::Call(c)
                    if c.func_name == "_[_]"
                        && c.args.len() == 2
                        && matches!(&c.args[0].expr, E::Ident(i) if i == "stages") =>
                {
                    match &c.args[1].expr {
                        E::Literal(LiteralValue::String(s)) => Some(s.to_string()),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(n) = name
                && !names.contains(&n)
            {
                names.push(n);
            }
        });
        names
    }

    /// Whether the expression reads the message's payload.
    pub fn reads_payload(&self) -> bool {
        self.reads_payload
    }

    /// Which of a message's variables the expression reads.
    pub fn reads(&self) -> Reads {
        self.reads
    }

    /// Evaluates the expression in `scope`.
    pub fn eval(&self, scope: &Context) -> Result<Value, String> {
        self.program.execute(scope).map_err(|e| e.to_string())
    }

    /// Evaluates the expression in `scope`; it must give a bool.
    pub fn eval_bool(&self, scope: &Context) -> Result<bool, String> {
        match self.eval(scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("gave {}, not a bool", kind(&other))),
        }
    }
}

fn walk(e: &cel::common::ast::IdedExpr, f: &mut impl FnMut(&cel::common::ast::Expr)) {
    use cel::common::ast::{EntryExpr, Expr as E};
    f(&e.expr);
    match &e.expr {
        E::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, f);
            }
            for a in &c.args {
                walk(a, f);
            }
        }
        E::Select(s) => walk(&s.operand, f),
        E::List(l) => l.elements.iter().for_each(|x| walk(x, f)),
        E::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    walk(&me.key, f);
                    walk(&me.value, f);
                }
            }
        }
        E::Struct(s) => {
            for entry in &s.entries {
                if let EntryExpr::StructField(sf) = &entry.expr {
                    walk(&sf.value, f);
                }
            }
        }
        E::Comprehension(c) => {
            walk(&c.iter_range, f);
            walk(&c.accu_init, f);
            walk(&c.loop_cond, f);
            walk(&c.loop_step, f);
            walk(&c.result, f);
        }
        E::Ident(_) | E::Literal(_) | E::Unspecified => {}
    }
}

/// A CEL value's type name, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "a bool",
        Value::Int(_) | Value::UInt(_) => "an integer",
        Value::Float(_) => "a number",
        Value::String(_) => "a string",
        Value::Null => "null",
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        _ => "a value of another type",
    }
}

/// The text of a CEL value as an output: strings as they are, other scalars in their JSON
/// form, lists and maps as JSON.
pub fn to_output(v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::String(s) => s.to_string(),
        Value::Null => String::new(),
        other => match other.json() {
            Ok(serde_json::Value::String(s)) => s,
            Ok(j) => j.to_string(),
            Err(_) => return Err(format!("gave {}, which has no text form", kind(other))),
        },
    })
}

/// The root scope of a stage's expressions: `params` and `stages`.
pub fn root_scope(
    params: &BTreeMap<String, serde_json::Value>,
    stages: &Stages,
) -> Context<'static, 'static> {
    let mut ctx = Context::default();
    ctx.add_variable_from_value(
        "params",
        json_to_cel(&serde_json::to_value(params).unwrap_or_default()),
    );
    ctx.add_variable_from_value("stages", stages_to_cel(stages));
    ctx
}

fn stages_to_cel(stages: &Stages) -> Value {
    let map: HashMap<String, Value> = stages
        .iter()
        .map(|(name, s)| {
            let outputs: HashMap<String, Value> = s
                .outputs
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            let mut fields: HashMap<String, Value> = HashMap::new();
            fields.insert("phase".into(), Value::from(s.phase.as_str()));
            fields.insert("outputs".into(), Value::from(outputs));
            (name.clone(), Value::from(fields))
        })
        .collect();
    Value::from(map)
}

/// Converts JSON into a CEL value: numbers that are integers become `int` (so
/// `payload.amount == 10` works), others `double`.
pub fn json_to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::from(a.iter().map(json_to_cel).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => {
            let m: HashMap<String, Value> =
                o.iter().map(|(k, v)| (k.clone(), json_to_cel(v))).collect();
            Value::from(m)
        }
    }
}

/// Adds a message's `key`, `headers` and `payload` to `scope`. The payload is parsed as JSON
/// only when `parse_payload` (else it is `null`); when it does not parse, `payload` is its text.
pub fn add_message(scope: &mut Context, msg: &Message, parse_payload: bool) {
    add_message_reading(
        scope,
        msg,
        Reads {
            payload: parse_payload,
            ..Reads::ALL
        },
    );
    if !parse_payload {
        scope.add_variable_from_value("payload", Value::Null);
    }
}

/// Adds the message variables that `reads` names to `scope`; `payload` is parsed as JSON when
/// it is read (its text when it does not parse).
pub fn add_message_reading(scope: &mut Context, msg: &Message, reads: Reads) {
    if reads.key {
        scope.add_variable_from_value("key", msg.key.as_deref().map_or(Value::Null, Value::from));
    }
    if reads.headers {
        let headers: HashMap<String, Value> = msg
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        scope.add_variable_from_value("headers", Value::from(headers));
    }
    if reads.payload {
        let payload = match serde_json::from_str::<serde_json::Value>(&msg.payload) {
            Ok(j) => json_to_cel(&j),
            Err(_) => Value::from(msg.payload.as_str()),
        };
        scope.add_variable_from_value("payload", payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::outputs::StageResult;

    fn stages() -> Stages {
        let mut s = Stages::new();
        s.insert(
            "orders".into(),
            StageResult {
                phase: "Succeeded".into(),
                outputs: [("published".to_string(), "5".to_string())].into(),
            },
        );
        s
    }

    #[test]
    fn when_reads_params_and_stages() {
        let params = [("region".to_string(), serde_json::json!("eu"))].into();
        let scope = root_scope(&params, &stages());
        let e = Expr::compile(
            "params.region == 'eu' && stages.orders.outputs.published == '5' && stages.orders.phase == 'Succeeded'",
            STAGE_VARIABLES,
        )
        .unwrap();
        assert!(e.eval_bool(&scope).unwrap());
        assert_eq!(e.stages_read(), ["orders"]);
        let e = Expr::compile("stages['orders'].phase == 'x'", STAGE_VARIABLES).unwrap();
        assert!(!e.eval_bool(&scope).unwrap());
        assert_eq!(e.stages_read(), ["orders"]);
    }

    #[test]
    fn bad_expressions_say_why() {
        let e = Expr::compile("params.a ==", STAGE_VARIABLES).unwrap_err();
        assert!(e.starts_with("does not compile"), "{e}");
        let e = Expr::compile("payload.x == 1", STAGE_VARIABLES).unwrap_err();
        assert_eq!(e, "unknown variable \"payload\": use params, stages");
        let scope = root_scope(&BTreeMap::new(), &Stages::new());
        let e = Expr::compile("1 + 1", STAGE_VARIABLES).unwrap();
        assert_eq!(
            e.eval_bool(&scope).unwrap_err(),
            "gave an integer, not a bool"
        );
    }

    #[test]
    fn messages_json_and_text() {
        let root = root_scope(&BTreeMap::new(), &Stages::new());
        let msg = Message {
            key: Some("k1".into()),
            headers: vec![("source".into(), "billing".into())],
            payload: r#"{"status":"paid","amount":10,"order":{"id":"o-1"}}"#.into(),
            ..Default::default()
        };
        let e = Expr::compile(
            "payload.status == 'paid' && payload.amount == 10 && headers.source == 'billing' && key == 'k1'",
            MESSAGE_VARIABLES,
        )
        .unwrap();
        assert!(e.reads_payload());
        let mut scope = root.new_inner_scope();
        add_message(&mut scope, &msg, true);
        assert!(e.eval_bool(&scope).unwrap());
        let c = Expr::compile("payload.order.id", MESSAGE_VARIABLES).unwrap();
        assert_eq!(to_output(&c.eval(&scope).unwrap()).unwrap(), "o-1");
        let c = Expr::compile("payload.amount", MESSAGE_VARIABLES).unwrap();
        assert_eq!(to_output(&c.eval(&scope).unwrap()).unwrap(), "10");
        let missing = Expr::compile("payload.nope", MESSAGE_VARIABLES).unwrap();
        assert!(missing.eval(&scope).is_err());

        // A payload that is not JSON is its text; reading a field of it is an error.
        let text = Message {
            payload: "hello".into(),
            ..Default::default()
        };
        let mut scope = root.new_inner_scope();
        add_message(&mut scope, &text, true);
        let e = Expr::compile("payload == 'hello' && key == null", MESSAGE_VARIABLES).unwrap();
        assert!(e.eval_bool(&scope).unwrap());
        let e = Expr::compile("payload.status == 'paid'", MESSAGE_VARIABLES).unwrap();
        assert!(e.eval_bool(&scope).is_err());
    }
}
