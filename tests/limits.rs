//! Time limits (`timeout`, `start_within`), reuse of a recent result (`max_age`), the
//! search of many query_ids, and dry runs.
mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice::bookkeeper::Bookkeeper;
use sqlx::PgPool;

const OTHER_KEY: &str = "sk_test_other_tenant";

fn two_tenants() -> Setup {
    Setup {
        auth_extra: key_entry("other", OTHER_KEY, "other", ""),
        ..Default::default()
    }
}

fn seconds_between(e: &Value, from: &str, to: &str) -> f64 {
    let t = |f: &str| {
        chrono::DateTime::parse_from_rfc3339(e[f].as_str().unwrap_or_else(|| panic!("{f}: {e}")))
            .unwrap()
    };
    (t(to) - t(from)).num_milliseconds() as f64 / 1000.0
}

/// A query that would run until killed, with `timeout: "1s"`: its worker kills it on
/// ClickHouse and it FAILS with TIMEOUT after about a second, on its first attempt (a
/// timeout is not retried), and the query is gone from ClickHouse.
#[sqlx::test(migrations = "./migrations")]
async fn timeout_kills_the_query_and_fails_with_timeout(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h
        .submit_ok(json!({ "sql": LONG_SQL, "settings": long_settings(), "timeout": "1s" }))
        .await;
    let query_id = h.wait_running_on_clickhouse(&id).await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"]["code"], "TIMEOUT", "{e}");
    assert_eq!(e["attempt"], 1, "{e}");
    let ran = seconds_between(&e, "started_at", "finished_at");
    assert!(
        (0.9..4.0).contains(&ran),
        "ran {ran}s under a 1s timeout: {e}"
    );
    eventually(
        Duration::from_secs(10),
        "the timed-out query is gone from ClickHouse",
        || async { running_on_clickhouse(&query_id).await == 0 },
    )
    .await;
}

/// A RUNNING execution a lease past its timeout whose worker is gone (no worker here:
/// the row is made to look so) is failed with TIMEOUT by the bookkeeper's deadline pass;
/// one within its timeout is left alone.
#[sqlx::test(migrations = "./migrations")]
async fn bookkeeper_fails_a_run_past_its_timeout(pool: PgPool) {
    let h = Harness::without_workers(pool.clone()).await;
    let late = h
        .submit_ok(json!({ "sql": "SELECT 1", "timeout": "1s" }))
        .await;
    let fine = h
        .submit_ok(json!({ "sql": "SELECT 2", "timeout": "1h" }))
        .await;
    sqlx::query(
        "UPDATE executions SET status = 'RUNNING', attempt = 1, worker_id = 'gone', \
         started_at = now() - interval '30 seconds', \
         lease_expires_at = now() + interval '1 hour' WHERE id = ANY($1::uuid[])",
    )
    .bind(vec![late.clone(), fine.clone()])
    .execute(&pool)
    .await
    .unwrap();
    let bk = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    assert_eq!(bk.deadline_pass().await.unwrap(), 1);
    let e = h.get(&late).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"]["code"], "TIMEOUT", "{e}");
    assert_eq!(h.get(&fine).await["status"], "RUNNING");
}

/// `start_within: "1s"` with no worker: past the deadline a worker that starts does not
/// claim it (it runs other work), and the bookkeeper fails it with NOT_STARTED_IN_TIME.
#[sqlx::test(migrations = "./migrations")]
async fn start_within_fails_what_no_worker_started(pool: PgPool) {
    let h = Harness::without_workers(pool.clone()).await;
    let late = h
        .submit_ok(json!({ "sql": "SELECT 1", "start_within": "1s" }))
        .await;
    let e = h.get(&late).await;
    assert_eq!(e["status"], "PENDING");
    eventually(Duration::from_secs(10), "the start deadline passes", || {
        let pool = pool.clone();
        let late = late.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT start_deadline < now() FROM executions WHERE id = $1::uuid",
            )
            .bind(late)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    let (_stop, _worker) = h.spawn_worker("default");
    let other = h.submit_ok(json!({ "sql": "SELECT 2" })).await;
    assert_eq!(h.wait_terminal(&other).await["status"], "SUCCEEDED");
    assert_eq!(
        h.get(&late).await["status"],
        "PENDING",
        "claimed past its deadline"
    );

    let bk = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    assert_eq!(bk.deadline_pass().await.unwrap(), 1);
    let e = h.get(&late).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"]["code"], "NOT_STARTED_IN_TIME", "{e}");
    assert_eq!(e["attempt"], 0, "{e}");
}

/// Durations are checked at submit: not a duration, zero, or over the tier's bound is a
/// 400 naming the field.
#[sqlx::test(migrations = "./migrations")]
async fn time_limits_are_validated(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    for (field, value, code) in [
        ("timeout", "soon", "invalid_timeout"),
        ("timeout", "0s", "invalid_timeout"),
        ("timeout", "400d", "invalid_timeout"),
        ("start_within", "-1s", "invalid_start_within"),
        ("max_age", "100y", "invalid_max_age"),
    ] {
        let (status, v) = h.submit(json!({ "sql": "SELECT 1", field: value })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}={value}: {v}");
        assert_eq!(v["error"]["code"], code, "{field}={value}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
}

/// `max_age` returns the tenant's recent SUCCEEDED execution of the same query_id and
/// statement (200, `reused`, same id, nothing runs); not one older than `max_age`, not
/// one of another statement, never another tenant's.
#[sqlx::test(migrations = "./migrations")]
async fn max_age_reuses_a_recent_result_of_the_same_tenant(pool: PgPool) {
    let h = Harness::with(pool.clone(), two_tenants()).await;
    let body = json!({ "sql": "SELECT 42 AS answer", "query_id": "daily" });
    let first = h.submit_ok(body.clone()).await;
    assert_eq!(h.wait_terminal(&first).await["status"], "SUCCEEDED");

    let mut reuse = body.clone();
    reuse["max_age"] = json!("10m");
    let (status, v) = h.submit(reuse.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outcome"], "reused", "{v}");
    assert_eq!(v["execution"]["id"], first.as_str());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1, "a reuse must not queue anything");

    // Another tenant with the same query_id and statement runs its own.
    let other = h.as_principal(OTHER_KEY);
    let (status, v) = other.submit(reuse.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_ne!(v["execution"]["id"], first.as_str());

    // Another statement under the same query_id is not a reuse.
    let (status, v) = h
        .submit(json!({ "sql": "SELECT 43 AS answer", "query_id": "daily", "max_age": "10m" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let second = v["execution"]["id"].as_str().unwrap().to_string();
    assert_eq!(h.wait_terminal(&second).await["status"], "SUCCEEDED");

    // Finished longer ago than max_age: runs again.
    sqlx::query("UPDATE executions SET finished_at = finished_at - interval '1 hour'")
        .execute(&pool)
        .await
        .unwrap();
    let (status, v) = h.submit(reuse).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_ne!(v["execution"]["id"], first.as_str());
}

/// A task's `max_age` tag applies to its submissions.
#[sqlx::test(migrations = "./migrations")]
async fn a_task_max_age_reuses(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.sql"),
        "-- name: answer\n-- max_age: 10m\nSELECT {n:UInt8} + 1 AS answer\n",
    )
    .unwrap();
    let h = Harness::with(
        pool,
        Setup {
            extra: format!("[tasks]\ndir = \"{}\"\n", dir.path().display()),
            ..Default::default()
        },
    )
    .await;
    let (status, v) = h
        .post_json("/v1/tasks/answer/executions", json!({ "args": [5] }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let first = v["execution"]["id"].as_str().unwrap().to_string();
    assert_eq!(h.wait_terminal(&first).await["status"], "SUCCEEDED");
    let (status, v) = h
        .post_json("/v1/tasks/answer/executions", json!({ "args": [5] }))
        .await;
    assert_eq!(
        (status, &v["outcome"]),
        (StatusCode::OK, &json!("reused")),
        "{v}"
    );
    assert_eq!(v["execution"]["id"], first.as_str());
    // Other arguments are another statement.
    let (status, v) = h
        .post_json("/v1/tasks/answer/executions", json!({ "args": [6] }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

/// The latest execution of each query_id, in the order asked, the caller's tenant only;
/// `status` and `limit` narrow it; bad searches are 400s.
#[sqlx::test(migrations = "./migrations")]
async fn search_returns_the_latest_of_each_query_id(pool: PgPool) {
    let h = Harness::with(pool, two_tenants()).await;
    let a1 = h
        .submit_ok(json!({ "sql": "SELECT 1", "query_id": "a" }))
        .await;
    assert_eq!(h.wait_terminal(&a1).await["status"], "SUCCEEDED");
    let a2 = h
        .submit_ok(json!({ "sql": "SELECT 2", "query_id": "a" }))
        .await;
    let b = h
        .submit_ok(json!({ "sql": "SELECT nonsense_column", "query_id": "b" }))
        .await;
    assert_eq!(h.wait_terminal(&a2).await["status"], "SUCCEEDED");
    assert_eq!(h.wait_terminal(&b).await["status"], "FAILED");
    let other = h.as_principal(OTHER_KEY);
    let theirs = other
        .submit_ok(json!({ "sql": "SELECT 3", "query_id": "a" }))
        .await;

    let ids = |v: &Value| -> Vec<String> {
        v["executions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let search = |body: Value| h.post_json("/v1/executions/search", body);
    let (status, v) = search(json!({ "query_ids": ["b", "missing", "a", "b"] })).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(ids(&v), [b.clone(), a2.clone()]);
    let (_, v) = search(json!({ "query_ids": ["a", "b"], "status": "FAILED" })).await;
    assert_eq!(ids(&v), std::slice::from_ref(&b));
    let (_, v) = search(json!({ "query_ids": ["a", "b"], "limit": 1 })).await;
    assert_eq!(ids(&v), std::slice::from_ref(&a2));
    let (status, v) = other
        .post_json("/v1/executions/search", json!({ "query_ids": ["a", "b"] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(ids(&v), [theirs]);

    let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    for (body, code) in [
        (json!({ "query_ids": [] }), "invalid_query_ids"),
        (json!({ "query_ids": many }), "invalid_query_ids"),
        (json!({ "query_ids": ["a\u{0}"] }), "invalid_query_ids"),
        (
            json!({ "query_ids": ["a"], "status": "DONE" }),
            "invalid_status",
        ),
        (json!({ "query_ids": ["a"], "limit": 0 }), "invalid_limit"),
        (json!({ "query_ids": ["a"], "sort": "x" }), "unknown_field"),
    ] {
        let (status, v) = search(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }
}

async fn dry_run(h: &Harness, body: Value) -> Value {
    let (status, v) = h
        .post_json("/v1/executions?dry_run=true", body.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}: {v}");
    v
}

/// A dry run answers with the columns ClickHouse itself describes for the statement (or
/// its error) and queues nothing; parameters travel as they would for the run.
#[sqlx::test(migrations = "./migrations")]
async fn dry_run_describes_without_queueing(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let sql = "SELECT 1 AS x, 'a' AS s, [now()] AS t";
    let v = dry_run(&h, json!({ "sql": sql })).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["checked"], "describe");
    assert_eq!(v["tier"], "default");
    let direct = clickhouse_text(&format!("DESCRIBE TABLE ({sql}) FORMAT TSV")).await;
    let expected: Vec<Value> = direct
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            json!({ "name": f.next().unwrap(), "type": f.next().unwrap() })
        })
        .collect();
    assert_eq!(v["columns"], json!(expected), "{v}");

    let v = dry_run(
        &h,
        json!({ "sql": "SELECT {n:UInt8} + 1 AS y", "parameters": { "n": "5" } }),
    )
    .await;
    assert_eq!(
        v["columns"],
        json!([{ "name": "y", "type": "UInt16" }]),
        "{v}"
    );

    let v = dry_run(
        &h,
        json!({ "sql": "SELECT no_such_column FROM system.one" }),
    )
    .await;
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["error"]["code"], "CLICKHOUSE_ERROR", "{v}");
    assert_eq!(v["error"]["clickhouse_code"], 47, "{v}");
    assert!(v["columns"].is_null());

    let v = dry_run(&h, json!({ "sql": "SHOW TABLES FROM system" })).await;
    assert_eq!(v["valid"], true, "{v}");
    let v2 = dry_run(&h, json!({ "sql": "SHOW TABLEZ FROM system" })).await;
    if is_modern().await {
        assert_eq!(v["checked"], "explain", "{v}");
        assert_eq!(v2["valid"], false, "{v2}");
        assert_eq!(v2["error"]["clickhouse_code"], 62, "{v2}");
    } else {
        assert_eq!(v["checked"], "none", "{v}");
        assert_eq!(v2["checked"], "none", "{v2}");
    }

    // Sluice's own checks still come first.
    let (status, v) = h
        .post_json("/v1/executions?dry_run=true", json!({ "sql": "" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "a dry run must not queue anything");
}

/// A dry run against a ClickHouse that is not there is a 502, not a verdict.
#[sqlx::test(migrations = "./migrations")]
async fn dry_run_without_clickhouse_is_502(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            workers: vec![],
            clickhouse_url: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        },
    )
    .await;
    let (status, v) = h
        .post_json("/v1/executions?dry_run=true", json!({ "sql": "SELECT 1" }))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["error"]["code"], "clickhouse_unavailable", "{v}");
}
