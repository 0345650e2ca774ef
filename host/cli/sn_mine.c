// sn_mine: hard negatives for FlagEmbedding training data, mined from a corpus with BM25 or with a
// pair of dense towers (mine.h has the rules: the rank band, the positive exclusion, the margin,
// the seeded draw).
//   sn_mine (--bm25 | --query-model DIR --doc-model DIR) --data train.jsonl --corpus corpus.jsonl
//           --out mined.jsonl [--range 10:100] [--negatives N] [--margin X | --relative-margin X]
//           [--seed S] [--device cpu|cuda] [--threads N] [--batch N]
// Output: the input lines in order, each with "neg" (the mined documents: a string, or
// {"title", "text"} for a titled record), "neg_ids" (their corpus ids), "neg_scores" and
// "pos_scores" (the scorer's scores of the negatives and of the line's positives, so that
// stage1.kd_weight can distil them); every other field of the line is kept.
// Under mpirun (dense mode) each rank embeds a slice of the corpus and searches it; the ranks'
// lists are merged in trec order on rank 0, which writes the file: the same file as one process.
#define _GNU_SOURCE
#include <cJSON.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "beir.h"
#include "bm25.h"
#include "comm.h"
#include "common.h"
#include "data.h"
#include "eval.h"
#include "export.h"
#include "mine.h"
#include "model.h"
#include "ops.h"
#include "tokenizer.h"
#include "train.h"

#define ERR_LEN 1024
#define DEFAULT_BATCH 32
#define DEFAULT_SEED 0
#define MAX_FLAG_COUNT (1 << 30)

typedef struct {
  const char *query_model, *doc_model, *data, *corpus, *out, *device;
  int bm25, batch, threads;
  const char *margin_flag;  // "--margin" or "--relative-margin", NULL when none
  sn_mine_opts mine;
} mine_args;

static void usage(FILE *f) {
  fprintf(f,
          "usage: sn_mine (--bm25 | --query-model DIR --doc-model DIR) --data train.jsonl\n"
          "               --corpus corpus.jsonl --out mined.jsonl [options]\n"
          "Mines hard negatives: for each training line, N documents drawn (seeded) from ranks\n"
          "[A, B) of its query's ranking of the corpus, the ranking without the line's positives\n"
          "(records equal to a positive's text, or named in its \"pos_ids\"). Writes the lines with\n"
          "\"neg\", \"neg_ids\", \"neg_scores\" and \"pos_scores\" replaced; other fields are kept.\n"
          "  --bm25               rank with BM25 (k1 0.9, b 0.4)\n"
          "  --query-model DIR    rank with dense towers: the query tower (its export's prompt,\n"
          "  --doc-model DIR        pooling and length are used), and the document tower\n"
          "  --data FILE          FlagEmbedding JSONL: {\"query\", \"pos\": [...], ...} per line\n"
          "  --corpus FILE        BEIR corpus.jsonl: {\"_id\", \"title\"?, \"text\"} per line\n"
          "  --out FILE           the mined JSONL\n"
          "  --range A:B          ranks to draw from, 0-based, B excluded (default %d:%d)\n"
          "  --negatives N        negatives per line, at most B - A (default %d)\n"
          "  --margin X           keep candidates scoring <= pos_score - X (pos_score: the best\n"
          "                       positive's score for that query)\n"
          "  --relative-margin X  keep candidates scoring <= pos_score * (1 - X), X in [0, 1)\n"
          "  --seed S             seed of the draw (default %d)\n"
          "  --device DEV         cpu | cuda: where the dense towers run (default cpu)\n"
          "  --threads N          CPU threads (default: OpenMP's)\n"
          "  --batch N            sequences per forward pass (default %d)\n"
          "  --help, -h           this text\n"
          "  --version            the scalingnote version\n",
          SN_MINE_DEFAULT_RANGE_LO, SN_MINE_DEFAULT_RANGE_HI, SN_MINE_DEFAULT_NEGATIVES, DEFAULT_SEED,
          DEFAULT_BATCH);
}

static void parse_range(const char *v, sn_mine_opts *o) {
  const char *colon = strchr(v, ':');
  if (!colon) sn_usage_error("--range '%s': expected A:B (e.g. 10:100)", v);
  char lo[32];
  size_t n = (size_t)(colon - v);
  if (n >= sizeof lo) sn_usage_error("--range '%s': expected A:B (e.g. 10:100)", v);
  memcpy(lo, v, n);
  lo[n] = '\0';
  int64_t a, b;
  if (sn_parse_i64(lo, 0, MAX_FLAG_COUNT, &a) || sn_parse_i64(colon + 1, 1, MAX_FLAG_COUNT, &b) || b <= a)
    sn_usage_error("--range '%s': expected A:B with 0 <= A < B", v);
  o->range_lo = (int)a;
  o->range_hi = (int)b;
}

static mine_args parse_args(int argc, char **argv) {
  mine_args a = {.device = "cpu", .batch = DEFAULT_BATCH};
  sn_mine_opts_default(&a.mine);
  a.mine.seed = DEFAULT_SEED;
  sn_cli_init("sn_mine", usage);
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    sn_cli_std_flag(f);
    if (!strcmp(f, "--bm25")) {
      a.bm25 = 1;
      continue;
    }
    if (i + 1 >= argc) sn_usage_error("%s: expected a value after it", f);
    const char *v = argv[++i];
    if (!strcmp(f, "--query-model")) a.query_model = v;
    else if (!strcmp(f, "--doc-model")) a.doc_model = v;
    else if (!strcmp(f, "--data")) a.data = v;
    else if (!strcmp(f, "--corpus")) a.corpus = v;
    else if (!strcmp(f, "--out")) a.out = v;
    else if (!strcmp(f, "--device")) a.device = v;
    else if (!strcmp(f, "--range")) parse_range(v, &a.mine);
    else if (!strcmp(f, "--negatives")) a.mine.negatives = (int)sn_flag_i64(f, v, 1, MAX_FLAG_COUNT);
    else if (!strcmp(f, "--seed")) a.mine.seed = (uint64_t)sn_flag_i64(f, v, 0, INT64_MAX);
    else if (!strcmp(f, "--threads")) a.threads = (int)sn_flag_i64(f, v, 1, MAX_FLAG_COUNT);
    else if (!strcmp(f, "--batch")) a.batch = (int)sn_flag_i64(f, v, 1, MAX_FLAG_COUNT);
    else if (!strcmp(f, "--margin") || !strcmp(f, "--relative-margin")) {
      if (a.margin_flag) sn_usage_error("%s and %s: give one margin, not both", a.margin_flag, f);
      a.margin_flag = f;
      a.mine.margin_kind = !strcmp(f, "--margin") ? SN_MINE_MARGIN_ABSOLUTE : SN_MINE_MARGIN_RELATIVE;
      a.mine.margin = sn_flag_f64(f, v, a.mine.margin_kind == SN_MINE_MARGIN_ABSOLUTE ? -HUGE_VAL : 0.0,
                                  a.mine.margin_kind == SN_MINE_MARGIN_ABSOLUTE ? HUGE_VAL : 0.999999);
    } else sn_usage_error("unknown option '%s'", f);
  }
  if (a.bm25 && (a.query_model || a.doc_model))
    sn_usage_error("--bm25 and --query-model/--doc-model: choose one scorer, not both");
  if (!a.bm25 && (!a.query_model || !a.doc_model))
    sn_usage_error("expected --bm25, or --query-model DIR and --doc-model DIR");
  if (!a.data) sn_usage_error("%s is required", "--data");
  if (!a.corpus) sn_usage_error("%s is required", "--corpus");
  if (!a.out) sn_usage_error("%s is required", "--out");
  if (strcmp(a.device, "cpu") && strcmp(a.device, "cuda"))
    sn_usage_error("--device '%s': expected cpu or cuda", a.device);
  return a;
}

// ---- the input lines ---------------------------------------------------------------------------

// Every example's line (parsed again: the data layer keeps only what training needs) and the
// corpus ids it names in "pos_ids".
typedef struct {
  cJSON **lines;       // (n_examples)
  int64_t *id_begin;   // (n_examples + 1)
  const char **ids;
} raw_lines;

static raw_lines read_lines(const char *path, const sn_train_examples *ex) {
  raw_lines r = {.lines = callocCheck((size_t)ex->n_examples + 1, sizeof(cJSON *)),
                 .id_begin = mallocCheck((size_t)(ex->n_examples + 1) * sizeof(int64_t))};
  FILE *f = fopenCheck(path, "r");
  char *buf = NULL;
  size_t cap = 0, n_ids = 0, cap_ids = 0;
  int64_t line = 0, i = 0;
  while (i < ex->n_examples && getline(&buf, &cap, f) != -1) {
    if (++line != ex->examples[i].line) continue;  // blank lines have no example
    cJSON *obj = cJSON_Parse(buf);
    if (!obj) sn_fatal("%s:%lld: cannot parse a line the data layer accepted", path, (long long)line);
    r.lines[i] = obj;
    r.id_begin[i] = (int64_t)n_ids;
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(obj, "pos_ids"), *v;
    if (ids && !cJSON_IsArray(ids)) sn_bad_input("%s:%lld: \"pos_ids\": expected an array of corpus ids", path, (long long)line);
    cJSON_ArrayForEach(v, ids) {
      if (!cJSON_IsString(v)) sn_bad_input("%s:%lld: \"pos_ids\": expected strings (corpus _id values)", path, (long long)line);
      if (n_ids == cap_ids) {
        cap_ids = cap_ids ? 2 * cap_ids : 256;
        r.ids = reallocCheck(r.ids, cap_ids * sizeof *r.ids);
      }
      r.ids[n_ids++] = v->valuestring;
    }
    i++;
  }
  r.id_begin[i] = (int64_t)n_ids;
  free(buf);
  fclose(f);
  if (i != ex->n_examples) sn_fatal("%s: changed while it was read", path);
  return r;
}

// ---- scorers: (Q, k) ranked lists and each positive's score ------------------------------------

// BM25 on rank 0. A positive's score is its best-scoring corpus record's: found in the list, else by
// a full-depth search of that query, else 0 (it matches no query term).
static void bm25_rank(const mine_args *a, const sn_train_examples *ex, const sn_beir_records *corpus,
                      const sn_mine_positives *p, int k, int32_t *idx, float *scores, float *pos_scores) {
  char err[ERR_LEN];
  sn_bm25_opts bo;
  sn_bm25_opts_default(&bo);
  sn_bm25_index *ix = sn_bm25_build((const char *const *)corpus->titles, (const char *const *)corpus->texts,
                                    corpus->n, &bo, a->threads, err, sizeof err);
  if (!ix) sn_bad_input("%s: %s", a->corpus, err);
  const int Q = (int)ex->n_examples;
  const char **queries = mallocCheck((size_t)Q * sizeof *queries);
  for (int i = 0; i < Q; i++) queries[i] = ex->examples[i].query;
  const char *const *ids = (const char *const *)corpus->ids;
  sn_bm25_search(ix, queries, Q, k, ids, a->threads, idx, scores);
  int32_t *full_idx = mallocCheck((size_t)corpus->n * sizeof *full_idx);
  float *full_scores = mallocCheck((size_t)corpus->n * sizeof *full_scores);
  for (int i = 0; i < Q; i++) {
    for (int64_t pp = p->pos_begin[i]; pp < p->pos_begin[i + 1]; pp++) {
      if (p->match_begin[pp] == p->match_begin[pp + 1])
        sn_bad_input("%s: positive %lld is not a record of %s (--bm25 scores positives through the corpus; "
                     "dense towers score any text)", sn_train_example_where(ex, i),
                     (long long)(pp - p->pos_begin[i]), a->corpus);
      pos_scores[pp] = NAN;
    }
    const int32_t *li = idx + (size_t)i * k;
    const float *ls = scores + (size_t)i * k;
    int depth = k, searched_full = 0;
    for (int64_t pp = p->pos_begin[i]; pp < p->pos_begin[i + 1]; pp++) {
      for (int64_t m = p->match_begin[pp]; m < p->match_begin[pp + 1]; m++) {
        int found = 0;
        for (int j = 0; j < depth && li[j] >= 0 && !found; j++)
          if (li[j] == p->match[m]) {
            found = 1;
            if (isnan(pos_scores[pp]) || ls[j] > pos_scores[pp]) pos_scores[pp] = ls[j];
          }
        if (!found && depth < corpus->n && !searched_full) {  // deeper than k: rank the whole corpus
          sn_bm25_search(ix, &queries[i], 1, (int)corpus->n, ids, a->threads, full_idx, full_scores);
          li = full_idx, ls = full_scores, depth = (int)corpus->n, searched_full = 1;
          pp = p->pos_begin[i] - 1;  // rescan every positive in the full list
          break;
        }
      }
    }
    for (int64_t pp = p->pos_begin[i]; pp < p->pos_begin[i + 1]; pp++)
      if (isnan(pos_scores[pp])) pos_scores[pp] = 0.0f;
  }
  free(full_idx);
  free(full_scores);
  free(queries);
  sn_bm25_free(ix);
}

static sn_mine_tower load_tower(const char *dir, const char *role, const sn_ops *ops, sn_export_settings *exp,
                                sn_tokenizer **tok_out) {
  sn_mine_tower t = {.pooling = -1};
  sn_eval_apply_export(dir, role, &t.prompt, &t.pooling, &t.max_len, exp);
  char err[ERR_LEN];
  *tok_out = sn_tokenizer_load(dir, err, sizeof err);
  if (!*tok_out) sn_bad_input("%s", err);
  t.tok = *tok_out;
  t.model = sn_model_load(dir, ops);
  return t;
}

static void dense_rank(const mine_args *a, sn_comm *comm, const sn_train_examples *ex,
                       const sn_beir_records *corpus, int k, int32_t *idx, float *scores, float *pos_scores) {
  const sn_ops *ops = sn_ops_by_name(a->device);
  sn_export_settings qexp, dexp;
  sn_tokenizer *qtok, *dtok;
  sn_mine_tower qt = load_tower(a->query_model, SN_EXPORT_ROLE_QUERY, ops, &qexp, &qtok);
  sn_mine_tower dt = load_tower(a->doc_model, SN_EXPORT_ROLE_DOCUMENT, ops, &dexp, &dtok);
  if (sn_eval_embedding_dim(qt.model) != sn_eval_embedding_dim(dt.model))
    sn_bad_input("--query-model embeds %d wide, --doc-model %d: expected the same width",
                 sn_eval_embedding_dim(qt.model), sn_eval_embedding_dim(dt.model));
  char err[ERR_LEN];
  const int verbose = comm->rank == 0;
  float *q_emb = sn_mine_embed_queries(&qt, ex, a->batch, verbose, err, sizeof err);
  if (!q_emb) sn_bad_input("--query-model %s: %s", a->query_model, err);
  // rank r's slice of the corpus: [r * n / R, (r + 1) * n / R)
  const int64_t n = corpus->n, R = comm->world_size;
  const int64_t lo = comm->rank * n / R, hi = (comm->rank + 1) * n / R;
  if (sn_mine_dense_shard(&dt, corpus, lo, hi, q_emb, (int)ex->n_examples, k, a->batch, verbose, idx, scores,
                          err, sizeof err))
    sn_bad_input("--doc-model %s: %s", a->doc_model, err);
  if (R > 1) sn_mine_gather_merge(comm, (const char *const *)corpus->ids, (int)ex->n_examples, k, idx, scores);
  if (comm->rank == 0 &&
      sn_mine_dense_positive_scores(&dt, ex, q_emb, a->batch, verbose, pos_scores, err, sizeof err))
    sn_bad_input("--doc-model %s: %s", a->doc_model, err);
  free(q_emb);
  sn_model_free(qt.model);
  sn_model_free(dt.model);
  sn_tokenizer_free(qtok);
  sn_tokenizer_free(dtok);
  sn_export_settings_free(&qexp);
  sn_export_settings_free(&dexp);
}

// ---- output ------------------------------------------------------------------------------------

static void write_output(const mine_args *a, const sn_train_examples *ex, raw_lines *raw,
                         const sn_beir_records *corpus, const sn_mine_positives *p, int k, const int32_t *idx,
                         const float *scores, const float *pos_scores) {
  sn_strbuf out = {0};
  int64_t n_short = sn_mine_write_lines(&a->mine, ex, corpus, p, k, idx, scores, pos_scores, raw->lines, &out);
  if (sn_write_file_atomic(a->out, out.s, out.len)) sn_fatal("%s: cannot write", a->out);
  sn_log("wrote %s: %lld lines", a->out, (long long)ex->n_examples);
  if (n_short)
    sn_warn("%lld line(s) got fewer than %d negatives: ranks %d:%d had too few candidates%s", (long long)n_short,
            a->mine.negatives, a->mine.range_lo, a->mine.range_hi, a->margin_flag ? " under the margin" : "");
  free(out.s);
}

int main(int argc, char **argv) {
  mine_args a = parse_args(argc, argv);
  sn_flag_path_kind("--data", a.data, 0);
  sn_flag_path_kind("--corpus", a.corpus, 0);
  sn_flag_path_kind("--query-model", a.query_model, 1);
  sn_flag_path_kind("--doc-model", a.doc_model, 1);
  if (a.query_model) sn_export_check_model_folder(a.query_model, "--query-model");
  if (a.doc_model) sn_export_check_model_folder(a.doc_model, "--doc-model");
  if (a.threads) omp_set_num_threads(a.threads);
  sn_comm *comm = sn_comm_create(a.bm25 ? "cpu" : a.device, 0);

  char err[ERR_LEN];
  sn_beir_records corpus;
  if (sn_beir_corpus_load(a.corpus, &corpus, err, sizeof err)) sn_bad_input("--corpus: %s", err);
  if (sn_mine_check_opts(&a.mine, corpus.n, "--range", "--negatives", a.margin_flag ? a.margin_flag : "--margin",
                         err, sizeof err))
    sn_bad_input("%s", err);
  sn_train_examples ex;
  const char *paths[] = {a.data};
  sn_train_examples_load(&ex, paths, 1, 0, 0);
  if (ex.n_examples > INT32_MAX) sn_bad_input("%s: more than %d lines", a.data, INT32_MAX);
  raw_lines raw = read_lines(a.data, &ex);
  sn_mine_positives pos;
  if (sn_mine_match_positives(&ex, &corpus, raw.id_begin, raw.ids, &pos, err, sizeof err)) sn_bad_input("%s", err);

  const int k = sn_mine_search_depth(&a.mine, &pos, corpus.n);
  const size_t n_list = sn_mul_size((size_t)ex.n_examples, (size_t)k, sn_host_memory_bytes() / sizeof(float),
                                    "training lines x search depth");
  int32_t *idx = mallocCheck(n_list * sizeof *idx);
  float *scores = mallocCheck(n_list * sizeof *scores);
  float *pos_scores = mallocCheck((size_t)(pos.n_positives + 1) * sizeof *pos_scores);
  if (a.bm25) {
    if (comm->rank == 0) bm25_rank(&a, &ex, &corpus, &pos, k, idx, scores, pos_scores);
  } else {
    dense_rank(&a, comm, &ex, &corpus, k, idx, scores, pos_scores);
  }
  if (comm->rank == 0) write_output(&a, &ex, &raw, &corpus, &pos, k, idx, scores, pos_scores);

  for (int64_t i = 0; i < ex.n_examples; i++) cJSON_Delete(raw.lines[i]);
  free(raw.lines);
  free(raw.id_begin);
  free(raw.ids);
  free(idx);
  free(scores);
  free(pos_scores);
  sn_mine_positives_free(&pos);
  sn_train_examples_free(&ex);
  sn_beir_records_free(&corpus);
  sn_comm_destroy(comm);
  return 0;
}
