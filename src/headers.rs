//! Response decoration: security headers and rate-limit headers. The only place either is added.
//!
//! Everything that does not depend on the request is built when the snapshot compiles: the
//! security header values, and per (tier, class) the `RateLimit-Policy` value and each window's
//! limit and name ([`PlanHeaders`]). Per response only the numbers are formatted: small ones come
//! from a table built once; larger ones and the `RateLimit` value (written on the stack) are cut
//! from the worker's value buffer (`values.rs`), so a decorated response allocates nothing.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::head::line;
use crate::limit::{CONCURRENT, Decision, Plan};
use crate::values::{self, decimal};

pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub static X_RATELIMIT_WINDOW: HeaderName = HeaderName::from_static("x-ratelimit-window");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static PERMISSIONS_POLICY: HeaderName = HeaderName::from_static("permissions-policy");
pub static X_XSS_PROTECTION: HeaderName = HeaderName::from_static("x-xss-protection");

/// Which security-header defaults apply (`server.environment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Production,
    Staging,
    Development,
}

/// Which rate-limit headers are sent (`headers.rate_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitHeaders {
    Legacy,
    Ietf,
    Both,
    None,
}

/// Compiled decoration settings (part of the snapshot).
pub struct Decorator {
    security: Vec<(HeaderName, HeaderValue)>,
    /// The security headers as one block of header lines, for a response that has none of them.
    security_block: Vec<u8>,
    remove: Vec<HeaderName>,
    legacy: bool,
    ietf: bool,
}

impl Decorator {
    /// The security headers as compiled (empty values already left out), the names stripped from
    /// upstream responses, and which rate-limit headers to send.
    pub fn new(
        security: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
        rate_limit: RateLimitHeaders,
    ) -> Decorator {
        let (legacy, ietf) = match rate_limit {
            RateLimitHeaders::Legacy => (true, false),
            RateLimitHeaders::Ietf => (false, true),
            RateLimitHeaders::Both => (true, true),
            RateLimitHeaders::None => (false, false),
        };
        debug_assert!(security.len() <= 64, "the security headers are the seven of snapshot.rs");
        let mut security_block = Vec::new();
        for (name, value) in &security {
            line(&mut security_block, name.as_str().as_bytes(), value.as_bytes());
        }
        Decorator { security, security_block, remove, legacy, ietf }
    }

    /// Removes the configured names (`Server`, `X-Powered-By`, …) from an upstream response.
    pub fn strip_upstream(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
    }

    /// Adds the security headers a response does not already carry (a backend's own value wins).
    pub fn security(&self, headers: &mut HeaderMap) {
        // Room for these and the rate-limit headers that follow, grown once rather than as they go.
        headers.reserve(self.security.len() + 6);
        for (name, value) in &self.security {
            // One hash per header: the entry API inserts only when absent.
            headers.entry(name).or_insert_with(|| value.clone());
        }
    }

    /// The rate-limit headers for the binding window of `decision`.
    pub fn rate_limit(&self, headers: &mut HeaderMap, plan: &PlanHeaders, decision: &Decision) {
        let Some(r) = Rate::of(plan, decision) else { return };
        if self.legacy {
            // The binding window's limit is the plan's, except when a reload changed it mid-flight.
            let limit = if r.window.limit == r.limit { r.window.limit_value.clone() } else { number(r.limit) };
            headers.insert(X_RATELIMIT_LIMIT.clone(), limit);
            headers.insert(X_RATELIMIT_REMAINING.clone(), number(r.remaining));
            headers.insert(X_RATELIMIT_RESET.clone(), recent_number(r.reset_secs));
            headers.insert(X_RATELIMIT_WINDOW.clone(), r.window.name.clone());
        }
        if self.ietf {
            if let Some(p) = r.policy {
                headers.insert(RATELIMIT_POLICY.clone(), p.clone());
            }
            let mut buf = [0u8; 128];
            if let Some(v) = values::header_value(r.ietf_value(&mut buf)) {
                headers.insert(RATELIMIT.clone(), v);
            }
        }
    }

    /// What decorating a response adds, for a writer that writes the head as bytes (`h1.rs`)
    /// instead of inserting into its map: the same headers [`Self::security`] and
    /// [`Self::rate_limit`] would give it (`tests::both_writers_decorate_alike` holds that). `rate`:
    /// the tier's plan headers and the decision, when the request was limited.
    pub fn decoration<'a>(&'a self, rate: Option<(&'a PlanHeaders, &Decision)>) -> Decoration<'a> {
        Decoration { decorator: self, rate: rate.and_then(|(plan, decision)| Rate::of(plan, decision)) }
    }
}

/// What the rate-limit headers say: the binding window and its numbers.
struct Rate<'a> {
    window: &'a WindowHeaders,
    limit: u64,
    remaining: u64,
    /// `X-RateLimit-Reset`: the epoch second the window has room again.
    reset_secs: u64,
    /// `RateLimit`'s `t`: seconds from now until then.
    t: u64,
    policy: Option<&'a HeaderValue>,
}

impl<'a> Rate<'a> {
    fn of(plan: &'a PlanHeaders, decision: &Decision) -> Option<Rate<'a>> {
        let b = decision.binding?;
        let window = match b.window {
            Some(i) => plan.windows.get(i),
            None => plan.concurrent.as_ref(),
        }?;
        Some(Rate {
            window,
            limit: b.limit,
            remaining: b.remaining,
            reset_secs: b.reset_ms.div_ceil(1000),
            t: b.reset_ms.saturating_sub(decision.now_ms).div_ceil(1000),
            policy: plan.policy.as_ref(),
        })
    }

    /// `"name";r=R;t=T`, written into `buf` (a window name is at most 64 bytes, each number at
    /// most 20 digits).
    fn ietf_value<'b>(&self, buf: &'b mut [u8; 128]) -> &'b [u8] {
        let mut len = 0;
        for part in [
            self.window.quoted.as_bytes(),
            b";r=",
            decimal(self.remaining, &mut [0; 20]),
            b";t=",
            decimal(self.t, &mut [0; 20]),
        ] {
            if let Some(to) = buf.get_mut(len..len + part.len()) {
                to.copy_from_slice(part);
                len += part.len();
            }
        }
        &buf[..len]
    }
}

/// A response's decoration, to be written with its head: see [`Decorator::decoration`].
pub struct Decoration<'a> {
    decorator: &'a Decorator,
    rate: Option<Rate<'a>>,
}

impl Decoration<'_> {
    /// Whether a response header of this name (as sent, any case) is replaced by the decoration (a
    /// rate-limit header tiergate sets): the response's own is then left out.
    pub fn replaces(&self, name: &[u8]) -> bool {
        let Some(r) = &self.rate else { return false };
        let d = self.decorator;
        let is = |n: &HeaderName| name.eq_ignore_ascii_case(n.as_str().as_bytes());
        (d.legacy
            && [&X_RATELIMIT_LIMIT, &X_RATELIMIT_REMAINING, &X_RATELIMIT_RESET, &X_RATELIMIT_WINDOW]
                .into_iter()
                .any(is))
            || (d.ietf && (is(&RATELIMIT) || (r.policy.is_some() && is(&RATELIMIT_POLICY))))
    }

    /// Which security header a response header of this name (as sent, any case) is, if any: a
    /// response's own value of it wins over the decoration's.
    pub fn security_index(&self, name: &[u8]) -> Option<usize> {
        self.decorator.security.iter().position(|(n, _)| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
    }

    /// Whether an upstream header of this name (as sent) is stripped ([`Decorator::strip_upstream`]).
    pub fn strips(&self, name: &[u8]) -> bool {
        self.decorator.remove.iter().any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
    }

    /// Writes every header line the decoration adds, given the security headers the response has
    /// (bit `i`: [`Self::security_index`] `i`; there are at most seven, `snapshot.rs`).
    pub fn write(&self, out: &mut Vec<u8>, present: u64) {
        let d = self.decorator;
        if present == 0 {
            out.extend_from_slice(&d.security_block);
        } else {
            for (i, (name, value)) in d.security.iter().enumerate() {
                if present & (1 << i) == 0 {
                    line(out, name.as_str().as_bytes(), value.as_bytes());
                }
            }
        }
        let Some(r) = &self.rate else { return };
        if d.legacy {
            if r.window.limit == r.limit {
                line(out, b"x-ratelimit-limit", r.window.limit_value.as_bytes());
            } else {
                line(out, b"x-ratelimit-limit", decimal(r.limit, &mut [0; 20]));
            }
            line(out, b"x-ratelimit-remaining", decimal(r.remaining, &mut [0; 20]));
            line(out, b"x-ratelimit-reset", decimal(r.reset_secs, &mut [0; 20]));
            line(out, b"x-ratelimit-window", r.window.name.as_bytes());
        }
        if d.ietf {
            if let Some(p) = r.policy {
                line(out, b"ratelimit-policy", p.as_bytes());
            }
            line(out, b"ratelimit", r.ietf_value(&mut [0; 128]));
        }
    }
}

/// Numbers below this come from a table built once (a clone shares it); larger ones are formatted.
const SMALL: u64 = 4096;

/// A header value for `n`: a clone from the table when it is small, else cut from the value buffer.
fn number(n: u64) -> HeaderValue {
    static TABLE: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    if n < SMALL {
        let table = TABLE.get_or_init(|| (0..SMALL).map(HeaderValue::from).collect());
        if let Some(v) = table.get(n as usize) {
            return v.clone();
        }
    }
    values::number(n)
}

/// A header value for `n`, reusing the last one this thread built when `n` is the same: for the
/// `X-RateLimit-Reset` epoch second, which every request in that second shares.
fn recent_number(n: u64) -> HeaderValue {
    if n < SMALL {
        return number(n);
    }
    thread_local! {
        static LAST: std::cell::RefCell<(u64, HeaderValue)> = const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != n {
            *last = (n, HeaderValue::from(n));
        }
        last.1.clone()
    })
}

/// One window's constant header parts.
#[derive(Clone, Debug)]
pub struct WindowHeaders {
    pub limit: u64,
    limit_value: HeaderValue,
    /// `X-RateLimit-Window`.
    name: HeaderValue,
    /// The name quoted, as `RateLimit` writes it.
    quoted: String,
}

/// The header values of one plan that never change per request: built when the snapshot compiles.
#[derive(Clone, Debug, Default)]
pub struct PlanHeaders {
    pub policy: Option<HeaderValue>,
    windows: Vec<WindowHeaders>,
    concurrent: Option<WindowHeaders>,
}

impl PlanHeaders {
    pub fn new(plan: &Plan) -> PlanHeaders {
        let window = |name: &str, limit: u64| WindowHeaders {
            limit,
            limit_value: HeaderValue::from(limit),
            name: HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("window")),
            quoted: format!("\"{name}\""),
        };
        PlanHeaders {
            policy: policy_header(plan),
            windows: plan.windows.iter().map(|w| window(&w.name, w.limit)).collect(),
            concurrent: plan.concurrency.map(|c| window(CONCURRENT, c)),
        }
    }
}

/// `RateLimit-Policy` for a plan: every window that applies, then the concurrency cap.
pub fn policy_header(plan: &Plan) -> Option<HeaderValue> {
    let mut parts: Vec<String> =
        plan.windows.iter().map(|w| format!("\"{}\";q={};w={}", w.name, w.limit, w.window_ms.div_ceil(1000))).collect();
    if let Some(c) = plan.concurrency {
        parts.push(format!("\"{CONCURRENT}\";q={c};qu=\"concurrent-requests\""));
    }
    if parts.is_empty() {
        return None;
    }
    HeaderValue::from_str(&parts.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::{Algorithm, Binding, Plan, WindowSpec};

    /// The head `h1.rs` writes (the response's own headers, then [`Decoration::write`]) against the
    /// map hyper's path decorates ([`Decorator::security`], [`Decorator::rate_limit`]): the same
    /// headers with the same values, for every rate-limit mode, with and without the backend's own
    /// security or rate-limit headers, for a window and for the concurrency cap.
    #[test]
    fn both_writers_decorate_alike() {
        let security = vec![
            (http::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (PERMISSIONS_POLICY.clone(), HeaderValue::from_static("camera=()")),
        ];
        let windows = vec![
            WindowSpec { name: "minute".into(), limit: 3, window_ms: 60_000 },
            WindowSpec { name: "hour".into(), limit: 5000, window_ms: 3_600_000 },
        ];
        let plan = PlanHeaders::new(&Plan::new(Algorithm::SlidingLog, windows, Some(4)));
        let bindings = [
            Binding { window: Some(0), limit: 3, remaining: 1, reset_ms: 1_796_000_000_500 },
            Binding { window: Some(1), limit: 4999, remaining: 4321, reset_ms: 1_796_000_000_000 },
            Binding { window: None, limit: 4, remaining: 0, reset_ms: 1_796_000_000_000 },
        ];
        let own: [&[(HeaderName, &str)]; 3] = [
            &[],
            &[(http::header::X_FRAME_OPTIONS, "SAMEORIGIN"), (X_RATELIMIT_LIMIT.clone(), "77")],
            &[(http::header::CONTENT_TYPE, "text/plain"), (RATELIMIT.clone(), "backend")],
        ];
        for mode in [RateLimitHeaders::Legacy, RateLimitHeaders::Ietf, RateLimitHeaders::Both, RateLimitHeaders::None] {
            let d = Decorator::new(security.clone(), Vec::new(), mode);
            for binding in bindings {
                let decision = Decision { now_ms: 1_795_999_990_000, binding: Some(binding), ..Decision::default() };
                for headers in own {
                    let headers: HeaderMap =
                        headers.iter().map(|(n, v)| (n.clone(), HeaderValue::from_static(v))).collect();
                    let mut map = headers.clone();
                    d.security(&mut map);
                    d.rate_limit(&mut map, &plan, &decision);

                    let deco = d.decoration(Some((&plan, &decision)));
                    let mut out = Vec::new();
                    let mut present = 0u64;
                    for (name, value) in &headers {
                        if deco.replaces(name.as_str().as_bytes()) {
                            continue;
                        }
                        if let Some(i) = deco.security_index(name.as_str().as_bytes()) {
                            present |= 1 << i;
                        }
                        line(&mut out, name.as_str().as_bytes(), value.as_bytes());
                    }
                    deco.write(&mut out, present);
                    let mut written: Vec<(String, String)> = std::str::from_utf8(&out)
                        .unwrap()
                        .split_terminator("\r\n")
                        .map(|l| {
                            let (n, v) = l.split_once(": ").unwrap();
                            (n.to_string(), v.to_string())
                        })
                        .collect();
                    let mut expected: Vec<(String, String)> =
                        map.iter().map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string())).collect();
                    written.sort();
                    expected.sort();
                    assert_eq!(written, expected, "{mode:?}, {binding:?}, {headers:?}");
                }
            }
        }
    }
}
