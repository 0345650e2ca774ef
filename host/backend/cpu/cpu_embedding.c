// Embedding lookup and its deterministic scatter-add backward.
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

void sn_cpu_embedding_forward(void *out, const int32_t *ids, const void *table, int T, int C,
                              int accumulate) {
  float *o = out;           // (T, C)
  const float *w = table;   // (V, C)
  size_t work = (size_t)T * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++) {
    float *row = o + (size_t)t * C;
    const float *src = w + (size_t)ids[t] * C;
    if (accumulate) {
      for (int c = 0; c < C; c++) row[c] += src[c];
    } else {
      memcpy(row, src, (size_t)C * sizeof(float));
    }
  }
}

// Repeated ids make a parallel-over-tokens scatter race, so each thread owns a block of columns
// and walks the tokens in order: deterministic, and independent of the thread count.
void sn_cpu_embedding_backward(void *dtable, const void *dout, const int32_t *ids, int T, int C,
                               int V) {
  float *dw = dtable;        // (V, C)
  const float *g = dout;     // (T, C)
  int nblocks = SN_CEIL_DIV(C, SN_CPU_COL_BLOCK);
  size_t work = (size_t)T * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int blk = 0; blk < nblocks; blk++) {
    int c0 = blk * SN_CPU_COL_BLOCK, c1 = SN_MIN(C, c0 + SN_CPU_COL_BLOCK);
    for (int t = 0; t < T; t++) {
      float *dst = dw + (size_t)ids[t] * C;
      const float *src = g + (size_t)t * C;
      for (int c = c0; c < c1; c++) dst[c] += src[c];
    }
  }
}
