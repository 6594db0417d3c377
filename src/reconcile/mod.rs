//! The reconcilers: they read the caches and the remote view, ask `decide` what to do, call
//! MyTimetable, patch status only when it changed, and emit events.

mod controllers;
mod events;
mod follow;
mod index;
mod memory;
mod observe;
mod patch;
mod sync;
mod user;

pub use controllers::{Runtime, RuntimeError};
pub use events::EventPublisher;
pub use index::Index;
pub use memory::Memory;

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

use crate::decide::{Note, Settings, conditions_differ, failure_note, with_ready};
use crate::mytimetable;
use crate::remote::RemoteView;
use crate::resources::{
    CalendarSync, CalendarSyncStatus, CalendarUser, CalendarUserStatus, reason,
};
use crate::telemetry::Telemetry;

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API request failed.
    #[error("kubernetes request failed")]
    Kube(#[source] kube::Error),
    /// The object changed since it was read, so the decision made from it was not applied;
    /// the next reconcile reads the new version.
    #[error("the object changed since it was read")]
    Stale,
    /// A competing resource is claiming the same remote object right now; the next reconcile
    /// reads its claim and reports the conflict.
    #[error("a competing resource is claiming the same remote object")]
    Contended,
    /// A MyTimetable request failed.
    #[error(transparent)]
    MyTimetable(#[from] mytimetable::Error),
}

impl Error {
    /// Returns a stable label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Stale => "stale",
            Error::Contended => "contended",
            Error::MyTimetable(error) => error.metric_label(),
        }
    }
}

/// The state both controllers share.
pub struct Context {
    pub kube: kube::Client,
    pub mytimetable: mytimetable::Client,
    pub view: RemoteView,
    pub events: EventPublisher,
    pub settings: Settings,
    /// Requeue interval of objects that need nothing, as a fallback for missed events.
    pub resync_interval: Duration,
    pub users: Store<CalendarUser>,
    pub syncs: Store<CalendarSync>,
    pub index: Index,
    pub memory: Memory,
    pub(crate) user_triggers: UnboundedSender<ObjectRef<CalendarUser>>,
    pub(crate) sync_triggers: UnboundedSender<ObjectRef<CalendarSync>>,
    pub telemetry: Telemetry,
}

impl Context {
    /// Emits an event about `object`.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, object: &K, note: &Note) {
        self.events.publish(object, note).await;
    }

    /// Asks for the object's reconcile soon, for example after the remote view changed.
    pub(crate) fn trigger_user(&self, key: ObjectRef<CalendarUser>) {
        // The receiver lives as long as the controller; after shutdown nothing needs it.
        let _ = self.user_triggers.unbounded_send(key);
    }

    pub(crate) fn trigger_sync(&self, key: ObjectRef<CalendarSync>) {
        let _ = self.sync_triggers.unbounded_send(key);
    }
}

/// Returns the conditions with Ready reporting a failed MyTimetable request.
pub(crate) fn failure_condition(
    conditions: &[Condition],
    error: &mytimetable::Error,
    generation: Option<i64>,
) -> Vec<Condition> {
    let reason = match error {
        mytimetable::Error::Unauthorized => reason::UNAUTHORIZED,
        _ => reason::API_ERROR,
    };
    with_ready(conditions, false, reason, error.to_string(), generation)
}

/// A resource kind the controller reconciles, with the parts of its status that the shared
/// code touches.
pub(crate) trait Managed:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    type Status: Serialize + Default + Clone + PartialEq;
    fn current_status(&self) -> Self::Status;
    fn conditions(status: &Self::Status) -> &[Condition];
    fn observed_generation(status: &Self::Status) -> Option<i64>;
    /// Returns the status with new conditions, stamped with the generation.
    fn with_conditions(
        status: Self::Status,
        conditions: Vec<Condition>,
        generation: Option<i64>,
    ) -> Self::Status;
}

impl Managed for CalendarUser {
    type Status = CalendarUserStatus;

    fn current_status(&self) -> CalendarUserStatus {
        self.status.clone().unwrap_or_default()
    }

    fn conditions(status: &CalendarUserStatus) -> &[Condition] {
        &status.conditions
    }

    fn observed_generation(status: &CalendarUserStatus) -> Option<i64> {
        status.observed_generation
    }

    fn with_conditions(
        status: CalendarUserStatus,
        conditions: Vec<Condition>,
        generation: Option<i64>,
    ) -> CalendarUserStatus {
        CalendarUserStatus {
            observed_generation: generation,
            conditions,
            ..status
        }
    }
}

impl Managed for CalendarSync {
    type Status = CalendarSyncStatus;

    fn current_status(&self) -> CalendarSyncStatus {
        self.status.clone().unwrap_or_default()
    }

    fn conditions(status: &CalendarSyncStatus) -> &[Condition] {
        &status.conditions
    }

    fn observed_generation(status: &CalendarSyncStatus) -> Option<i64> {
        status.observed_generation
    }

    fn with_conditions(
        status: CalendarSyncStatus,
        conditions: Vec<Condition>,
        generation: Option<i64>,
    ) -> CalendarSyncStatus {
        CalendarSyncStatus {
            observed_generation: generation,
            conditions,
            ..status
        }
    }
}

/// Writes the status when it differs from the current one in more than condition
/// transition times, and returns the object as it is now.
///
/// A Ready condition that newly reports a failure also becomes a warning event.
pub(crate) async fn write_status<K: Managed>(
    api: &Api<K>,
    object: K,
    status: &K::Status,
    ctx: &Context,
) -> Result<K, Error> {
    let current = object.current_status();
    if !status_differs::<K>(&current, status) {
        return Ok(object);
    }
    let object = patch::replace_status(api, &object, status).await?;
    if let Some(note) = failure_note(K::conditions(&current), K::conditions(status)) {
        ctx.publish(&object, &note).await;
    }
    Ok(object)
}

/// Returns whether two statuses differ in more than condition transition times.
pub(crate) fn status_differs<K: Managed>(current: &K::Status, new: &K::Status) -> bool {
    let same_conditions = !conditions_differ(K::conditions(current), K::conditions(new));
    let same_generation = K::observed_generation(current) == K::observed_generation(new);
    // Everything else, compared with the conditions and the generation blanked out.
    let same_rest = K::with_conditions(current.clone(), Vec::new(), None)
        == K::with_conditions(new.clone(), Vec::new(), None);
    !(same_conditions && same_generation && same_rest)
}

/// Writes a failed MyTimetable request into the Ready condition of `status` and returns the
/// error for the backoff. A rejection that only a change of the resource can fix stops the
/// retries instead.
pub(crate) async fn report_failure<K: Managed>(
    api: &Api<K>,
    object: K,
    status: K::Status,
    ctx: &Context,
    error: mytimetable::Error,
) -> Result<Action, Error> {
    let generation = object.meta().generation;
    let conditions = failure_condition(K::conditions(&status), &error, generation);
    let status = K::with_conditions(status, conditions, generation);
    let object = write_status(api, object, &status, ctx).await?;
    if error.is_transient() || matches!(error, mytimetable::Error::Unauthorized) {
        return Err(Error::MyTimetable(error));
    }
    tracing::warn!(
        object = %key_of(&object),
        %error,
        "MyTimetable rejected a request; waiting for a change of the resource"
    );
    if let Some(generation) = generation {
        ctx.memory.reject(&uid_of(&object), generation);
    }
    Ok(Action::await_change())
}

/// Returns the requeue after an error: per-object capped exponential backoff.
pub(crate) fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let uid = object.meta().uid.clone().unwrap_or_default();
    let kind = K::kind(&());
    let namespace = object.meta().namespace.as_deref().unwrap_or("");
    let name = object.meta().name.as_deref().unwrap_or("");
    if let Error::Stale | Error::Contended = error {
        // A newer version is on its way through the watch: an expected race, retried soon.
        tracing::debug!(%kind, namespace, name, "Object changed since it was read; retrying");
        return Action::requeue(Duration::from_millis(500));
    }
    let delay = ctx.memory.failed(&uid);
    tracing::warn!(
        %kind,
        namespace,
        name,
        error = %error,
        error_kind = error.metric_label(),
        retry_in_ms = delay.as_millis() as u64,
        "Reconcile failed"
    );
    Action::requeue(delay)
}

/// Returns the uid of an object, empty when the API server did not set one.
pub(crate) fn uid_of<K: Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_default()
}

/// Returns the current time.
pub(crate) fn now() -> Timestamp {
    Timestamp::now()
}

/// Returns `namespace/name` of an object for logs.
pub(crate) fn key_of<K: ResourceExt>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}
