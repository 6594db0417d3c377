use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::DeletionPolicy;

// Validation rules run in kube-apiserver at admission. The maxLength bounds keep the CEL
// cost estimate of the string rules far below the per-rule limit, and transition rules
// (those that read `oldSelf`) only run on updates.

/// The desired MyTimetable user.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "calsync.dev",
    version = "v1alpha1",
    kind = "CalendarUser",
    namespaced,
    status = "CalendarUserStatus",
    shortname = "caluser",
    category = "calsync",
    doc = "A user profile in MyTimetable. The controller makes sure the user exists while this resource exists, and deletes it (or leaves it, with deletionPolicy Orphan) when the resource is deleted, after every CalendarSync of the user is gone.",
    printcolumn = r#"{"name":"Username","type":"string","jsonPath":".spec.username"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CalendarUserSpec {
    /// The MyTimetable username, exactly as the institution uses it (for example `alice`,
    /// `s1234567` or `Alice.Smith@example.edu`). 1 to 256 characters, no control
    /// characters, no leading or trailing whitespace. Required and immutable.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(
        validation = Rule::new(r"!self.matches('\\p{Cc}')")
            .message("username must not contain control characters"),
        validation = Rule::new("self == self.trim()")
            .message("username must not start or end with whitespace"),
        validation = Rule::new("self == oldSelf")
            .message("username is immutable: create a new CalendarUser for another username"),
    )]
    pub username: String,

    /// Policy for the MyTimetable user when this resource is deleted: `Delete` (default)
    /// removes it, `Orphan` leaves it in MyTimetable. May be changed at any time.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The observed state of a CalendarUser, written by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CalendarUserStatus {
    /// The metadata.generation that the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The MyTimetable username this resource owns: set once the controller created or
    /// adopted the user for it. Only the owning resource ever deletes the remote user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_username: Option<String>,

    /// Standard Kubernetes conditions, one per type. `Ready` is True when the user exists
    /// in MyTimetable and belongs to this resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
