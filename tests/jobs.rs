//! Multi-statement jobs: statements in order in one ClickHouse session, per-statement
//! and job-level fallbacks, the stored result, cancel, and the rule for running a job
//! again after its worker was lost.
mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// A writable tier (`readonly = 0`, ClickHouse's default user) named `writer`, with a
/// worker, beside the default read-only tier.
fn writer_setup(workers: Vec<&'static str>) -> Setup {
    Setup {
        workers,
        extra: format!(
            "[tiers.writer]\nclickhouse_url = \"{}\"\nallowed_statements = [\"read\", \"write\"]\n\
             trusted_user = true\n[tiers.writer.settings]\nreadonly = 0\nmax_execution_time = 600\n",
            clickhouse_url()
        ),
        ..Default::default()
    }
}

/// A log table of its own, dropped by the caller.
async fn log_table() -> String {
    let table = format!("default.sluice_job_log_{}", uuid::Uuid::now_v7().simple());
    clickhouse_text(&format!(
        "CREATE TABLE {table} (id String, message String) ENGINE = Memory"
    ))
    .await;
    table
}

/// The log's rows in the order they were written (a Memory table read by one thread
/// returns its blocks in insertion order).
async fn log_rows(table: &str) -> Vec<(String, String)> {
    clickhouse_text(&format!(
        "SELECT id, message FROM {table} SETTINGS max_threads = 1 FORMAT TSV"
    ))
    .await
    .lines()
    .map(|l| {
        let (id, m) = l.split_once('\t').unwrap();
        (id.to_string(), m.to_string())
    })
    .collect()
}

fn statuses(e: &Value) -> Vec<String> {
    e["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {e}"))
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until attempt 1 of job `id` runs its second statement on ClickHouse; that
/// statement's query_id.
async fn second_statement_runs(id: &str) -> String {
    let step = format!("{id}-1-1");
    wait_on_clickhouse(&step, "the second statement runs").await;
    step
}

async fn run_job(h: &Harness, body: Value) -> Value {
    let id = h.submit_ok(body).await;
    h.wait_terminal(&id).await
}

/// Three statements in one session (a temporary table carries over); each step shows
/// its own status, timings and ClickHouse query_id; the stored result is the last
/// statement's rows, byte for byte what ClickHouse answers for the same query.
#[sqlx::test(migrations = "./migrations")]
async fn statements_run_in_order_in_one_session(pool: PgPool) {
    let h = Harness::with(pool, writer_setup(vec!["writer"])).await;
    let e = run_job(
        &h,
        json!({ "tier": "writer", "sql": [
            "CREATE TEMPORARY TABLE t (x UInt64)",
            "INSERT INTO t SELECT number FROM system.numbers LIMIT 5",
            "SELECT sum(x) AS s, count() AS n FROM t",
        ] }),
    )
    .await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(statuses(&e), ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]);
    let steps = e["steps"].as_array().unwrap();
    let results: Vec<bool> = steps.iter().map(|s| s["result"] == true).collect();
    assert_eq!(results, [false, false, true]);
    let id = e["id"].as_str().unwrap();
    for (k, s) in steps.iter().enumerate() {
        assert_eq!(s["query_id"], format!("{id}-1-{k}"), "{s}");
        assert!(
            s["started_at"].is_string() && s["finished_at"].is_string(),
            "{s}"
        );
    }
    let (status, _, body) = h.download(id).await;
    assert_eq!(status, StatusCode::OK);
    let direct = clickhouse_direct(
        "SELECT sum(number) AS s, count() AS n FROM (SELECT number FROM system.numbers LIMIT 5)",
        "JSONEachRow",
        &[],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&direct)
    );
    assert_eq!(e["result"]["rows"], 1);
}

/// A failing statement: its `onerror` runs with the error message as a parameter (the
/// message holds quotes: spliced, it would break the SQL), the remaining statements and
/// the job's `onsuccess` are SKIPPED, the job's `onerror` runs, and the execution FAILS
/// with the statement's error. An `onsuccess` of an earlier statement ran.
#[sqlx::test(migrations = "./migrations")]
async fn a_failing_statement_runs_its_fallbacks_and_skips_the_rest(pool: PgPool) {
    let h = Harness::with(pool, writer_setup(vec!["writer"])).await;
    let log = log_table().await;
    let e = run_job(
        &h,
        json!({ "tier": "writer",
            "sql": [
                { "sql": "SELECT 1", "onsuccess": format!("INSERT INTO {log} VALUES ('{{{{execution_id}}}}', 'first ok')") },
                { "sql": "SELECT no_such_column FROM system.one",
                  "onerror": format!("INSERT INTO {log} SELECT '{{{{execution_id}}}}', concat('statement: ', {{{{error_message}}}})") },
                "SELECT 3",
            ],
            "onsuccess": format!("INSERT INTO {log} VALUES ('{{{{execution_id}}}}', 'job ok')"),
            "onerror": format!("INSERT INTO {log} VALUES ('{{{{execution_id}}}}', '{{{{error_message}}}}')"),
        }),
    )
    .await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"]["clickhouse_code"], 47, "{e}");
    assert_eq!(
        statuses(&e),
        [
            "SUCCEEDED",
            "SUCCEEDED",
            "FAILED",
            "SUCCEEDED",
            "SKIPPED",
            "SKIPPED",
            "SUCCEEDED"
        ]
    );
    let id = e["id"].as_str().unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("no_such_column"), "{e}");
    let logged = |m: &str| (id.to_string(), m.to_string());
    assert_eq!(
        log_rows(&log).await,
        [
            logged("first ok"),
            logged(&format!("statement: {message}")),
            logged(message)
        ]
    );
    clickhouse_text(&format!("DROP TABLE {log}")).await;
}

/// All statements succeed: the job's `onsuccess` runs, its `onerror` is SKIPPED, and a
/// statement's unused `onerror` too.
#[sqlx::test(migrations = "./migrations")]
async fn success_runs_the_job_onsuccess(pool: PgPool) {
    let h = Harness::with(pool, writer_setup(vec!["writer"])).await;
    let log = log_table().await;
    let e = run_job(
        &h,
        json!({ "tier": "writer", "format": "CSV",
            "sql": [{ "sql": "SELECT 1 AS a", "onerror": format!("INSERT INTO {log} VALUES ('x', 'no')") },
                    "SELECT 2 AS b"],
            "onsuccess": format!("INSERT INTO {log} VALUES ('{{{{execution_id}}}}', {{{{error_message}}}})"),
            "onerror": format!("INSERT INTO {log} VALUES ('x', 'no')"),
        }),
    )
    .await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(
        statuses(&e),
        ["SUCCEEDED", "SKIPPED", "SUCCEEDED", "SUCCEEDED", "SKIPPED"]
    );
    let (_, _, body) = h.download(e["id"].as_str().unwrap()).await;
    assert_eq!(body, b"2\n");
    assert_eq!(
        log_rows(&log).await,
        [(e["id"].as_str().unwrap().to_string(), String::new())]
    );
    clickhouse_text(&format!("DROP TABLE {log}")).await;
}

/// Cancel while the second statement runs: it is killed on ClickHouse before the
/// execution is CANCELED, and the rest, fallbacks included, never run.
#[sqlx::test(migrations = "./migrations")]
async fn cancel_stops_the_running_statement_and_skips_the_rest(pool: PgPool) {
    let h = Harness::with(pool, writer_setup(vec!["writer"])).await;
    let log = log_table().await;
    let id = h
        .submit_ok(json!({ "tier": "writer", "settings": long_settings(),
            "sql": ["SELECT 1", LONG_SQL, format!("INSERT INTO {log} VALUES ('x', 'after')")],
            "onerror": format!("INSERT INTO {log} VALUES ('x', 'onerror')"),
        }))
        .await;
    let query_id = second_statement_runs(&id).await;
    // The heartbeat follows the running statement (by its own query_id) on ClickHouse.
    eventually(
        Duration::from_secs(30),
        "the statement's progress is reported",
        || async {
            h.get(&id).await["progress"]["read_rows"]
                .as_u64()
                .unwrap_or(0)
                > 0
        },
    )
    .await;
    let (status, v) = h.cancel(&id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "CANCELED", "{e}");
    assert_eq!(
        statuses(&e),
        ["SUCCEEDED", "CANCELED", "SKIPPED", "SKIPPED"]
    );
    // Killed with KILL QUERY ... SYNC (by the statement's own query_id) before CANCELED
    // is written, not left to notice its closed connection.
    assert_eq!(
        running_on_clickhouse(&query_id).await,
        0,
        "still on ClickHouse"
    );
    assert!(log_rows(&log).await.is_empty());
    clickhouse_text(&format!("DROP TABLE {log}")).await;
}

/// What a lost worker leaves (the steps of attempt 1 as recorded, the row PENDING
/// again as the bookkeeper leaves it): after read-only statements the job resumes at
/// the statement that was running (the earlier read is not run again); after a write it
/// FAILS with NOT_SAFE_TO_REPEAT and runs nothing.
#[sqlx::test(migrations = "./migrations")]
async fn a_lost_job_resumes_only_after_reads(pool: PgPool) {
    let h = Harness::with(pool.clone(), writer_setup(vec![])).await;
    let log = log_table().await;
    let reads = h
        .submit_ok(json!({ "tier": "writer", "sql": ["SELECT 1", "SELECT 2 AS two"] }))
        .await;
    let writes = h
        .submit_ok(json!({ "tier": "writer", "sql": [
            format!("INSERT INTO {log} VALUES ('x', 'once')"), "SELECT 2 AS two"] }))
        .await;
    // Attempt 1 ran statement 0 and was lost in statement 1.
    for id in [&reads, &writes] {
        sqlx::query(
            "UPDATE executions SET attempt = 1, job = jsonb_set(jsonb_set(job, \
                 '{steps,0}', job->'steps'->0 || jsonb_build_object('status', 'SUCCEEDED', \
                     'started_at', now(), 'finished_at', now(), 'query_id', id::text || '-1-0')), \
                 '{steps,1}', job->'steps'->1 || jsonb_build_object('status', 'RUNNING', \
                     'started_at', now(), 'query_id', id::text || '-1-1')) \
             WHERE id = $1::uuid",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    let (_stop, _worker) = h.spawn_worker("writer");
    let e = h.wait_terminal(&reads).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["attempt"], 2);
    assert_eq!(
        e["steps"][0]["query_id"],
        format!("{reads}-1-0"),
        "not run again: {e}"
    );
    assert_eq!(e["steps"][1]["query_id"], format!("{reads}-2-1"), "{e}");
    let (_, _, body) = h.download(&reads).await;
    assert_eq!(String::from_utf8_lossy(&body).trim(), r#"{"two":2}"#);

    let e = h.wait_terminal(&writes).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"]["code"], "NOT_SAFE_TO_REPEAT", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("INSERT"),
        "{e}"
    );
    assert!(log_rows(&log).await.is_empty(), "nothing ran again");
    clickhouse_text(&format!("DROP TABLE {log}")).await;
}

/// Bad jobs are refused at submit with a 400 that says which statement.
#[sqlx::test(migrations = "./migrations")]
async fn bad_jobs_are_refused_naming_the_statement(pool: PgPool) {
    let h = Harness::with(pool.clone(), writer_setup(vec![])).await;
    for (body, code, place) in [
        (
            json!({ "sql": "SELECT 1", "onerror": "SELECT 2" }),
            "invalid_job",
            "",
        ),
        (json!({ "sql": [] }), "empty_sql", ""),
        (
            json!({ "sql": ["SELECT 1", "SELECT 1; SELECT 2"] }),
            "multiple_statements",
            "sql[1]",
        ),
        (
            json!({ "sql": ["SELECT 1", "INSERT INTO t VALUES (1)"] }),
            "statement_not_allowed",
            "sql[1]",
        ),
        (
            json!({ "sql": [{ "sql": "SELECT 1", "onerror": "" }] }),
            "empty_sql",
            "sql[0].onerror",
        ),
        (
            json!({ "sql": ["SELECT 1"], "onsuccess": "SELECT * FROM system.processes" }),
            "table_not_allowed",
            "onsuccess",
        ),
        (
            json!({ "sql": [{ "sql": "SELECT 1", "later": "x" }] }),
            "unknown_field",
            "unknown field `later`",
        ),
        (
            json!({ "sql": [5] }),
            "invalid_json",
            "malformed JSON body: invalid type: integer `5`",
        ),
    ] {
        let (status, v) = h.submit(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(place),
            "{body}: {v}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

/// While the job's `onerror` runs, the statements after the failed one already show
/// SKIPPED (a client polling the job sees what will never run), not PENDING.
#[sqlx::test(migrations = "./migrations")]
async fn skipped_statements_show_while_the_job_fallback_runs(pool: PgPool) {
    let h = Harness::with(pool, writer_setup(vec!["writer"])).await;
    let id = h
        .submit_ok(json!({ "tier": "writer",
            "sql": ["SELECT no_such_column FROM system.one", "SELECT 2"],
            "onerror": "SELECT sleep(2)" }))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = statuses(&h.get(&id).await);
        if seen.last().is_some_and(|s| s == "RUNNING") {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job's onerror does not run: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(seen, ["FAILED", "SKIPPED", "RUNNING"]);
    let e = h.wait_terminal(&id).await;
    assert_eq!(statuses(&e), ["FAILED", "SKIPPED", "SUCCEEDED"], "{e}");
}

/// ClickHouse going away while a statement runs is not the statement's failure: the
/// attempt ends, the statement's `onerror` does not run, and the job runs again from
/// the interrupted statement once ClickHouse is back (the read before it is not
/// repeated).
#[sqlx::test(migrations = "./migrations")]
async fn a_clickhouse_outage_mid_statement_retries_the_job_not_its_fallback(pool: PgPool) {
    let proxy = Proxy::start().await;
    let h = Harness::with(
        pool,
        Setup {
            clickhouse_url: Some(proxy.url()),
            tier_extra: "max_attempts = 30".into(),
            worker_extra: FAST_RETRIES.into(),
            ..Default::default()
        },
    )
    .await;
    let id = h
        .submit_ok(json!({ "settings": { "max_block_size": 1 },
            "sql": ["SELECT 1 AS one",
                    { "sql": "SELECT sum(sleepEachRow(0.5)) AS s FROM (SELECT number FROM system.numbers LIMIT 6)",
                      "onerror": "SELECT 'fallback'" }] }))
        .await;
    second_statement_runs(&id).await;
    proxy.stop();
    eventually(
        Duration::from_secs(30),
        "the attempt ends and is retried",
        || async { h.get(&id).await["attempt"].as_i64().unwrap() >= 2 },
    )
    .await;
    proxy.resume().await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(
        e["failed_attempts"][0]["error"]["code"], "CLICKHOUSE_UNAVAILABLE",
        "{e}"
    );
    assert_eq!(statuses(&e), ["SUCCEEDED", "SUCCEEDED", "SKIPPED"], "{e}");
    assert_eq!(
        e["steps"][0]["query_id"],
        format!("{id}-1-0"),
        "the read ran once: {e}"
    );
}

/// One statement with the job's fallbacks (CARTO's simplest job), on success and on
/// failure: the side effects land in this order.
#[sqlx::test(migrations = "./migrations")]
async fn a_single_statement_with_fallbacks(pool: PgPool) {
    let h = Harness::with(pool, writer_setup(vec!["writer"])).await;
    let log = log_table().await;
    let job = |sql: String| {
        json!({ "tier": "writer", "sql": [sql],
            "onsuccess": format!("INSERT INTO {log} VALUES ('{{{{execution_id}}}}', 'done')"),
            "onerror": format!("INSERT INTO {log} VALUES ('{{{{execution_id}}}}', 'failed')"),
        })
    };
    let ok = run_job(
        &h,
        job(format!(
            "INSERT INTO {log} VALUES ('{{{{execution_id}}}}', 'work')"
        )),
    )
    .await;
    assert_eq!(ok["status"], "SUCCEEDED", "{ok}");
    assert_eq!(statuses(&ok), ["SUCCEEDED", "SUCCEEDED", "SKIPPED"]);
    assert_eq!(
        ok["result"]["columns"],
        json!([]),
        "no read statement, no columns: {ok}"
    );
    let bad = run_job(&h, job(format!("INSERT INTO {log} (no_such) VALUES (1)"))).await;
    assert_eq!(bad["status"], "FAILED", "{bad}");
    assert_eq!(statuses(&bad), ["FAILED", "SKIPPED", "SUCCEEDED"]);
    let (ok, bad) = (ok["id"].as_str().unwrap(), bad["id"].as_str().unwrap());
    let at = |id: &str, m: &str| (id.to_string(), m.to_string());
    assert_eq!(
        log_rows(&log).await,
        [at(ok, "work"), at(ok, "done"), at(bad, "failed")]
    );
    clickhouse_text(&format!("DROP TABLE {log}")).await;
}

/// About 10 s on both servers: twenty one-row blocks sleeping 0.5 s each; long enough
/// that the lost attempt's statement is still running when the bookkeeper kills it.
const TEN_SECONDS: &str =
    "SELECT sum(sleepEachRow(0.5)) AS s FROM (SELECT number FROM system.numbers LIMIT 20)";

/// A worker process killed (-9) while the second statement of two jobs runs: the
/// bookkeeper hands both on, and its query is killed on ClickHouse. The job whose first
/// statement only read resumes on another worker at the interrupted statement (the read
/// is not run again) and succeeds; the job whose first statement wrote FAILS with
/// NOT_SAFE_TO_REPEAT and writes nothing twice.
#[sqlx::test(migrations = "./migrations")]
async fn a_worker_killed_mid_job(pool: PgPool) {
    let setup = || {
        let mut s = writer_setup(vec![]);
        s.worker_extra = "poll_interval = \"200ms\"\nlease = \"2s\"\nheartbeat = \"200ms\"\n\
                          shutdown_grace = \"1s\""
            .into();
        s.extra
            .push_str("[bookkeeper]\ninterval = \"200ms\"\nretry_backoff = \"100ms\"\n");
        s
    };
    let h = Harness::with(pool.clone(), setup()).await;
    let log = log_table().await;
    let config = write_config(&h, &pool, &setup());
    let mut worker = spawn_sluice(&config, &["worker", "--tier", "writer"]);
    let settings = json!({ "max_block_size": 1 });
    let reads = h
        .submit_ok(json!({ "tier": "writer", "settings": settings,
            "sql": ["SELECT 1 AS one", TEN_SECONDS] }))
        .await;
    let writes = h
        .submit_ok(json!({ "tier": "writer", "settings": settings,
            "sql": [format!("INSERT INTO {log} VALUES ('{{{{execution_id}}}}', 'once')"), TEN_SECONDS] }))
        .await;
    for id in [&reads, &writes] {
        second_statement_runs(id).await;
    }
    worker.kill9();
    let bookkeeper =
        sluice::bookkeeper::Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    let stop = h.shutdown.child_token();
    tokio::spawn(bookkeeper.run(stop));
    // Reclaimed: the lost attempt's statements are killed long before they would end.
    for id in [&reads, &writes] {
        eventually(
            Duration::from_secs(30),
            "the bookkeeper reclaims the job",
            || async { h.get(id).await["failed_attempts"][0]["error"]["code"] == "WORKER_LOST" },
        )
        .await;
        let orphan = format!("{id}-1-1");
        eventually(
            Duration::from_secs(3),
            "the lost attempt's statement is killed",
            || async { running_on_clickhouse(&orphan).await == 0 },
        )
        .await;
    }
    let (_stop, _worker) = h.spawn_worker("writer");

    let e = h
        .wait_for(&reads, &["SUCCEEDED", "FAILED"], Duration::from_secs(90))
        .await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["attempt"], 2, "{e}");
    assert_eq!(
        e["failed_attempts"][0]["error"]["code"], "WORKER_LOST",
        "{e}"
    );
    assert_eq!(
        e["steps"][0]["query_id"],
        format!("{reads}-1-0"),
        "the read ran once: {e}"
    );
    assert_eq!(e["steps"][1]["query_id"], format!("{reads}-2-1"), "{e}");

    let e = h
        .wait_for(&writes, &["SUCCEEDED", "FAILED"], Duration::from_secs(60))
        .await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"]["code"], "NOT_SAFE_TO_REPEAT", "{e}");
    assert_eq!(e["attempt"], 2, "{e}");
    assert_eq!(log_rows(&log).await, [(writes.clone(), "once".to_string())]);
    clickhouse_text(&format!("DROP TABLE {log}")).await;
}
