//! How roles behave while a dependency (Postgres, ClickHouse, the result store) is down:
//! they keep running, retry with a growing delay, and log the outage once per interval
//! rather than once per attempt, then once more when it is over.

use std::fmt::Display;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Logs failures of one operation at most once per `every`.
#[derive(Debug)]
pub struct OutageLog {
    what: &'static str,
    every: Duration,
    last_logged: Option<Instant>,
    suppressed: u64,
    /// Failures since the operation last worked, reported when it works again.
    failures: u64,
    down_since: Option<Instant>,
}

impl OutageLog {
    pub fn new(what: &'static str) -> OutageLog {
        OutageLog {
            what,
            every: Duration::from_secs(30),
            last_logged: None,
            suppressed: 0,
            failures: 0,
            down_since: None,
        }
    }

    pub fn failure(&mut self, error: &dyn Display) {
        let now = Instant::now();
        let since = *self.down_since.get_or_insert(now);
        self.failures += 1;
        if self.last_logged.is_none_or(|t| now - t >= self.every) {
            warn!(
                operation = self.what,
                error = %error,
                down_for = ?(now - since),
                failures_not_logged = self.suppressed,
                "operation failing; retrying with backoff"
            );
            self.last_logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }

    pub fn success(&mut self) {
        if let Some(since) = self.down_since.take() {
            info!(
                operation = self.what,
                down_for = ?since.elapsed(),
                failures = self.failures,
                "operation works again"
            );
            self.last_logged = None;
            self.suppressed = 0;
            self.failures = 0;
        }
    }
}

/// Doubling delays between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before try `n + 1` after `n` failed tries (n >= 1): `min * 2^(n-1)`,
    /// at most `max`, without overflow however large `n` is. The retry of an execution
    /// and of a webhook delivery.
    pub fn after(min: Duration, max: Duration, n: i64) -> Duration {
        let exp = u32::try_from(n.saturating_sub(1).clamp(0, 20)).unwrap_or(0);
        min.saturating_mul(1 << exp).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_formula_doubles_from_the_first_retry_and_caps() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let got: Vec<u64> = [0, 1, 2, 3, 4, 6, 7, 30, i64::MAX]
            .into_iter()
            .map(|n| Backoff::after(min, max, n).as_secs())
            .collect();
        assert_eq!(got, [1, 1, 2, 4, 8, 32, 60, 60, 60]);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn outage_log_counts_what_it_does_not_log() {
        let mut log = OutageLog::new("test");
        log.failure(&"down");
        log.failure(&"down");
        log.failure(&"down");
        assert_eq!(log.suppressed, 2);
        assert_eq!(log.failures, 3);
        log.success();
        assert_eq!(log.failures, 0);
        assert!(log.down_since.is_none());
    }
}
