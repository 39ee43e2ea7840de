//! The bookkeeper: maintenance no single worker can be trusted with.
//!
//! **Leadership.** Any number of `sluice bookkeeper` processes may run; exactly one acts,
//! the holder of an advisory lock on a dedicated Postgres session (`store::leader`). The
//! others try again every `bookkeeper.interval`; when the leader dies its session ends,
//! the lock is released, and one of them takes over within one interval. Who leads is
//! logged and shown by the api's `/ready`.
//!
//! **Passes**, each on bounded batches (`bookkeeper.batch_size`), never waiting on locks:
//! 1. *Reclaim*: RUNNING executions whose lease expired go back to PENDING (after
//!    `bookkeeper.retry_backoff`), to FAILED `WORKER_LOST` once `max_attempts` are used,
//!    or to CANCELED if a cancel was requested; then the lost attempt's query is killed
//!    on ClickHouse (`KILL QUERY WHERE query_id = '<id>-<attempt>'`). The retry runs under
//!    a new query_id, so even a late KILL never hits it.
//! 2. *Deadlines*: PENDING executions past their `start_deadline` FAIL with
//!    NOT_STARTED_IN_TIME; RUNNING ones a lease past their `timeout` (their worker
//!    should have stopped them) FAIL with TIMEOUT, and their query is killed.
//! 3. *Expire*: finished executions past their tier's retention for their status become
//!    EXPIRED and their result object is deleted (metadata stays; the result endpoint
//!    answers 410).
//! 4. *Purge*: EXPIRED rows older than `retention.purge_after` are deleted, then
//!    groups left without members. An execution with a `retention` of its own expires
//!    after it, when that is shorter than the tier's for its status.
//! 5. *Webhooks*: completion webhooks that are due are sent (see `store::webhooks`),
//!    at least once, with backoff until `webhooks.retry_for`.
//! 6. *Orphans* (every `bookkeeper.orphan_scan_interval`): result objects older than
//!    `bookkeeper.orphan_grace` that no SUCCEEDED execution points at (a worker died
//!    between upload and commit, or expiry died between its two steps) are deleted.
//!
//! The bookkeeper never runs user queries and never writes result objects.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::clickhouse::{Endpoint, EngineError};
use crate::config::Config;
use crate::execution::{Status, clickhouse_query_id};
use crate::outage::OutageLog;
use crate::results::{ResultStore, ResultsError};
use crate::store::leader::Leadership;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BookkeeperError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Results(#[from] ResultsError),
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub reclaimed: usize,
    /// Failed for a time limit (TIMEOUT, NOT_STARTED_IN_TIME).
    pub overdue: usize,
    /// Webhook deliveries attempted.
    pub webhooks: usize,
    pub expired: usize,
    pub purged: u64,
    pub orphans_deleted: usize,
}

pub struct Bookkeeper {
    name: String,
    config: Config,
    store: Store,
    results: ResultStore,
    engines: HashMap<String, Endpoint>,
    /// Sends completion webhooks.
    http: reqwest::Client,
}

impl Bookkeeper {
    pub fn new(
        config: &Config,
        store: Store,
        results: ResultStore,
    ) -> Result<Bookkeeper, EngineError> {
        let engines = config
            .tiers
            .iter()
            .map(|(name, tier)| Ok((name.clone(), Endpoint::new(tier)?)))
            .collect::<Result<_, EngineError>>()?;
        Ok(Bookkeeper {
            http: reqwest::Client::builder()
                .timeout(config.webhooks.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| EngineError::Protocol(e.to_string()))?,
            name: crate::instance_id("bookkeeper"),
            config: config.clone(),
            store,
            results,
            engines,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn run(self, shutdown: CancellationToken) {
        info!(name = self.name, "bookkeeper started");
        let mut interval = tokio::time::interval(self.config.bookkeeper.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leadership: Option<Leadership> = None;
        let mut last_orphan_scan: Option<Instant> = None;
        let mut lead_log = OutageLog::new("bookkeeper leadership");
        let mut pass_log = OutageLog::new("bookkeeper pass");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            if let Some(l) = leadership.as_mut()
                && !l.still_held().await
            {
                warn!(
                    name = self.name,
                    "lost leadership: its Postgres session ended"
                );
                leadership = None;
            }
            if leadership.is_none() {
                match self.store.try_lead(&self.name).await {
                    Ok(Some(l)) => {
                        info!(name = self.name, "became the leader");
                        lead_log.success();
                        leadership = Some(l);
                    }
                    Ok(None) => lead_log.success(),
                    Err(e) => lead_log.failure(&e),
                }
            }
            if leadership.is_none() {
                continue;
            }
            let scan = last_orphan_scan
                .is_none_or(|t| t.elapsed() >= self.config.bookkeeper.orphan_scan_interval);
            match self.pass(scan).await {
                Ok(report) => {
                    pass_log.success();
                    if scan {
                        last_orphan_scan = Some(Instant::now());
                    }
                    if report != PassReport::default() {
                        info!(?report, "bookkeeping pass");
                    }
                }
                Err(e) => pass_log.failure(&e),
            }
        }
        if let Some(l) = leadership {
            l.release().await;
        }
        info!(name = self.name, "bookkeeper stopped");
    }

    /// One pass of every loop; `orphans` includes the orphan scan.
    pub async fn pass(&self, orphans: bool) -> Result<PassReport, BookkeeperError> {
        // Deadlines first: a run past its timeout whose worker is gone fails with
        // TIMEOUT rather than running again.
        let overdue = self.deadline_pass().await?;
        let mut report = PassReport {
            overdue,
            reclaimed: self.reclaim_pass().await?,
            ..Default::default()
        };
        report.webhooks = self.webhook_pass().await?;
        let (expired, purged) = self.expire_pass().await?;
        report.expired = expired;
        report.purged = purged;
        if orphans {
            report.orphans_deleted = self.orphan_pass().await?;
        }
        Ok(report)
    }

    /// Sends the completion webhooks that are due (see `store::webhooks`): the
    /// execution as `GET /v1/executions/{id}` shows it, signed; a 2xx answer delivers
    /// it, anything else is tried again with backoff until `webhooks.retry_for`.
    pub async fn webhook_pass(&self) -> Result<usize, StoreError> {
        let hooks = &self.config.webhooks;
        let due = self
            .store
            .take_due(self.config.bookkeeper.batch_size, hooks.timeout * 2)
            .await?;
        let sends = due.iter().map(|d| self.deliver(d));
        for (d, (attempt, outcome)) in due.iter().zip(futures::future::join_all(sends).await) {
            self.store
                .record_delivery(d.execution_id, &attempt, outcome)
                .await?;
        }
        Ok(due.len())
    }

    /// One attempt to deliver `d`, and what follows from it.
    async fn deliver(
        &self,
        d: &crate::store::webhooks::Due,
    ) -> (
        crate::store::webhooks::DeliveryAttempt,
        crate::store::webhooks::DeliveryOutcome,
    ) {
        use crate::store::webhooks::{DeliveryAttempt, DeliveryOutcome};
        let hooks = &self.config.webhooks;
        let at = chrono::Utc::now();
        let sent = async {
            let execution = self
                .store
                .get(d.execution_id, None)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the execution is gone")?;
            let body = serde_json::to_vec(&crate::api::model::ExecutionView::from(execution))
                .map_err(|e| e.to_string())?;
            let timestamp = at.timestamp().to_string();
            let mut signed = timestamp.clone().into_bytes();
            signed.push(b'.');
            signed.extend_from_slice(&body);
            let secret = hooks.secret.as_deref().unwrap_or_default();
            let signature = crate::auth::hmac_hex(secret.as_bytes(), &signed);
            self.http
                .post(&d.url)
                .header("content-type", "application/json")
                .header("x-sluice-delivery", d.execution_id.to_string())
                .header("x-sluice-timestamp", timestamp)
                .header("x-sluice-signature", format!("sha256={signature}"))
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let (status, error) = match sent {
            Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
            Ok(r) => (
                Some(r.status().as_u16()),
                Some(format!("answered {}", r.status())),
            ),
            Err(e) => (None, Some(e)),
        };
        let outcome = if error.is_none() {
            DeliveryOutcome::Delivered
        } else if at - d.created_at
            >= chrono::Duration::from_std(hooks.retry_for).unwrap_or(chrono::Duration::MAX)
        {
            warn!(execution_id = %d.execution_id, url = %d.url, "webhook given up");
            DeliveryOutcome::GiveUp
        } else {
            // This attempt was try `tries + 1`.
            DeliveryOutcome::Retry(crate::outage::Backoff::after(
                hooks.backoff,
                hooks.backoff_max,
                i64::from(d.tries) + 1,
            ))
        };
        (DeliveryAttempt { at, status, error }, outcome)
    }

    /// Reclaims expired leases in batches until none are left.
    pub async fn reclaim_pass(&self) -> Result<usize, StoreError> {
        let bk = &self.config.bookkeeper;
        let mut total = 0;
        loop {
            let batch = self
                .store
                .reclaim_expired(bk.batch_size, bk.retry_backoff)
                .await?;
            for r in &batch {
                metrics::counter!("sluice_reclaims_total", "tier" => r.tier.clone(), "status" => r.status.as_str())
                    .increment(1);
                let query_id = clickhouse_query_id(r.id, r.lost_attempt);
                warn!(
                    execution_id = %r.id,
                    tier = %r.tier,
                    attempt = r.lost_attempt,
                    status = %r.status,
                    "reclaimed an execution whose worker was lost"
                );
                if let Some(engine) = self.engines.get(&r.tier)
                    && let Err(e) = engine.kill(&query_id).await
                {
                    warn!(execution_id = %r.id, query_id, error = %e, "KILL of the orphaned query failed");
                }
            }
            total += batch.len();
            if (batch.len() as i64) < bk.batch_size {
                return Ok(total);
            }
        }
    }

    /// Fails executions past a time limit: PENDING ones past their `start_deadline`
    /// (NOT_STARTED_IN_TIME), and RUNNING ones a lease longer than their `timeout`
    /// (TIMEOUT; their worker, which stops them at the timeout itself, is hung or
    /// gone), whose queries it kills.
    pub async fn deadline_pass(&self) -> Result<usize, StoreError> {
        let batch = self.config.bookkeeper.batch_size;
        let mut total = 0;
        loop {
            let late = self.store.fail_not_started(batch).await?;
            total += late.len();
            if (late.len() as i64) < batch {
                break;
            }
        }
        loop {
            let late = self
                .store
                .fail_timed_out(self.config.worker.lease, batch)
                .await?;
            for r in &late {
                warn!(execution_id = %r.id, tier = %r.tier, attempt = r.attempt, "failed an execution past its timeout");
                let query_id = clickhouse_query_id(r.id, r.attempt);
                if let Some(engine) = self.engines.get(&r.tier)
                    && let Err(e) = engine.kill(&query_id).await
                {
                    warn!(execution_id = %r.id, query_id, error = %e, "KILL of the timed-out query failed");
                }
            }
            total += late.len();
            if (late.len() as i64) < batch {
                return Ok(total);
            }
        }
    }

    /// Expires results past retention and purges old EXPIRED rows, tier by tier.
    pub async fn expire_pass(&self) -> Result<(usize, u64), BookkeeperError> {
        let batch = self.config.bookkeeper.batch_size;
        let (mut expired, mut purged) = (0, 0);
        for (tier, cfg) in &self.config.tiers {
            let r = &cfg.retention;
            for (status, keep) in [
                (Status::Succeeded, r.succeeded),
                (Status::Failed, r.failed),
                (Status::Canceled, r.canceled),
            ] {
                loop {
                    let rows = self.store.expire(tier, status, keep, batch).await?;
                    for row in &rows {
                        if let Some(key) = &row.object_key {
                            self.results.delete(key).await?;
                        }
                    }
                    expired += rows.len();
                    metrics::counter!("sluice_expirations_total", "tier" => tier.clone())
                        .increment(rows.len() as u64);
                    if (rows.len() as i64) < batch {
                        break;
                    }
                }
            }
            loop {
                let n = self.store.purge(tier, r.purge_after, batch).await?;
                purged += n;
                if (n as i64) < batch {
                    break;
                }
            }
        }
        // Groups whose members were all purged go too (after the longest purge_after,
        // so a group is never deleted while a tier may still show one of its members).
        let longest = self
            .config
            .tiers
            .values()
            .map(|t| t.retention.purge_after)
            .max()
            .unwrap_or_default();
        self.store.purge_groups(longest, batch).await?;
        Ok((expired, purged))
    }

    /// Deletes result objects that no SUCCEEDED execution points at, once they are
    /// older than the grace period. Objects not shaped like Sluice's keys are left alone.
    pub async fn orphan_pass(&self) -> Result<usize, BookkeeperError> {
        let bk = &self.config.bookkeeper;
        let grace = chrono::Duration::from_std(bk.orphan_grace).unwrap_or(chrono::Duration::MAX);
        let cutoff = chrono::Utc::now() - grace;
        let mut listing = self.results.objects();
        let mut deleted = 0;
        let mut chunk: Vec<(String, Uuid)> = Vec::new();
        loop {
            let next = listing.next().await.transpose()?;
            let done = next.is_none();
            if let Some((key, modified)) = next
                && modified < cutoff
                && let Some(id) = ResultStore::execution_of(&key)
            {
                chunk.push((key, id));
            }
            if chunk.len() as i64 >= bk.batch_size || (done && !chunk.is_empty()) {
                for key in self.store.unreferenced(&chunk).await? {
                    info!(key, "deleting an orphaned result object");
                    self.results.delete(&key).await?;
                    deleted += 1;
                }
                chunk.clear();
            }
            if done {
                return Ok(deleted);
            }
        }
    }
}
