// A k-best list in trec order for one query, kept as a min-heap whose root is the worst kept entry:
// shared by the exact dense search (eval_search.c) and BM25 (bm25.c). Internal to host/eval.
//
// Trec order: score descending, ties by document id descending (strcmp), or by index descending
// when there are no ids.
#pragma once
#include <stdint.h>
#include <string.h>

typedef struct {
  float score;
  int32_t idx;
} sn_scored;

typedef struct {
  const char *const *ids;  // NULL: ties broken by index
} sn_tie_rule;

// 1 when a ranks above b in trec order.
static inline int sn_ranks_above(sn_scored a, sn_scored b, const sn_tie_rule *t) {
  if (a.score != b.score) return a.score > b.score;
  if (t->ids) return strcmp(t->ids[a.idx], t->ids[b.idx]) > 0;
  return a.idx > b.idx;
}

static inline void sn_heap_sift_down(sn_scored *h, int n, int i, const sn_tie_rule *t) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, w = i;
    if (l < n && sn_ranks_above(h[w], h[l], t)) w = l;
    if (r < n && sn_ranks_above(h[w], h[r], t)) w = r;
    if (w == i) return;
    sn_scored tmp = h[i];
    h[i] = h[w];
    h[w] = tmp;
    i = w;
  }
}

static inline void sn_heap_sift_up(sn_scored *h, int i, const sn_tie_rule *t) {
  while (i > 0) {
    int p = (i - 1) / 2;
    if (!sn_ranks_above(h[p], h[i], t)) return;
    sn_scored tmp = h[i];
    h[i] = h[p];
    h[p] = tmp;
    i = p;
  }
}

// Keeps x when the heap (*n of at most k entries) is not full or x ranks above its worst.
static inline void sn_heap_offer(sn_scored *h, int *n, int k, sn_scored x, const sn_tie_rule *t) {
  if (*n < k) {
    h[*n] = x;
    sn_heap_sift_up(h, (*n)++, t);
  } else if (sn_ranks_above(x, h[0], t)) {
    h[0] = x;
    sn_heap_sift_down(h, k, 0, t);
  }
}

// Empties the heap (n entries) into idx and score, best first: the worst is popped into the back.
static inline void sn_heap_drain(sn_scored *h, int n, const sn_tie_rule *t, int32_t *idx, float *score) {
  for (; n > 0; n--) {
    idx[n - 1] = h[0].idx;
    score[n - 1] = h[0].score;
    h[0] = h[n - 1];
    sn_heap_sift_down(h, n - 1, 0, t);
  }
}
