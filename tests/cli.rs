//! The `tiergate` binary: `check`, `token`, `run` refusing a bad config before binding, and `demo`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn tiergate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tiergate"));
    c.env_remove("TIERGATE_CONFIG").env_remove("RUST_LOG");
    c
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tiergate-cli-{}-{name}", std::process::id()))
}

#[test]
fn check_accepts_the_repository_config_and_prints_the_table() {
    let out =
        tiergate().args(["check", "--config", "config.toml"]).env("JWT_SECRET_KEY", "x".repeat(32)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok"));
    for row in ["free", "pro", "enterprise", "unlimited", "/api/v1/export", "data_export"] {
        assert!(stdout.contains(row), "missing {row} in\n{stdout}");
    }
}

#[test]
fn check_lists_every_problem_with_its_key_and_exits_64() {
    let dir = scratch("bad");
    let path = write_config(
        &dir,
        r#"
[server]
listen = "not an address"
upstream_timeout = 30
[tiers.free]
requests_per_hour = "lots"
concurrent_requests = -5
[[routes]]
prefix = "/api/"
class = "rest"
[identity]
jwt_algorithms = ["none"]
default_tier = "gold"
"#,
    );
    let out = tiergate().args(["check", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for key in [
        "server.listen:",
        "server.upstream_timeout: expected a duration",
        "tiers.free.requests_per_hour: expected an integer",
        "tiers.free.concurrent_requests:",
        "routes[0].class:",
        "identity.jwt_algorithms[0]:",
        "identity.default_tier: tier \"gold\" is not defined",
    ] {
        assert!(stderr.contains(key), "missing {key:?} in\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_secret_is_a_config_problem_and_run_binds_nothing() {
    // The secret's variable is unset: check and run both exit 64, naming the key.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = scratch("nosecret");
    let text = std::fs::read_to_string("config.toml")
        .unwrap()
        .replace("0.0.0.0:8080", &format!("127.0.0.1:{port}"))
        .replace("JWT_SECRET_KEY", "TIERGATE_UNSET_SECRET_FOR_TEST");
    let path = write_config(&dir, &text);
    let out = tiergate().args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("identity.jwt_secret_env: environment variable TIERGATE_UNSET_SECRET_FOR_TEST")
    );
    let started = Instant::now();
    let out = tiergate().args(["--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing was bound: the port is still free.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn token_mints_what_the_proxy_accepts() {
    let out = tiergate()
        .args([
            "token",
            "--sub",
            "cli-user",
            "--tier",
            "pro",
            "--ttl",
            "10m",
            "--secret-env",
            SECRET_ENV,
            "--config",
            "config.toml",
        ])
        .env(SECRET_ENV, SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let gate = Gate::default_with("").await;
    let r = get_as(&gate.url("/api/x"), &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id"), vec!["cli-user"]);
    assert_eq!(r.upstream_header("x-user-tier"), vec!["pro"]);

    // Unknown tier and missing secret are clear errors.
    let out = tiergate()
        .args(["token", "--sub", "a", "--tier", "gold", "--config", "config.toml"])
        .env("JWT_SECRET_KEY", "s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gold"));
    let out = tiergate()
        .args(["token", "--sub", "a", "--tier", "free", "--config", "config.toml"])
        .env_remove("JWT_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET_KEY"));
}

/// Kills the child when the test ends, pass or fail.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn demo_prints_tokens_that_work() {
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port, admin) = (free_port(), free_port());
    let mut child = Child(
        tiergate()
            .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
            .env_remove("JWT_SECRET_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    // Lines arrive on a channel so the test can wait for the start-up text, then for a summary line.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = rx.recv().await {
            let done = line.contains("Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
    })
    .await
    .expect("demo did not start");
    let text = lines.join("\n");
    assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
    let token_of = |tier: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(&format!("export {tier}_TOKEN=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {tier} token in\n{text}"))
    };
    let base = format!("http://127.0.0.1:{port}");
    for (tier, name) in [("FREE", "free"), ("PRO", "pro"), ("ENTERPRISE", "enterprise")] {
        let r = get_as(&format!("{base}/api/v1/items"), &token_of(tier)).await;
        assert_eq!(r.status, 200, "{tier}");
        assert_eq!(r.upstream_header("x-user-tier"), vec![name]);
    }
    // The curl lines' promises: a 429 after the free tier's 20 api calls, a 401 for a bad token.
    let free = token_of("FREE");
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(get_as(&format!("{base}/api/v1/items"), &free).await.status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 19, "{statuses:?}");
    assert_eq!(*statuses.last().unwrap(), 429);
    assert_eq!(get_as(&format!("{base}/api/v1/items"), "not.a.token").await.status, 401);
    assert!(text.contains("curl"), "{text}");
    // While traffic flows, a one-line summary per tier appears every few seconds.
    let summary = tokio::time::timeout(Duration::from_secs(12), async {
        while let Some(line) = rx.recv().await {
            // Lines may show traffic still under way; wait for the final count.
            if line.contains("free: 26 requests, 20 allowed, 6 refused") {
                return line;
            }
        }
        String::new()
    })
    .await
    .expect("no summary line");
    assert!(summary.contains("none: 1 requests, 0 allowed, 1 refused"), "{summary}");

    // A taken port is named in the error.
    let out = tiergate()
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{port}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(child);
}
