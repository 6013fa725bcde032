//! Memory is bounded whatever the number of callers (issue #10: RSS ≤ 50 MiB after 100,000
//! distinct users, and flat after that): the caches' budgets add up to less than the target, and
//! the memory store's weights are honest, checked against a counting global allocator
//! (`stats_alloc`): what the store says it holds is what it allocated. Its own test binary: the
//! allocator is process-wide. `scripts/rss-users.sh` measures the whole process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

use std::alloc::System;
use std::sync::Arc;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tiergate::bounded::Budget;
use tiergate::limit::{Algorithm, Clock, IdentityKey, LocalLimiter, Plan, WindowSpec};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const MIB: u64 = 1024 * 1024;

/// One test at a time: the allocator counts every thread's allocations, the harness's included.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What tiergate holds besides its caches (runtime, buffers, code: `scripts/rss-users.sh` at 0
/// users), and the target.
const PROCESS_MIB: u64 = 10;
const TARGET_MIB: u64 = 50;

#[test]
fn the_budgets_add_up_to_less_than_the_target() {
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let budgets: [(&str, Budget); 6] = [
        ("memory store", tiergate::limit::local::BUDGET),
        ("verified tokens", tiergate::identity::TOKEN_CACHE),
        ("last-seen tiers", tiergate::top::SEEN),
        ("refusals", tiergate::limit::negative::BUDGET),
        ("tiers from Redis", tiergate::proxy::TierCache::BUDGET),
        ("rejected tokens", tiergate::identity::REJECTED),
    ];
    let caches: u64 = budgets.iter().map(|(_, b)| b.bytes).sum();
    // A tenth of the caches' bytes for the allocator's own slack (headers, partly filled pages).
    let total = PROCESS_MIB * MIB + caches + caches / 10;
    assert!(
        total <= TARGET_MIB * MIB,
        "caches {} MiB + process {PROCESS_MIB} MiB + slack > {TARGET_MIB} MiB: {budgets:?}",
        caches / MIB
    );
}

/// Identities on three sliding-log windows, one request each, until the store is full: the bytes it
/// says it holds are within a fifth of what it really allocated (and never above its budget).
#[test]
fn the_memory_store_weighs_what_it_allocates() {
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let windows = [("minute", 20, 60_000), ("hour", 100, 3_600_000), ("day", 1_000, 86_400_000)];
    let plan = Plan::new(
        Algorithm::SlidingLog,
        windows.iter().map(|(n, l, w)| WindowSpec { name: Arc::from(*n), limit: *l, window_ms: *w }).collect(),
        Some(5),
    );
    let budget = Budget::new(100_000, 8 * MIB, 430);
    let region = Region::new(GLOBAL);
    let lim = LocalLimiter::with_budget(Clock::System, budget);
    for i in 0..40_000 {
        let key = IdentityKey::User(Arc::from(format!("user-{i:08}").as_str()));
        assert!(lim.check(&key, &plan).allowed);
    }
    let change = region.change();
    let held = change.bytes_allocated as f64 - change.bytes_deallocated as f64 + change.bytes_reallocated as f64;
    let weighed = lim.bytes() as f64;
    assert!(lim.bytes() <= budget.bytes, "over its budget: {weighed}");
    assert!(lim.len() > 10_000, "{} identities: the budget should hold about 19,000", lim.len());
    assert!(
        weighed > 0.8 * held && weighed < 1.2 * held,
        "the store says {weighed} bytes for {} identities; it allocated {held}",
        lim.len()
    );
}
