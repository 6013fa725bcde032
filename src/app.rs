//! The composition root: builds every long-lived part from the first snapshot (the limiter and its
//! store, the upstream client, the proxy), binds the listeners, starts the accept loop (one per
//! worker thread, thread per core), the admin listener, the idle sweeper and the config reloader,
//! and drains them on shutdown.
//!
//! The process shell (`main.rs`, the demo, the tests) calls [`install_process_globals`] once,
//! before compiling a snapshot: compiling has no global side effects of its own, and the metric
//! handles a snapshot resolves count into the recorder installed here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::AccessLog;
use crate::limit::{Clock, Limiter, RedisStore, Store};
use crate::proxy::{Proxy, TierCache};
use crate::snapshot::{Secrets, Snapshot};
use crate::top::Top;

/// How often idle limiter state is dropped, and idle upstream connections past their time closed.
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
    #[error("cannot start worker thread {worker}: {source}")]
    Worker {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Store(#[from] crate::limit::redis::StoreError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
}

/// The process-wide state other libraries read: the rustls crypto provider (ring) and the metrics
/// recorder. Idempotent; returns the handle `/metrics` renders from.
pub fn install_process_globals() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::metrics::install()
}

/// A running tiergate: its addresses, and the handle to stop it.
pub struct App {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    /// The admin listener outlives the drain: it stops when the `App` is dropped (process exit).
    admin_stop: CancellationToken,
    connections: TaskTracker,
    /// The accept loops, every worker's: a drain waits for all of them to have stopped accepting.
    listeners: TaskTracker,
    tasks: TaskTracker,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.admin_stop.cancel();
    }
}

/// Binds both listeners and starts serving `snapshot` on the calling runtime; the access log goes
/// to stdout.
pub async fn start(snapshot: Snapshot) -> Result<App, StartError> {
    start_with(snapshot, Clock::System, AccessLog::stdout()).await
}

/// As [`start`], with the limiter's clock (tests move it) and the access log's sink.
pub async fn start_with(snapshot: Snapshot, clock: Clock, access: AccessLog) -> Result<App, StartError> {
    start_workers(snapshot, clock, access, 0).await
}

/// As [`start_with`], thread per core: besides the calling runtime (a current-thread one, which
/// also runs the admin port, the sweeper, the reloader and the store's connections), `extra`
/// threads each run a current-thread runtime of their own with their own listener on the same
/// address (`SO_REUSEPORT`: the kernel spreads connections over them) and their own upstream
/// connections. A connection lives on the thread that accepted it; nothing is stolen or handed over.
pub async fn start_workers(
    snapshot: Snapshot,
    clock: Clock,
    access: AccessLog,
    extra: usize,
) -> Result<App, StartError> {
    let metrics = install_process_globals();
    // Remote keys are fetched before any port is bound: a sidecar that cannot verify tokens must
    // not report ready.
    snapshot.prepare().await?;
    let startup = snapshot.startup.clone();
    let bind = |key: &'static str, addr: SocketAddr, shared: bool| async move {
        let listener = if shared { bind_shared(addr) } else { TcpListener::bind(addr).await };
        let listener = listener.map_err(|source| StartError::Bind { key, addr, source })?;
        let local = listener.local_addr().map_err(|source| StartError::Bind { key, addr, source })?;
        Ok::<_, StartError>((listener, local))
    };
    let (listener, addr) = bind("server.listen", startup.listen, extra > 0).await?;
    let (admin, admin_addr) = bind("server.admin_listen", startup.admin_listen, false).await?;

    let limiter = match &startup.storage {
        Some(target) => {
            let store = RedisStore::start_with_offset(target, clock.redis_offset())?;
            Limiter::with_store(Store::Redis(store), clock, target.timeout)
        }
        None => Limiter::memory(clock),
    };
    let client = crate::forward::client(startup.upstream_ca_file.as_deref())
        .map_err(|e| crate::config::ConfigErrors(vec![format!("server.upstream_ca_file: {e}")]))?;
    if snapshot.admin_token.is_none() {
        let env = &snapshot.admin_token_env;
        if env.is_empty() {
            tracing::info!("server.admin_token_env is not set: the admin port is read-only");
        } else {
            tracing::warn!(variable = %env, "the admin token variable is unset or empty: the admin port is read-only");
        }
    }
    let proxy = Arc::new(Proxy {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        limiter: Arc::new(limiter),
        top: Arc::new(Top::default()),
        tier_cache: TierCache::default(),
        client,
        ready: Arc::new(AtomicBool::new(true)),
        tunnels: TaskTracker::new(),
        access,
    });
    let shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    let listeners = TaskTracker::new();
    let tasks = TaskTracker::new();

    let tls = startup.tls.then(|| {
        let cell = Arc::clone(&proxy.snapshot);
        crate::tls::acceptor(Arc::new(move || cell.load().tls.clone()))
    });
    let admin_stop = CancellationToken::new();
    for worker in 1..=extra {
        let parts = (
            tls.clone(),
            Arc::clone(&proxy),
            shutdown.clone(),
            connections.clone(),
            listeners.clone(),
            admin_stop.clone(),
        );
        spawn_worker(worker, addr, parts).await?;
    }
    listeners.spawn(crate::server::accept_loop(
        listener,
        tls,
        Arc::clone(&proxy),
        shutdown.clone(),
        connections.clone(),
    ));
    let operator = crate::admin::Operator {
        ready: Arc::clone(&proxy.ready),
        metrics,
        snapshot: Arc::clone(&proxy.snapshot),
        limiter: Arc::clone(&proxy.limiter),
        top: Arc::clone(&proxy.top),
    };
    tokio::spawn(crate::admin::serve(admin, Arc::new(operator), admin_stop.clone()));
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
                    let closed = sweeper.client.sweep();
                    if closed > 0 {
                        tracing::debug!(closed, "idle upstream connections closed");
                    }
                }
            }
        }
    });
    // Quota batching: ended reservations go back, and idle pooled slots are released, within a
    // quarter of quota_batch_ttl of ending (the TTL is read per tick: a reload may change it).
    let returner = Arc::clone(&proxy);
    let stop = shutdown.clone();
    tasks.spawn(async move {
        loop {
            let batching = returner.snapshot.load().quota_batch;
            let every = (batching.ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => returner.limiter.return_expired(batching, false).await,
            }
        }
    });
    tracing::info!(%addr, %admin_addr, "tiergate listening");
    Ok(App { addr, admin_addr, proxy, shutdown, admin_stop, connections, listeners, tasks })
}

/// A listener on `addr` that other listeners may share (`SO_REUSEPORT`; Linux lets only the same
/// user's sockets join).
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

type WorkerParts =
    (Option<tokio_rustls::TlsAcceptor>, Arc<Proxy>, CancellationToken, TaskTracker, TaskTracker, CancellationToken);

/// Starts worker thread `n`: its own current-thread runtime and listener on `addr`, serving until
/// shutdown, then driving its connections until the `App` is dropped. Returns once it listens.
async fn spawn_worker(n: usize, addr: SocketAddr, parts: WorkerParts) -> Result<(), StartError> {
    let (tls, proxy, shutdown, connections, listeners, stop) = parts;
    let failed = |source| StartError::Bind { key: "server.listen", addr, source };
    let no_thread = |source| StartError::Worker { worker: n, source };
    let (listening, ready) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(no_thread)?;
    std::thread::Builder::new()
        .name(format!("tiergate-worker-{n}"))
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match bind_shared(addr) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = listening.send(Err(e));
                        return;
                    }
                };
                // Tracked before it says it listens: a drain that follows waits for this loop too.
                let accepting =
                    listeners.track_future(crate::server::accept_loop(listener, tls, proxy, shutdown, connections));
                let _ = listening.send(Ok(()));
                accepting.await;
                // The connections this thread accepted run here: keep turning until the end.
                stop.cancelled().await;
            });
        })
        .map_err(no_thread)?;
    match ready.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(no_thread(std::io::Error::other("it ended before it listened"))),
    }
}

impl App {
    /// Reloads the config at `path` on change (its directory is watched), every 30 s, and on each
    /// signal `hup` delivers (the process's `SIGHUP` stream, registered early by the caller; `None`:
    /// no signal trigger).
    pub fn watch_config(&self, path: std::path::PathBuf, secrets: Secrets, hup: Option<tokio::signal::unix::Signal>) {
        let reloader = crate::reload::Reloader::new(path, secrets, Arc::clone(&self.proxy.snapshot));
        self.tasks.spawn(reloader.run(self.shutdown.clone(), hup));
    }

    /// Stops accepting, lets in-flight requests finish within the configured `shutdown_grace`.
    pub async fn shutdown(&self) {
        let grace = self.proxy.snapshot.load().conn.shutdown_grace;
        self.drain(grace).await;
    }

    /// Stops accepting at once (`/readyz` → 503), closes idle connections, waits up to `grace` for
    /// in-flight requests; returns whether everything finished in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.proxy.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        self.listeners.close();
        self.connections.close();
        self.proxy.tunnels.close();
        self.tasks.close();
        let everything = async {
            // Every worker's listener closed first: no connection is accepted after this.
            self.listeners.wait().await;
            self.connections.wait().await;
            self.proxy.tunnels.wait().await;
        };
        let drained = tokio::time::timeout(grace, everything).await.is_ok();
        if !drained {
            tracing::warn!(?grace, "shutdown grace elapsed with requests still in flight");
        }
        // Every reservation ends at drain: its unspent units and idle slots go back to Redis.
        let batching = self.proxy.snapshot.load().quota_batch;
        let held = self.proxy.limiter.reserved_units();
        self.proxy.limiter.return_expired(batching, true).await;
        if held > 0 {
            tracing::info!(units = held, "reserved units returned at drain");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        drained
    }
}
