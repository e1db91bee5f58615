//! The web page: the bundle in `web/dist/` (built from `web/` and committed), embedded in the
//! binary, so that `cargo build` alone gives a `devset api` that serves it, with nothing fetched
//! at run time.
//!
//! - `GET /` redirects (302) to `/runs` (keeping the query, e.g. `?namespace=…`);
//! - `GET /runs`, `/runs/{namespace}/{name}`, `/schedules`, `/signin` answer `index.html`
//!   (the page routes itself), `Cache-Control: no-cache`;
//! - `GET /assets/{file}` answers the file with its MIME type, cached for a year as immutable
//!   (their names carry a hash of their content); an unknown file is 404.
//!
//! Every answer here carries the Content-Security-Policy [`CSP`] (only this origin; no
//! framing), `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`. The page
//! needs no sign-in to load: it asks `GET /api/v1/session` and shows the sign-in when that
//! answers 401.

use super::AppState;
use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, Uri, header},
    middleware::map_response,
    response::{IntoResponse, Response},
};
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The built page, embedded (also in debug builds: feature `debug-embed`).
#[derive(rust_embed::RustEmbed)]
#[folder = "web/dist/"]
struct Dist;

/// The Content-Security-Policy of every answer of the page.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
    connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
/// How long browsers keep an asset (its name changes with its content).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

pub(super) fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(root))
        .routes(routes!(runs_page))
        .routes(routes!(run_page))
        .routes(routes!(schedules_page))
        .routes(routes!(signin_page))
        .routes(routes!(asset))
        .layer(map_response(security_headers))
}

/// Adds the security headers to an answer of the page.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{what} is not part of the web page\n"),
    )
        .into_response()
}

/// `index.html`, which routes the page in the browser.
fn index() -> Response {
    match Dist::get("index.html") {
        Some(f) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            f.data,
        )
            .into_response(),
        None => not_found("index.html (the build of web/ is missing)"),
    }
}

/// Where `/` sends the browser: `/runs`, with the query.
fn runs_location(uri: &Uri) -> String {
    match uri.query() {
        Some(q) if !q.is_empty() => format!("/runs?{q}"),
        _ => "/runs".to_owned(),
    }
}

/// Opens the Runs page.
#[utoipa::path(get, path = "/", tag = "web", security(()),
    responses((status = 302, description = "To /runs")))]
async fn root(uri: Uri) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, runs_location(&uri))]).into_response()
}

/// The Runs page.
#[utoipa::path(get, path = "/runs", tag = "web", security(()),
    responses((status = 200, description = "The web page", content_type = "text/html")))]
async fn runs_page() -> Response {
    index()
}

/// A run's page.
#[utoipa::path(get, path = "/runs/{namespace}/{name}", tag = "web", security(()),
    params(("namespace" = String, Path, description = "The run's namespace"),
        ("name" = String, Path, description = "The run's name")),
    responses((status = 200, description = "The web page", content_type = "text/html")))]
async fn run_page() -> Response {
    index()
}

/// The Schedules page.
#[utoipa::path(get, path = "/schedules", tag = "web", security(()),
    responses((status = 200, description = "The web page", content_type = "text/html")))]
async fn schedules_page() -> Response {
    index()
}

/// The sign-in page.
#[utoipa::path(get, path = "/signin", tag = "web", security(()),
    responses((status = 200, description = "The web page", content_type = "text/html")))]
async fn signin_page() -> Response {
    index()
}

/// A file of the page's bundle (script, style sheet, image).
#[utoipa::path(get, path = "/assets/{file}", tag = "web", security(()),
    params(("file" = String, Path, description = "The file's name")),
    responses((status = 200, description = "The file, with its MIME type"),
        (status = 404, description = "No such file", content_type = "text/plain")))]
async fn asset(Path(file): Path<String>) -> Response {
    let found = (!file.contains(['/', '\\']))
        .then(|| Dist::get(&format!("assets/{file}")))
        .flatten();
    match found {
        Some(f) => {
            let mime = f.metadata.mimetype().to_owned();
            (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, IMMUTABLE.to_owned()),
                ],
                f.data,
            )
                .into_response()
        }
        None => not_found(&format!("/assets/{file}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(res: &Response, name: header::HeaderName) -> &str {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[test]
    fn the_root_keeps_the_query_on_its_way_to_runs() {
        assert_eq!(runs_location(&"/".parse().unwrap()), "/runs");
        assert_eq!(runs_location(&"/?".parse().unwrap()), "/runs");
        assert_eq!(
            runs_location(&"/?namespace=team-a".parse().unwrap()),
            "/runs?namespace=team-a"
        );
    }

    #[tokio::test]
    async fn pages_answer_the_embedded_index_and_assets_their_type() {
        for res in [
            runs_page().await,
            run_page().await,
            schedules_page().await,
            signin_page().await,
        ] {
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(header(&res, header::CACHE_CONTROL), "no-cache");
            assert!(header(&res, header::CONTENT_TYPE).starts_with("text/html"));
        }
        let res = root("/".parse().unwrap()).await;
        assert_eq!(res.status(), StatusCode::FOUND);
        assert_eq!(header(&res, header::LOCATION), "/runs");
        // Every asset of the bundle (the placeholder may have none).
        for path in Dist::iter().filter(|p| p.starts_with("assets/")) {
            let name = path.trim_start_matches("assets/").to_owned();
            let res = asset(Path(name)).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&res, header::CACHE_CONTROL), IMMUTABLE);
            let mime = header(&res, header::CONTENT_TYPE);
            if path.ends_with(".js") {
                assert_eq!(mime, "text/javascript", "{path}");
            }
            if path.ends_with(".css") {
                assert_eq!(mime, "text/css", "{path}");
            }
        }
        for missing in ["nope.js", "../index.html", "a\\b"] {
            let res = asset(Path(missing.into())).await;
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{missing}");
        }
        let res = security_headers(runs_page().await).await;
        assert_eq!(header(&res, header::CONTENT_SECURITY_POLICY), CSP);
        assert!(CSP.contains("default-src 'self'") && CSP.contains("frame-ancestors 'none'"));
        assert_eq!(header(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(header(&res, header::REFERRER_POLICY), "no-referrer");
    }
}
