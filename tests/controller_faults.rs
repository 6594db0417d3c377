//! The controller under failure: a wrong or rotated token, a MyTimetable outage, resources
//! deleted while the controller was stopped, and a crash in the middle of creating
//! synchronizations.

mod controller_harness;

use std::collections::BTreeMap;
use std::time::Duration;

use calsync_operator::resources::reason;
use calsync_operator::sim::{FaultRule, Faults};
use controller_harness::*;
use kube::api::ListParams;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_reported_then_rotation_recovers() {
    const WRONG: &str = "wrong-token-9d1e77";
    let mut harness = Harness::new("token").await;
    std::fs::write(harness.token_path(), WRONG).expect("token file");
    harness.start_controller().await;
    create(&harness.users(), &user("kim", "kim")).await;
    create(&harness.syncs(), &sync("kim-o365", "kim", "o365")).await;

    let unauthorized = wait_reason(&harness.users(), "kim", reason::UNAUTHORIZED).await;
    let waiting = wait_reason(&harness.syncs(), "kim-o365", reason::WAITING_FOR_USER).await;

    // Neither token appears in a status, an event or a log line.
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(harness.client.clone(), harness.ns());
    let events = serde_json::to_string(&events.list(&ListParams::default()).await.expect("events"))
        .expect("json");
    assert!(
        events.contains(reason::UNAUTHORIZED),
        "no Unauthorized event: {events}"
    );
    let statuses = serde_json::to_string(&(unauthorized.status, waiting.status)).expect("json");
    for token in [WRONG, TOKEN] {
        assert!(
            !statuses.contains(token),
            "status holds the token: {statuses}"
        );
        assert!(!events.contains(token), "an event holds the token");
        logs().assert_never_contains(token);
    }

    // A rotated token is picked up without a restart.
    std::fs::write(harness.token_path(), TOKEN).expect("token file");
    wait_ready(&harness.users(), "kim").await;
    wait_ready(&harness.syncs(), "kim-o365").await;
    assert_eq!(harness.remote_syncs("kim").await.len(), 1);
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_reported_then_recovers() {
    let harness = Harness::start("outage").await;
    create(&harness.users(), &user("lena", "lena")).await;
    wait_ready(&harness.users(), "lena").await;

    harness
        .sim
        .set_faults(Faults {
            server_errors: FaultRule::always(),
            ..Faults::default()
        })
        .expect("faults");
    create(&harness.users(), &user("mona", "mona")).await;
    let failed = wait_reason(&harness.users(), "mona", reason::API_ERROR).await;
    let message = failed.conditions()[0].message.clone();
    assert!(message.contains("500"), "{message}");
    // The user that was Ready stays Ready: nothing is known to be wrong with it.
    assert!(is_ready(&harness.users().get("lena").await.expect("lena")));

    harness.sim.set_faults(Faults::default()).expect("faults");
    create(&harness.syncs(), &sync("mona-ews", "mona", "ews")).await;
    wait_ready(&harness.users(), "mona").await;
    wait_ready(&harness.syncs(), "mona-ews").await;
    assert_eq!(harness.remote_syncs("mona").await.len(), 1);
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_while_stopped_complete_after_start() {
    let mut harness = Harness::start("stopped").await;
    create(&harness.users(), &user("nora", "nora")).await;
    create(&harness.syncs(), &sync("nora-o365", "nora", "o365")).await;
    wait_ready(&harness.syncs(), "nora-o365").await;
    harness.stop_controller().await;

    // The finalizers keep both resources until the controller has cleaned up.
    delete(&harness.syncs(), "nora-o365").await;
    delete(&harness.users(), "nora").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        harness
            .syncs()
            .get_opt("nora-o365")
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(harness.remote_syncs("nora").await.len(), 1);

    harness.start_controller().await;
    wait_gone(&harness.syncs(), "nora-o365").await;
    wait_gone(&harness.users(), "nora").await;
    assert_eq!(harness.remote_syncs("nora").await, Vec::new());
    assert!(!harness.remote_users().await.contains(&"nora".to_string()));
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_creates_leaves_no_duplicates() {
    let mut harness = Harness::start("restart").await;
    let people = ["olga", "paul", "quin", "rosa"];
    let types = ["o365", "ews"];
    for person in people {
        create(&harness.users(), &user(person, person)).await;
    }
    for person in people {
        wait_ready(&harness.users(), person).await;
    }

    // Slow responses, and the next creates are applied but their responses dropped.
    harness
        .sim
        .set_faults(Faults {
            latency: Duration::from_millis(300),
            dropped_responses: FaultRule::next(4).on("PUT /synchronizations"),
            ..Faults::default()
        })
        .expect("faults");
    for person in people {
        for type_ in types {
            create(
                &harness.syncs(),
                &sync(&format!("{person}-{type_}"), person, type_),
            )
            .await;
        }
    }

    // Crash as soon as a create is on record, before the ids are learned.
    wait_until("a pending create", || async {
        let list = harness
            .syncs()
            .list(&ListParams::default())
            .await
            .expect("list");
        let pending = list
            .items
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|s| s.pending_create.is_some())
            })
            .count();
        ((pending > 0).then_some(()), format!("{pending} pending"))
    })
    .await;
    harness.kill_controller().await;
    harness.start_controller().await;

    for person in people {
        for type_ in types {
            wait_ready(&harness.syncs(), &format!("{person}-{type_}")).await;
        }
    }
    harness.sim.set_faults(Faults::default()).expect("faults");

    // Exactly one remote synchronization per user and type, and it is the recorded one.
    let list = harness
        .syncs()
        .list(&ListParams::default())
        .await
        .expect("list");
    let recorded: BTreeMap<String, i64> = list
        .items
        .iter()
        .map(|s| {
            let status = s.status.as_ref().expect("status");
            let key = format!(
                "{}-{}",
                status.username.clone().expect("username"),
                s.spec.type_
            );
            (key, status.sync_id.expect("sync id"))
        })
        .collect();
    for person in people {
        let remote = harness.remote_syncs(person).await;
        assert_eq!(remote.len(), types.len(), "{person}: {remote:?}");
        for (id, type_) in remote {
            assert_eq!(
                recorded.get(&format!("{person}-{type_}")),
                Some(&id),
                "{person} {type_}"
            );
        }
    }
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_create_is_reported_and_not_retried() {
    let harness = Harness::start("rejected").await;
    create(&harness.users(), &user("sam", "sam")).await;
    // The simulated site has no adapter of this type, so MyTimetable returns 400.
    create(&harness.syncs(), &sync("sam-lotus", "sam", "lotusnotes")).await;
    create(&harness.syncs(), &sync("sam-o365", "sam", "o365")).await;

    let rejected = wait_reason(&harness.syncs(), "sam-lotus", reason::API_ERROR).await;
    let message = rejected.conditions()[0].message.clone();
    assert!(message.contains("400"), "{message}");
    let status = rejected.status.clone().expect("status");
    assert_eq!(status.pending_create, None);
    assert_eq!(status.sync_id, None);
    // The other synchronization of the same user is not held up.
    wait_ready(&harness.syncs(), "sam-o365").await;

    // Three resyncs later the rejected create was still sent only once.
    let puts = || {
        harness
            .sim
            .requests()
            .count_with_status("PUT /synchronizations", "400")
    };
    assert_eq!(puts(), 1);
    let lists_before = harness.sim.requests().count("GET /synchronizations");
    wait_until("three resyncs", || async {
        let lists = harness.sim.requests().count("GET /synchronizations");
        (
            (lists >= lists_before + 3).then_some(()),
            format!("{lists} lists"),
        )
    })
    .await;
    assert_eq!(puts(), 1);
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(harness.client.clone(), harness.ns());
    let listed = events.list(&ListParams::default()).await.expect("events");
    assert!(
        listed
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason::API_ERROR)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("sam-lotus")),
        "no ApiError event for sam-lotus"
    );

    // A change of the resource makes the controller try again.
    let patch = serde_json::json!({"spec": {"unlinkMode": "DELETE_ALL_EVENTS"}});
    harness
        .syncs()
        .patch(
            "sam-lotus",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("patch");
    wait_until("a second create", || async {
        let count = puts();
        (
            (count == 2).then_some(()),
            format!("{count} rejected creates"),
        )
    })
    .await;
    harness.shutdown().await;
}
