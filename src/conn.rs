//! What one accepted connection knows, shared by the server (which serves it) and the proxy (which
//! answers its requests): [`ConnInfo`] (peer, TLS), [`ConnActivity`] (requests in flight, the
//! request head being read, what the framing sniffer found) and [`SniffedStream`], the client's byte
//! stream with an HTTP/1.1 framing sniffer on it.
//!
//! Why a sniffer: hyper drops `Content-Length` from a request that also carries
//! `Transfer-Encoding` before the proxy can see it, yet RFC 9112 §6.1 wants that request refused.
//! The sniffer follows the connection's HTTP/1.1 framing as hyper will: each head, then its body by
//! `Content-Length` (skipped by count, never scanned) or by chunked framing (only the size lines and
//! trailers are read). So it finds every head, pipelined ones included, and numbers them; the proxy
//! numbers requests the same way and refuses the request whose head had both. Heads are also what
//! the header-read timeout watches. An h2 connection, an upgraded one, or framing the sniffer cannot
//! follow (hyper then refuses the request itself) switches it off.
//!
//! The stream also owns tiergate's answers to the heads hyper refuses itself ([`CodecAnswers`]):
//! hyper writes a bare 400, 414 or 431 with no hook to decorate it, so the stream recognises those
//! exact bytes as hyper writes them and sends tiergate's decorated answer in their place.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// One accepted connection, as requests on it see it.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` writes it (IPv4-mapped IPv6 as IPv4), formatted
    /// once per connection rather than once per request.
    pub peer_ip_value: http::HeaderValue,
    /// The client connected over TLS.
    pub tls: bool,
    pub activity: Arc<ConnActivity>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, activity: Arc<ConnActivity>) -> ConnInfo {
        let ip = peer.ip().to_canonical().to_string();
        let peer_ip_value =
            http::HeaderValue::from_str(&ip).unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        ConnInfo { peer, peer_ip_value, tls, activity }
    }
}

/// Per-connection activity: requests in flight (idle timeout), the head being read (header-read
/// timeout) and the framing sniffer's findings.
pub struct ConnActivity {
    born: Instant,
    active: AtomicUsize,
    /// Milliseconds after `born` at which the last request finished.
    last_ms: AtomicU64,
    /// 1 + milliseconds after `born` at which the request head being read began; 0: none.
    head_since: AtomicU64,
    /// The number (1-based) of the first request head that carried both `Content-Length` and
    /// `Transfer-Encoding`; 0: none so far.
    smuggling_head: AtomicU64,
    /// Requests the proxy has started on this connection.
    requests: AtomicU64,
    /// The connection was upgraded (a tunnel now): nothing more to sniff.
    upgraded: AtomicBool,
    /// 1 + the body length of the answer written in place of hyper's own; 0: none.
    codec_answer: AtomicU64,
}

impl Default for ConnActivity {
    fn default() -> Self {
        ConnActivity::new()
    }
}

impl ConnActivity {
    pub fn new() -> ConnActivity {
        ConnActivity {
            born: Instant::now(),
            active: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            // A new connection owes us a request head from the moment it is accepted.
            head_since: AtomicU64::new(1),
            smuggling_head: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            codec_answer: AtomicU64::new(0),
        }
    }

    /// The body bytes of tiergate's answer to a head hyper refused, when the stream wrote one.
    pub fn codec_answer_bytes(&self) -> Option<u64> {
        self.codec_answer.load(Ordering::Acquire).checked_sub(1)
    }

    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    pub fn end(&self) {
        self.last_ms.store(self.born.elapsed().as_millis() as u64, Ordering::Release);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Numbers the next request on this connection, in the order hyper hands them over (the order
    /// of their heads on the wire), and says whether its head carried both `Content-Length` and
    /// `Transfer-Encoding` (hyper has removed `Content-Length` by now; the sniffer saw it).
    pub fn next_request_had_cl_and_te(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        let bad = self.smuggling_head.load(Ordering::Acquire);
        bad != 0 && n >= bad
    }

    /// The connection became a tunnel (101 Switching Protocols): its bytes are no longer HTTP.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// When the connection becomes idle-expired if nothing happens; `None`: a request is in flight
    /// or a request head is being read.
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 || self.head_since.load(Ordering::Acquire) != 0 {
            return None;
        }
        Some(self.born + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + idle)
    }

    /// When the request head being read must be complete; `None`: no head is being read.
    pub fn head_deadline(&self, header_read_timeout: Duration) -> Option<Instant> {
        match self.head_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(self.born + Duration::from_millis(since - 1) + header_read_timeout),
        }
    }

    /// When the request head being read started; `None`: no head is being read.
    pub fn head_started_at(&self) -> Option<Instant> {
        match self.head_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(self.born + Duration::from_millis(since - 1)),
        }
    }

    fn mark_head(&self, reading: bool) {
        if reading {
            let now = self.born.elapsed().as_millis() as u64 + 1;
            // The watchdog finds it when it next fires (at most `header_read_timeout` away).
            let _ = self.head_since.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        } else {
            self.head_since.store(0, Ordering::Release);
        }
    }
}

/// tiergate's answers to the request heads hyper refuses before any request reaches tiergate (400
/// for a malformed head, 414, 431), rendered once per snapshot: status line and header lines (the
/// security headers among them), then the body. Only hyper's `date` line is taken from what it wrote.
pub struct CodecAnswers {
    answers: Vec<CodecAnswer>,
}

struct CodecAnswer {
    /// The status line and every header line, up to the `date` line.
    head: Vec<u8>,
    /// The length of the status line at the start of `head` (without its CRLF).
    status_line: usize,
    body: Vec<u8>,
}

/// The longest automatic answer hyper writes (431's status line, three short header lines).
const HYPER_ANSWER_MAX: usize = 160;

impl CodecAnswers {
    /// Renders each `(status, headers, body)`; `Content-Length` is added here.
    pub fn new(answers: impl IntoIterator<Item = (http::StatusCode, http::HeaderMap, String)>) -> CodecAnswers {
        let answers = answers
            .into_iter()
            .map(|(status, headers, body)| {
                let mut head = Vec::with_capacity(1024);
                head.extend_from_slice(b"HTTP/1.1 ");
                head.extend_from_slice(status.as_str().as_bytes());
                head.push(b' ');
                head.extend_from_slice(status.canonical_reason().unwrap_or("Error").as_bytes());
                let status_line = head.len();
                head.extend_from_slice(b"\r\n");
                for (name, value) in &headers {
                    head.extend_from_slice(name.as_str().as_bytes());
                    head.extend_from_slice(b": ");
                    head.extend_from_slice(value.as_bytes());
                    head.extend_from_slice(b"\r\n");
                }
                head.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
                CodecAnswer { head, status_line, body: body.into_bytes() }
            })
            .collect();
        CodecAnswers { answers }
    }

    /// tiergate's answer in place of `written`, when `written` is exactly an automatic answer of
    /// hyper's: `HTTP/1.1 <status> <reason>`, then only `connection: close`, `content-length: 0`
    /// and `date` lines, and the empty line. Anything else is `None` and goes out as it is.
    fn replace(&self, written: &[u8]) -> Option<(Vec<u8>, u64)> {
        if written.len() > HYPER_ANSWER_MAX || !written.starts_with(b"HTTP/1.1 ") || !written.ends_with(b"\r\n\r\n") {
            return None;
        }
        let text = std::str::from_utf8(&written[..written.len() - 4]).ok()?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next()?;
        let answer = self.answers.iter().find(|a| a.head[..a.status_line] == *status_line.as_bytes())?;
        let mut date = None;
        for line in lines {
            match line {
                "connection: close" | "content-length: 0" => {}
                _ => date = Some(line.strip_prefix("date: ")?),
            }
        }
        let mut out = Vec::with_capacity(answer.head.len() + answer.body.len() + 48);
        out.extend_from_slice(&answer.head);
        if let Some(date) = date {
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(date.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&answer.body);
        Some((out, answer.body.len() as u64))
    }
}

/// The client's stream, with the framing sniffer looking at every byte hyper reads.
pub struct SniffedStream<S> {
    inner: S,
    sniffer: FramingSniffer,
    activity: Arc<ConnActivity>,
    answers: Arc<CodecAnswers>,
    /// tiergate's answer going out in place of hyper's: the bytes, how many are written, and the
    /// length of hyper's buffer, reported as written once all of them are.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<S> SniffedStream<S> {
    pub fn new(inner: S, activity: Arc<ConnActivity>, answers: Arc<CodecAnswers>) -> SniffedStream<S> {
        SniffedStream { inner, sniffer: FramingSniffer::default(), activity, answers, replacing: None }
    }

    /// Whether `buf` is hyper's automatic answer to a refused head, to be replaced. It can only be
    /// while no request is in flight and the connection is still HTTP/1.1 (not a tunnel); the
    /// cheap checks come first, as every write passes here.
    #[inline]
    fn start_replacing(&mut self, buf: &[u8]) -> bool {
        buf.len() <= HYPER_ANSWER_MAX && buf.starts_with(b"HTTP/1.1 4") && self.start_replacing_slow(buf)
    }

    #[cold]
    fn start_replacing_slow(&mut self, buf: &[u8]) -> bool {
        if self.activity.active.load(Ordering::Acquire) != 0 || self.activity.upgraded.load(Ordering::Acquire) {
            return false;
        }
        let Some((bytes, body)) = self.answers.replace(buf) else { return false };
        self.activity.codec_answer.store(body + 1, Ordering::Release);
        self.replacing = Some((bytes, 0, buf.len()));
        true
    }
}

impl<S: AsyncWrite + Unpin> SniffedStream<S> {
    /// Writes the replacement out; hyper hears its own buffer was written once all of it is.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let SniffedStream { inner, replacing, .. } = self;
        let Some((bytes, at, reported)) = replacing else { return Poll::Ready(Ok(0)) };
        while *at < bytes.len() {
            match Pin::new(&mut *inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *at += n,
                other => return other,
            }
        }
        let reported = *reported;
        *replacing = None;
        Poll::Ready(Ok(reported))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SniffedStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let fresh = &buf.filled()[before..];
        if fresh.is_empty() || this.sniffer.is_off() {
            return result;
        }
        if this.activity.upgraded.load(Ordering::Acquire) {
            this.sniffer.turn_off();
            this.activity.mark_head(false);
            return result;
        }
        if let Some(head) = this.sniffer.feed(fresh) {
            let _ = this.activity.smuggling_head.compare_exchange(0, head, Ordering::AcqRel, Ordering::Acquire);
        }
        this.activity.mark_head(this.sniffer.reading_head());
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SniffedStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_some() || this.start_replacing(buf) {
            return this.poll_replacement(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // hyper's automatic answer is a head alone: one buffer (hyper passes no empty ones).
        let single = match bufs {
            [one] => Some(&**one),
            _ => None,
        };
        if this.replacing.is_some() || single.is_some_and(|buf| this.start_replacing(buf)) {
            return this.poll_replacement(cx);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
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

/// Where the sniffer is in the connection's HTTP/1.1 byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A request line and header lines, up to the empty line.
    Head,
    /// `Content-Length` body bytes still to come.
    Body(u64),
    /// A chunk-size line (hex digits, then extensions, up to LF).
    ChunkSize,
    /// Chunk data bytes still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to the empty line.
    Trailers,
    /// h2, an upgraded tunnel, or framing hyper will refuse anyway.
    Off,
}

/// How much of a header line is kept (as sent: names are compared ignoring ASCII case) to recognise
/// the framing headers and read a `Content-Length` value.
const LINE_KEEP: usize = 64;

/// Follows HTTP/1.1 framing; reports heads that carry both `Content-Length` and `Transfer-Encoding`.
pub struct FramingSniffer {
    phase: Phase,
    line: [u8; LINE_KEEP],
    line_len: usize,
    /// Bytes in the current line, excluding CR.
    line_total: usize,
    seen_request_line: bool,
    /// The head's `Content-Length`: `Some(Ok(n))`, or `Some(Err)` when it cannot be read as hyper
    /// would (hyper refuses such a request itself).
    content_length: Option<Result<u64, ()>>,
    transfer_encoding: bool,
    /// Chunk size being read; `None`: its digits overflowed.
    chunk_size: Option<u64>,
    chunk_digits: bool,
    /// Past the chunk size's digits (in an extension).
    chunk_ext: bool,
    /// Heads completed on this connection.
    heads: u64,
}

impl Default for FramingSniffer {
    fn default() -> Self {
        FramingSniffer {
            phase: Phase::Head,
            line: [0; LINE_KEEP],
            line_len: 0,
            line_total: 0,
            seen_request_line: false,
            content_length: None,
            transfer_encoding: false,
            chunk_size: Some(0),
            chunk_digits: false,
            chunk_ext: false,
            heads: 0,
        }
    }
}

impl FramingSniffer {
    pub fn is_off(&self) -> bool {
        self.phase == Phase::Off
    }

    pub fn turn_off(&mut self) {
        self.phase = Phase::Off;
    }

    /// Part of a request head has been read and its end not yet.
    pub fn reading_head(&self) -> bool {
        self.phase == Phase::Head && (self.seen_request_line || self.line_total > 0)
    }

    /// Feeds bytes as they are read; returns the number (1-based) of a head that just ended with
    /// both `Content-Length` and `Transfer-Encoding`, if one did.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<u64> {
        let mut found = None;
        while !bytes.is_empty() {
            match self.phase {
                Phase::Off => break,
                Phase::Body(left) | Phase::ChunkData(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.phase = match (self.phase, left - take) {
                        (Phase::Body(_), 0) => Phase::Head,
                        (Phase::Body(_), n) => Phase::Body(n),
                        (_, 0) => Phase::ChunkEnd,
                        (_, n) => Phase::ChunkData(n),
                    };
                }
                // Head and trailer lines are taken a line at a time: find the LF, keep what the
                // line needs kept, and skip the rest unread.
                Phase::Head | Phase::Trailers => {
                    let (seg, end) = match memchr::memchr(b'\n', bytes) {
                        Some(at) => (&bytes[..at], true),
                        None => (bytes, false),
                    };
                    bytes = &bytes[seg.len() + usize::from(end)..];
                    self.line_bytes(seg);
                    if end && let Some(head) = self.line_byte(b'\n') {
                        found = found.or(Some(head));
                    }
                }
                Phase::ChunkSize | Phase::ChunkEnd => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if let Some(head) = self.line_byte(b) {
                        found = found.or(Some(head));
                    }
                }
            }
        }
        found
    }

    /// Bytes of a head or trailer line with no LF among them: what [`FramingSniffer::line_byte`]
    /// would do with each, at once (CRs are not part of a line, wherever they are).
    fn line_bytes(&mut self, seg: &[u8]) {
        let seg = seg.strip_suffix(b"\r").unwrap_or(seg);
        if memchr::memchr(b'\r', seg).is_some() {
            for &b in seg {
                self.line_byte(b);
            }
            return;
        }
        if self.phase == Phase::Head {
            let keep = (LINE_KEEP - self.line_len).min(seg.len());
            if let (Some(to), Some(from)) = (self.line.get_mut(self.line_len..self.line_len + keep), seg.get(..keep)) {
                to.copy_from_slice(from);
            }
            self.line_len += keep;
        }
        self.line_total += seg.len();
    }

    /// One byte of a line-based phase.
    fn line_byte(&mut self, b: u8) -> Option<u64> {
        match (self.phase, b) {
            (_, b'\r') => None,
            (Phase::ChunkSize, b'\n') => {
                self.phase = match (self.chunk_digits, self.chunk_size) {
                    (true, Some(0)) => Phase::Trailers,
                    (true, Some(n)) => Phase::ChunkData(n),
                    // No digits, or a size past u64: hyper refuses the body.
                    _ => Phase::Off,
                };
                self.chunk_size = Some(0);
                self.chunk_digits = false;
                self.chunk_ext = false;
                None
            }
            (Phase::ChunkSize, _) => {
                // Hex digits first; after the first other byte (an extension, whitespace) only LF matters.
                match (b as char).to_digit(16) {
                    Some(d) if !self.chunk_ext => {
                        self.chunk_digits = true;
                        self.chunk_size = self.chunk_size.and_then(|n| n.checked_mul(16)?.checked_add(u64::from(d)));
                    }
                    _ => self.chunk_ext = true,
                }
                None
            }
            (Phase::ChunkEnd, b'\n') => {
                self.phase = Phase::ChunkSize;
                None
            }
            (Phase::ChunkEnd, _) => {
                self.phase = Phase::Off;
                None
            }
            (Phase::Trailers, b'\n') => {
                if self.line_total == 0 {
                    self.phase = Phase::Head;
                }
                self.line_total = 0;
                None
            }
            (Phase::Trailers, _) => {
                self.line_total += 1;
                None
            }
            (Phase::Head, b'\n') => self.head_line_end(),
            (Phase::Head, _) => {
                if self.line_len < LINE_KEEP {
                    self.line[self.line_len] = b;
                    self.line_len += 1;
                }
                self.line_total += 1;
                None
            }
            (Phase::Body(_) | Phase::ChunkData(_) | Phase::Off, _) => None,
        }
    }

    fn head_line_end(&mut self) -> Option<u64> {
        let line_len = std::mem::take(&mut self.line_len);
        let line_total = std::mem::take(&mut self.line_total);
        if line_total == 0 {
            // Empty lines before a request line are ignored (RFC 9112 §2.2); after one, the head ends.
            return if self.seen_request_line { self.head_end() } else { None };
        }
        let line = &self.line[..line_len];
        if !self.seen_request_line {
            self.seen_request_line = true;
            if starts_with_ignoring_case(line, b"pri * http/2.0") {
                // The h2c preface: nothing to sniff on this connection, ever.
                self.phase = Phase::Off;
            }
            return None;
        }
        if let Some(value) = strip_prefix_ignoring_case(line, b"content-length:") {
            let complete = line_total <= LINE_KEEP;
            let parsed = if complete { parse_content_length(value) } else { Err(()) };
            self.content_length = match (self.content_length, parsed) {
                (None, v) => Some(v),
                (Some(Ok(a)), Ok(b)) if a == b => Some(Ok(a)),
                _ => Some(Err(())),
            };
        } else if starts_with_ignoring_case(line, b"transfer-encoding:") {
            self.transfer_encoding = true;
        }
        None
    }

    fn head_end(&mut self) -> Option<u64> {
        self.heads += 1;
        let (cl, te) = (self.content_length.take(), std::mem::take(&mut self.transfer_encoding));
        self.seen_request_line = false;
        self.phase = match (cl, te) {
            // Refused with 400 and the connection closed: nothing after it matters.
            (Some(_), true) => {
                self.phase = Phase::Off;
                return Some(self.heads);
            }
            (None, true) => Phase::ChunkSize,
            (Some(Ok(0)) | None, false) => Phase::Head,
            (Some(Ok(n)), false) => Phase::Body(n),
            (Some(Err(())), false) => Phase::Off,
        };
        None
    }
}

/// `line` after `prefix` (given in lower case), the case of `line`'s letters aside.
fn strip_prefix_ignoring_case<'a>(line: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let (start, rest) = line.split_at_checked(prefix.len())?;
    start.eq_ignore_ascii_case(prefix).then_some(rest)
}

fn starts_with_ignoring_case(line: &[u8], prefix: &[u8]) -> bool {
    strip_prefix_ignoring_case(line, prefix).is_some()
}

/// A `Content-Length` value as hyper reads it: digits, optionally a comma list of equal values.
fn parse_content_length(value: &[u8]) -> Result<u64, ()> {
    let mut result = None;
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 19 {
            return Err(());
        }
        let n: u64 = std::str::from_utf8(digits).map_err(|_| ())?.parse().map_err(|_| ())?;
        match result {
            None => result = Some(n),
            Some(m) if m == n => {}
            Some(_) => return Err(()),
        }
    }
    result.ok_or(())
}

#[cfg(test)]
mod tests {
    use super::{CodecAnswers, FramingSniffer};

    fn answers() -> CodecAnswers {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-frame-options", http::HeaderValue::from_static("DENY"));
        CodecAnswers::new([
            (http::StatusCode::BAD_REQUEST, headers.clone(), "{\"status\":400}".to_string()),
            (http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, headers, "{\"status\":431}".to_string()),
        ])
    }

    /// hyper's automatic answers, as it writes them, are replaced; anything else goes out untouched.
    #[test]
    fn only_hyper_s_exact_automatic_answers_are_replaced() {
        let date = "Wed, 02 Dec 2026 12:30:41 GMT";
        let hyper = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n"
        );
        let (out, body) = answers().replace(hyper.as_bytes()).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            format!(
                "HTTP/1.1 431 Request Header Fields Too Large\r\nx-frame-options: DENY\r\ncontent-length: 14\r\ndate: {date}\r\n\r\n{{\"status\":431}}"
            )
        );
        assert_eq!(body, 14);
        let bare = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(answers().replace(bare.as_bytes()).unwrap().0.ends_with(b"content-length: 14\r\n\r\n{\"status\":400}"));
        for other in [
            // a status with no answer compiled, a wrong reason, another header, a body, not a head
            format!("HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n"),
            format!("HTTP/1.1 400 Bad Thing\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\nx-upstream: 1\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\ndate: {date}\r\n\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: {date}\r\n\r\nhi"),
            format!(
                "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n{}\r\n\r\n",
                "x".repeat(200)
            ),
            "HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\n\r\n".to_string(),
        ] {
            assert!(answers().replace(other.as_bytes()).is_none(), "{other}");
        }
    }

    fn feed_split(stream: &[u8], split: usize) -> (Option<u64>, FramingSniffer) {
        let mut s = FramingSniffer::default();
        let a = s.feed(&stream[..split]);
        let b = s.feed(&stream[split..]);
        (a.or(b), s)
    }

    #[test]
    fn finds_both_framing_headers_across_reads() {
        let head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
        for split in 0..head.len() {
            assert_eq!(feed_split(head, split).0, Some(1), "split at {split}");
        }
        // Names are matched whatever the case of their letters, on the line-at-a-time path and on
        // the byte-by-byte one (a CR inside the line).
        for head in [
            &b"POST /x HTTP/1.1\r\nCONTENT-LENGTH: 5\r\ntransfer-ENCODING: chunked\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\ncontent-length: 5\r\nTRANSFER-ENCODING: \rchunked\r\n\r\n",
        ] {
            assert_eq!(FramingSniffer::default().feed(head), Some(1), "{}", String::from_utf8_lossy(head));
        }
        let mut s = FramingSniffer::default();
        s.feed(b"POST /x HTTP/1.1\r\ncOnTeNt-LeNgTh: 5\r\n\r\n");
        assert_eq!(s.phase, super::Phase::Body(5), "the length is read after a mixed-case name");
        // A header value that merely mentions the other name does not count.
        let mut s = FramingSniffer::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\nX-Note: content-length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), None);
        // h2c: the preface turns the sniffer off for good.
        let mut s = FramingSniffer::default();
        assert_eq!(s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        assert!(s.is_off());
    }

    /// The defect: a second head read together with the first request's body was never scanned.
    #[test]
    fn finds_pipelined_heads_after_length_and_chunked_bodies() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: a\r\n\r\n\
POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for split in 0..stream.len() {
            let (found, s) = feed_split(stream, split);
            assert_eq!(found, Some(4), "split at {split}");
            assert_eq!(s.heads, 4);
        }
        // Body bytes that look like a smuggled head are data, not a head.
        let mut s = FramingSniffer::default();
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!("POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        assert_eq!(s.feed(head.as_bytes()), None);
        assert_eq!(s.feed(body), None);
        assert_eq!(s.heads, 1);
        assert!(!s.reading_head());
    }

    /// Lines are scanned a line at a time, bytes with a CR inside one by one: both read the same.
    #[test]
    fn a_cr_inside_a_line_reads_as_it_does_byte_by_byte() {
        let stream: &[u8] =
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-\rLength: 3\r\r\nTransfer-Encoding: chunked\r\n\r\n";
        for split in 0..stream.len() {
            assert_eq!(feed_split(stream, split).0, Some(1), "split at {split}");
        }
        let mut bytewise = FramingSniffer::default();
        let found = stream.iter().filter_map(|b| bytewise.feed(std::slice::from_ref(b))).next();
        assert_eq!(found, Some(1));
    }

    #[test]
    fn framing_hyper_refuses_turns_it_off() {
        for stream in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let mut s = FramingSniffer::default();
            assert_eq!(s.feed(stream), None);
            assert!(s.is_off(), "{}", String::from_utf8_lossy(stream));
        }
        let mut s = FramingSniffer::default();
        s.feed(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhelloGET / HTTP/1.1\r\n");
        assert!(!s.is_off() && s.reading_head(), "equal comma-listed lengths are one length");
    }
}
