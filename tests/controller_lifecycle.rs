//! The controller against the real kube-apiserver and the simulator: creation, adoption,
//! conflicts, deletion with every unlinkMode and policy, drift and steady state.

mod controller_harness;

use calsync_operator::resources::{DeletionPolicy, UnlinkMode, reason};
use calsync_operator::testenv::{BoundedOutput, COMMAND_TIMEOUT};
use controller_harness::*;
use kube::ResourceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_sync_become_ready() {
    let harness = Harness::start("create").await;
    create(&harness.users(), &user("alice", "alice")).await;
    create(&harness.syncs(), &sync("alice-o365", "alice", "o365")).await;

    let ready_user = wait_ready(&harness.users(), "alice").await;
    assert_eq!(
        ready_reason(&ready_user).as_deref(),
        Some(reason::PROVISIONED)
    );
    let status = ready_user.status.clone().expect("status");
    assert_eq!(status.owned_username.as_deref(), Some("alice"));
    assert_eq!(status.observed_generation, ready_user.metadata.generation);
    assert!(
        ready_user
            .finalizers()
            .contains(&calsync_operator::resources::FINALIZER.to_string())
    );

    let ready_sync = wait_ready(&harness.syncs(), "alice-o365").await;
    let status = ready_sync.status.clone().expect("status");
    let remote = harness.remote_syncs("alice").await;
    assert_eq!(remote.len(), 1, "remote synchronizations: {remote:?}");
    assert_eq!(status.sync_id, Some(remote[0].0));
    assert_eq!(status.pending_create, None);
    assert_eq!(
        ready_reason(&ready_sync).as_deref(),
        Some(reason::PROVISIONED)
    );
    let owners = ready_sync.owner_references();
    assert_eq!(owners.len(), 1);
    assert_eq!(Some(&owners[0].uid), ready_user.metadata.uid.as_ref());
    assert!(harness.remote_users().await.contains(&"alice".to_string()));
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_synchronization_is_adopted() {
    let harness = Harness::start("adopt").await;
    let remote = harness.sim_client();
    remote.ensure_user("bob").await.expect("user");
    remote
        .create_synchronization("bob", "o365", None)
        .await
        .expect("sync");
    remote
        .create_synchronization("bob", "o365", None)
        .await
        .expect("sync");
    remote
        .create_synchronization("bob", "ews", None)
        .await
        .expect("sync");
    let before = harness.remote_syncs("bob").await;
    let puts_before = harness.sim.requests().count("PUT /synchronizations");

    create(&harness.users(), &user("bob", "bob")).await;
    create(&harness.syncs(), &sync("bob-o365", "bob", "o365")).await;
    let ready_user = wait_ready(&harness.users(), "bob").await;
    assert_eq!(ready_reason(&ready_user).as_deref(), Some(reason::ADOPTED));
    let ready_sync = wait_ready(&harness.syncs(), "bob-o365").await;
    assert_eq!(ready_reason(&ready_sync).as_deref(), Some(reason::ADOPTED));

    // The lowest id of the matching type is adopted and nothing is created.
    let lowest_o365 = before.iter().find(|(_, t)| t == "o365").map(|(id, _)| *id);
    assert_eq!(
        ready_sync.status.as_ref().and_then(|s| s.sync_id),
        lowest_o365
    );
    assert_eq!(harness.remote_syncs("bob").await, before);
    assert_eq!(
        harness.sim.requests().count("PUT /synchronizations"),
        puts_before
    );
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_user_with_same_username_conflicts() {
    let mut harness = Harness::with_namespaces("user-conflict", 2).await;
    harness.start_controller().await;
    create(&harness.users_in(0), &user("carol", "carol")).await;
    wait_ready(&harness.users_in(0), "carol").await;
    create(&harness.users_in(1), &user("carol-again", "carol")).await;

    let conflicting = wait_reason(&harness.users_in(1), "carol-again", reason::CONFLICT).await;
    let message = conflicting.conditions()[0].message.clone();
    assert!(message.contains(harness.namespaces[0].name()), "{message}");
    assert_eq!(
        conflicting
            .status
            .as_ref()
            .and_then(|s| s.owned_username.clone()),
        None
    );

    // Deleting the loser leaves the owner's remote user alone.
    delete(&harness.users_in(1), "carol-again").await;
    wait_gone(&harness.users_in(1), "carol-again").await;
    assert!(harness.remote_users().await.contains(&"carol".to_string()));
    assert!(is_ready(
        &harness.users_in(0).get("carol").await.expect("owner")
    ));
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sync_with_same_type_conflicts() {
    let harness = Harness::start("sync-conflict").await;
    create(&harness.users(), &user("dave", "dave")).await;
    create(&harness.syncs(), &sync("dave-first", "dave", "ews")).await;
    let first = wait_ready(&harness.syncs(), "dave-first").await;
    create(&harness.syncs(), &sync("dave-second", "dave", "ews")).await;

    let second = wait_reason(&harness.syncs(), "dave-second", reason::CONFLICT).await;
    let message = second.conditions()[0].message.clone();
    assert!(message.contains("dave-first"), "{message}");
    assert_eq!(second.status.as_ref().and_then(|s| s.sync_id), None);
    let remote = harness.remote_syncs("dave").await;
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(Some(remote[0].0), first.status.and_then(|s| s.sync_id));
    harness.shutdown().await;
}

/// Counts a user's calendar events: (by the o365 synchronization, by the ews one, personal,
/// o365 ones that start in the future).
fn count_events(harness: &Harness, username: &str, o365: i64) -> (usize, usize, usize, usize) {
    use calsync_operator::sim::EventSource;
    let now = jiff::Timestamp::now();
    let events = harness.sim.events(username);
    let of = |id: i64| {
        events
            .iter()
            .filter(|e| matches!(e.source, EventSource::Synchronization { id: i, .. } if i == id))
            .count()
    };
    let future_o365 = events
        .iter()
        .filter(|e| matches!(e.source, EventSource::Synchronization { id: i, .. } if i == o365))
        .filter(|e| e.start > now)
        .count();
    let ews = events
        .iter()
        .filter(
            |e| matches!(&e.source, EventSource::Synchronization { type_, .. } if type_ == "ews"),
        )
        .count();
    let personal = events
        .iter()
        .filter(|e| matches!(e.source, EventSource::Personal))
        .count();
    (of(o365), ews, personal, future_o365)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unlink_mode_applies_to_calendar() {
    let harness = Harness::start("unlink").await;
    let modes = [
        UnlinkMode::UnlinkOnly,
        UnlinkMode::DeleteFutureEvents,
        UnlinkMode::DeleteAllEvents,
        UnlinkMode::Cleanup,
    ];
    // One user per mode, each with an o365 synchronization to delete, an ews one to keep and
    // a personal event.
    let mut ids = Vec::new();
    for mode in modes {
        let name = format!("u-{}", mode.as_str().to_lowercase().replace('_', "-"));
        create(&harness.users(), &user(&name, &name)).await;
        let mut o365 = sync(&format!("{name}-o365"), &name, "o365");
        o365.spec.unlink_mode = mode;
        create(&harness.syncs(), &o365).await;
        create(
            &harness.syncs(),
            &sync(&format!("{name}-ews"), &name, "ews"),
        )
        .await;
        let ready = wait_ready(&harness.syncs(), &format!("{name}-o365")).await;
        wait_ready(&harness.syncs(), &format!("{name}-ews")).await;
        let start = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
        harness.sim.add_personal_event(
            &name,
            "dentist",
            start,
            start + jiff::SignedDuration::from_hours(1),
        );
        let id = ready.status.and_then(|s| s.sync_id).expect("sync id");
        assert_eq!(
            count_events(&harness, &name, id),
            (4, 4, 1, 2),
            "{name} before"
        );
        ids.push((name, mode, id));
    }

    for (name, _, _) in &ids {
        delete(&harness.syncs(), &format!("{name}-o365")).await;
    }
    for (name, mode, id) in &ids {
        wait_gone(&harness.syncs(), &format!("{name}-o365")).await;
        let remote = harness.remote_syncs(name).await;
        assert!(remote.iter().all(|(r, _)| r != id), "{name}: {remote:?}");
        let expected = match mode {
            UnlinkMode::UnlinkOnly => (4, 4, 1, 2),
            UnlinkMode::DeleteFutureEvents => (2, 4, 1, 0),
            UnlinkMode::DeleteAllEvents => (0, 4, 1, 0),
            UnlinkMode::Cleanup => (0, 0, 1, 0),
        };
        assert_eq!(
            count_events(&harness, name, *id),
            expected,
            "{}",
            mode.as_str()
        );
    }
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_policies_keep_remote_objects() {
    let harness = Harness::start("orphan").await;
    let mut orphan_user = user("erin", "erin");
    orphan_user.spec.deletion_policy = DeletionPolicy::Orphan;
    create(&harness.users(), &orphan_user).await;
    let mut orphan_sync = sync("erin-google", "erin", "googlecalendar");
    orphan_sync.spec.deletion_policy = DeletionPolicy::Orphan;
    create(&harness.syncs(), &orphan_sync).await;
    let ready = wait_ready(&harness.syncs(), "erin-google").await;
    let id = ready.status.and_then(|s| s.sync_id).expect("sync id");

    delete(&harness.syncs(), "erin-google").await;
    wait_gone(&harness.syncs(), "erin-google").await;
    assert_eq!(
        harness.remote_syncs("erin").await,
        vec![(id, "googlecalendar".to_string())]
    );

    delete(&harness.users(), "erin").await;
    wait_gone(&harness.users(), "erin").await;
    assert!(harness.remote_users().await.contains(&"erin".to_string()));
    assert_eq!(harness.remote_syncs("erin").await.len(), 1);
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_deletion_cascades_to_its_syncs() {
    let harness = Harness::start("cascade").await;
    create(&harness.users(), &user("frank", "frank")).await;
    create(&harness.syncs(), &sync("frank-o365", "frank", "o365")).await;
    create(&harness.syncs(), &sync("frank-ews", "frank", "ews")).await;
    wait_ready(&harness.syncs(), "frank-o365").await;
    wait_ready(&harness.syncs(), "frank-ews").await;
    assert_eq!(harness.remote_syncs("frank").await.len(), 2);

    delete(&harness.users(), "frank").await;
    wait_gone(&harness.syncs(), "frank-o365").await;
    wait_gone(&harness.syncs(), "frank-ews").await;
    wait_gone(&harness.users(), "frank").await;
    assert_eq!(harness.remote_syncs("frank").await, Vec::new());
    assert!(!harness.remote_users().await.contains(&"frank".to_string()));
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_remote_sync_blocks_user_deletion() {
    let harness = Harness::start("blocked").await;
    create(&harness.users(), &user("gina", "gina")).await;
    wait_ready(&harness.users(), "gina").await;
    harness
        .sim_client()
        .create_synchronization("gina", "ews", None)
        .await
        .expect("undeclared sync");
    let undeclared = harness.remote_syncs("gina").await;
    assert_eq!(undeclared.len(), 1);
    let id = undeclared[0].0;

    delete(&harness.users(), "gina").await;
    let blocked = wait_for(&harness.users(), "gina", "blocked", |u| {
        u.conditions()
            .iter()
            .any(|c| c.reason == reason::DELETING && c.message.contains(&format!("{id} (ews)")))
    })
    .await;
    assert!(blocked.metadata.deletion_timestamp.is_some());
    assert!(harness.remote_users().await.contains(&"gina".to_string()));
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(harness.client.clone(), harness.ns());
    let listed = events.list(&Default::default()).await.expect("events");
    assert!(
        listed.items.iter().any(|e| e
            .note
            .as_deref()
            .is_some_and(|n| n.contains(&format!("{id} (ews)")))),
        "no event names the undeclared synchronization"
    );

    // Switching to Orphan unblocks the deletion and keeps everything remote.
    let patch = serde_json::json!({"spec": {"deletionPolicy": "Orphan"}});
    harness
        .users()
        .patch(
            "gina",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("patch");
    wait_gone(&harness.users(), "gina").await;
    assert!(harness.remote_users().await.contains(&"gina".to_string()));
    assert_eq!(harness.remote_syncs("gina").await, undeclared);
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_with_new_id() {
    let harness = Harness::start("drift").await;
    create(&harness.users(), &user("hank", "hank")).await;
    create(&harness.syncs(), &sync("hank-o365", "hank", "o365")).await;
    let ready = wait_ready(&harness.syncs(), "hank-o365").await;
    let old_id = ready.status.and_then(|s| s.sync_id).expect("sync id");

    // Removed behind the operator's back: created again, and the new id recorded.
    harness
        .sim_client()
        .delete_synchronization(
            old_id,
            calsync_operator::mytimetable::wire::UnlinkMode::UnlinkOnly,
        )
        .await
        .expect("remote delete");
    let repaired = wait_for(&harness.syncs(), "hank-o365", "recreated", |s| {
        is_ready(s)
            && s.status
                .as_ref()
                .and_then(|s| s.sync_id)
                .is_some_and(|id| id != old_id)
    })
    .await;
    let new_id = repaired.status.and_then(|s| s.sync_id).expect("new id");
    assert_eq!(
        harness.remote_syncs("hank").await,
        vec![(new_id, "o365".to_string())]
    );

    // The user too: deleting it remotely also removes its synchronizations.
    harness
        .sim_client()
        .delete_user("hank")
        .await
        .expect("remote delete");
    wait_until("hank and a synchronization to exist again", || async {
        let users = harness.remote_users().await;
        let syncs = harness.remote_syncs("hank").await;
        let done = users.contains(&"hank".to_string()) && syncs.len() == 1;
        (
            done.then_some(()),
            format!("users {users:?} syncs {syncs:?}"),
        )
    })
    .await;
    wait_for(&harness.syncs(), "hank-o365", "recreated again", |s| {
        is_ready(s)
            && s.status
                .as_ref()
                .and_then(|s| s.sync_id)
                .is_some_and(|id| id != new_id)
    })
    .await;
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_makes_no_writes() {
    let harness = Harness::start("steady").await;
    create(&harness.users(), &user("ivy", "ivy")).await;
    create(&harness.syncs(), &sync("ivy-o365", "ivy", "o365")).await;
    let user_before = wait_ready(&harness.users(), "ivy").await;
    let sync_before = wait_ready(&harness.syncs(), "ivy-o365").await;
    let writes = |report: &calsync_operator::sim::RequestReport| -> u64 {
        report
            .by_endpoint
            .iter()
            .filter(|(endpoint, _)| !endpoint.starts_with("GET "))
            .map(|(_, count)| count)
            .sum()
    };
    let writes_before = writes(&harness.sim.requests());
    let lists_before = harness.sim.requests().count("GET /synchronizations");

    // Three resync intervals of 5 s: the remote view is listed again, nothing is written.
    wait_until("three resyncs", || async {
        let lists = harness.sim.requests().count("GET /synchronizations");
        (
            (lists >= lists_before + 3).then_some(()),
            format!("{lists} lists"),
        )
    })
    .await;
    let user_after = harness.users().get("ivy").await.expect("user");
    let sync_after = harness.syncs().get("ivy-o365").await.expect("sync");
    assert_eq!(
        user_after.resource_version(),
        user_before.resource_version()
    );
    assert_eq!(
        sync_after.resource_version(),
        sync_before.resource_version()
    );
    assert_eq!(writes(&harness.sim.requests()), writes_before);
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_sees_ready_of_current_generation() {
    let harness = Harness::start("kubectl-wait").await;
    create(&harness.users(), &user("jack", "jack")).await;
    create(&harness.syncs(), &sync("jack-ews", "jack", "ews")).await;
    let kubectl_wait = |target: &str| {
        let output = calsync_operator::testenv::ControlPlane::shared()
            .kubectl()
            .args([
                "wait",
                "--for=condition=Ready",
                target,
                "-n",
                harness.ns(),
                "--timeout=90s",
            ])
            .output_within(COMMAND_TIMEOUT)
            .unwrap_or_else(|error| panic!("{}: {error}", "kubectl runs"));
        assert!(
            output.status.success(),
            "kubectl wait {target} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    kubectl_wait("calendaruser/jack");
    kubectl_wait("calendarsync/jack-ews");

    // A spec change makes the Ready condition stale until the controller observed it.
    let patch = serde_json::json!({"spec": {"unlinkMode": "DELETE_ALL_EVENTS"}});
    let patched = harness
        .syncs()
        .patch(
            "jack-ews",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("patch");
    assert!(
        !is_ready(&patched),
        "Ready must not describe the new generation yet"
    );
    kubectl_wait("calendarsync/jack-ews");
    let current = harness.syncs().get("jack-ews").await.expect("sync");
    assert!(is_ready(&current));
    assert_eq!(
        current.status.and_then(|s| s.observed_generation),
        current.metadata.generation
    );
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_competitors_get_one_owner() {
    let mut harness = Harness::with_namespaces("simultaneous", 2).await;
    harness.start_controller().await;

    // Created together, so that the second may be reconciled before the first's claim is in
    // the cache.
    let (users_a, users_b) = (harness.users_in(0), harness.users_in(1));
    let first = user("lou", "lou");
    let second = user("lou-too", "lou");
    tokio::join!(create(&users_a, &first), create(&users_b, &second));
    let owner = wait_until("one owner and one conflict", || async {
        let a = users_a.get("lou").await.expect("lou");
        let b = users_b.get("lou-too").await.expect("lou-too");
        let reasons = (ready_reason(&a), ready_reason(&b));
        let conflict = Some(reason::CONFLICT.to_string());
        let owner = match &reasons {
            (Some(r), c) if r == reason::PROVISIONED && *c == conflict => Some(0),
            (c, Some(r)) if r == reason::PROVISIONED && *c == conflict => Some(1),
            _ => None,
        };
        (owner, format!("{reasons:?}"))
    })
    .await;

    let syncs = harness.syncs_in(owner);
    let user_name = if owner == 0 { "lou" } else { "lou-too" };
    let (one, two) = (
        sync("lou-ews-1", user_name, "ews"),
        sync("lou-ews-2", user_name, "ews"),
    );
    tokio::join!(create(&syncs, &one), create(&syncs, &two));
    wait_until("one Ready sync and one conflict", || async {
        let one = syncs.get("lou-ews-1").await.expect("sync");
        let two = syncs.get("lou-ews-2").await.expect("sync");
        let reasons = (ready_reason(&one), ready_reason(&two));
        let ready = [&one, &two].into_iter().filter(|s| is_ready(*s)).count();
        let conflicts = [&reasons.0, &reasons.1]
            .iter()
            .filter(|r| r.as_deref() == Some(reason::CONFLICT))
            .count();
        (
            ((ready, conflicts) == (1, 1)).then_some(()),
            format!("{reasons:?}"),
        )
    })
    .await;
    let remote = harness.remote_syncs("lou").await;
    assert_eq!(remote.len(), 1, "{remote:?}");
    harness.shutdown().await;
}
