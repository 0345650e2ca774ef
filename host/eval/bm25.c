// placeholder: replaced by the h18-bm25 branch at merge.
// A minimal, straightforward implementation of bm25.h so that sn_mine --bm25 builds and is tested
// before the real one lands: ASCII-lowercased tokens split at non-alphanumeric bytes (bytes >= 0x80
// count as letters), an optional tiny English stopword list, no stemming (opts->stem is ignored),
// Lucene's BM25 (idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf * (k1 + 1) / (tf + k1 * (1 - b + b *
// dl / avgdl))), each query scored by walking its terms' postings into a dense accumulator.
#define _GNU_SOURCE
#include "bm25.h"

#include <ctype.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

void sn_bm25_opts_default(sn_bm25_opts *o) {
  *o = (sn_bm25_opts){.k1 = 0.9f, .b = 0.4f, .lowercase = 1, .stopwords = 1, .stem = 1};
}

typedef struct {
  char *term;
  int64_t n, cap;
  int32_t *docs, *tfs;  // postings in document order
} posting_list;

struct sn_bm25_index {
  sn_bm25_opts opts;
  int64_t n_docs;
  float *doc_len;
  double avg_len;
  posting_list *terms;  // open addressing by term hash; NULL term = empty slot
  size_t cap, count;
};

static const char *const STOPWORDS[] = {"a", "an", "and", "are", "as", "at", "be", "but", "by", "for",
                                        "if", "in", "into", "is", "it", "no", "not", "of", "on", "or",
                                        "such", "that", "the", "their", "then", "there", "these",
                                        "they", "this", "to", "was", "will", "with"};

static int is_stopword(const char *w) {
  for (size_t i = 0; i < SN_ARRAY_LEN(STOPWORDS); i++)
    if (!strcmp(w, STOPWORDS[i])) return 1;
  return 0;
}

static int is_word_byte(unsigned char c) { return isalnum(c) || c >= 0x80; }

// Calls fn(term, ctx) for each token of s.
static void tokenize(const sn_bm25_opts *o, const char *s, void (*fn)(const char *, void *), void *ctx) {
  char word[256];
  while (*s) {
    while (*s && !is_word_byte((unsigned char)*s)) s++;
    size_t n = 0;
    while (*s && is_word_byte((unsigned char)*s)) {
      if (n + 1 < sizeof word) word[n++] = o->lowercase ? (char)tolower((unsigned char)*s) : *s;
      s++;
    }
    word[n] = '\0';
    if (n && !(o->stopwords && is_stopword(word))) fn(word, ctx);
  }
}

static size_t term_slot(const sn_bm25_index *ix, const char *term) {
  size_t h = (size_t)sn_hash64(term, strlen(term), 0) & (ix->cap - 1);
  while (ix->terms[h].term && strcmp(ix->terms[h].term, term)) h = (h + 1) & (ix->cap - 1);
  return h;
}

static void grow(sn_bm25_index *ix) {
  posting_list *old = ix->terms;
  size_t old_cap = ix->cap;
  ix->cap = old_cap ? 2 * old_cap : 1024;
  ix->terms = callocCheck(ix->cap, sizeof *ix->terms);
  for (size_t i = 0; i < old_cap; i++)
    if (old[i].term) ix->terms[term_slot(ix, old[i].term)] = old[i];
  free(old);
}

typedef struct {
  sn_bm25_index *ix;
  int32_t doc;
  float len;
} add_ctx;

static void add_term(const char *term, void *p) {
  add_ctx *c = p;
  sn_bm25_index *ix = c->ix;
  c->len += 1;
  if (2 * (ix->count + 1) > ix->cap) grow(ix);
  posting_list *pl = &ix->terms[term_slot(ix, term)];
  if (!pl->term) {
    pl->term = strdupCheck(term);
    ix->count++;
  }
  if (pl->n && pl->docs[pl->n - 1] == c->doc) {
    pl->tfs[pl->n - 1]++;
    return;
  }
  if (pl->n == pl->cap) {
    pl->cap = pl->cap ? 2 * pl->cap : 4;
    pl->docs = reallocCheck(pl->docs, (size_t)pl->cap * sizeof(int32_t));
    pl->tfs = reallocCheck(pl->tfs, (size_t)pl->cap * sizeof(int32_t));
  }
  pl->docs[pl->n] = c->doc;
  pl->tfs[pl->n++] = 1;
}

sn_bm25_index *sn_bm25_build(const char *const *titles, const char *const *texts, int64_t n,
                             const sn_bm25_opts *opts, int threads, char *err, size_t errlen) {
  (void)threads;
  if (n <= 0) {
    sn_errorf(err, errlen, "empty corpus");
    return NULL;
  }
  if (n > INT32_MAX) {
    sn_errorf(err, errlen, "%lld documents: more than this index holds", (long long)n);
    return NULL;
  }
  sn_bm25_index *ix = callocCheck(1, sizeof *ix);
  ix->opts = *opts;
  ix->n_docs = n;
  ix->doc_len = mallocCheck((size_t)n * sizeof(float));
  grow(ix);
  double total = 0;
  for (int64_t i = 0; i < n; i++) {
    add_ctx c = {.ix = ix, .doc = (int32_t)i};
    if (titles && titles[i]) tokenize(opts, titles[i], add_term, &c);
    tokenize(opts, texts[i], add_term, &c);
    ix->doc_len[i] = c.len;
    total += c.len;
  }
  ix->avg_len = total / (double)n;
  return ix;
}

typedef struct {
  const sn_bm25_index *ix;
  float *acc;            // (n_docs) scores of this query
  int32_t *touched;      // documents with a score
  int64_t n_touched;
  char **seen;           // query terms already scored (each term counts once)
  int n_seen, cap_seen;
} query_ctx;

static void score_term(const char *term, void *p) {
  query_ctx *q = p;
  for (int i = 0; i < q->n_seen; i++)
    if (!strcmp(q->seen[i], term)) return;
  if (q->n_seen == q->cap_seen) {
    q->cap_seen = q->cap_seen ? 2 * q->cap_seen : 16;
    q->seen = reallocCheck(q->seen, (size_t)q->cap_seen * sizeof(char *));
  }
  q->seen[q->n_seen++] = strdupCheck(term);
  const sn_bm25_index *ix = q->ix;
  const posting_list *pl = &ix->terms[term_slot(ix, term)];
  if (!pl->term) return;
  const double df = (double)pl->n, N = (double)ix->n_docs;
  const double idf = log(1.0 + (N - df + 0.5) / (df + 0.5));
  const double k1 = ix->opts.k1, b = ix->opts.b;
  for (int64_t j = 0; j < pl->n; j++) {
    int32_t d = pl->docs[j];
    double tf = pl->tfs[j];
    double s = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * ix->doc_len[d] / ix->avg_len));
    if (isinf(q->acc[d])) {
      q->acc[d] = 0;
      q->touched[q->n_touched++] = d;
    }
    q->acc[d] += (float)s;
  }
}

typedef struct {
  float score;
  int32_t idx;
  const char *id;
} hit;

static int cmp_hit(const void *pa, const void *pb) {  // trec order: score desc, id (or index) desc
  const hit *a = pa, *b = pb;
  if (a->score != b->score) return a->score > b->score ? -1 : 1;
  if (a->id) return -strcmp(a->id, b->id);
  return (a->idx < b->idx) - (a->idx > b->idx);
}

int sn_bm25_search(const sn_bm25_index *ix, const char *const *queries, int Q, int k,
                   const char *const *doc_ids, int threads, int32_t *out_idx, float *out_scores) {
  if (k > ix->n_docs) k = (int)ix->n_docs;
  int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
  {
    query_ctx q = {.ix = ix};
    q.acc = mallocCheck((size_t)ix->n_docs * sizeof(float));
    q.touched = mallocCheck((size_t)ix->n_docs * sizeof(int32_t));
    hit *hits = mallocCheck((size_t)ix->n_docs * sizeof(hit));
    for (int64_t d = 0; d < ix->n_docs; d++) q.acc[d] = -INFINITY;
#pragma omp for schedule(dynamic)
    for (int i = 0; i < Q; i++) {
      q.n_touched = 0;
      tokenize(&ix->opts, queries[i], score_term, &q);
      for (int64_t j = 0; j < q.n_touched; j++) {
        int32_t d = q.touched[j];
        hits[j] = (hit){q.acc[d], d, doc_ids ? doc_ids[d] : NULL};
        q.acc[d] = -INFINITY;
      }
      qsort(hits, (size_t)q.n_touched, sizeof(hit), cmp_hit);
      for (int j = 0; j < k; j++) {
        out_idx[(size_t)i * k + j] = j < q.n_touched ? hits[j].idx : -1;
        out_scores[(size_t)i * k + j] = j < q.n_touched ? hits[j].score : -INFINITY;
      }
      for (int j = 0; j < q.n_seen; j++) free(q.seen[j]);
      q.n_seen = 0;
    }
    free(q.seen);
    free(q.acc);
    free(q.touched);
    free(hits);
  }
  return 0;
}

int64_t sn_bm25_num_docs(const sn_bm25_index *ix) { return ix->n_docs; }

void sn_bm25_free(sn_bm25_index *ix) {
  if (!ix) return;
  for (size_t i = 0; i < ix->cap; i++) {
    free(ix->terms[i].term);
    free(ix->terms[i].docs);
    free(ix->terms[i].tfs);
  }
  free(ix->terms);
  free(ix->doc_len);
  free(ix);
}
