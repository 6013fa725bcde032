//! Listeners' accept loop and each connection's life: a connection (plain, or TLS without h2 by
//! ALPN) starts on tiergate's own HTTP/1.1 path (`h1.rs`), which hands it here at the first request
//! it does not take; here it is served with hyper-util's auto builder
//! (HTTP/1.1 and h2c on one port, h2/HTTP/1.1 by ALPN over TLS), hand every request to the proxy,
//! enforce the header-read and idle timeouts, report the heads hyper refuses itself (to the proxy,
//! which counts and logs them; the connection's stream answers them, `conn.rs`), and close
//! gracefully on shutdown. Building the parts and draining them is the composition root's (`app.rs`).
//!
//! Timeouts are enforced by one watchdog timer per connection, from what the connection's framing
//! sniffer sees (`conn.rs`): `header_read_timeout` runs from the accept (first request) or from the first
//! byte of a later request head until the head is complete — past it the connection is dropped;
//! `idle_timeout` runs while no request is in flight and no head is being read — past it the
//! connection is closed gracefully. (hyper's own header timer is off: it also runs while a
//! keep-alive connection idles.) The settings are read from the snapshot current at accept time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{ConnActivity, ConnInfo, SniffedStream};
use crate::h1;
use crate::proxy::Proxy;

/// Accepts until `shutdown`, serving each connection as a task in `connections`.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let (proxy, shutdown) = (Arc::clone(&proxy), shutdown.clone());
                match &tls {
                    None => connections.spawn(serve_plain(stream, peer, proxy, shutdown)),
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        connections.spawn(async move {
                            // The handshake counts against the header-read budget.
                            let budget = proxy.snapshot.load().conn.header_read_timeout;
                            match tokio::time::timeout(budget, acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => serve_tls(tls_stream, peer, proxy, shutdown).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        })
                    }
                };
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A plain connection: tiergate's own HTTP/1.1 path (`h1.rs`) while its requests are ones that
/// path takes, then hyper's for the rest of its life. An `https://` upstream is hyper's throughout.
async fn serve_plain(stream: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>, shutdown: CancellationToken) {
    serve_h1_first(stream, false, peer, proxy, shutdown).await;
}

/// A TLS connection: hyper's when the client chose h2 by ALPN, else as a plain one.
async fn serve_tls(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
) {
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        return serve_connection(stream, true, peer, proxy, shutdown).await;
    }
    serve_h1_first(stream, true, peer, proxy, shutdown).await;
}

async fn serve_h1_first<S>(stream: S, tls: bool, peer: SocketAddr, proxy: Arc<Proxy>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if proxy.snapshot.load().upstream_scheme != http::uri::Scheme::HTTP {
        return serve_connection(stream, tls, peer, proxy, shutdown).await;
    }
    if let Some(h1::Handover { stream, read }) =
        h1::serve(stream, peer, tls, Arc::clone(&proxy), shutdown.clone()).await
    {
        serve_connection(h1::Prefixed::new(read.freeze(), stream), tls, peer, proxy, shutdown).await;
    }
}

async fn serve_connection<S>(stream: S, tls: bool, peer: SocketAddr, proxy: Arc<Proxy>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (header_read_timeout, idle_timeout, max_header_bytes, answers) = {
        let snap = proxy.snapshot.load();
        let c = &snap.conn;
        (c.header_read_timeout, c.idle_timeout, c.max_header_bytes, Arc::clone(&snap.codec_answers))
    };
    let activity = Arc::new(ConnActivity::new());
    let info = Arc::new(ConnInfo::new(peer, tls, Arc::clone(&activity)));
    let service = {
        let (proxy, info) = (Arc::clone(&proxy), Arc::clone(&info));
        service_fn(move |req| Arc::clone(&proxy).handle(Arc::clone(&info), req))
    };

    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header-read timeout is enforced below from what the sniffer sees: hyper's own timer would
    // also run while an idle keep-alive connection waits, closing it long before idle_timeout.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).max_buf_size(max_header_bytes).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let io = SniffedStream::new(stream, Arc::clone(&activity), answers);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);

    // One timer for the connection's life, re-armed only when it fires: it fires at least every
    // `header_read_timeout`, so a head that starts between two firings is seen at the next one and
    // its deadline armed exactly. Nothing is re-armed per request.
    let watchdog = tokio::time::sleep(header_read_timeout.min(idle_timeout));
    let cancelled = shutdown.cancelled();
    tokio::pin!(watchdog, cancelled);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                    if let Some(status) = e.downcast_ref::<hyper::Error>().and_then(codec_refusal) {
                        proxy.refused_by_codec(&info, status, activity.head_started_at().map(Instant::into_std));
                    }
                }
                break;
            }
            _ = &mut cancelled, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = watchdog.as_mut() => {
                let now = Instant::now();
                let head_at = activity.head_deadline(header_read_timeout);
                if head_at.is_some_and(|at| at <= now) {
                    // A head that is not complete in time (slowloris): drop the connection.
                    tracing::debug!(%peer, "request head not complete within header_read_timeout; closing");
                    break;
                }
                let idle_at = activity.idle_deadline(idle_timeout);
                if !closing && idle_at.is_some_and(|at| at <= now) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                let next = [head_at, idle_at.filter(|_| !closing)]
                    .into_iter()
                    .flatten()
                    .fold(now + header_read_timeout.min(idle_timeout), Instant::min);
                watchdog.as_mut().reset(next);
            }
        }
    }
}

/// The status hyper answered a request it could not parse with, when it answered one: it writes
/// 400, 414 or 431 itself (`hyper::proto::h1::role::Server::on_error`; the connection's stream sends
/// tiergate's decorated answer in its place) and then ends the connection with the parse error.
/// Other parse errors end it without an answer.
fn codec_refusal(e: &hyper::Error) -> Option<u16> {
    if !e.is_parse() || e.is_parse_status() || e.is_parse_version_h2() {
        return None;
    }
    // The kinds are not public; their descriptions are hyper's own fixed texts.
    let text = e.to_string();
    if e.is_parse_too_large() {
        return Some(if text.contains("URI") { 414 } else { 431 });
    }
    // `Parse::Internal` ("internal error inside Hyper …") gets no automatic answer.
    (!text.contains("internal error")).then_some(400)
}
