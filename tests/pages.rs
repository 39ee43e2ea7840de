//! Pages of rows of a stored result: `?row_offset=&row_limit=` answers exactly what
//! ClickHouse answers for `LIMIT n OFFSET m` of the same statement, header lines
//! included, through the row index the worker records while the result streams.
mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

async fn page(
    h: &Harness,
    id: &str,
    query: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let r = h
        .http
        .get(h.url(&format!("/v1/executions/{id}/result?{query}")))
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.bytes().await.unwrap().to_vec())
}

#[sqlx::test(migrations = "./migrations")]
async fn pages_are_clickhouse_s_limit_offset(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let sql = "SELECT number, toString(number) AS s FROM system.numbers LIMIT 25000";
    let id = h.submit_ok(json!({ "sql": sql })).await;
    assert_eq!(h.wait_terminal(&id).await["status"], "SUCCEEDED");
    let stride: i64 = sqlx::query_scalar(
        "SELECT (result->'row_index'->>'stride')::int8 FROM executions WHERE id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stride, 1024, "the worker indexed the rows");
    for (offset, limit) in [(0, 2), (12345, 3), (1024, 1), (24999, 10), (30000, 5)] {
        let (status, headers, body) =
            page(&h, &id, &format!("row_offset={offset}&row_limit={limit}")).await;
        assert_eq!(status, StatusCode::OK, "{offset}");
        assert_eq!(headers["x-sluice-total-rows"], "25000");
        let direct = clickhouse_direct(
            &format!("SELECT number, toString(number) AS s FROM (SELECT number FROM system.numbers LIMIT 25000) LIMIT {limit} OFFSET {offset}"),
            "JSONEachRow",
            &[],
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&direct),
            "rows {offset}..+{limit}"
        );
    }
}

/// CSV keeps its header in every page, and a newline inside a quoted value is not a row.
#[sqlx::test(migrations = "./migrations")]
async fn csv_pages_keep_the_header_and_quoted_newlines(pool: PgPool) {
    let h = Harness::start(pool).await;
    let inner =
        "SELECT number, concat('a', '\\n', toString(number)) AS s FROM system.numbers LIMIT 3000";
    let id = h
        .submit_ok(json!({ "sql": inner, "format": "CSVWithNames" }))
        .await;
    assert_eq!(h.wait_terminal(&id).await["status"], "SUCCEEDED");
    let (status, _, body) = page(&h, &id, "row_offset=2047&row_limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let direct = clickhouse_direct(
        &format!("SELECT * FROM ({inner}) LIMIT 2 OFFSET 2047"),
        "CSVWithNames",
        &[],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&direct)
    );
}

/// Formats without a row per line cannot be paged; a Range beside a page is ignored (the
/// page is rows); a limit outside 1..=100,000 is refused.
#[sqlx::test(migrations = "./migrations")]
async fn what_cannot_be_paged_is_400(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h
        .submit_ok(json!({ "sql": "SELECT 1 AS x", "format": "JSON" }))
        .await;
    h.wait_terminal(&id).await;
    let (status, _, body) = page(&h, &id, "row_offset=0&row_limit=1").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "not_pageable", "{v}");

    let id = h.submit_ok(json!({ "sql": "SELECT 1 AS x" })).await;
    h.wait_terminal(&id).await;
    let r = h
        .http
        .get(h.url(&format!("/v1/executions/{id}/result?row_offset=0")))
        .header("Range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap().trim(), r#"{"x":1}"#);
    let (status, _, _) = page(&h, &id, "row_limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
