//! `count` and `ratePerSecond` as numbers or templates (`"{{ params.orders }}"`), resolved when
//! a run starts, so that a bad value fails the run at once with the field it came from.

use super::outputs::Stages;
use super::template::{RunContext, Template};
use crate::api::{Count, Rate, WorkflowSpec};
use serde_json::Value;
use std::collections::BTreeMap;

/// The reason of a `count` or `ratePerSecond` that is not a usable number.
pub const INVALID_AMOUNT: &str = "InvalidAmount";

/// A `count` or `ratePerSecond` that does not give a usable number. `field` is the path from
/// the workflow spec, e.g. `spec.stages[0].publish.count`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct AmountError {
    pub field: String,
    pub message: String,
}

fn render(src: &str, params: &BTreeMap<String, Value>) -> Result<String, String> {
    let t = Template::compile(src).map_err(|e| e.to_string())?;
    if !t.stages_used().is_empty() {
        return Err("may use params only: stage outputs are not known when the run starts".into());
    }
    static NO_STAGES: Stages = Stages::new();
    let ctx = RunContext {
        run_name: "",
        run_namespace: "",
        stage: "",
        params,
        stages: &NO_STAGES,
    };
    t.render_once(&ctx)
        .map(|s| s.trim().to_owned())
        .map_err(|e| e.to_string())
}

/// The number a `count` gives with these params.
pub fn count(c: &Count, params: &BTreeMap<String, Value>) -> Result<u64, String> {
    match c {
        Count::Number(n) if *n >= 0 => Ok(*n as u64),
        Count::Number(n) => Err(format!("must be at least 0, not {n}")),
        Count::Template(src) => {
            let text = render(src, params)?;
            text.parse::<u64>().map_err(|_| {
                format!("{src:?} gives {text:?}, which is not a whole number of at least 0")
            })
        }
    }
}

/// The rate a `ratePerSecond` gives with these params.
pub fn rate(r: &Rate, params: &BTreeMap<String, Value>) -> Result<f64, String> {
    let (n, shown) = match r {
        Rate::Number(n) => (*n, n.to_string()),
        Rate::Template(src) => {
            let text = render(src, params)?;
            let n = text
                .parse::<f64>()
                .map_err(|_| format!("{src:?} gives {text:?}, which is not a number"))?;
            (n, format!("{src:?} gives {text:?}, which"))
        }
    };
    if n.is_finite() && n > 0.0 {
        Ok(n)
    } else if matches!(r, Rate::Number(_)) {
        Err(format!("must be greater than 0, not {shown}"))
    } else {
        Err(format!("{shown} is not greater than 0"))
    }
}

/// Checks every `count` and `ratePerSecond` of the workflow with the run's params.
pub fn check(spec: &WorkflowSpec, params: &BTreeMap<String, Value>) -> Result<(), AmountError> {
    for (i, s) in spec.stages.iter().enumerate() {
        let at = |f: &str| format!("spec.stages[{i}].{f}");
        let err = |field: String| move |message| AmountError { field, message };
        if let Some(p) = &s.publish {
            count(&p.count, params).map_err(err(at("publish.count")))?;
            if let Some(r) = &p.rate_per_second {
                rate(r, params).map_err(err(at("publish.ratePerSecond")))?;
            }
        }
        if let Some(e) = &s.expect {
            count(&e.count, params).map_err(err(at("expect.count")))?;
        }
    }
    Ok(())
}

/// Checks the templates of every `count` and `ratePerSecond` without params: they compile and
/// use params only. For the Workflow check and `devset lint`.
pub fn check_templates(spec: &WorkflowSpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut numbers = Vec::new();
    let mut one = |field: String, src: &str| match Template::compile(src) {
        // Without a placeholder the text itself must be the number.
        Ok(_) if !src.contains("{{") && src.trim().parse::<f64>().is_err() => problems.push((
            field,
            format!("{src:?} is neither a number nor a template such as \"{{{{ params.NAME }}}}\""),
        )),
        Err(e) => problems.push((field, e.to_string())),
        Ok(t) if !t.stages_used().is_empty() => problems.push((
            field,
            "may use params only: stage outputs are not known when the run starts".into(),
        )),
        Ok(_) => {}
    };
    for (i, s) in spec.stages.iter().enumerate() {
        if let Some(p) = &s.publish {
            if let Count::Template(t) = &p.count {
                one(format!("spec.stages[{i}].publish.count"), t);
            }
            match &p.rate_per_second {
                Some(Rate::Template(t)) => {
                    one(format!("spec.stages[{i}].publish.ratePerSecond"), t)
                }
                Some(r @ Rate::Number(_)) => {
                    if let Err(e) = rate(r, &BTreeMap::new()) {
                        numbers.push((format!("spec.stages[{i}].publish.ratePerSecond"), e));
                    }
                }
                None => {}
            }
        }
        if let Some(e) = &s.expect
            && let Count::Template(t) = &e.count
        {
            one(format!("spec.stages[{i}].expect.count"), t);
        }
    }
    problems.extend(numbers);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_and_templates() {
        let params: BTreeMap<String, Value> = [
            ("orders".to_string(), json!(500)),
            ("rate".to_string(), json!("2.5")),
        ]
        .into();
        assert_eq!(count(&Count::Number(3), &params), Ok(3));
        assert_eq!(
            count(&Count::Template("{{ params.orders }}".into()), &params),
            Ok(500)
        );
        assert_eq!(count(&Count::Template("12".into()), &params), Ok(12));
        assert_eq!(
            rate(&Rate::Template("{{params.rate}}".into()), &params),
            Ok(2.5)
        );
        assert_eq!(rate(&Rate::Number(0.5), &params), Ok(0.5));
        assert_eq!(
            count(&Count::Template("{{ params.rate }}".into()), &params).unwrap_err(),
            "\"{{ params.rate }}\" gives \"2.5\", which is not a whole number of at least 0"
        );
        assert_eq!(
            rate(&Rate::Number(0.0), &params).unwrap_err(),
            "must be greater than 0, not 0"
        );
        assert!(
            count(&Count::Template("{{ stages.a.outputs.n }}".into()), &params)
                .unwrap_err()
                .contains("params only")
        );
    }

    #[test]
    fn check_names_the_field() {
        let spec: WorkflowSpec = serde_json::from_value(json!({
            "params": [{"name": "n", "type": "string"}],
            "stages": [
                {"name": "a", "publish": {"topic": "t", "count": 2}},
                {"name": "b", "publish": {"topic": "t", "count": "{{ params.n }}", "ratePerSecond": 5}}
            ]
        }))
        .unwrap();
        let params: BTreeMap<String, Value> = [("n".to_string(), json!("many"))].into();
        let e = check(&spec, &params).unwrap_err();
        assert_eq!(e.field, "spec.stages[1].publish.count");
        assert!(e.message.contains("\"many\""), "{e}");
        let params: BTreeMap<String, Value> = [("n".to_string(), json!("7"))].into();
        assert_eq!(check(&spec, &params), Ok(()));
    }
}
