// The mining core (mine.h): positives matched to the corpus, the rank band, the margin and the
// seeded draw. Pure host code on lists someone else ranked (dense or BM25).
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "counter_rng.h"
#include "mine.h"

void sn_mine_opts_default(sn_mine_opts *o) {
  *o = (sn_mine_opts){.range_lo = SN_MINE_DEFAULT_RANGE_LO, .range_hi = SN_MINE_DEFAULT_RANGE_HI,
                      .negatives = SN_MINE_DEFAULT_NEGATIVES, .margin_kind = SN_MINE_MARGIN_NONE};
}

int sn_mine_check_opts(const sn_mine_opts *o, int64_t n_docs, const char *range_name, const char *negatives_name,
                       const char *margin_name, char *err, size_t errlen) {
  if (o->range_lo < 0 || o->range_hi <= o->range_lo)
    return sn_errorf(err, errlen, "%s %d:%d: expected 0 <= A < B", range_name, o->range_lo, o->range_hi);
  if (o->range_hi > n_docs)
    return sn_errorf(err, errlen, "%s %d:%d: the band ends past the corpus (%lld documents); expected B <= %lld",
                     range_name, o->range_lo, o->range_hi, (long long)n_docs, (long long)n_docs);
  if (o->negatives < 1 || o->negatives > o->range_hi - o->range_lo)
    return sn_errorf(err, errlen, "%s %d: expected 1 to %d, the width of %s %d:%d", negatives_name, o->negatives,
                     o->range_hi - o->range_lo, range_name, o->range_lo, o->range_hi);
  if (o->margin_kind != SN_MINE_MARGIN_NONE && !isfinite(o->margin))
    return sn_errorf(err, errlen, "%s: expected a finite number", margin_name);
  if (o->margin_kind == SN_MINE_MARGIN_RELATIVE && (o->margin < 0 || o->margin >= 1))
    return sn_errorf(err, errlen, "%s %g: expected a relative margin in [0, 1)", margin_name, o->margin);
  return 0;
}

// ---- positives → corpus records ----------------------------------------------------------------

// A record's two text forms: its text, and title + " " + text when it has a title.
typedef struct {
  uint64_t hash;
  int32_t doc;
  int titled;  // 1: the title + " " + text form
} text_key;

#define TITLE_SEPARATOR " "

// Hash of (title + " " +) text: the same value as the hash of the joined string.
static uint64_t hash_joined(const char *title, const char *text) {
  if (!title || !title[0]) return sn_hash64(text, strlen(text), 0);
  sn_strbuf b = {0};
  sn_strbuf_printf(&b, "%s" TITLE_SEPARATOR "%s", title, text);
  uint64_t h = sn_hash64(b.s, b.len, 0);
  free(b.s);
  return h;
}

// Whether the key's form of its record is exactly (title + " " +) text.
static int key_equals(const text_key *k, const sn_beir_records *c, const char *title, const char *text) {
  const char *rec_text = c->texts[k->doc];
  const char *rec_title = k->titled ? c->titles[k->doc] : "";
  if (!title || !title[0]) {  // compare "rec_title rec_text" with text, without building it
    if (!k->titled) return !strcmp(rec_text, text);
    size_t n = strlen(rec_title);
    return !strncmp(text, rec_title, n) && !strncmp(text + n, TITLE_SEPARATOR, strlen(TITLE_SEPARATOR)) &&
           !strcmp(text + n + strlen(TITLE_SEPARATOR), rec_text);
  }
  if (k->titled) return !strcmp(rec_title, title) && !strcmp(rec_text, text);
  // an untitled form against a titled positive: the record's text is "title text"
  size_t n = strlen(title);
  return !strncmp(rec_text, title, n) && !strncmp(rec_text + n, TITLE_SEPARATOR, strlen(TITLE_SEPARATOR)) &&
         !strcmp(rec_text + n + strlen(TITLE_SEPARATOR), text);
}

static int cmp_key(const void *a, const void *b) {
  const text_key *x = a, *y = b;
  if (x->hash != y->hash) return x->hash < y->hash ? -1 : 1;
  if (x->doc != y->doc) return x->doc < y->doc ? -1 : 1;
  return x->titled - y->titled;
}

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

typedef struct {
  int32_t *v;
  int64_t n, cap;
} i32_vec;

static void push(i32_vec *v, int32_t x) {
  if (v->n == v->cap) {
    v->cap = v->cap ? 2 * v->cap : 256;
    v->v = reallocCheck(v->v, (size_t)v->cap * sizeof(int32_t));
  }
  v->v[v->n++] = x;
}

int sn_mine_match_positives(const sn_train_examples *ex, const sn_beir_records *corpus, const int64_t *id_begin,
                            const char *const *ids, sn_mine_positives *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  const int64_t n_ex = ex->n_examples;
  int64_t n_keys = 0;
  text_key *keys = mallocCheck((size_t)corpus->n * 2 * sizeof *keys);
  for (int32_t d = 0; d < corpus->n; d++) {
    const char *title = corpus->titles ? corpus->titles[d] : "";
    keys[n_keys++] = (text_key){hash_joined(NULL, corpus->texts[d]), d, 0};
    if (title[0]) keys[n_keys++] = (text_key){hash_joined(title, corpus->texts[d]), d, 1};
  }
  qsort(keys, (size_t)n_keys, sizeof *keys, cmp_key);

  out->n_examples = n_ex;
  out->pos_begin = mallocCheck((size_t)(n_ex + 1) * sizeof(int64_t));
  out->excl_begin = mallocCheck((size_t)(n_ex + 1) * sizeof(int64_t));
  int64_t n_pos = 0;
  for (int64_t i = 0; i < n_ex; i++) n_pos += ex->examples[i].n_pos;
  out->n_positives = n_pos;
  out->match_begin = mallocCheck((size_t)(n_pos + 1) * sizeof(int64_t));
  i32_vec match = {0}, excl = {0};
  int64_t p = 0;
  int rc = 0;
  for (int64_t i = 0; i < n_ex && rc == 0; i++) {
    out->pos_begin[i] = p;
    out->excl_begin[i] = excl.n;
    const int64_t *pos = sn_example_pos(ex, i);
    for (int32_t j = 0; j < ex->examples[i].n_pos; j++, p++) {
      out->match_begin[p] = match.n;
      const sn_doc *doc = &ex->docs[pos[j]];
      text_key probe = {hash_joined(doc->title, doc->text), INT32_MIN, 0};
      size_t lo = 0, hi = (size_t)n_keys;  // first key with hash >= probe's
      while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (keys[mid].hash < probe.hash) lo = mid + 1;
        else hi = mid;
      }
      for (size_t k = lo; k < (size_t)n_keys && keys[k].hash == probe.hash; k++)
        if (key_equals(&keys[k], corpus, doc->title, doc->text) &&
            (match.n == out->match_begin[p] || match.v[match.n - 1] != keys[k].doc)) {
          push(&match, keys[k].doc);
          push(&excl, keys[k].doc);
        }
    }
    if (id_begin) {
      for (int64_t j = id_begin[i]; j < id_begin[i + 1]; j++) {
        int32_t d = sn_id_map_get(&corpus->index, ids[j]);
        if (d < 0) {
          rc = sn_errorf(err, errlen, "%s: \"pos_ids\" names '%s', which is not an _id of the corpus",
                         sn_train_example_where(ex, i), ids[j]);
          break;
        }
        push(&excl, d);
      }
    }
    // sorted and unique: sn_mine_pick bsearches it
    int32_t *e = excl.v + out->excl_begin[i];
    int64_t n = excl.n - out->excl_begin[i], u = 0;
    qsort(e, (size_t)n, sizeof *e, cmp_i32);
    for (int64_t k = 0; k < n; k++)
      if (u == 0 || e[u - 1] != e[k]) e[u++] = e[k];
    excl.n = out->excl_begin[i] + u;
    if (u > out->max_excluded) out->max_excluded = (int)u;
  }
  out->pos_begin[n_ex] = p;
  out->match_begin[p] = match.n;
  out->excl_begin[n_ex] = excl.n;
  out->match = match.v;
  out->excl = excl.v;
  free(keys);
  if (rc) sn_mine_positives_free(out);
  return rc;
}

void sn_mine_positives_free(sn_mine_positives *p) {
  free(p->pos_begin);
  free(p->match_begin);
  free(p->match);
  free(p->excl_begin);
  free(p->excl);
  memset(p, 0, sizeof *p);
}

int sn_mine_search_depth(const sn_mine_opts *o, const sn_mine_positives *p, int64_t n_docs) {
  int64_t k = (int64_t)o->range_hi + p->max_excluded;
  return (int)(k < n_docs ? k : n_docs);
}

// ---- the band, the margin, the draw -------------------------------------------------------------

static int is_excluded(const int32_t *excluded, int n, int32_t doc) {
  return n > 0 && bsearch(&doc, excluded, (size_t)n, sizeof doc, cmp_i32) != NULL;
}

static int below_margin(const sn_mine_opts *o, float score, float pos_score) {
  if (o->margin_kind == SN_MINE_MARGIN_NONE || isnan(pos_score)) return 1;
  double limit = o->margin_kind == SN_MINE_MARGIN_ABSOLUTE ? (double)pos_score - o->margin
                                                           : (double)pos_score * (1.0 - o->margin);
  return (double)score <= limit;
}

int sn_mine_pick(const sn_mine_opts *o, int64_t example, const int32_t *ranked, const float *scores, int k,
                 const int32_t *excluded, int n_excluded, float pos_score, int32_t *neg, float *neg_scores) {
  // candidate slots of the list (positions into ranked), in rank order
  int *cand = mallocCheck((size_t)(k > 0 ? k : 1) * sizeof *cand);
  int n_cand = 0, rank = 0;
  for (int j = 0; j < k && ranked[j] >= 0 && rank < o->range_hi; j++) {
    if (is_excluded(excluded, n_excluded, ranked[j])) continue;
    if (rank++ < o->range_lo) continue;
    if (below_margin(o, scores[j], pos_score)) cand[n_cand++] = j;
  }
  // partial Fisher–Yates: the first `take` slots become a uniform draw without replacement
  const int take = n_cand < o->negatives ? n_cand : o->negatives;
  const uint64_t key = sn_rng_stream_key(o->seed, (uint64_t)example);
  for (int j = 0; j < take; j++) {
    int r = j + (int)(sn_uniform_at(key, (uint64_t)j) * (double)(n_cand - j));
    if (r >= n_cand) r = n_cand - 1;  // guards the (0, 1) uniform's upper rounding
    int t = cand[j];
    cand[j] = cand[r];
    cand[r] = t;
  }
  qsort(cand, (size_t)take, sizeof *cand, cmp_int);
  for (int j = 0; j < take; j++) {
    neg[j] = ranked[cand[j]];
    neg_scores[j] = scores[cand[j]];
  }
  free(cand);
  return take;
}

// ---- shards → one list --------------------------------------------------------------------------

// Whether (sa, ia) comes before (sb, ib) in trec order.
static int trec_before(float sa, int32_t ia, float sb, int32_t ib, const char *const *doc_ids) {
  if (sa != sb) return sa > sb;
  return strcmp(doc_ids[ia], doc_ids[ib]) > 0;
}

void sn_mine_merge(int S, const int32_t *const *idx, const float *const *scores, int Q, int k,
                   const char *const *doc_ids, int32_t *out_idx, float *out_scores) {
  int *head = mallocCheck((size_t)S * sizeof *head);
  for (int q = 0; q < Q; q++) {
    for (int s = 0; s < S; s++) head[s] = 0;
    const size_t row = (size_t)q * k;
    for (int j = 0; j < k; j++) {
      int best = -1;
      for (int s = 0; s < S; s++) {
        if (head[s] >= k || idx[s][row + head[s]] < 0) continue;
        if (best < 0 || trec_before(scores[s][row + head[s]], idx[s][row + head[s]],
                                    scores[best][row + head[best]], idx[best][row + head[best]], doc_ids))
          best = s;
      }
      if (best < 0) {
        out_idx[row + j] = -1;
        out_scores[row + j] = -INFINITY;
        continue;
      }
      out_idx[row + j] = idx[best][row + head[best]];
      out_scores[row + j] = scores[best][row + head[best]];
      head[best]++;
    }
  }
  free(head);
}
