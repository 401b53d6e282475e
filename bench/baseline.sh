#!/usr/bin/env bash
# baseline.sh REV — builds wsgate as of git revision REV (a commit, a tag, `main`) in a throw-away
# worktree, release profile, into target/bench-baseline, and prints the binary's path: the
# `wsgate-before` of run-peers.sh and churn.sh. The worktree is removed however the build ends.
set -euo pipefail
(($# == 1)) || { echo "usage: $0 REV" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
echo "building wsgate at $1 (the baseline)" >&2
BASE_TREE=$(mktemp -d /tmp/wsgate-baseline.XXXXXX)
git -C "$ROOT" worktree add -q --detach "$BASE_TREE" "$1"
trap 'git -C "$ROOT" worktree remove --force "$BASE_TREE" 2>/dev/null || true' EXIT
(cd "$BASE_TREE" && CARGO_TARGET_DIR=$ROOT/target/bench-baseline cargo build --release -q) >&2
echo "$ROOT/target/bench-baseline/release/wsgate"
