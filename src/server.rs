//! Listeners and connections: bind (before anything else runs), accept, serve each connection with
//! hyper-util's auto builder (HTTP/1.1 and h2c on one port), enforce the header-read and idle
//! timeouts, and drain on shutdown within `shutdown_grace`.
//!
//! Timeouts are enforced by one watchdog per connection, from what the connection's head sniffer
//! sees: `header_read_timeout` runs from the accept (first request) or from the first byte of a
//! later request head until the head is complete — past it the connection is dropped; `idle_timeout`
//! runs while no request is in flight and no head is being read — past it the connection is closed
//! gracefully. (hyper's own header timer is off: it also runs while a keep-alive connection idles.)

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limit::{Clock, Limiter, RedisStore, Store};
use crate::proxy::{ConnInfo, Proxy};
use crate::snapshot::Snapshot;

/// How often idle limiter state is dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// tiergate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Store(#[from] crate::limit::redis::StoreError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
}

/// Per-connection activity: requests in flight (idle timeout) and what the head sniffer saw.
pub struct ConnActivity {
    born: Instant,
    active: AtomicUsize,
    /// Milliseconds after `born` at which the last request finished.
    last_ms: AtomicU64,
    /// A request head on this connection carried both `Content-Length` and `Transfer-Encoding`.
    cl_and_te: AtomicBool,
    /// A request finished: the sniffer should read the next request head.
    rearm: AtomicBool,
    /// 1 + milliseconds after `born` at which the request head being read began; 0: none.
    head_since: AtomicU64,
}

impl ConnActivity {
    fn new() -> ConnActivity {
        ConnActivity {
            born: Instant::now(),
            active: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            cl_and_te: AtomicBool::new(false),
            rearm: AtomicBool::new(false),
            // A new connection owes us a request head from the moment it is accepted.
            head_since: AtomicU64::new(1),
        }
    }

    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    pub fn end(&self) {
        self.last_ms.store(self.born.elapsed().as_millis() as u64, Ordering::Release);
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.rearm.store(true, Ordering::Release);
    }

    /// hyper drops `Content-Length` from a request that also has `Transfer-Encoding` before we see
    /// it; the sniffer below remembers that the raw head had both.
    pub fn saw_content_length_with_transfer_encoding(&self) -> bool {
        self.cl_and_te.load(Ordering::Acquire)
    }

    /// When the connection becomes idle-expired if nothing happens; `None`: a request is in flight
    /// or a request head is being read.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 || self.head_since.load(Ordering::Acquire) != 0 {
            return None;
        }
        Some(self.born + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + idle)
    }

    /// When the request head being read must be complete; `None`: no head is being read.
    fn head_deadline(&self, header_read_timeout: Duration) -> Option<Instant> {
        match self.head_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(self.born + Duration::from_millis(since - 1) + header_read_timeout),
        }
    }

    fn mark_head(&self, reading: bool) {
        if reading {
            let now = self.born.elapsed().as_millis() as u64 + 1;
            let _ = self.head_since.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        } else {
            self.head_since.store(0, Ordering::Release);
        }
    }
}

/// A running tiergate: its addresses, and the handle to stop it.
pub struct Server {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    /// The admin listener outlives the drain: it stops when the `Server` is dropped (process exit).
    admin_stop: CancellationToken,
    connections: TaskTracker,
    tasks: TaskTracker,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.admin_stop.cancel();
    }
}

/// Binds both listeners and starts serving `snapshot` with a fresh in-memory store.
pub async fn start(snapshot: Snapshot) -> Result<Server, StartError> {
    start_with_clock(snapshot, Clock::System).await
}

/// Installs the process's one TLS crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn start_with_clock(snapshot: Snapshot, clock: Clock) -> Result<Server, StartError> {
    install_crypto_provider();
    // Remote keys are fetched before any port is bound: a sidecar that cannot verify tokens must
    // not report ready.
    snapshot.prepare().await?;
    let listen = snapshot.config.server.listen;
    let admin_listen = snapshot.config.server.admin_listen;
    let listener = TcpListener::bind(listen).await.map_err(|source| StartError::Bind {
        key: "server.listen",
        addr: listen,
        source,
    })?;
    let admin = TcpListener::bind(admin_listen).await.map_err(|source| StartError::Bind {
        key: "server.admin_listen",
        addr: admin_listen,
        source,
    })?;
    let addr =
        listener.local_addr().map_err(|source| StartError::Bind { key: "server.listen", addr: listen, source })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        key: "server.admin_listen",
        addr: admin_listen,
        source,
    })?;

    let handle = crate::metrics::install();
    let snapshot_redis = snapshot.redis.clone();
    let snapshot_ca = snapshot.config.server.upstream_ca_file.clone();
    let proxy = Arc::new(Proxy {
        snapshot: ArcSwap::from_pointee(snapshot),
        limiter: match &snapshot_redis {
            Some(target) => Limiter::with_store(Store::Redis(RedisStore::start(target)?), clock, target.timeout),
            None => Limiter::memory(clock),
        },
        tier_cache: crate::proxy::TierCache::default(),
        client: crate::forward::client(snapshot_ca.as_deref())
            .map_err(|e| crate::config::ConfigErrors(vec![format!("server.upstream_ca_file: {e}")]))?,
        ready: std::sync::atomic::AtomicBool::new(true),
        tunnels: TaskTracker::new(),
    });
    let shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    let tasks = TaskTracker::new();

    let tls = proxy.snapshot.load().tls.is_some().then(|| crate::tls::acceptor(Arc::clone(&proxy)));
    tasks.spawn(accept_loop(listener, tls, Arc::clone(&proxy), shutdown.clone(), connections.clone()));
    let admin_stop = CancellationToken::new();
    tokio::spawn(crate::admin::serve(admin, Arc::clone(&proxy), handle, admin_stop.clone()));
    let sweeper = Arc::clone(&proxy);
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let dropped = sweeper.limiter.sweep();
                    if dropped > 0 {
                        tracing::debug!(dropped, "idle limiter state dropped");
                    }
                }
            }
        }
    });
    tracing::info!(%addr, %admin_addr, "tiergate listening");
    Ok(Server { addr, admin_addr, proxy, shutdown, admin_stop, connections, tasks })
}

impl Server {
    /// Reloads the config at `path` on change (its directory is watched), every 30 s, and on each
    /// signal `hup` delivers (the process's `SIGHUP` stream, registered early by the caller; `None`:
    /// no signal trigger).
    pub fn watch_config(
        &self,
        path: std::path::PathBuf,
        secrets: crate::snapshot::Secrets,
        hup: Option<tokio::signal::unix::Signal>,
    ) {
        let reloader = crate::reload::Reloader::new(path, secrets, Arc::clone(&self.proxy));
        self.tasks.spawn(reloader.run(self.shutdown.clone(), hup));
    }

    /// Stops accepting, lets in-flight requests finish within the configured `shutdown_grace`.
    pub async fn shutdown(&self) {
        let grace = self.proxy.snapshot.load().config.server.shutdown_grace;
        self.drain(grace).await;
    }

    /// Stops accepting at once (`/readyz` → 503), closes idle connections, waits up to `grace` for
    /// in-flight requests; returns whether everything finished in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.proxy.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        self.connections.close();
        self.proxy.tunnels.close();
        self.tasks.close();
        let everything = async {
            self.connections.wait().await;
            self.proxy.tunnels.wait().await;
        };
        let drained = tokio::time::timeout(grace, everything).await.is_ok();
        if !drained {
            tracing::warn!(?grace, "shutdown grace elapsed with requests still in flight");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        drained
    }
}

async fn accept_loop(
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
                    None => connections.spawn(serve_connection(stream, false, peer, proxy, shutdown)),
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        connections.spawn(async move {
                            // The handshake counts against the header-read budget.
                            let budget = proxy.snapshot.load().config.server.header_read_timeout;
                            match tokio::time::timeout(budget, acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => serve_connection(tls_stream, true, peer, proxy, shutdown).await,
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

async fn serve_connection<S>(stream: S, tls: bool, peer: SocketAddr, proxy: Arc<Proxy>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (header_read_timeout, idle_timeout, max_header_bytes) = {
        let snap = proxy.snapshot.load();
        let s = &snap.config.server;
        (s.header_read_timeout, s.idle_timeout, s.max_header_bytes)
    };
    let activity = Arc::new(ConnActivity::new());
    let info = Arc::new(ConnInfo { peer, tls, activity: Arc::clone(&activity) });
    let service = service_fn(move |req| Arc::clone(&proxy).handle(Arc::clone(&info), req));

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
    let io = SniffedStream { inner: stream, sniffer: HeadSniffer::default(), activity: Arc::clone(&activity) };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);

    let mut closing = false;
    loop {
        let idle_at = activity.idle_deadline(idle_timeout).unwrap_or_else(|| Instant::now() + idle_timeout);
        let head_at = activity.head_deadline(header_read_timeout);
        let wake_at = head_at.map_or(idle_at, |h| h.min(idle_at));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                break;
            }
            _ = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(wake_at) => {
                let now = Instant::now();
                if activity.head_deadline(header_read_timeout).is_some_and(|at| at <= now) {
                    // A head that is not complete in time (slowloris): drop the connection.
                    tracing::debug!(%peer, "request head not complete within header_read_timeout; closing");
                    break;
                }
                if !closing && activity.idle_deadline(idle_timeout).is_some_and(|at| at <= now) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// The client's stream, with a look at each HTTP/1.1 request head as it is read.
///
/// Only request heads are scanned (a few hundred bytes per request, never bodies): after a head
/// ends the sniffer sleeps until the request's response is done. Pipelined heads read together
/// with an earlier body are not scanned; hyper still handles those safely (Transfer-Encoding
/// wins and the connection is closed after the response), only without our 400.
struct SniffedStream<S> {
    inner: S,
    sniffer: HeadSniffer,
    activity: Arc<ConnActivity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for SniffedStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.activity.rearm.swap(false, Ordering::AcqRel) {
            this.sniffer.rearm();
        }
        let fresh = &buf.filled()[before..];
        if this.sniffer.scanning && !fresh.is_empty() {
            this.activity.mark_head(true);
            if this.sniffer.feed(fresh) {
                this.activity.cl_and_te.store(true, Ordering::Release);
            }
            if !this.sniffer.scanning {
                // The head is complete (or the connection turned out to speak h2).
                this.activity.mark_head(false);
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SniffedStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Finds request heads that carry both `Content-Length` and `Transfer-Encoding`.
struct HeadSniffer {
    scanning: bool,
    /// The start of the current line, lowercased (enough to recognise the two header names).
    line: [u8; 18],
    line_len: usize,
    /// Bytes in the current line, excluding CR.
    line_total: usize,
    seen_request_line: bool,
    content_length: bool,
    transfer_encoding: bool,
    /// The connection speaks h2 (it opened with the h2c preface): nothing to sniff, ever.
    http2: bool,
}

impl Default for HeadSniffer {
    fn default() -> Self {
        HeadSniffer {
            scanning: true,
            line: [0; 18],
            line_len: 0,
            line_total: 0,
            seen_request_line: false,
            content_length: false,
            transfer_encoding: false,
            http2: false,
        }
    }
}

impl HeadSniffer {
    fn rearm(&mut self) {
        *self = HeadSniffer { scanning: !self.http2, http2: self.http2, ..HeadSniffer::default() };
    }

    /// Scans bytes; true when a head that just ended carried both framing headers.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut found = false;
        for &b in bytes {
            if !self.scanning {
                break;
            }
            match b {
                b'\n' => {
                    if self.line_total == 0 {
                        if self.seen_request_line {
                            found |= self.content_length && self.transfer_encoding;
                            self.scanning = false;
                        }
                    } else if !self.seen_request_line {
                        self.seen_request_line = true;
                        if self.line[..self.line_len].starts_with(b"pri * http/2.0") {
                            self.http2 = true;
                            self.scanning = false;
                        }
                    } else {
                        let line = &self.line[..self.line_len];
                        self.content_length |= line.starts_with(b"content-length:");
                        self.transfer_encoding |= line.starts_with(b"transfer-encoding:");
                    }
                    self.line_len = 0;
                    self.line_total = 0;
                }
                b'\r' => {}
                _ => {
                    if self.line_len < self.line.len() {
                        self.line[self.line_len] = b.to_ascii_lowercase();
                        self.line_len += 1;
                    }
                    self.line_total += 1;
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::HeadSniffer;

    #[test]
    fn sniffer_finds_both_framing_headers_across_reads() {
        let head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
        for split in 1..head.len() {
            let mut s = HeadSniffer::default();
            let found = s.feed(&head[..split]) | s.feed(&head[split..]);
            assert!(found, "split at {split}");
        }
        let mut s = HeadSniffer::default();
        assert!(!s.feed(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"));
        assert!(!s.scanning, "bodies are not scanned");
        // A header value that merely mentions the other name does not count.
        let mut s = HeadSniffer::default();
        assert!(!s.feed(b"GET / HTTP/1.1\r\nX-Note: content-length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"));
        // h2c: the preface turns the sniffer off for good.
        let mut s = HeadSniffer::default();
        assert!(!s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        s.rearm();
        assert!(!s.scanning);
    }
}
