//! The negative cache: when the store refuses a caller on a window, remember it here until that
//! window has room, and refuse the caller's later requests that need the window without asking the
//! store. Exact, because a refused request consumes nothing (all-or-nothing) and room only comes
//! back with time: every store call in between would have said no. The deadline is taken relative
//! to the store's own clock at the decision (never the pod clock), and an entry only matches the
//! same window name, limit and length, so a reload that raises a limit is never answered from here.
//! Deadlines are kept on the limiter's clock (`now_ms` from the caller), so virtual time in tests
//! moves them too.

use std::sync::Arc;

use super::{Decision, IdentityKey, Plan};
use crate::bounded::{Bounded, Budget};

/// Refused identities remembered at most: 100,000 or 3 MiB, whichever comes first (an identity
/// refused on one window weighs about 210 bytes: its key, one refusal, its slot; so about 15,000).
/// Past it the least useful entries are evicted (S3-FIFO), never all at once. An evicted refusal
/// only costs one more store call. Its share of the process's 50 MiB: see `crate::bounded`.
pub const BUDGET: Budget = Budget::new(100_000, 3 * 1024 * 1024, 210);

pub struct NegativeCache {
    map: Bounded<IdentityKey, Vec<Refusal>>,
}

impl Default for NegativeCache {
    fn default() -> Self {
        // An entry holds its key's heap and its refusals'.
        let bytes = |key: &IdentityKey, refusals: &Vec<Refusal>| {
            key.heap_bytes() + refusals.capacity() * std::mem::size_of::<Refusal>() + crate::bounded::BLOCK_OVERHEAD
        };
        NegativeCache { map: BUDGET.cache(bytes) }
    }
}

#[derive(Clone)]
struct Refusal {
    name: Arc<str>,
    limit: u64,
    window_ms: u64,
    /// On the limiter's clock, epoch ms.
    until_ms: u64,
}

impl NegativeCache {
    /// A refusal for `plan` from memory, when one of its windows is known to be full.
    pub fn refuse(&self, key: &IdentityKey, plan: &Plan, now_ms: u64) -> Option<Decision> {
        let entry = self.map.get(key)?;
        let mut tally = super::Tally::new(now_ms);
        let mut full = false;
        for (i, spec) in plan.windows.iter().enumerate() {
            let hit = entry.iter().find(|r| {
                r.until_ms > now_ms && r.limit == spec.limit && r.window_ms == spec.window_ms && *r.name == *spec.name
            });
            if let Some(r) = hit {
                full = true;
                let retry_at_ms = r.until_ms;
                tally.add(i, spec, super::Check { allowed: false, remaining: 0, reset_ms: retry_at_ms, retry_at_ms });
            }
        }
        if !full {
            return None;
        }
        // Only the windows known to be full are reported: the others were not asked.
        Some(tally.finish(None))
    }

    /// Remembers the full windows of a refusal the store just made (`now_ms`: the limiter's clock;
    /// each window's wait is measured on the store's clock, `d.now_ms`), for at most `max_ms`.
    pub fn remember(&self, key: &IdentityKey, plan: &Plan, d: &Decision, now_ms: u64, max_ms: u64) {
        if d.allowed || d.window_retry.is_empty() {
            return;
        }
        let mut entry = self.map.get(key).unwrap_or_default();
        entry.retain(|r| r.until_ms > now_ms);
        for &(i, retry_at_ms) in &d.window_retry {
            let Some(spec) = plan.windows.get(i as usize) else { continue };
            let until_ms = now_ms + retry_at_ms.saturating_sub(d.now_ms).min(max_ms);
            entry.retain(|r| *r.name != *spec.name);
            entry.push(Refusal {
                name: Arc::clone(&spec.name),
                limit: spec.limit,
                window_ms: spec.window_ms,
                until_ms,
            });
        }
        self.map.insert(key.clone(), entry);
    }

    /// Forgets every refusal of `key` (its counters were reset).
    pub fn forget(&self, key: &IdentityKey) {
        self.map.remove(key);
    }

    /// Drops what has expired.
    pub fn sweep(&self, now_ms: u64) {
        self.map.retain(|_, v| v.iter().any(|r| r.until_ms > now_ms));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
