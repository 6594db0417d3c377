//! Tests of the example manifests in examples/: the kustomization lists every file, the
//! manifests cover what a university needs and use only fields the CRD types know, and
//! `kubectl apply -k examples/` succeeds against the real kube-apiserver of
//! `calsync_operator::testenv`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use calsync_operator::resources::{CalendarSync, CalendarUser, DeletionPolicy, UnlinkMode};
use calsync_operator::testenv::{BoundedOutput, COMMAND_TIMEOUT, ControlPlane};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use pretty_assertions::assert_eq;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Returns the files that examples/kustomization.yaml lists under `resources`.
fn kustomization_resources() -> Vec<String> {
    let path = examples_dir().join("kustomization.yaml");
    let kustomization: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|error| panic!("{} is invalid YAML: {error}", path.display()));
    kustomization["resources"]
        .as_array()
        .expect("the kustomization has no resources")
        .iter()
        .map(|resource| resource.as_str().unwrap().to_string())
        .collect()
}

/// Returns every object of every file the kustomization lists, in order.
fn example_objects() -> Vec<Value> {
    let mut objects = Vec::new();
    for file in kustomization_resources() {
        let path = examples_dir().join(&file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|error| panic!("{file} is invalid YAML: {error}"));
        objects.extend(documents.into_iter().filter(|document| !document.is_null()));
    }
    objects
}

/// Fails when `original` has a field, at any depth, that `typed` lacks or has with another
/// value, because the typed resource dropped a misspelled or unknown field.
fn assert_fields_known(original: &Value, typed: &Value, path: &str) {
    match (original, typed) {
        (Value::Object(original), Value::Object(typed)) => {
            for (key, value) in original {
                let child = format!("{path}.{key}");
                let typed_value = typed
                    .get(key)
                    .unwrap_or_else(|| panic!("{child} is not a field of the CRD type"));
                assert_fields_known(value, typed_value, &child);
            }
        }
        _ => assert_eq!(
            original, typed,
            "{path} changed in a round trip through the type"
        ),
    }
}

/// Parses every example object of `kind` into its Rust type and checks its spec has no
/// field the type does not know.
fn typed<T: DeserializeOwned + serde::Serialize>(objects: &[Value], kind: &str) -> Vec<T> {
    objects
        .iter()
        .filter(|object| object["kind"] == kind)
        .map(|object| {
            let name = object["metadata"]["name"].as_str().unwrap_or("?");
            let parsed: T = serde_json::from_value(object.clone())
                .unwrap_or_else(|error| panic!("{kind} {name} does not parse: {error}"));
            let round_trip = serde_json::to_value(&parsed).unwrap();
            assert_fields_known(
                &object["spec"],
                &round_trip["spec"],
                &format!("{kind} {name}: spec"),
            );
            parsed
        })
        .collect()
}

/// Returns every unlink mode. The match makes a new variant fail to compile here until the
/// examples cover it.
fn all_unlink_modes() -> Vec<UnlinkMode> {
    let modes = [
        UnlinkMode::UnlinkOnly,
        UnlinkMode::DeleteFutureEvents,
        UnlinkMode::DeleteAllEvents,
        UnlinkMode::Cleanup,
    ];
    for mode in modes {
        match mode {
            UnlinkMode::UnlinkOnly
            | UnlinkMode::DeleteFutureEvents
            | UnlinkMode::DeleteAllEvents
            | UnlinkMode::Cleanup => {}
        }
    }
    modes.to_vec()
}

#[test]
fn kustomization_lists_every_manifest() {
    let listed: BTreeSet<String> = kustomization_resources().into_iter().collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk);
}

#[test]
fn examples_use_known_fields() {
    let objects = example_objects();
    let users: Vec<CalendarUser> = typed(&objects, "CalendarUser");
    let syncs: Vec<CalendarSync> = typed(&objects, "CalendarSync");
    assert!(users.len() >= 4, "only {} CalendarUsers", users.len());
    assert!(syncs.len() >= 5, "only {} CalendarSyncs", syncs.len());

    let kinds: BTreeSet<&str> = objects
        .iter()
        .map(|object| object["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["CalendarSync", "CalendarUser", "Namespace", "Secret"])
    );
}

#[test]
fn examples_cover_username_styles() {
    let users: Vec<CalendarUser> = typed(&example_objects(), "CalendarUser");
    let usernames: Vec<&str> = users
        .iter()
        .map(|user| user.spec.username.as_str())
        .collect();

    let plain = |name: &&str| name.chars().all(|c| c.is_ascii_lowercase());
    let numeric = |name: &&str| name.chars().all(|c| c.is_ascii_digit());
    let email = |name: &&str| name.contains('@');
    let mixed_case = |name: &&str| {
        !name.contains('@')
            && name.chars().any(|c| c.is_ascii_uppercase())
            && name.chars().any(|c| c.is_ascii_lowercase())
    };
    assert!(
        usernames.iter().any(plain),
        "no plain lowercase username in {usernames:?}"
    );
    assert!(
        usernames.iter().any(numeric),
        "no numeric username in {usernames:?}"
    );
    assert!(
        usernames.iter().any(email),
        "no email-style username in {usernames:?}"
    );
    assert!(
        usernames.iter().any(mixed_case),
        "no mixed-case username in {usernames:?}"
    );

    // MyTimetable usernames are global to the site, so two resources must not share one.
    let unique: BTreeSet<&str> = usernames.iter().copied().collect();
    assert_eq!(
        unique.len(),
        usernames.len(),
        "a username repeats in {usernames:?}"
    );
}

#[test]
fn examples_cover_types_and_unlink_modes() {
    let objects = example_objects();
    let syncs: Vec<CalendarSync> = typed(&objects, "CalendarSync");

    let types: BTreeSet<&str> = syncs.iter().map(|sync| sync.spec.type_.as_str()).collect();
    for expected in ["o365", "googlecalendar", "ews"] {
        assert!(
            types.contains(expected),
            "no CalendarSync of type {expected}"
        );
    }
    assert!(
        syncs
            .iter()
            .any(|sync| sync.spec.type_ == "o365" && sync.spec.smtp_address.is_some()),
        "no o365 CalendarSync with smtpAddress"
    );

    // Each mode is written out on a CalendarSync that is deleted with it (policy Delete).
    let explicit_modes: BTreeSet<&str> = objects
        .iter()
        .filter(|object| object["kind"] == "CalendarSync")
        .filter(|object| object["spec"]["deletionPolicy"] != "Orphan")
        .filter_map(|object| object["spec"]["unlinkMode"].as_str())
        .collect();
    for mode in all_unlink_modes() {
        assert!(
            explicit_modes.contains(mode.as_str()),
            "no CalendarSync unlinks with {}",
            mode.as_str()
        );
    }

    assert!(
        syncs
            .iter()
            .any(|sync| sync.spec.deletion_policy == DeletionPolicy::Orphan),
        "no CalendarSync with deletionPolicy Orphan"
    );
}

#[test]
fn examples_reference_existing_objects() {
    let objects = example_objects();
    let namespaces: BTreeSet<&str> = objects
        .iter()
        .filter(|object| object["kind"] == "Namespace")
        .map(|object| object["metadata"]["name"].as_str().unwrap())
        .collect();
    for object in objects
        .iter()
        .filter(|object| object["kind"] != "Namespace")
    {
        let namespace = object["metadata"]["namespace"].as_str();
        assert!(
            namespace.is_some_and(|namespace| namespaces.contains(namespace)),
            "{} {} is in namespace {namespace:?}, which namespaces.yaml does not create",
            object["kind"],
            object["metadata"]["name"]
        );
    }

    let users: BTreeSet<(String, String)> = typed::<CalendarUser>(&objects, "CalendarUser")
        .iter()
        .map(|user| (user.namespace().unwrap(), user.name_any()))
        .collect();
    for sync in typed::<CalendarSync>(&objects, "CalendarSync") {
        let reference = (sync.namespace().unwrap(), sync.spec.user_ref.name.clone());
        assert!(
            users.contains(&reference),
            "CalendarSync {} refers to a missing CalendarUser {reference:?}",
            sync.name_any()
        );
    }

    // The Secret matches the Helm chart's default token.secretName and token.secretKey.
    let secret = objects
        .iter()
        .find(|object| object["kind"] == "Secret")
        .expect("no token Secret");
    assert_eq!(secret["metadata"]["name"], "mytimetable-token");
    assert_eq!(secret["metadata"]["namespace"], "calsync-system");
    let token = secret["stringData"]["token"]
        .as_str()
        .expect("the Secret has no stringData.token");
    assert!(
        token.starts_with("REPLACE-"),
        "the example token must be an obvious placeholder"
    );
}

#[tokio::test]
async fn kubectl_apply_k_succeeds() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let output = control_plane
        .kubectl()
        .args(["apply", "--server-side", "-k"])
        .arg(examples_dir())
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("{}: {error}", "failed to run kubectl"));
    assert!(
        output.status.success(),
        "kubectl apply -k examples/ failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Every object came back from the API server, with the CRD's defaults filled in.
    let client = control_plane.client().await;
    let objects = example_objects();
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for object in &objects {
        *expected
            .entry(object["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let users: Api<CalendarUser> = Api::all(client.clone());
    let syncs: Api<CalendarSync> = Api::all(client.clone());
    let stored_users = users.list(&Default::default()).await.unwrap().items;
    let stored_syncs = syncs.list(&Default::default()).await.unwrap().items;
    assert_eq!(stored_users.len(), expected["CalendarUser"]);
    assert_eq!(stored_syncs.len(), expected["CalendarSync"]);

    let orphan = stored_syncs
        .iter()
        .find(|sync| sync.name_any() == "mvandijk-google")
        .expect("mvandijk-google was not stored");
    assert_eq!(
        orphan.spec.unlink_mode,
        UnlinkMode::UnlinkOnly,
        "the CRD default for unlinkMode"
    );
    let numeric = stored_users
        .iter()
        .find(|user| user.name_any() == "student-20231234")
        .expect("student-20231234 was not stored");
    assert_eq!(
        numeric.spec.username, "20231234",
        "a numeric username stays a string"
    );

    let secrets: Api<Secret> = Api::namespaced(client, "calsync-system");
    let secret = secrets
        .get("mytimetable-token")
        .await
        .expect("the token Secret was not stored");
    assert!(secret.data.unwrap().contains_key("token"));
}
