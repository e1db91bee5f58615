//! `devset export RUN... [--format json|csv] [-o FILE]`: several runs with their whole event
//! logs, through `devset api` (`POST /api/v1/workflowruns:export`), as the kubeconfig's
//! identity. A run is `NAME` (in `-n` or the context's namespace) or `NAMESPACE/NAME`. The
//! export is written as it streams in (to FILE, or standard output), never held in memory.
//!
//! Exit codes: 0 when every run was exported; 2 when devset api refused the export (a run that
//! does not exist or that the caller may not read: the JSON export still holds the others, and
//! each refused run is named on standard error), or when no address or token for devset api
//! is configured; 1 for anything else (devset api unreachable, a server error, a file that
//! cannot be written).

use super::api_client::{self, ApiArgs};
use http_body_util::BodyExt;
use std::{io::Write, path::PathBuf, process::ExitCode};

/// The JSON export's tail kept to read its `errors` (they come last).
const TAIL: usize = 512 * 1024;

/// Export runs with their event logs.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportArgs {
    /// The runs: `NAME` or `NAMESPACE/NAME` (at most 500).
    #[arg(value_name = "RUN", required = true)]
    pub runs: Vec<String>,
    /// `json` (the runs and their events) or `csv` (one row per event).
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The export's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Csv,
}

/// Runs `devset export`.
pub fn export(args: &ExportArgs) -> ExitCode {
    api_client::run_action(async { run(args).await.map(|()| String::new()) })
}

/// The request body: each run with its namespace (`default_ns` unless it names one).
pub fn body(runs: &[String], format: Format, default_ns: &str) -> serde_json::Value {
    let runs: Vec<_> = runs
        .iter()
        .map(|r| {
            let (ns, name) = r.split_once('/').unwrap_or((default_ns, r));
            serde_json::json!({ "namespace": ns, "name": name })
        })
        .collect();
    let format = match format {
        Format::Json => "json",
        Format::Csv => "csv",
    };
    serde_json::json!({ "runs": runs, "format": format })
}

/// The runs a JSON export could not include, from its tail: `(namespace/name, message)`.
pub fn refused(tail: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(tail);
    let Some(at) = text.rfind("],\"errors\":") else {
        return Vec::new();
    };
    let errors = text[at + "],\"errors\":".len()..].trim_end();
    let errors = errors.strip_suffix('}').unwrap_or(errors);
    serde_json::from_str::<Vec<serde_json::Value>>(errors)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                format!(
                    "{}/{}",
                    e["namespace"].as_str().unwrap_or_default(),
                    e["name"].as_str().unwrap_or_default()
                ),
                format!(
                    "{} {}",
                    e["status"],
                    e["message"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect()
}

async fn run(args: &ExportArgs) -> Result<(), (u8, String)> {
    let (client, ns) = api_client::connect(&args.api).await.map_err(|e| (2, e))?;
    let body = body(&args.runs, args.format, &ns).to_string();
    let req = http::Request::post("/api/v1/workflowruns:export")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(body.into_bytes()))
        .map_err(|e| (1, format!("building the request: {e}")))?;
    let res = api_client::send(&client, req)
        .await
        .map_err(|f| (if f.is_client_error() { 2 } else { 1 }, f.message))?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| (1, format!("cannot write {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut body = res.into_body();
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| (1, format!("the export broke off: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        out.write_all(&chunk)
            .map_err(|e| (1, format!("writing the export: {e}")))?;
        tail.extend_from_slice(&chunk);
        if tail.len() > 2 * TAIL {
            tail.drain(..tail.len() - TAIL);
        }
    }
    out.flush()
        .map_err(|e| (1, format!("writing the export: {e}")))?;
    let refused = if args.format == Format::Json {
        refused(&tail)
    } else {
        Vec::new()
    };
    for (run, why) in &refused {
        eprintln!("not exported: {run}: {why}");
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err((2, format!("{} run(s) not exported", refused.len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_take_the_default_namespace_unless_they_name_one() {
        let b = body(&["a".into(), "team/b".into()], Format::Csv, "dev");
        assert_eq!(
            b,
            serde_json::json!({"runs": [{"namespace": "dev", "name": "a"},
                {"namespace": "team", "name": "b"}], "format": "csv"})
        );
    }

    #[test]
    fn refused_runs_are_read_from_the_tail() {
        let tail = br#"{"events":[{"type":"x"}]}],"errors":[{"namespace":"n","name":"r","status":403,"reason":"Forbidden","message":"no"}]}"#;
        assert_eq!(refused(tail), vec![("n/r".to_owned(), "403 no".to_owned())]);
        assert!(refused(br#"{"items":[],"errors":[]}"#).is_empty());
    }
}
