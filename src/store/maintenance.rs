//! The bookkeeper's statements. Each works on a bounded batch, locks rows with
//! `SKIP LOCKED` so it never waits on a worker, and commits at once.

use std::time::Duration;

use uuid::Uuid;

use super::{Channel, Result, Store, millis};
use crate::execution::{ErrorCode, Status};

/// An execution whose worker stopped renewing its lease, after the reclaim.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reclaimed {
    pub id: Uuid,
    pub tier: String,
    /// The attempt that was lost: its ClickHouse query may still be running.
    pub lost_attempt: i32,
    /// PENDING (will run again), FAILED (out of attempts) or CANCELED (cancel requested).
    pub status: Status,
}

impl Store {
    /// Moves RUNNING executions with an expired lease back to PENDING (after `backoff`),
    /// or to FAILED when their attempts are used up, or to CANCELED when a cancel was
    /// requested while their worker was gone.
    pub async fn reclaim_expired(&self, batch: i64, backoff: Duration) -> Result<Vec<Reclaimed>> {
        let rows = sqlx::query_as::<_, Reclaimed>(
            "UPDATE executions e SET \
                 status = CASE \
                     WHEN e.cancel_requested_at IS NOT NULL THEN 'CANCELED'::execution_status \
                     WHEN e.attempt >= e.max_attempts THEN 'FAILED'::execution_status \
                     ELSE 'PENDING'::execution_status END, \
                 finished_at = CASE \
                     WHEN e.cancel_requested_at IS NOT NULL OR e.attempt >= e.max_attempts \
                     THEN now() END, \
                 error = CASE \
                     WHEN e.cancel_requested_at IS NOT NULL THEN jsonb_build_object( \
                         'code', $3::text, \
                         'message', 'canceled on request; its worker was lost') \
                     WHEN e.attempt >= e.max_attempts THEN jsonb_build_object( \
                         'code', $4::text, \
                         'message', format('worker lost after %s attempts', e.attempt)) \
                     ELSE e.error END, \
                 run_after = now() + $2 * interval '1 millisecond', \
                 attempts = e.attempts || jsonb_build_array(jsonb_build_object( \
                     'attempt', e.attempt, 'worker_id', e.worker_id, 'at', now(), \
                     'error', jsonb_build_object('code', $4::text, 'message', \
                         format('worker %s stopped renewing its lease', e.worker_id)))), \
                 worker_id = NULL, lease_expires_at = NULL \
             FROM ( \
                 SELECT id FROM executions \
                 WHERE status = 'RUNNING' AND lease_expires_at < now() \
                 ORDER BY lease_expires_at \
                 LIMIT $1 \
                 FOR UPDATE SKIP LOCKED) expired \
             WHERE e.id = expired.id \
             RETURNING e.id, e.tier, e.attempt AS lost_attempt, e.status",
        )
        .bind(batch)
        .bind(millis(backoff))
        .bind(ErrorCode::Canceled.as_str())
        .bind(ErrorCode::WorkerLost.as_str())
        .fetch_all(&self.pool)
        .await?;
        for tier in rows
            .iter()
            .filter(|r| r.status == Status::Pending)
            .map(|r| r.tier.as_str())
            .collect::<std::collections::BTreeSet<_>>()
        {
            self.notify(Channel::Work, tier).await;
        }
        Ok(rows)
    }
}

/// An execution whose result retention passed: it is EXPIRED now, and its object (if
/// any) must be deleted.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Expired {
    pub id: Uuid,
    pub object_key: Option<String>,
}

impl Store {
    /// Marks up to `batch` executions of `tier` that finished with `status` more than
    /// `older_than` ago (or their own shorter `retention_ms` ago) as EXPIRED. The caller deletes their objects; if it dies first,
    /// orphan collection does.
    pub async fn expire(
        &self,
        tier: &str,
        status: Status,
        older_than: Duration,
        batch: i64,
    ) -> Result<Vec<Expired>> {
        let rows = sqlx::query_as::<_, Expired>(
            "UPDATE executions e SET status = 'EXPIRED' \
             FROM ( \
                 SELECT id FROM executions \
                 WHERE id IN ( \
                     (SELECT id FROM executions \
                      WHERE tier = $1 AND status = $2 \
                        AND finished_at < now() - $3 * interval '1 millisecond' \
                      ORDER BY finished_at LIMIT $4) \
                     UNION ALL \
                     (SELECT id FROM executions \
                      WHERE tier = $1 AND status = $2 AND retention_ms IS NOT NULL \
                        AND finished_at < now() - retention_ms * interval '1 millisecond' \
                      ORDER BY finished_at LIMIT $4)) \
                 LIMIT $4 \
                 FOR UPDATE SKIP LOCKED) old \
             WHERE e.id = old.id \
             RETURNING e.id, e.result->>'object_key' AS object_key",
        )
        .bind(tier)
        .bind(status)
        .bind(millis(older_than))
        .bind(batch)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Deletes up to `batch` EXPIRED rows of `tier` that finished more than `older_than`
    /// ago. Returns how many went.
    pub async fn purge(&self, tier: &str, older_than: Duration, batch: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM executions WHERE id IN ( \
                 SELECT id FROM executions \
                 WHERE tier = $1 AND status = 'EXPIRED' \
                   AND finished_at < now() - $2 * interval '1 millisecond' \
                 LIMIT $3 \
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(tier)
        .bind(millis(older_than))
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Of the given result objects (key and the execution id in it), those no SUCCEEDED
    /// execution points at.
    pub async fn unreferenced(&self, objects: &[(String, Uuid)]) -> Result<Vec<String>> {
        let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
        let ids: Vec<Uuid> = objects.iter().map(|(_, id)| *id).collect();
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT o.key FROM unnest($1::text[], $2::uuid[]) AS o(key, id) \
             WHERE NOT EXISTS ( \
                 SELECT 1 FROM executions e \
                 WHERE e.id = o.id AND e.status = 'SUCCEEDED' \
                   AND e.result->>'object_key' = o.key)",
        )
        .bind(&keys)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(k,)| k).collect())
    }
}

/// An execution the bookkeeper failed for a time limit.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Overdue {
    pub id: Uuid,
    pub tier: String,
    /// The attempt that was running (0 if it never started): its query must be killed.
    pub attempt: i32,
}

impl Store {
    /// Fails up to `batch` PENDING executions never started whose `start_deadline`
    /// passed with NOT_STARTED_IN_TIME (a retry waiting for its backoff is not late).
    pub async fn fail_not_started(&self, batch: i64) -> Result<Vec<Overdue>> {
        let rows = sqlx::query_as::<_, Overdue>(
            "UPDATE executions e SET status = 'FAILED', finished_at = now(), \
                 error = jsonb_build_object('code', $2::text, 'message', \
                     format('not started within %s of becoming runnable', \
                            justify_interval(date_trunc('second', \
                                e.start_deadline - e.run_after + interval '0.5 second')))) \
             FROM ( \
                 SELECT id FROM executions \
                 WHERE status = 'PENDING' AND start_deadline < now() AND attempt = 0 \
                 ORDER BY start_deadline LIMIT $1 \
                 FOR UPDATE SKIP LOCKED) late \
             WHERE e.id = late.id \
             RETURNING e.id, e.tier, e.attempt",
        )
        .bind(batch)
        .bind(ErrorCode::NotStartedInTime.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Fails up to `batch` RUNNING executions whose attempt has run `grace` longer than
    /// its `timeout_ms` (its worker should have stopped it: it is hung, or cut off from
    /// ClickHouse) with TIMEOUT. The caller kills their queries.
    pub async fn fail_timed_out(&self, grace: Duration, batch: i64) -> Result<Vec<Overdue>> {
        let rows = sqlx::query_as::<_, Overdue>(
            "UPDATE executions e SET status = 'FAILED', finished_at = now(), \
                 lease_expires_at = NULL, \
                 error = jsonb_build_object('code', $3::text, 'message', \
                     format('ran longer than its timeout of %s ms', e.timeout_ms)) \
             FROM ( \
                 SELECT id FROM executions \
                 WHERE status = 'RUNNING' AND timeout_ms IS NOT NULL \
                   AND started_at + (timeout_ms + $2) * interval '1 millisecond' < now() \
                 ORDER BY started_at LIMIT $1 \
                 FOR UPDATE SKIP LOCKED) late \
             WHERE e.id = late.id \
             RETURNING e.id, e.tier, e.attempt",
        )
        .bind(batch)
        .bind(millis(grace))
        .bind(ErrorCode::Timeout.as_str())
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            self.notify(Channel::Cancel, &row.id.to_string()).await;
        }
        Ok(rows)
    }
}
