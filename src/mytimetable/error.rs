//! Errors of the MyTimetable client and how HTTP outcomes map onto them.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// A failed MyTimetable request. No variant contains the API token: server messages are
/// scrubbed of it before they are stored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// MyTimetable rejected the API token (HTTP 401 or 403): it is missing, wrong, or lacks
    /// admin rights. Only a new token fixes it.
    #[error("MyTimetable rejected the API token (HTTP 401 or 403): check the configured token")]
    Unauthorized,

    /// MyTimetable rejected the request itself (HTTP 400, 404, 409, 422 and other 4xx): only
    /// a change of the input fixes it, so a retry of the same request fails again.
    #[error("MyTimetable rejected the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },

    /// The username cannot be sent as a URL path segment: it is empty, `.` or `..`, which
    /// URL libraries and servers drop or resolve to another path. Nothing was sent.
    #[error("invalid username {username:?}: it cannot be sent as a URL path segment")]
    InvalidUsername { username: String },

    /// MyTimetable asked the client to slow down (HTTP 429).
    #[error("MyTimetable is rate limiting requests (HTTP 429){}", retry_after_suffix(*retry_after))]
    RateLimited { retry_after: Option<Duration> },

    /// MyTimetable failed (HTTP 5xx, or 408 when it gave up waiting for the request).
    #[error("MyTimetable failed (HTTP {status}): {message}")]
    Server { status: u16, message: String },

    /// No complete response arrived within the request timeout. The request may still have
    /// been applied.
    #[error("MyTimetable request timed out")]
    Timeout,

    /// The connection failed or closed before a complete response arrived. The request may
    /// still have been applied.
    #[error("MyTimetable request failed")]
    Transport {
        #[source]
        source: reqwest::Error,
    },

    /// MyTimetable returned a status or body this client does not understand.
    #[error("MyTimetable sent an invalid response (HTTP {status}): {message}")]
    InvalidResponse { status: u16, message: String },
}

fn retry_after_suffix(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(delay) => format!(", retry after {}s", delay.as_secs_f64()),
        None => String::new(),
    }
}

impl Error {
    /// Returns true when the same request may succeed later without any change: timeouts,
    /// transport failures, rate limits, server errors and unreadable responses. Unauthorized
    /// and Rejected need a change of the token or of the request.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unauthorized | Error::Rejected { .. } | Error::InvalidUsername { .. } => false,
            Error::RateLimited { .. }
            | Error::Server { .. }
            | Error::Timeout
            | Error::Transport { .. }
            | Error::InvalidResponse { .. } => true,
        }
    }

    /// Returns a stable, low-cardinality name of the variant for metric labels and log fields.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Unauthorized => "unauthorized",
            Error::Rejected { .. } => "rejected",
            Error::InvalidUsername { .. } => "invalid_username",
            Error::RateLimited { .. } => "rate_limited",
            Error::Server { .. } => "server",
            Error::Timeout => "timeout",
            Error::Transport { .. } => "transport",
            Error::InvalidResponse { .. } => "invalid_response",
        }
    }

    /// Returns the HTTP status of the response, when the error carries one. `Unauthorized`
    /// covers 401 and 403 alike and carries none.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Rejected { status, .. }
            | Error::Server { status, .. }
            | Error::InvalidResponse { status, .. } => Some(*status),
            Error::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS.as_u16()),
            Error::Unauthorized
            | Error::InvalidUsername { .. }
            | Error::Timeout
            | Error::Transport { .. } => None,
        }
    }

    /// Returns the delay the server requested with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn from_reqwest(source: reqwest::Error) -> Error {
        if source.is_timeout() {
            Error::Timeout
        } else {
            Error::Transport { source }
        }
    }
}

/// An invalid client configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The base URL cannot carry paths, for example `mailto:` or `data:` URLs.
    #[error("invalid MyTimetable base URL {url}: expected http:// or https:// ending in /api/v0")]
    InvalidBaseUrl { url: String },

    /// The extra CA bundle contains no PEM certificate or cannot be parsed.
    #[error("invalid CA bundle: expected one or more PEM certificates")]
    InvalidCaBundle {
        #[source]
        source: Option<reqwest::Error>,
    },

    /// A limit was set to zero, which would block every request.
    #[error("invalid client setting {setting}: must be at least 1")]
    ZeroLimit { setting: &'static str },

    /// The HTTP client could not be built, for example because no TLS provider is usable.
    #[error("failed to build the HTTP client")]
    Build {
        #[source]
        source: reqwest::Error,
    },
}

// Server messages are kept short in errors and status conditions: a proxy's HTML error page
// would otherwise fill a Kubernetes condition message.
const MAX_MESSAGE_CHARS: usize = 300;

/// Maps a response that is not a success onto an error. `body` is the response body as
/// text, `token` the token that was sent, so that a server echoing it cannot leak it.
pub(crate) fn classify_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    token: &str,
) -> Error {
    let code = status.as_u16();
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Unauthorized,
        StatusCode::TOO_MANY_REQUESTS => Error::RateLimited {
            retry_after: parse_retry_after(headers, SystemTime::now()),
        },
        StatusCode::REQUEST_TIMEOUT => Error::Server {
            status: code,
            message: server_message(body, token),
        },
        _ if status.is_client_error() => Error::Rejected {
            status: code,
            message: server_message(body, token),
        },
        _ if status.is_server_error() => Error::Server {
            status: code,
            message: server_message(body, token),
        },
        _ => Error::InvalidResponse {
            status: code,
            message: format!("unexpected status {status}"),
        },
    }
}

/// Reduces a response body to a one-line message: the `message` or `error` field of a
/// JSON body, otherwise the text itself, shortened and with the token removed.
pub(crate) fn server_message(body: &str, token: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            ["message", "error"]
                .iter()
                .find_map(|key| value.get(key)?.as_str().map(str::to_owned))
        });
    let text = from_json.unwrap_or_else(|| body.trim().to_owned());
    let mut message: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if !token.is_empty() && message.contains(token) {
        message = message.replace(token, "[redacted]");
    }
    if message.chars().count() > MAX_MESSAGE_CHARS {
        message = message.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + "…";
    }
    if message.is_empty() {
        message = "no message".to_owned();
    }
    message
}

/// Parses `Retry-After` as delta-seconds or as an HTTP date relative to `now`. A date in
/// the past means "now". An unparsable value counts as absent.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers_with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn retry_after_parses_delta_seconds() {
        let headers = headers_with_retry_after("7");
        assert_eq!(
            parse_retry_after(&headers, SystemTime::now()),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn retry_after_parses_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:30 GMT").unwrap();
        let headers = headers_with_retry_after("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn retry_after_date_in_past_is_zero() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:50:00 GMT").unwrap();
        let headers = headers_with_retry_after("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_retry_after(&headers, now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_garbage_or_missing_is_none() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
        for value in ["soon", "-1", "1.5", ""] {
            assert_eq!(
                parse_retry_after(&headers_with_retry_after(value), now),
                None,
                "{value:?}"
            );
        }
    }

    #[test]
    fn status_classification_separates_terminal_from_transient() {
        let cases = [
            (401, "unauthorized", false),
            (403, "unauthorized", false),
            (400, "rejected", false),
            (404, "rejected", false),
            (409, "rejected", false),
            (422, "rejected", false),
            (408, "server", true),
            (429, "rate_limited", true),
            (500, "server", true),
            (502, "server", true),
            (503, "server", true),
            (302, "invalid_response", true),
        ];
        for (status, label, transient) in cases {
            let error = classify_status(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                "",
                "secret",
            );
            assert_eq!(error.metric_label(), label, "status {status}");
            assert_eq!(error.is_transient(), transient, "status {status}");
            if label != "unauthorized" {
                assert_eq!(error.status(), Some(status), "status {status}");
            }
        }
    }

    #[test]
    fn rate_limited_keeps_retry_after() {
        let error = classify_status(
            StatusCode::TOO_MANY_REQUESTS,
            &headers_with_retry_after("3"),
            "",
            "secret",
        );
        assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
        assert!(error.to_string().contains("retry after 3s"), "{error}");
    }

    #[test]
    fn server_message_prefers_json_message_field() {
        assert_eq!(
            server_message(r#"{"message": "missing form field: type"}"#, "token-value"),
            "missing form field: type"
        );
        assert_eq!(server_message(r#"{"error": "bad"}"#, "token-value"), "bad");
        assert_eq!(
            server_message("  plain\n text  ", "token-value"),
            "plain text"
        );
        assert_eq!(server_message("", "token-value"), "no message");
    }

    #[test]
    fn server_message_removes_echoed_token() {
        let message = server_message("invalid token s3cr3t-value given", "s3cr3t-value");
        assert!(!message.contains("s3cr3t-value"), "{message}");
        assert_eq!(message, "invalid token [redacted] given");
    }

    #[test]
    fn server_message_is_shortened() {
        let message = server_message(&"x".repeat(5000), "t");
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
