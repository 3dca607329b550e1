//! Bounded cache of classification results, keyed by Query text and the
//! lexer options (the only inputs of classification).
//!
//! Only *facts* are cached: rule matching depends on the session (user,
//! database, application, address) and on the session's prepared
//! statements, and it is cheap, so it is re-run on every call.
//!
//! Eviction is two-generation ("segmented clear"): entries go into the young
//! map; when it is full, the old map is dropped and the young one becomes
//! old. A hit in the old map promotes the entry. This keeps hot entries at
//! O(1) cost without per-hit bookkeeping. Each lexing mode
//! (`standard_conforming_strings` on/off) has its own generations, so a
//! lookup borrows the text instead of building an owned key. Memory is
//! bounded by `2 × capacity` entries per mode of at most
//! [`MAX_CACHED_SQL_BYTES`] of text each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::facts::StatementFacts;

/// Query strings longer than this are classified every time (not cached).
pub const MAX_CACHED_SQL_BYTES: usize = 16 * 1024;

type Key = Box<str>;
type Entry = Arc<Vec<StatementFacts>>;

#[derive(Default)]
struct Generations {
    young: HashMap<Key, Entry>,
    old: HashMap<Key, Entry>,
}

/// The facts cache. `Send + Sync`.
pub struct FactsCache {
    capacity: usize,
    /// Indexed by `standard_conforming_strings as usize`.
    inner: Mutex<[Generations; 2]>,
}

impl FactsCache {
    /// `capacity` 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        FactsCache {
            capacity,
            inner: Mutex::new(Default::default()),
        }
    }

    /// Whether caching is on (`cache_entries` > 0).
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn get(&self, sql: &str, scs: bool) -> Option<Entry> {
        if self.capacity == 0 || sql.len() > MAX_CACHED_SQL_BYTES {
            return None;
        }
        // A poisoned lock only means another thread panicked mid-insert;
        // the maps are still valid, so keep using them.
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let g = &mut guard[usize::from(scs)];
        if let Some(e) = g.young.get(sql) {
            return Some(e.clone());
        }
        // `remove_entry` hashes the text even when the map is empty, and the
        // old generation stays empty until the young one first fills up.
        if g.old.is_empty() {
            return None;
        }
        let (key, e) = g.old.remove_entry(sql)?;
        Self::insert_locked(g, self.capacity, key, e.clone());
        Some(e)
    }

    pub fn put(&self, sql: &str, scs: bool, facts: Entry) {
        if self.capacity == 0 || sql.len() > MAX_CACHED_SQL_BYTES {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Self::insert_locked(
            &mut guard[usize::from(scs)],
            self.capacity,
            sql.into(),
            facts,
        );
    }

    fn insert_locked(g: &mut Generations, cap: usize, key: Key, e: Entry) {
        if g.young.len() >= cap {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(key, e);
    }

    /// Number of cached entries (both generations).
    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.iter().map(|g| g.young.len() + g.old.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_promotes() {
        let c = FactsCache::new(2);
        for i in 0..10 {
            c.put(&format!("select {i}"), true, Arc::new(Vec::new()));
            assert!(c.len() <= 4);
        }
        assert!(c.get("select 9", true).is_some());
        assert!(c.get("select 0", true).is_none());
        assert!(c.get("select 9", false).is_none());
        // The other lexing mode has its own entries and bound.
        for i in 0..10 {
            c.put(&format!("select {i}"), false, Arc::new(Vec::new()));
            assert!(c.len() <= 8);
        }
        assert!(c.get("select 9", false).is_some());
        assert!(c.get("select 9", true).is_some());
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FactsCache>();
    }
}
