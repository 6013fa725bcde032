//! Forwarding to the upstream: the upstream request (hop-by-hop headers stripped, `X-Forwarded-*`
//! appended, `X-Request-Id`, identity headers), the deadline, and the classification of upstream
//! failures (connect → 502, no headers in time → 504). The connections it goes out on are
//! `upstream.rs`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::body::{ClientBodyError, RequestBody, UploadTooLarge};
use crate::metrics::UpstreamErrorKind;
use crate::upstream::{Pool, SendError, Target, UpstreamBody};
use crate::wire::has_token;

pub type UpstreamClient = Pool<RequestBody>;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1). `Connection` first:
/// `strip_hop_by_hop` reads its bit as bit 0.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where `name` is in [`HOP_BY_HOP`] (`head.rs` holds the one list of names by text).
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    crate::head::hop_by_hop_index(name.as_str().as_bytes())
}

/// One connection pool for the process (it outlives config snapshots, so connections survive
/// reloads). Plain `http://` upstreams (the sidecar case) and `https://` ones (system and Mozilla
/// roots, plus `server.upstream_ca_file`).
pub fn client(extra_ca: Option<&std::path::Path>) -> Result<UpstreamClient, String> {
    Ok(Pool::new(https_connector(extra_ca)?))
}

/// An HTTP + HTTPS connector: system roots and Mozilla's, plus the PEM roots in `extra_ca`.
pub fn https_connector(
    extra_ca: Option<&std::path::Path>,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    // The provider is named here rather than taken from the process default: building a connector
    // (which compiling a snapshot does, to check upstream_ca_file) touches no global state.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// No response headers came back. The client's own failures (its body broke, or grew past the
/// upload cap) are told apart from the upstream's, so a client cannot fire upstream alerts at will.
#[derive(Debug)]
pub enum ForwardError {
    /// No connection could be made; the cause (refused, unreachable, TLS, connect timeout) is for
    /// the log line.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    Timeout,
    /// The connection broke or the response was malformed.
    Protocol,
    /// The client's request body was malformed or truncated.
    ClientBody,
    /// The client's streamed body grew past the upload cap.
    UploadTooLarge,
}

impl ForwardError {
    /// The `kind` label for an upstream failure; `None`: the client's fault, not the upstream's.
    pub fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            ForwardError::Connect(_) => Some(UpstreamErrorKind::Connect),
            ForwardError::Timeout => Some(UpstreamErrorKind::Timeout),
            ForwardError::Protocol => Some(UpstreamErrorKind::Protocol),
            ForwardError::ClientBody | ForwardError::UploadTooLarge => None,
        }
    }

    /// Classifies a send error by walking its causes down to our own request body's errors.
    fn classify(e: SendError) -> ForwardError {
        let e = match e {
            SendError::Connect(cause) => return ForwardError::Connect(cause),
            SendError::Wire(_) => return ForwardError::Protocol,
            SendError::Http(e) => e,
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
        while let Some(c) = cause {
            if c.is::<UploadTooLarge>() {
                return ForwardError::UploadTooLarge;
            }
            if c.is::<ClientBodyError>() {
                return ForwardError::ClientBody;
            }
            cause = c.source();
        }
        ForwardError::Protocol
    }
}

/// Sends the request (as [`prepare`] left it) to `to`; waits at most `timeout` for the response
/// head. The response comes with its connection, for the body to give back when it has been read.
pub async fn send(
    client: &UpstreamClient,
    to: &Upstream<'_>,
    req: Request<RequestBody>,
    timeout: Duration,
) -> Result<Response<UpstreamBody<RequestBody>>, ForwardError> {
    let target = Target { scheme: to.scheme, authority: to.authority };
    match tokio::time::timeout(timeout, client.send(target, req)).await {
        Err(_) => Err(ForwardError::Timeout),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(ForwardError::classify(e)),
    }
}

/// [`send`] for a request whose head [`write_head`] wrote: no body, a plain `http://` upstream.
pub async fn send_head(
    client: &UpstreamClient,
    to: &Upstream<'_>,
    method: &http::Method,
    head: &[u8],
    timeout: Duration,
) -> Result<Response<UpstreamBody<RequestBody>>, ForwardError> {
    let target = Target { scheme: to.scheme, authority: to.authority };
    match tokio::time::timeout(timeout, client.send_head(target, method, head)).await {
        Err(_) => Err(ForwardError::Timeout),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(ForwardError::classify(e)),
    }
}

/// The identity headers tiergate sends the upstream (none on an exempt route).
pub struct Added {
    pub user: Option<HeaderValue>,
    pub tier: Option<HeaderValue>,
}

/// The names the identity headers go under; a client's own headers of these names are dropped.
#[derive(Clone, Copy)]
pub struct Names<'a> {
    pub user_id: &'a HeaderName,
    pub tier: &'a HeaderName,
}

/// What [`write_head`] does with one of the client's headers.
enum Copy {
    As,
    Drop,
    ForwardedFor,
    ForwardedProto,
    RequestId,
}

/// A client header's name (as sent, any case) as [`write_head`] treats it.
fn copy_of(name: &str, names: Names<'_>) -> Copy {
    if name.eq_ignore_ascii_case(names.user_id.as_str()) || name.eq_ignore_ascii_case(names.tier.as_str()) {
        return Copy::Drop;
    }
    if crate::head::is_hop_by_hop(name.as_bytes()) {
        return Copy::Drop;
    }
    if name.eq_ignore_ascii_case("x-forwarded-for") {
        Copy::ForwardedFor
    } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
        Copy::ForwardedProto
    } else if name.eq_ignore_ascii_case("x-request-id") {
        Copy::RequestId
    } else {
        Copy::As
    }
}

/// Writes the upstream request head for a client's head taken as it was sent (`h1.rs`'s requests:
/// no body, one `Host`, and a `Connection` header naming nothing but `keep-alive` or `close`), doing
/// what [`prepare`] does to a request's parts: hop-by-hop headers and the client's identity headers
/// left out, `X-Forwarded-For` appended to, `X-Forwarded-Proto` set (kept from a trusted peer),
/// `X-Request-Id` kept or given (`request_id`, when the access log chose one: it replaces the
/// client's), and the identity headers `added`. Names go out as the client sent them.
#[allow(clippy::too_many_arguments)]
pub fn write_head(
    out: &mut Vec<u8>,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    headers: &[httparse::Header<'_>],
    to: &Upstream<'_>,
    names: Names<'_>,
    added: &Added,
    request_id: Option<&HeaderValue>,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let line = crate::head::line;
    // `X-Forwarded-For`: every value the client sent that is visible ASCII, then the peer.
    let mut xff = Vec::new();
    let mut proto_kept = false;
    let mut id_sent = false;
    for h in headers {
        match copy_of(h.name, names) {
            Copy::As => line(out, h.name.as_bytes(), h.value),
            Copy::Drop => {}
            Copy::ForwardedFor => {
                if crate::head::visible(h.value) {
                    if !xff.is_empty() {
                        xff.extend_from_slice(b", ");
                    }
                    xff.extend_from_slice(h.value);
                }
            }
            Copy::ForwardedProto if to.trusted_peer => {
                proto_kept = true;
                line(out, h.name.as_bytes(), h.value);
            }
            Copy::ForwardedProto => {}
            Copy::RequestId if request_id.is_none() => {
                id_sent = true;
                line(out, h.name.as_bytes(), h.value);
            }
            Copy::RequestId => {}
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if !xff.is_empty() {
        out.extend_from_slice(&xff);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(to.client_ip_value.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !proto_kept {
        line(out, b"x-forwarded-proto", to.proto.as_bytes());
    }
    match request_id {
        Some(id) => line(out, b"x-request-id", id.as_bytes()),
        None if !id_sent => line(out, b"x-request-id", request_id_bytes(&mut [0; 32])),
        None => {}
    }
    if let Some(user) = &added.user {
        line(out, names.user_id.as_str().as_bytes(), user.as_bytes());
    }
    if let Some(tier) = &added.tier {
        line(out, names.tier.as_str().as_bytes(), tier.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Is this an HTTP/1.1 upgrade request (e.g. WebSocket) that should be passed through?
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && has_token(req.headers(), header::CONNECTION, "upgrade")
}

/// Removes hop-by-hop headers, including every header named in `Connection`. When `keep_upgrade`
/// is set (an upgrade being passed through) `Upgrade` and `Connection: upgrade` survive.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Which of the fixed list are here, in one pass over the names (a removal hashes its name;
    // most messages carry one hop-by-hop header or none).
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return; // no `Connection` either, so nothing it could name
    }
    // `Connection: keep-alive` or `upgrade` (nearly every one) names only headers the fixed list
    // below removes anyway: only other tokens are collected (which allocates), and a value that is
    // one such name alone is not split at all.
    let listed = |t: &str| HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h.as_str()));
    let mut named: Vec<HeaderName> = Vec::new();
    if present & 1 != 0 {
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            if listed(value) {
                continue;
            }
            for token in value.split(',').map(str::trim) {
                if !token.is_empty()
                    && !listed(token)
                    && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    let upgrade = if keep_upgrade { headers.remove(header::UPGRADE) } else { None };
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        // A name `Connection` listed may be one of the fixed list: its removal above already went.
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Where the request goes and what it says about the client.
pub struct Upstream<'a> {
    pub scheme: &'a Scheme,
    pub authority: &'a Authority,
    /// The client's address as a header value (the connection's, formatted once).
    pub client_ip_value: &'a HeaderValue,
    /// Keep the client's `X-Forwarded-Proto` (the peer is a trusted proxy).
    pub trusted_peer: bool,
    /// How the client reached us: `http` or `https`.
    pub proto: &'static str,
    pub upgrade: bool,
}

/// Turns the client's request parts into the upstream request's (same method, path, query, body),
/// with an origin-form URI: where it goes is `to`'s.
pub fn prepare(parts: &mut http::request::Parts, to: &Upstream<'_>) {
    // h2 clients carry the host in the URI; the HTTP/1.1 upstream needs a Host header (the
    // upstream's own when the client sent none at all, an HTTP/1.0 client's right).
    if !parts.headers.contains_key(header::HOST) {
        let authority = parts.uri.authority().unwrap_or(to.authority);
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    if parts.uri.scheme().is_some() || parts.uri.path_and_query().is_none() {
        let path = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from(path.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    }
    parts.version = Version::HTTP_11;

    strip_hop_by_hop(&mut parts.headers, to.upgrade);
    append_forwarded_for(&mut parts.headers, to.client_ip_value);
    // One hash per header: the entry is looked up once, then filled or kept.
    match parts.headers.entry(&X_FORWARDED_PROTO) {
        Entry::Occupied(_) if to.trusted_peer => {}
        Entry::Occupied(mut kept) => {
            kept.insert(HeaderValue::from_static(to.proto));
        }
        Entry::Vacant(slot) => {
            slot.insert(HeaderValue::from_static(to.proto));
        }
    }
    if let Entry::Vacant(slot) = parts.headers.entry(&X_REQUEST_ID) {
        slot.insert(request_id());
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let mut sent = match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(peer.clone());
            return;
        }
        Entry::Occupied(sent) => sent,
    };
    let mut value = String::with_capacity(64);
    for v in sent.iter().filter_map(|v| v.to_str().ok()) {
        if !value.is_empty() {
            value.push_str(", ");
        }
        value.push_str(v);
    }
    if !value.is_empty() {
        value.push_str(", ");
    }
    value.push_str(peer.to_str().unwrap_or("unknown"));
    if let Ok(v) = HeaderValue::from_str(&value) {
        // Every value it had becomes this one.
        sent.insert(v);
    }
}

/// A unique request id: a per-process random prefix and a counter, as 32 hex digits.
pub fn request_id() -> HeaderValue {
    crate::values::header_value(request_id_bytes(&mut [0; 32])).unwrap_or(HeaderValue::from_static("0"))
}

/// [`request_id`]'s digits, written into `buf`.
fn request_id_bytes(buf: &mut [u8; 32]) -> &[u8] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // The prefix's 16 digits, written once per process.
    static PREFIX: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        hex16(h.finish())
    });
    buf[..16].copy_from_slice(prefix);
    buf[16..].copy_from_slice(&hex16(COUNTER.fetch_add(1, Ordering::Relaxed)));
    &buf[..]
}

/// `n` as 16 lower-case hex digits, most significant first.
fn hex16(n: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX[((n >> (60 - 4 * i)) & 15) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn the_hop_by_hop_index_matches_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for name in [header::HOST, header::USER_AGENT, header::CONTENT_LENGTH, HeaderName::from_static("x-te")] {
            assert_eq!(hop_by_hop_index(&name), None, "{name}");
        }
    }

    #[test]
    fn request_ids_are_unique() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{a}");
        assert_eq!(a[..16], b[..16], "one prefix per process");
        let (na, nb) = (u64::from_str_radix(&a[16..], 16).unwrap(), u64::from_str_radix(&b[16..], 16).unwrap());
        assert!(nb > na, "then a counter: {a} {b}");
        assert_eq!(super::hex16(0x0123_4567_89ab_cdef), *b"0123456789abcdef");
    }
}
