// sn_eval: retrieval evaluation on BEIR data.
//   sn_eval --query-model DIR --doc-model DIR --data BEIR_DIR [options]   embed, search, score
//   sn_eval --bm25 --data BEIR_DIR [options]                               BM25 (no model)
//   sn_eval --run RUN.trec --qrels QRELS.tsv [--out metrics.json]          score a TREC run file
// Exit status 2 on bad input, with the file (and line) and what was expected.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "beir.h"
#include "cJSON.h"
#include "common.h"
#include "eval.h"
#include "export.h"
#include "model.h"
#include "ops.h"
#include "tokenizer.h"

#define ERR_LEN 1024

static void usage(FILE *f) {
  fprintf(f,
          "usage: sn_eval --query-model DIR --doc-model DIR --data BEIR_DIR [--split test]\n"
          "               [--out metrics.json] [--device cpu|cuda] [--batch N] [--max-query-len 64]\n"
          "               [--max-doc-len 256] [--query-prompt STR] [--doc-prompt STR]\n"
          "               [--pooling last|mean|cls] [--query-pooling P] [--doc-pooling P]\n"
          "               [--save-doc-emb PREFIX] [--load-doc-emb PREFIX]\n"
          "               [--k 100] [--run-out RUN.trec] [--contrastive-loss TAU] [--quiet]\n"
          "       sn_eval --bm25 --data BEIR_DIR [--split test] [--out metrics.json] [--k 100]\n"
          "               [--run-out RUN.trec] [--bm25-k1 0.9] [--bm25-b 0.4] [--no-stem]\n"
          "               [--no-stopwords] [--no-lowercase] [--quiet]\n"
          "       sn_eval --run RUN.trec --qrels QRELS.tsv [--out metrics.json]\n"
          "Prompts: the query prompt replaces {text} (or is a prefix); the document prompt replaces\n"
          "{title} and {text}. Tokenized as training tokenizes.\n"
          "Defaults: each tower's prompt, pooling and maximum length are read from its export (the\n"
          "sentence-transformers files sn_train writes), so a trained pair needs no flags; for other\n"
          "folders: no query prompt, title + \" \" + text for documents, last-token pooling for\n"
          "decoders and CLS for encoders, lengths 64 and 256.\n"
          "  --query-model DIR    the query tower (model folder with its tokenizer)\n"
          "  --doc-model DIR      the document tower (may be the same folder)\n"
          "  --data BEIR_DIR      corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv\n"
          "  --split NAME         the qrels split to evaluate\n"
          "  --out FILE           metrics as JSON (ours and MTEB's key names)\n"
          "  --device DEV         cpu | cuda\n"
          "  --batch N            sequences per forward pass\n"
          "  --max-query-len N    tokens of a query, specials included\n"
          "  --max-doc-len N      tokens of a document, specials included\n"
          "  --query-prompt STR   query template ({text}) or prefix\n"
          "  --doc-prompt STR     document template ({title}, {text})\n"
          "  --pooling P          pooling of both towers: last | mean | cls\n"
          "  --query-pooling P    pooling of the query tower\n"
          "  --doc-pooling P      pooling of the document tower\n"
          "  --save-doc-emb PFX   write the corpus embeddings to PFX.npy and PFX.ids.txt\n"
          "  --load-doc-emb PFX   read them instead of embedding the corpus\n"
          "  --k N                depth of the top-k search (at least 100)\n"
          "  --run-out FILE       write the ranking as a TREC run file\n"
          "  --contrastive-loss TAU  also the held-out InfoNCE at temperature TAU (training's\n"
          "                       stage1.temperature): each judged relevant pair against the whole\n"
          "                       corpus, mean over pairs\n"
          "  --quiet              no progress lines\n"
          "  --bm25               rank with BM25 instead of a model (Lucene's scoring; words are runs\n"
          "                       of letters and digits, lower-cased, Lucene's English stop words\n"
          "                       removed, Porter-stemmed; document = title + \" \" + text)\n"
          "  --bm25-k1 X          BM25 term-frequency saturation, >= 0 (default 0.9)\n"
          "  --bm25-b X           BM25 length normalisation, in [0, 1] (default 0.4)\n"
          "  --no-stem            BM25 without the Porter stemmer\n"
          "  --no-stopwords       BM25 keeping the stop words\n"
          "  --no-lowercase       BM25 keeping the case of words\n"
          "  --run FILE --qrels FILE  score a TREC run file against qrels instead\n"
          "  --help, -h           this text\n"
          "  --version            the scalingnote version\n");
}

typedef struct {
  const char *query_model, *doc_model, *data, *out, *device, *run, *qrels;
  sn_eval_opts eval;
  int bm25;
  sn_bm25_opts bm25_opts;
  const char *model_flag;  // the first flag given that only a model evaluation reads
  const char *bm25_flag;   // the first BM25 option given
} cli_args;

// Flags of the model evaluation (towers, their inputs, saved embeddings): refused with --bm25.
static const char *const MODEL_FLAGS[] = {"--query-model", "--doc-model", "--device", "--batch", "--max-query-len",
                                          "--max-doc-len", "--query-prompt", "--doc-prompt", "--pooling",
                                          "--query-pooling", "--doc-pooling", "--save-doc-emb", "--load-doc-emb",
                                          "--contrastive-loss"};

// BM25's options: refused without --bm25.
static const char *const BM25_FLAGS[] = {"--bm25-k1", "--bm25-b", "--no-stem", "--no-stopwords", "--no-lowercase"};

static void note_flag_kind(cli_args *a, const char *f) {
  for (size_t i = 0; i < SN_ARRAY_LEN(MODEL_FLAGS); i++)
    if (!strcmp(f, MODEL_FLAGS[i]) && !a->model_flag) a->model_flag = MODEL_FLAGS[i];
  for (size_t i = 0; i < SN_ARRAY_LEN(BM25_FLAGS); i++)
    if (!strcmp(f, BM25_FLAGS[i]) && !a->bm25_flag) a->bm25_flag = BM25_FLAGS[i];
}

// Flags without a value: 1 when f is one (and applied).
static int parse_switch(cli_args *a, const char *f) {
  if (!strcmp(f, "--quiet")) a->eval.verbose = 0;
  else if (!strcmp(f, "--bm25")) a->bm25 = 1;
  else if (!strcmp(f, "--no-stem")) a->bm25_opts.stem = 0;
  else if (!strcmp(f, "--no-stopwords")) a->bm25_opts.stopwords = 0;
  else if (!strcmp(f, "--no-lowercase")) a->bm25_opts.lowercase = 0;
  else return 0;
  return 1;
}

#define MIN_TEMPERATURE 1e-4  // stage1.temperature's range
#define MAX_TEMPERATURE 100.0
#define MAX_FLAG_COUNT (1 << 30)  // batch, lengths and k: the tower's limits are checked later

static int parse_positive(const char *flag, const char *v) { return (int)sn_flag_i64(flag, v, 1, MAX_FLAG_COUNT); }

static int parse_pooling(const char *flag, const char *v) {
  sn_pooling p;
  if (sn_pooling_parse(v, &p) != 0) sn_usage_error("%s: unknown pooling '%s' (valid: last|mean|cls)", flag, v);
  return (int)p;
}

static void parse_args(int argc, char **argv, cli_args *a) {
  memset(a, 0, sizeof *a);
  sn_eval_opts_default(&a->eval);
  a->eval.max_query_len = a->eval.max_doc_len = 0;  // 0: from the export, else the default (sn_eval_apply_export)
  a->eval.verbose = 1;
  a->device = "cpu";
  sn_bm25_opts_default(&a->bm25_opts);
  sn_cli_init("sn_eval", usage);
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    sn_cli_std_flag(f);
    note_flag_kind(a, f);
    if (parse_switch(a, f)) continue;
    if (i + 1 >= argc) sn_usage_error("%s: expected a value after it", f);
    const char *v = argv[++i];
    if (!strcmp(f, "--query-model")) a->query_model = v;
    else if (!strcmp(f, "--doc-model")) a->doc_model = v;
    else if (!strcmp(f, "--data")) a->data = v;
    else if (!strcmp(f, "--split")) a->eval.split = v;
    else if (!strcmp(f, "--out")) a->out = v;
    else if (!strcmp(f, "--device")) a->device = v;
    else if (!strcmp(f, "--batch")) a->eval.batch = parse_positive(f, v);
    else if (!strcmp(f, "--max-query-len")) a->eval.max_query_len = parse_positive(f, v);
    else if (!strcmp(f, "--max-doc-len")) a->eval.max_doc_len = parse_positive(f, v);
    else if (!strcmp(f, "--query-prompt")) a->eval.query_prompt = v;
    else if (!strcmp(f, "--doc-prompt")) a->eval.doc_prompt = v;
    else if (!strcmp(f, "--pooling")) a->eval.query_pooling = a->eval.doc_pooling = parse_pooling(f, v);
    else if (!strcmp(f, "--query-pooling")) a->eval.query_pooling = parse_pooling(f, v);
    else if (!strcmp(f, "--doc-pooling")) a->eval.doc_pooling = parse_pooling(f, v);
    else if (!strcmp(f, "--save-doc-emb")) a->eval.save_doc_emb = v;
    else if (!strcmp(f, "--load-doc-emb")) a->eval.load_doc_emb = v;
    else if (!strcmp(f, "--k")) a->eval.k = parse_positive(f, v);
    else if (!strcmp(f, "--run-out")) a->eval.run_out = v;
    else if (!strcmp(f, "--contrastive-loss")) a->eval.contrastive_temperature = (float)sn_flag_f64(f, v, MIN_TEMPERATURE, MAX_TEMPERATURE);
    else if (!strcmp(f, "--run")) a->run = v;
    else if (!strcmp(f, "--qrels")) a->qrels = v;
    else if (!strcmp(f, "--bm25-k1")) a->bm25_opts.k1 = (float)sn_flag_f64(f, v, 0, HUGE_VAL);
    else if (!strcmp(f, "--bm25-b")) a->bm25_opts.b = (float)sn_flag_f64(f, v, 0, 1);
    else sn_usage_error("unknown option '%s'", f);
  }
}

static cJSON *metrics_json(const sn_metrics *m) {
  cJSON *j = cJSON_CreateObject();
  sn_metrics_add_json(j, m);
  return j;
}

// Scores a TREC run file; the JSON has the means and every qrels query's values.
static int score_run_file(const cli_args *a) {
  char err[ERR_LEN];
  sn_qrels qrels;
  sn_run run;
  if (sn_qrels_load(a->qrels, &qrels, err, sizeof err)) sn_bad_input("%s", err);
  if (sn_run_load_trec(a->run, &run, err, sizeof err)) sn_bad_input("%s", err);
  sn_metrics mean;
  int nq;
  sn_query_metrics *pq;
  sn_metrics_compute(&qrels, &run, &mean, &nq, &pq);
  sn_eval_result r = {.num_queries = nq, .mean = mean};
  sn_eval_print_table("run", &r);
  if (a->out) {
    cJSON *j = metrics_json(&mean);
    cJSON_AddNumberToObject(j, "num_queries", nq);
    cJSON *per = cJSON_AddObjectToObject(j, "per_query");
    for (int i = 0; i < qrels.nqueries; i++) {
      cJSON *q = metrics_json(&pq[i].m);
      cJSON_AddNumberToObject(q, "num_rel", pq[i].num_rel);
      cJSON_AddItemToObject(per, pq[i].query_id, q);
    }
    char *text = cJSON_PrintUnformatted(j);
    if (sn_write_file_atomic(a->out, text, strlen(text))) sn_fatal("%s: cannot write", a->out);
    free(text);
    cJSON_Delete(j);
  }
  free(pq);
  sn_run_free(&run);
  sn_qrels_free(&qrels);
  return 0;
}

// sn_eval --bm25: no towers, the same data loading, metrics and reports.
static int evaluate_bm25(cli_args *a) {
  char err[ERR_LEN];
  if (sn_bm25_opts_check(&a->bm25_opts, "--bm25-k1", "--bm25-b", err, sizeof err)) sn_usage_error("%s", err);
  sn_beir data;
  if (sn_beir_load(a->data, a->eval.split, &data, err, sizeof err)) sn_bad_input("%s", err);
  sn_log("data: %d documents, %d queries judged in qrels/%s.tsv", data.corpus.n, data.queries.n, a->eval.split);
  sn_eval_result r;
  if (sn_eval_bm25_run(&a->eval, &a->bm25_opts, &data, &r, err, sizeof err)) sn_bad_input("%s", err);
  sn_eval_print_table(a->eval.split, &r);
  if (a->out && sn_eval_write_json(a->out, a->eval.split, &r, err, sizeof err)) sn_fatal("%s", err);
  sn_beir_free(&data);
  return 0;
}

static sn_tokenizer *load_tokenizer(const char *dir) {
  char err[ERR_LEN];
  sn_tokenizer *tok = sn_tokenizer_load(dir, err, sizeof err);
  if (!tok) sn_bad_input("%s", err);
  return tok;
}

int main(int argc, char **argv) {
  cli_args a;
  parse_args(argc, argv, &a);
  if (a.bm25 && a.model_flag)
    sn_usage_error("--bm25 ranks without a model: %s does not go with it (drop one of them)", a.model_flag);
  if (a.bm25 && (a.run || a.qrels))
    sn_usage_error("--bm25 ranks the corpus of --data: it does not go with --run/--qrels (a run file to score)");
  if (!a.bm25 && a.bm25_flag) sn_usage_error("%s is a BM25 option: it goes with --bm25", a.bm25_flag);
  sn_flag_path_kind("--query-model", a.query_model, 1);
  sn_flag_path_kind("--doc-model", a.doc_model, 1);
  if (a.query_model) sn_export_check_model_folder(a.query_model, "--query-model");
  if (a.doc_model) sn_export_check_model_folder(a.doc_model, "--doc-model");
  sn_flag_path_kind("--data", a.data, 1);
  sn_flag_path_kind("--run", a.run, 0);
  sn_flag_path_kind("--qrels", a.qrels, 0);
  if (a.run || a.qrels) {
    if (!a.run || !a.qrels) sn_usage_error("--run and --qrels go together (a TREC run file and its qrels)");
    return score_run_file(&a);
  }
  if (a.bm25) {
    if (!a.data) sn_usage_error("--bm25 expects --data BEIR_DIR (corpus.jsonl, queries.jsonl, qrels/)");
    return evaluate_bm25(&a);
  }
  if (!a.query_model || !a.doc_model || !a.data)
    sn_usage_error("expected --query-model DIR, --doc-model DIR and --data BEIR_DIR");
  sn_export_settings query_export, doc_export;
  sn_eval_apply_export(a.query_model, SN_EXPORT_ROLE_QUERY, &a.eval.query_prompt, &a.eval.query_pooling,
               &a.eval.max_query_len, &query_export);
  sn_eval_apply_export(a.doc_model, SN_EXPORT_ROLE_DOCUMENT, &a.eval.doc_prompt, &a.eval.doc_pooling, &a.eval.max_doc_len,
               &doc_export);
  char err[ERR_LEN];
  sn_beir data;
  if (sn_beir_load(a.data, a.eval.split, &data, err, sizeof err)) sn_bad_input("%s", err);
  sn_log("data: %d documents, %d queries judged in qrels/%s.tsv", data.corpus.n, data.queries.n, a.eval.split);

  const sn_ops *ops = sn_ops_by_name(a.device);
  sn_model *query_tower = sn_model_load(a.query_model, ops);
  sn_tokenizer *query_tok = load_tokenizer(a.query_model);
  int same = !strcmp(a.query_model, a.doc_model);
  sn_model *doc_tower = same ? query_tower : sn_model_load(a.doc_model, ops);
  sn_tokenizer *doc_tok = same ? query_tok : load_tokenizer(a.doc_model);

  sn_eval_result r;
  if (sn_eval_run(&a.eval, &data, query_tower, query_tok, doc_tower, doc_tok, &r, err, sizeof err))
    sn_bad_input("%s", err);
  sn_eval_print_table(a.eval.split, &r);
  if (a.out && sn_eval_write_json(a.out, a.eval.split, &r, err, sizeof err)) sn_fatal("%s", err);

  if (!same) {
    sn_model_free(doc_tower);
    sn_tokenizer_free(doc_tok);
  }
  sn_model_free(query_tower);
  sn_tokenizer_free(query_tok);
  sn_beir_free(&data);
  sn_export_settings_free(&query_export);
  sn_export_settings_free(&doc_export);
  return 0;
}
