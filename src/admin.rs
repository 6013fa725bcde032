//! The admin listener (`server.admin_listen`, never proxied): `/metrics`, `/healthz`, `/readyz`, and
//! the operator's view of the limits: `GET /limits/top` (who is refused most), `GET /limits/KEY`
//! (one identity's windows, read without consuming) and `DELETE /limits/KEY` (clear them; needs the
//! bearer token named by `server.admin_token_env`, compared in constant time; 404 without one).
//!
//! `/readyz` is 200 while the proxy accepts traffic and 503 once draining; it never depends on the
//! storage backend being up (a sidecar must not fail readiness because Redis blinked). The limit
//! endpoints run through the same `Limiter` as requests, so they cannot disagree with it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::identity::IdentityKey;
use crate::limit::Limiter;
use crate::snapshot::Snapshot;
use crate::top::Top;

const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Most identities `/limits/top` lists.
const TOP_MAX: usize = 1_000;

/// What the admin port reads: narrow handles to the parts it reports on.
pub struct Operator {
    pub ready: Arc<AtomicBool>,
    pub metrics: &'static PrometheusHandle,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub limiter: Arc<Limiter>,
    pub top: Arc<Top>,
}

pub async fn serve(listener: TcpListener, operator: Arc<Operator>, stop: CancellationToken) {
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            _ = upkeep.tick() => { operator.metrics.run_upkeep(); continue; }
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else { continue };
        let operator = Arc::clone(&operator);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let operator = Arc::clone(&operator);
                async move { Ok::<_, Infallible>(respond(&operator, peer, &req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(10));
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn respond(op: &Operator, peer: SocketAddr, req: &Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/limits/") {
        return limits(op, peer, req, rest).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match path {
        "/metrics" => {
            let mut resp = Response::new(ProxyBody::bytes(op.metrics.render()));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            resp
        }
        "/" => status_page(op),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if op.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz, /readyz or /limits/top\n"),
    }
}

/// `/limits/top`, `/limits/KEY`.
async fn limits(op: &Operator, peer: SocketAddr, req: &Request<Incoming>, rest: &str) -> Response<ProxyBody> {
    let query = req.uri().query().unwrap_or("");
    if rest == "top" {
        if req.method() != Method::GET {
            return problem(StatusCode::METHOD_NOT_ALLOWED, "Only GET.");
        }
        let n = match param(query, "n") {
            None => 20,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=TOP_MAX).contains(&n) => n,
                _ => return problem(StatusCode::BAD_REQUEST, "n: expected a whole number from 1 to 1000."),
            },
        };
        let (since, entries) = op.top.top(n);
        let top: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| json!({"key": e.key.to_string(), "tier": &*e.tier, "refused": e.refused, "allowed": e.allowed}))
            .collect();
        return json_response(StatusCode::OK, &json!({ "since": since, "top": top }));
    }
    let Some(key) = percent_decode(rest).as_deref().and_then(IdentityKey::parse) else {
        return problem(StatusCode::BAD_REQUEST, "Expected an identity key like user:42 or ip:10.0.0.7.");
    };
    let snap = op.snapshot.load_full();
    let reset = match *req.method() {
        Method::GET => false,
        Method::DELETE => {
            let Some(expected) = &snap.admin_token else {
                return problem(StatusCode::NOT_FOUND, "The admin port is read-only: no admin token is configured.");
            };
            if !bearer_matches(req, expected) {
                let mut resp = problem(StatusCode::UNAUTHORIZED, "DELETE needs the admin bearer token.");
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return resp;
            }
            true
        }
        _ => return problem(StatusCode::METHOD_NOT_ALLOWED, "GET or DELETE."),
    };
    let tier = match param(query, "tier") {
        Some(name) => match snap.tiers.iter().find(|t| *t.name == *name) {
            Some(t) => t,
            None => {
                let names: Vec<&str> = snap.tiers.iter().map(|t| &*t.name).collect();
                return problem(
                    StatusCode::BAD_REQUEST,
                    &format!("tier: {name:?} is not a tier ({}).", names.join(", ")),
                );
            }
        },
        None => match op.top.last_tier(&key).and_then(|name| snap.tiers.iter().find(|t| t.name == name)) {
            Some(t) => t,
            None => {
                return problem(
                    StatusCode::NOT_FOUND,
                    "This replica has not seen that identity; name its tier with ?tier=.",
                );
            }
        },
    };
    let plan = &tier.quota_plan;
    if reset {
        if op.limiter.reset(&key, plan).await.is_err() {
            return problem(StatusCode::SERVICE_UNAVAILABLE, "The limit store cannot be reached; nothing was cleared.");
        }
        tracing::warn!(key = %key, tier = &*tier.name, remote = %peer, "limits reset from the admin port");
    }
    let decision = if plan.is_unlimited() {
        crate::limit::Decision::unchecked(op.limiter.local().clock().now_ms())
    } else {
        match op.limiter.peek(&key, plan).await {
            Ok(d) => d,
            Err(_) => return problem(StatusCode::SERVICE_UNAVAILABLE, "The limit store cannot be reached."),
        }
    };
    let mut body = crate::limit::windows_json(plan, &decision);
    body.insert("key".into(), serde_json::Value::from(key.to_string()));
    body.insert("tier".into(), serde_json::Value::from(&*tier.name));
    if reset {
        body.insert("reset".into(), serde_json::Value::Bool(true));
    }
    json_response(StatusCode::OK, &serde_json::Value::Object(body))
}

/// The status page: one self-contained HTML file (no external assets) that refreshes itself from
/// `/metrics` and `/limits/top`; the loaded config's tier table is filled in here.
const STATUS_PAGE: &str = include_str!("status.html");

fn status_page(op: &Operator) -> Response<ProxyBody> {
    let snap = op.snapshot.load();
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut rows = String::new();
    for tier in &snap.tiers {
        let plan = &tier.quota_plan;
        if plan.windows.is_empty() && plan.concurrency.is_none() {
            rows.push_str(&format!(
                "<tr><td>{}</td><td class=\"l\">unlimited</td><td></td><td></td></tr>\n",
                escape(&tier.name)
            ));
        }
        for w in &plan.windows {
            rows.push_str(&format!(
                "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&tier.name),
                escape(&w.name),
                w.limit,
                crate::config::format_duration(std::time::Duration::from_millis(w.window_ms))
            ));
        }
        if let Some(c) = plan.concurrency {
            rows.push_str(&format!(
                "<tr><td>{}</td><td class=\"l\">concurrent</td><td>{c}</td><td>in flight</td></tr>\n",
                escape(&tier.name)
            ));
        }
    }
    let mut resp = Response::new(ProxyBody::bytes(STATUS_PAGE.replace("<!--TIERS-->", &rows)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Self-contained: scripts and styles from the page itself, data from this origin only.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    resp
}

/// `Authorization: Bearer <expected>`, compared in constant time.
fn bearer_matches(req: &Request<Incoming>, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(value) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some((scheme, token)) = value.split_once(' ') else { return false };
    scheme.eq_ignore_ascii_case("bearer") && bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes()))
}

fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// `%XX` escapes decoded (the key is percent-encoded in the path); `None` if that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::bytes(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn problem(status: StatusCode, detail: &str) -> Response<ProxyBody> {
    let mut resp = json_response(status, &crate::error::problem(status, detail));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::bytes(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
