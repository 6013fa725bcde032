//! HTTP/1.1 spoken directly on a plain TCP connection to the upstream, for the requests that need
//! nothing more: no request body, no upgrade, an `http://` upstream. Most requests a rate-limited
//! API sees are such (`GET`s). Everything else goes through hyper's client (`upstream.rs` decides).
//!
//! What this owns:
//! - writing the request head as bytes from the request's parts (origin-form target, `Host` set, hop-by-hop
//!   headers already stripped by `forward.rs`), into a buffer each connection keeps;
//! - parsing the response head with `httparse` (the parser hyper uses) into `http`'s types, with the
//!   header values sharing the read buffer rather than copied; interim `1xx` heads skipped, as
//!   hyper's client does;
//! - the response body's framing (RFC 9112 §6.3): none (`HEAD`, `204`, `304`), `Content-Length`,
//!   chunked, or to the end of the connection; and whether the connection may carry the next request.
//!
//! Why not hyper's client here: it runs each connection as a task of its own, and hands the request
//! to it and the response back through channels. On a request with no body that is more than a
//! third of what forwarding costs (docs/PERFORMANCE.md); here the request's own task writes and
//! reads its connection.
//!
//! Limits are hyper's client's defaults: a response head of at most [`MAX_HEAD`] bytes and
//! [`MAX_HEADERS`] headers. A malformed or oversized head, a malformed chunk, or a body cut short is
//! an error, and that connection is never reused. Trailers are read and dropped.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version, request, response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::head::visible;

/// The largest response head read (hyper's client's default buffer limit).
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The most headers a response head may have (hyper's client's default).
pub const MAX_HEADERS: usize = 100;
/// A chunk-size line (with its extensions) or a trailer section longer than this is an error.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 8192;

/// Why no usable response came back.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before the response was complete")]
    Closed,
    /// Closed or reset before a byte of the response came. On a reused connection that is the
    /// upstream closing it while idle, just as the request went out (`upstream.rs` retries such a
    /// request once, on a new connection, when its method is idempotent).
    #[error("the upstream closed the connection without answering")]
    Unanswered,
    #[error("malformed response from the upstream: {0}")]
    Malformed(&'static str),
}

/// A request head to write: the request's parts, or the head already written out as bytes (the
/// client side's own HTTP/1.1 path, `h1.rs`, writes it straight from the client's head).
#[derive(Clone, Copy)]
pub enum Head<'a> {
    Parts(&'a request::Parts),
    Bytes(&'a [u8]),
}

/// One upstream connection: the socket, what has been read from it and not yet used, the buffer
/// request heads are written from, and where each header of the last response head sat in it.
pub struct Conn {
    io: TcpStream,
    read: BytesMut,
    scratch: Box<Scratch>,
}

/// A connection's reusable buffers, boxed so a response body that carries its connection stays
/// small.
#[derive(Default)]
struct Scratch {
    write: Vec<u8>,
    spans: Vec<Span>,
    /// The last response head's header names, as sent and as parsed, by position. An upstream sends
    /// the same names in the same order response after response, so a connection parses each name
    /// once, not once per response. Only the first [`NAMES_KEPT`] names, of at most [`NAME_KEPT`] bytes.
    names: Vec<(Vec<u8>, HeaderName)>,
}

/// How many header names, and how long a name, a connection keeps parsed (see [`Scratch::names`]).
const NAMES_KEPT: usize = 32;
const NAME_KEPT: usize = 64;

/// Where one header's name and value sit in a response head: byte offsets from its start.
#[derive(Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn { io, read: BytesMut::new(), scratch: Box::default() }
    }

    /// Whether the upstream closed the connection (or sent something unasked) while it was idle. No
    /// system call unless the connection's readiness says something arrived.
    pub fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                !matches!(self.io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes a request head (a request with no body).
    pub async fn write_head(&mut self, head: Head<'_>) -> io::Result<()> {
        let parts = match head {
            Head::Bytes(bytes) => return self.io.write_all(bytes).await,
            Head::Parts(parts) => parts,
        };
        let w = &mut self.scratch.write;
        w.clear();
        w.extend_from_slice(parts.method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"\r\n");
        self.io.write_all(&self.scratch.write).await
    }

    /// Reads the response head (skipping interim `1xx` ones) to a request of `method`. The body
    /// follows in [`ResponseBody`]. `raw`: the headers stay as sent, in the body's [`RawHead`],
    /// and the parts' map is left empty (for a writer that writes them out as bytes, `h1.rs`).
    pub async fn read_head(mut self, method: &Method, raw: bool) -> Result<(response::Parts, ResponseBody), WireError> {
        // Whether any byte of the answer has come (an interim head counts).
        let mut answered = !self.read.is_empty();
        loop {
            let (mut parts, facts, head) = loop {
                let parsed = if self.read.is_empty() {
                    None
                } else if raw {
                    parse_raw(&mut self.read)?
                } else {
                    parse_head(&mut self.read, &mut self.scratch)?.map(|(parts, facts)| (parts, facts, None))
                };
                match parsed {
                    Some(head) => break head,
                    None if self.read.len() >= MAX_HEAD => return Err(WireError::Malformed("response head too large")),
                    None => {
                        self.read.reserve(READ_SIZE);
                        match self.io.read_buf(&mut self.read).await {
                            Ok(0) if !answered => return Err(WireError::Unanswered),
                            Ok(0) => return Err(WireError::Closed),
                            Ok(_) => answered = true,
                            Err(e) if !answered && closed_by_peer(e.kind()) => return Err(WireError::Unanswered),
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            };
            if parts.status.is_informational() {
                if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(WireError::Malformed("101 Switching Protocols to a request that asked for no upgrade"));
                }
                continue; // 100 Continue, 103 Early Hints: the final answer follows
            }
            // `framing` drops `Content-Length` beside `Transfer-Encoding` (and writes a listed one as
            // its one length), unless the response has no body.
            let bodiless = *method == Method::HEAD
                || parts.status == StatusCode::NO_CONTENT
                || parts.status == StatusCode::NOT_MODIFIED;
            let (state, reusable) = framing(&mut parts, facts, method)?;
            let head = head.map(|mut head| {
                head.drop_length &= !bodiless;
                head
            });
            let body = ResponseBody { conn: Some(self), state, reusable, head };
            return Ok((parts, body));
        }
    }

    /// Reads more into the buffer. `Ok(0)`: the upstream closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// One complete head off the front of `buf`, or `None` while it is incomplete. `scratch` is space
/// the connection keeps: the offsets (cleared here, so no request pays for zeroing room for
/// [`MAX_HEADERS`] of them) and the names the last head had.
fn parse_head(buf: &mut BytesMut, scratch: &mut Scratch) -> Result<Option<(response::Parts, Facts)>, WireError> {
    let Scratch { spans, names, .. } = scratch;
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let Some((len, status, version, parsed)) = parse_status(buf, &mut slots)? else { return Ok(None) };
    // Where each name and value sits in the head, so the values can share its bytes once it is
    // split off the buffer (the parsed headers borrow the buffer until then).
    let base = buf.as_ptr() as usize;
    spans.clear();
    spans.extend(parsed.iter().map(|h| {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        Span { name: (name, name + h.name.len()), value: (value, value + h.value.len()) }
    }));
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len() + 16);
    let mut facts = Facts::default();
    for (i, &Span { name: (n0, n1), value: (v0, v1) }) in spans.iter().enumerate() {
        let sent = &head[n0..n1];
        let name = match names.get(i) {
            Some((seen, name)) if seen.as_slice() == sent => name.clone(),
            _ => {
                let name = HeaderName::from_bytes(sent).map_err(|_| WireError::Malformed("bad header name"))?;
                if sent.len() <= NAME_KEPT {
                    if let Some(slot) = names.get_mut(i) {
                        *slot = (sent.to_vec(), name.clone());
                    } else if i == names.len() && i < NAMES_KEPT {
                        names.push((sent.to_vec(), name.clone()));
                    }
                }
                name
            }
        };
        let value =
            HeaderValue::from_maybe_shared(head.slice(v0..v1)).map_err(|_| WireError::Malformed("bad header value"))?;
        facts.note(&name, value.as_bytes());
        headers.append(name, value);
    }
    let mut parts = response::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((parts, facts)))
}

/// A parsed head's length, status, version and headers.
type Status<'b, 'h> = (usize, StatusCode, Version, &'h [httparse::Header<'b>]);

/// The response head at the front of `buf` (`None` while incomplete): its length, status, version
/// and headers (in `slots`).
fn parse_status<'b, 'h>(
    buf: &'b [u8],
    slots: &'h mut [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS],
) -> Result<Option<Status<'b, 'h>>, WireError> {
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::Malformed("too many headers")),
        Err(_) => return Err(WireError::Malformed("unparsable head")),
    };
    let status = parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(WireError::Malformed("bad status"))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    Ok(Some((len, status, version, parsed.headers)))
}

/// [`parse_head`] leaving the headers as sent ([`RawHead`]).
fn parse_raw(buf: &mut BytesMut) -> Result<Option<(response::Parts, Facts, Option<RawHead>)>, WireError> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let Some((len, status, version, parsed)) = parse_status(buf, &mut slots)? else { return Ok(None) };
    let mut facts = Facts::default();
    let mut connection_named = false;
    // httparse has checked what the map's types would: names are tokens, values have no control
    // bytes but tab (`tests/upstream_framing.rs` sends both kinds of fault on this path).
    for h in parsed.iter() {
        let name = h.name.as_bytes();
        facts.note_raw(name, h.value);
        if name.eq_ignore_ascii_case(b"connection") {
            connection_named |= visible(h.value)
                && h.value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .any(|t| !t.is_empty() && !crate::head::is_hop_by_hop(t));
        }
    }
    let start = parsed.first().map_or(len, |h| h.name.as_ptr() as usize - buf.as_ptr() as usize);
    let head = buf.split_to(len).freeze();
    let mut parts = response::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    let drop_length = (facts.chunked.is_some() && facts.has_length) || facts.length_listed;
    Ok(Some((parts, facts, Some(RawHead { head, start, drop_length, connection_named }))))
}

/// A response head's headers kept as the upstream sent them ([`Conn::read_head`] with `raw`), for a
/// writer that writes them out as bytes (`h1.rs`), checked as the map would have checked them.
pub struct RawHead {
    head: Bytes,
    /// Where the first header line starts.
    start: usize,
    /// `Content-Length` is left out: the response also said `Transfer-Encoding` (RFC 9112 §6.3), or
    /// said it as a list (the writer then says the one length the body has).
    drop_length: bool,
    /// A `Connection` header names headers beyond the fixed hop-by-hop list: those are not forwarded.
    connection_named: bool,
}

impl RawHead {
    /// Every header as `(name, value)`, name as sent, value trimmed, in order; `Content-Length`
    /// left out when the framing says so.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let drop_length = self.drop_length;
        self.head
            .get(self.start..)
            .unwrap_or_default()
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .take_while(|line| !line.is_empty())
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                Some((&line[..colon], line[colon + 1..].trim_ascii()))
            })
            .filter(move |(name, _)| !(drop_length && name.eq_ignore_ascii_case(b"content-length")))
    }

    /// Whether a header of `name` is one the response's `Connection` header lists (so hop-by-hop).
    pub fn connection_lists(&self, name: &[u8]) -> bool {
        self.connection_named
            && self.headers().filter(|(n, _)| n.eq_ignore_ascii_case(b"connection")).any(|(_, v)| lists_token(v, name))
    }
}

/// What a response head's framing headers say, gathered as its headers are parsed, so that
/// [`framing`] looks none of them up in the map again. Each is read as `http`'s `to_str` would
/// have it: a value with other than visible ASCII (or tab) in it lists no token.
struct Facts {
    /// A `Connection` value lists `close`.
    close: bool,
    /// `Transfer-Encoding` was sent; `Some(true)` when its last value's last coding is `chunked`.
    chunked: Option<bool>,
    /// `Content-Length` was sent.
    has_length: bool,
    /// ... more than once, or as a list (`2, 2`): forwarded as the one length it says, since an h2
    /// client refuses a list.
    length_listed: bool,
    /// The length its values agree on, or why they do not (the first fault met, in order).
    length: Result<Option<u64>, &'static str>,
}

impl Default for Facts {
    fn default() -> Self {
        Facts { close: false, chunked: None, has_length: false, length_listed: false, length: Ok(None) }
    }
}

impl Facts {
    /// [`Self::note`] for a name as sent (any case).
    fn note_raw(&mut self, name: &[u8], value: &[u8]) {
        let known = [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION];
        if let Some(name) = known.iter().find(|k| name.eq_ignore_ascii_case(k.as_str().as_bytes())) {
            self.note(name, value);
        }
    }

    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::CONTENT_LENGTH {
            self.length_listed |= self.has_length || value.contains(&b',');
            self.has_length = true;
            if let Ok(seen) = self.length {
                self.length = content_length(value, seen);
            }
        } else if *name == header::TRANSFER_ENCODING {
            self.chunked = Some(
                visible(value)
                    && value
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked")),
            );
        } else if *name == header::CONNECTION {
            self.close |= lists_token(value, b"close");
        }
    }
}

/// One `Content-Length` value (a comma list of equal lengths allowed) after the lengths `seen` so far.
fn content_length(value: &[u8], mut seen: Option<u64>) -> Result<Option<u64>, &'static str> {
    if !visible(value) {
        return Err("bad Content-Length");
    }
    for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err("bad Content-Length");
        }
        let n = part.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')));
        let n = n.ok_or("bad Content-Length")?;
        if seen.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length values");
        }
        seen = Some(n);
    }
    Ok(seen)
}

/// How the body of this response is framed, and whether the connection may be reused after it.
/// `Content-Length` is dropped from a response that also says `Transfer-Encoding` (RFC 9112 §6.3).
fn framing(parts: &mut response::Parts, facts: Facts, method: &Method) -> Result<(State, bool), WireError> {
    let mut reusable = parts.version == Version::HTTP_11 && !facts.close;
    if *method == Method::HEAD || parts.status == StatusCode::NO_CONTENT || parts.status == StatusCode::NOT_MODIFIED {
        return Ok((State::Done, reusable));
    }
    if let Some(chunked) = facts.chunked {
        if facts.has_length {
            parts.headers.remove(header::CONTENT_LENGTH);
            reusable = false;
        }
        return Ok(if chunked { (State::Chunk(Chunk::Size), reusable) } else { (State::Close, false) });
    }
    let length = facts.length.map_err(WireError::Malformed)?;
    if let (true, Some(n)) = (facts.length_listed, length) {
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(match length {
        Some(0) => (State::Done, reusable),
        Some(n) => (State::Length(n), reusable),
        None => (State::Close, false),
    })
}

/// Does any of `name`'s values list `token` (comma-separated, compared without regard to case)?
/// `Connection: close`, `Connection: upgrade` and the like.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| lists_token(v.as_bytes(), token.as_bytes()))
}

/// Whether a comma-separated header value lists `token` (ASCII case aside). A value with other
/// than visible ASCII (or tab) in it lists none, as `HeaderValue::to_str` would refuse it.
fn lists_token(value: &[u8], token: &[u8]) -> bool {
    visible(value) && value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether an I/O error is the peer closing or resetting the connection (for TLS: closing it
/// without close_notify), rather than a local fault.
pub fn closed_by_peer(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

enum State {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunk(Chunk),
    /// Until the upstream closes the connection.
    Close,
    Done,
}

enum Chunk {
    Size,
    /// Bytes left of the current chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// A response body read off its connection. The connection comes back out with [`Self::take_conn`]
/// once the body has been read to its end, when it may carry another request.
pub struct ResponseBody {
    conn: Option<Conn>,
    state: State,
    reusable: bool,
    /// The head's headers as sent, when they were asked for raw.
    head: Option<RawHead>,
}

impl ResponseBody {
    /// The response's headers as sent ([`Conn::read_head`] with `raw`).
    pub fn raw_head(&self) -> Option<&RawHead> {
        self.head.as_ref()
    }

    pub fn is_end(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The exact length still to come, when the framing says it.
    pub fn exact_len(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The connection, for the next request: only once the body has ended, when the response let
    /// it be reused and nothing unasked came after it.
    pub fn take_conn(&mut self) -> Option<Conn> {
        if !self.is_end() || !self.reusable {
            return None;
        }
        self.conn.take().filter(|c| c.read.is_empty())
    }

    /// The next piece of the body; `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, WireError>>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
        loop {
            let buf = &mut conn.read;
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) => {
                    if !buf.is_empty() {
                        let n = (*left).min(buf.len() as u64) as usize;
                        *left -= n as u64;
                        if *left == 0 {
                            self.state = State::Done;
                        }
                        return Poll::Ready(Some(Ok(buf.split_to(n).freeze())));
                    }
                }
                State::Close => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(buf.split().freeze())));
                    }
                }
                State::Chunk(Chunk::Data(left)) => {
                    if !buf.is_empty() {
                        let n = (*left).min(buf.len() as u64) as usize;
                        *left -= n as u64;
                        if *left == 0 {
                            self.state = State::Chunk(Chunk::DataEnd);
                        }
                        return Poll::Ready(Some(Ok(buf.split_to(n).freeze())));
                    }
                }
                State::Chunk(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buf.split_to(used);
                        self.state = State::Chunk(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Poll::Ready(Some(Err(WireError::Malformed("chunk size line too long"))));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Poll::Ready(Some(Err(WireError::Malformed("bad chunk size")))),
                },
                State::Chunk(Chunk::DataEnd) => {
                    if buf.len() >= 2 {
                        if &buf[..2] != b"\r\n" {
                            return Poll::Ready(Some(Err(WireError::Malformed("chunk not followed by CRLF"))));
                        }
                        let _ = buf.split_to(2);
                        self.state = State::Chunk(Chunk::Size);
                        continue;
                    }
                }
                State::Chunk(Chunk::Trailers) => {
                    let mut slots = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            let _ = buf.split_to(used);
                            self.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                            return Poll::Ready(Some(Err(WireError::Malformed("trailers too large"))));
                        }
                        Ok(httparse::Status::Partial) => {}
                        Err(_) => return Poll::Ready(Some(Err(WireError::Malformed("bad trailers")))),
                    }
                }
            }
            // Need more bytes.
            let n = match ready!(conn.poll_fill(cx)) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Some(Err(WireError::Io(e)))),
            };
            if n == 0 {
                if matches!(self.state, State::Close) {
                    self.state = State::Done;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(WireError::Closed)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::header::{self, HeaderName};

    use super::{Facts, content_length};

    fn facts(headers: &[(HeaderName, &[u8])]) -> Facts {
        let mut f = Facts::default();
        for (name, value) in headers {
            f.note(name, value);
        }
        f
    }

    #[test]
    fn content_length_values_read_as_one_length_or_a_fault() {
        assert_eq!(content_length(b"5", None), Ok(Some(5)));
        assert_eq!(content_length(b" 5 ,5", None), Ok(Some(5)), "a comma list of equal lengths");
        assert_eq!(content_length(b"007", None), Ok(Some(7)));
        assert_eq!(content_length(b"18446744073709551615", None), Ok(Some(u64::MAX)));
        assert_eq!(content_length(b"5", Some(6)), Err("conflicting Content-Length values"));
        for bad in [&b""[..], b"+5", b"5,", b"5 6", b"0x5", b"18446744073709551616", b"5\xff"] {
            assert_eq!(content_length(bad, None), Err("bad Content-Length"), "{}", String::from_utf8_lossy(bad));
        }
        // The first fault met stays, whatever follows.
        let f = facts(&[(header::CONTENT_LENGTH, b"x"), (header::CONTENT_LENGTH, b"5")]);
        assert_eq!((f.has_length, f.length), (true, Err("bad Content-Length")));
        let f = facts(&[(header::CONTENT_LENGTH, b"5"), (header::CONTENT_LENGTH, b"5")]);
        assert_eq!(f.length, Ok(Some(5)));
    }

    #[test]
    fn connection_and_transfer_encoding_tokens_are_read_as_to_str_would() {
        assert!(facts(&[(header::CONNECTION, b"keep-alive, Close")]).close);
        assert!(facts(&[(header::CONNECTION, b"keep-alive"), (header::CONNECTION, b" close ")]).close);
        assert!(!facts(&[(header::CONNECTION, b"closed, keep-alive")]).close);
        assert!(!facts(&[(header::CONNECTION, b"close, \xe9")]).close, "not visible ASCII: no tokens");
        assert_eq!(facts(&[(header::TRANSFER_ENCODING, b"gzip, Chunked")]).chunked, Some(true));
        assert_eq!(facts(&[(header::TRANSFER_ENCODING, b"chunked, gzip")]).chunked, Some(false));
        assert_eq!(
            facts(&[(header::TRANSFER_ENCODING, b"chunked"), (header::TRANSFER_ENCODING, b"gzip")]).chunked,
            Some(false),
            "the last value decides"
        );
        assert_eq!(facts(&[(header::TRANSFER_ENCODING, b"chunked\xe9")]).chunked, Some(false));
        assert_eq!(facts(&[(header::CONTENT_TYPE, b"text/plain")]).chunked, None);
    }
}
