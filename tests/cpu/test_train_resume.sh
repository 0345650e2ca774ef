#!/usr/bin/env bash
# Both stages end to end on the CPU backend, and exact resume: N steps + resume + N steps must equal
# 2N steps straight (same losses in metrics.jsonl, byte-identical final weights), for stage 1 and
# stage 2 (with pseudo-queries, which are picked by the step alone); the towers written must load in
# transformers where it is installed. Also stage 1 with wider towers, whose optimizer state crosses
# the state file's chunk edges.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
python3 "$SRC/tests/synth_data.py" "$WORK/data" --examples 96 --test-queries 16

cat > "$WORK/cfg.json" <<JSON
{"run_dir": "run", "seed": 5, "threads": 2,
 "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 24, "doc_prompt": "{title} {text}"},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1,
                           "intermediate": 64, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "batch_queries": 8, "negatives_per_query": 1, "steps": 8, "symmetric": true,
            "optim": {"lr": 1e-3, "warmup_steps": 2}},
 "stage2": {"student_desc": {"arch": "bert", "layers": 1, "hidden": 16, "heads": 2, "intermediate": 32,
                             "vocab": 4096, "max_positions": 64},
            "tokenizer": "$SRC/configs/default/student/tokenizer.json",
            "batch_queries": 8, "steps": 6, "gamma": 0.5, "optim": {"lr": 1e-3, "warmup_steps": 2},
            "pseudo_queries": {"from": "both", "per_batch": 6, "max": 100, "words": 6}},
 "checkpoint": {"every": 2, "keep": 2},
 "eval": {"data": "data/test"}}
JSON
# Straight run.
"$BUILD/sn_train" --config cfg.json --set run_dir=straight > straight.out 2> straight.log || { cat straight.log; exit 1; }
# Interrupted in stage 1 (after 3 steps), resumed, interrupted in stage 2, resumed.
"$BUILD/sn_train" --config cfg.json --set run_dir=resumed --stop-after 3 2> r1.log || { cat r1.log; exit 1; }
grep -q "stopped before the end" r1.log || { echo "FAIL: no stop message"; cat r1.log; exit 1; }
[ ! -d resumed/final/query_tower ] || { echo "FAIL: stage 1 finished although stopped"; exit 1; }
"$BUILD/sn_train" --config cfg.json --set run_dir=resumed --resume auto --stop-after 8 2> r2.log || { cat r2.log; exit 1; }
grep -q "resume: stage 1, step" r2.log || { echo "FAIL: did not resume stage 1"; cat r2.log; exit 1; }
"$BUILD/sn_train" --config cfg.json --set run_dir=resumed --resume auto > resumed.out 2> r3.log || { cat r3.log; exit 1; }
grep -q "resume: stage 2, step" r3.log || { echo "FAIL: did not resume stage 2"; cat r3.log; exit 1; }

fail=0
# Final towers byte for byte; metrics step for step (without elapsed_s and mem_peak_gib, which
# describe the process, not the training).
source "$SRC/tests/cpu/tiny_run.sh"
same_run straight resumed "straight vs resumed" || fail=1
[ "$(wc -l < straight/metrics.jsonl)" = 14 ] || { echo "FAIL: expected 14 metric lines"; fail=1; }
for f in loss_stage1.svg loss_stage2.svg config.resolved.json eval/untrained.json eval/stage1.json eval/student.json; do
  [ -s "straight/$f" ] || { echo "FAIL: straight/$f missing"; fail=1; }
done
grep -q "stage 2: 100 pseudo-queries (both), 6 a batch" straight.log || { echo "FAIL: no pseudo-queries"; fail=1; }
grep -q "student / teacher" straight.out || { echo "FAIL: no side-by-side eval table"; cat straight.out; fail=1; }
# Only the newest 2 checkpoints are kept.
[ "$(ls -d resumed/ckpt-* | wc -l)" = 2 ] || { echo "FAIL: expected 2 checkpoints kept: $(ls resumed)"; fail=1; }
# Stage 1 with towers of 1.2M parameters: the optimizer state (master, m, v) spans two of the
# state file's 4 MiB chunks each, so the streamed write and the ranged restore cross a chunk edge.
WIDE=(--stage 1 --set 'stage1.model_desc={"arch": "qwen2", "layers": 1, "hidden": 256, "heads": 4, "kv_heads": 2,
                                            "intermediate": 64, "vocab": 4096}' --set stage1.steps=4)
"$BUILD/sn_train" --config cfg.json "${WIDE[@]}" --set run_dir=wide-straight 2> w1.log || { cat w1.log; exit 1; }
"$BUILD/sn_train" --config cfg.json "${WIDE[@]}" --set run_dir=wide-resumed --stop-after 2 2> w2.log || { cat w2.log; exit 1; }
"$BUILD/sn_train" --config cfg.json "${WIDE[@]}" --set run_dir=wide-resumed --resume auto 2> w3.log ||
  { cat w3.log; exit 1; }
grep -q "resume: stage 1, step 2" w3.log || { echo "FAIL: the wide run did not resume at step 2"; fail=1; }
state=$(ls wide-resumed/ckpt-1-2/state.bin 2>/dev/null || ls wide-resumed/ckpt-1-*/state.bin | head -1)
[ "$(stat -c %s "$state")" -gt $((3 * 4 * 1024 * 1024)) ] || { echo "FAIL: $state is smaller than 3 chunks"; fail=1; }
same_run wide-straight wide-resumed "wide towers, straight vs resumed" || fail=1
[ $fail = 0 ] && echo "test_train_resume: straight and resumed runs are identical"
exit $fail
