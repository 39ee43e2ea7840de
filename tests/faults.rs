//! What production does to Sluice: workers killed or frozen mid-query, several
//! bookkeepers, Postgres sessions terminated, ClickHouse going away, a broken result
//! store. Real processes, real services.
mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::json;
use sluice::execution::Format;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use sluice::bookkeeper::Bookkeeper;

/// Short leases and a fast bookkeeper, so failures are noticed within seconds.
fn fast() -> Setup {
    Setup {
        workers: vec![],
        extra: "[bookkeeper]\ninterval = \"200ms\"\nretry_backoff = \"100ms\"\n".into(),
        ..Default::default()
    }
}

/// Worker settings for child processes: lease 2 s, heartbeat 200 ms.
fn fast_worker_extra() -> String {
    "[worker]\npoll_interval = \"200ms\"\nlease = \"2s\"\nheartbeat = \"200ms\"\nshutdown_grace = \"1s\"\n"
        .into()
}

/// About 4 s on both servers: eight one-row blocks sleeping 0.5 s each.
fn four_second_query() -> serde_json::Value {
    json!({
        "sql": "SELECT sum(sleepEachRow(0.5)) AS s FROM (SELECT number FROM system.numbers LIMIT 8)",
        "settings": { "max_block_size": 1 },
    })
}

fn spawn_bookkeeper(h: &Harness) -> CancellationToken {
    let bk = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    let stop = h.shutdown.child_token();
    tokio::spawn(bk.run(stop.clone()));
    stop
}

fn child_worker_config(h: &Harness, pool: &PgPool) -> std::path::PathBuf {
    // The harness writes [worker] itself; the child's file gets the fast values instead.
    let mut setup = fast();
    setup.extra.push_str(&fast_worker_extra());
    let text = config_toml(pool, &setup, h.results_dir.path()).replacen(
        "[worker]\npoll_interval = \"500ms\"\nlease = \"10s\"\nheartbeat = \"200ms\"\nshutdown_grace = \"2s\"\n",
        "",
        1,
    );
    let path = h.results_dir.path().join("child-worker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[sqlx::test(migrations = "./migrations")]
async fn a_killed_worker_s_execution_is_retried_elsewhere_and_its_query_killed(pool: PgPool) {
    let h = Harness::with(pool.clone(), fast()).await;
    let mut a = spawn_sluice(
        &child_worker_config(&h, &pool),
        &["worker", "--tier", "default"],
    );
    // Ten seconds: the lost attempt's query would still run when the bookkeeper
    // reclaims, so its being gone proves the KILL.
    let id = h
        .submit_ok(json!({
            "sql": "SELECT sum(sleepEachRow(0.5)) AS s FROM (SELECT number FROM system.numbers LIMIT 20)",
            "settings": { "max_block_size": 1 },
        }))
        .await;
    let first_query = h.wait_running_on_clickhouse(&id).await;
    assert!(first_query.ends_with("-1"));

    a.kill9();
    let killed_at = chrono::Utc::now();
    let _bk = spawn_bookkeeper(&h);
    let (_stop, _b) = h.spawn_worker("default");

    eventually(
        Duration::from_secs(30),
        "the bookkeeper reclaims",
        || async { h.get(&id).await["failed_attempts"][0]["error"]["code"] == "WORKER_LOST" },
    )
    .await;
    eventually(
        Duration::from_secs(3),
        "the lost attempt's query is killed",
        || async { running_on_clickhouse(&first_query).await == 0 },
    )
    .await;
    let e = h
        .wait_for(&id, &["SUCCEEDED", "FAILED"], Duration::from_secs(60))
        .await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["attempt"], 2);
    assert!(e["attempt"].as_i64().unwrap() <= e["max_attempts"].as_i64().unwrap());
    // It runs again within lease (2 s) + bookkeeper interval (200 ms) + backoff
    // (100 ms) of the death, with slack for two cores.
    let rerun = chrono::DateTime::parse_from_rfc3339(e["started_at"].as_str().unwrap()).unwrap();
    let after = (rerun.with_timezone(&chrono::Utc) - killed_at).num_milliseconds();
    assert!(after < 4_500, "ran again {after} ms after the kill: {e}");
    assert_eq!(
        h.results.list_keys().await.unwrap(),
        vec![h.results.key(id.parse().unwrap(), 2, Format::JSONEachRow)],
        "exactly one result object"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn a_frozen_worker_cannot_overwrite_the_execution_after_it_is_reclaimed(pool: PgPool) {
    let h = Harness::with(pool.clone(), fast()).await;
    let log = h.results_dir.path().join("stale-worker.log");
    let mut a = spawn_sluice_logged(
        &child_worker_config(&h, &pool),
        &["worker", "--tier", "default"],
        &log,
    );
    let id = h.submit_ok(four_second_query()).await;
    h.wait_running_on_clickhouse(&id).await;

    a.signal(Signal::SIGSTOP); // past its 2 s lease
    let _bk = spawn_bookkeeper(&h);
    let (_stop, _b) = h.spawn_worker("default");
    let e = h
        .wait_for(&id, &["SUCCEEDED"], Duration::from_secs(60))
        .await;
    assert_eq!(e["attempt"], 2);

    a.signal(Signal::SIGCONT);
    // The stale worker wakes, finds its lease gone and gives the attempt up.
    eventually(
        Duration::from_secs(30),
        "the stale worker gives up",
        || async {
            log_lines(&log).iter().any(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("lease lost"))
                    && l["span"]["execution_id"] == id.as_str()
            })
        },
    )
    .await;
    assert!(a.is_running(), "the stale worker survives its lost lease");
    let after = h.get(&id).await;
    assert_eq!(after["status"], "SUCCEEDED");
    assert_eq!(after["attempt"], 2);
    assert_eq!(
        after["result"], e["result"],
        "the result was not overwritten"
    );
    assert_eq!(
        h.results.list_keys().await.unwrap(),
        vec![h.results.key(id.parse().unwrap(), 2, Format::JSONEachRow)]
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn one_of_two_bookkeepers_leads_and_the_other_takes_over(pool: PgPool) {
    let h = Harness::with(pool.clone(), fast()).await;
    let config = write_config(&h, &pool, &fast());
    let mut first = spawn_sluice(&config, &["bookkeeper"]);
    let mut second = spawn_sluice(&config, &["bookkeeper"]);
    eventually(Duration::from_secs(15), "a bookkeeper leads", || async {
        h.store.leader().await.unwrap().is_some()
    })
    .await;
    let leader = h.store.leader().await.unwrap().unwrap();
    // Its name carries its pid.
    let (dead, survivor) = if leader.contains(&format!("-{}-", first.pid())) {
        (&mut first, &mut second)
    } else {
        assert!(leader.contains(&format!("-{}-", second.pid())), "{leader}");
        (&mut second, &mut first)
    };
    let (_, ready) = h.get_json("/ready").await;
    assert_eq!(ready["bookkeeper_leader"], leader.as_str());

    dead.kill9();
    let survivor_pid = format!("-{}-", survivor.pid());
    // The README promises a takeover within bookkeeper.interval (200 ms here); the
    // bound leaves slack for two busy cores.
    eventually(
        Duration::from_secs(3),
        "the other bookkeeper takes over",
        || async {
            h.store
                .leader()
                .await
                .unwrap()
                .is_some_and(|l| l.contains(&survivor_pid))
        },
    )
    .await;
}

/// What counts as Postgres being away (retried, 503) and what is an error of the
/// statement (not retried): a session the server ended (57P01 admin_shutdown, as
/// `pg_terminate_backend`, a restart or a failover end it) is the first; division by
/// zero is the second.
#[sqlx::test(migrations = "./migrations")]
async fn a_session_the_server_ended_is_unavailable_and_a_bad_statement_is_not(pool: PgPool) {
    use sluice::store::StoreError;
    let mut conn = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&pool)
        .await
        .unwrap();
    let ended = sqlx::query("SELECT 1")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert!(
        matches!(&ended, sqlx::Error::Database(d) if d.code().as_deref() == Some("57P01")),
        "{ended:?}"
    );
    assert!(StoreError::from(ended).is_unavailable());
    let bad = sqlx::query("SELECT 1 / 0")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(!StoreError::from(bad).is_unavailable());
}

#[sqlx::test(migrations = "./migrations")]
async fn terminated_postgres_sessions_lose_no_execution(pool: PgPool) {
    let mut setup = fast();
    setup.workers = vec!["default", "default"];
    let h = Harness::with(pool.clone(), setup).await;
    let _bk = spawn_bookkeeper(&h);
    let mut ids = Vec::new();
    for i in 0..200 {
        let body = json!({
            "sql": format!("SELECT {i} AS i, sleepEachRow(0.02) FROM system.numbers LIMIT 2"),
        });
        ids.push(h.submit_ok(body).await);
    }
    // Kill every session of the test database a few times while they run.
    let db = pool.connect_options().get_database().unwrap().to_string();
    let admin = sqlx::PgPool::connect(&std::env::var("DATABASE_URL").unwrap())
        .await
        .unwrap();
    for _ in 0..5 {
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(&db)
        .fetch_all(&admin)
        .await
        .unwrap();
        assert!(!killed.is_empty());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let mut retried = 0;
    for id in &ids {
        let e = h.wait_terminal(id).await;
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        if e["attempt"] != 1 {
            retried += 1;
        }
    }
    let succeeded: u64 = h
        .worker_stats
        .iter()
        .map(|s| s.succeeded.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    eprintln!("200 executions, {retried} needed a second attempt");
    assert_eq!(succeeded, 200, "each execution completed exactly once");
    assert_eq!(h.results.list_keys().await.unwrap().len(), 200);
}

/// A worker whose attempt was reclaimed while its query still ran (a KILL that came
/// too late, a pause after the query ended) stores its result, finds its fence gone at
/// completion, and deletes the object it wrote: nothing points at it.
#[sqlx::test(migrations = "./migrations")]
async fn a_stale_worker_deletes_the_result_it_wrote(pool: PgPool) {
    let h = Harness::with(
        pool.clone(),
        Setup {
            // One slot, so the worker cannot take the reclaimed execution back itself; a
            // heartbeat slower than the query, so only the completion finds the fence gone.
            tier_extra: "concurrency = 1\n".into(),
            worker_extra: "poll_interval = \"500ms\"\nlease = \"60s\"\nheartbeat = \"20s\"\nshutdown_grace = \"2s\""
                .into(),
            ..Default::default()
        },
    )
    .await;
    let id = h
        .submit_ok(json!({
            "sql": "SELECT number, sleepEachRow(0.5) AS s FROM system.numbers LIMIT 4",
            "settings": { "max_block_size": 1 },
        }))
        .await;
    h.wait_running_on_clickhouse(&id).await;

    // The lease is taken away as the bookkeeper would (without its KILL) and another
    // worker claims attempt 2.
    sqlx::query(
        "UPDATE executions SET lease_expires_at = now() - interval '1 second' WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    let reclaimed = h.store.reclaim_expired(10, Duration::ZERO).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    let thief = h
        .store
        .claim(
            "default",
            "other-worker",
            10,
            Duration::from_secs(600),
            false,
        )
        .await
        .unwrap();
    assert_eq!(thief.len(), 1);
    assert_eq!(thief[0].attempt, 2);

    let stats = &h.worker_stats[0];
    eventually(
        Duration::from_secs(30),
        "the stale attempt ends",
        || async { stats.succeeded.load(std::sync::atomic::Ordering::Relaxed) == 1 },
    )
    .await;
    assert_eq!(
        stats.abandoned.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the stale worker stored its result and deleted it"
    );
    assert_eq!(
        h.results.list_keys().await.unwrap(),
        Vec::<String>::new(),
        "no object is left behind"
    );
    let e = h.get(&id).await;
    assert_eq!(e["status"], "RUNNING", "attempt 2 still owns it: {e}");
    assert_eq!(e["attempt"], 2);
}

/// Postgres itself goes away (a private cluster, stopped) for longer than a heartbeat
/// while executions run and wait, then comes back: the api answers 503 meanwhile, the
/// leases hold (no attempt is lost), workers claim again, and every execution succeeds
/// exactly once.
#[tokio::test]
async fn a_postgres_outage_loses_nothing_and_the_api_answers_503() {
    let mut pg = PrivatePostgres::start().await;
    let pool = pg.migrated_pool().await;
    let mut setup = fast();
    setup.workers = vec!["default"];
    // Leases (30 s) outlast the outage (about 6 s); heartbeats every 200 ms.
    setup.worker_extra =
        "poll_interval = \"500ms\"\nlease = \"30s\"\nheartbeat = \"200ms\"\nshutdown_grace = \"2s\""
            .into();
    let h = Harness::with(pool.clone(), setup).await;
    let _bk = spawn_bookkeeper(&h);
    let n = 24;
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({
            "sql": format!("SELECT {i} AS i, sleepEachRow(0.1) FROM system.numbers LIMIT 3"),
            "settings": { "max_block_size": 1 },
        });
        ids.push(h.submit_ok(body).await);
    }
    // Some run, the rest wait (4 slots).
    eventually(Duration::from_secs(30), "executions run", || async {
        let (_, page) = h.get_json("/v1/executions?status=RUNNING").await;
        page["executions"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let (waiting,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM executions WHERE status = 'PENDING'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        waiting >= 4,
        "work waits in the queue as Postgres stops: {waiting}"
    );
    pool.close().await;
    pg.stop();
    let down = std::time::Instant::now();

    // Meanwhile the api says the queue is unavailable, in its error body (each answer
    // after the pool's 5 s acquire timeout, so they are asked at once).
    let path = format!("/v1/executions/{}", ids[0]);
    let ((get, body), (submit, _), (ready, _)) = tokio::join!(
        h.get_json(&path),
        h.submit(json!({ "sql": "SELECT 1" })),
        h.get_json("/ready"),
    );
    assert_eq!(get, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert_eq!(submit, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    let heartbeat = h.config.worker.heartbeat;
    assert!(
        down.elapsed() > heartbeat * 3,
        "down for several heartbeats"
    );

    pg.restart().await;
    eprintln!("Postgres was down for {:?}", down.elapsed());
    for id in &ids {
        let e = h
            .wait_for(
                id,
                &["SUCCEEDED", "FAILED", "CANCELED"],
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        assert_eq!(e["attempt"], 1, "the lease held: {e}");
        assert_eq!(e["failed_attempts"], json!([]), "{e}");
    }
    let succeeded: u64 = h
        .worker_stats
        .iter()
        .map(|s| s.succeeded.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(succeeded, n as u64, "each execution ran exactly once");
    assert_eq!(h.results.list_keys().await.unwrap().len(), n);
    // The api serves again.
    let (status, _) = h.submit(json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status, StatusCode::CREATED);
}

/// The operator's view of a Postgres outage: each failing operation of a worker and a
/// bookkeeper (processes of their own) logs once per 30 s, not once per try, and once
/// more when it works again; the bookkeeper logs losing its leadership with its session
/// and becoming the leader again.
#[tokio::test]
async fn an_outage_is_logged_once_per_operation_and_leadership_changes_are_logged() {
    let mut pg = PrivatePostgres::start().await;
    let pool = pg.migrated_pool().await;
    let h = Harness::with(pool.clone(), fast()).await;
    let config = write_config(&h, &pool, &fast());
    let dir = h.results_dir.path();
    let (worker_log, bk_log) = (dir.join("worker.log"), dir.join("bookkeeper.log"));
    let _worker = spawn_sluice_logged(&config, &["worker", "--tier", "default"], &worker_log);
    let _bk = spawn_sluice_logged(&config, &["bookkeeper"], &bk_log);
    eventually(Duration::from_secs(30), "the bookkeeper leads", || async {
        logged(&log_lines(&bk_log), "became the leader").len() == 1
    })
    .await;
    // The worker must be past its start-up (which needs Postgres) before the outage: a
    // worker that cannot connect at start exits rather than retrying.
    eventually(Duration::from_secs(30), "the worker starts", || async {
        logged(&log_lines(&worker_log), "worker started").len() == 1
    })
    .await;
    let failing = "operation failing; retrying with backoff";
    pool.close().await;
    pg.stop();
    eventually(Duration::from_secs(30), "the worker notices", || async {
        !logged(&log_lines(&worker_log), failing).is_empty()
    })
    .await;
    // The outage itself (not a synchronisation): long enough for each operation to fail
    // more than once, each try waiting out the pool's 5 s acquire timeout.
    tokio::time::sleep(Duration::from_secs(11)).await;
    pg.restart().await;
    // Every operation that logged the outage logs its end.
    let all_recovered = |log: std::path::PathBuf| {
        let lines = log_lines(&log);
        let again = logged(&lines, "operation works again");
        logged(&lines, failing).iter().all(|f| {
            again
                .iter()
                .any(|a| a["fields"]["operation"] == f["fields"]["operation"])
        })
    };
    eventually(
        Duration::from_secs(30),
        "every operation works again",
        || {
            let done = all_recovered(worker_log.clone()) && all_recovered(bk_log.clone());
            async move { done }
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the bookkeeper leads again",
        || async { logged(&log_lines(&bk_log), "became the leader").len() == 2 },
    )
    .await;

    for log in [&worker_log, &bk_log] {
        let lines = log_lines(log);
        let failures = logged(&lines, failing);
        assert!(!failures.is_empty(), "{log:?} logged the outage");
        let mut operations: Vec<&str> = failures
            .iter()
            .map(|l| l["fields"]["operation"].as_str().unwrap())
            .collect();
        let logged_ops = operations.len();
        operations.sort();
        operations.dedup();
        assert_eq!(
            logged_ops,
            operations.len(),
            "{log:?}: an operation logged its outage more than once in 30 s: {failures:?}"
        );
        // Each says how often it failed when it works again: more than once, logged once.
        for op in &operations {
            let again: Vec<_> = logged(&lines, "operation works again")
                .into_iter()
                .filter(|l| l["fields"]["operation"] == *op)
                .collect();
            assert_eq!(again.len(), 1, "{log:?}: {op} works again: {again:?}");
            let failed = again[0]["fields"]["failures"].as_u64().unwrap();
            eprintln!("{log:?}: {op} failed {failed} times, logged once");
            if *op == "claim" || *op == "bookkeeper leadership" {
                assert!(failed > 1, "{op} was tried more than once: {failed}");
            }
        }
    }
    let bk_lines = log_lines(&bk_log);
    assert_eq!(
        logged(&bk_lines, "lost leadership: its Postgres session ended").len(),
        1,
        "{bk_lines:?}"
    );
}
