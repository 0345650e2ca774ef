// BEIR loader (good data, every kind of bad input → FILE:LINE), exact top-k against a full sort
// with the trec tie rule, the CPU twins of the device search's ops (scores_f32 + topk_merge)
// against the heap search, and the loader on the shared SciFact copy when it is present.
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "beir.h"
#include "common.h"
#include "eval.h"
#include "test_util.h"

#define ERR_LEN 1024

static char g_dir[256];

static FILE *open_in_dir(const char *name) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  return fopenCheck(path, "w");
}

static void write_text(const char *name, const char *text) {
  FILE *f = open_in_dir(name);
  fputs(text, f);
  fclose(f);
}

static const char *GOOD_CORPUS =
    "{\"_id\": \"d1\", \"title\": \"T1\", \"text\": \"first doc\"}\n"
    "{\"_id\": \"d2\", \"text\": \"no title\"}\n"
    "\n"
    "{\"_id\": 3, \"title\": \"\", \"text\": \"numeric id\"}\n";
static const char *GOOD_QUERIES =
    "{\"_id\": \"q1\", \"text\": \"query one\"}\n"
    "{\"_id\": \"q2\", \"text\": \"query two\"}\n"
    "{\"_id\": \"q3\", \"text\": \"not judged in the split\"}\n";
static const char *GOOD_QRELS =
    "query-id\tcorpus-id\tscore\n"
    "q1\td1\t1\n"
    "q1\tmissing_doc\t2\n"
    "q2\t3\t0\n"
    "q9\td2\t1\n";

static void write_good(void) {
  write_text("corpus.jsonl", GOOD_CORPUS);
  write_text("queries.jsonl", GOOD_QUERIES);
  write_text("qrels/test.tsv", GOOD_QRELS);
}

static void test_good(void) {
  write_good();
  sn_beir b;
  char err[ERR_LEN];
  int rc = sn_beir_load(g_dir, "test", &b, err, sizeof err);
  CHECK(rc == 0, "good data: %s", err);
  if (rc) return;
  CHECK(b.corpus.n == 3, "corpus n %d", b.corpus.n);
  CHECK(!strcmp(b.corpus.ids[2], "3"), "numeric id read as '%s'", b.corpus.ids[2]);
  CHECK(!strcmp(b.corpus.titles[1], ""), "absent title is empty");
  CHECK(b.queries.n == 2, "only judged queries kept, got %d", b.queries.n);
  CHECK(b.qrels.nqueries == 2, "unknown query q9 dropped, got %d", b.qrels.nqueries);
  CHECK(b.num_qrels_unknown_queries == 1, "unknown query judgments %d", b.num_qrels_unknown_queries);
  CHECK(b.num_qrels_unknown_docs == 1, "unknown doc judgments %d", b.num_qrels_unknown_docs);
  const sn_qrels_query *q1 = sn_qrels_find(&b.qrels, "q1");
  CHECK(q1 && q1->num_rel == 2, "q1 keeps the unretrievable relevant doc in its count");
  CHECK(q1 && sn_qrels_rel(q1, "missing_doc") == 2 && sn_qrels_rel(q1, "d2") == 0, "q1 grades");
  CHECK(sn_id_map_get(&b.corpus.index, "d2") == 1, "corpus index");
  CHECK(b.num_queries_unjudged == 1, "q3 counted as unjudged, got %d", b.num_queries_unjudged);

  // What the means cover: q1 evaluated, q2 (grade 0 only) left out; a run with q1 missing and an
  // unjudged query counts q1 as 0.
  sn_run_doc doc = {"d1", 1.0};
  sn_run_query rq = {"q7", 1, &doc};
  sn_run run = {1, &rq};
  sn_eval_coverage c;
  sn_eval_coverage_of(&b.qrels, &run, &c);
  CHECK(c.judged == 2 && c.evaluated == 1 && c.no_relevant == 1 && !strcmp(c.first_no_relevant, "q2") &&
            c.missing_from_run == 1 && !strcmp(c.first_missing_from_run, "q1") && c.unjudged_in_run == 1 &&
            !strcmp(c.first_unjudged_in_run, "q7"),
        "coverage: judged %d evaluated %d no_relevant %d missing %d unjudged %d", c.judged, c.evaluated,
        c.no_relevant, c.missing_from_run, c.unjudged_in_run);

  sn_beir_free(&b);
}

// Qrels whose judged queries (those in queries.jsonl) have no positive grade: an error naming the
// qrels file, not metrics of 0 over 0 queries.
static void expect_no_relevant(const char *qrels, const char *needle) {
  write_good();
  write_text("qrels/test.tsv", qrels);
  sn_beir b;
  char err[ERR_LEN] = "";
  int rc = sn_beir_load(g_dir, "test", &b, err, sizeof err);
  CHECK(rc == -1 && strstr(err, "qrels/test.tsv") && strstr(err, needle), "expected an error with '%s', got rc %d: %s",
        needle, rc, err);
  if (rc == 0) sn_beir_free(&b);
  else fprintf(stderr, "  (expected error) %s\n", err);
}

static void test_no_relevant(void) {
  expect_no_relevant("query-id\tcorpus-id\tscore\nq1\td1\t0\nq2\td2\t0\n", "none of its 2 judgments has a positive score");
  // the only positive judgment is of a query absent from queries.jsonl
  expect_no_relevant("query-id\tcorpus-id\tscore\nq1\td1\t0\nq9\td2\t1\n",
                     "none of the 1 judged queries present in");
}

// Each bad file must fail with "<path>:<line>:" in the message.
static void expect_bad(const char *name, const char *text, int line) {
  write_good();
  write_text(name, text);
  sn_beir b;
  char err[ERR_LEN] = "", want[512];
  int rc = sn_beir_load(g_dir, "test", &b, err, sizeof err);
  snprintf(want, sizeof want, "%s/%s:%d:", g_dir, name, line);
  CHECK(rc == -1, "%s (line %d) should fail", name, line);
  CHECK(strstr(err, want) != NULL, "expected '%s' in: %s", want, err);
  if (rc == 0) sn_beir_free(&b);
  else fprintf(stderr, "  (expected error) %s\n", err);
}

static void test_bad(void) {
  expect_bad("corpus.jsonl", "{\"_id\": \"d1\", \"text\": \"ok\"}\n{\"_id\": \"d2\", \"text\": \"unterminated}\n", 2);
  expect_bad("corpus.jsonl", "{\"_id\": \"d1\", \"text\": \"ok\"}\n{\"text\": \"no id\"}\n", 2);
  expect_bad("corpus.jsonl", "{\"_id\": \"d1\", \"text\": 5}\n", 1);
  expect_bad("corpus.jsonl", "{\"_id\": \"d1\", \"title\": [], \"text\": \"x\"}\n", 1);
  expect_bad("corpus.jsonl", "{\"_id\": \"d1\", \"text\": \"a\"}\n{\"_id\": \"d2\", \"text\": \"b\"}\n{\"_id\": \"d1\", \"text\": \"c\"}\n", 3);
  expect_bad("corpus.jsonl", "[1, 2]\n", 1);
  expect_bad("corpus.jsonl", "{\"_id\": 1e300, \"text\": \"beyond int64: not an integer id\"}\n", 1);  // fuzz_beir
  expect_bad("queries.jsonl", "{\"_id\": \"q1\"}\n", 1);
  expect_bad("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n", 3);
  expect_bad("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\tone\n", 2);
  expect_bad("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\t3\t1\nq1\td1\t0\n", 4);
  expect_bad("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\tx\ty\n", 2);
}

// Exact top-k: duplicated document rows make exact score ties, which must be ordered by doc id
// descending (strcmp), exactly as a full sort under the trec rule orders them.
typedef struct {
  float score;
  int idx;
  const char *id;
} ref_entry;
static int cmp_ref(const void *a, const void *b) {
  const ref_entry *x = a, *y = b;
  if (x->score != y->score) return x->score > y->score ? -1 : 1;
  return strcmp(y->id, x->id);
}

static void test_topk(const sn_ops *ops, const char *label) {
  enum { N = 5000, Q = 300, C = 24, K = 100, DUP_EVERY = 3 };
  sn_test_rng rng;
  sn_test_rng_seed(&rng, 7);
  float *docs = malloc(sizeof(float) * N * C), *queries = malloc(sizeof(float) * Q * C);
  sn_test_fill_normal(&rng, docs, (size_t)N * C, 1.0f);
  sn_test_fill_normal(&rng, queries, (size_t)Q * C, 1.0f);
  // coarse values: many exact ties beyond the duplicated rows
  for (size_t i = 0; i < (size_t)N * C; i++) docs[i] = (float)(int)(docs[i] * 2.0f) * 0.5f;
  for (size_t i = 0; i < (size_t)Q * C; i++) queries[i] = (float)(int)(queries[i] * 2.0f) * 0.5f;
  for (int i = DUP_EVERY; i < N; i += DUP_EVERY) memcpy(docs + (size_t)i * C, docs + (size_t)(i - DUP_EVERY) * C, sizeof(float) * C);
  char **ids = malloc(sizeof(char *) * N);
  for (int i = 0; i < N; i++) {
    ids[i] = malloc(32);  // random prefix (order unrelated to the index), unique suffix
    snprintf(ids[i], 32, "%06u-%d", (unsigned)(sn_test_uniform(&rng) * 1e6f), i);
  }
  int32_t *idx = malloc(sizeof(int32_t) * Q * K);
  float *sc = malloc(sizeof(float) * Q * K);
  sn_topk_exact(ops, docs, N, queries, Q, C, K, (const char *const *)ids, idx, sc);
  ref_entry *ref = malloc(sizeof(ref_entry) * N);
  int bad_idx = 0, bad_score = 0;
  for (int q = 0; q < Q; q++) {
    for (int d = 0; d < N; d++) {
      // small integers and halves: every product and partial sum is exact in fp32
      float s = 0;
      for (int c = 0; c < C; c++) s += queries[(size_t)q * C + c] * docs[(size_t)d * C + c];
      ref[d] = (ref_entry){s, d, ids[d]};
    }
    qsort(ref, N, sizeof *ref, cmp_ref);
    for (int r = 0; r < K; r++) {
      bad_idx += idx[(size_t)q * K + r] != ref[r].idx;
      bad_score += sc[(size_t)q * K + r] != ref[r].score;
    }
  }
  CHECK(bad_idx == 0, "%s top-k: %d of %d indices differ from the trec-ordered full sort", label, bad_idx, Q * K);
  CHECK(bad_score == 0, "%s top-k: %d scores differ", label, bad_score);
  // k larger than the corpus is clamped
  int32_t small_idx[4];
  float small_sc[4];
  sn_topk_exact(ops, docs, 2, queries, 1, C, 4, (const char *const *)ids, small_idx, small_sc);
  CHECK(small_sc[0] >= small_sc[1], "%s clamped k ordering", label);
  for (int i = 0; i < N; i++) free(ids[i]);
  free(ids);
  free(ref);
  free(idx);
  free(sc);
  free(docs);
  free(queries);
}

// ---- the merge path: scores_f32 + topk_merge over document blocks, as the device search runs it,
// here through the CPU twins (tests/gpu/test_cuda_ops.c holds the CUDA ops to these).

// Top-k of every query by blocks of `block` documents through the CPU's scores_f32 + topk_merge.
static void merge_search(const float *docs, int N, const float *queries, int Q, int C, int k, int block,
                         const int32_t *tie, int32_t *idx, float *sc) {
  const sn_ops *cpu = sn_ops_cpu();
  float *S = malloc(sizeof(float) * Q * block);
  for (int i = 0; i < Q * k; i++) idx[i] = -1, sc[i] = NAN;  // empty; the NaN must never be read
  for (int d0 = 0; d0 < N; d0 += block) {
    int nd = SN_MIN(block, N - d0);
    cpu->scores_f32(S, queries, docs + (size_t)d0 * C, Q, nd, C);
    cpu->topk_merge(sc, idx, S, Q, nd, k, d0, tie);
  }
  free(S);
}

static void test_topk_merge(void) {
  enum { N = 1000, Q = 37, C = 16, DUP_EVERY = 5 };
  sn_test_rng rng;
  sn_test_rng_seed(&rng, 11);
  float *docs = malloc(sizeof(float) * N * C), *queries = malloc(sizeof(float) * Q * C);
  // values in {-0.5, 0, 0.5}: a few dozen distinct scores over 1000 documents, so most ranks are
  // decided by the tie rule; every sum is exact
  for (int i = 0; i < N * C; i++) docs[i] = (float)(int)(sn_test_normal(&rng) * 1.5f) * 0.5f;
  for (int i = 0; i < Q * C; i++) queries[i] = (float)(int)(sn_test_normal(&rng) * 1.5f) * 0.5f;
  for (int i = DUP_EVERY; i < N; i += DUP_EVERY) memcpy(docs + (size_t)i * C, docs + (size_t)(i - DUP_EVERY) * C, sizeof(float) * C);
  char **ids = malloc(sizeof(char *) * N);
  for (int i = 0; i < N; i++) {
    ids[i] = malloc(32);
    snprintf(ids[i], 32, "%04u-%d", (unsigned)(sn_test_uniform(&rng) * 1e4f), i);
  }
  int32_t *rank = sn_doc_id_ranks((const char *const *)ids, N);
  int32_t *ref_idx = malloc(sizeof(int32_t) * Q * N), *idx = malloc(sizeof(int32_t) * Q * N);
  float *ref_sc = malloc(sizeof(float) * Q * N), *sc = malloc(sizeof(float) * Q * N);
  const int ks[] = {1, 10, 100, 999, N}, blocks[] = {64, 333, N};  // k > a block, uneven last block, one block
  for (size_t ki = 0; ki < SN_ARRAY_LEN(ks); ki++)
    for (size_t bi = 0; bi < SN_ARRAY_LEN(blocks); bi++)
      for (int by_id = 0; by_id < 2; by_id++) {
        int k = ks[ki];
        sn_topk_exact(NULL, docs, N, queries, Q, C, k, by_id ? (const char *const *)ids : NULL, ref_idx, ref_sc);
        merge_search(docs, N, queries, Q, C, k, blocks[bi], by_id ? rank : NULL, idx, sc);
        int bad_idx = 0, bad_score = 0;
        for (int i = 0; i < Q * k; i++) bad_idx += idx[i] != ref_idx[i], bad_score += sc[i] != ref_sc[i];
        CHECK(bad_idx == 0 && bad_score == 0, "merge path k=%d block=%d ties by %s: %d indices, %d scores differ from the heap search",
              k, blocks[bi], by_id ? "id" : "index", bad_idx, bad_score);
      }
  // The device search itself (queries resident a slice at a time) through the CPU twins: one query a
  // slice, a slice that leaves a short last one, and all at once.
  const int slices[] = {1, 5, Q};
  for (size_t si = 0; si < SN_ARRAY_LEN(slices); si++)
    for (int by_id = 0; by_id < 2; by_id++) {
      const int k = 100;
      const char *const *tie_ids = by_id ? (const char *const *)ids : NULL;
      sn_topk_exact(NULL, docs, N, queries, Q, C, k, tie_ids, ref_idx, ref_sc);
      for (int i = 0; i < Q * k; i++) idx[i] = -7, sc[i] = NAN;  // poison
      sn_topk_exact_sliced(sn_ops_cpu(), docs, N, queries, Q, C, k, tie_ids, idx, sc, slices[si]);
      int bad_idx = 0, bad_score = 0;
      for (int i = 0; i < Q * k; i++) bad_idx += idx[i] != ref_idx[i], bad_score += sc[i] != ref_sc[i];
      CHECK(bad_idx == 0 && bad_score == 0,
            "sliced search, %d queries a slice, ties by %s: %d indices, %d scores differ", slices[si],
            by_id ? "id" : "index", bad_idx, bad_score);
    }

  // Lists deeper than the documents seen end in empty entries; -0.0 ties with +0.0 (then the
  // higher index wins) and is stored as +0.0; -inf still ranks above an empty entry.
  const sn_ops *cpu = sn_ops_cpu();
  const float row[6] = {0.5f, -0.0f, 0.0f, -INFINITY, 0.5f, 1.0f};
  const int32_t want_idx[8] = {5, 4, 0, 2, 1, 3, -1, -1};
  const float want_sc[8] = {1.0f, 0.5f, 0.5f, 0.0f, 0.0f, -INFINITY, -INFINITY, -INFINITY};
  int32_t small_idx[8];
  float small_sc[8];
  for (int i = 0; i < 8; i++) small_idx[i] = -1, small_sc[i] = NAN;
  cpu->topk_merge(small_sc, small_idx, row, 1, 2, 8, 0, NULL);      // two blocks, ragged
  cpu->topk_merge(small_sc, small_idx, row + 2, 1, 4, 8, 2, NULL);
  int bad = 0;
  for (int i = 0; i < 8; i++)
    bad += small_idx[i] != want_idx[i] || memcmp(&small_sc[i], &want_sc[i], sizeof(float)) != 0;
  CHECK(bad == 0, "topk_merge edge cases: %d of 8 entries wrong (first: idx %d score %g)", bad, small_idx[0], small_sc[0]);

  for (int i = 0; i < N; i++) free(ids[i]);
  free(ids), free(rank), free(docs), free(queries);
  free(ref_idx), free(idx), free(ref_sc), free(sc);
}

static void test_scifact(void) {
  const char *shared = sn_test_shared_dir();
  if (!shared) {
    fprintf(stderr, "scifact: ../shared absent, skipped\n");
    return;
  }
  char dir[512];
  snprintf(dir, sizeof dir, "%s/data/scifact", shared);
  struct stat st;
  if (stat(dir, &st) != 0) return;
  sn_beir b;
  char err[ERR_LEN];
  int rc = sn_beir_load(dir, "test", &b, err, sizeof err);
  CHECK(rc == 0, "scifact: %s", err);
  if (rc) return;
  fprintf(stderr, "scifact test: %d docs, %d queries, %d judged queries\n", b.corpus.n, b.queries.n, b.qrels.nqueries);
  CHECK(b.corpus.n == 5183, "scifact corpus size %d", b.corpus.n);
  CHECK(b.queries.n == 300 && b.qrels.nqueries == 300, "scifact test queries %d", b.queries.n);
  sn_beir_free(&b);
}

// The whole pipeline on a fresh tiny decoder with GPT-2's tokenizer: each query's text is exactly
// its document's text, so with one tower every query must find its own document first (this
// checks tokenizing, truncation, length-sorted batching and the restored order), and saved corpus
// embeddings must give the same metrics as a fresh pass.
static void test_pipeline(void) {
  enum { NDOCS = 150, MAX_LEN = 12, BATCH = 16, WORDS_MAX = 40 };
  const char *shared = sn_test_shared_dir();
  char tokdir[512];
  struct stat st;
  snprintf(tokdir, sizeof tokdir, "%s/tokenizers/gpt2", shared ? shared : ".");
  if (!shared || stat(tokdir, &st) != 0) {
    fprintf(stderr, "pipeline: %s absent, skipped\n", tokdir);
    return;
  }
  char err[ERR_LEN];
  sn_tokenizer *tok = sn_tokenizer_load(tokdir, err, sizeof err);
  CHECK(tok != NULL, "tokenizer: %s", err);
  if (!tok) return;
  const char *desc = "{\"arch\": \"qwen2\", \"layers\": 1, \"hidden\": 32, \"heads\": 2, "
                     "\"kv_heads\": 1, \"intermediate\": 64, \"vocab\": 50257}";
  sn_model_config cfg;
  CHECK(sn_config_parse_desc(&cfg, desc, strlen(desc), "desc", err, sizeof err) == 0, "desc: %s", err);
  sn_model *m = sn_model_new(&cfg, sn_ops_cpu(), 1);

  static const char *WORDS[] = {"apple", "river", "quantum", "market", "violin", "granite", "orbit", "lemon"};
  FILE *fc = open_in_dir("corpus.jsonl"), *fq = open_in_dir("queries.jsonl"), *fr = open_in_dir("qrels/test.tsv");
  fprintf(fr, "query-id\tcorpus-id\tscore\n");
  for (int i = 0; i < NDOCS; i++) {
    char text[1024];
    int len = snprintf(text, sizeof text, "%d", i * 7919 % 100003);  // distinct leading token(s)
    for (int w = 0; w < 1 + (i * 13) % WORDS_MAX; w++)
      len += snprintf(text + len, sizeof text - (size_t)len, " %s", WORDS[(i + w * w) % SN_ARRAY_LEN(WORDS)]);
    fprintf(fc, "{\"_id\": \"d%d\", \"title\": \"\", \"text\": \"%s\"}\n", i, text);
    fprintf(fq, "{\"_id\": \"q%d\", \"text\": \"%s\"}\n", i, text);
    fprintf(fr, "q%d\td%d\t1\n", i, i);
  }
  fclose(fc);
  fclose(fq);
  fclose(fr);
  sn_beir data;
  int rc = sn_beir_load(g_dir, "test", &data, err, sizeof err);
  CHECK(rc == 0, "pipeline data: %s", err);
  if (rc == 0) {
    sn_eval_opts o;
    sn_eval_opts_default(&o);
    o.batch = BATCH;
    o.max_query_len = o.max_doc_len = MAX_LEN;
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s/emb", g_dir);
    o.save_doc_emb = prefix;
    sn_eval_result r1, r2;
    rc = sn_eval_run(&o, &data, m, tok, m, tok, &r1, err, sizeof err);
    CHECK(rc == 0, "sn_eval_run: %s", err);
    CHECK(r1.num_queries == NDOCS && r1.num_docs == NDOCS, "counts %d %d", r1.num_queries, r1.num_docs);
    CHECK(r1.mean.mrr_10 == 1.0 && r1.mean.recall_10 == 1.0 && r1.mean.ndcg_10 == 1.0,
          "identical texts: mrr@10 %.4f recall@10 %.4f ndcg@10 %.4f (expected 1)", r1.mean.mrr_10,
          r1.mean.recall_10, r1.mean.ndcg_10);
    o.save_doc_emb = NULL;
    o.load_doc_emb = prefix;
    rc = sn_eval_run(&o, &data, m, tok, m, tok, &r2, err, sizeof err);
    CHECK(rc == 0, "sn_eval_run (saved embeddings): %s", err);
    CHECK(!memcmp(&r1.mean, &r2.mean, sizeof r1.mean), "saved embeddings change the metrics");
    // saved embeddings of another corpus are refused
    free(data.corpus.ids[0]);
    data.corpus.ids[0] = strdup("other");
    rc = sn_eval_run(&o, &data, m, tok, m, tok, &r2, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "emb.ids.txt:1:"), "mismatched ids: rc %d, %s", rc, err);
    sn_beir_free(&data);
  }
  sn_model_free(m);
  sn_tokenizer_free(tok);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/sn_test_beir_%ld", (long)getpid());
  char sub[300];
  snprintf(sub, sizeof sub, "%s/qrels", g_dir);
  sn_mkdir_p(sub);
  test_good();
  test_bad();
  test_no_relevant();
  test_topk(NULL, "host");
  test_topk(sn_ops_cpu(), "cpu-ops");
  test_topk_merge();
  test_scifact();
  test_pipeline();
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  return sn_test_finish("test_beir");
}
