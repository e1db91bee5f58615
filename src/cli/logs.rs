//! `devset logs`: a client of `devset api`'s event log: pages, or with `-f` the SSE stream,
//! reconnecting with `Last-Event-ID` when the connection drops.
//!
//! The address of `devset api`, the token and the namespace: see [`super::api_client`].

use super::{
    api_client::{self, ApiArgs},
    render::{self, Output},
};
use crate::events::Event;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use http_body_util::BodyExt;
use kube::Client;
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
    /// Follow the log live until the run ends, reconnecting when the connection drops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the events after this sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: u64,
    /// `text`: one line per event; `json`: each event as one JSON line, as the API serves it.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub api: ApiArgs,
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
    let (client, ns) = api_client::connect(&args.api).await?;
    let path = format!("{}/events", api_client::run_path(&ns, &args.run));
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

/// Sends `req`: no answer or a server error (5xx) is worth a retry, any other answer final.
async fn send(
    client: &Client,
    req: http::Request<kube::client::Body>,
) -> Result<http::Response<kube::client::Body>, Failure> {
    api_client::send(client, req).await.map_err(|f| {
        if f.status.is_none_or(|s| s.is_server_error()) {
            Failure::Retry(f.message)
        } else {
            Failure::Fatal(f.message)
        }
    })
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
