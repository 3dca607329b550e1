//! Literal-insensitive cache keys for plain reads.
//!
//! Simple-protocol clients (pgbench `-M simple`, many scripts, ORMs that
//! inline values) send the same statement with different literals every
//! time, so a cache keyed by exact text never hits and every statement pays
//! for a full parse. For a narrow class of statements the literals cannot
//! change the facts: a single plain `SELECT` that calls no function, writes
//! nothing, changes no setting and prepares nothing. Its facts are the kinds
//! that execute and the tables it reads — determined by identifiers and
//! keywords, never by the value of a number or a string.
//!
//! For those, the key is the token sequence with every literal replaced by a
//! marker of its token kind. Anything outside that class (DML, whose
//! tautology check folds literals; function calls, whose arguments may name
//! settings or objects; Unicode-escaped names, whose `UESCAPE` character is
//! itself a string literal) is never stored under a template key, so a
//! template hit can only return facts that are true for every literal.
//!
//! The text is still lexed in full first (same lexer, same ambiguity
//! checks), so token boundaries are exactly Postgres' own.

use super::facts::{StatementFacts, StatementKind};
use super::lexer::{self, Lexed, TokenKind};

/// The template key of `sql`, when it is a single statement with at least
/// one literal and without Unicode escapes. `None` means "use the
/// exact-text path": a text without literals is its template's only
/// instance (`$1` parameters are not literals), and the exact-text cache
/// answers it without lexing.
pub fn key(sql: &str, lexed: &Lexed) -> Option<String> {
    let mut out = String::with_capacity(sql.len() + 8);
    key_parts(sql, lexed, |part| {
        out.push_str(part);
        true
    })
    .then_some(out)
}

/// Whether `key(sql, lexed)` would be `Some(key)`, without building it: a
/// session looping over one shape asks this of every statement.
pub fn has_key(key: &str, sql: &str, lexed: &Lexed) -> bool {
    let mut rest = key;
    key_parts(sql, lexed, |part| match rest.strip_prefix(part) {
        Some(r) => {
            rest = r;
            true
        }
        None => false,
    }) && rest.is_empty()
}

/// Feed the parts of `sql`'s template key to `part` in order, stopping
/// when it returns false. True when every part was taken and the key
/// exists (one statement, a literal, no Unicode escapes).
fn key_parts(sql: &str, lexed: &Lexed, mut part: impl FnMut(&str) -> bool) -> bool {
    let [stmt] = lexed.statements.as_slice() else {
        return false;
    };
    let mut literals = false;
    for t in &lexed.tokens[stmt.tokens.clone()] {
        let marker = match t.kind {
            TokenKind::UnicodeIdent | TokenKind::UnicodeString => return false,
            TokenKind::Number => "\u{1}n\u{2}",
            TokenKind::String { escapes: false } => "\u{1}s\u{2}",
            TokenKind::String { escapes: true } => "\u{1}b\u{2}",
            TokenKind::EString => "\u{1}e\u{2}",
            TokenKind::DollarString => "\u{1}d\u{2}",
            TokenKind::BitString => "\u{1}x\u{2}",
            _ => {
                if !(part(lexer::text(sql, t)) && part("\u{2}")) {
                    return false;
                }
                continue;
            }
        };
        literals = true;
        if !part(marker) {
            return false;
        }
    }
    literals
}

/// Whether facts classified from one instance of a template hold for every
/// instance (see the module docs for why exactly these conditions).
pub fn literal_insensitive(facts: &[StatementFacts]) -> bool {
    let [f] = facts else { return false };
    f.kind == StatementKind::Select
        && f.executed_kinds == [StatementKind::Select]
        && f.unparsed.is_none()
        && f.fallback.is_none()
        && f.functions.is_empty()
        && f.tables_written.is_empty()
        && f.modifications.is_empty()
        && f.truncated.is_empty()
        && f.dropped.is_empty()
        && f.settings.is_empty()
        && !f.dynamic_sql
        && f.prepare.is_none()
        && f.execute.is_none()
        && f.deallocate.is_none()
}

/// The cached template facts, re-labelled with this instance's text.
pub fn instantiate(template: &[StatementFacts], sql: &str, lexed: &Lexed) -> Vec<StatementFacts> {
    let mut facts = template.to_vec();
    relabel(&mut facts, sql, lexed);
    facts
}

/// Give facts of the template this instance's text, reusing the text's
/// buffer.
pub fn relabel(facts: &mut [StatementFacts], sql: &str, lexed: &Lexed) {
    if let (Some(f), [stmt]) = (facts.first_mut(), lexed.statements.as_slice()) {
        f.text.clear();
        f.text.push_str(&sql[stmt.bytes.clone()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::classify;
    use crate::policy::lexer::{lex, LexOptions};

    fn key_of(sql: &str) -> Option<String> {
        key(sql, &lex(sql, LexOptions::default()).unwrap())
    }

    #[test]
    fn has_key_answers_exactly_what_comparing_built_keys_would() {
        let texts = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 22;",
            "select abalance from pgbench_accounts where aid = 3",
            "SELECT abalance FROM pgbench_accounts WHERE aid = '1'",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1 AND bid = 2",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1 AND",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SELECT abalance FROM pgbench_accounts WHERE aid",
            "SELECT abalance FROM pgbench_accountsWHERE aid = 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1 -- note",
            "SELECT a FROM t WHERE x = E'a'",
            "SELECT a FROM t WHERE x = $$a$$",
            "SELECT a FROM t WHERE x = B'1'",
            "SELECT U&\"a\" FROM t WHERE x = 1",
            "SELECT 1; SELECT 2",
            "SELECT 1",
            "SELECT",
            "",
        ];
        let lexed: Vec<_> = texts
            .iter()
            .map(|t| lex(t, LexOptions::default()).unwrap())
            .collect();
        let mut keys = 0;
        for (a, la) in texts.iter().zip(&lexed) {
            let Some(ka) = key(a, la) else { continue };
            keys += 1;
            for (b, lb) in texts.iter().zip(&lexed) {
                let same = key(b, lb).as_deref() == Some(ka.as_str());
                assert_eq!(has_key(&ka, b, lb), same, "{a:?} / {b:?}");
            }
        }
        assert!(keys >= 10, "{keys} texts with a key");
    }

    #[test]
    fn literals_share_a_key_and_structure_does_not() {
        let a = key_of("SELECT abalance FROM pgbench_accounts WHERE aid = 1;");
        let b = key_of("SELECT abalance FROM pgbench_accounts  WHERE aid = 987654 ");
        assert_eq!(a, b);
        assert_ne!(
            a,
            key_of("SELECT abalance FROM pgbench_branches WHERE aid = 1")
        );
        assert_ne!(
            a,
            key_of("SELECT abalance FROM pgbench_accounts WHERE aid = '1'")
        );
        assert_ne!(
            a,
            key_of("SELECT abalance FROM pgbench_accounts WHERE aid = $1")
        );
        // Comments and whitespace are not tokens.
        assert_eq!(
            a,
            key_of("SELECT /* x */ abalance FROM pgbench_accounts WHERE aid = 5 -- y")
        );
        assert_eq!(key_of("SELECT 1; SELECT 2"), None);
        // No literal: the exact-text cache serves it.
        assert_eq!(
            key_of("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            None
        );
        assert_eq!(key_of("SELECT U&\"d!0061t\" UESCAPE '!' FROM t"), None);
    }

    #[test]
    fn only_plain_reads_are_literal_insensitive() {
        for (sql, expected) in [
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 5", true),
            (
                "SELECT * FROM a JOIN b ON a.id = b.id WHERE a.x > 'q' LIMIT 3",
                true,
            ),
            ("SELECT * FROM t WHERE 1 = 1", true),
            ("SELECT set_config('app.tenant_id', '1', false)", false),
            ("SELECT count(*) FROM t", false),
            ("UPDATE t SET a = 1 WHERE 1 = 1", false),
            ("DELETE FROM t WHERE id = 1", false),
            (
                "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
                false,
            ),
            ("SELECT * INTO t2 FROM t", false),
            ("SET app.tenant_id = '2'", false),
            ("PREPARE p AS SELECT 1", false),
            ("SELECT 1; SELECT 2", false),
        ] {
            assert_eq!(literal_insensitive(&classify(sql)), expected, "{sql}");
        }
    }
}
