//! Completion webhook deliveries: one row per execution with a `callback_url` that
//! ended, created by a trigger in the transaction that ended it (migration 0011), so no
//! end is lost to a crash. The bookkeeper takes due rows (`take_due` pushes their next
//! attempt a timeout ahead, so a bookkeeper that dies mid-send leaves them to be sent
//! again: at least once), sends them, and records each attempt. Never sends anything
//! itself.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Result, Store, millis};

/// A delivery to make now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub execution_id: Uuid,
    pub url: String,
    pub created_at: DateTime<Utc>,
    /// Attempts made so far.
    pub tries: i32,
}

/// One attempt to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttempt {
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why it did not count as delivered.
    pub error: Option<String>,
}

/// An execution's webhook, as `GET /v1/executions/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Delivery {
    pub url: String,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Retried for `webhooks.retry_for` without success.
    pub given_up_at: Option<DateTime<Utc>>,
    pub next_attempt_at: DateTime<Utc>,
    #[schema(value_type = Vec<DeliveryAttempt>)]
    pub attempts: Json<Vec<DeliveryAttempt>>,
}

impl Store {
    /// Up to `batch` deliveries due now; each is hidden for `lease` (the send's
    /// timeout and some) while it is being sent.
    pub async fn take_due(&self, batch: i64, lease: Duration) -> Result<Vec<Due>> {
        Ok(sqlx::query_as::<_, Due>(
            "UPDATE webhook_deliveries d SET next_attempt_at = now() + $2 * interval '1 millisecond' \
             FROM ( \
                 SELECT execution_id FROM webhook_deliveries \
                 WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= now() \
                 ORDER BY next_attempt_at LIMIT $1 \
                 FOR UPDATE SKIP LOCKED) due \
             WHERE d.execution_id = due.execution_id \
             RETURNING d.execution_id, d.url, d.created_at, \
                       jsonb_array_length(d.attempts)::int4 AS tries",
        )
        .bind(batch)
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records an attempt: delivered, or tried again after `retry_in`, or given up.
    pub async fn record_delivery(
        &self,
        id: Uuid,
        attempt: &DeliveryAttempt,
        outcome: DeliveryOutcome,
    ) -> Result<()> {
        let (delivered, given_up, retry_ms) = match outcome {
            DeliveryOutcome::Delivered => (true, false, 0),
            DeliveryOutcome::Retry(d) => (false, false, millis(d)),
            DeliveryOutcome::GiveUp => (false, true, 0),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET \
                 attempts = attempts || jsonb_build_array($2::jsonb), \
                 delivered_at = CASE WHEN $3 THEN now() END, \
                 given_up_at = CASE WHEN $4 THEN now() END, \
                 next_attempt_at = now() + $5 * interval '1 millisecond' \
             WHERE execution_id = $1",
        )
        .bind(id)
        .bind(Json(attempt))
        .bind(delivered)
        .bind(given_up)
        .bind(retry_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The webhook of execution `id`, if it has one that is due or done.
    pub async fn delivery(&self, id: Uuid) -> Result<Option<Delivery>> {
        Ok(sqlx::query_as::<_, Delivery>(
            "SELECT url, delivered_at, given_up_at, next_attempt_at, attempts \
             FROM webhook_deliveries WHERE execution_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }
}

/// What an attempt leads to.
#[derive(Debug, Clone, Copy)]
pub enum DeliveryOutcome {
    Delivered,
    Retry(Duration),
    GiveUp,
}
