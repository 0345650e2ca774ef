#!/usr/bin/env bash
# Every rank takes the same decision on a non-finite step: a NaN loss on rank 1 only (test hook
# SN_TEST_NAN_LOSS_STEPS / SN_TEST_NAN_LOSS_RANK) reaches every rank through the loss all-reduce.
# With train.skip_nonfinite both ranks skip step 2 and stay identical (dist.check_replicas_every=1,
# under ZeRO-2 and replicated); without it the job stops with the message instead of hanging.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_command mpirun
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
python3 "$SRC/tests/synth_data.py" data --examples 48 --test-queries 4 >/dev/null
cat > cfg.json <<JSON
{"seed": 9, "threads": 1, "comm_timeout_s": 60,
 "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 20},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1,
                           "intermediate": 64, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "batch_queries": 8, "negatives_per_query": 1, "steps": 4, "optim": {"lr": 1e-3, "warmup_steps": 1}},
 "dist": {"check_replicas_every": 1}}
JSON
export SN_TEST_NAN_LOSS_STEPS=2 SN_TEST_NAN_LOSS_RANK=1
fail=0
for zero in 0 2; do
  run=skip-zero$zero
  if ! timeout 300 mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=$run \
      --set dist.zero=$zero --set train.skip_nonfinite=true > $run.log 2>&1; then
    echo "FAIL: $run exited non-zero"; tail -5 $run.log; fail=1; continue
  fi
  got=$(python3 -c 'import json,sys
r = [json.loads(l) for l in open(sys.argv[1])]
print(len(r), r[1]["lr"], r[-1].get("skipped_nonfinite"), all("weights_hash" in x for x in r))' $run/metrics.jsonl)
  [ "$got" = "4 0 1 True" ] || { echo "FAIL: $run: metrics (records, lr@2, skipped@4, hashed) '$got', expected '4 0 1 True'"; fail=1; }
done
rc=0
timeout 300 mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=stop > stop.log 2>&1 || rc=$?
if [ $rc = 0 ] || [ $rc = 124 ] || ! grep -q "stage 1: the loss is nan at step 2; stopped" stop.log; then
  echo "FAIL: stop: exit $rc without the message"; tail -5 stop.log; fail=1
fi
[ $fail = 0 ] && echo "test_train_nonfinite_mpi: every rank skipped or stopped alike"
exit $fail
