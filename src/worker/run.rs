//! One attempt of one execution, from claim to final status.
//!
//! The attempt races three signals against the work itself:
//! - **cancel** (a client's cancel, from NOTIFY or the heartbeat): kill the ClickHouse
//!   query, abort the upload, mark CANCELED;
//! - **lost** (a heartbeat updated zero rows: reclaimed, superseded): kill, abort, write
//!   nothing more;
//! - **hand back** (worker shutting down after its grace period): kill, abort, return the
//!   execution to PENDING.
//!
//! Dropping the HTTP response alone does not stop a ClickHouse query that has not yet
//! sent output, hence the explicit `KILL QUERY ... SYNC` on every interruption.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::Worker;
use super::rows::RowCounter;
use crate::clickhouse::{EngineError, Query, Tail};
use crate::execution::{ErrorInfo, Execution, Format, Progress, ResultMeta};
use crate::results::{ResultWriter, ResultsError};
use crate::store::queue::{Beat, Fence};

/// Signals an attempt listens to.
#[derive(Clone, Default)]
pub struct Signals {
    pub cancel: CancellationToken,
    pub hand_back: CancellationToken,
}

/// What the heartbeat shares with the attempt it keeps alive.
struct Beacons {
    cancel: CancellationToken,
    lost: CancellationToken,
    result_bytes: Arc<AtomicU64>,
    last_progress: Arc<Mutex<Progress>>,
    /// The tier URL running the query, for progress.
    node: Arc<AtomicUsize>,
}

enum Outcome {
    Succeeded(ResultMeta),
    Failed(ErrorInfo),
    /// Failed in a way that may not happen again: retried while attempts remain.
    Transient(ErrorInfo),
    Canceled,
    Lost,
    HandedBack,
}

impl Worker {
    pub(super) async fn execute(&self, execution: Execution, signals: Signals) {
        let span = tracing::info_span!(
            "execution",
            execution_id = %execution.id,
            tier = %execution.tier,
            attempt = execution.attempt,
        );
        self.execute_in_span(execution, signals)
            .instrument(span)
            .await
    }

    async fn execute_in_span(&self, execution: Execution, signals: Signals) {
        let claimed_at = std::time::Instant::now();
        let fence = Fence::of(&execution, &self.id);
        let query_id = execution.clickhouse_query_id();
        info!(query_id, "running");
        let lost = CancellationToken::new();
        let result_bytes = Arc::new(AtomicU64::new(0));
        let last_progress = Arc::new(Mutex::new(Progress::default()));
        let node = Arc::new(AtomicUsize::new(0));
        let heartbeat = tokio::spawn(
            self.clone()
                .heartbeat(
                    fence.clone(),
                    query_id.clone(),
                    Beacons {
                        cancel: signals.cancel.clone(),
                        lost: lost.clone(),
                        result_bytes: result_bytes.clone(),
                        last_progress: last_progress.clone(),
                        node: node.clone(),
                    },
                )
                .in_current_span(),
        );

        let mut writer: Option<ResultWriter> = None;
        let outcome = {
            let work = self.produce(&execution, &query_id, &mut writer, &result_bytes, &node);
            tokio::select! {
                biased;
                _ = signals.cancel.cancelled() => Outcome::Canceled,
                _ = lost.cancelled() => Outcome::Lost,
                _ = signals.hand_back.cancelled() => Outcome::HandedBack,
                outcome = work => outcome,
            }
        };
        heartbeat.abort();

        let interrupted = matches!(
            outcome,
            Outcome::Canceled | Outcome::Lost | Outcome::HandedBack
        );
        if interrupted && let Err(e) = self.engine.kill(&query_id).await {
            warn!(query_id, error = %e, "KILL QUERY failed");
        }
        if let Some(w) = writer.take() {
            w.abort().await;
        }

        // The last statistics the heartbeat saw, with the final byte count.
        let progress = Progress {
            result_bytes: result_bytes.load(Ordering::Relaxed),
            ..last_progress.lock().map(|p| p.clone()).unwrap_or_default()
        };
        // The outcome must reach Postgres: if it does not, the execution stays RUNNING
        // until its lease expires and then runs again. So a write that fails because
        // Postgres is briefly away is retried for as long as the lease may still hold.
        let deadline = std::time::Instant::now() + self.config.lease;
        let mut backoff = crate::outage::Backoff::new(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(2),
        );
        let written = loop {
            let attempt = self.record(&execution, &fence, &outcome, &progress).await;
            match attempt {
                Err(e) if e.is_unavailable() && std::time::Instant::now() < deadline => {
                    warn!(error = %e, "could not record the outcome yet; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => break other,
            }
        };
        if let (Outcome::Succeeded(meta), written) = (&outcome, &written)
            && !matches!(written, Ok(true))
        {
            // Nobody will ever point at this object: ours is a stale attempt.
            if let Err(e) = self.results.delete(&meta.object_key).await {
                warn!(error = %e, "could not delete an abandoned result");
            }
        }
        let label = match &outcome {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Transient(_) if execution.attempt < execution.max_attempts => "retried",
            Outcome::Transient(_) => "failed",
            Outcome::Canceled => "canceled",
            Outcome::Lost => "lost",
            Outcome::HandedBack => "handed_back",
        };
        self.stats.record(label);
        let tier = execution.tier.clone();
        metrics::counter!("sluice_completions_total", "tier" => tier.clone(), "outcome" => label)
            .increment(1);
        metrics::histogram!("sluice_execution_duration_seconds", "tier" => tier.clone(), "outcome" => label)
            .record(claimed_at.elapsed().as_secs_f64());
        if label == "retried" {
            metrics::counter!("sluice_retries_total", "tier" => tier.clone()).increment(1);
        }
        if let Outcome::Succeeded(meta) = &outcome {
            metrics::counter!("sluice_result_bytes_total", "tier" => tier).increment(meta.bytes);
        }
        match written {
            Ok(true) => info!(outcome = label, "finished"),
            Ok(false) => warn!(
                outcome = label,
                "lease lost: the execution was reclaimed, canceled or superseded meanwhile"
            ),
            Err(e) => warn!(outcome = label, error = %e, "could not record the outcome"),
        }
        if let Outcome::Failed(e) | Outcome::Transient(e) = &outcome {
            info!(
                code = e.code,
                clickhouse_code = e.clickhouse_code,
                message = e.message,
                "failed"
            );
        }
    }

    /// Writes the outcome of an attempt, fenced. `Ok(false)`: the fence matched nothing.
    async fn record(
        &self,
        execution: &Execution,
        fence: &Fence,
        outcome: &Outcome,
        progress: &Progress,
    ) -> Result<bool, crate::store::StoreError> {
        match outcome {
            Outcome::Succeeded(meta) => self.store.complete(fence, meta, progress).await,
            Outcome::Failed(error) => self.store.fail(fence, error).await,
            Outcome::Transient(error) if execution.attempt < execution.max_attempts => {
                let delay = self.retry_delay(execution.attempt);
                info!(delay = ?delay, error = error.message, "transient failure: retrying");
                self.store.retry(fence, error, delay).await
            }
            Outcome::Transient(error) => {
                let mut error = error.clone();
                error.message = format!(
                    "{} (gave up after {} attempts)",
                    error.message, execution.attempt
                );
                self.store.fail(fence, &error).await
            }
            Outcome::Canceled => self.store.mark_canceled(fence).await,
            Outcome::HandedBack => self.store.hand_back(fence).await,
            Outcome::Lost => Ok(false),
        }
    }

    /// Run and store, with DESCRIBE beside the query. Leaves an unfinished writer in `writer` so the caller
    /// can abort it whatever happens, including when this future is dropped.
    async fn produce(
        &self,
        execution: &Execution,
        query_id: &str,
        writer: &mut Option<ResultWriter>,
        result_bytes: &AtomicU64,
        node: &AtomicUsize,
    ) -> Outcome {
        let Some(format) = execution.format() else {
            return Outcome::Failed(ErrorInfo {
                code: "INVALID_EXECUTION".into(),
                message: format!("unknown format `{}`", execution.format),
                clickhouse_code: None,
            });
        };
        let no_parameters = Default::default();
        let parameters = execution
            .parameters
            .as_ref()
            .map_or(&no_parameters, |p| &p.0.0);
        let query = Query {
            sql: &execution.sql,
            format,
            settings: &execution.settings.0,
            parameters,
            quota_key: execution.quota_key.as_deref(),
        };
        let version = match self.engine.version().await {
            Ok(v) => v,
            Err(e) => return engine_outcome(e),
        };
        if let Err(e) = version.check_format(format) {
            return engine_outcome(e);
        }
        if !parameters.is_empty()
            && let Err(e) = version.check_parameters()
        {
            return engine_outcome(e);
        }
        // DESCRIBE only works on statements that return rows; others (CREATE, INSERT on
        // a writable tier) have no columns.
        let describe = async {
            if returns_rows(&execution.sql) {
                self.engine.describe(query).await
            } else {
                Ok(Vec::new())
            }
        };
        let key = self.results.key(execution.id, execution.attempt, format);
        let run = async {
            let mut stream = self
                .engine
                .stream(query, query_id)
                .await
                .map_err(engine_outcome)?;
            node.store(stream.node(), Ordering::Relaxed);
            let w = writer.insert(self.results.writer(&key));
            let mut tail = Tail::default();
            let mut rows = RowCounter::new(format.row_counting());
            loop {
                let chunk = match stream.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    // 25.11+ servers end the body right after a tagged exception, without
                    // the closing chunk: the exception, if there is one, is the real error.
                    Err(e) => {
                        let e = match tail.exception(stream.exception_tag()) {
                            Some(x) => EngineError::Server(x),
                            None => e,
                        };
                        return Err(engine_outcome(redact(e, query)));
                    }
                };
                rows.feed(&chunk);
                tail.push(chunk.clone());
                w.write(chunk)
                    .await
                    .map_err(|e| Outcome::Failed(storage_error(e)))?;
                result_bytes.store(w.bytes_written(), Ordering::Relaxed);
            }
            if let Some(e) = tail.exception(stream.exception_tag()) {
                return Err(engine_outcome(redact(EngineError::Server(e), query)));
            }
            Ok((rows, tail))
        };
        // DESCRIBE runs beside the query rather than before it: its round trip was most
        // of a short execution's run time. When both fail (bad SQL), the query's own error
        // is the one reported; a DESCRIBE that fails alone fails the attempt, and the
        // caller aborts the result written meanwhile.
        let (columns, ran) = tokio::join!(describe, run);
        let (rows, tail) = match ran {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let columns = match columns {
            Ok(c) => c,
            Err(e) => return engine_outcome(e),
        };
        let Some(w) = writer.take() else {
            return Outcome::Failed(storage_error(ResultsError::NotFound(key)));
        };
        let bytes = match w.finish().await {
            Ok(n) => n,
            Err(e) => {
                // A failed completion may still have left an object behind.
                let _ = self.results.delete(&key).await;
                return Outcome::Failed(storage_error(e));
            }
        };
        Outcome::Succeeded(ResultMeta {
            object_key: key,
            format,
            content_type: Format::content_type(format).to_string(),
            bytes,
            rows: rows.finish(&tail.bytes()),
            columns,
        })
    }

    /// Exponential backoff: `retry_backoff * 2^(attempt - 1)`, capped.
    fn retry_delay(&self, attempt: i32) -> std::time::Duration {
        let exp = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        self.config
            .retry_backoff
            .saturating_mul(1 << exp)
            .min(self.config.retry_backoff_max)
    }

    /// Renews the lease and records progress until aborted. Turns what it learns into
    /// the `cancel` and `lost` signals.
    async fn heartbeat(self, fence: Fence, query_id: String, beacons: Beacons) {
        let Beacons {
            cancel,
            lost,
            result_bytes,
            last_progress,
            node,
        } = beacons;
        let mut beat_log = crate::outage::OutageLog::new("heartbeat");
        let mut interval = tokio::time::interval(self.config.heartbeat);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await; // the claim itself just set the lease
        loop {
            interval.tick().await;
            let stats = self
                .engine
                .progress(node.load(Ordering::Relaxed), &query_id)
                .await
                .ok()
                .flatten();
            let progress = Progress {
                read_rows: stats.as_ref().map_or(0, |s| s.read_rows),
                read_bytes: stats.as_ref().map_or(0, |s| s.read_bytes),
                total_rows_approx: stats.as_ref().map_or(0, |s| s.total_rows_approx),
                elapsed_seconds: stats.as_ref().map_or(0.0, |s| s.elapsed),
                memory_usage: stats.as_ref().map_or(0, |s| s.memory_usage),
                result_bytes: result_bytes.load(Ordering::Relaxed),
            };
            // Once the query has left system.processes, keep what was last seen.
            if stats.is_some()
                && let Ok(mut last) = last_progress.lock()
            {
                *last = progress.clone();
            }
            match self
                .store
                .heartbeat(&fence, self.config.lease, Some(&progress))
                .await
            {
                Ok(Beat::Alive) => beat_log.success(),
                Ok(Beat::CancelRequested) => cancel.cancel(),
                Ok(Beat::Lost) => {
                    lost.cancel();
                    return;
                }
                // The lease outlives a few failed beats; the bookkeeper reclaims it if
                // Postgres stays away longer.
                Err(e) => beat_log.failure(&e),
            }
        }
    }
}

/// A mid-stream exception, with any echoed parameter value masked.
fn redact(e: EngineError, query: Query<'_>) -> EngineError {
    match e {
        EngineError::Server(mut x) => {
            x.message = query.redact(&x.message);
            EngineError::Server(x)
        }
        other => other,
    }
}

/// Whether the statement returns rows (and so can be DESCRIBEd): a query, not DDL or
/// an INSERT. Leading comments and parentheses are skipped.
fn returns_rows(sql: &str) -> bool {
    let mut rest = sql.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r
                .split_once('\n')
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r
                .split_once("*/")
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if let Some(r) = rest.strip_prefix('(') {
            rest = r.trim_start();
        } else {
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    matches!(
        word.as_str(),
        "SELECT" | "WITH" | "SHOW" | "DESCRIBE" | "DESC" | "EXPLAIN" | "EXISTS" | "VALUES"
    )
}

fn engine_outcome(e: EngineError) -> Outcome {
    if e.is_transient() {
        Outcome::Transient(engine_error(e))
    } else {
        Outcome::Failed(engine_error(e))
    }
}

fn engine_error(e: EngineError) -> ErrorInfo {
    match e {
        EngineError::Server(x) => ErrorInfo {
            code: "CLICKHOUSE_ERROR".into(),
            message: x.message,
            clickhouse_code: x.code,
        },
        EngineError::Transport(m) | EngineError::Connect(m) => ErrorInfo {
            code: "CLICKHOUSE_UNAVAILABLE".into(),
            message: format!("cannot reach ClickHouse: {m}"),
            clickhouse_code: None,
        },
        EngineError::Unsupported(m) => ErrorInfo {
            code: "UNSUPPORTED_BY_SERVER".into(),
            message: m,
            clickhouse_code: None,
        },
        EngineError::Protocol(m) => ErrorInfo {
            code: "CLICKHOUSE_PROTOCOL".into(),
            message: m,
            clickhouse_code: None,
        },
    }
}

fn storage_error(e: ResultsError) -> ErrorInfo {
    ErrorInfo {
        code: "STORAGE_ERROR".into(),
        message: format!("could not store the result: {e}"),
        clickhouse_code: None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_that_return_rows() {
        use super::returns_rows;
        assert!(returns_rows("SELECT 1"));
        assert!(returns_rows(
            "  -- why\n  (with x as (select 1) select * from x)"
        ));
        assert!(returns_rows("/* c */ show tables"));
        assert!(!returns_rows("CREATE TABLE t (x UInt8) ENGINE = Memory"));
        assert!(!returns_rows("insert into t select 1"));
    }
}
