//! The process of `calsync-operator run`: the HTTP server, the token and the remote view on
//! every replica, the controllers on the leader only, and a clean stop on shutdown.

use tokio_util::sync::CancellationToken;

use crate::http::{self, HttpState};
use crate::leader::{self, Elector, LeaseConfig, Stopped, default_identity, run_unelected};
use crate::reconcile::Runtime;

/// A failure of the operator process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP server could not listen or serve.
    #[error(transparent)]
    Http(#[from] http::Error),
    /// The leader-election settings are invalid.
    #[error(transparent)]
    Leader(#[from] leader::Error),
    /// The controllers stopped although no shutdown was requested.
    #[error("the controllers stopped unexpectedly")]
    ControllersStopped,
}

/// Runs the operator until `shutdown` is cancelled.
///
/// After `shutdown`, `/readyz` fails at once and the controllers stop taking work. The
/// reconciles in flight get `--shutdown-grace-period` to finish before they are abandoned.
/// Then the Lease is released and the token and remote-view loops stop. The HTTP server
/// stops last, after finishing its requests.
pub async fn run(runtime: Runtime, shutdown: CancellationToken) -> Result<(), Error> {
    let config = &runtime.config;
    let telemetry = &runtime.telemetry;

    // Phase 1: bind first, so that an address in use stops start-up at once.
    let server = http::Server::bind(config.http_listen).await?;
    let state = HttpState::new(runtime.view.clone(), telemetry.clone());
    let stop_http = CancellationToken::new();
    let http = tokio::spawn(server.serve(state, stop_http.clone().cancelled_owned()));
    tokio::spawn({
        let health = telemetry.health.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            health.set_shutting_down();
        }
    });

    // Phase 2: the token and the remote view on every replica, and the controllers on the
    // leader. The background stops after the controllers, because reconciles that finish
    // within the grace period still need a current token and fresh snapshots.
    let stop_background = CancellationToken::new();
    let controllers = async {
        let stopped = lead(&runtime, &shutdown).await;
        stop_background.cancel();
        stopped
    };
    let (stopped, ()) = tokio::join!(controllers, runtime.run_background(stop_background.clone()));

    // Phase 3: stop serving once nothing else runs.
    stop_http.cancel();
    match http.await {
        Ok(result) => result?,
        Err(error) => tracing::error!(%error, "HTTP server task failed"),
    }
    match stopped? {
        Stopped::Shutdown => Ok(()),
        Stopped::WorkEnded => Err(Error::ControllersStopped),
    }
}

// Runs the controllers while this replica leads, or at once without leader election.
async fn lead(runtime: &Runtime, shutdown: &CancellationToken) -> Result<Stopped, Error> {
    let config = &runtime.config;
    let grace = config.shutdown_grace_period;
    if !config.leader_election_enabled() {
        tracing::info!("Leader election is off; this replica reconciles");
        let stopped = run_unelected(shutdown.clone(), grace, &runtime.telemetry, |stop| {
            runtime.run_controllers(stop)
        })
        .await;
        return Ok(stopped);
    }

    let namespace = match &config.lease_namespace {
        Some(namespace) => namespace.clone(),
        // In a pod this is the pod's namespace, from the service account's namespace file.
        None => runtime.kube.default_namespace().to_string(),
    };
    let lease = LeaseConfig {
        name: config.lease_name.clone(),
        namespace,
        identity: default_identity(),
        timing: config.lease_timing(),
    };
    let elector = Elector::new(runtime.kube.clone(), lease, runtime.telemetry.clone())?;
    let stopped = elector
        .run(
            shutdown.clone(),
            grace,
            |stop| runtime.run_controllers(stop),
            || runtime.run_ownership_watch(),
        )
        .await;
    Ok(stopped)
}
