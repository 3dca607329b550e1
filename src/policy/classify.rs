//! Statement classification: SQL text → [`StatementFacts`].
//!
//! The pipeline for one Query string:
//!
//! 1. [`lexer::lex`] splits it into statements exactly as Postgres will and
//!    refuses ambiguous input (unterminated quotes/comments, NUL, nesting
//!    beyond [`lexer::MAX_NESTING`], operator chains beyond
//!    [`lexer::MAX_OPERATORS`]): the whole string is then one unparsed fact.
//! 2. Each statement is normalised by [`lexer::normalized_statement`] (so
//!    `sqlparser` sees Postgres' token boundaries) with two targeted token
//!    edits for known `sqlparser` gaps (see [`token_edits`]), then parsed with
//!    `PostgreSqlDialect` and a raised recursion limit.
//! 3. The whole AST is walked: every CTE, subquery, set operation, nested
//!    DML, EXPLAIN ANALYZE body, COPY query, CREATE TABLE AS query, PREPARE
//!    body, function call and join condition.
//! 4. When `sqlparser` rejects a statement, [`fallback`] may still classify
//!    it from tokens; each fallback documents what it proves. Otherwise the
//!    facts say `unparsed` with the parser's error.

use std::collections::BTreeMap;

use sqlparser::ast::{
    Assignment, CopySource, Expr, FromTable, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, Ident, JoinConstraint, JoinOperator, LimitClause, MergeAction,
    MergeClause, ObjectName, ObjectNamePart, ObjectType, OnConflictAction, OnInsert, Query, Reset,
    SelectItem, SelectItemQualifiedWildcardKind, Set, SetExpr, Statement, TableFactor, TableObject,
    TableWithJoins, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::facts::{
    AuditClass, Filter, ModOp, Modification, ObjectKind, QualifiedName, SettingChange,
    StatementFacts, StatementKind,
};
use super::fold;
use super::lexer::{self, is_kw, text, LexOptions, Lexed, Token, TokenKind};

/// `sqlparser`'s recursion limit. Its default (50) rejects ~40 nested
/// subqueries that Postgres accepts; the lexer bounds nesting at
/// [`lexer::MAX_NESTING`] so this cannot be used to exhaust the stack.
pub const PARSER_RECURSION_LIMIT: usize = 512;

/// Deepest AST recursion the walker follows; deeper → unparsed. Bounded in
/// practice by the lexer's limits, kept as a second fence.
const MAX_WALK_DEPTH: usize = 2500;

/// The function name `WHERE CURRENT OF c` is rewritten to before parsing
/// (see [`token_edits`]).
const CURRENT_OF_MARKER: &str = "pgward_current_of";

/// Classify a Query string with `standard_conforming_strings = on`.
pub fn classify(sql: &str) -> Vec<StatementFacts> {
    classify_with(sql, LexOptions::default())
}

/// Classify a Query string. One [`StatementFacts`] per statement; a string
/// the lexer refuses yields a single unparsed fact covering all of it; an
/// empty string yields none.
pub fn classify_with(sql: &str, opts: LexOptions) -> Vec<StatementFacts> {
    let lexed = match lexer::lex(sql, opts) {
        Ok(l) => l,
        Err(e) => return vec![StatementFacts::unparsed(sql, format!("lexer: {e}"))],
    };
    (0..lexed.statements.len())
        .map(|i| classify_statement(sql, &lexed, i))
        .collect()
}

fn classify_statement(sql: &str, lexed: &Lexed, idx: usize) -> StatementFacts {
    let Some(span) = lexed.statements.get(idx) else {
        return StatementFacts::unparsed("", "no such statement".into());
    };
    let original = sql.get(span.bytes.clone()).unwrap_or("");
    let toks = lexed.statement_tokens(idx);
    let base = span.tokens.start;
    // Characters no Postgres token starts with (a stray `$`, `\`, `{`, …):
    // Postgres raises a syntax error; `sqlparser` sometimes accepts them.
    if let Some(t) = toks.iter().find(|t| t.kind == TokenKind::Other) {
        return StatementFacts::unparsed(
            original,
            format!(
                "unexpected character {:?} at offset {}",
                text(sql, t),
                t.span.start
            ),
        );
    }
    let (edits, only_tables) = token_edits(sql, toks, base);
    let normalized = match lexer::normalized_statement(sql, lexed, idx, &edits) {
        Ok(n) => n,
        Err(e) => return StatementFacts::unparsed(original, format!("lexer: {e}")),
    };
    let dialect = PostgreSqlDialect {};
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .try_with_sql(&normalized)
        .and_then(|mut p| p.parse_statements());
    match parsed {
        Ok(stmts) if stmts.len() == 1 => {
            let mut w = Walker::new(original, &only_tables);
            w.top(&stmts[0]);
            w.finish()
        }
        Ok(stmts) => StatementFacts::unparsed(
            original,
            format!(
                "parser saw {} statements where Postgres sees one",
                stmts.len()
            ),
        ),
        Err(e) => match fallback(sql, toks, original) {
            Some(f) => f,
            None => StatementFacts::unparsed(original, e.to_string()),
        },
    }
}

/// Token edits applied before parsing, for two `sqlparser` gaps:
///
/// * `DELETE FROM ONLY t` / `UPDATE ONLY t` / `MERGE INTO ONLY t`:
///   `sqlparser` reads `ONLY` as the table and `t` as its alias. ONLY is a
///   reserved word in Postgres, so an unquoted `ONLY` right after those
///   keywords can only be the ONLY modifier; we drop it and remember the
///   table name that follows, so the facts say `table t, only = true`.
/// * `WHERE CURRENT OF cursor` (DELETE/UPDATE): `sqlparser` cannot parse it.
///   In Postgres' grammar `WHERE CURRENT OF name` (unquoted CURRENT and OF) is
///   always `where_or_current_clause` — no expression can start with
///   `CURRENT OF`. We rewrite it to `WHERE pgward_current_of(name)`, a
///   non-constant condition, and the walker records `Filter::CurrentOf`.
///   What this proves: the statement has a WHERE clause that restricts it to
///   the cursor's current row; everything else in the statement is still
///   parsed and walked by `sqlparser`.
fn token_edits(
    sql: &str,
    toks: &[Token],
    base: usize,
) -> (BTreeMap<usize, String>, Vec<QualifiedName>) {
    let mut edits = BTreeMap::new();
    let mut only = Vec::new();
    for i in 0..toks.len() {
        let t = &toks[i];
        if !is_kw(sql, t, "only") || i == 0 {
            continue;
        }
        let prev = &toks[i - 1];
        let after_target_kw = is_kw(sql, prev, "update")
            || (i >= 2
                && ((is_kw(sql, &toks[i - 2], "delete") && is_kw(sql, prev, "from"))
                    || (is_kw(sql, &toks[i - 2], "merge") && is_kw(sql, prev, "into"))));
        if after_target_kw {
            edits.insert(base + i, String::new());
            if let Some(name) = name_at(sql, toks, i + 1) {
                only.push(name);
            }
        }
    }
    for i in 0..toks.len().saturating_sub(3) {
        if is_kw(sql, &toks[i], "where")
            && is_kw(sql, &toks[i + 1], "current")
            && is_kw(sql, &toks[i + 2], "of")
            && matches!(toks[i + 3].kind, TokenKind::Word | TokenKind::QuotedIdent)
        {
            edits.insert(base + i + 1, format!("{CURRENT_OF_MARKER}("));
            edits.insert(base + i + 2, String::new());
            edits.insert(base + i + 3, format!("{})", text(sql, &toks[i + 3])));
        }
    }
    (edits, only)
}

/// Fold one identifier token the way Postgres does.
pub(crate) fn fold_token(sql: &str, t: &Token) -> Option<String> {
    let s = text(sql, t);
    match t.kind {
        TokenKind::Word => Some(s.to_ascii_lowercase()),
        TokenKind::QuotedIdent => {
            let inner = s.get(1..s.len().saturating_sub(1))?;
            Some(inner.replace("\"\"", "\""))
        }
        _ => None,
    }
}

/// A possibly qualified name starting at token `i` (`a`, `a.b`, `a.b.c`).
pub(crate) fn name_at(sql: &str, toks: &[Token], i: usize) -> Option<QualifiedName> {
    let mut parts = vec![fold_token(sql, toks.get(i)?)?];
    let mut j = i + 1;
    while toks.get(j).is_some_and(|t| t.kind == TokenKind::Dot) {
        parts.push(fold_token(sql, toks.get(j + 1)?)?);
        j += 2;
    }
    let name = parts.pop()?;
    Some(QualifiedName {
        schema: parts.pop(),
        name,
    })
}

/// Fold an identifier as Postgres does: unquoted → ASCII lower case,
/// quoted → as written.
pub fn fold_ident(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

fn part_str(p: &ObjectNamePart) -> String {
    match p {
        ObjectNamePart::Identifier(i) => fold_ident(i),
        ObjectNamePart::Function(f) => f.to_string(),
    }
}

/// An `ObjectName` as a [`QualifiedName`] (a catalog prefix is dropped).
pub fn qname(n: &ObjectName) -> QualifiedName {
    let len = n.0.len();
    let name = n.0.last().map(part_str).unwrap_or_default();
    let schema = if len >= 2 {
        n.0.get(len - 2).map(part_str)
    } else {
        None
    };
    QualifiedName { schema, name }
}

fn setting_name(n: &ObjectName) -> String {
    n.0.iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
            ObjectNamePart::Function(f) => f.to_string().to_ascii_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn object_kind(t: &ObjectType) -> ObjectKind {
    match t {
        ObjectType::Table => ObjectKind::Table,
        ObjectType::View => ObjectKind::View,
        ObjectType::MaterializedView => ObjectKind::MaterializedView,
        ObjectType::Index => ObjectKind::Index,
        ObjectType::Schema => ObjectKind::Schema,
        ObjectType::Database => ObjectKind::Database,
        ObjectType::Role | ObjectType::User => ObjectKind::Role,
        ObjectType::Sequence => ObjectKind::Sequence,
        ObjectType::Type => ObjectKind::Type,
        other => ObjectKind::Other(other.to_string().to_ascii_lowercase().replace(' ', "_")),
    }
}

/// The first two words of the statement's canonical text, for kinds we
/// do not name individually (`CREATE OPERATOR`, `ALTER SYSTEM`, …).
fn other_kind(s: &Statement) -> StatementKind {
    let txt = s.to_string();
    let words: Vec<&str> = txt.split_whitespace().take(2).collect();
    StatementKind::Other(words.join(" ").to_ascii_uppercase())
}

/// Top-level kind and pgAudit class of a parsed statement.
fn kind_and_class(s: &Statement) -> (StatementKind, AuditClass) {
    use AuditClass as C;
    use StatementKind as K;
    match s {
        // `WITH … DELETE …` parses as a Query whose body is the DML.
        Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Insert(_) => (K::Insert, C::Write),
            SetExpr::Update(_) => (K::Update, C::Write),
            SetExpr::Delete(_) => (K::Delete, C::Write),
            SetExpr::Merge(_) => (K::Merge, C::Write),
            _ => (K::Select, C::Read),
        },
        Statement::Insert(_) => (K::Insert, C::Write),
        Statement::Update(_) => (K::Update, C::Write),
        Statement::Delete(_) => (K::Delete, C::Write),
        Statement::Merge(_) => (K::Merge, C::Write),
        Statement::Truncate(_) => (K::Truncate, C::Write),
        Statement::Drop { object_type, .. } => {
            let k = object_kind(object_type);
            let c = if k == ObjectKind::Role {
                C::Role
            } else {
                C::Ddl
            };
            (K::Drop(k), c)
        }
        Statement::DropFunction(_) => (K::Drop(ObjectKind::Function), C::Ddl),
        Statement::DropProcedure { .. } => (K::Drop(ObjectKind::Procedure), C::Ddl),
        Statement::DropTrigger(_) => (K::Drop(ObjectKind::Trigger), C::Ddl),
        Statement::DropPolicy(_) => (K::Drop(ObjectKind::Policy), C::Ddl),
        Statement::DropExtension(_) => (K::Drop(ObjectKind::Extension), C::Ddl),
        Statement::DropDomain(_) => (K::Drop(ObjectKind::Domain), C::Ddl),
        Statement::CreateTable(_) => (K::Create(ObjectKind::Table), C::Ddl),
        Statement::CreateView(v) => {
            let k = if v.materialized {
                ObjectKind::MaterializedView
            } else {
                ObjectKind::View
            };
            (K::Create(k), C::Ddl)
        }
        Statement::CreateIndex(_) => (K::Create(ObjectKind::Index), C::Ddl),
        Statement::CreateSchema { .. } => (K::Create(ObjectKind::Schema), C::Ddl),
        Statement::CreateDatabase { .. } => (K::Create(ObjectKind::Database), C::Ddl),
        Statement::CreateRole(_) | Statement::CreateUser(_) => {
            (K::Create(ObjectKind::Role), C::Role)
        }
        Statement::CreateSequence { .. } => (K::Create(ObjectKind::Sequence), C::Ddl),
        Statement::CreateType { .. } => (K::Create(ObjectKind::Type), C::Ddl),
        Statement::CreateDomain(_) => (K::Create(ObjectKind::Domain), C::Ddl),
        Statement::CreateExtension(_) => (K::Create(ObjectKind::Extension), C::Ddl),
        Statement::CreatePolicy(_) => (K::Create(ObjectKind::Policy), C::Ddl),
        Statement::CreateTrigger(_) => (K::Create(ObjectKind::Trigger), C::Ddl),
        Statement::CreateFunction(_) | Statement::CreateProcedure { .. } => {
            (K::CreateFunction, C::Ddl)
        }
        Statement::AlterTable(_) => (K::Alter(ObjectKind::Table), C::Ddl),
        Statement::AlterIndex { .. } => (K::Alter(ObjectKind::Index), C::Ddl),
        Statement::AlterView { .. } => (K::Alter(ObjectKind::View), C::Ddl),
        Statement::AlterSchema(_) => (K::Alter(ObjectKind::Schema), C::Ddl),
        Statement::AlterType(_) => (K::Alter(ObjectKind::Type), C::Ddl),
        Statement::AlterFunction(_) => (K::Alter(ObjectKind::Function), C::Ddl),
        Statement::AlterPolicy(_) => (K::Alter(ObjectKind::Policy), C::Ddl),
        Statement::AlterRole { .. } | Statement::AlterUser(_) => {
            (K::Alter(ObjectKind::Role), C::Role)
        }
        Statement::Set(set) => match set {
            Set::SetRole { .. } | Set::SetSessionAuthorization(_) => (K::Set, C::Role),
            _ => (K::Set, C::MiscSet),
        },
        Statement::Reset(_) => (K::Reset, C::MiscSet),
        Statement::Discard { .. } => (K::Discard, C::Misc),
        Statement::Copy { source, to, .. } => match (source, to) {
            (CopySource::Table { .. }, false) => (K::Copy, C::Write),
            _ => (K::Copy, C::Read),
        },
        Statement::Prepare { .. } => (K::Prepare, C::Misc),
        Statement::Execute { .. } => (K::Execute, C::Misc),
        Statement::Deallocate { .. } => (K::Deallocate, C::Misc),
        Statement::Explain { .. } => (K::Explain, C::Misc),
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => (K::Transaction, C::Misc),
        Statement::Grant(_) => (K::Grant, C::Role),
        Statement::Revoke(_) => (K::Revoke, C::Role),
        Statement::Vacuum(_) => (K::Vacuum, C::Misc),
        Statement::Analyze(_) => (K::Analyze, C::Misc),
        Statement::LISTEN { .. } => (K::Listen, C::Misc),
        Statement::UNLISTEN { .. } => (K::Unlisten, C::Misc),
        Statement::NOTIFY { .. } => (K::Notify, C::Misc),
        Statement::Call(_) => (K::Call, C::Function),
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => (K::Show, C::Misc),
        Statement::Lock(_) => (K::Lock, C::Misc),
        Statement::Declare { .. } => (K::Cursor, C::Read),
        Statement::Fetch { .. } | Statement::Close { .. } => (K::Cursor, C::Misc),
        Statement::Comment { .. } => (K::Comment, C::Ddl),
        other => {
            let k = other_kind(other);
            let c = match &k {
                K::Other(s) if s.starts_with("CREATE") || s.starts_with("ALTER") => C::Ddl,
                _ => C::Misc,
            };
            (k, c)
        }
    }
}

/// Collects facts while walking one statement's AST.
struct Walker<'a> {
    f: StatementFacts,
    only_tables: &'a [QualifiedName],
    /// CTE names seen so far; single-part references to them are not tables.
    ctes: Vec<String>,
    too_deep: bool,
}

impl<'a> Walker<'a> {
    fn new(text: &str, only_tables: &'a [QualifiedName]) -> Self {
        Walker {
            f: StatementFacts::new(text, StatementKind::Select, AuditClass::Read),
            only_tables,
            ctes: Vec::new(),
            too_deep: false,
        }
    }

    fn finish(mut self) -> StatementFacts {
        if self.too_deep {
            return StatementFacts::unparsed(
                &self.f.text,
                format!("statement nested deeper than {MAX_WALK_DEPTH} levels"),
            );
        }
        for v in [
            &mut self.f.tables_read,
            &mut self.f.tables_written,
            &mut self.f.functions,
        ] {
            dedup(v);
        }
        self.f
    }

    fn deep(&mut self, d: usize) -> bool {
        if d > MAX_WALK_DEPTH {
            self.too_deep = true;
        }
        self.too_deep
    }

    fn top(&mut self, s: &Statement) {
        let (kind, class) = kind_and_class(s);
        self.f.kind = kind.clone();
        self.f.class = class;
        self.f.executed_kinds = vec![kind];
        self.statement(s, 0);
    }

    /// A statement nested inside the top-level one that executes with it.
    fn nested(&mut self, s: &Statement, d: usize) {
        let (kind, class) = kind_and_class(s);
        if class == AuditClass::Write && self.f.class == AuditClass::Read {
            self.f.class = AuditClass::Write;
        }
        if !self.f.executed_kinds.contains(&kind) {
            self.f.executed_kinds.push(kind);
        }
        self.statement(s, d + 1);
    }

    fn read(&mut self, n: QualifiedName) {
        if n.schema.is_none() && self.ctes.contains(&n.name) {
            return;
        }
        self.f.tables_read.push(n);
    }

    fn statement(&mut self, s: &Statement, d: usize) {
        if self.deep(d) {
            return;
        }
        match s {
            Statement::Query(q) => self.query(q, d + 1),
            Statement::Insert(ins) => {
                match &ins.table {
                    TableObject::TableName(n) => self.f.tables_written.push(qname(n)),
                    TableObject::TableFunction(func) => self.function(func, d + 1),
                    TableObject::TableQuery(q) => self.query(q, d + 1),
                }
                if let Some(src) = &ins.source {
                    self.query(src, d + 1);
                }
                self.assignments(&ins.assignments, d);
                if let Some(OnInsert::OnConflict(oc)) = &ins.on {
                    if let OnConflictAction::DoUpdate(du) = &oc.action {
                        self.assignments(&du.assignments, d);
                        if let Some(sel) = &du.selection {
                            self.expr(sel, d + 1);
                        }
                    }
                }
                self.select_items(ins.returning.as_deref(), d);
            }
            Statement::Delete(del) => {
                let targets = match &del.from {
                    FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => v,
                };
                let mut names = Vec::new();
                for twj in targets {
                    if let Some(n) = self.target(&twj.relation) {
                        names.push(n);
                    }
                    for j in &twj.joins {
                        self.join(j, d + 1);
                    }
                }
                for using in del.using.iter().flatten() {
                    self.table_with_joins(using, d + 1);
                }
                let filter = self.filter(del.selection.as_ref(), d);
                for (table, only) in names {
                    self.f.tables_written.push(table.clone());
                    self.f.modifications.push(Modification {
                        op: ModOp::Delete,
                        table,
                        only,
                        filter: filter.clone(),
                    });
                }
                self.select_items(del.returning.as_deref(), d);
            }
            Statement::Update(up) => {
                let target = self.target(&up.table.relation);
                for j in &up.table.joins {
                    self.join(j, d + 1);
                }
                if let Some(from) = &up.from {
                    let v = match from {
                        sqlparser::ast::UpdateTableFromKind::BeforeSet(v)
                        | sqlparser::ast::UpdateTableFromKind::AfterSet(v) => v,
                    };
                    for twj in v {
                        self.table_with_joins(twj, d + 1);
                    }
                }
                self.assignments(&up.assignments, d);
                let filter = self.filter(up.selection.as_ref(), d);
                if let Some((table, only)) = target {
                    self.f.tables_written.push(table.clone());
                    self.f.modifications.push(Modification {
                        op: ModOp::Update,
                        table,
                        only,
                        filter,
                    });
                }
                self.select_items(up.returning.as_deref(), d);
            }
            Statement::Merge(m) => {
                let target = self.target(&m.table);
                self.table_factor(&m.source, d + 1);
                self.expr(&m.on, d + 1);
                let on_true = self.taut(&m.on);
                for MergeClause {
                    predicate, action, ..
                } in &m.clauses
                {
                    if let Some(p) = predicate {
                        self.expr(p, d + 1);
                    }
                    let restricted = predicate.as_ref().is_some_and(|p| !self.taut(p));
                    let filter = if restricted || !on_true {
                        Filter::Restricting
                    } else {
                        Filter::Tautology
                    };
                    let op = match action {
                        MergeAction::Delete { .. } => Some(ModOp::MergeDelete),
                        MergeAction::Update(u) => {
                            if let sqlparser::ast::MergeUpdateKind::Set(a) = &u.kind {
                                self.assignments(a, d);
                            }
                            for p in [&u.update_predicate, &u.delete_predicate]
                                .into_iter()
                                .flatten()
                            {
                                self.expr(p, d + 1);
                            }
                            Some(ModOp::MergeUpdate)
                        }
                        MergeAction::Insert(ins) => {
                            if let sqlparser::ast::MergeInsertKind::Values(v) = &ins.kind {
                                for row in &v.rows {
                                    for e in row.content.iter() {
                                        self.expr(e, d + 1);
                                    }
                                }
                            }
                            None
                        }
                        _ => None,
                    };
                    if let (Some(op), Some((table, only))) = (op, target.clone()) {
                        self.f.modifications.push(Modification {
                            op,
                            table,
                            only,
                            filter,
                        });
                    }
                }
                if let Some((table, _)) = target {
                    self.f.tables_written.push(table);
                }
            }
            Statement::Truncate(t) => {
                for tt in &t.table_names {
                    let n = qname(&tt.name);
                    self.f.truncated.push(n.clone());
                    self.f.tables_written.push(n);
                }
            }
            Statement::Drop {
                object_type, names, ..
            } => {
                let k = object_kind(object_type);
                for n in names {
                    self.f.dropped.push((k.clone(), qname(n)));
                }
            }
            Statement::CreateTable(ct) => {
                self.f.tables_written.push(qname(&ct.name));
                if let Some(q) = &ct.query {
                    self.f.executed_kinds.push(StatementKind::Select);
                    self.query(q, d + 1);
                }
            }
            Statement::CreateView(_) => {
                // The view's query does not run now.
            }
            Statement::CreateIndex(ci) => self.f.tables_read.push(qname(&ci.table_name)),
            Statement::AlterTable(at) => self.f.tables_written.push(qname(&at.name)),
            Statement::CreateFunction(_) | Statement::CreateProcedure { .. } => {
                self.f.dynamic_sql = true;
            }
            Statement::Set(set) => self.set(set, d),
            Statement::Reset(r) => self.f.settings.push(match &r.reset {
                Reset::ALL => SettingChange::ResetAll,
                Reset::SessionAuthorization => SettingChange::SessionAuthorization,
                Reset::ConfigurationParameter(n) => {
                    let name = setting_name(n);
                    if name == "role" {
                        SettingChange::Role
                    } else if name == "session_authorization" {
                        SettingChange::SessionAuthorization
                    } else {
                        SettingChange::Reset(name)
                    }
                }
            }),
            Statement::Discard { object_type } => {
                if matches!(object_type, sqlparser::ast::DiscardObject::ALL) {
                    self.f.settings.push(SettingChange::DiscardAll);
                }
            }
            Statement::Copy { source, to, .. } => match source {
                CopySource::Table { table_name, .. } => {
                    if *to {
                        self.f.tables_read.push(qname(table_name));
                    } else {
                        self.f.tables_written.push(qname(table_name));
                    }
                }
                CopySource::Query(q) => {
                    self.f.executed_kinds.push(StatementKind::Select);
                    self.query(q, d + 1);
                }
            },
            Statement::Prepare {
                name, statement, ..
            } => {
                let mut inner = Walker::new(&statement.to_string(), self.only_tables);
                inner.top(statement);
                let body = inner.finish();
                self.f.prepare = Some((fold_ident(name), Box::new(body)));
            }
            Statement::Execute {
                name, parameters, ..
            } => {
                if let Some(n) = name {
                    self.f.execute = Some(qname(n).name);
                }
                for p in parameters {
                    self.expr(p, d + 1);
                }
            }
            Statement::Deallocate { name, .. } => {
                let all = name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all");
                self.f.deallocate = Some(if all { None } else { Some(fold_ident(name)) });
            }
            Statement::Explain {
                analyze,
                options,
                statement,
                ..
            } => {
                // Trap: `EXPLAIN (ANALYZE, BUFFERS) …` leaves `analyze`
                // false and puts ANALYZE in `options`. Either way it runs.
                let opt_analyze = options.iter().flatten().any(|o| {
                    o.name.value.eq_ignore_ascii_case("analyze")
                        && match &o.arg {
                            None => true,
                            Some(a) => !matches!(fold::fold_const(a), Some(fold::Const::Bool(false)))
                                && !matches!(a, Expr::Identifier(i) if ["off", "false", "0"].iter().any(|f| i.value.eq_ignore_ascii_case(f)))
                                && !matches!(fold::fold_const(a), Some(fold::Const::Num(n)) if n == 0.0),
                        }
                });
                if *analyze || opt_analyze {
                    self.nested(statement, d);
                }
            }
            Statement::Call(func) => self.function(func, d + 1),
            Statement::Declare { stmts } => {
                for decl in stmts {
                    if let Some(q) = &decl.for_query {
                        self.query(q, d + 1);
                    }
                }
            }
            Statement::Lock(l) => {
                for t in &l.tables {
                    self.f.tables_read.push(qname(&t.name));
                }
            }
            Statement::Vacuum(v) => {
                if let Some(n) = &v.table_name {
                    self.f.tables_read.push(qname(n));
                }
            }
            Statement::Analyze(a) => {
                if let Some(n) = &a.table_name {
                    self.f.tables_read.push(qname(n));
                }
            }
            _ => {}
        }
    }

    /// The target relation of DELETE/UPDATE/MERGE: name and ONLY flag.
    /// Also repairs `sqlparser`'s ONLY misparse if it still shows up
    /// (table `ONLY`, alias `t`): an unquoted table named ONLY is impossible
    /// in Postgres, so the alias is the real table.
    fn target(&mut self, tf: &TableFactor) -> Option<(QualifiedName, bool)> {
        match tf {
            TableFactor::Table { name, alias, .. } => {
                if let Some(t) = only_misparse(name, alias.as_ref().map(|a| &a.name)) {
                    return Some((t, true));
                }
                let n = qname(name);
                let only = self.only_tables.contains(&n);
                Some((n, only))
            }
            _ => None,
        }
    }

    /// Tautology check; an expression too deep to fold makes the whole
    /// statement unparsed (fail closed) rather than "restricting".
    fn taut(&mut self, e: &Expr) -> bool {
        match fold::is_tautology(e) {
            Some(t) => t,
            None => {
                self.too_deep = true;
                false
            }
        }
    }

    fn set(&mut self, set: &Set, d: usize) {
        match set {
            Set::SingleAssignment {
                scope,
                variable,
                values,
                ..
            } => {
                let local = matches!(scope, Some(sqlparser::ast::ContextModifier::Local));
                self.push_set(setting_name(variable), local);
                for v in values {
                    self.expr(v, d + 1);
                }
            }
            Set::ParenthesizedAssignments { variables, values } => {
                for v in variables {
                    self.push_set(setting_name(v), false);
                }
                for v in values {
                    self.expr(v, d + 1);
                }
            }
            Set::MultipleAssignments { assignments } => {
                for a in assignments {
                    let local = matches!(a.scope, Some(sqlparser::ast::ContextModifier::Local));
                    self.push_set(setting_name(&a.name), local);
                }
            }
            Set::SetRole { .. } => self.f.settings.push(SettingChange::Role),
            Set::SetSessionAuthorization(_) => {
                self.f.settings.push(SettingChange::SessionAuthorization)
            }
            Set::SetTimeZone { local, .. } => self.push_set("timezone".into(), *local),
            Set::SetNames { .. } | Set::SetNamesDefault {} => {
                self.push_set("client_encoding".into(), false)
            }
            Set::SetTransaction { .. } => self.push_set("transaction_isolation".into(), true),
            other => {
                let s = other.to_string().to_ascii_lowercase();
                let name = s.split_whitespace().nth(1).unwrap_or("unknown").to_string();
                self.push_set(name, false);
            }
        }
    }

    fn push_set(&mut self, name: String, local: bool) {
        self.f.settings.push(match name.as_str() {
            "role" => SettingChange::Role,
            "session_authorization" => SettingChange::SessionAuthorization,
            _ => SettingChange::Set { name, local },
        });
    }

    fn filter(&mut self, selection: Option<&Expr>, d: usize) -> Filter {
        let Some(sel) = selection else {
            return Filter::Missing;
        };
        self.expr(sel, d + 1);
        if let Some(cursor) = current_of(sel) {
            return Filter::CurrentOf(cursor);
        }
        if self.taut(sel) {
            Filter::Tautology
        } else {
            Filter::Restricting
        }
    }

    fn assignments(&mut self, a: &[Assignment], d: usize) {
        for asg in a {
            self.expr(&asg.value, d + 1);
        }
    }

    fn select_items(&mut self, items: Option<&[SelectItem]>, d: usize) {
        for item in items.unwrap_or(&[]) {
            match item {
                SelectItem::UnnamedExpr(e)
                | SelectItem::ExprWithAlias { expr: e, .. }
                | SelectItem::ExprWithAliases { expr: e, .. } => self.expr(e, d + 1),
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(e), _) => {
                    self.expr(e, d + 1)
                }
                _ => {}
            }
        }
    }

    fn query(&mut self, q: &Query, d: usize) {
        if self.deep(d) {
            return;
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.push(fold_ident(&cte.alias.name));
                self.query(&cte.query, d + 1);
            }
        }
        self.set_expr(&q.body, d + 1);
        if let Some(ob) = &q.order_by {
            if let sqlparser::ast::OrderByKind::Expressions(v) = &ob.kind {
                for o in v {
                    self.expr(&o.expr, d + 1);
                }
            }
        }
        if let Some(LimitClause::LimitOffset { limit, offset, .. }) = &q.limit_clause {
            if let Some(l) = limit {
                self.expr(l, d + 1);
            }
            if let Some(o) = offset {
                self.expr(&o.value, d + 1);
            }
        }
    }

    fn set_expr(&mut self, s: &SetExpr, d: usize) {
        if self.deep(d) {
            return;
        }
        match s {
            SetExpr::Select(sel) => {
                self.select_items(Some(&sel.projection), d);
                if let Some(into) = &sel.into {
                    // SELECT … INTO t creates t (CREATE TABLE AS).
                    for t in &into.targets {
                        match t {
                            Expr::Identifier(i) => self.f.tables_written.push(QualifiedName {
                                schema: None,
                                name: fold_ident(i),
                            }),
                            Expr::CompoundIdentifier(v) => {
                                let n = ObjectName(
                                    v.iter().cloned().map(ObjectNamePart::Identifier).collect(),
                                );
                                self.f.tables_written.push(qname(&n));
                            }
                            _ => {}
                        }
                    }
                    self.f.class = AuditClass::Ddl;
                }
                for twj in &sel.from {
                    self.table_with_joins(twj, d + 1);
                }
                for e in [&sel.selection, &sel.having, &sel.qualify]
                    .into_iter()
                    .flatten()
                {
                    self.expr(e, d + 1);
                }
                if let GroupByExpr::Expressions(v, _) = &sel.group_by {
                    for e in v {
                        self.expr(e, d + 1);
                    }
                }
            }
            SetExpr::Query(q) => self.query(q, d + 1),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left, d + 1);
                self.set_expr(right, d + 1);
            }
            SetExpr::Values(v) => {
                for row in &v.rows {
                    for e in row.content.iter() {
                        self.expr(e, d + 1);
                    }
                }
            }
            SetExpr::Insert(st)
            | SetExpr::Update(st)
            | SetExpr::Delete(st)
            | SetExpr::Merge(st) => self.nested(st, d),
            SetExpr::Table(t) => {
                if let Some(name) = &t.table_name {
                    let schema = t.schema_name.as_ref().map(|s| s.to_ascii_lowercase());
                    self.read(QualifiedName {
                        schema,
                        name: name.to_ascii_lowercase(),
                    });
                }
            }
        }
    }

    fn table_with_joins(&mut self, twj: &TableWithJoins, d: usize) {
        if self.deep(d) {
            return;
        }
        self.table_factor(&twj.relation, d + 1);
        for j in &twj.joins {
            self.join(j, d + 1);
        }
    }

    fn join(&mut self, j: &sqlparser::ast::Join, d: usize) {
        self.table_factor(&j.relation, d + 1);
        let c = match &j.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c)
            | JoinOperator::CrossJoin(c)
            | JoinOperator::Semi(c)
            | JoinOperator::LeftSemi(c)
            | JoinOperator::RightSemi(c)
            | JoinOperator::Anti(c)
            | JoinOperator::LeftAnti(c)
            | JoinOperator::RightAnti(c) => Some(c),
            _ => None,
        };
        if let Some(JoinConstraint::On(e)) = c {
            self.expr(e, d + 1);
        }
    }

    fn table_factor(&mut self, tf: &TableFactor, d: usize) {
        if self.deep(d) {
            return;
        }
        match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                if let Some(a) = args {
                    self.f.functions.push(qname(name));
                    for arg in &a.args {
                        self.function_arg(arg, d + 1);
                    }
                } else if let Some(t) = only_misparse(name, alias.as_ref().map(|a| &a.name)) {
                    self.read(t);
                } else {
                    self.read(qname(name));
                }
            }
            TableFactor::Derived { subquery, .. } => self.query(subquery, d + 1),
            TableFactor::TableFunction { expr, .. } => self.expr(expr, d + 1),
            TableFactor::Function { name, args, .. } => {
                self.f.functions.push(qname(name));
                for a in args {
                    self.function_arg(a, d + 1);
                }
            }
            TableFactor::UNNEST { array_exprs, .. } => {
                for e in array_exprs {
                    self.expr(e, d + 1);
                }
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.table_with_joins(table_with_joins, d + 1),
            _ => {}
        }
    }

    fn function_arg(&mut self, a: &FunctionArg, d: usize) {
        let e = match a {
            FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg) => arg,
        };
        if let FunctionArgExpr::Expr(e) = e {
            self.expr(e, d);
        }
    }

    fn function(&mut self, func: &Function, d: usize) {
        if self.deep(d) {
            return;
        }
        let name = qname(&func.name);
        let is_marker = name.schema.is_none() && name.name == CURRENT_OF_MARKER;
        if !is_marker {
            if name.name == "set_config"
                && matches!(name.schema.as_deref(), None | Some("pg_catalog"))
            {
                self.f.settings.push(set_config_name(func));
            }
            self.f.functions.push(name);
        }
        for args in [&func.parameters, &func.args] {
            match args {
                FunctionArguments::None => {}
                FunctionArguments::Subquery(q) => self.query(q, d + 1),
                FunctionArguments::List(l) => {
                    for a in &l.args {
                        self.function_arg(a, d + 1);
                    }
                    for c in &l.clauses {
                        match c {
                            sqlparser::ast::FunctionArgumentClause::OrderBy(v) => {
                                for o in v {
                                    self.expr(&o.expr, d + 1);
                                }
                            }
                            sqlparser::ast::FunctionArgumentClause::Limit(e) => self.expr(e, d + 1),
                            _ => {}
                        }
                    }
                }
            }
        }
        if let Some(f) = &func.filter {
            self.expr(f, d + 1);
        }
        for o in &func.within_group {
            self.expr(&o.expr, d + 1);
        }
    }

    /// Walk an expression with an explicit stack: operator chains build
    /// left-deep trees thousands of levels deep, which must not cost stack.
    /// Only subqueries and function calls recurse (bounded by parentheses).
    fn expr<'e>(&mut self, e: &'e Expr, d: usize) {
        if self.deep(d) {
            return;
        }
        let d = d + 1;
        let mut stack: Vec<&'e Expr> = vec![e];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Identifier(_)
                | Expr::CompoundIdentifier(_)
                | Expr::Value(_)
                | Expr::TypedString(_)
                | Expr::Wildcard(_)
                | Expr::QualifiedWildcard(..) => {}
                Expr::CompoundFieldAccess { root, access_chain } => {
                    push(&mut stack, root);
                    for a in access_chain {
                        match a {
                            sqlparser::ast::AccessExpr::Dot(x) => push(&mut stack, x),
                            sqlparser::ast::AccessExpr::Subscript(s) => match s {
                                sqlparser::ast::Subscript::Index { index } => {
                                    push(&mut stack, index)
                                }
                                sqlparser::ast::Subscript::Slice {
                                    lower_bound,
                                    upper_bound,
                                    stride,
                                } => {
                                    for x in
                                        [lower_bound, upper_bound, stride].into_iter().flatten()
                                    {
                                        push(&mut stack, x);
                                    }
                                }
                            },
                        }
                    }
                }
                Expr::JsonAccess { value, .. } => push(&mut stack, value),
                Expr::IsFalse(x)
                | Expr::IsNotFalse(x)
                | Expr::IsTrue(x)
                | Expr::IsNotTrue(x)
                | Expr::IsNull(x)
                | Expr::IsNotNull(x)
                | Expr::IsUnknown(x)
                | Expr::IsNotUnknown(x)
                | Expr::Nested(x)
                | Expr::OuterJoin(x)
                | Expr::Prior(x) => push(&mut stack, x),
                Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                    push(&mut stack, a);
                    push(&mut stack, b);
                }
                Expr::IsJson { expr, .. } | Expr::IsNormalized { expr, .. } => {
                    push(&mut stack, expr)
                }
                Expr::InList { expr, list, .. } => {
                    push(&mut stack, expr);
                    for x in list {
                        push(&mut stack, x);
                    }
                }
                Expr::InSubquery { expr, subquery, .. } => {
                    push(&mut stack, expr);
                    self.query(subquery, d);
                }
                Expr::InUnnest {
                    expr, array_expr, ..
                } => {
                    push(&mut stack, expr);
                    push(&mut stack, array_expr);
                }
                Expr::Between {
                    expr, low, high, ..
                } => {
                    push(&mut stack, expr);
                    push(&mut stack, low);
                    push(&mut stack, high);
                }
                Expr::BinaryOp { left, right, .. } => {
                    push(&mut stack, left);
                    push(&mut stack, right);
                }
                Expr::Like {
                    expr,
                    pattern,
                    escape_char,
                    ..
                }
                | Expr::ILike {
                    expr,
                    pattern,
                    escape_char,
                    ..
                }
                | Expr::SimilarTo {
                    expr,
                    pattern,
                    escape_char,
                    ..
                } => {
                    push(&mut stack, expr);
                    push(&mut stack, pattern);
                    if let Some(x) = escape_char {
                        push(&mut stack, x);
                    }
                }
                Expr::RLike { expr, pattern, .. } => {
                    push(&mut stack, expr);
                    push(&mut stack, pattern);
                }
                Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                    push(&mut stack, left);
                    push(&mut stack, right);
                }
                Expr::UnaryOp { expr, .. } => push(&mut stack, expr),
                Expr::Convert { expr, styles, .. } => {
                    push(&mut stack, expr);
                    for s in styles {
                        push(&mut stack, s);
                    }
                }
                Expr::Cast { expr, .. } => push(&mut stack, expr),
                Expr::AtTimeZone {
                    timestamp,
                    time_zone,
                } => {
                    push(&mut stack, timestamp);
                    push(&mut stack, time_zone);
                }
                Expr::Extract { expr, .. }
                | Expr::Ceil { expr, .. }
                | Expr::Floor { expr, .. }
                | Expr::Collate { expr, .. } => push(&mut stack, expr),
                Expr::Position { expr, r#in } => {
                    push(&mut stack, expr);
                    push(&mut stack, r#in);
                }
                Expr::Substring {
                    expr,
                    substring_from,
                    substring_for,
                    ..
                } => {
                    push(&mut stack, expr);
                    for x in [substring_from, substring_for].into_iter().flatten() {
                        push(&mut stack, x);
                    }
                }
                Expr::Trim {
                    expr,
                    trim_what,
                    trim_characters,
                    ..
                } => {
                    push(&mut stack, expr);
                    if let Some(x) = trim_what {
                        push(&mut stack, x);
                    }
                    for x in trim_characters.iter().flatten() {
                        push(&mut stack, x);
                    }
                }
                Expr::Overlay {
                    expr,
                    overlay_what,
                    overlay_from,
                    overlay_for,
                } => {
                    push(&mut stack, expr);
                    push(&mut stack, overlay_what);
                    push(&mut stack, overlay_from);
                    if let Some(x) = overlay_for {
                        push(&mut stack, x);
                    }
                }
                Expr::Prefixed { value, .. } => push(&mut stack, value),
                Expr::Function(f) => self.function(f, d),
                Expr::Case {
                    operand,
                    conditions,
                    else_result,
                    ..
                } => {
                    if let Some(x) = operand {
                        push(&mut stack, x);
                    }
                    for c in conditions {
                        push(&mut stack, &c.condition);
                        push(&mut stack, &c.result);
                    }
                    if let Some(x) = else_result {
                        push(&mut stack, x);
                    }
                }
                Expr::Exists { subquery, .. } | Expr::Subquery(subquery) => self.query(subquery, d),
                Expr::GroupingSets(v) | Expr::Cube(v) | Expr::Rollup(v) => {
                    for x in v.iter().flatten() {
                        push(&mut stack, x);
                    }
                }
                Expr::Tuple(v) => {
                    for x in v {
                        push(&mut stack, x);
                    }
                }
                Expr::Struct { values, .. } => {
                    for x in values {
                        push(&mut stack, x);
                    }
                }
                Expr::Named { expr, .. } => push(&mut stack, expr),
                Expr::Array(a) => {
                    for x in &a.elem {
                        push(&mut stack, x);
                    }
                }
                Expr::Interval(i) => push(&mut stack, &i.value),
                _ => {}
            }
        }
    }
}

fn push<'e>(stack: &mut Vec<&'e Expr>, e: &'e Expr) {
    stack.push(e);
}

/// `sqlparser` reads `ONLY t` as table `ONLY` with alias `t`. An unquoted
/// relation named ONLY cannot exist in Postgres (reserved word), so when we
/// see one with an alias, the alias is the table.
fn only_misparse(name: &ObjectName, alias: Option<&Ident>) -> Option<QualifiedName> {
    let [ObjectNamePart::Identifier(i)] = name.0.as_slice() else {
        return None;
    };
    if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("only") {
        alias.map(|a| QualifiedName {
            schema: None,
            name: fold_ident(a),
        })
    } else {
        None
    }
}

/// `WHERE pgward_current_of(c)` (our rewrite of `WHERE CURRENT OF c`).
fn current_of(e: &Expr) -> Option<String> {
    let Expr::Function(f) = e else { return None };
    let n = qname(&f.name);
    if n.schema.is_some() || n.name != CURRENT_OF_MARKER {
        return None;
    }
    let FunctionArguments::List(l) = &f.args else {
        return None;
    };
    match l.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(i)))] => Some(fold_ident(i)),
        _ => None,
    }
}

/// The setting named by `set_config(name, …)`'s first argument, when it is
/// a literal (names are case-insensitive: lower-cased).
fn set_config_name(f: &Function) -> SettingChange {
    if let FunctionArguments::List(l) = &f.args {
        if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) = l.args.first() {
            match &v.value {
                Value::SingleQuotedString(s)
                | Value::EscapedStringLiteral(s)
                | Value::UnicodeStringLiteral(s) => {
                    return SettingChange::SetConfig(Some(s.to_ascii_lowercase()))
                }
                Value::DollarQuotedString(s) => {
                    return SettingChange::SetConfig(Some(s.value.to_ascii_lowercase()))
                }
                _ => {}
            }
        }
    }
    SettingChange::SetConfig(None)
}

fn dedup(v: &mut Vec<QualifiedName>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

/// Token-level classification of statements `sqlparser` rejects. Each arm
/// states what it proves; anything not listed stays unparsed.
///
/// All arms rely on one fact established by [`lexer::lex`]: the tokens are
/// exactly one statement as Postgres splits the string, so the first keyword
/// is the first keyword Postgres' grammar sees. Postgres' grammar has exactly
/// one production for statements starting with each keyword below, so the
/// statement either is that command or is a syntax error.
pub fn fallback(sql: &str, toks: &[Token], original: &str) -> Option<StatementFacts> {
    let first = toks.first()?;
    if first.kind != TokenKind::Word {
        return None;
    }
    let kw = |i: usize, k: &str| toks.get(i).is_some_and(|t| is_kw(sql, t, k));
    let word = text(sql, first).to_ascii_lowercase();
    let mk = |kind: StatementKind, class: AuditClass, proof: &str| {
        let mut f = StatementFacts::new(original, kind, class);
        f.fallback = Some(proof.to_string());
        f
    };
    use AuditClass as C;
    use StatementKind as K;
    let facts = match word.as_str() {
        // Maintenance commands: their grammar (VacuumStmt, AnalyzeStmt,
        // ReindexStmt, ClusterStmt, CheckPointStmt, RefreshMatViewStmt)
        // contains options, names and column lists but no expressions and no
        // nested statements, so nothing but the command itself can run.
        "vacuum" => mk(K::Vacuum, C::Misc, "first keyword VACUUM: a VacuumStmt (options and table/column names only; no expressions, no nested statements)"),
        "analyze" | "analyse" => mk(K::Analyze, C::Misc, "first keyword ANALYZE: an AnalyzeStmt (options and table/column names only; no expressions, no nested statements)"),
        "checkpoint" if toks.len() == 1 => mk(K::Checkpoint, C::Misc, "the statement is exactly CHECKPOINT"),
        // FetchStmt / ClosePortalStmt: a direction, a count and a cursor
        // name only. The rows come from the cursor's query, which was judged
        // when DECLARE was sent.
        "fetch" | "move" => mk(K::Cursor, C::Read, "first keyword FETCH/MOVE: a FetchStmt (direction, count and cursor name only; the cursor's query was judged at DECLARE)"),
        "close" => mk(K::Cursor, C::Misc, "first keyword CLOSE: a ClosePortalStmt (a cursor name or ALL only)"),
        "reindex" => mk(K::Reindex, C::Misc, "first keyword REINDEX: a ReindexStmt (options, object kind and name only)"),
        "cluster" => mk(K::Cluster, C::Misc, "first keyword CLUSTER: a ClusterStmt (options, table and index names only)"),
        "refresh" if kw(1, "materialized") && kw(2, "view") => mk(K::Refresh, C::Misc, "first keywords REFRESH MATERIALIZED VIEW: a RefreshMatViewStmt (name and WITH [NO] DATA only)"),
        // DO runs an anonymous code block: dynamic SQL, not analysed.
        "do" => {
            let mut f = mk(K::Do, C::Function, "first keyword DO: an anonymous code block (dynamic SQL; its body is not analysed)");
            f.dynamic_sql = true;
            f
        }
        "create" => {
            let mut i = 1;
            if kw(1, "or") && kw(2, "replace") {
                i = 3;
            }
            if kw(i, "rule") {
                let mut f = mk(K::Create(ObjectKind::Rule), C::Ddl, "first keywords CREATE [OR REPLACE] RULE: defines a rewrite rule (dynamic SQL; its actions do not run now)");
                f.dynamic_sql = true;
                f
            } else if kw(i, "sequence") || (kw(i, "temp") || kw(i, "temporary") || kw(i, "unlogged")) && kw(i + 1, "sequence") {
                // CreateSeqStmt: a name and numeric/name options only.
                mk(K::Create(ObjectKind::Sequence), C::Ddl, "first keywords CREATE [TEMP|UNLOGGED] SEQUENCE: a CreateSeqStmt (name and numeric/name options only; no expressions, no nested statements)")
            } else if kw(i, "function") || kw(i, "procedure") {
                let mut f = mk(K::CreateFunction, C::Ddl, "first keywords CREATE [OR REPLACE] FUNCTION/PROCEDURE: defines a routine (dynamic SQL; its body does not run now)");
                f.dynamic_sql = true;
                f
            } else {
                return None;
            }
        }
        // Every statement that starts with DROP drops the objects it names;
        // the object kind is the keyword(s) after DROP. DROP has no nested
        // statements, so the drop rule can decide on the kind alone.
        "drop" => {
            let kind = if kw(1, "owned") {
                ObjectKind::Owned
            } else if kw(1, "table") {
                ObjectKind::Table
            } else if kw(1, "schema") {
                ObjectKind::Schema
            } else if kw(1, "database") {
                ObjectKind::Database
            } else if kw(1, "materialized") {
                ObjectKind::MaterializedView
            } else if kw(1, "foreign") && kw(2, "table") {
                ObjectKind::Table
            } else {
                ObjectKind::Other(toks.get(1).map(|t| text(sql, t).to_ascii_lowercase()).unwrap_or_default())
            };
            let class = C::Ddl;
            let mut f = mk(K::Drop(kind.clone()), class, "first keyword DROP: drops the objects named; object kind read from the following keyword(s)");
            if kind == ObjectKind::Owned {
                // DROP OWNED BY r1, r2: record the roles.
                let mut i = 3;
                while let Some(n) = name_at(sql, toks, i) {
                    f.dropped.push((ObjectKind::Owned, n));
                    i += 1;
                    if toks.get(i).is_some_and(|t| t.kind == TokenKind::Comma) {
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            if f.dropped.is_empty() {
                f.dropped.push((kind, QualifiedName::new(None, "?")));
            }
            f
        }
        // `COPY name [(cols)] FROM|TO …` without a WHERE clause: copies one
        // table; no query and no expression is evaluated.
        "copy" => {
            let mut i = 1;
            if kw(i, "binary") {
                i += 1;
            }
            let name = name_at(sql, toks, i)?;
            let has_where = toks.iter().any(|t| is_kw(sql, t, "where"));
            let has_program = toks.iter().any(|t| is_kw(sql, t, "program"));
            if has_where || has_program {
                return None;
            }
            let from = toks.iter().any(|t| is_kw(sql, t, "from"));
            let to = toks.iter().any(|t| is_kw(sql, t, "to"));
            if from == to {
                return None;
            }
            let mut f = mk(K::Copy, if from { C::Write } else { C::Read }, "first keyword COPY followed by a table name (no query), no WHERE and no PROGRAM: copies exactly that table");
            if from {
                f.tables_written.push(name);
            } else {
                f.tables_read.push(name);
            }
            f
        }
        // `TABLE [ONLY] name [*]` is `SELECT * FROM name`.
        "table" => {
            let mut i = 1;
            if kw(i, "only") {
                i += 1;
            }
            let name = name_at(sql, toks, i)?;
            let rest = &toks[(i + 1 + 2 * name.schema.is_some() as usize).min(toks.len())..];
            let ok = rest.is_empty()
                || (rest.len() == 1 && text(sql, &rest[0]) == "*");
            if !ok {
                return None;
            }
            let mut f = mk(K::Select, C::Read, "the statement is exactly TABLE [ONLY] name [*]: SELECT * FROM name");
            f.tables_read.push(name);
            f
        }
        // Two-phase commit commands: only a transaction id literal follows.
        "prepare" if kw(1, "transaction") && toks.len() == 3 => mk(K::Transaction, C::Misc, "the statement is exactly PREPARE TRANSACTION 'gid'"),
        "commit" | "rollback" if kw(1, "prepared") && toks.len() == 3 => mk(K::Transaction, C::Misc, "the statement is exactly COMMIT/ROLLBACK PREPARED 'gid'"),
        _ => return None,
    };
    Some(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> StatementFacts {
        let v = classify(sql);
        assert_eq!(v.len(), 1, "{sql}: {v:?}");
        v.into_iter().next().expect("one")
    }

    #[test]
    fn delete_from_only_is_repaired() {
        let f = one("DELETE FROM ONLY t");
        assert_eq!(f.modifications.len(), 1);
        assert_eq!(f.modifications[0].table, QualifiedName::new(None, "t"));
        assert!(f.modifications[0].only);
        assert_eq!(f.modifications[0].filter, Filter::Missing);
        let f = one("update only Public.T x set a = 1 where x.id = 2");
        assert_eq!(
            f.modifications[0].table,
            QualifiedName::new(Some("public"), "t")
        );
        assert!(f.modifications[0].only);
        assert_eq!(f.modifications[0].filter, Filter::Restricting);
    }

    #[test]
    fn only_is_repaired_in_reads_and_merge() {
        let f = one("SELECT * FROM ONLY t WHERE id = 1");
        assert_eq!(f.tables_read, vec![QualifiedName::new(None, "t")]);
        let f = one("MERGE INTO ONLY t USING s ON t.id = s.id WHEN MATCHED THEN DELETE");
        assert_eq!(f.modifications[0].table, QualifiedName::new(None, "t"));
        assert!(f.modifications[0].only);
        assert_eq!(f.modifications[0].filter, Filter::Restricting);
    }

    #[test]
    fn fallbacks_say_what_they_prove() {
        let f = one("VACUUM ANALYZE t");
        assert_eq!(f.kind, StatementKind::Vacuum);
        assert!(f.fallback.is_some());
        let f = one("COPY public.t (a, b) FROM stdin WITH (FREEZE ON)");
        assert_eq!(
            f.tables_written,
            vec![QualifiedName::new(Some("public"), "t")]
        );
        let f = one("DROP OWNED BY a, b");
        assert_eq!(f.dropped.len(), 2);
        assert!(one("CHECKPOINT now").unparsed.is_some());
    }

    #[test]
    fn where_current_of_is_a_restriction() {
        let f = one("DELETE FROM t WHERE CURRENT OF c");
        assert_eq!(f.unparsed, None);
        assert_eq!(f.modifications[0].filter, Filter::CurrentOf("c".into()));
        assert!(f.functions.is_empty());
    }

    #[test]
    fn explain_options_analyze_executes() {
        let f = one("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t");
        assert_eq!(f.modifications.len(), 1);
        let f = one("EXPLAIN (ANALYZE false) DELETE FROM t");
        assert!(f.modifications.is_empty());
        let f = one("EXPLAIN DELETE FROM t");
        assert!(f.modifications.is_empty());
    }

    #[test]
    fn names_are_case_folded() {
        let f = one(r#"SELECT * FROM "Sch"."Tab", Other.THING"#);
        assert_eq!(
            f.tables_read,
            vec![
                QualifiedName::new(Some("Sch"), "Tab"),
                QualifiedName::new(Some("other"), "thing")
            ]
        );
    }

    #[test]
    fn settings_are_recorded() {
        let f = one("SELECT pg_catalog.set_config('App.User', 'x', false)");
        assert_eq!(
            f.settings,
            vec![SettingChange::SetConfig(Some("app.user".into()))]
        );
        assert_eq!(one("RESET ALL").settings, vec![SettingChange::ResetAll]);
        assert_eq!(one("DISCARD ALL").settings, vec![SettingChange::DiscardAll]);
        assert_eq!(
            one("SET LOCAL app.tenant = 1").settings,
            vec![SettingChange::Set {
                name: "app.tenant".into(),
                local: true
            }]
        );
    }
}
