//! calsync-operator: a Kubernetes operator that provisions MyTimetable calendar
//! synchronizations from `CalendarUser` and `CalendarSync` resources.

pub mod config;
pub mod crdcheck;
pub mod decide;
pub mod http;
pub mod leader;
pub mod mytimetable;
pub mod operator;
pub mod remote;
pub mod resources;
pub mod sim;
pub mod telemetry;
pub mod testenv;

/// Installs rustls' `ring` crypto provider as the process default, which kube and reqwest
/// need because the crate enables no other provider. Later calls, and calls after another
/// provider was installed, do nothing.
pub fn install_rustls_provider() {
    // The only error is "a provider is already installed", which is the state asked for.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
pub mod reconcile;
