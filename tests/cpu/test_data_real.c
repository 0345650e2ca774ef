// Integration: SciFact training data (built here from qrels/train.tsv + corpus + queries) through the
// real Qwen3 tokenizer: prompts, truncation that keeps the tail and EOS, the shard cache (second
// load is a hit), a second tower tokenizer (GPT-2) for the same queries, and a sampler epoch.
// Skips (77) when ../shared, SciFact or the tokenizer is unavailable.
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cJSON.h"
#include "common.h"
#include "data.h"
#include "test_util.h"
#include "tokenizer.h"

#define HARD_NEGS_PER_QUERY 4
#define NEG_STRIDE 97  // hard negatives: corpus docs at a fixed stride from a query-dependent start
#define QUERY_PROMPT "Instruct: Given a scientific claim, retrieve documents that support or refute the claim\nQuery: {text}"
#define DOC_PROMPT "Title: {title}\nText: {text}"
#define MAX_QUERY_LEN 64
#define MAX_DOC_LEN 256

typedef struct {
  char **ids, **titles, **texts;
  int n;
} beir_table;

static void read_beir_jsonl(const char *path, beir_table *t) {
  size_t len;
  char *buf = sn_read_file(path, &len);
  if (!buf) sn_test_skip("SciFact files are not readable");
  memset(t, 0, sizeof *t);
  int cap = 0;
  for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
    cJSON *o = cJSON_Parse(line);
    if (!o) continue;
    const cJSON *id = cJSON_GetObjectItem(o, "_id"), *title = cJSON_GetObjectItem(o, "title"),
                *text = cJSON_GetObjectItem(o, "text");
    if (cJSON_IsString(id) && cJSON_IsString(text)) {
      if (t->n == cap) {
        cap = cap ? 2 * cap : 1024;
        t->ids = reallocCheck(t->ids, (size_t)cap * sizeof(char *));
        t->titles = reallocCheck(t->titles, (size_t)cap * sizeof(char *));
        t->texts = reallocCheck(t->texts, (size_t)cap * sizeof(char *));
      }
      t->ids[t->n] = strdupCheck(id->valuestring);
      t->titles[t->n] = strdupCheck(cJSON_IsString(title) ? title->valuestring : "");
      t->texts[t->n++] = strdupCheck(text->valuestring);
    }
    cJSON_Delete(o);
  }
  free(buf);
}

static int find_id(const beir_table *t, const char *id) {
  for (int i = 0; i < t->n; i++)
    if (strcmp(t->ids[i], id) == 0) return i;
  return -1;
}

static void free_table(beir_table *t) {
  for (int i = 0; i < t->n; i++) {
    free(t->ids[i]);
    free(t->titles[i]);
    free(t->texts[i]);
  }
  free(t->ids);
  free(t->titles);
  free(t->texts);
}

static cJSON *doc_json(const beir_table *corpus, int i) {
  cJSON *d = cJSON_CreateObject();
  cJSON_AddStringToObject(d, "title", corpus->titles[i]);
  cJSON_AddStringToObject(d, "text", corpus->texts[i]);
  return d;
}

// One line per training query: its qrels positives, and HARD_NEGS_PER_QUERY other corpus docs.
static int write_train_jsonl(const char *scifact, const char *out_path) {
  char path[1024];
  beir_table corpus, queries;
  snprintf(path, sizeof path, "%s/corpus.jsonl", scifact);
  read_beir_jsonl(path, &corpus);
  snprintf(path, sizeof path, "%s/queries.jsonl", scifact);
  read_beir_jsonl(path, &queries);
  snprintf(path, sizeof path, "%s/qrels/train.tsv", scifact);
  FILE *qrels = fopen(path, "r");
  if (!qrels) sn_test_skip("SciFact qrels/train.tsv missing");
  FILE *out = fopenCheck(out_path, "w");
  char line[512], prev_q[128] = "";
  cJSON *cur = NULL, *pos = NULL;
  int n_lines = 0;
  for (;;) {
    char *got = fgets(line, sizeof line, qrels);
    char qid[128] = "", did[128] = "";
    int score = 0;
    int parsed = got && sscanf(line, "%127s %127s %d", qid, did, &score) == 3 && score > 0;
    if (got && !parsed) continue;  // header
    if (cur && (!got || strcmp(qid, prev_q) != 0)) {
      char *text = cJSON_PrintUnformatted(cur);
      fprintf(out, "%s\n", text);
      free(text);
      cJSON_Delete(cur);
      cur = NULL;
      n_lines++;
    }
    if (!got) break;
    int q = find_id(&queries, qid), d = find_id(&corpus, did);
    if (q < 0 || d < 0) continue;
    if (!cur) {
      cur = cJSON_CreateObject();
      cJSON_AddStringToObject(cur, "query", queries.texts[q]);
      pos = cJSON_AddArrayToObject(cur, "pos");
      cJSON *neg = cJSON_AddArrayToObject(cur, "neg");
      for (int j = 0; j < HARD_NEGS_PER_QUERY; j++) {
        int k = (int)((sn_hash64(qid, strlen(qid), 0) % (uint64_t)corpus.n + (uint64_t)j * NEG_STRIDE) %
                      (uint64_t)corpus.n);
        if (k != d) cJSON_AddItemToArray(neg, doc_json(&corpus, k));
      }
      snprintf(prev_q, sizeof prev_q, "%s", qid);
    }
    cJSON_AddItemToArray(pos, doc_json(&corpus, d));
  }
  fclose(qrels);
  fcloseCheck(out, out_path);
  free_table(&corpus);
  free_table(&queries);
  return n_lines;
}

static void check_set(const sn_token_set *set, int max_len, int32_t eos, const char *what) {
  int64_t bad_len = 0, bad_eos = 0;
  for (int64_t i = 0; i < set->n_seqs; i++) {
    int len = sn_token_set_len(set, i);
    bad_len += len > max_len || len < 2;
    bad_eos += set->ids[set->offsets[i + 1] - 1] != eos;
  }
  CHECK(bad_len == 0, "%s: %lld sequences over %d tokens", what, (long long)bad_len, max_len);
  CHECK(bad_eos == 0, "%s: %lld sequences do not end with EOS", what, (long long)bad_eos);
}

// An untruncated sequence equals the tokenizer's encoding of the rendered prompt, plus EOS.
static void check_matches_tokenizer(const sn_token_set *set, const sn_text_item *items,
                                    const sn_prompt_spec *spec, const sn_tokenizer *tok) {
  sn_text_encoder enc = sn_text_encoder_from_tokenizer(tok);
  char err[SN_DATA_ERR_LEN];
  sn_prompt *p = sn_prompt_create(spec, &enc, err, sizeof err);
  CHECK(p != NULL, "prompt: %s", err);
  if (!p) return;
  int checked = 0;
  for (int64_t i = 0; i < set->n_seqs && checked < 50; i++) {
    if (sn_token_set_len(set, i) >= spec->max_len) continue;  // possibly cut
    char *text = sn_prompt_render(p, items[i].title, items[i].text);
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    sn_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, &cap);
    if (spec->append_eos && (n == 0 || ids[n - 1] != sn_tokenizer_eos_id(tok))) {
      ids = reallocCheck(ids, (n + 1) * sizeof *ids);
      ids[n++] = sn_tokenizer_eos_id(tok);
    }
    CHECK(n == (size_t)sn_token_set_len(set, i) &&
              memcmp(ids, set->ids + set->offsets[i], n * sizeof *ids) == 0,
          "item %lld differs from encoding the rendered prompt", (long long)i);
    free(ids);
    free(text);
    checked++;
  }
  CHECK(checked > 0, "no untruncated item to compare");
  sn_prompt_free(p);
}

// A cut keeps the template's tail: "{text}\nEnd." at 16 tokens ends with encode("\nEnd.") + EOS.
static void check_tail_kept(const sn_text_item *docs, int64_t n, const sn_tokenizer *tok) {
  sn_text_encoder enc = sn_text_encoder_from_tokenizer(tok);
  sn_prompt_spec spec = {"{text}\nEnd.", 16, 1, 1};
  sn_token_set set;
  char err[SN_DATA_ERR_LEN];
  CHECK(sn_token_set_build(&set, docs, SN_MIN(n, 200), &spec, &enc, err, sizeof err) == 0, "%s", err);
  int32_t *tail = NULL;
  size_t n_tail = 0, cap = 0;
  sn_tokenizer_encode(tok, "\nEnd.", 5, 0, &tail, &n_tail, &cap);
  int64_t bad = 0;
  for (int64_t i = 0; i < set.n_seqs; i++) {
    const int32_t *end = set.ids + set.offsets[i + 1];
    bad += sn_token_set_len(&set, i) != 16 || end[-1] != sn_tokenizer_eos_id(tok) ||
           memcmp(end - 1 - n_tail, tail, n_tail * sizeof *tail) != 0;
  }
  CHECK(bad == 0 && set.n_truncated == set.n_seqs, "%lld cut docs lost the template's tail", (long long)bad);
  free(tail);
  sn_token_set_close(&set);
}

int main(void) {
  const char *shared = sn_test_shared_dir();
  if (!shared) sn_test_skip("../shared is not available");
  char scifact[1024], tok_dir[1024], gpt2_dir[1024];
  snprintf(scifact, sizeof scifact, "%s/data/scifact", shared);
  snprintf(tok_dir, sizeof tok_dir, "%s/tokenizers/qwen3", shared);
  snprintf(gpt2_dir, sizeof gpt2_dir, "%s/tokenizers/gpt2", shared);
  if (access(scifact, R_OK) != 0) sn_test_skip("SciFact is not available");
  char err[SN_DATA_ERR_LEN];
  sn_tokenizer *tok = sn_tokenizer_load(tok_dir, err, sizeof err);
  if (!tok) {
    fprintf(stderr, "cannot load %s: %s\n", tok_dir, err);
    sn_test_skip("the Qwen3 tokenizer cannot be loaded");
  }

  char dir[] = "/tmp/sn_test_data_real_XXXXXX";
  if (!mkdtemp(dir)) sn_fatal("mkdtemp");
  char train[1200], cache[1200];
  snprintf(train, sizeof train, "%s/train.jsonl", dir);
  snprintf(cache, sizeof cache, "%s/cache", dir);
  int n_lines = write_train_jsonl(scifact, train);
  CHECK(n_lines > 500, "SciFact train queries: %d", n_lines);

  sn_train_examples ex;
  const char *paths[1] = {train};
  sn_train_examples_load(&ex, paths, 1, 0, 0);
  CHECK(ex.n_examples == n_lines && ex.n_lines_skipped == 0, "examples %lld", (long long)ex.n_examples);

  sn_text_encoder qwen = sn_text_encoder_from_tokenizer(tok);
  const int32_t eos = sn_tokenizer_eos_id(tok);
  CHECK(eos >= 0, "Qwen3 has an EOS id");
  sn_prompt_spec qspec = {QUERY_PROMPT, MAX_QUERY_LEN, 1, 1}, dspec = {DOC_PROMPT, MAX_DOC_LEN, 1, 1};
  sn_text_item *qitems = sn_train_examples_query_items(&ex), *ditems = sn_train_examples_doc_items(&ex);
  sn_shard_cache_opts qopts = {cache, "query-qwen3", 1, 0}, dopts = {cache, "docs-qwen3", 1, 0};
  sn_token_set queries, docs, again;
  double t0 = sn_now_s();
  sn_token_set_load_or_build_or_die(&queries, qitems, ex.n_examples, &qspec, &qwen, &qopts);
  sn_token_set_load_or_build_or_die(&docs, ditems, ex.n_docs, &dspec, &qwen, &dopts);
  double t_build = sn_now_s() - t0;
  check_set(&queries, MAX_QUERY_LEN, eos, "queries");
  check_set(&docs, MAX_DOC_LEN, eos, "docs");
  CHECK(docs.n_truncated > 0, "some SciFact abstracts exceed %d tokens", MAX_DOC_LEN);
  check_matches_tokenizer(&queries, qitems, &qspec, tok);
  check_matches_tokenizer(&docs, ditems, &dspec, tok);
  check_tail_kept(ditems, ex.n_docs, tok);

  t0 = sn_now_s();
  sn_token_set_load_or_build_or_die(&again, ditems, ex.n_docs, &dspec, &qwen, &dopts);
  double t_cached = sn_now_s() - t0;
  CHECK(again.n_truncated == -1 && again.cache_key == docs.cache_key, "second load is a cache hit");
  sn_token_set_close(&again);
  printf("scifact: %lld examples, %lld docs, %lld doc tokens; tokenized in %.2f s, cached load %.3f s\n",
         (long long)ex.n_examples, (long long)ex.n_docs, (long long)docs.n_tokens, t_build, t_cached);

  // The student tower's own tokenizer sees the same query text: another set, another file.
  sn_tokenizer *gpt2 = sn_tokenizer_load(gpt2_dir, err, sizeof err);
  if (gpt2) {
    sn_text_encoder genc = sn_text_encoder_from_tokenizer(gpt2);
    sn_shard_cache_opts sopts = {cache, "query-student", 1, 0};
    sn_token_set student;
    sn_token_set_load_or_build_or_die(&student, qitems, ex.n_examples, &qspec, &genc, &sopts);
    CHECK(student.n_seqs == queries.n_seqs && student.cache_key != queries.cache_key &&
              strcmp(student.path, queries.path) != 0,
          "student query set");
    check_set(&student, MAX_QUERY_LEN, sn_tokenizer_eos_id(gpt2), "student queries");
    sn_token_set_close(&student);
    sn_tokenizer_free(gpt2);
  } else {
    fprintf(stderr, "note: GPT-2 tokenizer not loaded (%s); second-tower check skipped\n", err);
  }

  // One epoch of batches over two ranks.
  enum { WORLD = 2 };
  sn_sampler_config cfg = {.global_batch_queries = 32, .negatives_per_query = 3, .seed = 7,
                           .world_size = WORLD};
  sn_sampler *ranks[WORLD];
  for (int r = 0; r < WORLD; r++) {
    cfg.rank = r;
    ranks[r] = sn_sampler_init(&cfg, &ex, &queries, &docs);
  }
  int64_t steps = sn_sampler_steps_in_epoch(ranks[0], 0);
  CHECK(steps == ex.n_examples / 32, "steps per epoch %lld", (long long)steps);
  int64_t max_tokens = 0;
  for (int64_t s = 0; s < steps; s++) {
    for (int r = 0; r < WORLD; r++) {
      const sn_batch *b = sn_sampler_next_or_die(ranks[r]);
      CHECK(b->n_queries == 16 && b->n_docs == 64 && b->epoch == 0, "batch shape");
      CHECK(b->query_ids[b->query_cu_seqlens[1] - 1] == eos && b->doc_ids[b->doc_cu_seqlens[1] - 1] == eos,
            "packed sequences end with EOS");
      max_tokens = SN_MAX(max_tokens, b->n_query_tokens + b->n_doc_tokens);
    }
  }
  printf("scifact: %lld steps per epoch, most tokens in a rank batch %lld\n", (long long)steps,
         (long long)max_tokens);
  for (int r = 0; r < WORLD; r++) sn_sampler_free(ranks[r]);

  free(qitems);
  free(ditems);
  sn_token_set_close(&queries);
  sn_token_set_close(&docs);
  sn_train_examples_free(&ex);
  sn_tokenizer_free(tok);
  char cmd[1300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return sn_test_finish("test_data_real");
}
