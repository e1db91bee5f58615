//! Scenario 10 of issue 15: bad input, fuzzed.
//!
//! - 10a: property-based tests (proptest) of the template parser, the duration parser, CEL
//!   `when`/`where` (compiled, then evaluated on a message) and `devset lint` (manifests mutated
//!   at random): no panic over `N` inputs (see [`cases`]); the duration parser also agrees with
//!   the CRD's rule, and the native path of a simple `where` with CEL.
//! - 10b: `devset lint` against the API server (`kubectl apply --dry-run=server`, the CRDs and
//!   their CEL rules installed) on the valid example manifests mutated field by field.
//! - 10c: schemathesis (tests/env/schemathesis.sh) against `devset api --auth=none`'s OpenAPI
//!   document, in a namespace with runs.

mod common;
#[path = "chaos_input/mutate.rs"]
mod mutate;
use common::{chaos::*, *};
use devset::{
    brokers::{Delivery, Incoming},
    cli::{lint::check_docs_with, manifests, schema::Validator},
    engine::{
        duration::parse_duration,
        expr::{Expr, MESSAGE_VARIABLES, STAGE_VARIABLES, root_scope, with_message},
        outputs::{StageResult, Stages},
        template::{MessageVars, RunContext, Template},
    },
    message::Message,
};
use mutate::{Case, MUTATIONS, by_reason, lint_cases, mutate, paths_of, server_verdicts, verdict};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestError, TestRunner},
};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

/// Inputs per cheap target (templates, durations): `DEVSET_FUZZ_CASES`, else 12,500 (short)
/// or 500,000 (full); CEL gets a tenth and lint a twentieth (each input costs more).
fn cases() -> u32 {
    std::env::var("DEVSET_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(reps(12_500, 500_000) as u32)
}

/// Text made of `frags` (weighted up) and arbitrary characters, up to `max` pieces.
fn text_of(frags: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => prop::sample::select(frags).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
        1 => prop::sample::select(&[" ", "\"", "'", "\\", "\n", "\u{0}", "é", "🦀"][..])
            .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..max).prop_map(|v| v.concat())
}

/// Runs `check` on `n` inputs of `strategy`; returns the (shrunk) input that failed, if any.
fn run_cases<S: Strategy>(
    n: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<(), String>
where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases: n,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    // A fixed seed per run of the suite would hide nothing new; a fresh one explores more.
    let mut runner = TestRunner::new(config);
    match runner.run(&strategy, check) {
        Ok(()) => Ok(()),
        Err(TestError::Fail(why, input)) => Err(format!("{why} on input {input:?}")),
        Err(TestError::Abort(why)) => Err(format!("aborted: {why}")),
    }
}

const TEMPLATE_FRAGS: &[&str] = &[
    "{{",
    "}}",
    "{",
    "}",
    " ",
    "seq",
    "uuid",
    "now",
    "now_ms",
    "run.name",
    "run.namespace",
    "stage",
    "params.",
    "stages.",
    ".outputs.",
    "region",
    "count",
    "a-b",
    "-",
    "_",
    ".",
    "x",
];
const DURATION_FRAGS: &[&str] = &[
    "0",
    "1",
    "5",
    "9",
    "10",
    "99",
    "1000000000000000000000",
    ".",
    "ms",
    "s",
    "m",
    "h",
    "us",
    "-",
    "+",
    " ",
    "e",
    "µ",
];
const CEL_FRAGS: &[&str] = &[
    "params",
    "stages",
    "payload",
    "key",
    "headers",
    "size",
    "has(",
    "matches(",
    "startsWith(",
    ".",
    "region",
    "orders",
    "outputs",
    "phase",
    "amount",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "?",
    "==",
    "!=",
    "<",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "&&",
    "||",
    "!",
    " in ",
    "'eu'",
    "\"x\"",
    "1",
    "0",
    "-1",
    "9223372036854775807",
    "18446744073709551615u",
    "1.5",
    "true",
    "null",
    "b'x'",
    "int(",
    "string(",
    "double(",
    "uint(",
    ".all(x, ",
    ".exists(x, ",
    "x",
    " ",
    "'''",
    "r'",
    "\\u0041",
    "dyn(",
    "type(",
    "duration('1s')",
    "timestamp(",
];

fn run_ctx_params() -> BTreeMap<String, Value> {
    [
        ("region".to_string(), json!("eu")),
        ("count".to_string(), json!(3)),
        ("x".to_string(), Value::Null),
    ]
    .into()
}

fn run_ctx_stages() -> Stages {
    let outputs = BTreeMap::from([("published".to_owned(), "5".to_owned())]);
    let phase = "Succeeded".to_owned();
    Stages::from([("orders".to_owned(), StageResult { phase, outputs })])
}

/// Compiles, binds and renders one template; a template with no `{{` renders to itself.
fn template_case(src: String) -> Result<(), TestCaseError> {
    let Ok(t) = Template::compile(&src) else {
        return Ok(());
    };
    let params = run_ctx_params();
    let stages = run_ctx_stages();
    let ctx = RunContext {
        run_name: "run-1",
        run_namespace: "ns",
        stage: "orders",
        params: &params,
        stages: &stages,
    };
    let _ = (t.params_used(), t.stages_used());
    if let Ok(bound) = t.bind(&ctx) {
        let mut out = String::new();
        bound.render_into(&MessageVars::new(7), &mut out);
        if !src.contains("{{") {
            prop_assert_eq!(&out, &src, "literal text renders as itself");
        }
    }
    Ok(())
}

/// The CRD's rule for durations, `^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$`: evaluated the way
/// `devset lint` evaluates it (the API server's CEL `matches`) on every 25th input, and by
/// [`duration_pattern`] on every input (the two must agree).
struct DurationRule(Validator);

impl DurationRule {
    const RULE: &str = "self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$')";

    fn cel_accepts(&self, s: &str) -> bool {
        self.0
            .evaluate(Self::RULE, &json!(s), &json!({"type": "string"}))
            .unwrap_or(false)
    }
}

/// `^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$`, by hand.
fn duration_pattern(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    let mut i = 0;
    while i < b.len() {
        if !digits(&mut i) {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return false;
            }
        }
        match b.get(i) {
            Some(b'm') if b.get(i + 1) == Some(&b's') => i += 2,
            Some(b's' | b'm' | b'h') => i += 1,
            _ => return false,
        }
    }
    !b.is_empty()
}

/// The value of a duration the rule accepts, in seconds (as f64, to tell "too long" apart).
fn approx_secs(s: &str) -> f64 {
    let (mut total, mut num) = (0.0, String::new());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            's' => 1.0,
            'm' => 60.0,
            _ => 3600.0,
        };
        total += num.parse::<f64>().unwrap_or(f64::INFINITY) * unit;
        num.clear();
    }
    total
}

fn duration_case(rule: &DurationRule, src: &str, with_cel: bool) -> Result<(), TestCaseError> {
    let parsed = parse_duration(src);
    let accepted = duration_pattern(src);
    if with_cel {
        prop_assert_eq!(
            accepted,
            rule.cel_accepts(src),
            "the CRD's rule on {:?}",
            src
        );
    }
    match parsed {
        Ok(_) => prop_assert!(accepted, "parsed {src:?}, which the CRD's rule rejects"),
        Err(ref e) => {
            prop_assert_eq!(e.input(), src);
            // What the rule accepts and the parser does not must be beyond u64 seconds.
            prop_assert!(
                !accepted || approx_secs(src) >= 1.8e19,
                "the CRD's rule accepts {src:?}, the parser rejects it: {e}"
            );
        }
    }
    Ok(())
}

/// Compiles `src` as a `when` and as a `where`, and evaluates what compiles on a message.
fn cel_case(src: &str, payload: &str) -> Result<(), TestCaseError> {
    let params = run_ctx_params();
    let root = root_scope(&params, &run_ctx_stages());
    if let Ok(e) = Expr::compile(src, STAGE_VARIABLES) {
        let _ = (e.stages_read(), e.eval_bool(&root));
    }
    if let Ok(e) = Expr::compile(src, MESSAGE_VARIABLES) {
        let msg = Message {
            seq: 1,
            key: Some("order-1".into()),
            headers: vec![("source".into(), "devset".into())],
            payload: payload.to_owned(),
            routing_key: None,
        };
        let d = Delivery::default();
        let incoming = Incoming::of(&msg, &d);
        let fast = e.matches(&root, &incoming);
        let slow = with_message(&root, &incoming, |scope| e.eval_bool(scope));
        // The native path of a simple `where` must give CEL's answer.
        if let (Ok(f), Ok(s)) = (&fast, &slow) {
            prop_assert_eq!(f, s, "native and CEL evaluation differ on {:?}", src);
        }
    }
    Ok(())
}

const PAYLOADS: &[&str] = &[
    r#"{"amount": 10, "region": "eu", "orderId": "o-1"}"#,
    r#"{"amount": 1.5, "items": [1, 2, {"x": null}]}"#,
    r#"[1, "two", 3.0]"#,
    "not json",
    "",
    r#"{"amount": 18446744073709551615, "orders": {"phase": true}}"#,
    r#""a string""#,
];

/// The valid manifests the lint cases start from: the examples and the samples.
fn valid_sources() -> Vec<PathBuf> {
    let r = repo();
    let mut files = vec![
        r.join("examples/workflows/orders-payments.yaml"),
        r.join("examples/schedules/orders-payments-nightly.yaml"),
    ];
    for f in [
        "workflow.yaml",
        "workflowrun.yaml",
        "workflowschedule.yaml",
        "kafka-connector.yaml",
        "rabbitmq-connector.yaml",
    ] {
        files.push(r.join("config/samples").join(f));
    }
    files
}

/// Every devset object of the valid sources, as JSON.
fn valid_objects() -> Vec<Value> {
    let mut out = Vec::new();
    for f in valid_sources() {
        let text = std::fs::read_to_string(&f).expect("an example manifest");
        let docs = manifests::parse_docs(&f.display().to_string(), &text).expect("it parses");
        out.extend(docs.into_iter().map(|d| d.value).filter(|v| {
            v["apiVersion"]
                .as_str()
                .is_some_and(|a| a.starts_with("devset.io/"))
        }));
    }
    out
}

/// `devset lint` on one object (what `lint` does after reading the file): its problems.
fn lint_value(validator: &Validator, v: &Value) -> Vec<String> {
    let text = serde_json::to_string(v).expect("JSON");
    match manifests::parse_docs("case.json", &text) {
        Ok(mut docs) => check_docs_with(validator, &mut docs)
            .into_iter()
            .map(|p| p.to_string())
            .collect(),
        Err(p) => vec![p.to_string()],
    }
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn fuzz_parsers_and_lint_10a() {
    let _serial = serial();
    let n = cases();
    let mut s = Scenario::new("10a", "bad input fuzzed: template, duration, CEL, lint", 1);
    let start = Instant::now();
    let mut total = 0u64;
    let mut target = |s: &mut Scenario, name: &str, n: u32, r: Result<(), String>| {
        total += u64::from(n);
        s.hold(
            r.as_ref().is_ok(),
            match r {
                Ok(()) => format!("{name}: no panic, every property held over {n} inputs"),
                Err(e) => format!("{name}: {e}"),
            },
        );
    };

    let t = Instant::now();
    let r = run_cases(n, text_of(TEMPLATE_FRAGS, 24), template_case);
    target(&mut s, "template parser", n, r);
    s.figure("template inputs/s", per_sec(n, t));

    let t = Instant::now();
    let rule = DurationRule(Validator::new());
    let k = std::sync::atomic::AtomicU32::new(0);
    let r = run_cases(n, text_of(DURATION_FRAGS, 10), |d| {
        let i = k.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        duration_case(&rule, &d, i.is_multiple_of(25))
    });
    target(
        &mut s,
        "durations (parser == the CRD's rule, up to u64 seconds)",
        n,
        r,
    );
    s.figure("duration inputs/s", per_sec(n, t));

    // CEL's parser is the slowest step (unoptimized in a test build): a tenth of the inputs.
    let cel_n = (n / 10).max(1);
    let t = Instant::now();
    let strategy = (
        text_of(CEL_FRAGS, 16),
        prop::sample::select(PAYLOADS).prop_map(str::to_owned),
    );
    let r = run_cases(cel_n, strategy, |(e, p)| cel_case(&e, &p));
    target(&mut s, "CEL when/where (compile, evaluate)", cel_n, r);
    s.figure("CEL inputs/s", per_sec(cel_n, t));

    // Lint runs every check of `devset lint` (schema, CEL rules, the engine's): a twentieth.
    let lint_n = (n / 20).max(1);
    let t = Instant::now();
    let validator = Validator::new();
    let objects = valid_objects();
    let strategy = (
        prop::sample::select(objects),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                0..MUTATIONS.len(),
                any::<u8>(),
            ),
            1..4,
        ),
    );
    let r = run_cases(lint_n, strategy, |(mut v, muts)| {
        for (at, m, seed) in muts {
            let paths = paths_of(&v["spec"], "/spec");
            if paths.is_empty() {
                break;
            }
            let (p, _) = &paths[at.index(paths.len())];
            let p = p.clone();
            mutate(&mut v, &p, MUTATIONS[m], seed);
        }
        let _ = lint_value(&validator, &v);
        Ok(())
    });
    target(&mut s, "devset lint on mutated manifests", lint_n, r);
    s.figure("lint inputs/s", per_sec(lint_n, t));

    let deep = deep_nesting(&mut s);
    total += deep;
    s.figure("inputs", total);
    s.figure("time", format!("{:.1} s", start.elapsed().as_secs_f64()));
    s.finish();
}

fn per_sec(n: u32, t: Instant) -> String {
    format!("{:.0}", f64::from(n) / t.elapsed().as_secs_f64().max(1e-9))
}

/// The longest `when` the CRD allows (4,096 characters) nested as deep as it goes: `devset lint`
/// (and so the controller's check) answers. CEL's parser stops at 96 levels; in a release build
/// that fits a 2 MiB stack (a tokio worker's; measured with `ulimit -s 2048`), but a test build's
/// unoptimized frames are about 5 times larger, so this runs on a thread with 64 MiB.
fn deep_nesting(s: &mut Scenario) -> u64 {
    let depth = 2046;
    let cases = [
        (
            "parens",
            format!("{}true{}", "(".repeat(depth), ")".repeat(depth)),
        ),
        ("negations", format!("{}true", "!".repeat(4092))),
        (
            "lists",
            format!(
                "{}1{}[0] == 1",
                "[".repeat(depth - 5),
                "]".repeat(depth - 5)
            ),
        ),
        ("additions", format!("1{} == 1", " + 1".repeat(1020))),
        ("selections", format!("params.a{} == 1", ".b".repeat(2040))),
        (
            "conditionals",
            format!("{}true{}", "true ? ".repeat(300), " : false".repeat(300)),
        ),
    ];
    for (name, when) in &cases {
        let wf = json!({
            "apiVersion": "devset.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": "deep"},
            "spec": {"params": [{"name": "a", "type": "string"}], "stages": [
                {"name": "a", "delay": {"duration": "1s"}},
                {"name": "b", "when": when, "delay": {"duration": "1s"}},
            ]},
        });
        let answer = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || lint_value(&Validator::new(), &wf))
            .expect("a thread")
            .join();
        s.hold(
            answer.is_ok(),
            format!(
                "devset lint answers on a `when` of {} characters of nested {name}: {}",
                when.len(),
                match &answer {
                    Ok(p) => p
                        .first()
                        .map_or("no problems", |p| p.split(": ").nth(1).unwrap_or(p))
                        .to_owned(),
                    Err(_) => "it panicked".into(),
                }
            ),
        );
    }
    cases.len() as u64
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn lint_agrees_with_the_api_server_10b() {
    let _serial = serial();
    install_crds();
    let ns = TestNamespace::new("lint-diff");
    let all = lint_cases();
    // The short version takes an evenly spread sample.
    let stride = if full() { 1 } else { all.len().div_ceil(150) };
    let cases: Vec<Case> = all.into_iter().step_by(stride).collect();
    let mut s = Scenario::new(
        "10b",
        "devset lint against the API server on mutated manifests",
        cases.len(),
    );
    let dir = repo().join("target/chaos/lint-cases").join(&ns.name);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, c) in cases.iter().enumerate() {
        let mut v = c.value.clone();
        v["metadata"]["name"] = json!(format!("case-{i}"));
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        std::fs::write(dir.join(format!("case-{i}.json")), v.to_string()).unwrap();
    }
    let start = Instant::now();
    let server = server_verdicts(&ns.name, &dir, cases.len(), "json");
    s.figure(
        "kubectl apply --dry-run=server",
        format!("{:.1} s", start.elapsed().as_secs_f64()),
    );
    let validator = Validator::new();
    let (mut lint_agree, mut schema_agree) = (0, 0);
    let (mut stricter, mut laxer, mut schema_off, mut no_answer) = (vec![], vec![], vec![], vec![]);
    for (i, (c, server_ok)) in cases.iter().zip(&server).enumerate() {
        let file = dir.join(format!("case-{i}.json"));
        let text = std::fs::read_to_string(&file).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let Some(server_ok) = *server_ok else {
            no_answer.push(format!("case-{i} ({})", c.what));
            continue;
        };
        let problems = lint_value(&validator, &v);
        let schema_ok = validator.validate(&v).is_ok();
        schema_agree += usize::from(schema_ok == server_ok);
        if schema_ok != server_ok {
            schema_off.push(format!(
                "case-{i} ({}): server {}, schema {}",
                c.what,
                verdict(server_ok),
                verdict(schema_ok)
            ));
        }
        match (problems.is_empty(), server_ok) {
            (a, b) if a == b => lint_agree += 1,
            (false, true) => {
                let message = problems[0].split_once(": ").map_or("", |p| p.1);
                stricter.push(format!("case-{i} ({}) => {message}", c.what));
            }
            _ => laxer.push(format!("case-{i} ({})", c.what)),
        }
    }
    let n = cases.len();
    s.figure("cases", n);
    s.figure(
        "devset lint agrees with the API server",
        format!("{lint_agree} of {n}"),
    );
    s.figure(
        "devset lint stricter (the engine's checks, which the API server does not make)",
        stricter.len(),
    );
    for x in &stricter {
        eprintln!("  stricter: {x}");
    }
    s.figure("stricter, by reason", by_reason(&stricter));
    s.hold(
        no_answer.is_empty(),
        format!(
            "the API server answered every case ({} without an answer: {no_answer:?})",
            no_answer.len()
        ),
    );
    s.hold(
        schema_off.is_empty(),
        format!(
            "lint's schema and CEL stage (types, required, enums, bounds, lengths, patterns, \
             unknown fields, list-map keys, the CRDs' CEL rules) agrees with the API server on \
             {schema_agree} of {} cases{}",
            n - no_answer.len(),
            if schema_off.is_empty() {
                String::new()
            } else {
                format!(": differs on {schema_off:?}")
            }
        ),
    );
    s.hold(
        laxer.is_empty(),
        format!(
            "devset lint accepts nothing the API server rejects ({} cases: {laxer:?})",
            laxer.len()
        ),
    );
    // The binary answers as `check_docs` does (a sample).
    let mut binary_agrees = 0;
    let sample: Vec<usize> = (0..n).step_by(n.div_ceil(reps(8, 40))).collect();
    for &i in &sample {
        let file = dir.join(format!("case-{i}.json"));
        let code = std::process::Command::new(env!("CARGO_BIN_EXE_devset"))
            .args(["lint", "-f"])
            .arg(&file)
            .output()
            .expect("devset lint runs")
            .status
            .code();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let in_process = lint_value(&validator, &v).is_empty();
        binary_agrees += usize::from(code == Some(if in_process { 0 } else { 1 }));
    }
    s.hold(
        binary_agrees == sample.len(),
        format!("the devset lint binary gives the same exit as the checks in-process ({binary_agrees} of {})", sample.len()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    yaml_scalars(&mut s, &ns.name);
    s.finish();
}

/// Plain scalars YAML 1.1 reads as booleans (kubectl, the API server) and YAML 1.2 as strings
/// (`devset lint`'s parser): lint rejects each case the API server rejects.
fn yaml_scalars(s: &mut Scenario, ns: &str) {
    let dir = repo().join("target/chaos/lint-yaml").join(ns);
    std::fs::create_dir_all(&dir).unwrap();
    let stage = "{name: a, delay: {duration: 1s}";
    let specs = [
        format!("params: [{{name: n, type: string}}]\n  stages: [{stage}}}]"),
        format!("params: [{{name: x, type: string, default: yes}}]\n  stages: [{stage}}}]"),
        format!("stages: [{stage}, continueOnError: on}}]"),
        "stages: [{name: 'no', delay: {duration: 1s}}]".to_owned(),
    ];
    for (i, spec) in specs.iter().enumerate() {
        let doc = format!(
            "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: case-{i}}}\n\
             spec:\n  {spec}\n"
        );
        std::fs::write(dir.join(format!("case-{i}.yaml")), doc).unwrap();
    }
    let server = server_verdicts(ns, &dir, specs.len(), "yaml");
    let mut missed = Vec::new();
    for (i, server_ok) in server.iter().enumerate() {
        let lint_ok = std::process::Command::new(env!("CARGO_BIN_EXE_devset"))
            .args(["lint", "-f"])
            .arg(dir.join(format!("case-{i}.yaml")))
            .output()
            .expect("devset lint runs")
            .status
            .success();
        if server_ok.is_none() || (lint_ok && *server_ok == Some(false)) {
            missed.push(format!(
                "{}: server {server_ok:?}, lint {lint_ok}",
                specs[i]
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    s.hold(
        missed.is_empty(),
        format!(
            "on plain y/n/yes/no/on/off (YAML 1.1 booleans), devset lint rejects every case the \
             API server rejects ({} cases; missed: {missed:?})",
            specs.len()
        ),
    );
}

/// A namespace with runs for 10c: a Kafka connector, a Workflow (5 messages, then an approval
/// stage `go`), two runs of it (one waiting at `go`) and a schedule, all named `fuzzed` where
/// the routes take a `{name}`.
fn runs_for_the_api(ns: &str) {
    let kafka = env().var("KAFKA_BOOTSTRAP");
    let topic = unique("fuzzed");
    env().apply(
        ns,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: kafka}}\n\
             spec: {{kafka: {{bootstrapServers: \"{kafka}\"}}}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: fuzzed}}\nspec:\n\
             \x20 params: [{{name: orders, type: integer, default: 5}}]\n  stages:\n\
             \x20   - {{name: orders, publish: {{topic: {topic}, count: 5, payload: 'o {{{{ seq }}}}'}}}}\n\
             \x20   - {{name: go, approval: {{message: 'go on?', timeout: 1h}}}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: fuzzed}}\n\
             spec: {{workflowRef: {{name: fuzzed}}, connectorRef: {{name: kafka}}}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: fuzzed-2}}\n\
             spec: {{workflowRef: {{name: fuzzed}}, connectorRef: {{name: kafka}}}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: WorkflowSchedule\nmetadata: {{name: fuzzed}}\n\
             spec:\n  schedule: '0 3 * * *'\n  runTemplate:\n\
             \x20   spec: {{workflowRef: {{name: fuzzed}}, connectorRef: {{name: kafka}}}}\n"
        ),
    );
}

/// Finds "N generated, M passed" (and failures) in schemathesis' summary.
fn schemathesis_counts(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.contains(" generated, "))?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    Some((*nums.first()?, *nums.get(1).unwrap_or(&0)))
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn schemathesis_against_the_api_10c() {
    let _serial = serial();
    let install = std::process::Command::new(repo().join("tests/env/schemathesis.sh"))
        .output()
        .expect("tests/env/schemathesis.sh runs");
    assert!(
        install.status.success(),
        "schemathesis could not be installed: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let st = String::from_utf8_lossy(&install.stdout).trim().to_owned();
    install_crds();
    let ns = TestNamespace::new("schemathesis");
    let store = sqlite_store(&ns.name);
    runs_for_the_api(&ns.name);
    let _controller = ControllerProcess::start_with_store(&ns.name, 10, 0, &store);
    common::runs::wait_phase(
        &ns.name,
        "fuzzed",
        "WaitingForApproval",
        Duration::from_secs(90),
    );
    let api = ApiProcess::start(&ns.name, &store, "none");
    let examples = reps(8, 100);
    let mut s = Scenario::new(
        "10c",
        "schemathesis against devset api's OpenAPI document",
        examples,
    );
    let dir = repo().join("target/chaos/schemathesis").join(&ns.name);
    std::fs::create_dir_all(&dir).unwrap();
    // The path parameters name what exists, so the routes get past their 404s.
    let config = dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[parameters]\nnamespace = \"{ns}\"\nname = \"fuzzed\"\nstage = \"go\"\n\n\
             [[operations]]\ninclude-path-regex = \"/workflowruns/\\\\{{name\\\\}}(/stop)?$\"\n\
             include-method-regex = \"DELETE|POST\"\n\
             parameters = {{ namespace = \"{ns}\", name = \"fuzzed-2\" }}\n",
            ns = ns.name
        ),
    )
    .unwrap();
    let start = Instant::now();
    let out = std::process::Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .args([
            "run",
            &api.url("/api/v1/openapi.json"),
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--max-examples",
            &examples.to_string(),
            "--request-timeout",
            "10",
            "--max-time",
            if full() { "480" } else { "40" },
            "--no-color",
            "--seed",
            "15",
        ])
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(dir.join("output.txt"), &text).unwrap();
    let (generated, passed) = schemathesis_counts(&text).unwrap_or((0, 0));
    s.figure(
        "operations",
        text.lines()
            .find(|l| l.trim_start().starts_with("Tested:"))
            .unwrap_or("?")
            .trim(),
    );
    s.figure(
        "test cases",
        format!("{generated} generated, {passed} passed"),
    );
    s.figure("time", format!("{:.0} s", start.elapsed().as_secs_f64()));
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("_____") || l.contains("Failed: ") || l.starts_with("- "))
        .take(20)
        .collect();
    s.hold(
        out.status.success() && generated > 0 && generated == passed,
        format!(
            "no 5xx, every answer's status and body as the document says \
             (not_a_server_error, response_schema_conformance, status_code_conformance) on \
             {passed} of {generated} test cases{}",
            if out.status.success() {
                String::new()
            } else {
                format!(
                    ": {failures:?} (target/chaos/schemathesis/{}/output.txt)",
                    ns.name
                )
            }
        ),
    );
    s.finish();
}
