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
mod tests;
