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
fn check_says_the_storage_and_a_setting_that_does_nothing() {
    let out =
        tiergate().args(["check", "--config", "config.toml"]).env("JWT_SECRET_KEY", "x".repeat(32)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("storage: memory"), "{stdout}");
    assert!(!stdout.contains("note:"), "nothing to note in the repository's config: {stdout}");
    let dir = scratch("quota-batch-memory");
    let text =
        std::fs::read_to_string("config.toml").unwrap().replace("\n[storage]\n", "\n[storage]\nquota_batch = 20\n");
    assert!(text.contains("quota_batch = 20"), "config.toml has a [storage] section");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = tiergate().args(["check", "--config"]).arg(&path).env("JWT_SECRET_KEY", "x".repeat(32)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "valid, only ineffective: {stdout}");
    assert!(stdout.contains("note: storage.quota_batch = 20 has no effect on the memory store"), "{stdout}");
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

#[tokio::test]
async fn demo_prints_tokens_that_work() {
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

/// Runs the binary with `args` (and `env`), bounded; (exit code, stdout, stderr).
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = tiergate();
    cmd.args(args).env_remove("TIERGATE_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn limits_show_and_reset_wrap_the_admin_endpoints() {
    let gate = Gate::on_token(Store::Memory).await;
    let t = token("cli-user", "free");
    for _ in 0..4 {
        get_as(&gate.url("/api/x"), &t).await;
    }
    let admin = gate.admin.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_cli(&["limits", "show", "user:cli-user", "--admin", &admin], &[]))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("user:cli-user (tier free)"), "{out}");
    let minute = out.lines().find(|l| l.starts_with("minute")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(minute.split_whitespace().take(3).collect::<Vec<_>>(), ["minute", "3", "0"], "{out}");
    assert!(out.contains("concurrent"), "{out}");

    // Reset: without the token, with a wrong one, then with the right one.
    let admin = gate.admin.clone();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || run_cli(&["limits", "reset", "user:cli-user", "--admin", &admin], &[]))
            .await
            .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("TIERGATE_ADMIN_TOKEN") && err.lines().count() == 1, "{err}");
    let admin = gate.admin.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run_cli(&["limits", "reset", "user:cli-user", "--admin", &admin], &[("TIERGATE_ADMIN_TOKEN", "nope")])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("/limits/user:cli-user") && err.contains("401") && err.lines().count() == 1, "{err}");
    let admin = gate.admin.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(&["limits", "reset", "user:cli-user", "--admin", &admin], &[("TIERGATE_ADMIN_TOKEN", ADMIN_TOKEN)])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("cleared every window of user:cli-user"), "{out}");
    assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 200, "unblocked");

    // Nothing listening: one line naming the URL, no panic.
    let closed = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let (code, _, err) =
        tokio::task::spawn_blocking(move || run_cli(&["limits", "show", "user:x", "--admin", &closed], &[]))
            .await
            .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("127.0.0.1:") && err.contains("cannot connect") && !err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn top_once_prints_tiers_storage_and_who_is_refused() {
    let gate = Gate::on(Store::Memory, "").await;
    let t = token("noisy", "free");
    for _ in 0..6 {
        get_as(&gate.url("/api/x"), &t).await;
    }
    let admin = gate.admin.clone();
    let traffic = {
        let url = gate.url("/api/x");
        tokio::spawn(async move {
            for _ in 0..20 {
                get(&url, &[]).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_cli(&["top", "--once", "--admin", &admin], &[])).await.unwrap();
    traffic.await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("storage: answering"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("free") && l.contains("api")), "{out}");
    assert!(out.contains("user:noisy"), "the most refused identity: {out}");
    assert!(!out.contains('\u{1b}'), "no colour when stdout is not a terminal: {out:?}");
}

#[tokio::test]
async fn top_redraws_under_a_terminal_and_exits_on_sigint() {
    let gate = Gate::on(Store::Memory, "").await;
    let bin = env!("CARGO_BIN_EXE_tiergate");
    let command = format!("{bin} top --admin {}", gate.admin);
    // `script` gives it a pseudo-terminal; its output is what the terminal showed.
    let mut child = Child(
        Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            // `script` runs the command through $SHELL; dash (CI's /bin/sh) stays as a parent,
            // bash execs. Pin the shell so the test sees the same tree everywhere.
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = std::io::Read::read_to_end(&mut BufReader::new(stdout), &mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    tokio::time::sleep(Duration::from_millis(4_800)).await;
    // SIGINT to tiergate itself (the terminal's Ctrl-C), not to `script` or the shell between:
    // only tiergate's command line starts with the binary's path.
    let pattern = format!("^{bin} top --admin {}", gate.admin);
    let pids = Command::new("pgrep").args(["-f", &pattern]).output().unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&pids.stdout).split_whitespace().map(str::to_owned).collect();
    assert_eq!(pids.len(), 1, "exactly one tiergate top process: {pids:?}");
    for pid in &pids {
        let _ = Command::new("kill").args(["-INT", pid]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tiergate top did not exit on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let shown = reader.join().unwrap();
    assert!(shown.matches("tiergate top").count() >= 2, "drawn at once and redrawn: {shown:?}");
    assert!(shown.contains("\u{1b}[1m"), "colour on a terminal");
    assert!(shown.contains("\u{1b}[2J"), "the screen is cleared between frames");
}
