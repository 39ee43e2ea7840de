//! Reading executions for the API: one by id, or a newest-first page with keyset
//! pagination (the cursor is the last id of the previous page; ids are UUIDv7, so id order
//! is creation order and a page is one index range scan).

use uuid::Uuid;

use super::{Result, Store};
use crate::execution::{Execution, Status};

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// `None` lists every tenant (admins).
    pub tenant: Option<String>,
    pub query_id: Option<String>,
    pub status: Option<Status>,
    pub tier: Option<String>,
    pub task: Option<String>,
    /// Only executions older than this id.
    pub before: Option<Uuid>,
    pub limit: i64,
}

impl Store {
    /// `tenant = None` reads any tenant's execution.
    pub async fn get(&self, id: Uuid, tenant: Option<&str>) -> Result<Option<Execution>> {
        let row = sqlx::query_as::<_, Execution>(
            "SELECT * FROM executions WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    pub async fn list(&self, f: &ListFilter) -> Result<Vec<Execution>> {
        let rows = sqlx::query_as::<_, Execution>(
            "SELECT * FROM executions \
             WHERE ($1::text IS NULL OR tenant = $1) \
               AND ($2::text IS NULL OR query_id = $2) \
               AND ($3::execution_status IS NULL OR status = $3) \
               AND ($4::text IS NULL OR tier = $4) \
               AND ($5::uuid IS NULL OR id < $5) \
               AND ($7::text IS NULL OR task = $7) \
             ORDER BY id DESC \
             LIMIT $6",
        )
        .bind(&f.tenant)
        .bind(&f.query_id)
        .bind(f.status)
        .bind(&f.tier)
        .bind(f.before)
        .bind(f.limit)
        .bind(&f.task)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

/// Executions of one tier in one status.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StatusCount {
    pub tier: String,
    pub status: Status,
    pub count: i64,
}

/// The PENDING side of one tier.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingStats {
    pub tier: String,
    /// PENDING and past `run_after`: what idle workers would claim now.
    pub runnable: i64,
    pub oldest_age_seconds: f64,
}

#[derive(Debug, Clone)]
pub struct QueueStats {
    pub by_status: Vec<StatusCount>,
    pub pending: Vec<PendingStats>,
    pub leader: bool,
}

impl Store {
    /// The queue's shape for `/metrics`. Counting by status scans the table, which the
    /// bookkeeper's purge keeps bounded.
    pub async fn queue_stats(&self) -> Result<QueueStats> {
        let by_status = sqlx::query_as::<_, StatusCount>(
            "SELECT tier, status, count(*) AS count FROM executions GROUP BY tier, status",
        )
        .fetch_all(&self.pool)
        .await?;
        let pending = sqlx::query_as::<_, PendingStats>(
            "SELECT tier, count(*) FILTER (WHERE run_after <= now()) AS runnable, \
                 COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 \
                     AS oldest_age_seconds \
             FROM executions WHERE status = 'PENDING' GROUP BY tier",
        )
        .fetch_all(&self.pool)
        .await?;
        let leader = self.leader().await?.is_some();
        Ok(QueueStats {
            by_status,
            pending,
            leader,
        })
    }
}

impl Store {
    /// The newest execution of each of `query_ids` (per tenant; `tenant = None` looks
    /// in every tenant), optionally only among those with `status`. One index probe
    /// per query_id on `(tenant, query_id, id DESC)`.
    pub async fn latest_by_query_id(
        &self,
        tenant: Option<&str>,
        query_ids: &[String],
        status: Option<Status>,
    ) -> Result<Vec<Execution>> {
        let rows = sqlx::query_as::<_, Execution>(
            "SELECT DISTINCT ON (tenant, query_id) * FROM executions \
             WHERE ($1::text IS NULL OR tenant = $1) AND query_id = ANY($2) \
               AND ($3::execution_status IS NULL OR status = $3) \
             ORDER BY tenant, query_id, id DESC",
        )
        .bind(tenant)
        .bind(query_ids)
        .bind(status)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

/// What a client is told about when an execution will start and how long it will take.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Estimates {
    /// PENDING and runnable: 1 + the executions of its tier and tenant claimed before it.
    pub queue_position: Option<i64>,
    /// PENDING: when it should start, from the tier's recent run times and how many run
    /// at once now (never before its `run_after`).
    pub estimated_start: Option<chrono::DateTime<chrono::Utc>>,
    /// Mean run time of the tenant's last 20 successes of the same statement.
    pub estimated_duration_ms: Option<f64>,
}

impl Store {
    /// [`Estimates`] of `e`: index probes only (claim order, the tier's last 100
    /// successes, the statement's last 20).
    pub async fn estimates(&self, e: &Execution) -> Result<Estimates> {
        let row = sqlx::query_as::<_, Estimates>(
            "WITH ahead AS ( \
                 SELECT count(*) AS n FROM executions \
                 WHERE $6 AND status = 'PENDING' AND tier = $1 AND tenant = $2 AND NOT held \
                   AND run_after <= now() AND (priority > $3 OR (priority = $3 AND id < $4))), \
             tier_runs AS ( \
                 SELECT avg(extract(epoch FROM finished_at - started_at) * 1000) AS ms FROM ( \
                     SELECT started_at, finished_at FROM executions \
                     WHERE tier = $1 AND status = 'SUCCEEDED' AND started_at IS NOT NULL \
                     ORDER BY finished_at DESC LIMIT 100) t), \
             running AS ( \
                 SELECT count(*) AS n FROM executions WHERE tier = $1 AND status = 'RUNNING'), \
             same AS ( \
                 SELECT avg(extract(epoch FROM finished_at - started_at) * 1000) AS ms FROM ( \
                     SELECT started_at, finished_at FROM executions \
                     WHERE tenant = $2 AND query_hash = $5 AND status = 'SUCCEEDED' \
                       AND started_at IS NOT NULL \
                     ORDER BY finished_at DESC LIMIT 20) s) \
             SELECT CASE WHEN $6 THEN ahead.n + 1 END AS queue_position, \
                    CASE WHEN $7 THEN greatest($8::timestamptz, now() + \
                        (coalesce(tier_runs.ms, 0) * ahead.n / greatest(running.n, 1))::float8 \
                        * interval '1 millisecond') END AS estimated_start, \
                    same.ms::float8 AS estimated_duration_ms \
             FROM ahead, tier_runs, running, same",
        )
        .bind(&e.tier)
        .bind(&e.tenant)
        .bind(e.priority)
        .bind(e.id)
        .bind(&e.query_hash)
        .bind(e.status == Status::Pending && !e.held && e.run_after <= chrono::Utc::now())
        .bind(e.status == Status::Pending)
        .bind(e.run_after)
        .fetch_one(&self.pool)
        .await?;
        Ok(row)
    }
}

/// A tenant's work in flight on one tier.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct TierLoad {
    pub tier: String,
    pub pending: i64,
    pub running: i64,
    pub oldest_pending_seconds: Option<f64>,
}

impl Store {
    /// The tenant's PENDING and RUNNING executions per tier (the claim indexes).
    pub async fn tier_load(&self, tenant: &str) -> Result<Vec<TierLoad>> {
        Ok(sqlx::query_as::<_, TierLoad>(
            "SELECT tier, count(*) FILTER (WHERE status = 'PENDING') AS pending, \
                    count(*) FILTER (WHERE status = 'RUNNING') AS running, \
                    extract(epoch FROM now() - min(created_at) \
                        FILTER (WHERE status = 'PENDING'))::float8 AS oldest_pending_seconds \
             FROM executions WHERE tenant = $1 AND status IN ('PENDING', 'RUNNING') \
             GROUP BY tier",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }
}
