// RMSNorm and LayerNorm (plain and fused with the residual add), forward and backward.
// Row statistics are accumulated in double; the weight gradients are reduced per column block
// over the rows in order, so they do not depend on the thread count.
#include <math.h>

#include "common.h"
#include "cpu_ops.h"

// ---- per-row forward kernels --------------------------------------------------------------------
// out (C) = x * rstd * weight; returns rstd.
static float rmsnorm_row(float *out, const float *x, const float *weight, int C, float eps) {
  float rstd = (float)(1.0 / sqrt(sn_cpu_dot_f64(x, x, C) / C + eps));
  for (int c = 0; c < C; c++) out[c] = x[c] * rstd * weight[c];
  return rstd;
}

// out (C) = (x - mean) * rstd * weight + bias; writes *mean and *rstd.
static void layernorm_row(float *out, float *mean_out, float *rstd_out, const float *x,
                          const float *weight, const float *bias, int C, float eps) {
  double mean = sn_cpu_sum_f64(x, C) / C;
  // two-pass variance (no cancellation when |mean| >> std), in partial sums as sn_cpu_sum_f64
  double lanes[SN_CPU_SUM_LANES] = {0}, sum_sq_dev = 0.0;
  int c = 0;
  for (; c + SN_CPU_SUM_LANES <= C; c += SN_CPU_SUM_LANES)
    for (int l = 0; l < SN_CPU_SUM_LANES; l++) {
      double d = x[c + l] - mean;
      lanes[l] += d * d;
    }
  for (int l = 0; l < SN_CPU_SUM_LANES; l++) sum_sq_dev += lanes[l];
  for (; c < C; c++) sum_sq_dev += (x[c] - mean) * (x[c] - mean);
  float m = (float)mean, rstd = (float)(1.0 / sqrt(sum_sq_dev / C + eps));
  for (c = 0; c < C; c++) out[c] = (x[c] - m) * rstd * weight[c] + bias[c];
  *mean_out = m;
  *rstd_out = rstd;
}

static void add_row(float *out, const float *a, const float *b, int C) {
  for (int c = 0; c < C; c++) out[c] = a[c] + b[c];
}

// ---- forward ops --------------------------------------------------------------------------------
void sn_cpu_rmsnorm_forward(void *out, float *rstd, const void *x, const void *weight, int T, int C,
                            float eps) {
  float *o = out;            // (T, C)
  const float *in = x;       // (T, C)
  size_t work = (size_t)T * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++)
    rstd[t] = rmsnorm_row(o + (size_t)t * C, in + (size_t)t * C, weight, C, eps);
}

void sn_cpu_add_rmsnorm_forward(void *residual_out, void *out, float *rstd, const void *a,
                                const void *b, const void *weight, int T, int C, float eps) {
  float *res = residual_out, *o = out;  // (T, C)
  const float *x = a, *y = b;           // (T, C); residual_out may alias a or b
  size_t work = (size_t)T * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++) {
    size_t row = (size_t)t * C;
    add_row(res + row, x + row, y + row, C);
    rstd[t] = rmsnorm_row(o + row, res + row, weight, C, eps);
  }
}

void sn_cpu_layernorm_forward(void *out, float *mean, float *rstd, const void *x,
                              const void *weight, const void *bias, int T, int C, float eps) {
  float *o = out;
  const float *in = x;
  size_t work = (size_t)T * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++) {
    size_t row = (size_t)t * C;
    layernorm_row(o + row, &mean[t], &rstd[t], in + row, weight, bias, C, eps);
  }
}

void sn_cpu_add_layernorm_forward(void *residual_out, void *out, float *mean, float *rstd,
                                  const void *a, const void *b, const void *weight,
                                  const void *bias, int T, int C, float eps) {
  float *res = residual_out, *o = out;
  const float *x = a, *y = b;
  size_t work = (size_t)T * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++) {
    size_t row = (size_t)t * C;
    add_row(res + row, x + row, y + row, C);
    layernorm_row(o + row, &mean[t], &rstd[t], res + row, weight, bias, C, eps);
  }
}

// ---- backward ops -------------------------------------------------------------------------------
// xhat = (x - mean) * rstd, with mean = 0 for RMSNorm. g = dout * weight.
//   RMSNorm:   dx = rstd * (g - xhat * mean(g * xhat))
//   LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
// `center` selects LayerNorm (mean may be NULL for RMSNorm).
static void norm_backward_rows(float *dx, const float *dout, const float *x, const float *weight,
                               const float *mean, const float *rstd, int T, int C, int center,
                               int accumulate) {
  size_t work = (size_t)T * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++) {
    size_t row = (size_t)t * C;
    const float *g_out = dout + row, *xr = x + row;
    float *dxr = dx + row;
    float mu = center ? mean[t] : 0.0f, r = rstd[t];
    double lanes_g[SN_CPU_SUM_LANES] = {0}, lanes_g_xhat[SN_CPU_SUM_LANES] = {0};
    double sum_g = 0.0, sum_g_xhat = 0.0;
    int c = 0;
    for (; c + SN_CPU_SUM_LANES <= C; c += SN_CPU_SUM_LANES)
      for (int l = 0; l < SN_CPU_SUM_LANES; l++) {
        float g = g_out[c + l] * weight[c + l];
        lanes_g[l] += g;
        lanes_g_xhat[l] += (double)g * ((xr[c + l] - mu) * r);
      }
    for (int l = 0; l < SN_CPU_SUM_LANES; l++) sum_g += lanes_g[l], sum_g_xhat += lanes_g_xhat[l];
    for (; c < C; c++) {
      float g = g_out[c] * weight[c];
      sum_g += g;
      sum_g_xhat += (double)g * ((xr[c] - mu) * r);
    }
    float mean_g = center ? (float)(sum_g / C) : 0.0f;
    float mean_g_xhat = (float)(sum_g_xhat / C);
    for (c = 0; c < C; c++) {
      float xhat = (xr[c] - mu) * r;
      float d = r * (g_out[c] * weight[c] - mean_g - xhat * mean_g_xhat);
      dxr[c] = accumulate ? dxr[c] + d : d;
    }
  }
}

// dweight (C) += sum over rows of dout * xhat; dbias (C) += sum over rows of dout (when non-NULL).
static void norm_backward_params(float *dweight, float *dbias, const float *dout, const float *x,
                                 const float *mean, const float *rstd, int T, int C) {
  int nblocks = SN_CEIL_DIV(C, SN_CPU_COL_BLOCK);
  size_t work = (size_t)T * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int blk = 0; blk < nblocks; blk++) {
    int c0 = blk * SN_CPU_COL_BLOCK, width = SN_MIN(C - c0, SN_CPU_COL_BLOCK);
    double acc_w[SN_CPU_COL_BLOCK] = {0}, acc_b[SN_CPU_COL_BLOCK] = {0};
    for (int t = 0; t < T; t++) {
      const float *g = dout + (size_t)t * C + c0, *xr = x + (size_t)t * C + c0;
      float mu = mean ? mean[t] : 0.0f, r = rstd[t];
      for (int j = 0; j < width; j++) {
        acc_w[j] += g[j] * ((xr[j] - mu) * r);
        acc_b[j] += g[j];
      }
    }
    for (int j = 0; j < width; j++) dweight[c0 + j] += (float)acc_w[j];
    if (dbias)
      for (int j = 0; j < width; j++) dbias[c0 + j] += (float)acc_b[j];
  }
}

void sn_cpu_rmsnorm_backward(void *dx, void *dweight, const void *dout, const void *x,
                             const void *weight, const float *rstd, int T, int C, int accumulate) {
  // Parameters first: then dx may even be the dout buffer. A frozen weight has no gradient.
  if (dweight) norm_backward_params(dweight, NULL, dout, x, NULL, rstd, T, C);
  norm_backward_rows(dx, dout, x, weight, NULL, rstd, T, C, 0, accumulate);
}

void sn_cpu_layernorm_backward(void *dx, void *dweight, void *dbias, const void *dout,
                               const void *x, const void *weight, const float *mean,
                               const float *rstd, int T, int C, int accumulate) {
  norm_backward_params(dweight, dbias, dout, x, mean, rstd, T, C);
  norm_backward_rows(dx, dout, x, weight, mean, rstd, T, C, 1, accumulate);
}
