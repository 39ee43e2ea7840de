//! The bookkeeper's statements. Each works on a bounded batch, locks rows with
//! `SKIP LOCKED` so it never waits on a worker, and commits at once.

use std::time::Duration;

use uuid::Uuid;

use super::{Result, Store};
use crate::execution::Status;

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
                         'code', 'CANCELED', \
                         'message', 'canceled on request; its worker was lost') \
                     WHEN e.attempt >= e.max_attempts THEN jsonb_build_object( \
                         'code', 'WORKER_LOST', \
                         'message', format('worker lost after %s attempts', e.attempt)) \
                     ELSE e.error END, \
                 run_after = now() + $2 * interval '1 millisecond', \
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
        .bind(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        for tier in rows
            .iter()
            .filter(|r| r.status == Status::Pending)
            .map(|r| r.tier.as_str())
            .collect::<std::collections::BTreeSet<_>>()
        {
            self.notify_work(tier).await?;
        }
        Ok(rows)
    }
}
