//! Inspection and control of the simulator under `/_sim` (listed in the module docs).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Event, Faults, Shared};

type SharedState = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_sim/health", get(|| async { "ok" }))
        .route(
            "/_sim/users/{username}/events",
            get(list_events).post(add_event),
        )
        .route("/_sim/requests", get(requests))
        .route("/_sim/stats", get(stats))
        .route("/_sim/reset", post(reset))
        .route(
            "/_sim/faults",
            get(get_faults).put(put_faults).delete(clear_faults),
        )
        .with_state(shared)
}

/// Body of `GET /_sim/users/{username}/events`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CalendarEvents {
    pub username: String,
    pub events: Vec<Event>,
}

async fn list_events(State(shared): SharedState, Path(username): Path<String>) -> Response {
    let events = shared.read(|model| model.events(&username));
    Json(CalendarEvents { username, events }).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEvent {
    title: String,
    start: Timestamp,
    end: Timestamp,
}

async fn add_event(
    State(shared): SharedState,
    Path(username): Path<String>,
    Json(event): Json<NewEvent>,
) -> Response {
    if event.end < event.start {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": "invalid event: end is before start" })),
        )
            .into_response();
    }
    let event = shared
        .write(|model| model.add_personal_event(&username, &event.title, event.start, event.end));
    (StatusCode::CREATED, Json(event)).into_response()
}

async fn requests(State(shared): SharedState) -> Response {
    Json(shared.counters().report()).into_response()
}

async fn stats(State(shared): SharedState) -> Response {
    let (users, synchronizations) =
        shared.read(|model| (model.user_count(), model.synchronization_count()));
    Json(json!({
        "users": users,
        "synchronizations": synchronizations,
        "laterVersion": shared.later_version,
    }))
    .into_response()
}

async fn reset(State(shared): SharedState) -> StatusCode {
    shared.reset();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(shared): SharedState) -> Response {
    Json(shared.faults().clone()).into_response()
}

async fn put_faults(State(shared): SharedState, Json(faults): Json<Faults>) -> Response {
    if let Err(error) = faults.validate() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": error.to_string() })),
        )
            .into_response();
    }
    *shared.faults() = faults.clone();
    Json(faults).into_response()
}

async fn clear_faults(State(shared): SharedState) -> StatusCode {
    *shared.faults() = Faults::default();
    StatusCode::NO_CONTENT
}
