//! pgward's policy engine: a pure function from (SQL text, session scope,
//! the session's prepared statements) to a [`Verdict`]. No I/O, no global
//! state; a [`Policy`] is built once per configuration (re)load and shared
//! by all sessions (`Send + Sync`).
//!
//! ```text
//! Query text ─▶ lexer (Postgres-faithful split, ambiguity check)
//!            ─▶ classify (sqlparser AST walk, token fallbacks) ─▶ StatementFacts   [cached by text or shape]
//!            ─▶ EXECUTE resolution against the session's PreparedRegistry
//!            ─▶ rules (built-in + custom, scoped by user/db/app/CIDR) ─▶ Verdict
//! ```
//!
//! A multi-statement Query is blocked whole if any statement is blocked
//! (Postgres runs a simple-protocol Query string as one implicit
//! transaction unless it contains explicit transaction control, so
//! forwarding part of it is never right).
//!
//! Prepared statements: call [`Policy::observe_prepared`] with each
//! evaluation the proxy forwards, so `PREPARE p AS DELETE FROM t` records
//! `p` (with the DELETE's facts) and `DEALLOCATE` / `DISCARD ALL` forget,
//! except names whose EXECUTE would be blocked (the server may not run
//! what was sent). Protocol-level named statements (Parse) share Postgres'
//! namespace with SQL PREPARE: record them with
//! [`PreparedRegistry::record_prepare`] too, and report Close with
//! [`Policy::observe_close`].
//!
//! Like the prepared statements, a session keeps a [`FactsMemo`] of the
//! statement it classified last and passes it to
//! [`Policy::evaluate_lexed`]: repeats are answered from it before the
//! shared cache.

pub mod builtin_functions;
pub mod cache;
pub mod classify;
pub mod config;
pub mod context;
pub mod facts;
pub mod fold;
pub mod lexer;
pub mod memo;
pub mod quote;
pub mod rules;
pub mod soft_delete;
pub mod template;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

pub use config::{Action, Mode, PolicyConfig};
pub use context::{ContextProtection, Identity, IdentityKind, RoleGuard};
pub use facts::{
    AuditClass, Filter, ModOp, Modification, ObjectKind, QualifiedName, SettingChange,
    StatementFacts, StatementKind,
};
pub use lexer::LexOptions;

use cache::FactsCache;
pub use memo::FactsMemo;
use rules::{Finding, RuleSet};

/// Errors building a [`Policy`] from configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy config: {0}")]
    Toml(String),
    #[error("rule \"{rule}\": invalid client CIDR {value:?}")]
    InvalidCidr { rule: String, value: String },
    #[error("rule \"{rule}\": unknown statement kind {kind:?} (known: {})", facts::KIND_NAMES.join(", "))]
    UnknownKind { rule: String, kind: String },
    #[error(
        "duplicate rule id \"{0}\" (custom ids must differ from each other and from built-in ids)"
    )]
    DuplicateRuleId(String),
    #[error("invalid rule id {0:?} (use letters, digits, '_' and '-')")]
    BadRuleId(String),
    #[error("function_call_allow: {0:?} is neither a known built-in function nor an OID (find it with SELECT 'name(args)'::regprocedure::oid)")]
    UnknownFunction(String),
    #[error("custom rule \"{0}\" matches nothing: give at least one of kinds, tables, functions")]
    EmptyCustomRule(String),
    #[error("policy.soft_delete: {0}")]
    SoftDelete(String),
}

/// Who is asking: the authenticated session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionScope {
    pub user: String,
    pub database: String,
    pub application_name: String,
    /// `None` for unix-socket clients.
    pub client_addr: Option<IpAddr>,
    /// How pgward established who the client is.
    pub identity: Identity,
}

impl SessionScope {
    /// Who the session acts for, as written into audit trails and soft-delete
    /// `deleted_by` columns: the JWT subject or certificate CN for identities
    /// pgward verified (their Postgres role is pgward's shared login), else
    /// the authenticated user.
    pub fn identity_label(&self) -> &str {
        match self.identity.kind {
            IdentityKind::Jwt | IdentityKind::Certificate if !self.identity.subject.is_empty() => {
                &self.identity.subject
            }
            _ => &self.user,
        }
    }
}

/// A blocked statement, ready to become an ErrorResponse (SQLSTATE 42501).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub rule_id: String,
    /// `pgward: <WHAT> blocked by rule "<id>"`.
    pub message: String,
    /// Names the statement kind and the table(s).
    pub detail: String,
    /// How to do it the allowed way.
    pub hint: String,
}

/// The decision for a whole Query string (or function call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Allowed, but a rule in monitor mode (or the global monitor mode)
    /// would have blocked it; audit it.
    Monitored {
        rule_id: String,
        reason: String,
    },
    Block(Block),
    /// Forward `sql` instead of the client's text: the statements at the
    /// indexes in `rewritten` were changed (soft delete); everything else is
    /// the client's text byte for byte.
    Rewrite {
        rule_id: String,
        sql: String,
        rewritten: Vec<usize>,
    },
}

/// Result of [`Policy::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// One entry per statement (EXECUTE of a known prepared statement
    /// carries the prepared body's facts, with kind Execute). Shared with
    /// the facts cache when the text was classified before: a driver that
    /// parses the same text before every Execute costs no copy.
    pub statements: Arc<Vec<StatementFacts>>,
    pub verdict: Verdict,
}

/// One session's prepared statements: name → facts of the body.
#[derive(Debug, Clone, Default)]
pub struct PreparedRegistry {
    map: HashMap<String, StatementFacts>,
}

impl PreparedRegistry {
    pub fn new() -> Self {
        Self::default()
    }
    /// Record `name` (already case-folded) as preparing a statement with
    /// these facts; replaces an earlier entry.
    pub fn record_prepare(&mut self, name: &str, facts: StatementFacts) {
        self.map.insert(name.to_string(), facts);
    }
    pub fn forget(&mut self, name: &str) {
        self.map.remove(name);
    }
    pub fn forget_all(&mut self) {
        self.map.clear();
    }
    /// Keep only the names for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &StatementFacts) -> bool) {
        self.map.retain(|name, facts| keep(name, facts));
    }
    pub fn lookup(&self, name: &str) -> Option<&StatementFacts> {
        self.map.get(name)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Prepared statements a session may hold before a PREPARE whose EXECUTE
/// would be blocked is refused outright (see `prepare_beyond_limit`).
pub const MAX_KEPT_PREPARED: usize = 1000;

/// A compiled policy plus its facts cache.
pub struct Policy {
    /// Distinct for every policy built in this process (see [`Policy::id`]).
    id: u64,
    rules: RuleSet,
    cache: FactsCache,
    /// Facts of literal-insensitive statements, keyed by shape.
    templates: FactsCache,
    /// OIDs the FunctionCall message may call despite `function_call`.
    function_call_allow: std::collections::HashSet<u32>,
    soft_delete: soft_delete::SoftDelete,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Validate and compile a configuration.
    pub fn from_config(cfg: &PolicyConfig) -> Result<Policy, PolicyError> {
        let mut function_call_allow = std::collections::HashSet::new();
        for entry in &cfg.function_call_allow {
            let oids = builtin_functions::resolve(entry)
                .ok_or_else(|| PolicyError::UnknownFunction(entry.clone()))?;
            function_call_allow.extend(oids);
        }
        let mut tables: Vec<soft_delete::SoftDeleteTable> = Vec::new();
        for entry in &cfg.soft_delete {
            let t = soft_delete::validate(entry).map_err(PolicyError::SoftDelete)?;
            if tables.iter().any(|o| {
                (&o.schema, &o.name, &o.config.database) == (&t.schema, &t.name, &t.config.database)
            }) {
                return Err(PolicyError::SoftDelete(format!(
                    "table {} is listed twice",
                    entry.table
                )));
            }
            tables.push(t);
        }
        // Verdicts a session memo kept name the policy that decided them.
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Policy {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            rules: RuleSet::compile(cfg)?,
            cache: FactsCache::new(cfg.cache_entries),
            templates: FactsCache::new(cfg.cache_entries),
            function_call_allow,
            soft_delete: soft_delete::SoftDelete::new(tables, cfg.default_schemas.clone()),
        })
    }

    /// Distinct for every policy built in this process: a reload builds a
    /// new one, so verdicts kept under the old id are not reused.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `mode = "off"`: the proxy forwards without evaluating.
    pub fn is_off(&self) -> bool {
        self.rules.mode == Mode::Off
    }

    /// Soft-delete tables, validated (empty when none are configured).
    pub fn soft_delete_tables(&self) -> &[soft_delete::SoftDeleteTable] {
        self.soft_delete.tables()
    }

    /// Whether the policy has soft-delete tables (sessions then track which
    /// replies to re-tag).
    pub fn has_soft_delete(&self) -> bool {
        !self.soft_delete.is_empty()
    }

    /// Classify `sql` (cached) and decide.
    pub fn evaluate(
        &self,
        sql: &str,
        scope: &SessionScope,
        lex: LexOptions,
        prepared: &PreparedRegistry,
    ) -> Evaluation {
        self.evaluate_lexed(sql, scope, lex, prepared, &mut FactsMemo::new())
            .0
    }

    /// [`Policy::evaluate`], also handing back the tokens of `sql` when
    /// this call lexed it (an exact-text cache hit does not), so the audit
    /// can redact the text without lexing it a second time. `memo` is the
    /// session's (see [`FactsMemo`]).
    pub fn evaluate_lexed(
        &self,
        sql: &str,
        scope: &SessionScope,
        lex: LexOptions,
        prepared: &PreparedRegistry,
        memo: &mut FactsMemo,
    ) -> (Evaluation, Option<lexer::Lexed>) {
        let scs = lex.standard_conforming_strings;
        // A repeat of the last text (a driver's Parse before each Execute).
        // `cache_entries = 0` turns the memo off, verdicts included.
        if self.cache.enabled() {
            if let Some((statements, verdict)) = memo.decided(sql, scs, self.id) {
                let eval = Evaluation {
                    statements,
                    verdict,
                };
                return (eval, None);
            }
        }
        let (facts, lexed) = self.facts(sql, lex, memo);
        // EXECUTE and PREPARE are judged against the session's prepared
        // statements, which the memo does not follow: never kept.
        let resolved = facts
            .iter()
            .any(|f| f.execute.is_some() || f.prepare.is_some());
        let statements = if resolved {
            Arc::new(resolve_prepared(&facts, prepared))
        } else {
            facts
        };
        // A template instance: the rules decided its shape already. Only
        // with standard strings, the lexing the rules' own token scans use.
        let instance = self.cache.enabled() && scs && memo.expects_instance();
        let mut verdict = match instance.then(|| memo.instance_decided(self.id)).flatten() {
            Some(verdict) => verdict,
            None => {
                let verdict = self.decide(&statements, scope);
                if instance && verdict == Verdict::Allow {
                    memo.remember_instance_verdict(self.id, &verdict);
                }
                verdict
            }
        };
        if !matches!(verdict, Verdict::Block(_)) && !self.soft_delete.is_empty() {
            verdict = self.soft_delete_verdict(sql, lex, &statements, scope, verdict);
        }
        if resolved && !matches!(verdict, Verdict::Block(_)) {
            if let Some(block) = self.prepare_beyond_limit(&statements, prepared, scope) {
                verdict = Verdict::Block(block);
            }
        }
        if !resolved && self.cache.enabled() {
            memo.remember_verdict(sql, scs, self.id, &verdict);
        }
        let eval = Evaluation {
            statements,
            verdict,
        };
        (eval, lexed)
    }

    /// Apply soft delete to an allowed evaluation: rewrite in enforce mode,
    /// only note it in monitor mode; a DELETE that cannot be rewritten with
    /// certainty is blocked (it must not hard-delete).
    fn soft_delete_verdict(
        &self,
        sql: &str,
        lex: LexOptions,
        statements: &[StatementFacts],
        scope: &SessionScope,
        verdict: Verdict,
    ) -> Verdict {
        let enforce = self.rules.mode == Mode::Enforce;
        match self.soft_delete.rewrite(sql, lex, statements, scope) {
            // A purge role's hard delete is allowed and flagged for the audit.
            Ok(None) => match (&verdict, self.soft_delete.hard_delete(statements, scope)) {
                (Verdict::Allow, Some(reason)) => Verdict::Monitored {
                    rule_id: soft_delete::RULE_ID.into(),
                    reason,
                },
                _ => verdict,
            },
            Ok(Some(_)) if !enforce => match verdict {
                Verdict::Allow => Verdict::Monitored {
                    rule_id: soft_delete::RULE_ID.into(),
                    reason: "DELETE on a soft-delete table would become an UPDATE (monitor only)"
                        .into(),
                },
                other => other,
            },
            Ok(Some(rw)) => Verdict::Rewrite {
                rule_id: soft_delete::RULE_ID.into(),
                sql: rw.sql,
                rewritten: rw.statements,
            },
            Err(reason) if enforce => Verdict::Block(Block {
                rule_id: soft_delete::RULE_ID.into(),
                message: format!(
                    "pgward: DELETE on a soft-delete table blocked by rule \"{}\"",
                    soft_delete::RULE_ID
                ),
                detail: reason,
                hint: "Write it as a plain DELETE FROM table [AS alias] [USING …] WHERE … [RETURNING …] so pgward can turn it into a soft delete.".into(),
            }),
            Err(reason) => Verdict::Monitored {
                rule_id: soft_delete::RULE_ID.into(),
                reason: format!("soft delete could not be applied (monitor only): {reason}"),
            },
        }
    }

    /// Update the session's registry after `evaluation` was forwarded:
    /// records PREPARE, applies DEALLOCATE and DISCARD ALL. Does nothing for
    /// a blocked evaluation (it never reached the server).
    ///
    /// pgward sees these statements when they are sent, not when they run:
    /// a PREPARE of a name in use fails, a DEALLOCATE in an aborted
    /// transaction or after an earlier error in the same Query does
    /// nothing. So a name whose EXECUTE would be blocked is never replaced
    /// or forgotten here, whatever the server did with the statement: a
    /// later EXECUTE of it stays blocked (at worst one the server would
    /// have refused as unknown). Other names follow what was sent; if the
    /// server kept one pgward forgot, its body is one this policy lets run.
    pub fn observe_prepared(
        &self,
        evaluation: &Evaluation,
        registry: &mut PreparedRegistry,
        scope: &SessionScope,
    ) {
        if matches!(evaluation.verdict, Verdict::Block(_)) {
            return;
        }
        for f in evaluation.statements.iter() {
            if let Some((name, body)) = &f.prepare {
                if !self.pins(registry, name, scope) {
                    registry.record_prepare(name, (**body).clone());
                }
            }
            let forget_all =
                f.deallocate == Some(None) || f.settings.contains(&SettingChange::DiscardAll);
            if forget_all {
                registry.retain(|name, body| self.blocks_execute(name, body, scope));
            } else if let Some(Some(name)) = &f.deallocate {
                self.observe_close(name, registry, scope);
            }
        }
    }

    /// A protocol Close of statement `name` was forwarded (it shares SQL
    /// PREPARE's namespace). Like DEALLOCATE, it may never run: a Close
    /// after an error in the same pipeline is skipped by the server.
    pub fn observe_close(&self, name: &str, registry: &mut PreparedRegistry, scope: &SessionScope) {
        if !self.pins(registry, name, scope) {
            registry.forget(name);
        }
    }

    /// Whether `name` is kept whatever is sent (see [`Self::observe_prepared`]).
    fn pins(&self, registry: &PreparedRegistry, name: &str, scope: &SessionScope) -> bool {
        registry
            .lookup(name)
            .is_some_and(|body| self.blocks_execute(name, body, scope))
    }

    /// A PREPARE of a new name whose EXECUTE would be blocked, once the
    /// session already holds [`MAX_KEPT_PREPARED`] names: such names are
    /// never forgotten (see [`Self::observe_prepared`]), so without a limit
    /// a loop of PREPARE and DEALLOCATE would grow pgward's memory without
    /// end. Refusing the PREPARE costs a client nothing it could have had:
    /// pgward would block its EXECUTE.
    fn prepare_beyond_limit(
        &self,
        statements: &[StatementFacts],
        prepared: &PreparedRegistry,
        scope: &SessionScope,
    ) -> Option<Block> {
        if prepared.len() < MAX_KEPT_PREPARED {
            return None;
        }
        statements.iter().find_map(|f| {
            let (name, body) = f.prepare.as_ref()?;
            if prepared.lookup(name).is_some() {
                return None;
            }
            let b = self.execute_block(name, body, scope)?;
            Some(Block {
                message: format!(
                    "pgward: PREPARE {name} blocked: rule \"{}\" would block its EXECUTE, and this session already has {MAX_KEPT_PREPARED} prepared statements",
                    b.rule_id
                ),
                detail: b.detail,
                hint: "Prepare a statement this policy lets run, or start a new session.".into(),
                rule_id: b.rule_id,
            })
        })
    }

    /// The block `EXECUTE name` of `body` would get for `scope`, if any.
    fn execute_block(
        &self,
        name: &str,
        body: &StatementFacts,
        scope: &SessionScope,
    ) -> Option<Block> {
        let executed = as_executed(name, body);
        match self.decide(std::slice::from_ref(&executed), scope) {
            Verdict::Block(b) => Some(b),
            _ => None,
        }
    }

    /// Would `EXECUTE name` of `body` be blocked for `scope`?
    fn blocks_execute(&self, name: &str, body: &StatementFacts, scope: &SessionScope) -> bool {
        self.execute_block(name, body, scope).is_some()
    }

    /// Decide on a Query/Parse whose text pgward cannot read safely (invalid
    /// UTF-8, an embedded NUL, a client encoding whose multibyte characters
    /// may contain `\\` or quote bytes): the `unparsed` rule decides, so it
    /// fails closed unless `on_unparsed = "allow"`.
    pub fn evaluate_unreadable(
        &self,
        text: &str,
        reason: &str,
        scope: &SessionScope,
    ) -> Evaluation {
        let statements = Arc::new(vec![StatementFacts::unparsed(text, reason.to_string())]);
        let verdict = self.decide(&statements, scope);
        Evaluation {
            statements,
            verdict,
        }
    }

    /// Decide on a FunctionCall protocol message (only the function's OID is
    /// known, so only the `function_call` rule and its scope apply).
    pub fn evaluate_function_call(&self, fn_oid: u32, scope: &SessionScope) -> Evaluation {
        let mut findings = Vec::new();
        // set_config through the fast path writes settings like SELECT set_config.
        if fn_oid == context::SET_CONFIG_OID {
            if let Some(rule) = self.rules.rule("context_spoofing") {
                if rule.scope.applies(scope) {
                    findings.push(Finding {
                        rule_id: rule.id.clone(),
                        action: rule.action,
                        what: rule
                            .message
                            .clone()
                            .unwrap_or_else(|| "change of a pinned context setting".to_string()),
                        detail: "FunctionCall of set_config (any setting name)".to_string(),
                        hint: rule.hint.clone(),
                    });
                }
            }
        }
        let allowed = self.function_call_allow.contains(&fn_oid);
        if let Some(rule) = self.rules.rule("function_call").filter(|_| !allowed) {
            if rule.scope.applies(scope) {
                findings.push(Finding {
                    rule_id: rule.id.clone(),
                    action: rule.action,
                    what: rule
                        .message
                        .clone()
                        .unwrap_or_else(|| "FunctionCall message".to_string()),
                    detail: format!("fast-path call of function OID {fn_oid}"),
                    hint: rule.hint.clone(),
                });
            }
        }
        Evaluation {
            statements: Arc::default(),
            verdict: self.combine(&[findings]),
        }
    }

    /// Human-readable account of how `sql` is judged (for `pgward explain`):
    /// facts per statement, each rule's decision, the final verdict.
    pub fn explain(&self, sql: &str, scope: &SessionScope) -> String {
        let eval = self.evaluate(sql, scope, LexOptions::default(), &PreparedRegistry::new());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "session: user={:?} database={:?} application={:?} client={}",
            scope.user,
            scope.database,
            scope.application_name,
            scope
                .client_addr
                .map_or("local".to_string(), |a| a.to_string())
        );
        let _ = writeln!(out, "mode: {:?}", self.rules.mode);
        for (i, f) in eval.statements.iter().enumerate() {
            let _ = writeln!(out, "\nstatement {}: {}", i + 1, f.text);
            write_facts(&mut out, f);
            let findings = self.rules.findings(f, scope);
            for rule in &self.rules.rules {
                let decision = if !rule.scope.applies(scope) {
                    "out of scope".to_string()
                } else if let Some(x) = findings.iter().find(|x| x.rule_id == rule.id) {
                    format!("MATCH ({:?}): {}", x.action, x.detail)
                } else {
                    "no match".to_string()
                };
                let _ = writeln!(
                    out,
                    "  rule {:<22} [{:?}] {}",
                    rule.id, rule.action, decision
                );
            }
        }
        let _ = writeln!(out, "\nverdict: {}", describe_verdict(&eval.verdict));
        out
    }

    fn facts(
        &self,
        sql: &str,
        lex: LexOptions,
        memo: &mut FactsMemo,
    ) -> (Arc<Vec<StatementFacts>>, Option<lexer::Lexed>) {
        let scs = lex.standard_conforming_strings;
        // `cache_entries = 0` turns off the session memo too. (Made only
        // then: a memo is not free to make and drop per statement.)
        let mut scratch;
        let memo = if self.cache.enabled() {
            memo
        } else {
            scratch = FactsMemo::new();
            &mut scratch
        };
        if let Some(hit) = memo.exact(sql, scs) {
            return (hit, None);
        }
        // Another instance of the template answered last, told by its bytes.
        if let Some(hit) = memo.instance_by_shape(sql, lex) {
            return hit;
        }
        // Both shared caches answer what classifying would, so the order
        // they are asked in is only a matter of cost: after a template
        // instance, the next text is most likely another instance, which
        // the exact cache cannot know (a hash and a lock for nothing).
        let instance_first = memo.expects_instance();
        if !instance_first {
            if let Some(hit) = self.cache.get(sql, scs) {
                memo.remember_exact(sql, scs, &hit);
                return (hit, None);
            }
        }
        // Plain reads with inlined literals: one entry per shape, not per
        // text (see `template`). Lexing fails the same way in classify, so
        // an unlexable text simply takes the exact path.
        let mut buffer = memo.take_lexed();
        let lexed = lexer::lex_into(sql, lex, &mut buffer)
            .is_ok()
            .then_some(buffer);
        if let Some(l) = &lexed {
            if let Some(facts) = memo.instance(scs, sql, l) {
                return (facts, lexed);
            }
        }
        let template_key = lexed.as_ref().and_then(|l| template::key(sql, l));
        if let (Some(key), Some(l)) = (template_key.as_deref(), &lexed) {
            if let Some(t) = self.templates.get(key, scs) {
                let facts = Arc::new(template::instantiate(&t, sql, l));
                memo.remember_template(key.to_string(), scs, &facts, sql, l);
                return (facts, lexed);
            }
        }
        if instance_first {
            if let Some(hit) = self.cache.get(sql, scs) {
                memo.remember_exact(sql, scs, &hit);
                return (hit, lexed);
            }
        }
        let facts = Arc::new(classify::classify_with(sql, lex));
        match (template_key, &lexed) {
            (Some(key), Some(l)) if template::literal_insensitive(&facts) => {
                self.templates.put(&key, scs, facts.clone());
                memo.remember_template(key, scs, &facts, sql, l);
            }
            _ => {
                self.cache.put(sql, scs, facts.clone());
                memo.remember_exact(sql, scs, &facts);
            }
        }
        (facts, lexed)
    }

    fn decide(&self, statements: &[StatementFacts], scope: &SessionScope) -> Verdict {
        if let [f] = statements {
            // The usual case: no list of lists to allocate.
            return self.combine(&[self.rules.findings(f, scope)]);
        }
        let per_stmt: Vec<Vec<Finding>> = statements
            .iter()
            .map(|f| self.rules.findings(f, scope))
            .collect();
        self.combine(&per_stmt)
    }

    /// Any block → Block (the first one, in statement order); else any
    /// monitor → Monitored; else Allow. Global monitor mode turns blocks
    /// into Monitored.
    fn combine(&self, per_stmt: &[Vec<Finding>]) -> Verdict {
        let total = per_stmt.len();
        let mut monitored: Option<Verdict> = None;
        for (i, findings) in per_stmt.iter().enumerate() {
            for x in findings {
                let where_ = if total > 1 {
                    format!(" (statement {} of {total})", i + 1)
                } else {
                    String::new()
                };
                let message = format!("pgward: {} blocked by rule \"{}\"", x.what, x.rule_id);
                // Pinned identity is not a rollout decision: global monitor
                // mode does not open it (the rule's own action can).
                let mode = match self.rules.mode {
                    Mode::Monitor if x.rule_id == "context_spoofing" => Mode::Enforce,
                    m => m,
                };
                match (x.action, mode) {
                    (Action::Block, Mode::Enforce) => {
                        return Verdict::Block(Block {
                            rule_id: x.rule_id.clone(),
                            message,
                            detail: format!("{}{where_}", x.detail),
                            hint: x.hint.clone(),
                        })
                    }
                    (Action::Block, Mode::Monitor | Mode::Off) | (Action::Monitor, _) => {
                        monitored.get_or_insert(Verdict::Monitored {
                            rule_id: x.rule_id.clone(),
                            reason: format!("{message} (monitor only): {}{where_}", x.detail),
                        });
                    }
                    (Action::Allow, _) => {}
                }
            }
        }
        monitored.unwrap_or(Verdict::Allow)
    }
}

/// `EXECUTE name` of a known prepared statement gets its body's facts
/// (kind Execute, executed kinds Execute + the body's). Unknown names are
/// left alone (allowed: Postgres will raise the error itself).
/// The facts with each `EXECUTE name` replaced by what `name` does;
/// PREPAREs earlier in the same string are visible to later EXECUTEs.
fn resolve_prepared(facts: &[StatementFacts], prepared: &PreparedRegistry) -> Vec<StatementFacts> {
    let mut local: Option<PreparedRegistry> = None;
    let mut statements = Vec::with_capacity(facts.len());
    for f in facts {
        let reg = local.as_ref().unwrap_or(prepared);
        statements.push(resolve_execute(f, reg));
        if let Some((name, body)) = &f.prepare {
            local
                .get_or_insert_with(|| prepared.clone())
                .record_prepare(name, (**body).clone());
        }
    }
    statements
}

fn resolve_execute(f: &StatementFacts, prepared: &PreparedRegistry) -> StatementFacts {
    let Some(name) = &f.execute else {
        return f.clone();
    };
    let Some(body) = prepared.lookup(name) else {
        return f.clone();
    };
    let mut out = as_executed(name, body);
    out.text = f.text.clone();
    out.functions.extend(f.functions.iter().cloned());
    out
}

/// The facts of `EXECUTE name` where `name` prepares `body`.
fn as_executed(name: &str, body: &StatementFacts) -> StatementFacts {
    let mut out = body.clone();
    out.kind = StatementKind::Execute;
    out.execute = Some(name.to_string());
    out.prepare = None;
    let mut kinds = vec![StatementKind::Execute];
    kinds.extend(body.executed_kinds.iter().cloned());
    out.executed_kinds = kinds;
    out
}

fn describe_verdict(v: &Verdict) -> String {
    match v {
        Verdict::Allow => "ALLOW".into(),
        Verdict::Monitored { rule_id, reason } => {
            format!("ALLOW (monitored by rule \"{rule_id}\": {reason})")
        }
        Verdict::Block(b) => format!(
            "BLOCK\n  message: {}\n  detail:  {}\n  hint:    {}",
            b.message, b.detail, b.hint
        ),
        Verdict::Rewrite {
            rule_id,
            sql,
            rewritten,
        } => {
            let n: Vec<String> = rewritten.iter().map(|i| (i + 1).to_string()).collect();
            format!(
                "REWRITE by rule \"{rule_id}\" (statement {})\n  sent as: {sql}",
                n.join(", ")
            )
        }
    }
}

fn write_facts(out: &mut String, f: &StatementFacts) {
    let list = |v: &[QualifiedName]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "  kind: {}  class: {}", f.kind.sql(), f.class.as_str());
    if let Some(u) = &f.unparsed {
        let _ = writeln!(out, "  UNPARSED: {u}");
    }
    if let Some(fb) = &f.fallback {
        let _ = writeln!(out, "  classified by fallback: {fb}");
    }
    let kinds: Vec<String> = f.executed_kinds.iter().map(|k| k.sql()).collect();
    let _ = writeln!(out, "  executes: {}", kinds.join(", "));
    if !f.tables_read.is_empty() {
        let _ = writeln!(out, "  reads: {}", list(&f.tables_read));
    }
    if !f.tables_written.is_empty() {
        let _ = writeln!(out, "  writes: {}", list(&f.tables_written));
    }
    for m in &f.modifications {
        let _ = writeln!(
            out,
            "  {} {}{}: WHERE {:?}",
            m.op.sql(),
            if m.only { "ONLY " } else { "" },
            m.table,
            m.filter
        );
    }
    if !f.functions.is_empty() {
        let _ = writeln!(out, "  calls: {}", list(&f.functions));
    }
    if !f.settings.is_empty() {
        let _ = writeln!(out, "  settings: {:?}", f.settings);
    }
    if f.dynamic_sql {
        let _ = writeln!(out, "  dynamic SQL");
    }
    if let Some((name, body)) = &f.prepare {
        let _ = writeln!(out, "  prepares {name:?} as {}", body.kind.sql());
    }
}
