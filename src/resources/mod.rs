//! The custom resources of calsync-operator (group `calsync.dev`) and the names the
//! controller writes onto them: finalizers, condition types and reasons, annotations.
//!
//! Doc comments (`///`) on these types are what `kubectl explain` shows to users; notes for
//! developers are plain `//` comments.

mod conditions;
mod crd;
mod sync;
mod user;

pub use conditions::*;
pub use crd::{crd_file_name, crd_yaml, crds};
pub use sync::*;
pub use user::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every calsync-operator resource.
pub const GROUP: &str = "calsync.dev";
/// API version served and stored for both resources.
pub const VERSION: &str = "v1alpha1";

/// What happens to the remote MyTimetable object when its resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum DeletionPolicy {
    /// The remote object is removed together with the resource.
    #[default]
    Delete,
    /// The remote object is left in MyTimetable when the resource is deleted.
    Orphan,
}
