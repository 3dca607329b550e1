//! Who the client is, and the Row-Level-Security context that follows.
//!
//! Three sources (`[identity] source`): the Postgres user the client
//! authenticated as (passthrough, the default), a JWT sent as the password
//! over TLS, or a TLS client certificate. For the last two pgward
//! authenticates the client itself and logs in upstream as
//! `identity.upstream`. In every case the `[context]` settings are rendered
//! from the identity and pinned with `set_config` before the client's first
//! ReadyForQuery ([`apply`]); the `context_spoofing` policy rule
//! ([`crate::policy::context`]) and the startup-parameter check
//! ([`startup_guard`]) keep clients from changing them.

pub mod apply;
pub mod cert;
pub mod config;
pub mod context;
pub mod jwt;
pub mod login;
pub mod startup_guard;
pub mod startup_packet;
pub mod template;

use std::net::IpAddr;

pub use config::{ContextConfig, IdentityConfig, IdentitySource, JwtConfig};

use crate::config::Config;
use crate::pgclient::Credentials;
use crate::policy::{Identity, IdentityKind};
use crate::proxy::stream::ClientStream;
use crate::wire::errors::{sqlstate, PgError};
use crate::wire::startup::StartupMessage;
use context::ContextPlan;
use jwt::JwtVerifier;
use template::Values;

/// What a configuration load prepares once for every session.
#[derive(Debug, Default)]
pub struct Runtime {
    pub source: IdentitySource,
    pub plan: ContextPlan,
    pub jwt: Option<JwtVerifier>,
    pub guard: crate::policy::ContextProtection,
}

impl Runtime {
    /// Compile templates and load keys; errors are config errors.
    pub fn build(cfg: &Config) -> Result<Runtime, String> {
        let plan = ContextPlan::compile(&cfg.context)?;
        let source = cfg.identity.source;
        let jwt = match source {
            IdentitySource::Jwt => Some(JwtVerifier::from_config(&cfg.identity.jwt)?),
            _ => None,
        };
        if source != IdentitySource::Passthrough {
            if cfg.identity.upstream.user.is_empty() {
                return Err(
                    "identity.upstream.user must name the role pgward logs in as for verified identities"
                        .into(),
                );
            }
            cfg.identity.upstream.resolve()?;
            if cfg.client_tls.mode == crate::config::ClientTlsMode::Disable {
                return Err(format!(
                    "identity.source = {source:?} needs client TLS (client_tls.mode allow or require)"
                ));
            }
        }
        if source == IdentitySource::Certificate && cfg.client_tls.client_ca_file.is_none() {
            return Err("identity.source = certificate needs client_tls.client_ca_file".into());
        }
        if cfg.policy.mode == crate::policy::Mode::Off && !plan.is_empty() {
            tracing::warn!("policy.mode = \"off\": [context] settings are pinned but nothing stops clients from changing them");
        }
        Ok(Runtime {
            source,
            plan,
            jwt,
            guard: cfg.context.protection(),
        })
    }
}

/// What pgward established about a session before connecting upstream.
#[derive(Debug)]
pub struct Admission {
    pub identity: Identity,
    /// Settings to pin, in order.
    pub settings: Vec<(String, String)>,
    /// For verified identities: the role pgward logs in as.
    pub login: Option<Credentials>,
    /// The verified JWT's claims (for audit).
    pub claims: Option<serde_json::Value>,
    /// The StartupMessage to send upstream (see [`startup_packet`]).
    pub upstream_startup: bytes::Bytes,
    /// The Postgres role the session runs as: the client's user name, or
    /// pgward's login role for verified identities (rules scoped by user
    /// match this, never a name a JWT client merely claimed).
    pub user: String,
}

impl Admission {
    /// The audit event's `identity` field: kind and subject, plus the JWT's
    /// `iss` or the certificate names (no other claims: they may be personal
    /// data the operator did not ask to record). `None` for Postgres users.
    pub fn audit_identity(&self) -> Option<std::collections::BTreeMap<String, String>> {
        if self.identity.kind == IdentityKind::PostgresUser {
            return None;
        }
        let mut m = std::collections::BTreeMap::new();
        m.insert("kind".to_string(), self.identity.kind.as_str().to_string());
        m.insert("subject".to_string(), self.identity.subject.clone());
        if let Some(iss) = self.claims.as_ref().and_then(|c| c.get("iss")?.as_str()) {
            m.insert("iss".to_string(), iss.to_string());
        }
        Some(m)
    }

    /// The audit event's `context` field: the settings pgward pinned.
    pub fn audit_context(&self) -> Option<std::collections::BTreeMap<String, String>> {
        (!self.settings.is_empty()).then(|| self.settings.iter().cloned().collect())
    }
}

/// A refusal: the FATAL error for the client and a reason label for metrics.
#[derive(Debug)]
pub struct Refusal {
    pub error: PgError,
    pub label: &'static str,
    /// What to log (may say more than the client sees; never secrets).
    pub log: String,
}

fn refuse(code: &'static str, label: &'static str, message: String) -> Refusal {
    Refusal {
        error: PgError::fatal(code, format!("pgward: {message}")),
        label,
        log: message,
    }
}

/// Establish who the client is (asking for a token when that is the source),
/// check its startup parameters and render its context.
pub async fn admit(
    rt: &Runtime,
    cfg: &Config,
    client: &mut ClientStream,
    startup: &StartupMessage,
    client_addr: Option<IpAddr>,
    session_id: u64,
) -> Result<Admission, Refusal> {
    let kind = match rt.source {
        IdentitySource::Passthrough => IdentityKind::PostgresUser,
        IdentitySource::Jwt => IdentityKind::Jwt,
        IdentitySource::Certificate => IdentityKind::Certificate,
    };
    if let Some(name) = startup_guard::forbidden_startup_setting(&startup.params, &rt.guard, kind) {
        return Err(refuse(
            "42501",
            "context_spoofing",
            format!("startup parameter {name} names a setting pgward pins; remove it"),
        ));
    }
    let mut claims = None;
    let mut cert_names = cert::CertNames::default();
    let mut subject = String::new();
    match rt.source {
        IdentitySource::Passthrough => {}
        IdentitySource::Jwt => {
            if !client.is_tls() {
                return Err(refuse(
                    sqlstate::INVALID_AUTHORIZATION,
                    "jwt_without_tls",
                    "a JWT is only accepted over TLS; connect with sslmode=require".into(),
                ));
            }
            let token = login::ask_client_password(client).await.map_err(|e| {
                refuse(
                    sqlstate::INVALID_AUTHORIZATION,
                    "jwt_protocol",
                    e.to_string(),
                )
            })?;
            let verifier = rt.jwt.as_ref().ok_or_else(|| {
                refuse(
                    sqlstate::INVALID_AUTHORIZATION,
                    "jwt_config",
                    "no JWT keys loaded".into(),
                )
            })?;
            let c = verifier.verify(&token).map_err(|e| {
                refuse(
                    "28P01",
                    "jwt_invalid",
                    format!(
                        "JWT authentication failed for user \"{}\": {e}",
                        startup.user()
                    ),
                )
            })?;
            subject = c
                .get("sub")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string();
            claims = Some(c);
        }
        IdentitySource::Certificate => {
            let der = client.peer_certificate().ok_or_else(|| {
                refuse(
                    sqlstate::INVALID_AUTHORIZATION,
                    "certificate_missing",
                    "a client certificate is required; connect over TLS with sslcert/sslkey".into(),
                )
            })?;
            cert_names = cert::names(&der)
                .map_err(|e| refuse(sqlstate::INVALID_AUTHORIZATION, "certificate_invalid", e))?;
            subject = cert_names.cn.clone().unwrap_or_default();
        }
    }
    let login: Option<Credentials> = match rt.source {
        IdentitySource::Passthrough => None,
        _ => Some(cfg.identity.upstream.resolve().map_err(|e| Refusal {
            error: PgError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "pgward: upstream credentials for verified identities are unavailable",
            ),
            label: "upstream_credentials",
            log: e,
        })?),
    };
    // For verified identities the startup user name is only the client's
    // say-so: {user} is the role pgward logs in as, and per-user context is
    // looked up by the verified subject.
    let (user, layer_key) = match &login {
        Some(c) => (c.user.clone(), subject.clone()),
        None => (startup.user().to_string(), startup.user().to_string()),
    };
    let values = Values {
        user: &user,
        database: startup.database(),
        client_addr,
        session_id,
        application_name: startup.param("application_name").unwrap_or(""),
        jwt: claims.as_ref(),
        cert_cn: cert_names.cn.as_deref(),
        cert_san: cert_names.san.as_deref(),
    };
    let settings = rt
        .plan
        .render(&layer_key, startup.database(), &values)
        .map_err(|e| {
            refuse(
                sqlstate::INVALID_AUTHORIZATION,
                "context_missing",
                format!("cannot build the session context: {e}"),
            )
        })?;
    let upstream_startup = startup_packet::upstream_packet(
        startup,
        login.as_ref().map(|c| c.user.as_str()),
        &settings,
    )
    .map_err(|e| {
        refuse(
            sqlstate::INVALID_AUTHORIZATION,
            "context_invalid",
            format!("cannot pin the session context: {e}"),
        )
    })?;
    Ok(Admission {
        identity: Identity {
            kind,
            subject,
            pinned: !settings.is_empty(),
        },
        settings,
        login,
        claims,
        upstream_startup,
        user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_fields_name_the_identity_and_the_pinned_context() {
        let a = Admission {
            identity: Identity {
                kind: IdentityKind::Jwt,
                subject: "alice".into(),
                pinned: true,
            },
            settings: vec![("app.tenant_id".into(), "t1".into())],
            login: None,
            claims: Some(serde_json::json!({"sub": "alice", "iss": "https://idp", "email": "a@x"})),
            upstream_startup: bytes::Bytes::new(),
            user: "rls_app".into(),
        };
        let id = a.audit_identity().unwrap();
        assert_eq!(id["kind"], "jwt");
        assert_eq!(id["subject"], "alice");
        assert_eq!(id["iss"], "https://idp");
        assert!(!id.contains_key("email"));
        assert_eq!(a.audit_context().unwrap()["app.tenant_id"], "t1");
        let plain = Admission {
            identity: Identity::default(),
            settings: Vec::new(),
            login: None,
            claims: None,
            upstream_startup: bytes::Bytes::new(),
            user: "rls_app".into(),
        };
        assert!(plain.audit_identity().is_none() && plain.audit_context().is_none());
    }
}
