//! The per-sink hash chain. A delivered event is its JSON body with two
//! fields appended: `"prev"` (the previous event's hash; 64 zeros when a
//! chain starts) and `"hash"`, the SHA-256 of every byte of the line before
//! `,"hash":`. The hash therefore covers the event and its link, and
//! checking a line needs no JSON parsing: that keeps `verify` I/O-bound.

use sha2::{Digest, Sha256};

/// `prev` of the first event of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_SUFFIX_LEN: usize = r#","hash":""}"#.len() + 64;
const PREV_FIELD_LEN: usize = r#","prev":"""#.len() + 64;
/// What linking adds to an event.
pub const LINK_BYTES: usize = PREV_FIELD_LEN + HASH_SUFFIX_LEN;

/// One sink's chain state.
#[derive(Debug, Clone)]
pub struct Chain {
    last: String,
}

impl Chain {
    /// Continue after `last` (from the sink), or start a new chain.
    pub fn new(last: Option<String>) -> Chain {
        Chain {
            last: last
                .filter(|h| is_hex64(h.as_bytes()))
                .unwrap_or_else(|| GENESIS.to_string()),
        }
    }

    pub fn last(&self) -> &str {
        &self.last
    }

    /// Link `body` (a JSON object without chain fields) into the chain.
    pub fn link(&mut self, body: &str) -> String {
        let mut line = String::with_capacity(body.len() + LINK_BYTES);
        self.link_into(&mut line, body);
        line
    }

    /// [`Self::link`], appending the line to `out`.
    pub fn link_into(&mut self, out: &mut String, body: &str) {
        let open = body.strip_suffix('}').unwrap_or(body);
        let start = out.len();
        out.reserve(body.len() + LINK_BYTES);
        out.push_str(open);
        if open.len() > 1 {
            out.push(',');
        }
        out.push_str("\"prev\":\"");
        out.push_str(&self.last);
        out.push('"');
        let digest = Sha256::digest(&out.as_bytes()[start..]);
        self.last.clear();
        push_hex(&mut self.last, &digest);
        out.push_str(",\"hash\":\"");
        out.push_str(&self.last);
        out.push_str("\"}");
    }
}

/// What a chained line says about itself.
#[derive(Debug, PartialEq, Eq)]
pub struct Link<'a> {
    pub prev: &'a str,
    pub hash: &'a str,
    /// The hash recomputed from the line matches `hash`.
    pub intact: bool,
}

/// Check one line (without its newline). `None`: it is not a chained event.
pub fn check(line: &[u8]) -> Option<Link<'_>> {
    let n = line.len();
    if n < HASH_SUFFIX_LEN + PREV_FIELD_LEN {
        return None;
    }
    let covered = &line[..n - HASH_SUFFIX_LEN];
    let suffix = &line[n - HASH_SUFFIX_LEN..];
    if !suffix.starts_with(br#","hash":""#) || !suffix.ends_with(b"\"}") {
        return None;
    }
    let hash = &suffix[9..9 + 64];
    let prev_field = &covered[covered.len() - PREV_FIELD_LEN..];
    if !matches!(prev_field[0], b',' | b'{')
        || &prev_field[1..9] != br#""prev":""#
        || prev_field[PREV_FIELD_LEN - 1] != b'"'
    {
        return None;
    }
    let prev = &prev_field[9..9 + 64];
    if !is_hex64(hash) || !is_hex64(prev) {
        return None;
    }
    let computed = Sha256::digest(covered);
    let intact = hex_eq(&computed, hash);
    Some(Link {
        prev: std::str::from_utf8(prev).ok()?,
        hash: std::str::from_utf8(hash).ok()?,
        intact,
    })
}

/// The `hash` of a chained line, without checking it (to resume a chain).
pub fn hash_of(line: &[u8]) -> Option<String> {
    check(line).map(|l| l.hash.to_string())
}

/// The event a chained line carries, without its `prev` and `hash` fields:
/// what [`Chain::link`] was given. `None`: not a chained line.
pub fn body_of(line: &str) -> Option<String> {
    check(line.as_bytes())?;
    let open = &line[..line.len() - HASH_SUFFIX_LEN - PREV_FIELD_LEN];
    Some(if open.is_empty() {
        "{}".to_string()
    } else {
        format!("{open}}}")
    })
}

fn is_hex64(b: &[u8]) -> bool {
    b.len() == 64 && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_eq(digest: &[u8], hex_text: &[u8]) -> bool {
    digest.len() * 2 == hex_text.len()
        && digest.iter().enumerate().all(|(i, b)| {
            hex_text[2 * i] == HEX[(b >> 4) as usize]
                && hex_text[2 * i + 1] == HEX[(b & 15) as usize]
        })
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Append `bytes` in lower-case hex (once per event, for its chain hash).
fn push_hex(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.chunks(32) {
        let mut digits = [0u8; 64];
        for (pair, b) in digits.chunks_exact_mut(2).zip(chunk) {
            pair[0] = HEX[(b >> 4) as usize];
            pair[1] = HEX[(b & 15) as usize];
        }
        out.push_str(
            std::str::from_utf8(&digits[..2 * chunk.len()]).expect("hex digits are ASCII"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_and_carry_the_previous_hash() {
        let mut c = Chain::new(None);
        let a = c.link(r#"{"v":1,"id":"a"}"#);
        let b = c.link(r#"{"v":1,"id":"b"}"#);
        let la = check(a.as_bytes()).unwrap();
        let lb = check(b.as_bytes()).unwrap();
        assert!(la.intact && lb.intact);
        assert_eq!(la.prev, GENESIS);
        assert_eq!(lb.prev, la.hash);
        assert_eq!(c.last(), lb.hash);
        let parsed: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(parsed["prev"], la.hash);
    }

    #[test]
    fn hex_is_what_the_formatter_writes() {
        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        for n in [0, 1, 8, 31, 32, 33, 64, 256] {
            let expected: String = bytes[..n].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex(&bytes[..n]), expected);
        }
    }

    #[test]
    fn an_edited_byte_breaks_the_hash() {
        let mut c = Chain::new(None);
        let line = c
            .link(r#"{"v":1,"user":"alice"}"#)
            .replace("alice", "alicf");
        assert!(!check(line.as_bytes()).unwrap().intact);
        assert!(check(b"{\"v\":1}").is_none());
    }

    #[test]
    fn body_of_undoes_link_for_relinking_into_another_chain() {
        let mut a = Chain::new(None);
        let mut b = Chain::new(None);
        b.link("{\"v\":1}");
        for body in [r#"{"v":1,"type":"policy"}"#, "{}"] {
            let line = a.link(body);
            assert_eq!(body_of(&line).as_deref(), Some(body));
            let relinked = b.link(&body_of(&line).unwrap());
            assert!(check(relinked.as_bytes()).unwrap().intact);
        }
        assert_eq!(body_of("{\"v\":1}"), None);
    }

    #[test]
    fn resumes_after_a_known_hash_and_ignores_garbage() {
        let mut c = Chain::new(None);
        let a = c.link("{}");
        let resumed = Chain::new(hash_of(a.as_bytes()));
        assert_eq!(resumed.last(), c.last());
        assert_eq!(Chain::new(Some("nothex".into())).last(), GENESIS);
    }
}
