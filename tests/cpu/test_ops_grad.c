// Gradient check of every CPU op that has a backward: the analytic gradient of the scalar
// L = sum(out * R), R a fixed random projection, against central finite differences of the fp32
// forward op. L is summed in double; the step is divided by the perturbation actually stored in
// fp32. The relative error is taken over each input's whole gradient vector.
// Buffers the backward *writes* are pre-filled with NaN, so an element it forgets fails the check.
#include <math.h>
#include <omp.h>
#include <string.h>

#include "common.h"
#include "ops.h"
#include "test_util.h"

#define GRAD_TOL 1e-2f     // relative error of a whole gradient vector
#define EPS_SMOOTH 1e-2f   // finite-difference step for smooth ops on O(1) inputs
#define EPS_LINEAR 1e-1f   // linear ops: the step size does not matter, a big one beats rounding
#define ACCUM_TOL 1e-6     // "accumulates" checks: bitwise up to the rounding of one addition

static const sn_ops *ops;
static sn_test_rng rng;

// ---- harness ------------------------------------------------------------------------------------
typedef void (*forward_fn)(void *ctx, float *out);

typedef struct {
  const char *op;
  forward_fn forward;
  void *ctx;
  size_t nout;
  const float *R;  // (nout) projection of the outputs
  float eps;
} fd_problem;

static float *random_array(size_t n, float stddev) {
  float *x = mallocCheck(SN_MAX(n, 1) * sizeof(float));
  sn_test_fill_normal(&rng, x, n, stddev);
  return x;
}

static float *nan_array(size_t n) {
  float *x = mallocCheck(SN_MAX(n, 1) * sizeof(float));
  for (size_t i = 0; i < n; i++) x[i] = NAN;
  return x;
}

static double projected_loss(const fd_problem *p, float *out) {
  p->forward(p->ctx, out);
  double L = 0.0;
  for (size_t i = 0; i < p->nout; i++) L += (double)out[i] * p->R[i];
  return L;
}

// Compares analytic dL/dx (n) with central differences over every element of x; returns rel err.
static double check_input(const fd_problem *p, const char *input, float *x, size_t n,
                          const float *analytic) {
  float *out = mallocCheck(p->nout * sizeof(float)), *numeric = mallocCheck(n * sizeof(float));
  // The thousands of tiny forwards run on one thread: waking a team for each costs more than the
  // op, on a shared CI machine much more. (The analytic side ran with every thread.)
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  for (size_t i = 0; i < n; i++) {
    float saved = x[i];
    x[i] = saved + p->eps;
    float hi = x[i];
    double L_hi = projected_loss(p, out);
    x[i] = saved - p->eps;
    float lo = x[i];
    double L_lo = projected_loss(p, out);
    x[i] = saved;
    numeric[i] = (float)((L_hi - L_lo) / ((double)hi - (double)lo));
  }
  omp_set_num_threads(threads);
  double err = sn_rel_err(analytic, numeric, n);
  printf("  %-34s d%-7s rel err %.2e\n", p->op, input, err);
  CHECK(err < GRAD_TOL, "%s: d%s rel err %.3e >= %.1e", p->op, input, err, GRAD_TOL);
  free(out);
  free(numeric);
  return err;
}

// Checks that calling a backward a second time doubled the weight gradient `now` (was `once`).
static void check_accumulated(const char *op, const char *input, const float *once,
                              const float *now, size_t n) {
  float *twice = mallocCheck(n * sizeof(float));
  for (size_t i = 0; i < n; i++) twice[i] = 2.0f * once[i];
  double err = sn_rel_err(now, twice, n);
  CHECK(err < ACCUM_TOL, "%s: d%s is not accumulated (+=): rel err %.3e", op, input, err);
  free(twice);
}

// ---- embedding ----------------------------------------------------------------------------------
typedef struct {
  int T, C, V;
  const int32_t *ids;
  float *table;
} embedding_ctx;

static void embedding_fwd(void *c, float *out) {
  embedding_ctx *e = c;
  ops->embedding_forward(out, e->ids, e->table, e->T, e->C, 0);
}

static void test_embedding(void) {
  enum { T = 9, C = 13, V = 5 };
  const int32_t ids[T] = {3, 0, 3, 4, 1, 3, 0, 2, 3};  // repeats: the scatter must add them all
  embedding_ctx e = {T, C, V, ids, random_array((size_t)V * C, 1.0f)};
  float *R = random_array((size_t)T * C, 1.0f);
  float *dtable = callocCheck((size_t)V * C, sizeof(float));
  ops->embedding_backward(dtable, R, ids, T, C, V);
  fd_problem p = {"embedding", embedding_fwd, &e, (size_t)T * C, R, EPS_LINEAR};
  check_input(&p, "table", e.table, (size_t)V * C, dtable);
  float *once = mallocCheck((size_t)V * C * sizeof(float));
  memcpy(once, dtable, (size_t)V * C * sizeof(float));
  ops->embedding_backward(dtable, R, ids, T, C, V);
  check_accumulated("embedding", "table", once, dtable, (size_t)V * C);
  free(e.table);
  free(R);
  free(dtable);
  free(once);
}

// ---- norms --------------------------------------------------------------------------------------
// One context for the four norm forwards. Fused variants take a + b and output
// [normed (T, C) | residual (T, C)] so that the residual's gradient is checked too.
typedef struct {
  int T, C, layer, fused;  // layer: LayerNorm (else RMSNorm)
  float *a, *b, *weight, *bias;
  float *mean, *rstd;
  float eps;
} norm_ctx;

static void norm_fwd(void *c, float *out) {
  norm_ctx *n = c;
  size_t TC = (size_t)n->T * n->C;
  if (n->fused && n->layer)
    ops->add_layernorm_forward(out + TC, out, n->mean, n->rstd, n->a, n->b, n->weight, n->bias,
                               n->T, n->C, n->eps);
  else if (n->fused)
    ops->add_rmsnorm_forward(out + TC, out, n->rstd, n->a, n->b, n->weight, n->T, n->C, n->eps);
  else if (n->layer)
    ops->layernorm_forward(out, n->mean, n->rstd, n->a, n->weight, n->bias, n->T, n->C, n->eps);
  else
    ops->rmsnorm_forward(out, n->rstd, n->a, n->weight, n->T, n->C, n->eps);
}

static void test_norm(const char *name, int layer, int fused) {
  enum { T = 7, C = 19 };
  size_t TC = (size_t)T * C;
  norm_ctx n = {T, C, layer, fused, random_array(TC, 1.0f), random_array(TC, 1.0f),
                random_array(C, 1.0f), random_array(C, 0.5f), random_array(T, 0), random_array(T, 0),
                1e-5f};
  for (int c = 0; c < C; c++) n.weight[c] += 1.0f;  // weights near one, as trained norms are
  size_t nout = fused ? 2 * TC : TC;
  float *R = random_array(nout, 1.0f), *out = mallocCheck(nout * sizeof(float));
  norm_fwd(&n, out);  // saves mean/rstd for backward
  const float *x = fused ? out + TC : n.a;  // the normalised input: the residual when fused
  float *dx = nan_array(TC);
  if (fused) memcpy(dx, R + TC, TC * sizeof(float));  // the residual's own gradient, accumulated to
  float *dweight = callocCheck(C, sizeof(float)), *dbias = callocCheck(C, sizeof(float));
  if (layer)
    ops->layernorm_backward(dx, dweight, dbias, R, x, n.weight, n.mean, n.rstd, T, C, fused);
  else
    ops->rmsnorm_backward(dx, dweight, R, x, n.weight, n.rstd, T, C, fused);

  fd_problem p = {name, norm_fwd, &n, nout, R, EPS_SMOOTH};
  check_input(&p, fused ? "a" : "x", n.a, TC, dx);
  if (fused) check_input(&p, "b", n.b, TC, dx);  // d(a + b)/db = d(a + b)/da
  check_input(&p, "weight", n.weight, C, dweight);
  if (layer) check_input(&p, "bias", n.bias, C, dbias);

  if (!fused) {  // a second call accumulates weight grads and rewrites dx
    float *w_once = mallocCheck(C * sizeof(float)), *dx_once = mallocCheck(TC * sizeof(float));
    memcpy(w_once, dweight, C * sizeof(float));
    memcpy(dx_once, dx, TC * sizeof(float));
    if (layer)
      ops->layernorm_backward(dx, dweight, dbias, R, x, n.weight, n.mean, n.rstd, T, C, 0);
    else
      ops->rmsnorm_backward(dx, dweight, R, x, n.weight, n.rstd, T, C, 0);
    check_accumulated(name, "weight", w_once, dweight, C);
    CHECK(memcmp(dx, dx_once, TC * sizeof(float)) == 0, "%s: dx is not written (=)", name);
    free(w_once);
    free(dx_once);
  }
  free(n.a), free(n.b), free(n.weight), free(n.bias), free(n.mean), free(n.rstd);
  free(R), free(out), free(dx), free(dweight), free(dbias);
}

// ---- matmul and bias ----------------------------------------------------------------------------
typedef struct {
  int M, N, K, trans_a, trans_b;
  float *A, *B, *bias;
} matmul_ctx;

static void matmul_fwd(void *c, float *out) {
  matmul_ctx *m = c;
  ops->matmul(out, m->A, m->B, m->bias, m->M, m->N, m->K, m->trans_a, m->trans_b, 0);
}

// dA and dB of C = op(A) op(B) given dC, each one matmul of the op itself.
static void matmul_grads(const matmul_ctx *m, const float *dC, float *dA, float *dB) {
  int M = m->M, N = m->N, K = m->K;
  if (!m->trans_a)  // dA (M, K) = dC (M, N) @ op(B)^T
    ops->matmul(dA, dC, m->B, NULL, M, K, N, 0, !m->trans_b, 0);
  else              // dA (K, M) = op(B) (K, N) @ dC^T
    ops->matmul(dA, m->B, dC, NULL, K, M, N, m->trans_b, 1, 0);
  if (!m->trans_b)  // dB (K, N) = op(A)^T (K, M) @ dC
    ops->matmul(dB, m->A, dC, NULL, K, N, M, !m->trans_a, 0, 0);
  else              // dB (N, K) = dC^T (N, M) @ op(A)
    ops->matmul(dB, dC, m->A, NULL, N, K, M, 1, m->trans_a, 0);
}

static void test_matmul(int trans_a, int trans_b) {
  enum { M = 11, N = 19, K = 7 };  // odd sizes: every edge path of the tiling
  matmul_ctx m = {M, N, K, trans_a, trans_b, random_array((size_t)M * K, 1.0f),
                  random_array((size_t)K * N, 1.0f), random_array(N, 1.0f)};
  float *R = random_array((size_t)M * N, 1.0f);
  float *dA = nan_array((size_t)M * K), *dB = nan_array((size_t)K * N);
  float *dbias = callocCheck(N, sizeof(float));
  matmul_grads(&m, R, dA, dB);
  ops->bias_backward(dbias, R, M, N);
  char name[64];
  snprintf(name, sizeof name, "matmul %c%c + bias", trans_a ? 'T' : 'N', trans_b ? 'T' : 'N');
  fd_problem p = {name, matmul_fwd, &m, (size_t)M * N, R, EPS_LINEAR};
  check_input(&p, "A", m.A, (size_t)M * K, dA);
  check_input(&p, "B", m.B, (size_t)K * N, dB);
  check_input(&p, "bias", m.bias, N, dbias);
  float *once = mallocCheck(N * sizeof(float));
  memcpy(once, dbias, N * sizeof(float));
  ops->bias_backward(dbias, R, M, N);
  check_accumulated("bias_backward", "bias", once, dbias, N);
  free(m.A), free(m.B), free(m.bias), free(R), free(dA), free(dB), free(dbias), free(once);
}

// ---- rope and attention -------------------------------------------------------------------------
// Four packed sequences, one of them a single token.
#define ATT_B 4
static const int32_t att_cu_seqlens[ATT_B + 1] = {0, 3, 4, 9, 11};
#define ATT_T 11
#define ATT_MAX_SEQLEN 5
#define HEAD_DIM 8

typedef struct {
  int T, Hq, Hkv, D;
  const int32_t *pos;
  float theta;
  float *qkv;
} rope_ctx;

static void rope_fwd(void *c, float *out) {
  rope_ctx *r = c;
  memcpy(out, r->qkv, (size_t)r->T * (r->Hq + 2 * r->Hkv) * r->D * sizeof(float));
  ops->rope(out, r->pos, r->T, r->Hq, r->Hkv, r->D, r->theta, 0);
}

static void test_rope(void) {
  enum { Hq = 4, Hkv = 2, D = HEAD_DIM };
  int32_t pos[ATT_T];
  for (int b = 0; b < ATT_B; b++)
    for (int t = att_cu_seqlens[b]; t < att_cu_seqlens[b + 1]; t++)
      pos[t] = 7 * (t - att_cu_seqlens[b]);  // spread positions: several turns of the fast pairs
  size_t n = (size_t)ATT_T * (Hq + 2 * Hkv) * D;
  rope_ctx r = {ATT_T, Hq, Hkv, D, pos, 100.0f, random_array(n, 1.0f)};
  float *R = random_array(n, 1.0f), *dqkv = mallocCheck(n * sizeof(float));
  memcpy(dqkv, R, n * sizeof(float));
  ops->rope(dqkv, pos, ATT_T, Hq, Hkv, D, r.theta, 1);  // backward = inverse rotation
  fd_problem p = {"rope", rope_fwd, &r, n, R, EPS_LINEAR};
  check_input(&p, "qkv", r.qkv, n, dqkv);
  free(r.qkv), free(R), free(dqkv);
}

// Long sequences (70 and 66 tokens) cross the backend's 64-row work blocks.
#define LONG_B 3
static const int32_t long_cu_seqlens[LONG_B + 1] = {0, 70, 72, 138};

typedef struct {
  const int32_t *cu_seqlens;
  int B, T, max_seqlen, Hq, Hkv, D, causal;
  float scale;
  float *qkv, *lse;
} attention_ctx;

static void attention_fwd(void *c, float *out) {
  attention_ctx *a = c;
  ops->attention_forward(out, a->lse, a->qkv, a->cu_seqlens, a->B, a->T, a->max_seqlen, a->Hq,
                         a->Hkv, a->D, a->causal, a->scale);
}

static void test_attention(int Hq, int Hkv, int D, int causal, int long_seqs) {
  const int32_t *cu = long_seqs ? long_cu_seqlens : att_cu_seqlens;
  int B = long_seqs ? LONG_B : ATT_B, T = cu[B], max_seqlen = 0;
  for (int b = 0; b < B; b++) max_seqlen = SN_MAX(max_seqlen, cu[b + 1] - cu[b]);
  size_t n_in = (size_t)T * (Hq + 2 * Hkv) * D, n_out = (size_t)T * Hq * D;
  attention_ctx a = {cu, B, T, max_seqlen, Hq, Hkv, D, causal, 1.0f / sqrtf((float)D),
                     random_array(n_in, 1.0f), random_array((size_t)Hq * T, 0)};
  float *R = random_array(n_out, 1.0f), *out = mallocCheck(n_out * sizeof(float));
  float *dqkv = nan_array(n_in);
  attention_fwd(&a, out);
  ops->attention_backward(dqkv, R, a.qkv, out, a.lse, cu, B, T, max_seqlen, Hq, Hkv, D, causal,
                          a.scale);
  char name[64];
  snprintf(name, sizeof name, "attention %s Hq=%d Hkv=%d%s", causal ? "causal" : "bidir", Hq, Hkv,
           long_seqs ? " long" : "");
  fd_problem p = {name, attention_fwd, &a, n_out, R, EPS_SMOOTH};
  check_input(&p, "qkv", a.qkv, n_in, dqkv);
  free(a.qkv), free(a.lse), free(R), free(out), free(dqkv);
}

// ---- activations --------------------------------------------------------------------------------
typedef struct {
  int T, I;
  float *x;
} act_ctx;

static void swiglu_fwd(void *c, float *out) {
  act_ctx *a = c;
  ops->swiglu_forward(out, a->x, a->T, a->I);
}

static void gelu_fwd(void *c, float *out) {
  act_ctx *a = c;
  ops->gelu_forward(out, a->x, (size_t)a->T * a->I);
}

static void test_activations(void) {
  enum { T = 5, I = 11 };
  act_ctx s = {T, I, random_array((size_t)T * 2 * I, 1.5f)};
  float *R = random_array((size_t)T * I, 1.0f), *dx = nan_array((size_t)T * 2 * I);
  ops->swiglu_backward(dx, R, s.x, T, I);
  fd_problem p = {"swiglu", swiglu_fwd, &s, (size_t)T * I, R, EPS_SMOOTH};
  check_input(&p, "gate_up", s.x, (size_t)T * 2 * I, dx);

  act_ctx g = {T, I, random_array((size_t)T * I, 1.5f)};
  ops->gelu_backward(dx, R, g.x, (size_t)T * I);
  fd_problem q = {"gelu", gelu_fwd, &g, (size_t)T * I, R, EPS_SMOOTH};
  check_input(&q, "x", g.x, (size_t)T * I, dx);
  free(s.x), free(g.x), free(R), free(dx);
}

// ---- pooling and l2norm -------------------------------------------------------------------------
typedef struct {
  int C;
  sn_pooling mode;
  float *hidden;
} pool_ctx;

static void pool_fwd(void *c, float *out) {
  pool_ctx *p = c;
  ops->pool_forward(out, p->hidden, att_cu_seqlens, ATT_B, ATT_T, p->C, p->mode);
}

static void test_pool(sn_pooling mode, const char *name) {
  enum { C = 6 };
  pool_ctx pc = {C, mode, random_array((size_t)ATT_T * C, 1.0f)};
  float *R = random_array((size_t)ATT_B * C, 1.0f), *dh = nan_array((size_t)ATT_T * C);
  ops->pool_backward(dh, R, att_cu_seqlens, ATT_B, ATT_T, C, mode);
  fd_problem p = {name, pool_fwd, &pc, (size_t)ATT_B * C, R, EPS_LINEAR};
  check_input(&p, "hidden", pc.hidden, (size_t)ATT_T * C, dh);
  free(pc.hidden), free(R), free(dh);
}

typedef struct {
  int B, C;
  float *x, *norm;
} l2_ctx;

static void l2norm_fwd(void *c, float *out) {
  l2_ctx *l = c;
  ops->l2norm_forward(out, l->norm, l->x, l->B, l->C);
}

static void test_l2norm(void) {
  enum { B = 4, C = 9 };
  l2_ctx l = {B, C, random_array((size_t)B * C, 1.0f), random_array(B, 0)};
  float *R = random_array((size_t)B * C, 1.0f), *out = mallocCheck((size_t)B * C * sizeof(float));
  float *dx = nan_array((size_t)B * C);
  l2norm_fwd(&l, out);
  ops->l2norm_backward(dx, R, out, l.norm, B, C);
  fd_problem p = {"l2norm", l2norm_fwd, &l, (size_t)B * C, R, EPS_SMOOTH};
  check_input(&p, "x", l.x, (size_t)B * C, dx);
  free(l.x), free(l.norm), free(R), free(out), free(dx);
}

// ---- losses -------------------------------------------------------------------------------------
typedef struct {
  int R, N, C;
  float *rows, *cols, *drows_scratch, *dcols_scratch;
  const int32_t *target;
  float inv_temp, scale;
} contrastive_ctx;

static void contrastive_fwd(void *c, float *out) {
  contrastive_ctx *k = c;
  out[0] = 0.0f;
  ops->contrastive_loss(out, k->drows_scratch, k->dcols_scratch, k->rows, k->cols, k->target, k->R,
                        k->N, k->C, k->inv_temp, k->scale);
}

static void test_contrastive(void) {
  enum { R = 5, N = 8, C = 6 };
  const int32_t target[R] = {0, 3, 1, 7, 3};
  contrastive_ctx k = {R, N, C, random_array((size_t)R * C, 0.5f), random_array((size_t)N * C, 0.5f),
                       random_array((size_t)R * C, 0), random_array((size_t)N * C, 0), target,
                       4.0f, 1.0f / R};
  float *drows = callocCheck((size_t)R * C, sizeof(float));
  float *dcols = callocCheck((size_t)N * C, sizeof(float));
  float loss = 0.0f, one = 1.0f;
  ops->contrastive_loss(&loss, drows, dcols, k.rows, k.cols, target, R, N, C, k.inv_temp, k.scale);
  fd_problem p = {"contrastive_loss", contrastive_fwd, &k, 1, &one, EPS_SMOOTH};
  check_input(&p, "rows", k.rows, (size_t)R * C, drows);
  check_input(&p, "cols", k.cols, (size_t)N * C, dcols);
  free(k.rows), free(k.cols), free(k.drows_scratch), free(k.dcols_scratch), free(drows),
      free(dcols);
}

typedef struct {
  int B, C;
  float *student, *teacher, *dscratch;
  float alpha, beta;
} distill_ctx;

static void distill_fwd(void *c, float *out) {
  distill_ctx *d = c;
  out[0] = out[1] = 0.0f;
  ops->distill_loss(out, d->dscratch, d->student, d->teacher, d->B, d->C, d->alpha, d->beta);
}

static void test_distill(void) {
  enum { B = 4, C = 7 };
  distill_ctx d = {B, C, random_array((size_t)B * C, 1.0f), random_array((size_t)B * C, 1.0f),
                   random_array((size_t)B * C, 0), 0.7f, 1.3f};
  float terms[2] = {0, 0}, ones[2] = {1, 1};  // L = alpha * mse + beta * cos term
  float *ds = nan_array((size_t)B * C);
  ops->distill_loss(terms, ds, d.student, d.teacher, B, C, d.alpha, d.beta);
  fd_problem p = {"distill_loss", distill_fwd, &d, 2, ones, EPS_SMOOTH};
  check_input(&p, "student", d.student, (size_t)B * C, ds);
  free(d.student), free(d.teacher), free(d.dscratch), free(ds);
}

typedef struct {
  int B, G, C;
  float *q, *d, *teacher, *dq_scratch, *dd_scratch;
  float inv_ts, inv_tt, scale;
} kl_ctx;

static void kl_fwd(void *c, float *out) {
  kl_ctx *k = c;
  out[0] = 0.0f;
  ops->kl_distill_loss(out, k->dq_scratch, k->dd_scratch, k->q, k->d, k->teacher, k->B, k->G, k->C,
                       k->inv_ts, k->inv_tt, k->scale);
}

// Finite differences of both inputs; the gradients accumulate onto what the buffers held.
static void test_kl_distill(int B, int G, int C) {
  kl_ctx k = {B, G, C, random_array((size_t)B * C, 0.5f), random_array((size_t)B * G * C, 0.5f),
              random_array((size_t)B * G, 2.0f), random_array((size_t)B * C, 0),
              random_array((size_t)B * G * C, 0), 3.0f, 0.5f, 1.0f / B};
  float *dq0 = random_array((size_t)B * C, 1.0f), *dd0 = random_array((size_t)B * G * C, 1.0f);
  float *dq = mallocCheck((size_t)B * C * sizeof(float)), *dd = mallocCheck((size_t)B * G * C * sizeof(float));
  memcpy(dq, dq0, (size_t)B * C * sizeof(float));
  memcpy(dd, dd0, (size_t)B * G * C * sizeof(float));
  float loss = 0.5f, one = 1.0f;  // accumulated onto 0.5
  ops->kl_distill_loss(&loss, dq, dd, k.q, k.d, k.teacher, B, G, C, k.inv_ts, k.inv_tt, k.scale);
  float fresh;
  kl_fwd(&k, &fresh);
  CHECK(fabsf(loss - 0.5f - fresh) <= 1e-6f * (1.0f + fabsf(fresh)), "kl_distill_loss: loss not accumulated");
  CHECK(fresh >= 0.0f, "KL %g < 0", fresh);
  for (int i = 0; i < B * C; i++) dq[i] -= dq0[i];
  for (int i = 0; i < B * G * C; i++) dd[i] -= dd0[i];
  char name[64];
  snprintf(name, sizeof name, "kl_distill_loss B=%d G=%d C=%d", B, G, C);
  fd_problem p = {name, kl_fwd, &k, 1, &one, EPS_SMOOTH};
  if (G > 1) {  // one candidate: the loss is 0 whatever the inputs, and so are the gradients
    check_input(&p, "q", k.q, (size_t)B * C, dq);
    check_input(&p, "d", k.d, (size_t)B * G * C, dd);
  } else {
    float zeros[B * G * C];
    memset(zeros, 0, sizeof zeros);
    CHECK(fresh == 0.0f && sn_max_abs_err(dq, zeros, (size_t)B * C) == 0.0 &&
              sn_max_abs_err(dd, zeros, (size_t)B * G * C) == 0.0,
          "one candidate: loss %g", fresh);
  }
  free(k.q), free(k.d), free(k.teacher), free(k.dq_scratch), free(k.dd_scratch);
  free(dq0), free(dd0), free(dq), free(dd);
}

// The loss value against numpy on fixed inputs. Reference (float64):
//   s = einsum('bc,bgc->bg', q, d.reshape(2, 3, 3)) / 0.5; lpt = log_softmax(t / 2); lps = log_softmax(s)
//   0.75 * sum(exp(lpt) * (lpt - lps))  = 1.7688736420668463
static void test_kl_distill_value(void) {
  enum { B = 2, G = 3, C = 3 };
  const float q[B * C] = {0.5f, -1.0f, 0.25f, 1.0f, 0.5f, -0.5f};
  const float d[B * G * C] = {0.2f, 0.1f, 0.3f, -0.4f, 0.6f, 0.0f, 1.0f, -1.0f, 0.5f,
                              0.3f, 0.3f, 0.3f, -0.2f, 0.9f, -0.7f, 0.6f, 0.0f, -0.1f};
  const float t[B * G] = {2.0f, 0.5f, -1.0f, 0.0f, 1.5f, 3.0f};
  const double want = 1.7688736420668463;
  float dq[B * C] = {0}, dd[B * G * C] = {0}, loss = 0.0f;
  ops->kl_distill_loss(&loss, dq, dd, q, d, t, B, G, C, 1.0f / 0.5f, 1.0f / 2.0f, 0.75f);
  double err = fabs(loss - want) / want;
  printf("  %-44s rel err %.2e\n", "kl_distill_loss vs numpy", err);
  CHECK(err < 1e-6, "kl_distill_loss %.9g, numpy %.9g", loss, want);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);  // keep the report in order with stderr's FAIL lines
  ops = sn_ops_cpu();
  sn_test_rng_seed(&rng, 20251124);
  printf("finite-difference gradient checks (tolerance %.0e on the vector rel err)\n", GRAD_TOL);
  test_embedding();
  test_norm("rmsnorm", 0, 0);
  test_norm("add_rmsnorm (rmsnorm_backward)", 0, 1);
  test_norm("layernorm", 1, 0);
  test_norm("add_layernorm (layernorm_backward)", 1, 1);
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) test_matmul(ta, tb);
  test_rope();
  test_attention(4, 2, HEAD_DIM, 1, 0);
  test_attention(4, 2, HEAD_DIM, 0, 0);
  test_attention(2, 2, HEAD_DIM, 1, 0);
  test_attention(2, 2, HEAD_DIM, 0, 0);
  test_attention(2, 1, 4, 1, 1);
  test_attention(2, 1, 4, 0, 1);
  test_activations();
  test_pool(SN_POOL_LAST, "pool last");
  test_pool(SN_POOL_MEAN, "pool mean");
  test_pool(SN_POOL_FIRST, "pool first");
  test_l2norm();
  test_contrastive();
  test_distill();
  test_kl_distill(3, 4, 5);
  test_kl_distill(2, 1, 3);
  test_kl_distill(1, 7, 2);
  test_kl_distill_value();
  return sn_test_finish("test_ops_grad");
}
