//! The CalendarSync reconciler.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::patch::{add_finalizer, has_finalizer, remove_finalizer};
use super::{Context, Error, Managed, key_of, now, report_failure, uid_of, write_status};
use crate::decide::{SyncAction, SyncDeletion, SyncInputs, decide_sync, decide_sync_deletion};
use crate::mytimetable::{self, SyncDeletion as Deleted, wire};
use crate::remote::{RefreshFailure, Snapshot};
use crate::resources::{CalendarSync, CalendarUser, UnlinkMode};

/// The requeue interval of a pending create when no snapshot arrives to trigger it.
const PENDING_POLL: Duration = Duration::from_secs(5);

pub async fn reconcile(sync: Arc<CalendarSync>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<CalendarSync> =
        Api::namespaced(ctx.kube.clone(), &sync.namespace().unwrap_or_default());
    let uid = uid_of(sync.as_ref());
    let result = if sync.metadata.deletion_timestamp.is_some() {
        cleanup(&api, sync.as_ref().clone(), &ctx).await
    } else {
        apply(&api, sync.as_ref().clone(), &ctx).await
    };
    if result.is_ok() {
        ctx.memory.succeeded(&uid);
    }
    result
}

/// Returns the CalendarUser that the CalendarSync references, from the cache.
fn referenced_user(sync: &CalendarSync, ctx: &Context) -> Option<Arc<CalendarUser>> {
    let key =
        ObjectRef::new(&sync.spec.user_ref.name).within(&sync.namespace().unwrap_or_default());
    ctx.users.get(&key)
}

/// Returns the owner reference to the user, so that garbage collection deletes the
/// CalendarSync with its CalendarUser in clusters that run it.
fn owner_reference(user: &CalendarUser) -> Option<OwnerReference> {
    let mut owner = user.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(false);
    Some(owner)
}

/// The inputs of a CalendarSync decision besides the object itself, gathered from the
/// caches, the remote view and the controller's memory.
pub(super) struct Observed {
    pub user: Option<Arc<CalendarUser>>,
    pub rivals: Vec<Arc<CalendarSync>>,
    pub snapshot: Option<Arc<Snapshot>>,
    pub failure: Option<RefreshFailure>,
    pub returned_at: Option<Timestamp>,
    pub rejected: bool,
    pub now: Timestamp,
}

impl Observed {
    pub(super) fn gather(sync: &CalendarSync, ctx: &Context) -> Observed {
        let uid = uid_of(sync);
        let user = referenced_user(sync, ctx);
        let rivals = rivals_of(sync, user.as_deref(), ctx);
        let returned_at = sync
            .status
            .as_ref()
            .and_then(|s| s.pending_create.as_ref())
            .and_then(|p| ctx.memory.returned_at(&uid, p.since.0));
        Observed {
            user,
            rivals,
            snapshot: ctx.view.snapshot(),
            failure: ctx.view.last_failure(),
            returned_at,
            rejected: ctx.memory.rejected(&uid, sync.metadata.generation),
            now: now(),
        }
    }

    pub(super) fn inputs<'a>(&'a self, sync: &'a CalendarSync, ctx: &'a Context) -> SyncInputs<'a> {
        SyncInputs {
            sync,
            user: self.user.as_deref(),
            rivals: &self.rivals,
            snapshot: self.snapshot.as_deref(),
            refresh_failure: self.failure.as_ref(),
            create_returned_at: self.returned_at,
            create_rejected: self.rejected,
            now: self.now,
            settings: &ctx.settings,
        }
    }
}

/// Returns the competitors of a CalendarSync for its username and type.
fn rivals_of(
    sync: &CalendarSync,
    user: Option<&CalendarUser>,
    ctx: &Context,
) -> Vec<Arc<CalendarSync>> {
    let username = sync
        .status
        .as_ref()
        .and_then(|s| s.username.clone())
        .or_else(|| user.map(|u| u.spec.username.clone()));
    match username {
        Some(username) => ctx.index.sync_rivals(sync, &username, &ctx.syncs),
        None => Vec::new(),
    }
}

async fn apply(
    api: &Api<CalendarSync>,
    mut sync: CalendarSync,
    ctx: &Context,
) -> Result<Action, Error> {
    let user = referenced_user(&sync, ctx);

    // The finalizer comes before anything remote exists; the owner reference once the user
    // is known.
    let owner = user.as_deref().and_then(owner_reference);
    let owner_missing = owner
        .as_ref()
        .is_some_and(|o| !sync.owner_references().iter().any(|r| r.uid == o.uid));
    if !has_finalizer(&sync) || owner_missing {
        sync = add_finalizer(api, &sync, owner.into_iter().collect()).await?;
    }

    let uid = uid_of(&sync);
    let status = sync.current_status();
    let observed = Observed::gather(&sync, ctx);
    let plan = decide_sync(&observed.inputs(&sync, ctx));

    // A claim (a pending create or an adopted id) is reserved in memory first, so that a
    // competitor deciding from a cache without this claim cannot claim the same as well.
    let claimed_before = status.sync_id.is_some() || status.pending_create.is_some();
    let claims_now = plan.claim.is_some() || plan.status.sync_id.is_some();
    if !claimed_before && claims_now {
        let key = format!(
            "sync/{}/{}",
            plan.status.username.as_deref().unwrap_or_default(),
            sync.spec.type_
        );
        if !ctx.memory.reserve(&key, &uid, observed.now) {
            return Err(Error::Contended);
        }
    }

    match &plan.action {
        SyncAction::Nothing => {}
        SyncAction::WaitForSnapshot { newer_than } => {
            ctx.view.request_refresh(*newer_than);
            let sync = write_status(api, sync, &plan.status, ctx).await?;
            if let Some(note) = &plan.note {
                ctx.publish(&sync, note).await;
            }
            // The snapshot triggers this reconcile; the requeue covers a refresh failure.
            return Ok(Action::requeue(PENDING_POLL));
        }
        SyncAction::Create {
            username,
            type_,
            smtp_address,
        } => {
            // The pending create is on record before the PUT, so a restart or a timeout
            // adopts what the PUT made instead of sending another.
            let claim = plan
                .claim
                .as_ref()
                .expect("a create always comes with its claim");
            sync = write_status(api, sync, claim, ctx).await?;
            let since = claim
                .pending_create
                .as_ref()
                .map(|p| p.since.0)
                .expect("the claim records the pending create");
            let result = ctx
                .mytimetable
                .create_synchronization(username, type_, smtp_address.as_deref())
                .await;
            if let Err(error) = result {
                return report_create_failure(api, sync, ctx, error).await;
            }
            let returned = now();
            ctx.memory.create_returned(&uid, since, returned);
            ctx.view.request_refresh(returned);
            tracing::info!(sync = %key_of(&sync), %username, %type_, "Requested MyTimetable synchronization");
            let sync = write_status(api, sync, &plan.status, ctx).await?;
            if let Some(note) = &plan.note {
                ctx.publish(&sync, note).await;
            }
            return Ok(Action::requeue(PENDING_POLL));
        }
    }

    let adopted = plan.status.sync_id.is_some() && plan.status.sync_id != status.sync_id;
    let sync = write_status(api, sync, &plan.status, ctx).await?;
    if adopted {
        tracing::info!(sync = %key_of(&sync), id = plan.status.sync_id, "Recorded MyTimetable synchronization");
    }
    if let Some(note) = &plan.note {
        ctx.publish(&sync, note).await;
    }
    Ok(Action::requeue(ctx.resync_interval))
}

async fn cleanup(
    api: &Api<CalendarSync>,
    sync: CalendarSync,
    ctx: &Context,
) -> Result<Action, Error> {
    if !has_finalizer(&sync) {
        return Ok(Action::await_change());
    }
    let observed = Observed::gather(&sync, ctx);
    let plan = decide_sync_deletion(&observed.inputs(&sync, ctx));
    let sync = write_status(api, sync, &plan.status, ctx).await?;

    match plan.action {
        SyncDeletion::WaitForSnapshot { newer_than } => {
            ctx.view.request_refresh(newer_than);
            Ok(Action::requeue(PENDING_POLL))
        }
        SyncDeletion::Unlink { id, mode } => {
            let outcome = ctx
                .mytimetable
                .delete_synchronization(id, wire_mode(mode))
                .await;
            match outcome {
                Ok(Deleted::Deleted) => {
                    tracing::info!(sync = %key_of(&sync), id, mode = mode.as_str(), "Unlinked MyTimetable synchronization");
                    if let Some(note) = &plan.note {
                        ctx.publish(&sync, note).await;
                    }
                }
                Ok(Deleted::NotFound) => {
                    tracing::info!(sync = %key_of(&sync), id, "MyTimetable synchronization was already gone");
                }
                Err(error) => {
                    let status = sync.current_status();
                    return report_failure(api, sync, status, ctx, error).await;
                }
            }
            ctx.view.record_sync_deleted(id);
            release(api, &sync, ctx).await
        }
        SyncDeletion::Release => release(api, &sync, ctx).await,
    }
}

fn wire_mode(mode: UnlinkMode) -> wire::UnlinkMode {
    match mode {
        UnlinkMode::UnlinkOnly => wire::UnlinkMode::UnlinkOnly,
        UnlinkMode::DeleteFutureEvents => wire::UnlinkMode::DeleteFutureEvents,
        UnlinkMode::DeleteAllEvents => wire::UnlinkMode::DeleteAllEvents,
        UnlinkMode::Cleanup => wire::UnlinkMode::Cleanup,
    }
}

async fn release(
    api: &Api<CalendarSync>,
    sync: &CalendarSync,
    ctx: &Context,
) -> Result<Action, Error> {
    remove_finalizer(api, sync).await?;
    ctx.memory.forget(&uid_of(sync));
    tracing::info!(sync = %key_of(sync), "Released CalendarSync");
    Ok(Action::await_change())
}

/// Records a failed create. A rejection (400, 422) made nothing, so the pending create is
/// cleared and the controller waits for a change of the resource. Any other failure may
/// have created the synchronization: the pending create stays, and the next reconcile
/// adopts or creates once a snapshot settles it.
async fn report_create_failure(
    api: &Api<CalendarSync>,
    sync: CalendarSync,
    ctx: &Context,
    error: mytimetable::Error,
) -> Result<Action, Error> {
    let mut status = sync.current_status();
    let rejected = matches!(
        error,
        mytimetable::Error::Rejected { .. } | mytimetable::Error::InvalidUsername { .. }
    );
    if rejected {
        status.pending_create = None;
    }
    report_failure(api, sync, status, ctx, error).await
}
