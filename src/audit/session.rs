//! One session's side of the audit trail: who the session is
//! ([`SessionInfo`]) and which statements are in flight ([`SessionAudit`]),
//! so every CommandComplete / ErrorResponse becomes exactly one statement
//! event with its outcome.
//!
//! The server answers in order, one sync group (a Query, a FunctionCall, or
//! extended messages up to Sync) per ReadyForQuery. Each group holds its
//! operations: a statement of a Query, an Execute, a FunctionCall, or a
//! Parse. CommandComplete, EmptyQueryResponse and PortalSuspended complete
//! the first open statement/Execute of the oldest group; an ErrorResponse
//! fails it (or, when none is open, the group's Parse — a statement that
//! failed or was blocked before it could be executed). At ReadyForQuery the
//! group ends: operations still open were never executed (`skipped`).
//! Extended protocol therefore yields one event per Execute.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::config::OnFull;
use super::event::{self, AuditVerdict, Event, EventType, Outcome, StatementHead, TlsInfo};
use super::filter::StatementFilter;
use super::pipeline::{Audit, Reservation};
use super::redact::{redact, PolicyTokens, Redacted};
use crate::policy::{Block, Evaluation, LexOptions, QualifiedName, StatementFacts, Verdict};
use crate::wire::frame;

/// The rule id of statements refused because they could not be audited.
pub const FAIL_CLOSED_RULE: &str = "audit_fail_closed";

/// Who a session is; copied into each of its events.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    pub session_id: u64,
    pub client_addr: Option<String>,
    pub client_port: Option<u16>,
    pub tls: Option<TlsInfo>,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub identity: Option<BTreeMap<String, String>>,
    pub context: Option<BTreeMap<String, String>>,
}

impl SessionInfo {
    /// A new event of `kind` carrying this session's fields.
    pub fn event(&self, kind: EventType) -> Event {
        let mut e = Event::new(kind);
        e.session_id = Some(self.session_id);
        e.client_addr = self.client_addr.clone();
        e.client_port = self.client_port;
        e.tls = self.tls.clone();
        e.user = Some(self.user.clone()).filter(|u| !u.is_empty());
        e.database = Some(self.database.clone()).filter(|d| !d.is_empty());
        e.application_name = Some(self.application_name.clone()).filter(|a| !a.is_empty());
        e.identity = self.identity.clone();
        e.context = self.context.clone();
        e
    }
}

impl SessionInfo {
    /// `connection` event: `open` (after authentication) or `close`.
    pub fn connection(&self, info: super::event::ConnectionInfo) -> Event {
        let mut e = self.event(EventType::Connection);
        e.connection = Some(info);
        e
    }

    /// `auth` event: `success` or `failure` with the reason.
    pub fn auth(&self, ok: bool, reason: Option<String>) -> Event {
        let mut e = self.event(EventType::Auth);
        e.auth = Some(super::event::AuthInfo {
            result: if ok { "success" } else { "failure" }.into(),
            reason,
        });
        e
    }
}

/// `policy` event for a config reload (ok, or failed with the error).
pub fn reload_event(file: &std::path::Path, sha256: &str, error: Option<String>) -> Event {
    let mut e = Event::new(EventType::Policy);
    e.policy = Some(super::event::PolicyInfo {
        action: "reload".into(),
        result: if error.is_none() { "ok" } else { "failed" }.into(),
        file: Some(file.display().to_string()),
        sha256: Some(sha256.to_string()).filter(|s| !s.is_empty() && error.is_none()),
        error,
    });
    e
}

/// Bind parameter values (None = NULL).
type Params = Vec<Option<String>>;

/// What is known about a statement before it runs.
#[derive(Debug)]
struct Stmt {
    /// False: filtered out (its outcome is tracked, no event is written).
    audited: bool,
    protocol: &'static str,
    kind: &'static str,
    class: &'static str,
    tables: Vec<String>,
    verdict: AuditVerdict,
    rule_id: Option<String>,
    reason: Option<String>,
    sql: String,
    sql_sent: Option<String>,
    fingerprint: String,
    /// The JSON members of its events that never change (everything before
    /// `params`), serialized at its first event: a prepared statement's
    /// Executes all reuse it.
    head: OnceLock<String>,
}

impl Stmt {
    /// Equal in everything its events carry (the head is derived).
    fn same_description(&self, other: &Stmt) -> bool {
        self.audited == other.audited
            && self.protocol == other.protocol
            && self.kind == other.kind
            && self.class == other.class
            && self.tables == other.tables
            && self.verdict == other.verdict
            && self.rule_id == other.rule_id
            && self.reason == other.reason
            && self.sql == other.sql
            && self.sql_sent == other.sql_sent
            && self.fingerprint == other.fingerprint
    }

    fn head(&self) -> &str {
        self.head.get_or_init(|| {
            StatementHead {
                protocol: self.protocol,
                kind: self.kind,
                class: self.class,
                tables: &self.tables,
                verdict: self.verdict,
                rule_id: self.rule_id.as_deref(),
                reason: self.reason.as_deref(),
                sql: &self.sql,
                sql_sent: self.sql_sent.as_deref(),
                fingerprint: &self.fingerprint,
            }
            .fragment()
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum OpKind {
    /// A statement of a Query, an Execute, or a FunctionCall.
    Run,
    /// A Parse: reported only if it fails before any Execute could run.
    Parse,
}

struct Op {
    kind: OpKind,
    stmt: Arc<Stmt>,
    params: Option<Vec<Option<String>>>,
    received: Instant,
    done: bool,
    /// `fail_closed`: the queue slot reserved for this event.
    slot: Option<Reservation>,
    /// Refused (fail_closed): absorbs its error, writes nothing.
    refused: bool,
}

struct Group {
    ops: Vec<Op>,
    closed: bool,
}

/// The statements of one session on their way through the server.
pub struct SessionAudit {
    audit: Arc<Audit>,
    info: SessionInfo,
    /// `info` as the JSON members of a statement event (see
    /// [`Event::session_fragment`]); `None` after `info` changed.
    session_json: Option<String>,
    filter: StatementFilter,
    session_wanted: bool,
    groups: VecDeque<Group>,
    statements: HashMap<String, Arc<Stmt>>,
    portals: HashMap<String, (Arc<Stmt>, Option<Params>)>,
    /// Statements whose outcome is known, serialized by [`Self::take_events`]
    /// once the relay has forwarded the reply (not while the client waits).
    finished: Vec<Finished>,
    /// Serialized events for the relay to queue (it may wait; we may not).
    outbox: Vec<(&'static str, String)>,
    /// Recently parsed statements by text (see [`Self::describe_parse`]).
    recent_parses: HashMap<String, RecentParse>,
    /// Recent Query statements by redacted text (see [`Self::share`]).
    recent_queries: HashMap<String, Arc<Stmt>>,
    pub lex: LexOptions,
}

/// A finished statement whose event is still to be serialized.
struct Finished {
    stmt: Arc<Stmt>,
    params: Option<Vec<Option<String>>>,
    outcome: Outcome,
    slot: Option<Reservation>,
}

/// The redacted text of a statement: made from the policy's tokens, or
/// found among the texts redacted before.
enum RedactedText {
    Made(String),
    Cached(Arc<Redacted>),
}

impl RedactedText {
    fn as_str(&self) -> &str {
        match self {
            RedactedText::Made(s) => s,
            RedactedText::Cached(r) => &r.sql,
        }
    }

    /// The text, if it was made here (a cached one is found again cheaply).
    fn made(self) -> Option<String> {
        match self {
            RedactedText::Made(s) => Some(s),
            RedactedText::Cached(_) => None,
        }
    }
}

/// A Parse described before, and what its description was made from.
struct RecentParse {
    lex: LexOptions,
    facts: StatementFacts,
    stmt: Arc<Stmt>,
}

/// Texts remembered per session; past it the memo starts afresh.
const RECENT_PARSES: usize = 64;

impl SessionAudit {
    pub fn new(audit: Arc<Audit>, info: SessionInfo) -> SessionAudit {
        let filter = StatementFilter::new(&audit.config().filter);
        let session_wanted = filter.wants_session(&info.user, &info.database);
        SessionAudit {
            audit,
            info,
            session_json: None,
            filter,
            session_wanted,
            groups: VecDeque::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            finished: Vec::new(),
            outbox: Vec::new(),
            recent_parses: HashMap::new(),
            recent_queries: HashMap::new(),
            lex: LexOptions::default(),
        }
    }

    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The client changed `application_name` (the only session field that
    /// can change after authentication).
    pub fn set_application_name(&mut self, name: &str) {
        if self.info.application_name != name {
            self.info.application_name = name.to_string();
            self.session_json = None;
        }
    }

    /// Events ready to be queued by the relay: the statements finished
    /// since the last call, serialized now.
    pub fn take_events(&mut self) -> Vec<(&'static str, String)> {
        if !self.finished.is_empty() {
            let info = &self.info;
            let session = self
                .session_json
                .get_or_insert_with(|| info.event(EventType::Statement).session_fragment());
            for f in self.finished.drain(..) {
                let json =
                    event::statement_json(session, f.stmt.head(), f.params.as_ref(), &f.outcome);
                match f.slot {
                    Some(slot) => self.audit.send_reserved(slot, "statement", json),
                    None => self.outbox.push(("statement", json)),
                }
            }
        }
        std::mem::take(&mut self.outbox)
    }

    fn fail_closed(&self) -> bool {
        self.audit.config().on_full == OnFull::FailClosed
    }

    /// Redacted text and fingerprint of statement `index`: from the
    /// policy's tokens when it lexed this text, else from the cache of
    /// texts seen before, else by lexing it here (and caching the result).
    /// `redacted`: the redacted text, when the caller already made it from
    /// `tokens` (only the fingerprint is then left to make).
    fn redact_statement(
        &self,
        text: &str,
        index: usize,
        tokens: Option<&PolicyTokens>,
        redacted: Option<String>,
    ) -> Redacted {
        let cfg = self.audit.config();
        let (literals, max) = (cfg.redact_literals, cfg.max_sql_bytes);
        let from_policy = tokens
            .filter(|t| t.options == self.lex)
            .and_then(|t| match redacted {
                Some(sql) => t
                    .fingerprint(index, text)
                    .map(|fingerprint| Redacted { sql, fingerprint }),
                None => t.redact(index, text, literals, max),
            });
        if let Some(r) = from_policy {
            return r;
        }
        let scs = self.lex.standard_conforming_strings;
        let cache = self.audit.redactions();
        if let Some(r) = cache.get(text, scs) {
            return (*r).clone();
        }
        let r = redact(text, literals, max, self.lex);
        cache.put(text, scs, Arc::new(r.clone()));
        r
    }

    /// `redacted` as for [`Self::redact_statement`].
    fn describe(
        &self,
        facts: Option<&StatementFacts>,
        eval: &Evaluation,
        protocol: &'static str,
        (index, tokens, redacted): (usize, Option<&PolicyTokens>, Option<String>),
    ) -> Stmt {
        let (verdict, rule_id, reason) = match &eval.verdict {
            Verdict::Allow => (AuditVerdict::Allowed, None, None),
            Verdict::Monitored { rule_id, reason } => (
                AuditVerdict::Monitored,
                Some(rule_id.clone()),
                Some(reason.clone()),
            ),
            Verdict::Block(b) => (
                AuditVerdict::Blocked,
                Some(b.rule_id.clone()),
                Some(b.message.clone()),
            ),
            Verdict::Rewrite {
                rule_id, rewritten, ..
            } if rewritten.contains(&index) => {
                (AuditVerdict::Rewritten, Some(rule_id.clone()), None)
            }
            Verdict::Rewrite { .. } => (AuditVerdict::Allowed, None, None),
        };
        let (kind, class) = match facts {
            Some(f) => (f.kind.name(), f.class.as_str()),
            None => ("function_call", "FUNCTION"),
        };
        let mut tables: Vec<String> = Vec::new();
        for t in facts.into_iter().flat_map(table_names) {
            let name = t.dotted();
            if !tables.contains(&name) {
                tables.push(name);
            }
        }
        let audited = verdict != AuditVerdict::Allowed
            || (self.session_wanted && self.filter.wants_statement(class, &tables));
        if !audited {
            return Stmt {
                audited,
                protocol,
                kind,
                class,
                tables,
                verdict,
                rule_id,
                reason,
                sql: String::new(),
                sql_sent: None,
                fingerprint: String::new(),
                head: OnceLock::new(),
            };
        }
        let cfg = self.audit.config();
        let text = facts.map_or("", |f| f.text.as_str());
        let r = self.redact_statement(text, index, tokens, redacted);
        let sql_sent = match &eval.verdict {
            Verdict::Rewrite { sql, .. } if verdict == AuditVerdict::Rewritten => {
                Some(redact(sql, cfg.redact_literals, cfg.max_sql_bytes, self.lex).sql)
            }
            _ => None,
        };
        Stmt {
            audited,
            protocol,
            kind,
            class,
            tables,
            verdict,
            rule_id,
            reason,
            sql: r.sql,
            sql_sent,
            fingerprint: r.fingerprint,
            head: OnceLock::new(),
        }
    }

    fn new_op(&self, kind: OpKind, stmt: Arc<Stmt>, params: Option<Vec<Option<String>>>) -> Op {
        Op {
            kind,
            stmt,
            params,
            received: Instant::now(),
            done: false,
            slot: None,
            refused: false,
        }
    }

    /// Reserve a queue slot for each audited Run op (fail_closed); on
    /// failure release them all and answer the block that refuses them.
    fn reserve(&self, ops: &mut [Op]) -> Option<Block> {
        if !self.fail_closed() {
            return None;
        }
        for op in ops
            .iter_mut()
            .filter(|o| o.kind == OpKind::Run && o.stmt.audited)
        {
            match self.audit.reserve() {
                Some(slot) => op.slot = Some(slot),
                None => {
                    for op in ops.iter_mut() {
                        op.slot = None;
                        op.refused = true;
                    }
                    crate::admin::metrics::metrics().audit.refused.inc();
                    return Some(fail_closed_block());
                }
            }
        }
        None
    }

    fn open_group(&mut self) -> &mut Group {
        if self.groups.back().is_none_or(|g| g.closed) {
            self.groups.push_back(Group {
                ops: Vec::new(),
                closed: false,
            });
        }
        self.groups.back_mut().expect("just ensured")
    }

    /// A Query: one op per statement. Returns the evaluation to apply
    /// (a block if the statement cannot be audited under fail_closed).
    /// `tokens`: the policy's lex of the Query text, when it made one.
    pub fn on_query(&mut self, eval: Evaluation, tokens: Option<&PolicyTokens>) -> Evaluation {
        let mut ops: Vec<Op> = eval
            .statements
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let stmt = self.query_statement(f, &eval, i, tokens);
                self.new_op(OpKind::Run, stmt, None)
            })
            .collect();
        let eval = match self.reserve(&mut ops) {
            Some(block) => Evaluation {
                statements: eval.statements,
                verdict: Verdict::Block(block),
            },
            None => eval,
        };
        self.groups.push_back(Group { ops, closed: true });
        eval
    }

    /// A FunctionCall (its own sync group).
    pub fn on_function_call(&mut self, eval: Evaluation) -> Evaluation {
        let stmt = Arc::new(self.describe(None, &eval, "function_call", (0, None, None)));
        let mut ops = vec![self.new_op(OpKind::Run, stmt, None)];
        let eval = match self.reserve(&mut ops) {
            Some(block) => Evaluation {
                statements: eval.statements,
                verdict: Verdict::Block(block),
            },
            None => eval,
        };
        self.groups.push_back(Group { ops, closed: true });
        eval
    }

    /// A Query, Parse or FunctionCall while the policy is off (nothing was
    /// classified): recorded with kind `unknown`, class `UNKNOWN`, audited
    /// when the filter's classes include `ALL`.
    pub fn on_unevaluated(&mut self, tag: u8, body: &[u8]) {
        use crate::wire::frame::frontend;
        let (text, protocol) = match tag {
            frontend::QUERY => (frame::query_text(body).unwrap_or(""), "simple"),
            frontend::PARSE => (frame::parse_text(body).map_or("", |(_, t)| t), "extended"),
            _ => ("", "function_call"),
        };
        let audited = self.session_wanted && self.filter.wants_statement("UNKNOWN", &[]);
        let r = self.redact_statement(text, 0, None, None);
        let stmt = Arc::new(Stmt {
            audited,
            protocol,
            kind: "unknown",
            class: "UNKNOWN",
            tables: Vec::new(),
            verdict: AuditVerdict::Allowed,
            rule_id: None,
            reason: Some("policy mode off: not classified".into()),
            sql: r.sql,
            sql_sent: None,
            fingerprint: r.fingerprint,
            head: OnceLock::new(),
        });
        if tag == frontend::PARSE {
            let name = frame::parse_text(body).map_or("", |(n, _)| n).to_string();
            self.statements.insert(name, stmt.clone());
            let op = self.new_op(OpKind::Parse, stmt, None);
            self.open_group().ops.push(op);
        } else {
            let op = self.new_op(OpKind::Run, stmt, None);
            self.groups.push_back(Group {
                ops: vec![op],
                closed: true,
            });
        }
    }

    /// A Parse of statement `name` (`tokens` as for [`Self::on_query`]).
    pub fn on_parse(&mut self, name: &str, eval: &Evaluation, tokens: Option<&PolicyTokens>) {
        let stmt = match eval.statements.as_slice() {
            [] => Arc::new(self.describe(None, eval, "extended", (0, None, None))),
            [f, ..] => self.describe_parse(f, eval, tokens),
        };
        match self.statements.get_mut(name) {
            Some(slot) => *slot = stmt.clone(),
            None => {
                self.statements.insert(name.to_string(), stmt.clone());
            }
        }
        let op = self.new_op(OpKind::Parse, stmt, None);
        self.open_group().ops.push(op);
    }

    /// Statement `index` of a Query: recalled when this session described
    /// it before (see [`Self::recall_query`]), else described and shared.
    fn query_statement(
        &mut self,
        facts: &StatementFacts,
        eval: &Evaluation,
        index: usize,
        tokens: Option<&PolicyTokens>,
    ) -> Arc<Stmt> {
        let redacted = match self.recall_query(facts, eval, index, tokens) {
            Ok(known) => return known,
            Err(redacted) => redacted,
        };
        let described = self.describe(Some(facts), eval, "simple", (index, tokens, redacted));
        self.share(described)
    }

    /// Simple-protocol texts that differ only in their literals redact to
    /// the same text. An allowed statement whose redacted text and
    /// classification match a statement described before is that statement:
    /// its fingerprint, table names and event head are not made again. Only
    /// when the filter decides by class (table patterns would need the
    /// names). `Err` carries the redacted text if it was made.
    fn recall_query(
        &self,
        facts: &StatementFacts,
        eval: &Evaluation,
        index: usize,
        tokens: Option<&PolicyTokens>,
    ) -> Result<Arc<Stmt>, Option<String>> {
        let class = facts.class.as_str();
        let recallable = matches!(eval.verdict, Verdict::Allow)
            && self.session_wanted
            && !self.recent_queries.is_empty()
            && self.filter.wants_class(class) == Some(true);
        if !recallable {
            return Err(None);
        }
        // From the policy's tokens when it lexed this text, else (a text
        // it had classified before) from the texts redacted before.
        let cfg = self.audit.config();
        let text = match tokens.filter(|t| t.options == self.lex) {
            Some(t) => RedactedText::Made(
                t.redacted_text(index, &facts.text, cfg.redact_literals, cfg.max_sql_bytes)
                    .ok_or(None)?,
            ),
            None => {
                let scs = self.lex.standard_conforming_strings;
                RedactedText::Cached(self.audit.redactions().get(&facts.text, scs).ok_or(None)?)
            }
        };
        match self.recent_queries.get(text.as_str()) {
            Some(known)
                if known.verdict == AuditVerdict::Allowed
                    && known.kind == facts.kind.name()
                    && known.class == class
                    && known.sql_sent.is_none()
                    && same_tables(&known.tables, facts) =>
            {
                Ok(known.clone())
            }
            _ => Err(text.made()),
        }
    }

    /// One `Arc` per distinct description of a Query statement, so its
    /// event head is serialized once: simple-protocol texts that differ only
    /// in their literals redact to the same text and are described alike.
    fn share(&mut self, stmt: Stmt) -> Arc<Stmt> {
        if !stmt.audited || stmt.sql.len() > super::redact_cache::MAX_TEXT_BYTES {
            return Arc::new(stmt);
        }
        if let Some(known) = self.recent_queries.get(stmt.sql.as_str()) {
            if known.same_description(&stmt) {
                return known.clone();
            }
        }
        if self.recent_queries.len() >= RECENT_PARSES {
            self.recent_queries.clear();
        }
        let stmt = Arc::new(stmt);
        self.recent_queries.insert(stmt.sql.clone(), stmt.clone());
        stmt
    }

    /// The description of a Parse. Drivers parse the same text again and
    /// again (pgbench's and many ORMs' unnamed statement before every
    /// Execute); an allowed text whose facts match one described before
    /// reuses that statement, already redacted and serialized.
    fn describe_parse(
        &mut self,
        facts: &StatementFacts,
        eval: &Evaluation,
        tokens: Option<&PolicyTokens>,
    ) -> Arc<Stmt> {
        // Other verdicts carry rule ids and reasons: always described anew.
        let reusable = matches!(eval.verdict, Verdict::Allow);
        if reusable {
            if let Some(r) = self.recent_parses.get(facts.text.as_str()) {
                if r.lex == self.lex && r.facts == *facts {
                    return r.stmt.clone();
                }
            }
        }
        let stmt = Arc::new(self.describe(Some(facts), eval, "extended", (0, tokens, None)));
        if reusable && facts.text.len() <= super::redact_cache::MAX_TEXT_BYTES {
            if self.recent_parses.len() >= RECENT_PARSES {
                self.recent_parses.clear();
            }
            let recent = RecentParse {
                lex: self.lex,
                facts: facts.clone(),
                stmt: stmt.clone(),
            };
            self.recent_parses.insert(facts.text.clone(), recent);
        }
        stmt
    }

    pub fn on_bind(&mut self, body: &[u8]) {
        let Some((portal, rest)) = frame::read_cstr(body) else {
            return;
        };
        let Some((name, rest)) = frame::read_cstr(rest) else {
            return;
        };
        let stmt = match self.statements.get(&*String::from_utf8_lossy(name)) {
            Some(s) => s.clone(),
            // Prepared before pgward could see it: nothing is known.
            None => Arc::new(Stmt {
                audited: true,
                protocol: "extended",
                kind: "unknown",
                class: "MISC",
                tables: Vec::new(),
                verdict: AuditVerdict::Allowed,
                rule_id: None,
                reason: None,
                sql: String::new(),
                sql_sent: None,
                fingerprint: String::new(),
                head: OnceLock::new(),
            }),
        };
        let params = (self.audit.config().log_parameters && stmt.audited)
            .then(|| bind_params(rest))
            .flatten();
        let portal = String::from_utf8_lossy(portal);
        match self.portals.get_mut(&*portal) {
            Some(slot) => *slot = (stmt, params),
            None => {
                self.portals.insert(portal.into_owned(), (stmt, params));
            }
        }
    }

    /// An Execute; `Some(block)` when it must be refused (fail_closed).
    pub fn on_execute(&mut self, body: &[u8]) -> Option<Block> {
        let portal = frame::read_cstr(body).map_or(std::borrow::Cow::Borrowed(""), |(p, _)| {
            String::from_utf8_lossy(p)
        });
        let (stmt, params) = match self.portals.get(&*portal) {
            Some((s, p)) => (s.clone(), p.clone()),
            None => return None,
        };
        let mut ops = vec![self.new_op(OpKind::Run, stmt, params)];
        let block = self.reserve(&mut ops);
        self.open_group().ops.extend(ops);
        block
    }

    pub fn on_sync(&mut self) {
        if let Some(g) = self.groups.back_mut() {
            g.closed = true;
        }
    }

    pub fn on_close(&mut self, kind: u8, name: &str) {
        match kind {
            b'S' => {
                self.statements.remove(name);
            }
            b'P' => {
                self.portals.remove(name);
            }
            _ => {}
        }
    }

    /// CommandComplete (`tag`), EmptyQueryResponse or PortalSuspended (None).
    pub fn on_complete(&mut self, tag: Option<&str>) {
        if let Some(op) = self.front_open(OpKind::Run) {
            let outcome = Outcome {
                status: "ok".into(),
                command_tag: tag.map(str::to_string),
                rows: tag.and_then(rows_of),
                sqlstate: None,
                message: None,
                duration_us: op.received.elapsed().as_micros() as u64,
            };
            self.finish(op, outcome);
        }
    }

    /// ErrorResponse as the client receives it.
    pub fn on_error(&mut self, sqlstate: &str, message: &str) {
        let op = match self.front_open(OpKind::Run) {
            Some(op) => Some(op),
            None => self.front_open(OpKind::Parse),
        };
        if let Some(op) = op {
            let outcome = no_tag(
                "error",
                Some(sqlstate.to_string()),
                Some(message.to_string()),
                op.received,
            );
            self.finish(op, outcome);
        }
    }

    /// ReadyForQuery: the oldest group is over.
    pub fn on_ready(&mut self) {
        let Some(group) = self.groups.pop_front() else {
            return;
        };
        for op in group
            .ops
            .into_iter()
            .filter(|o| !o.done && o.kind == OpKind::Run)
        {
            let outcome = no_tag("skipped", None, None, op.received);
            self.finish(op, outcome);
        }
    }

    /// The session ended: statements still waiting for the server get an
    /// event with status `unknown` (the outcome never reached pgward).
    pub fn on_session_end(&mut self, reason: &str) {
        while let Some(group) = self.groups.pop_front() {
            for op in group
                .ops
                .into_iter()
                .filter(|o| !o.done && o.kind == OpKind::Run)
            {
                let message = format!("session ended before the server answered: {reason}");
                let outcome = no_tag("unknown", None, Some(message), op.received);
                self.finish(op, outcome);
            }
        }
    }

    /// Take the first open op of `kind` in the oldest group.
    fn front_open(&mut self, kind: OpKind) -> Option<Op> {
        let group = self.groups.front_mut()?;
        let op = group.ops.iter_mut().find(|o| !o.done && o.kind == kind)?;
        op.done = true;
        Some(Op {
            kind: OpKind::Run,
            stmt: op.stmt.clone(),
            params: op.params.take(),
            received: op.received,
            done: true,
            slot: op.slot.take(),
            refused: op.refused,
        })
    }

    fn finish(&mut self, op: Op, outcome: Outcome) {
        if op.refused || !op.stmt.audited {
            return;
        }
        self.finished.push(Finished {
            stmt: op.stmt,
            params: op.params,
            outcome,
            slot: op.slot,
        });
    }
}

/// The tables a statement names, in the order its event lists them
/// (repeats included).
fn table_names(f: &StatementFacts) -> impl Iterator<Item = &QualifiedName> {
    f.tables_written
        .iter()
        .chain(&f.tables_read)
        .chain(&f.truncated)
        .chain(f.dropped.iter().map(|(_, n)| n))
}

/// Whether `listed` is the table list [`SessionAudit::describe`] makes of
/// `f` (first mentions, in order), without making it.
fn same_tables(listed: &[String], f: &StatementFacts) -> bool {
    let mut matched = 0;
    for t in table_names(f) {
        if listed[..matched].iter().any(|l| t.is_dotted(l)) {
            continue;
        }
        match listed.get(matched) {
            Some(l) if t.is_dotted(l) => matched += 1,
            _ => return false,
        }
    }
    matched == listed.len()
}

/// Feed one backend frame (as the client receives it) to the session's audit.
pub fn observe_backend(a: &mut SessionAudit, tag: u8, body: &[u8]) {
    use crate::wire::frame::backend;
    match tag {
        backend::COMMAND_COMPLETE => {
            let tag = frame::read_cstr(body).map(|(t, _)| String::from_utf8_lossy(t));
            a.on_complete(Some(tag.as_deref().unwrap_or("")));
        }
        backend::EMPTY_QUERY | backend::PORTAL_SUSPENDED => a.on_complete(None),
        backend::ERROR_RESPONSE => {
            let field = |c| {
                String::from_utf8_lossy(frame::error_field(body, c).unwrap_or_default())
                    .into_owned()
            };
            a.on_error(&field(b'C'), &field(b'M'));
        }
        backend::READY_FOR_QUERY => a.on_ready(),
        _ => {}
    }
}

/// The block that refuses a statement whose event cannot be queued.
pub fn fail_closed_block() -> Block {
    Block {
        rule_id: FAIL_CLOSED_RULE.to_string(),
        message: "pgward: statement refused because it cannot be audited (audit queue full)".into(),
        detail:
            "audit.on_full = \"fail_closed\" refuses statements while the audit sinks are behind"
                .into(),
        hint: "retry shortly; if this persists, check the audit sinks".into(),
    }
}

/// Rows from a command tag: its last number (`INSERT 0 5`, `UPDATE 2`).
fn rows_of(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let first = words.next()?;
    let last = tag.rsplit(' ').next()?;
    (first != last || tag.contains(' '))
        .then(|| last.parse().ok())
        .flatten()
}

/// Bind parameter values after the portal and statement names: text
/// values as text, binary ones as `\x` hex; `None` for NULL.
fn bind_params(rest: &[u8]) -> Option<Vec<Option<String>>> {
    let mut r = rest;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = (r.get(..n)?, r.get(n..)?);
        r = b;
        Some(a)
    };
    let i16_at = |b: &[u8]| i16::from_be_bytes([b[0], b[1]]);
    let nfmt = i16_at(take(2)?).max(0) as usize;
    let mut formats = Vec::with_capacity(nfmt);
    for _ in 0..nfmt {
        formats.push(i16_at(take(2)?));
    }
    let n = i16_at(take(2)?).max(0) as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let len = i32::from_be_bytes(take(4)?.try_into().ok()?);
        if len < 0 {
            out.push(None);
            continue;
        }
        let value = take(len as usize)?;
        let binary = match formats.as_slice() {
            [] => false,
            [one] => *one == 1,
            many => many.get(i).is_some_and(|f| *f == 1),
        };
        out.push(Some(if binary {
            format!("\\x{}", super::chain::hex(value))
        } else {
            String::from_utf8_lossy(value).into_owned()
        }));
    }
    Some(out)
}

/// An outcome without a CommandComplete: an error, a statement the server
/// skipped, or one whose answer never came.
fn no_tag(
    status: &str,
    sqlstate: Option<String>,
    message: Option<String>,
    received: std::time::Instant,
) -> Outcome {
    Outcome {
        status: status.into(),
        command_tag: None,
        rows: None,
        sqlstate,
        message,
        duration_us: received.elapsed().as_micros() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session auditing every statement to a file in `dir`.
    async fn audited_session(dir: &std::path::Path) -> SessionAudit {
        use crate::audit::config::{AuditConfig, FileSinkConfig, Fsync, SinkConfig};
        let mut config = AuditConfig {
            sinks: vec![SinkConfig::File(FileSinkConfig {
                path: dir.join("a.jsonl"),
                fsync: Fsync::Never,
                ..FileSinkConfig::default()
            })],
            ..AuditConfig::default()
        };
        config.filter.classes = vec!["ALL".into()];
        let audit = Audit::start(&config, &Default::default())
            .await
            .unwrap()
            .unwrap();
        SessionAudit::new(audit, SessionInfo::default())
    }

    /// An audited session writing under a fresh temp dir (kept alive by the
    /// returned guard) and the default policy.
    async fn audited_with_policy() -> (tempfile::TempDir, SessionAudit, crate::policy::Policy) {
        let dir = tempfile::tempdir().unwrap();
        let a = audited_session(dir.path()).await;
        let policy = crate::policy::Policy::from_config(&Default::default()).unwrap();
        (dir, a, policy)
    }

    fn parse_eval(policy: &crate::policy::Policy, sql: &str) -> Evaluation {
        let scope = crate::policy::SessionScope::default();
        let registry = crate::policy::PreparedRegistry::new();
        policy.evaluate(sql, &scope, LexOptions::default(), &registry)
    }

    #[tokio::test]
    async fn a_repeated_parse_reuses_its_statement_unless_facts_verdict_or_lexing_differ() {
        let (_dir, mut a, policy) = audited_with_policy().await;
        let select = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
        let described = |a: &SessionAudit, name: &str| a.statements[name].clone();

        a.on_parse("", &parse_eval(&policy, select), None);
        let first = described(&a, "");
        a.on_parse("", &parse_eval(&policy, select), None);
        assert!(Arc::ptr_eq(&first, &described(&a, "")), "same text: reused");
        assert_eq!(first.sql, select);

        // Another text, then the first again: both remembered.
        let other = "SELECT bbalance FROM pgbench_branches WHERE bid = $1";
        a.on_parse("s1", &parse_eval(&policy, other), None);
        assert_eq!(described(&a, "s1").tables, ["pgbench_branches"]);
        a.on_parse("", &parse_eval(&policy, select), None);
        assert!(Arc::ptr_eq(&first, &described(&a, "")));

        // A blocked text is described anew each time (rule id, reason).
        let delete = "DELETE FROM pgbench_accounts";
        a.on_parse("", &parse_eval(&policy, delete), None);
        let blocked = described(&a, "");
        assert_eq!(blocked.verdict, AuditVerdict::Blocked);
        a.on_parse("", &parse_eval(&policy, delete), None);
        assert!(!Arc::ptr_eq(&blocked, &described(&a, "")));

        // Different lexing rules: described again.
        a.lex = LexOptions {
            standard_conforming_strings: false,
        };
        a.on_parse("", &parse_eval(&policy, select), None);
        assert!(!Arc::ptr_eq(&first, &described(&a, "")));

        // The memo is bounded.
        for i in 0..(3 * RECENT_PARSES) {
            let sql = format!("SELECT * FROM t{i} WHERE id = $1");
            a.on_parse("", &parse_eval(&policy, &sql), None);
        }
        assert!(a.recent_parses.len() <= RECENT_PARSES);
    }

    #[tokio::test]
    async fn queries_that_differ_only_in_literals_share_one_statement() {
        let (_dir, mut a, policy) = audited_with_policy().await;
        let query = |a: &mut SessionAudit, sql: &str| {
            a.on_query(parse_eval(&policy, sql), None);
            let op = &a.groups.back().unwrap().ops[0];
            op.stmt.clone()
        };
        let one = query(
            &mut a,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 17",
        );
        let two = query(
            &mut a,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4242",
        );
        assert!(Arc::ptr_eq(&one, &two));
        assert!(!one.sql.contains("17"), "{}", one.sql);
        // A text seen before (the policy had its facts, so no tokens).
        let repeat = query(
            &mut a,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4242",
        );
        assert!(Arc::ptr_eq(&one, &repeat));
        let other = query(
            &mut a,
            "SELECT bbalance FROM pgbench_branches WHERE bid = 17",
        );
        assert!(!Arc::ptr_eq(&one, &other));
        let blocked = query(&mut a, "DELETE FROM pgbench_accounts");
        assert_eq!(blocked.verdict, AuditVerdict::Blocked);
        assert!(Arc::ptr_eq(
            &blocked,
            &query(&mut a, "DELETE FROM pgbench_accounts")
        ));
    }

    #[tokio::test]
    async fn a_query_recalled_by_its_redacted_text_is_described_as_it_would_be_anew() {
        let (_dir, mut a, policy) = audited_with_policy().await;
        let scope = crate::policy::SessionScope::default();
        let registry = crate::policy::PreparedRegistry::new();
        let opts = LexOptions::default();
        // The statements of `sql` as audited, and as described from scratch.
        let query = |a: &mut SessionAudit, sql: &str| {
            let (eval, lexed) = policy.evaluate_lexed(
                sql,
                &scope,
                opts,
                &registry,
                &mut crate::policy::FactsMemo::new(),
            );
            let lexed = lexed.unwrap_or_else(|| crate::policy::lexer::lex(sql, opts).unwrap());
            let tokens = PolicyTokens {
                sql,
                lexed: &lexed,
                options: opts,
            };
            let fresh: Vec<Stmt> = (0..eval.statements.len())
                .map(|i| {
                    let f = &eval.statements[i];
                    a.describe(Some(f), &eval, "simple", (i, Some(&tokens), None))
                })
                .collect();
            a.on_query(eval, Some(&tokens));
            let ops = &a.groups.back().unwrap().ops;
            for (op, fresh) in ops.iter().zip(&fresh) {
                assert!(op.stmt.same_description(fresh), "{sql}: {}", op.stmt.sql);
            }
            ops.iter().map(|o| o.stmt.clone()).collect::<Vec<_>>()
        };
        let one = query(
            &mut a,
            "UPDATE pgbench_branches SET bbalance = 1 WHERE bid = 2",
        );
        let two = query(
            &mut a,
            "UPDATE pgbench_branches SET bbalance = 5 WHERE bid = 7",
        );
        assert!(Arc::ptr_eq(&one[0], &two[0]));
        // The minus is an operator: `-5` redacts to `-$1`, another text.
        let negative = query(
            &mut a,
            "UPDATE pgbench_branches SET bbalance = -5 WHERE bid = 7",
        );
        assert!(negative[0].sql.contains("= -$1"), "{}", negative[0].sql);
        // Both statements of one Query, and a repeat of a whole text.
        let both = query(&mut a, "select 1 from t, u, t; select 2 from t, u, t");
        assert!(Arc::ptr_eq(&both[0], &both[1]));
        assert_eq!(both[0].tables, ["t", "u"]);
        let again = query(&mut a, "select 1 from t, u, t; select 2 from t, u, t");
        assert!(Arc::ptr_eq(&both[0], &again[0]));
        // Spacing is kept in the text, so it is another statement.
        let spaced = query(
            &mut a,
            "UPDATE pgbench_branches SET  bbalance = 1 WHERE bid = 2",
        );
        assert!(!Arc::ptr_eq(&one[0], &spaced[0]));
        // A block is never recalled as the allowed statement.
        let blocked = query(&mut a, "DELETE FROM pgbench_accounts");
        assert_eq!(blocked[0].verdict, AuditVerdict::Blocked);
    }

    #[test]
    fn same_tables_follows_first_mentions_in_order() {
        let f = crate::policy::classify::classify_with(
            "INSERT INTO s.a SELECT * FROM b JOIN s.a ON true JOIN c ON true",
            LexOptions::default(),
        )
        .remove(0);
        let names: Vec<String> = table_names(&f).map(QualifiedName::dotted).collect();
        assert_eq!(names, ["s.a", "b", "s.a", "c"]);
        let listed = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(same_tables(&listed(&["s.a", "b", "c"]), &f));
        for wrong in [
            &["s.a", "b"][..],
            &["b", "s.a", "c"],
            &["s.a", "b", "c", "d"],
            &["a", "b", "c"],
            &[],
        ] {
            assert!(!same_tables(&listed(wrong), &f), "{wrong:?}");
        }
    }

    #[tokio::test]
    async fn statement_events_are_serialized_when_taken_in_order() {
        let (_dir, mut a, policy) = audited_with_policy().await;
        let select = "SELECT a FROM t WHERE id = $1";
        for _ in 0..2 {
            a.on_parse("", &parse_eval(&policy, select), None);
            a.on_bind(b"\0\0\0\0\0\0");
            assert!(a.on_execute(b"\0\0\0\0\0").is_none());
            a.on_sync();
        }
        a.on_complete(Some("SELECT 1"));
        a.on_ready();
        a.on_complete(Some("SELECT 0"));
        a.on_ready();
        let events = a.take_events();
        assert_eq!(events.len(), 2);
        assert!(
            events[0].1.contains("\"command_tag\":\"SELECT 1\""),
            "{}",
            events[0].1
        );
        assert!(
            events[1].1.contains("\"command_tag\":\"SELECT 0\""),
            "{}",
            events[1].1
        );
        assert!(events[0].1.contains(select));
        assert!(a.take_events().is_empty());
    }

    #[test]
    fn rows_come_from_the_last_number_of_the_tag() {
        assert_eq!(rows_of("INSERT 0 5"), Some(5));
        assert_eq!(rows_of("SELECT 3"), Some(3));
        assert_eq!(rows_of("BEGIN"), None);
        assert_eq!(rows_of("CREATE TABLE"), None);
    }

    #[test]
    fn bind_params_decode_text_binary_and_null_and_refuse_garbage() {
        let mut b = Vec::new();
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&3i16.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(b"hi");
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(&[0xab, 0x01]);
        b.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            bind_params(&b),
            Some(vec![Some("hi".into()), Some("\\xab01".into()), None])
        );
        assert_eq!(bind_params(&b[..9]), None);
        assert_eq!(bind_params(&[0xff, 0xff, 0, 5]), None);
    }
}
