//! The start-up check of the installed CRDs against the real kube-apiserver: the current
//! CRDs pass; an older CRD with fewer fields stops `calsync-operator run` with a message that
//! names the fields and the fix, and the documented fix makes the check pass again.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use calsync_operator::crdcheck::{self, Error, Finding, UPGRADE_COMMAND};
use calsync_operator::resources;
use calsync_operator::testenv::{
    BoundedOutput, COMMAND_TIMEOUT, ControlPlane, wait_with_output_within,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

const SYNCS_CRD: &str = "calendarsyncs.calsync.dev";
const USERS_CRD: &str = "calendarusers.calsync.dev";

/// A bound on the failing start-up of `calsync-operator run`; it normally exits within a
/// second, after two CRD reads.
const RUN_EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn outdated_findings(result: Result<(), Error>) -> Vec<Finding> {
    match result {
        Err(Error::Outdated(outdated)) => outdated.findings,
        other => panic!("expected outdated CRDs, got {other:?}"),
    }
}

// Replaces the installed CalendarSync CRD with one whose schema lacks `spec.unlinkMode` and
// `status.pendingCreate`, like the CRD of an older operator version.
async fn install_reduced_sync_crd(client: &kube::Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd = api.get(SYNCS_CRD).await.expect("the CRD is installed");
    let schema = crd.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|schema| schema.open_api_v3_schema.as_mut())
        .expect("the CRD has a schema");
    let properties = schema.properties.as_mut().expect("root properties");
    for (object, field) in [("spec", "unlinkMode"), ("status", "pendingCreate")] {
        let removed = properties
            .get_mut(object)
            .and_then(|object| object.properties.as_mut())
            .and_then(|fields| fields.remove(field));
        assert!(removed.is_some(), "{object}.{field} is in the current CRD");
    }
    api.replace(SYNCS_CRD, &PostParams::default(), &crd)
        .await
        .expect("kube-apiserver accepts the reduced CRD");
}

// Runs `calsync-operator run` against the control plane and returns its exit success and
// standard error, killing it if it does not exit within RUN_EXIT_TIMEOUT.
fn run_operator(control_plane: &ControlPlane) -> (bool, String) {
    let token = tempfile::NamedTempFile::new().expect("temporary token file");
    std::fs::write(token.path(), "crd-check-token").expect("write the token");
    let child = Command::new(env!("CARGO_BIN_EXE_calsync-operator"))
        .arg("run")
        .arg("--kubeconfig")
        .arg(control_plane.kubeconfig())
        // Loopback and never contacted: the check fails before any MyTimetable request.
        .arg("--mytimetable-url=http://127.0.0.1:9/api/v0")
        .arg("--token-file")
        .arg(token.path())
        .arg("--http-listen=127.0.0.1:0")
        .arg("--leader-election=false")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("calsync-operator starts");
    let output = wait_with_output_within(child, "calsync-operator", RUN_EXIT_TIMEOUT)
        .unwrap_or_else(|error| panic!("calsync-operator run did not stop: {error}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// A control plane of the test's own, because these tests change the installed CRDs that
// every other test of the shared one relies on.
fn private_control_plane() -> (ControlPlane, tokio::runtime::Runtime, kube::Client) {
    let control_plane = ControlPlane::start().expect("a private control plane");
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let client = runtime.block_on(control_plane.client());
    (control_plane, runtime, client)
}

#[tokio::test]
async fn current_crds_pass_the_check() {
    let client = ControlPlane::shared().client().await;
    crdcheck::check(&client)
        .await
        .expect("the CRDs from crds/ pass");
}

#[test]
fn older_crd_stops_run_with_fix() {
    let (control_plane, runtime, client) = private_control_plane();
    runtime.block_on(install_reduced_sync_crd(&client));

    // The library reports exactly the removed fields.
    let findings = outdated_findings(runtime.block_on(crdcheck::check(&client)));
    assert_eq!(
        findings,
        vec![Finding::MissingFields {
            crd: SYNCS_CRD.to_string(),
            fields: vec![
                "spec.unlinkMode".to_string(),
                "status.pendingCreate".to_string()
            ],
        }]
    );

    // The binary stops before reconciling and prints what is missing and what to run.
    let (succeeded, stderr) = run_operator(&control_plane);
    assert!(!succeeded, "calsync-operator run passed: {stderr}");
    assert!(
        stderr.contains("calendarsyncs.calsync.dev v1alpha1 lacks the fields spec.unlinkMode, status.pendingCreate"),
        "{stderr}"
    );
    assert!(stderr.contains(UPGRADE_COMMAND), "{stderr}");

    // The command from the message, run from the repository root, fixes it.
    let output = control_plane
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f", "crds/"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("kubectl runs: {error}"));
    assert!(
        output.status.success(),
        "{UPGRADE_COMMAND} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    runtime
        .block_on(crdcheck::check(&client))
        .expect("the upgraded CRDs pass");
}

#[test]
fn missing_crd_is_reported() {
    // A control plane that never had the CalendarUser CRD. Deleting it from one that had it
    // would wait for the apiextensions finalizer, which can take long on a loaded machine.
    let control_plane = ControlPlane::builder()
        .install_crds(false)
        .start()
        .expect("a private control plane without CRDs");
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let client = runtime.block_on(control_plane.client());
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let syncs_crd = resources::crds()
        .into_iter()
        .find(|crd| crd.name_any() == SYNCS_CRD)
        .expect("the CalendarSync CRD is generated");
    runtime
        .block_on(api.create(&PostParams::default(), &syncs_crd))
        .expect("create the CalendarSync CRD");

    let findings = outdated_findings(runtime.block_on(crdcheck::check(&client)));
    assert_eq!(
        findings,
        vec![Finding::NotInstalled {
            crd: USERS_CRD.to_string()
        }]
    );
}

#[tokio::test]
async fn forbidden_read_names_the_permission() {
    calsync_operator::install_rustls_provider();
    let control_plane = ControlPlane::shared();
    let kubeconfig = Kubeconfig::read_from(control_plane.kubeconfig()).expect("kubeconfig");
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("client config");
    // A service account without any role binding.
    config.auth_info.impersonate = Some("system:serviceaccount:default:no-permissions".into());
    let client = kube::Client::try_from(config).expect("client");
    let error = crdcheck::check(&client).await.expect_err("forbidden");
    let message = error.to_string();
    assert!(matches!(error, Error::Read { .. }), "{message}");
    assert!(
        message.contains("grant get on customresourcedefinitions"),
        "{message}"
    );
}
