//! `sluice query` and `sluice executions`, the binary run against a live API as an analyst
//! would: results byte for byte as ClickHouse writes them, errors and exit codes, and
//! Ctrl-C or `--timeout` canceling the execution on the server.
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sqlx::PgPool;
use tokio::process::Command;

fn sluice(h: &Harness, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(args)
        .env("SLUICE_URL", &h.base)
        .env("SLUICE_TOKEN", TEST_KEY)
        .env("SLUICE_PROFILE", "/nonexistent")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

async fn run(h: &Harness, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), sluice(h, args).output())
        .await
        .expect("sluice query did not end")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn only_execution(pool: &PgPool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let id = sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM executions")
            .fetch_optional(pool)
            .await
            .unwrap();
        if let Some(id) = id {
            return id.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was submitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The result on stdout is what ClickHouse answers directly; a parameter and `-o` work.
#[sqlx::test(migrations = "./migrations")]
async fn query_writes_the_result(pool: PgPool) {
    let h = Harness::start(pool).await;
    let sql = "SELECT number, toString(number) AS s FROM system.numbers LIMIT 5";
    let (code, out, err) = run(&h, &["query", sql, "--format", "CSV"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, clickhouse_direct(sql, "CSV", &[]).await, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.json");
    let (code, out, err) = run(
        &h,
        &[
            "query",
            "SELECT {n:UInt8} + 1 AS x",
            "--param",
            "n=4",
            "-o",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), r#"{"x":5}"#);
}

/// SQL ClickHouse rejects: exit status 1 and ClickHouse's error on stderr, nothing on
/// stdout; an API error (unknown tier) likewise.
#[sqlx::test(migrations = "./migrations")]
async fn query_failures_exit_non_zero(pool: PgPool) {
    let h = Harness::start(pool).await;
    let (code, out, err) = run(&h, &["query", "SELECT no_such_column FROM system.one"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("FAILED: CLICKHOUSE_ERROR (ClickHouse code 47)"),
        "{err}"
    );
    assert!(err.contains("no_such_column"), "{err}");
    let (code, _, err) = run(&h, &["query", "SELECT 1", "--tier", "nowhere"]).await;
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("unknown_tier"), "{err}");
}

/// Ctrl-C mid-query: the CLI cancels the execution on the server, which ends CANCELED,
/// its query gone from ClickHouse; the exit status is 130.
#[sqlx::test(migrations = "./migrations")]
async fn ctrl_c_cancels_on_the_server(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let mut child = sluice(&h, &["query", LONG_SQL]).spawn().unwrap();
    let id = only_execution(&pool).await;
    let query_id = h.wait_running_on_clickhouse(&id).await;
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the CLI did not stop")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "CANCELED", "{e}");
    eventually(Duration::from_secs(10), "the query is gone", || async {
        running_on_clickhouse(&query_id).await == 0
    })
    .await;
}

/// `--timeout`: past it the CLI exits 124 and the query no longer runs (the server's
/// own timeout, or the CLI's cancel, stopped it).
#[sqlx::test(migrations = "./migrations")]
async fn timeout_stops_the_query(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let (code, _, err) = run(&h, &["query", LONG_SQL, "--timeout", "2s"]).await;
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("timed out after 2s"), "{err}");
    let id = only_execution(&pool).await;
    let e = h.wait_terminal(&id).await;
    assert!(
        e["status"] == "CANCELED" || e["error"]["code"] == "TIMEOUT",
        "{e}"
    );
    assert_eq!(running_on_clickhouse(&format!("{id}-1")).await, 0);
}

/// `--no-wait` prints the id; `sluice executions` lists, gets, downloads, links and
/// cancels.
#[sqlx::test(migrations = "./migrations")]
async fn executions_commands(pool: PgPool) {
    let h = Harness::start(pool).await;
    let (code, out, err) = run(&h, &["query", "SELECT 7 AS seven", "--no-wait"]).await;
    assert_eq!(code, 0, "{err}");
    let id = String::from_utf8(out).unwrap().trim().to_string();
    h.wait_terminal(&id).await;

    let (code, out, _) = run(&h, &["executions", "ls"]).await;
    assert_eq!(code, 0);
    let ls = String::from_utf8(out).unwrap();
    assert!(
        ls.starts_with(&format!("{id}\tSUCCEEDED\tdefault\t")),
        "{ls}"
    );
    let (_, out, _) = run(&h, &["executions", "get", &id]).await;
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["id"], id.as_str());
    let (_, out, _) = run(&h, &["executions", "result", &id]).await;
    assert_eq!(String::from_utf8(out).unwrap().trim(), r#"{"seven":7}"#);
    let (_, out, _) = run(&h, &["executions", "url", &id, "--expires-in", "60"]).await;
    let link: Value = serde_json::from_slice(&out).unwrap();
    let body = reqwest::get(link["url"].as_str().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), r#"{"seven":7}"#);

    let (_, out, _) = run(&h, &["query", LONG_SQL, "--no-wait"]).await;
    let long = String::from_utf8(out).unwrap().trim().to_string();
    h.wait_running_on_clickhouse(&long).await;
    let (code, _, err) = run(&h, &["executions", "cancel", &long]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(h.wait_terminal(&long).await["status"], "CANCELED");
}

/// On a terminal (tmux), the progress bar shows the status and the rows read while the
/// query runs, and is cleared when it ends.
#[sqlx::test(migrations = "./migrations")]
async fn the_progress_bar_renders_on_a_terminal(pool: PgPool) {
    let h = Harness::start(pool).await;
    let socket = format!("sluice-test-{}", uuid::Uuid::now_v7().simple());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .arg("-L")
            .arg(&socket)
            .args(args)
            .output()
            .expect("tmux (make test installs it)")
    };
    let script = format!(
        "SLUICE_URL={} SLUICE_TOKEN={TEST_KEY} SLUICE_PROFILE=/nonexistent {} query '{LONG_SQL}' \
         --timeout 4s; echo EXIT=$?; sleep 60",
        h.base,
        env!("CARGO_BIN_EXE_sluice")
    );
    let started = tmux(&["new-session", "-d", "-x", "150", "-y", "20", &script]);
    assert!(started.status.success(), "{started:?}");
    let pane = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p"]).stdout).into_owned();
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(seen.contains("RUNNING") && seen.contains(" rows, ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress bar: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = pane();
    }
    let mut last = String::new();
    while !last.contains("EXIT=124") {
        assert!(std::time::Instant::now() < deadline, "did not end: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = pane();
    }
    tmux(&["kill-server"]);
    assert!(!last.contains("RUNNING"), "the bar was not cleared: {last}");
    assert!(last.contains("timed out after 4s"), "{last}");
}
