//! Table-driven corpus (tests/corpus/policy.txt) plus scoping, modes and
//! prepared-statement tests against the public API.

mod corpus;

use corpus::{unescape, CORPUS};
use pgward::policy::{LexOptions, Policy, PolicyConfig, PreparedRegistry, SessionScope, Verdict};

fn app_scope() -> SessionScope {
    SessionScope {
        user: "app".into(),
        database: "prod".into(),
        application_name: "web".into(),
        client_addr: Some("10.0.0.7".parse().expect("ip")),
        identity: Default::default(),
    }
}

fn verdict_str(v: &Verdict) -> String {
    match v {
        Verdict::Allow => "allow".into(),
        Verdict::Monitored { rule_id, .. } => format!("monitor:{rule_id}"),
        Verdict::Block(b) => format!("block:{}", b.rule_id),
        Verdict::Rewrite { rule_id, .. } => format!("rewrite:{rule_id}"),
    }
}

fn policy(toml: &str) -> Policy {
    let cfg = PolicyConfig::from_toml_str(toml).expect("config");
    Policy::from_config(&cfg).expect("policy")
}

fn eval(p: &Policy, sql: &str, scope: &SessionScope) -> Verdict {
    p.evaluate(sql, scope, LexOptions::default(), &PreparedRegistry::new())
        .verdict
}

#[test]
fn corpus_verdicts_match_with_default_policy() {
    let p = policy("");
    let scope = app_scope();
    let mut total = 0;
    let mut failures = Vec::new();
    for (lineno, line) in CORPUS.lines().enumerate() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((expected, sql)) = line.split_once(" | ") else {
            let Some(expected) = line.strip_suffix(" |") else {
                panic!("corpus line {} malformed: {line}", lineno + 1);
            };
            total += 1;
            let got = verdict_str(&eval(&p, "", &scope));
            if got != expected.trim() {
                failures.push(format!(
                    "line {}: empty: expected {expected}, got {got}",
                    lineno + 1
                ));
            }
            continue;
        };
        total += 1;
        let sql = unescape(sql);
        let ev = p.evaluate(
            &sql,
            &scope,
            LexOptions::default(),
            &PreparedRegistry::new(),
        );
        let got = verdict_str(&ev.verdict);
        if got != expected.trim() {
            failures.push(format!(
                "line {}: {sql:?}: expected {expected}, got {got}\n    {:?}",
                lineno + 1,
                ev.statements
                    .iter()
                    .map(|s| (&s.kind, &s.unparsed))
                    .collect::<Vec<_>>()
            ));
        }
        // Second evaluation hits the cache and must agree.
        assert_eq!(
            verdict_str(
                &p.evaluate(
                    &sql,
                    &scope,
                    LexOptions::default(),
                    &PreparedRegistry::new()
                )
                .verdict
            ),
            got
        );
    }
    assert!(total >= 220, "corpus has only {total} statements");
    assert!(
        failures.is_empty(),
        "{} of {total} corpus entries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn block_message_names_rule_and_what() {
    let p = policy("");
    let Verdict::Block(b) = eval(&p, "TRUNCATE public.users", &app_scope()) else {
        panic!("not blocked")
    };
    assert_eq!(b.message, "pgward: TRUNCATE blocked by rule \"truncate\"");
    assert!(b.detail.contains("public.users"), "{}", b.detail);
    assert!(!b.hint.is_empty());
    let Verdict::Block(b) = eval(&p, "DELETE FROM t", &app_scope()) else {
        panic!()
    };
    assert_eq!(
        b.message,
        "pgward: DELETE without WHERE blocked by rule \"delete_without_where\""
    );
    let Verdict::Block(b) = eval(&p, "UPDATE t SET a=1 WHERE 1=1", &app_scope()) else {
        panic!()
    };
    assert_eq!(
        b.message,
        "pgward: UPDATE with a tautological WHERE blocked by rule \"tautological_where\""
    );
    let Verdict::Block(b) = eval(&p, "DROP TABLE t", &app_scope()) else {
        panic!()
    };
    assert_eq!(b.message, "pgward: DROP TABLE blocked by rule \"drop\"");
    let Verdict::Block(b) = eval(&p, "SELEC 1", &app_scope()) else {
        panic!()
    };
    assert_eq!(
        b.message,
        "pgward: unparseable statement blocked by rule \"unparsed\""
    );
    let Verdict::Block(b) = eval(&p, "SELECT 1; TRUNCATE t; SELECT 2", &app_scope()) else {
        panic!()
    };
    assert!(b.detail.contains("statement 2 of 3"), "{}", b.detail);
}

#[test]
fn except_users_lets_the_migrator_truncate() {
    let p = policy(
        r#"
[rules.truncate]
action = "block"
except_users = ["migrator"]
"#,
    );
    let mut s = app_scope();
    assert!(matches!(eval(&p, "TRUNCATE t", &s), Verdict::Block(_)));
    s.user = "migrator".into();
    assert_eq!(eval(&p, "TRUNCATE t", &s), Verdict::Allow);
    // Other rules still apply to the migrator.
    assert!(matches!(eval(&p, "DELETE FROM t", &s), Verdict::Block(_)));
}

#[test]
fn scoping_by_database_application_and_cidr() {
    let p = policy(
        r#"
[rules.delete_without_where]
databases = ["prod*"]
applications = ["web", "worker-*"]
client_cidrs = ["10.0.0.0/8", "fd00::/8"]
except_client_cidrs = ["10.9.0.0/16"]
"#,
    );
    let s = app_scope();
    assert!(matches!(eval(&p, "DELETE FROM t", &s), Verdict::Block(_)));
    let mut other = s.clone();
    other.database = "staging".into();
    assert_eq!(eval(&p, "DELETE FROM t", &other), Verdict::Allow);
    let mut other = s.clone();
    other.application_name = "psql".into();
    assert_eq!(eval(&p, "DELETE FROM t", &other), Verdict::Allow);
    let mut other = s.clone();
    other.application_name = "worker-7".into();
    assert!(matches!(
        eval(&p, "DELETE FROM t", &other),
        Verdict::Block(_)
    ));
    let mut other = s.clone();
    other.client_addr = Some("192.168.1.1".parse().expect("ip"));
    assert_eq!(eval(&p, "DELETE FROM t", &other), Verdict::Allow);
    other.client_addr = Some("10.9.1.1".parse().expect("ip"));
    assert_eq!(eval(&p, "DELETE FROM t", &other), Verdict::Allow);
    other.client_addr = Some("fd00::5".parse().expect("ip"));
    assert!(matches!(
        eval(&p, "DELETE FROM t", &other),
        Verdict::Block(_)
    ));
    other.client_addr = None;
    assert_eq!(eval(&p, "DELETE FROM t", &other), Verdict::Allow);
}

#[test]
fn global_monitor_mode_lets_everything_through_and_reports() {
    let p = policy(r#"mode = "monitor""#);
    match eval(&p, "TRUNCATE t", &app_scope()) {
        Verdict::Monitored { rule_id, reason } => {
            assert_eq!(rule_id, "truncate");
            assert!(reason.contains("TRUNCATE"), "{reason}");
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(eval(&p, "SELECT 1", &app_scope()), Verdict::Allow);
}

#[test]
fn per_rule_monitor_action() {
    let p = policy("[rules.truncate]\naction = \"monitor\"\n");
    assert!(matches!(
        eval(&p, "TRUNCATE t", &app_scope()),
        Verdict::Monitored { .. }
    ));
    assert!(matches!(
        eval(&p, "TRUNCATE t; DELETE FROM t", &app_scope()),
        Verdict::Block(_)
    ));
}

#[test]
fn on_unparsed_allow() {
    let p = policy(r#"on_unparsed = "allow""#);
    assert_eq!(eval(&p, "SELEC 1", &app_scope()), Verdict::Allow);
    assert_eq!(
        eval(&p, "SELECT 'unterminated", &app_scope()),
        Verdict::Allow
    );
    // Parsed statements are still judged.
    assert!(matches!(
        eval(&p, "SELEC 1; TRUNCATE t", &app_scope()),
        Verdict::Block(_)
    ));
}

#[test]
fn strict_profile_blocks_dynamic_sql() {
    let p = policy(r#"profile = "strict""#);
    for sql in [
        "DO $$ BEGIN END $$",
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
        "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM users $$",
        "CREATE RULE r AS ON DELETE TO users DO INSTEAD NOTHING",
    ] {
        match eval(&p, sql, &app_scope()) {
            Verdict::Block(b) => assert_eq!(b.rule_id, "dynamic_sql", "{sql}"),
            v => panic!("{sql}: {v:?}"),
        }
    }
    assert_eq!(
        eval(&policy(""), "DO $$ BEGIN END $$", &app_scope()),
        Verdict::Allow
    );
}

#[test]
fn custom_rule_with_table_glob() {
    let p = policy(
        r#"
[[custom]]
id = "no_audit_writes"
kinds = ["update", "delete", "truncate"]
tables = ["audit.*"]
access = "write"
action = "block"
hint = "the audit schema is append-only"

[[custom]]
id = "no_pii_reads"
tables = ["*.ssn_*"]
access = "read"
action = "monitor"

[[custom]]
id = "no_terminate"
functions = ["pg_terminate_backend"]
action = "block"
"#,
    );
    let s = app_scope();
    match eval(&p, "UPDATE audit.log SET x = 1 WHERE id = 1", &s) {
        Verdict::Block(b) => {
            assert_eq!(b.rule_id, "no_audit_writes");
            assert_eq!(b.hint, "the audit schema is append-only");
            assert!(b.detail.contains("audit.log"), "{}", b.detail);
        }
        v => panic!("{v:?}"),
    }
    assert!(matches!(
        eval(
            &p,
            "WITH d AS (DELETE FROM audit.log WHERE id = 1 RETURNING 1) SELECT 1",
            &s
        ),
        Verdict::Block(_)
    ));
    assert_eq!(
        eval(&p, "INSERT INTO audit.log VALUES (1)", &s),
        Verdict::Allow
    );
    assert_eq!(
        eval(
            &p,
            "DELETE FROM public.x WHERE id IN (SELECT id FROM audit.log)",
            &s
        ),
        Verdict::Allow
    );
    assert!(matches!(
        eval(&p, "SELECT * FROM hr.ssn_numbers", &s),
        Verdict::Monitored { .. }
    ));
    assert!(matches!(
        eval(&p, "SELECT pg_terminate_backend(123)", &s),
        Verdict::Block(_)
    ));
    assert!(matches!(
        eval(&p, "SELECT pg_catalog.pg_terminate_backend(123)", &s),
        Verdict::Block(_)
    ));
}

#[test]
fn custom_allow_rule_is_an_exemption() {
    let p = policy(
        r#"
[[custom]]
id = "staging_truncate_ok"
kinds = ["truncate"]
tables = ["staging.*"]
action = "allow"
"#,
    );
    assert_eq!(
        eval(&p, "TRUNCATE staging.import", &app_scope()),
        Verdict::Allow
    );
    assert!(matches!(
        eval(&p, "TRUNCATE public.users", &app_scope()),
        Verdict::Block(_)
    ));
}

/// Evaluate `sql` as a session sending it would, and update the session's
/// prepared statements as the proxy does after forwarding it.
fn send(p: &Policy, s: &SessionScope, sql: &str, reg: &mut PreparedRegistry) -> Verdict {
    let ev = p.evaluate(sql, s, LexOptions::default(), reg);
    p.observe_prepared(&ev, reg, s);
    ev.verdict
}

#[test]
fn prepared_statements_across_query_strings() {
    let p = policy("");
    let s = app_scope();
    let mut reg = PreparedRegistry::new();
    let run = |sql: &str, reg: &mut PreparedRegistry| send(&p, &s, sql, reg);
    assert_eq!(
        run("PREPARE Wipe AS DELETE FROM users", &mut reg),
        Verdict::Allow
    );
    assert!(reg.lookup("wipe").is_some());
    match run("EXECUTE wipe", &mut reg) {
        Verdict::Block(b) => assert_eq!(b.rule_id, "delete_without_where"),
        v => panic!("{v:?}"),
    }
    // Harmless names follow what is sent.
    run(
        "PREPARE one(int) AS DELETE FROM users WHERE id = $1",
        &mut reg,
    );
    run("PREPARE a AS TRUNCATE t; PREPARE b AS SELECT 1", &mut reg);
    assert_eq!(reg.len(), 4);
    run("DEALLOCATE one", &mut reg);
    assert!(reg.lookup("one").is_none());
    run("DISCARD ALL", &mut reg);
    // A name whose EXECUTE would be blocked is kept: the DEALLOCATE or
    // DISCARD may never have run (an aborted transaction, an earlier
    // error in the same Query), and a second PREPARE of a name in use
    // fails on the server, which keeps the first body.
    let mut kept: Vec<_> = ["wipe", "a", "b", "one"]
        .into_iter()
        .filter(|n| reg.lookup(n).is_some())
        .collect();
    kept.sort();
    assert_eq!(kept, ["a", "wipe"]);
    run("DEALLOCATE wipe", &mut reg);
    run("PREPARE wipe AS SELECT 1", &mut reg);
    assert!(matches!(run("EXECUTE wipe", &mut reg), Verdict::Block(_)));
    run("SELECT 1/0; DEALLOCATE ALL", &mut reg);
    assert!(matches!(run("EXECUTE a", &mut reg), Verdict::Block(_)));
    // Under a policy that allows the body, the same names are forgotten.
    let lenient = policy(
        "[rules.delete_without_where]\naction = \"allow\"\n[rules.truncate]\naction = \"allow\"",
    );
    send(&lenient, &s, "DISCARD ALL", &mut reg);
    assert!(reg.is_empty());
}

#[test]
fn standard_conforming_strings_off_changes_the_split() {
    let p = policy("");
    let s = app_scope();
    let sql = r"SELECT 'a\'; DELETE FROM users; --'";
    let on = p.evaluate(
        sql,
        &s,
        LexOptions {
            standard_conforming_strings: true,
        },
        &PreparedRegistry::new(),
    );
    assert!(
        matches!(on.verdict, Verdict::Block(_)),
        "with scs on the DELETE is a real statement"
    );
    let off = p.evaluate(
        sql,
        &s,
        LexOptions {
            standard_conforming_strings: false,
        },
        &PreparedRegistry::new(),
    );
    assert_eq!(
        off.verdict,
        Verdict::Allow,
        "with scs off it is inside a string: {off:?}"
    );
    assert_eq!(off.statements.len(), 1);
    let off = p.evaluate(
        r"DELETE FROM t WHERE name = 'a\'b'",
        &s,
        LexOptions {
            standard_conforming_strings: false,
        },
        &PreparedRegistry::new(),
    );
    assert_eq!(off.verdict, Verdict::Allow, "{off:?}");
}

#[test]
fn function_call_message() {
    let p = policy("");
    assert!(matches!(
        p.evaluate_function_call(1234, &app_scope()).verdict,
        Verdict::Block(_)
    ));
    let p = policy("[rules.function_call]\nexcept_users = [\"app\"]\n");
    assert_eq!(
        p.evaluate_function_call(1234, &app_scope()).verdict,
        Verdict::Allow
    );
}

#[test]
fn explain_reports_facts_rules_and_verdict() {
    let p = policy("");
    let out = p.explain("SELECT 1; DELETE FROM ONLY public.users", &app_scope());
    assert!(out.contains("DELETE ONLY public.users"), "{out}");
    assert!(out.contains("delete_without_where"), "{out}");
    assert!(out.contains("verdict: BLOCK"), "{out}");
}

#[test]
fn config_errors_are_values() {
    assert!(PolicyConfig::from_toml_str("mode = \"loud\"").is_err());
    assert!(PolicyConfig::from_toml_str("[rules.truncat]\naction = \"block\"").is_err());
    assert!(PolicyConfig::from_toml_str("[rules.truncate]\nexcept_user = [\"x\"]").is_err());
    let bad_cidr =
        PolicyConfig::from_toml_str("[rules.truncate]\nclient_cidrs = [\"10.0.0.0/40\"]")
            .expect("toml");
    assert!(Policy::from_config(&bad_cidr).is_err());
    let bad_kind = PolicyConfig::from_toml_str(
        "[[custom]]\nid = \"x\"\nkinds = [\"delet\"]\naction = \"block\"",
    )
    .expect("toml");
    assert!(Policy::from_config(&bad_kind).is_err());
    let dup = PolicyConfig::from_toml_str(
        "[[custom]]\nid = \"truncate\"\nkinds = [\"delete\"]\naction = \"block\"",
    )
    .expect("toml");
    assert!(Policy::from_config(&dup).is_err());
    let empty =
        PolicyConfig::from_toml_str("[[custom]]\nid = \"x\"\naction = \"block\"").expect("toml");
    assert!(Policy::from_config(&empty).is_err());
}

/// Names whose EXECUTE would be blocked are never forgotten, so a session
/// that already holds MAX_KEPT_PREPARED prepared statements cannot add
/// another one of those: a PREPARE/DEALLOCATE loop cannot grow pgward's
/// memory without end. Harmless PREPAREs and re-PREPAREs of a held name
/// are unaffected.
#[test]
fn a_session_cannot_pile_up_prepared_statements_pgward_must_keep() {
    use pgward::policy::MAX_KEPT_PREPARED;
    let p = policy("");
    let s = app_scope();
    let mut reg = PreparedRegistry::new();
    let run = |sql: &str, reg: &mut PreparedRegistry| send(&p, &s, sql, reg);
    for i in 0..MAX_KEPT_PREPARED - 1 {
        assert_eq!(
            run(&format!("PREPARE w{i} AS DELETE FROM t"), &mut reg),
            Verdict::Allow
        );
        run(&format!("DEALLOCATE w{i}"), &mut reg);
    }
    assert_eq!(reg.len(), MAX_KEPT_PREPARED - 1);
    assert_eq!(
        run("PREPARE last AS DELETE FROM t", &mut reg),
        Verdict::Allow
    );
    match run("PREPARE one_more AS DELETE FROM t", &mut reg) {
        Verdict::Block(b) => {
            assert_eq!(b.rule_id, "delete_without_where");
            assert!(b.message.contains("PREPARE one_more"), "{}", b.message);
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(reg.len(), MAX_KEPT_PREPARED);
    assert_eq!(run("PREPARE fine AS SELECT 1", &mut reg), Verdict::Allow);
    assert_eq!(run("PREPARE w0 AS DELETE FROM t", &mut reg), Verdict::Allow);
    assert!(matches!(run("EXECUTE w7", &mut reg), Verdict::Block(_)));
}
