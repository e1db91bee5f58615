//! `devset lint`: manifests checked offline, as `kubectl apply` and the controller would check
//! them: the CRDs' schema and CEL rules, then the engine's own checks.

use super::{
    manifests::{self, Doc, Problem},
    schema::{API_VERSION, Validator},
};
use crate::{
    api::{BrokerConnector, Workflow, WorkflowRun},
    brokers::{BrokerConfig, ConfigError},
    engine::{check::check_workflow, params::resolve_params},
};
use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

/// Check manifests offline: the CRDs' schema and CEL rules, plus the engine's checks.
#[derive(Clone, Debug, clap::Args)]
pub struct LintArgs {
    /// A manifest file (several documents separated by `---` are fine; `-` reads stdin), or
    /// a directory (its .yaml, .yml and .json files, recursively). Repeat for more.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// Checks `docs` in place: documents of devset kinds get the schema's defaults filled in.
/// Returns every problem found, in file order. Documents of other kinds (a Secret, say) are
/// left alone.
pub fn check_docs(docs: &mut [Doc]) -> Vec<Problem> {
    check_docs_with(&Validator::new(), docs)
}

/// [`check_docs`] with a [`Validator`] made once, for callers that check many manifests.
pub fn check_docs_with(validator: &Validator, docs: &mut [Doc]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for doc in docs.iter_mut() {
        let group_is_ours = doc.api_version().starts_with("devset.io/");
        if !validator.knows(doc.kind()) && !group_is_ours {
            if doc.kind().is_empty() {
                problems.push(Problem {
                    at: doc.at("kind"),
                    message: "Required value: a manifest needs apiVersion and kind".into(),
                });
            }
            continue;
        }
        match validator.validate(&doc.value) {
            Ok(defaulted) => doc.value = defaulted,
            Err(errors) => problems.extend(errors.into_iter().map(|e| Problem {
                at: doc.at(&e.path),
                message: e.message,
            })),
        }
    }
    if !problems.is_empty() {
        // The engine's checks run on what the API server would accept.
        return problems;
    }
    for doc in docs.iter() {
        match doc.kind() {
            "Workflow" => match doc.parse::<Workflow>() {
                Ok(wf) => problems.extend(check_workflow(&wf.spec).into_iter().map(|p| Problem {
                    at: doc.at(&p.field),
                    message: p.message,
                })),
                Err(p) => problems.push(p),
            },
            "WorkflowRun" => problems.extend(check_run_params(doc, docs)),
            "BrokerConnector" => problems.extend(check_connector(doc)),
            "WorkflowSchedule" => problems.extend(check_schedule(doc, docs)),
            _ => {}
        }
    }
    problems
}

/// What the engine rejects in a connector beyond CEL (a SASL protocol without `sasl`, TLS
/// options RabbitMQ cannot take, a URL without a host). Secrets are not needed: every key the
/// spec names is taken to be there.
fn check_connector(doc: &Doc) -> Option<Problem> {
    let bc: BrokerConnector = match doc.parse() {
        Ok(b) => b,
        Err(p) => return Some(p),
    };
    fn keys(v: &serde_json::Value, out: &mut BTreeMap<String, Vec<u8>>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    if let (true, Some(name)) = (k.ends_with("Key") || k == "key", x.as_str()) {
                        out.insert(name.to_owned(), Vec::new());
                    }
                    keys(x, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
            _ => {}
        }
    }
    let mut data: BTreeMap<String, Vec<u8>> = ["username", "password", "tls.crt", "tls.key"]
        .into_iter()
        .map(|k| (k.to_owned(), Vec::new()))
        .collect();
    keys(&doc.value["spec"], &mut data);
    match BrokerConfig::from_spec(&bc.spec, |_| Some(data.clone())) {
        Err(ConfigError::Invalid(m)) => {
            // Messages start with the field they are about: `spec.rabbitmq.url: …` or
            // `spec.kafka.sasl needs …`.
            let field = m
                .split([' ', ':'])
                .next()
                .filter(|f| f.starts_with("spec."))
                .unwrap_or("spec");
            let message = m
                .strip_prefix(&format!("{field}: "))
                .unwrap_or(&m)
                .to_owned();
            Some(Problem {
                at: doc.at(field),
                message,
            })
        }
        _ => None,
    }
}

/// A schedule's cron text and time zone, as the schedule controller reads them; then its run
/// template's params against the Workflow, when that is among the documents.
fn check_schedule(doc: &Doc, docs: &[Doc]) -> Option<Problem> {
    let schedule: crate::api::WorkflowSchedule = match doc.parse() {
        Ok(s) => s,
        Err(p) => return Some(p),
    };
    if let Err(e) = schedule.parse() {
        return Some(Problem {
            at: doc.at(e.field()),
            message: e.to_string(),
        });
    }
    let template = &schedule.spec.run_template.spec;
    let (wf, e) = workflow_params_error(doc, docs, &template.workflow_ref.name, &template.params)?;
    Some(Problem {
        at: doc.at(&format!("spec.runTemplate.{}", param_path(&e))),
        message: format!("{e} (Workflow {wf:?})"),
    })
}

/// The Workflow `name` among `docs` (in `doc`'s namespace) and what is wrong with `params` for
/// it, if anything.
fn workflow_params_error(
    doc: &Doc,
    docs: &[Doc],
    name: &str,
    params: &BTreeMap<String, serde_json::Value>,
) -> Option<(String, crate::engine::params::ParamError)> {
    let ns = |d: &Doc| d.value["metadata"]["namespace"].clone();
    let wf = docs.iter().find(|d| {
        d.kind() == "Workflow"
            && d.api_version() == API_VERSION
            && d.name() == name
            && ns(d) == ns(doc)
    })?;
    let wf: Workflow = wf.parse().ok()?;
    let e = resolve_params(&wf.spec.params, params).err()?;
    Some((wf.metadata.name.unwrap_or_default(), e))
}

/// The field of a run's spec a param error is about.
fn param_path(e: &crate::engine::params::ParamError) -> String {
    match e {
        crate::engine::params::ParamError::Missing { .. } => "spec.params".to_owned(),
        crate::engine::params::ParamError::Unknown { name }
        | crate::engine::params::ParamError::WrongType { name, .. } => {
            format!("spec.params.{name}")
        }
    }
}

/// A run's params against its Workflow, when that is among the documents.
fn check_run_params(doc: &Doc, docs: &[Doc]) -> Option<Problem> {
    let run: WorkflowRun = match doc.parse() {
        Ok(r) => r,
        Err(p) => return Some(p),
    };
    let (wf, e) = workflow_params_error(doc, docs, &run.spec.workflow_ref.name, &run.spec.params)?;
    Some(Problem {
        at: doc.at(&param_path(&e)),
        message: format!("{e} (Workflow {wf:?})"),
    })
}

/// Runs `devset lint`: prints each problem as `FILE:PATH: MESSAGE` on stdout and a count on
/// stderr; exit code 1 when there are problems.
pub fn lint(args: &LintArgs) -> ExitCode {
    let mut docs = match manifests::load(&args.files) {
        Ok(d) => d,
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            eprintln!("{} file(s) could not be read", problems.len());
            return ExitCode::FAILURE;
        }
    };
    let mut problems = yaml11_booleans(&docs);
    problems.extend(check_docs(&mut docs));
    for p in &problems {
        println!("{p}");
    }
    let ours = docs
        .iter()
        .filter(|d| d.api_version().starts_with("devset.io/"))
        .count();
    if problems.is_empty() {
        eprintln!("{ours} devset object(s): no problems");
        ExitCode::SUCCESS
    } else {
        eprintln!("{} problem(s)", problems.len());
        ExitCode::FAILURE
    }
}

/// Plain scalars that YAML 1.1 reads as booleans (`y`, `n`, `yes`, `no`, `on`, `off`, in any
/// of their cases): kubectl and the API server read them so, and `devset lint` (YAML 1.2) as
/// strings, so a `name: n` it accepts the API server rejects. One problem per such scalar in
/// the YAML files of `docs`, with its line.
fn yaml11_booleans(docs: &[Doc]) -> Vec<Problem> {
    const WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    let mut files: Vec<&str> = docs.iter().map(|d| d.file.as_str()).collect();
    files.dedup();
    let mut problems = Vec::new();
    for file in files
        .into_iter()
        .filter(|f| *f != "-" && !f.ends_with(".json"))
    {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        // The indentation of the line that opened a block scalar (`|`, `>`), while in one.
        let mut block: Option<usize> = None;
        for (i, line) in text.lines().enumerate() {
            let indent = line.len() - line.trim_start().len();
            if let Some(b) = block {
                if line.trim().is_empty() || indent > b {
                    continue;
                }
                block = None;
            }
            // Quoted text and comments are not plain scalars.
            let mut plain = String::new();
            let mut quote = None;
            for c in line.chars() {
                match (quote, c) {
                    (None, '\'' | '"') => {
                        quote = Some(c);
                        plain.push('_');
                    }
                    (None, '#') if plain.is_empty() || plain.ends_with(' ') => break,
                    (None, _) => plain.push(c),
                    (Some(q), _) if c == q => quote = None,
                    (Some(_), _) => {}
                }
            }
            let plain = plain.trim_end();
            if plain.ends_with(['|', '>']) || plain.ends_with("|-") || plain.ends_with(">-") {
                block = Some(indent);
            }
            for part in plain.split([',', '{', '}', '[', ']']) {
                let value = part.rsplit(": ").next().unwrap_or(part);
                let value = value.trim().trim_start_matches("- ").trim();
                if WORDS.contains(&value) {
                    problems.push(Problem::file(
                        file,
                        format!(
                            "line {}: {value} is a boolean to kubectl and the API server \
                             (YAML 1.1) but a string here: quote it ('{value}') or write \
                             true/false",
                            i + 1
                        ),
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let mut docs = manifests::parse_docs("m.yaml", text).unwrap();
        check_docs(&mut docs)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn yaml_1_1_booleans_are_named_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.yaml");
        std::fs::write(
            &file,
            "kind: Workflow # on\nspec:\n  params: [{name: n, type: string}]\n  stages:\n\
             \x20   - name: 'no'\n      continueOnError: yes\n      publish:\n\
             \x20       payload: |\n          on\n        key: \"off\"\n        topic: Off\n",
        )
        .unwrap();
        let docs = manifests::load(std::slice::from_ref(&file)).unwrap();
        let lines: Vec<String> = yaml11_booleans(&docs)
            .iter()
            .map(|p| p.message.split(':').next().unwrap().to_owned())
            .collect();
        assert_eq!(lines, ["line 3", "line 6", "line 11"]);
    }

    #[test]
    fn engine_checks_run_on_schema_valid_workflows() {
        let p = problems(
            "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  stages:\n\
             \x20 - {name: a, dependsOn: [b], delay: {duration: 1s}}\n\
             \x20 - {name: b, dependsOn: [a], publish: {topic: t, payload: '{{ params.x }}'}}\n",
        );
        assert_eq!(
            p,
            [
                "m.yaml:spec.stages: dependency cycle: a -> b -> a",
                "m.yaml:spec.stages[1].publish.payload: a template uses {{ params.x }}, but the \
                 workflow declares no param \"x\"; add it to spec.params"
            ]
        );
    }

    #[test]
    fn run_params_are_checked_against_a_workflow_in_the_files() {
        let p = problems(
            "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  params: [{name: n, type: integer}]\n\
             \x20 stages: [{name: a, delay: {duration: 1s}}]\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {name: r}\n\
             spec: {workflowRef: {name: w}, connectorRef: {name: k}, params: {n: lots}}\n",
        );
        assert_eq!(
            p,
            [
                "m.yaml:spec.params.n: param \"n\": expected integer, got \"lots\" (Workflow \"w\") \
              (WorkflowRun \"r\")"
            ]
        );
    }

    #[test]
    fn connectors_get_the_engines_checks_without_their_secrets() {
        let head = "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {name: c}\n";
        assert_eq!(
            problems(&format!(
                "{head}spec: {{kafka: {{bootstrapServers: 'k:9093', securityProtocol: SASL_SSL}}}}\n"
            )),
            [
                "m.yaml:spec.kafka.securityProtocol: spec.kafka.securityProtocol SASL_PLAINTEXT and \
              SASL_SSL need spec.kafka.sasl"
            ]
        );
        assert_eq!(
            problems(&format!(
                "{head}spec: {{rabbitmq: {{url: 'amqps://r/%2f', secretRef: {{name: s, usernameKey: user}}, \
                 tls: {{insecureSkipVerify: true, caSecretRef: {{name: ca, key: ca.pem}}}}}}}}\n"
            ))
            .len(),
            1
        );
        // Secrets named by the spec need not be in the files.
        assert_eq!(
            problems(&format!(
                "{head}spec: {{rabbitmq: {{url: 'amqps://r/%2f', secretRef: {{name: s, usernameKey: user}}, \
                 tls: {{caSecretRef: {{name: ca, key: ca.pem}}, clientCertSecretRef: {{name: cert}}}}}}}}\n"
            )),
            Vec::<String>::new()
        );
    }

    #[test]
    fn schedules_get_their_cron_and_time_zone_checked() {
        let doc = |schedule: &str, tz: &str| {
            format!(
                "apiVersion: devset.io/v1alpha1\nkind: WorkflowSchedule\nmetadata: {{name: s}}\n\
                 spec:\n  schedule: '{schedule}'\n  timeZone: {tz}\n  runTemplate:\n    \
                 spec: {{workflowRef: {{name: w}}, connectorRef: {{name: k}}}}\n"
            )
        };
        assert!(problems(&doc("0 9 * * MON", "Europe/Paris")).is_empty());
        let p = problems(&doc("0 0 9 * * MON", "UTC"));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with(
                "m.yaml:spec.schedule: spec.schedule \"0 0 9 * * MON\": has 6 field(s)"
            ),
            "{p:?}"
        );
        let wf = "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  \
                  params: [{name: n, type: integer}]\n  stages: [{name: a, delay: {duration: 1s}}]\n---\n";
        let with_params = format!(
            "{wf}{}",
            doc("@daily", "UTC").replace(
                "connectorRef: {name: k}}",
                "connectorRef: {name: k}, params: {n: lots}}"
            )
        );
        assert_eq!(
            problems(&with_params),
            [
                "m.yaml:spec.runTemplate.spec.params.n: param \"n\": expected integer, got \"lots\" \
              (Workflow \"w\") (WorkflowSchedule \"s\")"
            ]
        );
        let p = problems(&doc("@daily", "Europe/Pariss"));
        assert!(
            p[0].starts_with(
                "m.yaml:spec.timeZone: spec.timeZone \"Europe/Pariss\" is not a time zone"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn other_kinds_are_skipped_and_a_missing_kind_is_reported() {
        assert!(problems("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n").is_empty());
        assert_eq!(
            problems("metadata: {name: s}\n"),
            ["m.yaml:kind: Required value: a manifest needs apiVersion and kind"]
        );
        assert_eq!(
            problems("apiVersion: devset.io/v1alpha1\nkind: Pipeline\nmetadata: {name: p}\n"),
            [
                "m.yaml:kind: Unsupported value: \"Pipeline\": supported values: \
              \"BrokerConnector\", \"Workflow\", \"WorkflowRun\", \"WorkflowSchedule\""
            ]
        );
    }
}
