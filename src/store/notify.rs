//! Wake-ups between processes: every NOTIFY Sluice sends and every LISTEN it keeps.
//!
//! Channels ([`Channel`]):
//! - `sluice_work`, payload a tier: work was queued (or handed back, or reclaimed); the
//!   tier's idle workers claim.
//! - `sluice_cancel`, payload an execution id: a RUNNING execution must stop.
//! - `sluice_finished`, payload an execution id: an execution ended. Sent by a trigger
//!   (migration 0004), so that every path that ends one is covered.
//!
//! Notifications are a shortcut, never the only way: workers also poll, long polls also
//! re-read their row, so a lost notification (or a LISTEN connection that is being
//! re-made) costs latency, never correctness.
//!
//! **Sent after the commit, in a statement of its own.** Postgres serializes the commits
//! of transactions that NOTIFY: one cluster-wide lock is held from pre-commit until the
//! commit record is flushed. Measured on the 2-core development machine with pgbench,
//! 16 clients: a one-row INSERT commits 8,939 times/s alone and 587 times/s with a
//! `pg_notify` in the same statement. So writes commit without a NOTIFY and the wake-up
//! follows; a NOTIFY-only statement writes nothing to flush and costs one round trip
//! (53 µs). Two exceptions, where the serialization costs nothing: a submit with no
//! other in progress in its process notifies inside its INSERT (one round trip less of
//! pickup latency, see `submit`), and the `sluice_finished` trigger notifies inside the
//! transactions that end executions: a worker's batch of completions (see `queue`), a
//! cancel, a bookkeeper pass — few.
//!
//! **Work wake-ups are coalesced** ([`Store::wake_workers`]): while one is being sent,
//! later ones (of any tier) wait and go out together in the next statement, so a burst
//! of a thousand submits costs a handful of NOTIFYs and an idle tier is woken one round
//! trip after the commit.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Result, Store};
use crate::outage::{Backoff, OutageLog};

/// A NOTIFY channel of Sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Work was queued on a tier (payload: the tier).
    Work,
    /// A RUNNING execution must stop (payload: its id).
    Cancel,
    /// An execution ended (payload: its id); sent by a trigger.
    Finished,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Work, Channel::Cancel, Channel::Finished];

    pub const fn name(self) -> &'static str {
        match self {
            Channel::Work => "sluice_work",
            Channel::Cancel => "sluice_cancel",
            Channel::Finished => "sluice_finished",
        }
    }

    fn from_name(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl Store {
    /// Sends one notification now, outside any transaction of the caller's: call it after
    /// the commit that made the news true. A failure is only logged: every listener has
    /// a fallback (polling, heartbeats, re-reads).
    pub async fn notify(&self, channel: Channel, payload: &str) {
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel.name())
            .bind(payload)
            .execute(&self.pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(channel = channel.name(), error = %e, "NOTIFY failed; listeners will poll");
        }
    }

    /// Wakes the idle workers of `tier` soon after the caller's commit, without waiting
    /// for it (see the module comment: coalesced with other wake-ups in flight). A failure
    /// is logged once per interval; workers then find the work by polling.
    pub fn wake_workers(&self, tier: &str) {
        let sender = self.wakes.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(send_wakes(self.pool.clone(), rx));
            tx
        });
        // The receiver lives as long as any clone of this store.
        let _ = sender.send(tier.to_string());
    }

    /// A LISTEN connection of its own: a listener holds its connection for good, so it
    /// must not take one of the pool's (sized for short statements).
    pub async fn listener(&self, channels: &[Channel]) -> Result<PgListener> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(self.pool.connect_options().as_ref().clone())
            .await?;
        let mut listener = PgListener::connect_with(&own).await?;
        listener
            .listen_all(channels.iter().map(|c| c.name()))
            .await?;
        Ok(listener)
    }

    /// LISTENs on `channels` until `shutdown`, handing every notification to `on`.
    /// Reconnects after errors with a growing delay, logging the outage once per
    /// interval (`what` names it); callers rely on their fallback meanwhile.
    pub async fn listen(
        &self,
        channels: &[Channel],
        what: &'static str,
        shutdown: &CancellationToken,
        mut on: impl FnMut(Channel, &str),
    ) {
        let mut outage = OutageLog::new(what);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            let mut listener = match self.listener(channels).await {
                Ok(l) => l,
                Err(e) => {
                    outage.failure(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            outage.success();
            backoff.reset();
            loop {
                let received = tokio::select! {
                    n = listener.recv() => n,
                    _ = shutdown.cancelled() => return,
                };
                match received {
                    Ok(n) => {
                        if let Some(channel) = Channel::from_name(n.channel()) {
                            on(channel, n.payload());
                        }
                    }
                    Err(e) => {
                        outage.failure(&e);
                        break;
                    }
                }
            }
        }
    }
}

/// Sends the wake-ups of [`Store::wake_workers`]: everything queued while a NOTIFY is in
/// flight goes out in the next one, one notification per tier.
async fn send_wakes(pool: PgPool, mut wakes: mpsc::UnboundedReceiver<String>) {
    let mut outage = OutageLog::new("wake workers");
    while let Some(first) = wakes.recv().await {
        let mut tiers = super::gather(first, &mut wakes, usize::MAX);
        tiers.sort_unstable();
        tiers.dedup();
        let sent = sqlx::query("SELECT pg_notify($1, t) FROM unnest($2::text[]) AS t")
            .bind(Channel::Work.name())
            .bind(&tiers)
            .execute(&pool)
            .await;
        match sent {
            Ok(_) => outage.success(),
            Err(e) => outage.failure(&e),
        }
    }
}
