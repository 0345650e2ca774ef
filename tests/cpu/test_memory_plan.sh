#!/usr/bin/env bash
# The memory plan (sn_train --plan, host/train/train_plan.c):
# - on the CPU backend it counts exactly what the stages allocate: the planned bytes of stage 1 and
#   stage 2 equal the allocator's high-water mark, for plain towers, shared towers, gradient caching
#   with recomputation, LoRA towers (with dropout), score distillation (kd_weight), stage 2's
#   pseudo-queries and a student cut from the teacher, and (with mpirun) ZeRO-1 and ZeRO-2 on 2 ranks;
# - a run that cannot fit (7B towers on this machine) exits 2 before loading anything, with the
#   figures and what would make it fit; --world N plans for N ranks.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
# Long texts: every query and document fills its max length, the length the plan assumes.
python3 "$SRC/tests/synth_data.py" data --examples 64 --test-queries 4 --query-words 40 --doc-words 160 >/dev/null
cat > cfg.json <<JSON
{"run_dir": "run", "seed": 5, "threads": 2,
 "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 24},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": 32, "heads": 2, "kv_heads": 1,
                           "intermediate": 64, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "batch_queries": 8, "negatives_per_query": 1, "steps": 2, "symmetric": true},
 "stage2": {"student_desc": {"arch": "bert", "layers": 1, "hidden": 16, "heads": 2, "intermediate": 32,
                             "vocab": 4096, "max_positions": 64},
            "tokenizer": "$SRC/configs/default/student/tokenizer.json",
            "batch_queries": 8, "steps": 2, "gamma": 0.5}}
JSON
fail=0
# planned == measured for each stage in a run's log: "stage N: memory peak ... (...; M and P bytes)"
check_exact() {
  local what=$1 log=$2 n=0
  while read -r stage measured planned; do
    n=$((n + 1))
    if [ "$measured" != "$planned" ]; then echo "FAIL: $what stage $stage: measured $measured bytes, planned $planned"; fail=1
    else echo "ok: $what stage $stage: planned = measured = $planned bytes"; fi
  done < <(sed -n 's/.*stage \([0-9]\): memory peak .*; \([0-9]*\) and \([0-9]*\) bytes).*/\1 \2 \3/p' "$log")
  [ $n -ge 1 ] || { echo "FAIL: $what: no memory-peak line"; cat "$log"; fail=1; }
}
run() {  # run NAME ARGS...
  local name=$1; shift
  "$BUILD/sn_train" --config cfg.json --set run_dir=$name "$@" > $name.out 2> $name.log || { cat $name.log; exit 1; }
  check_exact "$name" $name.log
}
run plain
run shared --stage 1 --set stage1.shared_towers=true
run gc-recompute --stage 1 --set stage1.grad_cache_chunk=4 --set stage1.recompute=layer
run lora --stage 1 --set stage1.lora.rank=4 --set stage1.lora.dropout=0.1
# Stage 2's pseudo-queries (rows beside the queries) and a student cut from the teacher.
run pseudo --set stage2.pseudo_queries.from=both --set stage2.pseudo_queries.per_batch=4
run cut --set stage2.student_desc= --set stage2.tokenizer= --set stage2.pooling=last --set stage2.student_from_teacher=1
# Score distillation's buffers (teacher scores, its loss): every line scored, with a hard negative.
python3 - <<'PY'
import json
lines = [json.loads(l) for l in open("data/train.jsonl")]
with open("scored.jsonl", "w") as f:
    for i, ex in enumerate(lines):
        ex["neg"] = ex.get("neg") or [lines[(i + 1) % len(lines)]["pos"][0]]
        ex["pos_scores"], ex["neg_scores"] = [1.0] * len(ex["pos"]), [0.5] * len(ex["neg"])
        f.write(json.dumps(ex) + "\n")
PY
run kd --stage 1 --set stage1.kd_weight=1 --set 'data.train=["scored.jsonl"]'
grep -q "memory plan: peak" plain.log || { echo "FAIL: no plan line in the run's log"; fail=1; }
# recomputation must hold less than the plain towers
plain_b=$(sed -n 's/.*stage 1: memory peak .*; \([0-9]*\) and.*/\1/p' plain.log)
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=r --set stage1.recompute=layer 2> r.log >/dev/null
rec_b=$(sed -n 's/.*stage 1: memory peak .*; \([0-9]*\) and.*/\1/p' r.log)
[ "$rec_b" -lt "$plain_b" ] && echo "ok: recompute = layer: $rec_b < $plain_b bytes" ||
  { echo "FAIL: recompute holds $rec_b bytes, plain $plain_b"; fail=1; }
if command -v mpirun >/dev/null; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  timeout 300 mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=z1 \
    --set dist.zero1=true --set threads=1 > z1.out 2> z1.log || { cat z1.log; exit 1; }
  check_exact "zero1-2ranks" z1.log
  timeout 300 mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=z2 \
    --set dist.zero=2 --set threads=1 > z2.out 2> z2.log || { cat z2.log; exit 1; }
  check_exact "zero2-2ranks" z2.log
else
  echo "skip: ZeRO-1 plan check (mpirun not installed)"
fi

# --plan: the table, exit 0, nothing written
"$BUILD/sn_train" --config cfg.json --set run_dir=planonly --plan > plan.out
grep -q "stage 1 training" plan.out && grep -q "Adam moments" plan.out && grep -q "peak:" plan.out ||
  { echo "FAIL: --plan output"; cat plan.out; fail=1; }
[ ! -e planonly ] && echo "ok: --plan exits 0 and writes nothing" || { echo "FAIL: --plan created the run folder"; fail=1; }
"$BUILD/sn_train" --config cfg.json --plan --world 8 | grep -q "8 ranks)" && echo "ok: --world 8" ||
  { echo "FAIL: --world 8 not planned"; fail=1; }

# 7B towers cannot fit here: exit 2 before loading, with what would make it fit
set +e  # expect_exit2.sh checks exit statuses itself
fail_before=$fail
source "$SRC/tests/cpu/expect_exit2.sh"
fail=$fail_before
EXPECT_BIN="$BUILD/sn_train"
SEVEN_B='{"arch": "qwen2", "layers": 28, "hidden": 3584, "heads": 28, "kv_heads": 4, "intermediate": 18944, "vocab": 152064}'
expect "--world 0" "--world: expected a whole decimal integer in [1," --config cfg.json --plan --world 0
expect "--memory abc" "--memory: expected a decimal number in" --config cfg.json --plan --memory abc
expect "--world without --plan" "--world and --memory are for --plan only" --config cfg.json --world 8
expect "stage1.recompute = sometimes" "stage1.recompute" --config cfg.json --plan --set stage1.recompute=sometimes
expect "7B towers on this machine" "what would fit" --config cfg.json --stage 1 --set "stage1.model_desc=$SEVEN_B"
out=$("$BUILD/sn_train" --config cfg.json --stage 1 --plan --set "stage1.model_desc=$SEVEN_B" 2>&1); rc=$?
[ $rc = 2 ] && grep -q "what would make it fit" <<<"$out" && grep -q "ranks.*all but LoRA" <<<"$out" &&
  echo "ok: --plan of 7B towers: exit 2 with suggestions" || { echo "FAIL: --plan 7B: rc $rc"; echo "$out"; fail=1; }
[ ! -e run ] || { echo "FAIL: an unfit run wrote its folder"; fail=1; }
exit $fail
