// Text → L2-normalised embeddings with one tower, for evaluation: tokenize in parallel, sort by
// length so each packed batch holds sequences of similar length (less wasted attention work and a
// tight activation budget), run forward + pool, and put the rows back in input order.
#define _GNU_SOURCE  // qsort_r
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "data.h"
#include "eval.h"

#define PROGRESS_STEPS 10  // progress lines per embedding pass when verbose
#define PLACEHOLDER_TEXT "{text}"
#define EMPTY_TEXT_TOKEN 0  // stands in for an empty text when a tower adds no special tokens
#define BEIR_TITLED_TEMPLATE "{title} {text}"  // BEIR's convention for titled documents
#define PROJECTION_WEIGHT "projection.weight"  // (out_dim, C): a stage-2 student's output projection

typedef struct {
  int32_t *ids;
  int n;
} token_seq;

// The texts a tower sees, tokenized exactly as training tokenizes them (data_prompt.c: the
// tokenizer's specials, EOS appended for decoder towers so last-token pooling reads it, the text
// cut rather than the template's tail). Without a template, documents follow BEIR: title + " " +
// text, or the text alone when untitled. A template without "{text}" is a prefix.
static token_seq *tokenize_all(const sn_model *m, const sn_tokenizer *tok, const char *const *titles,
                               const char *const *texts, int n, const char *template_str, int max_len,
                               char *err, size_t errlen) {
  char *tpl = NULL;
  if (template_str && template_str[0] && !strstr(template_str, PLACEHOLDER_TEXT)) {
    tpl = mallocCheck(strlen(template_str) + sizeof PLACEHOLDER_TEXT);
    strcpy(tpl, template_str);
    strcat(tpl, PLACEHOLDER_TEXT);
  }
  const int titled_default = !(template_str && template_str[0]) && titles;
  sn_text_encoder enc = sn_text_encoder_from_tokenizer(tok);
  sn_prompt_spec spec = {.template_str = tpl ? tpl : template_str, .max_len = max_len, .add_special = 1,
                         .append_eos = sn_arch_is_decoder(m->cfg.arch)};
  sn_prompt *plain = sn_prompt_create(&spec, &enc, err, errlen), *titled = NULL;
  if (plain && titled_default) {
    spec.template_str = BEIR_TITLED_TEMPLATE;
    titled = sn_prompt_create(&spec, &enc, err, errlen);
  }
  free(tpl);
  if (!plain || (titled_default && !titled)) {
    sn_prompt_free(plain);
    return NULL;
  }
  token_seq *seqs = callocCheck((size_t)n, sizeof *seqs);
#pragma omp parallel for schedule(dynamic, 64)
  for (int i = 0; i < n; i++) {
    const char *title = titles ? titles[i] : "";
    const sn_prompt *p = (titled && title[0]) ? titled : plain;
    size_t len = 0, cap = 0;
    int truncated;
    sn_prompt_encode(p, title, texts[i], &seqs[i].ids, &len, &cap, &truncated);
    if (len == 0) {  // empty text, no specials, no EOS: one token keeps the packed batch valid
      seqs[i].ids = reallocCheck(seqs[i].ids, sizeof *seqs[i].ids);
      seqs[i].ids[len++] = EMPTY_TEXT_TOKEN;
    }
    seqs[i].n = (int)len;
  }
  sn_prompt_free(plain);
  sn_prompt_free(titled);
  return seqs;
}

static int cmp_len_desc(const void *a, const void *b, void *seqs) {
  int x = *(const int *)a, y = *(const int *)b;
  int lx = ((const token_seq *)seqs)[x].n, ly = ((const token_seq *)seqs)[y].n;
  if (lx != ly) return ly - lx;
  return x - y;  // stable: deterministic batches
}

int sn_eval_embedding_dim(const sn_model *m) {
  const sn_param *proj = sn_model_find_param(m, PROJECTION_WEIGHT);
  return proj ? (int)proj->shape[0] : m->cfg.hidden;
}

float *sn_embed_items(sn_model *m, const sn_tokenizer *tok, const char *const *titles,
                      const char *const *texts, int n, const char *template_str, int max_len, int batch,
                      int pooling, int verbose, const char *what, char *err, size_t errlen) {
  const sn_ops *ops = m->ops;
  const int C = sn_eval_embedding_dim(m);
  const int is_decoder = sn_arch_is_decoder(m->cfg.arch);
  if (pooling < 0) pooling = is_decoder ? SN_POOL_LAST : SN_POOL_FIRST;

  // Callers check the sizes with names the user knows (sn_eval_check_sizes); this guards the
  // buffers below against a caller that did not.
  size_t max_tokens_sz;
  if (batch <= 0 || max_len <= 0 || (m->cfg.max_positions > 0 && max_len > m->cfg.max_positions) ||
      sn_mul_size_ok((size_t)batch, (size_t)max_len, (size_t)INT_MAX, &max_tokens_sz) != 0) {
    sn_errorf(err, errlen, "embed %s: %d sequences of up to %d tokens do not fit the tower (%d positions) or "
              "an int token count", what, batch, max_len, m->cfg.max_positions);
    return NULL;
  }
  token_seq *seqs = tokenize_all(m, tok, titles, texts, n, template_str, max_len, err, errlen);
  if (!seqs) return NULL;
  float *out = mallocCheck((size_t)n * C * sizeof *out);
  if (n == 0) {
    free(seqs);
    return out;
  }
  int *order = mallocCheck((size_t)n * sizeof *order);
  for (int i = 0; i < n; i++) order[i] = i;
  qsort_r(order, (size_t)n, sizeof *order, cmp_len_desc, seqs);

  const int max_tokens = (int)max_tokens_sz;
  sn_acts *acts = sn_acts_new(m, max_tokens, batch);
  sn_tokens tb;
  sn_tokens_alloc(&tb, ops, max_tokens, batch);
  int32_t *ids_host = mallocCheck((size_t)max_tokens * sizeof *ids_host);
  int32_t *cu_host = mallocCheck(((size_t)batch + 1) * sizeof *cu_host);
  float *pooled = ops->alloc((size_t)batch * C * sizeof(float));
  float *pooled_host = mallocCheck((size_t)batch * C * sizeof *pooled_host);

  const int nbatches = SN_CEIL_DIV(n, batch);
  double t0 = sn_now_s();
  for (int bi = 0; bi < nbatches; bi++) {
    int first = bi * batch, B = SN_MIN(batch, n - first);
    cu_host[0] = 0;
    for (int b = 0; b < B; b++) {
      const token_seq *s = &seqs[order[first + b]];
      memcpy(ids_host + cu_host[b], s->ids, (size_t)s->n * sizeof *ids_host);
      cu_host[b + 1] = cu_host[b] + s->n;
    }
    sn_tokens_upload(&tb, ops, ids_host, cu_host, B, m->cfg.vocab, what);
    const void *hidden = sn_model_forward(m, acts, &tb, 0);
    sn_model_pool(m, acts, &tb, hidden, (sn_pooling)pooling, 1, pooled);
    ops->download(pooled_host, pooled, (size_t)B * C * sizeof(float));
    for (int b = 0; b < B; b++)
      memcpy(out + (size_t)order[first + b] * C, pooled_host + (size_t)b * C, (size_t)C * sizeof *out);
    if (verbose && (bi + 1) % SN_MAX(1, nbatches / PROGRESS_STEPS) == 0)
      sn_log("embed %s: %d/%d sequences, %.1f s", what, first + B, n, sn_now_s() - t0);
  }

  ops->free(pooled);
  free(pooled_host);
  free(ids_host);
  free(cu_host);
  sn_tokens_free(&tb, ops);
  sn_acts_free(acts);
  for (int i = 0; i < n; i++) free(seqs[i].ids);
  free(seqs);
  free(order);
  return out;
}
