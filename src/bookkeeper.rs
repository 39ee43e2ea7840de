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
//! 2. *Expire*: finished executions past their tier's retention for their status become
//!    EXPIRED and their result object is deleted (metadata stays; the result endpoint
//!    answers 410).
//! 3. *Purge*: EXPIRED rows older than `retention.purge_after` are deleted, then
//!    groups left without members. An execution with a `retention` of its own expires
//!    after it, when that is shorter than the tier's for its status.
//! 4. *Orphans* (every `bookkeeper.orphan_scan_interval`): result objects older than
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
        let mut report = PassReport {
            reclaimed: self.reclaim_pass().await?,
            ..Default::default()
        };
        let (expired, purged) = self.expire_pass().await?;
        report.expired = expired;
        report.purged = purged;
        if orphans {
            report.orphans_deleted = self.orphan_pass().await?;
        }
        Ok(report)
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
