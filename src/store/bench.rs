//! Statements only `sluice bench` runs: its scratch database, the timings of executions
//! it measured, and rows inserted directly (bypassing the api) to measure claims against
//! a large table. Nothing here runs in a serving process.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Result, Store};

/// When one execution was created, started and finished.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Timings {
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How a set of executions (those whose SQL ends with a marker) went.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunStats {
    pub executions: i64,
    pub succeeded: i64,
    pub unfinished: i64,
    pub first_created: Option<DateTime<Utc>>,
    pub first_started: Option<DateTime<Utc>>,
    pub last_finished: Option<DateTime<Utc>>,
    /// Most executions RUNNING at one moment, from `started_at` / `finished_at`.
    pub most_running: Option<i64>,
    /// Mean `finished_at - started_at`, in ms.
    pub mean_run_ms: Option<f64>,
    /// Executions RUNNING at once on average, first started -> last finished.
    pub mean_running: Option<f64>,
}

impl Store {
    /// Drops (if present) and creates database `name`. `name` is the bench's own, never
    /// a client's.
    pub async fn recreate_database(&self, name: &str) -> Result<()> {
        self.drop_database(name).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn drop_database(&self, name: &str) -> Result<()> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn timings(&self, id: Uuid) -> Result<Timings> {
        Ok(sqlx::query_as(
            "SELECT created_at, started_at, finished_at FROM executions WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Executions whose SQL ends with `marker`.
    pub async fn run_stats(&self, marker: &str) -> Result<RunStats> {
        Ok(sqlx::query_as(
            "WITH run AS (SELECT * FROM executions WHERE sql LIKE '%' || $1), \
             edges AS ( \
                 SELECT started_at AS at, 1 AS delta FROM run WHERE started_at IS NOT NULL \
                 UNION ALL \
                 SELECT finished_at, -1 FROM run WHERE finished_at IS NOT NULL), \
             running AS ( \
                 SELECT sum(delta) OVER (ORDER BY at, delta) AS n FROM edges) \
             SELECT count(*) AS executions, \
                 count(*) FILTER (WHERE status = 'SUCCEEDED') AS succeeded, \
                 count(*) FILTER (WHERE status IN ('PENDING', 'RUNNING')) AS unfinished, \
                 min(created_at) AS first_created, min(started_at) AS first_started, \
                 max(finished_at) AS last_finished, \
                 (SELECT max(n)::int8 FROM running) AS most_running, \
                 (avg(extract(epoch FROM finished_at - started_at)) * 1000)::float8 \
                     AS mean_run_ms, \
                 (sum(extract(epoch FROM finished_at - started_at)) \
                     / nullif(extract(epoch FROM max(finished_at) - min(started_at)), 0) \
                 )::float8 AS mean_running \
             FROM run",
        )
        .bind(marker)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Whether any execution is PENDING or RUNNING (two probes of partial indexes).
    pub async fn any_unfinished(&self) -> Result<bool> {
        let (any,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM executions WHERE status = 'PENDING') \
                 OR EXISTS (SELECT 1 FROM executions WHERE status = 'RUNNING')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(any)
    }

    /// Inserts `n` executions of `tier` over `tenants` tenants directly: SUCCEEDED ones
    /// with a result (as a busy day leaves them) when `finished`, otherwise PENDING.
    /// Status triggers are off for this session only (the bench's own database).
    pub async fn insert_rows(
        &self,
        n: i64,
        tier: &str,
        tenants: i64,
        finished: bool,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SET session_replication_role = replica")
            .execute(&mut *conn)
            .await?;
        // UUIDv7-shaped ids in time order: 48 bits of milliseconds, then random bits.
        let inserted = sqlx::query(
            "INSERT INTO executions (id, tenant, created_by, tier, query_id, query_hash, sql, \
                 format, status, max_attempts, attempt, created_at, started_at, finished_at, \
                 result, progress) \
             SELECT (lpad(to_hex((extract(epoch FROM t) * 1000)::int8), 12, '0') || '7' \
                     || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid, \
                 'tenant-' || (i % $3), 'bench', $2, h, h, 'SELECT ' || i, 'JSONEachRow', \
                 CASE WHEN $4 THEN 'SUCCEEDED' ELSE 'PENDING' END::execution_status, 3, \
                 CASE WHEN $4 THEN 1 ELSE 0 END, t, \
                 CASE WHEN $4 THEN t END, CASE WHEN $4 THEN t END, \
                 CASE WHEN $4 THEN jsonb_build_object('object_key', 'results/x/1.ndjson', \
                     'format', 'JSONEachRow', 'content_type', 'application/x-ndjson', \
                     'bytes', 10, 'rows', 1, 'columns', '[]'::jsonb) END, \
                 CASE WHEN $4 THEN '{}'::jsonb END \
             FROM generate_series(1, $1) AS i, \
                 LATERAL (SELECT md5(random()::text || i) AS h, \
                     now() - interval '1 day' + i * interval '1 millisecond' AS t) x",
        )
        .bind(n)
        .bind(tier)
        .bind(tenants.max(1))
        .bind(finished)
        .execute(&mut *conn)
        .await;
        sqlx::query("SET session_replication_role = DEFAULT")
            .execute(&mut *conn)
            .await?;
        inserted?;
        sqlx::query("VACUUM ANALYZE executions")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// RUNNING -> SUCCEEDED without a result, for executions the bench claimed itself.
    pub async fn finish_claimed(&self, ids: &[Uuid]) -> Result<()> {
        sqlx::query(
            "UPDATE executions SET status = 'SUCCEEDED', finished_at = now(), \
                 lease_expires_at = NULL \
             WHERE id = ANY($1) AND status = 'RUNNING'",
        )
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
