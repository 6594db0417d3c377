//! The background runtime that serves the clients of every control plane and spawns their
//! processes.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tower::{BoxError, Service};

/// Returns the handle of the background runtime, starting its thread on first use.
///
/// The thread never exits before the process does. Processes spawned from it with
/// `PR_SET_PDEATHSIG` therefore live exactly as long as the test process, and clients built
/// on it keep working after the runtime of the test that built them is gone.
pub(super) fn handle() -> &'static Handle {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("calsync-testenv".to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("failed to build the testenv runtime");
                sender
                    .send(runtime.handle().clone())
                    .expect("the caller waits for the handle");
                runtime.block_on(std::future::pending::<()>());
            })
            .expect("failed to start the testenv thread");
        receiver
            .recv()
            .expect("the testenv thread sends its handle before anything else")
    })
}

/// Runs `future` on the background runtime and blocks the calling thread until it is done.
///
/// Safe to call from inside any tokio runtime: the calling thread only waits on a channel,
/// while the work runs on the background thread.
pub(super) fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (sender, receiver) = mpsc::sync_channel(1);
    handle().spawn(async move {
        // The receiver is gone only if the caller's thread died, and then no result is needed.
        let _ = sender.send(future.await);
    });
    receiver
        .recv()
        .expect("a testenv task panicked; see the panic message above")
}

/// A tower service that runs each request of the wrapped service as a task on the background
/// runtime.
///
/// kube's client returns a future that the caller polls, and that future opens the TCP
/// connection, so a pooled connection would otherwise belong to the runtime of whichever test
/// sent the first request. A test that then blocks its single-threaded runtime (for example in
/// `Drop`) would stall every later request on that connection. With this wrapper every socket
/// and connection task lives on the background runtime, and the caller only awaits the result.
pub(super) struct SpawnOnBackground<S> {
    inner: S,
}

impl<S> SpawnOnBackground<S> {
    pub(super) fn new(inner: S) -> Self {
        SpawnOnBackground { inner }
    }
}

impl<S, Request> Service<Request> for SpawnOnBackground<S>
where
    S: Service<Request>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let response = handle().spawn(self.inner.call(request));
        Box::pin(async move {
            match response.await {
                Ok(result) => result.map_err(Into::into),
                Err(join_error) => Err(Box::new(join_error) as BoxError),
            }
        })
    }
}
