//! The token front end: whatever follows `Bearer `, verification never panics, and nothing but a
//! token signed with the configured secret is accepted.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tiergate::config::Config;
use tiergate::snapshot::{Secrets, Snapshot};

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let config = Config::parse("[tiers.free]\n[tiers.pro]\n").expect("config");
        Snapshot::compile(config, &Secrets::default().with("JWT_SECRET_KEY", "fuzz-secret-0123456789abcdef0123"))
            .expect("compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let snap = snapshot();
    let Ok(text) = std::str::from_utf8(data) else { return };
    assert!(snap.identity.verify(text).is_err(), "random input verified as a token: {text:?}");
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {text}")) {
        headers.insert(http::header::AUTHORIZATION, v);
        let _ = snap.identity.identify((&headers).into(), "127.0.0.1:1".parse().unwrap(), true);
    }
});
