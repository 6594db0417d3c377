//! The checked-in CRD files match the Rust types, and kubectl shows what the CRDs promise:
//! printer columns, short names, the `calsync` category and field documentation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use calsync_operator::resources::{
    self, CalendarSync, CalendarSyncSpec, CalendarUser, CalendarUserSpec, DeletionPolicy,
    UnlinkMode, UserReference,
};
use calsync_operator::testenv::{BoundedOutput, COMMAND_TIMEOUT, ControlPlane, TestNamespace};

const FIX: &str = "run `make crds` to regenerate crds/ and commit the result";

fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

#[test]
fn crd_files_match_generated() {
    for crd in resources::crds() {
        let path = crds_dir().join(resources::crd_file_name(&crd));
        let generated = resources::crd_yaml(&crd).expect("the CRD renders as YAML");
        let checked_in = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}; {FIX}", path.display()));
        assert!(
            checked_in == generated,
            "{} differs from what the Rust types generate; {FIX}",
            path.display()
        );
    }
}

#[test]
fn crds_folder_holds_only_generated_files() {
    let expected: Vec<String> = resources::crds()
        .iter()
        .map(resources::crd_file_name)
        .collect();
    let mut found: Vec<String> = std::fs::read_dir(crds_dir())
        .expect("crds/ exists")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(found, expected_sorted, "crds/ holds other files; {FIX}");
}

#[test]
fn crds_command_prints_checked_in_files() {
    let output = Command::new(env!("CARGO_BIN_EXE_calsync-operator"))
        .arg("crds")
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("{}: {error}", "calsync-operator runs"));
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();

    let files: Vec<String> = resources::crds()
        .iter()
        .map(|crd| std::fs::read_to_string(crds_dir().join(resources::crd_file_name(crd))).unwrap())
        .collect();
    assert_eq!(printed, files.join("---\n"));
}

fn kubectl_output(mut command: Command) -> String {
    let output = command
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("{}: {error}", "kubectl runs"));
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Returns the value in `column` of the first data row of a `kubectl get` table.
fn table_cell(table: &str, column: &str) -> String {
    let mut lines = table.lines();
    let header = lines.next().expect("the table has a header");
    let row = lines.next().expect("the table has a row");
    let start = header
        .find(column)
        .unwrap_or_else(|| panic!("no column {column} in {header}"));
    // Columns are left-aligned at the header's offsets, so the cell ends where the next
    // header starts.
    let end = header[start + column.len()..]
        .find(|c: char| !c.is_whitespace())
        .map(|offset| start + column.len() + offset)
        .unwrap_or(row.len());
    row.get(start..end.min(row.len()))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test]
async fn kubectl_get_shows_printer_columns() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;
    let namespace = TestNamespace::create(&client, "printer-columns").await;
    let ns = namespace.name();

    // A user and a synchronization whose status the controller would have written.
    let users: Api<CalendarUser> = Api::namespaced(client.clone(), ns);
    let user = CalendarUser::new(
        "alice",
        CalendarUserSpec {
            username: "Alice.Smith@example.edu".to_string(),
            deletion_policy: DeletionPolicy::Delete,
        },
    );
    users.create(&PostParams::default(), &user).await.unwrap();
    let syncs: Api<CalendarSync> = Api::namespaced(client.clone(), ns);
    let sync = CalendarSync::new(
        "alice-o365",
        CalendarSyncSpec {
            user_ref: UserReference {
                name: "alice".to_string(),
            },
            type_: "o365".to_string(),
            smtp_address: None,
            unlink_mode: UnlinkMode::UnlinkOnly,
            deletion_policy: DeletionPolicy::Delete,
        },
    );
    syncs.create(&PostParams::default(), &sync).await.unwrap();
    let ready = json!({"status": {
        "syncId": 4711,
        "conditions": [
            {"type": "Other", "status": "False", "reason": "Other", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Ready", "status": "True", "reason": "Provisioned", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ],
    }});
    syncs
        .patch_status("alice-o365", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    users
        .patch_status("alice", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();

    let mut get_syncs = control_plane.kubectl();
    get_syncs.args(["get", "csync", "-n", ns]);
    let table = kubectl_output(get_syncs);
    assert_eq!(table_cell(&table, "NAME"), "alice-o365", "{table}");
    assert_eq!(table_cell(&table, "USER"), "alice", "{table}");
    assert_eq!(table_cell(&table, "TYPE"), "o365", "{table}");
    assert_eq!(table_cell(&table, "SYNC ID"), "4711", "{table}");
    assert_eq!(table_cell(&table, "READY"), "True", "{table}");
    assert!(table.lines().next().unwrap().ends_with("AGE"), "{table}");

    let mut get_users = control_plane.kubectl();
    get_users.args(["get", "caluser", "-n", ns]);
    let table = kubectl_output(get_users);
    assert_eq!(
        table_cell(&table, "USERNAME"),
        "Alice.Smith@example.edu",
        "{table}"
    );
    assert_eq!(table_cell(&table, "READY"), "True", "{table}");

    // The category lists both kinds.
    let mut get_category = control_plane.kubectl();
    get_category.args(["get", "calsync", "-n", ns, "-o", "name"]);
    let names = kubectl_output(get_category);
    assert!(names.contains("calendaruser.calsync.dev/alice"), "{names}");
    assert!(
        names.contains("calendarsync.calsync.dev/alice-o365"),
        "{names}"
    );
}

#[test]
fn kubectl_explain_documents_fields() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let cases = [
        ("calendaruser", "A user profile in MyTimetable"),
        ("calendaruser.spec.username", "1 to 256 characters"),
        ("calendaruser.spec.deletionPolicy", "(default)"),
        ("calendarsync", "A push synchronization"),
        ("calendarsync.spec.userRef.name", "CalendarUser"),
        ("calendarsync.spec.type", "1 to 64 letters"),
        ("calendarsync.spec.smtpAddress", "provisioning_smtpAddress"),
        ("calendarsync.spec.unlinkMode", "UNLINK_ONLY` (default)"),
        ("calendarsync.status.syncId", "MyTimetable synchronization"),
        ("calendarsync.status.conditions", "Ready"),
    ];
    // kube-apiserver publishes the OpenAPI of a new CRD some seconds after it became
    // Established, and `kubectl explain` reads that OpenAPI.
    let deadline = Instant::now() + Duration::from_secs(60);
    for kind in ["calendaruser", "calendarsync"] {
        loop {
            let mut explain = control_plane.kubectl();
            let output = explain
                .args(["explain", kind])
                .output_within(COMMAND_TIMEOUT)
                .unwrap_or_else(|error| panic!("{error}"));
            if output.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the OpenAPI of {kind} was not published: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    for (field, expected) in cases {
        let mut explain = control_plane.kubectl();
        explain.args(["explain", field]);
        // kubectl wraps descriptions to its own width.
        let text = kubectl_output(explain)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            text.contains(expected),
            "{field}: {expected:?} missing in:\n{text}"
        );
    }
}
