#!/usr/bin/env bash
# profile.sh — where wsgate's CPU goes in one benchmark scenario, with `perf record` (sampling;
# works in this KVM guest without hardware counters) and `perf stat` (context switches, faults).
#
#   bench/profile.sh echo50|echo1|bcast1000|connect [SECONDS]        default 3 s of samples
#
# Builds a symbolised release binary (same profile, not stripped, line tables) under
# target/prof, runs it on the harness contract (bench/wsgate-peer.sh) pinned to CPU 0 with the
# load pinned to CPU 1 and idle spinners on both (as run.sh does), samples the server while the
# scenario runs, and prints the split kernel / wsgate / libc, the top symbols, the share spent
# under each syscall, and context switches and page faults per operation. Output and perf.data
# go to target/bench/profile/. Loopback only, bounded in time.
set -euo pipefail
SCENARIO=${1:?usage: $0 echo50|echo1|bcast1000|connect [SECONDS]}
SECS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$(cd "$ROOT/../shared/bench" && pwd)}
OUT=$ROOT/target/bench/profile
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf not found (apt install linux-perf)" >&2; exit 1; }

CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  CARGO_TARGET_DIR=$ROOT/target/prof cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
WSLOAD=$ROOT/target/bench/release/wsload
[[ -x $WSLOAD ]] || (cd "$BENCH" && CARGO_TARGET_DIR=$ROOT/target/bench cargo build --release -q -p wsload)

TMP=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
for cpu in 0 1; do
  taskset -c "$cpu" chrt --idle 0 timeout 300 bash -c 'while :; do :; done' &
  PIDS+=($!)
done
PORT=$((20000 + RANDOM % 20000))
PORT=$PORT CERT=$TMP/cert.pem KEY=$TMP/key.pem WSGATE_BIN=$ROOT/target/prof/release/wsgate \
  WSGATE_PEER_DIR=$TMP/peer taskset -c 0 "$ROOT/bench/wsgate-peer.sh" >"$OUT/server.log" 2>&1 &
SERVER=$!
PIDS+=($SERVER)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

COMMON=(--origin https://localhost --user bench --pass bench --server-pid "$SERVER" --max-time 120)
E=wss://127.0.0.1:$PORT/echo
case $SCENARIO in
  echo50) LOAD=(echo --url "$E" --conns 50 --size 32 --duration $((SECS + 3))) ;;
  echo1) LOAD=(echo --url "$E" --conns 1 --size 32 --duration $((SECS + 3))) ;;
  bcast1000) LOAD=(broadcast --url "wss://127.0.0.1:$PORT/broadcast" --subs 1000 --rate 100 --size 64
                   --duration $((SECS + 6))) ;;
  connect) LOAD=(connect --url "$E" --total $((SECS * 6000)) --concurrency 16) ;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac
taskset -c 1 "$WSLOAD" connect --url "$E" --total 200 --concurrency 16 "${COMMON[@]}" >/dev/null 2>&1
taskset -c 1 "$WSLOAD" "${LOAD[@]}" "${COMMON[@]}" >"$OUT/$SCENARIO.json" 2>/dev/null &
LOADER=$!
# Sample once the load is steady (broadcast: after its 1000 subscribers have connected).
[[ $SCENARIO == bcast1000 ]] && sleep 4 || sleep 1
perf stat -e task-clock,context-switches,page-faults -p "$SERVER" -o "$OUT/$SCENARIO.stat" -- sleep "$SECS" &
perf record -q -g -p "$SERVER" -o "$OUT/$SCENARIO.perf.data" -- sleep "$SECS" 2>/dev/null
wait "$!" 2>/dev/null || true
wait "$LOADER" || true

report() {
  perf report -i "$OUT/$SCENARIO.perf.data" --stdio "$@" 2>/dev/null | grep -v '^#' | grep -v '^$' |
    sed 's/ *- *- *$//' || true
}
{
  echo "== $SCENARIO: $(cat "$OUT/$SCENARIO.json")"
  echo "== samples by binary"
  report --no-children --sort dso -g none | head -5
  echo "== top symbols (self)"
  report --no-children --sort symbol -g none | head -25
  echo "== share under each syscall / the scheduler (children)"
  report --children --sort symbol -g none |
    grep -E '\] (__x64_sys_[a-z0-9_]+|schedule)$' | head -12 || true
  echo "== perf stat over the same ${SECS} s"
  grep -E 'task-clock|context-switches|page-faults' "$OUT/$SCENARIO.stat"
} | tee "$OUT/$SCENARIO.txt"
python3 - "$OUT/$SCENARIO.json" "$OUT/$SCENARIO.stat" "$SECS" <<'EOF' | tee -a "$OUT/$SCENARIO.txt"
import json, re, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
rate = r.get("msgs_per_s") or r.get("deliveries_per_s") or r.get("handshakes_per_s")
stat = open(sys.argv[2]).read()
def grab(name):
    m = re.search(r"([\d,.]+)\s+(msec\s+)?" + name, stat)
    return float(m.group(1).replace(",", "")) if m else None
secs = float(sys.argv[3])
ops = rate * secs if rate else None
if ops:
    cs, pf, ms = grab("context-switches"), grab("page-faults"), grab("task-clock")
    print(f"== per operation ({rate:,.0f}/s): CPU {ms * 1000 / ops:.2f} µs, "
          f"context switches {cs / ops:.2f}, page faults {pf / ops:.2f}")
EOF
