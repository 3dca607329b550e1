//! Identity and Row-Level-Security context against a real Postgres with real
//! RLS (`FORCE ROW LEVEL SECURITY`, a non-superuser, non-BYPASSRLS role):
//! JWT, client-certificate and passthrough identities, the pinned context,
//! and every way a client could try to change it.

mod common;
mod rawpg;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{cluster, fresh_database, proxy_config, start_proxy, CLEAR_PW, CLEAR_USER, MD5_USER};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pgward::config::{ClientTlsMode, Config};
use pgward::identity::IdentitySource;
use rawpg::Raw;
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The application role: LOGIN, no superuser, no BYPASSRLS.
const APP_ROLE: &str = "rls_app";
const APP_PW: &str = "rls_app_pw";
const HS_SECRET: &[u8] = b"identity-test-secret-0123456789abcdef";

fn app_role() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        cluster()
            .pg
            .psql(
                "postgres",
                &format!(
                    "CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{APP_PW}';"
                ),
            )
            .expect("creating the app role");
    });
}

/// A database with `notes` under RLS keyed on `app.tenant_id`: two rows of
/// tenant t1, one of t2.
fn rls_database(prefix: &str) -> String {
    app_role();
    let db = fresh_database(prefix);
    cluster()
        .pg
        .psql(
            &db,
            "CREATE TABLE notes (id serial PRIMARY KEY, tenant text NOT NULL, body text NOT NULL);\n\
             ALTER TABLE notes ENABLE ROW LEVEL SECURITY;\n\
             ALTER TABLE notes FORCE ROW LEVEL SECURITY;\n\
             CREATE POLICY tenant_isolation ON notes\n\
               USING (tenant = current_setting('app.tenant_id', true))\n\
               WITH CHECK (tenant = current_setting('app.tenant_id', true));\n\
             GRANT SELECT, INSERT ON notes TO PUBLIC;\n\
             GRANT USAGE ON SEQUENCE notes_id_seq TO PUBLIC;\n\
             INSERT INTO notes (tenant, body) VALUES ('t1', 'a1'), ('t1', 'a2'), ('t2', 'b1');\n",
        )
        .expect("RLS schema");
    db
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn write_temp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A proxy that takes HS256 JWTs as passwords over TLS and logs in upstream
/// as `upstream_user`.
fn jwt_config(dir: &tempfile::TempDir, upstream_user: &str, upstream_pw: &str) -> Config {
    let h = cluster();
    let mut cfg = proxy_config();
    cfg.client_tls.mode = ClientTlsMode::Require;
    cfg.client_tls.cert_file = Some(h.server_cert.clone());
    cfg.client_tls.key_file = Some(h.server_key.clone());
    cfg.identity.source = IdentitySource::Jwt;
    cfg.identity.jwt.algorithms = vec!["HS256".into()];
    cfg.identity.jwt.secret_file = Some(write_temp(dir, "secret", HS_SECRET));
    cfg.identity.jwt.issuer = Some("https://idp.test".into());
    cfg.identity.jwt.audience = vec!["pgward".into()];
    cfg.identity.upstream.user = upstream_user.into();
    cfg.identity.upstream.password_file = Some(write_temp(
        dir,
        "upstream_pw",
        format!("{upstream_pw}\n").as_bytes(),
    ));
    for (k, v) in [
        ("app.tenant_id", "{jwt.org_id}"),
        ("app.current_user_id", "{jwt.sub}"),
        ("app.current_session_id", "{session_id}"),
        ("app.current_service", "{user}"),
    ] {
        cfg.context.settings.insert(k.into(), v.into());
    }
    cfg
}

fn claims(sub: &str, org: &str) -> Value {
    json!({"sub": sub, "org_id": org, "iss": "https://idp.test", "aud": "pgward", "exp": now() + 300})
}

fn hs_token(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS_SECRET),
    )
    .unwrap()
}

fn tls_client_config(client_cert: bool) -> rustls::ClientConfig {
    let h = cluster();
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(&h.ca_cert).unwrap();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    if client_cert {
        let certs = rustls_pemfile::certs(&mut std::fs::read(&h.client_cert).unwrap().as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls_pemfile::private_key(&mut std::fs::read(&h.client_key).unwrap().as_slice())
                .unwrap()
                .unwrap();
        b.with_client_auth_cert(certs, key).unwrap()
    } else {
        b.with_no_client_auth()
    }
}

async fn try_connect_tls(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
    client_cert: bool,
) -> Result<Client, tokio_postgres::Error> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname(db)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_client_config(client_cert));
    let (client, conn) = tokio::time::timeout(Duration::from_secs(10), pg.connect(tls))
        .await
        .expect("connect within 10 s")?;
    tokio::spawn(conn);
    Ok(client)
}

async fn connect_plain(addr: SocketAddr, user: &str, password: &str, db: &str) -> Client {
    let s = format!(
        "host={} port={} user={user} password={password} dbname={db}",
        addr.ip(),
        addr.port()
    );
    let (client, conn) = tokio_postgres::connect(&s, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

async fn one(c: &Client, sql: &str) -> String {
    c.query_one(sql, &[]).await.expect(sql).get::<_, String>(0)
}

async fn tenants(c: &Client) -> Vec<String> {
    c.query("SELECT tenant FROM notes ORDER BY id", &[])
        .await
        .expect("select notes")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn two_concurrent_jwt_clients_each_see_only_their_tenant() {
    let db = rls_database("id_two_tenants");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = jwt_config(&dir, APP_ROLE, APP_PW);
    // Per-user layers follow the verified subject, never the user name a
    // JWT client merely claims in its startup packet.
    for (who, tenant) in [("web", "t2"), ("bob", "t2")] {
        cfg.context.users.insert(
            who.into(),
            [(
                "app.current_service".to_string(),
                format!("svc-{who}-{tenant}"),
            )]
            .into_iter()
            .collect(),
        );
    }
    let proxy = start_proxy(cfg).await;
    let (ta, tb) = (
        hs_token(&claims("alice", "t1")),
        hs_token(&claims("bob", "t2")),
    );
    let (a, b) = tokio::join!(
        try_connect_tls(proxy.addr(), "web", &ta, &db, false),
        try_connect_tls(proxy.addr(), "web", &tb, &db, false),
    );
    let (a, b) = (a.expect("alice connects"), b.expect("bob connects"));
    for _ in 0..3 {
        let (ta, tb) = tokio::join!(tenants(&a), tenants(&b));
        assert_eq!(ta, vec!["t1", "t1"]);
        assert_eq!(tb, vec!["t2"]);
    }
    assert_eq!(one(&a, "SELECT current_user::text").await, APP_ROLE);
    assert_eq!(
        one(&a, "SELECT current_setting('app.current_user_id')").await,
        "alice"
    );
    assert_eq!(
        one(&b, "SELECT current_setting('app.current_user_id')").await,
        "bob"
    );
    // {user} is the role pgward logged in as, not the claimed "web".
    assert_eq!(
        one(&a, "SELECT current_setting('app.current_service')").await,
        APP_ROLE
    );
    assert_eq!(
        one(&b, "SELECT current_setting('app.current_service')").await,
        "svc-bob-t2"
    );
    let sa = one(&a, "SELECT current_setting('app.current_session_id')").await;
    let sb = one(&b, "SELECT current_setting('app.current_session_id')").await;
    assert!(sa.parse::<u64>().is_ok() && sa != sb, "{sa} vs {sb}");
    // The WITH CHECK half of the policy holds too.
    let e = a
        .execute("INSERT INTO notes (tenant, body) VALUES ('t2', 'x')", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    a.execute("INSERT INTO notes (tenant, body) VALUES ('t1', 'a3')", &[])
        .await
        .unwrap();
    assert_eq!(tenants(&b).await, vec!["t2"]);
}

/// Every way of writing a pinned setting or changing role, each of which
/// must fail with 42501 and leave the context as it was.
const SPOOFS: &[&str] = &[
    "SET app.tenant_id = 't2'",
    "SET SESSION app.tenant_id = 't2'",
    "SET LOCAL app.tenant_id = 't2'",
    "set APP.TENANT_ID to 't2'",
    "SET \"APP\".\"TENANT_ID\" = 't2'",
    "SELECT set_config('app.tenant_id', 't2', false)",
    "SELECT pg_catalog.set_config('App.Tenant_Id', 't2', true)",
    "SELECT * FROM notes WHERE id > (SELECT length(set_config('app.tenant_id', 't2', false)))",
    "WITH c AS (SELECT set_config('app.tenant_id', 't2', false) AS v) SELECT * FROM c",
    "SELECT set_config('app.' || 'tenant_id', 't2', false)",
    "SELECT set_config(chr(97) || 'pp.tenant_id', 't2', false)",
    "UPDATE pg_settings SET setting = 't2' WHERE name = 'app.tenant_id'",
    "SET ROLE postgres",
    "RESET ROLE",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config('role', 'postgres', false)",
    "ALTER ROLE rls_app SET app.tenant_id = 't2'",
    "ALTER DATABASE postgres SET app.tenant_id = 't2'",
    "ALTER SYSTEM SET app.tenant_id = 't2'",
    "CREATE FUNCTION leak() RETURNS int LANGUAGE sql SET app.tenant_id = 't2' AS 'SELECT 1'",
    "SELECT * FROM set_config('app.tenant_id', 't2', false)",
    "CREATE VIEW leak AS SELECT set_config('app.tenant_id', 't2', false)",
    "DO $$ BEGIN EXECUTE 'SE' || 'T app.tenant_id = ''t2'''; END $$",
    "SET app.tenant_id = 't2'; SELECT * FROM notes",
    "SELECT 1; SELECT set_config('app.tenant_id', 't2', false); SELECT * FROM notes",
];

/// Statements that reset settings: they return to pgward's pinned values
/// (its startup parameters), so they are allowed and the context survives.
const RESETS: &[&str] = &[
    "RESET app.tenant_id",
    "RESET ALL",
    "DISCARD ALL",
    "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL",
];

async fn assert_context_intact(c: &Client, sub: &str) {
    assert_eq!(
        one(c, "SELECT current_setting('app.tenant_id')").await,
        "t1"
    );
    assert_eq!(
        one(c, "SELECT current_setting('app.current_user_id')").await,
        sub
    );
    assert_eq!(one(c, "SELECT current_user::text").await, APP_ROLE);
    assert_eq!(tenants(c).await, vec!["t1", "t1"]);
}

#[tokio::test]
async fn every_spoofing_form_is_blocked_and_the_context_stays() {
    let db = rls_database("id_spoof");
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(jwt_config(&dir, APP_ROLE, APP_PW)).await;
    let c = try_connect_tls(
        proxy.addr(),
        "web",
        &hs_token(&claims("alice", "t1")),
        &db,
        false,
    )
    .await
    .expect("connect");
    for sql in SPOOFS {
        // Simple protocol: not one row of t2, even from the same message.
        match c.simple_query(sql).await {
            Ok(msgs) => panic!("{sql:?} was not blocked: {} messages", msgs.len()),
            Err(e) => {
                assert_eq!(code(&e), "42501", "{sql:?}: {e}");
                let db_err = e.as_db_error().unwrap();
                assert!(
                    db_err.message().contains("context_spoofing"),
                    "{sql:?}: {}",
                    db_err.message()
                );
            }
        }
        // Extended protocol (Parse), for single statements.
        if !sql.contains(';') {
            let e = c.query(*sql, &[]).await.unwrap_err();
            assert_eq!(code(&e), "42501", "extended {sql:?}: {e}");
        }
        assert_context_intact(&c, "alice").await;
    }
    for sql in RESETS {
        c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_context_intact(&c, "alice").await;
    }
    // Bind parameters for the name: assume the worst.
    let e = c
        .query(
            "SELECT set_config($1, $2, false)",
            &[&"app.tenant_id", &"t2"],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    // Inside a transaction the block aborts it, as a server error would.
    c.simple_query("BEGIN").await.unwrap();
    assert_eq!(
        code(
            &c.simple_query("SET LOCAL app.tenant_id = 't2'")
                .await
                .unwrap_err()
        ),
        "42501"
    );
    assert_eq!(
        code(&c.simple_query("SELECT 1").await.unwrap_err()),
        "25P02"
    );
    c.simple_query("ROLLBACK").await.unwrap();
    // A prepared statement cannot smuggle it in either.
    assert_eq!(
        code(
            &c.simple_query("PREPARE p AS SELECT set_config('app.tenant_id', 't2', false)")
                .await
                .unwrap_err()
        ),
        "42501"
    );
    assert_context_intact(&c, "alice").await;
    // Ordinary settings still work.
    c.simple_query("SET work_mem = '8MB'").await.unwrap();
    assert_eq!(one(&c, "SHOW work_mem").await, "8MB");
}

#[tokio::test]
async fn bad_tokens_are_refused_and_never_reach_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = jwt_config(&dir, APP_ROLE, APP_PW);
    // Nothing listens here: a token that got through would fail with 08006.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cfg.upstream.port = unused.local_addr().unwrap().port();
    drop(unused);
    let proxy = start_proxy(cfg).await;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut expired = claims("alice", "t1");
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = claims("alice", "t1");
    wrong_aud["aud"] = json!("another-service");
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims("alice", "t1"),
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret-!!"),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims("alice", "t1").to_string())
    );
    let cases = [
        ("expired", hs_token(&expired)),
        ("wrong signature", forged),
        ("wrong audience", hs_token(&wrong_aud)),
        ("alg none", none),
        ("malformed", "definitely.not.a-jwt".to_string()),
        ("bad base64", "eyJ!!!.eyJ!!!.x".to_string()),
        ("huge", "a".repeat(100_000)),
    ];
    for (what, token) in cases {
        let e = try_connect_tls(proxy.addr(), "web", &token, "postgres", false)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(code(&e), "28P01", "{what}: {e}");
    }
    // A good token does get as far as the (absent) server.
    let e = try_connect_tls(
        proxy.addr(),
        "web",
        &hs_token(&claims("a", "t1")),
        "postgres",
        false,
    )
    .await
    .expect_err("no server");
    assert_eq!(code(&e), "08006", "{e}");
}

#[tokio::test]
async fn a_jwt_is_refused_over_plaintext_and_a_missing_claim_refuses_the_connection() {
    let db = rls_database("id_missing");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = jwt_config(&dir, APP_ROLE, APP_PW);
    cfg.client_tls.mode = ClientTlsMode::Allow;
    let proxy = start_proxy(cfg).await;
    let s = format!(
        "host=127.0.0.1 port={} user=web password={} dbname={db} sslmode=disable",
        proxy.addr().port(),
        hs_token(&claims("alice", "t1"))
    );
    let e = tokio_postgres::connect(&s, NoTls)
        .await
        .err()
        .expect("plaintext refused");
    assert_eq!(code(&e), "28000", "{e}");
    assert!(e.as_db_error().unwrap().message().contains("TLS"), "{e}");

    let mut no_org = claims("alice", "t1");
    no_org.as_object_mut().unwrap().remove("org_id");
    let e = try_connect_tls(proxy.addr(), "web", &hs_token(&no_org), &db, false)
        .await
        .expect_err("refused");
    assert_eq!(code(&e), "28000", "{e}");
    assert!(
        e.as_db_error().unwrap().message().contains("jwt.org_id"),
        "{e}"
    );
}

#[tokio::test]
async fn claims_with_quotes_backslashes_and_unicode_round_trip_exactly() {
    let db = rls_database("id_claims");
    let dir = tempfile::tempdir().unwrap();
    // Upstream login with cleartext password authentication this time.
    let proxy = start_proxy(jwt_config(&dir, CLEAR_USER, CLEAR_PW)).await;
    for sub in [
        "o'brien",
        "back\\slash \\' \\\\",
        "\"double\" 'single' $$dollar$$ ; DROP TABLE notes; --",
        "ünïcødé 🦀 日本語",
        "{user} %s \u{7f}",
    ] {
        let c = try_connect_tls(
            proxy.addr(),
            "web",
            &hs_token(&claims(sub, "t1")),
            &db,
            false,
        )
        .await
        .expect("connect");
        assert_eq!(
            one(&c, "SELECT current_setting('app.current_user_id')").await,
            sub
        );
        assert_eq!(one(&c, "SELECT current_user::text").await, CLEAR_USER);
    }
    // A claim with a NUL cannot be a setting value: refused, not truncated.
    let c = try_connect_tls(
        proxy.addr(),
        "web",
        &hs_token(&claims("nul\u{0}byte", "t1")),
        &db,
        false,
    )
    .await;
    assert_eq!(code(&c.expect_err("refused")), "28000");
}

#[tokio::test]
async fn a_certificate_identity_pins_the_cn() {
    let db = rls_database("id_cert");
    let h = cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = proxy_config();
    cfg.client_tls.mode = ClientTlsMode::Require;
    cfg.client_tls.cert_file = Some(h.server_cert.clone());
    cfg.client_tls.key_file = Some(h.server_key.clone());
    cfg.client_tls.client_ca_file = Some(h.ca_cert.clone());
    cfg.identity.source = IdentitySource::Certificate;
    // MD5 upstream login.
    cfg.identity.upstream.user = MD5_USER.into();
    cfg.identity.upstream.password_env = Some("PGWARD_IDENTITY_TEST_MD5_PW".into());
    std::env::set_var("PGWARD_IDENTITY_TEST_MD5_PW", common::MD5_PW);
    cfg.context
        .settings
        .insert("app.current_user_id".into(), "{cert.cn}".into());
    cfg.context
        .settings
        .insert("app.tenant_id".into(), "t2".into());
    let _keep = dir;
    let proxy = start_proxy(cfg).await;
    let c = try_connect_tls(proxy.addr(), "anyone", "ignored", &db, true)
        .await
        .expect("client certificate accepted");
    assert_eq!(
        one(&c, "SELECT current_setting('app.current_user_id')").await,
        "alice"
    );
    assert_eq!(one(&c, "SELECT current_user::text").await, MD5_USER);
    assert_eq!(tenants(&c).await, vec!["t2"]);
    // Role changes are blocked for certificate identities by default.
    assert_eq!(
        code(&c.simple_query("SET ROLE postgres").await.unwrap_err()),
        "42501"
    );
    // Without a certificate the TLS handshake itself fails.
    assert!(try_connect_tls(proxy.addr(), "anyone", "x", &db, false)
        .await
        .is_err());
}

#[tokio::test]
async fn a_per_user_static_context_with_passthrough_auth() {
    let db = rls_database("id_static");
    let mut cfg = proxy_config();
    cfg.context
        .settings
        .insert("app.current_session_id".into(), "{session_id}".into());
    cfg.context.users.insert(
        CLEAR_USER.into(),
        [
            ("app.tenant_id".to_string(), "t1".to_string()),
            ("app.current_service".to_string(), "billing".to_string()),
        ]
        .into_iter()
        .collect(),
    );
    let proxy = start_proxy(cfg).await;
    let c = connect_plain(proxy.addr(), CLEAR_USER, CLEAR_PW, &db).await;
    assert_eq!(
        one(&c, "SELECT current_setting('app.current_service')").await,
        "billing"
    );
    assert_eq!(tenants(&c).await, vec!["t1", "t1"]);
    assert_eq!(
        code(
            &c.simple_query("SET app.current_service = 'x'")
                .await
                .unwrap_err()
        ),
        "42501"
    );
    c.simple_query("RESET ALL").await.unwrap();
    assert_eq!(tenants(&c).await, vec!["t1", "t1"]);
    // Passthrough users may change role (guard_role = "verified").
    c.simple_query("SET ROLE NONE").await.unwrap();
    assert_eq!(
        one(&c, "SELECT current_setting('app.current_service')").await,
        "billing"
    );

    // Another user gets only the global settings: no tenant, no rows.
    let other = connect_plain(proxy.addr(), common::SCRAM_USER, common::SCRAM_PW, &db).await;
    assert_eq!(
        one(
            &other,
            "SELECT coalesce(current_setting('app.current_service', true), '<unset>')"
        )
        .await,
        "<unset>"
    );
    assert_eq!(tenants(&other).await, Vec::<String>::new());

    // The FunctionCall message cannot call set_config.
    let set_config_oid: u32 = one(
        &c,
        "SELECT 'set_config(text,text,boolean)'::regprocedure::oid::text",
    )
    .await
    .parse()
    .unwrap();
    assert_eq!(set_config_oid, pgward::policy::context::SET_CONFIG_OID);
    let (mut raw, _) = Raw::connect(proxy.addr(), CLEAR_USER, CLEAR_PW, &db).await;
    raw.send(&rawpg::function_call(
        set_config_oid,
        &["app.tenant_id", "t2", "f"],
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert_eq!(
        rawpg::first_error(&msgs).map(|e| e.1).as_deref(),
        Some("42501"),
        "{}",
        rawpg::show(&msgs)
    );
    let rows = raw.simple("SELECT current_setting('app.tenant_id')").await;
    assert_eq!(rawpg::data_rows(&rows), vec![vec![Some("t1".to_string())]]);

    // Startup parameters naming a pinned setting are refused.
    for options in ["-c app.tenant_id=t2", "--app.tenant-id=t2"] {
        let s = format!(
            "host=127.0.0.1 port={} user={CLEAR_USER} password={CLEAR_PW} dbname={db} options='{options}'",
            proxy.addr().port()
        );
        let e = tokio_postgres::connect(&s, NoTls)
            .await
            .err()
            .expect("refused");
        assert_eq!(code(&e), "42501", "{options}: {e}");
    }
    let mut raw = Raw::connect_tcp(proxy.addr()).await;
    raw.send(&rawpg::startup_packet(
        196608,
        &[
            ("user", CLEAR_USER),
            ("database", &db),
            ("app.tenant_id", "t2"),
        ],
    ))
    .await;
    let msgs = raw.until_closed(Duration::from_secs(5)).await;
    assert_eq!(
        rawpg::first_error(&msgs).map(|e| e.1).as_deref(),
        Some("42501")
    );
}

#[tokio::test]
async fn simple_query_messages_stay_whole_under_the_rule() {
    // The simple-protocol messages tokio-postgres produced above are checked
    // for errors; here the raw transcript shows no DataRow escaped a blocked
    // multi-statement Query.
    let db = rls_database("id_multi");
    let mut cfg = proxy_config();
    cfg.context.users.insert(
        CLEAR_USER.into(),
        [("app.tenant_id".to_string(), "t1".to_string())]
            .into_iter()
            .collect(),
    );
    let proxy = start_proxy(cfg).await;
    let (mut raw, _) = Raw::connect(proxy.addr(), CLEAR_USER, CLEAR_PW, &db).await;
    let msgs = raw
        .simple("SET app.tenant_id='t2'; SELECT * FROM notes")
        .await;
    assert!(rawpg::data_rows(&msgs).is_empty(), "{}", rawpg::show(&msgs));
    assert_eq!(
        rawpg::first_error(&msgs).map(|e| e.1).as_deref(),
        Some("42501")
    );
    let c = connect_plain(proxy.addr(), CLEAR_USER, CLEAR_PW, &db).await;
    let rows = c.simple_query("SELECT tenant FROM notes").await.unwrap();
    let seen: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(seen, vec!["t1", "t1"]);
}

#[tokio::test]
async fn es256_tokens_verified_with_a_pem_public_key() {
    let db = rls_database("id_es256");
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let mut cfg = jwt_config(&dir, APP_ROLE, APP_PW);
    cfg.identity.jwt.algorithms = vec!["ES256".into()];
    cfg.identity.jwt.secret_file = None;
    cfg.identity.jwt.public_key_file =
        Some(write_temp(&dir, "es.pem", key.public_key_pem().as_bytes()));
    let proxy = start_proxy(cfg).await;
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let token = encode(
        &Header::new(Algorithm::ES256),
        &claims("dora", "t2"),
        &signing,
    )
    .unwrap();
    let c = try_connect_tls(proxy.addr(), "web", &token, &db, false)
        .await
        .expect("ES256 token accepted");
    assert_eq!(tenants(&c).await, vec!["t2"]);
    // An HS256 token is refused when only ES256 is accepted.
    let e = try_connect_tls(
        proxy.addr(),
        "web",
        &hs_token(&claims("dora", "t2")),
        &db,
        false,
    )
    .await
    .expect_err("HS256 refused");
    assert_eq!(code(&e), "28P01");
}

#[tokio::test]
async fn soft_delete_records_the_jwt_subject_as_deleted_by() {
    let db = rls_database("id_softdel");
    cluster()
        .pg
        .psql(
            &db,
            "ALTER TABLE notes ADD COLUMN deleted_at timestamptz, ADD COLUMN deleted_by text;\n\
             GRANT UPDATE ON notes TO PUBLIC;\n",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = jwt_config(&dir, APP_ROLE, APP_PW);
    let policy = Config::from_toml(
        "[[policy.soft_delete]]\ntable = \"public.notes\"\ndeleted_by = \"deleted_by\"\n",
        "t",
    )
    .unwrap()
    .policy;
    cfg.policy = policy;
    cfg.soft_delete_check.skip = true;
    let proxy = start_proxy(cfg).await;
    let c = try_connect_tls(
        proxy.addr(),
        "web",
        &hs_token(&claims("erin", "t1")),
        &db,
        false,
    )
    .await
    .expect("connect");
    assert_eq!(
        c.execute("DELETE FROM notes WHERE body = 'a1'", &[])
            .await
            .unwrap(),
        1
    );
    let rows = cluster()
        .pg
        .psql(
            &db,
            "SELECT body || '=' || coalesce(deleted_by, '-') FROM notes ORDER BY id",
        )
        .unwrap();
    assert!(rows.contains("a1=erin"), "{rows}");
    assert!(rows.contains("a2=-"), "{rows}");
}
