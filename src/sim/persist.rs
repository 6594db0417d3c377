//! The optional state file: loaded at start, rewritten atomically after changes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::model::Model;
use super::{Error, Shared, lock};

// Changes arriving within this window are written together, so that a burst of requests
// costs one write and not one per request.
const WRITE_DELAY: Duration = Duration::from_millis(100);

// The format version written into the file; a file of another version is rejected.
const FORMAT_VERSION: u32 = 1;

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StateFileOut<'a> {
    format_version: u32,
    model: &'a Model,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateFileIn {
    format_version: u32,
    model: Model,
}

/// Loads the state file. Returns None when it does not exist.
pub(crate) fn load(path: &Path) -> Result<Option<Model>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::ReadState {
                path: path.to_owned(),
                source,
            });
        }
    };
    let invalid = |reason: String| Error::InvalidState {
        path: path.to_owned(),
        reason,
    };
    let state: StateFileIn =
        serde_json::from_slice(&bytes).map_err(|error| invalid(error.to_string()))?;
    if state.format_version != FORMAT_VERSION {
        return Err(invalid(format!(
            "format version {} is not the supported version {FORMAT_VERSION}",
            state.format_version
        )));
    }
    state.model.validate().map_err(invalid)?;
    Ok(Some(state.model))
}

// Writes into a temporary file in the same folder and renames it over the state file, so
// that a crash leaves either the old or the new state, never a partial file.
fn write(path: &Path, json: &[u8]) -> Result<(), Error> {
    let write_error = |source| Error::WriteState {
        path: path.to_owned(),
        source,
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(folder).map_err(write_error)?;
    file.write_all(json).map_err(write_error)?;
    file.as_file().sync_all().map_err(write_error)?;
    file.persist(path)
        .map_err(|error| write_error(error.error))?;
    Ok(())
}

/// Writes the state file after each burst of changes and once more at shutdown.
pub(crate) async fn run_writer(path: PathBuf, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut written_generation = lock(&shared.state).generation;
    loop {
        let stopping = tokio::select! {
            () = shared.changed.notified() => false,
            () = shutdown.cancelled() => true,
        };
        if !stopping {
            tokio::select! {
                () = tokio::time::sleep(WRITE_DELAY) => {}
                () = shutdown.cancelled() => {}
            }
        }

        // Serialize under the lock, write outside it.
        let snapshot = {
            let state = lock(&shared.state);
            (state.generation != written_generation).then(|| {
                let json = serde_json::to_vec(&StateFileOut {
                    format_version: FORMAT_VERSION,
                    model: &state.model,
                });
                (state.generation, json)
            })
        };
        if let Some((generation, json)) = snapshot {
            let result = match json {
                Ok(json) => {
                    let target = path.clone();
                    tokio::task::spawn_blocking(move || write(&target, &json))
                        .await
                        .unwrap_or_else(|error| {
                            Err(Error::WriteState {
                                path: path.clone(),
                                source: std::io::Error::other(error),
                            })
                        })
                }
                Err(error) => Err(Error::WriteState {
                    path: path.clone(),
                    source: std::io::Error::other(error),
                }),
            };
            match result {
                Ok(()) => {
                    written_generation = generation;
                    debug!(path = %path.display(), generation, "Wrote simulator state file");
                }
                Err(error) => {
                    warn!(error = %error, "Failed to write simulator state file, retrying after the next change");
                }
            }
        }

        if stopping || shutdown.is_cancelled() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_loads_as_none() {
        let folder = tempfile::tempdir().unwrap();
        assert!(load(&folder.path().join("absent.json")).unwrap().is_none());
    }

    #[test]
    fn written_state_loads_back() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("state.json");
        let mut model = Model::default();
        model.ensure_user("alice");
        model
            .create_synchronization("alice", "o365", None, jiff::Timestamp::now())
            .unwrap();
        let json = serde_json::to_vec(&StateFileOut {
            format_version: FORMAT_VERSION,
            model: &model,
        })
        .unwrap();
        write(&path, &json).unwrap();
        assert_eq!(load(&path).unwrap(), Some(model));
    }

    #[test]
    fn garbage_and_other_versions_are_rejected() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("state.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(load(&path), Err(Error::InvalidState { .. })));
        std::fs::write(&path, br#"{"formatVersion": 99, "model": {"users": {}, "synchronizations": {}, "calendars": {}, "lastSynchronizationId": 0, "lastEventId": 0}}"#).unwrap();
        let error = load(&path).unwrap_err();
        assert!(error.to_string().contains("format version 99"), "{error}");
    }
}
