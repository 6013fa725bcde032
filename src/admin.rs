//! The admin listener (`server.admin_listen`, never proxied): `/metrics`, `/healthz`, `/readyz`.
//!
//! `/readyz` is 200 while the proxy accepts traffic and 503 once draining; it never depends on the
//! storage backend being up (a sidecar must not fail readiness because Redis blinked).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;

const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn serve(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    metrics: &'static PrometheusHandle,
    stop: CancellationToken,
) {
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            _ = upkeep.tick() => { metrics.run_upkeep(); continue; }
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ready = ready.load(Ordering::Acquire);
                async move { Ok::<_, Infallible>(respond(ready, metrics, &req)) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(10));
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn respond(ready: bool, metrics: &PrometheusHandle, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = Response::new(ProxyBody::bytes(metrics.render()));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::bytes(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
