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
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{ConnActivity, ConnInfo, SniffedStream};
use crate::limit::{Clock, Limiter, RedisStore, Store};
use crate::proxy::Proxy;
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
    let io = SniffedStream::new(stream, Arc::clone(&activity));
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
