//! Long polls: `?wait=N` on `GET /v1/executions/{id}` and on submit answers as soon as
//! the execution ends, or after N seconds with its state then.
//!
//! A trigger NOTIFYs `sluice_finished` with the id whenever an execution ends, from any
//! process (migration 0004). Each api process keeps one LISTEN connection and wakes the
//! requests waiting on that id ([`Finishes`]). Notifications are only a shortcut: a
//! waiter also re-reads the row every [`RECHECK`], so a lost LISTEN connection (or a
//! notification sent while it reconnects) delays an answer by at most that much and never
//! leaves one hanging. Waiting holds no database connection; it must never hold up
//! shutdown, so a waiter answers at once when the server stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::execution::Execution;
use crate::store::{Channel, Result, Store};

/// How often a waiter re-reads its execution even without a notification.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The executions some request is waiting on, each with the [`Notify`] that wakes its
/// waiters. Entries are weak: the last waiter to leave drops the `Notify`, and the entry
/// is removed then (or when the execution ends).
#[derive(Default)]
pub struct Finishes {
    waiting: Mutex<HashMap<Uuid, Weak<Notify>>>,
}

/// One request's interest in one execution; leaving removes the entry when it was the
/// last.
struct Watch<'a> {
    finishes: &'a Finishes,
    id: Uuid,
    notify: Arc<Notify>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut waiting = self.finishes.lock();
        // Only this watch holds the Notify: nobody else waits on this id.
        if Arc::strong_count(&self.notify) == 1
            && waiting
                .get(&self.id)
                .is_some_and(|w| w.as_ptr() == Arc::as_ptr(&self.notify))
        {
            waiting.remove(&self.id);
        }
    }
}

impl Finishes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Weak<Notify>>> {
        // Nothing under this lock can panic half-way; a poisoned map is still consistent.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch(&self, id: Uuid) -> Watch<'_> {
        let mut waiting = self.lock();
        let notify = match waiting.get(&id).and_then(Weak::upgrade) {
            Some(n) => n,
            None => {
                let n = Arc::new(Notify::new());
                waiting.insert(id, Arc::downgrade(&n));
                n
            }
        };
        Watch {
            finishes: self,
            id,
            notify,
        }
    }

    /// Wakes every request waiting on `id`.
    pub fn finished(&self, id: Uuid) {
        let notify = self.lock().remove(&id).and_then(|w| w.upgrade());
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }

    /// How many executions are being waited on (for tests of the cleanup).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the execution until it has ended, `wait` has passed or `shutdown` fires, and
    /// returns the last state read (`None`: not there, or not the caller's).
    pub async fn wait(
        &self,
        store: &Store,
        id: Uuid,
        scope: Option<&str>,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<Execution>> {
        let deadline = tokio::time::Instant::now() + wait;
        let watch = self.watch(id);
        loop {
            // Registered before the read, so an end committed after it cannot be missed.
            let woken = watch.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let execution = store.get(id, scope).await?;
            let now = tokio::time::Instant::now();
            let ended = execution.as_ref().is_none_or(|e| e.status.is_terminal());
            if ended || now >= deadline || shutdown.is_cancelled() {
                return Ok(execution);
            }
            let nap = (deadline - now).min(RECHECK);
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(nap) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// LISTENs on `sluice_finished` until `shutdown`, waking waiters; reconnects after
    /// errors (waiters fall back to [`RECHECK`] meanwhile).
    pub async fn listen(self: Arc<Self>, store: Store, shutdown: CancellationToken) {
        store
            .listen(
                &[Channel::Finished],
                "listen for finished executions",
                &shutdown,
                |_, payload| {
                    if let Ok(id) = payload.parse() {
                        self.finished(id);
                    }
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_waiter_to_leave_removes_the_entry() {
        let f = Finishes::default();
        let id = Uuid::now_v7();
        let a = f.watch(id);
        let b = f.watch(id);
        assert!(Arc::ptr_eq(&a.notify, &b.notify), "one Notify per id");
        drop(a);
        assert_eq!(f.len(), 1, "b still waits");
        drop(b);
        assert!(f.is_empty());
    }

    #[tokio::test]
    async fn finished_wakes_every_enabled_waiter() {
        let f = Finishes::default();
        let id = Uuid::now_v7();
        let w = f.watch(id);
        {
            let woken = w.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            f.finished(id);
            // Completes at once: the wake-up was delivered to the enabled future.
            tokio::time::timeout(Duration::from_secs(5), woken)
                .await
                .unwrap_or_else(|_| panic!("not woken"));
        }
        assert!(f.is_empty(), "the entry went with the end");
        drop(w);
        assert!(f.is_empty());
    }
}
