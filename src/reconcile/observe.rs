//! Instrumentation around each reconcile: a span with the object's kind, namespace and name,
//! the reconcile metrics, and the in-flight record that liveness reads.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::Instrument;

use super::{Context, Error};
use crate::resources::{CalendarSync, CalendarUser};

/// A reconciled kind with its name as a constant, for metric labels and health records.
pub(crate) trait Kind {
    const KIND: &'static str;
}

impl Kind for CalendarUser {
    const KIND: &'static str = "CalendarUser";
}

impl Kind for CalendarSync {
    const KIND: &'static str = "CalendarSync";
}

/// Runs `reconcile` for `object` inside a `reconcile` span and records its duration and
/// result. The span's fields are `object.kind`, `object.namespace` and `object.name`, named
/// like kube-runtime's `object.ref` so that they do not collide with the span's own `name`
/// in JSON logs.
pub(crate) async fn observed<K, F, Fut>(
    object: Arc<K>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action, Error>
where
    K: Kind + ResourceExt,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let span = tracing::info_span!(
        "reconcile",
        object.kind = K::KIND,
        object.namespace = %namespace,
        object.name = %name,
    );
    let telemetry = ctx.telemetry.clone();
    // Dropped when the reconcile ends or is abandoned, which clears the in-flight record.
    let _in_flight = telemetry
        .health
        .reconcile_started(K::KIND, format!("{namespace}/{name}"));
    let started = Instant::now();
    let result = reconcile(object, ctx).instrument(span).await;
    let error = result.as_ref().err().map(Error::metric_label);
    telemetry
        .metrics
        .observe_reconcile(K::KIND, error, started.elapsed());
    result
}

#[cfg(test)]
mod tests {
    use kube::Resource;

    use super::*;
    use crate::telemetry::WATCHED_KINDS;

    #[test]
    fn kind_constants_match_the_resource_types() {
        assert_eq!(CalendarUser::KIND, CalendarUser::kind(&()));
        assert_eq!(CalendarSync::KIND, CalendarSync::kind(&()));
        assert_eq!(WATCHED_KINDS, [CalendarUser::KIND, CalendarSync::KIND]);
    }
}
