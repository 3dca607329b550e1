//! The `postgres` audit sink: batches COPYed into an audit table on
//! pgward's own connection (see [`crate::pgclient`]), never through a client
//! session.
//!
//! Each batch is one transaction: COPY into a temporary staging table, then
//! `INSERT … SELECT … ON CONFLICT (id) DO NOTHING` into the audit table, so
//! a batch offered again after a lost reply is stored once (delivery is at
//! least once; the event id is the primary key). Ok means committed.
//!
//! The table is created if missing. Clients must not be able to change it
//! through pgward: [`protect_table`] adds a blocking custom rule for every
//! write (INSERT, UPDATE, DELETE, MERGE, TRUNCATE, DROP) on it to the policy
//! whenever the sink is configured. Postgres privileges remain the second
//! wall: grant the sink's role INSERT only, and clients nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sink::Lines;
use crate::config::UpstreamConfig;
use crate::pgclient::{self, CredentialsConfig};
use crate::policy::config::{Access, Action, CustomRuleConfig, PolicyConfig};

fn default_table() -> String {
    "pgward_audit.audit_events".into()
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}

/// `[[audit.sinks]] type = "postgres"`. Documented in `config/pgward.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Name in metrics and logs; default: the sink's type.
    pub name: Option<String>,
    /// Database on the configured upstream that holds the audit table.
    pub database: String,
    /// `schema.table`; both parts plain identifiers (letters, digits, `_`).
    #[serde(default = "default_table")]
    pub table: String,
    /// pgward's own login (INSERT and CREATE on the schema; see the module doc).
    #[serde(default)]
    pub credentials: CredentialsConfig,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

/// The rule id [`protect_table`] adds.
pub const PROTECT_RULE_PREFIX: &str = "audit_table_protected";

impl PostgresSinkConfig {
    /// `name`, else the sink's type.
    pub fn sink_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| "postgres".into())
    }

    pub fn validate(&self) -> Result<(), String> {
        split_table(&self.table).map_err(|e| format!("audit sink {:?}: {e}", self.sink_name()))?;
        if self.database.is_empty() {
            return Err(format!(
                "audit sink {:?}: database is empty",
                self.sink_name()
            ));
        }
        self.credentials
            .resolve()
            .map(|_| ())
            .map_err(|e| format!("audit sink {:?}: {e}", self.sink_name()))
    }
}

/// `schema.table` → (schema, table), both checked to be plain identifiers
/// so they can be quoted without surprises.
fn split_table(t: &str) -> Result<(String, String), String> {
    let (schema, table) = t
        .split_once('.')
        .ok_or_else(|| format!("table {t:?} must be schema.table"))?;
    let ident = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    if !ident(schema) || !ident(table) {
        return Err(format!(
            "table {t:?}: schema and table must be lower-case identifiers (a-z, 0-9, _)"
        ));
    }
    Ok((schema.to_string(), table.to_string()))
}

/// Add to `policy` a custom rule that blocks every write to `table` (by its
/// qualified name, and by its bare name in any schema since pgward does not
/// know the session's search_path). The rule is appended last, so a
/// client's `allow` exemption cannot be written for it by accident… but an
/// operator's custom `allow` rule naming the table would still exempt it:
/// that is a deliberate act, logged by the audit like every statement.
pub fn protect_table(policy: &mut PolicyConfig, sink_name: &str, table: &str) {
    let bare = table.rsplit('.').next().unwrap_or(table).to_string();
    let id_suffix: String = sink_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    policy.custom.push(CustomRuleConfig {
        id: format!("{PROTECT_RULE_PREFIX}_{id_suffix}"),
        kinds: Vec::new(),
        tables: vec![table.to_string(), bare],
        access: Access::Write,
        functions: Vec::new(),
        action: Action::Block,
        message: Some(format!("writing to the audit table {table}")),
        hint: Some("the audit table is written by pgward only; read it with SELECT".into()),
        users: Vec::new(),
        databases: Vec::new(),
        applications: Vec::new(),
        client_cidrs: Vec::new(),
        except_users: Vec::new(),
        except_databases: Vec::new(),
        except_applications: Vec::new(),
        except_client_cidrs: Vec::new(),
    });
}

/// [`protect_table`] for every `postgres` sink of `audit` (called when the
/// config is loaded, so `run`, `check` and reloads all see the rule).
pub fn protect_sink_tables(audit: &crate::audit::AuditConfig, policy: &mut PolicyConfig) {
    for s in &audit.sinks {
        if let crate::audit::SinkConfig::Postgres(c) = s {
            protect_table(policy, &c.sink_name(), &c.table);
        }
    }
}

/// The columns of the audit table, in COPY order.
const COLUMNS: &str = "id, time, type, event";

pub struct PostgresSink {
    name: String,
    cfg: PostgresSinkConfig,
    upstream: UpstreamConfig,
    qualified: String,
    client: Option<tokio_postgres::Client>,
}

impl PostgresSink {
    /// Check the config; the connection is opened on the first delivery
    /// (and again after any error), so a database that is down at start
    /// does not stop pgward.
    pub fn new(cfg: &PostgresSinkConfig, upstream: &UpstreamConfig) -> anyhow::Result<Self> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let (schema, table) = split_table(&cfg.table).map_err(anyhow::Error::msg)?;
        Ok(PostgresSink {
            name: cfg.sink_name(),
            cfg: cfg.clone(),
            upstream: upstream.clone(),
            qualified: format!("\"{schema}\".\"{table}\""),
            client: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let creds = self.cfg.credentials.resolve().map_err(anyhow::Error::msg)?;
        let client = pgclient::connect(
            &self.upstream,
            &creds,
            &self.cfg.database,
            Duration::from_millis(self.cfg.connect_timeout_ms),
        )
        .await?;
        let (schema, _) = split_table(&self.cfg.table).map_err(anyhow::Error::msg)?;
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE IF NOT EXISTS {t} (
                 id text PRIMARY KEY,
                 time timestamptz NOT NULL,
                 type text NOT NULL,
                 event jsonb NOT NULL,
                 stored_at timestamptz NOT NULL DEFAULT now()
             );
             CREATE TEMP TABLE pgward_audit_stage (id text, time timestamptz, type text, event jsonb)
                 ON COMMIT DELETE ROWS;",
            t = self.qualified
        );
        client.batch_execute(&ddl).await.map_err(|e| {
            anyhow::anyhow!("preparing {}: {}", self.cfg.table, pgclient::describe(&e))
        })?;
        Ok(client)
    }

    /// Connect now (creating the table) and read the chain hash of the
    /// newest stored event, to continue the chain after a restart. A
    /// database that is down gives None (a new chain) and a warning; the
    /// sink keeps trying on every delivery.
    pub async fn resume(&mut self) -> Option<String> {
        if self.client.is_none() {
            match self.connect().await {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e,
                        "audit postgres sink: cannot read the last event; starting a new chain");
                    return None;
                }
            }
        }
        let client = self.client.as_ref()?;
        let sql = format!(
            "SELECT event->>'hash' FROM {} ORDER BY id DESC LIMIT 1",
            self.qualified
        );
        match client.query_opt(&sql, &[]).await {
            Ok(row) => row.and_then(|r| r.get::<_, Option<String>>(0)),
            Err(e) => {
                tracing::warn!(sink = %self.name, error = %pgclient::describe(&e),
                    "audit postgres sink: cannot read the last event; starting a new chain");
                None
            }
        }
    }

    /// COPY the batch in one transaction; Ok once committed. On any error
    /// the connection is dropped and the next call reconnects.
    pub async fn deliver(&mut self, batch: &Lines) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let data = copy_rows(batch)?;
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        let client = self.client.as_mut().expect("connected above");
        let result = copy_batch(client, &self.qualified, data).await;
        if let Err(e) = &result {
            tracing::warn!(sink = %self.name, error = %e, "audit postgres sink: batch not stored; reconnecting");
            self.client = None;
        } else {
            super::sink_metrics::sink_metrics()
                .delivered_events
                .with_label_values(&[&self.name])
                .inc_by(batch.len() as u64);
        }
        result.map_err(|e| anyhow::anyhow!("audit sink {:?}: {e}", self.name))
    }
}

async fn copy_batch(
    client: &mut tokio_postgres::Client,
    table: &str,
    data: Vec<u8>,
) -> Result<(), String> {
    use futures_util::SinkExt;
    let d = |e: tokio_postgres::Error| pgclient::describe(&e);
    let tx = client.transaction().await.map_err(d)?;
    let sink = tx
        .copy_in::<_, bytes::Bytes>(&format!("COPY pgward_audit_stage ({COLUMNS}) FROM STDIN"))
        .await
        .map_err(d)?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data)).await.map_err(d)?;
    sink.finish().await.map_err(d)?;
    tx.execute(
        &format!(
            "INSERT INTO {table} ({COLUMNS}) SELECT {COLUMNS} FROM pgward_audit_stage ON CONFLICT (id) DO NOTHING"
        ),
        &[],
    )
    .await
    .map_err(d)?;
    tx.commit().await.map_err(d)
}

/// The batch in COPY text format: id, time, type pulled out of each event,
/// the whole event as the last column.
fn copy_rows(batch: &Lines) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(batch.iter().map(|e| e.len() * 2 + 64).sum());
    for line in batch.iter() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("audit event is not JSON: {e}"))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .ok_or_else(|| anyhow::anyhow!("audit event has no string {k:?} field"))
        };
        for (i, col) in [field("id")?, field("time")?, field("type")?, line]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                out.push(b'\t');
            }
            copy_escape(col, &mut out);
        }
        out.push(b'\n');
    }
    Ok(out)
}

/// COPY text-format escaping: backslash, and the delimiter/line characters.
fn copy_escape(s: &str, out: &mut Vec<u8>) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_must_be_plain_qualified_identifiers() {
        assert!(split_table("pgward_audit.audit_events").is_ok());
        for bad in [
            "events", "a.b.c", "Bad.t", "s.\"t\"", "s.t;drop", ".t", "s.1t",
        ] {
            assert!(split_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn copy_rows_escape_backslashes_and_control_characters() {
        let ev = r#"{"id":"e1","time":"2026-01-01T00:00:00.000001Z","type":"statement","sql":"a\tb\\c"}"#;
        let rows = String::from_utf8(copy_rows(&[ev].into_iter().collect()).unwrap()).unwrap();
        assert_eq!(
            rows.matches('\t').count(),
            3,
            "only the three delimiters: {rows}"
        );
        assert!(rows.starts_with("e1\t2026-01-01T00:00:00.000001Z\tstatement\t{"));
        assert!(rows.contains(r#"a\\tb\\\\c"#), "{rows}");
        for bad in ["{\"id\":1}", "not json"] {
            assert!(copy_rows(&[bad].into_iter().collect()).is_err());
        }
    }

    #[test]
    fn protect_table_blocks_writes_but_not_reads() {
        use crate::policy::{LexOptions, Policy, PreparedRegistry, SessionScope, Verdict};
        let mut cfg = PolicyConfig::default();
        protect_table(&mut cfg, "pg main", "pgward_audit.audit_events");
        let policy = Policy::from_config(&cfg).unwrap();
        let scope = SessionScope::default();
        let reg = PreparedRegistry::default();
        let blocked = |sql: &str| {
            let v = policy
                .evaluate(sql, &scope, LexOptions::default(), &reg)
                .verdict;
            matches!(v, Verdict::Block(_))
        };
        for sql in [
            "DELETE FROM pgward_audit.audit_events WHERE id = 'x'",
            "UPDATE pgward_audit.audit_events SET type = 'y' WHERE id = 'x'",
            "TRUNCATE pgward_audit.audit_events",
            "INSERT INTO pgward_audit.audit_events (id) VALUES ('forged')",
            "DELETE FROM audit_events WHERE id = 'x'",
        ] {
            assert!(blocked(sql), "{sql}");
        }
        assert!(!blocked("SELECT count(*) FROM pgward_audit.audit_events"));
        assert!(!blocked("DELETE FROM public.events WHERE id = 1"));
    }
}
