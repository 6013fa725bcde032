//! The upstream connections: a pool of HTTP/1.1 connections (hyper's `client::conn::http1`) that
//! `forward` sends on, and the response body (`body.rs`) hands back when it has been read to its end.
//!
//! Why not hyper-util's legacy client: per request it clones the connector, hashes a pool key,
//! takes the pool's shared lock twice, and spawns a task that waits for the connection to become
//! idle again. Here a sender is taken from the calling thread's own shard (a lock nobody else takes
//! while a worker owns its thread), used, and put back by the body that read the response to its
//! end; no task, no hashing.
//!
//! What it keeps from the legacy client:
//! - **keep-alive:** idle connections are reused newest first, at most [`MAX_IDLE_PER_SHARD`] per
//!   thread; one idle past [`IDLE_TIMEOUT`] is closed (when it is next looked at, or by [`Pool::sweep`]);
//! - **retry on a stale connection:** when a reused connection turns out closed before the request
//!   was written (the upstream closed it while idle), the request goes out on another connection.
//!   A request already written is never sent twice;
//! - a connection whose response was not read to its end, or that was upgraded, is never reused.
//!
//! The request's URI must be in origin form (`/path?query`) with a `Host` header; where it goes is
//! the [`Target`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

/// Idle connections kept per thread (per worker, when each worker owns a thread).
pub const MAX_IDLE_PER_SHARD: usize = 256;
/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Shards: threads map onto them round-robin, so up to this many workers never share one.
const SHARDS: usize = 16;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Where a request goes: scheme and authority (the URI itself is origin-form).
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub scheme: &'a Scheme,
    pub authority: &'a Authority,
}

/// Why no response head came back.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, TLS handshake, connect timeout).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection broke, or the response was malformed; the source chain says why.
    Http(hyper::Error),
}

/// The upstream connection pool (cheap to share: clones share the connections).
pub struct Pool<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool { inner: Arc::clone(&self.inner) }
    }
}

struct Inner<B> {
    connector: Connector,
    shards: [Mutex<Vec<Idle<B>>>; SHARDS],
}

struct Idle<B> {
    scheme: Scheme,
    authority: Authority,
    tx: SendRequest<B>,
    since: Instant,
}

/// A connection whose response is being read: [`Pooled::give_back`] once it has been read to its
/// end; dropping it instead closes the connection.
pub struct Pooled<B> {
    idle: Idle<B>,
    pool: Arc<Inner<B>>,
}

impl<B> Pooled<B> {
    /// The response was read to its end: the connection is free for the next request.
    pub fn give_back(self) {
        let Pooled { mut idle, pool } = self;
        if idle.tx.is_closed() {
            return;
        }
        idle.since = Instant::now();
        let mut shard = pool.shard();
        if shard.len() >= MAX_IDLE_PER_SHARD {
            shard.remove(0); // the oldest
        }
        shard.push(idle);
    }
}

fn shard_index() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl<B> Inner<B> {
    fn shard(&self) -> std::sync::MutexGuard<'_, Vec<Idle<B>>> {
        // Idle senders cannot be left half-updated by a panic: keep using the list.
        self.shards[shard_index()].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest idle connection to `to` that is open and ready; closed or expired ones met on the
    /// way are dropped.
    fn checkout(&self, to: Target<'_>) -> Option<Idle<B>> {
        let mut shard = self.shard();
        let mut at = shard.len();
        while at > 0 {
            at -= 1;
            let idle = &shard[at];
            if idle.scheme != *to.scheme || idle.authority != *to.authority {
                continue;
            }
            if idle.tx.is_closed() || idle.since.elapsed() > IDLE_TIMEOUT {
                shard.remove(at);
                continue;
            }
            // Not ready: its previous response is still being read off the socket; leave it.
            if idle.tx.is_ready() {
                return Some(shard.remove(at));
            }
        }
        None
    }
}

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(connector: Connector) -> Pool<B> {
        Pool { inner: Arc::new(Inner { connector, shards: std::array::from_fn(|_| Mutex::new(Vec::new())) }) }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `to`, on an idle connection when there is one.
    /// The response comes with its connection, to be given back once the body has been read.
    pub async fn send(
        &self,
        to: Target<'_>,
        mut req: Request<B>,
    ) -> Result<(Response<Incoming>, Pooled<B>), SendError> {
        // Reused connections first; each one found closed before the request went out is skipped.
        while let Some(mut idle) = self.inner.checkout(to) {
            match idle.tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Pooled { idle, pool: Arc::clone(&self.inner) })),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        // Boxed: connecting is rare and its future large; inline, it would be moved with every
        // request's future.
        let mut idle = Box::pin(self.connect(to)).await?;
        match idle.tx.send_request(req).await {
            Ok(resp) => Ok((resp, Pooled { idle, pool: Arc::clone(&self.inner) })),
            Err(e) => Err(SendError::Http(e)),
        }
    }

    async fn connect(&self, to: Target<'_>) -> Result<Idle<B>, SendError> {
        let uri = Uri::builder()
            .scheme(to.scheme.clone())
            .authority(to.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let mut connector = self.inner.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(SendError::Connect)?;
        let io = connector.call(uri).await.map_err(SendError::Connect)?;
        let (tx, conn) =
            hyper::client::conn::http1::Builder::new().handshake(io).await.map_err(|e| SendError::Connect(e.into()))?;
        // The connection runs as its own task until it closes (upgrades pass through it).
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Idle { scheme: to.scheme.clone(), authority: to.authority.clone(), tx, since: Instant::now() })
    }

    /// Closes idle connections past [`IDLE_TIMEOUT`] or already closed, in every shard.
    pub fn sweep(&self) -> usize {
        self.sweep_at(Instant::now())
    }

    /// [`Pool::sweep`] as of `now`: tests move time forward with it instead of waiting 90 s.
    pub fn sweep_at(&self, now: Instant) -> usize {
        let mut dropped = 0;
        for shard in &self.inner.shards {
            let mut shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let before = shard.len();
            shard.retain(|idle| !idle.tx.is_closed() && now.saturating_duration_since(idle.since) <= IDLE_TIMEOUT);
            dropped += before - shard.len();
        }
        dropped
    }
}
