//! Prometheus metrics.
//!
//! Counters and the duration histogram are recorded where the work happens (workers,
//! bookkeeper) through the `metrics` facade; gauges of the queue (executions by tier and
//! status, runnable depth, age of the oldest pending execution, whether a bookkeeper
//! leads) are read from Postgres when `/metrics` is scraped, so any api process reports
//! the whole queue. Workers and the bookkeeper run as separate processes can serve their
//! own counters on `metrics.listen`.
//!
//! Names:
//! - `sluice_executions{tier,status}` gauge
//! - `sluice_queue_depth{tier}` gauge (PENDING and runnable now)
//! - `sluice_oldest_pending_age_seconds{tier}` gauge
//! - `sluice_bookkeeper_leader` gauge (1 when a bookkeeper leads)
//! - `sluice_claims_total{tier}`, `sluice_completions_total{tier,outcome}`,
//!   `sluice_retries_total{tier}`, `sluice_reclaims_total{tier,status}`,
//!   `sluice_expirations_total{tier}`, `sluice_result_bytes_total{tier}` counters
//! - `sluice_execution_duration_seconds{tier,outcome}` histogram (claim to outcome)
//! - `sluice_step_seconds{step}` summary: the time of each step of the hot path
//!   (`submit`, `submit_batch`, `claim`, `clickhouse`, `describe`, `store_write`,
//!   `record`, `complete_batch`); its `_count` and `_sum` say how often each step ran and
//!   how long it took in all, which `sluice bench` turns into a per-execution breakdown
//! - `sluice_completion_batch_rows` summary: completions written per statement
//! - `sluice_submit_batch_rows` summary: submits written per statement (a burst's)
//! - `sluice_task_reloads_total{outcome}` counter: SIGHUP reloads of the saved reports
//!   (`ok` or `failed`; a failed one keeps the set in use)

use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::execution::Status;
use crate::store::{Store, StoreError};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds buckets of the execution duration histogram.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    "sluice_execution_duration_seconds".into(),
                ),
                DURATION_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (a test harness in the
        // same process); then this handle renders nothing but the queue gauges' text.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Records one step of the hot path that began at `started` (see the module comment).
pub fn step(step: &'static str, started: Instant) {
    metrics::histogram!("sluice_step_seconds", "step" => step)
        .record(started.elapsed().as_secs_f64());
}

/// The Prometheus text: the queue read from Postgres now (every configured tier and
/// status gets a value, zero included), then this process's counters.
pub async fn render<'a>(
    store: &Store,
    tiers: impl Iterator<Item = &'a String>,
) -> Result<String, StoreError> {
    let handle = handle();
    let queue = store.queue_stats().await?;
    for tier in tiers {
        for status in Status::ALL {
            let count = queue
                .by_status
                .iter()
                .find(|r| &r.tier == tier && r.status == status)
                .map_or(0, |r| r.count);
            metrics::gauge!("sluice_executions", "tier" => tier.clone(), "status" => status.as_str())
                .set(count as f64);
        }
        let pending = queue.pending.iter().find(|r| &r.tier == tier);
        metrics::gauge!("sluice_queue_depth", "tier" => tier.clone())
            .set(pending.map_or(0.0, |p| p.runnable as f64));
        metrics::gauge!("sluice_oldest_pending_age_seconds", "tier" => tier.clone())
            .set(pending.map_or(0.0, |p| p.oldest_age_seconds));
    }
    metrics::gauge!("sluice_bookkeeper_leader").set(if queue.leader { 1.0 } else { 0.0 });
    Ok(handle.render())
}
