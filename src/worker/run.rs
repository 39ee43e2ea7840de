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
//!
//! The hot path of a short execution is one ClickHouse request and one result-store
//! write: column metadata comes from the format's own header where it has one (JSON,
//! JSONCompact, TabSeparatedWithNamesAndTypes), otherwise from a DESCRIBE sent beside
//! the query; the outcome joins the store's next batch of completions.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::rows::RowCounter;
use super::{Slot, Worker};
use futures::{FutureExt, StreamExt};

use crate::clickhouse::{EngineError, External, HeaderReader, OpenData, Query};
use crate::execution::{
    Column, ErrorCode, ErrorInfo, Execution, Format, Limits, Progress, ResultMeta,
};
use crate::metrics::step;
use crate::results::{ResultWriter, ResultsError};
use crate::sql;
use crate::store::StoreError;
use crate::store::queue::{Beat, Fence};

/// Signals an attempt listens to.
#[derive(Clone, Default)]
pub struct Signals {
    pub cancel: CancellationToken,
    pub hand_back: CancellationToken,
}

/// What the heartbeat shares with the attempt it keeps alive.
#[derive(Clone)]
pub(super) struct Beacons {
    cancel: CancellationToken,
    lost: CancellationToken,
    result_bytes: Arc<AtomicU64>,
    last_progress: Arc<Mutex<Progress>>,
    /// The tier URL running the query, for progress.
    node: Arc<AtomicUsize>,
    /// The ClickHouse query_id running now: progress reads it, a stop kills it (a
    /// job's steps each have their own).
    query_id: Arc<Mutex<String>>,
}

impl Beacons {
    fn new(cancel: CancellationToken, query_id: String) -> Beacons {
        Beacons {
            cancel,
            lost: CancellationToken::new(),
            result_bytes: Arc::default(),
            last_progress: Arc::default(),
            node: Arc::default(),
            query_id: Arc::new(Mutex::new(query_id)),
        }
    }

    pub(super) fn set_query_id(&self, query_id: &str) {
        if let Ok(mut q) = self.query_id.lock() {
            query_id.clone_into(&mut q);
        }
    }

    fn query_id(&self) -> String {
        self.query_id.lock().map(|q| q.clone()).unwrap_or_default()
    }

    /// Folds the statistics ClickHouse sent with its headers into what was last seen:
    /// for a short query they are the only ones (it ends before the first heartbeat).
    fn saw(&self, summary: &crate::clickhouse::Summary) {
        if let Ok(mut p) = self.last_progress.lock() {
            p.read_rows = p.read_rows.max(summary.read_rows);
            p.read_bytes = p.read_bytes.max(summary.read_bytes);
            p.total_rows_approx = p.total_rows_approx.max(summary.total_rows_to_read);
            p.elapsed_seconds = p.elapsed_seconds.max(summary.elapsed_seconds);
        }
    }

    /// The last statistics seen (heartbeat or headers), with the final byte count.
    fn final_progress(&self) -> Progress {
        Progress {
            result_bytes: self.result_bytes.load(Ordering::Relaxed),
            ..self
                .last_progress
                .lock()
                .map(|p| p.clone())
                .unwrap_or_default()
        }
    }
}

/// How an attempt ended.
enum Outcome {
    Succeeded(ResultMeta),
    Failed(ErrorInfo),
    /// A transient failure with attempts left: runs again after a backoff.
    Retry(ErrorInfo),
    Canceled,
    /// The attempt ran past the execution's `timeout`: killed, FAILED with TIMEOUT.
    TimedOut(ErrorInfo),
    Lost,
    HandedBack,
}

impl Outcome {
    /// What producing the result came to, given the attempts left.
    fn of(produced: Result<ResultMeta, Failure>, execution: &Execution) -> Outcome {
        let crashed_before = || {
            execution
                .attempts
                .0
                .iter()
                .any(|a| a.error.code == ErrorCode::ServerCrashed)
        };
        match produced {
            Ok(meta) => Outcome::Succeeded(meta),
            Err(f) if !f.transient => Outcome::Failed(f.error),
            // A query of death is not replayed: one more try, in case the restart had
            // another cause, then no more.
            Err(mut f) if f.error.code == ErrorCode::ServerCrashed && crashed_before() => {
                f.error.message = format!(
                    "{} This is the second time: the statement is not run again.",
                    f.error.message
                );
                Outcome::Failed(f.error)
            }
            Err(f) if execution.attempt < execution.max_attempts => Outcome::Retry(f.error),
            Err(mut f) => {
                f.error.message = format!(
                    "{} (gave up after {} attempts)",
                    f.error.message, execution.attempt
                );
                Outcome::Failed(f.error)
            }
        }
    }

    /// The `outcome` label of metrics and logs.
    fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Retry(_) => "retried",
            Outcome::Canceled => "canceled",
            Outcome::TimedOut(_) => "timed_out",
            Outcome::Lost => "lost",
            Outcome::HandedBack => "handed_back",
        }
    }

    fn interrupted(&self) -> bool {
        matches!(
            self,
            Outcome::Canceled | Outcome::TimedOut(_) | Outcome::Lost | Outcome::HandedBack
        )
    }
}

/// Why producing a result failed.
pub(super) struct Failure {
    pub(super) error: ErrorInfo,
    /// May not happen again (server, not query): retried while attempts remain.
    pub(super) transient: bool,
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Failure {
        Failure {
            transient: e.is_transient(),
            error: e.info(),
        }
    }
}

impl From<ResultsError> for Failure {
    fn from(e: ResultsError) -> Failure {
        Failure {
            transient: false,
            error: ErrorInfo::new(
                ErrorCode::StorageError,
                format!("could not store the result: {e}"),
            ),
        }
    }
}

impl Worker {
    pub(super) async fn execute(&self, execution: Execution, signals: Signals, slot: Slot) {
        let span = tracing::info_span!(
            "execution",
            execution_id = %execution.id,
            tier = %execution.tier,
            attempt = execution.attempt,
        );
        self.attempt(execution, signals, slot)
            .instrument(span)
            .await
    }

    /// One attempt, top to bottom: produce the result under a heartbeat (or stop at a
    /// signal), clean up what an interruption left, give the slot back, record the
    /// outcome, account for it.
    async fn attempt(&self, execution: Execution, signals: Signals, slot: Slot) {
        let claimed_at = Instant::now();
        let fence = Fence::of(&execution, &self.id);
        let query_id = execution.clickhouse_query_id();
        debug!(query_id, "running");
        let beacons = Beacons::new(signals.cancel.clone(), query_id.clone());
        let heartbeat = tokio::spawn(
            self.clone()
                .heartbeat(fence.clone(), beacons.clone())
                .in_current_span(),
        );

        let mut writer: Option<ResultWriter> = None;
        let timeout = execution
            .timeout_ms
            .map(|ms| std::time::Duration::from_millis(ms.max(0) as u64));
        let outcome = {
            let work = async {
                match &execution.job {
                    Some(_) => {
                        self.run_job(&execution, &fence, &mut writer, &beacons)
                            .await
                    }
                    None => {
                        let parameters = parameters_of(&execution);
                        let statement = Statement {
                            sql: &execution.sql,
                            parameters: &parameters,
                            query_id: &query_id,
                            session: None,
                        };
                        self.produce(&execution, statement, &mut writer, &beacons)
                            .await
                    }
                }
            };
            let time_up = async {
                match timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = signals.cancel.cancelled() => Outcome::Canceled,
                _ = beacons.lost.cancelled() => Outcome::Lost,
                _ = signals.hand_back.cancelled() => Outcome::HandedBack,
                _ = time_up => Outcome::TimedOut(ErrorInfo::new(
                    ErrorCode::Timeout,
                    format!(
                        "ran longer than its timeout of {}; the query was killed",
                        humantime::format_duration(timeout.unwrap_or_default())
                    ),
                )),
                produced = work => Outcome::of(produced, &execution),
            }
        };
        heartbeat.abort();
        if outcome.interrupted() {
            let query_id = beacons.query_id();
            if let Err(e) = self.engine.kill(&query_id).await {
                warn!(query_id, error = %e, "KILL QUERY failed");
            }
        }
        if let Some(w) = writer.take() {
            w.abort().await;
        }
        // Nothing of this attempt runs on ClickHouse any more: another may start while
        // the outcome is written.
        drop(slot);

        let written = self
            .record(&fence, &outcome, &beacons.final_progress())
            .await;
        if let Outcome::Succeeded(meta) = &outcome
            && !matches!(written, Ok(true))
        {
            // Nobody will ever point at this object: ours is a stale attempt.
            match self.results.delete(&meta.object_key).await {
                Ok(()) => {
                    self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => warn!(error = %e, "could not delete an abandoned result"),
            }
        }
        self.account(&execution, &outcome, claimed_at, &written);
    }

    /// Writes the outcome, fenced; `Ok(false)` when the fence matched nothing. The
    /// outcome must reach Postgres (if it does not, the execution stays RUNNING until its
    /// lease expires and then runs again), so a write that fails because Postgres is
    /// briefly away is retried for as long as the lease may still hold.
    async fn record(
        &self,
        fence: &Fence,
        outcome: &Outcome,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let started = Instant::now();
        let deadline = started + self.config.lease;
        let mut backoff = crate::outage::Backoff::new(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(2),
        );
        let written = loop {
            let written = match outcome {
                Outcome::Succeeded(meta) => self.store.complete(fence, meta, progress).await,
                Outcome::Failed(error) | Outcome::TimedOut(error) => {
                    self.store.fail(fence, error, progress).await
                }
                Outcome::Retry(error) => {
                    let delay = self.retry_delay(fence.attempt);
                    self.store.retry(fence, error, delay).await
                }
                Outcome::Canceled => self.store.mark_canceled(fence).await,
                Outcome::HandedBack => self.store.hand_back(fence).await,
                Outcome::Lost => Ok(false),
            };
            match written {
                Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                    warn!(error = %e, "could not record the outcome yet; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => break other,
            }
        };
        step("record", started);
        written
    }

    /// Counters, metrics and the log line of a finished attempt.
    fn account(
        &self,
        execution: &Execution,
        outcome: &Outcome,
        claimed_at: Instant,
        written: &Result<bool, StoreError>,
    ) {
        let label = outcome.label();
        self.stats.record(label);
        let tier = execution.tier.clone();
        metrics::counter!("sluice_completions_total", "tier" => tier.clone(), "outcome" => label)
            .increment(1);
        metrics::histogram!("sluice_execution_duration_seconds", "tier" => tier.clone(), "outcome" => label)
            .record(claimed_at.elapsed().as_secs_f64());
        match outcome {
            Outcome::Retry(_) => {
                metrics::counter!("sluice_retries_total", "tier" => tier).increment(1)
            }
            Outcome::Succeeded(meta) => {
                metrics::counter!("sluice_result_bytes_total", "tier" => tier).increment(meta.bytes)
            }
            _ => {}
        }
        match written {
            Ok(true) => info!(outcome = label, "finished"),
            Ok(false) => warn!(
                outcome = label,
                "lease lost: the execution was reclaimed, canceled or superseded meanwhile"
            ),
            Err(e) => warn!(outcome = label, error = %e, "could not record the outcome"),
        }
        if let Outcome::Failed(e) | Outcome::Retry(e) | Outcome::TimedOut(e) = outcome {
            info!(
                code = e.code.as_str(),
                clickhouse_code = e.clickhouse_code,
                message = e.message,
                "failed"
            );
        }
    }

    /// Runs the statement and stores its result. Leaves an unfinished writer in `writer`
    /// so the caller can abort it whatever happens, including when this future is
    /// dropped.
    pub(super) async fn produce(
        &self,
        execution: &Execution,
        run: Statement<'_>,
        writer: &mut Option<ResultWriter>,
        beacons: &Beacons,
    ) -> Result<ResultMeta, Failure> {
        let format = execution.format;
        let parameters = run.parameters;
        let query_id = run.query_id;
        // Validated at submit; a row queued by an older release may not be, and is sent
        // as it is.
        let statement = sql::analyze(run.sql).ok();
        let body = statement.as_ref().map_or(run.sql, |s| s.body());
        let server = self.engine.server().await?;
        server.check_format(format)?;
        let (sql_text, inline) = for_server(&server, body, parameters)?;
        // A follow-up query reads another execution's stored result as the table
        // `result`, streamed from the result store to ClickHouse.
        let source = match execution.from_result {
            Some(id) => Some(self.source(execution, id, &server).await?),
            None => None,
        };
        let opener = source
            .as_ref()
            .map(|s| open_stored(self.results.clone(), s.key.clone()));
        let external = source
            .as_ref()
            .zip(opener.as_ref())
            .map(|(s, open)| External {
                name: "result",
                structure: &s.structure,
                format: s.format,
                open: open.as_ref(),
            });
        let query = Query {
            sql: &sql_text,
            format,
            settings: &execution.settings.0,
            parameters,
            inline_parameters: inline,
            quota_key: execution.quota_key.as_deref(),
            external: external.as_ref(),
            session: run.session,
        };

        let plan = self.column_plan(execution, statement.as_ref(), run.session.is_some());
        let key = self.results.key(execution.id, execution.attempt, format);
        let (described, streamed) = tokio::join!(
            async {
                match &plan.describable {
                    Some(text) if plan.describe_beside => self.describe(query, text).await,
                    _ => None,
                }
            },
            self.stream_into_store(
                query,
                query_id,
                &key,
                writer,
                beacons,
                plan.header(format),
                execution.limits()
            ),
        );
        // When the query fails, its own error is the one reported.
        let streamed = streamed?;
        let columns = self
            .columns(plan, execution, query, described.or(streamed.columns))
            .await;

        let bytes = self.finish_object(writer, &key).await?;
        Ok(ResultMeta {
            object_key: key,
            format,
            bytes,
            rows: streamed.rows,
            columns,
            row_index: streamed.row_index,
            truncated: streamed.truncated,
        })
    }

    /// Where the columns of `execution` will come from. Column metadata never fails an
    /// execution: none for statements without rows (CREATE, INSERT on a writable tier);
    /// what an earlier run of the same statement learned (see `columns`); the format's
    /// own header when it carries one; DESCRIBE for a SELECT, sent beside the query
    /// rather than before it (its round trip was most of a short execution's run time);
    /// otherwise unknown (`null`). A session takes one request at a time, so a job's
    /// DESCRIBE waits for its query.
    fn column_plan(
        &self,
        execution: &Execution,
        statement: Option<&sql::Statement>,
        in_session: bool,
    ) -> ColumnPlan {
        let has_rows = statement.is_some_and(|s| s.produces_rows());
        let known = has_rows
            .then(|| self.columns.get(&execution.query_hash))
            .flatten();
        let mut plan = ColumnPlan {
            has_rows,
            known,
            describable: statement
                .filter(|s| s.describable())
                .map(|s| s.query_without_format()),
            describe_beside: false,
        };
        plan.describe_beside =
            plan.learn() && !in_session && HeaderReader::new(execution.format).is_none();
        plan
    }

    /// The columns `plan` settles on, given what DESCRIBE or the header `found`; learned
    /// for the next run of the same statement.
    async fn columns(
        &self,
        plan: ColumnPlan,
        execution: &Execution,
        query: Query<'_>,
        found: Option<Vec<Column>>,
    ) -> Option<Vec<Column>> {
        let learn = plan.learn();
        let columns = if !plan.has_rows {
            Some(Vec::new())
        } else if plan.known.is_some() {
            plan.known
        } else if found.is_some() {
            found
        } else if let (false, Some(text)) = (plan.describe_beside, &plan.describable) {
            // A header that could not be read: ask the server after all.
            self.describe(query, text).await
        } else {
            None
        };
        if let (true, Some(columns)) = (learn, &columns) {
            self.columns.put(&execution.query_hash, columns);
        }
        columns
    }

    /// Completes the object `writer` wrote under `key`; its size.
    async fn finish_object(
        &self,
        writer: &mut Option<ResultWriter>,
        key: &str,
    ) -> Result<u64, Failure> {
        let w = writer
            .take()
            .ok_or_else(|| ResultsError::NotFound(key.to_string()))?;
        let started = Instant::now();
        let finished = w.finish().await;
        step("store_write", started);
        match finished {
            Ok(n) => Ok(n),
            Err(e) => {
                // A failed completion may still have left an object behind.
                let _ = self.results.delete(key).await;
                Err(e.into())
            }
        }
    }

    /// Sends the query and streams its response into a new writer left in `writer`,
    /// counting rows and reading the format's header (if any) on the way. With
    /// `limits`, only whole rows within them are written (the bytes of a row that has
    /// not ended yet wait in `held`) and the query is killed at the first row past them.
    #[allow(clippy::too_many_arguments)]
    async fn stream_into_store(
        &self,
        query: Query<'_>,
        query_id: &str,
        key: &str,
        writer: &mut Option<ResultWriter>,
        beacons: &Beacons,
        mut header: Option<HeaderReader>,
        limits: Limits,
    ) -> Result<Streamed, Failure> {
        let started = Instant::now();
        let since = std::time::SystemTime::now();
        let mut stream = match self.engine.stream(query, query_id).await {
            Ok(s) => s,
            Err(e) => return Err(self.broken(e, self.engine.preferred(), since).await),
        };
        beacons.node.store(stream.node(), Ordering::Relaxed);
        if let Some(summary) = stream.summary() {
            beacons.saw(summary);
        }
        let w = writer.insert(self.results.writer(key));
        let mut rows = RowCounter::new(query.format.row_counting(), limits);
        let mut held = bytes::BytesMut::new();
        loop {
            let chunk = match stream.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => return Err(self.broken(e, stream.node(), since).await),
            };
            rows.feed(&chunk);
            if let Some(h) = header.as_mut() {
                h.feed(&chunk);
            }
            if limits.any() {
                held.extend_from_slice(&chunk);
                let whole = rows.kept().saturating_sub(w.bytes_written());
                let whole = usize::try_from(whole).unwrap_or(usize::MAX).min(held.len());
                if whole > 0 {
                    w.write(held.split_to(whole).freeze()).await?;
                }
                if rows.cut() {
                    break;
                }
            } else {
                w.write(chunk).await?;
            }
            beacons
                .result_bytes
                .store(w.bytes_written(), Ordering::Relaxed);
        }
        let mut truncated = rows.cut();
        if truncated {
            // The rest of the output is not wanted: stop the query rather than let it
            // run on unread.
            drop(stream);
            if let Err(e) = self.engine.kill(query_id).await {
                warn!(query_id, error = %e, "KILL QUERY of a truncated result failed");
            }
            step("clickhouse", started);
            return Ok(Streamed {
                rows: rows.finish(&[]),
                row_index: rows.index(),
                columns: header.and_then(HeaderReader::columns),
                truncated,
            });
        }
        if !held.is_empty() {
            // A last line without its newline: kept when it fits the byte cap.
            let fits = limits
                .bytes
                .is_none_or(|cap| w.bytes_written() + held.len() as u64 <= cap);
            if fits {
                w.write(held.freeze()).await?;
            } else {
                truncated = true;
            }
        }
        step("clickhouse", started);
        Ok(Streamed {
            rows: rows.finish(&stream.tail()),
            row_index: rows.index(),
            columns: header.and_then(HeaderReader::columns),
            truncated,
        })
    }

    /// The failure of a query that ended with `e` on URL `node`: when the connection
    /// broke while it ran and the server then came back having restarted since `since`,
    /// the server most likely crashed on it: `SERVER_CRASHED` (see `Outcome::of`).
    pub(super) async fn broken(
        &self,
        e: EngineError,
        node: usize,
        since: std::time::SystemTime,
    ) -> Failure {
        if !matches!(e, EngineError::Transport(_)) {
            return e.into();
        }
        match self
            .engine
            .restarted_since(node, since, CRASH_CHECK_WAIT)
            .await
        {
            Some(true) => Failure {
                error: ErrorInfo::new(
                    ErrorCode::ServerCrashed,
                    format!(
                        "the ClickHouse server went away while running this statement and \
                         came back restarted; it may have crashed on it ({e})."
                    ),
                ),
                transient: true,
            },
            _ => e.into(),
        }
    }

    /// The columns of `query` (whose text without a FORMAT clause is `text`), or `None`
    /// when the server cannot tell: a metadata failure is logged, never the execution's.
    async fn describe(&self, query: Query<'_>, text: &str) -> Option<Vec<Column>> {
        let started = Instant::now();
        let described = self.engine.describe(query, text).await;
        step("describe", started);
        described
            .inspect_err(|e| warn!(error = %e, "DESCRIBE failed; the result has no columns"))
            .ok()
    }

    /// Exponential backoff: `retry_backoff * 2^(attempt - 1)`, capped.
    fn retry_delay(&self, attempt: i32) -> std::time::Duration {
        crate::outage::Backoff::after(
            self.config.retry_backoff,
            self.config.retry_backoff_max,
            i64::from(attempt),
        )
    }

    /// Renews the lease and records progress until aborted. Turns what it learns into
    /// the `cancel` and `lost` signals.
    async fn heartbeat(self, fence: Fence, beacons: Beacons) {
        let mut beat_log = crate::outage::OutageLog::new("heartbeat");
        let mut interval = tokio::time::interval(self.config.heartbeat);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await; // the claim itself just set the lease
        loop {
            interval.tick().await;
            let stats = self
                .engine
                .progress(beacons.node.load(Ordering::Relaxed), &beacons.query_id())
                .await
                .ok()
                .flatten();
            let progress = Progress {
                read_rows: stats.as_ref().map_or(0, |s| s.read_rows),
                read_bytes: stats.as_ref().map_or(0, |s| s.read_bytes),
                total_rows_approx: stats.as_ref().map_or(0, |s| s.total_rows_approx),
                elapsed_seconds: stats.as_ref().map_or(0.0, |s| s.elapsed),
                memory_usage: stats.as_ref().map_or(0, |s| s.memory_usage),
                result_bytes: beacons.result_bytes.load(Ordering::Relaxed),
            };
            // Once the query has left system.processes, keep what was last seen.
            if stats.is_some()
                && let Ok(mut last) = beacons.last_progress.lock()
            {
                *last = progress.clone();
            }
            match self
                .store
                .heartbeat(&fence, self.config.lease, Some(&progress))
                .await
            {
                Ok(Beat::Alive) => beat_log.success(),
                Ok(Beat::CancelRequested) => beacons.cancel.cancel(),
                Ok(Beat::Lost) => {
                    beacons.lost.cancel();
                    return;
                }
                // The lease outlives a few failed beats; the bookkeeper reclaims it if
                // Postgres stays away longer.
                Err(e) => beat_log.failure(&e),
            }
        }
    }
}

/// How long a worker waits for a server that broke a query's connection to answer
/// again, to tell a restart (crash) from a network failure.
const CRASH_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the stored result under `key` for ClickHouse to read (once per request that
/// sends it, see [`OpenData`]).
fn open_stored(results: crate::results::ResultStore, key: String) -> Box<OpenData<'static>> {
    Box::new(move || {
        let (results, key) = (results.clone(), key.clone());
        async move {
            let stream = results.read(&key, None).await.map_err(|e| {
                EngineError::Transport(format!("cannot read the stored result: {e}"))
            })?;
            Ok(stream.map(|r| r.map_err(std::io::Error::other)).boxed())
        }
        .boxed()
    })
}

/// Where an attempt's column metadata comes from (see [`Worker::column_plan`]).
struct ColumnPlan {
    /// The statement returns rows (a SELECT, SHOW, ...).
    has_rows: bool,
    /// What an earlier run of the same statement learned.
    known: Option<Vec<Column>>,
    /// The statement as DESCRIBE takes it, when it can be described.
    describable: Option<String>,
    /// DESCRIBE goes beside the query: the format has no header to read them from.
    describe_beside: bool,
}

impl ColumnPlan {
    /// Rows and nothing known yet: what this run finds is kept.
    fn learn(&self) -> bool {
        self.has_rows && self.known.is_none()
    }

    /// A reader of the format's header, when the columns are to be learned from it.
    fn header(&self, format: Format) -> Option<HeaderReader> {
        if self.learn() {
            HeaderReader::new(format)
        } else {
            None
        }
    }
}

/// One statement to run: a single execution's, or a step of a job.
#[derive(Clone, Copy)]
pub(super) struct Statement<'a> {
    pub sql: &'a str,
    pub parameters: &'a std::collections::BTreeMap<String, String>,
    pub query_id: &'a str,
    pub session: Option<&'a str>,
}

/// The execution's query parameters (none once erased).
pub(super) fn parameters_of(execution: &Execution) -> std::collections::BTreeMap<String, String> {
    execution
        .parameters
        .as_ref()
        .map(|p| p.0.0.clone())
        .unwrap_or_default()
}

/// What streaming a result learned.
struct Streamed {
    rows: Option<u64>,
    /// Where rows start (line formats).
    row_index: Option<crate::execution::RowIndex>,
    /// From the format's header; `None` when it has none or it could not be read.
    columns: Option<Vec<Column>>,
    /// `limits` stopped it.
    truncated: bool,
}

/// The text to send `server` for `body`, and whether its parameters are in it: a server
/// without query parameters (18.x) gets the values as typed literals, any other the
/// text as it is (the values then travel as `param_<name>`).
pub(super) fn for_server<'a>(
    server: &crate::clickhouse::ServerInfo,
    body: &'a str,
    parameters: &std::collections::BTreeMap<String, String>,
) -> Result<(std::borrow::Cow<'a, str>, bool), Failure> {
    if parameters.is_empty() || server.check_parameters().is_ok() {
        return Ok((std::borrow::Cow::Borrowed(body), false));
    }
    let text = sql::inline_parameters(body, parameters).map_err(|why| {
        Failure::from(EngineError::Unsupported(format!(
            "this server has no query parameters, and {why}"
        )))
    })?;
    Ok((std::borrow::Cow::Owned(text), true))
}

/// The stored result a follow-up query reads.
struct Source {
    key: String,
    format: Format,
    structure: String,
}

impl Worker {
    /// The stored result of execution `id` (the same tenant's, SUCCEEDED, with its
    /// object still there), as this tier's server can read it.
    async fn source(
        &self,
        execution: &Execution,
        id: uuid::Uuid,
        server: &crate::clickhouse::ServerInfo,
    ) -> Result<Source, Failure> {
        let gone = |why: String| Failure {
            transient: false,
            error: ErrorInfo::new(ErrorCode::ResultUnavailable, why),
        };
        let row = self
            .store
            .get(id, Some(&execution.tenant))
            .await
            .map_err(|e| Failure {
                transient: true,
                error: ErrorInfo::new(
                    ErrorCode::StorageError,
                    format!("cannot look up execution {id}: {e}"),
                ),
            })?;
        let meta = match row {
            Some(e) if e.status == crate::execution::Status::Succeeded => e.result.map(|r| r.0),
            _ => None,
        }
        .ok_or_else(|| {
            gone(format!(
                "the result of execution {id} is no longer available"
            ))
        })?;
        let columns = meta
            .columns
            .filter(|c| !c.is_empty())
            .ok_or_else(|| gone(format!("the result of execution {id} has no known columns")))?;
        server.check_input_format(meta.format)?;
        let structure = crate::clickhouse::external_structure(&columns, server.version)
            .map_err(|why| Failure::from(EngineError::Unsupported(why)))?;
        if let Err(e) = self.results.size(&meta.object_key).await {
            return Err(gone(format!(
                "the result of execution {id} is no longer available: {e}"
            )));
        }
        Ok(Source {
            key: meta.object_key,
            format: meta.format,
            structure,
        })
    }
}
