//! Writes to the API server. Each one carries a `test` of the resourceVersion the decision was
//! made from, so a decision based on a stale cache fails with [`Error::Stale`] instead of
//! overwriting newer state (for example sending a second create over a recorded one).

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Error;
use crate::resources::FINALIZER;

/// Field manager of every write of the controller.
pub const FIELD_MANAGER: &str = "calsync-operator";

/// Replaces the object's status, failing when the object changed since `object` was read.
pub async fn replace_status<K, S>(api: &Api<K>, object: &K, status: &S) -> Result<K, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let patch = json!([
        precondition(object),
        {"op": "add", "path": "/status", "value": status},
    ]);
    send(api, object, patch, true).await
}

/// Adds the finalizer and the owner references, keeping the other entries.
pub async fn add_finalizer<K>(
    api: &Api<K>,
    object: &K,
    owners: Vec<OwnerReference>,
) -> Result<K, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut finalizers = object.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        finalizers.push(FINALIZER.to_string());
    }
    let mut references = object.owner_references().to_vec();
    for owner in owners {
        if !references.iter().any(|r| r.uid == owner.uid) {
            references.push(owner);
        }
    }
    let patch = json!([
        precondition(object),
        {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
        {"op": "add", "path": "/metadata/ownerReferences", "value": references},
    ]);
    send(api, object, patch, false).await
}

/// Removes the finalizer, which lets the API server finish the deletion.
pub async fn remove_finalizer<K>(api: &Api<K>, object: &K) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let finalizers: Vec<&String> = object
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = json!([
        precondition(object),
        {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
    ]);
    match send(api, object, patch, false).await {
        // Already gone: the finalizer was the last one and another reconcile removed it.
        Err(Error::Kube(kube::Error::Api(status))) if status.code == 404 => Ok(()),
        result => result.map(|_| ()),
    }
}

/// Returns whether the object carries the controller's finalizer.
pub fn has_finalizer<K: Resource>(object: &K) -> bool {
    object.finalizers().iter().any(|f| f == FINALIZER)
}

fn precondition<K: Resource>(object: &K) -> serde_json::Value {
    json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": object.resource_version(),
    })
}

async fn send<K>(
    api: &Api<K>,
    object: &K,
    patch: serde_json::Value,
    status: bool,
) -> Result<K, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let patch: json_patch::Patch =
        serde_json::from_value(patch).expect("the patch operations above are valid JSON Patch");
    let patch = Patch::Json::<()>(patch);
    let params = PatchParams::apply(FIELD_MANAGER);
    let name = object.name_any();
    let result = if status {
        api.patch_status(&name, &params, &patch).await
    } else {
        api.patch(&name, &params, &patch).await
    };
    result.map_err(|error| match error {
        // 409: a concurrent update; 422: the resourceVersion test failed.
        kube::Error::Api(status) if matches!(status.code, 409 | 422) => Error::Stale,
        error => Error::Kube(error),
    })
}
