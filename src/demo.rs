//! `tiergate demo`, and the echo upstream it (and the test suite) proxies to.
//!
//! The echo server answers every request with a JSON description of what it received (method, path,
//! headers, body size), so what tiergate forwarded can be seen and asserted. A few paths act out
//! upstream behaviours: `/slow?ms=N` waits before answering, `/stream?chunks=N&ms=M` streams its body,
//! `/hop` answers with hop-by-hop headers, and an `Upgrade` request is switched and echoed raw.
#![allow(
    clippy::print_stdout,
    reason = "`tiergate demo` prints its addresses, tokens and live summary for the person who ran it"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::body::BoxError;
use crate::config::Config;
use crate::headers::Environment;
use crate::snapshot::{Secrets, Snapshot};

type EchoBody = BoxBody<Bytes, BoxError>;

/// Starts the echo upstream on `listener`; runs until the runtime stops.
pub fn spawn_echo(listener: TcpListener) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = service_fn(|req| async move { Ok::<_, Infallible>(echo(req).await) });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The echo upstream over TLS (tests of `https://` upstreams).
pub fn spawn_echo_tls(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = service_fn(|req| async move { Ok::<_, Infallible>(echo(req).await) });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn full(b: impl Into<Bytes>) -> EchoBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn echo(mut req: Request<Incoming>) -> Response<EchoBody> {
    let path = req.uri().path().to_string();
    if req.headers().contains_key(header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let proto = req.headers().get(header::UPGRADE).cloned().unwrap_or(HeaderValue::from_static("websocket"));
        resp.headers_mut().insert(header::UPGRADE, proto);
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return resp;
    }
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_millis(query_param(&req, "ms").unwrap_or(1000))).await;
    }
    if path.starts_with("/stream") {
        let chunks = query_param(&req, "chunks").unwrap_or(5);
        let gap = Duration::from_millis(query_param(&req, "ms").unwrap_or(100));
        let stream = futures_util::stream::unfold(0u64, move |i| async move {
            if i >= chunks {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            Some((Ok::<_, BoxError>(Frame::data(Bytes::from(format!("chunk {i}\n")))), i + 1))
        });
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return resp;
    }

    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_string);
    let version = format!("{:?}", req.version());
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let entry = headers.entry(name.as_str()).or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(list) = entry {
            list.push(serde_json::Value::from(String::from_utf8_lossy(value.as_bytes()).into_owned()));
        }
    }
    let body_bytes = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => {
            let mut resp = Response::new(full("body stream failed\n"));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return resp;
        }
    };
    let doc = serde_json::json!({
        "method": method, "path": path, "query": query, "version": version,
        "headers": headers, "body_bytes": body_bytes,
    });
    let mut resp = Response::new(full(doc.to_string()));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::SERVER, HeaderValue::from_static("echo/1.0"));
    h.insert("x-powered-by", HeaderValue::from_static("echo"));
    if path.starts_with("/hop") {
        h.insert(header::CONNECTION, HeaderValue::from_static("x-upstream-hop"));
        h.insert("x-upstream-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Basic"));
    }
    resp
}

/// What `tiergate demo` needs to know.
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
}

/// The demo's config: the repository's `config.toml` (compiled in), pointed at the echo upstream,
/// in development mode.
pub fn demo_config(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    upstream: SocketAddr,
) -> Result<Config, crate::config::ConfigErrors> {
    let mut config = Config::parse(include_str!("../config.toml"))?;
    config.server.listen = listen;
    config.server.admin_listen = admin_listen;
    config.server.environment = Environment::Development;
    config.server.shutdown_grace = Duration::from_secs(2);
    config.server.upstream = format!("http://{upstream}")
        .parse()
        .map_err(|_| crate::config::ConfigErrors(vec!["server.upstream: bad demo address".into()]))?;
    Ok(config)
}

/// A demo secret: `JWT_SECRET_KEY` when set, else one made up for this run.
pub fn demo_secret(secrets: &Secrets, env_name: &str) -> String {
    if let Some(s) = secrets.get(env_name).filter(|s| !s.is_empty()) {
        return s;
    }
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::from("demo-");
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Runs the demo until Ctrl-C. Prints the address, a token per tier and curl lines.
pub async fn run(opts: DemoOptions) -> Result<(), Box<dyn std::error::Error>> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let upstream = echo.local_addr()?;
    spawn_echo(echo);

    let config = demo_config(opts.listen, opts.admin_listen, upstream)?;
    let env_name = config.identity.jwt_secret_env.clone();
    let secret = demo_secret(&Secrets::from_env(), &env_name);
    let secrets = Secrets::from_env().with(&env_name, &secret);
    let tiers: Vec<String> = config.tiers.iter().map(|t| t.name.clone()).collect();
    // Show the 429 with the tier that has the smallest per-minute api budget.
    let (show_tier, show_n) = config
        .tiers
        .iter()
        .filter(|t| t.api_calls_per_minute >= 0)
        .min_by_key(|t| t.api_calls_per_minute)
        .map_or((tiers.first().cloned().unwrap_or_default(), 20), |t| (t.name.clone(), t.api_calls_per_minute + 5));
    crate::app::install_process_globals();
    let table = crate::snapshot::describe(&config);
    let snapshot = Snapshot::compile(config, &secrets)?;
    // The demo prints its own summary on stdout; no access-log lines in between.
    let server = match crate::app::start_with(
        snapshot,
        crate::limit::Clock::System,
        crate::access::AccessLog::disabled(),
    )
    .await
    {
        Ok(s) => s,
        Err(e @ crate::app::StartError::Bind { .. }) => {
            return Err(format!("{e}\n(another program has this port: pick another with `tiergate demo --listen 127.0.0.1:PORT --admin-listen 127.0.0.1:PORT`)").into());
        }
        Err(e) => return Err(e.into()),
    };
    let base = format!("http://{}", server.addr);
    println!("tiergate demo: proxy on {base}  (admin: http://{}/metrics)", server.admin_addr);
    println!("upstream: built-in echo server on {upstream}; store: in memory\n");
    println!("{table}");
    println!("tokens (valid 1h):");
    for tier in &tiers {
        let token = crate::identity::mint_hs256(
            secret.as_bytes(),
            &format!("demo-{tier}"),
            tier,
            Duration::from_secs(3600),
            None,
            None,
        )?;
        println!("  export {}_TOKEN={token}", tier.to_uppercase());
    }
    let t = show_tier.to_uppercase();
    println!("\ntry:");
    println!("  # 200, with X-RateLimit-* and RateLimit headers:");
    println!("  curl -i -H \"Authorization: Bearer ${t}_TOKEN\" {base}/api/v1/items");
    println!("  # 429 once the per-minute api budget is spent:");
    println!(
        "  for i in $(seq 1 {show_n}); do curl -s -o /dev/null -w '%{{http_code}} ' -H \"Authorization: Bearer ${t}_TOKEN\" {base}/api/v1/items; done; echo"
    );
    println!("  # 401 for a token that does not verify:");
    println!("  curl -i -H 'Authorization: Bearer not.a.token' {base}/api/v1/items");
    println!("  # anonymous callers are limited by IP:");
    println!("  curl -i {base}/dashboard");
    println!("\nCtrl-C stops the demo. A summary line follows every 5 s while traffic flows.");

    let summary = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut last = String::new();
        loop {
            tick.tick().await;
            let line = summary_line(&crate::metrics::install().render());
            if !line.is_empty() && line != last {
                println!("{line}");
                last = line;
            }
        }
    });
    tokio::signal::ctrl_c().await?;
    summary.abort();
    server.drain(Duration::from_secs(2)).await;
    Ok(())
}

/// One line per tier from a `/metrics` scrape: requests, allowed and refused so far.
pub fn summary_line(scrape: &str) -> String {
    let mut tiers: Vec<(String, u64, u64)> = Vec::new();
    for line in scrape.lines().filter(|l| l.starts_with("tiergate_requests_total{")) {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\"")).map(|i| i + name.len() + 2)?;
            let end = line[start..].find('"')? + start;
            Some(line[start..end].to_string())
        };
        let (Some(tier), Some(decision)) = (label("tier"), label("decision")) else { continue };
        let Some(count) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let count = count as u64;
        if count == 0 {
            continue;
        }
        let entry = match tiers.iter_mut().position(|t| t.0 == tier) {
            Some(i) => &mut tiers[i],
            None => {
                tiers.push((tier, 0, 0));
                let last = tiers.len() - 1;
                &mut tiers[last]
            }
        };
        match decision.as_str() {
            "allowed" | "exempt" | "shadow_limited" => entry.1 += count,
            _ => entry.2 += count,
        }
    }
    tiers
        .iter()
        .map(|(tier, ok, refused)| format!("{tier}: {} requests, {ok} allowed, {refused} refused", ok + refused))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_counts_allowed_and_refused_per_tier() {
        let scrape = "# HELP x\ntiergate_requests_total{tier=\"free\",class=\"api\",decision=\"allowed\"} 20\n\
                      tiergate_requests_total{tier=\"free\",class=\"api\",decision=\"limited\"} 5\n\
                      tiergate_requests_total{tier=\"pro\",class=\"general\",decision=\"allowed\"} 0\n\
                      tiergate_requests_total{tier=\"none\",class=\"api\",decision=\"unauthorized\"} 1\n";
        assert_eq!(
            super::summary_line(scrape),
            "free: 25 requests, 20 allowed, 5 refused | none: 1 requests, 0 allowed, 1 refused"
        );
    }
}
