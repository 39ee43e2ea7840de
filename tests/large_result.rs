//! A result of over 200 MB streams through a real `sluice worker` process whose memory
//! stays bounded: the worker never holds a result, only a multipart part or two.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;

const BIG_SQL: &str = "SELECT number, toString(number) AS a, \
    concat(a, a, a, a, a, a, a, a, a, a) AS b, [number, number + 1] AS c \
    FROM system.numbers LIMIT 2000000";

/// Peak resident memory of a process, from /proc (kB -> bytes).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn a_200_mb_result_streams_through_a_worker_in_bounded_memory(pool: PgPool) {
    let setup = Setup {
        workers: vec![],
        ..Default::default()
    };
    let h = Harness::with(pool.clone(), setup).await;
    // The worker process shares the harness's result directory.
    let toml = config_toml(
        &pool,
        &Setup {
            workers: vec![],
            ..Default::default()
        },
        h.results_dir.path(),
    );
    let config_path = h.results_dir.path().join("worker.toml");
    std::fs::write(&config_path, toml).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "--config",
            config_path.to_str().unwrap(),
            "worker",
            "--tier",
            "default",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let worker = KillOnDrop(child);
    let pid = worker.0.id();

    let id = h.submit_ok(json!({ "sql": BIG_SQL })).await;
    let mut worker = worker;
    let start = std::time::Instant::now();
    let e = loop {
        let e = h.get(&id).await;
        if e["status"] == "SUCCEEDED" || e["status"] == "FAILED" {
            break e;
        }
        if let Some(exit) = worker.0.try_wait().unwrap() {
            panic!("the worker process exited: {exit}");
        }
        assert!(start.elapsed() < Duration::from_secs(300), "not done: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let bytes = e["result"]["bytes"].as_u64().unwrap();
    assert!(bytes > 200_000_000, "result is only {bytes} bytes");
    assert_eq!(e["result"]["rows"], 2_000_000);

    let peak = peak_rss(pid);
    eprintln!(
        "worker peak RSS {} MiB for a {} MiB result",
        peak >> 20,
        bytes >> 20
    );
    // Part size 8 MiB x (2 uploading + 1 filling), plus the runtime and connection pools.
    assert!(
        peak < 100 << 20,
        "worker peak RSS {} MiB for a {} MiB result",
        peak >> 20,
        bytes >> 20
    );

    // And the download is the whole result, streamed.
    let r = h
        .http
        .get(h.url(&format!("/v1/executions/{id}/result")))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut downloaded = 0u64;
    let mut last = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        downloaded += chunk.len() as u64;
        last = chunk.to_vec();
    }
    assert_eq!(downloaded, bytes);
    assert!(last.ends_with(b"]}\n"), "the result ends with the last row");
}
