//! Admission of CalendarUser and CalendarSync by a real kube-apiserver: every invalid
//! manifest is rejected with a message that names the field, every example is accepted.

use std::path::{Path, PathBuf};

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use calsync_operator::resources::{CalendarSync, CalendarUser};
use calsync_operator::testenv::{ControlPlane, TestNamespace};

/// An invalid object or change, the field the rejection must name, and a fragment of the
/// expected message, so that a rejection for another reason does not pass.
struct Rejection {
    case: &'static str,
    field: &'static str,
    expected: &'static str,
}

fn user(spec: Value) -> Value {
    json!({"apiVersion": "calsync.dev/v1alpha1", "kind": "CalendarUser", "spec": spec})
}

fn sync(spec: Value) -> Value {
    json!({"apiVersion": "calsync.dev/v1alpha1", "kind": "CalendarSync", "spec": spec})
}

fn valid_sync_spec() -> Value {
    json!({"userRef": {"name": "alice"}, "type": "o365", "smtpAddress": "alice@example.edu"})
}

/// Returns `valid_sync_spec()` with `field` set to `value`, or removed when `value` is null.
fn sync_with(field: &str, value: Value) -> Value {
    let mut spec = valid_sync_spec();
    if value.is_null() {
        spec.as_object_mut().unwrap().remove(field);
    } else {
        spec[field] = value;
    }
    sync(spec)
}

fn api_for(client: &Client, namespace: &str, manifest: &Value) -> Api<DynamicObject> {
    let resource = match manifest["kind"].as_str() {
        Some("CalendarUser") => ApiResource::erase::<CalendarUser>(&()),
        Some("CalendarSync") => ApiResource::erase::<CalendarSync>(&()),
        other => panic!("the test builds only calsync kinds, not {other:?}"),
    };
    Api::namespaced_with(client.clone(), namespace, &resource)
}

fn object(name: &str, manifest: Value) -> DynamicObject {
    let mut object: DynamicObject =
        serde_json::from_value(manifest).expect("the manifest is a Kubernetes object");
    object.metadata.name = Some(name.to_string());
    object
}

/// Checks that `result` is a 422 rejection naming `rejection.field`; returns what went
/// wrong otherwise.
fn check_rejected<T>(rejection: &Rejection, result: Result<T, kube::Error>) -> Option<String> {
    let Rejection {
        case,
        field,
        expected,
    } = rejection;
    match result {
        Ok(_) => Some(format!("{case}: accepted, expected a rejection of {field}")),
        Err(kube::Error::Api(status)) if status.code == 422 => {
            let message = &status.message;
            if !message.contains(&format!("{field}:")) {
                Some(format!(
                    "{case}: the message does not name {field}: {message}"
                ))
            } else if !message.contains(expected) {
                Some(format!("{case}: the message lacks {expected:?}: {message}"))
            } else {
                None
            }
        }
        Err(other) => Some(format!(
            "{case}: failed with {other}, expected a 422 rejection"
        )),
    }
}

fn assert_no_failures(failures: Vec<String>, checked: usize) {
    assert!(
        failures.is_empty(),
        "{} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn invalid_manifests_rejected_on_create() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;
    let namespace = TestNamespace::create(&client, "admission-create").await;

    let long_username = "a".repeat(257);
    let long_type = "t".repeat(65);
    let long_email = format!("{}@example.edu", "a".repeat(243));
    let cases: Vec<(Rejection, Value)> = vec![
        // CalendarUser.spec.username
        (
            Rejection {
                case: "missing username",
                field: "spec.username",
                expected: "Required value",
            },
            user(json!({})),
        ),
        (
            Rejection {
                case: "empty username",
                field: "spec.username",
                expected: "at least 1 chars long",
            },
            user(json!({"username": ""})),
        ),
        (
            Rejection {
                case: "username with leading space",
                field: "spec.username",
                expected: "must not start or end with whitespace",
            },
            user(json!({"username": " alice"})),
        ),
        (
            Rejection {
                case: "username with trailing space",
                field: "spec.username",
                expected: "must not start or end with whitespace",
            },
            user(json!({"username": "alice "})),
        ),
        (
            Rejection {
                case: "username of spaces only",
                field: "spec.username",
                expected: "must not start or end with whitespace",
            },
            user(json!({"username": "   "})),
        ),
        (
            Rejection {
                case: "username with trailing no-break space",
                field: "spec.username",
                expected: "must not start or end with whitespace",
            },
            user(json!({"username": "alice\u{00a0}"})),
        ),
        (
            Rejection {
                case: "username with a bell character",
                field: "spec.username",
                expected: "must not contain control characters",
            },
            user(json!({"username": "ali\u{0007}ce"})),
        ),
        (
            Rejection {
                case: "username with a newline",
                field: "spec.username",
                expected: "must not contain control characters",
            },
            user(json!({"username": "ali\nce"})),
        ),
        (
            Rejection {
                case: "username with a tab",
                field: "spec.username",
                expected: "must not contain control characters",
            },
            user(json!({"username": "ali\tce"})),
        ),
        (
            Rejection {
                case: "username with DEL",
                field: "spec.username",
                expected: "must not contain control characters",
            },
            user(json!({"username": "alice\u{007f}x"})),
        ),
        (
            Rejection {
                case: "username with a C1 control",
                field: "spec.username",
                expected: "must not contain control characters",
            },
            user(json!({"username": "ali\u{0085}ce"})),
        ),
        (
            Rejection {
                case: "username of 257 characters",
                field: "spec.username",
                expected: "256",
            },
            user(json!({"username": long_username})),
        ),
        (
            Rejection {
                case: "username that is a number",
                field: "spec.username",
                expected: "must be of type string",
            },
            user(json!({"username": 1234567})),
        ),
        // CalendarUser.spec.deletionPolicy
        (
            Rejection {
                case: "user deletionPolicy Keep",
                field: "spec.deletionPolicy",
                expected: "Unsupported value",
            },
            user(json!({"username": "alice", "deletionPolicy": "Keep"})),
        ),
        (
            Rejection {
                case: "user deletionPolicy in lowercase",
                field: "spec.deletionPolicy",
                expected: "Unsupported value",
            },
            user(json!({"username": "alice", "deletionPolicy": "delete"})),
        ),
        // CalendarSync.spec.userRef
        (
            Rejection {
                case: "missing userRef",
                field: "spec.userRef",
                expected: "Required value",
            },
            sync_with("userRef", Value::Null),
        ),
        (
            Rejection {
                case: "userRef without name",
                field: "spec.userRef.name",
                expected: "Required value",
            },
            sync_with("userRef", json!({})),
        ),
        (
            Rejection {
                case: "empty userRef.name",
                field: "spec.userRef.name",
                expected: "at least 1 chars long",
            },
            sync_with("userRef", json!({"name": ""})),
        ),
        (
            Rejection {
                case: "userRef.name in uppercase",
                field: "spec.userRef.name",
                expected: "must be the name of a CalendarUser",
            },
            sync_with("userRef", json!({"name": "Alice"})),
        ),
        (
            Rejection {
                case: "userRef.name with a slash",
                field: "spec.userRef.name",
                expected: "must be the name of a CalendarUser",
            },
            sync_with("userRef", json!({"name": "other/alice"})),
        ),
        // CalendarSync.spec.type
        (
            Rejection {
                case: "missing type",
                field: "spec.type",
                expected: "Required value",
            },
            sync_with("type", Value::Null),
        ),
        (
            Rejection {
                case: "empty type",
                field: "spec.type",
                expected: "at least 1 chars long",
            },
            sync_with("type", json!("")),
        ),
        (
            Rejection {
                case: "type with a slash",
                field: "spec.type",
                expected: "must consist of letters, digits",
            },
            sync_with("type", json!("o365/extra")),
        ),
        (
            Rejection {
                case: "type with a space",
                field: "spec.type",
                expected: "must consist of letters, digits",
            },
            sync_with("type", json!("google calendar")),
        ),
        (
            Rejection {
                case: "type of 65 characters",
                field: "spec.type",
                expected: "64",
            },
            sync_with("type", json!(long_type)),
        ),
        // CalendarSync.spec.smtpAddress
        (
            Rejection {
                case: "smtpAddress without @",
                field: "spec.smtpAddress",
                expected: "must be an email address",
            },
            sync_with("smtpAddress", json!("alice.example.edu")),
        ),
        (
            Rejection {
                case: "smtpAddress without domain",
                field: "spec.smtpAddress",
                expected: "must be an email address",
            },
            sync_with("smtpAddress", json!("alice@")),
        ),
        (
            Rejection {
                case: "smtpAddress with a space",
                field: "spec.smtpAddress",
                expected: "must be an email address",
            },
            sync_with("smtpAddress", json!("alice smith@example.edu")),
        ),
        (
            Rejection {
                case: "smtpAddress with two @",
                field: "spec.smtpAddress",
                expected: "must be an email address",
            },
            sync_with("smtpAddress", json!("alice@smith@example.edu")),
        ),
        (
            Rejection {
                case: "smtpAddress of 256 characters",
                field: "spec.smtpAddress",
                expected: "254",
            },
            sync_with("smtpAddress", json!(long_email)),
        ),
        // CalendarSync.spec.unlinkMode and deletionPolicy
        (
            Rejection {
                case: "unknown unlinkMode",
                field: "spec.unlinkMode",
                expected: "Unsupported value",
            },
            sync_with("unlinkMode", json!("DELETE_EVERYTHING")),
        ),
        (
            Rejection {
                case: "unlinkMode in lowercase",
                field: "spec.unlinkMode",
                expected: "Unsupported value",
            },
            sync_with("unlinkMode", json!("unlink_only")),
        ),
        (
            Rejection {
                case: "sync deletionPolicy Retain",
                field: "spec.deletionPolicy",
                expected: "Unsupported value",
            },
            sync_with("deletionPolicy", json!("Retain")),
        ),
    ];

    let mut failures = Vec::new();
    for (index, (rejection, manifest)) in cases.iter().enumerate() {
        let api = api_for(&client, namespace.name(), manifest);
        let result = api
            .create(
                &PostParams::default(),
                &object(&format!("case-{index}"), manifest.clone()),
            )
            .await;
        failures.extend(check_rejected(rejection, result));
    }
    assert_no_failures(failures, cases.len());
}

#[tokio::test]
async fn immutable_fields_rejected_on_update() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;
    let namespace = TestNamespace::create(&client, "admission-update").await;

    let without_smtp = sync_with("smtpAddress", Value::Null);
    // (rejection, manifest created first, merge patch applied to it)
    let cases: Vec<(Rejection, Value, Value)> = vec![
        (
            Rejection {
                case: "username changed",
                field: "spec.username",
                expected: "username is immutable",
            },
            user(json!({"username": "alice"})),
            json!({"spec": {"username": "bob"}}),
        ),
        (
            Rejection {
                case: "userRef.name changed",
                field: "spec.userRef.name",
                expected: "userRef.name is immutable",
            },
            sync(valid_sync_spec()),
            json!({"spec": {"userRef": {"name": "bob"}}}),
        ),
        (
            Rejection {
                case: "type changed",
                field: "spec.type",
                expected: "type is immutable",
            },
            sync(valid_sync_spec()),
            json!({"spec": {"type": "googlecalendar"}}),
        ),
        (
            Rejection {
                case: "smtpAddress changed",
                field: "spec.smtpAddress",
                expected: "smtpAddress is immutable",
            },
            sync(valid_sync_spec()),
            json!({"spec": {"smtpAddress": "alice.smith@example.edu"}}),
        ),
        (
            Rejection {
                case: "smtpAddress removed",
                field: "spec.smtpAddress",
                expected: "cannot be added or removed",
            },
            sync(valid_sync_spec()),
            json!({"spec": {"smtpAddress": null}}),
        ),
        (
            Rejection {
                case: "smtpAddress added",
                field: "spec.smtpAddress",
                expected: "cannot be added or removed",
            },
            without_smtp,
            json!({"spec": {"smtpAddress": "alice@example.edu"}}),
        ),
    ];

    let mut failures = Vec::new();
    for (index, (rejection, manifest, patch)) in cases.iter().enumerate() {
        let api = api_for(&client, namespace.name(), manifest);
        let name = format!("case-{index}");
        api.create(&PostParams::default(), &object(&name, manifest.clone()))
            .await
            .unwrap_or_else(|error| panic!("{}: the original is valid: {error}", rejection.case));
        let result = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await;
        failures.extend(check_rejected(rejection, result));
    }
    assert_no_failures(failures, cases.len());
}

#[tokio::test]
async fn mutable_fields_accepted_on_update() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;
    let namespace = TestNamespace::create(&client, "admission-mutable").await;

    let manifest = sync(valid_sync_spec());
    let api = api_for(&client, namespace.name(), &manifest);
    api.create(&PostParams::default(), &object("alice-o365", manifest))
        .await
        .expect("a valid CalendarSync is accepted");
    let patch = json!({"spec": {"unlinkMode": "DELETE_FUTURE_EVENTS", "deletionPolicy": "Orphan"}});
    let updated = api
        .patch("alice-o365", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("unlinkMode and deletionPolicy may change");
    assert_eq!(updated.data["spec"]["unlinkMode"], "DELETE_FUTURE_EVENTS");
    assert_eq!(updated.data["spec"]["deletionPolicy"], "Orphan");

    // The immutability rules compare values, so writing the same value again is no change.
    let same = json!({"spec": {"type": "o365", "smtpAddress": "alice@example.edu", "userRef": {"name": "alice"}}});
    api.patch("alice-o365", &PatchParams::default(), &Patch::Merge(&same))
        .await
        .expect("rewriting immutable fields with their values is accepted");

    let user_manifest = user(json!({"username": "alice"}));
    let users = api_for(&client, namespace.name(), &user_manifest);
    users
        .create(&PostParams::default(), &object("alice", user_manifest))
        .await
        .expect("a valid CalendarUser is accepted");
    let updated = users
        .patch(
            "alice",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
        )
        .await
        .expect("deletionPolicy of a CalendarUser may change");
    assert_eq!(updated.data["spec"]["deletionPolicy"], "Orphan");
}

#[tokio::test]
async fn defaults_applied_on_create() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;
    let namespace = TestNamespace::create(&client, "admission-defaults").await;

    let manifest = sync(json!({"userRef": {"name": "alice"}, "type": "o365"}));
    let created = api_for(&client, namespace.name(), &manifest)
        .create(&PostParams::default(), &object("alice-o365", manifest))
        .await
        .expect("a CalendarSync without optional fields is accepted");
    assert_eq!(created.data["spec"]["unlinkMode"], "UNLINK_ONLY");
    assert_eq!(created.data["spec"]["deletionPolicy"], "Delete");
    assert!(created.data["spec"].get("smtpAddress").is_none());

    let manifest = user(json!({"username": "alice"}));
    let created = api_for(&client, namespace.name(), &manifest)
        .create(&PostParams::default(), &object("alice", manifest))
        .await
        .expect("a CalendarUser without deletionPolicy is accepted");
    assert_eq!(created.data["spec"]["deletionPolicy"], "Delete");
}

#[tokio::test]
async fn unusual_valid_values_accepted() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;
    let namespace = TestNamespace::create(&client, "admission-valid").await;

    let max_username = "u".repeat(256);
    let max_type = "t".repeat(64);
    let manifests = [
        user(json!({"username": "Alice.Smith@example.edu"})),
        user(json!({"username": "s1234567"})),
        user(json!({"username": "Alice Smith"})),
        user(json!({"username": "Zoë Ångström"})),
        user(json!({"username": "a/b?c#d%e"})),
        user(json!({"username": "x"})),
        user(json!({"username": max_username})),
        sync_with("type", json!("google_calendar-2.0")),
        sync_with("type", json!(max_type)),
        sync_with(
            "smtpAddress",
            json!("alice.smith+timetable@mail.example-university.ac.uk"),
        ),
        sync_with("userRef", json!({"name": "student-20231234.faculty"})),
        sync_with("unlinkMode", json!("CLEANUP")),
        sync_with("unlinkMode", json!("DELETE_ALL_EVENTS")),
    ];
    for (index, manifest) in manifests.iter().enumerate() {
        let result = api_for(&client, namespace.name(), manifest)
            .create(
                &PostParams::default(),
                &object(&format!("valid-{index}"), manifest.clone()),
            )
            .await;
        assert!(
            result.is_ok(),
            "valid manifest {} was rejected: {:?}",
            manifest["spec"],
            result.err()
        );
    }
}

/// Returns every `.yaml` and `.yml` file under `dir`, recursively, in a stable order.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("the examples folder is readable") {
            let path = entry.expect("the examples folder is readable").path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|extension| extension == "yaml" || extension == "yml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn examples_accepted() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;
    let namespace = TestNamespace::create(&client, "examples").await;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");

    // Phase 1: read every document of every file.
    let mut documents: Vec<(PathBuf, Value)> = Vec::new();
    for file in yaml_files(&examples) {
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|error| panic!("{} is not valid YAML: {error}", file.display()));
        for document in parsed.into_iter().filter(|document| !document.is_null()) {
            documents.push((file.clone(), document));
        }
    }
    let calsync_objects = documents
        .iter()
        .filter(|(_, document)| document["apiVersion"] == "calsync.dev/v1alpha1")
        .count();
    assert!(
        calsync_objects >= 2,
        "examples/ holds only {calsync_objects} calsync objects"
    );

    // Phase 2: create them, Namespaces first so that the objects in them can follow.
    // Kustomization files configure kubectl and are no API objects.
    documents.sort_by_key(|(_, document)| document["kind"] != "Namespace");
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("API discovery succeeds");
    let mut created = 0;
    for (file, document) in documents {
        let api_version = document["apiVersion"].as_str().unwrap_or_default();
        if api_version.starts_with("kustomize.config.k8s.io/") {
            eprintln!(
                "{}: a kustomize configuration, not sent to the API server",
                file.display()
            );
            continue;
        }
        let object: DynamicObject = serde_json::from_value(document.clone())
            .unwrap_or_else(|error| panic!("{}: not a Kubernetes object: {error}", file.display()));
        let types = object
            .types
            .clone()
            .unwrap_or_else(|| panic!("{}: no apiVersion or kind", file.display()));
        let gvk = GroupVersionKind::try_from(&types).expect("apiVersion is group/version");
        let (resource, capabilities) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("{}: the API server does not serve {gvk:?}", file.display()));
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => {
                let target = object
                    .namespace()
                    .unwrap_or_else(|| namespace.name().to_string());
                Api::namespaced_with(client.clone(), &target, &resource)
            }
        };
        if let Err(error) = api.create(&PostParams::default(), &object).await {
            panic!(
                "{}: {} {} was rejected: {error}",
                file.display(),
                types.kind,
                object.name_any()
            );
        }
        created += 1;
    }
    assert!(created >= calsync_objects);
}
