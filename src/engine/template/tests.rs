//! Unit tests of the template engine.

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
    let t =
        Template::compile("{{params.b}}{{params.a}}{{seq}}{{params.b}}{{ params._c9 }}").unwrap();
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
