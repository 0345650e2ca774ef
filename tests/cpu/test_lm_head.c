// The fused LM head + cross-entropy (ops.h: lm_head_xent) on the CPU backend:
//   1. against a direct float64 evaluation of the whole (N, V) logits (loss, dhidden, dweight), at
//      shapes that cross the row and vocabulary chunks (V not a multiple of the chunk), with ignored
//      targets, dhidden written and dweight accumulated onto what it held;
//   2. finite differences of the loss for a few entries of hidden and weight;
//   3. a tiny Qwen2ForCausalLM from transformers (tests/make_lm_fixture.py, float64 reference): our
//      decoder forward + lm_head_xent gives its mean next-token loss, and the backward its gradients.
#define _GNU_SOURCE
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"
#include "npy.h"
#include "test_model_util.h"
#include "test_util.h"

#define REL_TOL 1e-5       // fp32 against float64
#define FIXTURE_GRAD_TOL 1e-4  // gradients through the whole decoder (as test_model_fixtures)
#define FD_STEP 1e-2
#define FD_TOL 2e-3        // central differences of an fp32 loss
#define PATH_LEN 4096

// Direct reference: loss = scale * sum of row CE; dh (N, C) and dw (V, C) its gradients.
static double reference(const float *h, const float *w, const int32_t *tg, int N, int V, int C, float scale,
                        double *dh, double *dw) {
  double *logits = mallocCheck((size_t)V * sizeof(double)), total = 0.0;
  memset(dh, 0, (size_t)N * C * sizeof(double));
  memset(dw, 0, (size_t)V * C * sizeof(double));
  for (int n = 0; n < N; n++) {
    if (tg[n] < 0) continue;
    double mx = -INFINITY, sum = 0.0;
    for (int v = 0; v < V; v++) {
      double s = 0.0;
      for (int c = 0; c < C; c++) s += (double)h[(size_t)n * C + c] * w[(size_t)v * C + c];
      logits[v] = s;
      mx = fmax(mx, s);
    }
    for (int v = 0; v < V; v++) sum += exp(logits[v] - mx);
    double lse = mx + log(sum);
    total += lse - logits[tg[n]];
    for (int v = 0; v < V; v++) {
      double g = scale * (exp(logits[v] - lse) - (v == tg[n]));
      for (int c = 0; c < C; c++) {
        dh[(size_t)n * C + c] += g * w[(size_t)v * C + c];
        dw[(size_t)v * C + c] += g * h[(size_t)n * C + c];
      }
    }
  }
  free(logits);
  return scale * total;
}

static double rel_err_f64(const float *a, const double *b, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return isfinite(num) ? sqrt(num) / fmax(sqrt(den), 1e-30) : INFINITY;
}

static void check_direct(int N, int V, int C, sn_test_rng *rng) {
  const sn_ops *ops = sn_ops_cpu();
  float *h = mallocCheck((size_t)N * C * sizeof(float)), *w = mallocCheck((size_t)V * C * sizeof(float));
  sn_test_fill_normal(rng, h, (size_t)N * C, 1.0f);
  sn_test_fill_normal(rng, w, (size_t)V * C, 0.5f);
  int32_t *tg = mallocCheck((size_t)N * sizeof(int32_t));
  for (int n = 0; n < N; n++) {
    // every 7th position is padding (both spellings of "ignore"); the rest spread over the vocabulary
    tg[n] = n % 7 == 3 ? SN_IGNORE_TARGET : n % 7 == 5 ? -1 : (int32_t)(sn_test_uniform(rng) * V);
    if (n == N - 1) tg[n] = V - 1;  // the last column of the last (partial) vocabulary chunk
  }
  const float scale = 1.0f / (float)N;
  double *dh_ref = mallocCheck((size_t)N * C * sizeof(double)), *dw_ref = mallocCheck((size_t)V * C * sizeof(double));
  double loss_ref = reference(h, w, tg, N, V, C, scale, dh_ref, dw_ref);
  float *dh = mallocCheck((size_t)N * C * sizeof(float)), *dw = mallocCheck((size_t)V * C * sizeof(float));
  for (size_t i = 0; i < (size_t)N * C; i++) dh[i] = NAN;  // written in full
  const float dw0 = 0.25f;                                 // accumulated onto
  for (size_t i = 0; i < (size_t)V * C; i++) dw[i] = dw0;
  float loss = 1.0f;  // accumulated onto
  ops->lm_head_xent(&loss, dh, dw, h, w, tg, N, V, C, scale);
  for (size_t i = 0; i < (size_t)V * C; i++) dw[i] -= dw0;
  CHECK(fabs((loss - 1.0) - loss_ref) <= REL_TOL * fabs(loss_ref), "N %d V %d C %d: loss %.8g, reference %.8g", N, V,
        C, loss - 1.0, loss_ref);
  double e_dh = rel_err_f64(dh, dh_ref, (size_t)N * C), e_dw = rel_err_f64(dw, dw_ref, (size_t)V * C);
  CHECK(e_dh <= REL_TOL, "N %d V %d C %d: dhidden rel err %.3g", N, V, C, e_dh);
  CHECK(e_dw <= 1e-4, "N %d V %d C %d: dweight rel err %.3g", N, V, C, e_dw);  // = dw0 + g: 1 digit lost
  for (int n = 0; n < N; n++)
    if (tg[n] < 0)
      for (int c = 0; c < C; c++) CHECK(dh[(size_t)n * C + c] == 0.0f, "ignored row %d: dhidden not zero", n);
  // forward only: the same loss, nothing else touched
  float loss_fwd = 0.0f;
  ops->lm_head_xent(&loss_fwd, NULL, NULL, h, w, tg, N, V, C, scale);
  CHECK(fabs(loss_fwd - loss_ref) <= REL_TOL * fabs(loss_ref), "forward-only loss %.8g, reference %.8g", loss_fwd,
        loss_ref);

  // finite differences of the loss at a few entries
  for (int k = 0; k < 3; k++) {
    float *arrays[2] = {h, w};
    double *refs[2] = {dh_ref, dw_ref};
    size_t sizes[2] = {(size_t)N * C, (size_t)V * C};
    for (int a = 0; a < 2; a++) {
      size_t i = (size_t)(sn_test_uniform(rng) * sizes[a]);
      float saved = arrays[a][i];
      float lp = 0.0f, lm = 0.0f;
      arrays[a][i] = saved + FD_STEP;
      ops->lm_head_xent(&lp, NULL, NULL, h, w, tg, N, V, C, scale);
      arrays[a][i] = saved - FD_STEP;
      ops->lm_head_xent(&lm, NULL, NULL, h, w, tg, N, V, C, scale);
      arrays[a][i] = saved;
      double fd = ((double)lp - lm) / (2 * FD_STEP), an = refs[a][i];
      // the fp32 loss's rounding, divided by the step, bounds what the difference can resolve
      const double noise = 4.0 * FLT_EPSILON * fabs(loss_ref) / FD_STEP;
      CHECK(fabs(fd - an) <= FD_TOL * fabs(an) + noise, "%s[%zu]: finite difference %.6g, gradient %.6g",
            a ? "weight" : "hidden", i, fd, an);
    }
  }
  free(h), free(w), free(tg), free(dh_ref), free(dw_ref), free(dh), free(dw);
}

// The fixture: mean next-token CE of a Qwen2ForCausalLM over packed sequences, and its gradients.
static void check_fixture(void) {
  const sn_ops *ops = sn_ops_cpu();
  char dir[PATH_LEN];
  snprintf(dir, sizeof dir, "%s/tests/fixtures/qwen2_lm", sn_test_source_dir());
  sn_model *m = sn_model_load(dir, ops);
  m->trains_lm_head = 1;
  sn_npy_array ids, cu, loss_ref;
  sn_test_load_npy(dir, "ids.npy", &ids);
  sn_test_load_npy(dir, "cu_seqlens.npy", &cu);
  sn_test_load_npy(dir, "loss.npy", &loss_ref);
  const int B = (int)cu.numel - 1, T = (int)ids.numel, C = m->cfg.hidden, V = m->cfg.vocab;
  const int32_t *id = ids.data, *cs = cu.data;
  // targets: the next token inside the sequence, ignored at each sequence's last token
  int32_t *tg = mallocCheck((size_t)T * sizeof(int32_t));
  int count = 0;
  for (int b = 0; b < B; b++)
    for (int t = cs[b]; t < cs[b + 1]; t++) {
      tg[t] = t + 1 < cs[b + 1] ? id[t + 1] : SN_IGNORE_TARGET;
      count += tg[t] >= 0;
    }
  sn_tokens tok;
  sn_tokens_alloc(&tok, ops, T, B);
  sn_tokens_upload(&tok, ops, id, cs, B, V, "fixture");
  sn_acts *acts = sn_acts_new(m, T, B);
  sn_model_alloc_grads(m);
  const void *hidden = sn_model_forward(m, acts, &tok, 1);
  const void *w;
  void *dw;
  CHECK(sn_model_lm_head(m, &w, &dw) == 0, "fixture: no LM head");
  float loss = 0.0f;
  void *dhidden = ops->alloc((size_t)T * C * ops->storage_size);
  ops->lm_head_xent(&loss, dhidden, dw, hidden, w, tg, T, V, C, 1.0f / (float)count);
  sn_model_backward(m, acts, &tok, dhidden);
  const float want = *(const float *)loss_ref.data;
  CHECK(fabs(loss - want) <= REL_TOL * fabs(want), "fixture: loss %.8f, transformers %.8f", loss, want);
  printf("fixture: loss %.8f, transformers %.8f (rel %.2g)\n", loss, want, fabs(loss - want) / want);

  char path[PATH_LEN];
  snprintf(path, sizeof path, "%s/grads.txt", dir);
  FILE *f = fopenCheck(path, "r");
  char name[SN_PARAM_NAME_MAX + 8];
  int ngrads = 0;
  while (fscanf(f, "%135s", name) == 1) {
    const char *ours = strncmp(name, "model.", 6) == 0 ? name + 6 : name;
    const sn_param *p = sn_model_find_param(m, ours);
    CHECK(p, "fixture: no parameter %s", ours);
    if (!p) continue;
    char file[PATH_LEN];
    snprintf(file, sizeof file, "grad.%s.npy", name);
    sn_npy_array ref;
    sn_test_load_npy(dir, file, &ref);
    float *g = sn_test_download(ops, (const char *)m->grads + p->offset * ops->storage_size, p->count);
    double e = sn_rel_err(g, ref.data, p->count);
    CHECK(e <= FIXTURE_GRAD_TOL, "fixture: grad %s rel err %.3g", name, e);
    ngrads++;
    free(g);
    sn_npy_free(&ref);
  }
  fclose(f);
  CHECK(ngrads >= 4, "fixture: only %d gradients compared", ngrads);
  ops->free(dhidden);
  free(tg);
  sn_acts_free(acts);
  sn_tokens_free(&tok, ops);
  sn_npy_free(&ids), sn_npy_free(&cu), sn_npy_free(&loss_ref);
  sn_model_free(m);
}

int main(void) {
  sn_test_rng rng;
  sn_test_rng_seed(&rng, 7);
  check_direct(1, 5, 3, &rng);
  check_direct(13, 300, 16, &rng);
  // crosses both chunk sizes: a partial last row chunk and a partial last vocabulary chunk
  check_direct(SN_LM_HEAD_ROW_CHUNK + 9, SN_LM_HEAD_VOCAB_CHUNK + 37, 4, &rng);
  check_fixture();
  return sn_test_finish("test_lm_head");
}
