//! The circuit breaker in front of the storage: after a few consecutive failures it stops calling
//! a dead store for a short, growing interval (100 ms doubling to at most 2 s), then lets a single
//! probe through. A success closes it at once, so tiergate is back on Redis within about 2 s of
//! Redis answering again. Transitions are logged once and mirrored in `tiergate_storage_fallback`.
//!
//! Every guarded call holds a [`Permit`], and the permit is the only way to report an outcome:
//! [`Permit::success`] or [`Permit::failure`] consume it, and a permit dropped unsettled (an early
//! return, or a request future cancelled because the client went away) counts as a failure. So a
//! probe can never be taken and forgotten, which once left the breaker open until restart.

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

/// Leave to make one store call. Settle it with [`Permit::success`] or [`Permit::failure`]; dropped
/// unsettled, it counts as a failure.
#[must_use = "a permit dropped unsettled counts as a failure"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    settled: bool,
}

impl Permit<'_> {
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.success();
    }

    pub fn failure(mut self, why: &str) {
        self.settled = true;
        self.breaker.failure(why);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.failure("storage call abandoned before it answered");
        }
    }
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

    /// Leave to call the store: closed; or open, past its interval, and no probe out (this call is
    /// the probe). `None`: decide without the store.
    pub fn allow(&self) -> Option<Permit<'_>> {
        let mut s = self.lock();
        let allowed = match s.open_until {
            None => true,
            Some(until) if Instant::now() >= until && !s.probing => {
                s.probing = true;
                true
            }
            Some(_) => false,
        };
        drop(s);
        // Built only when allowed: a permit dropped unsettled reports a failure.
        if allowed { Some(Permit { breaker: self, settled: false }) } else { None }
    }

    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    fn success(&self) {
        let mut s = self.lock();
        s.failures = 0;
        s.probing = false;
        if s.open_until.take().is_some() {
            s.backoff = FIRST_BACKOFF;
            self.gauge.decrement(1.0);
            tracing::warn!("storage is answering again: limit decisions come from storage");
        }
    }

    fn failure(&self, why: &str) {
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
            b.allow().expect("closed").failure("down");
        }
        assert!(b.is_open());
        assert!(b.allow().is_none(), "open: no calls");
        tokio::time::advance(FIRST_BACKOFF).await;
        let probe = b.allow().expect("one probe");
        assert!(b.allow().is_none(), "only one probe at a time");
        probe.failure("still down");
        tokio::time::advance(FIRST_BACKOFF).await;
        assert!(b.allow().is_none(), "backoff doubled");
        tokio::time::advance(FIRST_BACKOFF).await;
        b.allow().expect("probe").success();
        assert!(!b.is_open());
        let (one, two) = (b.allow().expect("closed"), b.allow().expect("closed: every call may go"));
        one.success();
        two.success();
        // Backoff never grows past the maximum.
        for _ in 0..FAILURES_TO_OPEN {
            b.allow().expect("closed").failure("down");
        }
        for _ in 0..10 {
            tokio::time::advance(MAX_BACKOFF).await;
            b.allow().expect("probe after the longest backoff").failure("down");
        }
        tokio::time::advance(MAX_BACKOFF).await;
        assert!(b.allow().is_some());
    }

    /// The defect this type exists for: a probe taken and never reported (a caller that ignored the
    /// result, or a request future dropped mid-call) used to leave the breaker open for good.
    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_counts_as_a_failure_and_the_next_probe_comes() {
        let b = Breaker::new(metrics::Gauge::noop());
        for _ in 0..FAILURES_TO_OPEN {
            b.allow().expect("closed").failure("down");
        }
        tokio::time::advance(FIRST_BACKOFF).await;
        drop(b.allow().expect("probe"));
        assert!(b.is_open());
        tokio::time::advance(MAX_BACKOFF).await;
        // A future holding the probe, cancelled before it settles.
        let fut = async {
            let _permit = b.allow().expect("second probe");
            std::future::pending::<()>().await;
        };
        assert!(tokio::time::timeout(Duration::from_millis(10), fut).await.is_err());
        tokio::time::advance(MAX_BACKOFF).await;
        b.allow().expect("a third probe: nothing leaked").success();
        assert!(!b.is_open());
    }
}
