use anyhow::Context;
use clap::{Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode};

/// devset: run event-driven workflows against Kafka and RabbitMQ, the Kubernetes way.
#[derive(Parser)]
#[command(name = "devset", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller that reconciles BrokerConnectors, Workflows and WorkflowRuns.
    Controller(devset::controller::Settings),
    /// Serve the HTTP API on port 8082: run event logs over SSE, pages and CSV export, the
    /// run list, stop, and approval decisions.
    Api(devset::server::Settings),
    /// Print the CustomResourceDefinitions of the devset.io API as YAML.
    ///
    /// Install them with: devset crds | kubectl apply --server-side -f -
    Crds {
        /// Write one file per kind into this directory instead of printing (repeatable).
        #[arg(long)]
        dir: Vec<PathBuf>,
    },
    /// Run a workflow on this machine, without a cluster: against --kafka, --amqp, the
    /// BrokerConnector files given, or else an embedded Kafka broker.
    Run(devset::cli::run::RunArgs),
    /// Print a run's event log from devset api (-f: follow it live until the run ends).
    Logs(devset::cli::logs::LogsArgs),
    /// Approve an approval stage of a run that waits for a decision, through devset api.
    Approve(devset::cli::approve::ApproveArgs),
    /// Reject an approval stage of a run that waits for a decision, through devset api.
    Reject(devset::cli::approve::ApproveArgs),
    /// Retry a finished run through devset api: a new run from the start (spec.rerunOf).
    Retry(devset::cli::retry::RetryArgs),
    /// Re-run a finished run from a stage through devset api: the stages it depends on are
    /// inherited with their outputs, not executed.
    Rerun(devset::cli::retry::RerunArgs),
    /// Check manifests offline: the CRDs' schema and CEL rules, and the workflow checks.
    Lint(devset::cli::lint::LintArgs),
    /// Start a run of a WorkflowSchedule now, through devset api (whatever its times, suspend
    /// and concurrency policy).
    Fire(devset::cli::fire::FireArgs),
    /// Export runs with their event logs (JSON or CSV) through devset api.
    Export(devset::cli::export::ExportArgs),
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // As the kubectl plugin `kubectl-devset`, help and errors say `kubectl devset`.
    let argv0 = std::env::args().next().unwrap_or_default();
    let matches = Cli::command()
        .bin_name(devset::cli::bin_name(&argv0))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crds { dir } if dir.is_empty() => {
            let docs: Vec<String> = devset::crdgen::all()?.into_iter().map(|(_, y)| y).collect();
            print!("{}", docs.join("---\n"));
        }
        Command::Crds { dir: dirs } => {
            for dir in dirs {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                for (name, yaml) in devset::crdgen::all()? {
                    let path = dir.join(name);
                    std::fs::write(&path, yaml)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("wrote {}", path.display());
                }
            }
        }
        Command::Controller(settings) => {
            init_tracing();
            tokio::runtime::Runtime::new()?.block_on(devset::controller::run(settings))?;
        }
        Command::Run(args) => {
            init_cli_tracing();
            return Ok(devset::cli::run::run(&args));
        }
        Command::Logs(args) => {
            init_cli_tracing();
            return Ok(devset::cli::logs::logs(&args));
        }
        Command::Approve(args) => {
            init_cli_tracing();
            return Ok(devset::cli::approve::decide(
                &args,
                devset::api::Decision::Approved,
            ));
        }
        Command::Reject(args) => {
            init_cli_tracing();
            return Ok(devset::cli::approve::decide(
                &args,
                devset::api::Decision::Rejected,
            ));
        }
        Command::Retry(args) => {
            init_cli_tracing();
            return Ok(devset::cli::retry::repeat(&args, None));
        }
        Command::Rerun(args) => {
            init_cli_tracing();
            return Ok(devset::cli::retry::repeat(&args.retry, Some(&args.from)));
        }
        Command::Lint(args) => return Ok(devset::cli::lint::lint(&args)),
        Command::Fire(args) => {
            init_cli_tracing();
            return Ok(devset::cli::fire::fire(&args));
        }
        Command::Export(args) => {
            init_cli_tracing();
            return Ok(devset::cli::export::export(&args));
        }
        Command::Api(settings) => {
            init_tracing();
            tokio::runtime::Runtime::new()?.block_on(devset::server::run(settings))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr; `RUST_LOG` overrides the default level (info).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The CLI commands log nothing unless `RUST_LOG` asks: their output is for people.
fn init_cli_tracing() {
    use tracing_subscriber::EnvFilter;
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
        // Subcommands are built lazily: parse each one's --help to check its flags too.
        for sub in [
            "controller",
            "api",
            "crds",
            "run",
            "logs",
            "approve",
            "reject",
            "lint",
            "fire",
        ] {
            let err = super::Cli::command()
                .try_get_matches_from(["devset", sub, "--help"])
                .unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{sub}");
        }
    }
}
