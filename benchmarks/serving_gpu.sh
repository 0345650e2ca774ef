#!/usr/bin/env bash
# The serving checks and figures on the GPU, in one go (issue 20): the fused decoder against its CPU
# twin (the student's and the 0.5B tower's shapes) and its weight-stream rate (sn_bench), the model
# on and off (test_small_batch cuda), the programmatic-edge probe (test_cuda_ops --only pdl, with and
# without SN_PDL), the encoder library's tests, and sn_bench_encode with each opt-in switch off and
# on, two rounds, beside the torch.compile anchor when one is given, and with 1, 2 and 4 handles
# streaming at once (a stream each).
# usage: benchmarks/serving_gpu.sh BUILD_DIR OUT_DIR [ANCHOR_PY]   (ANCHOR_PY: ../shared/bench/torch_compiled_extra.py)
# QUICK=1 stops after the student's encode (no encoder tests, no 0.5B encode, no anchor).
# Writes OUT_DIR/serving.log (a section a step, each with its exit status) and the tests' own logs.
set -uo pipefail
BUILD=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
ANCHOR=${3:+$(cd "$(dirname "$3")" && pwd)/$(basename "$3")}
LOG=$OUT/serving.log
SRC=$(cd "$(dirname "$0")/.." && pwd)
STUDENT=$SRC/configs/models/student-6l-384.json
t0=$(date +%s)
section() { echo "===== [$(( $(date +%s) - t0 )) s] $*" | tee -a "$LOG"; }
step() {  # step SECONDS COMMAND...: runs it under a time limit, its output to the log, its status after
  local limit=$1
  shift
  timeout "$limit" "$@" >> "$LOG" 2>&1
  echo "exit $? <- $*" | tee -a "$LOG"
}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$LOG"
section "the fused decoder against the CPU"
step 90 "$BUILD/tests/test_cuda_ops" --only fused
SN_FUSED_TRACE=50 step 60 "$BUILD/sn_bench" --filter decoder_fused  # with the kernel's phase trace
section "the model with SN_FUSED_DECODER on and off"
step 90 "$BUILD/tests/test_small_batch" cuda
section "the programmatic-edge probe (then without programmatic launch)"
step 90 "$BUILD/tests/test_cuda_ops" --only pdl
SN_PDL=0 step 60 "$BUILD/tests/test_cuda_ops" --only pdl
for round in 1 2; do
  for switch in SN_FUSED_DECODER=0 SN_FUSED_DECODER=1; do
    section "student encode, $switch, round $round"
    (export "${switch?}"; step 60 "$BUILD/sn_bench_encode" --device cuda --model-desc "$STUDENT" --batches 1,8)
  done
done
[ "${QUICK:-0}" = 1 ] && { section done; exit 0; }
if [ -n "$ANCHOR" ]; then
  section "the torch.compile anchor"
  step 200 python3 "$ANCHOR"
fi  # before the encode rounds: a call cut short keeps it
section "the encoder library's GPU tests"
(cd "$BUILD" && step 180 ctest -R "encoder_cuda|encoder_threads_cuda|model_embed_cuda" --output-on-failure)
for round in 1 2; do
  for switch in SN_PDL_GEMM=0 SN_PDL_GEMM=1 SN_FUSED_DECODER=1; do
    section "encode, $switch, round $round"
    (export "${switch?}"; step 90 "$BUILD/sn_bench_encode" --device cuda --batches 1,8,64)
  done
done
for handles in 2 4; do
  section "$handles handles at once (a stream each)"
  step 90 "$BUILD/sn_bench_encode" --device cuda --batches 1,64 --handles "$handles"
done
section done
