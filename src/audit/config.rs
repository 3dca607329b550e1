//! `[audit]` and `[[audit.sinks]]`: what is audited, how it is queued, where
//! it goes. Documented key by key in `config/pgward.toml`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::http_sink::HttpSinkConfig;
use super::postgres_sink::PostgresSinkConfig;
use super::syslog_sink::SyslogSinkConfig;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events waiting for the sinks; beyond this `on_full` decides.
    pub queue_capacity: usize,
    pub on_full: OnFull,
    /// Most events handed to a sink in one `deliver`.
    pub batch_max: usize,
    /// After the first event of a batch, wait this long for more before
    /// handing the batch to the sinks: under load one hand-off and one
    /// write then serve many statements instead of one each. Sessions never
    /// wait for it (only for a full queue). 0 hands each read on at once.
    pub linger_ms: u64,
    /// Replace literals in logged SQL by `$n` placeholders.
    pub redact_literals: bool,
    /// Log the values of extended-protocol Bind parameters.
    pub log_parameters: bool,
    /// Longest SQL text kept in an event (bytes); longer text is cut and
    /// marked, the fingerprint still covers all of it.
    pub max_sql_bytes: usize,
    pub filter: FilterConfig,
    /// No sinks: auditing is off.
    pub sinks: Vec<SinkConfig>,
    /// `[audit.mass_delete]`: unset = no mass-deletion alerts.
    pub mass_delete: Option<super::mass_delete::MassDeleteConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            queue_capacity: 65_536,
            on_full: OnFull::Block,
            batch_max: 1024,
            linger_ms: 2,
            redact_literals: true,
            log_parameters: false,
            max_sql_bytes: 16 * 1024,
            filter: FilterConfig::default(),
            sinks: Vec::new(),
            mass_delete: None,
        }
    }
}

/// Longest `audit.linger_ms` accepted.
pub const MAX_LINGER_MS: u64 = 1000;

impl AuditConfig {
    pub fn enabled(&self) -> bool {
        !self.sinks.is_empty()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.queue_capacity == 0 || self.batch_max == 0 {
            return Err("audit.queue_capacity and audit.batch_max must be at least 1".into());
        }
        // Events wait this long before any sink sees them; beyond a second
        // it is a typo, not a batching choice (and a full queue would hold
        // sessions for as long).
        if self.linger_ms > MAX_LINGER_MS {
            return Err(format!(
                "audit.linger_ms = {} is too long (at most {MAX_LINGER_MS})",
                self.linger_ms
            ));
        }
        for c in self
            .filter
            .classes
            .iter()
            .chain(&self.filter.exclude_classes)
        {
            if !CLASS_NAMES.contains(&c.to_ascii_uppercase().as_str()) {
                return Err(format!(
                    "audit.filter: unknown class {c:?} (one of {})",
                    CLASS_NAMES.join(", ")
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.sinks {
            if !names.insert(s.name()) {
                return Err(format!(
                    "audit.sinks: two sinks are named {:?}; give each a distinct `name`",
                    s.name()
                ));
            }
            match s {
                SinkConfig::File(f) if f.path.as_os_str().is_empty() => {
                    return Err("audit.sinks: a file sink needs `path`".into());
                }
                SinkConfig::File(f) => f.validate()?,
                SinkConfig::Http(c) => c.validate()?,
                SinkConfig::Postgres(c) => c.validate()?,
                SinkConfig::Syslog(c) => c.validate()?,
                _ => {}
            }
        }
        if let Some(m) = &self.mass_delete {
            m.validate()?;
        }
        Ok(())
    }
}

/// Statement classes a filter can name (pgAudit's, plus `ALL`).
pub const CLASS_NAMES: &[&str] = &[
    "READ", "WRITE", "FUNCTION", "ROLE", "DDL", "MISC", "MISC_SET", "ALL",
];

/// What happens when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Back-pressure: the session waits until the event fits.
    #[default]
    Block,
    /// Drop the event and count it (`pgward_audit_dropped_total`).
    Drop,
    /// Refuse the statement with an error: it cannot be audited.
    FailClosed,
}

/// Which statements are audited. Connection, auth, policy and alert events
/// are always audited; so is every statement whose verdict is not `allowed`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Classes audited (`ALL` = every class).
    pub classes: Vec<String>,
    pub exclude_classes: Vec<String>,
    /// Empty = every user.
    pub users: Vec<String>,
    pub exclude_users: Vec<String>,
    pub databases: Vec<String>,
    pub exclude_databases: Vec<String>,
    /// Table globs (`public.*`, `audit_*`); a statement matches when it
    /// touches one of them. Empty = every statement.
    pub tables: Vec<String>,
    pub exclude_tables: Vec<String>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            classes: vec!["WRITE".into(), "DDL".into(), "ROLE".into()],
            exclude_classes: Vec::new(),
            users: Vec::new(),
            exclude_users: Vec::new(),
            databases: Vec::new(),
            exclude_databases: Vec::new(),
            tables: Vec::new(),
            exclude_tables: Vec::new(),
        }
    }
}

/// One `[[audit.sinks]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    File(FileSinkConfig),
    Stdout(StdoutSinkConfig),
    Http(HttpSinkConfig),
    Postgres(PostgresSinkConfig),
    Syslog(SyslogSinkConfig),
}

impl SinkConfig {
    /// The sink's name in metrics and logs: its `name`, else its type.
    pub fn name(&self) -> String {
        match self {
            SinkConfig::File(c) => c.name.clone().unwrap_or_else(|| "file".into()),
            SinkConfig::Stdout(c) => c.name.clone().unwrap_or_else(|| "stdout".into()),
            SinkConfig::Http(c) => c.sink_name(),
            SinkConfig::Postgres(c) => c.sink_name(),
            SinkConfig::Syslog(c) => c.sink_name(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every batch.
    Always,
    /// At most every `fsync_interval_ms`.
    #[default]
    Interval,
    /// Leave it to the OS.
    Never,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    pub name: Option<String>,
    /// The active file; rotated files sit next to it as
    /// `<stem>.<UTC time>.<ext>` and sort in chronological order.
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes; 0 = never.
    pub max_bytes: u64,
    /// Rotate at the first event of a new UTC day.
    pub rotate_daily: bool,
    /// Delete rotated files older than this many days; 0 = keep forever.
    pub retention_days: u64,
    /// Set: critical events (see [`super::sinks::critical`]) are also
    /// written to a second stream, `critical-<file name>`, with its own
    /// hash chain, rotation, and this retention (0 = keep forever).
    pub critical_retention_days: Option<u64>,
    pub fsync: Fsync,
    pub fsync_interval_ms: u64,
    /// When the sink thinks it is (rotation by day, retention). Not a config
    /// key: tests move it across midnight.
    #[serde(skip)]
    pub clock: Clock,
}

/// Microseconds since the Unix epoch, from the system clock unless a test
/// injects another.
#[derive(Clone)]
pub struct Clock(pub std::sync::Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock(std::sync::Arc::new(super::time::now_micros))
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig {
            name: None,
            path: PathBuf::new(),
            max_bytes: 256 * 1024 * 1024,
            rotate_daily: true,
            retention_days: 0,
            critical_retention_days: None,
            fsync: Fsync::Interval,
            fsync_interval_ms: 1000,
            clock: Clock::default(),
        }
    }
}

impl FileSinkConfig {
    fn validate(&self) -> Result<(), String> {
        // The main stream holds critical events too: a shorter critical
        // retention would keep them no longer, only spend a second copy.
        match self.critical_retention_days {
            Some(c) if c != 0 && (self.retention_days == 0 || c < self.retention_days) => {
                Err(format!(
                    "audit.sinks ({}): critical_retention_days = {c} keeps critical events less long than retention_days = {} keeps every event; make it longer (or 0 = forever)",
                    self.path.display(),
                    self.retention_days
                ))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutSinkConfig {
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrap {
        audit: AuditConfig,
    }

    #[test]
    fn sinks_are_tagged_by_type() {
        let w: Wrap = toml::from_str(
            "[[audit.sinks]]\ntype = \"file\"\npath = \"/tmp/a.jsonl\"\nfsync = \"always\"\n\n[[audit.sinks]]\ntype = \"stdout\"\n",
        )
        .unwrap();
        assert!(matches!(&w.audit.sinks[0], SinkConfig::File(f) if f.fsync == Fsync::Always));
        assert_eq!(w.audit.sinks[1].name(), "stdout");
        assert!(w.audit.validate().is_ok());
    }

    #[test]
    fn unknown_sink_key_and_type_are_errors() {
        assert!(toml::from_str::<Wrap>("[[audit.sinks]]\ntype = \"file\"\npth = \"x\"\n").is_err());
        assert!(toml::from_str::<Wrap>("[[audit.sinks]]\ntype = \"kafka\"\n").is_err());
    }

    #[test]
    fn duplicate_sink_names_and_bad_classes_are_rejected() {
        let w: Wrap = toml::from_str(
            "[[audit.sinks]]\ntype = \"stdout\"\n[[audit.sinks]]\ntype = \"stdout\"\n",
        )
        .unwrap();
        assert!(w.audit.validate().unwrap_err().contains("distinct"));
        let w: Wrap = toml::from_str("[audit.filter]\nclasses = [\"REED\"]\n").unwrap();
        assert!(w.audit.validate().unwrap_err().contains("REED"));
        let w: Wrap = toml::from_str("[audit]\nlinger_ms = 86400000\n").unwrap();
        assert!(w.audit.validate().unwrap_err().contains("linger_ms"));
        let w: Wrap = toml::from_str("[audit]\nlinger_ms = 0\n").unwrap();
        assert!(w.audit.validate().is_ok());
        assert!(toml::from_str::<Wrap>("[audit]\nlinger_ms = -1\n").is_err());
    }
}
