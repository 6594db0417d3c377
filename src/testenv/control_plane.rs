//! Starting, sharing and stopping an etcd plus kube-apiserver pair.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};
use tempfile::TempDir;
use tower::layer::layer_fn;

use super::binaries::{self, SKIP_CONTROL_PLANE_ENV};
use super::pki::{ADMIN_USER, Pki};
use super::process::ManagedProcess;
use super::{Error, runtime};

/// How long kube-apiserver may take until `/readyz` returns `ok`. It usually takes 3 to 5
/// seconds, and the margin covers a 2-core machine that compiles Rust at the same time.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two `/readyz` probes.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Timeout of one `/readyz` probe, so that a hanging connection does not eat the whole wait.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an installed CRD may take to become Established (usually well under a second).
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);
/// Start-up attempts when a process loses a port race: free ports are picked by binding port
/// 0 and releasing it, so another process may take one before etcd or kube-apiserver binds it.
const PORT_ATTEMPTS: u32 = 3;

/// A running etcd and kube-apiserver on loopback ports, with the CRDs from `crds/` installed
/// and an admin kubeconfig.
pub struct ControlPlane {
    bin_dir: PathBuf,
    kubeconfig: PathBuf,
    server_url: String,
    state: Mutex<State>,
}

struct State {
    processes: Vec<ManagedProcess>,
    // Certificates, keys, the kubeconfig, etcd's data and both logs, removed on stop.
    dir: Option<TempDir>,
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// Returns the control plane shared by all tests of this test binary, starting it on
    /// first use.
    ///
    /// Blocks until the control plane is ready; safe to call from any test and any tokio
    /// runtime. Panics with the start-up error, which names the fix, when it cannot start,
    /// and also when `CALSYNC_SKIP_CONTROL_PLANE=1` is set, because a caller of this function
    /// cannot skip: tests that may be skipped call [`ControlPlane::shared_or_skip`].
    pub fn shared() -> &'static ControlPlane {
        if binaries::skip_requested() {
            panic!(
                "{SKIP_CONTROL_PLANE_ENV}=1 is set, but this test needs the control plane and calls ControlPlane::shared(), which cannot skip; unset {SKIP_CONTROL_PLANE_ENV} or call ControlPlane::shared_or_skip()"
            );
        }
        let shared = SHARED.get_or_init(|| {
            let started = ControlPlane::start().map_err(|error| format_error_chain(&error));
            if started.is_ok() {
                // SAFETY: registering a plain `extern "C"` function has no preconditions.
                unsafe { libc::atexit(stop_shared_at_exit) };
            }
            started
        });
        match shared {
            Ok(control_plane) => control_plane,
            Err(message) => panic!("the shared test control plane did not start: {message}"),
        }
    }

    /// Like [`ControlPlane::shared`], but returns `None` after printing that the test was
    /// skipped when a person set `CALSYNC_SKIP_CONTROL_PLANE=1`.
    pub fn shared_or_skip() -> Option<&'static ControlPlane> {
        if binaries::skip_requested() {
            eprintln!(
                "skipped: {SKIP_CONTROL_PLANE_ENV}=1 is set and this test needs a control plane"
            );
            return None;
        }
        Some(ControlPlane::shared())
    }

    /// Starts a private control plane with the CRDs from `crds/` installed, stopped when the
    /// returned value is dropped.
    ///
    /// Blocking; safe to call from any tokio runtime.
    pub fn start() -> Result<ControlPlane, Error> {
        ControlPlane::builder().start()
    }

    /// Returns a builder for a private control plane with other options than
    /// [`ControlPlane::start`], for example without the CRDs.
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder { install_crds: true }
    }

    /// Returns a new client authenticated as a cluster admin (`system:masters`).
    ///
    /// The client is served by the testenv background runtime, so it works from any tokio
    /// runtime. Panics when the kubeconfig cannot be turned into a client, which only happens
    /// when the control plane's files were removed.
    pub async fn client(&self) -> Client {
        let kubeconfig = self.kubeconfig.clone();
        let built = runtime::handle()
            .spawn(build_client(kubeconfig))
            .await
            .expect("building a client panicked");
        built.unwrap_or_else(|error| panic!("{}", format_error_chain(&error)))
    }

    /// Returns the path of an admin kubeconfig file, usable by kubectl, by
    /// `calsync-operator run --kubeconfig` and through `KUBECONFIG`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Returns a kubectl command that uses this control plane's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.bin_dir.join("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// Returns the folder with the kube-apiserver, kubectl and etcd binaries.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Returns the HTTPS address of kube-apiserver, for example `https://127.0.0.1:41234`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// Kills both processes and removes the temporary folder. Later calls do nothing.
    fn stop(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // kube-apiserver first, so that it does not log a burst of etcd connection errors.
        for process in state.processes.iter_mut().rev() {
            process.kill();
        }
        state.processes.clear();
        state.dir = None;
    }
}

/// Options of a private control plane; [`ControlPlaneBuilder::start`] starts it.
#[derive(Debug, Clone)]
pub struct ControlPlaneBuilder {
    install_crds: bool,
}

impl ControlPlaneBuilder {
    /// Sets whether the CRDs from `crds/` are installed (the default is true). A test that
    /// needs a cluster which never had them, such as a first install of the Helm chart, sets
    /// false instead of deleting them, because CRD deletion waits for the apiextensions
    /// finalizer to remove every stored object and can take long on a loaded machine.
    pub fn install_crds(mut self, install: bool) -> Self {
        self.install_crds = install;
        self
    }

    /// Starts the control plane, stopped when the returned value is dropped.
    ///
    /// Blocking; safe to call from any tokio runtime.
    pub fn start(self) -> Result<ControlPlane, Error> {
        let bin_dir = binaries::locate()?;
        let mut attempt = 1;
        loop {
            match start_in_new_dir(&bin_dir, &self) {
                Err(error) if attempt < PORT_ATTEMPTS && lost_port_race(&error) => attempt += 1,
                result => return result,
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The logs of kube-apiserver and etcd often explain the failure of the test.
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(dir) = state.dir.take() {
                eprintln!(
                    "testenv: kept the files and logs of the control plane of the failed test in {}",
                    dir.keep().display()
                );
            }
        }
        self.stop();
    }
}

extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(control_plane)) = SHARED.get() {
        control_plane.stop();
    }
}

/// Starts etcd and kube-apiserver with their files in a new temporary folder.
///
/// On failure both processes are killed and the folder is kept, so that the logs named in
/// the error can be read.
fn start_in_new_dir(bin_dir: &Path, options: &ControlPlaneBuilder) -> Result<ControlPlane, Error> {
    let dir = tempfile::Builder::new()
        .prefix("calsync-testenv-")
        .tempdir()
        .map_err(|source| Error::Io {
            action: "create a temporary folder in",
            path: std::env::temp_dir(),
            source,
        })?;
    let mut processes = Vec::new();
    match start_processes(bin_dir, dir.path(), options, &mut processes) {
        Ok((kubeconfig, server_url)) => Ok(ControlPlane {
            bin_dir: bin_dir.to_path_buf(),
            kubeconfig,
            server_url,
            state: Mutex::new(State {
                processes,
                dir: Some(dir),
            }),
        }),
        Err(error) => {
            for process in processes.iter_mut().rev() {
                process.kill();
            }
            let _logs_dir = dir.keep();
            Err(error)
        }
    }
}

/// Starts both processes into `processes`, waits until the API server is ready and
/// installs the CRDs unless `options` leaves them out. Returns the kubeconfig path and the
/// server URL.
fn start_processes(
    bin_dir: &Path,
    dir: &Path,
    options: &ControlPlaneBuilder,
    processes: &mut Vec<ManagedProcess>,
) -> Result<(PathBuf, String), Error> {
    let [etcd_client_port, etcd_peer_port, apiserver_port] = free_loopback_ports()?;
    let server_url = format!("https://127.0.0.1:{apiserver_port}");
    let pki = Pki::generate(dir)?;

    // Phase 1: etcd. kube-apiserver retries its etcd connection, so both start at once.
    let etcd_client_url = format!("http://127.0.0.1:{etcd_client_port}");
    let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
    let etcd_args = vec![
        "--name=testenv".to_string(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={etcd_client_url}"),
        format!("--advertise-client-urls={etcd_client_url}"),
        format!("--listen-peer-urls={etcd_peer_url}"),
        format!("--initial-advertise-peer-urls={etcd_peer_url}"),
        format!("--initial-cluster=testenv={etcd_peer_url}"),
        // The data is thrown away after the tests, so durability buys nothing and fsync
        // slows every write.
        "--unsafe-no-fsync=true".to_string(),
    ];
    processes.push(ManagedProcess::spawn("etcd", bin_dir, dir, etcd_args)?);

    // Phase 2: kube-apiserver, serving on loopback only, with a static admin token and RBAC
    // (members of system:masters pass every check).
    let apiserver_args = vec![
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={apiserver_port}"),
        format!("--etcd-servers={etcd_client_url}"),
        format!("--tls-cert-file={}", pki.serving_cert.display()),
        format!("--tls-private-key-file={}", pki.serving_key.display()),
        format!("--token-auth-file={}", pki.token_file.display()),
        "--authorization-mode=RBAC".to_string(),
        format!("--service-account-issuer={server_url}"),
        format!(
            "--service-account-key-file={}",
            pki.service_account_public_key.display()
        ),
        format!(
            "--service-account-signing-key-file={}",
            pki.service_account_signing_key.display()
        ),
        // No node or kubelet exists, so the endpoints of the `kubernetes` Service would only
        // point at this loopback address.
        "--endpoint-reconciler-type=none".to_string(),
        "--profiling=false".to_string(),
    ];
    processes.push(ManagedProcess::spawn(
        "kube-apiserver",
        bin_dir,
        dir,
        apiserver_args,
    )?);

    // Phase 3: the kubeconfig, then wait for /readyz.
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server_url, &pki)?;
    let client = runtime::block_on(build_client(kubeconfig.clone()))?;
    wait_until_ready(&client, processes)?;

    // Phase 4: the CRDs, read from crds/ so that the checked-in files are what the tests see.
    if options.install_crds {
        runtime::block_on(install_crds(client, crds_dir()))?;
    }
    Ok((kubeconfig, server_url))
}

/// Picks three distinct free TCP ports on 127.0.0.1.
fn free_loopback_ports() -> Result<[u16; 3], Error> {
    let bind = || {
        TcpListener::bind(("127.0.0.1", 0)).map_err(|source| Error::Io {
            action: "bind a free port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })
    };
    // All three listeners stay open until every port is chosen, so no port repeats.
    let listeners = [bind()?, bind()?, bind()?];
    let mut ports = [0; 3];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(|source| Error::Io {
                action: "read the address of a port on",
                path: PathBuf::from("127.0.0.1"),
                source,
            })?
            .port();
    }
    Ok(ports)
}

fn lost_port_race(error: &Error) -> bool {
    matches!(error, Error::Exited { log_tail, .. } if log_tail.contains("address already in use"))
}

fn write_kubeconfig(path: &Path, server_url: &str, pki: &Pki) -> Result<(), Error> {
    let contents = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: calsync-testenv
  cluster:
    server: {server_url}
    certificate-authority: {ca}
users:
- name: {ADMIN_USER}
  user:
    token: {token}
contexts:
- name: calsync-testenv
  context:
    cluster: calsync-testenv
    user: {ADMIN_USER}
    namespace: default
current-context: calsync-testenv
",
        ca = pki.ca_cert.display(),
        token = pki.admin_token,
    );
    std::fs::write(path, contents).map_err(|source| Error::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

async fn build_client(kubeconfig: PathBuf) -> Result<Client, Error> {
    crate::install_rustls_provider();
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Client {
        kubeconfig: kubeconfig.clone(),
        source,
    };
    let parsed = Kubeconfig::read_from(&kubeconfig).map_err(|error| failed(error.into()))?;
    let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .map_err(|error| failed(error.into()))?;
    let builder = ClientBuilder::try_from(config).map_err(|error| failed(error.into()))?;
    Ok(builder
        .with_layer(&layer_fn(runtime::SpawnOnBackground::new))
        .build())
}

/// Polls `/readyz` until it returns `ok`, failing early when a process exits.
fn wait_until_ready(client: &Client, processes: &mut [ManagedProcess]) -> Result<(), Error> {
    let started = Instant::now();
    let mut last_answer;
    loop {
        for process in processes.iter_mut() {
            process.check_running()?;
        }

        let probe_client = client.clone();
        let answer = runtime::block_on(async move {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a GET request without headers is valid");
            tokio::time::timeout(READY_PROBE_TIMEOUT, probe_client.request_text(request)).await
        });
        match answer {
            Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
            Ok(Ok(body)) => last_answer = body,
            Ok(Err(error)) => last_answer = error.to_string(),
            Err(_elapsed) => last_answer = format!("no answer within {READY_PROBE_TIMEOUT:?}"),
        }

        if started.elapsed() > READY_TIMEOUT {
            let log_of = |name: &str| {
                processes
                    .iter()
                    .find(|process| process.name == name)
                    .map(|process| process.log.clone())
                    .unwrap_or_default()
            };
            return Err(Error::NotReady {
                waited: READY_TIMEOUT,
                last_answer,
                apiserver_log: log_of("kube-apiserver"),
                etcd_log: log_of("etcd"),
            });
        }
        std::thread::sleep(READY_POLL_INTERVAL);
    }
}

/// The folder with the generated CRD files of this repository.
fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

/// Creates every CRD in `dir` and waits until each is Established.
async fn install_crds(client: Client, dir: PathBuf) -> Result<(), Error> {
    let failed = |file: &Path, reason: String| Error::InstallCrd {
        file: file.to_path_buf(),
        reason,
    };
    let entries = std::fs::read_dir(&dir).map_err(|error| failed(&dir, error.to_string()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "yaml")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(failed(&dir, "the folder holds no .yaml file".to_string()));
    }

    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut names = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).map_err(|error| failed(file, error.to_string()))?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).map_err(|error| failed(file, error.to_string()))?;
        api.create(&PostParams::default(), &crd)
            .await
            .map_err(|error| failed(file, format!("the API server rejected it: {error}")))?;
        names.push((file, crd.name_any()));
    }

    for (file, name) in names {
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(CRD_ESTABLISHED_TIMEOUT, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(failed(file, error.to_string())),
            Err(_elapsed) => {
                return Err(failed(
                    file,
                    format!("it was not Established after {CRD_ESTABLISHED_TIMEOUT:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// Formats an error with its sources, one per `: `, for a panic message.
fn format_error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::super::process::log_tail;
    use super::*;

    #[test]
    fn lost_port_race_matches_only_address_in_use() {
        let exited = |log_tail: &str| Error::Exited {
            process: "etcd",
            status: std::os::unix::process::ExitStatusExt::from_raw(256),
            log: PathBuf::from("etcd.log"),
            log_tail: log_tail.to_string(),
        };
        assert!(lost_port_race(&exited(
            "listen tcp 127.0.0.1:2379: bind: address already in use"
        )));
        assert!(!lost_port_race(&exited("permission denied")));
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: Vec<String> = (1..=30).map(|n| format!("line {n}")).collect();
        std::fs::write(&path, text.join("\n")).unwrap();
        let tail = log_tail(&path);
        assert!(tail.starts_with("line 11\n"), "{tail}");
        assert!(tail.ends_with("line 30"), "{tail}");
    }
}
