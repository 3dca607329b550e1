//! Redacted text and fingerprint by exact statement text.
//!
//! Statements that come back verbatim (every extended-protocol Parse of
//! pgbench or an ORM, repeated queries) are answered by the policy's
//! exact-text cache without lexing, so without this cache the audit would be
//! the only one lexing them, once per statement. Texts the policy did lex
//! are redacted from its tokens instead and never stored here (literal-laden
//! one-off texts would only churn it).
//!
//! Two generations as in the policy's facts cache: entries go into the young
//! map; when it is full the old map is dropped and the young one becomes
//! old; a hit in the old map promotes the entry. Memory is bounded by
//! `2 × CAPACITY` entries of at most [`MAX_TEXT_BYTES`] of text (plus the
//! redacted copy). The audit configuration (redaction, size limit) is fixed
//! for the pipeline that owns the cache, so only the text and the lexing
//! option are keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::redact::Redacted;

/// Entries per generation.
pub const CAPACITY: usize = 1024;
/// Longer texts are redacted every time (not cached).
pub const MAX_TEXT_BYTES: usize = 4096;

#[derive(Default)]
struct Generations {
    young: HashMap<String, Arc<Redacted>>,
    old: HashMap<String, Arc<Redacted>>,
}

/// One map pair per `standard_conforming_strings` value (it changes how a
/// text lexes), so a lookup needs no owned key.
#[derive(Default)]
pub struct RedactCache {
    inner: Mutex<[Generations; 2]>,
}

impl RedactCache {
    pub fn get(&self, sql: &str, scs: bool) -> Option<Arc<Redacted>> {
        if sql.len() > MAX_TEXT_BYTES {
            return None;
        }
        // A poisoned lock only means another thread panicked mid-insert;
        // the maps are still valid.
        let mut all = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let g = &mut all[usize::from(scs)];
        if let Some(r) = g.young.get(sql) {
            return Some(r.clone());
        }
        let (key, r) = g.old.remove_entry(sql)?;
        insert(g, key, r.clone());
        Some(r)
    }

    pub fn put(&self, sql: &str, scs: bool, redacted: Arc<Redacted>) {
        if sql.len() > MAX_TEXT_BYTES {
            return;
        }
        let mut all = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        insert(&mut all[usize::from(scs)], sql.to_string(), redacted);
    }

    /// Entries held (both generations, both lexing modes).
    pub fn len(&self) -> usize {
        let all = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().map(|g| g.young.len() + g.old.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn insert(g: &mut Generations, key: String, r: Arc<Redacted>) {
    if g.young.len() >= CAPACITY {
        g.old = std::mem::take(&mut g.young);
    }
    g.young.insert(key, r);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(s: &str) -> Arc<Redacted> {
        Arc::new(Redacted {
            sql: s.to_string(),
            fingerprint: "0".repeat(16),
        })
    }

    #[test]
    fn bounded_keyed_by_lexing_mode_and_promotes_old_hits() {
        let c = RedactCache::default();
        c.put("select 0", true, entry("a"));
        assert_eq!(c.get("select 0", true).unwrap().sql, "a");
        assert!(c.get("select 0", false).is_none());
        for i in 1..3 * CAPACITY {
            c.put(&format!("select {i}"), true, entry("b"));
            assert!(c.len() <= 2 * CAPACITY);
        }
        assert!(
            c.get("select 0", true).is_none(),
            "evicted after two generations"
        );
        // An old-generation hit is promoted and survives the next turnover.
        let old = format!("select {}", CAPACITY + 1);
        assert!(c.get(&old, true).is_some());
        for i in 0..CAPACITY - 1 {
            c.put(&format!("other {i}"), true, entry("c"));
        }
        assert!(c.get(&old, true).is_some());
        assert!(c.get(&format!("select {}", CAPACITY + 2), true).is_none());
    }

    #[test]
    fn long_texts_are_not_cached() {
        let c = RedactCache::default();
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        c.put(&long, true, entry("a"));
        assert!(c.get(&long, true).is_none());
        assert!(c.is_empty());
    }
}
