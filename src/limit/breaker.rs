//! The circuit breaker in front of the storage: after a few consecutive failures it stops calling
//! a dead store for a short, growing interval (100 ms doubling to at most 2 s), then lets a single
//! probe through. A success closes it at once, so tiergate is back on Redis within about 2 s of
//! Redis answering again. Transitions are logged once and mirrored in `tiergate_storage_fallback`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Consecutive failures before the breaker opens.
const FAILURES_TO_OPEN: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub struct Breaker {
    state: Mutex<State>,
    gauge: metrics::Gauge,
}

struct State {
    failures: u32,
    /// `Some`: open (degraded) until then; then one probe is let through.
    open_until: Option<Instant>,
    backoff: Duration,
    probing: bool,
}

impl Breaker {
    /// `gauge` goes up by one while this breaker is open and back down when it closes (or is
    /// dropped), so a process with one limiter shows exactly 0 or 1.
    pub fn new(gauge: metrics::Gauge) -> Breaker {
        Breaker {
            state: Mutex::new(State { failures: 0, open_until: None, backoff: FIRST_BACKOFF, probing: false }),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May this request call the store? (Closed; or open, past its interval, and no probe out.)
    pub fn allow(&self) -> bool {
        let mut s = self.lock();
        match s.open_until {
            None => true,
            Some(until) if Instant::now() >= until && !s.probing => {
                s.probing = true;
                true
            }
            Some(_) => false,
        }
    }

    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    pub fn success(&self) {
        let mut s = self.lock();
        s.failures = 0;
        s.probing = false;
        if s.open_until.take().is_some() {
            s.backoff = FIRST_BACKOFF;
            self.gauge.decrement(1.0);
            tracing::warn!("storage is answering again: limit decisions come from storage");
        }
    }

    pub fn failure(&self, why: &str) {
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        let was_probe = std::mem::take(&mut s.probing);
        match s.open_until {
            None if s.failures >= FAILURES_TO_OPEN => {
                s.backoff = FIRST_BACKOFF;
                s.open_until = Some(Instant::now() + s.backoff);
                self.gauge.increment(1.0);
                tracing::error!(error = why, "storage failing: limit decisions now follow on_error until it answers");
            }
            Some(_) if was_probe => {
                s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
                s.open_until = Some(Instant::now() + s.backoff);
            }
            _ => {}
        }
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        if self.lock().open_until.is_some() {
            self.gauge.decrement(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_probes_and_closes() {
        let b = Breaker::new(metrics::Gauge::noop());
        for _ in 0..FAILURES_TO_OPEN {
            assert!(b.allow());
            b.failure("down");
        }
        assert!(b.is_open());
        assert!(!b.allow(), "open: no calls");
        tokio::time::advance(FIRST_BACKOFF).await;
        assert!(b.allow(), "one probe");
        assert!(!b.allow(), "only one probe at a time");
        b.failure("still down");
        tokio::time::advance(FIRST_BACKOFF).await;
        assert!(!b.allow(), "backoff doubled");
        tokio::time::advance(FIRST_BACKOFF).await;
        assert!(b.allow());
        b.success();
        assert!(!b.is_open());
        assert!(b.allow() && b.allow());
        // Backoff never grows past the maximum.
        for _ in 0..FAILURES_TO_OPEN {
            b.failure("down");
        }
        for _ in 0..10 {
            tokio::time::advance(MAX_BACKOFF).await;
            assert!(b.allow());
            b.failure("down");
        }
        tokio::time::advance(MAX_BACKOFF).await;
        assert!(b.allow());
    }
}
