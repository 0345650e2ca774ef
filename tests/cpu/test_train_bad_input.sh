#!/usr/bin/env bash
# sn_train's bad input: each case exits 2 before training with a message naming the problem.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
source "$SRC/tests/cpu/bad_input_setup.sh"
EXPECT_BIN=$BUILD/sn_train
source "$SRC/tests/cpu/expect_exit2.sh"
expect "unknown key" "did you mean 'stage1.temperature'" --config base.json --set stage1.temprature=0.1
expect "missing config" "nope.json" --config nope.json
expect "missing model folder" "stage1.model" --config base.json --set stage1.model_desc= --set stage1.model=/nonexistent/model
expect "vocabulary larger than the embedding table" "embedding table" --config base.json \
  --set 'stage1.model_desc={"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "vocab": 1000}'
expect "stage 2 without a teacher" "stage-1 teacher" --config base.json --stage 2
# two CPU ranks started without MPI and without the TCP communicator's rendezvous address
RANK=0 WORLD_SIZE=2 expect "CPU ranks without MPI or MASTER_ADDR" "set MASTER_ADDR and MASTER_PORT" --config base.json
expect "negative replica-check interval" "dist.check_replicas_every' must be in [0," --config base.json \
  --set dist.check_replicas_every=-1
expect "ZeRO stage out of range" "dist.zero' must be in [0, 2]" --config base.json --set dist.zero=3
expect "dist.zero1 alias contradicting dist.zero" "'dist.zero1' is true but 'dist.zero' is 2" --config base.json \
  --set dist.zero1=true --set dist.zero=2
expect "missing training file" "data.train" --config base.json --set 'data.train=["missing.jsonl"]'
expect "more negatives than the data has" "negative" --config base.json --set stage1.negatives_per_query=1000
expect "batch larger than the data" "batch" --config base.json --set stage1.batch_queries=1000
expect "bad --stage" "--stage" --config base.json --stage 3
expect "misspelt pseudo-query key" "did you mean 'stage2.pseudo_queries.from'" --config base.json \
  --set stage2.pseudo_queries.form=titles
expect "unknown pseudo-query source" "stage2.pseudo_queries.from" --config base.json \
  --set stage2.pseudo_queries.from=headings
expect "no pseudo-queries a batch" "'stage2.pseudo_queries.per_batch' must be in [1," --config base.json \
  --set stage2.pseudo_queries.per_batch=0
# Titles asked of documents that have none: stage 1 runs (1 step), stage 2 exits 2 naming the key.
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    ex = json.loads(line)
    ex["pos"] = [d["text"] if isinstance(d, dict) else d for d in ex["pos"]]
    print(json.dumps(ex))' data/train.jsonl > untitled.jsonl
expect "titles of untitled documents" "stage2.pseudo_queries.from = titles" --config base.json \
  --set run_dir=untitled --set 'data.train=["untitled.jsonl"]' --set stage2.pseudo_queries.from=titles
printf '{"query": "x", "pos": []}\n' > bad.jsonl
expect "empty pos list" "bad.jsonl:1" --config base.json --set 'data.train=["bad.jsonl"]'
# --skip-bad-lines: bad lines are skipped and counted; a file with no valid line stays an error.
cat data/train.jsonl bad.jsonl > mixed.jsonl
echo '{"query": 3, "pos": ["x"]}' >> mixed.jsonl
out=$("$BUILD/sn_train" --config base.json --stage 1 --skip-bad-lines --set run_dir=skip --set 'data.train=["mixed.jsonl"]' 2>&1) ||
  { echo "FAIL: --skip-bad-lines run: $out"; fail=1; }
grep -q "skipped 2" <<<"$out" || grep -q "2 bad line" <<<"$out" || { echo "FAIL: skipped lines not reported: $(grep -i skip <<<"$out")"; fail=1; }
expect "no valid line even when skipping" "bad.jsonl" --config base.json --skip-bad-lines --set 'data.train=["bad.jsonl"]'
exit $fail
