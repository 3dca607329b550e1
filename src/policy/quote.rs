//! Quoting for the SQL pgward adds to a client's statement. Everything
//! pgward writes into a rewritten statement goes through here; the client's
//! own text is never re-printed.

/// Why a value cannot be quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("value contains a NUL byte")]
    Nul,
}

/// A string literal with the semantics of libpq's `PQescapeLiteral`: the
/// value in single quotes with `'` doubled; when it contains a backslash,
/// backslashes are doubled too and the literal is written `E'…'`, so it
/// means the same whatever `standard_conforming_strings` is.
pub fn escape_literal(value: &str) -> Result<String, QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError::Nul);
    }
    let backslash = value.contains('\\');
    let mut out = String::with_capacity(value.len() + 4);
    if backslash {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    Ok(out)
}

/// A text value as an expression whose bytes on the wire are ASCII only.
/// Non-ASCII values become `convert_from(decode('<hex>', 'hex'), 'UTF8')`:
/// in a client encoding whose multibyte characters can contain the byte of
/// `\` or `'` (SJIS, BIG5, GBK…) no UTF-8 byte sequence can then end a
/// literal early. ASCII values use [`escape_literal`].
pub fn text_value(value: &str) -> Result<String, QuoteError> {
    if value.is_ascii() {
        return escape_literal(value);
    }
    if value.contains('\0') {
        return Err(QuoteError::Nul);
    }
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "pg_catalog.convert_from(pg_catalog.decode('{hex}', 'hex'), 'UTF8')"
    ))
}

/// An identifier, always double-quoted with `"` doubled (`PQescapeIdentifier`).
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::lexer::{lex, LexOptions, TokenKind};

    /// Whatever the value, the literal lexes (under both settings of
    /// standard_conforming_strings) as exactly one string token.
    fn one_token(lit: &str) {
        for scs in [true, false] {
            let sql = format!("SELECT {lit}");
            let lexed = lex(
                &sql,
                LexOptions {
                    standard_conforming_strings: scs,
                },
            )
            .expect("lexes");
            assert_eq!(lexed.statements.len(), 1, "{sql}");
            assert_eq!(lexed.tokens.len(), 2, "{sql}: {:?}", lexed.tokens);
            assert!(matches!(
                lexed.tokens[1].kind,
                TokenKind::String { .. } | TokenKind::EString
            ));
        }
    }

    #[test]
    fn literal_matches_pqescapeliteral() {
        assert_eq!(escape_literal("alice").unwrap(), "'alice'");
        assert_eq!(escape_literal("o'hara").unwrap(), "'o''hara'");
        assert_eq!(escape_literal(r"a\b").unwrap(), r"E'a\\b'");
        assert_eq!(escape_literal(r"\'").unwrap(), r"E'\\'''");
        assert_eq!(escape_literal("").unwrap(), "''");
        assert_eq!(escape_literal("a\0b"), Err(QuoteError::Nul));
    }

    #[test]
    fn hostile_values_stay_one_literal() {
        for v in [
            "'; DELETE FROM t; --",
            r"\'; DELETE FROM t; --",
            r"\\'",
            r"'\",
            "''''",
            "$$; DROP TABLE t; $$",
            "*/ DROP TABLE t; /*",
            "\n--\r'",
            r"x\",
        ] {
            one_token(&escape_literal(v).unwrap());
            one_token(&text_value(v).unwrap());
        }
    }

    #[test]
    fn non_ascii_values_are_sent_as_hex() {
        let v = text_value("Zoë ' \\ 東京").unwrap();
        assert!(v.is_ascii());
        assert!(v.starts_with("pg_catalog.convert_from(pg_catalog.decode('5a6fc3ab"));
        assert_eq!(text_value("a\0é"), Err(QuoteError::Nul));
    }

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("deleted_at"), "\"deleted_at\"");
        assert_eq!(quote_ident("Ledger \"x\""), "\"Ledger \"\"x\"\"\"");
    }
}
