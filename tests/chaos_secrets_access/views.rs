//! Scenario 12: what a user with rights only in another namespace sees.

use super::*;

/// The views of scenario 12's foreign user: how many were checked, and what leaked.
#[derive(Default)]
pub struct Views {
    pub checked: usize,
    pub leaks: Vec<String>,
}

impl Views {
    pub fn see(&mut self, ok: bool, what: impl Into<String>) {
        self.checked += 1;
        if !ok {
            self.leaks.push(what.into());
        }
    }
}

/// A request to the API with `token`: its status and body.
pub async fn ask(
    site: &Site,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut req = http()
        .request(method, site.api.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// An event stream of `path` asked with `token`.
async fn stream(site: &Site, path: &str, token: &str) -> reqwest::Response {
    http()
        .get(site.api.url(path))
        .bearer_auth(token)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap()
}

/// What the foreign user (rights in `b` only) sees of `a`'s runs in lists, exports, streams
/// and bulk actions; runs `late` in `a` and `b-late` in `b` are started while its run stream
/// is open.
pub async fn visibility(site: &Site, a: &str, b: &str, foreign: &str) -> (usize, Vec<String>) {
    let mut v = Views::default();
    let mentions_a = |text: &str| text.contains(&format!("\"{a}\""));
    let (code, text) = ask(site, Method::GET, "/api/v1/namespaces", foreign, None).await;
    v.see(
        code == 200 && text.contains(b) && !mentions_a(&text),
        format!("namespaces: {code} {text}"),
    );
    let (code, text) = ask(
        site,
        Method::GET,
        &format!("/api/v1/namespaces/{b}/workflowruns"),
        foreign,
        None,
    )
    .await;
    v.see(
        code == 200 && text.contains("b-done") && !mentions_a(&text),
        format!("runs of {b}: {code} {text}"),
    );
    for path in [
        format!("/api/v1/namespaces/{a}/workflowruns"),
        "/api/v1/workflowruns".to_owned(),
        format!("/api/v1/namespaces/{a}/workflowruns/done"),
        format!("/api/v1/namespaces/{a}/workflowruns/done/events?format=csv"),
    ] {
        let (code, text) = ask(site, Method::GET, &path, foreign, None).await;
        v.see(code == 403, format!("{path}: {code} {text}"));
    }
    let (code, text) = ask(
        site,
        Method::GET,
        &format!("/api/v1/namespaces/{a}/permissions"),
        foreign,
        None,
    )
    .await;
    let perms: Value = serde_json::from_str(&text).unwrap_or_default();
    let allowed = perms["actions"]
        .as_object()
        .map(|m| m.values().filter(|p| p["allowed"] != false).count());
    v.see(
        code == 200 && allowed == Some(0),
        format!("permissions in {a}: {code} {text}"),
    );
    for path in [
        format!("/api/v1/namespaces/{a}/workflowruns?name=done"),
        format!("/api/v1/namespaces/{a}/workflowruns"),
        format!("/api/v1/namespaces/{a}/workflowruns/done/events"),
        "/api/v1/workflowruns".to_owned(),
    ] {
        let res = stream(site, &path, foreign).await;
        v.see(
            res.status() == StatusCode::FORBIDDEN,
            format!("stream {path}: {}", res.status()),
        );
    }
    let both = json!([{"namespace": a, "name": "done"}, {"namespace": b, "name": "b-done"}]);
    let (code, text) = ask(
        site,
        Method::POST,
        "/api/v1/workflowruns:export",
        foreign,
        Some(json!({"runs": both})),
    )
    .await;
    let export: Value = serde_json::from_str(&text).unwrap_or_default();
    let items: Vec<&str> = export["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["namespace"].as_str())
        .collect();
    let refused = export["errors"][0]["status"] == 403 && export["errors"][0]["namespace"] == a;
    v.see(
        code == 200 && items == [b] && refused && !mentions_a(&export["items"].to_string()),
        format!("JSON export: {code} {text:.300}"),
    );
    let one =
        |ns: &str, run: &str| json!({"runs": [{"namespace": ns, "name": run}], "format": "csv"});
    let (code, text) = ask(
        site,
        Method::POST,
        "/api/v1/workflowruns:export",
        foreign,
        Some(one(a, "done")),
    )
    .await;
    v.see(
        code == 403 && !text.contains("run.phase"),
        format!("CSV export of {a}: {code} {text:.300}"),
    );
    let (code, text) = ask(
        site,
        Method::POST,
        "/api/v1/workflowruns:export",
        foreign,
        Some(one(b, "b-done")),
    )
    .await;
    let rows_ok = text.lines().skip(1).all(|l| l.starts_with(b));
    v.see(
        code == 200 && rows_ok && text.lines().count() > 1,
        format!("CSV export of {b}: {code}"),
    );
    for (action, run) in [("stop", "long"), ("delete", "done3")] {
        let body = json!({"runs": [{"namespace": a, "name": run}]});
        let (code, text) = ask(
            site,
            Method::POST,
            &format!("/api/v1/workflowruns:{action}"),
            foreign,
            Some(body),
        )
        .await;
        let item: Value = serde_json::from_str(&text).unwrap_or_default();
        v.see(
            code == 200 && item["items"][0]["status"] == 403,
            format!("bulk {action}: {code} {text}"),
        );
    }
    v.see(
        env().jsonpath(a, "workflowrun", "long", "{.spec.stop}") != "true",
        "the foreign bulk stop stopped the run",
    );
    v.see(
        !env()
            .jsonpath(a, "workflowrun", "done3", "{.metadata.name}")
            .is_empty(),
        "the foreign bulk delete deleted the run",
    );

    // The run stream of its own namespace, while runs start in both.
    let res = stream(
        site,
        &format!("/api/v1/namespaces/{b}/workflowruns"),
        foreign,
    )
    .await;
    v.see(
        res.status() == StatusCode::OK,
        format!("the run stream of {b}: {}", res.status()),
    );
    let reading = tokio::spawn(read_sse(res, 30 * Duration::from_secs(1), |_, e, d| {
        e == "ADDED" && d.contains("\"b-late\"")
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quick = publish_stage(&unique("access"), 5, 1_000, 8);
    apply_run(a, "late", "kafka", &quick);
    apply_run(b, "b-late", "kafka", &quick);
    let frames = reading.await.unwrap();
    let seen_late = frames
        .iter()
        .any(|f| f.1 == "ADDED" && f.2.contains("\"b-late\""));
    let leaked: Vec<&String> = frames
        .iter()
        .map(|f| &f.2)
        .filter(|d| mentions_a(d))
        .collect();
    v.see(
        seen_late && leaked.is_empty(),
        format!("the run stream of {b}: b-late seen {seen_late}, frames of {a}: {leaked:?}"),
    );
    (v.checked, v.leaks)
}
