//! `devset logs`: a client of `devset api`'s event log: pages, or with `-f` the SSE stream,
//! reconnecting with `Last-Event-ID` when the connection drops.
//!
//! The token and the namespace come from the kubeconfig (or `--token`, `-n`). The address of
//! `devset api` comes from `--server`/`DEVSET_API_SERVER`: the API server's service proxy
//! drops the caller's `Authorization` header, so it cannot carry the token to `devset api`.

use super::render::{self, Output};
use crate::events::Event;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use http_body_util::BodyExt;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

/// How long `-f` keeps trying to reconnect before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Print a run's event log from `devset api`; `-f` follows it live until the run ends.
#[derive(Clone, Debug, clap::Args)]
pub struct LogsArgs {
    /// The WorkflowRun.
    #[arg(value_name = "RUN")]
    pub run: String,
    /// The run's namespace; defaults to the kubeconfig context's namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Follow the log live until the run ends, reconnecting when the connection drops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the events after this sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: u64,
    /// `text`: one line per event; `json`: each event as one JSON line, as the API serves it.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
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

/// Runs `devset logs`.
pub fn logs(args: &LogsArgs) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The client of `devset api` and the run's events path.
async fn connect(args: &LogsArgs) -> Result<(Client, String), String> {
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
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let path = format!(
        "/api/v1/namespaces/{}/workflowruns/{}/events",
        enc(&ns),
        enc(&args.run)
    );
    Ok((client, path))
}

async fn run(args: &LogsArgs) -> Result<(), String> {
    let (client, path) = connect(args).await?;
    let mut out = Printer {
        output: args.output,
        last: args.after,
    };
    if args.follow {
        follow(&client, &path, &mut out).await
    } else {
        pages(&client, &path, &mut out).await
    }
}

/// Prints events once each, in order.
struct Printer {
    output: Output,
    /// The last sequence number printed.
    last: u64,
}

impl Printer {
    /// Prints an event unless it was printed already; returns whether it ends the run's log.
    fn event(&mut self, seq: u64, data: &str) -> bool {
        if seq <= self.last {
            return false;
        }
        self.last = seq;
        let event: Option<Event> = serde_json::from_str(data).ok();
        let mut stdout = std::io::stdout().lock();
        let _ = match (self.output, &event) {
            (Output::Text, Some(e)) => writeln!(stdout, "{}", render::line(e)),
            _ => writeln!(stdout, "{data}"),
        };
        let _ = stdout.flush();
        event.is_some_and(|e| e.is_terminal())
    }
}

fn get(path: String, accept: &str, last: Option<u64>) -> http::Request<kube::client::Body> {
    let mut req = http::Request::get(path).header(http::header::ACCEPT, accept);
    if let Some(n) = last {
        req = req.header("Last-Event-ID", n.to_string());
    }
    req.body(kube::client::Body::empty())
        .expect("a valid request")
}

/// What went wrong with one request: worth a retry, or final.
enum Failure {
    Retry(String),
    Fatal(String),
}

async fn send(
    client: &Client,
    req: http::Request<kube::client::Body>,
) -> Result<http::Response<kube::client::Body>, Failure> {
    let res = client
        .send(req)
        .await
        .map_err(|e| Failure::Retry(format!("cannot reach devset api: {e}")))?;
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
    let text = format!("devset api answered {status}: {}", message.trim());
    if status.is_server_error() {
        Err(Failure::Retry(text))
    } else {
        Err(Failure::Fatal(text))
    }
}

/// The log so far, a page at a time.
async fn pages(client: &Client, path: &str, out: &mut Printer) -> Result<(), String> {
    loop {
        let url = format!("{path}?after={}&limit=1000", out.last);
        let res = send(client, get(url, "application/json", None))
            .await
            .map_err(|(Failure::Retry(e) | Failure::Fatal(e))| e)?;
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading a page: {e}"))?
            .to_bytes();
        let page: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("a page is not JSON: {e}"))?;
        for item in page["items"].as_array().into_iter().flatten() {
            let seq = item["seq"].as_u64().unwrap_or(0);
            out.event(seq, &item.to_string());
        }
        if page["more"] != true {
            return Ok(());
        }
    }
}

/// The SSE stream until the run's terminal event, reconnecting after drops.
async fn follow(client: &Client, path: &str, out: &mut Printer) -> Result<(), String> {
    let mut failing_since: Option<Instant> = None;
    let mut wait = Duration::from_millis(250);
    loop {
        let req = get(
            format!("{path}?after={}", out.last),
            "text/event-stream",
            Some(out.last),
        );
        let why = match send(client, req).await {
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => e,
            Ok(res) => {
                failing_since = None;
                wait = Duration::from_millis(250);
                let mut events = res.into_body().into_data_stream().eventsource();
                let mut why = "the stream ended before the run did".to_owned();
                while let Some(item) = events.next().await {
                    match item {
                        Ok(ev) => {
                            let Ok(seq) = ev.id.parse::<u64>() else {
                                continue;
                            };
                            if out.event(seq, &ev.data) {
                                return Ok(());
                            }
                        }
                        Err(e) => {
                            why = format!("the connection dropped: {e}");
                            break;
                        }
                    }
                }
                why
            }
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            return Err(format!(
                "{why}; gave up reconnecting after {}s",
                RECONNECT_FOR.as_secs()
            ));
        }
        eprintln!("devset: {why}; reconnecting after #{}", out.last);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
