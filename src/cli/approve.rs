//! `devset approve RUN STAGE` and `devset reject RUN STAGE`: decide an approval stage through
//! `devset api` (`POST …/workflowruns/RUN/stages/STAGE/approve` or `…/reject`), as the
//! kubeconfig's identity. The address of `devset api`, the token and the namespace: see
//! [`super::api_client`].
//!
//! Exit codes: 0 when the decision was recorded; 2 when devset api refused it as a client error
//! (no such run or stage, not waiting, already decided, not allowed: the request is wrong, asking
//! again will not help) or when no address or token for devset api is configured; 1 for anything
//! else (devset api unreachable, a server error).

use super::api_client::{self, ApiArgs};
use crate::api::Decision;
use http_body_util::BodyExt;
use std::process::ExitCode;

/// Decide an approval stage of a run.
#[derive(Clone, Debug, clap::Args)]
pub struct ApproveArgs {
    /// The WorkflowRun.
    #[arg(value_name = "RUN")]
    pub run: String,
    /// The approval stage, by name.
    #[arg(value_name = "STAGE")]
    pub stage: String,
    /// Why, for the record (at most 1024 characters).
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Runs `devset approve` (`decision` Approved) or `devset reject` (Rejected).
pub fn decide(args: &ApproveArgs, decision: Decision) -> ExitCode {
    api_client::run_action(run(args, decision))
}

/// The line printed on success.
fn done_line(decision: Decision, stage: &str, run: &str) -> String {
    let verb = match decision {
        Decision::Approved => "approved",
        Decision::Rejected => "rejected",
    };
    format!("{verb} stage {stage:?} of run {run:?}")
}

async fn run(args: &ApproveArgs, decision: Decision) -> Result<String, (u8, String)> {
    let (client, ns) = api_client::connect(&args.api).await.map_err(|e| (2, e))?;
    let action = match decision {
        Decision::Approved => "approve",
        Decision::Rejected => "reject",
    };
    let path = format!(
        "{}/stages/{}/{action}",
        api_client::run_path(&ns, &args.run),
        api_client::segment(&args.stage)
    );
    let body = match &args.comment {
        Some(c) => serde_json::json!({ "comment": c }),
        None => serde_json::json!({}),
    };
    let req = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::from(body.to_string().into_bytes()))
        .map_err(|e| (1, format!("building the request: {e}")))?;
    let res = api_client::send(&client, req)
        .await
        .map_err(|f| (if f.is_client_error() { 2 } else { 1 }, f.message))?;
    // The answer names the decision as recorded; a body that does not parse still means success.
    let answer: serde_json::Value = res
        .into_body()
        .collect()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b.to_bytes()).ok())
        .unwrap_or_default();
    let stage = answer["stage"].as_str().unwrap_or(&args.stage);
    let run = answer["name"].as_str().unwrap_or(&args.run);
    Ok(done_line(decision, stage, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_one_line_naming_the_stage_and_the_run() {
        assert_eq!(
            done_line(Decision::Approved, "go-live", "orders-1"),
            r#"approved stage "go-live" of run "orders-1""#
        );
        assert_eq!(
            done_line(Decision::Rejected, "go-live", "orders-1"),
            r#"rejected stage "go-live" of run "orders-1""#
        );
    }
}
