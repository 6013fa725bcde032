//! Hot reload (file watch, ConfigMap symlink swaps, SIGHUP, broken configs) and graceful drain
//! (SIGTERM) — the latter two against the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn with_api_limit(n: u32) -> String {
    format!("{SERVER}{IDENTITY}{TIERS}").replace("api_calls_per_minute = 3", &format!("api_calls_per_minute = {n}"))
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reloads(gate: &Gate, result: &str) -> f64 {
    let m = get(&format!("{}/metrics", gate.admin), &[]).await.body;
    metric(&m, "tiergate_config_reloads_total", &[&format!("result=\"{result}\"")])
}

#[tokio::test]
async fn an_edited_file_applies_live_and_keeps_the_counts() {
    let dir = scratch("edit");
    let (gate, text) = Gate::watching(&dir, &with_api_limit(3)).await;
    let t = token("reload-user", "free");
    for _ in 0..3 {
        assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 200);
    }
    assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 429);
    let probe = token("reload-probe", "free");
    for _ in 0..3 {
        get_as(&gate.url("/api/x"), &probe).await;
    }

    // An editor's save: write a temporary file, rename it over the config.
    let raised = text.replace("api_calls_per_minute = 3", "api_calls_per_minute = 5");
    std::fs::write(dir.join(".config.toml.swp"), &raised).unwrap();
    std::fs::rename(dir.join(".config.toml.swp"), dir.join("config.toml")).unwrap();
    // Polled with another user, so `t`'s count is untouched; limit headers are on refusals too.
    wait_for("raised limit applied", Duration::from_secs(5), async || {
        get_as(&gate.url("/api/x"), &probe).await.header("x-ratelimit-limit") == Some("5")
    })
    .await;
    assert!(reloads(&gate, "success").await >= 1.0);
    // The 3 already counted stay counted: 2 more, then refused.
    let r = get_as(&gate.url("/api/x"), &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 200);
    assert_eq!(get_as(&gate.url("/api/x"), &t).await.status, 429);

    // A broken config is refused; the previous one keeps serving.
    let errors_before = reloads(&gate, "error").await;
    std::fs::write(
        dir.join("config.toml"),
        raised.replace("requests_per_hour = 1000\n", "requests_per_hour = \"many\"\n"),
    )
    .unwrap();
    wait_for("broken config counted", Duration::from_secs(5), async || reloads(&gate, "error").await > errors_before)
        .await;
    let r = get_as(&gate.url("/api/x"), &token("after-broken", "pro")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"), "still the last good config");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    // The layout kubelet writes: config.toml -> ..data/config.toml, ..data -> ..<timestamp>/
    let dir = scratch("configmap");
    let upstream = echo().await;
    let text = |n: u32| with_api_limit(n).replace("http://127.0.0.1:1", &format!("http://{upstream}"));
    std::fs::create_dir_all(dir.join("..v1")).unwrap();
    std::fs::write(dir.join("..v1/config.toml"), text(3)).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", dir.join("config.toml")).unwrap();
    let gate = Gate::start_with_upstream(&text(3), &format!("http://{upstream}"), upstream).await;
    gate.server.watch_config(
        dir.join("config.toml"),
        tiergate::snapshot::Secrets::default().with(SECRET_ENV, SECRET),
        None,
    );
    let t = token("cm-user", "free");
    assert_eq!(get_as(&gate.url("/api/x"), &t).await.header("x-ratelimit-limit"), Some("3"));

    std::fs::create_dir_all(dir.join("..v2")).unwrap();
    std::fs::write(dir.join("..v2/config.toml"), text(7)).unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    // Limit headers are on refusals too, so polling cannot hide the change.
    wait_for("ConfigMap update applied", Duration::from_secs(5), async || {
        get_as(&gate.url("/api/x"), &t).await.header("x-ratelimit-limit") == Some("7")
    })
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn spawn_binary(dir: &std::path::Path, grace: &str) -> (Child, String, String) {
    let upstream = echo().await;
    let (port, admin) = (free_port(), free_port());
    let text = format!("{SERVER}{IDENTITY}{TIERS}")
        .replace("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"127.0.0.1:{port}\""))
        .replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{admin}\"\nshutdown_grace = \"{grace}\""),
        )
        .replace("http://127.0.0.1:1", &format!("http://{upstream}"));
    std::fs::write(dir.join("config.toml"), text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env(SECRET_ENV, SECRET)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (base, admin) = (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{admin}"));
    let a = admin.clone();
    wait_for("binary ready", Duration::from_secs(10), async || {
        matches!(tokio::time::timeout(Duration::from_millis(500), client().request(request("GET", &format!("{a}/readyz"), &[], bytes::Bytes::new()))).await, Ok(Ok(r)) if r.status() == 200)
    })
    .await;
    (Child(child), base, admin)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.0.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} failed");
}

#[tokio::test]
async fn sighup_reloads_even_an_unchanged_file() {
    let dir = scratch("sighup");
    let (child, _base, admin) = spawn_binary(&dir, "5s").await;
    let count = async || {
        metric(
            &get(&format!("{admin}/metrics"), &[]).await.body,
            "tiergate_config_reloads_total",
            &["result=\"success\""],
        )
    };
    assert_eq!(count().await, 0.0);
    signal(&child, "-HUP");
    wait_for("SIGHUP reload counted", Duration::from_secs(5), async || count().await == 1.0).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let dir = scratch("sigterm");
    let (mut child, base, admin) = spawn_binary(&dir, "10s").await;
    let slow_url = format!("{base}/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&slow_url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "-TERM");
    let a = admin.clone();
    wait_for("readyz turns 503", Duration::from_secs(2), async || get(&format!("{a}/readyz"), &[]).await.status == 503)
        .await;
    assert!(
        tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.is_err(),
        "listener must close at once"
    );
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request completes");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "tiergate did not exit after draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}
