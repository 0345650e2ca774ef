// Sequence pooling (last token, mean, first token) and L2 normalisation of embeddings.
#include <math.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

static void pool_check_mode(sn_pooling mode) {
  if (mode != SN_POOL_LAST && mode != SN_POOL_MEAN && mode != SN_POOL_FIRST)
    sn_fatal("pooling: unknown mode %d", (int)mode);
}

// The one token that last/first pooling reads from sequence b.
static int pooled_token(const int32_t *cu_seqlens, int b, sn_pooling mode) {
  return mode == SN_POOL_LAST ? cu_seqlens[b + 1] - 1 : cu_seqlens[b];
}

void sn_cpu_pool_forward(void *outv, const void *hiddenv, const int32_t *cu_seqlens, int B, int T,
                         int C, sn_pooling mode) {
  float *out = outv;              // (B, C)
  const float *hidden = hiddenv;  // (T, C)
  pool_check_mode(mode);
  size_t work = (size_t)T * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++) {
    float *o = out + (size_t)b * C;
    if (mode != SN_POOL_MEAN) {
      memcpy(o, hidden + (size_t)pooled_token(cu_seqlens, b, mode) * C, (size_t)C * sizeof(float));
      continue;
    }
    int t0 = cu_seqlens[b], t1 = cu_seqlens[b + 1];
    for (int c = 0; c < C; c++) o[c] = 0.0f;
    for (int t = t0; t < t1; t++) {
      const float *h = hidden + (size_t)t * C;
      for (int c = 0; c < C; c++) o[c] += h[c];
    }
    float inv_len = 1.0f / (float)(t1 - t0);
    for (int c = 0; c < C; c++) o[c] *= inv_len;
  }
}

void sn_cpu_pool_backward(void *dhiddenv, const void *doutv, const int32_t *cu_seqlens, int B,
                          int T, int C, sn_pooling mode) {
  float *dhidden = dhiddenv;  // (T, C), written in full
  const float *dout = doutv;  // (B, C)
  pool_check_mode(mode);
  size_t work = (size_t)T * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++) {
    int t0 = cu_seqlens[b], t1 = cu_seqlens[b + 1];
    const float *g = dout + (size_t)b * C;
    float weight = mode == SN_POOL_MEAN ? 1.0f / (float)(t1 - t0) : 0.0f;
    int only = mode == SN_POOL_MEAN ? -1 : pooled_token(cu_seqlens, b, mode);
    for (int t = t0; t < t1; t++) {
      float *dh = dhidden + (size_t)t * C;
      if (mode == SN_POOL_MEAN) {
        for (int c = 0; c < C; c++) dh[c] = g[c] * weight;
      } else if (t == only) {
        memcpy(dh, g, (size_t)C * sizeof(float));
      } else {
        memset(dh, 0, (size_t)C * sizeof(float));
      }
    }
  }
}

void sn_cpu_l2norm_forward(float *out, float *norm, const void *xv, int B, int C) {
  const float *x = xv;  // (B, C)
  size_t work = (size_t)B * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++) {
    const float *xr = x + (size_t)b * C;
    double sum_sq = 0.0;
    for (int c = 0; c < C; c++) sum_sq += (double)xr[c] * xr[c];
    float n = (float)sqrt(sum_sq);
    norm[b] = n;
    float inv = 1.0f / fmaxf(n, SN_L2NORM_EPS);
    for (int c = 0; c < C; c++) out[(size_t)b * C + c] = xr[c] * inv;
  }
}

// y = x / n with n = ||x||: dx = (dy - y (y . dy)) / n. Below the eps floor y = x / eps is linear.
void sn_cpu_l2norm_backward(void *dxv, const float *dout, const float *out, const float *norm,
                            int B, int C) {
  float *dx = dxv;  // (B, C)
  size_t work = (size_t)B * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++) {
    const float *g = dout + (size_t)b * C, *y = out + (size_t)b * C;
    float *d = dx + (size_t)b * C;
    int floored = !(norm[b] > SN_L2NORM_EPS);
    double y_dot_g = 0.0;
    for (int c = 0; c < C; c++) y_dot_g += (double)y[c] * g[c];
    float proj = floored ? 0.0f : (float)y_dot_g;
    float inv = 1.0f / fmaxf(norm[b], SN_L2NORM_EPS);
    for (int c = 0; c < C; c++) d[c] = (g[c] - y[c] * proj) * inv;
  }
}
