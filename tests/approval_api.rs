//! Deciding approval stages through `devset api` (`POST …/stages/{stage}/approve`, `…/reject`)
//! and the CLI (`devset approve`, `devset reject`, `kubectl devset approve`), against the real API
//! server: TokenReview, SubjectAccessReview for the custom verb `approve`, RBAC from Roles, and
//! the decision annotation read back with kubectl.
//!
//! No controller runs: each run's status (phase `WaitingForApproval`, the pinned workflow, the
//! stages' phases) is written by the tests through the status subresource as the admin, so that
//! only the API is under test.

mod common;

use common::{ApiProcess, TestNamespace, env, free_port, install_crds, sqlite_store};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{path::Path, process::Command, time::Duration};

/// A namespace with `devset api` (kubernetes auth) and a run `r1` that waits for approval.
struct Setup {
    api: ApiProcess,
    ns: TestNamespace,
    /// A namespace whose ServiceAccounts are the group `system:serviceaccounts:TEAM`.
    team: TestNamespace,
}

/// The run's pinned workflow: a delay, an approval with approvers (a user and a group), an
/// approval for a group only, one for anyone with the verb, and one not reached yet.
fn pinned_workflow(ns: &str, team: &str) -> Value {
    json!({
        "stages": [
            { "name": "build", "delay": { "duration": "1s" } },
            { "name": "go-live", "approval": {
                "message": "ship it?",
                "approvers": {
                    "users": [format!("system:serviceaccount:{ns}:alice")],
                    "groups": ["release-managers"],
                },
            } },
            { "name": "team-check", "approval": {
                "approvers": { "groups": [format!("system:serviceaccounts:{team}")] },
            } },
            { "name": "open", "approval": {} },
            { "name": "later", "approval": {} },
        ]
    })
}

impl Setup {
    fn new(prefix: &str, auth: &str) -> Setup {
        install_crds();
        let ns = TestNamespace::new(prefix);
        let team = TestNamespace::new(&format!("{prefix}-team"));
        let api = ApiProcess::start(&ns.name, &sqlite_store(&ns.name), auth);
        let s = Setup { api, ns, team };
        s.waiting_run("r1");
        s
    }

    /// Creates run `name` (its workflow and connector need not exist: no controller runs) and
    /// writes a status in which `go-live`, `team-check` and `open` wait for approval.
    fn waiting_run(&self, name: &str) {
        env().apply(
            &self.ns.name,
            &format!(
                "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {name}}}\n\
                 spec: {{workflowRef: {{name: gated}}, connectorRef: {{name: kafka}}}}\n"
            ),
        );
        let status = json!({
            "status": {
                "phase": "WaitingForApproval",
                "reason": "WaitingForApproval",
                "message": "stage go-live waits for a decision",
                "progress": "1/5",
                "workflow": pinned_workflow(&self.ns.name, &self.team.name),
                "stages": [
                    { "name": "build", "phase": "Succeeded" },
                    { "name": "go-live", "phase": "WaitingForApproval" },
                    { "name": "team-check", "phase": "WaitingForApproval" },
                    { "name": "open", "phase": "WaitingForApproval" },
                    { "name": "later", "phase": "Pending" },
                ],
            }
        });
        env().kubectl_ok(&[
            "patch",
            "workflowrun",
            name,
            "-n",
            &self.ns.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
    }

    fn url(&self, run: &str, stage: &str, action: &str) -> String {
        self.api.url(&format!(
            "/api/v1/namespaces/{}/workflowruns/{run}/stages/{stage}/{action}",
            self.ns.name
        ))
    }

    /// The run as kubectl reads it.
    fn run_json(&self, run: &str) -> Value {
        let out = env().kubectl_ok(&[
            "get",
            "workflowrun",
            run,
            "-n",
            &self.ns.name,
            "--show-managed-fields",
            "-o",
            "json",
        ]);
        serde_json::from_str(&out).unwrap()
    }

    /// The decision annotation on `stage` of `run`, parsed; `None` when absent.
    fn decision(&self, run: &str, stage: &str) -> Option<Value> {
        let run = self.run_json(run);
        let v = run["metadata"]["annotations"][format!("approval.devset.io/{stage}")].as_str()?;
        Some(serde_json::from_str(v).expect("the annotation is JSON"))
    }
}

/// A ServiceAccount in `sa_ns` with a Role in `ns` of `verbs` on workflowruns (applied as YAML:
/// `kubectl create role` refuses verbs it does not know, such as `approve`); its token.
fn account(ns: &str, sa_ns: &str, name: &str, verbs: &[&str]) -> String {
    let _ = env().kubectl(&["-n", sa_ns, "create", "serviceaccount", name]);
    if !verbs.is_empty() {
        let role = format!("approve-test-{name}");
        env().apply(
            ns,
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {role}}}\n\
                 rules:\n- apiGroups: [devset.io]\n  resources: [workflowruns]\n  verbs: {verbs:?}\n\
                 ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
                 metadata: {{name: {role}}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {role}}}\n\
                 subjects: [{{kind: ServiceAccount, name: {name}, namespace: {sa_ns}}}]\n"
            ),
        );
    }
    env()
        .kubectl_ok(&["-n", sa_ns, "create", "token", name, "--duration=1h"])
        .trim()
        .to_owned()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// POSTs `body` (none when `None`) to `url` with `token` (none when empty): status and JSON.
async fn post(url: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = http().post(url);
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn approve_needs_a_token_the_approve_verb_and_an_approver_and_a_waiting_stage() {
    let s = Setup::new("approve", "kubernetes");
    let ns = s.ns.name.clone();
    let patcher = account(&ns, &ns, "patcher", &["get", "list", "patch"]);
    let alice = account(&ns, &ns, "alice", &["approve"]);
    let bob = account(&ns, &ns, "bob", &["approve", "get"]);
    let carol = account(&ns, &s.team.name, "carol", &["approve"]);
    let go_live = s.url("r1", "go-live", "approve");
    let comment = json!({ "comment": "checked the dashboards" });

    // 401: no token, a token that is not one.
    let (code, body) = post(&go_live, "", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("Unauthorized"))
    );
    let (code, _) = post(&go_live, "not-a-token", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);

    // 403: get and patch on runs are not the verb approve.
    let (code, body) = post(&go_live, &patcher, Some(comment.clone())).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        message(&body).contains(&format!(
            "system:serviceaccount:{ns}:patcher cannot approve"
        )),
        "the message names the user and the missing verb: {body}"
    );
    assert_eq!(s.decision("r1", "go-live"), None);

    // 403: the verb, but not one of the stage's approvers; the message names them.
    let (code, body) = post(&go_live, &bob, Some(comment.clone())).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let m = message(&body);
    assert!(
        m.contains("not an approver")
            && m.contains(&format!("system:serviceaccount:{ns}:alice"))
            && m.contains("release-managers"),
        "{body}"
    );
    assert_eq!(s.decision("r1", "go-live"), None);

    // 404: a stage the workflow does not have, a run that does not exist.
    let (code, body) = post(&s.url("r1", "nope", "approve"), &bob, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(message(&body).contains("no stage \"nope\""), "{body}");
    let (code, body) = post(&s.url("missing", "go-live", "approve"), &bob, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    // 400: a stage that is not an approval; a comment beyond 1024 characters; a bad body.
    let (code, body) = post(&s.url("r1", "build", "approve"), &bob, None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("a delay stage"), "{body}");
    let long = json!({ "comment": "x".repeat(1025) });
    let (code, body) = post(&s.url("r1", "open", "approve"), &bob, Some(long)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, _) = post(
        &s.url("r1", "open", "approve"),
        &bob,
        Some(json!({"comment": 5})),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    // 409: an approval stage that does not wait (yet).
    let (code, body) = post(&s.url("r1", "later", "approve"), &bob, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        message(&body).contains("not waiting for approval: it is Pending"),
        "{body}"
    );
    assert_eq!(s.decision("r1", "later"), None);

    // 200: an approver with the verb. The decision is on the run, as kubectl reads it.
    let (code, body) = post(&go_live, &alice, Some(comment.clone())).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let alice_name = format!("system:serviceaccount:{ns}:alice");
    assert_eq!(
        body,
        json!({"namespace": ns, "name": "r1", "stage": "go-live", "decision": "Approved",
               "user": alice_name})
    );
    let d = s
        .decision("r1", "go-live")
        .expect("the decision annotation");
    assert_eq!(d["decision"], "Approved");
    assert_eq!(d["user"], alice_name.as_str());
    assert_eq!(d["comment"], "checked the dashboards");
    let at: jiff::Timestamp = d["time"].as_str().unwrap().parse().unwrap();
    assert!(
        (jiff::Timestamp::now().as_second() - at.as_second()).abs() < 120,
        "time is now: {d}"
    );
    let run = s.run_json("r1");
    assert!(
        run["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["manager"] == "devset-api"),
        "written with the field manager devset-api: {}",
        run["metadata"]["managedFields"]
    );

    // A second decision on the same stage, even a rejection by an approver: 409, naming who
    // decided first; the first decision stands.
    for (action, token) in [("approve", &alice), ("reject", &alice)] {
        let (code, body) = post(&s.url("r1", "go-live", action), token, None).await;
        assert_eq!(code, StatusCode::CONFLICT, "{action}: {body}");
        assert!(
            message(&body).contains(&format!("already approved by {alice_name}")),
            "{body}"
        );
    }
    assert_eq!(s.decision("r1", "go-live").unwrap()["user"], alice_name);

    // A group of the approvers: carol (a ServiceAccount of the team namespace) rejects.
    let (code, body) = post(
        &s.url("r1", "team-check", "reject"),
        &carol,
        Some(json!({"comment": "not today"})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["decision"], "Rejected");
    let d = s.decision("r1", "team-check").unwrap();
    assert_eq!(
        (d["decision"].as_str(), d["user"].as_str()),
        (
            Some("Rejected"),
            Some(format!("system:serviceaccount:{}:carol", s.team.name).as_str())
        )
    );
    // ... and alice, who has the verb but is not in that group, may not.
    let (code, _) = post(&s.url("r1", "team-check", "approve"), &alice, None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    // Deciders at once on a stage without approvers: exactly one wins, the others get 409.
    let open = s.url("r1", "open", "approve");
    let tries: Vec<_> = (0..6)
        .map(|i| {
            let (open, token) = (
                open.clone(),
                if i % 2 == 0 {
                    bob.clone()
                } else {
                    alice.clone()
                },
            );
            tokio::spawn(async move { post(&open, &token, None).await.0 })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tries {
        codes.push(t.await.unwrap());
    }
    assert_eq!(
        codes.iter().filter(|c| **c == StatusCode::OK).count(),
        1,
        "{codes:?}"
    );
    assert!(
        codes
            .iter()
            .all(|c| *c == StatusCode::OK || *c == StatusCode::CONFLICT),
        "{codes:?}"
    );
    assert!(s.decision("r1", "open").is_some());

    // Nothing leaks the tokens into the API's log; the decisions are logged.
    let log = s.api.log_text();
    assert!(log.contains("approval decided through the API"), "{log}");
    for t in [&alice, &bob, &carol, &patcher] {
        assert!(!log.contains(t.as_str()), "a token in the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn a_finished_run_or_one_not_started_takes_no_decision() {
    let s = Setup::new("approve-ended", "kubernetes");
    let ns = s.ns.name.clone();
    let bob = account(&ns, &ns, "bob", &["approve"]);
    // Not started: no pinned workflow in status.
    env().apply(
        &ns,
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {name: fresh}\n\
         spec: {workflowRef: {name: gated}, connectorRef: {name: kafka}}\n",
    );
    let (code, body) = post(&s.url("fresh", "open", "approve"), &bob, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(message(&body).contains("has not started"), "{body}");
    // Ended: the run failed while the stage still says it waits.
    env().kubectl_ok(&[
        "patch",
        "workflowrun",
        "r1",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Failed","reason":"Stopped"}}"#,
    ]);
    let (code, body) = post(&s.url("r1", "open", "approve"), &bob, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(message(&body).contains("already ended (Failed)"), "{body}");
    assert_eq!(s.decision("r1", "open"), None);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
async fn with_auth_none_the_decider_is_anonymous_and_approvers_are_not_checked() {
    let s = Setup::new("approve-none", "none");
    let (code, body) = post(&s.url("r1", "go-live", "reject"), "", None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["user"], "anonymous");
    let d = s.decision("r1", "go-live").unwrap();
    assert_eq!(
        (d["decision"].as_str(), d["user"].as_str()),
        (Some("Rejected"), Some("anonymous"))
    );
    assert!(d.get("comment").is_none(), "no comment, no field: {d}");
}

// --- the CLI ------------------------------------------------------------------------------

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A kubeconfig with `token` whose current context's namespace is `ns` and names devset api's
/// address (`api`) in its extension.
fn kubeconfig(dir: &Path, ns: &str, token: &str, api: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:1'}}\n\
             users:\n- name: u\n  user: {{token: '{token}'}}\ncontexts:\n\
             - name: with-api\n  context:\n    cluster: c\n    user: u\n    namespace: {ns}\n\
             \x20   extensions:\n    - name: devset.io/api-server\n      extension: {{server: '{api}'}}\n\
             - name: elsewhere\n  context: {{cluster: c, user: u, namespace: default}}\n\
             current-context: with-api\n"
        ),
    )
    .unwrap();
    path
}

fn devset(kubeconfig: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_devset"));
    c.env_remove("RUST_LOG")
        .env_remove("DEVSET_API_SERVER")
        .env_remove("DEVSET_TOKEN")
        .env("KUBECONFIG", kubeconfig);
    c
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn devset_approve_and_reject_print_one_line_or_the_refusal_with_exit_2() {
    let s = Setup::new("approve-cli", "kubernetes");
    let ns = s.ns.name.clone();
    let alice = account(&ns, &ns, "alice", &["approve"]);
    let dir = tempfile::tempdir().unwrap();
    let server = format!("http://127.0.0.1:{}", s.api.port);
    let kc = kubeconfig(dir.path(), &ns, &alice, &server);

    // The address from the context's extension, the namespace from the context.
    let out = devset(&kc)
        .args(["approve", "r1", "go-live", "--comment", "ship it"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "approved stage \"go-live\" of run \"r1\"\n"
    );
    assert_eq!(text(&out.stderr), "");
    let d = s.decision("r1", "go-live").unwrap();
    assert_eq!(d["comment"], "ship it");
    assert_eq!(d["user"], format!("system:serviceaccount:{ns}:alice"));

    // Refusals: the server's message on one line, exit 2.
    for (args, want) in [
        (
            vec!["approve", "r1", "go-live"],
            "devset api answered 409 Conflict: stage \"go-live\" of run \"r1\" was already approved",
        ),
        (
            vec!["reject", "r1", "nope"],
            "devset api answered 404 Not Found: run \"r1\" has no stage \"nope\"",
        ),
        (
            vec!["reject", "r1", "later"],
            "devset api answered 409 Conflict: stage \"later\" of run \"r1\" is not waiting",
        ),
    ] {
        let out = devset(&kc).args(&args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with(&format!("error: {want}")),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(text(&out.stdout), "");
    }

    // -n and --context pick the namespace; --server and --token override the kubeconfig.
    let bob = account(&ns, &ns, "bob", &["get"]);
    let out = devset(&kc)
        .args(["reject", "r1", "open", "--context", "elsewhere", "-n", &ns])
        .args(["--server", &server, "--token", &bob])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("403 Forbidden") && text(&out.stderr).contains("cannot approve"),
        "{}",
        text(&out.stderr)
    );
    let out = devset(&kc)
        .args(["reject", "r1", "open", "--context", "elsewhere", "-n", &ns])
        .args(["--server", &server])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "rejected stage \"open\" of run \"r1\"\n");
    assert_eq!(s.decision("r1", "open").unwrap()["decision"], "Rejected");

    // devset api unreachable: exit 1.
    let out = devset(&kc)
        .args(["approve", "r1", "team-check"])
        .args(["--server", &format!("http://127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("error: cannot reach devset api"),
        "{}",
        text(&out.stderr)
    );

    // As a kubectl plugin: `kubectl devset approve …`.
    s.waiting_run("r2");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_devset"), bin.join("kubectl-devset")).unwrap();
    let path = text(
        &env()
            .command("printenv")
            .arg("PATH")
            .output()
            .unwrap()
            .stdout,
    );
    let out = env()
        .command("kubectl")
        .env("PATH", format!("{}:{}", bin.display(), path.trim()))
        .env("KUBECONFIG", &kc)
        .env_remove("DEVSET_API_SERVER")
        .args([
            "devset",
            "approve",
            "r2",
            "go-live",
            "--comment",
            "via kubectl",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "approved stage \"go-live\" of run \"r2\"\n"
    );
    assert_eq!(
        s.decision("r2", "go-live").unwrap()["comment"],
        "via kubectl"
    );
    let help = env()
        .command("kubectl")
        .env("PATH", format!("{}:{}", bin.display(), path.trim()))
        .args(["devset", "reject", "--help"])
        .output()
        .unwrap();
    assert!(
        text(&help.stdout).contains("Usage: kubectl devset reject"),
        "{}",
        text(&help.stdout)
    );
}

/// `kubectl annotate` of a decision on run `r1` of `ns` as the holder of `token`.
fn annotate_as(ns: &str, who: &str, token: &str, value: &str) -> std::process::Output {
    let kubeconfig = common::token_kubeconfig(&format!("{ns}-{who}"), token);
    env()
        .command("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "-n",
            ns,
            "annotate",
            "--overwrite",
            "workflowrun/r1",
            &format!("approval.devset.io/go-live={value}"),
        ])
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn the_chart_policy_lets_only_approvers_naming_themselves_write_a_decision() {
    install_crds();
    let ns = TestNamespace::new("vap");
    // The chart's policy, bound to this namespace only.
    let out = env()
        .command("helm")
        .args([
            "template",
            &ns.name,
            common::repo()
                .join("charts/devset-operator")
                .to_str()
                .unwrap(),
            "-n",
            &ns.name,
            "--show-only",
            "templates/decision-policy.yaml",
            "--set",
            &format!("watchNamespaces={{{}}}", ns.name),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    env().apply(&ns.name, &text(&out.stdout));
    let policy = format!("{}-devset-operator-decisions", ns.name);
    env().apply(
        &ns.name,
        "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {name: r1}\n\
         spec: {workflowRef: {name: w}, connectorRef: {name: c}}\n",
    );
    let patcher = account(&ns.name, &ns.name, "patcher", &["get", "patch"]);
    let carol = account(&ns.name, &ns.name, "carol", &["get", "patch", "approve"]);
    let carol_name = format!("system:serviceaccount:{}:carol", ns.name);
    let decision = |user: &str| format!(r#"{{"decision":"Approved","user":"{user}"}}"#);

    // Plain patch is not enough (the policy takes a moment to be enforced once created).
    let start = std::time::Instant::now();
    let refused = loop {
        let out = annotate_as(&ns.name, "patcher", &patcher, &decision("alice"));
        if !out.status.success() {
            break text(&out.stderr);
        }
        // Undo what got through before the policy was enforced.
        env().kubectl_ok(&[
            "-n",
            &ns.name,
            "annotate",
            "workflowrun/r1",
            "approval.devset.io/go-live-",
        ]);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the policy {policy} was never enforced"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        refused.contains("only devset api, or a user holding the verb approve"),
        "{refused}"
    );
    // An approver naming someone else: refused. Naming themselves: written.
    let out = annotate_as(&ns.name, "carol", &carol, &decision("alice"));
    assert!(!out.status.success(), "carol wrote a decision naming alice");
    let out = annotate_as(&ns.name, "carol", &carol, &decision(&carol_name));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Nobody but an admin removes a decision.
    let kubeconfig = common::token_kubeconfig(&format!("{}-carol", ns.name), &carol);
    let out = env()
        .command("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "-n",
            &ns.name,
            "annotate",
            "workflowrun/r1",
            "approval.devset.io/go-live-",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be removed"),
        "{}",
        text(&out.stderr)
    );
    // Other changes to the run are not the policy's business.
    let out = annotate_as_other(&ns.name, &patcher);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env().kubectl_ok(&[
        "delete",
        "validatingadmissionpolicybinding,validatingadmissionpolicy",
        &policy,
    ]);
}

fn annotate_as_other(ns: &str, token: &str) -> std::process::Output {
    let kubeconfig = common::token_kubeconfig(&format!("{ns}-patcher"), token);
    env()
        .command("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(["-n", ns, "annotate", "workflowrun/r1", "team=payments"])
        .output()
        .unwrap()
}
