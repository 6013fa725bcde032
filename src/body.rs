//! The two body types the proxy moves: [`RequestBody`] (client → upstream, with the streamed upload
//! cap) and [`ProxyBody`] (→ client: an upstream stream, or a small body tiergate wrote itself).
//!
//! Both are thin wrappers (over hyper's `Incoming`, and over `upstream.rs`'s [`UpstreamBody`]), so
//! bodies stream in both directions without being buffered. `ProxyBody` also carries the request's
//! [`Guards`], released when the body ends or is dropped (the client went away): that is what returns
//! a concurrency slot. An upstream body carries its connection, which `upstream.rs` takes back once
//! the body has been read to its end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::conn::ConnActivity;
use crate::limit::Lease;
use crate::upstream::UpstreamBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The upload went past the tier's cap while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the upload limit")]
pub struct UploadTooLarge;

/// The client's body broke while streaming (bad chunk size, oversized chunk extension, truncated).
/// Wrapped so that the upstream client's error can be traced back to the client, not the upstream.
#[derive(Debug, thiserror::Error)]
#[error("malformed request body: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// Client → upstream. Counts streamed bytes against `cap` when the size was not declared up front.
pub struct RequestBody {
    inner: Option<Incoming>,
    cap: Option<u64>,
    seen: u64,
}

impl RequestBody {
    pub fn new(inner: Incoming) -> RequestBody {
        RequestBody { inner: Some(inner), cap: None, seen: 0 }
    }

    pub fn empty() -> RequestBody {
        RequestBody { inner: None, cap: None, seen: 0 }
    }

    /// Cuts the stream off past `cap` bytes, failing it with [`UploadTooLarge`].
    pub fn with_cap(mut self, cap: u64) -> RequestBody {
        self.cap = Some(cap);
        self
    }
}

/// An empty body: what a request sent again with no body carries (`upstream.rs`).
impl Default for RequestBody {
    fn default() -> RequestBody {
        RequestBody::empty()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(cap), Some(data)) = (this.cap, frame.data_ref()) {
                    this.seen += data.len() as u64;
                    if this.seen > cap {
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(UploadTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// What a request holds until its response body is done: the in-flight gauge, the connection's
/// activity count (idle timeout) and, when the tier has a concurrency cap, its slot.
pub struct Guards {
    pub inflight: InflightGuard,
    pub lease: Option<Lease>,
}

/// Counts a request in `tiergate_inflight_requests` and in its connection's activity until dropped.
pub struct InflightGuard {
    gauge: metrics::Gauge,
    conn: Arc<ConnActivity>,
}

impl InflightGuard {
    pub fn new(gauge: &metrics::Gauge, conn: &Arc<ConnActivity>) -> InflightGuard {
        gauge.increment(1.0);
        conn.begin();
        InflightGuard { gauge: gauge.clone(), conn: Arc::clone(conn) }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
        self.conn.end();
    }
}

/// Called once with the body bytes sent, when a response body ends or is dropped (the access log).
pub type OnEnd = Box<dyn FnOnce(u64) + Send>;

/// → client.
pub struct ProxyBody {
    kind: Kind,
    guards: Option<Guards>,
    on_end: Option<OnEnd>,
    sent: u64,
}

enum Kind {
    Empty,
    Bytes(Option<Bytes>),
    /// The upstream's body (its connection inside until the body has been read to its end).
    Upstream(UpstreamBody<RequestBody>),
}

impl ProxyBody {
    pub fn empty() -> ProxyBody {
        ProxyBody { kind: Kind::Empty, guards: None, on_end: None, sent: 0 }
    }

    pub fn bytes(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody { kind: Kind::Bytes(Some(b.into())), guards: None, on_end: None, sent: 0 }
    }

    /// The upstream's body.
    pub fn upstream(body: UpstreamBody<RequestBody>) -> ProxyBody {
        ProxyBody { kind: Kind::Upstream(body), guards: None, on_end: None, sent: 0 }
    }

    /// The upstream response's headers as sent, when they were kept so (`upstream.rs`).
    pub fn raw_head(&self) -> Option<&crate::wire::RawHead> {
        match &self.kind {
            Kind::Upstream(body) => body.raw_head(),
            _ => None,
        }
    }

    /// Calls `f` with the bytes sent once this body ends or is dropped.
    pub fn on_end(&mut self, f: OnEnd) {
        self.on_end = Some(f);
    }

    fn finish(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.sent);
        }
    }

    /// Keeps `guards` alive until this body ends or is dropped.
    pub fn hold(&mut self, guards: Guards) {
        if self.is_end_stream() {
            drop(guards);
        } else {
            self.guards = Some(guards);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let out = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(inner) => Pin::new(inner).poll_frame(cx),
        };
        if let (Some(_), Poll::Ready(Some(Ok(frame)))) = (&this.on_end, &out)
            && let Some(data) = frame.data_ref()
        {
            this.sent += data.len() as u64;
        }
        if matches!(out, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // Body finished (or failed): release the slot now, not when hyper drops us.
            this.guards = None;
            this.finish();
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Bytes(b) => b.is_none(),
            Kind::Upstream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(inner) => inner.size_hint(),
        }
    }
}
