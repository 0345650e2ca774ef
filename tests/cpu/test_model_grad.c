// Fresh tiny towers (sn_model_new) on the CPU backend:
// - gradients of L = sum_b dot(normalize(pool(hidden))_b, r_b) against central finite differences,
//   a few random elements of every tensor (unused tensors: lm_head, pooler must get zero);
// - save → load round trip (F32 exact, BF16 equal to the rounded weights);
// - optimizer spans cover the buffer, norms and biases without decay;
// - through a grad map (ZeRO-2), the same gradients bit for bit and the per-layer callbacks in order;
// - a decoder's pooled training pass (the last block on the pooled rows only) against the full one.
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "model.h"
#include "model_internal.h"
#include "safetensors.h"
#include "test_model_util.h"
#include "test_util.h"

#define FD_EPS 1e-2f
#define FD_ATOL 2e-3
#define FD_RTOL 2e-2
#define SAMPLES_PER_TENSOR 2
#define WEIGHT_STD 0.2f   // larger than init's 0.02 so every path carries signal
#define VECTOR_STD 0.1f   // norm weights 1 + N(0, 0.1), biases N(0, 0.1)
#define ERR_LEN 1024
#define PROJ_DIM 40  // wider than the towers' 32, as a student projected to its teacher's width

static const int SEQ_LENS[] = {1, 4, 9};
#define NSEQ ((int)SN_ARRAY_LEN(SEQ_LENS))

static sn_model_config base_config(sn_arch arch) { return sn_test_tiny_config(arch, 32, 4, 4, 8, 48, 32); }

typedef struct {
  const char *label;
  sn_model_config cfg;
  sn_pooling pooling;
} case_t;

typedef struct {
  sn_model *m;
  sn_acts *acts;
  sn_tokens tok;
  int32_t ids[64], cu[NSEQ + 1];
  int T, B;
  sn_pooling pooling;
  float r[NSEQ * 64];
  // backend scratch
  float *pooled_f32, *norm, *r_dev;
  void *pooled_st, *dpooled, *dhidden;
} harness;

static double loss_of(harness *h) {
  const int C = h->m->cfg.hidden;
  const void *hidden = sn_model_forward(h->m, h->acts, &h->tok, 0);
  sn_model_pool(h->m, h->acts, &h->tok, hidden, h->pooling, 1, h->pooled_f32);
  float pooled[NSEQ * 64];
  h->m->ops->download(pooled, h->pooled_f32, (size_t)h->B * C * sizeof(float));
  double L = 0.0;
  for (int i = 0; i < h->B * C; i++) L += (double)pooled[i] * h->r[i];
  return L;
}

static void analytic_grads(harness *h) {
  const sn_ops *ops = h->m->ops;
  const int C = h->m->cfg.hidden, B = h->B, T = h->T;
  const void *hidden = sn_model_forward(h->m, h->acts, &h->tok, 1);
  ops->pool_forward(h->pooled_st, hidden, h->tok.cu_seqlens, B, T, C, h->pooling);
  ops->l2norm_forward(h->pooled_f32, h->norm, h->pooled_st, B, C);
  ops->l2norm_backward(h->dpooled, h->r_dev, h->pooled_f32, h->norm, B, C);
  ops->pool_backward(h->dhidden, h->dpooled, h->tok.cu_seqlens, B, T, C, h->pooling);
  sn_model_zero_grads(h->m);
  sn_model_backward(h->m, h->acts, &h->tok, h->dhidden);
}

// An element likely to matter: rows of embedding tables that the batch reads.
static size_t pick_element(const harness *h, const sn_param *p, sn_test_rng *rng) {
  size_t j = (size_t)(sn_test_uniform(rng) * (float)p->count) % p->count;
  const int is_table = strstr(p->name, "embed") != NULL && p->ndim == 2;
  if (is_table) {
    const size_t cols = (size_t)p->shape[1];
    const int t = (int)(sn_test_uniform(rng) * (float)h->T) % h->T;
    int b = 0;
    while (t >= h->cu[b + 1]) b++;
    size_t row = strstr(p->name, "position") ? (size_t)(t - h->cu[b])  // position inside its sequence
                 : strstr(p->name, "token_type") ? 0
                                                   : (size_t)h->ids[t];
    if (row >= (size_t)p->shape[0]) row = 0;
    j = row * cols + j % cols;
  }
  return j;
}

static int unused_by_forward(const char *name) {
  return strcmp(name, "lm_head.weight") == 0 || strncmp(name, "pooler.", 7) == 0;
}

static void check_finite_differences(harness *h, const char *label, sn_test_rng *rng) {
  sn_model *m = h->m;
  analytic_grads(h);
  int checked = 0;
  double worst = 0.0;
  for (int i = 0; i < m->nparams; i++) {
    const sn_param *p = &m->params[i];
    if (unused_by_forward(p->name)) {
      float *g = mallocCheck(p->count * sizeof(float));
      m->ops->download_f32(g, (char *)m->grads + p->offset * m->ops->storage_size, p->count);
      double maxabs = 0.0;
      for (size_t j = 0; j < p->count; j++) maxabs = SN_MAX(maxabs, (double)fabsf(g[j]));
      CHECK(maxabs == 0.0, "%s: unused %s has gradient %.3g", label, p->name, maxabs);
      free(g);
      continue;
    }
    for (int s = 0; s < SAMPLES_PER_TENSOR; s++) {
      const size_t j = p->offset + pick_element(h, p, rng);
      const double analytic = sn_test_get_elem(m, m->grads, j);
      const float orig = sn_test_get_elem(m, m->weights, j);
      sn_test_set_weight(m, j, orig + FD_EPS);
      const double lp = loss_of(h);
      sn_test_set_weight(m, j, orig - FD_EPS);
      const double lm = loss_of(h);
      sn_test_set_weight(m, j, orig);
      const double fd = (lp - lm) / (2.0 * FD_EPS);
      const double diff = fabs(fd - analytic);
      CHECK(diff <= FD_ATOL + FD_RTOL * fabs(fd), "%s: %s[%zu]: analytic %.6g, finite difference %.6g",
            label, p->name, j - p->offset, analytic, fd);
      worst = SN_MAX(worst, diff);
      checked++;
    }
  }
  fprintf(stderr, "%s: %d finite-difference checks, worst |fd - analytic| %.2e\n", label, checked, worst);
}

static void check_round_trip(const sn_model *m, const char *label) {
  char tmpl[] = "/tmp/sn_model_grad_XXXXXX", err[ERR_LEN];
  char *dir = mkdtemp(tmpl);
  CHECK(dir, "mkdtemp failed");
  if (!dir) return;
  const sn_dtype dtypes[] = {SN_DTYPE_F32, SN_DTYPE_BF16};
  float *want = mallocCheck(m->num_elements * sizeof(float));
  float *got = mallocCheck(m->num_elements * sizeof(float));
  for (size_t d = 0; d < SN_ARRAY_LEN(dtypes); d++) {
    CHECK(sn_model_save(m, dir, dtypes[d], err, sizeof err) == 0, "%s: save: %s", label, err);
    sn_model *back = sn_model_load(dir, m->ops);
    CHECK(back->nparams == m->nparams && back->num_elements == m->num_elements,
          "%s: reloaded %d tensors / %zu elements, saved %d / %zu", label, back->nparams,
          back->num_elements, m->nparams, m->num_elements);
    if (back->num_elements == m->num_elements) {
      for (int i = 0; i < m->nparams && i < back->nparams; i++)
        CHECK(strcmp(m->params[i].name, back->params[i].name) == 0 && m->params[i].offset == back->params[i].offset,
              "%s: tensor %d is %s, saved %s", label, i, back->params[i].name, m->params[i].name);
      m->ops->download_f32(want, m->weights, m->num_elements);
      back->ops->download_f32(got, back->weights, back->num_elements);
      if (dtypes[d] == SN_DTYPE_BF16)
        for (size_t j = 0; j < m->num_elements; j++) want[j] = sn_bf16_to_f32(sn_f32_to_bf16(want[j]));
      CHECK(memcmp(want, got, m->num_elements * sizeof(float)) == 0, "%s: %s round trip changed weights",
            label, dtypes[d] == SN_DTYPE_F32 ? "F32" : "BF16");
      CHECK(back->cfg.arch == m->cfg.arch && back->cfg.n_layers == m->cfg.n_layers &&
                back->cfg.tie_embeddings == m->cfg.tie_embeddings && back->cfg.attn_bias == m->cfg.attn_bias &&
                back->cfg.mlp_bias == m->cfg.mlp_bias && back->cfg.rope_theta == m->cfg.rope_theta,
            "%s: config changed in the round trip", label);
    }
    sn_model_free(back);
  }
  free(want);
  free(got);
  const char *files[] = {"model.safetensors", "config.json"};
  for (size_t i = 0; i < SN_ARRAY_LEN(files); i++) {
    char path[ERR_LEN];
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    unlink(path);
  }
  rmdir(dir);
}

static void check_spans(const sn_model *m, const char *label) {
  int n = 0;
  const float wd = 0.1f;
  sn_param_span *spans = sn_model_param_spans(m, wd, &n);
  size_t covered = 0, unused = 0;
  for (int i = 0; i < n; i++) covered += spans[i].count;
  for (int i = 0; i < m->nparams; i++)
    if (unused_by_forward(m->params[i].name)) unused += m->params[i].count;
  // unused tensors (lm_head, pooler) are left out so weight decay does not shrink them
  CHECK(covered + unused == m->num_elements, "%s: spans cover %zu of %zu elements (%zu unused)", label,
        covered, m->num_elements, unused);
  for (int i = 0; i < n; i++) {
    const sn_param *p = sn_model_find_param(m, "lm_head.weight");
    CHECK(!p || spans[i].offset + spans[i].count <= p->offset || spans[i].offset >= p->offset + p->count,
          "%s: span %d overlaps lm_head", label, i);
  }
  for (int i = 0; i < m->nparams; i++) {
    const sn_param *p = &m->params[i];
    CHECK(p->no_decay == (p->ndim == 1), "%s: %s no_decay %d", label, p->name, p->no_decay);
  }
  free(spans);
}

// Output projection: sn_model_pool = normalize(W pool(hidden) + b), checked on the host; the
// projection survives a save/load round trip.
static void check_projection(harness *h, const char *label, uint64_t seed) {
  const sn_ops *ops = h->m->ops;
  const int C = h->m->cfg.hidden, B = h->B;
  h->m = sn_model_add_projection(h->m, PROJ_DIM, seed);
  CHECK(sn_model_out_dim(h->m) == PROJ_DIM, "%s: out dim %d", label, sn_model_out_dim(h->m));
  const sn_param *w = sn_model_find_param(h->m, "projection.weight");
  const sn_param *bias = sn_model_find_param(h->m, "projection.bias");
  CHECK(w && bias, "%s: projection tensors missing", label);
  if (!w || !bias) return;
  sn_acts_free(h->acts);
  h->acts = sn_acts_new(h->m, h->T, h->B);
  const void *hidden = sn_model_forward(h->m, h->acts, &h->tok, 0);
  float *out_dev = ops->alloc((size_t)B * PROJ_DIM * sizeof(float));
  sn_model_pool(h->m, h->acts, &h->tok, hidden, h->pooling, 1, out_dev);
  float got[NSEQ * PROJ_DIM], want[NSEQ * PROJ_DIM], pooled[NSEQ * 64];
  ops->download(got, out_dev, sizeof got);
  ops->pool_forward(h->pooled_st, hidden, h->tok.cu_seqlens, B, h->T, C, h->pooling);
  ops->download_f32(pooled, h->pooled_st, (size_t)B * C);
  float *W = mallocCheck(w->count * sizeof(float)), bv[PROJ_DIM];
  ops->download_f32(W, (char *)h->m->weights + w->offset * ops->storage_size, w->count);
  ops->download_f32(bv, (char *)h->m->weights + bias->offset * ops->storage_size, PROJ_DIM);
  for (int b = 0; b < B; b++) {
    double ss = 0.0;
    for (int o = 0; o < PROJ_DIM; o++) {
      double y = bv[o];
      for (int c = 0; c < C; c++) y += (double)W[o * C + c] * pooled[b * C + c];
      want[b * PROJ_DIM + o] = (float)y;
      ss += y * y;
    }
    for (int o = 0; o < PROJ_DIM; o++) want[b * PROJ_DIM + o] /= (float)sqrt(ss);
  }
  double e = sn_rel_err(got, want, (size_t)B * PROJ_DIM);
  CHECK(e <= 1e-5, "%s: projected pooling rel err %.3g", label, e);
  fprintf(stderr, "%s + projection to %d: pooled rel err %.2e\n", label, PROJ_DIM, e);
  free(W);
  ops->free(out_dev);
  check_round_trip(h->m, label);
  check_spans(h->m, label);
}

// Recomputation re-runs each block from its kept input: the gradients must be the plain path's bit
// for bit (the same ops on the same values), with fewer activation bytes, and the memory plan's
// count of both workspaces must be what they allocate.
static void check_recompute(harness *h, const char *label) {
  sn_model *m = h->m;
  if (!sn_arch_is_decoder(m->cfg.arch)) return;
  const size_t n = m->num_elements;
  float *plain = mallocCheck(n * sizeof(float)), *again = mallocCheck(n * sizeof(float));
  analytic_grads(h);
  m->ops->download_f32(plain, m->grads, n);
  CHECK(sn_acts_bytes(h->acts) == sn_model_plan_acts_bytes(m, h->T, h->B, 1, SN_RECOMPUTE_NONE),
        "%s: plan counts %zu activation bytes, the workspace holds %zu", label,
        sn_model_plan_acts_bytes(m, h->T, h->B, 1, SN_RECOMPUTE_NONE), sn_acts_bytes(h->acts));
  sn_acts *plain_acts = h->acts;
  h->acts = sn_acts_new(m, h->T, h->B);
  sn_acts_set_recompute(h->acts, SN_RECOMPUTE_LAYER);
  analytic_grads(h);
  m->ops->download_f32(again, m->grads, n);
  const size_t differ = sn_test_count_bit_diffs(plain, again, n);
  CHECK(differ == 0, "%s: recomputation changes %zu of %zu gradients", label, differ, n);
  const size_t planned = sn_model_plan_acts_bytes(m, h->T, h->B, 1, SN_RECOMPUTE_LAYER);
  CHECK(sn_acts_bytes(h->acts) == planned && planned < sn_acts_bytes(plain_acts),
        "%s: recompute workspace %zu bytes, plan %zu, plain %zu", label, sn_acts_bytes(h->acts), planned,
        sn_acts_bytes(plain_acts));
  fprintf(stderr, "%s: recompute = layer: gradients identical, activations %zu -> %zu bytes\n", label,
          sn_acts_bytes(plain_acts), sn_acts_bytes(h->acts));
  sn_acts_free(h->acts);
  h->acts = plain_acts;
  free(plain), free(again);
}

// sn_model_forward_pooled + sn_model_backward_pooled, whose last block runs past the attention on the
// B pooled rows only, against the full forward + pool and backward (analytic_grads, checked by finite
// differences above): the same embeddings and gradients bit for bit on the CPU (each row's sums are
// the same; the skipped rows add exact zeros; a batch past the CPU GEMM's 256-row K slice would group
// the weight gradients' sums otherwise: docs/DESIGN.md), pooled last and cls, with and without
// recomputation.
static void check_pooled_rows(harness *h, const char *label) {
  sn_model *m = h->m;
  if (!sn_arch_is_decoder(m->cfg.arch)) return;
  const sn_ops *ops = m->ops;
  const size_t n = m->num_elements, nemb = (size_t)h->B * m->cfg.hidden;
  float *full = mallocCheck(n * sizeof(float)), *rows = mallocCheck(n * sizeof(float));
  float *emb_full = mallocCheck(nemb * sizeof(float)), *emb_rows = mallocCheck(nemb * sizeof(float));
  const sn_pooling pooling = h->pooling;
  const sn_pooling poolings[] = {SN_POOL_LAST, SN_POOL_FIRST};
  const sn_recompute modes[] = {SN_RECOMPUTE_NONE, SN_RECOMPUTE_LAYER};
  sn_acts *acts = h->acts;
  for (int p = 0; p < 2; p++)
    for (int r = 0; r < 2; r++) {
      h->pooling = poolings[p];
      h->acts = sn_acts_new(m, h->T, h->B);
      sn_acts_set_recompute(h->acts, modes[r]);
      analytic_grads(h);
      ops->download_f32(full, m->grads, n);
      ops->download(emb_full, h->pooled_f32, nemb * sizeof(float));
      sn_model_zero_grads(m);
      sn_model_forward_pooled(m, h->acts, &h->tok, h->pooling, h->pooled_f32);
      CHECK(h->acts->last_forward_pooled, "%s: the pooled forward ran every row", label);
      ops->download(emb_rows, h->pooled_f32, nemb * sizeof(float));
      sn_model_backward_pooled(m, h->acts, &h->tok, h->pooling, h->r_dev, h->pooled_f32, NULL, h->dhidden);
      ops->download_f32(rows, m->grads, n);
      const size_t differ = sn_test_count_bit_diffs(full, rows, n);
      const int same_emb = memcmp(emb_full, emb_rows, nemb * sizeof(float)) == 0;
      CHECK(differ == 0 && same_emb, "%s, %s, recompute %d: the pooled rows' pass changes %zu of %zu gradients%s",
            label, sn_pooling_name(h->pooling), r, differ, n, same_emb ? "" : " and the embeddings");
      sn_acts_free(h->acts);
    }
  // SN_FULL_LAST_BLOCK=1 keeps every row; another value than 0 or 1 is warned about and read as 0.
  const char *switches[] = {"1", "yes"};
  for (int i = 0; i < 2; i++) {
    setenv("SN_FULL_LAST_BLOCK", switches[i], 1);
    h->acts = sn_acts_new(m, h->T, h->B);
    sn_model_forward_pooled(m, h->acts, &h->tok, h->pooling, h->pooled_f32);
    CHECK(h->acts->last_forward_pooled == (i == 1), "%s: SN_FULL_LAST_BLOCK=%s: the pooled rows' pass %s", label,
          switches[i], h->acts->last_forward_pooled ? "ran" : "did not run");
    sn_acts_free(h->acts);
  }
  unsetenv("SN_FULL_LAST_BLOCK");
  fprintf(stderr, "%s: last block on the pooled rows (last, cls; recompute none, layer): embeddings and gradients "
          "bit for bit; SN_FULL_LAST_BLOCK=1 runs every row\n", label);
  h->acts = acts;
  h->pooling = pooling;
  free(full), free(rows), free(emb_full), free(emb_rows);
}

#define MAX_CALLBACKS 16

// The on_layer_grads calls of one backward pass.
typedef struct {
  int calls[MAX_CALLBACKS];
  int n;
} callback_log;

static void log_callback(void *ctx, int layer) {
  callback_log *g = ctx;
  if (g->n < MAX_CALLBACKS) g->calls[g->n] = layer;
  g->n++;
}

// One backward pass through the whole embedding path (the projection included) from d_emb, as
// training runs it.
static void embedding_path_backward(harness *h, const float *d_emb, float *emb) {
  sn_model_forward_pooled(h->m, h->acts, &h->tok, h->pooling, emb);
  sn_model_backward_pooled(h->m, h->acts, &h->tok, h->pooling, d_emb, emb, NULL, h->dhidden);
}

static int by_offset(const void *a, const void *b) {
  size_t x = ((const sn_param *)a)->offset, y = ((const sn_param *)b)->offset;
  return (x > y) - (x < y);
}

// The layer a tensor belongs to, or -1 (embeddings, final norm, projection).
static int layer_of(const sn_param *p) {
  int l;
  if (sscanf(p->name, "layers.%d.", &l) == 1 || sscanf(p->name, "encoder.layer.%d.", &l) == 1) return l;
  return -1;
}

// ZeRO-2's contract with the passes: through a grad map giving each layer and each run of
// tensors between them its own buffer (regions must not cut the fused q|k|v or gate|up groups,
// which one matmul writes), a backward pass writes the flat buffer's gradients bit for bit, and
// calls back from the last layer down, then with SN_GRADS_REST.
static void check_grad_map(harness *h, const char *label) {
  sn_model *m = h->m;
  const sn_ops *ops = m->ops;
  const size_t N = m->num_elements, es = ops->storage_size;
  const int W = sn_model_out_dim(m), L = m->cfg.n_layers, n = m->nparams;
  float *emb = ops->alloc((size_t)h->B * W * sizeof(float)), *d_emb = ops->alloc((size_t)h->B * W * sizeof(float));
  ops->upload(d_emb, h->r, (size_t)h->B * W * sizeof(float));
  sn_model_zero_grads(m);
  embedding_path_backward(h, d_emb, emb);
  float *flat = mallocCheck(N * sizeof(float));
  ops->download_f32(flat, m->grads, N);

  sn_param *sorted = mallocCheck((size_t)n * sizeof *sorted);
  memcpy(sorted, m->params, (size_t)n * sizeof *sorted);
  qsort(sorted, (size_t)n, sizeof *sorted, by_offset);
  size_t *begin = mallocCheck((size_t)(n + 1) * sizeof *begin);
  void **base = mallocCheck((size_t)n * sizeof *base);
  int regions = 0;
  for (int i = 0; i < n; i++)  // a new region wherever the layer changes; the first covers 0
    if (i == 0 || layer_of(&sorted[i]) != layer_of(&sorted[i - 1])) begin[regions++] = i ? sorted[i].offset : 0;
  free(sorted);
  begin[regions] = N;
  for (int r = 0; r < regions; r++) {
    base[r] = ops->alloc(SN_MAX(begin[r + 1] - begin[r], 1) * es);
    ops->memset_zero(base[r], (begin[r + 1] - begin[r]) * es);
  }
  sn_grad_map map = {.n = regions, .begin = begin, .base = base};
  callback_log log = {.n = 0};
  void *grads = m->grads;
  m->grads = NULL;  // nothing may reach the flat buffer
  m->grad_map = &map;
  m->on_layer_grads = log_callback;
  m->on_layer_grads_ctx = &log;
  embedding_path_backward(h, d_emb, emb);
  m->grads = grads;
  m->grad_map = NULL;
  m->on_layer_grads = NULL;
  m->on_layer_grads_ctx = NULL;

  int same = 1;
  float *region = mallocCheck(N * sizeof(float));
  for (int r = 0; r < regions; r++) {
    size_t len = begin[r + 1] - begin[r];
    ops->download_f32(region, base[r], len);
    same &= memcmp(region, flat + begin[r], len * sizeof(float)) == 0;
    ops->free(base[r]);
  }
  CHECK(same && regions >= L + 1, "%s: gradients through a grad map of %d regions differ from the flat buffer's",
        label, regions);
  int order = log.n == L + 1 && log.calls[L] == SN_GRADS_REST;
  for (int i = 0; i < L && order; i++) order = log.calls[i] == L - 1 - i;
  CHECK(order, "%s: %d layer callbacks, not layers %d..0 then SN_GRADS_REST", label, log.n, L - 1);
  fprintf(stderr, "%s: grad map of %d regions: gradients bit for bit, callbacks in order\n", label, regions);
  free(region);
  free(flat);
  free(begin);
  free(base);
  ops->free(emb);
  ops->free(d_emb);
}

static void run_case(const case_t *k, uint64_t seed) {
  const sn_ops *ops = sn_ops_cpu();
  sn_test_rng rng;
  sn_test_rng_seed(&rng, seed);
  harness h;
  memset(&h, 0, sizeof h);
  h.m = sn_model_new(&k->cfg, ops, seed);
  h.pooling = k->pooling;
  sn_test_randomise(h.m, &rng, WEIGHT_STD, VECTOR_STD);
  const int C = k->cfg.hidden;
  h.B = NSEQ;
  h.cu[0] = 0;
  for (int b = 0; b < NSEQ; b++) h.cu[b + 1] = h.cu[b] + SEQ_LENS[b];
  h.T = h.cu[NSEQ];
  for (int t = 0; t < h.T; t++) h.ids[t] = (int32_t)(sn_test_uniform(&rng) * (float)k->cfg.vocab) % k->cfg.vocab;
  for (int i = 0; i < h.B * C; i++) h.r[i] = sn_test_normal(&rng);
  sn_tokens_alloc(&h.tok, ops, h.T, h.B);
  sn_tokens_upload(&h.tok, ops, h.ids, h.cu, h.B, k->cfg.vocab, k->label);
  h.acts = sn_acts_new(h.m, h.T, h.B);
  h.pooled_f32 = ops->alloc((size_t)h.B * C * sizeof(float));
  h.norm = ops->alloc((size_t)h.B * sizeof(float));
  h.r_dev = ops->alloc((size_t)h.B * C * sizeof(float));
  h.pooled_st = ops->alloc((size_t)h.B * C * ops->storage_size);
  h.dpooled = ops->alloc((size_t)h.B * C * ops->storage_size);
  h.dhidden = ops->alloc((size_t)h.T * C * ops->storage_size);
  ops->upload(h.r_dev, h.r, (size_t)h.B * C * sizeof(float));
  sn_model_alloc_grads(h.m);

  check_finite_differences(&h, k->label, &rng);
  check_recompute(&h, k->label);
  check_pooled_rows(&h, k->label);
  check_round_trip(h.m, k->label);
  check_spans(h.m, k->label);
  check_projection(&h, k->label, seed + 1);
  check_grad_map(&h, k->label);

  ops->free(h.pooled_f32);
  ops->free(h.norm);
  ops->free(h.r_dev);
  ops->free(h.pooled_st);
  ops->free(h.dpooled);
  ops->free(h.dhidden);
  sn_acts_free(h.acts);
  sn_tokens_free(&h.tok, ops);
  sn_model_free(h.m);
}

// sn_tokens_upload must exit with status 2 on an id outside the vocabulary or an empty sequence.
static void check_bad_tokens_exit(void) {
  const sn_ops *ops = sn_ops_cpu();
  const int vocab = 10;
  const int32_t bad_ids[] = {1, 2, 10}, ok_ids[] = {1, 2, 3};
  const int32_t cu_ok[] = {0, 2, 3}, cu_empty[] = {0, 3, 3};
  struct { const char *what; const int32_t *ids, *cu; } cases[] = {
      {"id outside the vocabulary", bad_ids, cu_ok},
      {"empty sequence", ok_ids, cu_empty},
  };
  for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {  // child: must not return
      freopen("/dev/null", "w", stderr);
      sn_tokens t;
      sn_tokens_alloc(&t, ops, 8, 4);
      sn_tokens_upload(&t, ops, cases[i].ids, cases[i].cu, 2, vocab, cases[i].what);
      _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == SN_EXIT_BAD_INPUT, "%s: status %d, expected exit 2",
          cases[i].what, status);
  }
}

int main(void) {
  check_bad_tokens_exit();
  case_t cases[3];
  cases[0] = (case_t){"qwen2 (GQA, qkv bias, tied)", base_config(SN_ARCH_QWEN2), SN_POOL_LAST};
  cases[0].cfg.n_kv_heads = 2;
  cases[0].cfg.attn_bias = 1;
  cases[0].cfg.tie_embeddings = 1;
  cases[1] = (case_t){"llama (GQA 4:1, all biases, untied)", base_config(SN_ARCH_LLAMA), SN_POOL_MEAN};
  cases[1].cfg.n_kv_heads = 1;
  cases[1].cfg.attn_bias = 1;
  cases[1].cfg.mlp_bias = 1;
  cases[1].cfg.tie_embeddings = 0;
  cases[1].cfg.rope_theta = 500000.0f;
  cases[2] = (case_t){"bert", base_config(SN_ARCH_BERT), SN_POOL_FIRST};
  cases[2].cfg.attn_bias = cases[2].cfg.mlp_bias = 1;
  cases[2].cfg.norm_eps = 1e-12f;
  for (int i = 0; i < 3; i++) run_case(&cases[i], 1000 + (uint64_t)i);
  return sn_test_finish("test_model_grad");
}
