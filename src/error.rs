//! Every way a request can end without the upstream's answer, and the single table that turns each
//! into an HTTP response (RFC 9457 `application/problem+json`).
//!
//! Stages return a [`ProxyError`] carrying the data its response needs; only [`ProxyError::response`]
//! chooses a status. Bodies never carry stack traces, file paths or storage addresses.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::body::ProxyBody;
use crate::metrics::Outcome;

pub const QUOTA_EXCEEDED_TYPE: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid bearer token")]
    Unauthorized,
    #[error("rate limit exceeded")]
    Limited { tier: Arc<str>, violated: Vec<Arc<str>>, retry_after: u64 },
    #[error("upload too large")]
    TooLarge { tier: Arc<str>, limit_bytes: u64 },
    #[error("upstream unreachable")]
    BadGateway,
    #[error("upstream timed out")]
    GatewayTimeout,
    /// Refused before identification: framing, path, duplicate headers.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client's request body broke mid-stream (bad chunk size, oversized chunk extension,
    /// truncated): the client's error, never counted as an upstream one.
    #[error("malformed request body")]
    MalformedBody,
    #[error("rate-limit storage unavailable")]
    StorageUnavailable,
    /// A head hyper refused before tiergate saw a request (400 malformed, 414, 431). Its response is
    /// rendered once per snapshot and sent by the connection's stream in place of hyper's bare
    /// answer (`conn::CodecAnswers`).
    #[error("request head refused: {0}")]
    HeadRefused(StatusCode),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadGateway => StatusCode::BAD_GATEWAY,
            ProxyError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) | ProxyError::MalformedBody => StatusCode::BAD_REQUEST,
            ProxyError::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::HeadRefused(status) => *status,
        }
    }

    /// The `decision` label this error is counted under; `None`: count the limiter's own decision.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            ProxyError::Unauthorized => Some(Outcome::Unauthorized),
            ProxyError::Limited { .. } => Some(Outcome::Limited),
            ProxyError::TooLarge { .. } => Some(Outcome::TooLarge),
            ProxyError::StorageUnavailable => Some(Outcome::StorageUnavailable),
            ProxyError::BadRequest(_) | ProxyError::HeadRefused(_) => Some(Outcome::BadRequest),
            // After admission: the limiter's verdict stands.
            ProxyError::BadGateway | ProxyError::GatewayTimeout | ProxyError::MalformedBody => None,
        }
    }

    /// The error → response table.
    pub fn response(&self) -> Response<ProxyBody> {
        let (status, headers, body) = self.parts();
        let mut resp = Response::new(ProxyBody::bytes(body));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    /// The response's status, headers (before decoration) and body.
    pub fn parts(&self) -> (StatusCode, HeaderMap, String) {
        let status = self.status();
        let title = status.canonical_reason().unwrap_or("Error");
        let mut retry_after = None;
        let mut close = false;
        let body = match self {
            ProxyError::Unauthorized => {
                problem(status, "The bearer token is missing a valid signature, has expired or is not yet valid.")
                    .to_string()
            }
            ProxyError::Limited { tier, violated, retry_after: secs } => {
                retry_after = Some(*secs);
                // Under a 429 flood this is the hot path: written straight out, not built as a tree.
                limited_body(title, tier, violated, *secs)
            }
            ProxyError::TooLarge { tier, limit_bytes } => {
                close = true;
                json!({
                    "type": "about:blank",
                    "title": title,
                    "status": status.as_u16(),
                    "detail": format!("The request body is larger than the {limit_bytes} bytes allowed for tier {tier}."),
                    "limit_bytes": limit_bytes,
                    "tier": &**tier,
                })
                .to_string()
            }
            ProxyError::BadGateway => problem(status, "The upstream service could not be reached.").to_string(),
            ProxyError::GatewayTimeout => problem(status, "The upstream service did not answer in time.").to_string(),
            ProxyError::StorageUnavailable => {
                retry_after = Some(1);
                problem(status, "Rate limits cannot be checked right now; try again shortly.").to_string()
            }
            ProxyError::BadRequest(detail) => {
                close = true;
                problem(status, detail).to_string()
            }
            ProxyError::MalformedBody => {
                close = true;
                problem(status, "The request body is malformed.").to_string()
            }
            ProxyError::HeadRefused(status) => {
                close = true;
                let detail = match status.as_u16() {
                    414 => "The request target is longer than allowed.",
                    431 => "The request head is larger than allowed.",
                    _ => "The request head is malformed.",
                };
                problem(*status, detail).to_string()
            }
        };
        let mut headers = HeaderMap::new();
        let h = &mut headers;
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ProxyError::Unauthorized) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        }
        if close {
            // The rest of the request (an unread body, or ambiguous framing) cannot be trusted.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        (status, headers, body)
    }
}

/// The 429 body, members in the order `serde_json` writes an object's (sorted): one string built,
/// strings escaped as JSON escapes them.
fn limited_body(title: &str, tier: &str, violated: &[Arc<str>], secs: u64) -> String {
    use std::fmt::Write as _;
    let mut detail = String::with_capacity(64);
    let _ = write!(detail, "Rate limit exceeded for tier {tier}: ");
    for (i, v) in violated.iter().enumerate() {
        if i > 0 {
            detail.push_str(", ");
        }
        detail.push_str(v);
    }
    let _ = write!(detail, ". Retry in {secs} s.");
    let mut out = Vec::with_capacity(256 + detail.len());
    let string = |out: &mut Vec<u8>, s: &str| {
        let _ = serde_json::to_writer(&mut *out, s);
    };
    out.extend_from_slice(b"{\"detail\":");
    string(&mut out, &detail);
    let _ = write!(ByteSink(&mut out), ",\"retry_after\":{secs},\"status\":429,\"tier\":");
    string(&mut out, tier);
    out.extend_from_slice(b",\"title\":");
    string(&mut out, title);
    out.extend_from_slice(b",\"type\":");
    string(&mut out, QUOTA_EXCEEDED_TYPE);
    out.extend_from_slice(b",\"violated-policies\":[");
    for (i, v) in violated.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(&mut out, v);
    }
    out.extend_from_slice(b"]}");
    String::from_utf8(out).unwrap_or_default()
}

/// `write!` into bytes.
struct ByteSink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// An RFC 9457 body with no members beyond type/title/status/detail (the admin port uses it too).
pub fn problem(status: StatusCode, detail: &str) -> serde_json::Value {
    json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written 429 body is what the `json!` tree rendered, byte for byte.
    #[test]
    fn the_429_body_is_the_json_it_always_was() {
        let cases: [(&str, &[&str], u64); 3] = [
            ("free", &["api_calls_per_minute"], 17),
            ("pro \"x\"\\", &["a", "requests_per_hour"], 0),
            ("t", &[], 86_400),
        ];
        for (tier, violated, secs) in cases {
            let violated: Vec<Arc<str>> = violated.iter().map(|v| Arc::from(*v)).collect();
            let names: Vec<&str> = violated.iter().map(|v| &**v).collect();
            let tree = json!({
                "type": QUOTA_EXCEEDED_TYPE,
                "title": "Too Many Requests",
                "status": 429,
                "detail": format!("Rate limit exceeded for tier {tier}: {}. Retry in {secs} s.", names.join(", ")),
                "violated-policies": names,
                "tier": tier,
                "retry_after": secs,
            })
            .to_string();
            assert_eq!(limited_body("Too Many Requests", tier, &violated, secs), tree);
        }
    }
}
