//! A request's headers as the stages read them: hyper's map (`Request<Incoming>`), or the head as
//! `httparse` parsed it on tiergate's own HTTP/1.1 path (`h1.rs`), read in place with no map built.
//! Names are compared without regard to case, as a map's lookups are; a value is its bytes as sent.

use http::HeaderMap;

/// Read-only access to one request's headers.
#[derive(Clone, Copy)]
pub enum Headers<'a> {
    Map(&'a HeaderMap),
    Parsed(&'a [httparse::Header<'a>]),
}

impl<'a> From<&'a HeaderMap> for Headers<'a> {
    fn from(map: &'a HeaderMap) -> Headers<'a> {
        Headers::Map(map)
    }
}

impl<'a> Headers<'a> {
    /// The first value of `name` (lower case).
    pub fn first(self, name: &str) -> Option<&'a [u8]> {
        self.all(name).next()
    }

    /// Every value of `name` (lower case), in the order sent.
    pub fn all(self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        let (map, parsed) = match self {
            Headers::Map(map) => (Some(map.get_all(name).iter().map(http::HeaderValue::as_bytes)), None),
            Headers::Parsed(headers) => {
                (None, Some(headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)))
            }
        };
        map.into_iter().flatten().chain(parsed.into_iter().flatten())
    }
}

/// Where `name` (as sent, any case) stands among the headers that describe one connection and are
/// never forwarded (RFC 9110 §7.6.1), in `forward.rs`'s `HOP_BY_HOP` order (`Connection` first).
pub fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    // Lower-cased on the stack, for one `match`; the longest name has 19 bytes.
    let mut lower = [0u8; 20];
    let buf = lower.get_mut(..name.len())?;
    buf.copy_from_slice(name);
    buf.make_ascii_lowercase();
    match &*buf {
        b"connection" => Some(0),
        b"keep-alive" => Some(1),
        b"proxy-connection" => Some(2),
        b"proxy-authenticate" => Some(3),
        b"proxy-authorization" => Some(4),
        b"te" => Some(5),
        b"trailer" => Some(6),
        b"transfer-encoding" => Some(7),
        b"upgrade" => Some(8),
        _ => None,
    }
}

/// Whether `name` (as sent, any case) is a hop-by-hop header ([`hop_by_hop_index`]).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    hop_by_hop_index(name).is_some()
}

/// Visible ASCII and tab only: what `HeaderValue::to_str` accepts.
pub fn visible(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (32..127).contains(&b))
}

/// Appends one header line, `name: value` and CRLF, to a head being written as bytes.
pub fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A value as text, as `HeaderValue::to_str` reads it: visible ASCII and tab only.
pub fn text(value: &[u8]) -> Option<&str> {
    if visible(value) { std::str::from_utf8(value).ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_read_the_same_values() {
        let mut map = HeaderMap::new();
        map.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        map.append("authorization", "Bearer t".parse().unwrap());
        map.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        let parsed = [
            httparse::Header { name: "X-Forwarded-For", value: b"1.1.1.1" },
            httparse::Header { name: "Authorization", value: b"Bearer t" },
            httparse::Header { name: "x-forwarded-for", value: b"2.2.2.2" },
        ];
        for headers in [Headers::from(&map), Headers::Parsed(&parsed)] {
            assert_eq!(headers.first("authorization"), Some(&b"Bearer t"[..]));
            assert_eq!(headers.all("x-forwarded-for").collect::<Vec<_>>(), [&b"1.1.1.1"[..], b"2.2.2.2"]);
            assert_eq!(headers.first("cookie"), None);
        }
        assert!(is_hop_by_hop(b"Keep-Alive") && is_hop_by_hop(b"TE") && is_hop_by_hop(b"proxy-authorization"));
        assert!(!is_hop_by_hop(b"Host") && !is_hop_by_hop(b"x-connection") && !is_hop_by_hop(b"transfer-encodings"));
        assert_eq!(text(b"ok\tfine"), Some("ok\tfine"));
        assert_eq!(text(b"no\x01"), None);
        assert_eq!(text(b"caf\xc3\xa9"), None);
    }
}
