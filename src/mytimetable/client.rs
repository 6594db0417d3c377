//! The typed MyTimetable client: one method per endpoint of the 3.0 API, with the token
//! header, timeouts, a client-side rate limit, and retries of idempotent calls.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tracing::{debug, trace, warn};
use url::Url;

use super::error::{ConfigError, Error, classify_status};
use super::metrics::ClientMetrics;
use super::token::Token;
use super::wire::{self, API_TOKEN_HEADER, UNLINK_MODE_PARAM, UnlinkMode};

/// Settings of a [`Client`]. [`ClientConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The API root, for example `https://mytimetable.example.edu/api/v0`.
    pub base_url: Url,
    pub token: Token,
    /// Extra PEM certificates trusted beside the system roots, for a site behind a private
    /// certificate authority.
    pub ca_bundle_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    /// Limit for one attempt, from sending the request to reading the whole body.
    pub request_timeout: Duration,
    /// Requests started per second, summed over all clones of the client.
    pub requests_per_second: u32,
    /// Requests in flight at once, summed over all clones of the client.
    pub max_concurrent_requests: usize,
    /// Extra attempts of an idempotent call after a transient failure. 0 turns retries off.
    pub max_retries: u32,
    /// First retry delay; each further retry doubles it, with jitter, up to
    /// `retry_max_delay`.
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// The longest `Retry-After` the client waits for itself. A longer one is returned as
    /// [`Error::RateLimited`] so that the caller can schedule the retry.
    pub max_retry_after: Duration,
    pub metrics: Option<ClientMetrics>,
}

impl ClientConfig {
    /// Settings with defaults: 10 s connect and 30 s request timeout, 20 requests per second,
    /// 8 concurrent requests, 3 retries from 200 ms up to 10 s, and `Retry-After` honoured up
    /// to 60 s.
    pub fn new(base_url: Url, token: Token) -> ClientConfig {
        ClientConfig {
            base_url,
            token,
            ca_bundle_pem: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            requests_per_second: 20,
            max_concurrent_requests: 8,
            max_retries: 3,
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            metrics: None,
        }
    }
}

/// The outcome of a synchronization delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncDeletion {
    /// MyTimetable deleted the synchronization (204).
    Deleted,
    /// No synchronization with that id exists (422), for example because an earlier attempt
    /// deleted it.
    NotFound,
}

/// A MyTimetable provisioning API client. Clones are cheap and share the connection pool,
/// the rate limit, the concurrency limit, the token and the metrics.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: Url,
    token: Token,
    limiter: DefaultDirectRateLimiter,
    in_flight: Semaphore,
    retry: RetrySettings,
    metrics: Option<ClientMetrics>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url.as_str())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
struct RetrySettings {
    max_retries: u32,
    min_delay: Duration,
    max_delay: Duration,
    max_retry_after: Duration,
}

/// The endpoints of the 3.0 API. Their route templates name them in logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    ListUsers,
    EnsureUser,
    DeleteUser,
    ListSynchronizations,
    CreateSynchronization,
    DeleteSynchronization,
}

impl Endpoint {
    fn route(self) -> &'static str {
        match self {
            Endpoint::ListUsers => "GET /users",
            Endpoint::EnsureUser => "PUT /users/{username}",
            Endpoint::DeleteUser => "DELETE /users/{username}",
            Endpoint::ListSynchronizations => "GET /synchronizations",
            Endpoint::CreateSynchronization => "PUT /synchronizations",
            Endpoint::DeleteSynchronization => "DELETE /synchronizations/{id}",
        }
    }

    fn method(self) -> Method {
        match self {
            Endpoint::ListUsers | Endpoint::ListSynchronizations => Method::GET,
            Endpoint::EnsureUser | Endpoint::CreateSynchronization => Method::PUT,
            Endpoint::DeleteUser | Endpoint::DeleteSynchronization => Method::DELETE,
        }
    }

    // `PUT /synchronizations` creates a new synchronization on every call, so repeating it
    // after an unclear outcome can create a duplicate. Every other call has the same effect
    // when repeated.
    fn is_idempotent(self) -> bool {
        self != Endpoint::CreateSynchronization
    }
}

/// A response that the calling method handles: a 2xx or a status listed as an expected
/// outcome of that endpoint.
struct Reply {
    status: StatusCode,
    body: Bytes,
}

impl Client {
    /// Builds a client. Fails on a base URL that is not http or https, an unreadable CA
    /// bundle, or a zero limit.
    pub fn new(config: ClientConfig) -> Result<Client, ConfigError> {
        let ClientConfig {
            base_url,
            token,
            ca_bundle_pem,
            connect_timeout,
            request_timeout,
            requests_per_second,
            max_concurrent_requests,
            max_retries,
            retry_min_delay,
            retry_max_delay,
            max_retry_after,
            metrics,
        } = config;

        // Validate the settings.
        if !matches!(base_url.scheme(), "http" | "https")
            || base_url.cannot_be_a_base()
            || base_url.host().is_none()
        {
            return Err(ConfigError::InvalidBaseUrl {
                url: base_url.to_string(),
            });
        }
        let requests_per_second =
            NonZeroU32::new(requests_per_second).ok_or(ConfigError::ZeroLimit {
                setting: "requests_per_second",
            })?;
        if max_concurrent_requests == 0 {
            return Err(ConfigError::ZeroLimit {
                setting: "max_concurrent_requests",
            });
        }

        // Build the HTTP client. reqwest is built without a default crypto provider, so that
        // the whole tree shares kube's `ring` backend.
        crate::install_rustls_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("calsync-operator/", env!("CARGO_PKG_VERSION")))
            .gzip(true)
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            // Redirects would resend the token to wherever they point.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_bundle_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ConfigError::InvalidCaBundle {
                    source: Some(source),
                }
            })?;
            if certificates.is_empty() {
                return Err(ConfigError::InvalidCaBundle { source: None });
            }
            builder = builder.tls_certs_merge(certificates);
        }
        let http = builder
            .build()
            .map_err(|source| ConfigError::Build { source })?;

        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base_url,
                token,
                limiter: RateLimiter::direct(Quota::per_second(requests_per_second)),
                in_flight: Semaphore::new(max_concurrent_requests),
                retry: RetrySettings {
                    max_retries,
                    min_delay: retry_min_delay,
                    max_delay: retry_max_delay.max(retry_min_delay),
                    max_retry_after,
                },
                metrics,
            }),
        })
    }

    /// Returns the API root this client sends requests to.
    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// Returns the token this client sends. Replacing its value changes the token of every request
    /// that starts afterwards.
    pub fn token(&self) -> &Token {
        &self.inner.token
    }

    /// `GET /users`: every username known to MyTimetable.
    pub async fn list_users(&self) -> Result<Vec<String>, Error> {
        let url = self.url(&["users"]);
        let reply = self.send(Endpoint::ListUsers, url, None, &[]).await?;
        let list: wire::UserList = parse_json(Endpoint::ListUsers, &reply)?;
        Ok(list.users)
    }

    /// `PUT /users/{username}`: makes sure the user exists. Succeeds when it already did.
    pub async fn ensure_user(&self, username: &str) -> Result<(), Error> {
        let url = self.user_url(username)?;
        self.send(Endpoint::EnsureUser, url, None, &[]).await?;
        Ok(())
    }

    /// `DELETE /users/{username}`: deletes the user and, on the server, its
    /// synchronizations. A user that does not exist counts as deleted (3.0 returns 204,
    /// later versions 404).
    pub async fn delete_user(&self, username: &str) -> Result<(), Error> {
        let url = self.user_url(username)?;
        self.send(Endpoint::DeleteUser, url, None, &[StatusCode::NOT_FOUND])
            .await?;
        Ok(())
    }

    /// `GET /synchronizations`: every synchronization, with the later-version fields kept
    /// when the server sends them.
    pub async fn list_synchronizations(&self) -> Result<Vec<wire::Synchronization>, Error> {
        let url = self.url(&["synchronizations"]);
        let reply = self
            .send(Endpoint::ListSynchronizations, url, None, &[])
            .await?;
        let list: wire::SynchronizationList = parse_json(Endpoint::ListSynchronizations, &reply)?;
        Ok(list.synchronizations)
    }

    /// `PUT /synchronizations`: creates a synchronization of `type_` for an existing user.
    /// MyTimetable returns no id; list the synchronizations to learn it.
    ///
    /// Sent once and never retried, because each call creates another synchronization. After
    /// a timeout or transport error the synchronization may exist anyway: list before
    /// creating again.
    pub async fn create_synchronization(
        &self,
        username: &str,
        type_: &str,
        smtp_address: Option<&str>,
    ) -> Result<(), Error> {
        let url = self.url(&["synchronizations"]);
        let mut form = vec![
            (wire::form::USERNAME, username.to_owned()),
            (wire::form::TYPE, type_.to_owned()),
        ];
        if let Some(address) = smtp_address {
            form.push((wire::form::SMTP_ADDRESS, address.to_owned()));
        }
        self.send(Endpoint::CreateSynchronization, url, Some(form), &[])
            .await?;
        Ok(())
    }

    /// `DELETE /synchronizations/{id}?unlinkMode=MODE`: removes a synchronization, and
    /// removes events from the user's calendar as `mode` specifies.
    pub async fn delete_synchronization(
        &self,
        id: i64,
        mode: UnlinkMode,
    ) -> Result<SyncDeletion, Error> {
        let mut url = self.url(&["synchronizations", &id.to_string()]);
        url.query_pairs_mut()
            .append_pair(UNLINK_MODE_PARAM, mode.as_str());
        let reply = self
            .send(
                Endpoint::DeleteSynchronization,
                url,
                None,
                &[StatusCode::UNPROCESSABLE_ENTITY],
            )
            .await?;
        if reply.status == StatusCode::UNPROCESSABLE_ENTITY {
            Ok(SyncDeletion::NotFound)
        } else {
            Ok(SyncDeletion::Deleted)
        }
    }

    // Appends path segments to the base URL, percent-encoding each one so that `/`, `?`,
    // `#`, `%` and spaces stay inside their segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        // The base URL was checked to be an http(s) URL with a host, which always has path
        // segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn user_url(&self, username: &str) -> Result<Url, Error> {
        check_username(username)?;
        Ok(self.url(&["users", username]))
    }

    // Sends a request, retrying idempotent endpoints on transient failures.
    async fn send(
        &self,
        endpoint: Endpoint,
        url: Url,
        form: Option<Vec<(&'static str, String)>>,
        expected: &[StatusCode],
    ) -> Result<Reply, Error> {
        let attempt = || self.send_once(endpoint, &url, form.as_deref(), expected);
        let settings = self.inner.retry;
        let result = if endpoint.is_idempotent() && settings.max_retries > 0 {
            let backoff = ExponentialBuilder::default()
                .with_min_delay(settings.min_delay)
                .with_max_delay(settings.max_delay)
                .with_max_times(settings.max_retries as usize)
                .with_jitter();
            let mut retry_number = 0u32;
            attempt
                .retry(backoff)
                .when(Error::is_transient)
                .adjust(|error, delay| retry_delay(error, delay, settings.max_retry_after))
                .notify(|error, delay| {
                    retry_number += 1;
                    warn!(
                        endpoint = endpoint.route(),
                        status = error.status(),
                        error = %error,
                        retry = retry_number,
                        delay_ms = delay.as_millis() as u64,
                        "Retrying MyTimetable request"
                    );
                    if let Some(metrics) = &self.inner.metrics {
                        metrics.observe_retry(endpoint.route(), error.metric_label());
                    }
                })
                .await
        } else {
            attempt().await
        };

        if let Err(error) = &result {
            warn!(
                endpoint = endpoint.route(),
                status = error.status(),
                error = %error,
                transient = error.is_transient(),
                "MyTimetable request failed"
            );
        }
        result
    }

    // One attempt: waits for a concurrency slot and the rate limit, then sends.
    async fn send_once(
        &self,
        endpoint: Endpoint,
        url: &Url,
        form: Option<&[(&'static str, String)]>,
        expected: &[StatusCode],
    ) -> Result<Reply, Error> {
        let inner = &self.inner;
        // The semaphore lives as long as the client and is never closed.
        let _permit = inner.in_flight.acquire().await.ok();
        inner.limiter.until_ready().await;

        let header = inner
            .token
            .header_value()
            .map_err(|_| Error::Unauthorized)?;
        let mut request = inner
            .http
            .request(endpoint.method(), url.clone())
            .header(API_TOKEN_HEADER, header);
        if let Some(form) = form {
            request = request.form(form);
        }

        let started = Instant::now();
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                match response.bytes().await {
                    Ok(body) => Ok((status, headers, body)),
                    Err(source) => Err(Error::from_reqwest(source)),
                }
            }
            Err(source) => Err(Error::from_reqwest(source)),
        };
        let elapsed = started.elapsed();

        let status_label = match &outcome {
            Ok((status, _, _)) => status.as_u16().to_string(),
            Err(error) => error.metric_label().to_owned(),
        };
        if let Some(metrics) = &inner.metrics {
            metrics.observe_request(endpoint.route(), status_label.clone(), elapsed);
        }
        debug!(
            endpoint = endpoint.route(),
            status = %status_label,
            elapsed_ms = elapsed.as_millis() as u64,
            "MyTimetable request"
        );

        let (status, headers, body) = outcome?;
        if status.is_success() || expected.contains(&status) {
            return Ok(Reply { status, body });
        }
        let text = String::from_utf8_lossy(&body);
        Err(inner
            .token
            .with_value(|token| classify_status(status, &headers, &text, token)))
    }
}

// Usernames `.` and `..` cannot be sent as a path segment: URL libraries drop or resolve
// them, so the request would reach another resource. An empty one names no user.
fn check_username(username: &str) -> Result<(), Error> {
    if matches!(username, "" | "." | "..") {
        return Err(Error::InvalidUsername {
            username: username.to_owned(),
        });
    }
    Ok(())
}

// Waits at least as long as the server's `Retry-After`, and gives up retrying when that is
// longer than the client is willing to wait.
fn retry_delay(
    error: &Error,
    backoff: Option<Duration>,
    max_retry_after: Duration,
) -> Option<Duration> {
    let backoff = backoff?;
    match error.retry_after() {
        Some(retry_after) if retry_after > max_retry_after => None,
        Some(retry_after) => Some(retry_after.max(backoff)),
        None => Some(backoff),
    }
}

fn parse_json<T: DeserializeOwned>(endpoint: Endpoint, reply: &Reply) -> Result<T, Error> {
    serde_json::from_slice(&reply.body).map_err(|error| {
        trace!(
            endpoint = endpoint.route(),
            body_len = reply.body.len(),
            "Unparsable MyTimetable response"
        );
        Error::InvalidResponse {
            status: reply.status.as_u16(),
            message: format!("invalid JSON for {}: {error}", endpoint.route()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        Client::new(ClientConfig::new(base.parse().unwrap(), Token::new("t"))).unwrap()
    }

    #[test]
    fn usernames_are_encoded_as_one_segment() {
        let client = client("http://127.0.0.1:1/api/v0");
        let cases = [
            ("alice", "/api/v0/users/alice"),
            ("alice@example.org", "/api/v0/users/alice@example.org"),
            ("a/b", "/api/v0/users/a%2Fb"),
            ("a?b", "/api/v0/users/a%3Fb"),
            ("a#b", "/api/v0/users/a%23b"),
            ("a%b", "/api/v0/users/a%25b"),
            ("a b", "/api/v0/users/a%20b"),
            ("élève", "/api/v0/users/%C3%A9l%C3%A8ve"),
            ("...", "/api/v0/users/..."),
        ];
        for (username, path) in cases {
            let url = client.user_url(username).unwrap();
            assert_eq!(url.path(), path, "{username:?}");
            assert_eq!(url.query(), None, "{username:?}");
            assert_eq!(url.fragment(), None, "{username:?}");
        }
    }

    #[test]
    fn dot_segments_and_empty_usernames_are_rejected() {
        let client = client("http://127.0.0.1:1/api/v0");
        for username in ["", ".", ".."] {
            let error = client.user_url(username).unwrap_err();
            assert!(!error.is_transient(), "{username:?}");
            assert_eq!(error.metric_label(), "invalid_username");
        }
    }

    #[test]
    fn base_url_with_trailing_slash_gives_same_paths() {
        let with_slash = client("http://127.0.0.1:1/api/v0/");
        let without = client("http://127.0.0.1:1/api/v0");
        assert_eq!(
            with_slash.url(&["synchronizations"]),
            without.url(&["synchronizations"])
        );
    }

    #[test]
    fn invalid_base_urls_are_rejected() {
        for base in ["mailto:a@example.org", "file:///tmp/x", "data:text/plain,x"] {
            let config = ClientConfig::new(base.parse().unwrap(), Token::new("t"));
            assert!(
                matches!(Client::new(config), Err(ConfigError::InvalidBaseUrl { .. })),
                "{base}"
            );
        }
    }

    #[test]
    fn zero_limits_are_rejected() {
        let mut config = ClientConfig::new("http://127.0.0.1:1/".parse().unwrap(), Token::new("t"));
        config.requests_per_second = 0;
        assert!(matches!(
            Client::new(config.clone()),
            Err(ConfigError::ZeroLimit { .. })
        ));
        config.requests_per_second = 1;
        config.max_concurrent_requests = 0;
        assert!(matches!(
            Client::new(config),
            Err(ConfigError::ZeroLimit { .. })
        ));
    }

    #[test]
    fn ca_bundle_without_certificates_is_rejected() {
        let mut config =
            ClientConfig::new("https://127.0.0.1:1/".parse().unwrap(), Token::new("t"));
        config.ca_bundle_pem = Some(b"not a certificate".to_vec());
        assert!(matches!(
            Client::new(config),
            Err(ConfigError::InvalidCaBundle { .. })
        ));
    }

    #[test]
    fn ca_bundle_with_certificate_is_accepted() {
        let certificate = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap()
            .cert
            .pem();
        let mut config =
            ClientConfig::new("https://127.0.0.1:1/".parse().unwrap(), Token::new("t"));
        config.ca_bundle_pem = Some(certificate.into_bytes());
        assert!(Client::new(config).is_ok());
    }

    #[test]
    fn retry_delay_honours_retry_after() {
        let limited = |seconds| Error::RateLimited {
            retry_after: Some(Duration::from_secs(seconds)),
        };
        let max = Duration::from_secs(60);
        let backoff = Some(Duration::from_millis(200));
        assert_eq!(
            retry_delay(&limited(2), backoff, max),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_delay(&limited(0), backoff, max),
            Some(Duration::from_millis(200))
        );
        assert_eq!(retry_delay(&limited(61), backoff, max), None);
        assert_eq!(retry_delay(&limited(2), None, max), None);
        assert_eq!(retry_delay(&Error::Timeout, backoff, max), backoff);
    }

    #[test]
    fn only_synchronization_create_is_not_idempotent() {
        let endpoints = [
            Endpoint::ListUsers,
            Endpoint::EnsureUser,
            Endpoint::DeleteUser,
            Endpoint::ListSynchronizations,
            Endpoint::DeleteSynchronization,
        ];
        for endpoint in endpoints {
            assert!(endpoint.is_idempotent(), "{endpoint:?}");
        }
        assert!(!Endpoint::CreateSynchronization.is_idempotent());
    }
}
