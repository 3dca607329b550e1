//! Smoke test for the shared harness: the cluster starts, the test roles log
//! in with their auth methods, and TLS to the cluster works with the test CA.

mod common;

use std::sync::Arc;

use common::{cluster, fresh_database, pg_bin};

async fn connect(conn_str: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test]
async fn harness_smoke() {
    let h = cluster();
    let db = fresh_database("smoke");
    assert_eq!(h.pg.psql(&db, "SELECT 1").unwrap().trim(), "1");
    assert!(pg_bin("psql").exists() || pg_bin("psql") == std::path::Path::new("psql"));

    for (user, pw) in [
        (common::SCRAM_USER, common::SCRAM_PW),
        (common::MD5_USER, common::MD5_PW),
        (common::CLEAR_USER, common::CLEAR_PW),
    ] {
        let client = connect(&h.conn_str(user, pw, &db))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        client
            .batch_execute(&format!("CREATE TABLE t_{user} (id int)"))
            .await
            .unwrap();
    }

    // The md5 role really has an MD5 verifier, and the others SCRAM.
    let stored =
        h.pg.psql(
            "postgres",
            "SELECT rolname || ':' || left(rolpassword, 3) FROM pg_authid \
             WHERE rolname IN ('md5_user', 'scram_user') ORDER BY 1",
        )
        .unwrap();
    assert_eq!(stored.trim(), "md5_user:md5\nscram_user:SCR");

    for user in [common::SCRAM_USER, common::MD5_USER, common::CLEAR_USER] {
        let err = match connect(&h.conn_str(user, "wrong", &db)).await {
            Ok(_) => panic!("{user}: wrong password accepted"),
            Err(e) => e,
        };
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
            "{user}: {err}"
        );
    }

    // TLS, verified against the test CA.
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(&h.ca_cert).unwrap();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let conn_str = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={} password={} dbname={db} sslmode=require",
        h.pg.port,
        common::SCRAM_USER,
        common::SCRAM_PW
    );
    let (client, conn) = tokio_postgres::connect(&conn_str, tls).await.unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "true");
}

/// pgward's own connections (schema checks, audit sink) log in through the
/// same upstream path as client sessions.
#[tokio::test]
async fn pgclient_logs_in_with_credentials_from_a_file() {
    let db = fresh_database("pgclient");
    let cfg = common::proxy_config();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", common::SCRAM_PW)).unwrap();
    let creds = pgward::pgclient::CredentialsConfig {
        user: common::SCRAM_USER.into(),
        password_file: Some(pw),
        password_env: None,
    }
    .resolve()
    .unwrap();
    let client = pgward::pgclient::connect(
        &cfg.upstream,
        &creds,
        &db,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let row = client
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), common::SCRAM_USER);
    assert_eq!(row.get::<_, String>(1), db);

    let wrong = pgward::pgclient::Credentials {
        user: common::SCRAM_USER.into(),
        password: Some("wrong".into()),
    };
    let e = pgward::pgclient::connect(
        &cfg.upstream,
        &wrong,
        &db,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
}
