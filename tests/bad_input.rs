//! Hostile and broken clients against pgward: every case ends in a clean
//! error or close, never a panic or a hang, the upstream backend is cleaned
//! up, and pgward keeps serving normal clients afterwards.

mod common;
mod rawpg;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{
    cluster, fresh_database, proxy_config, start_proxy, CLEAR_PW, CLEAR_USER, SCRAM_PW, SCRAM_USER,
    SUPERUSER_PW,
};
use rawpg::*;
use tokio::io::AsyncWriteExt;

/// One database for the whole binary: these tests do not write.
fn db() -> &'static str {
    static DB: OnceLock<String> = OnceLock::new();
    DB.get_or_init(|| fresh_database("bad_input"))
}

async fn pg_client(conn_str: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conn_str}: {e}"));
    tokio::spawn(conn);
    client
}

/// A superuser connection straight to the cluster.
async fn direct_admin() -> tokio_postgres::Client {
    pg_client(&cluster().conn_str("postgres", SUPERUSER_PW, "postgres")).await
}

/// pgward still serves a normal (SCRAM, tokio-postgres) client.
async fn assert_serves(addr: SocketAddr) {
    let conn_str = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PW} dbname={}",
        addr.port(),
        db()
    );
    let check = async {
        let client = pg_client(&conn_str).await;
        let row = client.query_one("SELECT 1::int4", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
    };
    tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .expect("pgward still serves a normal client");
}

/// An authenticated raw connection through pgward and its backend pid.
async fn raw_session(addr: SocketAddr) -> (Raw, u32) {
    let (conn, startup) = Raw::connect(addr, CLEAR_USER, CLEAR_PW, db()).await;
    let pid = backend_pid(&startup).expect("BackendKeyData");
    (conn, pid)
}

/// The backend with this pid is gone from pg_stat_activity within 5 s.
async fn assert_backend_gone(pid: u32) {
    let admin = direct_admin().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&(pid as i32)],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} still present after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The connection closes without pgward sending a single byte.
async fn assert_closed_silently(conn: &mut Raw) {
    match conn.raw_until_closed(Duration::from_secs(5)).await {
        Ok(bytes) => assert!(bytes.is_empty(), "unexpected reply {bytes:?}"),
        Err(bytes) => panic!("connection not closed within 5 s (got {bytes:?})"),
    }
}

/// The connection ends with exactly one ErrorResponse of this severity and
/// SQLSTATE, then closes. Returns the message text.
async fn assert_error_then_close(conn: &mut Raw, severity: &str, code: &str) -> String {
    let msgs = conn.until_closed(Duration::from_secs(5)).await;
    assert_eq!(
        msgs.len(),
        1,
        "expected one ErrorResponse:\n{}",
        show(&msgs)
    );
    assert_eq!(msgs[0].0, b'E', "{}", show(&msgs));
    let body = &msgs[0].1;
    assert_eq!(error_field(body, b'S').as_deref(), Some(severity));
    assert_eq!(
        error_field(body, b'C').as_deref(),
        Some(code),
        "{}",
        show(&msgs)
    );
    error_field(body, b'M').unwrap_or_default()
}

async fn proxy() -> pgward::proxy::RunningProxy {
    start_proxy(proxy_config()).await
}

// ---- startup phase -----------------------------------------------------

#[tokio::test]
async fn garbage_before_startup_is_closed() {
    let p = proxy().await;
    let mut c = Raw::connect_tcp(p.addrs[0]).await;
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_closed_silently(&mut c).await;
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn negative_startup_length_is_closed() {
    let p = proxy().await;
    let mut c = Raw::connect_tcp(p.addrs[0]).await;
    c.send(&[0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0]).await;
    assert_closed_silently(&mut c).await;
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn huge_startup_length_is_closed() {
    let p = proxy().await;
    for len in [10_001i32, 1 << 20, i32::MAX] {
        let mut c = Raw::connect_tcp(p.addrs[0]).await;
        let mut packet = len.to_be_bytes().to_vec();
        packet.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        packet.extend_from_slice(b"user\0clear_user\0");
        c.send(&packet).await;
        assert_closed_silently(&mut c).await;
    }
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn protocol_2_is_refused_with_0a000() {
    let p = proxy().await;
    let mut c = Raw::connect_tcp(p.addrs[0]).await;
    c.send(&startup_packet(0x0002_0000, &[("user", CLEAR_USER)]))
        .await;
    let message = assert_error_then_close(&mut c, "FATAL", "0A000").await;
    assert!(message.contains("2.0"), "{message}");
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn startup_without_user_is_refused_with_08p01() {
    let p = proxy().await;
    let mut c = Raw::connect_tcp(p.addrs[0]).await;
    c.send(&startup_packet(PROTOCOL_3_0, &[("database", db())]))
        .await;
    assert_error_then_close(&mut c, "FATAL", "08P01").await;
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn truncated_startup_then_close() {
    let p = proxy().await;
    let mut c = Raw::connect_tcp(p.addrs[0]).await;
    let packet = startup_packet(PROTOCOL_3_0, &[("user", CLEAR_USER), ("database", db())]);
    c.send(&packet[..12]).await;
    c.stream.shutdown().await.unwrap();
    assert_closed_silently(&mut c).await;
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn ssl_request_without_tls_gets_n_then_startup_works() {
    let p = proxy().await;
    let mut c = Raw::connect_tcp(p.addrs[0]).await;
    c.send(&code_packet(SSL_REQUEST)).await;
    assert_eq!(c.read_byte().await, b'N');
    c.startup(CLEAR_USER, CLEAR_PW, db()).await;
    let reply = c.simple("SELECT 1").await;
    assert_eq!(data_rows(&reply), vec![vec![Some("1".to_string())]]);
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn gssenc_request_gets_n_then_startup_works() {
    let p = proxy().await;
    let mut c = Raw::connect_tcp(p.addrs[0]).await;
    c.send(&code_packet(GSSENC_REQUEST)).await;
    assert_eq!(c.read_byte().await, b'N');
    // SSLRequest after a refused GSSENCRequest is allowed too (libpq does it).
    c.send(&code_packet(SSL_REQUEST)).await;
    assert_eq!(c.read_byte().await, b'N');
    c.startup(CLEAR_USER, CLEAR_PW, db()).await;
    let reply = c.simple("SELECT 2").await;
    assert_eq!(data_rows(&reply), vec![vec![Some("2".to_string())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_cancel_request_is_dropped() {
    let p = proxy().await;
    let addr = p.addrs[0];
    let client = pg_client(&format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PW} dbname={}",
        addr.port(),
        db()
    ))
    .await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let sleeper = tokio::spawn(async move {
        client
            .simple_query("SELECT pg_sleep(1.5)")
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The right pid with a wrong secret, and a made-up pid.
    for (pid, secret) in [(pid as u32, 0xdead_beef_u32), (1, 1)] {
        let mut c = Raw::connect_tcp(addr).await;
        c.send(&cancel_packet(pid, secret)).await;
        assert_closed_silently(&mut c).await;
    }
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("query finishes")
        .unwrap();
    assert!(result.is_ok(), "query was cancelled: {result:?}");
    assert_serves(addr).await;
}

// ---- after authentication ----------------------------------------------

#[tokio::test]
async fn negative_frame_length_is_fatal_08p01() {
    let p = proxy().await;
    let (mut c, pid) = raw_session(p.addrs[0]).await;
    c.send(b"Q\xff\xff\xff\xff").await;
    assert_error_then_close(&mut c, "FATAL", "08P01").await;
    assert_backend_gone(pid).await;
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn one_gib_frame_is_fatal_08p01() {
    let p = proxy().await;
    for tag in [b'Q', b'd', b'B'] {
        let (mut c, pid) = raw_session(p.addrs[0]).await;
        let mut frame = vec![tag];
        frame.extend_from_slice(&(1i32 << 30).to_be_bytes());
        frame.extend_from_slice(b"SELECT 1");
        c.send(&frame).await;
        let message = assert_error_then_close(&mut c, "FATAL", "08P01").await;
        assert!(message.starts_with("pgward:"), "{message}");
        assert_backend_gone(pid).await;
    }
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn truncated_frame_then_close_cleans_up_backend() {
    let p = proxy().await;
    for partial in [&b"Q\0\0\0\x20SELE"[..], &b"P\0"[..], &b"d\0\0\x10\0abc"[..]] {
        let (mut c, pid) = raw_session(p.addrs[0]).await;
        c.send(partial).await;
        drop(c);
        assert_backend_gone(pid).await;
    }
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn unknown_message_type_gets_server_08p01() {
    let p = proxy().await;
    let (mut c, pid) = raw_session(p.addrs[0]).await;
    c.send(&msg(b'z', b"whatever")).await;
    let message = assert_error_then_close(&mut c, "FATAL", "08P01").await;
    // Postgres' own answer, forwarded unchanged.
    assert!(
        message.contains("invalid frontend message type 122"),
        "{message}"
    );
    assert_backend_gone(pid).await;
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn query_with_embedded_nul_runs_nothing() {
    let p = proxy().await;
    let (mut c, _) = raw_session(p.addrs[0]).await;
    c.simple("CREATE TEMP TABLE nul_probe (i int)").await;
    let mut body = b"SELECT 1".to_vec();
    body.push(0);
    body.extend_from_slice(b"INSERT INTO nul_probe VALUES (1)");
    body.push(0);
    c.send(&msg(b'Q', &body)).await;
    let reply = c.until_ready().await;
    let (severity, code) = first_error(&reply).expect("an ErrorResponse");
    assert_eq!(severity, "ERROR", "{}", show(&reply));
    // Blocked by pgward (fail closed) or refused by the server; either way
    // neither text before nor after the NUL ran.
    assert!(code == "42501" || code == "08P01", "{}", show(&reply));
    assert!(data_rows(&reply).is_empty(), "{}", show(&reply));
    assert!(!reply.iter().any(|(t, _)| *t == b'C'), "{}", show(&reply));
    // The session is still usable and nothing was inserted.
    let reply = c.simple("SELECT count(*) FROM nul_probe").await;
    assert_eq!(data_rows(&reply), vec![vec![Some("0".to_string())]]);
    assert_serves(p.addrs[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_does_not_block_others() {
    let p = proxy().await;
    let addr = p.addrs[0];
    let (mut stalled, pid) = raw_session(addr).await;
    stalled
        .send(&query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 1000000)",
        ))
        .await;
    // Never read from `stalled`. Give the server time to fill every buffer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let conn_str = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PW} dbname={}",
        addr.port(),
        db()
    );
    let other = pg_client(&conn_str).await;
    for i in 0..10 {
        let started = Instant::now();
        let row = tokio::time::timeout(
            Duration::from_secs(2),
            other.query_one("SELECT $1::int4", &[&i]),
        )
        .await
        .expect("other session stays responsive")
        .unwrap();
        assert_eq!(row.get::<_, i32>(0), i);
        assert!(started.elapsed() < Duration::from_secs(1));
        // New sessions too.
        if i % 3 == 0 {
            assert_serves(addr).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The stalled backend is still there, blocked on sending.
    let admin = direct_admin().await;
    let state: String = admin
        .query_one(
            "SELECT state FROM pg_stat_activity WHERE pid = $1",
            &[&(pid as i32)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "active");
    drop(stalled);
    assert_backend_gone(pid).await;
    assert_serves(addr).await;
}

// ---- timeouts ----------------------------------------------------------

#[tokio::test]
async fn startup_timeout_closes_silent_clients() {
    let mut cfg = proxy_config();
    cfg.timeouts.startup_secs = 1;
    let p = start_proxy(cfg).await;
    // Nothing at all, and a startup packet that never completes.
    for first in [&b""[..], &b"\0\0\0\x40\0\x03"[..]] {
        let mut c = Raw::connect_tcp(p.addrs[0]).await;
        if !first.is_empty() {
            c.send(first).await;
        }
        let started = Instant::now();
        assert_closed_silently(&mut c).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(3),
            "closed after {took:?}"
        );
    }
    assert_serves(p.addrs[0]).await;
}

#[tokio::test]
async fn idle_timeout_ends_idle_sessions_with_57p05() {
    let mut cfg = proxy_config();
    cfg.timeouts.idle_secs = 1;
    let p = start_proxy(cfg).await;
    let (mut c, pid) = raw_session(p.addrs[0]).await;
    let started = Instant::now();
    assert_error_then_close(&mut c, "FATAL", "57P05").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    assert_backend_gone(pid).await;

    assert_serves(p.addrs[0]).await;
}

/// A session waiting for the server (a long query) or inside a transaction
/// is not idle: `timeouts.idle_secs` documents "idle (outside a transaction)",
/// like Postgres' idle_session_timeout. (A regression test: the timer used
/// to be armed from the last ReadyForQuery's status alone, and fired
/// mid-query and inside transactions.)
#[tokio::test]
async fn idle_timeout_spares_busy_sessions_and_transactions() {
    let mut cfg = proxy_config();
    cfg.timeouts.idle_secs = 1;
    let p = start_proxy(cfg).await;

    // A query running longer than the idle timeout completes.
    let (mut c, _) = raw_session(p.addrs[0]).await;
    let reply = c.simple("SELECT pg_sleep(2.5)").await;
    assert!(first_error(&reply).is_none(), "{}", show(&reply));
    drop(c);

    // Inside a transaction a session is not idle.
    let (mut c, pid) = raw_session(p.addrs[0]).await;
    c.simple("BEGIN").await;
    assert_eq!(
        c.read_msg_within(Duration::from_millis(2500)).await,
        Err(ReadEnd::Timeout)
    );
    let reply = c.simple("SELECT 1").await;
    assert_eq!(data_rows(&reply).len(), 1);
    c.simple("COMMIT").await;
    assert_error_then_close(&mut c, "FATAL", "57P05").await;
    assert_backend_gone(pid).await;
    assert_serves(p.addrs[0]).await;
}
