//! The custom resources of calsync-operator (group `calsync.dev`) and the names the
//! controller writes onto them: finalizers, condition types and reasons, annotations.
//!
//! Doc comments (`///`) on these types are what `kubectl explain` shows to users; notes for
//! developers are plain `//` comments.

mod conditions;
mod sync;
mod user;

pub use conditions::*;
pub use sync::*;
pub use user::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, ResourceExt};
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

/// Returns the CustomResourceDefinitions of both resources, CalendarUser first.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![CalendarUser::crd(), CalendarSync::crd()]
}

/// Returns the file name under `crds/` that holds `crd`: its metadata.name plus `.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.name_any())
}

/// Renders a CustomResourceDefinition as the YAML document checked in under `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(crd)
}
