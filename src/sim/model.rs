//! The simulated MyTimetable site: user profiles, synchronizations, and the external
//! calendars that synchronizations push events into. Pure data and rules, no I/O: the
//! HTTP layer passes in the current time.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::mytimetable::wire::{Synchronization, UnlinkMode};

// The synthetic timetable each synchronization pushes, as offsets from the moment it is
// created: two lectures in the past and two in the future, so that every unlinkMode has a
// visible effect.
const PUSHED_EVENT_OFFSETS_HOURS: [i64; 4] = [-14 * 24, -2 * 24, 2 * 24, 14 * 24];
// The length of one lecture.
const LECTURE_MINUTES: i64 = 105;

/// The origin of an event in a user's calendar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum EventSource {
    /// Pushed by this MyTimetable site under a synchronization id.
    Synchronization {
        #[serde(rename = "synchronizationId")]
        id: i64,
        #[serde(rename = "type")]
        type_: String,
    },
    /// Put there by the user or another system; no unlinkMode ever removes it.
    Personal,
}

/// One event in a user's external calendar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: u64,
    pub title: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub source: EventSource,
}

impl Event {
    fn synchronization_id(&self) -> Option<i64> {
        match self.source {
            EventSource::Synchronization { id, .. } => Some(id),
            EventSource::Personal => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct UserRecord {
    synchronization_ids: BTreeSet<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct SyncRecord {
    id: i64,
    username: String,
    #[serde(rename = "type")]
    type_: String,
    smtp_address: Option<String>,
    last_resync: Timestamp,
}

/// A synchronization create that the site rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("user {username:?} does not exist: create it with PUT /users/{{username}} first")]
    UnknownUser { username: String },
}

/// A delete of a user's synchronizations that found nothing to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSyncDeleteError {
    UnknownUser,
    NoSynchronizations,
}

/// The whole state of the simulated site. Serialized as the state file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    users: BTreeMap<String, UserRecord>,
    synchronizations: BTreeMap<i64, SyncRecord>,
    // Calendars outlive the user profile and its synchronizations: they belong to the
    // external calendar service, not to MyTimetable.
    calendars: HashMap<String, Vec<Event>>,
    // Ids are never reused, also not after a reset of single objects, as on a real site.
    last_synchronization_id: i64,
    last_event_id: u64,
}

impl Model {
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn user_exists(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    pub fn synchronization_count(&self) -> usize {
        self.synchronizations.len()
    }

    /// Creates the user if it does not exist. Returns true when it was created.
    pub fn ensure_user(&mut self, username: &str) -> bool {
        if self.users.contains_key(username) {
            return false;
        }
        self.users
            .insert(username.to_owned(), UserRecord::default());
        true
    }

    /// Deletes the user profile and its synchronizations. The events already pushed stay in
    /// the calendar, because the API documents no unlinkMode for this call. Returns false
    /// when the user did not exist.
    pub fn delete_user(&mut self, username: &str) -> bool {
        let Some(record) = self.users.remove(username) else {
            return false;
        };
        for id in record.synchronization_ids {
            self.synchronizations.remove(&id);
        }
        true
    }

    /// Creates a synchronization with a new id and pushes its synthetic events into the
    /// user's calendar. A second call with the same user and type creates a second one.
    pub fn create_synchronization(
        &mut self,
        username: &str,
        type_: &str,
        smtp_address: Option<&str>,
        now: Timestamp,
    ) -> Result<i64, CreateError> {
        let Some(user) = self.users.get_mut(username) else {
            return Err(CreateError::UnknownUser {
                username: username.to_owned(),
            });
        };
        self.last_synchronization_id += 1;
        let id = self.last_synchronization_id;
        user.synchronization_ids.insert(id);
        self.synchronizations.insert(
            id,
            SyncRecord {
                id,
                username: username.to_owned(),
                type_: type_.to_owned(),
                smtp_address: smtp_address.map(str::to_owned),
                last_resync: now,
            },
        );

        let calendar = self.calendars.entry(username.to_owned()).or_default();
        for (number, offset_hours) in PUSHED_EVENT_OFFSETS_HOURS.into_iter().enumerate() {
            self.last_event_id += 1;
            let start = now + SignedDuration::from_hours(offset_hours);
            calendar.push(Event {
                id: self.last_event_id,
                title: format!("Lecture {} ({type_} synchronization {id})", number + 1),
                start,
                end: start + SignedDuration::from_mins(LECTURE_MINUTES),
                source: EventSource::Synchronization {
                    id,
                    type_: type_.to_owned(),
                },
            });
        }
        Ok(id)
    }

    /// Deletes a synchronization and applies `mode` to the user's calendar. Returns false
    /// when no synchronization has that id.
    pub fn delete_synchronization(&mut self, id: i64, mode: UnlinkMode, now: Timestamp) -> bool {
        let Some(record) = self.synchronizations.remove(&id) else {
            return false;
        };
        if let Some(user) = self.users.get_mut(&record.username) {
            user.synchronization_ids.remove(&id);
        }
        self.unlink_events(&record.username, id, mode, now);
        true
    }

    /// Deletes a user's synchronizations, all of them or those of one type, each with
    /// `mode`. Returns how many were deleted.
    pub fn delete_user_synchronizations(
        &mut self,
        username: &str,
        type_: Option<&str>,
        mode: UnlinkMode,
        now: Timestamp,
    ) -> Result<usize, UserSyncDeleteError> {
        let Some(user) = self.users.get(username) else {
            return Err(UserSyncDeleteError::UnknownUser);
        };
        let ids: Vec<i64> = user
            .synchronization_ids
            .iter()
            .copied()
            .filter(|id| type_.is_none_or(|t| self.synchronizations[id].type_ == t))
            .collect();
        if ids.is_empty() && type_.is_some() {
            return Err(UserSyncDeleteError::NoSynchronizations);
        }
        for &id in &ids {
            self.delete_synchronization(id, mode, now);
        }
        Ok(ids.len())
    }

    // Removes events as the API documents for each unlinkMode. "Future" means starting
    // after `now`.
    fn unlink_events(&mut self, username: &str, id: i64, mode: UnlinkMode, now: Timestamp) {
        let Some(calendar) = self.calendars.get_mut(username) else {
            return;
        };
        match mode {
            UnlinkMode::UnlinkOnly => {}
            UnlinkMode::DeleteFutureEvents => calendar
                .retain(|event| event.synchronization_id() != Some(id) || event.start <= now),
            UnlinkMode::DeleteAllEvents => {
                calendar.retain(|event| event.synchronization_id() != Some(id))
            }
            UnlinkMode::Cleanup => calendar.retain(|event| event.synchronization_id().is_none()),
        }
    }

    /// Returns every synchronization in id order, in the 3.0 shape or with the later-version fields.
    pub fn synchronizations(&self, later_version: bool) -> Vec<Synchronization> {
        self.synchronizations
            .values()
            .map(|record| record.to_wire(later_version))
            .collect()
    }

    /// Returns one user's synchronizations with the later-version fields, or None for an unknown
    /// user.
    pub fn user_synchronizations(&self, username: &str) -> Option<Vec<Synchronization>> {
        let user = self.users.get(username)?;
        Some(
            user.synchronization_ids
                .iter()
                .map(|id| self.synchronizations[id].to_wire(true))
                .collect(),
        )
    }

    /// Returns the events in a user's calendar, ordered by start.
    pub fn events(&self, username: &str) -> Vec<Event> {
        let mut events = self.calendars.get(username).cloned().unwrap_or_default();
        events.sort_by_key(|event| (event.start, event.id));
        events
    }

    /// Adds an event that MyTimetable did not push, such as a student's own appointment.
    pub fn add_personal_event(
        &mut self,
        username: &str,
        title: &str,
        start: Timestamp,
        end: Timestamp,
    ) -> Event {
        self.last_event_id += 1;
        let event = Event {
            id: self.last_event_id,
            title: title.to_owned(),
            start,
            end,
            source: EventSource::Personal,
        };
        self.calendars
            .entry(username.to_owned())
            .or_default()
            .push(event.clone());
        event
    }

    /// Checks the indexes after loading a state file: every synchronization belongs to an
    /// existing user that lists it, and the id counters are past every id in use.
    pub fn validate(&self) -> Result<(), String> {
        for (id, record) in &self.synchronizations {
            if record.id != *id {
                return Err(format!(
                    "synchronization {id} is stored under id {}",
                    record.id
                ));
            }
            let listed = self
                .users
                .get(&record.username)
                .is_some_and(|user| user.synchronization_ids.contains(id));
            if !listed {
                return Err(format!(
                    "synchronization {id} belongs to {:?}, which does not list it",
                    record.username
                ));
            }
            if *id > self.last_synchronization_id {
                return Err(format!("synchronization {id} is above the last issued id"));
            }
        }
        for (username, user) in &self.users {
            if let Some(id) = user
                .synchronization_ids
                .iter()
                .find(|id| !self.synchronizations.contains_key(id))
            {
                return Err(format!(
                    "user {username:?} lists unknown synchronization {id}"
                ));
            }
        }
        let max_event_id = self
            .calendars
            .values()
            .flatten()
            .map(|event| event.id)
            .max();
        if max_event_id.is_some_and(|id| id > self.last_event_id) {
            return Err("an event id is above the last issued id".to_owned());
        }
        Ok(())
    }
}

impl SyncRecord {
    fn to_wire(&self, later_version: bool) -> Synchronization {
        let mut sync = Synchronization {
            id: self.id,
            username: self.username.clone(),
            type_: self.type_.clone(),
            description: None,
            enabled: None,
            status: None,
            last_resync: None,
        };
        if later_version {
            sync.description = self.smtp_address.clone();
            sync.enabled = Some(true);
            sync.status = Some("OK".to_owned());
            sync.last_resync = Some(self.last_resync.as_millisecond());
        }
        sync
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2025-03-10T12:00:00Z".parse().unwrap()
    }

    fn later() -> Timestamp {
        now() + SignedDuration::from_hours(1)
    }

    fn sync_event_ids(model: &Model, username: &str, id: i64) -> Vec<u64> {
        model
            .events(username)
            .iter()
            .filter(|event| event.synchronization_id() == Some(id))
            .map(|event| event.id)
            .collect()
    }

    // A user with two synchronizations and one personal event.
    fn model_with_two_syncs() -> (Model, i64, i64) {
        let mut model = Model::default();
        model.ensure_user("alice");
        let first = model
            .create_synchronization("alice", "o365", None, now())
            .unwrap();
        let second = model
            .create_synchronization("alice", "googlecalendar", None, now())
            .unwrap();
        model.add_personal_event("alice", "Dentist", now(), later());
        (model, first, second)
    }

    #[test]
    fn create_pushes_past_and_future_events() {
        let (model, first, _) = model_with_two_syncs();
        let events: Vec<Event> = model
            .events("alice")
            .into_iter()
            .filter(|event| event.synchronization_id() == Some(first))
            .collect();
        assert_eq!(events.len(), 4);
        assert_eq!(events.iter().filter(|event| event.start < now()).count(), 2);
        assert_eq!(events.iter().filter(|event| event.start > now()).count(), 2);
    }

    #[test]
    fn create_for_unknown_user_fails() {
        let mut model = Model::default();
        let error = model
            .create_synchronization("nobody", "o365", None, now())
            .unwrap_err();
        assert_eq!(
            error,
            CreateError::UnknownUser {
                username: "nobody".into()
            }
        );
        assert_eq!(model.synchronization_count(), 0);
    }

    #[test]
    fn second_create_gets_new_id() {
        let mut model = Model::default();
        model.ensure_user("bob");
        let first = model
            .create_synchronization("bob", "o365", None, now())
            .unwrap();
        let second = model
            .create_synchronization("bob", "o365", None, now())
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(model.synchronizations(false).len(), 2);
    }

    #[test]
    fn unlink_only_keeps_every_event() {
        let (mut model, first, _) = model_with_two_syncs();
        let before = model.events("alice");
        assert!(model.delete_synchronization(first, UnlinkMode::UnlinkOnly, later()));
        assert_eq!(model.events("alice"), before);
    }

    #[test]
    fn delete_future_events_keeps_past_ones() {
        let (mut model, first, second) = model_with_two_syncs();
        let second_events = sync_event_ids(&model, "alice", second);
        assert!(model.delete_synchronization(first, UnlinkMode::DeleteFutureEvents, later()));
        let remaining: Vec<Event> = model
            .events("alice")
            .into_iter()
            .filter(|event| event.synchronization_id() == Some(first))
            .collect();
        assert_eq!(remaining.len(), 2);
        assert!(remaining.iter().all(|event| event.start <= later()));
        assert_eq!(sync_event_ids(&model, "alice", second), second_events);
    }

    #[test]
    fn delete_all_events_spares_other_syncs() {
        let (mut model, first, second) = model_with_two_syncs();
        assert!(model.delete_synchronization(first, UnlinkMode::DeleteAllEvents, later()));
        assert!(sync_event_ids(&model, "alice", first).is_empty());
        assert_eq!(sync_event_ids(&model, "alice", second).len(), 4);
        assert_eq!(model.events("alice").len(), 5);
    }

    #[test]
    fn cleanup_removes_events_of_every_sync() {
        let (mut model, first, second) = model_with_two_syncs();
        // An earlier synchronization that was unlinked but left its events behind.
        model.delete_synchronization(second, UnlinkMode::UnlinkOnly, later());
        let third = model
            .create_synchronization("alice", "ews", None, now())
            .unwrap();
        assert!(model.delete_synchronization(first, UnlinkMode::Cleanup, later()));
        let events = model.events("alice");
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].source, EventSource::Personal);
        // The still active third synchronization keeps running, its events are gone.
        assert!(model.synchronizations(false).iter().any(|s| s.id == third));
    }

    #[test]
    fn cleanup_leaves_other_users_alone() {
        let (mut model, first, _) = model_with_two_syncs();
        model.ensure_user("bob");
        let bobs = model
            .create_synchronization("bob", "o365", None, now())
            .unwrap();
        model.delete_synchronization(first, UnlinkMode::Cleanup, later());
        assert_eq!(sync_event_ids(&model, "bob", bobs).len(), 4);
    }

    #[test]
    fn delete_unknown_sync_returns_false() {
        let (mut model, _, _) = model_with_two_syncs();
        assert!(!model.delete_synchronization(999, UnlinkMode::Cleanup, later()));
        assert_eq!(model.events("alice").len(), 9);
    }

    #[test]
    fn delete_user_removes_profile_and_syncs() {
        let (mut model, _, _) = model_with_two_syncs();
        model.ensure_user("bob");
        model
            .create_synchronization("bob", "o365", None, now())
            .unwrap();
        assert!(model.delete_user("alice"));
        assert!(!model.user_exists("alice"));
        assert!(
            model
                .synchronizations(false)
                .iter()
                .all(|s| s.username == "bob")
        );
        assert!(!model.delete_user("alice"));
        model.validate().unwrap();
    }

    #[test]
    fn delete_user_syncs_by_type() {
        let (mut model, first, second) = model_with_two_syncs();
        let deleted = model
            .delete_user_synchronizations(
                "alice",
                Some("o365"),
                UnlinkMode::DeleteAllEvents,
                later(),
            )
            .unwrap();
        assert_eq!(deleted, 1);
        assert!(sync_event_ids(&model, "alice", first).is_empty());
        assert_eq!(sync_event_ids(&model, "alice", second).len(), 4);
        assert_eq!(
            model.delete_user_synchronizations(
                "alice",
                Some("o365"),
                UnlinkMode::UnlinkOnly,
                later()
            ),
            Err(UserSyncDeleteError::NoSynchronizations)
        );
        assert_eq!(
            model.delete_user_synchronizations("nobody", None, UnlinkMode::UnlinkOnly, later()),
            Err(UserSyncDeleteError::UnknownUser)
        );
        assert_eq!(
            model.delete_user_synchronizations("alice", None, UnlinkMode::UnlinkOnly, later()),
            Ok(1)
        );
    }

    #[test]
    fn later_version_adds_fields() {
        let mut model = Model::default();
        model.ensure_user("carol");
        model
            .create_synchronization("carol", "ews", Some("carol@example.org"), now())
            .unwrap();
        let baseline = &model.synchronizations(false)[0];
        assert_eq!(baseline.description, None);
        assert_eq!(baseline.last_resync, None);
        let later = &model.synchronizations(true)[0];
        assert_eq!(later.description.as_deref(), Some("carol@example.org"));
        assert_eq!(later.enabled, Some(true));
        assert_eq!(later.status.as_deref(), Some("OK"));
        assert_eq!(later.last_resync, Some(now().as_millisecond()));
    }

    #[test]
    fn state_round_trips_through_json() {
        let (model, _, _) = model_with_two_syncs();
        let json = serde_json::to_string(&model).unwrap();
        let loaded: Model = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded, model);
        loaded.validate().unwrap();
    }

    #[test]
    fn validate_rejects_dangling_index() {
        let (mut model, first, _) = model_with_two_syncs();
        model.synchronizations.remove(&first);
        assert!(model.validate().is_err());
    }
}
