#!/usr/bin/env bash
# sn_bench's arguments are checked before it looks for a GPU (in builds without CUDA too): a bad
# one exits 2 naming it.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
BIN=$BUILD/sn_bench
[ -x "$BIN" ] || { echo "SKIP: $BIN not built"; exit 77; }
EXPECT_BIN=$BIN
source "$SRC/tests/cpu/expect_exit2.sh"
expect "unknown argument" "unknown argument: '--fast'" --fast
expect "--filter without a substring" "--filter needs a SUBSTRING" --quick --filter
expect "options in the usage" "[--idle-gpu]" --nope
exit $fail
