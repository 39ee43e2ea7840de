//! The pipeline end to end: submit, run on the real ClickHouse, store, download.
mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// NULLs, arrays, unicode (with a quote, a tab and a newline), dates, UInt64/Int64
/// extremes: everything a format could get wrong. Works on 18.16 and 26.9.
const RICH_SQL: &str = "SELECT number, \
    toUInt64('18446744073709551615') AS u64_max, \
    toInt64('-9223372036854775808') AS i64_min, \
    if(number % 3 = 0, NULL, number) AS maybe, \
    [number, number * 2] AS arr, \
    concat('héllo ✓ 日本 \"q\" \\t tab \\n newline ', toString(number)) AS s, \
    toDate('2020-02-29') + number AS d, \
    toDateTime('2020-01-01 00:00:00', 'UTC') AS dt \
    FROM system.numbers LIMIT 1000";

async fn round_trip(h: &Harness, format: &str, settings: &[(&str, &str)]) {
    let settings_json: serde_json::Map<_, _> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let id = h
        .submit_ok(json!({ "sql": RICH_SQL, "format": format, "settings": settings_json }))
        .await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "SUCCEEDED", "{format}: {e}");
    let (status, headers, bytes) = h.download(&id).await;
    assert_eq!(status, StatusCode::OK);
    let direct = clickhouse_direct(RICH_SQL, format, settings).await;
    assert!(!direct.is_empty());
    assert!(
        bytes == direct,
        "{format}: {} bytes through Sluice, {} directly",
        bytes.len(),
        direct.len()
    );
    assert_eq!(e["result"]["bytes"], direct.len() as u64);
    assert_eq!(
        headers[reqwest::header::CONTENT_TYPE],
        e["result"]["content_type"].as_str().unwrap()
    );
    let columns: Vec<&str> = e["result"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "number", "u64_max", "i64_min", "maybe", "arr", "s", "d", "dt"
        ]
    );
    let maybe_type = e["result"]["columns"][3]["type"].as_str().unwrap();
    assert_eq!(maybe_type, "Nullable(UInt64)");
    // Rows are counted for every format but Native and RowBinary, whose rows Sluice
    // does not decode: those say `null`, never a wrong number.
    if format == "Native" {
        assert!(e["result"]["rows"].is_null(), "{format}: {e}");
    } else {
        assert_eq!(e["result"]["rows"], 1000, "{format}: {e}");
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn every_format_round_trips_byte_for_byte(pool: PgPool) {
    let h = Harness::start(pool).await;
    let no_stats = [("output_format_write_statistics", "0")];
    round_trip(&h, "JSONEachRow", &[]).await;
    round_trip(&h, "JSON", &no_stats).await;
    round_trip(&h, "JSONCompact", &no_stats).await;
    round_trip(&h, "CSVWithNames", &[]).await;
    round_trip(&h, "TabSeparatedWithNamesAndTypes", &[]).await;
    round_trip(&h, "Native", &[]).await;
    round_trip(&h, "CSV", &[]).await;
    round_trip(&h, "TabSeparated", &[]).await;
    round_trip(&h, "TabSeparatedWithNames", &[]).await;
    if is_modern().await {
        // 18.16 writes neither (a clear UNSUPPORTED_BY_SERVER there, tested elsewhere).
        round_trip(&h, "JSONCompactEachRow", &[]).await;
        round_trip(&h, "Parquet", &[]).await;
        round_trip(&h, "Arrow", &[]).await;
        round_trip(&h, "ArrowStream", &[]).await;
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn formats_an_old_server_lacks_fail_with_a_clear_error(pool: PgPool) {
    if is_modern().await {
        return; // covered by the round trip above on servers that have them
    }
    let h = Harness::start(pool).await;
    for format in ["Parquet", "Arrow", "ArrowStream"] {
        let id = h
            .submit_ok(json!({ "sql": "SELECT 1", "format": format }))
            .await;
        let e = h.wait_terminal(&id).await;
        assert_eq!(e["status"], "FAILED", "{e}");
        assert_eq!(e["error"]["code"], "UNSUPPORTED_BY_SERVER", "{e}");
        assert_eq!(e["attempt"], 1, "not retried: {e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "format {format} is not one this tier's server (ClickHouse 18.16) writes"
            )),
            "{message}"
        );
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn range_requests_return_the_requested_bytes(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h
        .submit_ok(
            json!({ "sql": "SELECT number FROM system.numbers LIMIT 1000", "format": "TSV" }),
        )
        .await;
    h.wait_for(&id, &["SUCCEEDED"], Duration::from_secs(60))
        .await;
    let (_, _, all) = h.download(&id).await;
    let url = h.url(&format!("/v1/executions/{id}/result"));
    let r = h
        .http
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 10-19/{}", all.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &all[10..20]);
    let r = h
        .http
        .get(&url)
        .header("Range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &all[all.len() - 5..]);
    let r = h
        .http
        .get(&url)
        .header("Range", format!("bytes={}-", all.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", all.len()).as_str()
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn status_moves_pending_running_succeeded_with_timings(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let (status, v) = h.submit(json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(v["outcome"], "created");
    assert_eq!(v["execution"]["status"], "PENDING");
    let id = v["execution"]["id"].as_str().unwrap().to_string();
    // A worker arriving later picks it up (poll fallback: the NOTIFY was sent before it).
    let (stop, task) = h.spawn_worker("default");
    let e = h
        .wait_for(&id, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    assert_eq!(e["attempt"], 1);
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(e[field].is_string(), "{field} missing: {e}");
    }
    assert_eq!(e["result"]["rows"], 1);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[sqlx::test(migrations = "./migrations")]
async fn sql_errors_fail_with_clickhouse_code(pool: PgPool) {
    let h = Harness::start(pool).await;
    let cases = [
        ("SELECT 1 +", 62),
        ("SELECT * FROM no_such_database.no_such_table", 81),
        ("SELECT * FROM system.no_such_table", 60),
    ];
    for (sql, code) in cases {
        let id = h.submit_ok(json!({ "sql": sql })).await;
        let e = h.wait_terminal(&id).await;
        assert_eq!(e["status"], "FAILED", "{sql}: {e}");
        assert_eq!(e["error"]["code"], "CLICKHOUSE_ERROR");
        assert_eq!(e["error"]["clickhouse_code"], code, "{sql}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("DB::Exception")
        );
        // SQL errors are not retried: one attempt of the tier's three, and only it in
        // the history.
        assert_eq!(e["attempt"], 1, "{sql}: {e}");
        assert_eq!(e["max_attempts"], 3, "{sql}: {e}");
        assert_eq!(
            e["failed_attempts"].as_array().unwrap().len(),
            1,
            "{sql}: {e}"
        );
        assert_eq!(e["failed_attempts"][0]["attempt"], 1, "{sql}: {e}");
        let (status, _, body) = h.download(&id).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "no_result");
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn an_error_after_data_has_streamed_fails_and_leaves_no_object(pool: PgPool) {
    let h = Harness::start(pool).await;
    // Small blocks make ClickHouse send data (and a 200) before row 3,000,000 throws.
    let id = h
        .submit_ok(json!({
            "sql": "SELECT number, throwIf(number = 3000000) FROM system.numbers LIMIT 4000000",
            "settings": { "max_block_size": 1000 },
        }))
        .await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"]["clickhouse_code"], 395, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("throwIf"),
        "{e}"
    );
    // Data did flow before the error: the failure was detected mid-stream.
    assert!(e["progress"]["result_bytes"].as_u64().unwrap() > 0, "{e}");
    assert!(
        h.results.list_keys().await.unwrap().is_empty(),
        "no object may remain"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn the_issue_example_of_a_mid_stream_error_fails_with_its_code(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h
        // `numbers()` is a table function, which 18.x forbids under readonly = 1.
        .submit_ok(
            json!({ "sql": "SELECT throwIf(number = 100000) FROM system.numbers LIMIT 200000" }),
        )
        .await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "FAILED");
    assert_eq!(e["error"]["clickhouse_code"], 395);
    assert!(h.results.list_keys().await.unwrap().is_empty());
}

#[sqlx::test(migrations = "./migrations")]
async fn cancel_pending_is_immediate(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let (status, v) = h.cancel(&id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["status"], "CANCELED");
    // Canceling again is a no-op.
    let (status, _) = h.cancel(&id).await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test(migrations = "./migrations")]
async fn cancel_running_kills_the_clickhouse_query(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h
        .submit_ok(json!({ "sql": LONG_SQL, "settings": long_settings() }))
        .await;
    let query_id = h.wait_running_on_clickhouse(&id).await;

    // The heartbeat records progress from system.processes while it runs.
    eventually(Duration::from_secs(30), "progress is reported", || async {
        let e = h.get(&id).await;
        e["progress"]["read_rows"].as_u64().unwrap_or(0) > 0
            && e["progress"]["elapsed_seconds"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;

    let asked = Instant::now();
    let (status, _) = h.cancel(&id).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let e = h
        .wait_for(&id, &["CANCELED"], Duration::from_secs(30))
        .await;
    let took = asked.elapsed();
    // The worker kills with KILL QUERY ... SYNC before it writes CANCELED.
    assert_eq!(
        running_on_clickhouse(&query_id).await,
        0,
        "still on ClickHouse"
    );
    assert_eq!(e["error"]["code"], "CANCELED");
    assert!(h.results.list_keys().await.unwrap().is_empty());
    eprintln!("RUNNING -> CANCELED took {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "cancel took {took:?}, the contract is 2 s"
    );

    // Canceling a finished execution that is not CANCELED is a conflict.
    let done = h.submit_ok(json!({ "sql": "SELECT 2" })).await;
    h.wait_for(&done, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    let (status, _) = h.cancel(&done).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

/// The worker's LISTEN is what starts a submit, a group and a cancel at once. Here its two
/// fallbacks, the poll and the heartbeat (which also sees a cancel), are a minute apart,
/// so neither can do it within the deadlines.
#[sqlx::test(migrations = "./migrations")]
async fn notifications_start_and_stop_work_without_the_fallbacks(pool: PgPool) {
    let h = listening_without_fallbacks(&pool).await;
    for i in 0..3 {
        // The claim the worker makes after each completion (or at start) is over: from
        // here only a notification can wake it before the poll.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let id = h.submit_ok(json!({ "sql": format!("SELECT {i}") })).await;
        h.wait_for(&id, &["SUCCEEDED"], Duration::from_secs(5))
            .await;
    }

    // A group's members are woken by the coalesced wake-ups (`Store::wake_workers`).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, v) = h
        .post_json(
            "/v1/groups",
            json!({ "concurrency": 2, "executions": [{ "sql": "SELECT 10" }, { "sql": "SELECT 11" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    for member in v["group"]["executions"].as_array().unwrap() {
        let id = member["id"].as_str().unwrap();
        h.wait_for(id, &["SUCCEEDED"], Duration::from_secs(5)).await;
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = h
        .submit_ok(json!({ "sql": LONG_SQL, "settings": long_settings() }))
        .await;
    let query_id = started_within_seconds(&h, &id).await;
    let (status, _) = h.cancel(&id).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.wait_for(&id, &["CANCELED"], Duration::from_secs(5)).await;
    assert_eq!(running_on_clickhouse(&query_id).await, 0);
}

/// A submit that overlaps another in the same api process leaves the wake-up to the
/// coalesced NOTIFYs (`Store::wake_workers`); it must still start at once. The other
/// submit is held in flight on its queue-cap lock, which the test holds.
#[sqlx::test(migrations = "./migrations")]
async fn a_submit_beside_another_in_flight_still_wakes_the_worker(pool: PgPool) {
    let h = listening_without_fallbacks(&pool).await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('c' || '/' || 'default', 5898))")
        .execute(&mut *lock)
        .await
        .unwrap();
    let capped = h.as_principal(&jwt(json!({
        "sub": "etl", "tenant": "c", "max_queued": 5,
        "exp": sluice::auth::unix_now() + 600,
    })));
    let held = tokio::spawn(async move {
        let id = capped.submit_ok(json!({ "sql": "SELECT 'c'" })).await;
        (capped, id)
    });
    eventually(
        Duration::from_secs(10),
        "the capped submit waits",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == 1
        },
    )
    .await;

    let id = h.submit_ok(json!({ "sql": "SELECT 'beside'" })).await;
    h.wait_for(&id, &["SUCCEEDED"], Duration::from_secs(5))
        .await;
    lock.rollback().await.unwrap();
    let (capped, id) = held.await.unwrap();
    capped
        .wait_for(&id, &["SUCCEEDED"], Duration::from_secs(5))
        .await;
}

/// Superseding a RUNNING execution signals its worker by NOTIFY: the old query is killed
/// within seconds, not at the next heartbeat.
#[sqlx::test(migrations = "./migrations")]
async fn a_supersede_stops_the_running_query_by_notify(pool: PgPool) {
    let h = listening_without_fallbacks(&pool).await;
    let old = h
        .submit_ok(json!({ "sql": LONG_SQL, "settings": long_settings(), "query_id": "nightly" }))
        .await;
    let query_id = started_within_seconds(&h, &old).await;
    let (status, v) = h
        .submit(json!({ "sql": "SELECT 'v2'", "query_id": "nightly" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["superseded"], old.as_str());
    eventually(
        Duration::from_secs(5),
        "the superseded query is killed",
        || async { running_on_clickhouse(&query_id).await == 0 },
    )
    .await;
    let new = v["execution"]["id"].as_str().unwrap();
    h.wait_for(new, &["SUCCEEDED"], Duration::from_secs(5))
        .await;
}

/// Waits (5 s at most) until `id` is RUNNING, then until its query shows on ClickHouse;
/// returns that query's id.
async fn started_within_seconds(h: &Harness, id: &str) -> String {
    let e = h.wait_for(id, &["RUNNING"], Duration::from_secs(5)).await;
    let query_id = format!("{id}-{}", e["attempt"]);
    eventually(Duration::from_secs(10), "the query runs", || async {
        running_on_clickhouse(&query_id).await == 1
    })
    .await;
    query_id
}

/// A harness whose worker's poll and heartbeat are a minute apart, once its LISTEN is
/// up: work it starts within seconds was started by a notification.
async fn listening_without_fallbacks(pool: &PgPool) -> Harness {
    let h = Harness::with(
        pool.clone(),
        Setup {
            worker_extra: "poll_interval = \"60s\"\nlease = \"180s\"\nheartbeat = \"60s\"\n\
                           shutdown_grace = \"2s\""
                .into(),
            ..Default::default()
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the worker listens", || async {
        worker_listeners(pool).await == 1
    })
    .await;
    h
}

/// The listener is a task of its own; it ends with its worker even when the worker's
/// future is dropped rather than shut down.
#[sqlx::test(migrations = "./migrations")]
async fn a_dropped_worker_stops_listening(pool: PgPool) {
    let h = Harness::without_workers(pool.clone()).await;
    let (_stop, worker) = h.spawn_worker("default");
    eventually(Duration::from_secs(10), "the worker listens", || async {
        worker_listeners(&pool).await == 1
    })
    .await;
    worker.abort();
    eventually(
        Duration::from_secs(10),
        "the LISTEN ends with the worker",
        || async { worker_listeners(&pool).await == 0 },
    )
    .await;
}

/// Connections of this test's database that LISTEN as a worker does (the api listens
/// only on `sluice_finished`). The text is matched whole: an idle connection shows its
/// last statement, which for the test's own pool is this one. A dropped listener runs
/// `UNLISTEN *` on its connection.
async fn worker_listeners(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() \
         AND query = 'LISTEN \"sluice_work\";LISTEN \"sluice_cancel\";'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "./migrations")]
async fn a_worker_for_tier_a_never_claims_tier_b(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            tiers: vec!["a", "b"],
            workers: vec!["a"],
            ..Default::default()
        },
    )
    .await;
    let mut b_ids = Vec::new();
    for i in 0..10 {
        b_ids.push(
            h.submit_ok(json!({ "sql": format!("SELECT {i}"), "tier": "b" }))
                .await,
        );
    }
    let a = h
        .submit_ok(json!({ "sql": "SELECT 'a'", "tier": "a" }))
        .await;
    h.wait_for(&a, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    // One more claim by the a-worker with b's work waiting (and older).
    let a2 = h
        .submit_ok(json!({ "sql": "SELECT 'a2'", "tier": "a" }))
        .await;
    h.wait_for(&a2, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    for id in &b_ids {
        let e = h.get(id).await;
        assert_eq!(
            e["status"], "PENDING",
            "tier b was claimed by a tier-a worker: {e}"
        );
        assert_eq!(e["attempt"], 0);
    }
    assert_eq!(
        h.worker_stats[0]
            .claimed
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn shutdown_hands_running_work_back_without_using_an_attempt(pool: PgPool) {
    let mut h = Harness::start(pool).await;
    let id = h
        .submit_ok(json!({ "sql": LONG_SQL, "settings": long_settings() }))
        .await;
    let query_id = h.wait_running_on_clickhouse(&id).await;
    // Grace is 2 s in the harness; the query runs for minutes.
    h.stop_workers().await;
    let e = h.get(&id).await;
    assert_eq!(e["status"], "PENDING", "{e}");
    assert_eq!(
        e["max_attempts"], 4,
        "the handed-back attempt is given back: {e}"
    );
    assert_eq!(running_on_clickhouse(&query_id).await, 0);
}

#[sqlx::test(migrations = "./migrations")]
async fn text_plain_submissions_work_like_agp(pool: PgPool) {
    let h = Harness::start(pool).await;
    let (status, v) = h
        .post(
            "/v1/executions?format=CSVWithNames&priority=3",
            "text/plain",
            "SELECT 1 AS one",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(v["execution"]["format"], "CSVWithNames");
    assert_eq!(v["execution"]["priority"], 3);
    let id = v["execution"]["id"].as_str().unwrap();
    h.wait_for(id, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    let (_, _, body) = h.download(id).await;
    assert_eq!(body, b"\"one\"\n1\n");
}

#[sqlx::test(migrations = "./migrations")]
async fn list_is_newest_first_with_keyset_pagination(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            h.submit_ok(json!({ "sql": format!("SELECT {i}"), "query_id": "q" }))
                .await,
        );
        // Same query_id, different SQL: each supersedes the previous.
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/executions?query_id=q&limit=2".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (_, page) = h.get_json(&path).await;
        for e in page["executions"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let (_, page) = h.get_json("/v1/executions?status=canceled").await;
    assert_eq!(page["executions"].as_array().unwrap().len(), 4);
}

/// A query that ends before the first heartbeat still shows what it read: the
/// statistics of ClickHouse's `X-ClickHouse-Summary` header, the same figures ClickHouse
/// sends a direct client (18.16 sends no such header, and shows zero).
#[sqlx::test(migrations = "./migrations")]
async fn a_short_query_keeps_the_statistics_of_its_summary_header(pool: PgPool) {
    let h = Harness::start(pool).await;
    let sql = "SELECT count() FROM (SELECT number FROM system.numbers LIMIT 1000000)";
    let direct = reqwest::Client::new()
        .post(clickhouse_url())
        .body(sql)
        .send()
        .await
        .unwrap();
    let read_rows = direct
        .headers()
        .get("x-clickhouse-summary")
        .map(|v| {
            let summary: Value = serde_json::from_slice(v.as_bytes()).unwrap();
            summary["read_rows"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .unwrap_or(0);
    let id = h.submit_ok(json!({ "sql": sql })).await;
    let e = h
        .wait_for(&id, &["SUCCEEDED"], Duration::from_secs(60))
        .await;
    assert_eq!(e["progress"]["read_rows"], read_rows, "{e}");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_finished_execution_keeps_its_last_progress(pool: PgPool) {
    let h = Harness::start(pool).await;
    // 1.2 s: several 200 ms heartbeats, each reading system.processes.
    let id = h
        .submit_ok(json!({
            "sql": "SELECT sum(sleepEachRow(0.4)) FROM (SELECT number FROM system.numbers LIMIT 3)",
            "settings": { "max_threads": 1 },
        }))
        .await;
    let e = h
        .wait_for(&id, &["SUCCEEDED"], Duration::from_secs(60))
        .await;
    assert!(
        e["progress"]["elapsed_seconds"].as_f64().unwrap() > 0.0,
        "{e}"
    );
    assert_eq!(e["progress"]["result_bytes"], e["result"]["bytes"]);
    let sql = e["sql"].as_str().unwrap();
    let (_, _, body) = h.download(&id).await;
    assert_eq!(
        body,
        clickhouse_direct(sql, "JSONEachRow", &[("max_threads", "1")]).await
    );
}
