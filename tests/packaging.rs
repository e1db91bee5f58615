//! The Helm chart and the kustomize config, checked on the real API server: lint and render,
//! install, run the binaries with the chart's ServiceAccount token (its RBAC is enough and no
//! more), server-side re-apply without drift, kustomize equals the chart, uninstall.

mod common;

use common::*;
use serde::Deserialize;
use serde_yaml::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Output,
    time::Duration,
};

const CHART: &str = "charts/devset-operator";
const MINUTE: Duration = Duration::from_secs(60);

/// The documents of a multi-document YAML stream (empty ones skipped).
fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template` of the chart as release `devset-operator` in `devset-system`, plus `extra`.
fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "devset-operator", CHART, "-n", "devset-system"];
    args.extend(extra);
    docs(&env().helm_ok(&args))
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

/// The one object of kind `k` named `n`.
fn named<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    let found: Vec<&Value> = find(docs, k).into_iter().filter(|d| name(d) == n).collect();
    assert_eq!(found.len(), 1, "one {k} {n}");
    found[0]
}

fn container<'a>(deploy: &'a Value, name: &str) -> &'a Value {
    deploy["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("a container {name:?}"))
}

fn env_var<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("env {name} in {container:?}"))
}

/// Every rule's verbs, by `group/resource`.
fn rules(role: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::<String, BTreeSet<String>>::new();
    for rule in role["rules"].as_sequence().unwrap() {
        for group in rule["apiGroups"].as_sequence().unwrap() {
            for res in rule["resources"].as_sequence().unwrap() {
                let key = format!("{}/{}", group.as_str().unwrap(), res.as_str().unwrap());
                let verbs = rule["verbs"].as_sequence().unwrap();
                out.entry(key)
                    .or_default()
                    .extend(verbs.iter().map(|v| v.as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn helm_lint_passes_and_the_chart_renders_with_defaults_and_every_option() {
    env().helm_ok(&["lint", "--strict", CHART]);
    env().helm_ok(&[
        "lint",
        "--strict",
        CHART,
        "-f",
        "tests/fixtures/chart/every-option.yaml",
    ]);

    // Defaults: one replica, SQLite on an emptyDir, a ClusterRole, the restricted profile.
    let d = render(&[]);
    let kinds: BTreeSet<&str> = d.iter().map(kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ])
    );
    // The decision policy trusts the chart's own ServiceAccount, and binds everywhere by default.
    let policy = named(&d, "ValidatingAdmissionPolicy", "devset-operator-decisions");
    assert!(
        serde_yaml::to_string(policy)
            .unwrap()
            .contains("system:serviceaccount:devset-system:devset-operator")
    );
    let binding = named(
        &d,
        "ValidatingAdmissionPolicyBinding",
        "devset-operator-decisions",
    );
    assert!(binding["spec"]["matchResources"].is_null());
    let scoped = render(&["--set", "watchNamespaces={a,b}"]);
    let binding = named(
        &scoped,
        "ValidatingAdmissionPolicyBinding",
        "devset-operator-decisions",
    );
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_yaml::from_str::<Value>("[a, b]").unwrap()
    );
    let policies = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .filter(|d| kind(d) == "ValidatingAdmissionPolicy")
            .map(|d| {
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    let no_decisions = render(&["--set", "approvalPolicy.enabled=false"]);
    assert_eq!(policies(&no_decisions), ["devset-operator-triggered-by"]);
    let off = render(&[
        "--set",
        "approvalPolicy.enabled=false",
        "--set",
        "triggeredByPolicy.enabled=false",
    ]);
    assert!(
        !off.iter()
            .any(|d| kind(d).starts_with("ValidatingAdmissionPolicy"))
    );
    let deploy = find(&d, "Deployment")[0];
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(pod["volumes"][0]["emptyDir"].is_mapping());
    for c in ["controller", "api"] {
        let c = container(deploy, c);
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{c:?}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{c:?}");
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{c:?}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{c:?}");
        assert!(c["livenessProbe"]["httpGet"].is_mapping(), "{c:?}");
        assert!(c["readinessProbe"]["httpGet"].is_mapping(), "{c:?}");
        assert_eq!(
            env_var(c, "DEVSET_EVENT_STORE")["value"],
            "sqlite:///data/events.db"
        );
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/data");
    }
    let ctl = container(deploy, "controller");
    assert_eq!(ctl["args"][0], "controller");
    assert_eq!(env_var(ctl, "DEVSET_ENGINE_MAX_ACTIVE_RUNS")["value"], "10");
    assert_eq!(env_var(ctl, "DEVSET_LEADER_ELECT")["value"], "true");
    assert_eq!(container(deploy, "api")["args"][0], "api");
    assert_eq!(find(&d, "Service")[0]["spec"]["ports"][0]["port"], 8082);
    let cluster = rules(named(&d, "ClusterRole", "devset-operator"));
    // patch: the controller's finalizer, and the API's spec.stop and approval annotations;
    // create and delete: scheduled runs, fire now, and runs beyond a schedule's history limits.
    assert_eq!(
        cluster["devset.io/workflowruns"],
        BTreeSet::from(["get", "list", "watch", "patch", "create", "delete"].map(String::from))
    );
    // patch: the API's suspend and resume (spec.suspend).
    assert_eq!(
        cluster["devset.io/workflowschedules"],
        BTreeSet::from(["get", "list", "watch", "patch"].map(String::from))
    );
    assert_eq!(
        cluster["devset.io/workflowschedules/status"],
        BTreeSet::from(["patch".to_string()])
    );
    assert!(
        !cluster.values().any(|v| v.contains("approve")),
        "the API checks the caller's approve verb; it needs none itself: {cluster:?}"
    );
    // The approvers' ClusterRole: the verb approve and reading runs, nothing else.
    let approver = named(&d, "ClusterRole", "devset-operator-approver");
    assert_eq!(
        rules(approver),
        BTreeMap::from([(
            "devset.io/workflowruns".to_string(),
            BTreeSet::from(["approve", "get", "list", "watch"].map(String::from))
        )])
    );
    assert_eq!(approver["metadata"]["labels"]["devset.io/role"], "approver");
    assert!(
        !approver["metadata"]["labels"]
            .as_mapping()
            .unwrap()
            .keys()
            .any(|k| k.as_str().unwrap().contains("aggregate-to")),
        "aggregates into no built-in role by default: {approver:?}"
    );
    assert_eq!(
        cluster["/secrets"],
        BTreeSet::from(["get".to_string()]),
        "Secrets are read one by one, never listed"
    );
    assert!(!cluster.keys().any(|k| k.contains("delete")));
    assert!(
        cluster
            .iter()
            .all(|(k, v)| !v.contains("*")
                && (!v.contains("delete") || k == "devset.io/workflowruns")),
        "deletes nothing but runs: {cluster:?}"
    );
    assert_eq!(
        rules(named(&d, "Role", "devset-operator-leader-election"))["coordination.k8s.io/leases"],
        BTreeSet::from(["get", "create", "update"].map(String::from))
    );

    // Every option on.
    let d = render(&["-f", "tests/fixtures/chart/every-option.yaml"]);
    for k in ["ServiceMonitor", "NetworkPolicy"] {
        assert_eq!(find(&d, k).len(), 1, "one {k}");
    }
    let deploy = find(&d, "Deployment")[0];
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "devset-bot");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["value"], "devset");
    assert!(pod["affinity"]["podAntiAffinity"].is_mapping());
    assert_eq!(pod["imagePullSecrets"][0]["name"], "pull-secret");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    let ctl = container(deploy, "controller");
    assert_eq!(
        ctl["image"],
        "registry.example/devset/devset-operator:1.2.3"
    );
    assert_eq!(env_var(ctl, "DEVSET_ENGINE_MAX_ACTIVE_RUNS")["value"], "25");
    assert_eq!(env_var(ctl, "RUST_LOG")["value"], "info,devset=debug");
    assert_eq!(env_var(ctl, "DEVSET_NAMESPACE")["value"], "team-a,team-b");
    assert_eq!(
        env_var(ctl, "DEVSET_EVENTS_RETENTION_FAILED")["value"],
        "14d"
    );
    assert_eq!(ctl["resources"]["limits"]["memory"], "1Gi");
    let store = &env_var(ctl, "DEVSET_EVENT_STORE")["valueFrom"]["secretKeyRef"];
    assert_eq!(store["name"], "devset-postgres");
    assert_eq!(store["key"], "dsn");
    let api = container(deploy, "api");
    assert_eq!(env_var(api, "DEVSET_API_AUTH")["value"], "none");
    assert_eq!(api["ports"][0]["containerPort"], 9082);
    // watchNamespaces: the namespaced rules move into a Role per namespace.
    let roles: BTreeSet<String> = find(&d, "Role")
        .iter()
        .filter(|r| rules(r).contains_key("devset.io/workflowruns"))
        .map(|r| r["metadata"]["namespace"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(roles, BTreeSet::from(["team-a".into(), "team-b".into()]));
    let cluster = rules(named(&d, "ClusterRole", "devset-operator"));
    assert!(
        !cluster.contains_key("/secrets") && !cluster.contains_key("devset.io/workflowruns"),
        "nothing namespaced stays cluster-wide: {cluster:?}"
    );
    assert!(cluster.contains_key("authentication.k8s.io/tokenreviews"));

    // The approvers' ClusterRole: named, aggregated into built-in roles, or not created.
    let d = render(&[
        "--set",
        "approverRole.name=devset-approver",
        "--set",
        "approverRole.aggregateTo={admin,edit}",
    ]);
    let labels = &named(&d, "ClusterRole", "devset-approver")["metadata"]["labels"];
    assert_eq!(
        labels["rbac.authorization.k8s.io/aggregate-to-admin"],
        "true"
    );
    assert_eq!(
        labels["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    let d = render(&["--set", "approverRole.create=false"]);
    assert_eq!(find(&d, "ClusterRole").len(), 1, "only the operator's");

    // A PVC for SQLite.
    let d = render(&["--set", "store.sqlite.persistence.enabled=true"]);
    let pvc = find(&d, "PersistentVolumeClaim");
    assert_eq!(pvc.len(), 1);
    assert_eq!(
        find(&d, "Deployment")[0]["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
            ["claimName"],
        name(pvc[0])
    );

    // Combinations that cannot work fail with a reason.
    for (set, reason) in [
        ("replicas=2", "requires store.type=postgres"),
        (
            "store.type=postgres",
            "requires store.postgres.secretRef.name",
        ),
        ("api.auth=basic", "api.auth must be kubernetes or none"),
        (
            "approverRole.aggregateTo={cluster-admin}",
            "approverRole.aggregateTo takes admin, edit or view",
        ),
    ] {
        let out = env().helm(&["template", "x", CHART, "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(reason),
            "{set}: {err}"
        );
    }
}

/// What a document looks like minus what Helm and kustomize label differently (and with
/// numbers as floats: kustomize writes `0` where the CRD says `0.0`).
fn normalized(mut doc: Value) -> Value {
    fn numbers(v: &mut Value) {
        match v {
            Value::Number(n) => *v = Value::from(n.as_f64().unwrap()),
            Value::Sequence(s) => s.iter_mut().for_each(numbers),
            Value::Mapping(m) => m.values_mut().for_each(numbers),
            _ => {}
        }
    }
    if let Some(labels) = doc["metadata"]["labels"].as_mapping_mut() {
        labels.remove("helm.sh/chart");
        labels.remove("app.kubernetes.io/managed-by");
    }
    numbers(&mut doc);
    doc
}

/// The first path where `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => x.keys().chain(y.keys()).find_map(|k| {
            let key = k.as_str().unwrap_or("?");
            match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, format!("{path}.{key}")),
                _ => Some(format!("{path}.{key}: only on one side")),
            }
        }),
        (Value::Sequence(x), Value::Sequence(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{path}[{i}]"))),
        _ => (a != b).then(|| format!("{path}: {a:?} vs {b:?}")),
    }
}

fn by_key(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter()
        .filter(|d| kind(d) != "Namespace")
        .map(|d| {
            let key = format!(
                "{}/{}/{}",
                kind(&d),
                d["metadata"]["namespace"].as_str().unwrap_or(""),
                name(&d)
            );
            (key, normalized(d))
        })
        .collect()
}

/// `config/` as the chart renders with its defaults into `devset-system`: the files
/// `DEVSET_UPDATE_CONFIG=1` writes.
fn chart_as_config() -> Vec<(&'static str, Vec<Value>)> {
    let d = render(&[]);
    // `suffix`: the part of the name after the release's (`-leader-election`, `-approver`).
    let pick = |k: &str, suffix: &str| -> Vec<Value> {
        d.iter()
            .filter(|x| kind(x) == k && name(x) == format!("devset-operator{suffix}"))
            .map(|x| {
                let mut x = x.clone();
                if let Some(labels) = x["metadata"]["labels"].as_mapping_mut() {
                    labels.remove("helm.sh/chart");
                    labels.insert("app.kubernetes.io/managed-by".into(), "kustomize".into());
                }
                x
            })
            .collect()
    };
    vec![
        ("rbac/service_account.yaml", pick("ServiceAccount", "")),
        ("rbac/role.yaml", pick("ClusterRole", "")),
        ("rbac/role_binding.yaml", pick("ClusterRoleBinding", "")),
        ("rbac/approver_role.yaml", pick("ClusterRole", "-approver")),
        (
            "policy/decision_policy.yaml",
            [
                pick("ValidatingAdmissionPolicy", "-decisions"),
                pick("ValidatingAdmissionPolicyBinding", "-decisions"),
            ]
            .concat(),
        ),
        (
            "policy/triggered_by_policy.yaml",
            [
                pick("ValidatingAdmissionPolicy", "-triggered-by"),
                pick("ValidatingAdmissionPolicyBinding", "-triggered-by"),
            ]
            .concat(),
        ),
        (
            "rbac/leader_election_role.yaml",
            pick("Role", "-leader-election"),
        ),
        (
            "rbac/leader_election_role_binding.yaml",
            pick("RoleBinding", "-leader-election"),
        ),
        ("manager/manager.yaml", pick("Deployment", "")),
        ("manager/service.yaml", pick("Service", "")),
    ]
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn kustomize_config_default_is_the_chart_and_applies() {
    let config = repo().join("config");
    if std::env::var_os("DEVSET_UPDATE_CONFIG").is_some() {
        for (file, docs) in chart_as_config() {
            let text: Vec<String> = docs
                .iter()
                .map(|d| serde_yaml::to_string(d).unwrap())
                .collect();
            let header = "# Generated from charts/devset-operator (its defaults, namespace devset-system)\n\
                          # by DEVSET_UPDATE_CONFIG=1 cargo test --test packaging kustomize -- --ignored\n";
            std::fs::write(config.join(file), format!("{header}{}", text.join("---\n"))).unwrap();
        }
    }
    // The same objects as the chart (plus the Namespace), field for field; the cluster-scoped
    // admission policy is in config/policy, outside config/default's namespace.
    let is_policy = |d: &Value| kind(d).starts_with("ValidatingAdmissionPolicy");
    let (policy, rest): (Vec<Value>, Vec<Value>) =
        render(&["--include-crds"]).into_iter().partition(is_policy);
    let chart = by_key(rest);
    let policy_config =
        by_key(docs(&env().kubectl_ok(&[
            "kustomize",
            config.join("policy").to_str().unwrap(),
        ])));
    let policy = by_key(policy);
    assert_eq!(
        policy.keys().collect::<Vec<_>>(),
        policy_config.keys().collect::<Vec<_>>(),
        "config/policy holds the chart's admission policy; regenerate with DEVSET_UPDATE_CONFIG=1"
    );
    for (key, doc) in &policy {
        let diff = first_difference(doc, &policy_config[key], String::new());
        assert!(
            diff.is_none(),
            "{key} differs from config/policy at {diff:?}"
        );
    }
    let kustomized =
        by_key(docs(&env().kubectl_ok(&[
            "kustomize",
            config.join("default").to_str().unwrap(),
        ])));
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        kustomized.keys().collect::<Vec<_>>(),
        "config/default installs the chart's objects; regenerate with DEVSET_UPDATE_CONFIG=1"
    );
    for (key, doc) in &chart {
        let diff = first_difference(doc, &kustomized[key], String::new());
        assert!(
            diff.is_none(),
            "{key} differs between the chart and config/default at {diff:?}; regenerate with \
             DEVSET_UPDATE_CONFIG=1 cargo test --test packaging kustomize -- --ignored"
        );
    }

    // It applies (server-side, as GitOps tools do) and creates the workload and its RBAC.
    let base = config.join("default");
    env().kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=devset-tests",
        "-k",
        base.to_str().unwrap(),
    ]);
    assert_installed("devset-system", "devset-operator");
    // The approvers' ClusterRole, bound to a group, grants the verb approve and nothing more
    // (in a namespace of its own: devset-system may still be terminating from an earlier run).
    let team = TestNamespace::new("approvers");
    env().kubectl_ok(&[
        "create",
        "rolebinding",
        "release-managers-approve",
        "--clusterrole=devset-operator-approver",
        "--group=release-managers",
        "-n",
        &team.name,
    ]);
    let can = |verb: &str| {
        let out = env().kubectl(&[
            "auth",
            "can-i",
            verb,
            "workflowruns.devset.io",
            "-n",
            &team.name,
            "--as=carol",
            "--as-group=release-managers",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for (verb, want) in [
        ("approve", "yes"),
        ("get", "yes"),
        ("list", "yes"),
        ("patch", "no"),
        ("delete", "no"),
    ] {
        assert_eq!(can(verb), want, "a release manager may {verb}: {want}");
    }
    // Clean up everything but the CRDs (other tests use them).
    env().kubectl_ok(&[
        "delete",
        "clusterrole/devset-operator",
        "clusterrole/devset-operator-approver",
        "clusterrolebinding/devset-operator",
    ]);
    let _ = env().kubectl(&["delete", "namespace", "devset-system", "--wait=false"]);
}

/// The workload, its Service, ServiceAccount and RBAC exist (`fullname` is the objects' name).
fn assert_installed(ns: &str, fullname: &str) {
    let names = [
        format!("deployment/{fullname}"),
        format!("service/{fullname}"),
        format!("serviceaccount/{fullname}"),
        format!("role/{fullname}-leader-election"),
        format!("rolebinding/{fullname}-leader-election"),
    ];
    let mut args = vec!["get", "-n", ns, "-o", "name"];
    args.extend(names.iter().map(String::as_str));
    let got = env().kubectl_ok(&args);
    assert_eq!(got.lines().count(), names.len(), "{got}");
    env().kubectl_ok(&[
        "get",
        &format!("clusterrole/{fullname}"),
        &format!("clusterrole/{fullname}-approver"),
        &format!("clusterrolebinding/{fullname}"),
    ]);
}

/// Runs `kubectl` with the kubeconfig at `kubeconfig`.
fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    env()
        .command("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn helm_install_its_rbac_runs_a_workflow_and_nothing_more_then_uninstall() {
    let release_ns = TestNamespace::new("helm");
    let work = TestNamespace::new("helm-work");
    let other = TestNamespace::new("helm-other");
    let release = unique("rel");
    let fullname = format!("{release}-devset-operator");
    env().helm_ok(&[
        "install",
        &release,
        CHART,
        "-n",
        &release_ns.name,
        "--set",
        &format!("watchNamespaces={{{}}}", work.name),
    ]);
    // CRDs, RBAC, Deployment, Service.
    env().kubectl_ok(&[
        "get",
        "crd/brokerconnectors.devset.io",
        "crd/workflows.devset.io",
        "crd/workflowruns.devset.io",
    ]);
    assert_installed(&release_ns.name, &fullname);
    env().kubectl_ok(&[
        "get",
        "-n",
        &work.name,
        &format!("role/{fullname}"),
        &format!("rolebinding/{fullname}"),
    ]);
    wait_for(Duration::from_secs(30), || {
        env()
            .kubectl(&["get", "runs", "-n", &work.name])
            .status
            .success()
    });

    // The binaries, outside the cluster, as the chart's ServiceAccount.
    let token = env().kubectl_ok(&[
        "create",
        "token",
        &fullname,
        "-n",
        &release_ns.name,
        "--duration=1h",
    ]);
    let kubeconfig = token_kubeconfig(&format!("{release}-sa"), token.trim());
    let kc = kubeconfig.to_str().unwrap();
    let store = sqlite_store(&work.name);
    let _controller = ControllerProcess::start_with_env(
        &work.name,
        10,
        0,
        &store,
        &[
            ("KUBECONFIG", kc),
            ("DEVSET_LEADER_ELECT", "true"),
            ("DEVSET_LEADER_ELECTION_ID", &fullname),
            ("POD_NAMESPACE", &release_ns.name),
        ],
    );
    let api = ApiProcess::start_with_env(&work.name, &store, "kubernetes", &[("KUBECONFIG", kc)]);

    // The samples (config/samples: two connectors, a workflow, a run), applied by "GitOps" with
    // server-side apply through an overlay that only points the connectors at the test brokers.
    let (amqp, user, password) = env().amqp_parts();
    let overlay = repo()
        .join("target/it-logs")
        .join(format!("{release}-overlay"));
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: {ns}\nresources: [../../../config/samples]\npatches:\n\
             - target: {{kind: BrokerConnector, name: kafka}}\n  patch: |-\n\
             \x20   - {{op: replace, path: /spec/kafka/bootstrapServers, value: \"{kafka}\"}}\n\
             - target: {{kind: BrokerConnector, name: rabbitmq}}\n  patch: |-\n\
             \x20   - {{op: replace, path: /spec/rabbitmq/url, value: \"{amqp}\"}}\n\
             - target: {{kind: Secret, name: rabbitmq-credentials}}\n  patch: |-\n\
             \x20   - {{op: replace, path: /stringData, value: {{username: {user}, password: {password}}}}}\n",
            ns = work.name,
            kafka = env().var("KAFKA_BOOTSTRAP"),
        ),
    )
    .unwrap();
    let samples = overlay.to_str().unwrap().to_owned();
    let gitops = |verb: &'static str| {
        env()
            .command("kubectl")
            .args([
                verb,
                "--server-side",
                "--field-manager=gitops",
                "-k",
                &samples,
            ])
            .output()
            .unwrap()
    };
    let applied = gitops("apply");
    assert!(applied.status.success(), "{applied:?}");
    wait_until(2 * MINUTE, "the sample run to complete", || {
        let phase = env().jsonpath(&work.name, "run", "orders-1", "{.status.phase}");
        assert_ne!(phase, "Failed");
        (phase == "Completed").then_some(())
    });
    let published = env().jsonpath(&work.name, "run", "orders-1", "{.status.messagesPublished}");
    assert_eq!(published, "200", "the sample's two stages of 100");
    for bc in ["kafka", "rabbitmq"] {
        let ready = env().jsonpath(
            &work.name,
            "bc",
            bc,
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        );
        assert_eq!(ready, "True", "the sample connector {bc} is Ready");
    }
    // The Lease is held by the controller, in the release namespace.
    let holder = env().kubectl_ok(&[
        "get",
        "lease",
        &fullname,
        "-n",
        &release_ns.name,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(!holder.is_empty(), "the Lease has a holder");

    // The run's log streams from the API, to a caller allowed to get the run.
    env().kubectl_ok(&["create", "serviceaccount", "reader", "-n", &work.name]);
    env().kubectl_ok(&[
        "create",
        "role",
        "run-reader",
        "--verb=get,list",
        "--resource=workflowruns.devset.io",
        "-n",
        &work.name,
    ]);
    env().kubectl_ok(&[
        "create",
        "rolebinding",
        "run-reader",
        "--role=run-reader",
        &format!("--serviceaccount={}:reader", work.name),
        "-n",
        &work.name,
    ]);
    let reader = env().kubectl_ok(&["create", "token", "reader", "-n", &work.name]);
    let sse = std::process::Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "60",
            "-H",
            &format!("Authorization: Bearer {}", reader.trim()),
            "-H",
            "Accept: text/event-stream",
            &api.url(&format!(
                "/api/v1/namespaces/{}/workflowruns/orders-1/events",
                work.name
            )),
        ])
        .output()
        .expect("curl runs");
    let sse = String::from_utf8_lossy(&sse.stdout);
    assert_eq!(
        sse.matches("event: message.published").count(),
        200,
        "{sse}"
    );
    assert!(sse.contains("\"phase\":\"Completed\""), "{sse}");

    // What the operator must not do is denied.
    env().kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "elsewhere",
        "--from-literal=password=x",
        "-n",
        &other.name,
    ]);
    for (args, what) in [
        (
            vec!["get", "secret", "elsewhere", "-n", &other.name],
            "read a Secret in a namespace it does not watch",
        ),
        (
            vec!["get", "secrets", "-n", &work.name],
            "list Secrets (it reads them one by one)",
        ),
        (
            vec!["delete", "workflow", "orders", "-n", &work.name],
            "delete a workflow (it deletes runs only: TTL and schedule history)",
        ),
        (
            vec!["get", "runs", "-n", &other.name],
            "read runs in a namespace it does not watch",
        ),
        (
            vec!["create", "deployment", "x", "--image=x", "-n", &work.name],
            "create workloads",
        ),
    ] {
        let out = kubectl_as(&kubeconfig, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.to_lowercase().contains("forbidden"),
            "the chart's ServiceAccount must not {what}: {err}"
        );
    }

    // GitOps re-apply after the run: no conflict, no drift; the controller never wrote spec.
    let reapplied = gitops("apply");
    assert!(
        reapplied.status.success(),
        "re-applying conflicts: {reapplied:?}"
    );
    let diff = gitops("diff");
    assert!(
        diff.status.success(),
        "no drift: {}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    let managed = env().kubectl_ok(&[
        "get",
        "run",
        "orders-1",
        "-n",
        &work.name,
        "--show-managed-fields",
        "-o",
        "json",
    ]);
    let managed: serde_json::Value = serde_json::from_str(&managed).unwrap();
    for entry in managed["metadata"]["managedFields"].as_array().unwrap() {
        if entry["manager"] != "gitops" {
            assert!(
                entry["fieldsV1"].get("f:spec").is_none(),
                "only the applier owns spec: {entry}"
            );
        }
    }

    // Uninstall: no workload or RBAC left; the CRDs stay.
    env().helm_ok(&["uninstall", &release, "-n", &release_ns.name, "--wait"]);
    let selector = format!("app.kubernetes.io/instance={release}");
    for (kinds, ns) in [
        (
            "deployments,services,serviceaccounts,roles,rolebindings",
            Some(&release_ns.name),
        ),
        ("roles,rolebindings", Some(&work.name)),
        ("clusterroles,clusterrolebindings", None),
    ] {
        let mut args = vec!["get", kinds, "-l", &selector, "-o", "name"];
        if let Some(ns) = ns {
            args.extend(["-n", ns.as_str()]);
        }
        let left = env().kubectl_ok(&args);
        assert_eq!(left.trim(), "", "left behind: {left}");
    }
    env().kubectl_ok(&["get", "crd/workflowruns.devset.io"]);
}
