//! Minting HS256 tokens, for `tiergate token`, the demo and load tests (never on a request path).

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::unix_now;

/// Mints an HS256 token (for `tiergate token`, the demo and load tests).
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    tier: &str,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), Value::from(sub));
    claims.insert("tier".into(), Value::from(tier));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + ttl.as_secs().max(1)));
    if let Some(iss) = issuer {
        claims.insert("iss".into(), Value::from(iss));
    }
    if let Some(aud) = audience {
        claims.insert("aud".into(), Value::from(aud));
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}
