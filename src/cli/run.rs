//! `devset run`: one workflow run on this machine, no cluster, through the same engine as the
//! controller ([`runner::run`]). Brokers come from `--kafka`/`--amqp`, from BrokerConnector
//! files (credentials from Secrets in the files), or else an embedded Kafka broker: librdkafka's
//! mock cluster, in this process.

use super::{
    ask::{Preset, TerminalApprovals, can_ask},
    lint::check_docs,
    manifests::{self, Doc},
    render::Output,
    reporter::Reporter,
};
use crate::{
    api::{BrokerConnector, RunPhase, Workflow, WorkflowRun},
    brokers::{self, BrokerConfig},
    engine::{
        amounts,
        params::{ParamError, resolve_params},
        runner::{self, Observer, RunInput, RunOutcome},
        template::target_of,
    },
    events::RunKey,
};
use indicatif::MultiProgress;
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// Exit code of a run that `Failed`.
pub const EXIT_FAILED: u8 = 1;
/// Exit code of bad input: a file, a param, a broker that cannot be reached.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code of a run `Stopped` by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_STOPPED: u8 = 130;

/// How long a broker may take to answer the check before the run.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run a workflow on this machine, without a cluster.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// A manifest file: the Workflow, and optionally a WorkflowRun (its workflowRef, connectorRef
    /// and params), BrokerConnectors and the Secrets they name. Several documents per file are
    /// fine (`---`); `-` reads stdin. Repeat for more files.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Set a param, overriding the WorkflowRun's spec.params. Repeat for more.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Publish the Kafka stages to this cluster (bootstrap servers, `host:port[,host:port]`),
    /// whatever the connector files say.
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka: Option<String>,
    /// Publish the RabbitMQ stages to this broker (`amqp://USER:PASSWORD@HOST:PORT/VHOST`),
    /// whatever the connector files say.
    #[arg(long, value_name = "URL")]
    pub amqp: Option<String>,
    /// `text`: progress bars, one line per event and a summary; `json`: the events as JSON lines
    /// on stdout (the summary goes to stderr).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// With text output, print a line for every published and received message too.
    #[arg(long)]
    pub show_messages: bool,
    /// Approve approval stages without asking: every one (`--approve`), or the stage named
    /// (`--approve=STAGE`, repeatable).
    #[arg(long, value_name = "STAGE", num_args = 0..=1, default_missing_value = "*")]
    pub approve: Vec<String>,
    /// Reject approval stages without asking: every one (`--reject`), or the stage named
    /// (`--reject=STAGE`, repeatable). Without `--approve`/`--reject`, `devset run` asks on the
    /// terminal.
    #[arg(long, value_name = "STAGE", num_args = 0..=1, default_missing_value = "*")]
    pub reject: Vec<String>,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// Where a connector's broker comes from.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    /// `--kafka` or `--amqp`.
    Flag(BrokerConfig, &'static str),
    /// A BrokerConnector file.
    File(BrokerConfig, String),
    /// The embedded Kafka broker.
    Embedded,
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Flag(b, flag) => format!("{} ({flag})", b.describe()),
            Source::File(b, at) => format!("{} ({at})", b.describe()),
            Source::Embedded => "the embedded Kafka broker".into(),
        }
    }
}

/// Everything a run needs, worked out from the files and flags.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) key: RunKey,
    pub(super) workflow: Workflow,
    pub(super) params: BTreeMap<String, serde_json::Value>,
    connectors: BTreeMap<String, Source>,
    default_connector: String,
}

/// An error for people: one line, naming the file and field, or the flag, or the broker.
type Fail = String;

fn one<'a>(docs: &'a [Doc], kind: &str) -> Result<Option<&'a Doc>, Fail> {
    let all: Vec<&Doc> = docs.iter().filter(|d| d.kind() == kind).collect();
    match all.as_slice() {
        [] => Ok(None),
        [d] => Ok(Some(d)),
        many => Err(format!(
            "several {kind}s in the given files ({}); give one",
            many.iter()
                .map(|d| format!("{:?} in {}", d.name(), d.file))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn plan(docs: &[Doc], args: &RunArgs) -> Result<Plan, Fail> {
    let run_doc = one(docs, "WorkflowRun")?;
    let run: Option<WorkflowRun> = run_doc
        .map(Doc::parse)
        .transpose()
        .map_err(|p| p.to_string())?;
    let workflows: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Workflow").collect();
    let wf_doc = match (&run, run_doc, workflows.as_slice()) {
        (Some(r), Some(rd), _) => {
            let name = &r.spec.workflow_ref.name;
            *workflows.iter().find(|d| d.name() == name).ok_or_else(|| {
                format!(
                    "{}:spec.workflowRef.name: Workflow {name:?} is not in the given files; add it with -f",
                    rd.file
                )
            })?
        }
        (_, _, []) => return Err("no Workflow in the given files: give one with -f".into()),
        (_, _, [d]) => d,
        (_, _, _) => {
            return Err(format!(
                "{}; or add a WorkflowRun whose spec.workflowRef names one",
                one(docs, "Workflow").unwrap_err()
            ));
        }
    };
    let workflow: Workflow = wf_doc.parse().map_err(|p| p.to_string())?;
    let wf_name = workflow.metadata.name.clone().unwrap_or_default();

    // Params: the run's, then --param on top.
    let mut given: BTreeMap<String, (serde_json::Value, String)> = BTreeMap::new();
    if let (Some(r), Some(rd)) = (&run, run_doc) {
        for (k, v) in &r.spec.params {
            given.insert(
                k.clone(),
                (v.clone(), format!("{}:spec.params.{k}", rd.file)),
            );
        }
    }
    for (k, v) in &args.params {
        given.insert(
            k.clone(),
            (
                serde_json::Value::String(v.clone()),
                format!("--param {k}={v}"),
            ),
        );
    }
    let values = given
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    let params = resolve_params(&workflow.spec.params, &values).map_err(|e| {
        let declared: Vec<&str> = workflow.spec.params.iter().map(|p| p.name.as_str()).collect();
        let declared = match declared.as_slice() {
            [] => "it declares none".to_owned(),
            d => format!("it declares {}", d.join(", ")),
        };
        match &e {
            ParamError::Unknown { name } => format!(
                "{}: the Workflow {wf_name:?} ({}) has no param {name:?}; {declared}",
                given[name].1, wf_doc.file
            ),
            ParamError::WrongType { name, .. } if given.contains_key(name) => {
                format!("{}: {e}", given[name].1)
            }
            ParamError::Missing { name } => format!(
                "param {name:?} of the Workflow {wf_name:?} ({}) is required: set it with --param {name}=VALUE",
                wf_doc.file
            ),
            _ => format!("{}:spec.params: {e}", wf_doc.file),
        }
    })?;

    // Connectors.
    let connector_docs: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "BrokerConnector")
        .collect();
    // Without a run, stages that name no connector use the one connector file of their kind.
    let default_connector = run
        .as_ref()
        .map_or_else(|| "local".to_owned(), |r| r.spec.connector_ref.name.clone());
    // Which kind of broker each connector must be, from the targets of its stages.
    let mut needs: BTreeMap<String, BTreeMap<&'static str, Vec<String>>> = BTreeMap::new();
    for s in &workflow.spec.stages {
        let (connector, kafka) = match (&s.publish, &s.expect) {
            (Some(p), _) => (
                p.connector_ref.as_ref(),
                matches!(target_of(p), crate::message::Target::Topic(_)),
            ),
            (_, Some(e)) => (e.connector_ref.as_ref(), e.topic.is_some()),
            _ => continue,
        };
        let name = connector.map_or(&default_connector, |r| &r.name);
        let kind = if kafka { "kafka" } else { "rabbitmq" };
        needs
            .entry(name.clone())
            .or_default()
            .entry(kind)
            .or_default()
            .push(s.name.clone());
    }
    let secrets = secrets(docs)?;
    let mut connectors = BTreeMap::new();
    for (name, kinds) in needs {
        if kinds.len() > 1 {
            return Err(format!(
                "connector {name:?} is used by Kafka stages ({}) and RabbitMQ stages ({}); give those stages connectorRefs of their own",
                kinds["kafka"].join(", "),
                kinds["rabbitmq"].join(", ")
            ));
        }
        let (kind, stages) = kinds.into_iter().next().expect("one kind");
        let file = match connector_docs.iter().find(|d| d.name() == name) {
            None if run.is_none() && name == default_connector => {
                let of_kind: Vec<&&Doc> = connector_docs
                    .iter()
                    .filter(|d| d.value["spec"][kind].is_object())
                    .collect();
                match of_kind.as_slice() {
                    [d] => Some(*d),
                    [] => None,
                    many => {
                        return Err(format!(
                            "several {kind} BrokerConnectors in the given files ({}): add a WorkflowRun whose spec.connectorRef names one",
                            many.iter()
                                .map(|d| format!("{:?} in {}", d.name(), d.file))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
            }
            found => found,
        };
        let source = match (kind, &args.kafka, &args.amqp, file) {
            ("kafka", Some(k), _, _) => Source::Flag(BrokerConfig::kafka(k), "--kafka"),
            ("rabbitmq", _, Some(url), _) => Source::Flag(
                BrokerConfig::amqp(url).map_err(|e| format!("--amqp: {e}"))?,
                "--amqp",
            ),
            (_, _, _, Some(d)) => {
                let bc: BrokerConnector = d.parse().map_err(|p| p.to_string())?;
                let cfg = BrokerConfig::from_spec(&bc.spec, |s| secrets.get(s).cloned())
                    .map_err(|e| match e {
                        brokers::ConfigError::Invalid(_) => format!("{}: {e}", d.file),
                        _ => format!(
                            "{}: BrokerConnector {name:?}: {e} in the given files; add the Secret with -f, or pass --{}",
                            d.file,
                            if kind == "kafka" { "kafka HOST:PORT" } else { "amqp URL" }
                        ),
                    })?;
                Source::File(cfg, format!("BrokerConnector {name:?} in {}", d.file))
            }
            ("kafka", None, _, None) => Source::Embedded,
            _ => {
                return Err(format!(
                    "stage(s) {} use RabbitMQ through connector {name:?}, but no RabbitMQ broker was given: pass --amqp amqp://USER:PASSWORD@HOST:5672/%2f, or -f a BrokerConnector file named {name:?}",
                    stages.join(", ")
                ));
            }
        };
        connectors.insert(name, source);
    }
    amounts::check(&workflow.spec, &params).map_err(|e| format!("{}: {e}", wf_doc.file))?;
    // Approval stages need a decision: from the flags, or a person at the terminal.
    let preset = Preset {
        approve: args.approve.clone(),
        reject: args.reject.clone(),
    };
    let unanswered: Vec<&str> = workflow
        .spec
        .stages
        .iter()
        .filter(|s| s.approval.is_some() && preset.decision(&s.name).is_none())
        .map(|s| s.name.as_str())
        .collect();
    if !unanswered.is_empty() && !can_ask() {
        return Err(format!(
            "approval stage(s) {} need a decision and stdin is not a terminal to ask on: pass --approve or --reject (for every stage, or =STAGE for one)",
            unanswered.join(", ")
        ));
    }
    let (name, namespace) = match &run {
        Some(r) => (
            r.metadata.name.clone().unwrap_or_default(),
            r.metadata.namespace.clone(),
        ),
        None => (
            format!("{wf_name}-local"),
            workflow.metadata.namespace.clone(),
        ),
    };
    Ok(Plan {
        key: RunKey::new(namespace.unwrap_or_else(|| "default".into()), name),
        workflow,
        params,
        connectors,
        default_connector,
    })
}

/// The data of the Secrets in the files, by name.
fn secrets(docs: &[Doc]) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, Fail> {
    let mut out = BTreeMap::new();
    for d in docs.iter().filter(|d| d.kind() == "Secret") {
        let s: k8s_openapi::api::core::v1::Secret = d.parse().map_err(|p| p.to_string())?;
        let mut data: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in s.string_data.unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        out.insert(d.name().to_owned(), data);
    }
    Ok(out)
}

/// Runs `devset run`.
pub fn run(args: &RunArgs) -> ExitCode {
    let bad = |lines: &[String]| {
        for l in lines {
            eprintln!("error: {l}");
        }
        ExitCode::from(EXIT_BAD_INPUT)
    };
    let mut docs = match manifests::load(&args.files) {
        Ok(d) => d,
        Err(problems) => {
            return bad(&problems.iter().map(ToString::to_string).collect::<Vec<_>>());
        }
    };
    let problems = check_docs(&mut docs);
    if !problems.is_empty() {
        return bad(&problems.iter().map(ToString::to_string).collect::<Vec<_>>());
    }
    let plan = match plan(&docs, args) {
        Ok(p) => p,
        Err(e) => return bad(&[e]),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return bad(&[format!("cannot start the async runtime: {e}")]),
    };
    let code = rt.block_on(execute(plan, args));
    // librdkafka's threads may linger briefly; don't wait for them.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn execute(plan: Plan, args: &RunArgs) -> ExitCode {
    let notice = |text: &str| eprintln!("devset: {text}");
    // The embedded broker, when a Kafka connector has no other source.
    let embedded_topics: BTreeSet<String> = plan
        .workflow
        .spec
        .stages
        .iter()
        .filter_map(|s| {
            let (topic, connector) = match (&s.publish, &s.expect) {
                (Some(p), _) => (p.topic.clone(), p.connector_ref.as_ref()),
                (_, Some(e)) => (e.topic.clone(), e.connector_ref.as_ref()),
                _ => return None,
            };
            let name = connector.map_or(&plan.default_connector, |r| &r.name);
            (plan.connectors.get(name) == Some(&Source::Embedded)).then_some(topic)?
        })
        .collect();
    let mock = if embedded_topics.is_empty() {
        None
    } else {
        match EmbeddedKafka::start(&embedded_topics) {
            Ok(m) => {
                let names: Vec<&str> = plan
                    .connectors
                    .iter()
                    .filter(|(n, s)| **s == Source::Embedded && *n != "local")
                    .map(|(n, _)| n.as_str())
                    .collect();
                let why = match names.as_slice() {
                    [] => "no broker given".to_owned(),
                    n => format!(
                        "no broker given for connector {} (not in the given files)",
                        n.join(", ")
                    ),
                };
                notice(&format!(
                    "{why}: publishing to an embedded Kafka broker (librdkafka's mock cluster) at {}; its messages are gone when this command ends. Use --kafka, --amqp or a BrokerConnector file (-f) for a real broker.",
                    m.bootstrap
                ));
                Some(m)
            }
            Err(e) => {
                eprintln!("error: cannot start the embedded Kafka broker: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        }
    };
    let mut brokers = BTreeMap::new();
    let mut checked = BTreeSet::new();
    for (name, source) in &plan.connectors {
        let cfg = match source {
            Source::Flag(c, _) | Source::File(c, _) => c.clone(),
            Source::Embedded => BrokerConfig::kafka(&mock.as_ref().expect("started").bootstrap),
        };
        if !matches!(source, Source::Embedded)
            && checked.insert(format!("{cfg:?}"))
            && let Err(e) = brokers::probe(&cfg, PROBE_TIMEOUT).await
        {
            eprintln!("error: cannot reach {}: {e}", source.describe());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
        brokers.insert(name.clone(), cfg);
    }

    let wf_name = plan.workflow.metadata.name.clone().unwrap_or_default();
    let spec = plan.workflow.spec.clone();
    let multi = MultiProgress::new();
    let reporter = Arc::new(Reporter::new(&plan, args, &multi));
    let printer = reporter.printer(args.output, multi.clone());
    let through = plan
        .connectors
        .values()
        .map(Source::describe)
        .collect::<Vec<_>>()
        .join(" and ");
    let message = match through.as_str() {
        "" => format!("running workflow {wf_name:?}"),
        t => format!("running workflow {wf_name:?} through {t}"),
    };
    reporter.phase(RunPhase::Running, "Running", &message);
    let started = Instant::now();
    let approvals = TerminalApprovals {
        preset: Preset {
            approve: args.approve.clone(),
            reject: args.reject.clone(),
        },
        multi: multi.clone(),
        asking: Default::default(),
    };
    let input = RunInput {
        run_name: plan.key.name.clone(),
        run_namespace: plan.key.namespace.clone(),
        run_uid: uuid::Uuid::new_v4().to_string(),
        spec,
        params: plan.params.clone(),
        resume: BTreeMap::new(),
        brokers,
        default_connector: plan.default_connector.clone(),
        started_at: jiff::Timestamp::now(),
        approvals: Arc::new(approvals),
        pause: CancellationToken::new(),
    };
    let stop = CancellationToken::new();
    // One listener for the whole run: a signal that comes while the loop below is busy is
    // kept for its next turn, not lost.
    let mut interrupts =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot handle Ctrl-C: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
    let observer: Arc<dyn Observer> = reporter.clone();
    let mut engine = tokio::spawn(runner::run(input, observer, stop.clone()));
    let ticker = reporter.clone();
    let ticking = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ticker.tick_delays();
        }
    });
    let outcome = loop {
        tokio::select! {
            res = &mut engine => break res.unwrap_or_else(|e| RunOutcome::Failed {
                stage: String::new(), reason: "InternalError".into(), message: e.to_string() }),
            _ = interrupts.recv() => {
                if stop.is_cancelled() {
                    multi.suspend(|| eprintln!("devset: second Ctrl-C: quitting at once"));
                    std::process::exit(EXIT_STOPPED.into());
                }
                stop.cancel();
                reporter.phase(RunPhase::Stopping, "Stopping",
                    "a stop was requested (Ctrl-C); in-flight work is finishing; Ctrl-C again quits at once");
            }
        }
    };
    ticking.abort();
    let elapsed = started.elapsed();
    let (phase, reason, message) = outcome.end();
    let code = match phase {
        RunPhase::Completed => 0,
        RunPhase::Stopped => EXIT_STOPPED,
        _ => EXIT_FAILED,
    };
    reporter.phase(phase, &reason, &message);
    reporter.close();
    let _ = printer.join();
    let _ = multi.clear();
    let mut summary = reporter.summary(phase, elapsed);
    if let Some(m) = &mock {
        match m.counts(&embedded_topics).await {
            Ok(counts) => summary.push_str(&format!(
                "embedded Kafka broker received: {}\n",
                counts
                    .iter()
                    .map(|(t, n)| format!("{t} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(e) => summary.push_str(&format!(
                "cannot count the embedded broker's messages: {e}\n"
            )),
        }
    }
    match args.output {
        Output::Text => print!("{summary}"),
        Output::Json => eprint!("{summary}"),
    }
    let _ = std::io::stdout().flush();
    ExitCode::from(code)
}

/// librdkafka's mock cluster, in this process.
struct EmbeddedKafka {
    // Kept alive for the run; dropping it stops the broker.
    _cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bootstrap: String,
}

impl EmbeddedKafka {
    fn start(topics: &BTreeSet<String>) -> Result<EmbeddedKafka, String> {
        let cluster = rdkafka::mocking::MockCluster::new(1).map_err(|e| e.to_string())?;
        for t in topics {
            cluster
                .create_topic(t, 1, 1)
                .map_err(|e| format!("topic {t}: {e}"))?;
        }
        // A test knob: every answer of the embedded broker is this late (a slow stop).
        if let Some(ms) = std::env::var("DEVSET_EMBEDDED_BROKER_RTT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cluster
                .broker_round_trip_time(-1, Duration::from_millis(ms))
                .map_err(|e| e.to_string())?;
        }
        let bootstrap = cluster.bootstrap_servers();
        Ok(EmbeddedKafka {
            _cluster: cluster,
            bootstrap,
        })
    }

    /// The messages each topic received (its high watermarks), read back from the broker with
    /// a client of its own.
    async fn counts(&self, topics: &BTreeSet<String>) -> Result<Vec<(String, i64)>, String> {
        let bootstrap = self.bootstrap.clone();
        let topics = topics.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "devset-run-count")
                .create()
                .map_err(|e| e.to_string())?;
            let timeout = Duration::from_secs(5);
            let mut out = Vec::new();
            for t in topics {
                let md = consumer
                    .fetch_metadata(Some(&t), timeout)
                    .map_err(|e| e.to_string())?;
                let mut n = 0;
                for p in md.topics().iter().flat_map(|mt| mt.partitions()) {
                    // The topic was created empty for this run, so the high watermark
                    // counts every message it took (the mock broker drops old segments
                    // beyond a few MB, which moves the low one).
                    let (_, hi) = consumer
                        .fetch_watermarks(&t, p.id(), timeout)
                        .map_err(|e| e.to_string())?;
                    n += hi;
                }
                out.push((t, n));
            }
            Ok(out)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RunArgs,
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["run", "-f", "x.yaml"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    fn docs(text: &str) -> Vec<Doc> {
        let mut d = manifests::parse_docs("m.yaml", text).unwrap();
        assert_eq!(check_docs(&mut d), []);
        d
    }

    const WF: &str = "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: w}\nspec:\n\
        \x20 params: [{name: n, type: integer, default: 1}]\n\
        \x20 stages:\n  - {name: k, publish: {topic: t}}\n  - {name: r, publish: {queue: q, connectorRef: {name: rabbit}}}\n";

    #[test]
    fn brokers_come_from_flags_then_files_then_the_embedded_one() {
        let d = docs(WF);
        let e = plan(&d, &args(&[])).unwrap_err();
        assert!(
            e.starts_with("stage(s) r use RabbitMQ through connector \"rabbit\""),
            "{e}"
        );
        let p = plan(&d, &args(&["--amqp", "amqp://u:p@h:5672/%2f"])).unwrap();
        assert_eq!(p.default_connector, "local");
        assert_eq!(p.connectors["local"], Source::Embedded);
        assert!(
            matches!(&p.connectors["rabbit"], Source::Flag(BrokerConfig::RabbitMq(r), "--amqp") if r.password.as_deref() == Some("p"))
        );
        assert_eq!(p.key, RunKey::new("default", "w-local"));
        assert_eq!(p.params["n"], 1);

        // A connector file whose Secret is missing says so; with the Secret it is used.
        let connector = "---\napiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {name: rabbit}\n\
            spec: {rabbitmq: {url: 'amqp://h:5672/%2f', secretRef: {name: creds}}}\n";
        let with_file = docs(&format!("{WF}{connector}"));
        let e = plan(&with_file, &args(&["--kafka", "k:9092"])).unwrap_err();
        assert!(
            e.contains("BrokerConnector \"rabbit\": Secret \"creds\" not found in the given files"),
            "{e}"
        );
        let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {username: u}\ndata: {password: cHc=}\n";
        let d = docs(&format!("{WF}{connector}{secret}"));
        let p = plan(&d, &args(&[])).unwrap();
        assert_eq!(p.connectors["local"], Source::Embedded);
        assert!(matches!(&p.connectors["rabbit"], Source::File(..)));
        let run = "---\napiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {name: r1, namespace: ns}\n\
            spec: {workflowRef: {name: w}, connectorRef: {name: kafka}, params: {n: 5}}\n";
        let d = docs(&format!("{WF}{connector}{secret}{run}"));
        let p = plan(&d, &args(&["--kafka", "k:9092", "-p", "n=7"])).unwrap();
        assert_eq!(p.key, RunKey::new("ns", "r1"));
        assert_eq!(p.params["n"], 7);
        assert!(matches!(&p.connectors["kafka"], Source::Flag(_, "--kafka")));
        assert!(
            matches!(&p.connectors["rabbit"], Source::File(BrokerConfig::RabbitMq(r), _)
            if r.username.as_deref() == Some("u") && r.password.as_deref() == Some("pw"))
        );
    }

    #[test]
    fn params_errors_name_the_flag_or_the_field() {
        let wf = "apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {name: w}\nspec:\n\
            \x20 params: [{name: n, type: integer, required: true}]\n  stages: [{name: a, delay: {duration: 1s}}]\n";
        let d = docs(wf);
        assert_eq!(
            plan(&d, &args(&["-p", "zone=x", "-p", "n=1"])).unwrap_err(),
            "--param zone=x: the Workflow \"w\" (m.yaml) has no param \"zone\"; it declares n"
        );
        assert_eq!(
            plan(&d, &args(&["-p", "n=many"])).unwrap_err(),
            "--param n=many: param \"n\": expected integer, got \"many\""
        );
        assert_eq!(
            plan(&d, &args(&[])).unwrap_err(),
            "param \"n\" of the Workflow \"w\" (m.yaml) is required: set it with --param n=VALUE"
        );
        assert!(
            plan(&d, &args(&["-p", "n=3"]))
                .unwrap()
                .connectors
                .is_empty()
        );
        let e = Cli::try_parse_from(["run", "-f", "x", "-p", "novalue"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not NAME=VALUE"), "{e}");
    }

    #[test]
    fn the_workflow_is_the_runs_or_the_only_one() {
        let run = "apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {name: r1}\n\
            spec: {workflowRef: {name: other}, connectorRef: {name: kafka}}\n---\n";
        let d = docs(&format!("{run}{WF}"));
        assert_eq!(
            plan(&d, &args(&[])).unwrap_err(),
            "m.yaml:spec.workflowRef.name: Workflow \"other\" is not in the given files; add it with -f"
        );
        let two = format!("{WF}---\n{}", WF.replace("name: w}", "name: w2}"));
        let e = plan(&docs(&two), &args(&[])).unwrap_err();
        assert!(e.starts_with("several Workflows in the given files"), "{e}");
    }
}
