//! Hostile clients against a real tiergate: the eight defects the hardening review found, each as a
//! regression test that failed on the code before its fix. Each asserts the exact outcome: the
//! status, what the upstream received (the echo upstream reports it), the counters.

mod support;

use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::*;

async fn scrape(gate: &Gate) -> String {
    get(&format!("{}/metrics", gate.admin), &[]).await.body
}

// ---------------------------------------------------------------------------------------------
// 1. Paths: an exempt prefix must not be a door into limited routes.

#[tokio::test]
async fn path_tricks_do_not_reach_limited_routes_as_exempt() {
    // Anonymous callers on a tier with room for every request below (api: 50 per minute).
    let tiers = TIERS.replace("api_calls_per_minute = 5", "api_calls_per_minute = 50");
    let identity = format!("{IDENTITY}anonymous_tier = \"pro\"\n");
    let gate = Gate::start(&format!("{SERVER}{identity}{tiers}")).await;
    let before = scrape(&gate).await;
    for trick in ["/health/../api/x", "/health/%2e%2e/api/x", "/health;/../api/x", "/health/..;/api/x", "//api/x"] {
        // Anonymous: the api class (50 per minute) applies, and the upstream gets
        // the very path that was classified.
        let r = get(&gate.url(trick), &[]).await;
        assert_eq!(r.status, 200, "{trick}: {}", r.body);
        assert_eq!(r.json()["path"], "/api/x", "{trick}: the upstream gets the normalised path");
        assert_eq!(r.header("x-ratelimit-limit"), Some("50"), "{trick}: limited as api, not exempt");
        // A forged token is not waved through as it would be on an exempt route.
        let r = get(&gate.url(trick), &[("authorization", "Bearer forged.token.here")]).await;
        assert_eq!(r.status, 401, "{trick}: identity is checked");
    }
    let after = scrape(&gate).await;
    let exempt = |m: &str| metric(m, "tiergate_requests_total", &["decision=\"exempt\""]);
    assert_eq!(exempt(&after) - exempt(&before), 0.0, "none of them counted as exempt");

    // The query string is kept byte for byte; a plain exempt path stays exempt.
    let r = get(&gate.url("/health/../api/x?a=%2F..%2e&b=/../"), &[]).await;
    assert_eq!(r.json()["query"], "a=%2F..%2e&b=/../");
    let r = get(&gate.url("/health/./live"), &[]).await;
    assert_eq!(r.json()["path"], "/health/live");
    assert!(r.header("x-ratelimit-limit").is_none(), "exempt");
}

#[tokio::test]
async fn paths_that_cannot_be_normalised_safely_are_400() {
    let gate = Gate::default_with("").await;
    let before = scrape(&gate).await;
    let refused =
        ["/../api/x", "/health/../../api/x", "/api%2Fx", "/api%2fx", "/api%5Cx", "/a%00b", "/a%0d%0ab", "/a%zz"];
    for path in refused {
        let r = get(&gate.url(path), &[]).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"), "{path}");
    }
    let after = scrape(&gate).await;
    let bad = |m: &str| metric(m, "tiergate_requests_total", &["decision=\"bad_request\""]);
    assert_eq!(bad(&after) - bad(&before), refused.len() as f64, "counted as bad_request");
    // Raw bytes a client library would not send.
    for head in [&b"GET /a\\b HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"GET /health/\\../api/x HTTP/1.1\r\nHost: x\r\n\r\n"] {
        let (resp, _) = raw(gate.server.addr, head, Duration::from_secs(3)).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{}: {resp}", String::from_utf8_lossy(head));
    }
}

#[tokio::test]
async fn escaped_slashes_keep_forwards_them_as_data() {
    let config = format!("{SERVER}escaped_slashes = \"keep\"\n{IDENTITY}{TIERS}");
    let gate = Gate::start(&config).await;
    let r = get(&gate.url("/api/files/a%2Fb%5Cc/./d"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/files/a%2Fb%5Cc/d", "forwarded undecoded, as data in one segment");
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"), "classified by the same path: api");
    // Dot segments are still removed around them.
    let r = get(&gate.url("/api/./x/%2F/../y"), &[]).await;
    assert_eq!(r.json()["path"], "/api/x/y");
}

// ---------------------------------------------------------------------------------------------
// 2. The breaker: a probe taken by the tier lookup was never reported, and it stuck open.

#[tokio::test]
async fn after_a_redis_blip_decisions_and_tier_overrides_are_back_on_redis_within_3s() {
    let mut redis = RedisServer::start();
    let storage = format!(
        "\n[storage]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"250ms\"\non_error = \"allow\"\n",
        redis.url()
    );
    let config = format!("{SERVER}{IDENTITY}{storage}{TIERS}")
        .replace("[identity]\n", "[identity]\ntier_source = \"redis\"\ntier_cache_ttl = \"200ms\"\n");
    let gate = Gate::start(&config).await;
    let t = token("blip", "free");
    redis.cli(&["SET", "user_tier:blip", "pro"]);
    let r = get_as(&gate.url("/api/x"), &t).await;
    assert_eq!(r.upstream_header("x-user-tier"), vec!["pro"]);

    redis.kill();
    for _ in 0..10 {
        let r = get_as(&gate.url("/api/x"), &t).await;
        assert_eq!(r.status, 200, "on_error = allow");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(gate.server.proxy.limiter.degraded_now(), "the breaker opened");

    redis.restart();
    redis.cli(&["SET", "user_tier:blip", "pro"]);
    let back = Instant::now();
    loop {
        let r = get_as(&gate.url("/api/x"), &t).await;
        let tier_back = r.upstream_header("x-user-tier") == vec!["pro"];
        // Limits from Redis again: the decision wrote its window keys.
        let limits_back = !redis.keys("rate_limit:*").is_empty() && r.header("x-ratelimit-limit") == Some("5");
        if tier_back && limits_back && !gate.server.proxy.limiter.degraded_now() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "3 s after Redis returned: tier from Redis {tier_back}, limits from Redis {limits_back}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. Duplicate Authorization and Host headers.

#[tokio::test]
async fn a_second_authorization_header_is_400_and_nothing_is_forwarded() {
    let gate = Gate::default_with("").await;
    let forged =
        hs(&serde_json::json!({"sub": "mallory", "tier": "enterprise", "exp": now() + 3600})).replace(".", ".x"); // not a valid signature
    let valid = token("alice", "free");
    for (first, second) in [
        ("Basic dXNlcjpwYXNz".to_string(), format!("Bearer {forged}")),
        (format!("Bearer {valid}"), format!("Bearer {forged}")),
        (format!("Bearer {valid}"), format!("Bearer {valid}")),
    ] {
        let head =
            format!("GET /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: {first}\r\nAuthorization: {second}\r\n\r\n");
        let (resp, closed) = raw(gate.server.addr, head.as_bytes(), Duration::from_secs(3)).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{first} + {second}: {resp}");
        assert!(!resp.contains("\"path\""), "nothing reached the upstream: {resp}");
        assert!(closed);
    }
    // Exempt routes too: the backend behind them must not see two credentials either.
    let head = "GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Basic a\r\nAuthorization: Bearer b\r\n\r\n";
    let (resp, _) = raw(gate.server.addr, head.as_bytes(), Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[tokio::test]
async fn two_host_headers_are_400() {
    let gate = Gate::default_with("").await;
    let (resp, closed) =
        raw(gate.server.addr, b"GET /x HTTP/1.1\r\nHost: x\r\nHost: evil.example\r\n\r\n", Duration::from_secs(3))
            .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(!resp.contains("evil.example"), "{resp}");
    assert!(closed);
}

// ---------------------------------------------------------------------------------------------
// 5. A malformed request body is the client's error (400), never an upstream error.

#[tokio::test]
async fn malformed_bodies_are_400_and_not_upstream_errors() {
    let gate = Gate::default_with("").await;
    let before = scrape(&gate).await;
    let huge_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(100_000));
    for body in ["ffffffffffffffffff\r\nhello\r\n0\r\n\r\n".to_string(), huge_extension, "zz\r\n\r\n".to_string()] {
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let (resp, _) = raw(gate.server.addr, head.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{}: {resp}", &body[..20.min(body.len())]);
        assert!(resp.contains("application/problem+json"), "{resp}");
    }
    let after = scrape(&gate).await;
    assert_eq!(
        metric(&after, "tiergate_upstream_errors_total", &[]) - metric(&before, "tiergate_upstream_errors_total", &[]),
        0.0,
        "a client cannot fire the upstream-error alert"
    );
    // A well-formed chunked body still goes through.
    let (resp, _) = raw(
        gate.server.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"body_bytes\":5"), "{resp}");
}

// ---------------------------------------------------------------------------------------------
// 6. CL + TE on a pipelined request (read together with the body before it).

#[tokio::test]
async fn a_pipelined_request_with_cl_and_te_is_refused_and_the_connection_closed() {
    let gate = Gate::default_with("").await;
    for first in [
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_string(),
        "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_string(),
        "GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
    ] {
        let stream = format!(
            "{first}POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let (resp, closed) = raw(gate.server.addr, stream.as_bytes(), Duration::from_secs(3)).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "the first request is served: {resp}");
        let second = resp.find("HTTP/1.1 400").unwrap_or_else(|| panic!("the pipelined CL+TE request: {resp}"));
        assert!(resp[second..].matches("HTTP/1.1").count() == 1, "nothing after it is answered: {resp}");
        assert!(!resp.contains("/smuggled"), "{resp}");
        assert!(closed, "connection closed");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. JWT details: `crit`, and non-integer NumericDates.

#[tokio::test]
async fn crit_headers_are_refused_and_fractional_dates_accepted() {
    let gate = Gate::default_with("").await;
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let claims = serde_json::json!({"sub": "crit", "tier": "pro", "exp": now() + 600});
    // Correctly signed, with a `crit` extension tiergate does not implement.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.crit = Some(vec!["exp-ext".into()]);
    let signed = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    assert_eq!(get_as(&gate.url("/x"), &signed).await.status, 401, "unknown crit extension → invalid");
    // The same without crit verifies: the test is about crit, not about a hand-made token.
    let plain =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap();
    assert_eq!(get_as(&gate.url("/x"), &plain).await.status, 200);

    // exp and nbf with fractions (RFC 7519 §2 NumericDate).
    let t = hs(
        &serde_json::json!({"sub": "frac", "tier": "pro", "exp": now() as f64 + 600.5, "nbf": now() as f64 - 10.25}),
    );
    let r = get_as(&gate.url("/x"), &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("x-user-id"), vec!["frac"]);
    let t = hs(&serde_json::json!({"sub": "frac", "tier": "pro", "exp": now() as f64 - 600.5}));
    assert_eq!(get_as(&gate.url("/x"), &t).await.status, 401, "a fractional exp in the past is still expired");
}

// ---------------------------------------------------------------------------------------------
// 8. A forged token sent again costs a lookup, not a signature check.

#[tokio::test]
async fn rejected_tokens_are_remembered_bounded() {
    let gate = Gate::default_with("").await;
    let snap = gate.server.proxy.snapshot.load_full();
    let verifier = || &snap.identity;
    let forged = hs(&serde_json::json!({"sub": "mallory", "tier": "enterprise", "exp": now() + 3600}));
    let forged = format!("{}AAAA", &forged[..forged.len() - 4]);
    assert_eq!(get_as(&gate.url("/x"), &forged).await.status, 401);
    assert_eq!(verifier().rejected_tokens().len(), 1);
    for _ in 0..5 {
        assert_eq!(get_as(&gate.url("/x"), &forged).await.status, 401);
    }
    assert_eq!(verifier().rejected_tokens().len(), 1, "repeats hit the same entry");
    // A token that is only not valid *yet* is not remembered as rejected.
    let early = hs(&serde_json::json!({"sub": "early", "exp": now() + 3600, "nbf": now() + 600}));
    assert_eq!(get_as(&gate.url("/x"), &early).await.status, 401);
    assert_eq!(verifier().rejected_tokens().len(), 1);
    // Bounded: a flood of unique forgeries does not grow it past its capacity.
    let v = verifier();
    for i in 0..20_000 {
        let _ = v.verify(&format!("{}.{i}", &forged[..forged.len() - 8]));
    }
    assert!(v.rejected_tokens().len() <= 16_384, "{}", v.rejected_tokens().len());
    assert!(v.rejected_tokens().len() > 1_000, "still remembering: {}", v.rejected_tokens().len());
    // A valid token is unaffected.
    assert_eq!(get_as(&gate.url("/x"), &token("alice", "pro")).await.status, 200);
}
