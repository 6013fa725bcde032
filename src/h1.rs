//! tiergate's own HTTP/1.1 server, for the requests most of a rate-limited API's traffic is: no
//! body, nothing unusual in the framing, in front of a plain `http://` upstream (on the plain
//! listener, and on the TLS one for connections that did not choose h2 by ALPN).
//! Such a request is read, proxied and answered here without hyper's server: its head is parsed
//! with `httparse` (the parser hyper uses) and kept as parsed, the upstream request is written
//! straight from it (`forward::write_head`), and the response head is written out here.
//!
//! Why: hyper's server builds a `HeaderMap` for every request, runs a dispatcher between the
//! connection and the service, and encodes the response through its own buffers: about a third of
//! what a proxied request cost (docs/PERFORMANCE.md, "Quota batching").
//!
//! What this owns:
//! - a plain connection's life while its requests are such requests: the header-read timeout (from
//!   the accept, then from a head's first byte, until the head is complete: past it the connection
//!   is dropped), the idle timeout (no request in flight and no head begun: closed), keep-alive,
//!   pipelined heads (each answered in turn), `Connection: close`, and closing at drain;
//! - which requests it takes ([`take`]): HTTP/1.1; no `Content-Length` other than `0` and no
//!   `Transfer-Encoding`; no `Upgrade` or `Expect`; a `Connection` header naming only `keep-alive`
//!   or `close`; exactly one `Host` and at most one `Authorization`; an origin-form target hyper
//!   would accept; not `CONNECT`; a head within `max_header_bytes`.
//! - the response head: status line, the response's headers, `Date` when it has none, its framing
//!   (`Content-Length`, or chunked when the length is unknown), `Connection: close` when closing; its
//!   body, streamed.
//!
//! **Anything else is hyper's.** At the first head this module does not take (a body, an upgrade,
//! h2c's preface, a malformed head, one over a limit, anything above), the connection is handed to
//! hyper's server (`server.rs`) for the rest of its life, with the bytes read so far replayed
//! first ([`Prefixed`]). So every refusal of a malformed head, every smuggling check on framing, and
//! every body stays where it was proven; this path serves only heads that are unambiguous.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::conn::{ConnActivity, ConnInfo};
use crate::head::line;
use crate::headers::Decoration;
use crate::proxy::{Finished, FlatRequest, Proxy};

/// The most headers a request head taken here may have (hyper's server's default limit; hyper
/// answers a head with more).
const MAX_HEADERS: usize = 100;
/// hyper refuses a request target this long or longer (414).
const MAX_TARGET: usize = u16::MAX as usize - 1;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 8192;
/// A response body is written out once this much of it is buffered (smaller pieces go out with
/// the head, or together, in one write).
const WRITE_BATCH: usize = 64 * 1024;

/// A connection this module gave up on: the stream and what has been read from it but not
/// answered, for hyper's server to carry on with.
pub struct Handover<S> {
    pub stream: S,
    pub read: BytesMut,
}

/// Serves `stream` (a TCP connection, or TLS over one: `tls`) until it closes, or until a head
/// this module does not take: then it is handed back ([`Handover`]) for hyper.
pub async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    tls: bool,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
) -> Option<Handover<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (header_read_timeout, idle_timeout, max_header_bytes) = {
        let snap = proxy.snapshot.load();
        let c = &snap.conn;
        (c.header_read_timeout, c.idle_timeout, c.max_header_bytes)
    };
    let activity = Arc::new(ConnActivity::new());
    let info = ConnInfo::new(peer, tls, Arc::clone(&activity));
    let mut read = BytesMut::with_capacity(READ_SIZE);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut upstream_head: Vec<u8> = Vec::with_capacity(1024);
    // One timer for the connection's life, re-armed only when it fires (as `server.rs`'s watchdog):
    // it fires at least every `min(header_read_timeout, idle_timeout)`, and then checks the deadlines.
    let tick = header_read_timeout.min(idle_timeout);
    let watchdog = tokio::time::sleep(tick);
    let cancelled = shutdown.cancelled();
    tokio::pin!(watchdog, cancelled);
    // The head being read began then (the first one: at the accept); `None`: idle since `idle_since`.
    let mut head_since = Some(Instant::now());
    let mut idle_since = Instant::now();
    loop {
        // 1. A whole head. Each read's bytes are scanned once for its end (a head dripped in byte by
        // byte costs its length, not its length squared).
        let mut scanned = 0usize;
        loop {
            let from = scanned.saturating_sub(3);
            match read.get(from..).and_then(head_end) {
                Some(_) => break,
                None if read.len() >= max_header_bytes => return Some(Handover { stream, read }),
                None => scanned = read.len(),
            }
            if read.capacity() - read.len() < READ_SIZE / 4 {
                read.reserve(READ_SIZE);
            }
            tokio::select! {
                biased;
                got = stream.read_buf(&mut read) => match got {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {
                        head_since.get_or_insert_with(Instant::now);
                    }
                },
                _ = &mut cancelled, if read.is_empty() => return None,
                _ = watchdog.as_mut() => {
                    let now = Instant::now();
                    let deadline = match head_since {
                        // A head not complete in time (slowloris): dropped.
                        Some(at) => at + header_read_timeout,
                        None => idle_since + idle_timeout,
                    };
                    if deadline <= now {
                        return None;
                    }
                    watchdog.as_mut().reset(deadline.min(now + tick));
                }
            }
        }
        // A reload may have moved the upstream to `https://`, which only hyper's client speaks.
        if proxy.snapshot.load().upstream_scheme != http::uri::Scheme::HTTP {
            return Some(Handover { stream, read });
        }
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let (len, taken) = match take(&read, &mut slots, max_header_bytes) {
            Taken::Yes(len, head) => (len, head),
            Taken::Partial | Taken::Not => return Some(Handover { stream, read }),
        };
        // 2. Proxied: the response, decorated and recorded.
        let close = taken.close;
        let head_method = taken.method == Method::HEAD;
        let finished = proxy.handle_flat(&info, taken.request, &mut upstream_head).await;
        let close = close || shutdown.is_cancelled();
        // 3. Written, head and body.
        match write_response(&mut stream, &mut out, finished, head_method, close).await {
            Ok(true) if !close => {}
            _ => {
                let _ = stream.shutdown().await;
                return None;
            }
        }
        read.advance(len);
        idle_since = Instant::now();
        // A pipelined head already begun counts from now; none: the connection is idle.
        head_since = (!read.is_empty()).then_some(idle_since);
    }
}

/// Where the head at the front of `buf` ends (just past its empty line, `CRLF` or a bare `LF` as
/// `httparse` accepts either), once it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let at = from + i + 1;
        match buf.get(at..at + 2) {
            Some([b'\n', _]) => return Some(at + 1),
            Some([b'\r', b'\n']) => return Some(at + 2),
            None if buf.get(at) == Some(&b'\n') => return Some(at + 1),
            _ => from = at,
        }
    }
    None
}

/// What [`take`] made of the bytes read.
enum Taken<'a> {
    /// Not a whole head yet.
    Partial,
    /// A head this module does not take (or not a head at all): hyper's.
    Not,
    /// A whole head of this many bytes, taken.
    Yes(usize, Head<'a>),
}

/// A head taken: the request, and what the connection needs to know of it.
struct Head<'a> {
    method: Method,
    /// `Connection: close`: the connection ends after the response.
    close: bool,
    request: FlatRequest<'a>,
}

/// Parses the head at the front of `buf` and decides whether it is taken here (see the module
/// doc's list).
fn take<'a>(
    buf: &'a [u8],
    slots: &'a mut [std::mem::MaybeUninit<httparse::Header<'a>>; MAX_HEADERS],
    max_header_bytes: usize,
) -> Taken<'a> {
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Taken::Partial,
        Err(_) => return Taken::Not,
    };
    let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Taken::Not;
    };
    if len > max_header_bytes || target.len() >= MAX_TARGET {
        return Taken::Not;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Taken::Not };
    if method == Method::CONNECT {
        return Taken::Not;
    }
    let Some((path, query)) = origin_form(target) else { return Taken::Not };
    let headers: &'a [httparse::Header<'a>] = parsed.headers;
    let (mut hosts, mut authorizations, mut lengths, mut close) = (0, 0, 0, false);
    let mut request_id = None;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if h.value != b"0" {
                return Taken::Not;
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            authorizations += 1;
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = request_id.or(Some(h.value));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !(token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive")) {
                    return Taken::Not;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Taken::Not;
        }
    }
    if hosts != 1 || authorizations > 1 || lengths > 1 {
        return Taken::Not;
    }
    let request = FlatRequest { method: method.clone(), path, query, headers, request_id };
    Taken::Yes(len, Head { method, close, request })
}

/// An origin-form target (`/path?query`) split at its first `?`, when every byte of it is one RFC
/// 3986 allows there unescaped: a strict subset of what hyper accepts, so a target taken here is
/// one hyper would have taken too. Anything else (a fragment, a space-like byte, `"`, `{`, non-ASCII
/// …) is left to hyper, to accept or refuse.
fn origin_form(target: &str) -> Option<(&str, Option<&str>)> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
    if !target.starts_with('/') || !target.bytes().all(ok) {
        return None;
    }
    Some(match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    })
}

/// A head [`take`] takes, as parsed: for the differential fuzz target (`fuzz/fuzz_targets/h1_head.rs`),
/// which holds that hyper's server reads every such head as the same request.
#[derive(Debug)]
pub struct TakenHead {
    /// The head's length in bytes.
    pub len: usize,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    /// Each header, name and value as sent, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// `Connection: close`.
    pub close: bool,
}

/// [`take`] on `buf`: `Some` when the head at its front is one this module takes.
pub fn taken_head(buf: &[u8], max_header_bytes: usize) -> Option<TakenHead> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let Taken::Yes(len, head) = take(buf, &mut slots, max_header_bytes) else { return None };
    let r = &head.request;
    Some(TakenHead {
        len,
        method: head.method.clone(),
        path: r.path.to_string(),
        query: r.query.map(str::to_string),
        headers: r.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect(),
        close: head.close,
    })
}

/// How the response body is framed on the wire.
enum Framing {
    /// No body (a `HEAD` request; 1xx, 204, 304).
    None,
    Length,
    Chunked,
}

/// Writes the response (head and body) to the client. `Ok(false)`: the connection cannot carry
/// another response (the body broke off, or the response says `Connection: close`).
async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    finished: Finished,
    head_method: bool,
    close: bool,
) -> io::Result<bool> {
    out.clear();
    let (framing, says_close) = write_head(out, &finished.resp, &finished.decoration(), head_method, close);
    let mut body = finished.resp.into_body();
    if matches!(framing, Framing::None) {
        stream.write_all(out).await?;
        return Ok(!says_close);
    }
    loop {
        // What is ready goes out with what is buffered; before waiting for more, the buffer is sent.
        let frame = match ready_frame(&mut body) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    stream.write_all(out).await?;
                    out.clear();
                }
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body broke off");
                if !out.is_empty() {
                    stream.write_all(out).await?;
                }
                return Ok(false);
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue }; // trailers: dropped
                if data.is_empty() {
                    continue;
                }
                if matches!(framing, Framing::Chunked) {
                    out.extend_from_slice(chunk_size(data.len(), &mut [0; 16]));
                    out.extend_from_slice(b"\r\n");
                    append(stream, out, data).await?;
                    out.extend_from_slice(b"\r\n");
                } else {
                    append(stream, out, data).await?;
                }
            }
        }
    }
    if matches!(framing, Framing::Chunked) {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        stream.write_all(out).await?;
    }
    Ok(!says_close)
}

/// The body's next frame if it is there without waiting.
fn ready_frame(body: &mut ProxyBody) -> Poll<Option<Result<http_body::Frame<Bytes>, crate::body::BoxError>>> {
    Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop()))
}

/// Adds `data` to the buffered output, writing out what is buffered first when it would grow past
/// [`WRITE_BATCH`].
async fn append<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut Vec<u8>, data: Bytes) -> io::Result<()> {
    if out.len() + data.len() <= WRITE_BATCH {
        out.extend_from_slice(&data);
        return Ok(());
    }
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    stream.write_all(&data).await
}

/// `n` in lower-case hex (a chunk size line).
fn chunk_size(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = HEX[n & 15];
        n >>= 4;
        if n == 0 || at == 0 {
            break;
        }
    }
    &buf[at..]
}

/// The status line and headers, as hyper's server writes them: the canonical reason, the
/// response's own headers and its `decoration` (`headers.rs`), its framing, `Date` when it has none,
/// and `Connection: close` when closing.
fn write_head(
    out: &mut Vec<u8>,
    resp: &Response<ProxyBody>,
    decoration: &Decoration<'_>,
    head_method: bool,
    close: bool,
) -> (Framing, bool) {
    let (status, headers, body) = (&resp.status(), resp.headers(), resp.body());
    if *status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The response's own headers (tiergate's answers), then an upstream response's as it sent them,
    // less what `forward::strip_hop_by_hop` and the decorator's `strip_upstream` would take out of a map.
    let own =
        headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())).filter(|(n, _)| *n != b"transfer-encoding"); // the framing is this module's
    let upstream = body.raw_head().into_iter().flat_map(|raw| {
        raw.headers()
            .filter(move |(n, _)| !(crate::head::is_hop_by_hop(n) || raw.connection_lists(n) || decoration.strips(n)))
    });
    let (mut length, mut date, mut says_close, mut security) = (false, false, false, 0u64);
    for (name, value) in own.chain(upstream) {
        if decoration.replaces(name) {
            continue; // the rate-limit headers are tiergate's
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            length = true;
        } else if name.eq_ignore_ascii_case(b"date") {
            date = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            says_close |= value.eq_ignore_ascii_case(b"close");
        } else if let Some(i) = decoration.security_index(name) {
            security |= 1 << i;
        }
        line(out, name, value);
    }
    decoration.write(out, security);
    let bodiless =
        status.is_informational() || *status == StatusCode::NO_CONTENT || *status == StatusCode::NOT_MODIFIED;
    let framing = match body.size_hint().exact() {
        _ if bodiless => Framing::None,
        // As hyper: an empty body is said to be empty, except to `HEAD` (whose answer describes
        // the `GET`'s body); a known length is said to `HEAD` too.
        Some(0) => {
            if !length && !head_method {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::None
        }
        Some(n) => {
            if !length {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(crate::values::decimal(n, &mut [0; 20]));
                out.extend_from_slice(b"\r\n");
            }
            if head_method { Framing::None } else { Framing::Length }
        }
        None if head_method => Framing::None,
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    if close && !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, says_close || close)
}

/// The current time as an HTTP date, formatted once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if let Some(bytes) = text.as_bytes().get(..29) {
                d.1.copy_from_slice(bytes);
                d.0 = secs;
            }
        }
        out.extend_from_slice(&d.1);
    });
}

/// A stream with bytes already read from it put back in front: what hyper's server reads first
/// when a connection is handed to it.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(head: &str) -> bool {
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        matches!(take(head.as_bytes(), &mut slots, 16 * 1024), Taken::Yes(..))
    }

    #[test]
    fn plain_heads_are_taken_and_everything_else_is_hyper_s() {
        assert!(taken("GET /api/items?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(taken("DELETE /x HTTP/1.1\r\nhost: a\r\nContent-Length: 0\r\nConnection: keep-alive, close\r\n\r\n"));
        for head in [
            "GET /x HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET /x HTTP/1.1\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: a\r\nauthorization: b\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
            "PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
            "GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /x?a={1} HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(!taken(head), "{head:?} should be hyper's");
        }
    }

    #[test]
    fn a_head_over_the_limit_is_hyper_s() {
        let head = format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n", "p".repeat(100));
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        assert!(matches!(take(head.as_bytes(), &mut slots, 64), Taken::Not));
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        assert!(matches!(take(&head.as_bytes()[..20], &mut slots, 64), Taken::Partial));
    }

    #[test]
    fn a_head_ends_at_its_empty_line() {
        // Scanned from a few bytes before where the last scan stopped, as `serve` does.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in 1..head.len() {
            let from = split.saturating_sub(3);
            assert_eq!(head[..split].get(from..).and_then(head_end), None);
            assert!(head.get(from..).and_then(head_end).is_some(), "split at {split}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nNEXT"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\n\n"), Some(25));
    }

    #[test]
    fn targets_split_at_the_first_question_mark() {
        assert_eq!(origin_form("/a/b"), Some(("/a/b", None)));
        assert_eq!(origin_form("/a?x=1?y=%20"), Some(("/a", Some("x=1?y=%20"))));
        assert_eq!(origin_form("/a?"), Some(("/a", Some(""))));
        assert_eq!(origin_form("a/b"), None);
        assert_eq!(origin_form("/a b"), None);
    }

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        assert_eq!(chunk_size(0, &mut [0; 16]), b"0");
        assert_eq!(chunk_size(255, &mut [0; 16]), b"ff");
        assert_eq!(chunk_size(0x10000, &mut [0; 16]), b"10000");
    }

    #[test]
    fn dates_are_imf_fixdate() {
        let mut out = Vec::new();
        http_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }
}
