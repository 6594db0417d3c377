//! The `mytimetable-sim` program: flags, the printed base URL, and a clean stop on SIGINT
//! and SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_mytimetable-sim");

struct Running {
    child: Child,
    base_url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only reached when a test failed before stopping the program itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Starts the program and reads the base URL it prints once it listens.
fn start(args: &[&str]) -> Running {
    let mut child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the simulator binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base_url = line.trim().to_owned();
    assert!(
        base_url.starts_with("http://127.0.0.1:") && base_url.ends_with("/api/v0"),
        "unexpected first line {base_url:?}"
    );
    Running { child, base_url }
}

fn signal(running: &Running, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

// Waits up to 10 s for the program to exit and returns its exit code and standard error.
fn wait_for_exit(mut running: Running) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            let mut stderr = String::new();
            running
                .child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.code(), stderr);
        }
        assert!(Instant::now() < deadline, "the simulator did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get_status(url: &str, token: &str) -> u16 {
    calsync_operator::install_rustls_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        reqwest::Client::new()
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

    signal(&running, "TERM");
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

    signal(&running, "INT");

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

    signal(&running, "TERM");
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

    signal(&running, "TERM");
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
        let output = Command::new(BINARY)
            .args(listen)
            .args(args)
            .env_remove("MYTIMETABLE_SIM_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    let both = Command::new(BINARY)
        .args(["--token", "t", "--token-file", "/dev/null"])
        .output()
        .unwrap();
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
}

#[test]
fn prints_version() {
    let output = Command::new(BINARY).arg("--version").output().unwrap();

    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("mytimetable-sim {}", env!("CARGO_PKG_VERSION"))
    );
}
