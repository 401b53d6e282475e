#!/usr/bin/env bash
# Conformance: runs the Autobahn|Testsuite fuzzing-client cases 1-10 (the runner `kosoku`, from
# PyPI) against wsgate's echo channel on a plaintext loopback listener, summarises each case's
# result into one stable line, and compares the summary with autobahn/expected.txt. Exits non-zero
# on any difference, printing the diff.
#
#   bash autobahn/run.sh            # run and compare (CI)
#   bash autobahn/run.sh --update   # run and rewrite autobahn/expected.txt (review the diff!)
#
# Everything it writes (config, server log, kosoku's HTML/JSON reports, the summary) goes to
# $CARGO_TARGET_DIR/autobahn (target/autobahn by default); open reports/index.html there to read a
# case's wire log.
set -euo pipefail
cd "$(dirname "$0")/.."

update=false
case "${1:-}" in
  --update) update=true ;;
  "") ;;
  *) echo "usage: bash autobahn/run.sh [--update]" >&2; exit 2 ;;
esac

# The runner: its console script, or the same entry point through python3 when the script's
# directory is not on PATH (pyenv without a rehash, pip --user).
if command -v kosoku >/dev/null 2>&1; then
  kosoku=(kosoku)
elif python3 -c 'import kosoku' 2>/dev/null; then
  kosoku=(python3 -c 'import sys; from kosoku._cli import main; sys.argv[0] = "kosoku"; main()')
else
  echo "autobahn: kosoku not found (python3 -m pip install kosoku)" >&2; exit 1
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet
bin="$target/release/wsgate"
work="$target/autobahn"
rm -rf "$work"
mkdir -p "$work"
work="$(cd "$work" && pwd)"

# A throw-away config: plaintext on loopback (port 0: the server picks a free one and logs it),
# one anonymous echo channel, and limits opened up so that every case measures the protocol, not
# our policy. Autobahn sends no credentials and no Origin. Section 9 sends messages of up to
# 16 MiB, some in 65536 fragments of 64 bytes, and 1000 messages back to back.
: >"$work/users"
chmod 600 "$work/users"
cat >"$work/wsgate.ini" <<'INI'
[server]
listen = 127.0.0.1:0
tls = off
workers = 8
queue = 8
max_connections_per_ip = 16

[origins]
allow_missing = true

[auth]
users_file = users
session_ttl = 0
max_failures = 0

[limits]
# Section 9: 16 MiB messages and frames (9.1.6, 9.2.6); the echo must fit the write buffer.
max_message_size = 16MiB
max_frame_size = 16MiB
read_buffer_size = 64KiB
write_buffer_size = 128KiB
max_write_buffer_size = 33MiB
# 9.3.1 and 9.4.1 split a 4 MiB message into 65536 fragments of 64 bytes.
max_fragments = 1000000
message_timeout = 120s
write_timeout = 120s
max_messages_per_sec = 0
max_bytes_per_sec = 0

[log]
level = info

[channel:/echo]
mode = echo
anonymous = true

[role:anonymous]
subscribe = /echo
publish = /echo
INI

# The log exists before the loop below reads it (a background job opens its redirections later).
: >"$work/wsgate.log"
"$bin" serve --config "$work/wsgate.ini" 2>>"$work/wsgate.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

addr=""
for _ in $(seq 200); do
  addr="$(sed -n 's/.*listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$work/wsgate.log" | head -n1)"
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || { echo "autobahn: wsgate did not start:" >&2; cat "$work/wsgate.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "autobahn: wsgate did not start in 20 s:" >&2; cat "$work/wsgate.log" >&2; exit 1; }
echo "autobahn: $($bin --version) on ws://$addr/echo; kosoku $(python3 -c 'import importlib.metadata as m; print(m.version("kosoku"))' 2>/dev/null || echo '?')"

# kosoku exits 1 when any case failed; the comparison below decides.
started=$SECONDS
set +e
timeout 900 "${kosoku[@]}" -m fuzzingclient "ws://$addr/echo" -x '12.*' -x '13.*' -o "$work/reports" \
  >"$work/kosoku.log" 2>&1
status=$?
set -e
echo "autobahn: kosoku exited $status after $((SECONDS - started)) s (log: $work/kosoku.log)"
if [ ! -f "$work/reports/index.json" ]; then
  echo "autobahn: no report written" >&2; tail -n 20 "$work/kosoku.log" >&2; exit 1
fi
if ! kill -0 "$server" 2>/dev/null; then
  echo "autobahn: wsgate died during the run:" >&2; tail -n 20 "$work/wsgate.log" >&2; exit 1
fi
if grep -q "panicked" "$work/wsgate.log"; then
  echo "autobahn: wsgate panicked:" >&2; grep -B2 -A5 "panicked" "$work/wsgate.log" >&2; exit 1
fi

python3 autobahn/summarize.py "$work/reports/index.json" >"$work/summary.txt"
python3 autobahn/summarize.py --table "$work/reports/index.json"

if $update; then
  cp "$work/summary.txt" autobahn/expected.txt
  echo "autobahn: wrote autobahn/expected.txt"
  exit 0
fi
if ! diff -u autobahn/expected.txt "$work/summary.txt"; then
  echo "autobahn: results differ from autobahn/expected.txt (reports: $work/reports/index.html)" >&2
  exit 1
fi
echo "autobahn: $(grep -c . autobahn/expected.txt) cases as expected"
