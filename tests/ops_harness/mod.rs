//! The fixture of the operations tests: the real `calsync-operator run` binary against the
//! shared control plane and a simulator, requests to its HTTP server, its Lease, and a parser
//! of the Prometheus text format.

#![allow(dead_code)]

#[path = "../controller_harness/mod.rs"]
mod controller_harness;

pub use controller_harness::*;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calsync_operator::sim::FaultRule;
use calsync_operator::testenv::ControlPlane;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

const BINARY: &str = env!("CARGO_BIN_EXE_calsync-operator");

/// A `calsync-operator run` process with JSON logs and its HTTP server on a free loopback
/// port. Killed when dropped, so that a failed test leaves no process behind.
pub struct Operator {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    // How many of the two output streams reached their end.
    ended_streams: Arc<AtomicUsize>,
    address: SocketAddr,
    http: reqwest::Client,
}

impl Operator {
    /// Starts the binary against `harness`'s simulator and namespaces with `flags` added,
    /// and waits until it serves HTTP. `name` becomes `POD_NAME`, so it starts the Lease's
    /// holder identity and is the `reportingInstance` of its events.
    pub async fn start(harness: &Harness, name: &str, flags: &[String]) -> Operator {
        Operator::start_against(harness, harness.sim.base_url().as_ref(), name, flags).await
    }

    /// Starts the binary like [`Operator::start`], against the simulator at `base_url`.
    pub async fn start_against(
        harness: &Harness,
        base_url: &str,
        name: &str,
        flags: &[String],
    ) -> Operator {
        let mut child = Operator::command(harness, base_url, name, flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("calsync-operator starts");

        let lines = Arc::new(Mutex::new(Vec::new()));
        let ended_streams = Arc::new(AtomicUsize::new(0));
        let stdout = child.stdout.take().expect("stdout");
        collect_lines(stdout, lines.clone(), ended_streams.clone());
        let stderr = child.stderr.take().expect("stderr");
        collect_lines(stderr, lines.clone(), ended_streams.clone());
        let address = wait_until(&format!("{name} to serve HTTP"), || {
            let lines = lines.clone();
            let exited = child.try_wait().ok().flatten();
            async move {
                let lines = lines.lock().unwrap();
                let address = lines.iter().find_map(|line| serving_address(line));
                let seen = format!("exit {exited:?}, output:\n{}", lines.join("\n"));
                (address, seen)
            }
        })
        .await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("HTTP client");
        Operator {
            name: name.to_string(),
            child,
            lines,
            ended_streams,
            address,
            http,
        }
    }

    /// Returns the command line of [`Operator::start_against`]: this test's namespaces and
    /// kubeconfig, JSON logs, a free loopback port, short timeouts, and `flags`, which
    /// replace the defaults they name.
    pub fn command(harness: &Harness, base_url: &str, name: &str, flags: &[String]) -> Command {
        let namespaces: Vec<&str> = harness.namespaces.iter().map(|n| n.name()).collect();
        let kubeconfig = ControlPlane::shared().kubeconfig().display().to_string();
        let defaults = [
            format!("--mytimetable-url={base_url}"),
            format!("--token-file={}", harness.token_path().display()),
            format!("--namespaces={}", namespaces.join(",")),
            format!("--kubeconfig={kubeconfig}"),
            "--http-listen=127.0.0.1:0".to_string(),
            "--log-format=json".to_string(),
            "--resync-interval=5s".to_string(),
            "--request-timeout=2s".to_string(),
            "--requests-per-second=200".to_string(),
        ];
        // clap rejects a flag given twice, so a flag in `flags` replaces its default.
        let flag_name = |flag: &str| flag.split('=').next().unwrap_or_default().to_string();
        let overridden: Vec<String> = flags.iter().map(|flag| flag_name(flag)).collect();
        let kept = defaults
            .into_iter()
            .filter(|flag| !overridden.contains(&flag_name(flag)));
        let mut command = Command::new(BINARY);
        command
            .arg("run")
            .args(kept)
            .args(flags)
            .env("POD_NAME", name)
            // The process must neither take the test's log filter nor believe it runs in a
            // pod, which would turn leader election on by default.
            .env_remove("RUST_LOG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null());
        command
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Sends a GET request, failing the test when it cannot be sent.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {path} on {} failed: {error}", self.name))
    }

    /// Returns the status and body of a GET request.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.text().await.expect("response body"))
    }

    /// Scrapes `/metrics` and parses it, failing the test on a malformed line.
    pub async fn metrics(&self) -> Metrics {
        let (status, text) = self.get_text("/metrics").await;
        assert_eq!(status, 200, "GET /metrics on {}: {text}", self.name);
        Metrics::parse(&text).unwrap_or_else(|error| panic!("{error} in\n{text}"))
    }

    /// Returns every line the process wrote so far, standard output and error interleaved.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGINT, as Ctrl-C in a terminal would.
    pub fn signal_interrupt(&self) {
        self.signal(libc::SIGINT);
    }

    /// Sends SIGKILL, as a node failure would.
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill has no memory effects; the pid is this test's own child.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "signalling {} failed", self.name);
    }

    /// Waits for the process to exit and for its last output lines to be collected, failing
    /// the test with its output when either does not happen within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("polling the child") {
                break status;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} did not exit within {limit:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The reader threads may still hold the last lines, which tests look for; both
        // streams end once the exited process's pipes are drained.
        while self.ended_streams.load(Ordering::Acquire) < 2 {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "the output streams of {} were still open {limit:?} after the wait for its exit began; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        status
    }

    /// Fails the test when the token appears in the output.
    pub fn assert_output_hides(&self, secret: &str) {
        let output = self.output();
        assert!(!output.is_empty(), "{} wrote no output", self.name);
        assert!(
            !output.contains(secret),
            "the token appears in the output of {}",
            self.name
        );
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // Only reached with a running process when a test failed before stopping it.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("output of {}:\n{}", self.name, self.output());
        }
    }
}

// Appends each line of `stream` to `lines`, and counts `ended` up once the stream ended.
fn collect_lines(
    stream: impl Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    ended: Arc<AtomicUsize>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
        ended.fetch_add(1, Ordering::Release);
    });
}

// The address of the JSON log line `Serving HTTP`.
fn serving_address(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value["message"] != "Serving HTTP" {
        return None;
    }
    value["address"].as_str()?.parse().ok()
}

/// Returns a fault rule that hits every request to `endpoint`, such as
/// `PUT /users/{username}`.
pub fn every_request_to(endpoint: &str) -> FaultRule {
    FaultRule {
        rate: 1.0,
        endpoint: Some(endpoint.to_string()),
        ..FaultRule::default()
    }
}

/// Returns the flags that turn leader election on for a Lease named after the test's
/// namespace, with short durations so that takeovers happen within seconds.
pub fn election_flags(harness: &Harness) -> Vec<String> {
    vec![
        "--leader-election=true".to_string(),
        format!("--lease-name={}", lease_name(harness)),
        format!("--lease-namespace={}", harness.ns()),
        "--lease-duration=6s".to_string(),
        "--lease-renew-deadline=4s".to_string(),
        "--lease-retry-period=1s".to_string(),
    ]
}

pub fn lease_name(harness: &Harness) -> String {
    format!("calsync-{}", harness.ns())
}

/// Returns the Lease's holder, None when the Lease does not exist or has no holder.
pub async fn lease_holder(harness: &Harness) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(harness.client.clone(), harness.ns());
    leases
        .get_opt(&lease_name(harness))
        .await
        .expect("reading the Lease")
        .and_then(|lease| lease.spec)
        .and_then(|spec| spec.holder_identity)
}

/// Waits until the holder identity of the Lease starts with `prefix` (a pod name).
pub async fn wait_for_holder(harness: &Harness, prefix: &str) -> String {
    wait_until(&format!("{prefix} to hold the Lease"), || async {
        let holder = lease_holder(harness).await;
        let found = holder
            .as_deref()
            .filter(|holder| holder.starts_with(&format!("{prefix}_")))
            .map(str::to_string);
        (found, format!("holder {holder:?}"))
    })
    .await
}

/// One sample of a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape in the Prometheus text format.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// The metric families and their types, from the `# TYPE` lines.
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses the text format. Every sample must belong to a family that a `# TYPE` line
    /// declared, and the text must end with `# EOF`.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        let mut ended = false;
        for line in text.lines() {
            if ended {
                return Err(format!("line after # EOF: {line:?}"));
            }
            if line == "# EOF" {
                ended = true;
                continue;
            }
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let (family, kind) = declaration
                    .split_once(' ')
                    .ok_or_else(|| format!("invalid TYPE line {line:?}"))?;
                types.insert(family.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let sample = parse_sample(line)?;
            let declared = types.keys().any(|family| {
                ["", "_total", "_bucket", "_sum", "_count", "_created"]
                    .iter()
                    .any(|suffix| sample.name == format!("{family}{suffix}"))
            });
            if !declared {
                return Err(format!("sample {:?} of an undeclared family", sample.name));
            }
            samples.push(sample);
        }
        if !ended {
            return Err("missing # EOF".to_string());
        }
        Ok(Metrics { samples, types })
    }

    /// Returns the value of the sample with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let expected: BTreeMap<String, String> = labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|sample| sample.name == name && sample.labels == expected)
            .map(|sample| sample.value)
    }

    /// Returns the value, failing the test with the family's samples when it is missing.
    pub fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| {
            let family: Vec<&Sample> = self
                .samples
                .iter()
                .filter(|sample| sample.name == name)
                .collect();
            panic!("no sample {name}{labels:?}; samples of that name: {family:?}")
        })
    }
}

/// Parses `name{key="value",...} value` or `name value`.
pub fn parse_sample(line: &str) -> Result<Sample, String> {
    let invalid = |reason: &str| format!("invalid sample line {line:?}: {reason}");
    let name_end = line.find(['{', ' ']).ok_or_else(|| invalid("no value"))?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = inner
                .split_once("=\"")
                .ok_or_else(|| invalid("label without =\""))?;
            let mut value = String::new();
            let mut chars = after_key.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => return Err(invalid("escape at end")),
                    },
                    Some((index, '"')) => break index,
                    Some((_, other)) => value.push(other),
                    None => return Err(invalid("unterminated label value")),
                }
            };
            labels.insert(key.to_string(), value);
            inner = &after_key[end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value_text = rest
        .trim()
        .split(' ')
        .next()
        .ok_or_else(|| invalid("no value"))?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        text => text.parse().map_err(|_| invalid("value is not a number"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}
