// BM25 index and search (scoring and analyzer: bm25.h).
//
// Build: the corpus is cut into one contiguous slice of documents per thread. Each thread analyzes
// its slice into its own vocabulary (term → local id) and a (local term, tf) list per document.
// The vocabularies are then merged in thread order into the global one (term → id, document
// frequency), which fixes where each thread's share of every posting list starts, and every thread
// writes its postings in place: a term's postings come out in ascending document order, with no
// sort and no pass over the whole corpus by one thread. Each posting holds its document and its
// BM25 term weight tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl)), so a search multiplies
// by idf and adds.
// Search: queries are spread over threads; each thread has an accumulator of one float per
// document and the list of documents a query touched (term-at-a-time), so a query costs its
// postings plus its touched documents, never a pass over the corpus; the touched documents go
// through a k-entry heap in trec order (topk_heap.h).
#include "bm25.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "beir.h"  // sn_id_map
#include "common.h"
#include "topk_heap.h"

#define ARENA_CHUNK_BYTES (1 << 20)
#define VOCAB_EXPECTED_TERMS 4096
#define NO_DOC (-1)

// ---- strings that stay put: the id maps borrow their keys ---------------------------------------

typedef struct {
  char **chunks;
  int nchunks;
  size_t used;  // bytes used of the last chunk
} term_arena;

static const char *arena_copy(term_arena *a, const char *s, int len) {
  if (a->nchunks == 0 || a->used + (size_t)len + 1 > ARENA_CHUNK_BYTES) {
    a->chunks = reallocCheck(a->chunks, (size_t)(a->nchunks + 1) * sizeof *a->chunks);
    a->chunks[a->nchunks++] = mallocCheck(ARENA_CHUNK_BYTES);  // a term is at most 256 bytes
    a->used = 0;
  }
  char *p = a->chunks[a->nchunks - 1] + a->used;
  memcpy(p, s, (size_t)len + 1);
  a->used += (size_t)len + 1;
  return p;
}

// Moves src's chunks to the end of dst's list (src is left empty).
static void arena_take(term_arena *dst, term_arena *src) {
  if (src->nchunks == 0) return;  // a slice without a single term
  dst->chunks = reallocCheck(dst->chunks, (size_t)(dst->nchunks + src->nchunks) * sizeof *dst->chunks);
  memcpy(dst->chunks + dst->nchunks, src->chunks, (size_t)src->nchunks * sizeof *src->chunks);
  dst->nchunks += src->nchunks;
  dst->used = ARENA_CHUNK_BYTES;  // the last chunk may be another's: never write into it again
  free(src->chunks);
  memset(src, 0, sizeof *src);
}

static void arena_free(term_arena *a) {
  for (int i = 0; i < a->nchunks; i++) free(a->chunks[i]);
  free(a->chunks);
  memset(a, 0, sizeof *a);
}

// ---- the index ---------------------------------------------------------------------------------

struct sn_bm25_index {
  sn_bm25_opts opts;
  int64_t num_docs, num_terms, num_tokens;
  sn_id_map vocab;      // term → id in [0, num_terms); keys live in terms
  term_arena terms;
  float *idf;           // (num_terms)
  int64_t *offsets;     // (num_terms + 1): term t's postings are [offsets[t], offsets[t + 1])
  int32_t *post_doc;    // (postings) document index, ascending within a term
  float *post_weight;   // (postings) the term weight in that document (see the top)
};

void sn_bm25_opts_default(sn_bm25_opts *o) {
  *o = (sn_bm25_opts){.k1 = SN_BM25_DEFAULT_K1, .b = SN_BM25_DEFAULT_B, .lowercase = 1, .stopwords = 1, .stem = 1};
}

int sn_bm25_opts_check(const sn_bm25_opts *o, const char *k1_name, const char *b_name, char *err, size_t errlen) {
  if (!(isfinite(o->k1) && o->k1 >= 0))
    return sn_errorf(err, errlen, "%s: expected a finite number >= 0 (term-frequency saturation; 0.9 is usual), got %g",
                     k1_name, o->k1);
  if (!(o->b >= 0 && o->b <= 1))
    return sn_errorf(err, errlen, "%s: expected a number in [0, 1] (length normalisation; 0.4 is usual), got %g",
                     b_name, o->b);
  return 0;
}

int64_t sn_bm25_num_docs(const sn_bm25_index *x) { return x->num_docs; }
int64_t sn_bm25_num_terms(const sn_bm25_index *x) { return x->num_terms; }
int64_t sn_bm25_num_tokens(const sn_bm25_index *x) { return x->num_tokens; }

void sn_bm25_free(sn_bm25_index *x) {
  if (!x) return;
  sn_id_map_free(&x->vocab);
  arena_free(&x->terms);
  free(x->idf);
  free(x->offsets);
  free(x->post_doc);
  free(x->post_weight);
  free(x);
}

static int resolve_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

// ---- build: one slice of documents per thread ---------------------------------------------------

typedef struct {
  int32_t term;  // local id while building a slice
  int32_t tf;
} term_count;

typedef struct {
  int64_t d0, d1;           // the slice [d0, d1)
  sn_id_map vocab;          // term → local id
  term_arena terms;
  int32_t *local_df;        // (local terms) documents of the slice holding the term
  int64_t *last_doc;        // (local terms) the last document that counted it
  int64_t *pair_of;         // (local terms) where that document's count is in pairs
  int32_t local_terms, local_cap;
  term_count *pairs;        // every document's distinct terms, document after document
  int64_t npairs, pairs_cap;
  int64_t *doc_end;         // (d1 - d0) end of each document's pairs
  int64_t doc;              // the document being analyzed
  int32_t *doc_len;         // (num_docs) shared; the slice writes its own entries
  int32_t *to_global;       // (local terms) global id, after the merge
  int64_t *write_at;        // (local terms) next posting slot of the slice in the term's list
} slice;

static void slice_count_term(const char *term, int len, void *ctx) {
  slice *s = ctx;
  int32_t id = sn_id_map_get(&s->vocab, term);
  if (id < 0) {
    if (s->local_terms == s->local_cap) {
      s->local_cap = s->local_cap ? 2 * s->local_cap : VOCAB_EXPECTED_TERMS;
      s->local_df = reallocCheck(s->local_df, (size_t)s->local_cap * sizeof *s->local_df);
      s->last_doc = reallocCheck(s->last_doc, (size_t)s->local_cap * sizeof *s->last_doc);
      s->pair_of = reallocCheck(s->pair_of, (size_t)s->local_cap * sizeof *s->pair_of);
    }
    id = s->local_terms++;
    sn_id_map_put(&s->vocab, arena_copy(&s->terms, term, len), id);
    s->local_df[id] = 0;
    s->last_doc[id] = NO_DOC;
  }
  s->doc_len[s->doc]++;
  if (s->last_doc[id] == s->doc) {
    s->pairs[s->pair_of[id]].tf++;
    return;
  }
  if (s->npairs == s->pairs_cap) {
    s->pairs_cap = s->pairs_cap ? 2 * s->pairs_cap : VOCAB_EXPECTED_TERMS;
    s->pairs = reallocCheck(s->pairs, (size_t)s->pairs_cap * sizeof *s->pairs);
  }
  s->last_doc[id] = s->doc;
  s->pair_of[id] = s->npairs;
  s->local_df[id]++;
  s->pairs[s->npairs++] = (term_count){id, 1};
}

static void slice_analyze(slice *s, const char *const *titles, const char *const *texts, const sn_bm25_opts *o) {
  sn_id_map_init(&s->vocab, VOCAB_EXPECTED_TERMS);
  s->doc_end = mallocCheck((size_t)(s->d1 - s->d0) * sizeof *s->doc_end);
  for (s->doc = s->d0; s->doc < s->d1; s->doc++) {
    s->doc_len[s->doc] = 0;
    if (titles) sn_bm25_analyze(titles[s->doc], o, slice_count_term, s);  // the space between: a separator
    sn_bm25_analyze(texts[s->doc], o, slice_count_term, s);
    s->doc_end[s->doc - s->d0] = s->npairs;
  }
  free(s->last_doc), free(s->pair_of);
  s->last_doc = NULL, s->pair_of = NULL;
}

// The slices' vocabularies into x->vocab in slice order; document frequencies into df (grown to
// the global vocabulary, *cap entries).
static void merge_vocabularies(sn_bm25_index *x, slice *slices, int nslices, int64_t **df, int64_t *cap) {
  sn_id_map_init(&x->vocab, VOCAB_EXPECTED_TERMS);
  for (int t = 0; t < nslices; t++) {
    slice *s = &slices[t];
    s->to_global = mallocCheck((size_t)SN_MAX(s->local_terms, 1) * sizeof *s->to_global);
    for (size_t i = 0; i < s->vocab.cap; i++) {
      const char *term = s->vocab.keys[i];
      if (!term) continue;
      const int32_t local = s->vocab.values[i];
      int32_t g = sn_id_map_get(&x->vocab, term);
      if (g < 0) {
        if (x->num_terms == *cap) {
          *cap = *cap ? 2 * *cap : VOCAB_EXPECTED_TERMS;
          *df = reallocCheck(*df, (size_t)*cap * sizeof **df);
        }
        g = (int32_t)x->num_terms++;
        (*df)[g] = 0;
        sn_id_map_put(&x->vocab, term, g);  // the key stays in s->terms, moved into x->terms below
      }
      s->to_global[local] = g;
      (*df)[g] += s->local_df[local];
    }
    sn_id_map_free(&s->vocab);
    arena_take(&x->terms, &s->terms);
  }
}

// Postings of one slice, written at its reserved places, with their BM25 term weights.
static void slice_write_postings(slice *s, sn_bm25_index *x, const int32_t *doc_len, double avgdl) {
  const double k1 = x->opts.k1, b = x->opts.b;
  int64_t p = 0;
  for (int64_t d = s->d0; d < s->d1; d++) {
    const double norm = k1 * (1 - b + b * doc_len[d] / avgdl);
    for (; p < s->doc_end[d - s->d0]; p++) {
      const int32_t local = s->pairs[p].term;
      const double tf = s->pairs[p].tf;
      const int64_t at = s->write_at[local]++;
      x->post_doc[at] = (int32_t)d;
      x->post_weight[at] = (float)(tf * (k1 + 1) / (tf + norm));
    }
  }
}

static void slice_free(slice *s) {
  sn_id_map_free(&s->vocab);
  arena_free(&s->terms);
  free(s->local_df), free(s->last_doc), free(s->pair_of), free(s->pairs), free(s->doc_end);
  free(s->to_global), free(s->write_at);
}

sn_bm25_index *sn_bm25_build(const char *const *titles, const char *const *texts, int64_t n,
                             const sn_bm25_opts *opts, int threads, char *err, size_t errlen) {
  if (n <= 0) {
    sn_errorf(err, errlen, "BM25: empty corpus (no documents to index)");
    return NULL;
  }
  if (n > INT32_MAX) {
    sn_errorf(err, errlen, "BM25: %lld documents, at most %d can be indexed", (long long)n, INT32_MAX);
    return NULL;
  }
  if (sn_bm25_opts_check(opts, "k1", "b", err, errlen) != 0) return NULL;
  const int nslices = (int)SN_MIN((int64_t)resolve_threads(threads), n);
  sn_bm25_index *x = callocCheck(1, sizeof *x);
  x->opts = *opts;
  x->num_docs = n;
  int32_t *doc_len = mallocCheck((size_t)n * sizeof *doc_len);
  slice *slices = callocCheck((size_t)nslices, sizeof *slices);
  for (int t = 0; t < nslices; t++)
    slices[t] = (slice){.d0 = n * t / nslices, .d1 = n * (t + 1) / nslices, .doc_len = doc_len};

#pragma omp parallel for num_threads(nslices) schedule(static, 1)
  for (int t = 0; t < nslices; t++) slice_analyze(&slices[t], titles, texts, opts);

  int64_t *df = NULL, df_cap = 0;
  merge_vocabularies(x, slices, nslices, &df, &df_cap);
  const int64_t V = x->num_terms;
  x->offsets = mallocCheck((size_t)(V + 1) * sizeof *x->offsets);
  x->idf = mallocCheck((size_t)SN_MAX(V, 1) * sizeof *x->idf);
  x->offsets[0] = 0;
  for (int64_t t = 0; t < V; t++) {
    x->offsets[t + 1] = x->offsets[t] + df[t];
    x->idf[t] = (float)log(1.0 + (n - df[t] + 0.5) / (df[t] + 0.5));
  }
  // Each slice's share of a posting list starts where the earlier slices' shares end.
  int64_t *next = df;  // reused: next free slot of each term's list
  if (V > 0) memcpy(next, x->offsets, (size_t)V * sizeof *next);
  for (int t = 0; t < nslices; t++) {
    slice *s = &slices[t];
    s->write_at = mallocCheck((size_t)SN_MAX(s->local_terms, 1) * sizeof *s->write_at);
    for (int32_t l = 0; l < s->local_terms; l++) {
      s->write_at[l] = next[s->to_global[l]];
      next[s->to_global[l]] += s->local_df[l];
    }
  }
  free(df);
  for (int64_t d = 0; d < n; d++) x->num_tokens += doc_len[d];
  const double avgdl = x->num_tokens > 0 ? (double)x->num_tokens / n : 1.0;  // no tokens: no postings
  const int64_t P = x->offsets[V];
  x->post_doc = mallocCheck((size_t)SN_MAX(P, 1) * sizeof *x->post_doc);
  x->post_weight = mallocCheck((size_t)SN_MAX(P, 1) * sizeof *x->post_weight);

#pragma omp parallel for num_threads(nslices) schedule(static, 1)
  for (int t = 0; t < nslices; t++) {
    slice_write_postings(&slices[t], x, doc_len, avgdl);
    slice_free(&slices[t]);
  }
  free(slices);
  free(doc_len);
  return x;
}

// ---- search -------------------------------------------------------------------------------------

typedef struct {
  int32_t term;
  int count;  // occurrences in the query
} query_term;

typedef struct {
  const sn_bm25_index *x;
  query_term *terms;
  int n, cap;
} query_terms;

// Distinct known terms in first-occurrence order (a fixed summation order, whatever the threads).
static void collect_query_term(const char *term, int len, void *ctx) {
  (void)len;
  query_terms *q = ctx;
  const int32_t id = sn_id_map_get(&q->x->vocab, term);
  if (id < 0) return;
  for (int i = 0; i < q->n; i++)
    if (q->terms[i].term == id) {
      q->terms[i].count++;
      return;
    }
  if (q->n == q->cap) {
    q->cap = q->cap ? 2 * q->cap : 16;
    q->terms = reallocCheck(q->terms, (size_t)q->cap * sizeof *q->terms);
  }
  q->terms[q->n++] = (query_term){id, 1};
}

int sn_bm25_search(const sn_bm25_index *x, const char *const *queries, int Q, int k,
                   const char *const *doc_ids, int threads, int32_t *out_idx, float *out_scores) {
  const int64_t N = x->num_docs;
  if (k > N) k = (int)N;
  if (k <= 0 || Q <= 0) return 0;
  const sn_tie_rule tie = {doc_ids};
  const int nthreads = SN_MIN(resolve_threads(threads), Q);
#pragma omp parallel num_threads(nthreads)
  {
    float *acc = callocCheck((size_t)N, sizeof *acc);                 // (N) zero between queries
    int32_t *touched = mallocCheck((size_t)N * sizeof *touched);     // documents with acc > 0
    sn_scored *heap = mallocCheck((size_t)k * sizeof *heap);
    query_terms qt = {.x = x};
#pragma omp for schedule(dynamic, 1)
    for (int q = 0; q < Q; q++) {
      qt.n = 0;
      sn_bm25_analyze(queries[q], &x->opts, collect_query_term, &qt);
      int64_t ntouched = 0;
      for (int i = 0; i < qt.n; i++) {
        const int32_t t = qt.terms[i].term;
        const float weight = (float)qt.terms[i].count * x->idf[t];
        for (int64_t p = x->offsets[t]; p < x->offsets[t + 1]; p++) {
          const int32_t d = x->post_doc[p];
          if (acc[d] == 0.0f) touched[ntouched++] = d;  // every contribution is > 0 (idf > 0, tf > 0)
          acc[d] += weight * x->post_weight[p];
        }
      }
      int nheap = 0;
      for (int64_t i = 0; i < ntouched; i++) {
        const int32_t d = touched[i];
        sn_heap_offer(heap, &nheap, k, (sn_scored){acc[d], d}, &tie);
        acc[d] = 0.0f;
      }
      int32_t *idx = out_idx + (size_t)q * k;
      float *sc = out_scores + (size_t)q * k;
      sn_heap_drain(heap, nheap, &tie, idx, sc);
      for (int r = nheap; r < k; r++) idx[r] = -1, sc[r] = -INFINITY;
    }
    free(acc);
    free(touched);
    free(heap);
    free(qt.terms);
  }
  return 0;
}
