//! `tiergate_storage_calls_total{op}` counts every round trip to the Redis store, one per call, and
//! agrees with what Redis itself counted. Its own test binary: the metrics recorder is process-wide.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::time::{Duration, Instant};

use support::*;

async fn calls(gate: &Gate, op: &str) -> f64 {
    let scrape = get(&format!("{}/metrics", gate.admin), &[]).await.body;
    metric(&scrape, "tiergate_storage_calls_total", &[&format!("op=\"{op}\"")])
}

#[tokio::test]
async fn every_round_trip_is_counted_by_op() {
    let gate = Gate::on_full(Store::Redis, &format!("admin_token_env = \"{ADMIN_TOKEN_ENV}\"\n"), "", "").await;
    let redis = gate.redis.as_ref().unwrap();
    let t = token("counted", "pro");
    get_as(&gate.url("/api/x"), &t).await; // loads the script
    let lease_set = "rate_limit:{user:counted}:concurrent";
    let settled = |redis: &support::redis::RedisServer| redis.cli(&["ZCARD", lease_set]).trim() == "0";
    let deadline = Instant::now() + Duration::from_secs(3);
    while !settled(redis) {
        assert!(Instant::now() < deadline, "the first release did not reach Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let before = calls(&gate, "decide").await;
    let released_before = calls(&gate, "release").await;
    for _ in 0..4 {
        assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 200);
    }
    assert_eq!(calls(&gate, "decide").await - before, 4.0);
    assert_eq!(redis.calls("evalsha"), 4, "Redis saw the same four decisions");

    // Each response released its concurrency slot: one ZREM round trip each (batched per key).
    let deadline = Instant::now() + Duration::from_secs(3);
    while !settled(redis) {
        assert!(Instant::now() < deadline, "releases did not reach Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let released = calls(&gate, "release").await - released_before;
    assert!(released >= 1.0, "release round trips: {released}");
    assert_eq!(released, redis.calls("zrem") as f64, "one per ZREM Redis saw");

    let quota = calls(&gate, "quota").await;
    assert_eq!(get_as(&gate.url("/_tiergate/quota"), &t).await.status, 200);
    assert_eq!(calls(&gate, "quota").await - quota, 1.0);

    let reset = calls(&gate, "reset").await;
    let r = send(
        &client(),
        request(
            "DELETE",
            &format!("{}/limits/user:counted", gate.admin),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(calls(&gate, "reset").await - reset, 1.0);
    // The reset's read-back is a peek: one more quota round trip.
    assert_eq!(calls(&gate, "quota").await - quota, 2.0);

    drop(gate);

    // Quota batching: a reserving decision counts as `reserve`, a batched give-back as `return`,
    // and the two add up to the EVALSHAs Redis saw (same test: the recorder is process-wide).
    let gate = Gate::on_with(Store::Redis, "quota_batch = 20\nquota_batch_ttl = \"1s\"", "").await;
    let redis = gate.redis.as_ref().unwrap();
    let t = token("batched", "free");
    get_as(&gate.url("/x"), &token("warm", "free")).await; // loads the script
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let (reserve, returned) = (calls(&gate, "reserve").await, calls(&gate, "return").await);
    let renewed = calls(&gate, "renew").await;
    let mut sent = 0;
    // At least 30, and until a reservation is outstanding (so there is something to return).
    while sent < 30 || gate.server.proxy.limiter.reserved_units() == 0 {
        assert_eq!(get_as(&gate.url("/x"), &t).await.status, 200);
        sent += 1;
        assert!(sent < 90, "no reservation outstanding after {sent} requests");
    }
    gate.advance(Duration::from_secs(1));
    let batching = gate.server.proxy.snapshot.load().quota_batch;
    gate.server.proxy.limiter.return_expired(batching, false).await;
    let reserve = calls(&gate, "reserve").await - reserve;
    let returned = calls(&gate, "return").await - returned;
    // Slots parked in the pool are renewed like slots in flight (the same script, by EVALSHA).
    let renewed = calls(&gate, "renew").await - renewed;
    assert!(reserve < f64::from(sent) / 2.0, "{sent} requests, {reserve} reserving round trips");
    assert_eq!(returned, 1.0, "one return call for the units left");
    // The first return loads its script: redis-rs's EVALSHA is refused (NOSCRIPT), it loads the
    // script and calls again. One call, as tiergate counts them; Redis counts the refused one too.
    assert_eq!(reserve + returned + renewed, redis.answered("evalsha") as f64, "one per EVALSHA Redis answered");
}
