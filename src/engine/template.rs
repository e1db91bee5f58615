//! The template language of a publish stage's `key`, `headers`, `payload` and `routingKey`.
//!
//! A template is literal text with `{{ VAR }}` placeholders; the spaces inside the braces are
//! optional (`{{seq}}` works too). `VAR` is one of:
//!
//! | variable | value |
//! | --- | --- |
//! | `seq` | the message's number in its stage: 1, 2, 3, … |
//! | `uuid` | a random (v4) UUID, e.g. `67e55044-10b1-426f-9247-bb680e5fe0c8` |
//! | `now` | the time the message is rendered, RFC 3339 in UTC with milliseconds, e.g. `2026-11-21T10:00:00.123Z` |
//! | `now_ms` | the same time in milliseconds since the Unix epoch |
//! | `run.name`, `run.namespace` | the `WorkflowRun`'s name and namespace |
//! | `stage` | the stage's name |
//! | `params.NAME` | the run's value of param `NAME`: strings without quotes, other values as JSON text |
//! | `stages.NAME.outputs.KEY` | output `KEY` of stage `NAME`, an ancestor of this stage (empty when that stage has no such output) |
//!
//! Within one message every use of `uuid` (or `now`) gives the same value, so a key and a
//! payload can carry the same id. There are no escapes: a template cannot contain a literal `{{`
//! (a lone `{`, and `}}`, are fine).
//!
//! Templates are compiled once per stage ([`Template::compile`]), bound to a run once
//! ([`Template::bind`], which inlines everything but `seq`, `uuid`, `now` and `now_ms`), and
//! then rendered for every message without allocating beyond the output.

use super::outputs::Stages;
use crate::api::PublishAction;
use crate::message::{Message, Target};
use serde_json::Value;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A template that does not compile, or does not bind to a run.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum TemplateError {
    /// A `{{` without a `}}` after it.
    #[error("unclosed {{{{ at byte {offset}")]
    Unclosed {
        /// The byte offset of the `{{`.
        offset: usize,
    },
    /// A placeholder whose variable is not one of the known ones.
    #[error(
        "unknown variable {name:?} at byte {offset}: use seq, uuid, now, now_ms, run.name, \
         run.namespace, stage, params.NAME or stages.NAME.outputs.KEY"
    )]
    UnknownVariable {
        /// What the placeholder holds, without the surrounding spaces.
        name: String,
        /// The byte offset of the placeholder's `{{`.
        offset: usize,
    },
    /// `{{ params.NAME }}` where the workflow declares no param `NAME`.
    #[error("param {name:?} is not declared by the workflow")]
    UndeclaredParam {
        /// The param's name.
        name: String,
    },
}

// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Seq,
    Uuid,
    Now,
    NowMs,
    RunName,
    RunNamespace,
    Stage,
    Param(String),
    Output { stage: String, key: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Lit(String),
    Var(Var),
}

/// A compiled template: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// The per-run constants a template is bound to.
#[derive(Debug, Clone, Copy)]
pub struct RunContext<'a> {
    /// The `WorkflowRun`'s name.
    pub run_name: &'a str,
    /// The `WorkflowRun`'s namespace.
    pub run_namespace: &'a str,
    /// The stage's name.
    pub stage: &'a str,
    /// The run's effective params (see [`resolve_params`](super::params::resolve_params)).
    pub params: &'a BTreeMap<String, Value>,
    /// The finished stages, for `{{ stages.NAME.outputs.KEY }}`.
    pub stages: &'a Stages,
}

impl Template {
    /// Compiles template text (see the module docs for the language).
    pub fn compile(src: &str) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut pos = 0;
        while let Some(found) = src[pos..].find("{{") {
            let open = pos + found;
            if open > pos {
                segments.push(Segment::Lit(src[pos..open].to_owned()));
            }
            let inner = open + 2;
            let close = src[inner..]
                .find("}}")
                .ok_or(TemplateError::Unclosed { offset: open })?
                + inner;
            segments.push(Segment::Var(parse_var(src[inner..close].trim(), open)?));
            pos = close + 2;
        }
        if pos < src.len() {
            segments.push(Segment::Lit(src[pos..].to_owned()));
        }
        Ok(Template { segments })
    }

    /// The names of the params the template uses, in order of first use, without repeats.
    pub fn params_used(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.collect_params(&mut names);
        names
    }

    /// The stages whose outputs the template uses, in order of first use, without repeats.
    pub fn stages_used(&self) -> Vec<&str> {
        let mut names = Vec::new();
        for s in &self.segments {
            if let Segment::Var(Var::Output { stage, .. }) = s
                && !names.contains(&stage.as_str())
            {
                names.push(stage.as_str());
            }
        }
        names
    }

    /// Renders the template once, for text that is not per message (an approval's message).
    pub fn render_once(&self, ctx: &RunContext) -> Result<String, TemplateError> {
        let mut out = String::new();
        self.bind(ctx)?.render_into(&MessageVars::new(0), &mut out);
        Ok(out)
    }

    fn collect_params<'s>(&'s self, names: &mut Vec<&'s str>) {
        for s in &self.segments {
            if let Segment::Var(Var::Param(p)) = s
                && !names.contains(&p.as_str())
            {
                names.push(p);
            }
        }
    }

    /// Inlines the per-run constants (run name and namespace, stage, params), leaving only
    /// `seq`, `uuid`, `now` and `now_ms` to render per message. A param missing from
    /// `ctx.params` is an [`UndeclaredParam`](TemplateError::UndeclaredParam) error. Param
    /// values render as their JSON text, strings without quotes and `null` as nothing.
    pub fn bind(&self, ctx: &RunContext) -> Result<BoundTemplate, TemplateError> {
        let mut parts: Vec<Part> = Vec::with_capacity(self.segments.len());
        // Appends constant text, merging it into a literal before it.
        fn push_lit(parts: &mut Vec<Part>, text: &str) {
            if text.is_empty() {
                return;
            }
            match parts.last_mut() {
                Some(Part::Lit(s)) => s.push_str(text),
                _ => parts.push(Part::Lit(text.to_owned())),
            }
        }
        for seg in &self.segments {
            match seg {
                Segment::Lit(s) => push_lit(&mut parts, s),
                Segment::Var(Var::RunName) => push_lit(&mut parts, ctx.run_name),
                Segment::Var(Var::RunNamespace) => push_lit(&mut parts, ctx.run_namespace),
                Segment::Var(Var::Stage) => push_lit(&mut parts, ctx.stage),
                Segment::Var(Var::Param(name)) => match ctx.params.get(name) {
                    None => return Err(TemplateError::UndeclaredParam { name: name.clone() }),
                    Some(Value::String(s)) => push_lit(&mut parts, s),
                    Some(Value::Null) => {}
                    Some(v) => push_lit(&mut parts, &v.to_string()),
                },
                Segment::Var(Var::Output { stage, key }) => {
                    if let Some(v) = ctx.stages.get(stage).and_then(|s| s.outputs.get(key)) {
                        push_lit(&mut parts, v)
                    }
                }
                Segment::Var(Var::Seq) => parts.push(Part::Seq),
                Segment::Var(Var::Uuid) => parts.push(Part::Uuid),
                Segment::Var(Var::Now) => parts.push(Part::Now),
                Segment::Var(Var::NowMs) => parts.push(Part::NowMs),
            }
        }
        let max_len = parts.iter().map(Part::max_len).sum();
        Ok(BoundTemplate { parts, max_len })
    }
}

fn parse_var(name: &str, offset: usize) -> Result<Var, TemplateError> {
    Ok(match name {
        "seq" => Var::Seq,
        "uuid" => Var::Uuid,
        "now" => Var::Now,
        "now_ms" => Var::NowMs,
        "run.name" => Var::RunName,
        "run.namespace" => Var::RunNamespace,
        "stage" => Var::Stage,
        _ => {
            if let Some(p) = name.strip_prefix("params.")
                && is_param_name(p)
            {
                Var::Param(p.to_owned())
            } else if let Some((stage, key)) = name
                .strip_prefix("stages.")
                .and_then(|r| r.split_once(".outputs."))
                && is_stage_name(stage)
                && is_param_name(key)
            {
                Var::Output {
                    stage: stage.to_owned(),
                    key: key.to_owned(),
                }
            } else {
                return Err(TemplateError::UnknownVariable {
                    name: name.to_owned(),
                    offset,
                });
            }
        }
    })
}

// A stage name as the CRD allows it: a DNS label.
fn is_stage_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

// A param name as the CRD allows it: ^[A-Za-z_][A-Za-z0-9_]*$
fn is_param_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Seq,
    Uuid,
    Now,
    NowMs,
}

impl Part {
    // The most bytes the part renders to.
    fn max_len(&self) -> usize {
        match self {
            Part::Lit(s) => s.len(),
            Part::Seq => 20,                                  // u64::MAX
            Part::Uuid => uuid::fmt::Hyphenated::LENGTH,      // 36
            Part::Now => "-009999-12-31T23:59:59.999Z".len(), // jiff's widest timestamp
            Part::NowMs => 20,                                // i64::MIN
        }
    }
}

/// A template bound to a run: literal text and the per-message variables `seq`, `uuid`, `now`
/// and `now_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundTemplate {
    parts: Vec<Part>,
    max_len: usize,
}

impl BoundTemplate {
    /// Appends the rendered text for one message to `out`, allocating at most once (to make
    /// room for the longest possible result).
    pub fn render_into(&self, vars: &MessageVars, out: &mut String) {
        out.reserve(self.max_len);
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Seq => out.push_str(itoa::Buffer::new().format(vars.seq)),
                Part::Uuid => {
                    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
                    out.push_str(vars.uuid().hyphenated().encode_lower(&mut buf));
                }
                Part::Now => {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "{:.3}", vars.now());
                }
                Part::NowMs => {
                    out.push_str(itoa::Buffer::new().format(vars.now().as_millisecond()))
                }
            }
        }
    }

    /// Whether the template renders the same text for every message.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }
}

/// Per-message values, shared by all templates of one message (so `{{ uuid }}` in the key and
/// the payload of one message is the same UUID). The UUID and the time are made on first use.
#[derive(Debug, Clone)]
pub struct MessageVars {
    seq: u64,
    uuid: OnceCell<uuid::Uuid>,
    now: OnceCell<jiff::Timestamp>,
}

impl MessageVars {
    /// The values for message number `seq`.
    pub fn new(seq: u64) -> Self {
        MessageVars {
            seq,
            uuid: OnceCell::new(),
            now: OnceCell::new(),
        }
    }

    /// The values for message number `seq`, with `now` fixed (cut to whole milliseconds), for
    /// reproducible output.
    pub fn at(seq: u64, now: jiff::Timestamp) -> Self {
        let vars = MessageVars::new(seq);
        let _ = vars.now.set(to_millis(now));
        vars
    }

    fn uuid(&self) -> &uuid::Uuid {
        self.uuid.get_or_init(uuid::Uuid::new_v4)
    }

    fn now(&self) -> jiff::Timestamp {
        *self.now.get_or_init(|| to_millis(jiff::Timestamp::now()))
    }
}

// `now` and `now_ms` show the same instant, so `now` is cut to what `now_ms` can say.
fn to_millis(t: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(t.as_millisecond()).unwrap_or(t)
}

/// All templates of one publish stage: `key`, each header value, `payload` and `routingKey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishTemplates {
    key: Option<Template>,
    headers: Vec<(String, Template)>,
    payload: Option<Template>,
    routing_key: Option<Template>,
    to_exchange: bool,
}

impl PublishTemplates {
    /// Compiles the templates of a publish action. An error carries the field it concerns,
    /// relative to the action: `key`, `headers.NAME`, `payload` or `routingKey`.
    pub fn compile(p: &PublishAction) -> Result<PublishTemplates, (String, TemplateError)> {
        fn opt(
            src: &Option<String>,
            field: &str,
        ) -> Result<Option<Template>, (String, TemplateError)> {
            src.as_deref()
                .map(Template::compile)
                .transpose()
                .map_err(|e| (field.to_owned(), e))
        }
        let key = opt(&p.key, "key")?;
        let headers = p
            .headers
            .iter()
            .map(|(name, src)| {
                Template::compile(src)
                    .map(|t| (name.clone(), t))
                    .map_err(|e| (format!("headers.{name}"), e))
            })
            .collect::<Result<_, _>>()?;
        Ok(PublishTemplates {
            key,
            headers,
            payload: opt(&p.payload, "payload")?,
            routing_key: opt(&p.routing_key, "routingKey")?,
            to_exchange: p.exchange.is_some(),
        })
    }

    /// The names of the params the templates use, in order of first use, without repeats.
    pub fn params_used(&self) -> Vec<&str> {
        let mut names = Vec::new();
        for t in self.fields().map(|(_, t)| t) {
            t.collect_params(&mut names);
        }
        names
    }

    /// Each field (`key`, `headers.NAME`, …) with the params its template uses, for checks that
    /// point at the field.
    pub(crate) fn params_by_field(&self) -> Vec<(String, Vec<&str>)> {
        self.fields()
            .map(|(f, t)| (f.to_string(), t.params_used()))
            .filter(|(_, p)| !p.is_empty())
            .collect()
    }

    /// Each field with the stages whose outputs its template uses.
    pub(crate) fn stages_by_field(&self) -> Vec<(String, Vec<&str>)> {
        self.fields()
            .map(|(f, t)| (f.to_string(), t.stages_used()))
            .filter(|(_, p)| !p.is_empty())
            .collect()
    }

    /// The templates with the fields they come from, in the order `compile` reads them.
    fn fields(&self) -> impl Iterator<Item = (Field<'_>, &Template)> {
        let key = self.key.iter().map(|t| (Field::Key, t));
        let headers = self.headers.iter().map(|(n, t)| (Field::Header(n), t));
        let payload = self.payload.iter().map(|t| (Field::Payload, t));
        let routing = self.routing_key.iter().map(|t| (Field::RoutingKey, t));
        key.chain(headers).chain(payload).chain(routing)
    }

    /// Binds every template to the run (see [`Template::bind`]); an error carries the field it
    /// concerns, as for [`compile`](Self::compile).
    pub fn bind(&self, ctx: &RunContext) -> Result<BoundPublish, (String, TemplateError)> {
        let bind = |t: &Template, field: Field| t.bind(ctx).map_err(|e| (field.to_string(), e));
        let opt =
            |t: &Option<Template>, field: Field| t.as_ref().map(|t| bind(t, field)).transpose();
        let routing_key = match (&self.routing_key, self.to_exchange) {
            (Some(t), _) => Some(bind(t, Field::RoutingKey)?),
            // An exchange without a routingKey routes with the empty key.
            (None, true) => Some(BoundTemplate {
                parts: Vec::new(),
                max_len: 0,
            }),
            (None, false) => None,
        };
        Ok(BoundPublish {
            key: opt(&self.key, Field::Key)?,
            headers: self
                .headers
                .iter()
                .map(|(n, t)| Ok((n.clone(), bind(t, Field::Header(n))?)))
                .collect::<Result<_, _>>()?,
            payload: opt(&self.payload, Field::Payload)?,
            routing_key,
        })
    }
}

#[derive(Clone, Copy)]
enum Field<'a> {
    Key,
    Header(&'a str),
    Payload,
    RoutingKey,
}

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Key => f.write_str("key"),
            Field::Header(n) => write!(f, "headers.{n}"),
            Field::Payload => f.write_str("payload"),
            Field::RoutingKey => f.write_str("routingKey"),
        }
    }
}

/// The templates of one publish stage, bound to a run: renders the stage's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPublish {
    key: Option<BoundTemplate>,
    headers: Vec<(String, BoundTemplate)>,
    payload: Option<BoundTemplate>,
    // Some for an exchange target (empty text without a routingKey template), else None.
    routing_key: Option<BoundTemplate>,
}

impl BoundPublish {
    /// Renders message number `seq`. Without a payload template the payload is empty; without a
    /// key template the key is `None`. The routing key is `Some` exactly when the target is an
    /// exchange (empty without a `routingKey`).
    pub fn render(&self, seq: u64) -> Message {
        let mut msg = Message::default();
        self.render_into(seq, &mut msg);
        msg
    }

    /// Like [`render`](Self::render), but overwrites `msg`, reusing its strings' allocations.
    pub fn render_into(&self, seq: u64, msg: &mut Message) {
        let vars = MessageVars::new(seq);
        msg.seq = seq;
        render_opt(&self.key, &vars, &mut msg.key);
        msg.headers.truncate(self.headers.len());
        for (i, (name, t)) in self.headers.iter().enumerate() {
            match msg.headers.get_mut(i) {
                Some((n, v)) => {
                    n.clone_from(name);
                    v.clear();
                    t.render_into(&vars, v);
                }
                None => {
                    let mut v = String::new();
                    t.render_into(&vars, &mut v);
                    msg.headers.push((name.clone(), v));
                }
            }
        }
        msg.payload.clear();
        if let Some(t) = &self.payload {
            t.render_into(&vars, &mut msg.payload);
        }
        render_opt(&self.routing_key, &vars, &mut msg.routing_key);
    }
}

fn render_opt(t: &Option<BoundTemplate>, vars: &MessageVars, out: &mut Option<String>) {
    match t {
        Some(t) => {
            let s = out.get_or_insert_with(String::new);
            s.clear();
            t.render_into(vars, s);
        }
        None => *out = None,
    }
}

/// Where a publish action sends its messages: `topic` to a Kafka topic, `exchange` to a RabbitMQ
/// exchange, `queue` to a RabbitMQ queue. The API server's CEL rules ensure exactly one is set;
/// were none set, the result is an empty topic name, which every broker adapter rejects (rather
/// than a RabbitMQ publish that would silently go nowhere).
pub fn target_of(p: &PublishAction) -> Target {
    if let Some(t) = &p.topic {
        Target::Topic(t.clone())
    } else if let Some(e) = &p.exchange {
        Target::Exchange(e.clone())
    } else if let Some(q) = &p.queue {
        Target::Queue(q.clone())
    } else {
        Target::Topic(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params() -> BTreeMap<String, Value> {
        serde_json::from_value(json!({
            "region": "us-east", "count": 5, "ratio": 1.5, "on": true, "unset": null
        }))
        .unwrap()
    }

    static NO_STAGES: Stages = Stages::new();

    #[test]
    fn stage_outputs_render_from_the_finished_stages() {
        let mut stages = Stages::new();
        stages.insert(
            "pay".into(),
            crate::engine::outputs::StageResult {
                phase: "Succeeded".into(),
                outputs: [("lastOrder".to_string(), "o-7".to_string())].into(),
            },
        );
        let params = BTreeMap::new();
        let t = Template::compile(
            "{{ stages.pay.outputs.lastOrder }}/{{stages.pay.outputs.none}}/{{ seq }}",
        )
        .unwrap();
        assert_eq!(t.stages_used(), ["pay"]);
        let c = RunContext {
            stages: &stages,
            ..ctx(&params)
        };
        let mut out = String::new();
        t.bind(&c)
            .unwrap()
            .render_into(&MessageVars::new(3), &mut out);
        assert_eq!(out, "o-7//3");
        assert!(matches!(
            Template::compile("{{ stages.Pay.outputs.x }}"),
            Err(TemplateError::UnknownVariable { .. })
        ));
        assert!(matches!(
            Template::compile("{{ stages.pay.phase }}"),
            Err(TemplateError::UnknownVariable { .. })
        ));
    }

    fn ctx(params: &BTreeMap<String, Value>) -> RunContext<'_> {
        RunContext {
            run_name: "run-1",
            run_namespace: "team-a",
            stage: "create",
            params,
            stages: &NO_STAGES,
        }
    }

    fn t2000() -> jiff::Timestamp {
        "2000-01-02T03:04:05.678901Z".parse().unwrap()
    }

    // Renders with seq 7 and a fixed time.
    fn render(src: &str) -> String {
        let p = params();
        let bound = Template::compile(src).unwrap().bind(&ctx(&p)).unwrap();
        let mut out = String::new();
        bound.render_into(&MessageVars::at(7, t2000()), &mut out);
        out
    }

    #[test]
    fn literal_text_stays_as_it_is() {
        assert_eq!(render(""), "");
        assert_eq!(render("plain"), "plain");
        assert_eq!(render("{ a } }} {x}"), "{ a } }} {x}");
        assert_eq!(render("ünïcødé ✓"), "ünïcødé ✓");
    }

    #[test]
    fn every_variable() {
        assert_eq!(render("{{ seq }}"), "7");
        assert_eq!(render("{{ now }}"), "2000-01-02T03:04:05.678Z");
        assert_eq!(render("{{ now_ms }}"), "946782245678");
        assert_eq!(render("{{ run.name }}/{{ run.namespace }}"), "run-1/team-a");
        assert_eq!(render("{{ stage }}"), "create");
        assert_eq!(
            render("{{ params.region }} {{ params.count }} {{ params.ratio }} {{ params.on }}"),
            "us-east 5 1.5 true"
        );
        assert_eq!(render("[{{ params.unset }}]"), "[]");
        let u = render("{{ uuid }}");
        let parsed = uuid::Uuid::parse_str(&u).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(u, parsed.hyphenated().to_string());
    }

    #[test]
    fn spaces_inside_braces_are_optional() {
        assert_eq!(
            render("{{seq}}-{{  seq}}-{{seq\t}}-{{\n seq \n}}"),
            "7-7-7-7"
        );
    }

    #[test]
    fn now_always_has_milliseconds() {
        let p = params();
        let t = Template::compile("{{now}} {{now_ms}}")
            .unwrap()
            .bind(&ctx(&p))
            .unwrap();
        let mut out = String::new();
        let at = "2026-11-21T10:00:00Z".parse().unwrap();
        t.render_into(&MessageVars::at(1, at), &mut out);
        assert_eq!(out, "2026-11-21T10:00:00.000Z 1795255200000");
        // The real clock, in the right shape and close to now.
        out.clear();
        t.render_into(&MessageVars::new(1), &mut out);
        let (text, ms) = out.split_once(' ').unwrap();
        assert_eq!(text.len(), 24, "{text}");
        let parsed: jiff::Timestamp = text.parse().unwrap();
        assert_eq!(parsed.as_millisecond(), ms.parse::<i64>().unwrap());
        let age = jiff::Timestamp::now().as_millisecond() - parsed.as_millisecond();
        assert!((0..60_000).contains(&age), "{age}");
    }

    #[test]
    fn uuid_and_now_are_shared_within_a_message_and_fresh_across() {
        let p = params();
        let t = Template::compile("{{uuid}} {{uuid}} {{now}}")
            .unwrap()
            .bind(&ctx(&p))
            .unwrap();
        let vars = MessageVars::new(1);
        let (mut a, mut b) = (String::new(), String::new());
        t.render_into(&vars, &mut a);
        t.render_into(&vars, &mut b);
        assert_eq!(a, b);
        let (u1, u2) = a.split_at(36);
        assert_eq!(u1, &u2[1..37]);
        let mut c = String::new();
        t.render_into(&MessageVars::new(1), &mut c);
        assert_ne!(a[..36], c[..36]);
    }

    #[test]
    fn unclosed_placeholder() {
        assert_eq!(
            Template::compile("ab{{ seq"),
            Err(TemplateError::Unclosed { offset: 2 })
        );
        assert_eq!(
            Template::compile("{{ seq }} {{"),
            Err(TemplateError::Unclosed { offset: 10 })
        );
        assert_eq!(
            Template::compile("{{ seq }"),
            Err(TemplateError::Unclosed { offset: 0 })
        );
        assert_eq!(
            Template::compile("x{{").unwrap_err().to_string(),
            "unclosed {{ at byte 1"
        );
    }

    #[test]
    fn unknown_variables() {
        for (src, name, offset) in [
            ("{{ foo }}", "foo", 0),
            ("é{{ Seq }}", "Seq", 2),
            ("{{}}", "", 0),
            ("{{ }}", "", 0),
            ("{{ run }}", "run", 0),
            ("{{ run.uid }}", "run.uid", 0),
            ("{{ params }}", "params", 0),
            ("{{ params. }}", "params.", 0),
            ("{{ params.1x }}", "params.1x", 0),
            ("{{ params.a-b }}", "params.a-b", 0),
            ("{{ params.a b }}", "params.a b", 0),
            ("{{ seq | upper }}", "seq | upper", 0),
            ("{{{ seq }}}", "{ seq", 0),
            ("{{ seq }}{{ '{{' }}", "'{{'", 9),
        ] {
            assert_eq!(
                Template::compile(src),
                Err(TemplateError::UnknownVariable {
                    name: name.into(),
                    offset
                }),
                "{src}"
            );
        }
        assert_eq!(
            Template::compile("{{ nope }}").unwrap_err().to_string(),
            "unknown variable \"nope\" at byte 0: use seq, uuid, now, now_ms, run.name, \
             run.namespace, stage, params.NAME or stages.NAME.outputs.KEY"
        );
    }

    #[test]
    fn params_used_in_order_without_repeats() {
        let t = Template::compile("{{params.b}}{{params.a}}{{seq}}{{params.b}}{{ params._c9 }}")
            .unwrap();
        assert_eq!(t.params_used(), ["b", "a", "_c9"]);
        assert!(Template::compile("x").unwrap().params_used().is_empty());
    }

    #[test]
    fn bind_needs_every_param() {
        let p = params();
        let e = Template::compile("{{ params.region }}{{ params.zone }}")
            .unwrap()
            .bind(&ctx(&p))
            .unwrap_err();
        assert_eq!(
            e,
            TemplateError::UndeclaredParam {
                name: "zone".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "param \"zone\" is not declared by the workflow"
        );
    }

    #[test]
    fn bind_merges_constants_into_one_literal() {
        let p = params();
        let t = Template::compile("a{{ run.name }}b{{ params.count }}{{stage}}")
            .unwrap()
            .bind(&ctx(&p))
            .unwrap();
        assert!(t.is_constant());
        assert_eq!(t.parts, [Part::Lit("arun-1b5create".into())]);
        let t = Template::compile("a{{stage}}{{seq}}b{{ params.unset }}c")
            .unwrap()
            .bind(&ctx(&p))
            .unwrap();
        assert!(!t.is_constant());
        assert_eq!(
            t.parts,
            [
                Part::Lit("acreate".into()),
                Part::Seq,
                Part::Lit("bc".into())
            ]
        );
        let empty = Template::compile("").unwrap().bind(&ctx(&p)).unwrap();
        assert!(empty.is_constant() && empty.parts.is_empty());
    }

    #[test]
    fn non_scalar_params_render_as_json() {
        let p: BTreeMap<String, Value> =
            serde_json::from_value(json!({"list": [1, "a"], "q": "say \"hi\""})).unwrap();
        let t = Template::compile("{{params.list}} {{params.q}}")
            .unwrap()
            .bind(&ctx(&p))
            .unwrap();
        let mut out = String::new();
        t.render_into(&MessageVars::new(1), &mut out);
        assert_eq!(out, "[1,\"a\"] say \"hi\"");
    }

    #[test]
    fn render_reserves_enough_at_once() {
        let p = params();
        let t = Template::compile("{{seq}}{{uuid}}{{now}}{{now_ms}}")
            .unwrap()
            .bind(&ctx(&p))
            .unwrap();
        let mut out = String::new();
        t.render_into(&MessageVars::new(u64::MAX), &mut out);
        let cap = out.capacity();
        assert!(cap >= t.max_len);
        assert!(out.len() <= t.max_len);
        // Rendering more after a clear does not grow the buffer.
        out.clear();
        t.render_into(&MessageVars::new(u64::MAX), &mut out);
        assert_eq!(out.capacity(), cap);
    }

    fn action(v: Value) -> PublishAction {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn publish_renders_whole_messages() {
        let p = params();
        let a = action(json!({
            "exchange": "orders",
            "routingKey": "orders.{{ params.region }}",
            "key": "order-{{ seq }}",
            "headers": { "trace": "{{ uuid }}", "source": "{{ run.name }}" },
            "payload": "{\"id\": \"{{ uuid }}\", \"seq\": {{ seq }}, \"n\": {{ params.count }}}"
        }));
        let t = PublishTemplates::compile(&a).unwrap();
        assert_eq!(t.params_used(), ["count", "region"]);
        let b = t.bind(&ctx(&p)).unwrap();
        let m = b.render(3);
        assert_eq!(m.seq, 3);
        assert_eq!(m.key.as_deref(), Some("order-3"));
        assert_eq!(m.routing_key.as_deref(), Some("orders.us-east"));
        // Headers come in name order; one uuid per message.
        assert_eq!(m.headers[0], ("source".into(), "run-1".into()));
        assert_eq!(m.headers[1].0, "trace");
        let id = &m.headers[1].1;
        assert_eq!(
            m.payload,
            format!("{{\"id\": \"{id}\", \"seq\": 3, \"n\": 5}}")
        );
        assert_ne!(b.render(3).headers[1].1, *id);
    }

    #[test]
    fn publish_without_templates() {
        let p = params();
        let t = PublishTemplates::compile(&action(json!({ "topic": "t" }))).unwrap();
        assert!(t.params_used().is_empty());
        let m = t.bind(&ctx(&p)).unwrap().render(1);
        assert_eq!(
            m,
            Message {
                seq: 1,
                ..Message::default()
            }
        );
        // An exchange without a routingKey routes with the empty key.
        let t = PublishTemplates::compile(&action(json!({ "exchange": "x" }))).unwrap();
        let m = t.bind(&ctx(&p)).unwrap().render(1);
        assert_eq!(m.routing_key.as_deref(), Some(""));
    }

    #[test]
    fn render_into_reuses_a_message() {
        let p = params();
        let a = action(json!({
            "queue": "q", "key": "k{{seq}}", "headers": { "h": "{{seq}}" }, "payload": "p{{seq}}"
        }));
        let b = PublishTemplates::compile(&a)
            .unwrap()
            .bind(&ctx(&p))
            .unwrap();
        let mut m = Message {
            routing_key: Some("stale".into()),
            headers: vec![("x".into(), "y".into()), ("z".into(), "w".into())],
            ..Message::default()
        };
        b.render_into(1, &mut m);
        b.render_into(2, &mut m);
        assert_eq!(m, b.render(2));
        assert_eq!(
            m,
            Message {
                seq: 2,
                key: Some("k2".into()),
                headers: vec![("h".into(), "2".into())],
                payload: "p2".into(),
                routing_key: None,
            }
        );
        // A template without a key clears an old key.
        let none = PublishTemplates::compile(&action(json!({ "queue": "q" })))
            .unwrap()
            .bind(&ctx(&p))
            .unwrap();
        none.render_into(3, &mut m);
        assert_eq!((m.key, m.headers.len(), m.payload.as_str()), (None, 0, ""));
    }

    #[test]
    fn publish_errors_name_the_field() {
        let p = params();
        let compile_err = |v: Value| PublishTemplates::compile(&action(v)).unwrap_err();
        assert_eq!(
            compile_err(json!({ "topic": "t", "key": "{{ k }}" })),
            (
                "key".into(),
                TemplateError::UnknownVariable {
                    name: "k".into(),
                    offset: 0
                }
            )
        );
        assert_eq!(
            compile_err(json!({ "topic": "t", "headers": { "a": "ok", "b-c": "x{{" } })),
            ("headers.b-c".into(), TemplateError::Unclosed { offset: 1 })
        );
        assert_eq!(
            compile_err(json!({ "topic": "t", "payload": "{{ nope }}" })).0,
            "payload"
        );
        assert_eq!(
            compile_err(json!({ "exchange": "x", "routingKey": "{{" })).0,
            "routingKey"
        );

        let bind_err = |v: Value| {
            PublishTemplates::compile(&action(v))
                .unwrap()
                .bind(&ctx(&p))
                .unwrap_err()
        };
        let undeclared = TemplateError::UndeclaredParam { name: "zz".into() };
        for (v, field) in [
            (json!({ "topic": "t", "key": "{{params.zz}}" }), "key"),
            (
                json!({ "topic": "t", "headers": { "h": "{{params.zz}}" } }),
                "headers.h",
            ),
            (
                json!({ "topic": "t", "payload": "{{params.zz}}" }),
                "payload",
            ),
            (
                json!({ "exchange": "x", "routingKey": "{{params.zz}}" }),
                "routingKey",
            ),
        ] {
            assert_eq!(bind_err(v), (field.to_string(), undeclared.clone()));
        }
    }

    #[test]
    fn targets() {
        let target = |v: Value| target_of(&action(v));
        assert_eq!(target(json!({ "topic": "t" })), Target::Topic("t".into()));
        assert_eq!(
            target(json!({ "exchange": "e", "routingKey": "r" })),
            Target::Exchange("e".into())
        );
        assert_eq!(target(json!({ "queue": "q" })), Target::Queue("q".into()));
        assert_eq!(target(json!({})), Target::Topic(String::new()));
    }

    #[test]
    fn renders_100k_typical_messages() {
        let p = params();
        let a = action(json!({
            "topic": "orders",
            "key": "order-{{ seq }}",
            "headers": { "source": "devset/{{ run.name }}", "trace-id": "{{ uuid }}" },
            "payload": "{\"orderId\":\"{{ uuid }}\",\"seq\":{{ seq }},\"region\":\"{{ params.region }}\",\"qty\":{{ params.count }},\"at\":\"{{ now }}\"}"
        }));
        let b = PublishTemplates::compile(&a)
            .unwrap()
            .bind(&ctx(&p))
            .unwrap();
        let start = std::time::Instant::now();
        let mut ids = std::collections::HashSet::new();
        for seq in 1..=100_000u64 {
            let m = b.render(seq);
            assert_eq!(m.key.as_deref(), Some(format!("order-{seq}").as_str()));
            assert_eq!(m.headers[0], ("source".into(), "devset/run-1".into()));
            let v: Value = serde_json::from_str(&m.payload).unwrap();
            assert_eq!(v["seq"], json!(seq));
            assert_eq!((&v["region"], &v["qty"]), (&json!("us-east"), &json!(5)));
            assert_eq!(v["orderId"].as_str(), Some(m.headers[1].1.as_str()));
            assert!(ids.insert(m.headers[1].1.clone()));
            assert_eq!(v["at"].as_str().unwrap().len(), 24);
        }
        // For a look with --nocapture; not asserted, as test machines vary.
        let mut m = Message::default();
        let render_start = std::time::Instant::now();
        for seq in 1..=100_000u64 {
            b.render_into(seq, &mut m);
        }
        println!(
            "100k renders with checks: {:?}; 100k renders alone: {:?}",
            start.elapsed(),
            render_start.elapsed()
        );
    }
}
