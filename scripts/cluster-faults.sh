#!/bin/sh
# cluster-faults.sh — issue 15's figures: how many cross-instance broadcasts one instance loses
# (and gets twice or out of order) across a fault of the Redis backbone, measured black-box with
# a real redis-server and two instances (tests/cluster.rs, measure_cross_instance_loss_under_a_fault).
#
#     scripts/cluster-faults.sh [FAULT...]     default: reconnect freeze restart restart-idle
#
# reconnect     every subscriber link is killed (CLIENT KILL) and reconnects
# freeze        Redis is stopped (SIGSTOP) for 10 s, then continued
# restart       Redis is killed and started again at once (no persistence)
# restart-idle  the same, while the publishing instance publishes nothing until 5 s after it
#
# B publishes 100 messages a second for 3 s, the fault, then 10 s more; a client on A counts.
set -eu
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "needs redis-server on PATH" >&2; exit 1; }
[ $# -gt 0 ] || set -- reconnect freeze restart restart-idle
cargo test -q --test cluster --no-run 2>/dev/null
for fault in "$@"; do
    WSGATE_FAULT=$fault cargo test -q --test cluster -- --ignored --exact \
        measure_cross_instance_loss_under_a_fault --nocapture 2>&1 | grep -E '^(fault|killed)'
done
