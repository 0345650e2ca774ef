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

#include "common.h"
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

// Multiply-adds of the forward, times 2, bounded with the longest sequence: the threading gate.
static double attention_flops(const attn *a, int max_seqlen) {
  return 4.0 * a->T * a->Hq * a->D * SN_MAX(max_seqlen, 1);
}

// p[c] = exp(scale * s[c] - shift[c]) for c in [c0, c1), 0 elsewhere (n entries); shift_stride
// is 1, or 0 for one shift for the whole row. p may be s.
static void probs_row(float *p, const float *s, int n, int c0, int c1, float scale,
                      const float *shift, int shift_stride) {
  for (int c = 0; c < c0; c++) p[c] = 0.0f;
  int c = c0;  // scores minus their row maximum or lse: exp of x <= 0, through sn_cpu_exp_v4
  for (; c + SN_CPU_EXP_LANES <= c1; c += SN_CPU_EXP_LANES) {
    sn_v4f sv, sh = {shift[0], shift[0], shift[0], shift[0]};
    memcpy(&sv, s + c, sizeof sv);
    if (shift_stride) memcpy(&sh, shift + c, sizeof sh);
    sn_v4f e = sn_cpu_exp_v4(sv * scale - sh);
    memcpy(p + c, &e, sizeof e);
  }
  if (c < c1) {  // the last partial vector; padding lanes compute exp(0), unused
    int lanes = c1 - c;
    sn_v4f x = {0};
    for (int l = 0; l < lanes; l++) x[l] = scale * s[c + l] - shift[(c + l) * shift_stride];
    sn_v4f e = sn_cpu_exp_v4(x);
    for (int l = 0; l < lanes; l++) p[c + l] = e[l];
  }
  for (c = c1; c < n; c++) p[c] = 0.0f;
}

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
// entries 0; writes lse (nq) of the scaled scores.
static void softmax_rows(const attn *a, float *S, int nq, int nk, int r0, int t0, float *lse) {
  for (int r = 0; r < nq; r++) {
    float *row = S + (size_t)r * nk;
    int i = r0 + r, n_visible = a->causal ? i - t0 + 1 : nk;
    float max_score = -INFINITY;
    for (int j = 0; j < n_visible; j++) max_score = fmaxf(max_score, row[j]);
    max_score *= a->scale;  // scale > 0: the max of the scaled scores
    probs_row(row, row, nk, 0, n_visible, a->scale, &max_score, 0);
    double sum = 0.0;
    for (int j = 0; j < n_visible; j++) sum += row[j];
    float inv_sum = (float)(1.0 / sum);
    for (int j = 0; j < n_visible; j++) row[j] *= inv_sum;
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
  softmax_rows(a, S, nq, nk, r0, t0, lse + (size_t)h * a->T + r0);
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
  int items = nblocks * Hq, threaded = attention_flops(&a, max_seqlen) >= SN_CPU_PARALLEL_MIN_FLOPS;
#pragma omp parallel for schedule(dynamic, 1) if (threaded)
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
    int i = r0 + r, n_visible = a->causal ? i - t0 + 1 : nk;
    size_t stat = (size_t)h * a->T + i;
    float *s = S + (size_t)r * nk, *dp = dP + (size_t)r * nk;
    probs_row(s, s, nk, 0, n_visible, a->scale, &gr->lse[stat], 0);
    float delta = gr->delta[stat];
    for (int j = 0; j < nk; j++) s[j] = a->scale * s[j] * (dp[j] - delta);  // scaled dS: dQ = dS K
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
    const float *lse = gr->lse + (size_t)h * a->T + q0, *delta = gr->delta + (size_t)h * a->T + q0;
    for (int r = 0; r < nk; r++) {
      int first_visible = a->causal ? r : 0;  // causal: queries i >= key j = c0 + r (q0 = c0)
      float *s = St + (size_t)r * nq, *dp = dPt + (size_t)r * nq;
      probs_row(s, s, nq, first_visible, nq, a->scale, lse, 1);              // P^T
      for (int c = 0; c < nq; c++) dp[c] = a->scale * s[c] * (dp[c] - delta[c]);  // scaled dS^T
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
  // Delta is O(T Hq D), cheap next to the O(T Hq D seqlen) items: on the calling thread, so the
  // items below need no barrier before them.
  for (int t = 0; t < T; t++) {
    for (int h = 0; h < Hq; h++) {
      const float *x = dO + (size_t)t * a.out_len + (size_t)h * D;
      const float *y = O + (size_t)t * a.out_len + (size_t)h * D;
      double sum = 0.0;
      for (int d = 0; d < D; d++) sum += (double)x[d] * y[d];
      delta[(size_t)h * T + t] = (float)sum;
    }
  }
  // dQ items then dK/dV items in one loop: they write disjoint parts of dqkv.
  int threaded = 2 * attention_flops(&a, max_seqlen) >= SN_CPU_PARALLEL_MIN_FLOPS;
#pragma omp parallel for schedule(dynamic, 1) if (threaded)
  for (int it = 0; it < q_items + kv_items; it++) {
    if (it < q_items)
      dq_item(&a, &gr, &blocks[it / Hq], it % Hq);
    else
      dkv_item(&a, &gr, &blocks[(it - q_items) / Hkv], (it - q_items) % Hkv);
  }
  free(blocks);
  free(delta);
}
