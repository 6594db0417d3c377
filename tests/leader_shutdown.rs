//! SIGTERM and SIGINT of the real `calsync-operator run` binary: it exits 0, releases its
//! Lease, and abandons reconciles that outlast the grace period.

mod ops_harness;

use std::time::Duration;

use calsync_operator::sim::Faults;
use ops_harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_releases_lease() {
    let harness = Harness::new("sigterm").await;
    let mut operator = Operator::start(&harness, "replica-a", &election_flags(&harness)).await;
    wait_for_holder(&harness, "replica-a").await;
    create(&harness.users(), &user("alice", "alice")).await;
    wait_ready(&harness.users(), "alice").await;

    operator.terminate();
    let status = operator.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", operator.output());
    let output = operator.output();
    for line in [
        "Released the Lease",
        "Stopped serving HTTP",
        "Stopped calsync-operator",
    ] {
        assert!(output.contains(line), "no {line:?} in\n{output}");
    }
    assert_eq!(lease_holder(&harness).await, None);
    operator.assert_output_hides(TOKEN);
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_without_election_exits_zero() {
    let harness = Harness::new("sigint").await;
    let mut operator =
        Operator::start(&harness, "solo", &["--leader-election=false".to_string()]).await;
    wait_until("the operator to be ready", || async {
        let (status, text) = operator.get_text("/readyz").await;
        ((status == 200).then_some(()), text)
    })
    .await;

    operator.signal_interrupt();
    let status = operator.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", operator.output());
    assert!(operator.output().contains("Leader election is off"));
    assert_eq!(
        lease_holder(&harness).await,
        None,
        "no Lease without election"
    );
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_abandons_reconcile_after_grace() {
    let harness = Harness::new("sigterm-grace").await;
    // Every user PUT is applied at once but gets its response only after two minutes, and the
    // client waits a minute, so the reconcile of alice is still running at SIGTERM.
    harness
        .sim
        .set_faults(Faults {
            slow_responses: every_request_to("PUT /users/{username}"),
            slow_response_delay: Duration::from_secs(120),
            ..Faults::default()
        })
        .expect("valid faults");
    let mut flags = election_flags(&harness);
    flags.extend([
        "--shutdown-grace-period=1s".to_string(),
        "--request-timeout=60s".to_string(),
    ]);
    let mut operator = Operator::start(&harness, "replica-a", &flags).await;
    wait_for_holder(&harness, "replica-a").await;
    create(&harness.users(), &user("alice", "alice")).await;
    wait_until("the user PUT to reach the simulator", || async {
        let count = harness.sim.requests().count("PUT /users/{username}");
        ((count >= 1).then_some(()), format!("{count} PUTs"))
    })
    .await;

    operator.terminate();
    // Well below the minute the request could still take, so only an abandoned reconcile
    // lets the process exit in time.
    let status = operator.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "output:\n{}", operator.output());
    let output = operator.output();
    assert!(
        output.contains("Abandoned the reconciles still running after the shutdown grace period"),
        "{output}"
    );
    assert!(output.contains("Released the Lease"), "{output}");
    assert_eq!(lease_holder(&harness).await, None);
    harness
        .sim
        .set_faults(Faults::default())
        .expect("valid faults");
    harness.shutdown().await;
}
