//! Everything that touches PostgreSQL. All SQL of Sluice lives in this module and its
//! children, next to the function that needs it.
//!
//! - [`submit`]: create an execution, collapse a duplicate into the in-flight one, or
//!   supersede an in-flight one whose SQL changed; overlapping submits share a statement
//!   and a commit.
//! - [`queue`]: the worker's side: claim, heartbeat, complete, fail, cancel, hand back.
//!   Every write after a claim is fenced by `(id, attempt, worker_id)` and
//!   `status = 'RUNNING'`, so a worker that lost its lease updates zero rows.
//! - [`groups`]: executions created together under a concurrency limit.
//! - [`read`]: get and list for the API.
//! - [`maintenance`]: the bookkeeper's passes (reclaim, expire, purge, orphans).
//! - [`leader`]: which bookkeeper acts.
//! - [`notify`]: every NOTIFY and LISTEN (wake-ups of workers and long polls).
//! - [`bench`]: what only `sluice bench` runs (scratch database, timings, bulk rows).
//!
//! The store never talks to ClickHouse or the object store, and never decides policy
//! (which tier, how many attempts): callers pass those in.

pub mod bench;
pub mod groups;
pub mod leader;
pub mod maintenance;
pub mod notify;
pub mod queue;
pub mod read;
pub mod submit;
pub mod webhooks;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::mpsc;

pub use notify::Channel;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres cannot be reached (connection refused, pool exhausted, ...).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("gave up after repeated conflicts on query_id `{0}`")]
    Contention(String),
    /// One statement written for several callers failed; each of them gets this.
    #[error(transparent)]
    Batch(Arc<StoreError>),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            // Connection exceptions (08...), and the server ending our session:
            // admin_shutdown, crash_shutdown, cannot_connect_now (57P01-57P03).
            sqlx::Error::Database(ref d)
                if d.code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) =>
            {
                StoreError::Unavailable(e)
            }
            other => StoreError::Database(other),
        }
    }
}

impl StoreError {
    /// Whether trying again (on a new connection) may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Batch(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The handle every role shares: a connection pool plus the statements in the submodules.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// Coalesced work wake-ups ([`Store::wake_workers`]), started on first use.
    wakes: Arc<OnceLock<mpsc::UnboundedSender<String>>>,
    /// Completions written in batches ([`Store::complete`]), started on first use.
    completions: Arc<OnceLock<mpsc::UnboundedSender<queue::PendingCompletion>>>,
    /// Submits in progress in this process ([`Store::submit`]).
    submits: Arc<std::sync::atomic::AtomicUsize>,
    /// Submits written in batches ([`Store::submit`]), started on first use.
    submit_batches: Arc<OnceLock<mpsc::UnboundedSender<submit::PendingSubmit>>>,
}

impl Store {
    /// Connects lazily-checked: the pool is created and one connection is tried, so a
    /// wrong URL fails at start-up with a clear message.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Store::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store {
            pool,
            wakes: Arc::default(),
            completions: Arc::default(),
            submits: Arc::default(),
            submit_batches: Arc::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }
}

/// A small pool of its own, connected lazily with `options`: for a writer that keeps
/// session settings of its own, or whose statements must not queue behind the shared
/// pool's.
fn side_pool(connections: u32, options: sqlx::postgres::PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options)
}

/// `first` and whatever else is already waiting in `queue`, up to `max` in all: the next
/// batch of a group-commit writer (submits, completions, wake-ups).
fn gather<T>(first: T, queue: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < max
        && let Ok(next) = queue.try_recv()
    {
        batch.push(next);
    }
    batch
}

/// Postgres' unique_violation, raised when two submits race for one in-flight key.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// A duration as whole milliseconds, for `$n * interval '1 millisecond'`.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
