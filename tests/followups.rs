//! Follow-up queries on a stored result (`from_result`): the stored bytes go to
//! ClickHouse as external data, so the answer must be ClickHouse's own answer for the
//! same query on the source statement; the source must be the tenant's own, SUCCEEDED
//! and not expired; and a large result passes through the worker without being held.
mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

const SOURCE: &str =
    "SELECT number AS n, toString(number * 7) AS s, number % 3 AS k FROM system.numbers LIMIT 1000";
const FOLLOW_UP: &str = "SELECT k, count() AS c, sum(n) AS total, max(s) AS top \
                         FROM result WHERE n % 2 = 0 GROUP BY k ORDER BY k";

async fn run(h: &Harness, body: Value) -> Value {
    let id = h.submit_ok(body).await;
    h.wait_terminal(&id).await
}

async fn body_of(h: &Harness, e: &Value) -> Vec<u8> {
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let (status, _, body) = h.download(e["id"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    body
}

/// Whatever format the source was stored in, the follow-up's bytes are ClickHouse's
/// answer to the same query on the source statement.
#[sqlx::test(migrations = "./migrations")]
async fn follow_ups_return_what_clickhouse_returns(pool: PgPool) {
    let h = Harness::start(pool).await;
    let mut formats = vec![
        "JSONEachRow",
        "CSVWithNames",
        "TabSeparatedWithNamesAndTypes",
        "TabSeparated",
    ];
    if is_modern().await {
        formats.extend(["Parquet", "Native"]);
    }
    let expected = clickhouse_direct(
        &FOLLOW_UP.replace("FROM result", &format!("FROM ({SOURCE})")),
        "JSONEachRow",
        &[],
    )
    .await;
    assert!(
        expected.len() > 20,
        "{}",
        String::from_utf8_lossy(&expected)
    );
    for format in formats {
        let source = run(&h, json!({ "sql": SOURCE, "format": format })).await;
        assert_eq!(source["status"], "SUCCEEDED", "{format}: {source}");
        let id = source["id"].as_str().unwrap();
        let e = run(&h, json!({ "sql": FOLLOW_UP, "from_result": id })).await;
        assert_eq!(e["from_result"], id);
        let got = body_of(&h, &e).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
            "{format}"
        );
        // A follow-up of a follow-up works too: the columns were learned.
        let again = run(
            &h,
            json!({ "sql": "SELECT sum(c) AS c FROM result", "from_result": e["id"] }),
        )
        .await;
        let body = String::from_utf8(body_of(&h, &again).await).unwrap();
        assert_eq!(body.trim().replace('"', ""), "{c:500}", "{format}");
    }
}

/// The source must exist for this tenant (404), have SUCCEEDED (409) and not have
/// expired (410); a result that goes away before the follow-up runs fails it with
/// RESULT_UNAVAILABLE.
#[sqlx::test(migrations = "./migrations")]
async fn the_source_must_be_the_tenants_own_finished_result(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            auth_extra: key_entry("other", "sk_other_tenant", "other", ""),
            tier_extra: "retention = { succeeded = \"1h\" }".into(),
            ..Default::default()
        },
    )
    .await;
    let source = run(&h, json!({ "sql": SOURCE })).await;
    let id = source["id"].as_str().unwrap().to_string();

    let other = h.as_principal("sk_other_tenant");
    let (status, v) = other
        .submit(json!({ "sql": "SELECT count() FROM result", "from_result": id }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = h
        .submit(json!({ "sql": "SELECT 1 FROM result", "from_result": "not-an-id" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_from_result");

    let running = h
        .submit_ok(json!({ "sql": LONG_SQL, "settings": long_settings() }))
        .await;
    let (status, v) = h
        .submit(json!({ "sql": "SELECT 1 FROM result", "from_result": running }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "result_not_ready");
    h.cancel(&running).await;

    // Queued while the source exists; the source expires before it runs.
    let mut h = h;
    h.stop_workers().await;
    let follow = h
        .submit_ok(json!({ "sql": "SELECT count() FROM result", "from_result": id }))
        .await;
    sqlx::query("UPDATE executions SET retention_ms = 1 WHERE id = $1::uuid")
        .bind(&id)
        .execute(h.store.pool())
        .await
        .unwrap();
    let bk =
        sluice::bookkeeper::Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    bk.expire_pass().await.unwrap();
    assert_eq!(h.get(&id).await["status"], "EXPIRED");
    let (status, v) = h
        .submit(json!({ "sql": "SELECT 2 FROM result", "from_result": id }))
        .await;
    assert_eq!(status, StatusCode::GONE, "{v}");
    let (_stop, _task) = h.spawn_worker("default");
    let e = h.wait_terminal(&follow).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"]["code"], "RESULT_UNAVAILABLE", "{e}");
}

/// A follow-up on a result of more than 100 MB: the answer is ClickHouse's, and the
/// worker process (a real `sluice worker`) never holds the result: its peak RSS stays
/// under the bound the README gives.
#[sqlx::test(migrations = "./migrations")]
async fn a_large_result_streams_through_a_worker_of_bounded_memory(pool: PgPool) {
    let h = Harness::without_workers(pool.clone()).await;
    let config = write_config(&h, &pool, &Setup::default());
    let worker = spawn_sluice(&config, &["worker", "--tier", "default"]);
    let pad = "x".repeat(100);
    let source_sql = format!(
        "SELECT number AS n, concat(toString(number), '{pad}') AS pad \
         FROM system.numbers LIMIT 900000"
    );
    let source = run(&h, json!({ "sql": source_sql })).await;
    assert_eq!(source["status"], "SUCCEEDED", "{source}");
    let bytes = source["result"]["bytes"].as_u64().unwrap();
    assert!(bytes > 100 << 20, "the source has {bytes} bytes");

    let follow_up = "SELECT count() AS c, sum(n) AS total, sum(length(pad)) AS l FROM result";
    let e = run(&h, json!({ "sql": follow_up, "from_result": source["id"] })).await;
    let got = body_of(&h, &e).await;
    let expected = clickhouse_direct(
        &follow_up.replace("FROM result", &format!("FROM ({source_sql})")),
        "JSONEachRow",
        &[],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
    let peak = peak_rss_kib(worker.pid());
    eprintln!(
        "worker peak RSS: {} MiB for a {} MiB result",
        peak / 1024,
        bytes >> 20
    );
    assert!(peak < 96 * 1024, "worker peak RSS {peak} KiB");
}
