//! Invariant 1 (transparency), seen from a real client: everything
//! `tokio-postgres` does against Postgres works the same through pgward —
//! simple and extended queries, prepared statements, pipelining, transactions,
//! COPY both ways, cancellation, LISTEN/NOTIFY, every password auth method,
//! TLS on both legs, connection limits and server-side session ends.
//!
//! Where a behaviour can be compared, the same scenario runs once directly
//! against the cluster and once through pgward, and the outcomes must be equal.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use pgward::config::{ClientTlsMode, Config, UpstreamTlsMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use common::{
    cluster, fresh_database, proxy_config, start_proxy, CLEAR_PW, CLEAR_USER, MD5_PW, MD5_USER,
    SCRAM_PW, SCRAM_USER, SUPERUSER_PW,
};

// ---------------------------------------------------------------------------
// helpers

/// Run `fut`, failing the test if it takes longer than `secs`.
async fn within<F: Future>(secs: u64, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {secs}s"))
}

/// Connection string for the cluster itself.
fn direct(user: &str, password: &str, db: &str) -> String {
    cluster().conn_str(user, password, db)
}

/// Connection string for a pgward instance.
fn via(addr: SocketAddr, user: &str, password: &str, db: &str) -> String {
    format!(
        "host={} port={} user={user} password={password} dbname={db}",
        addr.ip(),
        addr.port()
    )
}

async fn try_connect(conn_str: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = within(10, "connect", tokio_postgres::connect(conn_str, NoTls)).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn connect(conn_str: &str) -> Client {
    try_connect(conn_str)
        .await
        .unwrap_or_else(|e| panic!("connecting with {conn_str:?}: {e}"))
}

/// The SQLSTATE of an error, or a description when it carries none.
fn sqlstate(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(code) => code.code().to_string(),
        None => format!("no SQLSTATE: {e}"),
    }
}

/// A proxy with the default config pointing at the shared cluster.
async fn default_proxy() -> pgward::proxy::RunningProxy {
    start_proxy(proxy_config()).await
}

/// Rows of a simple-protocol response, as text, with command completions.
fn simple_transcript(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => {
                let cols: Vec<String> = (0..row.len())
                    .map(|i| match row.get(i) {
                        Some(v) => format!("{v:?}"),
                        None => "NULL".to_string(),
                    })
                    .collect();
                Some(format!("row {}", cols.join(" | ")))
            }
            SimpleQueryMessage::CommandComplete(n) => Some(format!("complete {n}")),
            SimpleQueryMessage::RowDescription(cols) => Some(format!(
                "columns {}",
                cols.iter().map(|c| c.name()).collect::<Vec<_>>().join(",")
            )),
            _ => None,
        })
        .collect()
}

/// A rustls client config trusting the harness CA.
fn rustls_client_config() -> rustls::ClientConfig {
    let h = cluster();
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(&h.ca_cert).expect("reading the test CA");
    for cert in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
        roots
            .add(cert.expect("CA PEM"))
            .expect("adding the test CA");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn try_connect_tls(conn_str: &str) -> Result<Client, tokio_postgres::Error> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_client_config());
    let (client, conn) = within(10, "TLS connect", tokio_postgres::connect(conn_str, tls)).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid()")
        .get(0)
}

/// FNV-1a over a byte stream, independent of how the stream is chunked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checksum {
    len: u64,
    sum: u64,
    fnv: u64,
}

impl Checksum {
    fn new() -> Self {
        Checksum {
            len: 0,
            sum: 0,
            fnv: 0xcbf2_9ce4_8422_2325,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        for &b in bytes {
            self.sum = self.sum.wrapping_add(b as u64);
            self.fnv ^= b as u64;
            self.fnv = self.fnv.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

// ---------------------------------------------------------------------------
// queries

const SETUP: &str = "
    CREATE TABLE items (
        id int4 PRIMARY KEY,
        name text,
        price float8,
        big int8,
        flag bool,
        raw bytea,
        tags int4[],
        created timestamptz
    );
    INSERT INTO items
    SELECT i,
           CASE WHEN i % 7 = 0 THEN NULL ELSE 'item ' || i || ' ''quoted'' é' END,
           i * 1.25,
           i::int8 * 10000000000,
           i % 2 = 0,
           decode(lpad(to_hex(i), 8, '0'), 'hex'),
           ARRAY[i, i + 1, NULL],
           timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
    FROM generate_series(1, 200) AS i;
";

/// The simple-protocol transcript of a multi-statement query string.
async fn simple_scenario(client: &Client) -> Vec<String> {
    let mut out = Vec::new();
    let messages = client
        .simple_query(
            "SELECT id, name, price, big, flag, raw, tags, created FROM items ORDER BY id;\
             SELECT count(*), sum(price), string_agg(name, ',' ORDER BY id) FROM items;\
             UPDATE items SET flag = NOT flag WHERE id <= 10;\
             SELECT 1 WHERE false;\
             SHOW standard_conforming_strings;",
        )
        .await
        .expect("simple query");
    out.extend(simple_transcript(&messages));
    match client.simple_query("SELECT * FROM no_such_table").await {
        Ok(_) => out.push("missing table accepted".into()),
        Err(e) => out.push(format!(
            "error {} {}",
            sqlstate(&e),
            e.as_db_error().map(|d| d.message()).unwrap_or_default()
        )),
    }
    out
}

type ItemRow = (
    i32,
    Option<String>,
    f64,
    i64,
    bool,
    Vec<u8>,
    Vec<Option<i32>>,
    String,
);

/// Typed extended-protocol results, with parameters of several types.
async fn extended_scenario(client: &Client) -> (Vec<String>, Vec<ItemRow>, Vec<String>) {
    let stmt = client
        .prepare(
            "SELECT id, name, price, big, flag, raw, tags, created::text \
             FROM items WHERE id > $1 AND (name LIKE $2 OR $2 IS NULL) AND flag = $3 \
             ORDER BY id",
        )
        .await
        .expect("prepare");
    let columns: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| format!("{} {}", c.name(), c.type_()))
        .chain(stmt.params().iter().map(|t| format!("param {t}")))
        .collect();
    let mut rows = Vec::new();
    for (min, pattern, flag) in [
        (0i32, Some("item 1%"), true),
        (50, None::<&str>, false),
        (1000, None, true),
    ] {
        for row in client
            .query(&stmt, &[&min, &pattern, &flag])
            .await
            .expect("extended query")
        {
            rows.push((
                row.get(0),
                row.get(1),
                row.get(2),
                row.get(3),
                row.get(4),
                row.get(5),
                row.get(6),
                row.get(7),
            ));
        }
    }
    let mut other = Vec::new();
    let n = client
        .execute(
            "UPDATE items SET price = price + $1 WHERE id % $2 = 0",
            &[&0.5f64, &3i32],
        )
        .await
        .expect("extended update");
    other.push(format!("updated {n}"));
    match client.query("SELECT id / $1 FROM items", &[&0i32]).await {
        Ok(_) => other.push("division by zero accepted".into()),
        Err(e) => other.push(format!("error {}", sqlstate(&e))),
    }
    match client.prepare("SELECT no_such_column FROM items").await {
        Ok(_) => other.push("unknown column accepted".into()),
        Err(e) => {
            let db = e.as_db_error().expect("server error");
            other.push(format!(
                "error {} {} at {:?}",
                db.code().code(),
                db.message(),
                db.position()
            ))
        }
    }
    let one: i32 = client
        .query_one("SELECT $1::int4 + 1", &[&41i32])
        .await
        .expect("query after errors")
        .get(0);
    other.push(format!("after errors {one}"));
    (columns, rows, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_query_results_equal_direct_postgres() {
    let direct_db = fresh_database("queries_direct");
    let proxied_db = fresh_database("queries_proxied");
    let proxy = default_proxy().await;
    let d = connect(&direct(SCRAM_USER, SCRAM_PW, &direct_db)).await;
    let p = connect(&via(proxy.addr(), SCRAM_USER, SCRAM_PW, &proxied_db)).await;
    d.batch_execute(SETUP).await.unwrap();
    p.batch_execute(SETUP).await.unwrap();

    let simple_direct = within(30, "simple direct", simple_scenario(&d)).await;
    let simple_proxied = within(30, "simple via pgward", simple_scenario(&p)).await;
    assert!(simple_direct.len() > 200, "{simple_direct:?}");
    assert_eq!(simple_proxied, simple_direct);

    let ext_direct = within(30, "extended direct", extended_scenario(&d)).await;
    let ext_proxied = within(30, "extended via pgward", extended_scenario(&p)).await;
    assert!(!ext_direct.1.is_empty());
    assert_eq!(
        ext_direct.2,
        vec![
            "updated 66".to_string(),
            "error 22012".to_string(),
            "error 42703 column \"no_such_column\" does not exist at Some(Original(8))".to_string(),
            "after errors 42".to_string(),
        ]
    );
    assert_eq!(ext_proxied, ext_direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_is_reused_1000_times() {
    let db = fresh_database("prepared_reuse");
    let proxy = default_proxy().await;
    let client = connect(&via(proxy.addr(), SCRAM_USER, SCRAM_PW, &db)).await;
    let stmt = client
        .prepare("SELECT $1::int4 * 2, 'n=' || $2::text")
        .await
        .unwrap();
    within(60, "1000 executions", async {
        for i in 0..1000i32 {
            let text = i.to_string();
            let row = client.query_one(&stmt, &[&i, &text]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), i * 2);
            assert_eq!(row.get::<_, String>(1), format!("n={i}"));
        }
    })
    .await;
    // Still one named statement on the server, not one per execution.
    let prepared: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'SELECT $1::int4%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 1);
}

/// Each outcome: the rows as text or the SQLSTATE.
async fn pipelined_batch(client: &Client) -> (Vec<Result<Vec<i64>, String>>, Vec<i64>) {
    client
        .batch_execute(
            "CREATE TEMP TABLE pipe (id int8);\
             CREATE TEMP TABLE zero AS SELECT 0::int8 AS x;",
        )
        .await
        .unwrap();
    let statements = [
        "INSERT INTO pipe VALUES (1) RETURNING id",
        "SELECT id FROM pipe",
        "SELECT 10 / x FROM zero",
        "INSERT INTO pipe VALUES (3) RETURNING id",
        "SELECT count(*) FROM pipe",
    ];
    let mut prepared = Vec::new();
    for s in statements {
        prepared.push(client.prepare(s).await.unwrap());
    }
    // All five Bind/Execute/Sync sequences go out before any answer is read.
    let outcomes = futures_util::future::join_all(prepared.iter().map(|s| client.query(s, &[])))
        .await
        .into_iter()
        .map(|r| match r {
            Ok(rows) => Ok(rows.iter().map(|row| row.get::<_, i64>(0)).collect()),
            Err(e) => Err(sqlstate(&e)),
        })
        .collect();
    let after = client
        .query("SELECT id FROM pipe ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (outcomes, after)
}

/// Unprepared queries: Parse/Describe/Sync of each is pipelined as well.
async fn unprepared_batch(client: &Client) -> Vec<Result<Vec<i64>, String>> {
    let queries = ["SELECT 1::int8", "SELECT (1/0)::int8", "SELECT 3::int8"];
    futures_util::future::join_all(queries.map(|q| client.query(q, &[])))
        .await
        .into_iter()
        .map(|r| match r {
            Ok(rows) => Ok(rows.iter().map(|row| row.get::<_, i64>(0)).collect()),
            Err(e) => Err(sqlstate(&e)),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batch_with_an_error_in_the_middle_matches_direct() {
    let db = fresh_database("pipeline");
    let proxy = default_proxy().await;
    let d = connect(&direct(SCRAM_USER, SCRAM_PW, &db)).await;
    let p = connect(&via(proxy.addr(), SCRAM_USER, SCRAM_PW, &db)).await;

    let direct_outcome = within(30, "pipeline direct", pipelined_batch(&d)).await;
    let proxied_outcome = within(30, "pipeline via pgward", pipelined_batch(&p)).await;
    assert_eq!(
        direct_outcome.0,
        vec![
            Ok(vec![1]),
            Ok(vec![1]),
            Err("22012".to_string()),
            Ok(vec![3]),
            Ok(vec![2]),
        ]
    );
    assert_eq!(proxied_outcome, direct_outcome);

    // Unprepared: Parse/Describe of every query is pipelined too.
    let direct_unprepared = within(30, "direct", unprepared_batch(&d)).await;
    let proxied_unprepared = within(30, "pgward", unprepared_batch(&p)).await;
    assert_eq!(
        direct_unprepared,
        vec![Ok(vec![1]), Err("22012".to_string()), Ok(vec![3])]
    );
    assert_eq!(proxied_unprepared, direct_unprepared);
}

// ---------------------------------------------------------------------------
// transactions

/// Commit, rollback, an error inside a transaction, a savepoint; returns a
/// transcript of every outcome.
async fn transaction_scenario(client: &mut Client, table: &str) -> Vec<String> {
    let mut out = Vec::new();
    client
        .batch_execute(&format!("CREATE TABLE {table} (id int4)"))
        .await
        .unwrap();
    let insert = format!("INSERT INTO {table} VALUES ($1)");

    let tx = client.transaction().await.unwrap();
    tx.execute(&insert, &[&1i32]).await.unwrap();
    out.push(format!(
        "commit: {:?}",
        tx.commit().await.map_err(|e| sqlstate(&e))
    ));

    let tx = client.transaction().await.unwrap();
    tx.execute(&insert, &[&2i32]).await.unwrap();
    out.push(format!(
        "rollback: {:?}",
        tx.rollback().await.map_err(|e| sqlstate(&e))
    ));

    // An error aborts the transaction: everything after it is refused with
    // 25P02 until it ends, and COMMIT then rolls back.
    let tx = client.transaction().await.unwrap();
    tx.execute(&insert, &[&3i32]).await.unwrap();
    let e = tx.execute("SELECT 1/0", &[]).await.unwrap_err();
    out.push(format!("error in tx: {}", sqlstate(&e)));
    let e = tx.execute("SELECT 1", &[]).await.unwrap_err();
    out.push(format!("next statement: {}", sqlstate(&e)));
    let e = tx.execute(&insert, &[&33i32]).await.unwrap_err();
    out.push(format!("next insert: {}", sqlstate(&e)));
    out.push(format!(
        "commit aborted: {:?}",
        tx.commit().await.map_err(|e| sqlstate(&e))
    ));

    // The same in the simple protocol.
    let e = client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {table} VALUES (4); SELECT 1/0;"
        ))
        .await
        .unwrap_err();
    out.push(format!("simple error in tx: {}", sqlstate(&e)));
    let e = client.simple_query("SELECT 1").await.unwrap_err();
    out.push(format!("simple next statement: {}", sqlstate(&e)));
    let end = client.simple_query("COMMIT").await.unwrap();
    out.push(format!(
        "simple commit: {}",
        simple_transcript(&end).join(";")
    ));

    // A savepoint confines an error.
    let mut tx = client.transaction().await.unwrap();
    tx.execute(&insert, &[&5i32]).await.unwrap();
    {
        let sp = tx.savepoint("sp").await.unwrap();
        sp.execute(&insert, &[&6i32]).await.unwrap();
        let e = sp.execute("SELECT 1/0", &[]).await.unwrap_err();
        out.push(format!("error in savepoint: {}", sqlstate(&e)));
        sp.rollback().await.unwrap();
    }
    tx.execute(&insert, &[&7i32]).await.unwrap();
    tx.commit().await.unwrap();

    let ids: Vec<i32> = client
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.push(format!("rows: {ids:?}"));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_roll_back_and_abort_exactly_as_direct() {
    let db = fresh_database("transactions");
    let proxy = default_proxy().await;
    let mut d = connect(&direct(SCRAM_USER, SCRAM_PW, &db)).await;
    let mut p = connect(&via(proxy.addr(), SCRAM_USER, SCRAM_PW, &db)).await;

    let direct_transcript = within(30, "direct", transaction_scenario(&mut d, "tx_direct")).await;
    let proxied_transcript =
        within(30, "via pgward", transaction_scenario(&mut p, "tx_proxied")).await;
    assert_eq!(
        direct_transcript,
        vec![
            "commit: Ok(())",
            "rollback: Ok(())",
            "error in tx: 22012",
            "next statement: 25P02",
            "next insert: 25P02",
            "commit aborted: Ok(())",
            "simple error in tx: 22012",
            "simple next statement: 25P02",
            "simple commit: complete 0",
            "error in savepoint: 22012",
            "rows: [1, 5, 7]",
        ]
    );
    assert_eq!(proxied_transcript, direct_transcript);

    // What pgward's client committed is durable for everyone else.
    let seen: Vec<i32> = d
        .query("SELECT id FROM tx_proxied ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![1, 5, 7]);
}

// ---------------------------------------------------------------------------
// COPY

const COPY_ROWS: u64 = 1_000_000;
const COPY_CHUNK_ROWS: u64 = 10_000;

/// The text-format COPY input, in chunks.
fn copy_input() -> impl Iterator<Item = Bytes> {
    (0..COPY_ROWS / COPY_CHUNK_ROWS).map(|chunk| {
        let mut s = String::with_capacity(COPY_CHUNK_ROWS as usize * 24);
        for i in chunk * COPY_CHUNK_ROWS + 1..=(chunk + 1) * COPY_CHUNK_ROWS {
            s.push_str(&i.to_string());
            s.push_str("\trow ");
            s.push_str(&(i * 7 % 1000).to_string());
            s.push('\n');
        }
        Bytes::from(s)
    })
}

async fn copy_in_all(client: &Client, table: &str) -> u64 {
    client
        .batch_execute(&format!("CREATE TABLE {table} (id int8, payload text)"))
        .await
        .unwrap();
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {table} (id, payload) FROM STDIN"))
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in copy_input() {
        sink.send(chunk).await.unwrap();
    }
    sink.finish().await.unwrap()
}

async fn copy_out_checksum(client: &Client, table: &str) -> Checksum {
    let stream = client
        .copy_out(&format!(
            "COPY (SELECT id, payload FROM {table} ORDER BY id) TO STDOUT"
        ))
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut sum = Checksum::new();
    while let Some(chunk) = stream.next().await {
        sum.update(&chunk.unwrap());
    }
    sum
}

async fn server_side_digest(client: &Client, table: &str) -> (i64, i64, String) {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), sum(id)::int8, \
                 md5(string_agg(id || E'\\t' || payload, E'\\n' ORDER BY id)) FROM {table}"
            ),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// A COPY IN with a malformed row: the SQLSTATE, then a query on the same session.
async fn bad_copy(client: &Client) -> (String, i32) {
    let sink = client
        .copy_in::<_, Bytes>("COPY copy_direct (id, payload) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\tok\nnot-a-number\tbad\n"))
        .await
        .unwrap();
    let e = sink.finish().await.unwrap_err();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    (sqlstate(&e), one)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_of_a_million_rows_is_byte_identical() {
    let db = fresh_database("copy");
    let proxy = default_proxy().await;
    let d = connect(&direct(SCRAM_USER, SCRAM_PW, &db)).await;
    let p = connect(&via(proxy.addr(), SCRAM_USER, SCRAM_PW, &db)).await;

    let mut expected = Checksum::new();
    for chunk in copy_input() {
        expected.update(&chunk);
    }

    let loaded_direct = within(180, "COPY IN direct", copy_in_all(&d, "copy_direct")).await;
    let loaded_proxied = within(180, "COPY IN via pgward", copy_in_all(&p, "copy_proxied")).await;
    assert_eq!(loaded_direct, COPY_ROWS);
    assert_eq!(loaded_proxied, COPY_ROWS);

    let digest_direct = server_side_digest(&d, "copy_direct").await;
    let digest_proxied = server_side_digest(&d, "copy_proxied").await;
    assert_eq!(digest_direct.0, COPY_ROWS as i64);
    assert_eq!(
        digest_direct.1,
        (COPY_ROWS * (COPY_ROWS + 1) / 2) as i64,
        "sum(id)"
    );
    assert_eq!(digest_proxied, digest_direct);

    let out_direct = within(180, "COPY OUT direct", copy_out_checksum(&d, "copy_direct")).await;
    let out_proxied = within(
        180,
        "COPY OUT via pgward",
        copy_out_checksum(&p, "copy_proxied"),
    )
    .await;
    assert_eq!(out_direct, expected);
    assert_eq!(out_proxied, expected);

    // A failing COPY reports the server's error and leaves the session usable.
    let direct_error = within(30, "bad COPY direct", bad_copy(&d)).await;
    let proxied_error = within(30, "bad COPY via pgward", bad_copy(&p)).await;
    assert_eq!(direct_error, ("22P02".to_string(), 1));
    assert_eq!(proxied_error, direct_error);
}

// ---------------------------------------------------------------------------
// cancellation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_through_pgward_cancels_the_running_query() {
    let db = fresh_database("cancel");
    let proxy = default_proxy().await;
    let client = connect(&via(proxy.addr(), SCRAM_USER, SCRAM_PW, &db)).await;
    let observer = connect(&direct("postgres", SUPERUSER_PW, &db)).await;
    let pid = backend_pid(&client).await;
    // The cancel token names the address the client connected to: pgward.
    let token = client.cancel_token();

    let started = std::time::Instant::now();
    let query = client.simple_query("SELECT pg_sleep(60)");
    let cancel = async {
        within(10, "query to start", async {
            loop {
                let active: bool = observer
                    .query_one(
                        "SELECT count(*) > 0 FROM pg_stat_activity \
                         WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
                        &[&pid],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if active {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        token
            .cancel_query(NoTls)
            .await
            .expect("cancel request sent");
    };
    let (result, ()) = within(10, "cancelled query", async { tokio::join!(query, cancel) }).await;
    let e = result.expect_err("pg_sleep(60) was not cancelled");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // The session survives the cancellation.
    let row = client.query_one("SELECT 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
}

// ---------------------------------------------------------------------------
// LISTEN / NOTIFY

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_an_idle_listener() {
    let db = fresh_database("notify");
    let proxy = default_proxy().await;
    let (listener, mut connection) = within(
        10,
        "listener connect",
        tokio_postgres::connect(&via(proxy.addr(), SCRAM_USER, SCRAM_PW, &db), NoTls),
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        futures_util::pin_mut!(messages);
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(e) => panic!("listener connection failed: {e}"),
            }
        }
    });
    listener.batch_execute("LISTEN chan").await.unwrap();

    let notifier = connect(&via(proxy.addr(), SCRAM_USER, SCRAM_PW, &db)).await;
    let notifier_pid = backend_pid(&notifier).await;
    notifier
        .batch_execute("NOTIFY chan, 'payload'")
        .await
        .unwrap();
    // The listener sends nothing: the notification must be pushed to it.
    let n = within(5, "notification", rx.recv())
        .await
        .expect("listener alive");
    assert_eq!(n.channel(), "chan");
    assert_eq!(n.payload(), "payload");
    assert_eq!(n.process_id(), notifier_pid);

    // Inside a transaction, delivery waits for the commit.
    notifier
        .batch_execute("BEGIN; SELECT pg_notify('chan', 'after commit')")
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "notification delivered before COMMIT"
    );
    notifier.batch_execute("COMMIT").await.unwrap();
    let n = within(5, "notification after commit", rx.recv())
        .await
        .expect("listener alive");
    assert_eq!(n.payload(), "after commit");
    drop(listener);
}

// ---------------------------------------------------------------------------
// authentication

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_password_method_authenticates_through_pgward() {
    let db = fresh_database("auth");
    let proxy = default_proxy().await;
    for (user, password) in [
        (SCRAM_USER, SCRAM_PW),
        (MD5_USER, MD5_PW),
        (CLEAR_USER, CLEAR_PW),
    ] {
        let client = try_connect(&via(proxy.addr(), user, password, &db))
            .await
            .unwrap_or_else(|e| panic!("{user} through pgward: {e}"));
        let me: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(me, user);

        // A wrong password is the server's verdict, relayed unchanged.
        let proxied = match try_connect(&via(proxy.addr(), user, "wrong", &db)).await {
            Ok(_) => panic!("{user}: wrong password accepted through pgward"),
            Err(e) => e,
        };
        let direct_err = match try_connect(&direct(user, "wrong", &db)).await {
            Ok(_) => panic!("{user}: wrong password accepted directly"),
            Err(e) => e,
        };
        assert_eq!(
            proxied.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{user}: {proxied}"
        );
        let (p, d) = (
            proxied.as_db_error().unwrap(),
            direct_err.as_db_error().unwrap(),
        );
        assert_eq!(
            (p.severity(), p.message()),
            (d.severity(), d.message()),
            "{user}"
        );
    }
}

// ---------------------------------------------------------------------------
// TLS

fn client_tls_config() -> Config {
    let h = cluster();
    let mut cfg = proxy_config();
    cfg.client_tls.mode = ClientTlsMode::Require;
    cfg.client_tls.cert_file = Some(h.server_cert.clone());
    cfg.client_tls.key_file = Some(h.server_key.clone());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_is_required_and_verifiable() {
    let db = fresh_database("client_tls");
    let proxy = start_proxy(client_tls_config()).await;
    let port = proxy.addr().port();

    // sslmode=require (rustls still checks the certificate, here for 127.0.0.1).
    let client = try_connect_tls(&format!(
        "host=127.0.0.1 port={port} user={SCRAM_USER} password={SCRAM_PW} dbname={db} sslmode=require"
    ))
    .await
    .expect("sslmode=require through pgward");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    // verify-full: the certificate is checked against the name "localhost".
    for (user, password) in [
        (SCRAM_USER, SCRAM_PW),
        (MD5_USER, MD5_PW),
        (CLEAR_USER, CLEAR_PW),
    ] {
        let client = try_connect_tls(&format!(
            "host=localhost hostaddr=127.0.0.1 port={port} user={user} password={password} \
             dbname={db} sslmode=require"
        ))
        .await
        .unwrap_or_else(|e| panic!("{user} with verify-full through pgward: {e}"));
        let me: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(me, user);
    }
    // ... and a name the certificate does not carry is refused by the client.
    assert!(
        try_connect_tls(&format!(
            "host=wrong.example hostaddr=127.0.0.1 port={port} user={SCRAM_USER} \
             password={SCRAM_PW} dbname={db} sslmode=require"
        ))
        .await
        .is_err(),
        "certificate accepted for a name it does not carry"
    );

    // A plaintext client is refused with 28000.
    let e = match try_connect(&format!(
        "host=127.0.0.1 port={port} user={SCRAM_USER} password={SCRAM_PW} dbname={db} sslmode=disable"
    ))
    .await
    {
        Ok(_) => panic!("plaintext client accepted by a TLS-only pgward"),
        Err(e) => e,
    };
    assert_eq!(
        e.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{e}"
    );
}

/// Open TLS to `port`, send a StartupMessage for the SCRAM user and return
/// the mechanisms of the server's AuthenticationSASL.
async fn sasl_mechanisms(port: u16, db: &str) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // SSLRequest
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S', "SSLRequest refused");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(rustls_client_config()));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();

    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (key, value) in [("user", SCRAM_USER), ("database", db)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    tls.write_all(&startup).await.unwrap();
    tls.flush().await.unwrap();

    let mut header = [0u8; 5];
    tls.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], b'R', "expected an Authentication message");
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4;
    let mut rest = vec![0u8; len];
    tls.read_exact(&mut rest).await.unwrap();
    assert_eq!(
        rest[..4],
        10u32.to_be_bytes(),
        "expected AuthenticationSASL"
    );
    rest[4..]
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_is_withheld_and_preferred_binding_falls_back() {
    let db = fresh_database("channel_binding");
    let proxy = start_proxy(client_tls_config()).await;
    let port = proxy.addr().port();

    // Postgres over TLS offers SCRAM-SHA-256-PLUS. pgward terminates TLS, so
    // it cannot bind the client's channel to the server's: it withholds PLUS.
    let direct_mechanisms =
        within(10, "direct SASL", sasl_mechanisms(cluster().pg.port, &db)).await;
    assert!(
        direct_mechanisms.contains(&"SCRAM-SHA-256-PLUS".to_string()),
        "{direct_mechanisms:?}"
    );
    let proxied_mechanisms = within(10, "pgward SASL", sasl_mechanisms(port, &db)).await;
    assert_eq!(proxied_mechanisms, vec!["SCRAM-SHA-256".to_string()]);

    let via_tls = |binding: &str| {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={port} user={SCRAM_USER} password={SCRAM_PW} \
             dbname={db} sslmode=require channel_binding={binding}"
        )
    };
    // A client that insists on binding fails ...
    assert!(
        try_connect_tls(&via_tls("require")).await.is_err(),
        "channel_binding=require succeeded through a TLS-terminating proxy"
    );
    // ... while one that merely prefers it (the libpq and tokio-postgres
    // default) falls back to plain SCRAM, which the plaintext upstream accepts.
    for binding in ["prefer", "disable"] {
        let client = try_connect_tls(&via_tls(binding))
            .await
            .unwrap_or_else(|e| panic!("channel_binding={binding}: {e}"));
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
}

/// Run `psql -c 'SELECT 1'` with a libpq connection string: Ok(stdout) or Err(stderr).
async fn psql_select_one(conn_str: &str) -> Result<String, String> {
    let out = within(
        20,
        "psql",
        tokio::process::Command::new(common::pg_bin("psql"))
            .arg(conn_str)
            .args(["-XAtc", "SELECT 1"])
            .env("PGCONNECT_TIMEOUT", "10")
            .output(),
    )
    .await
    .expect("running psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// libpq really implements channel binding: with `channel_binding=prefer` (its
/// default) and no PLUS offered, it sends the gs2 header "y" ("I could bind,
/// the server cannot"). A plaintext upstream accepts that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_default_channel_binding_works_with_client_tls() {
    let db = fresh_database("libpq_tls");
    let proxy = start_proxy(client_tls_config()).await;
    let ca = cluster().ca_cert.display().to_string();
    let conn = |binding: &str| {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PW} \
             dbname={db} sslmode=verify-full sslrootcert={ca} channel_binding={binding}",
            proxy.addr().port()
        )
    };
    assert_eq!(psql_select_one(&conn("prefer")).await, Ok("1".to_string()));
    let refused = psql_select_one(&conn("require"))
        .await
        .expect_err("channel_binding=require succeeded through pgward");
    assert!(refused.contains("channel binding"), "{refused}");
}

fn upstream_tls_config(server_name: &str) -> Config {
    let h = cluster();
    let mut cfg = proxy_config();
    cfg.upstream.tls.mode = UpstreamTlsMode::VerifyFull;
    cfg.upstream.tls.ca_file = Some(h.ca_cert.clone());
    // The cluster listens on 127.0.0.1 only; the certificate names localhost.
    cfg.upstream.tls.server_name = Some(server_name.to_string());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verify_full_encrypts_and_checks_the_server_name() {
    let db = fresh_database("upstream_tls");
    let proxy = start_proxy(upstream_tls_config("localhost")).await;
    for (user, password) in [
        (SCRAM_USER, SCRAM_PW),
        (MD5_USER, MD5_PW),
        (CLEAR_USER, CLEAR_PW),
    ] {
        let client = try_connect(&via(proxy.addr(), user, password, &db))
            .await
            .unwrap_or_else(|e| panic!("{user} through pgward with upstream TLS: {e}"));
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "{user}: upstream connection is not encrypted");
    }

    let wrong = start_proxy(upstream_tls_config("wrong.example")).await;
    let e = match try_connect(&via(wrong.addr(), SCRAM_USER, SCRAM_PW, &db)).await {
        Ok(_) => panic!("verify-full accepted a certificate for another name"),
        Err(e) => e,
    };
    assert_eq!(e.code(), Some(&SqlState::CONNECTION_FAILURE), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_legs_with_default_channel_binding_works() {
    let db = fresh_database("tls_both");
    let mut cfg = upstream_tls_config("localhost");
    let tls = client_tls_config().client_tls;
    cfg.client_tls = tls;
    let proxy = start_proxy(cfg).await;
    // channel_binding=prefer is the default of libpq and tokio-postgres.
    // (tokio-postgres-rustls 0.13 cannot compute tls-server-end-point, so this
    // client sends the gs2 header "n"; see the libpq test for "y".)
    let client = try_connect_tls(&format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PW} \
         dbname={db} sslmode=require channel_binding=prefer",
        proxy.addr().port()
    ))
    .await
    .expect("TLS client, TLS upstream, SCRAM with channel_binding=prefer");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}

/// The same libpq client when pgward also speaks TLS upstream: Postgres then
/// supports binding itself and refuses libpq's "y" header as a downgrade.
/// The header is covered by the client's SCRAM proof, so a passthrough proxy
/// cannot rewrite it: with TLS on both legs, libpq clients must say
/// `channel_binding=disable` (documented limitation, README and closing
/// notes). This pins both halves: the default fails with the server's own
/// clear error, `disable` works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_legs_needs_channel_binding_disable_for_libpq() {
    let db = fresh_database("libpq_tls_both");
    let mut cfg = upstream_tls_config("localhost");
    cfg.client_tls = client_tls_config().client_tls;
    let proxy = start_proxy(cfg).await;
    let ca = cluster().ca_cert.display().to_string();
    let conn = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PW} \
         dbname={db} sslmode=verify-full sslrootcert={ca}",
        proxy.addr().port()
    );
    let err = psql_select_one(&conn).await.unwrap_err();
    assert!(err.contains("channel binding"), "{err}");
    let disabled = format!("{conn} channel_binding=disable");
    assert_eq!(psql_select_one(&disabled).await, Ok("1".to_string()));
}

// ---------------------------------------------------------------------------
// connection limits and session ends

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_the_limit_get_too_many_connections() {
    let db = fresh_database("limits");
    let mut cfg = proxy_config();
    cfg.limits.max_client_connections = 2;
    let proxy = start_proxy(cfg).await;
    let url = via(proxy.addr(), SCRAM_USER, SCRAM_PW, &db);

    let first = connect(&url).await;
    let second = connect(&url).await;
    let e = match try_connect(&url).await {
        Ok(_) => panic!("a third client was admitted with max_client_connections = 2"),
        Err(e) => e,
    };
    assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e}");
    // The two admitted sessions are unaffected.
    second.query_one("SELECT 1", &[]).await.unwrap();

    // Once a client leaves, its slot is free again (the release follows the
    // client's Terminate asynchronously, so allow it a moment).
    drop(first);
    let third = within(5, "a free slot", async {
        loop {
            match try_connect(&url).await {
                Ok(c) => break c,
                Err(e) if e.code() == Some(&SqlState::TOO_MANY_CONNECTIONS) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
    })
    .await;
    let one: i32 = third.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_ends_the_client_session_with_an_error() {
    let db = fresh_database("terminate");
    let proxy = default_proxy().await;
    let admin = connect(&direct("postgres", SUPERUSER_PW, &db)).await;
    let url = via(proxy.addr(), SCRAM_USER, SCRAM_PW, &db);
    let terminate = |pid: i32| {
        let admin = &admin;
        async move {
            let done: bool = admin
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap()
                .get(0);
            assert!(done, "pg_terminate_backend({pid})");
        }
    };

    // An idle session: the client's connection ends with an error and the
    // next query fails instead of hanging. The error is usually the server's
    // FATAL 57P01; directly against Postgres too, about one time in five the
    // FATAL is lost to the close (EOF or reset), so either is accepted.
    let (client, conn) = within(10, "connect", tokio_postgres::connect(&url, NoTls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    terminate(backend_pid(&client).await).await;
    let ended = within(5, "connection end", conn).await.unwrap();
    let e = ended.expect_err("connection ended without an error");
    assert!(
        e.code() == Some(&SqlState::ADMIN_SHUTDOWN) || e.code().is_none(),
        "unexpected error: {e:?}"
    );
    let e = within(
        5,
        "query on a terminated session",
        client.query("SELECT 1", &[]),
    )
    .await
    .expect_err("query succeeded on a terminated session");
    assert!(e.is_closed(), "{e}");

    // A session in the middle of a query gets 57P01 as the query's error.
    let client = connect(&url).await;
    let pid = backend_pid(&client).await;
    let query = client.simple_query("SELECT pg_sleep(60)");
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        terminate(pid).await;
    };
    let (result, ()) = within(10, "terminated query", async { tokio::join!(query, kill) }).await;
    let e = result.expect_err("query survived pg_terminate_backend");
    assert!(
        e.code() == Some(&SqlState::ADMIN_SHUTDOWN) || e.code().is_none(),
        "unexpected error: {e:?}"
    );
}
