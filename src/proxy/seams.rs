//! The observation points the relay offers to policy, identity and audit.
//!
//! The relay hands this type only the frames it must: Query, Parse, Sync,
//! Close and FunctionCall going up; CommandComplete, ErrorResponse,
//! ReadyForQuery and ParameterStatus coming down. Everything else is forwarded
//! by header without being looked at. A `SessionSeams` is shared by the two
//! directions of one session behind a mutex that is never held across an
//! `.await`.
//!
//! ## How a block keeps the transaction honest
//!
//! A blocked Query, Parse or FunctionCall is not answered by pgward out of
//! band. It is replaced by a message that makes the *server* fail in the same
//! place: a statement consisting of one unique token (`pgward_blocked_<n>`),
//! which Postgres rejects with a syntax error at parse time. The server then
//! does exactly what it does for any error — aborts an explicit transaction,
//! discards extended-protocol messages until Sync, reports the true status in
//! ReadyForQuery — and the replies stay in order with everything pipelined
//! around them. Coming back, the ErrorResponse naming that token is swapped
//! for pgward's own 42501 error. Nothing of the blocked statement ran.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::retag::Retagger;
use super::PolicySource;
use crate::admin::loop_metrics;
use crate::admin::metrics::metrics;
use crate::audit::redact::PolicyTokens;
use crate::audit::session::SessionAudit;
use crate::policy::lexer::Lexed;
use crate::policy::{
    Evaluation, FactsMemo, LexOptions, Policy, PreparedRegistry, SessionScope, Verdict,
};
use crate::wire::errors::PgError;
use crate::wire::frame::{self, backend, frontend};

/// What to do with a frontend frame.
#[derive(Debug)]
pub enum FrontendAction {
    Forward,
    /// Send these bytes upstream instead of the frame.
    Replace(Bytes),
}

/// What to do with a backend frame.
#[derive(Debug)]
pub enum BackendAction {
    Forward,
    /// Send these bytes to the client instead of the frame.
    Replace(Bytes),
}

/// Client encodings whose multibyte characters can contain the bytes of `\`
/// or `'`: a lexer that reads them as UTF-8 could see a quote end where the
/// server does not. Non-ASCII statements in them are refused.
const UNSAFE_ENCODINGS: &[&str] = &["SJIS", "SHIFT_JIS", "BIG5", "GBK", "GB18030", "JOHAB"];

/// A blocked message whose substitute is on its way to the server.
#[derive(Debug)]
struct PendingBlock {
    token: String,
    /// The ReadyForQuery (counted from the end of startup) that settles it.
    settled_by: u64,
    reply: Bytes,
}

/// Per-session protocol state that policy, identity and audit build on.
pub struct SessionSeams {
    /// The live policy: loaded once per Query/Parse, so a reload applies
    /// from the session's next statement.
    policy: PolicySource,
    pub scope: SessionScope,
    prepared: PreparedRegistry,
    /// The statement classified last (see [`FactsMemo`]).
    facts_memo: FactsMemo,
    /// Transaction status from the last ReadyForQuery: `I`, `T` or `E`.
    pub transaction_status: u8,
    /// The server's current ParameterStatus values.
    pub server_params: HashMap<String, String>,
    /// Statements received (Query and Parse messages).
    pub statements: u64,
    pub blocked: u64,
    /// ErrorResponses relayed.
    pub errors: u64,
    /// Messages sent upstream that each produce one ReadyForQuery.
    sync_points_sent: u64,
    ready_received: u64,
    pending_blocks: VecDeque<PendingBlock>,
    /// When the session last became idle: no reply outstanding, no transaction.
    idle_since: Option<Instant>,
    session_id: u64,
    block_counter: u64,
    /// When the first message of the current (not yet synced) group arrived.
    group_started: Option<Instant>,
    /// Start times of groups sent upstream, awaiting their ReadyForQuery.
    in_flight: VecDeque<Instant>,
    /// Soft delete: which replies to re-tag `UPDATE n` → `DELETE n`.
    retag: Retagger,
    /// The session's audit trail, when auditing is on.
    pub audit: Option<Box<SessionAudit>>,
    /// Lexing options and encoding hazard derived from `server_params`,
    /// kept current at each ParameterStatus rather than looked up per
    /// statement.
    lex: LexOptions,
    unsafe_encoding: Option<String>,
    /// The session's span: not entered while the relay runs (see
    /// `proxy::session_span`), so the seams' and the relay's log lines
    /// name it as their parent.
    pub span: tracing::Span,
}

impl SessionSeams {
    pub fn new(policy: PolicySource, scope: SessionScope, session_id: u64) -> Self {
        SessionSeams {
            policy,
            scope,
            prepared: PreparedRegistry::new(),
            facts_memo: FactsMemo::new(),
            transaction_status: b'I',
            server_params: HashMap::new(),
            statements: 0,
            blocked: 0,
            errors: 0,
            sync_points_sent: 0,
            ready_received: 0,
            pending_blocks: VecDeque::new(),
            idle_since: None,
            session_id,
            block_counter: 0,
            group_started: None,
            in_flight: VecDeque::new(),
            retag: Retagger::default(),
            audit: None,
            lex: LexOptions::default(),
            unsafe_encoding: None,
            span: tracing::Span::current(),
        }
    }

    /// The audit side, told the session's current lexing options.
    fn audit_mut(&mut self) -> Option<&mut SessionAudit> {
        let lex = self.lex_options();
        let a = self.audit.as_deref_mut()?;
        a.lex = lex;
        a.set_application_name(&self.scope.application_name);
        Some(a)
    }

    /// Set while Bind/Execute frames must reach [`Self::on_frontend`] too
    /// (the policy has soft-delete tables); the relay reads it per frame.
    pub fn tracking_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.retag.flag()
    }

    /// The relay phase starts counting ReadyForQuery afresh.
    pub fn startup_complete(&mut self) {
        self.ready_received = 0;
        self.sync_points_sent = 0;
        self.group_started = None;
        self.in_flight.clear();
        self.idle_since = Some(Instant::now());
        let wanted = self.policy.load().has_soft_delete();
        self.retag.activate(wanted, 1, true);
    }

    /// Since when the session has been idle: outside a transaction with no
    /// reply outstanding. `None` while the server is busy or a transaction is
    /// open — the idle timeout never ends those.
    pub fn idle_since(&self) -> Option<Instant> {
        let quiet = self.transaction_status == b'I' && self.ready_received >= self.sync_points_sent;
        self.idle_since.filter(|_| quiet)
    }

    fn lex_options(&self) -> LexOptions {
        self.lex
    }

    /// Re-derive what statements are lexed with after a ParameterStatus.
    fn parameters_changed(&mut self) {
        self.lex = LexOptions {
            standard_conforming_strings: self
                .server_params
                .get("standard_conforming_strings")
                .is_none_or(|v| v.eq_ignore_ascii_case("on")),
        };
        self.unsafe_encoding = self
            .server_params
            .get("client_encoding")
            .filter(|enc| UNSAFE_ENCODINGS.iter().any(|u| u.eq_ignore_ascii_case(enc)))
            .cloned();
    }

    fn unsafe_encoding(&self, text: &str) -> Option<String> {
        let enc = self.unsafe_encoding.as_ref()?;
        (!text.is_ascii()).then(|| {
            format!("client_encoding {enc} can hide quote bytes inside multibyte characters")
        })
    }

    /// Evaluate a Query/Parse text; also the policy's tokens of it when
    /// it lexed them (the audit redacts from those).
    /// Evaluate a Query or Parse text; `started` (the frame's arrival) is
    /// when the evaluation's time starts, which saves a clock read.
    fn evaluate_text(
        &mut self,
        policy: &Policy,
        decoded: Result<&str, &'static str>,
        raw: &[u8],
        started: Instant,
    ) -> (Evaluation, Option<Lexed>) {
        let (eval, lexed) = match decoded {
            Ok(sql) => match self.unsafe_encoding(sql) {
                Some(reason) => (policy.evaluate_unreadable(sql, &reason, &self.scope), None),
                None => {
                    // Only the audit reads the policy's lex.
                    self.facts_memo.set_lex_wanted(self.audit.is_some());
                    policy.evaluate_lexed(
                        sql,
                        &self.scope,
                        self.lex_options(),
                        &self.prepared,
                        &mut self.facts_memo,
                    )
                }
            },
            Err(reason) => {
                let lossy = String::from_utf8_lossy(raw);
                (
                    policy.evaluate_unreadable(&lossy, reason, &self.scope),
                    None,
                )
            }
        };
        record_evaluation(&eval, started);
        (eval, lexed)
    }

    /// Hand a statement's lex back to the memo for the next one.
    fn recycle(&mut self, lexed: Option<Lexed>) {
        if let Some(l) = lexed {
            self.facts_memo.recycle(l);
        }
    }

    fn policy_tokens<'a>(&self, sql: &'a str, lexed: &'a Lexed) -> PolicyTokens<'a> {
        PolicyTokens {
            sql,
            lexed,
            options: self.lex_options(),
        }
    }

    /// Called with every Query, Parse, Sync, Close and FunctionCall frame
    /// before it is forwarded.
    pub fn on_frontend(&mut self, tag: u8, body: &[u8]) -> FrontendAction {
        // One clock read per statement, and one where a group starts: the
        // frames that close a group (Sync) or sit inside it need none.
        let statement = matches!(
            tag,
            frontend::QUERY | frontend::PARSE | frontend::FUNCTION_CALL
        );
        let now = match self.group_started {
            Some(started) if !statement => started,
            _ => Instant::now(),
        };
        let started = *self.group_started.get_or_insert(now);
        if matches!(
            tag,
            frontend::QUERY | frontend::FUNCTION_CALL | frontend::SYNC
        ) {
            // This message ends a group: one ReadyForQuery will answer it.
            self.group_started = None;
            self.in_flight.push_back(started);
        }
        // Loaded once per statement: each load is a few atomic operations.
        let policy = statement.then(|| self.policy.load());
        if policy.as_ref().is_some_and(|p| p.is_off()) {
            self.retag.activate(false, 0, false);
            if let Some(a) = self.audit_mut() {
                a.on_unevaluated(tag, body);
            }
            if tag == frontend::PARSE {
                self.statements += 1;
            } else {
                self.statements += u64::from(tag == frontend::QUERY);
                self.sync_points_sent += 1;
            }
            return FrontendAction::Forward;
        }
        match (tag, policy) {
            (frontend::QUERY, Some(policy)) => {
                self.statements += 1;
                let group = self.sync_points_sent + 1;
                self.retag.activate(policy.has_soft_delete(), group, false);
                let text = frame::query_text(body);
                let (mut eval, lexed) = self.evaluate_text(&policy, text, body, now);
                let tokens = match (text, &lexed) {
                    (Ok(sql), Some(l)) => Some(self.policy_tokens(sql, l)),
                    _ => None,
                };
                if let Some(a) = self.audit_mut() {
                    eval = a.on_query(eval, tokens.as_ref());
                }
                self.recycle(lexed);
                let action = self.apply_verdict(&eval, query_frame, query_frame);
                if !matches!(eval.verdict, Verdict::Block(_)) {
                    policy.observe_prepared(&eval, &mut self.prepared, &self.scope);
                    self.retag.on_query(group, &eval.statements);
                }
                self.sync_points_sent += 1;
                action
            }
            (frontend::PARSE, Some(policy)) => {
                self.statements += 1;
                self.retag
                    .activate(policy.has_soft_delete(), self.sync_points_sent + 1, false);
                let parsed = frame::parse_text(body);
                let (name, (eval, lexed)) = match parsed {
                    Ok((name, sql)) => (
                        name.to_string(),
                        self.evaluate_text(&policy, Ok(sql), body, now),
                    ),
                    Err(reason) => (
                        String::new(),
                        self.evaluate_text(&policy, Err(reason), body, now),
                    ),
                };
                let tokens = match (parsed, &lexed) {
                    (Ok((_, sql)), Some(l)) => Some(self.policy_tokens(sql, l)),
                    _ => None,
                };
                if let Some(a) = self.audit_mut() {
                    a.on_parse(&name, &eval, tokens.as_ref());
                }
                self.recycle(lexed);
                let action = self.apply_verdict(
                    &eval,
                    |token| parse_frame(&name, token),
                    |sql| rewrite_parse(body, sql),
                );
                let forwarded = !matches!(eval.verdict, Verdict::Block(_));
                let single = match eval.statements.as_slice() {
                    [facts] if forwarded => Some(facts),
                    _ => None,
                };
                // SQL PREPARE, DEALLOCATE and DISCARD ALL can be parsed too.
                policy.observe_prepared(&eval, &mut self.prepared, &self.scope);
                if let (Some(facts), false) = (single, name.is_empty()) {
                    self.prepared.record_prepare(&name, facts.clone());
                }
                self.retag.on_parse(&name, single);
                action
            }
            (frontend::FUNCTION_CALL, Some(policy)) => {
                let oid = body
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                let mut eval = policy.evaluate_function_call(oid, &self.scope);
                record_evaluation(&eval, now);
                if let Some(a) = self.audit_mut() {
                    eval = a.on_function_call(eval);
                }
                let action = self.apply_verdict(&eval, query_frame, query_frame);
                self.sync_points_sent += 1;
                action
            }
            (frontend::BIND, _) => {
                if let Some(a) = self.audit.as_deref_mut() {
                    a.on_bind(body);
                }
                if self.retag.is_active() {
                    self.retag.on_bind(body);
                }
                FrontendAction::Forward
            }
            (frontend::EXECUTE, _) => {
                let refused = self.audit.as_deref_mut().and_then(|a| a.on_execute(body));
                if let Some(block) = refused {
                    // Refused in-band like a blocked Parse: a failing named
                    // Parse creates nothing and fails the group here.
                    let eval = Evaluation {
                        statements: Default::default(),
                        verdict: Verdict::Block(block),
                    };
                    return self.apply_verdict(&eval, |t| parse_frame(t, t), query_frame);
                }
                if self.retag.is_active() {
                    self.retag.on_execute(self.sync_points_sent + 1, body);
                }
                FrontendAction::Forward
            }
            (frontend::SYNC, _) => {
                self.sync_points_sent += 1;
                if let Some(a) = self.audit.as_deref_mut() {
                    a.on_sync();
                }
                FrontendAction::Forward
            }
            (frontend::CLOSE, _) => {
                if let [kind, rest @ ..] = body {
                    if let Some((name, _)) = frame::read_cstr(rest) {
                        let name = String::from_utf8_lossy(name);
                        if *kind == b'S' {
                            let policy = self.policy.load();
                            policy.observe_close(&name, &mut self.prepared, &self.scope);
                        }
                        if let Some(a) = self.audit.as_deref_mut() {
                            a.on_close(*kind, &name);
                        }
                        self.retag.on_close(*kind, &name);
                    }
                }
                FrontendAction::Forward
            }
            _ => FrontendAction::Forward,
        }
    }

    fn apply_verdict(
        &mut self,
        eval: &Evaluation,
        substitute: impl FnOnce(&str) -> Bytes,
        rewritten: impl FnOnce(&str) -> Bytes,
    ) -> FrontendAction {
        match &eval.verdict {
            Verdict::Allow => FrontendAction::Forward,
            Verdict::Rewrite { rule_id, sql, .. } => {
                tracing::debug!(parent: &self.span, rule = %rule_id, statement = %preview(eval), "statement rewritten");
                FrontendAction::Replace(rewritten(sql))
            }
            Verdict::Monitored { rule_id, reason } => {
                tracing::warn!(parent: &self.span, rule = %rule_id, %reason, statement = %preview(eval), "statement monitored (would be blocked)");
                FrontendAction::Forward
            }
            Verdict::Block(block) => {
                self.blocked += 1;
                self.block_counter += 1;
                tracing::warn!(parent: &self.span, rule = %block.rule_id, statement = %preview(eval), "statement blocked");
                let token = format!("pgward_blocked_{}_{}", self.session_id, self.block_counter);
                let reply = PgError::error("42501", block.message.clone())
                    .with_detail(block.detail.clone())
                    .with_hint(block.hint.clone())
                    .to_bytes()
                    .freeze();
                self.pending_blocks.push_back(PendingBlock {
                    settled_by: self.sync_points_sent + 1,
                    reply,
                    token: token.clone(),
                });
                FrontendAction::Replace(substitute(&token))
            }
        }
    }

    /// Called with every frame [`Self::wants_backend`] names before it is
    /// forwarded; the audit trail sees what the client will see.
    pub fn on_backend(&mut self, tag: u8, body: &[u8]) -> BackendAction {
        let action = self.relay_backend(tag, body);
        if let Some(a) = self.audit.as_deref_mut() {
            let seen = match &action {
                BackendAction::Replace(frame) => &frame[frame::Header::SIZE..],
                BackendAction::Forward => body,
            };
            crate::audit::session::observe_backend(a, tag, seen);
        }
        action
    }

    fn relay_backend(&mut self, tag: u8, body: &[u8]) -> BackendAction {
        let retagged = self.retag.on_backend(self.ready_received + 1, tag, body);
        match tag {
            backend::READY_FOR_QUERY => {
                if let Some(status) = frame::ready_status(body) {
                    self.transaction_status = status;
                }
                self.ready_received += 1;
                let now = Instant::now();
                self.idle_since = Some(now);
                if let Some(started) = self.in_flight.pop_front() {
                    loop_metrics::query_duration(
                        now.saturating_duration_since(started).as_secs_f64(),
                    );
                }
                if !self.pending_blocks.is_empty() {
                    let settled = self.ready_received;
                    // A substitute skipped by the server (an earlier error in
                    // the same pipeline) never errors; forget it at its
                    // ReadyForQuery.
                    self.pending_blocks.retain(|p| p.settled_by > settled);
                }
            }
            backend::PARAMETER_STATUS => {
                if let Some((name, value)) = frame::parameter_status(body) {
                    if name == b"application_name" {
                        // Rules scoped by application follow SET application_name.
                        self.scope.application_name = String::from_utf8_lossy(value).into_owned();
                        self.facts_memo.scope_changed();
                    }
                    self.server_params.insert(
                        String::from_utf8_lossy(name).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    );
                    self.parameters_changed();
                }
            }
            backend::COMMAND_COMPLETE => {
                if let Some(frame) = retagged {
                    return BackendAction::Replace(frame);
                }
            }
            backend::ERROR_RESPONSE => {
                self.errors += 1;
                if !self.pending_blocks.is_empty() {
                    let message = frame::error_field(body, b'M').unwrap_or_default();
                    if let Some(i) = self
                        .pending_blocks
                        .iter()
                        .position(|p| contains(message, p.token.as_bytes()))
                    {
                        if let Some(p) = self.pending_blocks.remove(i) {
                            return BackendAction::Replace(p.reply);
                        }
                    }
                }
            }
            _ => {}
        }
        BackendAction::Forward
    }

    /// Whether the backend frame type is one the seams want to see whole.
    pub fn wants_backend(tag: u8) -> bool {
        matches!(
            tag,
            backend::COMMAND_COMPLETE
                | backend::ERROR_RESPONSE
                | backend::READY_FOR_QUERY
                | backend::PARAMETER_STATUS
                | backend::PORTAL_SUSPENDED
                | backend::EMPTY_QUERY
        )
    }

    /// Whether the frontend frame type is one the seams want to see whole.
    pub fn wants_frontend(tag: u8) -> bool {
        matches!(
            tag,
            frontend::QUERY
                | frontend::PARSE
                | frontend::SYNC
                | frontend::CLOSE
                | frontend::FUNCTION_CALL
        )
    }

    /// Frontend frames wanted only while [`Self::tracking_flag`] is set.
    pub fn wants_tracked_frontend(tag: u8) -> bool {
        matches!(tag, frontend::BIND | frontend::EXECUTE)
    }
}

/// Count one evaluation: verdict, class, rule hit, parse failures, time.
fn record_evaluation(eval: &Evaluation, started: Instant) {
    loop_metrics::policy_evaluation(started.elapsed().as_secs_f64());
    let class = eval.statements.first().map_or("NONE", |s| s.class.as_str());
    let (verdict, rule_hit) = match &eval.verdict {
        Verdict::Allow => (0, None),
        Verdict::Monitored { rule_id, .. } => (1, Some((rule_id.as_str(), "monitor"))),
        Verdict::Block(b) => (2, Some((b.rule_id.as_str(), "block"))),
        Verdict::Rewrite { rule_id, .. } => (3, Some((rule_id.as_str(), "rewrite"))),
    };
    if let Some((rule, kind)) = rule_hit {
        metrics().rule_hits.with_label_values(&[rule, kind]).inc();
    }
    loop_metrics::statement(verdict, class);
    let unparsed = eval
        .statements
        .iter()
        .filter(|s| s.unparsed.is_some())
        .count();
    if unparsed > 0 {
        metrics().parse_failures.inc_by(unparsed as u64);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn preview(eval: &Evaluation) -> String {
    let text: String = eval
        .statements
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}

fn query_frame(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 6);
    out.put_u8(frontend::QUERY);
    out.put_i32((text.len() + 5) as i32);
    out.put_slice(text.as_bytes());
    out.put_u8(0);
    out.freeze()
}

fn parse_frame(name: &str, text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(name.len() + text.len() + 9);
    out.put_u8(frontend::PARSE);
    out.put_i32((4 + name.len() + 1 + text.len() + 1 + 2) as i32);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(text.as_bytes());
    out.put_u8(0);
    out.put_i16(0);
    out.freeze()
}

/// The Parse message `body` with its query text replaced by `text`: the
/// statement name and parameter types are the client's bytes.
fn rewrite_parse(body: &[u8], text: &str) -> Bytes {
    let (name, rest) = frame::read_cstr(body).unwrap_or((b"", b""));
    let types = frame::read_cstr(rest).map_or(&[0u8, 0][..], |(_, t)| t);
    let len = 4 + name.len() + 1 + text.len() + 1 + types.len();
    let mut out = BytesMut::with_capacity(len + 1);
    out.put_u8(frontend::PARSE);
    out.put_i32(len as i32);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(text.as_bytes());
    out.put_u8(0);
    out.put_slice(types);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;

    fn seams() -> SessionSeams {
        let policy = Policy::from_config(&PolicyConfig::default()).unwrap();
        let source = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(policy));
        SessionSeams::new(source, SessionScope::default(), 1)
    }

    #[test]
    fn policy_mode_off_forwards_without_evaluating() {
        let cfg = PolicyConfig::from_toml_str("mode = \"off\"").unwrap();
        let policy = Policy::from_config(&cfg).unwrap();
        let source = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(policy));
        let mut s = SessionSeams::new(source, SessionScope::default(), 1);
        assert!(matches!(
            s.on_frontend(b'Q', b"TRUNCATE users\0"),
            FrontendAction::Forward
        ));
        assert_eq!((s.statements, s.blocked), (1, 0));
    }

    fn error_with(message: &str) -> Vec<u8> {
        PgError::error("42601", message).to_bytes()[5..].to_vec()
    }

    #[test]
    fn blocked_query_is_substituted_and_its_error_replaced() {
        let mut s = seams();
        let FrontendAction::Replace(sub) = s.on_frontend(b'Q', b"TRUNCATE users\0") else {
            panic!("not blocked")
        };
        let token = frame::query_text(&sub[5..]).unwrap().to_string();
        assert!(token.starts_with("pgward_blocked_"));
        let err = error_with(&format!("syntax error at or near \"{token}\""));
        let BackendAction::Replace(reply) = s.on_backend(b'E', &err) else {
            panic!("not replaced")
        };
        assert_eq!(frame::error_field(&reply[5..], b'C'), Some(&b"42501"[..]));
        // A later unrelated error is forwarded untouched.
        assert!(matches!(
            s.on_backend(b'E', &error_with("other")),
            BackendAction::Forward
        ));
    }

    #[test]
    fn skipped_substitutes_are_forgotten_at_ready_for_query() {
        let mut s = seams();
        assert!(matches!(
            s.on_frontend(b'P', b"\0DELETE FROM t\0\0\0"),
            FrontendAction::Replace(_)
        ));
        assert!(matches!(s.on_frontend(b'S', b""), FrontendAction::Forward));
        assert_eq!(s.pending_blocks.len(), 1);
        s.on_backend(b'Z', b"I");
        assert!(s.pending_blocks.is_empty());
    }

    #[test]
    fn allowed_statements_pass_and_parse_names_are_recorded() {
        let mut s = seams();
        assert!(matches!(
            s.on_frontend(b'P', b"s1\0SELECT $1\0\0\0"),
            FrontendAction::Forward
        ));
        assert!(s.prepared.lookup("s1").is_some());
        s.on_frontend(b'C', b"Ss1\0");
        assert!(s.prepared.lookup("s1").is_none());
    }

    /// Parse of `sql` (unnamed statement): was it blocked?
    fn parse_blocked(s: &mut SessionSeams, sql: &str) -> bool {
        let body = format!("\0{sql}\0\0\0");
        let blocked = matches!(
            s.on_frontend(b'P', body.as_bytes()),
            FrontendAction::Replace(_)
        );
        s.on_frontend(b'S', b"");
        s.on_backend(b'Z', b"I");
        blocked
    }

    /// A repeated Parse is answered from the session memo, verdict
    /// included; the verdict still follows `SET application_name` (rules
    /// scoped by application) and a policy reload.
    #[test]
    fn a_repeated_parse_is_judged_again_when_the_scope_or_the_policy_changes() {
        let scoped = PolicyConfig::from_toml_str(
            r#"
[[custom]]
id = "no_batch_reads"
kinds = ["SELECT"]
tables = ["accounts"]
action = "block"
applications = ["batch"]
"#,
        )
        .unwrap();
        let source = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
            Policy::from_config(&scoped).unwrap(),
        ));
        let mut s = SessionSeams::new(source.clone(), SessionScope::default(), 1);
        let sql = "SELECT balance FROM accounts WHERE id = $1";
        assert!(!parse_blocked(&mut s, sql));
        assert!(!parse_blocked(&mut s, sql), "a memo hit");
        s.on_backend(b'S', b"application_name\0batch\0");
        assert!(parse_blocked(&mut s, sql), "scoped to application batch");
        assert!(parse_blocked(&mut s, sql), "a memo hit, still blocked");
        source.store(std::sync::Arc::new(
            Policy::from_config(&PolicyConfig::default()).unwrap(),
        ));
        assert!(
            !parse_blocked(&mut s, sql),
            "the reloaded policy has no such rule"
        );
        source.store(std::sync::Arc::new(Policy::from_config(&scoped).unwrap()));
        assert!(parse_blocked(&mut s, sql), "reloaded again");
        s.on_backend(b'S', b"application_name\0web\0");
        assert!(!parse_blocked(&mut s, sql));
        // Instances of one shape with new literals (the rules' verdict on
        // the shape is kept) follow the scope too.
        let query_blocked = |s: &mut SessionSeams, id: u32| {
            let body = format!("SELECT balance FROM accounts WHERE id = {id}\0");
            let blocked = matches!(
                s.on_frontend(b'Q', body.as_bytes()),
                FrontendAction::Replace(_)
            );
            s.on_backend(b'Z', b"I");
            blocked
        };
        assert!(!query_blocked(&mut s, 1));
        assert!(!query_blocked(&mut s, 2));
        assert!(!query_blocked(&mut s, 3));
        s.on_backend(b'S', b"application_name\0batch\0");
        assert!(query_blocked(&mut s, 4));
        assert!(query_blocked(&mut s, 5));
        s.on_backend(b'S', b"application_name\0web\0");
        assert!(!query_blocked(&mut s, 6));
    }

    /// EXECUTE is judged against the session's prepared statements, which
    /// change without the text changing: its verdict is never reused.
    #[test]
    fn a_repeated_execute_follows_what_the_name_was_prepared_as() {
        let mut s = seams();
        assert!(!parse_blocked(&mut s, "EXECUTE p"), "unknown name: allowed");
        assert!(!parse_blocked(&mut s, "PREPARE p AS DELETE FROM t"));
        // PREPARE of a blocked body is refused only at EXECUTE time.
        assert!(parse_blocked(&mut s, "EXECUTE p"));
        assert!(parse_blocked(&mut s, "EXECUTE p"), "never a memo hit");
        // A Close may be skipped by the server (an error earlier in its
        // pipeline), so it does not make the name unknown.
        s.on_frontend(b'C', b"Sp\0");
        assert!(parse_blocked(&mut s, "EXECUTE p"));
    }

    #[test]
    fn unreadable_query_text_fails_closed() {
        let mut s = seams();
        assert!(matches!(
            s.on_frontend(b'Q', b"select 1\0; truncate t\0"),
            FrontendAction::Replace(_)
        ));
        assert!(matches!(
            s.on_frontend(b'Q', b"select '\xff'\0"),
            FrontendAction::Replace(_)
        ));
    }
}
