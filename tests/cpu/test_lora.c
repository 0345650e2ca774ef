// LoRA towers on the CPU backend, over a fresh tiny Qwen2-shaped base (GQA, q/k/v biases):
// - gradients of L = sum_b dot(normalize(pool(hidden))_b, r_b) w.r.t. every adapter tensor against
//   central finite differences (all seven targets, then subsets, and with dropout: its masks come
//   from a key, so every forward of the difference sees the same ones), with A and B both random
//   so neither gradient is trivially zero; the frozen base gets no gradient buffer;
// - the training pass whose last block runs on the pooled rows only: the same adapter gradients bit
//   for bit (with dropout it runs every row: the masks are drawn by element index);
// - B = 0 (a fresh adapter): the tower equals its base;
// - the merged export (W + s·B·A) loaded as a plain model embeds like the tower, also when an
//   adapted tensor spans several of the writer's chunks (the update is added a chunk at a time);
// - the peft folder round trip: same adapter values bit for bit, same embeddings; and its names;
// - a peft folder with an unsupported option exits 2.
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "model.h"
#include "model_internal.h"
#include "model_lora.h"
#include "safetensors.h"
#include "test_model_util.h"
#include "test_util.h"

#define FD_EPS 1e-2f
#define FD_ATOL 2e-3
#define FD_RTOL 2e-2
#define SAMPLES_PER_TENSOR 2
#define WEIGHT_STD 0.2f   // base matrices: larger than init's 0.02 so every path carries signal
#define ADAPTER_STD 0.2f  // A and B alike
#define VECTOR_STD 0.1f   // 1-D tensors (norm weights, biases) jittered by N(0, 0.1)
#define EMB_TOL 1e-5      // same computation reordered (fused update against merged weights)
#define ERR_LEN 1024
#define RANK 4
#define ALPHA 8.0f
#define MAX_T 64

static const int SEQ_LENS[] = {1, 4, 9};
#define NSEQ ((int)SN_ARRAY_LEN(SEQ_LENS))

static sn_model_config tiny_qwen2(void) {
  sn_model_config c = sn_test_tiny_config(SN_ARCH_QWEN2, 32, 4, 2, 8, 48, 32);
  c.attn_bias = 1;
  c.tie_embeddings = 1;
  return c;
}

typedef struct {
  const sn_ops *ops;
  sn_tokens tok;
  int32_t ids[MAX_T], cu[NSEQ + 1];
  int T, B, C;
  float r[NSEQ * 64];
  float *pooled_f32, *norm, *r_dev;
  void *pooled_st, *dpooled, *dhidden;
  int dropout_on;  // LoRA dropout in every forward, masks from DROPOUT_KEY
} harness;

#define DROPOUT_KEY 31337

static sn_acts *acts_for(harness *h, sn_model *m) {
  sn_acts *a = sn_acts_new(m, h->T, h->B);
  if (m->lora) sn_lora_set_dropout(a, h->dropout_on, DROPOUT_KEY);
  return a;
}

static void harness_init(harness *h, const sn_model *m, sn_test_rng *rng) {
  const sn_ops *ops = m->ops;
  memset(h, 0, sizeof *h);
  h->ops = ops;
  h->C = m->cfg.hidden;
  h->B = NSEQ;
  for (int b = 0; b < NSEQ; b++) h->cu[b + 1] = h->cu[b] + SEQ_LENS[b];
  h->T = h->cu[NSEQ];
  for (int t = 0; t < h->T; t++) h->ids[t] = (int32_t)(sn_test_uniform(rng) * (float)m->cfg.vocab) % m->cfg.vocab;
  for (int i = 0; i < h->B * h->C; i++) h->r[i] = sn_test_normal(rng);
  sn_tokens_alloc(&h->tok, ops, h->T, h->B);
  sn_tokens_upload(&h->tok, ops, h->ids, h->cu, h->B, m->cfg.vocab, "test_lora");
  h->pooled_f32 = ops->alloc((size_t)h->B * h->C * sizeof(float));
  h->norm = ops->alloc((size_t)h->B * sizeof(float));
  h->r_dev = ops->alloc((size_t)h->B * h->C * sizeof(float));
  h->pooled_st = ops->alloc((size_t)h->B * h->C * ops->storage_size);
  h->dpooled = ops->alloc((size_t)h->B * h->C * ops->storage_size);
  h->dhidden = ops->alloc((size_t)h->T * h->C * ops->storage_size);
  ops->upload(h->r_dev, h->r, (size_t)h->B * h->C * sizeof(float));
}

static void harness_free(harness *h) {
  void *bufs[] = {h->pooled_f32, h->norm, h->r_dev, h->pooled_st, h->dpooled, h->dhidden};
  for (size_t i = 0; i < SN_ARRAY_LEN(bufs); i++) h->ops->free(bufs[i]);
  sn_tokens_free(&h->tok, h->ops);
}

// emb (B, C) host: the normalised last-token embeddings of the batch.
static void embed(harness *h, sn_model *m, float *emb) {
  sn_acts *a = acts_for(h, m);
  const void *hidden = sn_model_forward(m, a, &h->tok, 0);
  sn_model_pool(m, a, &h->tok, hidden, SN_POOL_LAST, 1, h->pooled_f32);
  h->ops->download(emb, h->pooled_f32, (size_t)h->B * h->C * sizeof(float));
  sn_acts_free(a);
}

static double loss_of(harness *h, sn_model *m) {
  float emb[NSEQ * 64];
  embed(h, m, emb);
  double L = 0.0;
  for (int i = 0; i < h->B * h->C; i++) L += (double)emb[i] * h->r[i];
  return L;
}

static void analytic_grads(harness *h, sn_model *tower) {
  const sn_ops *ops = tower->ops;
  const int C = h->C, B = h->B, T = h->T;
  sn_acts *a = acts_for(h, tower);
  const void *hidden = sn_model_forward(tower, a, &h->tok, 1);
  ops->pool_forward(h->pooled_st, hidden, h->tok.cu_seqlens, B, T, C, SN_POOL_LAST);
  ops->l2norm_forward(h->pooled_f32, h->norm, h->pooled_st, B, C);
  ops->l2norm_backward(h->dpooled, h->r_dev, h->pooled_f32, h->norm, B, C);
  ops->pool_backward(h->dhidden, h->dpooled, h->tok.cu_seqlens, B, T, C, SN_POOL_LAST);
  sn_model_zero_grads(tower->lora->params);
  sn_model_backward(tower, a, &h->tok, h->dhidden);
  sn_acts_free(a);
}

static void check_finite_differences(harness *h, sn_model *tower, const char *label, sn_test_rng *rng) {
  sn_model *p = tower->lora->params;
  analytic_grads(h, tower);
  CHECK(tower->grads == NULL, "%s: the frozen base has a gradient buffer", label);
  int checked = 0;
  double worst = 0.0;
  for (int i = 0; i < p->nparams; i++) {
    const sn_param *t = &p->params[i];
    for (int s = 0; s < SAMPLES_PER_TENSOR; s++) {
      const size_t j = t->offset + (size_t)(sn_test_uniform(rng) * (float)t->count) % t->count;
      const double analytic = sn_test_get_elem(p, p->grads, j);
      const float orig = sn_test_get_elem(p, p->weights, j);
      sn_test_set_weight(p, j, orig + FD_EPS);
      const double lp = loss_of(h, tower);
      sn_test_set_weight(p, j, orig - FD_EPS);
      const double lm = loss_of(h, tower);
      sn_test_set_weight(p, j, orig);
      const double fd = (lp - lm) / (2.0 * FD_EPS);
      const double diff = fabs(fd - analytic);
      CHECK(diff <= FD_ATOL + FD_RTOL * fabs(fd), "%s: %s[%zu]: analytic %.6g, finite difference %.6g", label,
            t->name, j - t->offset, analytic, fd);
      worst = SN_MAX(worst, diff);
      checked++;
    }
  }
  fprintf(stderr, "%s: %d finite-difference checks over %d adapter tensors, worst |fd - analytic| %.2e\n", label,
          checked, p->nparams, worst);
}

static void rm_folder(const char *dir) {
  char cmd[ERR_LEN];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0, "cannot remove %s", dir);
}

// Merged export and peft round trip of `tower`, embeddings compared with the tower's own.
static void check_exports(harness *h, sn_model *base, sn_model *tower, const char *label) {
  char tmpl[] = "/tmp/sn_lora_XXXXXX", err[ERR_LEN], dir[ERR_LEN];
  char *root = mkdtemp(tmpl);
  CHECK(root, "mkdtemp failed");
  if (!root) return;
  float want[NSEQ * 64], got[NSEQ * 64];
  const size_t n = (size_t)h->B * h->C;
  const int dropout_on = h->dropout_on;
  h->dropout_on = 0;  // exports are for inference
  embed(h, tower, want);

  snprintf(dir, sizeof dir, "%s/merged", root);
  CHECK(sn_lora_save_merged(tower, dir, SN_DTYPE_F32, err, sizeof err) == 0, "%s: merged save: %s", label, err);
  sn_model *merged = sn_model_load(dir, base->ops);
  embed(h, merged, got);
  double e = sn_max_abs_err(got, want, n);
  fprintf(stderr, "%s: merged export vs fused tower: max |diff| %.2e\n", label, e);
  CHECK(e <= EMB_TOL, "%s: merged export embeds differently (max |diff| %.3g)", label, e);
  sn_model_free(merged);

  snprintf(dir, sizeof dir, "%s/adapter", root);
  CHECK(sn_lora_save_peft(tower->lora, dir, "base", err, sizeof err) == 0, "%s: peft save: %s", label, err);
  sn_lora *back = sn_lora_load_peft(dir, base);
  const sn_model *p = tower->lora->params, *q = back->params;
  CHECK(q->num_elements == p->num_elements && back->scale == tower->lora->scale &&
            back->cfg.targets == tower->lora->cfg.targets,
        "%s: peft round trip changed the adapter's shape or scale", label);
  if (q->num_elements == p->num_elements) {
    float *a = mallocCheck(p->num_elements * sizeof(float)), *b = mallocCheck(p->num_elements * sizeof(float));
    p->ops->download_f32(a, p->weights, p->num_elements);
    q->ops->download_f32(b, q->weights, q->num_elements);
    CHECK(memcmp(a, b, p->num_elements * sizeof(float)) == 0, "%s: peft round trip changed values", label);
    free(a);
    free(b);
  }
  sn_model *again = sn_lora_tower(base, back);
  embed(h, again, got);
  CHECK(memcmp(got, want, n * sizeof(float)) == 0, "%s: the reloaded adapter embeds differently", label);
  sn_model_free(again);
  sn_lora_free(back);

  // names as peft writes them over an AutoModel base
  sn_st_archive ar;
  memset(&ar, 0, sizeof ar);
  snprintf(dir, sizeof dir, "%s/adapter/adapter_model.safetensors", root);
  if (sn_st_open(&ar, dir, err, sizeof err) == 0) {
    CHECK(sn_st_find(&ar, "base_model.model.layers.0.self_attn.q_proj.lora_A.weight") != NULL ||
              !(tower->lora->cfg.targets & (1u << SN_LORA_Q)),
          "%s: peft name of layer 0's q_proj lora_A missing", label);
    sn_st_close(&ar);
  } else {
    CHECK(0, "%s: %s", label, err);
  }
  rm_folder(root);
  h->dropout_on = dropout_on;
}

// An adapter_config.json with use_rslora = true must exit 2 naming the key.
static void check_bad_peft_exit(sn_model *base, sn_lora *l) {
  char tmpl[] = "/tmp/sn_lora_bad_XXXXXX", err[ERR_LEN], path[ERR_LEN];
  char *root = mkdtemp(tmpl);
  CHECK(root && sn_lora_save_peft(l, root, "base", err, sizeof err) == 0, "bad peft: setup");
  if (!root) return;
  snprintf(path, sizeof path, "%s/adapter_config.json", root);
  FILE *f = fopen(path, "w");
  fputs("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"use_rslora\": true, \"target_modules\": [\"q_proj\"]}", f);
  fclose(f);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    sn_lora_load_peft(root, base);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == SN_EXIT_BAD_INPUT, "use_rslora: status %d, expected exit 2",
        status);
  rm_folder(root);
}

// The adapters' gradients of sn_model_forward_pooled + sn_model_backward_pooled against the full pass.
static void check_pooled_rows(harness *h, sn_model *tower, const char *label) {
  sn_model *p = tower->lora->params;
  const size_t n = p->num_elements;
  float *full = mallocCheck(n * sizeof(float)), *rows = mallocCheck(n * sizeof(float));
  analytic_grads(h, tower);
  h->ops->download_f32(full, p->grads, n);
  sn_acts *a = acts_for(h, tower);
  sn_model_zero_grads(p);
  sn_model_forward_pooled(tower, a, &h->tok, SN_POOL_LAST, h->pooled_f32);
  CHECK(a->last_forward_pooled == !h->dropout_on, "%s: the pooled rows' pass %s with dropout %s", label,
        a->last_forward_pooled ? "ran" : "did not run", h->dropout_on ? "on" : "off");
  sn_model_backward_pooled(tower, a, &h->tok, SN_POOL_LAST, h->r_dev, h->pooled_f32, NULL, h->dhidden);
  h->ops->download_f32(rows, p->grads, n);
  const size_t differ = sn_test_count_bit_diffs(full, rows, n);
  CHECK(differ == 0, "%s: the pooled rows' pass changes %zu of %zu adapter gradients", label, differ, n);
  sn_acts_free(a);
  free(full), free(rows);
}

static void run_case(const char *label, const char *targets, float dropout, uint64_t seed) {
  const sn_ops *ops = sn_ops_cpu();
  sn_test_rng rng;
  sn_test_rng_seed(&rng, seed);
  sn_model_config cfg = tiny_qwen2();
  sn_model *base = sn_model_new(&cfg, ops, seed);
  sn_test_randomise(base, &rng, WEIGHT_STD, VECTOR_STD);
  sn_lora_config lc = {.rank = RANK, .alpha = ALPHA, .dropout = dropout};
  char err[ERR_LEN];
  CHECK(sn_lora_targets_parse(targets, &lc.targets, err, sizeof err) == 0, "%s: %s", label, err);
  sn_lora *l = sn_lora_new(base, &lc, seed, label);
  sn_model *tower = sn_lora_tower(base, l);
  harness h;
  harness_init(&h, base, &rng);

  // fresh adapter (B = 0): the tower is its base
  float emb_base[NSEQ * 64], emb_tower[NSEQ * 64];
  embed(&h, base, emb_base);
  embed(&h, tower, emb_tower);
  CHECK(memcmp(emb_base, emb_tower, sizeof(float) * (size_t)h.B * h.C) == 0, "%s: fresh adapter changes the base",
        label);

  sn_test_randomise(l->params, &rng, ADAPTER_STD, VECTOR_STD);
  if (dropout > 0) {  // dropout changes the tower while training, not at inference
    embed(&h, tower, emb_base);
    h.dropout_on = 1;
    embed(&h, tower, emb_tower);
    CHECK(memcmp(emb_base, emb_tower, sizeof(float) * (size_t)h.B * h.C) != 0, "%s: dropout had no effect", label);
  }
  sn_model_alloc_grads(l->params);
  check_finite_differences(&h, tower, label, &rng);
  check_pooled_rows(&h, tower, label);
  check_exports(&h, base, tower, label);
  if (lc.targets == (1u << SN_LORA_NTARGETS) - 1) check_bad_peft_exit(base, l);

  harness_free(&h);
  sn_model_free(tower);
  sn_lora_free(l);
  sn_model_free(base);
}

// Gate, up and down wider than one chunk of the safetensors writer (1M elements): the merged export
// reads each from offsets past 0 of its update.
#define WIDE_INTERMEDIATE 33000  // x hidden 32: 1,056,000 elements a matrix
#define WIDE_WEIGHT_STD 0.02f    // the init's scale: activations stay moderate over 33,000 terms
static void check_wide_export(void) {
  const sn_ops *ops = sn_ops_cpu();
  sn_test_rng rng;
  sn_test_rng_seed(&rng, 2028);
  sn_model_config cfg = tiny_qwen2();
  cfg.intermediate = WIDE_INTERMEDIATE;
  sn_model *base = sn_model_new(&cfg, ops, 2028);
  sn_test_randomise(base, &rng, WIDE_WEIGHT_STD, VECTOR_STD);
  sn_lora_config lc = {.rank = RANK, .alpha = ALPHA};
  char err[ERR_LEN];
  CHECK(sn_lora_targets_parse("gate,up,down", &lc.targets, err, sizeof err) == 0, "wide: %s", err);
  sn_lora *l = sn_lora_new(base, &lc, 2028, "wide");
  sn_test_randomise(l->params, &rng, ADAPTER_STD, VECTOR_STD);
  sn_model *tower = sn_lora_tower(base, l);
  harness h;
  harness_init(&h, base, &rng);
  check_exports(&h, base, tower, "gate, up, down wider than a write chunk");
  harness_free(&h);
  sn_model_free(tower);
  sn_lora_free(l);
  sn_model_free(base);
}

int main(void) {
  check_wide_export();
  run_case("all seven targets", SN_LORA_ALL_TARGETS, 0.0f, 2024);
  run_case("k, v, up (slices of fused outputs)", "k,v,up", 0.0f, 2025);
  run_case("o, down", "o_proj,down", 0.0f, 2026);
  run_case("all seven targets, dropout 0.3", SN_LORA_ALL_TARGETS, 0.3f, 2027);
  return sn_test_finish("test_lora");
}
