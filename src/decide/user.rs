//! Decisions for a CalendarUser: who owns the remote user, whether it has to be created, and
//! the steps of its deletion.

use std::sync::Arc;

use jiff::Timestamp;

use super::{
    CREATION_GRANULARITY, Note, Plan, age_key, created_after, display_key, keep_or_wait,
    ready_reason, waiting_for_snapshot, with_ready,
};
use crate::remote::{RefreshFailure, RemoteSync, Snapshot};
use crate::resources::{CalendarUser, CalendarUserStatus, DeletionPolicy, reason};

/// The inputs of a CalendarUser decision.
pub struct UserInputs<'a> {
    pub user: &'a CalendarUser,
    /// The other CalendarUsers with the same `spec.username`, in any namespace.
    pub rivals: &'a [Arc<CalendarUser>],
    pub snapshot: Option<&'a Snapshot>,
    /// The last failed refresh of the remote view, when it failed after the current snapshot.
    pub refresh_failure: Option<&'a RefreshFailure>,
}

/// The remote step of a live CalendarUser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserAction {
    /// The remote user is as it should be, or this resource does not own it.
    Nothing,
    /// Wait for a snapshot requested after this instant.
    WaitForSnapshot { newer_than: Timestamp },
    /// Create the remote user (`PUT /users/{username}`, idempotent).
    EnsureUser,
}

/// Decides the next step of a CalendarUser that is not being deleted.
pub fn decide_user(inputs: &UserInputs) -> Plan<CalendarUserStatus, UserAction> {
    let user = inputs.user;
    let username = user.spec.username.as_str();
    let generation = user.metadata.generation;
    let current = user.status.clone().unwrap_or_default();
    let conditions = current.conditions.as_slice();
    let mut status = CalendarUserStatus {
        observed_generation: generation,
        ..current.clone()
    };

    // Ownership: a recorded claim wins; without one, the oldest of the competitors.
    let claims = current.owned_username.as_deref() == Some(username);
    if !claims && let Some(owner) = owner_among_rivals(user, inputs.rivals) {
        let message = format!(
            "MyTimetable user {username:?} is owned by CalendarUser {}",
            display_key(&owner.metadata)
        );
        status.owned_username = None;
        status.conditions = with_ready(conditions, false, reason::CONFLICT, &message, generation);
        let note = (ready_reason(conditions) != Some(reason::CONFLICT))
            .then(|| Note::warning(reason::CONFLICT, "Claim", message));
        return Plan {
            claim: None,
            action: UserAction::Nothing,
            status,
            note,
        };
    }

    let Some(snapshot) = inputs.snapshot else {
        status.conditions = keep_or_wait(conditions, inputs.refresh_failure, "users", generation);
        return Plan {
            claim: None,
            action: UserAction::WaitForSnapshot {
                newer_than: Timestamp::UNIX_EPOCH,
            },
            status,
            note: None,
        };
    };

    // Before the first claim, only a snapshot requested after the resource appeared shows
    // whether the user already existed (Adopted) or is created now (Provisioned).
    let newer_than = created_after(&user.metadata);
    if !claims && snapshot.fetched_at <= newer_than {
        status.conditions =
            waiting_for_snapshot(conditions, inputs.refresh_failure, "users", generation);
        return Plan {
            claim: None,
            action: UserAction::WaitForSnapshot { newer_than },
            status,
            note: None,
        };
    }

    // The claim is persisted before any remote write, so a competitor created a moment later
    // finds it, and only the owner ever deletes the remote user.
    let claim = (!claims).then(|| CalendarUserStatus {
        owned_username: Some(username.to_string()),
        conditions: with_ready(
            conditions,
            false,
            reason::RECONCILING,
            format!("claiming MyTimetable user {username:?}"),
            generation,
        ),
        ..status.clone()
    });
    status.owned_username = Some(username.to_string());

    if snapshot.has_user(username) {
        // An existing user that this resource did not own before is adopted; an owned one is
        // kept with the reason it already has.
        let adopted = !claims;
        let reason = match ready_reason(conditions) {
            _ if adopted => reason::ADOPTED,
            Some(reason::ADOPTED) => reason::ADOPTED,
            _ => reason::PROVISIONED,
        };
        let message = ready_message(username, reason);
        status.conditions = with_ready(conditions, true, reason, &message, generation);
        let note = adopted.then(|| Note::normal(reason::ADOPTED, "Adopt", message));
        return Plan {
            claim,
            action: UserAction::Nothing,
            status,
            note,
        };
    }

    // Missing remotely: first creation, or removed behind the operator's back.
    let message = ready_message(username, reason::PROVISIONED);
    status.conditions = with_ready(conditions, true, reason::PROVISIONED, message, generation);
    Plan {
        claim,
        action: UserAction::EnsureUser,
        status,
        note: Some(Note::normal(
            reason::PROVISIONED,
            "Create",
            format!("created MyTimetable user {username:?}"),
        )),
    }
}

/// Returns the Ready message of an owned user. It is the same on every reconcile, so it
/// causes no status write.
fn ready_message(username: &str, reason: &str) -> String {
    if reason == reason::ADOPTED {
        format!("adopted the existing MyTimetable user {username:?}")
    } else {
        format!("MyTimetable user {username:?} exists")
    }
}

/// Returns the competitor that owns the username instead of `user`, if any: one that records
/// the claim in its status, or else the oldest when it is older than `user`.
fn owner_among_rivals<'a>(
    user: &CalendarUser,
    rivals: &'a [Arc<CalendarUser>],
) -> Option<&'a CalendarUser> {
    let username = user.spec.username.as_str();
    let claimant = rivals.iter().find(|rival| {
        rival
            .status
            .as_ref()
            .and_then(|s| s.owned_username.as_deref())
            == Some(username)
    });
    if let Some(claimant) = claimant {
        return Some(claimant);
    }
    rivals
        .iter()
        .filter(|rival| rival.metadata.deletion_timestamp.is_none())
        .min_by(|a, b| age_key(&a.metadata).cmp(&age_key(&b.metadata)))
        .filter(|oldest| age_key(&oldest.metadata) < age_key(&user.metadata))
        .map(|oldest| oldest.as_ref())
}

/// The next step of a CalendarUser being deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserDeletion {
    /// Delete the CalendarSyncs that reference this user and wait until they are gone.
    DeleteSyncs { remaining: usize },
    /// Wait for a snapshot requested after this instant, to check the remote user's
    /// synchronizations against.
    WaitForSnapshot { newer_than: Timestamp },
    /// The remote user still has synchronizations that no resource declares; deleting it
    /// would unlink them with a mode no resource chose.
    Blocked { undeclared: Vec<RemoteSync> },
    /// Delete the remote user, then remove the finalizer.
    DeleteUser,
    /// Remove the finalizer and leave the remote user alone.
    Release,
}

/// Decides the next step of a CalendarUser being deleted.
///
/// `referencing_syncs` counts the CalendarSyncs that still reference this user.
pub fn decide_user_deletion(
    inputs: &UserInputs,
    referencing_syncs: usize,
) -> Plan<CalendarUserStatus, UserDeletion> {
    let user = inputs.user;
    let username = user.spec.username.as_str();
    let generation = user.metadata.generation;
    let current = user.status.clone().unwrap_or_default();
    let conditions = current.conditions.as_slice();
    let deleting = |message: String| CalendarUserStatus {
        observed_generation: generation,
        conditions: with_ready(conditions, false, reason::DELETING, message, generation),
        ..current.clone()
    };

    if referencing_syncs > 0 {
        return Plan {
            claim: None,
            action: UserDeletion::DeleteSyncs {
                remaining: referencing_syncs,
            },
            status: deleting(format!(
                "waiting for {referencing_syncs} CalendarSync(s) of this user to be deleted"
            )),
            note: None,
        };
    }

    // Only the owner with policy Delete touches the remote user.
    let owns = current.owned_username.as_deref() == Some(username);
    if !owns || user.spec.deletion_policy == DeletionPolicy::Orphan {
        return Plan {
            claim: None,
            action: UserDeletion::Release,
            status: deleting("releasing without changing MyTimetable".to_string()),
            note: None,
        };
    }

    // A synchronization created remotely just before the deletion must block it, so only a
    // snapshot requested after the deletion started can clear the way.
    let newer_than = user
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0 + CREATION_GRANULARITY);
    let fresh = inputs
        .snapshot
        .filter(|snapshot| snapshot.fetched_at > newer_than);
    let Some(snapshot) = fresh else {
        return Plan {
            claim: None,
            action: UserDeletion::WaitForSnapshot { newer_than },
            status: CalendarUserStatus {
                observed_generation: generation,
                conditions: keep_or_wait(
                    conditions,
                    inputs.refresh_failure,
                    "synchronizations",
                    generation,
                ),
                ..current.clone()
            },
            note: None,
        };
    };

    let undeclared: Vec<RemoteSync> = snapshot.syncs_of_user(username).cloned().collect();
    if !undeclared.is_empty() {
        let list = undeclared
            .iter()
            .map(|sync| format!("{} ({})", sync.id, sync.type_))
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!(
            "not deleting MyTimetable user {username:?}: it still has synchronizations that no \
             CalendarSync declares: {list}; adopt them with a CalendarSync, remove them in \
             MyTimetable, or set deletionPolicy Orphan"
        );
        let status = deleting(message.clone());
        // The event is emitted once per distinct message, not at every retry.
        let changed = super::conditions_differ(conditions, &status.conditions);
        return Plan {
            claim: None,
            action: UserDeletion::Blocked { undeclared },
            status,
            note: changed.then(|| Note::warning(reason::DELETING, "Delete", message)),
        };
    }

    Plan {
        claim: None,
        action: UserDeletion::DeleteUser,
        status: deleting(format!("deleting MyTimetable user {username:?}")),
        note: Some(Note::normal(
            reason::DELETING,
            "Delete",
            format!("deleted MyTimetable user {username:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::fixtures::{SnapshotBuilder, UserBuilder};
    use crate::decide::is_ready;

    fn decide(
        user: &CalendarUser,
        rivals: &[Arc<CalendarUser>],
        snapshot: Option<&Snapshot>,
    ) -> Plan<CalendarUserStatus, UserAction> {
        decide_user(&UserInputs {
            user,
            rivals,
            snapshot,
            refresh_failure: None,
        })
    }

    fn ready_reason_of(status: &CalendarUserStatus) -> Option<&str> {
        ready_reason(&status.conditions)
    }

    #[test]
    fn new_user_claims_then_creates() {
        let user = UserBuilder::new("ns", "alice", "alice").build();
        let snapshot = SnapshotBuilder::new().build();
        let plan = decide(&user, &[], Some(&snapshot));
        assert_eq!(plan.action, UserAction::EnsureUser);
        let claim = plan.claim.expect("ownership is written before the create");
        assert_eq!(claim.owned_username.as_deref(), Some("alice"));
        assert_eq!(ready_reason_of(&claim), Some(reason::RECONCILING));
        assert_eq!(ready_reason_of(&plan.status), Some(reason::PROVISIONED));
        assert!(is_ready(&plan.status.conditions, Some(1)));
    }

    #[test]
    fn existing_remote_user_is_adopted_without_write() {
        let user = UserBuilder::new("ns", "alice", "alice").build();
        let snapshot = SnapshotBuilder::new().user("alice").build();
        let plan = decide(&user, &[], Some(&snapshot));
        assert_eq!(plan.action, UserAction::Nothing);
        assert!(plan.claim.is_some());
        assert_eq!(ready_reason_of(&plan.status), Some(reason::ADOPTED));
        assert_eq!(plan.note.map(|n| n.reason), Some(reason::ADOPTED));
    }

    #[test]
    fn owned_present_user_needs_nothing() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .owned()
            .ready(reason::PROVISIONED)
            .build();
        let snapshot = SnapshotBuilder::new().user("alice").build();
        let plan = decide(&user, &[], Some(&snapshot));
        assert_eq!(plan.action, UserAction::Nothing);
        assert_eq!(plan.claim, None);
        assert_eq!(plan.note, None);
        assert_eq!(ready_reason_of(&plan.status), Some(reason::PROVISIONED));
    }

    #[test]
    fn decided_status_is_stable_on_next_reconcile() {
        let mut user = UserBuilder::new("ns", "alice", "alice").build();
        let snapshot = SnapshotBuilder::new().user("alice").build();
        let first = decide(&user, &[], Some(&snapshot));
        user.status = Some(first.status.clone());
        let second = decide(&user, &[], Some(&snapshot));
        assert_eq!(second.status, first.status);
        assert_eq!(second.claim, None);
        assert_eq!(second.note, None);
    }

    #[test]
    fn owned_user_removed_remotely_is_created_again() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .owned()
            .ready(reason::PROVISIONED)
            .build();
        let snapshot = SnapshotBuilder::new().build();
        let plan = decide(&user, &[], Some(&snapshot));
        assert_eq!(plan.action, UserAction::EnsureUser);
        assert_eq!(plan.claim, None);
    }

    #[test]
    fn without_snapshot_user_waits_and_keeps_ready() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .owned()
            .ready(reason::PROVISIONED)
            .build();
        let plan = decide(&user, &[], None);
        assert!(matches!(plan.action, UserAction::WaitForSnapshot { .. }));
        assert_eq!(Some(plan.status), user.status);
    }

    #[test]
    fn unauthorized_refresh_is_reported_while_waiting() {
        let user = UserBuilder::new("ns", "alice", "alice").build();
        let failure = RefreshFailure {
            unauthorized: true,
            message: "401 unauthorized".to_string(),
            at: jiff::Timestamp::UNIX_EPOCH,
        };
        let plan = decide_user(&UserInputs {
            user: &user,
            rivals: &[],
            snapshot: None,
            refresh_failure: Some(&failure),
        });
        assert!(matches!(plan.action, UserAction::WaitForSnapshot { .. }));
        assert_eq!(ready_reason_of(&plan.status), Some(reason::UNAUTHORIZED));
    }

    #[test]
    fn younger_rival_of_unclaimed_user_conflicts() {
        let older = UserBuilder::new("a", "alice", "alice")
            .created_at(100)
            .build();
        let younger = UserBuilder::new("b", "alice", "alice")
            .created_at(200)
            .build();
        let snapshot = SnapshotBuilder::new().build();
        let plan = decide(&younger, &[Arc::new(older.clone())], Some(&snapshot));
        assert_eq!(plan.action, UserAction::Nothing);
        assert_eq!(plan.claim, None);
        assert_eq!(ready_reason_of(&plan.status), Some(reason::CONFLICT));
        assert!(plan.status.conditions[0].message.contains("a/alice"));
        let winner = decide(&older, &[Arc::new(younger)], Some(&snapshot));
        assert_eq!(winner.action, UserAction::EnsureUser);
    }

    #[test]
    fn recorded_claim_beats_older_rival() {
        let older = UserBuilder::new("a", "alice", "alice")
            .created_at(100)
            .build();
        let owner = UserBuilder::new("b", "alice", "alice")
            .created_at(200)
            .owned()
            .build();
        let snapshot = SnapshotBuilder::new().user("alice").build();
        let plan = decide(&older, &[Arc::new(owner)], Some(&snapshot));
        assert_eq!(plan.action, UserAction::Nothing);
        assert_eq!(ready_reason_of(&plan.status), Some(reason::CONFLICT));
    }

    #[test]
    fn conflict_event_is_emitted_once() {
        let owner = UserBuilder::new("a", "alice", "alice").owned().build();
        let rival = UserBuilder::new("b", "alice", "alice").conflict().build();
        let plan = decide(&rival, &[Arc::new(owner)], None);
        assert_eq!(plan.note, None);
    }

    #[test]
    fn rivals_with_same_age_are_ordered_by_namespace() {
        let first = UserBuilder::new("a", "alice", "alice")
            .created_at(100)
            .build();
        let second = UserBuilder::new("b", "alice", "alice")
            .created_at(100)
            .build();
        let snapshot = SnapshotBuilder::new().build();
        let plan = decide(&second, &[Arc::new(first)], Some(&snapshot));
        assert_eq!(ready_reason_of(&plan.status), Some(reason::CONFLICT));
    }

    fn decide_deletion(
        user: &CalendarUser,
        snapshot: Option<&Snapshot>,
        referencing: usize,
    ) -> Plan<CalendarUserStatus, UserDeletion> {
        decide_user_deletion(
            &UserInputs {
                user,
                rivals: &[],
                snapshot,
                refresh_failure: None,
            },
            referencing,
        )
    }

    #[test]
    fn deletion_waits_for_referencing_syncs() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .owned()
            .deleting()
            .build();
        let snapshot = SnapshotBuilder::new().user("alice").build();
        let plan = decide_deletion(&user, Some(&snapshot), 2);
        assert_eq!(plan.action, UserDeletion::DeleteSyncs { remaining: 2 });
        assert_eq!(ready_reason_of(&plan.status), Some(reason::DELETING));
        assert!(plan.status.conditions[0].message.contains('2'));
    }

    #[test]
    fn owner_with_delete_policy_deletes_remote_user() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .owned()
            .deleting()
            .build();
        let snapshot = SnapshotBuilder::new().user("alice").build();
        let plan = decide_deletion(&user, Some(&snapshot), 0);
        assert_eq!(plan.action, UserDeletion::DeleteUser);
    }

    #[test]
    fn orphan_policy_keeps_remote_user() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .owned()
            .orphan()
            .deleting()
            .build();
        let snapshot = SnapshotBuilder::new()
            .user("alice")
            .sync(1, "alice", "o365")
            .build();
        let plan = decide_deletion(&user, Some(&snapshot), 0);
        assert_eq!(plan.action, UserDeletion::Release);
    }

    #[test]
    fn non_owner_deletion_never_deletes_remote_user() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .conflict()
            .deleting()
            .build();
        let snapshot = SnapshotBuilder::new().user("alice").build();
        let plan = decide_deletion(&user, Some(&snapshot), 0);
        assert_eq!(plan.action, UserDeletion::Release);
    }

    #[test]
    fn undeclared_remote_syncs_block_user_deletion() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .owned()
            .deleting()
            .build();
        let snapshot = SnapshotBuilder::new()
            .user("alice")
            .sync(4, "alice", "o365")
            .sync(9, "bob", "o365")
            .build();
        let plan = decide_deletion(&user, Some(&snapshot), 0);
        let UserDeletion::Blocked { undeclared } = &plan.action else {
            panic!("expected Blocked, got {:?}", plan.action);
        };
        assert_eq!(undeclared.iter().map(|s| s.id).collect::<Vec<_>>(), vec![4]);
        let message = &plan.status.conditions[0].message;
        assert!(message.contains("4 (o365)"), "{message}");
        assert!(plan.note.as_ref().is_some_and(|n| n.warning));
    }

    #[test]
    fn snapshot_older_than_user_delays_first_claim() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .created_at(1000)
            .build();
        let snapshot = SnapshotBuilder::new()
            .fetched_at(crate::decide::fixtures::at(1000))
            .build();
        let plan = decide(&user, &[], Some(&snapshot));
        assert!(matches!(plan.action, UserAction::WaitForSnapshot { .. }));
        assert_eq!(plan.claim, None);
    }

    #[test]
    fn created_user_status_is_stable_on_next_reconcile() {
        let mut user = UserBuilder::new("ns", "alice", "alice").build();
        let first = decide(&user, &[], Some(&SnapshotBuilder::new().build()));
        assert_eq!(first.action, UserAction::EnsureUser);
        user.status = Some(first.status.clone());
        let second = decide(
            &user,
            &[],
            Some(&SnapshotBuilder::new().user("alice").build()),
        );
        assert_eq!(second.action, UserAction::Nothing);
        assert_eq!(second.status, first.status);
        assert_eq!(second.note, None);
    }

    #[test]
    fn snapshot_older_than_deletion_delays_remote_delete() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .owned()
            .deleting()
            .build();
        let snapshot = SnapshotBuilder::new()
            .fetched_at(crate::decide::fixtures::at(500))
            .user("alice")
            .build();
        let plan = decide_deletion(&user, Some(&snapshot), 0);
        assert!(matches!(plan.action, UserDeletion::WaitForSnapshot { .. }));
    }

    #[test]
    fn deletion_without_snapshot_waits() {
        let user = UserBuilder::new("ns", "alice", "alice")
            .owned()
            .deleting()
            .build();
        let plan = decide_deletion(&user, None, 0);
        assert!(matches!(plan.action, UserDeletion::WaitForSnapshot { .. }));
    }
}
