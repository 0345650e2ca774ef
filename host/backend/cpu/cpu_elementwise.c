// Elementwise ops of the CPU backend.
#include "cpu_ops.h"

void sn_cpu_add_f32(float *out, const float *a, const float *b, size_t n) {
  // out may alias a or b: each element is read before it is written
#pragma omp parallel for schedule(static) if (n >= SN_CPU_PARALLEL_MIN_WORK)
  for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
// The CPU's storage is fp32: both adds are one.
void sn_cpu_add(void *out, const void *a, const void *b, size_t n) { sn_cpu_add_f32(out, a, b, n); }

void sn_cpu_scale_f32(float *x, float s, size_t n) {
#pragma omp parallel for schedule(static) if (n >= SN_CPU_PARALLEL_MIN_WORK)
  for (size_t i = 0; i < n; i++) x[i] *= s;
}

void sn_cpu_axpy_2d(void *dst, int ld_dst, const void *src, int ld_src, int rows, int cols, float alpha,
                    int accumulate) {
  float *d = dst;
  const float *x = src;
#pragma omp parallel for schedule(static) if ((size_t)rows * cols >= SN_CPU_PARALLEL_MIN_WORK)
  for (int r = 0; r < rows; r++) {
    float *dr = d + (size_t)r * ld_dst;
    const float *xr = x + (size_t)r * ld_src;
    for (int c = 0; c < cols; c++) dr[c] = (accumulate ? dr[c] : 0.0f) + alpha * xr[c];
  }
}
