//! A worker serves exactly one tier: it claims that tier's executions, runs them on the
//! tier's ClickHouse and streams their results into the result store.
//!
//! Queue semantics (the SQL is in `store::queue`):
//! - It claims up to its free slots (`tiers.<t>.concurrency`) in one statement with
//!   `FOR UPDATE SKIP LOCKED`, so any number of workers share a tier without double
//!   claims, and never touches another tier's rows. A slot is an execution with work on
//!   ClickHouse: it is given back as soon as that work is over, before the outcome is
//!   written to Postgres (under a backlog, waiting for the batch of completions took
//!   most of a short execution's slot time). At most `concurrency` more may be writing
//!   their outcomes at once, so a slow Postgres slows claims rather than piling up
//!   finished work.
//! - While executions run, a claim waits until a quarter of the slots are free or
//!   [`CLAIM_COOLDOWN`] (5 ms) has passed since the last one, so a backlog of short
//!   executions is claimed a handful at a time rather than one per statement; an idle
//!   worker claims at once.
//! - It wakes on `NOTIFY sluice_work` for its tier, and polls every
//!   `worker.poll_interval` in case a notification was lost.
//! - It listens on `sluice_cancel` to stop a running execution within milliseconds of a
//!   cancel; the heartbeat also sees `cancel_requested_at`, as a fallback.
//! - On shutdown it stops claiming, lets running executions finish for
//!   `worker.shutdown_grace`, then kills the rest on ClickHouse and hands them back to
//!   PENDING.
//!
//! A worker never changes an execution it has not claimed, and never writes without its
//! fence (see `store::queue`).

mod binary_rows;
mod columns;
mod job;
mod rows;
mod run;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};
use uuid::Uuid;

use crate::clickhouse::{Endpoint, EngineError};
use crate::config::{Config, TierConfig, WorkerConfig};
use crate::results::ResultStore;
use crate::store::{Channel, Store, StoreError};
pub use run::Signals;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("tier `{0}` is not configured")]
    UnknownTier(String),
    #[error(
        "tier `{tier}`: ClickHouse user `{user}` can {can}, so one tenant's SQL could reach \
         beyond its lane; restrict the user (see the README's security model) or set \
         tiers.{tier}.trusted_user = true"
    )]
    UnsafeUser {
        tier: String,
        user: String,
        can: String,
    },
    #[error("tier `{tier}`: cannot check what ClickHouse user `{user}` may do: {error}")]
    UserCheck {
        tier: String,
        user: String,
        error: EngineError,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counters of what a worker did, for tests and the bench.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub claimed: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub canceled: AtomicU64,
    pub lost: AtomicU64,
    pub handed_back: AtomicU64,
    pub retried: AtomicU64,
    /// Results this worker stored for an attempt it no longer owned (reclaimed while it
    /// ran), then deleted: nothing will ever point at them.
    pub abandoned: AtomicU64,
}

impl WorkerStats {
    fn record(&self, outcome: &str) {
        let counter = match outcome {
            "succeeded" => &self.succeeded,
            "failed" | "timed_out" => &self.failed,
            "canceled" => &self.canceled,
            "lost" => &self.lost,
            "retried" => &self.retried,
            _ => &self.handed_back,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct Worker {
    id: String,
    tier: String,
    tier_config: TierConfig,
    config: WorkerConfig,
    store: Store,
    results: ResultStore,
    engine: Endpoint,
    stats: Arc<WorkerStats>,
    /// Whether running caps may apply to this tier, so claims must serialize.
    capped: bool,
    /// Columns of recent statements, shared by this worker's executions.
    columns: Arc<columns::ColumnCache>,
}

/// What the LISTEN task forwards to the claim loop.
enum Event {
    Work,
    Cancel(Uuid),
}

impl Worker {
    pub fn new(
        config: &Config,
        tier: &str,
        store: Store,
        results: ResultStore,
    ) -> Result<Worker, WorkerError> {
        let tier_config = config
            .tier(tier)
            .ok_or_else(|| WorkerError::UnknownTier(tier.to_string()))?
            .clone();
        let engine = Endpoint::new(&tier_config)?;
        // Every process reads the same configuration, so all workers of a tier agree.
        let capped = tier_config.max_running_per_tenant.is_some()
            || config.auth.api_keys.iter().any(|k| k.max_running.is_some());
        Ok(Worker {
            capped,
            id: crate::instance_id(tier),
            tier: tier.to_string(),
            tier_config,
            config: config.worker.clone(),
            store,
            results,
            engine,
            stats: Arc::default(),
            columns: Arc::default(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` fires, then drains as described in the module comment.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let span = tracing::info_span!("worker", tier = %self.tier, worker_id = %self.id);
        self.run_in_span(shutdown).instrument(span).await
    }

    async fn run_in_span(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let concurrency = self.tier_config.concurrency;
        self.check_user(&shutdown).await?;
        info!(slots = concurrency, "worker started");
        let (events_tx, mut events) = mpsc::channel(1024);
        // Aborted however this future ends, including when it is dropped: the listener
        // holds a connection of its own.
        let _listen = AbortOnDrop(tokio::spawn(
            listen(
                self.store.clone(),
                self.tier.clone(),
                events_tx,
                shutdown.clone(),
            )
            .in_current_span(),
        ));

        let running: Running = Arc::default();
        let mut tasks = JoinSet::new();
        let slots: Arc<Slots> = Arc::default();
        // Whether work may be waiting: set by a wake-up, a finished execution or the poll.
        let mut want_claim = true;
        let mut last_claim = Instant::now() - CLAIM_COOLDOWN;
        // While Postgres is away, claims fail: log that once per interval and retry on
        // the poll interval (the pool reconnects by itself).
        let mut claim_log = crate::outage::OutageLog::new("claim");
        while !shutdown.is_cancelled() {
            // A finished task counts in the JoinSet until it is joined: reap them all
            // before counting. (Joining one per wake-up made every claim after the first
            // completion ask for one execution: 16 slots ran like 1.)
            while tasks.try_join_next().is_some() {}
            let busy = slots.busy();
            // Free slots, and room among the tasks still writing their outcomes.
            let free = concurrency
                .saturating_sub(busy)
                .min((2 * concurrency).saturating_sub(tasks.len()));
            // A claim is one statement whatever it takes, so under a backlog it waits
            // until a quarter of the slots are free, or CLAIM_COOLDOWN has passed since
            // the last one: a slot idles at most that long, and claims stay few.
            let worth_it = busy == 0
                || free >= claim_batch(concurrency)
                || last_claim.elapsed() >= CLAIM_COOLDOWN;
            if want_claim && free > 0 && worth_it {
                last_claim = Instant::now();
                want_claim = false;
                match self
                    .claim_and_start(free, &slots, &mut tasks, &running)
                    .await
                {
                    Ok(_) => claim_log.success(),
                    Err(e) => claim_log.failure(&e),
                }
                continue;
            }
            let deferred = want_claim && free > 0;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => want_claim = true,
                _ = slots.freed.notified() => want_claim = true,
                Some(event) = events.recv() => match event {
                    Event::Work => want_claim = true,
                    Event::Cancel(id) => {
                        if let Some(s) = lock(&running).get(&id) {
                            s.cancel.cancel();
                        }
                    }
                },
                _ = tokio::time::sleep_until((last_claim + CLAIM_COOLDOWN).into()), if deferred => {}
                _ = tokio::time::sleep(self.config.poll_interval) => want_claim = true,
            }
        }

        info!(
            running = tasks.len(),
            grace = ?self.config.shutdown_grace,
            "stopping: no new claims; waiting for running executions"
        );
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let rest: Vec<Signals> = lock(&running).values().cloned().collect();
            warn!(
                count = rest.len(),
                "grace period over: handing running executions back"
            );
            for s in rest {
                s.hand_back.cancel();
            }
            while tasks.join_next().await.is_some() {}
        }
        info!("worker stopped");
        Ok(())
    }
}

impl Worker {
    /// Refuses to serve the tier when its ClickHouse user could step out of a tenant's
    /// lane (see `Endpoint::dangerous_privileges`), unless the tier trusts it. Waits for
    /// a server that cannot be reached yet (or for shutdown).
    async fn check_user(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let user = self.tier_config.user.clone();
        let mut outage = crate::outage::OutageLog::new("check the tier's ClickHouse user");
        let mut backoff =
            crate::outage::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.engine.dangerous_privileges().await {
                Ok(can) if can.is_empty() => {
                    info!(user, "the tier's ClickHouse user is restricted");
                    return Ok(());
                }
                Ok(can) if self.tier_config.trusted_user => {
                    warn!(
                        user,
                        can = can.join(", "),
                        "TRUSTED USER: trusted_user = true, so tenants' SQL runs as a \
                         ClickHouse user that can step out of their lane"
                    );
                    return Ok(());
                }
                Ok(can) => {
                    return Err(WorkerError::UnsafeUser {
                        tier: self.tier.clone(),
                        user,
                        can: can.join(", "),
                    });
                }
                Err(e) if e.is_transient() => {
                    outage.failure(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
                Err(error) => {
                    return Err(WorkerError::UserCheck {
                        tier: self.tier.clone(),
                        user,
                        error,
                    });
                }
            }
        }
    }
}

/// The signals of the executions a worker runs, by id.
type Running = Arc<Mutex<HashMap<Uuid, Signals>>>;

/// The slots of the tier's `concurrency` held by executions with work on ClickHouse,
/// and the claim loop's wake-up when one is given back.
#[derive(Default)]
struct Slots {
    busy: AtomicUsize,
    freed: Notify,
}

impl Slots {
    fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    fn take(self: &Arc<Self>) -> Slot {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Slot(self.clone())
    }
}

/// One slot, held by an execution while it has work on ClickHouse; dropping it gives it
/// back and wakes the claim loop.
pub(super) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        // Stored if the loop is not waiting yet: the wake-up is never lost.
        self.0.freed.notify_one();
    }
}

/// The longest a free slot waits for a claim while others run (see the claim loop).
const CLAIM_COOLDOWN: Duration = Duration::from_millis(5);

/// Free slots that make a claim worth it at once: a quarter of them, at least one.
fn claim_batch(slots: usize) -> usize {
    slots.div_ceil(4).max(1)
}

impl Worker {
    /// Claims up to `free` executions in one statement and starts each in `tasks`, each
    /// holding a slot of `slots`.
    async fn claim_and_start(
        &self,
        free: usize,
        slots: &Arc<Slots>,
        tasks: &mut JoinSet<()>,
        running: &Running,
    ) -> Result<usize, StoreError> {
        let started = Instant::now();
        let claimed = self
            .store
            .claim(
                &self.tier,
                &self.id,
                free as i64,
                self.config.lease,
                self.capped,
            )
            .await;
        crate::metrics::step("claim", started);
        let claimed = claimed?;
        let n = claimed.len();
        self.stats.claimed.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("sluice_claims_total", "tier" => self.tier.clone()).increment(n as u64);
        for execution in claimed {
            let signals = Signals::default();
            lock(running).insert(execution.id, signals.clone());
            let worker = self.clone();
            let running = running.clone();
            let slot = slots.take();
            tasks.spawn(async move {
                let id = execution.id;
                worker.execute(execution, signals, slot).await;
                lock(&running).remove(&id);
            });
        }
        Ok(n)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking execution task must not take the whole worker down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Forwards notifications for this tier to the claim loop (reconnecting after errors).
async fn listen(
    store: Store,
    tier: String,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    let channels = [Channel::Work, Channel::Cancel];
    store
        .listen(
            &channels,
            "listen for work",
            &shutdown,
            |channel, payload| {
                let event = match channel {
                    Channel::Work if payload == tier => Event::Work,
                    Channel::Cancel => match payload.parse() {
                        Ok(id) => Event::Cancel(id),
                        Err(_) => return,
                    },
                    _ => return,
                };
                // A full queue already holds a wake-up; dropping this one loses nothing.
                let _ = events.try_send(event);
            },
        )
        .await
}
