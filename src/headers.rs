//! Response decoration: security headers and rate-limit headers. The only place either is added.
//!
//! Everything that does not depend on the request is built when the snapshot compiles: the
//! security header values, and per (tier, class) the `RateLimit-Policy` value and each window's
//! limit and name ([`PlanHeaders`]). Per response only the numbers are formatted: small ones come
//! from a table built once; larger ones and the `RateLimit` value (written on the stack) are cut
//! from the worker's value buffer (`values.rs`), so a decorated response allocates nothing.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

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
        Decorator { security, remove, legacy, ietf }
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
        for (name, value) in self.rate_limit_values(plan, decision).into_iter().flatten() {
            headers.insert(name.clone(), value);
        }
    }

    /// The rate-limit headers for the binding window of `decision`, as name and value.
    fn rate_limit_values(&self, plan: &PlanHeaders, decision: &Decision) -> RateLimitValues {
        let mut out: RateLimitValues = Default::default();
        let Some(b) = decision.binding else { return out };
        let window = match b.window {
            Some(i) => plan.windows.get(i),
            None => plan.concurrent.as_ref(),
        };
        let Some(window) = window else { return out };
        let reset_secs = b.reset_ms.div_ceil(1000);
        if self.legacy {
            // The binding window's limit is the plan's, except when a reload changed it mid-flight.
            let limit = if window.limit == b.limit { window.limit_value.clone() } else { number(b.limit) };
            out[0] = Some((&X_RATELIMIT_LIMIT, limit));
            out[1] = Some((&X_RATELIMIT_REMAINING, number(b.remaining)));
            out[2] = Some((&X_RATELIMIT_RESET, recent_number(reset_secs)));
            out[3] = Some((&X_RATELIMIT_WINDOW, window.name.clone()));
        }
        if self.ietf {
            if let Some(p) = &plan.policy {
                out[4] = Some((&RATELIMIT_POLICY, p.clone()));
            }
            let t = b.reset_ms.saturating_sub(decision.now_ms).div_ceil(1000);
            // `"name";r=R;t=T`, written on the stack (a window name is at most 64 bytes, each
            // number at most 20 digits).
            let mut buf = [0u8; 128];
            let mut len = 0;
            for part in
                [window.quoted.as_bytes(), b";r=", decimal(b.remaining, &mut [0; 20]), b";t=", decimal(t, &mut [0; 20])]
            {
                if let Some(to) = buf.get_mut(len..len + part.len()) {
                    to.copy_from_slice(part);
                    len += part.len();
                }
            }
            if let Some(v) = values::header_value(&buf[..len]) {
                out[5] = Some((&RATELIMIT, v));
            }
        }
        out
    }

    /// What decorating a response adds, for a writer that writes the head as bytes (`h1.rs`)
    /// instead of inserting into its map: the same headers [`Self::security`] and
    /// [`Self::rate_limit`] would give it. `rate`: the tier's plan headers and the decision, when
    /// the request was limited.
    pub fn decoration(&self, rate: Option<(&PlanHeaders, &Decision)>) -> Decoration<'_> {
        Decoration {
            security: &self.security,
            rate: rate.map(|(plan, decision)| self.rate_limit_values(plan, decision)).unwrap_or_default(),
        }
    }
}

/// The rate-limit headers a response gets, each at most once.
type RateLimitValues = [Option<(&'static HeaderName, HeaderValue)>; 6];

/// A response's decoration, to be written with its head: see [`Decorator::decoration`].
pub struct Decoration<'a> {
    security: &'a [(HeaderName, HeaderValue)],
    rate: RateLimitValues,
}

impl Decoration<'_> {
    /// Whether a response header of this name is replaced by the decoration (a rate-limit header
    /// tiergate sets): the response's own is then left out.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        self.rate.iter().flatten().any(|(n, _)| *n == name)
    }

    /// Which security header this is, if any: a response's own value of it wins over the decoration's.
    pub fn security_index(&self, name: &HeaderName) -> Option<usize> {
        self.security.iter().position(|(n, _)| n == name)
    }

    /// Every header the decoration adds, given the security headers the response has (bit `i`:
    /// [`Self::security_index`] `i`; past 64 of them, looked up in `headers`).
    pub fn each(&self, present: u64, headers: &HeaderMap, mut f: impl FnMut(&HeaderName, &HeaderValue)) {
        for (i, (name, value)) in self.security.iter().enumerate() {
            let has = if i < 64 { present & (1 << i) != 0 } else { headers.contains_key(name) };
            if !has {
                f(name, value);
            }
        }
        for (name, value) in self.rate.iter().flatten() {
            f(name, value);
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
