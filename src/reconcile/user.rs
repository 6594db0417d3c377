//! The CalendarUser reconciler.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::patch::{add_finalizer, has_finalizer, remove_finalizer};
use super::{Context, Error, Managed, key_of, report_failure, uid_of, write_status};
use crate::decide::{UserAction, UserDeletion, UserInputs, decide_user, decide_user_deletion};
use crate::resources::{CalendarSync, CalendarUser};

/// The requeue interval of a reconcile that waits for something outside its own watch events.
const POLL: Duration = Duration::from_secs(5);

pub async fn reconcile(user: Arc<CalendarUser>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<CalendarUser> =
        Api::namespaced(ctx.kube.clone(), &user.namespace().unwrap_or_default());
    let uid = uid_of(user.as_ref());
    let result = if user.metadata.deletion_timestamp.is_some() {
        cleanup(&api, user.as_ref().clone(), &ctx).await
    } else {
        apply(&api, user.as_ref().clone(), &ctx).await
    };
    if result.is_ok() {
        ctx.memory.succeeded(&uid);
    }
    result
}

async fn apply(
    api: &Api<CalendarUser>,
    mut user: CalendarUser,
    ctx: &Context,
) -> Result<Action, Error> {
    // The finalizer comes before anything remote exists.
    if !has_finalizer(&user) {
        user = add_finalizer(api, &user, Vec::new()).await?;
    }
    let uid = uid_of(&user);
    if ctx.memory.rejected(&uid, user.metadata.generation) {
        return Ok(Action::await_change());
    }

    let rivals = ctx.index.user_rivals(&user, &ctx.users);
    let snapshot = ctx.view.snapshot();
    let failure = ctx.view.last_failure();
    let plan = decide_user(&UserInputs {
        user: &user,
        rivals: &rivals,
        snapshot: snapshot.as_deref(),
        refresh_failure: failure.as_ref(),
    });

    // Ownership is reserved in memory, so that a competitor deciding from a cache without
    // this claim cannot claim as well, and recorded before the remote write.
    if let Some(claim) = &plan.claim {
        let key = format!("user/{}", user.spec.username);
        if !ctx.memory.reserve(&key, &uid, jiff::Timestamp::now()) {
            return Err(Error::Contended);
        }
        user = write_status(api, user, claim, ctx).await?;
    }

    match plan.action {
        UserAction::Nothing => {}
        UserAction::WaitForSnapshot { newer_than } => {
            ctx.view.request_refresh(newer_than);
            write_status(api, user, &plan.status, ctx).await?;
            // The snapshot triggers this reconcile; the requeue covers a refresh failure.
            return Ok(Action::requeue(POLL));
        }
        UserAction::EnsureUser => {
            let username = user.spec.username.clone();
            if let Err(error) = ctx.mytimetable.ensure_user(&username).await {
                let status = user.current_status();
                return report_failure(api, user, status, ctx, error).await;
            }
            ctx.view.record_user_created(&username);
            tracing::info!(user = %key_of(&user), %username, "Created MyTimetable user");
        }
    }

    let user = write_status(api, user, &plan.status, ctx).await?;
    if let Some(note) = &plan.note {
        ctx.publish(&user, note).await;
    }
    Ok(Action::requeue(ctx.resync_interval))
}

async fn cleanup(
    api: &Api<CalendarUser>,
    user: CalendarUser,
    ctx: &Context,
) -> Result<Action, Error> {
    if !has_finalizer(&user) {
        return Ok(Action::await_change());
    }
    let key = ObjectRef::from_obj(&user);
    let referencing = ctx.index.referencing_syncs(&key, &ctx.syncs);
    let snapshot = ctx.view.snapshot();
    let failure = ctx.view.last_failure();
    let plan = decide_user_deletion(
        &UserInputs {
            user: &user,
            rivals: &[],
            snapshot: snapshot.as_deref(),
            refresh_failure: failure.as_ref(),
        },
        referencing.len(),
    );
    let user = write_status(api, user, &plan.status, ctx).await?;

    match plan.action {
        UserDeletion::DeleteSyncs { remaining } => {
            // The test control plane and some clusters run no garbage collector, so the
            // CalendarSyncs are deleted here. Each one's finalizer unlinks it with its own
            // unlinkMode, and their deletion events trigger this reconcile again.
            for sync in referencing
                .iter()
                .filter(|s| s.metadata.deletion_timestamp.is_none())
            {
                let syncs: Api<CalendarSync> =
                    Api::namespaced(ctx.kube.clone(), &sync.namespace().unwrap_or_default());
                match syncs
                    .delete(&sync.name_any(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => return Err(Error::Kube(error)),
                }
            }
            tracing::info!(user = %key_of(&user), remaining, "Waiting for CalendarSyncs to be deleted");
            Ok(Action::requeue(POLL))
        }
        UserDeletion::WaitForSnapshot { newer_than } => {
            ctx.view.request_refresh(newer_than);
            Ok(Action::requeue(POLL))
        }
        UserDeletion::Blocked { undeclared } => {
            if let Some(note) = &plan.note {
                ctx.publish(&user, note).await;
            }
            tracing::warn!(
                user = %key_of(&user),
                undeclared = ?undeclared.iter().map(|s| s.id).collect::<Vec<_>>(),
                "Not deleting MyTimetable user with undeclared synchronizations"
            );
            // New snapshots and CalendarSync changes trigger this reconcile as well.
            Ok(Action::requeue(ctx.resync_interval))
        }
        UserDeletion::DeleteUser => {
            let username = user.spec.username.clone();
            if let Err(error) = ctx.mytimetable.delete_user(&username).await {
                let status = user.current_status();
                return report_failure(api, user, status, ctx, error).await;
            }
            ctx.view.record_user_deleted(&username);
            tracing::info!(user = %key_of(&user), %username, "Deleted MyTimetable user");
            if let Some(note) = &plan.note {
                ctx.publish(&user, note).await;
            }
            release(api, &user, ctx).await
        }
        UserDeletion::Release => release(api, &user, ctx).await,
    }
}

async fn release(
    api: &Api<CalendarUser>,
    user: &CalendarUser,
    ctx: &Context,
) -> Result<Action, Error> {
    remove_finalizer(api, user).await?;
    ctx.memory.forget(&uid_of(user));
    tracing::info!(user = %key_of(user), "Released CalendarUser");
    Ok(Action::await_change())
}
