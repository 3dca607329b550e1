//! What of a statement's text goes into an event. With `redact_literals`
//! (the default) every literal — strings of every flavour, dollar-quoted
//! bodies, numbers — becomes a `$n` placeholder numbered after the
//! statement's own parameters (as `pg_stat_statements` does). Without it the
//! text is kept, except that a string following the word `PASSWORD`
//! (`CREATE/ALTER ROLE … [ENCRYPTED] PASSWORD '…'`) is always replaced.
//! The fingerprint hashes the literal-free token stream (keywords folded to
//! lower case, comments and spacing dropped), so one statement shape has one
//! fingerprint whatever its literals.

use sha2::{Digest, Sha256};

use crate::policy::lexer::{self, LexOptions, Lexed, Token, TokenKind};

/// The text written in place of a password.
pub const PASSWORD_MASK: &str = "'[redacted]'";
/// The text of SQL that could not be lexed, when literals are redacted.
pub const UNLEXABLE: &str = "[pgward: statement not lexable; text redacted]";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    pub sql: String,
    /// First 16 hex digits of the SHA-256 of the normalised statement.
    pub fingerprint: String,
}

fn is_literal(kind: TokenKind) -> bool {
    matches!(
        kind,
        TokenKind::String { .. }
            | TokenKind::EString
            | TokenKind::UnicodeString
            | TokenKind::BitString
            | TokenKind::DollarString
            | TokenKind::Number
    )
}

fn is_string(kind: TokenKind) -> bool {
    is_literal(kind) && kind != TokenKind::Number
}

/// Redact `sql`, keep at most `max_bytes` of the result.
pub fn redact(sql: &str, literals: bool, max_bytes: usize, opts: LexOptions) -> Redacted {
    match lexer::lex(sql, opts) {
        Ok(lexed) => redact_tokens(sql, &lexed.tokens, 0, literals, max_bytes)
            .expect("tokens lexed from the text itself fit it"),
        Err(_) => unlexable(sql, literals, max_bytes),
    }
}

/// [`redact`] from tokens the policy already lexed: `tokens` are those of
/// `sql`, with spans offset by `base` (they were lexed from a longer string
/// in which `sql` starts at `base`). `None` if a span does not fit `sql`.
pub fn redact_tokens(
    sql: &str,
    tokens: &[Token],
    base: usize,
    literals: bool,
    max_bytes: usize,
) -> Option<Redacted> {
    Some(Redacted {
        sql: redacted_text(sql, tokens, base, literals, max_bytes)?,
        fingerprint: fingerprint_tokens(sql, tokens, base)?,
    })
}

/// The text of token `t` of `sql` (spans offset by `base`).
fn text_of<'a>(sql: &'a str, t: &Token, base: usize) -> Option<&'a str> {
    sql.get(t.span.start.checked_sub(base)?..t.span.end.checked_sub(base)?)
}

/// The highest `$n` the statement itself uses: literals are numbered after it.
fn last_param(sql: &str, tokens: &[Token], base: usize) -> Option<u32> {
    let mut last = 0u32;
    for t in tokens.iter().filter(|t| t.kind == TokenKind::Param) {
        if let Some(n) = text_of(sql, t, base)?
            .get(1..)
            .and_then(|n| n.parse::<u32>().ok())
        {
            last = last.max(n);
        }
    }
    Some(last)
}

/// The `sql` member of [`redact_tokens`]'s result.
pub fn redacted_text(
    sql: &str,
    tokens: &[Token],
    base: usize,
    literals: bool,
    max_bytes: usize,
) -> Option<String> {
    let mut next_param = last_param(sql, tokens, base)?;
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0usize;
    let mut after_password = false;
    for t in tokens {
        let text = text_of(sql, t, base)?;
        let start = t.span.start - base;
        // A minus before a number is an operator token: `-1` becomes `-$n`.
        let mask = if literals && is_literal(t.kind) {
            next_param += 1;
            Some(None)
        } else if after_password && is_string(t.kind) {
            Some(Some(PASSWORD_MASK))
        } else {
            None
        };
        if let Some(mask) = mask {
            out.push_str(&sql[copied..start]);
            match mask {
                Some(m) => out.push_str(m),
                None => push_param(&mut out, next_param),
            }
            copied = start + text.len();
        }
        after_password = t.kind == TokenKind::Word && text.eq_ignore_ascii_case("password");
    }
    out.push_str(&sql[copied..]);
    Some(truncate(out, max_bytes))
}

/// The `fingerprint` member of [`redact_tokens`]'s result. It numbers
/// literals the same way whether or not the text keeps them.
pub fn fingerprint_tokens(sql: &str, tokens: &[Token], base: usize) -> Option<String> {
    let mut norm_param = last_param(sql, tokens, base)?;
    let mut norm = String::with_capacity(sql.len());
    for t in tokens {
        let text = text_of(sql, t, base)?;
        if !norm.is_empty() {
            norm.push(' ');
        }
        if is_literal(t.kind) {
            norm_param += 1;
            push_param(&mut norm, norm_param);
        } else if t.kind == TokenKind::Word {
            norm.extend(text.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            norm.push_str(text);
        }
    }
    Some(fingerprint_of(norm.as_bytes()))
}

/// The policy's lex of a text it evaluated ([`crate::policy::Policy::evaluate_lexed`]).
pub struct PolicyTokens<'a> {
    pub sql: &'a str,
    pub lexed: &'a Lexed,
    pub options: LexOptions,
}

impl PolicyTokens<'_> {
    /// [`redact`] statement `index` of the evaluated text, `text`, from the
    /// policy's tokens. The policy's facts and its lexed statements line up
    /// one to one; that is checked here, not assumed (`None`: redact anew).
    pub fn redact(
        &self,
        index: usize,
        text: &str,
        literals: bool,
        max_bytes: usize,
    ) -> Option<Redacted> {
        let (tokens, base) = self.statement(index, text)?;
        redact_tokens(text, tokens, base, literals, max_bytes)
    }

    /// Only the redacted text of [`Self::redact`] (the fingerprint costs a
    /// second pass and a hash; a statement described before already has it).
    pub fn redacted_text(
        &self,
        index: usize,
        text: &str,
        literals: bool,
        max_bytes: usize,
    ) -> Option<String> {
        let (tokens, base) = self.statement(index, text)?;
        redacted_text(text, tokens, base, literals, max_bytes)
    }

    /// Only the fingerprint of [`Self::redact`].
    pub fn fingerprint(&self, index: usize, text: &str) -> Option<String> {
        let (tokens, base) = self.statement(index, text)?;
        fingerprint_tokens(text, tokens, base)
    }

    /// The tokens of statement `index` and where its text starts, if that
    /// text is `text`.
    fn statement(&self, index: usize, text: &str) -> Option<(&[Token], usize)> {
        let span = self.lexed.statements.get(index)?;
        if self.sql.get(span.bytes.clone())? != text {
            return None;
        }
        Some((
            self.lexed.tokens.get(span.tokens.clone())?,
            span.bytes.start,
        ))
    }
}

/// `$n`, as `write!(out, "${n}")` would put it, without the formatting
/// machinery (once per literal of every audited statement).
fn push_param(out: &mut String, n: u32) {
    out.push('$');
    out.push_str(super::event::decimal(u64::from(n), &mut [0; 20]));
}

/// Text the lexer refuses: withheld when literals are redacted (it cannot
/// tell them apart), fingerprinted as it is.
fn unlexable(sql: &str, literals: bool, max_bytes: usize) -> Redacted {
    let fingerprint = fingerprint_of(sql.as_bytes());
    let text = if literals {
        UNLEXABLE.to_string()
    } else {
        sql.to_string()
    };
    Redacted {
        sql: truncate(text, max_bytes),
        fingerprint,
    }
}

fn fingerprint_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    super::chain::hex(&digest[..8])
}

/// Cut `text` to `max` bytes at a character boundary, marking the cut.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str("…[truncated]");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_written_as_the_format_machinery_would() {
        for n in [0, 1, 9, 10, 99, 100, 65_535, u32::MAX] {
            let mut out = String::from("x");
            push_param(&mut out, n);
            assert_eq!(out, format!("x${n}"));
        }
    }

    fn r(sql: &str, literals: bool) -> Redacted {
        redact(sql, literals, 1 << 20, LexOptions::default())
    }

    #[test]
    fn literals_become_numbered_placeholders_after_existing_params() {
        let out = r(
            "SELECT * FROM t WHERE a = $1 AND b = 'x''y' AND c IN (42, E'\\n', $$z$$)",
            true,
        );
        assert_eq!(
            out.sql,
            "SELECT * FROM t WHERE a = $1 AND b = $2 AND c IN ($3, $4, $5)"
        );
    }

    #[test]
    fn same_shape_same_fingerprint_whatever_the_literals_and_spacing() {
        let a = r("select *  from t where id = 1 -- hi", true);
        let b = r("SELECT * FROM t\nWHERE id = 99", true);
        let c = r("SELECT * FROM t WHERE name = 1", true);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
        assert_eq!(a.fingerprint.len(), 16);
        // Without redaction the fingerprint is the same as with it.
        assert_eq!(
            r("select * from t where id = 7", false).fingerprint,
            a.fingerprint
        );
    }

    #[test]
    fn policy_tokens_give_each_statement_its_redaction_in_parts() {
        let sql = "SELECT 1, 'a'; ALTER ROLE r PASSWORD 'pw'; select $3 + 2";
        let lexed = lexer::lex(sql, LexOptions::default()).unwrap();
        let tokens = PolicyTokens {
            sql,
            lexed: &lexed,
            options: LexOptions::default(),
        };
        for (i, text) in [
            "SELECT 1, 'a'",
            "ALTER ROLE r PASSWORD 'pw'",
            "select $3 + 2",
        ]
        .into_iter()
        .enumerate()
        {
            for literals in [true, false] {
                let whole = r(text, literals);
                assert_eq!(
                    tokens.redact(i, text, literals, 1 << 20),
                    Some(whole.clone())
                );
                let sql = tokens.redacted_text(i, text, literals, 1 << 20);
                assert_eq!(sql, Some(whole.sql));
                assert_eq!(tokens.fingerprint(i, text), Some(whole.fingerprint));
            }
            // Not the text of that statement: nothing from these tokens.
            assert_eq!(tokens.redacted_text(i, "SELECT 2", true, 1 << 20), None);
        }
    }

    #[test]
    fn passwords_are_redacted_even_when_literals_are_kept() {
        for sql in [
            "CREATE ROLE bob LOGIN PASSWORD 'hunter2'",
            "alter user bob with encrypted password E'hunter2'",
            "ALTER ROLE bob PASSWORD $p$hunter2$p$ VALID UNTIL '2030-01-01'",
        ] {
            let out = r(sql, false);
            assert!(!out.sql.contains("hunter2"), "{}", out.sql);
            assert!(out.sql.contains(PASSWORD_MASK), "{}", out.sql);
        }
        assert!(r(
            "ALTER ROLE bob PASSWORD 'x' VALID UNTIL '2030-01-01'",
            false
        )
        .sql
        .contains("'2030-01-01'"));
    }

    #[test]
    fn unlexable_text_is_withheld_and_long_text_cut() {
        assert_eq!(r("SELECT 'unterminated", true).sql, UNLEXABLE);
        let long = format!("SELECT {}", "é".repeat(100));
        let out = redact(&long, false, 20, LexOptions::default());
        assert!(out.sql.ends_with("…[truncated]") && out.sql.len() <= 20 + "…[truncated]".len());
    }
}
