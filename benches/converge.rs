//! The converge and steady-state benchmark behind `make bench` (see docs/benchmarks.md).
//!
//! It starts `calsync-devenv` (etcd and kube-apiserver on loopback), `mytimetable-sim` with
//! an injected latency and the release `calsync-operator`, each as its own process from
//! `--bin-dir`, creates N CalendarUsers and N CalendarSyncs, and measures:
//! - the time from the first create to all Ready, polled with lists, beside its lower bound;
//! - MyTimetable requests by endpoint from the simulator's counters;
//! - Kubernetes API writes by verb and resource from kube-apiserver's own
//!   `apiserver_request_total`, during converge and during a steady-state window;
//! - the controller's peak resident memory (`VmHWM`);
//! - requests per second and p99 latency of the read-only API under `wrk`.
//!
//! Every address is on loopback, every wait has a deadline, and every process the benchmark
//! starts is stopped when it ends, fails or is interrupted.
//!
//! It is a Cargo bench target without the test harness, so `cargo bench` builds it with the
//! release profile like the binaries it measures, `cargo clippy --all-targets` (and so
//! `make test`) compiles it, and `cargo test` does not run it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::Serialize;

use calsync_operator::config::parse_duration;
use calsync_operator::resources::{
    CONDITION_READY, CalendarSync, CalendarSyncSpec, CalendarUser, CalendarUserSpec,
    DeletionPolicy, UnlinkMode, UserReference, find_condition,
};
use calsync_operator::sim::RequestReport;

/// The namespace all benchmark resources live in.
const NAMESPACE: &str = "calsync-bench";
/// The synchronization type of every CalendarSync; the simulator accepts it by default.
const SYNC_TYPE: &str = "o365";
/// Creates in flight at once. An estimate: kube-apiserver on 2 cores admits a few hundred
/// small creates per second, and 32 keeps it busy far below its default limit of 200 mutating
/// requests in flight.
const CREATE_CONCURRENCY: usize = 32;
/// Deadlines of the start-up phases. calsync-devenv starts etcd and kube-apiserver and
/// installs the CRDs, which took 5 to 20 seconds on a loaded 2-core machine.
const DEVENV_START_TIMEOUT: Duration = Duration::from_secs(180);
const SIM_START_TIMEOUT: Duration = Duration::from_secs(30);
const CONTROLLER_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped process gets to exit after SIGTERM before it is killed. Above the
/// controller's shutdown grace period below, so it is never killed mid-shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const CONTROLLER_SHUTDOWN_GRACE: &str = "10s";
/// Between two memory samples of the controller during the steady-state window.
const STEADY_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Write verbs as kube-apiserver labels them in `apiserver_request_total` (a create is
/// `POST`, an update `PUT`, a server-side apply `APPLY`).
const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];

/// Measures how the controller converges N CalendarUsers and N CalendarSyncs and how quiet it
/// is afterwards.
#[derive(Parser, Debug)]
// A flag given twice takes its last value, so BENCH_ARGS can override what scripts/bench.sh
// passes, such as --out-dir.
#[command(name = "converge", args_override_self = true)]
struct Cli {
    /// Number of CalendarUsers, and of CalendarSyncs (one per user).
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Delay the simulator adds to every MyTimetable request.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    latency: Duration,
    /// The controller's --max-concurrent-requests.
    #[arg(long, default_value_t = 8)]
    max_concurrent_requests: usize,
    /// The controller's --requests-per-second. The default is above what the concurrency
    /// allows at 20 ms (8 / 0.02 s = 400 per second), so concurrency is the limit that the
    /// lower bound assumes.
    #[arg(long, default_value_t = 1000)]
    requests_per_second: u32,
    /// The controller's --max-concurrent-reconciles.
    #[arg(long, default_value_t = 16)]
    max_concurrent_reconciles: usize,
    /// Length of the steady-state window after all resources are Ready.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    steady: Duration,
    /// Deadline for all resources to become Ready.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    converge_timeout: Duration,
    /// Pause between two Ready polls (each poll lists both kinds).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Length of the read-only API load test.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    load_duration: Duration,
    /// Concurrent connections of the read-only API load test.
    #[arg(long, default_value_t = 16)]
    load_connections: u32,
    /// Folder of the release binaries calsync-devenv, mytimetable-sim and calsync-operator.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Folder for the results (`N<n>.json`, `N<n>.md`) and the logs of this run.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    // `cargo bench` passes --bench to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One thread: the child processes are spawned with PR_SET_PDEATHSIG, which fires when
    // the spawning thread exits, so they must be spawned from the thread that lives longest.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("failed to build the tokio runtime");
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(&cli) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Dropping the run future above stopped every process it started.
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Everything one run measured; written as `N<n>.json`.
#[derive(Serialize, Debug, Default)]
struct Results {
    n: usize,
    date: String,
    machine: Machine,
    settings: BTreeMap<&'static str, String>,
    load_average_start: String,
    load_average_after_converge: String,
    load_average_end: String,
    apply_seconds: f64,
    converge_seconds: f64,
    converge_resolution_seconds: f64,
    mytimetable_writes_needed: u64,
    lower_bound_seconds: f64,
    ready_timeline: Vec<(f64, usize, usize)>,
    mytimetable_converge: BTreeMap<String, u64>,
    mytimetable_steady: BTreeMap<String, u64>,
    kube_writes_converge: BTreeMap<String, f64>,
    kube_writes_steady: BTreeMap<String, f64>,
    bench_creates: u64,
    steady_seconds: f64,
    controller_peak_rss_kib: u64,
    controller_rss_after_converge_kib: u64,
    cpu_seconds_converge: BTreeMap<String, f64>,
    controller_cpu_seconds_total: f64,
    api_entries: usize,
    api_body_bytes: usize,
    api_requests_per_second: f64,
    api_p50: String,
    api_p99: String,
    api_errors: String,
}

#[derive(Serialize, Debug, Default)]
struct Machine {
    cpu_model: String,
    cores: usize,
    memory: String,
    kernel: String,
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    ensure!(cli.n > 0, "--n must be at least 1");
    std::fs::create_dir_all(&cli.out_dir)
        .with_context(|| format!("failed to create {}", cli.out_dir.display()))?;
    let logs = cli.out_dir.join(format!("N{}-logs", cli.n));
    std::fs::create_dir_all(&logs)?;
    let work = tempfile::tempdir().context("failed to create a temporary folder")?;
    let mut results = Results {
        n: cli.n,
        date: jiff::Timestamp::now().to_string(),
        machine: machine(),
        load_average_start: load_average(),
        ..Results::default()
    };

    // Phase 1: the control plane, the simulator and the controller, each ready.
    let kubeconfig = work.path().join("kubeconfig");
    let devenv = start_devenv(&cli.bin_dir, &kubeconfig, &logs)?;
    let kube = kube_client(&kubeconfig).await?;
    // A random token, only in a 0600 file: never an argument, a log line or a result.
    let token_file = work.path().join("token");
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(&token_file, token)?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    let (sim, sim_base) = start_simulator(cli, &token_file, &logs)?;
    let sim_root = sim_base
        .strip_suffix("/api/v0")
        .context("the simulator printed a base URL without /api/v0")?
        .to_string();
    create_namespace(&kube).await?;
    let api_port = free_port()?;
    let controller = start_controller(cli, &kubeconfig, &sim_base, &token_file, api_port, &logs)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let api_root = format!("http://127.0.0.1:{api_port}");
    wait_until_ready(&http, &api_root, controller.pid()).await?;
    results.settings = settings(cli);

    // Phase 2: create every resource and poll until all are Ready.
    let measured = [&controller, &sim, &devenv].map(|process| (process.name, process.pid()));
    let cpu_before = cpu_by_process(&measured);
    let sim_before = sim_requests(&http, &sim_root).await?;
    let kube_before = kube_writes(&kube).await?;
    let started = Instant::now();
    let created = create_resources(&kube, cli.n).await?;
    results.apply_seconds = started.elapsed().as_secs_f64();
    results.bench_creates = created;
    let (converge, resolution, timeline) = wait_all_ready(cli, &kube, started, &controller).await?;
    results.converge_seconds = converge.as_secs_f64();
    results.converge_resolution_seconds = resolution.as_secs_f64();
    results.ready_timeline = timeline;
    results.mytimetable_writes_needed = 2 * cli.n as u64;
    results.lower_bound_seconds = results.mytimetable_writes_needed as f64
        * cli.latency.as_secs_f64()
        / cli.max_concurrent_requests as f64;
    let sim_converged = sim_requests(&http, &sim_root).await?;
    let kube_converged = kube_writes(&kube).await?;
    results.mytimetable_converge = sim_diff(&sim_before, &sim_converged);
    results.kube_writes_converge = map_diff(&kube_before, &kube_converged);
    results.controller_rss_after_converge_kib = proc_status_kib(controller.pid(), "VmRSS")?;
    results.cpu_seconds_converge = map_diff(&cpu_before, &cpu_by_process(&measured));
    results.load_average_after_converge = load_average();
    save(
        &logs.join("controller-metrics-converged.txt"),
        &http,
        &api_root,
    )
    .await;
    eprintln!(
        "bench: N={} Ready after {:.1} s (lower bound {:.1} s)",
        cli.n, results.converge_seconds, results.lower_bound_seconds
    );

    // Phase 3: the steady-state window.
    eprintln!("bench: steady-state window of {} s", cli.steady.as_secs());
    let steady_started = Instant::now();
    while steady_started.elapsed() < cli.steady {
        let left = cli.steady.saturating_sub(steady_started.elapsed());
        tokio::time::sleep(left.min(STEADY_SAMPLE_INTERVAL)).await;
        // Reading the status also checks that the controller is still running.
        proc_status_kib(controller.pid(), "VmHWM")?;
    }
    results.steady_seconds = steady_started.elapsed().as_secs_f64();
    let sim_steady = sim_requests(&http, &sim_root).await?;
    let kube_steady = kube_writes(&kube).await?;
    results.mytimetable_steady = sim_diff(&sim_converged, &sim_steady);
    results.kube_writes_steady = map_diff(&kube_converged, &kube_steady);
    save(
        &logs.join("controller-metrics-steady.txt"),
        &http,
        &api_root,
    )
    .await;

    // Phase 4: the read-only API under load.
    let url = format!("{api_root}/api/v0/synchronizations");
    let body = http
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let listed: serde_json::Value = serde_json::from_slice(&body)?;
    results.api_entries = listed["synchronizations"].as_array().map_or(0, Vec::len);
    results.api_body_bytes = body.len();
    ensure!(
        results.api_entries == cli.n,
        "the read-only API lists {} synchronizations, expected {}",
        results.api_entries,
        cli.n
    );
    load_test(cli, &url, &logs, &mut results)?;

    // Phase 5: peak memory, then stop everything (the guards stop the processes).
    results.controller_peak_rss_kib = proc_status_kib(controller.pid(), "VmHWM")?;
    results.controller_cpu_seconds_total = cpu_seconds(controller.pid())?;
    results.load_average_end = load_average();
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(cli.out_dir.join(format!("N{}.json", cli.n)), json)?;
    let page = render(&results);
    std::fs::write(cli.out_dir.join(format!("N{}.md", cli.n)), &page)?;
    println!("{page}");
    Ok(())
}

// ---- processes ----

/// A child process that is sent SIGTERM, then killed after [`STOP_TIMEOUT`], when dropped.
struct Process {
    name: &'static str,
    child: Child,
}

impl Process {
    /// Spawns `command` with its standard error in `logs/<name>.log`, armed to receive
    /// SIGTERM when the benchmark dies without dropping it.
    fn spawn(name: &'static str, mut command: Command, logs: &Path) -> anyhow::Result<Process> {
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        command.stdin(Stdio::null()).stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {name}: {command:?}"))?;
        Ok(Process { name, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the first line of standard output within `timeout`.
    fn first_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let stdout = self
            .child
            .stdout
            .take()
            .with_context(|| format!("{} has no piped standard output", self.name))?;
        let (sender, receiver) = mpsc::channel();
        // The thread ends when the process closes its standard output.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line).map(|_| line);
            let _ = sender.send(read);
            // Drain the rest, so that the process does not block on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        match receiver.recv_timeout(timeout) {
            Ok(Ok(line)) if !line.is_empty() => Ok(line.trim().to_string()),
            Ok(Ok(_)) => bail!("{} exited before printing its first line", self.name),
            Ok(Err(error)) => Err(error).context(format!("failed to read from {}", self.name)),
            Err(_) => bail!("{} printed nothing within {timeout:?}", self.name),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "bench: {} did not stop after SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_devenv(bin_dir: &Path, kubeconfig: &Path, logs: &Path) -> anyhow::Result<Process> {
    let mut command = Command::new(bin_dir.join("calsync-devenv"));
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .stdout(Stdio::piped());
    let mut devenv = Process::spawn("calsync-devenv", command, logs)?;
    let line = devenv.first_line(DEVENV_START_TIMEOUT)?;
    ensure!(
        line == "ready",
        "calsync-devenv printed {line:?} instead of ready"
    );
    Ok(devenv)
}

fn start_simulator(cli: &Cli, token_file: &Path, logs: &Path) -> anyhow::Result<(Process, String)> {
    let mut command = Command::new(cli.bin_dir.join("mytimetable-sim"));
    command
        .args(["--listen", "127.0.0.1:0", "--token-file"])
        .arg(token_file)
        .arg("--latency")
        .arg(format!("{}ms", cli.latency.as_millis()))
        .stdout(Stdio::piped());
    let mut sim = Process::spawn("mytimetable-sim", command, logs)?;
    let base = sim.first_line(SIM_START_TIMEOUT)?;
    ensure!(
        base.starts_with("http://127.0.0.1:"),
        "the simulator printed {base:?} instead of its loopback base URL"
    );
    Ok((sim, base))
}

fn start_controller(
    cli: &Cli,
    kubeconfig: &Path,
    sim_base: &str,
    token_file: &Path,
    api_port: u16,
    logs: &Path,
) -> anyhow::Result<Process> {
    let mut command = Command::new(cli.bin_dir.join("calsync-operator"));
    command
        .arg("run")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--mytimetable-url", sim_base, "--token-file"])
        .arg(token_file)
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{api_port}"))
        // One replica outside a cluster: no Lease, so no Lease renewals among the writes.
        .args(["--leader-election", "false", "--namespaces", NAMESPACE])
        .arg("--max-concurrent-requests")
        .arg(cli.max_concurrent_requests.to_string())
        .arg("--requests-per-second")
        .arg(cli.requests_per_second.to_string())
        .arg("--max-concurrent-reconciles")
        .arg(cli.max_concurrent_reconciles.to_string())
        .args(["--shutdown-grace-period", CONTROLLER_SHUTDOWN_GRACE])
        .stdout(Stdio::null())
        // The environment may hold CALSYNC_ settings or RUST_LOG of a developer's shell.
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CALSYNC_") {
            command.env_remove(key);
        }
    }
    Process::spawn("calsync-operator", command, logs)
}

/// Picks a free loopback port by binding port 0 and releasing it.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_until_ready(
    http: &reqwest::Client,
    api_root: &str,
    controller_pid: u32,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONTROLLER_READY_TIMEOUT;
    loop {
        proc_status_kib(controller_pid, "VmRSS").context("the controller exited at start-up")?;
        if let Ok(response) = http.get(format!("{api_root}/readyz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the controller was not ready within {CONTROLLER_READY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---- Kubernetes ----

async fn kube_client(kubeconfig: &Path) -> anyhow::Result<Client> {
    calsync_operator::install_rustls_provider();
    let parsed = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn create_namespace(kube: &Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(NAMESPACE.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(kube.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

/// Creates user i and its synchronization for every i, [`CREATE_CONCURRENCY`] at a time,
/// and returns the number of create requests sent.
async fn create_resources(kube: &Client, n: usize) -> anyhow::Result<u64> {
    let users = Api::<CalendarUser>::namespaced(kube.clone(), NAMESPACE);
    let syncs = Api::<CalendarSync>::namespaced(kube.clone(), NAMESPACE);
    let params = PostParams::default();
    stream::iter(0..n)
        .map(|i| {
            let (users, syncs, params) = (&users, &syncs, &params);
            async move {
                let name = format!("student-{i:06}");
                let user = CalendarUser::new(
                    &name,
                    CalendarUserSpec {
                        username: format!("s{i:07}"),
                        deletion_policy: DeletionPolicy::default(),
                    },
                );
                let sync = CalendarSync::new(
                    &format!("{name}-{SYNC_TYPE}"),
                    CalendarSyncSpec {
                        user_ref: UserReference { name },
                        type_: SYNC_TYPE.to_string(),
                        smtp_address: None,
                        unlink_mode: UnlinkMode::default(),
                        deletion_policy: DeletionPolicy::default(),
                    },
                );
                users.create(params, &user).await?;
                syncs.create(params, &sync).await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .context("failed to create the benchmark resources")?;
    Ok(2 * n as u64)
}

/// Polls both kinds with a list from the watch cache until every resource is Ready for its
/// current generation. Returns the time from `started`, the poll's resolution (the longest
/// gap between two polls) and the Ready counts over time.
async fn wait_all_ready(
    cli: &Cli,
    kube: &Client,
    started: Instant,
    controller: &Process,
) -> anyhow::Result<(Duration, Duration, Vec<(f64, usize, usize)>)> {
    let users = Api::<CalendarUser>::namespaced(kube.clone(), NAMESPACE);
    let syncs = Api::<CalendarSync>::namespaced(kube.clone(), NAMESPACE);
    // resourceVersion=0: served from kube-apiserver's watch cache, not from etcd.
    let params = ListParams::default().match_any();
    let mut timeline = Vec::new();
    let mut resolution = Duration::ZERO;
    let mut last_poll = started;
    loop {
        ensure!(
            started.elapsed() < cli.converge_timeout,
            "not all resources were Ready within {:?}; last counts {:?}",
            cli.converge_timeout,
            timeline.last()
        );
        proc_status_kib(controller.pid(), "VmRSS").context("the controller exited")?;
        let ready_users = count_ready(&users, &params, |user| {
            user.status.as_ref().map(|s| s.conditions.as_slice())
        })
        .await?;
        let ready_syncs = count_ready(&syncs, &params, |sync| {
            sync.status.as_ref().map(|s| s.conditions.as_slice())
        })
        .await?;
        let now = Instant::now();
        // The first poll starts only after the last create, so its gap is not resolution.
        if !timeline.is_empty() {
            resolution = resolution.max(now - last_poll);
        }
        last_poll = now;
        let elapsed = now - started;
        timeline.push((
            (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            ready_users,
            ready_syncs,
        ));
        if ready_users == cli.n && ready_syncs == cli.n {
            return Ok((elapsed, resolution, timeline));
        }
        tokio::time::sleep(cli.poll_interval).await;
    }
}

/// Lists `api` and counts the objects that are Ready for their current generation.
async fn count_ready<K>(
    api: &Api<K>,
    params: &ListParams,
    conditions: impl Fn(&K) -> Option<&[Condition]>,
) -> kube::Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let listed = api.list(params).await?;
    Ok(listed
        .items
        .iter()
        .filter(|object| {
            conditions(object)
                .and_then(|conditions| find_condition(conditions, CONDITION_READY))
                .is_some_and(|ready| {
                    ready.status == "True" && ready.observed_generation == object.meta().generation
                })
        })
        .count())
}

/// Sums kube-apiserver's `apiserver_request_total` for write verbs by `VERB group/resource`.
async fn kube_writes(kube: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = kube
        .request_text(request)
        .await
        .context("failed to read kube-apiserver's /metrics")?;
    let mut writes = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|value| value.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let verb = label("verb");
        if !WRITE_VERBS.contains(&verb.as_str()) {
            continue;
        }
        let group = label("group");
        let mut resource = label("resource");
        let subresource = label("subresource");
        if !subresource.is_empty() {
            resource = format!("{resource}/{subresource}");
        }
        let mut key = if group.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {group}/{resource}")
        };
        // Rejected writes, such as a patch whose resourceVersion test failed, on a row of
        // their own.
        let code = label("code");
        if !code.starts_with('2') {
            key = format!("{key} (HTTP {code})");
        }
        *writes.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(writes)
}

fn map_diff(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(key, value)| (key.clone(), value - before.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, value)| *value > 0.0)
        .collect()
}

// ---- the simulator and the controller's HTTP endpoints ----

async fn sim_requests(http: &reqwest::Client, sim_root: &str) -> anyhow::Result<RequestReport> {
    Ok(http
        .get(format!("{sim_root}/_sim/requests"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

fn sim_diff(before: &RequestReport, after: &RequestReport) -> BTreeMap<String, u64> {
    after
        .by_endpoint
        .iter()
        .map(|(endpoint, count)| (endpoint.clone(), count - before.count(endpoint)))
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// Saves the controller's /metrics for reading where the time went; a failure only warns.
async fn save(path: &Path, http: &reqwest::Client, api_root: &str) {
    let text = match http.get(format!("{api_root}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(error) => format!("failed to read the controller's metrics: {error}"),
    };
    if let Err(error) = std::fs::write(path, text) {
        eprintln!("bench: failed to write {}: {error}", path.display());
    }
}

/// Runs wrk against `url` and records requests per second and latency percentiles.
fn load_test(cli: &Cli, url: &str, logs: &Path, results: &mut Results) -> anyhow::Result<()> {
    let mut command = Command::new("wrk");
    command
        .arg("--threads")
        .arg("2")
        .arg("--connections")
        .arg(cli.load_connections.to_string())
        .arg("--duration")
        .arg(format!("{}s", cli.load_duration.as_secs().max(1)))
        .args(["--timeout", "10s", "--latency", url])
        .stdout(Stdio::piped());
    let mut wrk = Process::spawn("wrk", command, logs)?;
    let mut stdout = wrk
        .child
        .stdout
        .take()
        .context("wrk has no standard output")?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        let _ = sender.send(text);
    });
    // wrk stops itself after --duration; the margin covers its start and the last timeouts.
    let text = receiver
        .recv_timeout(cli.load_duration + Duration::from_secs(30))
        .context("wrk did not finish in time")?;
    std::fs::write(logs.join("wrk.txt"), &text)?;
    let status = wrk.child.wait()?;
    ensure!(status.success(), "wrk failed with {status}: {text}");
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            results.api_requests_per_second = value.trim().parse()?;
        } else if let Some(value) = line.strip_prefix("50%") {
            results.api_p50 = value.trim().to_string();
        } else if let Some(value) = line.strip_prefix("99%") {
            results.api_p99 = value.trim().to_string();
        } else if line.starts_with("Non-2xx") || line.starts_with("Socket errors") {
            results.api_errors.push_str(line);
            results.api_errors.push(' ');
        }
    }
    ensure!(
        results.api_requests_per_second > 0.0 && !results.api_p99.is_empty(),
        "could not read wrk's output: {text}"
    );
    Ok(())
}

// ---- the machine and /proc ----

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_default()
    };
    Machine {
        cpu_model: field(&cpuinfo, "model name"),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory: field(&meminfo, "MemTotal"),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads a `kB` field of `/proc/PID/status`; fails when the process is gone.
fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    ensure!(!status.contains("State:\tZ"), "process {pid} has exited");
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .with_context(|| format!("/proc/{pid}/status has no {field}"))?;
    Ok(value.trim().trim_end_matches("kB").trim().parse()?)
}

/// User plus system CPU time of a process, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let (_, fields) = proc_stat(pid).with_context(|| format!("process {pid} is gone"))?;
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the state.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no memory preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_second)
}

/// Returns the command name and the fields after it (from the state on) of
/// `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(String, Vec<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, after) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    Some((name, after.split_whitespace().map(str::to_string).collect()))
}

/// CPU seconds of each named process and of each of its children (calsync-devenv's etcd and
/// kube-apiserver), by name.
fn cpu_by_process(processes: &[(&str, u32)]) -> BTreeMap<String, f64> {
    let mut cpu = BTreeMap::new();
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for (name, pid) in processes {
        cpu.insert(name.to_string(), cpu_seconds(*pid).unwrap_or(0.0));
        for child in &all {
            if let Some((child_name, fields)) = proc_stat(*child)
                // The parent pid is the second field after the command name.
                && fields.get(1).is_some_and(|parent| *parent == pid.to_string())
            {
                cpu.insert(child_name, cpu_seconds(*child).unwrap_or(0.0));
            }
        }
    }
    cpu
}

// ---- the report ----

fn settings(cli: &Cli) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("latency", format!("{} ms", cli.latency.as_millis())),
        (
            "max_concurrent_requests",
            cli.max_concurrent_requests.to_string(),
        ),
        ("requests_per_second", cli.requests_per_second.to_string()),
        (
            "max_concurrent_reconciles",
            cli.max_concurrent_reconciles.to_string(),
        ),
        ("steady_window", format!("{} s", cli.steady.as_secs())),
        (
            "load",
            format!(
                "wrk, 2 threads, {} connections, {} s",
                cli.load_connections,
                cli.load_duration.as_secs()
            ),
        ),
    ])
}

/// Renders one run as the Markdown section that docs/benchmarks.md quotes.
fn render(r: &Results) -> String {
    let mut page = String::new();
    let list_calls: u64 = r
        .mytimetable_converge
        .iter()
        .filter(|(endpoint, _)| endpoint.starts_with("GET "))
        .map(|(_, count)| count)
        .sum();
    let all_calls: u64 = r.mytimetable_converge.values().sum();
    let _ = writeln!(page, "### N = {}\n", r.n);
    let _ = writeln!(page, "Run {} with {:?}.", r.date, r.settings);
    let _ = writeln!(
        page,
        "Load average: {} at start, {} after converge, {} at the end.\n",
        r.load_average_start, r.load_average_after_converge, r.load_average_end
    );
    let _ = writeln!(page, "| figure | value |\n|---|---|");
    let _ = writeln!(
        page,
        "| creates sent by the benchmark | {} in {:.1} s |",
        r.bench_creates, r.apply_seconds
    );
    let _ = writeln!(
        page,
        "| converge (first create to all Ready) | {:.1} s (poll resolution {:.1} s) |",
        r.converge_seconds, r.converge_resolution_seconds
    );
    let _ = writeln!(
        page,
        "| lower bound ({} writes x latency / concurrency) | {:.1} s; ratio {:.2} |",
        r.mytimetable_writes_needed,
        r.lower_bound_seconds,
        r.converge_seconds / r.lower_bound_seconds
    );
    let _ = writeln!(
        page,
        "| MyTimetable list calls during converge | {list_calls} of {all_calls} ({:.2} %) |",
        100.0 * list_calls as f64 / all_calls.max(1) as f64
    );
    let _ = writeln!(
        page,
        "| controller peak RSS (VmHWM) | {:.1} MiB (RSS after converge {:.1} MiB) |",
        r.controller_peak_rss_kib as f64 / 1024.0,
        r.controller_rss_after_converge_kib as f64 / 1024.0
    );
    let cpu: Vec<String> = r
        .cpu_seconds_converge
        .iter()
        .map(|(name, seconds)| format!("{name} {seconds:.1} s"))
        .collect();
    let _ = writeln!(
        page,
        "| CPU time during converge | {} (controller {:.1} s in all) |",
        cpu.join(", "),
        r.controller_cpu_seconds_total
    );
    let _ = writeln!(
        page,
        "| read-only API, {} entries ({} bytes) | {:.0} requests/s, p50 {}, p99 {} {} |",
        r.api_entries,
        r.api_body_bytes,
        r.api_requests_per_second,
        r.api_p50,
        r.api_p99,
        r.api_errors
    );
    let _ = writeln!(page, "\nMyTimetable requests by endpoint:\n");
    counts_table(
        &mut page,
        "endpoint",
        &r.mytimetable_converge,
        &r.mytimetable_steady,
        r.steady_seconds,
    );
    let _ = writeln!(
        page,
        "\nKubernetes API writes by verb (`apiserver_request_total`):\n"
    );
    counts_table(
        &mut page,
        "verb and resource",
        &r.kube_writes_converge,
        &r.kube_writes_steady,
        r.steady_seconds,
    );
    let _ = writeln!(
        page,
        "\nThe converge column includes the benchmark's own {} creates (`POST` of \
         calendarusers and calendarsyncs); every other write is the controller's or \
         kube-apiserver's own.",
        r.bench_creates
    );
    // Up to 20 evenly spaced polls and the last one; the JSON file has every poll.
    let step = r.ready_timeline.len().div_ceil(20).max(1);
    let mut sampled: Vec<_> = r.ready_timeline.iter().step_by(step).collect();
    if let Some(last) = r.ready_timeline.last()
        && sampled.last() != Some(&last)
    {
        sampled.push(last);
    }
    let _ = writeln!(
        page,
        "\nReady counts over time (seconds, users, syncs): {sampled:?}"
    );
    page
}

/// Writes one row per key of either map: its count during converge and during the steady
/// state.
fn counts_table<V: Copy + Default + std::fmt::Display>(
    page: &mut String,
    first_column: &str,
    converge: &BTreeMap<String, V>,
    steady: &BTreeMap<String, V>,
    steady_seconds: f64,
) {
    let _ = writeln!(
        page,
        "| {first_column} | converge | steady ({steady_seconds:.0} s) |\n|---|---|---|"
    );
    let keys: std::collections::BTreeSet<&String> = converge.keys().chain(steady.keys()).collect();
    for key in keys {
        let count = |map: &BTreeMap<String, V>| map.get(key).copied().unwrap_or_default();
        let _ = writeln!(
            page,
            "| `{key}` | {} | {} |",
            count(converge),
            count(steady)
        );
    }
}
