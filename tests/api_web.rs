//! The routes of `devset api` that the web page uses, against the real API server (TokenReview,
//! SubjectAccessReview, RBAC): sign-in cookie and CSRF rule, the live run stream, what the page
//! lists, permissions with their reasons, the page itself, schedule suspend/resume. Runs and
//! schedules are created, deleted and read with kubectl (an independent client); tokens come
//! from `kubectl create token`.

mod common;

use common::{ApiProcess, ControllerProcess, TestNamespace, env, install_crds, sqlite_store};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

const MINUTE: Duration = Duration::from_secs(60);
const CSRF: &str = "x-devset-csrf";
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
    connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// A namespace with a Kafka connector and `devset api` (and, when asked, `devset controller`).
struct Setup {
    api: ApiProcess,
    _controller: Option<ControllerProcess>,
    ns: TestNamespace,
}

impl Setup {
    fn new(prefix: &str, controller: bool) -> Setup {
        install_crds();
        let ns = TestNamespace::new(prefix);
        let store = sqlite_store(&ns.name);
        let kafka = env().var("KAFKA_BOOTSTRAP");
        env().apply(
            &ns.name,
            &format!(
                "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: kafka}}\n\
                 spec: {{kafka: {{bootstrapServers: \"{kafka}\"}}}}\n"
            ),
        );
        let controller =
            controller.then(|| ControllerProcess::start_with_store(&ns.name, 10, 0, &store));
        let api = ApiProcess::start(&ns.name, &store, "kubernetes");
        Setup {
            api,
            _controller: controller,
            ns,
        }
    }

    /// The URL of `path` under `/api/v1/namespaces/NS`.
    fn ns_url(&self, path: &str) -> String {
        self.api
            .url(&format!("/api/v1/namespaces/{}{path}", self.ns.name))
    }

    /// Applies a Workflow `name` of one delay stage of `delay`, and runs of it named `runs`.
    fn delay_workflow(&self, name: &str, delay: &str, runs: &[&str]) {
        let mut yaml = format!(
            "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: {name}}}\n\
             spec: {{stages: [{{name: wait, delay: {{duration: {delay}}}}}]}}\n"
        );
        for run in runs {
            yaml.push_str(&format!(
                "---\napiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {run}}}\n\
                 spec: {{workflowRef: {{name: {name}}}, connectorRef: {{name: kafka}}}}\n"
            ));
        }
        env().apply(&self.ns.name, &yaml);
    }
}

/// A ServiceAccount of `ns` with a Role of `verbs` on `resource` per grant; its token.
fn account(ns: &str, name: &str, grants: &[(&str, &str)]) -> String {
    env().kubectl_ok(&["-n", ns, "create", "serviceaccount", name]);
    for (i, (verbs, resource)) in grants.iter().enumerate() {
        let role = format!("{name}-{i}");
        env().kubectl_ok(&[
            "-n",
            ns,
            "create",
            "role",
            &role,
            &format!("--verb={verbs}"),
            &format!("--resource={resource}"),
        ]);
        env().kubectl_ok(&[
            "-n",
            ns,
            "create",
            "rolebinding",
            &role,
            &format!("--role={role}"),
            &format!("--serviceaccount={ns}:{name}"),
        ]);
    }
    env()
        .kubectl_ok(&["-n", ns, "create", "token", name])
        .trim()
        .to_owned()
}

/// A client that follows no redirect and keeps no cookie (the tests send them by hand).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn header_of(res: &reqwest::Response, name: header::HeaderName) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Sends a request; the status code and the JSON body of the answer.
async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let res = req.send().await.unwrap();
    let code = res.status();
    (code, res.json().await.unwrap_or(Value::Null))
}

/// Asserts a 403 of the CSRF rule.
fn assert_cross_site_refused((code, body): (StatusCode, Value)) {
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("cross-site request refused: "),
        "{body}"
    );
}

/// The events of an SSE stream, as (event, data) pairs, through a channel.
type Events = mpsc::UnboundedReceiver<(String, Value)>;

/// Opens an SSE stream; its status, and its events when it is 200.
async fn open_stream(url: &str, token: &str) -> (StatusCode, Events) {
    let res = http()
        .get(url)
        .bearer_auth(token)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    let status = res.status();
    let (tx, rx) = mpsc::unbounded_channel();
    if status == StatusCode::OK {
        assert_eq!(header_of(&res, header::CONTENT_TYPE), "text/event-stream");
        tokio::spawn(async move {
            let mut events = res.bytes_stream().eventsource();
            while let Some(Ok(ev)) = events.next().await {
                let data = serde_json::from_str(&ev.data).expect("data is JSON");
                if tx.send((ev.event, data)).is_err() {
                    return;
                }
            }
        });
    }
    (status, rx)
}

/// Reads events until one matches; the events read, the match last.
async fn read_until(
    events: &mut Events,
    what: &str,
    matches: impl Fn(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + 2 * MINUTE;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within 2 minutes; got {got:?}"))
            .unwrap_or_else(|| panic!("the stream ended before {what}; got {got:?}"));
        let hit = matches(&ev.0, &ev.1);
        got.push(ev);
        if hit {
            return got;
        }
    }
}

fn is(event: &'static str, run: &'static str) -> impl Fn(&str, &Value) -> bool {
    move |e, d| e == event && d["name"] == run
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn sign_in_sets_an_http_only_strict_cookie_and_cookie_posts_need_the_csrf_header() {
    let s = Setup::new("web-signin", false);
    let ns = s.ns.name.clone();
    let token = account(
        &ns,
        "operator",
        &[("get,list,patch", "workflowruns.devset.io")],
    );
    s.delay_workflow("hold", "1h", &["held"]);
    let client = http();
    let session = s.api.url("/api/v1/session");
    let sign_in = |token: &str| {
        client
            .post(&session)
            .json(&json!({ "token": token }))
            .header(CSRF, "1")
    };

    // A wrong token is refused with a message; so is a sign-in without the CSRF header.
    let (code, body) = send(sign_in("not-a-token")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["message"], "the token is not valid");
    let no_csrf = client.post(&session).json(&json!({ "token": token }));
    assert_cross_site_refused(send(no_csrf).await);

    // Signed in: the cookie holds the token, HttpOnly and SameSite=Strict (Secure behind HTTPS).
    let res = sign_in(&token).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let set_cookie = header_of(&res, header::SET_COOKIE);
    let body: Value = res.json().await.unwrap();
    let user = format!("system:serviceaccount:{ns}:operator");
    assert_eq!(body["user"], user.as_str());
    assert_eq!(body["auth"], "kubernetes");
    let parts: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    assert_eq!(parts[0], format!("devset_session={token}"));
    for p in ["Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(parts.contains(&p), "{p} in {set_cookie}");
    }
    assert!(!parts.contains(&"Secure"), "{set_cookie}");
    let res = sign_in(&token)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(header_of(&res, header::SET_COOKIE).ends_with("; Secure"));

    // The cookie authenticates; without it, 401.
    let cookie = format!("devset_session={token}");
    let with_cookie = |req: reqwest::RequestBuilder| req.header(header::COOKIE, &cookie);
    let (code, body) = send(with_cookie(client.get(&session))).await;
    assert_eq!(
        (code, body["user"].as_str()),
        (StatusCode::OK, Some(&*user))
    );
    let (code, _) = send(client.get(&session)).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let namespaces = with_cookie(client.get(s.api.url("/api/v1/namespaces")));
    assert_eq!(
        send(namespaces).await,
        (StatusCode::OK, json!({ "items": [ns] }))
    );

    // A POST authenticated by the cookie without X-Devset-Csrf is refused; the run is untouched.
    let stop = s.ns_url("/workflowruns/held/stop");
    assert_cross_site_refused(send(with_cookie(client.post(&stop))).await);
    let spec_stop = || env().jsonpath(&ns, "workflowrun", "held", "{.spec.stop}");
    assert_eq!(spec_stop(), "");
    let (code, body) = send(with_cookie(client.post(&stop)).header(CSRF, "1")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(spec_stop(), "true");

    // Signing out clears the cookie.
    let res = with_cookie(client.delete(&session))
        .header(CSRF, "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let cleared = header_of(&res, header::SET_COOKIE);
    assert!(
        cleared.starts_with("devset_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn the_run_stream_sends_added_synced_then_modified_and_deleted() {
    let s = Setup::new("web-live", true);
    let ns = s.ns.name.clone();
    let token = account(&ns, "watcher", &[("get,list", "workflowruns.devset.io")]);
    let getter = account(&ns, "getter", &[("get", "workflowruns.devset.io")]);
    let list = s.ns_url("/workflowruns");
    let (code, _) = open_stream(&list, &getter).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "a stream needs list");
    // Once the API has seen the first run (on a first stream), a new stream's snapshot has it.
    s.delay_workflow("quick", "2s", &["first"]);
    let (_, mut events) = open_stream(&list, &token).await;
    read_until(&mut events, "ADDED first", is("ADDED", "first")).await;
    let (code, mut events) = open_stream(&list, &token).await;
    assert_eq!(code, StatusCode::OK);
    let snapshot = read_until(&mut events, "SYNCED", |e, _| e == "SYNCED").await;
    assert_eq!(snapshot.len(), 2, "{snapshot:?}");
    assert!(is("ADDED", "first")(&snapshot[0].0, &snapshot[0].1));
    assert_eq!(snapshot[0].1["namespace"], ns.as_str());
    assert_eq!(snapshot[0].1["workflow"], "quick");
    assert_eq!(snapshot[1].1, json!({}));

    // One run's stream (the run page's): `get` on it is enough, and it tells of that run only.
    let (code, mut one) = open_stream(&format!("{list}?name=second"), &getter).await;
    assert_eq!(code, StatusCode::OK, "a stream of one run needs get");
    let empty = read_until(&mut one, "SYNCED", |e, _| e == "SYNCED").await;
    assert_eq!(empty.len(), 1, "no run named second yet: {empty:?}");

    // Created, run and deleted by an independent client.
    s.delay_workflow("quick", "2s", &["second"]);
    let got = read_until(&mut one, "MODIFIED second, Completed", |e, d| {
        e == "MODIFIED" && d["phase"] == "Completed"
    })
    .await;
    assert!(
        got.iter().all(|(_, d)| d["name"] == "second"),
        "only the second run: {got:?}"
    );
    read_until(&mut events, "ADDED second", is("ADDED", "second")).await;
    read_until(&mut events, "MODIFIED second, Completed", |e, d| {
        e == "MODIFIED" && d["name"] == "second" && d["phase"] == "Completed"
    })
    .await;
    env().kubectl_ok(&["-n", &ns, "delete", "workflowrun", "second"]);
    let got = read_until(&mut events, "DELETED second", is("DELETED", "second")).await;
    assert!(
        got.iter()
            .all(|(e, d)| d["name"] == "second" && e != "ADDED"),
        "only changes of the second run: {got:?}"
    );
    assert_eq!(got.last().unwrap().1["namespace"], ns.as_str());

    // All namespaces (this API serves one): the snapshot has the first run only now.
    let all = s.api.url("/api/v1/workflowruns");
    let (code, mut events) = open_stream(&all, &token).await;
    assert_eq!(code, StatusCode::OK);
    let snapshot = read_until(&mut events, "SYNCED", |e, _| e == "SYNCED").await;
    let names: Vec<_> = snapshot
        .iter()
        .map(|(e, d)| (e.as_str(), &d["name"]))
        .collect();
    assert_eq!(
        names,
        [("ADDED", &json!("first")), ("SYNCED", &Value::Null)],
        "{snapshot:?}"
    );
    let (code, body) = send(http().get(&all).bearer_auth(&token)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["items"][0]["phase"], "Completed");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn the_page_lists_workflows_with_params_connectors_and_permissions_with_reasons() {
    let s = Setup::new("web-catalog", false);
    let ns = s.ns.name.clone();
    env().apply(
        &ns,
        "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: orders}\n\
         spec:\n  description: Orders to Kafka\n  params:\n\
         \x20   - {name: count, type: integer, default: 5}\n\
         \x20   - {name: region, required: true, description: Where the orders come from}\n\
         \x20 stages:\n\
         \x20   - {name: publish, publish: {topic: orders, count: 1}}\n\
         \x20   - {name: check, approval: {message: 'ship it?'}}\n\
         \x20   - {name: cool, dependsOn: [publish], delay: {duration: 1s}}\n",
    );
    let reader = account(
        &ns,
        "reader",
        &[
            ("get,list", "workflowruns.devset.io"),
            ("list", "workflows.devset.io"),
            ("list", "brokerconnectors.devset.io"),
        ],
    );
    let nobody = account(&ns, "nobody", &[]);
    let client = http();
    let get = |path: &str, token: &str| client.get(s.ns_url(path)).bearer_auth(token);

    let (code, body) = send(get("/workflows", &reader)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"items": [{
            "name": "orders",
            "description": "Orders to Kafka",
            "params": [
                {"name": "count", "type": "integer", "default": 5, "required": false},
                {"name": "region", "type": "string", "required": true,
                 "description": "Where the orders come from"},
            ],
            "stages": [
                {"name": "publish", "kind": "publish", "dependsOn": []},
                {"name": "check", "kind": "approval", "dependsOn": ["publish"]},
                {"name": "cool", "kind": "delay", "dependsOn": ["publish"]},
            ],
        }]})
    );
    let (code, body) = send(get("/workflows", &nobody)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cannot list workflows.devset.io"),
        "{body}"
    );
    let (code, body) = send(get("/brokerconnectors", &reader)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"items": [{"name": "kafka", "type": "kafka"}]}));

    // A get/list-only user: the actions that change things are not allowed, each with why.
    let (code, body) = send(get("/permissions", &reader)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let user = format!("system:serviceaccount:{ns}:reader");
    assert_eq!(body["user"], user.as_str());
    let actions = &body["actions"];
    assert_eq!(actions["export"], json!({"allowed": true}));
    for (action, verb, resource) in [
        ("stop", "patch", "workflowruns"),
        ("delete", "delete", "workflowruns"),
        ("approve", "approve", "workflowruns"),
        ("create", "create", "workflowruns"),
        ("fire", "create", "workflowruns"),
        ("suspend", "patch", "workflowschedules"),
    ] {
        assert_eq!(actions[action]["allowed"], false, "{action}: {body}");
        let reason = actions[action]["reason"].as_str().unwrap_or_default();
        let expected =
            format!("{user} cannot {verb} {resource}.devset.io in the namespace \"{ns}\"");
        assert!(reason.starts_with(&expected), "{action}: {reason}");
    }
    // Namespaces: only where the caller may list runs.
    for (token, items) in [(&reader, json!([ns])), (&nobody, json!([]))] {
        let req = client
            .get(s.api.url("/api/v1/namespaces"))
            .bearer_auth(token);
        assert_eq!(send(req).await, (StatusCode::OK, json!({ "items": items })));
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn suspend_and_resume_flip_spec_suspend() {
    let s = Setup::new("web-sched", false);
    let ns = s.ns.name.clone();
    s.delay_workflow("nightly-work", "1s", &[]);
    env().apply(
        &ns,
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowSchedule\nmetadata: {name: nightly}\n\
         spec:\n  schedule: '0 3 * * *'\n  runTemplate:\n    \
         spec: {workflowRef: {name: nightly-work}, connectorRef: {name: kafka}}\n",
    );
    let operator = account(
        &ns,
        "scheduler",
        &[("get,list,patch", "workflowschedules.devset.io")],
    );
    let viewer = account(
        &ns,
        "viewer",
        &[("get,list", "workflowschedules.devset.io")],
    );
    let client = http();
    let post = |what: &str, token: &str| {
        client
            .post(s.ns_url(&format!("/workflowschedules/nightly/{what}")))
            .bearer_auth(token)
    };
    let suspended = || env().jsonpath(&ns, "workflowschedule", "nightly", "{.spec.suspend}");

    let (code, body) = send(post("suspend", &viewer)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cannot patch workflowschedules.devset.io \"nightly\""),
        "{body}"
    );
    assert_ne!(suspended(), "true");
    let (code, body) = send(post("suspend", &operator)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["name"], &body["suspend"]),
        (&json!("nightly"), &json!(true))
    );
    assert_eq!(suspended(), "true");
    let (code, body) = send(post("resume", &operator)).await;
    assert_eq!((code, &body["suspend"]), (StatusCode::OK, &json!(false)));
    assert_eq!(suspended(), "false");
    let res = client
        .post(s.ns_url("/workflowschedules/absent/suspend"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn the_page_is_served_with_its_security_headers_and_auth_none_needs_no_sign_in() {
    install_crds();
    let ns = TestNamespace::new("web-page");
    let api = ApiProcess::start(&ns.name, &sqlite_store(&ns.name), "none");
    let client = http();
    let res = client.get(api.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(header_of(&res, header::LOCATION), "/runs");
    for path in ["/runs", "/runs/team-a/orders-1", "/schedules", "/signin"] {
        let res = client.get(api.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(header_of(&res, header::CONTENT_SECURITY_POLICY), CSP);
        assert_eq!(header_of(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(header_of(&res, header::REFERRER_POLICY), "no-referrer");
        assert_eq!(header_of(&res, header::CACHE_CONTROL), "no-cache");
        assert!(header_of(&res, header::CONTENT_TYPE).starts_with("text/html"));
        let html = res.text().await.unwrap();
        assert!(html.to_lowercase().contains("<html"), "{path}: {html}");
        // Nothing from another origin.
        assert!(
            !html.contains("src=\"http") && !html.contains("href=\"http"),
            "{html}"
        );
    }
    // Every asset index.html names is served with its type, cached as immutable.
    let html = client.get(api.url("/runs")).send().await.unwrap();
    let html = html.text().await.unwrap();
    let assets: Vec<&str> = html
        .split('"')
        .filter(|p| p.starts_with("/assets/"))
        .collect();
    assert!(!assets.is_empty(), "index.html names its script: {html}");
    for asset in assets {
        let res = client.get(api.url(asset)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{asset}");
        assert_eq!(
            header_of(&res, header::CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(header_of(&res, header::CONTENT_SECURITY_POLICY), CSP);
        let mime = header_of(&res, header::CONTENT_TYPE);
        for (ext, want) in [(".js", "text/javascript"), (".css", "text/css")] {
            if asset.ends_with(ext) {
                assert_eq!(mime, want, "{asset}");
            }
        }
        assert!(!res.bytes().await.unwrap().is_empty(), "{asset}");
    }
    let res = client
        .get(api.url("/assets/absent.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // With --auth=none the page is signed in as anonymous.
    assert_eq!(
        send(client.get(api.url("/api/v1/session"))).await,
        (
            StatusCode::OK,
            json!({"user": "anonymous", "groups": [], "auth": "none"})
        )
    );
}
