#!/usr/bin/env bash
# run-peers.sh — one command for the comparison: builds wsgate, the harness's load generator and
# its two peers (Node.js `ws`, tokio-tungstenite), runs the shared scenario set against all three
# (server pinned to CPU 0, load to CPU 1, spinners on), and prints one comparison table.
#
#   bench/run-peers.sh [--repeat N] [--only REGEX]        defaults: --repeat 2
#
# Needs Node 20+, openssl, taskset (run.sh's own requirements). Results (JSON lines, logs) go to
# target/bench/results; the harness folder itself is never written. Run nothing else meanwhile.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$(cd "$ROOT/../shared/bench" && pwd)}
export CARGO_TARGET_DIR=$ROOT/target/bench
export BENCH_RESULTS=$CARGO_TARGET_DIR/results
mkdir -p "$BENCH_RESULTS"
REPEAT=2 ONLY=()
while (($#)); do
  case $1 in
    --repeat) REPEAT=$2; shift 2 ;;
    --only) ONLY=(--only "$2"); shift 2 ;;
    *) echo "usage: $0 [--repeat N] [--only REGEX]" >&2; exit 2 ;;
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

stamp=$(date +%Y%m%d-%H%M%S)
run() {  # NAME COMMAND
  local out=$BENCH_RESULTS/$1-$stamp.jsonl
  # run.sh ends with its own per-server report, which can stumble over a result line without a
  # steal figure (a connect run shorter than one sampling tick); the results are complete by then.
  "$BENCH/run.sh" --name "$1" --repeat "$REPEAT" "${ONLY[@]}" --out "$out" --server "$2" >/dev/null ||
    grep -q '"scenario": *"peak-rss"' "$out" || { echo "run.sh failed for $1" >&2; exit 1; }
}
run wsgate "$ROOT/bench/wsgate-peer.sh"
run node-ws "node $NODE_PEER/server.js --port \$PORT --cert \$CERT --key \$KEY"
run tokio-ws "$CARGO_TARGET_DIR/release/tokio-ws --port \$PORT --cert \$CERT --key \$KEY"
python3 "$BENCH/report.py" --compare "$BENCH_RESULTS"/{wsgate,node-ws,tokio-ws}-"$stamp".jsonl
