//! The background runtime that serves the clients of every control plane and spawns their
//! processes.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::runtime::Handle;

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
        // The receiver only disappears if the caller's thread died, and then nobody waits.
        let _ = sender.send(future.await);
    });
    receiver
        .recv()
        .expect("a testenv task panicked; see the panic message above")
}
