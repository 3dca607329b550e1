//! tokio-postgres with rustls (tokio-postgres-rustls).

use crate::{env, expect, Checks, Res, COPY_ROWS};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Config, Notification};
use tokio_postgres_rustls::MakeRustlsConnect;

fn tls() -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(env("PGSSLROOTCERT")).expect("reading PGSSLROOTCERT");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("CA certificate")).expect("adding CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    MakeRustlsConnect::new(cfg)
}

fn config() -> Config {
    let mut cfg = Config::new();
    cfg.host(env("PGHOST"))
        .port(env("PGPORT").parse().expect("PGPORT"))
        .user(env("PGUSER"))
        .password(env("PGPASSWORD"))
        .dbname(env("PGDATABASE"))
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .channel_binding(tokio_postgres::config::ChannelBinding::Disable);
    cfg
}

/// Connects and drives the connection in a task that forwards notifications.
async fn connect() -> Result<(Client, mpsc::UnboundedReceiver<Notification>), tokio_postgres::Error>
{
    let (client, mut conn) = config().connect(tls()).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = messages.next().await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send(n);
            }
        }
    });
    Ok((client, rx))
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE ({e})"))
}

async fn count(c: &Client, sql: &str) -> Result<i64, tokio_postgres::Error> {
    c.query_one(sql, &[]).await?.try_get(0)
}

pub async fn run(checks: &mut Checks) {
    println!("version tokio-postgres 0.7.18 (tokio-postgres-rustls 0.13.0)");
    let client = match connect().await {
        Ok((client, _)) => {
            let user: Result<String, _> = client
                .query_one("select current_user", &[])
                .await
                .map(|r| r.get(0));
            match user {
                Ok(u) if u == env("PGUSER") => println!("scram_tls ok"),
                other => checks.fail("scram_tls", &format!("{other:?}")),
            }
            client
        }
        Err(e) => {
            checks.fail("scram_tls", &e.to_string());
            return;
        }
    };
    let c = &client;
    checks.run("simple_query", simple_query(c)).await;
    checks.run("prepared_query", prepared_query(c)).await;
    checks
        .run("transaction_rollback", transaction_rollback(c))
        .await;
    checks
        .run("error_in_transaction", error_in_transaction(c))
        .await;
    checks.run("copy_in", copy_in(c)).await;
    checks.run("copy_out", copy_out(c)).await;
    checks.run("cancel", cancel()).await;
    checks.run("listen_notify", listen_notify(c)).await;
    checks
        .run("blocked_truncate_42501", blocked_truncate(c))
        .await;
    checks.run("soft_delete_rowcount", soft_delete(c)).await;
    checks.run("rls_context", rls_context(c)).await;
    checks.run("binary_types", binary_types(c)).await;
}

async fn simple_query(c: &Client) -> Res {
    let msgs = c.simple_query("select 1 + 1, 'x'").await?;
    let row = msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => {
            Some((r.get(0).map(str::to_owned), r.get(1).map(str::to_owned)))
        }
        _ => None,
    });
    expect(
        row == Some((Some("2".into()), Some("x".into()))),
        format!("{row:?}"),
    )
}

async fn prepared_query(c: &Client) -> Res {
    let stmt = c.prepare("select $1::int * 2").await?;
    for i in 0..8i32 {
        let v: i32 = c.query_one(&stmt, &[&i]).await?.get(0);
        expect(v == i * 2, format!("{v}"))?;
    }
    Ok(())
}

async fn transaction_rollback(c: &Client) -> Res {
    c.batch_execute("begin").await?;
    c.execute(
        "insert into items (id, name) values (10, 'rolled back')",
        &[],
    )
    .await?;
    c.batch_execute("rollback").await?;
    expect(
        count(c, "select count(*) from items where id = 10").await? == 0,
        "insert survived",
    )
}

async fn error_in_transaction(c: &Client) -> Res {
    c.batch_execute("begin").await?;
    c.execute("insert into items (id, name) values (11, 'doomed')", &[])
        .await?;
    let e = c
        .query_one("select 1 / $1::int", &[&0i32])
        .await
        .err()
        .ok_or("no error")?;
    expect(e.code() == Some(&SqlState::DIVISION_BY_ZERO), code(&e))?;
    let e = c.query_one("select 1", &[]).await.err().ok_or("no error")?;
    expect(
        e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        code(&e),
    )?;
    c.batch_execute("rollback").await?;
    expect(
        count(c, "select count(*) from items where id = 11").await? == 0,
        "committed",
    )
}

async fn copy_in(c: &Client) -> Res {
    let sink = c.copy_in("copy items (id, name) from stdin").await?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(COPY_ROWS.as_bytes()))
        .await?;
    let n = sink.finish().await?;
    expect(n == 3, format!("copied {n}"))
}

async fn copy_out(c: &Client) -> Res {
    let stream = c
        .copy_out("copy (select id, name from items where id >= 100 order by id) to stdout")
        .await?;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
    let got: Vec<u8> = chunks.concat();
    expect(
        got == COPY_ROWS.as_bytes(),
        String::from_utf8_lossy(&got).into_owned(),
    )
}

async fn cancel() -> Res {
    let (other, _) = connect().await?;
    let token = other.cancel_token();
    let t0 = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tls()).await
    });
    let e = other
        .simple_query("select pg_sleep(30)")
        .await
        .err()
        .ok_or("not cancelled")?;
    canceller.await??;
    expect(e.code() == Some(&SqlState::QUERY_CANCELED), code(&e))?;
    expect(
        t0.elapsed() < Duration::from_secs(10),
        "cancel took too long",
    )?;
    expect(
        count(&other, "select 7::int8").await? == 7,
        "connection unusable",
    )
}

async fn listen_notify(c: &Client) -> Res {
    let (listener, mut rx) = connect().await?;
    listener.batch_execute("listen compat_chan").await?;
    c.batch_execute("notify compat_chan, 'hello from tokio-postgres'")
        .await?;
    let n = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .map_err(|_| "no notification within 5 s")?
        .ok_or("connection closed")?;
    expect(
        n.channel() == "compat_chan" && n.payload() == "hello from tokio-postgres",
        format!("{} {}", n.channel(), n.payload()),
    )
}

async fn blocked_truncate(c: &Client) -> Res {
    let e = c
        .execute("truncate items", &[])
        .await
        .err()
        .ok_or("TRUNCATE was not blocked")?;
    expect(
        e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        code(&e),
    )?;
    let db = e.as_db_error().ok_or("not a database error")?;
    expect(db.message().contains("pgward"), db.message().to_string())?;
    expect(
        count(c, "select count(*) from items").await? > 0,
        "items is empty",
    )
}

async fn soft_delete(c: &Client) -> Res {
    let n = c
        .execute("delete from items where id = $1", &[&50i32])
        .await?;
    expect(n == 1, format!("execute returned {n}"))?;
    let row = c
        .query_one(
            "select deleted_at is not null, deleted_by from items where id = 50",
            &[],
        )
        .await?;
    let (gone, by): (bool, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
    expect(
        gone && by.as_deref() == Some(env("PGUSER").as_str()),
        format!("{gone} {by:?}"),
    )
}

async fn rls_context(c: &Client) -> Res {
    let user = env("PGUSER");
    let setting = "select current_setting('app.current_user_id')";
    let v: String = c.query_one(setting, &[]).await?.try_get(0)?;
    expect(v == user, format!("context setting {v}"))?;
    let rows = c.query("select owner from notes", &[]).await?;
    let owners: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    expect(
        owners == [user.clone()],
        format!("RLS let through {owners:?}"),
    )?;
    let e = c
        .batch_execute("set app.current_user_id = 'intruder'")
        .await
        .err()
        .ok_or("spoofing the context was not blocked")?;
    expect(
        e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        code(&e),
    )?;
    let v: String = c.query_one(setting, &[]).await?.try_get(0)?;
    expect(v == user, format!("context changed to {v}"))
}

/// tokio-postgres reads every result column in binary format.
async fn binary_types(c: &Client) -> Res {
    let row = c
        .query_one(
            "select $1::int8, $2::float8, $3::text, $4::bytea, $5::bool, $6::int4[]",
            &[
                &-7i64,
                &2.5f64,
                &"grüße ✓",
                &vec![0u8, 255, 1],
                &true,
                &vec![1i32, 2, 3],
            ],
        )
        .await?;
    let got: (i64, f64, String, Vec<u8>, bool, Vec<i32>) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    expect(
        got == (
            -7,
            2.5,
            "grüße ✓".into(),
            vec![0, 255, 1],
            true,
            vec![1, 2, 3],
        ),
        format!("{got:?}"),
    )
}
