//! `GET /v1/executions/{id}/events`: Server-Sent Events until the end, resumable,
//! tenant-checked.
mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// One parsed event: (event, id, data).
type Sse = (String, String, Value);

/// Reads events from `r` until the stream closes (or `deadline`).
async fn read_events(r: reqwest::Response, deadline: Duration) -> Vec<Sse> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut body = r.bytes_stream();
    let end = tokio::time::Instant::now() + deadline;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(end, body.next()).await {
        buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(at) = buffer.find("\n\n") {
            let block: String = buffer.drain(..at + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.into();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.into();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if !event.is_empty() {
                events.push((event, id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

async fn open(api: &Api, id: &str, last: Option<&str>) -> reqwest::Response {
    let mut r = api
        .http
        .get(api.url(&format!("/v1/executions/{id}/events")));
    if let Some(last) = last {
        r = r.header("Last-Event-ID", last);
    }
    r.send().await.unwrap()
}

/// A query of a few seconds: a `status` event for PENDING or RUNNING, `progress` events
/// with growing row counts, and the final `execution` (SUCCEEDED, with its result), after
/// which the stream ends. Reconnecting after the final event is a 204.
#[sqlx::test(migrations = "./migrations")]
async fn events_follow_an_execution_to_its_end(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h
        .submit_ok(json!({
            "sql": "SELECT sum(sleepEachRow(0.25)) AS s FROM (SELECT number FROM system.numbers LIMIT 12)",
            "settings": { "max_block_size": 1 },
        }))
        .await;
    let r = open(&h.api, &id, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = read_events(r, Duration::from_secs(60)).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"status"), "{events:?}");
    assert_eq!(kinds.last(), Some(&"execution"), "{events:?}");
    let (_, last_id, last) = events.last().unwrap();
    assert_eq!(last_id, "final");
    assert_eq!(last["status"], "SUCCEEDED", "{last}");
    assert_eq!(last["id"], id.as_str());
    assert!(last["result"]["rows"] == 1, "{last}");
    assert!(
        kinds.contains(&"progress"),
        "a 3 s query reports progress: {kinds:?}"
    );
    // Ids never repeat: each event is a new state.
    let mut ids: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "{events:?}");

    let r = open(&h.api, &id, Some("final")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Without Last-Event-ID a finished execution gives its final event at once.
    let again = read_events(open(&h.api, &id, None).await, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].0, "execution");
}

/// Resuming with the id of the state last seen does not repeat it: the next event is
/// what changed after it (here the end).
#[sqlx::test(migrations = "./migrations")]
async fn resuming_skips_what_was_seen(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let mut first = open(&h.api, &id, None).await.bytes_stream();
    let chunk = String::from_utf8(first.next().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(chunk.contains("event: status"), "{chunk}");
    let seen = chunk
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .to_string();
    assert_eq!(seen, "PENDING-0-0");
    drop(first);
    let resumed = open(&h.api, &id, Some(&seen)).await;
    let (_stop, _worker) = h.spawn_worker("default");
    let events = read_events(resumed, Duration::from_secs(60)).await;
    assert!(
        events.iter().all(|e| e.1 != seen),
        "the seen state came again: {events:?}"
    );
    assert_eq!(events.last().unwrap().0, "execution", "{events:?}");
}

/// Another tenant's execution is a 404, as everywhere.
#[sqlx::test(migrations = "./migrations")]
async fn events_are_tenant_checked(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            workers: vec![],
            auth_extra: key_entry("other", "sk_test_other_tenant", "other", ""),
            ..Default::default()
        },
    )
    .await;
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let other = h.as_principal("sk_test_other_tenant");
    let r = open(&other, &id, None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = h
        .http
        .get(h.url("/v1/executions/not-a-uuid/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// A stream lives at most `api.event_stream`, then closes; the client resumes.
#[sqlx::test(migrations = "./migrations")]
async fn a_stream_closes_at_its_bound(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            workers: vec![],
            extra: "[api]\nevent_stream = \"1s\"\n".into(),
            ..Default::default()
        },
    )
    .await;
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let started = std::time::Instant::now();
    let events = read_events(open(&h.api, &id, None).await, Duration::from_secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "status");
}
