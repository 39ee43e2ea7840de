//! The worker's side of the queue.
//!
//! Semantics:
//! - **Claim** takes up to `n` runnable rows of one tier in one statement, skipping rows
//!   other workers have locked (`FOR UPDATE SKIP LOCKED`). Each claim bumps `attempt`,
//!   which becomes the lease's fencing token, and sets `lease_expires_at`.
//! - **Fairness across tenants**: the claim walks the tenants with PENDING work on the
//!   tier (a loose index scan, one index probe per tenant) and takes from each tenant its
//!   head, highest priority first, then oldest. A tenant's k-th candidate gets the turn
//!   `running + k`, where `running` counts its executions already RUNNING on the tier;
//!   the smallest turns win (oldest first on ties). So a tenant with a backlog of a
//!   thousand and one that just arrived alternate, and the newcomer catches up to the
//!   others' running count first. Priority orders work within a tenant only.
//! - **Running caps**: a row carries its tenant's `max_running` for the tier (set at
//!   submit). A candidate whose turn would exceed it is not taken. When caps are
//!   configured (`capped`), claims of one tier hold a transaction-scoped advisory lock,
//!   so two workers cannot both see room under a cap and exceed it together; without
//!   caps the claim is one statement and workers never wait for each other.
//! - **Scheduled and held rows wait**: a row is runnable once `run_after` has passed
//!   (a client's `run_after`, or a retry's backoff) and unless it is a held group member
//!   (see `groups`: a trigger releases one as a member of its group ends); one never
//!   started and past its `start_deadline` is left for the bookkeeper to fail (a retry
//!   is not held to it).
//! - **Every later write is fenced** by [`Fence`]: `id`, `attempt`, `worker_id` and
//!   `status = 'RUNNING'`. A worker whose lease was reclaimed, or whose execution was
//!   canceled or superseded, updates zero rows and learns that it must stop.
//! - **Completions** (RUNNING -> SUCCEEDED) of all the process's workers are written in
//!   batches: one fenced UPDATE for whatever queued up while the previous one was being
//!   written, so a burst of short executions costs one commit per batch.
//! - **Heartbeat** renews the lease and stores progress in one UPDATE of columns that are
//!   in no index (a HOT update), and reports whether a cancel was requested.
//! - **Hand back** (graceful shutdown) returns a RUNNING execution to PENDING without
//!   charging it an attempt.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::types::Json;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Channel, Result, Store, StoreError, millis};
use crate::execution::{ErrorCode, ErrorInfo, Execution, Progress, ResultMeta};

/// Identifies one claim of one execution: the lease's fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub id: Uuid,
    pub attempt: i32,
    pub worker_id: String,
}

impl Fence {
    pub fn of(execution: &Execution, worker_id: &str) -> Fence {
        Fence {
            id: execution.id,
            attempt: execution.attempt,
            worker_id: worker_id.to_string(),
        }
    }
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The lease is renewed; keep going.
    Alive,
    /// The lease is renewed, and a client asked to cancel.
    CancelRequested,
    /// The fence matched nothing: the execution was reclaimed, canceled or superseded.
    Lost,
}

/// What a cancel request found.
#[derive(Debug)]
pub enum CancelOutcome {
    /// It was PENDING and is now CANCELED.
    Canceled(Execution),
    /// It is RUNNING; its worker has been signalled and will stop it.
    Requested(Execution),
    /// It had already finished; nothing changed.
    AlreadyFinished(Execution),
    NotFound,
}

/// Claims up to `{limit}` executions of tier `$1` for worker `$2` with a lease of `$3`
/// ms, fairly across tenants and within running caps (see the module comment).
///
/// The limit is written into the text, not bound: Postgres plans a prepared statement
/// once for all parameter values, and with the limit unknown it expects thousands of
/// candidates and joins them by a sequential scan of the whole table, a cost that grows
/// with every finished row (measured: 6.8 ms per claim during a 10,000-execution
/// backlog). With the limit known each worker's few texts (one per free-slot count) get
/// plans that touch only the candidates.
///
/// Only the best `{candidates}` (a few times the limit) are looked up and locked: with a
/// hundred tenants pending, looking up every tenant's candidates took 6 of a claim's 9
/// ms. Rows other claims hold are skipped; if more than that many are in the way at
/// once, this claim takes fewer and the next one the rest.
const CLAIM: &str = "WITH RECURSIVE tenants(tenant) AS ( \
                 (SELECT tenant FROM executions \
                  WHERE status = 'PENDING' AND tier = $1 ORDER BY tenant LIMIT 1) \
                 UNION ALL \
                 SELECT (SELECT e.tenant FROM executions e \
                         WHERE e.status = 'PENDING' AND e.tier = $1 AND e.tenant > t.tenant \
                         ORDER BY e.tenant LIMIT 1) \
                 FROM tenants t WHERE t.tenant IS NOT NULL), \
             running AS ( \
                 SELECT tenant, count(*) AS n FROM executions \
                 WHERE status = 'RUNNING' AND tier = $1 GROUP BY tenant), \
             load AS ( \
                 SELECT t.tenant, coalesce(r.n, 0) AS running \
                 FROM tenants t LEFT JOIN running r ON r.tenant = t.tenant \
                 WHERE t.tenant IS NOT NULL), \
             level AS ( \
                 SELECT min(m) AS m FROM ( \
                     SELECT (SELECT min(running) FROM load) + g AS m \
                     FROM generate_series(1, {limit}) AS g) levels \
                 WHERE (SELECT sum(greatest(0, levels.m - running)) FROM load) >= {limit}), \
             candidates AS ( \
                 SELECT c.id, l.running + c.rank AS turn \
                 FROM load l \
                 CROSS JOIN level \
                 CROSS JOIN LATERAL ( \
                     SELECT e.id, e.max_running, \
                            row_number() OVER (ORDER BY e.priority DESC, e.id) AS rank \
                     FROM executions e \
                     WHERE e.status = 'PENDING' AND e.tier = $1 AND e.tenant = l.tenant \
                       AND e.run_after <= now() AND NOT e.held \
                       AND (e.start_deadline IS NULL OR e.start_deadline > now() OR e.attempt > 0) \
                     ORDER BY e.priority DESC, e.id \
                     LIMIT least({limit}, greatest(1, 2 * (coalesce(level.m, 0) - l.running)))) c \
                 WHERE c.max_running IS NULL OR l.running + c.rank <= c.max_running), \
             picked AS ( \
                 SELECT e.id FROM ( \
                     SELECT id, turn FROM candidates ORDER BY turn, id LIMIT {candidates}) c \
                 JOIN executions e ON e.id = c.id \
                 WHERE e.status = 'PENDING' \
                 ORDER BY c.turn, e.id \
                 LIMIT {limit} \
                 FOR UPDATE OF e SKIP LOCKED) \
             UPDATE executions SET status = 'RUNNING', attempt = attempt + 1, \
                 worker_id = $2, lease_expires_at = now() + $3 * interval '1 millisecond', \
                 started_at = clock_timestamp(), progress = NULL \
             WHERE id IN (SELECT id FROM picked) \
             RETURNING *";

/// Candidates looked up per execution a claim asks for (see [`CLAIM`]).
const CANDIDATES_PER_SLOT: i64 = 4;

impl Store {
    pub async fn claim(
        &self,
        tier: &str,
        worker_id: &str,
        n: i64,
        lease: Duration,
        capped: bool,
    ) -> Result<Vec<Execution>> {
        let n = n.max(1);
        let sql = CLAIM
            .replace("{limit}", &n.to_string())
            .replace("{candidates}", &(n * CANDIDATES_PER_SLOT).to_string());
        let query = sqlx::query_as::<_, Execution>(sqlx::AssertSqlSafe(sql))
            .bind(tier)
            .bind(worker_id)
            .bind(millis(lease));
        if !capped {
            return Ok(query.fetch_all(&self.pool).await?);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('sluice-claim/' || $1, 0))")
            .bind(tier)
            .execute(&mut *tx)
            .await?;
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    pub async fn heartbeat(
        &self,
        fence: &Fence,
        lease: Duration,
        progress: Option<&Progress>,
    ) -> Result<Beat> {
        let row: Option<(bool,)> = sqlx::query_as(
            "UPDATE executions SET \
                 lease_expires_at = now() + $4 * interval '1 millisecond', \
                 progress = COALESCE($5, progress) \
             WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND status = 'RUNNING' \
             RETURNING cancel_requested_at IS NOT NULL",
        )
        .bind(fence.id)
        .bind(fence.attempt)
        .bind(&fence.worker_id)
        .bind(millis(lease))
        .bind(progress.map(sqlx::types::Json))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => Beat::Lost,
            Some((true,)) => Beat::CancelRequested,
            Some((false,)) => Beat::Alive,
        })
    }

    /// RUNNING -> SUCCEEDED. `false` when the fence no longer matches: the caller must
    /// then delete the object it wrote, since no execution points at it.
    ///
    /// Written in batches, group-commit style, with the completions of every worker of
    /// this process: when no batch is being written this one goes at once; those that
    /// arrive meanwhile go together in the next statement. One round trip and one
    /// commit per batch rather than per execution (and the `sluice_finished` trigger's
    /// NOTIFY serializes one commit per batch, see `notify`).
    pub async fn complete(
        &self,
        fence: &Fence,
        result: &ResultMeta,
        progress: &Progress,
    ) -> Result<bool> {
        let sender = self.completions.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_completions(self.pool.clone(), rx));
            tx
        });
        let (written, answer) = oneshot::channel();
        let pending = PendingCompletion {
            fence: fence.clone(),
            result: result.clone(),
            progress: progress.clone(),
            written,
        };
        // The writer ends only with the last clone of this store, so a closed channel
        // means it crashed: report that as an outage the caller may retry.
        sender
            .send(pending)
            .map_err(|_| StoreError::Unavailable(sqlx::Error::WorkerCrashed))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::WorkerCrashed))?
    }

    /// RUNNING -> FAILED with the statistics of how far it got; the error joins the
    /// attempt history.
    pub async fn fail(
        &self,
        fence: &Fence,
        error: &ErrorInfo,
        progress: &Progress,
    ) -> Result<bool> {
        let done = fenced(
            "UPDATE executions SET status = 'FAILED', finished_at = now(), \
                 lease_expires_at = NULL, error = $4, progress = $5, \
                 attempts = attempts || jsonb_build_array(jsonb_build_object( \
                     'attempt', attempt, 'worker_id', worker_id, 'at', now(), 'error', $4)) \
             WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND status = 'RUNNING'",
            fence,
        )
        .bind(sqlx::types::Json(error))
        .bind(Json(progress))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the steps of a RUNNING job as they start and end.
    pub async fn record_job(&self, fence: &Fence, job: &crate::job::Job) -> Result<bool> {
        let done = fenced(
            "UPDATE executions SET job = $4 \
             WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND status = 'RUNNING'",
            fence,
        )
        .bind(Json(job))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// RUNNING -> PENDING after a transient failure: runs again after `delay`, and the
    /// error joins the attempt history.
    pub async fn retry(&self, fence: &Fence, error: &ErrorInfo, delay: Duration) -> Result<bool> {
        let done = fenced(
            "UPDATE executions SET status = 'PENDING', worker_id = NULL, \
                 lease_expires_at = NULL, progress = NULL, error = $4, \
                 run_after = now() + $5 * interval '1 millisecond', \
                 attempts = attempts || jsonb_build_array(jsonb_build_object( \
                     'attempt', attempt, 'worker_id', worker_id, 'at', now(), 'error', $4)) \
             WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND status = 'RUNNING'",
            fence,
        )
        .bind(sqlx::types::Json(error))
        .bind(millis(delay))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// RUNNING -> CANCELED, once the worker has stopped the query.
    pub async fn mark_canceled(&self, fence: &Fence) -> Result<bool> {
        let error = ErrorInfo::new(
            ErrorCode::Canceled,
            "canceled on request; the ClickHouse query was killed",
        );
        let done = fenced(
            "UPDATE executions SET status = 'CANCELED', finished_at = now(), \
                 lease_expires_at = NULL, error = $4 \
             WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND status = 'RUNNING'",
            fence,
        )
        .bind(Json(&error))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// RUNNING -> PENDING on graceful shutdown. The attempt it used is given back (by
    /// raising `max_attempts`), since the execution did nothing wrong.
    pub async fn hand_back(&self, fence: &Fence) -> Result<bool> {
        let done = fenced(
            "UPDATE executions SET status = 'PENDING', worker_id = NULL, \
                 lease_expires_at = NULL, progress = NULL, run_after = now(), \
                 max_attempts = max_attempts + 1 \
             WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND status = 'RUNNING' \
             RETURNING tier",
            fence,
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = done else { return Ok(false) };
        let tier: String = sqlx::Row::try_get(&row, "tier")?;
        self.notify(Channel::Work, &tier).await;
        Ok(true)
    }

    /// A client's cancel. PENDING becomes CANCELED at once; RUNNING gets
    /// `cancel_requested_at` and a NOTIFY to its worker, which kills the ClickHouse query
    /// and then marks it CANCELED.
    pub async fn request_cancel(&self, id: Uuid, tenant: Option<&str>) -> Result<CancelOutcome> {
        let row = sqlx::query_as::<_, Execution>(
            "UPDATE executions SET \
                 status = CASE WHEN status = 'PENDING' THEN 'CANCELED'::execution_status \
                          ELSE status END, \
                 finished_at = CASE WHEN status = 'PENDING' THEN now() ELSE finished_at END, \
                 error = CASE WHEN status = 'PENDING' THEN $3 ELSE error END, \
                 cancel_requested_at = COALESCE(cancel_requested_at, now()) \
             WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) \
               AND status IN ('PENDING', 'RUNNING') \
             RETURNING *",
        )
        .bind(id)
        .bind(tenant)
        .bind(Json(ErrorInfo::new(
            ErrorCode::Canceled,
            "canceled on request before it started",
        )))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(e) if e.status == crate::execution::Status::Running => {
                self.notify(Channel::Cancel, &id.to_string()).await;
                Ok(CancelOutcome::Requested(e))
            }
            Some(e) => Ok(CancelOutcome::Canceled(e)),
            None => Ok(match self.get(id, tenant).await? {
                Some(e) => CancelOutcome::AlreadyFinished(e),
                None => CancelOutcome::NotFound,
            }),
        }
    }
}

/// An UPDATE whose `$1, $2, $3` are the fence's id, attempt and worker; its WHERE clause
/// must say `id = $1 AND attempt = $2 AND worker_id = $3 AND status = 'RUNNING'`.
fn fenced<'q>(
    sql: &'static str,
    fence: &'q Fence,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(fence.id)
        .bind(fence.attempt)
        .bind(&fence.worker_id)
}

/// Most completions written by one statement.
const COMPLETION_BATCH: usize = 256;

/// A completion waiting for its batch (see [`Store::complete`]).
#[derive(Debug)]
pub struct PendingCompletion {
    fence: Fence,
    result: ResultMeta,
    progress: Progress,
    written: oneshot::Sender<Result<bool>>,
}

/// Writes the completions of [`Store::complete`]: whatever queued up while the previous
/// batch was being written goes in the next, in one fenced UPDATE.
///
/// On a connection of its own that keeps one generic plan for the statement: Postgres
/// would otherwise plan it anew for every batch (its arrays change length), which cost
/// about as much as running it. That plan is made once, often when the table is nearly
/// empty, and a plan made then scans the whole table for every batch (measured: at
/// 20,000 rows, 4,356 sequential scans in one bench run and a drain 40 % slower), so
/// sequential scans are off on this connection: looking the batch's ids up in the
/// primary key is right at any size.
async fn write_completions(pool: PgPool, mut pending: mpsc::UnboundedReceiver<PendingCompletion>) {
    let options = pool.connect_options().as_ref().clone().options([
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
    ]);
    let pool = super::side_pool(1, options);
    while let Some(first) = pending.recv().await {
        let mut batch = super::gather(first, &mut pending, COMPLETION_BATCH);
        // One lock order for every batch, whichever process writes it.
        batch.sort_by_key(|p| p.fence.id);
        let started = std::time::Instant::now();
        let written = complete_batch(&pool, &batch).await;
        crate::metrics::step("complete_batch", started);
        metrics::histogram!("sluice_completion_batch_rows").record(batch.len() as f64);
        match written {
            Ok(written) => {
                for p in batch {
                    let done = written.contains(&(p.fence.id, p.fence.attempt));
                    let _ = p.written.send(Ok(done));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for p in batch {
                    let _ = p.written.send(Err(StoreError::Batch(e.clone())));
                }
            }
        }
    }
}

/// RUNNING -> SUCCEEDED for each completion whose fence still holds; returns the
/// `(id, attempt)` of those written.
///
/// The fence compares `status::text`, not `status`: written plainly, the condition matches
/// the predicate of the partial index `executions_running`, and the planner (which
/// believes few rows are RUNNING) scans that index whole, over every entry left dead by
/// completions since the last vacuum, instead of looking up the batch's ids in the
/// primary key.
async fn complete_batch(pool: &PgPool, batch: &[PendingCompletion]) -> Result<Vec<(Uuid, i32)>> {
    let ids: Vec<Uuid> = batch.iter().map(|p| p.fence.id).collect();
    let attempts: Vec<i32> = batch.iter().map(|p| p.fence.attempt).collect();
    let workers: Vec<&str> = batch.iter().map(|p| p.fence.worker_id.as_str()).collect();
    let results: Vec<Json<&ResultMeta>> = batch.iter().map(|p| Json(&p.result)).collect();
    let progress: Vec<Json<&Progress>> = batch.iter().map(|p| Json(&p.progress)).collect();
    let written = sqlx::query_as(
        "UPDATE executions e SET status = 'SUCCEEDED', finished_at = now(), \
             lease_expires_at = NULL, result = c.result, progress = c.progress \
         FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::jsonb[], $5::jsonb[]) \
             AS c(id, attempt, worker_id, result, progress) \
         WHERE e.id = c.id AND e.attempt = c.attempt AND e.worker_id = c.worker_id \
           AND e.status::text = 'RUNNING' \
         RETURNING e.id, e.attempt",
    )
    .bind(ids)
    .bind(attempts)
    .bind(workers)
    .bind(results)
    .bind(progress)
    .fetch_all(pool)
    .await?;
    Ok(written)
}
