#!/usr/bin/env bash
# echo-cost.sh — issue 17's benchmark figure: server CPU per echoed message with the memory cap on
# (memory_limit = 256MiB) and off (memory_limit = 0), in one run, alternating rounds so both see
# the same machine. Builds the release binary and examples/echo_cost.rs, pins the two servers to
# CPU 0 and the client to CPU 1. Not a test: run nothing else meanwhile.
#
#   scripts/echo-cost.sh [CONNS] [SECS] [ROUNDS]      defaults: 50 5 3
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -q --bin wsgate --example echo_cost
exec taskset -c 1 target/release/examples/echo_cost "$@"
