//! The operator's commands, which need only a running tiergate's admin URL (no config):
//! `tiergate top` (a live view redrawn every 2 s from `/metrics` and `/limits/top`; `--once` prints
//! one plain frame) and `tiergate limits show|reset KEY` (wrapping `/limits/KEY`). Every failure is
//! one line naming what failed (the URL, the status), never a panic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How often `tiergate top` redraws.
pub const REDRAW: Duration = Duration::from_secs(2);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One request to the admin port: the body on a 2xx, else one line naming the URL and the status.
async fn call(method: &str, url: &str, token: Option<&str>) -> Result<String, String> {
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| format!("{url}: not a valid URL ({e})"))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client().request(req))
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))?
        .map_err(|e| format!("{url}: cannot connect ({e})"))?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .map_err(|_| format!("{url}: the body did not arrive within 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        return Ok(text);
    }
    let detail = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    Err(format!("{url}: {status}: {detail}"))
}

/// `KEY` as the path segment of `/limits/KEY` (`:` and unreserved characters kept, the rest escaped).
fn encode_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn seconds_until(reset: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let s = reset.saturating_sub(now);
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// A `/limits/KEY` answer as a table.
fn windows_table(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} (tier {})", v["key"].as_str().unwrap_or("?"), v["tier"].as_str().unwrap_or("?"));
    let _ = writeln!(out, "{:<14} {:>10} {:>10} {:>10}", "window", "limit", "remaining", "resets in");
    for w in v["windows"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let _ = writeln!(
            out,
            "{:<14} {:>10} {:>10} {:>10}",
            w["name"].as_str().unwrap_or("?"),
            w["limit"],
            w["remaining"],
            seconds_until(w["reset"].as_u64().unwrap_or(0))
        );
    }
    if let Some(c) = v.get("concurrent") {
        let _ =
            writeln!(out, "{:<14} {:>10} {:>10}", "concurrent", c["limit"], format!("{} in flight", c["in_flight"]));
    }
    out
}

/// `tiergate limits show KEY`.
pub async fn limits_show(admin: &str, key: &str, tier: Option<&str>) -> Result<String, String> {
    let mut url = format!("{}/limits/{}", admin.trim_end_matches('/'), encode_key(key));
    if let Some(t) = tier {
        let _ = write!(url, "?tier={}", encode_key(t));
    }
    let body = call("GET", &url, None).await?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{url}: not JSON ({e})"))?;
    Ok(windows_table(&v))
}

/// `tiergate limits reset KEY`: the token comes from `TIERGATE_ADMIN_TOKEN`.
pub async fn limits_reset(admin: &str, key: &str, tier: Option<&str>, token: Option<&str>) -> Result<String, String> {
    let token =
        token.filter(|t| !t.is_empty()).ok_or("TIERGATE_ADMIN_TOKEN is not set: it must hold the admin token")?;
    let mut url = format!("{}/limits/{}", admin.trim_end_matches('/'), encode_key(key));
    if let Some(t) = tier {
        let _ = write!(url, "?tier={}", encode_key(t));
    }
    let body = call("DELETE", &url, Some(token)).await?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{url}: not JSON ({e})"))?;
    Ok(format!("cleared every window of {key}; now:\n{}", windows_table(&v)))
}

/// `tiergate_requests_total` by (tier, class) → (total, refused), from a Prometheus text scrape.
fn requests(scrape: &str) -> BTreeMap<(String, String), (f64, f64)> {
    let mut out = BTreeMap::new();
    for line in scrape.lines().filter(|l| l.starts_with("tiergate_requests_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
            let end = labels[start..].find('"')? + start;
            Some(labels[start..end].to_string())
        };
        let (Some(tier), Some(class), Some(decision)) = (label("tier"), label("class"), label("decision")) else {
            continue;
        };
        let e = out.entry((tier, class)).or_insert((0.0, 0.0));
        e.0 += value;
        if matches!(decision.as_str(), "limited" | "unauthorized" | "too_large" | "storage_unavailable" | "bad_request")
        {
            e.1 += value;
        }
    }
    out
}

fn gauge(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One frame of `tiergate top`: rates between two scrapes `elapsed` apart.
fn frame(before: &str, after: &str, elapsed: Duration, top: &Value, color: bool) -> String {
    let (bold, red, green, reset) =
        if color { ("\x1b[1m", "\x1b[31m", "\x1b[32m", "\x1b[0m") } else { ("", "", "", "") };
    let secs = elapsed.as_secs_f64().max(0.001);
    let (old, new) = (requests(before), requests(after));
    let mut out = String::new();
    let fallback = gauge(after, "tiergate_storage_fallback").unwrap_or(0.0) > 0.0;
    let storage =
        if fallback { format!("{red}fallback (on_error policy){reset}") } else { format!("{green}answering{reset}") };
    let _ = writeln!(out, "{bold}tiergate top{reset}   storage: {storage}   every {}s", REDRAW.as_secs());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{bold}{:<12} {:<12} {:>10} {:>10} {:>8}{reset}",
        "TIER", "CLASS", "REQ/S", "REFUSED/S", "REFUSED"
    );
    for ((tier, class), (total, refused)) in &new {
        let (t0, r0) = old.get(&(tier.clone(), class.clone())).copied().unwrap_or((0.0, 0.0));
        let (rate, refusing) = ((total - t0) / secs, (refused - r0) / secs);
        let share = if rate > 0.0 { 100.0 * refusing / rate } else { 0.0 };
        let paint = if share >= 25.0 { red } else { "" };
        let _ =
            writeln!(out, "{:<12} {:<12} {:>10.1} {paint}{:>10.1} {:>7.0}%{reset}", tier, class, rate, refusing, share);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{bold}{:<40} {:<12} {:>8} {:>8}{reset}", "MOST REFUSED", "TIER", "REFUSED", "ALLOWED");
    for e in top["top"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let _ = writeln!(
            out,
            "{:<40} {:<12} {:>8} {:>8}",
            e["key"].as_str().unwrap_or("?"),
            e["tier"].as_str().unwrap_or("?"),
            e["refused"],
            e["allowed"]
        );
    }
    out
}

async fn sample(admin: &str) -> Result<String, String> {
    call("GET", &format!("{}/metrics", admin.trim_end_matches('/')), None).await
}

async fn most_refused(admin: &str) -> Result<Value, String> {
    let url = format!("{}/limits/top?n=10", admin.trim_end_matches('/'));
    let body = call("GET", &url, None).await?;
    serde_json::from_str(&body).map_err(|e| format!("{url}: not JSON ({e})"))
}

/// `tiergate top --once`: one plain frame, rates over one second.
pub async fn top_once(admin: &str) -> Result<String, String> {
    let before = sample(admin).await?;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sample(admin).await?;
    Ok(frame(&before, &after, started.elapsed(), &most_refused(admin).await?, false))
}

/// `tiergate top`: drawn at once, then redrawn every 2 s until Ctrl-C (or SIGTERM); colour only on a
/// terminal. `out` receives each frame.
pub async fn top_live(admin: &str, color: bool, mut out: impl FnMut(&str)) -> Result<(), String> {
    use crossterm::terminal::{Clear, ClearType};
    let clear = format!("{}{}", Clear(ClearType::All), crossterm::cursor::MoveTo(0, 0));
    let mut before = sample(admin).await?;
    let mut at = std::time::Instant::now();
    let mut first = true;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        if !first {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep(REDRAW) => {}
            }
        }
        let after = sample(admin).await?;
        let elapsed = if first { Duration::from_secs(1) } else { at.elapsed() };
        let body = frame(if first { &after } else { &before }, &after, elapsed, &most_refused(admin).await?, color);
        out(&format!("{clear}{body}"));
        first = false;
        before = after;
        at = std::time::Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_scrapes() {
        let before = "tiergate_requests_total{tier=\"free\",class=\"api\",decision=\"allowed\"} 10\n\
                      tiergate_requests_total{tier=\"free\",class=\"api\",decision=\"limited\"} 0\n";
        let after = "tiergate_requests_total{tier=\"free\",class=\"api\",decision=\"allowed\"} 14\n\
                     tiergate_requests_total{tier=\"free\",class=\"api\",decision=\"limited\"} 4\n\
                     tiergate_storage_fallback 1\n";
        let text = frame(before, after, Duration::from_secs(2), &serde_json::json!({"top": []}), false);
        assert!(text.contains("fallback"), "{text}");
        let row = text.lines().find(|l| l.starts_with("free")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols, ["free", "api", "4.0", "2.0", "50%"]);
        assert_eq!(encode_key("user:a b/c"), "user:a%20b%2Fc");
    }
}
