// Fresh-tensor initialisation and dropout of the CPU backend: the counter-based normals and
// uniforms of counter_rng.h, one element per loop iteration, so the values do not depend on the
// thread count.
#include "counter_rng.h"
#include "cpu_ops.h"

void sn_cpu_fill_normal(void *x, size_t n, uint64_t key, float stddev) {
  float *f = x;
#pragma omp parallel for schedule(static) if (n >= SN_CPU_PARALLEL_MIN_WORK)
  for (size_t j = 0; j < n; j++) f[j] = stddev * sn_normal_at(key, j);
}

void sn_cpu_fill(void *x, size_t n, float value) {
  float *f = x;
#pragma omp parallel for schedule(static) if (n >= SN_CPU_PARALLEL_MIN_WORK)
  for (size_t j = 0; j < n; j++) f[j] = value;
}

void sn_cpu_dropout(void *out, const void *x, size_t n, uint64_t key, float p, int accumulate) {
  float *o = out;
  const float *in = x;
  const float inv_keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n >= SN_CPU_PARALLEL_MIN_WORK)
  for (size_t j = 0; j < n; j++) {
    float v = sn_uniform_at(key, j) >= (double)p ? in[j] * inv_keep : 0.0f;
    o[j] = accumulate ? o[j] + v : v;
  }
}
