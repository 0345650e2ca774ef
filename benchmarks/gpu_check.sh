#!/usr/bin/env bash
# Everything the GPU machine checks, in one go: build (sm_90), the gpu-labelled tests (every CUDA op
# against its CPU twin, CPU-vs-GPU training curves), the fixtures on CUDA, the MPI/NCCL tests, the
# kernel microbenchmarks and the end-to-end comparison with PyTorch.
# usage: benchmarks/gpu_check.sh OUT_DIR [TORCH_BASELINE_PY]   (cJSON: see ../shared/device/README.md)
set -uo pipefail
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
BASELINE=${2:-}
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cmake -S . -B build -DSN_CUDA_ARCHS=90 -DCMAKE_BUILD_TYPE=Release > "$OUT/cmake.log" 2>&1 &&
  cmake --build build -j"$(nproc)" > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
(cd build && ctest -L gpu --output-on-failure) > "$OUT/ctest_gpu.log" 2>&1; echo "ctest gpu: $?" | tee -a "$OUT/summary.txt"
(cd build && SN_TEST_DEVICE=cuda SN_SOURCE_DIR=$PWD/.. ./tests/test_model_fixtures) > "$OUT/fixtures_cuda.log" 2>&1
echo "fixtures on cuda: $?" | tee -a "$OUT/summary.txt"
(cd build && ctest -L mpi --output-on-failure) > "$OUT/ctest_mpi.log" 2>&1; echo "ctest mpi (incl. nccl): $?" | tee -a "$OUT/summary.txt"
build/sn_bench --csv > "$OUT/sn_bench.csv" 2> "$OUT/sn_bench.log"; echo "sn_bench: $?" | tee -a "$OUT/summary.txt"
bash benchmarks/e2e_gpu.sh build "$OUT" "$BASELINE" > "$OUT/e2e.txt" 2>&1; echo "e2e: $?" | tee -a "$OUT/summary.txt"
grep -E "passed|failed|tests" "$OUT/ctest_gpu.log" "$OUT/ctest_mpi.log" | tail -6
tail -8 "$OUT/e2e.txt"
