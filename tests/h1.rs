//! tiergate's own HTTP/1.1 path (`src/h1.rs`) on real connections, written and read as raw bytes so
//! that what is on the wire is what is checked: pipelined requests answered in order, the hand-over
//! to hyper's server in the middle of a connection (a request with a body, an upgrade), the
//! upstream request it writes from the client's head, and the response framing it writes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response off `s`: its head (status line and headers, names lower-cased) and its body, read
/// by `Content-Length` or chunked framing. `head_request`: the response has no body.
async fn response(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> (String, Vec<u8>) {
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(s, buf)).await.unwrap().expect("a response head");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if head_request {
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().unwrap();
        fill(s, buf, len).await.unwrap();
        body.extend(buf.drain(..len));
    } else if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let have = buf.len();
                fill(s, buf, have + 1).await.unwrap();
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            buf.drain(..line_end + 2);
            fill(s, buf, size + 2).await.unwrap();
            body.extend(buf.drain(..size));
            assert_eq!(buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
            if size == 0 {
                break;
            }
        }
    }
    (head, body)
}

/// Reads until `buf` holds `want` bytes.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> Result<(), tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        while buf.len() < want {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed in the middle of a body");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

async fn gate() -> Gate {
    Gate::start(&format!("{SERVER}{IDENTITY}{TIERS}")).await
}

#[tokio::test]
async fn pipelined_requests_and_a_hand_over_to_hyper_share_one_connection() {
    let gate = gate().await;
    let mut s = TcpStream::connect(gate.server.addr).await.unwrap();
    // Two plain GETs, then a POST with a body (hyper's from there on), then a GET: one write.
    s.write_all(
        b"GET /a?x=1 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /b HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /d HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (head, body) = response(&mut s, &mut buf, false).await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.to_ascii_lowercase().contains("x-frame-options:"), "decorated: {head}");
        let doc = json(&body);
        seen.push((doc["method"].as_str().unwrap().to_string(), doc["path"].as_str().unwrap().to_string()));
        if doc["method"] == "POST" {
            assert_eq!(doc["body_bytes"], 5, "{doc}");
        }
    }
    let seen: Vec<(&str, &str)> = seen.iter().map(|(m, p)| (m.as_str(), p.as_str())).collect();
    assert_eq!(seen, [("GET", "/a"), ("GET", "/b"), ("POST", "/c"), ("GET", "/d")]);
}

#[tokio::test]
async fn the_upstream_request_is_written_from_the_client_head_as_prepare_would() {
    let gate = gate().await;
    let mut s = TcpStream::connect(gate.server.addr).await.unwrap();
    let token = token("flat-user", "pro");
    let head = format!(
        "GET /api/items?q=%20a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
         X-User-Id: mallory\r\nx-user-tier: enterprise\r\nConnection: keep-alive\r\nKeep-Alive: 300\r\n\
         TE: trailers\r\nProxy-Authorization: Basic eA==\r\nX-Forwarded-For: 203.0.113.7\r\n\
         x-forwarded-for: 198.51.100.2\r\nX-Forwarded-Proto: https\r\nX-Request-Id: rid-1\r\n\
         X-Custom: Kept As Sent\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let doc = json(&body);
    let h = &doc["headers"];
    let one =
        |name: &str| h[name].as_array().map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>());
    assert_eq!(doc["path"], "/api/items");
    assert_eq!(doc["query"], "q=%20a");
    assert_eq!(one("x-user-id").unwrap(), ["flat-user"], "the verified user, not the client's: {h}");
    assert_eq!(one("x-user-tier").unwrap(), ["pro"], "{h}");
    for gone in ["connection", "keep-alive", "te", "proxy-authorization"] {
        assert!(one(gone).is_none(), "{gone} is hop-by-hop: {h}");
    }
    assert_eq!(one("x-forwarded-for").unwrap(), ["203.0.113.7, 198.51.100.2, 127.0.0.1"], "{h}");
    assert_eq!(one("x-forwarded-proto").unwrap(), ["http"], "an untrusted peer's is replaced: {h}");
    assert_eq!(one("x-request-id").unwrap(), ["rid-1"], "{h}");
    assert_eq!(one("x-custom").unwrap(), ["Kept As Sent"], "{h}");
    assert_eq!(one("authorization").unwrap().len(), 1, "{h}");
    // The rate-limit headers of the pro tier's binding window.
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-ratelimit-limit: ") && lower.contains("x-ratelimit-remaining: "), "{head}");
    assert!(lower.contains("\r\ndate: "), "{head}");
}

#[tokio::test]
async fn connection_close_and_head_are_answered_as_hyper_would() {
    let gate = gate().await;
    // HEAD: the length a GET would have, no body; the connection stays.
    let mut s = TcpStream::connect(gate.server.addr).await.unwrap();
    s.write_all(b"HEAD /api/items HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let (head, body) = response(&mut s, &mut buf, true).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-length: "), "{head}");
    assert!(body.is_empty());
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "the next request after a HEAD: {head}");
    assert_eq!(json(&body)["path"], "/health");

    // A body of unknown length (the upstream streams it chunked): chunked to the client, piece by piece.
    s.write_all(b"GET /stream?chunks=3&ms=20 HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(body, b"chunk 0\nchunk 1\nchunk 2\n");

    // Connection: close: said in the response, and the connection ends after it.
    let (text, closed) = raw(
        gate.server.addr,
        b"GET /api/items HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{text}");
    assert!(closed, "the connection should close after a Connection: close request");
}

#[tokio::test]
async fn a_refusal_on_this_path_is_decorated_and_keeps_the_connection() {
    let gate = gate().await;
    let mut s = TcpStream::connect(gate.server.addr).await.unwrap();
    let token = token("flat-free", "free");
    let mut buf = Vec::new();
    // free: api_calls_per_minute = 3, so the fourth is refused.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = format!("GET /api/items HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = response(&mut s, &mut buf, false).await;
        statuses.push(head[9..12].to_string());
        if head.starts_with("HTTP/1.1 429") {
            let lower = head.to_ascii_lowercase();
            assert!(lower.contains("retry-after: "), "{head}");
            assert!(lower.contains("x-ratelimit-remaining: 0"), "{head}");
            assert!(lower.contains("x-frame-options: "), "{head}");
            assert!(lower.contains("content-type: application/problem+json"), "{head}");
            assert_eq!(json(&body)["status"], 429);
        }
    }
    assert_eq!(statuses, ["200", "200", "200", "429"]);
    // A 401 (a token that does not verify) on the same connection.
    s.write_all(b"GET /api/items HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer not.a.token\r\n\r\n").await.unwrap();
    let (head, _) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
}

#[tokio::test]
async fn an_upgrade_after_plain_requests_is_tunnelled_by_hyper() {
    let gate = gate().await;
    let mut s = TcpStream::connect(gate.server.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /api/items HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let (head, _) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n").await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut s, &mut buf)).await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The echo upstream echoes bytes on an upgraded connection.
    s.write_all(b"ping").await.unwrap();
    let mut got = std::mem::take(&mut buf);
    let mut chunk = [0u8; 64];
    while got.len() < 4 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&got[..4], b"ping");
}
