//! The policy, end to end: real Postgres, real clients, through pgward.

mod common;
mod rawpg;

use std::net::SocketAddr;

use common::{
    cluster, fresh_database, start_proxy, CLEAR_PW, CLEAR_USER, MD5_PW, MD5_USER, SCRAM_PW,
    SCRAM_USER,
};
use pgward::config::Config;
use rawpg::Raw;
use tokio_postgres::{Client, SimpleQueryMessage};

async fn connect(addr: SocketAddr, user: &str, pw: &str, db: &str) -> Client {
    common::connect_client(addr, user, pw, db).await
}

fn config_with_policy(policy_toml: &str) -> Config {
    let mut cfg = common::proxy_config();
    let text = format!("[policy]\n{policy_toml}");
    cfg.policy = Config::from_toml(&text, "test").expect("policy").policy;
    cfg
}

/// A database with table `t(a int)` holding rows 1..=3, created directly.
fn database_with_rows(prefix: &str) -> String {
    let db = fresh_database(prefix);
    cluster()
        .pg
        .psql(
            &db,
            "CREATE TABLE t(a int); INSERT INTO t VALUES (1),(2),(3); GRANT ALL ON t TO PUBLIC;",
        )
        .expect("setup");
    db
}

fn count(db: &str) -> i64 {
    cluster()
        .pg
        .psql(db, "SELECT count(*) FROM t")
        .expect("count")
        .trim()
        .parse()
        .expect("number")
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn blocks_truncate_with_42501_message_detail_and_hint() {
    let db = database_with_rows("pol_trunc");
    let proxy = start_proxy(common::proxy_config()).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let err = client.simple_query("TRUNCATE t").await.unwrap_err();
    let db_err = err.as_db_error().expect("server-style error");
    assert_eq!(db_err.code().code(), "42501");
    assert_eq!(
        db_err.message(),
        "pgward: TRUNCATE blocked by rule \"truncate\""
    );
    assert!(db_err.detail().unwrap_or("").contains('t'));
    assert!(!db_err.hint().unwrap_or("").is_empty());
    assert_eq!(count(&db), 3);
    // The session is still usable.
    let rows = client.query("SELECT count(*) FROM t", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 3);
}

#[tokio::test]
async fn blocks_unqualified_and_tautological_dml_in_every_protocol() {
    let db = database_with_rows("pol_dml");
    let proxy = start_proxy(common::proxy_config()).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    for sql in [
        "DELETE FROM t",
        "delete from T",
        "UPDATE t SET a = 0",
        "DELETE FROM t WHERE 1 = 1",
        "UPDATE t SET a = 0 WHERE true OR a = 2",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d",
        "EXPLAIN ANALYZE DELETE FROM t",
        "DROP TABLE t",
    ] {
        let simple = client.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&simple), "42501", "simple: {sql}");
        let extended = client.query(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&extended), "42501", "extended: {sql}");
    }
    assert_eq!(count(&db), 3);
    // Qualified statements pass untouched.
    let n = client
        .execute("UPDATE t SET a = a WHERE a = $1", &[&2i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = client
        .execute("DELETE FROM t WHERE a = 3", &[])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(count(&db), 2);
}

#[tokio::test]
async fn multi_statement_query_with_a_blocked_statement_runs_nothing() {
    let db = database_with_rows("pol_multi");
    let proxy = start_proxy(common::proxy_config()).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let err = client
        .simple_query("INSERT INTO t VALUES (4); TRUNCATE t; INSERT INTO t VALUES (5)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    assert_eq!(count(&db), 3);
}

#[tokio::test]
async fn blocks_truncate_inside_transaction_and_aborts_it() {
    let db = database_with_rows("pol_tx");
    let proxy = start_proxy(common::proxy_config()).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query("INSERT INTO t VALUES (4)")
        .await
        .unwrap();
    let err = client.simple_query("TRUNCATE t").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    // The server's transaction is failed, exactly as after a Postgres error.
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(count(&db), 3, "the INSERT must not be committed");
}

#[tokio::test]
async fn psql_sees_commit_answered_with_rollback() {
    let db = database_with_rows("pol_psql");
    let proxy = start_proxy(common::proxy_config()).await;
    let addr = proxy.addr();
    let out = tokio::process::Command::new(common::pg_bin("psql"))
        .arg(format!(
            "host={} port={} user={SCRAM_USER} dbname={db}",
            addr.ip(),
            addr.port()
        ))
        .args([
            "-X",
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO t VALUES (9)",
            "-c",
            "TRUNCATE t",
            "-c",
            "COMMIT",
        ])
        .env("PGPASSWORD", SCRAM_PW)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("ROLLBACK"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("blocked by rule \"truncate\""), "{stderr}");
    assert_eq!(count(&db), 3);
}

#[tokio::test]
async fn pipelined_block_fails_only_its_own_sync_group() {
    let db = database_with_rows("pol_pipe");
    let proxy = start_proxy(common::proxy_config()).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let insert = client.prepare("INSERT INTO t VALUES ($1)").await.unwrap();
    // tokio-postgres pipelines concurrent requests, each with its own Sync.
    let (a, b, c) = tokio::join!(
        client.execute(&insert, &[&10i32]),
        client.execute("DELETE FROM t", &[]),
        client.query("SELECT count(*) FROM t", &[]),
    );
    assert_eq!(a.unwrap(), 1);
    assert_eq!(sqlstate(&b.unwrap_err()), "42501");
    assert_eq!(c.unwrap()[0].get::<_, i64>(0), 4);

    // The same inside a transaction: the block fails the transaction.
    client.simple_query("BEGIN").await.unwrap();
    let (a, b, c) = tokio::join!(
        client.execute(&insert, &[&11i32]),
        client.execute("TRUNCATE t", &[]),
        client.query("SELECT 1", &[]),
    );
    assert_eq!(a.unwrap(), 1);
    assert_eq!(sqlstate(&b.unwrap_err()), "42501");
    assert_eq!(sqlstate(&c.unwrap_err()), "25P02");
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(count(&db), 4);
}

#[tokio::test]
async fn prepare_and_execute_get_the_verdict_of_the_body() {
    let db = database_with_rows("pol_prep");
    let proxy = start_proxy(common::proxy_config()).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    // PREPARE runs nothing; EXECUTE gets the verdict of the body.
    client
        .simple_query("PREPARE wipe AS DELETE FROM t")
        .await
        .unwrap();
    let err = client.simple_query("EXECUTE wipe").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    assert_eq!(count(&db), 3);
    client
        .simple_query("PREPARE one(int) AS DELETE FROM t WHERE a = $1")
        .await
        .unwrap();
    client.simple_query("EXECUTE one(1)").await.unwrap();
    assert_eq!(count(&db), 2);
}

/// pgward sees PREPARE, DEALLOCATE and Close when they are sent; the
/// server may not run them. None of those gaps lets a blocked body run.
#[tokio::test]
async fn a_prepared_blocked_body_stays_blocked_whatever_the_server_skipped() {
    let db = database_with_rows("pol_prep_gaps");
    let proxy = start_proxy(common::proxy_config()).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    // PREPARE and EXECUTE sent through the extended protocol.
    client
        .execute("PREPARE wipe AS DELETE FROM t", &[])
        .await
        .unwrap();
    let err = client.execute("EXECUTE wipe", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    // A DEALLOCATE in an aborted transaction does nothing.
    client.simple_query("BEGIN").await.unwrap();
    let err = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    let err = client.simple_query("DEALLOCATE wipe").await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");
    client.simple_query("ROLLBACK").await.unwrap();
    // Nor does one after an error earlier in the same Query.
    let err = client
        .simple_query("SELECT 1/0; DEALLOCATE ALL")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    // A second PREPARE of a name in use fails and keeps the first body.
    let err = client
        .simple_query("PREPARE wipe AS SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42P05");
    let err = client.simple_query("EXECUTE wipe").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    assert_eq!(count(&db), 3);
    // Really deallocated: EXECUTE is still refused by pgward (the server
    // would have refused it as unknown), and the name can be reused.
    client.simple_query("DEALLOCATE wipe").await.unwrap();
    let err = client.simple_query("EXECUTE wipe").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    client
        .simple_query("PREPARE one(int) AS DELETE FROM t WHERE a = $1")
        .await
        .unwrap();
    client.simple_query("DEALLOCATE one").await.unwrap();
    client
        .simple_query("PREPARE one(int) AS SELECT $1")
        .await
        .unwrap();
    client.simple_query("EXECUTE one(1)").await.unwrap();
    assert_eq!(count(&db), 3);
}

#[tokio::test]
async fn monitor_mode_lets_it_through() {
    let db = database_with_rows("pol_mon");
    let proxy = start_proxy(config_with_policy("mode = \"monitor\"")).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    client.simple_query("DELETE FROM t").await.unwrap();
    assert_eq!(count(&db), 0);
}

#[tokio::test]
async fn exempt_role_may_truncate_and_the_app_role_may_not() {
    let db = database_with_rows("pol_scope");
    let cfg = config_with_policy(&format!(
        "[policy.rules.truncate]\naction = \"block\"\nexcept_users = [\"{MD5_USER}\"]"
    ));
    let proxy = start_proxy(cfg).await;
    let app = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let err = app.simple_query("TRUNCATE t").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    assert_eq!(count(&db), 3);
    let migrator = connect(proxy.addr(), MD5_USER, MD5_PW, &db).await;
    migrator.simple_query("TRUNCATE t").await.unwrap();
    assert_eq!(count(&db), 0);
}

#[tokio::test]
async fn unparseable_statements_fail_closed_unless_allowed() {
    let db = database_with_rows("pol_unparsed");
    let proxy = start_proxy(common::proxy_config()).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let err = client
        .simple_query("DELETE FROM t WHERE a = 'unterminated")
        .await
        .unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.code().code(), "42501");
    assert!(e.message().contains("\"unparsed\""), "{}", e.message());

    let open = start_proxy(config_with_policy("on_unparsed = \"allow\"")).await;
    let client = connect(open.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let err = client
        .simple_query("DELETE FROM t WHERE a = 'unterminated")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42601", "Postgres' own syntax error");
    assert_eq!(count(&db), 3);
}

#[tokio::test]
async fn where_current_of_passes() {
    let db = database_with_rows("pol_cursor");
    let proxy = start_proxy(common::proxy_config()).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let msgs = client
        .simple_query(
            "BEGIN; DECLARE c CURSOR FOR SELECT a FROM t ORDER BY a FOR UPDATE; FETCH c; \
             DELETE FROM t WHERE CURRENT OF c; COMMIT",
        )
        .await
        .unwrap();
    assert!(msgs
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(1))));
    assert_eq!(count(&db), 2);
}

#[tokio::test]
async fn pgbench_workload_is_unaffected_by_the_default_policy() {
    let db = fresh_database("pol_pgbench");
    let h = cluster();
    // pgbench -i truncates and drops: initialise directly, run through pgward.
    let init = tokio::process::Command::new(common::pg_bin("pgbench"))
        .args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p"])
        .arg(h.pg.port.to_string())
        .args(["-U", SCRAM_USER, &db])
        .env("PGPASSWORD", SCRAM_PW)
        .output()
        .await
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let proxy = start_proxy(common::proxy_config()).await;
    for mode in ["simple", "extended", "prepared"] {
        let out = tokio::process::Command::new(common::pg_bin("pgbench"))
            .args([
                "-n",
                "-c",
                "2",
                "-t",
                "100",
                "-M",
                mode,
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .arg(proxy.addr().port().to_string())
            .args(["-U", SCRAM_USER, &db])
            .env("PGPASSWORD", SCRAM_PW)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("number of transactions actually processed: 200/200"),
            "{mode}: {stdout}"
        );
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "{mode}: {stdout}"
        );
    }
}

fn tags(msgs: &[rawpg::Msg]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

fn ready_status(msgs: &[rawpg::Msg]) -> u8 {
    msgs.last().map(|(_, b)| b[0]).expect("ReadyForQuery")
}

#[tokio::test]
async fn blocked_parse_mid_pipeline_skips_to_sync_like_postgres() {
    let db = database_with_rows("pol_rawpipe");
    let proxy = start_proxy(common::proxy_config()).await;
    let (mut raw, _) = Raw::connect(proxy.addr(), CLEAR_USER, CLEAR_PW, &db).await;
    let pipeline = |first: i32, last: i32| {
        rawpg::cat(&[
            rawpg::parse("", &format!("INSERT INTO t VALUES ({first})"), &[]),
            rawpg::bind("", "", &[]),
            rawpg::execute("", 0),
            rawpg::parse("", "DELETE FROM t", &[]),
            rawpg::bind("", "", &[]),
            rawpg::execute("", 0),
            rawpg::parse("", &format!("INSERT INTO t VALUES ({last})"), &[]),
            rawpg::bind("", "", &[]),
            rawpg::execute("", 0),
            rawpg::sync(),
        ])
    };
    // Outside a transaction: the messages up to Sync form one implicit
    // transaction, which the (server-side) error rolls back, as direct.
    raw.send(&pipeline(7, 8)).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "12CEZ", "{}", rawpg::show(&msgs));
    assert_eq!(
        rawpg::first_error(&msgs),
        Some(("ERROR".to_string(), "42501".to_string()))
    );
    assert_eq!(ready_status(&msgs), b'I');

    // Inside a transaction: the block fails the server's transaction.
    raw.send(&rawpg::query("BEGIN")).await;
    raw.until_ready().await;
    raw.send(&pipeline(9, 10)).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "12CEZ", "{}", rawpg::show(&msgs));
    assert_eq!(ready_status(&msgs), b'E');
    raw.send(&rawpg::query("COMMIT")).await;
    let msgs = raw.until_ready().await;
    assert!(
        rawpg::show(&msgs).contains("ROLLBACK"),
        "{}",
        rawpg::show(&msgs)
    );
    // Postgres rolls back an implicit transaction at the error too, so
    // neither pipeline left a row behind.
    assert_eq!(count(&db), 3);
}

#[tokio::test]
async fn function_call_is_blocked_unless_allowed() {
    let db = fresh_database("pol_fcall");
    let abs_int4 = 1397;
    let proxy = start_proxy(common::proxy_config()).await;
    let (mut raw, _) = Raw::connect(proxy.addr(), CLEAR_USER, CLEAR_PW, &db).await;
    raw.send(&rawpg::function_call(abs_int4, &["-5"])).await;
    let msgs = raw.until_ready().await;
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(rawpg::error_field(body, b'C').as_deref(), Some("42501"));
    assert!(rawpg::error_field(body, b'M')
        .unwrap()
        .contains("function_call"));
    // The session goes on.
    let msgs = raw.simple("SELECT 1").await;
    assert_eq!(rawpg::data_rows(&msgs), vec![vec![Some("1".to_string())]]);

    let open = start_proxy(config_with_policy("function_call_allow = [\"abs\"]")).await;
    let (mut raw, _) = Raw::connect(open.addr(), CLEAR_USER, CLEAR_PW, &db).await;
    raw.send(&rawpg::function_call(abs_int4, &["-5"])).await;
    let msgs = raw.until_ready().await;
    let (_, body) = msgs
        .iter()
        .find(|(t, _)| *t == b'V')
        .expect("FunctionCallResponse");
    assert_eq!(&body[4..], b"5");
}

#[test]
fn builtin_function_oids_match_the_live_catalog() {
    let h = cluster();
    for (name, oids) in pgward::policy::builtin_functions::BUILTIN_FUNCTION_OIDS {
        let live =
            h.pg.psql(
                "postgres",
                &format!("SELECT oid FROM pg_proc WHERE proname = '{name}' ORDER BY oid"),
            )
            .unwrap();
        let live: Vec<u32> = live.lines().map(|l| l.trim().parse().unwrap()).collect();
        let mut ours = oids.to_vec();
        ours.sort();
        assert_eq!(live, ours, "{name}");
    }
}

#[tokio::test]
async fn strict_profile_blocks_dynamic_sql_the_default_lets_it_run() {
    let db = database_with_rows("pol_dynamic");
    let do_block = "DO $$ BEGIN DELETE FROM t WHERE a = 1; END $$";
    let strict = start_proxy(config_with_policy("profile = \"strict\"")).await;
    let client = connect(strict.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let err = client.simple_query(do_block).await.unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.code().code(), "42501");
    assert!(e.message().contains("dynamic_sql"), "{}", e.message());
    assert_eq!(count(&db), 3);

    let default = start_proxy(common::proxy_config()).await;
    let client = connect(default.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    client.simple_query(do_block).await.unwrap();
    assert_eq!(count(&db), 2);
}
