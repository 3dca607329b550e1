//! pgward's own connections to Postgres: schema checks, the `postgres` audit
//! sink, upstream logins for verified identities. They go through the same
//! connect path as client sessions (TCP or unix socket, TLS as libpq would
//! negotiate it), then speak the protocol with `tokio-postgres`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::UpstreamConfig;
use crate::proxy::upstream::{self, Target};
use crate::tls;

/// Where pgward's own credentials come from. The password is never written
/// in the config itself: a file (first line, trailing newline ignored) or an
/// environment variable.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    pub user: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
}

/// Resolved credentials. `Debug` hides the password so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl CredentialsConfig {
    /// Read the password from its file or variable. Errors name the source,
    /// never the secret.
    pub fn resolve(&self) -> Result<Credentials, String> {
        if self.user.is_empty() {
            return Err("credentials: user is empty".into());
        }
        let password = match (&self.password_file, &self.password_env) {
            (Some(_), Some(_)) => {
                return Err("credentials: set password_file or password_env, not both".into())
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("credentials: cannot read {}: {e}", path.display()))?;
                Some(text.lines().next().unwrap_or("").to_string())
            }
            (None, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|_| format!("credentials: environment variable {var} is not set"))?,
            ),
            (None, None) => None,
        };
        Ok(Credentials {
            user: self.user.clone(),
            password,
        })
    }
}

/// Connect to `database` on the configured upstream as `creds`. The
/// connection task runs in the background and ends when the client drops.
pub async fn connect(
    upstream_cfg: &UpstreamConfig,
    creds: &Credentials,
    database: &str,
    timeout: Duration,
) -> anyhow::Result<tokio_postgres::Client> {
    let target = Target::from_config(upstream_cfg);
    let upstream_tls = tls::upstream_connector(&upstream_cfg.tls, &upstream_cfg.host)?;
    let stream = tokio::time::timeout(timeout, upstream::connect(&target, upstream_tls.as_ref()))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {target}: timed out after {timeout:?}"))?
        .map_err(|e| anyhow::anyhow!("connecting to {target}: {e}"))?;
    let mut pg = tokio_postgres::Config::new();
    pg.user(&creds.user)
        .dbname(database)
        .application_name("pgward")
        // TLS, when configured, is already negotiated on `stream`.
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    if let Some(pw) = &creds.password {
        pg.password(pw);
    }
    let (client, connection) =
        tokio::time::timeout(timeout, pg.connect_raw(stream, tokio_postgres::NoTls))
            .await
            .map_err(|_| anyhow::anyhow!("logging in to {target} as {}: timed out", creds.user))?
            .map_err(|e| {
                anyhow::anyhow!("logging in to {target} as {}: {}", creds.user, describe(&e))
            })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "pgward's own upstream connection ended");
        }
    });
    Ok(client)
}

/// A `tokio_postgres` error with the server's SQLSTATE and message when
/// there is one (its `Display` says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_comes_from_a_file_and_never_shows_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cr'et\n").unwrap();
        let creds = CredentialsConfig {
            user: "audit".into(),
            password_file: Some(path),
            password_env: None,
        }
        .resolve()
        .unwrap();
        assert_eq!(creds.password.as_deref(), Some("s3cr'et"));
        assert!(!format!("{creds:?}").contains("s3cr"));
    }

    #[test]
    fn missing_sources_are_named() {
        let e = CredentialsConfig {
            user: "u".into(),
            password_file: None,
            password_env: Some("PGWARD_TEST_SURELY_UNSET_VAR".into()),
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("PGWARD_TEST_SURELY_UNSET_VAR"));
        assert!(CredentialsConfig::default().resolve().is_err());
    }
}
