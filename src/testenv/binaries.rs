//! Finding the kube-apiserver, kubectl and etcd binaries.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::Error;

/// Environment variable naming the folder with kube-apiserver, kubectl and etcd.
pub const CONTROL_PLANE_DIR_ENV: &str = "CALSYNC_CONTROL_PLANE_DIR";

/// Environment variable that a person sets to `1` to skip the tests that need a control
/// plane, on a machine that cannot build it.
pub const SKIP_CONTROL_PLANE_ENV: &str = "CALSYNC_SKIP_CONTROL_PLANE";

const BINARIES: [&str; 3] = ["kube-apiserver", "kubectl", "etcd"];

/// Returns true when a person asked to skip the tests that need a control plane.
pub(super) fn skip_requested() -> bool {
    std::env::var(SKIP_CONTROL_PLANE_ENV).is_ok_and(|value| value == "1")
}

/// Returns the folder with the control-plane binaries, running the build script at most once
/// per process.
pub(super) fn locate() -> Result<PathBuf, Error> {
    static LOCATED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    // The error is kept as text so that every later caller gets the same message without
    // running the script again.
    let located = LOCATED.get_or_init(|| locate_uncached().map_err(|error| error.to_string()));
    match located {
        Ok(dir) => Ok(dir.clone()),
        Err(message) => Err(Error::BuildScript {
            script: build_script(),
            reason: message.clone(),
        }),
    }
}

fn locate_uncached() -> Result<PathBuf, Error> {
    let (dir, source_of_dir) = match std::env::var_os(CONTROL_PLANE_DIR_ENV) {
        Some(dir) => (PathBuf::from(dir), format!("from {CONTROL_PLANE_DIR_ENV}")),
        None => (
            run_build_script()?,
            format!("printed by {}", build_script().display()),
        ),
    };
    for binary in BINARIES {
        if !is_executable(&dir.join(binary)) {
            return Err(Error::MissingBinary {
                binary,
                dir,
                source_of_dir,
            });
        }
    }
    Ok(dir)
}

fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-control-plane.sh")
}

fn run_build_script() -> Result<PathBuf, Error> {
    let script = build_script();
    let failed = |reason: String| Error::BuildScript {
        script: script.clone(),
        reason,
    };

    // Standard error is inherited so that a first build, which takes many minutes, shows
    // its progress instead of looking stuck.
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| failed(format!("could not run bash: {error}")))?;
    if !output.status.success() {
        return Err(failed(format!("it exited with {}", output.status)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().last().map(str::trim) {
        Some(line) if !line.is_empty() => Ok(PathBuf::from(line)),
        _ => Err(failed("it printed no folder".to_string())),
    }
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}
