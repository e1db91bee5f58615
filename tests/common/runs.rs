//! Reading runs as an independent client does: `kubectl get workflowrun -o jsonpath`.

use super::{env, wait_until};
use std::time::Duration;

/// A JSONPath of the run `ns/run`, e.g. `{.status.phase}`.
pub fn status(ns: &str, run: &str, path: &str) -> String {
    env().jsonpath(ns, "workflowrun", run, path)
}

/// A field of one stage's status, e.g. `phase`, `reason`, `outputs.decision`.
pub fn stage_field(ns: &str, run: &str, stage: &str, field: &str) -> String {
    status(
        ns,
        run,
        &format!("{{.status.stages[?(@.name==\"{stage}\")].{field}}}"),
    )
}

/// Waits until the run is in `phase`; fails at once when it ends in another final phase, with
/// its reason and message.
pub fn wait_phase(ns: &str, run: &str, phase: &str, timeout: Duration) {
    wait_until(timeout, &format!("run {run} to be {phase}"), || {
        let p = status(ns, run, "{.status.phase}");
        assert!(
            !(matches!(p.as_str(), "Failed" | "Completed" | "Stopped") && p != phase),
            "run {run} is {p}, not {phase}: {} {}",
            status(ns, run, "{.status.reason}"),
            status(ns, run, "{.status.message}")
        );
        (p == phase).then_some(())
    });
}

/// Every event of the run `ns/run` in its event log, read page by page through the JSON route
/// of a `devset api` on `port` (`…/events?after=N&limit=1000`).
pub fn all_events(port: u16, ns: &str, run: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let path =
            format!("/api/v1/namespaces/{ns}/workflowruns/{run}/events?after={after}&limit=1000");
        let (code, body) = super::http_get(port, &path).expect("devset api answers");
        assert_eq!(code, 200, "GET {path}: {body}");
        let page: serde_json::Value = serde_json::from_str(&body).expect("a JSON page");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return out;
        }
        after = page["next"].as_u64().expect("the page's next");
        out.extend(items);
    }
}

/// The reasons of the Kubernetes Events on object `name` in `ns`, one per Event (an Event
/// repeated by the recorder counts once).
pub fn event_reasons(ns: &str, name: &str) -> Vec<String> {
    env()
        .kubectl_ok(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The runs of the WorkflowSchedule `name` in `ns` (label `devset.io/schedule`), as (name, its
/// `devset.io/scheduled-at` annotation), oldest name first (names of one schedule sort by time).
pub fn schedule_runs(ns: &str, name: &str) -> Vec<(String, String)> {
    let out = env().kubectl_ok(&[
        "get",
        "workflowruns",
        "-n",
        ns,
        "-l",
        &format!("devset.io/schedule={name}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} \
         {.metadata.annotations.devset\\.io/scheduled-at}{\"\\n\"}{end}",
    ]);
    let mut runs: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    runs.sort();
    runs
}
