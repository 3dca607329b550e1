#!/usr/bin/env python3
"""Open N idle PostgreSQL client connections and hold them.

Usage: idle_clients.py HOST PORT N [--no-startup] [--user U] [--database D]

Default mode: every connection sends a protocol-3.0 StartupMessage and reads
until ReadyForQuery (trust auth expected: AuthenticationOk, ParameterStatus,
BackendKeyData, ReadyForQuery). --no-startup: connect the TCP socket and send
nothing (the proxy holds it until its startup timeout).

When all N are established, prints "READY n=N" on stdout (flushed) and then
holds the sockets until the process gets SIGTERM or SIGINT.
Stdlib only (socket + struct).
"""
import socket
import signal
import struct
import sys
import time


def startup_packet(user, database, application_name="pgward-idle-bench"):
    body = struct.pack("!I", 196608)  # protocol 3.0
    for k, v in (("user", user), ("database", database),
                 ("application_name", application_name)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


def handshake(sock, packet):
    sock.sendall(packet)
    while True:
        tag, length = struct.unpack("!cI", recv_exact(sock, 5))
        body = recv_exact(sock, length - 4)
        if tag == b"E":
            raise ConnectionError("ErrorResponse: %r" % body)
        if tag == b"R":
            (code,) = struct.unpack("!I", body[:4])
            if code != 0:
                raise ConnectionError("auth method %d requested; trust expected" % code)
        if tag == b"Z":
            return


def main():
    args = sys.argv[1:]
    no_startup = "--no-startup" in args
    args = [a for a in args if a != "--no-startup"]
    user, database = "postgres", "postgres"
    if "--user" in args:
        i = args.index("--user"); user = args[i + 1]; del args[i:i + 2]
    if "--database" in args:
        i = args.index("--database"); database = args[i + 1]; del args[i:i + 2]
    host, port, n = args[0], int(args[1]), int(args[2])
    packet = startup_packet(user, database)
    socks = []
    for i in range(n):
        s = socket.create_connection((host, port), timeout=60)
        if not no_startup:
            try:
                handshake(s, packet)
            except Exception as e:  # report which connection failed
                print("FAILED at connection %d: %s" % (i + 1, e), flush=True)
                sys.exit(1)
        socks.append(s)
    print("READY n=%d" % len(socks), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
