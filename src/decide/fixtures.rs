//! Builders of resources and snapshots for the decision tests.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::with_ready;
use crate::remote::{RemoteSync, Snapshot};
use crate::resources::{
    CalendarSync, CalendarSyncSpec, CalendarSyncStatus, CalendarUser, CalendarUserSpec,
    CalendarUserStatus, DeletionPolicy, PendingCreate, UnlinkMode, UserReference, reason,
};

/// Returns the instant `seconds` after the Unix epoch.
pub fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).expect("valid timestamp")
}

pub struct UserBuilder {
    user: CalendarUser,
}

impl UserBuilder {
    pub fn new(namespace: &str, name: &str, username: &str) -> Self {
        let mut user = CalendarUser::new(
            name,
            CalendarUserSpec {
                username: username.to_string(),
                deletion_policy: DeletionPolicy::Delete,
            },
        );
        user.metadata.namespace = Some(namespace.to_string());
        user.metadata.generation = Some(1);
        user.metadata.uid = Some(format!("uid-{namespace}-{name}"));
        user.metadata.creation_timestamp = Some(Time(at(100)));
        UserBuilder { user }
    }

    pub fn created_at(mut self, seconds: i64) -> Self {
        self.user.metadata.creation_timestamp = Some(Time(at(seconds)));
        self
    }

    fn status(&mut self) -> &mut CalendarUserStatus {
        self.user.status.get_or_insert_with(Default::default)
    }

    pub fn owned(mut self) -> Self {
        let username = self.user.spec.username.clone();
        self.status().owned_username = Some(username);
        self
    }

    pub fn ready(mut self, reason: &str) -> Self {
        let generation = self.user.metadata.generation;
        let status = self.status();
        status.observed_generation = generation;
        status.conditions = with_ready(&status.conditions, true, reason, "ready", generation);
        self
    }

    pub fn conflict(mut self) -> Self {
        let generation = self.user.metadata.generation;
        let status = self.status();
        status.conditions = with_ready(
            &status.conditions,
            false,
            reason::CONFLICT,
            "conflict",
            generation,
        );
        self
    }

    pub fn orphan(mut self) -> Self {
        self.user.spec.deletion_policy = DeletionPolicy::Orphan;
        self
    }

    pub fn deleting(mut self) -> Self {
        self.user.metadata.deletion_timestamp = Some(Time(at(500)));
        self
    }

    pub fn build(self) -> CalendarUser {
        self.user
    }
}

pub struct SyncBuilder {
    sync: CalendarSync,
}

impl SyncBuilder {
    pub fn new(namespace: &str, name: &str, user: &str, type_: &str) -> Self {
        let mut sync = CalendarSync::new(
            name,
            CalendarSyncSpec {
                user_ref: UserReference {
                    name: user.to_string(),
                },
                type_: type_.to_string(),
                smtp_address: None,
                unlink_mode: UnlinkMode::UnlinkOnly,
                deletion_policy: DeletionPolicy::Delete,
            },
        );
        sync.metadata.namespace = Some(namespace.to_string());
        sync.metadata.generation = Some(1);
        sync.metadata.uid = Some(format!("uid-{namespace}-{name}"));
        sync.metadata.creation_timestamp = Some(Time(at(100)));
        SyncBuilder { sync }
    }

    pub fn created_at(mut self, seconds: i64) -> Self {
        self.sync.metadata.creation_timestamp = Some(Time(at(seconds)));
        self
    }

    fn status(&mut self) -> &mut CalendarSyncStatus {
        self.sync.status.get_or_insert_with(Default::default)
    }

    pub fn synced(mut self, id: i64, username: &str) -> Self {
        let status = self.status();
        status.sync_id = Some(id);
        status.username = Some(username.to_string());
        self
    }

    pub fn pending(mut self, username: &str, since: i64) -> Self {
        let status = self.status();
        status.username = Some(username.to_string());
        status.pending_create = Some(PendingCreate {
            username: username.to_string(),
            since: Time(at(since)),
        });
        self
    }

    pub fn ready(mut self, reason: &str) -> Self {
        let generation = self.sync.metadata.generation;
        let status = self.status();
        status.observed_generation = generation;
        status.conditions = with_ready(&status.conditions, true, reason, "ready", generation);
        self
    }

    pub fn smtp(mut self, address: &str) -> Self {
        self.sync.spec.smtp_address = Some(address.to_string());
        self
    }

    pub fn unlink_mode(mut self, mode: UnlinkMode) -> Self {
        self.sync.spec.unlink_mode = mode;
        self
    }

    pub fn orphan(mut self) -> Self {
        self.sync.spec.deletion_policy = DeletionPolicy::Orphan;
        self
    }

    pub fn deleting(mut self) -> Self {
        self.sync.metadata.deletion_timestamp = Some(Time(at(500)));
        self
    }

    pub fn build(self) -> CalendarSync {
        self.sync
    }
}

pub struct SnapshotBuilder {
    users: Vec<String>,
    syncs: Vec<RemoteSync>,
    fetched_at: Timestamp,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        SnapshotBuilder {
            users: Vec::new(),
            syncs: Vec::new(),
            fetched_at: at(1000),
        }
    }

    pub fn fetched_at(mut self, fetched_at: Timestamp) -> Self {
        self.fetched_at = fetched_at;
        self
    }

    pub fn user(mut self, username: &str) -> Self {
        self.users.push(username.to_string());
        self
    }

    pub fn sync(mut self, id: i64, username: &str, type_: &str) -> Self {
        self.syncs.push(RemoteSync {
            id,
            username: username.to_string(),
            type_: type_.to_string(),
        });
        self
    }

    pub fn build(self) -> Snapshot {
        Snapshot::from_lists(self.users, self.syncs, self.fetched_at)
    }
}
