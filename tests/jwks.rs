//! `identity.jwks_url`: keys fetched at start, refreshed on a timer and on an unknown `kid` (at most
//! once per 30 s), a failed refresh keeps the old keys, a failed first fetch is a clear error — against
//! a local HTTP (and HTTPS) server that rotates its keys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use support::*;

/// A JWKS endpoint whose document, status and hit count the test controls.
#[derive(Clone)]
struct Idp {
    doc: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    addr: std::net::SocketAddr,
}

fn jwks(kids: &[&str]) -> String {
    let all: Value = serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}

async fn idp(kids: &[&str], tls: Option<tokio_rustls::TlsAcceptor>) -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp = Idp {
        doc: Arc::new(Mutex::new(jwks(kids))),
        status: Arc::new(AtomicU16::new(200)),
        hits: Arc::new(AtomicUsize::new(0)),
        addr: listener.local_addr().unwrap(),
    };
    let state = idp.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (state, tls) = (state.clone(), tls.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let state = state.clone();
                    async move {
                        state.hits.fetch_add(1, Ordering::SeqCst);
                        let mut resp = http::Response::new(Full::new(Bytes::from(state.doc.lock().unwrap().clone())));
                        *resp.status_mut() = http::StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), service).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    idp
}

fn identity_section(url: &str, extra: &str) -> String {
    identity_refreshing(url, "1s", extra)
}

fn identity_refreshing(url: &str, refresh: &str, extra: &str) -> String {
    format!("\n[identity]\njwt_algorithms = [\"RS256\"]\njwks_url = \"{url}\"\njwks_refresh = \"{refresh}\"\n{extra}\n")
}

fn rs(kid: &str, sub: &str) -> String {
    let private = if kid == "k1" { "rsa_private.pem" } else { "rsa2_private.pem" };
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture(private)).unwrap()).unwrap();
    sign(Algorithm::RS256, &key, &json!({ "sub": sub, "tier": "pro", "exp": now() + 600 }), Some(kid))
}

async fn status(gate: &Gate, token: &str) -> u16 {
    get_as(&gate.url("/x"), token).await.status.as_u16()
}

#[tokio::test]
async fn rotated_keys_are_picked_up_on_an_unknown_kid_and_on_the_timer() {
    let idp = idp(&["k1"], None).await;
    let gate =
        Gate::start(&format!("{SERVER}{}{TIERS}", identity_refreshing(&format!("http://{}/jwks", idp.addr), "1h", "")))
            .await;
    assert_eq!(idp.hits.load(Ordering::SeqCst), 1, "fetched once at start");
    assert_eq!(status(&gate, &rs("k1", "a")).await, 200);

    // The identity provider adds k2; the first k2 token triggers a refresh and is accepted.
    *idp.doc.lock().unwrap() = jwks(&["k1", "k2"]);
    assert_eq!(status(&gate, &rs("k2", "b")).await, 200);
    assert_eq!(idp.hits.load(Ordering::SeqCst), 2);

    // Forged kids cannot make tiergate hammer the provider: at most one refresh per 30 s.
    for i in 0..5 {
        let forged = {
            let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).unwrap()).unwrap();
            sign(Algorithm::RS256, &key, &json!({ "sub": "x", "exp": now() + 600 }), Some(&format!("forged-{i}")))
        };
        assert_eq!(status(&gate, &forged).await, 401);
    }
    assert_eq!(idp.hits.load(Ordering::SeqCst), 2, "unknown-kid refreshes are rate limited");
}

#[tokio::test]
async fn the_timer_refreshes_and_a_failed_refresh_keeps_the_old_keys() {
    let idp = idp(&["k1"], None).await;
    let gate =
        Gate::start(&format!("{SERVER}{}{TIERS}", identity_section(&format!("http://{}/jwks", idp.addr), ""))).await;
    assert_eq!(status(&gate, &rs("k1", "a")).await, 200);

    // The provider breaks: refreshes fail, k1 keeps working.
    idp.status.store(500, Ordering::SeqCst);
    let hits = idp.hits.load(Ordering::SeqCst);
    let start = Instant::now();
    while idp.hits.load(Ordering::SeqCst) < hits + 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "no periodic refresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&gate, &rs("k1", "still-good")).await, 200);
    let m = get(&format!("{}/metrics", gate.admin), &[]).await.body;
    assert!(metric(&m, "tiergate_jwks_refreshes_total", &["result=\"error\""]) >= 2.0);

    // It recovers with k2 only: k1 is retired on the next refresh.
    *idp.doc.lock().unwrap() = jwks(&["k2"]);
    idp.status.store(200, Ordering::SeqCst);
    let start = Instant::now();
    while status(&gate, &rs("k1", &format!("retired-{}", start.elapsed().as_millis()))).await != 401 {
        assert!(start.elapsed() < Duration::from_secs(5), "k1 never retired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&gate, &rs("k2", "new")).await, 200);
}

#[tokio::test]
async fn a_first_fetch_that_fails_is_a_clear_error_unless_a_jwks_file_backs_it() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}/jwks");
    let config = tiergate::config::Config::parse(&format!("{SERVER}{}{TIERS}", identity_section(&url, ""))).unwrap();
    let snapshot = tiergate::snapshot::Snapshot::compile(config, &tiergate::snapshot::Secrets::default()).unwrap();
    let err = tiergate::app::start(snapshot).await.err().expect("must not start without keys");
    assert!(err.to_string().contains("identity.jwks_url: cannot fetch keys from"), "{err}");

    let with_file = identity_section(&url, &format!("jwks_file = \"{}\"", fixture("jwks.json")));
    let gate = Gate::start(&format!("{SERVER}{with_file}{TIERS}")).await;
    assert_eq!(status(&gate, &rs("k1", "fallback")).await, 200);
}

#[tokio::test]
async fn jwks_over_https_with_a_configured_ca() {
    let idp = idp(&["k1"], Some(fixture_acceptor(&[]))).await;
    let url = format!("https://localhost:{}/jwks", idp.addr.port());
    let ca = format!("jwks_ca_file = \"{}\"", fixture("tls_ca.pem"));
    let gate = Gate::start(&format!("{SERVER}{}{TIERS}", identity_section(&url, &ca))).await;
    assert_eq!(status(&gate, &rs("k1", "tls")).await, 200);

    // Without the CA the provider's certificate is not trusted: a clear start-up error.
    let config = tiergate::config::Config::parse(&format!("{SERVER}{}{TIERS}", identity_section(&url, ""))).unwrap();
    let snapshot = tiergate::snapshot::Snapshot::compile(config, &tiergate::snapshot::Secrets::default()).unwrap();
    assert!(tiergate::app::start(snapshot).await.is_err());
}
