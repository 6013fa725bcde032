//! Hot reload: re-read `config.toml` (and the key files it names), validate, compile, and swap the
//! snapshot whole — or keep the old one and say why.
//!
//! Triggers: a change in the config file's **directory** (Kubernetes updates a ConfigMap by swapping a
//! `..data` symlink, an event that never names `config.toml`; editors rename over the file), debounced;
//! `SIGHUP`; and a poll every 30 s as a safety net. A trigger from the watcher or the poll reloads only
//! when the content (config text plus the key files it names) changed; `SIGHUP` always reloads, which
//! re-reads the key files. Counters live in the store, not the snapshot, so they carry over: a raised
//! limit applies to the count already in the window. `listen`, `admin_listen` and `[storage]` need a
//! restart; a reload that changes them is applied otherwise and says so in the log.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::snapshot::{Secrets, Snapshot};

const DEBOUNCE: Duration = Duration::from_millis(250);
const POLL_EVERY: Duration = Duration::from_secs(30);

/// Why a reload was attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Watch,
    Poll,
    Signal,
}

pub struct Reloader {
    path: PathBuf,
    secrets: Secrets,
    /// The snapshot requests load; a reload swaps it whole.
    cell: Arc<ArcSwap<Snapshot>>,
    last: u64,
}

impl Reloader {
    /// `path`: the config file the running snapshot came from.
    pub fn new(path: PathBuf, secrets: Secrets, cell: Arc<ArcSwap<Snapshot>>) -> Reloader {
        let mut r = Reloader { path, secrets, cell, last: 0 };
        r.last = r.fingerprint().unwrap_or(0);
        r
    }

    /// Config text and every key file it names, hashed: what a reload would read.
    fn fingerprint(&self) -> Option<u64> {
        let text = std::fs::read(&self.path).ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        if let Ok(config) = Config::parse(&String::from_utf8_lossy(&text)) {
            for file in config.key_files() {
                std::fs::read(file).ok().hash(&mut h);
            }
        }
        Some(h.finish())
    }

    /// Reloads now; returns whether a new snapshot was published.
    pub async fn reload(&mut self, trigger: Trigger) -> bool {
        let fingerprint = self.fingerprint();
        if trigger != Trigger::Signal && fingerprint == Some(self.last) {
            return false;
        }
        let compiled = Config::load(&self.path).and_then(|c| Snapshot::compile(c, &self.secrets));
        let compiled = match compiled {
            Ok(snapshot) => snapshot.prepare().await.map(|()| snapshot),
            Err(e) => Err(e),
        };
        match compiled {
            Ok(snapshot) => {
                let restart_needed = self.cell.load().startup.differences(&snapshot.startup);
                if !restart_needed.is_empty() {
                    tracing::warn!(
                        changed = ?restart_needed,
                        "these settings apply only at start: restart tiergate to apply them (everything else, certificates included, is live now)"
                    );
                }
                self.cell.store(Arc::new(snapshot));
                self.last = fingerprint.unwrap_or(0);
                crate::metrics::config_reload(true);
                tracing::info!(path = %self.path.display(), ?trigger, "config reloaded");
                true
            }
            Err(errors) => {
                // The old snapshot keeps serving. Remember this content so a broken file is reported
                // once per change, not on every poll.
                self.last = fingerprint.unwrap_or(0);
                crate::metrics::config_reload(false);
                tracing::error!(path = %self.path.display(), ?trigger, problems = ?errors.0, "config reload refused; still serving the previous config");
                false
            }
        }
    }

    /// Runs until `stop`: directory watch (debounced), `hup` (SIGHUP), and the periodic poll.
    pub async fn run(mut self, stop: CancellationToken, mut hup: Option<tokio::signal::unix::Signal>) {
        let (tx, mut events) = mpsc::unbounded_channel::<()>();
        let _watchers = self.watch_dirs(tx);
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.tick().await;
        loop {
            let trigger = tokio::select! {
                _ = stop.cancelled() => break,
                Some(()) = events.recv() => {
                    // Debounce: a ConfigMap swap or an editor's save is a burst of events.
                    tokio::time::sleep(DEBOUNCE).await;
                    while events.try_recv().is_ok() {}
                    Trigger::Watch
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => Trigger::Signal,
                _ = poll.tick() => Trigger::Poll,
            };
            self.reload(trigger).await;
        }
    }

    /// Watches the directories of the config file and of the key files it names.
    fn watch_dirs(&self, tx: mpsc::UnboundedSender<()>) -> Vec<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut dirs = vec![parent(&self.path)];
        dirs.extend(self.cell.load().key_files.iter().map(|f| parent(f)));
        dirs.sort();
        dirs.dedup();
        let mut watchers = Vec::new();
        for dir in dirs {
            let tx = tx.clone();
            let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.send(());
                }
            });
            match watcher {
                Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => watchers.push(w),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; relying on SIGHUP and the 30 s poll")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "no file watcher; relying on SIGHUP and the 30 s poll"),
            }
        }
        watchers
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
