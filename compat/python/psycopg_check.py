"""psycopg 3 through pgward: the common checks plus pipeline mode and a
server-side (named) cursor. Connection settings come from PG* variables."""
import threading
import time

import psycopg
from psycopg import errors, pq

from checks import Checks, expect

c = Checks()
c.version(f"psycopg {psycopg.__version__} (libpq {pq.version()}, {pq.__impl__})")
conn = None


def scram_tls():
    global conn
    conn = psycopg.connect(autocommit=True)
    expect(conn.pgconn.ssl_in_use, "connection is not TLS")
    user = conn.execute("select current_user").fetchone()[0]
    expect(user == conn.info.user, f"current_user {user}")


def simple_query():
    # execute() without parameters uses the simple protocol in psycopg 3.
    cur = conn.execute("select 1 + 1, 'x'::text")
    expect(cur.fetchone() == (2, "x"), "wrong row")
    expect(cur.statusmessage == "SELECT 1", cur.statusmessage)


def prepared_query():
    # prepare=True makes psycopg Parse a named statement and reuse it.
    for i in range(8):
        row = conn.execute("select %s::int * 2", (i,), prepare=True).fetchone()
        expect(row == (i * 2,), f"got {row}")


def transaction_rollback():
    with conn.transaction(force_rollback=True):
        conn.execute("insert into items (id, name) values (10, 'rolled back')")
    n = conn.execute("select count(*) from items where id = 10").fetchone()[0]
    expect(n == 0, "insert survived the rollback")


def error_in_transaction():
    conn.autocommit = False
    try:
        conn.execute("insert into items (id, name) values (11, 'doomed')")
        try:
            conn.execute("select 1 / 0")
            raise AssertionError("division by zero succeeded")
        except errors.DivisionByZero as e:
            expect(e.sqlstate == "22012", e.sqlstate)
        try:
            conn.execute("select 1")
            raise AssertionError("statement after the error succeeded")
        except errors.InFailedSqlTransaction:
            pass
        conn.rollback()
    finally:
        conn.autocommit = True
    n = conn.execute("select count(*) from items where id = 11").fetchone()[0]
    expect(n == 0, "insert of the failed transaction was committed")


def copy_in():
    with conn.cursor() as cur:
        with cur.copy("copy items (id, name) from stdin") as cp:
            for i in (100, 101, 102):
                cp.write_row((i, f"copied {i}"))
        expect(cur.rowcount == 3, f"rowcount {cur.rowcount}")


def copy_out():
    with conn.cursor() as cur:
        with cur.copy("copy (select id, name from items where id >= 100 order by id) to stdout") as cp:
            data = b"".join(bytes(b) for b in cp)
    expect(data == b"100\tcopied 100\n101\tcopied 101\n102\tcopied 102\n", repr(data))


def cancel():
    other = psycopg.connect(autocommit=True)
    try:
        threading.Timer(0.5, other.cancel).start()
        t0 = time.monotonic()
        try:
            other.execute("select pg_sleep(30)")
            raise AssertionError("pg_sleep was not cancelled")
        except errors.QueryCanceled as e:
            expect(e.sqlstate == "57014", e.sqlstate)
        expect(time.monotonic() - t0 < 10, "cancel took too long")
        expect(other.execute("select 7").fetchone() == (7,), "connection unusable")
    finally:
        other.close()


def listen_notify():
    listener = psycopg.connect(autocommit=True)
    try:
        listener.execute("listen compat_chan")
        conn.execute("select pg_notify('compat_chan', 'hello from psycopg')")
        got = next(listener.notifies(timeout=5), None)
        expect(got is not None, "no notification within 5 s")
        expect(got.channel == "compat_chan" and got.payload == "hello from psycopg", str(got))
    finally:
        listener.close()


def blocked_truncate():
    try:
        conn.execute("truncate items")
        raise AssertionError("TRUNCATE was not blocked")
    except errors.InsufficientPrivilege as e:
        expect(e.sqlstate == "42501", e.sqlstate)
        expect("pgward" in str(e), str(e))
    n = conn.execute("select count(*) from items").fetchone()[0]
    expect(n > 0, "items is empty")


def soft_delete_rowcount():
    cur = conn.execute("delete from items where id = %s", (50,))
    expect(cur.rowcount == 1, f"rowcount {cur.rowcount}")
    expect(cur.statusmessage == "DELETE 1", cur.statusmessage)
    row = conn.execute("select deleted_at is not null, deleted_by from items where id = 50").fetchone()
    expect(row == (True, conn.info.user), f"row after delete: {row}")


def rls_context():
    user = conn.info.user
    setting = "select current_setting('app.current_user_id')"
    expect(conn.execute(setting).fetchone()[0] == user, "context setting not pinned")
    rows = conn.execute("select owner, body from notes").fetchall()
    expect(rows == [(user, "mine")], f"RLS let through {rows}")
    try:
        conn.execute("set app.current_user_id = 'intruder'")
        raise AssertionError("spoofing the context was not blocked")
    except errors.InsufficientPrivilege:
        pass
    expect(conn.execute(setting).fetchone()[0] == user, "context changed")


def pipeline():
    with conn.pipeline():
        curs = [conn.execute("select %s::int + 1", (i,)) for i in range(5)]
        bad = conn.cursor()
    got = [cur.fetchone()[0] for cur in curs]
    expect(got == [1, 2, 3, 4, 5], str(got))
    # An error inside a pipeline aborts the rest up to the next sync.
    try:
        with conn.pipeline():
            conn.execute("select 1")
            bad.execute("select 1 / 0")
            conn.execute("select 2")
        raise AssertionError("pipeline error not raised")
    except errors.DivisionByZero:
        pass
    expect(conn.execute("select 3").fetchone() == (3,), "connection unusable after pipeline error")


def executemany():
    # psycopg 3 runs executemany as a pipeline (libpq 14+).
    with conn.cursor() as cur:
        cur.executemany(
            "insert into items (id, name) values (%s, %s) returning id",
            [(i, f"many {i}") for i in range(300, 320)],
            returning=True,
        )
        ids = []
        while True:
            ids.append(cur.fetchone()[0])
            if not cur.nextset():
                break
    expect(ids == list(range(300, 320)), str(ids))


def blocked_in_pipeline():
    # A blocked statement inside a pipeline must fail exactly like a server
    # error in the same place: run the same pipeline with 1/0 instead, and
    # compare which rows survive.
    def attempt(bad_sql, first_id, expected_error):
        try:
            with conn.pipeline():
                conn.execute("insert into items (id, name) values (%s, 'before')", (first_id,))
                conn.execute(bad_sql)
                conn.execute("insert into items (id, name) values (%s, 'after')", (first_id + 1,))
            raise AssertionError(f"{bad_sql} did not fail in a pipeline")
        except expected_error as e:
            sqlstate = e.sqlstate
        kept = conn.execute(
            "select array_agg(id - %s order by id) from items where id in (%s, %s)",
            (first_id, first_id, first_id + 1),
        ).fetchone()[0]
        return sqlstate, kept

    server = attempt("select 1 / 0", 410, errors.DivisionByZero)
    blocked = attempt("truncate items", 400, errors.InsufficientPrivilege)
    expect(blocked[0] == "42501", blocked[0])
    expect(blocked[1] == server[1], f"rows kept: blocked {blocked[1]}, server error {server[1]}")
    expect(conn.execute("select count(*) from items").fetchone()[0] > 0, "items is empty")


def server_cursor():
    with conn.transaction():
        with conn.cursor(name="compat_cur") as cur:
            cur.itersize = 100
            cur.execute("select g from generate_series(1, 1000) g")
            total = sum(row[0] for row in cur)
    expect(total == 500500, f"sum {total}")


for name, fn in [
    ("scram_tls", scram_tls),
    ("simple_query", simple_query),
    ("prepared_query", prepared_query),
    ("transaction_rollback", transaction_rollback),
    ("error_in_transaction", error_in_transaction),
    ("copy_in", copy_in),
    ("copy_out", copy_out),
    ("cancel", cancel),
    ("listen_notify", listen_notify),
    ("blocked_truncate_42501", blocked_truncate),
    ("soft_delete_rowcount", soft_delete_rowcount),
    ("rls_context", rls_context),
    ("pipeline", pipeline),
    ("server_cursor", server_cursor),
    ("executemany", executemany),
    ("blocked_in_pipeline", blocked_in_pipeline),
]:
    if conn is None and name != "scram_tls":
        c.report(name, RuntimeError("no connection"))
        continue
    c.run(name, fn)
c.exit()
