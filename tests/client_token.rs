//! Token loaders: a token file and a Kubernetes Secret (on the real test API server) are
//! re-read when they change, the client uses the new token without a restart, and no
//! value appears in the logs.

mod support;

use std::time::{Duration, Instant};

use calsync_operator::mytimetable::{Error, Token, token};
use calsync_operator::testenv::{ControlPlane, TestNamespace};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use support::{client, logs, start_sim, unique_token};

// Polls `condition` every 50 ms for up to 15 s, which covers the 1 s file poll and a watch
// event on a busy 2-core machine.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn file_token_is_reloaded_on_change() {
    let first = unique_token("file-first");
    let second = unique_token("file-second");
    let sim = start_sim(&second).await;
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("token");
    std::fs::write(&path, format!("{first}\n")).unwrap();
    let loaded = Token::from_file(&path).unwrap();
    let client = {
        let mut config = support::test_config(&sim, "");
        config.token = loaded.clone();
        calsync_operator::mytimetable::Client::new(config).unwrap()
    };
    let mut versions = loaded.subscribe();
    let watcher = tokio::spawn(token::watch_file(path.clone(), loaded.clone()));

    // The simulator expects the second token, so the first one is rejected.
    assert!(matches!(
        client.list_users().await,
        Err(Error::Unauthorized)
    ));

    std::fs::write(&path, format!("{second}\n")).unwrap();
    tokio::time::timeout(Duration::from_secs(15), versions.changed())
        .await
        .expect("the token file change is noticed")
        .unwrap();
    client.ensure_user("uma").await.unwrap();

    // A removed or empty file keeps the last good token. The watcher logs each distinct
    // failure once, so its log line shows that it read the file in that state.
    let failure_logged = |reason: &str| {
        let path = path.display().to_string();
        logs().text().lines().any(|line| {
            line.contains("Failed to load MyTimetable token file")
                && line.contains(&path)
                && line.contains(reason)
        })
    };
    std::fs::remove_file(&path).unwrap();
    wait_until("the watcher reads the removed file", || {
        failure_logged("failed to read the token file")
    })
    .await;
    client.list_users().await.unwrap();
    std::fs::write(&path, "  \n").unwrap();
    wait_until("the watcher reads the empty file", || {
        failure_logged("is empty")
    })
    .await;
    client.list_users().await.unwrap();
    assert!(
        logs()
            .text()
            .contains("Failed to load MyTimetable token file")
    );

    watcher.abort();
    logs().assert_never_contains(&first);
    logs().assert_never_contains(&second);
}

#[tokio::test]
async fn missing_token_file_fails_start() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("absent");

    let error = Token::from_file(&path).unwrap_err();

    assert!(
        error.to_string().contains("failed to read the token file"),
        "{error}"
    );
    assert!(error.to_string().contains("absent"), "{error}");
}

fn secret(name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        string_data: Some([(key.to_owned(), value.to_owned())].into()),
        ..Secret::default()
    }
}

#[tokio::test]
async fn secret_token_is_reloaded_on_change() {
    let control_plane = ControlPlane::shared();
    let kube = control_plane.client().await;
    let namespace = TestNamespace::create(&kube, "token-secret").await;
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), namespace.name());
    let first = unique_token("secret-first");
    let second = unique_token("secret-second");
    let sim = start_sim(&second).await;
    secrets
        .create(
            &PostParams::default(),
            &secret("mytimetable", "token", &first),
        )
        .await
        .unwrap();
    // An unrelated Secret in the same namespace must not disturb the watch.
    secrets
        .create(
            &PostParams::default(),
            &secret("other", "token", "unrelated-value"),
        )
        .await
        .unwrap();

    let client = client(&sim, "");
    let token = client.token().clone();
    let mut versions = token.subscribe();
    let watcher = tokio::spawn(token::watch_secret(
        kube.clone(),
        namespace.name().to_owned(),
        "mytimetable",
        "token",
        token.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(15), versions.changed())
        .await
        .expect("the Secret is loaded")
        .unwrap();
    assert!(matches!(
        client.list_users().await,
        Err(Error::Unauthorized)
    ));

    let patch = serde_json::json!({ "stringData": { "token": second } });
    secrets
        .patch(
            "mytimetable",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), versions.changed())
        .await
        .expect("the Secret change is noticed")
        .unwrap();
    client.ensure_user("vera").await.unwrap();

    // A key that disappears, and then the whole Secret, keep the last good token.
    let patch = serde_json::json!({ "data": { "token": null, "other": "eA==" } });
    secrets
        .patch(
            "mytimetable",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    secrets
        .delete("mytimetable", &DeleteParams::default())
        .await
        .unwrap();
    let captured = || {
        let text = logs().text();
        text.contains("has no key") && text.contains("MyTimetable token Secret was deleted")
    };
    wait_until("the missing key and the deletion are logged", captured).await;
    client.list_users().await.unwrap();

    watcher.abort();
    logs().assert_never_contains(&first);
    logs().assert_never_contains(&second);
}
