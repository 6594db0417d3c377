use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DeletionPolicy;

// Validation rules run in kube-apiserver at admission. The maxLength bounds keep the CEL
// cost estimate of the string rules far below the per-rule limit, and transition rules
// (those that read `oldSelf`) only run on updates.

/// The desired push synchronization.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "calsync.dev",
    version = "v1alpha1",
    kind = "CalendarSync",
    namespaced,
    status = "CalendarSyncStatus",
    shortname = "csync",
    category = "calsync",
    doc = "A push synchronization of a user's timetable into an external calendar (Office 365, Google Calendar, Exchange). The controller creates it in MyTimetable, or adopts one that already exists for the same user and type, and unlinks it with unlinkMode when this resource is deleted.",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.userRef.name"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Sync ID","type":"integer","jsonPath":".status.syncId"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
// smtpAddress may be neither added nor removed after creation, which a rule on the field
// itself cannot express: it only runs when the field exists in both versions.
#[x_kube(
    validation = Rule::new("has(self.smtpAddress) == has(oldSelf.smtpAddress)")
        .message("smtpAddress is immutable: it cannot be added or removed after creation")
        .field_path(".smtpAddress"),
)]
pub struct CalendarSyncSpec {
    /// The CalendarUser, in the same namespace, whose timetable is synchronized. Required
    /// and immutable.
    pub user_ref: UserReference,

    /// The calendar provider adapter configured on the MyTimetable site, for example
    /// `o365`, `googlecalendar` or `ews`. 1 to 64 letters, digits, `.`, `_` or `-`.
    /// Required and immutable.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z0-9._-]+$')")
            .message("type must consist of letters, digits, '.', '_' or '-'"),
        validation = Rule::new("self == oldSelf")
            .message("type is immutable: create a new CalendarSync for another type"),
    )]
    pub type_: String,

    /// The user's mailbox address in Exchange or Office 365, sent to MyTimetable as
    /// `provisioning_smtpAddress`, for example `alice.smith@example.edu`. Only used by
    /// pre-delegated EWS and pre-authorized Office 365 adapters. Optional; when set, at most
    /// 254 characters. Immutable: it can be neither changed, added nor removed after
    /// creation.
    // `with = "String"` keeps the schema non-nullable, so the API server prunes an explicit
    // null instead of storing it past the rules below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 3, max = 254))]
    #[x_kube(
        validation = Rule::new(r"self.matches('^[^@\\s\\p{Cc}]+@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$')")
            .message("smtpAddress must be an email address such as alice@example.edu"),
        validation = Rule::new("self == oldSelf")
            .message("smtpAddress is immutable: create a new CalendarSync for another mailbox"),
    )]
    pub smtp_address: Option<String>,

    /// The unlink mode that MyTimetable applies to the events already pushed into the
    /// user's calendar when this synchronization is removed. `UNLINK_ONLY` (default) stops the synchronization
    /// and keeps every event: the only mode that destroys no data. `DELETE_FUTURE_EVENTS`
    /// removes this synchronization's events that start in the future. `DELETE_ALL_EVENTS`
    /// removes all of this synchronization's events. `CLEANUP` removes every event this
    /// MyTimetable site pushed into the calendar, also those of other synchronizations.
    /// May be changed at any time before deletion.
    #[serde(default)]
    pub unlink_mode: UnlinkMode,

    /// Policy for the MyTimetable synchronization when this resource is deleted:
    /// `Delete` (default) unlinks it with `unlinkMode`, `Orphan` leaves it running. May be
    /// changed at any time.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A reference to a CalendarUser in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserReference {
    /// The metadata.name of the CalendarUser. Required and immutable.
    // A resource name is a DNS subdomain: at most 253 lowercase letters, digits, '-' and '.'.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
            .message("userRef.name must be the name of a CalendarUser: lowercase letters, digits, '-' and '.'"),
        validation = Rule::new("self == oldSelf")
            .message("userRef.name is immutable: create a new CalendarSync for another user"),
    )]
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

/// The observed state of a CalendarSync, written by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
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

    /// Standard Kubernetes conditions, one per type. `Ready` is True when the
    /// synchronization exists in MyTimetable and belongs to this resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
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
