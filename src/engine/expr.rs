//! CEL expressions of the workflow language: a stage's `when`, and an expect stage's `where` and
//! `capture`. They read `params` and `stages` (`stages.NAME.phase`, `stages.NAME.outputs.KEY`),
//! and `where`/`capture` also the message: `key`, `headers` and `payload` (the parsed JSON when
//! the payload is JSON, else its text).
//!
//! A root scope holds what a whole stage shares (params, stages) and is built once; each
//! message gets a child scope on top of it whose variables are made when the expression first
//! reads them ([`with_message`]). A simple `where` does not go through CEL at all: [`Expr::matches`]
//! tries a native evaluation first (`fast`) and falls back to CEL when it is not sure.

mod fast;
mod payload;

use super::outputs::Stages;
use crate::brokers::Incoming;
use cel::{
    Context, Program, Value,
    common::value::{CowVal, Val},
    context::VariableResolver,
    objects::{Key, Map},
};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, OnceLock},
};

/// A compiled CEL expression and what it reads.
pub struct Expr {
    program: Program,
    /// The expression reads `payload`.
    reads_payload: bool,
    /// The native form of a simple `where`.
    fast: Option<fast::Fast>,
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
        let fast = fast::Fast::compile(program.expression());
        Ok(Expr {
            program,
            reads_payload,
            fast,
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

    /// Whether [`Expr::matches`] evaluates the expression natively (falling back to CEL only
    /// where it is not sure).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Whether `msg` matches (the expression must give a bool): natively when the expression
    /// is simple enough, else with CEL in a child scope of `root` ([`with_message`]).
    pub fn matches(&self, root: &Context<'_, '_>, msg: &Incoming<'_>) -> Result<bool, String> {
        if let Some(b) = self.fast.as_ref().and_then(|f| f.eval(msg)) {
            return Ok(b);
        }
        with_message(root, msg, |scope| self.eval_bool(scope))
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

/// Runs `f` in a child scope of `root` that has the message's `key`, `headers` and `payload`
/// (the parsed JSON when the payload is JSON, else its text). Each is built when an expression
/// first reads it, once per call.
pub fn with_message<R>(
    root: &Context<'_, '_>,
    msg: &Incoming<'_>,
    f: impl FnOnce(&Context<'_, '_>) -> R,
) -> R {
    let vars = MessageVars {
        msg,
        key: OnceLock::new(),
        headers: OnceLock::new(),
        payload: OnceLock::new(),
    };
    let mut scope = root.new_inner_scope();
    scope.set_variable_resolver(&vars);
    f(&scope)
}

struct MessageVars<'m, 'a> {
    msg: &'m Incoming<'a>,
    key: OnceLock<Box<dyn Val>>,
    headers: OnceLock<Box<dyn Val>>,
    payload: OnceLock<Box<dyn Val>>,
}

impl VariableResolver for MessageVars<'_, '_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let (cell, build): (_, fn(&Incoming<'_>) -> Value) = match variable {
            "key" => (&self.key, key_value),
            "headers" => (&self.headers, headers_value),
            "payload" => (&self.payload, payload_value),
            _ => return None,
        };
        let v = cell.get_or_init(|| {
            build(self.msg)
                .try_into()
                .expect("a CEL value converts to a Val")
        });
        Some(CowVal::Borrowed(v.as_ref()))
    }
}

fn key_value(msg: &Incoming<'_>) -> Value {
    msg.key().map_or(Value::Null, |k| Value::from(k.as_ref()))
}

fn headers_value(msg: &Incoming<'_>) -> Value {
    let mut map = HashMap::new();
    msg.each_header(|k, v| {
        let v = String::from_utf8_lossy(v).into_owned();
        map.insert(
            Key::String(Arc::new(k.to_owned())),
            Value::String(Arc::new(v)),
        );
    });
    Value::Map(Map { map: Arc::new(map) })
}

fn payload_value(msg: &Incoming<'_>) -> Value {
    let text = msg.payload();
    payload::to_cel(&text).unwrap_or_else(|| Value::from(text.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{brokers::Delivery, engine::outputs::StageResult, message::Message};

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

    fn eval_on(e: &Expr, msg: &Message) -> Result<Value, String> {
        let root = root_scope(&BTreeMap::new(), &Stages::new());
        let d = Delivery::default();
        with_message(&root, &Incoming::of(msg, &d), |scope| e.eval(scope))
    }

    #[test]
    fn messages_json_and_text() {
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
        assert_eq!(eval_on(&e, &msg), Ok(Value::Bool(true)));
        let c = Expr::compile("payload.order.id", MESSAGE_VARIABLES).unwrap();
        assert_eq!(to_output(&eval_on(&c, &msg).unwrap()).unwrap(), "o-1");
        let c = Expr::compile("payload.amount", MESSAGE_VARIABLES).unwrap();
        assert_eq!(to_output(&eval_on(&c, &msg).unwrap()).unwrap(), "10");
        let missing = Expr::compile("payload.nope", MESSAGE_VARIABLES).unwrap();
        assert!(eval_on(&missing, &msg).is_err());

        // A payload that is not JSON is its text; reading a field of it is an error.
        let text = Message {
            payload: "hello".into(),
            ..Default::default()
        };
        let e = Expr::compile("payload == 'hello' && key == null", MESSAGE_VARIABLES).unwrap();
        assert_eq!(eval_on(&e, &text), Ok(Value::Bool(true)));
        let e = Expr::compile("payload.status == 'paid'", MESSAGE_VARIABLES).unwrap();
        assert!(eval_on(&e, &text).is_err());
    }

    /// Messages that a simple `where` may meet: keys missing or not, headers repeated, payloads
    /// of every JSON type at the fields compared, nested, repeated, not JSON, not UTF-8.
    fn sample_messages() -> Vec<Message> {
        let keys = [
            None,
            Some(""),
            Some("order-1"),
            Some("order-12"),
            Some("x-order-"),
            Some("Order-1"),
        ];
        let headers: [&[(&str, &str)]; 5] = [
            &[],
            &[("content-type", "text"), ("source", "x")],
            &[("source", "devset")],
            &[("source", "other"), ("content-type", "json")],
            &[("source", "devset"), ("source", "billing")],
        ];
        let payloads = [
            r#"{"seq":1,"status":"paid","pad":"xx"}"#,
            r#"{"seq":0,"status":"open","amount":3.25}"#,
            r#"{"seq":-5,"status":"PAID","amount":10.5}"#,
            r#"{"seq":18446744073709551615,"status":null}"#,
            r#"{"seq":2.0,"status":1,"ok":true}"#,
            r#"{"seq":"7","status":["paid"],"ok":false}"#,
            r#"{"order":{"id":"o-1","total":3},"seq":3}"#,
            r#"{"order":{"id":"o-2","total":9},"order":{"id":"o-3","total":1},"seq":1,"seq":9}"#,
            r#"{"order":"flat","seq":4,"status":"paid"}"#,
            r#"{"order":{"id":"o-4","total":2},"seq":2}"#,
            r#"{"status":"pa\u0069d","seq":1e2}"#,
            r#"[{"seq":1}]"#,
            r#""paid""#,
            "42",
            "paid",
            r#"{"seq":1,"status":"paid"} trailing"#,
            "",
        ];
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            for (j, h) in headers.iter().enumerate() {
                for (l, p) in payloads.iter().enumerate() {
                    if (i + j + l) % 2 == 0 || i == 2 {
                        out.push(Message {
                            seq: out.len() as u64 + 1,
                            key: k.map(String::from),
                            headers: h
                                .iter()
                                .map(|(a, b)| (a.to_string(), b.to_string()))
                                .collect(),
                            payload: p.to_string(),
                            routing_key: None,
                        });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_fast_path_gives_what_cel_gives() {
        let wheres = [
            "key == 'order-1'",
            "key != 'order-1'",
            "'order-1' == key",
            "key.startsWith('order-')",
            "key.endsWith('-1')",
            "key.contains('der')",
            "key < 'order-12'",
            "key >= 'order-1'",
            "headers.source == 'devset'",
            "headers['content-type'] == 'json'",
            "headers.source.startsWith('dev')",
            "payload.seq > 0",
            "payload.seq >= 1",
            "payload.seq == 1",
            "payload.seq != 1",
            "0 < payload.seq",
            "payload.seq < 2.5",
            "payload.amount > 10.0",
            "payload.status == 'paid'",
            "payload['status'] == 'paid'",
            "payload.status.startsWith('pa')",
            "payload.ok == true",
            "payload.ok != false",
            "payload.order.id == 'o-3'",
            "payload.order.total > 2",
            "payload.order.id.endsWith('1') || payload.seq == 9",
            "key.startsWith('order-') && payload.seq > 0",
            "key.startsWith('order-') && headers.source == 'devset' && payload.status == 'paid'",
            "!(payload.status == 'paid')",
            "!key.startsWith('order-') || payload.seq >= 3",
        ];
        let root = root_scope(&BTreeMap::new(), &Stages::new());
        let d = Delivery::default();
        let msgs = sample_messages();
        let mut native = 0;
        for w in wheres {
            let e = Expr::compile(w, MESSAGE_VARIABLES).unwrap();
            assert!(e.has_fast_path(), "{w} has no fast path");
            let fast = e.fast.as_ref().unwrap();
            let mut answers = [0; 2];
            for m in &msgs {
                let m = Incoming::of(m, &d);
                let cel = with_message(&root, &m, |scope| e.eval_bool(scope));
                if let Some(b) = fast.eval(&m) {
                    answers[b as usize] += 1;
                    assert_eq!(Ok(b), cel, "{w} on {m:?}: {:?}", msgs[m.seq() as usize - 1]);
                }
                assert_eq!(e.matches(&root, &m), cel, "{w}");
            }
            // Each where was answered natively both ways on these messages.
            assert!(answers[0] > 0 && answers[1] > 0, "{w}: {answers:?}");
            native += answers[0] + answers[1];
        }
        // Most answers are native (the rest are CEL's errors and cross-type comparisons).
        assert!(
            native > wheres.len() * msgs.len() / 3,
            "{native} of {}",
            wheres.len() * msgs.len()
        );
    }

    #[test]
    fn expressions_beyond_the_fast_path_go_to_cel() {
        for w in [
            "key == null",
            "key.matches('^o')",
            "size(payload) > 0",
            "payload.seq > params.min",
            "has(payload.seq)",
            "payload.seq + 1 > 1",
            "payload == 'paid'",
            "headers.size() > 0",
            "key in ['a']",
            "payload.seq > 1u",
        ] {
            let e = Expr::compile(w, MESSAGE_VARIABLES).unwrap();
            assert!(!e.has_fast_path(), "{w}");
        }
    }
}
