// The evaluation pipeline shared by sn_eval and sn_train: corpus and query embeddings (or saved
// corpus embeddings), exact top-k, trec metrics, and the small report formats.
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "common.h"
#include "eval.h"
#include "npy.h"

#define EVAL_DEFAULT_BATCH 32
#define EVAL_DEFAULT_MAX_QUERY_LEN 64
#define EVAL_DEFAULT_MAX_DOC_LEN 256
#define SN_PATH_MAX 4096
#define RUN_TAG "scalingnote"
// Logits held at once by the contrastive loss: rows are taken in chunks of this many / N.
#define CONTRASTIVE_CHUNK_LOGITS ((size_t)1 << 24)


void sn_eval_opts_default(sn_eval_opts *o) {
  memset(o, 0, sizeof *o);
  o->split = "test";
  o->batch = EVAL_DEFAULT_BATCH;
  o->max_query_len = EVAL_DEFAULT_MAX_QUERY_LEN;
  o->max_doc_len = EVAL_DEFAULT_MAX_DOC_LEN;
  o->query_pooling = o->doc_pooling = -1;
  o->k = SN_EVAL_MAX_METRIC_K;
  o->batch_name = "--batch";
  o->max_query_len_name = "--max-query-len";
  o->max_doc_len_name = "--max-doc-len";
}

// ---- sizes -------------------------------------------------------------------------------------

// One tower's encode batch: batch sequences of up to len tokens.
static int check_tower_sizes(const sn_eval_opts *o, const sn_model *m, const char *side, int len,
                             const char *len_name, char *err, size_t errlen) {
  char tower[32];
  snprintf(tower, sizeof tower, "the %s tower", side);
  if (sn_config_check_seq_len(&m->cfg, tower, len, len_name, err, errlen) != 0) return -1;
  size_t tokens;
  if (sn_mul_size_ok((size_t)o->batch, (size_t)len, (size_t)INT_MAX, &tokens) != 0)
    return sn_errorf(err, errlen, "%s x %s (%d x %d) is more than %d tokens in one encode batch: lower one of them",
                     o->batch_name, len_name, o->batch, len, INT_MAX);
  const int C = sn_eval_embedding_dim(m);
  size_t need = sn_model_plan_acts_bytes(m, (int)tokens, o->batch, 0, SN_RECOMPUTE_NONE) +
                sn_tokens_bytes((int)tokens, o->batch) + tokens * sizeof(int32_t) +
                2 * (size_t)o->batch * C * sizeof(float);  // + host ids, pooled rows on both sides
  size_t free_bytes = 0, total_bytes = 0;
  m->ops->device_memory(&free_bytes, &total_bytes);
  if (free_bytes > 0 && need > free_bytes)  // 0: the backend cannot tell
    return sn_errorf(err, errlen, "%s %d x %s %d needs %.2f GiB for the %s tower's encode batch, but %s has "
                     "%.2f GiB free: lower %s or %s", o->batch_name, o->batch, len_name, len, need / SN_GIB,
                     side, m->ops->name, free_bytes / SN_GIB, o->batch_name, len_name);
  return 0;
}

// Q x k ranked entries (index, score, run entry and its copied id) live in host memory at once.
int sn_eval_check_topk_sizes(const sn_eval_opts *o, int Q, int k, char *err, size_t errlen) {
  const size_t per_entry = sizeof(int32_t) + sizeof(float) + sizeof(sn_run_doc) + sizeof(void *);
  const size_t host_bytes = sn_host_memory_bytes();
  size_t entries, bytes;
  if (sn_mul_size_ok((size_t)Q, (size_t)k, SIZE_MAX, &entries) != 0 ||
      sn_mul_size_ok(entries, per_entry, host_bytes ? host_bytes : SIZE_MAX, &bytes) != 0)
    return sn_errorf(err, errlen, "--k %d: %d queries x %d ranked documents each need more than this host's "
                     "%.1f GiB of memory: lower --k", o->k, Q, k, host_bytes / SN_GIB);
  return 0;
}

int sn_eval_check_sizes(const sn_eval_opts *o, const sn_model *query_tower, const sn_model *doc_tower,
                        char *err, size_t errlen) {
  if (o->batch <= 0 || o->max_query_len <= 1 || o->max_doc_len <= 1)
    return sn_errorf(err, errlen, "expected %s > 0, %s > 1 and %s > 1 (got %d, %d, %d)", o->batch_name,
                     o->max_query_len_name, o->max_doc_len_name, o->batch, o->max_query_len, o->max_doc_len);
  if (check_tower_sizes(o, query_tower, "query", o->max_query_len, o->max_query_len_name, err, errlen) != 0)
    return -1;
  if (doc_tower && check_tower_sizes(o, doc_tower, "document", o->max_doc_len, o->max_doc_len_name, err, errlen) != 0)
    return -1;
  return 0;
}

// ---- saved corpus embeddings: PREFIX.npy (N, C) float32 + PREFIX.ids.txt -----------------------

static int save_doc_embeddings(const char *prefix, const sn_beir_records *corpus, const float *emb, int C,
                               char *err, size_t errlen) {
  char path[SN_PATH_MAX];
  snprintf(path, sizeof path, "%s.npy", prefix);
  const int64_t shape[2] = {corpus->n, C};
  if (sn_npy_write(path, SN_NPY_F32, 2, shape, emb, err, errlen)) return -1;
  snprintf(path, sizeof path, "%s.ids.txt", prefix);
  FILE *f = fopen(path, "w");
  if (!f) return sn_errorf(err, errlen, "%s: cannot open for writing: %s", path, strerror(errno));
  for (int i = 0; i < corpus->n; i++) fprintf(f, "%s\n", corpus->ids[i]);
  if (ferror(f) | (fclose(f) != 0)) return sn_errorf(err, errlen, "%s: write failed: %s", path, strerror(errno));
  return 0;
}

// Loads PREFIX.npy and checks PREFIX.ids.txt names the corpus's documents in the same order.
static float *load_doc_embeddings(const char *prefix, const sn_beir_records *corpus, int C, char *err,
                                  size_t errlen) {
  char path[SN_PATH_MAX];
  snprintf(path, sizeof path, "%s.ids.txt", prefix);
  FILE *f = fopen(path, "r");
  if (!f) {
    sn_errorf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int n = 0, ok = 1;
  while (ok && (len = getline(&line, &cap, f)) >= 0) {
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    if (n >= corpus->n || strcmp(line, corpus->ids[n]) != 0) {
      ok = 0;
      sn_errorf(err, errlen, "%s:%d: expected corpus id '%s' (ids must match corpus.jsonl in order), got '%s'",
           path, n + 1, n < corpus->n ? corpus->ids[n] : "(end of corpus)", line);
    }
    n++;
  }
  free(line);
  fclose(f);
  if (!ok) return NULL;
  if (n != corpus->n) {
    sn_errorf(err, errlen, "%s: %d ids, expected the corpus's %d", path, n, corpus->n);
    return NULL;
  }
  snprintf(path, sizeof path, "%s.npy", prefix);
  sn_npy_array a;
  if (sn_npy_read(path, &a, err, errlen)) return NULL;
  if (a.dtype != SN_NPY_F32 || a.ndim != 2 || a.shape[0] != corpus->n || a.shape[1] != C) {
    sn_errorf(err, errlen, "%s: expected a float32 array of shape (%d, %d) (corpus size, tower width), got %s of %d dim(s) (%lld, %lld)",
         path, corpus->n, C, a.dtype == SN_NPY_F32 ? "float32" : "int32", a.ndim,
         (long long)(a.ndim > 0 ? a.shape[0] : 0), (long long)(a.ndim > 1 ? a.shape[1] : 0));
    sn_npy_free(&a);
    return NULL;
  }
  float *emb = a.data;  // ownership moves to the caller (malloc'd by sn_npy_read)
  return emb;
}

// ---- pipeline ----------------------------------------------------------------------------------

static int cmp_run_query_id(const void *a, const void *b) {
  return strcmp(((const sn_run_query *)a)->query_id, ((const sn_run_query *)b)->query_id);
}

// The search result as a run (owning copies of the ids), sorted by query id for the metrics.
// Entries with index -1 (BM25's short lists) are not part of it, nor a query left without any.
static void build_run(sn_run *run, const sn_beir *data, const int32_t *idx, const float *scores, int k) {
  run->nqueries = 0;
  run->queries = callocCheck((size_t)SN_MAX(data->queries.n, 1), sizeof *run->queries);
  for (int q = 0; q < data->queries.n; q++) {
    const int32_t *qidx = idx + (size_t)q * k;
    const float *qscores = scores + (size_t)q * k;
    int ndocs = 0;
    while (ndocs < k && qidx[ndocs] >= 0) ndocs++;
    if (ndocs == 0) continue;
    sn_run_query *rq = &run->queries[run->nqueries++];
    rq->query_id = strdupCheck(data->queries.ids[q]);
    rq->ndocs = ndocs;
    rq->docs = mallocCheck((size_t)ndocs * sizeof *rq->docs);
    for (int r = 0; r < ndocs; r++) rq->docs[r] = (sn_run_doc){strdupCheck(data->corpus.ids[qidx[r]]), qscores[r]};
  }
  qsort(run->queries, (size_t)run->nqueries, sizeof *run->queries, cmp_run_query_id);
}

int sn_eval_score_topk(const sn_eval_opts *o, const sn_beir *data, const int32_t *idx, const float *scores, int k,
                       sn_eval_result *out, char *err, size_t errlen) {
  sn_run run;
  build_run(&run, data, idx, scores, k);
  int rc = 0;
  if (o->run_out) rc = sn_run_write_trec(o->run_out, &run, RUN_TAG, err, errlen);
  sn_metrics_compute(&data->qrels, &run, &out->mean, &out->num_queries, NULL);
  out->num_docs = data->corpus.n;
  sn_run_free(&run);
  return rc;
}

// The held-out contrastive loss (sn_eval_result's comment), with the training loss's op on the
// host: the CPU backend's contrastive_loss (rows = the pairs' queries, cols = the whole corpus,
// no gradients), in chunks of rows so that the logits stay within CONTRASTIVE_CHUNK_LOGITS.
static void heldout_contrastive_loss(const sn_beir *data, const float *queries, const float *docs, int C,
                                     float temperature, sn_eval_result *out) {
  const int N = data->corpus.n, Q = data->queries.n;
  int npairs = 0, cap = SN_MAX(Q, 1);
  float *rows = mallocCheck((size_t)cap * C * sizeof *rows);  // (pairs, C)
  int32_t *target = mallocCheck((size_t)cap * sizeof *target);
  for (int q = 0; q < Q; q++) {
    const sn_qrels_query *judged = sn_qrels_find(&data->qrels, data->queries.ids[q]);
    for (int j = 0; judged && j < judged->ndocs; j++) {
      int32_t d = sn_id_map_get(&data->corpus.index, judged->doc_ids[j]);
      if (judged->rels[j] <= 0 || d < 0) continue;
      if (npairs == cap) {
        cap *= 2;
        rows = reallocCheck(rows, (size_t)cap * C * sizeof *rows);
        target = reallocCheck(target, (size_t)cap * sizeof *target);
      }
      memcpy(rows + (size_t)npairs * C, queries + (size_t)q * C, (size_t)C * sizeof *rows);
      target[npairs++] = d;
    }
  }
  const sn_ops *host = sn_ops_cpu();  // its buffers are host memory: it reads ours directly
  int chunk = (int)SN_MAX((size_t)1, CONTRASTIVE_CHUNK_LOGITS / (size_t)N);
  for (int r0 = 0; r0 < npairs; r0 += chunk) {
    float part = 0.0f;  // the op accumulates into one float: chunks are summed in double
    int R = SN_MIN(chunk, npairs - r0);
    host->contrastive_loss(&part, NULL, NULL, rows + (size_t)r0 * C, docs, target + r0, R, N, C,
                           1.0f / temperature, 1.0f);
    out->contrastive_loss += part;
  }
  if (npairs) out->contrastive_loss /= npairs;
  out->contrastive_pairs = npairs;
  out->contrastive_temperature = temperature;
  free(rows);
  free(target);
}

int sn_eval_run(const sn_eval_opts *o, const sn_beir *data, sn_model *query_tower,
                const sn_tokenizer *query_tok, sn_model *doc_tower, const sn_tokenizer *doc_tok,
                sn_eval_result *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  double t0 = sn_now_s();
  const int C = sn_eval_embedding_dim(query_tower);
  if (sn_eval_embedding_dim(doc_tower) != C)
    return sn_errorf(err, errlen, "the query tower embeds into %d dimensions but the document tower into %d; "
                "expected equal widths", C, sn_eval_embedding_dim(doc_tower));
  if (sn_eval_check_sizes(o, query_tower, o->load_doc_emb ? NULL : doc_tower, err, errlen) != 0) return -1;
  const int N = data->corpus.n, Q = data->queries.n;
  const int k = SN_MIN(SN_MAX(o->k, SN_EVAL_MAX_METRIC_K), N);
  if (sn_eval_check_topk_sizes(o, Q, k, err, errlen) != 0) return -1;

  float *docs;
  if (o->load_doc_emb) {
    docs = load_doc_embeddings(o->load_doc_emb, &data->corpus, C, err, errlen);
    if (!docs) return -1;
  } else {
    docs = sn_embed_items(doc_tower, doc_tok, (const char *const *)data->corpus.titles,
                          (const char *const *)data->corpus.texts, N, o->doc_prompt, o->max_doc_len,
                          o->batch, o->doc_pooling, o->verbose, "corpus", err, errlen);
    if (!docs) return -1;
  }
  out->seconds_embed_docs = sn_now_s() - t0;
  if (o->save_doc_emb && save_doc_embeddings(o->save_doc_emb, &data->corpus, docs, C, err, errlen)) {
    free(docs);
    return -1;
  }

  double t1 = sn_now_s();
  float *queries = sn_embed_items(query_tower, query_tok, NULL, (const char *const *)data->queries.texts, Q,
                                  o->query_prompt, o->max_query_len, o->batch, o->query_pooling,
                                  o->verbose, "queries", err, errlen);
  if (!queries) {
    free(docs);
    return -1;
  }
  out->seconds_embed_queries = sn_now_s() - t1;

  double t2 = sn_now_s();
  int32_t *idx = mallocCheck((size_t)Q * k * sizeof *idx);
  float *scores = mallocCheck((size_t)Q * k * sizeof *scores);
  sn_topk_exact(doc_tower->ops, docs, N, queries, Q, C, k, (const char *const *)data->corpus.ids, idx, scores);
  out->seconds_search = sn_now_s() - t2;
  if (o->contrastive_temperature > 0)
    heldout_contrastive_loss(data, queries, docs, C, o->contrastive_temperature, out);

  const int rc = sn_eval_score_topk(o, data, idx, scores, k, out, err, errlen);
  out->seconds = sn_now_s() - t0;

  free(idx);
  free(scores);
  free(queries);
  free(docs);
  return rc;
}

// ---- reports -----------------------------------------------------------------------------------

void sn_metrics_add_json(cJSON *j, const sn_metrics *m) {
  cJSON_AddNumberToObject(j, "recall@10", m->recall_10);
  cJSON_AddNumberToObject(j, "recall@100", m->recall_100);
  cJSON_AddNumberToObject(j, "ndcg@10", m->ndcg_10);
  cJSON_AddNumberToObject(j, "mrr@10", m->mrr_10);
  cJSON_AddNumberToObject(j, "recall_at_10", m->recall_10);
  cJSON_AddNumberToObject(j, "recall_at_100", m->recall_100);
  cJSON_AddNumberToObject(j, "ndcg_at_10", m->ndcg_10);
  cJSON_AddNumberToObject(j, "mrr_at_10", m->mrr_10);
  cJSON_AddNumberToObject(j, "main_score", m->ndcg_10);
}

int sn_eval_write_json(const char *path, const char *split, const sn_eval_result *r, char *err, size_t errlen) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "split", split);
  cJSON_AddNumberToObject(j, "num_queries", r->num_queries);
  cJSON_AddNumberToObject(j, "num_docs", r->num_docs);
  sn_metrics_add_json(j, &r->mean);
  cJSON_AddNumberToObject(j, "seconds", r->seconds);
  if (r->contrastive_pairs) {
    cJSON_AddNumberToObject(j, "contrastive_loss", r->contrastive_loss);
    cJSON_AddNumberToObject(j, "contrastive_pairs", r->contrastive_pairs);
    cJSON_AddNumberToObject(j, "contrastive_temperature", r->contrastive_temperature);
  }
  char *text = cJSON_Print(j);
  cJSON_Delete(j);
  size_t len = strlen(text);
  text = reallocCheck(text, len + 2);
  text[len++] = '\n';
  int rc = sn_write_file_atomic(path, text, len);
  free(text);
  if (rc) return sn_errorf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
  return 0;
}

void sn_eval_print_table(const char *split, const sn_eval_result *r) {
  printf("split %-8s queries %-6d docs %-8d %.1f s\n", split, r->num_queries, r->num_docs, r->seconds);
  printf("  %-10s %-10s %-10s %-10s\n", "recall@10", "recall@100", "ndcg@10", "mrr@10");
  printf("  %-10.4f %-10.4f %-10.4f %-10.4f\n", r->mean.recall_10, r->mean.recall_100, r->mean.ndcg_10,
         r->mean.mrr_10);
  if (r->contrastive_pairs)
    printf("  contrastive loss %.6f (%d pairs, tau %g)\n", r->contrastive_loss, r->contrastive_pairs,
           r->contrastive_temperature);
}
