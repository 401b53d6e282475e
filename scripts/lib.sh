# lib.sh — sourced by the measuring scripts once they have set ROOT (the repository's root): the
# binaries they measure with, each built on first use under a 15-minute deadline.
#
#   wsgate_bin   sets BIN: $WSGATE_BIN when set (measured as it is, no build), else
#                target/release/wsgate, built first
#   wsload_bin   sets WSLOAD: the shared harness's load generator ($BENCH, default
#                ../shared/bench), built into $BENCH_TARGET (default target/bench) if absent
wsgate_bin() {
  if [[ -z ${WSGATE_BIN:-} ]]; then
    (cd "$ROOT" && CARGO_TARGET_DIR=$ROOT/target timeout 900 cargo build --release -q)
  fi
  BIN=${WSGATE_BIN:-$ROOT/target/release/wsgate}
}

wsload_bin() {
  local bench=${BENCH:-$ROOT/../shared/bench} target=${BENCH_TARGET:-$ROOT/target/bench}
  WSLOAD=$target/release/wsload
  [[ -x $WSLOAD ]] ||
    (cd "$bench" && CARGO_TARGET_DIR=$target timeout 900 cargo build --release -q -p wsload)
}
