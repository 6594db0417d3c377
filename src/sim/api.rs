//! The simulated provisioning API under `/api/v0`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use jiff::Timestamp;
use serde_json::json;
use tower_http::compression::CompressionLayer;
use tracing::debug;

use super::faults::Rejection;
use super::model::{CreateError, UserSyncDeleteError};
use super::server::DropConnection;
use super::{DROPPED, Shared, lock};
use crate::mytimetable::wire::{
    self, API_TOKEN_HEADER, SynchronizationList, UNLINK_MODE_PARAM, UnlinkMode, UserList,
};

pub(crate) const PREFIX: &str = "/api/v0";

type SharedState = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let later = shared.later_version;
    let mut users = get(list_users);
    let mut user = put(ensure_user).delete(delete_user);
    if later {
        users = users.post(create_user);
        user = user.get(get_user);
    }
    let mut api = Router::new()
        .route("/users", users)
        .route("/users/{username}", user)
        .route(
            "/synchronizations",
            get(list_synchronizations).put(create_synchronization),
        )
        .route("/synchronizations/{id}", delete(delete_synchronization));
    if later {
        api = api
            .route(
                "/users/{username}/synchronizations",
                get(list_user_synchronizations).delete(delete_user_synchronizations),
            )
            .route(
                "/users/{username}/synchronizations/{type}",
                delete(delete_user_synchronizations_of_type),
            );
    }
    let api = api
        .fallback(unmatched)
        .layer(CompressionLayer::new())
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            inject_faults_and_count,
        ))
        .with_state(shared);
    Router::new().nest(PREFIX, api)
}

// Runs around every API request: the injected latency and faults, the token check, and the
// request counter.
async fn inject_faults_and_count(
    State(shared): SharedState,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let endpoint = endpoint_label(request.method(), matched.as_ref());
    let decision = shared.faults().decide(&endpoint);
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }

    let mut response = match decision.rejection {
        Some(Rejection::ServerError) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error (injected by the simulator)",
        ),
        Some(Rejection::RateLimited { retry_after_secs }) => {
            let mut response = message(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests (injected by the simulator)",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        None => match check_token(&shared.token, request.headers()) {
            Err(rejection) => rejection.into_response(),
            Ok(()) => next.run(request).await,
        },
    };

    let status = response.status();
    let status = if decision.drop_response {
        DROPPED
    } else {
        status.as_str()
    };
    shared.counters().record(&endpoint, status);
    debug!(%endpoint, status, "Simulator handled request");

    if let Some(delay) = decision.slow {
        tokio::time::sleep(delay).await;
    }
    if decision.drop_response {
        response.extensions_mut().insert(DropConnection);
    }
    response
}

// `PUT /users/{username}` for a request to `/api/v0/users/alice`.
fn endpoint_label(method: &Method, matched: Option<&MatchedPath>) -> String {
    match matched {
        Some(path) => {
            let route = path.as_str().strip_prefix(PREFIX).unwrap_or(path.as_str());
            format!("{method} {route}")
        }
        None => "unmatched".to_owned(),
    }
}

fn check_token(expected: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(sent) = headers.get(API_TOKEN_HEADER) else {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            "missing apiToken header",
        ));
    };
    if !constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
        return Err(api_error(StatusCode::UNAUTHORIZED, "invalid apiToken"));
    }
    Ok(())
}

// Compares without stopping at the first difference, so that response times do not reveal
// how much of a guessed token is right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

// An error response with a JSON body `{"message": ...}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "message": self.message }))).into_response()
    }
}

fn api_error(status: StatusCode, text: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: text.into(),
    }
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    api_error(status, text).into_response()
}

fn json_body(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn unmatched() -> Response {
    message(StatusCode::NOT_FOUND, "no such endpoint")
}

// Returns the value of a form field or query parameter, treating an empty value as
// missing.
fn field(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
        .filter(|value| !value.is_empty())
}

fn parse_pairs(input: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(input).into_owned().collect()
}

fn unlink_mode(query: Option<&str>) -> Result<UnlinkMode, ApiError> {
    let pairs = parse_pairs(query.unwrap_or_default().as_bytes());
    let Some(value) = field(&pairs, UNLINK_MODE_PARAM) else {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "missing query parameter: unlinkMode (UNLINK_ONLY, DELETE_FUTURE_EVENTS, DELETE_ALL_EVENTS or CLEANUP)",
        ));
    };
    value
        .parse::<UnlinkMode>()
        .map_err(|error| api_error(StatusCode::BAD_REQUEST, error.to_string()))
}

fn user_not_found(username: &str) -> Response {
    message(
        StatusCode::NOT_FOUND,
        format!("user {username:?} does not exist"),
    )
}

async fn list_users(State(shared): SharedState) -> Response {
    let mut state = lock(&shared.state);
    let body = match &state.users_body {
        Some(body) => body.clone(),
        None => {
            let list = UserList {
                users: state.model.usernames().map(str::to_owned).collect(),
            };
            let body = Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
            state.users_body = Some(body.clone());
            body
        }
    };
    drop(state);
    json_body(body)
}

// 3.0: 204 whether or not the user existed. In later versions a request with a body gets
// 201 (created) or 200 (existed), or 400 when the body's username differs from the path.
async fn ensure_user(
    State(shared): SharedState,
    Path(username): Path<String>,
    body: Bytes,
) -> Response {
    if shared.later_version && !body.is_empty() {
        let pairs = parse_pairs(&body);
        if let Some(other) = field(&pairs, wire::form::USERNAME)
            && other != username
        {
            return message(
                StatusCode::BAD_REQUEST,
                format!(
                    "form field username {other:?} differs from the path username {username:?}"
                ),
            );
        }
        let created = shared.write(|model| model.ensure_user(&username));
        return if created {
            StatusCode::CREATED.into_response()
        } else {
            StatusCode::OK.into_response()
        };
    }
    let exists = shared.read(|model| model.user_exists(&username));
    if !exists {
        shared.write(|model| model.ensure_user(&username));
    }
    StatusCode::NO_CONTENT.into_response()
}

// 3.0: 204 whether or not the user existed. Later versions return 404 for an unknown user.
async fn delete_user(State(shared): SharedState, Path(username): Path<String>) -> Response {
    let exists = shared.read(|model| model.user_exists(&username));
    if exists {
        shared.write(|model| model.delete_user(&username));
    } else if shared.later_version {
        return user_not_found(&username);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn list_synchronizations(State(shared): SharedState) -> Response {
    let mut state = lock(&shared.state);
    let body = match &state.synchronizations_body {
        Some(body) => body.clone(),
        None => {
            let list = SynchronizationList {
                synchronizations: state.model.synchronizations(shared.later_version),
            };
            let body = Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
            state.synchronizations_body = Some(body.clone());
            body
        }
    };
    drop(state);
    json_body(body)
}

async fn create_synchronization(State(shared): SharedState, body: Bytes) -> Response {
    let pairs = parse_pairs(&body);
    let Some(username) = field(&pairs, wire::form::USERNAME) else {
        return message(StatusCode::BAD_REQUEST, "missing form field: username");
    };
    let Some(type_) = field(&pairs, wire::form::TYPE) else {
        return message(StatusCode::BAD_REQUEST, "missing form field: type");
    };
    if !shared.sync_types.is_empty() && !shared.sync_types.contains(&type_) {
        return message(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown synchronization type {type_:?}: this site has adapters for {}",
                shared.sync_types.join(", ")
            ),
        );
    }
    let smtp_address = field(&pairs, wire::form::SMTP_ADDRESS);

    let now = Timestamp::now();
    let created = shared.write(|model| {
        model.create_synchronization(&username, &type_, smtp_address.as_deref(), now)
    });
    match created {
        Ok(id) => {
            debug!(id, %username, %type_, "Simulator created synchronization");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error @ CreateError::UnknownUser { .. }) => {
            message(StatusCode::BAD_REQUEST, error.to_string())
        }
    }
}

async fn delete_synchronization(
    State(shared): SharedState,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let mode = match unlink_mode(query.as_deref()) {
        Ok(mode) => mode,
        Err(error) => return error.into_response(),
    };
    let Ok(id) = id.parse::<i64>() else {
        return message(
            StatusCode::NOT_FOUND,
            format!("invalid synchronization id {id:?}: expected an integer"),
        );
    };
    let now = Timestamp::now();
    if shared.write(|model| model.delete_synchronization(id, mode, now)) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        message(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("synchronization {id} not found"),
        )
    }
}

async fn get_user(State(shared): SharedState, Path(username): Path<String>) -> Response {
    if shared.read(|model| model.user_exists(&username)) {
        axum::Json(json!({ "username": username })).into_response()
    } else {
        user_not_found(&username)
    }
}

async fn create_user(State(shared): SharedState, body: Bytes) -> Response {
    let pairs = parse_pairs(&body);
    let Some(username) = field(&pairs, wire::form::USERNAME) else {
        return message(StatusCode::BAD_REQUEST, "missing form field: username");
    };
    if shared.write(|model| model.ensure_user(&username)) {
        StatusCode::CREATED.into_response()
    } else {
        message(
            StatusCode::CONFLICT,
            format!("user {username:?} already exists"),
        )
    }
}

async fn list_user_synchronizations(
    State(shared): SharedState,
    Path(username): Path<String>,
) -> Response {
    match shared.read(|model| model.user_synchronizations(&username)) {
        Some(synchronizations) => {
            axum::Json(SynchronizationList { synchronizations }).into_response()
        }
        None => user_not_found(&username),
    }
}

async fn delete_user_synchronizations(
    State(shared): SharedState,
    Path(username): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    delete_of_user(&shared, &username, None, query.as_deref())
}

async fn delete_user_synchronizations_of_type(
    State(shared): SharedState,
    Path((username, type_)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    delete_of_user(&shared, &username, Some(&type_), query.as_deref())
}

fn delete_of_user(
    shared: &Shared,
    username: &str,
    type_: Option<&str>,
    query: Option<&str>,
) -> Response {
    let mode = match unlink_mode(query) {
        Ok(mode) => mode,
        Err(error) => return error.into_response(),
    };
    let now = Timestamp::now();
    match shared.write(|model| model.delete_user_synchronizations(username, type_, mode, now)) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(UserSyncDeleteError::UnknownUser) => user_not_found(username),
        Err(UserSyncDeleteError::NoSynchronizations) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "user {username:?} has no synchronization of type {:?}",
                type_.unwrap_or_default()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token2"));
        assert!(!constant_time_eq(b"", b"token"));
    }

    #[test]
    fn empty_field_counts_as_missing() {
        let pairs = parse_pairs(b"username=&type=o365&type=ews");
        assert_eq!(field(&pairs, "username"), None);
        assert_eq!(field(&pairs, "type").as_deref(), Some("o365"));
        assert_eq!(field(&pairs, "absent"), None);
    }

    #[test]
    fn unlink_mode_requires_known_value() {
        assert_eq!(
            unlink_mode(Some("unlinkMode=CLEANUP")).unwrap(),
            UnlinkMode::Cleanup
        );
        for query in [
            None,
            Some(""),
            Some("unlinkMode="),
            Some("unlinkMode=cleanup"),
        ] {
            let error = unlink_mode(query).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{query:?}");
        }
    }
}
