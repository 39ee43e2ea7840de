//! Submitting an execution, with in-flight deduplication.
//!
//! At most one execution per `(tenant, query_id)` is PENDING or RUNNING: the partial
//! unique index `executions_in_flight_key` enforces it, whatever the concurrency.
//! - Same key, same `query_hash`: the submit collapses into the in-flight execution and
//!   bumps its `collapsed_count` (one atomic `INSERT ... ON CONFLICT DO UPDATE`).
//! - Same key, different hash (the SQL, format, tier or settings changed): the in-flight
//!   execution is superseded. It becomes CANCELED with error `SUPERSEDED` and a pointer to
//!   its successor, in the same transaction that inserts the successor; a RUNNING one is
//!   also signalled on the cancel channel so its worker kills the ClickHouse query.
//! - No in-flight execution: a new PENDING row, and a wake-up of the tier's workers: in
//!   the INSERT itself when no other submit of this process is in progress, otherwise
//!   coalesced after the commit (see `notify`: a NOTIFY in a transaction serializes its
//!   commit with the others').
//!
//! Group commit: a submit that arrives while others of this process are in progress,
//! and has no queue cap, joins the next batch: one multi-row `INSERT ... ON CONFLICT`
//! and one commit for whatever queued up while the previous batch was written (see
//! [`write_submits`]). The batch settles new executions and collapses; the rest
//! (supersedes, a key twice in one batch, a failed batch) go one by one as above. A lone
//! submit does not wait for anyone.
//!
//! Reuse: with `max_age`, a SUCCEEDED execution of the same tenant, query_id and hash
//! that finished within it is returned as it is ([`Submitted::Reused`]) before any of
//! the above.
//!
//! Queue cap: when `max_queued` is set, a submit that would add a PENDING row while the
//! tenant already has that many on the tier is refused ([`Submitted::QueueFull`]). The
//! count and the insert run in one transaction under an advisory lock of
//! (tenant, tier), so concurrent submits cannot both slip under the cap. A submit that
//! collapses into, or supersedes, a PENDING execution adds nothing and is let through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::{FromRow, PgPool, Row};
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::{Channel, Result, Store, StoreError, is_unique_violation};
use crate::execution::{ErrorCode, ErrorInfo, Execution, Format, Secrets, Status};

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// A transaction, or a plain pooled connection when none is needed.
enum Conn<'t> {
    Tx(&'t mut Tx),
    Pool(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl Conn<'_> {
    fn as_mut(&mut self) -> &mut sqlx::PgConnection {
        match self {
            Conn::Tx(t) => t,
            Conn::Pool(c) => c,
        }
    }
}

/// The INSERT of a new execution, in two parts: the columns, and the VALUES tuple of one
/// execution (`$1` to `$26`, bound by [`bind_member`]). A batch of submits repeats the
/// tuple with its placeholders renumbered ([`batch_insert`]).
macro_rules! insert_columns {
    () => {
        "INSERT INTO executions (id, tenant, created_by, tier, query_id, query_hash, sql, \
         format, settings, priority, max_attempts, parameters, quota_key, max_running, task, \
         run_after, retention_ms, from_result, group_id, held, timeout_ms, start_deadline, job, \
         callback_url, row_limit, byte_limit) VALUES "
    };
}
macro_rules! insert_values {
    () => {
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
          coalesce($16, now()), $17, $18, $19, $20, $21, \
          coalesce($16, now()) + $22 * interval '1 millisecond', $23, $24, $25, $26)"
    };
}
macro_rules! insert_execution {
    () => {
        concat!(insert_columns!(), insert_values!())
    };
}

/// Placeholders of [`insert_values!`], bound by [`bind_member`].
const BINDS_PER_ROW: usize = 26;

/// A plain INSERT of a new execution (a group member: no collapse, no supersede);
/// [`bind_member`] binds it.
pub(super) const INSERT_RETURNING: &str = concat!(insert_execution!(), " RETURNING *");

/// What follows the VALUES of a submit: collapse into an identical in-flight execution
/// (`inserted` says which happened); no row when the in-flight one differs.
macro_rules! collapse_into_in_flight {
    () => {
        " ON CONFLICT (tenant, query_id) WHERE status IN ('PENDING', 'RUNNING') \
         DO UPDATE SET collapsed_count = executions.collapsed_count + 1 \
             WHERE executions.query_hash = EXCLUDED.query_hash \
         RETURNING *, (xmax::text = '0') AS inserted"
    };
}

/// The INSERT of a new execution that collapses into an identical in-flight one.
macro_rules! insert_or_collapse {
    () => {
        concat!(insert_execution!(), collapse_into_in_flight!())
    };
}

/// One submit in progress in this process; `alone` when no other was.
struct InFlight<'a> {
    count: &'a AtomicUsize,
    alone: bool,
}

impl InFlight<'_> {
    fn enter(count: &AtomicUsize) -> InFlight<'_> {
        let alone = count.fetch_add(1, Ordering::AcqRel) == 0;
        InFlight { count, alone }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A validated submission, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub tenant: String,
    pub created_by: String,
    pub tier: String,
    pub query_id: String,
    pub query_hash: String,
    pub sql: String,
    pub format: Format,
    pub settings: BTreeMap<String, String>,
    pub priority: i16,
    pub max_attempts: i32,
    /// Query parameters (secrets), sent as `param_<name>`.
    pub parameters: BTreeMap<String, String>,
    pub quota_key: String,
    /// Running cap of the tenant on this tier, checked when workers claim.
    pub max_running: Option<i32>,
    /// Queue cap of the tenant on this tier, checked here.
    pub max_queued: Option<i64>,
    /// The saved report it runs, if submitted as one.
    pub task: Option<String>,
    /// Not started before this (now when absent).
    pub run_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Retention of its result, when shorter than the tier's.
    pub retention_ms: Option<i64>,
    /// The execution whose stored result it queries.
    pub from_result: Option<Uuid>,
    /// Longest run of one attempt.
    pub timeout_ms: Option<i64>,
    /// How long it may wait for a worker after it becomes runnable (`run_after`).
    pub start_within_ms: Option<i64>,
    /// Reuse a SUCCEEDED execution of the same query_id and hash this recent.
    pub max_age_ms: Option<i64>,
    /// The plan of a multi-statement job.
    pub job: Option<crate::job::Job>,
    /// Where its end is POSTed (see `store::webhooks`).
    pub callback_url: Option<String>,
    /// Caps on the stored result.
    pub limits: crate::execution::Limits,
}

#[derive(Debug)]
pub enum Submitted {
    Created(Execution),
    /// An identical execution was already in flight: this is it.
    Collapsed(Execution),
    /// A new execution replaced an in-flight one with the same query_id.
    Superseded {
        execution: Execution,
        superseded: Uuid,
    },
    /// A recent enough SUCCEEDED execution of the same query_id and statement: it,
    /// and nothing runs (`max_age`).
    Reused(Execution),
    /// The tenant already has `cap` PENDING executions on this tier.
    QueueFull {
        cap: i64,
    },
}

/// How many times a submit retries after losing a race for the in-flight key.
const MAX_RACES: usize = 20;

impl Store {
    pub async fn submit(&self, new: &NewExecution) -> Result<Submitted> {
        if let Some(max_age) = new.max_age_ms
            && let Some(recent) = self.recent_success(new, max_age).await?
        {
            return Ok(Submitted::Reused(recent));
        }
        let _in_flight = InFlight::enter(&self.submits);
        let alone = _in_flight.alone;
        // Beside other submits, a plain one joins the next batch; what the batch could
        // not settle (a different in-flight statement, a duplicate key, an error) takes
        // the path below.
        if !alone
            && new.max_queued.is_none()
            && let Some((execution, inserted)) = self.submit_in_batch(new).await?
        {
            return Ok(self.settled(execution, inserted, false));
        }
        for _ in 0..MAX_RACES {
            // With a queue cap, the count and the insert share a transaction under the
            // (tenant, tier) lock; without one, the insert is a single statement.
            let mut tx = None;
            let mut conn = match new.max_queued {
                Some(cap) => {
                    let mut t = self.pool.begin().await?;
                    if !self.under_queue_cap(&mut t, new, cap).await? {
                        return Ok(Submitted::QueueFull { cap });
                    }
                    Conn::Tx(tx.insert(t))
                }
                None => Conn::Pool(self.pool.acquire().await?),
            };
            let id = Uuid::now_v7();
            // Insert, or collapse into an identical in-flight execution. When the
            // in-flight one differs, the DO UPDATE's WHERE is false and no row comes back.
            //
            // Workers are woken after the commit. A NOTIFY in the INSERT itself saves a
            // round trip of pickup latency but serializes the commit with every other
            // notifying commit (see `notify`): free for a submit with none beside it,
            // ruinous in a burst. So a lone submit notifies in its own statement, and
            // submits that overlap others leave it to the coalesced wake-ups.
            let row = if alone {
                let sql = concat!(
                    "WITH ins AS (",
                    insert_or_collapse!(),
                    ") SELECT ins.*, CASE WHEN ins.inserted \
                         THEN pg_notify($27, ins.tier) IS NULL END AS notified FROM ins"
                );
                bind_new(sqlx::query(sql), id, new).bind(Channel::Work.name())
            } else {
                bind_new(sqlx::query(insert_or_collapse!()), id, new)
            }
            .fetch_optional(conn.as_mut())
            .await;
            drop(conn);
            match row {
                Ok(Some(row)) => {
                    let execution = Execution::from_row(&row)?;
                    let inserted = row.try_get::<bool, _>("inserted")?;
                    if let Some(t) = tx {
                        t.commit().await?;
                    }
                    return Ok(self.settled(execution, inserted, alone));
                }
                Ok(None) => {
                    let tx = match tx {
                        Some(t) => t,
                        None => self.pool.begin().await?,
                    };
                    if let Some((done, (old_id, old_status))) = supersede(tx, id, new).await? {
                        if old_status == Status::Running {
                            self.notify(Channel::Cancel, &old_id.to_string()).await;
                        }
                        self.wake_workers(&new.tier);
                        return Ok(done);
                    }
                }
                // Two submits raced between the conflict check and the insert.
                Err(e) if is_unique_violation(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention(new.query_id.clone()))
    }

    /// A new execution (`inserted`), or the in-flight one it collapsed into; the tier's
    /// workers are woken after the commit unless the INSERT `notified` them itself.
    fn settled(&self, execution: Execution, inserted: bool, notified: bool) -> Submitted {
        if !inserted {
            return Submitted::Collapsed(execution);
        }
        if !notified {
            self.wake_workers(&execution.tier);
        }
        Submitted::Created(execution)
    }

    /// Inserts or collapses `new` in the next batch (see [`write_submits`]): the
    /// execution and whether it is new, or `None` when the batch did not settle it.
    async fn submit_in_batch(&self, new: &NewExecution) -> Result<Option<(Execution, bool)>> {
        let sender = self.submit_batches.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_submits(self.pool.clone(), rx));
            tx
        });
        let (answer, answered) = oneshot::channel();
        let pending = PendingSubmit {
            id: Uuid::now_v7(),
            new: new.clone(),
            answer,
        };
        // The writer ends only with the last clone of this store: a closed channel means
        // it crashed, and the submit goes alone.
        if sender.send(pending).is_err() {
            return Ok(None);
        }
        answered.await.unwrap_or(Ok(None))
    }

    /// The newest SUCCEEDED execution of `new`'s tenant, query_id and hash (the same
    /// statement, tier, format, settings and parameters) that finished within
    /// `max_age_ms` and has not expired.
    async fn recent_success(
        &self,
        new: &NewExecution,
        max_age_ms: i64,
    ) -> Result<Option<Execution>> {
        Ok(sqlx::query_as::<_, Execution>(
            "SELECT * FROM executions \
             WHERE tenant = $1 AND query_id = $2 AND query_hash = $3 AND status = 'SUCCEEDED' \
               AND finished_at > now() - $4 * interval '1 millisecond' \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(&new.tenant)
        .bind(&new.query_id)
        .bind(&new.query_hash)
        .bind(max_age_ms)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Takes the (tenant, tier) queue lock for the rest of `tx` and says whether `new`
    /// may be queued: the tenant has fewer than `cap` PENDING executions on the tier, or
    /// `new` replaces or joins one of them.
    async fn under_queue_cap(&self, tx: &mut Tx, new: &NewExecution, cap: i64) -> Result<bool> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 5898))")
            .bind(&new.tenant)
            .bind(&new.tier)
            .execute(&mut **tx)
            .await?;
        let (pending, replaces): (i64, bool) = sqlx::query_as(
            "SELECT count(*), coalesce(bool_or(query_id = $3), false) FROM executions \
             WHERE tenant = $1 AND tier = $2 AND status = 'PENDING'",
        )
        .bind(&new.tenant)
        .bind(&new.tier)
        .bind(&new.query_id)
        .fetch_one(&mut **tx)
        .await?;
        Ok(pending < cap || replaces)
    }
}

/// Cancels the in-flight execution holding `new.query_id` and inserts `new` in its
/// place, in `tx`; returns the outcome and the superseded execution's id and former
/// status (the caller signals its worker). `None` when the race changed under us (the
/// caller retries).
async fn supersede(
    mut tx: Tx,
    id: Uuid,
    new: &NewExecution,
) -> Result<Option<(Submitted, (Uuid, Status))>> {
    let error = ErrorInfo::new(
        ErrorCode::Superseded,
        format!(
            "superseded by execution {id}: a submission with the same query_id and \
             different SQL, tier, format or settings"
        ),
    );
    let old: Option<(Uuid, Status)> = sqlx::query_as(
        "WITH old AS ( \
                 SELECT id, status FROM executions \
                 WHERE tenant = $1 AND query_id = $2 AND status IN ('PENDING', 'RUNNING') \
                   AND query_hash <> $3 \
                 FOR UPDATE) \
             UPDATE executions e SET status = 'CANCELED', \
                 cancel_requested_at = now(), finished_at = now(), \
                 lease_expires_at = NULL, error = $4, superseded_by = $5 \
             FROM old WHERE e.id = old.id \
             RETURNING e.id, old.status",
    )
    .bind(&new.tenant)
    .bind(&new.query_id)
    .bind(&new.query_hash)
    .bind(sqlx::types::Json(&error))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((old_id, old_status)) = old else {
        return Ok(None);
    };
    let inserted = bind_new(
        sqlx::query(concat!(insert_execution!(), " RETURNING *")),
        id,
        new,
    )
    .fetch_one(&mut *tx)
    .await;
    let execution = match inserted {
        Ok(row) => Execution::from_row(&row)?,
        Err(e) if is_unique_violation(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    Ok(Some((
        Submitted::Superseded {
            execution,
            superseded: old_id,
        },
        (old_id, old_status),
    )))
}

/// Binds the placeholders of [`insert_values!`] for `new` with id `id`, outside any group.
fn bind_new<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    id: Uuid,
    new: &'q NewExecution,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    bind_member(query, id, new, None, false)
}

/// Binds the placeholders of [`insert_values!`] for `new` with id `id`, a member of `group` (`held`
/// when it must wait for a place).
pub(super) fn bind_member<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    id: Uuid,
    new: &'q NewExecution,
    group: Option<Uuid>,
    held: bool,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(id)
        .bind(&new.tenant)
        .bind(&new.created_by)
        .bind(&new.tier)
        .bind(&new.query_id)
        .bind(&new.query_hash)
        .bind(&new.sql)
        .bind(new.format)
        .bind(sqlx::types::Json(&new.settings))
        .bind(new.priority)
        .bind(new.max_attempts)
        .bind(if new.parameters.is_empty() {
            None
        } else {
            Some(sqlx::types::Json(Secrets(new.parameters.clone())))
        })
        .bind(&new.quota_key)
        .bind(new.max_running)
        .bind(&new.task)
        .bind(new.run_after)
        .bind(new.retention_ms)
        .bind(new.from_result)
        .bind(group)
        .bind(held)
        .bind(new.timeout_ms)
        .bind(new.start_within_ms)
        .bind(new.job.as_ref().map(sqlx::types::Json))
        .bind(new.callback_url.as_deref())
        .bind(new.limits.rows.and_then(|n| i64::try_from(n).ok()))
        .bind(new.limits.bytes.and_then(|n| i64::try_from(n).ok()))
}

/// Most submits written by one statement.
const SUBMIT_BATCH: usize = 64;

/// Batches of submits written at once by one process.
const SUBMIT_WRITERS: usize = 2;

/// A submit waiting for its batch (see [`Store::submit`]).
#[derive(Debug)]
pub struct PendingSubmit {
    id: Uuid,
    new: NewExecution,
    answer: oneshot::Sender<Result<Option<(Execution, bool)>>>,
}

/// Writes the submits of [`Store::submit_in_batch`], group-commit style: whatever queued
/// up while the writers were busy goes in the next batch, as one multi-row `INSERT ...
/// ON CONFLICT` and one commit. In a burst, a commit per submit (each a WAL flush) and a
/// statement per submit were most of what the submits cost Postgres.
///
/// [`SUBMIT_WRITERS`] batches may be written at once, on connections of their own; rows
/// go in key order, so two batches (of this process or another) that share keys wait
/// for each other rather than deadlock.
///
/// A batch settles what one statement can: new executions, and collapses into an
/// identical in-flight one. Everything else gets `None` and goes the single-submit way:
/// a second submit of a key already in the batch (one statement may not touch a row
/// twice), a submit whose in-flight twin has another statement (supersede), and every
/// submit of a batch that failed for another reason than an unreachable database, so
/// that one bad row fails only itself.
async fn write_submits(pool: PgPool, mut pending: mpsc::UnboundedReceiver<PendingSubmit>) {
    let pool = super::side_pool(
        SUBMIT_WRITERS as u32,
        pool.connect_options().as_ref().clone(),
    );
    let writers = Arc::new(Semaphore::new(SUBMIT_WRITERS));
    while let Some(first) = pending.recv().await {
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        // Gathered once a writer is free: what arrived meanwhile joins this batch.
        let mut keys = HashSet::new();
        let (mut batch, repeated): (Vec<_>, Vec<_>) =
            super::gather(first, &mut pending, SUBMIT_BATCH)
                .into_iter()
                .partition(|p| keys.insert(key_of(&p.new)));
        for p in repeated {
            let _ = p.answer.send(Ok(None));
        }
        batch.sort_by(|a, b| {
            (a.new.tenant.as_str(), a.new.query_id.as_str())
                .cmp(&(b.new.tenant.as_str(), b.new.query_id.as_str()))
        });
        let pool = pool.clone();
        tokio::spawn(async move {
            write_batch(&pool, batch).await;
            drop(writer);
        });
    }
}

/// Writes one batch of [`write_submits`] and answers each of its submits.
async fn write_batch(pool: &PgPool, batch: Vec<PendingSubmit>) {
    let started = std::time::Instant::now();
    let written = insert_batch(pool, &batch).await;
    crate::metrics::step("submit_batch", started);
    metrics::histogram!("sluice_submit_batch_rows").record(batch.len() as f64);
    match written {
        Ok(mut settled) => {
            for p in batch {
                let _ = p.answer.send(Ok(settled.remove(&key_of(&p.new))));
            }
        }
        Err(e) if e.is_unavailable() => {
            let e = Arc::new(e);
            for p in batch {
                let _ = p.answer.send(Err(StoreError::Batch(e.clone())));
            }
        }
        Err(_) => {
            for p in batch {
                let _ = p.answer.send(Ok(None));
            }
        }
    }
}

/// The in-flight key of a submit.
fn key_of(new: &NewExecution) -> (String, String) {
    (new.tenant.clone(), new.query_id.clone())
}

/// One INSERT of every submit of `batch` (their keys are distinct); what it settled, by
/// key: the new execution, or the identical in-flight one it collapsed into.
async fn insert_batch(
    pool: &PgPool,
    batch: &[PendingSubmit],
) -> Result<HashMap<(String, String), (Execution, bool)>> {
    let sql = batch_insert(batch.len());
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for p in batch {
        query = bind_new(query, p.id, &p.new);
    }
    let rows = query.fetch_all(pool).await?;
    let mut settled = HashMap::with_capacity(rows.len());
    for row in rows {
        let execution = Execution::from_row(&row)?;
        let inserted = row.try_get::<bool, _>("inserted")?;
        settled.insert(
            (execution.tenant.clone(), execution.query_id.clone()),
            (execution, inserted),
        );
    }
    Ok(settled)
}

/// The INSERT of `rows` submits: [`insert_values!`] once per row, each row's
/// placeholders after the previous row's.
fn batch_insert(rows: usize) -> String {
    let mut sql = String::from(insert_columns!());
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&renumbered(insert_values!(), row * BINDS_PER_ROW));
    }
    sql.push_str(collapse_into_in_flight!());
    sql
}

/// `template` with each placeholder `$n` replaced by `$(n + offset)`.
fn renumbered(template: &str, offset: usize) -> String {
    let mut out = String::with_capacity(template.len() + template.len() / 4);
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumbering_shifts_every_placeholder() {
        assert_eq!(
            renumbered("($1, $2, f($10), $1)", 26),
            "($27, $28, f($36), $27)"
        );
        assert_eq!(renumbered("($1, $2)", 0), "($1, $2)");
        assert_eq!(renumbered("no placeholders", 5), "no placeholders");
        assert_eq!(renumbered("a $ b $3", 1), "a $ b $4");
    }

    #[test]
    fn a_batch_repeats_the_row_with_its_own_placeholders() {
        let one = batch_insert(1);
        assert_eq!(one, insert_or_collapse!());
        let three = batch_insert(3);
        let last = 3 * BINDS_PER_ROW;
        assert!(three.contains(&format!("${last})")), "{three}");
        assert!(!three.contains(&format!("${}", last + 1)), "{three}");
        assert!(three.contains("($27, $28,"), "{three}");
        assert!(three.contains("($53, $54,"), "{three}");
        assert!(
            three.contains("coalesce($68, now()) + $74 * interval"),
            "{three}"
        );
        assert_eq!(three.matches(" ON CONFLICT ").count(), 1);
    }
}
