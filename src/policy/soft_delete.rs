//! Soft delete: a `DELETE` on a configured table becomes an `UPDATE` that
//! marks the rows instead of removing them.
//!
//! ```text
//! DELETE FROM [ONLY] t [*] [[AS] a] [USING …] [WHERE c] [RETURNING …]
//!   ──▶ UPDATE [ONLY] t [*] [[AS] a] SET deleted_at = now()[, deleted_by = …][, reason = …]
//!       [FROM …] WHERE (c) AND <a or t>.deleted_at IS NULL [RETURNING …]
//! ```
//!
//! The client's text is never re-printed (sqlparser's `Display` is not a safe
//! serializer): the rewrite is a list of splices at token positions from our
//! own lexer, and everything pgward adds is quoted by [`super::quote`]. Where
//! a DELETE sits is found in the tokens and cross-checked against the facts
//! the parser established; any disagreement blocks the statement instead of
//! guessing. The identity goes into the text per evaluation, never into the
//! shared facts cache.
//!
//! Name resolution: a configured table is always schema-qualified. A
//! statement's qualified name matches only that schema (`billing.users` is
//! never `public.users`); an unqualified name matches when the configured
//! schema is one of `policy.default_schemas` (pgward does not know the
//! session's `search_path`).

use std::ops::Range;

use serde::Deserialize;

use super::classify::{fold_token, name_at};
use super::facts::{ModOp, QualifiedName, StatementFacts, StatementKind};
use super::lexer::{self, is_kw, text, LexOptions, Token, TokenKind};
use super::quote::{escape_literal, quote_ident, text_value};
use super::SessionScope;

/// Rule id of soft-delete rewrites and of the blocks they cause.
pub const RULE_ID: &str = "soft_delete";

/// One `[[policy.soft_delete]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SoftDeleteConfig {
    /// Schema-qualified table, quoted parts allowed: `billing."Ledger Entries"`.
    pub table: String,
    /// timestamptz column set to `now()`; exact column name.
    #[serde(default = "default_deleted_at")]
    pub deleted_at: String,
    /// Optional text column filled with the session identity.
    #[serde(default)]
    pub deleted_by: Option<String>,
    /// Optional text column filled from `reason_setting`.
    #[serde(default)]
    pub reason: Option<String>,
    /// Session setting the application sets to give a reason.
    #[serde(default = "default_reason_setting")]
    pub reason_setting: String,
    /// Only sessions on this database are rewritten (and only it is
    /// checked); unset: every database.
    #[serde(default)]
    pub database: Option<String>,
    /// Users whose DELETEs stay hard deletes (e.g. a purge job).
    #[serde(default)]
    pub hard_delete_roles: Vec<String>,
    /// Unique keys to re-create as partial indexes over live rows
    /// (`pgward sql soft-delete` prints them).
    #[serde(default)]
    pub unique_keys: Vec<Vec<String>>,
    /// Session setting that, set to `on`, shows deleted rows through the
    /// RLS policy `pgward sql soft-delete` prints.
    #[serde(default = "default_show_setting")]
    pub show_deleted_setting: String,
}

fn default_deleted_at() -> String {
    "deleted_at".into()
}
fn default_reason_setting() -> String {
    "pgward.deletion_reason".into()
}
fn default_show_setting() -> String {
    "pgward.show_deleted".into()
}

/// A validated entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftDeleteTable {
    pub config: SoftDeleteConfig,
    /// Folded schema and table name.
    pub schema: String,
    pub name: String,
}

impl SoftDeleteTable {
    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Parse and validate one entry.
pub fn validate(cfg: &SoftDeleteConfig) -> Result<SoftDeleteTable, String> {
    let (schema, name) = parse_table_name(&cfg.table)?;
    let mut columns = vec![("deleted_at", &cfg.deleted_at)];
    if let Some(c) = &cfg.deleted_by {
        columns.push(("deleted_by", c));
    }
    if let Some(c) = &cfg.reason {
        columns.push(("reason", c));
    }
    for key in &cfg.unique_keys {
        if key.is_empty() {
            return Err(format!("{}: unique_keys has an empty key", cfg.table));
        }
        for c in key {
            columns.push(("unique_keys", c));
        }
    }
    for (key, col) in columns {
        if col.is_empty() || col.contains('\0') || col.len() > 63 {
            return Err(format!(
                "{}: {key} {col:?} is not a column name (1-63 bytes, no NUL)",
                cfg.table
            ));
        }
    }
    for (key, s) in [
        ("reason_setting", &cfg.reason_setting),
        ("show_deleted_setting", &cfg.show_deleted_setting),
    ] {
        if !is_setting_name(s) {
            return Err(format!(
                "{}: {key} {s:?} is not a custom setting name (prefix.name, letters, digits, '_')",
                cfg.table
            ));
        }
    }
    Ok(SoftDeleteTable {
        config: cfg.clone(),
        schema,
        name,
    })
}

fn is_setting_name(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !p.starts_with(|c: char| c.is_ascii_digit())
    };
    s.contains('.') && parts.all(ok)
}

/// `schema.table` with Postgres identifier rules: unquoted parts are folded
/// to lower case, `"…"` parts keep their case (`""` is a quote). The schema
/// is required.
pub fn parse_table_name(s: &str) -> Result<(String, String), String> {
    let bad = |why: &str| format!("table {s:?}: {why}");
    let mut parts = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'"') {
            let mut part = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(bad("unterminated quoted name")),
                    Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                        part.push('"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let c = s[i..].chars().next().unwrap_or('\0');
                        part.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            if part.is_empty() {
                return Err(bad("empty quoted name"));
            }
            parts.push(part);
        } else {
            let start = i;
            while b
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$')
            {
                i += 1;
            }
            let part = &s[start..i];
            if part.is_empty() || part.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
                return Err(bad("expected an identifier or a \"quoted name\""));
            }
            parts.push(part.to_ascii_lowercase());
        }
        match b.get(i) {
            None => break,
            Some(b'.') => i += 1,
            Some(_) => return Err(bad("unexpected character after a name part")),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, name]) => {
            if schema.contains('\0') || name.contains('\0') {
                return Err(bad("NUL in name"));
            }
            Ok((schema, name))
        }
        Err(_) => Err(bad("write it as schema.table")),
    }
}

/// The compiled soft-delete tables of a policy.
#[derive(Debug, Clone, Default)]
pub struct SoftDelete {
    tables: Vec<SoftDeleteTable>,
    default_schemas: Vec<String>,
}

/// A statement rewritten: the new text of the whole Query/Parse string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub sql: String,
    /// Indexes of the statements that changed.
    pub statements: Vec<usize>,
}

impl SoftDelete {
    pub fn new(tables: Vec<SoftDeleteTable>, default_schemas: Vec<String>) -> Self {
        SoftDelete {
            tables,
            default_schemas,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    pub fn tables(&self) -> &[SoftDeleteTable] {
        &self.tables
    }

    /// The entry for `n` that applies to this session (database), if any.
    fn entry(&self, n: &QualifiedName, scope: &SessionScope) -> Option<&SoftDeleteTable> {
        self.tables.iter().find(|t| {
            t.name == n.name
                && match &n.schema {
                    Some(s) => *s == t.schema,
                    None => self.default_schemas.contains(&t.schema),
                }
                && t.config
                    .database
                    .as_ref()
                    .is_none_or(|d| *d == scope.database)
        })
    }

    /// The entry whose DELETEs this session must have rewritten: configured,
    /// and the user is not one of its `hard_delete_roles`.
    fn soft(&self, n: &QualifiedName, scope: &SessionScope) -> Option<&SoftDeleteTable> {
        self.entry(n, scope)
            .filter(|t| !t.config.hard_delete_roles.contains(&scope.user))
    }

    /// A DELETE that stays a hard delete because the user is one of the
    /// table's `hard_delete_roles`: described for the audit trail.
    pub fn hard_delete(
        &self,
        statements: &[StatementFacts],
        scope: &SessionScope,
    ) -> Option<String> {
        statements
            .iter()
            .filter_map(deleting_facts)
            .flat_map(|f| f.modifications.iter())
            .filter(|m| m.op.is_delete())
            .find_map(|m| {
                let t = self.entry(&m.table, scope)?;
                t.config.hard_delete_roles.contains(&scope.user).then(|| {
                    format!(
                        "hard DELETE on soft-delete table {} by {} (hard_delete_roles)",
                        t.config.table, scope.user
                    )
                })
            })
    }

    /// Does this statement delete from a soft-delete table (so it needs a
    /// rewrite)? Cheap: facts only.
    fn needs_rewrite(&self, f: &StatementFacts, scope: &SessionScope) -> bool {
        deleting_facts(f).is_some_and(|body| {
            body.modifications
                .iter()
                .any(|m| m.op.is_delete() && self.soft(&m.table, scope).is_some())
        })
    }

    /// Rewrite every DELETE on a soft-delete table in `sql`. `Ok(None)`:
    /// nothing to rewrite. `Err`: a DELETE that must be rewritten could not
    /// be located with certainty; the caller blocks the statement.
    pub fn rewrite(
        &self,
        sql: &str,
        lex: LexOptions,
        statements: &[StatementFacts],
        scope: &SessionScope,
    ) -> Result<Option<Rewritten>, String> {
        if self.tables.is_empty() || !statements.iter().any(|f| self.needs_rewrite(f, scope)) {
            return Ok(None);
        }
        let lexed = lexer::lex(sql, lex).map_err(|e| format!("lexer: {e}"))?;
        if lexed.statements.len() != statements.len() {
            return Err("statement split disagrees with the classifier".into());
        }
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        let mut changed = Vec::new();
        for (i, f) in statements.iter().enumerate() {
            if !self.needs_rewrite(f, scope) {
                continue;
            }
            let toks = lexed.statement_tokens(i);
            edits.extend(self.statement_edits(sql, toks, f, scope)?);
            changed.push(i);
        }
        Ok(Some(Rewritten {
            sql: splice(sql, edits),
            statements: changed,
        }))
    }

    fn statement_edits(
        &self,
        sql: &str,
        toks: &[Token],
        f: &StatementFacts,
        scope: &SessionScope,
    ) -> Result<Vec<(Range<usize>, String)>, String> {
        let body = deleting_facts(f).ok_or("no DELETE facts")?;
        if let Some(m) = body
            .modifications
            .iter()
            .find(|m| m.op == ModOp::MergeDelete && self.soft(&m.table, scope).is_some())
        {
            return Err(format!(
                "MERGE … DELETE on soft-delete table {} cannot be rewritten; use DELETE",
                m.table
            ));
        }
        let deletes: Vec<&QualifiedName> = body
            .modifications
            .iter()
            .filter(|m| m.op == ModOp::Delete)
            .map(|m| &m.table)
            .collect();
        let sites = find_sites(sql, toks)?;
        if sites.len() != deletes.len() {
            return Err(format!(
                "found {} DELETE clauses in the text where the parser saw {}",
                sites.len(),
                deletes.len()
            ));
        }
        let soft_in_facts = deletes
            .iter()
            .filter(|n| self.soft(n, scope).is_some())
            .count();
        let mut edits = Vec::new();
        let mut soft_in_text = 0;
        for site in &sites {
            let Some(table) = self.soft(&site.name, scope) else {
                continue;
            };
            soft_in_text += 1;
            edits.extend(site.edits(toks, table, scope)?);
        }
        if soft_in_text != soft_in_facts {
            return Err("the DELETE targets in the text disagree with the parser's".into());
        }
        Ok(edits)
    }
}

/// The facts whose modifications the statement's text carries: its own, or
/// for `PREPARE p AS …` the body's. `EXECUTE` carries no DELETE text.
fn deleting_facts(f: &StatementFacts) -> Option<&StatementFacts> {
    if f.kind == StatementKind::Execute || f.unparsed.is_some() {
        return None;
    }
    match &f.prepare {
        Some((_, body)) => Some(body),
        None => Some(f),
    }
}

/// Whether the server's `UPDATE n` for this statement is a rewritten DELETE
/// that the client must see as `DELETE n`: the top-level statement is a
/// DELETE (directly or as the body of an `EXECUTE`). A DELETE that was not
/// rewritten already answers `DELETE n`, so re-tagging only `UPDATE` tags
/// is exact; a DELETE inside a CTE does not set the top-level tag.
pub fn retags(f: &StatementFacts) -> bool {
    match f.kind {
        StatementKind::Delete => true,
        StatementKind::Execute => f.executed_kinds.get(1) == Some(&StatementKind::Delete),
        _ => false,
    }
}

/// Re-tag a CommandComplete tag `UPDATE n` as `DELETE n`.
pub fn retag(tag: &[u8]) -> Option<Vec<u8>> {
    let rows = tag.strip_prefix(b"UPDATE ")?;
    let mut out = b"DELETE ".to_vec();
    out.extend_from_slice(rows);
    Some(out)
}

/// A `DELETE` located in the tokens of one statement.
#[derive(Debug)]
struct Site {
    /// Token indexes of `DELETE` and `FROM`.
    delete: usize,
    from: usize,
    name: QualifiedName,
    /// The table name as the client wrote it (tokens joined).
    name_text: String,
    alias: Option<String>,
    /// Byte offset after the target (name, `*`, alias): SET goes here.
    head_end: usize,
    using: Option<usize>,
    where_: Option<usize>,
    current_of: bool,
    /// Byte offset after the last token of the WHERE condition (or of the
    /// whole head when there is no WHERE).
    cond_end: usize,
}

/// Words before which `DELETE FROM` starts a DELETE statement: statement
/// start, `(` of a CTE/COPY, `)` after a WITH list or EXPLAIN options,
/// `AS` of PREPARE, EXPLAIN's ANALYZE/VERBOSE. Anything else (e.g.
/// `SELECT 1 AS delete FROM t`) is caught by the count cross-check.
fn starts_delete(sql: &str, toks: &[Token], i: usize) -> bool {
    if !is_kw(sql, &toks[i], "delete") || !toks.get(i + 1).is_some_and(|t| is_kw(sql, t, "from")) {
        return false;
    }
    match i.checked_sub(1).map(|p| &toks[p]) {
        None => true,
        Some(p) => {
            matches!(p.kind, TokenKind::LParen | TokenKind::RParen)
                || ["as", "analyze", "analyse", "verbose"]
                    .iter()
                    .any(|k| is_kw(sql, p, k))
        }
    }
}

fn find_sites(sql: &str, toks: &[Token]) -> Result<Vec<Site>, String> {
    let mut depth = Vec::with_capacity(toks.len());
    let mut d = 0usize;
    for t in toks {
        depth.push(d);
        match t.kind {
            TokenKind::LParen | TokenKind::LBracket => d += 1,
            TokenKind::RParen | TokenKind::RBracket => d = d.saturating_sub(1),
            _ => {}
        }
    }
    let mut sites = Vec::new();
    for i in 0..toks.len() {
        if starts_delete(sql, toks, i) {
            sites.push(site_at(sql, toks, &depth, i)?);
        }
    }
    Ok(sites)
}

fn site_at(sql: &str, toks: &[Token], depth: &[usize], i: usize) -> Result<Site, String> {
    let d0 = depth[i];
    let mut j = i + 2;
    if toks.get(j).is_some_and(|t| is_kw(sql, t, "only")) {
        j += 1;
    }
    let name_start = j;
    let name = name_at(sql, toks, j).ok_or("DELETE target is not a plain table name")?;
    j += 1;
    while toks.get(j).is_some_and(|t| t.kind == TokenKind::Dot) {
        j += 2;
    }
    let name_text: String = toks[name_start..j].iter().map(|t| text(sql, t)).collect();
    if toks
        .get(j)
        .is_some_and(|t| t.kind == TokenKind::Operator && text(sql, t) == "*")
    {
        j += 1;
    }
    let (mut using, mut where_, mut returning) = (None, None, None);
    let mut end = toks.len();
    for (k, t) in toks.iter().enumerate().skip(j) {
        if depth[k] != d0 {
            continue;
        }
        match t.kind {
            TokenKind::RParen | TokenKind::RBracket | TokenKind::Semicolon => {
                end = k;
                break;
            }
            _ if is_kw(sql, t, "using") && using.is_none() && where_.is_none() => using = Some(k),
            _ if is_kw(sql, t, "where") && where_.is_none() => where_ = Some(k),
            _ if is_kw(sql, t, "returning") => {
                returning = Some(k);
                break;
            }
            _ => {}
        }
    }
    let head_stop = [using, where_, returning]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(end);
    let alias_tok = match &toks[j..head_stop] {
        [] => None,
        [a] => Some(a),
        [as_, a] if is_kw(sql, as_, "as") => Some(a),
        _ => return Err("cannot read the DELETE's target and alias".into()),
    };
    let alias = match alias_tok {
        Some(a) => {
            fold_token(sql, a).ok_or("DELETE alias is not an identifier")?;
            Some(text(sql, a).to_string())
        }
        None => None,
    };
    let clause_end = returning.unwrap_or(end);
    if clause_end == 0 || head_stop == 0 {
        return Err("empty DELETE".into());
    }
    let current_of = where_.is_some_and(|w| {
        toks.get(w + 1).is_some_and(|t| is_kw(sql, t, "current"))
            && toks.get(w + 2).is_some_and(|t| is_kw(sql, t, "of"))
    });
    Ok(Site {
        delete: i,
        from: i + 1,
        name,
        name_text,
        alias,
        head_end: toks[head_stop - 1].span.end,
        using,
        where_,
        current_of,
        cond_end: toks[clause_end - 1].span.end,
    })
}

impl Site {
    fn edits(
        &self,
        toks: &[Token],
        table: &SoftDeleteTable,
        scope: &SessionScope,
    ) -> Result<Vec<(Range<usize>, String)>, String> {
        let c = &table.config;
        let mut set = format!("{} = pg_catalog.now()", quote_ident(&c.deleted_at));
        if let Some(col) = &c.deleted_by {
            let who = text_value(scope.identity_label())
                .map_err(|e| format!("identity cannot be written into SQL: {e}"))?;
            set.push_str(&format!(", {} = {who}", quote_ident(col)));
        }
        if let Some(col) = &c.reason {
            let setting = escape_literal(&c.reason_setting).map_err(|e| e.to_string())?;
            set.push_str(&format!(
                ", {} = NULLIF(pg_catalog.current_setting({setting}, true), '')",
                quote_ident(col)
            ));
        }
        let reference = self.alias.as_deref().unwrap_or(&self.name_text);
        let live = format!("{reference}.{} IS NULL", quote_ident(&c.deleted_at));
        let mut edits = vec![
            (
                toks[self.delete].span.start..toks[self.from].span.end,
                "UPDATE".to_string(),
            ),
            (self.head_end..self.head_end, format!(" SET {set}")),
        ];
        if let Some(u) = self.using {
            edits.push((toks[u].span.clone(), "FROM".into()));
        }
        match self.where_ {
            // The cursor's row: nothing can be added to WHERE CURRENT OF.
            Some(_) if self.current_of => {}
            Some(w) => {
                edits.push((toks[w].span.clone(), "WHERE (".into()));
                edits.push((self.cond_end..self.cond_end, format!(") AND {live}")));
            }
            None => edits.push((self.cond_end..self.cond_end, format!(" WHERE {live}"))),
        }
        Ok(edits)
    }
}

/// Apply non-overlapping edits (byte range → replacement); insertions at the
/// same offset keep their order.
fn splice(sql: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(sql.len() + 128);
    let mut at = 0;
    for (r, s) in edits {
        out.push_str(&sql[at..r.start]);
        out.push_str(&s);
        at = r.end;
    }
    out.push_str(&sql[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::classify_with;

    fn policy(tables: &[&str]) -> SoftDelete {
        let tables = tables
            .iter()
            .map(|t| {
                validate(&SoftDeleteConfig {
                    table: t.to_string(),
                    deleted_at: "deleted_at".into(),
                    deleted_by: Some("deleted_by".into()),
                    reason: None,
                    reason_setting: default_reason_setting(),
                    database: None,
                    hard_delete_roles: vec!["purge".into()],
                    unique_keys: Vec::new(),
                    show_deleted_setting: default_show_setting(),
                })
                .unwrap()
            })
            .collect();
        SoftDelete::new(tables, vec!["public".into()])
    }

    fn scope(user: &str) -> SessionScope {
        SessionScope {
            user: user.into(),
            database: "db".into(),
            ..Default::default()
        }
    }

    fn rw(sd: &SoftDelete, sql: &str, user: &str) -> Result<Option<Rewritten>, String> {
        let facts = classify_with(sql, LexOptions::default());
        sd.rewrite(sql, LexOptions::default(), &facts, &scope(user))
    }

    fn sql_of(sd: &SoftDelete, sql: &str) -> String {
        rw(sd, sql, "app").unwrap().expect("rewritten").sql
    }

    #[test]
    fn table_names_parse_with_postgres_rules() {
        assert_eq!(
            parse_table_name("Public.Users").unwrap(),
            ("public".into(), "users".into())
        );
        assert_eq!(
            parse_table_name(r#"billing."Ledger ""Entries""""#).unwrap(),
            ("billing".into(), r#"Ledger "Entries""#.into())
        );
        for bad in [
            "users", "a.b.c", "a.", ".b", "\"a.b", "a b.c", "1a.b", "a.\"\"",
        ] {
            assert!(parse_table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rewrites_a_plain_delete() {
        let sd = policy(&["public.users"]);
        assert_eq!(
            sql_of(&sd, "DELETE FROM users WHERE id = $1"),
            "UPDATE users SET \"deleted_at\" = pg_catalog.now(), \"deleted_by\" = 'app' \
             WHERE ( id = $1) AND users.\"deleted_at\" IS NULL"
        );
    }

    #[test]
    fn rewrites_only_alias_using_returning() {
        let sd = policy(&[r#"billing."Ledger Entries""#]);
        let out = sql_of(
            &sd,
            r#"delete from only billing."Ledger Entries" as le using x where le.id = x.id returning le.*"#,
        );
        assert_eq!(
            out,
            r#"UPDATE only billing."Ledger Entries" as le SET "deleted_at" = pg_catalog.now(), "deleted_by" = 'app' FROM x WHERE ( le.id = x.id) AND le."deleted_at" IS NULL returning le.*"#
        );
    }

    #[test]
    fn other_schema_and_other_tables_are_untouched() {
        let sd = policy(&["public.users"]);
        assert_eq!(
            rw(&sd, "DELETE FROM billing.users WHERE id = 1", "app"),
            Ok(None)
        );
        assert_eq!(rw(&sd, "DELETE FROM orders WHERE id = 1", "app"), Ok(None));
        assert_eq!(rw(&sd, "DELETE FROM users WHERE id = 1", "purge"), Ok(None));
        let facts = classify_with("DELETE FROM users WHERE id = 1", LexOptions::default());
        assert!(sd.hard_delete(&facts, &scope("purge")).is_some());
        assert!(sd.hard_delete(&facts, &scope("app")).is_none());
    }

    #[test]
    fn multi_statement_rewrites_only_its_statement() {
        let sd = policy(&["public.users"]);
        let sql =
            "SELECT 'DELETE FROM users'; DELETE FROM users WHERE id=1; DELETE FROM t WHERE id=1";
        let r = rw(&sd, sql, "app").unwrap().unwrap();
        assert_eq!(r.statements, vec![1]);
        assert!(r
            .sql
            .starts_with("SELECT 'DELETE FROM users'; UPDATE users SET"));
        assert!(r.sql.ends_with("IS NULL; DELETE FROM t WHERE id=1"));
    }

    #[test]
    fn cte_and_prepare_are_rewritten() {
        let sd = policy(&["public.users"]);
        let out = sql_of(
            &sd,
            "WITH d AS (DELETE FROM users u WHERE u.id = 1 RETURNING *) SELECT count(*) FROM d",
        );
        assert!(out.starts_with(
            "WITH d AS (UPDATE users u SET \"deleted_at\" = pg_catalog.now(), \"deleted_by\" = 'app' WHERE ( u.id = 1) AND u.\"deleted_at\" IS NULL RETURNING *) SELECT"
        ), "{out}");
        let out = sql_of(&sd, "PREPARE p(int) AS DELETE FROM users WHERE id = $1");
        assert!(
            out.starts_with("PREPARE p(int) AS UPDATE users SET"),
            "{out}"
        );
    }

    #[test]
    fn hostile_identity_stays_one_literal() {
        let sd = policy(&["public.users"]);
        for who in [r"x\'; DELETE FROM users; --", "o'hara", "Zoë \\ '", "$$"] {
            let r = rw(&sd, "DELETE FROM users WHERE id = 1", who)
                .unwrap()
                .unwrap();
            let facts = classify_with(&r.sql, LexOptions::default());
            assert_eq!(facts.len(), 1, "{}", r.sql);
            assert_eq!(facts[0].kind, StatementKind::Update, "{}", r.sql);
            let scs_off = classify_with(
                &r.sql,
                LexOptions {
                    standard_conforming_strings: false,
                },
            );
            assert_eq!(scs_off.len(), 1, "{}", r.sql);
        }
    }

    #[test]
    fn field_notes_payload_keeps_client_text() {
        let sd = policy(&["public.users"]);
        let sql = r"DELETE FROM users WHERE name = '\''; DELETE FROM users; --'";
        let r = rw(&sd, sql, "app").unwrap().unwrap();
        assert!(
            r.sql.contains(r"name = '\''; DELETE FROM users; --'"),
            "{}",
            r.sql
        );
        let facts = classify_with(&r.sql, LexOptions::default());
        assert_eq!(facts.len(), 1);
    }

    #[test]
    fn delete_named_column_is_refused_not_guessed() {
        let sd = policy(&["public.users"]);
        // `AS delete FROM users` is a column label, not a DELETE; the real one follows.
        let sql = "WITH d AS (DELETE FROM users WHERE id = 1 RETURNING 1 AS delete) SELECT 1";
        assert!(rw(&sd, sql, "app").unwrap().is_some());
    }

    #[test]
    fn without_where_marks_only_live_rows() {
        let sd = policy(&["public.users"]);
        assert!(sql_of(&sd, "DELETE FROM users RETURNING id")
            .ends_with("'app' WHERE users.\"deleted_at\" IS NULL RETURNING id"));
    }

    #[test]
    fn explain_analyze_and_current_of_are_rewritten() {
        let sd = policy(&["public.users"]);
        let out = sql_of(&sd, "EXPLAIN (ANALYZE) DELETE FROM users WHERE id = 1");
        assert!(
            out.starts_with("EXPLAIN (ANALYZE) UPDATE users SET"),
            "{out}"
        );
        let out = sql_of(&sd, "EXPLAIN ANALYZE DELETE FROM users WHERE id = 1");
        assert!(out.starts_with("EXPLAIN ANALYZE UPDATE users SET"), "{out}");
        // Nothing can be added to WHERE CURRENT OF: the cursor names the row.
        let out = sql_of(&sd, "DELETE FROM users WHERE CURRENT OF c");
        assert!(out.ends_with("'app' WHERE CURRENT OF c"), "{out}");
    }

    #[test]
    fn what_cannot_be_located_with_certainty_is_refused() {
        let sd = policy(&["public.users"]);
        // A Unicode-escaped name: the parser sees users, the splicer cannot
        // read the token — refused, never a hard delete.
        assert!(rw(&sd, "DELETE FROM U&\"users\" WHERE id = 1", "app").is_err());
        let err = rw(
            &sd,
            "MERGE INTO users u USING t ON u.id = t.id WHEN MATCHED THEN DELETE",
            "app",
        )
        .unwrap_err();
        assert!(err.contains("MERGE"), "{err}");
        // Two DELETEs in one statement, one on a soft-delete table.
        let out = sql_of(
            &sd,
            "WITH a AS (DELETE FROM t WHERE x = 1), b AS (DELETE FROM users WHERE id = 2) SELECT 1",
        );
        assert!(
            out.starts_with("WITH a AS (DELETE FROM t WHERE x = 1), b AS (UPDATE users SET"),
            "{out}"
        );
    }

    #[test]
    fn configured_database_and_hard_delete_roles_scope_the_rewrite() {
        let mut cfg = policy(&["public.users"]).tables[0].config.clone();
        cfg.database = Some("other".into());
        let sd = SoftDelete::new(vec![validate(&cfg).unwrap()], vec!["public".into()]);
        assert_eq!(rw(&sd, "DELETE FROM users WHERE id = 1", "app"), Ok(None));
        for (bad, why) in [
            ("deleted_at", ""),
            ("reason_setting", "nodot"),
            ("reason_setting", "a.b'c"),
        ] {
            let mut c = cfg.clone();
            match bad {
                "deleted_at" => c.deleted_at = why.into(),
                _ => c.reason_setting = why.into(),
            }
            assert!(validate(&c).is_err(), "{bad}={why:?}");
        }
    }

    #[test]
    fn retag_only_updates() {
        assert_eq!(retag(b"UPDATE 3").unwrap(), b"DELETE 3");
        assert_eq!(retag(b"DELETE 3"), None);
        assert_eq!(retag(b"INSERT 0 1"), None);
    }
}
