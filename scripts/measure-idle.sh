#!/usr/bin/env bash
# measure-idle.sh — the idle figures of issue 2: server RSS at start, RSS with N idle TLS
# connections (KiB per connection), and the CPU the server burns over 10 s holding them.
#
#   scripts/measure-idle.sh [CONNS [WORKERS]]        defaults: 200 connections, 210 workers
#   WSGATE_BIN=path/to/wsgate scripts/measure-idle.sh  measure that binary (no build)
#   SMAPS=1 scripts/measure-idle.sh                    also where the RSS is (scripts/smaps-summary.py)
#   CONCURRENCY=8 scripts/measure-idle.sh              at most 8 handshakes in flight (wsload's
#                                                      default is 200): the burst then starts few
#                                                      handshake threads, whose 52 KiB stacks are
#                                                      otherwise part of the figure per connection
#
# Uses the shared harness's load generator (../shared/bench/wsload, built here on first use) to
# open and hold the connections, and reads the server's /proc/PID/status and /proc/PID/stat.
# One login happens first, so the figure per connection excludes the Argon2 working memory
# (19 MiB per permit, allocated at the first login and kept).
set -euo pipefail
CONNS=${1:-200} WORKERS=${2:-210}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"
wsload_bin
wsgate_bin

DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
echo bench | "$BIN" passwd --min-length 1 "$DIR/users" bench 2>/dev/null
PORT=$((20000 + RANDOM % 20000))
. "$ROOT/scripts/idle-config.sh"
write_idle_config "$DIR/wsgate.ini" "listen = 127.0.0.1:$PORT
workers = $WORKERS
max_connections_per_ip = $((CONNS + 10))"
"$BIN" serve --config "$DIR/wsgate.ini" 2>"$DIR/server.log" &
PID=$!
for _ in $(seq 50); do grep -q "listening" "$DIR/server.log" 2>/dev/null && break; ss -ltn | grep -q ":$PORT " && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
ticks() { awk '{print $14 + $15}' /proc/$PID/stat; }
echo "start: RSS $(rss) KiB with $WORKERS workers"
[[ -z ${SMAPS:-} ]] || python3 "$ROOT/scripts/smaps-summary.py" $PID
"$WSLOAD" idle --url "wss://127.0.0.1:$PORT/echo" --conns 1 --hold 0 --origin https://localhost \
  --user bench --pass bench >/dev/null 2>&1
echo "after one login: RSS $(rss) KiB"
"$WSLOAD" idle --url "wss://127.0.0.1:$PORT/echo" --conns "$CONNS" --hold 13 --origin https://localhost \
  --user bench --pass bench --server-pid $PID ${CONCURRENCY:+--concurrency $CONCURRENCY} >"$DIR/idle.json" 2>"$DIR/wsload.log" &
LOAD=$!
until grep -q READY "$DIR/wsload.log" 2>/dev/null; do sleep 0.2; done
sleep 1
t0=$(ticks); r0=$(rss)
[[ -z ${SMAPS:-} ]] || python3 "$ROOT/scripts/smaps-summary.py" $PID
sleep 10
t1=$(ticks)
wait $LOAD
echo "with $CONNS idle connections: RSS $r0 KiB"
echo "CPU over 10 s holding them: $((t1 - t0)) ticks of $(getconf CLK_TCK)/s (/proc/$PID/stat utime+stime)"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("wsload: opened %d, per connection %.1f KiB, server CPU %.1f%%, dropped %d, errors %d %s" % (r["opened"], r["per_conn_kib"], r["server_cpu_pct"], r["dropped"], r["errors"], r["error_kinds"] or ""))' "$DIR/idle.json"
