//! `devset retry RUN` and `devset rerun RUN --from STAGE`: a new run that repeats a finished one,
//! through `devset api` (`POST …/workflowruns/RUN/retry` or `…/rerun`), as the kubeconfig's
//! identity. The address of `devset api`, the token and the namespace: see
//! [`super::api_client`].
//!
//! Prints the new run's name. Exit codes as `devset approve`: 0 when the run was created; 2 when
//! devset api refused the request as a client error (no such run, not finished, an unknown stage
//! or param, not allowed) or nothing says where devset api is; 1 for anything else.

use super::api_client::{self, ApiArgs};
use http_body_util::BodyExt;
use std::process::ExitCode;

/// Retry a finished run: a new run from the start.
#[derive(Clone, Debug, clap::Args)]
pub struct RetryArgs {
    /// The finished WorkflowRun to repeat.
    #[arg(value_name = "RUN")]
    pub run: String,
    /// Set a param of the new run (the others keep the earlier run's values). Repeat for more.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = name_value)]
    pub params: Vec<(String, String)>,
    /// Publish through this BrokerConnector instead of the earlier run's.
    #[arg(long, value_name = "NAME")]
    pub connector: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Re-run a finished run from a stage: the stages it depends on are inherited, not executed.
#[derive(Clone, Debug, clap::Args)]
pub struct RerunArgs {
    #[command(flatten)]
    pub retry: RetryArgs,
    /// The stage to run from.
    #[arg(long = "from", value_name = "STAGE")]
    pub from: String,
}

fn name_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or_default();
    if k.is_empty() {
        return Err(format!("{s:?} is not NAME=VALUE"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Runs `devset retry` (`from` is `None`) or `devset rerun`.
pub fn repeat(args: &RetryArgs, from: Option<&str>) -> ExitCode {
    api_client::run_action(send(args, from))
}

/// The request body.
fn body(args: &RetryArgs, from: Option<&str>) -> serde_json::Value {
    let mut body = serde_json::json!({});
    if let Some(f) = from {
        body["fromStage"] = f.into();
    }
    if !args.params.is_empty() {
        let params: serde_json::Map<_, _> = args
            .params
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        body["params"] = params.into();
    }
    if let Some(c) = &args.connector {
        body["connector"] = c.as_str().into();
    }
    body
}

/// The line printed on success.
fn done_line(created: &str, source: &str, from: Option<&str>) -> String {
    match from {
        Some(f) => {
            format!("workflowrun/{created} created: a re-run of {source:?} from stage {f:?}")
        }
        None => format!("workflowrun/{created} created: a retry of {source:?}"),
    }
}

async fn send(args: &RetryArgs, from: Option<&str>) -> Result<String, (u8, String)> {
    let (client, ns) = api_client::connect(&args.api).await.map_err(|e| (2, e))?;
    let action = if from.is_some() { "rerun" } else { "retry" };
    let path = format!("{}/{action}", api_client::run_path(&ns, &args.run));
    let req = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::from(
            body(args, from).to_string().into_bytes(),
        ))
        .map_err(|e| (1, format!("building the request: {e}")))?;
    let res = api_client::send(&client, req)
        .await
        .map_err(|f| (if f.is_client_error() { 2 } else { 1 }, f.message))?;
    let run: serde_json::Value = res
        .into_body()
        .collect()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b.to_bytes()).ok())
        .unwrap_or_default();
    let name = run["metadata"]["name"].as_str().unwrap_or("?");
    Ok(done_line(name, &args.run, from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_the_stage_params_and_connector() {
        let args = RetryArgs {
            run: "orders-1".into(),
            params: vec![("orders".into(), "5".into())],
            connector: Some("kafka2".into()),
            api: ApiArgs {
                namespace: None,
                server: None,
                token: None,
                context: None,
            },
        };
        assert_eq!(
            body(&args, Some("pay")),
            serde_json::json!({"fromStage": "pay", "params": {"orders": "5"}, "connector": "kafka2"})
        );
        assert_eq!(name_value("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(name_value("=x").is_err() && name_value("x").is_err());
        assert_eq!(
            done_line("orders-1-x", "orders-1", None),
            r#"workflowrun/orders-1-x created: a retry of "orders-1""#
        );
    }
}
