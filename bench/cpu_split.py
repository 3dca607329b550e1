#!/usr/bin/env python3
"""Where a round trip's CPU goes: the client's, the proxy's and the
backend's own CPU time per query, target by target.

Usage: cpu_split.py [--n N] [--blocks B] [--mode simple|extended|prepared]
                    NAME=HOST:PORT[:PID] ...

PID is the proxy's process (all of its threads are counted); leave it out
for direct Postgres. Each target gets one long-lived connection, warmed
with 2000 queries, whose backend PID it asks with pg_backend_pid(). Then
blocks of N queries (pgbench's select-only statement, as bench/latency.py
sends it) go to one target at a time, the order reversed every block, and
the CPU time (/proc/PID/task/*/schedstat, nanoseconds) of this client
process, the proxy and the backend is read before and after each block.

Run it with every process pinned to one core (as bench/run.sh's latency
probe does): then a proxy's cost shows twice, in its own CPU and in what
the client and the backend lose when the proxy's code and data have
evicted theirs between two of their turns. bench/latency.py measures the
sum; this script splits it. Stdlib only; trust authentication (as in
bench/run.sh).
"""

import argparse
import os
import random
import statistics
import struct

from latency import Conn, cstr, msg, payload


def cpu_ns(pid):
    """CPU time of every thread of `pid`, in nanoseconds."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
            total += int(f.read().split()[0])
    return total


def backend_pid(conn):
    conn.sock.sendall(msg(b"Q", cstr("SELECT pg_backend_pid()")))
    rows = []
    conn.until_ready(rows)
    if not rows:
        raise SystemExit("%s: no pg_backend_pid() row" % conn.name)
    # DataRow: column count (int16), then the column's length (int32) and text.
    (size,) = struct.unpack("!i", rows[0][2:6])
    return int(rows[0][6:6 + size])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="queries per block")
    ap.add_argument("--blocks", type=int, default=6, help="blocks per target")
    ap.add_argument("--mode", choices=["simple", "extended", "prepared"], default="simple")
    ap.add_argument("--rows", type=int, default=100000, help="aid drawn from 1..ROWS")
    ap.add_argument("--user", default="postgres")
    ap.add_argument("--database", default="postgres")
    ap.add_argument("targets", nargs="+", metavar="NAME=HOST:PORT[:PID]")
    args = ap.parse_args()

    targets = []
    for spec in args.targets:
        name, _, where = spec.partition("=")
        parts = where.split(":")
        if not name or len(parts) not in (2, 3):
            raise SystemExit("bad target %r (want NAME=HOST:PORT[:PID])" % spec)
        proxy = int(parts[2]) if len(parts) == 3 else None
        conn = Conn(name, parts[0], int(parts[1]), args.user, args.database)
        if args.mode == "prepared":
            conn.sock.sendall(msg(b"P", cstr("s") + cstr(
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1")
                + struct.pack("!h", 0)) + msg(b"S", b""))
            conn.until_ready()
        targets.append((name, conn, proxy, backend_pid(conn)))

    def query(conn):
        return conn.timed(payload(args.mode, random.randint(1, args.rows)))

    for _, conn, _, _ in targets:
        for _ in range(2000):
            query(conn)
    me = os.getpid()
    totals = {t[0]: {"latency": [], "client": 0, "proxy": 0, "backend": 0} for t in targets}
    for block in range(args.blocks):
        for name, conn, proxy, backend in (targets if block % 2 == 0 else targets[::-1]):
            t = totals[name]
            before = (cpu_ns(me), cpu_ns(proxy) if proxy else 0, cpu_ns(backend))
            for _ in range(args.n):
                t["latency"].append(query(conn))
            after = (cpu_ns(me), cpu_ns(proxy) if proxy else 0, cpu_ns(backend))
            t["client"] += after[0] - before[0]
            t["proxy"] += after[1] - before[1]
            t["backend"] += after[2] - before[2]

    queries = args.n * args.blocks
    print("# %s, %d queries per target in %d blocks; microseconds per query"
          % (args.mode, queries, args.blocks))
    print("%-14s %8s %8s %8s %8s %8s" % ("target", "median", "client", "proxy", "backend", "sum"))
    for name, t in totals.items():
        c, p, b = (t[k] / queries / 1000.0 for k in ("client", "proxy", "backend"))
        print("%-14s %8.1f %8.2f %8.2f %8.2f %8.2f"
              % (name, statistics.median(t["latency"]), c, p, b, c + p + b))


if __name__ == "__main__":
    main()
