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
