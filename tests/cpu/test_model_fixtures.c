// Towers against Hugging Face transformers (tests/make_fixtures.py, float64 reference): loads each
// fixture model on the CPU backend, packs all its sequences into one varlen batch and compares the
// last hidden states, the pooled embeddings and the gradients of L = sum_b dot(pooled_b, r_b).
// Also checks that a save writes the names transformers expects (no "model." prefix, lm_head kept).
// SN_TEST_DEVICE=cuda runs the same comparisons on the CUDA backend (bf16 storage, looser bounds);
// the default is the CPU backend.
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "model.h"
#include "npy.h"
#include "safetensors.h"
#include "test_model_util.h"
#include "test_util.h"

#define REL_TOL 1e-4        // fp32 storage (CPU) against the float64 reference
#define BF16_REL_TOL 2e-2   // bf16 weights and activations: ~3 significant digits per value
#define BF16_GRAD_TOL 5e-2  // gradients pass through twice as many bf16 roundings
#define PATH_LEN 4096
#define ERR_LEN 1024

typedef struct {
  const char *name;
  sn_pooling pooling;
  int expect_lm_head, expect_pooler;
} fixture;

static const fixture FIXTURES[] = {
    {"qwen2", SN_POOL_LAST, 0, 0},
    {"llama", SN_POOL_LAST, 1, 0},
    {"bert", SN_POOL_FIRST, 0, 1},
};

// dst = a/b; a path that does not fit fails the test rather than being cut short.
static void join_path(char *dst, size_t len, const char *a, const char *b) {
  if (snprintf(dst, len, "%s/%s", a, b) >= (int)len) {
    fprintf(stderr, "FAIL path too long: %s/%s\n", a, b);
    exit(1);
  }
}

// Saved file: names exactly as the *Model classes write them.
static void check_saved_names(const sn_model *m, const fixture *fx) {
  char tmpl[] = "/tmp/sn_fixture_save_XXXXXX", err[ERR_LEN], path[PATH_LEN];
  char *dir = mkdtemp(tmpl);
  CHECK(dir, "mkdtemp failed");
  if (!dir) return;
  CHECK(sn_model_save(m, dir, SN_DTYPE_F32, err, sizeof err) == 0, "%s: save: %s", fx->name, err);
  sn_st_archive ar;
  memset(&ar, 0, sizeof ar);
  join_path(path, sizeof path, dir, "model.safetensors");
  if (sn_st_open(&ar, path, err, sizeof err) != 0) {
    CHECK(0, "%s: reopen saved file: %s", fx->name, err);
    return;
  }
  CHECK(ar.ntensors == m->nparams, "%s: saved %d tensors, model has %d", fx->name, ar.ntensors, m->nparams);
  for (int i = 0; i < ar.ntensors; i++)
    CHECK(strncmp(ar.tensors[i].name, "model.", 6) != 0, "%s: saved name '%s' has a prefix", fx->name,
          ar.tensors[i].name);
  int has_head = 0;
  for (int i = 0; i < ar.ntensors; i++) has_head |= strcmp(ar.tensors[i].name, "lm_head.weight") == 0;
  CHECK(has_head == fx->expect_lm_head, "%s: lm_head.weight saved %d, expected %d", fx->name, has_head,
        fx->expect_lm_head);
  sn_st_close(&ar);
  const char *files[] = {"model.safetensors", "config.json"};
  for (size_t i = 0; i < SN_ARRAY_LEN(files); i++) {
    join_path(path, sizeof path, dir, files[i]);
    unlink(path);
  }
  rmdir(dir);
}

static void run_fixture(const char *root, const fixture *fx, const sn_ops *ops) {
  const double tol = ops->storage == SN_DTYPE_F32 ? REL_TOL : BF16_REL_TOL;
  const double grad_tol = ops->storage == SN_DTYPE_F32 ? REL_TOL : BF16_GRAD_TOL;
  char dir[PATH_LEN];
  join_path(dir, sizeof dir, root, fx->name);
  sn_model *m = sn_model_load(dir, ops);
  const int C = m->cfg.hidden;
  CHECK((sn_model_find_param(m, "lm_head.weight") != NULL) == fx->expect_lm_head, "%s: lm_head", fx->name);
  CHECK((sn_model_find_param(m, "pooler.dense.weight") != NULL) == fx->expect_pooler, "%s: pooler", fx->name);

  sn_npy_array ids, cu, hidden_ref, pooled_ref, r;
  sn_test_load_npy(dir, "ids.npy", &ids);
  sn_test_load_npy(dir, "cu_seqlens.npy", &cu);
  sn_test_load_npy(dir, "hidden.npy", &hidden_ref);
  sn_test_load_npy(dir, "pooled.npy", &pooled_ref);
  sn_test_load_npy(dir, "r.npy", &r);
  const int B = (int)cu.numel - 1, T = (int)ids.numel;
  CHECK(hidden_ref.numel == (int64_t)T * C && pooled_ref.numel == (int64_t)B * C, "%s: fixture shapes", fx->name);

  sn_tokens tok;
  sn_tokens_alloc(&tok, ops, T, B);
  sn_tokens_upload(&tok, ops, ids.data, cu.data, B, m->cfg.vocab, fx->name);
  sn_acts *acts = sn_acts_new(m, T, B);

  // inference forward, then the forward that keeps activations: same numbers
  float *h_infer = sn_test_download(ops, sn_model_forward(m, acts, &tok, 0), (size_t)T * C);
  const void *hidden = sn_model_forward(m, acts, &tok, 1);
  float *h = sn_test_download(ops, hidden, (size_t)T * C);
  double e_hidden = sn_rel_err(h, hidden_ref.data, (size_t)T * C);
  CHECK(e_hidden <= tol, "%s: hidden rel err %.3g", fx->name, e_hidden);
  CHECK(sn_rel_err(h_infer, h, (size_t)T * C) == 0.0, "%s: inference forward differs from training forward", fx->name);

  float *pooled_dev = ops->alloc((size_t)B * C * sizeof(float));
  sn_model_pool(m, acts, &tok, hidden, fx->pooling, 1, pooled_dev);
  float *pooled = mallocCheck((size_t)B * C * sizeof(float));
  ops->download(pooled, pooled_dev, (size_t)B * C * sizeof(float));
  double e_pooled = sn_rel_err(pooled, pooled_ref.data, (size_t)B * C);
  CHECK(e_pooled <= tol, "%s: pooled rel err %.3g", fx->name, e_pooled);

  // backward of L = sum_b dot(normalize(pool(hidden))_b, r_b)
  void *pooled_st = ops->alloc((size_t)B * C * ops->storage_size);
  float *norm = ops->alloc((size_t)B * sizeof(float));
  float *r_dev = ops->alloc((size_t)B * C * sizeof(float));
  void *dpooled = ops->alloc((size_t)B * C * ops->storage_size);
  void *dhidden = ops->alloc((size_t)T * C * ops->storage_size);
  ops->upload(r_dev, r.data, (size_t)B * C * sizeof(float));
  ops->pool_forward(pooled_st, hidden, tok.cu_seqlens, B, T, C, fx->pooling);
  ops->l2norm_forward(pooled_dev, norm, pooled_st, B, C);
  ops->l2norm_backward(dpooled, r_dev, pooled_dev, norm, B, C);
  ops->pool_backward(dhidden, dpooled, tok.cu_seqlens, B, T, C, fx->pooling);
  sn_model_alloc_grads(m);
  sn_model_backward(m, acts, &tok, dhidden);

  char path[PATH_LEN];
  join_path(path, sizeof path, dir, "grads.txt");
  FILE *f = fopenCheck(path, "r");
  char name[SN_PARAM_NAME_MAX + 8];
  double worst = 0.0;
  int ngrads = 0;
  while (fscanf(f, "%135s", name) == 1) {
    const sn_param *p = sn_model_find_param(m, name);
    CHECK(p, "%s: no parameter %s", fx->name, name);
    if (!p) continue;
    char file[PATH_LEN];
    snprintf(file, sizeof file, "grad.%s.npy", name);
    sn_npy_array ref;
    sn_test_load_npy(dir, file, &ref);
    CHECK(ref.numel == (int64_t)p->count, "%s: %s has %zu elements, reference %lld", fx->name, name,
          p->count, (long long)ref.numel);
    if (ref.numel == (int64_t)p->count) {
      float *g = sn_test_download(ops, (char *)m->grads + p->offset * ops->storage_size, p->count);
      double e = sn_rel_err(g, ref.data, p->count);
      CHECK(e <= grad_tol, "%s: grad %s rel err %.3g", fx->name, name, e);
      fprintf(stderr, "  %s grad %-48s rel err %.2e\n", fx->name, name, e);
      worst = SN_MAX(worst, e);
      free(g);
    }
    sn_npy_free(&ref);
    ngrads++;
  }
  fclose(f);
  CHECK(ngrads > 0, "%s: no gradients listed", fx->name);
  fprintf(stderr, "%s: hidden rel err %.2e, pooled rel err %.2e, worst grad rel err %.2e (%d tensors)\n",
          fx->name, e_hidden, e_pooled, worst, ngrads);

  check_saved_names(m, fx);

  ops->free(pooled_st);
  ops->free(norm);
  ops->free(r_dev);
  ops->free(dpooled);
  ops->free(dhidden);
  ops->free(pooled_dev);
  free(pooled);
  free(h);
  free(h_infer);
  sn_acts_free(acts);
  sn_tokens_free(&tok, ops);
  sn_npy_free(&ids);
  sn_npy_free(&cu);
  sn_npy_free(&hidden_ref);
  sn_npy_free(&pooled_ref);
  sn_npy_free(&r);
  sn_model_free(m);
}

int main(void) {
  char root[PATH_LEN], probe[PATH_LEN];
  join_path(root, sizeof root, sn_test_source_dir(), "tests/fixtures");
  for (size_t i = 0; i < SN_ARRAY_LEN(FIXTURES); i++) {
    char model_dir[PATH_LEN];
    join_path(model_dir, sizeof model_dir, root, FIXTURES[i].name);
    join_path(probe, sizeof probe, model_dir, "model.safetensors");
    sn_test_require_fixture(probe, "tests/make_fixtures.py where torch exists");
  }
  const sn_ops *ops = sn_test_backend_from_env();
  fprintf(stderr, "backend %s\n", ops->name);
  for (size_t i = 0; i < SN_ARRAY_LEN(FIXTURES); i++) run_fixture(root, &FIXTURES[i], ops);
  return sn_test_finish("test_model_fixtures");
}
