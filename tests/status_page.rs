//! The admin port's status page in a real headless browser (Debian's chromium): rendered against a
//! running tiergate with traffic, it shows the tier table, the storage state and a refused key. The
//! screenshot is kept as a test artifact in target/status-page.png.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set up panics with a message: that is its failure report"
)]

mod support;

use std::process::Command;

use support::*;

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new("sh").args(["-c", &format!("command -v {c}")]).output().is_ok_and(|o| o.status.success()) {
            return c;
        }
    }
    panic!("no headless browser: install Debian's chromium (scripts/test.sh does)");
}

#[tokio::test]
async fn the_status_page_renders_live_data_in_a_browser() {
    let gate = Gate::on(Store::Memory, "").await;
    let t = token("page-user", "free");
    for _ in 0..6 {
        get_as(&gate.url("/api/x"), &t).await;
    }
    // The page itself: one self-contained document.
    let page = get(&format!("{}/", gate.admin), &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(!page.body.contains("http://") && !page.body.contains("https://"), "no external assets");

    let browser = chromium();
    let url = format!("{}/", gate.admin);
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/status-page.png");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            let common = [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--virtual-time-budget=5000",
            ];
            let _ = Command::new(browser)
                .args(common)
                .args(["--window-size=1000,900", &format!("--screenshot={shot}"), &url])
                .output();
            let out = Command::new(browser).args(common).args(["--dump-dom", &url]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    })
    .await
    .unwrap();
    for tier in ["free", "pro", "enterprise"] {
        assert!(dom.contains(&format!("<td>{tier}</td>")), "tier {tier} in the rendered page:\n{dom}");
    }
    assert!(dom.contains("user:page-user"), "the refused key, fetched by the page's script:\n{dom}");
    assert!(dom.contains("answering"), "the storage state:\n{dom}");
    assert!(dom.contains("updated 20"), "the script ran:\n{dom}");
    assert!(std::path::Path::new(shot).exists(), "screenshot kept as an artifact");
}
