//! Mass-deletion detection: rows deleted per table within a sliding window.
//!
//! [`Detector`] is pure (time is passed in): feed it every completed DELETE
//! — hard, or soft (a DELETE pgward rewrote into an UPDATE) — with the rows
//! its command tag reported, and it returns an [`Alert`] when the rows
//! deleted from one table within the last `window_secs` reach `rows`. After
//! an alert the table stays quiet for one window (a long purge alerts once
//! per window, not once per statement); rows keep counting meanwhile, so a
//! purge still going on when the window ends alerts again.
//!
//! [`Webhook`] POSTs an alert as JSON to an optional URL, off the audit
//! path, with a few retries; failures are logged and counted.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::event::{AlertInfo, AuditVerdict, Event, EventType};
use super::http_client::{ClientSettings, HttpClient};
use super::sink_metrics::sink_metrics;

fn default_rows() -> u64 {
    5
}
fn default_window_secs() -> u64 {
    60
}

/// `[audit.mass_delete]`. Documented in `config/pgward.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MassDeleteConfig {
    /// Alert when at least this many rows are deleted from one table …
    #[serde(default = "default_rows")]
    pub rows: u64,
    /// … within this many seconds.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    pub webhook: Option<WebhookConfig>,
}

impl Default for MassDeleteConfig {
    fn default() -> Self {
        MassDeleteConfig {
            rows: default_rows(),
            window_secs: default_window_secs(),
            webhook: None,
        }
    }
}

fn default_token_header() -> String {
    "authorization".into()
}
fn default_token_prefix() -> String {
    "Bearer ".into()
}
fn default_webhook_timeout_ms() -> u64 {
    5_000
}
fn default_webhook_retries() -> u32 {
    3
}

/// `[audit.mass_delete.webhook]`: where alerts are POSTed as JSON.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    #[serde(default = "default_token_header")]
    pub token_header: String,
    #[serde(default = "default_token_prefix")]
    pub token_prefix: String,
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_webhook_retries")]
    pub retries: u32,
}

impl MassDeleteConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.rows == 0 {
            return Err("audit.mass_delete.rows must be at least 1".into());
        }
        if self.window_secs == 0 {
            return Err("audit.mass_delete.window_secs must be at least 1".into());
        }
        if let Some(w) = &self.webhook {
            HttpClient::new(&w.client_settings())
                .map_err(|e| format!("audit.mass_delete.webhook: {e}"))?;
        }
        Ok(())
    }
}

impl WebhookConfig {
    fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            url: self.url.clone(),
            headers: self.headers.clone(),
            token_file: self.token_file.clone(),
            token_env: self.token_env.clone(),
            token_header: self.token_header.clone(),
            token_prefix: self.token_prefix.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            gzip: false,
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

/// One completed DELETE, as the detector sees it.
#[derive(Debug, Clone)]
pub struct Deletion<'a> {
    pub table: &'a str,
    pub rows: u64,
    /// A soft delete (rewritten into an UPDATE).
    pub soft: bool,
    pub user: &'a str,
}

/// What crossed the threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub table: String,
    /// Rows deleted from `table` within the window, this statement included.
    pub rows: u64,
    pub hard_rows: u64,
    pub soft_rows: u64,
    pub threshold: u64,
    pub window_secs: u64,
    /// Users whose deletes are in the window (at most 16 named).
    pub users: Vec<String>,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    rows: u64,
    soft: bool,
    user: Arc<str>,
}

#[derive(Debug, Default)]
struct TableWindow {
    entries: VecDeque<Entry>,
    total: u64,
    quiet_until: Option<Instant>,
}

impl TableWindow {
    fn prune(&mut self, now: Instant, window: Duration) {
        while let Some(e) = self.entries.front() {
            if now.saturating_duration_since(e.at) < window {
                break;
            }
            self.total -= e.rows;
            self.entries.pop_front();
        }
    }
}

/// Tables tracked before stale ones are swept.
const SWEEP_AT: usize = 4096;
/// Entries kept per table: beyond it the oldest is folded into the next one
/// (the total stays exact; those rows just leave the window a bit later).
/// Bounds memory under a storm of 1-row deletes.
const MAX_ENTRIES: usize = 65_536;

#[derive(Debug)]
pub struct Detector {
    threshold: u64,
    window: Duration,
    tables: HashMap<String, TableWindow>,
}

impl Detector {
    pub fn new(cfg: &MassDeleteConfig) -> Detector {
        Detector {
            threshold: cfg.rows.max(1),
            window: Duration::from_secs(cfg.window_secs.max(1)),
            tables: HashMap::new(),
        }
    }

    /// Record a completed DELETE at `now`; an alert when it brings its
    /// table's window to the threshold (and the table is not quiet).
    pub fn observe(&mut self, d: &Deletion<'_>, now: Instant) -> Option<Alert> {
        if d.rows == 0 {
            return None;
        }
        if self.tables.len() >= SWEEP_AT && !self.tables.contains_key(d.table) {
            let window = self.window;
            self.tables.retain(|_, w| {
                w.prune(now, window);
                !w.entries.is_empty() || w.quiet_until.is_some_and(|q| q > now)
            });
        }
        let w = self.tables.entry(d.table.to_string()).or_default();
        w.prune(now, self.window);
        if w.entries.len() >= MAX_ENTRIES {
            // Fold the oldest into the next: the total is unchanged.
            if let Some(old) = w.entries.pop_front() {
                if let Some(next) = w.entries.front_mut() {
                    next.rows += old.rows;
                }
            }
        }
        let user: Arc<str> = match w.entries.back() {
            Some(e) if &*e.user == d.user => e.user.clone(),
            _ => Arc::from(d.user),
        };
        w.entries.push_back(Entry {
            at: now,
            rows: d.rows,
            soft: d.soft,
            user,
        });
        w.total += d.rows;
        if w.quiet_until.is_some_and(|q| now < q) || w.total < self.threshold {
            return None;
        }
        w.quiet_until = Some(now + self.window);
        let soft_rows: u64 = w.entries.iter().filter(|e| e.soft).map(|e| e.rows).sum();
        let users: BTreeSet<&str> = w.entries.iter().map(|e| &*e.user).collect();
        Some(Alert {
            table: d.table.to_string(),
            rows: w.total,
            hard_rows: w.total - soft_rows,
            soft_rows,
            threshold: self.threshold,
            window_secs: self.window.as_secs(),
            users: users.into_iter().take(16).map(str::to_string).collect(),
        })
    }
}

/// The rows a DELETE's command tag reports (`DELETE 42` → 42).
pub fn deleted_rows(command_tag: &str) -> Option<u64> {
    command_tag.strip_prefix("DELETE ")?.trim().parse().ok()
}

/// POSTs alerts to the configured URL in the background.
#[derive(Clone)]
pub struct Webhook {
    client: Arc<HttpClient>,
    retries: u32,
}

impl Webhook {
    pub fn new(cfg: &WebhookConfig) -> Result<Webhook, String> {
        Ok(Webhook {
            client: Arc::new(HttpClient::new(&cfg.client_settings())?),
            retries: cfg.retries,
        })
    }

    /// Send `body` (the alert event's JSON) without holding up the caller.
    pub fn notify(&self, body: String) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            for attempt in 0..=me.retries {
                match me.client.post(body.as_bytes(), "application/json").await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "mass-deletion webhook failed");
                        if matches!(e, super::http_client::PostError::Permanent(_)) {
                            break;
                        }
                    }
                }
                if attempt < me.retries {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
            sink_metrics().webhook_errors.inc();
            tracing::error!(target = %me.client.target(), "mass-deletion webhook gave up");
        });
    }
}

/// The fields of a statement event the detector reads.
#[derive(Deserialize)]
struct StatementPeek {
    user: Option<String>,
    statement: Option<StatementFields>,
}

#[derive(Deserialize)]
struct StatementFields {
    kind: String,
    #[serde(default)]
    tables: Vec<String>,
    verdict: AuditVerdict,
    outcome: OutcomeFields,
}

#[derive(Deserialize)]
struct OutcomeFields {
    status: String,
    command_tag: Option<String>,
    rows: Option<u64>,
}

/// The detector wired into the audit pipeline: it reads the statement
/// events on their way to the sinks and returns the `alert` events to send
/// after them (and calls the webhook).
pub struct Monitor {
    detector: Detector,
    webhook: Option<Webhook>,
}

impl Monitor {
    pub fn new(cfg: &MassDeleteConfig) -> anyhow::Result<Monitor> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let webhook = match &cfg.webhook {
            Some(w) => Some(
                Webhook::new(w).map_err(|e| anyhow::anyhow!("audit.mass_delete.webhook: {e}"))?,
            ),
            None => None,
        };
        Ok(Monitor {
            detector: Detector::new(cfg),
            webhook,
        })
    }

    /// Look at serialized events; alerts for the deletes among them.
    pub fn inspect(&mut self, events: &[String]) -> Vec<String> {
        let mut alerts = Vec::new();
        let now = Instant::now();
        for e in events {
            // Cheap filter before parsing: only completed DELETEs matter.
            if !e.contains("\"kind\":\"delete\"") {
                continue;
            }
            let Some((table, rows, soft, user)) = deletion_of(e) else {
                continue;
            };
            let d = Deletion {
                table: &table,
                rows,
                soft,
                user: &user,
            };
            if let Some(alert) = self.detector.observe(&d, now) {
                alerts.push(self.raise(&alert));
            }
        }
        alerts
    }

    fn raise(&self, a: &Alert) -> String {
        let mut ev = Event::new(EventType::Alert);
        ev.alert = Some(AlertInfo {
            kind: "mass_deletion".into(),
            message: format!(
                "{} rows deleted from {} within {} s ({} hard, {} soft; threshold {}) by {}",
                a.rows,
                a.table,
                a.window_secs,
                a.hard_rows,
                a.soft_rows,
                a.threshold,
                a.users.join(", ")
            ),
            table: Some(a.table.clone()),
            rows: Some(a.rows),
            window_secs: Some(a.window_secs),
            threshold: Some(a.threshold),
        });
        let json = ev.to_json();
        sink_metrics().mass_delete_alerts.inc();
        crate::admin::metrics::metrics()
            .audit
            .events
            .with_label_values(&["alert"])
            .inc();
        tracing::warn!(table = %a.table, rows = a.rows, window_secs = a.window_secs, "mass deletion");
        if let Some(w) = &self.webhook {
            w.notify(json.clone());
        }
        json
    }
}

/// (table, rows, soft, user) of a completed DELETE statement event. The
/// table is the first the statement names (the DELETE's target; `USING`
/// tables come after it).
fn deletion_of(event: &str) -> Option<(String, u64, bool, String)> {
    let peek: StatementPeek = serde_json::from_str(event).ok()?;
    let st = peek.statement?;
    if st.kind != "delete" || st.outcome.status != "ok" {
        return None;
    }
    let soft = match st.verdict {
        AuditVerdict::Rewritten => true,
        AuditVerdict::Allowed | AuditVerdict::Monitored => false,
        AuditVerdict::Blocked => return None,
    };
    let rows = st
        .outcome
        .command_tag
        .as_deref()
        .and_then(deleted_rows)
        .or(st.outcome.rows)?;
    let table = st.tables.into_iter().next()?;
    Some((table, rows, soft, peek.user.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(rows: u64, secs: u64) -> Detector {
        Detector::new(&MassDeleteConfig {
            rows,
            window_secs: secs,
            webhook: None,
        })
    }

    fn del<'a>(table: &'a str, rows: u64, soft: bool) -> Deletion<'a> {
        Deletion {
            table,
            rows,
            soft,
            user: "app",
        }
    }

    #[test]
    fn alerts_on_the_row_that_reaches_the_threshold_not_before() {
        let mut d = det(5, 60);
        let t0 = Instant::now();
        for i in 0..4 {
            assert_eq!(
                d.observe(&del("public.users", 1, false), t0 + Duration::from_secs(i)),
                None
            );
        }
        let a = d
            .observe(&del("public.users", 1, true), t0 + Duration::from_secs(5))
            .expect("fifth row alerts");
        assert_eq!((a.rows, a.hard_rows, a.soft_rows), (5, 4, 1));
        assert_eq!(a.table, "public.users");
        assert_eq!(a.users, ["app"]);
    }

    #[test]
    fn rows_older_than_the_window_do_not_count() {
        let mut d = det(5, 60);
        let t0 = Instant::now();
        assert!(d.observe(&del("t", 4, false), t0).is_none());
        // 61 s later the first 4 rows have left the window.
        assert!(d
            .observe(&del("t", 4, false), t0 + Duration::from_secs(61))
            .is_none());
        assert!(d
            .observe(&del("t", 1, false), t0 + Duration::from_secs(62))
            .is_some());
    }

    #[test]
    fn tables_are_counted_separately() {
        let mut d = det(3, 60);
        let t0 = Instant::now();
        assert!(d.observe(&del("a", 2, false), t0).is_none());
        assert!(d.observe(&del("b", 2, false), t0).is_none());
        assert!(d.observe(&del("a", 1, false), t0).is_some());
    }

    #[test]
    fn a_long_purge_alerts_once_per_window() {
        let mut d = det(5, 60);
        let t0 = Instant::now();
        let mut alerts = 0;
        for s in 0..180 {
            if d.observe(&del("t", 10, false), t0 + Duration::from_secs(s))
                .is_some()
            {
                alerts += 1;
            }
        }
        assert_eq!(alerts, 3);
        assert!(d.observe(&del("t", 0, false), t0).is_none());
    }

    #[test]
    fn statement_events_feed_the_monitor_and_alerts_are_events() {
        let mut m = Monitor::new(&MassDeleteConfig {
            rows: 3,
            window_secs: 60,
            webhook: None,
        })
        .unwrap();
        let ev = |verdict: &str, tag: &str, status: &str| -> String {
            serde_json::json!({
                "v": 1, "type": "statement", "user": "app",
                "statement": {
                    "kind": "delete", "tables": ["public.users", "public.banned"],
                    "verdict": verdict, "class": "WRITE", "protocol": "simple",
                    "sql": "DELETE FROM users USING banned WHERE …", "fingerprint": "f",
                    "outcome": {"status": status, "command_tag": tag, "duration_us": 5}
                }
            })
            .to_string()
        };
        assert!(m.inspect(&[ev("allowed", "DELETE 1", "ok")]).is_empty());
        // Blocked and failed statements deleted nothing.
        assert!(m.inspect(&[ev("blocked", "DELETE 9", "ok")]).is_empty());
        assert!(m.inspect(&[ev("allowed", "DELETE 9", "error")]).is_empty());
        let alerts = m.inspect(&[ev("rewritten", "DELETE 2", "ok")]);
        assert_eq!(alerts.len(), 1);
        let a: serde_json::Value = serde_json::from_str(&alerts[0]).unwrap();
        assert_eq!(a["type"], "alert");
        assert_eq!(a["alert"]["kind"], "mass_deletion");
        assert_eq!(a["alert"]["table"], "public.users");
        assert_eq!(a["alert"]["rows"], 3);
        assert!(a["alert"]["message"]
            .as_str()
            .unwrap()
            .contains("1 hard, 2 soft"));
    }

    #[test]
    fn command_tags_give_rows() {
        assert_eq!(deleted_rows("DELETE 42"), Some(42));
        assert_eq!(deleted_rows("DELETE 0"), Some(0));
        assert_eq!(deleted_rows("UPDATE 3"), None);
        assert_eq!(deleted_rows("DELETE x"), None);
    }

    #[test]
    fn config_must_have_a_positive_threshold_and_window() {
        let mut c = MassDeleteConfig::default();
        assert!(c.validate().is_ok());
        c.rows = 0;
        assert!(c.validate().is_err());
        let c = MassDeleteConfig {
            window_secs: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
