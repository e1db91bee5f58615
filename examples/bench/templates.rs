//! The cost of rendering one message's key, headers and payload (src/engine/template.rs).

use crate::{
    Args,
    stats::{Row, Unit},
};
use devset::{
    api::PublishAction,
    engine::template::{PublishTemplates, RunContext},
    message::Message,
};
use std::{collections::BTreeMap, hint::black_box, time::Instant};

/// A typical publish stage: a key with the sequence number, three headers (one constant, one
/// per run, one per message) and a JSON payload of ~250 B with a UUID, the time and params.
pub fn typical() -> PublishAction {
    PublishAction {
        topic: Some("orders".into()),
        key: Some("order-{{ seq }}".into()),
        headers: BTreeMap::from([
            ("content-type".into(), "application/json".into()),
            ("run".into(), "{{ run.namespace }}/{{ run.name }}".into()),
            ("trace-id".into(), "{{ uuid }}".into()),
        ]),
        payload: Some(
            r#"{"orderId":"{{ uuid }}","seq":{{ seq }},"region":"{{ params.region }}","amount":{{ params.amount }},"currency":"EUR","createdAt":"{{ now }}","source":"{{ run.name }}/{{ stage }}","items":[{"sku":"A-{{ seq }}","qty":1}]}"#
                .into(),
        ),
        count: 1.into(),
        ..Default::default()
    }
}

pub fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let n = args.template_renders();
    let action = typical();
    let compiled = PublishTemplates::compile(&action)
        .map_err(|(f, e)| anyhow::anyhow!("template {f}: {e}"))?;
    let params = BTreeMap::from([
        ("region".to_string(), serde_json::json!("eu-west")),
        ("amount".to_string(), serde_json::json!(42.5)),
    ]);
    let ctx = RunContext {
        run_name: "orders-1",
        run_namespace: "shop",
        stage: "create",
        params: &params,
        stages: &Default::default(),
    };
    let bound = compiled
        .bind(&ctx)
        .map_err(|(f, e)| anyhow::anyhow!("template {f}: {e}"))?;
    let sample = bound.render(1);
    let bytes = sample.key.as_ref().map_or(0, String::len)
        + sample
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + sample.payload.len();

    let mut fresh = Vec::new();
    let mut reused = Vec::new();
    for _ in 0..args.reps() {
        // As the engine does it: a new Message per message (it travels with its delivery).
        let t = Instant::now();
        for seq in 1..=n {
            black_box(bound.render(black_box(seq)));
        }
        fresh.push(t.elapsed().as_nanos() as f64 / n as f64);
        // Into one Message whose buffers are reused.
        let mut msg = Message::default();
        let t = Instant::now();
        for seq in 1..=n {
            bound.render_into(black_box(seq), &mut msg);
            black_box(&msg);
        }
        reused.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    let case = format!("typical: key, 3 headers, {bytes} B in all (uuid, now, params)");
    Ok(vec![
        Row::new("Templates", &case, "ns per message, `render`", Unit::Nanos)
            .values(fresh)
            .note(format!(
                "{} renders per rep; a new Message each (the engine's path)",
                crate::stats::thousands(n)
            )),
        Row::new(
            "Templates",
            &case,
            "ns per message, `render_into`",
            Unit::Nanos,
        )
        .values(reused)
        .note("the same, reusing one Message's buffers"),
    ])
}
