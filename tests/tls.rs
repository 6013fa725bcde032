//! TLS termination: ALPN h2 and http/1.1 to an HTTP/1.1 upstream, certificate rotation without a
//! restart or a dropped connection, and bad certificate files reported by key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;

fn tls_config(dir: &std::path::Path) -> String {
    format!(
        "{SERVER}{IDENTITY}{TIERS}\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    )
}

fn install(dir: &std::path::Path, n: u8) {
    // As a Secret volume update does: new files appear at once (write aside, rename over).
    for (from, to) in [(format!("tls_server{n}.pem"), "tls.crt"), (format!("tls_server{n}.key"), "tls.key")] {
        std::fs::copy(fixture(&from), dir.join(format!(".{to}.new"))).unwrap();
        std::fs::rename(dir.join(format!(".{to}.new")), dir.join(to)).unwrap();
    }
}

type SendFn = Box<
    dyn FnMut(http::Request<Full<Bytes>>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>> + Send,
>;

struct TlsConn {
    alpn: Vec<u8>,
    peer_cert: CertificateDer<'static>,
    send: SendFn,
}

/// A client that trusts the fixtures' CA and offers `alpn`.
fn client_config(alpn: &[&[u8]]) -> rustls::ClientConfig {
    tiergate::app::install_process_globals();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("tls_ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

async fn connect(addr: std::net::SocketAddr, alpn: &[&[u8]]) -> TlsConn {
    let config = client_config(alpn);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    let negotiated = session.alpn_protocol().unwrap_or_default().to_vec();
    let peer_cert = session.peer_certificates().unwrap()[0].clone().into_owned();
    let io = TokioIo::new(tls);
    async fn read(resp: http::Response<hyper::body::Incoming>) -> Reply {
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }
    if negotiated == b"h2" {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        TlsConn {
            alpn: negotiated,
            peer_cert,
            send: Box::new(move |req| {
                let mut sender = sender.clone();
                Box::pin(async move { read(sender.send_request(req).await.unwrap()).await })
            }),
        }
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        TlsConn {
            alpn: negotiated,
            peer_cert,
            send: Box::new(move |req| {
                let sender = Arc::clone(&sender);
                Box::pin(async move { read(sender.lock().await.send_request(req).await.unwrap()).await })
            }),
        }
    }
}

fn req(gate: &Gate, path: &str, token: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri(format!("https://localhost:{}{path}", gate.server.addr.port()))
        .header("host", format!("localhost:{}", gate.server.addr.port()))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn cert_of(n: u8) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(fixture(&format!("tls_server{n}.pem"))).unwrap().next().unwrap().unwrap()
}

#[tokio::test]
async fn https_with_h2_and_http1_reaches_an_http1_upstream_and_certificates_rotate() {
    let dir = scratch("tls");
    install(&dir, 1);
    let (gate, _) = Gate::watching(&dir, &tls_config(&dir)).await;
    let t = token("tls-user", "pro");

    let mut h2 = connect(gate.server.addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.alpn, b"h2");
    assert_eq!(h2.peer_cert, cert_of(1));
    let r = (h2.send)(req(&gate, "/api/x", &t)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(r.upstream_header("x-forwarded-proto"), vec!["https"]);
    assert_eq!(r.upstream_header("x-user-id"), vec!["tls-user"]);
    assert!(r.header("strict-transport-security").is_some());

    let mut h1 = connect(gate.server.addr, &[b"http/1.1"]).await;
    assert_eq!(h1.alpn, b"http/1.1");
    assert_eq!((h1.send)(req(&gate, "/api/x", &t)).await.status, 200);
    // An origin-form request over TLS: tiergate's own HTTP/1.1 path (`src/h1.rs`) serves it.
    let mut origin = req(&gate, "/api/y", &t);
    *origin.uri_mut() = "/api/y".parse().unwrap();
    let r = (h1.send)(origin).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/api/y");
    assert_eq!(r.upstream_header("x-forwarded-proto"), vec!["https"]);
    assert_eq!(r.upstream_header("x-user-id"), vec!["tls-user"]);
    assert!(r.header("strict-transport-security").is_some());

    // cert-manager renews the certificate: new connections get it, open ones keep working.
    install(&dir, 2);
    let start = Instant::now();
    loop {
        let fresh = connect(gate.server.addr, &[b"h2"]).await;
        if fresh.peer_cert == cert_of(2) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "rotated certificate not served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((h2.send)(req(&gate, "/api/x", &t)).await.status, 200, "an open h2 connection survives the rotation");
    assert_eq!((h1.send)(req(&gate, "/api/x", &t)).await.status, 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unusable_certificate_files_are_reported_by_key() {
    let dir = scratch("badtls");
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    std::fs::copy(fixture("tls_server1.key"), dir.join("tls.key")).unwrap();
    let config = tiergate::config::Config::parse(&tls_config(&dir)).unwrap();
    let secrets = tiergate::snapshot::Secrets::default().with(SECRET_ENV, SECRET);
    let errors = tiergate::snapshot::Snapshot::compile(config, &secrets).err().expect("must fail").0;
    assert!(errors.iter().any(|e| e.starts_with("tls.cert_file:")), "{errors:?}");

    // A key that does not belong to the certificate.
    std::fs::copy(fixture("tls_server1.pem"), dir.join("tls.crt")).unwrap();
    std::fs::copy(fixture("tls_server2.key"), dir.join("tls.key")).unwrap();
    let config = tiergate::config::Config::parse(&tls_config(&dir)).unwrap();
    let errors = tiergate::snapshot::Snapshot::compile(config, &secrets).err().expect("must fail").0;
    assert!(errors.iter().any(|e| e.starts_with("tls.key_file:")), "{errors:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_roots() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tiergate::demo::spawn_echo_tls(listener, fixture_acceptor(&[b"http/1.1"]));
    let upstream = format!("https://localhost:{}", addr.port());

    let trusted = format!("{SERVER}{IDENTITY}{TIERS}")
        .replace("[server]\n", &format!("[server]\nupstream_ca_file = \"{}\"\n", fixture("tls_ca.pem")));
    let gate = Gate::start_with_upstream(&trusted, &upstream, addr).await;
    let r = get(&gate.url("/over-tls"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/over-tls");

    // Without the CA the upstream's certificate is refused: 502, never a plaintext fallback.
    let untrusted = format!("{SERVER}{IDENTITY}{TIERS}");
    let gate = Gate::start_with_upstream(&untrusted, &upstream, addr).await;
    assert_eq!(get(&gate.url("/over-tls"), &[]).await.status, 502);
}

/// A head hyper refuses itself, over TLS: tiergate's decorated answer goes out inside the TLS stream
/// (the stream that replaces hyper's bare one sits above TLS), with HSTS as every HTTPS answer has.
#[tokio::test]
async fn a_head_hyper_refuses_over_tls_gets_the_decorated_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = scratch("tls-refused");
    install(&dir, 1);
    let (gate, _) = Gate::watching(&dir, &tls_config(&dir)).await;
    let config = client_config(&[b"http/1.1"]);
    for (head, status) in [
        (b"GET /x HTTP/1.1\r\nHost: localhost\r\nBad Header: 1\r\n\r\n".to_vec(), "400"),
        (format!("GET /x HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000)).into_bytes(), "431"),
    ] {
        let tcp = tokio::net::TcpStream::connect(gate.server.addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config.clone()))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(&head).await.unwrap();
        let mut resp = Vec::new();
        // Read until tiergate closes (a TLS close or a reset once the answer is out, either ends it).
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut resp)).await.unwrap();
        let resp = String::from_utf8_lossy(&resp).to_ascii_lowercase();
        assert!(resp.starts_with(&format!("http/1.1 {status}")), "{status}: {resp}");
        for line in
            ["content-type: application/problem+json", "strict-transport-security: ", "x-content-type-options: nosniff"]
        {
            assert!(resp.contains(&format!("\r\n{line}")), "{status}: no `{line}` in {resp}");
        }
        assert!(resp.contains(&format!("\"status\":{status}")), "{status}: {resp}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The keep-alive race on an `https://` upstream (hyper's connections, not the wire path): a reused
/// connection closed without answering, with TLS's close_notify and without. An idempotent request
/// with no body goes once more on a new connection; a `POST` is never sent twice.
#[tokio::test]
async fn over_tls_an_idempotent_request_on_a_connection_closed_unanswered_goes_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acceptor = fixture_acceptor(&[b"http/1.1"]);
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                for served in 0usize.. {
                    let Some(head) = read_head(&mut s, &mut buf).await else { return };
                    let method = head.split(' ').next().unwrap_or("GET").to_string();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    if path.starts_with("/vanish") && served > 0 {
                        if path == "/vanish" {
                            let _ = s.shutdown().await; // close_notify, then FIN
                        }
                        return; // `/vanish-rude`: dropped, no close_notify
                    }
                    let answer: &[u8] = if method == "HEAD" {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let config = format!("{SERVER}{IDENTITY}{TIERS}")
        .replace("[server]\n", &format!("[server]\nupstream_ca_file = \"{}\"\n", fixture("tls_ca.pem")));
    let gate = Gate::start_with_upstream(&config, &format!("https://localhost:{}", addr.port()), addr).await;
    assert_eq!(get(&gate.url("/first"), &[]).await.body, "fresh");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    for (method, path) in [("GET", "/vanish"), ("GET", "/vanish-rude"), ("HEAD", "/vanish"), ("DELETE", "/vanish-rude")]
    {
        let before = accepted.load(Ordering::SeqCst);
        let reply = send(&client(), request(method, &gate.url(path), &[], Bytes::new())).await;
        assert_eq!(reply.status.as_u16(), 200, "{method} {path}: {}", reply.body);
        assert_eq!(accepted.load(Ordering::SeqCst), before + 1, "{method} {path}: sent again on one new connection");
    }
    let before = accepted.load(Ordering::SeqCst);
    let reply = send(&client(), request("POST", &gate.url("/vanish"), &[], Bytes::new())).await;
    assert_eq!(reply.status.as_u16(), 502, "{}", reply.body);
    assert_eq!(accepted.load(Ordering::SeqCst), before, "a POST is not sent again");
}

/// A reload that moves the upstream to `https://` while a kept-alive client connection is on
/// tiergate's own HTTP/1.1 path (which speaks only plain HTTP to the upstream): that connection's
/// next request is handed to hyper's server and reaches the new upstream, rather than failing.
#[tokio::test]
async fn a_reload_to_an_https_upstream_moves_a_kept_alive_connection_to_hyper() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The plain upstream answers "plain"; the TLS one is the echo (JSON).
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_head(&mut s, &mut buf).await.is_some() {
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls.local_addr().unwrap();
    tiergate::demo::spawn_echo_tls(tls, fixture_acceptor(&[b"http/1.1"]));

    let dir = scratch("to-https");
    std::fs::create_dir_all(&dir).unwrap();
    // `upstream_ca_file` needs a restart to change, so it is there from the start.
    let config = |upstream: &str| {
        format!("{SERVER}{IDENTITY}{TIERS}")
            .replace("[server]\n", &format!("[server]\nupstream_ca_file = \"{}\"\n", fixture("tls_ca.pem")))
            .replace("http://127.0.0.1:1", upstream)
    };
    let path = dir.join("config.toml");
    let before = config(&format!("http://{plain_addr}"));
    std::fs::write(&path, &before).unwrap();
    let gate = Gate::start_with_upstream(&before, &format!("http://{plain_addr}"), plain_addr).await;
    gate.server.watch_config(path.clone(), tiergate::snapshot::Secrets::default().with(SECRET_ENV, SECRET), None);

    // One response off the kept-alive connection: its status line and body.
    async fn answer(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (String, String) {
        let head = tokio::time::timeout(Duration::from_secs(5), read_head(s, buf)).await.unwrap().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap();
        let mut chunk = [0u8; 4096];
        while buf.len() < len {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf.drain(..len).collect::<Vec<_>>()).into_owned();
        (head.lines().next().unwrap().to_string(), body)
    }
    let mut s = tokio::net::TcpStream::connect(gate.server.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /before HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    assert_eq!(answer(&mut s, &mut buf).await, ("HTTP/1.1 200 OK".to_string(), "plain".to_string()));

    std::fs::write(&path, config(&format!("https://localhost:{}", tls_addr.port()))).unwrap();
    let start = Instant::now();
    while !get(&gate.url("/probe"), &[]).await.body.starts_with('{') {
        assert!(start.elapsed() < Duration::from_secs(10), "the reload to the https upstream never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.write_all(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let (status, body) = answer(&mut s, &mut buf).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("\"path\":\"/after\""), "the https upstream answered: {body}");
    let _ = std::fs::remove_dir_all(dir);
}
