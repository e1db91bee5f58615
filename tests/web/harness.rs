//! The Rust side of the browser tests (`tests/web.rs`): a namespace with connectors, workflows,
//! ServiceAccounts, `devset controller` and `devset api`; and the runner of the Playwright
//! scripts in `tests/web/`, which answers their questions (`@@ask` lines) with independent
//! clients: kubectl for `.status`, Kafka's console consumer for messages.

use crate::common::{
    ApiProcess, ControllerProcess, TestNamespace, env, install_crds, repo, sqlite_store, unique,
    wait_until,
};
use serde_json::{Value, json};
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub const MINUTE: Duration = Duration::from_secs(60);

/// The ServiceAccount with every right the page uses in the namespace.
pub const FULL_SA: &str = "alice";
/// The ServiceAccount that may only get and list (and watch).
pub const VIEWER_SA: &str = "viewer";

/// A namespace with the connectors `kafka` and `rabbit`, the test's workflows, two
/// ServiceAccounts, a controller and an API with `--auth=kubernetes`.
pub struct Web {
    pub api: ApiProcess,
    pub _controller: Option<ControllerProcess>,
    pub store: String,
    /// A token of [`FULL_SA`] and of [`VIEWER_SA`].
    pub token: String,
    pub viewer_token: String,
    /// Kafka topics are named from this, so that no two tests share one.
    pub topic: String,
    pub ns: TestNamespace,
}

impl Web {
    pub fn new(prefix: &str, max_active_runs: usize) -> Web {
        Web::with_controller(prefix, Some(max_active_runs))
    }

    /// With a controller of at most `max_active_runs` runs at once, or none (the runs stay as
    /// created: no status).
    pub fn with_controller(prefix: &str, max_active_runs: Option<usize>) -> Web {
        install_crds();
        let ns = TestNamespace::new(prefix);
        let store = sqlite_store(&ns.name);
        let topic = unique(prefix);
        env().apply(&ns.name, &env().connectors());
        env().apply(&ns.name, &workflows(&topic));
        let token = service_account(&ns.name, FULL_SA, FULL_RULES);
        let viewer_token = service_account(&ns.name, VIEWER_SA, VIEWER_RULES);
        let controller = max_active_runs
            .map(|max| ControllerProcess::start_with_store(&ns.name, max, 0, &store));
        let api = ApiProcess::start(&ns.name, &store, "kubernetes");
        Web {
            api,
            _controller: controller,
            store,
            token,
            viewer_token,
            topic,
            ns,
        }
    }

    pub fn ns(&self) -> &str {
        &self.ns.name
    }

    /// The variables every script reads (see tests/web/lib.js).
    pub fn vars(&self) -> Vec<(String, String)> {
        vec![
            ("WEB_URL".into(), self.api.url("")),
            ("WEB_NS".into(), self.ns.name.clone()),
            ("WEB_TOKEN".into(), self.token.clone()),
            ("WEB_SA".into(), FULL_SA.into()),
            ("WEB_VIEWER_TOKEN".into(), self.viewer_token.clone()),
            ("WEB_VIEWER_SA".into(), VIEWER_SA.into()),
            ("WEB_TOPIC".into(), self.topic.clone()),
        ]
    }

    /// A run of `workflow` on `connector` with `params` (YAML flow mapping body).
    pub fn start_run(&self, name: &str, workflow: &str, connector: &str, params: &str) {
        env().apply(
            self.ns(),
            &format!(
                "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: {name}}}\n\
                 spec: {{workflowRef: {{name: {workflow}}}, connectorRef: {{name: {connector}}}, params: {{{params}}}}}\n"
            ),
        );
    }

    /// The schedule `nightly` (03:00 every day: it does not fire during a test) of one order.
    pub fn nightly_schedule(&self) {
        env().apply(
            self.ns(),
            "apiVersion: devset.io/v1alpha1\nkind: WorkflowSchedule\nmetadata: {name: nightly}\n\
             spec:\n  schedule: \"0 3 * * *\"\n  runTemplate:\n    spec: {workflowRef: {name: orders}, \
             connectorRef: {name: kafka}, params: {orders: 1, region: nightly}}\n",
        );
    }

    /// `kubectl get RESOURCE NAME -o jsonpath=PATH` in the test's namespace.
    pub fn jsonpath(&self, resource: &str, name: &str, path: &str) -> String {
        env().jsonpath(self.ns(), resource, name, path)
    }

    pub fn phase(&self, run: &str) -> String {
        self.jsonpath("workflowrun", run, "{.status.phase}")
    }

    pub fn wait_phase(&self, run: &str, phase: &str, timeout: Duration) {
        wait_until(timeout, &format!("{run} to be {phase}"), || {
            (self.phase(run) == phase).then_some(())
        });
    }

    /// The answers every script may ask for:
    /// - `jsonpath {resource, name, path}`: kubectl's output (admin);
    /// - `runs {}`: every WorkflowRun of the namespace as kubectl prints it (`-o json`);
    /// - `restart-api {}`: SIGKILL `devset api` and start it again on the same port;
    /// - `kafka-count {topic}`: Kafka's own count of the topic's messages;
    /// - `kafka-read {topic, n}`: the first n messages with headers and key (Kafka's console
    ///   consumer): `[{headers: {..}, key, value}]`.
    pub fn answer(&mut self, name: &str, data: &Value) -> Result<Value, String> {
        let s = |k: &str| data[k].as_str().unwrap_or_default().to_owned();
        match name {
            "jsonpath" => Ok(json!(self.jsonpath(&s("resource"), &s("name"), &s("path")))),
            "runs" => {
                let out = env().kubectl_ok(&["get", "workflowruns", "-n", self.ns(), "-o", "json"]);
                serde_json::from_str(&out).map_err(|e| e.to_string())
            }
            "restart-api" => {
                let port = self.api.port;
                let _ = self.api.child.kill();
                let _ = self.api.child.wait();
                println!("devset api killed (port {port}); starting it again");
                self.api = ApiProcess::start_on(self.ns(), &self.store, "kubernetes", port, &[]);
                Ok(json!(port))
            }
            "kafka-count" => Ok(json!(env().count("kafka-count", &s("topic")))),
            "kafka-read" => Ok(json!(kafka_read(
                &s("topic"),
                data["n"].as_u64().unwrap_or(1)
            ))),
            _ => Err(format!("unknown question {name:?}")),
        }
    }

    /// Runs `tests/web/SCRIPT.js` with [`Web::vars`] and `extra`, answering with [`Web::answer`].
    pub fn script(&mut self, script: &str, extra: &[(&str, String)], timeout: Duration) -> String {
        self.script_with(script, extra, timeout, |_, _, _| None)
    }

    /// The same with questions of the test's own: `own` answers `Some` for those it knows.
    pub fn script_with(
        &mut self,
        script: &str,
        extra: &[(&str, String)],
        timeout: Duration,
        mut own: impl FnMut(&mut Web, &str, &Value) -> Option<Result<Value, String>>,
    ) -> String {
        let mut vars = self.vars();
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        run_script(script, &vars, timeout, |name, data| {
            own(self, name, data).unwrap_or_else(|| self.answer(name, data))
        })
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!("--- the namespace's runs ---");
            let out = env().kubectl(&["get", "runs", "-n", self.ns(), "-o", "wide"]);
            println!("{}", String::from_utf8_lossy(&out.stdout));
        }
        // Delete the runs while the controller still runs, so that their finalizers go and the
        // namespace can go too.
        if self._controller.is_some() {
            let _ = env().kubectl(&["delete", "runs", "--all", "-n", self.ns(), "--timeout=30s"]);
        }
    }
}

/// Every right the page uses, on every kind devset has.
const FULL_RULES: &[(&str, &str)] = &[
    (
        "workflowruns.devset.io",
        "get,list,watch,create,patch,update,delete,approve",
    ),
    ("workflows.devset.io", "get,list,watch"),
    ("brokerconnectors.devset.io", "get,list,watch"),
    ("workflowschedules.devset.io", "get,list,watch,patch,update"),
];

/// Looking only.
const VIEWER_RULES: &[(&str, &str)] = &[
    ("workflowruns.devset.io", "get,list,watch"),
    ("workflows.devset.io", "get,list,watch"),
    ("brokerconnectors.devset.io", "get,list,watch"),
    ("workflowschedules.devset.io", "get,list,watch"),
];

/// A ServiceAccount bound to a Role of `rules` (resource, verbs) by a RoleBinding; its token from
/// `kubectl create token`.
pub fn service_account(ns: &str, name: &str, rules: &[(&str, &str)]) -> String {
    env().kubectl_ok(&["-n", ns, "create", "serviceaccount", name]);
    let mut role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}}}\nrules:\n"
    );
    for (resource, verbs) in rules {
        let (plural, group) = resource.split_once('.').unwrap();
        role.push_str(&format!(
            "- {{apiGroups: [\"{group}\"], resources: [\"{plural}\"], verbs: [{}]}}\n",
            verbs
                .split(',')
                .map(|v| format!("\"{v}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    role.push_str(&format!(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\n\
         subjects: [{{kind: ServiceAccount, name: {name}, namespace: {ns}}}]\n"
    ));
    env().apply(ns, &role);
    env()
        .kubectl_ok(&["-n", ns, "create", "token", name, "--duration=2h"])
        .trim()
        .to_owned()
}

/// The workflows the tests start, their topics named from `t`:
/// - `orders`: params `orders` (integer, default 3) and `region` (string, required); publishes
///   `orders` JSON messages with a key and headers to `T-orders`, then waits 3 s;
/// - `gated`: publishes 2 to `T-before`, waits for the approval `go-live`, publishes 4 to
///   `T-after` (carrying the decision's user and comment);
/// - `queued`: 2 JSON messages with a key and a header to the RabbitMQ queue `T-q`;
/// - `long`: `count` messages (default 3000) at `rate` per second (default 150) to `T-long`;
/// - `big`: `count` messages (default 100,000) as fast as Kafka takes them to `T-big`.
pub fn workflows(t: &str) -> String {
    format!(
        r#"apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: orders}}
spec:
  description: Publishes orders, then lets them settle
  params:
    - {{name: orders, type: integer, default: 3, description: how many orders to publish}}
    - {{name: region, type: string, required: true, description: where the orders come from}}
  stages:
    - name: publish
      publish:
        topic: {t}-orders
        count: "{{{{ params.orders }}}}"
        key: 'order-{{{{ seq }}}}'
        headers: {{source: devset-web, region: '{{{{ params.region }}}}'}}
        payload: '{{"orderId": {{{{ seq }}}}, "region": "{{{{ params.region }}}}", "items": [{{"sku": "a-{{{{ seq }}}}", "qty": 2}}]}}'
    - {{name: settle, delay: {{duration: 3s}}}}
---
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: gated}}
spec:
  stages:
    - name: first
      publish: {{topic: {t}-before, count: 2, payload: 'o {{{{ seq }}}}'}}
    - name: go-live
      approval: {{message: "publish the rest?"}}
    - name: rest
      publish:
        topic: {t}-after
        count: 4
        payload: 'approved by {{{{ stages.go-live.outputs.user }}}}: {{{{ stages.go-live.outputs.comment }}}}'
---
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: queued}}
spec:
  stages:
    - name: publish
      publish:
        queue: {t}-q
        count: 2
        key: 'q-{{{{ seq }}}}'
        headers: {{source: devset-web}}
        payload: '{{"orderId": {{{{ seq }}}}, "via": "rabbitmq"}}'
---
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: long}}
spec:
  params:
    - {{name: count, type: integer, default: 3000}}
    - {{name: rate, type: integer, default: 150}}
  stages:
    - name: publish
      publish: {{topic: {t}-long, count: "{{{{ params.count }}}}", ratePerSecond: "{{{{ params.rate }}}}", key: 'k-{{{{ seq }}}}', payload: 'm {{{{ seq }}}}'}}
---
apiVersion: devset.io/v1alpha1
kind: Workflow
metadata: {{name: big}}
spec:
  params:
    - {{name: count, type: integer, default: 100000}}
  stages:
    - name: publish
      publish: {{topic: {t}-big, count: "{{{{ params.count }}}}", key: 'k-{{{{ seq }}}}', payload: '{{"n": {{{{ seq }}}}}}'}}
"#
    )
}

/// The first `n` messages of `topic` with their headers and keys, read by Kafka's console
/// consumer (`tests/bin/kafka-consume -H -k`).
pub fn kafka_read(topic: &str, n: u64) -> Vec<Value> {
    let out = env().client("kafka-consume", &["-H", "-k", topic, &n.to_string(), "30"]);
    assert!(
        out.status.success(),
        "kafka-consume {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, '\t');
            let (h, k, v) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let headers: serde_json::Map<String, Value> = if h == "NO_HEADERS" {
                Default::default()
            } else {
                h.split(',')
                    .filter_map(|kv| kv.split_once(':'))
                    .map(|(k, v)| (k.to_owned(), json!(v)))
                    .collect()
            };
            json!({"headers": headers, "key": k, "value": v})
        })
        .collect()
}

/// The first `n` messages of the RabbitMQ queue `queue`, taken with lapin's `basic_get`:
/// `[{headers: {..}, key (the header devset.key), value}]`.
pub fn rabbitmq_read(queue: &str, n: usize) -> Vec<Value> {
    use lapin::{Connection, ConnectionProperties, options::BasicGetOptions, types::AMQPValue};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = Connection::connect(env().var("AMQP_URL"), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < n {
            assert!(Instant::now() < deadline, "{} of {n} messages", out.len());
            let Some(got) = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic_get")
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut headers = serde_json::Map::new();
            if let Some(h) = got.delivery.properties.headers() {
                for (k, v) in h.inner() {
                    if let AMQPValue::LongString(s) = v {
                        headers.insert(k.to_string(), json!(s.to_string()));
                    }
                }
            }
            let key = headers.get("devset.key").cloned().unwrap_or_default();
            let value = String::from_utf8_lossy(&got.delivery.data).into_owned();
            out.push(json!({"headers": headers, "key": key, "value": value}));
        }
        conn.close(200, "done".into()).await.ok();
        out
    })
}

/// Runs `node tests/web/SCRIPT.js` with `vars` (and CHROMIUM, NODE_PATH, the screenshot
/// folders) in a process group of its own, answering each `@@ask {id, name, data}` line on its
/// stdin with `{"value": …}` or `{"error": …}`. Everything else it prints is printed here (the
/// test harness shows it when the test fails) and written to `target/it-logs/web-SCRIPT-*.log`.
/// Panics, with that output, when the script fails or runs longer than `timeout`.
pub fn run_script(
    script: &str,
    vars: &[(String, String)],
    timeout: Duration,
    mut ask: impl FnMut(&str, &Value) -> Result<Value, String>,
) -> String {
    let file = repo().join("tests/web").join(format!("{script}.js"));
    let shots = repo().join("target/web-screenshots");
    let mut cmd = env().command("node");
    cmd.arg(&file)
        .current_dir(repo())
        .env("NODE_PATH", env().var("DEVSET_WEB_NODE_MODULES"))
        .env("CHROMIUM", env().var("CHROMIUM"))
        .env("WEB_SCREENSHOTS", &shots)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if std::env::var("DEVSET_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        cmd.env("WEB_DOCS_IMAGES", repo().join("docs/images"));
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("node runs (Node.js 20+)");
    let group = child.id();
    let _guard = KillGroup(group);
    // A watchdog kills the script's process group (node and its Chromium) after `timeout`.
    let (done, watch) = mpsc::channel::<()>();
    let name = script.to_owned();
    std::thread::spawn(move || {
        if watch.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
            println!("{name}: no end after {timeout:?}; killing it");
            kill_group(group);
        }
    });
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut output = String::new();
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(q) = line.strip_prefix("@@ask ") {
            let q: Value = serde_json::from_str(q).expect("an @@ask line is JSON");
            let name = q["name"].as_str().unwrap_or_default();
            let t = Instant::now();
            let answer = match ask(name, &q["data"]) {
                Ok(value) => json!({"id": q["id"], "value": value}),
                Err(error) => json!({"id": q["id"], "error": error}),
            };
            let note = format!("  (asked {name}: {:.1} s)", t.elapsed().as_secs_f64());
            println!("{note}");
            output.push_str(&note);
            output.push('\n');
            let _ = writeln!(stdin, "{answer}");
        } else {
            println!("{line}");
            output.push_str(&line);
            output.push('\n');
        }
    }
    let status = child.wait().expect("wait for node");
    let _ = done.send(());
    let errors = errors.join().unwrap_or_default();
    let secs = started.elapsed().as_secs_f64();
    let logs = repo().join("target/it-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let _ = std::fs::write(
        logs.join(format!("web-{script}-{}.log", unique("s"))),
        format!("{output}\n--- stderr ---\n{errors}"),
    );
    if !errors.is_empty() {
        println!("--- {script} stderr ---\n{errors}");
    }
    assert!(
        status.success(),
        "tests/web/{script}.js failed ({status}) after {secs:.1} s; its output is above"
    );
    println!("tests/web/{script}.js passed in {secs:.1} s");
    output
}

/// Kills a script's process group when dropped (a panic in a handler leaves no browser behind).
struct KillGroup(u32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}
