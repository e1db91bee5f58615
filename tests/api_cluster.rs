//! The CRDs against a real kube-apiserver: they install, `kubectl get` shows their columns,
//! valid samples are accepted and every invalid case is rejected with a message that names the
//! field. Run with `tests/run`, or `cargo test -- --ignored` once `tests/env/up` is done.

mod common;

use common::{TestNamespace, env, expectations, install_crds, repo};

const CRDS: [&str; 3] = [
    "brokerconnectors.devset.io",
    "workflows.devset.io",
    "workflowruns.devset.io",
];

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn crds_install_and_become_established() {
    install_crds();
    for crd in CRDS {
        let conditions = env().kubectl_ok(&[
            "get",
            "crd",
            crd,
            "-o",
            r#"jsonpath={range .status.conditions[*]}{.type}={.status}{"\n"}{end}"#,
        ]);
        assert!(
            conditions.contains("Established=True"),
            "{crd}: {conditions}"
        );
        assert!(
            conditions.contains("NamesAccepted=True"),
            "{crd}: {conditions}"
        );
    }
    // The short names resolve through discovery.
    let resources = env().kubectl_ok(&["api-resources", "--api-group=devset.io", "--no-headers"]);
    for (plural, short) in [
        ("brokerconnectors", "bc"),
        ("workflows", "wf"),
        ("workflowruns", "wfr,run,runs"),
    ] {
        let line = resources
            .lines()
            .find(|l| l.starts_with(plural))
            .unwrap_or_else(|| panic!("{plural} missing from api-resources:\n{resources}"));
        assert!(line.contains(short), "{plural} short names: {line}");
        assert!(line.contains("true"), "{plural} is namespaced: {line}");
    }
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn valid_samples_are_accepted_and_kubectl_get_shows_the_columns() {
    install_crds();
    let ns = TestNamespace::new("samples");
    let samples = repo().join("config/samples");
    for file in [
        "kafka-connector.yaml",
        "rabbitmq-connector.yaml",
        "workflow.yaml",
        "workflowrun.yaml",
    ] {
        let path = samples.join(file);
        env().kubectl_ok(&["apply", "-n", &ns.name, "-f", path.to_str().unwrap()]);
    }

    let header = |resource: &str| {
        let out = env().kubectl_ok(&["get", resource, "-n", &ns.name]);
        let first = out.lines().next().unwrap_or_default().to_string();
        (
            first
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>(),
            out,
        )
    };
    let (runs, out) = header("runs");
    assert_eq!(
        runs,
        ["NAME", "WORKFLOW", "PHASE", "PROGRESS", "MESSAGES", "AGE"],
        "{out}"
    );
    assert!(out.contains("orders-1") && out.contains("orders"), "{out}");
    let (wfr, _) = header("wfr");
    assert_eq!(
        wfr, runs,
        "`kubectl get wfr` is the same resource as `kubectl get runs`"
    );
    let (run, _) = header("run");
    assert_eq!(run, runs);
    let (wf, out) = header("wf");
    assert_eq!(wf, ["NAME", "READY", "AGE"], "{out}");
    assert!(out.contains("orders"), "{out}");
    let (bc, out) = header("bc");
    assert_eq!(bc, ["NAME", "TYPE", "READY", "AGE"], "{out}");
    assert!(out.contains("kafka") && out.contains("rabbitmq"), "{out}");

    // `-o wide` adds the reason columns.
    let wide = env().kubectl_ok(&["get", "runs", "-n", &ns.name, "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("CONNECTOR"), "{wide}");

    // Defaults from the schema are applied by the API server.
    let count = env().kubectl_ok(&[
        "get",
        "wf",
        "orders",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.spec.params[1].type}",
    ]);
    assert_eq!(count, "string");
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn invalid_manifests_are_rejected_naming_the_field() {
    install_crds();
    let ns = TestNamespace::new("invalid");
    let dir = repo().join("tests/fixtures/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "fixtures missing in {}", dir.display());

    let mut problems = Vec::new();
    for file in &files {
        let expect = expectations(file);
        assert!(
            !expect.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let out = env().kubectl(&["apply", "-n", &ns.name, "-f", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = file.file_name().unwrap().to_string_lossy();
        if out.status.success() {
            problems.push(format!("{name}: accepted, but must be rejected"));
            continue;
        }
        for e in &expect {
            if !stderr.contains(e.as_str()) {
                problems.push(format!("{name}: error lacks {e:?}:\n  {}", stderr.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn a_run_keeps_its_workflow_connector_and_params() {
    install_crds();
    let ns = TestNamespace::new("immutable");
    let run = repo().join("config/samples/workflowrun.yaml");
    env().kubectl_ok(&["apply", "-n", &ns.name, "-f", run.to_str().unwrap()]);

    let out = env().kubectl(&[
        "patch",
        "run",
        "orders-1",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"workflowRef":{"name":"other"}}}"#,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "changing workflowRef must be rejected"
    );
    assert!(
        stderr.contains("spec.workflowRef") && stderr.contains("cannot change"),
        "{stderr}"
    );

    // Asking for a stop is a spec change that is allowed.
    env().kubectl_ok(&[
        "patch",
        "run",
        "orders-1",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"stop":true}}"#,
    ]);
    // The status is a subresource: a write to it through the main resource is ignored.
    env().kubectl_ok(&[
        "patch",
        "run",
        "orders-1",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Completed"}}"#,
    ]);
    let phase = env().kubectl_ok(&[
        "get",
        "run",
        "orders-1",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(
        phase, "",
        "status must only change through the status subresource"
    );
    env().kubectl_ok(&[
        "patch",
        "run",
        "orders-1",
        "-n",
        &ns.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Completed","progress":"3/3","messagesPublished":200}}"#,
    ]);
    let row = env().kubectl_ok(&["get", "runs", "-n", &ns.name, "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cols[..5],
        ["orders-1", "orders", "Completed", "3/3", "200"],
        "{row}"
    );
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn kubectl_explain_shows_the_field_docs() {
    install_crds();
    let out = env().kubectl_ok(&["explain", "workflow.spec.stages.publish.ratePerSecond"]);
    assert!(out.contains("Pace publishing"), "{out}");
    let out = env().kubectl_ok(&["explain", "workflowrun.spec.stop"]);
    assert!(out.contains("stop the run gracefully"), "{out}");
}
