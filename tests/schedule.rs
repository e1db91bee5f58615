//! WorkflowSchedule against the real API server: `devset controller` fires runs at the schedule's
//! times (a real `* * * * *` minute, and `@every 2s`-style schedules for the rest, to keep the
//! file under about a minute and a half), and `devset api` / `devset fire` fire one now. Outcomes
//! are read back with kubectl: the runs, their labels, annotations and owners, the schedule's
//! status and its Events. The runs are delay-only workflows, so no broker traffic is involved.

mod common;

use common::{
    ApiProcess, ControllerProcess, TestNamespace, env, install_crds,
    runs::{event_reasons, schedule_runs},
    sqlite_store, wait_until,
};
use jiff::Timestamp;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

const WORKFLOWS: &str = "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: quick}\n\
spec:\n  stages:\n  - {name: wait, delay: {duration: 100ms}}\n---\n\
apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: slow}\n\
spec:\n  stages:\n  - {name: wait, delay: {duration: 300s}}\n";

/// A namespace with the connectors, the workflows `quick` and `slow`, and a controller.
fn setup(prefix: &str) -> (TestNamespace, ControllerProcess) {
    install_crds();
    env().kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/workflowschedules.devset.io",
    ]);
    let ns = TestNamespace::new(prefix);
    env().apply(&ns.name, &env().connectors());
    env().apply(&ns.name, WORKFLOWS);
    let ctl = ControllerProcess::start(&ns.name, 10);
    (ns, ctl)
}

/// A WorkflowSchedule `name` running `workflow` at `schedule`, with more spec lines.
fn schedule(name: &str, schedule: &str, workflow: &str, extra: &str) -> String {
    format!(
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowSchedule\nmetadata: {{name: {name}}}\n\
         spec:\n  schedule: '{schedule}'\n{extra}  runTemplate:\n    \
         metadata: {{labels: {{team: payments}}}}\n    \
         spec: {{workflowRef: {{name: {workflow}}}, connectorRef: {{name: kafka}}}}\n"
    )
}

/// The runs of schedule `name`, oldest name first (names of one schedule sort by time).
fn runs_of(ns: &str, name: &str) -> Vec<String> {
    schedule_runs(ns, name)
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

fn status(ns: &str, name: &str, path: &str) -> String {
    env().jsonpath(ns, "workflowschedule", name, path)
}

fn ready(ns: &str, name: &str) -> (String, String) {
    (
        status(
            ns,
            name,
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        ),
        status(
            ns,
            name,
            "{.status.conditions[?(@.type==\"Ready\")].reason}",
        ),
    )
}

fn wait_for_event(ns: &str, name: &str, reason: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("an Event {reason} on {name}"),
        || {
            event_reasons(ns, name)
                .iter()
                .any(|r| r == reason)
                .then_some(())
        },
    );
}

fn run_json(ns: &str, run: &str) -> Value {
    let out = env().kubectl_ok(&["get", "workflowrun", run, "-n", ns, "-o", "json"]);
    serde_json::from_str(&out).unwrap()
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn every_minute_fires_once_at_the_minute_across_a_controller_restart() {
    let (ns, mut first) = setup("sched-minute");
    let ns = ns.name.clone();
    env().apply(&ns, &schedule("tick", "* * * * *", "quick", ""));
    let next: Timestamp = wait_until(Duration::from_secs(30), "nextScheduleTime", || {
        status(&ns, "tick", "{.status.nextScheduleTime}")
            .parse()
            .ok()
    });
    assert_eq!(next.as_second() % 60, 0, "{next} is on a minute");
    assert_eq!(ready(&ns, "tick"), ("True".into(), "Scheduled".into()));
    // The controller is down when the minute comes, and back two seconds after it.
    first.kill();
    let wait = next.duration_since(Timestamp::now()).as_secs_f64() + 2.0;
    std::thread::sleep(Duration::from_secs_f64(wait.max(0.0)));
    let second = ControllerProcess::start(&ns, 10);
    let name = format!("tick-{}", next.as_second() / 60);
    wait_until(Duration::from_secs(30), "the run of the minute", || {
        runs_of(&ns, "tick").contains(&name).then_some(())
    });
    let run = run_json(&ns, &name);
    let meta = &run["metadata"];
    assert_eq!(meta["labels"]["devset.io/schedule"], "tick");
    assert_eq!(meta["labels"]["team"], "payments");
    assert_eq!(
        meta["annotations"]["devset.io/triggered-by"],
        "schedule/tick"
    );
    assert_eq!(
        meta["annotations"]["devset.io/scheduled-at"],
        next.to_string()
    );
    assert_eq!(meta["ownerReferences"][0]["kind"], "WorkflowSchedule");
    assert_eq!(meta["ownerReferences"][0]["name"], "tick");
    assert_eq!(meta["ownerReferences"][0]["controller"], true);
    wait_until(Duration::from_secs(20), "lastScheduleTime", || {
        (status(&ns, "tick", "{.status.lastScheduleTime}") == next.to_string()).then_some(())
    });
    assert_eq!(status(&ns, "tick", "{.status.lastRunName}"), name);
    // Another restart within the same minute fires nothing more.
    drop(second);
    let _third = ControllerProcess::start(&ns, 10);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        Timestamp::now().as_second() < next.as_second() + 58,
        "the test ran into the next minute"
    );
    assert_eq!(runs_of(&ns, "tick"), std::slice::from_ref(&name));
    let following: Timestamp = status(&ns, "tick", "{.status.nextScheduleTime}")
        .parse()
        .unwrap();
    assert_eq!(following.as_second(), next.as_second() + 60);
    wait_until(Duration::from_secs(30), "the run to complete", || {
        (env().jsonpath(&ns, "workflowrun", &name, "{.status.phase}") == "Completed").then_some(())
    });
    assert_eq!(
        event_reasons(&ns, "tick")
            .iter()
            .filter(|r| *r == "Fired")
            .count(),
        1
    );
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn forbid_skips_while_a_run_is_active_and_replace_stops_it() {
    let (ns, _ctl) = setup("sched-policy");
    let ns = ns.name.clone();
    env().apply(
        &ns,
        &schedule(
            "forbid",
            "@every 3s",
            "slow",
            "  concurrencyPolicy: Forbid\n",
        ),
    );
    env().apply(
        &ns,
        &schedule(
            "replace",
            "@every 4s",
            "slow",
            "  concurrencyPolicy: Replace\n",
        ),
    );
    // Forbid: the first run is still running at the next times, which are skipped.
    let first = wait_until(Duration::from_secs(20), "a run of forbid", || {
        runs_of(&ns, "forbid").first().cloned()
    });
    wait_for_event(&ns, "forbid", "Skipped");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(runs_of(&ns, "forbid"), std::slice::from_ref(&first));
    assert_eq!(status(&ns, "forbid", "{.status.active[*].name}"), first);
    // Replace: a second run comes, and the first one is stopped.
    let runs = wait_until(Duration::from_secs(20), "two runs of replace", || {
        let r = runs_of(&ns, "replace");
        (r.len() >= 2).then_some(r)
    });
    wait_for_event(&ns, "replace", "Replaced");
    assert_eq!(
        env().jsonpath(&ns, "workflowrun", &runs[0], "{.spec.stop}"),
        "true"
    );
    wait_until(Duration::from_secs(30), "the replaced run to stop", || {
        (env().jsonpath(&ns, "workflowrun", &runs[0], "{.status.phase}") == "Stopped").then_some(())
    });
    // In one snapshot, every run but the newest has been asked to stop (the stop is patched
    // before the new run is created).
    let list: Value = serde_json::from_str(&env().kubectl_ok(&[
        "get",
        "workflowruns",
        "-n",
        &ns,
        "-l",
        "devset.io/schedule=replace",
        "-o",
        "json",
    ]))
    .unwrap();
    let mut stops: Vec<(String, bool)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = r["metadata"]["name"].as_str().unwrap().to_owned();
            (name, r["spec"]["stop"] == true)
        })
        .collect();
    stops.sort();
    let (newest, older) = stops.split_last().unwrap();
    assert!(!newest.1, "the newest run runs on: {stops:?}");
    assert!(older.iter().all(|(_, stop)| *stop), "{stops:?}");
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn history_limits_suspend_end_at_and_bad_text() {
    let (ns, mut ctl) = setup("sched-life");
    let ns = ns.name.clone();
    let api = ApiProcess::start(&ns, &sqlite_store(&ns), "none");
    let end = Timestamp::now() + jiff::SignedDuration::from_secs(6);
    let manifests = [
        schedule(
            "hist",
            "@every 2s",
            "quick",
            "  successfulRunsHistoryLimit: 2\n",
        ),
        schedule("paused", "@every 2s", "quick", "  suspend: true\n"),
        schedule(
            "ending",
            "@every 2s",
            "quick",
            &format!("  endAt: '{end}'\n"),
        ),
        schedule("badcron", "0 0 9 * * MON", "quick", ""),
        schedule(
            "badtz",
            "@daily",
            "quick",
            "  timeZone: Mars/Olympus_Mons\n",
        ),
        schedule(&"long".repeat(16), "@every 2s", "quick", ""),
    ];
    env().apply(&ns, &manifests.join("---\n"));

    // Bad text: Ready False with the reason, an Event, and the controller keeps running.
    wait_until(Duration::from_secs(20), "badcron not ready", || {
        (ready(&ns, "badcron") == ("False".into(), "InvalidSchedule".into())).then_some(())
    });
    let msg = status(
        &ns,
        "badcron",
        "{.status.conditions[?(@.type==\"Ready\")].message}",
    );
    assert!(
        msg.contains("has 6 field(s); a cron schedule has 5"),
        "{msg}"
    );
    wait_until(Duration::from_secs(20), "badtz not ready", || {
        (ready(&ns, "badtz") == ("False".into(), "InvalidTimeZone".into())).then_some(())
    });
    wait_for_event(&ns, "badcron", "InvalidSchedule");
    // 64 characters: too long for the label its runs would carry.
    wait_until(Duration::from_secs(20), "a long name not ready", || {
        (ready(&ns, &"long".repeat(16)) == ("False".into(), "InvalidName".into())).then_some(())
    });
    assert!(runs_of(&ns, "badcron").is_empty() && runs_of(&ns, "badtz").is_empty());

    // History: the oldest completed runs go, with their event logs.
    let first = wait_until(Duration::from_secs(20), "a run of hist", || {
        runs_of(&ns, "hist").first().cloned()
    });
    let path = format!("/api/v1/namespaces/{ns}/workflowruns/{first}/events");
    wait_until(Duration::from_secs(10), "the first run's event log", || {
        matches!(common::http_get(api.port, &path), Ok((200, _))).then_some(())
    });
    wait_for_event(&ns, "hist", "DeletedRuns");
    wait_until(Duration::from_secs(20), "the first run deleted", || {
        (!runs_of(&ns, "hist").contains(&first)).then_some(())
    });
    wait_until(
        Duration::from_secs(20),
        "the first run's log removed",
        || matches!(common::http_get(api.port, &path), Ok((404, _))).then_some(()),
    );
    // A third completed run may be seen a moment before the controller deletes the oldest.
    wait_until(Duration::from_secs(10), "at most 2 completed runs", || {
        let completed = env()
            .kubectl_ok(&[
                "get",
                "workflowruns",
                "-n",
                &ns,
                "-l",
                "devset.io/schedule=hist",
                "-o",
                "jsonpath={.items[?(@.status.phase==\"Completed\")].metadata.name}",
            ])
            .split_whitespace()
            .count();
        (completed <= 2).then_some(())
    });

    // endAt: runs before it, none after; Ready says Ended.
    wait_until(Duration::from_secs(20), "ending to end", || {
        (ready(&ns, "ending") == ("True".into(), "Ended".into())).then_some(())
    });
    let fired = runs_of(&ns, "ending");
    assert!(!fired.is_empty());
    for r in &fired {
        let at: Timestamp = run_json(&ns, r)["metadata"]["annotations"]["devset.io/scheduled-at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(at < end, "{r} at {at} is not before endAt {end}");
    }
    assert_eq!(status(&ns, "ending", "{.status.nextScheduleTime}"), "");

    // Suspended: no run at all, no next time; resumed: runs come.
    assert!(runs_of(&ns, "paused").is_empty());
    assert_eq!(ready(&ns, "paused"), ("True".into(), "Suspended".into()));
    assert_eq!(status(&ns, "paused", "{.status.nextScheduleTime}"), "");
    env().kubectl_ok(&[
        "patch",
        "workflowschedule",
        "paused",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        "{\"spec\":{\"suspend\":false}}",
    ]);
    wait_until(
        Duration::from_secs(20),
        "a run of the resumed schedule",
        || (!runs_of(&ns, "paused").is_empty()).then_some(()),
    );
    assert_eq!(runs_of(&ns, "ending"), fired, "nothing after endAt");
    assert!(
        ctl.child.try_wait().unwrap().is_none(),
        "the controller keeps running"
    );
    assert!(!ctl.log_text().contains("panicked"));
    ctl.kill();
}

/// A ServiceAccount of `ns` with a Role of `verbs` on workflowruns there; its token.
fn account(ns: &str, name: &str, verbs: &[&str]) -> String {
    account_on(ns, name, "workflowruns", verbs)
}

/// A ServiceAccount of `ns` with a Role of `verbs` on `resource` there; its token.
fn account_on(ns: &str, name: &str, resource: &str, verbs: &[&str]) -> String {
    env().kubectl_ok(&["-n", ns, "create", "serviceaccount", name]);
    if !verbs.is_empty() {
        env().apply(
            ns,
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}}}\n\
                 rules:\n- apiGroups: [devset.io]\n  resources: [{resource}]\n  verbs: {verbs:?}\n\
                 ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
                 metadata: {{name: {name}}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\n\
                 subjects: [{{kind: ServiceAccount, name: {name}, namespace: {ns}}}]\n"
            ),
        );
    }
    env()
        .kubectl_ok(&["-n", ns, "create", "token", name, "--duration=1h"])
        .trim()
        .to_owned()
}

async fn post(url: &str, token: &str) -> (StatusCode, Value) {
    send(reqwest::Client::new().post(url), token).await
}

async fn get(url: &str, token: &str) -> (StatusCode, Value) {
    send(reqwest::Client::new().get(url), token).await
}

async fn send(mut req: reqwest::RequestBuilder, token: &str) -> (StatusCode, Value) {
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn fire_now_through_the_api_and_devset_fire() {
    install_crds();
    let ns = TestNamespace::new("sched-fire");
    let ns = ns.name.clone();
    env().apply(&ns, WORKFLOWS);
    // Suspended and yearly: every run here is one fired now.
    env().apply(
        &ns,
        &schedule("manual", "@yearly", "quick", "  suspend: true\n"),
    );
    let api = ApiProcess::start(&ns, &sqlite_store(&ns), "kubernetes");
    let url = |s: &str| {
        api.url(&format!(
            "/api/v1/namespaces/{ns}/workflowschedules/{s}/fire"
        ))
    };
    let reader = account(&ns, "reader", &["get", "list"]);
    let creator = account(&ns, "creator", &["create"]);

    let (code, body) = post(&url("manual"), "").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    let (code, body) = post(&url("manual"), "not-a-token").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    let (code, body) = post(&url("manual"), &reader).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("cannot create"),
        "{body}"
    );
    let (code, body) = post(&url("nope"), &creator).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("workflowschedules.devset.io \"nope\" not found"),
        "{body}"
    );
    assert!(runs_of(&ns, "manual").is_empty());

    let (code, body) = post(&url("manual"), &creator).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let name = body["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("manual-manual-"), "{name}");
    let run = run_json(&ns, &name);
    assert_eq!(run["metadata"]["labels"]["devset.io/schedule"], "manual");
    assert_eq!(
        run["metadata"]["annotations"]["devset.io/triggered-by"],
        format!("system:serviceaccount:{ns}:creator")
    );
    assert_eq!(run["metadata"]["ownerReferences"][0]["name"], "manual");
    assert_eq!(run["spec"]["workflowRef"]["name"], "quick");

    // The CLI, as the same account.
    let out = env()
        .command(env!("CARGO_BIN_EXE_devset"))
        .args([
            "fire",
            "manual",
            "-n",
            &ns,
            "--server",
            &api.url(""),
            "--token",
        ])
        .arg(&creator)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("workflowrun/manual-manual-")
            && stdout.contains("created from schedule \"manual\""),
        "{stdout}"
    );
    assert_eq!(runs_of(&ns, "manual").len(), 2);
    // As a kubectl plugin: `kubectl devset fire …`.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_devset"),
        bin.path().join("kubectl-devset"),
    )
    .unwrap();
    let path = env()
        .command("printenv")
        .arg("PATH")
        .output()
        .unwrap()
        .stdout;
    let path = format!(
        "{}:{}",
        bin.path().display(),
        String::from_utf8_lossy(&path).trim()
    );
    let out = env()
        .command("kubectl")
        .env("PATH", path)
        .args([
            "devset",
            "fire",
            "manual",
            "-n",
            &ns,
            "--server",
            &api.url(""),
            "--token",
        ])
        .arg(&creator)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(runs_of(&ns, "manual").len(), 3);
    let out = env()
        .command(env!("CARGO_BIN_EXE_devset"))
        .args([
            "fire",
            "nope",
            "-n",
            &ns,
            "--server",
            &api.url(""),
            "--token",
        ])
        .arg(&creator)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

    // Reading schedules: `list`/`get` on workflowschedules.
    let viewer = account_on(&ns, "viewer", "workflowschedules", &["get", "list"]);
    let list = api.url(&format!("/api/v1/namespaces/{ns}/workflowschedules"));
    let (code, body) = get(&list, &viewer).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let item = &body["items"][0];
    assert_eq!(item["name"], "manual", "{body}");
    assert_eq!(
        (&item["schedule"], &item["timeZone"], &item["suspend"]),
        (
            &Value::from("@yearly"),
            &Value::from("UTC"),
            &Value::from(true)
        )
    );
    assert_eq!(item["workflow"], "quick");
    let (code, body) = get(&format!("{list}/manual"), &viewer).await;
    assert_eq!(
        (code, &body["concurrencyPolicy"]),
        (StatusCode::OK, &Value::from("Allow"))
    );
    let (code, body) = get(&format!("{list}/nope"), &viewer).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let (code, body) = get(&format!("{list}/manual"), &creator).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cannot get workflowschedules.devset.io \"manual\""),
        "{body}"
    );
    let (code, _) = get(&list, "").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn kubectl_shows_the_columns_and_the_short_names() {
    let (ns, _ctl) = setup("sched-columns");
    let ns = ns.name.clone();
    let sample = common::repo().join("config/samples/workflowschedule.yaml");
    env().kubectl_ok(&["apply", "-n", &ns, "-f", sample.to_str().unwrap()]);
    wait_until(Duration::from_secs(20), "nextScheduleTime", || {
        (!status(&ns, "orders-weekday", "{.status.nextScheduleTime}").is_empty()).then_some(())
    });
    for short in ["workflowschedules", "wfs", "schedule"] {
        let out = env().kubectl_ok(&["get", short, "-n", &ns]);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "NEXT", "LAST", "AGE"
            ],
            "{out}"
        );
        let row = lines.next().unwrap();
        assert!(
            row.starts_with("orders-weekday")
                && row.contains("0 9 * * MON-FRI")
                && row.contains("Europe/Paris"),
            "{out}"
        );
    }
    let wide = env().kubectl_ok(&["get", "wfs", "-n", &ns, "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("READY"), "{wide}");
    assert!(wide.contains("Scheduled"), "{wide}");
    let explain = env().kubectl_ok(&["explain", "workflowschedule.spec.concurrencyPolicy"]);
    assert!(explain.contains("Forbid"), "{explain}");
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn a_time_missed_past_the_starting_deadline_is_skipped() {
    let (ns, mut first) = setup("sched-missed");
    let ns = ns.name.clone();
    env().apply(
        &ns,
        &schedule(
            "late",
            "@every 20s",
            "quick",
            "  startingDeadlineSeconds: 2\n",
        ),
    );
    let due: Timestamp = wait_until(Duration::from_secs(30), "nextScheduleTime", || {
        status(&ns, "late", "{.status.nextScheduleTime}")
            .parse()
            .ok()
    });
    // Down from before the time to five seconds after it: the time is 5 s late, past 2 s.
    first.kill();
    let wait = due.duration_since(Timestamp::now()).as_secs_f64() + 5.0;
    std::thread::sleep(Duration::from_secs_f64(wait.max(0.0)));
    let _second = ControllerProcess::start(&ns, 10);
    wait_for_event(&ns, "late", "MissedSchedule");
    wait_until(Duration::from_secs(20), "lastScheduleTime", || {
        (status(&ns, "late", "{.status.lastScheduleTime}") == due.to_string()).then_some(())
    });
    assert!(
        runs_of(&ns, "late").is_empty(),
        "the missed time made no run"
    );
    // The next time fires as usual.
    let run = wait_until(Duration::from_secs(30), "the next run", || {
        runs_of(&ns, "late").first().cloned()
    });
    let at = run_json(&ns, &run)["metadata"]["annotations"]["devset.io/scheduled-at"].clone();
    assert_eq!(at, (due + jiff::SignedDuration::from_secs(20)).to_string());
}
