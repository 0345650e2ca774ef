// The sampler: doc layout and negative sampling rules, epochs and dropped tails, rank slices equal
// to the single-process global batch, token budgets, stage-2 query-only batches, config errors,
// and exact resumption from a saved cursor.
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "data.h"
#include "test_util.h"

#define N_EXAMPLES 40
#define K_NEG 3
#define SEED 1234

// ---- data: a stub byte tokenizer and generated examples -----------------------------------------

static size_t byte_encode(const void *ctx, const char *text, size_t len, int add_special,
                          int32_t **ids, size_t *n, size_t *cap) {
  if (*n + len > *cap) {
    *cap = *n + len + 16;
    *ids = reallocCheck(*ids, *cap * sizeof **ids);
  }
  for (size_t i = 0; i < len; i++) (*ids)[(*n)++] = (unsigned char)text[i];
  return len;
}
static const sn_text_encoder BYTE_ENCODER = {byte_encode, NULL, 0, "bytes"};

typedef struct {
  sn_train_examples ex;
  sn_token_set queries, docs;
} dataset;

// Teacher scores that tell every (example, list, position) apart.
static int pos_score(int example, int j) { return 100 * example + j; }
static int neg_score(int example, int j) { return -100 * example - j - 1; }

// Example i: 1 + i%3 positives (all scored); i%4 == 0: no negatives, 1: two (< k), else six (two shared).
static void make_dataset(dataset *d, int n_examples) {
  size_t cap = 1 << 16, len = 0;
  char *buf = mallocCheck(cap);
  for (int i = 0; i < n_examples; i++) {
    len += (size_t)snprintf(buf + len, cap - len, "{\"query\": \"query %d%.*s\", \"pos\": [", i,
                            i % 5, "xxxxx");
    for (int j = 0; j <= i % 3; j++)
      len += (size_t)snprintf(buf + len, cap - len, "%s\"pos %d.%d%.*s\"", j ? ", " : "", i, j,
                              (i * 7 + j) % 11, "yyyyyyyyyyy");
    len += (size_t)snprintf(buf + len, cap - len, "], \"pos_scores\": [");
    for (int j = 0; j <= i % 3; j++) len += (size_t)snprintf(buf + len, cap - len, "%s%d", j ? ", " : "", pos_score(i, j));
    len += (size_t)snprintf(buf + len, cap - len, "]");
    int n_neg = i % 4 == 0 ? 0 : i % 4 == 1 ? 2 : 6;
    if (n_neg) len += (size_t)snprintf(buf + len, cap - len, ", \"neg\": [");
    for (int j = 0; j < n_neg; j++) {
      if (j < 2 && n_neg == 6)
        len += (size_t)snprintf(buf + len, cap - len, "%s\"shared %d\"", j ? ", " : "", j);
      else
        len += (size_t)snprintf(buf + len, cap - len, "%s\"neg %d.%d\"", j ? ", " : "", i, j);
    }
    if (n_neg) len += (size_t)snprintf(buf + len, cap - len, "], \"neg_scores\": [");
    for (int j = 0; j < n_neg; j++) len += (size_t)snprintf(buf + len, cap - len, "%s%d", j ? ", " : "", neg_score(i, j));
    len += (size_t)snprintf(buf + len, cap - len, "%s}\n", n_neg ? "]" : "");
  }
  sn_train_examples_init(&d->ex);
  char err[SN_DATA_ERR_LEN];
  if (sn_train_examples_parse(&d->ex, buf, len, "t.jsonl", 0, 0, NULL, err, sizeof err) != 0)
    sn_fatal("generated data rejected: %s", err);
  free(buf);
  sn_prompt_spec qspec = {"q: {text}", 16, 0, 0}, dspec = {"{text}", 12, 0, 0};
  sn_text_item *qi = sn_train_examples_query_items(&d->ex), *di = sn_train_examples_doc_items(&d->ex);
  if (sn_token_set_build(&d->queries, qi, d->ex.n_examples, &qspec, &BYTE_ENCODER, err, sizeof err) ||
      sn_token_set_build(&d->docs, di, d->ex.n_docs, &dspec, &BYTE_ENCODER, err, sizeof err))
    sn_fatal("token sets: %s", err);
  free(qi);
  free(di);
}

static void free_dataset(dataset *d) {
  sn_token_set_close(&d->queries);
  sn_token_set_close(&d->docs);
  sn_train_examples_free(&d->ex);
}

static sn_sampler_config base_config(void) {
  sn_sampler_config c = {.global_batch_queries = 8, .negatives_per_query = K_NEG, .seed = SEED,
                         .world_size = 1, .rank = 0};
  return c;
}

static sn_sampler *make_sampler(const sn_sampler_config *c, dataset *d) {
  char err[SN_DATA_ERR_LEN];
  sn_sampler *s = sn_sampler_create(c, &d->ex, &d->queries, &d->docs, err, sizeof err);
  if (!s) sn_fatal("sampler: %s", err);
  return s;
}

static const sn_batch *next(sn_sampler *s) {
  char err[SN_DATA_ERR_LEN];
  const sn_batch *b = sn_sampler_next(s, err, sizeof err);
  if (!b) sn_fatal("next: %s", err);
  return b;
}

// Everything a batch carries, hashed: equal batches, equal fingerprints.
static uint64_t batch_fingerprint(const sn_batch *b, int world) {
  uint64_t h = sn_hash64(&b->n_queries, sizeof b->n_queries, b->epoch);
  h = sn_hash64(b->example_index, (size_t)b->n_queries * sizeof *b->example_index, h);
  h = sn_hash64(b->pos_index, (size_t)b->n_queries * sizeof *b->pos_index, h);
  h = sn_hash64(b->doc_index, (size_t)b->n_docs * sizeof *b->doc_index, h);
  h = sn_hash64(b->query_ids, (size_t)b->n_query_tokens * sizeof *b->query_ids, h);
  h = sn_hash64(b->query_cu_seqlens, (size_t)(b->n_queries + 1) * sizeof(int32_t), h);
  h = sn_hash64(b->doc_ids, (size_t)b->n_doc_tokens * sizeof *b->doc_ids, h);
  if (b->n_docs) h = sn_hash64(b->doc_cu_seqlens, (size_t)(b->n_docs + 1) * sizeof(int32_t), h);
  h = sn_hash64(b->rank_query_counts, (size_t)world * sizeof(int), h);
  return sn_hash64(&b->step, sizeof b->step, h);
}

static int contains(const int64_t *a, int n, int64_t v) {
  for (int i = 0; i < n; i++)
    if (a[i] == v) return 1;
  return 0;
}

// ---- tests ---------------------------------------------------------------------------------------

static void test_layout_and_negatives(dataset *d) {
  sn_sampler_config c = base_config();
  sn_sampler *s = make_sampler(&c, d);
  const sn_train_examples *ex = &d->ex;
  for (int step = 0; step < 20; step++) {
    const sn_batch *b = next(s);
    CHECK(b->n_queries == 8 && b->n_docs == 8 * (K_NEG + 1), "batch sizes %d %d", b->n_queries, b->n_docs);
    for (int i = 0; i < b->n_queries; i++) {
      int64_t e = b->example_index[i];
      const sn_train_example *x = &ex->examples[e];
      CHECK(b->pos_index[i] == i * (K_NEG + 1), "pos_index layout");
      CHECK(contains(sn_example_pos(ex, e), x->n_pos, b->doc_index[b->pos_index[i]]), "positive");
      const int64_t *negs = b->doc_index + b->pos_index[i] + 1;
      for (int j = 0; j < K_NEG; j++) {
        CHECK(!contains(sn_example_pos(ex, e), x->n_pos, negs[j]), "a negative is a positive");
        if (x->n_neg > 0) CHECK(contains(sn_example_neg(ex, e), x->n_neg, negs[j]), "hard negative");
      }
      if (x->n_neg >= K_NEG)
        CHECK(negs[0] != negs[1] && negs[0] != negs[2] && negs[1] != negs[2], "without replacement");
      if (x->n_neg > 0 && x->n_neg < K_NEG)
        for (int j = 0; j < x->n_neg; j++)
          CHECK(contains(negs, K_NEG, sn_example_neg(ex, e)[j]), "all of fewer negatives used");
      if (x->n_neg == 0)
        for (int j = 0; j < K_NEG; j++)
          CHECK(strncmp(ex->docs[negs[j]].text, "pos ", 4) == 0, "random negatives are positives");
    }
    // Packed tokens are the token sets' sequences.
    for (int i = 0; i < b->n_docs; i++) {
      int len = b->doc_cu_seqlens[i + 1] - b->doc_cu_seqlens[i];
      CHECK(len == sn_token_set_len(&d->docs, b->doc_index[i]) &&
                memcmp(b->doc_ids + b->doc_cu_seqlens[i], d->docs.ids + d->docs.offsets[b->doc_index[i]],
                       (size_t)len * 4) == 0,
            "doc %d tokens", i);
      CHECK(len <= b->max_doc_len, "max_doc_len");
    }
    for (int i = 0; i < b->n_queries; i++) {
      int len = b->query_cu_seqlens[i + 1] - b->query_cu_seqlens[i];
      CHECK(len == sn_token_set_len(&d->queries, b->example_index[i]), "query %d length", i);
    }
    CHECK(b->n_doc_tokens == b->doc_cu_seqlens[b->n_docs], "doc token count");
  }
  sn_sampler_free(s);
}

static void test_epochs_and_positives(dataset *d) {
  sn_sampler_config c = base_config();
  c.global_batch_queries = 12;  // 40 = 3 × 12 + 4: the 4 left are dropped
  sn_sampler *s = make_sampler(&c, d);
  CHECK(sn_sampler_steps_in_epoch(s, 0) == 3, "steps per epoch");
  unsigned char seen[N_EXAMPLES] = {0};
  for (int step = 0; step < 3; step++) {
    const sn_batch *b = next(s);
    CHECK(b->epoch == 0 && b->step == (uint64_t)step, "epoch 0, step %d", step);
    for (int i = 0; i < b->n_queries; i++) seen[b->example_index[i]]++;
  }
  int distinct = 0;
  for (int i = 0; i < N_EXAMPLES; i++) distinct += seen[i] == 1;
  CHECK(distinct == 36, "an epoch's batches hold distinct examples: %d", distinct);
  const sn_batch *b = next(s);
  CHECK(b->epoch == 1, "tail dropped, epoch 1 begins");
  sn_sampler_free(s);

  // Over many epochs each positive of a 3-positive example gets picked; the order changes.
  c.global_batch_queries = 40;
  s = make_sampler(&c, d);
  const int64_t three_pos = 2;  // example 2 has 1 + 2 % 3 = 3 positives
  int64_t picked[3] = {0};
  int64_t first_order[N_EXAMPLES];
  int order_changed = 0;
  for (int epoch = 0; epoch < 30; epoch++) {
    b = next(s);
    if (epoch == 0) memcpy(first_order, b->example_index, sizeof first_order);
    else order_changed |= memcmp(first_order, b->example_index, sizeof first_order) != 0;
    for (int i = 0; i < b->n_queries; i++) {
      if (b->example_index[i] != three_pos) continue;
      for (int j = 0; j < 3; j++) picked[j] += b->doc_index[b->pos_index[i]] == sn_example_pos(&d->ex, three_pos)[j];
    }
  }
  CHECK(picked[0] && picked[1] && picked[2], "positives picked %lld %lld %lld", (long long)picked[0],
        (long long)picked[1], (long long)picked[2]);
  CHECK(order_changed, "each epoch has its own permutation");
  sn_sampler_free(s);
}

static void test_rank_slices(dataset *d) {
  enum { WORLD = 4, STEPS = 10 };
  sn_sampler_config c = base_config();
  c.global_batch_queries = 12;
  sn_sampler *single = make_sampler(&c, d);
  sn_sampler *ranks[WORLD];
  for (int r = 0; r < WORLD; r++) {
    sn_sampler_config rc = c;
    rc.world_size = WORLD;
    rc.rank = r;
    ranks[r] = make_sampler(&rc, d);
  }
  for (int step = 0; step < STEPS; step++) {
    const sn_batch *g = next(single);
    for (int r = 0; r < WORLD; r++) {
      const sn_batch *b = next(ranks[r]);
      CHECK(b->n_queries == 3 && b->rank_doc_counts[r] == 3 * (K_NEG + 1), "rank sizes");
      CHECK(memcmp(b->example_index, g->example_index + 3 * r, 3 * sizeof(int64_t)) == 0,
            "rank %d takes queries [3r, 3r+3) of the global batch (step %d)", r, step);
      CHECK(memcmp(b->doc_index, g->doc_index + 3 * r * (K_NEG + 1), 3 * (K_NEG + 1) * sizeof(int64_t)) == 0,
            "rank %d docs equal the global batch's", r);
      CHECK(b->pos_index[1] == K_NEG + 1, "local pos_index");
      CHECK(b->epoch == g->epoch, "same epoch");
    }
  }
  sn_sampler_free(single);
  for (int r = 0; r < WORLD; r++) sn_sampler_free(ranks[r]);
}

static void check_resume(dataset *d, const sn_sampler_config *c, int before, int after) {
  uint64_t straight[64];
  sn_sampler *s = make_sampler(c, d);
  for (int i = 0; i < before + after; i++) straight[i] = batch_fingerprint(next(s), c->world_size);
  sn_sampler_free(s);

  s = make_sampler(c, d);
  for (int i = 0; i < before; i++) next(s);
  sn_data_cursor cursor;
  sn_sampler_get_cursor(s, &cursor);
  unsigned char saved[sizeof cursor];  // checkpoints store the raw bytes
  memcpy(saved, &cursor, sizeof saved);
  sn_sampler_free(s);

  s = make_sampler(c, d);
  sn_data_cursor restored;
  memcpy(&restored, saved, sizeof restored);
  char err[SN_DATA_ERR_LEN];
  CHECK(sn_sampler_set_cursor(s, &restored, err, sizeof err) == 0, "set cursor: %s", err);
  for (int i = 0; i < after; i++)
    CHECK(batch_fingerprint(next(s), c->world_size) == straight[before + i],
          "resumed batch %d differs (budget %lld, rank %d)", before + i,
          (long long)c->max_tokens_per_rank, c->rank);
  sn_sampler_free(s);
}

static void test_cursor(dataset *d) {
  sn_sampler_config c = base_config();
  check_resume(d, &c, 7, 9);  // crosses epoch boundaries (5 steps per epoch)
  c.world_size = 2;
  c.rank = 1;
  check_resume(d, &c, 3, 12);
  c.global_batch_queries = 0;
  c.max_tokens_per_rank = 150;
  check_resume(d, &c, 5, 10);

  // A cursor from another seed or other data is refused.
  sn_sampler_config base = base_config();
  sn_sampler *s = make_sampler(&base, d);
  next(s);
  sn_data_cursor cur;
  sn_sampler_get_cursor(s, &cur);
  CHECK(cur.version == SN_DATA_CURSOR_VERSION && cur.steps == 1 && cur.position == 8, "cursor fields");
  char err[SN_DATA_ERR_LEN];
  sn_data_cursor bad = cur;
  bad.rng_seed++;
  CHECK(sn_sampler_set_cursor(s, &bad, err, sizeof err) == -1 && strstr(err, "seed"), "seed: %s", err);
  bad = cur;
  bad.n_examples++;
  CHECK(sn_sampler_set_cursor(s, &bad, err, sizeof err) == -1 && strstr(err, "other training data"),
        "data: %s", err);
  bad = cur;
  bad.version++;
  CHECK(sn_sampler_set_cursor(s, &bad, err, sizeof err) == -1 && strstr(err, "version"), "version");
  sn_sampler_free(s);
}

static void test_token_budget(dataset *d) {
  enum { WORLD = 2, BUDGET = 150 };
  for (int cap = 0; cap <= 4; cap += 4) {
    sn_sampler_config c = base_config();
    c.global_batch_queries = cap;
    c.max_tokens_per_rank = BUDGET;
    c.world_size = WORLD;
    sn_sampler *ranks[WORLD];
    for (int r = 0; r < WORLD; r++) {
      c.rank = r;
      ranks[r] = make_sampler(&c, d);
    }
    int64_t per_epoch = sn_sampler_steps_in_epoch(ranks[0], 0);
    CHECK(per_epoch > 0, "budget steps per epoch %lld", (long long)per_epoch);
    unsigned char seen[N_EXAMPLES] = {0};
    int64_t steps_in_epoch0 = 0;
    for (int step = 0; step < 3 * per_epoch; step++) {
      const sn_batch *b[WORLD];
      for (int r = 0; r < WORLD; r++) b[r] = next(ranks[r]);
      for (int r = 0; r < WORLD; r++) {
        CHECK(memcmp(b[r]->rank_query_counts, b[0]->rank_query_counts, WORLD * sizeof(int)) == 0,
              "ranks agree on the split");
        CHECK(b[r]->n_queries == b[0]->rank_query_counts[r], "own count");
        CHECK(b[r]->n_query_tokens + b[r]->n_doc_tokens <= BUDGET || b[r]->n_queries == 1,
              "budget: %lld tokens in %d queries",
              (long long)(b[r]->n_query_tokens + b[r]->n_doc_tokens), b[r]->n_queries);
        if (cap) CHECK(b[r]->n_queries <= cap / WORLD, "cap per rank");
        if (b[r]->epoch == 0)
          for (int i = 0; i < b[r]->n_queries; i++) seen[b[r]->example_index[i]]++;
      }
      steps_in_epoch0 += b[0]->epoch == 0;
    }
    CHECK(steps_in_epoch0 == per_epoch, "steps_in_epoch %lld, observed %lld", (long long)per_epoch,
          (long long)steps_in_epoch0);
    for (int i = 0; i < N_EXAMPLES; i++) CHECK(seen[i] <= 1, "example %d twice in an epoch", i);
    for (int r = 0; r < WORLD; r++) sn_sampler_free(ranks[r]);
  }
}

static void test_queries_only(dataset *d) {
  sn_sampler_config c = base_config();
  c.queries_only = 1;
  char err[SN_DATA_ERR_LEN];
  sn_sampler *s = sn_sampler_create(&c, &d->ex, &d->queries, NULL, err, sizeof err);
  CHECK(s != NULL, "queries-only sampler: %s", err);
  if (!s) return;
  const sn_batch *b = next(s);
  CHECK(b->n_queries == 8 && b->n_docs == 0 && b->n_doc_tokens == 0, "no docs");
  CHECK(b->query_cu_seqlens[8] == b->n_query_tokens && b->n_query_tokens > 0, "query packing");
  sn_sampler_free(s);
}

static void test_errors(dataset *d) {
  char err[SN_DATA_ERR_LEN];
  sn_sampler_config c = base_config();
  c.forbid_random_negatives = 1;  // example 0 (t.jsonl:1) has no "neg"
  CHECK(!sn_sampler_create(&c, &d->ex, &d->queries, &d->docs, err, sizeof err) &&
            strstr(err, "t.jsonl:1: example has no hard negatives"),
        "forbidden random negatives: %s", err);
  c = base_config();
  c.global_batch_queries = N_EXAMPLES + 1;
  CHECK(!sn_sampler_create(&c, &d->ex, &d->queries, &d->docs, err, sizeof err) &&
            strstr(err, "cannot fill one global batch"),
        "too little data: %s", err);
  c = base_config();
  c.world_size = 3;
  CHECK(!sn_sampler_create(&c, &d->ex, &d->queries, &d->docs, err, sizeof err) &&
            strstr(err, "multiple of the world size"),
        "indivisible batch: %s", err);
  c = base_config();
  c.rank = 1;
  CHECK(!sn_sampler_create(&c, &d->ex, &d->queries, &d->docs, err, sizeof err), "rank ≥ world");
  c = base_config();
  CHECK(!sn_sampler_create(&c, &d->ex, &d->queries, NULL, err, sizeof err), "docs missing");

  // One example without negatives and no other positive to borrow.
  dataset one;
  make_dataset(&one, 1);
  c = base_config();
  c.global_batch_queries = 1;
  CHECK(!sn_sampler_create(&c, &one.ex, &one.queries, &one.docs, err, sizeof err) &&
            strstr(err, "t.jsonl:1") && strstr(err, "no other example's positive"),
        "no random negatives available: %s", err);
  c.negatives_per_query = 0;  // fine without negatives
  sn_sampler *s = sn_sampler_create(&c, &one.ex, &one.queries, &one.docs, err, sizeof err);
  CHECK(s != NULL, "k = 0: %s", err);
  if (s) {
    const sn_batch *b = next(s);
    CHECK(b->n_docs == 1 && b->pos_index[0] == 0, "k = 0 batch");
    sn_sampler_free(s);
  }
  free_dataset(&one);
}

// Each doc slot carries its line's score of that doc (NAN for a random negative).
static void test_teacher_scores(dataset *d) {
  sn_sampler_config c = base_config();
  sn_sampler *s = make_sampler(&c, d);
  int checked = 0, random_slots = 0;
  for (int step = 0; step < 6; step++) {
    const sn_batch *b = next(s);
    for (int i = 0; i < b->n_queries; i++) {
      int64_t e = b->example_index[i];
      const sn_train_example *x = &d->ex.examples[e];
      for (int slot = 0; slot <= K_NEG; slot++) {
        int at = b->pos_index[i] + slot;
        int64_t doc = b->doc_index[at];
        const int64_t *list = slot == 0 ? sn_example_pos(&d->ex, e) : sn_example_neg(&d->ex, e);
        int n = slot == 0 ? x->n_pos : x->n_neg, j = 0;
        while (j < n && list[j] != doc) j++;
        float want = j == n ? NAN : (float)(slot == 0 ? pos_score((int)e, j) : neg_score((int)e, j));
        if (j == n) random_slots++;
        CHECK(isnan(want) ? isnan(b->teacher_scores[at]) : b->teacher_scores[at] == want,
              "step %d query %d slot %d: score %g, want %g", step, i, slot, b->teacher_scores[at], want);
        checked++;
      }
    }
  }
  CHECK(checked > 0 && random_slots > 0, "teacher scores: %d slots checked, %d random", checked, random_slots);
  sn_sampler_free(s);
}

int main(void) {
  dataset d;
  make_dataset(&d, N_EXAMPLES);
  test_layout_and_negatives(&d);
  test_epochs_and_positives(&d);
  test_rank_slices(&d);
  test_cursor(&d);
  test_token_budget(&d);
  test_queries_only(&d);
  test_errors(&d);
  test_teacher_scores(&d);
  free_dataset(&d);
  return sn_test_finish("test_data_batches");
}
