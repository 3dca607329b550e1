//! One session's memory of the statement it classified last.
//!
//! Sessions repeat themselves: a driver parses the same text before every
//! Execute, a simple-protocol loop sends one statement shape with new
//! literals. The shared [`super::cache::FactsCache`] answers those too, but
//! each lookup hashes the text and takes a lock every loop thread contends
//! on, and a template hit copies the template's facts to give them this
//! instance's text. The memo answers a repeat with one comparison, and
//! relabels a template instance it holds alone in place, without
//! allocating.
//!
//! It holds only what the shared caches would have answered (facts depend
//! on nothing but the text and the lexing options), so a hit can never
//! differ from a miss.
//!
//! For the exact text it also keeps the verdict, so a driver's repeated
//! Parse skips the rules too. A verdict depends on more than the text: on
//! the policy (kept by its [`Policy::id`](super::Policy::id)), on the
//! session scope (the session calls [`FactsMemo::scope_changed`] when it
//! changes) and, for EXECUTE and PREPARE, on the session's prepared
//! statements (those verdicts are never kept).

use std::sync::Arc;

use super::facts::StatementFacts;
use super::lexer::{LexOptions, Lexed};
use super::template::{self, Shape};
use super::Verdict;

/// Texts and template keys longer than this are not remembered: a session
/// that ran one large statement keeps no copy of it while idle.
pub const MAX_MEMO_BYTES: usize = 2048;

type Facts = Arc<Vec<StatementFacts>>;

/// Per-session; see the module docs. `Default` is empty and makes lexes
/// for its caller.
#[derive(Debug)]
pub struct FactsMemo {
    /// The last text answered from the exact-text cache or classified into it.
    exact: Option<Exact>,
    /// The last template key and the facts of its latest instance.
    template: Option<(bool, String, Facts)>,
    /// Where the literals of that template's first instance are, when the
    /// next instance can be recognised by its bytes (see
    /// [`FactsMemo::instance_by_shape`]).
    shape: Option<Shape>,
    /// The rules' verdict on the template's instances and the id of the
    /// policy that decided it (see [`FactsMemo::instance_decided`]).
    template_decided: Option<(u64, Verdict)>,
    /// Whether the last statement was answered as a template instance: a
    /// session looping over one shape with new literals sends texts the
    /// exact caches cannot know, so the policy lexes those first.
    last_was_instance: bool,
    /// Token buffers of a finished lex, lent to the next one (see
    /// [`FactsMemo::take_lexed`]).
    spare: Lexed,
    /// See [`FactsMemo::set_lex_wanted`].
    lex_wanted: bool,
}

/// A lex buffer holding more tokens than this is not kept for the next
/// statement: an idle session keeps no large buffer (24 bytes a token).
pub const MAX_SPARE_TOKENS: usize = 128;

#[derive(Debug)]
struct Exact {
    scs: bool,
    text: Box<str>,
    facts: Facts,
    /// The verdict on `text` and the id of the policy that decided it.
    decided: Option<(u64, Verdict)>,
}

impl Default for FactsMemo {
    fn default() -> Self {
        FactsMemo {
            exact: None,
            template: None,
            shape: None,
            template_decided: None,
            last_was_instance: false,
            spare: Lexed::default(),
            lex_wanted: true,
        }
    }
}

impl FactsMemo {
    pub fn new() -> Self {
        FactsMemo::default()
    }

    fn exact_entry(&self, sql: &str, scs: bool) -> Option<&Exact> {
        self.exact
            .as_ref()
            .filter(|e| e.scs == scs && *e.text == *sql)
    }

    /// The facts of `sql` if it is the text remembered last.
    pub fn exact(&mut self, sql: &str, scs: bool) -> Option<Facts> {
        let facts = self.exact_entry(sql, scs)?.facts.clone();
        self.last_was_instance = false;
        Some(facts)
    }

    /// The facts of `sql` and the verdict policy `policy` gave it, if it is
    /// the text remembered last and that verdict is still kept.
    pub fn decided(&mut self, sql: &str, scs: bool, policy: u64) -> Option<(Facts, Verdict)> {
        let e = self.exact_entry(sql, scs)?;
        let (_, verdict) = e.decided.as_ref().filter(|(by, _)| *by == policy)?;
        let hit = (e.facts.clone(), verdict.clone());
        self.last_was_instance = false;
        Some(hit)
    }

    pub fn remember_exact(&mut self, sql: &str, scs: bool, facts: &Facts) {
        self.last_was_instance = false;
        if sql.len() > MAX_MEMO_BYTES {
            return;
        }
        self.exact = Some(Exact {
            scs,
            text: sql.into(),
            facts: facts.clone(),
            decided: None,
        });
    }

    /// Keep `verdict` as policy `policy`'s on `sql`, if `sql` is the text
    /// remembered last. Only for verdicts that depend on nothing but the
    /// text, the policy and the session scope (see the module docs).
    pub fn remember_verdict(&mut self, sql: &str, scs: bool, policy: u64, verdict: &Verdict) {
        if let Some(e) = self
            .exact
            .as_mut()
            .filter(|e| e.scs == scs && *e.text == *sql)
        {
            e.decided = Some((policy, verdict.clone()));
        }
    }

    /// The session scope changed (`SET application_name`): verdicts
    /// decided under the old one no longer hold.
    pub fn scope_changed(&mut self) {
        if let Some(e) = &mut self.exact {
            e.decided = None;
        }
        self.template_decided = None;
    }

    /// The rules' verdict (before soft delete) policy `policy` gave the
    /// instances of the template remembered last, if the last statement was
    /// one of them. The rules read a plain read's text only for tokens
    /// other than literals, which every instance shares, so one instance's
    /// verdict is every instance's (`tests/policy_template.rs` checks this
    /// against fresh evaluations).
    pub fn instance_decided(&self, policy: u64) -> Option<Verdict> {
        if !self.last_was_instance {
            return None;
        }
        let (by, verdict) = self.template_decided.as_ref()?;
        (*by == policy).then(|| verdict.clone())
    }

    /// Keep the rules' verdict on the instance answered last.
    pub fn remember_instance_verdict(&mut self, policy: u64, verdict: &Verdict) {
        if self.last_was_instance {
            self.template_decided = Some((policy, verdict.clone()));
        }
    }

    /// Whether the last statement was answered as a template instance.
    pub fn expects_instance(&self) -> bool {
        self.last_was_instance
    }

    /// The facts of `sql` (lexed as `lexed`) if it is an instance of the
    /// template remembered last. Its key is compared, not built.
    pub fn instance(&mut self, scs: bool, sql: &str, lexed: &Lexed) -> Option<Facts> {
        let (s, k, facts) = self.template.as_mut()?;
        if *s != scs || !template::has_key(k, sql, lexed) {
            return None;
        }
        let [stmt] = lexed.statements.as_slice() else {
            return None;
        };
        relabel_held(facts, &sql[stmt.bytes.clone()]);
        self.last_was_instance = true;
        Some(facts.clone())
    }

    /// An empty lex buffer, with the capacity of one given back before.
    pub fn take_lexed(&mut self) -> Lexed {
        std::mem::take(&mut self.spare)
    }

    /// Give back a lex the session is done with; its buffers serve the next
    /// statement unless they grew beyond [`MAX_SPARE_TOKENS`].
    pub fn recycle(&mut self, mut lexed: Lexed) {
        if lexed.tokens.capacity() <= MAX_SPARE_TOKENS && lexed.statements.capacity() <= 8 {
            lexed.clear();
            self.spare = lexed;
        }
    }

    /// The facts and the lex (if wanted, see [`FactsMemo::set_lex_wanted`])
    /// of `sql` if its bytes show it is an instance
    /// of the template remembered last: the common case of a session
    /// looping over one shape, answered without lexing `sql` (see
    /// [`Shape::instance`] for why that is exact).
    pub fn instance_by_shape(
        &mut self,
        sql: &str,
        opts: LexOptions,
    ) -> Option<(Facts, Option<Lexed>)> {
        let shape = self.shape.as_ref()?;
        let (s, _, facts) = self.template.as_mut()?;
        if *s != opts.standard_conforming_strings {
            return None;
        }
        let mut lexed = self.lex_wanted.then(|| std::mem::take(&mut self.spare));
        let Some(span) = shape.instance(sql, opts, lexed.as_mut()) else {
            if let Some(l) = lexed {
                self.spare = l;
            }
            return None;
        };
        relabel_held(facts, &sql[span]);
        self.last_was_instance = true;
        Some((facts.clone(), lexed))
    }

    /// Whether the caller wants the lex of a text answered by its bytes
    /// (the audit redacts from it); without, none is made.
    pub fn set_lex_wanted(&mut self, wanted: bool) {
        self.lex_wanted = wanted;
    }

    /// Remember `sql` (lexed as `lexed`), an instance of the template `key`
    /// with facts `facts`.
    pub fn remember_template(
        &mut self,
        key: String,
        scs: bool,
        facts: &Facts,
        sql: &str,
        lexed: &Lexed,
    ) {
        self.last_was_instance = true;
        self.template_decided = None;
        if key.len() > MAX_MEMO_BYTES || sql.len() > MAX_MEMO_BYTES {
            self.template = None;
            self.shape = None;
            return;
        }
        self.template = Some((scs, key, facts.clone()));
        self.shape = Shape::of(sql, lexed);
    }
}

/// Give the memo's facts of a template the text of its new instance: in
/// place when no evaluation holds the previous instance any more, else in
/// a copy.
fn relabel_held(facts: &mut Facts, statement: &str) {
    match Arc::get_mut(facts) {
        Some(owned) => template::relabel(owned, statement),
        None => {
            let mut copy = facts.to_vec();
            template::relabel(&mut copy, statement);
            *facts = Arc::new(copy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::classify;
    use crate::policy::lexer::{lex, LexOptions};

    fn facts_of(sql: &str) -> Facts {
        Arc::new(classify(sql))
    }

    #[test]
    fn exact_answers_only_the_same_text_and_lexing_mode() {
        let mut m = FactsMemo::new();
        assert!(m.exact("SELECT 1", true).is_none());
        let f = facts_of("SELECT 1");
        m.remember_exact("SELECT 1", true, &f);
        assert!(Arc::ptr_eq(&m.exact("SELECT 1", true).unwrap(), &f));
        assert!(m.exact("SELECT 1", false).is_none());
        assert!(m.exact("SELECT 1 ", true).is_none());
        assert!(m.exact("SELECT", true).is_none());
        let long = format!("SELECT {}", "1".repeat(MAX_MEMO_BYTES));
        m.remember_exact(&long, true, &facts_of(&long));
        assert!(m.exact(&long, true).is_none());
        assert!(
            m.exact("SELECT 1", true).is_some(),
            "a long text keeps the last one"
        );
    }

    #[test]
    fn an_instance_carries_its_own_text_whether_relabelled_or_copied() {
        let opts = LexOptions::default();
        let first = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
        let l1 = lex(first, opts).unwrap();
        let key = template::key(first, &l1).unwrap();
        let mut m = FactsMemo::new();
        m.remember_template(key.clone(), true, &facts_of(first), first, &l1);
        assert!(m.instance(false, first, &l1).is_none());
        let other = "SELECT bbalance FROM pgbench_branches WHERE bid = 1";
        assert!(m
            .instance(true, other, &lex(other, opts).unwrap())
            .is_none());

        for (i, aid) in ["22", "333", "4"].iter().enumerate() {
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            let l = lex(&sql, opts).unwrap();
            let held = m.instance(true, &sql, &l).unwrap();
            let fresh = classify(&sql);
            assert_eq!(*held, fresh, "instance {i}");
            // Keep every second one alive, so the next is copied, not relabelled.
            if i % 2 == 0 {
                let next = "SELECT abalance FROM pgbench_accounts WHERE aid = 5";
                let ln = lex(next, opts).unwrap();
                let other = m.instance(true, next, &ln).unwrap();
                assert_eq!(held[0].text, sql.trim_end_matches(';'));
                assert_eq!(other[0].text, next);
            }
        }
    }
}
