//! The fixture of the controller tests: a test namespace on the shared control plane, a
//! fresh simulator, a token file, and the controller running in process until stopped.

#![allow(dead_code)]

// The log capture of the client tests, to check that no token is ever logged.
#[path = "../support/mod.rs"]
mod support;

pub use support::logs;

use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use calsync_operator::config::RunConfig;
use calsync_operator::reconcile::Runtime;
use calsync_operator::resources::{
    CONDITION_READY, CalendarSync, CalendarSyncSpec, CalendarUser, CalendarUserSpec,
    DeletionPolicy, UnlinkMode, UserReference, find_condition,
};
use calsync_operator::sim::{RunningSimulator, SimConfig, Simulator};
use calsync_operator::testenv::{ControlPlane, TestNamespace};
use clap::Parser;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a wait may take before the test fails with what it saw last. Generous, because
/// two cores are shared by every test binary.
pub const WAIT: Duration = Duration::from_secs(90);

/// The token the simulator accepts.
pub const TOKEN: &str = "controller-test-token-5f0c";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunConfig,
}

/// Parses `calsync-operator run` flags; the first argument is the program name.
pub fn run_config(args: Vec<String>) -> RunConfig {
    Cli::try_parse_from(args).expect("valid test flags").run
}

/// Starts the controller in process; cancel the token to stop it.
pub async fn spawn_controller(config: RunConfig) -> (CancellationToken, JoinHandle<()>) {
    let runtime = Runtime::new(config, ControlPlane::shared().client().await, None)
        .expect("the controller starts");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { runtime.run(token).await });
    (shutdown, task)
}

/// Returns a MyTimetable client of the test itself for the simulator.
pub fn sim_client(sim: &RunningSimulator) -> calsync_operator::mytimetable::Client {
    let config = calsync_operator::mytimetable::ClientConfig::new(
        sim.base_url(),
        calsync_operator::mytimetable::Token::new(TOKEN),
    );
    calsync_operator::mytimetable::Client::new(config).expect("client")
}

/// One test's world: namespaces, a simulator, a token file and the controller.
pub struct Harness {
    pub client: kube::Client,
    pub namespaces: Vec<TestNamespace>,
    pub sim: RunningSimulator,
    pub token_dir: tempfile::TempDir,
    /// Extra `run` flags, for example a request timeout.
    pub flags: Vec<String>,
    controller: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Harness {
    /// Starts a simulator and one namespace, without the controller.
    pub async fn new(prefix: &str) -> Harness {
        Harness::with_namespaces(prefix, 1).await
    }

    /// Starts a simulator and `count` namespaces, without the controller.
    pub async fn with_namespaces(prefix: &str, count: usize) -> Harness {
        calsync_operator::install_rustls_provider();
        logs();
        let control_plane = ControlPlane::shared();
        let client = control_plane.client().await;
        let mut namespaces = Vec::new();
        for _ in 0..count {
            namespaces.push(TestNamespace::create(&client, prefix).await);
        }
        let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), SimConfig::new(TOKEN))
            .await
            .expect("simulator starts");
        let token_dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(token_dir.path().join("token"), TOKEN).expect("token file");
        Harness {
            client,
            namespaces,
            sim,
            token_dir,
            flags: Vec::new(),
            controller: None,
        }
    }

    /// Starts a simulator, one namespace and the controller.
    pub async fn start(prefix: &str) -> Harness {
        let mut harness = Harness::new(prefix).await;
        harness.start_controller().await;
        harness
    }

    pub fn ns(&self) -> &str {
        self.namespaces[0].name()
    }

    pub fn token_path(&self) -> PathBuf {
        self.token_dir.path().join("token")
    }

    /// Returns the controller's configuration: this test's namespaces and simulator, a short
    /// resync interval and request timeout, and the extra flags.
    pub fn config(&self) -> RunConfig {
        let namespaces: Vec<&str> = self.namespaces.iter().map(|n| n.name()).collect();
        let mut args = vec![
            "calsync-operator".to_string(),
            format!("--mytimetable-url={}", self.sim.base_url()),
            format!("--token-file={}", self.token_path().display()),
            format!("--namespaces={}", namespaces.join(",")),
            "--resync-interval=5s".to_string(),
            "--request-timeout=2s".to_string(),
            "--requests-per-second=200".to_string(),
        ];
        args.extend(self.flags.iter().cloned());
        run_config(args)
    }

    /// Starts the controller in process with [`Harness::config`].
    pub async fn start_controller(&mut self) {
        assert!(self.controller.is_none(), "the controller already runs");
        self.controller = Some(spawn_controller(self.config()).await);
    }

    /// Stops the controller and waits until its reconciles finished.
    pub async fn stop_controller(&mut self) {
        let (shutdown, task) = self.controller.take().expect("the controller runs");
        shutdown.cancel();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the controller stops within the wait")
            .expect("the controller task did not panic");
    }

    /// Aborts the controller at once, as a crash would: reconciles stop wherever they are.
    pub async fn kill_controller(&mut self) {
        let (shutdown, task) = self.controller.take().expect("the controller runs");
        task.abort();
        let _ = task.await;
        shutdown.cancel();
    }

    pub fn users(&self) -> Api<CalendarUser> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    pub fn syncs(&self) -> Api<CalendarSync> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    pub fn users_in(&self, index: usize) -> Api<CalendarUser> {
        Api::namespaced(self.client.clone(), self.namespaces[index].name())
    }

    pub fn syncs_in(&self, index: usize) -> Api<CalendarSync> {
        Api::namespaced(self.client.clone(), self.namespaces[index].name())
    }

    /// Returns the simulator's synchronizations of a user, lowest id first.
    pub async fn remote_syncs(&self, username: &str) -> Vec<(i64, String)> {
        let mut syncs: Vec<(i64, String)> = self
            .sim_client()
            .list_synchronizations()
            .await
            .expect("listing the simulator")
            .into_iter()
            .filter(|s| s.username == username)
            .map(|s| (s.id, s.type_))
            .collect();
        syncs.sort();
        syncs
    }

    pub async fn remote_users(&self) -> Vec<String> {
        self.sim_client()
            .list_users()
            .await
            .expect("listing the simulator")
    }

    /// Returns a MyTimetable client of the test itself, for arranging remote state.
    pub fn sim_client(&self) -> calsync_operator::mytimetable::Client {
        sim_client(&self.sim)
    }

    pub async fn shutdown(mut self) {
        if self.controller.is_some() {
            self.stop_controller().await;
        }
        self.sim.shutdown().await;
    }
}

/// Creates an object, failing the test on error.
pub async fn create<K>(api: &Api<K>, object: &K) -> K
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + Debug,
{
    api.create(&PostParams::default(), object)
        .await
        .unwrap_or_else(|error| panic!("creating {} failed: {error}", object.name_any()))
}

/// Deletes an object, failing the test on error.
pub async fn delete<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|error| panic!("deleting {name} failed: {error}"));
}

/// A CalendarUser fixture.
pub fn user(name: &str, username: &str) -> CalendarUser {
    CalendarUser::new(
        name,
        CalendarUserSpec {
            username: username.to_string(),
            deletion_policy: DeletionPolicy::Delete,
        },
    )
}

/// A CalendarSync fixture with unlinkMode UNLINK_ONLY and deletionPolicy Delete.
pub fn sync(name: &str, user: &str, type_: &str) -> CalendarSync {
    CalendarSync::new(
        name,
        CalendarSyncSpec {
            user_ref: UserReference {
                name: user.to_string(),
            },
            type_: type_.to_string(),
            smtp_address: None,
            unlink_mode: UnlinkMode::UnlinkOnly,
            deletion_policy: DeletionPolicy::Delete,
        },
    )
}

/// Returns the reason of the Ready condition, if the resource has one.
pub fn ready_reason<K: HasConditions>(object: &K) -> Option<String> {
    find_condition(object.conditions(), CONDITION_READY).map(|c| c.reason.clone())
}

/// Returns whether Ready is True for the current generation.
pub fn is_ready<K: HasConditions + Resource>(object: &K) -> bool {
    find_condition(object.conditions(), CONDITION_READY)
        .is_some_and(|c| c.status == "True" && c.observed_generation == object.meta().generation)
}

pub trait HasConditions {
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition];
}

impl HasConditions for CalendarUser {
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl HasConditions for CalendarSync {
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

/// Polls `check` until it returns Some, or fails after [`WAIT`] with the last state that
/// `describe` printed.
pub async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (Option<T>, String)>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (result, last_seen) = check().await;
        if let Some(value) = result {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}; last seen: {last_seen}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the object satisfies `predicate`, failing with its last status.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, predicate: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    let what = format!("{name} to be {what}");
    wait_until(&what, || async {
        match api.get_opt(name).await {
            Ok(Some(object)) if predicate(&object) => (Some(object), String::new()),
            Ok(Some(object)) => {
                let json = serde_json::to_value(&object).unwrap_or_default();
                (None, format!("status {}", json["status"]))
            }
            Ok(None) => (None, "not found".to_string()),
            Err(error) => (None, format!("error {error}")),
        }
    })
    .await
}

/// Waits until the object is Ready for its current generation.
pub async fn wait_ready<K>(api: &Api<K>, name: &str) -> K
where
    K: Resource + HasConditions + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    wait_for(api, name, "Ready", is_ready).await
}

/// Waits until the object has the Ready reason.
pub async fn wait_reason<K>(api: &Api<K>, name: &str, reason: &str) -> K
where
    K: Resource + HasConditions + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    wait_for(api, name, &format!("reason {reason}"), |o| {
        ready_reason(o).as_deref() == Some(reason)
    })
    .await
}

/// Waits until the object is gone.
pub async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    let what = format!("{name} to be deleted");
    wait_until(&what, || async {
        match api.get_opt(name).await {
            Ok(None) => (Some(()), String::new()),
            Ok(Some(object)) => {
                let json = serde_json::to_value(&object).unwrap_or_default();
                (
                    None,
                    format!(
                        "finalizers {} status {}",
                        json["metadata"]["finalizers"], json["status"]
                    ),
                )
            }
            Err(error) => (None, format!("error {error}")),
        }
    })
    .await
}
