//! A real Kubernetes control plane for tests: etcd and kube-apiserver started on free
//! loopback ports, the way controller-runtime's envtest does it.
//!
//! ```no_run
//! use calsync_operator::testenv::{ControlPlane, TestNamespace};
//!
//! # async fn example() {
//! let control_plane = ControlPlane::shared();
//! let client = control_plane.client().await;
//! let namespace = TestNamespace::create(&client, "adoption").await;
//! // ... create resources in namespace.name() ...
//! # }
//! ```
//!
//! # Lifetime of the processes
//! [`ControlPlane::shared`] starts one control plane per test binary on first use. It is
//! stopped, and its temporary folder removed, when the process exits normally. Both
//! processes also receive SIGKILL from the kernel when the test process dies in any other
//! way (a signal, an abort after a panic), because they are spawned with
//! `PR_SET_PDEATHSIG` from a thread that lives as long as the process.
//! [`ControlPlane::start`] returns a private control plane that is stopped on drop, and
//! [`ControlPlane::builder`] one with other options, such as no CRDs installed.
//!
//! # Clients
//! Every [`kube::Client`] that [`ControlPlane::client`] returns sends its requests from a
//! background runtime owned by this module, where its connections also live. It therefore
//! works from any tokio runtime, including one with a paused clock, and keeps working while
//! the test's own runtime is blocked or after it is gone.
//!
//! # Child processes
//! [`BoundedOutput::output_within`], [`wait_with_output_within`] and [`first_line_within`] wait for a test's
//! child process with a deadline, kill it when the deadline passes, and return an error that
//! quotes what it printed, so that a hanging program fails its test instead of the CI job.
//!
//! # Binaries
//! `CALSYNC_CONTROL_PLANE_DIR` names the folder with `kube-apiserver`, `kubectl` and `etcd`.
//! When it is unset, `scripts/build-control-plane.sh` builds them once into a cache and
//! prints that folder. A person who wants to run the other tests on a machine without the
//! binaries sets `CALSYNC_SKIP_CONTROL_PLANE=1`; tests that call
//! [`ControlPlane::shared_or_skip`] then print that they were skipped and return.

mod binaries;
mod command;
mod control_plane;
mod namespace;
mod pki;
mod process;
mod runtime;

pub use binaries::{CONTROL_PLANE_DIR_ENV, SKIP_CONTROL_PLANE_ENV};
pub use command::{BoundedOutput, COMMAND_TIMEOUT, first_line_within, wait_with_output_within};
pub use control_plane::{ControlPlane, ControlPlaneBuilder};
pub use namespace::TestNamespace;

use std::path::PathBuf;
use std::time::Duration;

/// Errors of starting a test control plane or running a test's child process. None of them
/// is transient: each needs a fix of the machine or of the repository, and the message says
/// which or quotes the output that explains it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `scripts/build-control-plane.sh` could not be run or failed.
    #[error(
        "failed to build the control-plane binaries with {script}: {reason}; run `make control-plane` to see the whole output, or set {CONTROL_PLANE_DIR_ENV} to a folder with kube-apiserver, kubectl and etcd"
    )]
    BuildScript { script: PathBuf, reason: String },

    /// The binaries folder lacks one of kube-apiserver, kubectl or etcd.
    #[error(
        "{binary} was not found or is not executable in {dir} ({source_of_dir}); run `make control-plane` or point {CONTROL_PLANE_DIR_ENV} at a folder with kube-apiserver, kubectl and etcd"
    )]
    MissingBinary {
        binary: &'static str,
        dir: PathBuf,
        source_of_dir: String,
    },

    /// A file of the control plane (certificate, key, kubeconfig, log) could not be written
    /// or read.
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A certificate or key could not be generated.
    #[error("failed to generate the {what} for the test control plane")]
    Certificate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    /// etcd or kube-apiserver could not be started.
    #[error("failed to start {process} ({binary})")]
    Spawn {
        process: &'static str,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// etcd or kube-apiserver exited during start-up.
    #[error("{process} exited during start-up with {status}; its log is {log}:\n{log_tail}")]
    Exited {
        process: &'static str,
        status: std::process::ExitStatus,
        log: PathBuf,
        log_tail: String,
    },

    /// `/readyz` of kube-apiserver did not return `ok` in time.
    #[error(
        "kube-apiserver was not ready after {waited:?} (last answer of /readyz: {last_answer}); logs: {apiserver_log} and {etcd_log}"
    )]
    NotReady {
        waited: Duration,
        last_answer: String,
        apiserver_log: PathBuf,
        etcd_log: PathBuf,
    },

    /// The kubeconfig of the control plane could not be turned into a client.
    #[error("failed to build a Kubernetes client from {kubeconfig}")]
    Client {
        kubeconfig: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A CRD file under `crds/` could not be read, parsed, created or did not become
    /// Established in time.
    #[error("failed to install the CRD {file}: {reason}; run `make crds` if the file is stale")]
    InstallCrd { file: PathBuf, reason: String },

    /// A child process of a test did not exit in time and was killed.
    #[error(
        "{program} did not exit within {timeout:?} and was killed; standard output:\n{stdout}\nstandard error:\n{stderr}"
    )]
    TimedOut {
        program: String,
        timeout: Duration,
        stdout: String,
        stderr: String,
    },

    /// A child process of a test printed no first line on standard output and was killed.
    #[error(
        "{program} printed no first line ({failure}); exit status {status}; standard error:\n{stderr}"
    )]
    NoFirstLine {
        program: String,
        failure: String,
        status: String,
        stderr: String,
    },
}
