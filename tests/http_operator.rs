//! The read-only API of the real `calsync-operator run` binary: its managed and unmanaged
//! filters follow the CalendarUsers and CalendarSyncs of the cluster, on the leader and on a
//! follower alike.

mod ops_harness;

use ops_harness::*;
use serde_json::{Value, json};

// Arranges alice (managed, with an o365 synchronization a resource declares and an ews one
// that none declares) and drift (no resource at all), and returns the managed sync's id.
async fn arrange(harness: &Harness) -> i64 {
    let remote = harness.sim_client();
    remote.ensure_user("drift").await.expect("user");
    remote
        .create_synchronization("drift", "o365", None)
        .await
        .expect("synchronization");
    create(&harness.users(), &user("alice", "alice")).await;
    create(&harness.syncs(), &sync("alice-o365", "alice", "o365")).await;
    wait_ready(&harness.users(), "alice").await;
    let ready = wait_ready(&harness.syncs(), "alice-o365").await;
    remote
        .create_synchronization("alice", "ews", None)
        .await
        .expect("synchronization");
    ready
        .status
        .and_then(|status| status.sync_id)
        .expect("the ready CalendarSync records its id")
}

// Waits until the operator lists alice as its one managed user and alice's ews
// synchronization as unmanaged, which needs its ownership index and a refresh after the
// arrangement.
async fn wait_for_managed(operator: &Operator, managed_sync: i64) {
    wait_until(
        &format!("{} to list the managed objects", operator.name),
        || async {
            let (status, users) = operator.get_text("/api/v0/users?managed=true").await;
            let (_, syncs) = operator
                .get_text("/api/v0/synchronizations?managed=false")
                .await;
            let users_done = users == r#"{"users":["alice"]}"#;
            // The unmanaged ews synchronization of alice shows that a refresh ran since.
            let syncs_done = syncs.contains(r#""username":"alice","type":"ews""#);
            let seen = format!("{status} {users} {syncs} (managed id {managed_sync})");
            ((users_done && syncs_done).then_some(()), seen)
        },
    )
    .await;
}

async fn get_json(operator: &Operator, path: &str) -> Value {
    let (status, text) = operator.get_text(path).await;
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

fn entries(list: &Value) -> Vec<(String, String)> {
    list["synchronizations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|entry| {
            (
                entry["username"].as_str().expect("username").to_string(),
                entry["type"].as_str().expect("type").to_string(),
            )
        })
        .collect()
}

async fn check_filters(operator: &Operator, managed_sync: i64) {
    wait_for_managed(operator, managed_sync).await;
    assert_eq!(
        get_json(operator, "/api/v0/users?managed=false").await,
        json!({ "users": ["drift"] })
    );
    let managed = get_json(operator, "/api/v0/synchronizations?managed=true").await;
    assert_eq!(entries(&managed), vec![("alice".into(), "o365".into())]);
    assert_eq!(managed["synchronizations"][0]["id"], managed_sync);
    let unmanaged = get_json(operator, "/api/v0/synchronizations?managed=false").await;
    let mut drift = entries(&unmanaged);
    drift.sort();
    assert_eq!(
        drift,
        vec![
            ("alice".into(), "ews".into()),
            ("drift".into(), "o365".into())
        ]
    );
    let alice_drift = get_json(
        operator,
        "/api/v0/users/alice/synchronizations?managed=false",
    )
    .await;
    assert_eq!(entries(&alice_drift), vec![("alice".into(), "ews".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_filters_by_cluster_resources() {
    let harness = Harness::new("api-filters").await;
    let mut operator =
        Operator::start(&harness, "solo", &["--leader-election=false".to_string()]).await;
    let managed_sync = arrange(&harness).await;
    check_filters(&operator, managed_sync).await;

    operator.terminate();
    assert_eq!(operator.wait_exit(WAIT).await.code(), Some(0));
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_filters_like_the_leader() {
    let harness = Harness::new("api-follower").await;
    let flags = election_flags(&harness);
    let mut leader = Operator::start(&harness, "replica-a", &flags).await;
    wait_for_holder(&harness, "replica-a").await;
    let mut follower = Operator::start(&harness, "replica-b", &flags).await;
    let managed_sync = arrange(&harness).await;

    check_filters(&follower, managed_sync).await;
    let holder = lease_holder(&harness).await.unwrap_or_default();
    assert!(holder.starts_with("replica-a_"), "holder {holder:?}");

    follower.terminate();
    assert_eq!(follower.wait_exit(WAIT).await.code(), Some(0));
    leader.terminate();
    assert_eq!(leader.wait_exit(WAIT).await.code(), Some(0));
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_address_in_use_stops_start_up() {
    let harness = Harness::new("api-port").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let address = taken.local_addr().expect("address");
    let flags = [
        format!("--http-listen={address}"),
        "--leader-election=false".to_string(),
    ];
    let mut child = Operator::command(&harness, harness.sim.base_url().as_ref(), "solo", &flags)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("calsync-operator starts");

    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling the child") {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("calsync-operator kept running although {address} is in use");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("listening on {address} failed")),
        "{stderr}"
    );
    drop(taken);
    harness.shutdown().await;
}
