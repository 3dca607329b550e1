//! Re-tagging replies of soft-deleted statements: the server answers a
//! rewritten DELETE with `UPDATE n`; the client must see `DELETE n`.
//!
//! Replies come back in the order of the messages that caused them, so the
//! tracker keeps a queue of expected completions: one per statement of a
//! Query, one per Execute (which ends in CommandComplete, PortalSuspended,
//! EmptyQueryResponse or an error). Each entry carries its sync group (the
//! ReadyForQuery that settles it): an ErrorResponse makes the server skip
//! the rest of its group, ReadyForQuery settles it. Extended-protocol
//! Executes are tied to statements through Bind (portal → statement) and
//! Parse (statement → DELETE or not).
//!
//! Bind and Execute are only looked at while the session's policy has
//! soft-delete tables ([`Retagger::flag`]), so other sessions pay nothing.
//! When tracking starts in the middle of a sync group (a reload added the
//! first soft-delete table), earlier Executes of that group were not seen;
//! that group's Executes are then not re-tagged rather than mis-tagged.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::policy::soft_delete::{retag, retags};
use crate::policy::StatementFacts;
use crate::wire::frame::{self, backend};

#[derive(Debug, Default)]
pub struct Retagger {
    /// Shared with the relay: whether Bind/Execute frames are wanted.
    active: Arc<AtomicBool>,
    /// The group in which tracking started mid-way (see module docs).
    untrusted_group: Option<u64>,
    /// Prepared statements (by name) whose top-level statement is a DELETE.
    statements: HashMap<String, bool>,
    /// Portals (by name) bound to such statements.
    portals: HashMap<String, bool>,
    /// Expected completions: (sync group, re-tag?).
    expected: VecDeque<(u64, bool)>,
}

impl Retagger {
    /// The flag the relay reads to decide whether Bind/Execute are wanted.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.active.clone()
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Start tracking when the policy has soft-delete tables. `group` is the
    /// sync group of the message being handled; `fresh` says nothing was
    /// sent before it (session start).
    pub fn activate(&mut self, wanted: bool, group: u64, fresh: bool) {
        if !wanted {
            if self.is_active() {
                self.active.store(false, Ordering::Relaxed);
                self.statements.clear();
                self.portals.clear();
                self.expected.clear();
            }
            return;
        }
        if !self.is_active() {
            self.active.store(true, Ordering::Relaxed);
            self.untrusted_group = (!fresh).then_some(group);
        }
    }

    /// A Query was forwarded: one completion per statement.
    pub fn on_query(&mut self, group: u64, statements: &[StatementFacts]) {
        if self.is_active() {
            self.expected
                .extend(statements.iter().map(|f| (group, retags(f))));
        }
    }

    /// A Parse was forwarded (or replaced by a failing substitute).
    pub fn on_parse(&mut self, name: &str, facts: Option<&StatementFacts>) {
        if !self.is_active() {
            return;
        }
        if facts.is_some_and(retags) {
            self.statements.insert(name.to_string(), true);
        } else {
            self.statements.remove(name);
        }
    }

    pub fn on_bind(&mut self, body: &[u8]) {
        let Some((portal, rest)) = frame::read_cstr(body) else {
            return;
        };
        let Some((stmt, _)) = frame::read_cstr(rest) else {
            return;
        };
        let portal = String::from_utf8_lossy(portal);
        if self
            .statements
            .contains_key(String::from_utf8_lossy(stmt).as_ref())
        {
            self.portals.insert(portal.into_owned(), true);
        } else {
            self.portals.remove(portal.as_ref());
        }
    }

    pub fn on_execute(&mut self, group: u64, body: &[u8]) {
        let retag = frame::read_cstr(body).is_some_and(|(p, _)| {
            self.portals
                .contains_key(String::from_utf8_lossy(p).as_ref())
        }) && self.untrusted_group != Some(group);
        self.expected.push_back((group, retag));
    }

    /// Close of a statement (`S`) or portal (`P`).
    pub fn on_close(&mut self, kind: u8, name: &str) {
        match kind {
            b'S' => self.statements.remove(name),
            _ => self.portals.remove(name),
        };
    }

    /// Take the next expected completion of `group`, dropping stale ones.
    fn next(&mut self, group: u64) -> Option<bool> {
        while self.expected.front().is_some_and(|(g, _)| *g < group) {
            self.expected.pop_front();
        }
        match self.expected.front() {
            Some((g, retag)) if *g == group => {
                let retag = *retag;
                self.expected.pop_front();
                Some(retag)
            }
            _ => None,
        }
    }

    /// A backend frame of sync group `group`; returns a replacement frame
    /// for a CommandComplete to re-tag.
    pub fn on_backend(&mut self, group: u64, tag: u8, body: &[u8]) -> Option<Bytes> {
        if !self.is_active() {
            return None;
        }
        match tag {
            backend::COMMAND_COMPLETE => {
                if self.next(group) != Some(true) {
                    return None;
                }
                let (command, _) = frame::read_cstr(body)?;
                let new = retag(command)?;
                let mut out = BytesMut::with_capacity(new.len() + 6);
                out.put_u8(backend::COMMAND_COMPLETE);
                out.put_i32((new.len() + 5) as i32);
                out.put_slice(&new);
                out.put_u8(0);
                Some(out.freeze())
            }
            backend::PORTAL_SUSPENDED | backend::EMPTY_QUERY => {
                self.next(group);
                None
            }
            backend::ERROR_RESPONSE => {
                // The server skips the rest of the group.
                self.expected.retain(|(g, _)| *g != group);
                None
            }
            backend::READY_FOR_QUERY => {
                self.expected.retain(|(g, _)| *g > group);
                if self.untrusted_group.is_some_and(|g| g <= group) {
                    self.untrusted_group = None;
                }
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::classify;

    fn cc(tag: &str) -> Vec<u8> {
        let mut b = tag.as_bytes().to_vec();
        b.push(0);
        b
    }

    fn cstrs(parts: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        for p in parts {
            b.extend_from_slice(p.as_bytes());
            b.push(0);
        }
        b
    }

    fn tag_after(r: &mut Retagger, group: u64, tag: &str) -> String {
        match r.on_backend(group, backend::COMMAND_COMPLETE, &cc(tag)) {
            Some(frame) => String::from_utf8_lossy(&frame[5..frame.len() - 1]).into_owned(),
            None => tag.to_string(),
        }
    }

    #[test]
    fn query_statements_are_retagged_by_position() {
        let mut r = Retagger::default();
        r.activate(true, 1, true);
        let facts = classify("UPDATE t SET a = 1 WHERE b = 2; DELETE FROM users WHERE id = 1");
        r.on_query(1, &facts);
        assert_eq!(tag_after(&mut r, 1, "UPDATE 1"), "UPDATE 1");
        assert_eq!(tag_after(&mut r, 1, "UPDATE 3"), "DELETE 3");
        // Nothing is expected any more: later tags pass unchanged.
        assert_eq!(tag_after(&mut r, 1, "UPDATE 2"), "UPDATE 2");
    }

    #[test]
    fn an_error_skips_the_rest_of_its_group_only() {
        let mut r = Retagger::default();
        r.activate(true, 1, true);
        let del = classify("DELETE FROM users WHERE id = $1");
        r.on_parse("d", del.first());
        r.on_bind(&cstrs(&["", "d"]));
        r.on_execute(1, &cstrs(&[""]));
        r.on_execute(1, &cstrs(&[""]));
        r.on_bind(&cstrs(&["", "d"]));
        r.on_execute(2, &cstrs(&[""]));
        assert_eq!(r.on_backend(1, backend::ERROR_RESPONSE, b""), None);
        r.on_backend(1, backend::READY_FOR_QUERY, b"I");
        assert_eq!(tag_after(&mut r, 2, "UPDATE 1"), "DELETE 1");
    }

    #[test]
    fn portal_suspended_consumes_one_execute_and_closing_forgets() {
        let mut r = Retagger::default();
        r.activate(true, 1, true);
        r.on_parse(
            "d",
            classify("DELETE FROM users WHERE id > 0 RETURNING id").first(),
        );
        r.on_bind(&cstrs(&["p", "d"]));
        r.on_execute(1, &cstrs(&["p"]));
        r.on_execute(1, &cstrs(&["p"]));
        r.on_backend(1, backend::PORTAL_SUSPENDED, b"");
        assert_eq!(tag_after(&mut r, 1, "UPDATE 2"), "DELETE 2");
        r.on_close(b'P', "p");
        r.on_execute(1, &cstrs(&["p"]));
        assert_eq!(tag_after(&mut r, 1, "UPDATE 1"), "UPDATE 1");
    }

    #[test]
    fn tracking_started_mid_group_does_not_guess() {
        let mut r = Retagger::default();
        r.activate(true, 4, false);
        r.on_parse("", classify("DELETE FROM users WHERE id = 1").first());
        r.on_bind(&cstrs(&["", ""]));
        r.on_execute(4, &cstrs(&[""]));
        assert_eq!(tag_after(&mut r, 4, "UPDATE 1"), "UPDATE 1");
        r.on_backend(4, backend::READY_FOR_QUERY, b"I");
        r.on_execute(5, &cstrs(&[""]));
        assert_eq!(tag_after(&mut r, 5, "UPDATE 1"), "DELETE 1");
    }
}
