//! The `http` audit sink: NDJSON batches POSTed to a URL (Vector, Fluent
//! Bit, Loki's push gateway, Splunk HEC in raw mode…), optionally gzipped,
//! with a bearer-style token from a file or an environment variable.
//!
//! Delivery never waits on a dead receiver for long: a batch is POSTed
//! directly (with a few retries, exponential backoff) only while the spool
//! is empty; otherwise — or when those retries fail — it is appended to the
//! durable on-disk [`Spool`] and `deliver` returns Ok once it is fsynced. A
//! background task replays the spool oldest first, backing off
//! exponentially while the receiver is down, and removes a batch only after
//! a 2xx. Order is kept because nothing is sent directly while anything is
//! spooled. A restart (even after `kill -9`) finds the spool and resumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::http_client::{ClientSettings, HttpClient, PostError};
use super::sink::Lines;
use super::sink_metrics::sink_metrics;
use super::spool::Spool;

const NDJSON: &str = "application/x-ndjson";

fn default_token_header() -> String {
    "authorization".into()
}
fn default_token_prefix() -> String {
    "Bearer ".into()
}
fn yes() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_retries() -> u32 {
    3
}
fn default_backoff_initial_ms() -> u64 {
    200
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_spool_max_bytes() -> u64 {
    1 << 30
}

/// `[[audit.sinks]] type = "http"`. Every key is documented in
/// `config/pgward.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Name in metrics and logs; default: the sink's type.
    pub name: Option<String>,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    #[serde(default = "default_token_header")]
    pub token_header: String,
    #[serde(default = "default_token_prefix")]
    pub token_prefix: String,
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default = "yes")]
    pub gzip: bool,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    pub spool_dir: PathBuf,
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
}

impl HttpSinkConfig {
    /// `name`, else the sink's type.
    pub fn sink_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| "http".into())
    }

    /// A config with every default, for `url` and `spool_dir`.
    pub fn new(url: &str, spool_dir: &Path) -> HttpSinkConfig {
        HttpSinkConfig {
            name: None,
            url: url.into(),
            headers: BTreeMap::new(),
            token_file: None,
            token_env: None,
            token_header: default_token_header(),
            token_prefix: default_token_prefix(),
            tls_ca_file: None,
            gzip: true,
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            spool_dir: spool_dir.into(),
            spool_max_bytes: default_spool_max_bytes(),
        }
    }

    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            url: self.url.clone(),
            headers: self.headers.clone(),
            token_file: self.token_file.clone(),
            token_env: self.token_env.clone(),
            token_header: self.token_header.clone(),
            token_prefix: self.token_prefix.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            gzip: self.gzip,
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }

    /// Checks serde cannot make (the client is built to check the URL,
    /// headers and token source).
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 {
            return Err(format!(
                "audit sink {:?}: timeout_ms must be positive",
                self.sink_name()
            ));
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return Err(format!(
                "audit sink {:?}: need 0 < backoff_initial_ms <= backoff_max_ms",
                self.sink_name()
            ));
        }
        HttpClient::new(&self.client_settings())
            .map(|_| ())
            .map_err(|e| format!("audit sink {:?}: {e}", self.sink_name()))
    }
}

/// Exponential backoff between `initial` and `max`.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    fn reset(&mut self) {
        self.next = self.initial;
    }
}

struct Shared {
    name: String,
    spool_dir: PathBuf,
    client: HttpClient,
    spool: Mutex<Spool>,
    wake: Notify,
    backoff: Backoff,
}

impl Shared {
    /// Run a spool operation off the async threads (it fsyncs).
    async fn with_spool<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Spool) -> Result<T, super::spool::SpoolError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut spool = me.spool.lock().unwrap_or_else(|p| p.into_inner());
            let out = f(&mut spool);
            sink_metrics()
                .spooled_batches
                .with_label_values(&[&me.name])
                .set(spool.len() as i64);
            out
        })
        .await?
        .map_err(anyhow::Error::from)
    }

    fn last_event_path(&self) -> PathBuf {
        self.spool_dir.join("last_event")
    }

    fn spool_is_empty(&self) -> bool {
        self.spool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

pub struct HttpSink {
    shared: Arc<Shared>,
    retries: u32,
    replayer: tokio::task::JoinHandle<()>,
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        // What is spooled stays on disk for the next start.
        self.replayer.abort();
    }
}

impl HttpSink {
    /// Open the spool and start the replayer (inside a tokio runtime).
    pub fn start(cfg: &HttpSinkConfig) -> anyhow::Result<HttpSink> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let client = HttpClient::new(&cfg.client_settings()).map_err(anyhow::Error::msg)?;
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes)?;
        if !spool.is_empty() {
            tracing::info!(sink = %cfg.sink_name(), batches = spool.len(), bytes = spool.bytes(),
                "audit HTTP sink: replaying batches spooled before the restart");
        }
        sink_metrics()
            .spooled_batches
            .with_label_values(&[&cfg.sink_name()])
            .set(spool.len() as i64);
        let shared = Arc::new(Shared {
            name: cfg.sink_name(),
            spool_dir: cfg.spool_dir.clone(),
            client,
            spool: Mutex::new(spool),
            wake: Notify::new(),
            backoff: Backoff::new(
                Duration::from_millis(cfg.backoff_initial_ms),
                Duration::from_millis(cfg.backoff_max_ms),
            ),
        });
        let replayer = tokio::spawn(replay(shared.clone()));
        shared.wake.notify_one();
        Ok(HttpSink {
            shared,
            retries: cfg.retries,
            replayer,
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Batches waiting in the spool.
    pub fn spooled(&self) -> usize {
        self.shared
            .spool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Ok once the receiver answered 2xx or the batch is fsynced in the
    /// spool. Err only when the spool cannot take it (full, disk error): the
    /// pipeline then offers the same batch again.
    pub async fn deliver(&mut self, batch: &Lines) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = batch.ndjson().to_vec();
        let m = sink_metrics();
        let mut refused = false;
        if self.shared.spool_is_empty() {
            let mut backoff = self.shared.backoff;
            for attempt in 0..=self.retries {
                match self.shared.client.post(&body, NDJSON).await {
                    Ok(()) => {
                        m.delivered_events
                            .with_label_values(&[&self.shared.name])
                            .inc_by(batch.len() as u64);
                        self.remember_last(batch);
                        return Ok(());
                    }
                    Err(e) => {
                        m.errors.with_label_values(&[&self.shared.name]).inc();
                        tracing::warn!(sink = %self.shared.name, error = %e, attempt,
                            "audit HTTP sink: POST failed");
                        refused = matches!(e, PostError::Permanent(_));
                        if refused || attempt == self.retries {
                            break;
                        }
                        tokio::time::sleep(backoff.step()).await;
                    }
                }
            }
        }
        let n = batch.len() as u64;
        if refused {
            // Refused for good: kept aside on disk (and counted), not retried.
            let path = self
                .shared
                .with_spool(move |s| {
                    let seq = s.push(&body)?;
                    s.reject(seq)
                })
                .await
                .map_err(|e| anyhow::anyhow!("audit sink {:?}: {e}", self.shared.name))?;
            m.rejected_events
                .with_label_values(&[&self.shared.name])
                .inc_by(n);
            tracing::error!(sink = %self.shared.name, kept = %path.display(),
                "audit HTTP sink: the receiver refused a batch; kept it aside");
            self.remember_last(batch);
            return Ok(());
        }
        self.shared
            .with_spool(move |s| s.push(&body).map(|_| ()))
            .await
            .map_err(|e| anyhow::anyhow!("audit sink {:?}: {e}", self.shared.name))?;
        m.spooled_events
            .with_label_values(&[&self.shared.name])
            .inc_by(n);
        self.remember_last(batch);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// The chain hash of the newest event this sink accepted: from the
    /// newest spooled batch, else from `<spool_dir>/last_event` (written,
    /// not fsynced, after every accepted batch). None starts a new chain.
    pub fn last_hash(&self) -> Option<String> {
        let spooled = {
            let spool = self.shared.spool.lock().unwrap_or_else(|p| p.into_inner());
            spool.back().ok().flatten()
        };
        let line = match spooled {
            Some(body) => String::from_utf8(body).ok()?.lines().last()?.to_string(),
            None => std::fs::read_to_string(self.shared.last_event_path()).ok()?,
        };
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).ok()?;
        v.get("hash")?.as_str().map(str::to_string)
    }

    fn remember_last(&self, batch: &Lines) {
        let Some(last) = batch.last() else { return };
        let path = self.shared.last_event_path();
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, last.as_bytes()).and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(sink = %self.shared.name, error = %e,
                "audit HTTP sink: cannot record the last event (a restart starts a new chain)");
        }
    }
}

/// Send spooled batches oldest first until the spool is empty, then sleep
/// until `deliver` spools something.
async fn replay(shared: Arc<Shared>) {
    let m = sink_metrics();
    let mut backoff = shared.backoff;
    loop {
        let front = shared.with_spool(|s| s.front()).await;
        let (seq, body) = match front {
            Ok(Some(x)) => x,
            Ok(None) => {
                shared.wake.notified().await;
                continue;
            }
            Err(e) => {
                tracing::error!(sink = %shared.name, error = %e, "audit HTTP sink: reading the spool");
                tokio::time::sleep(backoff.step()).await;
                continue;
            }
        };
        let events = body.iter().filter(|b| **b == b'\n').count() as u64;
        match shared.client.post(&body, NDJSON).await {
            Ok(()) => {
                backoff.reset();
                if let Err(e) = shared.with_spool(move |s| s.pop(seq)).await {
                    tracing::error!(sink = %shared.name, error = %e,
                        "audit HTTP sink: removing a delivered batch (it will be sent again)");
                    tokio::time::sleep(backoff.step()).await;
                    continue;
                }
                m.delivered_events
                    .with_label_values(&[&shared.name])
                    .inc_by(events);
            }
            Err(PostError::Permanent(msg)) => {
                m.errors.with_label_values(&[&shared.name]).inc();
                match shared.with_spool(move |s| s.reject(seq)).await {
                    Ok(path) => {
                        m.rejected_events
                            .with_label_values(&[&shared.name])
                            .inc_by(events);
                        tracing::error!(sink = %shared.name, error = %msg, kept = %path.display(),
                            "audit HTTP sink: the receiver refused a batch; kept it aside");
                    }
                    Err(e) => {
                        tracing::error!(sink = %shared.name, error = %e, "audit HTTP sink: moving a refused batch");
                        tokio::time::sleep(backoff.step()).await;
                    }
                }
            }
            Err(PostError::Retryable(msg)) => {
                m.errors.with_label_values(&[&shared.name]).inc();
                let wait = backoff.step();
                tracing::warn!(sink = %shared.name, error = %msg, retry_in = ?wait,
                    "audit HTTP sink: receiver unavailable; batches stay spooled");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let steps: Vec<u128> = (0..4).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.step().as_millis(), 100);
    }

    #[test]
    fn config_rejects_a_bad_backoff_and_a_bad_url() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = HttpSinkConfig::new("http://127.0.0.1:9/x", dir.path());
        assert!(c.validate().is_ok());
        c.backoff_max_ms = 1;
        assert!(c.validate().unwrap_err().contains("backoff"));
        let c = HttpSinkConfig::new("gopher://x", dir.path());
        assert!(c.validate().unwrap_err().contains("scheme"));
    }
}
