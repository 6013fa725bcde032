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
}
