//! The simulator's HTTP/1.1 server loop. axum's own `serve` cannot close a connection in
//! the middle of a request, which the dropped-response fault needs, so connections are
//! served with hyper directly.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Marks a response whose connection is closed instead of sending it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DropConnection;

#[derive(Debug, thiserror::Error)]
#[error("response dropped by fault injection")]
struct ResponseDropped;

// Pause after a failed accept, such as running out of file descriptors, so that the loop
// does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();

    // Accept until shutdown, reaping finished connection tasks on the way.
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        warn!(error = %error, "Simulator failed to accept a connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let router = router.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    respond(router.clone(), request)
                });
                let connection = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        debug!(error = %error, "Simulator connection closed with an error");
                    }
                });
            }
        }
    }

    // Stop accepting, let requests in flight finish, then close what is left.
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        debug!(
            open = connections.len(),
            "Closing simulator connections after the shutdown grace period"
        );
    }
    connections.shutdown().await;
}

// hyper closes the connection without a response when the service returns an error, which
// is exactly the dropped-response fault.
async fn respond(router: Router, request: Request<Incoming>) -> Result<Response, ResponseDropped> {
    let response = router
        .oneshot(request.map(Body::new))
        .await
        .unwrap_or_else(|never: Infallible| match never {});
    if response.extensions().get::<DropConnection>().is_some() {
        return Err(ResponseDropped);
    }
    Ok(response)
}
