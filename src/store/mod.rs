//! Everything that touches PostgreSQL. All SQL of Sluice lives in this module and its
//! children, next to the function that needs it.
//!
//! - [`submit`]: create an execution, collapse a duplicate into the in-flight one, or
//!   supersede an in-flight one whose SQL changed.
//! - [`queue`]: the worker's side: claim, heartbeat, complete, fail, cancel, hand back.
//!   Every write after a claim is fenced by `(id, attempt, worker_id)` and
//!   `status = 'RUNNING'`, so a worker that lost its lease updates zero rows.
//! - [`read`]: get and list for the API.
//! - [`maintenance`]: the bookkeeper's passes (reclaim, expire, purge, orphans).
//! - [`leader`]: which bookkeeper acts.
//!
//! The store never talks to ClickHouse or the object store, and never decides policy
//! (which tier, how many attempts): callers pass those in.

pub mod leader;
pub mod maintenance;
pub mod queue;
pub mod read;
pub mod submit;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};

/// NOTIFY channel the api signals when work is queued; the payload is the tier.
pub const WORK_CHANNEL: &str = "sluice_work";
/// NOTIFY channel the api signals when a RUNNING execution must stop; the payload is its id.
pub const CANCEL_CHANNEL: &str = "sluice_cancel";
/// NOTIFY channel a trigger (migration 0004) signals when an execution ends (SUCCEEDED,
/// FAILED or CANCELED); the payload is its id. Long polls in the api wait on it.
pub const FINISHED_CHANNEL: &str = "sluice_finished";

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
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The handle every role shares: a connection pool plus the statements in the submodules.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
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
        Ok(Store { pool })
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    /// A LISTEN connection of its own: a listener holds its connection for good, so it
    /// must not take one of the pool's (sized for short statements).
    pub async fn listener(&self, channels: &[&str]) -> Result<PgListener> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(self.pool.connect_options().as_ref().clone())
            .await?;
        let mut listener = PgListener::connect_with(&own).await?;
        listener.listen_all(channels.iter().copied()).await?;
        Ok(listener)
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Postgres' unique_violation, raised when two submits race for one in-flight key.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// A duration as whole milliseconds, for `$n * interval '1 millisecond'`.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
