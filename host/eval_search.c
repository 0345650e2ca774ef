// Exact top-k by inner product: score blocks (queries × documents) from a matrix product, then a
// per-query min-heap of the k best seen so far. Blocks bound memory (QUERY_BLOCK × DOC_BLOCK
// floats) whatever the corpus size; queries of a block are spread over OpenMP threads.
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "eval.h"

#define QUERY_BLOCK 256
#define DOC_BLOCK 4096
#define HOST_GEMM_TILE 64  // documents per inner tile of the host product (stays in L1/L2)
#define DOT_LANES 8        // partial sums per dot product (one AVX register of floats)

typedef struct {
  float score;
  int32_t idx;
} scored;

typedef struct {
  const char *const *ids;  // NULL: ties broken by index
} tie_rule;

// 1 when a ranks above b in trec order (score desc, then id desc).
static inline int ranks_above(scored a, scored b, const tie_rule *t) {
  if (a.score != b.score) return a.score > b.score;
  if (t->ids) return strcmp(t->ids[a.idx], t->ids[b.idx]) > 0;
  return a.idx > b.idx;
}

// Min-heap on trec order: the root is the worst of the k kept.
static void heap_sift_down(scored *h, int n, int i, const tie_rule *t) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, w = i;
    if (l < n && ranks_above(h[w], h[l], t)) w = l;
    if (r < n && ranks_above(h[w], h[r], t)) w = r;
    if (w == i) return;
    scored tmp = h[i];
    h[i] = h[w];
    h[w] = tmp;
    i = w;
  }
}

static void heap_sift_up(scored *h, int i, const tie_rule *t) {
  while (i > 0) {
    int p = (i - 1) / 2;
    if (!ranks_above(h[p], h[i], t)) return;
    scored tmp = h[i];
    h[i] = h[p];
    h[p] = tmp;
    i = p;
  }
}

static void heap_offer(scored *h, int *n, int k, scored x, const tie_rule *t) {
  if (*n < k) {
    h[*n] = x;
    heap_sift_up(h, (*n)++, t);
  } else if (ranks_above(x, h[0], t)) {
    h[0] = x;
    heap_sift_down(h, k, 0, t);
  }
}

// S (nq, nd) = Q (nq, C) · D (nd, C)^T on the host, fp32 accumulation like the op table's matmul.
static void host_scores(float *S, const float *Q, int nq, const float *D, int nd, int C) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < nq; i++) {
    const float *q = Q + (size_t)i * C;
    for (int j0 = 0; j0 < nd; j0 += HOST_GEMM_TILE) {
      int j1 = SN_MIN(nd, j0 + HOST_GEMM_TILE);
      for (int j = j0; j < j1; j++) {
        const float *d = D + (size_t)j * C;
        // independent partial sums: the compiler vectorizes them (one chain would not, without
        // -ffast-math)
        float acc[DOT_LANES] = {0};
        int c = 0;
        for (; c + DOT_LANES <= C; c += DOT_LANES)
          for (int l = 0; l < DOT_LANES; l++) acc[l] += q[c + l] * d[c + l];
        float sum = 0.0f;
        for (int l = 0; l < DOT_LANES; l++) sum += acc[l];
        for (; c < C; c++) sum += q[c] * d[c];
        S[(size_t)i * nd + j] = sum;
      }
    }
  }
}

// The CPU backend's buffers are host memory in fp32, so its matmul can read ours directly.
static int ops_reads_host_f32(const sn_ops *ops) {
  return ops && ops->storage == SN_DTYPE_F32 && ops->name && !strcmp(ops->name, "cpu");
}

void sn_topk_exact(const sn_ops *ops, const float *docs, int64_t N, const float *queries, int Q,
                   int C, int k, const char *const *doc_ids, int32_t *out_idx, float *out_scores) {
  if (k > N) k = (int)N;
  if (k <= 0 || Q <= 0) return;
  const tie_rule tie = {doc_ids};
  float *S = mallocCheck((size_t)QUERY_BLOCK * DOC_BLOCK * sizeof *S);
  scored *heaps = mallocCheck((size_t)QUERY_BLOCK * (size_t)k * sizeof *heaps);
  int *heap_len = mallocCheck(QUERY_BLOCK * sizeof *heap_len);
  for (int q0 = 0; q0 < Q; q0 += QUERY_BLOCK) {
    int nq = SN_MIN(QUERY_BLOCK, Q - q0);
    memset(heap_len, 0, QUERY_BLOCK * sizeof *heap_len);
    for (int64_t d0 = 0; d0 < N; d0 += DOC_BLOCK) {
      int nd = (int)SN_MIN((int64_t)DOC_BLOCK, N - d0);
      const float *qb = queries + (size_t)q0 * C, *db = docs + (size_t)d0 * C;
      if (ops_reads_host_f32(ops))
        ops->matmul(S, qb, db, NULL, nq, nd, C, 0, 1, 0);
      else
        host_scores(S, qb, nq, db, nd, C);
#pragma omp parallel for schedule(static)
      for (int i = 0; i < nq; i++) {
        scored *h = heaps + (size_t)i * k;
        const float *row = S + (size_t)i * nd;
        for (int j = 0; j < nd; j++) heap_offer(h, &heap_len[i], k, (scored){row[j], (int32_t)(d0 + j)}, &tie);
      }
    }
    // Pop the worst into the back: the heap empties into best-first order.
#pragma omp parallel for schedule(static)
    for (int i = 0; i < nq; i++) {
      scored *h = heaps + (size_t)i * k;
      int32_t *idx = out_idx + (size_t)(q0 + i) * k;
      float *sc = out_scores + (size_t)(q0 + i) * k;
      for (int n = heap_len[i]; n > 0; n--) {
        idx[n - 1] = h[0].idx;
        sc[n - 1] = h[0].score;
        h[0] = h[n - 1];
        heap_sift_down(h, n - 1, 0, &tie);
      }
    }
  }
  free(S);
  free(heaps);
  free(heap_len);
}
