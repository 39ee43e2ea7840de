//! A query of death is not replayed: when the server goes away while an execution runs
//! on it and comes back restarted, the execution runs at most once more, then FAILS with
//! SERVER_CRASHED, so one tenant cannot take a tier down attempt after attempt. The
//! crash is a kill -9 of a private server the moment the statement shows in its
//! system.processes (18.16 has real queries of death; a test must not depend on one).
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Mutex;

#[sqlx::test(migrations = "./migrations")]
async fn a_query_that_crashes_the_server_fails_after_one_more_try(pool: PgPool) {
    let server = Arc::new(Mutex::new(PrivateClickHouse::start().await));
    let url = server.lock().await.url();
    let h = Harness::with(
        pool,
        Setup {
            clickhouse_url: Some(url),
            tier_extra: "max_attempts = 5".into(),
            worker_extra: "poll_interval = \"200ms\"\nlease = \"30s\"\nheartbeat = \"200ms\"\n\
                           shutdown_grace = \"2s\"\nretry_backoff = \"100ms\"\n\
                           retry_backoff_max = \"200ms\""
                .into(),
            ..Default::default()
        },
    )
    .await;
    // The supervisor crashes the server whenever the statement runs on it, and starts
    // it again, as systemd would.
    let crashes = Arc::new(AtomicUsize::new(0));
    let supervisor = tokio::spawn({
        let (server, crashes) = (server.clone(), crashes.clone());
        async move {
            loop {
                let mut s = server.lock().await;
                let running = s
                    .text(
                        "SELECT count() FROM system.processes WHERE query LIKE '%query_of_death%' \
                         AND query NOT LIKE '%system.processes%' FORMAT TSV",
                    )
                    .await;
                if running.trim().parse::<u64>().unwrap_or(0) > 0 {
                    crashes.fetch_add(1, Ordering::SeqCst);
                    s.restart().await;
                }
                drop(s);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let id = h
        .submit_ok(json!({
            "sql": "SELECT 'query_of_death' AS marker, count() FROM system.numbers",
            "settings": long_settings(),
        }))
        .await;
    let e = h.wait_for(&id, &["FAILED"], Duration::from_secs(120)).await;
    supervisor.abort();
    assert_eq!(e["error"]["code"], "SERVER_CRASHED", "{e}");
    assert_eq!(e["attempt"], 2, "one more try, not max_attempts (5): {e}");
    assert_eq!(crashes.load(Ordering::SeqCst), 2, "{e}");
    let first = &e["failed_attempts"][0]["error"];
    assert_eq!(first["code"], "SERVER_CRASHED", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not run again"),
        "{e}"
    );
    // The server itself is fine afterwards, and so is the tier.
    let ok = h.submit_ok(json!({ "sql": "SELECT 1 AS one" })).await;
    h.wait_for(&ok, &["SUCCEEDED"], Duration::from_secs(60))
        .await;
}
