//! The access log: one JSON line per logged response on **stdout** (diagnostics stay on stderr),
//! chosen by `log.access` (`none`, `refused` — every response tiergate made itself — or `all`).
//!
//! Lines are written off the request path: a request serialises its line and `try_send`s it into a
//! bounded channel; one writer task drains the channel into stdout. A slow, full or closed stdout
//! fills the channel and further lines are dropped and counted in
//! `tiergate_access_log_dropped_total`: logging never blocks or fails a request, nor a drain.
//! Tokens, query strings and bodies never appear: the line carries the path without its query.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Which responses are logged (`log.access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    None,
    /// Every response tiergate made itself rather than the upstream (400, 401, 413, 414, 429, 431, 502,
    /// 503, 504), those the HTTP codec made for unparsable heads included.
    Refused,
    All,
}

/// Lines waiting for the writer at most; past it lines are dropped (and counted).
const QUEUE: usize = 1_024;

/// One logged response.
#[derive(Serialize)]
pub struct Line<'a> {
    /// RFC 3339, UTC, milliseconds: `2026-12-01T19:40:54.123Z`.
    pub ts: String,
    pub request_id: &'a str,
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
    pub status: u16,
    pub class: &'a str,
    pub tier: &'a str,
    /// `user:…` or `ip:…`; absent for exempt routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub decision: &'a str,
    /// The violated window on a 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<&'a str>,
    pub duration_ms: f64,
    /// Absent when the request was not forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    pub bytes_sent: u64,
}

/// `t` as the access log's timestamp.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds as a JSON number with microsecond precision.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// The process's access-log sink (it outlives config snapshots; the mode lives in the snapshot).
pub struct AccessLog {
    tx: Option<mpsc::Sender<String>>,
    dropped: metrics::Counter,
}

impl AccessLog {
    /// Lines go to this process's stdout, through a writer task. Needs a Tokio runtime.
    pub fn stdout() -> AccessLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, tokio::io::stdout()));
        AccessLog { tx: Some(tx), dropped: metrics::counter!(crate::metrics::ACCESS_LOG_DROPPED) }
    }

    /// Lines go nowhere (embedding, in-process tests).
    pub fn disabled() -> AccessLog {
        AccessLog { tx: None, dropped: metrics::counter!(crate::metrics::ACCESS_LOG_DROPPED) }
    }

    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line; never waits. A full queue (stdout not keeping up) or a gone writer drops it.
    pub fn emit(&self, line: &Line<'_>) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut text) = serde_json::to_string(line) else { return };
        text.push('\n');
        if tx.try_send(text).is_err() {
            self.dropped.increment(1);
        }
    }
}

/// Drains queued lines into `out`, writing whatever has queued up at once.
async fn write_lines<W: tokio::io::AsyncWrite + Unpin>(mut rx: mpsc::Receiver<String>, mut out: W) {
    let mut batch = String::new();
    while let Some(line) = rx.recv().await {
        batch.push_str(&line);
        while batch.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.push_str(&more),
                Err(_) => break,
            }
        }
        if out.write_all(batch.as_bytes()).await.is_err() || out.flush().await.is_err() {
            // stdout is closed: keep draining so senders see a full queue rather than block.
            batch.clear();
            continue;
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_three_fraction_digits_in_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_154_054_123);
        assert_eq!(timestamp(t), "2026-12-01T19:40:54.123Z");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
