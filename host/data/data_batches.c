// The sampler: epoch permutations, global batches split across ranks (fixed count or token
// budget), positive and hard-negative sampling from counter-based random streams, packing of this
// rank's sequences, and the resumable cursor.
#define _GNU_SOURCE
#include "data.h"

#include <limits.h>
#include <math.h>
#include <string.h>

#include "common.h"

// Purposes of the random streams: one stream per (seed, epoch, example, purpose), so a draw does
// not depend on the order in which examples are visited, on the rank, or on where a run resumed.
enum { STREAM_PERMUTATION = 1, STREAM_POSITIVE = 2, STREAM_NEGATIVES = 3 };
#define PERMUTATION_STREAM_EXAMPLE UINT64_MAX  // the permutation's stream is not an example's

struct sn_sampler {
  sn_sampler_config cfg;
  const sn_train_examples *ex;
  const sn_token_set *queries, *docs;
  int docs_per_query;  // 1 + k; 0 when queries_only
  int rank_cap;        // most queries a rank batch takes (fixed: exactly this); 0 = no cap
  int64_t *random_pool;  // docs that are a positive of some example: random negatives' source
  int64_t n_random_pool;
  int64_t *perm;  // permutation of the examples for perm_epoch
  uint64_t perm_epoch;
  int perm_valid;
  uint64_t epoch, position, steps;
  // The planned global batch: examples, their docs, and where each rank's queries start.
  int64_t *plan_examples, *plan_docs;
  float *plan_scores;  // teacher score of each plan_docs slot (NAN: none)
  int64_t plan_cap;
  int *rank_begin;  // [world_size + 1]
  int64_t *neg_scratch;  // positions among an example's negatives, shuffled
  int64_t neg_scratch_cap;
  // This rank's batch and the capacities of its buffers.
  sn_batch batch;
  int64_t query_ids_cap, doc_ids_cap, batch_queries_cap, batch_docs_cap;
};

// ---- random streams (splitmix64) -----------------------------------------------------------------

typedef struct {
  uint64_t state;
} rng_stream;

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static uint64_t rng_next(rng_stream *r) { return mix64(r->state += 0x9E3779B97F4A7C15ull); }
// Uniform in [0, n) by a 128-bit multiply (bias below 2^-40 for any n we meet).
static uint64_t rng_below(rng_stream *r, uint64_t n) {
  return (uint64_t)(((unsigned __int128)rng_next(r) * n) >> 64);
}
static rng_stream open_stream(uint64_t seed, uint64_t epoch, uint64_t example, uint64_t purpose) {
  rng_stream r = {mix64(mix64(mix64(seed ^ mix64(purpose)) ^ epoch) ^ example)};
  return r;
}

// ---- epoch permutation ---------------------------------------------------------------------------

static void ensure_permutation(sn_sampler *s, uint64_t epoch) {
  if (s->perm_valid && s->perm_epoch == epoch) return;
  int64_t n = s->ex->n_examples;
  for (int64_t i = 0; i < n; i++) s->perm[i] = i;
  rng_stream r = open_stream(s->cfg.seed, epoch, PERMUTATION_STREAM_EXAMPLE, STREAM_PERMUTATION);
  for (int64_t i = n - 1; i > 0; i--) {  // Fisher–Yates
    int64_t j = (int64_t)rng_below(&r, (uint64_t)i + 1);
    int64_t t = s->perm[i];
    s->perm[i] = s->perm[j];
    s->perm[j] = t;
  }
  s->perm_epoch = epoch;
  s->perm_valid = 1;
}

// ---- docs of one query ---------------------------------------------------------------------------

static int is_positive_of(const sn_train_examples *ex, int64_t e, int64_t doc) {
  const int64_t *pos = sn_example_pos(ex, e);
  for (int32_t i = 0; i < ex->examples[e].n_pos; i++)
    if (pos[i] == doc) return 1;
  return 0;
}

// Writes [positive, neg_1..neg_k] of example e for this epoch into out, and their teacher scores
// (NAN where the line had none) into scores.
static void choose_docs(sn_sampler *s, uint64_t epoch, int64_t e, int64_t *out, float *scores) {
  const sn_train_examples *ex = s->ex;
  const sn_train_example *x = &ex->examples[e];
  const int k = s->cfg.negatives_per_query;
  rng_stream pr = open_stream(s->cfg.seed, epoch, (uint64_t)e, STREAM_POSITIVE);
  uint64_t pos_at = x->n_pos > 1 ? rng_below(&pr, (uint64_t)x->n_pos) : 0;
  out[0] = sn_example_pos(ex, e)[pos_at];
  scores[0] = sn_example_pos_scores(ex, e)[pos_at];
  if (k == 0) return;
  rng_stream nr = open_stream(s->cfg.seed, epoch, (uint64_t)e, STREAM_NEGATIVES);
  int64_t *negs = out + 1;
  float *neg_scores = scores + 1;
  if (x->n_neg == 0) {
    // No hard negatives: random positives of other examples (with replacement; the pool is large).
    for (int i = 0; i < k; i++) {
      int64_t d;
      do d = s->random_pool[rng_below(&nr, (uint64_t)s->n_random_pool)];
      while (is_positive_of(ex, e, d));  // terminates: create() checked another doc exists
      negs[i] = d;
      neg_scores[i] = NAN;  // no teacher scored it
    }
    return;
  }
  // Partial Fisher–Yates on a copy: the first min(k, n_neg) are distinct, in random order.
  if (x->n_neg > s->neg_scratch_cap) {
    s->neg_scratch_cap = x->n_neg;
    s->neg_scratch = reallocCheck(s->neg_scratch, (size_t)s->neg_scratch_cap * sizeof *s->neg_scratch);
  }
  // Positions, not doc ids, are shuffled so each pick keeps its score; the draws are the same.
  for (int32_t i = 0; i < x->n_neg; i++) s->neg_scratch[i] = i;
  const int64_t *neg_docs = sn_example_neg(ex, e);
  const float *neg_teacher = sn_example_neg_scores(ex, e);
  int distinct = SN_MIN(k, x->n_neg);
  for (int i = 0; i < k; i++) {
    int64_t at;
    if (i < distinct) {
      int64_t j = i + (int64_t)rng_below(&nr, (uint64_t)(x->n_neg - i));
      int64_t t = s->neg_scratch[i];
      s->neg_scratch[i] = s->neg_scratch[j];
      s->neg_scratch[j] = t;
      at = s->neg_scratch[i];
    } else {  // fewer than k: reuse
      at = s->neg_scratch[rng_below(&nr, (uint64_t)x->n_neg)];
    }
    negs[i] = neg_docs[at];
    neg_scores[i] = neg_teacher[at];
  }
}

// Tokens a query brings to its rank batch: its own and its docs'.
static int64_t query_cost(const sn_sampler *s, int64_t e, const int64_t *docs) {
  int64_t cost = sn_token_set_len(s->queries, e);
  for (int i = 0; i < s->docs_per_query; i++) cost += sn_token_set_len(s->docs, docs[i]);
  return cost;
}

static void ensure_plan_capacity(sn_sampler *s, int64_t n_queries) {
  if (n_queries <= s->plan_cap) return;
  s->plan_cap = SN_MAX(n_queries, 2 * s->plan_cap);
  s->plan_examples = reallocCheck(s->plan_examples, (size_t)s->plan_cap * sizeof *s->plan_examples);
  s->plan_docs = reallocCheck(s->plan_docs,
                              (size_t)(s->plan_cap * SN_MAX(s->docs_per_query, 1)) * sizeof *s->plan_docs);
  s->plan_scores = reallocCheck(s->plan_scores,
                                (size_t)(s->plan_cap * SN_MAX(s->docs_per_query, 1)) * sizeof *s->plan_scores);
}

// Plans the global batch that starts at `position` of `epoch`'s permutation: fills plan_examples,
// plan_docs and rank_begin. Returns the queries it takes, or 0 when the epoch's remaining queries
// cannot complete it (a rank batch is complete when its count or budget is reached).
static int64_t plan_global_batch(sn_sampler *s, uint64_t epoch, uint64_t position) {
  ensure_permutation(s, epoch);
  const int64_t n = s->ex->n_examples, budget = s->cfg.max_tokens_per_rank;
  const int world = s->cfg.world_size, dpq = s->docs_per_query;
  int64_t q = 0;  // queries planned
  for (int r = 0; r < world; r++) {
    s->rank_begin[r] = (int)q;
    int count = 0;
    int64_t tokens = 0;
    for (;;) {
      if (s->rank_cap > 0 && count == s->rank_cap) break;
      if ((int64_t)position + q >= n) return 0;  // incomplete: dropped
      int64_t e = s->perm[position + q];
      ensure_plan_capacity(s, q + 1);
      int64_t *docs = s->plan_docs + q * dpq;
      if (dpq > 0) choose_docs(s, epoch, e, docs, s->plan_scores + q * dpq);
      if (budget > 0) {
        int64_t cost = query_cost(s, e, docs);
        if (count > 0 && tokens + cost > budget) break;  // this query opens the next rank batch
        tokens += cost;
      }
      s->plan_examples[q++] = e;
      count++;
    }
  }
  s->rank_begin[world] = (int)q;
  return q;
}

// ---- this rank's batch ---------------------------------------------------------------------------

static void fill_rank_batch(sn_sampler *s) {
  sn_batch *b = &s->batch;
  const int r = s->cfg.rank, dpq = s->docs_per_query;
  const int begin = s->rank_begin[r], n_q = s->rank_begin[r + 1] - begin;
  for (int i = 0; i < s->cfg.world_size; i++) {
    b->rank_query_counts[i] = s->rank_begin[i + 1] - s->rank_begin[i];
    b->rank_doc_counts[i] = b->rank_query_counts[i] * dpq;
  }
  if (n_q > s->batch_queries_cap) {
    s->batch_queries_cap = n_q;
    b->example_index = reallocCheck(b->example_index, (size_t)n_q * sizeof *b->example_index);
    b->pos_index = reallocCheck(b->pos_index, (size_t)n_q * sizeof *b->pos_index);
    b->query_cu_seqlens = reallocCheck(b->query_cu_seqlens, (size_t)(n_q + 1) * sizeof *b->query_cu_seqlens);
  }
  const int n_d = n_q * dpq;
  if (n_d > s->batch_docs_cap) {
    s->batch_docs_cap = n_d;
    b->doc_index = reallocCheck(b->doc_index, (size_t)n_d * sizeof *b->doc_index);
    b->teacher_scores = reallocCheck(b->teacher_scores, (size_t)n_d * sizeof *b->teacher_scores);
    b->doc_cu_seqlens = reallocCheck(b->doc_cu_seqlens, (size_t)(n_d + 1) * sizeof *b->doc_cu_seqlens);
  }
  b->n_queries = n_q;
  b->n_docs = n_d;
  memcpy(b->example_index, s->plan_examples + begin, (size_t)n_q * sizeof *b->example_index);
  for (int i = 0; i < n_q; i++) b->pos_index[i] = i * dpq;  // [pos, neg_1..neg_k] per query
  b->n_query_tokens = sn_token_set_pack(s->queries, b->example_index, n_q, &b->query_ids,
                                        &s->query_ids_cap, b->query_cu_seqlens);
  b->max_query_len = 0;
  for (int i = 0; i < n_q; i++)
    b->max_query_len = SN_MAX(b->max_query_len, b->query_cu_seqlens[i + 1] - b->query_cu_seqlens[i]);
  b->n_doc_tokens = 0;
  b->max_doc_len = 0;
  if (n_d > 0) {
    memcpy(b->doc_index, s->plan_docs + (int64_t)begin * dpq, (size_t)n_d * sizeof *b->doc_index);
    memcpy(b->teacher_scores, s->plan_scores + (int64_t)begin * dpq, (size_t)n_d * sizeof *b->teacher_scores);
    b->n_doc_tokens = sn_token_set_pack(s->docs, b->doc_index, n_d, &b->doc_ids, &s->doc_ids_cap,
                                        b->doc_cu_seqlens);
    for (int i = 0; i < n_d; i++)
      b->max_doc_len = SN_MAX(b->max_doc_len, b->doc_cu_seqlens[i + 1] - b->doc_cu_seqlens[i]);
  } else if (b->doc_cu_seqlens) {
    b->doc_cu_seqlens[0] = 0;
  }
}

// ---- public --------------------------------------------------------------------------------------

static int check_config(const sn_sampler_config *cfg, const sn_train_examples *ex,
                        const sn_token_set *queries, const sn_token_set *docs, char *err,
                        size_t errlen) {
  if (cfg->world_size < 1 || cfg->rank < 0 || cfg->rank >= cfg->world_size) {
    sn_data_errorf(err, errlen, "sampler: rank %d of world size %d (expected 0 ≤ rank < world size)",
            cfg->rank, cfg->world_size);
    return -1;
  }
  if (cfg->negatives_per_query < 0) {
    sn_data_errorf(err, errlen, "sampler: negatives_per_query %d (expected ≥ 0)", cfg->negatives_per_query);
    return -1;
  }
  if (cfg->max_tokens_per_rank < 0 || cfg->global_batch_queries < 0 ||
      (cfg->max_tokens_per_rank == 0 && cfg->global_batch_queries == 0)) {
    sn_data_errorf(err, errlen, "sampler: set global_batch_queries > 0 or a token budget "
                         "max_tokens_per_rank > 0");
    return -1;
  }
  // A rank batch counts its documents (queries x (1 + negatives)) in an int.
  size_t docs_per_batch;
  if (sn_mul_size_ok((size_t)cfg->global_batch_queries, 1 + (size_t)cfg->negatives_per_query, (size_t)INT_MAX,
                     &docs_per_batch) != 0) {
    sn_data_errorf(err, errlen, "sampler: %d queries x %d documents each is more than %d documents in a batch",
                   cfg->global_batch_queries, 1 + cfg->negatives_per_query, INT_MAX);
    return -1;
  }
  if (cfg->global_batch_queries % cfg->world_size != 0) {
    sn_data_errorf(err, errlen, "sampler: global batch of %d queries does not split over %d ranks "
                         "(expected a multiple of the world size)",
            cfg->global_batch_queries, cfg->world_size);
    return -1;
  }
  if (ex->n_examples == 0) {
    sn_data_errorf(err, errlen, "sampler: no training examples");
    return -1;
  }
  if (!queries || queries->n_seqs != ex->n_examples) {
    sn_data_errorf(err, errlen, "sampler: the query token set has %lld sequences for %lld examples",
            queries ? (long long)queries->n_seqs : 0LL, (long long)ex->n_examples);
    return -1;
  }
  if (!cfg->queries_only && (!docs || docs->n_seqs != ex->n_docs)) {
    sn_data_errorf(err, errlen, "sampler: the doc token set has %lld sequences for %lld documents",
            docs ? (long long)docs->n_seqs : 0LL, (long long)ex->n_docs);
    return -1;
  }
  return 0;
}

// Positives of all examples, deduplicated: where examples without hard negatives draw from.
static void build_random_pool(sn_sampler *s) {
  const sn_train_examples *ex = s->ex;
  unsigned char *seen = callocCheck((size_t)ex->n_docs, 1);
  s->random_pool = mallocCheck((size_t)(ex->n_docs + 1) * sizeof *s->random_pool);
  for (int64_t e = 0; e < ex->n_examples; e++) {
    const int64_t *pos = sn_example_pos(ex, e);
    for (int32_t i = 0; i < ex->examples[e].n_pos; i++) {
      if (seen[pos[i]]) continue;
      seen[pos[i]] = 1;
      s->random_pool[s->n_random_pool++] = pos[i];
    }
  }
  free(seen);
}

// Every example without hard negatives must be allowed, and able, to get random ones.
static int check_random_negatives(const sn_sampler *s, char *err, size_t errlen) {
  if (s->cfg.queries_only || s->cfg.negatives_per_query == 0) return 0;
  for (int64_t e = 0; e < s->ex->n_examples; e++) {
    const sn_train_example *x = &s->ex->examples[e];
    if (x->n_neg > 0) continue;
    if (s->cfg.forbid_random_negatives) {
      sn_data_errorf(err, errlen, "%s: example has no hard negatives (\"neg\") and random negatives are "
                           "forbidden (expected a non-empty \"neg\" list)",
              sn_train_example_where(s->ex, e));
      return -1;
    }
    if (s->n_random_pool <= x->n_pos) {
      sn_data_errorf(err, errlen, "%s: example has no hard negatives and no other example's positive can "
                           "serve as a random negative",
              sn_train_example_where(s->ex, e));
      return -1;
    }
  }
  return 0;
}

sn_sampler *sn_sampler_create(const sn_sampler_config *cfg, const sn_train_examples *ex,
                              const sn_token_set *queries, const sn_token_set *docs, char *err,
                              size_t errlen) {
  if (check_config(cfg, ex, queries, docs, err, errlen) != 0) return NULL;
  sn_sampler *s = callocCheck(1, sizeof *s);
  s->cfg = *cfg;
  s->ex = ex;
  s->queries = queries;
  s->docs = cfg->queries_only ? NULL : docs;
  s->docs_per_query = cfg->queries_only ? 0 : 1 + cfg->negatives_per_query;
  s->rank_cap = cfg->global_batch_queries / cfg->world_size;
  s->perm = mallocCheck((size_t)ex->n_examples * sizeof *s->perm);
  s->rank_begin = callocCheck((size_t)cfg->world_size + 1, sizeof *s->rank_begin);
  s->batch.rank_query_counts = callocCheck((size_t)cfg->world_size, sizeof(int));
  s->batch.rank_doc_counts = callocCheck((size_t)cfg->world_size, sizeof(int));
  build_random_pool(s);
  if (check_random_negatives(s, err, errlen) != 0) {
    sn_sampler_free(s);
    return NULL;
  }
  if (plan_global_batch(s, 0, 0) == 0) {
    sn_data_errorf(err, errlen, "sampler: %lld examples cannot fill one global batch (%d queries over "
                         "%d ranks%s)",
            (long long)ex->n_examples, cfg->global_batch_queries, cfg->world_size,
            cfg->max_tokens_per_rank > 0 ? ", token budget" : "");
    sn_sampler_free(s);
    return NULL;
  }
  return s;
}

const sn_batch *sn_sampler_next(sn_sampler *s, char *err, size_t errlen) {
  int64_t taken = plan_global_batch(s, s->epoch, s->position);
  if (taken == 0) {  // the epoch's tail cannot complete a global batch: dropped
    s->epoch++;
    s->position = 0;
    taken = plan_global_batch(s, s->epoch, 0);
    if (taken == 0) {
      sn_data_errorf(err, errlen, "sampler: epoch %llu cannot fill one global batch",
              (unsigned long long)s->epoch);
      return NULL;
    }
  }
  fill_rank_batch(s);
  s->batch.epoch = s->epoch;
  s->batch.step = s->steps;
  s->position += (uint64_t)taken;
  s->steps++;
  return &s->batch;
}

void sn_sampler_get_cursor(const sn_sampler *s, sn_data_cursor *c) {
  memset(c, 0, sizeof *c);
  c->version = SN_DATA_CURSOR_VERSION;
  c->rng_seed = s->cfg.seed;
  c->epoch = s->epoch;
  c->position = s->position;
  c->steps = s->steps;
  c->n_examples = (uint64_t)s->ex->n_examples;
}

int sn_sampler_set_cursor(sn_sampler *s, const sn_data_cursor *c, char *err, size_t errlen) {
  if (c->version != SN_DATA_CURSOR_VERSION) {
    sn_data_errorf(err, errlen, "data cursor version %u (expected %u)", c->version, SN_DATA_CURSOR_VERSION);
    return -1;
  }
  if (c->rng_seed != s->cfg.seed) {
    sn_data_errorf(err, errlen, "data cursor seed %llu differs from the configured seed %llu",
            (unsigned long long)c->rng_seed, (unsigned long long)s->cfg.seed);
    return -1;
  }
  if (c->n_examples != (uint64_t)s->ex->n_examples || c->position > c->n_examples) {
    sn_data_errorf(err, errlen, "data cursor is for %llu examples at position %llu, the data has %lld "
                         "(resuming on other training data?)",
            (unsigned long long)c->n_examples, (unsigned long long)c->position,
            (long long)s->ex->n_examples);
    return -1;
  }
  s->epoch = c->epoch;
  s->position = c->position;
  s->steps = c->steps;
  return 0;
}

int64_t sn_sampler_steps_in_epoch(sn_sampler *s, uint64_t epoch) {
  if (s->cfg.max_tokens_per_rank == 0) return s->ex->n_examples / s->cfg.global_batch_queries;
  int64_t steps = 0;
  for (uint64_t position = 0;; steps++) {
    int64_t taken = plan_global_batch(s, epoch, position);
    if (taken == 0) return steps;
    position += (uint64_t)taken;
  }
}

void sn_sampler_free(sn_sampler *s) {
  if (!s) return;
  sn_batch *b = &s->batch;
  free(b->example_index);
  free(b->pos_index);
  free(b->doc_index);
  free(b->teacher_scores);
  free(b->query_ids);
  free(b->query_cu_seqlens);
  free(b->doc_ids);
  free(b->doc_cu_seqlens);
  free(b->rank_query_counts);
  free(b->rank_doc_counts);
  free(s->random_pool);
  free(s->perm);
  free(s->plan_examples);
  free(s->plan_docs);
  free(s->plan_scores);
  free(s->rank_begin);
  free(s->neg_scratch);
  free(s);
}

sn_sampler *sn_sampler_init(const sn_sampler_config *cfg, const sn_train_examples *ex,
                            const sn_token_set *queries, const sn_token_set *docs) {
  char err[SN_DATA_ERR_LEN];
  sn_sampler *s = sn_sampler_create(cfg, ex, queries, docs, err, sizeof err);
  if (!s) sn_bad_input("%s", err);
  return s;
}

const sn_batch *sn_sampler_next_or_die(sn_sampler *s) {
  char err[SN_DATA_ERR_LEN];
  const sn_batch *b = sn_sampler_next(s, err, sizeof err);
  if (!b) sn_bad_input("%s", err);
  return b;
}
