use imbl::{OrdMap, OrdSet};
use jiff::Timestamp;
use serde::Serialize;

/// One synchronization as `GET /synchronizations` lists it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RemoteSync {
    pub id: i64,
    pub username: String,
    #[serde(rename = "type")]
    pub type_: String,
}

/// An immutable picture of the remote users and synchronizations.
///
/// The maps are persistent (structurally shared), so cloning a snapshot to apply one write is
/// O(log n) and readers keep the version they hold.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Every remote username, sorted.
    pub users: OrdSet<String>,
    /// Every remote synchronization by id.
    pub synchronizations: OrdMap<i64, RemoteSync>,
    /// When the lists behind this snapshot were requested. Every write that completed before
    /// this instant is reflected, and so are the controller's own writes after it.
    pub fetched_at: Timestamp,
    /// Increases by one with every published change (a refresh or a write), so a consumer can
    /// cache work per version.
    pub version: u64,
    // Synchronization ids per username, for the lookups by username and by (username, type).
    by_user: OrdMap<String, OrdSet<i64>>,
}

impl Snapshot {
    /// Builds a snapshot from the two lists of one refresh.
    pub fn from_lists(
        users: impl IntoIterator<Item = String>,
        synchronizations: impl IntoIterator<Item = RemoteSync>,
        fetched_at: Timestamp,
    ) -> Self {
        let mut snapshot = Snapshot {
            users: users.into_iter().collect(),
            synchronizations: OrdMap::new(),
            fetched_at,
            version: 0,
            by_user: OrdMap::new(),
        };
        for sync in synchronizations {
            snapshot.insert_sync(sync);
        }
        snapshot
    }

    /// Returns whether the user exists remotely.
    pub fn has_user(&self, username: &str) -> bool {
        self.users.contains(username)
    }

    /// Returns a synchronization by id.
    pub fn sync(&self, id: i64) -> Option<&RemoteSync> {
        self.synchronizations.get(&id)
    }

    /// Returns a user's synchronizations, lowest id first.
    pub fn syncs_of_user<'a>(&'a self, username: &str) -> impl Iterator<Item = &'a RemoteSync> {
        self.by_user
            .get(username)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.synchronizations.get(id))
    }

    /// Returns a user's synchronizations of one type, lowest id first.
    pub fn syncs_of<'a>(
        &'a self,
        username: &'a str,
        type_: &'a str,
    ) -> impl Iterator<Item = &'a RemoteSync> {
        self.syncs_of_user(username)
            .filter(move |sync| sync.type_ == type_)
    }

    pub(crate) fn insert_user(&mut self, username: &str) {
        self.users.insert(username.to_string());
    }

    // Deleting a remote user also removes its synchronizations in MyTimetable.
    pub(crate) fn remove_user(&mut self, username: &str) {
        self.users.remove(username);
        if let Some(ids) = self.by_user.remove(username) {
            for id in ids {
                self.synchronizations.remove(&id);
            }
        }
    }

    pub(crate) fn insert_sync(&mut self, sync: RemoteSync) {
        self.by_user
            .entry(sync.username.clone())
            .or_default()
            .insert(sync.id);
        self.synchronizations.insert(sync.id, sync);
    }

    pub(crate) fn remove_sync(&mut self, id: i64) {
        let Some(sync) = self.synchronizations.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_user.get_mut(&sync.username) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_user.remove(&sync.username);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sync(id: i64, username: &str, type_: &str) -> RemoteSync {
        RemoteSync {
            id,
            username: username.to_string(),
            type_: type_.to_string(),
        }
    }

    fn sample() -> Snapshot {
        Snapshot::from_lists(
            ["alice".to_string(), "bob".to_string()],
            [
                sync(7, "alice", "o365"),
                sync(3, "alice", "o365"),
                sync(4, "alice", "ews"),
                sync(5, "bob", "o365"),
            ],
            Timestamp::UNIX_EPOCH,
        )
    }

    #[test]
    fn syncs_of_type_are_sorted_by_id() {
        let snapshot = sample();
        let ids: Vec<i64> = snapshot.syncs_of("alice", "o365").map(|s| s.id).collect();
        assert_eq!(ids, vec![3, 7]);
    }

    #[test]
    fn syncs_of_unknown_user_are_empty() {
        assert_eq!(sample().syncs_of_user("carol").count(), 0);
    }

    #[test]
    fn removing_user_removes_its_syncs() {
        let mut snapshot = sample();
        snapshot.remove_user("alice");
        assert!(!snapshot.has_user("alice"));
        assert_eq!(snapshot.synchronizations.len(), 1);
        assert!(snapshot.sync(5).is_some());
    }

    #[test]
    fn removing_sync_updates_user_index() {
        let mut snapshot = sample();
        snapshot.remove_sync(3);
        let ids: Vec<i64> = snapshot.syncs_of("alice", "o365").map(|s| s.id).collect();
        assert_eq!(ids, vec![7]);
        snapshot.remove_sync(3);
        assert_eq!(snapshot.synchronizations.len(), 3);
    }

    #[test]
    fn clone_keeps_old_version_unchanged() {
        let old = sample();
        let mut new = old.clone();
        new.insert_user("carol");
        new.insert_sync(sync(9, "carol", "ews"));
        assert!(!old.has_user("carol"));
        assert!(old.sync(9).is_none());
        assert!(new.has_user("carol"));
    }
}
