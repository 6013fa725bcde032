//! The per-request hot paths: one limit decision (memory store), a cached token lookup, and the
//! response decoration. Run: `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use tiergate::config::{Algorithm, Class, Config};
use tiergate::limit::{Clock, IdentityKey, LocalLimiter, Plan, WindowSpec};
use tiergate::snapshot::{Secrets, Snapshot};

fn plan(algorithm: Algorithm) -> Plan {
    let w = |name: &str, limit, secs: u64| WindowSpec { name: Arc::from(name), limit, window_ms: secs * 1000 };
    Plan {
        algorithm,
        windows: vec![w("minute", 1_000_000, 60), w("hour", 10_000_000, 3600), w("day", 100_000_000, 86_400)],
        concurrency: None,
    }
}

fn limiter(c: &mut Criterion) {
    for (name, algorithm) in
        [("sliding_log", Algorithm::SlidingLog), ("gcra", Algorithm::Gcra), ("fixed_window", Algorithm::FixedWindow)]
    {
        let lim = LocalLimiter::new(Clock::System);
        let p = plan(algorithm);
        let key = IdentityKey::User(Arc::from("bench-user"));
        c.bench_function(&format!("limit/{name}/3 windows, one user"), |b| {
            b.iter(|| black_box(lim.check(black_box(&key), &p)))
        });
    }
    let lim = LocalLimiter::new(Clock::System);
    let p = plan(Algorithm::SlidingLog);
    let keys: Vec<IdentityKey> = (0..10_000).map(|i| IdentityKey::User(Arc::from(format!("user-{i}")))).collect();
    let mut i = 0;
    c.bench_function("limit/sliding_log/3 windows, 10k users", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(lim.check(&keys[i], &p))
        })
    });
}

fn snapshot() -> Snapshot {
    let config = Config::parse(include_str!("../config.toml")).expect("config.toml parses");
    Snapshot::compile(config, &Secrets::default().with("JWT_SECRET_KEY", "bench-secret-0123456789abcdef0123"))
        .expect("compiles")
}

fn identity(c: &mut Criterion) {
    let snap = snapshot();
    let token = tiergate::identity::mint_hs256(
        b"bench-secret-0123456789abcdef0123",
        "u1",
        "pro",
        Duration::from_secs(3600),
        None,
        None,
    )
    .expect("mint");
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
    let peer = "127.0.0.1:5000".parse().expect("addr");
    snap.identity.identify(&headers, peer, true).expect("valid");
    c.bench_function("identity/cached HS256 token", |b| {
        b.iter(|| black_box(snap.identity.identify(black_box(&headers), peer, true)))
    });
    c.bench_function("route/classify", |b| {
        b.iter(|| black_box(snap.routes.classify(&http::Method::GET, black_box("/api/v1/items"))))
    });
}

fn headers(c: &mut Criterion) {
    let snap = snapshot();
    let lim = LocalLimiter::new(Clock::System);
    let (plan, policy) = snap.tiers[0].plan(Class::Api);
    let key = IdentityKey::User(Arc::from("u"));
    let decision = lim.check(&key, plan);
    c.bench_function("headers/security + rate-limit", |b| {
        b.iter(|| {
            let mut h = HeaderMap::with_capacity(16);
            snap.decorator.security(&mut h);
            snap.decorator.rate_limit(&mut h, plan, policy, &decision);
            black_box(h)
        })
    });
}

criterion_group!(benches, limiter, identity, headers);
criterion_main!(benches);
