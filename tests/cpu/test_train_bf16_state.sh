#!/usr/bin/env bash
# The bf16 optimizer state (stageN.optim.state_dtype = "bf16": the weights as their own master and
# the moments held to bf16 precision, rounded stochastically) through sn_train on the CPU backend:
# - both stages train with it, and every weight written is a bf16 value (the CPU's fp32 storage
#   holds what the GPU's bf16 would), where the default fp32 state's weights are not;
# - stopped and resumed, it is the straight run bit for bit (the rounding bits follow the step);
# - a checkpoint of the fp32 state resumes into the bf16 state (the file holds fp32 either way);
# - the memory plan names it, and a bad value is refused naming the key.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # counts its failures
sn_test_needs_python numpy safetensors
source "$SRC/tests/cpu/tiny_run.sh"
source "$SRC/tests/cpu/expect_exit2.sh"  # fail=0, expect
EXPECT_BIN=$BUILD/sn_train
tiny_run_setup 6 4
BF16=(--set stage1.optim.state_dtype=bf16 --set stage2.optim.state_dtype=bf16)

"$BUILD/sn_train" --config cfg.json --set run_dir=fp32 2> fp32.log || { cat fp32.log; exit 1; }
"$BUILD/sn_train" --config cfg.json --set run_dir=straight "${BF16[@]}" 2> straight.log || { cat straight.log; exit 1; }
"$BUILD/sn_train" --config cfg.json --set run_dir=resumed "${BF16[@]}" --stop-after 3 2> r1.log || { cat r1.log; exit 1; }
"$BUILD/sn_train" --config cfg.json --set run_dir=resumed "${BF16[@]}" --resume auto --stop-after 8 2> r2.log ||
  { cat r2.log; exit 1; }
"$BUILD/sn_train" --config cfg.json --set run_dir=resumed "${BF16[@]}" --resume auto 2> r3.log || { cat r3.log; exit 1; }
grep -q "optimizer: bf16 state" straight.log || { echo "FAIL: the log does not say the state is bf16"; fail=1; }
grep -q "resume: stage 1, step 3" r2.log && grep -q "resume: stage 2, step" r3.log ||
  { echo "FAIL: the bf16-state run did not resume both stages"; fail=1; }
same_run straight resumed "bf16 state, straight vs resumed" || fail=1

python3 - <<'PY' || fail=1
import numpy as np
from safetensors.numpy import load_file
def not_bf16(run, tower):
    t = load_file(f"{run}/final/{tower}/model.safetensors")
    return sum(int((v.astype(np.float32).view(np.uint32) & 0xFFFF).astype(bool).sum()) for v in t.values())
bad = 0
for tower in ("query_tower", "doc_tower", "student"):
    n_bf16, n_fp32 = not_bf16("straight", tower), not_bf16("fp32", tower)
    if n_bf16 or not n_fp32:
        print(f"FAIL: {tower}: {n_bf16} weights of the bf16-state run are not bf16 values, {n_fp32} of the fp32 run")
        bad = 1
raise SystemExit(bad)
PY

# A checkpoint of the fp32 state resumed with the bf16 state: it runs to the end.
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=mixed --stop-after 2 2> m1.log || { cat m1.log; exit 1; }
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=mixed --resume auto "${BF16[@]}" 2> m2.log ||
  { echo "FAIL: an fp32-state checkpoint did not resume with the bf16 state"; tail -3 m2.log; fail=1; }
[ -s mixed/final/query_tower/model.safetensors ] || { echo "FAIL: the mixed run wrote no towers"; fail=1; }

"$BUILD/sn_train" --config cfg.json --plan "${BF16[@]}" > plan.txt 2>&1 || { cat plan.txt; exit 1; }
grep -q "Adam moments .*m and v as bf16 values in fp32 (the weights their own master)" plan.txt &&
  grep -q "optimizer state .*m and v as bf16 values in fp32 (the weights their own master)" plan.txt ||
  { echo "FAIL: the plan does not name the bf16 state"; cat plan.txt; fail=1; }

expect "a bad state_dtype" "'stage1.optim.state_dtype' must be one of fp32|bf16" \
  --config cfg.json --set stage1.optim.state_dtype=fp16
expect "a state_dtype that is not a string" "'stage1.optim.state_dtype' must be a string" \
  --config <(sed 's/"optim": {"lr": 1e-3, "warmup_steps": 2}}/"optim": {"lr": 1e-3, "state_dtype": 16}}/' cfg.json)

[ $fail = 0 ] && echo "test_train_bf16_state: trains, resumes bit for bit, holds bf16 values, plans and refuses bad values"
exit $fail
