//! The bookkeeper: maintenance that no single worker can be trusted with.
//!
//! Today it reclaims executions whose worker stopped renewing its lease (crashed, killed,
//! partitioned): back to PENDING after `bookkeeper.retry_backoff`, FAILED with
//! `WORKER_LOST` once `max_attempts` are used up, or CANCELED if a cancel was requested
//! meanwhile. It then sends `KILL QUERY` for the lost attempt's query_id so the orphaned
//! query stops burning ClickHouse CPU. The retry runs under a new query_id
//! (`<id>-<attempt>`), so it never collides with the orphan even if the KILL is late.
//!
//! Every pass works on a bounded batch (`bookkeeper.batch_size`) and never waits on row
//! locks. Several bookkeepers may run; `SKIP LOCKED` keeps them from reclaiming one row
//! twice. The bookkeeper never runs user queries and never writes result objects.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clickhouse::{Endpoint, EngineError};
use crate::config::Config;
use crate::execution::clickhouse_query_id;
use crate::store::Store;

pub struct Bookkeeper {
    config: Config,
    store: Store,
    engines: HashMap<String, Endpoint>,
}

impl Bookkeeper {
    pub fn new(config: &Config, store: Store) -> Result<Bookkeeper, EngineError> {
        let engines = config
            .tiers
            .iter()
            .map(|(name, tier)| Ok((name.clone(), Endpoint::new(tier)?)))
            .collect::<Result<_, EngineError>>()?;
        Ok(Bookkeeper {
            config: config.clone(),
            store,
            engines,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        info!("bookkeeper started");
        let mut interval = tokio::time::interval(self.config.bookkeeper.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            if let Err(e) = self.reclaim_pass().await {
                warn!(error = %e, "reclaim pass failed");
            }
        }
        info!("bookkeeper stopped");
    }

    /// One pass: reclaim expired leases in batches until none are left.
    pub async fn reclaim_pass(&self) -> Result<usize, crate::store::StoreError> {
        let bk = &self.config.bookkeeper;
        let mut total = 0;
        loop {
            let batch = self
                .store
                .reclaim_expired(bk.batch_size, bk.retry_backoff)
                .await?;
            for r in &batch {
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
}
