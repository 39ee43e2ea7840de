//! Long polls: `?wait=N` on get and submit answers when the execution ends, or after N
//! seconds with its state then; a cancel, a finish and a stopping server all end the wait.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

/// A guard against a wait that never ends: far longer than any answer here needs, far
/// shorter than the `wait` the requests ask for.
const HANG: Duration = Duration::from_secs(20);

/// `GET /v1/executions/{id}?wait=60` in a task of its own.
fn spawn_long_poll(
    h: &Harness,
    id: &str,
) -> tokio::task::JoinHandle<(StatusCode, serde_json::Value)> {
    let api = h.as_principal(TEST_KEY);
    let path = format!("/v1/executions/{id}?wait=60");
    tokio::spawn(async move { api.get_json(&path).await })
}

#[sqlx::test]
async fn a_submit_with_wait_answers_with_the_finished_execution(pool: PgPool) {
    let h = Harness::start(pool).await;
    let (status, v) = h
        .post(
            "/v1/executions?wait=30",
            "application/json",
            json!({"sql": "SELECT 7 AS seven"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["outcome"], "created");
    assert_eq!(v["execution"]["status"], "SUCCEEDED", "{v}");
    assert_eq!(v["execution"]["result"]["rows"], 1, "{v}");

    // text/plain takes it beside the other query parameters.
    let (status, v) = h
        .post(
            "/v1/executions?wait=30&format=CSV",
            "text/plain",
            "SELECT 8",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["execution"]["status"], "SUCCEEDED", "{v}");
}

#[sqlx::test]
async fn a_get_with_wait_answers_when_the_query_finishes(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h
        .submit_ok(json!({"sql": "SELECT sleep(1) AS slept"}))
        .await;
    let (status, e) =
        tokio::time::timeout(HANG, h.get_json(&format!("/v1/executions/{id}?wait=60")))
            .await
            .expect("the long poll answered");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(e["status"], "SUCCEEDED", "one call sees the end: {e}");
}

#[sqlx::test]
async fn a_get_with_wait_on_queued_work_answers_with_its_state_after_the_wait(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let id = h.submit_ok(json!({"sql": "SELECT 1"})).await;
    let started = Instant::now();
    let (status, e) = h.get_json(&format!("/v1/executions/{id}?wait=2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(e["status"], "PENDING", "{e}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the answer was held for the wait: {:?}",
        started.elapsed()
    );
}

#[sqlx::test]
async fn a_cancel_ends_a_long_poll_and_the_end_is_notified(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let id = h.submit_ok(json!({"sql": "SELECT 1"})).await;
    // The trigger of migration 0004 is what wakes long polls in every api process.
    let mut listener = h
        .store
        .listener(&[sluice::store::Channel::Finished])
        .await
        .unwrap();
    let poll = spawn_long_poll(&h, &id);
    let (status, v) = h.cancel(&id).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, e) = tokio::time::timeout(HANG, poll)
        .await
        .expect("the long poll answered")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(e["status"], "CANCELED", "{e}");
    let n = tokio::time::timeout(HANG, listener.recv())
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(n.payload(), id);
}

#[sqlx::test]
async fn a_stopping_server_answers_its_long_polls(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let id = h.submit_ok(json!({"sql": "SELECT 1"})).await;
    let poll = spawn_long_poll(&h, &id);
    // Give the request time to reach its wait; it answers either way.
    eventually(HANG, "the long poll is waiting", || async {
        !h.finishes.is_empty()
    })
    .await;
    h.shutdown.cancel();
    let (status, e) = tokio::time::timeout(HANG, poll)
        .await
        .expect("the long poll answered when the server stopped")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(e["status"], "PENDING", "{e}");
}

#[sqlx::test]
async fn bad_waits_and_other_tenants_are_refused(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            workers: vec![],
            extra: "[api]\nmax_wait = \"10s\"\n".into(),
            auth_extra: key_entry("eve", "sk_test_other_tenant", "other", ""),
            ..Default::default()
        },
    )
    .await;
    let id = h.submit_ok(json!({"sql": "SELECT 1"})).await;
    for path in [
        format!("/v1/executions/{id}?wait=11"),
        format!("/v1/executions/{id}?wait=-1"),
        format!("/v1/executions/{id}?wait=soon"),
    ] {
        let (status, v) = h.get_json(&path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {v}");
        let code = v["error"]["code"].as_str().unwrap();
        assert!(
            code == "invalid_wait" || code == "invalid_query",
            "{path}: {v}"
        );
    }
    let (_, v) = h.get_json(&format!("/v1/executions/{id}?wait=11")).await;
    assert_eq!(v["error"]["code"], "invalid_wait");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10 seconds"),
        "{v}"
    );
    let (status, v) = h
        .post(
            "/v1/executions?wait=11",
            "application/json",
            json!({"sql": "SELECT 2"}).to_string(),
        )
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_wait"))
    );

    // Another tenant's execution is a 404 at once, whatever the wait.
    let started = Instant::now();
    let (status, _) = h
        .as_principal("sk_test_other_tenant")
        .get_json(&format!("/v1/executions/{id}?wait=10"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no wait on a 404"
    );
}
