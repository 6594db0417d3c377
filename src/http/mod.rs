//! The HTTP server of `calsync-operator run`: the read-only API under `/api/v0`, `/healthz`,
//! `/readyz` and `/metrics`.
//!
//! # Read-only API
//! | method and path | response |
//! |---|---|
//! | `GET /api/v0/users` | 200 `{"users": [...]}`, sorted |
//! | `GET /api/v0/synchronizations` | 200 `{"synchronizations": [{"id", "username", "type"}, ...]}`, by id |
//! | `GET /api/v0/users/{username}/synchronizations` | 200 that user's list in the same shape; 404 when the user does not exist |
//!
//! The bodies have MyTimetable's shapes, so a MyTimetable client can read them unchanged.
//! Every response comes from the remote view; no request reaches MyTimetable. Each carries a
//! strong `ETag` (a hash of the body; `If-None-Match` returns 304), `Age` (seconds since the
//! view's lists were requested from MyTimetable) and `Cache-Control: no-cache`. The query
//! `?managed=true` keeps only entries that a resource of this cluster manages, and
//! `?managed=false` only the others (drift). The two full lists are serialized once per
//! snapshot and filter and shared by every request.
//!
//! Errors carry a JSON body `{"message": ...}`: 400 for an invalid filter, 404 for an unknown
//! path, and 405 with `Allow` for a method other than GET or HEAD. Before the remote view
//! loaded, the API returns 503 with `Retry-After`, and so do the filters before the resource
//! watches delivered their initial lists.

mod api;
mod cache;
mod probes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::remote::RemoteView;
use crate::telemetry::Telemetry;

pub use cache::Filter;

/// A failure of the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound, for example because it is in use.
    #[error("listening on {address} failed")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Accepting connections failed.
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
}

/// The state shared by the handlers.
pub struct HttpState {
    cache: cache::Cache,
    telemetry: Telemetry,
}

impl HttpState {
    pub fn new(view: RemoteView, telemetry: Telemetry) -> Arc<HttpState> {
        Arc::new(HttpState {
            cache: cache::Cache::new(view),
            telemetry,
        })
    }
}

/// Builds the router of every endpoint.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/api/v0/users", get(api::list_users))
        .route("/api/v0/synchronizations", get(api::list_synchronizations))
        .route(
            "/api/v0/users/{username}/synchronizations",
            get(api::list_user_synchronizations),
        )
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        // axum adds the `Allow` header of the route to this response.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A bound listener, so that the caller learns the address before serving (port 0 picks a
/// free port).
pub struct Server {
    listener: TcpListener,
    address: SocketAddr,
}

impl Server {
    pub async fn bind(address: SocketAddr) -> Result<Server, Error> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| Error::Bind { address, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| Error::Bind { address, source })?;
        Ok(Server { listener, address })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn serve(
        self,
        state: Arc<HttpState>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        tracing::info!(address = %self.address, "Serving HTTP");
        axum::serve(self.listener, router(state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(Error::Serve)?;
        tracing::info!(address = %self.address, "Stopped serving HTTP");
        Ok(())
    }
}

/// An error response with the JSON body `{"message": ...}`.
pub(crate) fn error_response(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no endpoint at {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {}: the API is read-only",
            uri.path()
        ),
    )
}
