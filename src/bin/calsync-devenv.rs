//! `calsync-devenv`: a local etcd and kube-apiserver with the calsync CRDs installed, for
//! demos and benchmarks. Writes an admin kubeconfig, prints `ready`, and runs until SIGINT
//! or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use calsync_operator::testenv::ControlPlane;

/// Runs a local Kubernetes control plane (etcd and kube-apiserver on loopback ports) with the
/// CalendarUser and CalendarSync CRDs installed.
#[derive(Parser, Debug)]
#[command(name = "calsync-devenv", version, about)]
struct Cli {
    /// Path of the admin kubeconfig to write; the file is removed again on exit.
    #[arg(long, value_name = "PATH")]
    kubeconfig: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("calsync-devenv: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("failed to handle SIGTERM")?;

    let control_plane = ControlPlane::start().context("failed to start the control plane")?;
    std::fs::copy(control_plane.kubeconfig(), &cli.kubeconfig)
        .with_context(|| format!("failed to write {}", cli.kubeconfig.display()))?;
    eprintln!(
        "calsync-devenv: kube-apiserver at {}, kubeconfig {}",
        control_plane.server_url(),
        cli.kubeconfig.display()
    );
    println!("ready");
    std::io::stdout()
        .flush()
        .context("failed to write to standard output")?;

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("calsync-devenv: stopping");
    drop(control_plane);
    // The kubeconfig names a server that no longer exists.
    let _ = std::fs::remove_file(&cli.kubeconfig);
    Ok(())
}
