//! How tiergate reads an upstream's response to a request with no body (the wire path,
//! `src/wire.rs`), against a real TCP upstream that answers each path with scripted bytes: every
//! framing RFC 9112 §6.3 allows, interim 1xx heads, trailers, and malformed answers; and which
//! connections are reused afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

/// What the scripted upstream answers for `path`, and whether it closes the connection after.
fn script(path: &str) -> (&'static [u8], bool) {
    match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/close" => (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", true),
        "/early" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/conflict" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", false),
        "/same-twice" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", false),
        "/bad-chunk" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", false),
        "/te-and-cl" => (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false),
        "/switching" => (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", false),
        "/no-content" => (b"HTTP/1.1 204 No Content\r\n\r\n", false),
        "/garbage" => (b"HTTP/1.1 two hundred\r\n\r\n", false),
        "/bad-name" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Name: x\r\n\r\nok", false),
        "/bad-value" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Bad: a\x01b\r\n\r\nok", false),
        "/cut" => (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true),
        "/vanish" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh", false),
        "/keep-close" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", false),
        // Heads whose names change from one response to the next on one connection (a connection
        // keeps the last head's names parsed, by position: `src/wire.rs`).
        "/names-a" => (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-One: 1\r\nX-Two: 2\r\n\r\na", false),
        "/names-b" => (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Uno: 1\r\nx-two: 2\r\nX-Three: 3\r\n\r\nb", false),
        "/names-c" => (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc", false),
        "/names-long-a" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: 1\r\n\r\nA",
            false,
        ),
        "/names-long-b" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb: 1\r\n\r\nB",
            false,
        ),
        // `/len`, asked with HEAD: the length of a body that is not sent.
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
    }
}

/// The scripted upstream; counts the connections it accepted.
async fn scripted_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for served in 0usize.. {
                    let Some(head) = read_head(&mut s, &mut buf).await else { return };
                    let method = head.split(' ').next().unwrap_or("GET").to_string();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    // `/vanish` on a connection that already served a request: closed unanswered,
                    // as an upstream whose keep-alive timeout fires just as the request arrives.
                    if path == "/vanish" && served > 0 {
                        return;
                    }
                    let (mut answer, close) = script(&path);
                    if method == "HEAD" {
                        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
                    }
                    if s.write_all(answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn gate() -> (Gate, Arc<AtomicUsize>) {
    let (upstream, accepted) = scripted_upstream().await;
    let gate =
        Gate::start_with_upstream(&format!("{SERVER}{IDENTITY}{TIERS}"), &format!("http://{upstream}"), upstream).await;
    (gate, accepted)
}

#[tokio::test]
async fn every_framing_is_read_and_only_reusable_connections_are_reused() {
    let (gate, accepted) = gate().await;
    let reply = get(&gate.url("/chunked"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "hello world"), "chunks joined, trailers dropped");
    assert!(reply.header("x-trailer").is_none());
    let reply = get(&gate.url("/early"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"), "103 skipped, the final answer forwarded");
    let reply = get(&gate.url("/same-twice"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"), "a repeated equal length is one length");
    let reply = get(&gate.url("/no-content"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (204, ""));
    let reply = send(&client(), request("HEAD", &gate.url("/len"), &[], bytes::Bytes::new())).await;
    assert_eq!((reply.status.as_u16(), reply.header("content-length")), (200, Some("5")), "HEAD: no body follows");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "each of those left the connection reusable");

    // Read to the close: the body is whatever came before it, and the connection is gone.
    let reply = get(&gate.url("/close"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "until the end"));
    assert_eq!(get(&gate.url("/len"), &[]).await.body, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a close-delimited body's connection is not reused");

    // `Connection: close` from the upstream, and a response with both framings: body read as chunked,
    // its `Content-Length` not forwarded, its connection not reused.
    assert_eq!(get(&gate.url("/keep-close"), &[]).await.body, "ok");
    assert_eq!(get(&gate.url("/len"), &[]).await.body, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "Connection: close is honoured");
    let reply = get(&gate.url("/te-and-cl"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"));
    assert_ne!(reply.header("content-length"), Some("3"), "the conflicting length is dropped");
    assert_eq!(get(&gate.url("/len"), &[]).await.body, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 4, "a response with both framings ends its connection");
}

#[tokio::test]
async fn each_response_on_a_reused_connection_carries_its_own_header_names() {
    let (gate, accepted) = gate().await;
    let long_a = "x-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let long_b = "x-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    // Per path: its body, each name that must be there with its value, and each that must not.
    type Expect<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let expect: [Expect; 5] = [
        ("/names-a", "a", &[("x-one", "1"), ("x-two", "2")], &["x-uno", "x-three"]),
        ("/names-b", "b", &[("x-uno", "1"), ("x-two", "2"), ("x-three", "3")], &["x-one"]),
        ("/names-c", "c", &[], &["x-one", "x-two", "x-uno", "x-three"]),
        ("/names-long-a", "A", &[(long_a, "1")], &[long_b]),
        ("/names-long-b", "B", &[(long_b, "1")], &[long_a]),
    ];
    // Every order of change: a name replaced at its place, a different case, more names, fewer,
    // none, a name longer than a connection keeps, and back again.
    for i in [0, 1, 0, 2, 1, 1, 3, 4, 3, 0, 4, 2, 0] {
        let (path, body, present, absent) = expect[i];
        let reply = get(&gate.url(path), &[]).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, body), "{path}");
        for (name, value) in present {
            assert_eq!(reply.header(name), Some(*value), "{path}: {name}");
        }
        for name in absent {
            assert!(reply.header(name).is_none(), "{path}: {name} is not in this response");
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "all on one upstream connection");
}

#[tokio::test]
async fn malformed_answers_are_502_or_a_cut_body_and_their_connection_is_dropped() {
    let (gate, accepted) = gate().await;
    for path in ["/conflict", "/garbage", "/switching", "/bad-name", "/bad-value"] {
        let reply = get(&gate.url(path), &[]).await;
        assert_eq!(reply.status.as_u16(), 502, "{path}: {}", reply.body);
        assert_eq!(reply.header("content-type"), Some("application/problem+json"), "{path}");
    }
    let before = accepted.load(Ordering::SeqCst);
    assert_eq!(get(&gate.url("/len"), &[]).await.body, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), before + 1, "no connection a malformed answer came on is reused");

    // A body that breaks once the head is in: the client sees it cut short (or, when hyper met the
    // error before it wrote the head, no answer), never a whole body.
    for path in ["/bad-chunk", "/cut"] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (out, closed) = raw(gate.server.addr, head.as_bytes(), Duration::from_secs(5)).await;
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 200"), "{path}: {out}");
        assert!(closed, "{path}: the client's connection is closed, so the short body cannot pass for whole");
        assert!(!out.contains("hello\r\n0") && !out.ends_with("0\r\n\r\n"), "{path}: never ended as complete: {out:?}");
    }
    let before = accepted.load(Ordering::SeqCst);
    assert_eq!(get(&gate.url("/len"), &[]).await.body, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), before + 1, "a broken body's connection is not reused");
}

/// The keep-alive race: a reused connection the upstream closes without answering. An idempotent
/// request goes once more, on a new connection, and succeeds; a `POST` is never sent twice.
#[tokio::test]
async fn an_idempotent_request_on_a_connection_closed_unanswered_goes_again_on_a_new_one() {
    let (gate, accepted) = gate().await;
    assert_eq!(get(&gate.url("/len"), &[]).await.body, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    for method in ["GET", "HEAD", "DELETE"] {
        let before = accepted.load(Ordering::SeqCst);
        let reply = send(&client(), request(method, &gate.url("/vanish"), &[], bytes::Bytes::new())).await;
        assert_eq!(reply.status.as_u16(), 200, "{method}: {}", reply.body);
        if method == "GET" {
            assert_eq!(reply.body, "fresh");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), before + 1, "{method}: sent again on one new connection");
    }
    // Not idempotent: the upstream may have acted on it, so the client gets the 502.
    let before = accepted.load(Ordering::SeqCst);
    let reply = send(&client(), request("POST", &gate.url("/vanish"), &[], bytes::Bytes::new())).await;
    assert_eq!(reply.status.as_u16(), 502, "{}", reply.body);
    assert_eq!(accepted.load(Ordering::SeqCst), before, "a POST is not sent again");
    assert_eq!(get(&gate.url("/len"), &[]).await.body, "hello", "and the next request gets a new connection");
}

/// The same upstream answers to a request that came through hyper's server (h2c here), whose
/// response head is parsed into a header map rather than kept as sent (`src/h1.rs` keeps it so):
/// both readings forward the same framing and refuse the same faults. (Before, a listed
/// `Content-Length` such as `2, 2` reached an h2 client as sent, and it reset the stream.)
#[tokio::test]
async fn a_request_through_hyper_s_server_reads_the_same_framings() {
    let (gate, _) = gate().await;
    let h2c = h2c_client();
    for (path, status, body) in [
        ("/chunked", 200, "hello world"),
        ("/same-twice", 200, "ok"),
        ("/te-and-cl", 200, "ok"),
        ("/keep-close", 200, "ok"),
        ("/no-content", 204, ""),
        ("/conflict", 502, ""),
        ("/bad-name", 502, ""),
        ("/bad-value", 502, ""),
    ] {
        for via_h2c in [false, true] {
            let req = request("GET", &gate.url(path), &[], bytes::Bytes::new());
            let reply = if via_h2c { send(&h2c, req).await } else { send(&client(), req).await };
            assert_eq!(reply.status.as_u16(), status, "{path} (h2c: {via_h2c}): {}", reply.body);
            if status != 502 {
                assert_eq!(reply.body, body, "{path} (h2c: {via_h2c})");
            }
            assert!(reply.header("x-trailer").is_none() && reply.header("connection").is_none(), "{path}");
            if path == "/te-and-cl" {
                assert_ne!(reply.header("content-length"), Some("3"), "{path} (h2c: {via_h2c})");
            }
            if path == "/same-twice" {
                assert_eq!(
                    reply.header("content-length"),
                    Some("2"),
                    "a listed length is sent as one (h2c: {via_h2c})"
                );
            }
        }
    }
}
