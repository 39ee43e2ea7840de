//! ClickHouse going away, a broken result store, and the bookkeeper's clean-up passes.
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sluice::execution::Format;
use sqlx::PgPool;

use sluice::bookkeeper::Bookkeeper;

#[sqlx::test(migrations = "./migrations")]
async fn executions_retry_through_a_clickhouse_outage_and_finish(pool: PgPool) {
    let proxy = Proxy::start().await;
    let h = Harness::with(
        pool,
        Setup {
            clickhouse_url: Some(proxy.url()),
            worker_extra: FAST_RETRIES.into(),
            tier_extra: "max_attempts = 30".into(),
            ..Default::default()
        },
    )
    .await;
    // One execution is running when ClickHouse goes away...
    let running = h
        .submit_ok(json!({
            "sql": "SELECT sum(sleepEachRow(0.5)) FROM (SELECT number FROM system.numbers LIMIT 6)",
            "settings": { "max_block_size": 1 },
        }))
        .await;
    // (Its query is on ClickHouse, streaming through the proxy, when the proxy stops.)
    h.wait_running_on_clickhouse(&running).await;
    proxy.stop();
    // ...and more are queued while it is away.
    let mut queued = Vec::new();
    for i in 0..5 {
        queued.push(h.submit_ok(json!({ "sql": format!("SELECT {i}") })).await);
    }
    eventually(
        Duration::from_secs(30),
        "they fail and are retried",
        || async {
            let e = h.get(&queued[4]).await;
            e["attempt"].as_i64().unwrap() >= 2 && e["status"] != "SUCCEEDED"
        },
    )
    .await;
    proxy.resume().await;
    let mut retries = 0;
    for id in queued.iter().chain([&running]) {
        let e = h.wait_terminal(id).await;
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        let first = &e["failed_attempts"][0]["error"];
        assert_eq!(first["code"], "CLICKHOUSE_UNAVAILABLE", "{e}");
        let failed = e["failed_attempts"].as_array().unwrap();
        retries += failed.len();
        // Each retry waited its backoff (100 ms doubling, at most 400 ms) after the
        // failure before it ran and failed in turn.
        let at = |k: usize| {
            chrono::DateTime::parse_from_rfc3339(failed[k]["at"].as_str().unwrap()).unwrap()
        };
        for k in 1..failed.len() {
            let waited = (at(k) - at(k - 1)).to_std().unwrap();
            let backoff = sluice::outage::Backoff::after(
                Duration::from_millis(100),
                Duration::from_millis(400),
                k as i64,
            );
            assert!(waited >= backoff, "retry {k} after {waited:?}: {e}");
        }
    }
    // Each retry is counted (the counters are the process's: other tests may add).
    let counted = h.metric(r#"sluice_retries_total{tier="default"}"#).await;
    assert!(
        counted.is_some_and(|n| n >= retries as f64),
        "{retries} retries, counted {counted:?}"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn an_outage_longer_than_the_attempts_fails_clearly(pool: PgPool) {
    let proxy = Proxy::start().await;
    let h = Harness::with(
        pool,
        Setup {
            clickhouse_url: Some(proxy.url()),
            worker_extra: FAST_RETRIES.into(),
            tier_extra: "max_attempts = 2".into(),
            ..Default::default()
        },
    )
    .await;
    // The worker serves (it has checked its tier's user), then ClickHouse goes away.
    let first = h.submit_ok(json!({ "sql": "SELECT 0" })).await;
    h.wait_for(&first, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    proxy.stop();
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "FAILED");
    assert_eq!(e["attempt"], 2);
    assert_eq!(e["error"]["code"], "CLICKHOUSE_UNAVAILABLE");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot reach ClickHouse"), "{message}");
    assert!(message.contains("gave up after 2 attempts"), "{message}");
    assert_eq!(e["failed_attempts"].as_array().unwrap().len(), 2);
}

/// A worker that cannot check what its tier's ClickHouse user may do (the server is
/// down when it starts) claims nothing: executions wait in the queue, using no
/// attempt, until the server answers and the check passes.
#[sqlx::test(migrations = "./migrations")]
async fn a_worker_starting_during_an_outage_claims_once_clickhouse_answers(pool: PgPool) {
    let proxy = Proxy::start().await;
    proxy.stop();
    let h = Harness::with(
        pool,
        Setup {
            clickhouse_url: Some(proxy.url()),
            worker_extra: FAST_RETRIES.into(),
            tier_extra: "max_attempts = 2".into(),
            ..Default::default()
        },
    )
    .await;
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    // Several poll intervals (200 ms) pass without a claim.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let e = h.get(&id).await;
    assert_eq!(e["status"], "PENDING", "{e}");
    assert_eq!(
        e["attempt"], 0,
        "no attempt is used while the user is unchecked: {e}"
    );
    proxy.resume().await;
    let e = h
        .wait_for(&id, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    assert_eq!(e["attempt"], 1, "{e}");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_broken_result_store_fails_the_execution_and_leaves_nothing(pool: PgPool) {
    let h = Harness::start(pool).await;
    // A file where the store's `results/` directory must go: every write fails, even as
    // root (permissions would not stop root).
    let blocker = h.results_dir.path().join("results");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let small = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    // Larger than one 8 MiB part: the multipart path.
    let large = h
        .submit_ok(json!({
            "sql": "SELECT number, toString(number) AS a, concat(a, a, a, a, a, a) AS b \
                    FROM system.numbers LIMIT 400000",
        }))
        .await;
    for id in [&small, &large] {
        let e = h.wait_terminal(id).await;
        assert_eq!(e["status"], "FAILED", "{e}");
        assert_eq!(e["error"]["code"], "STORAGE_ERROR");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("could not store the result"),
            "{message}"
        );
        assert_eq!(e["attempt"], 1, "storage errors are not retried");
    }
    // Nothing but the blocker (and the harness's own files) in the store's directory.
    let entries: Vec<_> = std::fs::read_dir(h.results_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".toml"))
        .collect();
    assert_eq!(entries, vec!["results".to_string()]);
    assert_eq!(std::fs::read(&blocker).unwrap(), b"not a directory");
}

fn short_retention(purge_after: &str) -> Setup {
    Setup {
        tier_extra: format!(
            "retention = {{ succeeded = \"1s\", failed = \"1s\", canceled = \"1s\", purge_after = \"{purge_after}\" }}"
        ),
        extra: "[bookkeeper]\ninterval = \"200ms\"\norphan_grace = \"1s\"\norphan_scan_interval = \"200ms\"\n"
            .into(),
        ..Default::default()
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn results_expire_and_orphans_are_collected(pool: PgPool) {
    let h = Harness::with(pool, short_retention("1h")).await;
    let ok = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let bad = h.submit_ok(json!({ "sql": "SELECT 1 +" })).await;
    let e = h
        .wait_for(&ok, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    h.wait_for(&bad, &["FAILED"], Duration::from_secs(30)).await;
    let key = h.results.key(ok.parse().unwrap(), 1, Format::JSONEachRow);
    assert_eq!(h.results.list_keys().await.unwrap(), vec![key.clone()]);
    assert_eq!(e["result"]["bytes"], 8); // {"1":1}\n

    // Objects a dead worker left behind (in the current key layout and the earlier
    // one), and one that is not Sluice's at all.
    let orphans = [
        h.results.key(uuid::Uuid::now_v7(), 1, Format::JSONEachRow),
        format!("results/{}/1.ndjson", uuid::Uuid::now_v7()),
    ];
    for orphan in &orphans {
        let mut w = h.results.writer(orphan);
        w.write(bytes::Bytes::from_static(b"{}\n")).await.unwrap();
        w.finish().await.unwrap();
    }
    let mut w = h.results.writer("results/README");
    w.write(bytes::Bytes::from_static(b"keep me"))
        .await
        .unwrap();
    w.finish().await.unwrap();

    let bk = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    let stop = h.shutdown.child_token();
    tokio::spawn(bk.run(stop.clone()));

    for id in [&ok, &bad] {
        h.wait_for(id, &["EXPIRED"], Duration::from_secs(30)).await;
    }
    let e = h.get(&ok).await;
    assert_eq!(e["result"]["bytes"], 8, "metadata stays");
    let (status, _, body) = h.download(&ok).await;
    assert_eq!(status, reqwest::StatusCode::GONE);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "result_expired");
    assert_eq!(
        h.get(&bad).await["error"]["code"],
        "CLICKHOUSE_ERROR",
        "the error stays"
    );

    eventually(
        Duration::from_secs(30),
        "the orphan is collected",
        || async { h.results.list_keys().await.unwrap() == vec!["results/README".to_string()] },
    )
    .await;
}

#[sqlx::test(migrations = "./migrations")]
async fn expired_rows_are_purged_later(pool: PgPool) {
    let h = Harness::with(pool, short_retention("2s")).await;
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    // A group goes with its last member's row, not before.
    let (status, v) = h
        .post_json(
            "/v1/groups",
            json!({ "concurrency": 1, "executions": [{ "sql": "SELECT 2" }] }),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{v}");
    let group = format!("/v1/groups/{}", v["group"]["id"].as_str().unwrap());
    let member = v["group"]["executions"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for id in [&id, &member] {
        h.wait_for(id, &["SUCCEEDED"], Duration::from_secs(30))
            .await;
    }
    assert_eq!(
        h.store.purge_groups(Duration::ZERO, 100).await.unwrap(),
        0,
        "a group whose member's row is still there stays"
    );
    let bk = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    let stop = h.shutdown.child_token();
    tokio::spawn(bk.run(stop.clone()));
    h.wait_for(&id, &["EXPIRED"], Duration::from_secs(30)).await;
    for path in [format!("/v1/executions/{id}"), group] {
        eventually(
            Duration::from_secs(30),
            &format!("{path} is purged"),
            || async { h.get_json(&path).await.0 == reqwest::StatusCode::NOT_FOUND },
        )
        .await;
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn passes_work_in_bounded_batches(pool: PgPool) {
    let mut setup = short_retention("1h");
    setup.extra = "[bookkeeper]\nbatch_size = 3\n".into();
    let h = Harness::with(pool, setup).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(h.submit_ok(json!({ "sql": format!("SELECT {i}") })).await);
    }
    for id in &ids {
        h.wait_for(id, &["SUCCEEDED"], Duration::from_secs(30))
            .await;
    }
    // Older than the 1 s retention: their finish is moved back rather than waited for.
    sqlx::query("UPDATE executions SET finished_at = finished_at - interval '2 seconds'")
        .execute(h.store.pool())
        .await
        .unwrap();
    let expired = h
        .store
        .expire(
            "default",
            sluice::execution::Status::Succeeded,
            Duration::from_secs(1),
            3,
        )
        .await
        .unwrap();
    assert_eq!(
        expired.len(),
        3,
        "one statement touches at most batch_size rows"
    );
    // A whole pass loops over batches until done.
    let bk = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    let (n, _) = bk.expire_pass().await.unwrap();
    assert_eq!(n, 7);
    // The pass deleted the objects of the 7 rows it expired; the 3 expired by hand kept
    // theirs, which only the orphan pass may remove, and not before orphan_grace.
    assert_eq!(h.results.list_keys().await.unwrap().len(), 3);
    assert_eq!(
        bk.orphan_pass().await.unwrap(),
        0,
        "younger than orphan_grace (1h)"
    );
}

/// Each terminal status keeps its row for its own retention: with 1 h for SUCCEEDED,
/// 30 min for CANCELED and 1 s for FAILED, aging the three executions together expires
/// FAILED first, then CANCELED, then SUCCEEDED (whose object goes with it).
#[sqlx::test(migrations = "./migrations")]
async fn each_status_expires_after_its_own_retention(pool: PgPool) {
    let h = Harness::with(
        pool.clone(),
        Setup {
            tier_extra: "retention = { succeeded = \"1h\", failed = \"1s\", canceled = \"30m\" }"
                .into(),
            ..Default::default()
        },
    )
    .await;
    let ok = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let bad = h.submit_ok(json!({ "sql": "SELECT 1 +" })).await;
    h.wait_for(&ok, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    h.wait_for(&bad, &["FAILED"], Duration::from_secs(30)).await;
    let canceled = h
        .submit_ok(json!({ "sql": "SELECT 2", "run_after": "2099-01-01T00:00:00Z" }))
        .await;
    h.cancel(&canceled).await;
    let bk =
        sluice::bookkeeper::Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    let statuses = || async {
        let mut out = Vec::new();
        for id in [&ok, &bad, &canceled] {
            out.push(h.get(id).await["status"].as_str().unwrap().to_string());
        }
        out
    };
    let age = |minutes: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "UPDATE executions SET finished_at = now() - $1 * interval '1 minute' \
                 WHERE finished_at IS NOT NULL",
            )
            .bind(minutes)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    age(10).await;
    bk.expire_pass().await.unwrap();
    assert_eq!(statuses().await, ["SUCCEEDED", "EXPIRED", "CANCELED"]);
    age(45).await;
    bk.expire_pass().await.unwrap();
    assert_eq!(statuses().await, ["SUCCEEDED", "EXPIRED", "EXPIRED"]);
    assert_eq!(h.results.list_keys().await.unwrap().len(), 1);
    age(90).await;
    bk.expire_pass().await.unwrap();
    assert_eq!(statuses().await, ["EXPIRED", "EXPIRED", "EXPIRED"]);
    assert!(h.results.list_keys().await.unwrap().is_empty());
}
