// libFuzzer target for the BEIR loader: the input is split at "\n===\n" into corpus.jsonl,
// queries.jsonl and qrels/test.tsv of a scratch folder, loaded with sn_beir_load. What loads must
// be consistent (every kept query judged and present, at least one with a relevant document), and
// scoring a run over it must give means in [0, 1]; errors must name a file of the folder. Nothing
// may crash or leak.
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "beir.h"
#include "eval.h"

#define ERR_LEN 1024
#define PATH_LEN 512
#define SEPARATOR "\n===\n"
#define FUZZ_RUN_DEPTH 20  // documents each query of the synthetic run retrieves

static char g_dir[PATH_LEN];

static void write_part(const char *name, const uint8_t *data, size_t size) {
  char path[PATH_LEN + 32];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) abort();
  if (size && fwrite(data, 1, size, f) != size) abort();
  fclose(f);
}

// The scratch folder goes when the fuzzer exits (libFuzzer ends with exit()).
static void remove_dir(void) {
  static const char *const names[] = {"corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "qrels", ""};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    char path[PATH_LEN + 32];
    snprintf(path, sizeof path, "%s/%s", g_dir, names[i]);
    remove(path);
  }
}

static void make_dir(void) {
  if (g_dir[0]) return;
  const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";  // RAM when there is one
  snprintf(g_dir, sizeof g_dir, "%s/fuzz_beir_%ld", base, (long)getpid());
  char qrels[PATH_LEN + 8];
  snprintf(qrels, sizeof qrels, "%s/qrels", g_dir);
  mkdir(g_dir, 0700);
  mkdir(qrels, 0700);
  atexit(remove_dir);
}

// Every query retrieves the first FUZZ_RUN_DEPTH documents with tied scores (the trec tie rule
// orders them), and the means must be sane.
static void score(const sn_beir *b) {
  int depth = b->corpus.n < FUZZ_RUN_DEPTH ? b->corpus.n : FUZZ_RUN_DEPTH;
  sn_run run = {b->queries.n, calloc((size_t)b->queries.n, sizeof(sn_run_query))};
  sn_run_doc *docs = calloc((size_t)depth, sizeof *docs);
  if (!run.queries || !docs) abort();
  for (int d = 0; d < depth; d++) docs[d] = (sn_run_doc){b->corpus.ids[d], 1.0};
  for (int q = 0; q < run.nqueries; q++) {
    sn_run_query *rq = &run.queries[q];
    rq->ndocs = depth;
    rq->docs = malloc((size_t)(depth ? depth : 1) * sizeof *docs);
    if (!rq->docs) abort();
    memcpy(rq->docs, docs, (size_t)depth * sizeof *docs);
  }
  // the run's queries sorted by id, as sn_metrics_compute expects: the qrels order
  for (int q = 0; q < run.nqueries; q++) run.queries[q].query_id = b->qrels.queries[q].query_id;
  sn_metrics mean;
  int evaluated = 0;
  sn_metrics_compute(&b->qrels, &run, &mean, &evaluated, NULL);
  if (evaluated < 1 || evaluated > b->qrels.nqueries) abort();
  const double m[4] = {mean.recall_10, mean.recall_100, mean.ndcg_10, mean.mrr_10};
  for (int i = 0; i < 4; i++)
    if (!(m[i] >= 0.0 && m[i] <= 1.0 + 1e-12)) abort();
  for (int q = 0; q < run.nqueries; q++) free(run.queries[q].docs);  // ids are borrowed
  free(run.queries);
  free(docs);
}

static void check_loaded(const sn_beir *b) {
  if (b->queries.n != b->qrels.nqueries || b->corpus.n < 1) abort();
  int with_relevant = 0;
  for (int i = 0; i < b->qrels.nqueries; i++) {
    const sn_qrels_query *q = &b->qrels.queries[i];
    if (sn_id_map_get(&b->queries.index, q->query_id) < 0) abort();  // every judged query has a text
    if (i > 0 && strcmp(b->qrels.queries[i - 1].query_id, q->query_id) >= 0) abort();  // sorted, unique
    with_relevant += q->num_rel > 0;
  }
  if (with_relevant == 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  make_dir();
  static const char *const names[3] = {"corpus.jsonl", "queries.jsonl", "qrels/test.tsv"};
  const uint8_t *p = data, *end = data + size;
  for (int i = 0; i < 3; i++) {
    const uint8_t *cut = i < 2 ? memmem(p, (size_t)(end - p), SEPARATOR, strlen(SEPARATOR)) : NULL;
    const uint8_t *stop = cut ? cut : end;
    write_part(names[i], p, (size_t)(stop - p));
    p = cut ? cut + strlen(SEPARATOR) : end;
  }
  sn_beir b;
  char err[ERR_LEN];
  if (sn_beir_load(g_dir, "test", &b, err, sizeof err) == 0) {
    check_loaded(&b);
    score(&b);
    sn_beir_free(&b);
  } else if (strncmp(err, g_dir, strlen(g_dir)) != 0) {
    abort();  // errors name the file
  }
  return 0;
}
