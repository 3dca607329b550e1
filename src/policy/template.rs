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

use std::ops::Range;

use super::facts::{StatementFacts, StatementKind};
use super::lexer::{self, LexOptions, Lexed, TokenKind};

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

/// One instance of a template and its lex, so that the next text can be
/// recognised as another instance by comparing bytes instead of lexing it
/// whole (see [`Shape::instance`]).
#[derive(Debug, Clone)]
pub struct Shape {
    text: Box<str>,
    lexed: Lexed,
    /// Indices of the literals in `lexed.tokens`.
    literals: Box<[usize]>,
}

/// Shapes of longer statements are not kept: a session holds at most this
/// many tokens (24 bytes each) for one.
pub const MAX_SHAPE_TOKENS: usize = 128;

fn is_literal(kind: TokenKind) -> bool {
    matches!(
        kind,
        TokenKind::Number
            | TokenKind::String { .. }
            | TokenKind::EString
            | TokenKind::DollarString
            | TokenKind::BitString
    )
}

impl Shape {
    /// The shape of `sql`, lexed as `lexed`, when it has a template key, at
    /// most [`MAX_SHAPE_TOKENS`] tokens, and every literal starts after a
    /// byte that ends any token before it (see [`is_hard_boundary`]);
    /// `None` otherwise (the session then lexes and compares keys).
    pub fn of(sql: &str, lexed: &Lexed) -> Option<Shape> {
        if lexed.statements.len() != 1 || lexed.tokens.len() > MAX_SHAPE_TOKENS {
            return None;
        }
        let mut literals = Vec::new();
        for (i, t) in lexed.tokens.iter().enumerate() {
            if matches!(t.kind, TokenKind::UnicodeIdent | TokenKind::UnicodeString) {
                return None;
            }
            if is_literal(t.kind) {
                let before = t.span.start.checked_sub(1).map(|i| sql.as_bytes()[i]);
                if !before.is_none_or(is_hard_boundary) {
                    return None;
                }
                literals.push(i);
            }
        }
        (!literals.is_empty()).then(|| Shape {
            text: sql.into(),
            lexed: lexed.clone(),
            literals: literals.into(),
        })
    }

    /// If `sql` lexed with `opts` has this shape's template key, the span
    /// of its one statement, and its lex written to `out` if given; found
    /// without lexing `sql` whole. `None` when it cannot tell (the caller
    /// then lexes), never a wrong answer:
    ///
    /// Between and around the literals `sql` must have the same bytes as the
    /// remembered text, and each literal must start where the remembered one
    /// did and re-scan ([`lexer::scan_token`], the lexer's own scanner) to
    /// the same kind. Up to a literal's first byte the lexer then reaches
    /// the same state in both texts; the token before it cannot reach into
    /// it (its last byte is a hard boundary); the literal ends wherever the
    /// scanner says; and from there identical bytes lex identically. So
    /// every token is the same but for the literals' values and the offsets
    /// after them, and those are what `out` gets.
    pub fn instance(
        &self,
        sql: &str,
        opts: LexOptions,
        out: Option<&mut Lexed>,
    ) -> Option<Range<usize>> {
        let mut walk = Walk {
            old: &self.text,
            new: sql,
            opts,
            at_old: 0,
            at_new: 0,
        };
        match out {
            // Only the literals' tokens are read.
            None => {
                for &i in self.literals.iter() {
                    walk.literal(&self.lexed.tokens[i])?;
                }
                walk.rest(&self.lexed.statements[0].bytes)
            }
            Some(out) => {
                out.clear();
                // Byte offsets in `sql` minus those in the remembered text,
                // past the literals matched so far.
                let mut shift = 0isize;
                for t in &self.lexed.tokens {
                    let span = if is_literal(t.kind) {
                        let span = walk.literal(t)?;
                        shift = span.end as isize - t.span.end as isize;
                        span
                    } else {
                        t.span.start.wrapping_add_signed(shift)
                            ..t.span.end.wrapping_add_signed(shift)
                    };
                    out.tokens.push(lexer::Token { kind: t.kind, span });
                }
                let bytes = walk.rest(&self.lexed.statements[0].bytes)?;
                out.statements.push(lexer::StatementSpan {
                    bytes: bytes.clone(),
                    tokens: self.lexed.statements[0].tokens.clone(),
                });
                out.has_comments = self.lexed.has_comments;
                out.max_depth = self.lexed.max_depth;
                Some(bytes)
            }
        }
    }
}

/// [`Shape::instance`]'s way through the remembered text and the new one.
struct Walk<'a> {
    old: &'a str,
    new: &'a str,
    opts: LexOptions,
    /// Where the next gap starts in each text.
    at_old: usize,
    at_new: usize,
}

impl Walk<'_> {
    /// Match the gap before the remembered literal `t` and re-scan the new
    /// text's literal after it: its span in the new text.
    fn literal(&mut self, t: &lexer::Token) -> Option<Range<usize>> {
        let (old, new) = (self.old.as_bytes(), self.new.as_bytes());
        let gap = &old[self.at_old..t.span.start];
        if new.get(self.at_new..self.at_new + gap.len())? != gap {
            return None;
        }
        let start = self.at_new + gap.len();
        if start >= new.len() {
            return None;
        }
        let end = match lexer::scan_token(self.new, start, self.opts) {
            Ok((kind, end)) if kind == t.kind => end,
            _ => return None,
        };
        (self.at_old, self.at_new) = (t.span.end, end);
        Some(start..end)
    }

    /// After the last literal: the rest must be the same bytes. The span of
    /// the new text's statement, given the remembered one's: it starts
    /// before the first literal, where nothing moved, and ends as far from
    /// the end of the text as it did.
    fn rest(&self, statement: &Range<usize>) -> Option<Range<usize>> {
        let (old, new) = (self.old.as_bytes(), self.new.as_bytes());
        (new[self.at_new..] == old[self.at_old..])
            .then(|| statement.start..new.len() - (old.len() - statement.end))
    }
}

/// Bytes after which no token continues into the next byte when that byte
/// starts a literal: whitespace, single-byte punctuation, and operator
/// characters (an operator only grows by operator characters, which never
/// start a literal). After a word, a number or a parameter a literal's
/// first byte could instead extend that token (`ab` + `N'x'` lexes as the
/// word `abN`), so shapes with such a literal are not kept.
fn is_hard_boundary(b: u8) -> bool {
    lexer::is_space(b)
        || lexer::is_op_char(b)
        || matches!(b, b'(' | b')' | b'[' | b']' | b',' | b';')
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
    if let [stmt] = lexed.statements.as_slice() {
        relabel(&mut facts, &sql[stmt.bytes.clone()]);
    }
    facts
}

/// Give facts of the template this instance's statement text, reusing the
/// text's buffer.
pub fn relabel(facts: &mut [StatementFacts], statement: &str) {
    if let Some(f) = facts.first_mut() {
        f.text.clear();
        f.text.push_str(statement);
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

    /// Texts that differ from their neighbours only around a literal,
    /// where a byte comparison could be fooled into a match lexing denies.
    const SHAPE_TEXTS: &[&str] = &[
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 98765;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 98765 ; ",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1.5e3",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1e",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1 -- c",
        "SELECT abalance FROM pgbench_accounts WHERE aid = -1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = '1'",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "SELECT abalance FROM pgbench_accounts WHERE aid =1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1; SELECT 2",
        "SELECT a FROM t WHERE x = 'it''s' AND y = 2",
        "SELECT a FROM t WHERE x = '' AND y = 22",
        "SELECT a FROM t WHERE x = 'unterminated AND y = 2",
        "SELECT a FROM t WHERE x = E'\\'' AND y = 2",
        "SELECT a FROM t WHERE x = N'q' AND y = 2",
        "SELECT a FROM t WHERE x = B'101' AND y = 2",
        "SELECT a FROM t WHERE x = X'1f' AND y = 2",
        "SELECT a FROM t WHERE x = $$a$$ AND y = 2",
        "SELECT a FROM t WHERE x = $q$a$$q$ AND y = 2",
        "SELECT a FROM t WHERE x = U&'a' AND y = 2",
        "SELECT a FROM t WHERE x IN (1,2,3)",
        "SELECT a FROM t WHERE x IN (1,2,345)",
        "SELECT a FROM t WHERE x IN (1,2,3.)",
        "SELECT a FROM t WHERE x IN (1,2,.3)",
        "SELECT a FROM t WHERE x IN (1,2,3)::int[]",
        "SELECT a FROM t WHERE x IN (1,2,'3')",
        "SELECT ab'c' FROM t",
        "SELECT abN'c' FROM t",
        "SELECT ab.5 FROM t",
        "SELECT ab5 FROM t",
        "SELECT 'a' 'b' FROM t",
        "SELECT 'a''b' FROM t",
        "SELECT 1 FROM t",
        "SELECT 12 FROM t",
        "SELECT 1FROM t",
        "SELECT 1 /* x */ FROM t",
        "SELECT 1 /* x FROM t",
        "SELECT 1",
        "SELECT ",
        "",
    ];

    #[test]
    fn a_shape_matches_only_texts_that_lexing_gives_its_key() {
        let opts = LexOptions::default();
        let mut matched = 0;
        for a in SHAPE_TEXTS {
            let Ok(la) = lex(a, opts) else { continue };
            let Some(shape) = Shape::of(a, &la) else {
                continue;
            };
            let ka = key(a, &la).expect("a shape has a key");
            for b in SHAPE_TEXTS {
                let mut got = Lexed::default();
                if shape.instance(b, opts, Some(&mut got)).is_none() {
                    continue;
                }
                let lb = lex(b, opts).expect("a match lexes");
                assert_eq!(key(b, &lb).as_deref(), Some(ka.as_str()), "{a:?} / {b:?}");
                assert_eq!(got, lb, "{a:?} / {b:?}");
                matched += usize::from(a != b);
            }
        }
        // The pgbench loop, the IN lists and the string pairs do match.
        assert!(matched >= 8, "{matched} matches between different texts");
        let pgbench = SHAPE_TEXTS[0];
        let shape = Shape::of(pgbench, &lex(pgbench, opts).unwrap()).unwrap();
        let next = "SELECT abalance FROM pgbench_accounts WHERE aid = 424242";
        let mut got = Lexed::default();
        assert!(shape.instance(next, opts, Some(&mut got)).is_some());
        assert_eq!(got.statements[0].bytes, 0..next.len());
        // Bytes around the literals must be the same: a `;` more is a miss
        // (the caller lexes), not a wrong lex.
        assert!(shape
            .instance(&format!("{next};"), opts, Some(&mut got))
            .is_none());
        // A literal right after a word is not kept: `ab` + `N'c'` is `abN`.
        let glued = "SELECT ab'c' FROM t";
        assert!(Shape::of(glued, &lex(glued, opts).unwrap()).is_none());
        // With standard_conforming_strings off a backslash escapes the quote:
        // the re-scan uses the session's options, as lexing would.
        let off = LexOptions {
            standard_conforming_strings: false,
        };
        let s = "SELECT a FROM t WHERE x = 'a' AND y = 2";
        let shape = Shape::of(s, &lex(s, off).unwrap()).unwrap();
        let escaped = "SELECT a FROM t WHERE x = 'a\\' AND y = 2";
        assert!(shape.instance(escaped, off, Some(&mut got)).is_none());
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
