//! Quota batching (`storage.quota_batch`) against real redis-servers: for every algorithm, exact
//! limits across two replicas under concurrency, the full limit reachable once reservations return,
//! early refusal bounded by `quota_batch_ttl`, windows that fill exactly to their limit; concurrency
//! slots across replicas; and the faults (a SIGKILLed replica, SIGTERM, a Redis restart, Redis
//! Cluster). Virtual time: every replica shares one shifted clock, and the Redis scripts add the same
//! offset to `TIME`. With `quota_batch = 0` the other suites (behaviour, redis) cover the unchanged path.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]
#![allow(clippy::print_stdout, reason = "the figures docs/PERFORMANCE.md records (`-- --nocapture`)")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::redis::{RedisCluster, RedisServer};
use support::*;
use tiergate::limit::Clock;

const BATCH: u64 = 20;
const DAY_MS: u64 = 86_400_000;

/// A tier with one window of `limit` requests per day and no other limit (a day, so GCRA refills
/// one unit per 86 400 / limit seconds: none during a test).
fn tier(limit: u64, concurrent: i64) -> String {
    format!(
        "\n[tiers.batch]\nrequests_per_hour = -1\nrequests_per_day = -1\nconcurrent_requests = {concurrent}\n\
         [[tiers.batch.limits]]\nname = \"w\"\nrequests = {limit}\nwindow = \"1d\"\n"
    )
}

/// The Redis store with batching; `on_error = "deny"`, so a store failure shows as a 503 (which the
/// tests refuse) rather than as admissions by the local fallback.
fn storage(redis_url: &str, algorithm: &str) -> String {
    format!(
        "backend = \"redis\"\nurl = \"{redis_url}\"\ntimeout = \"500ms\"\nlease_ttl = \"2s\"\n\
         algorithm = \"{algorithm}\"\nquota_batch = {BATCH}\nquota_batch_ttl = \"1s\"\non_error = \"deny\"\n"
    )
}

/// A shifted clock placed ten minutes into a UTC day, so no fixed window ends during a test.
fn aligned_clock() -> Clock {
    let clock = Clock::shifted();
    let now = clock.now_ms();
    clock.advance(DAY_MS - now % DAY_MS + 600_000);
    clock
}

/// What the returner task does every quarter TTL, done now (the test moved time past the TTL).
async fn end_reservations(gates: &[Gate]) {
    for g in gates {
        let batching = g.server.proxy.snapshot.load().quota_batch;
        g.server.proxy.limiter.return_expired(batching, false).await;
    }
}

/// Sends one request at a time, round robin over `gates`, until every gate has refused twice in a
/// row; returns how many were admitted.
async fn drain_sequentially(gates: &[Gate], t: &str) -> u64 {
    let (mut admitted, mut refusals) = (0, 0);
    let mut i = 0;
    while refusals < 2 * gates.len() {
        match get_as(&gates[i % gates.len()].url("/x"), t).await.status.as_u16() {
            200 => {
                admitted += 1;
                refusals = 0;
            }
            429 => refusals += 1,
            s => panic!("unexpected status {s}"),
        }
        i += 1;
        assert!(i < 100_000, "never refused");
    }
    admitted
}

macro_rules! on_every_algorithm {
    ($($name:ident),* $(,)?) => {
        mod sliding_log {
            $(#[tokio::test]
            async fn $name() { super::$name("sliding_log").await })*
        }
        mod gcra {
            $(#[tokio::test]
            async fn $name() { super::$name("gcra").await })*
        }
        mod fixed_window {
            $(#[tokio::test]
            async fn $name() { super::$name("fixed_window").await })*
        }
    };
}

on_every_algorithm!(
    two_replicas_never_admit_more_than_the_limit_and_reach_it_once_reservations_return,
    early_refusal_lasts_only_while_another_replica_holds_units,
    a_window_fills_exactly_to_its_limit,
    remaining_never_rises_between_admitted_requests,
);

async fn two_replicas_never_admit_more_than_the_limit_and_reach_it_once_reservations_return(algorithm: &str) {
    const LIMIT: u64 = 300;
    let redis = RedisServer::start();
    let clock = aligned_clock();
    let gates = Gate::replicas(2, &storage(&redis.url(), algorithm), &tier(LIMIT, -1), &clock).await;
    let t = token("crowd", "batch");
    let admitted = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for g in &gates {
        for _ in 0..32 {
            let (url, t, admitted) = (g.url("/x"), t.clone(), Arc::clone(&admitted));
            clients.push(tokio::spawn(async move {
                for _ in 0..12 {
                    match get_as(&url, &t).await.status.as_u16() {
                        200 => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {}
                        s => panic!("unexpected status {s}"),
                    }
                }
            }));
        }
    }
    for c in clients {
        c.await.unwrap();
    }
    let first = admitted.load(Ordering::Relaxed);
    let held: u64 = gates.iter().map(|g| g.server.proxy.limiter.reserved_units()).sum();
    let returning: u64 = gates.iter().map(|g| g.server.proxy.limiter.returning_units()).sum();
    let q = get_as(&gates[0].url("/_tiergate/quota"), &t).await.json();
    let counted = LIMIT - q["windows"][0]["remaining"].as_u64().unwrap();
    println!(
        "{algorithm}: 2 replicas × 32 clients × 12 requests: {first} admitted; Redis counts {counted}: \
         {held} units still reserved, {returning} on their way back"
    );
    assert!(first <= LIMIT, "{algorithm}: {first} admitted over a limit of {LIMIT}");
    if algorithm != "gcra" {
        // Every unit Redis counts is admitted, held, or being returned: none is lost or made up.
        assert_eq!(counted, first + held + returning, "{algorithm}: Redis's count against the replicas' books");
    }

    // The reservations end (their TTL passes): what they held goes back, and the rest of the
    // limit is admitted, exactly.
    clock.advance(1_000);
    end_reservations(&gates).await;
    let rest = drain_sequentially(&gates, &t).await;
    assert_eq!(first + rest, LIMIT, "{algorithm}: the full limit once reservations returned ({first} + {rest})");
    for g in &gates {
        assert_eq!(g.server.proxy.limiter.reserved_units(), 0, "{algorithm}: nothing held at the limit");
    }
}

async fn early_refusal_lasts_only_while_another_replica_holds_units(algorithm: &str) {
    const LIMIT: u64 = 100;
    let redis = RedisServer::start();
    let clock = aligned_clock();
    let gates = Gate::replicas(2, &storage(&redis.url(), algorithm), &tier(LIMIT, -1), &clock).await;
    let (a, b) = (&gates[0], &gates[1]);
    let t = token("split", "batch");
    for _ in 0..30 {
        assert_eq!(get_as(&a.url("/x"), &t).await.status, 200);
    }
    let held = a.server.proxy.limiter.reserved_units();
    assert!(held > 0 && held <= BATCH, "{algorithm}: replica A holds a reservation of at most {BATCH}: {held}");
    // B admits what is left in Redis, then is refused while A still holds `held` units.
    let from_b = drain_sequentially(std::slice::from_ref(b), &t).await;
    assert_eq!(30 + from_b + held, LIMIT, "{algorithm}: B got everything but A's units");
    assert_eq!(get_as(&b.url("/x"), &t).await.status, 429, "{algorithm}: A's reservation is still live");
    // A reservation lives half of quota_batch_ttl, and B's refusal is remembered for a quarter at
    // most: once that has passed and the returner has run (it runs every quarter), B gets A's units.
    clock.advance(500);
    end_reservations(&gates).await;
    let after = drain_sequentially(std::slice::from_ref(b), &t).await;
    println!(
        "{algorithm}: early refusal: {held} units held by the other replica, for at most 0.5 s + 0.25 s (returner) + 0.25 s (refusal cache) = quota_batch_ttl"
    );
    assert_eq!(after, held, "{algorithm}: exactly the returned units");
}

async fn a_window_fills_exactly_to_its_limit(algorithm: &str) {
    const LIMIT: u64 = 37;
    let redis = RedisServer::start();
    let clock = aligned_clock();
    let gates = Gate::replicas(1, &storage(&redis.url(), algorithm), &tier(LIMIT, -1), &clock).await;
    let t = token("fill", "batch");
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let admitted = drain_sequentially(&gates, &t).await;
    let calls = redis.calls("evalsha");
    assert_eq!(admitted, LIMIT, "{algorithm}");
    assert_eq!(gates[0].server.proxy.limiter.reserved_units(), 0, "{algorithm}: no unit stranded at the limit");
    let q = get_as(&gates[0].url("/_tiergate/quota"), &t).await.json();
    assert_eq!(q["windows"][0]["remaining"], 0, "{algorithm}: Redis counts the window full: {q}");
    // Near the limit every request goes to Redis; far from it, reservations save round trips.
    println!("{algorithm}: {LIMIT} admitted sequentially with {calls} script calls");
    assert!(calls < LIMIT, "{algorithm}: {calls} round trips for {LIMIT} admissions");
}

/// X-RateLimit-Remaining under batching: Redis's count at the last round trip (every replica's
/// reservations counted as used) plus what this replica still holds for the caller.
async fn remaining_never_rises_between_admitted_requests(algorithm: &str) {
    const LIMIT: u64 = 200;
    let redis = RedisServer::start();
    let clock = aligned_clock();
    // A TTL long enough that no reservation ends (and gives units back) during the test.
    let storage = storage(&redis.url(), algorithm).replace("quota_batch_ttl = \"1s\"", "quota_batch_ttl = \"60s\"");
    let gates = Gate::replicas(1, &storage, &tier(LIMIT, -1), &clock).await;
    let t = token("headers", "batch");
    let mut last = LIMIT;
    for i in 0..150 {
        let r = get_as(&gates[0].url("/x"), &t).await;
        assert_eq!(r.status, 200);
        let remaining: u64 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();
        assert!(remaining <= last, "{algorithm}: request {i}: Remaining rose from {last} to {remaining}");
        // One replica: this replica's own unspent units are the caller's to spend here, so the
        // header reads exactly as without batching.
        assert_eq!(remaining, LIMIT - 1 - i, "{algorithm}: request {i}");
        last = remaining;
    }
}

#[tokio::test]
async fn many_callers_reservations_go_back_in_one_call() {
    let redis = RedisServer::start();
    let clock = aligned_clock();
    let gates = Gate::replicas(1, &storage(&redis.url(), "sliding_log"), &tier(10_000, -1), &clock).await;
    let users = ["back-a", "back-b", "back-c", "back-d"];
    let mut sent = Vec::new();
    for user in users {
        // Until Redis counts more than was admitted: this caller holds a reservation.
        let t = token(user, "batch");
        let mut n = 0;
        while n < 10 || counted(&redis, user) == n {
            assert_eq!(get_as(&gates[0].url("/x"), &t).await.status, 200);
            n += 1;
            assert!(n < 100, "{user}: no reservation outstanding");
        }
        sent.push(n);
    }
    redis.cli(&["CONFIG", "RESETSTAT"]);
    // The reservations end; the replica's own returner (every quarter TTL) gives them back.
    clock.advance(1_000);
    let deadline = Instant::now() + Duration::from_secs(3);
    while users.iter().zip(&sent).any(|(user, n)| counted(&redis, user) != *n) {
        assert!(Instant::now() < deadline, "not every unspent unit went back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (The return script's first call is refused NOSCRIPT and made again: Redis answers one.)
    assert_eq!(redis.answered("evalsha"), 1, "four callers' reservations in one return call");
}

#[tokio::test]
async fn a_heavy_caller_makes_under_a_tenth_of_a_round_trip_per_request() {
    let redis = RedisServer::start();
    let clock = aligned_clock();
    let gates = Gate::replicas(1, &storage(&redis.url(), "sliding_log"), &tier(100_000, 50), &clock).await;
    let t = token("heavy", "batch");
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..600 {
        assert_eq!(get_as(&gates[0].url("/x"), &t).await.status, 200);
    }
    let trips = redis.calls("evalsha") + redis.calls("eval") + redis.calls("zrem");
    println!("600 requests of one caller: {trips} Redis round trips");
    assert!(trips <= 60, "{trips} round trips for 600 requests");
}

#[tokio::test]
async fn concurrency_slots_never_exceed_the_cap_across_two_replicas_and_free_again() {
    const CAP: usize = 4;
    let redis = RedisServer::start();
    let clock = aligned_clock();
    let gates = Gate::replicas(2, &storage(&redis.url(), "sliding_log"), &tier(100_000, CAP as i64), &clock).await;
    let auth = format!("Bearer {}", token("streams", "batch"));
    let client = client();
    let open =
        |g: &Gate| client.request(request("GET", &g.url("/stream?chunks=30&ms=100"), &[("authorization", &auth)], ""));
    let lease_key = "rate_limit:{user:streams}:concurrent";
    // Warm both replicas' pools, then hold as many as will be admitted, from both, at once.
    for round in 0..3 {
        let mut held = Vec::new();
        for i in 0..10 {
            let r = open(&gates[i % 2]).await.unwrap();
            if r.status() == 200 {
                held.push(r);
            }
        }
        let in_redis: usize = redis.cli(&["ZCARD", lease_key]).trim().parse().unwrap();
        assert!(held.len() <= CAP, "round {round}: {} in flight over a cap of {CAP}", held.len());
        assert!(in_redis <= CAP, "round {round}: Redis holds {in_redis} leases over a cap of {CAP}");
        assert!(!held.is_empty(), "round {round}: nothing admitted");
        drop(held);
        // Released slots park idle for quota_batch_ttl, then go back to Redis.
        tokio::time::sleep(Duration::from_millis(100)).await;
        clock.advance(1_000);
        end_reservations(&gates).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while redis.cli(&["ZCARD", lease_key]).trim() != "0" {
            assert!(Instant::now() < deadline, "round {round}: idle slots not returned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every slot is free again: one replica alone gets all of them.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let r = open(&gates[1]).await.unwrap();
        assert_eq!(r.status(), 200, "a freed slot");
        held.push(r);
    }
    assert_eq!(open(&gates[1]).await.unwrap().status(), 429);
    assert_eq!(open(&gates[0]).await.unwrap().status(), 429);
}

#[tokio::test]
async fn redis_cluster_keeps_limits_exact_with_reservations() {
    const LIMIT: u64 = 120;
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let storage = format!(
        "backend = \"redis\"\ncluster_nodes = [{}]\ntimeout = \"500ms\"\nlease_ttl = \"2s\"\nquota_batch = {BATCH}\nquota_batch_ttl = \"1s\"\non_error = \"deny\"\n",
        nodes.join(", ")
    );
    let clock = aligned_clock();
    let gates = Gate::replicas(2, &storage, &tier(LIMIT, -1), &clock).await;
    // The cluster client connects in the background (on_error = deny: nothing is admitted until it
    // has, so a count over the limit can only come from Redis).
    let deadline = Instant::now() + Duration::from_secs(10);
    while gates.iter().any(|g| g.server.proxy.limiter.degraded_now())
        || get_as(&gates[0].url("/x"), &token("probe", "batch")).await.status != 200
    {
        assert!(Instant::now() < deadline, "cluster not reachable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let users = ["u1", "u2", "u3", "u4"];
    let mut clients = Vec::new();
    let counts: Arc<Vec<AtomicU64>> = Arc::new(users.iter().map(|_| AtomicU64::new(0)).collect());
    for (u, user) in users.iter().enumerate() {
        for g in &gates {
            for _ in 0..8 {
                let (url, t, counts) = (g.url("/x"), token(user, "batch"), Arc::clone(&counts));
                clients.push(tokio::spawn(async move {
                    for _ in 0..20 {
                        match get_as(&url, &t).await.status.as_u16() {
                            200 => {
                                counts[u].fetch_add(1, Ordering::Relaxed);
                            }
                            429 => {}
                            s => panic!("unexpected status {s} on the cluster"),
                        }
                    }
                }));
            }
        }
    }
    for c in clients {
        c.await.unwrap();
    }
    clock.advance(1_000);
    end_reservations(&gates).await;
    for (u, user) in users.iter().enumerate() {
        let first = counts[u].load(Ordering::Relaxed);
        assert!(first <= LIMIT, "{user}: {first} over {LIMIT}");
        let rest = drain_sequentially(&gates, &token(user, "batch")).await;
        assert_eq!(first + rest, LIMIT, "{user}: the full limit once reservations returned on the cluster");
    }
}

#[tokio::test]
async fn a_redis_restart_with_reservations_outstanding_admits_no_more_than_the_limit() {
    const LIMIT: u64 = 100;
    let mut redis = RedisServer::start_persistent();
    let clock = aligned_clock();
    let gates = Gate::replicas(1, &storage(&redis.url(), "sliding_log"), &tier(LIMIT, -1), &clock).await;
    let t = token("restart", "batch");
    let mut admitted = 0;
    for _ in 0..40 {
        assert_eq!(get_as(&gates[0].url("/x"), &t).await.status, 200);
        admitted += 1;
    }
    // The 40th request may have spent the last unit of a reservation (its size follows the
    // caller's measured rate, so a slow machine sizes it differently): the next one takes another.
    for _ in 0..BATCH {
        if gates[0].server.proxy.limiter.reserved_units() > 0 {
            break;
        }
        assert_eq!(get_as(&gates[0].url("/x"), &t).await.status, 200);
        admitted += 1;
    }
    assert!(gates[0].server.proxy.limiter.reserved_units() > 0, "a reservation is outstanding");
    redis.kill();
    // Redis is down: what the replica holds is already counted there, so spending it is safe; the
    // rest is refused (on_error = deny).
    for _ in 0..30 {
        match get_as(&gates[0].url("/x"), &t).await.status.as_u16() {
            200 => admitted += 1,
            503 => {}
            s => panic!("unexpected status {s} while Redis is down"),
        }
    }
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match get_as(&gates[0].url("/x"), &t).await.status.as_u16() {
            200 => {
                admitted += 1;
                break;
            }
            503 => {}
            s => panic!("unexpected status {s} after the restart"),
        }
        assert!(Instant::now() < deadline, "not back on Redis 5 s after it restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clock.advance(1_000);
    end_reservations(&gates).await;
    admitted += drain_sequentially(&gates, &t).await;
    println!("Redis restart with a reservation outstanding: {admitted} admitted of {LIMIT}");
    assert!(admitted <= LIMIT, "{admitted} admitted over a limit of {LIMIT}");
    assert!(admitted >= LIMIT - BATCH, "at most one reservation lost: {admitted}");
}

/// `tiergate run` with batching on `redis`, in front of an echo upstream; (process, data-plane URL).
async fn run_binary(redis: &RedisServer, tag: &str) -> (Child, String) {
    let upstream = echo().await;
    let (port, admin) = (free_port(), free_port());
    let config =
        format!("{SERVER}{IDENTITY}\n[storage]\n{}\n{TIERS}{}", storage(&redis.url(), "sliding_log"), tier(10_000, -1))
            .replace(
                "127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0",
                &format!("127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}"),
            )
            .replace("http://127.0.0.1:1", &format!("http://{upstream}"));
    let path = scratch(tag).join("config.toml");
    std::fs::write(&path, config).unwrap();
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
            .args(["run", "--config"])
            .arg(&path)
            .env(SECRET_ENV, SECRET)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    while !matches!(client().request(request("GET", &ready, &[], "")).await, Ok(r) if r.status() == 200) {
        assert!(Instant::now() < deadline, "tiergate did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, format!("http://127.0.0.1:{port}"))
}

/// The count Redis holds in the sliding-log window `w` of `user`.
fn counted(redis: &RedisServer, user: &str) -> u64 {
    let v = redis.cli(&["GET", &format!("rate_limit:{{user:{user}}}:w")]);
    v.trim().split('|').next().unwrap().parse().unwrap_or(0)
}

/// Sends at least `n` requests one at a time, each admitted, until Redis counts more than were
/// admitted (a reservation is outstanding); returns how many were sent.
async fn admit_holding(redis: &RedisServer, base: &str, user: &str, n: u64) -> u64 {
    let t = token(user, "batch");
    let mut sent = 0;
    while sent < n || counted(redis, user) == sent {
        assert_eq!(get_as(&format!("{base}/x"), &t).await.status, 200);
        sent += 1;
        assert!(sent < n + 100, "no reservation outstanding after {sent} requests");
    }
    sent
}

#[tokio::test]
async fn a_sigkilled_replica_loses_only_the_units_it_held() {
    let redis = RedisServer::start();
    let (mut child, base) = run_binary(&redis, "batch-kill").await;
    let admitted = admit_holding(&redis, &base, "killed", 200).await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let lost = counted(&redis, "killed") - admitted;
    println!(
        "SIGKILL after {admitted} admissions: Redis counts {} ({lost} units lost with the replica)",
        admitted + lost
    );
    assert!(lost > 0 && lost <= BATCH, "what the replica held (1..={BATCH}) is lost, not {lost}");
}

#[tokio::test]
async fn sigterm_returns_every_reservation() {
    let redis = RedisServer::start();
    let (mut child, base) = run_binary(&redis, "batch-term").await;
    let admitted = admit_holding(&redis, &base, "termed", 200).await;
    let held = counted(&redis, "termed") - admitted;
    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tiergate did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "SIGTERM after {admitted} admissions: {held} units reserved before, Redis counts {} after",
        counted(&redis, "termed")
    );
    assert_eq!(counted(&redis, "termed"), admitted, "every unspent unit went back at drain");
}
