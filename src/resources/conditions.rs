use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Finalizer that keeps a resource until its remote object was removed or released.
pub const FINALIZER: &str = "calsync.dev/cleanup";

/// The condition that `kubectl wait --for=condition=Ready` and GitOps tools read.
pub const CONDITION_READY: &str = "Ready";

/// Reasons of the `Ready` condition. They are part of the user interface: alerts and
/// troubleshooting guides match on them, so they never change once released.
pub mod reason {
    /// The remote object was created by this resource and matches it.
    pub const PROVISIONED: &str = "Provisioned";
    /// A remote object that already existed was taken over by this resource.
    pub const ADOPTED: &str = "Adopted";
    /// The referenced CalendarUser does not exist yet or is not Ready.
    pub const WAITING_FOR_USER: &str = "WaitingForUser";
    /// Another resource already owns the remote object this resource describes.
    pub const CONFLICT: &str = "Conflict";
    /// MyTimetable rejected the API token.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// MyTimetable failed or rejected a request; the message names the request and the reason.
    pub const API_ERROR: &str = "ApiError";
    /// The resource is being deleted and waits for its remote cleanup.
    pub const DELETING: &str = "Deleting";
    /// The controller has seen the resource but has not finished its first reconcile.
    pub const RECONCILING: &str = "Reconciling";
}

/// Builds a condition stamped with the generation it describes.
///
/// `last_transition_time` is carried over from `previous` when the status did not change, so
/// that rewriting the same condition does not look like a transition.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    previous: Option<&Condition>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = match previous {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time,
    }
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}
