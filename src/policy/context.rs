//! The `context_spoofing` rule: no client may write the settings pgward pins
//! for Row-Level Security (`app.*` by default), nor change its role when its
//! identity was verified by pgward. Pure: the facts, the session's identity
//! kind and the protected patterns decide.
//!
//! Besides the setting changes the classifier records (SET / SET LOCAL /
//! set_config / SET ROLE / SET SESSION AUTHORIZATION), a token scan of the statement text catches the forms that
//! write settings for later sessions or routines (ALTER ROLE/USER/DATABASE …
//! SET, ALTER SYSTEM, CREATE/ALTER FUNCTION … SET) and, assuming the worst,
//! unparsed statements that could write a setting.
//!
//! `RESET name`, `RESET ALL` and `DISCARD ALL` are allowed: pgward passes the
//! pinned values as startup parameters too, and RESET returns to those
//! (`crate::identity::startup_packet`), so they restore the context.

use serde::{Deserialize, Serialize};

use super::facts::{SettingChange, StatementFacts};
use super::lexer::{self, LexOptions, Token, TokenKind};
use super::rules::glob;

/// OID of `pg_catalog.set_config(text, text, boolean)` (fixed in the catalog).
pub const SET_CONFIG_OID: u32 = 2078;

/// How the session's identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityKind {
    /// The Postgres user the client authenticated as (passthrough auth).
    #[default]
    PostgresUser,
    /// A JWT verified by pgward.
    Jwt,
    /// A TLS client certificate verified by pgward.
    Certificate,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::PostgresUser => "postgres_user",
            IdentityKind::Jwt => "jwt",
            IdentityKind::Certificate => "certificate",
        }
    }
}

/// Who the session is, as far as the policy needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub kind: IdentityKind,
    /// JWT `sub` / certificate CN; empty for a Postgres user.
    pub subject: String,
    /// pgward set context settings on this session's server connection.
    pub pinned: bool,
}

/// Who may change role (`SET ROLE`, `SET SESSION AUTHORIZATION`,
/// `set_config('role', …)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RoleGuard {
    /// Blocked for JWT and certificate identities (their upstream role is
    /// pgward's choice, not theirs); allowed for Postgres users.
    #[default]
    Verified,
    /// Blocked for everyone.
    All,
    /// Never blocked by this rule.
    None,
}

/// The protected setting patterns and the role guard, as the policy sees them
/// (filled from the `[context]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextProtection {
    /// Globs over lower-cased setting names, e.g. `app.*`.
    pub protect: Vec<String>,
    pub guard_role: RoleGuard,
}

impl Default for ContextProtection {
    fn default() -> Self {
        ContextProtection {
            protect: default_protect(),
            guard_role: RoleGuard::default(),
        }
    }
}

pub fn default_protect() -> Vec<String> {
    vec!["app.*".to_string()]
}

impl ContextProtection {
    /// Is `name` (any case) a protected setting?
    pub fn protects(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        self.protect
            .iter()
            .any(|p| glob(&p.to_ascii_lowercase(), &lower))
    }

    /// Are role changes blocked for this identity?
    pub fn guards_role(&self, kind: IdentityKind) -> bool {
        match self.guard_role {
            RoleGuard::All => true,
            RoleGuard::None => false,
            RoleGuard::Verified => kind != IdentityKind::PostgresUser,
        }
    }

    /// A setting name no client may write in this session: protected, or a
    /// role setting when roles are guarded.
    pub fn forbidden(&self, name: &str, kind: IdentityKind) -> bool {
        let lower = name.to_ascii_lowercase();
        self.protects(&lower)
            || (self.guards_role(kind) && (lower == "role" || lower == "session_authorization"))
    }

    /// Does `f` write (or may it write) a protected setting? Returns the
    /// block message's WHAT and the detail.
    pub fn spoofing(&self, f: &StatementFacts, id: &Identity) -> Option<(String, String)> {
        let hit = |detail: String| Some(("change of a pinned context setting".to_string(), detail));
        // RESET name / RESET ALL / DISCARD ALL are not writes: pgward also
        // passes the pinned values as startup parameters, which are what
        // RESET returns to (see identity::startup_packet).
        let pinned_session = id.pinned || id.kind != IdentityKind::PostgresUser;
        for s in &f.settings {
            match s {
                SettingChange::Set { name, local } if self.forbidden(name, id.kind) => {
                    let verb = if *local { "SET LOCAL" } else { "SET" };
                    return hit(format!("{verb} {name}: the setting is protected"));
                }
                SettingChange::SetConfig(Some(name)) if self.forbidden(name, id.kind) => {
                    return hit(format!("set_config('{name}', …): the setting is protected"));
                }
                SettingChange::SetConfig(None) => {
                    return hit("set_config() with a setting name that is not a literal (it could name a protected setting)".into());
                }
                SettingChange::Role | SettingChange::SessionAuthorization
                    if self.guards_role(id.kind) =>
                {
                    return hit(format!(
                        "{}: this {} identity may not change role",
                        f.kind.sql(),
                        id.kind.as_str()
                    ));
                }
                _ => {}
            }
        }
        // `UPDATE pg_settings SET setting = …` calls set_config for each row.
        if f.tables_written.iter().any(|t| {
            t.name == "pg_settings" && matches!(t.schema.as_deref(), None | Some("pg_catalog"))
        }) {
            return hit("writing pg_settings changes settings (it calls set_config)".into());
        }
        // Code pgward cannot see into (DO, CREATE FUNCTION/PROCEDURE, CREATE
        // RULE) can write any setting, e.g. EXECUTE 'SE' || 'T app.x = …'.
        if f.dynamic_sql && pinned_session {
            return hit(format!(
                "{} runs or defines code that could change the pinned settings",
                f.kind.sql()
            ));
        }
        // set_config calls the classifier did not record (in FROM, in a view,
        // a column default, a policy expression): assume the worst.
        let recorded = f
            .settings
            .iter()
            .filter(|s| matches!(s, SettingChange::SetConfig(_)))
            .count();
        if set_config_calls(&f.text) > recorded {
            return hit("set_config() in a place pgward does not analyse".into());
        }
        // PREPARE of a spoofing statement: refuse it now rather than at EXECUTE.
        if let Some((_, body)) = &f.prepare {
            if let Some(found) = self.spoofing(body, id) {
                return Some(found);
            }
        }
        self.scan_text(&f.text, f.unparsed.is_some(), id)
            .and_then(hit)
    }

    /// Token scan for the forms the facts do not record.
    fn scan_text(&self, text: &str, unparsed: bool, id: &Identity) -> Option<String> {
        let first = text
            .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap_or("");
        if !unparsed
            && !first.eq_ignore_ascii_case("alter")
            && !first.eq_ignore_ascii_case("create")
        {
            return None;
        }
        let Ok(lexed) = lexer::lex(text, LexOptions::default()) else {
            // Unreadable text that might write a setting: assume it does.
            let lower = text.to_ascii_lowercase();
            return ["set", "reset", "discard", "alter"]
                .iter()
                .any(|w| lower.contains(w))
                .then(|| "a statement pgward cannot read that may change settings".into());
        };
        let toks = &lexed.tokens;
        let kw = |i: usize, k: &str| toks.get(i).is_some_and(|t| lexer::is_kw(text, t, k));
        if kw(0, "alter") && kw(1, "system") {
            return Some("ALTER SYSTEM changes server-wide settings".into());
        }
        let routine = (kw(0, "create")
            && (kw(1, "function")
                || kw(1, "procedure")
                || (kw(1, "or") && kw(2, "replace") && (kw(3, "function") || kw(3, "procedure")))))
            || (kw(0, "alter") && (kw(1, "function") || kw(1, "procedure") || kw(1, "routine")));
        let role_defaults = kw(0, "alter") && (kw(1, "role") || kw(1, "user") || kw(1, "database"));
        let plain_set = unparsed && (kw(0, "set") || kw(0, "reset"));
        if unparsed && toks.iter().any(|t| is_set_config_word(text, t)) {
            return Some("set_config() in a statement pgward could not parse".into());
        }
        if !(routine || role_defaults || plain_set) {
            return None;
        }
        for (i, t) in toks.iter().enumerate() {
            if !(lexer::is_kw(text, t, "set") || lexer::is_kw(text, t, "reset")) {
                continue;
            }
            let mut j = i + 1;
            if kw(j, "local") || kw(j, "session") {
                j += 1;
            }
            if kw(j, "all") {
                if role_defaults || plain_set {
                    return Some(format!(
                        "{} … RESET ALL clears protected settings",
                        text_of(text, &toks[..toks.len().min(2)])
                    ));
                }
                continue;
            }
            match setting_name_at(text, toks, j) {
                Some(name) if self.forbidden(&name, id.kind) => {
                    return Some(format!(
                        "{} sets the protected setting {name}",
                        text_of(text, &toks[..toks.len().min(2)])
                    ))
                }
                Some(_) => {}
                None => {
                    return Some(format!(
                        "{} sets a setting whose name pgward cannot read",
                        text_of(text, &toks[..toks.len().min(2)])
                    ))
                }
            }
        }
        None
    }
}

/// How many `set_config(` calls the text holds (identifier followed by a
/// parenthesis; strings and comments do not count).
fn set_config_calls(text: &str) -> usize {
    if !mentions_set_config(text.as_bytes()) {
        return 0;
    }
    let Ok(lexed) = lexer::lex(text, LexOptions::default()) else {
        return usize::MAX;
    };
    lexed
        .tokens
        .windows(2)
        .filter(|w| is_set_config_word(text, &w[0]) && w[1].kind == TokenKind::LParen)
        .count()
}

/// Whether `text` spells `set_config` in any letter case. Anchored on the
/// `_`, which is rare in SQL text, so the usual statement is one byte scan.
fn mentions_set_config(text: &[u8]) -> bool {
    memchr::memchr_iter(b'_', text).any(|i| {
        i >= 3
            && text[i - 3..i].eq_ignore_ascii_case(b"set")
            && text
                .get(i + 1..i + 7)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"config"))
    })
}

fn is_set_config_word(text: &str, t: &Token) -> bool {
    match t.kind {
        TokenKind::Word => lexer::text(text, t).eq_ignore_ascii_case("set_config"),
        TokenKind::QuotedIdent => lexer::text(text, t) == "\"set_config\"",
        TokenKind::UnicodeIdent => true,
        _ => false,
    }
}

fn text_of(text: &str, toks: &[Token]) -> String {
    toks.iter()
        .map(|t| lexer::text(text, t).to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The (lower-cased, dotted) setting name starting at token `i`: words and
/// quoted identifiers joined by dots. `None` when it cannot be read (a
/// Unicode-escaped identifier, nothing there).
fn setting_name_at(text: &str, toks: &[Token], mut i: usize) -> Option<String> {
    let mut parts = Vec::new();
    loop {
        let t = toks.get(i)?;
        let part = match t.kind {
            TokenKind::Word => lexer::text(text, t).to_string(),
            TokenKind::QuotedIdent => {
                let raw = lexer::text(text, t);
                raw.get(1..raw.len().saturating_sub(1))?
                    .replace("\"\"", "\"")
            }
            _ => return None,
        };
        parts.push(part.to_ascii_lowercase());
        if toks.get(i + 1).is_some_and(|t| t.kind == TokenKind::Dot) {
            i += 2;
        } else {
            return Some(parts.join("."));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::classify;

    fn jwt() -> Identity {
        Identity {
            kind: IdentityKind::Jwt,
            subject: "alice".into(),
            pinned: true,
        }
    }

    #[test]
    fn set_config_is_found_in_any_case_and_position() {
        for text in [
            "set_config(",
            "SELECT Set_Config('a','b',false)",
            "x SET_CONFIG",
        ] {
            assert!(mentions_set_config(text.as_bytes()), "{text}");
        }
        for text in [
            "",
            "_",
            "set_",
            "_config",
            "set config",
            "reset_conf",
            "select 1",
        ] {
            assert!(!mentions_set_config(text.as_bytes()), "{text}");
        }
    }

    fn blocked(sql: &str, id: &Identity) -> bool {
        let p = ContextProtection::default();
        classify(sql).iter().any(|f| p.spoofing(f, id).is_some())
    }

    #[test]
    fn every_write_form_of_a_protected_setting_is_caught() {
        for sql in [
            "SET app.tenant_id = 't2'",
            "SET SESSION app.tenant_id TO 't2'",
            "SET LOCAL app.tenant_id = 't2'",
            "set APP.Tenant_Id = 't2'",
            "SET \"APP\".\"TENANT_ID\" = 't2'",
            "SELECT set_config('app.tenant_id', 't2', false)",
            "SELECT pg_catalog.set_config('APP.TENANT_ID', 't2', true)",
            "SELECT * FROM notes WHERE id IN (SELECT length(set_config('app.tenant_id', 't2', false)))",
            "WITH x AS (SELECT set_config('app.tenant_id', 't2', false)) SELECT * FROM x",
            "SELECT upper(set_config('app.' || 'tenant_id', 't2', false))",
            "SELECT set_config($1, $2, false)",
            "UPDATE pg_settings SET setting = 't2' WHERE name = 'app.tenant_id'",
            "ALTER ROLE app_user SET app.tenant_id = 't2'",
            "ALTER USER app_user IN DATABASE d SET \"App\".tenant_id TO 't2'",
            "ALTER DATABASE d SET app.tenant_id = 't2'",
            "ALTER DATABASE d RESET ALL",
            "ALTER ROLE app_user RESET app.tenant_id",
            "ALTER SYSTEM SET work_mem = '1MB'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.tenant_id = 't2' AS 'SELECT 1'",
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql SET app.tenant_id FROM CURRENT AS $$ SELECT 1 $$",
            "ALTER FUNCTION f() SET app.tenant_id = 't2'",
            "SET",
            "RESET",
            "SET ROLE postgres",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION postgres",
            "SELECT set_config('role', 'postgres', false)",
            "SELECT 1; SET app.tenant_id = 't2'",
            "PREPARE p AS SELECT set_config('app.tenant_id', 't2', false)",
            "SELECT * FROM set_config('app.tenant_id', 't2', false)",
            "SELECT * FROM notes, LATERAL set_config('app.tenant_id', 't2', false) AS s",
            "CREATE VIEW v AS SELECT set_config('app.tenant_id', 't2', false)",
            "CREATE TABLE t (x text DEFAULT set_config('app.tenant_id', 't2', false))",
            "ALTER TABLE notes ALTER COLUMN body SET DEFAULT set_config('app.tenant_id', 't2', false)",
            "CREATE POLICY p ON notes USING (set_config('app.tenant_id', 't2', false) IS NOT NULL)",
            "DO $$ BEGIN PERFORM set_config('app.tenant_id', 't2', false); END $$",
            "DO $$ BEGIN EXECUTE 'SE' || 'T app.tenant_id = ''t2'''; END $$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET app.tenant_id = 1'; END $$",
        ] {
            assert!(blocked(sql, &jwt()), "not caught: {sql}");
        }
    }

    #[test]
    fn ordinary_statements_and_other_settings_pass() {
        for sql in [
            "SET work_mem = '64MB'",
            "SET LOCAL statement_timeout = 5000",
            "RESET search_path",
            "RESET app.tenant_id",
            "RESET ALL",
            "DISCARD ALL",
            "SELECT current_setting('app.tenant_id', true)",
            "SELECT set_config('search_path', 'public', false)",
            "ALTER ROLE app_user SET work_mem = '8MB'",
            "UPDATE notes SET body = 'x' WHERE id = 1",
            "ALTER TABLE notes ADD COLUMN x int",
        ] {
            assert!(!blocked(sql, &jwt()), "wrongly caught: {sql}");
        }
    }

    #[test]
    fn dynamic_sql_is_refused_only_where_settings_are_pinned() {
        let user = Identity::default();
        for sql in [
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = public AS $$ SELECT 'SET app.x = 1' $$",
            "DO $$ BEGIN RAISE NOTICE 'hi'; END $$",
        ] {
            assert!(!blocked(sql, &user), "{sql}");
            assert!(blocked(sql, &jwt()), "{sql}");
        }
        // A set_config name in a string or comment is not a call.
        assert!(!blocked("SELECT 'set_config(x)' -- set_config(\n", &jwt()));
    }

    #[test]
    fn role_guard_depends_on_identity_kind() {
        let user = Identity::default();
        assert!(!blocked("SET ROLE reporting", &user));
        assert!(blocked("SET app.tenant_id = 'x'", &user));
        // RESET returns to the pinned startup values: allowed, pinned or not.
        let pinned = Identity {
            pinned: true,
            ..Identity::default()
        };
        assert!(!blocked("DISCARD ALL", &pinned) && !blocked("RESET ALL", &pinned));
        let cert = Identity {
            kind: IdentityKind::Certificate,
            ..Identity::default()
        };
        assert!(blocked("SET ROLE reporting", &cert));
        let all = ContextProtection {
            guard_role: RoleGuard::All,
            ..ContextProtection::default()
        };
        let f = &classify("SET ROLE reporting")[0];
        assert!(all.spoofing(f, &user).is_some());
        let none = ContextProtection {
            guard_role: RoleGuard::None,
            ..ContextProtection::default()
        };
        assert!(none.spoofing(f, &jwt()).is_none());
    }

    #[test]
    fn identity_label_is_the_verified_subject() {
        let mut scope = crate::policy::SessionScope {
            user: "app_login".into(),
            ..Default::default()
        };
        assert_eq!(scope.identity_label(), "app_login");
        scope.identity = jwt();
        assert_eq!(scope.identity_label(), "alice");
        scope.identity.kind = IdentityKind::Certificate;
        scope.identity.subject = "billing-svc".into();
        assert_eq!(scope.identity_label(), "billing-svc");
        scope.identity.subject.clear();
        assert_eq!(scope.identity_label(), "app_login");
    }

    #[test]
    fn global_monitor_mode_still_blocks_spoofing_but_the_rule_action_can_monitor() {
        use crate::policy::{LexOptions, Policy, PolicyConfig, PreparedRegistry, Verdict};
        let scope = crate::policy::SessionScope {
            identity: jwt(),
            ..Default::default()
        };
        let eval = |toml: &str, sql: &str| {
            let p = Policy::from_config(&PolicyConfig::from_toml_str(toml).unwrap()).unwrap();
            p.evaluate(sql, &scope, LexOptions::default(), &PreparedRegistry::new())
                .verdict
        };
        let monitor = "mode = \"monitor\"";
        assert!(
            matches!(eval(monitor, "SET app.tenant_id = 'x'"), Verdict::Block(b) if b.rule_id == "context_spoofing")
        );
        assert!(matches!(
            eval(monitor, "TRUNCATE t"),
            Verdict::Monitored { .. }
        ));
        let rule_monitor = "[rules.context_spoofing]\naction = \"monitor\"";
        assert!(matches!(
            eval(rule_monitor, "SET app.tenant_id = 'x'"),
            Verdict::Monitored { .. }
        ));
    }

    #[test]
    fn custom_patterns_match_case_insensitively() {
        let p = ContextProtection {
            protect: vec!["Tenant.*".into(), "myapp.user_id".into()],
            guard_role: RoleGuard::None,
        };
        assert!(p.protects("TENANT.id"));
        assert!(p.protects("myapp.USER_ID"));
        assert!(!p.protects("myapp.other"));
        assert!(!p.protects("app.tenant_id"));
    }
}
