//! Byte parity (DESIGN.md invariant 1): the same scripted frontend message
//! sequences sent to pgward and directly to PostgreSQL produce the same
//! backend messages, byte for byte, apart from values that differ by nature
//! (the BackendKeyData key, and a NOTIFY sender's process id).

mod common;
mod rawpg;

use std::net::SocketAddr;
use std::time::Duration;

use common::{cluster, fresh_database, proxy_config, start_proxy, CLEAR_PW, CLEAR_USER};
use rawpg::*;

/// One step of a script.
enum Step {
    Send(Vec<u8>),
    /// Read until ReadyForQuery.
    Ready,
    /// Read exactly this many messages, each within [`PROMPT`]: proves the
    /// reply was forwarded without waiting for a later message.
    Read(usize),
    /// Read until the server closes the connection.
    Closed,
}
use Step::*;

/// How fast a reply that needs no further client input must arrive.
const PROMPT: Duration = Duration::from_secs(2);

/// Run `script` on an authenticated connection; returns the normalised
/// startup transcript and the normalised replies.
async fn run(addr: SocketAddr, db: &str, script: &[Step]) -> (Vec<Msg>, Vec<Msg>) {
    let (mut conn, startup) = Raw::connect(addr, CLEAR_USER, CLEAR_PW, db).await;
    let mut out = Vec::new();
    for step in script {
        match step {
            Send(bytes) => conn.send(bytes).await,
            Ready => out.extend(conn.until_ready().await),
            Read(n) => {
                for i in 0..*n {
                    match conn.read_msg_within(PROMPT).await {
                        Ok(m) => out.push(m),
                        Err(e) => panic!(
                            "{addr}: message {} of {n} not received promptly ({e:?}); got:\n{}",
                            i + 1,
                            show(&out)
                        ),
                    }
                }
            }
            Closed => {
                out.extend(conn.until_closed(READ_TIMEOUT).await);
                out.push((b'!', b"closed".to_vec()));
            }
        }
    }
    (normalise(startup), normalise(out))
}

/// Blank the values that legitimately differ between two connections.
fn normalise(msgs: Vec<Msg>) -> Vec<Msg> {
    msgs.into_iter()
        .map(|(tag, body)| match tag {
            b'K' => (tag, b"<backend key>".to_vec()),
            _ => (tag, body),
        })
        .collect()
}

struct Env {
    direct: SocketAddr,
    proxy: SocketAddr,
    db: String,
    _proxy: pgward::proxy::RunningProxy,
}

/// `monitor`: policy in monitor mode, for scripts that use statements the
/// default rules block (DROP, FunctionCall); otherwise the default policy,
/// which must not change anything these scripts do.
async fn env(prefix: &str, monitor: bool) -> Env {
    let h = cluster();
    let db = fresh_database(prefix);
    h.pg.psql(
        &db,
        "CREATE TABLE items (id int PRIMARY KEY, name text);\n\
         INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, NULL);\n\
         GRANT ALL ON items TO PUBLIC;",
    )
    .unwrap();
    let mut cfg = proxy_config();
    if monitor {
        cfg.policy.mode = pgward::policy::Mode::Monitor;
    }
    let proxy = start_proxy(cfg).await;
    Env {
        direct: format!("127.0.0.1:{}", h.pg.port).parse().unwrap(),
        proxy: proxy.addrs[0],
        db,
        _proxy: proxy,
    }
}

/// Run every script directly and through pgward and compare.
async fn assert_parity(env: &Env, scripts: &[(&str, Vec<Step>)]) {
    for (name, script) in scripts {
        let (direct_startup, direct) = run(env.direct, &env.db, script).await;
        let (proxy_startup, proxied) = run(env.proxy, &env.db, script).await;
        assert_eq!(
            proxy_startup,
            direct_startup,
            "{name}: startup differs\n-- pgward:\n{}\n-- direct:\n{}",
            show(&proxy_startup),
            show(&direct_startup)
        );
        assert!(!direct.is_empty(), "{name}: empty transcript");
        assert_eq!(
            proxied,
            direct,
            "{name}: replies differ\n-- pgward:\n{}\n-- direct:\n{}",
            show(&proxied),
            show(&direct)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_protocol() {
    let env = env("parity_simple", true).await;
    assert_parity(
        &env,
        &[
            (
                "simple query",
                vec![
                    Send(query(
                        "SELECT 1 AS one, 'x'::text AS two, NULL::int AS three",
                    )),
                    Ready,
                    Send(query("SELECT * FROM items ORDER BY id")),
                    Ready,
                ],
            ),
            (
                "multi-statement query",
                vec![
                    Send(query(
                        "SELECT 1; SELECT * FROM items ORDER BY id; \
                         CREATE TEMP TABLE tt (i int); INSERT INTO tt VALUES (1), (2); \
                         DROP TABLE IF EXISTS no_such_table; SET application_name = 'parity'; \
                         UPDATE tt SET i = i + 1; DELETE FROM tt",
                    )),
                    Ready,
                    Send(query("SELECT 1; SELECT 1/0; SELECT 2")),
                    Ready,
                    Send(query("BEGIN; SELECT 1")),
                    Ready,
                    Send(query("SELECT no_such_column")),
                    Ready,
                    Send(query("ROLLBACK")),
                    Ready,
                ],
            ),
            (
                "empty query",
                vec![
                    Send(query("")),
                    Ready,
                    Send(query(";")),
                    Ready,
                    Send(query("  -- only a comment")),
                    Ready,
                ],
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_query_protocol() {
    let env = env("parity_extended", false).await;
    let stmt = "SELECT id, name FROM items WHERE id > $1 ORDER BY id";
    assert_parity(
        &env,
        &[
            (
                "parse/bind/describe/execute/sync",
                vec![
                    Send(cat(&[
                        parse("s1", stmt, &[23]),
                        describe(b'S', "s1"),
                        bind("", "s1", &[Some("1")]),
                        describe(b'P', ""),
                        execute("", 0),
                        sync(),
                    ])),
                    Ready,
                    // A portal executed in pieces: PortalSuspended, then the rest.
                    Send(cat(&[
                        bind("p", "s1", &[Some("0")]),
                        execute("p", 1),
                        execute("p", 0),
                        close(b'P', "p"),
                        close(b'S', "s1"),
                        sync(),
                    ])),
                    Ready,
                    // Unnamed statement, NULL parameter, inferred type.
                    Send(cat(&[
                        parse("", "SELECT $1::text IS NULL", &[]),
                        bind("", "", &[None]),
                        execute("", 0),
                        sync(),
                    ])),
                    Ready,
                ],
            ),
            (
                "parse then flush",
                vec![
                    Send(cat(&[parse("s2", "SELECT 42", &[]), flush()])),
                    Read(1), // ParseComplete before any Sync
                    Send(cat(&[
                        bind("", "s2", &[]),
                        describe(b'P', ""),
                        execute("", 0),
                        flush(),
                    ])),
                    Read(4), // BindComplete, RowDescription, DataRow, CommandComplete
                    Send(sync()),
                    Ready,
                ],
            ),
            (
                "parse then query",
                vec![
                    Send(cat(&[parse("", "SELECT 1", &[]), query("SELECT 2")])),
                    Ready,
                ],
            ),
            (
                "bind without parse",
                vec![
                    Send(cat(&[
                        bind("", "nope", &[]),
                        describe(b'P', ""),
                        execute("", 0),
                        sync(),
                    ])),
                    Ready,
                    Send(query("SELECT 1")),
                    Ready,
                ],
            ),
            (
                "error mid-pipeline",
                vec![
                    Send(cat(&[
                        parse("", "SELECT 1", &[]),
                        bind("", "", &[]),
                        execute("", 0),
                        parse("", "SELECT 1/0", &[]),
                        bind("", "", &[]),
                        execute("", 0),
                        parse("", "SELECT 3", &[]),
                        bind("", "", &[]),
                        execute("", 0),
                        sync(),
                    ])),
                    Ready,
                    // Same inside a transaction: status byte goes to 'E'.
                    Send(query("BEGIN")),
                    Ready,
                    Send(cat(&[
                        parse("a", "INSERT INTO items VALUES (10, 'ten')", &[]),
                        bind("", "a", &[]),
                        execute("", 0),
                        parse("b", "INSERT INTO items VALUES (1, 'dup')", &[]),
                        bind("", "b", &[]),
                        execute("", 0),
                        parse("c", "SELECT 3", &[]),
                        bind("", "c", &[]),
                        execute("", 0),
                        sync(),
                    ])),
                    Ready,
                    Send(query("SELECT 1")),
                    Ready,
                    Send(query("ROLLBACK")),
                    Ready,
                ],
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let env = env("parity_copy", false).await;
    assert_parity(
        &env,
        &[
            (
                "copy from stdin",
                vec![
                    Send(query("CREATE TEMP TABLE c (i int, t text)")),
                    Ready,
                    Send(query("COPY c FROM STDIN")),
                    Read(1), // CopyInResponse
                    Send(cat(&[
                        copy_data(b"1\tone\n"),
                        copy_data(b"2\ttwo\n3\tthr"),
                        copy_data(b"ee\n4\t\\N\n"),
                        copy_done(),
                    ])),
                    Ready,
                    // Not a SELECT: the temp table's OID (in RowDescription)
                    // differs between connections by nature.
                    Send(query("COPY (SELECT * FROM c ORDER BY i) TO STDOUT")),
                    Ready,
                ],
            ),
            (
                "copy from stdin with CopyFail",
                vec![
                    Send(query("CREATE TEMP TABLE c (i int, t text)")),
                    Ready,
                    Send(query("COPY c (i, t) FROM STDIN (FORMAT csv)")),
                    Read(1),
                    Send(cat(&[copy_data(b"9,nine\n"), copy_fail("client gave up")])),
                    Ready,
                    Send(query("SELECT count(*) FROM c")),
                    Ready,
                ],
            ),
            (
                "copy from stdin with bad data",
                vec![
                    Send(query("CREATE TEMP TABLE c (i int, t text)")),
                    Ready,
                    Send(query("COPY c FROM STDIN")),
                    Read(1),
                    Send(cat(&[copy_data(b"x\ty\n"), copy_done()])),
                    Ready,
                ],
            ),
            (
                "copy to stdout",
                vec![
                    Send(query("COPY (SELECT * FROM items ORDER BY id) TO STDOUT")),
                    Ready,
                    Send(query(
                        "COPY (SELECT * FROM items ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
                    )),
                    Ready,
                    Send(query(
                        "COPY (SELECT g, repeat('y', 100) FROM generate_series(1, 2000) g) \
                         TO STDOUT (FORMAT binary)",
                    )),
                    Ready,
                ],
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_and_terminate() {
    let env = env("parity_fcall", true).await;
    let (mut c, _) = Raw::connect(env.proxy, CLEAR_USER, CLEAR_PW, &env.db).await;
    let reply = c
        .simple("SELECT 'pg_catalog.abs(int4)'::regprocedure::oid")
        .await;
    let oid: u32 = data_rows(&reply)[0][0].as_ref().unwrap().parse().unwrap();
    assert_parity(
        &env,
        &[
            (
                "function call",
                vec![
                    Send(function_call(oid, &["-5"])),
                    Ready,
                    Send(function_call(oid, &["2147483647"])),
                    Ready,
                    Send(function_call(0, &[])),
                    Ready,
                    Send(query("SELECT 1")),
                    Ready,
                ],
            ),
            (
                "terminate",
                vec![Send(query("SELECT 1")), Ready, Send(terminate()), Closed],
            ),
        ],
    )
    .await;
    // The FunctionCall really returned 5.
    c.send(&function_call(oid, &["-5"])).await;
    let reply = c.until_ready().await;
    let v = reply
        .iter()
        .find(|(t, _)| *t == b'V')
        .expect("FunctionCallResponse");
    assert_eq!(&v.1[..], &[0, 0, 0, 1, b'5'][..]);
}

/// LISTEN on one connection, NOTIFY from another: the NotificationResponse
/// reaches the idle listener without it sending anything.
async fn notify_transcript(addr: SocketAddr, db: &str) -> Vec<Msg> {
    let (mut listener, _) = Raw::connect(addr, CLEAR_USER, CLEAR_PW, db).await;
    let (mut notifier, startup) = Raw::connect(addr, CLEAR_USER, CLEAR_PW, db).await;
    let notifier_pid = backend_pid(&startup).unwrap();
    let mut out = listener.simple("LISTEN parity_channel").await;
    out.extend(notifier.simple("NOTIFY parity_channel, 'hello'").await);
    out.extend(
        notifier
            .simple("SELECT pg_notify('parity_channel', 'second'), pg_notify('other', 'x')")
            .await,
    );
    for _ in 0..2 {
        let (tag, mut body) = listener
            .read_msg_within(PROMPT)
            .await
            .expect("NotificationResponse while idle");
        assert_eq!(tag, b'A', "{}", show(&[(tag, body.clone())]));
        let pid = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        assert_eq!(pid, notifier_pid, "notification names the sender's backend");
        body[..4].copy_from_slice(b"<pid");
        out.push((tag, body));
    }
    // Nothing else is pending for the listener.
    assert_eq!(
        listener.read_msg_within(Duration::from_millis(300)).await,
        Err(ReadEnd::Timeout)
    );
    out.extend(listener.simple("UNLISTEN *").await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_while_idle() {
    let env = env("parity_notify", false).await;
    let direct = notify_transcript(env.direct, &env.db).await;
    let proxied = notify_transcript(env.proxy, &env.db).await;
    assert_eq!(
        proxied,
        direct,
        "-- pgward:\n{}\n-- direct:\n{}",
        show(&proxied),
        show(&direct)
    );
}
