#!/usr/bin/env python3
"""measure-proxy.py — issue 16's figure: wsgate's CPU per message on a `mode = proxy` channel
against a direct echo channel, measured in one run on one server process.

    python3 scripts/measure-proxy.py [CONNS] [SECONDS]      defaults 4 and 10

Starts the release binary (self-signed TLS, one password user) with two channels, `/echo`
(mode = echo) and `/app/*` (mode = proxy, backend = tests/gateway_backend.py, the Python echo app
the tests use, on plain ws:// loopback), then runs the shared harness's `wsload echo` (../shared/bench;
built on first use) against each for SECONDS with CONNS connections of 32-byte text messages,
sampling wsgate's CPU (not the backend's, which is reported beside it). A proxied message crosses
wsgate twice (client -> backend -> client), so
expect about twice the direct figure. Needs Python `websockets` >= 14 (scripts/test installs it
into target/test-venv, which this script uses when present).
"""
import json, os, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.environ.get("BENCH", os.path.join(ROOT, "..", "shared", "bench"))
TARGET = os.environ.get("BENCH_TARGET", os.path.join(ROOT, "target", "bench"))
CONNS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
SECS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
VENV_PY = os.path.join(ROOT, "target", "test-venv", "bin", "python3")
PYTHON = VENV_PY if os.path.exists(VENV_PY) else "python3"


def run(cmd, **kw):
    subprocess.run(cmd, check=True, **kw)


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


wsload = os.path.join(TARGET, "release", "wsload")
if not os.path.exists(wsload):
    run(["cargo", "build", "--release", "-q", "-p", "wsload"], cwd=BENCH,
        env={**os.environ, "CARGO_TARGET_DIR": TARGET})
run(["cargo", "build", "--release", "-q"], cwd=ROOT)
binary = os.path.join(ROOT, "target", "release", "wsgate")

with tempfile.TemporaryDirectory() as d:
    backend = subprocess.Popen([PYTHON, os.path.join(ROOT, "tests", "gateway_backend.py")],
                               stdout=subprocess.PIPE, text=True)
    bport = backend.stdout.readline().split()[1]
    subprocess.run([binary, "passwd", "--min-length", "1", os.path.join(d, "users"), "bench"], input=b"bench\n", check=True,
                   stderr=subprocess.DEVNULL)
    port = 20000 + os.getpid() % 20000
    config = os.path.join(d, "wsgate.ini")
    with open(config, "w") as f:
        f.write(f"""[server]
listen = 127.0.0.1:{port}
[tls]
cert = wsgate.crt
key = wsgate.key
self_signed = true
[origins]
allow = https://localhost
allow_missing = true
[auth]
users_file = users
[log]
level = warn
[limits]
max_messages_per_sec = 0
max_bytes_per_sec = 0
[channel:/echo]
mode = echo
[channel:/app/*]
mode = proxy
backend = ws://127.0.0.1:{bport}
[role:bench]
members = *
subscribe = /echo, /app/*
publish = /echo, /app/*
""")
    server = subprocess.Popen([binary, "serve", "--config", config], stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    results = {}
    try:
        for name, path in [("echo", "/echo"), ("proxy", "/app/bench")]:
            b0 = cpu_secs(backend.pid)
            out = subprocess.run([wsload, "echo", "--url", f"wss://127.0.0.1:{port}{path}", "--conns", str(CONNS),
                                  "--duration", str(SECS), "--user", "bench", "--pass", "bench",
                                  "--server-pid", str(server.pid)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            if not r.get("msgs") or r.get("server_cpu_pct") is None:
                sys.exit(f"{name}: wsload measured nothing: {json.dumps(r)}")
            server_cpu = r["server_cpu_pct"] / 100 * r["window_secs"]
            r["server_us_per_msg"] = server_cpu / r["msgs"] * 1e6
            r["backend_us_per_msg"] = (cpu_secs(backend.pid) - b0) / r["msgs"] * 1e6
            results[name] = r
            print(f"{name:5}: {r['msgs']} msgs in {r['window_secs']} s ({r['msgs_per_s']}/s), wsgate "
                  f"{r['server_cpu_pct']}% CPU = {r['server_us_per_msg']:.1f} us/msg"
                  + (f", backend {r['backend_us_per_msg']:.1f} us/msg" if name == "proxy" else ""))
    finally:
        server.terminate()
        server.wait()
        backend.kill()
        backend.wait()
    ratio = results["proxy"]["server_us_per_msg"] / results["echo"]["server_us_per_msg"]
    print(f"proxy/echo wsgate CPU per message: {ratio:.2f}x")
