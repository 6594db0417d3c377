//! Leader election on the real kube-apiserver, with electors in this process. One replica
//! leads at a time, another takes over after a release and after an expiry, and a leader
//! that loses its Lease stops its work before a successor starts. The grace period at
//! shutdown lets work finish or abandons it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calsync_operator::leader::{Elector, LeaseConfig, LeaseTiming, Stopped, run_unelected};
use calsync_operator::telemetry::{HealthConfig, Telemetry};
use calsync_operator::testenv::{ControlPlane, TestNamespace};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a wait may take before the test fails with what it saw last; generous because
/// two cores are shared by every test binary.
const WAIT: Duration = Duration::from_secs(60);

const LEASE: &str = "calsync-election-test";

// Short durations keep each takeover within seconds. The 2 s between renew deadline and
// lease duration are the margin in which a leader that cannot renew stops its work.
fn timing() -> LeaseTiming {
    LeaseTiming {
        lease_duration: Duration::from_secs(5),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(500),
    }
}

fn telemetry() -> Telemetry {
    Telemetry::new(HealthConfig {
        reconcile_stall_after: Duration::from_secs(600),
        refresh_stall_after: Duration::from_secs(600),
        lease_stall_after: Duration::from_secs(60),
    })
}

/// The order in which the replicas started and stopped their work.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }

    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn position(&self, entry: &str) -> Option<usize> {
        self.entries().iter().position(|e| e == entry)
    }

    fn count(&self, entry: &str) -> usize {
        self.entries().iter().filter(|e| *e == entry).count()
    }

    async fn wait_for(&self, entry: &str, times: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.count(entry) < times {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {entry} x{times}; journal: {:?}",
                self.entries()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// Pushes `<name>:stop` when the work ends in any way, also when it is dropped.
struct StopMark(Journal, String);

impl Drop for StopMark {
    fn drop(&mut self) {
        self.0.push(format!("{}:stop", self.1));
    }
}

/// How a replica's work reacts to its stop token.
#[derive(Clone, Copy)]
enum Work {
    /// Finishes as soon as its stop token is cancelled.
    Cooperative,
    /// Never finishes on its own.
    Stubborn,
    /// Returns at once, as if the controllers crashed.
    Crashing,
}

struct Replica {
    name: &'static str,
    identity: String,
    shutdown: CancellationToken,
    task: JoinHandle<Stopped>,
}

impl Replica {
    fn start(
        name: &'static str,
        client: kube::Client,
        namespace: &str,
        journal: &Journal,
        work: Work,
    ) -> Replica {
        let identity = format!("{name}_test");
        let config = LeaseConfig {
            name: LEASE.to_string(),
            namespace: namespace.to_string(),
            identity: identity.clone(),
            timing: timing(),
        };
        let elector = Elector::new(client, config, telemetry()).expect("valid timing");
        let shutdown = CancellationToken::new();
        let lead_journal = journal.clone();
        let follow_journal = journal.clone();
        let task = tokio::spawn(elector.run(
            shutdown.clone(),
            Duration::from_secs(1),
            move |stop| lead(lead_journal.clone(), name, work, stop),
            move || {
                let journal = follow_journal.clone();
                async move {
                    journal.push(format!("{name}:follow"));
                    std::future::pending::<()>().await
                }
            },
        ));
        Replica {
            name,
            identity,
            shutdown,
            task,
        }
    }

    async fn stop(self) -> Stopped {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop", self.name))
            .expect("elector task did not panic")
    }
}

async fn lead(journal: Journal, name: &'static str, work: Work, stop: CancellationToken) {
    journal.push(format!("{name}:start"));
    let _mark = StopMark(journal.clone(), name.to_string());
    match work {
        Work::Cooperative => {
            stop.cancelled().await;
            journal.push(format!("{name}:finished"));
        }
        Work::Stubborn => std::future::pending().await,
        Work::Crashing => {}
    }
}

async fn lease(client: &kube::Client, namespace: &str) -> Option<Lease> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    leases.get_opt(LEASE).await.expect("reading the Lease")
}

async fn holder(client: &kube::Client, namespace: &str) -> Option<String> {
    lease(client, namespace)
        .await
        .and_then(|lease| lease.spec)
        .and_then(|spec| spec.holder_identity)
}

async fn setup(prefix: &str) -> (kube::Client, TestNamespace, Journal) {
    calsync_operator::install_rustls_provider();
    let client = ControlPlane::shared().client().await;
    let namespace = TestNamespace::create(&client, prefix).await;
    (client, namespace, Journal::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_lease_passes_to_waiting_replica() {
    let (client, namespace, journal) = setup("lease-release").await;
    let ns = namespace.name();
    let a = Replica::start("a", client.clone(), ns, &journal, Work::Cooperative);
    journal.wait_for("a:start", 1).await;
    let b = Replica::start("b", client.clone(), ns, &journal, Work::Cooperative);
    journal.wait_for("b:follow", 1).await;

    // Several of b's attempts find the Lease held.
    tokio::time::sleep(timing().retry_period * 4).await;
    assert_eq!(journal.position("b:start"), None, "{:?}", journal.entries());
    assert_eq!(holder(&client, ns).await, Some(a.identity.clone()));
    let first = lease(&client, ns).await.and_then(|l| l.spec).expect("spec");
    assert_eq!(first.lease_transitions, Some(0));
    assert_eq!(first.lease_duration_seconds, Some(5));

    // a finishes its work and releases; b takes over without waiting for an expiry.
    assert_eq!(a.stop().await, Stopped::Shutdown);
    let entries = journal.entries();
    let finished = journal.position("a:finished").expect("a finished");
    let stopped = journal.position("a:stop").expect("a stopped");
    assert!(finished < stopped, "{entries:?}");
    journal.wait_for("b:start", 1).await;
    assert!(stopped < journal.position("b:start").unwrap());
    let taken = lease(&client, ns).await.and_then(|l| l.spec).expect("spec");
    assert_eq!(taken.holder_identity, Some(b.identity.clone()));
    assert_eq!(taken.lease_transitions, Some(1));

    assert_eq!(b.stop().await, Stopped::Shutdown);
    assert_eq!(holder(&client, ns).await, None, "b released the Lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_lease_expires_to_waiting_replica() {
    let (client, namespace, journal) = setup("lease-expire").await;
    let ns = namespace.name();
    let a = Replica::start("a", client.clone(), ns, &journal, Work::Cooperative);
    journal.wait_for("a:start", 1).await;
    let b = Replica::start("b", client.clone(), ns, &journal, Work::Cooperative);
    journal.wait_for("b:follow", 1).await;

    // An abort stops a like a crash: no release.
    a.task.abort();
    let _ = a.task.await;
    assert_eq!(journal.position("a:finished"), None);
    assert_eq!(holder(&client, ns).await, Some(a.identity.clone()));

    journal.wait_for("b:start", 1).await;
    assert_eq!(holder(&client, ns).await, Some(b.identity.clone()));
    assert_eq!(b.stop().await, Stopped::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stops_when_lease_is_taken() {
    let (client, namespace, journal) = setup("lease-taken").await;
    let ns = namespace.name();
    let a = Replica::start("a", client.clone(), ns, &journal, Work::Cooperative);
    journal.wait_for("a:start", 1).await;

    // Another holder writes the Lease, as a replica would that saw it expire.
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let mut taken = leases.get(LEASE).await.expect("the Lease exists");
    let spec = taken.spec.as_mut().expect("spec");
    spec.holder_identity = Some("intruder".to_string());
    leases
        .replace(LEASE, &PostParams::default(), &taken)
        .await
        .expect("replacing the Lease");

    // a drops its work without finishing it, and takes the Lease back only after the
    // intruder's record stayed unchanged for the lease duration.
    journal.wait_for("a:stop", 1).await;
    assert_eq!(
        journal.position("a:finished"),
        None,
        "{:?}",
        journal.entries()
    );
    assert_eq!(holder(&client, ns).await.as_deref(), Some("intruder"));
    journal.wait_for("a:start", 2).await;
    assert_eq!(holder(&client, ns).await, Some(a.identity.clone()));
    assert_eq!(a.stop().await, Stopped::Shutdown);
}

/// A TCP proxy to the API server that can stop forwarding: connections stay open but no
/// byte passes any more, as when a node loses its network.
struct Blackhole {
    address: SocketAddr,
    cut: CancellationToken,
}

impl Blackhole {
    async fn start(target: SocketAddr) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("address");
        let cut = CancellationToken::new();
        let accepting = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let cut = accepting.clone();
                tokio::spawn(async move {
                    if cut.is_cancelled() {
                        // Hold the connection open without ever responding.
                        return std::future::pending::<()>().await;
                    }
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream) => {}
                        () = cut.cancelled() => std::future::pending::<()>().await,
                    }
                });
            }
        });
        Blackhole { address, cut }
    }
}

// A client of the shared control plane whose connections go through `proxy`.
async fn client_through(proxy: &Blackhole) -> kube::Client {
    let kubeconfig =
        Kubeconfig::read_from(ControlPlane::shared().kubeconfig()).expect("kubeconfig");
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("client config");
    config.cluster_url = format!("https://{}", proxy.address)
        .parse()
        .expect("proxy URL");
    kube::Client::try_from(config).expect("client")
}

fn server_address() -> SocketAddr {
    let url: url::Url = ControlPlane::shared()
        .server_url()
        .parse()
        .expect("server URL");
    let host = url.host_str().expect("host");
    let port = url.port().expect("port");
    format!("{host}:{port}")
        .parse()
        .expect("a loopback socket address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_leader_stops_before_successor_starts() {
    let (client, namespace, journal) = setup("lease-partition").await;
    let ns = namespace.name();
    let proxy = Blackhole::start(server_address()).await;
    let a = Replica::start(
        "a",
        client_through(&proxy).await,
        ns,
        &journal,
        Work::Stubborn,
    );
    journal.wait_for("a:start", 1).await;
    let b = Replica::start("b", client.clone(), ns, &journal, Work::Cooperative);
    journal.wait_for("b:follow", 1).await;

    // a's renewals now hang until the renew deadline, after which a drops its work; b may
    // take the Lease only after the lease duration.
    proxy.cut.cancel();
    journal.wait_for("b:start", 1).await;
    let entries = journal.entries();
    let a_stopped = journal.position("a:stop").unwrap_or_else(|| {
        panic!("b started while a still worked: {entries:?}");
    });
    assert!(
        a_stopped < journal.position("b:start").unwrap(),
        "{entries:?}"
    );
    assert_eq!(holder(&client, ns).await, Some(b.identity.clone()));

    assert_eq!(b.stop().await, Stopped::Shutdown);
    // a keeps trying through the cut proxy until it is stopped.
    assert_eq!(a.stop().await, Stopped::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_work_still_releases_lease() {
    let (client, namespace, journal) = setup("lease-grace").await;
    let ns = namespace.name();
    let a = Replica::start("a", client.clone(), ns, &journal, Work::Stubborn);
    journal.wait_for("a:start", 1).await;

    // The work ignores its stop token, so it is dropped after the 1 s grace period.
    assert_eq!(a.stop().await, Stopped::Shutdown);
    assert_eq!(journal.position("a:finished"), None);
    assert!(
        journal.position("a:stop").is_some(),
        "{:?}",
        journal.entries()
    );
    assert_eq!(holder(&client, ns).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_work_ends_the_run() {
    let (client, namespace, journal) = setup("lease-crash").await;
    let ns = namespace.name();
    let a = Replica::start("a", client.clone(), ns, &journal, Work::Crashing);
    let stopped = tokio::time::timeout(WAIT, a.task)
        .await
        .expect("the run ends")
        .expect("no panic");
    assert_eq!(stopped, Stopped::WorkEnded);
    assert_eq!(holder(&client, ns).await, None, "the Lease was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unelected_work_gets_the_grace_period() {
    let telemetry = telemetry();
    for (work, finishes) in [(Work::Cooperative, true), (Work::Stubborn, false)] {
        let journal = Journal::default();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let journal = journal.clone();
            let shutdown = shutdown.clone();
            let telemetry = telemetry.clone();
            async move {
                run_unelected(shutdown, Duration::from_millis(500), &telemetry, |stop| {
                    lead(journal, "solo", work, stop)
                })
                .await
            }
        });
        journal.wait_for("solo:start", 1).await;
        shutdown.cancel();
        let stopped = tokio::time::timeout(WAIT, run)
            .await
            .expect("the run ends")
            .expect("no panic");
        assert_eq!(stopped, Stopped::Shutdown);
        assert_eq!(journal.position("solo:finished").is_some(), finishes);
        assert!(journal.position("solo:stop").is_some());
    }
}
