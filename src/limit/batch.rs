//! Quota batching: the reservations this replica holds (`storage.quota_batch`, Redis store only).
//!
//! A reservation is a number of units the Redis script has already counted in every window of one
//! (identity, plan). This replica spends them one per request with no store call, until they are spent
//! or `quota_batch_ttl` passes; what is left then goes back to the windows (riding along with the
//! caller's next decision, or in a batched return call). This module holds the book and the sizing
//! rule; it never talks to Redis itself (the [`super::Limiter`] does), so it has no failure modes of
//! its own beyond losing units, which only ever refuses early, never admits more.
//!
//! Lifetime: a reservation lives half of `quota_batch_ttl`; the returner runs every quarter, and a
//! refusal that reserved units elsewhere may explain is cached for at most a quarter. So a caller is
//! refused early, because of units another replica holds, for at most `quota_batch_ttl` in all.
//!
//! Sizing: the units asked for are what this caller's rate on this replica spends while a
//! reservation lives (its requests since the last round trip over the time since, times half the
//! TTL), capped by `quota_batch`; the script then caps that at a quarter of what every window has
//! left. A caller seen for the first time gets no reservation: one request says nothing about its
//! rate, and most callers are light (a unit left at expiry costs a share of a return call).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use super::{Algorithm, Binding, IdentityKey, Plan, WindowSpec};

/// `storage.quota_batch` and `storage.quota_batch_ttl`, as the snapshot compiled them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Most units (and concurrency slots) one reservation holds beyond its request; 0: off.
    pub size: u64,
    pub ttl: Duration,
}

impl Batching {
    pub const OFF: Batching = Batching { size: 0, ttl: Duration::from_secs(1) };

    pub fn is_on(&self) -> bool {
        self.size > 0
    }

    pub fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis().max(1) as u64
    }
}

/// Unspent units on their way back to the windows they were taken from.
#[derive(Clone, Debug)]
pub struct GiveBack {
    pub key: IdentityKey,
    pub algorithm: Algorithm,
    pub windows: Vec<WindowSpec>,
    pub units: u64,
    /// Redis time (ms) of the call that reserved them: finds the bucket or window they sit in.
    pub anchor_ms: u64,
}

/// Most reservations one (identity, plan) holds at once; concurrent round trips of one caller can
/// each bring one back. Past it the oldest goes back to the store.
const MAX_SEGMENTS: usize = 8;

/// Units reserved by one round trip.
#[derive(Clone, Copy)]
struct Segment {
    units: u64,
    /// Redis time of the reserving call.
    anchor_ms: u64,
    /// On the limiter's clock.
    expires_ms: u64,
}

/// One (identity, plan)'s reservations and the rate history that sizes the next one.
struct Quota {
    /// Oldest first.
    segments: Vec<Segment>,
    algorithm: Algorithm,
    windows: Vec<WindowSpec>,
    /// The binding window as the last round trip saw it (reserved units counted), and that call's
    /// Redis time.
    binding: Option<Binding>,
    store_ms: u64,
    /// Requests since the last round trip, and when that was (limiter clock; 0: never).
    seen: u64,
    since_ms: u64,
    /// A round trip asking for units is on its way: concurrent requests of this caller wait for it
    /// (woken when it ends) rather than each asking the store, so a burst costs one round trip.
    reserving: bool,
    arrived: Arc<Notify>,
}

/// What a request gets from the book.
pub enum Take {
    /// Admitted from a reservation: the binding window to report, and the store's time now as this
    /// replica reckons it (the last call's Redis time plus the time since); `back`: older
    /// reservations that ended meanwhile, for the caller to queue.
    Spent { binding: Option<Binding>, store_now_ms: u64, back: Vec<GiveBack> },
    /// Ask the store for `want` further units; `back`: ended reservations, the first of which rides
    /// along with the call.
    Ask { want: u64, back: Vec<GiveBack> },
    /// Another request of this caller is fetching a reservation: wait for it, then take again.
    Wait { arrived: Pin<Box<OwnedNotified>>, back: Vec<GiveBack> },
}

/// Every reservation this replica holds, by (identity, plan fingerprint). Hashed with foldhash
/// (seeded per process), as the lease books are: SipHash cost about 250 instructions per batched
/// decision (callgrind, `STORE=redis-batch scripts/request-cost.sh`).
#[derive(Default)]
pub struct Book {
    quotas: DashMap<(IdentityKey, u64), Quota, foldhash::fast::RandomState>,
}

impl Book {
    /// Spends one reserved unit of `plan` for `key`, or says what to ask the store for (or, with
    /// `may_wait`, to wait for the reservation another request is fetching).
    pub fn take(&self, key: &IdentityKey, plan: &Plan, batching: Batching, now_ms: u64, may_wait: bool) -> Take {
        let mut fresh = false;
        let mut q = self.quotas.entry((key.clone(), plan.fingerprint())).or_insert_with(|| {
            fresh = true;
            Quota::new(plan)
        });
        if fresh {
            return Take::Ask { want: 0, back: Vec::new() };
        }
        q.seen += 1;
        let back = q.end(key, now_ms, false);
        if let Some(seg) = q.segments.first_mut() {
            seg.units -= 1;
            if seg.units == 0 {
                q.segments.remove(0);
            }
            let binding = q.shown();
            let store_now_ms = q.store_ms + now_ms.saturating_sub(q.since_ms);
            return Take::Spent { binding, store_now_ms, back };
        }
        if q.reserving && may_wait {
            // Registered before the entry unlocks, so the wake-up cannot be missed.
            let mut arrived = Box::pin(Arc::clone(&q.arrived).notified_owned());
            arrived.as_mut().enable();
            return Take::Wait { arrived, back };
        }
        let elapsed = now_ms.saturating_sub(q.since_ms).max(1);
        let want = if q.since_ms == 0 || q.reserving {
            0
        } else {
            // seen / elapsed × (ttl / 2): what this caller's rate spends while a reservation lives.
            (q.seen.saturating_mul(batching.ttl_ms() / 2) / elapsed).min(batching.size)
        };
        q.reserving |= want > 0;
        Take::Ask { want, back }
    }

    /// A round trip that asked for units ended without installing any (refused, or failed).
    pub fn settled(&self, key: &IdentityKey, plan: &Plan) {
        if let Some(mut q) = self.quotas.get_mut(&(key.clone(), plan.fingerprint())) {
            q.reserving = false;
            q.arrived.notify_waiters();
        }
    }

    /// A unit [`Book::take`] spent belongs to a request that was refused after all (its slot): put it back.
    pub fn unspend(&self, key: &IdentityKey, plan: &Plan, batching: Batching, now_ms: u64) {
        if let Some(mut q) = self.quotas.get_mut(&(key.clone(), plan.fingerprint())) {
            match q.segments.first_mut() {
                Some(seg) => seg.units += 1,
                None => {
                    let seg = Segment { units: 1, anchor_ms: q.store_ms, expires_ms: now_ms + batching.ttl_ms() / 2 };
                    q.segments.push(seg);
                }
            }
        }
    }

    /// Records a round trip that admitted a request and reserved `units` more (possibly 0) at Redis
    /// time `anchor_ms`. Returns what no longer fits the book, to be given back, and the binding
    /// window to report for this request.
    #[allow(clippy::too_many_arguments, reason = "one round trip's whole outcome")]
    pub fn install(
        &self,
        key: &IdentityKey,
        plan: &Plan,
        batching: Batching,
        now_ms: u64,
        units: u64,
        anchor_ms: u64,
        binding: Option<Binding>,
    ) -> (Vec<GiveBack>, Option<Binding>) {
        let id = (key.clone(), plan.fingerprint());
        let mut q = self.quotas.entry(id).or_insert_with(|| Quota::new(plan));
        let mut out = q.end(key, now_ms, false);
        if units > 0 {
            q.segments.push(Segment { units, anchor_ms, expires_ms: now_ms + (batching.ttl_ms() / 2).max(1) });
            while q.segments.len() > MAX_SEGMENTS {
                let seg = q.segments.remove(0);
                out.push(q.give_back(key, seg));
            }
        }
        q.reserving = false;
        q.arrived.notify_waiters();
        q.binding = binding;
        q.store_ms = anchor_ms;
        q.seen = 0;
        q.since_ms = now_ms;
        (out, q.shown())
    }

    /// Ends every reservation that has expired (or all of them, `all`: drain) and hands back what
    /// is unspent; forgets callers idle for ten TTLs, so the book follows the active callers.
    pub fn collect(&self, batching: Batching, now_ms: u64, all: bool) -> Vec<GiveBack> {
        let mut out = Vec::new();
        let idle_after = batching.ttl_ms().saturating_mul(10);
        self.quotas.retain(|(key, _), q| {
            out.extend(q.end(key, now_ms, all));
            !all && (!q.segments.is_empty() || now_ms.saturating_sub(q.since_ms) < idle_after)
        });
        out
    }

    /// Drops every reservation without returning it (the store lost them, or an operator reset the
    /// caller): spending them now could admit beyond what the store counts.
    pub fn forfeit(&self, key: Option<&IdentityKey>) {
        match key {
            Some(k) => self.quotas.retain(|(key, _), _| key != k),
            None => self.quotas.clear(),
        }
    }

    /// Units held right now, over every reservation (for tests and the status view).
    pub fn held(&self) -> u64 {
        self.quotas.iter().map(|q| q.segments.iter().map(|s| s.units).sum::<u64>()).sum()
    }
}

impl Quota {
    fn new(plan: &Plan) -> Quota {
        Quota {
            segments: Vec::new(),
            algorithm: plan.algorithm,
            windows: plan.windows.clone(),
            binding: None,
            store_ms: 0,
            seen: 1,
            since_ms: 0,
            reserving: false,
            arrived: Arc::new(Notify::new()),
        }
    }

    /// The binding window as this replica shows it: what Redis had left at the last round trip (every
    /// replica's reservations counted as used) plus what this replica still holds for the caller,
    /// which is this caller's to spend here. It falls by one per admitted request, exactly as without
    /// batching on a single replica, and only rises when units come back.
    fn shown(&self) -> Option<Binding> {
        let held: u64 = self.segments.iter().map(|s| s.units).sum();
        self.binding.map(|b| Binding { remaining: b.remaining + held, ..b })
    }

    /// Ends the segments that have expired (all of them with `all`).
    fn end(&mut self, key: &IdentityKey, now_ms: u64, all: bool) -> Vec<GiveBack> {
        if self.segments.iter().all(|s| !all && now_ms < s.expires_ms) {
            return Vec::new();
        }
        let (ended, live): (Vec<Segment>, Vec<Segment>) =
            self.segments.iter().partition(|s| all || now_ms >= s.expires_ms);
        self.segments = live;
        ended.into_iter().map(|seg| self.give_back(key, seg)).collect()
    }

    fn give_back(&self, key: &IdentityKey, seg: Segment) -> GiveBack {
        GiveBack {
            key: key.clone(),
            algorithm: self.algorithm,
            windows: self.windows.clone(),
            units: seg.units,
            anchor_ms: seg.anchor_ms,
        }
    }
}
