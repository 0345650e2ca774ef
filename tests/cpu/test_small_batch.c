// The small-batch inference path (ops.h: linear_small, attention_rope_forward; model.h's forward
// with at most SN_LINEAR_SMALL_MAX_ROWS tokens):
// - the CPU twins against naive double-precision references (every epilogue, with and without the
//   RMSNorm prologue and the bias; attention with RoPE, GQA, causal and not, packed lengths);
// - a fresh decoder and BERT tower encode small batches with linear_small on and off (SN_SMALL_BATCH)
//   and the fused rope + attention on and off (SN_SHORT_ATTENTION; both off by default): the last
//   hidden state and the pooled embeddings must be identical bit for bit on the CPU, and within bf16
//   rounding on CUDA (`test_small_batch cuda`, the gpu/test_small_batch_cuda test), the fused
//   attention alone bit for bit on both; a counting op table proves the ops ran (on) and did not
//   (off, and past their limits);
// - a decoder of the student's shape (and a tiny one on the CPU) encodes with the whole forward as
//   one op on and off (SN_FUSED_DECODER, off by default): the same bits on the CPU, within bf16
//   rounding on CUDA, one decoder_fused_forward call a forward at most SN_DECODER_FUSED_MAX_ROWS
//   tokens and none past it.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"
#include "test_model_util.h"

#define TWIN_TOL 1e-5     // fp32 twins against double references
#define CUDA_ON_OFF_TOL 2e-2  // bf16: the fused path skips roundings of intermediates the unfused one makes

static sn_test_rng rng;

static float *rand_vec(size_t n, float stddev) {
  float *x = mallocCheck((n ? n : 1) * sizeof(float));
  sn_test_fill_normal(&rng, x, n, stddev);
  return x;
}

// ---- twins against naive references ------------------------------------------------------------
static double silu_d(double x) { return x / (1.0 + exp(-x)); }
static double gelu_d(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

static void check_linear_small_twin(int M, int N, int K, sn_epilogue epi, int with_norm, int with_bias) {
  const sn_ops *cpu = sn_ops_cpu();
  const int n_w = epi == SN_EPILOGUE_SWIGLU ? 2 * N : N;
  float *x = rand_vec((size_t)M * K, 1.0f), *w = rand_vec((size_t)n_w * K, 1.0f / sqrtf((float)K));
  float *b = rand_vec(n_w, 1.0f), *nw = rand_vec(K, 1.0f), *res = rand_vec((size_t)M * N, 1.0f);
  float *out = mallocCheck((size_t)M * N * sizeof(float)), *want = mallocCheck((size_t)M * N * sizeof(float));
  const float eps = 1e-6f;
  cpu->linear_small(out, x, with_norm ? nw : NULL, eps, w, with_bias ? b : NULL,
                    epi == SN_EPILOGUE_RESIDUAL ? res : NULL, M, N, K, epi);
  double *xn = mallocCheck((size_t)K * sizeof(double)), *y = mallocCheck((size_t)n_w * sizeof(double));
  for (int m = 0; m < M; m++) {
    double ss = 0.0;
    for (int k = 0; k < K; k++) ss += (double)x[m * K + k] * x[m * K + k];
    const double rstd = 1.0 / sqrt(ss / K + eps);
    for (int k = 0; k < K; k++) xn[k] = with_norm ? x[m * K + k] * rstd * nw[k] : x[m * K + k];
    for (int n = 0; n < n_w; n++) {
      double acc = with_bias ? b[n] : 0.0;
      for (int k = 0; k < K; k++) acc += xn[k] * w[(size_t)n * K + k];
      y[n] = acc;
    }
    for (int n = 0; n < N; n++) {
      double o = y[n];
      if (epi == SN_EPILOGUE_SWIGLU) o = silu_d(y[n]) * y[N + n];
      else if (epi == SN_EPILOGUE_GELU) o = gelu_d(y[n]);
      else if (epi == SN_EPILOGUE_RESIDUAL) o = res[m * N + n] + y[n];
      want[m * N + n] = (float)o;
    }
  }
  double err = sn_rel_err(out, want, (size_t)M * N);
  CHECK(err < TWIN_TOL, "linear_small M=%d N=%d K=%d epilogue=%d norm=%d bias=%d: rel err %.3g", M, N, K, (int)epi,
        with_norm, with_bias, err);
  free(x), free(w), free(b), free(nw), free(res), free(out), free(want), free(xn), free(y);
}

// Naive RoPE (the angle in fp32 as transformers forms it, the rotation in double) + softmax attention.
static void check_attention_rope_twin(const int *lens, int B, int Hq, int Hkv, int D, int causal) {
  const sn_ops *cpu = sn_ops_cpu();
  int32_t cu[16], max_len = 0;
  cu[0] = 0;
  for (int b = 0; b < B; b++) cu[b + 1] = cu[b] + lens[b], max_len = SN_MAX(max_len, lens[b]);
  const int T = cu[B], row = (Hq + 2 * Hkv) * D, half = D / 2;
  int32_t *pos = mallocCheck((size_t)T * sizeof(int32_t));
  for (int b = 0; b < B; b++)
    for (int i = 0; i < lens[b]; i++) pos[cu[b] + i] = i;
  float *qkv = rand_vec((size_t)T * row, 1.0f), *keep = mallocCheck((size_t)T * row * sizeof(float));
  memcpy(keep, qkv, (size_t)T * row * sizeof(float));
  float *out = mallocCheck((size_t)T * Hq * D * sizeof(float)), *want = mallocCheck((size_t)T * Hq * D * sizeof(float));
  const float theta = 10000.0f, scale = 1.0f / sqrtf((float)D);
  cpu->attention_rope_forward(out, qkv, pos, cu, B, T, max_len, Hq, Hkv, D, theta, causal, scale);
  CHECK(memcmp(qkv, keep, (size_t)T * row * sizeof(float)) == 0, "attention_rope_forward changed qkv");
  double *rot = mallocCheck((size_t)T * row * sizeof(double));  // rotated copy
  for (int t = 0; t < T; t++)
    for (int h = 0; h < Hq + 2 * Hkv; h++)
      for (int i = 0; i < half; i++) {
        const float *x = qkv + (size_t)t * row + (size_t)h * D;
        double *r = rot + (size_t)t * row + (size_t)h * D;
        if (h >= Hq + Hkv) {  // values are not rotated
          r[i] = x[i], r[i + half] = x[i + half];
          continue;
        }
        const float angle = (float)pos[t] * (1.0f / powf(theta, (float)(2 * i) / (float)D));
        r[i] = x[i] * cos(angle) - x[i + half] * sin(angle);
        r[i + half] = x[i + half] * cos(angle) + x[i] * sin(angle);
      }
  double *p = mallocCheck((size_t)max_len * sizeof(double));
  for (int b = 0; b < B; b++)
    for (int h = 0; h < Hq; h++) {
      const int hk = h / (Hq / Hkv);
      for (int i = 0; i < lens[b]; i++) {
        const double *q = rot + (size_t)(cu[b] + i) * row + (size_t)h * D;
        const int visible = causal ? i + 1 : lens[b];
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j < visible; j++) {
          const double *k = rot + (size_t)(cu[b] + j) * row + (size_t)(Hq + hk) * D;
          double s = 0.0;
          for (int d = 0; d < D; d++) s += q[d] * k[d];
          p[j] = s * scale, mx = fmax(mx, p[j]);
        }
        for (int j = 0; j < visible; j++) p[j] = exp(p[j] - mx), sum += p[j];
        for (int d = 0; d < D; d++) {
          double o = 0.0;
          for (int j = 0; j < visible; j++) o += p[j] * rot[(size_t)(cu[b] + j) * row + (size_t)(Hq + Hkv + hk) * D + d];
          want[(size_t)(cu[b] + i) * Hq * D + (size_t)h * D + d] = (float)(o / sum);
        }
      }
    }
  double err = sn_rel_err(out, want, (size_t)T * Hq * D);
  CHECK(err < TWIN_TOL, "attention_rope_forward B=%d T=%d Hq=%d Hkv=%d D=%d causal=%d: rel err %.3g", B, T, Hq, Hkv,
        D, causal, err);
  free(pos), free(qkv), free(keep), free(out), free(want), free(rot), free(p);
}

// ---- the model path on and off --------------------------------------------------------------------
// An op table that counts the small-batch ops it forwards to the real backend.
static const sn_ops *real_ops;
static int linear_calls, attention_calls;
static void counting_linear_small(void *out, const void *x, const void *norm_w, float eps, const void *w,
                                  const void *bias, const void *residual, int M, int N, int K, sn_epilogue e) {
  linear_calls++;
  real_ops->linear_small(out, x, norm_w, eps, w, bias, residual, M, N, K, e);
}
static void counting_attention_rope(void *out, const void *qkv, const int32_t *pos, const int32_t *cu, int B, int T,
                                    int max_seqlen, int Hq, int Hkv, int D, float theta, int causal, float scale) {
  attention_calls++;
  real_ops->attention_rope_forward(out, qkv, pos, cu, B, T, max_seqlen, Hq, Hkv, D, theta, causal, scale);
}

static int fused_calls;
static void counting_decoder_fused(void *out, const int32_t *ids, const int32_t *pos, const int32_t *cu, int B, int T,
                                   const sn_decoder_weights *w) {
  fused_calls++;
  real_ops->decoder_fused_forward(out, ids, pos, cu, B, T, w);
}

static sn_model_config tower_config(sn_arch arch) {
  sn_model_config c = sn_test_tiny_config(arch, 64, 4, arch == SN_ARCH_BERT ? 4 : 2, 16, 96, 160);
  c.attn_bias = 1;
  c.mlp_bias = arch == SN_ARCH_BERT;
  return c;
}

typedef struct {
  float *hidden, *pooled;            // host copies (T, C) and (B, C)
  int linear_calls, attention_calls;  // small-batch op calls during the forward
} encoded;

static encoded encode(sn_model *m, sn_acts *a, const sn_tokens *tok, const char *small_batch) {
  const sn_ops *ops = m->ops;
  const int C = m->cfg.hidden;
  setenv("SN_SMALL_BATCH", small_batch, 1);
  linear_calls = attention_calls = 0;
  encoded e;
  const void *hidden = sn_model_forward(m, a, tok, 0);
  e.linear_calls = linear_calls, e.attention_calls = attention_calls;
  e.hidden = mallocCheck((size_t)tok->T * C * sizeof(float));
  ops->download_f32(e.hidden, hidden, (size_t)tok->T * C);
  float *pooled = ops->alloc((size_t)tok->B * C * sizeof(float));
  sn_model_pool(m, a, tok, hidden, m->cfg.arch == SN_ARCH_BERT ? SN_POOL_FIRST : SN_POOL_LAST, 1, pooled);
  e.pooled = mallocCheck((size_t)tok->B * C * sizeof(float));
  ops->download(e.pooled, pooled, (size_t)tok->B * C * sizeof(float));
  ops->free(pooled);
  return e;
}

static int bits_equal(const float *a, const float *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (sn_test_f32_bits(a[i]) != sn_test_f32_bits(b[i])) return 0;
  return 1;
}

// The forward with the small-batch ops allowed and not: which ran (linear_small up to
// SN_LINEAR_SMALL_MAX_ROWS tokens; attention_rope_forward in decoders with sequences up to
// SN_ATTENTION_SHORT_MAX_SEQLEN) and what came out.
static void check_model_on_off(const sn_ops *backend, sn_arch arch, const int *lens, int B) {
  sn_ops counting = *backend;
  real_ops = backend;
  counting.linear_small = counting_linear_small;
  counting.attention_rope_forward = counting_attention_rope;
  sn_model_config cfg = tower_config(arch);
  sn_model *m = sn_model_new(&cfg, &counting, 77 + (uint64_t)arch);
  sn_test_randomise(m, &rng, 0.1f, 0.1f);  // biases and norm weights away from 0 and 1
  sn_tokens tok;
  const int T = sn_test_random_tokens(&tok, &counting, lens, B, cfg.vocab, &rng);
  sn_acts *a = sn_acts_new(m, T, B);
  encoded plain = encode(m, a, &tok, "0");  // the default: neither (the reference)
  setenv("SN_SHORT_ATTENTION", "1", 1);
  encoded on = encode(m, a, &tok, "1");              // linear_small and the fused rope + attention
  encoded attention_only = encode(m, a, &tok, "0");  // the fused attention does not need SN_SMALL_BATCH
  setenv("SN_SHORT_ATTENTION", "0", 1);
  encoded split = encode(m, a, &tok, "1");  // linear_small with rope and the flash kernel
  setenv("SN_SHORT_ATTENTION", "yes", 1);   // neither 0 nor 1: warned about, read as 0
  encoded bad_attention = encode(m, a, &tok, "1");
  unsetenv("SN_SHORT_ATTENTION");
  encoded bad_small = encode(m, a, &tok, "on");  // likewise: the small-batch path stays off
  const char *arch_name = arch == SN_ARCH_BERT ? "bert" : "qwen2";
  int max_len = 0;
  for (int b = 0; b < B; b++) max_len = SN_MAX(max_len, lens[b]);
  const int small = T <= SN_LINEAR_SMALL_MAX_ROWS;
  const int short_attention = arch != SN_ARCH_BERT && max_len <= SN_ATTENTION_SHORT_MAX_SEQLEN;
  CHECK(plain.linear_calls == 0 && plain.attention_calls == 0, "%s T=%d: by default %d + %d small-batch ops ran",
        arch_name, T, plain.linear_calls, plain.attention_calls);
  CHECK(small ? on.linear_calls > 0 : on.linear_calls == 0, "%s T=%d: %d linear_small calls (expected %s)", arch_name,
        T, on.linear_calls, small ? "some" : "none past the row limit");
  CHECK(short_attention ? on.attention_calls > 0 : on.attention_calls == 0,
        "%s T=%d longest %d: %d attention_rope_forward calls (expected %s)", arch_name, T, max_len, on.attention_calls,
        short_attention ? "some" : "none");
  CHECK(attention_only.linear_calls == 0 && attention_only.attention_calls == on.attention_calls,
        "%s T=%d: SN_SHORT_ATTENTION=1 alone ran %d linear_small (expected none) and %d attention_rope_forward calls "
        "(expected %d)", arch_name, T, attention_only.linear_calls, attention_only.attention_calls, on.attention_calls);
  CHECK(split.linear_calls == on.linear_calls && split.attention_calls == 0,
        "%s T=%d: SN_SHORT_ATTENTION=0 ran %d linear_small (expected %d) and %d attention_rope_forward calls", arch_name,
        T, split.linear_calls, on.linear_calls, split.attention_calls);
  CHECK(bad_attention.linear_calls == split.linear_calls && bad_attention.attention_calls == 0,
        "%s T=%d: SN_SHORT_ATTENTION=yes ran %d attention_rope_forward calls (expected it read as 0)", arch_name, T,
        bad_attention.attention_calls);
  CHECK(bad_small.linear_calls == 0 && bad_small.attention_calls == 0,
        "%s T=%d: SN_SMALL_BATCH=on ran %d + %d small-batch ops (expected it read as 0)", arch_name, T,
        bad_small.linear_calls, bad_small.attention_calls);
  const size_t nh = (size_t)T * cfg.hidden, np = (size_t)B * cfg.hidden;
  // The fused attention rotates as rope does and then runs the same flash kernel: the same bits on
  // either backend.
  CHECK(bits_equal(attention_only.hidden, plain.hidden, nh) && bits_equal(attention_only.pooled, plain.pooled, np),
        "%s T=%d on %s: the fused rope + attention differs from rope + attention_forward (rel %.3g)", arch_name, T,
        backend->name, sn_rel_err(attention_only.hidden, plain.hidden, nh));
  if (!strcmp(backend->name, "cpu")) {
    CHECK(bits_equal(split.hidden, plain.hidden, nh) && bits_equal(split.pooled, plain.pooled, np),
          "%s T=%d: the small path with SN_SHORT_ATTENTION=0 differs from the unfused one", arch_name, T);
    CHECK(bits_equal(on.hidden, plain.hidden, nh), "%s T=%d: last hidden state differs with the small path (rel %.3g)",
          arch_name, T, sn_rel_err(on.hidden, plain.hidden, nh));
    CHECK(bits_equal(on.pooled, plain.pooled, np), "%s T=%d: pooled embeddings differ with the small path (rel %.3g)",
          arch_name, T, sn_rel_err(on.pooled, plain.pooled, np));
  } else {
    double eh = sn_rel_err(on.hidden, plain.hidden, nh), ep = sn_rel_err(on.pooled, plain.pooled, np);
    CHECK(eh < CUDA_ON_OFF_TOL && ep < CUDA_ON_OFF_TOL, "%s T=%d on %s: small path off by %.3g (hidden), %.3g (pooled)",
          arch_name, T, backend->name, eh, ep);
    printf("%s T=%d B=%d on %s: small path vs unfused: hidden %.3g, pooled %.3g\n", arch_name, T, B, backend->name,
           eh, ep);
  }
  encoded *runs[] = {&plain, &on, &attention_only, &split, &bad_attention, &bad_small};
  for (size_t i = 0; i < SN_ARRAY_LEN(runs); i++) free(runs[i]->hidden), free(runs[i]->pooled);
  sn_acts_free(a);
  sn_tokens_free(&tok, &counting);
  sn_model_free(m);
}

// The forward and the pooled embeddings (sn_model_embed: the last block pruned to the pooled rows
// on the unfused path) of a decoder with SN_FUSED_DECODER unset and 1.
static void check_fused_decoder_on_off(const sn_ops *backend, const sn_model_config *cfg, const int *lens, int B) {
  sn_ops counting = *backend;
  real_ops = backend;
  counting.decoder_fused_forward = counting_decoder_fused;
  sn_model *m = sn_model_new(cfg, &counting, 91);
  sn_test_randomise(m, &rng, 0.1f, 0.1f);
  sn_tokens tok;
  const int T = sn_test_random_tokens(&tok, &counting, lens, B, cfg->vocab, &rng), C = cfg->hidden;
  sn_acts *a = sn_acts_new(m, T, B);
  float *embedded[2];
  encoded runs[2];
  int calls[2];
  unsetenv("SN_FUSED_DECODER");  // "off" is the switch unset, whatever the caller's environment
  for (int on = 0; on < 2; on++) {
    if (on) setenv("SN_FUSED_DECODER", "1", 1);
    fused_calls = 0;
    runs[on] = encode(m, a, &tok, "0");
    float *embedded_dev = counting.alloc((size_t)B * C * sizeof(float));  // the backend's memory
    sn_model_embed(m, a, &tok, SN_POOL_LAST, 1, embedded_dev);
    embedded[on] = mallocCheck((size_t)B * C * sizeof(float));
    counting.download(embedded[on], embedded_dev, (size_t)B * C * sizeof(float));
    counting.free(embedded_dev);
    calls[on] = fused_calls;
    unsetenv("SN_FUSED_DECODER");
  }
  const int taken = T <= SN_DECODER_FUSED_MAX_ROWS;  // the CPU takes every shape; CUDA the student's
  CHECK(calls[0] == 0 && calls[1] == (taken ? 2 : 0),
        "fused decoder C=%d T=%d on %s: %d calls off, %d on (expected 0, %d)", C, T, backend->name, calls[0], calls[1],
        taken ? 2 : 0);
  const size_t nh = (size_t)T * C, np = (size_t)B * C;
  const double eh = sn_rel_err(runs[1].hidden, runs[0].hidden, nh), ep = sn_rel_err(runs[1].pooled, runs[0].pooled, np);
  const double ee = sn_rel_err(embedded[1], embedded[0], np);
  if (!strcmp(backend->name, "cpu"))
    CHECK(bits_equal(runs[1].hidden, runs[0].hidden, nh) && bits_equal(runs[1].pooled, runs[0].pooled, np) &&
              bits_equal(embedded[1], embedded[0], np),
          "fused decoder C=%d T=%d: differs from the unfused forward (hidden %.3g, pooled %.3g, embedded %.3g)", C, T,
          eh, ep, ee);
  else
    CHECK(eh < CUDA_ON_OFF_TOL && ep < CUDA_ON_OFF_TOL && ee < CUDA_ON_OFF_TOL,
          "fused decoder C=%d T=%d on %s: off by %.3g (hidden), %.3g (pooled), %.3g (embedded)", C, T, backend->name,
          eh, ep, ee);
  printf("fused decoder C=%d T=%d B=%d on %s: %d calls; vs unfused: hidden %.3g, pooled %.3g, embedded %.3g\n", C, T,
         B, backend->name, calls[1], eh, ep, ee);
  for (int on = 0; on < 2; on++) free(runs[on].hidden), free(runs[on].pooled), free(embedded[on]);
  sn_acts_free(a);
  sn_tokens_free(&tok, &counting);
  sn_model_free(m);
}

int main(int argc, char **argv) {
  sn_test_rng_seed(&rng, 20261206);
  const sn_ops *backend = sn_test_backend_from_args(argc, argv, "test_small_batch");
  if (backend == sn_ops_cpu()) {
    const int shapes[][3] = {{1, 13, 40}, {7, 72, 64}, {33, 24, 8}, {SN_LINEAR_SMALL_MAX_ROWS, 9, 136}};
    for (size_t s = 0; s < SN_ARRAY_LEN(shapes); s++)
      for (int e = SN_EPILOGUE_NONE; e <= SN_EPILOGUE_RESIDUAL; e++)
        for (int norm = 0; norm < 2; norm++)
          for (int bias = 0; bias < 2; bias++)
            check_linear_small_twin(shapes[s][0], shapes[s][1], shapes[s][2], (sn_epilogue)e, norm, bias);
    const int l1[] = {1}, l2[] = {5, 1, 17, 3};
    for (int causal = 0; causal < 2; causal++) {
      check_attention_rope_twin(l1, 1, 2, 1, 8, causal);
      check_attention_rope_twin(l2, 4, 4, 2, 16, causal);
      check_attention_rope_twin(l2, 4, 3, 3, 6, causal);
    }
  }
  const int one[] = {32}, some[] = {1, 9, 20, 7}, limit[] = {40, 24}, past[] = {40, 25};
  const int longest[] = {3, SN_ATTENTION_SHORT_MAX_SEQLEN}, too_long[] = {SN_ATTENTION_SHORT_MAX_SEQLEN + 1};
  const int many[] = {64, 64, 64, 64, 64, 64, 64, 64};  // 512 tokens: short attention, unfused linears
  for (int arch = 0; arch < 2; arch++) {
    const sn_arch a = arch ? SN_ARCH_BERT : SN_ARCH_QWEN2;
    check_model_on_off(backend, a, one, 1);
    check_model_on_off(backend, a, some, 4);
    check_model_on_off(backend, a, limit, 2);  // T = SN_LINEAR_SMALL_MAX_ROWS
    check_model_on_off(backend, a, past, 2);   // one token past: unfused linears, short attention
    check_model_on_off(backend, a, longest, 2);
    check_model_on_off(backend, a, too_long, 1);  // the unfused path
    check_model_on_off(backend, a, many, (int)SN_ARRAY_LEN(many));
  }
  // The student's shape (configs/models/student-6l-384.json, two blocks, a small vocabulary), which
  // the CUDA kernel is built for, and on the CPU a tiny decoder too.
  sn_model_config student = sn_test_tiny_config(SN_ARCH_QWEN2, 384, 6, 2, 64, 1536, 160);
  student.attn_bias = 1;
  const int query[] = {32}, two[] = {9, 14}, past_fused[] = {20, 13};
  check_fused_decoder_on_off(backend, &student, query, 1);
  check_fused_decoder_on_off(backend, &student, two, 2);
  check_fused_decoder_on_off(backend, &student, past_fused, 2);  // 33 tokens: the unfused forward
  if (backend == sn_ops_cpu()) {
    const sn_model_config tiny = tower_config(SN_ARCH_QWEN2);
    const int three[] = {5, 1, 12};
    check_fused_decoder_on_off(backend, &tiny, three, 3);
  }
  return sn_test_finish("test_small_batch");
}
