#!/usr/bin/env bash
# wsgate under the shared harness's contract (../shared/bench/README.md): the harness sets PORT,
# CERT and KEY; this writes a throw-away config for them (user bench/bench, /echo and /broadcast,
# Origin https://localhost) and execs the release binary. Limits that would refuse the harness's
# load on purpose (per-IP cap: every client is 127.0.0.1; message rates; the pre-auth budget for
# 2000 handshakes at concurrency 16) are opened up; everything else is at its default.
# WSGATE_HISTORY=N keeps the last N broadcasts of /broadcast (docs/history.md; default 0: none,
# and then the key is left out so that a baseline older than history reads the config).
set -euo pipefail
: "${PORT:?} ${CERT:?} ${KEY:?}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${WSGATE_BIN:-$ROOT/target/release/wsgate}
DIR=${WSGATE_PEER_DIR:-$(mktemp -d /tmp/wsgate-peer.XXXXXX)}
mkdir -p "$DIR"
# The harness's password is shorter than `wsgate passwd`'s minimum: --min-length 1 (a baseline
# binary older than that option takes the password as it is).
[[ -s $DIR/users ]] || printf 'bench\n' | "$BIN" passwd --min-length 1 "$DIR/users" bench 2>/dev/null \
  || printf 'bench\n' | "$BIN" passwd "$DIR/users" bench 2>/dev/null
cat >"$DIR/wsgate.ini" <<INI
[server]
listen = 127.0.0.1:$PORT
workers = ${WSGATE_WORKERS:-1100}
queue = 64
max_pre_auth = $(( ${WSGATE_WORKERS:-1100} < 256 ? ${WSGATE_WORKERS:-1100} : 256 ))
max_connections_per_ip = 4096
[tls]
cert = $CERT
key = $KEY
[origins]
allow = https://localhost
[auth]
users_file = users
max_failures = 0
[limits]
max_messages_per_sec = 0
max_bytes_per_sec = 0
[log]
level = warn
[channel:/echo]
mode = echo
[channel:/broadcast]
mode = broadcast
$( [[ ${WSGATE_HISTORY:-0} -gt 0 ]] && echo "history_size = $WSGATE_HISTORY" )
outbox = $(( ${WSGATE_HISTORY:-0} > 64 ? ${WSGATE_HISTORY:-0} : 64 ))
[role:bench]
members = *
subscribe = /echo, /broadcast
publish = /echo, /broadcast
INI
exec "$BIN" serve --config "$DIR/wsgate.ini"
