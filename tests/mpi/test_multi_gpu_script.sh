#!/usr/bin/env bash
# benchmarks/multi_gpu.sh (the several-GPU equivalence, scaling and kill-and-resume runs) on the CPU
# backend over MPI with a tiny model: the script's logic stays working between GPU sessions, and its
# checks must pass: losses on 2 ranks equal to 1 rank on the same global batch, replica checksums
# after every step (replicated, ZeRO-1 and ZeRO-2), and a rank killed mid-run then resumed bit for bit.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_command mpirun
DEVICE=cpu TINY=1 BQ=4 QLEN=8 DLEN=16 STEPS=12 EQ_STEPS=4 KILL_CKPT_EVERY=4 \
  bash "$SRC/benchmarks/multi_gpu.sh" "$BUILD" "$WORK" > "$WORK/log.txt" 2>&1 || { tail -30 "$WORK/log.txt"; exit 1; }
cat "$WORK/multi_gpu.txt"
fail=0
for want in "eq-2: ok" "eqz-2: ok" "eqz2-2: ok" "tpz2-2 (ZeRO-2)" "kill-2: ok" "scaling efficiency" "the job ended"; do
  grep -q "$want" "$WORK/multi_gpu.txt" || { echo "FAIL: no '$want' in the summary"; fail=1; }
done
if grep -q FAIL "$WORK/multi_gpu.txt"; then echo "FAIL: the summary reports a failure"; fail=1; fi
exit $fail
