//! JSON and form shapes of the MyTimetable provisioning API, shared by the client and the
//! simulator.
//!
//! Parsing is tolerant: unknown fields are ignored because the vendor adds fields in later
//! versions, and the fields that later versions add to a synchronization (`description`,
//! `enabled`, `status`, `lastResync`) are kept when present.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The `unlinkMode` of `DELETE /synchronizations/{id}`. It is the same type that a
/// CalendarSync's `spec.unlinkMode` holds, so the value a resource requests reaches the
/// API unchanged.
pub use crate::resources::UnlinkMode;

/// Body of `GET /users`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct UserList {
    pub users: Vec<String>,
}

/// Body of `GET /synchronizations` and, in later versions, of
/// `GET /users/{username}/synchronizations`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SynchronizationList {
    pub synchronizations: Vec<Synchronization>,
}

/// One synchronization of a user's timetable into an external calendar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Synchronization {
    pub id: i64,
    pub username: String,
    /// The calendar provider adapter, for example `o365`, `googlecalendar` or `ews`. An open
    /// set: it depends on the site's configuration.
    #[serde(rename = "type")]
    pub type_: String,
    /// Later versions only, for example the mailbox address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Later versions only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Later versions only, for example `OK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Later versions only: the last full resynchronization, in milliseconds since the Unix
    /// epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resync: Option<i64>,
}

/// Form field names of `PUT /synchronizations`.
pub mod form {
    pub const USERNAME: &str = "username";
    pub const TYPE: &str = "type";
    pub const SMTP_ADDRESS: &str = "provisioning_smtpAddress";
}

/// The HTTP request header that carries the API token.
pub const API_TOKEN_HEADER: &str = "apiToken";

/// The query parameter of the synchronization deletes.
pub const UNLINK_MODE_PARAM: &str = "unlinkMode";

/// A value that is not one of the four `unlinkMode` values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown unlinkMode {value:?}: expected UNLINK_ONLY, DELETE_FUTURE_EVENTS, DELETE_ALL_EVENTS or CLEANUP"
)]
pub struct UnknownUnlinkMode {
    pub value: String,
}

impl UnlinkMode {
    /// Every mode, in the order of how much calendar data it removes.
    pub const ALL: [UnlinkMode; 4] = [
        UnlinkMode::UnlinkOnly,
        UnlinkMode::DeleteFutureEvents,
        UnlinkMode::DeleteAllEvents,
        UnlinkMode::Cleanup,
    ];
}

impl FromStr for UnlinkMode {
    type Err = UnknownUnlinkMode;

    // Exact match only: the API documents upper-case values and a lenient parse here could
    // turn a typo into a different, data-destroying mode.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        UnlinkMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == value)
            .ok_or_else(|| UnknownUnlinkMode {
                value: value.to_owned(),
            })
    }
}

impl fmt::Display for UnlinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlink_mode_round_trips_through_wire_value() {
        for mode in UnlinkMode::ALL {
            assert_eq!(mode.as_str().parse::<UnlinkMode>(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
    }

    #[test]
    fn unlink_mode_rejects_other_spelling() {
        for value in ["", "unlink_only", "Cleanup", "DELETE", " CLEANUP"] {
            let error = value.parse::<UnlinkMode>().unwrap_err();
            assert_eq!(error.value, value);
        }
    }

    #[test]
    fn synchronization_parses_baseline_entry() {
        let parsed: SynchronizationList = serde_json::from_str(
            r#"{"synchronizations": [{"id": 1, "username": "alice", "type": "o365"}]}"#,
        )
        .unwrap();
        assert_eq!(
            parsed.synchronizations,
            vec![Synchronization {
                id: 1,
                username: "alice".into(),
                type_: "o365".into(),
                description: None,
                enabled: None,
                status: None,
                last_resync: None,
            }]
        );
    }

    #[test]
    fn synchronization_keeps_later_fields_and_ignores_unknown() {
        let parsed: Synchronization = serde_json::from_str(
            r#"{"id": 7, "username": "bob", "type": "ews", "description": "bob@example.org",
                "enabled": false, "status": "OK", "lastResync": 1700000000000,
                "color": "blue", "nested": {"a": [1, 2]}}"#,
        )
        .unwrap();
        assert_eq!(parsed.description.as_deref(), Some("bob@example.org"));
        assert_eq!(parsed.enabled, Some(false));
        assert_eq!(parsed.status.as_deref(), Some("OK"));
        assert_eq!(parsed.last_resync, Some(1_700_000_000_000));
    }

    #[test]
    fn synchronization_omits_absent_later_fields() {
        let sync = Synchronization {
            id: 2,
            username: "carol".into(),
            type_: "googlecalendar".into(),
            description: None,
            enabled: None,
            status: None,
            last_resync: None,
        };
        assert_eq!(
            serde_json::to_string(&sync).unwrap(),
            r#"{"id":2,"username":"carol","type":"googlecalendar"}"#
        );
    }

    #[test]
    fn user_list_ignores_unknown_fields() {
        let parsed: UserList =
            serde_json::from_str(r#"{"users": ["a", "b"], "total": 2}"#).unwrap();
        assert_eq!(parsed.users, vec!["a", "b"]);
    }
}
