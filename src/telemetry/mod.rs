//! Logging set-up, Prometheus metrics and the health signals of `calsync-operator run`.
//!
//! The controller, the leader election and the HTTP server share one [`Telemetry`]: the
//! first two record into it, the HTTP server reads it for `/metrics`, `/healthz` and
//! `/readyz`.

mod health;
mod logging;
mod metrics;

pub(crate) use health::age_of;
pub use health::{Health, HealthConfig, ReconcileGuard, WATCHED_KINDS};
pub use logging::{LoggingError, init_logging};
pub use metrics::{Metrics, RemoteCounts};

use crate::mytimetable::ClientMetrics;

/// The metrics and health signals of one process. Clones share the same state.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Metrics,
    pub health: Health,
    /// The MyTimetable client's metrics; registered in [`Telemetry::metrics`], and handed to
    /// the client so that its requests are counted there.
    pub client_metrics: ClientMetrics,
}

impl Telemetry {
    pub fn new(health: HealthConfig) -> Telemetry {
        Telemetry::with_client_metrics(health, ClientMetrics::new())
    }

    /// Creates the telemetry around existing client metrics, for example ones a test reads.
    pub fn with_client_metrics(health: HealthConfig, client_metrics: ClientMetrics) -> Telemetry {
        Telemetry {
            metrics: Metrics::new(&client_metrics),
            health: Health::new(health),
            client_metrics,
        }
    }
}
