//! The simulator's own behaviour over HTTP: status codes of every endpoint in both version
//! modes, the calendar model, the inspection and control endpoints, faults and the state
//! file. Requests are built by hand here, not with the MyTimetable client, so that these
//! tests pin what the server does whatever the client sends.

mod support;

use std::time::{Duration, Instant};

use calsync_operator::sim::{
    CalendarEvents, DROPPED, FaultRule, Faults, RequestReport, RunningSimulator, SimConfig,
    Simulator,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{loopback, start_sim, start_sim_with, unique_token};

// A raw HTTP client for one simulator and token.
struct Raw {
    http: reqwest::Client,
    base: String,
    control: String,
    token: String,
}

impl Raw {
    fn new(sim: &RunningSimulator, token: &str) -> Raw {
        calsync_operator::install_rustls_provider();
        Raw {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            base: sim.base_url().to_string(),
            control: sim.control_url().to_string(),
            token: token.to_owned(),
        }
    }

    // Sends `method path` (already percent-encoded) with the token and an optional form body.
    async fn send(&self, method: Method, path: &str, form: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("apiToken", &self.token);
        if let Some(form) = form {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.to_owned());
        }
        request.send().await.unwrap()
    }

    async fn status(&self, method: Method, path: &str, form: Option<&str>) -> StatusCode {
        self.send(method, path, form).await.status()
    }

    // Returns the status and the `message` of an error body.
    async fn error(&self, method: Method, path: &str, form: Option<&str>) -> (StatusCode, String) {
        let response = self.send(method, path, form).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (
            status,
            body["message"].as_str().unwrap_or_default().to_owned(),
        )
    }

    async fn json(&self, path: &str) -> Value {
        let response = self.send(Method::GET, path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    async fn sync_ids(&self) -> Vec<i64> {
        self.json("/synchronizations").await["synchronizations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sync| sync["id"].as_i64().unwrap())
            .collect()
    }

    async fn events(&self, username_path: &str) -> CalendarEvents {
        self.http
            .get(format!("{}/users/{username_path}/events", self.control))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn requests(&self) -> RequestReport {
        self.http
            .get(format!("{}/requests", self.control))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn put_faults(&self, faults: &str) -> StatusCode {
        self.http
            .put(format!("{}/faults", self.control))
            .header("content-type", "application/json")
            .body(faults.to_owned())
            .send()
            .await
            .unwrap()
            .status()
    }
}

async fn later_sim(token: &str) -> RunningSimulator {
    start_sim_with(SimConfig {
        later_version: true,
        ..SimConfig::new(token)
    })
    .await
}

#[tokio::test]
async fn missing_or_wrong_token_is_401() {
    let token = unique_token("sim-401");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    let http = raw.http.clone();

    let missing = http
        .get(format!("{}/users", raw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let body = missing.text().await.unwrap();
    assert!(body.contains("missing apiToken"), "{body}");

    let wrong = http
        .put(format!("{}/users/alice", raw.base))
        .header("apiToken", format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body = wrong.text().await.unwrap();
    assert!(body.contains("invalid apiToken"), "{body}");
    assert!(!body.contains(&token), "the response repeats the token");

    assert!(
        raw.json("/users").await["users"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn baseline_endpoints_return_documented_statuses() {
    let token = unique_token("sim-baseline");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);

    assert_eq!(
        raw.status(Method::PUT, "/users/alice", None).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        raw.status(Method::PUT, "/users/alice", None).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        raw.json("/users").await,
        serde_json::json!({"users": ["alice"]})
    );
    assert_eq!(
        raw.status(
            Method::PUT,
            "/synchronizations",
            Some("username=alice&type=o365")
        )
        .await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        raw.json("/synchronizations").await,
        serde_json::json!({"synchronizations": [{"id": 1, "username": "alice", "type": "o365"}]})
    );
    assert_eq!(
        raw.status(
            Method::DELETE,
            "/synchronizations/1?unlinkMode=UNLINK_ONLY",
            None
        )
        .await,
        StatusCode::NO_CONTENT
    );
    let (status, message) = raw
        .error(
            Method::DELETE,
            "/synchronizations/1?unlinkMode=UNLINK_ONLY",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("synchronization 1 not found"), "{message}");
    assert_eq!(
        raw.status(Method::DELETE, "/users/alice", None).await,
        StatusCode::NO_CONTENT
    );
    // 3.0 returns 204 for a user that does not exist.
    assert_eq!(
        raw.status(Method::DELETE, "/users/alice", None).await,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn create_validates_form_fields() {
    let token = unique_token("sim-form");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    raw.send(Method::PUT, "/users/bob", None).await;

    let cases = [
        ("type=o365", "missing form field: username"),
        ("username=&type=o365", "missing form field: username"),
        ("username=bob", "missing form field: type"),
        ("", "missing form field: username"),
        (
            "username=bob&type=caldav",
            "unknown synchronization type \"caldav\"",
        ),
        ("username=ghost&type=o365", "user \"ghost\" does not exist"),
    ];
    for (form, expected) in cases {
        let (status, message) = raw
            .error(Method::PUT, "/synchronizations", Some(form))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{form:?}");
        assert!(message.contains(expected), "{form:?}: {message}");
    }
    assert!(raw.sync_ids().await.is_empty());
}

#[tokio::test]
async fn delete_validates_unlink_mode_and_id() {
    let token = unique_token("sim-unlink-mode");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    raw.send(Method::PUT, "/users/carol", None).await;
    raw.send(
        Method::PUT,
        "/synchronizations",
        Some("username=carol&type=ews"),
    )
    .await;

    for query in ["", "?unlinkMode=", "?mode=CLEANUP"] {
        let (status, message) = raw
            .error(Method::DELETE, &format!("/synchronizations/1{query}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query:?}");
        assert!(
            message.contains("missing query parameter: unlinkMode"),
            "{query:?}: {message}"
        );
    }
    let (status, message) = raw
        .error(
            Method::DELETE,
            "/synchronizations/1?unlinkMode=cleanup",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("unknown unlinkMode \"cleanup\""),
        "{message}"
    );
    // A missing unlinkMode is reported before an unknown id.
    assert_eq!(
        raw.status(Method::DELETE, "/synchronizations/99", None)
            .await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        raw.status(
            Method::DELETE,
            "/synchronizations/abc?unlinkMode=CLEANUP",
            None
        )
        .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw.sync_ids().await,
        vec![1],
        "no rejected delete removed anything"
    );
}

#[tokio::test]
async fn second_put_creates_new_id() {
    let token = unique_token("sim-duplicate");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    raw.send(Method::PUT, "/users/dave", None).await;

    for _ in 0..3 {
        raw.send(
            Method::PUT,
            "/synchronizations",
            Some("username=dave&type=o365"),
        )
        .await;
    }

    assert_eq!(raw.sync_ids().await, vec![1, 2, 3]);
}

#[tokio::test]
async fn user_delete_removes_syncs_and_profile() {
    let token = unique_token("sim-user-delete");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    for user in ["erin", "frank"] {
        raw.send(Method::PUT, &format!("/users/{user}"), None).await;
        raw.send(
            Method::PUT,
            "/synchronizations",
            Some(&format!("username={user}&type=o365")),
        )
        .await;
    }

    assert_eq!(
        raw.status(Method::DELETE, "/users/erin", None).await,
        StatusCode::NO_CONTENT
    );

    assert_eq!(
        raw.json("/users").await,
        serde_json::json!({"users": ["frank"]})
    );
    let synchronizations = raw.json("/synchronizations").await;
    assert_eq!(
        synchronizations,
        serde_json::json!({"synchronizations": [{"id": 2, "username": "frank", "type": "o365"}]})
    );
    // The synchronization is gone with the user, so its id is unknown now.
    assert_eq!(
        raw.status(
            Method::DELETE,
            "/synchronizations/1?unlinkMode=UNLINK_ONLY",
            None
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn unlink_modes_change_events_as_documented() {
    let token = unique_token("sim-unlink");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    raw.send(Method::PUT, "/users/gina", None).await;
    // Synchronization 1 is unlinked first and leaves its events behind.
    for type_ in ["ews", "o365", "googlecalendar", "o365", "ews"] {
        raw.send(
            Method::PUT,
            "/synchronizations",
            Some(&format!("username=gina&type={type_}")),
        )
        .await;
    }
    raw.send(
        Method::DELETE,
        "/synchronizations/1?unlinkMode=UNLINK_ONLY",
        None,
    )
    .await;
    let count = |events: &CalendarEvents, id: i64| {
        events
            .events
            .iter()
            .filter(|event| {
                matches!(event.source, calsync_operator::sim::EventSource::Synchronization { id: sync, .. } if sync == id)
            })
            .count()
    };
    assert_eq!(raw.events("gina").await.events.len(), 20);

    raw.send(
        Method::DELETE,
        "/synchronizations/2?unlinkMode=DELETE_FUTURE_EVENTS",
        None,
    )
    .await;
    let events = raw.events("gina").await;
    assert_eq!(count(&events, 2), 2);
    assert!(events.events.iter().all(|event| {
        !matches!(
            event.source,
            calsync_operator::sim::EventSource::Synchronization { id: 2, .. }
        ) || event.start < jiff::Timestamp::now()
    }));

    raw.send(
        Method::DELETE,
        "/synchronizations/3?unlinkMode=DELETE_ALL_EVENTS",
        None,
    )
    .await;
    let events = raw.events("gina").await;
    assert_eq!(
        (count(&events, 1), count(&events, 2), count(&events, 3)),
        (4, 2, 0)
    );
    assert_eq!((count(&events, 4), count(&events, 5)), (4, 4));

    raw.send(
        Method::DELETE,
        "/synchronizations/4?unlinkMode=CLEANUP",
        None,
    )
    .await;
    let events = raw.events("gina").await;
    assert!(events.events.is_empty(), "{events:?}");
    // Synchronization 5 keeps running; CLEANUP removed only events.
    assert_eq!(raw.sync_ids().await, vec![5]);
}

#[tokio::test]
async fn personal_events_survive_cleanup() {
    let token = unique_token("sim-personal");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    raw.send(Method::PUT, "/users/hugo", None).await;
    raw.send(
        Method::PUT,
        "/synchronizations",
        Some("username=hugo&type=o365"),
    )
    .await;
    let added = raw
        .http
        .post(format!("{}/users/hugo/events", raw.control))
        .json(&serde_json::json!({
            "title": "Football", "start": "2030-01-01T10:00:00Z", "end": "2030-01-01T12:00:00Z"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let backwards = raw
        .http
        .post(format!("{}/users/hugo/events", raw.control))
        .json(&serde_json::json!({
            "title": "Backwards", "start": "2030-01-01T12:00:00Z", "end": "2030-01-01T10:00:00Z"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(backwards.status(), StatusCode::BAD_REQUEST);

    raw.send(
        Method::DELETE,
        "/synchronizations/1?unlinkMode=CLEANUP",
        None,
    )
    .await;

    let events = raw.events("hugo").await;
    assert_eq!(events.events.len(), 1);
    assert_eq!(events.events[0].title, "Football");
}

#[tokio::test]
async fn encoded_usernames_are_decoded_once() {
    let token = unique_token("sim-encoding");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    let cases = [
        ("a%2Fb", "a/b"),
        ("a%3Fb", "a?b"),
        ("a%23b", "a#b"),
        ("a%25b", "a%b"),
        ("a%252Fb", "a%2Fb"),
        ("a%20b", "a b"),
        ("a+b", "a+b"),
        ("%C3%A9l%C3%A8ve", "élève"),
    ];

    for (encoded, _) in cases {
        assert_eq!(
            raw.status(Method::PUT, &format!("/users/{encoded}"), None)
                .await,
            StatusCode::NO_CONTENT,
            "{encoded}"
        );
    }

    let users = raw.json("/users").await;
    let mut listed: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user.as_str().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<&str> = cases.iter().map(|(_, decoded)| *decoded).collect();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn later_endpoints_are_absent_in_baseline() {
    let token = unique_token("sim-no-later");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    raw.send(Method::PUT, "/users/ida", None).await;

    assert_eq!(
        raw.status(Method::GET, "/users/ida", None).await,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        raw.status(Method::POST, "/users", Some("username=jan"))
            .await,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        raw.status(Method::GET, "/users/ida/synchronizations", None)
            .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw.status(
            Method::DELETE,
            "/users/ida/synchronizations/o365?unlinkMode=CLEANUP",
            None
        )
        .await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn later_version_serves_user_endpoints() {
    let token = unique_token("sim-later");
    let sim = later_sim(&token).await;
    let raw = Raw::new(&sim, &token);

    assert_eq!(
        raw.status(Method::GET, "/users/kim", None).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw.status(Method::DELETE, "/users/kim", None).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw.status(Method::POST, "/users", Some("username=kim"))
            .await,
        StatusCode::CREATED
    );
    assert_eq!(
        raw.status(Method::POST, "/users", Some("username=kim"))
            .await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        raw.status(Method::POST, "/users", Some("name=kim")).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        raw.json("/users/kim").await,
        serde_json::json!({"username": "kim"})
    );
    // PUT with a body: 201 created, 200 existed, 400 for a different username.
    assert_eq!(
        raw.status(Method::PUT, "/users/lou", Some("username=lou"))
            .await,
        StatusCode::CREATED
    );
    assert_eq!(
        raw.status(Method::PUT, "/users/lou", Some("username=lou"))
            .await,
        StatusCode::OK
    );
    assert_eq!(
        raw.status(Method::PUT, "/users/lou", Some("username=other"))
            .await,
        StatusCode::BAD_REQUEST
    );
    // PUT without a body keeps the 3.0 status.
    assert_eq!(
        raw.status(Method::PUT, "/users/lou", None).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        raw.status(Method::DELETE, "/users/kim", None).await,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn later_version_serves_user_synchronizations() {
    let token = unique_token("sim-later-syncs");
    let sim = later_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    raw.send(Method::PUT, "/users/mia", None).await;
    for form in [
        "username=mia&type=ews&provisioning_smtpAddress=mia%40example.org",
        "username=mia&type=o365",
        "username=mia&type=o365",
    ] {
        raw.send(Method::PUT, "/synchronizations", Some(form)).await;
    }

    let listed = raw.json("/users/mia/synchronizations").await;
    let entries = listed["synchronizations"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["description"], "mia@example.org");
    assert_eq!(entries[0]["enabled"], true);
    assert_eq!(entries[0]["status"], "OK");
    assert!(entries[0]["lastResync"].as_i64().is_some_and(|ms| ms > 0));
    assert_eq!(
        raw.json("/synchronizations").await["synchronizations"][0]["status"],
        "OK",
        "the global list carries the extra fields too"
    );
    assert_eq!(
        raw.status(Method::GET, "/users/nobody/synchronizations", None)
            .await,
        StatusCode::NOT_FOUND
    );

    // Per type: both o365 synchronizations go, then none is left of that type.
    let path = "/users/mia/synchronizations/o365?unlinkMode=DELETE_ALL_EVENTS";
    assert_eq!(
        raw.status(Method::DELETE, path, None).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        raw.status(Method::DELETE, path, None).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(raw.sync_ids().await, vec![1]);
    assert_eq!(raw.events("mia").await.events.len(), 4);
    assert_eq!(
        raw.status(Method::DELETE, "/users/mia/synchronizations/ews", None)
            .await,
        StatusCode::BAD_REQUEST
    );

    // All of a user's synchronizations.
    let path = "/users/mia/synchronizations?unlinkMode=UNLINK_ONLY";
    assert_eq!(
        raw.status(Method::DELETE, path, None).await,
        StatusCode::NO_CONTENT
    );
    assert!(raw.sync_ids().await.is_empty());
    assert_eq!(raw.events("mia").await.events.len(), 4);
    assert_eq!(
        raw.status(
            Method::DELETE,
            "/users/nobody/synchronizations?unlinkMode=UNLINK_ONLY",
            None
        )
        .await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn lists_are_gzip_encoded_when_accepted() {
    let token = unique_token("sim-gzip");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    for number in 0..50 {
        raw.send(Method::PUT, &format!("/users/student-{number:04}"), None)
            .await;
    }

    // reqwest would decompress and drop the header, so this client leaves bodies alone.
    let plain = reqwest::Client::builder().no_gzip().build().unwrap();
    let response = plain
        .get(format!("{}/users", raw.base))
        .header("apiToken", &token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-encoding"], "gzip");
}

#[tokio::test]
async fn request_counters_and_reset() {
    let token = unique_token("sim-counters");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    raw.send(Method::PUT, "/users/nora", None).await;
    raw.send(Method::PUT, "/users/nora", None).await;
    raw.send(Method::GET, "/no/such/endpoint", None).await;
    raw.http
        .get(format!("{}/users", raw.base))
        .send()
        .await
        .unwrap();

    let report = raw.requests().await;
    assert_eq!(report.count_with_status("PUT /users/{username}", "204"), 2);
    assert_eq!(report.count_with_status("GET /users", "401"), 1);
    assert_eq!(report.count("unmatched"), 1);
    assert_eq!(report.total, 4);

    let reset = raw
        .http
        .post(format!("{}/reset", raw.control))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert_eq!(raw.requests().await.total, 0);
    assert!(
        raw.json("/users").await["users"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let stats: Value = raw
        .http
        .get(format!("{}/stats", raw.control))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats,
        serde_json::json!({"users": 0, "synchronizations": 0, "laterVersion": false})
    );
}

#[tokio::test]
async fn faults_are_set_and_validated_over_http() {
    let token = unique_token("sim-faults-http");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);

    assert_eq!(
        raw.put_faults(r#"{"serverErrors": {"rate": 2.0}}"#).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        raw.put_faults(r#"{"unknownFault": 1}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        raw.put_faults(r#"{"serverErrors": {"next": 1, "endpoint": "GET /users"}}"#)
            .await,
        StatusCode::OK
    );
    assert_eq!(sim.faults().server_errors.next, 1);

    assert_eq!(
        raw.status(Method::PUT, "/users/olaf", None).await,
        StatusCode::NO_CONTENT
    );
    let (status, message) = raw.error(Method::GET, "/users", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(message.contains("injected"), "{message}");
    assert_eq!(
        raw.status(Method::GET, "/users", None).await,
        StatusCode::OK
    );

    raw.put_faults(r#"{"rateLimits": {"rate": 1.0}, "retryAfterSecs": 7}"#)
        .await;
    let limited = raw.send(Method::GET, "/users", None).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "7");

    let cleared = raw
        .http
        .delete(format!("{}/faults", raw.control))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert_eq!(sim.faults(), Faults::default());
    assert_eq!(
        raw.status(Method::GET, "/users", None).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn rejected_faults_apply_nothing() {
    let token = unique_token("sim-fault-rejects");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    sim.set_faults(Faults {
        server_errors: FaultRule::next(1),
        rate_limits: FaultRule::next(1),
        ..Faults::default()
    })
    .unwrap();

    assert_eq!(
        raw.status(Method::PUT, "/users/pete", None).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        raw.status(Method::PUT, "/users/pete", None).await,
        StatusCode::TOO_MANY_REQUESTS
    );

    assert!(
        raw.json("/users").await["users"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn dropped_response_closes_connection_after_write() {
    let token = unique_token("sim-dropped");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    raw.send(Method::PUT, "/users/quinn", None).await;
    sim.set_faults(Faults {
        dropped_responses: FaultRule::next(1).on("PUT /synchronizations"),
        ..Faults::default()
    })
    .unwrap();

    let result = raw
        .http
        .put(format!("{}/synchronizations", raw.base))
        .header("apiToken", &token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=quinn&type=o365")
        .send()
        .await;

    let error = result.expect_err("the connection closes without a response");
    assert!(!error.is_timeout(), "{error:?}");
    assert_eq!(raw.sync_ids().await, vec![1]);
    assert_eq!(
        raw.requests()
            .await
            .count_with_status("PUT /synchronizations", DROPPED),
        1
    );
}

#[tokio::test]
async fn slow_response_applies_then_waits() {
    let token = unique_token("sim-slow");
    let sim = start_sim(&token).await;
    let raw = Raw::new(&sim, &token);
    sim.set_faults(Faults {
        slow_responses: FaultRule::next(1),
        slow_response_delay: Duration::from_secs(5),
        ..Faults::default()
    })
    .unwrap();

    let result = raw
        .http
        .put(format!("{}/users/rosa", raw.base))
        .header("apiToken", &token)
        .timeout(Duration::from_millis(300))
        .send()
        .await;

    assert!(result.expect_err("times out").is_timeout());
    assert_eq!(
        raw.json("/users").await,
        serde_json::json!({"users": ["rosa"]})
    );
}

#[tokio::test]
async fn latency_delays_every_request() {
    let token = unique_token("sim-latency");
    let sim = start_sim_with(SimConfig {
        faults: Faults {
            latency: Duration::from_millis(150),
            ..Faults::default()
        },
        ..SimConfig::new(&token)
    })
    .await;
    let raw = Raw::new(&sim, &token);

    let started = Instant::now();
    let statuses =
        futures::future::join_all((0..4).map(|_| raw.status(Method::GET, "/users", None))).await;

    assert!(statuses.iter().all(|status| *status == StatusCode::OK));
    let elapsed = started.elapsed();
    // Lower bound only: each response waits for the injected latency.
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
}

#[tokio::test]
async fn state_file_keeps_state_across_restart() {
    let token = unique_token("sim-state");
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("state.json");
    let config = SimConfig {
        state_file: Some(path.clone()),
        ..SimConfig::new(&token)
    };

    let sim = start_sim_with(config.clone()).await;
    let raw = Raw::new(&sim, &token);
    raw.send(Method::PUT, "/users/sam", None).await;
    raw.send(
        Method::PUT,
        "/synchronizations",
        Some("username=sam&type=o365"),
    )
    .await;
    raw.send(
        Method::PUT,
        "/synchronizations",
        Some("username=sam&type=ews"),
    )
    .await;
    raw.send(
        Method::DELETE,
        "/synchronizations/1?unlinkMode=DELETE_FUTURE_EVENTS",
        None,
    )
    .await;
    let events_before = raw.events("sam").await;
    sim.shutdown().await;
    assert!(path.exists());

    let sim = start_sim_with(config.clone()).await;
    let raw = Raw::new(&sim, &token);
    assert_eq!(
        raw.json("/users").await,
        serde_json::json!({"users": ["sam"]})
    );
    assert_eq!(raw.sync_ids().await, vec![2]);
    assert_eq!(raw.events("sam").await, events_before);
    // Ids continue after the restart instead of reusing 1 or 2.
    raw.send(
        Method::PUT,
        "/synchronizations",
        Some("username=sam&type=o365"),
    )
    .await;
    assert_eq!(raw.sync_ids().await, vec![2, 3]);
    sim.shutdown().await;

    let leftovers: Vec<_> = std::fs::read_dir(folder.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("state.json")],
        "no temporary files stay"
    );
}

#[tokio::test]
async fn state_file_is_written_while_running() {
    let token = unique_token("sim-state-live");
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("state.json");
    let sim = start_sim_with(SimConfig {
        state_file: Some(path.clone()),
        ..SimConfig::new(&token)
    })
    .await;
    let raw = Raw::new(&sim, &token);

    raw.send(Method::PUT, "/users/tara", None).await;

    // The writer runs about 100 ms after a change; poll for up to 30 s, a margin for a
    // loaded 2-core machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        if written.contains("\"tara\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "state file not written: {written}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_state_file_stops_start() {
    let token = unique_token("sim-state-invalid");
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("state.json");
    std::fs::write(&path, "{\"formatVersion\": 1, \"model\": 5}").unwrap();

    let result = Simulator::start(
        loopback(),
        SimConfig {
            state_file: Some(path.clone()),
            ..SimConfig::new(&token)
        },
    )
    .await;

    let error = result.err().expect("start fails");
    assert!(error.to_string().contains("invalid state file"), "{error}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"formatVersion\": 1, \"model\": 5}",
        "the file is left as it was"
    );
}

#[tokio::test]
async fn empty_token_and_bad_faults_stop_start() {
    let empty = Simulator::start(loopback(), SimConfig::new("")).await;
    assert!(matches!(
        empty,
        Err(calsync_operator::sim::Error::EmptyToken)
    ));

    let bad = Simulator::start(
        loopback(),
        SimConfig {
            faults: Faults {
                dropped_responses: FaultRule {
                    rate: 1.5,
                    ..FaultRule::default()
                },
                ..Faults::default()
            },
            ..SimConfig::new("token")
        },
    )
    .await;
    assert!(matches!(
        bad,
        Err(calsync_operator::sim::Error::InvalidFaults(_))
    ));
}

#[tokio::test]
async fn port_in_use_is_reported() {
    let token = unique_token("sim-port");
    let first = start_sim(&token).await;

    let second = Simulator::start(first.addr(), SimConfig::new(&token)).await;

    let error = second.err().expect("the port is taken");
    assert!(
        error.to_string().contains(&first.addr().to_string()),
        "{error}"
    );
}
