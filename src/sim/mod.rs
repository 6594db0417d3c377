//! A simulator of the MyTimetable provisioning API, for tests, the demo and benchmarks.
//!
//! It serves the endpoints of version 3.0 under `/api/v0` with their documented status
//! codes. [`SimConfig::later_version`] switches on the later-version behaviour: 404 when
//! deleting an unknown user, `GET /users/{username}`, `POST /users`, the per-user
//! synchronization endpoints, and the extra synchronization fields (`description`,
//! `enabled`, `status`, `lastResync`). Behind the API sits a calendar model: each
//! synchronization pushes four synthetic events (two in the past, two in the future) into
//! the user's calendar, and deleting it applies the `unlinkMode` to them.
//!
//! Every `/api/v0` request needs the `apiToken` header; `/_sim/` needs none.
//!
//! # Inspection and control (`/_sim/`)
//! | method and path | effect |
//! |---|---|
//! | `GET /_sim/health` | 200 `ok` |
//! | `GET /_sim/users/{username}/events` | 200 `{"username", "events": [{"id", "title", "start", "end", "source": {"kind": "synchronization", "synchronizationId", "type"} or {"kind": "personal"}}]}`, ordered by start |
//! | `POST /_sim/users/{username}/events` | JSON `{"title", "start", "end"}` (RFC 3339): adds a personal event that no unlinkMode removes; 201 with the event |
//! | `GET /_sim/requests` | 200 [`RequestReport`]: `/api/v0` requests by endpoint and status since start or reset |
//! | `GET /_sim/stats` | 200 `{"users", "synchronizations", "laterVersion"}` |
//! | `POST /_sim/reset` | 204: removes every user, synchronization and event and clears the request counters; faults stay |
//! | `GET /_sim/faults` | 200 the current [`Faults`] |
//! | `PUT /_sim/faults` | JSON [`Faults`] (missing fields are off): replaces the faults; 200 with them, 400 when invalid |
//! | `DELETE /_sim/faults` | 204: turns every fault off |
//!
//! The same controls are methods of [`RunningSimulator`] for tests in the same process.

mod api;
mod control;
mod counters;
mod faults;
mod model;
mod persist;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use url::Url;

pub use control::CalendarEvents;
pub use counters::{DROPPED, RequestCount, RequestReport};
pub use faults::{FaultRule, Faults, InvalidFault};
pub use model::{Event, EventSource};

use counters::Counters;
use model::Model;

/// Settings of a simulator.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The API token every `/api/v0` request must send in the `apiToken` header.
    pub token: String,
    /// Serve the later-version behaviour in place of version 3.0.
    pub later_version: bool,
    /// Faults injected from the start; `PUT /_sim/faults` replaces them.
    pub faults: Faults,
    /// A file that keeps users, synchronizations and events across restarts. It is loaded
    /// at start when it exists and rewritten atomically shortly after each change.
    pub state_file: Option<PathBuf>,
    /// The synchronization types the site has adapters for. A create with another type is
    /// rejected with 400. Empty accepts every type.
    pub sync_types: Vec<String>,
}

impl SimConfig {
    /// Settings for a 3.0 site with the adapters `o365`, `googlecalendar` and `ews`, no
    /// faults and no state file.
    pub fn new(token: impl Into<String>) -> SimConfig {
        SimConfig {
            token: token.into(),
            later_version: false,
            faults: Faults::default(),
            state_file: None,
            sync_types: DEFAULT_SYNC_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        }
    }
}

/// The types of the default configuration: those the API documentation mentions.
pub const DEFAULT_SYNC_TYPES: [&str; 3] = ["o365", "googlecalendar", "ews"];

/// A simulator that could not start or keep its state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address is in use or not available.
    #[error("failed to listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// An empty token would let any request through.
    #[error("the simulator token is empty: pass a non-empty token")]
    EmptyToken,
    /// The configured faults are out of range.
    #[error(transparent)]
    InvalidFaults(#[from] InvalidFault),
    /// The state file exists but cannot be read.
    #[error("failed to read the state file {}", path.display())]
    ReadState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state file is not a state this simulator wrote.
    #[error("invalid state file {}: {reason}; move it away to start empty", path.display())]
    InvalidState { path: PathBuf, reason: String },
    /// The state file could not be written.
    #[error("failed to write the state file {}", path.display())]
    WriteState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Entry point: `Simulator::start(addr, config)`.
pub struct Simulator;

/// A running simulator. Dropping it stops serving in the background, and
/// [`RunningSimulator::shutdown`] also waits until the connections are closed and the last
/// state-file write is done.
pub struct RunningSimulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

// State shared by all requests. Every lock is held only for in-memory work and not across
// an await (clippy's `await_holding_lock` lint checks this), so an injected delay never
// blocks other requests.
pub(crate) struct Shared {
    token: String,
    later_version: bool,
    sync_types: Vec<String>,
    state: Mutex<SimState>,
    faults: Mutex<Faults>,
    counters: Mutex<Counters>,
    // Wakes the state-file writer after a change.
    changed: Notify,
}

pub(crate) struct SimState {
    model: Model,
    // Serialized list bodies, built on the first list after a change, so that a list of
    // 10,000 entries is serialized once per change and not once per request.
    users_body: Option<Bytes>,
    synchronizations_body: Option<Bytes>,
    // Counts changes, so that the state-file writer can tell whether it is behind.
    generation: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data that is still consistent for a
    // simulator, so a poisoned lock is used as is.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Model) -> T) -> T {
        f(&lock(&self.state).model)
    }

    // Runs a change of the model and invalidates the cached list bodies.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Model) -> T) -> T {
        let result = {
            let mut state = lock(&self.state);
            let result = f(&mut state.model);
            state.users_body = None;
            state.synchronizations_body = None;
            state.generation += 1;
            result
        };
        self.changed.notify_one();
        result
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    pub(crate) fn counters(&self) -> MutexGuard<'_, Counters> {
        lock(&self.counters)
    }

    fn reset(&self) {
        self.write(|model| *model = Model::default());
        self.counters().clear();
    }
}

// How long shutdown waits for requests in flight, such as injected slow responses, before
// closing their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Simulator {
    /// Loads the state file if configured, binds `listen` (port 0 picks a free port) and
    /// serves until [`RunningSimulator::shutdown`].
    pub async fn start(listen: SocketAddr, config: SimConfig) -> Result<RunningSimulator, Error> {
        let SimConfig {
            token,
            later_version,
            faults,
            state_file,
            sync_types,
        } = config;
        if token.is_empty() {
            return Err(Error::EmptyToken);
        }
        faults.validate()?;
        let model = match &state_file {
            Some(path) => persist::load(path)?.unwrap_or_default(),
            None => Model::default(),
        };

        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;

        let shared = Arc::new(Shared {
            token,
            later_version,
            sync_types,
            state: Mutex::new(SimState {
                model,
                users_body: None,
                synchronizations_body: None,
                generation: 0,
            }),
            faults: Mutex::new(faults),
            counters: Mutex::new(Counters::default()),
            changed: Notify::new(),
        });
        let router = api::router(shared.clone()).merge(control::router(shared.clone()));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(server::serve(
            listener,
            router,
            shutdown.clone(),
            SHUTDOWN_GRACE,
        ));
        let writer = state_file
            .map(|path| tokio::spawn(persist::run_writer(path, shared.clone(), shutdown.clone())));
        info!(%addr, later_version, "MyTimetable simulator listening");

        Ok(RunningSimulator {
            addr,
            shared,
            shutdown,
            server: Some(server),
            writer,
        })
    }
}

impl RunningSimulator {
    /// Returns the address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the API root for clients, `http://ADDR/api/v0`.
    pub fn base_url(&self) -> Url {
        self.url("/api/v0")
    }

    /// Returns the root of the inspection and control endpoints, `http://ADDR/_sim`.
    pub fn control_url(&self) -> Url {
        self.url("/_sim")
    }

    fn url(&self, path: &str) -> Url {
        // A socket address always forms a valid URL authority.
        Url::parse(&format!("http://{}{path}", self.addr)).expect("socket address forms a URL")
    }

    /// Returns the events in a user's calendar, ordered by start.
    pub fn events(&self, username: &str) -> Vec<Event> {
        self.shared.read(|model| model.events(username))
    }

    /// Adds a personal event to a user's calendar.
    pub fn add_personal_event(
        &self,
        username: &str,
        title: &str,
        start: jiff::Timestamp,
        end: jiff::Timestamp,
    ) -> Event {
        self.shared
            .write(|model| model.add_personal_event(username, title, start, end))
    }

    /// Returns the `/api/v0` requests received since start or the last reset.
    pub fn requests(&self) -> RequestReport {
        self.shared.counters().report()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) -> Result<(), InvalidFault> {
        faults.validate()?;
        *self.shared.faults() = faults;
        Ok(())
    }

    /// Returns the injected faults, with the `next` counters as far as they have counted.
    pub fn faults(&self) -> Faults {
        self.shared.faults().clone()
    }

    /// Removes every user, synchronization and event and clears the request counters.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting connections, lets requests in flight finish for up to two seconds,
    /// and writes the state file a last time.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take()
            && let Err(error) = server.await
        {
            warn!(error = %error, "Simulator server task failed");
        }
        if let Some(writer) = self.writer.take()
            && let Err(error) = writer.await
        {
            warn!(error = %error, "Simulator state-file writer failed");
        }
        info!(addr = %self.addr, "MyTimetable simulator stopped");
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
