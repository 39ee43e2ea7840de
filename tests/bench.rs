//! `sluice bench` itself: its store statements give the figures a hand-made table implies,
//! the whole bench runs end to end on a small scale, printing every figure and leaving no
//! scratch database behind, and a bench killed outright leaves no process behind. (What
//! the figures are on this machine is the bench's business, never a test's.)
mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sluice::store::Store;
use sqlx::PgPool;

async fn database_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The scratch database is made afresh (what an earlier run left is gone) and dropped.
#[sqlx::test(migrations = "./migrations")]
async fn the_scratch_database_is_recreated_and_dropped(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    let name = format!("bench_scratch_{}", uuid::Uuid::new_v4().simple());
    store.recreate_database(&name).await.unwrap();
    assert!(database_exists(&pool, &name).await);
    let url = {
        let mut url = url::Url::parse(&database_url(&pool)).unwrap();
        url.set_path(&name);
        url.to_string()
    };
    let scratch = Store::connect(&url, 1).await.unwrap();
    scratch.migrate().await.unwrap();
    drop(scratch);
    // A second run starts from an empty database: migrating again would find its tables.
    store.recreate_database(&name).await.unwrap();
    let tables: i64 = {
        let scratch = sqlx::PgPool::connect(&url).await.unwrap();
        let n = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&scratch)
            .await
            .unwrap();
        scratch.close().await;
        n
    };
    assert_eq!(tables, 0, "the earlier run's tables are gone");
    store.drop_database(&name).await.unwrap();
    assert!(!database_exists(&pool, &name).await);
    store.drop_database(&name).await.unwrap();
}

/// Rows inserted directly are what the claim figures say they are: so many, of so many
/// tenants, finished or PENDING; claimed ones are finished; `any_unfinished` sees them.
#[sqlx::test(migrations = "./migrations")]
async fn rows_inserted_for_the_claim_figures_are_as_stated(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    assert!(!store.any_unfinished().await.unwrap());
    store.insert_rows(500, "finished", 10, true).await.unwrap();
    assert!(!store.any_unfinished().await.unwrap(), "finished rows only");
    store.insert_rows(300, "queue", 3, false).await.unwrap();
    let counts: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT tier, status::text, count(*), count(DISTINCT tenant) FROM executions \
         GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        counts,
        [
            ("finished".into(), "SUCCEEDED".into(), 500, 10),
            ("queue".into(), "PENDING".into(), 300, 3)
        ]
    );
    assert!(store.any_unfinished().await.unwrap(), "PENDING rows");
    let claimed = store
        .claim("queue", "bench-test", 16, Duration::from_secs(60), false)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 16);
    let ids: Vec<uuid::Uuid> = claimed.iter().map(|e| e.id).collect();
    store.finish_claimed(&ids).await.unwrap();
    let (succeeded, running): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'SUCCEEDED'), \
             count(*) FILTER (WHERE status = 'RUNNING') \
         FROM executions WHERE tier = 'queue'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((succeeded, running), (16, 0));
    sqlx::query("UPDATE executions SET status = 'CANCELED', finished_at = now() WHERE tier = 'queue' AND status = 'PENDING'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(!store.any_unfinished().await.unwrap());
    // A RUNNING one is unfinished too.
    store.insert_rows(1, "queue", 1, false).await.unwrap();
    store
        .claim("queue", "bench-test", 1, Duration::from_secs(60), false)
        .await
        .unwrap();
    assert!(store.any_unfinished().await.unwrap(), "a RUNNING row");
}

/// The backlog figures of a hand-made run: three executions RUNNING 0-10, 5-15 and 10-20
/// ms (at most two at once: one ends as the next starts), and one still PENDING.
#[sqlx::test(migrations = "./migrations")]
async fn run_stats_are_those_of_the_timings(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    store.insert_rows(3, "default", 1, true).await.unwrap();
    sqlx::query(
        "UPDATE executions SET sql = sql || ' AS m', \
             created_at = t0 + c * interval '1 ms', started_at = t0 + s * interval '1 ms', \
             finished_at = t0 + f * interval '1 ms' \
         FROM (VALUES (1, 0, 0, 10), (2, 1, 5, 15), (3, 2, 10, 20)) AS v(i, c, s, f), \
             (SELECT timestamptz '2026-01-01 00:00:00+00' AS t0) AS t \
         WHERE sql = 'SELECT ' || v.i",
    )
    .execute(&pool)
    .await
    .unwrap();
    store.insert_rows(1, "default", 1, false).await.unwrap();
    sqlx::query("UPDATE executions SET sql = 'SELECT 4 AS m' WHERE status = 'PENDING'")
        .execute(&pool)
        .await
        .unwrap();
    store.insert_rows(5, "default", 1, true).await.unwrap(); // not of this run
    let s = store.run_stats(" AS m").await.unwrap();
    assert_eq!(
        (s.executions, s.succeeded, s.unfinished),
        (4, 3, 1),
        "{s:?}"
    );
    let at = |ms: i64| {
        "2026-01-01T00:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            + chrono::Duration::milliseconds(ms)
    };
    assert_eq!(s.first_created, Some(at(0)), "{s:?}");
    assert_eq!(s.first_started, Some(at(0)), "{s:?}");
    assert_eq!(s.last_finished, Some(at(20)), "{s:?}");
    assert_eq!(s.most_running, Some(2), "{s:?}");
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
    assert!(close(s.mean_run_ms, 10.0), "{s:?}");
    assert!(close(s.mean_running, 1.5), "{s:?}");
}

/// `sluice bench` on a small scale: every phase prints its figure, every backlog
/// execution succeeds, and the scratch database is dropped. The test database's name is
/// 63 bytes long, the most Postgres keeps, as a long configured name would be.
#[sqlx::test(migrations = "./migrations")]
async fn the_bench_runs_every_phase_and_cleans_up(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, config_toml(&pool, &Setup::default(), dir.path())).unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&config)
        .args([
            "bench",
            "--pickups=5",
            "--trivial=8",
            "--concurrency=2",
            "--backlog=40",
            "--sleep-backlog=20",
            "--claim-rows=12000",
            "--large-rows=1000",
        ])
        .arg("--results-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the bench did not end within 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line =
        |start: &str| -> Vec<&str> { stdout.lines().filter(|l| l.starts_with(start)).collect() };
    assert_eq!(
        line("pickup latency (created -> started), 5 executions").len(),
        1,
        "{stdout}"
    );
    assert_eq!(line("closed loop, 8 x").len(), 1, "{stdout}");
    assert_eq!(
        line("ceiling: ").len(),
        4,
        "before and after each backlog: {stdout}"
    );
    for workers in [1, 2] {
        let backlog = line(&format!("backlog of 40 `SELECT n`, {workers} worker(s)"));
        assert_eq!(backlog.len(), 1, "{stdout}");
        assert!(backlog[0].contains(" 40 of 40 SUCCEEDED"), "{}", backlog[0]);
        // RUNNING counts an outcome still being written, after its slot was given back,
        // so this is at least one and may exceed the slots.
        let most: usize = backlog[0]
            .split("at most ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}", backlog[0]));
        assert!((1..=40).contains(&most), "{}", backlog[0]);
    }
    for workers in [1, 2] {
        let sleeping = line(&format!(
            "backlog of 20 `SELECT n, sleep(0.05)`, {workers} worker(s) of concurrency 2"
        ));
        assert_eq!(sleeping.len(), 1, "{stdout}");
        assert!(
            sleeping[0].contains(" 20 of 20 SUCCEEDED"),
            "{}",
            sleeping[0]
        );
        let allowed = format!("of what the slots allow ({}/s)", workers * 2 * 20);
        assert!(sleeping[0].contains(&allowed), "{}", sleeping[0]);
    }
    assert_eq!(line("large result: ").len(), 1, "{stdout}");
    assert_eq!(line("worker peak RSS: ").len(), 1, "{stdout}");
    assert_eq!(
        line("claim latency (200 claims of 16)").len(),
        4,
        "{stdout}"
    );
    assert_eq!(
        line("claim latency p50 at 12000 finished rows / at 10,000").len(),
        1,
        "{stdout}"
    );
    let scratch = format!(
        "{}_bench",
        pool.connect_options().get_database().unwrap_or("postgres")
    );
    assert!(
        !database_exists(&pool, &scratch).await,
        "{scratch} was left"
    );
}

/// The processes `/proc` lists as `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|l| {
            l.split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether `pid` still runs (a zombie nobody reaped has ended).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|s| !s.starts_with('Z'))
    })
}

/// A bench killed outright takes its api and worker with it: they would otherwise go on
/// serving its scratch database, and keep it from being dropped.
#[sqlx::test(migrations = "./migrations")]
async fn a_killed_bench_leaves_no_process_behind(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, config_toml(&pool, &Setup::default(), dir.path())).unwrap();
    let mut bench = Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--config")
            .arg(&config)
            .args(["bench", "--pickups=1000000", "--results-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = bench.pid() as u32;
    eventually(
        Duration::from_secs(30),
        "the bench starts its api and worker",
        || {
            let n = children(pid).len();
            async move { n == 2 }
        },
    )
    .await;
    let spawned = children(pid);
    // Should they outlive the bench, they must not outlive the test (they hold its
    // database and the test's output pipe).
    struct Reap(Vec<u32>);
    impl Drop for Reap {
        fn drop(&mut self) {
            for &pid in &self.0 {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
    let _reap = Reap(spawned.clone());
    bench.kill9();
    eventually(
        Duration::from_secs(10),
        "the api and worker end with the bench",
        || {
            let left = spawned.iter().any(|&p| runs(p));
            async move { !left }
        },
    )
    .await;
}
