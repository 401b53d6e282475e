#!/usr/bin/env bash
# run-peers.sh — one command for the comparison: builds wsgate, the harness's load generator and
# its two peers (Node.js `ws`, tokio-tungstenite), runs the shared scenario set against all three
# (server pinned to CPU 0, load to CPU 1, spinners on), and prints one comparison table.
#
#   bench/run-peers.sh [--repeat N] [--only REGEX] [--no-extra] [--no-scale] [--baseline REV]
#                                                                    defaults: --repeat 2
#
# --baseline REV also builds wsgate as of git revision REV (a commit, a tag, `main`) in a
# throw-away worktree and measures it as `wsgate-before` in the same run, beside today's tree:
# a before/after table closes the report. --no-scale skips the start-up footprint and the
# 10,000-connection run (the long handshake runs stay).
#
# Besides run.sh's scenario set, each server also runs `connect-20000-c16` (20,000 full handshakes
# at concurrency 16: long enough for the server's CPU to be sampled, which run.sh's 2000 are not),
# and wsgate's start-up footprint (RSS after start with the default 64 workers, binary size) and
# `scripts/measure-scale.sh` (10,000 idle TLS connections) are recorded; `--no-extra` skips them.
# bench/targets.py then prints every target of issue 7 with the figures and ratios of this run.
#
# Needs Node 20+, openssl, taskset (run.sh's own requirements). Results (JSON lines, logs) go to
# target/bench/results; the harness folder itself is never written. Run nothing else meanwhile.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$(cd "$ROOT/../shared/bench" && pwd)}
export CARGO_TARGET_DIR=$ROOT/target/bench
export BENCH_RESULTS=$CARGO_TARGET_DIR/results
mkdir -p "$BENCH_RESULTS"
REPEAT=2 ONLY=() EXTRA=1 SCALE=1 BASELINE=''
while (($#)); do
  case $1 in
    --repeat) REPEAT=$2; shift 2 ;;
    --only) ONLY=(--only "$2"); shift 2 ;;
    --no-extra) EXTRA=0; shift ;;
    --no-scale) SCALE=0; shift ;;
    --baseline) BASELINE=$2; shift 2 ;;
    *) echo "usage: $0 [--repeat N] [--only REGEX] [--no-extra] [--no-scale] [--baseline REV]" >&2
       exit 2 ;;
  esac
done

echo "building wsgate, wsload and tokio-ws" >&2
(cd "$ROOT" && CARGO_TARGET_DIR=$ROOT/target cargo build --release -q)
(cd "$BENCH" && cargo build --release -q -p wsload -p tokio-ws)
NODE_PEER=$CARGO_TARGET_DIR/node-ws
if [[ ! -d $NODE_PEER/node_modules ]]; then
  rm -rf "$NODE_PEER" && cp -r "$BENCH/peers/node-ws" "$NODE_PEER"
  (cd "$NODE_PEER" && npm ci --silent --no-audit --no-fund)
fi

BEFORE_BIN=''
[[ -z $BASELINE ]] || BEFORE_BIN=$("$ROOT/bench/baseline.sh" "$BASELINE")

stamp=$(date +%Y%m%d-%H%M%S)
run() {  # NAME COMMAND
  local out=$BENCH_RESULTS/$1-$stamp.jsonl
  # run.sh ends with its own per-server report, which can stumble over a result line without a
  # steal figure (a connect run shorter than one sampling tick); the results are complete by then.
  "$BENCH/run.sh" --name "$1" --repeat "$REPEAT" "${ONLY[@]}" --out "$out" --server "$2" >/dev/null ||
    grep -q '"scenario": *"peak-rss"' "$out" || { echo "run.sh failed for $1" >&2; exit 1; }
}
WSLOAD=$CARGO_TARGET_DIR/release/wsload
EXTRA_OUT=$BENCH_RESULTS/extra-$stamp.jsonl
: >"$EXTRA_OUT"
TMP=$(mktemp -d)
SPIN_PIDS=()
trap 'kill "${SPIN_PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

# connect-20000-c16 for one server, run.sh's way: server pinned to CPU 0, wsload to CPU 1, idle
# spinners on both CPUs, one warm-up of 500 handshakes, then REPEAT measured runs.
handshakes() {  # NAME COMMAND
  local port=$((20000 + RANDOM % 20000)) pid rep line
  for cpu in 0 1; do
    taskset -c "$cpu" chrt --idle 0 timeout 600 bash -c 'while :; do :; done' &
    SPIN_PIDS+=($!)
  done
  PORT=$port CERT=$TMP/cert.pem KEY=$TMP/key.pem taskset -c 0 bash -c "exec $2" \
    >"$BENCH_RESULTS/$1-$stamp.connect.server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  local common=(--url "wss://127.0.0.1:$port/echo" --origin https://localhost --user bench --pass bench
                --concurrency 16 --timeout 10 --max-time 120)
  taskset -c 1 "$WSLOAD" connect --total 500 "${common[@]}" >/dev/null 2>&1 || true
  for rep in $(seq "$REPEAT"); do
    line=$(taskset -c 1 "$WSLOAD" connect --total 20000 "${common[@]}" --server-pid "$pid" \
      --tag server="$1" --tag scenario=connect-20000-c16 --tag rep="$rep" 2>/dev/null) ||
      line="{\"server\":\"$1\",\"scenario\":\"connect-20000-c16\",\"rep\":$rep,\"error\":\"wsload failed\"}"
    echo "$line" >>"$EXTRA_OUT"
    sleep 1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  kill "${SPIN_PIDS[@]}" 2>/dev/null || true
  wait "${SPIN_PIDS[@]}" 2>/dev/null || true
  SPIN_PIDS=()
}

# wsgate's start-up footprint: the harness config with the default 64 workers, RSS one second
# after the port opens (nothing connected), and the size of the stripped binary.
startup() {
  local port=$((20000 + RANDOM % 20000)) pid rss
  PORT=$port CERT=$TMP/cert.pem KEY=$TMP/key.pem WSGATE_WORKERS=64 WSGATE_PEER_DIR=$TMP/startup \
    "$ROOT/bench/wsgate-peer.sh" >"$BENCH_RESULTS/wsgate-$stamp.startup.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  sleep 1
  read -r rss anon file < <(awk '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2}
    END {print r, a, f}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '{"server":"wsgate","scenario":"startup","rep":1,"workers":64,"rss_kib":%d,"rss_anon_kib":%d,"rss_file_kib":%d,"binary_bytes":%d}\n' \
    "$rss" "$anon" "$file" "$(stat -c %s "$ROOT/target/release/wsgate")" >>"$EXTRA_OUT"
}

run wsgate "$ROOT/bench/wsgate-peer.sh"
[[ -z $BEFORE_BIN ]] || run wsgate-before "env WSGATE_BIN=$BEFORE_BIN $ROOT/bench/wsgate-peer.sh"
run node-ws "node $NODE_PEER/server.js --port \$PORT --cert \$CERT --key \$KEY"
run tokio-ws "$CARGO_TARGET_DIR/release/tokio-ws --port \$PORT --cert \$CERT --key \$KEY"
if ((EXTRA)); then
  echo "extra: connect-20000-c16 for each server, wsgate start-up, 10,000 idle connections" >&2
  handshakes wsgate "$ROOT/bench/wsgate-peer.sh"
  handshakes node-ws "node $NODE_PEER/server.js --port \$PORT --cert \$CERT --key \$KEY"
  handshakes tokio-ws "$CARGO_TARGET_DIR/release/tokio-ws --port \$PORT --cert \$CERT --key \$KEY"
  [[ -z $BEFORE_BIN ]] ||
    handshakes wsgate-before "env WSGATE_BIN=$BEFORE_BIN $ROOT/bench/wsgate-peer.sh"
fi
if ((EXTRA && SCALE)); then
  startup
  if [[ -x $ROOT/scripts/measure-scale.sh ]]; then
    "$ROOT/scripts/measure-scale.sh" --json 10000 >>"$EXTRA_OUT" ||
      echo "measure-scale.sh failed; the scale target is reported as not measured" >&2
  fi
fi
BEFORE_OUT=()
[[ -z $BEFORE_BIN ]] || BEFORE_OUT=("$BENCH_RESULTS/wsgate-before-$stamp.jsonl")
python3 "$BENCH/report.py" --compare "$BENCH_RESULTS"/{wsgate,node-ws,tokio-ws}-"$stamp".jsonl \
  "${BEFORE_OUT[@]}"
echo
python3 "$ROOT/bench/targets.py" "$BENCH_RESULTS"/{wsgate,node-ws,tokio-ws}-"$stamp".jsonl "$EXTRA_OUT" \
  "${BEFORE_OUT[@]}"
