//! Shared test harness: a real echo upstream, tiergate on 127.0.0.1:0, real HTTP clients, real JWTs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tiergate::app::App;
use tiergate::config::Config;
use tiergate::limit::Clock;
use tiergate::snapshot::{Secrets, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod redis;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
pub const SECRET_ENV: &str = "TIERGATE_TEST_SECRET";
/// The admin token gates see when their config sets `admin_token_env = "TIERGATE_TEST_ADMIN_TOKEN"`.
pub const ADMIN_TOKEN_ENV: &str = "TIERGATE_TEST_ADMIN_TOKEN";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// Server settings every test config starts from (ports chosen by the OS).
pub const SERVER: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:1"
environment = "production"
upstream_timeout = "2s"
"#;

/// Identity settings for HS256 with the test secret.
pub const IDENTITY: &str = r#"
[identity]
jwt_algorithms = ["HS256"]
jwt_secret_env = "TIERGATE_TEST_SECRET"
"#;

/// Three tiers with small budgets and the contract's routes.
pub const TIERS: &str = r#"
[tiers.free]
requests_per_hour = 100
requests_per_day = 1000
concurrent_requests = 5
data_export_per_day = 2
file_upload_size_mb = 1
api_calls_per_minute = 3

[tiers.pro]
requests_per_hour = 1000
requests_per_day = 10000
concurrent_requests = 20
data_export_per_day = 50
file_upload_size_mb = 100
api_calls_per_minute = 5

[tiers.enterprise]
requests_per_hour = -1
requests_per_day = -1
concurrent_requests = -1
data_export_per_day = -1
file_upload_size_mb = -1
api_calls_per_minute = -1

[[routes]]
prefix = "/api/v1/export"
class = "data_export"

[[routes]]
prefix = "/api/"
class = "api"

[[routes]]
prefix = "/health"
class = "exempt"
"#;

/// A free TCP port on loopback (bound, read, released: for peers that cannot bind port 0 themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when the test ends, pass or fail.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh scratch directory for one test.
pub fn scratch(tag: &str) -> std::path::PathBuf {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tiergate-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Starts the echo upstream on a free port.
pub async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tiergate::demo::spawn_echo(listener);
    addr
}

/// A running tiergate in front of an echo upstream.
pub struct Gate {
    pub server: App,
    pub upstream: SocketAddr,
    pub base: String,
    pub admin: String,
    /// The limiter's clock: [`Gate::advance`] moves it (virtual time).
    pub clock: Clock,
    /// The Redis this gate counts in, for gates started [`Gate::on`] the Redis store.
    pub redis: Option<redis::RedisServer>,
}

/// Which store a behaviour test runs against: every limit behaviour runs on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Memory,
    Redis,
}

/// Runs each named `async fn name(store: Store)` as one test per store: `memory::name` and
/// `redis::name`. One body of tests, both stores.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::support::Store::Memory).await
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::support::Store::Redis).await
            })*
        }
    };
}

impl Gate {
    /// `config`: a whole config file; `upstream` is replaced by the echo server's address.
    pub async fn start(config: &str) -> Gate {
        let upstream = echo().await;
        Gate::start_with_upstream(config, &format!("http://{upstream}"), upstream).await
    }

    pub async fn start_with_upstream(config: &str, upstream_url: &str, upstream: SocketAddr) -> Gate {
        Gate::start_full(config, upstream_url, upstream, Clock::System, None, 0).await
    }

    /// SERVER + IDENTITY + TIERS + `extra`, on `store`, with a clock the test moves: a manual one
    /// for the memory store, a shifted one for Redis (the Lua script adds the same offset to Redis
    /// `TIME`). Redis gates get a fresh `redis-server` of their own.
    pub async fn on(store: Store, extra: &str) -> Gate {
        Gate::on_with(store, "", extra).await
    }

    /// As [`Gate::on`], with the admin token configured (`ADMIN_TOKEN`).
    pub async fn on_token(store: Store) -> Gate {
        Gate::on_full(store, &format!("admin_token_env = \"{ADMIN_TOKEN_ENV}\"\n"), "", "").await
    }

    /// As [`Gate::on`], with `storage_extra` lines in the `[storage]` section (e.g. the algorithm).
    pub async fn on_with(store: Store, storage_extra: &str, extra: &str) -> Gate {
        Gate::on_full(store, "", storage_extra, extra).await
    }

    /// As [`Gate::on_with`], with `server_extra` lines in the `[server]` section.
    pub async fn on_full(store: Store, server_extra: &str, storage_extra: &str, extra: &str) -> Gate {
        let upstream = echo().await;
        let url = format!("http://{upstream}");
        match store {
            Store::Memory => {
                let storage = format!("\n[storage]\n{storage_extra}\n");
                let config = format!("{SERVER}{server_extra}{IDENTITY}{storage}{TIERS}{extra}");
                let clock = Clock::manual(now() * 1000);
                Gate::start_full(&config, &url, upstream, clock, None, 0).await
            }
            Store::Redis => {
                let redis = redis::RedisServer::start();
                let storage = format!(
                    "\n[storage]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"500ms\"\nlease_ttl = \"2s\"\n{storage_extra}\n",
                    redis.url()
                );
                let config = format!("{SERVER}{server_extra}{IDENTITY}{storage}{TIERS}{extra}");
                Gate::start_full(&config, &url, upstream, Clock::shifted(), Some(redis), 0).await
            }
        }
    }

    /// `count` replicas counting in one store, sharing one shifted clock (so virtual time moves for
    /// all of them and for the Redis scripts alike). `storage`: the body of the `[storage]` section.
    pub async fn replicas(count: usize, storage: &str, extra: &str, clock: &Clock) -> Vec<Gate> {
        let mut gates = Vec::new();
        for _ in 0..count {
            let upstream = echo().await;
            let config = format!("{SERVER}{IDENTITY}\n[storage]\n{storage}\n{TIERS}{extra}");
            gates
                .push(Gate::start_full(&config, &format!("http://{upstream}"), upstream, clock.clone(), None, 0).await);
        }
        gates
    }

    /// As [`Gate::start_with_upstream`], thread per core: `extra` worker threads beside the test's own.
    pub async fn start_workers(config: &str, upstream_url: &str, upstream: SocketAddr, extra: usize) -> Gate {
        Gate::start_full(config, upstream_url, upstream, Clock::System, None, extra).await
    }

    async fn start_full(
        config: &str,
        upstream_url: &str,
        upstream: SocketAddr,
        clock: Clock,
        redis: Option<redis::RedisServer>,
        extra: usize,
    ) -> Gate {
        tiergate::app::install_process_globals();
        let mut config = Config::parse(config).unwrap_or_else(|e| panic!("test config: {e}"));
        config.server.upstream = upstream_url.parse().unwrap();
        let snapshot =
            Snapshot::compile(config, &Secrets::default().with(SECRET_ENV, SECRET).with(ADMIN_TOKEN_ENV, ADMIN_TOKEN))
                .unwrap_or_else(|e| panic!("compile: {e}"));
        // In-process gates log nothing: the access log is tested on the binary (tests/access_log.rs).
        let access = tiergate::access::AccessLog::disabled();
        let server = tiergate::app::start_workers(snapshot, clock.clone(), access, extra).await.unwrap();
        let base = format!("http://{}", server.addr);
        let admin = format!("http://{}", server.admin_addr);
        Gate { server, upstream, base, admin, clock, redis }
    }

    /// Moves the limiter's time forward (no real waiting).
    pub fn advance(&self, d: Duration) {
        self.clock.advance(d.as_millis() as u64);
    }

    /// The limiter's now, in Unix seconds.
    pub fn now(&self) -> u64 {
        self.clock.now_ms() / 1000
    }

    /// How much counter state the store holds: memory entries, or Redis window keys.
    pub fn store_entries(&self) -> usize {
        match &self.redis {
            Some(redis) => redis.keys("rate_limit:*").len(),
            None => self.server.proxy.limiter.local().len(),
        }
    }

    /// A gate whose config lives in `dir/config.toml` and is watched for changes. The upstream in
    /// `config` (`http://127.0.0.1:1`) is replaced by the echo server's address; returns the text used.
    pub async fn watching(dir: &std::path::Path, config: &str) -> (Gate, String) {
        let upstream = echo().await;
        let text = config.replace("http://127.0.0.1:1", &format!("http://{upstream}"));
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, &text).unwrap();
        let gate = Gate::start_with_upstream(&text, &format!("http://{upstream}"), upstream).await;
        gate.server.watch_config(path, Secrets::default().with(SECRET_ENV, SECRET), None);
        (gate, text)
    }

    /// The default test gate: SERVER + IDENTITY + TIERS + `extra`.
    pub async fn default_with(extra: &str) -> Gate {
        Gate::start(&format!("{SERVER}{IDENTITY}{TIERS}{extra}")).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn limiter_len(&self) -> usize {
        self.server.proxy.limiter.local().len()
    }
}

/// A signed HS256 token with the test secret.
pub fn token(sub: &str, tier: &str) -> String {
    tiergate::identity::mint_hs256(SECRET.as_bytes(), sub, tier, Duration::from_secs(3600), None, None).unwrap()
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Signs arbitrary claims with any algorithm and key.
pub fn sign(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    claims: &Value,
    kid: Option<&str>,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

pub fn hs(claims: &Value) -> String {
    sign(jsonwebtoken::Algorithm::HS256, &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()), claims, None)
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// For echo responses: the values of a header the upstream received.
    pub fn upstream_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build(HttpConnector::new())
}

pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body timed out")
        .expect("body failed")
        .to_bytes();
    Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(&client(), request("GET", url, headers, Bytes::new())).await
}

/// GET with a bearer token.
pub async fn get_as(url: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    get(url, &[("authorization", &auth)]).await
}

/// Writes raw bytes on a fresh connection and reads until the server closes it or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Reads one request head (up to the blank line) from a scripted upstream's socket, keeping what
/// follows it in `buf` for the next call. `None` when the peer closed or the read failed.
pub async fn read_head(s: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The value of one series in a Prometheus text scrape (sum over lines matching every fragment).
pub fn metric(scrape: &str, name: &str, fragments: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| fragments.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TLS acceptor serving the test certificate for localhost / 127.0.0.1 (signed by tls_ca.pem).
pub fn fixture_acceptor(alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    #[derive(Debug)]
    struct One(std::sync::Arc<rustls::sign::CertifiedKey>);
    impl rustls::server::ResolvesServerCert for One {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    tiergate::app::install_process_globals();
    let key = tiergate::tls::load_certified_key(
        std::path::Path::new(&fixture("tls_server1.pem")),
        std::path::Path::new(&fixture("tls_server1.key")),
    )
    .unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(std::sync::Arc::new(One(std::sync::Arc::new(key))));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}
