//! The real PostgreSQL client tools through pgward: a psql script with
//! `\copy` both ways, a transaction and `\gset`, and pgbench in every query
//! mode, with reconnects.

mod common;

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use common::{fresh_database, pg_bin, proxy_config, start_proxy, SCRAM_PW, SCRAM_USER};

fn conninfo(addr: SocketAddr, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} dbname={db}",
        addr.port()
    )
}

/// Run a client binary with the password in the environment; the proxy keeps
/// running on the test's runtime meanwhile.
async fn run_tool(name: &str, args: &[&str], limit: Duration) -> Output {
    let mut cmd = tokio::process::Command::new(pg_bin(name));
    cmd.args(args)
        .env("PGPASSWORD", SCRAM_PW)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_with_copy_transaction_and_gset() {
    // The default policy: nothing in this script is something it blocks.
    let proxy = start_proxy(proxy_config()).await;
    let db = fresh_database("cli_psql");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let script = dir.path().join("script.sql");
    std::fs::write(
        &input,
        "1,alpha,1.5\n2,\"with, comma\",2.25\n3,\"quote \"\"q\"\"\",\n4,ünïcødé,4\n",
    )
    .unwrap();
    std::fs::write(
        &script,
        format!(
            r#"\set QUIET on
CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL, score numeric);
\copy t from '{input}' csv
SELECT count(*) AS loaded FROM t \gset
\echo loaded=:loaded
BEGIN;
UPDATE t SET score = score * 2 WHERE id <= 2;
INSERT INTO t VALUES (5, 'five', 5);
SAVEPOINT sp;
INSERT INTO t VALUES (6, 'six', 6);
ROLLBACK TO SAVEPOINT sp;
COMMIT;
BEGIN;
DELETE FROM t WHERE id = 1;
ROLLBACK;
SELECT sum(score) AS total, max(id) AS top FROM t \gset
\echo total=:total top=:top
\copy (SELECT id, name, score FROM t ORDER BY id) to '{output}' csv
\pset format unaligned
\pset tuples_only on
SELECT string_agg(name, '|' ORDER BY id) FROM t;
SELECT current_user, current_database() = '{db}';
"#,
            input = input.display(),
            output = output.display(),
        ),
    )
    .unwrap();

    let out = run_tool(
        "psql",
        &[
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo(proxy.addrs[0], &db),
            "-f",
            script.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "loaded=4\n\
         total=16.50 top=5\n\
         alpha|with, comma|quote \"q\"|ünïcødé|five\n\
         scram_user|t\n",
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "1,alpha,3.0\n2,\"with, comma\",4.50\n3,\"quote \"\"q\"\"\",\n4,ünïcødé,4\n5,five,5\n"
    );

    // An error stops the script with psql's exit code 3 and the server's message.
    let bad = dir.path().join("bad.sql");
    std::fs::write(&bad, "SELECT 1/0;\nSELECT 'not reached';\n").unwrap();
    let out = tokio::process::Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo(proxy.addrs[0], &db),
            "-f",
            bad.to_str().unwrap(),
        ])
        .env("PGPASSWORD", SCRAM_PW)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("not reached"));
}

/// `number of transactions actually processed: N/M` and
/// `number of failed transactions: F` from pgbench's report.
fn pgbench_counts(stdout: &str) -> (u64, u64, u64) {
    let line = |prefix: &str| -> &str {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in pgbench output:\n{stdout}"))
            .trim()
    };
    let processed = line("number of transactions actually processed:");
    let (done, planned) = processed.split_once('/').expect("N/M");
    let failed = line("number of failed transactions:");
    let failed = failed.split_whitespace().next().unwrap();
    (
        done.parse().unwrap(),
        planned.parse().unwrap(),
        failed.parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_all_query_modes() {
    // pgbench -i sends TRUNCATE and `vacuum analyze`, which the default
    // policy blocks (FIELD-NOTES); this test is about the relay.
    let mut cfg = proxy_config();
    cfg.policy.mode = pgward::policy::Mode::Monitor;
    let proxy = start_proxy(cfg).await;
    let db = fresh_database("cli_pgbench");
    let conn = conninfo(proxy.addrs[0], &db);

    let out = run_tool(
        "pgbench",
        &["-i", "-s", "1", &conn],
        Duration::from_secs(120),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("done in"), "{stderr}");

    let runs: &[(&str, &[&str], u64)] = &[
        (
            "simple",
            &["-M", "simple", "-c", "4", "-j", "2", "-t", "200"],
            800,
        ),
        (
            "extended",
            &["-M", "extended", "-c", "4", "-j", "2", "-t", "200"],
            800,
        ),
        (
            "prepared",
            &["-M", "prepared", "-c", "4", "-j", "2", "-t", "200"],
            800,
        ),
        ("reconnect", &["-C", "-c", "2", "-t", "50"], 100),
    ];
    for (what, args, expected) in runs {
        let mut all: Vec<&str> = args.to_vec();
        all.push(&conn);
        let out = run_tool("pgbench", &all, Duration::from_secs(180)).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (done, planned, failed) = pgbench_counts(&stdout);
        assert_eq!(failed, 0, "{what}: failed transactions\n{stdout}");
        assert_eq!(
            (done, planned),
            (*expected, *expected),
            "{what}: processed\n{stdout}"
        );
    }

    // The work really reached the server: one history row per transaction.
    let h = common::cluster();
    let rows =
        h.pg.psql(&db, "SELECT count(*) FROM pgbench_history")
            .unwrap();
    // pgbench truncates the history before each run: only the last run's rows remain.
    assert_eq!(rows.trim(), "100");
}
