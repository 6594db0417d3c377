//! The shared remote view: one snapshot of MyTimetable's users and synchronizations that
//! every reconcile and the read-only API read without calling MyTimetable.

mod client;
mod snapshot;
mod view;

pub use snapshot::{RemoteSync, Snapshot};
pub use view::{ListError, Lister, Lists, Ownership, RemoteView, ViewConfig};

use jiff::Timestamp;

/// A refresh of the remote view that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshFailure {
    /// MyTimetable rejected the API token.
    pub unauthorized: bool,
    /// The error, without the token.
    pub message: String,
    pub at: Timestamp,
}
