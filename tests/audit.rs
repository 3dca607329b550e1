//! The audit trail end to end: real Postgres, real clients, through pgward,
//! events read back from the file sink and checked with `pgward audit`.

mod common;
mod rawpg;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    cluster, fresh_database, start_proxy, CLEAR_PW, CLEAR_USER, SCRAM_PW, SCRAM_USER, SUPERUSER_PW,
};
use pgward::audit::config::{FileSinkConfig, Fsync, OnFull, SinkConfig};
use pgward::config::Config;
use rawpg::{bind, cat, execute, parse, sync, Raw};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

async fn connect(addr: SocketAddr, user: &str, pw: &str, db: &str) -> Client {
    common::connect_client(addr, user, pw, db).await
}

/// A proxy config auditing every statement class into `dir/audit.jsonl`.
fn audited(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = common::proxy_config();
    cfg.audit.filter.classes = vec!["ALL".into()];
    cfg.audit.sinks = vec![SinkConfig::File(FileSinkConfig {
        path: dir.join("audit.jsonl"),
        fsync: Fsync::Never,
        ..FileSinkConfig::default()
    })];
    tweak(&mut cfg);
    cfg
}

fn database_with_table(prefix: &str) -> String {
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

fn read_events(files: &[PathBuf]) -> Vec<Value> {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("every line is JSON"))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn statements(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"] == "statement")
        .cloned()
        .collect()
}

/// Poll until `want(events)` holds (the sink writes asynchronously).
async fn wait_for(path: &Path, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = read_events(&[path.to_path_buf()]);
        if want(&events) {
            // Nothing more should arrive: give stragglers a moment to show.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return read_events(&[path.to_path_buf()]);
        }
        assert!(
            Instant::now() < deadline,
            "timed out; events so far: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stmt_field<'a>(e: &'a Value, f: &str) -> &'a Value {
    &e["statement"][f]
}

fn outcome<'a>(e: &'a Value, f: &str) -> &'a Value {
    &e["statement"]["outcome"][f]
}

fn pgward_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgward")
}

#[tokio::test]
async fn one_event_per_statement_simple_protocol_allowed_blocked_failed_multi() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let proxy = start_proxy(audited(dir.path(), |_| {})).await;
    let db = database_with_table("audit_simple");
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;

    client
        .simple_query("INSERT INTO t VALUES (10); UPDATE t SET a = a WHERE a = 1")
        .await
        .unwrap();
    let e = client.simple_query("TRUNCATE t").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42501");
    let e = client.simple_query("SELECT * FROM nope").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42P01");
    client
        .simple_query("INSERT INTO t VALUES (3); SELECT 1/0; INSERT INTO t VALUES (4)")
        .await
        .unwrap_err();
    client.simple_query("SELECT a FROM t").await.unwrap();

    let events = wait_for(&path, |ev| statements(ev).len() >= 8).await;
    let st = statements(&events);
    assert_eq!(st.len(), 8, "{st:#?}");
    let kinds: Vec<&str> = st
        .iter()
        .map(|e| stmt_field(e, "kind").as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["insert", "update", "truncate", "select", "insert", "select", "insert", "select"]
    );
    // Allowed, with outcome and class.
    assert_eq!(outcome(&st[0], "command_tag"), "INSERT 0 1");
    assert_eq!(outcome(&st[0], "rows"), 1);
    assert_eq!(stmt_field(&st[0], "class"), "WRITE");
    assert_eq!(stmt_field(&st[0], "verdict"), "allowed");
    assert_eq!(stmt_field(&st[0], "tables"), &serde_json::json!(["t"]));
    assert_eq!(outcome(&st[1], "rows"), 1);
    // Blocked: pgward's error, the rule, nothing sent.
    assert_eq!(stmt_field(&st[2], "verdict"), "blocked");
    assert_eq!(stmt_field(&st[2], "rule_id"), "truncate");
    assert_eq!(outcome(&st[2], "status"), "error");
    assert_eq!(outcome(&st[2], "sqlstate"), "42501");
    // Failed on the server.
    assert_eq!(outcome(&st[3], "sqlstate"), "42P01");
    assert!(outcome(&st[3], "message")
        .as_str()
        .unwrap()
        .contains("nope"));
    // Multi-statement: ok, error, then never executed.
    assert_eq!(outcome(&st[4], "status"), "ok");
    assert_eq!(outcome(&st[5], "sqlstate"), "22012");
    assert_eq!(outcome(&st[6], "status"), "skipped");
    assert_eq!(outcome(&st[7], "rows"), 3 + 1);
    for e in &st {
        assert_eq!(e["v"], 1);
        assert_eq!(e["user"], SCRAM_USER);
        assert_eq!(e["database"], db.as_str());
        assert_eq!(e["client_addr"], "127.0.0.1");
        assert!(outcome(e, "duration_us").as_u64().is_some());
        assert_eq!(stmt_field(e, "protocol"), "simple");
        assert_eq!(stmt_field(e, "fingerprint").as_str().unwrap().len(), 16);
    }
    // Ids are unique and sorted.
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted);
}

#[tokio::test]
async fn one_event_per_execute_in_pipelined_extended_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let proxy = start_proxy(audited(dir.path(), |c| c.audit.log_parameters = true)).await;
    let db = database_with_table("audit_extended");
    let mut raw = Raw::connect_tcp(proxy.addr()).await;
    raw.startup(CLEAR_USER, CLEAR_PW, &db).await;
    raw.send(&cat(&[
        parse("s1", "SELECT a FROM t WHERE a = $1", &[]),
        bind("", "s1", &[Some("1")]),
        execute("", 0),
        bind("", "s1", &[Some("2")]),
        execute("", 0),
        sync(),
        parse("", "DELETE FROM t", &[]),
        bind("", "", &[]),
        execute("", 0),
        sync(),
        parse("", "INSERT INTO t VALUES ($1)", &[]),
        bind("", "", &[Some("not a number")]),
        execute("", 0),
        sync(),
    ]))
    .await;
    for _ in 0..3 {
        raw.until_ready().await;
    }
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let rows = client
        .query("SELECT a FROM t WHERE a > $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);

    let events = wait_for(&path, |ev| statements(ev).len() >= 5).await;
    let st = statements(&events);
    assert_eq!(st.len(), 5, "{st:#?}");
    for e in &st[..2] {
        assert_eq!(stmt_field(e, "protocol"), "extended");
        assert_eq!(stmt_field(e, "kind"), "select");
        assert_eq!(outcome(e, "command_tag"), "SELECT 1");
    }
    assert_eq!(stmt_field(&st[0], "params"), &serde_json::json!(["1"]));
    assert_eq!(stmt_field(&st[1], "params"), &serde_json::json!(["2"]));
    assert_eq!(stmt_field(&st[2], "verdict"), "blocked");
    assert_eq!(stmt_field(&st[2], "rule_id"), "delete_without_where");
    assert_eq!(outcome(&st[2], "sqlstate"), "42501");
    assert_eq!(outcome(&st[3], "sqlstate"), "22P02");
    assert_eq!(outcome(&st[4], "rows"), 2);
}

#[tokio::test]
async fn connection_and_auth_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let proxy = start_proxy(audited(dir.path(), |_| {})).await;
    let db = database_with_table("audit_conn");
    let bad = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password=wrong dbname={db}",
        proxy.addr().port()
    );
    assert!(tokio_postgres::connect(&bad, NoTls).await.is_err());
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);

    let events = wait_for(&path, |ev| {
        ev.iter()
            .any(|e| e["type"] == "connection" && e["connection"]["action"] == "close")
    })
    .await;
    let auth: Vec<&Value> = events.iter().filter(|e| e["type"] == "auth").collect();
    assert_eq!(auth.len(), 2, "{auth:#?}");
    assert_eq!(auth[0]["auth"]["result"], "failure");
    assert!(auth[0]["auth"]["reason"]
        .as_str()
        .unwrap()
        .contains("password"));
    assert_eq!(auth[1]["auth"]["result"], "success");
    assert_eq!(auth[1]["user"], SCRAM_USER);
    let conn: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "connection")
        .collect();
    assert_eq!(conn.len(), 2);
    assert_eq!(conn[0]["connection"]["action"], "open");
    assert!(conn[0]["connection"]["backend_pid"].as_u64().is_some());
    let close = &conn[1]["connection"];
    assert!(close["bytes_from_client"].as_u64().unwrap() > 0);
    assert!(close["bytes_to_client"].as_u64().unwrap() > 0);
    assert_eq!(close["statements"], 1);
    assert!(close["duration_ms"].as_u64().is_some());
    assert_eq!(conn[0]["session_id"], conn[1]["session_id"]);
}

#[tokio::test]
async fn literals_and_passwords_are_redacted_unless_configured() {
    for keep_literals in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let proxy = start_proxy(audited(dir.path(), |c| {
            c.audit.redact_literals = !keep_literals;
        }))
        .await;
        let db = database_with_table("audit_redact");
        let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
        client
            .simple_query("INSERT INTO t VALUES (424242)")
            .await
            .unwrap();
        client
            .simple_query("SELECT 'sekret-literal' AS x, $$dollar-sekret$$")
            .await
            .unwrap();
        let admin = connect(proxy.addr(), "postgres", SUPERUSER_PW, &db).await;
        let role = format!("audit_redact_{}", std::process::id());
        admin
            .simple_query(&format!(
                "CREATE ROLE {role}_{keep_literals} LOGIN PASSWORD 'pw-do-not-log-123'"
            ))
            .await
            .unwrap();
        wait_for(&path, |ev| statements(ev).len() >= 3).await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("pw-do-not-log-123"), "{text}");
        assert_eq!(text.contains("[redacted]"), keep_literals, "{text}");
        for literal in ["424242", "sekret-literal", "dollar-sekret"] {
            assert_eq!(text.contains(literal), keep_literals, "{literal}: {text}");
        }
        if !keep_literals {
            assert!(text.contains("INSERT INTO t VALUES ($1)"), "{text}");
        }
    }
}

/// Run `pgward audit …`; (exit code, stdout, stderr).
fn pgward_audit(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(pgward_bin())
        .arg("audit")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn rotated_files_read_back_verify_and_answer_query_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let proxy = start_proxy(audited(dir.path(), |c| {
        if let SinkConfig::File(f) = &mut c.audit.sinks[0] {
            f.max_bytes = 4000;
        }
        c.audit.batch_max = 4;
    }))
    .await;
    let db = database_with_table("audit_rotate");
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    for i in 0..40 {
        client
            .simple_query(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .unwrap();
    }
    client.simple_query("TRUNCATE t").await.unwrap_err();
    // The chain continues across a restart of pgward.
    proxy.shutdown(Duration::from_secs(5)).await;
    drop(client);
    drop(proxy);
    let proxy = start_proxy(audited(dir.path(), |c| {
        if let SinkConfig::File(f) = &mut c.audit.sinks[0] {
            f.max_bytes = 4000;
        }
    }))
    .await;
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    client
        .simple_query("DELETE FROM t WHERE a = 1")
        .await
        .unwrap();

    let all_files = || {
        let mut files = pgward::audit::sinks::file::rotated_files(&path);
        files.push(path.clone());
        files
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let events = loop {
        let ev = read_events(&all_files());
        if statements(&ev).len() >= 42 {
            break ev;
        }
        assert!(
            Instant::now() < deadline,
            "{} statements",
            statements(&ev).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let files = all_files();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files[..files.len() - 1] {
        assert!(std::fs::metadata(f).unwrap().len() <= 4000);
    }
    assert_eq!(statements(&events).len(), 42);

    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let args = |cmd: &str| -> Vec<String> {
        std::iter::once(cmd.to_string())
            .chain(names.iter().cloned())
            .collect()
    };
    let (code, out, err) = pgward_audit(
        &args("verify")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK: "), "{out}");

    let mut q = args("query");
    q.extend(["--verdict", "blocked", "--format", "csv"].map(String::from));
    let (code, out, _) = pgward_audit(&q.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0].starts_with("time,id,type"));
    assert!(
        rows[1].contains(",blocked,truncate,WRITE,truncate,"),
        "{}",
        rows[1]
    );

    let mut q = args("query");
    q.extend(["--class", "WRITE", "--table", "t", "--user", SCRAM_USER].map(String::from));
    let (_, out, _) = pgward_audit(&q.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.lines().count(), 42);
    let mut q = args("query");
    q.extend(["--since", "2100-01-01"].map(String::from));
    let (_, out, _) = pgward_audit(&q.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out, "");

    let (code, out, _) =
        pgward_audit(&args("stats").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["by_verdict"]["blocked"], 1);
    assert_eq!(stats["by_verdict"]["allowed"], 41);
    assert_eq!(stats["by_class"]["WRITE"], 42);
    assert_eq!(stats["by_user"][SCRAM_USER], 42);
    // Open and close on the first run; the second session is still open.
    assert_eq!(stats["by_type"]["connection"], 3);
}

#[tokio::test]
async fn verify_catches_an_edited_byte_a_deleted_line_and_a_swapped_pair() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let proxy = start_proxy(audited(dir.path(), |_| {})).await;
    let db = database_with_table("audit_verify");
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    for i in 0..8 {
        client
            .simple_query(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .unwrap();
    }
    wait_for(&path, |ev| statements(ev).len() >= 8).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let check = |name: &str, lines: Vec<String>| {
        let f = dir.path().join(name);
        std::fs::write(&f, lines.join("\n") + "\n").unwrap();
        pgward_audit(&["verify", f.to_str().unwrap()])
    };
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (code, out, _) = check("intact.jsonl", own(&lines));
    assert_eq!(code, 0, "{out}");

    let mut edited = own(&lines);
    edited[5] = edited[5].replacen("INSERT", "UPSERT", 1);
    let (code, out, _) = check("edited.jsonl", edited);
    assert_eq!(code, 1);
    assert!(
        out.contains("modified at") && out.contains("edited.jsonl:6"),
        "{out}"
    );

    let mut deleted = own(&lines);
    deleted.remove(4);
    let (code, out, _) = check("deleted.jsonl", deleted);
    assert_eq!(code, 1);
    assert!(
        out.contains("missing before") && out.contains("deleted.jsonl:5"),
        "{out}"
    );

    let mut swapped = own(&lines);
    swapped.swap(3, 4);
    let (code, out, _) = check("swapped.jsonl", swapped);
    assert_eq!(code, 1);
    assert!(
        out.contains("reordered at") && out.contains("swapped.jsonl:4"),
        "{out}"
    );
}

/// A file sink writing into a FIFO nobody reads yet: the sink stalls once
/// the pipe's buffer is full, then the queue fills.
struct StalledSink {
    dir: tempfile::TempDir,
    reader: Option<std::thread::JoinHandle<std::fs::File>>,
}

impl StalledSink {
    fn new() -> StalledSink {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("audit.jsonl");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo");
        // Opening a FIFO's read end blocks until pgward opens the write end.
        let reader = std::thread::spawn(move || std::fs::File::open(fifo).unwrap());
        StalledSink {
            dir,
            reader: Some(reader),
        }
    }

    fn config(&self, on_full: OnFull) -> Config {
        audited(self.dir.path(), |c| {
            c.audit.on_full = on_full;
            c.audit.queue_capacity = 2;
            c.audit.batch_max = 1;
            if let SinkConfig::File(f) = &mut c.audit.sinks[0] {
                f.max_bytes = 0;
                f.rotate_daily = false;
            }
        })
    }

    /// Start draining the pipe; returns the bytes read until `stop`.
    fn drain(&mut self) -> std::thread::JoinHandle<usize> {
        let reader = self.reader.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut f = reader.join().unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        })
    }
}

/// Statements until one fails or `limit` passed; (ok count, first error).
async fn run_until_stuck(client: &Client, n: usize) -> (usize, Option<tokio_postgres::Error>) {
    for i in 0..n {
        let q = format!("SELECT {i}, repeat('x', 2000)");
        match tokio::time::timeout(Duration::from_secs(2), client.simple_query(&q)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return (i, Some(e)),
            Err(_) => return (i, None),
        }
    }
    (n, None)
}

#[tokio::test]
async fn queue_full_fail_closed_refuses_statements_with_a_clear_error() {
    let mut stalled = StalledSink::new();
    let proxy = start_proxy(stalled.config(OnFull::FailClosed)).await;
    let db = fresh_database("audit_fail_closed");
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let (done, err) = run_until_stuck(&client, 2000).await;
    let err = err.unwrap_or_else(|| panic!("never refused ({done} statements ran)"));
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "42501");
    assert!(
        db_err.message().contains("cannot be audited"),
        "{}",
        db_err.message()
    );
    // The session is still usable once the sink catches up.
    let _drain = stalled.drain();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.simple_query("SELECT 1").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "still refused after the sink drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn queue_full_drop_keeps_serving_and_counts_the_loss() {
    let mut stalled = StalledSink::new();
    let proxy = start_proxy(stalled.config(OnFull::Drop)).await;
    let db = fresh_database("audit_drop");
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let dropped = || {
        pgward::admin::metrics::metrics()
            .audit
            .dropped
            .with_label_values(&["queue_full"])
            .get()
    };
    let before = dropped();
    let (done, err) = run_until_stuck(&client, 300).await;
    assert_eq!((done, err.map(|e| e.to_string())), (300, None));
    assert!(dropped() > before, "nothing counted as dropped");
    let _drain = stalled.drain();
}

#[tokio::test]
async fn queue_full_block_holds_the_session_until_the_sink_catches_up() {
    let mut stalled = StalledSink::new();
    let proxy = start_proxy(stalled.config(OnFull::Block)).await;
    let db = fresh_database("audit_block");
    let client = connect(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    let (done, err) = run_until_stuck(&client, 2000).await;
    assert!(
        err.is_none(),
        "block mode must not fail statements: {err:?}"
    );
    assert!(done < 2000, "the session was never held back");
    let drain = stalled.drain();
    // Once the sink drains, the session proceeds and nothing was lost.
    client.simple_query("SELECT 'after'").await.unwrap();
    let waits = pgward::admin::metrics::metrics()
        .audit
        .queue_full_waits
        .get();
    assert!(waits > 0);
    proxy.shutdown(Duration::from_secs(5)).await;
    drop(proxy);
    let _ = drain;
}
