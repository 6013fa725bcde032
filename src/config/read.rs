//! The reader: a TOML table walked section by section by typed getters that record a problem
//! (naming the key) and fall back to the default, so one pass reports every problem.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::*;
use crate::access::AccessMode;
use crate::headers::{Environment, RateLimitHeaders};
use crate::identity::{InvalidToken, TierSource};
use crate::limit::Algorithm;
use crate::route::{Class, OnError};

// ---------------------------------------------------------------------------------------------
// The walker: typed getters that record a problem (naming the key) and fall back to the default.

struct Section<'t, 'e> {
    path: String,
    table: Option<&'t toml::Table>,
    known: Vec<&'static str>,
    errors: &'e mut Vec<String>,
}

impl<'t, 'e> Section<'t, 'e> {
    fn new(path: impl Into<String>, value: Option<&'t toml::Value>, errors: &'e mut Vec<String>) -> Self {
        let path = path.into();
        let table = match value {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => {
                errors.push(format!("{path}: expected a table"));
                None
            }
        };
        Section { path, table, known: Vec::new(), errors }
    }

    fn key(&self, key: &str) -> String {
        match (self.path.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.path.clone(),
            (false, false) => format!("{}.{key}", self.path),
        }
    }

    fn raw(&mut self, key: &'static str) -> Option<&'t toml::Value> {
        self.known.push(key);
        self.table.and_then(|t| t.get(key))
    }

    fn problem(&mut self, key: &str, what: impl fmt::Display) {
        let k = self.key(key);
        self.errors.push(format!("{k}: {what}"));
    }

    fn int(&mut self, key: &'static str, default: i64) -> i64 {
        match self.raw(key) {
            None => default,
            Some(toml::Value::Integer(i)) => *i,
            Some(_) => {
                self.problem(key, "expected an integer");
                default
            }
        }
    }

    /// An integer that must be -1 (unlimited) or ≥ 0.
    fn limit(&mut self, key: &'static str) -> i64 {
        let v = self.int(key, -1);
        if v < -1 {
            self.problem(key, format!("expected -1 (unlimited), 0 (none) or a positive integer, got {v}"));
            return -1;
        }
        v
    }

    fn opt_int(&mut self, key: &'static str) -> Option<i64> {
        match self.raw(key) {
            None => None,
            Some(toml::Value::Integer(i)) => Some(*i),
            Some(_) => {
                self.problem(key, "expected an integer");
                None
            }
        }
    }

    fn boolean(&mut self, key: &'static str, default: bool) -> bool {
        match self.raw(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => {
                self.problem(key, "expected true or false");
                default
            }
        }
    }

    fn opt_string(&mut self, key: &'static str) -> Option<String> {
        match self.raw(key) {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.problem(key, "expected a string");
                None
            }
        }
    }

    fn string(&mut self, key: &'static str, default: &str) -> String {
        self.opt_string(key).unwrap_or_else(|| default.to_string())
    }

    fn strings(&mut self, key: &'static str, default: &[&str]) -> Vec<String> {
        match self.raw(key) {
            None => default.iter().map(|s| s.to_string()).collect(),
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        _ => self.problem(&format!("{key}[{i}]"), "expected a string"),
                    }
                }
                out
            }
            Some(_) => {
                self.problem(key, "expected a list of strings");
                default.iter().map(|s| s.to_string()).collect()
            }
        }
    }

    fn duration(&mut self, key: &'static str, default: Duration) -> Duration {
        match self.raw(key) {
            None => default,
            Some(toml::Value::String(text)) => parse_duration(text).unwrap_or_else(|| {
                self.problem(
                    key,
                    format!("expected a duration like \"50ms\", \"2s\", \"10m\", \"1h\", \"1d\", got {text:?}"),
                );
                default
            }),
            Some(_) => {
                self.problem(key, "expected a duration string like \"50ms\", \"2s\", \"1h\"");
                default
            }
        }
    }

    fn choice<T: Copy>(&mut self, key: &'static str, default: T, options: &[(&str, T)]) -> T {
        let Some(s) = self.opt_string(key) else { return default };
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, v)) => *v,
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.problem(key, format!("expected one of {}, got {s:?}", names.join(" | ")));
                default
            }
        }
    }

    fn socket_addr(&mut self, key: &'static str, default: &str) -> SocketAddr {
        let s = self.string(key, default);
        match s.parse() {
            Ok(a) => a,
            Err(_) => {
                self.problem(key, format!("expected an address like \"0.0.0.0:8080\", got {s:?}"));
                default.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
            }
        }
    }

    fn header_name(&mut self, key: &'static str, default: &str) -> http::HeaderName {
        let s = self.string(key, default);
        match http::HeaderName::from_bytes(s.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                self.problem(key, format!("{s:?} is not a valid header name"));
                http::HeaderName::from_static("x-invalid")
            }
        }
    }

    /// Reports keys this section does not know.
    fn finish(self) {
        if let Some(t) = self.table {
            for k in t.keys() {
                if !self.known.contains(&k.as_str()) {
                    let key = if self.path.is_empty() { k.clone() } else { format!("{}.{k}", self.path) };
                    self.errors.push(format!("{key}: unknown key"));
                }
            }
        }
    }
}

/// Parses "50ms", "2s", "10m", "1h", "1d" (a whole number and one unit).
pub(super) fn read_config(root: &toml::Table, errors: &mut Vec<String>) -> Config {
    const SECTIONS: [&str; 8] = ["server", "tls", "storage", "identity", "tiers", "routes", "headers", "log"];
    for k in root.keys() {
        if !SECTIONS.contains(&k.as_str()) {
            errors.push(format!("{k}: unknown key"));
        }
    }
    let server = read_server(root.get("server"), errors);
    let tls = read_tls(root.get("tls"), errors);
    let storage = read_storage(root.get("storage"), errors);
    let identity = read_identity(root.get("identity"), errors);
    let tiers = read_tiers(root.get("tiers"), errors);
    let routes = read_routes(root.get("routes"), errors);
    let headers = read_headers(root.get("headers"), errors);
    let log = read_log(root.get("log"), errors);

    let tier_names: BTreeSet<&str> = tiers.iter().map(|t| t.name.as_str()).collect();
    if tiers.is_empty() && !errors.iter().any(|e| e.starts_with("tiers")) {
        errors.push("tiers: at least one tier is required, e.g. [tiers.free]".into());
    }
    for (key, name) in
        [("identity.default_tier", &identity.default_tier), ("identity.anonymous_tier", &identity.anonymous_tier)]
    {
        if !tiers.is_empty() && !tier_names.contains(name.as_str()) {
            let known: Vec<&str> = tier_names.iter().copied().collect();
            errors.push(format!("{key}: tier {name:?} is not defined (tiers: {})", known.join(", ")));
        }
    }

    Config { server, tls, storage, identity, tiers, routes, headers, log }
}

fn read_log(value: Option<&toml::Value>, errors: &mut Vec<String>) -> LogConfig {
    let mut s = Section::new("log", value, errors);
    let access = s.choice(
        "access",
        AccessMode::Refused,
        &[("none", AccessMode::None), ("refused", AccessMode::Refused), ("all", AccessMode::All)],
    );
    s.finish();
    LogConfig { access }
}

fn read_server(value: Option<&toml::Value>, errors: &mut Vec<String>) -> ServerConfig {
    let mut s = Section::new("server", value, errors);
    let listen = s.socket_addr("listen", "0.0.0.0:8080");
    let admin_listen = s.socket_addr("admin_listen", "0.0.0.0:9901");
    let upstream_text = s.string("upstream", "http://127.0.0.1:8000");
    let upstream = match upstream_text.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                s.problem(
                    "upstream",
                    format!(
                        "expected a base URL without a path, like \"http://127.0.0.1:8000\", got {upstream_text:?}"
                    ),
                );
            }
            uri
        }
        _ => {
            s.problem("upstream", format!("expected a URL like \"http://127.0.0.1:8000\", got {upstream_text:?}"));
            http::Uri::from_static("http://127.0.0.1:8000")
        }
    };
    let environment = s.choice(
        "environment",
        Environment::Production,
        &[
            ("production", Environment::Production),
            ("staging", Environment::Staging),
            ("development", Environment::Development),
        ],
    );
    let mut trusted_proxies = Vec::new();
    for (i, text) in s.strings("trusted_proxies", &[]).into_iter().enumerate() {
        match text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from)) {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => s.problem(
                &format!("trusted_proxies[{i}]"),
                format!("expected a CIDR like \"10.0.0.0/8\" or an IP address, got {text:?}"),
            ),
        }
    }
    let upstream_ca_file = s.opt_string("upstream_ca_file").map(PathBuf::from);
    let upstream_timeout = s.duration("upstream_timeout", Duration::from_secs(30));
    let header_read_timeout = s.duration("header_read_timeout", Duration::from_secs(10));
    let idle_timeout = s.duration("idle_timeout", Duration::from_secs(60));
    let max_header_bytes = s.int("max_header_bytes", 65_536);
    if !(8_192..=16 * 1_048_576).contains(&max_header_bytes) {
        s.problem(
            "max_header_bytes",
            format!("expected a size between 8192 and 16777216 bytes, got {max_header_bytes}"),
        );
    }
    let shutdown_grace = s.duration("shutdown_grace", Duration::from_secs(25));
    let admin_token_env = s.string("admin_token_env", "");
    let escaped_slashes = s.choice(
        "escaped_slashes",
        crate::route::EscapedSlashes::Reject,
        &[("reject", crate::route::EscapedSlashes::Reject), ("keep", crate::route::EscapedSlashes::Keep)],
    );
    for (key, d) in [
        ("upstream_timeout", upstream_timeout),
        ("header_read_timeout", header_read_timeout),
        ("idle_timeout", idle_timeout),
    ] {
        if d.is_zero() {
            s.problem(key, "must be greater than zero");
        }
    }
    s.finish();
    ServerConfig {
        listen,
        admin_listen,
        upstream,
        upstream_ca_file,
        environment,
        trusted_proxies,
        upstream_timeout,
        header_read_timeout,
        idle_timeout,
        max_header_bytes: max_header_bytes.clamp(8_192, 16 * 1_048_576) as usize,
        shutdown_grace,
        escaped_slashes,
        admin_token_env,
    }
}

fn read_tls(value: Option<&toml::Value>, errors: &mut Vec<String>) -> Option<TlsConfig> {
    value?;
    let mut s = Section::new("tls", value, errors);
    let cert_file = s.opt_string("cert_file");
    let key_file = s.opt_string("key_file");
    for (key, v) in [("cert_file", &cert_file), ("key_file", &key_file)] {
        if v.as_deref().is_none_or(str::is_empty) {
            s.problem(key, "required when [tls] is present (a PEM file path)");
        }
    }
    s.finish();
    Some(TlsConfig { cert_file: cert_file.unwrap_or_default().into(), key_file: key_file.unwrap_or_default().into() })
}

fn read_storage(value: Option<&toml::Value>, errors: &mut Vec<String>) -> StorageConfig {
    let mut s = Section::new("storage", value, errors);
    let backend = s.choice("backend", Backend::Memory, &[("memory", Backend::Memory), ("redis", Backend::Redis)]);
    let url = s.string("url", "redis://127.0.0.1:6379/0");
    let cluster_nodes = s.strings("cluster_nodes", &[]);
    let ca_file = s.opt_string("ca_file").map(PathBuf::from);
    let key_prefix = s.string("key_prefix", "rate_limit");
    if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
        s.problem("key_prefix", format!("expected a non-empty prefix without braces or spaces, got {key_prefix:?}"));
    }
    let timeout = s.duration("timeout", Duration::from_millis(50));
    let on_error = read_on_error(&mut s, OnError::Local).unwrap_or(OnError::Local);
    let divisor = s.int("local_share_divisor", 1);
    if divisor < 1 {
        s.problem("local_share_divisor", format!("expected an integer ≥ 1, got {divisor}"));
    }
    let lease_ttl = s.duration("lease_ttl", Duration::from_secs(30));
    if lease_ttl < Duration::from_secs(1) {
        s.problem("lease_ttl", "must be at least 1s");
    }
    let algorithm = s.choice(
        "algorithm",
        Algorithm::SlidingLog,
        &[("sliding_log", Algorithm::SlidingLog), ("gcra", Algorithm::Gcra), ("fixed_window", Algorithm::FixedWindow)],
    );
    let quota_batch = s.int("quota_batch", 0);
    if quota_batch < 0 {
        s.problem("quota_batch", format!("expected an integer ≥ 0, got {quota_batch}"));
    }
    let quota_batch_ttl = s.duration("quota_batch_ttl", Duration::from_secs(1));
    if quota_batch_ttl.is_zero() {
        s.problem("quota_batch_ttl", "must be greater than zero");
    }
    s.finish();
    StorageConfig {
        backend,
        url,
        cluster_nodes,
        ca_file,
        key_prefix,
        timeout,
        on_error,
        local_share_divisor: divisor.max(1) as u64,
        lease_ttl,
        algorithm,
        quota_batch: quota_batch.max(0) as u64,
        quota_batch_ttl,
    }
}

fn read_on_error(s: &mut Section<'_, '_>, default: OnError) -> Option<OnError> {
    let present = s.table.is_some_and(|t| t.contains_key("on_error"));
    let v =
        s.choice("on_error", default, &[("allow", OnError::Allow), ("deny", OnError::Deny), ("local", OnError::Local)]);
    present.then_some(v)
}

/// The algorithms `identity.jwt_algorithms` may name.
pub const JWT_ALGORITHMS: [(&str, jsonwebtoken::Algorithm); 9] = [
    ("HS256", jsonwebtoken::Algorithm::HS256),
    ("HS384", jsonwebtoken::Algorithm::HS384),
    ("HS512", jsonwebtoken::Algorithm::HS512),
    ("RS256", jsonwebtoken::Algorithm::RS256),
    ("RS384", jsonwebtoken::Algorithm::RS384),
    ("RS512", jsonwebtoken::Algorithm::RS512),
    ("ES256", jsonwebtoken::Algorithm::ES256),
    ("ES384", jsonwebtoken::Algorithm::ES384),
    ("EdDSA", jsonwebtoken::Algorithm::EdDSA),
];

fn read_identity(value: Option<&toml::Value>, errors: &mut Vec<String>) -> IdentityConfig {
    let mut s = Section::new("identity", value, errors);
    let mut jwt_algorithms = Vec::new();
    let names = s.strings("jwt_algorithms", &["HS256"]);
    if names.is_empty() {
        s.problem("jwt_algorithms", "at least one algorithm is required");
    }
    for (i, name) in names.iter().enumerate() {
        match JWT_ALGORITHMS.iter().find(|(n, _)| n == name) {
            Some((_, alg)) => {
                if !jwt_algorithms.contains(alg) {
                    jwt_algorithms.push(*alg);
                }
            }
            None if name.eq_ignore_ascii_case("none") => s.problem(
                &format!("jwt_algorithms[{i}]"),
                "\"none\" is never accepted: unsigned tokens would let anyone pick their tier",
            ),
            None => s.problem(
                &format!("jwt_algorithms[{i}]"),
                format!(
                    "unknown algorithm {name:?}; expected one of HS256 HS384 HS512 RS256 RS384 RS512 ES256 ES384 EdDSA"
                ),
            ),
        }
    }
    let jwt_secret_env = s.string("jwt_secret_env", "JWT_SECRET_KEY");
    let jwt_public_key_file = s.opt_string("jwt_public_key_file").map(PathBuf::from);
    let jwks_file = s.opt_string("jwks_file").map(PathBuf::from);
    let jwks_url = s.opt_string("jwks_url");
    let jwks_ca_file = s.opt_string("jwks_ca_file").map(PathBuf::from);
    let jwks_refresh = s.duration("jwks_refresh", Duration::from_secs(600));
    let issuer = s.opt_string("issuer");
    let audience = s.opt_string("audience");
    let leeway = s.duration("leeway", Duration::from_secs(30));
    let user_claim = s.string("user_claim", "sub");
    let tier_claim = s.string("tier_claim", "tier");
    let default_tier = s.string("default_tier", "free");
    let anonymous_tier = s.string("anonymous_tier", "free");
    let ipv6_prefix = s.int("anonymous_ipv6_prefix", 64);
    if !(32..=128).contains(&ipv6_prefix) {
        s.problem("anonymous_ipv6_prefix", format!("expected a prefix length from 32 to 128, got {ipv6_prefix}"));
    }
    let invalid_token = s.choice(
        "invalid_token",
        InvalidToken::Reject,
        &[("reject", InvalidToken::Reject), ("anonymous", InvalidToken::Anonymous)],
    );
    let tier_source =
        s.choice("tier_source", TierSource::Claim, &[("claim", TierSource::Claim), ("redis", TierSource::Redis)]);
    let tier_cache_ttl = s.duration("tier_cache_ttl", Duration::from_secs(60));
    let user_id_header = s.header_name("user_id_header", "X-User-Id");
    let tier_header = s.header_name("tier_header", "X-User-Tier");
    s.finish();
    IdentityConfig {
        jwt_algorithms,
        jwt_secret_env,
        jwt_public_key_file,
        jwks_file,
        jwks_url,
        jwks_ca_file,
        jwks_refresh,
        issuer,
        audience,
        leeway,
        user_claim,
        tier_claim,
        default_tier,
        anonymous_tier,
        anonymous_ipv6_prefix: ipv6_prefix.clamp(32, 128) as u8,
        invalid_token,
        tier_source,
        tier_cache_ttl,
        user_id_header,
        tier_header,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn read_tiers(value: Option<&toml::Value>, errors: &mut Vec<String>) -> Vec<TierConfig> {
    let Some(value) = value else { return Vec::new() };
    let Some(table) = value.as_table() else {
        errors.push("tiers: expected a table of tiers, e.g. [tiers.free]".into());
        return Vec::new();
    };
    let mut tiers = Vec::new();
    for (name, body) in table {
        let path = format!("tiers.{name}");
        if !valid_name(name) {
            errors.push(format!("{path}: tier names use letters, digits, '_' and '-' only"));
        }
        let mut s = Section::new(path.clone(), Some(body), errors);
        let mut tier = TierConfig {
            name: name.clone(),
            requests_per_hour: s.limit("requests_per_hour"),
            requests_per_day: s.limit("requests_per_day"),
            concurrent_requests: s.limit("concurrent_requests"),
            data_export_per_day: s.limit("data_export_per_day"),
            file_upload_size_mb: s.limit("file_upload_size_mb"),
            api_calls_per_minute: s.limit("api_calls_per_minute"),
            limits: Vec::new(),
        };
        let limits = s.raw("limits");
        s.finish();
        match limits {
            None => {}
            Some(toml::Value::Array(items)) => {
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let mut l = Section::new(format!("{path}.limits[{i}]"), Some(item), errors);
                    let lname = l.opt_string("name");
                    let requests = l.opt_int("requests");
                    let window = l.duration("window", Duration::ZERO);
                    let class_names = l.strings("classes", &[]);
                    match &lname {
                        None => l.problem("name", "required (names the window in headers, e.g. \"burst\")"),
                        Some(n) if !valid_name(n) => {
                            l.problem("name", format!("{n:?}: use letters, digits, '_' and '-' only"))
                        }
                        Some(n) if RESERVED_WINDOW_NAMES.contains(&n.as_str()) => {
                            l.problem("name", format!("{n:?} is reserved for the tier's named limits"))
                        }
                        Some(n) if !seen.insert(n.clone()) => {
                            l.problem("name", format!("{n:?} is used twice in this tier"))
                        }
                        Some(_) => {}
                    }
                    match requests {
                        None if l.table.is_some_and(|t| !t.contains_key("requests")) => {
                            l.problem("requests", "required")
                        }
                        Some(r) if r < -1 => {
                            l.problem("requests", format!("expected -1, 0 or a positive integer, got {r}"))
                        }
                        _ => {}
                    }
                    if l.table.is_some_and(|t| !t.contains_key("window")) {
                        l.problem("window", "required, e.g. \"10s\"");
                    } else if window < Duration::from_secs(1)
                        && l.table.is_some_and(|t| t.get("window").is_some_and(|v| v.is_str()))
                    {
                        l.problem("window", "must be at least 1s");
                    }
                    let mut classes = Vec::new();
                    for (j, c) in class_names.iter().enumerate() {
                        match Class::parse(c) {
                            Some(Class::Exempt) => {
                                l.problem(&format!("classes[{j}]"), "\"exempt\" requests are never limited")
                            }
                            Some(c) => classes.push(c),
                            None => l.problem(
                                &format!("classes[{j}]"),
                                format!("expected general | api | data_export, got {c:?}"),
                            ),
                        }
                    }
                    l.finish();
                    tier.limits.push(CustomLimit {
                        name: lname.unwrap_or_default(),
                        requests: requests.unwrap_or(-1),
                        window: window.max(Duration::from_secs(1)),
                        classes,
                    });
                }
                if tier.limits.len() > 32 {
                    errors.push(format!("{path}.limits: at most 32 custom limits per tier"));
                }
            }
            Some(_) => errors.push(format!("{path}.limits: expected an array of tables, e.g. [[{path}.limits]]")),
        }
        tiers.push(tier);
    }
    tiers
}

fn read_routes(value: Option<&toml::Value>, errors: &mut Vec<String>) -> Vec<RouteConfig> {
    let Some(value) = value else { return Vec::new() };
    let Some(items) = value.as_array() else {
        errors.push("routes: expected an array of tables, e.g. [[routes]]".into());
        return Vec::new();
    };
    let mut routes = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut s = Section::new(format!("routes[{i}]"), Some(item), errors);
        let prefix = s.opt_string("prefix");
        match &prefix {
            None => s.problem("prefix", "required, e.g. \"/api/\""),
            Some(p) if !p.starts_with('/') => s.problem("prefix", format!("must start with '/', got {p:?}")),
            _ => {}
        }
        let class_name = s.opt_string("class");
        let class = match class_name.as_deref().map(|c| (c, Class::parse(c))) {
            None => {
                s.problem("class", "required: general | api | data_export | exempt");
                Class::General
            }
            Some((_, Some(c))) => c,
            Some((c, None)) => {
                s.problem("class", format!("expected general | api | data_export | exempt, got {c:?}"));
                Class::General
            }
        };
        let mut methods = Vec::new();
        for (j, m) in s.strings("methods", &[]).into_iter().enumerate() {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => s.problem(&format!("methods[{j}]"), format!("{m:?} is not an HTTP method")),
            }
        }
        let shadow = s.boolean("shadow", false);
        let on_error = read_on_error(&mut s, OnError::Local);
        s.finish();
        routes.push(RouteConfig { prefix: prefix.unwrap_or_else(|| "/".into()), class, methods, shadow, on_error });
    }
    routes
}

fn read_headers(value: Option<&toml::Value>, errors: &mut Vec<String>) -> HeadersConfig {
    let mut s = Section::new("headers", value, errors);
    let rate_limit = s.choice(
        "rate_limit",
        RateLimitHeaders::Both,
        &[
            ("legacy", RateLimitHeaders::Legacy),
            ("ietf", RateLimitHeaders::Ietf),
            ("both", RateLimitHeaders::Both),
            ("none", RateLimitHeaders::None),
        ],
    );
    let mut remove = Vec::new();
    for (i, name) in s.strings("remove", &["Server", "X-Powered-By"]).into_iter().enumerate() {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => remove.push(h),
            Err(_) => s.problem(&format!("remove[{i}]"), format!("{name:?} is not a valid header name")),
        }
    }
    let security_value = s.raw("security");
    s.finish();
    let mut sec = Section::new("headers.security", security_value, errors);
    let header_value = |sec: &mut Section<'_, '_>, key: &'static str, default: &str| {
        let v = sec.string(key, default);
        if http::HeaderValue::from_str(&v).is_err() {
            sec.problem(key, "not a valid header value (control characters or non-ASCII)");
        }
        v
    };
    let security = SecurityHeaders {
        enabled: sec.boolean("enabled", true),
        strict_transport_security: header_value(
            &mut sec,
            "strict_transport_security",
            "max-age=31536000; includeSubDomains; preload",
        ),
        x_content_type_options: header_value(&mut sec, "x_content_type_options", "nosniff"),
        x_frame_options: header_value(&mut sec, "x_frame_options", "DENY"),
        x_xss_protection: header_value(&mut sec, "x_xss_protection", "1; mode=block"),
        referrer_policy: header_value(&mut sec, "referrer_policy", "strict-origin-when-cross-origin"),
        permissions_policy: header_value(
            &mut sec,
            "permissions_policy",
            "geolocation=(), microphone=(), camera=(), payment=*, usb=()",
        ),
        content_security_policy: header_value(
            &mut sec,
            "content_security_policy",
            "default-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'self'; form-action 'self'",
        ),
    };
    sec.finish();
    HeadersConfig { rate_limit, remove, security }
}
