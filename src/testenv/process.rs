//! etcd and kube-apiserver child processes: spawned so that they die with the test process,
//! with their output captured in log files.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::{Error, runtime};

/// Number of log lines that a start-up error quotes.
const LOG_TAIL_LINES: usize = 20;

/// A running child process and the file its standard output and error go to.
pub(super) struct ManagedProcess {
    pub name: &'static str,
    pub log: PathBuf,
    child: Child,
}

impl ManagedProcess {
    /// Starts the binary `name` from `bin_dir` with `args`, sending its output to
    /// `log_dir/<name>.log`.
    ///
    /// The process is spawned from the background testenv thread with `PR_SET_PDEATHSIG`
    /// set to SIGKILL. The kernel sends that signal when the spawning thread exits, and that
    /// thread lives until the process exits, so the child cannot outlive the tests even when
    /// they abort.
    pub fn spawn(
        name: &'static str,
        bin_dir: &Path,
        log_dir: &Path,
        args: Vec<String>,
    ) -> Result<ManagedProcess, Error> {
        let binary = bin_dir.join(name);
        let log = log_dir.join(format!("{name}.log"));
        let stdout = File::create(&log).map_err(|source| Error::Io {
            action: "create",
            path: log.clone(),
            source,
        })?;
        let stderr = stdout.try_clone().map_err(|source| Error::Io {
            action: "open",
            path: log.clone(),
            source,
        })?;

        let mut command = Command::new(&binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let parent_pid = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and calls only prctl,
        // getppid and raise, which are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The test process may have exited between fork and prctl; then the signal
                // was never armed and the child must not go on.
                if libc::getppid() as u32 != parent_pid {
                    libc::raise(libc::SIGKILL);
                }
                Ok(())
            });
        }

        let child =
            runtime::block_on(async move { command.spawn() }).map_err(|source| Error::Spawn {
                process: name,
                binary,
                source,
            })?;
        Ok(ManagedProcess { name, log, child })
    }

    /// Returns the exit error if the process has already exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(self.exited(status)),
            Ok(None) => Ok(()),
            Err(source) => Err(Error::Io {
                action: "wait for",
                path: self.log.clone(),
                source,
            }),
        }
    }

    fn exited(&self, status: ExitStatus) -> Error {
        Error::Exited {
            process: self.name,
            status,
            log: self.log.clone(),
            log_tail: log_tail(&self.log),
        }
    }

    /// Kills the process with SIGKILL and reaps it. Killing an exited process is a no-op.
    pub fn kill(&mut self) {
        // An error here means the process is already gone, which is what was asked for.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns the last lines of a log file, or a note that it could not be read.
pub(super) fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(error) => format!("(could not read the log: {error})"),
    }
}
