//! Faults on loopback, with real peers: Redis frozen by `CLIENT PAUSE` (a slow store, not a dead
//! one), and upstreams that reset, stall, or flood headers. Each test asserts what tiergate must do
//! and prints the figures docs/RELIABILITY.md records (`cargo test --test faults -- --nocapture`).
//! The multi-host faults (latency, loss, a partition, a cluster failover) need network namespaces:
//! they are in `tests/netns.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const FIVE: &str = "\n[tiers.five]\nrequests_per_hour = -1\nrequests_per_day = -1\n[[tiers.five.limits]]\nname = \"five\"\nrequests = 5\nwindow = \"1h\"\n";

#[tokio::test]
async fn a_paused_redis_costs_at_most_the_timeout_and_decisions_return_when_it_resumes() {
    let gate = Gate::on(Store::Redis, FIVE).await;
    let redis = gate.redis.as_ref().unwrap();
    let t = token("paused", "five");
    for _ in 0..2 {
        assert_eq!(get_as(&gate.url("/x"), &t).await.status, 200);
    }
    redis.cli(&["CLIENT", "PAUSE", "2000", "ALL"]);
    let paused_at = Instant::now();
    let (mut statuses, mut slowest, mut opened) = (Vec::new(), Duration::ZERO, false);
    while paused_at.elapsed() < Duration::from_millis(1_700) {
        let at = Instant::now();
        statuses.push(get_as(&gate.url("/x"), &t).await.status.as_u16());
        slowest = slowest.max(at.elapsed());
        opened |= gate.server.proxy.limiter.degraded_now();
    }
    assert!(opened, "the breaker opened while Redis was paused (so later requests skipped the wait)");
    // on_error = local: nothing fails because of tiergate; a request waits at most the 500 ms timeout.
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(slowest < Duration::from_millis(1_200), "a request waited {slowest:?} on a paused Redis");
    // Redis answers again: decisions are back on it within 3 s.
    let resumed = Instant::now();
    while Instant::now() < paused_at + Duration::from_millis(2_000) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = loop {
        get_as(&gate.url("/x"), &t).await;
        if !gate.server.proxy.limiter.degraded_now() {
            break resumed.elapsed();
        }
        assert!(resumed.elapsed() < Duration::from_secs(5), "not back on Redis 3 s after the pause ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Redis itself never counted more than the limit: the window holds at most 5.
    let q = get_as(&gate.url("/_tiergate/quota"), &t).await.json();
    let five = q["windows"].as_array().unwrap().iter().find(|w| w["name"] == "five").unwrap().clone();
    assert_eq!(five["remaining"], 0, "the window is full, and never over: {q}");
    assert!(back < Duration::from_secs(3), "back on Redis after {back:?}");
    println!(
        "fault CLIENT PAUSE 2 s: {} requests during the pause, none failed; slowest {slowest:?}; back on Redis {back:?} after it ended",
        statuses.len()
    );
}

/// An upstream that does `act` with each connection.
async fn upstream<F, Fut>(act: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(act(stream));
        }
    });
    addr
}

async fn read_head(stream: &mut tokio::net::TcpStream) {
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn upstream_errors(gate: &Gate, kind: &str) -> f64 {
    let scrape = get(&format!("{}/metrics", gate.admin), &[]).await.body;
    metric(&scrape, "tiergate_upstream_errors_total", &[&format!("kind=\"{kind}\"")])
}

#[tokio::test]
async fn misbehaving_upstreams_are_502_or_504_and_tiergate_stays_healthy() {
    let config =
        format!("{SERVER}{IDENTITY}{TIERS}").replace("upstream_timeout = \"2s\"", "upstream_timeout = \"500ms\"");
    let cases: Vec<(&str, SocketAddr, u16, &str)> = vec![
        (
            "resets the connection",
            upstream(|mut s| async move {
                read_head(&mut s).await;
                let _ = s.set_zero_linger();
                drop(s);
            })
            .await,
            502,
            "protocol",
        ),
        (
            "stalls after the request",
            upstream(|mut s| async move {
                read_head(&mut s).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(s);
            })
            .await,
            504,
            "timeout",
        ),
        (
            "floods response headers",
            upstream(|mut s| async move {
                read_head(&mut s).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
                for i in 0..100_000 {
                    if s.write_all(format!("X-Flood-{i}: {}\r\n", "y".repeat(64)).as_bytes()).await.is_err() {
                        break;
                    }
                }
            })
            .await,
            502,
            "protocol",
        ),
    ];
    for (what, addr, want, kind) in cases {
        let gate = Gate::start_with_upstream(&config, &format!("http://{addr}"), addr).await;
        let before = upstream_errors(&gate, kind).await;
        let at = Instant::now();
        let r = get(&gate.url("/x"), &[]).await;
        let took = at.elapsed();
        assert_eq!(r.status, want, "an upstream that {what}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(took < Duration::from_secs(2), "an upstream that {what}: answered after {took:?}");
        assert!(upstream_errors(&gate, kind).await - before >= 1.0, "counted as kind={kind}");
        assert_eq!(get(&format!("{}/healthz", gate.admin), &[]).await.status, 200, "still healthy");
        println!("fault upstream {what}: {want} in {took:?}, counted kind={kind}");
    }
}

/// A Redis Cluster master dies (no replica to take over; the survivors keep serving their slots):
/// only callers whose keys live on it lose Redis, everybody else is still decided by Redis. The
/// breakers follow hash-slot groups; one breaker for the whole cluster used to send every caller to
/// the fallback (found by the multi-host failover test, tests/netns.rs).
#[tokio::test]
async fn a_dead_cluster_master_sends_only_its_own_callers_to_the_fallback() {
    let mut cluster = support::redis::RedisCluster::start();
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let storage = format!(
        "backend = \"redis\"\ncluster_nodes = [{}]\ntimeout = \"200ms\"\non_error = \"deny\"\n",
        nodes.join(", ")
    );
    let upstream = echo().await;
    let config = format!("{SERVER}{IDENTITY}\n[storage]\n{storage}\n{TIERS}");
    let gate = Gate::start_with_upstream(&config, &format!("http://{upstream}"), upstream).await;
    let users: Vec<String> = (0..30).map(|i| format!("shard-{i}")).collect();
    // Every user once (deny: 503 until the cluster client has connected), then where its keys live.
    let deadline = Instant::now() + Duration::from_secs(10);
    for u in &users {
        while get_as(&gate.url("/x"), &token(u, "pro")).await.status != 200 {
            assert!(Instant::now() < deadline, "cluster not reachable");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let on_first: Vec<bool> =
        users.iter().map(|u| !cluster.nodes[0].keys(&format!("rate_limit:{{user:{u}}}:*")).is_empty()).collect();
    assert!(on_first.iter().any(|d| *d) && on_first.iter().any(|d| !*d), "users on both sides: {on_first:?}");
    for n in &cluster.nodes {
        n.cli(&["CONFIG", "SET", "cluster-require-full-coverage", "no"]);
    }
    cluster.nodes[0].kill();
    let (mut healthy, mut healthy_ok, mut dead, mut dead_refused) = (0, 0, 0, 0);
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        for (u, is_dead) in users.iter().zip(&on_first) {
            let s = get_as(&gate.url("/x"), &token(u, "pro")).await.status.as_u16();
            if *is_dead {
                dead += 1;
                dead_refused += u32::from(s == 503);
            } else {
                healthy += 1;
                healthy_ok += u32::from(s == 200);
            }
        }
    }
    println!(
        "fault cluster master killed: healthy shards {healthy_ok} of {healthy} decided by Redis; dead shard {dead_refused} of {dead} refused (on_error = deny)"
    );
    assert_eq!(dead_refused, dead, "the dead master's callers follow on_error");
    // A slot group on the boundary of the dead master's range may hold a healthy caller or two.
    assert!(f64::from(healthy_ok) >= 0.9 * f64::from(healthy), "healthy shards: {healthy_ok} of {healthy} on Redis");
}
