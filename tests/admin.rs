//! The admin port: /metrics content (names, help, buckets, labels), /healthz, /readyz and draining.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn metrics_describe_every_request() {
    let gate = Gate::default_with(
        r#"
[tiers.metered]
api_calls_per_minute = 1
"#,
    )
    .await;
    let t = token("m", "metered");
    get_as(&gate.url("/api/x"), &t).await; // allowed
    get_as(&gate.url("/api/x"), &t).await; // limited
    get(&gate.url("/api/x"), &[("authorization", "Bearer bad")]).await; // unauthorized
    get(&gate.url("/health"), &[]).await; // exempt

    let r = get(&format!("{}/metrics", gate.admin), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let m = r.body;
    let count = |frags: &[&str]| metric(&m, "tiergate_requests_total", frags);
    assert_eq!(count(&["tier=\"metered\"", "class=\"api\"", "decision=\"allowed\""]), 1.0);
    assert_eq!(count(&["tier=\"metered\"", "class=\"api\"", "decision=\"limited\""]), 1.0);
    assert!(count(&["tier=\"none\"", "decision=\"unauthorized\""]) >= 1.0);
    assert!(count(&["tier=\"none\"", "class=\"exempt\"", "decision=\"exempt\""]) >= 1.0);
    for name in [
        "tiergate_requests_total",
        "tiergate_request_duration_seconds",
        "tiergate_upstream_duration_seconds",
        "tiergate_storage_duration_seconds",
        "tiergate_storage_fallback",
        "tiergate_inflight_requests",
        "tiergate_build_info",
    ] {
        assert!(m.contains(&format!("# HELP {name} ")), "no help for {name}\n{m}");
        assert!(m.contains(&format!("# TYPE {name} ")), "no type for {name}");
    }
    assert!(m.contains("# TYPE tiergate_request_duration_seconds histogram"), "{m}");
    assert!(m.contains("tiergate_request_duration_seconds_bucket{class=\"api\",le=\"0.005\"}"), "{m}");
    assert!(m.contains("tiergate_upstream_duration_seconds_bucket{le=\"0.1\"}"));
    assert!(metric(&m, "tiergate_build_info", &[&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))]) == 1.0);
    assert_eq!(metric(&m, "tiergate_storage_fallback", &[]), 0.0);
    assert!(!m.contains("user_id") && !m.contains("\"m\""), "labels never carry user ids");
}

#[tokio::test]
async fn health_and_readiness_and_drain() {
    let gate = Gate::default_with("").await;
    assert_eq!(get(&format!("{}/healthz", gate.admin), &[]).await.status, 200);
    assert_eq!(get(&format!("{}/readyz", gate.admin), &[]).await.status, 200);
    assert_eq!(get(&format!("{}/nope", gate.admin), &[]).await.status, 404);
    // The admin port is never proxied.
    assert!(get(&format!("{}/api/x", gate.admin), &[]).await.body.contains("not found"));

    // A request in flight when the drain starts still completes.
    let client = client();
    let slow = client.request(request("GET", &gate.url("/slow?ms=600"), &[], bytes::Bytes::new()));
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let admin = gate.admin.clone();
    let addr = gate.server.addr;
    let drain = tokio::spawn(async move {
        let drained = gate.server.drain(Duration::from_secs(5)).await;
        (drained, gate)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&format!("{admin}/readyz"), &[]).await.status, 503, "readyz must fail while draining");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the data listener must be closed");
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let (drained, _gate) = drain.await.unwrap();
    assert!(drained);
}

#[tokio::test]
async fn a_drain_waits_for_open_websocket_tunnels() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gate = Gate::default_with("").await;
    let mut s = tokio::net::TcpStream::connect(gate.server.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));

    let gate = std::sync::Arc::new(gate);
    let draining = std::sync::Arc::clone(&gate);
    let drain = tokio::spawn(async move { draining.server.drain(Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!drain.is_finished(), "the drain must wait for the open tunnel");
    // The tunnel still carries bytes while draining.
    s.write_all(b"still here").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"still here");
    // The client hangs up: the drain completes.
    drop(s);
    let drained = tokio::time::timeout(Duration::from_secs(3), drain).await.expect("drain finished").unwrap();
    assert!(drained);
}
