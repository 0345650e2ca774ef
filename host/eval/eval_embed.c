// Text → L2-normalised embeddings with one tower, for evaluation: tokenize in parallel, sort by
// length so each packed batch holds sequences of similar length (less wasted attention work and a
// tight activation budget), run forward + pool, and put the rows back in input order.
#define _GNU_SOURCE  // qsort_r
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "data.h"
#include "embed_graphs.h"
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

// One tower's embedding pass, kept between calls: the prompts, the packed-batch workspace and the
// pooled buffers (a serving process embeds query after query through one).
struct sn_embedder {
  sn_model *m;
  const sn_tokenizer *tok;  // NULL: ids only
  int max_len, batch, pooling, normalize, dim;
  char *template_str;       // NULL: "{text}" (BEIR's "{title} {text}" for titled items)
  sn_prompt *plain, *titled;  // titled: made at the first titled call without a template
  sn_acts *acts;
  sn_tokens tb;
  int32_t *ids_host, *cu_host;  // (batch * max_len), (batch + 1)
  float *pooled;                // (batch, dim) fp32, backend
  float *pooled_host;           // (batch, dim)
  sn_graph_cache *graphs;       // recorded forwards by batch shape; NULL: every op launched
};

// The prompt of the texts a tower sees, as training tokenizes them (data_prompt.c: the tokenizer's
// specials, EOS appended for decoder towers so last-token pooling reads it, the text cut rather
// than the template's tail). A template without "{text}" is a prefix.
static sn_prompt *make_prompt(const sn_embedder *e, const char *template_str, char *err, size_t errlen) {
  char *tpl = NULL;
  if (template_str && template_str[0] && !strstr(template_str, PLACEHOLDER_TEXT)) {
    tpl = mallocCheck(strlen(template_str) + sizeof PLACEHOLDER_TEXT);
    strcpy(tpl, template_str);
    strcat(tpl, PLACEHOLDER_TEXT);
  }
  sn_text_encoder enc = sn_text_encoder_from_tokenizer(e->tok);
  sn_prompt_spec spec = {.template_str = tpl ? tpl : template_str, .max_len = e->max_len, .add_special = 1,
                         .append_eos = sn_arch_is_decoder(e->m->cfg.arch)};
  sn_prompt *p = sn_prompt_create(&spec, &enc, err, errlen);
  free(tpl);
  return p;
}

// Without a template, documents follow BEIR: title + " " + text, or the text alone when untitled.
static token_seq *tokenize_all(sn_embedder *e, const char *const *titles, const char *const *texts, int n,
                               char *err, size_t errlen) {
  const int titled_default = !(e->template_str && e->template_str[0]) && titles;
  if (titled_default && !e->titled && !(e->titled = make_prompt(e, BEIR_TITLED_TEMPLATE, err, errlen)))
    return NULL;
  const sn_prompt *plain = e->plain, *titled = titled_default ? e->titled : NULL;
  token_seq *seqs = callocCheck((size_t)SN_MAX(n, 1), sizeof *seqs);
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

sn_embedder *sn_embedder_new(sn_model *m, const sn_tokenizer *tok, const sn_embedder_opts *o, char *err,
                             size_t errlen) {
  const int is_decoder = sn_arch_is_decoder(m->cfg.arch);
  // Callers check the sizes with names the user knows (sn_eval_check_sizes); this guards the
  // buffers below against a caller that did not.
  size_t max_tokens_sz;
  if (o->batch <= 0 || o->max_len <= 0 || (m->cfg.max_positions > 0 && o->max_len > m->cfg.max_positions) ||
      sn_mul_size_ok((size_t)o->batch, (size_t)o->max_len, (size_t)INT_MAX, &max_tokens_sz) != 0) {
    sn_errorf(err, errlen, "%d sequences of up to %d tokens do not fit the tower (%d positions) or an int token count",
              o->batch, o->max_len, m->cfg.max_positions);
    return NULL;
  }
  sn_embedder *e = callocCheck(1, sizeof *e);
  e->m = m;
  e->tok = tok;
  e->max_len = o->max_len;
  e->batch = o->batch;
  e->pooling = o->pooling >= 0 ? o->pooling : is_decoder ? SN_POOL_LAST : SN_POOL_FIRST;
  e->normalize = o->normalize;
  e->dim = sn_eval_embedding_dim(m);
  e->template_str = o->template_str ? strdupCheck(o->template_str) : NULL;
  if (tok && !(e->plain = make_prompt(e, e->template_str, err, errlen))) {
    sn_embedder_free(e);
    return NULL;
  }
  const sn_ops *ops = m->ops;
  const int max_tokens = (int)max_tokens_sz;
  e->acts = sn_acts_new(m, max_tokens, e->batch);
  sn_tokens_alloc(&e->tb, ops, max_tokens, e->batch);
  e->ids_host = mallocCheck((size_t)max_tokens * sizeof *e->ids_host);
  e->cu_host = mallocCheck(((size_t)e->batch + 1) * sizeof *e->cu_host);
  e->pooled = ops->alloc((size_t)e->batch * e->dim * sizeof(float));
  e->pooled_host = ops->host_alloc((size_t)e->batch * e->dim * sizeof *e->pooled_host);
  if (o->graphs) e->graphs = sn_graph_cache_new(ops);
  return e;
}

size_t sn_embedder_plan_bytes(const sn_model *m, int batch, int max_len) {
  const int max_tokens = batch * max_len;
  return sn_model_plan_acts_bytes(m, max_tokens, batch, 0, SN_RECOMPUTE_NONE) + sn_tokens_bytes(max_tokens, batch) +
         (size_t)batch * sn_eval_embedding_dim(m) * sizeof(float);
}

void sn_embedder_free(sn_embedder *e) {
  if (!e) return;
  const sn_ops *ops = e->m->ops;
  sn_graph_cache_free(e->graphs);
  if (e->pooled) ops->free(e->pooled);
  if (e->pooled_host) ops->host_free(e->pooled_host);
  free(e->ids_host);
  free(e->cu_host);
  if (e->acts) {
    sn_tokens_free(&e->tb, ops);
    sn_acts_free(e->acts);
  }
  sn_prompt_free(e->plain);
  sn_prompt_free(e->titled);
  free(e->template_str);
  free(e);
}

int sn_embedder_dim(const sn_embedder *e) { return e->dim; }

// The ops of one batch after its upload: forward, pool (project, normalise) into e->pooled.
static void forward_and_pool(void *ctx) {
  sn_embedder *e = ctx;
  sn_model_embed(e->m, e->acts, &e->tb, (sn_pooling)e->pooling, e->normalize, e->pooled);
}

// n sequences (each 1..max_len tokens of the vocabulary) → out (n, dim): sorted by length so each
// packed batch holds sequences of similar length, rows put back in input order.
static void embed_seqs(sn_embedder *e, const token_seq *seqs, int n, float *out, int verbose, const char *what) {
  if (n == 0) return;
  sn_model *m = e->m;
  const sn_ops *ops = m->ops;
  const int C = e->dim;
  int *order = mallocCheck((size_t)n * sizeof *order);
  for (int i = 0; i < n; i++) order[i] = i;
  qsort_r(order, (size_t)n, sizeof *order, cmp_len_desc, (void *)seqs);
  const int nbatches = SN_CEIL_DIV(n, e->batch);
  double t0 = sn_now_s();
  for (int bi = 0; bi < nbatches; bi++) {
    int first = bi * e->batch, B = SN_MIN(e->batch, n - first);
    e->cu_host[0] = 0;
    for (int b = 0; b < B; b++) {
      const token_seq *s = &seqs[order[first + b]];
      memcpy(e->ids_host + e->cu_host[b], s->ids, (size_t)s->n * sizeof *e->ids_host);
      e->cu_host[b + 1] = e->cu_host[b] + s->n;
    }
    sn_tokens_upload(&e->tb, ops, e->ids_host, e->cu_host, B, m->cfg.vocab, what);
    const int key[SN_GRAPH_KEY_LEN] = {e->tb.B, e->tb.T, e->tb.max_seqlen};
    if (e->graphs) sn_graph_cache_run(e->graphs, key, forward_and_pool, e);
    else forward_and_pool(e);
    // one call's copies enqueued behind its kernels, then one wait (pinned buffers: a pageable copy
    // costs several microseconds more each, a query's whole budget is ~100 µs)
    ops->download_async(e->pooled_host, e->pooled, (size_t)B * C * sizeof(float));
    ops->synchronize();
    e->tb.copies_pending = 0;  // the synchronisation covered the batch's uploads
    for (int b = 0; b < B; b++)
      memcpy(out + (size_t)order[first + b] * C, e->pooled_host + (size_t)b * C, (size_t)C * sizeof *out);
    if (verbose && (bi + 1) % SN_MAX(1, nbatches / PROGRESS_STEPS) == 0)
      sn_log("embed %s: %d/%d sequences, %.1f s", what, first + B, n, sn_now_s() - t0);
  }
  free(order);
}

static void free_seqs(token_seq *seqs, int n) {
  for (int i = 0; i < n; i++) free(seqs[i].ids);
  free(seqs);
}

int sn_embedder_texts(sn_embedder *e, const char *const *titles, const char *const *texts, int n, float *out,
                      int verbose, const char *what, char *err, size_t errlen) {
  if (!e->tok) return sn_errorf(err, errlen, "embed %s: texts need the tower's tokenizer", what);
  token_seq *seqs = tokenize_all(e, titles, texts, n, err, errlen);
  if (!seqs) return -1;
  // A tokenizer larger than the tower's vocabulary is a mismatched folder, not a crash.
  for (int i = 0; i < n; i++)
    for (int k = 0; k < seqs[i].n; k++)
      if (seqs[i].ids[k] < 0 || seqs[i].ids[k] >= e->m->cfg.vocab) {
        sn_errorf(err, errlen, "embed %s: item %d: token id %d of the tokenizer is outside the tower's vocabulary "
                  "[0, %d)", what, i, seqs[i].ids[k], e->m->cfg.vocab);
        free_seqs(seqs, n);
        return -1;
      }
  embed_seqs(e, seqs, n, out, verbose, what);
  free_seqs(seqs, n);
  return 0;
}

int sn_embedder_ids(sn_embedder *e, const int32_t *const *ids, const int *lens, int n, float *out,
                    const char *what, char *err, size_t errlen) {
  token_seq *seqs = mallocCheck((size_t)SN_MAX(n, 1) * sizeof *seqs);
  int rc = 0;
  for (int i = 0; i < n && rc == 0; i++) {
    if (lens[i] < 1 || lens[i] > e->max_len)
      rc = sn_errorf(err, errlen, "embed %s: item %d has %d tokens, expected 1 to %d", what, i, lens[i], e->max_len);
    for (int k = 0; rc == 0 && k < lens[i]; k++)
      if (ids[i][k] < 0 || ids[i][k] >= e->m->cfg.vocab)
        rc = sn_errorf(err, errlen, "embed %s: item %d, token %d: id %d outside the vocabulary [0, %d)", what, i, k,
                       ids[i][k], e->m->cfg.vocab);
    seqs[i] = (token_seq){(int32_t *)ids[i], lens[i]};  // read only
  }
  if (rc == 0) embed_seqs(e, seqs, n, out, 0, what);
  free(seqs);
  return rc;
}

float *sn_embed_items(sn_model *m, const sn_tokenizer *tok, const char *const *titles,
                      const char *const *texts, int n, const char *template_str, int max_len, int batch,
                      int pooling, int verbose, const char *what, char *err, size_t errlen) {
  sn_embedder_opts o = {.template_str = template_str, .max_len = max_len, .batch = batch, .pooling = pooling,
                        .normalize = 1};
  char why[512];
  sn_embedder *e = sn_embedder_new(m, tok, &o, why, sizeof why);
  if (!e) {
    sn_errorf(err, errlen, "embed %s: %s", what, why);
    return NULL;
  }
  float *out = mallocCheck((size_t)SN_MAX(n, 1) * e->dim * sizeof *out);
  if (sn_embedder_texts(e, titles, texts, n, out, verbose, what, err, errlen) != 0) {
    free(out);
    out = NULL;
  }
  sn_embedder_free(e);
  return out;
}
