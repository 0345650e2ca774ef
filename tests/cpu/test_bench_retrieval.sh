#!/usr/bin/env bash
# sn_bench_retrieval at toy sizes on the CPU backend: both modes run and pass their own checks
# (unit-norm embeddings, plausible top-k scores), and bad arguments exit 2 naming them.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
BIN=$BUILD/sn_bench_retrieval
[ -x "$BIN" ] || { echo "SKIP: $BIN not built"; exit 77; }
fail=0
out=$("$BIN" --device cpu --threads 2 --queries 16 --docs 3000 --dim 64 --k 10 --embed-docs 32 --doc-len 32 \
      --model-desc "$SRC/configs/default/decoder.json") || { echo "FAIL: toy run: $out"; fail=1; }
echo "$out"
for mode in "search  cpu  16 queries x 3000 docs x 64 dims, k 10" "embed   cpu  32 docs x 32 tokens"; do
  grep -qF "$mode" <<< "$out" || { echo "FAIL: no '$mode' line"; fail=1; }
done
EXPECT_BIN=$BIN
source "$SRC/tests/cpu/expect_exit2.sh"
expect "unknown argument" "unknown argument" --fast
expect "a count that is not a number" "--docs" --docs 1e6
expect "a missing model description" "--model-desc" --embed --model-desc /nonexistent/desc.json
exit $fail
