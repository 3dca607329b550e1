"""asyncpg through pgward: it prepares every statement (Parse/Describe + Flush,
then Bind/Execute/Sync), so this also exercises pipelined extended-protocol
traffic. Connection settings come from PG* variables."""
import asyncio
import io
import os
import ssl
import time

import asyncpg
from asyncpg import exceptions as exc

from checks import Checks, expect

c = Checks()
c.version(f"asyncpg {asyncpg.__version__}")
conn = None


def tls_context():
    ctx = ssl.create_default_context(cafile=os.environ["PGSSLROOTCERT"])
    ctx.check_hostname = True
    return ctx


async def connect():
    return await asyncpg.connect(
        host=os.environ["PGHOST"],
        port=int(os.environ["PGPORT"]),
        user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"],
        database=os.environ["PGDATABASE"],
        ssl=tls_context(),
    )


async def scram_tls():
    global conn
    conn = await connect()
    expect(conn._transport.get_extra_info("sslcontext") is not None, "connection is not TLS")
    expect(await conn.fetchval("select current_user") == os.environ["PGUSER"], "current_user")


async def simple_query():
    # execute() without arguments uses the simple protocol and returns the tag.
    status = await conn.execute("select 1 + 1")
    expect(status == "SELECT 1", status)


async def prepared_query():
    stmt = await conn.prepare("select $1::int * 2")
    for i in range(8):
        expect(await stmt.fetchval(i) == i * 2, "wrong value")
    rows = await conn.fetch("select id, name from items where id = any($1::int[]) order by id", [1, 2])
    expect([r["id"] for r in rows] == [1, 2], str(rows))


async def transaction_rollback():
    tr = conn.transaction()
    await tr.start()
    await conn.execute("insert into items (id, name) values (10, 'rolled back')")
    await tr.rollback()
    expect(await conn.fetchval("select count(*) from items where id = 10") == 0, "insert survived")


async def error_in_transaction():
    tr = conn.transaction()
    await tr.start()
    await conn.execute("insert into items (id, name) values (11, 'doomed')")
    try:
        await conn.fetchval("select 1 / $1::int", 0)
        raise AssertionError("division by zero succeeded")
    except exc.DivisionByZeroError as e:
        expect(e.sqlstate == "22012", e.sqlstate)
    try:
        await conn.fetchval("select 1")
        raise AssertionError("statement after the error succeeded")
    except exc.InFailedSQLTransactionError:
        pass
    await tr.rollback()
    expect(await conn.fetchval("select count(*) from items where id = 11") == 0, "committed")


async def copy_in():
    status = await conn.copy_records_to_table(
        "items", records=[(i, f"copied {i}") for i in (100, 101, 102)], columns=["id", "name"]
    )
    expect(status == "COPY 3", status)


async def copy_out():
    buf = io.BytesIO()
    status = await conn.copy_from_query(
        "select id, name from items where id >= 100 order by id", output=buf
    )
    expect(status == "COPY 3", status)
    expect(buf.getvalue() == b"100\tcopied 100\n101\tcopied 101\n102\tcopied 102\n", repr(buf.getvalue()))


async def cancel():
    # asyncpg sends CancelRequest when the awaiting task is cancelled/timed out.
    other = await connect()
    try:
        t0 = time.monotonic()
        try:
            await other.fetchval("select pg_sleep(30)", timeout=0.5)
            raise AssertionError("pg_sleep was not cancelled")
        except asyncio.TimeoutError:
            pass
        expect(await other.fetchval("select 7") == 7, "connection unusable after cancel")
        expect(time.monotonic() - t0 < 10, "cancel took too long")
        # The server really got the cancel: the backend is idle, not sleeping.
        busy = await conn.fetchval(
            "select count(*) from pg_stat_activity where query like 'select pg_sleep(30)%' and state = 'active'"
        )
        expect(busy == 0, "pg_sleep still running on the server")
    finally:
        await other.close()


async def listen_notify():
    got = asyncio.get_running_loop().create_future()
    listener = await connect()
    try:
        await listener.add_listener("compat_chan", lambda _c, _pid, ch, payload: got.set_result((ch, payload)))
        await conn.execute("select pg_notify('compat_chan', 'hello from asyncpg')")
        ch, payload = await asyncio.wait_for(got, 5)
        expect((ch, payload) == ("compat_chan", "hello from asyncpg"), str((ch, payload)))
    finally:
        await listener.close()


async def blocked_truncate():
    try:
        await conn.execute("truncate items")
        raise AssertionError("TRUNCATE was not blocked")
    except exc.InsufficientPrivilegeError as e:
        expect(e.sqlstate == "42501", e.sqlstate)
        expect("pgward" in str(e), str(e))
    expect(await conn.fetchval("select count(*) from items") > 0, "items is empty")


async def soft_delete_rowcount():
    status = await conn.execute("delete from items where id = $1", 50)
    expect(status == "DELETE 1", status)
    row = await conn.fetchrow("select deleted_at is not null as gone, deleted_by from items where id = 50")
    expect(row is not None and row["gone"] and row["deleted_by"] == os.environ["PGUSER"], f"row after delete: {row}")


async def rls_context():
    user = os.environ["PGUSER"]
    setting = "select current_setting('app.current_user_id')"
    expect(await conn.fetchval(setting) == user, "context setting not pinned")
    rows = [tuple(r) for r in await conn.fetch("select owner, body from notes")]
    expect(rows == [(user, "mine")], f"RLS let through {rows}")
    try:
        await conn.execute("set app.current_user_id = 'intruder'")
        raise AssertionError("spoofing the context was not blocked")
    except exc.InsufficientPrivilegeError:
        pass
    expect(await conn.fetchval(setting) == user, "context changed")


async def concurrent_prepares():
    # Two connections preparing and running statements at the same time;
    # asyncpg sends Parse/Describe + Flush, waits, then Bind/Execute/Sync.
    a, b = await connect(), await connect()

    async def run(c, ids):
        return [await c.fetchval(f"select $1::int + {i}", i) for i in ids]

    try:
        evens, odds = await asyncio.gather(run(a, range(0, 20, 2)), run(b, range(1, 20, 2)))
        expect(evens == [2 * i for i in range(0, 20, 2)], str(evens))
        expect(odds == [2 * i for i in range(1, 20, 2)], str(odds))
    finally:
        await a.close()
        await b.close()


async def pool_release():
    # Pool.release() runs Connection.reset(): pg_advisory_unlock_all(),
    # CLOSE ALL, UNLISTEN *, RESET ALL in one simple Query.
    pool = await asyncpg.create_pool(
        host=os.environ["PGHOST"], port=int(os.environ["PGPORT"]), user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"], database=os.environ["PGDATABASE"],
        ssl=tls_context(), min_size=1, max_size=1,
    )
    try:
        for i in range(3):
            async with pool.acquire() as c:
                expect(await c.fetchval("select $1::int", i) == i, "wrong value")
    finally:
        pool.terminate()


async def executemany():
    # executemany pipelines Bind/Execute for every row, then one Sync.
    await conn.executemany(
        "insert into items (id, name) values ($1, $2)", [(i, f"many {i}") for i in range(300, 320)]
    )
    n = await conn.fetchval("select count(*) from items where id between 300 and 319")
    expect(n == 20, f"{n} rows")
    # A failing row aborts the whole batch (it is one implicit transaction).
    try:
        await conn.executemany("insert into items (id, name) values ($1, $2)", [(330, "a"), (300, "dup")])
        raise AssertionError("duplicate key not reported")
    except exc.UniqueViolationError:
        pass
    expect(await conn.fetchval("select count(*) from items where id = 330") == 0, "partial batch committed")


async def main():
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
        ("concurrent_prepares", concurrent_prepares),
        ("executemany", executemany),
        ("pool_release", pool_release),
    ]:
        if conn is None and name != "scram_tls":
            c.report(name, RuntimeError("no connection"))
            continue
        await c.arun(name, fn)
    if conn is not None:
        await conn.close()


asyncio.run(main())
c.exit()
