//! Who is calling: a bearer token → a verified user and tier, or the client address → the anonymous tier.
//!
//! This file owns token verification (keys compiled in the snapshot, algorithms only from config,
//! never from the token), the verified-token cache (bounded; an entry lives until the token's `exp` +
//! leeway, so a token is verified once per process, not per request) and the rejected-token cache.
//! `keys.rs` owns where keys come from (the secret, a public key file, a JWKS file or URL);
//! `client_ip.rs` the client-address rule for `trusted_proxies`; `mint.rs` token minting for the
//! CLI, the demo and load tests.

mod client_ip;
mod keys;
mod mint;

pub use client_ip::{client_ip, counted_network};
pub use keys::{JwksClient, KeyRules, RemoteKeys, VerifyKey, keys_from_jwks};
pub use mint::mint_hs256;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use crate::head::Headers;
use ipnet::IpNet;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::bounded::{BLOCK_OVERHEAD, Bounded, Budget};

/// The verified-token cache's bound: 100,000 tokens or 8 MiB, whichever comes first. A cached
/// token weighs its text, its identity (the user id twice: the key, the header value) and its slot:
/// about 430 bytes for a 160-byte token, so 8 MiB holds about 19,000 tokens. A token that does not
/// fit is verified again when it comes back (a few microseconds for HS256). Its share of the
/// process's 50 MiB: see `crate::bounded`.
pub const TOKEN_CACHE: Budget = Budget::new(100_000, 8 * 1024 * 1024, 430);

/// Heap bytes a cached token holds: its text and its identity's.
fn cached_bytes(token: &str, cached: &Cached) -> usize {
    crate::bounded::boxed_str(token) + cached.identity.heap_bytes()
}

/// Who is counted: a verified user, or a client address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentityKey {
    User(Arc<str>),
    Ip(IpAddr),
}

impl IdentityKey {
    /// Reads a key as [`Display`](std::fmt::Display) writes it: `user:42`, `ip:10.0.0.7`.
    pub fn parse(s: &str) -> Option<IdentityKey> {
        if let Some(user) = s.strip_prefix("user:") {
            return (!user.is_empty() && user.len() <= 256).then(|| IdentityKey::User(Arc::from(user)));
        }
        s.strip_prefix("ip:")?.parse::<IpAddr>().ok().map(|ip| IdentityKey::Ip(ip.to_canonical()))
    }
}

impl std::fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityKey::User(u) => write!(f, "user:{u}"),
            IdentityKey::Ip(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// What an invalid token means (`identity.invalid_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidToken {
    Reject,
    Anonymous,
}

/// Where a verified user's tier comes from (`identity.tier_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierSource {
    Claim,
    Redis,
}

/// The caller, as the rest of the request sees it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub key: IdentityKey,
    /// Index into the snapshot's tiers.
    pub tier: usize,
    /// The user id, ready for `user_id_header` (users only).
    pub user_header: Option<HeaderValue>,
}

impl IdentityKey {
    /// Heap bytes the key holds (a user id's shared text; an address holds none).
    pub fn heap_bytes(&self) -> usize {
        match self {
            IdentityKey::User(user) => crate::bounded::arc_str(user),
            IdentityKey::Ip(_) => 0,
        }
    }
}

impl Identity {
    /// Heap bytes the identity holds: its key's, and the header value's text plus the shared block
    /// its first clone allocates.
    fn heap_bytes(&self) -> usize {
        let header =
            self.user_header.as_ref().map_or(0, |h| h.len() + BLOCK_OVERHEAD + 3 * size_of::<usize>() + BLOCK_OVERHEAD);
        self.key.heap_bytes() + header
    }
}

/// The token was presented and is not acceptable. Deliberately carries no reason a forger could use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid bearer token")]
pub struct InvalidTokenError;

/// A token that did not verify; `remember`: it will not verify later either (not merely too early).
#[derive(Debug, Clone, Copy)]
struct Rejection {
    remember: bool,
}

impl Rejection {
    const FINAL: Rejection = Rejection { remember: true };
}

/// Tokens rejected recently, by a keyed hash of their text: bounded, evicted by S3-FIFO (never
/// cleared all at once), each entry trusted for [`REJECTED_TTL_SECS`] and only while the remote key set
/// it was checked against is still the current one.
pub struct RejectedTokens {
    hasher: std::hash::RandomState,
    entries: Bounded<u64, (u64, u64)>,
}

/// How long a rejection is remembered.
const REJECTED_TTL_SECS: u64 = 60;
/// Rejected tokens remembered at most: 16,384 (an entry holds no heap, about 84 bytes with its
/// slot, so the entries bind first, at about 1.4 MiB of the 1.5).
pub const REJECTED: Budget = Budget::new(16_384, 3 * 512 * 1024, 84);

impl Default for RejectedTokens {
    fn default() -> Self {
        RejectedTokens { hasher: std::hash::RandomState::new(), entries: REJECTED.cache(|_, _| 0) }
    }
}

impl RejectedTokens {
    fn key(&self, token: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(token)
    }

    fn contains(&self, token: &str, now: u64, generation: u64) -> bool {
        self.entries.get(&self.key(token)).is_some_and(|(until, g)| until >= now && g == generation)
    }

    fn insert(&self, token: &str, now: u64, generation: u64) {
        self.entries.insert(self.key(token), (now + REJECTED_TTL_SECS, generation));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why [`Verifier::identify`] gave no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifyError {
    Invalid,
    /// The token names a `kid` no key has: refreshing the remote key set may help (once).
    UnknownKid,
}

/// How tokens and addresses become identities (compiled from `[identity]` and
/// `server.trusted_proxies`).
pub struct IdentityRules {
    pub algorithms: Vec<Algorithm>,
    pub user_claim: String,
    pub tier_claim: String,
    /// Tier name → index into the snapshot's tiers.
    pub tiers: HashMap<String, usize>,
    pub default_tier: usize,
    pub anonymous_tier: usize,
    pub invalid_token: InvalidToken,
    pub trusted_proxies: Vec<IpNet>,
    pub leeway: Duration,
    /// Anonymous IPv6 callers are counted per network of this length.
    pub ipv6_prefix: u8,
}

/// Compiled identity settings; part of the snapshot.
pub struct Verifier {
    pub rules: IdentityRules,
    pub keys: Vec<VerifyKey>,
    /// Keys fetched from `jwks_url`, refreshed in the background.
    pub remote: Option<Arc<RemoteKeys>>,
    cache: Bounded<Box<str>, Cached>,
    rejected: RejectedTokens,
}

#[derive(Clone)]
struct Cached {
    identity: Identity,
    /// Epoch seconds after which the entry is no longer valid (exp + leeway).
    valid_until: u64,
}

impl Verifier {
    pub fn new(rules: IdentityRules, keys: Vec<VerifyKey>, remote: Option<Arc<RemoteKeys>>) -> Verifier {
        let cache: Bounded<Box<str>, Cached> = TOKEN_CACHE.cache(|token, cached| cached_bytes(token, cached));
        Verifier { rules, keys, remote, cache, rejected: RejectedTokens::default() }
    }

    /// Tokens remembered as rejected (for tests and the operator's view).
    pub fn rejected_tokens(&self) -> &RejectedTokens {
        &self.rejected
    }

    /// Identifies the caller of one request. With `may_refresh`, a token whose `kid` no key has
    /// comes back as [`IdentifyError::UnknownKid`] so the caller can refresh the remote keys and ask
    /// again (with `may_refresh = false`, which applies `invalid_token` as usual).
    pub fn identify(
        &self,
        headers: Headers<'_>,
        peer: SocketAddr,
        may_refresh: bool,
    ) -> Result<Identity, IdentifyError> {
        let token = match bearer_token(headers) {
            Bearer::Token(t) => t,
            Bearer::Absent => return Ok(self.anonymous(headers, peer)),
            Bearer::Malformed => return self.on_invalid(headers, peer),
        };
        match self.verify(token) {
            Ok(identity) => Ok(identity),
            Err(InvalidTokenError) if may_refresh && self.remote.is_some() && self.kid_unknown(token) => {
                Err(IdentifyError::UnknownKid)
            }
            Err(InvalidTokenError) => self.on_invalid(headers, peer),
        }
    }

    fn kid_unknown(&self, token: &str) -> bool {
        let Ok(header) = jsonwebtoken::decode_header(token) else { return false };
        let Some(kid) = header.kid else { return false };
        let remote = self.remote.as_ref().map(|r| r.keys.load_full());
        !self.keys.iter().chain(remote.iter().flat_map(|k| k.iter())).any(|k| k.kid.as_deref() == Some(kid.as_str()))
    }

    fn on_invalid(&self, headers: Headers<'_>, peer: SocketAddr) -> Result<Identity, IdentifyError> {
        match self.rules.invalid_token {
            InvalidToken::Reject => Err(IdentifyError::Invalid),
            InvalidToken::Anonymous => Ok(self.anonymous(headers, peer)),
        }
    }

    /// The key an anonymous caller from `peer` is counted under (the access log names a 401 so).
    pub fn anonymous_key(&self, headers: Headers<'_>, peer: SocketAddr) -> IdentityKey {
        self.anonymous(headers, peer).key
    }

    fn anonymous(&self, headers: Headers<'_>, peer: SocketAddr) -> Identity {
        let ip = client_ip(peer.ip(), headers, &self.rules.trusted_proxies);
        Identity {
            key: IdentityKey::Ip(counted_network(ip, self.rules.ipv6_prefix)),
            tier: self.rules.anonymous_tier,
            user_header: None,
        }
    }

    /// Verifies a token, or answers from the caches: tokens already verified (until their `exp`),
    /// and tokens recently rejected (so a forged token sent again costs a hash and a lookup, not a
    /// signature check).
    pub fn verify(&self, token: &str) -> Result<Identity, InvalidTokenError> {
        let now = unix_now();
        if let Some(hit) = self.cache.get(token)
            && hit.valid_until >= now
        {
            return Ok(hit.identity.clone());
        }
        let generation = self.remote.as_ref().map_or(0, |r| r.generation());
        if self.rejected.contains(token, now, generation) {
            return Err(InvalidTokenError);
        }
        let (identity, exp) = match self.verify_uncached(token) {
            Ok(verified) => verified,
            Err(Rejection { remember }) => {
                if remember {
                    self.rejected.insert(token, now, generation);
                }
                return Err(InvalidTokenError);
            }
        };
        let valid_until = exp.saturating_add(self.rules.leeway.as_secs());
        // Bounded by entries and bytes; a full cache evicts the least useful entries (S3-FIFO), never
        // all at once.
        self.cache.insert(token.into(), Cached { identity: identity.clone(), valid_until });
        Ok(identity)
    }

    fn verify_uncached(&self, token: &str) -> Result<(Identity, u64), Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::FINAL)?;
        if !self.rules.algorithms.contains(&header.alg) {
            return Err(Rejection::FINAL);
        }
        // RFC 7515 §4.1.11: a `crit` extension the recipient does not implement makes the token
        // invalid. tiergate implements none.
        if header.crit.is_some() {
            return Err(Rejection::FINAL);
        }
        let family = header.alg.family();
        let remote = self.remote.as_ref().map(|r| r.keys.load_full());
        let candidates = self.keys.iter().chain(remote.iter().flat_map(|k| k.iter())).filter(|k| {
            k.family == family
                && k.validation.algorithms.contains(&header.alg)
                && match (&k.kid, &header.kid) {
                    (Some(key_kid), Some(token_kid)) => key_kid == token_kid,
                    (Some(_), None) | (None, _) => true,
                }
        });
        let mut claims = None;
        let mut remember = true;
        for k in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &k.key, &k.validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                // Not valid *yet*: it may be soon, so it is not remembered as rejected.
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ImmatureSignature) => remember = false,
                Err(_) => {}
            }
        }
        let claims = claims.ok_or(Rejection { remember })?;
        let user = match claims.get(&self.rules.user_claim) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.as_str(),
            _ => return Err(Rejection::FINAL),
        };
        // A NumericDate may have a fraction (RFC 7519 §2); jsonwebtoken has checked it already.
        let exp = match claims.get("exp").and_then(Value::as_f64) {
            Some(exp) if exp.is_finite() && exp >= 0.0 => exp as u64,
            _ => return Err(Rejection::FINAL),
        };
        let tier = match claims.get(&self.rules.tier_claim) {
            Some(Value::String(t)) => self.rules.tiers.get(t.as_str()).copied().unwrap_or(self.rules.default_tier),
            _ => self.rules.default_tier,
        };
        let user_header = HeaderValue::from_str(user).map_err(|_| Rejection::FINAL)?;
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

fn bearer_token(headers: Headers<'_>) -> Bearer<'_> {
    let Some(value) = headers.first("authorization") else { return Bearer::Absent };
    let Some(text) = crate::head::text(value) else { return Bearer::Malformed };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        let rules = IdentityRules {
            algorithms: vec![Algorithm::HS256],
            user_claim: "sub".into(),
            tier_claim: "tier".into(),
            tiers: HashMap::from([("free".to_string(), 0)]),
            default_tier: 0,
            anonymous_tier: 0,
            invalid_token: InvalidToken::Reject,
            trusted_proxies: Vec::new(),
            leeway: Duration::from_secs(30),
            ipv6_prefix: 64,
        };
        Verifier::new(rules, Vec::new(), None)
    }

    /// A cached identity is served only until its token's exp + leeway: past it, the token is
    /// verified again (here it cannot be, there are no keys), never answered from the cache.
    #[test]
    fn the_token_cache_never_outlives_the_token() {
        let v = verifier();
        let identity = Identity { key: IdentityKey::User(Arc::from("u")), tier: 0, user_header: None };
        let now = unix_now();
        v.cache.insert("live.token.x".into(), Cached { identity: identity.clone(), valid_until: now + 60 });
        v.cache.insert("stale.token.x".into(), Cached { identity, valid_until: now - 1 });
        assert!(v.verify("live.token.x").is_ok(), "served from the cache");
        assert!(v.verify("stale.token.x").is_err(), "past exp + leeway: never from the cache");
    }

    /// Many more distinct tokens than fit: the cache stays within its bytes, keeps most of them
    /// (nothing is cleared at once) and still answers for the newest.
    #[test]
    fn the_token_cache_stays_within_its_budget() {
        let v = verifier();
        let now = unix_now();
        let token = |i: usize| format!("eyJhbGciOiJIUzI1NiJ9.{}.{i:012}", "x".repeat(120));
        for i in 0..60_000 {
            let user: Arc<str> = Arc::from(format!("user-{i:08}").as_str());
            let identity = Identity {
                user_header: Some(HeaderValue::from_str(&user).unwrap()),
                key: IdentityKey::User(user),
                tier: 0,
            };
            v.cache.insert(token(i).into(), Cached { identity, valid_until: now + 3600 });
        }
        assert!(v.cache.weight() <= TOKEN_CACHE.bytes, "{} bytes", v.cache.weight());
        // About 370 bytes per token with these lengths: most of the 8 MiB is in use.
        let held = v.cache.len();
        assert!(held > 15_000 && held < 60_000, "{held} tokens held");
        assert!(v.verify(&token(59_999)).is_ok(), "the newest is answered from the cache");
    }

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        assert!(matches!(bearer_token((&h).into()), Bearer::Absent));
        h.insert("authorization", HeaderValue::from_static("Basic dXNlcjpwYXNz"));
        assert!(matches!(bearer_token((&h).into()), Bearer::Absent));
        h.insert("authorization", HeaderValue::from_static("Bearer"));
        assert!(matches!(bearer_token((&h).into()), Bearer::Malformed));
        h.insert("authorization", HeaderValue::from_static("bearer  abc.def.ghi "));
        assert!(matches!(bearer_token((&h).into()), Bearer::Token("abc.def.ghi")));
    }
}
