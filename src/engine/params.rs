//! A run's params, checked against the workflow's declarations.

use crate::api::{ParamSpec, ParamType};
use serde_json::Value;
use std::collections::BTreeMap;

/// A param a run sets or a workflow declares that does not fit the declarations.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ParamError {
    /// The run sets a param the workflow does not declare.
    #[error("param {name:?}: not declared by the workflow")]
    Unknown {
        /// The param's name.
        name: String,
    },
    /// The workflow declares the param `required` and the run does not set it.
    #[error("param {name:?}: required but not set")]
    Missing {
        /// The param's name.
        name: String,
    },
    /// The value (set by the run, or the declared default) is not of the declared type.
    #[error("param {name:?}: expected {}, got {got}", type_name(*expected))]
    WrongType {
        /// The param's name.
        name: String,
        /// The declared type.
        expected: ParamType,
        /// The value as JSON text (cut short when long).
        got: String,
    },
}

/// The name of a param type as manifests write it: `string`, `integer`, `number`, `boolean`.
pub fn type_name(t: ParamType) -> &'static str {
    match t {
        ParamType::String => "string",
        ParamType::Integer => "integer",
        ParamType::Number => "number",
        ParamType::Boolean => "boolean",
    }
}

/// Checks a run's params against the workflow's declarations and returns the effective values
/// (defaults filled in), typed per declaration.
///
/// Strings are coerced to the declared type when they parse (`"5"` becomes `5` for an
/// `integer`, `"true"` becomes `true` for a `boolean`), because CLI `--param k=v` values are
/// strings; for a `string` param, numbers and booleans become their text. An `integer` param
/// rejects `1.5`; a `number` accepts `1` and `1.5`. A declared param that is neither set nor
/// defaulted (and not `required`) maps to `null`, which templates render as empty text, so the
/// result has exactly the declared names as keys.
pub fn resolve_params(
    decl: &[ParamSpec],
    given: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, ParamError> {
    if let Some(name) = given.keys().find(|k| !decl.iter().any(|d| &d.name == *k)) {
        return Err(ParamError::Unknown { name: name.clone() });
    }
    let mut out = BTreeMap::new();
    for d in decl {
        let value = match (given.get(&d.name), &d.default) {
            (Some(v), _) => coerce(d, v)?,
            (None, _) if d.required => {
                return Err(ParamError::Missing {
                    name: d.name.clone(),
                });
            }
            (None, Some(default)) => coerce(d, default)?,
            (None, None) => Value::Null,
        };
        out.insert(d.name.clone(), value);
    }
    Ok(out)
}

/// Checks that every declared default is of its param's declared type (for the Workflow check);
/// the first that is not is the error.
pub fn check_defaults(decl: &[ParamSpec]) -> Result<(), ParamError> {
    for d in decl {
        if let Some(default) = &d.default {
            coerce(d, default)?;
        }
    }
    Ok(())
}

// The value as the declared type, or WrongType.
fn coerce(d: &ParamSpec, v: &Value) -> Result<Value, ParamError> {
    let coerced = match (d.r#type, v) {
        (ParamType::String, Value::String(_)) => Some(v.clone()),
        (ParamType::String, Value::Number(n)) => Some(Value::String(n.to_string())),
        (ParamType::String, Value::Bool(b)) => Some(Value::String(b.to_string())),
        (ParamType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(v.clone()),
        (ParamType::Integer, Value::String(s)) => parse_integer(s),
        (ParamType::Number, Value::Number(_)) => Some(v.clone()),
        (ParamType::Number, Value::String(s)) => parse_integer(s).or_else(|| {
            s.parse::<f64>()
                .ok()
                // Rust also parses "inf", "NaN" and "1e400" (infinite); JSON has no such numbers.
                .and_then(serde_json::Number::from_f64)
                .filter(|_| {
                    s.bytes()
                        .all(|c| c.is_ascii_digit() || b"+-.eE".contains(&c))
                })
                .map(Value::Number)
        }),
        (ParamType::Boolean, Value::Bool(_)) => Some(v.clone()),
        (ParamType::Boolean, Value::String(s)) => match s.as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => None,
    };
    coerced.ok_or_else(|| ParamError::WrongType {
        name: d.name.clone(),
        expected: d.r#type,
        got: shown(v),
    })
}

fn parse_integer(s: &str) -> Option<Value> {
    s.parse::<i64>()
        .map(Value::from)
        .or_else(|_| s.parse::<u64>().map(Value::from))
        .ok()
}

// JSON text of a value, cut to a length that fits an error message.
fn shown(v: &Value) -> String {
    const MAX: usize = 64;
    let mut s = v.to_string();
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(name: &str, t: ParamType) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            r#type: t,
            ..ParamSpec::default()
        }
    }

    fn given(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    fn resolve_one(t: ParamType, v: Value) -> Result<Value, ParamError> {
        resolve_params(&[p("x", t)], &given(json!({ "x": v }))).map(|m| m["x"].clone())
    }

    #[test]
    fn defaults_fill_in_and_given_values_win() {
        let decl = [
            ParamSpec {
                default: Some(json!("eu")),
                ..p("region", ParamType::String)
            },
            ParamSpec {
                default: Some(json!(100)),
                ..p("count", ParamType::Integer)
            },
            p("note", ParamType::String),
        ];
        let out = resolve_params(&decl, &given(json!({ "count": "5" }))).unwrap();
        assert_eq!(
            out,
            given(json!({ "region": "eu", "count": 5, "note": null }))
        );
        let out = resolve_params(&decl, &BTreeMap::new()).unwrap();
        assert_eq!(out["count"], json!(100));
    }

    #[test]
    fn unknown_param() {
        let e = resolve_params(&[p("a", ParamType::String)], &given(json!({ "b": 1 })));
        assert_eq!(e, Err(ParamError::Unknown { name: "b".into() }));
        assert_eq!(
            e.unwrap_err().to_string(),
            "param \"b\": not declared by the workflow"
        );
    }

    #[test]
    fn required_param_needs_a_value_even_with_a_default() {
        let decl = [ParamSpec {
            required: true,
            default: Some(json!("x")),
            ..p("region", ParamType::String)
        }];
        let e = resolve_params(&decl, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            e,
            ParamError::Missing {
                name: "region".into()
            }
        );
        assert_eq!(e.to_string(), "param \"region\": required but not set");
        let out = resolve_params(&decl, &given(json!({ "region": "us" }))).unwrap();
        assert_eq!(out["region"], json!("us"));
    }

    #[test]
    fn integers() {
        use ParamType::Integer;
        assert_eq!(resolve_one(Integer, json!(5)), Ok(json!(5)));
        assert_eq!(resolve_one(Integer, json!(-5)), Ok(json!(-5)));
        assert_eq!(resolve_one(Integer, json!(u64::MAX)), Ok(json!(u64::MAX)));
        assert_eq!(resolve_one(Integer, json!("5")), Ok(json!(5)));
        assert_eq!(resolve_one(Integer, json!("-7")), Ok(json!(-7)));
        assert_eq!(
            resolve_one(Integer, json!("18446744073709551615")),
            Ok(json!(u64::MAX))
        );
        for bad in [
            json!(1.5),
            json!("1.5"),
            json!("five"),
            json!(""),
            json!(" 5"),
            json!(true),
            json!(null),
            json!([1]),
        ] {
            assert!(resolve_one(Integer, bad.clone()).is_err(), "{bad}");
        }
        let e = resolve_one(Integer, json!(1.5)).unwrap_err();
        assert_eq!(
            e,
            ParamError::WrongType {
                name: "x".into(),
                expected: Integer,
                got: "1.5".into()
            }
        );
        assert_eq!(e.to_string(), "param \"x\": expected integer, got 1.5");
    }

    #[test]
    fn numbers() {
        use ParamType::Number;
        assert_eq!(resolve_one(Number, json!(1)), Ok(json!(1)));
        assert_eq!(resolve_one(Number, json!(1.5)), Ok(json!(1.5)));
        assert_eq!(resolve_one(Number, json!("1")), Ok(json!(1)));
        assert_eq!(resolve_one(Number, json!("1.5")), Ok(json!(1.5)));
        assert_eq!(resolve_one(Number, json!("-2e3")), Ok(json!(-2000.0)));
        for bad in ["inf", "NaN", "infinity", "1e400", "abc", "", "1.5x"] {
            assert!(resolve_one(Number, json!(bad)).is_err(), "{bad}");
        }
        assert!(resolve_one(Number, json!(false)).is_err());
    }

    #[test]
    fn booleans() {
        use ParamType::Boolean;
        assert_eq!(resolve_one(Boolean, json!(true)), Ok(json!(true)));
        assert_eq!(resolve_one(Boolean, json!("true")), Ok(json!(true)));
        assert_eq!(resolve_one(Boolean, json!("false")), Ok(json!(false)));
        for bad in [json!("yes"), json!("True"), json!(1), json!("1")] {
            assert!(resolve_one(Boolean, bad.clone()).is_err(), "{bad}");
        }
        let e = resolve_one(Boolean, json!("yes")).unwrap_err();
        assert_eq!(e.to_string(), "param \"x\": expected boolean, got \"yes\"");
    }

    #[test]
    fn strings() {
        use ParamType::String;
        assert_eq!(resolve_one(String, json!("a")), Ok(json!("a")));
        assert_eq!(resolve_one(String, json!(5)), Ok(json!("5")));
        assert_eq!(resolve_one(String, json!(1.5)), Ok(json!("1.5")));
        assert_eq!(resolve_one(String, json!(true)), Ok(json!("true")));
        assert!(resolve_one(String, json!(null)).is_err());
        assert!(resolve_one(String, json!({ "a": 1 })).is_err());
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let e = resolve_one(ParamType::Integer, json!("é".repeat(100))).unwrap_err();
        let ParamError::WrongType { got, .. } = e else {
            panic!()
        };
        assert!(got.starts_with("\"éé") && got.ends_with('…'), "{got}");
        assert!(got.len() <= 64 + '…'.len_utf8());
    }

    #[test]
    fn defaults_are_checked() {
        let good = [
            ParamSpec {
                default: Some(json!("5")),
                ..p("a", ParamType::Integer)
            },
            p("b", ParamType::Boolean),
        ];
        assert_eq!(check_defaults(&good), Ok(()));
        let bad = [ParamSpec {
            default: Some(json!("soon")),
            ..p("n", ParamType::Number)
        }];
        assert_eq!(
            check_defaults(&bad),
            Err(ParamError::WrongType {
                name: "n".into(),
                expected: ParamType::Number,
                got: "\"soon\"".into()
            })
        );
        // resolve_params catches a bad default too, when it is used.
        assert!(resolve_params(&bad, &BTreeMap::new()).is_err());
    }
}
