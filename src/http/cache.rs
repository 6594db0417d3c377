//! Response bodies of the large lists, rendered once per remote snapshot and ownership and
//! shared by every request that reads them.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::OnceCell;

use crate::remote::{Ownership, RemoteSync, RemoteView, Snapshot};
use crate::telemetry::RemoteCounts;

/// The entries of a list that a request selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    /// Entries that a resource of this cluster manages.
    Managed,
    /// Entries that no resource of this cluster manages (drift).
    Unmanaged,
}

impl Filter {
    fn index(self) -> usize {
        match self {
            Filter::All => 0,
            Filter::Managed => 1,
            Filter::Unmanaged => 2,
        }
    }

    fn keeps(self, managed: bool) -> bool {
        match self {
            Filter::All => true,
            Filter::Managed => managed,
            Filter::Unmanaged => !managed,
        }
    }
}

/// A JSON body and its strong entity tag.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub body: Bytes,
    /// A quoted hash of the body, so that equal bodies get equal tags also across restarts
    /// and replicas of the same build.
    pub etag: String,
}

impl Rendered {
    pub fn new(body: Vec<u8>) -> Rendered {
        // SipHash with fixed keys: stable within one build, which is all a cache needs.
        let mut hasher = DefaultHasher::new();
        hasher.write(&body);
        Rendered {
            etag: format!("\"{:016x}-{:x}\"", hasher.finish(), body.len()),
            body: Bytes::from(body),
        }
    }
}

/// The rendered lists of one snapshot and one ownership index.
pub struct Entry {
    pub snapshot: Arc<Snapshot>,
    ownership: Arc<Ownership>,
    users: [OnceCell<Rendered>; 3],
    synchronizations: [OnceCell<Rendered>; 3],
    counts: OnceLock<RemoteCounts>,
}

impl Entry {
    fn new(snapshot: Arc<Snapshot>, ownership: Arc<Ownership>) -> Entry {
        Entry {
            snapshot,
            ownership,
            users: Default::default(),
            synchronizations: Default::default(),
            counts: OnceLock::new(),
        }
    }

    /// Returns `{"users": [...]}`, rendered by the first request that needs it.
    pub async fn users(&self, filter: Filter) -> Rendered {
        let cell = &self.users[filter.index()];
        cell.get_or_init(|| async {
            let users = self
                .snapshot
                .users
                .iter()
                .filter(|username| filter.keeps(self.ownership.manages_user(username)));
            render("users", users)
        })
        .await
        .clone()
    }

    /// Returns `{"synchronizations": [...]}`, rendered by the first request that needs it.
    pub async fn synchronizations(&self, filter: Filter) -> Rendered {
        let cell = &self.synchronizations[filter.index()];
        cell.get_or_init(|| async {
            let synchronizations = self
                .snapshot
                .synchronizations
                .values()
                .filter(|sync| filter.keeps(self.ownership.manages_sync(sync.id)));
            render("synchronizations", synchronizations)
        })
        .await
        .clone()
    }

    /// Renders one user's synchronizations; small, so not cached.
    pub fn user_synchronizations(&self, username: &str, filter: Filter) -> Rendered {
        let synchronizations = self
            .snapshot
            .syncs_of_user(username)
            .filter(|sync| filter.keeps(self.ownership.manages_sync(sync.id)));
        render::<&RemoteSync>("synchronizations", synchronizations)
    }

    /// Counts the managed and unmanaged users and synchronizations.
    pub fn counts(&self) -> RemoteCounts {
        *self.counts.get_or_init(|| {
            let mut counts = RemoteCounts::default();
            for username in &self.snapshot.users {
                if self.ownership.manages_user(username) {
                    counts.users_managed += 1;
                } else {
                    counts.users_unmanaged += 1;
                }
            }
            for id in self.snapshot.synchronizations.keys() {
                if self.ownership.manages_sync(*id) {
                    counts.synchronizations_managed += 1;
                } else {
                    counts.synchronizations_unmanaged += 1;
                }
            }
            counts
        })
    }
}

// Serializes `{"<field>": [items...]}` straight from the iterator, without collecting it.
fn render<T: Serialize>(field: &'static str, items: impl Iterator<Item = T>) -> Rendered {
    // Serialize takes `&self`, so the iterator sits in a cell that the one call empties.
    struct Items<I>(Cell<Option<I>>);

    impl<I, T> Serialize for Items<I>
    where
        I: Iterator<Item = T>,
        T: Serialize,
    {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let items = self
                .0
                .take()
                .ok_or_else(|| serde::ser::Error::custom("list serialized twice"))?;
            serializer.collect_seq(items)
        }
    }

    let list = BTreeMap::from([(field, Items(Cell::new(Some(items))))]);
    // Strings and integers always serialize, so the error branch is unreachable.
    let body = serde_json::to_vec(&list).unwrap_or_default();
    Rendered::new(body)
}

/// The entry of the current snapshot and ownership, replaced when either changes.
pub struct Cache {
    view: RemoteView,
    current: Mutex<Option<Arc<Entry>>>,
}

impl Cache {
    pub fn new(view: RemoteView) -> Cache {
        Cache {
            view,
            current: Mutex::new(None),
        }
    }

    pub fn view(&self) -> &RemoteView {
        &self.view
    }

    /// Returns the entry of the current snapshot, or None before the first refresh.
    pub fn entry(&self) -> Option<Arc<Entry>> {
        let snapshot = self.view.snapshot()?;
        let ownership = self.view.ownership();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = current.as_ref()
            && Arc::ptr_eq(&entry.snapshot, &snapshot)
            && Arc::ptr_eq(&entry.ownership, &ownership)
        {
            return Some(entry.clone());
        }
        let entry = Arc::new(Entry::new(snapshot, ownership));
        *current = Some(entry.clone());
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

    fn entry(ownership: Ownership) -> Entry {
        let sync = |id, username: &str, type_: &str| RemoteSync {
            id,
            username: username.to_string(),
            type_: type_.to_string(),
        };
        let snapshot = Snapshot::from_lists(
            ["alice", "bob", "a/b c"].map(String::from),
            [sync(2, "bob", "ews"), sync(1, "alice", "o365")],
            Timestamp::UNIX_EPOCH,
        );
        Entry::new(Arc::new(snapshot), Arc::new(ownership))
    }

    fn alice_owned() -> Ownership {
        Ownership {
            users: ["alice".to_string()].into_iter().collect(),
            synchronizations: [1].into_iter().collect(),
        }
    }

    #[tokio::test]
    async fn lists_render_in_mytimetable_shapes() {
        let entry = entry(Ownership::default());
        let users = entry.users(Filter::All).await;
        assert_eq!(users.body, r#"{"users":["a/b c","alice","bob"]}"#);
        let syncs = entry.synchronizations(Filter::All).await;
        assert_eq!(
            syncs.body,
            r#"{"synchronizations":[{"id":1,"username":"alice","type":"o365"},{"id":2,"username":"bob","type":"ews"}]}"#
        );
    }

    #[tokio::test]
    async fn filters_split_managed_from_unmanaged() {
        let entry = entry(alice_owned());
        assert_eq!(
            entry.users(Filter::Managed).await.body,
            r#"{"users":["alice"]}"#
        );
        assert_eq!(
            entry.users(Filter::Unmanaged).await.body,
            r#"{"users":["a/b c","bob"]}"#
        );
        let unmanaged = entry.synchronizations(Filter::Unmanaged).await;
        assert_eq!(
            unmanaged.body,
            r#"{"synchronizations":[{"id":2,"username":"bob","type":"ews"}]}"#
        );
    }

    #[tokio::test]
    async fn repeated_requests_share_one_body() {
        let entry = entry(Ownership::default());
        let first = entry.synchronizations(Filter::All).await;
        let second = entry.synchronizations(Filter::All).await;
        // The same allocation, not an equal copy.
        assert_eq!(first.body.as_ptr(), second.body.as_ptr());
        assert_eq!(first.etag, second.etag);
    }

    #[tokio::test]
    async fn different_bodies_get_different_tags() {
        let entry = entry(alice_owned());
        let all = entry.users(Filter::All).await;
        let managed = entry.users(Filter::Managed).await;
        assert_ne!(all.etag, managed.etag);
        assert!(
            all.etag.starts_with('"') && all.etag.ends_with('"'),
            "{}",
            all.etag
        );
    }

    #[test]
    fn user_list_of_unknown_user_is_empty() {
        let entry = entry(Ownership::default());
        assert_eq!(
            entry.user_synchronizations("carol", Filter::All).body,
            r#"{"synchronizations":[]}"#
        );
    }

    #[test]
    fn counts_split_by_ownership() {
        let entry = entry(alice_owned());
        assert_eq!(
            entry.counts(),
            RemoteCounts {
                users_managed: 1,
                users_unmanaged: 2,
                synchronizations_managed: 1,
                synchronizations_unmanaged: 1,
            }
        );
    }
}
