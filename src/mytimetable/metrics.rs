//! Prometheus metrics of the MyTimetable client. Labels hold route templates such as
//! `PUT /users/{username}`, never a username, id or token, so their number stays fixed.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    // The HTTP status code, or the error label when no response arrived (`timeout`,
    // `transport`).
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    endpoint: &'static str,
    // `Error::metric_label` of the failure that caused the retry.
    reason: &'static str,
}

#[derive(Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        // 5 ms to about 41 s: a loopback simulator responds in milliseconds, a loaded
        // production server in seconds, and the default request timeout is 30 s.
        Histogram::new(exponential_buckets(0.005, 2.0, 14))
    }
}

/// Request, latency and retry metrics of a client. Clones share the same families.
#[derive(Clone)]
pub struct ClientMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<EndpointLabels, Histogram, LatencyBuckets>,
    retries: Family<RetryLabels, Counter>,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        ClientMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(LatencyBuckets),
            retries: Family::default(),
        }
    }
}

impl std::fmt::Debug for ClientMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMetrics").finish_non_exhaustive()
    }
}

impl ClientMetrics {
    /// Creates empty metric families; [`ClientMetrics::register`] exposes them.
    pub fn new() -> ClientMetrics {
        ClientMetrics::default()
    }

    /// Registers the families under the prefix `mytimetable`:
    /// `mytimetable_requests_total{endpoint,status}`,
    /// `mytimetable_request_duration_seconds{endpoint}` and
    /// `mytimetable_retries_total{endpoint,reason}`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("mytimetable");
        registry.register(
            "requests",
            "MyTimetable requests by endpoint and HTTP status or error",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Duration of MyTimetable requests by endpoint, including failed ones",
            self.duration.clone(),
        );
        registry.register(
            "retries",
            "Retries of MyTimetable requests by endpoint and failure",
            self.retries.clone(),
        );
    }

    pub(crate) fn observe_request(
        &self,
        endpoint: &'static str,
        status: String,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
        self.duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn observe_retry(&self, endpoint: &'static str, reason: &'static str) {
        self.retries
            .get_or_create(&RetryLabels { endpoint, reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn registered_families_render_with_labels() {
        let metrics = ClientMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.observe_request("GET /users", "200".into(), Duration::from_millis(12));
        metrics.observe_retry("GET /users", "server");

        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"mytimetable_requests_total{endpoint="GET /users",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mytimetable_retries_total{endpoint="GET /users",reason="server"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mytimetable_request_duration_seconds_count{endpoint="GET /users"} 1"#),
            "{text}"
        );
    }
}
