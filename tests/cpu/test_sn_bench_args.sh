#!/usr/bin/env bash
# sn_bench's arguments are checked before it looks for a GPU (in builds without CUDA too): a bad
# one exits 2 naming it.
set -uo pipefail
BUILD=$1
BIN=$BUILD/sn_bench
[ -x "$BIN" ] || { echo "SKIP: $BIN not built"; exit 77; }
EXPECT_BIN=$BIN
source "$(dirname "$0")/expect_exit2.sh"
expect "unknown argument" "unknown argument: '--fast'" --fast
expect "--filter without a substring" "--filter needs a SUBSTRING" --quick --filter
expect "options in the usage" "[--idle-gpu]" --nope
exit $fail
