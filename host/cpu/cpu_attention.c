// Attention over packed variable-length sequences (cu_seqlens), grouped-query, causal or
// bidirectional, built from the blocked matmul: memory is O(block x seqlen) per thread, never
// O(T^2) or O(seqlen^2).
//
// Forward, per (query block of one sequence, query head h); g = h / (Hq / Hkv) its kv head:
//   S = Q_blk K^T (rows, keys); P = softmax(scale S) with the causal mask; O_blk = P V; lse saved.
// Backward, with Delta_i = dO_i . O_i and P recomputed from lse:
//   dS = P * (dO V^T - Delta);  dQ_blk = scale dS K                      (per query block, head)
//   dV_blk = sum_{h in group} P^T dO;  dK_blk = scale sum_{h in group} dS^T Q   (per key block)
// Every output row belongs to one work item, computed in a fixed order, so results do not depend
// on which thread runs an item (dynamic scheduling balances uneven sequences) or how many run.
#include <math.h>
#include <string.h>

#include "../common.h"
#include "cpu_ops.h"

#define ROW_BLOCK 64  // query rows (forward, dQ) or key rows (dK, dV) per work item

typedef struct {
  const float *qkv;
  const int32_t *cu_seqlens;
  int B, T, Hq, Hkv, D;
  int row_len;  // (Hq + 2*Hkv) * D floats per token of qkv
  int out_len;  // Hq * D floats per token of out / dout
  int group;    // query heads per kv head
  int causal;
  float scale;
} attn;

static attn make_attn(const float *qkv, const int32_t *cu_seqlens, int B, int T, int Hq, int Hkv,
                      int D, int causal, float scale) {
  if (Hkv <= 0 || Hq % Hkv != 0) sn_fatal("attention: Hq=%d is not a multiple of Hkv=%d", Hq, Hkv);
  attn a = {qkv, cu_seqlens, B, T, Hq, Hkv, D, (Hq + 2 * Hkv) * D, Hq * D, Hq / Hkv, causal, scale};
  return a;
}

// Head slices of token t's qkv row (row stride a->row_len).
static inline const float *q_at(const attn *a, int t, int h) {
  return a->qkv + (size_t)t * a->row_len + (size_t)h * a->D;
}
static inline const float *k_at(const attn *a, int t, int g) {
  return a->qkv + (size_t)t * a->row_len + (size_t)(a->Hq + g) * a->D;
}
static inline const float *v_at(const attn *a, int t, int g) {
  return a->qkv + (size_t)t * a->row_len + (size_t)(a->Hq + a->Hkv + g) * a->D;
}

// Whether query i sees key j (both inside one sequence).
static inline int visible(const attn *a, int i, int j) { return !a->causal || j <= i; }

// ---- row blocks ---------------------------------------------------------------------------------
// Every sequence cut into ROW_BLOCK-row blocks: block k spans tokens [start, end) of sequence seq.
typedef struct {
  int seq, start, end;
} row_block;

// Returns a malloc'd array of the blocks of all sequences, in order; *count gets their number.
static row_block *make_row_blocks(const int32_t *cu_seqlens, int B, int *count) {
  int n = 0;
  for (int b = 0; b < B; b++) n += SN_CEIL_DIV(cu_seqlens[b + 1] - cu_seqlens[b], ROW_BLOCK);
  row_block *blocks = mallocCheck((size_t)SN_MAX(n, 1) * sizeof(row_block));
  int k = 0;
  for (int b = 0; b < B; b++)
    for (int t = cu_seqlens[b]; t < cu_seqlens[b + 1]; t += ROW_BLOCK)
      blocks[k++] = (row_block){b, t, SN_MIN(t + ROW_BLOCK, cu_seqlens[b + 1])};
  *count = n;
  return blocks;
}

// ---- forward ------------------------------------------------------------------------------------
// Rows of S (nq, nk), query i = r0 + row, keys from t0: P = softmax(scale S) in place, masked
// entries 0; writes lse (per row, stride 1 over queries).
static void softmax_rows(const attn *a, float *S, int nq, int nk, int r0, int t0, float *lse) {
  for (int r = 0; r < nq; r++) {
    float *row = S + (size_t)r * nk;
    int i = r0 + r, n_visible = a->causal ? i - t0 + 1 : nk;
    float max_score = -INFINITY;
    for (int j = 0; j < n_visible; j++) {
      row[j] *= a->scale;
      max_score = fmaxf(max_score, row[j]);
    }
    double sum = 0.0;
    for (int j = 0; j < n_visible; j++) {
      row[j] = expf(row[j] - max_score);
      sum += row[j];
    }
    float inv_sum = (float)(1.0 / sum);
    for (int j = 0; j < n_visible; j++) row[j] *= inv_sum;
    for (int j = n_visible; j < nk; j++) row[j] = 0.0f;
    lse[r] = max_score + (float)log(sum);
  }
}

static void forward_item(const attn *a, const row_block *blk, int h, float *out, float *lse) {
  int g = h / a->group, D = a->D;
  int t0 = a->cu_seqlens[blk->seq], r0 = blk->start, nq = blk->end - blk->start;
  int nk = (a->causal ? blk->end : a->cu_seqlens[blk->seq + 1]) - t0;
  float *S = sn_cpu_scratch(SN_CPU_SCRATCH_OP, (size_t)nq * nk * sizeof(float));  // (nq, nk)
  sn_cpu_gemm(S, nk, q_at(a, r0, h), a->row_len, 0, k_at(a, t0, g), a->row_len, 1, NULL, nq, nk,
              D, 0, 0);
  float lse_rows[ROW_BLOCK];
  softmax_rows(a, S, nq, nk, r0, t0, lse_rows);
  for (int r = 0; r < nq; r++) lse[(size_t)h * a->T + r0 + r] = lse_rows[r];
  sn_cpu_gemm(out + (size_t)r0 * a->out_len + (size_t)h * D, a->out_len, S, nk, 0, v_at(a, t0, g),
              a->row_len, 0, NULL, nq, D, nk, 0, 0);
}

void sn_cpu_attention_forward(void *out, float *lse, const void *qkv, const int32_t *cu_seqlens,
                              int B, int T, int max_seqlen, int Hq, int Hkv, int D, int causal,
                              float scale) {
  // out (T, Hq * D); lse (Hq, T); qkv (T, (Hq + 2*Hkv) * D)
  attn a = make_attn(qkv, cu_seqlens, B, T, Hq, Hkv, D, causal, scale);
  int nblocks;
  row_block *blocks = make_row_blocks(cu_seqlens, B, &nblocks);
  int items = nblocks * Hq;
  size_t work = (size_t)T * Hq * D * SN_MAX(max_seqlen, 1);
#pragma omp parallel for schedule(dynamic, 1) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int it = 0; it < items; it++) forward_item(&a, &blocks[it / Hq], it % Hq, out, lse);
  free(blocks);
}

// ---- backward -----------------------------------------------------------------------------------
typedef struct {
  const float *dout, *lse, *delta;  // (T, Hq*D), (Hq, T), (Hq, T)
  float *dqkv;                      // (T, (Hq + 2*Hkv) * D)
} attn_grads;

// dQ of one query block and head: dS = P (dO V^T - Delta) scaled, dQ = dS K.
static void dq_item(const attn *a, const attn_grads *gr, const row_block *blk, int h) {
  int g = h / a->group, D = a->D;
  int t0 = a->cu_seqlens[blk->seq], r0 = blk->start, nq = blk->end - blk->start;
  int nk = (a->causal ? blk->end : a->cu_seqlens[blk->seq + 1]) - t0;
  float *S = sn_cpu_scratch(SN_CPU_SCRATCH_OP, 2 * (size_t)nq * nk * sizeof(float));
  float *dP = S + (size_t)nq * nk;  // both (nq, nk)
  const float *dO = gr->dout + (size_t)r0 * a->out_len + (size_t)h * D;
  sn_cpu_gemm(S, nk, q_at(a, r0, h), a->row_len, 0, k_at(a, t0, g), a->row_len, 1, NULL, nq, nk,
              D, 0, 0);
  sn_cpu_gemm(dP, nk, dO, a->out_len, 0, v_at(a, t0, g), a->row_len, 1, NULL, nq, nk, D, 0, 0);
  for (int r = 0; r < nq; r++) {
    int i = r0 + r;
    size_t stat = (size_t)h * a->T + i;
    float *s = S + (size_t)r * nk, *dp = dP + (size_t)r * nk;
    for (int j = 0; j < nk; j++) {
      float p = visible(a, i, t0 + j) ? expf(a->scale * s[j] - gr->lse[stat]) : 0.0f;
      s[j] = a->scale * p * (dp[j] - gr->delta[stat]);  // scale dS: dQ = scale dS K
    }
  }
  sn_cpu_gemm(gr->dqkv + (size_t)r0 * a->row_len + (size_t)h * D, a->row_len, S, nk, 0,
              k_at(a, t0, g), a->row_len, 0, NULL, nq, D, nk, 0, 0);
}

// dK and dV of one key block and kv head, summed over the group's query heads in order.
static void dkv_item(const attn *a, const attn_grads *gr, const row_block *blk, int g) {
  int D = a->D, c0 = blk->start, nk = blk->end - blk->start;
  int q0 = a->causal ? c0 : a->cu_seqlens[blk->seq], nq = a->cu_seqlens[blk->seq + 1] - q0;
  float *St = sn_cpu_scratch(SN_CPU_SCRATCH_OP, 2 * (size_t)nk * nq * sizeof(float));
  float *dPt = St + (size_t)nk * nq;  // both (nk, nq): keys are rows here
  float *dK = gr->dqkv + (size_t)c0 * a->row_len + (size_t)(a->Hq + g) * D;
  float *dV = gr->dqkv + (size_t)c0 * a->row_len + (size_t)(a->Hq + a->Hkv + g) * D;
  for (int h = g * a->group; h < (g + 1) * a->group; h++) {
    const float *dO = gr->dout + (size_t)q0 * a->out_len + (size_t)h * D;
    int accumulate = h > g * a->group;  // the first head writes, the others add
    sn_cpu_gemm(St, nq, k_at(a, c0, g), a->row_len, 0, q_at(a, q0, h), a->row_len, 1, NULL, nk,
                nq, D, 0, 0);
    sn_cpu_gemm(dPt, nq, v_at(a, c0, g), a->row_len, 0, dO, a->out_len, 1, NULL, nk, nq, D, 0, 0);
    for (int r = 0; r < nk; r++) {
      int j = c0 + r;
      float *s = St + (size_t)r * nq, *dp = dPt + (size_t)r * nq;
      for (int c = 0; c < nq; c++) {
        int i = q0 + c;
        size_t stat = (size_t)h * a->T + i;
        float p = visible(a, i, j) ? expf(a->scale * s[c] - gr->lse[stat]) : 0.0f;
        s[c] = p;                                          // P^T
        dp[c] = a->scale * p * (dp[c] - gr->delta[stat]);  // scale dS^T
      }
    }
    sn_cpu_gemm(dV, a->row_len, St, nq, 0, dO, a->out_len, 0, NULL, nk, D, nq, accumulate, 0);
    sn_cpu_gemm(dK, a->row_len, dPt, nq, 0, q_at(a, q0, h), a->row_len, 0, NULL, nk, D, nq,
                accumulate, 0);
  }
}

void sn_cpu_attention_backward(void *dqkv, const void *dout, const void *qkv, const void *out,
                               const float *lse, const int32_t *cu_seqlens, int B, int T,
                               int max_seqlen, int Hq, int Hkv, int D, int causal, float scale) {
  attn a = make_attn(qkv, cu_seqlens, B, T, Hq, Hkv, D, causal, scale);
  const float *dO = dout, *O = out;
  float *delta = mallocCheck((size_t)SN_MAX(Hq * T, 1) * sizeof(float));  // (Hq, T) dO . O
  attn_grads gr = {dO, lse, delta, dqkv};
  int nblocks;
  row_block *blocks = make_row_blocks(cu_seqlens, B, &nblocks);
  int q_items = nblocks * Hq, kv_items = nblocks * Hkv;
  size_t work = (size_t)T * Hq * D * SN_MAX(max_seqlen, 1);
#pragma omp parallel if (work >= SN_CPU_PARALLEL_MIN_WORK)
  {
#pragma omp for schedule(static)
    for (int t = 0; t < T; t++) {
      for (int h = 0; h < Hq; h++) {
        const float *x = dO + (size_t)t * a.out_len + (size_t)h * D;
        const float *y = O + (size_t)t * a.out_len + (size_t)h * D;
        double sum = 0.0;
        for (int d = 0; d < D; d++) sum += (double)x[d] * y[d];
        delta[(size_t)h * T + t] = (float)sum;
      }
    }
#pragma omp for schedule(dynamic, 1)
    for (int it = 0; it < q_items; it++) dq_item(&a, &gr, &blocks[it / Hq], it % Hq);
#pragma omp for schedule(dynamic, 1)
    for (int it = 0; it < kv_items; it++) dkv_item(&a, &gr, &blocks[it / Hkv], it % Hkv);
  }
  free(blocks);
  free(delta);
}
