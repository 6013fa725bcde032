//! The operator's view on the admin port: who is refused most (`/limits/top`), one identity's
//! windows (`GET /limits/KEY`) and their reset (`DELETE /limits/KEY`, admin token only), on both
//! stores and on Redis Cluster; and the same paths on the data port never reaching the admin logic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

mod support;

use serde_json::Value;
use support::redis::RedisCluster;
use support::*;

on_both_stores!(
    show_reads_without_consuming_and_reset_clears_every_window,
    the_admin_token_decides_who_may_reset,
    the_most_refused_identities_rank_first,
);

async fn admin(gate: &Gate, method: &str, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send(&client(), request(method, &format!("{}{path}", gate.admin), &headers, "")).await
}

fn window(body: &Value, name: &str) -> Value {
    body["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .clone()
}

async fn show_reads_without_consuming_and_reset_clears_every_window(store: Store) {
    let gate = Gate::on_token(store).await;
    let t = token("customer-x", "free");
    for _ in 0..3 {
        assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 200);
    }
    assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 429, "customer X is blocked");
    // "Why is customer X blocked?"
    for _ in 0..2 {
        let r = admin(&gate, "GET", "/limits/user:customer-x", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        assert_eq!((body["key"].as_str(), body["tier"].as_str()), (Some("user:customer-x"), Some("free")));
        assert_eq!(window(&body, "minute")["remaining"], 0, "{body}");
        assert_eq!(window(&body, "hour")["remaining"], 97);
        assert_eq!(body["concurrent"]["limit"], 5);
    }
    // Percent-encoded keys work the same; a tier can be named; an unknown identity is 404 without one.
    assert_eq!(admin(&gate, "GET", "/limits/user%3Acustomer-x", None).await.status, 200);
    let r = admin(&gate, "GET", "/limits/user:nobody?tier=pro", None).await;
    assert_eq!((r.status.as_u16(), window(&r.json(), "minute")["remaining"].as_u64()), (200, Some(5)));
    assert_eq!(admin(&gate, "GET", "/limits/user:nobody", None).await.status, 404);
    assert_eq!(admin(&gate, "GET", "/limits/user:nobody?tier=gold", None).await.status, 400);
    assert_eq!(admin(&gate, "GET", "/limits/who-knows", None).await.status, 400);

    // The business says yes: reset.
    let r = admin(&gate, "DELETE", "/limits/user:customer-x", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["reset"], true);
    assert_eq!(window(&body, "minute")["remaining"], 3, "{body}");
    assert_eq!(window(&body, "hour")["remaining"], 100);
    let r = get_as(&gate.url("/api/x"), &t).await;
    assert_eq!(r.status, 200, "unblocked at once (the negative cache forgot the refusal too)");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
}

async fn the_admin_token_decides_who_may_reset(store: Store) {
    let gate = Gate::on_token(store).await;
    get_as(&gate.url("/api/x"), &token("guarded", "free")).await;
    let path = "/limits/user:guarded";
    for token in [None, Some("wrong"), Some("admin-token-for-test")] {
        let r = admin(&gate, "DELETE", path, token).await;
        assert_eq!(r.status, 401, "{token:?}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    assert_eq!(admin(&gate, "DELETE", path, Some(ADMIN_TOKEN)).await.status, 200);
    // Without a configured token the write endpoint does not exist.
    let read_only = Gate::on(store, "").await;
    get_as(&read_only.url("/api/x"), &token("guarded", "free")).await;
    assert_eq!(admin(&read_only, "DELETE", path, Some(ADMIN_TOKEN)).await.status, 404);
    assert_eq!(admin(&read_only, "GET", path, None).await.status, 200, "reading needs no token");
    // The same paths on the data port are the upstream's, never the admin logic: the admin token
    // there is just a bearer token that does not verify, and without one the request is forwarded.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = send(&client(), request("DELETE", &gate.url(path), &[("authorization", &auth)], "")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("www-authenticate").is_some_and(|v| v.contains("invalid_token")));
    let r = send(&client(), request("DELETE", &gate.url(path), &[], "")).await;
    assert_eq!(r.json()["path"], path, "forwarded to the upstream: {}", r.body);
    let r = get(&gate.url("/limits/top"), &[]).await;
    assert_eq!(r.json()["path"], "/limits/top");
}

async fn the_most_refused_identities_rank_first(store: Store) {
    let gate = Gate::on(store, "").await;
    // Skewed: heavy is refused 12 times, medium 6, light 1; a fourth is never refused.
    for (user, extra) in [("heavy", 12), ("medium", 6), ("light", 1), ("calm", 0)] {
        let t = token(user, "free");
        for _ in 0..(3 + extra) {
            get_as(&gate.url("/api/x"), &t).await;
        }
    }
    for _ in 0..2 {
        get(&gate.url("/api/x"), &[]).await;
    }
    let r = admin(&gate, "GET", "/limits/top?n=3", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert!(body["since"].as_u64().unwrap() <= now());
    let top = body["top"].as_array().unwrap();
    let keys: Vec<&str> = top.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["user:heavy", "user:medium", "user:light"], "{body}");
    assert_eq!((top[0]["refused"].as_u64(), top[0]["tier"].as_str()), (Some(12), Some("free")));
    assert_eq!(top[1]["refused"], 6);
    assert_eq!(admin(&gate, "GET", "/limits/top?n=0", None).await.status, 400);
    assert_eq!(admin(&gate, "GET", "/limits/top?n=1001", None).await.status, 400);
    assert_eq!(admin(&gate, "GET", "/limits/top", None).await.json()["top"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn reset_works_on_redis_cluster() {
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let storage =
        format!("\n[storage]\nbackend = \"redis\"\ncluster_nodes = [{}]\ntimeout = \"500ms\"\n", nodes.join(", "));
    let config = format!("{SERVER}admin_token_env = \"{ADMIN_TOKEN_ENV}\"\n{IDENTITY}{storage}{TIERS}");
    let gate = Gate::start(&config).await;
    // Wait for the cluster connection (until then decisions come from on_error = local).
    let probe = token("cluster-probe", "free");
    let start = std::time::Instant::now();
    while cluster.nodes.iter().all(|n| n.keys("rate_limit:*").is_empty()) {
        get_as(&gate.url("/x"), &probe).await;
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "never connected to the cluster");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    while gate.server.proxy.limiter.degraded_now() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "the breaker never closed");
        get_as(&gate.url("/x"), &probe).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for user in ["c1", "c2", "c3", "c4"] {
        let t = token(user, "free");
        for _ in 0..4 {
            get_as(&gate.url("/api/x"), &t).await;
        }
        assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 429);
        let r = admin(&gate, "DELETE", &format!("/limits/user:{user}"), Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, 200, "{user}: {}", r.body);
        assert_eq!(window(&r.json(), "minute")["remaining"], 3);
        assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 200, "{user}");
    }
    // Each user's counters live on exactly one master (one hash tag), and the reset found them there:
    // the request after it counted the minute window again.
    for user in ["c1", "c2", "c3", "c4"] {
        let key = format!("rate_limit:{{user:{user}}}:minute");
        let holders = cluster.nodes.iter().filter(|n| n.keys(&key).len() == 1).count();
        assert_eq!(holders, 1, "{key} on exactly one master");
    }
}
