//! The live schema check of `[[policy.soft_delete]]`: every configured table
//! and column must exist, checked over pgward's own connection when the
//! config is loaded and on every reload. A soft-delete entry that names
//! nothing is never a silent no-op: it is an error (a warning in monitor
//! mode, where nothing is rewritten).
//!
//! The check runs on a thread of its own with its own small runtime, so the
//! synchronous load/reload path can call it from inside or outside tokio.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::pgclient::{self, CredentialsConfig};
use crate::policy::soft_delete::{self, SoftDeleteTable};
use crate::policy::Mode;

/// `[soft_delete_check]`: how pgward reaches the databases to check.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SoftDeleteCheckConfig {
    /// pgward's own login (needs CONNECT and to see the catalogs).
    pub credentials: CredentialsConfig,
    /// Databases checked for entries without their own `database`.
    pub databases: Vec<String>,
    pub timeout_secs: u64,
    /// Skip the check (e.g. the database is not reachable at build time).
    /// Logged loudly; the rewrite then fails at the server if a column is
    /// missing (the DELETE errors, nothing is deleted).
    pub skip: bool,
}

impl Default for SoftDeleteCheckConfig {
    fn default() -> Self {
        SoftDeleteCheckConfig {
            credentials: CredentialsConfig::default(),
            databases: Vec::new(),
            timeout_secs: 5,
            skip: false,
        }
    }
}

/// Check the soft-delete tables of `config`. `Ok` carries warnings (monitor
/// mode turns problems into warnings); `Err` is the list of problems.
pub fn check(config: &Config) -> Result<Vec<String>, String> {
    let mut tables = Vec::new();
    for entry in &config.policy.soft_delete {
        tables.push(soft_delete::validate(entry)?);
    }
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let chk = &config.soft_delete_check;
    if chk.skip {
        tracing::warn!("soft_delete_check.skip = true: soft-delete tables and columns are NOT checked against the live schema");
        return Ok(Vec::new());
    }
    let problems = problems(config, &tables);
    if problems.is_empty() {
        return Ok(Vec::new());
    }
    if config.policy.mode == Mode::Enforce {
        Err(problems.join("; "))
    } else {
        for p in &problems {
            tracing::warn!(problem = %p, "soft-delete schema check (monitor mode: not fatal)");
        }
        Ok(problems)
    }
}

fn problems(config: &Config, tables: &[SoftDeleteTable]) -> Vec<String> {
    let chk = config.soft_delete_check.clone();
    let creds = match chk.credentials.resolve() {
        Ok(c) => c,
        Err(e) => {
            return vec![format!(
                "policy.soft_delete needs [soft_delete_check.credentials] to check the live schema ({e}); or set soft_delete_check.skip = true"
            )]
        }
    };
    // database → tables to check there
    let mut plan: Vec<(String, Vec<SoftDeleteTable>)> = Vec::new();
    let mut out = Vec::new();
    for t in tables {
        let dbs = match &t.config.database {
            Some(d) => vec![d.clone()],
            None => chk.databases.clone(),
        };
        if dbs.is_empty() {
            out.push(format!(
                "{}: no database to check it in (set its `database` or soft_delete_check.databases)",
                t.config.table
            ));
        }
        for db in dbs {
            match plan.iter_mut().find(|(d, _)| *d == db) {
                Some((_, list)) => list.push(t.clone()),
                None => plan.push((db, vec![t.clone()])),
            }
        }
    }
    let upstream = config.upstream.clone();
    let timeout = Duration::from_secs(chk.timeout_secs.max(1));
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| vec![format!("schema check runtime: {e}")])?;
        rt.block_on(async move {
            let mut out = Vec::new();
            for (db, tables) in &plan {
                match pgclient::connect(&upstream, &creds, db, timeout).await {
                    Ok(client) => {
                        for t in tables {
                            out.extend(check_table(&client, db, t).await);
                        }
                    }
                    Err(e) => out.push(format!("database {db}: {e:#}")),
                }
            }
            Ok::<_, Vec<String>>(out)
        })
    })
    .join()
    .unwrap_or_else(|_| Err(vec!["schema check thread panicked".into()]));
    match result {
        Ok(found) | Err(found) => out.extend(found),
    }
    out
}

/// Problems with one table in one database: missing table, missing columns,
/// `deleted_at` not a timestamp.
async fn check_table(
    client: &tokio_postgres::Client,
    db: &str,
    t: &SoftDeleteTable,
) -> Vec<String> {
    let sql = "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) \
               FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";
    let rows = match client.query(sql, &[&t.schema, &t.name]).await {
        Ok(r) => r,
        Err(e) => return vec![format!("database {db}: {}", pgclient::describe(&e))],
    };
    let label = format!("{} (database {db})", t.config.table);
    if rows.is_empty() {
        return vec![format!("{label}: table does not exist")];
    }
    let columns: Vec<(String, String)> = rows
        .iter()
        .filter_map(|r| {
            Some((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
            ))
        })
        .collect();
    let c = &t.config;
    let mut out = Vec::new();
    match columns.iter().find(|(n, _)| *n == c.deleted_at) {
        None => out.push(format!("{label}: column {:?} does not exist", c.deleted_at)),
        Some((_, ty)) if !ty.starts_with("timestamp") => out.push(format!(
            "{label}: column {:?} is {ty}, expected timestamp with time zone",
            c.deleted_at
        )),
        Some(_) => {}
    }
    for col in [&c.deleted_by, &c.reason].into_iter().flatten() {
        match columns.iter().find(|(n, _)| n == col) {
            None => out.push(format!("{label}: column {col:?} does not exist")),
            Some((_, ty)) if !is_text_type(ty) => out.push(format!(
                "{label}: column {col:?} is {ty}, expected text (or varchar)"
            )),
            Some(_) => {}
        }
    }
    out
}

/// Types a text value is assigned to without a cast that could fail.
fn is_text_type(ty: &str) -> bool {
    ty == "text" || ty == "citext" || ty == "name" || ty.starts_with("character")
}
