//! `devset api`: the HTTP API next to the controller (port 8082). It streams each run's event
//! log over server-sent events, pages and exports it, lists runs from a watch cache, stops
//! runs and decides approval stages, all as far as the caller's Kubernetes RBAC allows.
//!
//! | route | RBAC verb on `workflowruns.devset.io` |
//! | --- | --- |
//! | `GET /api/v1/namespaces/{ns}/workflowruns` | `list` |
//! | `GET …/workflowruns/{name}` | `get` |
//! | `POST …/workflowruns/{name}/stop` | `patch` |
//! | `POST …/workflowruns/{name}/stages/{stage}/approve`, `…/reject` | `approve` (then the stage's `approvers`) |
//! | `GET …/workflowruns/{name}/events`, `…/events/{seq}` | `get` |
//! | `POST /api/v1/trigger` | `create` (in the body's namespace) |
//! | `POST …/workflowruns/{name}/retry`, `…/rerun` | `create` |
//! | `GET /api/v1/namespaces/{ns}/workflowschedules`, `…/workflowschedules/{name}` | `list`, `get` on `workflowschedules.devset.io` |
//! | `POST /api/v1/namespaces/{ns}/workflowschedules/{name}/fire` | `create` |
//! | `POST …/workflowschedules/{name}/suspend`, `…/resume` | `patch` on `workflowschedules.devset.io` |
//! | `GET /api/v1/workflowruns` (JSON, or SSE of run changes; also `…/namespaces/{ns}/workflowruns` with `Accept: text/event-stream`) | `list` (cluster-wide, or in each served namespace) |
//! | `GET /api/v1/namespaces` | a valid token; lists the namespaces where the caller may `list` |
//! | `GET /api/v1/namespaces/{ns}/workflows`, `…/brokerconnectors` | `list` on `workflows.devset.io`, `brokerconnectors.devset.io` |
//! | `GET /api/v1/namespaces/{ns}/permissions` | a valid token (it asks the reviews for the page's actions) |
//! | `GET`, `POST`, `DELETE /api/v1/session` | `GET`: a valid token (cookie or bearer); `POST` checks the body's token |
//! | `GET /`, `/runs`, `/runs/{ns}/{name}`, `/schedules`, `/signin`, `/assets/{file}` (the web page) | none |
//! | `GET /api/v1/openapi.json`, `/metrics`, `/healthz`, `/readyz` | none |
//!
//! The token comes from `Authorization: Bearer`, else the `devset_session` cookie of the web
//! page's sign-in; a cookie-authenticated request with a method other than GET/HEAD/OPTIONS
//! must carry `X-Devset-Csrf: 1` (`session.rs`).
//!
//! ## Adding routes
//! The routes are grouped by resource, one file each under `src/server/` (`runs.rs`,
//! `events.rs`, `bulk.rs`, `approval.rs`, `ops.rs`, `catalog.rs`, `live.rs`, `session.rs`,
//! `web.rs`, …), and each route is documented in the
//! OpenAPI document by the handler itself, so that the two cannot drift:
//! 1. put `#[utoipa::path(post, path = "/api/v1/…/{name}/thing", params(…), request_body = T,
//!    responses((status = 201, body = U), (status = 404, description = "…")))]` on the handler
//!    (see `runs.rs`; error answers without a body get the `Status` body);
//! 2. list the body types `T`, `U` in `schemars_schemas!` in `openapi.rs` (they derive
//!    `schemars::JsonSchema`);
//! 3. expose `pub(super) fn router() -> OpenApiRouter<Arc<AppState>>` built with
//!    `.routes(routes!(handler))` (never `.route(…)`: it would serve an undocumented route),
//!    and merge it in [`api`] below with one line.
//!
//! `openapi::tests` fails when a route is served and not documented or the other way round.
//! Shared helpers (namespace check, run lookup, 404) are in `routes.rs`, the error type in
//! `error.rs`, RBAC checks in `auth.rs`.

mod approval;
mod auth;
mod bulk;
mod catalog;
mod create;
mod error;
mod events;
mod hub;
mod live;
mod metrics;
mod openapi;
mod ops;
mod rerun;
mod routes;
mod runs;
mod schedules;
mod session;
mod trigger;
mod web;

pub use auth::AuthMode;

use crate::{api::WorkflowRun, events::StoreArgs};
use anyhow::Context as _;
use axum::{Extension, Router, extract::State, middleware};
use futures::StreamExt;
use kube::{
    Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use std::{net::SocketAddr, sync::Arc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Settings of `devset api`.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Where to listen.
    #[arg(long, env = "DEVSET_API_ADDR", default_value = "0.0.0.0:8082")]
    pub addr: SocketAddr,
    /// How callers are checked: `kubernetes` (bearer token, TokenReview and
    /// SubjectAccessReview) or `none` (no checks; for local development only).
    #[arg(
        long,
        value_enum,
        env = "DEVSET_API_AUTH",
        default_value = "kubernetes"
    )]
    pub auth: AuthMode,
    /// Serve only these namespaces' runs, comma-separated (default: all namespaces).
    #[arg(long = "namespace", env = "DEVSET_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// What every handler shares.
pub(crate) struct AppState {
    pub hub: Arc<hub::Hub>,
    pub runs: crate::watch::Stores<WorkflowRun>,
    /// The run watch's changes, for the live run streams.
    pub changes: Arc<live::Changes>,
    pub auth: auth::Auth,
    pub client: Client,
    pub metrics: metrics::ApiMetrics,
    /// The namespaces served; empty for all.
    pub namespaces: Vec<String>,
    pub shutdown: CancellationToken,
}

/// The state argument of every handler.
pub(crate) type S = State<Arc<AppState>>;

/// Every route of the API: one `.merge(…)` per resource file.
fn router(state: Arc<AppState>) -> Router {
    let (router, api) = api().split_for_parts();
    let doc = ops::Document(openapi::document(&api).to_string().into());
    router
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            live::intercept,
        ))
        .layer(Extension(doc))
        .layer(middleware::from_fn(session::csrf))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ops::count_requests,
        ))
        .with_state(state)
}

/// The routes with their OpenAPI document: one `.merge(…)` per resource file.
fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .merge(runs::router())
        .merge(events::router())
        .merge(bulk::router())
        .merge(approval_router())
        .merge(ops::router())
        .merge(session::router())
        .merge(catalog::router())
        .merge(live::router())
        .merge(web::router())
        .merge(openapi::documented(
            trigger::router(),
            openapi::trigger_paths(),
        ))
        .merge(openapi::documented(rerun::router(), openapi::rerun_paths()))
        .merge(openapi::documented(
            schedules::router(),
            openapi::schedules_paths(),
        ))
}

/// The approval routes (handlers in `approval.rs`).
fn approval_router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(approval::approve))
        .routes(routes!(approval::reject))
}

/// Serves the API until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on --addr {}", settings.addr))?;
    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (KUBECONFIG or in-cluster)")?;
    let store = settings
        .store
        .open_waiting(crate::events::Limits::default())
        .await?;
    if settings.auth == AuthMode::None {
        warn!(
            "--auth=none: every caller may read every run's events, stop any run and decide \
             any approval (as \"anonymous\"); for local development only, never expose this port"
        );
    }
    let shutdown = CancellationToken::new();
    let mut stores = Vec::new();
    let mut watches = Vec::new();
    let changes = Arc::new(live::Changes::default());
    for api in crate::watch::apis::<WorkflowRun>(&client, &settings.namespaces) {
        let (reader, writer) = reflector::store();
        stores.push(reader);
        let changes = changes.clone();
        watches.push(tokio::spawn(
            watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .reflect(writer)
                .for_each(move |r| {
                    match r {
                        Ok(ev) => changes.publish(&ev),
                        Err(e) => warn!(error = %e, "watching WorkflowRuns failed; retrying"),
                    }
                    std::future::ready(())
                }),
        ));
    }
    let state = Arc::new(AppState {
        hub: hub::Hub::new(store.clone()),
        runs: crate::watch::Stores(stores),
        changes,
        auth: auth::Auth::new(settings.auth, client.clone()),
        client,
        metrics: metrics::ApiMetrics::new(),
        namespaces: settings.namespaces.clone(),
        shutdown: shutdown.clone(),
    });
    let app = router(state.clone());
    let addr = listener.local_addr()?;
    info!(%addr, event_store = store.describe(), auth = ?settings.auth, "devset api listening");
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        stop.cancel();
    });
    // No Nagle: an SSE event goes out when written, not when the previous one is acknowledged.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    for w in watches {
        w.abort();
    }
    info!("devset api stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
