//! Signing in to the web page, and the CSRF rule of the sign-in cookie.
//!
//! `POST /api/v1/session` with `{"token": "…"}` (a Kubernetes token, e.g. from
//! `kubectl create token`) checks the token with a TokenReview and keeps it in the cookie
//! `devset_session`: `HttpOnly` (page scripts cannot read it), `SameSite=Strict`, `Path=/`, and
//! `Secure` behind HTTPS (`X-Forwarded-Proto: https`). The token never goes into a URL.
//! `GET /api/v1/session` says who is signed in; `DELETE /api/v1/session` clears the cookie.
//!
//! Every route takes the token from `Authorization: Bearer` (the CLI, other systems) or, failing
//! that, from the cookie (the page). A request authenticated by the cookie with a method other
//! than GET, HEAD or OPTIONS must carry `X-Devset-Csrf: 1`, else 403: another site cannot send a
//! custom header without a CORS preflight, which this API never allows (and `SameSite=Strict`
//! keeps the cookie off cross-site requests in the first place). The session routes that change
//! something ask for the header in any case.

use super::{AppState, S, auth::bearer, create, error::ApiError};
use axum::{
    Json,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The sign-in cookie's name.
pub const COOKIE: &str = "devset_session";
/// The header a cookie-authenticated unsafe request must carry, with the value `1`.
pub const CSRF_HEADER: &str = "x-devset-csrf";

pub(super) fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(get_session, sign_in, sign_out))
}

/// Where a request's token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `Authorization: Bearer TOKEN`.
    Bearer,
    /// The `devset_session` cookie.
    Cookie,
}

/// The caller's token: the bearer token, else the sign-in cookie's.
pub fn token(headers: &HeaderMap) -> Option<(&str, Source)> {
    bearer(headers)
        .map(|t| (t, Source::Bearer))
        .or_else(|| cookie(headers, COOKIE).map(|t| (t, Source::Cookie)))
}

/// The value of the cookie `name` in the `Cookie` headers (the first non-empty one).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| n.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
        .find(|v| !v.is_empty())
}

/// Whether `headers` carry `X-Devset-Csrf: 1`.
fn has_csrf_header(headers: &HeaderMap) -> bool {
    headers
        .get(CSRF_HEADER)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
}

fn csrf_refused(why: &str) -> ApiError {
    ApiError::forbidden(format!(
        "cross-site request refused: {why} must carry the header X-Devset-Csrf: 1"
    ))
}

/// The CSRF rule: a request authenticated by the cookie (no bearer token) with a method other
/// than GET, HEAD or OPTIONS needs `X-Devset-Csrf: 1`.
fn csrf_refusal(method: &Method, headers: &HeaderMap) -> Option<ApiError> {
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS].contains(method);
    let by_cookie = matches!(token(headers), Some((_, Source::Cookie)));
    (!safe && by_cookie && !has_csrf_header(headers)).then(|| {
        csrf_refused(&format!(
            "a {method} signed in with the {COOKIE} cookie (not an Authorization header)"
        ))
    })
}

/// The CSRF rule, as a middleware in front of every route.
pub(super) async fn csrf(req: Request, next: Next) -> Response {
    match csrf_refusal(req.method(), req.headers()) {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    }
}

/// Who is signed in.
#[derive(Serialize, schemars::JsonSchema, Debug, PartialEq)]
pub struct Session {
    /// The user name (`anonymous` with `--auth=none`).
    pub user: String,
    pub groups: Vec<String>,
    /// `kubernetes` (tokens are checked), or `none` (`--auth=none`: no sign-in).
    pub auth: &'static str,
}

/// The body of `POST /api/v1/session`.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)] // documentation only: the body is read field by field
pub struct SignIn {
    /// A Kubernetes token, e.g. from `kubectl create token`.
    pub token: String,
}

fn anonymous() -> Session {
    Session {
        user: "anonymous".into(),
        groups: Vec::new(),
        auth: "none",
    }
}

fn session_of(user: &k8s_openapi::api::authentication::v1::UserInfo) -> Session {
    Session {
        user: user.username.clone().unwrap_or_default(),
        groups: user.groups.clone().unwrap_or_default(),
        auth: "kubernetes",
    }
}

/// Whether `token` can be a cookie value as it is (RFC 6265 cookie-octets).
fn cookie_safe(token: &str) -> bool {
    token
        .bytes()
        .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

/// The `Set-Cookie` value that keeps `token` (or, with `None`, clears the cookie).
fn set_cookie(token: Option<&str>, secure: bool) -> String {
    let mut c = match token {
        Some(t) => format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    };
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// Whether the page was reached over HTTPS (through a proxy that says so).
fn behind_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn with_cookie(mut res: Response, cookie: String) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// Who is signed in: the cookie's or the bearer token's user.
#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    responses((status = 200, body = Session, description = "Signed in (always, with --auth=none)")))]
async fn get_session(State(state): S, headers: HeaderMap) -> Result<Json<Session>, ApiError> {
    if !state.auth.checks() {
        return Ok(Json(anonymous()));
    }
    let caller = state.auth.caller(&headers).await?;
    Ok(Json(session_of(&caller.user)))
}

/// Signs in: checks the token (TokenReview) and keeps it in the `HttpOnly` cookie
/// `devset_session`.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", security(()),
    params(("X-Devset-Csrf" = String, Header, description = "Must be 1")),
    request_body(content = SignIn, content_type = "application/json"),
    responses((status = 200, body = Session,
            description = "Signed in; Set-Cookie: devset_session=TOKEN; Path=/; HttpOnly; SameSite=Strict"),
        (status = 400, description = "A body that is not {\"token\": \"...\"}"),
        (status = 401, description = "The token is not valid"),
        (status = 403, description = "No X-Devset-Csrf: 1 header"),
        (status = 413, description = "A body over 64 KiB")))]
async fn sign_in(State(state): S, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    if !has_csrf_header(&headers) {
        return Err(csrf_refused("signing in"));
    }
    let bytes = create::read_body(body).await?;
    let m = create::json_object(&bytes)?;
    create::only_fields(&m, &["token"])?;
    let token = create::string_field(&m, "token")?
        .ok_or_else(|| ApiError::bad_request("token is required"))?;
    let token = token.trim();
    if !state.auth.checks() {
        return Ok(Json(anonymous()).into_response());
    }
    if !cookie_safe(token) {
        return Err(ApiError::bad_request(
            "the token holds characters a cookie cannot carry (spaces, quotes, ';', ',' or '\\'); \
             paste the token alone",
        ));
    }
    let user = state
        .auth
        .review(token)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the token is not valid"))?;
    let session = session_of(&user);
    tracing::info!(user = %session.user, "signed in to the web page");
    let cookie = set_cookie(Some(token), behind_https(&headers));
    Ok(with_cookie(Json(session).into_response(), cookie))
}

/// Signs out: clears the cookie.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session", security(()),
    params(("X-Devset-Csrf" = String, Header, description = "Must be 1")),
    responses((status = 204, description = "The cookie is cleared"),
        (status = 403, description = "No X-Devset-Csrf: 1 header")))]
async fn sign_out(headers: HeaderMap) -> Result<Response, ApiError> {
    if !has_csrf_header(&headers) {
        return Err(csrf_refused("signing out"));
    }
    let cookie = set_cookie(None, behind_https(&headers));
    Ok(with_cookie(StatusCode::NO_CONTENT.into_response(), cookie))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_else_the_cookie() {
        assert_eq!(token(&HeaderMap::new()), None);
        let h = headers(&[("cookie", "theme=dark; devset_session=abc.def-_1; other=x")]);
        assert_eq!(token(&h), Some(("abc.def-_1", Source::Cookie)));
        let h = headers(&[
            ("cookie", "devset_session=from-cookie"),
            ("authorization", "Bearer from-header"),
        ]);
        assert_eq!(token(&h), Some(("from-header", Source::Bearer)));
        // Several Cookie headers, a quoted value, an empty one first, a look-alike name.
        let h = headers(&[
            ("cookie", "devset_session=; xdevset_session=no"),
            ("cookie", "devset_session=\"q.v\""),
        ]);
        assert_eq!(token(&h), Some(("q.v", Source::Cookie)));
        let h = headers(&[("cookie", "devset_sessionx=no; a=b")]);
        assert_eq!(token(&h), None);
        // A Basic header is not a token: the cookie still counts.
        let h = headers(&[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("cookie", "devset_session=t"),
        ]);
        assert_eq!(token(&h), Some(("t", Source::Cookie)));
    }

    #[test]
    fn unsafe_methods_signed_in_by_cookie_need_the_csrf_header() {
        let cookie = ("cookie", "devset_session=t");
        let refused = |m: Method, h: &[(&'static str, &str)]| {
            csrf_refusal(&m, &headers(h)).map(|e| (e.code, e.message))
        };
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert_eq!(refused(m, &[cookie]), None);
        }
        for m in [Method::POST, Method::DELETE, Method::PUT, Method::PATCH] {
            let (code, msg) = refused(m.clone(), &[cookie]).expect("refused");
            assert_eq!(code, StatusCode::FORBIDDEN);
            assert!(msg.starts_with("cross-site request refused: "), "{msg}");
            assert!(msg.contains("X-Devset-Csrf: 1"), "{msg}");
            assert_eq!(refused(m.clone(), &[cookie, (CSRF_HEADER, "1")]), None);
            assert!(refused(m.clone(), &[cookie, (CSRF_HEADER, "0")]).is_some());
            // A bearer token is not sent by a browser on its own: no CSRF rule.
            assert_eq!(
                refused(m.clone(), &[cookie, ("authorization", "Bearer b")]),
                None
            );
            // No credentials at all: the route answers 401 itself.
            assert_eq!(refused(m, &[]), None);
        }
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_https() {
        assert_eq!(
            set_cookie(Some("a.b"), false),
            "devset_session=a.b; Path=/; HttpOnly; SameSite=Strict"
        );
        assert_eq!(
            set_cookie(Some("a.b"), true),
            "devset_session=a.b; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        let cleared = set_cookie(None, false);
        assert!(cleared.starts_with("devset_session=;"), "{cleared}");
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
        assert!(behind_https(&headers(&[("x-forwarded-proto", "HTTPS")])));
        assert!(!behind_https(&headers(&[("x-forwarded-proto", "http")])));
        assert!(cookie_safe(
            "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiYSJdfQ.sig-_A"
        ));
        for bad in ["a b", "a;b", "a,b", "a\"b", "a\\b", "é"] {
            assert!(!cookie_safe(bad), "{bad}");
        }
    }
}
