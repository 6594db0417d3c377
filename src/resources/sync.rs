use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DeletionPolicy;

/// A push synchronization of a user's timetable into an external calendar (Office 365,
/// Google Calendar, Exchange). The controller creates it in MyTimetable, or adopts one that
/// already exists for the same user and type, and unlinks it with `unlinkMode` when this
/// resource is deleted.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "calsync.dev",
    version = "v1alpha1",
    kind = "CalendarSync",
    namespaced,
    status = "CalendarSyncStatus",
    shortname = "calsync",
    category = "calsync",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.userRef.name"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Sync ID","type":"integer","jsonPath":".status.syncId"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CalendarSyncSpec {
    /// The CalendarUser, in the same namespace, whose timetable is synchronized. Immutable.
    pub user_ref: UserReference,

    /// The calendar provider adapter configured on the MyTimetable site, for example
    /// `o365`, `googlecalendar` or `ews`. 1 to 64 letters, digits, `.`, `_` or `-`.
    /// Immutable.
    #[serde(rename = "type")]
    pub type_: String,

    /// The user's mailbox address in Exchange or Office 365, sent to MyTimetable as
    /// `provisioning_smtpAddress`. Only used by pre-delegated EWS and pre-authorized
    /// Office 365 adapters. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_address: Option<String>,

    /// What happens to the events already pushed into the user's calendar when this
    /// synchronization is removed. `UNLINK_ONLY` (default) keeps every event and is the
    /// only mode that destroys no data.
    #[serde(default)]
    pub unlink_mode: UnlinkMode,

    /// What happens to the MyTimetable synchronization when this resource is deleted:
    /// `Delete` (default) unlinks it with `unlinkMode`, `Orphan` leaves it running.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A reference to a CalendarUser in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct UserReference {
    /// The metadata.name of the CalendarUser.
    pub name: String,
}

/// What MyTimetable does with the events already in the user's calendar when a
/// synchronization is removed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnlinkMode {
    /// The synchronization stops; every event stays in the calendar.
    #[default]
    UnlinkOnly,
    /// Events of this synchronization that start in the future are removed; past events stay.
    DeleteFutureEvents,
    /// Every event of this synchronization is removed.
    DeleteAllEvents,
    /// Every event that this MyTimetable instance pushed is removed, also those of other
    /// synchronizations.
    Cleanup,
}

impl UnlinkMode {
    /// The value MyTimetable expects in the `unlinkMode` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            UnlinkMode::UnlinkOnly => "UNLINK_ONLY",
            UnlinkMode::DeleteFutureEvents => "DELETE_FUTURE_EVENTS",
            UnlinkMode::DeleteAllEvents => "DELETE_ALL_EVENTS",
            UnlinkMode::Cleanup => "CLEANUP",
        }
    }
}

/// The observed state of a CalendarSync.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CalendarSyncStatus {
    /// The metadata.generation that the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The id of the MyTimetable synchronization this resource owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_id: Option<i64>,

    /// The MyTimetable username of the synchronization, copied from the CalendarUser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,

    /// Set while a create request may have reached MyTimetable without the controller
    /// learning the new id. The controller then adopts the matching synchronization instead
    /// of sending a second create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create: Option<PendingCreate>,

    /// Standard Kubernetes conditions. `Ready` is True when the synchronization exists in
    /// MyTimetable and belongs to this resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A create request that was sent, or about to be sent, to MyTimetable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingCreate {
    /// The username the synchronization was requested for.
    pub username: String,
    /// When the controller recorded the request, before sending it.
    pub since: Time,
}
