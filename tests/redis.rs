//! Redis-only behaviour, with real `redis-server` processes: exactness across replicas, leases,
//! persistence across restarts, TTLs, memory bounds, failures and recovery, the negative cache, the
//! tier override, TLS, and Redis Cluster. What both stores share runs from tests/behaviour.rs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::redis::{RedisCluster, RedisServer};
use support::*;

fn storage(url: &str, extra: &str) -> String {
    format!("\n[storage]\nbackend = \"redis\"\nurl = \"{url}\"\ntimeout = \"250ms\"\nlease_ttl = \"2s\"\n{extra}\n")
}

/// SERVER + IDENTITY + the test tiers + a Redis storage section + `extra`.
fn config(url: &str, storage_extra: &str, extra: &str) -> String {
    format!("{SERVER}{IDENTITY}{}{TIERS}{extra}", storage(url, storage_extra))
}

const FIVE_PER_MINUTE: &str = r#"
[tiers.five]
requests_per_hour = -1
requests_per_day = -1
[[tiers.five.limits]]
name = "five"
requests = 5
window = "1m"
"#;

#[tokio::test]
async fn two_replicas_admit_exactly_the_limit_under_concurrency_for_every_algorithm() {
    let redis = RedisServer::start();
    for algorithm in ["sliding_log", "gcra", "fixed_window"] {
        let cfg = config(&redis.url(), &format!("algorithm = \"{algorithm}\""), FIVE_PER_MINUTE);
        let a = Gate::start(&cfg).await;
        let b = Gate::start(&cfg).await;
        let t = token(&format!("exact-{algorithm}"), "five");
        let auth = format!("Bearer {t}");
        let client = client();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let url = if i % 2 == 0 { a.url("/x") } else { b.url("/x") };
            let (client, auth) = (client.clone(), auth.clone());
            tasks.push(tokio::spawn(async move {
                send(&client, request("GET", &url, &[("authorization", &auth)], Bytes::new())).await.status
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap().as_u16() {
                200 => ok += 1,
                429 => {}
                other => panic!("{algorithm}: unexpected status {other}"),
            }
        }
        assert_eq!(ok, 5, "{algorithm}: exactly the limit must be admitted across both replicas");
    }
}

#[tokio::test]
async fn refused_requests_consume_nothing_and_counts_survive_a_restart() {
    let redis = RedisServer::start();
    let cfg = config(
        &redis.url(),
        "",
        r#"
[tiers.tight]
requests_per_hour = 4
requests_per_day = 100
api_calls_per_minute = 2
"#,
    );
    let t = token("aon", "tight");
    {
        let gate = Gate::start(&cfg).await;
        assert_eq!(get_as(&gate.url("/api/a"), &t).await.status, 200);
        assert_eq!(get_as(&gate.url("/api/a"), &t).await.status, 200);
        for _ in 0..5 {
            assert_eq!(get_as(&gate.url("/api/a"), &t).await.status, 429);
        }
        gate.server.drain(Duration::from_secs(1)).await;
    }
    // A new tiergate process on the same Redis sees the same counts: hour has 4 - 2 = 2 left.
    let gate = Gate::start(&cfg).await;
    let r = get_as(&gate.url("/dashboard"), &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-window"), Some("hour"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(get_as(&gate.url("/dashboard"), &t).await.status, 200);
    let r = get_as(&gate.url("/dashboard"), &t).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["violated-policies"], serde_json::json!(["hour"]));

    // Every key has a TTL, lease sets included.
    let keys = redis.keys("rate_limit:*");
    assert!(keys.len() >= 3, "{keys:?}");
    for k in &keys {
        assert!(k.starts_with("rate_limit:{user:aon}:"), "key layout: {k}");
        let ttl: i64 = redis.cli(&["PTTL", k]).trim().parse().unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
}

#[tokio::test]
async fn leases_are_shared_returned_and_reclaimed_after_a_crash() {
    let redis = RedisServer::start();
    let extra = r#"
[tiers.narrow]
concurrent_requests = 2
"#;
    let cfg = config(&redis.url(), "", extra);
    let a = Gate::start(&cfg).await;
    let b = Gate::start(&cfg).await;
    let auth = format!("Bearer {}", token("lease", "narrow"));
    let client = client();
    let hold_a = client
        .request(request("GET", &a.url("/stream?chunks=3&ms=300"), &[("authorization", &auth)], Bytes::new()))
        .await
        .unwrap();
    let hold_b = client
        .request(request("GET", &b.url("/stream?chunks=40&ms=300"), &[("authorization", &auth)], Bytes::new()))
        .await
        .unwrap();
    assert_eq!((hold_a.status().as_u16(), hold_b.status().as_u16()), (200, 200));
    let r = get(&a.url("/x"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 429, "two slots in use across the replicas");
    assert_eq!(r.json()["violated-policies"], serde_json::json!(["concurrent"]));
    // Body ends on replica A: the slot comes back (release is asynchronous: poll briefly).
    use http_body_util::BodyExt;
    hold_a.into_body().collect().await.unwrap();
    poll_status(&b.url("/x"), &auth, 200, Duration::from_secs(2)).await;
    drop(hold_b);

    // A sidecar that dies holding slots: run tiergate as a process, hold two slots, kill -9 it.
    let upstream = b.upstream;
    let dir = std::env::temp_dir().join(format!("tiergate-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = cfg
        .replace("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"127.0.0.1:{port}\""))
        .replace("http://127.0.0.1:1", &format!("http://{upstream}"));
    std::fs::write(dir.join("config.toml"), text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env(SECRET_ENV, SECRET)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let crash_url = format!("http://127.0.0.1:{port}/stream?chunks=100&ms=200");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = Vec::new();
    while held.len() < 2 {
        assert!(Instant::now() < deadline, "crash instance did not start");
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(request("GET", &crash_url, &[("authorization", &auth)], Bytes::new())),
        )
        .await
            && r.status() == 200
        {
            held.push(r);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(get(&a.url("/x"), &[("authorization", &auth)]).await.status, 429);
    let _ = child.kill();
    let _ = child.wait();
    let killed_at = Instant::now();
    drop(held);
    // Its leases are no longer renewed: they expire after lease_ttl (2 s).
    poll_status(&a.url("/x"), &auth, 200, Duration::from_secs(5)).await;
    assert!(killed_at.elapsed() >= Duration::from_millis(1000), "leases expired too early: {:?}", killed_at.elapsed());
    let _ = std::fs::remove_dir_all(dir);
}

async fn poll_status(url: &str, auth: &str, want: u16, within: Duration) {
    let start = Instant::now();
    loop {
        let s = get(url, &[("authorization", auth)]).await.status.as_u16();
        if s == want {
            return;
        }
        assert!(start.elapsed() < within, "{url} still {s} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn in_flight_leases_are_renewed_past_their_ttl() {
    let redis = RedisServer::start();
    let gate = Gate::start(&config(&redis.url(), "", "[tiers.one]\nconcurrent_requests = 1\n")).await;
    let auth = format!("Bearer {}", token("renew", "one"));
    // A response that lasts 3.5 s (longer than the 2 s lease): the slot must stay taken all along.
    let long = client().request(request(
        "GET",
        &gate.url("/stream?chunks=8&ms=500"),
        &[("authorization", &auth)],
        Bytes::new(),
    ));
    let long = tokio::spawn(long);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..6 {
        assert_eq!(get(&gate.url("/x"), &[("authorization", &auth)]).await.status, 429, "lease lapsed while in flight");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(long);
}

#[tokio::test]
async fn memory_per_user_stays_bounded() {
    let redis = RedisServer::start();
    let gate = Gate::start(&config(
        &redis.url(),
        "",
        "[tiers.big]\nrequests_per_hour = 100000\nrequests_per_day = 100000\napi_calls_per_minute = 100000\n",
    ))
    .await;
    let auth = format!("Bearer {}", token("heavy", "big"));
    let client = client();
    for _ in 0..30 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.push(send(&client, request("GET", &gate.url("/api/x"), &[("authorization", &auth)], Bytes::new())));
        }
        for r in futures_util::future::join_all(batch).await {
            assert_eq!(r.status, 200);
        }
    }
    let mut total = 0;
    for k in redis.keys("rate_limit:{user:heavy}:*") {
        total += redis.cli(&["MEMORY", "USAGE", &k]).trim().parse::<u64>().unwrap();
    }
    assert!(total > 0 && total < 32 * 1024, "3,000 requests used {total} bytes of Redis memory");
}

#[tokio::test]
async fn redis_failures_follow_on_error_and_recover() {
    for policy in ["local", "allow", "deny"] {
        let mut redis = RedisServer::start();
        let cfg = config(&redis.url(), &format!("on_error = \"{policy}\""), "");
        let gate = Gate::start(&cfg).await;
        let t = token(&format!("fail-{policy}"), "pro");
        assert_eq!(get_as(&gate.url("/x"), &t).await.status, 200);
        redis.kill();
        let mut statuses = Vec::new();
        for _ in 0..15 {
            let started = Instant::now();
            let r = get_as(&gate.url("/x"), &t).await;
            // The deadline is 250 ms; allow for scheduling on a loaded 2-core machine.
            assert!(
                started.elapsed() < Duration::from_millis(900),
                "{policy}: a request waited {:?}",
                started.elapsed()
            );
            statuses.push(r.status.as_u16());
            if policy == "deny" && r.status == 503 {
                assert_eq!(r.header("retry-after"), Some("1"));
                assert_eq!(r.header("content-type"), Some("application/problem+json"));
            }
        }
        match policy {
            "deny" => assert!(statuses.iter().all(|s| *s == 503), "{policy}: {statuses:?}"),
            _ => assert!(statuses.iter().all(|s| *s == 200), "{policy}: tiergate caused errors: {statuses:?}"),
        }
        // The gauge is process-wide (other tests' gates share it): at least this gate is degraded.
        assert!(gate.server.proxy.limiter.degraded_now(), "{policy}: breaker open");
        let m = get(&format!("{}/metrics", gate.admin), &[]).await.body;
        assert!(metric(&m, "tiergate_storage_fallback", &[]) >= 1.0, "{policy}: fallback gauge");
        // Back within 3 s of Redis returning, without a restart.
        redis.restart();
        let back = Instant::now();
        loop {
            let r = get_as(&gate.url("/x"), &t).await;
            if r.status == 200 && !redis.keys("rate_limit:*").is_empty() {
                break;
            }
            assert!(back.elapsed() < Duration::from_secs(3), "{policy}: not back on Redis 3 s after it returned");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!gate.server.proxy.limiter.degraded_now(), "{policy}: breaker closed again");
    }
}

#[tokio::test]
async fn route_on_error_overrides_the_storage_policy() {
    let mut redis = RedisServer::start();
    let cfg = config(
        &redis.url(),
        "on_error = \"allow\"",
        "[[routes]]\nprefix = \"/critical/\"\nclass = \"general\"\non_error = \"deny\"\n",
    );
    let gate = Gate::start(&cfg).await;
    let t = token("route-policy", "pro");
    redis.kill();
    assert_eq!(get_as(&gate.url("/critical/x"), &t).await.status, 503);
    assert_eq!(get_as(&gate.url("/other"), &t).await.status, 200);
}

#[tokio::test]
async fn tiergate_starts_without_redis() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gate = Gate::start(&config(&format!("redis://127.0.0.1:{port}/0"), "", "")).await;
    assert_eq!(get(&format!("{}/readyz", gate.admin), &[]).await.status, 200, "readiness never depends on Redis");
    assert_eq!(get_as(&gate.url("/x"), &token("early", "pro")).await.status, 200, "on_error = local serves");
}

#[tokio::test]
async fn script_flush_is_recovered_from() {
    let redis = RedisServer::start();
    let gate = Gate::start(&config(&redis.url(), "", "")).await;
    let t = token("flush", "free");
    assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 200);
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    let r = get_as(&gate.url("/api/x"), &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"), "counted in Redis after reloading the script");
}

#[tokio::test]
async fn refused_callers_cost_no_redis_command() {
    let redis = RedisServer::start();
    let gate = Gate::start(&config(&redis.url(), "", "")).await;
    let t = token("negative", "free");
    for _ in 0..3 {
        assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 200);
    }
    assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 429);
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..20 {
        let r = get_as(&gate.url("/api/x"), &t).await;
        assert_eq!(r.status, 429);
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((59..=61).contains(&retry), "retry-after from the cache: {retry}");
        assert_eq!(r.json()["violated-policies"], serde_json::json!(["minute"]));
    }
    assert_eq!(redis.calls("evalsha") + redis.calls("eval"), 0, "a refused caller must not reach Redis");
    // A request that does not need the full window still goes to Redis and is admitted.
    assert_eq!(get_as(&gate.url("/dashboard"), &t).await.status, 200);
    assert_eq!(redis.calls("evalsha"), 1);
    // Unlimited callers never reach Redis either.
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..5 {
        assert_eq!(get_as(&gate.url("/api/x"), &token("big", "enterprise")).await.status, 200);
    }
    assert_eq!(redis.calls("evalsha") + redis.calls("eval"), 0);
}

#[tokio::test]
async fn one_script_call_per_limited_request() {
    let redis = RedisServer::start();
    let gate = Gate::start(&config(&redis.url(), "", "")).await;
    let t = token("one-trip", "pro");
    get_as(&gate.url("/api/x"), &t).await; // loads the script
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..4 {
        assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 200);
    }
    assert_eq!(redis.calls("evalsha"), 4);
    let stats = redis.cli(&["INFO", "commandstats"]);
    let other: Vec<&str> = stats
        .lines()
        .filter(|l| {
            l.starts_with("cmdstat_")
                && !l.starts_with("cmdstat_evalsha")
                && !l.starts_with("cmdstat_info")
                && !l.starts_with("cmdstat_config")
        })
        .filter(|l| {
            ![
                "cmdstat_time",
                "cmdstat_mget",
                "cmdstat_set",
                "cmdstat_zadd",
                "cmdstat_zcard",
                "cmdstat_zremrangebyscore",
                "cmdstat_pexpire",
                "cmdstat_zrem",
            ]
            .iter()
            .any(|c| l.starts_with(&format!("{c}:")))
        })
        .collect();
    assert!(other.is_empty(), "unexpected commands: {other:?}");
}

#[tokio::test]
async fn the_tier_can_come_from_redis() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "", "")
        .replace("[identity]\n", "[identity]\ntier_source = \"redis\"\ntier_cache_ttl = \"200ms\"\n");
    let gate = Gate::start(&cfg).await;
    redis.cli(&["SET", "user_tier:upgraded", "pro"]);
    let r = get_as(&gate.url("/api/x"), &token("upgraded", "free")).await;
    assert_eq!(r.upstream_header("x-user-tier"), vec!["pro"]);
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
    // No override stored: the claim decides.
    let r = get_as(&gate.url("/api/x"), &token("plain", "free")).await;
    assert_eq!(r.upstream_header("x-user-tier"), vec!["free"]);
    // Changes show after tier_cache_ttl.
    redis.cli(&["SET", "user_tier:plain", "enterprise"]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = get_as(&gate.url("/api/x"), &token("plain", "free")).await;
    assert_eq!(r.upstream_header("x-user-tier"), vec!["enterprise"]);
}

#[tokio::test]
async fn redis_cluster_spreads_users_over_the_masters() {
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let cfg = config("redis://127.0.0.1:1/0", &format!("cluster_nodes = [{}]", nodes.join(", ")), FIVE_PER_MINUTE);
    let a = Gate::start(&cfg).await;
    let b = Gate::start(&cfg).await;
    // Wait for the cluster connection.
    let probe = token("cluster-probe", "five");
    let start = Instant::now();
    while cluster.nodes.iter().all(|n| n.keys("rate_limit:*").is_empty()) {
        get_as(&a.url("/x"), &probe).await;
        assert!(start.elapsed() < Duration::from_secs(10), "never connected to the cluster");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for u in 0..24 {
        let t = token(&format!("cluster-user-{u}"), "five");
        let mut ok = 0;
        for i in 0..8 {
            let gate = if i % 2 == 0 { &a } else { &b };
            if get_as(&gate.url("/x"), &t).await.status == 200 {
                ok += 1;
            }
        }
        assert_eq!(ok, 5, "user {u}");
    }
    let per_node: Vec<usize> = cluster.nodes.iter().map(|n| n.keys("rate_limit:*").len()).collect();
    assert!(per_node.iter().filter(|n| **n > 0).count() >= 2, "users should land on several masters: {per_node:?}");
}

/// The Redis store on its own (no proxy), for tests of the script itself.
fn direct_store(redis: &RedisServer, key_prefix: &str) -> tiergate::limit::RedisStore {
    tiergate::app::install_process_globals();
    let target = tiergate::limit::RedisTarget {
        url: redis.url(),
        cluster_nodes: vec![],
        ca_pem: None,
        key_prefix: key_prefix.into(),
        timeout: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(30),
    };
    tiergate::limit::RedisStore::start(&target).unwrap()
}

#[tokio::test]
async fn switching_algorithms_reuses_keys_without_errors() {
    use tiergate::limit::Algorithm;
    use tiergate::limit::{IdentityKey, Plan, WindowSpec};
    let redis = RedisServer::start();
    let store = direct_store(&redis, "switch");
    let key = IdentityKey::User(Arc::from("switcher"));
    for algorithm in [
        Algorithm::SlidingLog,
        Algorithm::Gcra,
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::FixedWindow,
        Algorithm::Gcra,
    ] {
        let plan =
            Plan::new(algorithm, vec![WindowSpec { name: Arc::from("minute"), limit: 100, window_ms: 60_000 }], None);
        for _ in 0..3 {
            let d = store
                .decide(&key, &plan, true, tiergate::limit::Ask::default())
                .await
                .unwrap_or_else(|e| panic!("{algorithm:?}: {e}"))
                .0;
            assert!(d.allowed);
        }
    }
}

/// The Lua script and the in-memory limiter make the same decisions over random simulated time.
#[tokio::test]
async fn lua_script_matches_the_memory_model() {
    use tiergate::limit::Algorithm;
    use tiergate::limit::{Clock, IdentityKey, LocalLimiter, Plan, WindowSpec};
    let redis = RedisServer::start();
    let store = direct_store(&redis, "model");
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for algorithm in [Algorithm::SlidingLog, Algorithm::Gcra, Algorithm::FixedWindow] {
        for round in 0..4 {
            let w = |name: &str, limit: u64, ms: u64| WindowSpec { name: Arc::from(name), limit, window_ms: ms };
            let short = 1_000 + next() % 4_000;
            let plan = Plan::new(
                algorithm,
                vec![w("short", 1 + next() % 6, short), w("long", 2 + next() % 15, short * (2 + next() % 4))],
                None,
            );
            let clock = Clock::manual(0);
            let model = LocalLimiter::new(clock.clone());
            let key = IdentityKey::User(Arc::from(format!("model-{algorithm:?}-{round}")));
            let mut offset = 0i64;
            for step in 0..300 {
                offset += (next() % (short / 3)) as i64;
                store.set_time_offset_ms(offset);
                let d = store.decide(&key, &plan, true, tiergate::limit::Ask::default()).await.unwrap().0;
                if let Clock::Manual(t) = &clock {
                    t.store(d.now_ms, std::sync::atomic::Ordering::Relaxed);
                }
                let m = model.check(&key, &plan);
                let ctx = format!("{algorithm:?} round {round} step {step} at {}", d.now_ms);
                assert_eq!(d.allowed, m.allowed, "{ctx}");
                assert_eq!(d.violated, m.violated, "{ctx}");
                assert_eq!(d.retry_at_ms, m.retry_at_ms, "{ctx}");
                assert_eq!(d.binding, m.binding, "{ctx}");
            }
        }
    }
}

#[tokio::test]
async fn rediss_with_a_private_ca() {
    let redis = RedisServer::start_tls();
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let cfg = config(&url, &format!("ca_file = \"{}\"", fixture("tls_ca.pem")), "");
    let gate = Gate::start(&cfg).await;
    let t = token("over-tls", "free");
    for expected in ["2", "1", "0"] {
        let r = get_as(&gate.url("/api/x"), &t).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-remaining"), Some(expected));
    }
    assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 429);
    assert!(!redis.keys("rate_limit:{user:over-tls}:*").is_empty(), "counted in the TLS Redis");
    assert!(!gate.server.proxy.limiter.degraded_now(), "decisions came from the TLS Redis");
}
