//! Groups: executions created together, at most `concurrency` of them in flight at once.
//!
//! Semantics:
//! - **Atomic creation**: the group and all its members are inserted in one
//!   transaction; any failure (a member's query_id in use, a full queue) creates
//!   nothing. Members never collapse into, or supersede, other executions.
//! - **Idempotent by key**: `group_key` (the client's `group_id`) is unique per tenant;
//!   creating a group whose key exists returns the existing group unchanged.
//! - **Concurrency by places**: the first `concurrency` members in release order
//!   (priority, highest first, then id) are created claimable; the others are `held`,
//!   and claims skip them. When a member holding a place ends (SUCCEEDED, FAILED,
//!   CANCELED, by whichever process), a trigger (migration 0007) releases the next held
//!   member in the same transaction. A member that is retried keeps its place. So at
//!   most `concurrency` members are PENDING-and-claimable or RUNNING at any time, across
//!   every worker, without a lock on the claim's hot path.
//! - **Cancel** marks every PENDING member CANCELED (held ones included) and asks the
//!   RUNNING ones' workers to stop them (the caller's NOTIFY); members that already
//!   ended keep their status.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use sqlx::types::Json;
use uuid::Uuid;

use super::submit::{INSERT_RETURNING, NewExecution, bind_member};
use super::{Channel, Result, Store, is_unique_violation};
use crate::execution::{ErrorCode, ErrorInfo, Execution};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Group {
    pub id: Uuid,
    pub tenant: String,
    pub group_key: String,
    pub created_by: String,
    pub concurrency: i32,
    pub created_at: DateTime<Utc>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
}

/// A validated group, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewGroup {
    /// Its id when created (members' default query_ids name it).
    pub id: Uuid,
    pub tenant: String,
    pub created_by: String,
    /// The client's `group_id`; the new id when absent.
    pub key: Option<String>,
    pub concurrency: i32,
    /// In the order given; all of `tenant`.
    pub members: Vec<NewExecution>,
}

#[derive(Debug)]
pub enum GroupCreated {
    Created(Group, Vec<Execution>),
    /// A group with this key exists: it, unchanged.
    Existing(Group, Vec<Execution>),
    /// Member `index`'s query_id is held by an execution in flight.
    QueryIdInUse {
        index: usize,
        query_id: String,
    },
    /// The members would take the tenant's PENDING executions on `tier` over `cap`.
    QueueFull {
        tier: String,
        cap: i64,
    },
}

impl Store {
    pub async fn create_group(&self, new: &NewGroup) -> Result<GroupCreated> {
        let id = new.id;
        let key = new.key.clone().unwrap_or_else(|| id.to_string());
        let mut tx = self.pool.begin().await?;
        let group: Option<Group> = sqlx::query_as(
            "INSERT INTO execution_groups (id, tenant, group_key, created_by, concurrency) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant, group_key) DO NOTHING RETURNING *",
        )
        .bind(id)
        .bind(&new.tenant)
        .bind(&key)
        .bind(&new.created_by)
        .bind(new.concurrency)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(group) = group else {
            drop(tx);
            let existing: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM execution_groups WHERE tenant = $1 AND group_key = $2",
            )
            .bind(&new.tenant)
            .bind(&key)
            .fetch_optional(&self.pool)
            .await?;
            // Deleted between the two statements (purged): create it again.
            return match existing {
                Some(id) => match self.group(id, Some(&new.tenant)).await? {
                    Some((g, members)) => Ok(GroupCreated::Existing(g, members)),
                    None => Box::pin(self.create_group(new)).await,
                },
                None => Box::pin(self.create_group(new)).await,
            };
        };

        // Queue caps, per tier, under the same lock single submits take.
        let mut tiers: Vec<(&str, i64, i64)> = vec![];
        for m in &new.members {
            if let Some(cap) = m.max_queued {
                match tiers.iter_mut().find(|(t, _, _)| *t == m.tier) {
                    Some(entry) => entry.2 += 1,
                    None => tiers.push((&m.tier, cap, 1)),
                }
            }
        }
        tiers.sort();
        for (tier, cap, adding) in tiers {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 5898))")
                .bind(&new.tenant)
                .bind(tier)
                .execute(&mut *tx)
                .await?;
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM executions \
                 WHERE tenant = $1 AND tier = $2 AND status = 'PENDING'",
            )
            .bind(&new.tenant)
            .bind(tier)
            .fetch_one(&mut *tx)
            .await?;
            if pending + adding > cap {
                return Ok(GroupCreated::QueueFull {
                    tier: tier.to_string(),
                    cap,
                });
            }
        }

        // Places go to the first `concurrency` members in the trigger's release order.
        let ids: Vec<Uuid> = new.members.iter().map(|_| Uuid::now_v7()).collect();
        let mut order: Vec<usize> = (0..new.members.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(new.members[i].priority), ids[i]));
        let mut held = vec![true; new.members.len()];
        for &i in order.iter().take(new.concurrency.max(1) as usize) {
            held[i] = false;
        }
        let mut members = Vec::with_capacity(new.members.len());
        for (index, m) in new.members.iter().enumerate() {
            let row = bind_member(
                sqlx::query(INSERT_RETURNING),
                ids[index],
                m,
                Some(group.id),
                held[index],
            )
            .fetch_one(&mut *tx)
            .await;
            match row {
                Ok(row) => members.push(Execution::from_row(&row)?),
                Err(e) if is_unique_violation(&e) => {
                    return Ok(GroupCreated::QueryIdInUse {
                        index,
                        query_id: m.query_id.clone(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit().await?;
        let mut woken: Vec<&str> = members
            .iter()
            .filter(|e| !e.held)
            .map(|e| e.tier.as_str())
            .collect();
        woken.sort_unstable();
        woken.dedup();
        for tier in woken {
            self.wake_workers(tier);
        }
        Ok(GroupCreated::Created(group, members))
    }

    /// A group and its members (in creation order), if `tenant` (when given) owns it.
    pub async fn group(
        &self,
        id: Uuid,
        tenant: Option<&str>,
    ) -> Result<Option<(Group, Vec<Execution>)>> {
        let group: Option<Group> = sqlx::query_as(
            "SELECT * FROM execution_groups WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        let Some(group) = group else {
            return Ok(None);
        };
        let members = sqlx::query_as(
            "SELECT * FROM executions WHERE group_id = $1 AND tenant = $2 ORDER BY id",
        )
        .bind(id)
        .bind(&group.tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some((group, members)))
    }

    /// Cancels the members still in flight (see the module comment); the group and its
    /// members as they are now, if `tenant` (when given) owns it.
    pub async fn cancel_group(
        &self,
        id: Uuid,
        tenant: Option<&str>,
    ) -> Result<Option<(Group, Vec<Execution>)>> {
        let mut tx = self.pool.begin().await?;
        let found: Option<Uuid> = sqlx::query_scalar(
            "UPDATE execution_groups SET cancel_requested_at = coalesce(cancel_requested_at, now()) \
             WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) RETURNING id",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Ok(None);
        }
        // Locked in release order, as the release trigger locks them.
        sqlx::query(
            "UPDATE executions SET status = 'CANCELED', finished_at = now(), held = false, \
                 cancel_requested_at = coalesce(cancel_requested_at, now()), error = $2 \
             WHERE id IN (SELECT id FROM executions \
                          WHERE group_id = $1 AND status = 'PENDING' \
                          ORDER BY priority DESC, id FOR UPDATE)",
        )
        .bind(id)
        .bind(Json(ErrorInfo::new(
            ErrorCode::Canceled,
            "canceled with its group before it started",
        )))
        .execute(&mut *tx)
        .await?;
        let running: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE executions SET cancel_requested_at = coalesce(cancel_requested_at, now()) \
             WHERE group_id = $1 AND status = 'RUNNING' RETURNING id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for execution in running {
            self.notify(Channel::Cancel, &execution.to_string()).await;
        }
        self.group(id, tenant).await
    }

    /// Deletes groups created more than `older_than` ago whose members were all purged.
    pub async fn purge_groups(&self, older_than: std::time::Duration, batch: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM execution_groups WHERE id IN ( \
                 SELECT g.id FROM execution_groups g \
                 WHERE g.created_at < now() - $1 * interval '1 millisecond' \
                   AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.group_id = g.id) \
                 LIMIT $2)",
        )
        .bind(super::millis(older_than))
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
