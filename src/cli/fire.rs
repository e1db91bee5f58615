//! `devset fire SCHEDULE`: start a run of a WorkflowSchedule now, through `devset api`
//! (`POST /api/v1/namespaces/NS/workflowschedules/SCHEDULE/fire`), as the kubeconfig's identity.
//! The address of `devset api`, the token and the namespace: see [`super::api_client`].
//!
//! Prints the new run's name. Exit codes: 0 when the run was created; 2 when devset api refused
//! it as a client error (no such schedule, not allowed) or when no address or token for devset
//! api is configured; 1 for anything else (devset api unreachable, a server error).

use super::api_client::{self, ApiArgs};
use http_body_util::BodyExt;
use std::process::ExitCode;

/// Start a run of a WorkflowSchedule now.
#[derive(Clone, Debug, clap::Args)]
pub struct FireArgs {
    /// The WorkflowSchedule.
    #[arg(value_name = "SCHEDULE")]
    pub schedule: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Runs `devset fire`.
pub fn fire(args: &FireArgs) -> ExitCode {
    api_client::run_action(run(args))
}

/// The path of a schedule's fire action.
pub fn fire_path(ns: &str, schedule: &str) -> String {
    format!(
        "/api/v1/namespaces/{}/workflowschedules/{}/fire",
        api_client::segment(ns),
        api_client::segment(schedule)
    )
}

async fn run(args: &FireArgs) -> Result<String, (u8, String)> {
    let (client, ns) = api_client::connect(&args.api).await.map_err(|e| (2, e))?;
    let req = http::Request::post(fire_path(&ns, &args.schedule))
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::empty())
        .map_err(|e| (1, format!("building the request: {e}")))?;
    let res = api_client::send(&client, req)
        .await
        .map_err(|f| (if f.is_client_error() { 2 } else { 1 }, f.message))?;
    let answer: serde_json::Value = res
        .into_body()
        .collect()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b.to_bytes()).ok())
        .unwrap_or_default();
    let run = answer["metadata"]["name"].as_str().unwrap_or("(unnamed)");
    Ok(format!(
        "workflowrun/{run} created from schedule {:?}",
        args.schedule
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_path_escapes_its_segments() {
        assert_eq!(
            super::fire_path("team a", "nightly"),
            "/api/v1/namespaces/team%20a/workflowschedules/nightly/fire"
        );
    }
}
