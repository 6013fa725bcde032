//! tiergate: a tier-aware rate-limiting reverse proxy, run as a sidecar beside a backend.
//!
//! A request flows one way through the modules, in this order:
//!
//! ```text
//!  client ─▶ server ─▶ proxy ─┬─▶ identity  (bearer JWT → user + tier, or client IP → anonymous)
//!                             ├─▶ route     (path/method → general | api | data_export | exempt)
//!                             ├─▶ limit     (all-or-nothing over the tier's windows + concurrency)
//!                             ├─▶ forward   (pooled upstream client, hop-by-hop, X-Forwarded-*)
//!                             ├─▶ headers   (security + rate-limit headers on every response)
//!                             └─▶ metrics   (one record per request)
//! ```
//!
//! `config` parses and validates `config.toml`; `snapshot` compiles it into the immutable form the
//! proxy reads (swapped whole); `reload` watches the config and swaps snapshots; `error` is the one table from failures to HTTP responses; `body`
//! holds the streaming body types; `admin` serves `/metrics`, `/healthz`, `/readyz`; `demo` is the
//! `tiergate demo` command and its echo upstream.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod body;
pub mod config;
pub mod conn;
pub mod demo;
pub mod error;
pub mod forward;
pub mod headers;
pub mod identity;
pub mod limit;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod tls;
