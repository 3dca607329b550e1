//! Soft delete end to end: real Postgres, real clients, through pgward.
//! A DELETE on a configured table becomes an UPDATE that marks the rows;
//! the client sees `DELETE n`, the count and the RETURNING rows of a delete.

mod common;
mod rawpg;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::{
    cluster, fresh_database, start_proxy, CLEAR_PW, CLEAR_USER, MD5_PW, MD5_USER, SCRAM_PW,
    SCRAM_USER, SUPERUSER_PW,
};
use pgward::config::Config;
use rawpg::{Msg, Raw};
use tokio_postgres::Client;

const SCHEMA: &str = "
CREATE TABLE users(id int PRIMARY KEY, name text, deleted_at timestamptz, deleted_by text, deletion_reason text);
INSERT INTO users SELECT g, 'user' || g FROM generate_series(1, 5) g;
CREATE TABLE plain(id int);
INSERT INTO plain VALUES (1), (2), (3);
CREATE TABLE keep(id int);
INSERT INTO keep VALUES (1);
CREATE SCHEMA billing;
CREATE TABLE billing.users(id int, deleted_at timestamptz);
INSERT INTO billing.users VALUES (1);
CREATE TABLE billing.\"Ledger Entries\"(id int, deleted_at timestamptz, deleted_by text);
INSERT INTO billing.\"Ledger Entries\" VALUES (1), (2);
GRANT USAGE ON SCHEMA billing TO PUBLIC;
GRANT ALL ON ALL TABLES IN SCHEMA public, billing TO PUBLIC;
";

const ENTRIES: &str = r#"
[[policy.soft_delete]]
table = "public.users"
deleted_by = "deleted_by"
reason = "deletion_reason"
hard_delete_roles = ["md5_user"]

[[policy.soft_delete]]
table = 'billing."Ledger Entries"'
deleted_by = "deleted_by"
"#;

/// A file holding the superuser's password, for pgward's schema check.
/// Written once per test binary: rewriting it for every test truncated it
/// while another test's pgward was reading it (an empty password, a failed
/// login).
fn password_file() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("pgward-sd-pw-{}", std::process::id()));
        std::fs::write(&path, format!("{SUPERUSER_PW}\n")).unwrap();
        path
    })
    .clone()
}

/// `[policy]` soft-delete entries plus a `[soft_delete_check]` for `db`.
fn config_text(policy: &str, db: &str) -> String {
    format!(
        "[policy]\n{policy}\n\n[soft_delete_check]\ndatabases = [\"{db}\"]\n\
         [soft_delete_check.credentials]\nuser = \"postgres\"\npassword_file = \"{}\"\n",
        password_file().display()
    )
}

fn config(policy: &str, db: &str) -> Config {
    let mut cfg = Config::from_toml(&config_text(policy, db), "test").expect("config");
    let base = common::proxy_config();
    cfg.listen = base.listen;
    cfg.upstream = base.upstream;
    cfg
}

fn database(prefix: &str) -> String {
    let db = fresh_database(prefix);
    cluster().pg.psql(&db, SCHEMA).expect("schema");
    db
}

fn psql(db: &str, sql: &str) -> String {
    cluster().pg.psql(db, sql).expect("psql").trim().to_string()
}

async fn connect(addr: SocketAddr, user: &str, pw: &str, db: &str) -> Client {
    common::connect_client(addr, user, pw, db).await
}

fn tags(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.0 == b'C')
        .map(|m| String::from_utf8_lossy(&m.1[..m.1.len() - 1]).into_owned())
        .collect()
}

fn sqlstate(msgs: &[Msg]) -> Option<String> {
    rawpg::first_error(msgs).map(|e| e.1)
}

fn error_message(msgs: &[Msg]) -> String {
    msgs.iter()
        .find(|m| m.0 == b'E')
        .and_then(|m| rawpg::error_field(&m.1, b'M'))
        .unwrap_or_default()
}

async fn raw(addr: SocketAddr, db: &str) -> Raw {
    Raw::connect(addr, CLEAR_USER, CLEAR_PW, db).await.0
}

#[tokio::test]
async fn execute_counts_and_returning_rows_look_like_a_delete_while_rows_stay() {
    let db = database("sd_tokio");
    let proxy = start_proxy(config(ENTRIES, &db)).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    client
        .batch_execute("SET pgward.deletion_reason = 'gdpr request'")
        .await
        .unwrap();
    let n = client
        .execute("DELETE FROM users WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let rows = client
        .query(
            "DELETE FROM users WHERE id = ANY($1) RETURNING id, name",
            &[&vec![2i32, 3]],
        )
        .await
        .unwrap();
    let mut got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    got.sort();
    assert_eq!(got, vec![(2, "user2".into()), (3, "user3".into())]);
    // Parameter numbering is the client's: $2 before $1 still binds right.
    let n = client
        .execute(
            "DELETE FROM users WHERE name = $2 AND id = $1",
            &[&5i32, &"user5"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    client
        .execute("UPDATE users SET deleted_at = NULL WHERE id = $1", &[&5i32])
        .await
        .unwrap();
    // The client no longer sees them as live; the rows are all still there.
    assert_eq!(psql(&db, "SELECT count(*) FROM users"), "5");
    assert_eq!(
        psql(
            &db,
            "SELECT string_agg(id || ':' || deleted_by || ':' || deletion_reason, ',' ORDER BY id) \
             FROM users WHERE deleted_at IS NOT NULL"
        ),
        "1:scram_user:gdpr request,2:scram_user:gdpr request,3:scram_user:gdpr request"
    );
    // Deleting again: DELETE 0, and the first timestamp stays.
    let first = psql(&db, "SELECT deleted_at FROM users WHERE id = 1");
    let again = client
        .execute("DELETE FROM users WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(again, 0);
    assert_eq!(
        psql(&db, "SELECT deleted_at FROM users WHERE id = 1"),
        first
    );
    // Restoring is an ordinary UPDATE.
    let restored = client
        .execute(
            "UPDATE users SET deleted_at = NULL, deleted_by = NULL WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(restored, 1);
    assert_eq!(
        client
            .execute("DELETE FROM users WHERE id = $1", &[&1i32])
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn psql_prints_delete_1() {
    let db = database("sd_psql");
    let proxy = start_proxy(config(ENTRIES, &db)).await;
    let addr = proxy.addr();
    let out = tokio::process::Command::new(common::pg_bin("psql"))
        .args([
            "-X",
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "-U",
            SCRAM_USER,
            "-d",
            &db,
            "-c",
            "DELETE FROM users WHERE id = 4",
        ])
        .env("PGPASSWORD", SCRAM_PW)
        .output()
        .await
        .expect("psql runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "DELETE 1\n");
    assert_eq!(
        psql(&db, "SELECT deleted_by FROM users WHERE id = 4"),
        SCRAM_USER
    );
}

#[tokio::test]
async fn multi_statement_query_rewrites_only_its_delete() {
    let db = database("sd_multi");
    let proxy = start_proxy(config(ENTRIES, &db)).await;
    let mut c = raw(proxy.addr(), &db).await;
    let msgs = c
        .simple(
            "SELECT 'DELETE FROM users WHERE id = 1' AS s, E'a\\\\''b' AS t; \
             DELETE FROM users WHERE id = 1; DELETE FROM plain WHERE id = 1; \
             UPDATE users SET name = 'x' WHERE id = 2",
        )
        .await;
    assert_eq!(
        tags(&msgs),
        ["SELECT 1", "DELETE 1", "DELETE 1", "UPDATE 1"],
        "{}",
        rawpg::show(&msgs)
    );
    // The other statements reached the server byte for byte.
    assert_eq!(
        rawpg::data_rows(&msgs),
        vec![vec![
            Some("DELETE FROM users WHERE id = 1".to_string()),
            Some("a\\'b".to_string())
        ]]
    );
    assert_eq!(
        psql(&db, "SELECT deleted_by FROM users WHERE id = 1"),
        CLEAR_USER
    );
    // plain is not a soft-delete table: a real delete.
    assert_eq!(psql(&db, "SELECT count(*) FROM plain"), "2");
    assert_eq!(
        psql(&db, "SELECT count(*) FROM users WHERE deleted_at IS NULL"),
        "4"
    );
}

#[tokio::test]
async fn pipelines_and_row_limited_executes_retag_exactly_the_rewritten_deletes() {
    use rawpg::{bind, cat, execute, parse, sync};
    let db = database("sd_pipe");
    let proxy = start_proxy(config(ENTRIES, &db)).await;
    let mut c = raw(proxy.addr(), &db).await;
    // Group 1: a DELETE … RETURNING fetched one row at a time, a real
    // UPDATE and a real DELETE, all pipelined before one Sync.
    c.send(&cat(&[
        parse(
            "del",
            "DELETE FROM users WHERE id <= $1 RETURNING id",
            &[23],
        ),
        parse("upd", "UPDATE users SET name = 'y' WHERE id = $1", &[23]),
        bind("p1", "del", &[Some("2")]),
        execute("p1", 1),
        execute("p1", 0),
        bind("", "upd", &[Some("5")]),
        execute("", 0),
        parse("", "DELETE FROM plain WHERE id = $1", &[23]),
        bind("", "", &[Some("2")]),
        execute("", 0),
        sync(),
    ]))
    .await;
    let msgs = c.until_ready().await;
    assert_eq!(
        tags(&msgs),
        // With a row limit the final tag counts the rows of the last Execute.
        ["DELETE 1", "UPDATE 1", "DELETE 1"],
        "{}",
        rawpg::show(&msgs)
    );
    assert_eq!(msgs.iter().filter(|m| m.0 == b's').count(), 1);
    assert_eq!(rawpg::data_rows(&msgs).len(), 2);
    // Group 2 fails half-way (the server skips the rest until Sync);
    // group 3 must still be re-tagged in step.
    c.send(&cat(&[
        parse("bad", "SELECT 1/0", &[]),
        bind("", "bad", &[]),
        execute("", 0),
        bind("", "del", &[Some("3")]),
        execute("", 0),
        sync(),
        bind("", "del", &[Some("3")]),
        execute("", 0),
        bind("", "upd", &[Some("4")]),
        execute("", 0),
        sync(),
    ]))
    .await;
    let first = c.until_ready().await;
    assert_eq!(sqlstate(&first), Some("22012".into()));
    assert!(tags(&first).is_empty(), "{}", rawpg::show(&first));
    let second = c.until_ready().await;
    assert_eq!(tags(&second), ["DELETE 1", "UPDATE 1"]);
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM users WHERE deleted_at IS NOT NULL"
        ),
        "3"
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM plain"), "2");
}

#[tokio::test]
async fn aliases_using_only_quoted_and_schema_qualified_names() {
    let db = database("sd_names");
    let proxy = start_proxy(config(ENTRIES, &db)).await;
    let mut c = raw(proxy.addr(), &db).await;
    let msgs = c
        .simple(
            "DELETE FROM ONLY billing.\"Ledger Entries\" AS le USING keep k \
             WHERE le.id = k.id RETURNING le.id",
        )
        .await;
    assert_eq!(tags(&msgs), ["DELETE 1"], "{}", rawpg::show(&msgs));
    assert_eq!(rawpg::data_rows(&msgs), vec![vec![Some("1".to_string())]]);
    assert_eq!(
        psql(
            &db,
            "SELECT id || ':' || coalesce(deleted_by, '-') FROM billing.\"Ledger Entries\" ORDER BY id"
        ),
        "1:clear_user\n2:-"
    );
    // billing.users is not public.users: a real delete.
    assert_eq!(
        tags(&c.simple("DELETE FROM billing.users WHERE id = 1").await),
        ["DELETE 1"]
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM billing.users"), "0");
    // Case-folded, qualified, aliased without AS.
    let msgs = c.simple("delete from PUBLIC.Users u where u.id = 5").await;
    assert_eq!(tags(&msgs), ["DELETE 1"]);
    assert_eq!(
        psql(&db, "SELECT deleted_by FROM users WHERE id = 5"),
        CLEAR_USER
    );
}

#[tokio::test]
async fn cte_and_prepare_execute() {
    let db = database("sd_cte");
    let proxy = start_proxy(config(ENTRIES, &db)).await;
    let mut c = raw(proxy.addr(), &db).await;
    let msgs = c
        .simple("WITH d AS (DELETE FROM users WHERE id = 1 RETURNING *) SELECT count(*) FROM d")
        .await;
    // The top-level statement is a SELECT: its tag is left alone.
    assert_eq!(tags(&msgs), ["SELECT 1"], "{}", rawpg::show(&msgs));
    assert_eq!(rawpg::data_rows(&msgs), vec![vec![Some("1".to_string())]]);
    let msgs = c
        .simple("PREPARE p(int) AS DELETE FROM users WHERE id = $1")
        .await;
    assert_eq!(tags(&msgs), ["PREPARE"]);
    assert_eq!(tags(&c.simple("EXECUTE p(2)").await), ["DELETE 1"]);
    assert_eq!(tags(&c.simple("EXECUTE p(2)").await), ["DELETE 0"]);
    // A protocol-level statement EXECUTEd from SQL shares the namespace.
    c.send(&rawpg::cat(&[
        rawpg::parse("pd", "DELETE FROM users WHERE id = $1", &[23]),
        rawpg::sync(),
    ]))
    .await;
    c.until_ready().await;
    assert_eq!(tags(&c.simple("EXECUTE pd(3)").await), ["DELETE 1"]);
    assert_eq!(
        psql(
            &db,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM users WHERE deleted_at IS NOT NULL"
        ),
        "1,2,3"
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM users"), "5");
}

#[tokio::test]
async fn mass_delete_and_mass_undelete_stay_blocked_and_purge_role_hard_deletes() {
    let db = database("sd_block");
    let proxy = start_proxy(config(ENTRIES, &db)).await;
    let mut c = raw(proxy.addr(), &db).await;
    for sql in [
        "DELETE FROM users",
        "DELETE FROM users WHERE 1 = 1",
        "UPDATE users SET deleted_at = NULL",
    ] {
        let msgs = c.simple(sql).await;
        assert_eq!(
            sqlstate(&msgs),
            Some("42501".to_string()),
            "{sql}: {}",
            rawpg::show(&msgs)
        );
    }
    assert_eq!(
        psql(&db, "SELECT count(*) FROM users WHERE deleted_at IS NULL"),
        "5"
    );
    // MERGE … DELETE cannot be turned into a soft delete: blocked.
    let msgs = c
        .simple("MERGE INTO users u USING keep k ON u.id = k.id WHEN MATCHED THEN DELETE")
        .await;
    assert_eq!(sqlstate(&msgs), Some("42501".into()));
    let message = error_message(&msgs);
    assert!(message.contains("soft_delete"), "{message}");
    // The purge job's role hard-deletes.
    let purge = connect(proxy.addr(), MD5_USER, MD5_PW, &db).await;
    let n = purge
        .execute("DELETE FROM users WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(psql(&db, "SELECT count(*) FROM users"), "4");
}

#[tokio::test]
async fn update_triggers_fire_and_delete_triggers_do_not() {
    let db = database("sd_trig");
    psql(
        &db,
        "CREATE TABLE trig_log(op text);
         GRANT ALL ON trig_log TO PUBLIC;
         CREATE FUNCTION log_op() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO trig_log VALUES (TG_OP); RETURN NULL; END $$;
         CREATE TRIGGER on_update AFTER UPDATE ON users FOR EACH ROW EXECUTE FUNCTION log_op();
         CREATE TRIGGER on_delete AFTER DELETE ON users FOR EACH ROW EXECUTE FUNCTION log_op();",
    );
    let proxy = start_proxy(config(ENTRIES, &db)).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let n = client
        .execute("DELETE FROM users WHERE id IN (1, 2)", &[])
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        psql(&db, "SELECT string_agg(op, ',') FROM trig_log"),
        "UPDATE,UPDATE"
    );
}

#[tokio::test]
async fn rls_policy_from_pgward_sql_hides_deleted_rows_and_lets_soft_deletes_through() {
    let db = fresh_database("sd_rls");
    psql(
        &db,
        "CREATE TABLE docs(id int, body text);
         INSERT INTO docs SELECT g, 'doc' || g FROM generate_series(1, 3) g;
         CREATE TABLE naive(id int, deleted_at timestamptz);
         INSERT INTO naive VALUES (1);
         ALTER TABLE naive ENABLE ROW LEVEL SECURITY;
         CREATE POLICY hide ON naive FOR SELECT USING (deleted_at IS NULL);
         CREATE POLICY upd ON naive FOR UPDATE USING (true) WITH CHECK (true);
         GRANT SELECT, UPDATE ON docs, naive TO PUBLIC;",
    );
    let policy = r#"
[[policy.soft_delete]]
table = "public.docs"
deleted_by = "deleted_by"
unique_keys = [["body"]]

[[policy.soft_delete]]
table = "public.naive"
"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgward.toml");
    std::fs::write(&file, config_text(policy, &db)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgward"))
        .args(["sql", "soft-delete", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ddl = String::from_utf8(out.stdout).unwrap();
    // Apply only the docs part; naive keeps its hand-written policy.
    let docs_ddl = ddl.split("\n-- \"public\".\"naive\"").next().unwrap();
    psql(&db, docs_ddl);
    // Idempotent: running it twice is fine.
    psql(&db, docs_ddl);

    let proxy = start_proxy(config(policy, &db)).await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let n = client
        .execute("DELETE FROM docs WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let rows = client
        .query("DELETE FROM docs WHERE id = 2 RETURNING body", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "doc2");
    let visible: i64 = client
        .query_one("SELECT count(*) FROM docs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(visible, 1);
    client
        .batch_execute("SET pgward.show_deleted = on")
        .await
        .unwrap();
    let all: i64 = client
        .query_one("SELECT count(*) FROM docs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(all, 3);
    // A new row may reuse a deleted row's unique key.
    psql(&db, "INSERT INTO docs(id, body) VALUES (9, 'doc1')");
    // The trap the generated policy avoids: USING (deleted_at IS NULL).
    let err = client
        .execute("DELETE FROM naive WHERE id = 1", &[])
        .await
        .unwrap_err();
    let db_err = err.as_db_error().expect("server error");
    assert!(
        db_err.message().contains("row-level security"),
        "{}",
        db_err.message()
    );
}

#[tokio::test]
async fn identity_with_quotes_backslashes_and_unicode_is_stored_verbatim() {
    let db = database("sd_ident");
    let who = "o'hara\\ \"Zoë\" '; DELETE FROM users; --";
    let quoted = who.replace('"', "\"\"");
    psql(
        "postgres",
        &format!(
            "DO $x$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $q${who}$q$) \
             THEN CREATE ROLE \"{quoted}\" LOGIN PASSWORD 'pw'; END IF; END $x$;"
        ),
    );
    let proxy = start_proxy(config(ENTRIES, &db)).await;
    let client = connect(proxy.addr(), who, "pw", &db).await;
    let n = client
        .execute("DELETE FROM users WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        psql(
            &db,
            &format!("SELECT deleted_by = $q${who}$q$ FROM users WHERE id = 1")
        ),
        "t"
    );
    assert_eq!(
        psql(&db, "SELECT count(*) FROM users WHERE deleted_at IS NULL"),
        "4"
    );
}

#[tokio::test]
async fn field_notes_injection_payloads_stay_one_statement() {
    let db = database("sd_inject");
    let proxy = start_proxy(config(ENTRIES, &db)).await;
    let mut c = raw(proxy.addr(), &db).await;
    // One statement to Postgres (standard_conforming_strings on): the string
    // is `\'; DELETE FROM users; --`.
    let msgs = c
        .simple("DELETE FROM users WHERE name = '\\''; DELETE FROM users; --'")
        .await;
    assert_eq!(tags(&msgs), ["DELETE 0"], "{}", rawpg::show(&msgs));
    // A quoted alias carrying a payload.
    let msgs = c
        .simple(
            "DELETE FROM users AS \"x\"\";DELETE FROM users;--\" \
             WHERE \"x\"\";DELETE FROM users;--\".id = 1",
        )
        .await;
    assert_eq!(tags(&msgs), ["DELETE 1"], "{}", rawpg::show(&msgs));
    // With standard_conforming_strings off the same text is two statements,
    // the second an unrestricted DELETE: the whole Query is blocked.
    c.simple("SET standard_conforming_strings = off").await;
    let msgs = c
        .simple("DELETE FROM users WHERE name = '\\''; DELETE FROM users; --'")
        .await;
    assert_eq!(sqlstate(&msgs), Some("42501".into()));
    assert_eq!(
        psql(&db, "SELECT count(*) FROM users WHERE deleted_at IS NULL"),
        "4"
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM users"), "5");
}

#[tokio::test]
async fn live_schema_check_rejects_missing_tables_and_columns() {
    let db = database("sd_check");
    let bind = |policy: &str| {
        let cfg = config(policy, &db);
        async move { pgward::proxy::Proxy::bind(cfg).await.map(|_| ()) }
    };
    let err = bind("[[policy.soft_delete]]\ntable = \"public.users\"\ndeleted_by = \"who\"\n")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("column \"who\" does not exist"), "{err}");
    let err = bind("[[policy.soft_delete]]\ntable = \"public.missing\"\n")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("public.missing"), "{err}");
    assert!(err.contains("table does not exist"), "{err}");
    let err = bind("[[policy.soft_delete]]\ntable = \"public.plain\"\n")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"deleted_at\" does not exist"), "{err}");
    let err = bind("[[policy.soft_delete]]\ntable = \"public.users\"\ndeleted_by = \"id\"\n")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"id\" is integer, expected text"), "{err}");
    let err = bind("[[policy.soft_delete]]\ntable = \"public.users\"\ndeleted_at = \"name\"\n")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected timestamp with time zone"), "{err}");
    // No credentials to check with: an error, never a silent no-op.
    let mut cfg = common::proxy_config();
    cfg.policy = Config::from_toml("[[policy.soft_delete]]\ntable = \"public.users\"\n", "t")
        .unwrap()
        .policy;
    let err = pgward::proxy::Proxy::bind(cfg)
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("soft_delete_check.credentials"), "{err}");
    // Monitor mode: a warning, the proxy starts.
    bind("mode = \"monitor\"\n[[policy.soft_delete]]\ntable = \"public.missing\"\n")
        .await
        .expect("monitor mode only warns");
    // Reload: a broken soft-delete table keeps the running config.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgward.toml");
    let good = config_text(ENTRIES, &db);
    let base = common::proxy_config();
    let listen = format!(
        "[listen]\naddresses = [\"127.0.0.1:0\"]\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\n",
        base.upstream.port
    );
    std::fs::write(&file, format!("{listen}{good}")).unwrap();
    let proxy = pgward::proxy::Proxy::bind_file(&file, |_| {})
        .await
        .expect("binds")
        .spawn();
    let bad = config_text(
        "[[policy.soft_delete]]\ntable = \"public.users\"\ndeleted_by = \"who\"\n",
        &db,
    );
    std::fs::write(&file, format!("{listen}{bad}")).unwrap();
    let err = proxy.handle.reload().unwrap_err().to_string();
    assert!(err.contains("\"who\" does not exist"), "{err}");
    let mut c = raw(proxy.addr(), &db).await;
    assert_eq!(
        tags(&c.simple("DELETE FROM users WHERE id = 1").await),
        ["DELETE 1"]
    );
    assert_eq!(psql(&db, "SELECT count(*) FROM users"), "5");
}

#[test]
fn reference_config_soft_delete_example_compiles() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgward.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("# [[policy.soft_delete]]").expect("example");
    let block: String = text[start..]
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{}\n", l.trim_start_matches("# ")))
        .collect();
    let full = format!("{text}\n{block}");
    let cfg = Config::from_toml(&full, path).expect("reference with soft delete loads");
    assert_eq!(cfg.policy.soft_delete.len(), 1);
    assert_eq!(cfg.policy.soft_delete[0].hard_delete_roles, ["purge_job"]);
    let policy = pgward::policy::Policy::from_config(&cfg.policy).expect("compiles");
    assert_eq!(policy.soft_delete_tables()[0].name, "users");
    assert!(pgward::soft_delete_ddl::ddl(&cfg.policy)
        .unwrap()
        .contains("\"users_email_live_key\""));
}
