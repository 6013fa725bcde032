//! Who is calling: a bearer token → a verified user and tier, or the client address → the anonymous tier.
//!
//! Owns token verification (keys compiled in the snapshot, algorithms only from config, never from the
//! token), the verified-token cache (bounded; an entry lives until the token's `exp` + leeway, so a
//! token is verified once per process, not per request), and the client-IP rule for
//! `trusted_proxies` (rightmost untrusted `X-Forwarded-For` hop).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;

use crate::config::InvalidToken;
use crate::limit::IdentityKey;

/// Verified tokens kept at most (each entry: the token text and a few words).
const TOKEN_CACHE_CAPACITY: usize = 100_000;

/// The caller, as the rest of the request sees it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub key: IdentityKey,
    /// Index into the snapshot's tiers.
    pub tier: usize,
    /// The user id, ready for `user_id_header` (users only).
    pub user_header: Option<HeaderValue>,
}

/// The token was presented and is not acceptable. Deliberately carries no reason a forger could use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid bearer token")]
pub struct InvalidTokenError;

/// One key tokens may be verified with.
pub struct VerifyKey {
    /// For JWKS keys: the token's `kid` must equal it.
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    pub key: DecodingKey,
    /// Algorithms allowed with this key (configured ∩ the key's family ∩ the JWK's `alg`).
    pub validation: Validation,
}

/// Compiled identity settings; part of the snapshot.
pub struct Verifier {
    pub algorithms: Vec<Algorithm>,
    pub keys: Vec<VerifyKey>,
    pub user_claim: String,
    pub tier_claim: String,
    pub tiers: HashMap<String, usize>,
    pub default_tier: usize,
    pub anonymous_tier: usize,
    pub invalid_token: InvalidToken,
    pub trusted_proxies: Vec<IpNet>,
    pub leeway: Duration,
    cache: DashMap<Box<str>, Cached>,
}

#[derive(Clone)]
struct Cached {
    identity: Identity,
    /// Epoch seconds after which the entry is no longer valid (exp + leeway).
    valid_until: u64,
}

impl Verifier {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        algorithms: Vec<Algorithm>,
        keys: Vec<VerifyKey>,
        user_claim: String,
        tier_claim: String,
        tiers: HashMap<String, usize>,
        default_tier: usize,
        anonymous_tier: usize,
        invalid_token: InvalidToken,
        trusted_proxies: Vec<IpNet>,
        leeway: Duration,
    ) -> Verifier {
        Verifier {
            algorithms,
            keys,
            user_claim,
            tier_claim,
            tiers,
            default_tier,
            anonymous_tier,
            invalid_token,
            trusted_proxies,
            leeway,
            cache: DashMap::new(),
        }
    }

    /// Identifies the caller of one request.
    pub fn identify(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Identity, InvalidTokenError> {
        let token = match bearer_token(headers) {
            Bearer::Token(t) => t,
            Bearer::Absent => return Ok(self.anonymous(headers, peer)),
            Bearer::Malformed => return self.on_invalid(headers, peer),
        };
        match self.verify(token) {
            Ok(identity) => Ok(identity),
            Err(InvalidTokenError) => self.on_invalid(headers, peer),
        }
    }

    fn on_invalid(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Identity, InvalidTokenError> {
        match self.invalid_token {
            InvalidToken::Reject => Err(InvalidTokenError),
            InvalidToken::Anonymous => Ok(self.anonymous(headers, peer)),
        }
    }

    fn anonymous(&self, headers: &HeaderMap, peer: SocketAddr) -> Identity {
        let ip = client_ip(peer.ip(), headers, &self.trusted_proxies);
        Identity { key: IdentityKey::Ip(ip), tier: self.anonymous_tier, user_header: None }
    }

    /// Verifies a token, or answers from the cache of tokens already verified.
    pub fn verify(&self, token: &str) -> Result<Identity, InvalidTokenError> {
        let now = unix_now();
        if let Some(hit) = self.cache.get(token)
            && hit.valid_until >= now
        {
            return Ok(hit.identity.clone());
        }
        let (identity, exp) = self.verify_uncached(token)?;
        let valid_until = exp.saturating_add(self.leeway.as_secs());
        if self.cache.len() >= TOKEN_CACHE_CAPACITY {
            self.cache.retain(|_, c| c.valid_until >= now);
            if self.cache.len() >= TOKEN_CACHE_CAPACITY {
                self.cache.clear();
            }
        }
        self.cache.insert(token.into(), Cached { identity: identity.clone(), valid_until });
        Ok(identity)
    }

    fn verify_uncached(&self, token: &str) -> Result<(Identity, u64), InvalidTokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| InvalidTokenError)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(InvalidTokenError);
        }
        let family = header.alg.family();
        let candidates = self.keys.iter().filter(|k| {
            k.family == family
                && k.validation.algorithms.contains(&header.alg)
                && match (&k.kid, &header.kid) {
                    (Some(key_kid), Some(token_kid)) => key_kid == token_kid,
                    (Some(_), None) | (None, _) => true,
                }
        });
        let mut claims = None;
        for k in candidates {
            if let Ok(data) = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &k.key, &k.validation) {
                claims = Some(data.claims);
                break;
            }
        }
        let claims = claims.ok_or(InvalidTokenError)?;
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.as_str(),
            _ => return Err(InvalidTokenError),
        };
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or(InvalidTokenError)?;
        let tier = match claims.get(&self.tier_claim) {
            Some(Value::String(t)) => self.tiers.get(t.as_str()).copied().unwrap_or(self.default_tier),
            _ => self.default_tier,
        };
        let user_header = HeaderValue::from_str(user).map_err(|_| InvalidTokenError)?;
        let identity = Identity { key: IdentityKey::User(Arc::from(user)), tier, user_header: Some(user_header) };
        Ok((identity, exp))
    }
}

enum Bearer<'a> {
    Token(&'a str),
    /// No Authorization header, or one for another scheme (e.g. Basic, meant for the backend).
    Absent,
    /// `Bearer` with nothing usable after it.
    Malformed,
}

fn bearer_token(headers: &HeaderMap) -> Bearer<'_> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Bearer::Absent };
    let Ok(text) = value.to_str() else { return Bearer::Malformed };
    let text = text.trim();
    let Some((scheme, rest)) = text.split_once(' ').or(Some((text, ""))) else { return Bearer::Absent };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Bearer::Absent;
    }
    let token = rest.trim();
    if token.is_empty() { Bearer::Malformed } else { Bearer::Token(token) }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The client address: the TCP peer, unless the peer is a trusted proxy; then walk
/// `X-Forwarded-For` from the right, skipping trusted hops: the first untrusted one is the client.
/// Every hop trusted → the leftmost. An entry that is not an address ends the walk at the last
/// address read before it. `X-Real-IP` and `Forwarded` are never believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut last = peer;
    // Header lines in order; each line's entries in order; walked from the right.
    let lines: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    for line in lines.iter().rev() {
        for entry in line.rsplit(',') {
            let Some(ip) = parse_forwarded_ip(entry.trim()) else { return last };
            if !is_trusted(&ip) {
                return ip;
            }
            last = ip;
        }
    }
    last
}

fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // Untrusted peer: its header is ignored.
        assert_eq!(client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &trusted), ip("203.0.113.9"));
        // Trusted peer: rightmost untrusted hop.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["6.6.6.6, 1.2.3.4, 10.0.0.7"]), &trusted), ip("1.2.3.4"));
        // Several header lines read as one list.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["6.6.6.6", "1.2.3.4"]), &trusted), ip("1.2.3.4"));
        // Every hop trusted: leftmost.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["10.1.1.1, 10.2.2.2"]), &trusted), ip("10.1.1.1"));
        // Missing header: the peer.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&[]), &trusted), ip("10.0.0.2"));
        // Garbage ends the walk at the last address read before it.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["1.2.3.4, junk, 10.9.9.9"]), &trusted), ip("10.9.9.9"));
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["1.2.3.4, junk"]), &trusted), ip("10.0.0.2"));
        // Ports and IPv4-mapped addresses.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["[2001:db8::1]:443"]), &trusted), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("::ffff:10.0.0.2"), &headers(&["1.2.3.4:80"]), &trusted), ip("1.2.3.4"));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert!(matches!(bearer_token(&h), Bearer::Absent));
        h.insert("authorization", HeaderValue::from_static("Basic dXNlcjpwYXNz"));
        assert!(matches!(bearer_token(&h), Bearer::Absent));
        h.insert("authorization", HeaderValue::from_static("Bearer"));
        assert!(matches!(bearer_token(&h), Bearer::Malformed));
        h.insert("authorization", HeaderValue::from_static("bearer  abc.def.ghi "));
        assert!(matches!(bearer_token(&h), Bearer::Token("abc.def.ghi")));
    }
}
