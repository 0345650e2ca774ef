// Fresh-tensor initialisation of the CPU backend: the counter-based normals of counter_rng.h, one
// element per loop iteration, so the values do not depend on the thread count.
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
