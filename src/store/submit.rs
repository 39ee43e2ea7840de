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
//! - No in-flight execution: a new PENDING row, and a NOTIFY for the tier's workers.

use std::collections::BTreeMap;

use sqlx::{FromRow, Row};
use uuid::Uuid;

use super::{CANCEL_CHANNEL, Result, Store, StoreError, WORK_CHANNEL, is_unique_violation};
use crate::execution::{ErrorInfo, Execution, Format, Status};

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
}

/// How many times a submit retries after losing a race for the in-flight key.
const MAX_RACES: usize = 20;

impl Store {
    pub async fn submit(&self, new: &NewExecution) -> Result<Submitted> {
        for _ in 0..MAX_RACES {
            let id = Uuid::now_v7();
            // Insert, or collapse into an identical in-flight execution. When the
            // in-flight one differs, the DO UPDATE's WHERE is false and no row comes back.
            let row = bind_new(
                sqlx::query(
                    "INSERT INTO executions (id, tenant, created_by, tier, query_id, \
                         query_hash, sql, format, settings, priority, max_attempts) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (tenant, query_id) WHERE status IN ('PENDING', 'RUNNING') \
                 DO UPDATE SET collapsed_count = executions.collapsed_count + 1 \
                     WHERE executions.query_hash = EXCLUDED.query_hash \
                     RETURNING *, (xmax::text = '0') AS inserted",
                ),
                id,
                new,
            )
            .fetch_optional(&self.pool)
            .await;
            match row {
                Ok(Some(row)) => {
                    let execution = Execution::from_row(&row)?;
                    if row.try_get::<bool, _>("inserted")? {
                        self.notify_work(&execution.tier).await?;
                        return Ok(Submitted::Created(execution));
                    }
                    return Ok(Submitted::Collapsed(execution));
                }
                Ok(None) => {
                    if let Some(done) = self.supersede(id, new).await? {
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

    /// Cancels the in-flight execution holding `new.query_id` and inserts `new` in its
    /// place, atomically. `None` when the race changed under us (the caller retries).
    async fn supersede(&self, id: Uuid, new: &NewExecution) -> Result<Option<Submitted>> {
        let mut tx = self.pool.begin().await?;
        let error = ErrorInfo {
            code: "SUPERSEDED".into(),
            message: format!(
                "superseded by execution {id}: a submission with the same query_id and \
                 different SQL, tier, format or settings"
            ),
            clickhouse_code: None,
        };
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
            sqlx::query(
                "INSERT INTO executions (id, tenant, created_by, tier, query_id, query_hash, \
                     sql, format, settings, priority, max_attempts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 RETURNING *",
            ),
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
        if old_status == Status::Running {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CANCEL_CHANNEL)
                .bind(old_id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WORK_CHANNEL)
            .bind(&execution.tier)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Submitted::Superseded {
            execution,
            superseded: old_id,
        }))
    }

    /// Wakes the tier's idle workers. Sent after the row is committed, so a woken worker
    /// always finds it; a lost notification only costs one poll interval.
    pub async fn notify_work(&self, tier: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WORK_CHANNEL)
            .bind(tier)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Binds `$1..$11` of an INSERT of `new` with id `id`, in the column order both INSERTs use.
fn bind_new<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    id: Uuid,
    new: &'q NewExecution,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(id)
        .bind(&new.tenant)
        .bind(&new.created_by)
        .bind(&new.tier)
        .bind(&new.query_id)
        .bind(&new.query_hash)
        .bind(&new.sql)
        .bind(new.format.as_str())
        .bind(sqlx::types::Json(&new.settings))
        .bind(new.priority)
        .bind(new.max_attempts)
}
