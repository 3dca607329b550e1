//! The facts the classifier establishes about one statement. Rules look only
//! at these, never at SQL text or at the `sqlparser` AST, so that rule
//! evaluation is cheap and the facts can be cached, audited and explained.

use std::fmt;

/// A schema-qualified name, case-folded as Postgres folds identifiers:
/// unquoted parts are lower-cased, quoted parts keep their case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    /// `None` when the statement did not qualify the name (it is then
    /// resolved through the session's `search_path`, which we do not know).
    pub schema: Option<String>,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: Option<&str>, name: &str) -> Self {
        QualifiedName {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// `schema.name`, or `name`: what `Display` writes, built directly (the
    /// audit names the tables of every statement it records).
    pub fn dotted(&self) -> String {
        match &self.schema {
            Some(s) => {
                let mut out = String::with_capacity(s.len() + 1 + self.name.len());
                out.push_str(s);
                out.push('.');
                out.push_str(&self.name);
                out
            }
            None => self.name.clone(),
        }
    }

    /// `self.dotted() == text`, without building the dotted name.
    pub fn is_dotted(&self, text: &str) -> bool {
        match &self.schema {
            Some(s) => text
                .strip_prefix(s.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|name| name == self.name),
            None => text == self.name,
        }
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Kind of database object a DDL statement acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Table,
    View,
    MaterializedView,
    Index,
    Schema,
    Database,
    Role,
    Sequence,
    Type,
    Domain,
    Function,
    Procedure,
    Trigger,
    Rule,
    Policy,
    Extension,
    /// `DROP OWNED BY role`: every object the role owns.
    Owned,
    Other(String),
}

impl ObjectKind {
    /// snake_case name, as used in config (`drop_table`, `create_index`).
    pub fn name(&self) -> &str {
        match self {
            ObjectKind::Table => "table",
            ObjectKind::View => "view",
            ObjectKind::MaterializedView => "materialized_view",
            ObjectKind::Index => "index",
            ObjectKind::Schema => "schema",
            ObjectKind::Database => "database",
            ObjectKind::Role => "role",
            ObjectKind::Sequence => "sequence",
            ObjectKind::Type => "type",
            ObjectKind::Domain => "domain",
            ObjectKind::Function => "function",
            ObjectKind::Procedure => "procedure",
            ObjectKind::Trigger => "trigger",
            ObjectKind::Rule => "rule",
            ObjectKind::Policy => "policy",
            ObjectKind::Extension => "extension",
            ObjectKind::Owned => "owned",
            ObjectKind::Other(s) => s,
        }
    }

    /// SQL spelling (`MATERIALIZED VIEW`).
    pub fn sql(&self) -> String {
        self.name().replace('_', " ").to_ascii_uppercase()
    }
}

/// What a statement is, by its top-level command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Truncate,
    Drop(ObjectKind),
    Create(ObjectKind),
    Alter(ObjectKind),
    /// CREATE FUNCTION / PROCEDURE (its body is dynamic SQL).
    CreateFunction,
    Set,
    Reset,
    Discard,
    Copy,
    Prepare,
    Execute,
    Deallocate,
    Explain,
    /// BEGIN, START TRANSACTION, COMMIT, END, ROLLBACK, ABORT, SAVEPOINT,
    /// RELEASE, PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED.
    Transaction,
    Do,
    Grant,
    Revoke,
    Vacuum,
    Analyze,
    Listen,
    Unlisten,
    Notify,
    Call,
    Show,
    Lock,
    /// DECLARE, FETCH, MOVE, CLOSE.
    Cursor,
    Comment,
    Checkpoint,
    Reindex,
    Cluster,
    Refresh,
    Other(String),
}

/// Every kind name accepted in config (`kinds = [...]`). `drop`, `create`
/// and `alter` match any object kind; `drop_table` etc. match one.
pub const KIND_NAMES: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "truncate",
    "drop",
    "create",
    "alter",
    "create_function",
    "set",
    "reset",
    "discard",
    "copy",
    "prepare",
    "execute",
    "deallocate",
    "explain",
    "transaction",
    "do",
    "grant",
    "revoke",
    "vacuum",
    "analyze",
    "listen",
    "unlisten",
    "notify",
    "call",
    "show",
    "lock",
    "cursor",
    "comment",
    "checkpoint",
    "reindex",
    "cluster",
    "refresh",
    "other",
];

impl StatementKind {
    /// snake_case name (see [`KIND_NAMES`]).
    pub fn name(&self) -> &'static str {
        use StatementKind::*;
        match self {
            Select => "select",
            Insert => "insert",
            Update => "update",
            Delete => "delete",
            Merge => "merge",
            Truncate => "truncate",
            Drop(_) => "drop",
            Create(_) => "create",
            Alter(_) => "alter",
            CreateFunction => "create_function",
            Set => "set",
            Reset => "reset",
            Discard => "discard",
            Copy => "copy",
            Prepare => "prepare",
            Execute => "execute",
            Deallocate => "deallocate",
            Explain => "explain",
            Transaction => "transaction",
            Do => "do",
            Grant => "grant",
            Revoke => "revoke",
            Vacuum => "vacuum",
            Analyze => "analyze",
            Listen => "listen",
            Unlisten => "unlisten",
            Notify => "notify",
            Call => "call",
            Show => "show",
            Lock => "lock",
            Cursor => "cursor",
            Comment => "comment",
            Checkpoint => "checkpoint",
            Reindex => "reindex",
            Cluster => "cluster",
            Refresh => "refresh",
            Other(_) => "other",
        }
    }

    /// Does config kind name `wanted` (lower case) select this kind?
    /// `drop` matches every DROP; `drop_table` only DROP TABLE.
    pub fn matches(&self, wanted: &str) -> bool {
        if wanted == self.name() {
            return true;
        }
        match self {
            StatementKind::Drop(o) | StatementKind::Create(o) | StatementKind::Alter(o) => wanted
                .strip_prefix(self.name())
                .and_then(|r| r.strip_prefix('_'))
                .is_some_and(|r| r == o.name()),
            _ => false,
        }
    }

    /// SQL-ish spelling for messages (`DROP TABLE`, `DELETE`).
    pub fn sql(&self) -> String {
        match self {
            StatementKind::Drop(o) => format!("DROP {}", o.sql()),
            StatementKind::Create(o) => format!("CREATE {}", o.sql()),
            StatementKind::Alter(o) => format!("ALTER {}", o.sql()),
            StatementKind::CreateFunction => "CREATE FUNCTION".into(),
            StatementKind::Other(s) => s.clone(),
            k => k.name().replace('_', " ").to_ascii_uppercase(),
        }
    }
}

/// pgAudit's statement classes (see pgAudit's `pgaudit.log` setting):
/// READ = SELECT and COPY from a relation or query; WRITE = INSERT, UPDATE,
/// DELETE, TRUNCATE, MERGE and COPY into a relation; FUNCTION = function
/// calls and DO blocks; ROLE = GRANT, REVOKE, CREATE/ALTER/DROP ROLE; DDL =
/// all other DDL; MISC = DISCARD, FETCH, CHECKPOINT, VACUUM, transaction
/// control and the rest; MISC_SET = SET/RESET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditClass {
    Read,
    Write,
    Function,
    Role,
    Ddl,
    Misc,
    MiscSet,
}

impl AuditClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditClass::Read => "READ",
            AuditClass::Write => "WRITE",
            AuditClass::Function => "FUNCTION",
            AuditClass::Role => "ROLE",
            AuditClass::Ddl => "DDL",
            AuditClass::Misc => "MISC",
            AuditClass::MiscSet => "MISC_SET",
        }
    }
}

/// How the rows a DELETE/UPDATE touches are restricted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// No WHERE clause: every row.
    Missing,
    /// A WHERE clause that constant-folds to true (`WHERE 1=1`, `x = x`).
    Tautology,
    /// A WHERE clause that may restrict the rows.
    Restricting,
    /// `WHERE CURRENT OF cursor`: exactly the cursor's current row.
    CurrentOf(String),
}

/// Which data-changing operation a [`Modification`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModOp {
    Delete,
    Update,
    /// `MERGE … WHEN MATCHED THEN DELETE`
    MergeDelete,
    /// `MERGE … WHEN MATCHED THEN UPDATE`
    MergeUpdate,
}

impl ModOp {
    pub fn is_delete(self) -> bool {
        matches!(self, ModOp::Delete | ModOp::MergeDelete)
    }
    pub fn sql(self) -> &'static str {
        match self {
            ModOp::Delete => "DELETE",
            ModOp::Update => "UPDATE",
            ModOp::MergeDelete => "MERGE … DELETE",
            ModOp::MergeUpdate => "MERGE … UPDATE",
        }
    }
}

/// One DELETE or UPDATE that executes as part of the statement (top level,
/// in a CTE, under EXPLAIN ANALYZE, in COPY (…) TO, in a MERGE clause).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modification {
    pub op: ModOp,
    pub table: QualifiedName,
    /// `DELETE FROM ONLY t` / `UPDATE ONLY t`.
    pub only: bool,
    pub filter: Filter,
}

/// A change to a run-time setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SettingChange {
    /// `SET [LOCAL|SESSION] name …` (name lower-cased: setting names are
    /// case-insensitive even when quoted).
    Set { name: String, local: bool },
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL` (also resets every setting to its startup value).
    DiscardAll,
    /// `set_config(name, …)` — `None` when the name is not a literal.
    SetConfig(Option<String>),
    /// `SET ROLE` / `RESET ROLE`.
    Role,
    /// `SET SESSION AUTHORIZATION` / `RESET SESSION AUTHORIZATION`.
    SessionAuthorization,
}

/// Everything the classifier established about one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    /// The statement's original text (from the client's string, comments
    /// included, terminating `;` excluded).
    pub text: String,
    pub kind: StatementKind,
    pub class: AuditClass,
    /// Every statement kind that executes: the top-level kind plus nested
    /// ones that run (data-modifying CTEs, EXPLAIN ANALYZE's statement,
    /// COPY (query), CREATE TABLE AS's query, EXECUTE's prepared body).
    pub executed_kinds: Vec<StatementKind>,
    pub tables_read: Vec<QualifiedName>,
    /// Tables inserted into, updated, deleted from, merged into, copied
    /// into, truncated or created from a query.
    pub tables_written: Vec<QualifiedName>,
    pub truncated: Vec<QualifiedName>,
    /// Objects dropped (`DROP OWNED BY r` is recorded as kind Owned, name r).
    pub dropped: Vec<(ObjectKind, QualifiedName)>,
    pub modifications: Vec<Modification>,
    /// Functions and procedures called (case-folded).
    pub functions: Vec<QualifiedName>,
    pub settings: Vec<SettingChange>,
    /// DO blocks, CREATE FUNCTION/PROCEDURE bodies, CREATE RULE.
    pub dynamic_sql: bool,
    /// Set when the statement could not be classified: the reason (parser
    /// or lexer error). Rules other than `unparsed` ignore such facts.
    pub unparsed: Option<String>,
    /// Set when a token-level fallback classified the statement: names the
    /// fallback and what it proves.
    pub fallback: Option<String>,
    /// For `PREPARE name AS stmt`: the name and the facts of `stmt`.
    pub prepare: Option<(String, Box<StatementFacts>)>,
    /// For `EXECUTE name`: the name.
    pub execute: Option<String>,
    /// For `DEALLOCATE [PREPARE] name|ALL`: `Some(None)` means ALL.
    pub deallocate: Option<Option<String>>,
}

impl StatementFacts {
    /// Facts with only kind and class set.
    pub fn new(text: &str, kind: StatementKind, class: AuditClass) -> Self {
        StatementFacts {
            text: text.to_string(),
            executed_kinds: vec![kind.clone()],
            kind,
            class,
            tables_read: Vec::new(),
            tables_written: Vec::new(),
            truncated: Vec::new(),
            dropped: Vec::new(),
            modifications: Vec::new(),
            functions: Vec::new(),
            settings: Vec::new(),
            dynamic_sql: false,
            unparsed: None,
            fallback: None,
            prepare: None,
            execute: None,
            deallocate: None,
        }
    }

    /// Facts for a statement that could not be classified.
    pub fn unparsed(text: &str, reason: String) -> Self {
        let mut f = StatementFacts::new(
            text,
            StatementKind::Other("UNPARSED".into()),
            AuditClass::Misc,
        );
        f.unparsed = Some(reason);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_dotted_agrees_with_dotted() {
        let names = [
            QualifiedName::new(Some("s"), "t"),
            QualifiedName::new(None, "t"),
            QualifiedName::new(None, "s.t"),
            QualifiedName::new(Some("s.t"), "u"),
        ];
        for n in &names {
            for text in ["s.t", "t", "s.t.u", "s", "s.", ".t", "", "st"] {
                assert_eq!(n.is_dotted(text), n.dotted() == text, "{n:?} {text}");
            }
        }
    }
}
