#!/usr/bin/env bash
# echo-instructions.sh — the user-space instructions the server spends per echoed message, under
# callgrind: deterministic where CPU time on this shared VM varies by ±15 %. Two runs of a fresh
# server, a 1-connection echo of 32-byte text messages for D1 and for D2 seconds; per message is
# the difference of the two totals over the difference of the messages, so start-up, the login and
# the handshake cancel out. Kernel time (the syscalls) is not counted.
#
#   scripts/echo-instructions.sh [D1 D2]              defaults: 2 5; builds the release binary
#   WSGATE_BIN=path/to/wsgate scripts/echo-instructions.sh   measure that binary (no build)
#
# Needs valgrind; uses the shared harness's load generator as scripts/measure-idle.sh does.
set -euo pipefail
D1=${1:-2} D2=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"
wsload_bin
wsgate_bin
. "$ROOT/scripts/idle-config.sh"

# One fresh server under callgrind, echoed at for $1 seconds: "INSTRUCTIONS MESSAGES".
run() {
  local dir port pid ir n
  dir=$(mktemp -d)
  echo bench | "$BIN" passwd --min-length 1 "$dir/users" bench 2>/dev/null
  port=$((20000 + RANDOM % 20000))
  write_idle_config "$dir/wsgate.ini" "listen = 127.0.0.1:$port
workers = 8"
  sed -i 's/^mode = echo$/mode = echo\nmax_messages_per_sec = 0\nmax_bytes_per_sec = 0/' "$dir/wsgate.ini"
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$BIN" serve --config "$dir/wsgate.ini" \
    2>"$dir/valgrind.log" &
  pid=$!
  for _ in $(seq 300); do ss -ltn | grep -q ":$port " && break; sleep 0.1; done
  "$WSLOAD" echo --url "wss://127.0.0.1:$port/echo" --conns 1 --size 32 --duration "$1" --timeout 60 \
    --origin https://localhost --user bench --pass bench --ramp 0 >"$dir/echo.json" 2>/dev/null
  kill -TERM $pid
  wait $pid || true
  ir=$(grep -E '^(summary|totals):' "$dir/cg.out" | head -1 | awk '{print $2}')
  n=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["msgs"])' "$dir/echo.json")
  rm -rf "$dir"
  echo "$ir $n"
}
read -r ir1 n1 < <(run "$D1")
read -r ir2 n2 < <(run "$D2")
echo "$BIN: $(( (ir2 - ir1) / (n2 - n1) )) instructions per echoed message ($n1 and $n2 messages)"
