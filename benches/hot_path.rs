//! The per-request hot paths: one limit decision (memory store), a cached token lookup, the
//! response decoration, path normalisation, and what forged tokens cost. Run:
//! `cargo bench --bench hot_path`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use tiergate::config::Config;
use tiergate::limit::Algorithm;
use tiergate::limit::{Clock, IdentityKey, LocalLimiter, Plan, WindowSpec};
use tiergate::route::Class;
use tiergate::snapshot::{Secrets, Snapshot};

fn plan(algorithm: Algorithm) -> Plan {
    let w = |name: &str, limit, secs: u64| WindowSpec { name: Arc::from(name), limit, window_ms: secs * 1000 };
    Plan::new(
        algorithm,
        vec![w("minute", 1_000_000, 60), w("hour", 10_000_000, 3600), w("day", 100_000_000, 86_400)],
        None,
    )
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
    snap.identity.identify((&headers).into(), peer, true).expect("valid");
    c.bench_function("identity/cached HS256 token", |b| {
        b.iter(|| black_box(snap.identity.identify(black_box(&headers).into(), peer, true)))
    });
    c.bench_function("route/classify", |b| {
        b.iter(|| black_box(snap.routes.classify(&http::Method::GET, black_box("/api/v1/items"))))
    });
}

fn headers(c: &mut Criterion) {
    let snap = snapshot();
    let lim = LocalLimiter::new(Clock::System);
    let (plan, plan_headers) = snap.tiers[0].plan(Class::Api);
    let key = IdentityKey::User(Arc::from("u"));
    let decision = lim.check(&key, plan);
    c.bench_function("headers/security + rate-limit", |b| {
        b.iter(|| {
            let mut h = HeaderMap::with_capacity(16);
            snap.decorator.security(&mut h);
            snap.decorator.rate_limit(&mut h, plan_headers, &decision);
            black_box(h)
        })
    });
}

/// What a flood of forged RS256 tokens costs: each unique forgery is one full signature check; a
/// repeated one is answered from the rejected-token cache.
fn forged(c: &mut Criterion) {
    let text = include_str!("../config.toml").replace(
        "jwt_algorithms = [\"HS256\"]",
        &format!(
            "jwt_algorithms = [\"RS256\"]\njwt_public_key_file = \"{}/tests/fixtures/rsa_public.pem\"",
            env!("CARGO_MANIFEST_DIR")
        ),
    );
    let config = Config::parse(&text).expect("RS256 config parses");
    let snap = Snapshot::compile(config, &Secrets::default()).expect("compiles");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../tests/fixtures/rsa2_private.pem"))
        .expect("the other test key");
    let claims = serde_json::json!({"sub": "mallory", "tier": "enterprise", "exp": 4_000_000_000u64});
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    let forged = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
    let (head, rest) = forged.split_once('.').expect("three parts");
    let signature = rest.split_once('.').expect("three parts").1.to_string();
    assert!(snap.identity.verify(&forged).is_err(), "signed by the wrong key");
    let mut n = 0u64;
    c.bench_function("identity/forged RS256, unique each time", |b| {
        b.iter(|| {
            n += 1;
            // A fresh payload every time: a cache cannot help, the signature must be checked.
            let payload = format!("eyJzdWIiOiJtYWxsb3J5IiwianRpIjoi{n:016}In0");
            black_box(snap.identity.verify(&format!("{head}.{payload}.{signature}")))
        })
    });
    c.bench_function("identity/forged RS256, repeated", |b| b.iter(|| black_box(snap.identity.verify(&forged))));
}

fn paths(c: &mut Criterion) {
    use tiergate::route::{EscapedSlashes, normalize};
    c.bench_function("route/normalize, already normal", |b| {
        b.iter(|| black_box(normalize(black_box("/api/v1/items/42"), EscapedSlashes::Reject)))
    });
    c.bench_function("route/normalize, dot segments", |b| {
        b.iter(|| black_box(normalize(black_box("/health/%2e%2e/api//v1/./items"), EscapedSlashes::Reject)))
    });
}

criterion_group!(benches, limiter, identity, headers, forged, paths);
criterion_main!(benches);
