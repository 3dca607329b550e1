//! The policy corpus shared by the corpus and oracle tests: one statement per
//! line as `expected | sql`, with `{CR}`, `{LF}`, `{NUL}`, `{TAB}` escapes.
#![allow(dead_code)]

pub const CORPUS: &str = include_str!("policy.txt");

pub fn unescape(s: &str) -> String {
    s.replace("{CR}", "\r")
        .replace("{LF}", "\n")
        .replace("{NUL}", "\0")
        .replace("{TAB}", "\t")
}
