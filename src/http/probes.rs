//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::HttpState;
use crate::telemetry::age_of;

/// The content type of prometheus-client's text encoding.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// 200 `ok` while no loop is stuck, else 503 with one reason per line.
pub(super) async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    probe_response(state.telemetry.health.liveness(state.cache.view()))
}

/// 200 `ok` once the watches and the remote view are loaded, else 503 with the reasons.
pub(super) async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    probe_response(state.telemetry.health.readiness(state.cache.view()))
}

fn probe_response(result: Result<(), Vec<String>>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reasons) => {
            let mut text = reasons.join("\n");
            text.push('\n');
            (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
        }
    }
}

/// Every metric in the Prometheus text format, with the remote view gauges set first.
pub(super) async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let telemetry = &state.telemetry;
    match state.cache.entry() {
        Some(entry) => {
            let age = age_of(entry.snapshot.fetched_at);
            // Before the watches listed the resources every object would count as unmanaged.
            let counts = telemetry
                .health
                .watches_established()
                .then(|| entry.counts());
            telemetry.metrics.set_remote_view(age, counts);
        }
        None => {
            let age = telemetry.health.started().elapsed();
            telemetry.metrics.set_remote_view(age, None);
        }
    }
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS))],
        telemetry.metrics.encode(),
    )
        .into_response()
}
