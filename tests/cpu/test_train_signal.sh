#!/usr/bin/env bash
# Preemption: SIGTERM (or SIGUSR1, as Slurm sends before the time limit) finishes the step in
# progress, writes a checkpoint and exits 0; --resume auto then completes the run, which ends
# identical to an uninterrupted one.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
python3 "$SRC/tests/synth_data.py" data --examples 256 --test-queries 2
cat > cfg.json <<JSON
{"seed": 4, "threads": 1, "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 24},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2,
                           "intermediate": 128, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json", "batch_queries": 16, "steps": 400}}
JSON
fail=0
for sig in TERM USR1; do
  "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=run-$sig 2> log-$sig &
  pid=$!
  for _ in $(seq 600); do  # wait until a few steps are done (at most 60 s)
    [ -f run-$sig/metrics.jsonl ] && [ "$(wc -l < run-$sig/metrics.jsonl)" -ge 3 ] && break
    sleep 0.1
  done
  kill -$sig $pid
  set +e; wait $pid; rc=$?; set -e
  steps=$(wc -l < run-$sig/metrics.jsonl)
  ckpt=$(ls -d run-$sig/ckpt-1-* 2>/dev/null | head -1)
  if [ $rc != 0 ] || [ -z "$ckpt" ] || [ "$steps" -ge 400 ] || ! grep -q "stopped before the end" log-$sig; then
    echo "FAIL: SIG$sig: exit $rc, checkpoint '$ckpt', $steps steps"; tail -3 log-$sig; fail=1; continue
  fi
  [ "$ckpt" = "run-$sig/ckpt-1-$steps" ] || { echo "FAIL: checkpoint $ckpt is not at the last logged step $steps"; fail=1; }
  echo "ok: SIG$sig after $steps steps: exit 0, $ckpt written"
done
# Resume the SIGTERM run to the end and compare with a straight run.
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=run-TERM --resume auto 2> resume.log || { tail resume.log; exit 1; }
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=straight 2> straight.log
cmp run-TERM/final/query_tower/model.safetensors straight/final/query_tower/model.safetensors ||
  { echo "FAIL: resumed run differs from the straight one"; fail=1; }
[ $fail = 0 ] && echo "test_train_signal: preempted and resumed run equals the straight run"
exit $fail
