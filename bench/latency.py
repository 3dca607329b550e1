#!/usr/bin/env python3
"""Added latency per query, measured interleaved: one client, one connection
per target, and every iteration sends the same query to each target in turn
(the order rotates), so a slow millisecond of the host falls on all targets
alike instead of on whichever one ran during it.

Usage: latency.py [--n N] [--mode simple|extended|prepared] [--rows R]
                  [--reconnect K] [--user U] [--database D] NAME=HOST:PORT ...

The first target is the reference (direct Postgres). Each query is pgbench's
select-only statement (`SELECT abalance FROM pgbench_accounts WHERE aid = $1`,
aid random in 1..R) in the chosen protocol:
  simple    Query with the literal inlined
  extended  Parse (unnamed) + Bind + Execute + Sync, as `pgbench -M extended`
  prepared  Parse once (named), then Bind + Execute + Sync
The time is from the first byte sent to the whole ReadyForQuery read, on
blocking sockets (no event loop on the client side).

Connections are opened once and warmed up with 2000 queries each. With
--reconnect K they are closed and opened again every K iterations, to
sample more placements of client, proxy thread and backend on the cores
(on a host with idle cores that placement decides tens of microseconds per
round trip). That charges the warm-up of a fresh backend to pgward and to
direct but not to PgBouncer, whose session pool hands the next client the
same warm server connection: measured pinned to one core, reconnecting
every 1000 queries put pgward 6-14 us behind PgBouncer, long-lived
connections 2-4 us (prepared). So the default is never (0).

Prints one line per target: median, p10, p90 and p99 latency in
microseconds, and for every target but the reference the median of the
per-iteration difference to the reference ("added") with its interquartile
range. A final line compares each pair of non-reference targets by the
median of their per-iteration difference and the share of iterations the
first was faster. Trust authentication is expected (as in bench/run.sh).
Stdlib only (socket + struct).
"""
import random
import socket
import statistics
import struct
import sys
import time

from idle_clients import handshake, startup_packet

QUERY = "SELECT abalance FROM pgbench_accounts WHERE aid = "


def msg(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


class Conn:
    def __init__(self, name, host, port, user, database):
        self.name = name
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        try:
            handshake(self.sock, startup_packet(user, database, "pgward-latency-bench"))
        except ConnectionError as e:
            raise SystemExit("%s: %s" % (name, e))

    def until_ready(self, rows=None):
        """Read messages up to and including ReadyForQuery; exit on an error.
        DataRow bodies are appended to `rows` when given."""
        while True:
            while len(self.buf) >= 5:
                tag = self.buf[:1]
                (length,) = struct.unpack("!I", self.buf[1:5])
                if len(self.buf) < 1 + length:
                    break
                body = self.buf[5:1 + length]
                self.buf = self.buf[1 + length:]
                if tag == b"E":
                    raise SystemExit("%s: ErrorResponse %r" % (self.name, body))
                if tag == b"D" and rows is not None:
                    rows.append(body)
                if tag == b"Z":
                    return
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("%s: connection closed" % self.name)
            self.buf += chunk

    def timed(self, payload):
        t0 = time.perf_counter_ns()
        self.sock.sendall(payload)
        self.until_ready()
        return (time.perf_counter_ns() - t0) / 1000.0


def payload(mode, aid):
    if mode == "simple":
        return msg(b"Q", cstr(QUERY + str(aid)))
    param = str(aid).encode()
    bind = msg(b"B", cstr("") + cstr("s" if mode == "prepared" else "")
               + struct.pack("!hhi", 0, 1, len(param)) + param + struct.pack("!h", 0))
    execute = msg(b"E", cstr("") + struct.pack("!i", 0))
    sync = msg(b"S", b"")
    if mode == "prepared":
        return bind + execute + sync
    parse = msg(b"P", cstr("") + cstr(QUERY + "$1") + struct.pack("!h", 0))
    return parse + bind + execute + sync


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def main():
    args = sys.argv[1:]
    opts = {"--n": "20000", "--mode": "simple", "--rows": "1000000", "--reconnect": "0",
            "--user": "postgres", "--database": "postgres"}
    targets = []
    while args:
        a = args.pop(0)
        if a in opts:
            opts[a] = args.pop(0)
        elif "=" in a:
            name, addr = a.split("=", 1)
            host, port = addr.rsplit(":", 1)
            targets.append((name, host, int(port)))
        else:
            raise SystemExit(__doc__)
    mode = opts["--mode"]
    if mode not in ("simple", "extended", "prepared") or len(targets) < 2:
        raise SystemExit(__doc__)
    n, rows, reconnect = int(opts["--n"]), int(opts["--rows"]), int(opts["--reconnect"])
    rng = random.Random(42)

    def connect():
        conns = [Conn(name, host, port, opts["--user"], opts["--database"])
                 for name, host, port in targets]
        if mode == "prepared":
            for c in conns:
                c.sock.sendall(msg(b"P", cstr("s") + cstr(QUERY + "$1") + struct.pack("!h", 0))
                               + msg(b"S", b""))
                c.until_ready()
        # Warm-up: the backend's caches and memory, the policy's statement
        # cache, TCP windows.
        for _ in range(2000):
            for c in conns:
                c.timed(payload(mode, rng.randint(1, rows)))
        return conns

    conns = None
    lat = [[] for _ in targets]
    for i in range(n):
        if conns is None or (reconnect and i % reconnect == 0):
            for c in conns or []:
                c.sock.sendall(msg(b"X", b""))
                c.sock.close()
            conns = connect()
        p = payload(mode, rng.randint(1, rows))
        k = i % len(conns)
        for j in list(range(k, len(conns))) + list(range(k)):
            lat[j].append(conns[j].timed(p))
    ref = lat[0]
    print("# %s, %d interleaved iterations, one connection per target%s; microseconds"
          % (mode, n, ", new ones every %d" % reconnect if reconnect else ""))
    print("%-12s %8s %8s %8s %8s %10s %16s" % ("target", "median", "p10", "p90", "p99",
                                               "added", "added IQR"))
    for (name, _, _), xs in zip(targets, lat):
        if xs is ref:
            added, iqr = "-", "-"
        else:
            d = [a - b for a, b in zip(xs, ref)]
            added = "%+.1f" % statistics.median(d)
            iqr = "%+.1f..%+.1f" % (pct(d, 0.25), pct(d, 0.75))
        print("%-12s %8.1f %8.1f %8.1f %8.1f %10s %16s" % (
            name, statistics.median(xs), pct(xs, 0.10), pct(xs, 0.90), pct(xs, 0.99),
            added, iqr))
    for a in range(1, len(targets)):
        for b in range(a + 1, len(targets)):
            d = [x - y for x, y in zip(lat[a], lat[b])]
            faster = sum(1 for v in d if v < 0) / len(d)
            print("# %s - %s: median %+.1f us per query, %s faster in %.0f %% of iterations"
                  % (targets[a][0], targets[b][0], statistics.median(d), targets[a][0],
                     100 * faster))


if __name__ == "__main__":
    main()
