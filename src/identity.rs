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

/// Verified tokens kept at most (each entry: the token text and a few words).
const TOKEN_CACHE_CAPACITY: usize = 100_000;

/// Who is counted: a verified user, or a client address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentityKey {
    User(Arc<str>),
    Ip(IpAddr),
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
/// cleared all at once), each entry trusted for [`REJECTED_TTL`] and only while the remote key set
/// it was checked against is still the current one.
pub struct RejectedTokens {
    hasher: std::hash::RandomState,
    entries: quick_cache::sync::Cache<u64, (u64, u64)>,
}

/// How long a rejection is remembered.
const REJECTED_TTL_SECS: u64 = 60;
/// Rejected tokens remembered at most (16 bytes each, plus the cache's own overhead).
const REJECTED_CAPACITY: usize = 16_384;

impl Default for RejectedTokens {
    fn default() -> Self {
        RejectedTokens {
            hasher: std::hash::RandomState::new(),
            entries: quick_cache::sync::Cache::new(REJECTED_CAPACITY),
        }
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
    /// Keys fetched from `jwks_url`, refreshed in the background.
    pub remote: Option<Arc<RemoteKeys>>,
    /// Anonymous IPv6 callers are counted per network of this length.
    pub ipv6_prefix: u8,
    cache: DashMap<Box<str>, Cached>,
    rejected: RejectedTokens,
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
        remote: Option<Arc<RemoteKeys>>,
        ipv6_prefix: u8,
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
            remote,
            ipv6_prefix,
            cache: DashMap::new(),
            rejected: RejectedTokens::default(),
        }
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
        headers: &HeaderMap,
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

    fn on_invalid(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Identity, IdentifyError> {
        match self.invalid_token {
            InvalidToken::Reject => Err(IdentifyError::Invalid),
            InvalidToken::Anonymous => Ok(self.anonymous(headers, peer)),
        }
    }

    fn anonymous(&self, headers: &HeaderMap, peer: SocketAddr) -> Identity {
        let ip = client_ip(peer.ip(), headers, &self.trusted_proxies);
        Identity {
            key: IdentityKey::Ip(counted_network(ip, self.ipv6_prefix)),
            tier: self.anonymous_tier,
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

    fn verify_uncached(&self, token: &str) -> Result<(Identity, u64), Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::FINAL)?;
        if !self.algorithms.contains(&header.alg) {
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
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.as_str(),
            _ => return Err(Rejection::FINAL),
        };
        // A NumericDate may have a fraction (RFC 7519 §2); jsonwebtoken has checked it already.
        let exp = match claims.get("exp").and_then(Value::as_f64) {
            Some(exp) if exp.is_finite() && exp >= 0.0 => exp as u64,
            _ => return Err(Rejection::FINAL),
        };
        let tier = match claims.get(&self.tier_claim) {
            Some(Value::String(t)) => self.tiers.get(t.as_str()).copied().unwrap_or(self.default_tier),
            _ => self.default_tier,
        };
        let user_header = HeaderValue::from_str(user).map_err(|_| Rejection::FINAL)?;
        let identity = Identity { key: IdentityKey::User(Arc::from(user)), tier, user_header: Some(user_header) };
        Ok((identity, exp))
    }
}

/// What a key may be used for: the configured algorithms and the claim checks every token gets.
#[derive(Clone)]
pub struct KeyRules {
    pub algorithms: Vec<Algorithm>,
    /// leeway, exp/nbf, iss, aud; `algorithms` is set per key.
    pub template: Validation,
}

impl KeyRules {
    /// The configured algorithms of one key family.
    pub fn allowed(&self, family: AlgorithmFamily) -> Vec<Algorithm> {
        self.algorithms.iter().copied().filter(|a| a.family() == family).collect()
    }

    pub fn validation(&self, algorithms: Vec<Algorithm>) -> Validation {
        let mut v = self.template.clone();
        v.algorithms = algorithms;
        v
    }
}

/// Decodes a JWKS document: every RSA, EC or OKP key usable with a configured algorithm (a JWK's
/// own `alg` narrows it further). Symmetric keys are refused: secrets never come from a file or URL.
pub fn keys_from_jwks(doc: &[u8], rules: &KeyRules) -> Result<Vec<VerifyKey>, Vec<String>> {
    use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
    let set: JwkSet = serde_json::from_slice(doc).map_err(|e| vec![format!("not a JWKS document: {e}")])?;
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            _ => {
                problems.push(format!(
                    "key {i} is not an RSA, EC or OKP public key (symmetric secrets come from jwt_secret_env, never a file or URL)"
                ));
                continue;
            }
        };
        let mut algs = rules.allowed(family);
        if let Some(ka) = &jwk.common.key_algorithm {
            let name = format!("{ka:?}");
            algs.retain(|a| format!("{a:?}") == name);
        }
        if algs.is_empty() {
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.push(VerifyKey { kid: jwk.common.key_id.clone(), family, key, validation: rules.validation(algs) })
            }
            Err(e) => problems.push(format!("key {i} cannot be used: {e}")),
        }
    }
    if problems.is_empty() { Ok(keys) } else { Err(problems) }
}

/// A refresh on an unknown `kid` happens at most this often, so forged kids cannot flood the
/// identity provider.
const UNKNOWN_KID_REFRESH_EVERY: Duration = Duration::from_secs(30);
/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1_048_576;

pub type JwksClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// Keys from `identity.jwks_url`: fetched before the snapshot serves, refreshed every
/// `jwks_refresh` and on an unknown `kid`, decoded once per refresh and swapped whole. A failed
/// refresh keeps the previous keys (and is counted in `tiergate_jwks_refreshes_total`).
pub struct RemoteKeys {
    pub url: http::Uri,
    pub refresh: Duration,
    rules: KeyRules,
    keys: arc_swap::ArcSwap<Vec<VerifyKey>>,
    /// Bumped on every key swap: rejections remembered against older keys no longer count.
    generation: std::sync::atomic::AtomicU64,
    client: JwksClient,
    last_unknown_kid_refresh: std::sync::Mutex<Option<tokio::time::Instant>>,
    refresh_lock: tokio::sync::Mutex<()>,
}

impl RemoteKeys {
    pub fn new(url: http::Uri, refresh: Duration, rules: KeyRules, client: JwksClient) -> RemoteKeys {
        RemoteKeys {
            url,
            refresh,
            rules,
            keys: arc_swap::ArcSwap::from_pointee(Vec::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            client,
            last_unknown_kid_refresh: std::sync::Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Fetches the document and swaps the keys in; on any failure the old keys stay.
    pub async fn fetch(&self) -> Result<usize, String> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let result = self.fetch_keys().await;
        crate::metrics::jwks_refresh(result.is_ok());
        match result {
            Ok(keys) => {
                let n = keys.len();
                self.keys.store(Arc::new(keys));
                self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                Ok(n)
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; keeping the previous keys");
                Err(e)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<Vec<VerifyKey>, String> {
        use http_body_util::BodyExt;
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/jwk-set+json, application/json")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.client.request(req))
            .await
            .map_err(|_| "timed out after 5 s".to_string())?
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES);
        let bytes = tokio::time::timeout(Duration::from_secs(5), body.collect())
            .await
            .map_err(|_| "timed out reading the body".to_string())?
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let keys = keys_from_jwks(&bytes, &self.rules).map_err(|p| p.join("; "))?;
        if keys.is_empty() {
            return Err("the document has no key usable with jwt_algorithms".into());
        }
        Ok(keys)
    }

    /// Refreshes because a token named an unknown `kid`, unless that happened in the last 30 s.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        {
            let mut last = self.last_unknown_kid_refresh.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < UNKNOWN_KID_REFRESH_EVERY) {
                return false;
            }
            *last = Some(now);
        }
        self.fetch().await.is_ok()
    }

    /// Refreshes every `refresh` for as long as these keys are in use (the task holds a weak handle).
    pub fn spawn_refresher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.refresh.max(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(keys) = weak.upgrade() else { break };
                let _ = keys.fetch().await;
            }
        });
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

/// The address an anonymous caller is counted under: IPv4 as is, IPv6 cut to its network (`prefix`
/// bits), since one client commonly holds a whole /64.
pub fn counted_network(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if prefix >= 128 { u128::MAX } else { !(u128::MAX >> prefix) };
            IpAddr::V6(std::net::Ipv6Addr::from(bits & mask))
        }
    }
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
    fn ipv6_callers_are_counted_per_network() {
        let a = counted_network(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = counted_network(ip("2001:db8:1:2:ffff:1:2:3"), 64);
        assert_eq!(a, b);
        assert_eq!(a, ip("2001:db8:1:2::"));
        assert_ne!(a, counted_network(ip("2001:db8:1:3::1"), 64));
        assert_eq!(counted_network(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(counted_network(ip("203.0.113.7"), 64), ip("203.0.113.7"));
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
