//! sqlx (Postgres, rustls with ring). sqlx has no API to cancel a running
//! query (dropping the future does not send a CancelRequest), so there is no
//! `cancel` check for it.

use crate::{env, expect, Checks, Res, COPY_ROWS};
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions, PgSslMode};
use sqlx::{Connection, Executor, Row};
use std::time::Duration;

fn options() -> PgConnectOptions {
    PgConnectOptions::new()
        .host(&env("PGHOST"))
        .port(env("PGPORT").parse().expect("PGPORT"))
        .username(&env("PGUSER"))
        .password(&env("PGPASSWORD"))
        .database(&env("PGDATABASE"))
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(env("PGSSLROOTCERT"))
}

fn code(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()).unwrap_or_default(),
        other => format!("not a database error: {other}"),
    }
}

async fn count(c: &mut PgConnection, sql: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sql).fetch_one(c).await
}

pub async fn run(checks: &mut Checks) {
    println!("version sqlx 0.8.6 (runtime-tokio, tls-rustls-ring-webpki)");
    let mut conn = match PgConnection::connect_with(&options()).await {
        Ok(mut conn) => {
            match sqlx::query_scalar::<_, String>("select current_user")
                .fetch_one(&mut conn)
                .await
            {
                Ok(u) if u == env("PGUSER") => println!("scram_tls ok"),
                other => checks.fail("scram_tls", &format!("{other:?}")),
            }
            conn
        }
        Err(e) => {
            checks.fail("scram_tls", &e.to_string());
            return;
        }
    };
    let c = &mut conn;
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
    checks.run("listen_notify", listen_notify(c)).await;
    checks
        .run("blocked_truncate_42501", blocked_truncate(c))
        .await;
    checks.run("rls_context", rls_context(c)).await;
    checks.run("soft_delete_rowcount", soft_delete(c)).await;
}

async fn soft_delete(c: &mut PgConnection) -> Res {
    let done = sqlx::query("delete from items where id = $1")
        .bind(50i32)
        .execute(&mut *c)
        .await?;
    expect(
        done.rows_affected() == 1,
        format!("rows_affected {}", done.rows_affected()),
    )?;
    let (gone, by): (bool, Option<String>) =
        sqlx::query_as("select deleted_at is not null, deleted_by from items where id = 50")
            .fetch_one(&mut *c)
            .await?;
    expect(
        gone && by.as_deref() == Some(env("PGUSER").as_str()),
        format!("{gone} {by:?}"),
    )
}

async fn simple_query(c: &mut PgConnection) -> Res {
    // raw_sql always uses the simple query protocol (text results).
    let rows = sqlx::raw_sql("select 1 + 1, 'x'")
        .fetch_all(&mut *c)
        .await?;
    expect(rows.len() == 1, format!("{} rows", rows.len()))?;
    let (a, b): (i32, String) = (rows[0].try_get(0)?, rows[0].try_get(1)?);
    expect((a, b.as_str()) == (2, "x"), format!("{a} {b}"))
}

async fn prepared_query(c: &mut PgConnection) -> Res {
    // sqlx prepares each distinct query once per connection and reuses it.
    for i in 0..8i32 {
        let v: i32 = sqlx::query_scalar("select $1::int * 2")
            .bind(i)
            .fetch_one(&mut *c)
            .await?;
        expect(v == i * 2, format!("{v}"))?;
    }
    Ok(())
}

async fn transaction_rollback(c: &mut PgConnection) -> Res {
    let mut tx = c.begin().await?;
    let done = sqlx::query("insert into items (id, name) values (10, 'rolled back')")
        .execute(&mut *tx)
        .await?;
    expect(done.rows_affected() == 1, "insert count")?;
    tx.rollback().await?;
    expect(
        count(c, "select count(*) from items where id = 10").await? == 0,
        "insert survived",
    )
}

async fn error_in_transaction(c: &mut PgConnection) -> Res {
    let mut tx = c.begin().await?;
    sqlx::query("insert into items (id, name) values (11, 'doomed')")
        .execute(&mut *tx)
        .await?;
    let e = sqlx::query("select 1 / $1::int")
        .bind(0i32)
        .execute(&mut *tx)
        .await
        .err()
        .ok_or("no error")?;
    expect(code(&e) == "22012", code(&e))?;
    let e = sqlx::query("select 1")
        .execute(&mut *tx)
        .await
        .err()
        .ok_or("no error")?;
    expect(code(&e) == "25P02", code(&e))?;
    tx.rollback().await?;
    expect(
        count(c, "select count(*) from items where id = 11").await? == 0,
        "committed",
    )
}

async fn copy_in(c: &mut PgConnection) -> Res {
    let mut copy = c.copy_in_raw("copy items (id, name) from stdin").await?;
    copy.send(COPY_ROWS.as_bytes()).await?;
    let n = copy.finish().await?;
    expect(n == 3, format!("copied {n}"))
}

async fn copy_out(c: &mut PgConnection) -> Res {
    let chunks: Vec<bytes::Bytes> = c
        .copy_out_raw("copy (select id, name from items where id >= 100 order by id) to stdout")
        .await?
        .try_collect()
        .await?;
    let got = chunks.concat();
    expect(
        got == COPY_ROWS.as_bytes(),
        String::from_utf8_lossy(&got).into_owned(),
    )
}

async fn listen_notify(c: &mut PgConnection) -> Res {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen("compat_chan").await?;
    c.execute("notify compat_chan, 'hello from sqlx'").await?;
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .map_err(|_| "no notification within 5 s")??;
    expect(
        n.channel() == "compat_chan" && n.payload() == "hello from sqlx",
        format!("{} {}", n.channel(), n.payload()),
    )
}

async fn blocked_truncate(c: &mut PgConnection) -> Res {
    let e = sqlx::query("truncate items")
        .execute(&mut *c)
        .await
        .err()
        .ok_or("TRUNCATE was not blocked")?;
    expect(code(&e) == "42501", code(&e))?;
    expect(e.to_string().contains("pgward"), e.to_string())?;
    expect(
        count(c, "select count(*) from items").await? > 0,
        "items is empty",
    )
}

async fn rls_context(c: &mut PgConnection) -> Res {
    let user = env("PGUSER");
    let setting = "select current_setting('app.current_user_id')";
    let v: String = sqlx::query_scalar(setting).fetch_one(&mut *c).await?;
    expect(v == user, format!("context setting {v}"))?;
    let owners: Vec<String> = sqlx::query_scalar("select owner from notes")
        .fetch_all(&mut *c)
        .await?;
    expect(
        owners == [user.clone()],
        format!("RLS let through {owners:?}"),
    )?;
    let e = sqlx::query("set app.current_user_id = 'intruder'")
        .execute(&mut *c)
        .await
        .err()
        .ok_or("spoofing the context was not blocked")?;
    expect(code(&e) == "42501", code(&e))?;
    let v: String = sqlx::query_scalar(setting).fetch_one(&mut *c).await?;
    expect(v == user, format!("context changed to {v}"))
}
