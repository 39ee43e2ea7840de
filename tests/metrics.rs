//! `/metrics` in Prometheus text: the queue per tier and status, and the counters.
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrations = "./migrations")]
async fn metrics_show_the_queue_and_the_work_done(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            tiers: vec!["default", "idle"],
            workers: vec!["default"],
            ..Default::default()
        },
    )
    .await;
    let done = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    h.wait_for(&done, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    // A tier without workers keeps its executions PENDING; /metrics shows their age.
    h.submit_ok(json!({ "sql": "SELECT 2", "tier": "idle" }))
        .await;
    h.submit_ok(json!({ "sql": "SELECT 3", "tier": "idle" }))
        .await;
    // The oldest has waited a second (the gauge is read at each scrape).
    let scrape = || async {
        let r = h.http.get(h.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        r.text().await.unwrap()
    };
    let age = r#"sluice_oldest_pending_age_seconds{tier="idle"}"#;
    eventually(
        Duration::from_secs(10),
        "the oldest is a second old",
        || async { metric_value(&scrape().await, age).is_some_and(|v| v >= 1.0) },
    )
    .await;
    let text = scrape().await;
    let get = |s: &str| metric_value(&text, s).unwrap_or_else(|| panic!("no `{s}` in\n{text}"));
    assert_eq!(get(r#"sluice_queue_depth{tier="idle"}"#), 2.0);
    assert!(get(r#"sluice_oldest_pending_age_seconds{tier="idle"}"#) >= 1.0);
    assert_eq!(get(r#"sluice_queue_depth{tier="default"}"#), 0.0);
    assert_eq!(
        get(r#"sluice_executions{tier="default",status="SUCCEEDED"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sluice_executions{tier="idle",status="PENDING"}"#),
        2.0
    );
    assert_eq!(
        get(r#"sluice_executions{tier="idle",status="FAILED"}"#),
        0.0
    );
    assert!(get(r#"sluice_claims_total{tier="default"}"#) >= 1.0);
    assert!(get(r#"sluice_completions_total{tier="default",outcome="succeeded"}"#) >= 1.0);
    assert!(get(r#"sluice_result_bytes_total{tier="default"}"#) >= 8.0);
    assert!(
        text.contains("sluice_execution_duration_seconds_bucket"),
        "{text}"
    );
    assert_eq!(get("sluice_bookkeeper_leader"), 0.0);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_worker_process_serves_its_own_counters(pool: PgPool) {
    let h = Harness::with(
        pool.clone(),
        Setup {
            workers: vec![],
            ..Default::default()
        },
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let setup = Setup {
        workers: vec![],
        extra: format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Default::default()
    };
    let config = write_config(&h, &pool, &setup);
    let _worker = spawn_sluice(&config, &["worker", "--tier", "default"]);
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    h.wait_for(&id, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    eventually(
        Duration::from_secs(10),
        "the worker counts its claim",
        || async {
            let text = match reqwest::get(&url).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            metric_value(&text, r#"sluice_claims_total{tier="default"}"#) == Some(1.0)
        },
    )
    .await;
}
