//! Many workers, many clients: no double claims, exact dedup, clean supersede.
mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use sluice::results::ResultStore;
use sqlx::PgPool;

#[sqlx::test(migrations = "./migrations")]
async fn eight_workers_run_500_executions_exactly_once(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            workers: vec!["default"; 8],
            ..Default::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..500 {
        ids.push(
            h.submit_ok(json!({ "sql": format!("SELECT {i} AS i") }))
                .await,
        );
    }
    for id in &ids {
        let e = h.wait_terminal(id).await;
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        assert_eq!(e["attempt"], 1, "claimed more than once: {e}");
    }
    let claimed: u64 = h
        .worker_stats
        .iter()
        .map(|s| s.claimed.load(Ordering::Relaxed))
        .sum();
    assert_eq!(claimed, 500, "claims across the 8 workers");
    let busy = h
        .worker_stats
        .iter()
        .filter(|s| s.claimed.load(Ordering::Relaxed) > 0)
        .count();
    assert!(
        busy >= 2,
        "work should spread over several workers, {busy} did any"
    );
    // One object per execution, each from attempt 1.
    let keys = h.results.list_keys().await.unwrap();
    assert_eq!(keys.len(), 500);
    let owners: HashSet<_> = keys
        .iter()
        .map(|k| ResultStore::execution_of(k).unwrap())
        .collect();
    assert_eq!(owners.len(), 500);
    assert!(keys.iter().all(|k| k.ends_with(".1.ndjson")), "{keys:?}");
    // Each result holds its own row.
    let (_, _, body) = h.download(&ids[123]).await;
    assert_eq!(body, b"{\"i\":123}\n");
}

#[sqlx::test(migrations = "./migrations")]
async fn two_hundred_identical_posts_make_one_execution(pool: PgPool) {
    // No worker: the execution stays in flight while every POST arrives.
    let h = Harness::without_workers(pool).await;
    let body = json!({ "sql": "SELECT 42", "format": "JSON" });
    let posts = (0..200).map(|_| {
        let http = h.http.clone();
        let url = h.url("/v1/executions");
        let body = body.clone();
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let status = r.status();
            let v: serde_json::Value = r.json().await.unwrap();
            (status, v)
        }
    });
    let answers = futures::future::join_all(posts).await;
    let ids: HashSet<_> = answers
        .iter()
        .map(|(_, v)| v["execution"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "all 200 POSTs must name one execution");
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let collapsed = answers
        .iter()
        .filter(|(s, v)| *s == StatusCode::OK && v["outcome"] == "collapsed")
        .count();
    assert_eq!((created, collapsed), (1, 199));
    let id = ids.into_iter().next().unwrap();
    assert_eq!(h.get(&id).await["collapsed_count"], 199);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(h.store.pool())
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// Fifty POSTs of one query_id with fifty different statements, all at once: each is
/// answered 201 (created, or superseding the one before), none fails on the race, and
/// exactly one execution is left in flight; every other was superseded by another.
#[sqlx::test(migrations = "./migrations")]
async fn racing_supersedes_leave_exactly_one_in_flight(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let posts = (0..50).map(|i| {
        let http = h.http.clone();
        let url = h.url("/v1/executions");
        async move {
            let r = http
                .post(url)
                .json(&json!({ "sql": format!("SELECT {i}"), "query_id": "nightly" }))
                .send()
                .await
                .unwrap();
            json_answer(r).await
        }
    });
    let answers = futures::future::join_all(posts).await;
    for (status, v) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{v}");
    }
    let (in_flight, superseded): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'PENDING'), \
                count(*) FILTER (WHERE status = 'CANCELED' AND superseded_by IS NOT NULL) \
         FROM executions",
    )
    .fetch_one(h.store.pool())
    .await
    .unwrap();
    assert_eq!((in_flight, superseded), (1, 49));
}

#[sqlx::test(migrations = "./migrations")]
async fn a_finished_execution_does_not_collapse_new_submits(pool: PgPool) {
    let h = Harness::start(pool).await;
    let first = h.submit_ok(json!({ "sql": "SELECT 7" })).await;
    h.wait_for(&first, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    let second = h.submit_ok(json!({ "sql": "SELECT 7" })).await;
    assert_ne!(first, second, "dedup is for in-flight executions only");
}

#[sqlx::test(migrations = "./migrations")]
async fn different_settings_or_format_are_different_executions(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let a = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let b = h
        .submit_ok(json!({ "sql": "SELECT 1", "format": "CSV" }))
        .await;
    let c = h
        .submit_ok(json!({ "sql": "SELECT 1", "settings": { "max_threads": 2 } }))
        .await;
    assert_eq!(HashSet::from([&a, &b, &c]).len(), 3);
}

#[sqlx::test(migrations = "./migrations")]
async fn same_query_id_with_new_sql_supersedes_the_pending_one(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let old = h
        .submit_ok(json!({ "sql": "SELECT 1", "query_id": "report-7" }))
        .await;
    // Same query_id and SQL: collapses.
    let (status, v) = h
        .submit(json!({ "sql": "SELECT 1", "query_id": "report-7" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["outcome"], "collapsed");
    assert_eq!(v["execution"]["id"], old.as_str());
    // Same query_id, new SQL: supersedes.
    let (status, v) = h
        .submit(json!({ "sql": "SELECT 2", "query_id": "report-7" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(v["outcome"], "superseded");
    assert_eq!(v["superseded"], old.as_str());
    let new = v["execution"]["id"].as_str().unwrap();
    let old_e = h.get(&old).await;
    assert_eq!(old_e["status"], "CANCELED");
    assert_eq!(old_e["error"]["code"], "SUPERSEDED");
    assert_eq!(old_e["superseded_by"], new);
}

#[sqlx::test(migrations = "./migrations")]
async fn superseding_a_running_execution_kills_its_query(pool: PgPool) {
    let h = Harness::start(pool).await;
    let old = h
        .submit_ok(json!({ "sql": LONG_SQL, "settings": long_settings(), "query_id": "nightly" }))
        .await;
    let query_id = h.wait_running_on_clickhouse(&old).await;
    let (status, v) = h
        .submit(json!({ "sql": "SELECT 'v2'", "query_id": "nightly" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(v["superseded"], old.as_str());
    let new = v["execution"]["id"].as_str().unwrap().to_string();
    h.wait_for(&new, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    assert_eq!(h.get(&old).await["status"], "CANCELED");
    eventually(
        Duration::from_secs(10),
        "the superseded query is killed",
        || async { running_on_clickhouse(&query_id).await == 0 },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the superseded attempt leaves no object",
        || async {
            h.results
                .list_keys()
                .await
                .unwrap()
                .iter()
                .all(|k| !k.contains(&old))
        },
    )
    .await;
}

/// A backlog runs at the tier's full concurrency, all the way through: 60 executions of
/// about a second each on 8 slots. Read from the executions' own `started_at` and
/// `finished_at` (not from wall-clock timing): over the busy span, 6 or more run at once
/// on average, and 7 or more at some moment in its second half, after the first wave of
/// claims is long over. (When finished tasks were counted as busy, only the first wave
/// ran 8 at once; the rest ran one at a time.) And never more than 8 at once on
/// ClickHouse, read from `system.processes` while they run (the statements themselves,
/// not the DESCRIBEs sent beside them): a slot is given back before the outcome is
/// written, but never before the query is over.
#[sqlx::test(migrations = "./migrations")]
async fn a_backlog_keeps_every_slot_busy(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            tier_extra: "concurrency = 8".into(),
            ..Default::default()
        },
    )
    .await;
    let marker = format!("slots_{}", uuid::Uuid::new_v4().simple());
    let mut ids = Vec::new();
    for i in 0..60 {
        let sql = format!(
            "SELECT {i} AS i, '{marker}' AS m, sleepEachRow(0.1) FROM system.numbers LIMIT 10"
        );
        ids.push(h.submit_ok(json!({ "sql": sql })).await);
    }
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let (sampling, marker) = (sampling.clone(), marker.clone());
        async move {
            let mut most = 0;
            while !sampling.is_cancelled() {
                let n: usize = clickhouse_text(&format!(
                    "SELECT count() FROM system.processes \
                     WHERE query LIKE 'SELECT %''{marker}'' AS m%' \
                       AND query NOT LIKE '%system.processes%'"
                ))
                .await
                .trim()
                .parse()
                .unwrap_or(0);
                most = most.max(n);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        }
    });
    let mut runs = Vec::new();
    for id in &ids {
        let e = h
            .wait_for(id, &["SUCCEEDED"], Duration::from_secs(120))
            .await;
        let at = |field: &str| {
            chrono::DateTime::parse_from_rfc3339(e[field].as_str().unwrap())
                .unwrap()
                .timestamp_micros()
        };
        runs.push((at("started_at"), at("finished_at")));
    }
    let first = runs.iter().map(|r| r.0).min().unwrap();
    let last = runs.iter().map(|r| r.1).max().unwrap();
    let busy: i64 = runs.iter().map(|(s, f)| f - s).sum();
    let average = busy as f64 / (last - first) as f64;
    assert!(
        average >= 6.0,
        "{average:.1} executions ran at once on average over the backlog, of 8 slots"
    );
    let second_half = first + (last - first) / 2;
    let most = runs
        .iter()
        .map(|(s, _)| *s)
        .filter(|&t| t >= second_half)
        .map(|t| runs.iter().filter(|(s, f)| *s <= t && t < *f).count())
        .max()
        .unwrap_or(0);
    assert!(
        most >= 7,
        "at most {most} ran at once in the second half of the backlog, of 8 slots"
    );
    sampling.cancel();
    let on_clickhouse = sampler.await.unwrap();
    assert!(
        (7..=8).contains(&on_clickhouse),
        "{on_clickhouse} ran at once on ClickHouse, of 8 slots"
    );
}

/// Completions look their batch up in the primary key whatever the table held when their
/// plan was made. Their connection keeps one generic plan; made on a nearly empty table,
/// that plan scanned the whole table for every batch (a drain 40 % slower at 20,000 rows).
/// Autovacuum is off so that no ANALYZE replans the statement once the table has grown.
#[sqlx::test(migrations = "./migrations")]
async fn completions_never_scan_the_table(pool: PgPool) {
    use sluice::store::queue::Fence;

    sqlx::query("ALTER TABLE executions SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .unwrap();
    let h = Harness::without_workers(pool.clone()).await;
    for i in 0..6 {
        h.submit_ok(json!({ "sql": format!("SELECT {i}") })).await;
    }
    let lease = Duration::from_secs(60);
    let result = result_without_object("no-object");
    let progress = Default::default();
    let claimed = h
        .store
        .claim("default", "w", 6, lease, false)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 6);
    let complete = |e| {
        let fence = Fence::of(e, "w");
        let (store, result, progress) = (&h.store, &result, &progress);
        async move { assert!(store.complete(&fence, result, progress).await.unwrap()) }
    };
    // The first completion makes the plan, on a table of six rows.
    complete(&claimed[0]).await;
    sqlx::query(
        "INSERT INTO executions (id, tenant, created_by, tier, query_id, query_hash, sql, \
             format, status, max_attempts) \
         SELECT gen_random_uuid(), 'other', 'test', 'elsewhere', md5(i::text), md5(i::text), \
             'SELECT 1', 'JSONEachRow', 'PENDING', 3 \
         FROM generate_series(1, 5000) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Six claimed, one completed.
    let before = rows_scanned_once_counted(&pool, 7).await;
    // One completion at a time: one batch, and one run of the plan, each.
    for e in &claimed[1..] {
        complete(e).await;
    }
    let after = rows_scanned_once_counted(&pool, 12).await;
    assert!(
        after - before < 5000,
        "5 completions read {} rows by sequential scan, of a table of 5,006",
        after - before
    );
}

/// Rows read from `executions` by sequential scans, once at least `updates` row updates
/// are counted: statistics reach `pg_stat_user_tables` when each backend flushes them
/// (within seconds), so waiting for the updates so far makes the scans so far counted.
async fn rows_scanned_once_counted(pool: &PgPool, updates: i64) -> i64 {
    let scanned = &std::cell::Cell::new(0);
    eventually(
        Duration::from_secs(30),
        "the updates are counted",
        || async move {
            let (updated, rows): (i64, i64) = sqlx::query_as(
                "SELECT n_tup_upd, seq_tup_read FROM pg_stat_user_tables \
             WHERE relname = 'executions'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            scanned.set(rows);
            updated >= updates
        },
    )
    .await;
    scanned.get()
}

/// A submit as the api would make it, for the store-level burst below.
fn new_execution(sql: &str, query_id: &str, priority: i16) -> sluice::store::submit::NewExecution {
    sluice::store::submit::NewExecution {
        tenant: "default".into(),
        created_by: "test".into(),
        tier: "default".into(),
        query_id: query_id.into(),
        query_hash: format!("hash of {sql}"),
        sql: sql.into(),
        format: sluice::execution::Format::JSONEachRow,
        settings: Default::default(),
        priority,
        max_attempts: 1,
        parameters: Default::default(),
        quota_key: "default".into(),
        max_running: None,
        max_queued: None,
        task: None,
        run_after: None,
        retention_ms: None,
        from_result: None,
        timeout_ms: None,
        start_within_ms: None,
        max_age_ms: None,
        job: None,
        callback_url: None,
        limits: Default::default(),
    }
}

/// Submits that overlap are written together (a multi-row INSERT, one commit: rows of
/// one statement share their `xmin`), and each caller still gets its own execution
/// back; a row that Postgres refuses fails only its own submit, not its batch's.
#[sqlx::test(migrations = "./migrations")]
async fn overlapping_submits_are_batched_and_each_gets_its_own_answer(pool: PgPool) {
    use sluice::store::submit::Submitted;
    let store = sluice::store::Store::from_pool(pool.clone());
    const N: usize = 300;
    // One bad row in the middle of the burst: priority 42 breaks a CHECK constraint.
    let bad = 150;
    let submits = (0..N).map(|i| {
        let store = store.clone();
        let priority = if i == bad { 42 } else { 0 };
        let new = new_execution(&format!("SELECT {i}"), &format!("q{i}"), priority);
        tokio::spawn(async move { store.submit(&new).await })
    });
    let answers = futures::future::join_all(submits).await;
    let mut ids = HashSet::new();
    for (i, answer) in answers.into_iter().enumerate() {
        match answer.unwrap() {
            Ok(Submitted::Created(e)) if i != bad => {
                assert_eq!(e.sql, format!("SELECT {i}"), "submit {i} got another's row");
                assert_eq!(e.query_id, format!("q{i}"));
                ids.insert(e.id);
            }
            Err(e) if i == bad => {
                assert!(e.to_string().contains("check"), "{e}");
            }
            other => panic!("submit {i}: {other:?}"),
        }
    }
    assert_eq!(ids.len(), N - 1);
    let (rows, statements): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM executions")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, (N - 1) as i64);
    assert!(
        statements < rows / 2,
        "{rows} submits at once took {statements} commits: they were not batched"
    );
}

/// In one burst, submits of one key collapse into one execution and a changed statement
/// supersedes it, whether they meet in a batch or not.
#[sqlx::test(migrations = "./migrations")]
async fn a_burst_with_repeated_keys_collapses_and_supersedes_exactly(pool: PgPool) {
    use sluice::store::submit::Submitted;
    let store = sluice::store::Store::from_pool(pool.clone());
    // 100 distinct keys, each submitted 3 times with one statement, then once more with
    // another; all at once.
    let submits = (0..400).map(|i| {
        let store = store.clone();
        let key = i % 100;
        let sql = if i < 300 {
            format!("SELECT {key}")
        } else {
            format!("SELECT {key} + 1")
        };
        let new = new_execution(&sql, &format!("q{key}"), 0);
        tokio::spawn(async move { store.submit(&new).await.unwrap() })
    });
    for answer in futures::future::join_all(submits).await {
        match answer.unwrap() {
            Submitted::Created(_) | Submitted::Collapsed(_) | Submitted::Superseded { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    // Per key: exactly one execution in flight; every other one was superseded; the
    // collapses were counted on the execution they joined.
    let per_key: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT query_id, count(*) FILTER (WHERE status = 'PENDING'), \
                count(*) FILTER (WHERE status = 'CANCELED' AND superseded_by IS NOT NULL), \
                coalesce(sum(collapsed_count), 0)::int8 + count(*) \
         FROM executions GROUP BY query_id ORDER BY query_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_key.len(), 100);
    for (key, pending, superseded, submits) in per_key {
        assert_eq!(pending, 1, "{key}");
        assert_eq!(
            submits, 4,
            "{key}: every submit is an execution or a collapse"
        );
        // Two statements met on the key: one of them superseded the other at least once.
        assert!(
            (1..=3).contains(&superseded),
            "{key}: {superseded} superseded"
        );
    }
}
