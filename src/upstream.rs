//! The upstream connections: a pool of HTTP/1.1 connections that `forward` sends on, and the
//! response body ([`UpstreamBody`]) that hands its connection back once it has been read to its end.
//!
//! Two kinds of connection, each request on the kind it needs:
//! - **wire** (`wire.rs`): a request with no body and no upgrade to an `http://` upstream (most
//!   requests) is written and its response read by the request's own task, on a bare socket;
//! - **hyper** (`client::conn::http1`): everything else (a body to stream, an upgrade, TLS), with
//!   hyper's connection task doing the I/O.
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
//!   A request already written is sent again only when it is idempotent (RFC 9110 §9.2.2), went
//!   out on a reused connection, and that connection closed without a byte of answer: the upstream
//!   closed it while idle just as the request went out (its keep-alive timeout racing the request;
//!   nginx retries the same way). It goes once more, on a new connection, on either kind of
//!   connection (for hyper's, a copy of the head is kept when a connection is reused). Anything
//!   else, a `POST` above all, is never sent twice;
//! - a connection whose response was not read to its end, or that was upgraded, is never reused.
//!
//! The request's URI must be in origin form (`/path?query`) with a `Host` header; where it goes is
//! the [`Target`].

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, Uri, header};
use http_body::{Frame, SizeHint};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::wire;

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
    /// The same, on a wire connection.
    Wire(wire::WireError),
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
    conn: Conn<B>,
    since: Instant,
}

enum Conn<B> {
    Hyper(SendRequest<B>),
    Wire(wire::Conn),
}

impl<B> Conn<B> {
    fn is_closed(&self) -> bool {
        match self {
            Conn::Hyper(tx) => tx.is_closed(),
            Conn::Wire(c) => c.is_closed(),
        }
    }
}

/// A hyper connection whose response is being read: given back once it has been read to its end;
/// dropping it instead closes the connection.
pub struct Pooled<B> {
    idle: Idle<B>,
    pool: Arc<Inner<B>>,
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

    /// The newest idle connection to `to` of the kind asked for (`wire` or hyper's) that is open
    /// and ready; closed or expired ones met on the way are dropped.
    fn checkout(&self, to: Target<'_>, wire: bool) -> Option<Idle<B>> {
        let mut shard = self.shard();
        let mut at = shard.len();
        let now = Instant::now();
        while at > 0 {
            at -= 1;
            let idle = &shard[at];
            if matches!(idle.conn, Conn::Wire(_)) != wire
                || idle.scheme != *to.scheme
                || idle.authority != *to.authority
            {
                continue;
            }
            if idle.conn.is_closed() || now.saturating_duration_since(idle.since) > IDLE_TIMEOUT {
                shard.remove(at);
                continue;
            }
            match &idle.conn {
                // Not ready: its previous response is still being read off the socket; leave it.
                Conn::Hyper(tx) if !tx.is_ready() => {}
                _ => return Some(shard.remove(at)),
            }
        }
        None
    }

    /// A connection whose response was read to its end: free for the next request.
    fn give_back(&self, mut idle: Idle<B>) {
        if idle.conn.is_closed() {
            return;
        }
        idle.since = Instant::now();
        let mut shard = self.shard();
        if shard.len() >= MAX_IDLE_PER_SHARD {
            shard.remove(0); // the oldest
        }
        shard.push(idle);
    }
}

/// Whether `req` can go out on a wire connection: no body, no upgrade, not `CONNECT`, plain HTTP.
fn wire_eligible<B: Body>(to: Target<'_>, req: &Request<B>) -> bool {
    *to.scheme == Scheme::HTTP
        && req.body().is_end_stream()
        && req.method() != Method::CONNECT
        && !req.headers().contains_key(header::UPGRADE)
}

/// A bodiless request's head, kept to send it again (`Pool::send_hyper`).
struct Again {
    method: Method,
    uri: Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Again {
    fn of<B>(req: &Request<B>) -> Again {
        Again {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    fn request<B: Default>(self) -> Request<B> {
        let mut req = Request::new(B::default());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// hyper's error for a request already written when its connection closed, or was reset, before
/// the response came: the upstream closing an idle keep-alive connection as the request went out.
fn closed_unanswered(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return wire::closed_by_peer(io.kind());
        }
        source = s.source();
    }
    false
}

impl<B> Pool<B>
where
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(connector: Connector) -> Pool<B> {
        Pool { inner: Arc::new(Inner { connector, shards: std::array::from_fn(|_| Mutex::new(Vec::new())) }) }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `to`, on an idle connection when there is one.
    /// The response's body gives the connection back once it has been read.
    pub async fn send(&self, to: Target<'_>, req: Request<B>) -> Result<Response<UpstreamBody<B>>, SendError> {
        if wire_eligible(to, &req) {
            let (parts, _) = req.into_parts();
            return self.send_wire(to, &parts.method, wire::Head::Parts(&parts)).await;
        }
        self.send_hyper(to, req).await
    }

    /// Sends a bodiless request of `method` whose head is already written out as `head` (origin-form
    /// target, `Host` set, hop-by-hop headers gone) to a plain `http://` upstream, on a wire
    /// connection, as [`Pool::send`] would. The response's headers stay as sent, in its body
    /// ([`UpstreamBody::raw_head`]); its map is empty.
    pub async fn send_head(
        &self,
        to: Target<'_>,
        method: &Method,
        head: &[u8],
    ) -> Result<Response<UpstreamBody<B>>, SendError> {
        self.send_wire(to, method, wire::Head::Bytes(head)).await
    }

    async fn send_wire(
        &self,
        to: Target<'_>,
        method: &Method,
        head: wire::Head<'_>,
    ) -> Result<Response<UpstreamBody<B>>, SendError> {
        // Reused connections first; a write that fails on one means the upstream closed it while
        // it was idle, and the request never got through: it goes out on the next.
        let (conn, reused) = loop {
            match self.inner.checkout(to, true) {
                Some(Idle { conn: Conn::Wire(mut conn), .. }) => {
                    if conn.write_head(head).await.is_ok() {
                        break (conn, true);
                    }
                }
                Some(_) => {}
                None => break (Box::pin(self.connect_wire(to, head)).await?, false),
            }
        };
        // A head written as bytes gets its answer's headers as bytes too (`h1.rs` writes them out).
        let raw = matches!(head, wire::Head::Bytes(_));
        let (head, body) = match conn.read_head(method, raw).await {
            Ok(answer) => answer,
            Err(wire::WireError::Unanswered) if reused && method.is_idempotent() => {
                tracing::debug!(%method, "a reused upstream connection closed without answering; sent again on a new one");
                let conn = Box::pin(self.connect_wire(to, head)).await?;
                conn.read_head(method, raw).await.map_err(SendError::Wire)?
            }
            Err(e) => return Err(SendError::Wire(e)),
        };
        let back =
            WireBack { pool: Arc::clone(&self.inner), scheme: to.scheme.clone(), authority: to.authority.clone() };
        let mut body = UpstreamBody { kind: Kind::Wire(body, Some(back)), reusable: true };
        body.give_back_if_read();
        Ok(Response::from_parts(head, body))
    }

    async fn send_hyper(&self, to: Target<'_>, mut req: Request<B>) -> Result<Response<UpstreamBody<B>>, SendError> {
        // Reused connections first; each one found closed before the request went out is skipped.
        // What a bodiless idempotent request needs to go again, should a reused connection close
        // without answering it (as on the wire path): taken once a connection is reused.
        let mut again: Option<Again> = None;
        while let Some(mut idle) = self.inner.checkout(to, false) {
            let Conn::Hyper(tx) = &mut idle.conn else { continue };
            if again.is_none() && req.body().is_end_stream() && req.method().is_idempotent() {
                again = Some(Again::of(&req));
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(hyper_response(resp, Pooled { idle, pool: Arc::clone(&self.inner) })),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => {
                        let e = e.into_error();
                        match again.take() {
                            Some(copy) if closed_unanswered(&e) => {
                                tracing::debug!(error = %e, "a reused upstream connection closed without answering; sent again on a new one");
                                req = copy.request();
                                break;
                            }
                            _ => return Err(SendError::Http(e)),
                        }
                    }
                },
            }
        }
        // Boxed: connecting is rare and its future large; inline, it would be moved with every
        // request's future.
        let mut tx = Box::pin(self.connect_hyper(to)).await?;
        match tx.send_request(req).await {
            Ok(resp) => {
                let idle = Idle {
                    scheme: to.scheme.clone(),
                    authority: to.authority.clone(),
                    conn: Conn::Hyper(tx),
                    since: Instant::now(),
                };
                Ok(hyper_response(resp, Pooled { idle, pool: Arc::clone(&self.inner) }))
            }
            Err(e) => Err(SendError::Http(e)),
        }
    }

    async fn connect(
        &self,
        to: Target<'_>,
    ) -> Result<hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>, SendError> {
        let uri = Uri::builder()
            .scheme(to.scheme.clone())
            .authority(to.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let mut connector = self.inner.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(SendError::Connect)?;
        connector.call(uri).await.map_err(SendError::Connect)
    }

    /// A new wire connection to `to` with the request `head` written on it. Called boxed:
    /// connecting is rare and its future large.
    async fn connect_wire(&self, to: Target<'_>, head: wire::Head<'_>) -> Result<wire::Conn, SendError> {
        let mut conn = wire::Conn::new(self.connect_tcp(to).await?);
        conn.write_head(head).await.map_err(|e| SendError::Wire(e.into()))?;
        Ok(conn)
    }

    /// A plain TCP connection (the connector's: resolution, connect timeout, `TCP_NODELAY`, keepalive).
    async fn connect_tcp(&self, to: Target<'_>) -> Result<tokio::net::TcpStream, SendError> {
        match self.connect(to).await? {
            hyper_rustls::MaybeHttpsStream::Http(io) => Ok(io.into_inner()),
            hyper_rustls::MaybeHttpsStream::Https(_) => {
                Err(SendError::Connect("a TLS connection where plain TCP was asked for".into()))
            }
        }
    }

    async fn connect_hyper(&self, to: Target<'_>) -> Result<SendRequest<B>, SendError> {
        let io = self.connect(to).await?;
        let (tx, conn) =
            hyper::client::conn::http1::Builder::new().handshake(io).await.map_err(|e| SendError::Connect(e.into()))?;
        // The connection runs as its own task until it closes (upgrades pass through it).
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
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
            shard.retain(|idle| !idle.conn.is_closed() && now.saturating_duration_since(idle.since) <= IDLE_TIMEOUT);
            dropped += before - shard.len();
        }
        dropped
    }
}

fn hyper_response<B>(resp: Response<Incoming>, conn: Pooled<B>) -> Response<UpstreamBody<B>> {
    let (parts, body) = resp.into_parts();
    // A 101's connection becomes a tunnel (or is closed): it is held, never given back.
    let reusable = parts.status != http::StatusCode::SWITCHING_PROTOCOLS;
    let mut body = UpstreamBody { kind: Kind::Hyper(body, Some(conn)), reusable };
    body.give_back_if_read();
    Response::from_parts(parts, body)
}

/// Where a wire connection goes back to.
struct WireBack<B> {
    pool: Arc<Inner<B>>,
    scheme: Scheme,
    authority: Authority,
}

/// An upstream response's body. Its connection goes back to the pool once the body has been read
/// to its end; dropped before that (the client went away, or the body broke), the connection is
/// closed.
pub struct UpstreamBody<B> {
    kind: Kind<B>,
    reusable: bool,
}

enum Kind<B> {
    Hyper(Incoming, Option<Pooled<B>>),
    Wire(wire::ResponseBody, Option<WireBack<B>>),
}

impl<B> UpstreamBody<B> {
    /// The response's headers as the upstream sent them, when they were kept so
    /// ([`Pool::send_head`]: the response's map is then empty).
    pub fn raw_head(&self) -> Option<&wire::RawHead> {
        match &self.kind {
            Kind::Wire(body, _) => body.raw_head(),
            Kind::Hyper(..) => None,
        }
    }

    fn give_back_if_read(&mut self) {
        if !self.reusable {
            return;
        }
        match &mut self.kind {
            Kind::Hyper(body, conn) => {
                if body.is_end_stream()
                    && let Some(Pooled { idle, pool }) = conn.take()
                {
                    pool.give_back(idle);
                }
            }
            Kind::Wire(body, back) => {
                if body.is_end()
                    && let Some(conn) = body.take_conn()
                    && let Some(WireBack { pool, scheme, authority }) = back.take()
                {
                    pool.give_back(Idle { scheme, authority, conn: Conn::Wire(conn), since: Instant::now() });
                }
            }
        }
    }

    /// Never reuse this body's connection (it broke, or became a tunnel).
    fn forget_conn(&mut self) {
        match &mut self.kind {
            Kind::Hyper(_, conn) => *conn = None,
            Kind::Wire(_, back) => *back = None,
        }
    }
}

impl<B> Drop for UpstreamBody<B> {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended: the connection is handed back here.
        self.give_back_if_read();
    }
}

impl<B> Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let out: Poll<Option<Result<Frame<Bytes>, Self::Error>>> = match &mut this.kind {
            Kind::Hyper(body, _) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Wire(body, _) => body.poll_data(cx).map_ok(Frame::data).map_err(Into::into),
        };
        match &out {
            Poll::Ready(Some(Ok(_))) | Poll::Ready(None) => this.give_back_if_read(),
            Poll::Ready(Some(Err(_))) => this.forget_conn(),
            Poll::Pending => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Hyper(body, _) => body.is_end_stream(),
            Kind::Wire(body, _) => body.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Hyper(body, _) => body.size_hint(),
            Kind::Wire(body, _) => body.exact_len().map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}
