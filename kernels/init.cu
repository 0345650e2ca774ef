// Fresh-tensor initialisation on the GPU: the counter-based normals of counter_rng.h (the CPU
// twin's expression, evaluated in double precision per element) written as bf16, so a fresh 7B
// tower is filled in device memory instead of on the host and uploaded. Also dropout, whose mask is
// the same counter-based uniforms as the CPU twin's. Grid-stride loops: any n.
#include "common.cuh"
#include "counter_rng.h"

#define INIT_THREADS 256
#define INIT_BLOCKS_PER_SM 8  // enough resident warps to hide the double-precision latency

static int init_grid(size_t n) {
  size_t blocks = (n + INIT_THREADS - 1) / INIT_THREADS;
  size_t most = (size_t)sn_cuda_sm_count() * INIT_BLOCKS_PER_SM;
  return (int)(blocks < most ? (blocks ? blocks : 1) : most);
}

__global__ void fill_normal_kernel(bf16 *x, size_t n, uint64_t key, float stddev) {
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (size_t)gridDim.x * blockDim.x)
    x[j] = f2bf(stddev * sn_normal_at(key, j));
}

__global__ void fill_kernel(bf16 *x, size_t n, float value) {
  const bf16 v = f2bf(value);
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (size_t)gridDim.x * blockDim.x)
    x[j] = v;
}

void cuda_fill_normal(void *x, size_t n, uint64_t key, float stddev) {
  if (n == 0) return;
  fill_normal_kernel<<<init_grid(n), INIT_THREADS, 0, SN_STREAM>>>((bf16 *)x, n, key, stddev);
  launchCheck();
}

void cuda_fill(void *x, size_t n, float value) {
  if (n == 0) return;
  fill_kernel<<<init_grid(n), INIT_THREADS, 0, SN_STREAM>>>((bf16 *)x, n, value);
  launchCheck();
}

__global__ void dropout_kernel(bf16 *out, const bf16 *x, size_t n, uint64_t key, float p, int accumulate) {
  const float inv_keep = 1.0f / (1.0f - p);
  for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (size_t)gridDim.x * blockDim.x) {
    float v = sn_uniform_at(key, j) >= (double)p ? bf2f(x[j]) * inv_keep : 0.0f;
    out[j] = f2bf(accumulate ? bf2f(out[j]) + v : v);
  }
}

void cuda_dropout(void *out, const void *x, size_t n, uint64_t key, float p, int accumulate) {
  if (n == 0) return;
  dropout_kernel<<<init_grid(n), INIT_THREADS, 0, SN_STREAM>>>((bf16 *)out, (const bf16 *)x, n, key, p, accumulate);
  launchCheck();
}
