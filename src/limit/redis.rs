//! The Redis store: counters every replica shares, one atomic round trip per decision.
//!
//! One Lua script (`redis.lua`, loaded once, called by EVALSHA, reloaded on NOSCRIPT by redis-rs's
//! `Script`) reads every window of the identity with one `MGET`, checks the concurrency lease set,
//! and writes only if everything has room (all-or-nothing). Time is Redis `TIME`, never the pod clock,
//! so replicas with skewed clocks agree. Keys share one hash tag per identity,
//! `{prefix}:{<identity>}:<window>`, so the script works on Redis Cluster; every key gets a TTL
//! (the moment its data stops mattering), lease sets included.
//!
//! Cost per decision (3 windows, sliding log, admitted): `TIME`, `MGET`, 3 × `SET … PX`; refused: `TIME`
//! and `MGET` only; about 23 µs of Redis CPU, of which 10 µs are the commands themselves
//! (docs/PERFORMANCE.md, `scripts/redis-script-cost.sh`).
//!
//! Quota batching (see `batch.rs`): the same call may reserve further units in every window and
//! lease further slots ([`Ask`]), and take back an ended reservation of the caller; the return script
//! (`redis_return.lua`) takes back many at once. Both share `redis_give_back.lua`. Released slots may
//! be parked idle in this replica's pool for the caller's next request. A sliding-log window is stored as
//! `total|end:count,…` (at most 62 buckets, ~1.5 KiB) so the admit path parses only the expired front
//! buckets and the newest one; the exact arithmetic mirrors `local.rs`, and a test holds them equal.
//!
//! Concurrency leases: a sorted set of request ids scored by expiry. The script drops expired ones,
//! counts, and adds ours; a background task renews every in-flight lease every `lease_ttl / 3` (one
//! shared timer), and a release task removes a lease when its response ends. A crashed sidecar's
//! leases simply expire.

use std::collections::{HashMap, HashSet};

/// The lease books' maps: keyed by Redis key and lease member, hashed on every request that holds a
/// slot, with a seeded fast hasher rather than SipHash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<T> = HashSet<T, foldhash::fast::RandomState>;
/// A concurrency lease's Redis key, shared by the lease book, the caller's idle slots and each of
/// the caller's leases (a reference count, not a copy of the key per request).
type LeaseKey = Arc<str>;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use tokio::sync::mpsc;

use super::{Algorithm, Check, Decision, IdentityKey, Plan, Tally};

const SCRIPT: &str = concat!(include_str!("redis_give_back.lua"), include_str!("redis.lua"));
const RETURN: &str = concat!(include_str!("redis_give_back.lua"), include_str!("redis_return.lua"));

const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local exp = string.format('%.0f', now + tonumber(ARGV[2]))
local args = {'XX'}
for i = 3, #ARGV do args[#args + 1] = exp; args[#args + 1] = ARGV[i] end
redis.call('ZADD', KEYS[1], unpack(args))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Why a storage call failed (the `kind` label of `tiergate_storage_errors_total`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not connected to redis yet")]
    NotConnected,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from the limit script")]
    BadReply,
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotConnected => "connect",
            StoreError::Redis(e) if e.is_timeout() => "timeout",
            StoreError::Redis(e) if e.is_connection_refusal() || e.is_io_error() || e.is_connection_dropped() => {
                "connect"
            }
            StoreError::Redis(_) => "redis",
            StoreError::BadReply => "reply",
        }
    }
}

/// A connection to one Redis or a Redis Cluster (both pipeline concurrent calls over shared sockets).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn invoke<T: redis::FromRedisValue>(&mut self, inv: &redis::ScriptInvocation<'_>) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => inv.invoke_async(c).await,
            Conn::Cluster(c) => inv.invoke_async(c).await,
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// Runs `cmd`, an `EVALSHA` of `script` built with [`evalsha`], loading the script first where
    /// this Redis does not hold it yet (a restart, a failover, a node added), as `invoke` does.
    async fn eval<T: redis::FromRedisValue>(
        &mut self,
        script: &redis::Script,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self.query(cmd).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                match self {
                    Conn::Single(c) => script.load_async(c).await?,
                    Conn::Cluster(c) => script.load_async(c).await?,
                };
                self.query(cmd).await
            }
            reply => reply,
        }
    }
}

/// A reply that is an array of integers, as the decision script's is; `None` for anything else. Read
/// directly: the generic `Vec<i64>` conversion costs more than the decision's own arithmetic.
fn integers(reply: redis::Value) -> Option<Vec<i64>> {
    match reply {
        redis::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                redis::Value::Int(i) => Some(i),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The start of an `EVALSHA` of `script` with `keys` keys, room made for `args` more arguments:
/// keys, then arguments, follow with `arg`. One buffer for every argument, where a
/// `ScriptInvocation` allocates one per argument and then copies them all into such a command.
fn evalsha(script: &redis::Script, keys: usize, args: usize) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(3 + keys + args, 64 * (keys + 1) + 12 * args);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    cmd
}

/// Where to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTarget {
    /// One Redis (`redis://` or `rediss://`), used when `cluster_nodes` is empty.
    pub url: String,
    pub cluster_nodes: Vec<String>,
    /// PEM roots for `rediss://` (a private CA); `None`: Mozilla's roots.
    pub ca_pem: Option<Vec<u8>>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub lease_ttl: Duration,
}

pub struct RedisStore {
    conn: Arc<ArcSwapOption<Conn>>,
    script: redis::Script,
    give_back_script: redis::Script,
    key_prefix: String,
    lease_ttl_ms: u64,
    leases: Arc<LeaseBook>,
    /// Added to Redis time inside the script: lets tests move time. Always 0 in production.
    time_offset_ms: Arc<AtomicI64>,
    member_seq: AtomicU64,
    instance: u64,
    cluster: bool,
}

/// Leases this replica holds, for renewal: in flight, and (quota batching) idle in the pool, kept
/// for the caller's next request; releases go to a background task.
struct LeaseBook {
    live: Mutex<Map<LeaseKey, Set<String>>>,
    /// Caller → its idle slots (quota batching). Keyed by the caller, not the lease key, so a
    /// request takes a pooled slot without formatting the key.
    idle: Mutex<Map<IdentityKey, Idle>>,
    release: mpsc::UnboundedSender<(LeaseKey, String)>,
    time_offset_ms: Arc<AtomicI64>,
}

/// One caller's idle slots: their lease key, and each member with when it went idle (store clock, ms).
struct Idle {
    key: LeaseKey,
    members: Vec<(String, u64)>,
}

impl LeaseBook {
    fn now_ms(&self) -> u64 {
        super::Clock::System.now_ms().saturating_add_signed(self.time_offset_ms.load(Ordering::Relaxed))
    }

    /// Parks a slot idle for the caller's next request, unless this replica already holds `cap`
    /// slots of the caller (in flight and idle), in which case it is released.
    fn park(&self, identity: &IdentityKey, key: LeaseKey, member: String, cap: u64) {
        let held = self.live.lock().map_or(u64::MAX, |live| live.get(&*key).map_or(0, |s| s.len() as u64));
        if held > cap {
            return self.release(key, member);
        }
        let now = self.now_ms();
        if let Ok(mut idle) = self.idle.lock() {
            match idle.get_mut(identity) {
                Some(slots) => slots.members.push((member, now)),
                None => {
                    idle.insert(identity.clone(), Idle { key, members: vec![(member, now)] });
                }
            }
        }
    }

    fn release(&self, key: LeaseKey, member: String) {
        if let Ok(mut live) = self.live.lock()
            && let Some(set) = live.get_mut(&*key)
        {
            set.remove(&member);
            if set.is_empty() {
                live.remove(&*key);
            }
        }
        let _ = self.release.send((key, member));
    }
}

/// A concurrency slot in Redis; dropping it releases the slot, or (quota batching) parks it idle
/// for the caller's next request.
#[derive(Debug)]
pub struct RedisLease {
    book: LeaseBookHandle,
    identity: IdentityKey,
    key: LeaseKey,
    member: String,
    /// Quota batching: park the slot idle when it ends while this replica holds at most this many
    /// of the caller's slots; 0: release it.
    pool_cap: u64,
}

/// What a decision asks of the store beyond the request itself (quota batching; all zero without).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ask {
    /// The request's rate unit comes from this replica's reservation: leave the windows alone.
    pub skip_windows: bool,
    /// The request's slot comes from this replica's pool: leave the concurrency cap alone.
    pub skip_slot: bool,
    /// Further units to reserve, and further slots to lease, beyond the request's.
    pub units: u64,
    pub slots: u64,
    /// Unspent units of the caller's ended reservation, and the Redis time it was taken.
    pub back: Option<(u64, u64)>,
    /// Park the request's slot idle when it ends (while this replica holds at most this many of the
    /// caller's slots) instead of releasing it; 0: release it.
    pub pool: u64,
}

/// What the store granted beyond the decision.
#[derive(Debug, Default)]
pub struct Granted {
    /// Units reserved in every window (beyond the admitted request).
    pub units: u64,
    /// Slots leased beyond the request's (parked idle in the pool).
    pub slots: u64,
}

/// The part of the lease book a lease needs (keeps `RedisLease: Debug` without exposing internals).
pub struct LeaseBookHandle(Arc<LeaseBook>);

impl std::fmt::Debug for LeaseBookHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseBook")
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        let (key, member) = (Arc::clone(&self.key), std::mem::take(&mut self.member));
        if self.pool_cap > 0 {
            self.book.0.park(&self.identity, key, member, self.pool_cap);
        } else {
            self.book.0.release(key, member);
        }
    }
}

impl RedisStore {
    /// Creates the store and its background tasks. Never waits for Redis: a missing Redis is a
    /// degraded mode, not a crash loop.
    pub fn start(target: &RedisTarget) -> Result<RedisStore, StoreError> {
        RedisStore::start_with_offset(target, Arc::new(AtomicI64::new(0)))
    }

    /// As [`RedisStore::start`], with the offset (ms) the scripts add to Redis `TIME`: always 0 in
    /// production; tests share a [`super::Clock::Shifted`] clock's offset to move time virtually.
    pub fn start_with_offset(target: &RedisTarget, time_offset_ms: Arc<AtomicI64>) -> Result<RedisStore, StoreError> {
        let conn: Arc<ArcSwapOption<Conn>> = Arc::new(ArcSwapOption::empty());
        if target.cluster_nodes.is_empty() {
            // Nagle off: calls are small and pipelined on one socket; one must not wait for the ACK
            // of the one before it.
            let info = redis::IntoConnectionInfo::into_connection_info(target.url.as_str())?
                .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
            let client = match &target.ca_pem {
                Some(pem) => redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) },
                )?,
                None => redis::Client::open(info)?,
            };
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(target.timeout.max(Duration::from_millis(200))))
                .set_response_timeout(Some(target.timeout.max(Duration::from_millis(100))))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(client, config)?;
            conn.store(Some(Arc::new(Conn::Single(manager))));
        } else {
            let mut builder = redis::cluster::ClusterClient::builder(target.cluster_nodes.clone());
            if let Some(pem) = &target.ca_pem {
                builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) });
            }
            let client = builder
                .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
                .connection_timeout(target.timeout.max(Duration::from_millis(200)))
                .response_timeout(target.timeout.max(Duration::from_millis(100)))
                .retries(1)
                .build()?;
            let slot = Arc::clone(&conn);
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(100);
                loop {
                    match client.get_async_connection().await {
                        Ok(c) => {
                            slot.store(Some(Arc::new(Conn::Cluster(c))));
                            tracing::info!("connected to the redis cluster");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "redis cluster not reachable yet; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            });
        }

        let (release, releases) = mpsc::unbounded_channel();
        let leases = Arc::new(LeaseBook {
            live: Mutex::new(Map::default()),
            idle: Mutex::new(Map::default()),
            release,
            time_offset_ms: Arc::clone(&time_offset_ms),
        });
        let lease_ttl_ms = target.lease_ttl.as_millis().max(1000) as u64;
        tokio::spawn(release_task(Arc::clone(&conn), releases));
        tokio::spawn(renew_task(Arc::clone(&conn), Arc::downgrade(&leases), lease_ttl_ms, Arc::clone(&time_offset_ms)));

        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        Ok(RedisStore {
            conn,
            script: redis::Script::new(SCRIPT),
            give_back_script: redis::Script::new(RETURN),
            key_prefix: target.key_prefix.clone(),
            lease_ttl_ms,
            leases,
            time_offset_ms,
            member_seq: AtomicU64::new(0),
            instance: h.finish(),
            cluster: !target.cluster_nodes.is_empty(),
        })
    }

    /// Connected to a Redis Cluster (rather than one Redis).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Moves the store's notion of time (tests only; production never calls it).
    pub fn set_time_offset_ms(&self, ms: i64) {
        self.time_offset_ms.store(ms, Ordering::Relaxed);
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        self.conn.load_full().map(|c| (*c).clone()).ok_or(StoreError::NotConnected)
    }

    /// `{prefix}:{<identity>}:<window>`
    pub fn key(&self, identity: &IdentityKey, window: &str) -> String {
        let mut key = self.key_base(identity);
        key.push_str(window);
        key
    }

    /// `{prefix}:{<identity>}:`, to which each window's name is appended (the identity is
    /// formatted once per decision, not once per key).
    fn key_base(&self, identity: &IdentityKey) -> String {
        use std::fmt::Write as _;
        let mut key = String::with_capacity(self.key_prefix.len() + 48);
        key.push_str(&self.key_prefix);
        let _ = write!(key, ":{{{identity}}}:");
        key
    }

    /// One decision: consume (`take`) or only look (`peek`). The lease, if any, is attached.
    /// `ask` adds quota batching's reservation to the same round trip.
    pub async fn decide(
        &self,
        identity: &IdentityKey,
        plan: &Plan,
        take: bool,
        ask: Ask,
    ) -> Result<(Decision, Granted), StoreError> {
        let mut conn = self.conn()?;
        let windows: &[super::WindowSpec] = if ask.skip_windows { &[] } else { &plan.windows };
        let cap = plan.concurrency.filter(|_| !ask.skip_slot);
        let mut inv = evalsha(&self.script, windows.len() + usize::from(cap.is_some()), 11 + 2 * windows.len());
        let mut key = self.key_base(identity);
        let base = key.len();
        for w in windows {
            key.truncate(base);
            key.push_str(&w.name);
            inv.arg(key.as_str());
        }
        let lease_key: Option<LeaseKey> = cap.map(|_| {
            key.truncate(base);
            key.push_str(crate::limit::CONCURRENT);
            LeaseKey::from(key)
        });
        if let Some(k) = &lease_key {
            inv.arg(&**k);
        }
        let member = format!("{:016x}-{}", self.instance, self.member_seq.fetch_add(1, Ordering::Relaxed));
        let alg = algorithm_code(plan.algorithm);
        let (back_units, back_anchor) = ask.back.unwrap_or((0, 0));
        inv.arg(if take { "take" } else { "peek" })
            .arg(alg)
            .arg(windows.len())
            .arg(self.time_offset_ms.load(Ordering::Relaxed))
            .arg(cap.map_or(-1, |c| c as i64))
            .arg(self.lease_ttl_ms)
            .arg(member.as_str())
            .arg(ask.units)
            .arg(ask.slots)
            .arg(back_units)
            .arg(back_anchor);
        for w in windows {
            inv.arg(w.limit).arg(w.window_ms);
        }
        let reply = conn
            .eval::<redis::Value>(&self.script, &inv)
            .await
            .map_err(StoreError::from)
            .and_then(|r| integers(r).filter(|r| r.len() == 6 + 3 * windows.len()).ok_or(StoreError::BadReply));
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                // The script may have run before the failure: never leave a slot we do not hold.
                if let (true, Some(k)) = (take, &lease_key) {
                    let _ = self.leases.release.send((k.clone(), member.clone()));
                    for j in 1..=ask.slots {
                        let _ = self.leases.release.send((k.clone(), format!("{member}.{j}")));
                    }
                }
                return Err(e);
            }
        };
        let now = reply[1].max(0) as u64;
        let mut tally = Tally::new(now);
        for (i, spec) in windows.iter().enumerate() {
            let r = &reply[4 + 3 * i..7 + 3 * i];
            let (remaining, reset_ms, retry_at_ms) = (r[0].max(0) as u64, r[1].max(0) as u64, r[2].max(0) as u64);
            let allowed = retry_at_ms == 0;
            let check = Check { allowed, remaining, reset_ms, retry_at_ms };
            tally.add(i, spec, check);
            if !take {
                tally.keep(check);
            }
        }
        let in_flight = reply[3].max(0) as u64;
        let mut decision = tally.finish(cap.map(|cap| (cap, in_flight)));
        decision.in_flight = in_flight;
        let granted = Granted {
            units: reply[4 + 3 * windows.len()].max(0) as u64,
            slots: reply[5 + 3 * windows.len()].max(0) as u64,
        };
        if take
            && decision.allowed
            && let Some(key) = lease_key
        {
            if let Ok(mut live) = self.leases.live.lock() {
                let set = live.entry(Arc::clone(&key)).or_default();
                set.insert(member.clone());
                for j in 1..=granted.slots {
                    set.insert(format!("{member}.{j}"));
                }
            }
            for j in 1..=granted.slots {
                self.leases.park(identity, key.clone(), format!("{member}.{j}"), ask.pool.max(1));
            }
            decision.lease = Some(super::Lease::Redis(RedisLease {
                book: LeaseBookHandle(Arc::clone(&self.leases)),
                identity: identity.clone(),
                key,
                member,
                pool_cap: ask.pool,
            }));
        }
        Ok((decision, granted))
    }

    /// An idle slot of `identity` from this replica's pool (quota batching), with no store call;
    /// `cap`: most slots of the caller the pool keeps.
    pub fn pooled_slot(&self, identity: &IdentityKey, cap: u64) -> Option<super::Lease> {
        let (key, member) = {
            let mut idle = self.leases.idle.lock().ok()?;
            let slots = idle.get_mut(identity)?;
            (Arc::clone(&slots.key), slots.members.pop()?.0)
        };
        Some(super::Lease::Redis(RedisLease {
            book: LeaseBookHandle(Arc::clone(&self.leases)),
            identity: identity.clone(),
            key,
            member,
            pool_cap: cap,
        }))
    }

    /// Releases pooled slots idle for `ttl_ms` or more (all of them with `all`: drain). Returns how many.
    pub fn release_idle(&self, ttl_ms: u64, all: bool) -> usize {
        let now = self.leases.now_ms();
        let mut freed = Vec::new();
        if let Ok(mut idle) = self.leases.idle.lock() {
            idle.retain(|_, slots| {
                slots.members.retain(|(member, since)| {
                    let keep = !all && now.saturating_sub(*since) < ttl_ms;
                    if !keep {
                        freed.push((Arc::clone(&slots.key), member.clone()));
                    }
                    keep
                });
                !slots.members.is_empty()
            });
        }
        let n = freed.len();
        for (key, member) in freed {
            self.leases.release(key, member);
        }
        n
    }

    /// Slots this replica holds for `identity` (in flight and parked).
    pub fn held_slots(&self, identity: &IdentityKey) -> u64 {
        let key = self.key(identity, crate::limit::CONCURRENT);
        self.leases.live.lock().map_or(0, |live| live.get(key.as_str()).map_or(0, |s| s.len() as u64))
    }

    /// Gives unspent reserved units back to their windows: one call for everything on one Redis,
    /// one per caller (its own hash tag, so its own slot) on Redis Cluster. Returns the calls made.
    pub async fn give_back(&self, batch: &[super::batch::GiveBack]) -> Result<u64, StoreError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn()?;
        // A few hundred keys per call keeps one script from holding Redis for long.
        let per_call = match &conn {
            Conn::Single(_) => 128,
            Conn::Cluster(_) => 1,
        };
        let groups = batch.chunks(per_call);
        let counter = metrics::counter!(crate::metrics::STORAGE_CALLS, "op" => "return");
        let mut calls = 0;
        for group in groups {
            let mut inv = self.give_back_script.prepare_invoke();
            inv.arg(self.time_offset_ms.load(Ordering::Relaxed));
            for g in group {
                let alg = algorithm_code(g.algorithm);
                for w in &g.windows {
                    inv.key(self.key(&g.key, &w.name));
                    inv.arg(alg).arg(g.units).arg(g.anchor_ms).arg(w.limit).arg(w.window_ms);
                }
            }
            calls += 1;
            counter.increment(1);
            let _: i64 = conn.invoke(&inv).await?;
        }
        Ok(calls)
    }

    /// `GET user_tier:{user}`: the tier override, if one is stored.
    pub async fn tier_override(&self, user: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn()?;
        Ok(conn.query(redis::cmd("GET").arg(format!("user_tier:{user}"))).await?)
    }

    /// Deletes the identity's counters in every window of `plan` (one `DEL`: the keys share a hash
    /// tag, so this works on Redis Cluster); the lease set is left alone (slots in use stay).
    pub async fn reset(&self, identity: &IdentityKey, plan: &Plan) -> Result<(), StoreError> {
        if plan.windows.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        // A script with KEYS is routed by their (shared) slot on Redis Cluster.
        let script = redis::Script::new("return redis.call('DEL', unpack(KEYS))");
        let mut inv = script.prepare_invoke();
        for w in &plan.windows {
            inv.key(self.key(identity, &w.name));
        }
        let _: i64 = conn.invoke(&inv).await?;
        Ok(())
    }
}

/// The scripts' number for an algorithm.
fn algorithm_code(algorithm: Algorithm) -> u8 {
    match algorithm {
        Algorithm::SlidingLog => 1,
        Algorithm::Gcra => 2,
        Algorithm::FixedWindow => 3,
    }
}

/// ZREMs of one batch in flight at once. The connection pipelines concurrent calls on its socket,
/// so releases for many callers (one key each) drain at the socket's pace, not one round trip after
/// another: sent one by one they fell behind a few thousand distinct callers a second, and the
/// queue of releases (and the slots they hold) grew with the number of callers.
const RELEASES_IN_FLIGHT: usize = 64;
/// Keys a drained batch map keeps room for; a burst's larger table is given back.
const BATCH_KEEP: usize = 1_024;

/// Removes released leases, batching whatever has queued up: one ZREM per key.
async fn release_task(conn: Arc<ArcSwapOption<Conn>>, mut releases: mpsc::UnboundedReceiver<(LeaseKey, String)>) {
    use futures_util::StreamExt;
    let calls = metrics::counter!(crate::metrics::STORAGE_CALLS, "op" => "release");
    let mut batch: Map<LeaseKey, Vec<String>> = Map::default();
    while let Some((key, member)) = releases.recv().await {
        batch.entry(key).or_default().push(member);
        while let Ok((key, member)) = releases.try_recv() {
            batch.entry(key).or_default().push(member);
        }
        let Some(c) = conn.load_full() else {
            batch.clear(); // not connected: the leases expire on their own
            continue;
        };
        let zrems = batch.drain().map(|(key, members)| {
            let (mut c, calls) = ((*c).clone(), calls.clone());
            async move {
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(&*key).arg(&members);
                calls.increment(1);
                let released = tokio::time::timeout(Duration::from_secs(1), c.query::<i64>(&cmd)).await;
                if !matches!(released, Ok(Ok(_))) {
                    tracing::debug!(key = &*key, "lease release failed; it will expire by its TTL");
                }
            }
        });
        futures_util::stream::iter(zrems).buffer_unordered(RELEASES_IN_FLIGHT).for_each(|()| async {}).await;
        batch.shrink_to(BATCH_KEEP);
    }
}

/// Every `lease_ttl / 3`, pushes the expiry of every lease still in flight on this replica.
async fn renew_task(
    conn: Arc<ArcSwapOption<Conn>>,
    book: std::sync::Weak<LeaseBook>,
    ttl_ms: u64,
    offset: Arc<AtomicI64>,
) {
    let script = redis::Script::new(RENEW);
    let calls = metrics::counter!(crate::metrics::STORAGE_CALLS, "op" => "renew");
    let mut tick = tokio::time::interval(Duration::from_millis((ttl_ms / 3).max(100)));
    loop {
        tick.tick().await;
        let Some(book) = book.upgrade() else { break };
        let live: Vec<(LeaseKey, Vec<String>)> = match book.live.lock() {
            Ok(live) => live.iter().map(|(k, v)| (k.clone(), v.iter().cloned().collect())).collect(),
            Err(_) => continue,
        };
        drop(book);
        let Some(c) = conn.load_full() else { continue };
        let mut c = (*c).clone();
        for (key, members) in live {
            let mut inv = script.key(&*key);
            inv.arg(offset.load(Ordering::Relaxed)).arg(ttl_ms).arg(&members);
            calls.increment(1);
            if !matches!(tokio::time::timeout(Duration::from_secs(1), c.invoke::<i64>(&inv)).await, Ok(Ok(_))) {
                tracing::debug!(key = &*key, "lease renewal failed");
            }
        }
    }
}
