//! The web page (issue 14) in a real browser: Debian's headless `chromium`, driven by Playwright
//! (`playwright-core` from npm, pointed at the system browser) through the scripts in
//! `tests/web/`, against `devset api` and `devset controller` on the real API server (RBAC,
//! TokenReview, tokens from `kubectl create token`) and the real Kafka. Each test sets up its
//! namespace here (`tests/web/harness.rs`), runs a script with `node`, and checks outcomes with
//! independent clients: kubectl for `.status`, Kafka's console consumer for the messages; the
//! scripts ask for those checks while they run. Screenshots go to `target/web-screenshots/`
//! (and to `docs/images/` with `DEVSET_UPDATE_SCREENSHOTS=1`).
//!
//! Needs the test environment with its `browser` part: `tests/env/up … browser` (tests/run
//! brings it up).

mod common;
#[path = "web/harness.rs"]
mod harness;

use common::ApiProcess;
use harness::{MINUTE, Web};

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn sign_in_with_a_token_and_a_wrong_token_is_refused() {
    let mut web = Web::new("web-signin", 4);
    let open = ApiProcess::start(web.ns(), &web.store, "none");
    web.script("signin", &[("WEB_URL_NOAUTH", open.url(""))], 3 * MINUTE);
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn new_run_with_params_goes_from_active_to_completed_without_a_reload() {
    let mut web = Web::new("web-newrun", 4);
    web.script("newrun", &[], 3 * MINUTE);
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn the_log_holds_every_event_once_across_an_api_restart() {
    let mut web = Web::new("web-log", 4);
    // 4,500 messages at 150/s: 30 s, long enough to restart the API in the middle.
    web.start_run("live", "long", "kafka", "count: 4500, rate: 150");
    web.script("log", &[("WEB_RUN", "live".into())], 4 * MINUTE);
    assert_eq!(web.phase("live"), "Completed");
    assert_eq!(
        web.jsonpath("workflowrun", "live", "{.status.messagesPublished}"),
        "4500"
    );
    // Counted on the broker by offsets (GetOffsetShell); on a loaded machine one answer can
    // miss a partition, so a differing count is read again before it fails the test.
    let topic = format!("{}-long", web.topic);
    let mut counted = 0;
    for _ in 0..5 {
        counted = common::env().count("kafka-count", &topic);
        if counted == 4500 {
            break;
        }
        eprintln!("kafka-count {topic}: {counted}, reading again");
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    assert_eq!(counted, 4500, "messages on the broker");
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn an_event_shows_the_payload_and_headers_the_broker_holds() {
    let mut web = Web::new("web-inspect", 4);
    web.start_run("three", "orders", "kafka", "orders: 3, region: eu-north");
    web.wait_phase("three", "Completed", MINUTE);
    // What an independent consumer (Kafka's console consumer) reads from the topic.
    let broker = harness::kafka_read(&format!("{}-orders", web.topic), 3);
    assert_eq!(broker.len(), 3, "{broker:?}");
    let broker = serde_json::to_string(&broker).unwrap();
    web.script(
        "inspect",
        &[("WEB_RUN", "three".into()), ("WEB_BROKER", broker)],
        3 * MINUTE,
    );
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn a_rabbitmq_event_shows_the_payload_and_headers_the_queue_holds() {
    let mut web = Web::new("web-inspect-q", 4);
    let queue = format!("{}-q", web.topic);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::declare_queue(&queue));
    web.start_run("queued", "queued", "rabbit", "");
    web.wait_phase("queued", "Completed", MINUTE);
    // What an independent consumer (lapin's basic_get) takes from the queue.
    let broker = harness::rabbitmq_read(&queue, 2);
    let broker = serde_json::to_string(&broker).unwrap();
    web.script(
        "inspect",
        &[
            ("WEB_RUN", "queued".into()),
            ("WEB_BROKER", broker),
            ("WEB_SCREENSHOT", String::new()),
        ],
        3 * MINUTE,
    );
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn stop_approve_reject_retry_rerun_export_and_fire_now_from_the_page() {
    let mut web = Web::new("web-actions", 10);
    web.start_run("stopme", "long", "kafka", "count: 100000, rate: 50");
    web.start_run("gate-a", "gated", "kafka", "");
    web.start_run("gate-r", "gated", "kafka", "");
    web.nightly_schedule();
    web.wait_phase("stopme", "Running", MINUTE);
    web.wait_phase("gate-a", "WaitingForApproval", MINUTE);
    web.wait_phase("gate-r", "WaitingForApproval", MINUTE);
    web.script("actions", &[], 6 * MINUTE);
    // What the page did, read back once more.
    assert_eq!(web.phase("stopme"), "Stopped");
    assert_eq!(web.phase("gate-a"), "Completed");
    assert_eq!(web.phase("gate-r"), "Failed");
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn a_user_who_may_only_get_and_list_sees_the_buttons_disabled_with_the_reason() {
    let mut web = Web::new("web-viewer", 4);
    web.start_run("waiting", "gated", "kafka", "");
    web.start_run("done", "orders", "kafka", "orders: 1, region: eu");
    web.nightly_schedule();
    web.wait_phase("waiting", "WaitingForApproval", MINUTE);
    web.wait_phase("done", "Completed", MINUTE);
    web.script("readonly", &[], 3 * MINUTE);
    assert_eq!(web.phase("waiting"), "WaitingForApproval");
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn a_100000_event_run_opens_and_its_last_event_is_reached() {
    let mut web = Web::new("web-big", 4);
    let start = std::time::Instant::now();
    web.start_run("big", "big", "kafka", "");
    web.wait_phase("big", "Completed", 10 * MINUTE);
    println!(
        "the 100,000-message run took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        web.jsonpath("workflowrun", "big", "{.status.messagesPublished}"),
        "100000"
    );
    web.script("big", &[("WEB_RUN", "big".into())], 5 * MINUTE);
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn the_runs_page_lists_1000_runs() {
    const RUNS: usize = 1000;
    // No controller: the runs stay Pending (1,000 runs through one controller take minutes, and
    // the page renders a run the same in any phase).
    let mut web = Web::with_controller("web-many", None);
    let start = std::time::Instant::now();
    let runs: String = (1..=RUNS)
        .map(|i| {
            format!(
                "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: r{i:04}}}\n\
                 spec: {{workflowRef: {{name: long}}, connectorRef: {{name: kafka}}, params: {{count: 1, rate: 1000}}}}\n---\n"
            )
        })
        .collect();
    common::env().apply(web.ns(), &runs);
    common::wait_until(MINUTE, "every run to be listed", || {
        let out = common::env().kubectl_ok(&["get", "runs", "-n", web.ns(), "-o", "name"]);
        (out.lines().count() == RUNS).then_some(())
    });
    println!(
        "{RUNS} runs created in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    web.script("runs1000", &[("WEB_RUNS", RUNS.to_string())], 5 * MINUTE);
}
