//! The test control plane itself: it starts, serves the CRDs, and cleans up after itself.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::wait::{Condition, conditions};

use calsync_operator::testenv::{BoundedOutput, COMMAND_TIMEOUT, ControlPlane, TestNamespace};

#[tokio::test]
async fn shared_control_plane_serves_both_crds() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for name in ["calendarusers.calsync.dev", "calendarsyncs.calsync.dev"] {
        let crd = crds.get(name).await.expect("the CRD is installed");
        assert!(
            conditions::is_crd_established().matches_object(Some(&crd)),
            "{name} is not Established"
        );
    }
}

#[tokio::test]
async fn kubectl_reaches_shared_control_plane() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let output = control_plane
        .kubectl()
        .args(["get", "crd", "calendarsyncs.calsync.dev", "-o", "name"])
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("{}: {error}", "kubectl runs"));
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "customresourcedefinition.apiextensions.k8s.io/calendarsyncs.calsync.dev"
    );
}

#[tokio::test]
async fn test_namespace_deleted_on_drop() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());

    let namespace = TestNamespace::create(&client, "testenv-drop").await;
    let name = namespace.name().to_string();
    assert!(name.starts_with("testenv-drop-"), "{name}");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("probe".to_string()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    config_maps
        .create(&PostParams::default(), &config_map)
        .await
        .expect("objects can be created in the test namespace");

    drop(namespace);
    // Without a namespace controller the namespace stays Terminating instead of vanishing.
    let after = namespaces.get_opt(&name).await.expect("the API answers");
    let deleted = match after {
        None => true,
        Some(namespace) => namespace.metadata.deletion_timestamp.is_some(),
    };
    assert!(deleted, "namespace {name} was not deleted on drop");
}

// shared() and client() must not assume a runtime flavour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_works_from_multi_threaded_runtime() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;
    let version = client.apiserver_version().await.expect("the API answers");
    assert_eq!(version.major, "1");
}

#[test]
fn private_control_plane_stops_on_drop() {
    if ControlPlane::shared_or_skip().is_none() {
        return;
    }
    let control_plane = ControlPlane::start().expect("a private control plane starts");
    let kubeconfig = control_plane.kubeconfig().to_path_buf();
    let address = control_plane
        .server_url()
        .trim_start_matches("https://")
        .to_string();
    assert!(kubeconfig.exists());
    assert!(std::net::TcpStream::connect(&address).is_ok());

    drop(control_plane);
    assert!(!kubeconfig.exists(), "the temporary folder was not removed");
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "kube-apiserver still listens on {address}"
    );
}

/// Reads the `server:` address (host:port) from a kubeconfig written by testenv.
fn server_address(kubeconfig: &std::path::Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).expect("the kubeconfig is readable");
    let server = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("server: "))
        .expect("the kubeconfig names a server");
    server.trim_start_matches("https://").to_string()
}

// The shared control plane can only be stopped at exit or by the kernel, so the kernel path
// (PR_SET_PDEATHSIG) is checked on calsync-devenv, which uses the same spawning code.
#[test]
fn control_plane_dies_with_killed_parent() {
    use calsync_operator::testenv::first_line_within;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    if ControlPlane::shared_or_skip().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut devenv = Command::new(env!("CARGO_BIN_EXE_calsync-devenv"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("calsync-devenv starts");
    // Start-up may wait 120 s for /readyz of kube-apiserver and 30 s for the CRDs.
    let first_line = first_line_within(&mut devenv, "calsync-devenv", Duration::from_secs(180))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(first_line, "ready");
    let address = server_address(&kubeconfig);
    assert!(std::net::TcpStream::connect(&address).is_ok());

    devenv.kill().unwrap();
    devenv.wait().unwrap();

    // SIGKILL is delivered at once; the wait only covers the kernel tearing the process down.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&address).is_ok() {
        assert!(
            Instant::now() < deadline,
            "kube-apiserver at {address} outlived its killed parent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A killed process cannot remove its own temporary folder: the folder of its CA file.
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let ca_file = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("certificate-authority: "))
        .expect("the kubeconfig names its CA file");
    let leftover = std::path::Path::new(ca_file).parent().unwrap();
    assert!(
        leftover.starts_with(std::env::temp_dir()),
        "{}",
        leftover.display()
    );
    std::fs::remove_dir_all(leftover).unwrap();
}
