//! A result of over 200 MB streams through a real `sluice worker` process whose memory
//! stays bounded: the worker never holds a result, only a multipart part or two.
mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;

const BIG_SQL: &str = "SELECT number, toString(number) AS a, \
    concat(a, a, a, a, a, a, a, a, a, a) AS b, [number, number + 1] AS c \
    FROM system.numbers LIMIT 2000000";

#[sqlx::test(migrations = "./migrations")]
async fn a_200_mb_result_streams_through_a_worker_in_bounded_memory(pool: PgPool) {
    let h = Harness::without_workers(pool.clone()).await;
    // The worker process shares the harness's result directory.
    let config = write_config(&h, &pool, &Setup::default());
    let mut worker = spawn_sluice(&config, &["worker", "--tier", "default"]);

    let id = h.submit_ok(json!({ "sql": BIG_SQL })).await;
    let start = std::time::Instant::now();
    let e = loop {
        let e = h.get(&id).await;
        if e["status"] == "SUCCEEDED" || e["status"] == "FAILED" {
            break e;
        }
        assert!(worker.is_running(), "the worker process exited");
        assert!(start.elapsed() < Duration::from_secs(300), "not done: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let bytes = e["result"]["bytes"].as_u64().unwrap();
    assert!(bytes > 200_000_000, "result is only {bytes} bytes");
    assert_eq!(e["result"]["rows"], 2_000_000);

    let peak = peak_rss_kib(worker.pid()) << 10;
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
