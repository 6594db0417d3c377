//! The process's Prometheus registry. Label values are kinds, route templates and stable
//! error labels, never a name, username or token, so the number of series stays fixed.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::mytimetable::ClientMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: &'static str,
    // `success` or `error`.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileErrorLabels {
    kind: &'static str,
    // The reconcile error's `metric_label`, such as `kubernetes` or `timeout`.
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RemoteObjectLabels {
    // `user` or `synchronization`.
    kind: &'static str,
    // `true` when a resource of this cluster manages the object.
    managed: &'static str,
}

#[derive(Clone)]
struct ReconcileBuckets;

impl MetricConstructor<Histogram> for ReconcileBuckets {
    fn new_metric(&self) -> Histogram {
        // 1 ms to about 65 s: a reconcile that changes nothing reads caches in about a
        // millisecond, one that writes waits for MyTimetable (seconds under load), and the
        // client's default request timeout is 30 s.
        Histogram::new(exponential_buckets(0.001, 2.0, 17))
    }
}

/// How many remote objects the current snapshot holds, split by whether a resource of this
/// cluster manages them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteCounts {
    pub users_managed: u64,
    pub users_unmanaged: u64,
    pub synchronizations_managed: u64,
    pub synchronizations_unmanaged: u64,
}

/// The metric families of `calsync-operator run`, with the MyTimetable client's families
/// registered beside them. Clones share the same families.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_errors: Family<ReconcileErrorLabels, Counter>,
    reconcile_duration: Family<KindLabels, Histogram, ReconcileBuckets>,
    remote_view_age: Gauge<f64, AtomicU64>,
    remote_objects: Family<RemoteObjectLabels, Gauge>,
    leader: Gauge,
}

impl Metrics {
    /// Creates the families under the prefix `calsync` and registers `client`'s families
    /// (prefix `mytimetable`) in the same registry.
    pub fn new(client: &ClientMetrics) -> Metrics {
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_errors = Family::<ReconcileErrorLabels, Counter>::default();
        let reconcile_duration = Family::new_with_constructor(ReconcileBuckets);
        let remote_view_age = Gauge::<f64, AtomicU64>::default();
        let remote_objects = Family::<RemoteObjectLabels, Gauge>::default();
        let leader = Gauge::default();

        let mut registry = Registry::default();
        client.register(&mut registry);
        let calsync = registry.sub_registry_with_prefix("calsync");
        calsync.register(
            "reconciles",
            "Finished reconciles by resource kind and result (success or error)",
            reconciles.clone(),
        );
        calsync.register(
            "reconcile_errors",
            "Failed reconciles by resource kind and error",
            reconcile_errors.clone(),
        );
        calsync.register(
            "reconcile_duration_seconds",
            "Duration of finished reconciles by resource kind",
            reconcile_duration.clone(),
        );
        calsync.register(
            "remote_view_age_seconds",
            "Seconds since the lists of the current remote view were requested from \
             MyTimetable; before the first successful refresh, seconds since start",
            remote_view_age.clone(),
        );
        calsync.register(
            "remote_objects",
            "Users and synchronizations in the remote view by whether a resource of this \
             cluster manages them",
            remote_objects.clone(),
        );
        calsync.register(
            "leader",
            "1 while this replica holds the leader-election Lease (or runs without election)",
            leader.clone(),
        );

        Metrics {
            inner: Arc::new(Inner {
                registry,
                reconciles,
                reconcile_errors,
                reconcile_duration,
                remote_view_age,
                remote_objects,
                leader,
            }),
        }
    }

    /// Counts a finished reconcile; `error` is the error's metric label when it failed.
    pub fn observe_reconcile(
        &self,
        kind: &'static str,
        error: Option<&'static str>,
        elapsed: Duration,
    ) {
        let inner = &self.inner;
        let result = if error.is_some() { "error" } else { "success" };
        inner
            .reconciles
            .get_or_create(&ReconcileLabels { kind, result })
            .inc();
        if let Some(error) = error {
            inner
                .reconcile_errors
                .get_or_create(&ReconcileErrorLabels { kind, error })
                .inc();
        }
        inner
            .reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_leader(&self, leading: bool) {
        self.inner.leader.set(i64::from(leading));
    }

    /// Sets the remote view gauges; the HTTP server calls it before each scrape. Without
    /// `counts` the object gauges keep their values.
    pub fn set_remote_view(&self, age: Duration, counts: Option<RemoteCounts>) {
        let inner = &self.inner;
        inner.remote_view_age.set(age.as_secs_f64());
        let Some(counts) = counts else {
            return;
        };
        let series = [
            ("user", "true", counts.users_managed),
            ("user", "false", counts.users_unmanaged),
            ("synchronization", "true", counts.synchronizations_managed),
            (
                "synchronization",
                "false",
                counts.synchronizations_unmanaged,
            ),
        ];
        for (kind, managed, count) in series {
            inner
                .remote_objects
                .get_or_create(&RemoteObjectLabels { kind, managed })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Renders every family in the Prometheus text format (OpenMetrics 1.0).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_error_counts_result_and_error() {
        let metrics = Metrics::new(&ClientMetrics::new());
        metrics.observe_reconcile("CalendarUser", None, Duration::from_millis(3));
        metrics.observe_reconcile("CalendarUser", Some("timeout"), Duration::from_millis(3));
        let text = metrics.encode();
        for line in [
            r#"calsync_reconciles_total{kind="CalendarUser",result="success"} 1"#,
            r#"calsync_reconciles_total{kind="CalendarUser",result="error"} 1"#,
            r#"calsync_reconcile_errors_total{kind="CalendarUser",error="timeout"} 1"#,
            r#"calsync_reconcile_duration_seconds_count{kind="CalendarUser"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn remote_view_gauges_hold_last_values() {
        let metrics = Metrics::new(&ClientMetrics::new());
        let counts = RemoteCounts {
            users_managed: 3,
            users_unmanaged: 1,
            synchronizations_managed: 2,
            synchronizations_unmanaged: 0,
        };
        metrics.set_remote_view(Duration::from_millis(2500), Some(counts));
        metrics.set_leader(true);
        let text = metrics.encode();
        for line in [
            "calsync_remote_view_age_seconds 2.5",
            r#"calsync_remote_objects{kind="user",managed="true"} 3"#,
            r#"calsync_remote_objects{kind="user",managed="false"} 1"#,
            r#"calsync_remote_objects{kind="synchronization",managed="false"} 0"#,
            "calsync_leader 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn client_families_share_the_registry() {
        let client = ClientMetrics::new();
        let metrics = Metrics::new(&client);
        client.observe_request("GET /users", "200".to_string(), Duration::from_millis(4));
        let text = metrics.encode();
        assert!(
            text.contains(r#"mytimetable_requests_total{endpoint="GET /users",status="200"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
