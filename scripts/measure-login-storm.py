#!/usr/bin/env python3
"""measure-login-storm.py — issue 12's login-storm figure: N identical password logins (same
user, same password) arriving at once at a freshly started wsgate, so the verification cache is
cold (every device logging in again after a restart). Prints the server's CPU time from
/proc/PID/stat (utime + stime) spent from the first request to the last answer, and the wall time
until every client has its 101.

    scripts/measure-login-storm.py [--json] [N]        default N = 200
    WSGATE_BIN=path/to/wsgate scripts/measure-login-storm.py   measure that binary
                                                       (default target/release/wsgate)

The TLS handshakes are done first (and not counted): only the upgrade requests, sent together
once every connection is up, are measured. The server runs with room for all N at once (workers,
max_pre_auth, max_pending_hashes, per-IP cap) so that the figure is the cost of the logins, not
of refusals. Bounded: every socket has a timeout and the server is stopped by PID on exit.
"""

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

USER, PASSWORD = "storm", "storm-password-1"


def cpu_seconds(pid):
    """utime + stime of `pid`, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main():
    args = sys.argv[1:]
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    n = int(args[0]) if args else 200
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = os.environ.get("WSGATE_BIN", os.path.join(root, "target/release/wsgate"))
    with tempfile.TemporaryDirectory(prefix="wsgate-storm-") as tmp:
        subprocess.run(
            [binary, "passwd", os.path.join(tmp, "users"), USER],
            input=PASSWORD + "\n",
            text=True,
            check=True,
            capture_output=True,
            timeout=60,
        )
        with open(os.path.join(tmp, "wsgate.ini"), "w") as f:
            f.write(
                f"""[server]
listen = 127.0.0.1:0
workers = {n + 50}
queue = 0
max_pre_auth = {n + 10}
max_connections_per_ip = {n + 50}
[tls]
cert = wsgate.crt
key = wsgate.key
self_signed = true
[origins]
allow_missing = true
[auth]
users_file = users
max_pending_hashes = {n + 10}
[log]
level = info
[channel:/echo]
mode = echo
[role:all]
members = *
subscribe = /echo
publish = /echo
"""
            )
        server = subprocess.Popen(
            [binary, "serve", "--config", os.path.join(tmp, "wsgate.ini")],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = None
            deadline = time.time() + 60
            while port is None and time.time() < deadline:
                line = server.stderr.readline()
                if not line:
                    break
                if "listening on " in line:
                    port = int(line.rsplit(":", 1)[1])
            if port is None:
                sys.exit("measure-login-storm: the server did not start")
            threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
            report = storm(server.pid, port, n)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    report["binary"] = binary
    if as_json:
        print(json.dumps(report))
    else:
        print(
            f"{n} identical logins, cold cache: server CPU {report['server_cpu_s']:.2f} s, "
            f"all in after {report['wall_s']:.2f} s ({report['ok']} got 101, statuses "
            f"{report['statuses']})"
        )


def storm(pid, port, n):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        f"Authorization: Basic {auth}\r\n\r\n"
    ).encode()
    conns = []
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        conns.append(ctx.wrap_socket(raw, server_hostname="localhost"))
    statuses = [None] * n
    done_at = [0.0] * n
    start = threading.Barrier(n + 1)

    def client(i):
        start.wait()
        conns[i].sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conns[i].recv(4096)
            if not chunk:
                break
            head += chunk
        done_at[i] = time.monotonic()
        statuses[i] = int(head.split(b" ", 2)[1]) if head else 0

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    start.wait()
    for t in threads:
        t.join(timeout=120)
    cpu1 = cpu_seconds(pid)
    for c in conns:
        c.close()
    counts = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return {
        "n": n,
        "server_cpu_s": cpu1 - cpu0,
        "wall_s": max(done_at) - t0,
        "ok": counts.get(101, 0),
        "statuses": {str(k): v for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))},
    }


if __name__ == "__main__":
    main()
