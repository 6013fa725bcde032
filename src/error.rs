//! Every way a request can end without the upstream's answer, and the single table that turns each
//! into an HTTP response (RFC 9457 `application/problem+json`).
//!
//! Stages return a [`ProxyError`] carrying the data its response needs; only [`ProxyError::response`]
//! chooses a status. Bodies never carry stack traces, file paths or storage addresses.

use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode, header};
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
        }
    }

    /// The `decision` label this error is counted under; `None`: count the limiter's own decision.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            ProxyError::Unauthorized => Some(Outcome::Unauthorized),
            ProxyError::Limited { .. } => Some(Outcome::Limited),
            ProxyError::TooLarge { .. } => Some(Outcome::TooLarge),
            ProxyError::StorageUnavailable => Some(Outcome::StorageUnavailable),
            ProxyError::BadRequest(_) => Some(Outcome::BadRequest),
            // After admission: the limiter's verdict stands.
            ProxyError::BadGateway | ProxyError::GatewayTimeout | ProxyError::MalformedBody => None,
        }
    }

    /// The error → response table.
    pub fn response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let title = status.canonical_reason().unwrap_or("Error");
        let mut retry_after = None;
        let mut close = false;
        let body = match self {
            ProxyError::Unauthorized => {
                problem(status, "The bearer token is missing a valid signature, has expired or is not yet valid.")
            }
            ProxyError::Limited { tier, violated, retry_after: secs } => {
                retry_after = Some(*secs);
                json!({
                    "type": QUOTA_EXCEEDED_TYPE,
                    "title": title,
                    "status": status.as_u16(),
                    "detail": format!("Rate limit exceeded for tier {tier}: {}. Retry in {secs} s.", violated.iter().map(|v| &**v).collect::<Vec<_>>().join(", ")),
                    "violated-policies": violated.iter().map(|v| &**v).collect::<Vec<_>>(),
                    "tier": &**tier,
                    "retry_after": secs,
                })
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
            }
            ProxyError::BadGateway => problem(status, "The upstream service could not be reached."),
            ProxyError::GatewayTimeout => problem(status, "The upstream service did not answer in time."),
            ProxyError::StorageUnavailable => {
                retry_after = Some(1);
                problem(status, "Rate limits cannot be checked right now; try again shortly.")
            }
            ProxyError::BadRequest(detail) => {
                close = true;
                problem(status, detail)
            }
            ProxyError::MalformedBody => {
                close = true;
                problem(status, "The request body is malformed.")
            }
        };
        let mut resp = Response::new(ProxyBody::bytes(body.to_string()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
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
        resp
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
