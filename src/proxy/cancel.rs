//! Which cancel keys belong to sessions pgward relays.
//!
//! pgward passes the server's BackendKeyData through unchanged, so a client's
//! CancelRequest names a real backend. It is forwarded only when the key was
//! issued to one of our sessions; anything else is dropped silently, as
//! Postgres does with a bad key (no oracle for guessing keys).

use std::collections::HashSet;
use std::sync::Mutex;

use bytes::Bytes;

#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashSet<(u32, Bytes)>>,
}

impl CancelRegistry {
    pub fn insert(&self, process_id: u32, secret: Bytes) {
        self.lock().insert((process_id, secret));
    }

    pub fn remove(&self, process_id: u32, secret: &Bytes) {
        self.lock().remove(&(process_id, secret.clone()));
    }

    pub fn contains(&self, process_id: u32, secret: &Bytes) -> bool {
        self.lock().contains(&(process_id, secret.clone()))
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(u32, Bytes)>> {
        // A poisoned set is still a valid set: no invariant spans the lock.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_issued_keys_are_known() {
        let r = CancelRegistry::default();
        r.insert(7, Bytes::from_static(b"abcd"));
        assert!(r.contains(7, &Bytes::from_static(b"abcd")));
        assert!(!r.contains(7, &Bytes::from_static(b"abce")));
        r.remove(7, &Bytes::from_static(b"abcd"));
        assert!(r.is_empty());
    }
}
