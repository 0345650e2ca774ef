// The fused LM head + cross-entropy (ops.h: lm_head_xent), the CPU twin of kernels/lm_head.cu: the
// same blocks of SN_LM_HEAD_ROW_CHUNK rows x SN_LM_HEAD_VOCAB_CHUNK columns, the same two sweeps
// (running max and sum of exponentials per row, then each block recomputed into its gradient),
// so memory is one block whatever N and V. Row statistics are kept in double; the loss is summed in
// row order, so it does not depend on the thread count.
#include <math.h>

#include "common.h"
#include "cpu_ops.h"

// Row state over the vocabulary sweep (one per row of a row chunk).
typedef struct {
  double max, sum;     // running max logit and sum of exp(logit - max)
  double target_logit;
} row_stats;

// Merges columns [v0, v0 + vc) of the rows' logits (rn, vc) into their running statistics.
static void merge_block(row_stats *st, const float *logits, const int32_t *targets, int rn, int vc, int v0) {
#pragma omp parallel for schedule(static) if ((size_t)rn * vc >= SN_CPU_PARALLEL_MIN_WORK)
  for (int r = 0; r < rn; r++) {
    const float *row = logits + (size_t)r * vc;
    float block_max = -INFINITY;
    for (int j = 0; j < vc; j++) block_max = fmaxf(block_max, row[j]);
    double sum = 0.0;
    for (int j = 0; j < vc; j++) sum += exp((double)row[j] - block_max);
    row_stats *s = &st[r];
    double new_max = fmax(s->max, block_max);
    s->sum = s->sum * exp(s->max - new_max) + sum * exp(block_max - new_max);
    s->max = new_max;
    int t = targets[r];
    if (t >= v0 && t < v0 + vc) s->target_logit = row[t - v0];
  }
}

// Turns the block (rn, vc) into scale * (softmax - onehot), zero on ignored rows; lse (rn).
static void block_gradient(float *logits, const double *lse, const int32_t *targets, int rn, int vc, int v0,
                           float scale) {
#pragma omp parallel for schedule(static) if ((size_t)rn * vc >= SN_CPU_PARALLEL_MIN_WORK)
  for (int r = 0; r < rn; r++) {
    float *row = logits + (size_t)r * vc;
    const int t = targets[r];
    for (int j = 0; j < vc; j++) {
      double p = t < 0 ? 0.0 : exp((double)row[j] - lse[r]);
      row[j] = (float)(scale * (p - (v0 + j == t ? 1.0 : 0.0)));
    }
  }
}

void sn_cpu_lm_head_xent(float *loss, void *dhidden, void *dweight, const void *hidden, const void *weight,
                         const int32_t *targets, int N, int V, int C, float scale) {
  const float *h = hidden, *w = weight;
  float *dh = dhidden, *dw = dweight;
  const int row_chunk = SN_MIN(N, SN_LM_HEAD_ROW_CHUNK), vocab_chunk = SN_MIN(V, SN_LM_HEAD_VOCAB_CHUNK);
  // the row statistics and log-sum-exps (doubles: first, where the scratch's alignment holds), then
  // one logits block (row_chunk, vocab_chunk), whose byte count may be any multiple of 4
  size_t block_bytes = (size_t)row_chunk * vocab_chunk * sizeof(float);
  char *scratch = sn_cpu_scratch(SN_CPU_SCRATCH_OP, block_bytes + (size_t)row_chunk * (sizeof(row_stats) + sizeof(double)));
  row_stats *st = (row_stats *)scratch;
  double *lse = (double *)(st + row_chunk);
  float *logits = (float *)(lse + row_chunk);
  double total = 0.0;
  for (int r0 = 0; r0 < N; r0 += row_chunk) {
    const int rn = SN_MIN(row_chunk, N - r0);
    const float *hr = h + (size_t)r0 * C;
    const int32_t *tr = targets + r0;
    for (int r = 0; r < rn; r++) st[r] = (row_stats){.max = -INFINITY, .sum = 0.0, .target_logit = 0.0};
    for (int v0 = 0; v0 < V; v0 += vocab_chunk) {
      const int vc = SN_MIN(vocab_chunk, V - v0);
      sn_cpu_matmul(logits, hr, w + (size_t)v0 * C, NULL, rn, vc, C, 0, 1, 0);  // (rn, C) @ (vc, C)^T
      merge_block(st, logits, tr, rn, vc, v0);
    }
    for (int r = 0; r < rn; r++) {
      lse[r] = st[r].max + log(st[r].sum);
      if (tr[r] >= 0) total += lse[r] - st[r].target_logit;
    }
    if (!dh && !dw) continue;
    for (int v0 = 0; v0 < V; v0 += vocab_chunk) {
      const int vc = SN_MIN(vocab_chunk, V - v0);
      sn_cpu_matmul(logits, hr, w + (size_t)v0 * C, NULL, rn, vc, C, 0, 1, 0);
      block_gradient(logits, lse, tr, rn, vc, v0, scale);
      // dhidden rows (rn, C) = sum over blocks of g (rn, vc) @ W block (vc, C)
      if (dh) sn_cpu_matmul(dh + (size_t)r0 * C, logits, w + (size_t)v0 * C, NULL, rn, C, vc, 0, 0, v0 > 0);
      // dweight block (vc, C) += g^T (vc, rn) @ hidden rows (rn, C)
      if (dw) sn_cpu_matmul(dw + (size_t)v0 * C, logits, hr, NULL, vc, C, rn, 1, 0, 1);
    }
  }
  *loss += (float)(scale * total);
}
