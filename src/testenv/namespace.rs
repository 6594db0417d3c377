//! Uniquely named namespaces for tests.

use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use rand::Rng;

use super::runtime;

/// How long dropping a namespace waits for the API server to accept the delete request.
const DELETE_TIMEOUT: Duration = Duration::from_secs(10);
/// Random characters appended to the prefix; 36^8 names make a collision between the tests
/// of one control plane negligible.
const SUFFIX_LENGTH: usize = 8;
/// A namespace name is a DNS label of at most 63 characters.
const MAX_NAME_LENGTH: usize = 63;

/// A namespace with a unique name, deleted when dropped unless the test panicked.
///
/// A namespace of a failed test is kept, and its name printed, so that its objects can be
/// inspected. The control plane has no namespace controller, so deleting a namespace only
/// marks it Terminating; its objects stay until the control plane stops.
pub struct TestNamespace {
    name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates a namespace named `prefix` plus a random suffix, for example
    /// `adoption-k3x9q2mz`. Panics when the API server rejects it.
    ///
    /// `client` should come from [`super::ControlPlane::client`]: dropping the namespace sends
    /// the delete request from a blocking context, which a client bound to the test's own
    /// single-threaded runtime could not serve.
    pub async fn create(client: &Client, prefix: &str) -> TestNamespace {
        let name = unique_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("calsync.dev/test".to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let api: Api<Namespace> = Api::all(client.clone());
        if let Err(error) = api.create(&PostParams::default(), &namespace).await {
            panic!("failed to create the test namespace {name}: {error}");
        }
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    /// Returns the name of the namespace.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "testenv: kept namespace {} of the failed test for inspection",
                self.name
            );
            return;
        }

        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.name.clone();
        let (sender, receiver) = mpsc::sync_channel(1);
        let task = runtime::handle().spawn(async move {
            let deleted = api.delete(&name, &DeleteParams::background()).await;
            let _ = sender.send(deleted.map(|_| ()));
        });
        match receiver.recv_timeout(DELETE_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!("testenv: failed to delete namespace {}: {error}", self.name)
            }
            // Aborted so that a late deletion cannot hide the stall from a test that checks
            // the namespace right after the drop.
            Err(_) => {
                task.abort();
                eprintln!(
                    "testenv: namespace {} was not deleted within {DELETE_TIMEOUT:?}; was its client built by ControlPlane::client?",
                    self.name
                );
            }
        }
    }
}

/// Returns `prefix`, turned into a valid DNS label, plus `-` and a random suffix.
fn unique_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut cleaned: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    cleaned.truncate(MAX_NAME_LENGTH - SUFFIX_LENGTH - 1);
    let cleaned = cleaned.trim_matches('-');
    let cleaned = if cleaned.is_empty() { "test" } else { cleaned };

    let mut rng = rand::rng();
    let suffix: String = (0..SUFFIX_LENGTH)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{cleaned}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_NAME_LENGTH
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    }

    #[test]
    fn unique_name_keeps_a_clean_prefix() {
        let name = unique_name("adoption");
        assert!(name.starts_with("adoption-"), "{name}");
        assert_eq!(name.len(), "adoption-".len() + SUFFIX_LENGTH);
        assert!(is_dns_label(&name), "{name}");
    }

    #[test]
    fn unique_name_cleans_invalid_prefixes() {
        for prefix in ["Upper_Case", "--", "", "a.b/c", &"x".repeat(100)] {
            let name = unique_name(prefix);
            assert!(is_dns_label(&name), "{prefix:?} gave {name:?}");
        }
    }

    #[test]
    fn unique_name_differs_between_calls() {
        assert_ne!(unique_name("same"), unique_name("same"));
    }
}
