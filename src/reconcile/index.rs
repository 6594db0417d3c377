//! Indexes over the reflector stores, fed from the watch events: which CalendarUsers share a
//! username, which CalendarSyncs reference a user or claim a username. They answer the
//! questions of the decisions in O(matches) instead of scanning every object per reconcile,
//! and they tell which objects a watch event concerns.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

use crate::decide::is_ready;
use crate::remote::Ownership;
use crate::resources::{CalendarSync, CalendarUser};

use super::patch::has_finalizer;

/// The reconciles a watch event calls for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Triggers {
    pub users: Vec<ObjectRef<CalendarUser>>,
    pub syncs: Vec<ObjectRef<CalendarSync>>,
}

#[derive(Default)]
pub struct Index {
    state: Mutex<State>,
    // Set by every event, cleared when the ownership is published.
    changed: AtomicBool,
}

#[derive(Default)]
struct State {
    users: HashMap<ObjectRef<CalendarUser>, UserEntry>,
    users_by_username: HashMap<String, HashSet<ObjectRef<CalendarUser>>>,
    syncs: HashMap<ObjectRef<CalendarSync>, SyncEntry>,
    syncs_by_user: HashMap<ObjectRef<CalendarUser>, HashSet<ObjectRef<CalendarSync>>>,
    syncs_by_claim: HashMap<String, HashSet<ObjectRef<CalendarSync>>>,
    // Objects seen since the last `Init` of a relist, per kind.
    relist_users: Option<HashSet<ObjectRef<CalendarUser>>>,
    relist_syncs: Option<HashSet<ObjectRef<CalendarSync>>>,
}

struct UserEntry {
    username: String,
    deleting: bool,
    owned_username: Option<String>,
    // Hash of the fields the user's own reconcile reacts to: spec, deletion, finalizer.
    own_hash: u64,
    // Hash of the fields its CalendarSyncs react to: readiness, ownership, deletion, uid.
    dependents_hash: u64,
}

struct SyncEntry {
    user: ObjectRef<CalendarUser>,
    claim: Option<String>,
    sync_id: Option<i64>,
    own_hash: u64,
}

fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn own_hash<K: ResourceExt>(object: &K) -> u64 {
    hash_of((
        object.meta().generation,
        object.meta().deletion_timestamp.is_some(),
        has_finalizer(object),
    ))
}

fn user_ref_of(sync: &CalendarSync) -> ObjectRef<CalendarUser> {
    let namespace = sync.namespace().unwrap_or_default();
    ObjectRef::new(&sync.spec.user_ref.name).within(&namespace)
}

fn remove_from<K: Hash + Eq>(map: &mut HashMap<String, HashSet<K>>, key: &str, value: &K) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Index {
    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain maps and no code panics while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns whether an event arrived since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::Relaxed)
    }

    /// Applies a CalendarUser watch event and returns the reconciles it calls for.
    pub fn user_event(&self, event: &Event<CalendarUser>) -> Triggers {
        self.changed.store(true, Ordering::Relaxed);
        let mut state = self.state();
        let mut triggers = Triggers::default();
        match event {
            Event::Init => state.relist_users = Some(HashSet::new()),
            Event::InitApply(user) | Event::Apply(user) => {
                let key = ObjectRef::from_obj(user);
                if let Some(seen) = state.relist_users.as_mut() {
                    seen.insert(key.clone());
                }
                state.apply_user(user, &mut triggers);
            }
            Event::Delete(user) => state.delete_user(&ObjectRef::from_obj(user), &mut triggers),
            Event::InitDone => {
                let seen = state.relist_users.take().unwrap_or_default();
                let removed: Vec<_> = state
                    .users
                    .keys()
                    .filter(|key| !seen.contains(*key))
                    .cloned()
                    .collect();
                for key in removed {
                    state.delete_user(&key, &mut triggers);
                }
            }
        }
        triggers
    }

    /// Applies a CalendarSync watch event and returns the reconciles it calls for.
    pub fn sync_event(&self, event: &Event<CalendarSync>) -> Triggers {
        self.changed.store(true, Ordering::Relaxed);
        let mut state = self.state();
        let mut triggers = Triggers::default();
        match event {
            Event::Init => state.relist_syncs = Some(HashSet::new()),
            Event::InitApply(sync) | Event::Apply(sync) => {
                let key = ObjectRef::from_obj(sync);
                if let Some(seen) = state.relist_syncs.as_mut() {
                    seen.insert(key.clone());
                }
                state.apply_sync(sync, &mut triggers);
            }
            Event::Delete(sync) => state.delete_sync(&ObjectRef::from_obj(sync), &mut triggers),
            Event::InitDone => {
                let seen = state.relist_syncs.take().unwrap_or_default();
                let removed: Vec<_> = state
                    .syncs
                    .keys()
                    .filter(|key| !seen.contains(*key))
                    .cloned()
                    .collect();
                for key in removed {
                    state.delete_sync(&key, &mut triggers);
                }
            }
        }
        triggers
    }

    /// Returns the other CalendarUsers with the same username.
    pub fn user_rivals(
        &self,
        user: &CalendarUser,
        users: &Store<CalendarUser>,
    ) -> Vec<Arc<CalendarUser>> {
        let key = ObjectRef::from_obj(user);
        let state = self.state();
        state
            .users_by_username
            .get(&user.spec.username)
            .into_iter()
            .flatten()
            .filter(|other| **other != key)
            .filter_map(|other| users.get(other))
            .collect()
    }

    /// Returns the CalendarSyncs that reference the user.
    pub fn referencing_syncs(
        &self,
        user: &ObjectRef<CalendarUser>,
        syncs: &Store<CalendarSync>,
    ) -> Vec<Arc<CalendarSync>> {
        let state = self.state();
        state
            .syncs_by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|sync| syncs.get(sync))
            .collect()
    }

    /// Returns the other CalendarSyncs of the same username and type: those that claim it in
    /// their status, and those that reference a CalendarUser with that username.
    pub fn sync_rivals(
        &self,
        sync: &CalendarSync,
        username: &str,
        syncs: &Store<CalendarSync>,
    ) -> Vec<Arc<CalendarSync>> {
        let key = ObjectRef::from_obj(sync);
        let state = self.state();
        let by_user = state
            .users_by_username
            .get(username)
            .into_iter()
            .flatten()
            .filter_map(|user| state.syncs_by_user.get(user))
            .flatten();
        let by_claim = state.syncs_by_claim.get(username).into_iter().flatten();
        let candidates: HashSet<&ObjectRef<CalendarSync>> = by_user.chain(by_claim).collect();
        candidates
            .into_iter()
            .filter(|other| **other != key)
            .filter_map(|other| syncs.get(other))
            .filter(|other| other.spec.type_ == sync.spec.type_)
            .collect()
    }

    /// Returns what the resources of this cluster manage, for the read-only API.
    pub fn ownership(&self) -> Ownership {
        let state = self.state();
        Ownership {
            users: state
                .users
                .values()
                .filter_map(|entry| entry.owned_username.clone())
                .collect(),
            synchronizations: state
                .syncs
                .values()
                .filter_map(|entry| entry.sync_id)
                .collect(),
        }
    }
}

impl State {
    fn apply_user(&mut self, user: &CalendarUser, triggers: &mut Triggers) {
        let key = ObjectRef::from_obj(user);
        let status = user.status.as_ref();
        let owned_username = status.and_then(|s| s.owned_username.clone());
        let ready = is_ready(
            status.map_or(&[], |s| s.conditions.as_slice()),
            user.metadata.generation,
        );
        let entry = UserEntry {
            username: user.spec.username.clone(),
            deleting: user.metadata.deletion_timestamp.is_some(),
            own_hash: own_hash(user),
            dependents_hash: hash_of((
                ready,
                &owned_username,
                user.metadata.deletion_timestamp.is_some(),
                &user.metadata.uid,
            )),
            owned_username,
        };
        let previous = self.users.insert(key.clone(), entry);
        let entry = &self.users[&key];
        if let Some(previous) = &previous
            && previous.username != entry.username
        {
            remove_from(&mut self.users_by_username, &previous.username, &key);
        }
        self.users_by_username
            .entry(entry.username.clone())
            .or_default()
            .insert(key.clone());

        if previous
            .as_ref()
            .is_none_or(|p| p.own_hash != entry.own_hash)
        {
            triggers.users.push(key.clone());
        }
        if previous
            .as_ref()
            .is_none_or(|p| p.dependents_hash != entry.dependents_hash)
        {
            triggers
                .syncs
                .extend(self.syncs_by_user.get(&key).into_iter().flatten().cloned());
        }
    }

    fn delete_user(&mut self, key: &ObjectRef<CalendarUser>, triggers: &mut Triggers) {
        let Some(entry) = self.users.remove(key) else {
            return;
        };
        remove_from(&mut self.users_by_username, &entry.username, key);
        // A competitor in conflict may own the username now; CalendarSyncs wait for a user.
        triggers.users.extend(
            self.users_by_username
                .get(&entry.username)
                .into_iter()
                .flatten()
                .cloned(),
        );
        triggers
            .syncs
            .extend(self.syncs_by_user.get(key).into_iter().flatten().cloned());
    }

    fn apply_sync(&mut self, sync: &CalendarSync, triggers: &mut Triggers) {
        let key = ObjectRef::from_obj(sync);
        let status = sync.status.as_ref();
        let claims = status.is_some_and(|s| s.sync_id.is_some() || s.pending_create.is_some());
        let entry = SyncEntry {
            user: user_ref_of(sync),
            claim: status.and_then(|s| s.username.clone()).filter(|_| claims),
            sync_id: status.and_then(|s| s.sync_id),
            own_hash: own_hash(sync),
        };
        let previous = self.syncs.insert(key.clone(), entry);
        let entry = &self.syncs[&key];
        if let Some(previous) = &previous {
            if previous.user != entry.user
                && let Some(set) = self.syncs_by_user.get_mut(&previous.user)
            {
                set.remove(&key);
            }
            if previous.claim != entry.claim
                && let Some(claim) = &previous.claim
            {
                remove_from(&mut self.syncs_by_claim, claim, &key);
            }
        }
        self.syncs_by_user
            .entry(entry.user.clone())
            .or_default()
            .insert(key.clone());
        if let Some(claim) = &entry.claim {
            self.syncs_by_claim
                .entry(claim.clone())
                .or_default()
                .insert(key.clone());
        }

        if previous
            .as_ref()
            .is_none_or(|p| p.own_hash != entry.own_hash)
        {
            triggers.syncs.push(key.clone());
        }
        // A user being deleted waits for its CalendarSyncs and for undeclared ids.
        let claim_changed = previous
            .as_ref()
            .is_some_and(|p| p.sync_id != entry.sync_id || p.claim != entry.claim);
        if (previous.is_none() || claim_changed) && self.is_deleting(&entry.user) {
            triggers.users.push(entry.user.clone());
        }
    }

    fn delete_sync(&mut self, key: &ObjectRef<CalendarSync>, triggers: &mut Triggers) {
        let Some(entry) = self.syncs.remove(key) else {
            return;
        };
        if let Some(set) = self.syncs_by_user.get_mut(&entry.user) {
            set.remove(key);
            if set.is_empty() {
                self.syncs_by_user.remove(&entry.user);
            }
        }
        if let Some(claim) = &entry.claim {
            // A competitor in conflict may own the synchronization now.
            let rivals = self
                .syncs_by_claim
                .get(claim)
                .into_iter()
                .flatten()
                .cloned();
            triggers.syncs.extend(rivals);
            remove_from(&mut self.syncs_by_claim, claim, key);
            let users = self.users_by_username.get(claim).into_iter().flatten();
            for user in users {
                triggers
                    .syncs
                    .extend(self.syncs_by_user.get(user).into_iter().flatten().cloned());
            }
        }
        if self.is_deleting(&entry.user) {
            triggers.users.push(entry.user);
        }
    }

    fn is_deleting(&self, user: &ObjectRef<CalendarUser>) -> bool {
        self.users.get(user).is_some_and(|entry| entry.deleting)
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::decide::with_ready;
    use crate::resources::{
        CalendarSyncSpec, CalendarSyncStatus, CalendarUserSpec, CalendarUserStatus, DeletionPolicy,
        UnlinkMode, UserReference, reason,
    };

    fn user(namespace: &str, name: &str, username: &str) -> CalendarUser {
        let mut user = CalendarUser::new(
            name,
            CalendarUserSpec {
                username: username.to_string(),
                deletion_policy: DeletionPolicy::Delete,
            },
        );
        user.metadata.namespace = Some(namespace.to_string());
        user.metadata.generation = Some(1);
        user
    }

    fn sync(namespace: &str, name: &str, user: &str, type_: &str) -> CalendarSync {
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
        sync
    }

    fn ready(mut user: CalendarUser) -> CalendarUser {
        user.status = Some(CalendarUserStatus {
            observed_generation: Some(1),
            owned_username: Some(user.spec.username.clone()),
            conditions: with_ready(&[], true, reason::PROVISIONED, "ok", Some(1)),
        });
        user
    }

    #[test]
    fn new_user_triggers_itself_but_status_change_does_not() {
        let index = Index::default();
        let alice = user("ns", "alice", "alice");
        let triggers = index.user_event(&Event::Apply(alice.clone()));
        assert_eq!(triggers.users, vec![ObjectRef::from_obj(&alice)]);

        let mut written = alice.clone();
        written.status = Some(CalendarUserStatus {
            owned_username: Some("alice".to_string()),
            ..CalendarUserStatus::default()
        });
        let triggers = index.user_event(&Event::Apply(written));
        assert!(triggers.users.is_empty());
    }

    #[test]
    fn user_becoming_ready_triggers_its_syncs() {
        let index = Index::default();
        let alice = user("ns", "alice", "alice");
        index.user_event(&Event::Apply(alice.clone()));
        let alice_o365 = sync("ns", "alice-o365", "alice", "o365");
        let other = sync("ns", "bob-o365", "bob", "o365");
        index.sync_event(&Event::Apply(alice_o365.clone()));
        index.sync_event(&Event::Apply(other));

        let triggers = index.user_event(&Event::Apply(ready(alice)));
        assert_eq!(triggers.syncs, vec![ObjectRef::from_obj(&alice_o365)]);
        assert!(triggers.users.is_empty());
    }

    #[test]
    fn relist_drops_objects_that_are_gone() {
        let index = Index::default();
        let alice = user("ns", "alice", "alice");
        let bob = user("ns", "bob", "bob");
        index.user_event(&Event::Apply(alice.clone()));
        index.user_event(&Event::Apply(bob.clone()));
        index.user_event(&Event::Init);
        index.user_event(&Event::InitApply(alice.clone()));
        index.user_event(&Event::InitDone);

        let (reader, mut writer) = store::<CalendarUser>();
        writer.apply_watcher_event(&Event::Apply(alice.clone()));
        let rival = user("other", "alice2", "alice");
        assert_eq!(index.user_rivals(&rival, &reader).len(), 1);
        let bob_rival = user("other", "bob2", "bob");
        assert!(index.user_rivals(&bob_rival, &reader).is_empty());
    }

    #[test]
    fn sync_rivals_include_claims_and_same_username_users() {
        let index = Index::default();
        let (users, mut users_writer) = store::<CalendarUser>();
        let (syncs, mut syncs_writer) = store::<CalendarSync>();
        let apply_user =
            |user: CalendarUser,
             writer: &mut kube::runtime::reflector::store::Writer<CalendarUser>| {
                let event = Event::Apply(user);
                writer.apply_watcher_event(&event);
                index.user_event(&event);
            };
        apply_user(user("a", "alice", "alice"), &mut users_writer);
        apply_user(user("b", "alice", "alice"), &mut users_writer);

        let mut claimed = sync("c", "claimed", "whoever", "o365");
        claimed.status = Some(CalendarSyncStatus {
            sync_id: Some(7),
            username: Some("alice".to_string()),
            ..CalendarSyncStatus::default()
        });
        let candidates = [
            sync("a", "mine", "alice", "o365"),
            sync("b", "same-username", "alice", "o365"),
            sync("b", "other-type", "alice", "ews"),
            claimed,
        ];
        for candidate in candidates.iter().cloned() {
            let event = Event::Apply(candidate);
            syncs_writer.apply_watcher_event(&event);
            index.sync_event(&event);
        }

        let mut rivals: Vec<String> = index
            .sync_rivals(&candidates[0], "alice", &syncs)
            .iter()
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect();
        rivals.sort();
        assert_eq!(rivals, vec!["claimed", "same-username"]);
        assert!(index.ownership().manages_sync(7));
        assert_eq!(users.len(), 2);
    }
}
