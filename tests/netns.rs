//! Multi-host faults, in Linux network namespaces: tiergate replicas, Redis and the upstream each on
//! a host of their own, and the network between them broken on purpose. Each test asserts what
//! tiergate must do and prints the figures docs/RELIABILITY.md records
//! (`cargo test --test netns -- --nocapture --test-threads=1`).
//!
//! The design. `tests/support/netns.rs` builds a lab: every host is a namespace whose `eth0` is a veth
//! into one bridge in the root namespace, all on one /24 (10.213.N.0/24; the bridge is `.1`). The test
//! process stays in the root namespace: it is the clients (HTTP to each replica, scrapes of each
//! replica's admin port), and for the latency fault also the router the Redis traffic goes through.
//! Hosts: `r` Redis (.2), `a` and `b` two tiergate replicas (`tiergate run`, the real binary, one
//! worker each; .11, .12), `u` the upstream (`tiergate echo`; .20). Inside its own namespace every
//! process can use a fixed port. Faults:
//! - latency: the replicas reach Redis through a relay in the root namespace that holds every chunk
//!   1 ms in each direction (so each round trip to Redis gains 2 ms; no netem in this kernel);
//! - loss: iptables on `r` drops 5 % of the packets into Redis and 5 % of those out of it;
//! - partition: iptables on `a` drops everything to and from Redis; `b` still reaches it;
//! - failover: `r` runs a Redis Cluster of 3 masters + 3 replicas (ports 7001–7006,
//!   `cluster-node-timeout` 1000 ms); one master is killed (SIGKILL) under traffic and its replica is
//!   promoted; the fault "heals" when the promoted node says `ROLE` master and the cluster is ok.
//!
//! Traffic: six client tasks, each one request every 15 ms, alternating between the replicas (about
//! 400 requests/s in all). Two of three requests come from "bulk" users (a limit of 1,000,000 per
//! hour: every one is a Redis round trip, and they give the latency figures); one of three from a
//! "fifty" user (exactly 50 per hour), three fresh users per phase, so each phase pushes users past
//! their limit under its own conditions, plus three "carried" fifty users filled to 40 before the
//! traffic starts who send again from the fault on: Redis's count of them has to survive the fault
//! (the failover test picks them on the master it kills). `on_error = "local"` with `local_share_divisor = 2`: a
//! decision made without Redis carries half the limit in `X-RateLimit-Limit`, which is how a test
//! tells, per response, whether Redis decided it. The figures per fault:
//! - requests that failed because of tiergate: anything but 200 or 429 (on_error = local configures
//!   no 5xx), or no response at all;
//! - admissions beyond the limit while Redis decided: 200s that Redis decided, per fifty user,
//!   summed over both replicas, above 50 (asserted 0); admissions made locally while degraded are
//!   reported apart (each replica's share is bounded by 25);
//! - time added per request: median and p99 of the bulk users' requests during the fault against the
//!   phase before it, in the same test;
//! - recovery: from the heal to the end of the last response a replica decided without Redis (and
//!   the `tiergate_storage_fallback` gauge, scraped every 50 ms, is 0 at the end).
//!
//! Without root or network namespaces, each test says SKIPPED on stderr and passes; iptables missing
//! as root is a failure naming the package (`scripts/test.sh` installs it). The tests share a lock so
//! only one lab runs at a time, and every wait has a deadline.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a test that cannot set up panics with a message: that is its failure report; the figures are printed"
)]

mod support;
#[path = "support/netns.rs"]
mod lab;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use lab::{Host, Lab, Relay, redis_cli};
use support::{SECRET, SECRET_ENV, client, metric, request, token};

/// One lab at a time (CPU, and clearer figures).
static ONE_LAB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FIFTY: u64 = 50;
const BULK: u64 = 1_000_000;
/// `storage.local_share_divisor`: what a degraded replica's limits are divided by.
const SHARE: u64 = 2;

/// The lab, or `None` after saying on stderr (past the test harness's capture) why there is none.
fn lab_or_skip(test: &str) -> Option<Lab> {
    match Lab::new(test) {
        Ok(lab) => Some(lab),
        Err(lab::Unavailable(why)) => {
            let _ = writeln!(std::io::stderr(), "netns: SKIPPED {test}: {why}");
            None
        }
    }
}

fn need_iptables() {
    assert!(
        lab::run("iptables", &["--version"]).is_ok(),
        "iptables is missing: install the Debian package iptables (scripts/test.sh does)"
    );
}

/// A tiergate replica's config: Redis per `storage` (the `url` or `cluster_nodes` line).
fn config(me: &Host, upstream: &Host, storage: &str) -> String {
    format!(
        r#"
[server]
listen = "{me}:8080"
admin_listen = "{me}:9901"
upstream = "http://{up}:8000"
upstream_timeout = "2s"

[identity]
jwt_algorithms = ["HS256"]
jwt_secret_env = "{SECRET_ENV}"
default_tier = "bulk"
anonymous_tier = "bulk"

[storage]
backend = "redis"
{storage}
timeout = "50ms"
on_error = "local"
local_share_divisor = {SHARE}

[tiers.bulk]
requests_per_hour = {BULK}

[tiers.fifty]
[[tiers.fifty.limits]]
name = "fifty"
requests = {FIFTY}
window = "1h"

[log]
access = "none"
"#,
        me = me.ip,
        up = upstream.ip,
    )
}

/// A running replica, as the clients see it.
#[derive(Clone)]
struct Replica {
    name: &'static str,
    host: Host,
    base: String,
    admin: String,
}

/// The common hosts: the upstream, and two replicas configured with `storage`.
async fn replicas(lab: &mut Lab, storage: &str) -> Vec<Replica> {
    let u = lab.host('u', 20);
    let up = u.addr(8000).to_string();
    lab.spawn(&u, "echo", env!("CARGO_BIN_EXE_tiergate"), &["--workers", "1", "echo", "--listen", &up], &[]);
    let mut out = Vec::new();
    for (name, role, n) in [("a", 'a', 11), ("b", 'b', 12)] {
        let host = lab.host(role, n);
        let path = lab.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config(&host, &u, storage)).unwrap();
        let path = path.to_string_lossy().into_owned();
        let args = ["--workers", "1", "run", "--config", &path];
        lab.spawn(
            &host,
            &format!("tiergate-{name}"),
            env!("CARGO_BIN_EXE_tiergate"),
            &args,
            &[(SECRET_ENV, SECRET), ("RUST_LOG", "warn")],
        );
        out.push(Replica {
            name,
            host: host.clone(),
            base: format!("http://{}", host.addr(8080)),
            admin: format!("http://{}", host.addr(9901)),
        });
    }
    for r in &out {
        let deadline = Instant::now() + Duration::from_secs(20);
        while fetch(&format!("{}/readyz", r.admin), None).await.map(|(s, _)| s) != Ok(200) {
            assert!(Instant::now() < deadline, "replica {} did not become ready", r.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// Until every replica has decided a request on Redis (the first connection is made lazily).
async fn warm_up(replicas: &[Replica]) {
    let t = format!("Bearer {}", token("warm-up", "bulk"));
    for r in replicas {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = fetch(&format!("{}/x", r.base), Some(&t)).await;
            if matches!(&got, Ok((200, Some(limit))) if *limit == BULK.to_string()) {
                break;
            }
            assert!(Instant::now() < deadline, "replica {} never decided on Redis: {got:?}", r.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// GET, read whole: (status, `X-RateLimit-Limit`), or why there was no response.
async fn fetch(url: &str, auth: Option<&str>) -> Result<(u16, Option<String>), String> {
    fetch_with(&client(), url, auth).await
}

async fn fetch_with(
    client: &support::TestClient,
    url: &str,
    auth: Option<&str>,
) -> Result<(u16, Option<String>), String> {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    let req = request("GET", url, &headers, Bytes::new());
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "no response within 5 s".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let limit = resp.headers().get("x-ratelimit-limit").and_then(|v| v.to_str().ok()).map(str::to_string);
    tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .map_err(|_| "body not complete within 5 s".to_string())?
        .map_err(|e| format!("body: {e}"))?;
    Ok((status, limit))
}

/// A caller: name, token, and the limit Redis applies to it.
struct User {
    name: String,
    auth: String,
    limit: u64,
}

impl User {
    fn new(name: String, tier: &str, limit: u64) -> Arc<User> {
        let auth = format!("Bearer {}", token(&name, tier));
        Arc::new(User { name, auth, limit })
    }
}

/// Who sends what: bulk users throughout; three fresh fifty users per phase; and fifty users whose
/// windows are filled to [`CARRIED`] before the traffic starts and who send again from the fault
/// on, so Redis's count of them must survive the fault (they may get exactly 10 more from Redis).
struct Users {
    bulk: Vec<Arc<User>>,
    fifty: Vec<Vec<Arc<User>>>,
    carry: Vec<Arc<User>>,
}

/// How many of a carried user's 50 are admitted before the fault.
const CARRIED: u64 = 40;

impl Users {
    /// `carry`: the carried users' names (the failover test picks them on the master it kills).
    fn new(test: &str, phases: usize, carry: Vec<String>) -> Arc<Users> {
        let fifty = (0..phases)
            .map(|p| (0..3).map(|i| User::new(format!("{test}-fifty-{p}-{i}"), "fifty", FIFTY)).collect())
            .collect();
        let carry = carry.into_iter().map(|name| User::new(name, "fifty", FIFTY)).collect();
        Arc::new(Users {
            bulk: bulk_names(test).into_iter().map(|n| User::new(n, "bulk", BULK)).collect(),
            fifty,
            carry,
        })
    }

    fn carry_names(test: &str) -> Vec<String> {
        (0..3).map(|i| format!("{test}-carry-{i}")).collect()
    }

    fn all(&self) -> impl Iterator<Item = &Arc<User>> {
        self.bulk.iter().chain(self.fifty.iter().flatten()).chain(&self.carry)
    }

    /// The fifty user for request `n` in `phase`: that phase's own, and the carried ones after phase 0.
    fn fifty_for(&self, phase: usize, n: usize) -> &Arc<User> {
        let own = &self.fifty[phase.min(self.fifty.len() - 1)];
        let all = own.len() + if phase > 0 { self.carry.len() } else { 0 };
        let k = n % all;
        if k < own.len() { &own[k] } else { &self.carry[k - own.len()] }
    }
}

fn bulk_names(test: &str) -> Vec<String> {
    (0..6).map(|i| format!("{test}-bulk-{i}")).collect()
}

/// Who decided a response, read from `X-RateLimit-Limit` (a degraded replica's limits are halved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decided {
    Redis,
    Local,
    /// No rate-limit headers (a failure).
    Unknown,
}

#[derive(Clone)]
struct Sample {
    /// Request start and end, since the traffic began.
    at: Duration,
    end: Duration,
    replica: usize,
    user: Arc<User>,
    /// 0: no response.
    status: u16,
    decided: Decided,
    error: Option<String>,
}

impl Sample {
    fn latency(&self) -> Duration {
        self.end - self.at
    }
    fn failed(&self) -> bool {
        !matches!(self.status, 200 | 429)
    }
}

/// Clients and scrapers running in the background; phases are marked as the test goes.
struct Traffic {
    t0: Instant,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    /// (when, replica, `tiergate_storage_fallback`; -1 when the scrape failed).
    gauges: Arc<Mutex<Vec<(Duration, usize, f64)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    marks: Vec<Duration>,
}

const WORKERS: usize = 6;
const PACE: Duration = Duration::from_millis(15);

impl Traffic {
    /// Fills the carried users' windows to [`CARRIED`] (alternating replicas, each decided by
    /// Redis), then starts the clients and scrapers.
    async fn start(replicas: &[Replica], users: &Arc<Users>) -> Traffic {
        let t = Traffic {
            t0: Instant::now(),
            phase: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            samples: Arc::new(Mutex::new(Vec::new())),
            gauges: Arc::new(Mutex::new(Vec::new())),
            tasks: Vec::new(),
            marks: vec![Duration::ZERO],
        };
        let seeder = client();
        for user in &users.carry {
            for n in 0..CARRIED as usize {
                let replica = n % replicas.len();
                let at = t.t0.elapsed();
                let got = fetch_with(&seeder, &format!("{}/x", replicas[replica].base), Some(&user.auth)).await;
                let fifty = FIFTY.to_string();
                assert!(matches!(&got, Ok((200, Some(l))) if *l == fifty), "filling {}: {got:?}", user.name);
                let (end, user) = (t.t0.elapsed(), user.clone());
                let s = Sample { at, end, replica, user, status: 200, decided: Decided::Redis, error: None };
                t.samples.lock().unwrap().push(s);
            }
        }
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let (replicas, users) = (replicas.to_vec(), users.clone());
            let (t0, phase, stop, samples) = (t.t0, t.phase.clone(), t.stop.clone(), t.samples.clone());
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut next = tokio::time::Instant::now() + PACE * w as u32 / WORKERS as u32;
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep_until(next).await;
                    next = (next + PACE).max(tokio::time::Instant::now());
                    let replica = (i / 3) % replicas.len();
                    let user = if i % 3 == 0 {
                        users.fifty_for(phase.load(Ordering::Relaxed), i / 3 / replicas.len()).clone()
                    } else {
                        users.bulk[(i * 5 + w) % users.bulk.len()].clone()
                    };
                    i += 1;
                    let at = t0.elapsed();
                    let got = fetch_with(&client, &format!("{}/x", replicas[replica].base), Some(&user.auth)).await;
                    let end = t0.elapsed();
                    let (status, decided, error) = match got {
                        Ok((status, limit)) => {
                            let decided = match limit.and_then(|l| l.parse::<u64>().ok()) {
                                Some(l) if l == user.limit => Decided::Redis,
                                Some(l) if l == user.limit.div_ceil(SHARE) => Decided::Local,
                                _ => Decided::Unknown,
                            };
                            (status, decided, None)
                        }
                        Err(e) => (0, Decided::Unknown, Some(e)),
                    };
                    samples.lock().unwrap().push(Sample { at, end, replica, user, status, decided, error });
                }
            }));
        }
        for (n, r) in replicas.iter().enumerate() {
            let (admin, t0, stop, gauges) = (r.admin.clone(), t.t0, t.stop.clone(), t.gauges.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let at = t0.elapsed();
                    let value = match fetch_scrape(&format!("{admin}/metrics")).await {
                        Some(scrape) => metric(&scrape, "tiergate_storage_fallback", &[]),
                        None => -1.0,
                    };
                    gauges.lock().unwrap().push((at, n, value));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
        Traffic { tasks, ..t }
    }

    /// Starts the next phase now; returns its start.
    fn mark(&mut self) -> Duration {
        let at = self.t0.elapsed();
        self.marks.push(at);
        self.phase.fetch_add(1, Ordering::Relaxed);
        at
    }

    async fn finish(self) -> Run {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        let mut marks = self.marks;
        marks.push(self.t0.elapsed());
        let samples = std::mem::take(&mut *self.samples.lock().unwrap());
        let gauges = std::mem::take(&mut *self.gauges.lock().unwrap());
        Run { samples, gauges, marks }
    }
}

async fn fetch_scrape(url: &str) -> Option<String> {
    let req = request("GET", url, &[], Bytes::new());
    let resp = tokio::time::timeout(Duration::from_secs(2), client().request(req)).await.ok()?.ok()?;
    let body = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect()).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// `tiergate_storage_errors_total` of each replica by kind, e.g. `a: timeout 12, connect 3`.
async fn storage_errors(replicas: &[Replica]) -> String {
    let mut out = Vec::new();
    for r in replicas {
        let scrape = fetch_scrape(&format!("{}/metrics", r.admin)).await.unwrap_or_default();
        let kinds: Vec<String> = scrape
            .lines()
            .filter(|l| l.starts_with("tiergate_storage_errors_total{"))
            .filter_map(|l| {
                let kind = l.split("kind=\"").nth(1)?.split('"').next()?;
                Some(format!("{kind} {}", l.rsplit(' ').next()?))
            })
            .collect();
        out.push(format!("{}: {}", r.name, if kinds.is_empty() { "none".into() } else { kinds.join(", ") }));
    }
    out.join("; ")
}

/// What the traffic saw. Phase `p` runs from `marks[p]` to `marks[p + 1]`.
struct Run {
    samples: Vec<Sample>,
    gauges: Vec<(Duration, usize, f64)>,
    marks: Vec<Duration>,
}

/// Median and p99 latency.
#[derive(Clone, Copy, Debug)]
struct Spread {
    median: Duration,
    p99: Duration,
    n: usize,
}

impl Spread {
    fn of(mut v: Vec<Duration>) -> Spread {
        assert!(!v.is_empty(), "no samples");
        v.sort();
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Spread { median: at(0.5), p99: at(0.99), n: v.len() }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn added(fault: Duration, base: Duration) -> String {
    let d = fault.as_secs_f64() - base.as_secs_f64();
    format!("{}{:.2} ms", if d >= 0.0 { "+" } else { "−" }, d.abs() * 1000.0)
}

impl Run {
    fn phase(&self, p: usize) -> impl Iterator<Item = &Sample> {
        let (from, to) = (self.marks[p], self.marks[p + 1]);
        self.samples.iter().filter(move |s| s.at >= from && s.at < to)
    }

    fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.failed()).collect()
    }

    /// Bulk requests' latency in phase `p` (every one is a Redis round trip, or a fallback).
    fn latency(&self, p: usize, keep: impl Fn(&Sample) -> bool) -> Spread {
        Spread::of(self.phase(p).filter(|s| s.user.limit == BULK && keep(s)).map(Sample::latency).collect())
    }

    /// Share of `replica`'s responses in phase `p` that Redis decided (of those `keep` selects).
    fn on_redis(&self, p: usize, keep: impl Fn(&Sample) -> bool) -> f64 {
        let v: Vec<&Sample> = self.phase(p).filter(|s| keep(s)).collect();
        v.iter().filter(|s| s.decided == Decided::Redis).count() as f64 / v.len().max(1) as f64
    }

    /// Per fifty user: (admitted by Redis, admitted locally), over every replica.
    fn admissions(&self) -> BTreeMap<String, (u64, u64)> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.user.limit == FIFTY && s.status == 200) {
            let e = out.entry(s.user.name.clone()).or_insert((0, 0));
            match s.decided {
                Decided::Redis => e.0 += 1,
                _ => e.1 += 1,
            }
        }
        out
    }

    /// Admissions Redis decided beyond the limit, summed over the fifty users.
    fn over_limit(&self) -> u64 {
        self.admissions().values().map(|(redis, _)| redis.saturating_sub(FIFTY)).sum()
    }

    /// Per fifty user and replica, the most admitted locally (bounded by the replica's share).
    fn most_local_per_replica(&self) -> u64 {
        let mut n: BTreeMap<(String, usize), u64> = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.user.limit == FIFTY && s.status == 200 && s.decided == Decided::Local)
        {
            *n.entry((s.user.name.clone(), s.replica)).or_default() += 1;
        }
        n.values().copied().max().unwrap_or(0)
    }

    /// From `since` to the end of the last response `replica` decided without Redis (zero if none).
    fn back_on_redis(&self, replica: usize, since: Duration, keep: impl Fn(&Sample) -> bool) -> Duration {
        self.samples
            .iter()
            .filter(|s| s.replica == replica && s.at >= since && s.decided != Decided::Redis && keep(s))
            .map(|s| s.end.saturating_sub(since))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// From `since` to the first response `replica` decided without Redis (`None` if none).
    fn first_local(&self, replica: usize, since: Duration) -> Option<Duration> {
        self.samples
            .iter()
            .filter(|s| s.replica == replica && s.at >= since && s.decided == Decided::Local)
            .map(|s| s.end.saturating_sub(since))
            .min()
    }

    /// The last fallback-gauge reading of `replica`.
    fn last_gauge(&self, replica: usize) -> f64 {
        self.gauges.iter().rev().find(|(_, r, _)| *r == replica).map_or(-1.0, |(_, _, v)| *v)
    }

    /// Time with the fallback gauge at 1 on `replica` in phase `p` (scrapes every 50 ms).
    fn degraded_for(&self, replica: usize, p: usize) -> Duration {
        let (from, to) = (self.marks[p], self.marks[p + 1]);
        let n = self.gauges.iter().filter(|(at, r, v)| *r == replica && *at >= from && *at < to && *v >= 1.0).count();
        Duration::from_millis(50 * n as u64)
    }

    /// The common invariants, with a readable list of what went wrong.
    fn assert_no_failures_and_no_over_admission(&self, fault: &str) {
        let failures = self.failures();
        let shown: Vec<String> = failures
            .iter()
            .take(5)
            .map(|s| format!("{} at {:?} on {}: {} {:?}", s.user.name, s.at, s.replica, s.status, s.error))
            .collect();
        assert!(failures.is_empty(), "{fault}: {} requests failed because of tiergate: {shown:?}", failures.len());
        let over: Vec<_> = self.admissions().into_iter().filter(|(_, (redis, _))| *redis > FIFTY).collect();
        assert!(over.is_empty(), "{fault}: Redis admitted more than {FIFTY}: {over:?}");
        let local = self.most_local_per_replica();
        assert!(
            local <= FIFTY.div_ceil(SHARE),
            "{fault}: one replica admitted {local} locally (share {})",
            FIFTY / SHARE
        );
    }

    fn summary(&self) -> String {
        let adm = self.admissions();
        let most = adm.values().map(|(r, _)| *r).max().unwrap_or(0);
        let local: u64 = adm.values().map(|(_, l)| *l).sum();
        let carried: Vec<String> =
            adm.iter().filter(|(name, _)| name.contains("-carry-")).map(|(_, (r, _))| r.to_string()).collect();
        format!(
            "{} requests, {} failed because of tiergate; admissions beyond the limit decided by Redis: {} (most per \
             fifty user: {most}/{FIFTY}; carried users, {CARRIED} before the fault: {} by Redis); {local} fifty-user \
             admissions made locally while degraded",
            self.samples.len(),
            self.failures().len(),
            self.over_limit(),
            carried.join(", "),
        )
    }
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

/// The before → fault latency line, on bulk requests.
fn latency_line(run: &Run, before: usize, fault: usize) -> (Spread, Spread, String) {
    let (b, f) = (run.latency(before, |_| true), run.latency(fault, |_| true));
    let line = format!(
        "bulk latency median {} → {} ({}), p99 {} → {} ({}) [{} / {} requests]",
        ms(b.median),
        ms(f.median),
        added(f.median, b.median),
        ms(b.p99),
        ms(f.p99),
        added(f.p99, b.p99),
        b.n,
        f.n
    );
    (b, f, line)
}

const BEFORE: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(4);
/// CONTRACT.md: back on Redis within 3 s of it answering again.
const RECOVERY: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ms_each_way_to_redis_adds_one_round_trip_and_changes_no_decision() {
    let _one = ONE_LAB.lock().await;
    let Some(mut lab) = lab_or_skip("latency") else { return };
    let r = lab.host('r', 2);
    lab.redis(&r, 6379, &[]);
    let relay = Relay::start(SocketAddr::from((lab.gateway(), 0)), r.addr(6379));
    let replicas = replicas(&mut lab, &format!("url = \"redis://{}/0\"", relay.addr)).await;
    warm_up(&replicas).await;
    let users = Users::new("latency", 3, Users::carry_names("latency"));

    let mut traffic = Traffic::start(&replicas, &users).await;
    sleep(BEFORE).await;
    let _ = relay.held();
    relay.set_delay(Duration::from_millis(1));
    traffic.mark();
    sleep(Duration::from_secs(3)).await;
    let (held, chunks) = relay.held();
    relay.set_delay(Duration::ZERO);
    traffic.mark();
    sleep(AFTER).await;
    let run = traffic.finish().await;
    let errors = storage_errors(&replicas).await;

    let (b, f, line) = latency_line(&run, 0, 1);
    println!(
        "netns fault 1 ms each way to Redis (relay held {chunks} chunks {} on average): {}; {line}; on Redis {:.1} % \
         / {:.1} % / {:.1} % (before / during / after); storage errors {errors}",
        ms(held),
        run.summary(),
        100.0 * run.on_redis(0, |_| true),
        100.0 * run.on_redis(1, |_| true),
        100.0 * run.on_redis(2, |_| true),
    );
    run.assert_no_failures_and_no_over_admission("latency");
    assert!(held >= Duration::from_micros(1_000) && held < Duration::from_micros(2_000), "the relay held {held:?}");
    for p in 0..3 {
        assert!(run.on_redis(p, |_| true) >= 0.95, "phase {p}: decisions left Redis with 1 ms of latency");
    }
    // One round trip per decision: 2 × the hold more, plus what a busy machine adds (+2.4 to +4.4 ms
    // measured with 1.1–1.2 ms holds while another engineer's tests took a core). A wait of
    // tiergate's own (a call waiting out its deadline, calls serialised behind each other) shows
    // beyond 8 × the hold; the number of trips per decision is tests/storage_calls.rs's to hold.
    // The lower bound is one hold, half a round trip's worth: on a busy machine the baseline's median
    // moves too (a clean-clone run measured +1.48 ms with 1.15 ms holds over a 4.08 ms baseline),
    // and without the relay in the path the difference is about zero.
    let more = f.median.saturating_sub(b.median);
    assert!(more >= held, "the delay did not reach the requests: +{more:?} with {held:?} each way");
    assert!(more < held * 8, "tiergate waited beyond the round trip: +{more:?} with {held:?} each way");
}

/// The `pkts` counter of the first rule in `chain` of `host`'s filter table.
fn dropped(host: &Host, chain: &str) -> u64 {
    let iptables = lab::which("iptables");
    let out = lab::must("ip", &["netns", "exec", &host.ns, &iptables, "-w", "-L", chain, "-v", "-x", "-n"]);
    out.lines().nth(2).and_then(|l| l.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_to_redis_fails_nothing_and_over_admits_nothing() {
    let _one = ONE_LAB.lock().await;
    let Some(mut lab) = lab_or_skip("loss") else { return };
    need_iptables();
    let r = lab.host('r', 2);
    lab.redis(&r, 6379, &[]);
    let replicas = replicas(&mut lab, &format!("url = \"redis://{}/0\"", r.addr(6379))).await;
    warm_up(&replicas).await;
    let users = Users::new("loss", 3, Users::carry_names("loss"));

    let mut traffic = Traffic::start(&replicas, &users).await;
    sleep(BEFORE).await;
    let loss = ["-m", "statistic", "--mode", "random", "--probability", "0.05", "-j", "DROP"];
    let rule_in = [&["INPUT", "-p", "tcp", "--dport", "6379"][..], &loss].concat();
    let rule_out = [&["OUTPUT", "-p", "tcp", "--sport", "6379"][..], &loss].concat();
    r.iptables(&[&["-A"][..], &rule_in].concat());
    r.iptables(&[&["-A"][..], &rule_out].concat());
    traffic.mark();
    sleep(Duration::from_secs(4)).await;
    let lost = (dropped(&r, "INPUT"), dropped(&r, "OUTPUT"));
    r.iptables(&[&["-D"][..], &rule_in].concat());
    r.iptables(&[&["-D"][..], &rule_out].concat());
    let healed = traffic.mark();
    sleep(AFTER).await;
    let run = traffic.finish().await;
    let errors = storage_errors(&replicas).await;

    let (_, f, line) = latency_line(&run, 0, 1);
    let back: Vec<Duration> = (0..2).map(|n| run.back_on_redis(n, healed, |_| true)).collect();
    let slowest = run.phase(1).map(Sample::latency).max().unwrap_or_default();
    println!(
        "netns fault 5 % loss each way on Redis's host ({} packets in, {} out dropped): {}; {line}; slowest {}; on \
         Redis {:.1} % / {:.1} % / {:.1} % (before / during / after), fallback gauge at 1 for about {:?} (a) and {:?} \
         (b) of the 4 s; back on Redis {:?} (a) and {:?} (b) after the loss ended; storage errors {errors}",
        lost.0,
        lost.1,
        run.summary(),
        ms(slowest),
        100.0 * run.on_redis(0, |_| true),
        100.0 * run.on_redis(1, |_| true),
        100.0 * run.on_redis(2, |_| true),
        run.degraded_for(0, 1),
        run.degraded_for(1, 1),
        back[0],
        back[1],
    );
    run.assert_no_failures_and_no_over_admission("loss");
    assert!(lost.0 + lost.1 > 0, "the loss rules dropped nothing");
    // A request waits at most the storage timeout (50 ms) for Redis, never a TCP retransmission.
    assert!(f.p99 < Duration::from_millis(150), "p99 {:?} under loss", f.p99);
    for (n, d) in back.iter().enumerate() {
        assert!(*d <= RECOVERY, "replica {n} back on Redis {d:?} after the loss ended");
        assert_eq!(run.last_gauge(n), 0.0, "replica {n} still on the fallback at the end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_redis_degrades_alone_and_comes_back() {
    let _one = ONE_LAB.lock().await;
    let Some(mut lab) = lab_or_skip("partition") else { return };
    need_iptables();
    let r = lab.host('r', 2);
    lab.redis(&r, 6379, &[]);
    let replicas = replicas(&mut lab, &format!("url = \"redis://{}/0\"", r.addr(6379))).await;
    warm_up(&replicas).await;
    let a = replicas[0].host.clone();
    let users = Users::new("partition", 3, Users::carry_names("partition"));

    let mut traffic = Traffic::start(&replicas, &users).await;
    sleep(BEFORE).await;
    let redis_ip = r.ip.to_string();
    a.iptables(&["-A", "OUTPUT", "-d", &redis_ip, "-j", "DROP"]);
    a.iptables(&["-A", "INPUT", "-s", &redis_ip, "-j", "DROP"]);
    let cut = traffic.mark();
    sleep(Duration::from_secs(4)).await;
    a.iptables(&["-D", "OUTPUT", "-d", &redis_ip, "-j", "DROP"]);
    a.iptables(&["-D", "INPUT", "-s", &redis_ip, "-j", "DROP"]);
    let healed = traffic.mark();
    sleep(AFTER).await;
    let run = traffic.finish().await;
    let errors = storage_errors(&replicas).await;

    let on = |n: usize| move |s: &Sample| s.replica == n;
    let detected = run.first_local(0, cut);
    let back = run.back_on_redis(0, healed, |_| true);
    let (ba, fa) = (run.latency(0, on(0)), run.latency(1, on(0)));
    let slowest = run.phase(1).filter(|s| s.replica == 0).map(Sample::latency).max().unwrap_or_default();
    let (bb, fb) = (run.latency(0, on(1)), run.latency(1, on(1)));
    println!(
        "netns fault partition between replica a and Redis (b still reaches it): {}; a fell back {:?} after the cut, \
         on Redis during the cut: a {:.1} %, b {:.1} %; bulk latency a median {} → {} ({}), p99 {} → {} ({}), slowest during the cut {}; b median \
         {} → {} ({}), p99 {} → {} ({}); a back on Redis {back:?} after the heal; storage errors {errors}",
        run.summary(),
        detected,
        100.0 * run.on_redis(1, on(0)),
        100.0 * run.on_redis(1, on(1)),
        ms(ba.median),
        ms(fa.median),
        added(fa.median, ba.median),
        ms(ba.p99),
        ms(fa.p99),
        added(fa.p99, ba.p99),
        ms(slowest),
        ms(bb.median),
        ms(fb.median),
        added(fb.median, bb.median),
        ms(bb.p99),
        ms(fb.p99),
        added(fb.p99, bb.p99),
    );
    run.assert_no_failures_and_no_over_admission("partition");
    assert!(detected.is_some_and(|d| d < Duration::from_secs(1)), "a never fell back (or late): {detected:?}");
    // A request on a waits at most the storage timeout (50 ms) for the Redis it cannot reach.
    assert!(slowest < Duration::from_millis(250), "a request on a took {slowest:?} during the cut");
    assert!(run.on_redis(1, on(1)) >= 0.95, "b left Redis though it still reached it");
    assert!(back <= RECOVERY, "a back on Redis {back:?} after the partition healed");
    for n in 0..2 {
        assert_eq!(run.last_gauge(n), 0.0, "replica {n} still on the fallback at the end");
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
struct Node {
    id: String,
    port: u16,
    master: bool,
    /// The master's id, for a replica.
    of: String,
    slots: Vec<(u16, u16)>,
}

/// The cluster's view from `at`.
fn cluster_nodes(at: SocketAddr) -> Vec<Node> {
    redis_cli(at, &["CLUSTER", "NODES"])
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            Some(Node {
                id: f[0].to_string(),
                port: f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?,
                master: f[2].contains("master"),
                of: f[3].to_string(),
                slots,
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_failover_mid_traffic_moves_decisions_to_the_promoted_replica() {
    let _one = ONE_LAB.lock().await;
    let Some(mut lab) = lab_or_skip("failover") else { return };
    let r = lab.host('r', 2);
    let ports: Vec<u16> = (7001..=7006).collect();
    for p in &ports {
        let cluster =
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000"];
        lab.redis(&r, *p, &cluster);
    }
    let addrs: Vec<String> = ports.iter().map(|p| r.addr(*p).to_string()).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addrs.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "1", "--cluster-yes"]);
    lab::must("redis-cli", &create);
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in &ports {
        let ready = || {
            let info = redis_cli(r.addr(*p), &["CLUSTER", "INFO"]);
            let repl = redis_cli(r.addr(*p), &["INFO", "replication"]);
            info.contains("cluster_state:ok")
                && (repl.contains("role:master") || repl.contains("master_link_status:up"))
        };
        while !ready() {
            assert!(Instant::now() < deadline, "cluster node {p} not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let nodes: Vec<String> = addrs.iter().map(|a| format!("\"redis://{a}\"")).collect();
    let replicas = replicas(&mut lab, &format!("cluster_nodes = [{}]", nodes.join(", "))).await;
    warm_up(&replicas).await;
    // The victim: the master holding the first bulk user's keys; its replica is the one promoted.
    // The carried users are picked on it, so their counts have to come through the failover.
    let slot = |name: &str| -> u16 {
        redis_cli(r.addr(ports[0]), &["CLUSTER", "KEYSLOT", &format!("rate_limit:{{user:{name}}}:hour")])
            .trim()
            .parse()
            .unwrap()
    };
    let view = cluster_nodes(r.addr(ports[0]));
    let owner = |s: u16| view.iter().find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&s))).unwrap();
    let victim = owner(slot(&bulk_names("failover")[0]));
    let heir = view.iter().find(|n| n.of == victim.id).expect("the victim has a replica").clone();
    let carry: Vec<String> =
        (0..).map(|i| format!("failover-carry-{i}")).filter(|n| owner(slot(n)).id == victim.id).take(3).collect();
    let users = Users::new("failover", 3, carry);
    let on_victim: Vec<String> =
        users.all().filter(|u| owner(slot(&u.name)).id == victim.id).map(|u| u.name.clone()).collect();
    let survivor = r.addr(ports.iter().copied().find(|p| *p != victim.port && *p != heir.port).unwrap());

    let mut traffic = Traffic::start(&replicas, &users).await;
    sleep(BEFORE).await;
    lab.kill(&format!("redis-{}", victim.port));
    let killed = traffic.mark();
    let t_kill = Instant::now();
    let deadline = t_kill + Duration::from_secs(15);
    loop {
        let promoted = redis_cli(r.addr(heir.port), &["ROLE"]).lines().next() == Some("master");
        if promoted && redis_cli(survivor, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
            break;
        }
        assert!(Instant::now() < deadline, "the replica was not promoted within 15 s");
        sleep(Duration::from_millis(20)).await;
    }
    let promoted_after = t_kill.elapsed();
    let promoted = traffic.mark();
    sleep(AFTER).await;
    let run = traffic.finish().await;
    let errors = storage_errors(&replicas).await;

    let on_shard = |s: &Sample| on_victim.contains(&s.user.name);
    let others = |s: &Sample| !on_victim.contains(&s.user.name);
    // The first second after the kill: before the cluster can mark the master failed (node timeout
    // 1 s), the other masters answer every call; a decision off Redis then is tiergate's own choice.
    let first_second = |s: &Sample| others(s) && s.at < killed + Duration::from_secs(1);
    let back: Vec<Duration> = (0..2).map(|n| run.back_on_redis(n, promoted, on_shard)).collect();
    let back_all: Vec<Duration> = (0..2).map(|n| run.back_on_redis(n, promoted, |_| true)).collect();
    let (_, _, line) = latency_line(&run, 0, 1);
    println!(
        "netns fault cluster master failover (master :{} SIGKILLed, replica :{} promoted {promoted_after:?} later; \
         {} of {} users on that shard): {}; {line}; on Redis while failing over: users on that shard {:.1} %, on \
         the other shards {:.1} % ({:.1} % in the first second after the kill); after the promotion, back on Redis for \
         that shard's users {:?} (a) / {:?} (b), for everyone {:?} / {:?}; storage errors {errors}",
        victim.port,
        heir.port,
        on_victim.len(),
        users.all().count(),
        run.summary(),
        100.0 * run.on_redis(1, on_shard),
        100.0 * run.on_redis(1, others),
        100.0 * run.on_redis(1, first_second),
        back[0],
        back[1],
        back_all[0],
        back_all[1],
    );
    run.assert_no_failures_and_no_over_admission("failover");
    for (n, back) in back_all.iter().enumerate() {
        assert!(*back <= RECOVERY, "replica {n} back on Redis {back:?} after the promotion");
        assert_eq!(run.last_gauge(n), 0.0, "replica {n} still on the fallback at the end");
    }
}
