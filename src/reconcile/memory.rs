//! The controller's in-memory records about objects between reconciles: per-object backoff
//! after errors, creates that MyTimetable rejected, and creates that returned. A restart
//! loses all of it, which costs at most one retry or one wait per object.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use rand::Rng;

/// First delay after an error.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Maximum delay between two attempts of one object, so that a recovered MyTimetable or a
/// rotated token is noticed within minutes even by objects that failed many times.
const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// How long a claim reserved in memory keeps competitors off, which covers the delay between
/// the claim's status write and its arrival in the watch cache.
const RESERVATION_TTL: Duration = Duration::from_secs(30);

/// Expired reservations are dropped once the map grows past this size.
const RESERVATION_PRUNE_SIZE: usize = 4096;

#[derive(Default)]
pub struct Memory {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    // By object uid: consecutive failures and when the next attempt is due.
    backoff: HashMap<String, (u32, Timestamp)>,
    // By object uid: the generation whose create MyTimetable rejected.
    rejected: HashMap<String, i64>,
    // By object uid: (pendingCreate.since, when the create returned).
    returned: HashMap<String, (Timestamp, Timestamp)>,
    // By claimed remote key: the uid that reserved it, and when.
    reservations: HashMap<String, (String, Timestamp)>,
}

impl Memory {
    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain maps and no code panics while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a failure and returns the delay before the next attempt: capped exponential,
    /// with jitter between half and all of it so that objects that failed together spread.
    pub fn failed(&self, uid: &str) -> Duration {
        let mut state = self.state();
        let failures = state.backoff.get(uid).map_or(0, |(n, _)| *n) + 1;
        let exponential = BACKOFF_BASE.saturating_mul(1 << (failures - 1).min(16));
        let capped = exponential.min(BACKOFF_CAP);
        let delay = capped.mul_f64(rand::rng().random_range(0.5..=1.0));
        let due = Timestamp::now()
            .checked_add(delay)
            .unwrap_or(Timestamp::MAX);
        state.backoff.insert(uid.to_string(), (failures, due));
        delay
    }

    /// Resets the backoff after a successful reconcile.
    pub fn succeeded(&self, uid: &str) {
        self.state().backoff.remove(uid);
    }

    /// Returns whether the object waits for a retry after a failure.
    pub fn backing_off(&self, uid: &str, now: Timestamp) -> bool {
        self.state()
            .backoff
            .get(uid)
            .is_some_and(|(_, due)| *due > now)
    }

    pub fn reject(&self, uid: &str, generation: i64) {
        self.state().rejected.insert(uid.to_string(), generation);
    }

    /// Returns whether MyTimetable rejected a create for this generation of the object.
    pub fn rejected(&self, uid: &str, generation: Option<i64>) -> bool {
        let state = self.state();
        state
            .rejected
            .get(uid)
            .is_some_and(|g| Some(*g) == generation)
    }

    pub fn create_returned(&self, uid: &str, since: Timestamp, at: Timestamp) {
        self.state().returned.insert(uid.to_string(), (since, at));
    }

    /// Returns when the create recorded with `since` returned, if this process saw it.
    pub fn returned_at(&self, uid: &str, since: Timestamp) -> Option<Timestamp> {
        let state = self.state();
        state
            .returned
            .get(uid)
            .filter(|(recorded, _)| *recorded == since)
            .map(|(_, at)| *at)
    }

    /// Reserves a remote object (a username, or a username and type) for the object `uid`
    /// just before it writes its claim, and returns false when a competitor reserved it
    /// within the last 30 seconds.
    ///
    /// Two competitors whose watch events arrive close together could each decide from a
    /// cache that does not show the other's claim yet, and both claim. This process makes
    /// every claim, so the reservation closes that window.
    pub fn reserve(&self, key: &str, uid: &str, now: Timestamp) -> bool {
        let mut state = self.state();
        let live = |at: &Timestamp| {
            at.checked_add(RESERVATION_TTL)
                .is_ok_and(|expiry| expiry > now)
        };
        if let Some((holder, at)) = state.reservations.get(key)
            && holder != uid
            && live(at)
        {
            return false;
        }
        if state.reservations.len() >= RESERVATION_PRUNE_SIZE {
            state.reservations.retain(|_, (_, at)| live(at));
        }
        state
            .reservations
            .insert(key.to_string(), (uid.to_string(), now));
        true
    }

    /// Forgets a deleted object.
    pub fn forget(&self, uid: &str) {
        let mut state = self.state();
        state.backoff.remove(uid);
        state.rejected.remove(uid);
        state.returned.remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_capped() {
        let memory = Memory::default();
        let mut previous_max = Duration::ZERO;
        for attempt in 1..=20u32 {
            let delay = memory.failed("uid");
            let max = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_CAP);
            assert!(delay <= max, "attempt {attempt}: {delay:?} > {max:?}");
            assert!(
                delay >= max / 2,
                "attempt {attempt}: {delay:?} < {:?}",
                max / 2
            );
            assert!(max >= previous_max);
            previous_max = max;
        }
        assert_eq!(previous_max, BACKOFF_CAP);
    }

    #[test]
    fn success_resets_backoff() {
        let memory = Memory::default();
        memory.failed("uid");
        memory.failed("uid");
        memory.succeeded("uid");
        assert!(!memory.backing_off("uid", Timestamp::now()));
        assert!(memory.failed("uid") <= BACKOFF_BASE);
    }

    #[test]
    fn reservation_keeps_competitor_off_until_it_expires() {
        let memory = Memory::default();
        let now = Timestamp::from_second(1000).expect("valid");
        assert!(memory.reserve("sync/alice/o365", "first", now));
        assert!(memory.reserve("sync/alice/o365", "first", now));
        assert!(!memory.reserve("sync/alice/o365", "second", now));
        assert!(memory.reserve("sync/alice/ews", "second", now));
        let later = Timestamp::from_second(1031).expect("valid");
        assert!(memory.reserve("sync/alice/o365", "second", later));
        assert!(!memory.reserve("sync/alice/o365", "first", later));
    }

    #[test]
    fn rejection_applies_to_its_generation_only() {
        let memory = Memory::default();
        memory.reject("uid", 3);
        assert!(memory.rejected("uid", Some(3)));
        assert!(!memory.rejected("uid", Some(4)));
        assert!(!memory.rejected("other", Some(3)));
    }

    #[test]
    fn returned_create_matches_its_since() {
        let memory = Memory::default();
        let since = Timestamp::from_second(100).expect("valid");
        let at = Timestamp::from_second(101).expect("valid");
        memory.create_returned("uid", since, at);
        assert_eq!(memory.returned_at("uid", since), Some(at));
        let later = Timestamp::from_second(200).expect("valid");
        assert_eq!(memory.returned_at("uid", later), None);
    }
}
