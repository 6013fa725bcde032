//! Real `redis-server` processes on free ports (and a 3-master Redis Cluster), killed by pid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn scratch_dir(tag: &str) -> PathBuf {
    super::scratch(&format!("redis-{tag}"))
}

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
    /// Speaks only TLS (the test certificates from tests/fixtures).
    tls: bool,
    /// Writes every command to an append-only file, so a restart keeps the data.
    persistent: bool,
    child: Option<Child>,
}

use super::{fixture, free_port};

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port(), scratch_dir("single"), false)
    }

    fn start_on(port: u16, dir: PathBuf, cluster: bool) -> RedisServer {
        let mut server = RedisServer { port, dir, cluster, tls: false, persistent: false, child: None };
        server.spawn();
        server
    }

    /// A Redis that accepts only TLS, with a certificate for `localhost` from the test CA.
    pub fn start_tls() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: scratch_dir("tls"),
            cluster: false,
            tls: true,
            persistent: false,
            child: None,
        };
        server.spawn();
        server
    }

    /// A Redis that keeps its data across [`RedisServer::restart`] (append-only file, fsync always).
    pub fn start_persistent() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: scratch_dir("aof"),
            cluster: false,
            tls: false,
            persistent: true,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"])
                .args(["--tls-cert-file", &fixture("tls_server1.pem"), "--tls-key-file", &fixture("tls_server1.key")])
                .args(["--tls-ca-cert-file", &fixture("tls_ca.pem")]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        let aof = if self.persistent {
            ["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            ["--appendonly", "no", "--appendfsync", "everysec"]
        };
        cmd.args(["--bind", "127.0.0.1", "--save", ""])
            .args(aof)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        self.child = Some(cmd.spawn().expect("redis-server must be installed (scripts/test.sh installs it)"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server on {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli -p PORT args…`, output as text.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        if self.tls {
            cmd.args(["--tls", "--cacert", &fixture("tls_ca.pem"), "-h", "127.0.0.1"]);
        }
        let out = cmd.args(["-p", &self.port.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty, unless started persistent).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Calls to one command since the last `CONFIG RESETSTAT` (from `INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats.lines().find_map(|l| l.strip_prefix(&prefix)?.split(',').next()?.parse().ok()).unwrap_or(0)
    }

    /// Calls to one command that Redis answered (not refused, e.g. an EVALSHA refused with NOSCRIPT
    /// before redis-rs loads the script and calls again), since the last `CONFIG RESETSTAT`.
    pub fn answered(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:");
        let failed = stats
            .lines()
            .find_map(|l| {
                l.strip_prefix(&prefix)?.split(',').find_map(|f| f.strip_prefix("failed_calls="))?.parse().ok()
            })
            .unwrap_or(0);
        self.calls(command) - failed
    }

    /// Every key (SCAN, not KEYS).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern]).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> =
            (0..3).map(|i| RedisServer::start_on(free_port(), scratch_dir(&format!("cluster{i}")), true)).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in &nodes {
            while !n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }
}
