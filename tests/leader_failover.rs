//! Two replicas of the real `calsync-operator run` binary on the real kube-apiserver. Only the
//! Lease holder writes to MyTimetable and to the API server, and the follower serves its API
//! and probes. The follower takes over when the leader stops gracefully or is killed.
//!
//! Each replica talks to a simulator of its own, so the simulators' request counters tell
//! which replica wrote to MyTimetable; the `reportingInstance` of the events tells which
//! replica wrote to the API server.

mod ops_harness;

use calsync_operator::sim::{RunningSimulator, SimConfig, Simulator};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use ops_harness::*;

/// Counts the requests that change something in the simulator.
fn writes(sim: &RunningSimulator) -> u64 {
    sim.requests()
        .requests
        .iter()
        .filter(|request| !request.endpoint.starts_with("GET "))
        .map(|request| request.count)
        .sum()
}

/// Returns the `reportingInstance` of every event in the test's namespace.
async fn event_instances(harness: &Harness) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(harness.client.clone(), harness.ns());
    events
        .list(&ListParams::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .map(|event| event.reporting_instance.unwrap_or_default())
        .collect()
}

// Starts replica-a as the leader and replica-b as its follower, each against its own
// simulator, and checks that only replica-a reconciles alice.
async fn leader_and_follower(harness: &Harness, sim_b: &RunningSimulator) -> (Operator, Operator) {
    let flags = election_flags(harness);
    let a = Operator::start(harness, "replica-a", &flags).await;
    wait_for_holder(harness, "replica-a").await;
    let b = Operator::start_against(harness, sim_b.base_url().as_ref(), "replica-b", &flags).await;

    create(&harness.users(), &user("alice", "alice")).await;
    create(&harness.syncs(), &sync("alice-o365", "alice", "o365")).await;
    wait_ready(&harness.users(), "alice").await;
    wait_ready(&harness.syncs(), "alice-o365").await;

    // The follower is ready and serves its API from its own remote view.
    wait_until("replica-b to be ready", || async {
        let (status, text) = b.get_text("/readyz").await;
        ((status == 200).then_some(()), text)
    })
    .await;
    let (status, _) = b.get_text("/api/v0/users").await;
    assert_eq!(status, 200);
    assert_eq!(a.metrics().await.expect("calsync_leader", &[]), 1.0);
    assert_eq!(b.metrics().await.expect("calsync_leader", &[]), 0.0);

    assert!(
        harness.sim.requests().count("PUT /users/{username}") >= 1,
        "{:?}",
        harness.sim.requests()
    );
    assert_eq!(
        writes(sim_b),
        0,
        "the follower wrote: {:?}",
        sim_b.requests()
    );
    let instances = event_instances(harness).await;
    assert!(!instances.is_empty(), "the leader emitted no events");
    assert!(
        instances.iter().all(|instance| instance == "replica-a"),
        "events from other replicas: {instances:?}"
    );
    (a, b)
}

// Checks that replica-b leads: it reconciles a new user against its own simulator.
async fn follower_leads(harness: &Harness, sim_b: &RunningSimulator, b: &Operator) {
    wait_for_holder(harness, "replica-b").await;
    create(&harness.users(), &user("bob", "bob")).await;
    wait_ready(&harness.users(), "bob").await;
    assert!(
        sim_b.requests().count("PUT /users/{username}") >= 1,
        "{:?}",
        sim_b.requests()
    );
    wait_until("replica-b to report leadership", || async {
        let leader = b.metrics().await.value("calsync_leader", &[]);
        ((leader == Some(1.0)).then_some(()), format!("{leader:?}"))
    })
    .await;
    let instances = event_instances(harness).await;
    assert!(
        instances.iter().any(|instance| instance == "replica-b"),
        "no events from the new leader: {instances:?}"
    );
}

async fn second_simulator() -> RunningSimulator {
    Simulator::start("127.0.0.1:0".parse().unwrap(), SimConfig::new(TOKEN))
        .await
        .expect("simulator starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_takes_over_after_graceful_stop() {
    let harness = Harness::new("failover-term").await;
    let sim_b = second_simulator().await;
    let (mut a, mut b) = leader_and_follower(&harness, &sim_b).await;

    a.terminate();
    let status = a.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", a.output());
    assert!(a.output().contains("Released the Lease"), "{}", a.output());
    follower_leads(&harness, &sim_b, &b).await;

    b.terminate();
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(0), "{}", b.output());
    a.assert_output_hides(TOKEN);
    b.assert_output_hides(TOKEN);
    sim_b.shutdown().await;
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_takes_over_after_leader_is_killed() {
    let harness = Harness::new("failover-kill").await;
    let sim_b = second_simulator().await;
    let (mut a, mut b) = leader_and_follower(&harness, &sim_b).await;

    a.kill();
    a.wait_exit(WAIT).await;
    // Nothing released the Lease, so it names a holder while replica-b waits for it to
    // expire.
    assert!(lease_holder(&harness).await.is_some());
    follower_leads(&harness, &sim_b, &b).await;

    b.terminate();
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(0), "{}", b.output());
    b.assert_output_hides(TOKEN);
    assert_eq!(
        lease_holder(&harness).await,
        None,
        "replica-b released the Lease"
    );
    sim_b.shutdown().await;
    harness.shutdown().await;
}
