//! Who is being limited, per replica, without user ids in metric labels: a Space-Saving sketch of
//! at most [`CAPACITY`] identities ranked by refusals (admissions counted for the identities it
//! holds), over a tumbling 5-minute period; and the tier each identity was last seen with, so the
//! admin port can show one identity's windows without being told its tier.
//!
//! Space-Saving (Metwally et al.): when a new identity is refused and the sketch is full, it takes
//! the place of the identity with the fewest refusals and inherits that count (recorded as its
//! error). So memory is fixed whatever the number of identities, every identity with more than
//! 1/CAPACITY of the period's refusals is in it, and a count is over by at most that share. The
//! minimum is kept by an indexed min-heap: an update is a hash lookup plus at most log2(1000) = 10
//! swaps, a constant bound. A period starts afresh every 5 minutes (`since` says when).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::bounded::{Bounded, Budget};
use crate::identity::IdentityKey;

/// Identities held at most.
pub const CAPACITY: usize = 1_000;
/// How long one counting period lasts.
pub const PERIOD: Duration = Duration::from_secs(300);
/// The last-seen tiers' bound: 100,000 identities or 3 MiB, whichever comes first. An entry weighs
/// its key (a user id's text) and its slot, about 160 bytes, so 3 MiB holds about 20,000; the tier
/// name is the snapshot's, shared. An identity that fell out is shown again once it is seen again
/// (or with `?tier=`). Its share of the process's 50 MiB: see `crate::bounded`.
pub const SEEN: Budget = Budget::new(100_000, 3 * 1024 * 1024, 160);

/// One identity as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: IdentityKey,
    pub tier: Arc<str>,
    pub refused: u64,
    pub allowed: u64,
    /// How much of `refused` may belong to the identities it replaced (Space-Saving's error).
    pub error: u64,
}

struct Sketch {
    /// Epoch seconds at which this period began.
    since: u64,
    /// A min-heap on `refused`.
    heap: Vec<Entry>,
    /// Where each key sits in `heap`.
    index: HashMap<IdentityKey, usize>,
}

impl Sketch {
    fn new(since: u64) -> Sketch {
        Sketch { since, heap: Vec::with_capacity(CAPACITY), index: HashMap::with_capacity(CAPACITY) }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.index.insert(self.heap[a].key.clone(), a);
        self.index.insert(self.heap[b].key.clone(), b);
    }

    /// Restores the heap below `i` after its count grew.
    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.heap[l].refused < self.heap[least].refused {
                least = l;
            }
            if r < self.heap.len() && self.heap[r].refused < self.heap[least].refused {
                least = r;
            }
            if least == i {
                return;
            }
            self.swap(i, least);
            i = least;
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].refused <= self.heap[i].refused {
                return;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn refused(&mut self, key: &IdentityKey, tier: &Arc<str>) {
        if let Some(&i) = self.index.get(key) {
            self.heap[i].refused += 1;
            self.heap[i].tier = Arc::clone(tier);
            self.sift_down(i);
            return;
        }
        let entry = Entry { key: key.clone(), tier: Arc::clone(tier), refused: 1, allowed: 0, error: 0 };
        if self.heap.len() < CAPACITY {
            self.index.insert(key.clone(), self.heap.len());
            self.heap.push(entry);
            let last = self.heap.len() - 1;
            self.sift_up(last);
            return;
        }
        // Full: the newcomer replaces the least-refused identity and inherits its count.
        let floor = self.heap[0].refused;
        let old = std::mem::replace(&mut self.heap[0], Entry { refused: floor + 1, error: floor, ..entry });
        self.index.remove(&old.key);
        self.index.insert(key.clone(), 0);
        self.sift_down(0);
    }

    fn allowed(&mut self, key: &IdentityKey) {
        if let Some(&i) = self.index.get(key) {
            self.heap[i].allowed += 1;
        }
    }
}

/// The replica's view of who is refused, and the tier each identity was last seen with.
pub struct Top {
    sketch: Mutex<Sketch>,
    seen: Bounded<IdentityKey, Arc<str>>,
    /// Someone is in this period's sketch. While nobody is (no refusals: the usual state), an
    /// admitted request has nothing to count there and takes no lock every worker shares.
    listed: std::sync::atomic::AtomicBool,
}

impl Default for Top {
    fn default() -> Self {
        Top {
            sketch: Mutex::new(Sketch::new(unix_now())),
            seen: SEEN.cache(|key, _| key.heap_bytes()),
            listed: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Top {
    fn lock(&self) -> MutexGuard<'_, Sketch> {
        let mut s = self.sketch.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now();
        if now >= s.since + PERIOD.as_secs() {
            *s = Sketch::new(now);
            self.listed.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        s
    }

    /// A limited request was refused.
    pub fn refused(&self, key: &IdentityKey, tier: &Arc<str>) {
        self.saw(key, tier);
        let mut sketch = self.lock();
        sketch.refused(key, tier);
        self.listed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A limited request was admitted: counted only for an identity the sketch lists.
    pub fn allowed(&self, key: &IdentityKey, tier: &Arc<str>) {
        self.saw(key, tier);
        if self.listed.load(std::sync::atomic::Ordering::Relaxed) {
            self.lock().allowed(key);
        }
    }

    fn saw(&self, key: &IdentityKey, tier: &Arc<str>) {
        if self.seen.get(key).is_none_or(|t| t != *tier) {
            self.seen.insert(key.clone(), Arc::clone(tier));
        }
    }

    /// The tier `key` was last seen with, if it was seen.
    pub fn last_tier(&self, key: &IdentityKey) -> Option<Arc<str>> {
        self.seen.get(key)
    }

    /// The `n` most-refused identities of the current period, most first; and when it began.
    pub fn top(&self, n: usize) -> (u64, Vec<Entry>) {
        let s = self.lock();
        let mut entries = s.heap.clone();
        let since = s.since;
        drop(s);
        entries.sort_by(|a, b| b.refused.cmp(&a.refused).then_with(|| b.allowed.cmp(&a.allowed)));
        entries.truncate(n);
        (since, entries)
    }

    /// Identities held (at most [`CAPACITY`]).
    pub fn len(&self) -> usize {
        self.lock().heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(i: usize) -> IdentityKey {
        IdentityKey::User(Arc::from(format!("u{i}").as_str()))
    }

    #[test]
    fn heavy_hitters_rank_first_and_memory_stays_fixed() {
        let top = Top::default();
        let tier: Arc<str> = Arc::from("free");
        // 20,000 identities refused once each, interleaved with three heavy ones.
        for i in 0..20_000 {
            top.refused(&user(100_000 + i), &tier);
            if i % 10 == 0 {
                top.refused(&user(1), &tier);
            }
            if i % 20 == 0 {
                top.refused(&user(2), &tier);
            }
            if i % 40 == 0 {
                top.refused(&user(3), &tier);
                top.allowed(&user(3), &tier);
            }
        }
        assert_eq!(top.len(), CAPACITY, "memory is fixed");
        let (_, best) = top.top(3);
        let keys: Vec<_> = best.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys, [user(1), user(2), user(3)]);
        // Counts are over by at most the error Space-Saving recorded, itself at most N / CAPACITY.
        let total = 20_000 + 2_000 + 1_000 + 500;
        for (e, truth) in best.iter().zip([2_000u64, 1_000, 500]) {
            assert!(e.refused >= truth && e.refused - e.error <= truth, "{e:?} vs {truth}");
            assert!(e.refused - truth <= total / CAPACITY as u64, "{e:?}");
        }
        assert!(best[2].allowed > 0, "admissions are counted for identities held");
        assert_eq!(top.last_tier(&user(2)).as_deref(), Some("free"));
        assert_eq!(top.last_tier(&user(999_999)), None);
    }
}
