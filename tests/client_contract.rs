//! Contract tests: the real MyTimetable client against the simulator over HTTP on loopback.
//! Every test uses its own token and ends by checking that the token appears in no log
//! line that the process wrote at any level, and in no error output.

mod support;

use std::time::{Duration, Instant};

use calsync_operator::mytimetable::wire::UnlinkMode;
use calsync_operator::mytimetable::{Client, ClientMetrics, Error, SyncDeletion};
use calsync_operator::sim::{
    CalendarEvents, DROPPED, EventSource, FaultRule, Faults, RunningSimulator, SimConfig,
};
use support::{
    assert_no_token, client, logs, start_sim, start_sim_with, test_config, unique_token,
};

// Fetches a user's calendar through the simulator's HTTP inspection endpoint.
async fn calendar(sim: &RunningSimulator, username: &str) -> CalendarEvents {
    let mut url = sim.control_url();
    url.path_segments_mut()
        .unwrap()
        .extend(["users", username, "events"]);
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn events_of(calendar: &CalendarEvents, id: i64) -> usize {
    calendar
        .events
        .iter()
        .filter(|event| matches!(event.source, EventSource::Synchronization { id: sync, .. } if sync == id))
        .count()
}

fn personal_events(calendar: &CalendarEvents) -> usize {
    calendar
        .events
        .iter()
        .filter(|event| event.source == EventSource::Personal)
        .count()
}

fn error_text(error: &Error) -> String {
    format!("{error} {error:?}")
}

async fn sync_ids(client: &Client, username: &str, type_: &str) -> Vec<i64> {
    client
        .list_synchronizations()
        .await
        .unwrap()
        .into_iter()
        .filter(|sync| sync.username == username && sync.type_ == type_)
        .map(|sync| sync.id)
        .collect()
}

#[tokio::test]
async fn users_are_created_listed_and_deleted() {
    let token = unique_token("users");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);

    client.ensure_user("alice").await.unwrap();
    client.ensure_user("alice").await.unwrap();
    client.ensure_user("bob").await.unwrap();
    assert_eq!(client.list_users().await.unwrap(), vec!["alice", "bob"]);

    client.delete_user("alice").await.unwrap();
    assert_eq!(client.list_users().await.unwrap(), vec!["bob"]);
    // 3.0 returns 204 for a user that does not exist.
    client.delete_user("alice").await.unwrap();

    let report = sim.requests();
    assert_eq!(report.count_with_status("PUT /users/{username}", "204"), 3);
    assert_eq!(
        report.count_with_status("DELETE /users/{username}", "204"),
        2
    );
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn later_version_unknown_user_delete_is_ok() {
    let token = unique_token("later-delete");
    let sim = start_sim_with(SimConfig {
        later_version: true,
        ..SimConfig::new(&token)
    })
    .await;
    let client = client(&sim, &token);

    client.delete_user("nobody").await.unwrap();

    let report = sim.requests();
    assert_eq!(
        report.count_with_status("DELETE /users/{username}", "404"),
        1
    );
    assert_eq!(report.total, 1, "a 404 on delete is not retried");
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn special_usernames_reach_server_unchanged() {
    let token = unique_token("usernames");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);
    let usernames = [
        "a/b",
        "a?b",
        "a#b",
        "a%b",
        "a%2Fb",
        "a b",
        "a+b",
        "Élève.Ünïcode@example.org",
        "学生",
        "...",
    ];

    for username in usernames {
        client.ensure_user(username).await.unwrap();
        client
            .create_synchronization(username, "o365", None)
            .await
            .unwrap();
    }

    let mut listed = client.list_users().await.unwrap();
    listed.sort();
    let mut expected: Vec<String> = usernames.iter().map(|u| (*u).to_owned()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    for username in usernames {
        assert_eq!(
            sync_ids(&client, username, "o365").await.len(),
            1,
            "{username:?}"
        );
        assert_eq!(
            calendar(&sim, username).await.events.len(),
            4,
            "{username:?}"
        );
    }

    for username in usernames {
        client.delete_user(username).await.unwrap();
    }
    assert!(client.list_users().await.unwrap().is_empty());
    assert!(client.list_synchronizations().await.unwrap().is_empty());
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn dot_usernames_are_rejected_before_sending() {
    let token = unique_token("dots");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);

    for username in ["", ".", ".."] {
        let error = client.ensure_user(username).await.unwrap_err();
        assert!(matches!(error, Error::InvalidUsername { .. }), "{error:?}");
        let error = client.delete_user(username).await.unwrap_err();
        assert!(matches!(error, Error::InvalidUsername { .. }), "{error:?}");
    }
    assert_eq!(sim.requests().total, 0);
}

#[tokio::test]
async fn synchronizations_are_created_listed_and_deleted() {
    let token = unique_token("syncs");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);
    client.ensure_user("carol").await.unwrap();

    client
        .create_synchronization("carol", "ews", Some("carol@example.org"))
        .await
        .unwrap();
    let synchronizations = client.list_synchronizations().await.unwrap();
    assert_eq!(synchronizations.len(), 1);
    let created = &synchronizations[0];
    assert_eq!(created.username, "carol");
    assert_eq!(created.type_, "ews");
    // 3.0 sends only id, username and type.
    assert_eq!(created.description, None);
    assert_eq!(created.status, None);

    assert_eq!(
        client
            .delete_synchronization(created.id, UnlinkMode::UnlinkOnly)
            .await
            .unwrap(),
        SyncDeletion::Deleted
    );
    assert_eq!(
        client
            .delete_synchronization(created.id, UnlinkMode::UnlinkOnly)
            .await
            .unwrap(),
        SyncDeletion::NotFound
    );
    assert!(client.list_synchronizations().await.unwrap().is_empty());
    assert_eq!(
        sim.requests()
            .count_with_status("DELETE /synchronizations/{id}", "422"),
        1,
        "a 422 is an outcome, not a failure to retry"
    );
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn second_create_makes_duplicate() {
    let token = unique_token("duplicate");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);
    client.ensure_user("dave").await.unwrap();

    client
        .create_synchronization("dave", "o365", None)
        .await
        .unwrap();
    client
        .create_synchronization("dave", "o365", None)
        .await
        .unwrap();

    let ids = sync_ids(&client, "dave", "o365").await;
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn create_for_unknown_user_is_rejected() {
    let token = unique_token("unknown-user");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);

    let error = client
        .create_synchronization("ghost", "o365", None)
        .await
        .unwrap_err();

    match &error {
        Error::Rejected { status, message } => {
            assert_eq!(*status, 400);
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!error.is_transient());
    assert_no_token(&error_text(&error), &token);
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn create_with_unknown_type_is_rejected() {
    let token = unique_token("unknown-type");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);
    client.ensure_user("erin").await.unwrap();

    let error = client
        .create_synchronization("erin", "caldav", None)
        .await
        .unwrap_err();

    assert!(
        matches!(&error, Error::Rejected { status: 400, message } if message.contains("caldav")),
        "{error:?}"
    );
    assert!(client.list_synchronizations().await.unwrap().is_empty());
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn unlink_modes_apply_to_calendar_events() {
    let token = unique_token("unlink");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);

    for mode in UnlinkMode::ALL {
        // A user with two synchronizations, an older one already unlinked with its events
        // left behind, and one personal event.
        let username = format!("student-{}", mode.as_str().to_lowercase());
        client.ensure_user(&username).await.unwrap();
        client
            .create_synchronization(&username, "ews", None)
            .await
            .unwrap();
        let unlinked = sync_ids(&client, &username, "ews").await[0];
        client
            .delete_synchronization(unlinked, UnlinkMode::UnlinkOnly)
            .await
            .unwrap();
        client
            .create_synchronization(&username, "o365", None)
            .await
            .unwrap();
        client
            .create_synchronization(&username, "googlecalendar", None)
            .await
            .unwrap();
        let target = sync_ids(&client, &username, "o365").await[0];
        let other = sync_ids(&client, &username, "googlecalendar").await[0];
        let now = jiff::Timestamp::now();
        sim.add_personal_event(
            &username,
            "Dentist",
            now,
            now + jiff::SignedDuration::from_hours(1),
        );
        let before = calendar(&sim, &username).await;
        assert_eq!(before.events.len(), 13, "{mode}");

        let outcome = client.delete_synchronization(target, mode).await.unwrap();
        assert_eq!(outcome, SyncDeletion::Deleted, "{mode}");

        let after = calendar(&sim, &username).await;
        let deleted_at = jiff::Timestamp::now();
        let future_of_target = after
            .events
            .iter()
            .filter(|event| {
                matches!(event.source, EventSource::Synchronization { id, .. } if id == target)
                    && event.start > deleted_at
            })
            .count();
        let (target_left, other_left, unlinked_left) = match mode {
            UnlinkMode::UnlinkOnly => (4, 4, 4),
            UnlinkMode::DeleteFutureEvents => (2, 4, 4),
            UnlinkMode::DeleteAllEvents => (0, 4, 4),
            UnlinkMode::Cleanup => (0, 0, 0),
        };
        assert_eq!(events_of(&after, target), target_left, "{mode}");
        assert_eq!(events_of(&after, other), other_left, "{mode}");
        assert_eq!(events_of(&after, unlinked), unlinked_left, "{mode}");
        assert_eq!(personal_events(&after), 1, "{mode}: personal events stay");
        if mode == UnlinkMode::DeleteFutureEvents {
            assert_eq!(future_of_target, 0, "only past events of the target stay");
        }
        // The other synchronization keeps running whatever the mode.
        assert_eq!(
            sync_ids(&client, &username, "googlecalendar").await,
            vec![other]
        );
    }
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn wrong_token_is_unauthorized_and_not_retried() {
    let token = unique_token("wrong");
    let sent = unique_token("wrong-sent");
    let sim = start_sim(&token).await;
    let client = client(&sim, &sent);

    let error = client.list_users().await.unwrap_err();

    assert!(matches!(error, Error::Unauthorized), "{error:?}");
    assert!(!error.is_transient());
    assert_eq!(sim.requests().count_with_status("GET /users", "401"), 1);
    assert_no_token(&error_text(&error), &token);
    assert_no_token(&error_text(&error), &sent);
    logs().assert_never_contains(&token);
    logs().assert_never_contains(&sent);
}

#[tokio::test]
async fn empty_token_is_unauthorized() {
    let token = unique_token("empty");
    let sim = start_sim(&token).await;
    let client = client(&sim, "");

    let error = client.ensure_user("frank").await.unwrap_err();

    assert!(matches!(error, Error::Unauthorized), "{error:?}");
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn rotated_token_is_used_without_new_client() {
    let token = unique_token("rotate");
    let old = unique_token("rotate-old");
    let sim = start_sim(&token).await;
    let client = client(&sim, &old);
    assert!(matches!(
        client.list_users().await,
        Err(Error::Unauthorized)
    ));

    assert!(client.token().replace(token.clone()));

    client.ensure_user("grace").await.unwrap();
    assert_eq!(client.list_users().await.unwrap(), vec!["grace"]);
    logs().assert_never_contains(&token);
    logs().assert_never_contains(&old);
}

#[tokio::test]
async fn rate_limit_is_retried_after_retry_after() {
    let token = unique_token("retry-after");
    let sim = start_sim(&token).await;
    sim.set_faults(Faults {
        rate_limits: FaultRule::next(1),
        retry_after_secs: 1,
        ..Faults::default()
    })
    .unwrap();
    let client = client(&sim, &token);

    let started = Instant::now();
    let users = client.list_users().await.unwrap();

    assert!(users.is_empty());
    // A lower bound, not a performance check: the client must not retry before the server's
    // Retry-After (1 s) even though its own backoff starts at 20 ms.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried after {:?}",
        started.elapsed()
    );
    let report = sim.requests();
    assert_eq!(report.count_with_status("GET /users", "429"), 1);
    assert_eq!(report.count_with_status("GET /users", "200"), 1);
    assert!(logs().text().contains("Retrying MyTimetable request"));
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn long_retry_after_is_returned_to_caller() {
    let token = unique_token("long-retry-after");
    let sim = start_sim(&token).await;
    sim.set_faults(Faults {
        rate_limits: FaultRule::always(),
        retry_after_secs: 120,
        ..Faults::default()
    })
    .unwrap();
    let client = client(&sim, &token);

    let error = client.ensure_user("heidi").await.unwrap_err();

    assert!(
        matches!(error, Error::RateLimited { retry_after: Some(delay) } if delay == Duration::from_secs(120)),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(
        sim.requests().total,
        1,
        "a Retry-After past 60 s is not waited for"
    );
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let token = unique_token("retry-5xx");
    let sim = start_sim(&token).await;
    sim.set_faults(Faults {
        server_errors: FaultRule::next(2),
        ..Faults::default()
    })
    .unwrap();
    let client = client(&sim, &token);

    client.ensure_user("ivan").await.unwrap();

    let report = sim.requests();
    assert_eq!(report.count_with_status("PUT /users/{username}", "500"), 2);
    assert_eq!(report.count_with_status("PUT /users/{username}", "204"), 1);
    assert_eq!(client.list_users().await.unwrap(), vec!["ivan"]);
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn server_errors_exhaust_retries() {
    let token = unique_token("exhaust-5xx");
    let sim = start_sim(&token).await;
    sim.set_faults(Faults {
        server_errors: FaultRule::always(),
        ..Faults::default()
    })
    .unwrap();
    let mut config = test_config(&sim, &token);
    config.max_retries = 2;
    let client = Client::new(config).unwrap();

    let error = client.delete_user("judy").await.unwrap_err();

    assert!(
        matches!(&error, Error::Server { status: 500, message } if message.contains("injected")),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(
        sim.requests()
            .count_with_status("DELETE /users/{username}", "500"),
        3
    );
    assert_no_token(&error_text(&error), &token);
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn create_is_never_retried() {
    let token = unique_token("no-retry-create");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);
    client.ensure_user("karl").await.unwrap();
    sim.set_faults(Faults {
        server_errors: FaultRule::next(1).on("PUT /synchronizations"),
        ..Faults::default()
    })
    .unwrap();

    let error = client
        .create_synchronization("karl", "o365", None)
        .await
        .unwrap_err();

    assert!(
        matches!(error, Error::Server { status: 500, .. }),
        "{error:?}"
    );
    assert_eq!(sim.requests().count("PUT /synchronizations"), 1);
    assert!(client.list_synchronizations().await.unwrap().is_empty());
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn dropped_create_response_leaves_synchronization() {
    let token = unique_token("dropped-create");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);
    client.ensure_user("lena").await.unwrap();
    sim.set_faults(Faults {
        dropped_responses: FaultRule::next(1).on("PUT /synchronizations"),
        ..Faults::default()
    })
    .unwrap();

    let error = client
        .create_synchronization("lena", "o365", None)
        .await
        .unwrap_err();

    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    assert!(error.is_transient());
    assert_no_token(&error_text(&error), &token);
    let report = sim.requests();
    assert_eq!(
        report.count_with_status("PUT /synchronizations", DROPPED),
        1
    );
    assert_eq!(report.count("PUT /synchronizations"), 1, "never retried");
    // The write was applied: a list shows the synchronization the caller must adopt.
    assert_eq!(sync_ids(&client, "lena", "o365").await.len(), 1);
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn dropped_delete_response_is_retried_to_not_found() {
    let token = unique_token("dropped-delete");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);
    client.ensure_user("mona").await.unwrap();
    client
        .create_synchronization("mona", "o365", None)
        .await
        .unwrap();
    let id = sync_ids(&client, "mona", "o365").await[0];
    sim.set_faults(Faults {
        dropped_responses: FaultRule::next(1).on("DELETE /synchronizations/{id}"),
        ..Faults::default()
    })
    .unwrap();

    let outcome = client
        .delete_synchronization(id, UnlinkMode::DeleteAllEvents)
        .await
        .unwrap();

    // The first attempt deleted it and lost the response; the retry finds it gone.
    assert_eq!(outcome, SyncDeletion::NotFound);
    let report = sim.requests();
    assert_eq!(
        report.count_with_status("DELETE /synchronizations/{id}", DROPPED),
        1
    );
    assert_eq!(
        report.count_with_status("DELETE /synchronizations/{id}", "422"),
        1
    );
    assert!(client.list_synchronizations().await.unwrap().is_empty());
    assert!(calendar(&sim, "mona").await.events.is_empty());
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn slow_response_times_out() {
    let token = unique_token("timeout");
    let sim = start_sim(&token).await;
    let mut config = test_config(&sim, &token);
    config.request_timeout = Duration::from_millis(300);
    let client = Client::new(config).unwrap();
    client.ensure_user("nina").await.unwrap();
    sim.set_faults(Faults {
        slow_responses: FaultRule::next(2),
        slow_response_delay: Duration::from_secs(3),
        ..Faults::default()
    })
    .unwrap();

    // A create that times out is reported, not retried, and may have been applied.
    let error = client
        .create_synchronization("nina", "o365", None)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout), "{error:?}");
    assert!(error.is_transient());
    assert_no_token(&error_text(&error), &token);

    // A list that times out once is retried and succeeds, and shows the applied create.
    let synchronizations = client.list_synchronizations().await.unwrap();
    assert_eq!(synchronizations.len(), 1);
    assert_eq!(sim.requests().count("PUT /synchronizations"), 1);
    assert_eq!(sim.requests().count("GET /synchronizations"), 2);
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn refused_connection_is_transport_error() {
    let token = unique_token("refused");
    // Reserve a loopback port, then free it so that nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = calsync_operator::mytimetable::ClientConfig::new(
        format!("http://{addr}/api/v0").parse().unwrap(),
        calsync_operator::mytimetable::Token::new(token.clone()),
    );
    config.retry_min_delay = Duration::from_millis(10);
    config.retry_max_delay = Duration::from_millis(20);
    logs();
    let client = Client::new(config).unwrap();

    let error = client.list_users().await.unwrap_err();

    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    assert!(error.is_transient());
    assert_no_token(&error_text(&error), &token);
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn later_version_fields_are_kept() {
    let token = unique_token("later-fields");
    let sim = start_sim_with(SimConfig {
        later_version: true,
        ..SimConfig::new(&token)
    })
    .await;
    let client = client(&sim, &token);
    client.ensure_user("olga").await.unwrap();

    client
        .create_synchronization("olga", "ews", Some("olga@example.org"))
        .await
        .unwrap();

    let synchronizations = client.list_synchronizations().await.unwrap();
    let sync = &synchronizations[0];
    assert_eq!(sync.description.as_deref(), Some("olga@example.org"));
    assert_eq!(sync.enabled, Some(true));
    assert_eq!(sync.status.as_deref(), Some("OK"));
    assert!(sync.last_resync.is_some_and(|ms| ms > 0));
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn concurrency_limit_serializes_requests() {
    let token = unique_token("concurrency");
    let sim = start_sim(&token).await;
    sim.set_faults(Faults {
        latency: Duration::from_millis(200),
        ..Faults::default()
    })
    .unwrap();
    let mut config = test_config(&sim, &token);
    config.max_concurrent_requests = 1;
    let client = Client::new(config).unwrap();

    let started = Instant::now();
    let calls = (0..4).map(|_| client.list_users());
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }

    // A lower bound, not a performance check: with one request in flight at a time, four
    // requests of 200 ms each cannot finish sooner than 800 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "finished after {:?}",
        started.elapsed()
    );
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn rate_limit_spaces_requests() {
    let token = unique_token("rate");
    let sim = start_sim(&token).await;
    let mut config = test_config(&sim, &token);
    config.requests_per_second = 2;
    let client = Client::new(config).unwrap();

    let started = Instant::now();
    for _ in 0..4 {
        client.list_users().await.unwrap();
    }

    // A lower bound, not a performance check: a quota of 2 per second allows a burst of 2,
    // then one request every 500 ms, so the 4th starts 1 s after the first at the earliest.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "finished after {:?}",
        started.elapsed()
    );
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn metrics_count_requests_and_retries() {
    let token = unique_token("metrics");
    let sim = start_sim(&token).await;
    sim.set_faults(Faults {
        server_errors: FaultRule::next(1),
        ..Faults::default()
    })
    .unwrap();
    let metrics = ClientMetrics::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut config = test_config(&sim, &token);
    config.metrics = Some(metrics);
    let client = Client::new(config).unwrap();

    client.list_users().await.unwrap();

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for expected in [
        r#"mytimetable_requests_total{endpoint="GET /users",status="500"} 1"#,
        r#"mytimetable_requests_total{endpoint="GET /users",status="200"} 1"#,
        r#"mytimetable_retries_total{endpoint="GET /users",reason="server"} 1"#,
        r#"mytimetable_request_duration_seconds_count{endpoint="GET /users"} 2"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert_no_token(&text, &token);
    logs().assert_never_contains(&token);
}

// Guards for the token checks above: the capture must record the HTTP libraries' TRACE
// lines, where a leaked header would show up, and the check must fail on a logged token.
#[tokio::test]
async fn log_capture_sees_http_library_traces() {
    let token = unique_token("capture");
    let sim = start_sim(&token).await;
    let client = client(&sim, &token);
    client.ensure_user("pia").await.unwrap();

    let text = logs().text();
    assert!(
        text.lines()
            .any(|line| line.contains("TRACE") && line.contains("hyper_util::client")),
        "no TRACE line of the HTTP client library was captured"
    );
    assert!(
        text.contains("MyTimetable request"),
        "no DEBUG line of the client"
    );
}

#[test]
fn log_capture_detects_logged_token() {
    let token = unique_token("planted");
    logs();
    tracing::trace!(value = %token, "planted line");

    let check = std::panic::catch_unwind(|| logs().assert_never_contains(&token));

    assert!(check.is_err(), "a logged token went unnoticed");
}

// Accepts one HTTP/1.1 request on a loopback listener, responds 204, and returns the raw
// request text.
async fn capture_one_request(listener: tokio::net::TcpListener) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "connection closed before a full request");
        received.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&received);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if received.len() >= head_end + 4 + length {
                break;
            }
        }
    }
    stream
        .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    String::from_utf8(received).unwrap()
}

// A client whose base URL has the path `base_path` on a listener that captures its first
// request and responds 204.
async fn client_with_capture(
    token: &str,
    base_path: &str,
) -> (Client, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(capture_one_request(listener));
    let config = calsync_operator::mytimetable::ClientConfig::new(
        format!("http://{addr}{base_path}").parse().unwrap(),
        calsync_operator::mytimetable::Token::new(token),
    );
    logs();
    (Client::new(config).unwrap(), server)
}

#[tokio::test]
async fn create_request_has_documented_shape() {
    let token = unique_token("shape");
    let (client, server) = client_with_capture(&token, "/api/v0").await;

    client
        .create_synchronization("a/b c", "o365", Some("a.b@example.org"))
        .await
        .unwrap();

    let request = server.await.unwrap();
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    let head_lower = head.to_lowercase();
    assert!(
        head.starts_with("PUT /api/v0/synchronizations HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head_lower.contains(&format!("\r\napitoken: {}\r\n", token.to_lowercase())));
    assert!(head_lower.contains("\r\ncontent-type: application/x-www-form-urlencoded\r\n"));
    assert!(head_lower.contains(&format!(
        "\r\nuser-agent: calsync-operator/{}\r\n",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(
        head_lower.contains("\r\naccept-encoding: gzip\r\n"),
        "{head}"
    );
    assert_eq!(
        body,
        "username=a%2Fb+c&type=o365&provisioning_smtpAddress=a.b%40example.org"
    );
    logs().assert_never_contains(&token);
}

#[tokio::test]
async fn delete_request_carries_unlink_mode_query() {
    let token = unique_token("delete-shape");
    let (client, server) = client_with_capture(&token, "/api/v0/").await;

    let outcome = client
        .delete_synchronization(42, UnlinkMode::DeleteFutureEvents)
        .await
        .unwrap();

    assert_eq!(outcome, SyncDeletion::Deleted);
    let request = server.await.unwrap();
    assert!(
        request.starts_with(
            "DELETE /api/v0/synchronizations/42?unlinkMode=DELETE_FUTURE_EVENTS HTTP/1.1\r\n"
        ),
        "{request}"
    );
    logs().assert_never_contains(&token);
}
