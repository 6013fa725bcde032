//! A lab of hosts on one machine, for the multi-host fault tests (`tests/netns.rs`): each host is a
//! Linux network namespace with one veth whose other end sits in a bridge in the root namespace.
//! The test process stays in the root namespace, owns the bridge's address (`.1`), and reaches every
//! host directly over it; hosts reach each other over the same bridge (one /24, no routing).
//!
//! What this file owns: creating and removing the namespaces, veths and bridge; starting processes
//! inside a host (`ip netns exec`), with their output in log files; iptables inside a host; and the
//! delaying TCP relay (no netem in this kernel, so latency is made in user space).
//!
//! Cleanup: [`Lab`]'s `Drop` kills every process it started, then deletes the namespaces and the
//! bridge, whether the test passed or panicked (on a panic it first prints the tail of every log).
//! Names carry the pid and a sequence number (`tgn<pid>-<n>` + a role letter, at most 15 bytes, the
//! limit for an interface name); a lab left behind by a process that no longer exists (killed with
//! SIGKILL) is removed by the next lab. `TIERGATE_NETNS_KEEP=1` keeps a passing lab's configs and
//! logs too (a failing one's are always kept, until the next lab of a later run removes them).
//! The /24 is picked in 10.213.0.0/16 where no route but the default one covers or falls inside it.
//! Addresses are the lab's own test hosts and loopback, nothing else.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::support::{Child, scratch};

/// Every name this lab creates starts with this (namespaces, veths, the bridge).
const PREFIX: &str = "tgn";

/// Whether `setpriv --pdeathsig` is there (util-linux ≥ 2.33).
static PDEATHSIG: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| run("setpriv", &["--help"]).is_ok_and(|help| help.contains("--pdeathsig")));

/// `program` by its path: found on `PATH`, or in /usr/sbin or /sbin (where `ip` and `iptables` live,
/// which a root shell's `PATH` does not always name).
pub fn which(program: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map_or_else(|| program.to_string(), |p| p.to_string_lossy().into_owned())
}

/// Runs a command; its stdout, or a message with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(which(program)).args(args).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!("`{program} {}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(format!("`{program}`: {e}")),
    }
}

/// As [`run`], panicking on failure (a lab step that must work once the lab exists).
pub fn must(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// One host: a namespace and its address on the lab's bridge.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl Host {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// `iptables -w ARGS` inside this host (its own tables: nothing outside the namespace changes).
    pub fn iptables(&self, args: &[&str]) {
        let iptables = which("iptables");
        let mut all = vec!["netns", "exec", &self.ns, &iptables, "-w"];
        all.extend_from_slice(args);
        must("ip", &all);
    }
}

pub struct Lab {
    tag: String,
    net: u8,
    bridge: bool,
    namespaces: Vec<String>,
    /// Started processes by name, killed before the namespaces go.
    children: Vec<(String, Child)>,
    logs: Vec<(String, PathBuf)>,
    pub dir: PathBuf,
}

/// Why the lab cannot exist here (the tests then pass with a message saying so).
pub struct Unavailable(pub String);

fn uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next()?.parse().ok())
}

/// Removes what labs of processes that no longer exist left behind (a SIGKILLed test run).
fn sweep_stale() {
    let owner_gone = |name: &str| {
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else { return false };
        pid.parse::<u32>().is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    };
    for line in run("ip", &["netns", "list"]).unwrap_or_default().lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(PREFIX) && owner_gone(name) {
            // Processes that lab started and that outlived it (no setpriv): only those in its namespace.
            for pid in run("ip", &["netns", "pids", name]).unwrap_or_default().split_whitespace() {
                let _ = run("kill", &["-KILL", pid]);
            }
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    // Their scratch directories (logs kept after a failure).
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("tiergate-test-") else { continue };
        let (pid, tail) = rest.split_once('-').unwrap_or((rest, ""));
        if tail.starts_with("netns-") && owner_gone(&format!("{PREFIX}{pid}-")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    for line in run("ip", &["-o", "link", "show"]).unwrap_or_default().lines() {
        // "12: tgn123-1a@if11: <...>"
        let name = line.split(':').nth(1).unwrap_or("").trim().split('@').next().unwrap_or("");
        if name.starts_with(PREFIX) && owner_gone(name) {
            let _ = run("ip", &["link", "del", name]);
        }
    }
}

impl Lab {
    /// A new lab with its bridge up, or why there can be none here (not root, no `ip`, no netns).
    pub fn new(name: &str) -> Result<Lab, Unavailable> {
        if uid() != Some(0) {
            return Err(Unavailable("needs root (network namespaces, veths, iptables)".into()));
        }
        run("ip", &["-V"]).map_err(|e| Unavailable(format!("no `ip` command (Debian package iproute2): {e}")))?;
        sweep_stale();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 100;
        let tag = format!("{PREFIX}{}-{seq}", std::process::id());
        // A /24 no route uses yet (another run's lab, or anything of the host's): none covering it
        // but the default route, and none inside it.
        let free = |n: u8| {
            let net = format!("10.213.{n}.0/24");
            let covering = run("ip", &["-4", "route", "show", "match", &net]).unwrap_or_else(|e| e);
            let inside = run("ip", &["-4", "route", "show", "root", &net]).unwrap_or_else(|e| e);
            covering.lines().all(|l| l.starts_with("default")) && inside.trim().is_empty()
        };
        let start = (std::process::id() as usize * 7 + seq as usize) % 250;
        let net = (0..250)
            .map(|i| ((start + i) % 250 + 1) as u8)
            .find(|n| free(*n))
            .ok_or_else(|| Unavailable("no free /24 in 10.213.0.0/16".into()))?;
        let mut lab = Lab {
            tag: tag.clone(),
            net,
            bridge: false,
            namespaces: Vec::new(),
            children: Vec::new(),
            logs: Vec::new(),
            dir: scratch(&format!("netns-{name}")),
        };
        // The first step that needs the kernel's support: failing here means "unavailable", not a bug.
        run("ip", &["link", "add", &tag, "type", "bridge"])
            .map_err(|e| Unavailable(format!("cannot create a bridge: {e}")))?;
        lab.bridge = true;
        run("ip", &["netns", "add", &format!("{tag}z")])
            .and_then(|_| run("ip", &["netns", "del", &format!("{tag}z")]))
            .map_err(|e| Unavailable(format!("network namespaces unavailable: {e}")))?;
        must("ip", &["addr", "add", &format!("10.213.{net}.1/24"), "dev", &tag]);
        must("ip", &["link", "set", &tag, "up"]);
        Ok(lab)
    }

    /// The root namespace's address on the bridge (where the test process and its relays listen).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.net, 1)
    }

    /// A new host `role` (one letter) at `10.213.<net>.<n>`: a namespace with `lo` and `eth0` up.
    pub fn host(&mut self, role: char, n: u8) -> Host {
        let ns = format!("{}{role}", self.tag);
        let peer = format!("{ns}p");
        assert!(peer.len() <= 15, "interface name {peer} is too long");
        self.namespaces.push(ns.clone());
        must("ip", &["netns", "add", &ns]);
        must("ip", &["link", "add", &ns, "type", "veth", "peer", "name", &peer]);
        must("ip", &["link", "set", &peer, "netns", &ns]);
        must("ip", &["link", "set", &ns, "master", &self.tag]);
        must("ip", &["link", "set", &ns, "up"]);
        must("ip", &["-n", &ns, "link", "set", &peer, "name", "eth0"]);
        let ip = Ipv4Addr::new(10, 213, self.net, n);
        must("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        Host { ns, ip }
    }

    /// Starts `program args` inside `host` as `name`, stdout and stderr in `<dir>/<name>.log`.
    pub fn spawn(&mut self, host: &Host, name: &str, program: &str, args: &[&str], env: &[(&str, &str)]) {
        let log = self.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(which("ip"));
        cmd.args(["netns", "exec", &host.ns]);
        // util-linux's setpriv: the process gets SIGKILL if the test process dies first (even SIGKILLed).
        if *PDEATHSIG {
            cmd.args(["setpriv", "--pdeathsig", "KILL", "--"]);
        }
        cmd.arg(program).args(args).stdin(Stdio::null());
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // `ip netns exec` and setpriv exec the program itself: the pid is the program's, so a kill
        // reaches it (and its parent is this thread, whose death is what the death signal follows).
        let child = cmd.spawn().unwrap_or_else(|e| panic!("ip netns exec {program}: {e}"));
        self.children.push((name.to_string(), Child(child)));
        self.logs.push((name.to_string(), log));
    }

    /// Kills the process started as `name` (SIGKILL) and waits for it.
    pub fn kill(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            drop(self.children.remove(i));
        }
    }

    /// `redis-server` on `host:port` (no persistence), extra arguments appended; waits for PING.
    pub fn redis(&mut self, host: &Host, port: u16, extra: &[&str]) {
        let dir = self.dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (ip, p, d) = (host.ip.to_string(), port.to_string(), dir.to_string_lossy().into_owned());
        // Protected mode would refuse every other host; the lab is reachable only from this machine.
        let mut args = vec![
            "--bind",
            &ip,
            "--port",
            &p,
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &d,
        ];
        args.extend_from_slice(extra);
        self.spawn(host, &format!("redis-{port}"), "redis-server", &args, &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cli(host.addr(port), &["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server on {ip}:{port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `redis-cli -h IP -p PORT args…` from the root namespace, output as text (empty on failure).
pub fn redis_cli(at: SocketAddr, args: &[&str]) -> String {
    let (h, p) = (at.ip().to_string(), at.port().to_string());
    let mut all = vec!["-h", &h, "-p", &p];
    all.extend_from_slice(args);
    run("redis-cli", &all).unwrap_or_default()
}

impl Drop for Lab {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        self.children.clear(); // kill-on-drop, each waited for
        if failed {
            for (name, log) in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let _ = writeln!(std::io::stderr(), "--- last lines of {name} ({}):", log.display());
                for line in tail.iter().rev() {
                    let _ = writeln!(std::io::stderr(), "    {line}");
                }
            }
        }
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
            let _ = run("ip", &["link", "del", ns]); // only if it never moved into its namespace
        }
        if self.bridge {
            let _ = run("ip", &["link", "del", &self.tag]);
        }
        if failed || std::env::var_os("TIERGATE_NETNS_KEEP").is_some() {
            let _ = writeln!(std::io::stderr(), "netns: the lab's configs and logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A TCP relay that holds every chunk for `delay` in each direction before passing it on: a pure
/// propagation delay (chunks are not queued behind each other's wait, and nothing limits bandwidth).
/// Plain threads and blocking sockets, so the wait is `thread::sleep`'s (tens of µs late), not a
/// timer wheel's (whole milliseconds). The delay can change while connections are open.
pub struct Relay {
    pub addr: SocketAddr,
    delay_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Every socket it holds, shut down when the relay is dropped.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    /// (µs held, chunks) since the last [`Relay::held`].
    hold: Arc<(AtomicU64, AtomicU64)>,
}

impl Relay {
    pub fn start(listen: SocketAddr, target: SocketAddr) -> Relay {
        let listener = TcpListener::bind(listen).unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            delay_us: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            sockets: Arc::new(Mutex::new(Vec::new())),
            hold: Arc::new((AtomicU64::new(0), AtomicU64::new(0))),
        };
        let (delay, stop, sockets, hold) =
            (relay.delay_us.clone(), relay.stop.clone(), relay.sockets.clone(), relay.hold.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else { continue };
                client.set_nonblocking(false).unwrap();
                for s in [&client, &server] {
                    s.set_nodelay(true).unwrap();
                    sockets.lock().unwrap().push(s.try_clone().unwrap());
                }
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), delay.clone(), hold.clone());
                pump(server, client, delay.clone(), hold.clone());
            }
        });
        relay
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The mean time a chunk was held since the last call, and how many chunks there were.
    pub fn held(&self) -> (Duration, u64) {
        let (us, n) = (self.hold.0.swap(0, Ordering::Relaxed), self.hold.1.swap(0, Ordering::Relaxed));
        (Duration::from_micros(us.checked_div(n).unwrap_or(0)), n)
    }
}

/// Copies `from` → `to`, each chunk written `delay` after it was read; counts how long each was held.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Arc<AtomicU64>, hold: Arc<(AtomicU64, AtomicU64)>) {
    let (tx, rx) = mpsc::channel::<(Instant, Duration, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let wait = Duration::from_micros(delay.load(Ordering::Relaxed));
                    if tx.send((Instant::now(), wait, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((read_at, wait, chunk)) = rx.recv() {
            let left = (read_at + wait).saturating_duration_since(Instant::now());
            if !left.is_zero() {
                std::thread::sleep(left);
            }
            hold.0.fetch_add(read_at.elapsed().as_micros() as u64, Ordering::Relaxed);
            hold.1.fetch_add(1, Ordering::Relaxed);
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}
