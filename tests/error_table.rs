//! Every status tiergate produces itself, and the `decision` label each is counted under. Its own
//! test binary: the metrics recorder is process-wide, so no other test's requests mix into the counts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

mod support;

use support::*;

fn count(scrape: &str, labels: &[&str]) -> f64 {
    metric(scrape, "tiergate_requests_total", labels)
}

#[tokio::test]
async fn each_status_is_counted_under_the_right_decision() {
    // Redis at a port nobody listens on: decisions come from on_error (local), /critical/ denies.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let storage = format!(
        "\n[storage]\nbackend = \"redis\"\nurl = \"redis://{closed}/0\"\ntimeout = \"100ms\"\non_error = \"local\"\n"
    );
    let routes = "[[routes]]\nprefix = \"/critical/\"\nclass = \"general\"\non_error = \"deny\"\n";
    let config = format!("{SERVER}{IDENTITY}{storage}{TIERS}{routes}")
        .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"200ms\"");
    let gate = Gate::start(&config).await;
    let before = get(&format!("{}/metrics", gate.admin), &[]).await.body;

    let anon = |path: &str| gate.url(path);
    assert_eq!(get(&anon("/../x"), &[]).await.status, 400);
    // Refused by hyper itself before tiergate sees a request (CONTRACT.md "Connections"), counted all
    // the same: a head over max_header_bytes, a malformed header line, conflicting Content-Length.
    let addr = gate.server.addr;
    let big = format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    for (head, status) in [
        (big.as_bytes(), "431"),
        (&b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"[..], "400"),
        (&b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..], "400"),
    ] {
        let (resp, closed) = raw(addr, head, std::time::Duration::from_secs(3)).await;
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{status}: {resp}");
        assert!(closed, "{status}: the connection is closed");
    }
    assert_eq!(get(&anon("/x"), &[("authorization", "Bearer not-a-token")]).await.status, 401);
    let big = request("POST", &anon("/upload"), &[("content-length", "2000000")], vec![0u8; 2_000_000]);
    assert_eq!(send(&client(), big).await.status, 413);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&anon("/api/x"), &[]).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429], "free: 3 api calls per minute (local fallback)");
    assert_eq!(get(&anon("/critical/x"), &[]).await.status, 503);
    assert_eq!(get(&anon("/slow?ms=2000"), &[]).await.status, 504);

    // 502: a second gate whose upstream is gone.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = Gate::start_with_upstream(&format!("{SERVER}{IDENTITY}{TIERS}"), &format!("http://{gone}"), gone).await;
    assert_eq!(get(&down.url("/x"), &[]).await.status, 502);

    let after = get(&format!("{}/metrics", gate.admin), &[]).await.body;
    let delta = |labels: &[&str]| count(&after, labels) - count(&before, labels);
    assert_eq!(
        delta(&["tier=\"none\"", "class=\"general\"", "decision=\"bad_request\""]),
        4.0,
        "400 (a path, a header line, two lengths) and 431: refused before identification"
    );
    assert_eq!(delta(&["tier=\"none\"", "decision=\"unauthorized\""]), 1.0, "401");
    assert_eq!(delta(&["tier=\"free\"", "decision=\"too_large\""]), 1.0, "413");
    assert_eq!(delta(&["tier=\"free\"", "class=\"api\"", "decision=\"limited\""]), 1.0, "429");
    assert_eq!(delta(&["tier=\"free\"", "decision=\"storage_unavailable\""]), 1.0, "503");
    // 504 and 502 come after admission: the limiter's verdict, plus an upstream error.
    assert_eq!(delta(&["tier=\"free\"", "class=\"general\"", "decision=\"allowed\""]), 2.0, "504 + 502");
    assert_eq!(delta(&["tier=\"free\"", "class=\"api\"", "decision=\"allowed\""]), 3.0, "the three admitted api calls");
    let upstream = |kind: &str| {
        metric(&after, "tiergate_upstream_errors_total", &[kind])
            - metric(&before, "tiergate_upstream_errors_total", &[kind])
    };
    assert_eq!(upstream("kind=\"timeout\""), 1.0);
    assert_eq!(upstream("kind=\"connect\""), 1.0);
    assert_eq!(delta(&[]), 13.0, "every request counted exactly once");
}
