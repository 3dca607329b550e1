//! Operations: config reload (signal-free API and file watch), the admin
//! HTTP port, metrics exposition, graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgward::admin::AdminServer;
use pgward::proxy::{Proxy, RunningProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

use common::{SCRAM_PW, SCRAM_USER};

async fn within<F: std::future::Future>(secs: u64, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out after {secs}s"))
}

/// A client and the task driving its connection (its result tells how it ended).
async fn connect(
    addr: SocketAddr,
    db: &str,
) -> (
    Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let conn = format!(
        "host={} port={} user={SCRAM_USER} password={SCRAM_PW} dbname={db}",
        addr.ip(),
        addr.port()
    );
    let (client, connection) = within(10, "connect", tokio_postgres::connect(&conn, NoTls))
        .await
        .expect("connect through pgward");
    (client, tokio::spawn(connection))
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// A config file for the shared cluster; `extra` is appended verbatim.
fn config_text(extra: &str) -> String {
    let h = common::cluster();
    format!(
        "[listen]\naddresses = [\"127.0.0.1:0\"]\n\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\n\n[admin]\nlisten = \"\"\n\n{extra}",
        h.pg.port
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

async fn proxy_from_file(path: &Path) -> RunningProxy {
    Proxy::bind_file(path, |_| {})
        .await
        .expect("pgward binds")
        .spawn()
}

async fn admin_for(proxy: &RunningProxy) -> SocketAddr {
    let admin = AdminServer::bind("127.0.0.1:0", proxy.handle())
        .await
        .unwrap();
    let addr = admin.local_addr().unwrap();
    admin.spawn();
    addr
}

/// One raw HTTP exchange: (status, body).
async fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = within(10, "http response", s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
}

fn metric_value(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn promtool() -> Option<PathBuf> {
    ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_reload_applies_to_an_open_sessions_next_statement() {
    let db = common::fresh_database("ops_reload");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.toml");
    write(&path, &config_text(""));
    let proxy = proxy_from_file(&path).await;
    let (client, _conn) = connect(proxy.addr(), &db).await;
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let e = client.batch_execute("TRUNCATE t").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");

    // Exempt this user from the truncate rule: the open session sees it.
    write(
        &path,
        &config_text(&format!(
            "[policy.rules.truncate]\nexcept_users = [\"{SCRAM_USER}\"]\n"
        )),
    );
    let before = proxy.handle().live().sha256.clone();
    proxy.handle().reload().expect("valid config reloads");
    assert_ne!(proxy.handle().live().sha256, before);
    client.batch_execute("TRUNCATE t").await.unwrap();

    // The file watch picks up a change without an explicit reload.
    let watcher = tokio::spawn(proxy.handle().watch_file(Duration::from_millis(100)));
    write(&path, &config_text(""));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.batch_execute("TRUNCATE t").await {
            Err(e) if sqlstate(&e) == "42501" => break,
            Err(e) => panic!("unexpected error {e}"),
            Ok(()) => {
                assert!(Instant::now() < deadline, "file watch never reloaded");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_old_policy_and_stays_ready() {
    let db = common::fresh_database("ops_bad_reload");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.toml");
    write(&path, &config_text(""));
    let proxy = proxy_from_file(&path).await;
    let admin = admin_for(&proxy).await;
    let (client, _conn) = connect(proxy.addr(), &db).await;
    client
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let sha = proxy.handle().live().sha256.clone();

    let failures = |m: &str| metric_value(m, "pgward_config_reloads_total{result=\"failure\"}");
    let before = failures(&get(admin, "/metrics").await.1);

    let cases = [
        (
            "syntax error",
            config_text("[policy.rules.truncate]\nexcept_users = [\"x\"\n"),
            "pgward.toml:",
        ),
        (
            "unknown key",
            config_text("[timeouts]\nshutdown_seconds = 3\n"),
            "pgward.toml:12:1",
        ),
        (
            "missing TLS material",
            config_text(
                "[client_tls]\nmode = \"allow\"\ncert_file = \"/nonexistent/pgward.pem\"\nkey_file = \"/nonexistent/pgward.key\"\n",
            ),
            "/nonexistent/pgward.pem",
        ),
        (
            "bad rule",
            config_text("[[policy.custom]]\nid = \"x\"\naction = \"block\"\n"),
            "pgward.toml:12:6: custom rule \"x\" matches nothing",
        ),
    ];
    for (what, text, expect) in &cases {
        write(&path, text);
        let err = proxy.handle().reload().expect_err(what).to_string();
        assert!(err.contains(expect), "{what}: {err}");
        let e = client.batch_execute("TRUNCATE t").await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{what}: old policy still blocks");
        assert_eq!(proxy.handle().live().sha256, sha, "{what}");
        let (status, body) = get(admin, "/readyz").await;
        assert_eq!(status, 200, "{what}: {body}");
    }
    let metrics = get(admin, "/metrics").await.1;
    assert!(failures(&metrics) >= before + 4.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_http_errors() {
    let db = common::fresh_database("ops_admin");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.toml");
    write(&path, &config_text(""));
    let proxy = proxy_from_file(&path).await;
    let admin = admin_for(&proxy).await;
    let (client, _conn) = connect(proxy.addr(), &db).await;
    client.batch_execute("SELECT 1").await.unwrap();
    let _ = client.batch_execute("TRUNCATE pg_class").await;

    assert_eq!(get(admin, "/healthz").await.0, 200);
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "pgward_statements_total{class=\"READ\",verdict=\"allow\"}",
        "pgward_rule_hits_total{action=\"block\",rule=\"truncate\"}",
        "pgward_client_connections ",
        "pgward_build_info{version=",
        "pgward_policy_evaluation_seconds_bucket",
        "pgward_client_bytes_sent_total",
        "pgward_query_duration_seconds_count",
        "pgward_upstream_connections ",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    if let Some(promtool) = promtool() {
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("promtool not installed: skipping `promtool check metrics`");
    }

    let (status, body) = get(admin, "/policy").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64, "{v}");
    assert_eq!(v["config"]["timeouts"]["shutdown_secs"], 30, "{v}");
    assert!(v["loaded_at_unix"].as_u64().unwrap() > 0);

    assert_eq!(get(admin, "/nope").await.0, 404);
    assert_eq!(
        http_raw(admin, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .0,
        405
    );
    assert_eq!(http_raw(admin, b"garbage\r\n\r\n").await.0, 400);
    assert_eq!(http_raw(admin, b"GET /healthz\r\n\r\n").await.0, 400);
    let big = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(http_raw(admin, big.as_bytes()).await.0, 431);
    let endless = format!("GET /healthz HTTP/1.1\r\nX-Big: {}", "a".repeat(20_000));
    assert_eq!(http_raw(admin, endless.as_bytes()).await.0, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_metrics_and_policy_but_not_probes() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write(&token, "s3cret\n");
    let path = dir.path().join("pgward.toml");
    write(
        &path,
        &config_text("").replace(
            "[admin]\nlisten = \"\"\n",
            &format!(
                "[admin]\nlisten = \"\"\nbearer_token_file = \"{}\"\n",
                token.display()
            ),
        ),
    );
    let proxy = proxy_from_file(&path).await;
    let admin = admin_for(&proxy).await;
    assert_eq!(get(admin, "/metrics").await.0, 401);
    assert_eq!(get(admin, "/policy").await.0, 401);
    assert_eq!(get(admin, "/healthz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 200);
    let ok = http_raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n",
    )
    .await;
    assert_eq!(ok.0, 200);
    let wrong = http_raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n",
    )
    .await;
    assert_eq!(wrong.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_when_the_upstream_is_down() {
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = common::proxy_config();
    cfg.upstream.port = closed_port;
    let proxy = common::start_proxy(cfg).await;
    let admin = admin_for(&proxy).await;
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["reason"].as_str().unwrap().contains("unreachable"), "{v}");
    assert_eq!(get(admin, "/healthz").await.0, 200);
}

#[test]
fn alert_rules_pass_promtool() {
    let Some(promtool) = promtool() else {
        eprintln!("promtool not installed: skipping `promtool check rules`");
        return;
    };
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
    let out = std::process::Command::new(promtool)
        .args(["check", "rules", rules])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_transactions_finish_and_closes_idle_sessions() {
    let db = common::fresh_database("ops_shutdown");
    common::cluster()
        .pg
        .psql(&db, "CREATE TABLE t (id int); GRANT ALL ON t TO PUBLIC;")
        .unwrap();
    let proxy = common::start_proxy(common::proxy_config()).await;
    let addr = proxy.addr();
    let (idle1, idle1_conn) = connect(addr, &db).await;
    let (idle2, idle2_conn) = connect(addr, &db).await;
    let (busy, busy_conn) = connect(addr, &db).await;
    idle1.batch_execute("SELECT 1").await.unwrap();
    idle2
        .batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .unwrap();
    busy.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let handle = proxy.handle();
    let started = Instant::now();
    let shutdown = tokio::spawn(async move { handle.shutdown(Duration::from_secs(20)).await });

    // Idle sessions are closed with 57P01 right away.
    for conn in [idle1_conn, idle2_conn] {
        let end = within(5, "idle session closed", conn).await.unwrap();
        let e = end.expect_err("idle session gets 57P01");
        assert_eq!(sqlstate(&e), "57P01", "{e}");
    }
    assert!(idle1.is_closed() && idle2.is_closed());
    // No new clients.
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PW} dbname={db}",
                addr.port()
            ),
            NoTls,
        ),
    )
    .await
    .expect("connect attempt finishes");
    assert!(refused.is_err(), "a new client was accepted while draining");

    // The open transaction may go on and commit, then it is closed too.
    busy.batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    busy.batch_execute("COMMIT").await.unwrap();
    let end = within(5, "busy session closed", busy_conn).await.unwrap();
    if let Err(e) = end {
        assert_eq!(sqlstate(&e), "57P01", "{e}");
    }
    within(5, "shutdown completes", shutdown).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let rows = common::cluster()
        .pg
        .psql(&db, "SELECT count(*) FROM t")
        .unwrap();
    assert_eq!(rows.trim(), "2", "committed rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_expiry_terminates_open_transactions() {
    let db = common::fresh_database("ops_shutdown_grace");
    common::cluster()
        .pg
        .psql(&db, "CREATE TABLE t (id int); GRANT ALL ON t TO PUBLIC;")
        .unwrap();
    let proxy = common::start_proxy(common::proxy_config()).await;
    let (busy, busy_conn) = connect(proxy.addr(), &db).await;
    busy.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let started = Instant::now();
    within(15, "shutdown", proxy.shutdown(Duration::from_secs(1))).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    let end = within(5, "session closed", busy_conn).await.unwrap();
    let e = end.expect_err("57P01 after the grace period");
    assert_eq!(sqlstate(&e), "57P01", "{e}");
    // The uncommitted row is gone: the server rolled the transaction back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rows = common::cluster()
        .pg
        .psql(&db, "SELECT count(*) FROM t")
        .unwrap();
    assert_eq!(rows.trim(), "0", "rolled back");
}

#[test]
fn deploy_configs_parse() {
    let root = env!("CARGO_MANIFEST_DIR");
    let compose = std::fs::read_to_string(format!("{root}/deploy/compose/pgward.toml")).unwrap();
    pgward::config::Config::from_toml(&compose, "compose/pgward.toml").expect("compose config");
    // The TOML embedded in the Kubernetes ConfigMap (indented by 4).
    let cm = std::fs::read_to_string(format!("{root}/deploy/k8s/configmap.yaml")).unwrap();
    let toml: String = cm
        .split_once("pgward.toml: |\n")
        .unwrap()
        .1
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let cfg = pgward::config::Config::from_toml(&toml, "configmap.yaml").expect("k8s config");
    assert_eq!(cfg.admin.listen.as_deref(), Some("0.0.0.0:9187"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `pgward run --config path` (the real binary), its log to `stderr`.
fn run_binary(path: &Path, stderr: std::process::Stdio) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgward"))
        .args(["run", "--config"])
        .arg(path)
        .env_remove("RUST_LOG")
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn kill(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// The real binary: SIGHUP reloads (visible in /policy), SIGTERM drains and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_on_sighup_and_drains_on_sigterm() {
    let db = common::fresh_database("ops_binary");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.toml");
    let (port, admin_port) = (free_port(), free_port());
    let text = |extra: &str| {
        config_text(extra)
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
            .replace(
                "[admin]\nlisten = \"\"",
                &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""),
            )
    };
    write(&path, &text(""));
    let mut child = run_binary(&path, std::process::Stdio::null());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(admin).await.is_err() {
        assert!(Instant::now() < deadline, "admin port never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sha = |body: String| -> String {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["sha256"].as_str().unwrap().to_string()
    };
    let first = sha(get(admin, "/policy").await.1);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (client, conn) = connect(addr, &db).await;
    client
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();

    write(
        &path,
        &text(&format!(
            "[policy.rules.truncate]\nexcept_users = [\"{SCRAM_USER}\"]\n"
        )),
    );
    kill(child.id(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sha(get(admin, "/policy").await.1) == first {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.batch_execute("TRUNCATE t").await.unwrap();

    kill(child.id(), "TERM");
    let end = within(10, "session closed", conn).await.unwrap();
    let e = end.expect_err("idle session gets 57P01");
    assert_eq!(sqlstate(&e), "57P01", "{e}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Run pgbench with the test password; returns (success, stdout, stderr).
async fn pgbench(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(common::pg_bin("pgbench"))
        .args(args)
        .env("PGPASSWORD", SCRAM_PW)
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true)
        .output();
    let out = within(180, "pgbench", out).await.expect("run pgbench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pgbench_conn(port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={port} user={SCRAM_USER} dbname={db}")
}

/// pgbench -i directly against the cluster (it TRUNCATEs, which pgward blocks).
async fn pgbench_init(db: &str) {
    let (ok, _, err) = pgbench(&[
        "-i",
        "-s",
        "1",
        &pgbench_conn(common::cluster().pg.port, db),
    ])
    .await;
    assert!(ok, "pgbench -i: {err}");
}

/// TPC-B bookkeeping: every committed transaction moved the same delta in
/// accounts, tellers, branches and history — a torn transaction breaks it.
fn tpcb_consistent(db: &str) -> bool {
    let out = common::cluster()
        .pg
        .psql(
            db,
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta),0) FROM pgbench_history) \
             AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta),0) FROM pgbench_history) \
             AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta),0) FROM pgbench_history)",
        )
        .unwrap();
    out.trim() == "t"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_pgbench_load_drop_no_transaction() {
    let db = common::fresh_database("ops_reload_load");
    pgbench_init(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.toml");
    let configs = [
        config_text(""),
        config_text("[policy.rules.truncate]\nexcept_users = [\"nobody\"]\n"),
    ];
    write(&path, &configs[0]);
    let proxy = proxy_from_file(&path).await;
    let handle = proxy.handle();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloader = {
        let (stop, path) = (stop.clone(), path.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                write(&path, &configs[n % 2]);
                handle.reload().expect("valid reload");
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    let conn = pgbench_conn(proxy.addr().port(), &db);
    let (ok, out, err) = pgbench(&[
        "-n", "-M", "extended", "-c", "4", "-j", "2", "-t", "150", &conn,
    ])
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reloads = reloader.await.unwrap();
    assert!(ok, "pgbench failed:\n{out}\n{err}");
    assert!(
        out.contains("number of transactions actually processed: 600/600"),
        "{out}"
    );
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    assert!(reloads >= 5, "only {reloads} reloads happened");
    assert!(tpcb_consistent(&db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_pgbench_load_ends_sessions_between_transactions() {
    let db = common::fresh_database("ops_shutdown_load");
    pgbench_init(&db).await;
    let proxy = common::start_proxy(common::proxy_config()).await;
    let conn = pgbench_conn(proxy.addr().port(), &db);
    let bench = tokio::spawn(async move {
        pgbench(&[
            "-n", "-M", "simple", "-c", "4", "-j", "2", "-T", "60", &conn,
        ])
        .await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    within(30, "shutdown", proxy.shutdown(Duration::from_secs(20))).await;
    // Busy sessions were closed at their next transaction boundary, not at
    // the end of the grace period.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (_, out, err) = within(30, "pgbench ends", bench).await.unwrap();
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("error") || l.contains("FATAL") || l.contains("ERROR"))
        .filter(|l| !l.contains("terminating connection due to administrator command"))
        .filter(|l| !l.contains("Run was aborted"))
        // Command 4 of the TPC-B script is BEGIN: the client was closed
        // between transactions (libpq words a FATAL that arrives with the
        // close as "perhaps the backend died"; the FATAL line precedes it).
        .filter(|l| !l.contains("aborted in command 4 "))
        .collect();
    assert!(
        problems.is_empty(),
        "unexpected errors: {problems:#?}\n{out}\n{err}"
    );
    assert!(
        err.contains("terminating connection due to administrator command"),
        "{err}"
    );
    assert!(tpcb_consistent(&db), "a transaction was torn");
}

/// A real Prometheus scrapes the admin port; its query API sees the
/// statement counter move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_and_sees_statement_counters_move() {
    let Some(bin) = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        eprintln!("prometheus not installed: skipping the scrape test");
        return;
    };
    let db = common::fresh_database("ops_prometheus");
    let proxy = common::start_proxy(common::proxy_config()).await;
    let admin = admin_for(&proxy).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    write(
        &cfg,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pgward\n    static_configs:\n      - targets: [\"{admin}\"]\n"
        ),
    );
    let prom_port = free_port();
    let mut prom = tokio::process::Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let query = |q: &'static str| async move {
        let (status, body) = http_raw(
            prom_addr,
            format!("GET /api/v1/query?query={q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
    };
    // pgward_statements_total summed over labels; up to 30 s for the first scrape.
    const Q: &str = "sum(pgward_statements_total)";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(prom_addr).await.is_ok() && query("up").await == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped pgward");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // No series until the first statement of this process.
    let before = query(Q).await.unwrap_or(0.0);
    let (client, _conn) = connect(proxy.addr(), &db).await;
    for _ in 0..10 {
        client.batch_execute("SELECT 1").await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = query(Q).await.unwrap_or(before);
        if now >= before + 10.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counter did not move in Prometheus: {before} -> {now}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = prom.kill().await;
}

/// An admin address that was asked for must bind; `pgward run` fails otherwise.
#[test]
fn explicit_admin_listen_that_cannot_bind_is_fatal() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgward"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
        ])
        .arg("--admin-listen")
        .arg(busy_addr.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("admin.listen {busy_addr}")), "{err}");
}

/// When the grace period ends while rows are streaming, the 57P01 still
/// arrives whole, between two backend messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_expiry_during_a_streaming_result_sends_57p01_between_frames() {
    let db = common::fresh_database("ops_shutdown_stream");
    let proxy = common::start_proxy(common::proxy_config()).await;
    let (client, conn) = connect(proxy.addr(), &db).await;
    client.batch_execute("BEGIN").await.unwrap();
    let streaming = tokio::spawn(async move {
        loop {
            let r = client
                .simple_query("SELECT repeat('x', 100000) FROM generate_series(1, 2000)")
                .await;
            if let Err(e) = r {
                return e;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    within(15, "shutdown", proxy.shutdown(Duration::from_millis(200))).await;
    let e = within(10, "query fails", streaming).await.unwrap();
    let end = within(5, "connection ends", conn).await.unwrap();
    let code = end
        .as_ref()
        .err()
        .map(sqlstate)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| sqlstate(&e));
    assert_eq!(code, "57P01", "query error: {e}; connection: {end:?}");
}

/// Log lines written while the relay runs carry the session's span (its
/// id, client, user, database) although the span is not entered there
/// (see `proxy::session_span`); so does the close line after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_log_lines_name_the_session() {
    let db = common::fresh_database("ops_log_span");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgward.toml");
    let log = dir.path().join("pgward.log");
    let port = free_port();
    write(
        &path,
        &config_text("").replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    );
    let mut child = run_binary(&path, std::fs::File::create(&log).unwrap().into());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "pgward never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (client, conn) = connect(addr, &db).await;
    let err = client.batch_execute("TRUNCATE pg_class").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    drop(client);
    within(5, "session closed", conn).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    kill(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let line = |what: &str| {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in:\n{text}"))
            .to_string()
    };
    for what in ["statement blocked", "connection closed"] {
        let l = line(what);
        assert!(l.contains("session{id="), "{l}");
        assert!(l.contains(&format!("user=\"{SCRAM_USER}\"")), "{l}");
        assert!(l.contains(&format!("database=\"{db}\"")), "{l}");
    }
}
