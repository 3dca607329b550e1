//! The soft-delete rewrite over the whole policy corpus (every DELETE form
//! the rules are tested with, hostile ones included), with the rules that
//! would block most of them switched off so the rewriter sees them all.
//! For every statement: either nothing to rewrite, or a refusal from a short
//! known list, or a rewrite whose text
//! - splits into the same number of statements, the untouched ones byte for
//!   byte the client's,
//! - deletes from no soft-delete table any more (every such DELETE became an
//!   UPDATE of the same table), and
//! - is a fixed point: evaluating it again rewrites nothing.

mod corpus;

use corpus::{unescape, CORPUS};
use pgward::policy::classify::classify_with;
use pgward::policy::lexer::{lex, LexOptions};
use pgward::policy::{ModOp, Policy, PolicyConfig, PreparedRegistry, SessionScope, Verdict};

const POLICY: &str = r#"
[rules.delete_without_where]
action = "allow"
[rules.tautological_where]
action = "allow"
[rules.update_without_where]
action = "allow"
[rules.unparsed]
action = "allow"

[[soft_delete]]
table = "public.users"
deleted_by = "deleted_by"
reason = "why"

[[soft_delete]]
table = "s.users"
"#;

/// Statements the rewriter refuses (blocks) rather than guess, with why.
const REFUSED: &[&str] = &[
    // U&"…" names: the parser decodes them, the splicer does not.
    "DELETE FROM U&\"users\"",
    "DELETE FROM U&\"\\0075sers\"",
    "DELETE FROM U&\"!0075sers\" UESCAPE '!'",
    // MERGE … DELETE has no soft form pgward writes.
    "MERGE INTO users u USING staging s ON true WHEN MATCHED THEN DELETE",
    "MERGE INTO users u USING staging s ON u.id = s.id WHEN MATCHED THEN DELETE",
    "MERGE INTO users u USING staging s ON true WHEN MATCHED AND s.deleted THEN DELETE",
    // (U& again)
    "DELETE FROM U&\"users\" WHERE id = 1",
];

fn scope() -> SessionScope {
    SessionScope {
        user: "o'hara\\ \"x\"; DELETE FROM users; --".into(),
        database: "app".into(),
        ..Default::default()
    }
}

fn is_soft_table(n: &pgward::policy::QualifiedName) -> bool {
    n.name == "users" && matches!(n.schema.as_deref(), None | Some("public") | Some("s"))
}

#[test]
fn every_corpus_delete_is_rewritten_exactly_or_refused() {
    let cfg = PolicyConfig::from_toml_str(POLICY).expect("policy");
    let policy = Policy::from_config(&cfg).expect("compiles");
    let reg = PreparedRegistry::new();
    let lex_opts = LexOptions::default();
    let (mut rewritten, mut refused) = (0, Vec::new());
    for line in CORPUS.lines() {
        let Some((_, sql)) = line.split_once(" | ") else {
            continue;
        };
        if line.starts_with('#') {
            continue;
        }
        let sql = unescape(sql);
        let eval = policy.evaluate(&sql, &scope(), lex_opts, &reg);
        match &eval.verdict {
            Verdict::Rewrite {
                sql: new,
                rewritten: which,
                ..
            } => {
                rewritten += 1;
                let old = lex(&sql, lex_opts).expect("original lexes");
                let lexed = lex(new, lex_opts).expect("rewrite lexes");
                assert_eq!(
                    lexed.statements.len(),
                    old.statements.len(),
                    "{sql}\n=> {new}"
                );
                for i in 0..old.statements.len() {
                    let before = &sql[old.statements[i].bytes.clone()];
                    let after = &new[lexed.statements[i].bytes.clone()];
                    if !which.contains(&i) {
                        assert_eq!(before, after, "{sql}\n=> {new}");
                    }
                }
                let facts = classify_with(new, lex_opts);
                for f in &facts {
                    assert!(f.unparsed.is_none(), "{new}: {:?}", f.unparsed);
                    let body = f.prepare.as_ref().map_or(f, |(_, b)| b);
                    assert!(
                        !body
                            .modifications
                            .iter()
                            .any(|m| m.op == ModOp::Delete && is_soft_table(&m.table)),
                        "a DELETE survived: {new}"
                    );
                }
                let again = policy.evaluate(new, &scope(), lex_opts, &reg);
                assert!(
                    !matches!(again.verdict, Verdict::Rewrite { .. }),
                    "not a fixed point: {new}"
                );
            }
            Verdict::Block(b) if b.rule_id == "soft_delete" => refused.push(sql.clone()),
            _ => {}
        }
    }
    assert_eq!(refused, REFUSED, "refusals changed");
    println!(
        "{rewritten} corpus strings rewritten, {} refused",
        refused.len()
    );
    assert!(rewritten >= 60, "only {rewritten} rewrites");
}

/// Arbitrary and corpus-built frames through the seams of a session whose
/// policy has soft-delete tables (Bind/Execute tracked, replies re-tagged):
/// no input panics, and re-tagging never invents a tag.
#[test]
fn seams_with_soft_delete_survive_arbitrary_frames() {
    use pgward::proxy::seams::{BackendAction, SessionSeams};
    use std::sync::Arc;

    let cfg = PolicyConfig::from_toml_str(POLICY).expect("policy");
    let policy = Arc::new(arc_swap::ArcSwap::from_pointee(
        Policy::from_config(&cfg).expect("compiles"),
    ));
    let mut seams = SessionSeams::new(policy, scope(), 1);
    seams.startup_complete();
    let sqls: Vec<String> = CORPUS
        .lines()
        .filter_map(|l| l.split_once(" | ").map(|(_, s)| unescape(s)))
        .collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cstr = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        b
    };
    for _ in 0..20_000 {
        let r = next();
        let sql = &sqls[(r >> 8) as usize % sqls.len()];
        let name = ["", "s1", "p"][(r >> 20) as usize % 3];
        let junk: Vec<u8> = (0..(r >> 40) % 12).map(|_| next() as u8).collect();
        match r % 12 {
            0 => drop(seams.on_frontend(b'Q', &cstr(sql))),
            1 => {
                let mut b = cstr(name);
                b.extend(cstr(sql));
                b.extend([0, 0]);
                drop(seams.on_frontend(b'P', &b));
            }
            2 => {
                let mut b = cstr(name);
                b.extend(cstr(name));
                b.extend(&junk);
                drop(seams.on_frontend(b'B', &b));
            }
            3 => {
                let mut b = cstr(name);
                b.extend([0, 0, 0, 1]);
                drop(seams.on_frontend(b'E', &b));
            }
            4 => drop(seams.on_frontend(b'S', b"")),
            5 => drop(seams.on_frontend([b'B', b'E', b'C'][(r >> 4) as usize % 3], &junk)),
            6 | 7 => {
                let tag = ["UPDATE 3", "DELETE 1", "SELECT 2", "UPDATE"][(r >> 4) as usize % 4];
                if let BackendAction::Replace(frame) = seams.on_backend(b'C', &cstr(tag)) {
                    assert_eq!(&frame[5..frame.len() - 1], b"DELETE 3", "from {tag}");
                }
            }
            8 => drop(seams.on_backend(b'E', b"SERROR\0C42000\0Mx\0\0")),
            9 => drop(seams.on_backend(b'Z', b"I")),
            10 => drop(seams.on_backend([b's', b'I'][(r >> 4) as usize % 2], b"")),
            _ => drop(seams.on_backend(b'C', &junk)),
        }
    }
}
