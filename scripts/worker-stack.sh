#!/usr/bin/env bash
# worker-stack.sh — holds an idle connection's worker to two stack pages (docs/benchmarks.md,
# "The worker's stack"): starts the release binary, opens one TLS connection that the server
# closes (over the rate limit: its close frame, the client's reply read; the worker then takes a
# later connection), opens CONNS more, each echoing one small message, pinging the server and
# answering the server's ping (ping_interval = 1s), and fails when any worker's stack has more
# than 8 KiB resident (scripts/stack-depth.py --max-kib 8). .ci/run runs it.
#
#   scripts/worker-stack.sh [CONNS]                 default 20; builds the release binary
#   WSGATE_BIN=path/to/wsgate scripts/worker-stack.sh   that binary (no build)
#
# Root (stack-depth.py reads /proc/PID/pagemap), and a python3 with `websockets` (the venv
# scripts/test makes, or WSGATE_TEST_PYTHON).
set -euo pipefail
CONNS=${1:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"
wsgate_bin
PYTHON=${WSGATE_TEST_PYTHON:-$ROOT/target/test-venv/bin/python3}
[[ -x $PYTHON ]] || PYTHON=python3

DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
echo bench | "$BIN" passwd --min-length 1 "$DIR/users" bench 2>/dev/null
. "$ROOT/scripts/idle-config.sh"
write_idle_config "$DIR/wsgate.ini" "listen = 127.0.0.1:0
workers = $((CONNS + 10))
max_connections_per_ip = $((CONNS + 10))"
printf '[limits]\nping_interval = 1s\nidle_timeout = 60s\nmax_messages_per_sec = 2\n' >>"$DIR/wsgate.ini"
sed -i 's/^level = warn$/level = info/' "$DIR/wsgate.ini"
"$BIN" serve --config "$DIR/wsgate.ini" 2>"$DIR/server.log" &
PID=$!
for _ in $(seq 100); do grep -q "listening" "$DIR/server.log" && break; sleep 0.1; done
PORT=$(grep -o 'listening on [^ ]*' "$DIR/server.log" | head -1 | grep -o '[0-9]*$')
[[ -n $PORT ]] || { cat "$DIR/server.log"; echo "worker-stack: the server did not start" >&2; exit 1; }

# The connections, held until this script closes the client's stdin.
cat >"$DIR/client.py" <<'PY'
import base64, contextlib, ssl, sys, threading
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.sync.client import ClientConnection, connect

port, conns = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
auth = {"Authorization": "Basic " + base64.b64encode(b"bench:bench").decode()}

class Pinged(ClientConnection):
    """Notes the server's first ping (the protocol answers it with a pong)."""
    def __init__(self, *args, **kwargs):
        self.pinged = threading.Event()
        super().__init__(*args, **kwargs)

    def process_event(self, event):
        if getattr(event, "opcode", None) is Opcode.PING:
            self.pinged.set()
        super().process_event(event)

hold = contextlib.ExitStack()

def open_one():
    ws = hold.enter_context(connect(f"wss://127.0.0.1:{port}/echo", ssl=ctx, origin="https://localhost",
                 additional_headers=auth, open_timeout=30, close_timeout=5,
                 ping_interval=None, create_connection=Pinged))
    ws.send("x")  # echoed: a read and a write
    assert ws.recv(timeout=10) == "x"
    assert ws.ping().wait(10), "no pong"  # our ping read, the server's pong written
    return ws

first = open_one()  # over the rate limit: the server closes it, then takes a later connection
try:
    for _ in range(10):
        first.send("x")
    while True:
        first.recv(timeout=10)
except ConnectionClosed as e:
    assert e.rcvd is not None and e.rcvd.code == 1008, e
held = [open_one() for _ in range(conns)]
for ws in held:  # the server's ping written (ping_interval), our pong read
    assert ws.pinged.wait(10), "no ping from the server"
print("READY", flush=True)
sys.stdin.read()
PY
mkfifo "$DIR/hold"
"$PYTHON" "$DIR/client.py" "$PORT" "$CONNS" <"$DIR/hold" >"$DIR/client.log" 2>&1 &
CLIENT=$!
exec 3>"$DIR/hold"
for _ in $(seq 600); do grep -q READY "$DIR/client.log" && break; kill -0 $CLIENT 2>/dev/null || break; sleep 0.1; done
grep -q READY "$DIR/client.log" || { cat "$DIR/client.log" "$DIR/server.log"; echo "worker-stack: the client failed" >&2; exit 1; }
status=0
python3 "$ROOT/scripts/stack-depth.py" $PID --max-kib 8 || status=$?
exec 3>&-
wait $CLIENT || true
exit $status
