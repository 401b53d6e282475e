#!/usr/bin/env bash
# measure-watch.sh — what the file watcher costs an idle server: CPU ticks (utime+stime, 1/100 s)
# and system calls over 30 s, at [tls] reload_check_interval 1s (the default) and 60s.
#
#   scripts/measure-watch.sh                           builds and measures target/release/wsgate
#   WSGATE_BIN=path/to/wsgate scripts/measure-watch.sh measure that binary (no build)
#
# Needs strace (Debian: strace), which counts the server's system calls while attached.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"
wsgate_bin
command -v strace >/dev/null || { echo "measure-watch.sh needs strace (apt-get install strace)" >&2; exit 1; }
DIR=$(mktemp -d)
PID=
trap 'if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; fi; rm -rf "$DIR"' EXIT
printf 'watch-password\n' | "$BIN" passwd "$DIR/users" watch 2>/dev/null
for iv in 1s 60s; do
  cat >"$DIR/wsgate-$iv.ini" <<INI
[server]
listen = 127.0.0.1:0
[tls]
self_signed = true
cert = cert-$iv.pem
key = key-$iv.pem
reload_check_interval = $iv
[auth]
users_file = users
[channel:/echo]
mode = echo
[role:all]
members = *
subscribe = /echo
publish = /echo
INI
  "$BIN" serve "$DIR/wsgate-$iv.ini" 2>/dev/null &
  PID=$!
  sleep 3 # started, certificate generated
  before=$(awk '{print $14 + $15}' "/proc/$PID/stat")
  timeout 30 strace -c -f -p "$PID" -o "$DIR/strace-$iv.txt" >/dev/null 2>&1 || true
  after=$(awk '{print $14 + $15}' "/proc/$PID/stat")
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PID=
  calls=$(awk '/total$/ {print $4}' "$DIR/strace-$iv.txt")
  stats=$(awk '$NF == "statx" || $NF == "newfstatat" {n += $4} END {print n + 0}' "$DIR/strace-$iv.txt")
  echo "reload_check_interval $iv: $((after - before)) CPU ticks and ${calls:-0} system calls (${stats} stat) in 30 s idle"
done
