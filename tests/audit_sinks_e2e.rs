//! The `http` audit sink end to end: the real `pgward` binary under pgbench
//! load, its HTTP receiver down for a while, and a `kill -9` in the middle
//! of an outage. Every statement event must arrive, once, in chain order.

mod common;
mod receivers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use common::{cluster, fresh_database, pg_bin, SCRAM_PW, SCRAM_USER};
use receivers::HttpReceiver;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pgward config: the harness cluster upstream, an `http` audit sink
/// with a spool, every statement class audited.
fn write_config(dir: &Path, port: u16, url: &str, spool: &Path) -> PathBuf {
    write_config_with(dir, port, url, spool, "")
}

fn write_config_with(dir: &Path, port: u16, url: &str, spool: &Path, extra: &str) -> PathBuf {
    let h = cluster();
    let text = format!(
        r#"[listen]
addresses = ["127.0.0.1:{port}"]

[upstream]
host = "127.0.0.1"
port = {pg}

[admin]
listen = ""

[audit]
batch_max = 256

[audit.filter]
classes = ["ALL"]

[[audit.sinks]]
type = "http"
name = "collector"
url = "{url}"
spool_dir = "{spool}"
retries = 1
backoff_initial_ms = 50
backoff_max_ms = 400
timeout_ms = 2000
{extra}
"#,
        pg = h.pg.port,
        spool = spool.display()
    );
    let path = dir.join("pgward.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn_pgward(config: &Path) -> Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgward"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
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

fn pgbench(args: &[&str], conninfo: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(pg_bin("pgbench"));
    cmd.args(args)
        .arg(conninfo)
        .env("PGPASSWORD", SCRAM_PW)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn direct_conninfo(db: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} dbname={db}",
        cluster().pg.port
    )
}

fn proxy_conninfo(port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={port} user={SCRAM_USER} dbname={db}")
}

/// pgbench's tables, created directly on the cluster (pgbench -i sends
/// TRUNCATE and VACUUM, which are not what these tests are about).
async fn init_pgbench(db: &str) {
    let out = pgbench(&["-i", "-s", "1", "-q"], &direct_conninfo(db))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `number of transactions actually processed: N/M` from pgbench.
fn processed(out: &Output) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed:"))
        .and_then(|r| r.trim().split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in pgbench output:\n{stdout}"))
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Statement events of `kind` on `table`.
fn count_statements(lines: &[String], kind: &str, table: &str) -> usize {
    lines
        .iter()
        .map(|l| json(l))
        .filter(|v| {
            v["type"] == "statement"
                && v["statement"]["kind"] == kind
                && v["statement"]["tables"].as_array().is_some_and(|t| {
                    t.iter()
                        .any(|x| x.as_str().is_some_and(|s| s.ends_with(table)))
                })
        })
        .count()
}

/// The chain is whole: each line's `prev` is the line before's `hash`
/// (the first starts from `first_prev`), and no event id repeats.
fn check_chain(lines: &[String], first_prev: &str) {
    let mut prev = first_prev.to_string();
    let mut ids = std::collections::HashSet::new();
    for (i, l) in lines.iter().enumerate() {
        let link = pgward::audit::chain::check(l.as_bytes())
            .unwrap_or_else(|| panic!("line {i}: no chain fields"));
        assert!(link.intact, "line {i} was modified");
        assert_eq!(
            link.prev, prev,
            "line {i} does not follow the line before it"
        );
        prev = link.hash.to_string();
        assert!(
            ids.insert(json(l)["id"].as_str().unwrap().to_string()),
            "line {i}: id repeats"
        );
    }
}

/// Lines waiting in the spool, oldest batch first.
fn spooled_lines(spool: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(spool)
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "batch"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_of_a_pgbench_run_arrives_in_order_across_a_receiver_outage() {
    let db = fresh_database("sinks_outage");
    init_pgbench(&db).await;
    let mut rx = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let port = free_port();
    let config = write_config(dir.path(), port, &rx.url("/ingest"), &spool);
    let mut child = spawn_pgward(&config);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).await;

    let bench = pgbench(
        &["-n", "-c", "4", "-j", "2", "-t", "400"],
        &proxy_conninfo(port, &db),
    )
    .spawn()
    .unwrap();
    // Down while the load runs, then back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.down().await;
    let down_at = Instant::now();
    let mut max_spooled = 0;
    while down_at.elapsed() < Duration::from_secs(3) {
        max_spooled = max_spooled.max(spooled_lines(&spool).len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rx.up().await;
    let out = bench.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tx = processed(&out);
    assert_eq!(tx, 1600);

    // Each pgbench transaction: BEGIN, 3 UPDATEs, SELECT, INSERT, END.
    let deadline = Instant::now() + Duration::from_secs(120);
    let lines = loop {
        let lines = rx.lines();
        if count_statements(&lines, "insert", "pgbench_history") as u64 >= tx
            && spooled_lines(&spool).is_empty()
        {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "events still missing after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(max_spooled > 0, "the outage never reached the spool");
    assert_eq!(
        count_statements(&lines, "insert", "pgbench_history") as u64,
        tx
    );
    assert_eq!(
        count_statements(&lines, "update", "pgbench_accounts") as u64,
        tx
    );
    assert_eq!(
        count_statements(&lines, "select", "pgbench_accounts") as u64,
        tx
    );
    check_chain(&lines, pgward::audit::chain::GENESIS);
    eprintln!(
        "outage test: {tx} transactions, {} events, at most {max_spooled} spooled",
        lines.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_spooled_before_a_kill_9_are_delivered_after_the_restart() {
    let db = fresh_database("sinks_kill9");
    init_pgbench(&db).await;
    let mut rx = HttpReceiver::start().await;
    rx.down().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let port = free_port();
    let config = write_config(dir.path(), port, &rx.url("/ingest"), &spool);
    let mut child = spawn_pgward(&config);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).await;

    let mut bench = pgbench(
        &["-n", "-c", "4", "-j", "2", "-T", "30"],
        &proxy_conninfo(port, &db),
    )
    .spawn()
    .unwrap();
    // Mid-load, once a few hundred events are on disk: kill -9.
    let deadline = Instant::now() + Duration::from_secs(30);
    while spooled_lines(&spool).len() < 300 {
        assert!(Instant::now() < deadline, "nothing reached the spool");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let _ = bench.kill().await;
    let spooled = spooled_lines(&spool);
    assert!(spooled.len() >= 300);

    // Restart with the receiver back: the spool is replayed first, in
    // order, and the chain continues from its last event.
    rx.up().await;
    let mut child = spawn_pgward(&config);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let lines = rx.wait_lines(spooled.len(), Duration::from_secs(60)).await;
    assert_eq!(
        lines[..spooled.len()],
        spooled[..],
        "spooled events, in order"
    );
    let out = tokio::process::Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-At",
            "-c",
            "DELETE FROM pgbench_tellers WHERE tid < 0",
        ])
        .arg(proxy_conninfo(port, &db))
        .env("PGPASSWORD", SCRAM_PW)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = rx.lines();
        if count_statements(&lines[spooled.len()..], "delete", "pgbench_tellers") == 1 {
            break lines;
        }
        assert!(Instant::now() < deadline, "the new statement never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let first_prev = pgward::audit::chain::check(lines[0].as_bytes())
        .unwrap()
        .prev
        .to_string();
    check_chain(&lines, &first_prev);
    eprintln!(
        "kill -9 test: {} events spooled at the kill, {} delivered after restart",
        spooled.len(),
        lines.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_deletion_through_pgward_alerts_at_the_threshold_for_hard_and_soft_deletes() {
    let db = fresh_database("sinks_mass_delete");
    cluster()
        .pg
        .psql(
            &db,
            &format!(
                "CREATE TABLE items (id int PRIMARY KEY);
                 INSERT INTO items SELECT generate_series(1, 20);
                 CREATE TABLE accounts (id int PRIMARY KEY, deleted_at timestamptz);
                 INSERT INTO accounts SELECT generate_series(1, 20);
                 GRANT ALL ON items, accounts TO {SCRAM_USER};"
            ),
        )
        .unwrap();
    let rx = HttpReceiver::start().await;
    let hook = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "[audit.mass_delete]\nrows = 5\nwindow_secs = 60\n[audit.mass_delete.webhook]\nurl = \"{}\"\n\n\
         [[policy.soft_delete]]\ntable = \"public.accounts\"\n\n[soft_delete_check]\nskip = true\n",
        hook.url("/alert")
    );
    let config = write_config_with(
        dir.path(),
        port,
        &rx.url("/in"),
        &dir.path().join("spool"),
        &extra,
    );
    let mut child = spawn_pgward(&config);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let (client, conn) = tokio_postgres::connect(
        &format!("{} password={SCRAM_PW}", proxy_conninfo(port, &db)),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);

    let alerts = |lines: &[String]| -> Vec<serde_json::Value> {
        lines
            .iter()
            .map(|l| json(l))
            .filter(|v| v["type"] == "alert")
            .collect()
    };
    let settle = |n: usize| {
        let rx = &rx;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let lines = rx.lines();
                if count_statements(&lines, "delete", "items")
                    + count_statements(&lines, "delete", "accounts")
                    >= n
                {
                    // The alert, if any, follows its statement in the same batch.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return rx.lines();
                }
                assert!(Instant::now() < deadline, "delete events missing");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // 4 rows from each table: below the threshold.
    assert_eq!(
        client
            .execute("DELETE FROM items WHERE id <= 4", &[])
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        client
            .execute("DELETE FROM accounts WHERE id <= 2", &[])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        client
            .execute("DELETE FROM accounts WHERE id IN (3, 4)", &[])
            .await
            .unwrap(),
        2
    );
    let lines = settle(3).await;
    assert!(alerts(&lines).is_empty(), "{:?}", alerts(&lines));
    assert!(hook.lines().is_empty());

    // The fifth row of each table raises one alert per table.
    assert_eq!(
        client
            .execute("DELETE FROM items WHERE id = 5", &[])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        client
            .execute("DELETE FROM accounts WHERE id = 5", &[])
            .await
            .unwrap(),
        1
    );
    let lines = settle(5).await;
    let raised = alerts(&lines);
    assert_eq!(raised.len(), 2, "{raised:?}");
    let items = raised
        .iter()
        .find(|a| a["alert"]["table"].as_str().unwrap().ends_with("items"))
        .unwrap();
    assert_eq!(items["alert"]["rows"], 5);
    let accounts = raised
        .iter()
        .find(|a| a["alert"]["table"].as_str().unwrap().ends_with("accounts"))
        .unwrap();
    assert_eq!(accounts["alert"]["rows"], 5);
    assert!(
        accounts["alert"]["message"]
            .as_str()
            .unwrap()
            .contains("0 hard, 5 soft"),
        "{accounts}"
    );
    // Soft: the rows are still there, marked.
    let marked = cluster()
        .pg
        .psql(
            &db,
            "SELECT count(*) FROM accounts WHERE deleted_at IS NOT NULL",
        )
        .unwrap();
    assert_eq!(marked.trim(), "5");
    let hooked = hook.wait_lines(2, Duration::from_secs(10)).await;
    assert_eq!(hooked.len(), 2);
    child.kill().unwrap();
    child.wait().unwrap();
}
