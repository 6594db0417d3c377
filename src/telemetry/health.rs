//! Readiness and liveness of the process, from signals the controller, the remote view and
//! the leader election leave here.
//!
//! Liveness checks whether the process's own loops are stuck, never whether MyTimetable or
//! the Kubernetes API server respond, because restarting the process cannot fix an outage of
//! either. Failed attempts count as progress. A loop is stuck when a reconcile runs far longer than
//! its requests can take, when the remote view has not finished a refresh attempt long after
//! one was due, when the Lease loop has not finished an attempt, or when a watch stream ended.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::runtime::watcher;

use crate::config::RunConfig;
use crate::remote::RemoteView;

/// The watch kinds that must have delivered their initial list before the process is ready.
pub const WATCHED_KINDS: [&str; 2] = ["CalendarUser", "CalendarSync"];

// The maximum time a MyTimetable request takes with the client's defaults: 4 attempts (3
// retries), each up to the request timeout plus a wait of up to 60 s. That wait is the
// maximum honoured Retry-After, and the backoff without one is at most 10 s.
fn request_budget(request_timeout: Duration) -> Duration {
    (request_timeout + Duration::from_secs(60)) * 4
}

/// When a loop counts as stuck.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// A reconcile that runs longer than this is stuck.
    pub reconcile_stall_after: Duration,
    /// The remote view is stuck when no refresh attempt finished for this long.
    pub refresh_stall_after: Duration,
    /// The Lease loop is stuck when no attempt finished for this long; checked only once the
    /// loop made its first attempt.
    pub lease_stall_after: Duration,
}

impl HealthConfig {
    /// Derives the limits from the flags of `calsync-operator run`.
    pub fn for_run(config: &RunConfig, lease_duration: Duration) -> HealthConfig {
        let budget = request_budget(config.request_timeout);
        HealthConfig {
            // A reconcile sends at most two MyTimetable requests and a few Kubernetes
            // requests. kube 5 sends those without a read timeout, and 5 minutes is far above
            // what a working API server takes.
            reconcile_stall_after: budget * 2 + Duration::from_secs(300),
            // A refresh is due one resync interval after the last one started. Its two lists
            // run concurrently within one request budget, and one more minute is margin.
            refresh_stall_after: config.resync_interval + budget + Duration::from_secs(60),
            // The Lease loop tries every retry period and bounds each attempt by the renew
            // deadline, both shorter than the lease duration. Four durations leave room for a
            // slow API server.
            lease_stall_after: lease_duration * 4,
        }
    }
}

/// Readiness and liveness state. Clones share the same state.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    config: HealthConfig,
    started: Instant,
    next_reconcile: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    // Kinds whose watch delivered its initial list at least once.
    established: BTreeSet<&'static str>,
    // A watch stream that ended while its consumer still ran.
    ended_watch: Option<&'static str>,
    in_flight: BTreeMap<u64, InFlight>,
    last_lease_attempt: Option<Instant>,
    shutting_down: bool,
}

struct InFlight {
    kind: &'static str,
    object: String,
    started: Instant,
}

/// Marks a reconcile as running until dropped, also when the reconcile is abandoned.
pub struct ReconcileGuard {
    health: Health,
    id: u64,
}

impl Drop for ReconcileGuard {
    fn drop(&mut self) {
        self.health.state().in_flight.remove(&self.id);
    }
}

impl Health {
    pub fn new(config: HealthConfig) -> Health {
        Health {
            inner: Arc::new(Inner {
                config,
                started: Instant::now(),
                next_reconcile: AtomicU64::new(0),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Returns when the process started, for ages before the first data arrived.
    pub fn started(&self) -> Instant {
        self.inner.started
    }

    /// Records a watch event of `kind`: the end of an initial list establishes the watch.
    pub fn observe_watch<K>(&self, kind: &'static str, event: &watcher::Result<watcher::Event<K>>) {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            self.state().established.insert(kind);
        }
    }

    /// Records that the watch stream of `kind` ended although its consumer still runs; the
    /// process is not live after that.
    pub fn watch_ended(&self, kind: &'static str) {
        self.state().ended_watch = Some(kind);
    }

    /// Records the start of a reconcile of `object` ("namespace/name").
    pub fn reconcile_started(&self, kind: &'static str, object: String) -> ReconcileGuard {
        let id = self.inner.next_reconcile.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        self.state().in_flight.insert(
            id,
            InFlight {
                kind,
                object,
                started,
            },
        );
        ReconcileGuard {
            health: self.clone(),
            id,
        }
    }

    /// Records a finished attempt of the Lease loop, successful or not.
    pub fn lease_attempted(&self) {
        self.state().last_lease_attempt = Some(Instant::now());
    }

    /// Marks the process as stopping: it is not ready from now on.
    pub fn set_shutting_down(&self) {
        self.state().shutting_down = true;
    }

    /// Returns whether the watches of `kinds` delivered their initial list at least once,
    /// which the read-only API's ownership filters need.
    pub fn watches_established(&self) -> bool {
        let state = self.state();
        WATCHED_KINDS
            .iter()
            .all(|kind| state.established.contains(kind))
    }

    /// Checks readiness: not stopping, both watches established once, and the remote view
    /// loaded once. Returns the reasons when not ready.
    pub fn readiness(&self, view: &RemoteView) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        let state = self.state();
        if state.shutting_down {
            reasons.push("shutting down".to_string());
        }
        for kind in WATCHED_KINDS {
            if !state.established.contains(kind) {
                reasons.push(format!(
                    "the {kind} watch has not delivered its initial list"
                ));
            }
        }
        drop(state);
        if view.snapshot().is_none() {
            let mut reason = "the remote view has not loaded yet".to_string();
            if let Some(failure) = view.last_failure() {
                let _ = write!(reason, " (last refresh failed: {})", failure.message);
            }
            reasons.push(reason);
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// Checks liveness (see the module documentation). Returns the reasons when a loop is
    /// stuck.
    pub fn liveness(&self, view: &RemoteView) -> Result<(), Vec<String>> {
        let config = &self.inner.config;
        let now = Instant::now();
        let mut reasons = Vec::new();
        let state = self.state();

        if let Some(kind) = state.ended_watch {
            reasons.push(format!("the {kind} watch stream ended"));
        }
        let oldest = state
            .in_flight
            .values()
            .min_by_key(|reconcile| reconcile.started);
        if let Some(reconcile) = oldest {
            let running = now.duration_since(reconcile.started);
            if running > config.reconcile_stall_after {
                reasons.push(format!(
                    "the reconcile of {} {} has run for {}s (limit {}s)",
                    reconcile.kind,
                    reconcile.object,
                    running.as_secs(),
                    config.reconcile_stall_after.as_secs()
                ));
            }
        }
        if let Some(attempt) = state.last_lease_attempt {
            let since = now.duration_since(attempt);
            if since > config.lease_stall_after {
                reasons.push(format!(
                    "the Lease loop has not finished an attempt for {}s (limit {}s)",
                    since.as_secs(),
                    config.lease_stall_after.as_secs()
                ));
            }
        }
        drop(state);

        let since_refresh = self.since_last_refresh_attempt(view);
        if since_refresh > config.refresh_stall_after {
            reasons.push(format!(
                "the remote view has not finished a refresh attempt for {}s (limit {}s)",
                since_refresh.as_secs(),
                config.refresh_stall_after.as_secs()
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    // The time since the remote view last finished a refresh attempt, or since start when it
    // finished none. A successful refresh counts from when its lists were requested.
    fn since_last_refresh_attempt(&self, view: &RemoteView) -> Duration {
        let fetched = view.snapshot().map(|snapshot| snapshot.fetched_at);
        let failed = view.last_failure().map(|failure| failure.at);
        match fetched.max(failed) {
            Some(at) => age_of(at),
            None => self.inner.started.elapsed(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data and no code panics while holding it.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Returns the time since `at` on the wall clock, zero when `at` is in the future.
pub(crate) fn age_of(at: Timestamp) -> Duration {
    Duration::try_from(Timestamp::now().duration_since(at)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::future::BoxFuture;

    use super::*;
    use crate::remote::{ListError, Lister, Lists, ViewConfig};

    struct NoLists;

    impl Lister for NoLists {
        fn list(&self) -> BoxFuture<'_, Result<Lists, ListError>> {
            Box::pin(std::future::pending())
        }
    }

    fn view() -> RemoteView {
        RemoteView::new(Arc::new(NoLists), ViewConfig::new(Duration::from_secs(300)))
    }

    fn health(stall: Duration) -> Health {
        Health::new(HealthConfig {
            reconcile_stall_after: stall,
            refresh_stall_after: Duration::from_secs(3600),
            lease_stall_after: stall,
        })
    }

    #[test]
    fn readiness_lists_every_missing_part() {
        let health = health(Duration::from_secs(60));
        let reasons = health.readiness(&view()).expect_err("not ready");
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("CalendarUser"), "{reasons:?}");
        assert!(reasons[1].contains("CalendarSync"), "{reasons:?}");
        assert!(reasons[2].contains("remote view"), "{reasons:?}");
    }

    #[test]
    fn watches_establish_on_init_done_only() {
        let health = health(Duration::from_secs(60));
        health.observe_watch::<()>("CalendarUser", &Ok(watcher::Event::Init));
        health.observe_watch::<()>("CalendarSync", &Ok(watcher::Event::InitDone));
        assert!(!health.watches_established());
        health.observe_watch::<()>("CalendarUser", &Ok(watcher::Event::InitDone));
        assert!(health.watches_established());
    }

    #[test]
    fn shutting_down_is_not_ready() {
        let health = health(Duration::from_secs(60));
        health.set_shutting_down();
        let reasons = health.readiness(&view()).expect_err("not ready");
        assert_eq!(reasons[0], "shutting down");
    }

    #[test]
    fn long_reconcile_fails_liveness_until_dropped() {
        let health = health(Duration::ZERO);
        let guard = health.reconcile_started("CalendarUser", "ns/alice".to_string());
        std::thread::sleep(Duration::from_millis(5));
        let reasons = health.liveness(&view()).expect_err("stuck");
        assert!(reasons[0].contains("CalendarUser ns/alice"), "{reasons:?}");
        drop(guard);
        assert_eq!(health.liveness(&view()), Ok(()));
    }

    #[test]
    fn ended_watch_fails_liveness() {
        let health = health(Duration::from_secs(60));
        health.watch_ended("CalendarSync");
        let reasons = health.liveness(&view()).expect_err("ended");
        assert!(
            reasons[0].contains("CalendarSync watch stream ended"),
            "{reasons:?}"
        );
    }

    #[test]
    fn stale_lease_loop_fails_liveness() {
        let health = health(Duration::ZERO);
        assert_eq!(health.liveness(&view()), Ok(()));
        health.lease_attempted();
        std::thread::sleep(Duration::from_millis(5));
        let reasons = health.liveness(&view()).expect_err("stale");
        assert!(reasons[0].contains("Lease loop"), "{reasons:?}");
    }

    #[test]
    fn refresh_that_never_finishes_fails_liveness() {
        let health = Health::new(HealthConfig {
            reconcile_stall_after: Duration::from_secs(60),
            refresh_stall_after: Duration::ZERO,
            lease_stall_after: Duration::from_secs(60),
        });
        std::thread::sleep(Duration::from_millis(5));
        let reasons = health.liveness(&view()).expect_err("stale view");
        assert!(reasons[0].contains("remote view"), "{reasons:?}");
    }

    #[test]
    fn default_limits_follow_the_flags() {
        use clap::Parser;

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunConfig,
        }
        let cli = Cli::parse_from([
            "calsync-operator",
            "--mytimetable-url=http://127.0.0.1:9/api/v0",
            "--token-file=/t",
        ]);
        let config = HealthConfig::for_run(&cli.run, Duration::from_secs(15));
        // 4 attempts of 30 s plus 60 s each: 360 s per request.
        assert_eq!(config.reconcile_stall_after, Duration::from_secs(1020));
        assert_eq!(config.refresh_stall_after, Duration::from_secs(720));
        assert_eq!(config.lease_stall_after, Duration::from_secs(60));
    }
}
