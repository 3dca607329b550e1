//! Hostile and huge input: the policy must always return, never panic,
//! never overflow the stack, and fail closed.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pgward::policy::{LexOptions, Policy, PolicyConfig, PreparedRegistry, SessionScope, Verdict};

fn policy() -> Policy {
    Policy::from_config(&PolicyConfig::default()).expect("policy")
}

fn eval(p: &Policy, sql: &str) -> Verdict {
    p.evaluate(
        sql,
        &SessionScope::default(),
        LexOptions::default(),
        &PreparedRegistry::new(),
    )
    .verdict
}

fn rule(v: &Verdict) -> &str {
    match v {
        Verdict::Block(b) => &b.rule_id,
        Verdict::Monitored { rule_id, .. } | Verdict::Rewrite { rule_id, .. } => rule_id,
        Verdict::Allow => "allow",
    }
}

/// Run on a thread with a 2 MiB stack, like a default tokio worker.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("thread panicked")
}

#[test]
fn one_mebibyte_statement_returns() {
    let p = policy();
    let big = format!("SELECT '{}'", "x".repeat(1 << 20));
    assert_eq!(eval(&p, &big), Verdict::Allow);
    let list: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
    let sql = format!("DELETE FROM t WHERE id IN ({})", list.join(","));
    assert!(sql.len() > 500_000);
    assert_eq!(eval(&p, &sql), Verdict::Allow);
}

#[test]
fn ten_thousand_statements_return() {
    let p = policy();
    let mut sql = "SELECT 1;".repeat(10_000);
    assert_eq!(eval(&p, &sql), Verdict::Allow);
    sql.push_str("TRUNCATE t;");
    assert_eq!(rule(&eval(&p, &sql)), "truncate");
}

#[test]
fn deep_parentheses_do_not_overflow_the_stack() {
    let v = on_small_stack(|| {
        let p = policy();
        let sql = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        eval(&p, &sql)
    });
    assert_eq!(rule(&v), "unparsed");
    // Within the limit, it parses and passes.
    let v = on_small_stack(|| {
        let p = policy();
        let sql = format!("SELECT {}1{}", "(".repeat(150), ")".repeat(150));
        eval(&p, &sql)
    });
    assert_eq!(v, Verdict::Allow);
}

#[test]
fn deep_subqueries_and_operator_chains_do_not_overflow_the_stack() {
    let v = on_small_stack(|| {
        let p = policy();
        let sql = format!("SELECT {}1{}", "(SELECT ".repeat(5_000), ")".repeat(5_000));
        eval(&p, &sql)
    });
    assert_eq!(rule(&v), "unparsed");
    let v = on_small_stack(|| {
        let p = policy();
        let sql = format!(
            "DELETE FROM t WHERE {}",
            vec!["a = 1"; 100_000].join(" OR ")
        );
        eval(&p, &sql)
    });
    assert_eq!(rule(&v), "unparsed");
    let v = on_small_stack(|| {
        let p = policy();
        // Just under the operator limit: must parse, walk and drop on 2 MiB.
        let sql = format!("DELETE FROM t WHERE {}", vec!["a = 1"; 900].join(" OR "));
        eval(&p, &sql)
    });
    assert_eq!(v, Verdict::Allow);
    let v = on_small_stack(|| {
        let p = policy();
        let sql = format!("SELECT {}1", "NOT ".repeat(1_500));
        eval(&p, &sql)
    });
    assert_ne!(rule(&v), "panic");
    let v = on_small_stack(|| {
        let p = policy();
        let sql = format!("SELECT 1{}", "::int".repeat(1_900));
        eval(&p, &sql)
    });
    assert_ne!(rule(&v), "panic");
}

#[test]
fn nul_garbage_and_unterminated_input_fail_closed() {
    let p = policy();
    for sql in [
        "SELECT 1\0",
        "\0",
        "SELECT 'abc",
        "SELECT E'abc\\'",
        "SELECT \"abc",
        "SELECT 1 /* /* */",
        "SELECT $$abc",
        "SELECT $q$abc$$",
        "U&'\\zzzz'",
        "\u{1F600}\u{1F600}",
        "}{)(*&^%$#@!",
        "SELECT $",
        "(((((",
        ")))))",
    ] {
        let v = eval(&p, sql);
        assert_eq!(rule(&v), "unparsed", "{sql:?} → {v:?}");
    }
}

/// xorshift64*: deterministic pseudo-random numbers without a crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const FRAGMENTS: &[&str] = &[
    "'",
    "\"",
    "$$",
    "$a$",
    "$1",
    "--",
    "\r",
    "\n",
    "/*",
    "*/",
    ";",
    "(",
    ")",
    "E'",
    "U&'",
    "U&\"",
    "\\",
    "ONLY ",
    " WHERE ",
    " CURRENT OF ",
    "DELETE ",
    "TRUNCATE ",
    "::int",
    " OR true",
    "\0",
    "é",
    "😀",
    " UESCAPE '!'",
    "[",
    "]",
    ",",
    ".",
    "*",
    "=",
];

#[test]
fn fuzz_mutated_corpus_never_panics() {
    let corpus: Vec<String> = include_str!("corpus/policy.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(" | ").map(|(_, s)| s.to_string()))
        .collect();
    assert!(!corpus.is_empty());
    let p = policy();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let scope = SessionScope::default();
    for iter in 0..20_000 {
        let mut s: Vec<char> = corpus[rng.below(corpus.len())].chars().collect();
        for _ in 0..=rng.below(4) {
            match rng.below(5) {
                0 if !s.is_empty() => {
                    let i = rng.below(s.len());
                    s.remove(i);
                }
                1 => {
                    let i = rng.below(s.len() + 1);
                    let frag = FRAGMENTS[rng.below(FRAGMENTS.len())];
                    for (k, c) in frag.chars().enumerate() {
                        s.insert(i + k, c);
                    }
                }
                2 if !s.is_empty() => {
                    let i = rng.below(s.len());
                    s[i] = char::from_u32((rng.next() % 0x80) as u32).unwrap_or(' ');
                }
                3 if s.len() > 1 => {
                    let i = rng.below(s.len());
                    s.truncate(i);
                }
                _ => {
                    let other = &corpus[rng.below(corpus.len())];
                    s.push(';');
                    s.extend(other.chars());
                }
            }
        }
        let sql: String = s.into_iter().collect();
        let scs = rng.below(2) == 0;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let ev = p.evaluate(
                &sql,
                &scope,
                LexOptions {
                    standard_conforming_strings: scs,
                },
                &PreparedRegistry::new(),
            );
            let _ = p.explain(&sql, &scope);
            ev.verdict
        }));
        assert!(result.is_ok(), "iteration {iter}: panic on {sql:?}");
    }
}

#[test]
fn one_bad_statement_among_ten_thousand_blocks_the_string() {
    let p = policy();
    let mut sql = "SELECT 1;".repeat(5_000);
    sql.push_str("SELEC 2;");
    sql.push_str(&"SELECT 1;".repeat(5_000));
    assert_eq!(rule(&eval(&p, &sql)), "unparsed");
}
