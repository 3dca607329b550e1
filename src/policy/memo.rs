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

use std::sync::Arc;

use super::facts::StatementFacts;
use super::lexer::Lexed;
use super::template;

/// Texts and template keys longer than this are not remembered: a session
/// that ran one large statement keeps no copy of it while idle.
pub const MAX_MEMO_BYTES: usize = 2048;

type Facts = Arc<Vec<StatementFacts>>;

/// Per-session; see the module docs. `Default` is empty.
#[derive(Debug, Default)]
pub struct FactsMemo {
    /// The last text answered from the exact-text cache or classified into it.
    exact: Option<(bool, Box<str>, Facts)>,
    /// The last template key and the facts of its latest instance.
    template: Option<(bool, String, Facts)>,
}

impl FactsMemo {
    pub fn new() -> Self {
        FactsMemo::default()
    }

    /// The facts of `sql` if it is the text remembered last.
    pub fn exact(&self, sql: &str, scs: bool) -> Option<Facts> {
        match &self.exact {
            Some((s, text, facts)) if *s == scs && **text == *sql => Some(facts.clone()),
            _ => None,
        }
    }

    pub fn remember_exact(&mut self, sql: &str, scs: bool, facts: &Facts) {
        if sql.len() > MAX_MEMO_BYTES {
            return;
        }
        match &mut self.exact {
            Some((s, text, f)) if *s == scs && **text == *sql => *f = facts.clone(),
            slot => *slot = Some((scs, sql.into(), facts.clone())),
        }
    }

    /// The facts of this instance (`sql`, lexed as `lexed`) of template
    /// `key`, if `key` is the template remembered last.
    pub fn instance(&mut self, key: &str, scs: bool, sql: &str, lexed: &Lexed) -> Option<Facts> {
        let (s, k, facts) = self.template.as_mut()?;
        if *s != scs || k != key {
            return None;
        }
        match Arc::get_mut(facts) {
            // No evaluation holds the previous instance any more: relabel it.
            Some(owned) => template::relabel(owned, sql, lexed),
            None => *facts = Arc::new(template::instantiate(facts, sql, lexed)),
        }
        Some(facts.clone())
    }

    pub fn remember_template(&mut self, key: String, scs: bool, facts: &Facts) {
        if key.len() > MAX_MEMO_BYTES {
            return;
        }
        self.template = Some((scs, key, facts.clone()));
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
        m.remember_template(key.clone(), true, &facts_of(first));
        assert!(m.instance(&key, false, first, &l1).is_none());
        assert!(m.instance("other", true, first, &l1).is_none());

        for (i, aid) in ["22", "333", "4"].iter().enumerate() {
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            let l = lex(&sql, opts).unwrap();
            let held = m.instance(&key, true, &sql, &l).unwrap();
            let fresh = classify(&sql);
            assert_eq!(*held, fresh, "instance {i}");
            // Keep every second one alive, so the next is copied, not relabelled.
            if i % 2 == 0 {
                let next = "SELECT abalance FROM pgbench_accounts WHERE aid = 5";
                let ln = lex(next, opts).unwrap();
                let other = m.instance(&key, true, next, &ln).unwrap();
                assert_eq!(held[0].text, sql.trim_end_matches(';'));
                assert_eq!(other[0].text, next);
            }
        }
    }
}
