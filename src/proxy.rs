//! The one hyper service. [`Proxy::handle`] shows a request's whole life, stage after stage:
//!
//! ```text
//! load snapshot → framing → path → classify → identify → upload cap → limit → forward → decorate → record
//! ```
//!
//! Each stage returns a typed value or a [`ProxyError`]; the service itself never fails (a hyper
//! service error would abort the connection), errors become responses in `error.rs`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::access::{AccessLog, AccessMode, Line};
use crate::body::{Guards, InflightGuard, ProxyBody, RequestBody};
use crate::conn::{ConnActivity, ConnInfo};
use crate::error::ProxyError;
use crate::forward::{self, ForwardError, Upstream, UpstreamClient};
use crate::head::Headers;
use crate::identity::IdentityKey;
use crate::identity::{IdentifyError, Identity};
use crate::limit::{Decision, Limiter};
use crate::metrics::Outcome;
use crate::route::Class;
use crate::snapshot::Snapshot;
use crate::top::Top;

/// Everything a request needs that outlives one config snapshot.
pub struct Proxy {
    /// The current compiled config; a reload swaps it whole, each request loads it once.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub limiter: Arc<Limiter>,
    /// Who is being refused, and the tier each identity was last seen with (the admin port).
    pub top: Arc<Top>,
    /// Tiers read from Redis (`tier_source = "redis"`), for `tier_cache_ttl`.
    pub tier_cache: TierCache,
    pub client: UpstreamClient,
    /// False once draining has begun (`/readyz` → 503; the admin listener holds the same flag).
    pub ready: Arc<AtomicBool>,
    /// Upgraded connections (WebSocket tunnels): a drain waits for them too.
    pub tunnels: tokio_util::task::TaskTracker,
    /// Where access-log lines go (the mode is the snapshot's).
    pub access: AccessLog,
}

/// What the lifecycle learned, for decoration and the metrics/log record.
struct Ctx {
    tier: Option<usize>,
    class: Class,
    outcome: Outcome,
    /// The limit decision, for the rate-limit headers (its lease has moved into the body).
    decision: Option<Decision>,
    /// For the access log: who (`None` on exempt routes), the window that refused, the path as
    /// forwarded when normalising changed it, and the upstream's time to response headers.
    key: Option<IdentityKey>,
    window: Option<Arc<str>>,
    path: Option<String>,
    upstream: Option<std::time::Duration>,
}

/// A request head as the client sent it, on tiergate's own HTTP/1.1 path (`h1.rs`): a request
/// with no body and nothing unusual in its framing (that module decides which). Its headers stay
/// as parsed, borrowed from the connection's read buffer, and are read in place (`head.rs`).
pub struct FlatRequest<'a> {
    pub method: Method,
    /// The target's path and query (origin form, checked as hyper would accept it).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [httparse::Header<'a>],
    /// The client's first `X-Request-Id`, as sent.
    pub request_id: Option<&'a [u8]>,
}

/// A response as the record stage left it, with what its decoration needs when that is written
/// with its head (`h1.rs`) rather than put in its map.
pub struct Finished {
    pub resp: Response<ProxyBody>,
    snap: Arc<Snapshot>,
    /// The tier, class and decision of a limited request.
    rate: Option<(usize, Class, Decision)>,
}

impl Finished {
    /// The security and rate-limit headers this response gets (`headers.rs`).
    pub fn decoration(&self) -> crate::headers::Decoration<'_> {
        let rate = self.rate.as_ref().map(|(tier, class, d)| (self.snap.tiers[*tier].plan(*class).1, d));
        self.snap.decorator.decoration(rate)
    }
}

/// What the record stage needs from the request's start: when, which snapshot, and the access
/// line's time and id.
struct Started {
    at: Instant,
    snap: Arc<Snapshot>,
    /// The wall-clock time only the access line needs.
    wall: Option<std::time::SystemTime>,
    /// The request id the access line and the upstream share: the client's, else ours.
    request_id: Option<http::HeaderValue>,
}

impl Proxy {
    /// The request's start: the snapshot it runs under, and with an access log, the time and the
    /// request id (`client_id`: the client's, when it sent one).
    fn start(&self, client_id: impl FnOnce() -> Option<http::HeaderValue>) -> Started {
        let at = Instant::now();
        let snap = self.snapshot.load_full();
        let logging = snap.access != AccessMode::None && self.access.is_enabled();
        Started {
            at,
            wall: logging.then(std::time::SystemTime::now),
            request_id: if logging { Some(client_id().unwrap_or_else(forward::request_id)) } else { None },
            snap,
        }
    }

    /// A request that came through hyper (h2, TLS, a body, an upgrade: whatever `h1.rs` does not
    /// take).
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let mut req = req;
        let start = self.start(|| req.headers().get(&forward::X_REQUEST_ID).cloned());
        if let Some(id) = &start.request_id {
            req.headers_mut().insert(forward::X_REQUEST_ID.clone(), id.clone());
        }
        // For the log line only: cheap clones (standard methods are inline, a Uri shares its bytes).
        let method = req.method().clone();
        let uri = req.uri().clone();
        let inflight = InflightGuard::new(&start.snap.metrics.inflight, &conn.activity);
        let mut ctx = Ctx::new();
        let result = self.lifecycle(&start.snap, &conn, req, &mut ctx, inflight).await;
        Ok(self.finish(start, &conn, result, ctx, method, uri.path(), false).resp)
    }

    /// A request on tiergate's own HTTP/1.1 path: the same stages, with the upstream request written
    /// straight from the client's head (`forward::write_head`) into `head`, a buffer the connection
    /// keeps.
    /// The response comes undecorated: its writer adds the decoration as it writes the head
    /// ([`Finished::decoration`]).
    pub async fn handle_flat(self: &Arc<Self>, conn: &ConnInfo, req: FlatRequest<'_>, head: &mut Vec<u8>) -> Finished {
        let start = self.start(|| req.request_id.and_then(|v| http::HeaderValue::from_bytes(v).ok()));
        let inflight = InflightGuard::new(&start.snap.metrics.inflight, &conn.activity);
        let mut ctx = Ctx::new();
        let result =
            self.lifecycle_flat(&start.snap, conn, &req, start.request_id.as_ref(), head, &mut ctx, inflight).await;
        self.finish(start, conn, result, ctx, req.method.clone(), req.path, true)
    }

    /// Decorate (in the response's map, unless `flat`), record and log: every response, errors
    /// included.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        self: &Arc<Self>,
        start: Started,
        conn: &ConnInfo,
        result: Result<Response<ProxyBody>, ProxyError>,
        mut ctx: Ctx,
        method: Method,
        path: &str,
        flat: bool,
    ) -> Finished {
        let Started { at: started, snap, wall, request_id } = start;
        let (mut resp, own) = match result {
            Ok(resp) => (resp, false),
            Err(err) => {
                if let Some(outcome) = err.outcome() {
                    ctx.outcome = outcome;
                }
                if let ProxyError::Limited { violated, .. } = &err {
                    ctx.window = violated.first().cloned();
                }
                (err.response(), true)
            }
        };

        // Decorate: every response, errors included.
        if !flat {
            snap.decorator.security(resp.headers_mut());
            if let (Some(tier), Some(decision)) = (ctx.tier, &ctx.decision) {
                let (_, plan_headers) = snap.tiers[tier].plan(ctx.class);
                snap.decorator.rate_limit(resp.headers_mut(), plan_headers, decision);
            }
        }

        // Record.
        let elapsed = started.elapsed();
        snap.metrics.record(ctx.tier, ctx.class, ctx.outcome, elapsed.as_secs_f64());
        let tier = ctx.tier.map_or(crate::metrics::NO_TIER, |t| &snap.tiers[t].name);
        let status = resp.status().as_u16();
        // One line per request is the access log's job (`log.access`); under a 429 flood a
        // diagnostic line per refusal would be the most expensive thing tiergate does (~14k
        // instructions each, scripts/refusal-cost.sh), so this stays at debug. Refusals are counted
        // in tiergate_requests_total either way.
        tracing::debug!(%method, path, status, tier, class = ctx.class.as_str(), decision = ctx.outcome.as_str(), peer = %conn.peer, seconds = elapsed.as_secs_f64(), "request");

        // The access log: tiergate's own responses at once (their size is known), the upstream's
        // (with `all`) when their body has been sent.
        if let (Some(request_id), Some(wall)) = (request_id, wall)
            && (own || snap.access == AccessMode::All)
        {
            let entry = AccessEntry {
                wall,
                request_id,
                method,
                path: ctx.path.take().unwrap_or_else(|| path.to_string()),
                status,
                class: ctx.class,
                tier: Arc::clone(ctx.tier.map_or(&snap.no_tier, |t| &snap.tiers[t].name)),
                key: ctx.key.take(),
                decision: ctx.outcome,
                window: ctx.window.take(),
                upstream: ctx.upstream,
                started,
            };
            match http_body::Body::size_hint(resp.body()).exact() {
                Some(bytes) if own => entry.write(&self.access, bytes),
                _ => {
                    let proxy = Arc::clone(self);
                    resp.body_mut().on_end(Box::new(move |bytes| entry.write(&proxy.access, bytes)));
                }
            }
        }
        let rate = if flat { ctx.tier.zip(ctx.decision.take()).map(|(tier, d)| (tier, ctx.class, d)) } else { None };
        Finished { resp, snap, rate }
    }

    async fn lifecycle(
        &self,
        snap: &Snapshot,
        conn: &ConnInfo,
        req: Request<Incoming>,
        ctx: &mut Ctx,
        inflight: InflightGuard,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // 1. Framing that hyper lets through but a proxy must not (request smuggling).
        check_framing(req.version(), req.headers(), &conn.activity)?;
        // 2. The path routes match is the path the upstream receives (CONTRACT.md "Paths").
        let normalized = path_stage(snap, req.uri().path(), ctx)?;
        if normalized.as_deref().unwrap_or(req.uri().path()) == QUOTA_PATH && req.method() == Method::GET {
            return self.quota(snap, conn, req.headers().into(), ctx).await;
        }
        let upgrade = forward::is_upgrade(&req);
        let (mut parts, body) = req.into_parts();
        let client_upgrade = parts.extensions.remove::<OnUpgrade>();
        if let Some(path) = normalized {
            parts.uri = with_path(&parts.uri, path)
                .map_err(|_| ProxyError::BadRequest("The request target cannot be forwarded."))?;
        }

        // 3. Classify. Client-sent identity headers never reach the upstream, on any route.
        let route = snap.routes.classify(&parts.method, parts.uri.path());
        ctx.class = route.class;
        if parts.headers.keys().any(|n| *n == snap.user_id_header || *n == snap.tier_header) {
            parts.headers.remove(&snap.user_id_header);
            parts.headers.remove(&snap.tier_header);
        }

        let mut lease = None;
        let mut body = RequestBody::new(body);
        if route.class != Class::Exempt {
            // 4. Identify.
            let identity = self.identify_stage(snap, conn, (&parts.headers).into(), ctx).await?;
            let tier = &snap.tiers[identity.tier];

            // 5. Upload cap: from the headers alone when declared, else by counting the stream.
            if let Some(cap) = tier.upload_cap {
                match content_length(&parts.headers) {
                    Some(len) if len > cap => {
                        return Err(ProxyError::TooLarge { tier: tier.name.clone(), limit_bytes: cap });
                    }
                    Some(_) => {}
                    None => body = body.with_cap(cap),
                }
            }

            // 6. Limit.
            lease = self.limit_stage(snap, &identity, route, ctx).await?;
            if let Some(user) = &identity.user_header {
                parts.headers.insert(snap.user_id_header.clone(), user.clone());
            }
            parts.headers.insert(snap.tier_header.clone(), tier.header.clone());
        } else {
            ctx.outcome = Outcome::Exempt;
        }

        // 7. Forward.
        let target = upstream_of(snap, conn, upgrade);
        forward::prepare(&mut parts, &target);
        let upstream_started = Instant::now();
        let sent = forward::send(&self.client, &target, Request::from_parts(parts, body), snap.upstream_timeout).await;
        let upgrade = upgrade.then_some((&*conn.activity, client_upgrade));
        self.answer(snap, ctx, upstream_started, sent, Guards { inflight, lease }, upgrade)
    }

    /// The same stages for a [`FlatRequest`]: it has no body and asks for no upgrade (`h1.rs` hands
    /// such requests to hyper), and its framing was checked as it was parsed.
    #[allow(clippy::too_many_arguments)]
    async fn lifecycle_flat(
        &self,
        snap: &Snapshot,
        conn: &ConnInfo,
        req: &FlatRequest<'_>,
        request_id: Option<&http::HeaderValue>,
        head: &mut Vec<u8>,
        ctx: &mut Ctx,
        inflight: InflightGuard,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // 2. The path.
        let normalized = path_stage(snap, req.path, ctx)?;
        let path = normalized.as_deref().unwrap_or(req.path);
        if path == QUOTA_PATH && req.method == Method::GET {
            return self.quota(snap, conn, Headers::Parsed(req.headers), ctx).await;
        }
        // 3. Classify.
        let route = snap.routes.classify(&req.method, path);
        ctx.class = route.class;
        let mut lease = None;
        let mut added = forward::Added { user: None, tier: None };
        if route.class != Class::Exempt {
            // 4. Identify; 6. limit (no body, so no upload cap).
            let identity = self.identify_stage(snap, conn, Headers::Parsed(req.headers), ctx).await?;
            lease = self.limit_stage(snap, &identity, route, ctx).await?;
            added.user = identity.user_header;
            added.tier = Some(snap.tiers[identity.tier].header.clone());
        } else {
            ctx.outcome = Outcome::Exempt;
        }
        // 7. Forward.
        let target = upstream_of(snap, conn, false);
        let names = forward::Names { user_id: &snap.user_id_header, tier: &snap.tier_header };
        forward::write_head(head, &req.method, path, req.query, req.headers, &target, names, &added, request_id);
        let upstream_started = Instant::now();
        let sent = forward::send_head(&self.client, &target, &req.method, head, snap.upstream_timeout).await;
        self.answer(snap, ctx, upstream_started, sent, Guards { inflight, lease }, None)
    }

    /// Stage 4, identify: the caller's identity and tier, noted for the access log (a 401 under the
    /// client's address).
    async fn identify_stage(
        &self,
        snap: &Snapshot,
        conn: &ConnInfo,
        headers: Headers<'_>,
        ctx: &mut Ctx,
    ) -> Result<Identity, ProxyError> {
        match self.identify(snap, conn, headers).await {
            Ok(identity) => {
                ctx.key = Some(identity.key.clone());
                ctx.tier = Some(identity.tier);
                Ok(identity)
            }
            Err(e) => {
                ctx.key = Some(snap.identity.anonymous_key(headers, conn.peer));
                Err(e)
            }
        }
    }

    /// Stage 6, limit: the decision over the tier's plan for the route's class (a fully unlimited plan
    /// makes no store call at all). Refused: the error, unless the route is in shadow mode.
    /// Admitted: the concurrency slot's lease, if the plan has a cap.
    async fn limit_stage(
        &self,
        snap: &Snapshot,
        identity: &Identity,
        route: &crate::route::Route,
        ctx: &mut Ctx,
    ) -> Result<Option<crate::limit::Lease>, ProxyError> {
        let tier = &snap.tiers[identity.tier];
        let (plan, _) = tier.plan(route.class);
        if plan.is_unlimited() {
            return Ok(None);
        }
        let fallback = tier.fallback_plan(route.class);
        let mut decision = self
            .limiter
            .check(&identity.key, plan, fallback, route.on_error, snap.quota_batch)
            .await
            .map_err(|_| ProxyError::StorageUnavailable)?;
        let lease = decision.lease.take();
        if decision.allowed {
            self.top.allowed(&identity.key, &tier.name);
            ctx.decision = Some(decision);
            return Ok(lease);
        }
        self.top.refused(&identity.key, &tier.name);
        let violated = violated_names(plan, &decision);
        let retry_after = decision.retry_after_secs();
        ctx.decision = Some(decision);
        if !route.shadow {
            return Err(ProxyError::Limited { tier: tier.name.clone(), violated, retry_after });
        }
        ctx.outcome = Outcome::ShadowLimited;
        tracing::info!(tier = &*tier.name, class = route.class.as_str(), violated = ?violated, "shadow route over its limit; forwarded");
        Ok(lease)
    }

    /// Stages 7 and 8: the upstream's answer, cleaned, with the guards riding on its body (or the tunnel); a
    /// failure mapped to its status. `upgrade`: the request asked for one (its connection, and the
    /// client side's upgrade when hyper gave one).
    fn answer(
        &self,
        snap: &Snapshot,
        ctx: &mut Ctx,
        upstream_started: Instant,
        sent: Result<Response<crate::upstream::UpstreamBody<RequestBody>>, ForwardError>,
        guards: Guards,
        upgrade: Option<(&ConnActivity, Option<OnUpgrade>)>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upstream_took = upstream_started.elapsed();
        ctx.upstream = Some(upstream_took);
        snap.metrics.upstream_duration.record(upstream_took.as_secs_f64());
        let mut resp = match sent {
            Ok(sent) => sent,
            Err(e) => {
                let Some(kind) = e.upstream_kind() else {
                    // The client's own failure: its body broke, or grew past the cap.
                    return Err(match (e, ctx.tier.map(|t| &snap.tiers[t])) {
                        (ForwardError::UploadTooLarge, Some(tier)) => {
                            ProxyError::TooLarge { tier: tier.name.clone(), limit_bytes: tier.upload_cap.unwrap_or(0) }
                        }
                        _ => ProxyError::MalformedBody,
                    });
                };
                snap.metrics.upstream_error(kind);
                tracing::warn!(error = ?e, upstream = %snap.upstream_authority, "upstream request failed");
                return Err(match e {
                    ForwardError::Timeout => ProxyError::GatewayTimeout,
                    _ => ProxyError::BadGateway,
                });
            }
        };

        // 8. The upstream's answer, cleaned; the guards ride with its body (or the tunnel).
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
        forward::strip_hop_by_hop(resp.headers_mut(), switching);
        snap.decorator.strip_upstream(resp.headers_mut());
        if let Some((activity, client_upgrade)) = upgrade.filter(|_| switching) {
            activity.upgraded();
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let (parts, upstream_body) = resp.into_parts();
            if let Some(client_upgrade) = client_upgrade {
                // The connection is the tunnel's now, never reused.
                self.tunnels.spawn(tunnel(client_upgrade, upstream_upgrade, guards, upstream_body));
            }
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
        let (parts, body) = resp.into_parts();
        let mut body = ProxyBody::upstream(body);
        body.hold(guards);
        Ok(Response::from_parts(parts, body))
    }
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            tier: None,
            class: Class::General,
            outcome: Outcome::Allowed,
            decision: None,
            key: None,
            window: None,
            path: None,
            upstream: None,
        }
    }
}

/// Stage 2: the path as routes match it and the upstream receives it (CONTRACT.md "Paths"):
/// `Some` when normalising changed it (noted for the access log), `None` when it stands as sent.
fn path_stage(snap: &Snapshot, path: &str, ctx: &mut Ctx) -> Result<Option<String>, ProxyError> {
    match snap.routes.normalize(path) {
        Ok(Cow::Borrowed(_)) => Ok(None),
        Ok(Cow::Owned(path)) => {
            ctx.path = Some(path.clone());
            Ok(Some(path))
        }
        Err(e) => Err(ProxyError::BadRequest(e.detail())),
    }
}

/// Where the request goes and what it says about the client.
fn upstream_of<'a>(snap: &'a Snapshot, conn: &'a ConnInfo, upgrade: bool) -> Upstream<'a> {
    let peer_ip = conn.peer.ip().to_canonical();
    Upstream {
        scheme: &snap.upstream_scheme,
        authority: &snap.upstream_authority,
        client_ip_value: &conn.peer_ip_value,
        trusted_peer: snap.identity.rules.trusted_proxies.iter().any(|n| n.contains(&peer_ip)),
        proto: if conn.tls { "https" } else { "http" },
        upgrade,
    }
}

impl Proxy {
    /// A request hyper refused itself, before tiergate saw it, with an answer of its own: `status`
    /// 431 for a head over `max_header_bytes`, 414 for a URI too long to hold, 400 for a malformed
    /// request line or header (conflicting `Content-Length` among them). Counted and logged as
    /// tiergate's own refusals are, under `bad_request` with no tier; its method and path were never
    /// parsed, so the access line says `-` for both.
    pub fn refused_by_codec(&self, conn: &ConnInfo, status: u16, head_started: Option<Instant>) {
        let snap = self.snapshot.load();
        let took = head_started.map(|at| at.elapsed()).unwrap_or_default();
        snap.metrics.record(None, Class::General, Outcome::BadRequest, took.as_secs_f64());
        if snap.access == AccessMode::None || !self.access.is_enabled() {
            return;
        }
        let request_id = forward::request_id();
        self.access.emit(&Line {
            ts: crate::access::timestamp(std::time::SystemTime::now()),
            request_id: request_id.to_str().unwrap_or("-"),
            method: "-",
            path: "-",
            status,
            class: Class::General.as_str(),
            tier: &snap.no_tier,
            key: Some(snap.identity.anonymous_key((&HeaderMap::new()).into(), conn.peer).to_string()),
            decision: Outcome::BadRequest.as_str(),
            window: None,
            duration_ms: crate::access::millis(took),
            upstream_ms: None,
            bytes_sent: conn.activity.codec_answer_bytes().unwrap_or(0),
        });
    }

    /// The caller's identity; with `tier_source = "redis"`, a user's tier comes from Redis when set.
    async fn identify(&self, snap: &Snapshot, conn: &ConnInfo, headers: Headers<'_>) -> Result<Identity, ProxyError> {
        let mut identity = match snap.identity.identify(headers, conn.peer, true) {
            Ok(identity) => identity,
            // A key rotation at the identity provider: refresh the remote keys (rate-limited), retry once.
            Err(IdentifyError::UnknownKid) => {
                if let Some(remote) = &snap.identity.remote {
                    remote.refresh_for_unknown_kid().await;
                }
                snap.identity.identify(headers, conn.peer, false).map_err(|_| ProxyError::Unauthorized)?
            }
            Err(IdentifyError::Invalid) => return Err(ProxyError::Unauthorized),
        };
        if let Some(ttl) = snap.tier_override_ttl
            && let IdentityKey::User(user) = &identity.key
        {
            let tier = match self.tier_cache.get(user, ttl) {
                Some(cached) => cached,
                None => match self.limiter.tier_override(user).await {
                    Ok(fetched) => {
                        let fetched: Option<Arc<str>> = fetched.map(Arc::from);
                        self.tier_cache.put(user, fetched.clone());
                        fetched
                    }
                    // Redis could not answer: the token's tier, and ask again on the next request.
                    Err(_) => None,
                },
            };
            if let Some(index) = tier.and_then(|t| snap.identity.rules.tiers.get(&*t).copied()) {
                identity.tier = index;
            }
        }
        Ok(identity)
    }

    /// `GET /_tiergate/quota`: every window of the caller's tier, read without consuming.
    async fn quota(
        &self,
        snap: &Snapshot,
        conn: &ConnInfo,
        headers: Headers<'_>,
        ctx: &mut Ctx,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        ctx.outcome = Outcome::Exempt;
        let identity = self.identify(snap, conn, headers).await?;
        let tier = &snap.tiers[identity.tier];
        let plan = &tier.quota_plan;
        let d = if plan.is_unlimited() {
            crate::limit::Decision::unchecked(crate::limit::Clock::System.now_ms())
        } else {
            self.limiter.peek(&identity.key, plan).await.map_err(|_| ProxyError::StorageUnavailable)?
        };
        let mut body = crate::limit::windows_json(plan, &d);
        body.insert("tier".into(), serde_json::Value::from(&*tier.name));
        let body = serde_json::Value::Object(body);
        let mut resp = Response::new(ProxyBody::bytes(body.to_string()));
        resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        resp.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}

/// What one access-log line needs, owned (it may be written after the handler returned).
struct AccessEntry {
    wall: std::time::SystemTime,
    request_id: http::HeaderValue,
    method: Method,
    path: String,
    status: u16,
    class: Class,
    tier: Arc<str>,
    key: Option<IdentityKey>,
    decision: Outcome,
    window: Option<Arc<str>>,
    upstream: Option<std::time::Duration>,
    started: Instant,
}

impl AccessEntry {
    fn write(self, log: &AccessLog, bytes_sent: u64) {
        log.emit(&Line {
            ts: crate::access::timestamp(self.wall),
            request_id: self.request_id.to_str().unwrap_or("-"),
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            class: self.class.as_str(),
            tier: &self.tier,
            key: self.key.as_ref().map(ToString::to_string),
            decision: self.decision.as_str(),
            window: self.window.as_deref(),
            duration_ms: crate::access::millis(self.started.elapsed()),
            upstream_ms: self.upstream.map(crate::access::millis),
            bytes_sent,
        });
    }
}

/// Tiers fetched from Redis, per user, for `tier_cache_ttl`: bounded, evicting the least useful
/// entries when full (never all at once).
pub struct TierCache {
    map: crate::bounded::Bounded<Arc<str>, (Option<Arc<str>>, Instant)>,
}

impl Default for TierCache {
    fn default() -> Self {
        use crate::bounded::arc_str;
        TierCache { map: Self::BUDGET.cache(|user, (tier, _)| arc_str(user) + tier.as_deref().map_or(0, arc_str)) }
    }
}

impl TierCache {
    /// 100,000 users or 2 MiB (about 190 bytes each: the user id, the tier read, the slot).
    pub const BUDGET: crate::bounded::Budget = crate::bounded::Budget::new(100_000, 2 * 1024 * 1024, 190);

    /// `Some(tier or None)`: a fresh answer is cached (a stored miss counts as an answer).
    fn get(&self, user: &Arc<str>, ttl: std::time::Duration) -> Option<Option<Arc<str>>> {
        let (tier, at) = self.map.get(user)?;
        (at.elapsed() < ttl).then_some(tier)
    }

    fn put(&self, user: &Arc<str>, tier: Option<Arc<str>>) {
        self.map.insert(Arc::clone(user), (tier, Instant::now()));
    }
}

/// The data-plane path tiergate answers itself.
pub const QUOTA_PATH: &str = "/_tiergate/quota";

/// Copies bytes both ways between an upgraded client and upstream connection until either closes.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    guards: Guards,
    conn: crate::upstream::UpstreamBody<RequestBody>,
) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else { return };
    drop(conn);
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
    drop(guards);
}

/// RFC 9112 §6.1: a request with both `Content-Length` and `Transfer-Encoding` is refused (and the
/// connection closed); so are conflicting `Content-Length` values, a missing or repeated `Host`
/// (§3.2) and a repeated `Authorization`.
fn check_framing(version: http::Version, headers: &HeaderMap, conn: &ConnActivity) -> Result<(), ProxyError> {
    // hyper removes Content-Length when Transfer-Encoding is present; the connection's sniffer saw it
    // (in this request's own head: pipelined heads are numbered, so a later one cannot taint this).
    let sniffed = conn.next_request_had_cl_and_te();
    // One pass over the headers (a handful) instead of a hashed lookup per question.
    let (mut hosts, mut authorizations, mut te) = (0, 0, false);
    let mut length: Option<&http::HeaderValue> = None;
    let mut conflicting = false;
    for (name, value) in headers {
        if name == header::HOST {
            hosts += 1;
        } else if name == header::AUTHORIZATION {
            authorizations += 1;
        } else if name == header::TRANSFER_ENCODING {
            te = true;
        } else if name == header::CONTENT_LENGTH {
            conflicting |= length.is_some_and(|first| first != value);
            length = length.or(Some(value));
        }
    }
    if te && (length.is_some() || sniffed) {
        return Err(ProxyError::BadRequest("Content-Length and Transfer-Encoding together are not allowed."));
    }
    // RFC 9112 §3.2: more than one Host is refused. More than one Authorization is ambiguous: a
    // backend that reads the last one would trust a token tiergate never verified.
    if hosts > 1 {
        return Err(ProxyError::BadRequest("More than one Host header."));
    }
    if version == http::Version::HTTP_11 && hosts == 0 {
        return Err(ProxyError::BadRequest("An HTTP/1.1 request needs a Host header."));
    }
    if authorizations > 1 {
        return Err(ProxyError::BadRequest("More than one Authorization header."));
    }
    if conflicting {
        return Err(ProxyError::BadRequest("Conflicting Content-Length values."));
    }
    Ok(())
}

/// `uri` with its path replaced by `path` (the query string kept byte for byte).
fn with_path(uri: &http::Uri, path: String) -> Result<http::Uri, http::Error> {
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(path_and_query)?);
    Ok(http::Uri::from_parts(parts)?)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn violated_names(plan: &crate::limit::Plan, d: &Decision) -> Vec<Arc<str>> {
    let mut names: Vec<Arc<str>> = plan
        .windows
        .iter()
        .enumerate()
        .filter(|(i, _)| d.violated & (1 << i) != 0)
        .map(|(_, w)| w.name.clone())
        .collect();
    if d.concurrency_violated {
        names.push(Arc::from(crate::limit::CONCURRENT));
    }
    names
}
