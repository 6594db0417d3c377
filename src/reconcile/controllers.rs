//! Wiring: the clients, the token source, the remote view, the watches with their indexes,
//! and the two controllers, run until a shutdown token is cancelled.

use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt, stream};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::observe::{Kind, observed};
use super::{
    Context, EventPublisher, Index, Managed, Memory, error_policy, status_differs, sync, user,
};
use crate::config::{ConfigError, RunConfig, TokenSource};
use crate::decide::{
    Settings, SyncAction, UserAction, UserInputs, decide_sync, decide_user, is_ready,
};
use crate::mytimetable::{self, ClientConfig, ClientMetrics, Token, token};
use crate::remote::{RemoteView, Snapshot, ViewConfig};
use crate::resources::{CalendarSync, CalendarUser};
use crate::telemetry::{HealthConfig, Telemetry};

/// How often the ownership index is published to the remote view when it changed.
const OWNERSHIP_INTERVAL: Duration = Duration::from_secs(1);

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A flag is invalid; the message names it.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The MyTimetable client could not be built from the flags.
    #[error("invalid MyTimetable client settings")]
    Client(#[from] mytimetable::ConfigError),
    /// The token file could not be read.
    #[error("loading the MyTimetable token failed")]
    Token(#[from] token::Error),
    /// The kubeconfig file could not be read or used.
    #[error("loading the kubeconfig failed")]
    Kubeconfig(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Everything `calsync-operator run` starts, built from the configuration.
///
/// [`Runtime::run_background`] keeps the token and the remote view current and runs on every
/// replica (the read-only API reads the view); [`Runtime::run_controllers`] reconciles and
/// runs on the leader only. [`Runtime::run`] runs both.
#[derive(Clone)]
pub struct Runtime {
    pub config: RunConfig,
    pub kube: kube::Client,
    pub mytimetable: mytimetable::Client,
    pub token: Token,
    pub view: RemoteView,
    /// Metrics and health signals, which the HTTP server reads.
    pub telemetry: Telemetry,
}

impl Runtime {
    /// Builds the runtime with a Kubernetes client from `--kubeconfig` or the usual
    /// inference.
    pub async fn from_config(
        config: RunConfig,
        metrics: Option<ClientMetrics>,
    ) -> Result<Runtime, RuntimeError> {
        // Flag errors first: they are the likelier mistake and name the flag to fix.
        config.validate()?;
        if let TokenSource::File(path) = config.token_source()? {
            Token::from_file(&path)?;
        }
        let kube = match &config.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|error| RuntimeError::Kubeconfig(Box::new(error)))?;
                let options = KubeConfigOptions::default();
                let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|error| RuntimeError::Kubeconfig(Box::new(error)))?;
                kube::Client::try_from(client_config)
                    .map_err(|error| RuntimeError::Kubeconfig(Box::new(error)))?
            }
            None => kube::Client::try_default()
                .await
                .map_err(|error| RuntimeError::Kubeconfig(Box::new(error)))?,
        };
        Runtime::new(config, kube, metrics)
    }

    /// Builds the runtime around an existing Kubernetes client. The MyTimetable client
    /// counts its requests in `metrics`, or in new families when None; either way they are
    /// registered in [`Runtime::telemetry`].
    pub fn new(
        config: RunConfig,
        kube: kube::Client,
        metrics: Option<ClientMetrics>,
    ) -> Result<Runtime, RuntimeError> {
        config.validate()?;
        let token = match config.token_source()? {
            // A missing token file stops start-up with the path in the message.
            TokenSource::File(path) => Token::from_file(&path)?,
            // The Secret watch loads it; until then requests are rejected as unauthorized.
            TokenSource::Secret { .. } => Token::new(""),
        };
        let mut client_config = ClientConfig::new(config.mytimetable_url.clone(), token.clone());
        client_config.ca_bundle_pem = config.read_ca_bundle()?;
        client_config.request_timeout = config.request_timeout;
        client_config.requests_per_second = config.requests_per_second;
        client_config.max_concurrent_requests = config.max_concurrent_requests;
        let health = HealthConfig::for_run(&config, config.lease_duration);
        let telemetry = Telemetry::with_client_metrics(health, metrics.unwrap_or_default());
        client_config.metrics = Some(telemetry.client_metrics.clone());
        let mytimetable = mytimetable::Client::new(client_config)?;
        let view = RemoteView::new(
            Arc::new(mytimetable.clone()),
            ViewConfig::new(config.resync_interval),
        );
        Ok(Runtime {
            config,
            kube,
            mytimetable,
            token,
            view,
            telemetry,
        })
    }

    /// Runs the background tasks and the controllers until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) {
        tokio::join!(
            self.run_background(shutdown.clone()),
            self.run_controllers(shutdown)
        );
    }

    /// Keeps the token and the remote view current until `shutdown` is cancelled.
    pub async fn run_background(&self, shutdown: CancellationToken) {
        let token_watch = async {
            match self.config.token_source() {
                Ok(TokenSource::File(path)) => token::watch_file(path, self.token.clone()).await,
                Ok(TokenSource::Secret {
                    namespace,
                    name,
                    key,
                }) => {
                    token::watch_secret(self.kube.clone(), namespace, name, key, self.token.clone())
                        .await
                }
                // `Runtime::new` validated the configuration.
                Err(_) => {}
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = token_watch => {}
            () = self.view.run(shutdown.clone()) => {}
        }
    }

    /// Watches the resources and reconciles them until `shutdown` is cancelled; in-flight
    /// reconciles finish first.
    pub async fn run_controllers(&self, shutdown: CancellationToken) {
        let config = &self.config;
        let (users, users_writer) = reflector::store::<CalendarUser>();
        let (syncs, syncs_writer) = reflector::store::<CalendarSync>();
        let (user_triggers, user_requests) = mpsc::unbounded();
        let (sync_triggers, sync_requests) = mpsc::unbounded();
        let ctx = Arc::new(Context {
            kube: self.kube.clone(),
            mytimetable: self.mytimetable.clone(),
            view: self.view.clone(),
            events: EventPublisher::new(self.kube.clone(), std::env::var("POD_NAME").ok()),
            settings: Settings {
                create_settle: config.create_settle(),
            },
            resync_interval: config.resync_interval,
            users: users.clone(),
            syncs: syncs.clone(),
            index: Index::default(),
            memory: Memory::default(),
            user_triggers,
            sync_triggers,
            telemetry: self.telemetry.clone(),
        });

        // The watches fill the caches and the indexes, and turn each event into the
        // reconciles it concerns.
        let user_watch = {
            let ctx = ctx.clone();
            watch_events::<CalendarUser>(&self.kube, config)
                .reflect(users_writer)
                .for_each(move |event| {
                    ctx.telemetry
                        .health
                        .observe_watch(CalendarUser::KIND, &event);
                    if let Ok(event) = event {
                        dispatch(&ctx, ctx.index.user_event(&event));
                    }
                    ready(())
                })
        };
        let sync_watch = {
            let ctx = ctx.clone();
            watch_events::<CalendarSync>(&self.kube, config)
                .reflect(syncs_writer)
                .for_each(move |event| {
                    ctx.telemetry
                        .health
                        .observe_watch(CalendarSync::KIND, &event);
                    if let Ok(event) = event {
                        dispatch(&ctx, ctx.index.sync_event(&event));
                    }
                    ready(())
                })
        };

        let concurrency =
            controller::Config::default().concurrency(config.max_concurrent_reconciles);
        let user_controller = Controller::for_stream(stream::pending(), users)
            .with_config(concurrency.clone())
            .reconcile_on(user_requests)
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                |object, ctx| observed(object, ctx, user::reconcile),
                error_policy,
                ctx.clone(),
            )
            .for_each(log_result);
        let sync_controller = Controller::for_stream(stream::pending(), syncs)
            .with_config(concurrency)
            .reconcile_on(sync_requests)
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                |object, ctx| observed(object, ctx, sync::reconcile),
                error_policy,
                ctx.clone(),
            )
            .for_each(log_result);

        tracing::info!(
            namespaces = ?config.namespaces,
            label_selector = config.label_selector.as_deref().unwrap_or(""),
            "Starting controllers"
        );
        let watches = async {
            tokio::select! {
                () = shutdown.cancelled() => {}
                // A watch stream ends only on a bug; liveness then restarts the process.
                () = user_watch => ctx.telemetry.health.watch_ended(CalendarUser::KIND),
                () = sync_watch => ctx.telemetry.health.watch_ended(CalendarSync::KIND),
                () = trigger_on_refresh(&ctx) => {}
                () = publish_ownership(&ctx.index, &ctx.view) => {}
            }
        };
        tokio::join!(watches, user_controller, sync_controller);
        tracing::info!("Controllers stopped");
    }
}

/// Returns the watch events of one kind in the configured namespaces, with managed fields
/// and annotations dropped to save memory.
pub(super) fn watch_events<K>(
    client: &kube::Client,
    config: &RunConfig,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let mut watch_config = watcher::Config::default();
    if let Some(selector) = &config.label_selector {
        watch_config = watch_config.labels(selector);
    }
    // One namespace is watched on its own; several need a cluster-wide watch filtered here,
    // because one cache cannot merge the relists of several watches.
    // NOTE: with several namespaces the controller therefore needs list and watch
    // permission in every namespace.
    let api: Api<K> = match config.namespaces.as_slice() {
        [namespace] => Api::namespaced(client.clone(), namespace),
        _ => Api::all(client.clone()),
    };
    let namespaces = config.namespaces.clone();
    watch(api, watch_config)
        .default_backoff()
        .modify(|object: &mut K| {
            // Neither is read, and kubectl's last-applied annotation repeats the whole spec.
            object.managed_fields_mut().clear();
            object.annotations_mut().clear();
        })
        .filter(move |event| {
            let keep = match event {
                Ok(Event::Apply(object) | Event::InitApply(object) | Event::Delete(object)) => {
                    namespaces.is_empty()
                        || namespaces
                            .iter()
                            .any(|n| Some(n.as_str()) == object.meta().namespace.as_deref())
                }
                Ok(_) => true,
                Err(error) => {
                    tracing::warn!(%error, kind = %K::kind(&()), "Watch failed; retrying");
                    true
                }
            };
            ready(keep)
        })
}

fn dispatch(ctx: &Context, triggers: super::index::Triggers) {
    for user in triggers.users {
        ctx.trigger_user(user);
    }
    for sync in triggers.syncs {
        ctx.trigger_sync(sync);
    }
}

async fn log_result<K, E>(
    result: Result<(ObjectRef<K>, controller::Action), controller::Error<E, watcher::Error>>,
) where
    K: Resource,
    E: std::error::Error,
{
    match result {
        Ok((object, _)) => tracing::trace!(%object, "Reconciled"),
        // Requests for objects deleted meanwhile are expected.
        Err(controller::Error::ObjectNotFound(object)) => {
            tracing::debug!(%object, "Skipped reconcile of a deleted object")
        }
        // The error policy logged it with the object.
        Err(controller::Error::ReconcilerFailed(..)) => {}
        Err(error) => tracing::warn!(%error, "Controller error"),
    }
}

/// Triggers the objects that a new remote snapshot concerns: those whose decision is no
/// longer a no-op (drift, a pending create that the list settles, a user that can go).
async fn trigger_on_refresh(ctx: &Context) {
    let mut snapshots = ctx.view.subscribe();
    let mut last_fetched_at = None;
    while snapshots.changed().await.is_ok() {
        let Some(snapshot) = snapshots.borrow_and_update().clone() else {
            continue;
        };
        // Writes also publish a snapshot; only a refresh brings news from MyTimetable.
        if last_fetched_at == Some(snapshot.fetched_at) {
            continue;
        }
        last_fetched_at = Some(snapshot.fetched_at);
        trigger_concerned(ctx, &snapshot);
    }
}

fn trigger_concerned(ctx: &Context, snapshot: &Arc<Snapshot>) {
    let now = super::now();
    let mut triggered = 0usize;
    for user in ctx.users.state() {
        // Most users are settled: a cheap check skips the full decision for them.
        if settled_user(&user, snapshot) {
            continue;
        }
        let uid = super::uid_of(user.as_ref());
        if ctx.memory.backing_off(&uid, now) || ctx.memory.rejected(&uid, user.metadata.generation)
        {
            continue;
        }
        let concerned = if user.metadata.deletion_timestamp.is_some() {
            true
        } else {
            let rivals = ctx.index.user_rivals(&user, &ctx.users);
            let plan = decide_user(&UserInputs {
                user: &user,
                rivals: &rivals,
                snapshot: Some(snapshot),
                refresh_failure: None,
            });
            let progress = !matches!(
                plan.action,
                UserAction::Nothing | UserAction::WaitForSnapshot { .. }
            );
            progress
                || plan.claim.is_some()
                || status_differs::<CalendarUser>(&user.current_status(), &plan.status)
        };
        if concerned {
            triggered += 1;
            ctx.trigger_user(ObjectRef::from_obj(user.as_ref()));
        }
    }
    for sync in ctx.syncs.state() {
        if settled_sync(&sync, snapshot) {
            continue;
        }
        let uid = super::uid_of(sync.as_ref());
        if ctx.memory.backing_off(&uid, now) {
            continue;
        }
        let concerned = if sync.metadata.deletion_timestamp.is_some() {
            true
        } else {
            let mut observed = sync::Observed::gather(&sync, ctx);
            observed.snapshot = Some(snapshot.clone());
            observed.failure = None;
            let status = sync.current_status();
            let plan = decide_sync(&observed.inputs(&sync, ctx));
            // A decision to wait for a newer snapshot cannot be helped by this one.
            let progress = !matches!(
                plan.action,
                SyncAction::Nothing | SyncAction::WaitForSnapshot { .. }
            );
            progress || status_differs::<CalendarSync>(&status, &plan.status)
        };
        if concerned {
            triggered += 1;
            ctx.trigger_sync(ObjectRef::from_obj(sync.as_ref()));
        }
    }
    tracing::debug!(
        triggered,
        users = snapshot.users.len(),
        synchronizations = snapshot.synchronizations.len(),
        "Remote view refreshed"
    );
}

/// Returns whether a user is Ready for its generation and its owned remote user is in the
/// snapshot, so that the snapshot gives it nothing to do.
fn settled_user(user: &CalendarUser, snapshot: &Snapshot) -> bool {
    let Some(status) = &user.status else {
        return false;
    };
    user.metadata.deletion_timestamp.is_none()
        && is_ready(&status.conditions, user.metadata.generation)
        && status
            .owned_username
            .as_deref()
            .is_some_and(|username| snapshot.has_user(username))
}

/// Returns whether a synchronization is Ready for its generation and its recorded id is in
/// the snapshot, so that the snapshot gives it nothing to do.
fn settled_sync(sync: &CalendarSync, snapshot: &Snapshot) -> bool {
    let Some(status) = &sync.status else {
        return false;
    };
    sync.metadata.deletion_timestamp.is_none()
        && is_ready(&status.conditions, sync.metadata.generation)
        && status.sync_id.is_some_and(|id| snapshot.sync(id).is_some())
}

/// Publishes which remote objects the resources manage, for the read-only API's filters.
pub(super) async fn publish_ownership(index: &Index, view: &RemoteView) {
    let mut interval = tokio::time::interval(OWNERSHIP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if index.take_changed() {
            view.set_ownership(index.ownership());
        }
    }
}
