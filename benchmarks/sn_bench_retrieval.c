// sn_bench_retrieval: the two costs of building a retrieval index with a tower, at sizes a user
// plans with: embedding a corpus (documents a second through a random-initialised tower of a
// given shape, tokenisation included, as sn_eval and sn_mine embed) and the exact top-k search of
// many queries over a large corpus of synthetic unit vectors (sn_topk_exact, as sn_eval searches).
//
//   sn_bench_retrieval [--device cpu|cuda] [--search] [--embed] [--queries Q] [--docs N] [--dim C]
//                      [--k K] [--model-desc FILE] [--tokenizer FILE] [--embed-docs N] [--doc-len T]
//                      [--batch B] [--threads N]
//
// Neither mode needs the other: both run when neither flag is given. Figures are wall-clock seconds
// of one call after a warm-up call on a small slice (so cuBLAS handles, workspaces and the CUDA
// context are not counted), with the achieved TFLOP/s of the work the call must do.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "counter_rng.h"
#include "eval.h"
#include "model.h"
#include "model_config.h"
#include "ops.h"
#include "tokenizer.h"

#define DEFAULT_QUERIES 10000
#define DEFAULT_DOCS 1000000
#define DEFAULT_DIM 896          // the 0.5B tower's width
#define DEFAULT_K 100            // the depth sn_eval searches (SN_EVAL_MAX_METRIC_K)
#define DEFAULT_EMBED_DOCS 8192
#define DEFAULT_DOC_LEN 128      // tokens, EOS included: every synthetic document is longer
#define DEFAULT_BATCH 256
#define WARMUP_ITEMS 64          // queries or documents of the untimed first call
#define WORDS_PER_DOC 400        // enough words that every document is cut at --doc-len
#define SEED_DOCS 11
#define SEED_QUERIES 12
#define SEED_TOWER 13
#define SEED_TEXT 14

static void usage(FILE *out) {
  fprintf(out,
          "usage: sn_bench_retrieval [--device cpu|cuda] [--search] [--embed] [options]\n"
          "Corpus embedding rate and exact top-k search time (both modes when neither is named).\n"
          "  --device D         cpu or cuda (default cuda when a GPU is present, else cpu)\n"
          "  --search           time sn_topk_exact: --queries over --docs synthetic unit vectors\n"
          "  --embed            time embedding --embed-docs synthetic documents with a fresh tower\n"
          "  --queries Q        search queries (default %d)\n"
          "  --docs N           search corpus size (default %d)\n"
          "  --dim C            embedding width of the search (default %d)\n"
          "  --k K              results per query (default %d)\n"
          "  --model-desc FILE  the tower's shape (default configs/models/qwen2.5-0.5b.json)\n"
          "  --tokenizer FILE   tokenizer.json (default configs/default/decoder/tokenizer.json)\n"
          "  --embed-docs N     documents to embed (default %d)\n"
          "  --doc-len T        tokens a document (default %d; every synthetic document is cut there)\n"
          "  --batch B          sequences a forward pass (default %d)\n"
          "  --threads N        CPU threads (default: OpenMP's)\n"
          "  --help, -h         this text\n"
          "  --version          the scalingnote version\n",
          DEFAULT_QUERIES, DEFAULT_DOCS, DEFAULT_DIM, DEFAULT_K, DEFAULT_EMBED_DOCS, DEFAULT_DOC_LEN,
          DEFAULT_BATCH);
}

typedef struct {
  const char *device, *model_desc, *tokenizer;
  int search, embed, queries, dim, k, embed_docs, doc_len, batch, threads;
  int64_t docs;
} bench_args;

static bench_args parse_args(int argc, char **argv) {
  bench_args a = {.model_desc = SN_SOURCE_DIR "/configs/models/qwen2.5-0.5b.json",
                  .tokenizer = SN_SOURCE_DIR "/configs/default/decoder/tokenizer.json",
                  .queries = DEFAULT_QUERIES, .docs = DEFAULT_DOCS, .dim = DEFAULT_DIM, .k = DEFAULT_K,
                  .embed_docs = DEFAULT_EMBED_DOCS, .doc_len = DEFAULT_DOC_LEN, .batch = DEFAULT_BATCH};
  sn_cli_init("sn_bench_retrieval", usage);
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    sn_cli_std_flag(f);
    if (!strcmp(f, "--search")) { a.search = 1; continue; }
    if (!strcmp(f, "--embed")) { a.embed = 1; continue; }
    if (i + 1 >= argc) sn_usage_error("unknown argument or missing value: '%s'", f);
    const char *v = argv[++i];
    if (!strcmp(f, "--device")) a.device = v;
    else if (!strcmp(f, "--model-desc")) sn_flag_path_kind(f, v, 0), a.model_desc = v;
    else if (!strcmp(f, "--tokenizer")) sn_flag_path_kind(f, v, 0), a.tokenizer = v;
    else if (!strcmp(f, "--queries")) a.queries = (int)sn_flag_i64(f, v, 1, INT32_MAX);
    else if (!strcmp(f, "--docs")) a.docs = sn_flag_i64(f, v, 1, INT32_MAX);
    else if (!strcmp(f, "--dim")) a.dim = (int)sn_flag_i64(f, v, 1, 1 << 16);
    else if (!strcmp(f, "--k")) a.k = (int)sn_flag_i64(f, v, 1, 1 << 16);
    else if (!strcmp(f, "--embed-docs")) a.embed_docs = (int)sn_flag_i64(f, v, 1, INT32_MAX);
    else if (!strcmp(f, "--doc-len")) a.doc_len = (int)sn_flag_i64(f, v, 2, 1 << 16);
    else if (!strcmp(f, "--batch")) a.batch = (int)sn_flag_i64(f, v, 1, 1 << 16);
    else if (!strcmp(f, "--threads")) a.threads = (int)sn_flag_i64(f, v, 1, 1 << 12);
    else sn_usage_error("unknown argument: '%s'", f);
  }
  if (!a.search && !a.embed) a.search = a.embed = 1;
  return a;
}

// (n, C) rows of independent normals scaled to unit length: cosine-similarity embeddings.
static float *unit_rows(int64_t n, int C, uint64_t seed) {
  float *x = mallocCheck((size_t)n * C * sizeof *x);
  const uint64_t key = sn_rng_stream_key(seed, 0);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float *row = x + i * C;
    double ss = 0.0;
    for (int c = 0; c < C; c++) row[c] = sn_normal_at(key, (uint64_t)i * C + c), ss += (double)row[c] * row[c];
    const float inv = (float)(1.0 / sqrt(ss));
    for (int c = 0; c < C; c++) row[c] *= inv;
  }
  return x;
}

static void bench_search(const sn_ops *ops, const bench_args *a) {
  const int64_t N = a->docs;
  const int Q = a->queries, C = a->dim, k = a->k < N ? a->k : (int)N;
  float *docs = unit_rows(N, C, SEED_DOCS), *queries = unit_rows(Q, C, SEED_QUERIES);
  int32_t *idx = mallocCheck((size_t)Q * k * sizeof *idx);
  float *scores = mallocCheck((size_t)Q * k * sizeof *scores);
  const int warm_q = Q < WARMUP_ITEMS ? Q : WARMUP_ITEMS;
  sn_topk_exact(ops, docs, N, queries, warm_q, C, k, NULL, idx, scores);
  const double t0 = sn_now_s();
  sn_topk_exact(ops, docs, N, queries, Q, C, k, NULL, idx, scores);
  const double s = sn_now_s() - t0;
  // a check that the search did its work: a query's best score is its largest inner product, in (0, 1]
  if (!(scores[0] > 0.0f && scores[0] <= 1.0001f && scores[0] >= scores[k - 1]))
    sn_fatal("search: implausible scores (first %g, last %g)", scores[0], scores[k - 1]);
  const double flops = 2.0 * Q * (double)N * C;
  printf("search  %s  %d queries x %lld docs x %d dims, k %d: %.3f s, %.0f queries/s, %.1f TFLOP/s of scoring "
         "(fp32 inputs from host memory; upload included)\n",
         ops->name, Q, (long long)N, C, k, s, Q / s, flops / s / 1e12);
  free(docs), free(queries), free(idx), free(scores);
}

// n texts of WORDS_PER_DOC words drawn from a fixed list: ordinary English tokens, so the
// tokenizer does its usual work and every document is cut at the length limit.
static char **synthetic_texts(int n) {
  static const char *words[] = {"retrieval", "model", "the", "of", "and", "protein", "cell", "network",
                                "learning", "data", "a", "in", "search", "query", "document", "results",
                                "increase", "patients", "study", "with", "to", "analysis", "gene", "for"};
  const int nwords = (int)(sizeof words / sizeof *words);
  char **texts = mallocCheck((size_t)n * sizeof *texts);
  const uint64_t key = sn_rng_stream_key(SEED_TEXT, 0);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    size_t cap = (size_t)WORDS_PER_DOC * 16, len = 0;
    char *t = mallocCheck(cap);
    for (int w = 0; w < WORDS_PER_DOC; w++) {
      const char *word = words[(int)(sn_uniform_at(key, (uint64_t)i * WORDS_PER_DOC + w) * nwords) % nwords];
      len += (size_t)snprintf(t + len, cap - len, "%s%s", w ? " " : "", word);
    }
    texts[i] = t;
  }
  return texts;
}

static void bench_embed(const sn_ops *ops, const bench_args *a) {
  size_t len;
  char *desc = sn_read_file(a->model_desc, &len);
  if (!desc) sn_usage_error("--model-desc %s: cannot read it", a->model_desc);
  sn_model_config cfg;
  char err[512];
  if (sn_config_parse_desc(&cfg, desc, len, a->model_desc, err, sizeof err)) sn_usage_error("%s", err);
  free(desc);
  sn_tokenizer *tok = sn_tokenizer_load(a->tokenizer, err, sizeof err);
  if (!tok) sn_usage_error("%s", err);
  sn_model *m = sn_model_new(&cfg, ops, SEED_TOWER);
  const int n = a->embed_docs, warm = n < WARMUP_ITEMS ? n : WARMUP_ITEMS;
  char **texts = synthetic_texts(n);
  float *e = sn_embed_items(m, tok, NULL, (const char *const *)texts, warm, NULL, a->doc_len, a->batch,
                            -1, 0, "warm-up", err, sizeof err);
  if (!e) sn_bad_input("%s", err);
  free(e);
  const double t0 = sn_now_s();
  e = sn_embed_items(m, tok, NULL, (const char *const *)texts, n, NULL, a->doc_len, a->batch, -1, 0,
                     "documents", err, sizeof err);
  const double s = sn_now_s() - t0;
  if (!e) sn_bad_input("%s", err);
  const int C = sn_eval_embedding_dim(m);
  double norm0 = 0.0;
  for (int c = 0; c < C; c++) norm0 += (double)e[c] * e[c];
  if (fabs(norm0 - 1.0) > 1e-3) sn_fatal("embed: the first embedding's norm is %g, not 1", sqrt(norm0));
  // forward FLOPs: 2 per non-embedding parameter per token (attention's T^2 terms left out: small at
  // this length), every document being doc_len tokens long
  const int64_t params = sn_config_num_params(&cfg) - (int64_t)cfg.vocab * cfg.hidden;
  const double tokens = (double)n * a->doc_len, flops = 2.0 * (double)params * tokens;
  printf("embed   %s  %d docs x %d tokens, batch %d, %s (%lld non-embedding params): %.3f s, %.0f docs/s, "
         "%.0f tokens/s, %.1f TFLOP/s (tokenisation included)\n",
         ops->name, n, a->doc_len, a->batch, a->model_desc, (long long)params, s, n / s, tokens / s,
         flops / s / 1e12);
  free(e);
  for (int i = 0; i < n; i++) free(texts[i]);
  free(texts);
  sn_model_free(m);
  sn_tokenizer_free(tok);
}

int main(int argc, char **argv) {
  bench_args a = parse_args(argc, argv);
  if (a.threads > 0) omp_set_num_threads(a.threads);
  const sn_ops *ops = a.device ? sn_ops_by_name(a.device) : sn_ops_cuda(NULL);
  if (!ops) ops = sn_ops_cpu();
  if (a.embed) bench_embed(ops, &a);
  if (a.search) bench_search(ops, &a);
  return 0;
}
