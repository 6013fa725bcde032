//! Response decoration: security headers and rate-limit headers. The only place either is added.
//!
//! Everything that does not depend on the request is built when the snapshot compiles: the
//! security header values, the `RateLimit-Policy` value per (tier, class), the header names.
//! Per response only the numbers are formatted.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::limit::{CONCURRENT, Decision, Plan};

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
        for (name, value) in &self.security {
            // One hash per header: the entry API inserts only when absent.
            headers.entry(name).or_insert_with(|| value.clone());
        }
    }

    /// The rate-limit headers for the binding window of `decision`.
    pub fn rate_limit(&self, headers: &mut HeaderMap, plan: &Plan, policy: Option<&HeaderValue>, decision: &Decision) {
        let Some(b) = decision.binding else { return };
        let name: &str = match b.window {
            Some(i) => plan.windows.get(i).map_or(CONCURRENT, |w| &w.name),
            None => CONCURRENT,
        };
        let reset_secs = b.reset_ms.div_ceil(1000);
        if self.legacy {
            headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(b.limit));
            headers.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(b.remaining));
            headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset_secs));
            if let Ok(v) = HeaderValue::from_str(name) {
                headers.insert(X_RATELIMIT_WINDOW.clone(), v);
            }
        }
        if self.ietf {
            if let Some(p) = policy {
                headers.insert(RATELIMIT_POLICY.clone(), p.clone());
            }
            let t = b.reset_ms.saturating_sub(decision.now_ms).div_ceil(1000);
            if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r={};t={t}", b.remaining)) {
                headers.insert(RATELIMIT.clone(), v);
            }
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
