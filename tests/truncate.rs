//! `row_limit` and `byte_limit` on submit: the stored result is the beginning of what
//! ClickHouse answers, in whole rows within the caps, marked `truncated` when there was
//! more, and the query stops there instead of running on unread.
mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrations = "./migrations")]
async fn a_row_limit_stores_the_first_rows_and_stops_the_query(pool: PgPool) {
    let h = Harness::start(pool).await;
    // Endless: only the cap ends it (the test tier's max_execution_time would fail it).
    let sql = "SELECT number, toString(number) AS s FROM system.numbers";
    let id = h
        .submit_ok(json!({ "sql": sql, "settings": long_settings(), "row_limit": 1000 }))
        .await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["result"]["truncated"], true);
    assert_eq!(e["result"]["rows"], 1000);
    let (status, _, body) = h.download(&id).await;
    assert_eq!(status, StatusCode::OK);
    let direct = clickhouse_direct(&format!("{sql} LIMIT 1000"), "JSONEachRow", &[]).await;
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&direct)
    );
    assert_eq!(e["result"]["bytes"], direct.len());
    assert_eq!(
        running_on_clickhouse(&format!("{id}-1")).await,
        0,
        "the query was stopped"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn a_byte_limit_keeps_the_whole_rows_that_fit(pool: PgPool) {
    let h = Harness::start(pool).await;
    let sql =
        "SELECT number, concat('a', '\\n', toString(number)) AS s FROM system.numbers LIMIT 5000";
    let direct = clickhouse_direct(sql, "CSVWithNames", &[]).await;
    // Every line of this CSV (the header's and each row's) ends with `"` + newline; the
    // newline inside a value follows an `a`. The cap falls just after such a quoted
    // newline, in the middle of a row.
    let ends: Vec<usize> = direct
        .windows(2)
        .enumerate()
        .filter(|(_, w)| *w == b"\"\n")
        .map(|(i, _)| i + 2)
        .collect();
    let cap = 2000 + direct[2000..].windows(2).position(|w| w == b"a\n").unwrap() + 2;
    let expected = &direct[..*ends.iter().filter(|&&e| e <= cap).max().unwrap()];
    let id = h
        .submit_ok(json!({ "sql": sql, "format": "CSVWithNames", "byte_limit": cap }))
        .await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["result"]["truncated"], true);
    let (_, _, body) = h.download(&id).await;
    // The whole rows that fit: never a half row, even where a newline is quoted.
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(expected)
    );
    let rows = e["result"]["rows"].as_u64().unwrap();
    let direct_rows = clickhouse_direct(
        &format!("SELECT * FROM ({sql}) LIMIT {rows}"),
        "CSVWithNames",
        &[],
    )
    .await;
    assert_eq!(body, direct_rows, "rows counts what is stored");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_result_within_its_limits_is_whole(pool: PgPool) {
    let h = Harness::start(pool).await;
    let sql = "SELECT number FROM system.numbers LIMIT 10";
    let direct = clickhouse_direct(sql, "TabSeparated", &[]).await;
    for limits in [
        json!({ "row_limit": 10 }),
        json!({ "row_limit": 11, "byte_limit": direct.len() }),
    ] {
        let mut body = json!({ "sql": sql, "format": "TabSeparated" });
        body.as_object_mut()
            .unwrap()
            .extend(limits.as_object().unwrap().clone());
        let id = h.submit_ok(body).await;
        let e = h.wait_terminal(&id).await;
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        assert_eq!(e["result"]["truncated"], false, "{limits}");
        assert_eq!(e["result"]["rows"], 10);
        assert_eq!(h.download(&id).await.2, direct);
    }
    // A cap changes the result, so it is part of the identity: no collapse, no reuse.
    let a = h
        .submit_ok(json!({ "sql": "SELECT 1", "max_age": "1h" }))
        .await;
    h.wait_terminal(&a).await;
    let b = h
        .submit_ok(json!({ "sql": "SELECT 1", "max_age": "1h", "row_limit": 1 }))
        .await;
    assert_ne!(a, b);
}

#[sqlx::test(migrations = "./migrations")]
async fn limits_are_checked_at_submit(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    for (body, code) in [
        (
            json!({ "sql": "SELECT 1", "row_limit": 0 }),
            "invalid_result_limit",
        ),
        (
            json!({ "sql": "SELECT 1", "byte_limit": -5 }),
            "invalid_result_limit",
        ),
        (
            json!({ "sql": "SELECT 1", "row_limit": 9_007_199_254_740_992_i64 }),
            "invalid_result_limit",
        ),
        (
            json!({ "sql": "SELECT 1", "format": "Parquet", "row_limit": 5 }),
            "limit_not_supported",
        ),
        (
            json!({ "sql": "SELECT 1 FORMAT JSON", "byte_limit": 100 }),
            "limit_not_supported",
        ),
    ] {
        let (status, answer) = h.submit(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
}
