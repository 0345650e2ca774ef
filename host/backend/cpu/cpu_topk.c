// Exact top-k for evaluation: the fp32 score product and the merge of a block of candidates into
// running per-query lists (the reference for kernels/topk.cu, which must match it bit for bit).
//
// Ranking is by one unique 64-bit key per candidate: the score's bits mapped so that unsigned
// order is float order (high 32 bits), then the tie key (low 32 bits). Empty list entries get
// keys 1..k, below every real key (the lowest, -inf with tie key 0, is 0x007fffff << 32).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

#define SCORES_TILE 64  // documents per inner tile of the product (their rows stay in L1/L2)
#define DOT_LANES 8     // partial sums per dot product (one AVX register of floats)
#define SIGN_BIT 0x80000000u

// S (M, N) = A (M, K) · B (N, K)^T, fp32 accumulation. Each element is one thread's dot product
// in a fixed order, so the result does not depend on the thread count.
void sn_cpu_scores_f32(float *S, const float *A, const float *B, int M, int N, int K) {
  double work = 2.0 * M * (double)N * K;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_FLOPS)
  for (int i = 0; i < M; i++) {
    const float *a = A + (size_t)i * K;
    for (int j0 = 0; j0 < N; j0 += SCORES_TILE) {
      int j1 = SN_MIN(N, j0 + SCORES_TILE);
      for (int j = j0; j < j1; j++) {
        const float *b = B + (size_t)j * K;
        // independent partial sums: the compiler vectorizes them (one chain would not, without
        // -ffast-math)
        float acc[DOT_LANES] = {0};
        int c = 0;
        for (; c + DOT_LANES <= K; c += DOT_LANES)
          for (int l = 0; l < DOT_LANES; l++) acc[l] += a[c + l] * b[c + l];
        float sum = 0.0f;
        for (int l = 0; l < DOT_LANES; l++) sum += acc[l];
        for (; c < K; c++) sum += a[c] * b[c];
        S[(size_t)i * N + j] = sum;
      }
    }
  }
}

// ---- keys -----------------------------------------------------------------------------------------
typedef struct {
  uint64_t key;
  int32_t idx;  // document index, -1 for an empty entry
} keyed;

// Flips negative floats entirely and sets the sign of positive ones: unsigned order = float order.
static inline uint32_t score_order_bits(float s) {
  if (s == 0.0f) s = 0.0f;  // -0.0 ranks (and is stored) as +0.0, as the host's == compares them
  uint32_t u;
  memcpy(&u, &s, sizeof u);
  return (u & SIGN_BIT) ? ~u : (u | SIGN_BIT);
}
static inline float score_from_order_bits(uint32_t u) {
  u = (u & SIGN_BIT) ? (u & ~SIGN_BIT) : ~u;
  float s;
  memcpy(&s, &u, sizeof s);
  return s;
}
static inline uint64_t candidate_key(float score, int32_t idx, const int32_t *tie_key) {
  uint32_t tie = (uint32_t)(tie_key ? tie_key[idx] : idx);
  return ((uint64_t)score_order_bits(score) << 32) | tie;
}

// Min-heap on key: the root is the worst of the k kept.
static void heap_sift_down(keyed *h, int n, int i) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, w = i;
    if (l < n && h[l].key < h[w].key) w = l;
    if (r < n && h[r].key < h[w].key) w = r;
    if (w == i) return;
    keyed tmp = h[i];
    h[i] = h[w];
    h[w] = tmp;
    i = w;
  }
}

// One row: the heap starts as the k old entries, every candidate better than its root replaces
// it, then the heap empties worst-first into the back of the row.
static void merge_row(keyed *h, float *best_score, int32_t *best_idx, const float *scores, int nd,
                      int k, int col0, const int32_t *tie_key) {
  for (int p = 0; p < k; p++) {
    int32_t idx = best_idx[p];
    h[p].idx = idx < 0 ? -1 : idx;
    h[p].key = idx < 0 ? (uint64_t)(p + 1) : candidate_key(best_score[p], idx, tie_key);
  }
  for (int i = k / 2 - 1; i >= 0; i--) heap_sift_down(h, k, i);
  for (int j = 0; j < nd; j++) {
    int32_t idx = col0 + j;
    uint64_t key = candidate_key(scores[j], idx, tie_key);
    if (key > h[0].key) {
      h[0] = (keyed){key, idx};
      heap_sift_down(h, k, 0);
    }
  }
  for (int n = k; n > 0; n--) {
    best_idx[n - 1] = h[0].idx;
    best_score[n - 1] = h[0].idx < 0 ? -INFINITY : score_from_order_bits((uint32_t)(h[0].key >> 32));
    h[0] = h[n - 1];
    heap_sift_down(h, n - 1, 0);
  }
}

void sn_cpu_topk_merge(float *best_score, int32_t *best_idx, const float *scores, int nq, int nd,
                       int k, int col0, const int32_t *tie_key) {
  if (k < 1 || k > SN_TOPK_MAX_K) sn_fatal("topk_merge: k = %d outside [1, %d]", k, SN_TOPK_MAX_K);
  if (nd < 0) sn_fatal("topk_merge: nd = %d < 0", nd);
  double work = (double)nq * (nd + k);
#pragma omp parallel if (work >= SN_CPU_PARALLEL_MIN_WORK)
  {
    keyed *heap = mallocCheck((size_t)k * sizeof *heap);
#pragma omp for schedule(static)
    for (int i = 0; i < nq; i++)
      merge_row(heap, best_score + (size_t)i * k, best_idx + (size_t)i * k, scores + (size_t)i * nd, nd, k,
                col0, tie_key);
    free(heap);
  }
}
