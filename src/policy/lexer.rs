//! A PostgreSQL-faithful lexer, used for two things only:
//!
//! 1. **Splitting** a simple-protocol Query string into statements exactly where
//!    the server will split it (top-level `;`), and deciding whether the string
//!    is ambiguous (unterminated quote or comment, NUL byte, absurd nesting).
//! 2. **Normalising** each statement before it is handed to `sqlparser`: the
//!    parser's own tokenizer differs from Postgres' in ways that matter for
//!    security (it ends `--` comments only at LF, it does not know that
//!    `standard_conforming_strings = off` makes `\'` an escaped quote in plain
//!    strings, it reads `U&"x"` as `U & "x"`). The normalised text is built from
//!    *our* tokens, so whatever `sqlparser` sees has the token boundaries
//!    Postgres sees: comments become a single space, plain strings with
//!    backslashes become `E'…'` when `standard_conforming_strings` is off, and
//!    `U&"…"` identifiers are decoded into ordinary quoted identifiers.
//!
//! The rules follow `src/backend/parser/scan.l` of PostgreSQL 15:
//! identifiers start with `[A-Za-z_\x80-\xff]` and continue with
//! `[A-Za-z_0-9$\x80-\xff]`; `$tag$` delimiters start with `$` and an
//! identifier-start character and contain no `$`; `$1` is a parameter; `--`
//! comments end at LF or CR; `/* */` comments nest.
//!
//! Normalised text is used only for classification. It is never sent to the
//! server: the proxy forwards the client's original bytes.

use std::ops::Range;

/// Options that change how Postgres lexes a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LexOptions {
    /// The session's `standard_conforming_strings`. When `false`, backslash is
    /// an escape character inside plain `'…'` strings too (so `'\''` is one
    /// string containing a quote).
    pub standard_conforming_strings: bool,
}

impl Default for LexOptions {
    fn default() -> Self {
        LexOptions {
            standard_conforming_strings: true,
        }
    }
}

/// Deepest `(`/`[` nesting accepted. Deeper input is refused as ambiguous
/// before it reaches the recursive parser and the recursive AST walk, so no
/// input can exhaust the stack.
pub const MAX_NESTING: usize = 200;

/// Most chain-forming operators (binary/unary operators, `::`, `AND`, `OR`,
/// `NOT`, `IS`, …) accepted on one path of the expression tree: operators
/// are counted per parenthesis level since the last comma, and summed over
/// the open levels. Operator chains build left-deep trees without any
/// parentheses, so bounding this sum (with [`MAX_NESTING`]) bounds the depth
/// of the AST the parser builds and we walk and drop. Comma-separated items
/// (select lists, `IN` lists, `VALUES` rows) are siblings and do not add up.
pub const MAX_OPERATORS: usize = 2000;

/// Why a string could not be lexed unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LexError {
    #[error("NUL byte at offset {0}")]
    Nul(usize),
    #[error("unterminated quoted string starting at offset {0}")]
    UnterminatedString(usize),
    #[error("unterminated quoted identifier starting at offset {0}")]
    UnterminatedIdentifier(usize),
    #[error("unterminated /* comment starting at offset {0}")]
    UnterminatedComment(usize),
    #[error("unterminated dollar-quoted string starting at offset {0}")]
    UnterminatedDollarQuote(usize),
    #[error("Unicode escape string at offset {0} while standard_conforming_strings is off (Postgres rejects it)")]
    UnsafeUnicodeString(usize),
    #[error("invalid Unicode escape in U& literal at offset {0}")]
    BadUnicodeEscape(usize),
    #[error("nesting deeper than {MAX_NESTING} levels at offset {0}")]
    TooDeep(usize),
    #[error("more than {MAX_OPERATORS} chained operators in one expression")]
    TooManyOperators,
}

/// What a token is. Only the distinctions the policy needs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Unquoted identifier or keyword.
    Word,
    /// `"…"` identifier.
    QuotedIdent,
    /// `U&"…"` identifier (possibly followed by `UESCAPE '…'`, which is a
    /// separate Word + String pair).
    UnicodeIdent,
    /// `'…'` (also `N'…'`) string. `escapes` tells whether backslash escapes
    /// applied while lexing it (`standard_conforming_strings = off`).
    String {
        escapes: bool,
    },
    /// `E'…'` string.
    EString,
    /// `U&'…'` string.
    UnicodeString,
    /// `B'…'` / `X'…'`.
    BitString,
    /// `$tag$…$tag$`.
    DollarString,
    /// `$1`.
    Param,
    Number,
    /// A run of operator characters, e.g. `=`, `<>`, `||`, `~`.
    Operator,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Semicolon,
    Dot,
    /// `:` or `::`.
    Colon,
    /// Anything else (a stray `$`, `\`, `{`, …). Postgres will reject it, and
    /// so will `sqlparser`.
    Other,
}

/// One token: kind and byte range in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub span: Range<usize>,
}

/// One statement of a Query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementSpan {
    /// Byte range in the original text, from the first token to the last
    /// (the terminating `;` excluded).
    pub bytes: Range<usize>,
    /// Index range into [`Lexed::tokens`].
    pub tokens: Range<usize>,
}

/// Result of lexing a Query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lexed {
    /// Every token except whitespace and comments, `;` included.
    pub tokens: Vec<Token>,
    /// Non-empty statements in order (empty ones, e.g. `;;`, are dropped as
    /// Postgres drops them).
    pub statements: Vec<StatementSpan>,
    /// The string contained at least one comment.
    pub has_comments: bool,
    /// Deepest `(`/`[` nesting seen.
    pub max_depth: usize,
}

// Byte classes, looked up in one table: the lexer asks for every byte of
// every statement, and a chain of range comparisons per byte was a third of
// its time.
const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT_CONT: u8 = 4;
const DOLQ_CONT: u8 = 8;
const OP_CHAR: u8 = 16;

const fn byte_class(b: u8) -> u8 {
    let ident_start = b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
    let digit = b.is_ascii_digit();
    let mut class = 0;
    if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b') {
        class |= SPACE;
    }
    if ident_start {
        class |= IDENT_START | IDENT_CONT | DOLQ_CONT;
    }
    if digit {
        class |= IDENT_CONT | DOLQ_CONT;
    }
    if b == b'$' {
        class |= IDENT_CONT;
    }
    if matches!(
        b,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    ) {
        class |= OP_CHAR;
    }
    class
}

static BYTE_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = byte_class(i as u8);
        i += 1;
    }
    t
};

fn has_class(b: u8, class: u8) -> bool {
    BYTE_CLASS[usize::from(b)] & class != 0
}

fn is_ident_start(b: u8) -> bool {
    has_class(b, IDENT_START)
}

fn is_ident_cont(b: u8) -> bool {
    has_class(b, IDENT_CONT)
}

fn is_dolq_cont(b: u8) -> bool {
    has_class(b, DOLQ_CONT)
}

pub(crate) fn is_space(b: u8) -> bool {
    has_class(b, SPACE)
}

pub(crate) fn is_op_char(b: u8) -> bool {
    has_class(b, OP_CHAR)
}

/// Words that, between operands, extend an expression chain without
/// parentheses (see [`MAX_OPERATORS`]).
fn is_chain_keyword(word: &str) -> bool {
    // Called for every word: dispatch on the first letter so a column or
    // table name is usually rejected by one comparison.
    let candidates: &[&str] = match word.as_bytes().first().map(u8::to_ascii_lowercase) {
        Some(b'a') => &["and", "at"],
        Some(b'o') => &["or"],
        Some(b'n') => &["not"],
        Some(b'i') => &["is", "in", "ilike"],
        Some(b'c') => &["collate"],
        Some(b'l') => &["like"],
        Some(b'b') => &["between"],
        Some(b's') => &["similar"],
        _ => return false,
    };
    candidates.iter().any(|k| word.eq_ignore_ascii_case(k))
}

/// Lex `sql` the way Postgres does. See the module docs.
pub fn lex(sql: &str, opts: LexOptions) -> Result<Lexed, LexError> {
    let mut out = Lexed::default();
    lex_into(sql, opts, &mut out)?;
    Ok(out)
}

/// [`lex`] into `out`, reusing its buffers: a session lexing one
/// statement after another allocates nothing once they are big enough.
/// `out` is cleared first; after an error its contents are unspecified.
pub fn lex_into(sql: &str, opts: LexOptions, out: &mut Lexed) -> Result<(), LexError> {
    let b = sql.as_bytes();
    let n = b.len();
    out.clear();
    // About one token per five bytes of typical SQL: one allocation, not a
    // series of regrowths, for the common short statement.
    out.tokens.reserve((n / 5 + 8).min(1 << 16));
    out.statements.reserve(1);
    let mut i = 0usize;
    let mut depth = 0usize;
    // Operators since the last comma, per open parenthesis level, and their sum.
    let mut ops_stack = OpsStack::default();
    let mut ops_path = 0usize;
    let mut stmt_start_tok = 0usize;

    while i < n {
        let c = b[i];
        if c == 0 {
            return Err(LexError::Nul(i));
        }
        if is_space(c) {
            i += 1;
            continue;
        }
        // `--` comment, ended by LF or CR (scan.l: non_newline = [^\n\r]).
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            out.has_comments = true;
            while i < n && b[i] != b'\n' && b[i] != b'\r' {
                if b[i] == 0 {
                    return Err(LexError::Nul(i));
                }
                i += 1;
            }
            continue;
        }
        // Nested `/* */` comment.
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            out.has_comments = true;
            let start = i;
            let mut level = 1usize;
            i += 2;
            while level > 0 {
                if i >= n {
                    return Err(LexError::UnterminatedComment(start));
                }
                if b[i] == 0 {
                    return Err(LexError::Nul(i));
                }
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    level += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    level -= 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            continue;
        }

        let start = i;
        let (kind, end) = scan_token(sql, i, opts)?;
        i = end;
        match kind {
            TokenKind::LParen | TokenKind::LBracket => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(LexError::TooDeep(start));
                }
                out.max_depth = out.max_depth.max(depth);
            }
            TokenKind::RParen | TokenKind::RBracket => depth = depth.saturating_sub(1),
            _ => {}
        }
        let counts_as_op = match kind {
            TokenKind::Operator | TokenKind::Colon => true,
            TokenKind::Word => is_chain_keyword(&sql[start..i]),
            _ => false,
        };
        match kind {
            TokenKind::LParen | TokenKind::LBracket => ops_stack.nested.push(0),
            TokenKind::RParen | TokenKind::RBracket if !ops_stack.nested.is_empty() => {
                ops_path -= ops_stack.nested.pop().unwrap_or(0);
            }
            TokenKind::Comma | TokenKind::Semicolon => {
                let top = ops_stack.top();
                ops_path -= *top;
                *top = 0;
            }
            _ if counts_as_op => {
                *ops_stack.top() += 1;
                ops_path += 1;
                if ops_path > MAX_OPERATORS {
                    return Err(LexError::TooManyOperators);
                }
            }
            _ => {}
        }
        out.tokens.push(Token {
            kind,
            span: start..i,
        });
        // Split at `;` outside parentheses. A `;` inside parentheses is a
        // syntax error for the whole string in Postgres; we keep it inside the
        // statement so that the parser rejects it too.
        if kind == TokenKind::Semicolon && depth == 0 {
            let end = out.tokens.len() - 1;
            push_statement(out, stmt_start_tok, end);
            stmt_start_tok = out.tokens.len();
        }
    }
    let end = out.tokens.len();
    push_statement(out, stmt_start_tok, end);
    Ok(())
}

/// The token starting at byte `i` of `sql` (not whitespace, not a
/// comment): its kind and the index just past it. [`lex_into`] calls this
/// for every token; `template` calls it to re-scan one literal.
pub fn scan_token(sql: &str, i: usize, opts: LexOptions) -> Result<(TokenKind, usize), LexError> {
    let b = sql.as_bytes();
    let n = b.len();
    let c = b[i];
    let start = i;
    let mut i = i;
    let kind = match c {
        b'\'' => {
            let esc = !opts.standard_conforming_strings;
            i = scan_quoted(b, i + 1, b'\'', esc).ok_or(LexError::UnterminatedString(start))?;
            TokenKind::String { escapes: esc }
        }
        b'"' => {
            i = scan_quoted(b, i + 1, b'"', false)
                .ok_or(LexError::UnterminatedIdentifier(start))?;
            TokenKind::QuotedIdent
        }
        b'$' => {
            if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                i += 1;
                while i < n && b[i].is_ascii_digit() {
                    i += 1;
                }
                TokenKind::Param
            } else if let Some(tag_end) = dollar_delim(b, i) {
                let delim = &b[i..tag_end];
                let body = tag_end;
                match find(b, body, delim) {
                    Some(pos) => {
                        if let Some(z) = b[body..pos].iter().position(|&x| x == 0) {
                            return Err(LexError::Nul(body + z));
                        }
                        i = pos + delim.len();
                    }
                    None => return Err(LexError::UnterminatedDollarQuote(start)),
                }
                TokenKind::DollarString
            } else {
                i += 1;
                TokenKind::Other
            }
        }
        _ if is_ident_start(c) => {
            let next = b.get(i + 1).copied();
            let lc = c.to_ascii_lowercase();
            if next == Some(b'\'') && matches!(lc, b'e' | b'b' | b'x' | b'n') {
                let esc = match lc {
                    b'e' => true,
                    b'n' => !opts.standard_conforming_strings,
                    _ => false,
                };
                i = scan_quoted(b, i + 2, b'\'', esc).ok_or(LexError::UnterminatedString(start))?;
                match lc {
                    b'e' => TokenKind::EString,
                    b'n' => TokenKind::String { escapes: esc },
                    _ => TokenKind::BitString,
                }
            } else if lc == b'u' && next == Some(b'&') && b.get(i + 2) == Some(&b'\'') {
                if !opts.standard_conforming_strings {
                    return Err(LexError::UnsafeUnicodeString(start));
                }
                i = scan_quoted(b, i + 3, b'\'', false)
                    .ok_or(LexError::UnterminatedString(start))?;
                TokenKind::UnicodeString
            } else if lc == b'u' && next == Some(b'&') && b.get(i + 2) == Some(&b'"') {
                i = scan_quoted(b, i + 3, b'"', false)
                    .ok_or(LexError::UnterminatedIdentifier(start))?;
                TokenKind::UnicodeIdent
            } else {
                while i < n && is_ident_cont(b[i]) {
                    i += 1;
                }
                TokenKind::Word
            }
        }
        b'0'..=b'9' => {
            i = scan_number(b, i);
            TokenKind::Number
        }
        b'.' if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
            i = scan_number(b, i);
            TokenKind::Number
        }
        b'(' | b'[' | b')' | b']' | b',' | b';' => {
            i += 1;
            match c {
                b'(' => TokenKind::LParen,
                b'[' => TokenKind::LBracket,
                b')' => TokenKind::RParen,
                b']' => TokenKind::RBracket,
                b',' => TokenKind::Comma,
                _ => TokenKind::Semicolon,
            }
        }
        b'.' => {
            i += 1;
            TokenKind::Dot
        }
        b':' => {
            i += 1;
            if b.get(i) == Some(&b':') {
                i += 1;
            }
            TokenKind::Colon
        }
        _ if is_op_char(c) => {
            // Maximal munch, but `--` and `/*` start comments even
            // inside an operator (scan.l's {operator} rule).
            i += 1;
            while i < n && is_op_char(b[i]) {
                if (b[i] == b'-' && b.get(i + 1) == Some(&b'-'))
                    || (b[i] == b'/' && b.get(i + 1) == Some(&b'*'))
                {
                    break;
                }
                i += 1;
            }
            TokenKind::Operator
        }
        _ => {
            // One whole UTF-8 character, so spans stay on char boundaries.
            i += sql[i..].chars().next().map_or(1, char::len_utf8);
            TokenKind::Other
        }
    };
    Ok((kind, i))
}

/// Operators since the last comma, per open parenthesis level: the outer
/// level inline, so a statement without parentheses allocates nothing.
#[derive(Default)]
struct OpsStack {
    outer: usize,
    nested: Vec<usize>,
}

impl OpsStack {
    fn top(&mut self) -> &mut usize {
        self.nested.last_mut().unwrap_or(&mut self.outer)
    }
}

fn push_statement(out: &mut Lexed, from: usize, to: usize) {
    if from >= to {
        return;
    }
    let (Some(first), Some(last)) = (out.tokens.get(from), out.tokens.get(to - 1)) else {
        return;
    };
    out.statements.push(StatementSpan {
        bytes: first.span.start..last.span.end,
        tokens: from..to,
    });
}

/// Scan a quoted literal body starting after the opening quote; returns the
/// index just past the closing quote. A doubled quote is a literal quote;
/// with `backslash`, `\x` escapes any byte.
fn scan_quoted(b: &[u8], mut i: usize, quote: u8, backslash: bool) -> Option<usize> {
    while i < b.len() {
        let c = b[i];
        if c == 0 {
            return None;
        }
        if backslash && c == b'\\' {
            if b.get(i + 1) == Some(&0) {
                return None;
            }
            i += 2;
            continue;
        }
        if c == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// If a `$tag$` delimiter starts at `i`, return the index just past it.
fn dollar_delim(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j) == Some(&b'$') {
        return Some(j + 1);
    }
    if !b.get(j).is_some_and(|&c| is_ident_start(c)) {
        return None;
    }
    while j < b.len() && is_dolq_cont(b[j]) {
        j += 1;
    }
    if b.get(j) == Some(&b'$') {
        Some(j + 1)
    } else {
        None
    }
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn scan_number(b: &[u8], mut i: usize) -> usize {
    let n = b.len();
    while i < n {
        let c = b[i];
        if c.is_ascii_alphanumeric() || c == b'_' {
            // Exponent sign: 1e+5 / 1E-5.
            if (c == b'e' || c == b'E')
                && matches!(b.get(i + 1), Some(b'+') | Some(b'-'))
                && b.get(i + 2).is_some_and(|d| d.is_ascii_digit())
            {
                i += 2;
            }
            i += 1;
        } else if c == b'.' && b.get(i + 1) != Some(&b'.') {
            i += 1;
        } else {
            break;
        }
    }
    i
}

impl Lexed {
    /// Empty, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.statements.clear();
        self.has_comments = false;
        self.max_depth = 0;
    }

    /// Tokens of statement `idx`.
    pub fn statement_tokens(&self, idx: usize) -> &[Token] {
        match self.statements.get(idx) {
            Some(s) => self.tokens.get(s.tokens.clone()).unwrap_or(&[]),
            None => &[],
        }
    }
}

/// Text of a token.
pub fn text<'a>(sql: &'a str, t: &Token) -> &'a str {
    sql.get(t.span.clone()).unwrap_or("")
}

/// Is `t` the unquoted keyword `kw` (case-insensitive)?
pub fn is_kw(sql: &str, t: &Token, kw: &str) -> bool {
    t.kind == TokenKind::Word && text(sql, t).eq_ignore_ascii_case(kw)
}

/// Decode the body of a `U&'…'` / `U&"…"` literal (without prefix and
/// quotes, doubled quotes already collapsed) using escape character `esc`.
pub fn decode_unicode_escapes(body: &str, esc: char) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != esc {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some(x) if x == esc => {
                chars.next();
                out.push(esc);
            }
            Some('+') => {
                chars.next();
                let hex: String = (0..6).filter_map(|_| chars.next()).collect();
                out.push(hex_char(&hex, 6)?);
            }
            Some(_) => {
                let hex: String = (0..4).filter_map(|_| chars.next()).collect();
                let ch = hex_char(&hex, 4)?;
                out.push(ch);
            }
            None => return None,
        }
    }
    Some(out)
}

fn hex_char(hex: &str, len: usize) -> Option<char> {
    if hex.len() != len || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    char::from_u32(u32::from_str_radix(hex, 16).ok()?)
}

/// Collapse doubled quote characters of a quoted body.
fn undouble(body: &str, quote: char) -> String {
    let mut s = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        s.push(c);
        if c == quote && chars.peek() == Some(&quote) {
            chars.next();
        }
    }
    s
}

/// Build the text of statement `idx` as `sqlparser` should see it (see the
/// module docs): whitespace/comment gaps become one space, and literals whose
/// meaning `sqlparser` would get wrong are rewritten to equivalent forms it
/// reads correctly. `edits` replaces tokens (by absolute index) with other
/// text (empty = drop the token).
pub fn normalized_statement(
    sql: &str,
    lexed: &Lexed,
    idx: usize,
    edits: &std::collections::BTreeMap<usize, String>,
) -> Result<String, LexError> {
    let Some(stmt) = lexed.statements.get(idx) else {
        return Ok(String::new());
    };
    let mut out = String::with_capacity(stmt.bytes.len() + 8);
    let mut prev_end: Option<usize> = None;
    let toks = &lexed.tokens;
    let mut k = stmt.tokens.start;
    while k < stmt.tokens.end {
        let Some(t) = toks.get(k) else { break };
        if let Some(replacement) = edits.get(&k) {
            out.push(' ');
            out.push_str(replacement);
            prev_end = Some(t.span.end);
            k += 1;
            continue;
        }
        if let Some(p) = prev_end {
            if p != t.span.start {
                out.push(' ');
            }
        }
        let raw = text(sql, t);
        match t.kind {
            TokenKind::String { escapes: true } if raw.contains('\\') => {
                // Keep sqlparser's reading identical to Postgres': make the
                // escape semantics explicit.
                let body = raw.strip_prefix(['n', 'N']).unwrap_or(raw);
                out.push_str(" E");
                out.push_str(body);
            }
            TokenKind::UnicodeIdent | TokenKind::UnicodeString => {
                // Optional `UESCAPE 'c'` right after the literal.
                let mut esc = '\\';
                let mut consumed = 0;
                if let (Some(kw), Some(lit)) = (toks.get(k + 1), toks.get(k + 2)) {
                    if k + 2 < stmt.tokens.end
                        && is_kw(sql, kw, "uescape")
                        && matches!(lit.kind, TokenKind::String { .. })
                    {
                        let l = text(sql, lit);
                        let inner: Vec<char> = l.chars().collect();
                        if inner.len() == 3 {
                            esc = inner[1];
                            consumed = 2;
                        } else {
                            return Err(LexError::BadUnicodeEscape(t.span.start));
                        }
                    }
                }
                let quote = if t.kind == TokenKind::UnicodeIdent {
                    '"'
                } else {
                    '\''
                };
                let body = raw.get(3..raw.len().saturating_sub(1)).unwrap_or("");
                let decoded = decode_unicode_escapes(&undouble(body, quote), esc)
                    .ok_or(LexError::BadUnicodeEscape(t.span.start))?;
                let q = quote.to_string();
                out.push(quote);
                out.push_str(&decoded.replace(quote, &format!("{q}{q}")));
                out.push(quote);
                k += consumed;
                if let Some(last) = toks.get(k) {
                    prev_end = Some(last.span.end);
                }
                k += 1;
                continue;
            }
            _ => out.push_str(raw),
        }
        prev_end = Some(t.span.end);
        k += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_classes_are_postgres_scan_l_classes() {
        for b in 0..=255u8 {
            let ident_start = b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
            assert_eq!(is_ident_start(b), ident_start, "{b}");
            assert_eq!(
                is_ident_cont(b),
                ident_start || b.is_ascii_digit() || b == b'$',
                "{b}"
            );
            assert_eq!(is_dolq_cont(b), ident_start || b.is_ascii_digit(), "{b}");
            assert_eq!(is_space(b), b" \t\n\r\x0c\x0b".contains(&b), "{b}");
            assert_eq!(is_op_char(b), b"~!@#^&|`?+-*/%<>=".contains(&b), "{b}");
        }
    }

    #[test]
    fn chain_keywords_in_any_case_and_nothing_else() {
        for k in [
            "and", "OR", "Not", "is", "COLLATE", "at", "like", "ILike", "between", "similar", "in",
        ] {
            assert!(is_chain_keyword(k), "{k}");
        }
        for w in [
            "",
            "a",
            "andy",
            "pgbench_accounts",
            "islike",
            "_and",
            "ior",
            "select",
        ] {
            assert!(!is_chain_keyword(w), "{w}");
        }
    }

    fn split(sql: &str) -> Vec<String> {
        let l = lex(sql, LexOptions::default()).expect("lex");
        l.statements
            .iter()
            .map(|s| sql[s.bytes.clone()].to_string())
            .collect()
    }

    #[test]
    fn splits_on_top_level_semicolons_only() {
        assert_eq!(split("select 1; select 2;"), vec!["select 1", "select 2"]);
        assert_eq!(
            split("select ';'; select 2"),
            vec!["select ';'", "select 2"]
        );
        assert_eq!(split(";;select 1;;"), vec!["select 1"]);
    }

    #[test]
    fn dash_comment_ends_at_carriage_return() {
        assert_eq!(
            split("select 1 -- x\r; delete from t"),
            vec!["select 1", "delete from t"]
        );
        assert_eq!(split("select 1 -- x; delete from t"), vec!["select 1"]);
    }

    #[test]
    fn nested_block_comments() {
        assert_eq!(
            split("select /* a /* ; */ ; */ 1; select 2"),
            vec!["select /* a /* ; */ ; */ 1", "select 2"]
        );
        assert!(lex("select /* /* */ 1", LexOptions::default()).is_err());
    }

    #[test]
    fn dollar_quotes_and_params() {
        // `;` cannot be part of a tag: `$a;b$` is a stray `$`, then `a`, then `;`.
        assert_eq!(split("select $a;b$ ; $a;b$").len(), 4);
        assert_eq!(split("select $a$;b$a$ ; select 2").len(), 2);
        assert_eq!(split("select $x$ ; $x$; select 2").len(), 2);
        assert_eq!(split("select $1; select 2").len(), 2);
        assert_eq!(
            split("select a$b; select 2"),
            vec!["select a$b", "select 2"]
        );
        assert!(lex("select $q$ unterminated", LexOptions::default()).is_err());
    }

    #[test]
    fn backslash_escapes_depend_on_standard_conforming_strings() {
        assert_eq!(split(r"select E'\';'; select 2").len(), 2);
        let off = LexOptions {
            standard_conforming_strings: false,
        };
        let l = lex(r"select '\'; delete from t; --'", off).expect("lex");
        assert_eq!(l.statements.len(), 1);
        // With standard strings, the same text is two statements (and a comment).
        assert_eq!(split(r"select '\'; delete from t; --'").len(), 2);
    }

    #[test]
    fn unicode_identifier_is_decoded_for_the_parser() {
        let sql = r#"delete from U&"d\0061t" where id = 1"#;
        let l = lex(sql, LexOptions::default()).expect("lex");
        let n = normalized_statement(sql, &l, 0, &Default::default()).expect("norm");
        assert_eq!(n, r#"delete from "dat" where id = 1"#);
        let sql = r#"select U&"d!0061t" UESCAPE '!'"#;
        let l = lex(sql, LexOptions::default()).expect("lex");
        assert_eq!(
            normalized_statement(sql, &l, 0, &Default::default()).expect("norm"),
            r#"select "dat""#
        );
    }

    #[test]
    fn nul_and_deep_nesting_are_errors() {
        assert!(matches!(
            lex("select \0", LexOptions::default()),
            Err(LexError::Nul(7))
        ));
        let deep = format!("select {}1{}", "(".repeat(300), ")".repeat(300));
        assert!(matches!(
            lex(&deep, LexOptions::default()),
            Err(LexError::TooDeep(_))
        ));
    }
}
