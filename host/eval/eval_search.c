// Exact top-k by inner product, on the host or on the device.
//
// Host: score blocks (queries × documents) from a matrix product, then a per-query min-heap of the
// k best seen so far. Blocks bound memory (QUERY_BLOCK × DOC_BLOCK floats) whatever the corpus
// size; queries of a block are spread over OpenMP threads.
// Device: a slice of the queries (DEVICE_QUERY_SLICE at most, fewer for deep lists) and their
// running lists stay on the device while every document block is uploaded and each query block gets
// scores_f32 then topk_merge against it; then the next slice. Ties go by each id's rank in strcmp
// order, so the lists come out in the same trec order as the host's. The device memory is bounded
// whatever the number of queries (a mining round searches with every training example):
// sn_topk_device_bound.
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "eval.h"
#include "topk_heap.h"

#define QUERY_BLOCK 256
#define DOC_BLOCK 4096
// Device blocks: a (DEVICE_QUERY_BLOCK, DEVICE_DOC_BLOCK) fp32 score block is 64 MiB, a document
// block of 16384 × 3584 fp32 235 MiB; each merge also rereads the k old entries, so documents
// per block should be well above k.
#define DEVICE_QUERY_BLOCK 1024
#define DEVICE_DOC_BLOCK 16384
// Queries resident on the device at once, and the bytes their lists (score + index per entry) may
// take: a slice of 32768 queries of 3584 dims is 470 MB, and costs one more upload of the documents
// (a 1M x 896 corpus: 3.6 GB, ~0.2 s, against ~3 s of scoring the slice against it).
#define DEVICE_QUERY_SLICE 32768
#define DEVICE_LIST_BYTES ((size_t)64 << 20)
#define EMPTY_IDX (-1)  // topk_merge's empty list entry

// The CPU backend's buffers are host memory in fp32, so its matmul can read ours directly.
static int ops_reads_host_f32(const sn_ops *ops) {
  return ops && ops->storage == SN_DTYPE_F32 && ops->name && !strcmp(ops->name, "cpu");
}

// A device backend with the top-k ops, and a search they can do (int32 document indices, k within
// what topk_merge keeps; d0 + DEVICE_DOC_BLOCK must not overflow).
static int runs_on_device(const sn_ops *ops, int64_t N, int k) {
  return ops && ops->name && !strcmp(ops->name, "cuda") && ops->scores_f32 && ops->topk_merge &&
         N <= INT32_MAX - DEVICE_DOC_BLOCK && k <= SN_TOPK_MAX_K;
}

typedef struct {
  const char *id;
  int32_t idx;
} id_ref;
static int cmp_id_ref(const void *a, const void *b) {
  const id_ref *x = a, *y = b;
  int c = strcmp(x->id, y->id);
  return c ? c : (x->idx > y->idx) - (x->idx < y->idx);  // duplicate ids: still unique keys
}

int32_t *sn_doc_id_ranks(const char *const *ids, int N) {
  id_ref *refs = mallocCheck((size_t)N * sizeof *refs);
  for (int i = 0; i < N; i++) refs[i] = (id_ref){ids[i], i};
  qsort(refs, (size_t)N, sizeof *refs, cmp_id_ref);
  int32_t *rank = mallocCheck((size_t)N * sizeof *rank);
  for (int r = 0; r < N; r++) rank[refs[r].idx] = r;
  free(refs);
  return rank;
}

// Queries of one device slice for lists of k entries.
static int device_slice(int k) {
  const size_t by_lists = DEVICE_LIST_BYTES / ((size_t)k * (sizeof(float) + sizeof(int32_t)));
  return (int)SN_MIN((size_t)DEVICE_QUERY_SLICE, SN_MAX(by_lists, (size_t)1));
}

size_t sn_topk_device_bound(int C) {
  return (size_t)DEVICE_QUERY_SLICE * C * sizeof(float) +  // a slice's queries
         DEVICE_LIST_BYTES +                                // their running lists (device_slice keeps them within)
         (size_t)DEVICE_DOC_BLOCK * C * sizeof(float) +     // a document block
         (size_t)DEVICE_QUERY_BLOCK * DEVICE_DOC_BLOCK * sizeof(float);  // a score block
}

void sn_topk_exact_sliced(const sn_ops *ops, const float *docs, int N, const float *queries, int Q, int C, int k,
                          const char *const *doc_ids, int32_t *out_idx, float *out_scores, int slice) {
  slice = SN_MAX(1, SN_MIN(Q, slice));
  const int qb = SN_MIN(slice, DEVICE_QUERY_BLOCK), db = SN_MIN(N, DEVICE_DOC_BLOCK);
  float *d_queries = ops->alloc((size_t)slice * C * sizeof(float));       // (slice, C)
  float *d_docs = ops->alloc((size_t)db * C * sizeof(float));             // (db, C)
  float *d_scores = ops->alloc((size_t)qb * db * sizeof(float));          // (qb, db)
  float *d_best_score = ops->alloc((size_t)slice * k * sizeof(float));    // (slice, k)
  int32_t *d_best_idx = ops->alloc((size_t)slice * k * sizeof(int32_t));  // (slice, k)
  int32_t *d_tie = NULL;                                                  // (N), NULL: by index
  if (doc_ids) {
    int32_t *rank = sn_doc_id_ranks(doc_ids, N);
    d_tie = ops->alloc((size_t)N * sizeof(int32_t));
    ops->upload(d_tie, rank, (size_t)N * sizeof(int32_t));
    free(rank);
  }
  for (int s0 = 0; s0 < Q; s0 += slice) {
    const int ns = SN_MIN(slice, Q - s0);
    int32_t *idx = out_idx + (size_t)s0 * k;
    ops->upload(d_queries, queries + (size_t)s0 * C, (size_t)ns * C * sizeof(float));
    // every list starts empty; the slice's rows of out_idx are the staging (overwritten at the end)
    for (size_t i = 0; i < (size_t)ns * k; i++) idx[i] = EMPTY_IDX;
    ops->upload(d_best_idx, idx, (size_t)ns * k * sizeof(int32_t));
    for (int d0 = 0; d0 < N; d0 += db) {
      const int nd = SN_MIN(db, N - d0);
      ops->upload(d_docs, docs + (size_t)d0 * C, (size_t)nd * C * sizeof(float));
      for (int q0 = 0; q0 < ns; q0 += qb) {
        const int nq = SN_MIN(qb, ns - q0);
        ops->scores_f32(d_scores, d_queries + (size_t)q0 * C, d_docs, nq, nd, C);
        ops->topk_merge(d_best_score + (size_t)q0 * k, d_best_idx + (size_t)q0 * k, d_scores, nq, nd, k,
                        d0, d_tie);
      }
    }
    ops->download(idx, d_best_idx, (size_t)ns * k * sizeof(int32_t));
    ops->download(out_scores + (size_t)s0 * k, d_best_score, (size_t)ns * k * sizeof(float));
  }
  ops->free(d_queries), ops->free(d_docs), ops->free(d_scores);
  ops->free(d_best_score), ops->free(d_best_idx);
  if (d_tie) ops->free(d_tie);
}

void sn_topk_exact(const sn_ops *ops, const float *docs, int64_t N, const float *queries, int Q,
                   int C, int k, const char *const *doc_ids, int32_t *out_idx, float *out_scores) {
  if (k > N) k = (int)N;
  if (k <= 0 || Q <= 0) return;
  if (runs_on_device(ops, N, k)) {
    sn_topk_exact_sliced(ops, docs, (int)N, queries, Q, C, k, doc_ids, out_idx, out_scores, device_slice(k));
    return;
  }
  const sn_ops *host = sn_ops_cpu();  // its buffers are host memory: its ops read ours directly
  const sn_tie_rule tie = {doc_ids};
  float *S = mallocCheck((size_t)QUERY_BLOCK * DOC_BLOCK * sizeof *S);
  sn_scored *heaps = mallocCheck((size_t)QUERY_BLOCK * (size_t)k * sizeof *heaps);
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
        host->scores_f32(S, qb, db, nq, nd, C);
#pragma omp parallel for schedule(static)
      for (int i = 0; i < nq; i++) {
        sn_scored *h = heaps + (size_t)i * k;
        const float *row = S + (size_t)i * nd;
        for (int j = 0; j < nd; j++) sn_heap_offer(h, &heap_len[i], k, (sn_scored){row[j], (int32_t)(d0 + j)}, &tie);
      }
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < nq; i++)
      sn_heap_drain(heaps + (size_t)i * k, heap_len[i], &tie, out_idx + (size_t)(q0 + i) * k,
                    out_scores + (size_t)(q0 + i) * k);
  }
  free(S);
  free(heaps);
  free(heap_len);
}
