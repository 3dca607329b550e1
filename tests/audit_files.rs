//! The `file` and `stdout` sinks as an operator meets them: retention per
//! class with real old files, rotation at the first event of a new UTC day
//! (the sink's clock moved across midnight), `fsync = "interval"` seen at
//! the syscall level, the `stdout` sink of the real binary, and `pgward
//! audit verify` progress on a large file. Real Postgres, real pgward.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::statements;
use common::{cluster, fresh_database, start_proxy, SCRAM_PW, SCRAM_USER};
use pgward::audit::chain::{self, Chain};
use pgward::audit::config::{Clock, FileSinkConfig, Fsync, SinkConfig};
use pgward::audit::sinks::critical::critical_path;
use pgward::audit::sinks::file::{rotated_files, rotated_name};
use pgward::audit::time;
use pgward::config::Config;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

const DAY_US: i64 = 86_400_000_000;

async fn connect(addr: SocketAddr, db: &str) -> Client {
    common::connect_client(addr, SCRAM_USER, SCRAM_PW, db).await
}

/// An in-process pgward auditing every class into `dir/audit.jsonl`.
fn audited(dir: &Path, tweak: impl FnOnce(&mut FileSinkConfig)) -> Config {
    let mut cfg = common::proxy_config();
    cfg.audit.filter.classes = vec!["ALL".into()];
    let mut sink = FileSinkConfig {
        path: dir.join("audit.jsonl"),
        fsync: Fsync::Never,
        ..FileSinkConfig::default()
    };
    tweak(&mut sink);
    cfg.audit.sinks = vec![SinkConfig::File(sink)];
    cfg
}

fn database_with_table(prefix: &str) -> String {
    let db = fresh_database(prefix);
    cluster()
        .pg
        .psql(&db, "CREATE TABLE t(a int); GRANT ALL ON t TO PUBLIC;")
        .expect("setup");
    db
}

fn lines_of(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>())
        .collect()
}

fn events_of(files: &[PathBuf]) -> Vec<Value> {
    lines_of(files)
        .iter()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

/// A stream's files in chain order: rotated ones, then the active one.
fn stream(active: &Path) -> Vec<PathBuf> {
    let mut files = rotated_files(active);
    files.push(active.to_path_buf());
    files
}

/// Poll until `want` holds for the events of `files`.
async fn wait_for(files: impl Fn() -> Vec<PathBuf>, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    common::poll_events(|| events_of(&files()), want).await
}

fn sql_of(e: &Value) -> &str {
    e["statement"]["sql"].as_str().unwrap_or("")
}

/// `pgward audit verify FILES…`: (exit code, stdout, stderr).
fn verify(files: &[PathBuf], extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgward"))
        .args(["audit", "verify"])
        .args(extra)
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write `n` chained events to `path`, continuing `chain`; set its mtime.
fn write_old_file(path: &Path, chain: &mut Chain, n: usize, age_days: u64) {
    let text: String = (0..n)
        .map(|i| {
            chain.link(&format!(
                r#"{{"v":1,"id":"old{i}","time":"2026-01-01T00:00:00.000000Z","type":"policy","policy":{{"action":"reload","result":"ok"}}}}"#
            )) + "\n"
        })
        .collect();
    std::fs::write(path, text).unwrap();
    let mtime = SystemTime::now() - Duration::from_secs(age_days * 86_400);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[tokio::test]
async fn critical_events_get_their_own_chain_and_outlive_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("audit.jsonl");
    let critical = critical_path(&main);
    let now = time::now_micros();
    // History from earlier runs: two rotated files per stream, real chains.
    let mut main_chain = Chain::new(None);
    let main_40d = rotated_name(&main, now - 40 * DAY_US);
    let main_5d = rotated_name(&main, now - 5 * DAY_US);
    write_old_file(&main_40d, &mut main_chain, 3, 40);
    let deleted_main_end = main_chain.last().to_string();
    write_old_file(&main_5d, &mut main_chain, 2, 5);
    let mut crit_chain = Chain::new(None);
    let crit_100d = rotated_name(&critical, now - 100 * DAY_US);
    let crit_40d = rotated_name(&critical, now - 40 * DAY_US);
    write_old_file(&crit_100d, &mut crit_chain, 2, 100);
    let deleted_crit_end = crit_chain.last().to_string();
    write_old_file(&crit_40d, &mut crit_chain, 2, 40);

    let proxy = start_proxy(audited(dir.path(), |f| {
        f.retention_days = 30;
        f.critical_retention_days = Some(90);
    }))
    .await;
    // Opening the sink applied each stream's retention.
    assert!(
        !main_40d.exists(),
        "30-day retention keeps a 40-day-old file"
    );
    assert!(main_5d.exists());
    assert!(
        !crit_100d.exists(),
        "90-day retention keeps a 100-day-old file"
    );
    assert!(
        crit_40d.exists(),
        "a 40-day-old critical file must be kept for 90 days"
    );

    let db = database_with_table("audit_critical");
    let bad = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password=wrong dbname={db}",
        proxy.addr().port()
    );
    assert!(tokio_postgres::connect(&bad, NoTls).await.is_err());
    let client = connect(proxy.addr(), &db).await;
    client
        .simple_query("INSERT INTO t VALUES (1); SELECT a FROM t")
        .await
        .unwrap();
    client.simple_query("TRUNCATE t").await.unwrap_err();
    client
        .simple_query("CREATE TABLE t2 (b int)")
        .await
        .unwrap();
    client
        .simple_query("UPDATE t SET a = 2 WHERE a = 1")
        .await
        .unwrap();

    let all = wait_for(|| vec![main.clone()], |ev| statements(ev).len() >= 5).await;
    let crit = wait_for(|| vec![critical.clone()], |ev| statements(ev).len() >= 2).await;
    // The main stream has everything; the critical stream only the failed
    // login, the blocked TRUNCATE and the DDL.
    let main_kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        main_kinds,
        [
            "auth",
            "auth",
            "connection",
            "statement",
            "statement",
            "statement",
            "statement",
            "statement"
        ],
        "{all:#?}"
    );
    let summary: Vec<String> = crit
        .iter()
        .map(|e| format!("{} {}", e["type"].as_str().unwrap(), sql_of(e)))
        .collect();
    assert_eq!(
        summary,
        [
            "auth ",
            "statement TRUNCATE t",
            "statement CREATE TABLE t2 (b int)"
        ],
        "{crit:#?}"
    );
    assert_eq!(crit[0]["auth"]["result"], "failure");
    assert_eq!(crit[1]["statement"]["verdict"], "blocked");
    // Same events, relinked: the ids match the main stream's.
    for c in &crit[1..] {
        assert!(all.iter().any(|e| e["id"] == c["id"]), "{c}");
    }

    // Each stream verifies over what retention left: it continues the chain
    // of the deleted file.
    proxy.shutdown(Duration::from_secs(5)).await;
    for (files, deleted_end) in [
        (stream(&main), &deleted_main_end),
        (stream(&critical), &deleted_crit_end),
    ] {
        let (code, out, err) = verify(&files, &[]);
        assert_eq!(code, 0, "{files:?}: {out}{err}");
        assert!(
            out.contains(&format!("continues a chain ending in {deleted_end}")),
            "{out}"
        );
    }
    // The critical chain is its own: its first new event links to the last
    // critical event on disk, not to the main stream.
    assert_eq!(crit[0]["prev"], crit_chain.last());
}

#[tokio::test]
async fn the_file_rotates_at_the_first_event_of_a_new_utc_day() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // The sink's clock: one second before a UTC midnight, moved by the test.
    let midnight = (time::now_micros() / DAY_US + 1) * DAY_US;
    let clock = Arc::new(AtomicI64::new(midnight - 1_000_000));
    let c = clock.clone();
    let proxy = start_proxy(audited(dir.path(), move |f| {
        f.clock = Clock(Arc::new(move || c.load(Ordering::SeqCst)));
        f.max_bytes = 0;
    }))
    .await;
    let db = database_with_table("audit_daily");
    let client = connect(proxy.addr(), &db).await;
    for i in 0..3 {
        client
            .simple_query(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .unwrap();
    }
    wait_for(|| vec![path.clone()], |ev| statements(ev).len() >= 3).await;
    // Midnight passes; nothing is written, nothing rotates.
    clock.store(midnight + 500_000, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rotated_files(&path).is_empty());
    // The first event of the new day rotates the file first.
    client
        .simple_query("INSERT INTO t VALUES (100)")
        .await
        .unwrap();
    let all = wait_for(|| stream(&path), |ev| statements(ev).len() >= 4).await;
    let rotated = rotated_files(&path);
    assert_eq!(rotated, vec![rotated_name(&path, midnight + 500_000)]);
    let yesterday = events_of(&rotated);
    let today = events_of(std::slice::from_ref(&path));
    assert_eq!(statements(&yesterday).len(), 3);
    assert_eq!(
        statements(&today)
            .iter()
            .map(|e| sql_of(e))
            .collect::<Vec<_>>(),
        ["INSERT INTO t VALUES ($1)"]
    );
    assert_eq!(yesterday.len() + today.len(), all.len());
    // One chain across the two files.
    let (code, out, err) = verify(&stream(&path), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("continues"), "{out}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start the real binary with `[[audit.sinks]]` given as TOML.
fn spawn_pgward(dir: &Path, port: u16, sinks: &str, stdout: Stdio) -> Child {
    let text = format!(
        "[listen]\naddresses = [\"127.0.0.1:{port}\"]\n\n[upstream]\nhost = \"127.0.0.1\"\nport = {pg}\n\n\
         [admin]\nlisten = \"\"\n\n[audit]\nbatch_max = 1\n\n[audit.filter]\nclasses = [\"ALL\"]\n\n{sinks}\n",
        pg = cluster().pg.port
    );
    let config = dir.join("pgward.toml");
    std::fs::write(&config, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pgward"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("pgward starts")
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "pgward never listened on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `fdatasync`/`fsync` calls on `file` that `strace -y` logged.
fn syncs_of(strace_log: &Path, file: &Path) -> usize {
    let log = std::fs::read_to_string(strace_log).unwrap_or_default();
    let needle = format!("<{}>)", file.display());
    // A call another thread interrupts is logged `<unfinished ...>` and
    // resumed on a later line: count the lines that start a call.
    log.lines()
        .filter(|l| (l.contains("fdatasync(") || l.contains("fsync(")) && l.contains(&needle))
        .count()
}

/// pgward under `strace -f -y -e trace=fsync,fdatasync`: the sync calls
/// the audit file received while 50 statements ran and their events were
/// written, how long it was traced, and the file's lines after a kill -9.
async fn traced_syncs(fsync: &str) -> (usize, Duration, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let port = free_port();
    let mut pgward = spawn_pgward(
        dir.path(),
        port,
        &format!(
            "[[audit.sinks]]\ntype = \"file\"\npath = \"{}\"\nfsync = \"{fsync}\"\nfsync_interval_ms = 200\n",
            audit.display()
        ),
        Stdio::null(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr).await;
    let log = dir.path().join("strace.log");
    let mut strace = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&log)
        .args(["-p", &pgward.id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace is installed (.ci/run installs it)");
    // strace writes nothing until a traced call; give it time to attach to
    // every thread (ptrace attach is quick, but threads are many).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        strace.try_wait().unwrap().is_none(),
        "strace could not attach to pgward (ptrace not permitted?)"
    );
    let traced = Instant::now();
    let db = database_with_table("audit_fsync");
    let client = connect(addr, &db).await;
    // A burst, then a trickle spanning several intervals.
    for i in 0..40 {
        client
            .simple_query(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .unwrap();
    }
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        client
            .simple_query(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .unwrap();
    }
    // Data is readable while pgward runs, and syncs happen within the interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    while statements(&events_of(std::slice::from_ref(&audit))).len() < 50 {
        assert!(Instant::now() < deadline, "events never reached the file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let syncs = syncs_of(&log, &audit);
    let window = traced.elapsed();
    // kill -9: no flush on close, no shutdown drain.
    pgward.kill().unwrap();
    pgward.wait().unwrap();
    let _ = strace.kill();
    let _ = strace.wait();
    let lines = lines_of(&[audit]);
    (syncs, window, lines)
}

#[tokio::test]
async fn fsync_interval_syncs_the_file_in_the_background_and_never_does_not() {
    let (syncs, window, lines) = traced_syncs("interval").await;
    eprintln!("fsync = interval (200 ms): {syncs} fdatasync calls on the audit file in {window:?}");
    // Writes spread over 1.5 s: synced again and again, not once.
    assert!(syncs >= 3, "{syncs} fdatasync calls in {window:?}");
    // One sync per 200 ms interval at most (plus the one in progress), not
    // one per batch: 50+ batches of one event were written.
    let most = window.as_millis() as usize / 200 + 2;
    assert!(
        syncs <= most,
        "{syncs} syncs in {window:?}: not interval-paced"
    );
    assert!(
        syncs < 50,
        "{syncs} syncs for 50+ writes: that is fsync = always"
    );
    // Every event written before the kill is in the file, whole.
    assert!(statements(&events_from(&lines)).len() >= 50);
    let (never, _, lines) = traced_syncs("never").await;
    assert_eq!(never, 0, "fsync = never must leave syncing to the OS");
    assert!(statements(&events_from(&lines)).len() >= 50);
}

fn events_from(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("whole JSON lines"))
        .collect()
}

#[tokio::test]
async fn the_stdout_sink_of_the_binary_writes_chained_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pgward = spawn_pgward(
        dir.path(),
        port,
        "[[audit.sinks]]\ntype = \"stdout\"\n",
        Stdio::piped(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr).await;
    let db = database_with_table("audit_stdout");
    let client = connect(addr, &db).await;
    client
        .simple_query("INSERT INTO t VALUES (1); SELECT 'a\"b\\c\u{e9}' AS x")
        .await
        .unwrap();
    client.simple_query("TRUNCATE t").await.unwrap_err();
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SIGTERM: pgward drains the audit queue and exits.
    let ok = Command::new("kill")
        .args(["-TERM", &pgward.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = tokio::task::spawn_blocking(move || pgward.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        text.ends_with('\n'),
        "NDJSON ends each event with a newline"
    );
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let events = events_from(&lines);
    let st = statements(&events);
    assert_eq!(
        st.iter().map(|e| sql_of(e)).collect::<Vec<_>>(),
        ["INSERT INTO t VALUES ($1)", "SELECT $1 AS x", "TRUNCATE t"]
    );
    assert_eq!(st[2]["statement"]["verdict"], "blocked");
    assert!(events
        .iter()
        .any(|e| e["type"] == "connection" && e["connection"]["action"] == "close"));
    // A hash chain from the first line on, like any sink stream.
    let mut prev = chain::GENESIS.to_string();
    for l in &lines {
        let link = chain::check(l.as_bytes()).expect("chained");
        assert!(link.intact);
        assert_eq!(link.prev, prev);
        prev = link.hash.to_string();
    }
}

#[test]
fn verify_reports_progress_and_throughput_on_a_large_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    // ~40 MB of statement events (a debug build verifies ~20 MB/s).
    let mut chain = Chain::new(None);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let filler = "x".repeat(300);
    let mut n = 0u64;
    while n < 40_000_000 / 820 {
        let line = chain.link(&format!(
            r#"{{"v":1,"id":"{n:019x}","time":"2026-11-23T13:45:01.123456Z","type":"statement","session_id":7,"user":"app","statement":{{"protocol":"simple","kind":"insert","class":"WRITE","tables":["t"],"verdict":"allowed","sql":"INSERT INTO t VALUES ($1) -- {filler}","fingerprint":"5b0d2b8c51a3e7f0","outcome":{{"status":"ok","command_tag":"INSERT 0 1","rows":1,"duration_us":412}}}}}}"#
        ));
        use std::io::Write;
        writeln!(out, "{line}").unwrap();
        n += 1;
    }
    drop(out);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 30_000_000, "{size}");

    let (code, stdout, stderr) =
        verify(std::slice::from_ref(&path), &["--progress-every", "0.005"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with(&format!("OK: {n} events")), "{stdout}");
    let progress: Vec<(f64, f64)> = stderr
        .lines()
        .filter(|l| l.contains("%), "))
        .map(|l| {
            // verify: 12 / 48 MB (25%), 23077 events, 40 MB/s
            let mb: f64 = l["verify: ".len()..]
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let rate: f64 = l
                .rsplit(", ")
                .next()
                .unwrap()
                .trim_end_matches(" MB/s")
                .parse()
                .unwrap();
            (mb, rate)
        })
        .collect();
    assert!(progress.len() >= 2, "no progress shown: {stderr}");
    assert!(progress.windows(2).all(|w| w[0].0 <= w[1].0), "{stderr}");
    assert!(progress.iter().all(|&(_, rate)| rate > 0.0), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("verify: {n} events, ")) && last.ends_with(" MB/s)"),
        "{last}"
    );
    let (code, _, _) = verify(&[path], &["--progress-every", "0"]);
    assert_eq!(code, 2, "a zero interval is a usage error");
}

#[test]
fn the_reference_file_sink_example_loads_with_per_class_retention() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgward.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find("# [[audit.sinks]]\n# type = \"file\"")
        .expect("example");
    let block: String = text[start..]
        .lines()
        .take_while(|l| *l != "#")
        .map(|l| format!("{}\n", l.trim_start_matches("# ")))
        .collect();
    let cfg = Config::from_toml(&format!("{text}\n{block}"), path).expect("example loads");
    cfg.audit.validate().expect("example is valid");
    let SinkConfig::File(f) = &cfg.audit.sinks[0] else {
        panic!("{:?}", cfg.audit.sinks)
    };
    assert_eq!(
        (f.retention_days, f.critical_retention_days),
        (30, Some(90))
    );
    assert_eq!(f.fsync, Fsync::Interval);
    // A critical retention shorter than the general one is refused.
    let short = block.replace(
        "critical_retention_days = 90",
        "critical_retention_days = 7",
    );
    let err = match Config::from_toml(&format!("{text}\n{short}"), path) {
        Err(e) => e.to_string(),
        Ok(cfg) => cfg.audit.validate().unwrap_err(),
    };
    assert!(err.contains("critical_retention_days = 7"), "{err}");
}
