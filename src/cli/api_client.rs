//! The client side of `devset api` that the CLI commands share (`devset logs`, `devset approve`,
//! `devset reject`): where the API is, who the caller is, and its error answers.
//!
//! The token and the namespace come from the kubeconfig (or `--token`, `-n`). The address of
//! `devset api` comes from `--server`/`DEVSET_API_SERVER`, or the kubeconfig context's extension
//! [`EXTENSION`]: the API server's service proxy drops the caller's `Authorization` header, so it
//! cannot carry the token to `devset api`.

use http_body_util::BodyExt;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use std::process::ExitCode;

/// Where `devset api` is and who calls it.
#[derive(Clone, Debug, clap::Args)]
pub struct ApiArgs {
    /// The run's namespace; defaults to the kubeconfig context's namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The address of `devset api`, e.g. `http://127.0.0.1:8082` (after
    /// `kubectl port-forward`), or an ingress URL.
    #[arg(long, env = "DEVSET_API_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// A bearer token to send instead of the kubeconfig's.
    #[arg(long, env = "DEVSET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The kubeconfig context to use; defaults to the current one.
    #[arg(long)]
    pub context: Option<String>,
}

/// The kubeconfig context extension that holds devset api's address: a URL, or an object
/// with `server: URL`.
pub const EXTENSION: &str = "devset.io/api-server";

/// devset api's address from the context's [`EXTENSION`].
fn context_server(k: &Kubeconfig, context: Option<&str>) -> Option<String> {
    let name = context.or(k.current_context.as_deref())?;
    let ctx = k
        .contexts
        .iter()
        .find(|c| c.name == name)?
        .context
        .as_ref()?;
    let ext = ctx
        .extensions
        .iter()
        .flatten()
        .find(|e| e.name == EXTENSION)?;
    ext.extension
        .as_str()
        .or_else(|| ext.extension["server"].as_str())
        .map(str::to_owned)
}

/// A client of `devset api` that sends the kubeconfig's identity, and the namespace to use.
pub async fn connect(args: &ApiArgs) -> Result<(Client, String), String> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let kubeconfig = match Kubeconfig::read() {
        Ok(k) => Some(k),
        Err(_) if args.token.is_some() && args.server.is_some() => None,
        Err(e) => {
            return Err(format!(
                "cannot read the kubeconfig for a token ({e}); pass --token, or set KUBECONFIG"
            ));
        }
    };
    let from_context = kubeconfig
        .as_ref()
        .and_then(|k| context_server(k, args.context.as_deref()));
    let Some(server) = args.server.clone().or(from_context) else {
        return Err(format!(
            "no address for devset api: pass --server URL, set DEVSET_API_SERVER, or add the \
             extension {EXTENSION:?} to the kubeconfig context; e.g. \
             `kubectl -n devset-system port-forward svc/devset-operator 8082` and \
             --server http://127.0.0.1:8082"
        ));
    };
    let url: http::Uri = server
        .parse()
        .map_err(|e| format!("--server {server:?}: not a URL: {e}"))?;
    if url.scheme().is_none() || url.host().is_none() {
        return Err(format!(
            "--server {server:?}: give a URL such as http://127.0.0.1:8082"
        ));
    }
    let mut config = match kubeconfig {
        Some(k) => Config::from_custom_kubeconfig(k, &options)
            .await
            .map_err(|e| format!("kubeconfig: {e}"))?,
        None => Config::new(url.clone()),
    };
    // The kubeconfig's identity and namespace, sent to devset api instead of the API server.
    config.cluster_url = url;
    config.root_cert = None;
    config.root_cert_file = None;
    config.tls_server_name = None;
    config.proxy_url = None;
    config.read_timeout = None;
    if let Some(t) = &args.token {
        config.auth_info = kube::config::AuthInfo {
            token: Some(t.clone().into()),
            ..Default::default()
        };
    }
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| format!("client: {e}"))?;
    Ok((client, ns))
}

/// Runs one CLI action against devset api on a runtime of its own: prints the line it gives
/// (when not empty) and exits 0, or prints `error: …` and exits with the action's code
/// (2 for usage and connection problems, 1 for the API's refusals, as each action decides).
pub fn run_action(
    action: impl std::future::Future<Output = Result<String, (u8, String)>>,
) -> ExitCode {
    let done = tokio::runtime::Runtime::new()
        .map_err(|e| (1, format!("cannot start the async runtime: {e}")))
        .and_then(|rt| rt.block_on(action));
    match done {
        Ok(line) => {
            if !line.is_empty() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err((code, e)) => {
            eprintln!("error: {e}");
            ExitCode::from(code)
        }
    }
}

/// `s` as one segment of a URL path.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The path of a run: `/api/v1/namespaces/NS/workflowruns/NAME`.
pub fn run_path(ns: &str, run: &str) -> String {
    format!(
        "/api/v1/namespaces/{}/workflowruns/{}",
        segment(ns),
        segment(run)
    )
}

/// A request that got no success answer.
#[derive(Debug)]
pub struct Failure {
    /// The HTTP status devset api answered; `None` when it could not be reached.
    pub status: Option<http::StatusCode>,
    /// One line for people: `devset api answered 409 Conflict: …`.
    pub message: String,
}

impl Failure {
    /// A client error (4xx): asking again will not help.
    pub fn is_client_error(&self) -> bool {
        self.status.is_some_and(|s| s.is_client_error())
    }
}

/// Sends `req`; any answer but 2xx is a [`Failure`] with the message of devset api's `Status`.
pub async fn send(
    client: &Client,
    req: http::Request<kube::client::Body>,
) -> Result<http::Response<kube::client::Body>, Failure> {
    let res = client.send(req).await.map_err(|e| Failure {
        status: None,
        message: format!("cannot reach devset api: {e}"),
    })?;
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let body = res
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    // Errors are Kubernetes Status objects.
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or(body);
    Err(Failure {
        status: Some(status),
        message: format!("devset api answered {status}: {}", message.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_the_context_extension_as_a_url_or_an_object() {
        let k: Kubeconfig = serde_yaml::from_str(
            "apiVersion: v1\nkind: Config\ncurrent-context: a\ncontexts:\n\
             - name: a\n  context:\n    cluster: c\n    extensions:\n    \
             - name: devset.io/api-server\n      extension: http://a:8082\n\
             - name: b\n  context:\n    cluster: c\n    extensions:\n    \
             - name: devset.io/api-server\n      extension: {server: 'http://b:8082'}\n\
             - name: none\n  context: {cluster: c}\n",
        )
        .unwrap();
        assert_eq!(context_server(&k, None).as_deref(), Some("http://a:8082"));
        assert_eq!(
            context_server(&k, Some("b")).as_deref(),
            Some("http://b:8082")
        );
        assert_eq!(context_server(&k, Some("none")), None);
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(
            run_path("ns", "a/b c"),
            "/api/v1/namespaces/ns/workflowruns/a%2Fb%20c"
        );
    }
}
