//! `/metrics` of the real `calsync-operator run` binary, scraped over HTTP and parsed:
//! reconciles, MyTimetable requests and retries, the remote view's age and object counts,
//! and leadership.

mod ops_harness;

use calsync_operator::sim::{FaultRule, Faults};
use ops_harness::*;

const USER: &[(&str, &str)] = &[("kind", "CalendarUser"), ("result", "success")];
const SYNC: &[(&str, &str)] = &[("kind", "CalendarSync"), ("result", "success")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_reconciles_requests_and_objects() {
    let harness = Harness::new("metrics").await;
    // The first two user lists fail, so the client retries them.
    harness
        .sim
        .set_faults(Faults {
            server_errors: FaultRule {
                next: 2,
                endpoint: Some("GET /users".to_string()),
                ..FaultRule::default()
            },
            ..Faults::default()
        })
        .expect("valid faults");
    // A remote user that no resource declares.
    harness
        .sim_client()
        .ensure_user("drift-1")
        .await
        .expect("user");
    let operator =
        Operator::start(&harness, "solo", &["--leader-election=false".to_string()]).await;

    create(&harness.users(), &user("alice", "alice")).await;
    create(&harness.syncs(), &sync("alice-o365", "alice", "o365")).await;
    wait_ready(&harness.users(), "alice").await;
    wait_ready(&harness.syncs(), "alice-o365").await;
    // The counts follow the ownership index and the next refresh.
    let metrics = wait_until("the managed objects to be counted", || async {
        let metrics = operator.metrics().await;
        let managed = metrics.value(
            "calsync_remote_objects",
            &[("kind", "synchronization"), ("managed", "true")],
        );
        (
            (managed == Some(1.0)).then_some(metrics.clone()),
            format!("{managed:?}"),
        )
    })
    .await;

    // Reconciles by kind and result, with their durations.
    assert!(metrics.expect("calsync_reconciles_total", USER) >= 1.0);
    assert!(metrics.expect("calsync_reconciles_total", SYNC) >= 1.0);
    let count = metrics.expect(
        "calsync_reconcile_duration_seconds_count",
        &[("kind", "CalendarUser")],
    );
    let in_last_bucket = metrics.expect(
        "calsync_reconcile_duration_seconds_bucket",
        &[("kind", "CalendarUser"), ("le", "+Inf")],
    );
    assert!(count >= 1.0);
    assert_eq!(count, in_last_bucket);
    assert_eq!(
        metrics
            .types
            .get("calsync_reconcile_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );

    // MyTimetable requests by endpoint and status, latencies and retries.
    let requests = |endpoint: &str, status: &str| {
        metrics.value(
            "mytimetable_requests_total",
            &[("endpoint", endpoint), ("status", status)],
        )
    };
    assert!(requests("PUT /users/{username}", "204") >= Some(1.0));
    assert!(requests("PUT /synchronizations", "204") >= Some(1.0));
    assert_eq!(requests("GET /users", "500"), Some(2.0));
    assert_eq!(
        metrics.value(
            "mytimetable_retries_total",
            &[("endpoint", "GET /users"), ("reason", "server")]
        ),
        Some(2.0)
    );
    assert!(
        metrics.expect(
            "mytimetable_request_duration_seconds_count",
            &[("endpoint", "GET /users")]
        ) >= 3.0
    );

    // The remote view: alice is managed, drift-1 is not.
    let objects = |kind: &str, managed: &str| {
        metrics.expect(
            "calsync_remote_objects",
            &[("kind", kind), ("managed", managed)],
        )
    };
    assert_eq!(objects("user", "true"), 1.0);
    assert_eq!(objects("user", "false"), 1.0);
    assert_eq!(objects("synchronization", "false"), 0.0);
    assert!(metrics.expect("calsync_remote_view_age_seconds", &[]) >= 0.0);
    assert_eq!(metrics.expect("calsync_leader", &[]), 1.0);

    // A second user moves the counters.
    let before = metrics.expect("calsync_reconciles_total", USER);
    create(&harness.users(), &user("bob", "bob")).await;
    wait_ready(&harness.users(), "bob").await;
    let after = operator.metrics().await;
    assert!(after.expect("calsync_reconciles_total", USER) > before);

    let (_, text) = operator.get_text("/metrics").await;
    assert!(!text.contains(TOKEN), "the token appears in /metrics");
    operator.terminate();
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reconciles_count_their_error() {
    let harness = Harness::new("metrics-errors").await;
    // Every user PUT fails with 500, so each user reconcile fails after the client's
    // retries.
    harness
        .sim
        .set_faults(Faults {
            server_errors: every_request_to("PUT /users/{username}"),
            ..Faults::default()
        })
        .expect("valid faults");
    let operator =
        Operator::start(&harness, "solo", &["--leader-election=false".to_string()]).await;
    create(&harness.users(), &user("alice", "alice")).await;

    let metrics = wait_until("a failed reconcile to be counted", || async {
        let metrics = operator.metrics().await;
        let failed = metrics.value(
            "calsync_reconcile_errors_total",
            &[("kind", "CalendarUser"), ("error", "server")],
        );
        (
            (failed >= Some(1.0)).then_some(metrics.clone()),
            format!("{failed:?}"),
        )
    })
    .await;
    assert!(
        metrics.expect(
            "calsync_reconciles_total",
            &[("kind", "CalendarUser"), ("result", "error")]
        ) >= 1.0
    );
    assert!(
        metrics.value(
            "mytimetable_retries_total",
            &[("endpoint", "PUT /users/{username}"), ("reason", "server")]
        ) >= Some(1.0)
    );
    operator.assert_output_hides(TOKEN);
    operator.terminate();
    harness.shutdown().await;
}

#[test]
fn sample_parser_reads_braces_in_label_values() {
    let sample = parse_sample(
        r#"mytimetable_requests_total{endpoint="PUT /users/{username}",status="204"} 3"#,
    )
    .expect("valid line");
    assert_eq!(sample.name, "mytimetable_requests_total");
    assert_eq!(sample.labels["endpoint"], "PUT /users/{username}");
    assert_eq!(sample.labels["status"], "204");
    assert_eq!(sample.value, 3.0);
}

#[test]
fn metrics_parser_rejects_undeclared_samples() {
    let error = Metrics::parse("calsync_leader 1\n# EOF\n").expect_err("undeclared");
    assert!(error.contains("undeclared"), "{error}");
}

#[test]
fn metrics_parser_requires_eof() {
    let error =
        Metrics::parse("# TYPE calsync_leader gauge\ncalsync_leader 1\n").expect_err("no EOF");
    assert!(error.contains("EOF"), "{error}");
}
