//! Token verification end to end: every algorithm family, key sources, and the tricks a client may try.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

mod support;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use support::*;

fn claims(sub: &str, tier: &str) -> serde_json::Value {
    json!({ "sub": sub, "tier": tier, "exp": now() + 600 })
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

async fn status_with(gate: &Gate, token: &str) -> u16 {
    get_as(&gate.url("/api/x"), token).await.status.as_u16()
}

#[tokio::test]
async fn hmac_tokens_and_the_tricks_that_must_fail() {
    let gate = Gate::default_with("").await;
    let good = hs(&claims("u1", "pro"));
    let r = get_as(&gate.url("/api/x"), &good).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-tier"), vec!["pro"]);

    let wrong_key =
        sign(Algorithm::HS256, &EncodingKey::from_secret(b"not the secret"), &claims("u1", "enterprise"), None);
    let expired = hs(&json!({ "sub": "u1", "tier": "pro", "exp": now() - 3600 }));
    let within_leeway = hs(&json!({ "sub": "u1", "tier": "pro", "exp": now() - 5 }));
    let future_nbf = hs(&json!({ "sub": "u1", "tier": "pro", "exp": now() + 600, "nbf": now() + 300 }));
    let no_exp = hs(&json!({ "sub": "u1", "tier": "pro" }));
    let no_sub = hs(&json!({ "tier": "pro", "exp": now() + 600 }));
    let numeric_sub = hs(&json!({ "sub": 42, "tier": "pro", "exp": now() + 600 }));
    // alg "none": a header that says none and no signature.
    let b64 = |v: &serde_json::Value| {
        use std::fmt::Write;
        let bytes = v.to_string().into_bytes();
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                let _ = out.write_char(table[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims("u1", "enterprise")));
    // The signature of a good token pasted onto other claims.
    let good_sig = good.rsplit('.').next().unwrap();
    let swapped =
        format!("{}.{}.{good_sig}", b64(&json!({"alg": "HS256", "typ": "JWT"})), b64(&claims("u2", "enterprise")));

    for (name, t) in [
        ("wrong key", wrong_key.as_str()),
        ("expired", &expired),
        ("future nbf", &future_nbf),
        ("missing exp", &no_exp),
        ("missing sub", &no_sub),
        ("numeric sub", &numeric_sub),
        ("alg none", &alg_none),
        ("swapped claims", &swapped),
        ("garbage", "garbage"),
        ("two parts", "abc.def"),
    ] {
        let r = get_as(&gate.url("/api/x"), t).await;
        assert_eq!(r.status, 401, "{name} must be refused");
        assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"invalid_token\""), "{name}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    assert_eq!(status_with(&gate, &within_leeway).await, 200, "exp within the 30 s default leeway");
    // `Bearer` with nothing after it is invalid; other schemes (meant for the backend) are anonymous.
    assert_eq!(get(&gate.url("/api/x"), &[("authorization", "Bearer ")]).await.status, 401);
    let basic = get(&gate.url("/api/x"), &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(basic.status, 200);
    assert_eq!(basic.upstream_header("authorization"), vec!["Basic dXNlcjpwYXNz"]);
}

#[tokio::test]
async fn a_401_consumes_no_budget() {
    let gate = Gate::default_with("").await;
    for _ in 0..10 {
        assert_eq!(get(&gate.url("/api/x"), &[("authorization", "Bearer bad")]).await.status, 401);
    }
    assert_eq!(gate.limiter_len(), 0);
}

#[tokio::test]
async fn invalid_tokens_can_be_treated_as_anonymous() {
    let config = format!("{SERVER}{IDENTITY}invalid_token = \"anonymous\"\n{TIERS}");
    let gate = Gate::start(&config).await;
    let r = get_as(&gate.url("/api/x"), "garbage").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-tier"), vec!["free"]);
    assert!(r.upstream_header("x-user-id").is_empty());
}

#[tokio::test]
async fn public_key_families_and_no_algorithm_confusion() {
    let rsa_pub = fixture("rsa_public.pem");
    let config = format!(
        "{SERVER}[identity]\njwt_algorithms = [\"HS256\", \"RS256\"]\njwt_secret_env = \"TIERGATE_TEST_SECRET\"\njwt_public_key_file = \"{rsa_pub}\"\n{TIERS}"
    );
    let gate = Gate::start(&config).await;
    let rsa = EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap();
    assert_eq!(status_with(&gate, &sign(Algorithm::RS256, &rsa, &claims("r1", "pro"), None)).await, 200);
    assert_eq!(status_with(&gate, &hs(&claims("h1", "pro"))).await, 200);
    // RS384 is not configured: refused even though the key would verify it.
    assert_eq!(status_with(&gate, &sign(Algorithm::RS384, &rsa, &claims("r1", "pro"), None)).await, 401);
    // HS/RS confusion: an HS256 token whose "secret" is the public key must fail.
    let confused =
        sign(Algorithm::HS256, &EncodingKey::from_secret(&pem("rsa_public.pem")), &claims("evil", "enterprise"), None);
    assert_eq!(status_with(&gate, &confused).await, 401);
    // Another RSA key.
    let other = EncodingKey::from_rsa_pem(&pem("rsa2_private.pem")).unwrap();
    assert_eq!(status_with(&gate, &sign(Algorithm::RS256, &other, &claims("r1", "pro"), None)).await, 401);

    // EC and EdDSA.
    for (alg, private, public) in [
        (Algorithm::ES256, "ec_private_p8.pem", "ec_public.pem"),
        (Algorithm::EdDSA, "ed_private.pem", "ed_public.pem"),
    ] {
        let name = format!("{alg:?}");
        let config = format!(
            "{SERVER}[identity]\njwt_algorithms = [\"{name}\"]\njwt_public_key_file = \"{}\"\n{TIERS}",
            fixture(public)
        );
        let gate = Gate::start(&config).await;
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem(private)).unwrap(),
            _ => EncodingKey::from_ed_pem(&pem(private)).unwrap(),
        };
        assert_eq!(status_with(&gate, &sign(alg, &key, &claims("k", "pro"), None)).await, 200, "{name}");
        assert_eq!(status_with(&gate, &hs(&claims("k", "pro"))).await, 401, "{name}: HS256 not configured");
    }
}

#[tokio::test]
async fn jwks_keys_are_picked_by_kid() {
    let config =
        format!("{SERVER}[identity]\njwt_algorithms = [\"RS256\"]\njwks_file = \"{}\"\n{TIERS}", fixture("jwks.json"));
    let gate = Gate::start(&config).await;
    let k1 = EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap();
    let k2 = EncodingKey::from_rsa_pem(&pem("rsa2_private.pem")).unwrap();
    assert_eq!(status_with(&gate, &sign(Algorithm::RS256, &k1, &claims("a", "pro"), Some("k1"))).await, 200);
    assert_eq!(status_with(&gate, &sign(Algorithm::RS256, &k2, &claims("a", "pro"), Some("k2"))).await, 200);
    // Right key, wrong kid; unknown kid.
    assert_eq!(status_with(&gate, &sign(Algorithm::RS256, &k1, &claims("a", "pro"), Some("k2"))).await, 401);
    assert_eq!(status_with(&gate, &sign(Algorithm::RS256, &k1, &claims("a", "pro"), Some("k9"))).await, 401);
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let config = format!("{SERVER}{IDENTITY}issuer = \"https://auth.example\"\naudience = \"api\"\n{TIERS}");
    let gate = Gate::start(&config).await;
    let ok = hs(&json!({ "sub": "a", "tier": "pro", "exp": now() + 600, "iss": "https://auth.example", "aud": "api" }));
    assert_eq!(status_with(&gate, &ok).await, 200);
    let wrong_iss = hs(&json!({ "sub": "a", "tier": "pro", "exp": now() + 600, "iss": "https://evil", "aud": "api" }));
    let wrong_aud =
        hs(&json!({ "sub": "a", "tier": "pro", "exp": now() + 600, "iss": "https://auth.example", "aud": "other" }));
    let missing = hs(&json!({ "sub": "a", "tier": "pro", "exp": now() + 600 }));
    for t in [wrong_iss, wrong_aud, missing] {
        assert_eq!(status_with(&gate, &t).await, 401);
    }
}

#[tokio::test]
async fn a_verified_token_is_cached() {
    let gate = Gate::default_with("").await;
    let t = hs(&json!({ "sub": "cache", "tier": "pro", "exp": now() + 600 }));
    assert_eq!(status_with(&gate, &t).await, 200);
    assert_eq!(status_with(&gate, &t).await, 200);
    // That the cache never outlives exp + leeway is a unit test in src/identity/mod.rs (no waiting).
}
