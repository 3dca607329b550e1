//! Postgres' own grammar judges pgward's classifier.
//!
//! Every corpus statement is parsed twice: by pgward (sqlparser plus its
//! lexer and fallbacks) and by libpg_query (the `pg_query` crate: the real
//! PostgreSQL parser). Where Postgres' parse tree and pgward's facts disagree
//! on what matters to the rules — how many statements, which ones TRUNCATE,
//! which tables a DELETE/UPDATE targets (and with ONLY), whether it has a
//! WHERE — pgward must have blocked the statement. A disagreement on a
//! statement pgward lets through fails the test. The agreement rate is
//! printed (`cargo test --test policy_oracle -- --nocapture`).

mod corpus;

use corpus::{unescape, CORPUS};
use pg_query::protobuf::node::Node as N;
use pg_query::NodeRef;
use pgward::policy::{
    Filter, LexOptions, ModOp, Policy, PolicyConfig, PreparedRegistry, SessionScope,
    StatementFacts, StatementKind, Verdict,
};

fn corpus() -> Vec<String> {
    CORPUS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(" | ").map(|(_, sql)| unescape(sql)))
        .collect()
}

/// What the rules need to know, as Postgres' parse tree says it.
#[derive(Debug, Default, PartialEq)]
struct Truth {
    statements: usize,
    /// Top-level kinds the rules act on (DML and TRUNCATE/DROP); others "other".
    kinds: Vec<&'static str>,
    truncates: bool,
    /// (op, table, only, has_where) for every DELETE/UPDATE that runs.
    modifications: Vec<(&'static str, String, bool, bool)>,
}

/// Statements whose nested DML does not run now: their bodies are judged
/// when they are executed (EXECUTE) or are dynamic SQL by design.
fn defers_execution(stmt: &N) -> bool {
    matches!(
        stmt,
        N::PrepareStmt(_) | N::RuleStmt(_) | N::CreateFunctionStmt(_) | N::ViewStmt(_)
    ) || matches!(stmt, N::ExplainStmt(e) if !e.options.iter().any(is_analyze_on))
}

/// `ANALYZE`, `ANALYZE true`, `ANALYZE on`, `ANALYZE 1` in EXPLAIN's options.
fn is_analyze_on(option: &pg_query::protobuf::Node) -> bool {
    let Some(N::DefElem(d)) = &option.node else {
        return false;
    };
    if !d.defname.eq_ignore_ascii_case("analyze") {
        return false;
    }
    match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
        None => true,
        Some(N::String(s)) => {
            !matches!(s.sval.to_ascii_lowercase().as_str(), "false" | "off" | "0")
        }
        Some(N::Integer(i)) => i.ival != 0,
        Some(N::Boolean(b)) => b.boolval,
        Some(_) => true,
    }
}

fn postgres_truth(sql: &str) -> Option<Truth> {
    let parsed = pg_query::parse(sql).ok()?;
    let mut truth = Truth {
        statements: parsed.protobuf.stmts.len(),
        ..Truth::default()
    };
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        truth.kinds.push(match node {
            N::SelectStmt(_) => "select",
            N::InsertStmt(_) => "insert",
            N::UpdateStmt(_) => "update",
            N::DeleteStmt(_) => "delete",
            N::MergeStmt(_) => "merge",
            N::TruncateStmt(_) => "truncate",
            N::DropStmt(_) | N::DropdbStmt(_) | N::DropOwnedStmt(_) => "drop",
            _ => "other",
        });
        if defers_execution(node) {
            continue;
        }
        for (n, _, _, _) in node.nodes() {
            match n {
                NodeRef::TruncateStmt(_) => truth.truncates = true,
                NodeRef::DeleteStmt(d) => {
                    if let Some(rel) = &d.relation {
                        truth.modifications.push((
                            "delete",
                            rel.relname.clone(),
                            !rel.inh,
                            d.where_clause.is_some(),
                        ));
                    }
                }
                NodeRef::UpdateStmt(u) => {
                    if let Some(rel) = &u.relation {
                        truth.modifications.push((
                            "update",
                            rel.relname.clone(),
                            !rel.inh,
                            u.where_clause.is_some(),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    truth.modifications.sort();
    Some(truth)
}

fn pgward_view(facts: &[StatementFacts]) -> Truth {
    let mut view = Truth {
        statements: facts.len(),
        ..Truth::default()
    };
    for f in facts {
        view.kinds.push(match f.kind.name() {
            k @ ("select" | "insert" | "update" | "delete" | "merge" | "truncate" | "drop") => k,
            _ => "other",
        });
        // PREPARE bodies run at EXECUTE; EXECUTE carries the body's facts
        // from the session's registry, which no grammar can see.
        if f.prepare.is_some() || f.execute.is_some() || f.dynamic_sql {
            continue;
        }
        if f.executed_kinds.contains(&StatementKind::Truncate) {
            view.truncates = true;
        }
        for m in &f.modifications {
            let op = match m.op {
                ModOp::Delete => "delete",
                ModOp::Update => "update",
                _ => continue,
            };
            view.modifications.push((
                op,
                m.table.name.clone(),
                m.only,
                !matches!(m.filter, Filter::Missing),
            ));
        }
    }
    view.modifications.sort();
    view
}

#[test]
fn postgres_grammar_agrees_or_pgward_blocks() {
    let policy = Policy::from_config(&PolicyConfig::default()).unwrap();
    let scope = SessionScope {
        user: "app".into(),
        database: "prod".into(),
        application_name: "web".into(),
        client_addr: None,
        identity: Default::default(),
    };
    let (mut judged, mut agree, mut rejected_by_postgres) = (0, 0, 0);
    let mut unsafe_disagreements = Vec::new();
    let mut blocked_disagreements = Vec::new();
    for sql in corpus() {
        let eval = policy.evaluate(
            &sql,
            &scope,
            LexOptions::default(),
            &PreparedRegistry::new(),
        );
        let Some(truth) = postgres_truth(&sql) else {
            rejected_by_postgres += 1;
            continue;
        };
        judged += 1;
        let ours = pgward_view(&eval.statements);
        let classified = eval.statements.iter().all(|f| f.unparsed.is_none());
        if classified && ours == truth {
            agree += 1;
            continue;
        }
        let entry = format!("{sql:?}\n    postgres: {truth:?}\n    pgward:   {ours:?}");
        if matches!(eval.verdict, Verdict::Block(_)) {
            blocked_disagreements.push(entry);
        } else {
            unsafe_disagreements.push(entry);
        }
    }
    println!(
        "oracle: {judged} statements Postgres accepts ({rejected_by_postgres} it rejects); \
         facts agree on {agree} ({:.1} %); {} disagreements, all blocked by pgward",
        100.0 * agree as f64 / judged.max(1) as f64,
        blocked_disagreements.len()
    );
    for d in &blocked_disagreements {
        println!("  blocked: {d}");
    }
    assert!(
        unsafe_disagreements.is_empty(),
        "pgward's facts disagree with Postgres' grammar on statements it lets through:\n{}",
        unsafe_disagreements.join("\n")
    );
    assert!(
        judged > 200,
        "the corpus must give the oracle enough to judge"
    );
}
