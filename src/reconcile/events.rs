//! Kubernetes Events about CalendarUsers and CalendarSyncs.
//!
//! kube-runtime's `Recorder` keeps every event it published for six minutes to aggregate
//! repeats into series, and scans that cache on every publish. While 10,000 users and
//! 10,000 synchronizations converge that is 20,000 cached events and a quadratic scan under
//! one lock. The controller emits an event only when a condition changes or a remote object
//! is created, adopted, deleted or unlinked, so it never repeats one and needs no series:
//! each event is one plain create.

use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Resource;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::decide::Note;

/// `reportingController` of every event.
pub const REPORTING_CONTROLLER: &str = "calsync.dev/calsync-operator";

/// The API server rejects an event note longer than 1 kB.
const MAX_NOTE_BYTES: usize = 1024;

/// Creates events.k8s.io/v1 Events.
#[derive(Clone)]
pub struct EventPublisher {
    client: kube::Client,
    /// `reportingInstance`: the pod name when known.
    instance: String,
}

impl EventPublisher {
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        EventPublisher {
            client,
            instance: instance.unwrap_or_else(|| "calsync-operator".to_string()),
        }
    }

    /// Creates an event about `object`; a failure is logged and otherwise ignored, because an
    /// event is informational and must not fail the reconcile.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, object: &K, note: &Note) {
        let reference = object.object_ref(&());
        let namespace = reference
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let now = Timestamp::now();
        let event = Event {
            action: Some(note.action.to_string()),
            reason: Some(note.reason.to_string()),
            note: Some(truncate(&note.message, MAX_NOTE_BYTES)),
            event_time: Some(MicroTime(now)),
            type_: Some(if note.warning { "Warning" } else { "Normal" }.to_string()),
            reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
            reporting_instance: Some(self.instance.clone()),
            metadata: ObjectMeta {
                // The same naming as kubectl and client-go: the object's name and a unique
                // hexadecimal suffix.
                name: Some(format!(
                    "{}.{:x}",
                    reference.name.as_deref().unwrap_or("object"),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            regarding: Some(reference),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(%error, reason = note.reason, "Failed to publish event");
        }
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_short_text() {
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn truncate_cuts_at_char_boundary() {
        let text = "é".repeat(600);
        let cut = truncate(&text, MAX_NOTE_BYTES);
        assert!(cut.len() <= MAX_NOTE_BYTES);
        assert_eq!(cut.chars().count(), 512);
    }
}
