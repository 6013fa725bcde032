//! The access log, on the real binary (it writes to the process's stdout): which responses each
//! `log.access` mode logs, the fields of a line, that no token reaches either stream, and that a
//! stdout nobody reads never blocks a request (lines are dropped and counted instead).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

struct Running {
    child: Child,
    base: String,
    admin: String,
}

/// `tiergate run` with `log.access = mode` in front of an echo upstream; stdout piped.
async fn run(mode: &str) -> Running {
    let upstream = echo().await;
    let (port, admin) = (free_port(), free_port());
    let config = format!("{SERVER}{IDENTITY}{TIERS}\n[log]\naccess = \"{mode}\"\n")
        .replace(
            "127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0",
            &format!("127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}"),
        )
        .replace("http://127.0.0.1:1", &format!("http://{upstream}"));
    let dir = scratch(&format!("access-{mode}"));
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let child = Child(
        Command::new(env!("CARGO_BIN_EXE_tiergate"))
            .args(["run", "--config"])
            .arg(&path)
            .env(SECRET_ENV, SECRET)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (base, admin) = (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{admin}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Ok(resp)) = tokio::time::timeout(
            Duration::from_secs(1),
            client().request(request("GET", &format!("{admin}/readyz"), &[], "")),
        )
        .await
            && resp.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "tiergate did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Running { child, base, admin }
}

/// Stops the process and returns everything it wrote: (stdout lines, stderr text).
fn finish(mut r: Running) -> (Vec<String>, String) {
    let _ = r.child.0.kill();
    let _ = r.child.0.wait();
    let mut out = String::new();
    r.child.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    r.child.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (out.lines().map(str::to_string).collect(), err)
}

/// One of each: admitted, refused by a window, a bad token, a bad path, exempt; then two heads hyper
/// refuses itself.
async fn traffic(base: &str, t: &str) {
    let auth = format!("Bearer {t}");
    let ok = get(&format!("{base}/api/ok?secret=shh"), &[("authorization", &auth), ("x-request-id", "req-ok")]).await;
    assert_eq!(ok.status, 200);
    for _ in 0..2 {
        get(&format!("{base}/api/ok"), &[("authorization", &auth)]).await;
    }
    let limited = get(&format!("{base}/api/ok"), &[("authorization", &auth), ("x-request-id", "req-429")]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(get(&format!("{base}/x"), &[("authorization", "Bearer forged.token.value")]).await.status, 401);
    assert_eq!(get(&format!("{base}/../x"), &[]).await.status, 400);
    assert_eq!(get(&format!("{base}/health"), &[]).await.status, 200);
    // Refused by hyper before tiergate sees a request: a head over max_header_bytes, a bad header
    // line. Last: their lines are written when the connection ends, which on another worker thread
    // can come after a later request's line.
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let big = format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let (resp, _) = raw(addr, big.as_bytes(), Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let (resp, _) = raw(addr, b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

fn parse(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect()
}

fn ts_ok(ts: &str) -> bool {
    // 2026-12-01T19:40:54.123Z
    ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.'
}

#[tokio::test]
async fn each_mode_logs_what_it_says_with_the_contract_fields() {
    let t = token("logged", "free");
    let mut by_mode = Vec::new();
    for mode in ["none", "refused", "all"] {
        let r = run(mode).await;
        traffic(&r.base, &t).await;
        // Let the writer task flush.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (lines, stderr) = finish(r);
        assert!(!lines.iter().chain(std::iter::once(&stderr)).any(|l| l.contains(&t)), "{mode}: a token was written");
        assert!(!stderr.contains("forged.token.value") && !lines.iter().any(|l| l.contains("forged.token.value")));
        assert!(!lines.iter().any(|l| l.contains("secret=shh")), "{mode}: a query string was written");
        by_mode.push((mode, parse(&lines)));
    }
    // The two refused by hyper come last, in either order (see `traffic`).
    let statuses = |lines: &[Value]| {
        let mut s = lines.iter().map(|l| l["status"].as_u64().unwrap()).collect::<Vec<_>>();
        let n = s.len();
        if n >= 2 {
            s[n - 2..].sort_unstable();
        }
        s
    };
    assert!(by_mode[0].1.is_empty(), "none: {:?}", by_mode[0].1);
    assert_eq!(statuses(&by_mode[1].1), [429, 401, 400, 400, 431], "refused: only tiergate's own responses");
    assert_eq!(statuses(&by_mode[2].1), [200, 200, 200, 429, 401, 400, 200, 400, 431], "all: every response");

    let all = &by_mode[2].1;
    for line in all {
        assert!(ts_ok(line["ts"].as_str().unwrap()), "{line}");
        assert!(line["request_id"].as_str().is_some_and(|s| !s.is_empty()), "{line}");
        assert!(line["duration_ms"].is_number() && line["bytes_sent"].is_number(), "{line}");
    }
    let ok = &all[0];
    assert_eq!(ok["request_id"], "req-ok", "a client's X-Request-Id is the request id");
    assert_eq!((ok["method"].as_str(), ok["path"].as_str()), (Some("GET"), Some("/api/ok")));
    assert_eq!((ok["class"].as_str(), ok["tier"].as_str()), (Some("api"), Some("free")));
    assert_eq!((ok["key"].as_str(), ok["decision"].as_str()), (Some("user:logged"), Some("allowed")));
    assert!(ok["upstream_ms"].is_number(), "forwarded: {ok}");
    assert!(ok["bytes_sent"].as_u64().unwrap() > 50, "the echo body: {ok}");
    assert!(ok.get("window").is_none());
    let limited = &all[3];
    assert_eq!(limited["request_id"], "req-429");
    assert_eq!((limited["decision"].as_str(), limited["window"].as_str()), (Some("limited"), Some("minute")));
    assert!(limited.get("upstream_ms").is_none(), "not forwarded: {limited}");
    let body_len = limited["bytes_sent"].as_u64().unwrap();
    assert!(body_len > 100, "the problem+json body: {limited}");
    let unauthorized = &all[4];
    assert_eq!(unauthorized["decision"], "unauthorized");
    assert_eq!(unauthorized["key"], "ip:127.0.0.1", "a 401 names the client's address");
    let bad = &all[5];
    assert_eq!((bad["decision"].as_str(), bad["path"].as_str()), (Some("bad_request"), Some("/../x")));
    for codec in &all[7..9] {
        // Its head was never parsed: no method or path to name; the client's address is the key.
        assert_eq!((codec["method"].as_str(), codec["path"].as_str()), (Some("-"), Some("-")), "{codec}");
        assert_eq!(
            (codec["decision"].as_str(), codec["tier"].as_str()),
            (Some("bad_request"), Some("none")),
            "{codec}"
        );
        assert_eq!(
            (codec["class"].as_str(), codec["key"].as_str()),
            (Some("general"), Some("ip:127.0.0.1")),
            "{codec}"
        );
        assert!(codec["bytes_sent"].as_u64().unwrap() > 50, "tiergate's problem+json answer: {codec}");
    }
    let exempt = &all[6];
    assert_eq!(exempt["decision"], "exempt");
    assert!(exempt.get("key").is_none(), "exempt routes have no key: {exempt}");
    // The refused lines are the same lines in both modes.
    assert_eq!(by_mode[1].1[0]["request_id"], "req-429");
}

#[tokio::test]
async fn a_stdout_nobody_reads_never_blocks_a_request() {
    let r = run("refused").await;
    // Nobody reads stdout: the pipe fills, then the queue, then lines are dropped.
    let c = client();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (c, base) = (c.clone(), r.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for i in 0..250 {
                let at = Instant::now();
                let reply =
                    send(&c, request("GET", &format!("{base}/x"), &[("authorization", "Bearer bad")], "")).await;
                assert_eq!(reply.status, 401, "worker {worker} request {i}");
                slowest = slowest.max(at.elapsed());
            }
            slowest
        }));
    }
    let mut slowest = Duration::ZERO;
    for t in tasks {
        slowest = slowest.max(t.await.unwrap());
    }
    assert!(started.elapsed() < Duration::from_secs(60), "2,000 refusals took {:?}", started.elapsed());
    assert!(slowest < Duration::from_secs(2), "a request waited {slowest:?} on the log");
    let scrape = get(&format!("{}/metrics", r.admin), &[]).await.body;
    let dropped = metric(&scrape, "tiergate_access_log_dropped_total", &[]);
    assert!(dropped > 0.0, "lines past the full pipe and queue are dropped and counted: {dropped}");
    // The process still serves and drains.
    assert_eq!(get(&format!("{}/health", r.base), &[]).await.status, 200);
    let mut child = r.child;
    let pid = child.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "drain with a blocked stdout exits 0: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "a blocked stdout held up the drain");
        std::thread::sleep(Duration::from_millis(50));
    }
    // What did reach stdout is whole JSON lines.
    let mut out = String::new();
    child.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let first = BufReader::new(out.as_bytes()).lines().next().unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Value>(&first).unwrap()["status"], 401);
}
