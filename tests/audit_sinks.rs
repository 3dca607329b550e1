//! The network audit sinks against real receivers: an HTTP server that goes
//! down and comes back, the harness's PostgreSQL, syslog listeners over
//! UDP, TCP and TLS. Events here are well-formed JSON lines built by the
//! test; tests/audit_sinks_e2e.rs drives the same sinks through pgward.

mod common;
mod receivers;

use std::time::{Duration, Instant};

use common::{cluster, fresh_database, proxy_config, start_proxy, SCRAM_PW, SCRAM_USER};
use pgward::audit::http_sink::{HttpSink, HttpSinkConfig};
use pgward::audit::postgres_sink::{protect_table, PostgresSink, PostgresSinkConfig};
use pgward::audit::sink::Lines;
use pgward::audit::syslog_sink::{SyslogSink, SyslogSinkConfig, Transport};
use receivers::{HttpReceiver, SyslogListener};

/// `n` events numbered from `from`; the SQL field carries characters every
/// encoding must survive (quotes, backslash, tab, newline, non-ASCII).
fn events(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            let v = serde_json::json!({
                "v": 1,
                "id": format!("ev{i:08}"),
                "time": "2026-11-23T13:00:00.000001Z",
                "type": "statement",
                "seq": i,
                "hash": format!("h{i}"),
                "statement": {
                    "verdict": if i % 7 == 0 { "blocked" } else { "allowed" },
                    "sql": format!("SELECT 'it''s\\ \t{i}\n' AS \"ünï\""),
                },
            });
            v.to_string()
        })
        .collect()
}

/// Events as the pipeline hands them to a sink.
fn lines(events: &[String]) -> Lines {
    events.iter().collect()
}

fn seqs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn http_config(url: &str, spool: &std::path::Path) -> HttpSinkConfig {
    let mut c = HttpSinkConfig::new(url, spool);
    c.retries = 1;
    c.backoff_initial_ms = 20;
    c.backoff_max_ms = 200;
    c.timeout_ms = 2_000;
    c
}

#[tokio::test]
async fn http_sink_posts_gzipped_ndjson_with_configured_headers_and_token() {
    let rx = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let mut cfg = http_config(&rx.url("/ingest"), &dir.path().join("spool"));
    cfg.token_file = Some(token);
    cfg.headers
        .insert("x-scope-orgid".into(), "tenant-7".into());
    let mut sink = HttpSink::start(&cfg).unwrap();
    let batch = events(0, 20);
    sink.deliver(&lines(&batch)).await.unwrap();
    sink.deliver(&lines(&events(20, 5))).await.unwrap();

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "one POST per batch");
    let r = &reqs[0];
    assert!(r.gzipped);
    let header = |k: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("authorization"), Some("Bearer s3cret-token"));
    assert_eq!(header("x-scope-orgid"), Some("tenant-7"));
    assert_eq!(header("content-type"), Some("application/x-ndjson"));
    let want: Vec<String> = batch.iter().map(|e| e.to_string()).collect();
    assert_eq!(r.body.lines().collect::<Vec<_>>(), want);
    assert_eq!(sink.spooled(), 0);
    assert!(
        !format!("{cfg:?}").contains("s3cret"),
        "the token is read from a file, not held in the config"
    );
}

#[tokio::test]
async fn http_sink_speaks_https_and_verifies_the_receiver() {
    let h = cluster();
    let rx = HttpReceiver::start_tls(&h.server_cert, &h.server_key).await;
    let dir = tempfile::tempdir().unwrap();
    let url = rx.url("/in").replace("127.0.0.1", "localhost");
    let mut cfg = http_config(&url, &dir.path().join("ok"));
    cfg.tls_ca_file = Some(h.ca_cert.clone());
    let mut sink = HttpSink::start(&cfg).unwrap();
    sink.deliver(&lines(&events(0, 3))).await.unwrap();
    assert_eq!(seqs(&rx.lines()), [0, 1, 2]);
    assert_eq!(sink.spooled(), 0);

    // Public roots only: the test CA is unknown, nothing is sent in clear;
    // the batch waits in the spool.
    let mut cfg = http_config(&url, &dir.path().join("untrusted"));
    cfg.retries = 0;
    let mut sink = HttpSink::start(&cfg).unwrap();
    sink.deliver(&lines(&events(3, 1))).await.unwrap();
    assert_eq!(sink.spooled(), 1);
    assert_eq!(rx.lines().len(), 3);
}

#[tokio::test]
async fn mass_delete_webhook_posts_the_alert_and_retries() {
    use pgward::audit::mass_delete::{Webhook, WebhookConfig};
    let rx = HttpReceiver::start().await;
    std::env::set_var("PGWARD_TEST_WEBHOOK_TOKEN", "hook-token");
    let cfg: WebhookConfig = toml::from_str(&format!(
        "url = \"{}\"\ntoken_env = \"PGWARD_TEST_WEBHOOK_TOKEN\"\nretries = 2\n",
        rx.url("/hook")
    ))
    .unwrap();
    let hook = Webhook::new(&cfg).unwrap();
    rx.fail_next(1, 502);
    hook.notify(r#"{"type":"alert","alert":{"kind":"mass_deletion"}}"#.to_string());
    let lines = rx.wait_lines(1, Duration::from_secs(10)).await;
    assert_eq!(
        lines,
        [r#"{"type":"alert","alert":{"kind":"mass_deletion"}}"#]
    );
    let r = &rx.requests()[0];
    assert!(!r.gzipped);
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == "Bearer hook-token"));
}

#[tokio::test]
async fn http_sink_spools_while_the_receiver_is_down_and_replays_in_order() {
    let mut rx = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = HttpSink::start(&http_config(&rx.url("/in"), dir.path())).unwrap();
    sink.deliver(&lines(&events(0, 10))).await.unwrap();
    rx.down().await;

    // While the receiver is down, deliver keeps answering Ok (spooled and
    // fsynced) and does not wait for the receiver.
    let t = Instant::now();
    for b in 0..30 {
        sink.deliver(&lines(&events(10 + b * 10, 10)))
            .await
            .unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "spooling took {:?}",
        t.elapsed()
    );
    assert!(sink.spooled() >= 29, "spooled {}", sink.spooled());
    assert_eq!(rx.lines().len(), 10);
    let spooled_files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "batch")
        })
        .count();
    assert!(spooled_files >= 29);

    rx.up().await;
    // New batches queue behind the spooled ones.
    sink.deliver(&lines(&events(310, 10))).await.unwrap();
    let lines = rx.wait_lines(320, Duration::from_secs(30)).await;
    assert_eq!(
        seqs(&lines),
        (0..320).collect::<Vec<u64>>(),
        "every event, once, in order"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.spooled() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.spooled(), 0);
}

#[tokio::test]
async fn http_sink_spool_survives_a_crash_and_is_replayed_by_the_next_start() {
    let mut rx = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = http_config(&rx.url("/in"), dir.path());
    rx.down().await;
    {
        let mut sink = HttpSink::start(&cfg).unwrap();
        for b in 0..5 {
            sink.deliver(&lines(&events(b * 4, 4))).await.unwrap();
        }
        assert_eq!(sink.spooled(), 5);
        // Dropped without any shutdown: only the disk remains.
    }
    // The next start continues the hash chain from the spooled events.
    let sink = HttpSink::start(&cfg).unwrap();
    assert_eq!(sink.last_hash().as_deref(), Some("h19"));
    drop(sink);
    rx.up().await;
    let mut sink = HttpSink::start(&cfg).unwrap();
    sink.deliver(&lines(&events(20, 4))).await.unwrap();
    let lines = rx.wait_lines(24, Duration::from_secs(20)).await;
    assert_eq!(seqs(&lines), (0..24).collect::<Vec<u64>>());
    // With the spool drained, the last accepted event is remembered.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.spooled() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sink);
    assert_eq!(
        HttpSink::start(&cfg).unwrap().last_hash().as_deref(),
        Some("h23")
    );
}

#[tokio::test]
async fn http_sink_retries_server_errors_and_sets_refused_batches_aside() {
    let rx = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = http_config(&rx.url("/in"), dir.path());
    cfg.gzip = false;
    cfg.retries = 3;
    let mut sink = HttpSink::start(&cfg).unwrap();

    // Two 503s, then the retry goes through: no spooling needed.
    rx.fail_next(2, 503);
    sink.deliver(&lines(&events(0, 3))).await.unwrap();
    assert_eq!(seqs(&rx.lines()), [0, 1, 2]);
    assert_eq!(sink.spooled(), 0);
    assert!(!rx.requests()[0].gzipped);

    // A 400 is final: the batch is kept in rejected/, later ones flow.
    rx.fail_next(1, 400);
    sink.deliver(&lines(&events(3, 2))).await.unwrap();
    sink.deliver(&lines(&events(5, 2))).await.unwrap();
    let lines = rx.wait_lines(5, Duration::from_secs(10)).await;
    assert_eq!(seqs(&lines), [0, 1, 2, 5, 6]);
    let rejected: Vec<_> = std::fs::read_dir(dir.path().join("rejected"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        seqs(&rejected[0].lines().map(str::to_string).collect::<Vec<_>>()),
        [3, 4]
    );
}

fn pg_sink_config(db: &str) -> PostgresSinkConfig {
    PostgresSinkConfig {
        name: Some("pg".into()),
        database: db.into(),
        table: "pgward_audit.audit_events".into(),
        credentials: pgward::pgclient::CredentialsConfig {
            user: "postgres".into(),
            password_file: None,
            password_env: Some("PGWARD_TEST_AUDIT_PG_PW".into()),
        },
        connect_timeout_ms: 5_000,
    }
}

fn upstream() -> pgward::config::UpstreamConfig {
    proxy_config().upstream
}

#[tokio::test]
async fn postgres_sink_copies_batches_into_a_created_table_and_dedupes_redelivery() {
    std::env::set_var("PGWARD_TEST_AUDIT_PG_PW", common::SUPERUSER_PW);
    let h = cluster();
    let db = fresh_database("audit_pg_sink");
    let mut sink = PostgresSink::new(&pg_sink_config(&db), &upstream()).unwrap();
    let first = events(0, 50);
    sink.deliver(&lines(&first)).await.unwrap();
    // The pipeline offers a batch again when a reply was lost: stored once.
    let mut again = first[40..].to_vec();
    again.extend(events(50, 10));
    sink.deliver(&lines(&again)).await.unwrap();

    let out = h
        .pg
        .psql(
            &db,
            "SELECT count(*), count(DISTINCT id), min(event->>'seq'), max((event->>'seq')::int) FROM pgward_audit.audit_events",
        )
        .unwrap();
    assert_eq!(out.trim(), "60|60|0|59");
    // The JSON survives COPY escaping byte for byte (as jsonb).
    let sql =
        h.pg.psql(
            &db,
            "SELECT event->'statement'->>'sql' FROM pgward_audit.audit_events WHERE id = 'ev00000003'",
        )
        .unwrap();
    assert_eq!(sql, "SELECT 'it''s\\ \t3\n' AS \"ünï\"\n");

    // The sink's connection dies: the next batch fails, the one after
    // reconnects (the pipeline re-offers the failed one).
    h.pg.psql(
        &db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgward' AND datname = current_database()",
    )
    .unwrap();
    let next = events(60, 5);
    if sink.deliver(&lines(&next)).await.is_err() {
        sink.deliver(&lines(&next)).await.unwrap();
    }
    let out =
        h.pg.psql(&db, "SELECT count(*) FROM pgward_audit.audit_events")
            .unwrap();
    assert_eq!(out.trim(), "65");
    // A restarted pgward continues the chain from the newest stored event.
    let mut restarted = PostgresSink::new(&pg_sink_config(&db), &upstream()).unwrap();
    assert_eq!(restarted.resume().await.as_deref(), Some("h64"));
}

#[tokio::test]
async fn the_audit_table_cannot_be_changed_through_pgward() {
    std::env::set_var("PGWARD_TEST_AUDIT_PG_PW", common::SUPERUSER_PW);
    let h = cluster();
    let db = fresh_database("audit_pg_protect");
    let sink_cfg = pg_sink_config(&db);
    let mut sink = PostgresSink::new(&sink_cfg, &upstream()).unwrap();
    sink.deliver(&lines(&events(0, 3))).await.unwrap();
    h.pg.psql(
        &db,
        "GRANT USAGE ON SCHEMA pgward_audit TO PUBLIC; GRANT ALL ON pgward_audit.audit_events TO PUBLIC;",
    )
    .unwrap();

    let mut cfg = proxy_config();
    // Even with TRUNCATE allowed in general (say, for a migration role), the
    // audit table stays protected by its own rule.
    cfg.policy.rules.truncate = Some(pgward::policy::config::BuiltinRuleConfig {
        action: Some(pgward::policy::Action::Allow),
        ..Default::default()
    });
    protect_table(&mut cfg.policy, &sink_cfg.sink_name(), &sink_cfg.table);
    let proxy = start_proxy(cfg).await;
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PW} dbname={db}",
            proxy.addrs[0].port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for sql in [
        "DELETE FROM pgward_audit.audit_events WHERE id = 'ev00000001'",
        "UPDATE pgward_audit.audit_events SET type = 'x' WHERE id = 'ev00000001'",
        "TRUNCATE pgward_audit.audit_events",
        "INSERT INTO pgward_audit.audit_events (id, time, type, event) VALUES ('forged', now(), 'statement', '{}')",
        "WITH d AS (DELETE FROM pgward_audit.audit_events WHERE id <> '' RETURNING 1) SELECT count(*) FROM d",
    ] {
        let e = client.batch_execute(sql).await.expect_err(sql);
        let db_err = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db_err.code().code(), "42501", "{sql}");
        assert!(db_err.message().contains("audit_table_protected_pg"), "{}", db_err.message());
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM pgward_audit.audit_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "reads are allowed and nothing changed");
}

fn syslog_config(transport: Transport, addr: std::net::SocketAddr) -> SyslogSinkConfig {
    SyslogSinkConfig {
        name: None,
        transport,
        address: addr.to_string(),
        facility: "auth".into(),
        hostname: Some("pgward-test".into()),
        app_name: "pgward".into(),
        max_message_bytes: 8192,
        timeout_ms: 5_000,
        tls_ca_file: None,
        tls_server_name: None,
        tls_cert_file: None,
        tls_key_file: None,
    }
}

/// Each message is an RFC 5424 header and the event's JSON, unchanged.
fn check_syslog(messages: &[String], sent: &[String]) {
    assert_eq!(messages.len(), sent.len());
    let pid = std::process::id();
    for (m, e) in messages.iter().zip(sent) {
        let blocked = e.contains("\"verdict\":\"blocked\"");
        // facility auth (4): 4*8 + notice(5) / info(6)
        let pri = if blocked { 37 } else { 38 };
        let header =
            format!("<{pri}>1 2026-11-23T13:00:00.000001Z pgward-test pgward {pid} statement - ");
        assert!(m.starts_with(&header), "{m}");
        assert_eq!(&m[header.len()..], e.as_str());
    }
}

#[tokio::test]
async fn syslog_sink_over_udp() {
    let l = SyslogListener::udp().await;
    let mut sink = SyslogSink::new(&syslog_config(Transport::Udp, l.addr)).unwrap();
    let sent = events(0, 20);
    sink.deliver(&lines(&sent)).await.unwrap();
    check_syslog(&l.wait(20, Duration::from_secs(5)).await, &sent);
}

#[tokio::test]
async fn syslog_sink_over_tcp_with_octet_counting() {
    let l = SyslogListener::stream(None).await;
    let mut sink = SyslogSink::new(&syslog_config(Transport::Tcp, l.addr)).unwrap();
    let sent = events(0, 200);
    sink.deliver(&lines(&sent[..150])).await.unwrap();
    sink.deliver(&lines(&sent[150..])).await.unwrap();
    check_syslog(&l.wait(200, Duration::from_secs(5)).await, &sent);
}

#[tokio::test]
async fn syslog_sink_over_tls_checks_the_receiver_certificate() {
    let h = cluster();
    let l = SyslogListener::stream(Some((&h.server_cert, &h.server_key))).await;
    let mut cfg = syslog_config(Transport::Tls, l.addr);
    cfg.tls_ca_file = Some(h.ca_cert.clone());
    cfg.tls_server_name = Some("localhost".into());
    let mut sink = SyslogSink::new(&cfg).unwrap();
    let sent = events(0, 30);
    sink.deliver(&lines(&sent)).await.unwrap();
    check_syslog(&l.wait(30, Duration::from_secs(5)).await, &sent);

    // Without our CA (public roots only) the handshake fails: an error,
    // not a plaintext fallback.
    cfg.tls_ca_file = None;
    let mut sink = SyslogSink::new(&cfg).unwrap();
    let e = sink.deliver(&lines(&events(30, 1))).await.unwrap_err();
    assert!(format!("{e:#}").contains("certificate"), "{e:#}");
    assert_eq!(l.messages().len(), 30);
}

#[tokio::test]
async fn syslog_sink_reports_a_dead_receiver_and_reconnects() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut sink = SyslogSink::new(&syslog_config(Transport::Tcp, port)).unwrap();
    let e = sink.deliver(&lines(&events(0, 1))).await.unwrap_err();
    assert!(format!("{e:#}").contains(&port.to_string()), "{e:#}");
    let l = SyslogListener::stream(None).await;
    let mut sink = SyslogSink::new(&syslog_config(Transport::Tcp, l.addr)).unwrap();
    sink.deliver(&lines(&events(0, 2))).await.unwrap();
    drop(l);
    // The receiver is gone: the sink notices (on this write or the next).
    let mut failed = false;
    for _ in 0..20 {
        if sink.deliver(&lines(&events(2, 1))).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed, "writes to a closed receiver must fail");
}

// ---- Through the audit pipeline (queue, batching, hash chain) ----------

use pgward::audit::event::{AuditVerdict, Outcome, StatementInfo};
use pgward::audit::{Audit, AuditConfig, Event, EventType, SinkConfig};

fn delete_event(table: &str, rows: u64, verdict: AuditVerdict) -> Event {
    let mut ev = Event::new(EventType::Statement);
    ev.user = Some("app".into());
    ev.statement = Some(StatementInfo {
        protocol: "simple".into(),
        kind: "delete".into(),
        class: "WRITE".into(),
        tables: vec![table.into()],
        verdict,
        rule_id: None,
        reason: None,
        sql: format!("DELETE FROM {table} WHERE id = $1"),
        sql_sent: None,
        fingerprint: "0123456789abcdef".into(),
        params: None,
        outcome: Outcome {
            status: "ok".into(),
            command_tag: Some(format!("DELETE {rows}")),
            rows: Some(rows),
            sqlstate: None,
            message: None,
            duration_us: 10,
        },
    });
    ev
}

/// Every line links to the one before it (from the genesis hash), and
/// statement event ids only grow: nothing missing, nothing reordered.
/// (An alert is stamped when the pipeline raises it and placed right after
/// the statement that raised it, so its id may be newer than the events
/// queued behind that statement.)
fn check_chain(lines: &[String]) {
    let mut prev = pgward::audit::chain::GENESIS.to_string();
    let mut last_id = String::new();
    for (i, l) in lines.iter().enumerate() {
        let link = pgward::audit::chain::check(l.as_bytes())
            .unwrap_or_else(|| panic!("line {i} has no chain fields: {l}"));
        assert!(link.intact, "line {i} was modified");
        assert_eq!(
            link.prev,
            prev,
            "line {i} does not follow line {}",
            i.max(1) - 1
        );
        prev = link.hash.to_string();
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["type"] == "alert" {
            continue;
        }
        let id = v["id"].as_str().unwrap().to_string();
        assert!(id > last_id, "ids out of order at line {i}");
        last_id = id;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_delivers_every_event_in_chain_order_across_an_http_outage() {
    let mut rx = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        batch_max: 64,
        sinks: vec![SinkConfig::Http(http_config(&rx.url("/in"), dir.path()))],
        ..AuditConfig::default()
    };
    let audit = Audit::start(&config, &upstream()).await.unwrap().unwrap();
    let emit = |n: usize| {
        let audit = audit.clone();
        async move {
            for i in 0..n {
                audit
                    .emit(&delete_event(
                        &format!("public.t{}", i % 3),
                        1,
                        AuditVerdict::Allowed,
                    ))
                    .await;
            }
        }
    };
    emit(200).await;
    rx.wait_lines(200, Duration::from_secs(20)).await;
    rx.down().await;
    emit(1000).await;
    rx.up().await;
    emit(300).await;
    let lines = rx.wait_lines(1500, Duration::from_secs(60)).await;
    assert_eq!(lines.len(), 1500, "no duplicates either");
    check_chain(&lines);
    audit.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_raises_a_mass_deletion_alert_at_the_threshold_not_before() {
    let rx = HttpReceiver::start().await;
    let hook = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config: AuditConfig = toml::from_str(&format!(
        "[mass_delete]\nrows = 5\nwindow_secs = 60\n[mass_delete.webhook]\nurl = \"{}\"\n",
        hook.url("/alert")
    ))
    .unwrap();
    config.batch_max = 1;
    config.sinks = vec![SinkConfig::Http(http_config(&rx.url("/in"), dir.path()))];
    let audit = Audit::start(&config, &upstream()).await.unwrap().unwrap();
    let alerts = || {
        rx.lines()
            .into_iter()
            .filter(|l| l.contains("\"type\":\"alert\""))
            .collect::<Vec<_>>()
    };
    // 4 rows in users (hard and soft), 9 in another table: no alert for users.
    audit
        .emit(&delete_event("public.users", 2, AuditVerdict::Allowed))
        .await;
    audit
        .emit(&delete_event("public.users", 2, AuditVerdict::Rewritten))
        .await;
    audit
        .emit(&delete_event("public.other", 9, AuditVerdict::Allowed))
        .await;
    // Blocked deletes deleted nothing.
    audit
        .emit(&delete_event("public.users", 50, AuditVerdict::Blocked))
        .await;
    rx.wait_lines(5, Duration::from_secs(10)).await;
    let before: Vec<String> = alerts();
    assert_eq!(before.len(), 1, "only public.other crossed: {before:?}");
    assert!(before[0].contains("\"table\":\"public.other\""));
    let alerts_metric = pgward::audit::sink_metrics::sink_metrics()
        .mass_delete_alerts
        .get();

    // The fifth row of users within the window: an alert, right after it.
    audit
        .emit(&delete_event("public.users", 1, AuditVerdict::Allowed))
        .await;
    let lines = rx.wait_lines(7, Duration::from_secs(10)).await;
    // Each alert directly follows the statement that raised it.
    assert!(
        lines[2].contains("\"DELETE 9\"") && lines[3].contains("public.other"),
        "{lines:#?}"
    );
    assert!(lines[5].contains("\"DELETE 1\""), "{lines:#?}");
    let last: serde_json::Value = serde_json::from_str(&lines[6]).unwrap();
    assert_eq!(last["type"], "alert");
    assert_eq!(last["alert"]["table"], "public.users");
    assert_eq!(last["alert"]["rows"], 5);
    assert_eq!(last["alert"]["threshold"], 5);
    assert!(
        pgward::audit::sink_metrics::sink_metrics()
            .mass_delete_alerts
            .get()
            > alerts_metric
    );
    check_chain(&lines);
    // The webhook got both alerts, as the events' JSON.
    let hooked = hook.wait_lines(2, Duration::from_secs(10)).await;
    assert!(hooked.iter().any(|l| l.contains("public.users")));
    audit.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn a_configured_postgres_sink_adds_the_table_protection_rule() {
    use pgward::policy::{LexOptions, Policy, PreparedRegistry, SessionScope, Verdict};
    let text = "[[audit.sinks]]\ntype = \"postgres\"\nname = \"db\"\ndatabase = \"audit\"\ntable = \"sec.trail\"\n[audit.sinks.credentials]\nuser = \"pgward_audit\"\n";
    let cfg = pgward::config::Config::from_toml(text, "t.toml").unwrap();
    assert!(cfg
        .policy
        .custom
        .iter()
        .any(|r| r.id == "audit_table_protected_db"));
    let policy = Policy::from_config(&cfg.policy).unwrap();
    let v = policy
        .evaluate(
            "UPDATE sec.trail SET event = '{}' WHERE id = 'x'",
            &SessionScope::default(),
            LexOptions::default(),
            &PreparedRegistry::default(),
        )
        .verdict;
    assert!(
        matches!(v, Verdict::Block(ref b) if b.rule_id == "audit_table_protected_db"),
        "{v:?}"
    );
    // Bad sink settings are config errors.
    let bad = text.replace("sec.trail", "Sec.Trail");
    let e = pgward::config::Config::from_toml(&bad, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("lower-case"), "{e}");
}
