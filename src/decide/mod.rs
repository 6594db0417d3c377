//! Pure decisions: given a resource, its status, the other resources that compete for the same
//! remote object, the remote snapshot and the time, what the controller does next and which
//! status results. Nothing here performs I/O, so every rule has a unit test.
//!
//! Each decision is a [`Plan`]: an optional status to persist before a remote write (an
//! ownership claim or a pending create), the remote action, and the status once it succeeded.

mod sync;
mod user;

#[cfg(test)]
mod fixtures;

pub use sync::{SyncAction, SyncDeletion, SyncInputs, decide_sync, decide_sync_deletion};
pub use user::{UserAction, UserDeletion, UserInputs, decide_user, decide_user_deletion};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ObjectMeta;

use crate::remote::RefreshFailure;
use crate::resources::{CONDITION_READY, condition, find_condition, reason};

/// A resource's timestamps have whole seconds: a snapshot counts as newer than a resource's
/// creation or deletion only when it was requested at least this long after the timestamp.
pub(crate) const CREATION_GRANULARITY: SignedDuration = SignedDuration::from_secs(1);

/// Returns the instant after which a snapshot reflects everything that existed remotely
/// when the resource was created.
pub(crate) fn created_after(meta: &ObjectMeta) -> Timestamp {
    meta.creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0 + CREATION_GRANULARITY)
}

/// Settings of the decision rules that come from the controller's configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The time after a recorded create during which MyTimetable may still apply it. It
    /// covers the client's request timeout, because a timed-out PUT may still be applied, the
    /// wait for the client's rate limit, and a margin for clock skew.
    pub create_settle: SignedDuration,
}

/// The outcome of a decision: what to persist first, what to do remotely, what status results.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan<S, A> {
    /// Status to persist before the remote action (an ownership claim or a pending create).
    pub claim: Option<S>,
    /// The remote action.
    pub action: A,
    /// The status once the action succeeded.
    pub status: S,
    /// A Kubernetes Event to emit once the action succeeded.
    pub note: Option<Note>,
}

/// A Kubernetes Event the controller emits about a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    /// Machine-readable reason (the condition reasons, or a remote verb such as `Unlinked`).
    pub reason: &'static str,
    /// The controller's operation, for `Event.action`.
    pub action: &'static str,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &'static str, action: &'static str, message: impl Into<String>) -> Self {
        Note {
            warning: false,
            reason,
            action,
            message: message.into(),
        }
    }

    pub fn warning(reason: &'static str, action: &'static str, message: impl Into<String>) -> Self {
        Note {
            warning: true,
            reason,
            action,
            message: message.into(),
        }
    }
}

/// Returns the conditions with `Ready` replaced, stamped with `generation`.
pub fn with_ready(
    conditions: &[Condition],
    ready: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Vec<Condition> {
    let previous = find_condition(conditions, CONDITION_READY);
    let ready = condition(
        CONDITION_READY,
        ready,
        reason,
        message,
        generation,
        previous,
    );
    let mut result: Vec<Condition> = conditions
        .iter()
        .filter(|c| c.type_ != CONDITION_READY)
        .cloned()
        .collect();
    result.push(ready);
    result
}

/// Returns whether two condition lists differ in anything but `lastTransitionTime`.
pub fn conditions_differ(old: &[Condition], new: &[Condition]) -> bool {
    let strip = |conditions: &[Condition]| {
        let mut stripped: Vec<_> = conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                    c.observed_generation,
                )
            })
            .collect();
        stripped.sort();
        stripped
    };
    strip(old) != strip(new)
}

/// Returns the warning event for a Ready condition that newly reports a failure, so that the
/// failure reaches `kubectl get events` once and not at every retry.
pub fn failure_note(old: &[Condition], new: &[Condition]) -> Option<Note> {
    let ready = find_condition(new, CONDITION_READY)?;
    let failure = match ready.reason.as_str() {
        reason::UNAUTHORIZED => reason::UNAUTHORIZED,
        reason::API_ERROR => reason::API_ERROR,
        _ => return None,
    };
    conditions_differ(old, new).then(|| Note::warning(failure, "Reconcile", ready.message.clone()))
}

/// Returns whether the `Ready` condition is True for the resource's current generation.
pub fn is_ready(conditions: &[Condition], generation: Option<i64>) -> bool {
    find_condition(conditions, CONDITION_READY)
        .is_some_and(|c| c.status == "True" && c.observed_generation == generation)
}

/// Returns the reason of the `Ready` condition, if any.
pub fn ready_reason(conditions: &[Condition]) -> Option<&str> {
    find_condition(conditions, CONDITION_READY).map(|c| c.reason.as_str())
}

/// Returns the sort key that decides which competitor wins an unclaimed remote object: the
/// oldest, then by namespace and name so that the order is total.
pub fn age_key(meta: &ObjectMeta) -> (Option<Timestamp>, &str, &str) {
    (
        meta.creation_timestamp.as_ref().map(|t| t.0),
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// Formats `namespace/name` for messages.
pub fn display_key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Builds the Ready condition of a resource that waits for a remote snapshot: why it waits,
/// or the refresh failure that keeps it waiting.
fn waiting_for_snapshot(
    conditions: &[Condition],
    failure: Option<&RefreshFailure>,
    what: &str,
    generation: Option<i64>,
) -> Vec<Condition> {
    match failure {
        Some(failure) if failure.unauthorized => with_ready(
            conditions,
            false,
            reason::UNAUTHORIZED,
            format!(
                "MyTimetable rejected the API token while listing {what}: {}",
                failure.message
            ),
            generation,
        ),
        Some(failure) => with_ready(
            conditions,
            false,
            reason::API_ERROR,
            format!("listing {what} in MyTimetable failed: {}", failure.message),
            generation,
        ),
        None => with_ready(
            conditions,
            false,
            reason::RECONCILING,
            format!("waiting for a current list of {what} from MyTimetable"),
            generation,
        ),
    }
}

/// Keeps a Ready=True condition as it is while a snapshot is missing: nothing is known to be
/// wrong, and rewriting it would cost one status write per resource at every restart.
fn keep_or_wait(
    conditions: &[Condition],
    failure: Option<&RefreshFailure>,
    what: &str,
    generation: Option<i64>,
) -> Vec<Condition> {
    if failure.is_none() && is_ready(conditions, generation) {
        conditions.to_vec()
    } else {
        waiting_for_snapshot(conditions, failure, what, generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_differ_ignores_transition_time() {
        let old = with_ready(&[], true, reason::PROVISIONED, "ok", Some(1));
        let mut new = old.clone();
        new[0].last_transition_time =
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH);
        assert!(!conditions_differ(&old, &new));
    }

    #[test]
    fn conditions_differ_sees_generation() {
        let old = with_ready(&[], true, reason::PROVISIONED, "ok", Some(1));
        let new = with_ready(&old, true, reason::PROVISIONED, "ok", Some(2));
        assert!(conditions_differ(&old, &new));
    }

    #[test]
    fn failure_note_only_when_failure_is_new() {
        let failing = with_ready(&[], false, reason::UNAUTHORIZED, "rejected", Some(1));
        let note = failure_note(&[], &failing).expect("new failure");
        assert!(note.warning);
        assert_eq!(note.reason, reason::UNAUTHORIZED);
        assert_eq!(failure_note(&failing, &failing), None);
        let waiting = with_ready(&[], false, reason::RECONCILING, "waiting", Some(1));
        assert_eq!(failure_note(&[], &waiting), None);
    }

    #[test]
    fn ready_of_older_generation_is_not_ready() {
        let conditions = with_ready(&[], true, reason::PROVISIONED, "ok", Some(1));
        assert!(is_ready(&conditions, Some(1)));
        assert!(!is_ready(&conditions, Some(2)));
    }

    #[test]
    fn with_ready_keeps_other_conditions() {
        let other = condition("Synced", true, "Fine", "", Some(1), None);
        let conditions = with_ready(
            std::slice::from_ref(&other),
            false,
            reason::CONFLICT,
            "x",
            Some(1),
        );
        assert_eq!(conditions.len(), 2);
        assert!(conditions.contains(&other));
    }
}
