//! The read-only API: MyTimetable's list endpoints served from the remote view.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::cache::{Entry, Filter, Rendered};
use super::{HttpState, error_response};
use crate::telemetry::age_of;

/// The query parameter of the ownership filter.
const MANAGED_PARAM: &str = "managed";

/// How long a client should wait before retrying while the remote view is not loaded. The
/// first refresh needs two list requests, which take about a second on a healthy server.
const RETRY_AFTER_SECONDS: &str = "5";

pub(super) async fn list_users(
    State(state): State<Arc<HttpState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (entry, filter) = match state.entry_for(query.as_deref()) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let rendered = entry.users(filter).await;
    respond(&headers, &entry, rendered)
}

pub(super) async fn list_synchronizations(
    State(state): State<Arc<HttpState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (entry, filter) = match state.entry_for(query.as_deref()) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let rendered = entry.synchronizations(filter).await;
    respond(&headers, &entry, rendered)
}

// The path segment arrives percent-decoded, so `a%2Fb` is the one username `a/b`.
pub(super) async fn list_user_synchronizations(
    State(state): State<Arc<HttpState>>,
    Path(username): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (entry, filter) = match state.entry_for(query.as_deref()) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    // Later MyTimetable versions return 404 for a user that does not exist.
    if !entry.snapshot.has_user(&username) {
        return error_response(
            StatusCode::NOT_FOUND,
            format!("user {username:?} does not exist"),
        );
    }
    let rendered = entry.user_synchronizations(&username, filter);
    respond(&headers, &entry, rendered)
}

impl HttpState {
    // Returns the current entry and the requested filter, or the error response.
    fn entry_for(&self, query: Option<&str>) -> Result<(Arc<Entry>, Filter), Box<Response>> {
        let filter = parse_filter(query)
            .map_err(|message| Box::new(error_response(StatusCode::BAD_REQUEST, message)))?;
        let Some(entry) = self.cache.entry() else {
            return Err(Box::new(unavailable(
                "the remote view has not loaded yet; retry later",
            )));
        };
        // Before the watches listed every resource, an unmanaged entry may only be one whose
        // resource has not been seen yet.
        if filter != Filter::All && !self.telemetry.health.watches_established() {
            return Err(Box::new(unavailable(
                "the resources of this cluster have not been listed yet, so managed and \
                 unmanaged entries cannot be told apart; retry later",
            )));
        }
        Ok((entry, filter))
    }
}

/// Parses `managed=true` or `managed=false`; other parameters are ignored.
fn parse_filter(query: Option<&str>) -> Result<Filter, String> {
    let pairs = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    let mut filter = Filter::All;
    for (key, value) in pairs {
        if key != MANAGED_PARAM {
            continue;
        }
        filter = match value.as_ref() {
            "true" => Filter::Managed,
            "false" => Filter::Unmanaged,
            other => {
                return Err(format!(
                    "invalid query parameter managed={other:?}: expected true or false"
                ));
            }
        };
    }
    Ok(filter)
}

fn unavailable(message: &str) -> Response {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, message.to_string());
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
}

// Sends the body, or 304 when the client has it already. `Age` is the time since the
// snapshot's lists were requested from MyTimetable, the origin this process caches.
fn respond(request: &HeaderMap, entry: &Entry, rendered: Rendered) -> Response {
    let age = age_of(entry.snapshot.fetched_at).as_secs();
    let mut headers = HeaderMap::new();
    // A hex hash in quotes is always a valid header value.
    if let Ok(etag) = HeaderValue::from_str(&rendered.etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::AGE, HeaderValue::from(age));
    // Clients may keep the body but must revalidate it with If-None-Match before each use.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));

    if if_none_match(request, &rendered.etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (headers, rendered.body).into_response()
}

/// Returns whether an `If-None-Match` header matches `etag`: `*`, or one of the listed tags
/// by weak comparison (a `W/` prefix is ignored), the comparison HTTP specifies for
/// `If-None-Match`.
fn if_none_match(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parses_true_false_and_absence() {
        assert_eq!(parse_filter(None), Ok(Filter::All));
        assert_eq!(parse_filter(Some("managed=true")), Ok(Filter::Managed));
        assert_eq!(parse_filter(Some("managed=false")), Ok(Filter::Unmanaged));
        assert_eq!(parse_filter(Some("other=1")), Ok(Filter::All));
    }

    #[test]
    fn filter_rejects_other_values() {
        let error = parse_filter(Some("managed=yes")).expect_err("invalid");
        assert!(error.contains("managed=\"yes\""), "{error}");
    }

    fn request(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::IF_NONE_MATCH, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn if_none_match_compares_weakly_in_lists() {
        let etag = "\"abc-1\"";
        assert!(if_none_match(&request(&["\"abc-1\""]), etag));
        assert!(if_none_match(&request(&["W/\"abc-1\""]), etag));
        assert!(if_none_match(&request(&["\"x\", \"abc-1\""]), etag));
        assert!(if_none_match(&request(&["\"x\"", "\"abc-1\""]), etag));
        assert!(if_none_match(&request(&["*"]), etag));
        assert!(!if_none_match(&request(&["\"abc-2\""]), etag));
        assert!(!if_none_match(&request(&["abc-1"]), etag));
        assert!(!if_none_match(&request(&[]), etag));
    }
}
