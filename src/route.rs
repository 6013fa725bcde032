//! Path and method → [`Route`]: the request's class, whether it is shadowed, and its failure policy;
//! and the path normaliser, so that routes match exactly the path the upstream will receive.
//!
//! First matching prefix wins (in file order); no match → class `general`.
//!
//! [`normalize`] follows CONTRACT.md "Paths" (Envoy's `normalize_path` + `merge_slashes` +
//! `path_with_escaped_slashes` are the model): percent-encoded unreserved characters are decoded,
//! dot segments removed (RFC 3986 §5.2.4), runs of `/` merged. One step beyond RFC 3986: a segment
//! that is `.` or `..` followed by `;` parameters (`..;`) is a dot segment too, because Tomcat and
//! Jetty read it so. What cannot be normalised safely is refused: a climb above the root, a NUL or
//! control byte (raw or encoded), a raw backslash, a malformed escape, and (by default) an encoded
//! slash or backslash. An already-normal path (nearly every request) is not copied.

use std::borrow::Cow;

use http::Method;

/// Route classes, in the order used for per-class tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    General = 0,
    Api = 1,
    DataExport = 2,
    Exempt = 3,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::General, Class::Api, Class::DataExport, Class::Exempt];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::General => "general",
            Class::Api => "api",
            Class::DataExport => "data_export",
            Class::Exempt => "exempt",
        }
    }

    pub fn parse(s: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// What a request does when the limit store cannot answer (`on_error`, per route or storage-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Allow,
    Deny,
    Local,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub class: Class,
    /// Decide and report, never refuse.
    pub shadow: bool,
    /// The storage failure policy for this route (the route's own, else `storage.on_error`).
    pub on_error: OnError,
}

#[derive(Clone, Debug)]
pub struct RouteTable {
    entries: Vec<(String, Vec<Method>, Route)>,
    fallback: Route,
    escaped_slashes: EscapedSlashes,
}

impl RouteTable {
    /// `entries`: (prefix, methods (empty: any), route) in match order.
    pub fn new(
        entries: Vec<(String, Vec<Method>, Route)>,
        default_on_error: OnError,
        escaped_slashes: EscapedSlashes,
    ) -> RouteTable {
        RouteTable {
            entries,
            fallback: Route { class: Class::General, shadow: false, on_error: default_on_error },
            escaped_slashes,
        }
    }

    /// The request path as routes match it and the upstream receives it (see [`normalize`]).
    pub fn normalize<'p>(&self, path: &'p str) -> Result<Cow<'p, str>, PathError> {
        normalize(path, self.escaped_slashes)
    }

    pub fn classify(&self, method: &Method, path: &str) -> &Route {
        self.entries
            .iter()
            .find(|(prefix, methods, _)| {
                path.starts_with(prefix.as_str()) && (methods.is_empty() || methods.contains(method))
            })
            .map_or(&self.fallback, |(_, _, route)| route)
    }
}

/// What a `%2F` or `%5C` in a path means (`server.escaped_slashes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// 400: the backend might decode it into a separator the route table never saw.
    Reject,
    /// Forwarded undecoded, as data inside one segment.
    Keep,
}

/// Why a path was refused (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("The path climbs above the root.")]
    AboveRoot,
    #[error("The path holds a control character or a backslash.")]
    Forbidden,
    #[error("The path has a malformed percent-escape.")]
    BadEscape,
    #[error("The path holds an encoded slash or backslash.")]
    EncodedSlash,
    #[error("The path does not start with a slash.")]
    NotAbsolute,
}

impl PathError {
    /// The problem+json `detail` of the 400.
    pub fn detail(self) -> &'static str {
        match self {
            PathError::AboveRoot => "The path climbs above the root.",
            PathError::Forbidden => "The path holds a control character or a backslash.",
            PathError::BadEscape => "The path has a malformed percent-escape.",
            PathError::EncodedSlash => "The path holds an encoded slash or backslash.",
            PathError::NotAbsolute => "The path does not start with a slash.",
        }
    }
}

/// The path the route table sees and the upstream receives (the query string is not part of it).
pub fn normalize(path: &str, escaped_slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path)); // OPTIONS * (asterisk-form): no path to normalise
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Decode what may be decoded; refuse what must be refused.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else { return Err(PathError::BadEscape) };
                let c = (hi * 16 + lo) as u8;
                if is_unreserved(c) {
                    decoded.push(c);
                } else if c == b'/' || c == b'\\' {
                    if escaped_slashes == EscapedSlashes::Reject {
                        return Err(PathError::EncodedSlash);
                    }
                    decoded.extend_from_slice(&bytes[i..i + 3]);
                } else if c < 0x20 || c == 0x7f {
                    return Err(PathError::Forbidden);
                } else {
                    decoded.extend_from_slice(&bytes[i..i + 3]);
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Forbidden),
            _ if b < 0x20 || b == 0x7f => return Err(PathError::Forbidden),
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // 2. Remove dot segments and merge slashes, segment by segment.
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    let segments: Vec<&[u8]> = decoded[1..].split(|&c| c == b'/').collect();
    let last = segments.len() - 1;
    for (n, seg) in segments.iter().enumerate() {
        let name = seg.split(|&c| c == b';').next().unwrap_or(seg);
        let trailing = n == last;
        match name {
            b"." => {
                if trailing {
                    out.push(b'/');
                }
            }
            b".." => {
                // Pop the last segment; there must be one.
                let Some(cut) = out.iter().rposition(|&c| c == b'/') else { return Err(PathError::AboveRoot) };
                out.truncate(cut);
                if trailing {
                    out.push(b'/');
                }
            }
            _ if seg.is_empty() => {
                if trailing {
                    out.push(b'/');
                }
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(seg);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was decoded, into a string that was valid UTF-8: still valid.
    String::from_utf8(out).map(Cow::Owned).map_err(|_| PathError::BadEscape)
}

/// No escape, control byte, backslash, empty segment or dot segment: nothing to do.
fn is_normal(bytes: &[u8]) -> bool {
    let mut prev_slash = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            _ if b < 0x20 || b == 0x7f => return false,
            b'/' if prev_slash => return false,
            b'.' if prev_slash => {
                // "/." starts a dot segment when followed by the end, '/', ';' or ".[/;end]".
                let rest = &bytes[i + 1..];
                let rest = rest.strip_prefix(b".").unwrap_or(rest);
                if matches!(rest.first(), None | Some(b'/' | b';')) {
                    return false;
                }
            }
            _ => {}
        }
        prev_slash = b == b'/';
    }
    true
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path, EscapedSlashes::Reject).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_escapes_and_slash_runs_are_normalised() {
        for (raw, want) in [
            ("/api/x", "/api/x"),
            ("/", "/"),
            ("/health/../api/x", "/api/x"),
            ("/health/%2e%2e/api/x", "/api/x"),
            ("/health/%2E%2E/api/x", "/api/x"),
            ("/health/.%2e/api/x", "/api/x"),
            ("/health;/../api/x", "/api/x"),
            ("/health/..;/api/x", "/api/x"),
            ("/health/..;jsessionid=1/api/x", "/api/x"),
            ("//api/x", "/api/x"),
            ("/api//x///", "/api/x/"),
            ("/api/./x", "/api/x"),
            ("/api/x/.", "/api/x/"),
            ("/api/x/..", "/api/"),
            ("/api/x/", "/api/x/"),
            ("/a/b/../../c", "/c"),
            ("/%7Euser/%41", "/~user/A"),
            ("/a%20b/%3F", "/a%20b/%3F"),
            ("/..a/.b/a..", "/..a/.b/a.."),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/...", "/a/..."),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
            assert_eq!(n(want).as_deref(), Ok(want), "normalising twice changes nothing: {want}");
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for (raw, why) in [
            ("/../x", PathError::AboveRoot),
            ("/a/../../x", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/a\\b", PathError::Forbidden),
            ("/a\u{0}b", PathError::Forbidden),
            ("/a%00b", PathError::Forbidden),
            ("/a%0ab", PathError::Forbidden),
            ("/a\tb", PathError::Forbidden),
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/api%2Fx", PathError::EncodedSlash),
            ("/api%2fx", PathError::EncodedSlash),
            ("/api%5Cx", PathError::EncodedSlash),
            ("api/x", PathError::NotAbsolute),
        ] {
            assert_eq!(n(raw), Err(why), "{raw:?}");
        }
        assert_eq!(normalize("/health%2F..%2Fapi", EscapedSlashes::Keep).as_deref(), Ok("/health%2F..%2Fapi"));
        assert_eq!(normalize("/a/%2e%2e/b%5cc", EscapedSlashes::Keep).as_deref(), Ok("/b%5cc"));
    }

    #[test]
    fn normal_paths_are_not_copied() {
        assert!(matches!(n_cow("/api/v1/data.json"), Cow::Borrowed(_)));
        assert!(matches!(n_cow("/health"), Cow::Borrowed(_)));
        assert!(matches!(n_cow("/api//x"), Cow::Owned(_)));
    }

    fn n_cow(p: &str) -> Cow<'_, str> {
        normalize(p, EscapedSlashes::Reject).unwrap()
    }

    #[test]
    fn first_matching_prefix_and_method_wins() {
        let r = |class| Route { class, shadow: false, on_error: OnError::Local };
        let table = RouteTable::new(
            vec![
                ("/api/v1/export".into(), vec![Method::POST], r(Class::DataExport)),
                ("/api/".into(), vec![], r(Class::Api)),
                ("/health".into(), vec![], r(Class::Exempt)),
            ],
            OnError::Local,
            EscapedSlashes::Reject,
        );
        assert_eq!(table.classify(&Method::POST, "/api/v1/export/csv").class, Class::DataExport);
        assert_eq!(table.classify(&Method::GET, "/api/v1/export/csv").class, Class::Api);
        assert_eq!(table.classify(&Method::GET, "/health").class, Class::Exempt);
        assert_eq!(table.classify(&Method::GET, "/api").class, Class::General);
        assert_eq!(table.classify(&Method::GET, "/").class, Class::General);
    }
}
