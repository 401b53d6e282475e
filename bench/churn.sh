#!/usr/bin/env bash
# churn.sh — broadcast latency to 1,000 subscribers while connections join and leave the same
# path: the shared harness's `wsload broadcast --subs 1000 --rate 100 --size 64` (10 s; BCAST_RATE
# sets another rate, for a machine where wsload cannot take 100,000 deliveries a second), once on
# a quiet server and once while bench/churn.py opens 50 connections a second that each stay 1 s
# and leave (50 joins and 50 leaves a second). Server pinned to CPU 0, load (wsload and the churn)
# to CPU 1, as run.sh does; no idle spinners (compare only runs made the same way).
#
#   bench/churn.sh [--repeat N] [--baseline REV] [--peer node-ws]      defaults: --repeat 2
#
# Measures this tree's release build as `wsgate`; --baseline REV also builds wsgate as of REV in a
# throw-away worktree and measures it as `wsgate-before` (or WSGATE_BEFORE_BIN=PATH names a release
# binary built already); --peer node-ws measures the harness's
# Node.js `ws` peer the same way (as run-peers.sh builds it), for a ratio. Prints one table;
# JSON lines in target/bench/results/churn-*.jsonl. Run nothing else on the machine meanwhile.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$(cd "$ROOT/../shared/bench" && pwd)}
export CARGO_TARGET_DIR=$ROOT/target/bench
RESULTS=$CARGO_TARGET_DIR/results
mkdir -p "$RESULTS"
REPEAT=2 BASELINE='' PEERS=()
while (($#)); do
  case $1 in
    --repeat) REPEAT=$2; shift 2 ;;
    --baseline) BASELINE=$2; shift 2 ;;
    --peer) PEERS+=("$2"); shift 2 ;;
    *) echo "usage: $0 [--repeat N] [--baseline REV] [--peer node-ws]" >&2; exit 2 ;;
  esac
done
SUBS=1000 RATE=${BCAST_RATE:-100} SIZE=64 DURATION=10 CHURN_RATE=50 CHURN_HOLD=1
# The churn covers wsload's whole run: its subscribers' ramp, 10 s of publishing, the drain.
CHURN_SECS=20

echo "building wsgate and wsload" >&2
(cd "$ROOT" && CARGO_TARGET_DIR=$ROOT/target cargo build --release -q)
(cd "$BENCH" && cargo build --release -q -p wsload)
WSLOAD=$CARGO_TARGET_DIR/release/wsload
SERVERS=("wsgate=env WSGATE_BIN=$ROOT/target/release/wsgate $ROOT/bench/wsgate-peer.sh")
if [[ -n ${WSGATE_BEFORE_BIN:-} ]]; then
  SERVERS+=("wsgate-before=env WSGATE_BIN=$WSGATE_BEFORE_BIN $ROOT/bench/wsgate-peer.sh")
elif [[ -n $BASELINE ]]; then
  SERVERS+=("wsgate-before=env WSGATE_BIN=$("$ROOT/bench/baseline.sh" "$BASELINE") $ROOT/bench/wsgate-peer.sh")
fi
for peer in "${PEERS[@]}"; do
  case $peer in
    node-ws)
      NODE_PEER=$CARGO_TARGET_DIR/node-ws
      if [[ ! -d $NODE_PEER/node_modules ]]; then
        rm -rf "$NODE_PEER" && cp -r "$BENCH/peers/node-ws" "$NODE_PEER"
        (cd "$NODE_PEER" && npm ci --silent --no-audit --no-fund)
      fi
      SERVERS+=("node-ws=node $NODE_PEER/server.js --port \$PORT --cert \$CERT --key \$KEY") ;;
    *) echo "unknown peer $peer (node-ws)" >&2; exit 2 ;;
  esac
done

TMP=$(mktemp -d /tmp/wsgate-churn.XXXXXX)
SERVER_PID='' CHURN_PID=''
descendants() { local c; for c in $(pgrep -P "$1" || true); do echo "$c"; descendants "$c"; done; }
stop_server() {
  [[ -n $SERVER_PID ]] || return 0
  local pids
  pids=("$SERVER_PID" $(descendants "$SERVER_PID"))
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=''
}
stop_churn() {
  [[ -n $CHURN_PID ]] || return 0
  kill "$CHURN_PID" 2>/dev/null || true
  wait "$CHURN_PID" 2>/dev/null || true
  CHURN_PID=''
}
trap 'stop_churn; stop_server; rm -rf "$TMP"' EXIT
ulimit -Sn "$(ulimit -Hn)" # 1,000 subscribers, the churn and the publisher
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
export CERT=$TMP/cert.pem KEY=$TMP/key.pem
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$RESULTS/churn-$STAMP.jsonl
for rep in $(seq "$REPEAT"); do
  for entry in "${SERVERS[@]}"; do
    name=${entry%%=*} cmd=${entry#*=}
    for churn in 0 1; do
      PORT=$(free_port)
      export PORT
      WSGATE_PEER_DIR=$TMP/$name taskset -c 0 bash -c "exec $cmd" >"$TMP/server.log" 2>&1 &
      SERVER_PID=$!
      for _ in $(seq 100); do port_open && break; sleep 0.1; done
      port_open || { cat "$TMP/server.log" >&2; echo "$name did not listen" >&2; exit 1; }
      url=wss://127.0.0.1:$PORT/broadcast
      if ((churn)); then
        taskset -c 1 python3 "$ROOT/bench/churn.py" --url "$url" --rate $CHURN_RATE \
          --hold $CHURN_HOLD --duration $CHURN_SECS >"$TMP/churn.json" &
        CHURN_PID=$!
        sleep 2 # the churn at its steady state before the subscribers come
      fi
      line=$(taskset -c 1 "$WSLOAD" broadcast --url "$url" --subs $SUBS --rate $RATE \
        --size $SIZE --duration $DURATION --origin https://localhost --user bench --pass bench \
        --server-pid "$SERVER_PID")
      churn_json=null
      if ((churn)); then
        wait "$CHURN_PID" || true
        CHURN_PID=''
        churn_json=$(cat "$TMP/churn.json" 2>/dev/null || echo null)
        [[ -n $churn_json ]] || churn_json=null
      fi
      stop_server
      printf '{"server":"%s","rep":%s,"churn":%s,"wsload":%s}\n' \
        "$name" "$rep" "$churn_json" "$line" >>"$OUT"
      echo "$name rep $rep churn=$churn done" >&2
    done
  done
done

python3 - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"results: {sys.argv[1]}\n")
print("| server | churn (joins/s, failures) | rep | p50 µs | p99 µs | max µs | lost | server CPU % |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    w, c = r["wsload"], r["churn"]
    lat = w.get("latency_us") or {}
    churn = "none" if c is None else f'{c["joins"] / c["duration"]:.0f}/s, {c["failures"]} failed'
    print(f'| {r["server"]} | {churn} | {r["rep"]} | {lat.get("p50")} | {lat.get("p99")} | '
          f'{lat.get("max")} | {w.get("lost")} | {w.get("server_cpu_pct")} |')
EOF
