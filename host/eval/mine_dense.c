// The dense scorer of mining (mine.h): the towers embed as they were trained (prompts, pooling,
// lengths from their export), the corpus shard is searched exactly (sn_topk_exact).
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "eval.h"
#include "mine.h"

// Examples ordered by their query template (NULL: the tower's), so each template is one pass.
static const char *template_of(const sn_train_examples *ex, int64_t i, const char *fallback) {
  return ex->examples[i].query_template ? ex->examples[i].query_template : fallback;
}

static int same_template(const char *a, const char *b) { return a == b || (a && b && !strcmp(a, b)); }

float *sn_mine_embed_queries(const sn_mine_tower *t, const sn_train_examples *ex, int batch, int verbose,
                             char *err, size_t errlen) {
  const int64_t n = ex->n_examples;
  const int C = sn_eval_embedding_dim(t->model);
  float *out = mallocCheck((size_t)(n > 0 ? n : 1) * C * sizeof(float));
  char *done = callocCheck((size_t)(n > 0 ? n : 1), 1);
  const char **texts = mallocCheck((size_t)(n > 0 ? n : 1) * sizeof *texts);
  int64_t *rows = mallocCheck((size_t)(n > 0 ? n : 1) * sizeof *rows);
  for (int64_t first = 0; first < n; first++) {
    if (done[first]) continue;
    const char *tpl = template_of(ex, first, t->prompt);
    int m = 0;
    for (int64_t i = first; i < n; i++)
      if (!done[i] && same_template(template_of(ex, i, t->prompt), tpl)) {
        done[i] = 1;
        rows[m] = i;
        texts[m++] = ex->examples[i].query;
      }
    float *emb = sn_embed_items(t->model, t->tok, NULL, texts, m, tpl, t->max_len, batch, t->pooling, verbose,
                                "queries", err, errlen);
    if (!emb) {
      free(out);
      out = NULL;
      break;
    }
    for (int j = 0; j < m; j++) memcpy(out + (size_t)rows[j] * C, emb + (size_t)j * C, (size_t)C * sizeof(float));
    free(emb);
  }
  free(done);
  free(texts);
  free(rows);
  return out;
}

int sn_mine_dense_positive_scores(const sn_mine_tower *doc, const sn_train_examples *ex, const float *q_emb,
                                  int batch, int verbose, float *pos_scores, char *err, size_t errlen) {
  int64_t n_pos = 0;
  for (int64_t i = 0; i < ex->n_examples; i++) n_pos += ex->examples[i].n_pos;
  const char **titles = mallocCheck((size_t)(n_pos > 0 ? n_pos : 1) * sizeof *titles);
  const char **texts = mallocCheck((size_t)(n_pos > 0 ? n_pos : 1) * sizeof *texts);
  int64_t p = 0;
  for (int64_t i = 0; i < ex->n_examples; i++) {
    const int64_t *pos = sn_example_pos(ex, i);
    for (int32_t j = 0; j < ex->examples[i].n_pos; j++, p++) {
      titles[p] = ex->docs[pos[j]].title;
      texts[p] = ex->docs[pos[j]].text;
    }
  }
  float *emb = sn_embed_items(doc->model, doc->tok, titles, texts, (int)n_pos, doc->prompt, doc->max_len, batch,
                              doc->pooling, verbose, "positives", err, errlen);
  free(titles);
  free(texts);
  if (!emb) return -1;
  const int C = sn_eval_embedding_dim(doc->model);
  p = 0;
  for (int64_t i = 0; i < ex->n_examples; i++)
    for (int32_t j = 0; j < ex->examples[i].n_pos; j++, p++) {
      float s = 0;
      for (int c = 0; c < C; c++) s += q_emb[(size_t)i * C + c] * emb[(size_t)p * C + c];
      pos_scores[p] = s;
    }
  free(emb);
  return 0;
}

int sn_mine_dense_shard(const sn_mine_tower *doc, const sn_beir_records *corpus, int64_t lo, int64_t hi,
                        const float *q_emb, int Q, int k, int batch, int verbose, int32_t *out_idx,
                        float *out_scores, char *err, size_t errlen) {
  const int64_t n = hi - lo;
  for (size_t j = 0; j < (size_t)Q * k; j++) {
    out_idx[j] = -1;
    out_scores[j] = -INFINITY;
  }
  if (n <= 0) return 0;
  const int C = sn_eval_embedding_dim(doc->model);
  float *docs = sn_embed_items(doc->model, doc->tok, (const char *const *)corpus->titles + lo,
                               (const char *const *)corpus->texts + lo, (int)n, doc->prompt, doc->max_len, batch,
                               doc->pooling, verbose, "corpus", err, errlen);
  if (!docs) return -1;
  const int kk = (int)(k < n ? k : n);  // sn_topk_exact's lists are (Q, min(k, n))
  int32_t *idx = mallocCheck((size_t)Q * kk * sizeof *idx);
  float *scores = mallocCheck((size_t)Q * kk * sizeof *scores);
  sn_topk_exact(doc->model->ops, docs, n, q_emb, Q, C, kk, (const char *const *)corpus->ids + lo, idx, scores);
  for (int q = 0; q < Q; q++)
    for (int j = 0; j < kk; j++) {
      out_idx[(size_t)q * k + j] = (int32_t)(idx[(size_t)q * kk + j] + lo);
      out_scores[(size_t)q * k + j] = scores[(size_t)q * kk + j];
    }
  free(idx);
  free(scores);
  free(docs);
  return 0;
}
