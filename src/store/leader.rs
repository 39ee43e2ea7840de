//! Bookkeeper leadership: a session-level advisory lock held on a dedicated connection.
//!
//! Any number of bookkeepers may run; the one holding the lock acts. The lock lives as
//! long as its connection: when the leader dies (even `kill -9`), the kernel closes its
//! socket, Postgres ends the session and releases the lock, and the next bookkeeper to
//! try (every `bookkeeper.interval`) takes over. The holder's identity is the
//! connection's `application_name`, so anyone can see who leads (`/ready`).

use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection};

use super::{Result, Store};

/// The advisory lock's two keys (`pg_try_advisory_lock(int4, int4)`).
const LOCK_CLASS: i32 = 0x5_1CE; // "sluice"
const LOCK_OBJECT: i32 = 1;

/// Proof of leadership; dropping it ends the session and so the leadership.
pub struct Leadership {
    conn: PgConnection,
}

impl Leadership {
    /// Whether the session (and so the lock) is still alive.
    pub async fn still_held(&mut self) -> bool {
        sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .is_ok()
    }

    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}

impl Store {
    /// Tries once to become the leader; `None` when another bookkeeper leads.
    pub async fn try_lead(&self, holder: &str) -> Result<Option<Leadership>> {
        let options = self
            .pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(holder);
        let mut conn = options.connect().await?;
        let (won,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(LOCK_OBJECT)
            .fetch_one(&mut conn)
            .await?;
        if won {
            Ok(Some(Leadership { conn }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// The current leader's name, if any bookkeeper leads this database.
    pub async fn leader(&self) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT a.application_name FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 2 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(LOCK_CLASS)
        .bind(LOCK_OBJECT)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(name,)| name))
    }
}
