//! [`Snapshot::compile`]: a validated [`Config`] → the immutable, precomputed form requests read.
//!
//! The only reader of `Config`. It resolves what needs the outside world (the HMAC secret from the
//! environment, key files) and everything that would otherwise be worked out per request: the route
//! table, JWT keys and validations, per-tier × class limit plans and their `RateLimit-Policy`
//! values, security header values, metric handles. A snapshot is published whole (`ArcSwap`) and
//! each request loads it once.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

use crate::access::AccessMode;
use crate::config::{Backend, Config, ConfigErrors, HeadersConfig, TierConfig, format_duration};
use crate::conn::CodecAnswers;
use crate::error::ProxyError;
use crate::headers::{Decorator, Environment, PERMISSIONS_POLICY, PlanHeaders, X_XSS_PROTECTION};
use crate::identity::TierSource;
use crate::identity::{IdentityRules, KeyRules, RemoteKeys, Verifier, VerifyKey, keys_from_jwks};
use crate::limit::Algorithm as LimitAlgorithm;
use crate::limit::{Plan, RedisTarget, WindowSpec};
use crate::metrics::Handles;
use crate::route::Class;
use crate::route::{Route, RouteTable};

const MIB: u64 = 1_048_576;

/// Where secrets come from: the process environment, with overrides for embedding (demo, tests)
/// so nothing has to mutate the environment of a running process.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    overrides: HashMap<String, String>,
}

impl Secrets {
    pub fn from_env() -> Secrets {
        Secrets::default()
    }

    pub fn with(mut self, name: &str, value: &str) -> Secrets {
        self.overrides.insert(name.to_string(), value.to_string());
        self
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.overrides.get(name).cloned().or_else(|| std::env::var(name).ok())
    }
}

/// One tier, compiled.
pub struct Tier {
    pub name: Arc<str>,
    /// The tier name as the value of `tier_header`.
    pub header: HeaderValue,
    /// Indexed by `Class as usize` for general, api, data_export.
    pub plans: [Plan; 3],
    /// The same plans with every limit divided by `storage.local_share_divisor` (degraded mode).
    pub fallback_plans: [Plan; 3],
    /// The constant rate-limit header values of each plan (policy, each window's limit and name).
    pub headers: [PlanHeaders; 3],
    /// Every window of the tier and its concurrency cap (the quota endpoint).
    pub quota_plan: Plan,
    /// `file_upload_size_mb` in bytes; `None`: no cap.
    pub upload_cap: Option<u64>,
}

impl Tier {
    /// The plan and its policy header for a limited class (`exempt` never reaches here).
    pub fn plan(&self, class: Class) -> (&Plan, &PlanHeaders) {
        let i = (class as usize).min(2);
        (&self.plans[i], &self.headers[i])
    }

    pub fn fallback_plan(&self, class: Class) -> &Plan {
        &self.fallback_plans[(class as usize).min(2)]
    }
}

/// Settings that apply only when tiergate starts (listeners, TLS on or off, the upstream client's
/// extra roots, the storage connection). A reload compares them and logs each one that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Startup {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `[tls]` is present: the data listener speaks HTTPS (its certificate itself is live).
    pub tls: bool,
    pub upstream_ca_file: Option<PathBuf>,
    /// Where the Redis store connects (`REDIS_URL` overrides `storage.url`); `None`: memory store.
    pub storage: Option<RedisTarget>,
}

impl Startup {
    /// The keys of every setting that differs in `new` (each needs a restart to apply).
    pub fn differences(&self, new: &Startup) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |differs: bool, key: &'static str| {
            if differs {
                changed.push(key);
            }
        };
        check(self.listen != new.listen, "server.listen");
        check(self.admin_listen != new.admin_listen, "server.admin_listen");
        check(self.tls != new.tls, "[tls] on/off");
        check(self.upstream_ca_file != new.upstream_ca_file, "server.upstream_ca_file");
        match (&self.storage, &new.storage) {
            (Some(a), Some(b)) => {
                check(a.url != b.url, "storage.url (or REDIS_URL)");
                check(a.cluster_nodes != b.cluster_nodes, "storage.cluster_nodes");
                check(a.ca_pem != b.ca_pem, "storage.ca_file");
                check(a.key_prefix != b.key_prefix, "storage.key_prefix");
                check(a.timeout != b.timeout, "storage.timeout");
                check(a.lease_ttl != b.lease_ttl, "storage.lease_ttl");
            }
            (None, None) => {}
            _ => check(true, "storage.backend"),
        }
        changed
    }
}

/// What each new connection is served with (live: a reload applies to connections accepted after it).
#[derive(Clone, Copy, Debug)]
pub struct ConnSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
}

pub struct Snapshot {
    pub startup: Startup,
    pub conn: ConnSettings,
    /// No response headers from the upstream by then → 504.
    pub upstream_timeout: Duration,
    /// `Some(tier_cache_ttl)` when a user's tier may come from Redis (`tier_source = "redis"`).
    pub tier_override_ttl: Option<Duration>,
    /// The files the config names (keys, certificates): the reloader watches their directories.
    pub key_files: Vec<PathBuf>,
    /// Which responses get an access-log line (`log.access`).
    pub access: AccessMode,
    /// `storage.quota_batch` and `quota_batch_ttl`; off for the memory store.
    pub quota_batch: crate::limit::Batching,
    /// The admin port's bearer token for its write endpoints (from `server.admin_token_env`);
    /// `None`: the admin port is read-only.
    pub admin_token: Option<String>,
    /// The variable `admin_token` is read from (for the start-up warning when it is unset).
    pub admin_token_env: String,
    /// The tier label of requests without a tier (`none`), shared rather than allocated per line.
    pub no_tier: Arc<str>,
    /// `jwks_url` keys must be fetched before serving (no `jwks_file` to fall back on).
    remote_keys_required: bool,
    pub upstream_scheme: Scheme,
    pub upstream_authority: Authority,
    pub routes: RouteTable,
    pub identity: Verifier,
    pub tiers: Vec<Tier>,
    pub decorator: Decorator,
    /// tiergate's decorated answers to the heads hyper refuses itself (400, 414, 431).
    pub codec_answers: Arc<CodecAnswers>,
    pub metrics: Handles,
    pub user_id_header: HeaderName,
    pub tier_header: HeaderName,
    /// The certificate and key `[tls]` names, read when this snapshot compiled.
    pub tls: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl Snapshot {
    /// Compiles a config; reports every problem that needs the outside world, each naming its key.
    pub fn compile(config: Config, secrets: &Secrets) -> Result<Snapshot, ConfigErrors> {
        let mut errors = Vec::new();

        let divisor = config.storage.local_share_divisor;
        let tiers: Vec<Tier> =
            config.tiers.iter().map(|t| compile_tier(t, config.storage.algorithm, divisor)).collect();
        let tier_index: HashMap<String, usize> =
            tiers.iter().enumerate().map(|(i, t)| (t.name.to_string(), i)).collect();
        let index_of = |name: &str| tier_index.get(name).copied().unwrap_or(0);

        let (keys, remote_keys) = compile_keys(&config, secrets, &mut errors);
        let id = &config.identity;
        let rules = IdentityRules {
            algorithms: id.jwt_algorithms.clone(),
            user_claim: id.user_claim.clone(),
            tier_claim: id.tier_claim.clone(),
            tiers: tier_index.clone(),
            default_tier: index_of(&id.default_tier),
            anonymous_tier: index_of(&id.anonymous_tier),
            invalid_token: id.invalid_token,
            trusted_proxies: config.server.trusted_proxies.clone(),
            leeway: id.leeway,
            ipv6_prefix: id.anonymous_ipv6_prefix,
        };
        let identity = Verifier::new(rules, keys, remote_keys);

        let routes = RouteTable::new(
            config
                .routes
                .iter()
                .map(|r| {
                    let route = Route {
                        class: r.class,
                        shadow: r.shadow,
                        on_error: r.on_error.unwrap_or(config.storage.on_error),
                    };
                    (r.prefix.clone(), r.methods.clone(), route)
                })
                .collect(),
            config.storage.on_error,
            config.server.escaped_slashes,
        );

        let (upstream_scheme, upstream_authority) =
            match (config.server.upstream.scheme(), config.server.upstream.authority()) {
                (Some(s), Some(a)) => (s.clone(), a.clone()),
                _ => {
                    errors.push("server.upstream: expected a URL like \"http://127.0.0.1:8000\"".into());
                    (Scheme::HTTP, Authority::from_static("127.0.0.1:8000"))
                }
            };

        let redis = compile_redis(&config, secrets, &mut errors);
        if let Some(ca) = &config.server.upstream_ca_file
            && let Err(e) = crate::forward::https_connector(Some(ca))
        {
            errors.push(format!("server.upstream_ca_file: {e}"));
        }
        let tls = match &config.tls {
            Some(t) => match crate::tls::load_certified_key(&t.cert_file, &t.key_file) {
                Ok(k) => Some(Arc::new(k)),
                Err(problems) => {
                    errors.extend(problems);
                    None
                }
            },
            None => None,
        };

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let tier_names: Vec<&str> = tiers.iter().map(|t| &*t.name).collect();
        let metrics = Handles::new(&tier_names);
        let decorator = compile_decorator(&config.headers, config.server.environment);
        Ok(Snapshot {
            upstream_scheme,
            upstream_authority,
            routes,
            identity,
            codec_answers: compile_codec_answers(&decorator),
            decorator,
            metrics,
            user_id_header: config.identity.user_id_header.clone(),
            tier_header: config.identity.tier_header.clone(),
            tls,
            tiers,
            startup: Startup {
                listen: config.server.listen,
                admin_listen: config.server.admin_listen,
                tls: config.tls.is_some(),
                upstream_ca_file: config.server.upstream_ca_file.clone(),
                storage: redis,
            },
            conn: ConnSettings {
                header_read_timeout: config.server.header_read_timeout,
                idle_timeout: config.server.idle_timeout,
                max_header_bytes: config.server.max_header_bytes,
                shutdown_grace: config.server.shutdown_grace,
            },
            upstream_timeout: config.server.upstream_timeout,
            tier_override_ttl: (config.identity.tier_source == TierSource::Redis)
                .then_some(config.identity.tier_cache_ttl),
            key_files: config.key_files(),
            remote_keys_required: config.identity.jwks_file.is_none(),
            access: config.log.access,
            no_tier: Arc::from(crate::metrics::NO_TIER),
            admin_token: Some(config.server.admin_token_env.as_str())
                .filter(|name| !name.is_empty())
                .and_then(|name| secrets.get(name))
                .filter(|token| !token.is_empty()),
            admin_token_env: config.server.admin_token_env.clone(),
            quota_batch: match config.storage.backend {
                crate::config::Backend::Redis => {
                    crate::limit::Batching { size: config.storage.quota_batch, ttl: config.storage.quota_batch_ttl }
                }
                _ => crate::limit::Batching::OFF,
            },
        })
    }

    /// What must happen before this snapshot serves: fetch the `jwks_url` keys (a failure is fatal
    /// unless a `jwks_file` gives keys to fall back on), then keep them refreshed.
    pub async fn prepare(&self) -> Result<(), ConfigErrors> {
        let Some(remote) = &self.identity.remote else { return Ok(()) };
        if let Err(e) = remote.fetch().await {
            let problem = format!("identity.jwks_url: cannot fetch keys from {}: {e}", remote.url);
            if self.remote_keys_required {
                return Err(ConfigErrors(vec![problem]));
            }
            tracing::warn!("{problem}; serving with identity.jwks_file until a refresh succeeds");
        }
        remote.spawn_refresher();
        Ok(())
    }
}

/// The effective tiers and limits of a valid config, as `tiergate check` prints them.
pub fn describe(config: &Config) -> String {
    {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>9} {:>10} {:>11} {:>11} {:>10}  custom",
            "tier", "api/min", "req/hour", "req/day", "export/day", "concurrent", "upload"
        );
        let show = |v: i64| if v < 0 { "unlimited".to_string() } else { v.to_string() };
        for t in &config.tiers {
            let upload = if t.file_upload_size_mb < 0 {
                "unlimited".to_string()
            } else {
                format!("{} MiB", t.file_upload_size_mb)
            };
            let custom: Vec<String> = t
                .limits
                .iter()
                .map(|l| {
                    let classes = if l.classes.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", l.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","))
                    };
                    format!("{}={}/{}{classes}", l.name, show(l.requests), format_duration(l.window))
                })
                .collect();
            let _ = writeln!(
                out,
                "{:<12} {:>9} {:>9} {:>10} {:>11} {:>11} {:>10}  {}",
                t.name,
                show(t.api_calls_per_minute),
                show(t.requests_per_hour),
                show(t.requests_per_day),
                show(t.data_export_per_day),
                show(t.concurrent_requests),
                upload,
                if custom.is_empty() { "-".to_string() } else { custom.join(" ") }
            );
        }
        let _ = writeln!(out, "\nroutes (first match wins; otherwise general):");
        for r in &config.routes {
            let methods = if r.methods.is_empty() {
                String::new()
            } else {
                format!(" {}", r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","))
            };
            let shadow = if r.shadow { " (shadow)" } else { "" };
            let _ = writeln!(out, "  {:<24} -> {}{methods}{shadow}", r.prefix, r.class.as_str());
        }
        let st = &config.storage;
        match st.backend {
            Backend::Memory => {
                let _ = writeln!(out, "\nstorage: memory (this process only)");
            }
            Backend::Redis => {
                let batching = if st.quota_batch == 0 {
                    "off".to_string()
                } else {
                    format!("up to {} units per caller, for {}", st.quota_batch, format_duration(st.quota_batch_ttl))
                };
                let on_error = match st.on_error {
                    crate::route::OnError::Allow => "allow",
                    crate::route::OnError::Deny => "deny",
                    crate::route::OnError::Local => "local",
                };
                let _ = writeln!(out, "\nstorage: redis, on_error = {on_error}; quota batching: {batching}");
            }
        }
        if let Some(note) = ineffective(config) {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// A setting that is valid but does nothing in this config (said by `check` and at start).
pub fn ineffective(config: &Config) -> Option<String> {
    (config.storage.backend == Backend::Memory && config.storage.quota_batch > 0).then(|| {
        format!(
            "storage.quota_batch = {} has no effect on the memory store (it batches Redis round trips)",
            config.storage.quota_batch
        )
    })
}

/// The security header values for the environment (empty: not sent), built once.
fn compile_decorator(cfg: &HeadersConfig, environment: Environment) -> Decorator {
    let s = &cfg.security;
    let mut security = Vec::new();
    if s.enabled {
        let dev = environment == Environment::Development;
        let frame = if dev { "SAMEORIGIN" } else { s.x_frame_options.as_str() };
        let pairs: [(HeaderName, &str); 7] = [
            (http::header::STRICT_TRANSPORT_SECURITY, if dev { "" } else { s.strict_transport_security.as_str() }),
            (http::header::X_CONTENT_TYPE_OPTIONS, s.x_content_type_options.as_str()),
            (http::header::X_FRAME_OPTIONS, frame),
            (X_XSS_PROTECTION.clone(), s.x_xss_protection.as_str()),
            (http::header::REFERRER_POLICY, s.referrer_policy.as_str()),
            (PERMISSIONS_POLICY.clone(), s.permissions_policy.as_str()),
            (http::header::CONTENT_SECURITY_POLICY, s.content_security_policy.as_str()),
        ];
        for (name, value) in pairs {
            // Empty means "do not send"; values were checked when the config was read.
            if let (false, Ok(v)) = (value.is_empty(), HeaderValue::from_str(value)) {
                security.push((name, v));
            }
        }
    }
    Decorator::new(security, cfg.remove.clone(), cfg.rate_limit)
}

/// The answers to heads hyper refuses: the error table's responses, with the security headers.
fn compile_codec_answers(decorator: &Decorator) -> Arc<CodecAnswers> {
    let answers = [
        http::StatusCode::BAD_REQUEST,
        http::StatusCode::URI_TOO_LONG,
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    ]
    .map(|status| {
        let (status, mut headers, body) = ProxyError::HeadRefused(status).parts();
        decorator.security(&mut headers);
        (status, headers, body)
    });
    Arc::new(CodecAnswers::new(answers))
}

fn compile_tier(t: &TierConfig, algorithm: LimitAlgorithm, divisor: u64) -> Tier {
    let window = |name: &str, limit: i64, secs: u64| {
        (limit >= 0).then(|| WindowSpec { name: Arc::from(name), limit: limit as u64, window_ms: secs * 1000 })
    };
    let minute = window("minute", t.api_calls_per_minute, 60);
    let hour = window("hour", t.requests_per_hour, 3_600);
    let day = window("day", t.requests_per_day, 86_400);
    let export_day = window("export_day", t.data_export_per_day, 86_400);
    let concurrency = (t.concurrent_requests >= 0).then_some(t.concurrent_requests as u64);
    let plan_for = |class: Class| {
        let mut windows = Vec::new();
        if class == Class::Api {
            windows.extend(minute.clone());
        }
        windows.extend(hour.clone());
        windows.extend(day.clone());
        if class == Class::DataExport {
            windows.extend(export_day.clone());
        }
        for l in &t.limits {
            if l.requests >= 0 && (l.classes.is_empty() || l.classes.contains(&class)) {
                windows.push(WindowSpec {
                    name: Arc::from(l.name.as_str()),
                    limit: l.requests as u64,
                    window_ms: l.window.as_millis() as u64,
                });
            }
        }
        Plan::new(algorithm, windows, concurrency)
    };
    let plans = [plan_for(Class::General), plan_for(Class::Api), plan_for(Class::DataExport)];
    let headers = [PlanHeaders::new(&plans[0]), PlanHeaders::new(&plans[1]), PlanHeaders::new(&plans[2])];
    // Degraded mode: each replica gets its share; a positive limit never rounds down to zero.
    let share = |p: &Plan| {
        Plan::new(
            p.algorithm,
            p.windows.iter().map(|w| WindowSpec { limit: w.limit.div_ceil(divisor.max(1)), ..w.clone() }).collect(),
            p.concurrency.map(|c| c.div_ceil(divisor.max(1))),
        )
    };
    let fallback_plans = [share(&plans[0]), share(&plans[1]), share(&plans[2])];
    let mut every: Vec<WindowSpec> = Vec::new();
    for p in &plans {
        for w in &p.windows {
            if !every.iter().any(|q| q.name == w.name) {
                every.push(w.clone());
            }
        }
    }
    let quota_plan = Plan::new(algorithm, every, concurrency);
    Tier {
        name: Arc::from(t.name.as_str()),
        header: HeaderValue::from_str(&t.name).unwrap_or(HeaderValue::from_static("unknown")),
        plans,
        fallback_plans,
        headers,
        quota_plan,
        upload_cap: (t.file_upload_size_mb >= 0).then(|| (t.file_upload_size_mb as u64).saturating_mul(MIB)),
    }
}

/// The Redis connection settings, checked (URLs parse) but not connected: a missing Redis must
/// not stop tiergate from starting.
fn compile_redis(config: &Config, secrets: &Secrets, errors: &mut Vec<String>) -> Option<RedisTarget> {
    let st = &config.storage;
    if st.backend != Backend::Redis {
        if config.identity.tier_source == TierSource::Redis {
            errors.push("identity.tier_source: \"redis\" needs storage.backend = \"redis\"".into());
        }
        return None;
    }
    let (url, key) = match secrets.get("REDIS_URL").filter(|u| !u.is_empty()) {
        Some(u) => (u, "REDIS_URL (environment)"),
        None => (st.url.clone(), "storage.url"),
    };
    if st.cluster_nodes.is_empty() {
        if let Err(e) = redis::Client::open(url.as_str()) {
            errors.push(format!("{key}: not a Redis URL like \"redis://127.0.0.1:6379/0\": {e}"));
        }
    } else {
        for (i, node) in st.cluster_nodes.iter().enumerate() {
            if let Err(e) = redis::Client::open(node.as_str()) {
                errors.push(format!("storage.cluster_nodes[{i}]: not a Redis URL like \"redis://10.0.0.5:6379\": {e}"));
            }
        }
    }
    let ca_pem = match &st.ca_file {
        None => None,
        Some(path) => match std::fs::read(path) {
            Ok(pem) if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                errors.push(format!("storage.ca_file: {} holds no PEM certificate", path.display()));
                None
            }
            Err(e) => {
                errors.push(format!("storage.ca_file: cannot read {}: {e}", path.display()));
                None
            }
        },
    };
    Some(RedisTarget {
        url,
        cluster_nodes: st.cluster_nodes.clone(),
        ca_pem,
        key_prefix: st.key_prefix.clone(),
        timeout: st.timeout,
        lease_ttl: st.lease_ttl,
    })
}

/// The keys tokens may be verified with, one per configured source, each with the algorithms it may
/// be used for (configured ∩ key family): an HS token can never be checked against a public key.
fn compile_keys(
    config: &Config,
    secrets: &Secrets,
    errors: &mut Vec<String>,
) -> (Vec<VerifyKey>, Option<Arc<RemoteKeys>>) {
    let id = &config.identity;
    let mut template = Validation::new(Algorithm::HS256);
    template.leeway = id.leeway.as_secs();
    template.validate_exp = true;
    template.validate_nbf = true;
    template.set_required_spec_claims(&["exp"]);
    if let Some(iss) = &id.issuer {
        template.set_issuer(&[iss]);
        template.required_spec_claims.insert("iss".into());
    }
    match &id.audience {
        Some(aud) => {
            template.set_audience(&[aud]);
            template.required_spec_claims.insert("aud".into());
        }
        None => template.validate_aud = false,
    }
    let rules = KeyRules { algorithms: id.jwt_algorithms.clone(), template };
    let mut keys = Vec::new();

    let hmac = rules.allowed(AlgorithmFamily::Hmac);
    if !hmac.is_empty() {
        match secrets.get(&id.jwt_secret_env) {
            Some(secret) if !secret.is_empty() => keys.push(VerifyKey {
                kid: None,
                family: AlgorithmFamily::Hmac,
                key: DecodingKey::from_secret(secret.as_bytes()),
                validation: rules.validation(hmac),
            }),
            _ => errors.push(format!(
                "identity.jwt_secret_env: environment variable {} is not set or empty (needed for {})",
                id.jwt_secret_env,
                alg_names(&hmac)
            )),
        }
    }

    let public_families = [AlgorithmFamily::Rsa, AlgorithmFamily::Ec, AlgorithmFamily::Ed];
    if let Some(path) = &id.jwt_public_key_file {
        match std::fs::read(path) {
            Ok(pem) => {
                let mut parsed = false;
                for family in public_families {
                    let algs = rules.allowed(family);
                    if algs.is_empty() {
                        continue;
                    }
                    let key = match family {
                        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                        _ => DecodingKey::from_ed_pem(&pem),
                    };
                    if let Ok(key) = key {
                        keys.push(VerifyKey { kid: None, family, key, validation: rules.validation(algs) });
                        parsed = true;
                    }
                }
                if !parsed {
                    errors.push(format!(
                        "identity.jwt_public_key_file: {} is not a PEM public key for any of {}",
                        path.display(),
                        alg_names(&id.jwt_algorithms)
                    ));
                }
            }
            Err(e) => errors.push(format!("identity.jwt_public_key_file: cannot read {}: {e}", path.display())),
        }
    }

    if let Some(path) = &id.jwks_file {
        match std::fs::read(path) {
            Ok(doc) => match keys_from_jwks(&doc, &rules) {
                Ok(found) => keys.extend(found),
                Err(problems) => {
                    errors.extend(problems.into_iter().map(|p| format!("identity.jwks_file: {}: {p}", path.display())))
                }
            },
            Err(e) => errors.push(format!("identity.jwks_file: cannot read {}: {e}", path.display())),
        }
    }

    let remote = match &id.jwks_url {
        None => None,
        Some(url) => match url.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {
                match crate::forward::https_connector(id.jwks_ca_file.as_deref()) {
                    Ok(connector) => {
                        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                            .build(connector);
                        Some(Arc::new(RemoteKeys::new(uri, id.jwks_refresh, rules.clone(), client)))
                    }
                    Err(e) => {
                        errors.push(format!("identity.jwks_ca_file: {e}"));
                        None
                    }
                }
            }
            _ => {
                errors.push(format!("identity.jwks_url: expected an http:// or https:// URL, got {url:?}"));
                None
            }
        },
    };

    for family in public_families {
        let algs = rules.allowed(family);
        if !algs.is_empty() && remote.is_none() && !keys.iter().any(|k| k.family == family) && errors.is_empty() {
            errors.push(format!(
                "identity.jwt_algorithms: {} need a public key: set identity.jwt_public_key_file, jwks_file or jwks_url",
                alg_names(&algs)
            ));
        }
    }
    (keys, remote)
}

fn alg_names(algs: &[Algorithm]) -> String {
    algs.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
}
