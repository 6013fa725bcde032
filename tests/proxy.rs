//! Forwarding and connection behaviour: headers in both directions, upstream failures, h2c, upgrades,
//! request framing, header limits and timeouts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn forwarded_request_carries_the_right_headers() {
    let gate = Gate::default_with("").await;
    let t = token("olga", "pro");
    let auth = format!("Bearer {t}");
    let r = get(
        &gate.url("/api/data?x=1"),
        &[
            ("authorization", &auth),
            ("x-user-id", "admin"),
            ("x-user-tier", "enterprise"),
            ("connection", "x-private, keep-alive"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["path"], "/api/data");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(r.upstream_header("x-user-id"), vec!["olga"], "tiergate's identity, not the client's");
    assert_eq!(r.upstream_header("x-user-tier"), vec!["pro"]);
    assert_eq!(r.upstream_header("authorization"), vec![auth.clone()], "Authorization forwarded unchanged");
    for hop in ["x-private", "keep-alive", "te", "proxy-authorization", "connection"] {
        assert!(r.upstream_header(hop).is_empty(), "{hop} must not be forwarded: {}", r.body);
    }
    // Appended to, never replaced; the untrusted client's proto claim is not believed.
    assert_eq!(r.upstream_header("x-forwarded-for"), vec!["6.6.6.6, 127.0.0.1"]);
    assert_eq!(r.upstream_header("x-forwarded-proto"), vec!["http"]);
    let id = r.upstream_header("x-request-id");
    assert_eq!(id.len(), 1);
    assert_eq!(id[0].len(), 32);

    // A client's request id is kept.
    let r = get(&gate.url("/api/data"), &[("authorization", &auth), ("x-request-id", "abc-123")]).await;
    assert_eq!(r.upstream_header("x-request-id"), vec!["abc-123"]);

    // Anonymous callers: spoofed identity headers are removed and none are set for the user.
    let r = get(&gate.url("/page"), &[("x-user-id", "admin"), ("x-user-tier", "enterprise")]).await;
    assert!(r.upstream_header("x-user-id").is_empty());
    assert_eq!(r.upstream_header("x-user-tier"), vec!["free"]);

    // Exempt routes: no identity check (even a bad token passes), spoofed headers still removed,
    // no rate-limit headers, security headers present.
    let r = get(&gate.url("/health"), &[("authorization", "Bearer garbage"), ("x-user-id", "admin")]).await;
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("x-user-id").is_empty());
    assert!(r.header("x-ratelimit-limit").is_none());
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}

#[tokio::test]
async fn response_headers_are_cleaned_and_decorated() {
    let gate = Gate::default_with("").await;
    let r = get(&gate.url("/hop"), &[]).await;
    assert_eq!(r.status, 200);
    for gone in ["server", "x-powered-by", "x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(r.header(gone).is_none(), "{gone} must be stripped: {:?}", r.headers);
    }
    assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000; includeSubDomains; preload"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("strict-origin-when-cross-origin"));
    assert!(r.header("content-security-policy").unwrap().contains("frame-ancestors 'none'"));
    assert!(r.header("permissions-policy").is_some());
    assert_eq!(r.header("x-xss-protection"), Some("1; mode=block"));
}

#[tokio::test]
async fn development_relaxes_the_security_headers() {
    let config =
        format!("{SERVER}{IDENTITY}{TIERS}").replace("environment = \"production\"", "environment = \"development\"");
    let gate = Gate::start(&config).await;
    let r = get(&gate.url("/x"), &[]).await;
    assert!(r.header("strict-transport-security").is_none());
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
    // Errors are decorated too.
    let r = get(&gate.url("/x"), &[("authorization", "Bearer nope")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    // A port with nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = format!("{SERVER}{IDENTITY}{TIERS}");
    let gate = Gate::start_with_upstream(&config, &format!("http://{closed}"), closed).await;
    let before = get(&format!("{}/metrics", gate.admin), &[]).await.body;
    let r = get(&gate.url("/x"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["status"], 502);
    assert!(!r.body.contains(&closed.to_string()), "the body must not reveal the upstream address");
    assert!(r.header("x-content-type-options").is_some());
    let after = get(&format!("{}/metrics", gate.admin), &[]).await.body;
    let kind = ["kind=\"connect\""];
    assert_eq!(
        metric(&after, "tiergate_upstream_errors_total", &kind)
            - metric(&before, "tiergate_upstream_errors_total", &kind),
        1.0
    );

    let config =
        format!("{SERVER}{IDENTITY}{TIERS}").replace("upstream_timeout = \"2s\"", "upstream_timeout = \"300ms\"");
    let gate = Gate::start(&config).await;
    let started = std::time::Instant::now();
    let r = get(&gate.url("/slow?ms=3000"), &[]).await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_millis(2000), "took {:?}", started.elapsed());
    assert_eq!(get(&gate.url("/slow?ms=10"), &[]).await.status, 200);
}

#[tokio::test]
async fn h2c_clients_reach_an_http1_upstream() {
    let gate = Gate::default_with("").await;
    let t = token("pia", "pro");
    let auth = format!("Bearer {t}");
    let r = send(
        &h2c_client(),
        request("POST", &gate.url("/api/h2"), &[("authorization", &auth)], Bytes::from_static(b"hello")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let echo = r.json();
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["body_bytes"], 5);
    assert_eq!(r.upstream_header("host"), vec![gate.server.addr.to_string()]);
    assert_eq!(r.upstream_header("x-user-id"), vec!["pia"]);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"));
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let gate = Gate::default_with("").await;
    let mut s = tokio::net::TcpStream::connect(gate.server.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // Bytes now flow both ways through tiergate to the echo upstream.
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 23 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "tunnel closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&got, b"ping through the tunnel");
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let gate = Gate::default_with("").await;
    let (resp, closed) = raw(
        gate.server.addr,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(closed, "connection must be closed after CL+TE");
    assert_eq!(resp.matches("HTTP/1.1").count(), 1, "the smuggled request must not be answered: {resp}");

    let (resp, _) = raw(
        gate.server.addr,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        Duration::from_secs(3),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[tokio::test]
async fn oversized_heads_get_431_and_slow_heads_are_dropped() {
    let config = format!("{SERVER}{IDENTITY}{TIERS}")
        .replace("[server]\n", "[server]\nmax_header_bytes = 16384\nheader_read_timeout = \"500ms\"\n");
    let gate = Gate::start(&config).await;
    let big = format!("GET /x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(32 * 1024));
    let (resp, _) = raw(gate.server.addr, big.as_bytes(), Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");

    // Half a request head, then silence: dropped after header_read_timeout.
    let started = std::time::Instant::now();
    let (_, closed) = raw(gate.server.addr, b"GET /x HTTP/1.1\r\nHost: x\r\n", Duration::from_secs(5)).await;
    assert!(closed, "slow head was not dropped");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "dropped after {took:?}");
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed() {
    let config = format!("{SERVER}{IDENTITY}{TIERS}")
        .replace("[server]\n", "[server]\nidle_timeout = \"400ms\"\nheader_read_timeout = \"5s\"\n");
    let gate = Gate::start(&config).await;
    let mut s = tokio::net::TcpStream::connect(gate.server.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
            Err(_) => break false,
        }
    };
    assert!(closed, "idle connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed too soon: {:?}", started.elapsed());
}

#[tokio::test]
async fn keepalive_connections_idle_for_idle_timeout_not_header_read_timeout() {
    // A short head budget must not cut idle keep-alive connections: only idle_timeout does.
    let config = format!("{SERVER}{IDENTITY}{TIERS}")
        .replace("[server]\n", "[server]\nidle_timeout = \"2s\"\nheader_read_timeout = \"300ms\"\n");
    let gate = Gate::start(&config).await;
    let mut s = tokio::net::TcpStream::connect(gate.server.addr).await.unwrap();
    let mut buf = vec![0u8; 8192];
    for round in 0..2 {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "round {round}");
        // Idle for longer than header_read_timeout, shorter than idle_timeout: still open.
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    let started = std::time::Instant::now();
    let closed = matches!(tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)));
    assert!(closed, "idle connection stayed open past idle_timeout");
    assert!(started.elapsed() >= Duration::from_millis(800), "closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn trusted_proxies_decide_whose_forwarded_for_counts() {
    // Untrusted peer: X-Forwarded-For cannot buy a fresh budget.
    let gate = Gate::default_with("").await;
    for i in 0..3 {
        let spoof = format!("10.0.0.{i}");
        assert_eq!(get(&gate.url("/api/x"), &[("x-forwarded-for", &spoof)]).await.status, 200);
    }
    assert_eq!(get(&gate.url("/api/x"), &[("x-forwarded-for", "10.9.9.9")]).await.status, 429);
    assert_eq!(get(&gate.url("/api/x"), &[("x-real-ip", "10.9.9.8")]).await.status, 429);

    // Trusted peer (loopback): the rightmost untrusted hop is the client.
    let config =
        format!("{SERVER}{IDENTITY}{TIERS}").replace("[server]\n", "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n");
    let gate = Gate::start(&config).await;
    for _ in 0..3 {
        assert_eq!(get(&gate.url("/api/x"), &[("x-forwarded-for", "203.0.113.1, 127.0.0.5")]).await.status, 200);
    }
    assert_eq!(get(&gate.url("/api/x"), &[("x-forwarded-for", "203.0.113.1")]).await.status, 429);
    // A different client behind the same proxy has its own budget.
    assert_eq!(get(&gate.url("/api/x"), &[("x-forwarded-for", "203.0.113.2")]).await.status, 200);
    // Leftmost-spoofing does not help: the rightmost untrusted entry is what counts.
    assert_eq!(get(&gate.url("/api/x"), &[("x-forwarded-for", "198.51.100.7, 203.0.113.1")]).await.status, 429);
    // IPv6 clients are counted per /64: rotating addresses inside it shares one budget.
    for i in 1..=3 {
        let addr = format!("2001:db8:aa:bb::{i}");
        assert_eq!(get(&gate.url("/api/x"), &[("x-forwarded-for", &addr)]).await.status, 200);
    }
    assert_eq!(get(&gate.url("/api/x"), &[("x-forwarded-for", "2001:db8:aa:bb:ffff::9")]).await.status, 429);
    assert_eq!(get(&gate.url("/api/x"), &[("x-forwarded-for", "2001:db8:aa:cc::1")]).await.status, 200);
}

/// A raw HTTP/1.1 upstream that counts its connections. `/close` answers with keep-alive, then
/// closes the connection 50 ms later without saying so (an upstream dropping an idle connection);
/// `/big` sends a 1 MiB body slowly; anything else gets `ok`.
async fn counting_upstream() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (addr, accepted, _) = counting_upstream_with_open().await;
    (addr, accepted)
}

/// As [`counting_upstream`], also counting the connections open right now. `/health/slow?n=N` is
/// held until N such requests are waiting at once (at most 10 s), then all are answered: N requests
/// in flight together, however slowly a debug build gets them there.
async fn counting_upstream_with_open() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let open = std::sync::Arc::new(AtomicUsize::new(0));
    let (count, live) = (std::sync::Arc::clone(&accepted), std::sync::Arc::clone(&open));
    let waiting = std::sync::Arc::new(AtomicUsize::new(0));
    let go = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            live.fetch_add(1, Ordering::SeqCst);
            let (live, waiting, go) =
                (std::sync::Arc::clone(&live), std::sync::Arc::clone(&waiting), std::sync::Arc::clone(&go));
            tokio::spawn(async move {
                struct Closed(std::sync::Arc<AtomicUsize>);
                impl Drop for Closed {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _closed = Closed(live);
                let mut buf = Vec::new();
                loop {
                    let Some(head) = read_head(&mut s, &mut buf).await else { return };
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    if path.starts_with("/big") {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n").await;
                        for _ in 0..1024 {
                            if s.write_all(&[b'x'; 1024]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        continue;
                    }
                    if let Some(n) = path.strip_prefix("/health/slow?n=").and_then(|n| n.parse::<usize>().ok()) {
                        // A barrier: the N-th waiting request releases them all; the last one to
                        // leave (before answering, so the next round starts closed) closes it again.
                        if waiting.fetch_add(1, Ordering::SeqCst) + 1 >= n {
                            go.store(true, Ordering::SeqCst);
                        }
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                        while !go.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
                            go.store(false, Ordering::SeqCst);
                        }
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                        return;
                    }
                    if path.starts_with("/close") {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, open)
}

#[tokio::test]
async fn upstream_connections_are_reused_and_a_closed_or_unfinished_one_never_is() {
    use std::sync::atomic::Ordering;
    let (upstream, accepted) = counting_upstream().await;
    let config = format!("{SERVER}{IDENTITY}{TIERS}");
    let gate = Gate::start_with_upstream(&config, &format!("http://{upstream}"), upstream).await;

    // Keep-alive: one connection carries sequential requests.
    for _ in 0..5 {
        assert_eq!(get(&gate.url("/x"), &[]).await.status, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "sequential requests share one upstream connection");

    // The upstream drops the idle connection: the next request goes out on a new one, and succeeds.
    assert_eq!(get(&gate.url("/close"), &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&gate.url("/x"), &[]).await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(get(&gate.url("/x"), &[]).await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the new connection is kept alive in turn");

    // A client that leaves mid-body: that connection still holds the rest of the body, so it is
    // never handed to another request.
    let mut s = tokio::net::TcpStream::connect(gate.server.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&gate.url("/x"), &[]).await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "the abandoned connection was not reused");
}

#[tokio::test]
async fn idle_upstream_connections_are_capped_and_the_kept_ones_serve_the_next_burst() {
    use std::sync::atomic::Ordering;
    use tiergate::upstream::MAX_IDLE_PER_SHARD;
    let (upstream, accepted, open) = counting_upstream_with_open().await;
    let config = format!("{SERVER}{IDENTITY}{TIERS}");
    // One thread (this test's runtime): one shard of the pool, so at most MAX_IDLE_PER_SHARD idle.
    let gate = Gate::start_with_upstream(&config, &format!("http://{upstream}"), upstream).await;
    let burst = |n: usize| {
        let url = gate.url(&format!("/health/slow?n={n}"));
        async move {
            let replies = futures_util::future::join_all((0..n).map(|_| get(&url, &[]))).await;
            assert!(replies.iter().all(|r| r.status == 200), "every request of the burst is answered");
        }
    };

    // More requests at once than the pool keeps: each needs a connection of its own.
    let over = MAX_IDLE_PER_SHARD + 44;
    burst(over).await;
    assert_eq!(accepted.load(Ordering::SeqCst), over, "one upstream connection per concurrent request");
    // Given back as they finish: past the cap the oldest idle one is closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open.load(Ordering::SeqCst) > MAX_IDLE_PER_SHARD {
        assert!(std::time::Instant::now() < deadline, "open: {} > {MAX_IDLE_PER_SHARD}", open.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept = open.load(Ordering::SeqCst);
    assert!(kept > MAX_IDLE_PER_SHARD * 9 / 10, "the cap's worth is kept alive, not dropped: {kept}");

    // The next burst of that size rides on the kept connections: none is opened.
    burst(kept).await;
    assert_eq!(accepted.load(Ordering::SeqCst), over, "the kept connections served the next burst");
}

/// An idle upstream connection is kept for reuse up to `IDLE_TIMEOUT` (90 s) and closed after it. The
/// sweep is run as of a moved clock rather than after 90 real seconds.
#[tokio::test]
async fn idle_upstream_connections_close_after_the_idle_timeout() {
    use std::sync::atomic::Ordering;
    use tiergate::upstream::IDLE_TIMEOUT;
    let (upstream, accepted, open) = counting_upstream_with_open().await;
    let gate =
        Gate::start_with_upstream(&format!("{SERVER}{IDENTITY}{TIERS}"), &format!("http://{upstream}"), upstream).await;
    let pool = &gate.server.proxy.client;
    for _ in 0..3 {
        assert_eq!(get(&gate.url("/health"), &[]).await.status, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "sequential requests share one kept-alive connection");
    let now = std::time::Instant::now();
    assert_eq!(pool.sweep_at(now + IDLE_TIMEOUT - Duration::from_secs(1)), 0, "not yet idle for long enough");
    assert_eq!(open.load(Ordering::SeqCst), 1);
    assert_eq!(get(&gate.url("/health"), &[]).await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "still reused");

    assert_eq!(pool.sweep_at(std::time::Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1)), 1, "past it: closed");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open.load(Ordering::SeqCst) > 0 {
        assert!(std::time::Instant::now() < deadline, "the upstream never saw the close");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&gate.url("/health"), &[]).await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the next request opens a new connection");
}

#[tokio::test]
async fn thread_per_core_workers_share_the_limits_and_keep_their_own_upstream_connections() {
    use std::sync::atomic::Ordering;
    let (upstream, accepted) = counting_upstream().await;
    let config = format!("{SERVER}{IDENTITY}{TIERS}");
    // The test's runtime is worker 0; one more worker thread listens on the same port.
    let gate = Gate::start_workers(&config, &format!("http://{upstream}"), upstream, 1).await;

    // 24 connections, one request each, one after another: the kernel spreads them over both
    // listeners (all on one has odds of 2 in 2^24), and each worker reuses its own upstream connection.
    for _ in 0..24 {
        assert_eq!(get(&gate.url("/x"), &[]).await.status, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "one upstream connection per worker, each kept alive");

    // The limits are the process's, whichever worker a connection landed on: api_calls_per_minute = 3.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(&gate.url("/api/items"), &[]).await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 9, "{statuses:?}");

    // A drain stops every worker's listener.
    assert!(gate.server.drain(Duration::from_secs(2)).await);
    for _ in 0..8 {
        assert!(tokio::net::TcpStream::connect(gate.server.addr).await.is_err(), "a worker still accepts after drain");
    }
}
