//! The MyTimetable API token: a redacting holder that the client reads on every request,
//! and loaders that keep it current from a file or a Kubernetes Secret without a restart.
//!
//! No function here logs or returns the token's value: log lines name the file or Secret,
//! errors name what failed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{StreamExt, pin_mut};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tracing::{debug, info, warn};

// How often a token file is read again. Kubernetes updates mounted Secret files about a
// minute after a change at best, so one small read per second adds no visible delay and
// catches in-place edits that keep the modification time.
const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The current API token. Clones share one value, so a loader that replaces it changes the
/// token of every client holding a clone. `Debug` prints `[redacted]`.
#[derive(Clone)]
pub struct Token {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    secret: RwLock<SecretString>,
    // Counts the changes of the value, so that callers can react to a rotation.
    version: watch::Sender<u64>,
}

impl Token {
    /// Creates a token holding `value`. An empty value stands for "not loaded yet": requests
    /// are still sent, and MyTimetable rejects them as unauthorized.
    pub fn new(value: impl Into<String>) -> Token {
        let (version, _) = watch::channel(0);
        Token {
            inner: Arc::new(TokenInner {
                secret: RwLock::new(SecretString::from(value.into())),
                version,
            }),
        }
    }

    /// Reads a token file once, trimming surrounding white space, and returns a token with its
    /// value.
    pub fn from_file(path: &Path) -> Result<Token, Error> {
        let value = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let value = parse_token_bytes(value, || path.display().to_string())?;
        Ok(Token::new(value))
    }

    /// Replaces the value. Returns true when it differs from the previous one.
    pub fn replace(&self, value: impl Into<String>) -> bool {
        let value = value.into();
        let mut secret = self
            .inner
            .secret
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if secret.expose_secret() == value {
            return false;
        }
        *secret = SecretString::from(value);
        drop(secret);
        self.inner.version.send_modify(|version| *version += 1);
        true
    }

    /// Returns true while no value is loaded.
    pub fn is_empty(&self) -> bool {
        self.read(|value| value.is_empty())
    }

    /// Returns a receiver that changes whenever the value changes, for example to retry requests
    /// that failed as unauthorized once a rotated token arrives.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    fn read<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        let secret = self
            .inner
            .secret
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(secret.expose_secret())
    }

    /// Returns the value of the `apiToken` header, marked sensitive so that HTTP libraries
    /// leave it out of their debug output.
    pub(crate) fn header_value(&self) -> Result<HeaderValue, Error> {
        self.read(|value| {
            let mut header = HeaderValue::from_str(value).map_err(|_| Error::InvalidCharacters)?;
            header.set_sensitive(true);
            Ok(header)
        })
    }

    /// Calls `f` with the current value, for scrubbing it out of server messages.
    pub(crate) fn with_value<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        self.read(f)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// A token that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token file could not be read.
    #[error("failed to read the token file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file or Secret key contains nothing but white space.
    #[error("the token in {origin} is empty")]
    Empty { origin: String },

    /// The token is not UTF-8 text.
    #[error("the token in {origin} is not UTF-8 text")]
    NotUtf8 { origin: String },

    /// The token contains characters that an HTTP header cannot carry, such as control
    /// characters or a line break inside the value.
    #[error("the token contains characters that an HTTP header cannot carry")]
    InvalidCharacters,

    /// The Secret exists but has no such key.
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    MissingKey {
        namespace: String,
        name: String,
        key: String,
    },
}

// Trims surrounding white space (files usually end with a newline) and checks that the
// value can be sent as a header. `origin` names the source in error messages.
fn parse_token_bytes(bytes: Vec<u8>, origin: impl Fn() -> String) -> Result<String, Error> {
    let text = String::from_utf8(bytes).map_err(|_| Error::NotUtf8 { origin: origin() })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Error::Empty { origin: origin() });
    }
    HeaderValue::from_str(trimmed).map_err(|_| Error::InvalidCharacters)?;
    Ok(trimmed.to_owned())
}

/// Loads the token from `path` and keeps it current: the file is read again every second
/// and a changed value replaces the token. Runs until dropped. A file that cannot be read
/// or contains an invalid token leaves the last good token in place and logs a warning once
/// per distinct failure.
pub async fn watch_file(path: PathBuf, token: Token) {
    let mut last_failure: Option<String> = None;
    loop {
        let loaded = match tokio::fs::read(&path).await {
            Ok(bytes) => parse_token_bytes(bytes, || path.display().to_string()),
            Err(source) => Err(Error::Read {
                path: path.clone(),
                source,
            }),
        };
        match loaded {
            Ok(value) => {
                if token.replace(value) {
                    info!(path = %path.display(), "Loaded MyTimetable token from file");
                }
                if last_failure.take().is_some() {
                    info!(path = %path.display(), "MyTimetable token file is readable again");
                }
            }
            Err(error) => {
                let failure = error.to_string();
                if last_failure.as_deref() != Some(failure.as_str()) {
                    warn!(path = %path.display(), error = %error, "Failed to load MyTimetable token file, keeping the last token");
                }
                last_failure = Some(failure);
            }
        }
        tokio::time::sleep(FILE_POLL_INTERVAL).await;
    }
}

/// Loads the token from `key` of the Secret `namespace/name` and keeps it current with a
/// watch on that one Secret. Runs until dropped. A deleted Secret, a missing key or an
/// invalid value leaves the last good token in place and logs a warning. Watch failures
/// are retried with the kube runtime's default backoff.
pub async fn watch_secret(
    client: kube::Client,
    namespace: impl Into<String>,
    name: impl Into<String>,
    key: impl Into<String>,
    token: Token,
) {
    let (namespace, name, key) = (namespace.into(), name.into(), key.into());
    let api = kube::Api::<Secret>::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(api, config).default_backoff();
    pin_mut!(events);

    let mut seen_secret = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                seen_secret = true;
                match token_from_secret(&secret, &namespace, &name, &key) {
                    Ok(value) => {
                        if token.replace(value) {
                            info!(%namespace, %name, %key, "Loaded MyTimetable token from Secret");
                        } else {
                            debug!(%namespace, %name, "MyTimetable token Secret changed, token unchanged");
                        }
                    }
                    Err(error) => {
                        warn!(%namespace, %name, error = %error, "Failed to load MyTimetable token from Secret, keeping the last token");
                    }
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                warn!(%namespace, %name, "MyTimetable token Secret was deleted, keeping the last token");
            }
            Ok(watcher::Event::Init) => seen_secret = false,
            Ok(watcher::Event::InitDone) => {
                if !seen_secret {
                    warn!(%namespace, %name, "MyTimetable token Secret not found, waiting for it");
                }
            }
            Err(error) => {
                warn!(%namespace, %name, error = %error, "Watch of the MyTimetable token Secret failed, retrying");
            }
        }
    }
}

fn token_from_secret(
    secret: &Secret,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, Error> {
    let origin = || format!("Secret {namespace}/{name} key {key:?}");
    // `data` contains the decoded bytes, and `stringData` is write-only and never returned by the
    // API server, but a client-side object built by hand may carry it.
    if let Some(bytes) = secret.data.as_ref().and_then(|data| data.get(key)) {
        return parse_token_bytes(bytes.0.clone(), origin);
    }
    if let Some(text) = secret.string_data.as_ref().and_then(|data| data.get(key)) {
        return parse_token_bytes(text.clone().into_bytes(), origin);
    }
    Err(Error::MissingKey {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_is_redacted() {
        let token = Token::new("very-secret-value");
        let printed = format!("{token:?} {token:#?}");
        assert!(!printed.contains("very-secret-value"), "{printed}");
        assert!(printed.contains("redacted"), "{printed}");
    }

    #[test]
    fn replace_reports_change_and_bumps_version() {
        let token = Token::new("one");
        let receiver = token.subscribe();
        assert!(!token.replace("one"));
        assert_eq!(*receiver.borrow(), 0);
        assert!(token.replace("two"));
        assert_eq!(*receiver.borrow(), 1);
        assert!(token.with_value(|value| value == "two"));
    }

    #[test]
    fn clones_share_the_value() {
        let token = Token::new("");
        let clone = token.clone();
        assert!(clone.is_empty());
        token.replace("loaded");
        assert!(!clone.is_empty());
    }

    #[test]
    fn token_bytes_are_trimmed_and_checked() {
        let origin = || "test".to_owned();
        assert_eq!(
            parse_token_bytes(b"  abc\n".to_vec(), origin).unwrap(),
            "abc"
        );
        assert!(matches!(
            parse_token_bytes(b" \n".to_vec(), origin),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            parse_token_bytes(vec![0xff, 0xfe], origin),
            Err(Error::NotUtf8 { .. })
        ));
        assert!(matches!(
            parse_token_bytes(b"a\nb".to_vec(), origin),
            Err(Error::InvalidCharacters)
        ));
    }

    #[test]
    fn errors_never_print_the_value() {
        let bytes = b"line-one-secret\nline-two-secret".to_vec();
        let error = parse_token_bytes(bytes, || "file".to_owned()).unwrap_err();
        let printed = format!("{error} {error:?}");
        assert!(!printed.contains("secret"), "{printed}");
    }

    #[test]
    fn secret_without_key_is_reported() {
        let secret = Secret::default();
        let error = token_from_secret(&secret, "ns", "name", "token").unwrap_err();
        assert_eq!(error.to_string(), r#"Secret ns/name has no key "token""#);
    }

    #[test]
    fn secret_data_key_is_read() {
        let secret = Secret {
            data: Some(
                [(
                    "token".to_owned(),
                    k8s_openapi::ByteString(b"abc\n".to_vec()),
                )]
                .into(),
            ),
            ..Secret::default()
        };
        assert_eq!(
            token_from_secret(&secret, "ns", "name", "token").unwrap(),
            "abc"
        );
    }

    #[test]
    fn header_value_is_sensitive() {
        let header = Token::new("abc").header_value().unwrap();
        assert!(header.is_sensitive());
    }
}
