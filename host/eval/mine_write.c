// Mined negatives as training lines (mine.h): stage 1's mining rounds.
#define _GNU_SOURCE
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "eval.h"
#include "mine.h"

static cJSON *doc_json(const char *title, const char *text) {
  if (!title || !title[0]) return cJSON_CreateString(text);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "title", title);
  cJSON_AddStringToObject(o, "text", text);
  return o;
}

static void replace(cJSON *obj, const char *key, cJSON *value) {
  cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
  cJSON_AddItemToObject(obj, key, value);
}

// The example's own fields, when there is no parsed line to start from.
static cJSON *line_of_example(const sn_train_examples *ex, int64_t i) {
  const sn_train_example *e = &ex->examples[i];
  cJSON *line = cJSON_CreateObject();
  cJSON_AddStringToObject(line, "query", e->query);
  if (e->query_template) cJSON_AddStringToObject(line, "prompt", e->query_template);
  cJSON *pos = cJSON_AddArrayToObject(line, "pos");
  const int64_t *p = sn_example_pos(ex, i);
  for (int32_t j = 0; j < e->n_pos; j++) cJSON_AddItemToArray(pos, doc_json(ex->docs[p[j]].title, ex->docs[p[j]].text));
  return line;
}

// One example's line with its mined negatives.
static void append_line(sn_strbuf *out, cJSON *line, const sn_beir_records *corpus, const int32_t *neg,
                        const float *neg_scores, int n, const float *pos_scores, int n_pos) {
  cJSON *jn = cJSON_CreateArray(), *jid = cJSON_CreateArray(), *js = cJSON_CreateArray(), *jp = cJSON_CreateArray();
  for (int j = 0; j < n; j++) {
    cJSON_AddItemToArray(jn, doc_json(corpus->titles ? corpus->titles[neg[j]] : "", corpus->texts[neg[j]]));
    cJSON_AddItemToArray(jid, cJSON_CreateString(corpus->ids[neg[j]]));
    cJSON_AddItemToArray(js, cJSON_CreateNumber(neg_scores[j]));
  }
  for (int j = 0; j < n_pos; j++) cJSON_AddItemToArray(jp, cJSON_CreateNumber(pos_scores[j]));
  replace(line, "neg", jn);
  replace(line, "neg_ids", jid);
  replace(line, "neg_scores", js);
  replace(line, "pos_scores", jp);
  char *s = cJSON_PrintUnformatted(line);
  sn_strbuf_printf(out, "%s\n", s);
  free(s);
}

int64_t sn_mine_write_lines(const sn_mine_opts *o, const sn_train_examples *ex, const sn_beir_records *corpus,
                            const sn_mine_positives *p, int k, const int32_t *idx, const float *scores,
                            const float *pos_scores, cJSON *const *base, sn_strbuf *out) {
  int32_t *neg = mallocCheck((size_t)o->negatives * sizeof *neg);
  float *neg_scores = mallocCheck((size_t)o->negatives * sizeof *neg_scores);
  int64_t n_short = 0;
  for (int64_t i = 0; i < ex->n_examples; i++) {
    float best = -INFINITY;
    for (int64_t j = p->pos_begin[i]; j < p->pos_begin[i + 1]; j++) best = fmaxf(best, pos_scores[j]);
    int n = sn_mine_pick(o, i, idx + (size_t)i * k, scores + (size_t)i * k, k, p->excl + p->excl_begin[i],
                         (int)(p->excl_begin[i + 1] - p->excl_begin[i]), best, neg, neg_scores);
    n_short += n < o->negatives;
    cJSON *line = base ? base[i] : line_of_example(ex, i);
    append_line(out, line, corpus, neg, neg_scores, n, pos_scores + p->pos_begin[i],
                (int)(p->pos_begin[i + 1] - p->pos_begin[i]));
    if (!base) cJSON_Delete(line);
  }
  free(neg);
  free(neg_scores);
  return n_short;
}

void sn_mine_corpus_of_examples(const sn_train_examples *ex, sn_beir_records *out) {
  memset(out, 0, sizeof *out);
  const int64_t n = ex->n_docs;
  if (n > INT32_MAX) sn_fatal("%lld training documents: more than a corpus holds", (long long)n);
  out->n = (int)n;
  out->ids = mallocCheck((size_t)(n > 0 ? n : 1) * sizeof(char *));
  out->titles = mallocCheck((size_t)(n > 0 ? n : 1) * sizeof(char *));
  out->texts = mallocCheck((size_t)(n > 0 ? n : 1) * sizeof(char *));
  sn_id_map_init(&out->index, (size_t)n);
  for (int32_t i = 0; i < (int32_t)n; i++) {
    char id[32];
    snprintf(id, sizeof id, "doc%d", i);
    out->ids[i] = strdupCheck(id);
    out->titles[i] = strdupCheck(ex->docs[i].title);
    out->texts[i] = strdupCheck(ex->docs[i].text);
    sn_id_map_put(&out->index, out->ids[i], i);
  }
}
