//! Scenario 10b's manifests: the valid examples mutated field by field, and what the API server
//! says of them.

use super::common::{env, repo};
use super::valid_objects;
use devset::cli::manifests;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The ways a field is made wrong, for 10a (at random) and 10b (each, field by field).
pub const MUTATIONS: &[&str] = &[
    "remove",
    "wrong-type",
    "null",
    "unknown-field",
    "empty",
    "negative",
    "huge",
    "fraction",
    "bad-enum",
    "bad-cel",
    "cel-unknown-variable",
    "bad-duration",
    "bad-template",
    "duplicate-item",
    "random",
];

/// Every node under `v` (itself included) as (JSON pointer, node).
pub fn paths_of<'v>(v: &'v Value, at: &str) -> Vec<(String, &'v Value)> {
    let mut out = vec![(at.to_owned(), v)];
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let key = k.replace('~', "~0").replace('/', "~1");
                out.extend(paths_of(x, &format!("{at}/{key}")));
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                out.extend(paths_of(x, &format!("{at}/{i}")));
            }
        }
        _ => {}
    }
    out
}

pub const RANDOM_VALUES: &[&str] = &[
    "{{",
    "}}",
    "((",
    "1h-5m",
    "0",
    "-",
    "Exactly",
    "a b",
    "🦀",
    "true",
    "1e309",
    "{{ seq",
    "payload.",
    "params.x ? 1 :",
    "99999999999999999999999h",
];

/// Applies mutation `m` at `ptr` in `v`; false when it does not apply to that node.
pub fn mutate(v: &mut Value, ptr: &str, m: &str, seed: u8) -> bool {
    let Some(node) = v.pointer(ptr).cloned() else {
        return false;
    };
    let replacement = match (m, &node) {
        ("remove", _) => {
            let (parent, last) = ptr.rsplit_once('/').expect("a pointer below the root");
            let key = last.replace("~1", "/").replace("~0", "~");
            return match v.pointer_mut(parent) {
                Some(Value::Object(o)) => o.remove(&key).is_some(),
                Some(Value::Array(a)) => match key.parse::<usize>() {
                    Ok(i) if i < a.len() => {
                        a.remove(i);
                        true
                    }
                    _ => false,
                },
                _ => false,
            };
        }
        ("wrong-type", Value::String(_)) => json!(42),
        ("wrong-type", Value::Number(_)) => json!("42"),
        ("wrong-type", Value::Bool(_)) => json!("yes"),
        ("wrong-type", Value::Object(_) | Value::Array(_)) => json!("x"),
        ("null", _) => Value::Null,
        ("unknown-field", Value::Object(o)) => {
            let mut o = o.clone();
            o.insert("bogusField".into(), json!(1));
            Value::Object(o)
        }
        ("empty", Value::String(_)) => json!(""),
        ("empty", Value::Array(_)) => json!([]),
        ("empty", Value::Object(_)) => json!({}),
        ("negative", Value::Number(_)) => json!(-1),
        ("huge", Value::Number(_)) => json!(1_099_511_627_776_i64),
        ("huge", Value::String(_)) => json!("x".repeat(5000)),
        ("fraction", Value::Number(_)) => json!(1.5),
        ("bad-enum", Value::String(_)) => json!("Bogus"),
        ("bad-cel", Value::String(_)) => json!("params.a =="),
        ("cel-unknown-variable", Value::String(_)) => json!("payload.x == 1"),
        ("bad-duration", Value::String(_)) => json!("5x"),
        ("bad-template", Value::String(_)) => json!("{{ nope }}"),
        ("duplicate-item", Value::Array(a)) if !a.is_empty() => {
            let mut a = a.clone();
            a.push(a[0].clone());
            Value::Array(a)
        }
        ("random", _) => match seed % 4 {
            0 => json!(RANDOM_VALUES[usize::from(seed / 4) % RANDOM_VALUES.len()]),
            1 => json!(i64::from(seed) - 128),
            2 => json!([RANDOM_VALUES[usize::from(seed / 4) % RANDOM_VALUES.len()]]),
            _ => json!({ "name": RANDOM_VALUES[usize::from(seed / 4) % RANDOM_VALUES.len()] }),
        },
        _ => return false,
    };
    *v.pointer_mut(ptr).expect("the node is there") = replacement;
    true
}

/// One manifest of the differential test.
pub struct Case {
    pub what: String,
    pub value: Value,
}

/// The valid objects as they are, each mutated field by field by every mutation that applies,
/// and the objects of `tests/fixtures/invalid`.
pub fn lint_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for obj in valid_objects() {
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        out.push(Case {
            what: format!("{kind} {name} as it is"),
            value: obj.clone(),
        });
        for (ptr, _) in paths_of(&obj["spec"], "/spec") {
            for m in MUTATIONS.iter().filter(|m| **m != "random") {
                let mut v = obj.clone();
                if mutate(&mut v, &ptr, m, 0) {
                    out.push(Case {
                        what: format!("{kind} {name} {ptr}: {m}"),
                        value: v,
                    });
                }
            }
        }
    }
    let dir = repo().join("tests/fixtures/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/invalid")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let docs = manifests::parse_docs(&f.display().to_string(), &text).expect("it parses");
        for d in docs {
            out.push(Case {
                what: format!("fixture {}", f.file_name().unwrap().to_string_lossy()),
                value: d.value,
            });
        }
    }
    out
}

/// What the API server says of each case: `kubectl apply --dry-run=server` of one file per case
/// (named `case-N.EXT`), in one call.
pub fn server_verdicts(ns: &str, dir: &std::path::Path, n: usize, ext: &str) -> Vec<Option<bool>> {
    let out = env().kubectl(&[
        "apply",
        "-n",
        ns,
        "--dry-run=server",
        "-f",
        dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    (0..n)
        .map(|i| {
            let accepted = stdout
                .lines()
                .any(|l| l.contains(&format!("/case-{i} ")) && l.ends_with("(server dry run)"));
            // Several errors of one object come as `The Workflow "case-N" is invalid: …`.
            let rejected = stderr.contains(&format!("/case-{i}.{ext}\""))
                || stderr.contains(&format!("\"case-{i}\" is invalid"));
            match (accepted, rejected) {
                (true, false) => Some(true),
                (false, true) => Some(false),
                _ => None,
            }
        })
        .collect()
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "accepts" } else { "rejects" }
}

/// "N × reason" for lint's problems (`case-N (what) => MESSAGE`), the reason being
/// the message without its quoted parts, most frequent first.
pub fn by_reason(problems: &[String]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for p in problems {
        let message = p.split_once(" => ").map_or(p.as_str(), |p| p.1);
        let mut stem = String::new();
        let mut quoted = false;
        for c in message.chars() {
            match c {
                '"' => quoted = !quoted,
                _ if !quoted => stem.push(c),
                _ => {}
            }
        }
        let stem: String = stem
            .split_whitespace()
            .take(9)
            .collect::<Vec<_>>()
            .join(" ");
        *counts.entry(stem).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
        .iter()
        .map(|(m, n)| format!("{n} × {m}"))
        .collect::<Vec<_>>()
        .join("; ")
}
