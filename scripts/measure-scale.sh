#!/usr/bin/env bash
# measure-scale.sh — issue 7's "scale" figure: one wsgate process holding N concurrent idle TLS
# connections on loopback. Prints RSS at start, RSS with N connections held, KiB per connection,
# server CPU while they idle, and thread counts (workers = N + 100, started as needed).
#
#   scripts/measure-scale.sh [--json] [N [HOLD_SECS]]  defaults: 10000 connections, held 20 s
#   WSGATE_BIN=path/to/wsgate scripts/measure-scale.sh   measure that binary (no build)
#   SMAPS=1 scripts/measure-scale.sh                     also where the RSS is (smaps-summary.py)
#   WORKER_STACK=64KiB RAMP=1000                         the defaults here (small worker stacks:
#     10,000 of them are 640 MiB of address space, of which only the touched pages are resident)
# --json: the figures as one JSON line on stdout (for bench/run-peers.sh), the report on stderr.
#
# Raises the open-files limit (soft to hard) for itself, the server and the load generator, and
# checks the kernel limits N threads and connections need. Uses the shared harness's `wsload`
# (../shared/bench, built on first use into BENCH_TARGET or target/bench). Bounded: every wait
# has a timeout, wsload has --max-time, and the server is stopped by PID on exit.
set -euo pipefail
JSON=0
if [[ ${1:-} == --json ]]; then
  JSON=1
  shift
  exec 3>&1 1>&2
fi
N=${1:-10000} HOLD=${2:-20}
((HOLD >= 15)) || { echo "measure-scale: HOLD_SECS must be at least 15 (the idle CPU is sampled over 10 s)" >&2; exit 1; }
WORKERS=$((N + 100))
RAMP=${RAMP:-1000}
WORKER_STACK=${WORKER_STACK:-64KiB} HANDSHAKE_STACK=${HANDSHAKE_STACK:-192KiB}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"

fail() { echo "measure-scale: $*" >&2; exit 1; }
warn() { echo "measure-scale: warning: $*" >&2; }

# --- limits -------------------------------------------------------------------------------
# The server holds a socket per echo connection (broadcast ones also hold an eventfd, their hub
# wake-up), plus a few of its own (stdio, listener, stop eventfd, ...); wsload a socket per
# connection.
need_fds=$((N + 64))
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < need_fds)); then
  # Root (CAP_SYS_RESOURCE) may raise the hard limit, up to fs.nr_open.
  ulimit -Hn "$need_fds" 2>/dev/null && hard=$need_fds
fi
if [[ $hard != unlimited ]] && ((hard < need_fds)); then
  fail "open-files hard limit is $hard, need $need_fds for $N connections (1 per echo connection); at most $((hard - 64)) fit; raise it (ulimit -Hn as root, LimitNOFILE=, /etc/security/limits.conf) or measure fewer"
fi
ulimit -Sn "$hard"
echo "open files: soft limit raised to $(ulimit -Sn) (need $need_fds)"
threads_needed=$((WORKERS + 300))
nproc_limit=$(ulimit -u)
if [[ $nproc_limit != unlimited ]] && ((nproc_limit < threads_needed)); then
  ulimit -Su "$(ulimit -Hu)" 2>/dev/null || true
  nproc_limit=$(ulimit -u)
  [[ $nproc_limit == unlimited ]] || ((nproc_limit >= threads_needed)) ||
    fail "max user processes (ulimit -u) is $nproc_limit; $WORKERS workers need about $threads_needed threads"
fi
check_kernel() { # name file needed why
  local have
  have=$(cat "$2")
  if ((have < $3)); then
    warn "$1 = $have is below $3 ($4); raise it: sysctl -w $1=$3"
    return 1
  fi
  echo "kernel $1 = $have (need >= $3)"
}
ok=1
check_kernel kernel.threads-max /proc/sys/kernel/threads-max "$threads_needed" "one thread per worker" || ok=0
check_kernel kernel.pid_max /proc/sys/kernel/pid_max "$((threads_needed + 1000))" "every thread takes a pid" || ok=0
# Per thread: stack + guard page, Rust's signal stack + guard page; plus libraries and arenas.
check_kernel vm.max_map_count /proc/sys/vm/max_map_count "$((4 * threads_needed + 1000))" "4 mappings per thread" || ok=0
read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
((hi - lo > N + 1000)) || { warn "net.ipv4.ip_local_port_range $lo-$hi has fewer than $N ports for the client side"; ok=0; }
((ok)) || fail "kernel limits too low for $N connections (see the warnings above)"

# --- binaries -----------------------------------------------------------------------------
wsload_bin
wsgate_bin

DIR=$(mktemp -d)
PID=
cleanup() {
  [[ -z $PID ]] || kill "$PID" 2>/dev/null || true
  [[ -z $PID ]] || timeout 20 tail --pid="$PID" -f /dev/null 2>/dev/null || true
  [[ -n ${KEEP:-} ]] && echo "kept $DIR" || rm -rf "$DIR"
}
trap cleanup EXIT
echo bench | "$BIN" passwd --min-length 1 "$DIR/users" bench 2>/dev/null
PORT=$((20000 + RANDOM % 20000))
. "$ROOT/scripts/idle-config.sh"
write_idle_config "$DIR/wsgate.ini" "listen = 127.0.0.1:$PORT
workers = $WORKERS
queue = 64
max_pre_auth = 256
max_connections_per_ip = $((N + 100))
worker_stack_size = $WORKER_STACK
handshake_stack_size = $HANDSHAKE_STACK
shutdown_grace = 2s"

alive() { kill -0 "$PID" 2>/dev/null || fail "the server exited: $(tail -3 "$DIR/server.log")"; }
rss() { alive && awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
threads() { alive && awk '/^Threads/ {print $2}' "/proc/$PID/status"; }
ticks() { alive && awk '{print $14 + $15}' "/proc/$PID/stat"; }

t0=$(date +%s.%N)
"$BIN" serve --config "$DIR/wsgate.ini" 2>"$DIR/server.log" &
PID=$!
# Started when the port listens (workers start as connections need them).
for _ in $(seq 1200); do
  alive
  ss -ltn "sport = :$PORT" | grep -q LISTEN && break
  sleep 0.05
done
t1=$(date +%s.%N)
ss -ltn "sport = :$PORT" | grep -q LISTEN || fail "the server did not listen within 60 s"
sleep 1
start_rss=$(rss)
start_cpu=$(ticks)
awk -v s="$(echo "$t1 - $t0" | bc)" -v w="$WORKERS" -v ws="$WORKER_STACK" -v hs="$HANDSHAKE_STACK" -v th="$(threads)" -v r="$start_rss" -v c="$start_cpu" \
  'BEGIN { printf "start: listening after %.2f s (workers = %d, stacks %s / handshake %s), %d threads, RSS %d KiB, CPU %d ticks\n", s, w, ws, hs, th, r, c }'
[[ -z ${SMAPS:-} ]] || python3 "$ROOT/scripts/smaps-summary.py" "$PID"

C=(--origin https://localhost --user bench --pass bench)
timeout 60 "$WSLOAD" idle --url "wss://127.0.0.1:$PORT/echo" --conns 1 --hold 0 "${C[@]}" >/dev/null 2>&1 ||
  fail "one login failed (see $DIR/server.log)"
login_rss=$(rss)
echo "after one login (Argon2 working memory kept): RSS $login_rss KiB"

# wsload opens N at --ramp per second, prints READY, holds them HOLD s, closes them.
MAXT=$((N / RAMP + HOLD + 120))
timeout $((MAXT + 30)) "$WSLOAD" idle --url "wss://127.0.0.1:$PORT/echo" --conns "$N" --hold "$HOLD" \
  --ramp "$RAMP" --max-time "$MAXT" --server-pid "$PID" "${C[@]}" >"$DIR/idle.json" 2>"$DIR/wsload.log" &
LOAD=$!
for _ in $(seq $((MAXT * 5))); do
  grep -q READY "$DIR/wsload.log" 2>/dev/null && break
  kill -0 "$LOAD" 2>/dev/null || break
  sleep 0.2
done
grep -q READY "$DIR/wsload.log" || { wait "$LOAD" || true; cat "$DIR/idle.json" "$DIR/wsload.log" >&2; fail "wsload did not open the connections"; }
sleep 2
alive
held_rss=$(rss) held_threads=$(threads)
c0=$(ticks)
sleep 10
c1=$(ticks)
[[ -z ${SMAPS:-} ]] || python3 "$ROOT/scripts/smaps-summary.py" "$PID"
wait "$LOAD" || true
hz=$(getconf CLK_TCK)
echo "with $N idle connections: RSS $held_rss KiB, $held_threads threads"
awk -v a="$held_rss" -v b="$login_rss" -v n="$N" 'BEGIN { printf "per connection: %.1f KiB (RSS growth over the RSS after one login)\n", (a - b) / n }'
awk -v t=$((c1 - c0)) -v hz="$hz" 'BEGIN { printf "server CPU while idle: %d ticks in 10 s = %.2f %% of one core\n", t, 100 * t / hz / 10 }'
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("wsload: opened %d in %.1f s, per connection %.1f KiB, dropped %d, errors %d %s" % (r["opened"], r.get("open_secs", 0), r["per_conn_kib"], r["dropped"], r["errors"], r["error_kinds"] or ""))' "$DIR/idle.json"
if ((JSON)); then
  python3 - "$DIR/idle.json" "$N" "$held_rss" "$login_rss" "$start_rss" "$held_threads" "$((c1 - c0))" "$hz" >&3 <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
n, held, login, start, threads, ticks, hz = map(int, sys.argv[2:])
print(json.dumps({"server": "wsgate", "scenario": f"scale-{n}", "rep": 1, "conns": n,
                  "held": r["opened"] - r["dropped"], "errors": r["errors"],
                  "rss_start_kib": start, "rss_login_kib": login, "rss_kib": held,
                  "per_conn_kib": round((held - login) / n, 1), "threads": threads,
                  "server_cpu_pct": round(100 * ticks / hz / 10, 2)}))
EOF
fi
