//! The bookkeeper reclaims executions whose worker stopped renewing its lease.
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sqlx::PgPool;

use sluice::bookkeeper::Bookkeeper;
use sluice::execution::{ErrorCode, ErrorInfo};
use sluice::store::queue::Fence;

/// Claims the tier's pending work as a worker that then "dies" (never heartbeats).
async fn claim_as_dead_worker(h: &Harness, lease: Duration) -> Vec<Fence> {
    h.store
        .claim("default", "dead-worker", 10, lease, false)
        .await
        .unwrap()
        .iter()
        .map(|e| Fence::of(e, "dead-worker"))
        .collect()
}

/// Every fenced write of a stale attempt: none may touch the execution.
async fn assert_stale_writes_refused(h: &Harness, stale: &Fence) {
    let error = ErrorInfo::new(ErrorCode::ClickhouseError, "stale");
    let stale_result = result_without_object("stale-object");
    let store = &h.store;
    let progress = Default::default();
    assert!(
        !store
            .complete(stale, &stale_result, &progress)
            .await
            .unwrap(),
        "complete"
    );
    assert!(!store.fail(stale, &error, &progress).await.unwrap(), "fail");
    assert!(
        !store.retry(stale, &error, Duration::ZERO).await.unwrap(),
        "retry"
    );
    assert!(!store.mark_canceled(stale).await.unwrap(), "mark_canceled");
    assert!(!store.hand_back(stale).await.unwrap(), "hand_back");
    assert_eq!(
        store
            .heartbeat(stale, Duration::from_secs(5), None)
            .await
            .unwrap(),
        sluice::store::queue::Beat::Lost,
        "heartbeat"
    );
}

/// Waits until the claimed lease has expired and reclaims it.
async fn reclaim(bk: &Bookkeeper) {
    eventually(Duration::from_secs(5), "the lease is reclaimed", || async {
        bk.reclaim_pass().await.unwrap() == 1
    })
    .await;
}

#[sqlx::test(migrations = "./migrations")]
async fn a_lost_lease_runs_again_and_the_stale_worker_cannot_write(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let bk = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    let id = h.submit_ok(json!({ "sql": "SELECT 'again'" })).await;
    let first = claim_as_dead_worker(&h, Duration::from_millis(1)).await;
    assert_eq!(first.len(), 1);
    reclaim(&bk).await;
    let e = h.get(&id).await;
    assert_eq!(e["status"], "PENDING");
    assert_eq!(e["attempt"], 1);

    // The same worker claims it again (attempt 2): the first attempt's writes, which
    // differ from the live ones only by the attempt, are all refused while it runs.
    // (The reclaim's retry backoff first has to pass.)
    let start = std::time::Instant::now();
    let second = loop {
        let claimed = claim_as_dead_worker(&h, Duration::from_millis(1)).await;
        if !claimed.is_empty() {
            break claimed;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "attempt 2 is claimed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(second[0].attempt, 2);
    assert_stale_writes_refused(&h, &first[0]).await;
    let e = h.get(&id).await;
    assert_eq!(e["status"], "RUNNING", "{e}");
    assert_eq!(e["attempt"], 2);
    assert_eq!(e["failed_attempts"].as_array().unwrap().len(), 1, "{e}");
    reclaim(&bk).await;

    // A live worker takes it over as attempt 3.
    let (stop, task) = h.spawn_worker("default");
    let e = h
        .wait_for(&id, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    assert_eq!(e["attempt"], 3);
    stop.cancel();
    task.await.unwrap().unwrap();

    // Both dead attempts wake up: their fenced writes touch nothing.
    assert_stale_writes_refused(&h, &first[0]).await;
    assert_stale_writes_refused(&h, &second[0]).await;
    let after = h.get(&id).await;
    assert_eq!(after["status"], "SUCCEEDED");
    assert_eq!(after["attempt"], 3);
    assert_eq!(
        after["result"], e["result"],
        "the stale writes changed nothing"
    );
    assert_eq!(after["failed_attempts"], e["failed_attempts"]);
}

#[sqlx::test(migrations = "./migrations")]
async fn out_of_attempts_fails_with_worker_lost(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            workers: vec![],
            tier_extra: "max_attempts = 2".into(),
            extra: "[bookkeeper]\nretry_backoff = \"1ms\"\n".into(),
            ..Default::default()
        },
    )
    .await;
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let bk = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    for _ in 0..2 {
        eventually(Duration::from_secs(5), "claimable again", || async {
            !claim_as_dead_worker(&h, Duration::from_millis(1))
                .await
                .is_empty()
        })
        .await;
        reclaim(&bk).await;
    }
    let e = h.get(&id).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"]["code"], "WORKER_LOST");
    assert_eq!(e["error"]["message"], "worker lost after 2 attempts");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_cancel_requested_while_the_worker_is_lost_ends_canceled(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    claim_as_dead_worker(&h, Duration::from_millis(1)).await;
    let (status, _) = h.cancel(&id).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    Bookkeeper::new(&h.config, h.store.clone(), h.results.clone())
        .unwrap()
        .reclaim_pass()
        .await
        .unwrap();
    assert_eq!(h.get(&id).await["status"], "CANCELED");
}

#[sqlx::test(migrations = "./migrations")]
async fn reclaim_kills_the_orphaned_clickhouse_query(pool: PgPool) {
    // A worker died with its query still running on ClickHouse: the claim is the dead
    // worker's and the query runs under the attempt's query_id, started here the way
    // the worker starts it. No live worker runs, so nothing renews the lease between
    // its expiry and the pass (a live worker's heartbeat did, and raced the test).
    let h = Harness::without_workers(pool).await;
    let id = h.submit_ok(json!({ "sql": LONG_SQL })).await;
    let fences = claim_as_dead_worker(&h, Duration::from_millis(1)).await;
    assert_eq!(fences.len(), 1);
    let query_id = format!("{id}-{}", fences[0].attempt);
    let orphan = tokio::spawn({
        let query_id = query_id.clone();
        async move {
            // Ends when the query is killed (or after the 60 s cap if the test fails).
            let _ = reqwest::Client::new()
                .post(clickhouse_url())
                .query(&[
                    ("query_id", query_id.as_str()),
                    ("max_execution_time", "60"),
                    ("max_threads", "1"),
                ])
                .body(LONG_SQL)
                .send()
                .await;
        }
    });
    wait_on_clickhouse(&query_id, "the orphan runs on ClickHouse").await;

    let bk = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    assert_eq!(bk.reclaim_pass().await.unwrap(), 1);
    assert_eq!(
        running_on_clickhouse(&query_id).await,
        0,
        "the orphan was killed"
    );
    assert_eq!(h.get(&id).await["status"], "PENDING");
    orphan.abort();
}

/// A reclaimed execution put back in the queue wakes its tier's workers at once: without
/// the wake-up they would find it only on their next poll (`worker.poll_interval`).
#[sqlx::test(migrations = "./migrations")]
async fn a_reclaim_wakes_the_tier(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let bk = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    h.submit_ok(json!({ "sql": "SELECT 'woken'" })).await;
    assert_eq!(
        claim_as_dead_worker(&h, Duration::from_millis(1))
            .await
            .len(),
        1
    );
    // Listening from here on: the submit's own wake-up is not heard.
    let mut listener = h
        .store
        .listener(&[sluice::store::Channel::Work])
        .await
        .unwrap();
    reclaim(&bk).await;
    let woken = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the reclaim wakes the tier within 5 s")
        .unwrap();
    assert_eq!(woken.payload(), "default");
}
