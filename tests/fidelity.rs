//! ClickHouse is the oracle: for each statement of a differential suite, the bytes Sluice
//! stores are the bytes ClickHouse answers directly to the tier's user with the tier's
//! settings (JSON and XML timing statistics aside), and a statement ClickHouse rejects
//! FAILS with ClickHouse's own code. Both servers; cases a server cannot run (types and
//! formats newer than 18.16) are left out there, never faked.
mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;

/// What ClickHouse answered directly.
enum Direct {
    Ok(Vec<u8>),
    Rejected(i64),
}

/// The statement as the default test tier's user sends it: `readonly = 1`, the format.
async fn direct(sql: &str, format: &str) -> Direct {
    let mut request = reqwest::Client::new()
        .post(clickhouse_url())
        .query(&[("default_format", format), ("readonly", "1")])
        .body(sql.to_string());
    if tier_users().contains(TENANT_USER.0) {
        request = request.basic_auth(TENANT_USER.0, Some(TENANT_USER.1));
    }
    let response = request.send().await.expect("ClickHouse answers");
    let status = response.status();
    let code = response
        .headers()
        .get("X-ClickHouse-Exception-Code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.bytes().await.unwrap().to_vec();
    if status.is_success() {
        return Direct::Ok(body);
    }
    // 18.x sends no code header: `Code: N, e.displayText() = ...`.
    let code = code.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body);
        text.split_once("Code: ")
            .and_then(|(_, rest)| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(-1)
    });
    Direct::Rejected(code)
}

/// Drops the timing statistics of JSON and XML outputs, which differ per run.
fn without_statistics(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("\"statistics\"") || t.starts_with("<statistics>") {
            skipping = !t.trim_end().ends_with("</statistics>");
            continue;
        }
        if skipping {
            if t.starts_with('}') || t.starts_with("</statistics>") {
                skipping = false;
            }
            continue;
        }
        out.push_str(line);
    }
    out.into_bytes()
}

/// One case: the SQL, the `format` field (None: the default, or the SQL's FORMAT), and
/// whether it needs a server newer than 18.16.
struct Case {
    sql: &'static str,
    format: Option<&'static str>,
    modern_only: bool,
}

const fn case(sql: &'static str) -> Case {
    Case {
        sql,
        format: None,
        modern_only: false,
    }
}

const fn modern(sql: &'static str) -> Case {
    Case {
        sql,
        format: None,
        modern_only: true,
    }
}

const CASES: &[Case] = &[
    // Shapes that failed through the DESCRIBE wrapper.
    case("SELECT 3 AS three -- trailing comment"),
    case("SELECT 1 AS x -- c\n"),
    case("SHOW TABLES FROM system"),
    case("DESCRIBE TABLE system.numbers"),
    case("EXISTS TABLE system.numbers"),
    case("SELECT 1 AS x FORMAT CSV"),
    case("SELECT 3 ;; ;"),
    case("SELECT toValidUTF8('\\xc3\\x28') FROM system.numbers LIMIT 10"),
    case(
        "SELECT number % 3 AS k, count() AS c FROM (SELECT number FROM system.numbers \
         LIMIT 10) GROUP BY k WITH TOTALS ORDER BY k FORMAT JSON",
    ),
    case("SELECT number AS n, toString(number) AS s FROM system.numbers LIMIT 3 FORMAT TSKV"),
    case(
        "SELECT number % 2 AS k, sum(number) AS s FROM (SELECT number FROM system.numbers \
         LIMIT 7) GROUP BY k WITH TOTALS ORDER BY k FORMAT TabSeparated",
    ),
    // Comments and literals.
    case("/* leading */ SELECT 1 AS a"),
    case("-- leading\nSELECT 'a -- not a comment' AS s"),
    case("SELECT 'x; y' AS s -- ;"),
    case("SELECT /* inside */ 1 AS a, 'b /* not a comment */' AS b"),
    case("SELECT 'a\\'b\"c\\\\d\\te\\nf' AS s, 'it''s' AS t"),
    case("SELECT 'héllo ✓ 日本' AS s"),
    case("(SELECT 1 AS a)"),
    case("WITH 2 AS x SELECT x * 3 AS y"),
    // Equal rows: ClickHouse does not order the parts of a UNION ALL.
    case("SELECT 1 AS a UNION ALL SELECT 1"),
    modern("EXPLAIN SELECT 1"),
    // Types.
    case("SELECT CAST(NULL AS Nullable(Int32)) AS n, toNullable(1) AS m"),
    modern("SELECT toLowCardinality('a') AS lc, toLowCardinality(toNullable('b')) AS lcn"),
    case("SELECT CAST('b' AS Enum8('a' = 1, 'b' = 2)) AS e"),
    case("SELECT toDecimal64(3.14159, 4) AS d, toDecimal32(-1.5, 2) AS d2"),
    modern("SELECT toDecimal128('-12345678901234567890.123', 3) AS d"),
    case("SELECT toFixedString('ab', 4) AS f"),
    case("SELECT toUUID('01234567-89ab-cdef-0123-456789abcdef') AS u"),
    modern("SELECT toIPv4('1.2.3.4') AS a, toIPv6('::1') AS b"),
    modern("SELECT toDate32('1925-01-01') AS d"),
    modern(
        "SELECT toDateTime64('2026-11-23 12:34:56.789', 3, 'Asia/Kolkata') AS t, \
         toDateTime64('2026-11-23 12:34:56.789', 6, 'America/New_York') AS u",
    ),
    case("SELECT toDate('2026-11-23') AS d, toDateTime('2026-11-23 01:02:03', 'UTC') AS dt"),
    case("SELECT [1, 2, 3] AS a, (1, 'x') AS t, [[1], [2, 3]] AS nested"),
    modern("SELECT map('k', 1, 'l', 2) AS m, [map('a', [1])] AS am"),
    modern("SELECT CAST(([1, 2], ['a', 'b']) AS Tuple(n Array(UInt8), s Array(String))) AS t"),
    case("SELECT toUInt64('18446744073709551615') AS u, toInt64('-9223372036854775808') AS i"),
    modern(
        "SELECT toInt128('-170141183460469231731687303715884105728') AS big, toUInt256('1') AS u",
    ),
    case("SELECT nan AS a, inf AS b, -inf AS c, 0.1 + 0.2 AS d"),
    case("SELECT repeat('x', 102400) AS s"),
    case("SELECT number FROM system.numbers LIMIT 0"),
    case("SELECT number FROM system.numbers WHERE number IN (1, 3) LIMIT 2"),
    case("SELECT arrayJoin([1, 2, 3]) AS x"),
    case("SELECT toString(number) AS s FROM system.numbers LIMIT 3 FORMAT JSONCompact"),
    case("SELECT number FROM system.numbers LIMIT 3 FORMAT PrettyCompact"),
    case("SELECT 1 AS a, 'b' AS b FORMAT Vertical"),
    case("SELECT number, toString(number) AS s FROM system.numbers LIMIT 300000"),
    // Statements ClickHouse rejects: FAILED with its code.
    case("SELECT 1 +"),
    case("SELECT * FROM no_such_table"),
    case("SELECT no_such_function(1)"),
    case("SELECT 1 SETTINGS max_threads = 2"),
    case("SELECT throwIf(1)"),
    case("SELECT toUInt8('x')"),
];

/// A query with many types, in every format the server writes.
const RICH: &str = "SELECT number AS n, toString(number) AS s, number / 3 AS f, \
                    toDate('2026-01-01') + number AS d, [number, 1] AS a, \
                    if(number % 2 = 0, NULL, number) AS maybe \
                    FROM system.numbers LIMIT 7";

async fn run(h: &Harness, sql: &str, format: Option<&str>) -> Value {
    let mut body = json!({ "sql": sql });
    if let Some(f) = format {
        body["format"] = json!(f);
    }
    let (status, v) = h.submit(body).await;
    assert!(status.is_success(), "{sql}: {v}");
    let id = v["execution"]["id"].as_str().unwrap().to_string();
    h.wait_for(
        &id,
        &["SUCCEEDED", "FAILED", "CANCELED"],
        Duration::from_secs(120),
    )
    .await
}

async fn compare(h: &Harness, label: &str, sql: &str, format: Option<&str>) -> Value {
    let e = run(h, sql, format).await;
    let stored_format = e["format"].as_str().unwrap().to_string();
    match direct(sql, &stored_format).await {
        Direct::Ok(expected) => {
            assert_eq!(e["status"], "SUCCEEDED", "{label}: {e}");
            let (_, _, bytes) = h.download(e["id"].as_str().unwrap()).await;
            assert!(
                without_statistics(&bytes) == without_statistics(&expected),
                "{label} ({stored_format}): Sluice stored {} bytes, ClickHouse answered {}:\n{}\n---\n{}",
                bytes.len(),
                expected.len(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(400)]),
                String::from_utf8_lossy(&expected[..expected.len().min(400)]),
            );
            assert_eq!(e["result"]["bytes"], bytes.len() as u64, "{label}");
        }
        Direct::Rejected(code) => {
            assert_eq!(e["status"], "FAILED", "{label}: {e}");
            assert_eq!(e["error"]["code"], "CLICKHOUSE_ERROR", "{label}: {e}");
            assert_eq!(e["error"]["clickhouse_code"], code, "{label}: {e}");
        }
    }
    e
}

#[sqlx::test(migrations = "./migrations")]
async fn statements_answer_as_clickhouse_answers_them(pool: PgPool) {
    let h = Harness::start(pool).await;
    let modern = is_modern().await;
    let mut checked = 0;
    for c in CASES {
        if c.modern_only && !modern {
            continue;
        }
        compare(&h, c.sql, c.sql, c.format).await;
        checked += 1;
    }
    assert!(checked >= 40, "{checked} statements checked");
    println!("{checked} statements answered as ClickHouse answers them");
}

#[sqlx::test(migrations = "./migrations")]
async fn every_format_the_server_writes_is_stored_byte_for_byte(pool: PgPool) {
    let h = Harness::start(pool).await;
    let writes =
        clickhouse_text("SELECT name FROM system.formats WHERE is_output FORMAT TSV").await;
    let writes: Vec<&str> = writes.lines().collect();
    let mut checked = 0;
    for format in sluice::execution::Format::ALL {
        let name = format.as_str();
        if !writes.contains(&name) {
            // A format the server does not write FAILS clearly instead.
            let e = run(&h, RICH, Some(name)).await;
            assert_eq!(e["status"], "FAILED", "{name}: {e}");
            assert_eq!(e["error"]["code"], "UNSUPPORTED_BY_SERVER", "{name}: {e}");
            continue;
        }
        let e = compare(&h, name, RICH, Some(name)).await;
        // Counted wherever the format's structure states the count; unknown elsewhere.
        let rows = match format.row_counting() {
            sluice::execution::RowCounting::Unknown => Value::Null,
            _ => json!(7),
        };
        assert_eq!(e["result"]["rows"], rows, "{name}: {e}");
        checked += 1;
    }
    println!("{checked} formats stored byte for byte");
}

/// Binary formats of many blocks: the count comes from their structure, not a guess.
#[sqlx::test(migrations = "./migrations")]
async fn binary_formats_count_their_rows(pool: PgPool) {
    let h = Harness::start(pool).await;
    let writes =
        clickhouse_text("SELECT name FROM system.formats WHERE is_output FORMAT TSV").await;
    for format in ["Parquet", "Arrow", "ArrowStream"] {
        if !writes.lines().any(|f| f == format) {
            continue;
        }
        let e = compare(
            &h,
            format,
            "SELECT number, toString(number) AS s FROM system.numbers LIMIT 300000",
            Some(format),
        )
        .await;
        assert_eq!(e["result"]["rows"], 300000, "{format}: {e}");
    }
}

/// Columns come from the format's header, from DESCRIBE for a SELECT, or are `null` when
/// neither can tell; never a failed execution.
#[sqlx::test(migrations = "./migrations")]
async fn columns_never_fail_an_execution(pool: PgPool) {
    let h = Harness::start(pool).await;
    let e = run(&h, "SELECT 1 AS x FORMAT JSON", None).await;
    assert_eq!(
        e["result"]["columns"],
        json!([{"name": "x", "type": "UInt8"}]),
        "{e}"
    );
    let e = run(&h, "SELECT 1 AS x -- comment", None).await;
    assert_eq!(
        e["result"]["columns"],
        json!([{"name": "x", "type": "UInt8"}]),
        "{e}"
    );
    let e = run(&h, "SHOW TABLES FROM system", Some("CSV")).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(
        e["result"]["columns"],
        Value::Null,
        "SHOW cannot be DESCRIBEd: {e}"
    );
    let e = run(
        &h,
        "SHOW TABLES FROM system",
        Some("TabSeparatedWithNamesAndTypes"),
    )
    .await;
    assert_eq!(
        e["result"]["columns"][0]["name"], "name",
        "from the header: {e}"
    );
    if is_modern().await {
        let e = run(
            &h,
            "SELECT toValidUTF8('\\xc3\\x28') FROM system.numbers LIMIT 1",
            None,
        )
        .await;
        assert_eq!(
            e["status"], "SUCCEEDED",
            "a column name that is not UTF-8: {e}"
        );
        assert_eq!(e["result"]["columns"], Value::Null, "{e}");
    }
}
