//! Decisions for a CalendarSync: wait for the user, adopt or create without duplicates,
//! resolve a pending create, repair drift, and unlink on deletion.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    Note, Plan, Settings, age_key, created_after, display_key, is_ready, keep_or_wait,
    ready_reason, with_ready,
};
use crate::remote::{RefreshFailure, Snapshot};
use crate::resources::{
    CalendarSync, CalendarSyncStatus, CalendarUser, DeletionPolicy, PendingCreate, UnlinkMode,
    reason,
};

/// The inputs of a CalendarSync decision.
pub struct SyncInputs<'a> {
    pub sync: &'a CalendarSync,
    /// The CalendarUser that `spec.userRef` names, when it exists.
    pub user: Option<&'a CalendarUser>,
    /// The other CalendarSyncs for the same username and type, in any namespace.
    pub rivals: &'a [Arc<CalendarSync>],
    pub snapshot: Option<&'a Snapshot>,
    /// The last failed refresh of the remote view, when it failed after the current snapshot.
    pub refresh_failure: Option<&'a RefreshFailure>,
    /// When this process saw the create recorded in `status.pendingCreate` return: MyTimetable
    /// applied it by then. Unknown after a restart or when the request failed.
    pub create_returned_at: Option<Timestamp>,
    /// MyTimetable rejected a create for this generation of the resource; only a change of the
    /// resource makes the controller try again.
    pub create_rejected: bool,
    pub now: Timestamp,
    pub settings: &'a Settings,
}

/// The remote step of a live CalendarSync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncAction {
    /// Nothing remote to do now: Ready, in conflict, waiting for the user, or a rejected create.
    Nothing,
    /// Wait for a snapshot requested after this instant.
    WaitForSnapshot { newer_than: Timestamp },
    /// Send `PUT /synchronizations` after persisting the claim with `pendingCreate`.
    Create {
        username: String,
        type_: String,
        smtp_address: Option<String>,
    },
}

/// Decides the next step of a CalendarSync that is not being deleted.
pub fn decide_sync(inputs: &SyncInputs) -> Plan<CalendarSyncStatus, SyncAction> {
    let sync = inputs.sync;
    let generation = sync.metadata.generation;
    let current = sync.status.clone().unwrap_or_default();
    let conditions = current.conditions.as_slice();
    let mut status = CalendarSyncStatus {
        observed_generation: generation,
        ..current.clone()
    };
    let plan = |status: CalendarSyncStatus, action: SyncAction, note: Option<Note>| Plan {
        claim: None,
        action,
        status,
        note,
    };

    // The username: recorded with a claim, otherwise the user's, and only from a Ready user.
    let user_ready = inputs.user.is_some_and(|user| {
        user.metadata.deletion_timestamp.is_none()
            && is_ready(
                user.status.as_ref().map_or(&[], |s| &s.conditions),
                user.metadata.generation,
            )
            && user
                .status
                .as_ref()
                .and_then(|s| s.owned_username.as_deref())
                == Some(user.spec.username.as_str())
    });
    let claims = current.sync_id.is_some() || current.pending_create.is_some();
    let username = match (&current.username, inputs.user) {
        (Some(username), _) if claims => username.clone(),
        (_, Some(user)) if user_ready => user.spec.username.clone(),
        _ => {
            let message = match inputs.user {
                None => format!(
                    "waiting for CalendarUser {:?} to exist",
                    sync.spec.user_ref.name
                ),
                Some(_) => format!(
                    "waiting for CalendarUser {:?} to be Ready",
                    sync.spec.user_ref.name
                ),
            };
            status.conditions = with_ready(
                conditions,
                false,
                reason::WAITING_FOR_USER,
                message,
                generation,
            );
            return plan(status, SyncAction::Nothing, None);
        }
    };
    let type_ = sync.spec.type_.as_str();
    status.username = Some(username.clone());

    // Ownership of (username, type) among the CalendarSyncs that compete for it.
    if let Some(owner) = owner_among_rivals(sync, inputs.rivals) {
        let message = format!(
            "the {type_} synchronization of MyTimetable user {username:?} is owned by \
             CalendarSync {}",
            display_key(&owner.metadata)
        );
        status.conditions = with_ready(conditions, false, reason::CONFLICT, &message, generation);
        if !claims {
            status.username = current.username.clone();
        }
        let note = (ready_reason(conditions) != Some(reason::CONFLICT))
            .then(|| Note::warning(reason::CONFLICT, "Claim", message));
        return plan(status, SyncAction::Nothing, note);
    }

    let Some(snapshot) = inputs.snapshot else {
        status.conditions = keep_or_wait(
            conditions,
            inputs.refresh_failure,
            "synchronizations",
            generation,
        );
        return plan(
            status,
            SyncAction::WaitForSnapshot {
                newer_than: Timestamp::UNIX_EPOCH,
            },
            None,
        );
    };
    let waiting = |status: &mut CalendarSyncStatus, newer_than: Timestamp, what: &str| {
        status.conditions = if inputs.refresh_failure.is_some() {
            keep_or_wait(
                conditions,
                inputs.refresh_failure,
                "synchronizations",
                generation,
            )
        } else {
            with_ready(conditions, false, reason::RECONCILING, what, generation)
        };
        SyncAction::WaitForSnapshot { newer_than }
    };
    // Remote synchronizations of (username, type) that no competitor records as its own.
    let unowned = || {
        snapshot
            .syncs_of(&username, type_)
            .find(|remote| !claimed_by_rival(remote.id, inputs.rivals))
            .map(|remote| remote.id)
    };

    // A recorded id: Ready while it exists, drift when it is gone.
    let mut drifted = None;
    if let Some(id) = current.sync_id {
        if snapshot.sync(id).is_some() {
            let reason = match ready_reason(conditions) {
                Some(reason::ADOPTED) => reason::ADOPTED,
                _ => reason::PROVISIONED,
            };
            status.conditions = with_ready(
                conditions,
                true,
                reason,
                ready_message(id, reason),
                generation,
            );
            return plan(status, SyncAction::Nothing, None);
        }
        status.sync_id = None;
        drifted = Some(id);
    }

    // Choose the remote synchronization to record. A create that may have reached
    // MyTimetable adopts what it made once a snapshot is new enough to show it. Without a
    // claim, only a snapshot requested after the resource appeared can prove that nothing
    // exists to adopt. After drift, the snapshot that showed the id gone is new enough.
    let adoption = if let Some(pending) = &current.pending_create {
        let settled_after = inputs
            .create_returned_at
            .unwrap_or_else(|| pending.since.0 + inputs.settings.create_settle);
        if snapshot.fetched_at <= settled_after {
            let action = waiting(
                &mut status,
                settled_after,
                "waiting for MyTimetable to list the new synchronization",
            );
            return plan(status, action, None);
        }
        unowned().map(|id| {
            let note = format!("created MyTimetable synchronization {id}");
            (id, reason::PROVISIONED, "Create", note)
        })
    } else {
        let newer_than = created_after(&sync.metadata);
        if drifted.is_none() && snapshot.fetched_at <= newer_than {
            let action = waiting(
                &mut status,
                newer_than,
                "waiting for a current list of synchronizations from MyTimetable",
            );
            return plan(status, action, None);
        }
        unowned().map(|id| {
            let note = format!("adopted the existing MyTimetable synchronization {id}");
            (id, reason::ADOPTED, "Adopt", note)
        })
    };
    if let Some((id, reason, verb, note)) = adoption {
        status.sync_id = Some(id);
        status.pending_create = None;
        status.conditions = with_ready(
            conditions,
            true,
            reason,
            ready_message(id, reason),
            generation,
        );
        return plan(
            status,
            SyncAction::Nothing,
            Some(Note::normal(reason, verb, note)),
        );
    }

    // Nothing to adopt: create, unless MyTimetable rejected this generation already.
    if inputs.create_rejected {
        return Plan {
            claim: None,
            action: SyncAction::Nothing,
            status: CalendarSyncStatus {
                pending_create: None,
                ..current
            },
            note: None,
        };
    }
    let what = match drifted {
        Some(id) => format!(
            "MyTimetable synchronization {id} was removed outside the operator; creating it again"
        ),
        None => "creating the synchronization in MyTimetable".to_string(),
    };
    status.pending_create = Some(PendingCreate {
        username: username.clone(),
        since: Time(whole_second_after(inputs.now)),
    });
    status.conditions = with_ready(conditions, false, reason::RECONCILING, &what, generation);
    Plan {
        claim: Some(status.clone()),
        action: SyncAction::Create {
            username,
            type_: type_.to_string(),
            smtp_address: sync.spec.smtp_address.clone(),
        },
        status,
        note: drifted.map(|_| Note::warning(reason::PROVISIONED, "Create", what)),
    }
}

/// Returns the Ready message of a recorded synchronization. It is the same on every
/// reconcile, so it causes no status write.
fn ready_message(id: i64, reason: &str) -> String {
    if reason == reason::ADOPTED {
        format!("adopted the existing MyTimetable synchronization {id}")
    } else {
        format!("MyTimetable synchronization {id} exists")
    }
}

/// Rounds up to a whole second. The API server stores timestamps in whole seconds, so the
/// recorded `since` reads back exactly as written and is never earlier than the create.
fn whole_second_after(now: Timestamp) -> Timestamp {
    let rounded_up = now.as_second() + i64::from(now.subsec_nanosecond() > 0);
    Timestamp::from_second(rounded_up).unwrap_or(now)
}

/// Returns whether a competitor records `id` as its synchronization.
fn claimed_by_rival(id: i64, rivals: &[Arc<CalendarSync>]) -> bool {
    rivals
        .iter()
        .any(|rival| rival.status.as_ref().and_then(|s| s.sync_id) == Some(id))
}

/// Returns whether a CalendarSync claims its (username, type): it records an id or a pending
/// create.
fn claims(sync: &CalendarSync) -> bool {
    sync.status
        .as_ref()
        .is_some_and(|s| s.sync_id.is_some() || s.pending_create.is_some())
}

/// Returns the competitor that owns (username, type) instead of `sync`, if any.
///
/// A recorded claim wins over none; among unclaimed competitors the oldest wins. Two claims
/// can only coexist after a race between caches; then a recorded id wins over a pending
/// create, and otherwise the older resource.
fn owner_among_rivals<'a>(
    sync: &CalendarSync,
    rivals: &'a [Arc<CalendarSync>],
) -> Option<&'a CalendarSync> {
    fn rank(candidate: &CalendarSync) -> (bool, bool, (Option<Timestamp>, &str, &str)) {
        let status = candidate.status.as_ref();
        (
            !claims(candidate),
            status.and_then(|s| s.sync_id).is_none(),
            age_key(&candidate.metadata),
        )
    }
    let own_rank = rank(sync);
    rivals
        .iter()
        .map(|rival| rival.as_ref())
        .filter(|rival| rival.metadata.deletion_timestamp.is_none() || claims(rival))
        .min_by(|a, b| rank(a).cmp(&rank(b)))
        .filter(|best| rank(best) < own_rank)
}

/// The next step of a CalendarSync being deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncDeletion {
    /// `DELETE /synchronizations/{id}?unlinkMode=...`, then remove the finalizer.
    Unlink { id: i64, mode: UnlinkMode },
    /// A create may still land: wait for a snapshot requested after this instant.
    WaitForSnapshot { newer_than: Timestamp },
    /// Remove the finalizer and leave MyTimetable alone.
    Release,
}

/// Decides the next step of a CalendarSync being deleted.
pub fn decide_sync_deletion(inputs: &SyncInputs) -> Plan<CalendarSyncStatus, SyncDeletion> {
    let sync = inputs.sync;
    let generation = sync.metadata.generation;
    let current = sync.status.clone().unwrap_or_default();
    let deleting = |message: String| CalendarSyncStatus {
        observed_generation: generation,
        conditions: with_ready(
            &current.conditions,
            false,
            reason::DELETING,
            message,
            generation,
        ),
        ..current.clone()
    };
    let release = |message: &str| Plan {
        claim: None,
        action: SyncDeletion::Release,
        status: deleting(message.to_string()),
        note: None,
    };
    let mode = sync.spec.unlink_mode;

    if sync.spec.deletion_policy == DeletionPolicy::Orphan {
        return release("releasing; the MyTimetable synchronization is left running");
    }
    // Never unlink an id that a competitor records as its own (possible only after a race).
    if let Some(id) = current.sync_id {
        if claimed_by_rival(id, inputs.rivals) {
            return release("releasing; another CalendarSync records this synchronization");
        }
        return unlink(
            id,
            mode,
            deleting(format!("unlinking MyTimetable synchronization {id}")),
        );
    }
    let Some(pending) = &current.pending_create else {
        return release("releasing; nothing was created in MyTimetable");
    };

    // A pending create: find what it made, from a snapshot new enough to show it.
    let settled_after = inputs
        .create_returned_at
        .unwrap_or_else(|| pending.since.0 + inputs.settings.create_settle);
    let fresh = inputs
        .snapshot
        .filter(|snapshot| snapshot.fetched_at > settled_after);
    let Some(snapshot) = fresh else {
        return Plan {
            claim: None,
            action: SyncDeletion::WaitForSnapshot {
                newer_than: settled_after,
            },
            status: deleting(
                "waiting for MyTimetable to list the synchronization created for this resource"
                    .to_string(),
            ),
            note: None,
        };
    };
    let created = snapshot
        .syncs_of(&pending.username, &sync.spec.type_)
        .find(|remote| !claimed_by_rival(remote.id, inputs.rivals));
    match created {
        Some(remote) => unlink(
            remote.id,
            mode,
            deleting(format!(
                "unlinking MyTimetable synchronization {}",
                remote.id
            )),
        ),
        None => release("releasing; the pending create made no synchronization"),
    }
}

fn unlink(
    id: i64,
    mode: UnlinkMode,
    status: CalendarSyncStatus,
) -> Plan<CalendarSyncStatus, SyncDeletion> {
    Plan {
        claim: None,
        action: SyncDeletion::Unlink { id, mode },
        status,
        note: Some(Note::normal(
            reason::DELETING,
            "Unlink",
            format!(
                "unlinked MyTimetable synchronization {id} with {}",
                mode.as_str()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::decide::fixtures::{SnapshotBuilder, SyncBuilder, UserBuilder, at};

    const SETTLE: SignedDuration = SignedDuration::from_secs(65);

    struct Case {
        sync: CalendarSync,
        user: Option<CalendarUser>,
        rivals: Vec<Arc<CalendarSync>>,
        snapshot: Option<Snapshot>,
        returned_at: Option<Timestamp>,
        rejected: bool,
        now: Timestamp,
    }

    impl Case {
        fn new(sync: CalendarSync) -> Self {
            Case {
                sync,
                user: Some(
                    UserBuilder::new("ns", "alice", "alice")
                        .owned()
                        .ready(reason::PROVISIONED)
                        .build(),
                ),
                rivals: Vec::new(),
                snapshot: Some(
                    SnapshotBuilder::new()
                        .fetched_at(at(1000))
                        .user("alice")
                        .build(),
                ),
                returned_at: None,
                rejected: false,
                now: at(1000),
            }
        }

        fn snapshot(mut self, snapshot: SnapshotBuilder) -> Self {
            self.snapshot = Some(snapshot.build());
            self
        }

        fn rival(mut self, rival: CalendarSync) -> Self {
            self.rivals.push(Arc::new(rival));
            self
        }

        fn decide(&self) -> Plan<CalendarSyncStatus, SyncAction> {
            decide_sync(&self.inputs())
        }

        fn decide_deletion(&self) -> Plan<CalendarSyncStatus, SyncDeletion> {
            decide_sync_deletion(&self.inputs())
        }

        fn inputs(&self) -> SyncInputs<'_> {
            SyncInputs {
                sync: &self.sync,
                user: self.user.as_ref(),
                rivals: &self.rivals,
                snapshot: self.snapshot.as_ref(),
                refresh_failure: None,
                create_returned_at: self.returned_at,
                create_rejected: self.rejected,
                now: self.now,
                settings: &Settings {
                    create_settle: SETTLE,
                },
            }
        }
    }

    fn sync() -> SyncBuilder {
        SyncBuilder::new("ns", "alice-o365", "alice", "o365").created_at(100)
    }

    fn reason_of(status: &CalendarSyncStatus) -> Option<&str> {
        ready_reason(&status.conditions)
    }

    #[test]
    fn missing_user_makes_sync_wait() {
        let mut case = Case::new(sync().build());
        case.user = None;
        let plan = case.decide();
        assert_eq!(plan.action, SyncAction::Nothing);
        assert_eq!(reason_of(&plan.status), Some(reason::WAITING_FOR_USER));
    }

    #[test]
    fn user_not_ready_makes_sync_wait() {
        let mut case = Case::new(sync().build());
        case.user = Some(UserBuilder::new("ns", "alice", "alice").build());
        let plan = case.decide();
        assert_eq!(plan.action, SyncAction::Nothing);
        assert_eq!(reason_of(&plan.status), Some(reason::WAITING_FOR_USER));
    }

    #[test]
    fn ready_sync_stays_ready_while_user_is_not() {
        let mut case = Case::new(sync().synced(5, "alice").ready(reason::PROVISIONED).build())
            .snapshot(
                SnapshotBuilder::new()
                    .fetched_at(at(1000))
                    .sync(5, "alice", "o365"),
            );
        case.user = Some(UserBuilder::new("ns", "alice", "alice").build());
        let plan = case.decide();
        assert_eq!(plan.action, SyncAction::Nothing);
        assert_eq!(reason_of(&plan.status), Some(reason::PROVISIONED));
        assert_eq!(plan.status.sync_id, Some(5));
    }

    #[test]
    fn no_match_in_fresh_snapshot_creates_with_pending_claim() {
        let plan = Case::new(sync().smtp("alice@example.edu").build()).decide();
        assert_eq!(
            plan.action,
            SyncAction::Create {
                username: "alice".to_string(),
                type_: "o365".to_string(),
                smtp_address: Some("alice@example.edu".to_string()),
            }
        );
        let claim = plan.claim.expect("pendingCreate is written before the PUT");
        let pending = claim.pending_create.expect("pendingCreate");
        assert_eq!(pending.username, "alice");
        assert_eq!(pending.since.0, at(1000));
        assert_eq!(claim.username.as_deref(), Some("alice"));
    }

    #[test]
    fn pending_since_is_whole_second_not_before_now() {
        let mut case = Case::new(sync().build());
        case.now = at(1000) + SignedDuration::from_millis(250);
        let plan = case.decide();
        let since = plan
            .claim
            .and_then(|c| c.pending_create)
            .expect("pending")
            .since;
        assert_eq!(since.0, at(1001));
        let json = serde_json::to_value(&since).expect("json");
        let read_back: Time = serde_json::from_value(json).expect("time");
        assert_eq!(read_back, since);
    }

    #[test]
    fn snapshot_older_than_resource_delays_create() {
        let case = Case::new(sync().created_at(1000).build());
        let plan = case.decide();
        assert_eq!(
            plan.action,
            SyncAction::WaitForSnapshot {
                newer_than: at(1001)
            }
        );
        assert_eq!(plan.claim, None);
    }

    #[test]
    fn existing_unowned_sync_is_adopted_lowest_id_first() {
        let case = Case::new(sync().build()).snapshot(
            SnapshotBuilder::new()
                .fetched_at(at(1000))
                .sync(9, "alice", "o365")
                .sync(4, "alice", "o365")
                .sync(2, "alice", "ews"),
        );
        let plan = case.decide();
        assert_eq!(plan.action, SyncAction::Nothing);
        assert_eq!(plan.status.sync_id, Some(4));
        assert_eq!(reason_of(&plan.status), Some(reason::ADOPTED));
        assert_eq!(plan.note.map(|n| n.reason), Some(reason::ADOPTED));
    }

    #[test]
    fn sync_owned_by_another_resource_is_not_adopted() {
        let other = SyncBuilder::new("other", "x", "alice", "o365")
            .created_at(50)
            .synced(4, "alice")
            .build();
        let case = Case::new(sync().build())
            .snapshot(
                SnapshotBuilder::new()
                    .fetched_at(at(1000))
                    .sync(4, "alice", "o365"),
            )
            .rival(other);
        let plan = case.decide();
        assert_eq!(reason_of(&plan.status), Some(reason::CONFLICT));
        assert_eq!(plan.action, SyncAction::Nothing);
        assert!(plan.status.conditions[0].message.contains("other/x"));
    }

    #[test]
    fn younger_unclaimed_rival_conflicts_and_older_creates() {
        let older = sync().created_at(100).build();
        let younger = SyncBuilder::new("b", "y", "alice", "o365")
            .created_at(200)
            .build();
        let plan = Case::new(younger.clone()).rival(older.clone()).decide();
        assert_eq!(reason_of(&plan.status), Some(reason::CONFLICT));
        assert_eq!(plan.status.username, None);
        let plan = Case::new(older).rival(younger).decide();
        assert!(matches!(plan.action, SyncAction::Create { .. }));
    }

    #[test]
    fn pending_create_waits_for_settled_snapshot() {
        let case = Case::new(sync().pending("alice", 990).build());
        let plan = case.decide();
        assert_eq!(
            plan.action,
            SyncAction::WaitForSnapshot {
                newer_than: at(990) + SETTLE
            }
        );
        assert_eq!(plan.claim, None);
    }

    // A create recorded at 990 that returned at 995, listed by a snapshot from 1000.
    fn returned_create() -> Case {
        let mut case = Case::new(sync().pending("alice", 990).build()).snapshot(
            SnapshotBuilder::new()
                .fetched_at(at(1000))
                .sync(12, "alice", "o365"),
        );
        case.returned_at = Some(at(995));
        case
    }

    #[test]
    fn pending_create_adopts_match_after_put_returned() {
        let case = returned_create();
        let plan = case.decide();
        assert_eq!(plan.action, SyncAction::Nothing);
        assert_eq!(plan.status.sync_id, Some(12));
        assert_eq!(plan.status.pending_create, None);
        assert_eq!(reason_of(&plan.status), Some(reason::PROVISIONED));
    }

    #[test]
    fn pending_create_after_restart_adopts_instead_of_duplicating() {
        let mut case = Case::new(sync().pending("alice", 900).build()).snapshot(
            SnapshotBuilder::new()
                .fetched_at(at(1000))
                .sync(12, "alice", "o365"),
        );
        case.now = at(1000);
        let plan = case.decide();
        assert_eq!(plan.status.sync_id, Some(12));
        assert_eq!(plan.claim, None);
    }

    #[test]
    fn settled_pending_create_without_match_creates_again() {
        let case = Case::new(sync().pending("alice", 900).build());
        let plan = case.decide();
        assert!(matches!(plan.action, SyncAction::Create { .. }));
        let pending = plan
            .claim
            .and_then(|c| c.pending_create)
            .expect("new claim");
        assert_eq!(pending.since.0, at(1000));
    }

    #[test]
    fn synced_sync_present_remotely_needs_nothing() {
        let case = Case::new(sync().synced(5, "alice").ready(reason::ADOPTED).build()).snapshot(
            SnapshotBuilder::new()
                .fetched_at(at(1000))
                .sync(5, "alice", "o365"),
        );
        let plan = case.decide();
        assert_eq!(plan.action, SyncAction::Nothing);
        assert_eq!(plan.note, None);
        assert_eq!(reason_of(&plan.status), Some(reason::ADOPTED));
    }

    #[test]
    fn decided_status_is_stable_on_next_reconcile() {
        let mut case = Case::new(sync().synced(5, "alice").build()).snapshot(
            SnapshotBuilder::new()
                .fetched_at(at(1000))
                .sync(5, "alice", "o365"),
        );
        let first = case.decide();
        case.sync.status = Some(first.status.clone());
        let second = case.decide();
        assert_eq!(second.status, first.status);
        assert_eq!(second.note, None);
    }

    #[test]
    fn sync_removed_remotely_is_created_again() {
        let case = Case::new(sync().synced(5, "alice").ready(reason::PROVISIONED).build());
        let plan = case.decide();
        assert!(matches!(plan.action, SyncAction::Create { .. }));
        let claim = plan.claim.expect("claim");
        assert_eq!(claim.sync_id, None);
        assert!(claim.pending_create.is_some());
        assert!(plan.note.is_some());
    }

    #[test]
    fn created_sync_status_is_stable_on_next_reconcile() {
        let mut case = returned_create();
        let first = case.decide();
        case.sync.status = Some(first.status.clone());
        let second = case.decide();
        assert_eq!(second.status, first.status);
        assert_eq!(second.note, None);
    }

    #[test]
    fn adopted_sync_status_is_stable_on_next_reconcile() {
        let mut case = Case::new(sync().build()).snapshot(
            SnapshotBuilder::new()
                .fetched_at(at(1000))
                .sync(4, "alice", "o365"),
        );
        let first = case.decide();
        assert_eq!(first.status.sync_id, Some(4));
        case.sync.status = Some(first.status.clone());
        let second = case.decide();
        assert_eq!(second.status, first.status);
        assert_eq!(second.note, None);
    }

    #[test]
    fn rejected_create_is_not_retried() {
        let mut case = Case::new(sync().build());
        case.rejected = true;
        let plan = case.decide();
        assert_eq!(plan.action, SyncAction::Nothing);
        assert_eq!(plan.claim, None);
    }

    #[test]
    fn without_snapshot_sync_waits() {
        let mut case = Case::new(sync().build());
        case.snapshot = None;
        let plan = case.decide();
        assert!(matches!(plan.action, SyncAction::WaitForSnapshot { .. }));
    }

    #[test]
    fn deletion_unlinks_with_own_mode() {
        let case = Case::new(
            sync()
                .synced(5, "alice")
                .unlink_mode(UnlinkMode::DeleteFutureEvents)
                .deleting()
                .build(),
        );
        let plan = case.decide_deletion();
        assert_eq!(
            plan.action,
            SyncDeletion::Unlink {
                id: 5,
                mode: UnlinkMode::DeleteFutureEvents
            }
        );
        assert_eq!(reason_of(&plan.status), Some(reason::DELETING));
    }

    #[test]
    fn orphan_policy_keeps_remote_sync() {
        let case = Case::new(sync().synced(5, "alice").orphan().deleting().build());
        assert_eq!(case.decide_deletion().action, SyncDeletion::Release);
    }

    #[test]
    fn deletion_without_claim_touches_nothing() {
        let case = Case::new(sync().deleting().build()).snapshot(
            SnapshotBuilder::new()
                .fetched_at(at(1000))
                .sync(5, "alice", "o365"),
        );
        assert_eq!(case.decide_deletion().action, SyncDeletion::Release);
    }

    #[test]
    fn deletion_never_unlinks_id_recorded_by_rival() {
        let rival = SyncBuilder::new("b", "y", "alice", "o365")
            .synced(5, "alice")
            .build();
        let case = Case::new(sync().synced(5, "alice").deleting().build()).rival(rival);
        assert_eq!(case.decide_deletion().action, SyncDeletion::Release);
    }

    #[test]
    fn deletion_with_pending_create_waits_then_unlinks_what_it_made() {
        let waiting = Case::new(sync().pending("alice", 990).deleting().build());
        assert!(matches!(
            waiting.decide_deletion().action,
            SyncDeletion::WaitForSnapshot { .. }
        ));
        let settled = Case::new(sync().pending("alice", 900).deleting().build()).snapshot(
            SnapshotBuilder::new()
                .fetched_at(at(1000))
                .sync(12, "alice", "o365"),
        );
        assert_eq!(
            settled.decide_deletion().action,
            SyncDeletion::Unlink {
                id: 12,
                mode: UnlinkMode::UnlinkOnly
            }
        );
    }

    #[test]
    fn deletion_with_pending_create_that_made_nothing_releases() {
        let case = Case::new(sync().pending("alice", 900).deleting().build());
        assert_eq!(case.decide_deletion().action, SyncDeletion::Release);
    }
}
