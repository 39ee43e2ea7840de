//! Rows inline: `?inline=true` puts a small text result inside the execution's answer,
//! byte for byte as stored, and says why not otherwise.
mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrations = "./migrations")]
async fn a_small_result_comes_inline(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            extra: "[api]\ninline_max_bytes = 200\n".into(),
            ..Default::default()
        },
    )
    .await;
    let sql = "SELECT number, toString(number) AS s FROM system.numbers LIMIT 3";
    let (status, v) = h
        .post_json(
            "/v1/executions?wait=30&inline=true",
            json!({ "sql": sql, "format": "CSVWithNames" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let result = &v["execution"]["result"];
    assert_eq!(result["inline_status"], "included", "{v}");
    let direct = clickhouse_direct(sql, "CSVWithNames", &[]).await;
    assert_eq!(result["inline"].as_str().unwrap().as_bytes(), direct);
    let id = v["execution"]["id"].as_str().unwrap().to_string();

    let (_, e) = h
        .get_json(&format!("/v1/executions/{id}?inline=true"))
        .await;
    assert_eq!(e["result"]["inline"], result["inline"]);
    // Not asked: not there.
    let e = h.get(&id).await;
    assert!(e["result"]["inline"].is_null() && e["result"]["inline_status"].is_null());

    // Over api.inline_max_bytes: a marker, and the download works as ever.
    let big = "SELECT number FROM system.numbers LIMIT 100";
    let id = h.submit_ok(json!({ "sql": big })).await;
    h.wait_terminal(&id).await;
    let (_, e) = h
        .get_json(&format!("/v1/executions/{id}?inline=true"))
        .await;
    assert_eq!(e["result"]["inline_status"], "too_large", "{e}");
    assert!(e["result"]["inline"].is_null());

    // A binary format never comes inline.
    let id = h
        .submit_ok(json!({ "sql": "SELECT 1 AS x", "format": "RowBinary" }))
        .await;
    h.wait_terminal(&id).await;
    let (_, e) = h
        .get_json(&format!("/v1/executions/{id}?inline=true"))
        .await;
    assert_eq!(e["result"]["inline_status"], "binary", "{e}");
}
