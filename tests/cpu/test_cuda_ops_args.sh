#!/usr/bin/env bash
# test_cuda_ops's own arguments are checked before it looks for a GPU: a bad one exits 2 naming it.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
BIN=$BUILD/tests/test_cuda_ops
[ -x "$BIN" ] || { echo "SKIP: $BIN not built (no CUDA toolkit)"; exit 77; }
EXPECT_BIN=$BIN
source "$SRC/tests/cpu/expect_exit2.sh"
expect "unknown op group" "unknown op group: 'nope'" --only nope
expect "group list in the usage" "GROUP: elementwise embedding norms matmul attention pooling" --only nope
expect "--only without a group" "--only needs a GROUP" --quick --only
expect "unknown argument" "unknown argument: '--fast'" --fast
exit $fail
