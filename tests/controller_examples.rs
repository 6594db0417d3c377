//! The manifests in examples/ against the controller: applied, every resource becomes Ready
//! with matching remote state; deleted, the remote state is what each deletionPolicy and
//! unlinkMode requests.

mod controller_harness;

use std::collections::BTreeMap;
use std::path::Path;

use calsync_operator::resources::{CalendarSync, CalendarUser, DeletionPolicy, reason};
use calsync_operator::sim::{EventSource, SimConfig, Simulator};
use calsync_operator::testenv::{BoundedOutput, COMMAND_TIMEOUT, ControlPlane};
use controller_harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};

const NAMESPACES: [&str; 3] = ["faculty-science", "faculty-humanities", "faculty-medicine"];

async fn list_all<K>(client: &kube::Client) -> Vec<K>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut objects = Vec::new();
    for namespace in NAMESPACES {
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        objects.extend(api.list(&ListParams::default()).await.expect("list").items);
    }
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_converge_and_clean_up_by_policy() {
    calsync_operator::install_rustls_provider();
    let control_plane = ControlPlane::shared();
    let client = control_plane.client().await;
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), SimConfig::new(TOKEN))
        .await
        .expect("simulator");

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let output = control_plane
        .kubectl()
        .arg("apply")
        .arg("-k")
        .arg(&examples)
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("{}: {error}", "kubectl runs"));
    assert!(
        output.status.success(),
        "kubectl apply -k examples/ failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The token comes from the example's Secret, which contains a placeholder at first.
    let config = run_config(vec![
        "calsync-operator".to_string(),
        format!("--mytimetable-url={}", sim.base_url()),
        "--token-secret-namespace=calsync-system".to_string(),
        "--token-secret-name=mytimetable-token".to_string(),
        format!("--namespaces={}", NAMESPACES.join(",")),
        "--resync-interval=5s".to_string(),
        "--request-timeout=2s".to_string(),
    ]);
    let (shutdown, controller) = spawn_controller(config).await;
    let science: Api<CalendarUser> = Api::namespaced(client.clone(), "faculty-science");
    wait_reason(&science, "alice", reason::UNAUTHORIZED).await;

    // Rotating the Secret to the real token is picked up without a restart.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "calsync-system");
    let patch = serde_json::json!({"stringData": {"token": TOKEN}});
    secrets
        .patch(
            "mytimetable-token",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("patch the Secret");

    let users: Vec<CalendarUser> = list_all(&client).await;
    let syncs: Vec<CalendarSync> = list_all(&client).await;
    assert!(!users.is_empty(), "examples/ created no CalendarUser");
    assert!(!syncs.is_empty(), "examples/ created no CalendarSync");
    for user in &users {
        let api: Api<CalendarUser> = Api::namespaced(client.clone(), &user.namespace().unwrap());
        wait_ready(&api, &user.name_any()).await;
    }
    let mut ids = BTreeMap::new();
    for sync in &syncs {
        let api: Api<CalendarSync> = Api::namespaced(client.clone(), &sync.namespace().unwrap());
        let ready = wait_ready(&api, &sync.name_any()).await;
        let status = ready.status.expect("status");
        ids.insert(
            sync.name_any(),
            (status.sync_id.expect("id"), status.username.expect("user")),
        );
    }

    // The remote state matches the resources exactly.
    let remote = sim_client(&sim)
        .list_synchronizations()
        .await
        .expect("list");
    assert_eq!(remote.len(), syncs.len(), "{remote:?}");
    for sync in &syncs {
        let (id, username) = &ids[&sync.name_any()];
        let entry = remote
            .iter()
            .find(|r| r.id == *id)
            .expect("recorded id exists");
        assert_eq!(&entry.username, username);
        assert_eq!(entry.type_, sync.spec.type_);
    }
    let remote_users = sim_client(&sim).list_users().await.expect("users");
    for user in &users {
        assert!(
            remote_users.contains(&user.spec.username),
            "{}",
            user.spec.username
        );
    }

    // Deleting the CalendarUsers deletes their CalendarSyncs; each finalizer applies its own
    // policy and unlinkMode.
    for user in &users {
        let api: Api<CalendarUser> = Api::namespaced(client.clone(), &user.namespace().unwrap());
        delete(&api, &user.name_any()).await;
    }
    for user in &users {
        let api: Api<CalendarUser> = Api::namespaced(client.clone(), &user.namespace().unwrap());
        wait_gone(&api, &user.name_any()).await;
    }
    let remote = sim_client(&sim)
        .list_synchronizations()
        .await
        .expect("list");
    for sync in &syncs {
        let (id, username) = &ids[&sync.name_any()];
        let kept = remote.iter().any(|r| r.id == *id);
        match sync.spec.deletion_policy {
            DeletionPolicy::Orphan => assert!(kept, "{} must stay", sync.name_any()),
            DeletionPolicy::Delete => assert!(!kept, "{} must be unlinked", sync.name_any()),
        }
        // CLEANUP removes every pushed event of the user, also those of orphaned syncs.
        if sync.spec.unlink_mode == calsync_operator::resources::UnlinkMode::Cleanup {
            let pushed = sim
                .events(username)
                .into_iter()
                .filter(|e| matches!(e.source, EventSource::Synchronization { .. }))
                .count();
            assert_eq!(pushed, 0, "{username} keeps pushed events after CLEANUP");
        }
    }
    let remote_users = sim_client(&sim).list_users().await.expect("users");
    for user in &users {
        let kept = remote_users.contains(&user.spec.username);
        match user.spec.deletion_policy {
            DeletionPolicy::Orphan => assert!(kept, "{} must stay", user.spec.username),
            DeletionPolicy::Delete => assert!(!kept, "{} must be deleted", user.spec.username),
        }
    }

    shutdown.cancel();
    controller.await.expect("controller stops");
    sim.shutdown().await;
}
