//! Limits: what a request may consume, and the decision the store returns.
//!
//! A [`Plan`] (compiled per tier × class in the snapshot) lists the rate windows that apply and the
//! concurrency cap. The [`Limiter`] is the one storage seam: today it has the in-memory backend
//! ([`local`]); the Redis backend plugs in beside it with the same semantics. The limiter outlives
//! config snapshots, so counters survive a reload: windows are keyed by their *name*, and a changed
//! limit applies to the count already in the window.
//!
//! Admission is all-or-nothing: every window and the concurrency cap are checked under one lock, and
//! only if all have room is anything consumed. A refused request consumes nothing.

pub mod local;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use crate::config::Algorithm;
pub use local::{Lease, LocalLimiter};

/// Most rate windows one plan may carry (4 named + 32 custom, with room to spare).
pub const MAX_WINDOWS: usize = 40;

/// Milliseconds since the Unix epoch, from the system or a hand-driven clock (tests).
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A clock that only moves when told to, starting at `start_ms`.
    pub fn manual(start_ms: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(start_ms)))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward; no effect on the system clock.
    pub fn advance(&self, ms: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(ms, Ordering::Relaxed);
        }
    }
}

/// Who is counted: a verified user, or a client address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentityKey {
    User(Arc<str>),
    Ip(IpAddr),
}

impl std::fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityKey::User(u) => write!(f, "user:{u}"),
            IdentityKey::Ip(ip) => write!(f, "ip:{ip}"),
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
#[derive(Clone, Debug)]
pub struct Plan {
    pub algorithm: Algorithm,
    pub windows: Vec<WindowSpec>,
    pub concurrency: Option<u64>,
}

impl Plan {
    /// Nothing to count: no store call at all.
    pub fn is_unlimited(&self) -> bool {
        self.windows.is_empty() && self.concurrency.is_none()
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

/// The store's answer for one request.
#[derive(Debug)]
pub struct Decision {
    pub now_ms: u64,
    pub allowed: bool,
    /// Bit `i` set: window `i` of the plan is full.
    pub violated: u64,
    /// The concurrency cap refused the request.
    pub concurrency_violated: bool,
    /// Epoch ms at which every violated window has room again (refusals only).
    pub retry_at_ms: u64,
    pub binding: Option<Binding>,
    /// Held while the request is in flight (only when the plan has a concurrency cap and it was admitted).
    pub lease: Option<Lease>,
}

impl Decision {
    /// Whole seconds until the request may be retried: ≥ 1, and never before the window has room.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_at_ms.saturating_sub(self.now_ms).div_ceil(1000).max(1)
    }
}

/// The storage seam: one type, one backend per variant.
pub enum Limiter {
    Memory(LocalLimiter),
}

impl Limiter {
    pub fn check(&self, key: &IdentityKey, plan: &Plan) -> Decision {
        match self {
            Limiter::Memory(m) => m.check(key, plan),
        }
    }

    /// Drops idle state; called periodically.
    pub fn sweep(&self) -> usize {
        match self {
            Limiter::Memory(m) => m.sweep(),
        }
    }
}
