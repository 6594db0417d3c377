//! Child processes of tests with a deadline: a program that hangs is killed, and the test
//! fails with what the program printed instead of hanging until the CI job times out.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Error;

/// Pause between two checks whether a child exited.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long the output pipes may stay open after the child exited. A process closes its
/// pipes when it exits, so only a grandchild that inherited them keeps them open longer.
const PIPE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long a test may wait for a kubectl, helm or similar command. They take seconds, and
/// the margin covers a loaded 2-core machine and a `kubectl wait --timeout=90s`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// [`Command::output`] with a deadline.
pub trait BoundedOutput {
    /// Runs the command to completion like [`Command::output`], with standard input closed
    /// and both output streams captured, but kills it when it has not exited within
    /// `timeout`.
    ///
    /// Returns [`Error::TimedOut`] with everything the program printed until then.
    fn output_within(&mut self, timeout: Duration) -> Result<Output, Error>;
}

impl BoundedOutput for Command {
    fn output_within(&mut self, timeout: Duration) -> Result<Output, Error> {
        let program = program_name(self.get_program());
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Io {
                action: "run",
                path: program.clone().into(),
                source,
            })?;
        wait_with_output_within(child, &program, timeout)
    }
}

/// Waits for `child` like [`Child::wait_with_output`], reading its piped output streams
/// while it runs, but kills it when it has not exited within `timeout`.
///
/// `program` names the child in the error. Returns [`Error::TimedOut`] with everything the
/// program printed until then. A stream that is not piped yields no bytes.
pub fn wait_with_output_within(
    mut child: Child,
    program: &str,
    timeout: Duration,
) -> Result<Output, Error> {
    let deadline = Instant::now() + timeout;
    let stdout = Capture::start(child.stdout.take());
    let stderr = Capture::start(child.stderr.take());
    loop {
        let exited = child.try_wait().map_err(|source| Error::Io {
            action: "wait for",
            path: program.into(),
            source,
        })?;
        if let Some(status) = exited {
            let pipes_deadline = deadline.max(Instant::now() + PIPE_CLOSE_GRACE);
            return Ok(Output {
                status,
                stdout: stdout.finish(pipes_deadline),
                stderr: stderr.finish(pipes_deadline),
            });
        }
        if Instant::now() >= deadline {
            kill(&mut child);
            let pipes_deadline = Instant::now() + PIPE_CLOSE_GRACE;
            return Err(Error::TimedOut {
                program: program.to_string(),
                timeout,
                stdout: lossy(stdout.finish(pipes_deadline)),
                stderr: lossy(stderr.finish(pipes_deadline)),
            });
        }
        std::thread::sleep(EXIT_POLL_INTERVAL);
    }
}

/// Reads the first line of `child`'s piped standard output, without its line ending.
///
/// The rest of the output is read and discarded in the background, so that the child never
/// blocks on a full pipe or fails writing to a closed one. When no line arrives within
/// `timeout`, or the output ends first, the child is killed and [`Error::NoFirstLine`] holds
/// its exit status and standard error, if that was piped. Panics when standard output was
/// not piped, which is a mistake in the test.
pub fn first_line_within(
    child: &mut Child,
    program: &str,
    timeout: Duration,
) -> Result<String, Error> {
    let stdout = child
        .stdout
        .take()
        .expect("first_line_within needs a child whose standard output is piped");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        // The receiver is gone when the wait timed out; the line is then of no use.
        let _ = sender.send(read.map(|_| line));
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });

    let failure = match receiver.recv_timeout(timeout) {
        Ok(Ok(line)) if line.ends_with('\n') => {
            return Ok(line.trim_end_matches(['\r', '\n']).to_string());
        }
        Ok(Ok(line)) if line.is_empty() => "its standard output ended".to_string(),
        Ok(Ok(line)) => format!("its standard output ended after {line:?}"),
        Ok(Err(error)) => format!("reading its standard output failed: {error}"),
        Err(_) => format!("no line arrived within {timeout:?}"),
    };
    let stderr = Capture::start(child.stderr.take());
    kill(child);
    let status = match child.try_wait() {
        Ok(Some(status)) => status.to_string(),
        Ok(None) => "still running".to_string(),
        Err(error) => format!("unknown: {error}"),
    };
    Err(Error::NoFirstLine {
        program: program.to_string(),
        failure,
        status,
        stderr: lossy(stderr.finish(Instant::now() + PIPE_CLOSE_GRACE)),
    })
}

/// The bytes of one output stream, read by a background thread as they arrive, so that they
/// are available also when the stream never ends.
struct Capture {
    bytes: Arc<Mutex<Vec<u8>>>,
    ended: mpsc::Receiver<()>,
}

impl Capture {
    fn start(stream: Option<impl Read + Send + 'static>) -> Capture {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (sender, ended) = mpsc::channel();
        if let Some(mut stream) = stream {
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut buffer = [0; 8192];
                // A read error ends the stream like its end does: nothing more can arrive.
                while let Ok(count @ 1..) = stream.read(&mut buffer) {
                    bytes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend_from_slice(&buffer[..count]);
                }
                let _ = sender.send(());
            });
        }
        // Without a stream the sender is dropped here, so `finish` returns at once.
        Capture { bytes, ended }
    }

    /// Waits until the stream ended or `deadline` passed, and returns what was read.
    fn finish(self, deadline: Instant) -> Vec<u8> {
        let _ = self
            .ended
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        std::mem::take(&mut *self.bytes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn kill(child: &mut Child) {
    // An error means the child already exited, which is the state asked for.
    let _ = child.kill();
    let _ = child.wait();
}

fn program_name(program: &std::ffi::OsStr) -> String {
    Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned()
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn output_within_returns_output_of_exited_command() {
        let output = shell("echo out; echo err >&2; exit 3")
            .output_within(Duration::from_secs(30))
            .unwrap();
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
    }

    #[test]
    fn output_within_kills_hanging_command() {
        let error = shell("echo started; echo waiting >&2; exec sleep 600")
            .output_within(Duration::from_millis(500))
            .unwrap_err();
        match error {
            Error::TimedOut {
                program,
                stdout,
                stderr,
                ..
            } => {
                assert_eq!(program, "sh");
                assert_eq!(stdout, "started\n");
                assert_eq!(stderr, "waiting\n");
            }
            other => panic!("expected TimedOut, got {other}"),
        }
    }

    #[test]
    fn first_line_within_returns_line_without_ending() {
        let mut child = shell("echo first; echo second")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = first_line_within(&mut child, "sh", Duration::from_secs(30)).unwrap();
        assert_eq!(line, "first");
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn first_line_within_reports_early_exit() {
        let mut child = shell("echo 'bad flag' >&2; exit 2")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let error = first_line_within(&mut child, "sh", Duration::from_secs(30)).unwrap_err();
        match error {
            Error::NoFirstLine {
                failure,
                status,
                stderr,
                ..
            } => {
                assert_eq!(failure, "its standard output ended");
                assert!(status.contains('2'), "{status}");
                assert_eq!(stderr, "bad flag\n");
            }
            other => panic!("expected NoFirstLine, got {other}"),
        }
    }

    #[test]
    fn first_line_within_kills_silent_child() {
        let mut child = shell("exec sleep 600")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let error = first_line_within(&mut child, "sh", Duration::from_millis(500)).unwrap_err();
        assert!(
            matches!(&error, Error::NoFirstLine { failure, .. } if failure.starts_with("no line arrived")),
            "{error}"
        );
        assert!(child.try_wait().unwrap().is_some(), "the child still runs");
    }
}
