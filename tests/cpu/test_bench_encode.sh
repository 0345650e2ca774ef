#!/usr/bin/env bash
# sn_bench_encode on the CPU, small: a fresh tower from a description and an export folder, two
# batch sizes, a line of p50/p99/throughput each; an anchor script's rows are printed beside ours of
# the same shape and batch (a stand-in for ../shared/bench/torch_compiled_extra.py, whose shape names
# the description's file name gives); the temporary export of the fresh tower is removed; two handles
# streaming at once (--handles 2) give one line; a bad --handles is exit 2 naming it.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
mkdir tmp shapes
# Named as the 0.5B description, so that the anchor's "0.5B" rows match it.
echo '{"arch": "qwen2", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "intermediate": 64, "vocab": 512}' \
  > shapes/qwen2.5-0.5b.json
cat > anchor.py <<'PY'
import json
print(json.dumps({"work": "serve", "size": "0.5B", "B": 1, "Lq": 8, "latency_ms": 1000.0}))
print(json.dumps({"work": "serve", "size": "0.5B", "B": 64, "Lq": 8, "latency_ms": 1.0}))
PY
python3 "$SRC/tests/synth_data.py" data --examples 16 --test-queries 2 > /dev/null
"$BUILD/sn_train" --set run_dir=run --set 'data.train=["data/train.jsonl"]' \
  --set 'stage1.model_desc={"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1, "vocab": 4096}' \
  --set "stage1.tokenizer=$SRC/configs/default/decoder/tokenizer.json" --set stage1.batch_queries=4 \
  --set stage1.steps=1 --stage 1 2> train.log || { cat train.log; exit 1; }
TMPDIR=$WORK/tmp "$BUILD/sn_bench_encode" --device cpu --model-desc shapes/qwen2.5-0.5b.json \
  --model run/final/query_tower --batches 1,64 --len 8 --queries 64 --warmup 1 --threads 1 \
  --anchor anchor.py > out.txt 2> err.txt || { cat out.txt err.txt; exit 1; }
cat out.txt
[ "$(grep -c '^encode  cpu  .* a call; .* a query; [0-9]* queries/s$' out.txt)" = 4 ] ||
  { echo "FAIL: expected 4 encode lines (2 towers x 2 batch sizes)"; exit 1; }
grep -q '^encode  cpu  shapes/qwen2.5-0.5b.json  batch 64 x 8 tokens: p50 ' out.txt || { echo "FAIL: no batch-64 line"; exit 1; }
grep -q '^anchor  torch.compile(reduce-overhead)  0.5B  batch 1: 1000.000 ms a call  | sn p50 .* faster$' out.txt ||
  { echo "FAIL: the anchor's batch-1 row is not compared with ours"; exit 1; }
grep -q '^anchor  torch.compile(reduce-overhead)  0.5B  batch 64: 1.000 ms a call  | sn p50 .* slower$' out.txt ||
  { echo "FAIL: the anchor's batch-64 row is not compared with ours"; exit 1; }
# Two handles streaming at once, a thread each: one line for both, the anchor left out.
"$BUILD/sn_bench_encode" --device cpu --model run/final/query_tower --batches 4 --len 8 --queries 32 --warmup 1 \
  --threads 1 --handles 2 > handles.txt 2>> err.txt || { cat handles.txt err.txt; exit 1; }
cat handles.txt
grep -q '^encode  cpu x2 handles  run/final/query_tower  batch 4 x 8 tokens: p50 .* [0-9]* queries/s$' handles.txt ||
  { echo "FAIL: no line for two handles"; exit 1; }
for bad in 0 65 two; do  # a count of 1 to 64, else exit 2 naming the flag
  "$BUILD/sn_bench_encode" --device cpu --handles "$bad" > /dev/null 2> bad.txt &&
    { echo "FAIL: --handles $bad ran"; exit 1; }
  [ $? = 2 ] && grep -q "^error: --handles: expected a whole decimal integer in \[1, 64\], got '$bad'" bad.txt ||
    { echo "FAIL: --handles $bad:"; cat bad.txt; exit 1; }
done
[ -z "$(ls tmp)" ] || { echo "FAIL: the fresh tower's export was left in TMPDIR: $(ls tmp)"; exit 1; }
echo "ok"
