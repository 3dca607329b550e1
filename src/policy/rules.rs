//! Rules: compiled from [`PolicyConfig`], matched against
//! [`StatementFacts`] and a [`SessionScope`].
//!
//! Built-in rules (id → default action):
//!
//! | id | matches | default |
//! |---|---|---|
//! | `truncate` | any TRUNCATE that executes | block |
//! | `delete_without_where` | a DELETE (incl. nested) with no WHERE | block |
//! | `update_without_where` | an UPDATE (incl. nested) with no WHERE | block |
//! | `tautological_where` | a DELETE/UPDATE/MERGE whose condition folds to true | block |
//! | `drop` | DROP TABLE / SCHEMA / DATABASE / OWNED (also MATERIALIZED VIEW) | block |
//! | `dynamic_sql` | DO, CREATE FUNCTION/PROCEDURE, CREATE RULE | allow (block in `strict`) |
//! | `unparsed` | a statement that could not be classified | `on_unparsed` (block) |
//! | `function_call` | a FunctionCall protocol message | block |
//! | `context_spoofing` | a write of a protected context setting, or a role change by a verified identity (see [`super::context`]) | block |
//!
//! Custom rules (`[[policy.custom]]`) match statement kinds, table globs and
//! function globs. Scoping (users, databases, applications, client CIDRs,
//! and their `except_*` forms) applies to every rule.

use std::net::IpAddr;

use super::config::{
    Access, Action, BuiltinRuleConfig, CustomRuleConfig, Mode, OnUnparsed, PolicyConfig, Profile,
    ScopeConfig,
};
use super::context::ContextProtection;
use super::facts::{Filter, ObjectKind, QualifiedName, StatementFacts, StatementKind, KIND_NAMES};
use super::{PolicyError, SessionScope};

/// Built-in rule ids with default action and hint.
pub const BUILTIN_RULES: &[(&str, &str)] = &[
    ("truncate", "use DELETE … WHERE for the rows you mean, or ask for a role exempted from the \"truncate\" rule"),
    ("delete_without_where", "add a WHERE clause naming the rows to delete"),
    ("update_without_where", "add a WHERE clause naming the rows to update"),
    ("tautological_where", "the WHERE clause is always true; name the rows you mean"),
    ("drop", "dropping tables, schemas and databases goes through a migration role exempted from the \"drop\" rule"),
    ("dynamic_sql", "dynamic SQL cannot be checked; run the statements directly or use an exempted role"),
    ("unparsed", "pgward could not parse this statement; simplify it or ask for an exemption"),
    ("function_call", "use SELECT function(…) instead of the fast-path FunctionCall message"),
    ("context_spoofing", "these settings are pinned by pgward from your verified identity; reconnect with the identity you need"),
];

/// A CIDR block, parsed by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `10.0.0.0/8`, `::1/128` or a bare address (full-length prefix).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    /// Does the block contain `ip`? IPv4-mapped IPv6 addresses are matched
    /// as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `*` (any run) and `?` (one char) glob, iterative (no recursion).
pub fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Compiled scoping.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    users: Vec<String>,
    databases: Vec<String>,
    applications: Vec<String>,
    cidrs: Vec<Cidr>,
    except_users: Vec<String>,
    except_databases: Vec<String>,
    except_applications: Vec<String>,
    except_cidrs: Vec<Cidr>,
    /// No list at all: the rule applies to every session (the usual case,
    /// checked without touching the session's strings).
    universal: bool,
}

fn cidrs(rule: &str, v: &[String]) -> Result<Vec<Cidr>, PolicyError> {
    v.iter()
        .map(|s| {
            Cidr::parse(s).ok_or_else(|| PolicyError::InvalidCidr {
                rule: rule.to_string(),
                value: s.clone(),
            })
        })
        .collect()
}

impl Scope {
    fn compile(rule: &str, c: &ScopeConfig) -> Result<Scope, PolicyError> {
        let mut scope = Scope {
            users: c.users.clone(),
            databases: c.databases.clone(),
            applications: c.applications.clone(),
            cidrs: cidrs(rule, &c.client_cidrs)?,
            except_users: c.except_users.clone(),
            except_databases: c.except_databases.clone(),
            except_applications: c.except_applications.clone(),
            except_cidrs: cidrs(rule, &c.except_client_cidrs)?,
            universal: false,
        };
        scope.universal = scope.users.is_empty()
            && scope.databases.is_empty()
            && scope.applications.is_empty()
            && scope.cidrs.is_empty()
            && scope.except_users.is_empty()
            && scope.except_databases.is_empty()
            && scope.except_applications.is_empty()
            && scope.except_cidrs.is_empty();
        Ok(scope)
    }

    /// Does the rule apply to this session? Every non-empty inclusion list
    /// must match, and no exclusion list may match. A session without a
    /// client address (unix socket) matches no CIDR.
    #[inline]
    pub fn applies(&self, s: &SessionScope) -> bool {
        self.universal || self.listed(s)
    }

    fn listed(&self, s: &SessionScope) -> bool {
        let any = |pats: &[String], v: &str| pats.iter().any(|p| glob(p, v));
        let ip_in = |c: &[Cidr]| {
            s.client_addr
                .is_some_and(|ip| c.iter().any(|c| c.contains(ip)))
        };
        let included = (self.users.is_empty() || any(&self.users, &s.user))
            && (self.databases.is_empty() || any(&self.databases, &s.database))
            && (self.applications.is_empty() || any(&self.applications, &s.application_name))
            && (self.cidrs.is_empty() || ip_in(&self.cidrs));
        let excluded = any(&self.except_users, &s.user)
            || any(&self.except_databases, &s.database)
            || any(&self.except_applications, &s.application_name)
            || ip_in(&self.except_cidrs);
        included && !excluded
    }
}

/// Which built-in check a rule runs, resolved from its id once at compile
/// time so matching a statement compares no strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    ContextSpoofing,
    Truncate,
    DeleteWithoutWhere,
    UpdateWithoutWhere,
    TautologicalWhere,
    Drop,
    DynamicSql,
    Unparsed,
    /// Decided on FunctionCall messages only; matches no statement.
    FunctionCall,
}

impl Builtin {
    fn of(id: &str) -> Option<Builtin> {
        Some(match id {
            "context_spoofing" => Builtin::ContextSpoofing,
            "truncate" => Builtin::Truncate,
            "delete_without_where" => Builtin::DeleteWithoutWhere,
            "update_without_where" => Builtin::UpdateWithoutWhere,
            "tautological_where" => Builtin::TautologicalWhere,
            "drop" => Builtin::Drop,
            "dynamic_sql" => Builtin::DynamicSql,
            "unparsed" => Builtin::Unparsed,
            "function_call" => Builtin::FunctionCall,
            _ => return None,
        })
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    /// `None` for custom rules.
    builtin: Option<Builtin>,
    pub action: Action,
    pub message: Option<String>,
    pub hint: String,
    pub scope: Scope,
    /// `None` for built-ins.
    pub custom: Option<CustomMatch>,
}

/// Matching criteria of a custom rule.
#[derive(Debug, Clone)]
pub struct CustomMatch {
    kinds: Vec<String>,
    tables: Vec<String>,
    access: Access,
    functions: Vec<String>,
}

/// One rule that matched one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule_id: String,
    pub action: Action,
    /// `<WHAT>` of the block message.
    pub what: String,
    pub detail: String,
    pub hint: String,
}

/// All rules of a policy.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub mode: Mode,
    pub rules: Vec<Rule>,
    pub default_schemas: Vec<String>,
    pub context: ContextProtection,
}

impl RuleSet {
    pub fn compile(cfg: &PolicyConfig) -> Result<RuleSet, PolicyError> {
        let r = &cfg.rules;
        // context_spoofing first: when it and another rule match, its
        // message is the more useful one.
        let configured: [(&str, &Option<BuiltinRuleConfig>); 9] = [
            ("context_spoofing", &r.context_spoofing),
            ("truncate", &r.truncate),
            ("delete_without_where", &r.delete_without_where),
            ("update_without_where", &r.update_without_where),
            ("tautological_where", &r.tautological_where),
            ("drop", &r.drop),
            ("dynamic_sql", &r.dynamic_sql),
            ("unparsed", &r.unparsed),
            ("function_call", &r.function_call),
        ];
        let mut rules = Vec::new();
        for (id, c) in configured {
            let default_action = match id {
                "dynamic_sql" if cfg.profile != Profile::Strict => Action::Allow,
                "unparsed" if cfg.on_unparsed == OnUnparsed::Allow => Action::Allow,
                _ => Action::Block,
            };
            let default_hint = BUILTIN_RULES
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, h)| h.to_string())
                .unwrap_or_default();
            let c = c.clone().unwrap_or_default();
            rules.push(Rule {
                id: id.to_string(),
                builtin: Builtin::of(id),
                action: c.action.unwrap_or(default_action),
                message: c.message.clone(),
                hint: c.hint.clone().unwrap_or(default_hint),
                scope: Scope::compile(id, &c.scope())?,
                custom: None,
            });
        }
        for c in &cfg.custom {
            rules.push(compile_custom(c, &rules)?);
        }
        Ok(RuleSet {
            mode: cfg.mode,
            rules,
            default_schemas: cfg.default_schemas.clone(),
            context: cfg.context.clone(),
        })
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Every rule (whatever its action) that matches `f` in session `s`,
    /// with the rules out of scope left out.
    pub fn findings(&self, f: &StatementFacts, s: &SessionScope) -> Vec<Finding> {
        let mut out = Vec::new();
        for rule in &self.rules {
            if !rule.scope.applies(s) {
                continue;
            }
            let hit = match rule.builtin {
                Some(Builtin::ContextSpoofing) => self.context.spoofing(f, &s.identity),
                _ => self.matches(rule, f),
            };
            if let Some((what, detail)) = hit {
                out.push(Finding {
                    rule_id: rule.id.clone(),
                    action: rule.action,
                    what: rule.message.clone().unwrap_or(what),
                    detail,
                    hint: rule.hint.clone(),
                });
            }
        }
        // An exemption (a matching custom `allow` rule) clears everything
        // but `unparsed` (custom rules never match unparsed facts) and
        // `context_spoofing` (pinned identity is exempted only by scoping
        // that rule itself).
        if out.iter().any(|x| {
            x.action == Action::Allow && self.rule(&x.rule_id).is_some_and(|r| r.custom.is_some())
        }) {
            out.retain(|x| x.rule_id == "unparsed" || x.rule_id == "context_spoofing");
        }
        out
    }

    /// Does `rule` match `f`? Returns (WHAT, detail).
    fn matches(&self, rule: &Rule, f: &StatementFacts) -> Option<(String, String)> {
        if f.unparsed.is_some() {
            return (rule.builtin == Some(Builtin::Unparsed)).then(|| {
                (
                    "unparseable statement".to_string(),
                    format!(
                        "pgward could not classify the statement: {}",
                        f.unparsed.as_deref().unwrap_or("")
                    ),
                )
            });
        }
        if let Some(c) = &rule.custom {
            return self.custom_matches(c, f);
        }
        match rule.builtin? {
            Builtin::Truncate => {
                let runs = f.executed_kinds.contains(&StatementKind::Truncate);
                (runs || !f.truncated.is_empty()).then(|| {
                    (
                        "TRUNCATE".to_string(),
                        format!("TRUNCATE of {}", names(&f.truncated)),
                    )
                })
            }
            b @ (Builtin::DeleteWithoutWhere | Builtin::UpdateWithoutWhere) => {
                let want_delete = b == Builtin::DeleteWithoutWhere;
                f.modifications
                    .iter()
                    .find(|m| m.op.is_delete() == want_delete && m.filter == Filter::Missing)
                    .map(|m| {
                        let verb = if want_delete { "DELETE" } else { "UPDATE" };
                        (
                            format!("{verb} without WHERE"),
                            format!(
                                "{} on table {} has no WHERE clause and would touch every row",
                                m.op.sql(),
                                m.table
                            ),
                        )
                    })
            }
            Builtin::TautologicalWhere => f
                .modifications
                .iter()
                .find(|m| m.filter == Filter::Tautology)
                .map(|m| {
                    let verb = if m.op.is_delete() { "DELETE" } else { "UPDATE" };
                    (
                        format!("{verb} with a tautological WHERE"),
                        format!(
                            "{} on table {} has a condition that is always true",
                            m.op.sql(),
                            m.table
                        ),
                    )
                }),
            Builtin::Drop => {
                let guarded = |k: &ObjectKind| {
                    matches!(
                        k,
                        ObjectKind::Table
                            | ObjectKind::Schema
                            | ObjectKind::Database
                            | ObjectKind::Owned
                            | ObjectKind::MaterializedView
                    )
                };
                let kind = match &f.kind {
                    StatementKind::Drop(k) if guarded(k) => Some(k.clone()),
                    _ => f.dropped.iter().map(|(k, _)| k.clone()).find(guarded),
                }?;
                let objs: Vec<QualifiedName> = f
                    .dropped
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, n)| n.clone())
                    .collect();
                Some((
                    format!("DROP {}", kind.sql()),
                    format!("DROP {} {}", kind.sql(), names(&objs)),
                ))
            }
            Builtin::DynamicSql => f.dynamic_sql.then(|| {
                (
                    format!("dynamic SQL ({})", f.kind.sql()),
                    format!("{} contains code pgward cannot check", f.kind.sql()),
                )
            }),
            Builtin::ContextSpoofing | Builtin::Unparsed | Builtin::FunctionCall => None,
        }
    }

    fn custom_matches(&self, c: &CustomMatch, f: &StatementFacts) -> Option<(String, String)> {
        let kind_hit = if c.kinds.is_empty() {
            None
        } else {
            Some(
                f.executed_kinds
                    .iter()
                    .find(|k| c.kinds.iter().any(|w| k.matches(w)))?
                    .clone(),
            )
        };
        let mut table_hit = None;
        if !c.tables.is_empty() {
            let mut candidates: Vec<&QualifiedName> = Vec::new();
            if c.access != Access::Write {
                candidates.extend(&f.tables_read);
            }
            if c.access != Access::Read {
                candidates.extend(&f.tables_written);
                candidates.extend(&f.truncated);
                candidates.extend(f.dropped.iter().map(|(_, n)| n));
            }
            table_hit = Some(
                candidates
                    .into_iter()
                    .find(|n| {
                        c.tables
                            .iter()
                            .any(|p| name_glob(p, n, &self.default_schemas))
                    })?
                    .clone(),
            );
        }
        let mut fn_hit = None;
        if !c.functions.is_empty() {
            let mut schemas = vec!["pg_catalog".to_string()];
            schemas.extend(self.default_schemas.iter().cloned());
            fn_hit = Some(
                f.functions
                    .iter()
                    .find(|n| c.functions.iter().any(|p| name_glob(p, n, &schemas)))?
                    .clone(),
            );
        }
        let kind = kind_hit.unwrap_or_else(|| f.kind.clone());
        let mut detail = kind.sql();
        if let Some(t) = table_hit {
            detail.push_str(&format!(" on table {t}"));
        }
        if let Some(func) = fn_hit {
            detail.push_str(&format!(" calling {func}()"));
        }
        Some((kind.sql(), detail))
    }
}

fn names(v: &[QualifiedName]) -> String {
    if v.is_empty() {
        return "(unnamed)".into();
    }
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Match a name glob (`schema.name`, `*.users`, `audit_*`) against a name.
/// A pattern without a dot matches the name in any schema. An unqualified
/// name (schema resolved by search_path) is matched as if it lived in each
/// of `default_schemas`.
pub fn name_glob(pattern: &str, n: &QualifiedName, default_schemas: &[String]) -> bool {
    match pattern.rsplit_once('.') {
        None => glob(pattern, &n.name),
        Some((sp, np)) => {
            glob(np, &n.name)
                && match &n.schema {
                    Some(s) => glob(sp, s),
                    None => default_schemas.iter().any(|s| glob(sp, s)),
                }
        }
    }
}

fn compile_custom(c: &CustomRuleConfig, existing: &[Rule]) -> Result<Rule, PolicyError> {
    let id_ok = !c.id.is_empty()
        && c.id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
    if !id_ok {
        return Err(PolicyError::BadRuleId(c.id.clone()));
    }
    if existing.iter().any(|r| r.id == c.id) {
        return Err(PolicyError::DuplicateRuleId(c.id.clone()));
    }
    if c.kinds.is_empty() && c.tables.is_empty() && c.functions.is_empty() {
        return Err(PolicyError::EmptyCustomRule(c.id.clone()));
    }
    let mut kinds = Vec::new();
    for k in &c.kinds {
        let k = k.to_ascii_lowercase();
        let known = KIND_NAMES.contains(&k.as_str())
            || ["drop_", "create_", "alter_"]
                .iter()
                .any(|p| k.starts_with(p));
        if !known {
            return Err(PolicyError::UnknownKind {
                rule: c.id.clone(),
                kind: k,
            });
        }
        kinds.push(k);
    }
    Ok(Rule {
        id: c.id.clone(),
        builtin: None,
        action: c.action,
        message: c.message.clone(),
        hint: c
            .hint
            .clone()
            .unwrap_or_else(|| format!("see pgward policy rule \"{}\"", c.id)),
        scope: Scope::compile(&c.id, &c.scope())?,
        custom: Some(CustomMatch {
            kinds,
            tables: c.tables.clone(),
            access: c.access,
            functions: c.functions.clone(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(c.contains("10.1.2.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.9.9".parse().expect("ip")));
        let c6 = Cidr::parse("fd00::/8").expect("cidr");
        assert!(c6.contains("fd12::1".parse().expect("ip")));
        assert!(!c6.contains("fe80::1".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("cidr")
            .contains("1.2.3.4".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
        assert!(Cidr::parse("127.0.0.1")
            .expect("bare")
            .contains("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn globs() {
        assert!(glob("audit_*", "audit_log"));
        assert!(glob("*", ""));
        assert!(!glob("audit_*", "audits"));
        assert!(glob("a?c", "abc"));
        let n = QualifiedName::new(Some("public"), "users");
        assert!(name_glob("*.users", &n, &[]));
        assert!(name_glob("users", &n, &[]));
        assert!(name_glob("public.*", &n, &[]));
        assert!(!name_glob("audit.*", &n, &[]));
        let u = QualifiedName::new(None, "users");
        assert!(name_glob("public.users", &u, &["public".into()]));
        assert!(!name_glob("audit.users", &u, &["public".into()]));
    }
}
