//! The circuit breaker in front of the storage: after a few consecutive failures it stops calling
//! a dead store for a short, growing interval (100 ms doubling to at most 2 s), then lets a single
//! probe through. A success closes it at once, so tiergate is back on Redis within about 2 s of
//! Redis answering again. Transitions are logged once and mirrored in `tiergate_storage_fallback`.
//!
//! Every guarded call holds a [`Permit`], and the permit is the only way to report an outcome:
//! [`Permit::success`] or [`Permit::failure`] consume it, and a permit dropped unsettled (an early
//! return, or a request future cancelled because the client went away) counts as a failure. So a
//! probe can never be taken and forgotten, which once left the breaker open until restart.
//!
//! [`Breakers`]: one breaker for a single Redis; on Redis Cluster one per group of 64 hash slots
//! (256 groups), so a dead master opens only the breakers of its own slots and callers whose keys
//! live on healthy masters stay on Redis (one breaker for the whole cluster sent everybody to the
//! fallback when one master died: the multi-host failover test found it). The gauge and the log
//! follow the set: 1 and one error line when the first breaker opens, 0 and one line when the last
//! closes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Consecutive failures before the breaker opens.
const FAILURES_TO_OPEN: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub struct Breaker {
    state: Mutex<State>,
    open: Arc<OpenCount>,
    /// Which group of hash slots this breaker guards (for its debug lines); 0 for a single Redis.
    shard: usize,
}

/// How many breakers of a set are open, mirrored in `tiergate_storage_fallback` as 0 or 1.
pub struct OpenCount {
    n: AtomicUsize,
    gauge: metrics::Gauge,
}

impl OpenCount {
    pub fn new(gauge: metrics::Gauge) -> Arc<OpenCount> {
        Arc::new(OpenCount { n: AtomicUsize::new(0), gauge })
    }

    fn opened(&self, why: &str) {
        if self.n.fetch_add(1, Ordering::AcqRel) == 0 {
            self.gauge.set(1.0);
            tracing::error!(error = why, "storage failing: limit decisions now follow on_error until it answers");
        }
    }

    fn closed(&self) {
        if self.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gauge.set(0.0);
            tracing::warn!("storage is answering again: limit decisions come from storage");
        }
    }

    pub fn any(&self) -> bool {
        self.n.load(Ordering::Acquire) > 0
    }
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
    /// One breaker counting in `open` while it is open.
    pub fn new(open: Arc<OpenCount>, shard: usize) -> Breaker {
        Breaker {
            state: Mutex::new(State { failures: 0, open_until: None, backoff: FIRST_BACKOFF, probing: false }),
            open,
            shard,
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

    /// An open breaker nobody has called since its interval ended (for another `MAX_BACKOFF`):
    /// no decision follows `on_error` through it, so it stops counting as open. It closes one
    /// failure short of opening, so the next call that fails opens it again at once.
    fn close_if_idle(&self, now: Instant) {
        let mut s = self.lock();
        if let Some(until) = s.open_until
            && !s.probing
            && now >= until + MAX_BACKOFF
        {
            s.open_until = None;
            s.failures = FAILURES_TO_OPEN - 1;
            s.backoff = FIRST_BACKOFF;
            drop(s);
            tracing::debug!(shard = self.shard, "idle storage breaker closed");
            self.open.closed();
        }
    }

    fn success(&self) {
        let mut s = self.lock();
        s.failures = 0;
        s.probing = false;
        if s.open_until.take().is_some() {
            s.backoff = FIRST_BACKOFF;
            tracing::debug!(shard = self.shard, "storage breaker closed");
            self.open.closed();
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
                tracing::debug!(shard = self.shard, error = why, "storage breaker opened");
                self.open.opened(why);
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
            self.open.closed();
        }
    }
}

/// Hash-slot groups on Redis Cluster (16,384 slots / 256 = 64 slots each).
const GROUPS: usize = 256;

/// The breakers of one store: one for a single Redis, one per group of hash slots on a cluster.
pub struct Breakers {
    each: Vec<Breaker>,
    open: Arc<OpenCount>,
}

impl Breakers {
    /// `cluster`: one breaker per slot group; otherwise one.
    pub fn new(gauge: metrics::Gauge, cluster: bool) -> Breakers {
        let open = OpenCount::new(gauge);
        let n = if cluster { GROUPS } else { 1 };
        Breakers { each: (0..n).map(|i| Breaker::new(Arc::clone(&open), i)).collect(), open }
    }

    /// The breaker guarding calls on `key` (a Redis key, or the hash tag inside its braces).
    pub fn of(&self, key: &[u8]) -> &Breaker {
        self.of_slot(|| crc16::State::<crc16::XMODEM>::calculate(hash_tag(key)))
    }

    /// The breaker guarding an identity's keys, `{prefix}:{<identity>}:…`: the identity is their hash
    /// tag (up to a `}` in it, as Redis reads it). Hashed as it is written, with no allocation.
    pub fn of_tag(&self, identity: &impl std::fmt::Display) -> &Breaker {
        self.of_slot(|| {
            let mut tag = TagCrc { crc: crc16::State::<crc16::XMODEM>::new(), closed: false };
            let _ = std::fmt::Write::write_fmt(&mut tag, format_args!("{identity}"));
            tag.crc.get()
        })
    }

    /// The breaker guarding a key built only when needed (a cluster): `key` is not called for a
    /// single Redis.
    pub fn of_key(&self, key: impl FnOnce() -> String) -> &Breaker {
        self.of_slot(|| crc16::State::<crc16::XMODEM>::calculate(hash_tag(key().as_bytes())))
    }

    fn of_slot(&self, crc: impl FnOnce() -> u16) -> &Breaker {
        if self.each.len() == 1 {
            return &self.each[0];
        }
        let slot = usize::from(crc() % 16_384);
        &self.each[slot * self.each.len() / 16_384]
    }

    /// Closes breakers left open by callers that stopped calling (on a cluster, a slot group only
    /// some callers use): without it the gauge would say "degraded" long after the last decision
    /// that was. Called on a timer.
    pub fn close_idle(&self) {
        if self.open.any() {
            let now = Instant::now();
            for b in &self.each {
                b.close_if_idle(now);
            }
        }
    }

    /// Some breaker is open: some decisions follow `on_error`.
    pub fn any_open(&self) -> bool {
        self.open.any()
    }
}

/// CRC16 of a hash tag as it is written: everything up to the first `}`.
struct TagCrc {
    crc: crc16::State<crc16::XMODEM>,
    closed: bool,
}

impl std::fmt::Write for TagCrc {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if !self.closed {
            let part = s.split('}').next().unwrap_or("");
            self.crc.update(part.as_bytes());
            self.closed = part.len() < s.len();
        }
        Ok(())
    }
}

/// What Redis Cluster hashes: the part between the first `{` and the next `}`, when not empty.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_probes_and_closes() {
        let b = Breaker::new(OpenCount::new(metrics::Gauge::noop()), 0);
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
        let b = Breaker::new(OpenCount::new(metrics::Gauge::noop()), 0);
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

    #[test]
    fn cluster_breakers_follow_the_hash_slot() {
        let set = Breakers::new(metrics::Gauge::noop(), true);
        // The slots Redis computes (CLUSTER KEYSLOT): "foo" 12182, "{user1000}.following" 3443,
        // "rate_limit:{user:a}:minute" 12527.
        let slot = |k: &[u8]| crc16::State::<crc16::XMODEM>::calculate(hash_tag(k)) % 16_384;
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"{user1000}.following"), 3_443);
        assert_eq!(slot(b"rate_limit:{user:a}:minute"), 12_527);
        assert_eq!(slot(b"{user1000}.followers"), 3_443);
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}", "an empty tag hashes the whole key");
        // One identity's keys share a breaker; failures there leave other slots' breakers closed.
        let a = set.of(b"rate_limit:{user:a}:minute");
        assert!(std::ptr::eq(a, set.of(b"rate_limit:{user:a}:day")));
        for _ in 0..FAILURES_TO_OPEN {
            a.allow().expect("closed").failure("down");
        }
        assert!(a.is_open() && set.any_open());
        let other =
            (0..100).map(|i| format!("rate_limit:{{user:{i}}}:minute")).find(|k| !set.of(k.as_bytes()).is_open());
        assert!(other.is_some(), "another slot group is still closed");
        // An identity hashed as it is written picks the same breaker as its keys.
        for id in ["user:a", "ip:10.0.0.7", "user:we}ird"] {
            let key = format!("rate_limit:{{{id}}}:minute");
            assert!(std::ptr::eq(set.of_tag(&id), set.of(key.as_bytes())), "{id}");
            assert!(std::ptr::eq(set.of_key(|| key.clone()), set.of(key.as_bytes())), "{id}");
        }
        let single = Breakers::new(metrics::Gauge::noop(), false);
        assert!(std::ptr::eq(single.of(b"x"), single.of(b"{y}")), "one breaker for a single Redis");
        assert!(std::ptr::eq(single.of_key(|| unreachable!("no key is built for a single Redis")), single.of(b"x")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_nobody_calls_stops_counting_as_open() {
        let set = Breakers::new(metrics::Gauge::noop(), false);
        let b = set.of(&[]);
        for _ in 0..FAILURES_TO_OPEN {
            b.allow().expect("closed").failure("down");
        }
        set.close_idle();
        assert!(set.any_open(), "just opened");
        tokio::time::advance(FIRST_BACKOFF + MAX_BACKOFF).await;
        set.close_idle();
        assert!(!set.any_open(), "nobody called it for the longest backoff after its interval");
        b.allow().expect("closed").failure("still down");
        assert!(set.any_open(), "one more failure opens it again at once");
    }
}
