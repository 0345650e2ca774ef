#!/usr/bin/env bash
# Everything the GPU machine checks, in one go: build (sm_90), the gpu-labelled tests (every CUDA op
# against its CPU twin, CPU-vs-GPU training curves), compute-sanitizer memcheck and racecheck on the
# op tests, the fixtures on CUDA, the MPI/NCCL tests, the
# kernel microbenchmarks and the end-to-end comparison with PyTorch.
# usage: benchmarks/gpu_check.sh OUT_DIR [TORCH_BASELINE_PY]   (cJSON: see ../shared/device/README.md)
# Writes OUT_DIR/gpu_check.log (everything), sn_bench.csv, e2e.txt and e2e.json.
set -uo pipefail
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
BASELINE=${2:+$(cd "$(dirname "$2")" && pwd)/$(basename "$2")}
LOG=$OUT/gpu_check.log
cd "$(dirname "$0")/.."
section() { echo "===== $*" | tee -a "$LOG"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
section build
{ cmake -S . -B build -DSN_CUDA_ARCHS=90 -DCMAKE_BUILD_TYPE=Release && cmake --build build -j"$(nproc)"; } >> "$LOG" 2>&1 ||
  { tail -30 "$LOG"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
section "ctest -L gpu"
(cd build && ctest -L gpu --output-on-failure) >> "$LOG" 2>&1; echo "ctest gpu: exit $?" | tee -a "$LOG"
section "compute-sanitizer (memcheck, racecheck) on test_cuda_ops --quick"
for tool in memcheck racecheck; do
  compute-sanitizer --tool $tool --error-exitcode 9 build/tests/test_cuda_ops --quick >> "$LOG" 2>&1
  echo "compute-sanitizer $tool: exit $?" | tee -a "$LOG"
done
section "fixtures on cuda"
(cd build && SN_TEST_DEVICE=cuda SN_SOURCE_DIR=$PWD/.. ./tests/test_model_fixtures) >> "$LOG" 2>&1
echo "fixtures on cuda: exit $?" | tee -a "$LOG"
section "ctest -L mpi (MPI and NCCL)"
(cd build && ctest -L mpi --output-on-failure) >> "$LOG" 2>&1; echo "ctest mpi: exit $?" | tee -a "$LOG"
section "sn_bench"
build/sn_bench --csv > "$OUT/sn_bench.csv" 2>> "$LOG"; echo "sn_bench: exit $?" | tee -a "$LOG"
section "end to end"
bash benchmarks/e2e_gpu.sh build "$OUT" "$BASELINE" > "$OUT/e2e.txt" 2>&1; echo "e2e: exit $?" | tee -a "$LOG"
rm -f "$OUT"/e2e_*.log "$OUT"/e2e_*.jsonl
grep -E "tests passed|tests failed" "$LOG"
tail -8 "$OUT/e2e.txt"
