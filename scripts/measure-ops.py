#!/usr/bin/env python3
"""measure-ops.py — issue 4's figures: start-up to READY=1, and reload time with N open connections
(and that none dropped).

    python3 scripts/measure-ops.py [CONNS]        default 200

Starts the release binary with $NOTIFY_SOCKET pointing at a datagram socket this script owns, times
spawn -> READY=1, opens CONNS idle wss:// connections with the shared harness's wsload
(../shared/bench; built on first use), sends SIGHUP and times SIGHUP -> RELOADING=1 -> READY=1, then
checks wsload's `dropped` count once it has closed its connections.
"""
import json, os, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.environ.get("BENCH", os.path.join(ROOT, "..", "shared", "bench"))
TARGET = os.environ.get("BENCH_TARGET", os.path.join(ROOT, "target", "bench"))
CONNS = int(sys.argv[1]) if len(sys.argv) > 1 else 200


def run(cmd, **kw):
    subprocess.run(cmd, check=True, **kw)


wsload = os.path.join(TARGET, "release", "wsload")
if not os.path.exists(wsload):
    run(["cargo", "build", "--release", "-q", "-p", "wsload"], cwd=BENCH, env={**os.environ, "CARGO_TARGET_DIR": TARGET})
run(["cargo", "build", "--release", "-q"], cwd=ROOT)
binary = os.path.join(ROOT, "target", "release", "wsgate")

with tempfile.TemporaryDirectory() as d:
    subprocess.run([binary, "passwd", "--min-length", "1", os.path.join(d, "users"), "bench"], input=b"bench\n", check=True,
                   stderr=subprocess.DEVNULL)
    port = 20000 + os.getpid() % 20000
    with open(os.path.join(d, "wsgate.ini"), "w") as f:
        f.write(f"""[server]
listen = 127.0.0.1:{port}
workers = {CONNS + 50}
max_connections_per_ip = {CONNS + 50}
[tls]
cert = wsgate.crt
key = wsgate.key
self_signed = true
[origins]
allow = https://localhost
[auth]
users_file = users
[log]
level = warn
[channel:/echo]
mode = echo
[role:bench]
members = *
subscribe = /echo
publish = /echo
""")
    # Generate the certificate once, so start-up time does not include key generation.
    run([binary, "check-config", os.path.join(d, "wsgate.ini")], stdout=subprocess.DEVNULL)
    warm = subprocess.Popen([binary, "serve", "--config", os.path.join(d, "wsgate.ini")], stderr=subprocess.DEVNULL)
    time.sleep(1)
    warm.terminate()
    warm.wait()

    sock_path = os.path.join(d, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)

    def wait_for(word):
        while True:
            msg = sock.recv(4096).decode()
            if word in msg.splitlines():
                return time.monotonic()

    t0 = time.monotonic()
    server = subprocess.Popen([binary, "serve", "--config", os.path.join(d, "wsgate.ini")],
                              env={**os.environ, "NOTIFY_SOCKET": sock_path}, stderr=subprocess.PIPE, text=True)
    ready = wait_for("READY=1")
    print(f"start-up to READY=1: {(ready - t0) * 1000:.1f} ms")

    load = subprocess.Popen([wsload, "idle", "--url", f"wss://127.0.0.1:{port}/echo", "--conns", str(CONNS),
                             "--hold", "8", "--origin", "https://localhost", "--user", "bench", "--pass", "bench",
                             "--server-pid", str(server.pid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while "READY" not in (load.stderr.readline() or "READY"):
        pass
    time.sleep(1)
    t1 = time.monotonic()
    server.send_signal(signal.SIGHUP)
    reloading = wait_for("RELOADING=1")
    ready_again = wait_for("READY=1")
    print(f"reload with {CONNS} open connections: SIGHUP -> READY=1 {(ready_again - t1) * 1000:.1f} ms "
          f"(RELOADING=1 after {(reloading - t1) * 1000:.1f} ms)")
    out, _ = load.communicate(timeout=120)
    result = json.loads(out.strip().splitlines()[-1])
    print(f"wsload: opened {result['opened']}/{CONNS}, dropped by the server while held: {result['dropped']}")
    server.terminate()
    server.wait(timeout=30)
