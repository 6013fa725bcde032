//! Limits: what a request may consume, and the decision the store returns.
//!
//! A [`Plan`] (compiled per tier × class in the snapshot) lists the rate windows that apply and the
//! concurrency cap. The [`Limiter`] is the one storage seam, over the in-memory store ([`local`]) or
//! Redis ([`redis`]), both with the same semantics; it applies the failure policy in one place. The limiter outlives
//! config snapshots, so counters survive a reload: windows are keyed by their *name*, and a changed
//! limit applies to the count already in the window.
//!
//! Admission is all-or-nothing: every window and the concurrency cap are checked under one lock, and
//! only if all have room is anything consumed. A refused request consumes nothing.
//!
//! With quota batching on (Redis only), the limiter first spends from this replica's reservation
//! ([`batch`]) and its pool of idle concurrency slots, and asks Redis only when either is empty; that
//! round trip decides the request and reserves the next units in one script call.

pub mod batch;
pub mod breaker;
pub mod local;
pub mod negative;
pub mod redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::identity::IdentityKey;
pub use crate::route::OnError;
pub use batch::Batching;
pub use breaker::{Breaker, Breakers};
pub use local::{LocalLease, LocalLimiter};
pub use negative::NegativeCache;
pub use redis::{Ask, RedisLease, RedisStore, RedisTarget};

/// How a window counts (`storage.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    SlidingLog,
    Gcra,
    FixedWindow,
}

/// The window name of the concurrency cap, in headers, bodies and Redis keys.
pub const CONCURRENT: &str = "concurrent";

/// Most rate windows one plan may carry (4 named + 32 custom, with room to spare).
pub const MAX_WINDOWS: usize = 40;

/// Milliseconds since the Unix epoch: the system's, a hand-driven one (tests of the memory store),
/// or the system's moved by an offset that tests advance (tests of the Redis store: the Redis script
/// adds the same offset to Redis `TIME`, so both sides of a decision see the same virtual time).
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicU64>),
    Shifted(Arc<AtomicI64>),
}

impl Clock {
    /// A clock that only moves when told to, starting at `start_ms`.
    pub fn manual(start_ms: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(start_ms)))
    }

    /// The system clock, moved forward by [`Clock::advance`].
    pub fn shifted() -> Clock {
        Clock::Shifted(Arc::new(AtomicI64::new(0)))
    }

    pub fn now_ms(&self) -> u64 {
        let system = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        match self {
            Clock::System => system(),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
            Clock::Shifted(offset) => system().saturating_add_signed(offset.load(Ordering::Relaxed)),
        }
    }

    /// Moves a manual or shifted clock forward; no effect on the system clock.
    pub fn advance(&self, ms: u64) {
        match self {
            Clock::System => {}
            Clock::Manual(t) => {
                t.fetch_add(ms, Ordering::Relaxed);
            }
            Clock::Shifted(offset) => {
                offset.fetch_add(ms as i64, Ordering::Relaxed);
            }
        }
    }

    /// The offset the Redis store adds to Redis `TIME`: a shifted clock's own (shared, so advancing
    /// the clock moves Redis time too), else a fixed zero.
    pub fn redis_offset(&self) -> Arc<AtomicI64> {
        match self {
            Clock::Shifted(offset) => Arc::clone(offset),
            _ => Arc::new(AtomicI64::new(0)),
        }
    }
}

/// One rate window of a plan.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    /// `minute`, `hour`, `day`, `export_day` or a custom limit's name.
    pub name: Arc<str>,
    /// Requests admitted per window; 0 admits none.
    pub limit: u64,
    pub window_ms: u64,
}

/// What applies to one (tier, class): rate windows (unlimited ones left out) and the concurrency cap.
/// Built with [`Plan::new`], which also takes its fingerprint once.
#[derive(Clone, Debug)]
pub struct Plan {
    pub algorithm: Algorithm,
    pub windows: Vec<WindowSpec>,
    pub concurrency: Option<u64>,
    fingerprint: u64,
}

impl Plan {
    pub fn new(algorithm: Algorithm, windows: Vec<WindowSpec>, concurrency: Option<u64>) -> Plan {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (algorithm as u8).hash(&mut h);
        for w in &windows {
            (&*w.name, w.limit, w.window_ms).hash(&mut h);
        }
        concurrency.hash(&mut h);
        Plan { algorithm, windows, concurrency, fingerprint: h.finish() }
    }

    /// Nothing to count: no store call at all.
    pub fn is_unlimited(&self) -> bool {
        self.windows.is_empty() && self.concurrency.is_none()
    }

    /// Tells plans apart by what they count (algorithm, windows, cap): a reservation taken under one
    /// plan is only spent under the same one, across reloads too. Taken when the plan is built.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// The state of the window that binds (fewest remaining; ties → shortest window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Index into [`Plan::windows`], or `None` for the concurrency cap.
    pub window: Option<usize>,
    pub limit: u64,
    pub remaining: u64,
    /// Epoch ms: when the oldest counted request leaves the window (on a refusal: when it has room).
    pub reset_ms: u64,
}

/// What one window says about admitting one more request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub allowed: bool,
    /// After admission when allowed; as it stands (0) when refused.
    pub remaining: u64,
    pub reset_ms: u64,
    /// When refused: epoch ms at which there is room.
    pub retry_at_ms: u64,
}

/// The store's answer for one request.
#[derive(Debug, Default)]
pub struct Decision {
    pub now_ms: u64,
    pub allowed: bool,
    /// Bit `i` set: window `i` of the plan is full.
    pub violated: u64,
    /// Each full window and the epoch ms at which it has room (refusals only).
    pub window_retry: Vec<(u16, u64)>,
    /// The concurrency cap refused the request.
    pub concurrency_violated: bool,
    /// Requests of this identity in flight when decided (before this one).
    pub in_flight: u64,
    /// Epoch ms at which every violated window has room again (refusals only).
    pub retry_at_ms: u64,
    pub binding: Option<Binding>,
    /// Held while the request is in flight (only when the plan has a concurrency cap and it was admitted).
    pub lease: Option<Lease>,
    /// Per window as checked (for the quota endpoint), in plan order.
    pub windows: Vec<Check>,
}

impl Decision {
    /// Whole seconds until the request may be retried: ≥ 1, and never before the window has room.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_at_ms.saturating_sub(self.now_ms).div_ceil(1000).max(1)
    }

    /// An admission that no store was asked about (`on_error = "allow"`): no headers to show.
    pub fn unchecked(now_ms: u64) -> Decision {
        Decision { now_ms, allowed: true, ..Decision::default() }
    }
}

/// A peek's view of `plan`'s windows as JSON (the quota endpoint and the admin port):
/// `{"windows": [{name, limit, window_seconds, remaining, reset}], "concurrent": {limit, in_flight}}`.
pub fn windows_json(plan: &Plan, d: &Decision) -> serde_json::Map<String, serde_json::Value> {
    let windows: Vec<serde_json::Value> = plan
        .windows
        .iter()
        .zip(d.windows.iter())
        .map(|(w, c)| {
            // A peek reports what is left now: an open window's check counted this request in.
            let remaining = if c.allowed { c.remaining + 1 } else { 0 };
            serde_json::json!({
                "name": &*w.name,
                "limit": w.limit,
                "window_seconds": w.window_ms.div_ceil(1000),
                "remaining": remaining,
                "reset": c.reset_ms.div_ceil(1000),
            })
        })
        .collect();
    let mut out = serde_json::Map::new();
    out.insert("windows".into(), serde_json::Value::Array(windows));
    if let Some(cap) = plan.concurrency {
        out.insert("concurrent".into(), serde_json::json!({ "limit": cap, "in_flight": d.in_flight }));
    }
    out
}

/// Orders candidate binding windows: (full, fewer remaining, shorter window); the greatest binds.
type Rank = (bool, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>);

/// Folds per-window checks into a [`Decision`]: the same rules for every store.
pub struct Tally {
    now_ms: u64,
    allowed: bool,
    violated: u64,
    window_retry: Vec<(u16, u64)>,
    retry_at_ms: u64,
    binding: Option<(Binding, Rank)>,
    windows: Vec<Check>,
}

impl Tally {
    pub fn new(now_ms: u64) -> Tally {
        Tally {
            now_ms,
            allowed: true,
            violated: 0,
            window_retry: Vec::new(),
            retry_at_ms: 0,
            binding: None,
            windows: Vec::new(),
        }
    }

    pub fn add(&mut self, i: usize, spec: &WindowSpec, c: Check) {
        if !c.allowed {
            self.allowed = false;
            if i < 64 {
                self.violated |= 1 << i;
            }
            self.window_retry.push((i as u16, c.retry_at_ms));
            self.retry_at_ms = self.retry_at_ms.max(c.retry_at_ms);
        }
        // The binding window: a full one before any open one; then fewest remaining; then shortest.
        let rank = (!c.allowed, std::cmp::Reverse(c.remaining), std::cmp::Reverse(spec.window_ms));
        if self.binding.as_ref().is_none_or(|(_, best)| rank > *best) {
            let b = Binding { window: Some(i), limit: spec.limit, remaining: c.remaining, reset_ms: c.reset_ms };
            self.binding = Some((b, rank));
        }
    }

    /// Records every check (peek mode wants them all).
    pub fn keep(&mut self, c: Check) {
        self.windows.push(c);
    }

    /// `concurrency`: (cap, requests already in flight).
    pub fn finish(mut self, concurrency: Option<(u64, u64)>) -> Decision {
        let mut concurrency_violated = false;
        if let Some((cap, in_flight)) = concurrency
            && in_flight >= cap
        {
            concurrency_violated = true;
            if self.allowed {
                // Only the cap refused: it is the binding limit. One second is the honest retry hint:
                // a slot frees when some response ends, which nobody can predict.
                let b = Binding { window: None, limit: cap, remaining: 0, reset_ms: self.now_ms + 1000 };
                self.binding = Some((b, (true, std::cmp::Reverse(0), std::cmp::Reverse(0))));
                self.retry_at_ms = self.now_ms + 1000;
            }
            self.allowed = false;
        }
        Decision {
            now_ms: self.now_ms,
            allowed: self.allowed,
            violated: self.violated,
            window_retry: self.window_retry,
            concurrency_violated,
            in_flight: concurrency.map_or(0, |(_, n)| n),
            retry_at_ms: self.retry_at_ms,
            binding: self.binding.map(|(b, _)| b),
            lease: None,
            windows: self.windows,
        }
    }
}

/// A concurrency slot, in whichever store granted it; released when dropped.
#[derive(Debug)]
pub enum Lease {
    Local(LocalLease),
    Redis(RedisLease),
}

/// The store could not answer (down, too slow, or its breaker open). For a decision, the route's
/// `on_error = "deny"` turns this into a 503.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("rate-limit storage unavailable")]
pub struct StoreUnavailable;

/// Reports one guarded store call to the breaker and counts its failure: the one place a store
/// outcome is classified.
fn settle<T>(
    permit: breaker::Permit<'_>,
    result: Result<Result<T, redis::StoreError>, tokio::time::error::Elapsed>,
) -> Result<T, StoreUnavailable> {
    match result {
        Ok(Ok(value)) => {
            permit.success();
            Ok(value)
        }
        Ok(Err(e)) => {
            metrics::counter!(crate::metrics::STORAGE_ERRORS, "kind" => e.kind()).increment(1);
            permit.failure(&e.to_string());
            Err(StoreUnavailable)
        }
        Err(_) => {
            metrics::counter!(crate::metrics::STORAGE_ERRORS, "kind" => "timeout").increment(1);
            permit.failure("timeout");
            Err(StoreUnavailable)
        }
    }
}

/// Where counters live.
pub enum Store {
    Memory,
    Redis(RedisStore),
}

/// The one entry point for limit decisions. For the Redis store it owns the failure policy: the
/// negative cache first (no call for a caller already refused), the breaker (no call to a store known
/// to be down), the deadline on every call, and what `on_error` means when the store cannot answer.
pub struct Limiter {
    store: Store,
    /// The memory store; for Redis, the degraded-mode limiter behind `on_error = "local"`.
    local: LocalLimiter,
    breakers: Breakers,
    negative: NegativeCache,
    timeout: Duration,
    duration: metrics::Histogram,
    /// `tiergate_storage_calls_total{op}`: one per round trip to the Redis store.
    calls: StoreCalls,
    /// Quota batching: this replica's reservations, and returns waiting for the next batch.
    book: batch::Book,
    pending: std::sync::Mutex<Vec<batch::GiveBack>>,
    units: UnitCounters,
}

/// The round-trip counters, one per `op`, resolved once.
struct StoreCalls {
    decide: metrics::Counter,
    reserve: metrics::Counter,
    quota: metrics::Counter,
    tier: metrics::Counter,
    reset: metrics::Counter,
}

impl StoreCalls {
    fn new() -> StoreCalls {
        let op = |op: &'static str| metrics::counter!(crate::metrics::STORAGE_CALLS, "op" => op);
        StoreCalls {
            decide: op("decide"),
            reserve: op("reserve"),
            quota: op("quota"),
            tier: op("tier"),
            reset: op("reset"),
        }
    }
}

/// `tiergate_quota_units_total{event}`: what quota batching did with reserved units.
struct UnitCounters {
    reserved: metrics::Counter,
    spent: metrics::Counter,
    returned: metrics::Counter,
    lost: metrics::Counter,
}

impl UnitCounters {
    fn new() -> UnitCounters {
        let event = |e: &'static str| metrics::counter!(crate::metrics::QUOTA_UNITS, "event" => e);
        UnitCounters {
            reserved: event("reserved"),
            spent: event("spent"),
            returned: event("returned"),
            lost: event("lost"),
        }
    }
}

impl Limiter {
    pub fn memory(clock: Clock) -> Limiter {
        Limiter::with_store(Store::Memory, clock, Duration::from_millis(50))
    }

    pub fn with_store(store: Store, clock: Clock, timeout: Duration) -> Limiter {
        let cluster = matches!(&store, Store::Redis(r) if r.is_cluster());
        Limiter {
            store,
            local: LocalLimiter::new(clock),
            breakers: Breakers::new(metrics::gauge!(crate::metrics::STORAGE_FALLBACK), cluster),
            negative: NegativeCache::default(),
            timeout,
            duration: metrics::histogram!(crate::metrics::STORAGE_DURATION),
            calls: StoreCalls::new(),
            book: batch::Book::default(),
            pending: std::sync::Mutex::new(Vec::new()),
            units: UnitCounters::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn local(&self) -> &LocalLimiter {
        &self.local
    }

    pub fn negative_cache(&self) -> &NegativeCache {
        &self.negative
    }

    /// The breaker guarding `key`'s calls: the store's one, or on Redis Cluster the one of its
    /// hash slot's group (keys of one identity share a hash tag, the identity itself).
    fn breaker(&self, key: &IdentityKey) -> &Breaker {
        self.breakers.of_tag(key)
    }

    /// Decides one request. `fallback` is the plan with limits divided by `local_share_divisor`;
    /// `batching` is `storage.quota_batch` (it only applies to the Redis store).
    pub async fn check(
        &self,
        key: &IdentityKey,
        plan: &Plan,
        fallback: &Plan,
        on_error: OnError,
        batching: Batching,
    ) -> Result<Decision, StoreUnavailable> {
        let Store::Redis(redis) = &self.store else {
            let started = std::time::Instant::now();
            let d = self.local.check(key, plan);
            self.duration.record(started.elapsed().as_secs_f64());
            return Ok(d);
        };
        let now = self.local.clock().now_ms();
        if let Some(d) = self.negative.refuse(key, plan, now) {
            return Ok(d);
        }
        if batching.is_on() {
            return self.check_batched(redis, key, plan, fallback, on_error, batching, now).await;
        }
        let Some(permit) = self.breaker(key).allow() else {
            return self.degraded(key, fallback, on_error);
        };
        let started = std::time::Instant::now();
        self.calls.decide.increment(1);
        let result = tokio::time::timeout(self.timeout, redis.decide(key, plan, true, Ask::default())).await;
        self.duration.record(started.elapsed().as_secs_f64());
        match settle(permit, result) {
            Ok((d, _)) => {
                self.negative.remember(key, plan, &d, self.local.clock().now_ms(), u64::MAX);
                Ok(d)
            }
            Err(StoreUnavailable) => self.degraded(key, fallback, on_error),
        }
    }

    /// [`Limiter::check`] with quota batching: the rate unit from this replica's reservation and the
    /// slot from its pool when both have one (no store call); otherwise one round trip that decides
    /// the request, gives back the caller's ended reservation, and reserves the next one.
    #[allow(clippy::too_many_arguments, reason = "check's arguments plus the store and the time it read")]
    async fn check_batched(
        &self,
        redis: &RedisStore,
        key: &IdentityKey,
        plan: &Plan,
        fallback: &Plan,
        on_error: OnError,
        batching: Batching,
        now: u64,
    ) -> Result<Decision, StoreUnavailable> {
        let mut take = if plan.windows.is_empty() {
            batch::Take::Spent { binding: None, store_now_ms: now, back: Vec::new() }
        } else {
            self.book.take(key, plan, batching, now, true)
        };
        // Another request of this caller is bringing a reservation: wait for it (at most the store
        // timeout, twice), then take again.
        for attempt in 0..2 {
            let batch::Take::Wait { arrived, back } = take else { break };
            self.queue(back);
            let _ = tokio::time::timeout(self.timeout, arrived).await;
            take = self.book.take(key, plan, batching, self.local.clock().now_ms(), attempt == 0);
        }
        let pooled = plan.concurrency.and_then(|_| redis.pooled_slot(key, batching.size));
        let slot_local = plan.concurrency.is_none() || pooled.is_some();
        let (rate_local, local_binding, want, mut back) = match take {
            batch::Take::Spent { binding, store_now_ms, back } => {
                self.queue(back);
                if slot_local {
                    if !plan.windows.is_empty() {
                        self.units.spent.increment(1);
                    }
                    return Ok(Decision {
                        now_ms: store_now_ms,
                        allowed: true,
                        binding,
                        lease: pooled,
                        ..Decision::default()
                    });
                }
                (true, binding, 0, None)
            }
            batch::Take::Ask { want, mut back } => {
                // The first ended reservation rides along with the call; any others wait for the returner.
                let first = (!back.is_empty()).then(|| back.remove(0));
                self.queue(back);
                (false, None, want, first)
            }
            batch::Take::Wait { back, .. } => {
                self.queue(back);
                (false, None, 0, None)
            }
        };
        let slots = if slot_local { 0 } else { batching.size.saturating_sub(1).min(redis.held_slots(key)) };
        let ask = Ask {
            skip_windows: rate_local,
            skip_slot: slot_local,
            units: want,
            slots,
            back: back.as_ref().map(|b| (b.units, b.anchor_ms)),
            pool: batching.size,
        };
        let undo = || {
            if rate_local && !plan.windows.is_empty() {
                self.book.unspend(key, plan, batching, now);
            }
        };
        let asked = want > 0;
        let Some(permit) = self.breaker(key).allow() else {
            undo();
            if asked {
                self.book.settled(key, plan);
            }
            // Nothing was sent: the ended reservation still waits to go back.
            self.queue(back.take());
            return self.degraded(key, fallback, on_error);
        };
        let started = std::time::Instant::now();
        self.calls.reserve.increment(1);
        let result = tokio::time::timeout(self.timeout, redis.decide(key, plan, true, ask)).await;
        self.duration.record(started.elapsed().as_secs_f64());
        let disconnected = matches!(&result, Ok(Err(e)) if e.kind() == "connect");
        match settle(permit, result) {
            Ok((mut d, granted)) => {
                if let Some(b) = &back {
                    self.units.returned.increment(b.units);
                }
                if rate_local {
                    if d.allowed {
                        d.binding = local_binding;
                    } else {
                        undo();
                    }
                } else if d.allowed {
                    self.units.reserved.increment(granted.units);
                    let (overflow, shown) =
                        self.book.install(key, plan, batching, now, granted.units, d.now_ms, d.binding);
                    self.queue(overflow);
                    d.binding = shown;
                } else {
                    if asked {
                        self.book.settled(key, plan);
                    }
                    // Other replicas' reservations may be all that fills the window: remembered for a
                    // quarter TTL at most (see `batch` for the whole bound).
                    self.negative.remember(key, plan, &d, now, batching.ttl_ms() / 4);
                }
                if d.allowed && pooled.is_some() {
                    d.lease = pooled;
                }
                Ok(d)
            }
            Err(StoreUnavailable) => {
                undo();
                if asked {
                    self.book.settled(key, plan);
                }
                if let Some(b) = back {
                    // Sent, outcome unknown: returning it again could count it back twice.
                    self.units.lost.increment(b.units);
                }
                if disconnected {
                    // On a cluster only this caller's shard is known to be gone.
                    if redis.is_cluster() { self.book.forfeit(Some(key)) } else { self.forfeit_all() }
                }
                self.degraded(key, fallback, on_error)
            }
        }
    }

    fn queue(&self, give_back: impl IntoIterator<Item = batch::GiveBack>) {
        let mut give_back = give_back.into_iter().peekable();
        if give_back.peek().is_some()
            && let Ok(mut pending) = self.pending.lock()
        {
            pending.extend(give_back);
        }
    }

    /// The connection to Redis broke (it may have restarted and lost its data): reservations taken
    /// from it are dropped, not spent and not returned.
    fn forfeit_all(&self) {
        self.units.lost.increment(self.book.held());
        self.book.forfeit(None);
        if let Ok(mut pending) = self.pending.lock() {
            self.units.lost.increment(pending.iter().map(|g| g.units).sum());
            pending.clear();
        }
    }

    /// Ends expired reservations and gives their unspent units back (with `all`: every reservation,
    /// at drain), and releases pooled slots idle for `quota_batch_ttl`; closes breakers nobody calls
    /// any more. Called on a timer (every quarter of `quota_batch_ttl`, at most every second).
    pub async fn return_expired(&self, batching: Batching, all: bool) {
        let Store::Redis(redis) = &self.store else { return };
        self.breakers.close_idle();
        let mut batch = self.book.collect(batching, self.local.clock().now_ms(), all);
        if let Ok(mut pending) = self.pending.lock() {
            batch.append(&mut pending);
        }
        redis.release_idle(batching.ttl_ms(), all);
        if batch.is_empty() {
            return;
        }
        let units: u64 = batch.iter().map(|g| g.units).sum();
        let deadline = self.timeout.max(Duration::from_millis(500));
        match tokio::time::timeout(deadline, redis.give_back(&batch)).await {
            Ok(Ok(_)) => self.units.returned.increment(units),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, units, "returning reserved units failed; they leave with their windows");
                self.units.lost.increment(units);
                if e.kind() == "connect" && !redis.is_cluster() {
                    self.forfeit_all();
                }
            }
            Err(_) => self.units.lost.increment(units),
        }
    }

    /// Reserved units this replica holds right now (quota batching).
    pub fn reserved_units(&self) -> u64 {
        self.book.held()
    }

    /// Units of ended reservations waiting for the returner (quota batching).
    pub fn returning_units(&self) -> u64 {
        self.pending.lock().map_or(0, |p| p.iter().map(|g| g.units).sum())
    }

    /// The store could not answer. The policy is decided here and only here:
    /// `allow` keeps serving without limits (availability over accuracy), `deny` refuses (accuracy
    /// over availability: e.g. exports that must never exceed a contract), `local` limits each
    /// replica on its own with its share of every limit (a close approximation of both).
    fn degraded(&self, key: &IdentityKey, fallback: &Plan, on_error: OnError) -> Result<Decision, StoreUnavailable> {
        match on_error {
            OnError::Allow => Ok(Decision::unchecked(self.local.clock().now_ms())),
            OnError::Deny => Err(StoreUnavailable),
            OnError::Local => Ok(self.local.check(key, fallback)),
        }
    }

    /// The caller's windows without consuming anything (the quota endpoint).
    pub async fn peek(&self, key: &IdentityKey, plan: &Plan) -> Result<Decision, StoreUnavailable> {
        let Store::Redis(redis) = &self.store else { return Ok(self.local.peek(key, plan)) };
        let permit = self.breaker(key).allow().ok_or(StoreUnavailable)?;
        self.calls.quota.increment(1);
        settle(permit, tokio::time::timeout(self.timeout, redis.decide(key, plan, false, Ask::default())).await)
            .map(|(d, _)| d)
    }

    /// The tier stored for a user in Redis (`tier_source = "redis"`): `Ok(None)` when none is stored
    /// (or the store is memory), `Err` when Redis could not answer (the caller keeps the token's
    /// tier and must not remember the failure as "no override").
    pub async fn tier_override(&self, user: &str) -> Result<Option<String>, StoreUnavailable> {
        let Store::Redis(redis) = &self.store else { return Ok(None) };
        let permit = self.breakers.of_key(|| format!("user_tier:{user}")).allow().ok_or(StoreUnavailable)?;
        self.calls.tier.increment(1);
        settle(permit, tokio::time::timeout(self.timeout, redis.tier_override(user)).await)
    }

    /// Clears `key`'s counters in every window of `plan` (the operator's reset), in the store and
    /// in the negative cache; concurrency slots in use are not revoked.
    pub async fn reset(&self, key: &IdentityKey, plan: &Plan) -> Result<(), StoreUnavailable> {
        self.negative.forget(key);
        // This replica's reservations were counted in the windows the reset clears: returning them
        // later would take them out of the fresh count.
        self.book.forfeit(Some(key));
        self.local.reset(key, plan);
        let Store::Redis(redis) = &self.store else { return Ok(()) };
        let permit = self.breaker(key).allow().ok_or(StoreUnavailable)?;
        self.calls.reset.increment(1);
        let done = settle(permit, tokio::time::timeout(self.timeout, redis.reset(key, plan)).await);
        // A refusal remembered while the DEL was in flight would outlive the reset.
        self.negative.forget(key);
        done
    }

    /// Drops idle state; called periodically.
    pub fn sweep(&self) -> usize {
        self.negative.sweep(self.local.clock().now_ms());
        self.local.sweep()
    }

    /// Degraded right now (decisions follow `on_error`).
    pub fn degraded_now(&self) -> bool {
        self.breakers.any_open()
    }
}
