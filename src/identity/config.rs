//! The `[context]` and `[identity]` tables (documented in
//! `config/pgward.toml`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pgclient::CredentialsConfig;
use crate::policy::context::{default_protect, ContextProtection, RoleGuard};

/// `[context]`: settings pgward pins on each server connection, and the
/// names no client may write. Keys other than the named ones are setting
/// names (`"app.tenant_id" = "{jwt.org_id}"`) whose values are templates.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ContextConfig {
    /// Globs of setting names no client may write (`context_spoofing`).
    #[serde(default = "default_protect")]
    pub protect: Vec<String>,
    /// Who may change role: `verified` (only Postgres-user identities),
    /// `all` (nobody may), `none` (the rule never looks at roles).
    #[serde(default)]
    pub guard_role: RoleGuard,
    /// Per Postgres user (the startup `user`): settings that override the
    /// global ones.
    #[serde(default)]
    pub users: BTreeMap<String, BTreeMap<String, String>>,
    /// Per database: settings that override the global ones (a per-user
    /// value wins over a per-database one).
    #[serde(default)]
    pub databases: BTreeMap<String, BTreeMap<String, String>>,
    /// Global settings: name → template.
    #[serde(flatten)]
    pub settings: BTreeMap<String, String>,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            protect: default_protect(),
            guard_role: RoleGuard::default(),
            users: BTreeMap::new(),
            databases: BTreeMap::new(),
            settings: BTreeMap::new(),
        }
    }
}

impl ContextConfig {
    pub fn protection(&self) -> ContextProtection {
        ContextProtection {
            protect: self.protect.clone(),
            guard_role: self.guard_role,
        }
    }
}

/// Where the session's identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdentitySource {
    /// The client authenticates to Postgres itself (relayed unchanged).
    #[default]
    Passthrough,
    /// The client sends a JWT as its password (over TLS); pgward verifies it
    /// and logs in upstream as `identity.upstream`.
    Jwt,
    /// The client presents a TLS certificate signed by
    /// `client_tls.client_ca_file`; pgward logs in upstream as
    /// `identity.upstream`.
    Certificate,
}

/// `[identity]`.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub source: IdentitySource,
    /// The role pgward logs in as for verified (JWT, certificate) identities.
    pub upstream: CredentialsConfig,
    pub jwt: JwtConfig,
}

/// `[identity.jwt]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Accepted algorithms: any of HS256, RS256, ES256.
    pub algorithms: Vec<String>,
    /// HS256 shared secret (raw bytes of the file, trailing newline removed).
    pub secret_file: Option<PathBuf>,
    /// RS256/ES256 public key, PEM (SPKI `PUBLIC KEY`, or `RSA PUBLIC KEY`).
    pub public_key_file: Option<PathBuf>,
    /// A JWKS JSON file; the token's `kid` picks the key.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values, when set (the token must name one of them).
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Tokens longer than this are refused before decoding.
    pub max_token_bytes: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithms: vec!["RS256".into(), "ES256".into()],
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: Vec::new(),
            leeway_secs: 30,
            max_token_bytes: 16 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    #[test]
    fn context_and_identity_tables_parse() {
        let cfg = Config::from_toml(
            r#"
[identity]
source = "passthrough"
[context]
"app.current_user_id" = "{user}"
protect = ["app.*"]
guard_role = "all"
[context.users.billing_svc]
"app.current_service" = "billing"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(cfg.context.settings["app.current_user_id"], "{user}");
        assert_eq!(
            cfg.context.users["billing_svc"]["app.current_service"],
            "billing"
        );
        assert_eq!(
            cfg.policy_config().context.guard_role,
            crate::policy::RoleGuard::All
        );
    }

    #[test]
    fn mistakes_are_reported() {
        let e = Config::from_toml("[identity]\nsorce = \"jwt\"\n", "t.toml").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { line: 2, .. }), "{e}");
        let e = Config::from_toml("[context]\n\"app.x\" = 5\n", "t.toml").unwrap_err();
        assert!(e.to_string().contains("t.toml"), "{e}");
        let e = Config::from_toml("[context]\n\"app.x\" = \"{nope}\"\n", "t.toml").unwrap_err();
        assert!(e.to_string().contains("unknown template variable"), "{e}");
        let e = Config::from_toml("[context]\n\"other.x\" = \"1\"\n", "t.toml").unwrap_err();
        assert!(
            e.to_string().contains("not covered by context.protect"),
            "{e}"
        );
    }
}
