use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{RefreshFailure, RemoteSync, Snapshot};

/// The two lists of one refresh.
#[derive(Clone, Debug, Default)]
pub struct Lists {
    pub users: Vec<String>,
    pub synchronizations: Vec<RemoteSync>,
}

/// The error of a failed refresh.
#[derive(Clone, Debug)]
pub struct ListError {
    /// MyTimetable rejected the API token.
    pub unauthorized: bool,
    /// The error, without the token.
    pub message: String,
}

/// Fetches `GET /users` and `GET /synchronizations`. The MyTimetable client implements it.
pub trait Lister: Send + Sync + 'static {
    fn list(&self) -> BoxFuture<'_, Result<Lists, ListError>>;
}

/// Timing of the background refresh.
#[derive(Clone, Debug)]
pub struct ViewConfig {
    /// The maximum time between two refreshes when no reconcile requests one, which bounds
    /// how long drift goes unnoticed.
    pub resync_interval: Duration,
    /// Minimum time between the starts of two refreshes, so that a burst of reconciles that
    /// each need a fresher snapshot costs one list pair per interval. The view waits longer
    /// when lists are slow: ten times the duration of the last refresh, at most
    /// `max_refresh_interval`.
    pub min_refresh_interval: Duration,
    pub max_refresh_interval: Duration,
    /// Maximum wait between two attempts after failed refreshes (the wait doubles from
    /// `min_refresh_interval`).
    pub max_retry_interval: Duration,
}

impl ViewConfig {
    pub fn new(resync_interval: Duration) -> Self {
        ViewConfig {
            resync_interval,
            // One list pair per second keeps lists far below 5% of the requests while
            // thousands of creates wait for their ids, and adds at most a second to each.
            min_refresh_interval: Duration::from_secs(1),
            // Large lists that take a second each are then paced to one pair per 10 s, about
            // a tenth of MyTimetable's time for this client.
            max_refresh_interval: Duration::from_secs(10),
            max_retry_interval: resync_interval.min(Duration::from_secs(60)),
        }
    }
}

/// The remote users and synchronizations that resources of this cluster manage: a user that
/// a CalendarUser owns, a synchronization id that a CalendarSync records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    pub users: HashSet<String>,
    pub synchronizations: HashSet<i64>,
}

impl Ownership {
    pub fn manages_user(&self, username: &str) -> bool {
        self.users.contains(username)
    }

    pub fn manages_sync(&self, id: i64) -> bool {
        self.synchronizations.contains(&id)
    }
}

/// The shared, refreshed view of MyTimetable's users and synchronizations.
///
/// One background task ([`RemoteView::run`]) lists both collections every resync interval,
/// and sooner when a reconcile requests a snapshot newer than some instant
/// ([`RemoteView::request_refresh`]). Only that task lists, so concurrent requests share one
/// in-flight refresh, and starts are at least `min_refresh_interval` apart. Writes whose
/// outcome is known update the snapshot at once; a write that completes while a refresh is in
/// flight is applied to that refresh's result too, so the view never moves backwards.
#[derive(Clone)]
pub struct RemoteView {
    inner: Arc<Inner>,
}

struct Inner {
    lister: Arc<dyn Lister>,
    config: ViewConfig,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    ownership: watch::Sender<Arc<Ownership>>,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    // The newest instant some caller needs a snapshot to be requested after.
    wanted_after: Option<Timestamp>,
    // Set while a refresh is in flight: the writes completed since it started.
    journal: Option<Vec<Write>>,
    failure: Option<RefreshFailure>,
    consecutive_failures: u32,
    version: u64,
}

#[derive(Clone, Debug)]
enum Write {
    UserCreated(String),
    UserDeleted(String),
    SyncDeleted(i64),
}

impl Write {
    fn apply(&self, snapshot: &mut Snapshot) {
        match self {
            Write::UserCreated(username) => snapshot.insert_user(username),
            Write::UserDeleted(username) => snapshot.remove_user(username),
            Write::SyncDeleted(id) => snapshot.remove_sync(*id),
        }
    }
}

impl RemoteView {
    pub fn new(lister: Arc<dyn Lister>, config: ViewConfig) -> Self {
        RemoteView {
            inner: Arc::new(Inner {
                lister,
                config,
                snapshot: watch::Sender::new(None),
                ownership: watch::Sender::new(Arc::new(Ownership::default())),
                state: Mutex::new(State::default()),
                wake: Notify::new(),
            }),
        }
    }

    /// Returns the current snapshot, or None before the first refresh succeeded. No I/O.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.inner.snapshot.borrow().clone()
    }

    /// Returns a receiver that is notified on every new snapshot: refreshes and writes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.inner.snapshot.subscribe()
    }

    /// Returns the failure of the last refresh when no refresh succeeded since.
    pub fn last_failure(&self) -> Option<RefreshFailure> {
        self.state().failure.clone()
    }

    /// Asks for a snapshot whose lists are requested after `newer_than`. Does not wait; the
    /// new snapshot arrives through [`RemoteView::subscribe`].
    pub fn request_refresh(&self, newer_than: Timestamp) {
        let mut state = self.state();
        if state.wanted_after.is_none_or(|wanted| wanted < newer_than) {
            state.wanted_after = Some(newer_than);
        }
        drop(state);
        self.inner.wake.notify_one();
    }

    /// Waits for a snapshot whose lists were requested after `newer_than`, asking for one.
    pub async fn fresh_snapshot(&self, newer_than: Timestamp) -> Arc<Snapshot> {
        let mut receiver = self.subscribe();
        self.request_refresh(newer_than);
        loop {
            if let Some(snapshot) = receiver.borrow_and_update().clone()
                && snapshot.fetched_at > newer_than
            {
                return snapshot;
            }
            if receiver.changed().await.is_err() {
                // The sender lives in `self`, so it cannot be dropped while we wait.
                unreachable!("remote view dropped while waiting");
            }
        }
    }

    /// Records that the remote user exists now (after a successful `PUT /users/{username}`).
    pub fn record_user_created(&self, username: &str) {
        self.record(Write::UserCreated(username.to_string()));
    }

    /// Records that the remote user and its synchronizations are gone.
    pub fn record_user_deleted(&self, username: &str) {
        self.record(Write::UserDeleted(username.to_string()));
    }

    /// Records that a synchronization is gone (deleted, or MyTimetable returned 422).
    pub fn record_sync_deleted(&self, id: i64) {
        self.record(Write::SyncDeleted(id));
    }

    /// Returns what resources of this cluster manage.
    pub fn ownership(&self) -> Arc<Ownership> {
        self.inner.ownership.borrow().clone()
    }

    /// Returns a receiver that is notified when the ownership changes.
    pub fn subscribe_ownership(&self) -> watch::Receiver<Arc<Ownership>> {
        self.inner.ownership.subscribe()
    }

    /// Replaces the ownership index; the controller calls it as its caches change.
    pub fn set_ownership(&self, ownership: Ownership) {
        self.inner.ownership.send_if_modified(|current| {
            if **current == ownership {
                return false;
            }
            *current = Arc::new(ownership);
            true
        });
    }

    /// Refreshes in the background until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let wait = self.next_refresh_in();
            if !wait.is_zero() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                    () = self.inner.wake.notified() => continue,
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            let started = tokio::time::Instant::now();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.refresh() => {}
            }
            // Pace refreshes even when requests keep arriving.
            let config = &self.inner.config;
            let pause = started.elapsed().saturating_mul(10).clamp(
                config.min_refresh_interval,
                config.max_refresh_interval.max(config.min_refresh_interval),
            );
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    // Returns how long to wait before the next refresh is due.
    fn next_refresh_in(&self) -> Duration {
        let config = &self.inner.config;
        let state = self.state();
        let now = Timestamp::now();
        if let Some(failure) = &state.failure {
            let exponent = state.consecutive_failures.saturating_sub(1).min(16);
            let backoff = config
                .min_refresh_interval
                .saturating_mul(1 << exponent)
                .min(config.max_retry_interval);
            return until(failure.at, backoff, now);
        }
        let Some(snapshot) = self.snapshot() else {
            return Duration::ZERO;
        };
        if state
            .wanted_after
            .is_some_and(|wanted| wanted >= snapshot.fetched_at)
        {
            return Duration::ZERO;
        }
        until(snapshot.fetched_at, config.resync_interval, now)
    }

    async fn refresh(&self) {
        let started_at = Timestamp::now();
        self.state().journal = Some(Vec::new());
        let result = self.inner.lister.list().await;

        let mut state = self.state();
        let journal = state.journal.take().unwrap_or_default();
        match result {
            Ok(lists) => {
                let mut snapshot =
                    Snapshot::from_lists(lists.users, lists.synchronizations, started_at);
                for write in &journal {
                    write.apply(&mut snapshot);
                }
                state.version += 1;
                snapshot.version = state.version;
                state.failure = None;
                state.consecutive_failures = 0;
                tracing::debug!(
                    users = snapshot.users.len(),
                    synchronizations = snapshot.synchronizations.len(),
                    "Refreshed remote view"
                );
                self.inner.snapshot.send_replace(Some(Arc::new(snapshot)));
            }
            Err(error) => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                tracing::warn!(
                    error = %error.message,
                    unauthorized = error.unauthorized,
                    attempt = state.consecutive_failures,
                    "Refreshing remote view failed"
                );
                state.failure = Some(RefreshFailure {
                    unauthorized: error.unauthorized,
                    message: error.message,
                    at: Timestamp::now(),
                });
            }
        }
    }

    fn record(&self, write: Write) {
        let mut state = self.state();
        if let Some(journal) = state.journal.as_mut() {
            journal.push(write.clone());
        }
        let Some(current) = self.snapshot() else {
            return;
        };
        let mut snapshot = (*current).clone();
        write.apply(&mut snapshot);
        state.version += 1;
        snapshot.version = state.version;
        // Sent under the lock, so a concurrent refresh cannot publish in between and lose it.
        self.inner.snapshot.send_replace(Some(Arc::new(snapshot)));
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data and no code panics while holding it.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// Returns the time from `now` until `since + interval`, zero when that has passed.
fn until(since: Timestamp, interval: Duration, now: Timestamp) -> Duration {
    let due = jiff::SignedDuration::try_from(interval)
        .ok()
        .and_then(|interval| since.checked_add(interval).ok())
        .unwrap_or(Timestamp::MAX);
    let remaining = due.duration_since(now);
    Duration::try_from(remaining).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    // A lister that counts its calls and blocks each list until the test opens the gate.
    struct GatedLister {
        calls: AtomicUsize,
        gate: tokio::sync::Semaphore,
        lists: Mutex<Result<Lists, ListError>>,
    }

    impl GatedLister {
        fn new(users: &[&str]) -> Arc<Self> {
            Arc::new(GatedLister {
                calls: AtomicUsize::new(0),
                gate: tokio::sync::Semaphore::new(0),
                lists: Mutex::new(Ok(Lists {
                    users: users.iter().map(|u| u.to_string()).collect(),
                    synchronizations: Vec::new(),
                })),
            })
        }
    }

    impl Lister for GatedLister {
        fn list(&self) -> BoxFuture<'_, Result<Lists, ListError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.gate.acquire().await.expect("gate open").forget();
                self.lists.lock().unwrap().clone()
            })
        }
    }

    fn config() -> ViewConfig {
        ViewConfig {
            resync_interval: Duration::from_secs(3600),
            min_refresh_interval: Duration::from_millis(10),
            max_refresh_interval: Duration::from_millis(10),
            max_retry_interval: Duration::from_millis(50),
        }
    }

    fn start(lister: Arc<GatedLister>) -> (RemoteView, CancellationToken) {
        let view = RemoteView::new(lister, config());
        let shutdown = CancellationToken::new();
        let runner = view.clone();
        let token = shutdown.clone();
        tokio::spawn(async move { runner.run(token).await });
        (view, shutdown)
    }

    // Waits for a snapshot like the reconcilers do, failing instead of hanging.
    async fn fresh(view: &RemoteView, newer_than: Timestamp) -> Arc<Snapshot> {
        tokio::time::timeout(Duration::from_secs(10), view.fresh_snapshot(newer_than))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no snapshot newer than {newer_than}; last failure: {:?}",
                    view.last_failure()
                )
            })
    }

    async fn wait_for_calls(lister: &GatedLister, calls: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while lister.calls.load(Ordering::SeqCst) < calls {
            assert!(
                tokio::time::Instant::now() < deadline,
                "lister saw {} calls, expected {calls}",
                lister.calls.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_refresh() {
        let lister = GatedLister::new(&["alice"]);
        let (view, shutdown) = start(lister.clone());
        lister.gate.add_permits(1);
        let first = fresh(&view, Timestamp::UNIX_EPOCH).await;

        // Many callers need a newer snapshot; the first refresh waits at the gate.
        let newer_than = first.fetched_at;
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let view = view.clone();
                tokio::spawn(async move { fresh(&view, newer_than).await })
            })
            .collect();
        wait_for_calls(&lister, 2).await;
        lister.gate.add_permits(1);
        for waiter in waiters {
            let snapshot = waiter.await.expect("waiter");
            assert!(snapshot.fetched_at > newer_than);
        }
        assert_eq!(lister.calls.load(Ordering::SeqCst), 2);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn write_during_refresh_survives_its_result() {
        let lister = GatedLister::new(&[]);
        let (view, shutdown) = start(lister.clone());
        lister.gate.add_permits(1);
        let first = fresh(&view, Timestamp::UNIX_EPOCH).await;

        // The list of the second refresh was taken before the user was created.
        view.request_refresh(first.fetched_at);
        wait_for_calls(&lister, 2).await;
        view.record_user_created("alice");
        assert!(view.snapshot().expect("snapshot").has_user("alice"));
        lister.gate.add_permits(1);
        let second = fresh(&view, first.fetched_at).await;
        assert!(second.has_user("alice"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn failed_refresh_is_reported_and_retried() {
        let lister = GatedLister::new(&["alice"]);
        *lister.lists.lock().unwrap() = Err(ListError {
            unauthorized: true,
            message: "MyTimetable rejected the API token".to_string(),
        });
        let (view, shutdown) = start(lister.clone());
        lister.gate.add_permits(1);
        wait_for_calls(&lister, 1).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while view.last_failure().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no failure recorded"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(view.last_failure().expect("failure").unauthorized);
        assert!(view.snapshot().is_none());

        *lister.lists.lock().unwrap() = Ok(Lists::default());
        lister.gate.add_permits(1);
        fresh(&view, Timestamp::UNIX_EPOCH).await;
        assert_eq!(view.last_failure(), None);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn deleting_user_updates_snapshot_at_once() {
        let lister = GatedLister::new(&["alice", "bob"]);
        let (view, shutdown) = start(lister.clone());
        lister.gate.add_permits(1);
        let first = fresh(&view, Timestamp::UNIX_EPOCH).await;
        view.record_user_deleted("alice");
        let current = view.snapshot().expect("snapshot");
        assert!(!current.has_user("alice"));
        assert!(current.version > first.version);
        assert!(first.has_user("alice"));
        shutdown.cancel();
    }

    #[test]
    fn ownership_update_without_change_does_not_notify() {
        let view = RemoteView::new(GatedLister::new(&[]), config());
        let receiver = view.subscribe_ownership();
        view.set_ownership(Ownership::default());
        assert!(!receiver.has_changed().expect("sender alive"));
        let mut owned = Ownership::default();
        owned.users.insert("alice".to_string());
        view.set_ownership(owned);
        assert!(receiver.has_changed().expect("sender alive"));
        assert!(view.ownership().manages_user("alice"));
    }
}
