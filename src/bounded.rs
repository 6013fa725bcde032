//! Bounded caches: every per-identity or per-token map tiergate keeps in memory is a quick_cache
//! cache held to a [`Budget`] of entries **and** bytes, so memory is bounded whatever the number of
//! callers (issue #10: RSS ≤ 50 MiB after 100,000 distinct users, and flat after that).
//!
//! This file owns the budget arithmetic: an entry weighs the bytes it holds (its heap allocations,
//! its slot in the cache and its share of the cache's ghost slots), but never less than
//! `bytes / entries`, so a full cache holds at most `entries` entries and at most `bytes` bytes.
//! Eviction is quick_cache's S3-FIFO (a FIFO for newcomers, a CLOCK for entries seen again, a ghost
//! list of recently evicted keys): one entry at a time as room is needed, never everything at once,
//! and an identity seen once goes before one seen again. Each owner sets its own budget beside its
//! cache and says there why the size is what it is.
//!
//! The budgets share the target: tiergate itself (runtime, buffers, code) takes about 10 MiB; the
//! caches may add at most
//!
//! | cache | owner | budget |
//! |---|---|---|
//! | memory store (counters) | `limit::local::BUDGET` | 18 MiB |
//! | verified tokens | `identity::TOKEN_CACHE` | 8 MiB |
//! | last-seen tiers | `top::SEEN` | 3 MiB |
//! | refusals (negative cache) | `limit::negative::BUDGET` | 3 MiB |
//! | tiers read from Redis | `proxy::TierCache::BUDGET` | 2 MiB |
//! | rejected tokens | `identity::REJECTED` | 1.5 MiB |
//!
//! 35.5 MiB in all, which leaves the allocator a tenth more as slack under 50 MiB
//! (`tests/memory.rs` holds the sum; `scripts/rss-users.sh` measures the process,
//! docs/PERFORMANCE.md "Memory at 100,000 users").

use std::marker::PhantomData;

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

/// What the cache itself spends per entry besides the key and value: the slab slot's links and
/// state, the hash table's index and control byte (at its load factor), with room to spare.
const SLOT_OVERHEAD: usize = 32;
/// Ghosts (keys recently evicted, so a returning one is admitted as hot) per resident entry; each
/// ghost takes a slab slot and a table index, like a resident. quick_cache's default, which we keep.
const GHOST_SHARE: f64 = 0.5;
/// What the allocator spends per allocation beyond the bytes asked for (glibc: an 8-byte header,
/// rounded to 16): added per heap block an entry owns.
pub const BLOCK_OVERHEAD: usize = 16;

/// A cache's bound: at most `entries` entries and at most `bytes` bytes; `typical` is what an entry
/// usually weighs, which sizes the ghost list (ghosts are kept for half the entries expected to
/// fit, and take slots too: sized for `entries` when the bytes bind first, they would hold more
/// memory than the cache's own entries do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub entries: usize,
    pub bytes: u64,
    pub typical: u64,
}

/// A bounded cache of `K → V`; `L` decides which entries may not be evicted (default: none).
pub type Bounded<K, V, L = DefaultLifecycle<K, V>> = Cache<K, V, ByBytes<K, V>, DefaultHashBuilder, L>;

/// Weighs an entry by what it holds: `heap(key, value)` bytes on the heap, plus its slot.
pub struct ByBytes<K, V> {
    floor: u64,
    heap: fn(&K, &V) -> usize,
    _types: PhantomData<fn(&K, &V)>,
}

impl<K, V> Clone for ByBytes<K, V> {
    fn clone(&self) -> Self {
        ByBytes { floor: self.floor, heap: self.heap, _types: PhantomData }
    }
}

impl<K, V> Weighter<K, V> for ByBytes<K, V> {
    fn weight(&self, key: &K, value: &V) -> u64 {
        (Budget::slot::<K, V>() + (self.heap)(key, value)).max(self.floor as usize) as u64
    }
}

impl Budget {
    pub const fn new(entries: usize, bytes: u64, typical: u64) -> Budget {
        Budget { entries, bytes, typical }
    }

    /// How many entries are expected to fit: `entries`, or fewer when the bytes bind first.
    pub const fn expected(&self) -> usize {
        let fit = self.bytes / if self.typical == 0 { 1 } else { self.typical };
        if (fit as usize) < self.entries { fit as usize } else { self.entries }
    }

    /// The least one entry weighs: `entries` entries fill `bytes`.
    pub const fn floor(&self) -> u64 {
        self.bytes / if self.entries == 0 { 1 } else { self.entries as u64 }
    }

    /// What one entry of `K → V` costs the cache before any heap bytes it owns: its slot and its
    /// share of the ghosts.
    pub fn slot<K, V>() -> usize {
        let slot = std::mem::size_of::<(K, V)>() + SLOT_OVERHEAD;
        slot + (slot as f64 * GHOST_SHARE) as usize
    }

    /// An empty cache held to this budget; `heap` says how many heap bytes an entry owns.
    pub fn cache<K, V>(&self, heap: fn(&K, &V) -> usize) -> Bounded<K, V>
    where
        K: Eq + std::hash::Hash,
        V: Clone,
    {
        self.cache_with(heap, DefaultLifecycle::default())
    }

    /// As [`Budget::cache`], with a lifecycle (e.g. pinning entries in use).
    pub fn cache_with<K, V, L>(&self, heap: fn(&K, &V) -> usize, lifecycle: L) -> Bounded<K, V, L>
    where
        K: Eq + std::hash::Hash,
        V: Clone,
        L: Lifecycle<K, V> + Clone,
    {
        let weigher = ByBytes { floor: self.floor(), heap, _types: PhantomData };
        // quick_cache keeps ghosts for half the estimated entries by default: GHOST_SHARE.
        Cache::with(self.expected().max(1), self.bytes.max(1), weigher, DefaultHashBuilder::default(), lifecycle)
    }
}

/// Heap bytes of a shared string (`Arc<str>`: two counters and the text, in one block).
pub fn arc_str(s: &str) -> usize {
    2 * std::mem::size_of::<usize>() + s.len() + BLOCK_OVERHEAD
}

/// Heap bytes of an owned string (`Box<str>`, `String`): the text, in one block.
pub fn boxed_str(s: &str) -> usize {
    s.len() + BLOCK_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_cache(budget: Budget) -> Bounded<u64, String> {
        budget.cache(|_, v: &String| v.capacity() + BLOCK_OVERHEAD)
    }

    #[test]
    fn a_full_cache_stays_within_its_bytes_and_evicts_the_oldest_not_everything() {
        let budget = Budget::new(100_000, 256 * 1024, 300);
        let cache = text_cache(budget);
        for i in 0..20_000u64 {
            cache.insert(i, "x".repeat(200));
            assert!(cache.weight() <= budget.bytes, "over its bytes after {i} inserts: {}", cache.weight());
        }
        // About 800 entries of 300 bytes fit: most of the budget stays in use, nothing was cleared.
        let held = cache.len() as u64;
        assert!(held * 300 > budget.bytes * 3 / 4 && held * 300 <= budget.bytes, "holds what fits: {held}");
        // Those admitted while there was room stay (S3-FIFO's main queue); newcomers since then
        // pass through the probation queue oldest first: the newest are there, the older are gone.
        // The queue is per shard and keys hash at random per process, so one of the last few can
        // land in a shard whose queue is full (1 run in 20 lost one or two of the last ten).
        assert!((0..100).all(|i| cache.peek(&i).is_some()), "the entries admitted first are kept");
        assert!(cache.peek(&19_999).is_some(), "the newest is kept");
        let newest = (19_990..20_000).filter(|i| cache.peek(i).is_some()).count();
        assert!(newest >= 7, "the newest are kept: {newest} of the last 10");
        assert!((2_000..19_000).all(|i| cache.peek(&i).is_none()), "older newcomers went first");
    }

    #[test]
    fn a_cache_of_small_entries_stays_within_its_entries() {
        let budget = Budget::new(1_000, 64 * 1024 * 1024, 100);
        let cache = text_cache(budget);
        for i in 0..10_000u64 {
            cache.insert(i, String::new());
        }
        assert!(cache.len() <= budget.entries, "{} entries", cache.len());
        assert!(cache.len() > budget.entries / 2, "{} entries: evicted more than needed", cache.len());
    }

    #[test]
    fn an_entry_seen_again_outlives_newcomers() {
        let cache = text_cache(Budget::new(1_000, 1024 * 1024, 200));
        cache.insert(u64::MAX, "hot".into());
        for i in 0..50_000u64 {
            cache.insert(i, "x".repeat(100));
            if i % 100 == 0 {
                assert!(cache.get(&u64::MAX).is_some(), "the entry in use was evicted after {i} newcomers");
            }
        }
    }
}
