#!/usr/bin/env bash
# sn_bench's arguments are checked before it looks for a GPU: a bad one exits 2 naming it.
set -uo pipefail
BUILD=$1
BIN=$BUILD/sn_bench
[ -x "$BIN" ] || { echo "SKIP: $BIN not built"; exit 77; }
if "$BIN" --help 2>&1 | grep -q "built without CUDA"; then echo "SKIP: sn_bench built without CUDA"; exit 77; fi
EXPECT_BIN=$BIN
source "$(dirname "$0")/expect_exit2.sh"
expect "unknown argument" "unknown argument: '--fast'" --fast
expect "--filter without a substring" "--filter needs a SUBSTRING" --quick --filter
expect "options in the usage" "[--idle-gpu]" --nope
exit $fail
