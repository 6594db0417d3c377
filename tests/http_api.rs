//! The read-only API over HTTP, served from a remote view of a simulator in this process:
//! MyTimetable's shapes, methods and paths, entity tags, ages, filters, and no request to
//! MyTimetable per API request.

use std::sync::Arc;
use std::time::Duration;

use calsync_operator::http::{HttpState, Server};
use calsync_operator::mytimetable::{Client, ClientConfig, Token};
use calsync_operator::remote::{Ownership, RemoteView, Snapshot, ViewConfig};
use calsync_operator::sim::{RunningSimulator, SimConfig, Simulator};
use calsync_operator::telemetry::{HealthConfig, Telemetry};
use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::watcher;
use reqwest::StatusCode;
use reqwest::header::{AGE, ALLOW, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "http-api-test-token-93b1";

/// A simulator, a remote view of it that refreshes only when asked, and the HTTP server.
struct Fixture {
    sim: RunningSimulator,
    remote: Client,
    view: RemoteView,
    telemetry: Telemetry,
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Fixture {
    async fn start() -> Fixture {
        calsync_operator::install_rustls_provider();
        let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), SimConfig::new(TOKEN))
            .await
            .expect("simulator starts");
        let remote =
            Client::new(ClientConfig::new(sim.base_url(), Token::new(TOKEN))).expect("client");
        // A resync interval of an hour: the view lists only when a test requests a refresh,
        // so that the simulator's request counters show every list.
        let view = RemoteView::new(
            Arc::new(remote.clone()),
            ViewConfig::new(Duration::from_secs(3600)),
        );
        let telemetry = Telemetry::new(HealthConfig {
            reconcile_stall_after: Duration::from_secs(600),
            refresh_stall_after: Duration::from_secs(7200),
            lease_stall_after: Duration::from_secs(60),
        });
        let stop = CancellationToken::new();
        let server = Server::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("binds");
        let base = format!("http://{}", server.address());
        let state = HttpState::new(view.clone(), telemetry.clone());
        tokio::spawn(server.serve(state, stop.clone().cancelled_owned()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("HTTP client");
        Fixture {
            sim,
            remote,
            view,
            telemetry,
            base,
            http,
            stop,
        }
    }

    // Starts the view's refresh loop and waits for its first snapshot.
    async fn start_view(&self) -> Arc<Snapshot> {
        let view = self.view.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move { view.run(stop).await });
        self.refresh().await
    }

    // Waits for a snapshot listed after now.
    async fn refresh(&self) -> Arc<Snapshot> {
        let now = Timestamp::now();
        tokio::time::timeout(Duration::from_secs(30), self.view.fresh_snapshot(now))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no snapshot after {now}; last failure: {:?}",
                    self.view.last_failure()
                )
            })
    }

    // Marks both resource watches as established, as the controller does after its
    // initial lists.
    fn establish_watches(&self) {
        for kind in ["CalendarUser", "CalendarSync"] {
            self.telemetry
                .health
                .observe_watch::<()>(kind, &Ok(watcher::Event::InitDone));
        }
    }

    async fn request(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.http
            .request(method.clone(), format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|error| panic!("{method} {path} failed: {error}"))
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path).await
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        let status = response.status();
        let text = response.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("GET {path}: {error}: {text}"))
    }

    // The simulator's own response to `path`, for comparing shapes.
    async fn sim_json(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.sim.base_url());
        let response = self
            .http
            .get(url)
            .header("apiToken", TOKEN)
            .send()
            .await
            .expect("simulator responds");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("simulator JSON")
    }

    // Creates users and synchronizations in the simulator: alice (o365, ews), bob (o365),
    // and the username "a/b c%" (googlecalendar).
    async fn seed(&self) {
        for (username, types) in [
            ("alice", &["o365", "ews"][..]),
            ("bob", &["o365"][..]),
            ("a/b c%", &["googlecalendar"][..]),
        ] {
            self.remote.ensure_user(username).await.expect("user");
            for type_ in types {
                self.remote
                    .create_synchronization(username, type_, None)
                    .await
                    .expect("synchronization");
            }
        }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.sim.shutdown().await;
    }
}

async fn error_message(response: reqwest::Response) -> String {
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {body}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_match_mytimetable_bodies() {
    let fixture = Fixture::start().await;
    fixture.seed().await;
    fixture.start_view().await;

    for path in ["/users", "/synchronizations"] {
        let response = fixture.get(&format!("/api/v0{path}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let ours: Value = response.json().await.expect("JSON");
        let theirs = fixture.sim_json(path).await;
        assert_eq!(ours, theirs, "GET {path} differs from MyTimetable's body");
    }
    let users = fixture.get_json("/api/v0/users").await;
    assert_eq!(users, json!({ "users": ["a/b c%", "alice", "bob"] }));
    let syncs = fixture.get_json("/api/v0/synchronizations").await;
    let first = &syncs["synchronizations"][0];
    assert_eq!(
        first.as_object().map(|o| o.len()),
        Some(3),
        "entries carry exactly id, username and type: {first}"
    );
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_path_decodes_one_segment() {
    let fixture = Fixture::start().await;
    fixture.seed().await;
    fixture.start_view().await;

    let odd = fixture
        .get_json("/api/v0/users/a%2Fb%20c%25/synchronizations")
        .await;
    let entries = odd["synchronizations"].as_array().expect("list");
    assert_eq!(entries.len(), 1, "{odd}");
    assert_eq!(entries[0]["username"], "a/b c%");
    assert_eq!(entries[0]["type"], "googlecalendar");

    let alice = fixture
        .get_json("/api/v0/users/alice/synchronizations")
        .await;
    let types: Vec<&str> = alice["synchronizations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|entry| entry["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, vec!["o365", "ews"]);

    let unknown = fixture.get("/api/v0/users/carol/synchronizations").await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let message = error_message(unknown).await;
    assert!(message.contains("\"carol\""), "{message}");
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_return_405_with_allow() {
    let fixture = Fixture::start().await;
    fixture.start_view().await;
    let paths = [
        "/api/v0/users",
        "/api/v0/synchronizations",
        "/api/v0/users/alice/synchronizations",
        "/healthz",
        "/readyz",
        "/metrics",
    ];
    let methods = [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ];
    for path in paths {
        for method in methods.clone() {
            let response = fixture.request(method.clone(), path).await;
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(response.headers()[ALLOW], "GET,HEAD", "{method} {path}");
            let message = error_message(response).await;
            assert!(message.contains("read-only"), "{method} {path}: {message}");
        }
    }
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_return_404_json() {
    let fixture = Fixture::start().await;
    fixture.start_view().await;
    for path in [
        "/",
        "/api/v0",
        "/api/v0/users/",
        "/api/v0/user",
        "/api/v1/users",
        "/api/v0/users/alice",
        "/api/v0/synchronizations/1",
        "/_sim/requests",
    ] {
        let response = fixture.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let message = error_message(response).await;
        assert!(message.contains("no endpoint"), "{path}: {message}");
    }
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_sends_headers_without_body() {
    let fixture = Fixture::start().await;
    fixture.seed().await;
    fixture.start_view().await;
    let response = fixture
        .request(reqwest::Method::HEAD, "/api/v0/synchronizations")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key(ETAG));
    assert!(response.headers().contains_key(AGE));
    assert!(response.bytes().await.expect("body").is_empty());
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etag_revalidation_returns_304() {
    let fixture = Fixture::start().await;
    fixture.seed().await;
    fixture.start_view().await;

    let first = fixture.get("/api/v0/users").await;
    let etag = first.headers()[ETAG].to_str().expect("ASCII").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong tag: {etag}"
    );
    let conditional = |value: String| {
        let http = fixture.http.clone();
        let url = format!("{}/api/v0/users", fixture.base);
        async move {
            http.get(url)
                .header(IF_NONE_MATCH, value)
                .send()
                .await
                .expect("request")
        }
    };

    for matching in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_string(),
    ] {
        let response = conditional(matching.clone()).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{matching}");
        assert_eq!(response.headers()[ETAG], etag.as_str());
        assert!(response.headers().contains_key(AGE), "{matching}");
        assert!(response.bytes().await.expect("body").is_empty());
    }
    let other = conditional("\"other\"".to_string()).await;
    assert_eq!(other.status(), StatusCode::OK);

    // A new remote user changes the body, so the old tag no longer matches.
    fixture.remote.ensure_user("carol").await.expect("user");
    fixture.refresh().await;
    let changed = conditional(etag.clone()).await;
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(changed.headers()[ETAG], etag.as_str());
    let body: Value = changed.json().await.expect("JSON");
    assert_eq!(body["users"][3], "carol");

    // The synchronizations did not change, so their tag stays valid across snapshots.
    let syncs = fixture.get("/api/v0/synchronizations").await;
    let sync_etag = syncs.headers()[ETAG].to_str().expect("ASCII").to_string();
    fixture.refresh().await;
    let again = fixture
        .http
        .get(format!("{}/api/v0/synchronizations", fixture.base))
        .header(IF_NONE_MATCH, sync_etag)
        .send()
        .await
        .expect("request");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_counts_from_the_list_request() {
    let fixture = Fixture::start().await;
    let before_refresh = Timestamp::now();
    fixture.start_view().await;
    // At least one whole second passes, so the age cannot be zero any more.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = fixture.get("/api/v0/users").await;
    let age: u64 = response.headers()[AGE]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    let since_refresh = Timestamp::now().duration_since(before_refresh).as_secs();
    assert!(age >= 1, "age {age}");
    assert!(
        age <= since_refresh.unsigned_abs(),
        "age {age} exceeds the {since_refresh} s since the refresh started"
    );
    assert_eq!(response.headers()["cache-control"], "no-cache");
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_split_managed_and_unmanaged() {
    let fixture = Fixture::start().await;
    fixture.seed().await;
    let snapshot = fixture.start_view().await;
    fixture.establish_watches();
    let alice_ids: Vec<i64> = snapshot.syncs_of_user("alice").map(|s| s.id).collect();
    fixture.view.set_ownership(Ownership {
        users: ["alice".to_string()].into_iter().collect(),
        synchronizations: alice_ids.iter().copied().collect(),
    });

    let managed = fixture.get_json("/api/v0/users?managed=true").await;
    assert_eq!(managed, json!({ "users": ["alice"] }));
    let unmanaged = fixture.get_json("/api/v0/users?managed=false").await;
    assert_eq!(unmanaged, json!({ "users": ["a/b c%", "bob"] }));

    let managed_syncs = fixture
        .get_json("/api/v0/synchronizations?managed=true")
        .await;
    let ids: Vec<i64> = managed_syncs["synchronizations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|entry| entry["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, alice_ids);
    let drift = fixture
        .get_json("/api/v0/synchronizations?managed=false")
        .await;
    let drift_users: Vec<&str> = drift["synchronizations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|entry| entry["username"].as_str().expect("username"))
        .collect();
    assert_eq!(drift_users, vec!["bob", "a/b c%"]);
    let bob_managed = fixture
        .get_json("/api/v0/users/bob/synchronizations?managed=true")
        .await;
    assert_eq!(bob_managed, json!({ "synchronizations": [] }));

    // Each filter has its own body and tag.
    let all_tag = fixture.get("/api/v0/users").await.headers()[ETAG].clone();
    let managed_tag = fixture.get("/api/v0/users?managed=true").await.headers()[ETAG].clone();
    assert_ne!(all_tag, managed_tag);

    for invalid in ["yes", "", "TRUE"] {
        let response = fixture
            .get(&format!("/api/v0/users?managed={invalid}"))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{invalid:?}");
        let message = error_message(response).await;
        assert!(message.contains("managed="), "{message}");
    }
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_wait_for_resource_watches() {
    let fixture = Fixture::start().await;
    fixture.seed().await;
    fixture.start_view().await;

    let response = fixture.get("/api/v0/users?managed=false").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[RETRY_AFTER], "5");
    let message = error_message(response).await;
    assert!(message.contains("not been listed"), "{message}");
    // Without a filter the list does not depend on the resources.
    assert_eq!(fixture.get("/api/v0/users").await.status(), StatusCode::OK);

    fixture.establish_watches();
    assert_eq!(
        fixture.get("/api/v0/users?managed=false").await.status(),
        StatusCode::OK
    );
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_before_first_refresh_is_unavailable() {
    let fixture = Fixture::start().await;
    // The view's refresh loop never starts, so no snapshot exists.
    for path in [
        "/api/v0/users",
        "/api/v0/synchronizations",
        "/api/v0/users/alice/synchronizations",
    ] {
        let response = fixture.get(path).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(response.headers()[RETRY_AFTER], "5", "{path}");
        let message = error_message(response).await;
        assert!(message.contains("not loaded"), "{path}: {message}");
    }
    let ready = fixture.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reasons = ready.text().await.expect("text");
    assert!(reasons.contains("remote view has not loaded"), "{reasons}");
    assert!(reasons.contains("CalendarUser watch"), "{reasons}");
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_watches_and_view() {
    let fixture = Fixture::start().await;
    fixture.start_view().await;
    let not_ready = fixture.get("/readyz").await;
    assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    fixture.establish_watches();
    let ready = fixture.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.text().await.expect("text"), "ok\n");
    let live = fixture.get("/healthz").await;
    assert_eq!(live.status(), StatusCode::OK);

    fixture.telemetry.health.set_shutting_down();
    let stopping = fixture.get("/readyz").await;
    assert_eq!(stopping.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(stopping.text().await.expect("text"), "shutting down\n");
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_never_reach_mytimetable() {
    let fixture = Fixture::start().await;
    fixture.seed().await;
    fixture.start_view().await;
    fixture.establish_watches();
    let before = fixture.sim.requests();

    let paths = [
        "/api/v0/users",
        "/api/v0/synchronizations",
        "/api/v0/users?managed=false",
        "/api/v0/synchronizations?managed=true",
        "/api/v0/users/alice/synchronizations",
        "/api/v0/users/carol/synchronizations",
        "/metrics",
        "/healthz",
        "/readyz",
    ];
    // 450 requests, 10 at a time.
    let requests = (0..50).flat_map(|_| paths.iter().copied());
    let fixture_ref = &fixture;
    let statuses: Vec<StatusCode> = futures::stream::iter(requests)
        .map(|path| async move { fixture_ref.get(path).await.status() })
        .buffer_unordered(10)
        .collect()
        .await;
    assert_eq!(statuses.len(), 450);
    let not_found = statuses
        .iter()
        .filter(|status| **status == StatusCode::NOT_FOUND)
        .count();
    assert_eq!(not_found, 50, "only carol is unknown");

    let after = fixture.sim.requests();
    assert_eq!(
        after.total, before.total,
        "requests reached MyTimetable: {after:?}"
    );
    assert_eq!(after.by_endpoint, before.by_endpoint);
    fixture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_never_contain_the_token() {
    let fixture = Fixture::start().await;
    fixture.seed().await;
    fixture.start_view().await;
    fixture.establish_watches();
    for path in [
        "/api/v0/users",
        "/api/v0/synchronizations",
        "/api/v0/users/alice/synchronizations",
        "/api/v0/users/carol/synchronizations",
        "/api/v0/users?managed=maybe",
        "/metrics",
        "/healthz",
        "/readyz",
        "/nowhere",
    ] {
        let response = fixture.get(path).await;
        let headers = format!("{:?}", response.headers());
        let body = response.text().await.expect("body");
        assert!(!headers.contains(TOKEN), "token in the headers of {path}");
        assert!(!body.contains(TOKEN), "token in the body of {path}");
    }
    fixture.shutdown().await;
}
