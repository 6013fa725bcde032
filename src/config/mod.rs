//! `config.toml` → [`Config`]: the typed mirror of the file, and every check that needs only the file.
//!
//! The file is read into a TOML table and walked by hand rather than through `serde::Deserialize`, so
//! that one pass reports **every** problem, each naming its key (`tiers.free.requests_per_hour:
//! expected an integer`), instead of stopping at the first. Unknown keys are problems too. Checks
//! that need the outside world (environment variables, key files) belong to
//! [`crate::snapshot::Snapshot::compile`], which is the only reader of a `Config`.
//!
//! This file is the schema (the types and their meaning); `read.rs` is the reader (the walker and
//! the per-section checks).

mod read;

use crate::access::AccessMode;
use crate::headers::{Environment, RateLimitHeaders};
use crate::identity::{InvalidToken, TierSource};
use crate::limit::Algorithm;
use crate::route::{Class, OnError};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// Every problem found in a config, each line naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: Option<TlsConfig>,
    pub storage: StorageConfig,
    pub identity: IdentityConfig,
    /// In file order of appearance is not kept by TOML tables; sorted by name.
    pub tiers: Vec<TierConfig>,
    pub routes: Vec<RouteConfig>,
    pub headers: HeadersConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Which responses get an access-log line on stdout.
    pub access: AccessMode,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: http::Uri,
    /// Extra PEM roots for an https:// upstream (besides the system's and Mozilla's).
    pub upstream_ca_file: Option<PathBuf>,
    pub environment: Environment,
    pub trusted_proxies: Vec<IpNet>,
    pub upstream_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    /// What a `%2F`/`%5C` in a request path means.
    pub escaped_slashes: crate::route::EscapedSlashes,
    /// Names the environment variable holding the admin port's bearer token (empty: read-only).
    pub admin_token_env: String,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub backend: Backend,
    pub url: String,
    pub cluster_nodes: Vec<String>,
    /// PEM roots for `rediss://` (instead of Mozilla's roots), e.g. a private CA.
    pub ca_file: Option<PathBuf>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub on_error: OnError,
    pub local_share_divisor: u64,
    pub lease_ttl: Duration,
    pub algorithm: Algorithm,
    /// Units a replica may reserve per caller beyond a request, in every window, and concurrency
    /// slots it may keep (0: every decision asks Redis). Redis store only (`limit::batch`).
    pub quota_batch: u64,
    pub quota_batch_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub jwt_algorithms: Vec<jsonwebtoken::Algorithm>,
    pub jwt_secret_env: String,
    pub jwt_public_key_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// Extra PEM roots for an https:// `jwks_url` (besides the system's and Mozilla's).
    pub jwks_ca_file: Option<PathBuf>,
    pub jwks_refresh: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub user_claim: String,
    pub tier_claim: String,
    pub default_tier: String,
    pub anonymous_tier: String,
    /// Anonymous IPv6 callers are counted per network of this prefix length (one customer's /64 is
    /// one caller: rotating addresses inside it does not buy a fresh budget).
    pub anonymous_ipv6_prefix: u8,
    pub invalid_token: InvalidToken,
    pub tier_source: TierSource,
    pub tier_cache_ttl: Duration,
    pub user_id_header: http::HeaderName,
    pub tier_header: http::HeaderName,
}

/// A tier's limits; `-1` is unlimited, `0` none allowed.
#[derive(Debug, Clone)]
pub struct TierConfig {
    pub name: String,
    pub requests_per_hour: i64,
    pub requests_per_day: i64,
    pub concurrent_requests: i64,
    pub data_export_per_day: i64,
    pub file_upload_size_mb: i64,
    pub api_calls_per_minute: i64,
    pub limits: Vec<CustomLimit>,
}

#[derive(Debug, Clone)]
pub struct CustomLimit {
    pub name: String,
    pub requests: i64,
    pub window: Duration,
    /// Empty: every limited class.
    pub classes: Vec<Class>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub prefix: String,
    pub class: Class,
    pub methods: Vec<http::Method>,
    pub shadow: bool,
    pub on_error: Option<OnError>,
}

#[derive(Debug, Clone)]
pub struct HeadersConfig {
    pub rate_limit: RateLimitHeaders,
    pub remove: Vec<http::HeaderName>,
    pub security: SecurityHeaders,
}

#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    pub enabled: bool,
    pub strict_transport_security: String,
    pub x_content_type_options: String,
    pub x_frame_options: String,
    pub x_xss_protection: String,
    pub referrer_policy: String,
    pub permissions_policy: String,
    pub content_security_policy: String,
}

/// Window names the seed's named limits use; custom limits may not take them.
pub const RESERVED_WINDOW_NAMES: [&str; 5] = ["minute", "hour", "day", "export_day", "concurrent"];

impl Config {
    /// The files the config names whose content a reload re-reads (keys, certificates).
    pub fn key_files(&self) -> Vec<PathBuf> {
        let id = &self.identity;
        let tls = self.tls.iter().flat_map(|t| [t.cert_file.clone(), t.key_file.clone()]);
        id.jwt_public_key_file.iter().chain(id.jwks_file.iter()).cloned().chain(tls).collect()
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Config::parse(&text)
    }

    /// Parses and validates config text, reporting every problem at once.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![format!("config is not valid TOML: {}", e.to_string().trim())])
        })?;
        let mut errors = Vec::new();
        let config = read::read_config(&root, &mut errors);
        if errors.is_empty() { Ok(config) } else { Err(ConfigErrors(errors)) }
    }
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// Formats a duration the way the config writes it (largest exact unit).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Some(Duration::from_millis(50)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            [server]
            listen = "nope"
            bogus = 1
            [tiers.free]
            requests_per_hour = "a lot"
            requests_per_day = -7
            [[tiers.free.limits]]
            name = "minute"
            requests = 3
            window = "500ms"
            [[routes]]
            prefix = "api"
            class = "apis"
            [identity]
            jwt_algorithms = ["none"]
        "#;
        let errs = Config::parse(text).unwrap_err().0;
        let expect = [
            "server.listen: expected an address",
            "server.bogus: unknown key",
            "tiers.free.requests_per_hour: expected an integer",
            "tiers.free.requests_per_day: expected -1",
            "tiers.free.limits[0].name: \"minute\" is reserved",
            "tiers.free.limits[0].window: must be at least 1s",
            "routes[0].prefix: must start with '/'",
            "routes[0].class: expected general",
            "identity.jwt_algorithms[0]: \"none\" is never accepted",
        ];
        for e in expect {
            assert!(errs.iter().any(|x| x.starts_with(e)), "missing {e:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn repository_config_parses() {
        let text = include_str!("../../config.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(config.tiers.len(), 3);
        assert_eq!(config.storage.backend, Backend::Memory);
    }
}
