#!/usr/bin/env bash
# sn_eval --bm25's refusals exit 2 naming the flag: an empty corpus, a model flag or a run file with
# --bm25, BM25 options without it, k1 and b out of range or not numbers, no --data. Then
# sn_bench_bm25's (bad counts, a missing folder) and one small run of it.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
EXPECT_BIN=$BUILD/sn_eval
[ -x "$EXPECT_BIN" ] || { echo "FAIL: $EXPECT_BIN not built"; exit 1; }
source "$SRC/tests/cpu/expect_exit2.sh"
mkdir -p "$WORK/data/qrels" "$WORK/empty/qrels"
echo '{"_id": "d1", "title": "", "text": "a small corpus"}' > "$WORK/data/corpus.jsonl"
echo '{"_id": "q1", "text": "small"}' | tee "$WORK/data/queries.jsonl" > "$WORK/empty/queries.jsonl"
printf 'query-id\tcorpus-id\tscore\nq1\td1\t1\n' | tee "$WORK/data/qrels/test.tsv" > "$WORK/empty/qrels/test.tsv"
: > "$WORK/empty/corpus.jsonl"
D=$WORK/data

expect "empty corpus" "corpus.jsonl: no records" --bm25 --data "$WORK/empty"
expect "--bm25 with --query-model" "--query-model does not go with it" --bm25 --data "$D" --query-model "$D"
expect "--bm25 with --load-doc-emb" "--load-doc-emb does not go with it" --bm25 --data "$D" --load-doc-emb x
expect "--bm25 with --device" "--device does not go with it" --device cpu --bm25 --data "$D"
expect "--bm25 with --run" "does not go with --run/--qrels" --bm25 --run x --qrels y
expect "--bm25 without --data" "--bm25 expects --data BEIR_DIR" --bm25
expect "--no-stem without --bm25" "--no-stem is a BM25 option: it goes with --bm25" --data "$D" --no-stem
expect "--bm25-b without --bm25" "--bm25-b is a BM25 option" --data "$D" --bm25-b 0.5
expect "negative k1" "--bm25-k1: expected a decimal number in [0, inf], got '-1'" --bm25 --data "$D" --bm25-k1 -1
expect "k1 not a number" "--bm25-k1: expected a decimal number" --bm25 --data "$D" --bm25-k1 abc
expect "k1 nan" "--bm25-k1: expected a decimal number" --bm25 --data "$D" --bm25-k1 nan
expect "b above 1" "--bm25-b: expected a decimal number in [0, 1], got '1.5'" --bm25 --data "$D" --bm25-b 1.5
expect "b negative" "--bm25-b: expected a decimal number in [0, 1]" --bm25 --data "$D" --bm25-b -0.1
expect "k1 without a value" "--bm25-k1: expected a value after it" --bm25 --data "$D" --bm25-k1
# and the good case runs
"$EXPECT_BIN" --bm25 --data "$D" --quiet --bm25-k1 0 --bm25-b 1 > "$WORK/out.txt" 2>&1 ||
  { echo "FAIL: a good --bm25 run: $(cat "$WORK/out.txt")"; fail=1; }

EXPECT_BIN=$BUILD/sn_bench_bm25
[ -x "$EXPECT_BIN" ] || { echo "FAIL: $EXPECT_BIN not built"; exit 1; }
expect "bench: negative --docs" "--docs: expected" --docs -5
expect "bench: --threads 0" "--threads: expected" --threads 0
expect "bench: --data a file" "expected a folder" --docs 0 --data "$D/corpus.jsonl"
expect "bench: --data missing" "no_such_dir" --docs 0 --data "$WORK/no_such_dir"
"$EXPECT_BIN" --docs 500 --threads 2 --data "$D" > "$WORK/bench.txt" 2>&1 &&
  grep -q "^synthetic .* 500 docs" "$WORK/bench.txt" && grep -q "^beir .* 1 docs" "$WORK/bench.txt" ||
  { echo "FAIL: a small sn_bench_bm25 run: $(cat "$WORK/bench.txt")"; fail=1; }
exit $fail
