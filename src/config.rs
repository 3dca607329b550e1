//! The pgward configuration file: TOML, strict (unknown keys are errors) and
//! fully defaulted, so `pgward run --upstream 127.0.0.1:5432` works without one.
//!
//! `config/pgward.toml` is the annotated reference for every key below; a test
//! loads it so the two never drift.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configuration error with enough context for an operator to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub client_tls: ClientTlsConfig,
    pub limits: LimitsConfig,
    pub timeouts: TimeoutsConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub audit: crate::audit::AuditConfig,
    pub identity: crate::identity::IdentityConfig,
    pub context: crate::identity::ContextConfig,
    /// Served by `/policy` from the file's own `[policy]` table.
    #[serde(skip_serializing)]
    pub policy: crate::policy::PolicyConfig,
    /// How the soft-delete tables of the policy are checked live.
    pub soft_delete_check: crate::soft_delete_check::SoftDeleteCheckConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Addresses pgward accepts clients on.
    pub addresses: Vec<String>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            addresses: vec!["127.0.0.1:6432".to_string()],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    /// Unix socket directory; when set it wins over `host`.
    pub socket_dir: Option<PathBuf>,
    pub tls: UpstreamTlsConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            host: "127.0.0.1".to_string(),
            port: 5432,
            socket_dir: None,
            tls: UpstreamTlsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    #[default]
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    pub mode: UpstreamTlsMode,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name checked against the server certificate; defaults to `upstream.host`.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    #[default]
    Disable,
    Allow,
    Require,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    pub mode: ClientTlsMode,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA whose certificates TLS clients must present (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_client_connections: usize,
    pub max_startup_packet: usize,
    pub max_message_size: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_client_connections: 1000,
            max_startup_packet: 10_000,
            max_message_size: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// Seconds a client has from connecting to its first ReadyForQuery.
    pub startup_secs: u64,
    /// Seconds to establish the upstream TCP/TLS connection.
    pub connect_secs: u64,
    /// Close sessions idle (outside a transaction) this long; 0 = never.
    pub idle_secs: u64,
    /// On SIGTERM, seconds sessions get to finish their transaction before
    /// they are closed with 57P01.
    pub shutdown_secs: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            startup_secs: 30,
            connect_secs: 10,
            idle_secs: 0,
            shutdown_secs: 30,
        }
    }
}

impl TimeoutsConfig {
    pub fn startup(&self) -> Duration {
        Duration::from_secs(self.startup_secs)
    }
    pub fn connect(&self) -> Duration {
        Duration::from_secs(self.connect_secs)
    }
    pub fn shutdown(&self) -> Duration {
        Duration::from_secs(self.shutdown_secs)
    }
    pub fn idle(&self) -> Option<Duration> {
        (self.idle_secs > 0).then(|| Duration::from_secs(self.idle_secs))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `pgward=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin HTTP port (/metrics, /healthz, /readyz,
    /// /policy); `""` = no admin port. Unset: [`DEFAULT_ADMIN_LISTEN`],
    /// best effort (a busy port is logged, not fatal); set: must bind.
    pub listen: Option<String>,
    /// File holding a bearer token required for /metrics and /policy.
    pub bearer_token_file: Option<PathBuf>,
}

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9187";

impl AdminConfig {
    /// The address to serve on and whether failing to bind it is fatal.
    pub fn listen_addr(&self) -> Option<(&str, bool)> {
        match self.listen.as_deref() {
            None => Some((DEFAULT_ADMIN_LISTEN, false)),
            Some("") => None,
            Some(a) => Some((a, true)),
        }
    }
}

impl Config {
    /// Parse and validate a config from TOML text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_string(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        crate::audit::postgres_sink::protect_sink_tables(&config.audit, &mut config.policy);
        crate::policy::Policy::from_config(&config.policy_config()).map_err(|e| {
            match policy_error_location(text, &e) {
                Some((line, column)) => ConfigError::Parse {
                    path: path.to_string(),
                    line,
                    column,
                    message: e.to_string(),
                },
                None => ConfigError::Invalid {
                    path: path.to_string(),
                    message: e.to_string(),
                },
            }
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_string(),
            message,
        })?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// The `[policy]` table with the `[context]` protection it enforces.
    pub fn policy_config(&self) -> crate::policy::PolicyConfig {
        let mut p = self.policy.clone();
        p.context = self.context.protection();
        p
    }

    /// Checks that need more than one key, or a value serde cannot check.
    pub fn validate(&self) -> Result<(), String> {
        crate::identity::context::ContextPlan::compile(&self.context)?;
        if self.listen.addresses.is_empty() {
            return Err("listen.addresses must name at least one address".into());
        }
        for a in &self.listen.addresses {
            a.parse::<SocketAddr>()
                .map_err(|e| format!("listen.addresses: {a:?} is not an address:port ({e})"))?;
        }
        if self.client_tls.mode != ClientTlsMode::Disable
            && (self.client_tls.cert_file.is_none() || self.client_tls.key_file.is_none())
        {
            return Err("client_tls.mode allows TLS but cert_file/key_file are not set".into());
        }
        let t = &self.upstream.tls;
        if matches!(
            t.mode,
            UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull
        ) && t.ca_file.is_none()
        {
            return Err(
                "upstream.tls.mode verify-ca/verify-full needs upstream.tls.ca_file".into(),
            );
        }
        if t.cert_file.is_some() != t.key_file.is_some() {
            return Err("upstream.tls.cert_file and key_file must be set together".into());
        }
        if let Some((listen, _)) = self.admin.listen_addr() {
            listen
                .parse::<SocketAddr>()
                .map_err(|e| format!("admin.listen: {listen:?} is not an address:port ({e})"))?;
        }
        self.audit.validate()?;
        if self.limits.max_client_connections == 0 {
            return Err("limits.max_client_connections must be at least 1".into());
        }
        if self.limits.max_startup_packet < 8 {
            return Err("limits.max_startup_packet must be at least 8".into());
        }
        if self.limits.max_message_size < 5 {
            return Err("limits.max_message_size must be at least 5".into());
        }
        if self.timeouts.startup_secs == 0 || self.timeouts.connect_secs == 0 {
            return Err("timeouts.startup_secs and connect_secs must be positive".into());
        }
        Ok(())
    }
}

/// Where in the file a policy error points: the quoted value it names
/// (`id = "…"` first for rule ids; the last occurrence for duplicates).
fn policy_error_location(text: &str, e: &crate::policy::PolicyError) -> Option<(usize, usize)> {
    use crate::policy::PolicyError as E;
    let (needle, is_id) = match e {
        E::InvalidCidr { value, .. } => (value.as_str(), false),
        E::UnknownKind { kind, .. } => (kind.as_str(), false),
        E::UnknownFunction(f) => (f.as_str(), false),
        E::DuplicateRuleId(id) | E::BadRuleId(id) | E::EmptyCustomRule(id) => (id.as_str(), true),
        _ => return None,
    };
    let quoted = format!("\"{needle}\"");
    let last = matches!(e, E::DuplicateRuleId(_));
    let find = |pat: &str| {
        if last {
            text.rfind(pat)
        } else {
            text.find(pat)
        }
    };
    let at = if is_id {
        ["id = ", "id="]
            .iter()
            .find_map(|prefix| find(&format!("{prefix}{quoted}")).map(|i| i + prefix.len()))
            .or_else(|| find(&quoted))
    } else {
        find(&quoted)
    }?;
    Some(line_column(text, at))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_an_error_with_line_and_column() {
        let err = Config::from_toml(
            "[limits]\nmax_client_connections = 5\nbogus = 1\n",
            "t.toml",
        )
        .unwrap_err();
        match err {
            ConfigError::Parse { line, column, .. } => assert_eq!((line, column), (3, 1)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", "t.toml").unwrap();
        assert_eq!(c.limits.max_startup_packet, 10_000);
        assert_eq!(c.timeouts.startup_secs, 30);
    }

    #[test]
    fn policy_errors_point_at_the_offending_value() {
        let text = "[policy]\nmode = \"enforce\"\n\n[[policy.custom]]\nid = \"empty\"\naction = \"block\"\n";
        match Config::from_toml(text, "p.toml").unwrap_err() {
            ConfigError::Parse { line, column, .. } => assert_eq!((line, column), (5, 6)),
            other => panic!("unexpected {other:?}"),
        }
        let text = "[[policy.custom]]\nid = \"k\"\naction = \"block\"\nkinds = [\"select\", \"frobnicate\"]\n";
        let e = Config::from_toml(text, "p.toml").unwrap_err().to_string();
        assert!(e.starts_with("p.toml:4:20: "), "{e}");
    }

    #[test]
    fn tls_without_cert_is_rejected() {
        let e = Config::from_toml("[client_tls]\nmode = \"require\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("cert_file"));
    }
}
