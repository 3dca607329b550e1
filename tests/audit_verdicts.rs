//! What the audit events say, end to end through pgward with real Postgres:
//! a soft-delete rewrite (`rewritten`, SQL as received and as sent), a rule
//! in monitor mode (`monitored`), config reloads (`policy` ok / failed), and
//! a client certificate (TLS subject, verified identity, pinned context).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::statements;
use common::{
    cluster, fresh_database, proxy_config, start_proxy, MD5_PW, MD5_USER, SCRAM_PW, SCRAM_USER,
    SUPERUSER_PW,
};
use pgward::audit::config::{FileSinkConfig, Fsync, SinkConfig};
use pgward::config::{ClientTlsMode, Config};
use pgward::identity::IdentitySource;
use serde_json::{json, Value};
use tokio_postgres::Client;

async fn connect(addr: SocketAddr, db: &str) -> Client {
    common::connect_client(addr, SCRAM_USER, SCRAM_PW, db).await
}

/// Verified identities reach Postgres as the MD5 test role, its password
/// read from a file in `dir`.
fn log_in_upstream_as_md5_user(cfg: &mut Config, dir: &Path) {
    let pw = dir.join("md5.pw");
    std::fs::write(&pw, format!("{MD5_PW}\n")).unwrap();
    cfg.identity.upstream.user = MD5_USER.into();
    cfg.identity.upstream.password_file = Some(pw);
}

/// Audit every statement class of `cfg` into `dir/audit.jsonl`.
fn audit_into(cfg: &mut Config, dir: &Path) {
    cfg.audit.filter.classes = vec!["ALL".into()];
    cfg.audit.sinks = vec![SinkConfig::File(FileSinkConfig {
        path: dir.join("audit.jsonl"),
        fsync: Fsync::Never,
        ..FileSinkConfig::default()
    })];
}

fn read_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

async fn wait_for(path: &Path, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    common::poll_events(|| read_events(path), want).await
}

fn psql(db: &str, sql: &str) -> String {
    cluster().pg.psql(db, sql).expect(sql).trim().to_string()
}

fn superuser_password_file(dir: &Path) -> PathBuf {
    let p = dir.join("pg.pw");
    std::fs::write(&p, format!("{SUPERUSER_PW}\n")).unwrap();
    p
}

#[tokio::test]
async fn a_soft_delete_is_audited_as_rewritten_with_the_sql_received_and_sent() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("audit_rewritten");
    psql(
        &db,
        "CREATE TABLE users(id int PRIMARY KEY, name text, deleted_at timestamptz, deleted_by text);\n\
         INSERT INTO users SELECT g, 'user' || g FROM generate_series(1, 3) g;\n\
         GRANT ALL ON users TO PUBLIC;",
    );
    let text = format!(
        "[[policy.soft_delete]]\ntable = \"public.users\"\ndeleted_by = \"deleted_by\"\n\n\
         [soft_delete_check]\ndatabases = [\"{db}\"]\n\
         [soft_delete_check.credentials]\nuser = \"postgres\"\npassword_file = \"{}\"\n",
        superuser_password_file(dir.path()).display()
    );
    let mut cfg = Config::from_toml(&text, "test").expect("config");
    let base = proxy_config();
    cfg.listen = base.listen;
    cfg.upstream = base.upstream;
    audit_into(&mut cfg, dir.path());
    let proxy = start_proxy(cfg).await;
    let client = connect(proxy.addr(), &db).await;
    let msgs = client
        .simple_query("DELETE FROM users WHERE id = 2")
        .await
        .unwrap();
    assert!(matches!(
        msgs.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(1))
    ));
    // The row is still there, soft-deleted by the session's user.
    assert_eq!(
        psql(
            &db,
            "SELECT deleted_by FROM users WHERE id = 2 AND deleted_at IS NOT NULL"
        ),
        SCRAM_USER
    );

    let path = dir.path().join("audit.jsonl");
    let events = wait_for(&path, |ev| !statements(ev).is_empty()).await;
    let st = statements(&events);
    assert_eq!(st.len(), 1, "{st:#?}");
    let s = &st[0]["statement"];
    assert_eq!(s["verdict"], "rewritten");
    assert_eq!(s["rule_id"], "soft_delete");
    assert_eq!(s["kind"], "delete");
    assert_eq!(s["class"], "WRITE");
    assert_eq!(s["tables"], json!(["users"]));
    // As received (literal redacted), and as sent: the UPDATE, redacted the
    // same way (no literal, not even the identity written into deleted_by).
    assert_eq!(s["sql"], "DELETE FROM users WHERE id = $1");
    assert_eq!(
        s["sql_sent"],
        "UPDATE users SET \"deleted_at\" = pg_catalog.now(), \"deleted_by\" = $1 \
         WHERE ( id = $2) AND users.\"deleted_at\" IS NULL"
    );
    // The outcome is what the client saw: DELETE 1.
    assert_eq!(s["outcome"]["status"], "ok");
    assert_eq!(s["outcome"]["command_tag"], "DELETE 1");
    assert_eq!(s["outcome"]["rows"], 1);
}

#[tokio::test]
async fn a_rule_in_monitor_mode_lets_the_statement_through_and_audits_it_as_monitored() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("audit_monitored");
    psql(
        &db,
        "CREATE TABLE t(a int); INSERT INTO t VALUES (1), (2); GRANT ALL ON t TO PUBLIC;",
    );
    let mut cfg =
        Config::from_toml("[policy.rules.truncate]\naction = \"monitor\"\n", "test").unwrap();
    let base = proxy_config();
    cfg.listen = base.listen;
    cfg.upstream = base.upstream;
    audit_into(&mut cfg, dir.path());
    let proxy = start_proxy(cfg).await;
    let client = connect(proxy.addr(), &db).await;
    client
        .simple_query("TRUNCATE t")
        .await
        .expect("monitored, not blocked");
    assert_eq!(psql(&db, "SELECT count(*) FROM t"), "0");
    // Another rule still blocks: monitor mode is per rule.
    client.simple_query("DELETE FROM t").await.unwrap_err();

    let path = dir.path().join("audit.jsonl");
    let events = wait_for(&path, |ev| statements(ev).len() >= 2).await;
    let st = statements(&events);
    let s = &st[0]["statement"];
    assert_eq!(s["verdict"], "monitored");
    assert_eq!(s["rule_id"], "truncate");
    assert!(s["reason"].as_str().unwrap().contains("TRUNCATE"), "{s}");
    assert_eq!(s["outcome"]["status"], "ok");
    assert_eq!(s["outcome"]["command_tag"], "TRUNCATE TABLE");
    assert!(s.get("sql_sent").is_none(), "sent as received: {s}");
    assert_eq!(st[1]["statement"]["verdict"], "blocked");
    assert_eq!(st[1]["statement"]["rule_id"], "delete_without_where");
}

#[tokio::test]
async fn config_reloads_are_audited_as_policy_events_ok_and_failed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgward.toml");
    let audit = dir.path().join("audit.jsonl");
    let head = format!(
        "[listen]\naddresses = [\"127.0.0.1:0\"]\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\n\n\
         [[audit.sinks]]\ntype = \"file\"\npath = \"{}\"\nfsync = \"never\"\n",
        cluster().pg.port,
        audit.display()
    );
    std::fs::write(&file, format!("{head}[policy]\nmode = \"enforce\"\n")).unwrap();
    let proxy = pgward::proxy::Proxy::bind_file(&file, |_| {})
        .await
        .expect("binds")
        .spawn();

    let good = format!("{head}[policy]\nmode = \"monitor\"\n");
    std::fs::write(&file, &good).unwrap();
    proxy.handle().reload().expect("valid config reloads");
    // Line 12 of the file: a value of the wrong type.
    let bad = format!("{head}[policy]\nmode = 42\n");
    std::fs::write(&file, &bad).unwrap();
    let err = proxy.handle().reload().unwrap_err().to_string();

    let events = wait_for(&audit, |ev| {
        ev.iter().filter(|e| e["type"] == "policy").count() >= 2
    })
    .await;
    let policy: Vec<&Value> = events.iter().filter(|e| e["type"] == "policy").collect();
    assert_eq!(policy.len(), 2, "{policy:#?}");
    let ok = &policy[0]["policy"];
    assert_eq!(ok["action"], "reload");
    assert_eq!(ok["result"], "ok");
    assert_eq!(ok["file"], file.display().to_string());
    assert_eq!(ok["sha256"], pgward::proxy::sha256_hex(good.as_bytes()));
    assert!(ok.get("error").is_none());
    let failed = &policy[1]["policy"];
    assert_eq!(failed["result"], "failed");
    assert!(failed.get("sha256").is_none(), "{failed}");
    let message = failed["error"].as_str().unwrap();
    assert_eq!(message, err);
    let line = head.lines().count() + 2;
    assert!(
        message.contains(&format!("{}:{line}:", file.display())),
        "no file:line:column in {message}"
    );
    // Policy events belong to no session.
    assert!(policy.iter().all(|e| e.get("session_id").is_none()));
}

fn tls_client_config() -> rustls::ClientConfig {
    let h = cluster();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::fs::read(&h.ca_cert).unwrap().as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let certs = rustls_pemfile::certs(&mut std::fs::read(&h.client_cert).unwrap().as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut std::fs::read(&h.client_key).unwrap().as_slice())
        .unwrap()
        .unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap()
}

async fn connect_with_cert(addr: SocketAddr, user: &str, password: &str, db: &str) -> Client {
    let mut pg = tokio_postgres::Config::new();
    pg.host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname(db)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_client_config());
    let (client, conn) = tokio::time::timeout(Duration::from_secs(10), pg.connect(tls))
        .await
        .expect("connect within 10 s")
        .expect("client certificate accepted");
    tokio::spawn(conn);
    client
}

/// mTLS: pgward requires certificates signed by the test CA.
fn mtls_config(dir: &Path) -> Config {
    let h = cluster();
    let mut cfg = proxy_config();
    cfg.client_tls.mode = ClientTlsMode::Require;
    cfg.client_tls.cert_file = Some(h.server_cert.clone());
    cfg.client_tls.key_file = Some(h.server_key.clone());
    cfg.client_tls.client_ca_file = Some(h.ca_cert.clone());
    audit_into(&mut cfg, dir);
    cfg
}

#[tokio::test]
async fn a_client_certificate_puts_its_subject_identity_and_context_in_every_event() {
    let db = fresh_database("audit_cert");
    psql(&db, "CREATE TABLE t(a int); GRANT ALL ON t TO PUBLIC;");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = mtls_config(dir.path());
    cfg.identity.source = IdentitySource::Certificate;
    log_in_upstream_as_md5_user(&mut cfg, dir.path());
    cfg.context
        .settings
        .insert("app.current_user_id".into(), "{cert.cn}".into());
    cfg.context
        .settings
        .insert("app.tenant_id".into(), "t7".into());
    let proxy = start_proxy(cfg).await;
    let client = connect_with_cert(proxy.addr(), "anyone", "ignored", &db).await;
    client
        .simple_query("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    client.simple_query("TRUNCATE t").await.unwrap_err();
    drop(client);

    let path = dir.path().join("audit.jsonl");
    let events = wait_for(&path, |ev| {
        ev.iter()
            .any(|e| e["type"] == "connection" && e["connection"]["action"] == "close")
    })
    .await;
    // auth success, connection open, two statements, connection close.
    assert_eq!(events.len(), 5, "{events:#?}");
    for e in &events {
        assert_eq!(e["tls"]["client_cert_subject"], "CN=alice", "{e}");
        assert!(
            e["tls"]["version"].as_str().unwrap().starts_with("TLSv1_"),
            "{e}"
        );
        assert_eq!(e["user"], MD5_USER, "the role pgward logged in as: {e}");
        assert_eq!(
            e["identity"],
            json!({"kind": "certificate", "subject": "alice"}),
            "{e}"
        );
        assert_eq!(
            e["context"],
            json!({"app.current_user_id": "alice", "app.tenant_id": "t7"}),
            "{e}"
        );
    }
    let st = statements(&events);
    assert_eq!(st[1]["statement"]["verdict"], "blocked");
}

#[tokio::test]
async fn the_certificate_subject_is_audited_with_passthrough_auth_too() {
    let db = fresh_database("audit_cert_pass");
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(mtls_config(dir.path())).await;
    let client = connect_with_cert(proxy.addr(), SCRAM_USER, SCRAM_PW, &db).await;
    client.simple_query("SELECT 1").await.unwrap();
    let path = dir.path().join("audit.jsonl");
    let events = wait_for(&path, |ev| !statements(ev).is_empty()).await;
    let st = statements(&events);
    assert_eq!(st[0]["tls"]["client_cert_subject"], "CN=alice");
    assert_eq!(st[0]["user"], SCRAM_USER);
    // No verified identity beyond the Postgres user, no pinned context.
    assert!(st[0].get("identity").is_none() && st[0].get("context").is_none());
}

#[tokio::test]
async fn a_jwt_identity_is_audited_by_subject_and_issuer_only_with_its_context() {
    let db = fresh_database("audit_jwt");
    psql(&db, "CREATE TABLE t(a int); GRANT ALL ON t TO PUBLIC;");
    let dir = tempfile::tempdir().unwrap();
    let h = cluster();
    let secret = b"audit-jwt-test-secret-0123456789abcdef";
    let mut cfg = proxy_config();
    cfg.client_tls.mode = ClientTlsMode::Require;
    cfg.client_tls.cert_file = Some(h.server_cert.clone());
    cfg.client_tls.key_file = Some(h.server_key.clone());
    cfg.identity.source = IdentitySource::Jwt;
    cfg.identity.jwt.algorithms = vec!["HS256".into()];
    cfg.identity.jwt.secret_file = Some({
        let p = dir.path().join("jwt.secret");
        std::fs::write(&p, secret).unwrap();
        p
    });
    cfg.identity.jwt.issuer = Some("https://idp.test".into());
    cfg.identity.jwt.audience = vec!["pgward".into()];
    log_in_upstream_as_md5_user(&mut cfg, dir.path());
    cfg.context
        .settings
        .insert("app.current_user_id".into(), "{jwt.sub}".into());
    cfg.context
        .settings
        .insert("app.tenant_id".into(), "{jwt.org_id}".into());
    audit_into(&mut cfg, dir.path());
    let proxy = start_proxy(cfg).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "org_id": "t9", "email": "alice@example.test",
                "iss": "https://idp.test", "aud": "pgward", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    let client = connect_with_cert(proxy.addr(), "web", &token, &db).await;
    client
        .simple_query("INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let path = dir.path().join("audit.jsonl");
    let events = wait_for(&path, |ev| !statements(ev).is_empty()).await;
    let st = statements(&events);
    let e = st[0];
    assert_eq!(
        e["identity"],
        json!({"kind": "jwt", "subject": "alice", "iss": "https://idp.test"}),
        "only these claims, never e.g. the e-mail: {e}"
    );
    assert_eq!(
        e["context"],
        json!({"app.current_user_id": "alice", "app.tenant_id": "t9"})
    );
    assert_eq!(e["user"], MD5_USER);
    // TLS, but no client CA configured: no certificate to record.
    assert!(e["tls"]["version"].is_string());
    assert!(e["tls"].get("client_cert_subject").is_none(), "{e}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("alice@example.test") && !text.contains(&token));
}
