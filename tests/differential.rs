//! Differential SQL harness (issue #8): every script in
//! `tests/differential_corpus/` runs once directly against PostgreSQL and once
//! through pgward, each time in a fresh database, in three modes (the policy
//! is the default one where it allows the whole script, else monitor mode:
//! every statement is classified, none is blocked):
//!
//! - `simple`: each statement as a Query message, results in text;
//! - `extended`: Parse/Bind (all results binary)/Describe/Execute with a row
//!   limit (so large results come back in PortalSuspended batches), Flush,
//!   and Sync once the statement is done;
//! - `pipelined`: the whole script in the extended protocol, written before
//!   any reply is read (one Sync per statement).
//!
//! The backend messages must be the same: command tags, RowDescription
//! (names, types, formats), DataRows byte for byte, errors with every field,
//! notices, ParameterStatus changes, COPY data. Only values that differ by
//! nature are blanked (see [`normalise`]). Any other difference is a pgward bug.
//!
//! Script format: a statement ends with a line whose last character is `;`
//! (even inside a quoted string: keep such `;` off the end of a line).
//! Lines starting with `--` between statements are comments. A `COPY … FROM
//! STDIN` statement is followed by its data lines, ended by a line `\.`.

mod common;
mod rawpg;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use common::{cluster, fresh_database, proxy_config, start_proxy, CLEAR_PW, CLEAR_USER};
use rawpg::*;

/// Rows per Execute in extended mode: small, so big results need many batches.
const FETCH_ROWS: i32 = 50;

/// OIDs from here on are assigned per database (user types, tables).
const FIRST_NORMAL_OID: u32 = 16384;

struct Statement {
    sql: String,
    /// Data sent after CopyInResponse (the lines before `\.`).
    copy_data: Option<String>,
}

fn parse_script(text: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    let mut sql = String::new();
    while let Some(line) = lines.next() {
        if sql.is_empty() && (line.trim().is_empty() || line.starts_with("--")) {
            continue;
        }
        sql.push_str(line);
        sql.push('\n');
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let stmt = std::mem::take(&mut sql).trim_end().to_string();
        let upper = stmt.to_ascii_uppercase();
        let copy_data = (upper.starts_with("COPY") && upper.contains("FROM STDIN")).then(|| {
            let mut data = String::new();
            for l in lines.by_ref().take_while(|l| *l != "\\.") {
                data.push_str(l);
                data.push('\n');
            }
            data
        });
        out.push(Statement {
            sql: stmt,
            copy_data,
        });
    }
    assert!(
        sql.trim().is_empty(),
        "script ends inside a statement: {sql}"
    );
    out
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Simple,
    Extended,
    /// The whole script sent at once (each statement Parse/Bind/Describe/
    /// Execute/[COPY data]/Sync) before reading any reply.
    Pipelined,
}

/// Bind of the unnamed statement to the unnamed portal, all results binary.
fn bind_binary() -> Vec<u8> {
    let mut b = vec![0u8, 0u8]; // portal "", statement ""
    b.extend_from_slice(&0i16.to_be_bytes()); // no parameter formats
    b.extend_from_slice(&0i16.to_be_bytes()); // no parameters
    b.extend_from_slice(&1i16.to_be_bytes()); // one result format for all columns:
    b.extend_from_slice(&1i16.to_be_bytes()); // binary
    msg(b'B', &b)
}

/// `then_flush`: in the extended protocol the server holds the COPY's
/// CommandComplete in its buffer until a Flush (or Sync) arrives.
async fn send_copy_data(conn: &mut Raw, data: &Option<String>, then_flush: bool) {
    let mut out = copy_messages(data);
    if then_flush {
        out.extend(flush());
    }
    conn.send(&out).await;
}

fn copy_messages(data: &Option<String>) -> Vec<u8> {
    let data = data.as_deref().unwrap_or("");
    let mut out = Vec::new();
    // Several CopyData messages, as drivers send them.
    for chunk in data.as_bytes().chunks(100) {
        out.extend(copy_data(chunk));
    }
    out.extend(copy_done());
    out
}

async fn read(conn: &mut Raw, transcript: &mut Vec<Msg>) -> u8 {
    let m = conn
        .read_msg()
        .await
        .unwrap_or_else(|e| panic!("{e:?}; so far:\n{}", show(transcript)));
    let tag = m.0;
    transcript.push(m);
    tag
}

/// Runs one statement; returns every backend message up to ReadyForQuery.
async fn run_statement(conn: &mut Raw, stmt: &Statement, mode: Mode) -> Vec<Msg> {
    let mut t = Vec::new();
    match mode {
        Mode::Pipelined => unreachable!("pipelined scripts are sent whole"),
        Mode::Simple => {
            conn.send(&query(&stmt.sql)).await;
            loop {
                match read(conn, &mut t).await {
                    b'G' => send_copy_data(conn, &stmt.copy_data, false).await,
                    b'Z' => return t,
                    _ => {}
                }
            }
        }
        Mode::Extended => {
            conn.send(&cat(&[
                parse("", &stmt.sql, &[]),
                bind_binary(),
                describe(b'P', ""),
                execute("", FETCH_ROWS),
                flush(),
            ]))
            .await;
            loop {
                match read(conn, &mut t).await {
                    b'G' => send_copy_data(conn, &stmt.copy_data, true).await,
                    b's' => conn.send(&cat(&[execute("", FETCH_ROWS), flush()])).await,
                    // Statement done (or failed): end the message group.
                    b'C' | b'E' | b'I' => break,
                    _ => {}
                }
            }
            conn.send(&sync()).await;
            while read(conn, &mut t).await != b'Z' {}
            t
        }
    }
}

/// One line per message, with what differs by nature blanked: the
/// BackendKeyData key, a notifying backend's pid, and per-database OIDs in
/// RowDescription (table OIDs, user type OIDs).
fn normalise(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|(tag, body)| match tag {
            b'K' => "K <backend key>".to_string(),
            b'A' => format!("A <pid> {}", String::from_utf8_lossy(&body[4..])),
            b'T' => describe_row(body),
            _ => format!("{} {}", *tag as char, String::from_utf8_lossy(body)),
        })
        .collect()
}

fn describe_row(body: &[u8]) -> String {
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let be16 = |b: &[u8]| i16::from_be_bytes([b[0], b[1]]);
    let n = be16(body);
    let mut pos = 2;
    let mut out = format!("T {n} columns:");
    for _ in 0..n {
        let end = pos + body[pos..].iter().position(|&b| b == 0).expect("name");
        let name = String::from_utf8_lossy(&body[pos..end]);
        pos = end + 1;
        let f = &body[pos..pos + 18];
        pos += 18;
        let table = if be32(f) == 0 { "-" } else { "<table>" };
        let type_oid = be32(&f[6..]);
        let ty = if type_oid >= FIRST_NORMAL_OID {
            "<user type>".to_string()
        } else {
            type_oid.to_string()
        };
        let _ = write!(
            out,
            " {name}[table {table} col {} type {ty} len {} mod {} fmt {}]",
            be16(&f[4..]),
            be16(&f[10..]),
            be32(&f[12..]) as i32,
            be16(&f[16..])
        );
    }
    out
}

struct Transcript {
    startup: Vec<String>,
    statements: Vec<(String, Vec<String>)>,
}

async fn run_script(addr: SocketAddr, db: &str, script: &[Statement], mode: Mode) -> Transcript {
    let (mut conn, startup) = Raw::connect(addr, CLEAR_USER, CLEAR_PW, db).await;
    let mut statements = Vec::new();
    if let Mode::Pipelined = mode {
        // Outside COPY mode the server ignores CopyData/CopyDone, so a COPY
        // that fails before it starts leaves the pipeline in step.
        let mut all = Vec::new();
        for stmt in script {
            all.extend(cat(&[
                parse("", &stmt.sql, &[]),
                bind_binary(),
                describe(b'P', ""),
                execute("", 0),
            ]));
            if stmt.copy_data.is_some() {
                all.extend(copy_messages(&stmt.copy_data));
            }
            all.extend(sync());
        }
        conn.send(&all).await;
        for stmt in script {
            let mut t = Vec::new();
            while read(&mut conn, &mut t).await != b'Z' {}
            statements.push((stmt.sql.clone(), normalise(&t)));
        }
    } else {
        for stmt in script {
            let msgs = run_statement(&mut conn, stmt, mode).await;
            statements.push((stmt.sql.clone(), normalise(&msgs)));
        }
    }
    conn.send(&terminate()).await;
    Transcript {
        startup: normalise(&startup),
        statements,
    }
}

/// Runs `file` directly and through pgward in every mode; panics with the
/// first differing statement.
async fn differential(file: &str, policy: pgward::policy::Mode) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/differential_corpus")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let script = parse_script(&text);
    assert!(!script.is_empty(), "{file}: no statements");

    let h = cluster();
    let direct: SocketAddr = format!("127.0.0.1:{}", h.pg.port).parse().unwrap();
    let mut cfg = proxy_config();
    cfg.policy.mode = policy;
    let proxy = start_proxy(cfg).await;

    for mode in [Mode::Simple, Mode::Extended, Mode::Pipelined] {
        let prefix = format!("diff_{}_{mode:?}", file.trim_end_matches(".sql"));
        let want = run_script(direct, &fresh_database(&prefix), &script, mode).await;
        let got = run_script(proxy.addrs[0], &fresh_database(&prefix), &script, mode).await;
        assert_eq!(
            got.startup, want.startup,
            "{file} ({mode:?}): startup differs"
        );
        for ((sql, g), (_, w)) in got.statements.iter().zip(&want.statements) {
            assert_eq!(
                g,
                w,
                "{file} ({mode:?}): replies differ for\n{sql}\n-- pgward:\n{}\n-- direct:\n{}",
                g.join("\n"),
                w.join("\n")
            );
        }
        // The corpus must exercise what it claims: not everything an error.
        let ok = want
            .statements
            .iter()
            .filter(|(_, m)| m.iter().any(|l| l.starts_with('C')))
            .count();
        assert!(ok > 0, "{file} ({mode:?}): no statement completed");
    }
}

macro_rules! corpus {
    ($($name:ident => $file:literal, $policy:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            differential($file, pgward::policy::Mode::$policy).await;
        }
    )*};
}

// Monitor where the script holds what the default policy blocks on purpose:
// DROP (ddl) and SQL sqlparser cannot parse (errors, unicode: fail closed).
corpus! {
    ddl_is_identical => "ddl.sql", Monitor;
    dml_is_identical => "dml.sql", Enforce;
    transactions_are_identical => "transactions.sql", Enforce;
    errors_are_identical => "errors.sql", Monitor;
    copy_is_identical => "copy.sql", Enforce;
    cursors_are_identical => "cursors.sql", Enforce;
    unicode_is_identical => "unicode.sql", Monitor;
    large_results_are_identical => "large.sql", Enforce;
    types_are_identical_in_text_and_binary => "types.sql", Enforce;
    session_state_is_identical => "session.sql", Enforce;
    routines_are_identical => "routines.sql", Enforce;
}

#[test]
fn script_parser_splits_statements_and_copy_data() {
    let s = parse_script(
        "-- comment\nselect 1;\nselect\n  2;\ncopy t from stdin;\na\tb\n\\.\n;\nselect 'x;y'\n;\n",
    );
    let sql: Vec<&str> = s.iter().map(|s| s.sql.as_str()).collect();
    assert_eq!(
        sql,
        [
            "select 1;",
            "select\n  2;",
            "copy t from stdin;",
            ";",
            "select 'x;y'\n;"
        ]
    );
    assert_eq!(s[2].copy_data.as_deref(), Some("a\tb\n"));
    assert!(s[0].copy_data.is_none());
}
