//! The literal-insensitive template cache never changes a verdict: for every
//! statement of the corpus (plus plain reads written for this test) whose
//! facts the policy would store under a template key, classifying the same
//! statement with other literals gives the same facts, and evaluating
//! through the cache gives the same verdict as evaluating afresh.

mod corpus;

use corpus::{unescape, CORPUS};
use pgward::policy::classify::classify;
use pgward::policy::lexer::{self, lex, LexOptions, TokenKind};
use pgward::policy::{template, FactsMemo, Policy, PolicyConfig, PreparedRegistry, SessionScope};

/// Replacement literals chosen to trip folding and parsing: booleans as
/// strings, zero/one, huge numbers, quotes, backslashes, unicode.
const NUMBERS: &[&str] = &["0", "1", "99999999999999999999999999", "1.5e308", "0.0"];
const STRINGS: &[&str] = &["''", "'true'", "'1'", "'it''s'", "'\\'", "'ünï'", "'t'"];

/// `sql` with every number/plain-string literal replaced by the i-th choice.
fn mutate(sql: &str, i: usize) -> Option<String> {
    let lexed = lex(sql, LexOptions::default()).ok()?;
    let mut out = String::new();
    let mut last = 0;
    for t in &lexed.tokens {
        let with = match t.kind {
            TokenKind::Number => NUMBERS[i % NUMBERS.len()],
            TokenKind::String { .. } => STRINGS[i % STRINGS.len()],
            _ => continue,
        };
        out.push_str(&sql[last..t.span.start]);
        out.push_str(with);
        last = t.span.end;
    }
    out.push_str(&sql[last..]);
    Some(out)
}

fn statements() -> Vec<String> {
    let mut all: Vec<String> = CORPUS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains(" | "))
        .filter_map(|l| l.split_once(" | ").map(|(_, sql)| unescape(sql)))
        .collect();
    all.extend(
        [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "SELECT * FROM t WHERE 1 = 1",
            "SELECT * FROM t WHERE 'a' = 'a' OR x = 3",
            "SELECT a, b FROM s.t AS x JOIN u ON x.id = u.id WHERE x.n BETWEEN 1 AND 10",
            "SELECT * FROM t WHERE x IN (1, 2, 3) ORDER BY 1 LIMIT 10 OFFSET 5",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM (SELECT 1 AS a) s WHERE s.a = 1",
            "SELECT '1'::int + 2",
            "SELECT * FROM t WHERE d > DATE '2020-01-01' AND e = E'x\\ty'",
        ]
        .map(String::from),
    );
    all
}

#[test]
fn template_facts_hold_for_other_literals() {
    let mut checked = 0;
    for sql in statements() {
        let Ok(lexed) = lex(&sql, LexOptions::default()) else {
            continue;
        };
        let facts = classify(&sql);
        if template::key(&sql, &lexed).is_none() || !template::literal_insensitive(&facts) {
            continue;
        }
        checked += 1;
        for i in 0..STRINGS.len().max(NUMBERS.len()) {
            let Some(other) = mutate(&sql, i) else {
                continue;
            };
            let other_lexed = lex(&other, LexOptions::default()).unwrap();
            assert_eq!(
                template::key(&sql, &lexed),
                template::key(&other, &other_lexed),
                "{sql:?} vs {other:?}"
            );
            let mut expected = classify(&other);
            let got = template::instantiate(&facts, &other, &other_lexed);
            // A literal the parser rejects makes the statement unparsed;
            // the template (structurally a plain read) is allowed then.
            if expected[0].unparsed.is_some() {
                continue;
            }
            expected[0].text = lexer::text(
                &other,
                &lexer::Token {
                    kind: TokenKind::Other,
                    span: other_lexed.statements[0].bytes.clone(),
                },
            )
            .to_string();
            assert_eq!(got, expected, "{sql:?} vs {other:?}");
        }
    }
    assert!(checked >= 15, "only {checked} template statements checked");
}

#[test]
fn cached_verdicts_equal_fresh_verdicts() {
    let cached = Policy::from_config(&PolicyConfig::default()).unwrap();
    let scope = SessionScope::default();
    let reg = PreparedRegistry::new();
    for sql in statements() {
        for i in 0..3 {
            let text = if i == 0 {
                sql.clone()
            } else {
                mutate(&sql, i).unwrap_or(sql.clone())
            };
            let fresh = Policy::from_config(&PolicyConfig::default()).unwrap();
            let a = cached.evaluate(&text, &scope, LexOptions::default(), &reg);
            let b = fresh.evaluate(&text, &scope, LexOptions::default(), &reg);
            assert_eq!(a.verdict, b.verdict, "{text:?}");
            assert_eq!(a.statements, b.statements, "{text:?}");
        }
    }
}

/// A session's memo (the last exact text, the last template instance)
/// answers exactly what a fresh policy would, including each instance's own
/// text, whether the previous instance is still held or was released, and
/// whether the session wants the policy's lex (then it is the lexer's).
#[test]
fn a_session_memo_answers_what_a_fresh_policy_would() {
    for lex_wanted in [true, false] {
        memo_answers_what_a_fresh_policy_would(lex_wanted);
    }
}

fn memo_answers_what_a_fresh_policy_would(lex_wanted: bool) {
    let cached = Policy::from_config(&PolicyConfig::default()).unwrap();
    let scope = SessionScope::default();
    let reg = PreparedRegistry::new();
    let opts = LexOptions::default();
    let mut memo = FactsMemo::new();
    memo.set_lex_wanted(lex_wanted);
    let mut held = Vec::new();
    for sql in statements() {
        for i in 0..4 {
            let text = if i % 2 == 0 {
                sql.clone()
            } else {
                mutate(&sql, i).unwrap_or(sql.clone())
            };
            let fresh = Policy::from_config(&PolicyConfig::default()).unwrap();
            let (a, lexed) = cached.evaluate_lexed(&text, &scope, opts, &reg, &mut memo);
            let b = fresh.evaluate(&text, &scope, opts, &reg);
            assert_eq!(a.verdict, b.verdict, "{text:?}");
            assert_eq!(a.statements, b.statements, "{text:?}");
            if let Some(l) = lexed {
                assert_eq!(Ok(l.clone()), lex(&text, opts), "{text:?}");
                memo.recycle(l);
            }
            if i == 1 {
                held.push((text, a));
            }
        }
    }
    // What was held was never relabelled behind its holder's back.
    let fresh = Policy::from_config(&PolicyConfig::default()).unwrap();
    for (text, a) in &held {
        let again = fresh.evaluate(text, &scope, opts, &reg);
        assert_eq!(a.statements, again.statements, "{text:?}");
    }
}

/// `cache_entries = 0` turns the session memo off too: every evaluation
/// classifies (and so lexes) its text again.
#[test]
fn without_a_cache_the_memo_answers_nothing() {
    let scope = SessionScope::default();
    let reg = PreparedRegistry::new();
    let opts = LexOptions::default();
    let sql = "UPDATE t SET a = 1 WHERE id = 2";
    let lexes = |cfg: &PolicyConfig| {
        let p = Policy::from_config(cfg).unwrap();
        let mut memo = FactsMemo::new();
        (0..3)
            .map(|_| {
                p.evaluate_lexed(sql, &scope, opts, &reg, &mut memo)
                    .1
                    .is_some()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(lexes(&PolicyConfig::default()), [true, false, false]);
    let uncached = PolicyConfig {
        cache_entries: 0,
        ..PolicyConfig::default()
    };
    assert_eq!(lexes(&uncached), [true, true, true]);
}

/// The memo keeps verdicts (on its exact text, and the rules' verdict on a
/// template's instances), per policy: one session memo used with two
/// policies in turn (as across reloads), over texts and other-literal
/// instances of them, answers every statement as each policy would afresh.
#[test]
fn a_memo_used_across_reloads_answers_what_each_policy_would() {
    let strict = PolicyConfig::from_toml_str(
        r#"
[[custom]]
id = "no_reads_of_t"
kinds = ["SELECT"]
tables = ["t", "pgbench_*"]
action = "block"
"#,
    )
    .unwrap();
    let configs = [PolicyConfig::default(), strict];
    let policies = configs
        .iter()
        .map(|c| Policy::from_config(c).unwrap())
        .collect::<Vec<_>>();
    let scope = SessionScope::default();
    let reg = PreparedRegistry::new();
    let mut differ = 0;
    for scs in [true, false] {
        let opts = LexOptions {
            standard_conforming_strings: scs,
        };
        let mut memo = FactsMemo::new();
        for sql in statements() {
            // Pairs of statements under one policy, then the other: a
            // repeat or another instance right after a memo was filled.
            for round in 0..8 {
                let which = (round / 2) % 2;
                let text = match round % 3 {
                    0 => sql.clone(),
                    i => mutate(&sql, i + round).unwrap_or(sql.clone()),
                };
                let fresh = Policy::from_config(&configs[which]).unwrap();
                let (a, _) = policies[which].evaluate_lexed(&text, &scope, opts, &reg, &mut memo);
                let b = fresh.evaluate(&text, &scope, opts, &reg);
                assert_eq!(a.verdict, b.verdict, "{text:?} round {round} scs {scs}");
                assert_eq!(a.statements, b.statements, "{text:?} round {round}");
                let other = policies[1 - which].evaluate(&text, &scope, opts, &reg);
                differ += usize::from(a.verdict != other.verdict);
            }
        }
    }
    assert!(differ > 10, "the two policies judge differently ({differ})");
}

/// A session recognises the next instance of a template by comparing bytes
/// around the literals (`template::Shape`) instead of lexing it. Over the
/// corpus, other-literal instances and hostile one-byte edits (a byte
/// inserted or removed anywhere, gluing a literal to its neighbour or
/// changing its kind, a NUL byte), a shape never matches a text whose key
/// lexing gives differently, and what it matches it lexes exactly as the
/// lexer does.
#[test]
fn shapes_match_only_what_lexing_confirms() {
    const INSERTS: &[&str] = &[
        "N", "1", ".", "'", "e", "$", "-", ":", " ", "\\", "E'", "\0",
    ];
    let opts = LexOptions::default();
    let (mut shapes, mut matches, mut edits) = (0, 0, 0);
    let mut got = lexer::Lexed::default();
    for sql in statements() {
        let Ok(lexed) = lex(&sql, opts) else { continue };
        let Some(shape) = template::Shape::of(&sql, &lexed) else {
            continue;
        };
        shapes += 1;
        let key = template::key(&sql, &lexed);
        let mut others: Vec<String> = (0..STRINGS.len().max(NUMBERS.len()))
            .filter_map(|i| mutate(&sql, i))
            .collect();
        let boundaries = (0..=sql.len()).filter(|&i| sql.is_char_boundary(i));
        for at in boundaries {
            for ins in INSERTS {
                others.push(format!("{}{ins}{}", &sql[..at], &sql[at..]));
            }
            if let Some(c) = sql[at..].chars().next() {
                others.push(format!("{}{}", &sql[..at], &sql[at + c.len_utf8()..]));
            }
        }
        for other in &others {
            edits += 1;
            let matched = shape.instance(other, opts, Some(&mut got)).is_some();
            // Without a lex to write it reads only the literals' tokens, and
            // must answer the same.
            let span = shape.instance(other, opts, None);
            assert_eq!(span.is_some(), matched, "{sql:?} vs {other:?}");
            if !matched {
                continue;
            }
            assert_eq!(span, Some(got.statements[0].bytes.clone()));
            let other_lexed = lex(other, opts).expect("a text a shape matched lexes");
            assert_eq!(
                template::key(other, &other_lexed),
                key,
                "{sql:?} vs {other:?}"
            );
            assert_eq!(got, other_lexed, "{sql:?} vs {other:?}");
            matches += 1;
        }
    }
    assert!(shapes >= 15, "only {shapes} shapes");
    assert!(
        matches >= 100,
        "only {matches} of {edits} texts matched a shape"
    );
}
