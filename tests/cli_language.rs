//! `devset run` with the workflow language on the embedded Kafka broker: expect stages reading
//! what earlier stages published, captures flowing into a later publish, approvals decided by
//! `--approve`/`--reject`, and the clear errors of a run that cannot be decided or matched.
//! Needs nothing but the binary.

use serde_json::Value;
use std::{path::PathBuf, process::Command};

fn devset() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_devset"));
    c.env_remove("RUST_LOG").env_remove("DEVSET_API_SERVER");
    c
}

fn write_temp(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wf.yaml");
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

fn events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

const WORKFLOW: &str = r#"
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {name: orders}
spec:
  params:
    - {name: paid, type: integer, default: 5}
  stages:
    - name: paid
      publish:
        topic: orders
        count: "{{ params.paid }}"
        key: "o-{{ seq }}"
        payload: '{"id": "p-{{ seq }}", "status": "paid"}'
    - name: open
      publish: {topic: orders, count: 3, payload: '{"id": "o-{{ seq }}", "status": "open"}'}
    - name: settled
      expect:
        topic: orders
        count: "{{ params.paid }}"
        where: 'payload.status == "paid"'
        timeout: 20s
        capture: {last: payload.id}
    - name: go-live
      approval: {message: "forward {{ stages.settled.outputs.received }} payments?"}
    - name: forward
      publish: {topic: payments, payload: 'last {{ stages.settled.outputs.last }} by {{ stages.go-live.outputs.user }}'}
"#;

#[test]
fn approve_and_expect_on_the_embedded_broker() {
    let (_dir, file) = write_temp(WORKFLOW);
    let out = devset()
        .args([
            "run",
            "-f",
            file.to_str().unwrap(),
            "-o",
            "json",
            "--approve",
            "--show-messages",
        ])
        .env("USER", "tester")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ev = events(&out.stdout);
    let received: Vec<_> = ev
        .iter()
        .filter(|e| e["type"] == "message.received")
        .collect();
    assert_eq!(received.len(), 5, "{ev:#?}");
    assert!(
        received
            .iter()
            .all(|e| e["payload"].as_str().unwrap().contains("paid"))
    );
    let waiting: Vec<_> = ev.iter().filter(|e| e["type"] == "stage.waiting").collect();
    assert_eq!(waiting[0]["message"], "forward 5 payments?");
    let approved: Vec<_> = ev
        .iter()
        .filter(|e| e["type"] == "stage.approved")
        .collect();
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["user"], "local:tester");
    let forward: Vec<_> = ev
        .iter()
        .filter(|e| e["type"] == "message.published" && e["stage"] == "forward")
        .collect();
    assert_eq!(forward[0]["payload"], "last p-5 by local:tester");
    let settled = ev
        .iter()
        .find(|e| e["type"] == "stage.completed" && e["stage"] == "settled")
        .unwrap();
    assert_eq!(settled["outputs"]["received"], "5");
    assert_eq!(settled["outputs"]["last"], "p-5");
    let last = ev.last().unwrap();
    assert_eq!(
        (&last["type"], &last["phase"]),
        (&"run.phase".into(), &"Completed".into())
    );
}

#[test]
fn a_rejection_fails_the_run_and_undecidable_runs_are_refused() {
    let (_dir, file) = write_temp(WORKFLOW);
    let f = file.to_str().unwrap();
    let out = devset()
        .args(["run", "-f", f, "-o", "json", "--reject=go-live"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = events(&out.stdout);
    let last = ev.last().unwrap();
    assert_eq!(last["phase"], "Failed");
    assert_eq!(last["reason"], "Rejected");
    assert!(ev.iter().any(|e| e["type"] == "stage.rejected"));

    // No flag, and stdin is not a terminal: refused before anything is published.
    let out = devset()
        .args(["run", "-f", f])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("approval stage(s) go-live need a decision") && err.contains("--approve"),
        "{err}"
    );

    // A count from a param that is not a number: refused, naming the field.
    let out = devset()
        .args(["run", "-f", f, "--approve", "-p", "paid=-3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.stages[0].publish.count"), "{err}");
}

#[test]
fn an_expectation_not_met_says_how_many_matched_and_were_read() {
    let (_dir, file) = write_temp(
        r#"
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {name: short}
spec:
  stages:
    - name: some
      publish: {topic: t, count: 4, payload: 'not json {{ seq }}'}
    - name: want
      expect: {topic: t, count: 3, where: 'payload.status == "paid"', timeout: 1s}
"#,
    );
    let out = devset()
        .args(["run", "-f", file.to_str().unwrap(), "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let ev = events(&out.stdout);
    let failed = ev
        .iter()
        .find(|e| e["type"] == "stage.failed")
        .expect("a stage.failed event");
    assert_eq!(failed["reason"], "ExpectationNotMet");
    let msg = failed["message"].as_str().unwrap();
    assert!(
        msg.starts_with("matched 0 of 3 within 1s (4 messages read; where failed on 4 of them"),
        "{msg}"
    );
}
