//! Progress people can read: a PENDING execution's place in its tenant's queue on the
//! tier and a start estimate, an estimated duration from past runs of the same
//! statement, and a percentage.
mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

const OTHER_KEY: &str = "sk_test_other_tenant";

/// Claim order within the tier and tenant: higher priority first, then oldest; another
/// tenant's work and scheduled work do not count; a scheduled execution starts no
/// sooner than its run_after.
#[sqlx::test(migrations = "./migrations")]
async fn queue_position_follows_the_claim_order(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            workers: vec![],
            auth_extra: key_entry("other", OTHER_KEY, "other", ""),
            ..Default::default()
        },
    )
    .await;
    let other = h.as_principal(OTHER_KEY);
    other.submit_ok(json!({ "sql": "SELECT 0" })).await;
    let first = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let second = h.submit_ok(json!({ "sql": "SELECT 2" })).await;
    let urgent = h
        .submit_ok(json!({ "sql": "SELECT 3", "priority": 5 }))
        .await;
    let later = "2099-01-01T00:00:00Z";
    let scheduled = h
        .submit_ok(json!({ "sql": "SELECT 4", "priority": 9, "run_after": later }))
        .await;
    for (id, position) in [(&urgent, 1), (&first, 2), (&second, 3)] {
        let e = h.get(id).await;
        assert_eq!(e["queue_position"], position, "{e}");
        assert!(e["estimated_start"].is_string(), "{e}");
    }
    let e = h.get(&scheduled).await;
    assert!(e["queue_position"].is_null(), "{e}");
    let start =
        chrono::DateTime::parse_from_rfc3339(e["estimated_start"].as_str().unwrap()).unwrap();
    assert_eq!(start, chrono::DateTime::parse_from_rfc3339(later).unwrap());
    // The list does not compute estimates.
    let (status, page) = h.get_json("/v1/executions").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page["executions"][0]["queue_position"].is_null(), "{page}");
}

/// After two runs of a statement, a third shows their mean run time as its estimate;
/// another tenant's runs of the same statement tell it nothing. A finished one reads
/// 100 percent.
#[sqlx::test(migrations = "./migrations")]
async fn estimated_duration_comes_from_past_runs(pool: PgPool) {
    let h = Harness::with(
        pool.clone(),
        Setup {
            auth_extra: key_entry("other", OTHER_KEY, "other", ""),
            ..Default::default()
        },
    )
    .await;
    let sql = "SELECT sum(sleepEachRow(0.1)) FROM (SELECT number FROM system.numbers LIMIT 3)";
    let body = json!({ "sql": sql, "settings": { "max_block_size": 1 } });
    let mut ran = Vec::new();
    for _ in 0..2 {
        let id = h.submit_ok(body.clone()).await;
        let e = h.wait_terminal(&id).await;
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        assert_eq!(e["percent"], 100.0, "{e}");
        ran.push(id);
    }
    let mean: f64 = sqlx::query_scalar(
        "SELECT avg(extract(epoch FROM finished_at - started_at))::float8 FROM executions",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let e = h.get(&ran[1]).await;
    let estimate = e["estimated_duration_seconds"].as_f64().unwrap();
    assert!((estimate - mean).abs() < 0.002, "{estimate} vs {mean}: {e}");
    assert!(estimate >= 0.25, "three rows of 0.1 s: {e}");

    let other = h.as_principal(OTHER_KEY);
    let theirs = other.submit_ok(body.clone()).await;
    let e = other.get(&theirs).await;
    assert!(e["estimated_duration_seconds"].is_null(), "{e}");
}
