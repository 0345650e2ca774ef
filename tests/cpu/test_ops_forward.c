// Forward results of the CPU ops against naive double-precision references, the AdamW step against
// its scalar formula, rope inverse∘forward = identity, determinism (bitwise, run to run and across
// OpenMP thread counts), the backend registry, and a 512^3 matmul timing (reported, not checked:
// CI machines are shared).
#include <math.h>
#include <omp.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "adamw_math.h"
#include "common.h"
#include "ops.h"
#include "safetensors.h"
#include "test_util.h"

#define FWD_TOL 2e-6     // fp32 op vs double reference, relative error of the output vector
#define MATMUL_TOL 1e-5  // K-long fp32 dot products
#define ROPE_TOL 1e-4    // angles up to ~1000 rad are formed in fp32, as transformers does
#define TIMING_SIZE 512

static const sn_ops *ops;
static sn_test_rng rng;

static float *random_array(size_t n, float stddev) {
  float *x = mallocCheck(SN_MAX(n, 1) * sizeof(float));
  sn_test_fill_normal(&rng, x, n, stddev);
  return x;
}

static float *copy_array(const float *src, size_t n) {
  float *x = mallocCheck(SN_MAX(n, 1) * sizeof(float));
  memcpy(x, src, n * sizeof(float));
  return x;
}

// Relative error of fp32 `got` against a double reference.
static double rel_err_f64(const float *got, const double *want, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (isnan(got[i])) return INFINITY;
    double d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  return sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
}

static void expect_close(const char *what, const float *got, const double *want, size_t n,
                         double tol) {
  double err = rel_err_f64(got, want, n);
  printf("  %-44s rel err %.2e\n", what, err);
  CHECK(err < tol, "%s: rel err %.3e >= %.1e", what, err, tol);
}

// ---- matmul -------------------------------------------------------------------------------------
static double op_a(const float *A, int M, int K, int trans_a, int i, int k) {
  return trans_a ? A[(size_t)k * M + i] : A[(size_t)i * K + k];
}
static double op_b(const float *B, int K, int N, int trans_b, int k, int j) {
  return trans_b ? B[(size_t)j * K + k] : B[(size_t)k * N + j];
}

static void test_matmul_case(int M, int N, int K, int trans_a, int trans_b, int with_bias,
                             int accumulate) {
  float *A = random_array((size_t)M * K, 1.0f), *B = random_array((size_t)K * N, 1.0f);
  float *bias = with_bias ? random_array(N, 1.0f) : NULL;
  float *C = random_array((size_t)M * N, 1.0f);
  double *want = mallocCheck((size_t)M * N * sizeof(double));
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double sum = accumulate ? C[(size_t)i * N + j] : 0.0;
      if (bias) sum += bias[j];
      for (int k = 0; k < K; k++)
        sum += op_a(A, M, K, trans_a, i, k) * op_b(B, K, N, trans_b, k, j);
      want[(size_t)i * N + j] = sum;
    }
  ops->matmul(C, A, B, bias, M, N, K, trans_a, trans_b, accumulate);
  char what[96];
  snprintf(what, sizeof what, "matmul %dx%dx%d %c%c%s%s", M, N, K, trans_a ? 'T' : 'N',
           trans_b ? 'T' : 'N', with_bias ? " +bias" : "", accumulate ? " +=C" : "");
  expect_close(what, C, want, (size_t)M * N, MATMUL_TOL);
  free(A), free(B), free(bias), free(C), free(want);
}

static void test_matmul(void) {
  // tiny, odd edges, several C tiles and K slices (tile 96 x 256, K slice 256), K = 0
  const int shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {37, 53, 29}, {200, 300, 270}, {5, 40, 600},
                           {4, 3, 0}};
  for (size_t s = 0; s < SN_ARRAY_LEN(shapes); s++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        int variant = (int)(s + 2 * ta + tb) % 4;  // spread bias / accumulate over the cases
        test_matmul_case(shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, variant & 1,
                         variant >> 1);
      }
  test_matmul_case(64, 48, 96, 0, 1, 1, 1);
}

// ---- attention ----------------------------------------------------------------------------------
// Sequences of 1, 17, 140 and 3 tokens (140: several of the backend's 64-row blocks).
#define ATT_B 4
static const int32_t att_cu_seqlens[ATT_B + 1] = {0, 1, 18, 158, 161};
#define ATT_T 161
#define ATT_MAX_SEQLEN 140

// Full softmax over each sequence in double, with the causal mask and GQA head mapping.
static void attention_reference(double *out, double *lse, const float *qkv, int Hq, int Hkv, int D,
                                int causal, double scale) {
  int row_len = (Hq + 2 * Hkv) * D, group = Hq / Hkv;
  double *p = mallocCheck(ATT_MAX_SEQLEN * sizeof(double));
  for (int b = 0; b < ATT_B; b++) {
    int t0 = att_cu_seqlens[b], t1 = att_cu_seqlens[b + 1];
    for (int h = 0; h < Hq; h++) {
      int g = h / group;
      for (int i = t0; i < t1; i++) {
        int kend = causal ? i + 1 : t1;
        double max_s = -INFINITY, sum = 0;
        for (int j = t0; j < kend; j++) {
          double s = 0;
          for (int d = 0; d < D; d++)
            s += (double)qkv[(size_t)i * row_len + h * D + d] *
                 qkv[(size_t)j * row_len + (Hq + g) * D + d];
          p[j - t0] = s * scale;
          max_s = fmax(max_s, p[j - t0]);
        }
        for (int j = t0; j < kend; j++) sum += exp(p[j - t0] - max_s);
        lse[(size_t)h * ATT_T + i] = max_s + log(sum);
        for (int d = 0; d < D; d++) {
          double o = 0;
          for (int j = t0; j < kend; j++)
            o += exp(p[j - t0] - max_s) / sum * qkv[(size_t)j * row_len + (Hq + Hkv + g) * D + d];
          out[(size_t)i * Hq * D + h * D + d] = o;
        }
      }
    }
  }
  free(p);
}

static void test_attention(int Hq, int Hkv, int causal) {
  enum { D = 16 };
  size_t n_in = (size_t)ATT_T * (Hq + 2 * Hkv) * D, n_out = (size_t)ATT_T * Hq * D;
  float scale = 1.0f / sqrtf((float)D);
  float *qkv = random_array(n_in, 1.0f), *out = mallocCheck(n_out * sizeof(float));
  float *lse = mallocCheck((size_t)Hq * ATT_T * sizeof(float));
  double *want = mallocCheck(n_out * sizeof(double));
  double *want_lse = mallocCheck((size_t)Hq * ATT_T * sizeof(double));
  attention_reference(want, want_lse, qkv, Hq, Hkv, D, causal, scale);
  ops->attention_forward(out, lse, qkv, att_cu_seqlens, ATT_B, ATT_T, ATT_MAX_SEQLEN, Hq, Hkv, D,
                         causal, scale);
  char what[96];
  snprintf(what, sizeof what, "attention %s Hq=%d Hkv=%d out", causal ? "causal" : "bidir", Hq,
           Hkv);
  expect_close(what, out, want, n_out, FWD_TOL);
  snprintf(what, sizeof what, "attention %s Hq=%d Hkv=%d lse", causal ? "causal" : "bidir", Hq,
           Hkv);
  expect_close(what, lse, want_lse, (size_t)Hq * ATT_T, FWD_TOL);
  free(qkv), free(out), free(lse), free(want), free(want_lse);
}

// ---- rope ---------------------------------------------------------------------------------------
static void test_rope(void) {
  enum { T = 6, Hq = 4, Hkv = 2, D = 32 };
  const int32_t pos[T] = {0, 1, 2, 77, 500, 1023};
  const float theta = 1e6f;  // Qwen2's base
  int row_len = (Hq + 2 * Hkv) * D, half = D / 2;
  size_t n = (size_t)T * row_len;
  float *x = random_array(n, 1.0f), *y = copy_array(x, n);
  double *want = mallocCheck(n * sizeof(double));
  for (int t = 0; t < T; t++)
    for (int h = 0; h < Hq + 2 * Hkv; h++)
      for (int i = 0; i < half; i++) {
        size_t a = (size_t)t * row_len + (size_t)h * D + i, b = a + half;
        double angle = pos[t] * pow(theta, -2.0 * i / D);
        if (h >= Hq + Hkv) angle = 0;  // v heads are not rotated
        want[a] = x[a] * cos(angle) - x[b] * sin(angle);
        want[b] = x[b] * cos(angle) + x[a] * sin(angle);
      }
  ops->rope(y, pos, T, Hq, Hkv, D, theta, 0);
  expect_close("rope forward vs rotate-half formula", y, want, n, ROPE_TOL);
  int v_untouched = 1;
  for (int t = 0; t < T; t++) {
    size_t v0 = (size_t)t * row_len + (size_t)(Hq + Hkv) * D;
    v_untouched &= memcmp(x + v0, y + v0, (size_t)Hkv * D * sizeof(float)) == 0;
  }
  CHECK(v_untouched, "rope changed the v heads");
  ops->rope(y, pos, T, Hq, Hkv, D, theta, 1);
  double err = sn_rel_err(y, x, n);
  printf("  %-44s rel err %.2e\n", "rope inverse(forward(x)) = x", err);
  CHECK(err < FWD_TOL, "rope inverse∘forward: rel err %.3e", err);
  free(x), free(y), free(want);
}

// ---- norms, activations, embedding, pooling -----------------------------------------------------
static void test_norms(void) {
  enum { T = 9, C = 70 };
  const float eps = 1e-6f;
  size_t TC = (size_t)T * C;
  float *a = random_array(TC, 1.0f), *b = random_array(TC, 1.0f), *w = random_array(C, 1.0f);
  float *bias = random_array(C, 1.0f), *out = mallocCheck(TC * sizeof(float));
  float *res = mallocCheck(TC * sizeof(float)), *mean = mallocCheck(T * sizeof(float));
  float *rstd = mallocCheck(T * sizeof(float));
  for (size_t i = 0; i < TC; i++) a[i] += 3.0f;  // an offset: LayerNorm must centre it
  double *rms_want = mallocCheck(TC * sizeof(double)), *ln_want = mallocCheck(TC * sizeof(double));
  double *sum_want = mallocCheck(TC * sizeof(double));
  double *ln_sum_want = mallocCheck(TC * sizeof(double)), *rms_sum_want = mallocCheck(TC * sizeof(double));
  for (int pass = 0; pass < 2; pass++) {  // pass 0: x = a; pass 1: x = a + b (fused variants)
    for (int t = 0; t < T; t++) {
      double ss = 0, s = 0, var = 0, x[C];
      for (int c = 0; c < C; c++) {
        size_t i = (size_t)t * C + c;
        x[c] = pass ? (double)(a[i] + b[i]) : a[i];
        if (pass) sum_want[i] = x[c];
        ss += x[c] * x[c];
        s += x[c];
      }
      double mu = s / C;
      for (int c = 0; c < C; c++) var += (x[c] - mu) * (x[c] - mu);
      for (int c = 0; c < C; c++) {
        size_t i = (size_t)t * C + c;
        double rms = x[c] / sqrt(ss / C + eps) * w[c];
        double ln = (x[c] - mu) / sqrt(var / C + eps) * w[c] + bias[c];
        if (pass) rms_sum_want[i] = rms, ln_sum_want[i] = ln;
        else rms_want[i] = rms, ln_want[i] = ln;
      }
    }
  }
  ops->rmsnorm_forward(out, rstd, a, w, T, C, eps);
  expect_close("rmsnorm", out, rms_want, TC, FWD_TOL);
  ops->layernorm_forward(out, mean, rstd, a, w, bias, T, C, eps);
  expect_close("layernorm", out, ln_want, TC, FWD_TOL);
  ops->add_rmsnorm_forward(res, out, rstd, a, b, w, T, C, eps);
  expect_close("add_rmsnorm out", out, rms_sum_want, TC, FWD_TOL);
  expect_close("add_rmsnorm residual", res, sum_want, TC, FWD_TOL);
  ops->add_layernorm_forward(res, out, mean, rstd, a, b, w, bias, T, C, eps);
  expect_close("add_layernorm out", out, ln_sum_want, TC, FWD_TOL);
  expect_close("add_layernorm residual", res, sum_want, TC, FWD_TOL);
  free(a), free(b), free(w), free(bias), free(out), free(res), free(mean), free(rstd);
  free(rms_want), free(ln_want), free(sum_want), free(ln_sum_want), free(rms_sum_want);
}

static void test_activations(void) {
  enum { T = 6, I = 33 };
  float *gu = random_array((size_t)T * 2 * I, 2.0f), *out = mallocCheck((size_t)T * 2 * I * 4);
  double *want = mallocCheck((size_t)T * 2 * I * sizeof(double));
  gu[0] = 100.0f, gu[1] = -100.0f;  // saturated gates: no overflow, no NaN
  for (int t = 0; t < T; t++)
    for (int i = 0; i < I; i++) {
      double g = gu[(size_t)t * 2 * I + i], u = gu[(size_t)t * 2 * I + I + i];
      want[(size_t)t * I + i] = g / (1 + exp(-g)) * u;
    }
  ops->swiglu_forward(out, gu, T, I);
  expect_close("swiglu", out, want, (size_t)T * I, FWD_TOL);
  size_t n = (size_t)T * 2 * I;
  for (size_t i = 0; i < n; i++) want[i] = 0.5 * gu[i] * (1 + erf(gu[i] / sqrt(2.0)));
  ops->gelu_forward(out, gu, n);
  expect_close("gelu (erf)", out, want, n, FWD_TOL);
  free(gu), free(out), free(want);
}

static void test_embedding_and_elementwise(void) {
  enum { T = 5, C = 7, V = 4 };
  const int32_t ids[T] = {2, 0, 2, 3, 1};
  float *table = random_array((size_t)V * C, 1.0f), *out = random_array((size_t)T * C, 1.0f);
  double *want = mallocCheck((size_t)T * C * sizeof(double));
  for (int t = 0; t < T; t++)
    for (int c = 0; c < C; c++) want[t * C + c] = out[t * C + c] + table[ids[t] * C + c];
  ops->embedding_forward(out, ids, table, T, C, 1);
  expect_close("embedding_forward accumulate", out, want, (size_t)T * C, FWD_TOL);
  for (int t = 0; t < T; t++)
    for (int c = 0; c < C; c++) want[t * C + c] = table[ids[t] * C + c];
  ops->embedding_forward(out, ids, table, T, C, 0);
  expect_close("embedding_forward", out, want, (size_t)T * C, FWD_TOL);

  size_t n = (size_t)T * C;
  float *x = random_array(n, 1.0f), *y = random_array(n, 1.0f);
  for (size_t i = 0; i < n; i++) want[i] = (double)x[i] + y[i];
  ops->add(x, x, y, n);  // out aliasing a
  expect_close("add (in place)", x, want, n, FWD_TOL);
  for (size_t i = 0; i < n; i++) want[i] = (double)x[i] * -0.25;
  ops->scale_f32(x, -0.25f, n);
  expect_close("scale_f32", x, want, n, FWD_TOL);

  // axpy_2d: columns [2, 2 + w) of x (T, C) += 0.5 * y's first w columns (row stride C), then
  // written (accumulate 0) into a packed (T, w) block
  const int w = 3, col0 = 2;
  for (size_t i = 0; i < n; i++) want[i] = x[i];
  for (int t = 0; t < T; t++)
    for (int c = 0; c < w; c++) want[t * C + col0 + c] += 0.5 * y[t * C + c];
  ops->axpy_2d(x + col0, C, y, C, T, w, 0.5f, 1);
  expect_close("axpy_2d accumulate (column slice)", x, want, n, FWD_TOL);
  float *packed = random_array((size_t)T * w, 1.0f);
  for (int t = 0; t < T; t++)
    for (int c = 0; c < w; c++) want[t * w + c] = -2.0 * x[t * C + col0 + c];
  ops->axpy_2d(packed, w, x + col0, C, T, w, -2.0f, 0);
  expect_close("axpy_2d write (gather)", packed, want, (size_t)T * w, FWD_TOL);
  free(packed);

  // dropout: kept elements scaled by 1/(1-p), about 1-p of them kept, the same mask for the same
  // key (written, then accumulated), another mask for another key
  {
    const size_t nd = 1 << 14;
    const float p = 0.25f;
    const uint64_t key = 77;
    float *xd = random_array(nd, 1.0f), *o1 = random_array(nd, 1.0f), *o2 = random_array(nd, 1.0f);
    ops->dropout(o1, xd, nd, key, p, 0);
    size_t kept = 0, bad = 0, same = 0;
    for (size_t i = 0; i < nd; i++) {
      if (o1[i] != 0.0f) kept++, bad += fabsf(o1[i] - xd[i] / (1.0f - p)) > 1e-6f * fabsf(o1[i]);
      o2[i] = o1[i];
    }
    ops->dropout(o2, xd, nd, key, p, 1);  // o2 = 2 * o1
    for (size_t i = 0; i < nd; i++) same += o2[i] == 2.0f * o1[i];
    double frac = (double)kept / nd;
    printf("  %-44s kept %.3f (want %.3f)\n", "dropout", frac, 1.0 - p);
    CHECK(bad == 0 && fabs(frac - (1.0 - p)) < 0.02 && same == nd, "dropout: %zu badly scaled, kept %.3f, "
          "%zu of %zu equal on the same key", bad, frac, same, nd);
    ops->dropout(o2, xd, nd, key + 1, p, 0);
    size_t differ = 0;
    for (size_t i = 0; i < nd; i++) differ += (o2[i] == 0.0f) != (o1[i] == 0.0f);
    CHECK(differ > nd / 10, "dropout: another key gives nearly the same mask (%zu of %zu differ)", differ, nd);
    free(xd), free(o1), free(o2);
  }

  float ss = 1.5f;
  double ss_want = 1.5;
  for (size_t i = 0; i < n; i++) ss_want += (double)y[i] * y[i];
  ops->sum_squares(&ss, y, n);
  double ss_err = fabs(ss - ss_want) / ss_want;
  printf("  %-44s rel err %.2e\n", "sum_squares (accumulating into out[0])", ss_err);
  CHECK(ss_err < FWD_TOL, "sum_squares: %g, want %g", ss, ss_want);

  float *dev = ops->alloc(n * sizeof(float)), *back = mallocCheck(n * sizeof(float));
  ops->upload_f32(dev, y, n);
  ops->memset_zero(back, n * sizeof(float));
  ops->download_f32(back, dev, n);
  CHECK(memcmp(back, y, n * sizeof(float)) == 0, "upload_f32/download_f32 round trip differs");
  ops->memset_zero(dev, n * sizeof(float));
  int zero = 1;
  for (size_t i = 0; i < n; i++) zero &= dev[i] == 0.0f;
  CHECK(zero, "memset_zero left non-zero bytes");
  ops->free(dev);
  free(table), free(out), free(want), free(x), free(y), free(back);
}

static void test_pool_and_l2norm(void) {
  enum { C = 5 };
  const sn_pooling modes[3] = {SN_POOL_LAST, SN_POOL_MEAN, SN_POOL_FIRST};
  const char *names[3] = {"pool last", "pool mean", "pool first"};
  float *hidden = random_array((size_t)ATT_T * C, 1.0f), *out = mallocCheck(ATT_B * C * 4);
  double want[ATT_B * C];
  for (int m = 0; m < 3; m++) {
    for (int b = 0; b < ATT_B; b++) {
      int t0 = att_cu_seqlens[b], t1 = att_cu_seqlens[b + 1];
      for (int c = 0; c < C; c++) {
        double v = 0;
        if (modes[m] == SN_POOL_LAST) v = hidden[(t1 - 1) * C + c];
        if (modes[m] == SN_POOL_FIRST) v = hidden[t0 * C + c];
        if (modes[m] == SN_POOL_MEAN) {
          for (int t = t0; t < t1; t++) v += hidden[t * C + c];
          v /= t1 - t0;
        }
        want[b * C + c] = v;
      }
    }
    ops->pool_forward(out, hidden, att_cu_seqlens, ATT_B, ATT_T, C, modes[m]);
    expect_close(names[m], out, want, ATT_B * C, FWD_TOL);
  }
  // l2norm, with an all-zero row that must come out zero (the eps floor), not NaN
  float *x = random_array(ATT_B * C, 1.0f), norm[ATT_B], y[ATT_B * C];
  for (int c = 0; c < C; c++) x[2 * C + c] = 0.0f;
  for (int b = 0; b < ATT_B; b++) {
    double ss = 0;
    for (int c = 0; c < C; c++) ss += (double)x[b * C + c] * x[b * C + c];
    for (int c = 0; c < C; c++) want[b * C + c] = ss > 0 ? x[b * C + c] / sqrt(ss) : 0.0;
  }
  ops->l2norm_forward(y, norm, x, ATT_B, C);
  expect_close("l2norm (with a zero row)", y, want, ATT_B * C, FWD_TOL);
  free(hidden), free(out), free(x);
}

// ---- losses -------------------------------------------------------------------------------------
static void test_contrastive(void) {
  enum { R = 6, N = 10, C = 8 };
  const int32_t target[R] = {0, 1, 2, 9, 4, 4};
  const float inv_temp = 20.0f, scale = 1.0f / R, start = 0.5f;
  float *rows = random_array(R * C, 0.4f), *cols = random_array(N * C, 0.4f);
  double want = start;
  for (int r = 0; r < R; r++) {  // direct log-softmax of each row
    double logits[N], max_l = -INFINITY, sum = 0;
    for (int j = 0; j < N; j++) {
      double d = 0;
      for (int c = 0; c < C; c++) d += (double)rows[r * C + c] * cols[j * C + c];
      logits[j] = d * inv_temp;
      max_l = fmax(max_l, logits[j]);
    }
    for (int j = 0; j < N; j++) sum += exp(logits[j] - max_l);
    want -= scale * (logits[target[r]] - max_l - log(sum));
  }
  float loss = start;
  float *dr0 = callocCheck(R * C, 4), *dc0 = callocCheck(N * C, 4);
  ops->contrastive_loss(&loss, dr0, dc0, rows, cols, target, R, N, C, inv_temp, scale);
  double err = fabs(loss - want) / fabs(want);
  printf("  %-44s rel err %.2e\n", "contrastive_loss vs direct log-softmax", err);
  CHECK(err < FWD_TOL, "contrastive_loss %.7g, want %.7g", loss, want);
  // grads accumulate: a second call on the same buffers doubles them
  float *dr1 = copy_array(dr0, R * C);
  ops->contrastive_loss(&loss, dr1, dc0, rows, cols, target, R, N, C, inv_temp, scale);
  double doubled[R * C];
  for (int i = 0; i < R * C; i++) doubled[i] = 2.0 * dr0[i];
  expect_close("contrastive_loss drows accumulates", dr1, doubled, R * C, FWD_TOL);
  free(rows), free(cols), free(dr0), free(dc0), free(dr1);
}

static void test_distill(void) {
  enum { B = 5, C = 12 };
  const float alpha = 0.3f, beta = 2.0f;
  float *s = random_array(B * C, 1.0f), *t = random_array(B * C, 1.0f), ds[B * C];
  double mse = 0, cos_term = 0;
  for (int b = 0; b < B; b++) {
    double st = 0, ss = 0, tt = 0;
    for (int c = 0; c < C; c++) {
      double x = s[b * C + c], y = t[b * C + c];
      mse += (x - y) * (x - y);
      st += x * y, ss += x * x, tt += y * y;
    }
    cos_term += 1 - st / sqrt(ss * tt);
  }
  double want[2] = {1.0 + alpha * mse / (B * C), -1.0 + beta * cos_term / B};
  float terms[2] = {1.0f, -1.0f};
  ops->distill_loss(terms, ds, s, t, B, C, alpha, beta);
  expect_close("distill_loss terms (accumulated)", terms, want, 2, FWD_TOL);
  free(s), free(t);
}

// ---- optimizer ----------------------------------------------------------------------------------
// The span holding element i (-1: none).
static int span_of_element(const sn_param_span *spans, int nspans, size_t i) {
  int found = -1;
  for (int s = 0; s < nspans; s++)
    if (i >= spans[s].offset && i < spans[s].offset + spans[s].count) found = s;
  return found;
}

// One element's AdamW step in double: want = {weight, m, v} after it.
static void adamw_reference(double w, double m, double v, double grad, double wd, const sn_adamw_hparams *hp,
                            double want[3]) {
  const double g = grad * hp->grad_scale;
  want[1] = hp->beta1 * m + (1 - hp->beta1) * g;
  want[2] = hp->beta2 * v + (1 - hp->beta2) * g * g;
  const double m_hat = want[1] / (1 - pow(hp->beta1, hp->step)), v_hat = want[2] / (1 - pow(hp->beta2, hp->step));
  want[0] = w - hp->lr * (m_hat / (sqrt(v_hat) + hp->eps) + wd * w);
}

// n elements; spans [0, 0.4n) with weight decay and [0.5n, 0.8n) without; the rest untouched.
static void test_adamw(int separate_master, size_t n) {
  const sn_param_span spans[2] = {{0, n * 4 / 10, 0.1f}, {n / 2, n * 8 / 10 - n / 2, 0.0f}};
  sn_adamw_hparams hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step = 3,
                         .grad_scale = 0.5f};
  float *params = random_array(n, 1.0f), *grads = random_array(n, 1.0f);
  float *m = random_array(n, 0.1f), *v = random_array(n, 0.1f);
  for (size_t i = 0; i < n; i++) v[i] = v[i] * v[i];  // second moments are >= 0
  float *master = separate_master ? copy_array(params, n) : params;
  if (separate_master)
    for (size_t i = 0; i < n; i++) params[i] = NAN;  // must be overwritten inside the spans
  double *want_w = mallocCheck(n * sizeof(double)), *want_m = mallocCheck(n * sizeof(double));
  double *want_v = mallocCheck(n * sizeof(double));
  int *span_of = mallocCheck(n * sizeof(int));
  for (size_t i = 0; i < n; i++) {
    const int s = span_of[i] = span_of_element(spans, 2, i);
    want_w[i] = master[i], want_m[i] = m[i], want_v[i] = v[i];
    if (s < 0) continue;
    double want[3];
    adamw_reference(master[i], m[i], v[i], grads[i], spans[s].weight_decay, &hp, want);
    want_w[i] = want[0], want_m[i] = want[1], want_v[i] = want[2];
  }
  ops->adamw(params, master, grads, m, v, spans, 2, &hp);
  char what[96];
  const char *tag = separate_master ? "separate master" : "master == params";
  snprintf(what, sizeof what, "adamw n=%zu (%s) master", n, tag);
  expect_close(what, master, want_w, n, FWD_TOL);
  snprintf(what, sizeof what, "adamw n=%zu (%s) m", n, tag);
  expect_close(what, m, want_m, n, FWD_TOL);
  snprintf(what, sizeof what, "adamw n=%zu (%s) v", n, tag);
  expect_close(what, v, want_v, n, FWD_TOL);
  if (separate_master) {
    int copied = 1;
    for (size_t i = 0; i < n; i++)
      copied &= span_of[i] >= 0 ? params[i] == master[i] : isnan(params[i]);
    CHECK(copied, "adamw: params must equal master inside the spans and be untouched outside");
    free(master);
  }
  free(params), free(grads), free(m), free(v), free(want_w), free(want_m), free(want_v), free(span_of);
}

// ---- the bf16 optimizer state (adamw_math.h) ----------------------------------------------------
static float bf16_value(float x) { return sn_bf16_to_f32(sn_f32_to_bf16(x)); }  // rounded to nearest bf16
static int is_bf16_value(float x) { return bf16_value(x) == x; }
static float *random_bf16_array(size_t n, float stddev, int squared) {
  float *a = random_array(n, stddev);
  for (size_t i = 0; i < n; i++) a[i] = bf16_value(squared ? a[i] * a[i] : a[i]);
  return a;
}

// One step of the bf16 state over spans with a gap: every updated weight and moment is a bf16
// value within one bf16 step of the exact (double) update, the rest untouched; the draws follow
// the element's place in the whole buffer, so two slices updated apart (as ZeRO ranks do) give the
// bits of one update over the whole.
static void test_adamw_bf16_state(size_t n) {
  const sn_param_span spans[2] = {{0, n * 4 / 10, 0.1f}, {n / 2, n * 8 / 10 - n / 2, 0.0f}};
  sn_adamw_hparams hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step = 3, .grad_scale = 0.5f,
                         .state_bf16 = 1, .round_key = sn_rng_stream_key(11, 3)};
  float *w = random_bf16_array(n, 1.0f, 0), *m = random_bf16_array(n, 0.1f, 0), *v = random_bf16_array(n, 0.1f, 1);
  float *g = random_array(n, 1.0f);
  float *w0 = copy_array(w, n), *m0 = copy_array(m, n), *v0 = copy_array(v, n);
  ops->adamw(w, NULL, g, m, v, spans, 2, &hp);
  size_t bad = 0, changed = 0;
  for (size_t i = 0; i < n; i++) {
    const int s = span_of_element(spans, 2, i);
    if (s < 0) {
      bad += w[i] != w0[i] || m[i] != m0[i] || v[i] != v0[i];
      continue;
    }
    const double gs = (double)g[i] * hp.grad_scale;
    double want[3];
    adamw_reference(w0[i], m0[i], v0[i], g[i], spans[s].weight_decay, &hp, want);
    const double got[3] = {w[i], m[i], v[i]}, want_w = want[0];
    // What the fp32 sums before the rounding may be off by: a few fp32 steps of their terms (the
    // sum of m cancels where the gradient undoes the moment).
    const double terms[3] = {fabs(w0[i]) + fabs(want_w - w0[i]), hp.beta1 * fabs(m0[i]) + (1 - hp.beta1) * fabs(gs),
                             hp.beta2 * v0[i] + (1 - hp.beta2) * gs * gs};
    for (int k = 0; k < 3; k++) {
      // a bf16 step is 2^-7 of the value at most
      const double tol = 0x1p-7 * fmax(fabs(want[k]), fabs(got[k])) + 4 * 0x1p-24 * terms[k];
      bad += !is_bf16_value((float)got[k]) || fabs(got[k] - want[k]) > tol;
    }
    changed += w[i] != w0[i];
  }
  CHECK(bad == 0, "adamw bf16 state n=%zu: %zu values not bf16, past one bf16 step of the exact update, or "
        "changed outside the spans", n, bad);
  CHECK(changed > 0, "adamw bf16 state n=%zu: no weight changed", n);

  // Two slices with their index_base, against the whole above.
  const size_t h = n * 45 / 100;  // inside the gap between the spans
  float *w2 = copy_array(w0, n), *m2 = copy_array(m0, n), *v2 = copy_array(v0, n);
  const sn_param_span lo_span = spans[0];
  const sn_param_span hi_span = {spans[1].offset - h, spans[1].count, spans[1].weight_decay};
  ops->adamw(w2, NULL, g, m2, v2, &lo_span, 1, &hp);
  hp.index_base = h;
  ops->adamw(w2 + h, NULL, g + h, m2 + h, v2 + h, &hi_span, 1, &hp);
  size_t diff = sn_test_count_bit_diffs(w, w2, n) + sn_test_count_bit_diffs(m, m2, n) +
                sn_test_count_bit_diffs(v, v2, n);
  CHECK(diff == 0, "adamw bf16 state n=%zu: two slices differ from the whole in %zu values", n, diff);
  free(w), free(m), free(v), free(g), free(w0), free(m0), free(v0), free(w2), free(m2), free(v2);
}

// Stochastic rounding keeps updates that rounding to nearest drops: x = 1 + 0.3 step rounds up
// for 30% of the draws; and 100 AdamW steps of lr 1e-6 on weights of 0.01 (each update a sixtieth
// of a bf16 step, which rounding to nearest would lose every time) move the weights by 100 lr on
// average.
static void test_stochastic_rounding(void) {
  enum { DRAWS = 100000, N = 4096, STEPS = 100 };
  const float x = 1.0f + 0.3f * 0x1p-7f;
  int up = 0;
  for (uint64_t j = 0; j < DRAWS; j++) {
    float r = sn_bf16_round_stochastic(x, (uint32_t)sn_mix64(j * SN_GOLDEN_GAMMA));
    CHECK(r == 1.0f || r == 1.0f + 0x1p-7f, "stochastic rounding of %.9g gave %.9g", x, r);
    up += r > 1.0f;
  }
  CHECK(fabs(up / (double)DRAWS - 0.3) < 0.005, "stochastic rounding: %d of %d draws up, expected 30%%", up, DRAWS);
  CHECK(sn_bf16_round_stochastic(-x, 0xFFFFu) == -(1.0f + 0x1p-7f) && sn_bf16_round_stochastic(-x, 0) == -1.0f,
        "stochastic rounding of a negative value moves its magnitude");
  CHECK(isinf(sn_bf16_round_stochastic(INFINITY, 0xFFFFu)) && isnan(sn_bf16_round_stochastic(NAN, 0)),
        "stochastic rounding keeps infinities and NaN");

  const float w_start = bf16_value(0.01f), lr = 1e-6f;
  CHECK(bf16_value(w_start - lr) == w_start, "the test's update must be below half a bf16 step");
  float *w = mallocCheck(N * sizeof(float)), *m = callocCheck(N, sizeof(float)), *v = callocCheck(N, sizeof(float));
  float *g = mallocCheck(N * sizeof(float));
  for (int i = 0; i < N; i++) w[i] = w_start, g[i] = 1.0f;
  const sn_param_span span = {0, N, 0.0f};
  for (int step = 1; step <= STEPS; step++) {
    sn_adamw_hparams hp = {.lr = lr, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .step = step, .grad_scale = 1.0f,
                           .state_bf16 = 1, .round_key = sn_rng_stream_key(5, (uint64_t)step)};
    ops->adamw(w, NULL, g, m, v, &span, 1, &hp);
  }
  double moved = 0;
  for (int i = 0; i < N; i++) moved += (double)w_start - w[i];
  moved /= N;
  printf("  bf16 state: %d steps of lr %g moved the weights by %.4g on average (%d steps x lr = %.4g)\n", STEPS,
         (double)lr, moved, STEPS, STEPS * (double)lr);
  CHECK(fabs(moved / (STEPS * (double)lr) - 1) < 0.05, "bf16 state: weights moved %.4g on average over %d steps, "
        "expected %.4g (lr %g a step)", moved, STEPS, STEPS * (double)lr, (double)lr);
  free(w), free(m), free(v), free(g);
}

// ---- determinism --------------------------------------------------------------------------------
// A small training-like pipeline, big enough that every op runs on several threads (past the
// backend's thresholds for threading); returns every output it wrote.
typedef struct {
  float *buf;
  size_t n;
} snapshot;

static snapshot run_pipeline(int threads) {
  enum { M = 150, N = 230, K = 190, Hq = 4, Hkv = 2, D = 16, C = 2048, NSQ = 300000 };
  omp_set_num_threads(threads);
  sn_test_rng saved = rng;
  sn_test_rng_seed(&rng, 99);  // identical inputs every call
  size_t n_qkv = (size_t)ATT_T * (Hq + 2 * Hkv) * D, n_att = (size_t)ATT_T * Hq * D;
  size_t total = (size_t)M * N + n_att + (size_t)Hq * ATT_T + n_qkv + ATT_T * C + C + 2 * C * 8 + 2;
  snapshot s = {callocCheck(total, sizeof(float)), total};
  float *o = s.buf;
  float *A = random_array((size_t)M * K, 1.0f), *B = random_array((size_t)K * N, 1.0f);
  ops->matmul(o, A, B, NULL, M, N, K, 1, 0, 0), o += (size_t)M * N;
  float *qkv = random_array(n_qkv, 1.0f), *dout = random_array(n_att, 1.0f);
  float *att = o, *lse = o + n_att;
  ops->attention_forward(att, lse, qkv, att_cu_seqlens, ATT_B, ATT_T, ATT_MAX_SEQLEN, Hq, Hkv, D,
                         1, 0.25f);
  o += n_att + (size_t)Hq * ATT_T;
  ops->attention_backward(o, dout, qkv, att, lse, att_cu_seqlens, ATT_B, ATT_T, ATT_MAX_SEQLEN, Hq,
                          Hkv, D, 1, 0.25f);
  o += n_qkv;
  float *x = random_array((size_t)ATT_T * C, 1.0f), *w = random_array(C, 1.0f), rstd[ATT_T];
  float *y = mallocCheck((size_t)ATT_T * C * sizeof(float));
  ops->rmsnorm_forward(y, rstd, x, w, ATT_T, C, 1e-6f);
  ops->rmsnorm_backward(o, o + (size_t)ATT_T * C, y, x, w, rstd, ATT_T, C, 0);
  o += (size_t)ATT_T * C + C;
  int32_t target[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  ops->contrastive_loss(o + 2 * C * 8, o, o + C * 8, x, y, target, 8, 8, C, 10.0f, 0.125f);
  float *g = random_array(NSQ, 1.0f);
  ops->sum_squares(o + 2 * C * 8 + 1, g, NSQ);  // several chunks
  free(g);
  free(A), free(B), free(qkv), free(dout), free(x), free(w), free(y);
  rng = saved;
  return s;
}

static void test_determinism(void) {
  int max_threads = omp_get_max_threads();
  snapshot first = run_pipeline(max_threads), again = run_pipeline(max_threads);
  snapshot one = run_pipeline(1);
  omp_set_num_threads(max_threads);
  CHECK(memcmp(first.buf, again.buf, first.n * sizeof(float)) == 0,
        "two runs with %d threads differ", max_threads);
  CHECK(memcmp(first.buf, one.buf, first.n * sizeof(float)) == 0,
        "%d threads and 1 thread give different bits", max_threads);
  printf("  determinism: bitwise equal run to run (%d threads) and with 1 thread\n", max_threads);
  free(first.buf), free(again.buf), free(one.buf);
}

// ---- registry and timing ------------------------------------------------------------------------
// Runs sn_ops_by_name(name) in a fresh copy of this program (`--by-name NAME`, see main) and
// returns its exit status. A fresh process, not a bare fork: the fork of a process with OpenMP
// worker threads would exit with their scratch unreachable, which LeakSanitizer builds report.
static int by_name_exit_status(const char *name) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    execl("/proc/self/exe", "test_ops_forward", "--by-name", name, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int by_name_child(const char *name) {
  freopen("/dev/null", "w", stderr);  // the expected error message is not test output
  return sn_ops_by_name(name) ? 0 : 1;
}

static void test_registry(void) {
  CHECK(sn_ops_by_name("cpu") == sn_ops_cpu(), "sn_ops_by_name(\"cpu\") is not the CPU backend");
  CHECK(strcmp(ops->name, "cpu") == 0 && ops->storage == SN_DTYPE_F32 && ops->storage_size == 4,
        "cpu backend identity");
  CHECK(by_name_exit_status("tpu") == SN_EXIT_BAD_INPUT, "unknown device must exit 2");
  const char *why_not = NULL;
  const sn_ops *cuda = sn_ops_cuda(&why_not);
  CHECK(cuda != NULL || (why_not && *why_not), "sn_ops_cuda: NULL without a reason");
  if (!cuda) CHECK(by_name_exit_status("cuda") == SN_EXIT_BAD_INPUT, "no cuda must exit 2");
#ifndef SN_WITH_CUDA
  CHECK(!cuda && why_not && strcmp(why_not, "built without CUDA") == 0, "CPU-only sn_ops_cuda");
#endif
  printf("  registry: cpu, unknown names, cuda (%s)\n", cuda ? "available" : why_not);
}

static void report_matmul_speed(void) {
  int n = TIMING_SIZE;
  float *A = random_array((size_t)n * n, 1.0f), *B = random_array((size_t)n * n, 1.0f);
  float *C = mallocCheck((size_t)n * n * sizeof(float));
  ops->matmul(C, A, B, NULL, n, n, n, 0, 1, 0);  // warm-up: scratch, page faults
  int calls = 0;
  double t0 = sn_now_s(), dt;
  do {
    ops->matmul(C, A, B, NULL, n, n, n, 0, 1, 0);
    calls++;
  } while ((dt = sn_now_s() - t0) < 0.3);
  printf("  matmul %dx%dx%d NT: %.1f GFLOP/s (%d threads; reported, not checked)\n", n, n, n,
         2.0 * n * n * (double)n * calls / dt * 1e-9, omp_get_max_threads());
  free(A), free(B), free(C);
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--by-name") == 0) return by_name_child(argv[2]);
  setvbuf(stdout, NULL, _IOLBF, 0);
  ops = sn_ops_cpu();
  sn_test_rng_seed(&rng, 7);
  test_matmul();
  test_attention(4, 2, 1);
  test_attention(4, 2, 0);
  test_attention(6, 2, 1);
  test_attention(4, 4, 0);
  test_rope();
  test_norms();
  test_activations();
  test_embedding_and_elementwise();
  test_pool_and_l2norm();
  test_contrastive();
  test_distill();
  test_adamw(0, 50);
  test_adamw(1, 50);
  test_adamw(1, 1000000);  // past the threading threshold
  test_adamw_bf16_state(50);
  test_adamw_bf16_state(1000000);
  test_stochastic_rounding();
  test_determinism();
  test_registry();
  report_matmul_speed();
  return sn_test_finish("test_ops_forward");
}
