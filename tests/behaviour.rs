//! Limit behaviour, one body of tests run against both stores (`memory::…` and `redis::…`, see
//! `on_both_stores!`): budgets per tier, all-or-nothing, windows sliding on virtual time (the
//! memory store's manual clock; for Redis an offset the Lua script adds to `TIME`), custom windows,
//! every algorithm, concurrency, upload caps, shadow routes, the quota endpoint, and the headers
//! that describe them. Redis-only behaviour (replicas, leases, failures, cluster) is in redis.rs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;

on_both_stores!(
    each_tier_gets_its_own_budget_and_each_user_their_own_counter,
    refusal_body_and_headers_follow_the_contract,
    a_refused_request_consumes_nothing_in_any_window,
    a_custom_window_slides,
    an_hour_window_reopens_after_an_hour_of_virtual_time,
    every_algorithm_reopens_exactly_when_retry_after_says,
    data_exports_have_their_own_daily_budget,
    unlimited_tiers_make_no_store_call_and_carry_no_rate_headers,
    zero_means_none_allowed,
    concurrency_slots_are_held_until_the_body_ends_or_the_client_leaves,
    uploads_over_the_cap_get_413_by_header_and_by_stream,
    shadow_routes_decide_but_never_refuse,
    the_quota_endpoint_reads_without_consuming,
);

async fn each_tier_gets_its_own_budget_and_each_user_their_own_counter(store: Store) {
    let gate = Gate::on(store, "").await;
    let (free, pro) = (token("alice", "free"), token("bob", "pro"));
    for i in 0..3 {
        let r = get_as(&gate.url("/api/items"), &free).await;
        assert_eq!(r.status, 200, "free call {i}");
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(&*(2 - i).to_string()));
        assert_eq!(r.header("x-ratelimit-window"), Some("minute"));
    }
    let refused = get_as(&gate.url("/api/items"), &free).await;
    assert_eq!(refused.status, 429);
    for i in 0..5 {
        assert_eq!(get_as(&gate.url("/api/items"), &pro).await.status, 200, "pro call {i}");
    }
    assert_eq!(get_as(&gate.url("/api/items"), &pro).await.status, 429);
    // Another free user is counted apart from alice.
    assert_eq!(get_as(&gate.url("/api/items"), &token("carol", "free")).await.status, 200);
    // A token with an unknown tier lands in default_tier (free): 3 calls.
    let odd = token("dave", "platinum");
    for _ in 0..3 {
        assert_eq!(get_as(&gate.url("/api/items"), &odd).await.status, 200);
    }
    assert_eq!(get_as(&gate.url("/api/items"), &odd).await.status, 429);
    // Anonymous callers are counted by address, in the anonymous tier (free).
    for _ in 0..3 {
        assert_eq!(get(&gate.url("/api/items"), &[]).await.status, 200);
    }
    let anon = get(&gate.url("/api/items"), &[]).await;
    assert_eq!(anon.status, 429);
    assert_eq!(anon.json()["tier"], "free");
}

async fn refusal_body_and_headers_follow_the_contract(store: Store) {
    let gate = Gate::on(store, "").await;
    let t = token("erin", "free");
    for _ in 0..3 {
        get_as(&gate.url("/api/x"), &t).await;
    }
    let r = get_as(&gate.url("/api/x"), &t).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let body = r.json();
    assert_eq!(body["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded");
    assert_eq!(body["status"], 429);
    assert_eq!(body["violated-policies"], serde_json::json!(["minute"]));
    assert_eq!(body["tier"], "free");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(body["retry_after"], retry);
    assert!((59..=61).contains(&retry), "retry-after {retry}");
    let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset >= gate.now() + retry - 1 && reset <= gate.now() + retry + 1, "reset {reset} vs retry {retry}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(
            "\"minute\";q=3;w=60, \"hour\";q=100;w=3600, \"day\";q=1000;w=86400, \"concurrent\";q=5;qu=\"concurrent-requests\""
        )
    );
    let rl = r.header("ratelimit").unwrap();
    assert!(rl.starts_with("\"minute\";r=0;t="), "{rl}");
    // Security headers are on refusals too.
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(r.header("strict-transport-security").is_some());
}

async fn a_refused_request_consumes_nothing_in_any_window(store: Store) {
    let gate = Gate::on(
        store,
        r#"
[tiers.tight]
requests_per_hour = 4
requests_per_day = 100
api_calls_per_minute = 2
"#,
    )
    .await;
    let t = token("frank", "tight");
    assert_eq!(get_as(&gate.url("/api/a"), &t).await.status, 200);
    assert_eq!(get_as(&gate.url("/api/a"), &t).await.status, 200);
    for _ in 0..10 {
        let r = get_as(&gate.url("/api/a"), &t).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.json()["violated-policies"], serde_json::json!(["minute"]));
    }
    // If the ten refused api calls had used hour budget, these two would be refused.
    let r = get_as(&gate.url("/dashboard"), &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-window"), Some("hour"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(get_as(&gate.url("/dashboard"), &t).await.status, 200);
    let r = get_as(&gate.url("/dashboard"), &t).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["violated-policies"], serde_json::json!(["hour"]));
}

async fn a_custom_window_slides(store: Store) {
    let gate = Gate::on(
        store,
        r#"
[tiers.burst]
requests_per_hour = -1
[[tiers.burst.limits]]
name = "burst"
requests = 2
window = "2s"
"#,
    )
    .await;
    let t = token("gina", "burst");
    let first = get_as(&gate.url("/x"), &t).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-window"), Some("burst"));
    assert_eq!(first.header("ratelimit-policy"), Some("\"burst\";q=2;w=2"));
    assert_eq!(get_as(&gate.url("/x"), &t).await.status, 200);
    let refused = get_as(&gate.url("/x"), &t).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["violated-policies"], serde_json::json!(["burst"]));
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "retry-after {retry}");
    // Virtual time: just short of the window the first request is still in it; then it leaves.
    gate.advance(Duration::from_millis(1_900));
    assert_eq!(get_as(&gate.url("/x"), &t).await.status, 429, "still inside the 2 s window");
    gate.advance(Duration::from_millis(200));
    assert_eq!(get_as(&gate.url("/x"), &t).await.status, 200, "the window slid");
}

async fn data_exports_have_their_own_daily_budget(store: Store) {
    let gate = Gate::on(store, "").await;
    let t = token("hank", "free");
    assert_eq!(get_as(&gate.url("/api/v1/export/csv"), &t).await.status, 200);
    let r = get_as(&gate.url("/api/v1/export/csv"), &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-window"), Some("export_day"));
    let r = get_as(&gate.url("/api/v1/export/csv"), &t).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["violated-policies"], serde_json::json!(["export_day"]));
    // The export class does not count against api_calls_per_minute.
    assert_eq!(get_as(&gate.url("/api/other"), &t).await.status, 200);
}

async fn unlimited_tiers_make_no_store_call_and_carry_no_rate_headers(store: Store) {
    let gate = Gate::on(store, "").await;
    let t = token("ivy", "enterprise");
    for _ in 0..20 {
        let r = get_as(&gate.url("/api/x"), &t).await;
        assert_eq!(r.status, 200);
        assert!(r.header("x-ratelimit-limit").is_none());
        assert!(r.header("ratelimit-policy").is_none());
    }
    assert_eq!(gate.store_entries(), 0, "an unlimited caller must not create limiter state");
    get_as(&gate.url("/api/x"), &token("jack", "free")).await;
    assert!(gate.store_entries() >= 1, "a limited caller does");
}

async fn zero_means_none_allowed(store: Store) {
    let gate = Gate::on(
        store,
        r#"
[tiers.blocked]
requests_per_hour = 0
"#,
    )
    .await;
    let r = get_as(&gate.url("/x"), &token("kim", "blocked")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["violated-policies"], serde_json::json!(["hour"]));
}

async fn concurrency_slots_are_held_until_the_body_ends_or_the_client_leaves(store: Store) {
    let gate = Gate::on(
        store,
        r#"
[tiers.narrow]
concurrent_requests = 2
"#,
    )
    .await;
    let auth = format!("Bearer {}", token("lee", "narrow"));
    let client = client();
    let open = |path: &str| client.request(request("GET", &gate.url(path), &[("authorization", &auth)], Bytes::new()));
    // Two slow streams in flight (headers received, bodies still coming).
    let a = open("/stream?chunks=4&ms=300").await.unwrap();
    let b = open("/stream?chunks=40&ms=300").await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let third = get(&gate.url("/x"), &[("authorization", &auth)]).await;
    assert_eq!(third.status, 429);
    assert_eq!(third.json()["violated-policies"], serde_json::json!(["concurrent"]));
    assert_eq!(third.header("x-ratelimit-window"), Some("concurrent"));
    assert_eq!(third.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(third.header("retry-after"), Some("1"));

    // Reading `a` to its end returns its slot.
    let body = a.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 4);
    let r = get(&gate.url("/x"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "slot not returned after the body ended");

    // Hold one again, then walk away from `b` mid-body: its slot comes back too.
    let c = open("/stream?chunks=40&ms=300").await.unwrap();
    assert_eq!(get(&gate.url("/x"), &[("authorization", &auth)]).await.status, 429);
    drop(b);
    let start = std::time::Instant::now();
    loop {
        if get(&gate.url("/x"), &[("authorization", &auth)]).await.status == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "slot not returned after the client went away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
}

async fn uploads_over_the_cap_get_413_by_header_and_by_stream(store: Store) {
    let gate = Gate::on(store, "").await;
    let t = token("mia", "free"); // 1 MiB cap
    let auth = format!("Bearer {t}");

    // Declared too large: refused from the headers alone, without the body ever being sent.
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
        2 * 1_048_576
    );
    let (resp, _) = raw(gate.server.addr, head.as_bytes(), Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"limit_bytes\":1048576"), "{resp}");
    assert!(resp.contains("\"tier\":\"free\""), "{resp}");
    // That 413 consumed no rate budget (checked before limits): this GET is the first counted.
    let r = get_as(&gate.url("/x"), &t).await;
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));

    // Within the cap: forwarded whole.
    let ok = send(&client(), request("POST", &gate.url("/upload"), &[("authorization", &auth)], vec![b'a'; 1_048_576]))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["body_bytes"], 1_048_576);

    // Chunked, growing past the cap: cut off and answered 413.
    let chunks = (0..24).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'b'; 65_536]))));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = http::Request::builder()
        .method("POST")
        .uri(gate.url("/upload"))
        .header("authorization", &auth)
        .body(body)
        .unwrap();
    let streaming: hyper_util::client::legacy::Client<_, StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = streaming.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers().get("content-type").unwrap(), "application/problem+json");
    // The streamed upload was admitted (and partly forwarded) before it grew too large: it counts.
    let r = get_as(&gate.url("/x"), &t).await;
    assert_eq!(r.header("x-ratelimit-remaining"), Some("96"));
}

async fn shadow_routes_decide_but_never_refuse(store: Store) {
    let tier = format!("shadowed_{store:?}").to_lowercase();
    let gate = Gate::on(
        store,
        &r#"
[tiers.shadowed]
requests_per_hour = 1

[[routes]]
prefix = "/beta/"
class = "general"
shadow = true
"#
        .replace("shadowed", &tier),
    )
    .await;
    // Routes match in order: /beta/ comes after the defaults, which do not match it.
    let t = token("ned", &tier);
    let before = get(&format!("{}/metrics", gate.admin), &[]).await.body;
    assert_eq!(get_as(&gate.url("/beta/x"), &t).await.status, 200);
    for _ in 0..3 {
        let r = get_as(&gate.url("/beta/x"), &t).await;
        assert_eq!(r.status, 200, "shadow routes never refuse");
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    }
    let after = get(&format!("{}/metrics", gate.admin), &[]).await.body;
    let label = format!("tier=\"{tier}\"");
    let series = [label.as_str(), "decision=\"shadow_limited\""];
    assert_eq!(
        metric(&after, "tiergate_requests_total", &series) - metric(&before, "tiergate_requests_total", &series),
        3.0
    );
    // A non-shadow route is refused for the same caller.
    assert_eq!(get_as(&gate.url("/other"), &t).await.status, 429);
}

async fn an_hour_window_reopens_after_an_hour_of_virtual_time(store: Store) {
    let gate = Gate::on(store, "\n[tiers.hourly]\nrequests_per_hour = 2\n").await;
    let t = token("hourly", "hourly");
    assert_eq!(get_as(&gate.url("/x"), &t).await.status, 200);
    gate.advance(Duration::from_secs(1_800));
    assert_eq!(get_as(&gate.url("/x"), &t).await.status, 200);
    let refused = get_as(&gate.url("/x"), &t).await;
    assert_eq!(refused.status, 429);
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    // 30 min, plus at most one sliding-log bucket (an hour has 60 of them, a minute each).
    assert!((1_800..=1_861).contains(&retry), "the first request leaves the hour in about 30 min: {retry}");
    gate.advance(Duration::from_secs(retry - 1));
    assert_eq!(get_as(&gate.url("/x"), &t).await.status, 429, "a second before it leaves");
    gate.advance(Duration::from_secs(1));
    let r = get_as(&gate.url("/x"), &t).await;
    assert_eq!(r.status, 200, "the first request has left the hour");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
}

async fn every_algorithm_reopens_exactly_when_retry_after_says(store: Store) {
    let three = "\n[tiers.three]\nrequests_per_hour = -1\nrequests_per_day = -1\n[[tiers.three.limits]]\nname = \"three\"\nrequests = 3\nwindow = \"1m\"\n";
    for algorithm in ["sliding_log", "gcra", "fixed_window"] {
        let gate = Gate::on_with(store, &format!("algorithm = \"{algorithm}\""), three).await;
        let t = token(&format!("alg-{algorithm}"), "three");
        for i in 0..3 {
            assert_eq!(get_as(&gate.url("/x"), &t).await.status, 200, "{algorithm}: request {i}");
        }
        for round in 0..3 {
            let refused = get_as(&gate.url("/x"), &t).await;
            assert_eq!(refused.status, 429, "{algorithm}: round {round}");
            let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=61).contains(&retry), "{algorithm}: retry-after {retry}");
            gate.advance(Duration::from_secs(retry));
            let r = get_as(&gate.url("/x"), &t).await;
            assert_eq!(r.status, 200, "{algorithm}: admitted once retry-after ({retry} s) has passed");
            // Fill the window again: never more than its limit.
            let mut admitted = 1;
            while get_as(&gate.url("/x"), &t).await.status == 200 {
                admitted += 1;
                assert!(admitted <= 3, "{algorithm}: more than the limit admitted in one window");
            }
        }
    }
}

async fn the_quota_endpoint_reads_without_consuming(store: Store) {
    let gate = Gate::on(store, "").await;
    let t = token("quota", "free");
    get_as(&gate.url("/api/x"), &t).await;
    for _ in 0..3 {
        let r = get_as(&gate.url("/_tiergate/quota"), &t).await;
        assert_eq!(r.status, 200);
        let q = r.json();
        assert_eq!(q["tier"], "free");
        let windows = q["windows"].as_array().unwrap();
        let by_name =
            |n: &str| windows.iter().find(|w| w["name"] == n).unwrap_or_else(|| panic!("no {n} in {q}")).clone();
        assert_eq!(by_name("minute")["limit"], 3);
        assert_eq!(by_name("minute")["remaining"], 2, "{q}");
        assert_eq!(by_name("hour")["remaining"], 99);
        assert_eq!(by_name("export_day")["remaining"], 2);
        assert!(by_name("minute")["reset"].as_u64().unwrap() >= gate.now());
        assert_eq!(q["concurrent"]["limit"], 5);
    }
    // The quota reads consumed nothing.
    assert_eq!(get_as(&gate.url("/api/x"), &t).await.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(get(&gate.url("/_tiergate/quota"), &[("authorization", "Bearer bad")]).await.status, 401);
    // A minute of virtual time later the minute window is whole again.
    gate.advance(Duration::from_secs(61));
    let q = get_as(&gate.url("/_tiergate/quota"), &t).await.json();
    let minute = q["windows"].as_array().unwrap().iter().find(|w| w["name"] == "minute").unwrap().clone();
    assert_eq!(minute["remaining"], 3, "{q}");
}
