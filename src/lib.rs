//! tiergate: a tier-aware rate-limiting reverse proxy, run as a sidecar beside a backend.
//!
//! A request flows one way through the modules, and the modules are listed below in that order:
//!
//! ```text
//!  client ─▶ server ─▶ proxy ─┬─▶ route     (path normalised; path/method → general | api | data_export | exempt)
//!   (conn: what one         ├─▶ identity  (bearer JWT → user + tier, or client IP → anonymous)
//!    connection knows)      ├─▶ limit     (all-or-nothing over the tier's windows + concurrency)
//!                           ├─▶ forward   (the upstream request: hop-by-hop, X-Forwarded-*; body streams)
//!                           │     └─▶ upstream (pooled HTTP/1.1 connections, per worker thread)
//!                           ├─▶ headers   (security + rate-limit headers on every response)
//!                           ├─▶ error     (the one table from any stage's error to a response)
//!                           ├─▶ metrics   (one record per request; every stage reports to it)
//!                           ├─▶ access    (one JSON line on stdout per logged response)
//!                           └─▶ top       (who is being refused: a bounded sketch per replica)
//! ```
//!
//! A module may use only modules listed before it (`tests/architecture.rs` holds this). The
//! foundations come first (`conn`, `route`'s vocabulary, `metrics`, `bounded`: the budgets every
//! in-memory cache is held to, `values`: per-request header values cut from a per-thread buffer,
//! `head`: a request's headers as the stages read them, from hyper's map or a parsed head),
//! then the stages in request order, then the config (`config` reads it, `snapshot` compiles it, the only reader of a
//! `Config`), the orchestrator (`proxy`), and what runs it: `admin` (the admin port), `reload`
//! (swaps snapshots), `h1` (tiergate's own HTTP/1.1 connections: plain requests, read and answered
//! without hyper), `server` (accept loop, connections; hyper's server for everything `h1` hands
//! it), `app` (the composition root), `demo`, and `cli`
//! (the operator's `top` and `limits` commands, which talk to a running tiergate's admin port).
#![forbid(unsafe_code)]

pub mod conn;
pub mod route;
pub mod metrics;
pub mod bounded;
pub mod values;
pub mod head;
pub mod identity;
pub mod limit;
pub mod wire;
pub mod upstream;
pub mod body;
pub mod forward;
pub mod headers;
pub mod error;
pub mod access;
pub mod top;
pub mod tls;
pub mod config;
pub mod snapshot;
pub mod proxy;
pub mod admin;
pub mod reload;
pub mod h1;
pub mod server;
pub mod app;
pub mod demo;
pub mod cli;
