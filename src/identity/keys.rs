//! Where verification keys come from: the configured algorithms and claim rules ([`KeyRules`]), a
//! JWKS document decoded into keys, and the keys fetched from `identity.jwks_url` ([`RemoteKeys`]:
//! fetched before serving, refreshed on a timer and on an unknown `kid`, swapped whole).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

/// One key tokens may be verified with.
pub struct VerifyKey {
    /// For JWKS keys: the token's `kid` must equal it.
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    pub key: DecodingKey,
    /// Algorithms allowed with this key (configured ∩ the key's family ∩ the JWK's `alg`).
    pub validation: Validation,
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
    pub(super) keys: arc_swap::ArcSwap<Vec<VerifyKey>>,
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

    pub(super) fn generation(&self) -> u64 {
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
