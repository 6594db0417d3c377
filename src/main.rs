//! The `calsync-operator` binary: a thin command-line layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use calsync_operator::config::RunConfig;
use calsync_operator::reconcile::Runtime;
use calsync_operator::{crdcheck, operator, resources, telemetry};
use tokio_util::sync::CancellationToken;

/// Kubernetes operator that provisions MyTimetable calendar synchronizations from
/// CalendarUser and CalendarSync resources.
#[derive(Parser, Debug)]
#[command(name = "calsync-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions of CalendarUser and CalendarSync as YAML.
    Crds {
        /// Write each CRD to DIR/<name>.yaml instead of printing both to standard output.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
    /// Run the controller: reconcile CalendarUsers and CalendarSyncs against MyTimetable.
    Run(Box<RunConfig>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds { output_dir } => print_crds(output_dir.as_deref()),
        Command::Run(config) => run(*config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("calsync-operator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds(output_dir: Option<&Path>) -> anyhow::Result<()> {
    let mut documents = Vec::new();
    for crd in resources::crds() {
        let yaml = resources::crd_yaml(&crd).context("failed to render a CRD as YAML")?;
        match output_dir {
            Some(dir) => {
                let path = dir.join(resources::crd_file_name(&crd));
                std::fs::write(&path, yaml)
                    .with_context(|| format!("failed to write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            None => documents.push(yaml),
        }
    }
    if output_dir.is_none() {
        // One stream of YAML documents, so that `calsync-operator crds | kubectl apply -f -`
        // works.
        print!("{}", documents.join("---\n"));
    }
    Ok(())
}

fn run(config: RunConfig) -> anyhow::Result<()> {
    telemetry::init_logging(config.log_format, &config.log_level)?;
    calsync_operator::install_rustls_provider();
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    runtime.block_on(async {
        let runtime = Runtime::from_config(config, None).await?;
        // Stop before reconciling anything when the cluster serves older CRDs, whose schema
        // would make kube-apiserver drop fields this version writes.
        crdcheck::check(&runtime.kube).await?;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "Starting calsync-operator"
        );
        let shutdown = CancellationToken::new();
        // The handlers are installed here, before the HTTP server announces itself, because
        // a signal that arrives before installation would kill the process at once.
        let signals = ShutdownSignals::install().context("failed to install signal handlers")?;
        tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
        let result = operator::run(runtime, shutdown).await;
        match &result {
            Ok(()) => tracing::info!("Stopped calsync-operator"),
            Err(error) => tracing::error!(%error, "calsync-operator failed"),
        }
        Ok(result?)
    })
}

/// The SIGTERM and SIGINT handlers of `run`.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Installs both handlers, so that from now on the signals no longer end the process.
    fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};

        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Cancels `shutdown` on SIGTERM or SIGINT.
    async fn cancel_on_signal(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("Received SIGTERM, shutting down"),
            _ = self.interrupt.recv() => tracing::info!("Received SIGINT, shutting down"),
        }
        shutdown.cancel();
    }
}
