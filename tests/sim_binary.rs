//! The `mytimetable-sim` program: flags, the printed base URL, and a clean stop on SIGINT
//! and SIGTERM.
//!
//! Every wait on the program is bounded: a program that hangs is killed, and the test fails
//! with what it printed.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use calsync_operator::testenv::{BoundedOutput, first_line_within, wait_with_output_within};

const BINARY: &str = env!("CARGO_BIN_EXE_mytimetable-sim");
const PROGRAM: &str = "mytimetable-sim";
/// How long the program may take to print its base URL, to exit after a signal, or to fail
/// on a bad flag. Each takes milliseconds; the margin covers a loaded 2-core machine.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

struct Running {
    // None once `wait_for_exit` took the child.
    child: Option<Child>,
    base_url: String,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("the simulator runs").id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only reached with a child when a test failed before stopping the program itself.
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// Starts the program and reads the base URL it prints once it listens.
fn start(args: &[&str]) -> Running {
    let mut child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the simulator binary starts");
    let base_url = first_line_within(&mut child, PROGRAM, WAIT_LIMIT)
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(
        base_url.starts_with("http://127.0.0.1:") && base_url.ends_with("/api/v0"),
        "unexpected first line {base_url:?}"
    );
    Running {
        child: Some(child),
        base_url,
    }
}

fn signal(running: &Running, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(running.pid()).expect("pid fits pid_t");
    // SAFETY: kill has no memory effects; the pid is this test's own child, not yet reaped.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        result,
        0,
        "signal {signal} failed: {}",
        std::io::Error::last_os_error()
    );
}

// Waits for the program to exit and returns its exit code and standard error. A program
// that does not exit within WAIT_LIMIT is killed and fails the test with its output.
fn wait_for_exit(mut running: Running) -> (Option<i32>, String) {
    let child = running.child.take().expect("the simulator runs");
    let output = wait_with_output_within(child, PROGRAM, WAIT_LIMIT)
        .unwrap_or_else(|error| panic!("the simulator did not stop: {error}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// Runs a command to its end, killing it and failing the test with its output after
// WAIT_LIMIT.
fn run(command: &mut Command) -> Output {
    command
        .output_within(WAIT_LIMIT)
        .unwrap_or_else(|error| panic!("{error}"))
}

fn get_status(url: &str, token: &str) -> u16 {
    calsync_operator::install_rustls_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(WAIT_LIMIT)
            .build()
            .unwrap()
            .get(url)
            .header("apiToken", token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

fn token_file(token: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{token}\n")).unwrap();
    file
}

#[test]
fn serves_and_stops_on_sigterm() {
    let token = "binary-token-sigterm-5f2c";
    let file = token_file(token);
    let running = start(&["--token-file", file.path().to_str().unwrap()]);

    assert_eq!(
        get_status(&format!("{}/users", running.base_url), token),
        200
    );
    assert_eq!(
        get_status(&format!("{}/users", running.base_url), "wrong"),
        401
    );

    signal(&running, libc::SIGTERM);
    let (code, stderr) = wait_for_exit(running);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("MyTimetable simulator stopped"), "{stderr}");
    assert!(
        !stderr.contains(token),
        "the token appears in the log output"
    );
}

#[test]
fn stops_on_sigint() {
    let running = start(&["--token", "binary-token-sigint"]);

    signal(&running, libc::SIGINT);

    let (code, stderr) = wait_for_exit(running);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn fault_flags_take_effect() {
    let token = "binary-token-faults";
    let running = start(&["--token", token, "--error-rate", "1"]);

    assert_eq!(
        get_status(&format!("{}/users", running.base_url), token),
        500
    );

    signal(&running, libc::SIGTERM);
    wait_for_exit(running);
}

#[test]
fn later_version_flag_serves_user_lookup() {
    let token = "binary-token-later";
    let running = start(&["--token", token, "--later-version"]);

    assert_eq!(
        get_status(&format!("{}/users/nobody", running.base_url), token),
        404
    );

    signal(&running, libc::SIGTERM);
    wait_for_exit(running);
}

#[test]
fn bad_flags_fail_with_clear_message() {
    let folder = tempfile::tempdir().unwrap();
    let missing = folder.path().join("absent-token");
    let empty = folder.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&[], "missing token"),
        (
            &["--token", "t", "--error-rate", "2"],
            "must be from 0.0 to 1.0",
        ),
        (&["--token", "t", "--slow-rate", "x"], "invalid fraction"),
        (
            &["--token", "t", "--latency", "soon"],
            "invalid duration \"soon\"",
        ),
        (&["--token", "t", "--latency=-1s"], "must not be negative"),
        (
            &["--token", "t", "--listen", "localhost"],
            "invalid socket address",
        ),
        (
            &["--token-file", missing.to_str().unwrap()],
            "failed to read the token file",
        ),
        (
            &["--token-file", empty.to_str().unwrap()],
            "the token is empty",
        ),
    ];
    for (args, expected) in cases {
        // A free port, so that a case that wrongly succeeds cannot collide with anything.
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        // A case that wrongly succeeds keeps serving; the bounded wait then kills it and
        // fails the test with its output instead of hanging.
        let output = run(Command::new(BINARY)
            .args(listen)
            .args(args)
            .env_remove("MYTIMETABLE_SIM_TOKEN"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    let both = run(Command::new(BINARY).args(["--token", "t", "--token-file", "/dev/null"]));
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
}

#[test]
fn prints_version() {
    let output = run(Command::new(BINARY).arg("--version"));

    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("mytimetable-sim {}", env!("CARGO_PKG_VERSION"))
    );
}
