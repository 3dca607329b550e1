//! The audit redacts a statement from the policy's own tokens when the
//! policy lexed it (`Policy::evaluate_lexed`), instead of lexing it again.
//! That must give exactly what a fresh lex of the statement gives — same
//! redacted text, same fingerprint — over the policy corpus, the
//! differential corpus, and both lexing modes.

mod corpus;

use corpus::{unescape, CORPUS};
use pgward::audit::redact::{redact, PolicyTokens};
use pgward::policy::{FactsMemo, LexOptions, Policy, PolicyConfig, PreparedRegistry, SessionScope};

fn texts() -> Vec<String> {
    let mut out: Vec<String> = CORPUS
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" | "))
        .map(|l| unescape(l.split_once(" | ").expect("corpus line").1))
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential_corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("differential corpus")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("corpus file");
        // Each file as one multi-statement Query, and line by line.
        out.extend(text.lines().map(str::to_string));
        out.push(text);
    }
    out.extend(
        [
            "CREATE ROLE bob LOGIN PASSWORD 'hunter2'",
            "alter user bob with encrypted password E'hunter2'",
            "ALTER ROLE bob PASSWORD $p$hunter2$p$ VALID UNTIL '2030-01-01'",
            "SELECT * FROM t WHERE a = $1 AND b = 'x''y' AND c IN (42, E'\\n', $$z$$, B'101', -7)",
            "SELECT 'a\\'b' FROM t; SELECT U&'d\\0061t' FROM t",
            "select /* c */ 1 -- d\n; select 2;;select 'three'",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4242;",
        ]
        .map(str::to_string),
    );
    out
}

fn policy() -> Policy {
    Policy::from_config(&PolicyConfig::from_toml_str("").expect("config")).expect("policy")
}

/// Every statement of `sql` redacted from the policy's tokens equals a fresh
/// redaction; returns how many statements came with tokens.
fn check(p: &Policy, sql: &str, opts: LexOptions) -> usize {
    let (eval, lexed) = p.evaluate_lexed(
        sql,
        &SessionScope::default(),
        opts,
        &PreparedRegistry::new(),
        &mut FactsMemo::new(),
    );
    let Some(lexed) = lexed else { return 0 };
    let tokens = PolicyTokens {
        sql,
        lexed: &lexed,
        options: opts,
    };
    let mut n = 0;
    for (i, f) in eval.statements.iter().enumerate() {
        for literals in [true, false] {
            for max in [1 << 20, 24] {
                let fresh = redact(&f.text, literals, max, opts);
                match tokens.redact(i, &f.text, literals, max) {
                    Some(reused) => {
                        assert_eq!(reused, fresh, "{sql:?} statement {i}");
                        n += 1;
                    }
                    // Only when the facts do not line up with the lexed
                    // statements (e.g. an unlexable text's single fact).
                    None => assert!(
                        lexed.statements.len() != eval.statements.len()
                            || sql.get(lexed.statements[i].bytes.clone()) != Some(&f.text),
                        "{sql:?} statement {i}: tokens refused although they line up"
                    ),
                }
            }
        }
    }
    n
}

#[test]
fn policy_tokens_redact_exactly_like_a_fresh_lex_over_the_corpora() {
    let mut reused = 0;
    for scs in [true, false] {
        let opts = LexOptions {
            standard_conforming_strings: scs,
        };
        // A fresh policy per pass: every text is an exact-cache miss once.
        let p = policy();
        for sql in texts() {
            reused += check(&p, &sql, opts);
        }
    }
    assert!(
        reused > 1000,
        "only {reused} redactions came from policy tokens"
    );
}

#[test]
fn template_hits_hand_over_tokens_and_exact_hits_do_not() {
    let p = policy();
    let opts = LexOptions::default();
    // Plain reads are cached by shape: every new literal is lexed (tokens
    // handed over) but classified from the template.
    for aid in [1, 22, 333, 4444, -5] {
        let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}");
        assert_eq!(check(&p, &sql, opts), 4, "{sql}");
    }
    // A repeated write comes from the exact-text cache: nothing is lexed,
    // so the audit uses its own cache (or lexes) instead.
    let sql = "UPDATE t SET a = 1 WHERE id = 2";
    assert_eq!(check(&p, sql, opts), 4);
    let (_, lexed) = p.evaluate_lexed(
        sql,
        &SessionScope::default(),
        opts,
        &PreparedRegistry::new(),
        &mut FactsMemo::new(),
    );
    assert!(lexed.is_none());
}

#[test]
fn tokens_of_another_text_are_refused() {
    let p = policy();
    let opts = LexOptions::default();
    let sql = "SELECT 1; SELECT 'secret'";
    let (_, lexed) = p.evaluate_lexed(
        sql,
        &SessionScope::default(),
        opts,
        &PreparedRegistry::new(),
        &mut FactsMemo::new(),
    );
    let lexed = lexed.expect("first evaluation lexes");
    let tokens = PolicyTokens {
        sql,
        lexed: &lexed,
        options: opts,
    };
    assert!(tokens.redact(1, "SELECT 'other!'", true, 1 << 20).is_none());
    assert!(tokens.redact(2, "SELECT 'secret'", true, 1 << 20).is_none());
    let r = tokens.redact(1, "SELECT 'secret'", true, 1 << 20).unwrap();
    assert_eq!(r.sql, "SELECT $1");
}
