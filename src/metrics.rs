//! Prometheus metrics: described once per process, handles resolved once per snapshot, recorded once
//! per request. Names and labels are the public contract (CONTRACT.md); labels never carry user ids.
//!
//! The recorder is process-global (the `metrics` facade), so [`install`] is idempotent and every
//! server started in one process (tests) shares it.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::route::Class;

pub const REQUESTS_TOTAL: &str = "tiergate_requests_total";
pub const REQUEST_DURATION: &str = "tiergate_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "tiergate_upstream_duration_seconds";
pub const UPSTREAM_ERRORS: &str = "tiergate_upstream_errors_total";
pub const STORAGE_DURATION: &str = "tiergate_storage_duration_seconds";
pub const STORAGE_ERRORS: &str = "tiergate_storage_errors_total";
pub const STORAGE_FALLBACK: &str = "tiergate_storage_fallback";
pub const INFLIGHT: &str = "tiergate_inflight_requests";
pub const CONFIG_RELOADS: &str = "tiergate_config_reloads_total";
pub const BUILD_INFO: &str = "tiergate_build_info";
pub const JWKS_REFRESHES: &str = "tiergate_jwks_refreshes_total";
pub const ACCESS_LOG_DROPPED: &str = "tiergate_access_log_dropped_total";
pub const STORAGE_CALLS: &str = "tiergate_storage_calls_total";
pub const QUOTA_UNITS: &str = "tiergate_quota_units_total";

/// Tier label for requests that have no tier (exempt, unauthorized, malformed).
pub const NO_TIER: &str = "none";

/// The `decision` label of `tiergate_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed = 0,
    Limited = 1,
    ShadowLimited = 2,
    Unauthorized = 3,
    TooLarge = 4,
    Exempt = 5,
    StorageUnavailable = 6,
    /// Refused before identification: framing, path, duplicate headers.
    BadRequest = 7,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Allowed,
        Outcome::Limited,
        Outcome::ShadowLimited,
        Outcome::Unauthorized,
        Outcome::TooLarge,
        Outcome::Exempt,
        Outcome::StorageUnavailable,
        Outcome::BadRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::ShadowLimited => "shadow_limited",
            Outcome::Unauthorized => "unauthorized",
            Outcome::TooLarge => "too_large",
            Outcome::Exempt => "exempt",
            Outcome::StorageUnavailable => "storage_unavailable",
            Outcome::BadRequest => "bad_request",
        }
    }
}

/// `kind` label of `tiergate_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect = 0,
    Timeout = 1,
    Protocol = 2,
}

const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];
const STORAGE_BUCKETS: [f64; 12] =
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns the handle `/metrics` renders from.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in [
            (REQUEST_DURATION, &LATENCY_BUCKETS[..]),
            (UPSTREAM_DURATION, &LATENCY_BUCKETS[..]),
            (STORAGE_DURATION, &STORAGE_BUCKETS[..]),
        ] {
            // Only an empty bucket list is refused; ours are constants.
            builder = match builder.set_buckets_for_metric(Matcher::Full(name.into()), buckets) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, metric = name, "histogram buckets refused");
                    PrometheusBuilder::new()
                }
            };
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (an embedding program's own): then
        // our handle renders nothing, which /metrics shows plainly rather than crashing.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        metrics::gauge!(STORAGE_FALLBACK).set(0.0);
        metrics::gauge!(INFLIGHT).set(0.0);
        metrics::counter!(ACCESS_LOG_DROPPED).increment(0);
        handle
    })
}

fn describe() {
    metrics::describe_counter!(REQUESTS_TOTAL, Unit::Count, "Requests handled, by tier, route class and decision.");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request head to response head, by route class."
    );
    metrics::describe_histogram!(UPSTREAM_DURATION, Unit::Seconds, "Time the upstream took to send response headers.");
    metrics::describe_counter!(UPSTREAM_ERRORS, Unit::Count, "Upstream failures by kind (connect, timeout, protocol).");
    metrics::describe_histogram!(
        STORAGE_DURATION,
        Unit::Seconds,
        "Time one limit decision took in the storage backend."
    );
    metrics::describe_counter!(STORAGE_ERRORS, Unit::Count, "Storage calls that failed, by kind.");
    metrics::describe_gauge!(
        STORAGE_FALLBACK,
        "1 while limit decisions come from the on_error policy instead of storage."
    );
    metrics::describe_gauge!(INFLIGHT, "Requests in flight (until the response body ends).");
    metrics::describe_counter!(CONFIG_RELOADS, Unit::Count, "Configuration reloads by result (success, error).");
    metrics::describe_gauge!(BUILD_INFO, "Always 1; the version label names the running build.");
    metrics::describe_counter!(JWKS_REFRESHES, Unit::Count, "Fetches of identity.jwks_url by result (success, error).");
    metrics::describe_counter!(
        STORAGE_CALLS,
        Unit::Count,
        "Round trips to the limit store by op (decide, reserve, return, release, renew, tier, quota, reset)."
    );
    metrics::describe_counter!(
        QUOTA_UNITS,
        Unit::Count,
        "Quota batching: units reserved in Redis, spent from a reservation with no store call, returned, or lost (a failed return or a dead connection)."
    );
    metrics::describe_counter!(
        ACCESS_LOG_DROPPED,
        Unit::Count,
        "Access-log lines dropped because stdout did not keep up (never a blocked request)."
    );
}

/// Metric handles for one snapshot: every label combination resolved up front.
pub struct Handles {
    /// [tier (last = "none")][class][outcome]
    requests: Vec<[[Counter; 8]; 4]>,
    duration: [Histogram; 4],
    pub upstream_duration: Histogram,
    upstream_errors: [Counter; 3],
    pub inflight: Gauge,
}

impl Handles {
    /// Resolves every handle against the installed recorder (`app::install_process_globals`);
    /// before one is installed they count nothing.
    pub fn new(tier_names: &[&str]) -> Handles {
        let tiers = tier_names.iter().copied().chain(std::iter::once(NO_TIER));
        let requests = tiers
            .map(|tier| {
                Class::ALL.map(|class| {
                    Outcome::ALL.map(|o| {
                        metrics::counter!(REQUESTS_TOTAL, "tier" => tier.to_string(), "class" => class.as_str(), "decision" => o.as_str())
                    })
                })
            })
            .collect();
        Handles {
            requests,
            duration: Class::ALL.map(|c| metrics::histogram!(REQUEST_DURATION, "class" => c.as_str())),
            upstream_duration: metrics::histogram!(UPSTREAM_DURATION),
            upstream_errors: ["connect", "timeout", "protocol"]
                .map(|k| metrics::counter!(UPSTREAM_ERRORS, "kind" => k)),
            inflight: metrics::gauge!(INFLIGHT),
        }
    }

    /// Counts one finished request. `tier`: index into the snapshot's tiers, or `None`.
    pub fn record(&self, tier: Option<usize>, class: Class, outcome: Outcome, seconds: f64) {
        let row = tier.filter(|t| *t < self.requests.len() - 1).unwrap_or(self.requests.len() - 1);
        self.requests[row][class as usize][outcome as usize].increment(1);
        self.duration[class as usize].record(seconds);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].increment(1);
    }
}

/// Counts a JWKS fetch.
pub fn jwks_refresh(success: bool) {
    metrics::counter!(JWKS_REFRESHES, "result" => if success { "success" } else { "error" }).increment(1);
}

/// Counts a reload attempt.
pub fn config_reload(success: bool) {
    metrics::counter!(CONFIG_RELOADS, "result" => if success { "success" } else { "error" }).increment(1);
}
