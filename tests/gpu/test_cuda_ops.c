// Every CUDA op against its CPU twin, through the sn_ops interface only: fresh random inputs
// (rounded to bf16 first, so both backends see identical values) are uploaded to both backends,
// outputs are poisoned (NaN) before each run so unwritten elements show, and the downloaded outputs
// are compared by ||gpu - cpu|| / ||cpu||. Shapes: 1-token sequences, odd lengths, lengths just over a
// tile (65, 129), and the family's real sizes (hidden, heads and GQA of Qwen2.5 0.5B-14B and Llama-3-8B, 16k tokens). The top-k merge must match
// its twin bit for bit, and the device search (sn_topk_exact) the host's. Skips (77) without a GPU.
// The harness (pair, compare, poison) is cuda_ops_harness.c; the search checks cuda_ops_search.c.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "counter_rng.h"
#include "cuda_ops_harness.h"
#include "safetensors.h"

// ---- per-op checks ---------------------------------------------------------------------------------------
static void check_elementwise(size_t n) {
  char name[128];
  pair a = st_rand(n, 1.0f), b = st_rand(n, 1.0f), out = st_poison(n);
  cpu->add(out.c, a.c, b.c, n), gpu->add(out.g, a.g, b.g, n);
  snprintf(name, sizeof name, "add n=%zu", n);
  compare(name, out, BF16_TOL);
  pair x = f32_rand(n, 1.0f), y = f32_rand(n, 1.0f), sum = f32_poison(n);
  cpu->add_f32(sum.c, x.c, y.c, n), gpu->add_f32(sum.g, x.g, y.g, n);
  snprintf(name, sizeof name, "add_f32 n=%zu", n);
  compare(name, sum, F32_TOL);
  cpu->add_f32(y.c, y.c, x.c, n), gpu->add_f32(y.g, y.g, x.g, n);  // in place, as the loss gradients do
  snprintf(name, sizeof name, "add_f32 in place n=%zu", n);
  compare(name, y, F32_TOL);
  cpu->scale_f32(x.c, 0.37f, n), gpu->scale_f32(x.g, 0.37f, n);
  snprintf(name, sizeof name, "scale_f32 n=%zu", n);
  compare(name, x, F32_TOL);
  // storage <-> f32 on the device
  pair f = f32_poison(n), s = st_poison(n);
  cpu->storage_to_f32(f.c, a.c, n), gpu->storage_to_f32(f.g, a.g, n);
  cpu->f32_to_storage(s.c, f.c, n), gpu->f32_to_storage(s.g, f.g, n);
  snprintf(name, sizeof name, "storage_to_f32 + f32_to_storage n=%zu", n);
  compare(name, s, 1e-6);
  // gelu
  cpu->gelu_forward(out.c, a.c, n), gpu->gelu_forward(out.g, a.g, n);
  snprintf(name, sizeof name, "gelu_forward n=%zu", n);
  compare(name, out, BF16_TOL);
  pair dx = st_poison(n);
  cpu->gelu_backward(dx.c, b.c, a.c, n), gpu->gelu_backward(dx.g, b.g, a.g, n);
  snprintf(name, sizeof name, "gelu_backward n=%zu", n);
  compare(name, dx, BF16_TOL);
  // axpy_2d: a column slice of a (rows, 7) view of a, scaled into out's slice, then gathered
  if (n >= 7) {
    int rows = (int)(n / 7), cols = 3;
    cpu->axpy_2d((char *)out.c + 2 * cpu->storage_size, 7, a.c, 7, rows, cols, 0.37f, 0);
    gpu->axpy_2d((char *)out.g + 2 * gpu->storage_size, 7, a.g, 7, rows, cols, 0.37f, 0);
    cpu->axpy_2d((char *)out.c + 2 * cpu->storage_size, 7, b.c, 7, rows, cols, -1.5f, 1);
    gpu->axpy_2d((char *)out.g + 2 * gpu->storage_size, 7, b.g, 7, rows, cols, -1.5f, 1);
    cpu->axpy_2d(dx.c, cols, (char *)out.c + 2 * cpu->storage_size, 7, rows, cols, 2.0f, 0);
    gpu->axpy_2d(dx.g, cols, (char *)out.g + 2 * gpu->storage_size, 7, rows, cols, 2.0f, 0);
    pair packed = {.c = dx.c, .g = dx.g, .n = (size_t)rows * cols};
    snprintf(name, sizeof name, "axpy_2d rows=%d (slice in, then out)", rows);
    compare(name, packed, BF16_TOL);
  }
  // dropout: the same counter-based mask on both backends (written, then accumulated)
  cpu->dropout(out.c, a.c, n, 1234, 0.3f, 0), gpu->dropout(out.g, a.g, n, 1234, 0.3f, 0);
  cpu->dropout(out.c, b.c, n, 99, 0.3f, 1), gpu->dropout(out.g, b.g, n, 99, 0.3f, 1);
  snprintf(name, sizeof name, "dropout n=%zu", n);
  compare(name, out, BF16_TOL);
  pair_free(&a), pair_free(&b), pair_free(&out), pair_free(&x), pair_free(&f), pair_free(&s), pair_free(&dx);
}

// Host fp32 <-> device bf16 in several staging chunks (kernels/memory.cu converts 16M elements at a
// time): bf16-exact host values must come back bit for bit, the tail chunk included.
static void check_convert_chunks(size_t n) {
  float *host = randn(n, 1.0f), *back = nan_array(n);
  void *dev = gpu->alloc(n * gpu->storage_size);
  gpu->upload_f32(dev, host, n);
  gpu->download_f32(back, dev, n);
  size_t differ = 0;
  for (size_t i = 0; i < n; i++) differ += sn_test_f32_bits(back[i]) != sn_test_f32_bits(host[i]);
  char name[128];
  snprintf(name, sizeof name, "upload_f32 + download_f32 n=%zu (chunked)", n);
  CHECK(differ == 0, "%s: %zu of %zu values differ", name, differ, n);
  if (verbose_rows) printf("%-58s %s\n", name, differ ? "FAIL" : "identical");
  gpu->free(dev), free(host), free(back);
}

// Fresh-tower initialisation: the GPU's bf16 values must be the CPU's fp32 normals rounded to
// bf16, bit for bit (counter_rng.h, evaluated in double precision on both); fill is exact.
static void check_init(size_t n) {
  char name[128];
  pair x = st_poison(n);
  const uint64_t key = 0x5eed0000u + n;
  cpu->fill_normal(x.c, n, key, 0.02f), gpu->fill_normal(x.g, n, key, 0.02f);
  float *want = mallocCheck((n ? n : 1) * sizeof(float));
  uint16_t *got = mallocCheck((n ? n : 1) * sizeof(uint16_t));
  cpu->download_f32(want, x.c, n);
  gpu->download(got, x.g, n * sizeof(uint16_t));
  size_t differ = 0;
  for (size_t i = 0; i < n; i++) differ += sn_f32_to_bf16(want[i]) != got[i];
  snprintf(name, sizeof name, "fill_normal n=%zu (bf16 bits equal to the CPU's)", n);
  CHECK(differ == 0, "%s: %zu of %zu values differ", name, differ, n);
  if (verbose_rows) printf("%-58s %s\n", name, differ ? "FAIL" : "identical");
  cpu->fill(x.c, n, 1.0f), gpu->fill(x.g, n, 1.0f);
  snprintf(name, sizeof name, "fill n=%zu", n);
  compare(name, x, 0.0);
  free(want), free(got), pair_free(&x);
}

static void check_swiglu(int T, int I) {
  char name[128];
  pair gu = st_rand((size_t)T * 2 * I, 1.0f), out = st_poison((size_t)T * I), dout = st_rand((size_t)T * I, 1.0f);
  pair dgu = st_poison((size_t)T * 2 * I);
  cpu->swiglu_forward(out.c, gu.c, T, I), gpu->swiglu_forward(out.g, gu.g, T, I);
  snprintf(name, sizeof name, "swiglu_forward T=%d I=%d", T, I);
  compare(name, out, BF16_TOL);
  cpu->swiglu_backward(dgu.c, dout.c, gu.c, T, I), gpu->swiglu_backward(dgu.g, dout.g, gu.g, T, I);
  snprintf(name, sizeof name, "swiglu_backward T=%d I=%d", T, I);
  compare(name, dgu, BF16_TOL);
  pair_free(&gu), pair_free(&out), pair_free(&dout), pair_free(&dgu);
}

static void check_embedding(int T, int C, int V) {
  char name[128];
  int32_t *ids = mallocCheck(T * sizeof(int32_t));
  // Few distinct ids among many tokens (repeats exercise the deterministic scatter), some ids unused.
  for (int t = 0; t < T; t++) ids[t] = (int)(sn_test_uniform(&rng) * (t % 3 == 0 ? 7 : V)) % V;
  pair id = i32_new(T, ids), table = st_rand((size_t)V * C, 1.0f), out = st_poison((size_t)T * C);
  cpu->embedding_forward(out.c, id.c, table.c, T, C, 0), gpu->embedding_forward(out.g, id.g, table.g, T, C, 0);
  snprintf(name, sizeof name, "embedding_forward T=%d C=%d V=%d", T, C, V);
  compare(name, out, BF16_TOL);
  cpu->embedding_forward(out.c, id.c, table.c, T, C, 1), gpu->embedding_forward(out.g, id.g, table.g, T, C, 1);
  snprintf(name, sizeof name, "embedding_forward accumulate T=%d C=%d", T, C);
  compare(name, out, BF16_TOL);
  float *table0 = randn((size_t)V * C, 1.0f);  // dtable accumulates: both GPU runs start from it
  pair dout = st_rand((size_t)T * C, 1.0f), dtable = pair_new((size_t)V * C, table0, 0);
  pair again = pair_new((size_t)V * C, table0, 0);
  cpu->embedding_backward(dtable.c, dout.c, id.c, T, C, V), gpu->embedding_backward(dtable.g, dout.g, id.g, T, C, V);
  snprintf(name, sizeof name, "embedding_backward T=%d C=%d V=%d", T, C, V);
  compare(name, dtable, BF16_TOL);
  gpu->embedding_backward(again.g, dout.g, id.g, T, C, V);
  check_repeatable("  embedding_backward run twice", dtable.g, again.g, (size_t)V * C * gpu->storage_size);
  pair_free(&id), pair_free(&table), pair_free(&out), pair_free(&dout), pair_free(&dtable), pair_free(&again);
  free(ids), free(table0);
}

static void check_norms(int T, int C) {
  char name[160];
  const float eps = 1e-6f;
  size_t n = (size_t)T * C;
  pair x = st_rand(n, 1.0f), y = st_rand(n, 1.0f), w = st_rand(C, 1.0f), bias = st_rand(C, 1.0f);
  pair out = st_poison(n), res = st_poison(n), rstd = f32_poison(T), mean = f32_poison(T);
  cpu->rmsnorm_forward(out.c, rstd.c, x.c, w.c, T, C, eps), gpu->rmsnorm_forward(out.g, rstd.g, x.g, w.g, T, C, eps);
  snprintf(name, sizeof name, "rmsnorm_forward T=%d C=%d", T, C);
  compare(name, out, BF16_TOL);
  compare("  rmsnorm rstd", rstd, F32_TOL);
  // backward, with dx accumulate and dweight accumulation
  pair dout = st_rand(n, 1.0f), dx = st_rand(n, 1.0f), dw = st_rand(C, 1.0f), db = st_rand(C, 1.0f);
  for (int acc = 0; acc < 2; acc++) {
    cpu->rmsnorm_backward(dx.c, dw.c, dout.c, x.c, w.c, rstd.c, T, C, acc);
    gpu->rmsnorm_backward(dx.g, dw.g, dout.g, x.g, w.g, rstd.g, T, C, acc);
    snprintf(name, sizeof name, "rmsnorm_backward dx T=%d C=%d acc=%d", T, C, acc);
    compare(name, dx, BF16_TOL);
    snprintf(name, sizeof name, "rmsnorm_backward dweight T=%d C=%d", T, C);
    compare(name, dw, BF16_TOL);
  }
  // a frozen weight (LoRA's base): dweight NULL, dx only
  cpu->rmsnorm_backward(dx.c, NULL, dout.c, x.c, w.c, rstd.c, T, C, 0);
  gpu->rmsnorm_backward(dx.g, NULL, dout.g, x.g, w.g, rstd.g, T, C, 0);
  snprintf(name, sizeof name, "rmsnorm_backward frozen weight dx T=%d C=%d", T, C);
  compare(name, dx, BF16_TOL);
  cpu->add_rmsnorm_forward(res.c, out.c, rstd.c, x.c, y.c, w.c, T, C, eps);
  gpu->add_rmsnorm_forward(res.g, out.g, rstd.g, x.g, y.g, w.g, T, C, eps);
  snprintf(name, sizeof name, "add_rmsnorm_forward T=%d C=%d", T, C);
  compare(name, out, BF16_TOL);
  compare("  add_rmsnorm residual", res, BF16_TOL);
  cpu->layernorm_forward(out.c, mean.c, rstd.c, x.c, w.c, bias.c, T, C, eps);
  gpu->layernorm_forward(out.g, mean.g, rstd.g, x.g, w.g, bias.g, T, C, eps);
  snprintf(name, sizeof name, "layernorm_forward T=%d C=%d", T, C);
  compare(name, out, BF16_TOL);
  compare("  layernorm mean", mean, 1e-3);
  compare("  layernorm rstd", rstd, F32_TOL);
  for (int acc = 0; acc < 2; acc++) {
    cpu->layernorm_backward(dx.c, dw.c, db.c, dout.c, x.c, w.c, mean.c, rstd.c, T, C, acc);
    gpu->layernorm_backward(dx.g, dw.g, db.g, dout.g, x.g, w.g, mean.g, rstd.g, T, C, acc);
    snprintf(name, sizeof name, "layernorm_backward dx T=%d C=%d acc=%d", T, C, acc);
    compare(name, dx, BF16_TOL);
    compare("  layernorm_backward dweight", dw, BF16_TOL);
    compare("  layernorm_backward dbias", db, BF16_TOL);
  }
  {  // the column sums' order is fixed: a second run gives the same bits
    float *zeros = calloc(C, sizeof(float));  // dweight and dbias accumulate: both runs start at 0
    pair dx2 = st_poison(n), dw2 = pair_new(C, zeros, 0), db2 = pair_new(C, zeros, 0);
    gpu->upload_f32(dw.g, zeros, C), gpu->upload_f32(db.g, zeros, C);
    free(zeros);
    gpu->layernorm_backward(dx.g, dw.g, db.g, dout.g, x.g, w.g, mean.g, rstd.g, T, C, 0);
    gpu->layernorm_backward(dx2.g, dw2.g, db2.g, dout.g, x.g, w.g, mean.g, rstd.g, T, C, 0);
    check_repeatable("  layernorm_backward dweight run twice", dw.g, dw2.g, C * gpu->storage_size);
    check_repeatable("  layernorm_backward dbias run twice", db.g, db2.g, C * gpu->storage_size);
    pair_free(&dx2), pair_free(&dw2), pair_free(&db2);
  }
  cpu->add_layernorm_forward(res.c, out.c, mean.c, rstd.c, x.c, y.c, w.c, bias.c, T, C, eps);
  gpu->add_layernorm_forward(res.g, out.g, mean.g, rstd.g, x.g, y.g, w.g, bias.g, T, C, eps);
  snprintf(name, sizeof name, "add_layernorm_forward T=%d C=%d", T, C);
  compare(name, out, BF16_TOL);
  compare("  add_layernorm residual", res, BF16_TOL);
  pair_free(&x), pair_free(&y), pair_free(&w), pair_free(&bias), pair_free(&out), pair_free(&res);
  pair_free(&rstd), pair_free(&mean), pair_free(&dout), pair_free(&dx), pair_free(&dw), pair_free(&db);
}

static void check_matmul(int M, int N, int K, int ta, int tb, int with_bias, int accumulate) {
  char name[160];
  pair A = st_rand((size_t)M * K, 1.0f), B = st_rand((size_t)K * N, 1.0f), bias = st_rand(N, 1.0f);
  pair C = accumulate ? st_rand((size_t)M * N, 1.0f) : st_poison((size_t)M * N);
  cpu->matmul(C.c, A.c, B.c, with_bias ? bias.c : NULL, M, N, K, ta, tb, accumulate);
  gpu->matmul(C.g, A.g, B.g, with_bias ? bias.g : NULL, M, N, K, ta, tb, accumulate);
  snprintf(name, sizeof name, "matmul M=%d N=%d K=%d ta=%d tb=%d bias=%d acc=%d", M, N, K, ta, tb, with_bias,
           accumulate);
  compare(name, C, BF16_TOL);
  // bias gradient of a fresh dout (identical on both backends), accumulated into a random dbias
  pair dout = st_rand((size_t)M * N, 1.0f), db = st_rand(N, 1.0f);
  cpu->bias_backward(db.c, dout.c, M, N), gpu->bias_backward(db.g, dout.g, M, N);
  snprintf(name, sizeof name, "bias_backward M=%d N=%d", M, N);
  compare(name, db, BF16_TOL);
  pair_free(&A), pair_free(&B), pair_free(&bias), pair_free(&C), pair_free(&dout), pair_free(&db);
}

// matmul_strided on column slices: A, B and C each a slice starting `pad` columns into a matrix
// `pad` columns wider than the slice on both sides; the columns around C's slice must not change.
static void check_matmul_strided(int M, int N, int K, int ta, int tb, int accumulate, int pad) {
  char name[160];
  const int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
  const int lda = a_cols + 2 * pad, ldb = b_cols + 2 * pad, ldc = N + 2 * pad;
  pair A = st_rand((size_t)a_rows * lda, 1.0f), B = st_rand((size_t)b_rows * ldb, 1.0f);
  pair C = st_rand((size_t)M * ldc, 1.0f);  // random around the slice: a stray write shows
  const size_t off = (size_t)pad * cpu->storage_size, goff = (size_t)pad * gpu->storage_size;
  cpu->matmul_strided((char *)C.c + off, ldc, (char *)A.c + off, lda, (char *)B.c + off, ldb, NULL, M, N, K, ta,
                      tb, accumulate);
  gpu->matmul_strided((char *)C.g + goff, ldc, (char *)A.g + goff, lda, (char *)B.g + goff, ldb, NULL, M, N, K,
                      ta, tb, accumulate);
  snprintf(name, sizeof name, "matmul_strided M=%d N=%d K=%d ta=%d tb=%d acc=%d pad=%d", M, N, K, ta, tb,
           accumulate, pad);
  compare(name, C, BF16_TOL);  // the whole (M, ldc): the slice and the untouched columns around it
  pair_free(&A), pair_free(&B), pair_free(&C);
}

static void check_rope_attention(const int *lens, int B, int Hq, int Hkv, int D, int causal) {
  char name[200];
  int32_t *cu, *pos;
  int max_len;
  const int T = packed_positions(lens, B, &cu, &pos, &max_len);
  size_t row = (size_t)(Hq + 2 * Hkv) * D;
  pair cup = i32_new(B + 1, cu), posp = i32_new(T, pos);
  pair qkv = st_rand((size_t)T * row, 1.0f);
  cpu->rope(qkv.c, posp.c, T, Hq, Hkv, D, 10000.0f, 0), gpu->rope(qkv.g, posp.g, T, Hq, Hkv, D, 10000.0f, 0);
  snprintf(name, sizeof name, "rope T=%d Hq=%d Hkv=%d D=%d", T, Hq, Hkv, D);
  compare(name, qkv, BF16_TOL);
  // Fresh qkv for attention so the backends start from identical inputs again.
  pair_free(&qkv);
  qkv = st_rand((size_t)T * row, 1.0f);
  float scale = 1.0f / sqrtf((float)D);
  pair out = st_poison((size_t)T * Hq * D), lse = f32_poison((size_t)Hq * T);
  cpu->attention_forward(out.c, lse.c, qkv.c, cup.c, B, T, max_len, Hq, Hkv, D, causal, scale);
  gpu->attention_forward(out.g, lse.g, qkv.g, cup.g, B, T, max_len, Hq, Hkv, D, causal, scale);
  snprintf(name, sizeof name, "attention_forward B=%d T=%d max=%d Hq=%d Hkv=%d D=%d causal=%d", B, T, max_len, Hq,
           Hkv, D, causal);
  compare(name, out, BF16_TOL);
  compare("  attention lse", lse, 1e-3);
  pair dout = st_rand((size_t)T * Hq * D, 1.0f), dqkv = st_poison((size_t)T * row);
  cpu->attention_backward(dqkv.c, dout.c, qkv.c, out.c, lse.c, cup.c, B, T, max_len, Hq, Hkv, D, causal, scale);
  gpu->attention_backward(dqkv.g, dout.g, qkv.g, out.g, lse.g, cup.g, B, T, max_len, Hq, Hkv, D, causal, scale);
  snprintf(name, sizeof name, "attention_backward B=%d T=%d Hq=%d Hkv=%d D=%d causal=%d", B, T, Hq, Hkv, D, causal);
  compare(name, dqkv, ATTN_BWD_TOL);
  pair again = st_poison((size_t)T * row);
  gpu->attention_backward(again.g, dout.g, qkv.g, out.g, lse.g, cup.g, B, T, max_len, Hq, Hkv, D, causal, scale);
  check_repeatable("  attention_backward run twice", dqkv.g, again.g, (size_t)T * row * gpu->storage_size);
  pair_free(&again);
  pair_free(&cup), pair_free(&posp), pair_free(&qkv), pair_free(&out), pair_free(&lse), pair_free(&dout);
  pair_free(&dqkv);
  free(cu), free(pos);
}

// linear_small with one epilogue, with and without the RMSNorm prologue and the bias. The output
// has a guard row past M holding a known value on both sides (a write past M changes it); the rest
// is poisoned. RESIDUAL is run a second time in place (out = residual), as the decoder's o_proj may.
static void check_linear_small(int M, int N, int K, sn_epilogue epilogue) {
  static const char *epi_name[] = {"none", "swiglu", "gelu", "residual"};
  char name[200];
  const int n_w = epilogue == SN_EPILOGUE_SWIGLU ? 2 * N : N;
  pair x = st_rand((size_t)M * K, 1.0f), w = st_rand((size_t)n_w * K, 1.0f / sqrtf((float)K));
  pair bias = st_rand(n_w, 1.0f), norm_w = st_rand(K, 1.0f), res = st_rand((size_t)M * N, 1.0f);
  float *init = nan_array((size_t)(M + 1) * N);
  for (int n = 0; n < N; n++) init[(size_t)M * N + n] = 7.0f;  // the guard row
  for (int with_norm = 0; with_norm < 2; with_norm++)
    for (int with_bias = 0; with_bias < 2; with_bias++) {
      pair out = pair_new((size_t)(M + 1) * N, init, 0);
      const void *rc = epilogue == SN_EPILOGUE_RESIDUAL ? res.c : NULL;
      const void *rg = epilogue == SN_EPILOGUE_RESIDUAL ? res.g : NULL;
      cpu->linear_small(out.c, x.c, with_norm ? norm_w.c : NULL, 1e-6f, w.c, with_bias ? bias.c : NULL, rc, M, N, K,
                        epilogue);
      gpu->linear_small(out.g, x.g, with_norm ? norm_w.g : NULL, 1e-6f, w.g, with_bias ? bias.g : NULL, rg, M, N, K,
                        epilogue);
      snprintf(name, sizeof name, "linear_small %s M=%d N=%d K=%d norm=%d bias=%d", epi_name[epilogue], M, N, K,
               with_norm, with_bias);
      compare(name, out, BF16_TOL);
      pair_free(&out);
    }
  if (epilogue == SN_EPILOGUE_RESIDUAL) {  // in place: out = residual
    cpu->linear_small(res.c, x.c, norm_w.c, 1e-6f, w.c, bias.c, res.c, M, N, K, epilogue);
    gpu->linear_small(res.g, x.g, norm_w.g, 1e-6f, w.g, bias.g, res.g, M, N, K, epilogue);
    snprintf(name, sizeof name, "  linear_small residual in place M=%d N=%d K=%d", M, N, K);
    compare(name, res, BF16_TOL);
  }
  pair_free(&x), pair_free(&w), pair_free(&bias), pair_free(&norm_w), pair_free(&res);
  free(init);
}

// The shapes of one model's layer through linear_small at M rows: QKV with the norm prologue,
// o_proj and down with the residual, gate|up with SwiGLU (decoder) or intermediate with GELU (BERT).
static void check_linear_small_layer(int M, int C, int qkv_dim, int I, int decoder) {
  check_linear_small(M, qkv_dim, C, SN_EPILOGUE_NONE);
  check_linear_small(M, C, C, SN_EPILOGUE_RESIDUAL);
  check_linear_small(M, I, C, decoder ? SN_EPILOGUE_SWIGLU : SN_EPILOGUE_GELU);
  check_linear_small(M, C, I, SN_EPILOGUE_RESIDUAL);
}

// attention_rope_forward against the CPU's rope + attention_forward on a copy; qkv must stay unrotated;
// and bit for bit the GPU's own rope + attention_forward (the same rotation and kernel: an inference
// pass through it and a training pass through the unfused ops see the same embeddings).
static void check_attention_rope_short(const int *lens, int B, int Hq, int Hkv, int D, int causal) {
  char name[200];
  int32_t *cu, *pos;
  int max_len;
  const int T = packed_positions(lens, B, &cu, &pos, &max_len);
  size_t row = (size_t)(Hq + 2 * Hkv) * D;
  pair cup = i32_new(B + 1, cu), posp = i32_new(T, pos), qkv = st_rand((size_t)T * row, 1.0f);
  pair out = st_poison((size_t)T * Hq * D);
  const float scale = 1.0f / sqrtf((float)D), theta = 1000000.0f;  // Qwen2's theta
  cpu->attention_rope_forward(out.c, qkv.c, posp.c, cup.c, B, T, max_len, Hq, Hkv, D, theta, causal, scale);
  gpu->attention_rope_forward(out.g, qkv.g, posp.g, cup.g, B, T, max_len, Hq, Hkv, D, theta, causal, scale);
  snprintf(name, sizeof name, "attention_rope_forward B=%d T=%d max=%d Hq=%d Hkv=%d D=%d causal=%d", B, T, max_len,
           Hq, Hkv, D, causal);
  compare(name, out, BF16_TOL);
  compare("  attention_rope_forward leaves qkv unrotated", qkv, 0.0);
  const size_t qkv_bytes = (size_t)T * row * gpu->storage_size, out_bytes = (size_t)T * Hq * D * gpu->storage_size;
  void *rotated = gpu->alloc(qkv_bytes), *unfused = gpu->alloc(out_bytes);
  float *lse = gpu->alloc((size_t)Hq * T * sizeof(float));
  gpu->copy(rotated, qkv.g, qkv_bytes);
  gpu->rope(rotated, posp.g, T, Hq, Hkv, D, theta, 0);
  gpu->attention_forward(unfused, lse, rotated, cup.g, B, T, max_len, Hq, Hkv, D, causal, scale);
  check_repeatable("  attention_rope_forward equals rope + attention_forward", out.g, unfused, out_bytes);
  gpu->free(rotated), gpu->free(unfused), gpu->free(lse);
  pair_free(&cup), pair_free(&posp), pair_free(&qkv), pair_free(&out);
  free(cu), free(pos);
}

static void check_pooling(const int *lens, int B, int C) {
  char name[160];
  int32_t *cu = mallocCheck((B + 1) * sizeof(int32_t));
  int T = make_cu(cu, lens, B);
  pair cup = i32_new(B + 1, cu), hidden = st_rand((size_t)T * C, 1.0f);
  const char *mode_name[3] = {"last", "mean", "first"};
  for (int mode = 0; mode < 3; mode++) {
    pair out = st_poison((size_t)B * C), dout = st_rand((size_t)B * C, 1.0f), dh = st_poison((size_t)T * C);
    cpu->pool_forward(out.c, hidden.c, cup.c, B, T, C, mode), gpu->pool_forward(out.g, hidden.g, cup.g, B, T, C, mode);
    snprintf(name, sizeof name, "pool_forward %s B=%d T=%d C=%d", mode_name[mode], B, T, C);
    compare(name, out, BF16_TOL);
    cpu->pool_backward(dh.c, dout.c, cup.c, B, T, C, mode), gpu->pool_backward(dh.g, dout.g, cup.g, B, T, C, mode);
    snprintf(name, sizeof name, "pool_backward %s B=%d T=%d C=%d", mode_name[mode], B, T, C);
    compare(name, dh, BF16_TOL);
    pair_free(&out), pair_free(&dout), pair_free(&dh);
  }
  pair x = st_rand((size_t)B * C, 1.0f), y = f32_poison((size_t)B * C), nrm = f32_poison(B);
  cpu->l2norm_forward(y.c, nrm.c, x.c, B, C), gpu->l2norm_forward(y.g, nrm.g, x.g, B, C);
  snprintf(name, sizeof name, "l2norm_forward B=%d C=%d", B, C);
  compare(name, y, F32_TOL);
  compare("  l2norm norm", nrm, F32_TOL);
  pair dy = f32_rand((size_t)B * C, 1.0f), dx = st_poison((size_t)B * C);
  cpu->l2norm_backward(dx.c, dy.c, y.c, nrm.c, B, C), gpu->l2norm_backward(dx.g, dy.g, y.g, nrm.g, B, C);
  snprintf(name, sizeof name, "l2norm_backward B=%d C=%d", B, C);
  compare(name, dx, BF16_TOL);
  pair_free(&cup), pair_free(&hidden), pair_free(&x), pair_free(&y), pair_free(&nrm), pair_free(&dy), pair_free(&dx);
  free(cu);
}

static void check_losses(int R, int N, int C) {
  char name[160];
  // Unit-norm-ish embeddings, as after l2norm.
  pair rows = f32_rand((size_t)R * C, 1.0f / sqrtf((float)C)), cols = f32_rand((size_t)N * C, 1.0f / sqrtf((float)C));
  int32_t *tg = mallocCheck(R * sizeof(int32_t));
  for (int r = 0; r < R; r++) tg[r] = (int)(sn_test_uniform(&rng) * N) % N;
  pair target = i32_new(R, tg);
  float l0 = 0.5f;
  pair loss = pair_new(1, &l0, 1);
  pair drows = f32_rand((size_t)R * C, 0.01f), dcols = f32_rand((size_t)N * C, 0.01f);
  cpu->contrastive_loss(loss.c, drows.c, dcols.c, rows.c, cols.c, target.c, R, N, C, 20.0f, 1.0f / R);
  gpu->contrastive_loss(loss.g, drows.g, dcols.g, rows.g, cols.g, target.g, R, N, C, 20.0f, 1.0f / R);
  snprintf(name, sizeof name, "contrastive_loss loss R=%d N=%d C=%d", R, N, C);
  compare(name, loss, F32_TOL);
  compare("  contrastive_loss drows", drows, F32_TOL);
  compare("  contrastive_loss dcols", dcols, F32_TOL);
  pair_free(&rows), pair_free(&cols), pair_free(&target), pair_free(&loss), pair_free(&drows), pair_free(&dcols);
  free(tg);

  int B = R;
  pair s = f32_rand((size_t)B * C, 1.0f), t = f32_rand((size_t)B * C, 1.0f), ds = f32_poison((size_t)B * C);
  float lt[2] = {0.25f, 0.5f};
  pair terms = pair_new(2, lt, 1);
  cpu->distill_loss(terms.c, ds.c, s.c, t.c, B, C, 0.7f, 0.3f), gpu->distill_loss(terms.g, ds.g, s.g, t.g, B, C, 0.7f, 0.3f);
  snprintf(name, sizeof name, "distill_loss terms B=%d C=%d", B, C);
  compare(name, terms, F32_TOL);
  compare("  distill_loss dstudent", ds, F32_TOL);
  pair_free(&s), pair_free(&t), pair_free(&ds), pair_free(&terms);
}

// Score distillation: B queries x G candidates each. The loss and gradients accumulate, so they
// start from random values (an element the kernel forgets keeps them and fails the comparison).
static void check_kl_distill(int B, int G, int C) {
  char name[160];
  pair q = f32_rand((size_t)B * C, 1.0f / sqrtf((float)C)), d = f32_rand((size_t)B * G * C, 1.0f / sqrtf((float)C));
  pair t = f32_rand((size_t)B * G, 3.0f);
  float l0 = 0.5f;
  pair loss = pair_new(1, &l0, 1);
  pair dq = f32_rand((size_t)B * C, 0.01f), dd = f32_rand((size_t)B * G * C, 0.01f);
  cpu->kl_distill_loss(loss.c, dq.c, dd.c, q.c, d.c, t.c, B, G, C, 20.0f, 1.0f, 1.0f / B);
  gpu->kl_distill_loss(loss.g, dq.g, dd.g, q.g, d.g, t.g, B, G, C, 20.0f, 1.0f, 1.0f / B);
  snprintf(name, sizeof name, "kl_distill_loss loss B=%d G=%d C=%d", B, G, C);
  compare(name, loss, F32_TOL);
  compare("  kl_distill_loss dq", dq, F32_TOL);
  compare("  kl_distill_loss dd", dd, F32_TOL);
  pair_free(&q), pair_free(&d), pair_free(&t), pair_free(&loss), pair_free(&dq), pair_free(&dd);
}

// The fused LM head + cross-entropy: N positions over a V-entry vocabulary, every 5th target ignored.
// dhidden is poisoned (written in full); loss and dweight start random (accumulated).
static void check_lm_head(int N, int V, int C) {
  char name[160];
  pair h = st_rand((size_t)N * C, 1.0f), w = st_rand((size_t)V * C, 1.0f / sqrtf((float)C));
  int32_t *tg = mallocCheck((size_t)N * sizeof(int32_t));
  for (int n = 0; n < N; n++) tg[n] = n % 5 == 2 ? SN_IGNORE_TARGET : (int)(sn_test_uniform(&rng) * V) % V;
  tg[N - 1] = V - 1;  // the last column of the last, partial, vocabulary chunk
  pair target = i32_new(N, tg);
  float l0 = 0.5f;
  pair loss = pair_new(1, &l0, 1);
  pair dh = st_poison((size_t)N * C), dw = st_rand((size_t)V * C, 0.01f);
  cpu->lm_head_xent(loss.c, dh.c, dw.c, h.c, w.c, target.c, N, V, C, 1.0f / N);
  gpu->lm_head_xent(loss.g, dh.g, dw.g, h.g, w.g, target.g, N, V, C, 1.0f / N);
  snprintf(name, sizeof name, "lm_head_xent loss N=%d V=%d C=%d", N, V, C);
  compare(name, loss, F32_TOL);
  compare("  lm_head_xent dhidden", dh, BF16_TOL);
  compare("  lm_head_xent dweight", dw, BF16_TOL);
  // forward only (evaluation): the loss alone
  cpu->lm_head_xent(loss.c, NULL, NULL, h.c, w.c, target.c, N, V, C, 1.0f / N);
  gpu->lm_head_xent(loss.g, NULL, NULL, h.g, w.g, target.g, N, V, C, 1.0f / N);
  compare("  lm_head_xent forward-only loss", loss, F32_TOL);
  pair_free(&h), pair_free(&w), pair_free(&target), pair_free(&loss), pair_free(&dh), pair_free(&dw);
  free(tg);
}

static void check_optimizer(size_t n) {
  char name[160];
  pair g = st_rand(n, 1.0f);
  float init = 1.0f;
  pair acc = pair_new(1, &init, 1);
  cpu->sum_squares(acc.c, g.c, n), gpu->sum_squares(acc.g, g.g, n);
  snprintf(name, sizeof name, "sum_squares n=%zu", n);
  compare(name, acc, F32_TOL);
  // AdamW over spans with a gap in the middle (elements the optimizer must leave alone).
  float *master_h = randn(n, 1.0f);
  pair params = pair_new(n, master_h, 0), master = pair_new(n, master_h, 1);
  pair m = f32_rand(n, 0.1f), v = f32_rand(n, 0.1f);
  {  // v must be non-negative
    float *vh = randn(n, 0.1f);
    for (size_t i = 0; i < n; i++) vh[i] = vh[i] * vh[i];
    cpu->upload(v.c, vh, n * 4), gpu->upload(v.g, vh, n * 4);
    free(vh);
  }
  sn_param_span spans[3] = {{0, n / 3, 0.1f}, {n / 3 + n / 10, n / 3, 0.0f}, {2 * (n / 3) + n / 10, n - 2 * (n / 3) - n / 10, 0.01f}};
  sn_adamw_hparams hp = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step = 7, .grad_scale = 0.5f};
  for (int step = 0; step < 2; step++) {
    hp.step = 7 + step;
    cpu->adamw(params.c, master.c, g.c, m.c, v.c, spans, 3, &hp);
    gpu->adamw(params.g, master.g, g.g, m.g, v.g, spans, 3, &hp);
  }
  snprintf(name, sizeof name, "adamw params n=%zu", n);
  compare(name, params, BF16_TOL);
  compare("  adamw master", master, F32_TOL);
  compare("  adamw m", m, F32_TOL);
  compare("  adamw v", v, F32_TOL);
  pair_free(&params), pair_free(&master), pair_free(&m), pair_free(&v);

  // The bf16 state: no master, bf16 moments, stochastic rounding from the same counters on both
  // sides. The inputs are bf16 values on both (the CPU's fp32 storage holds them exactly), so the
  // sides differ only where the fp32 sums before the rounding do (contraction into FMAs): a draw
  // near a rounding edge then lands one bf16 step apart.
  float *m_h = randn(n, 0.1f), *v_h = randn(n, 0.1f);
  for (size_t i = 0; i < n; i++) {
    master_h[i] = sn_bf16_to_f32(sn_f32_to_bf16(master_h[i]));
    m_h[i] = sn_bf16_to_f32(sn_f32_to_bf16(m_h[i]));
    v_h[i] = sn_bf16_to_f32(sn_f32_to_bf16(v_h[i] * v_h[i]));
  }
  params = pair_new(n, master_h, 0), m = pair_new(n, m_h, 0), v = pair_new(n, v_h, 0);
  hp.state_bf16 = 1, hp.index_base = 12345;  // as in a ZeRO slice that starts there
  for (int step = 0; step < 2; step++) {
    hp.step = 7 + step, hp.round_key = sn_rng_stream_key(99, (uint64_t)hp.step);
    cpu->adamw(params.c, NULL, g.c, m.c, v.c, spans, 3, &hp);
    gpu->adamw(params.g, NULL, g.g, m.g, v.g, spans, 3, &hp);
  }
  snprintf(name, sizeof name, "adamw bf16 state params n=%zu", n);
  compare(name, params, BF16_TOL);
  compare("  adamw bf16 state m", m, BF16_TOL);
  compare("  adamw bf16 state v", v, BF16_TOL);
  pair_free(&g), pair_free(&acc), pair_free(&params), pair_free(&m), pair_free(&v);
  free(master_h), free(m_h), free(v_h);
}

// The programmatic-edge probe (kernels/pdl_probe.cu) must catch a copy kernel that does not wait
// for its producer and pass the same kernel when it waits. Then, for the GEMMs of a 0.5B and a
// 384-wide student forward at serving row counts, whether cuBLASLt's pick waits: reported, not
// required (a GEMM not seen to wait gets no edge), but two probes of one GEMM must agree.
static void check_pdl_probe(int quick) {
  const int copy_waits = sn_cuda_pdl_probe_selftest(1);
  if (copy_waits < 0) {
    printf("pdl: skipped (programmatic dependent launch needs sm_90 and SN_PDL unset or 1)\n");
    return;
  }
  CHECK(copy_waits == 1, "pdl probe: a copy kernel that waits for its producer was not seen to wait");
  CHECK(sn_cuda_pdl_probe_selftest(0) == 0, "pdl probe: a copy kernel that does not wait was seen to wait");
  printf("pdl probe: a copy that waits passes, one that does not is caught\n");
  // (N, K, bias) of each linear of the two towers' layers: QKV, o, gate|up, down
  const int shapes[][3] = {{1152, 896, 1}, {896, 896, 0}, {9728, 896, 0}, {896, 4864, 0},
                           {1152, 384, 1}, {384, 384, 0}, {3072, 384, 0}, {384, 1536, 0}};
  const int rows[] = {32, 256, 2048};
  for (size_t r = 0; r < SN_ARRAY_LEN(rows); r++)
    for (size_t i = 0; i < SN_ARRAY_LEN(shapes); i++) {
      if (quick && rows[r] > 32) continue;
      const int M = rows[r], N = shapes[i][0], K = shapes[i][1], bias = shapes[i][2];
      const int waits = sn_cuda_matmul_waits_for_producer(M, N, K, 0, 1, bias, 0);
      const double t0 = sn_now_s();  // the second probe: the plan exists, so this is the probe's cost
      CHECK(waits == sn_cuda_matmul_waits_for_producer(M, N, K, 0, 1, bias, 0),
            "pdl probe of the GEMM M=%d N=%d K=%d: two probes disagree", M, N, K);
      printf("  GEMM M=%d N=%d K=%d bias=%d: %s (probe %.2f ms)\n", M, N, K, bias,
             waits ? "waits for its producer (gets the edge)" : "not seen to wait (no edge)", 1e3 * (sn_now_s() - t0));
    }
}

static const char *op_groups[] = {"elementwise", "embedding", "norms",  "matmul", "attention", "pooling",
                                   "losses",      "optimizer", "search", "small",  "pdl",     "fused"};
static const char *only_group;  // run only this op group (NULL: all)
static int wanted(const char *group) { return !only_group || !strcmp(only_group, group); }
static int known_group(const char *group) {
  for (size_t i = 0; i < SN_ARRAY_LEN(op_groups); i++)
    if (!strcmp(op_groups[i], group)) return 1;
  return 0;
}

int main(int argc, char **argv) {
  // --quick: small shapes only (for compute-sanitizer); --only GROUP: one op group (elementwise,
  // embedding, norms, matmul, attention, pooling, losses, optimizer, search, small, pdl, fused).
  int quick = 0;
  for (int i = 1; i < argc; i++) {
    const char *bad = NULL;  // what was wrong with argument i
    if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (strcmp(argv[i], "--only")) bad = "unknown argument";
    else if (i + 1 >= argc) bad = "--only needs a GROUP";
    else if (!known_group(argv[i + 1])) bad = "unknown op group", i++;
    else only_group = argv[++i];
    if (bad) {
      fprintf(stderr, "error: test_cuda_ops: %s: '%s'\nusage: test_cuda_ops [--quick] [--only GROUP]\nGROUP:", bad,
              argv[i]);
      for (size_t g = 0; g < SN_ARRAY_LEN(op_groups); g++) fprintf(stderr, " %s", op_groups[g]);
      fprintf(stderr, "\n");
      return 2;
    }
  }
  const char *why = NULL;
  gpu = sn_ops_cuda(&why);
  if (!gpu) sn_test_skip(why ? why : "no CUDA backend");
  cpu = sn_ops_cpu();
  verbose_rows = 1;
  sn_test_rng_seed(&rng, (uint64_t)sn_now_s() * 1000003u);  // fresh inputs every run

  if (wanted("elementwise")) {
    size_t elem_sizes[] = {1, 7, 4099, 1 << 20};
    for (size_t i = 0; i < SN_ARRAY_LEN(elem_sizes); i++)
      if (!quick || elem_sizes[i] < 10000) check_elementwise(elem_sizes[i]);
    check_swiglu(1, 8), check_swiglu(3, 37), check_swiglu(65, 4864);
    check_init(1), check_init(4099);
    if (!quick) check_convert_chunks(((size_t)16 << 20) * 2 + 4099);
    if (!quick) check_init((size_t)151936 * 896);  // the 0.5B embedding table: past one grid pass
    // the intermediate widths of Qwen2.5 1.5B, 3B, 7B, 14B and Llama-3-8B
    if (!quick)
      check_swiglu(257, 8960), check_swiglu(129, 11008), check_swiglu(65, 18944), check_swiglu(33, 13824),
          check_swiglu(65, 14336);
  }
  if (wanted("embedding")) {
    check_embedding(1, 64, 10), check_embedding(129, 37, 1000);
    // Long runs of one id (split into segments and combined), several sort tiles, T not a multiple
    // of a tile; one id for every token; past 32k tokens (larger tiles).
    check_embedding(3000, 37, 5), check_embedding(20000, 64, 1);
    if (!quick) check_embedding(16384, 896, 32000), check_embedding(40000, 64, 3);
  }
  if (wanted("norms")) {
    // C = 1536 first: its 48 KB backward ring needs the shared-memory opt-in by itself (static +
    // dynamic past 48 KB), which C = 896 (a larger ring) run before it would have granted already (the
    // Qwen2.5-1.5B crash). Also: the hidden sizes of Qwen2.5 0.5B-14B and Llama-3-8B (896, 1536,
    // 2048, 3584, 4096, 5120), a row group with a part-idle last warp (2056, 4104), the widest packed
    // block (8192), and packed C past it (8200: the two-kernel path).
    int norm_shapes[][2] = {{4096, 1536}, {1, 64},     {3, 37},     {65, 896},  {16384, 896},
                            {1024, 2048}, {2048, 3584}, {1024, 4096}, {512, 5120}, {129, 2056},
                            {33, 4104},   {70, 8192},   {3, 8200}};
    for (size_t i = 0; i < SN_ARRAY_LEN(norm_shapes); i++) {
      if (quick && norm_shapes[i][0] > 100) continue;
      check_norms(norm_shapes[i][0], norm_shapes[i][1]);
    }
  }
  if (wanted("matmul")) {
    check_matmul(1, 1, 1, 0, 1, 1, 0);
    check_matmul(3, 37, 5, 0, 0, 0, 1);
    check_matmul(65, 129, 33, 1, 0, 1, 1);
    check_matmul(17, 64, 130, 1, 1, 0, 0);
    // LoRA's shapes on fused outputs: update into a slice (tb), dB += g^T t (ta), dt = g B
    check_matmul_strided(37, 24, 8, 0, 1, 1, 16);
    check_matmul_strided(24, 8, 37, 1, 0, 1, 8);
    check_matmul_strided(37, 8, 24, 0, 0, 0, 8);
    check_matmul_strided(5, 3, 7, 0, 0, 0, 1);  // odd strides: unaligned rows
    if (!quick) check_matmul_strided(2048, 4864, 32, 0, 1, 1, 4864);  // 0.5B up slice of gate|up
    if (!quick) check_matmul(16384, 896, 896, 0, 1, 1, 0);
    if (!quick) check_matmul(512, 1536, 1536, 0, 0, 0, 1);
    // The family's projections: 1.5B fused QKV (1536 -> 2048) and down (8960 -> 1536), 7B gate|up
    // (3584 -> 2 * 18944) and a weight gradient (ta), 14B / Llama-3-8B widths.
    if (!quick) {
      check_matmul(300, 2048, 1536, 0, 1, 1, 0);
      check_matmul(300, 1536, 8960, 0, 1, 0, 1);
      check_matmul(129, 37888, 3584, 0, 1, 0, 0);
      check_matmul(3584, 4608, 129, 1, 0, 0, 1);
      check_matmul(128, 5120, 5120, 0, 1, 1, 0);
      check_matmul(128, 4096, 14336, 0, 1, 0, 1);
    }
  }
  if (wanted("attention")) {
    int l1[] = {1};
    check_rope_attention(l1, 1, 2, 1, 64, 1);
    int l2[] = {1, 17, 65, 3, 129};
    check_rope_attention(l2, 5, 4, 2, 64, 1);
    check_rope_attention(l2, 5, 4, 2, 64, 0);
    check_rope_attention(l2, 5, 4, 4, 128, 1);
    check_rope_attention(l2, 5, 6, 2, 128, 0);
    check_rope_attention(l2, 5, 2, 1, 32, 1);
    int l3[] = {200, 31, 128, 77};
    check_rope_attention(l3, 4, 12, 2, 128, 1);  // Qwen2.5-1.5B heads
    check_rope_attention(l3, 4, 14, 2, 64, 1);   // Qwen2.5-0.5B heads
    check_rope_attention(l3, 4, 6, 6, 64, 0);    // BERT-style student
    check_rope_attention(l3, 4, 16, 2, 128, 1);  // Qwen2.5-3B heads (GQA 8)
    check_rope_attention(l3, 4, 28, 4, 128, 1);  // Qwen2.5-7B heads (GQA 7)
    check_rope_attention(l3, 4, 40, 8, 128, 1);  // Qwen2.5-14B heads (GQA 5)
    check_rope_attention(l3, 4, 32, 8, 128, 1);  // Llama-3-8B heads (GQA 4)
    // Queries: at most 16 or 32 tokens take forward blocks of one or two warps.
    int l7[] = {32, 5, 17}, l8[] = {16, 1, 9};
    check_rope_attention(l7, 3, 14, 2, 64, 1);
    check_rope_attention(l7, 3, 6, 6, 64, 0);
    check_rope_attention(l8, 3, 12, 2, 128, 1);
    check_rope_attention(l8, 3, 4, 4, 128, 0);
    // Past BWD_WIDE_MIN_SEQLEN: the 128-key backward blocks (128 query rows a step at D = 64).
    int l6[] = {600, 37, 129};
    check_rope_attention(l6, 3, 14, 2, 64, 1);
    check_rope_attention(l6, 3, 12, 2, 128, 0);
    if (!quick) {
      int l4[32];
      for (int i = 0; i < 32; i++) l4[i] = i % 2 ? 512 : 32;  // 8.7k tokens: docs and queries
      check_rope_attention(l4, 32, 14, 2, 64, 1);
      // Long sequences: 32 key blocks chained per query tile, with GQA and both head dims.
      int l5[] = {2048, 1000, 1};
      check_rope_attention(l5, 3, 14, 2, 64, 1);
      check_rope_attention(l5, 3, 12, 2, 128, 1);
      check_rope_attention(l5, 3, 6, 6, 64, 0);
    }
  }
  if (wanted("pooling")) {
    int lens[] = {1, 5, 64, 65, 3};
    check_pooling(lens, 5, 37);
    check_pooling(lens, 5, 896);
    // Mean pooling's packed path: several token lanes per column pack (C = 8, 384, 896) or one lane
    // looping over packs (C = 3584); sequences shorter and longer than the unrolled stride.
    int long_lens[] = {1, 300, 5, 2049, 17};
    check_pooling(long_lens, 5, 8);
    check_pooling(long_lens, 5, 384);
    check_pooling(long_lens, 5, 3584);
    check_pooling(long_lens, 5, 1536), check_pooling(long_lens, 5, 5120);
  }
  if (wanted("losses")) {
    check_losses(1, 1, 8);
    check_losses(7, 33, 37);
    check_losses(64, 128, 896);
    if (!quick) check_losses(512, 1024, 1536), check_losses(128, 256, 3584), check_losses(64, 128, 5120);
    // One candidate (the loss is 0), odd counts and widths, a wide group, a large batch.
    check_kl_distill(1, 1, 8), check_kl_distill(3, 1, 37), check_kl_distill(7, 5, 33), check_kl_distill(5, 67, 129);
    if (!quick) check_kl_distill(64, 16, 896), check_kl_distill(33, 8, 3584);
    // LM head: one row, odd shapes, both chunk edges crossed, Qwen2's vocabulary at 0.5B's width.
    check_lm_head(1, 5, 8), check_lm_head(33, 300, 37);
    check_lm_head(SN_LM_HEAD_ROW_CHUNK + 7, SN_LM_HEAD_VOCAB_CHUNK + 37, 64);
    if (!quick) check_lm_head(SN_LM_HEAD_ROW_CHUNK + 100, 151936, 896);
  }
  if (wanted("optimizer")) {
    check_optimizer(1), check_optimizer(4099);
    if (!quick) check_optimizer(3000001);
  }
  if (wanted("search")) {
    check_scores_f32(1, 1, 1);
    check_scores_f32(7, 1000, 37);
    check_scores_f32(300, 1000, 896);
    if (!quick) check_scores_f32(1024, SEARCH_DOC_BLOCK + 1, 896);
    const int merge_nq[] = {1, 7, 300}, merge_nd[] = {1, 1000, SEARCH_DOC_BLOCK + 1};
    const int merge_k[] = {1, 10, 100, 1000, 1024, SN_TOPK_MAX_K};
    for (size_t a = 0; a < SN_ARRAY_LEN(merge_nq); a++)
      for (size_t b = 0; b < SN_ARRAY_LEN(merge_nd); b++)
        for (size_t c = 0; c < SN_ARRAY_LEN(merge_k); c++) {
          if (quick && (size_t)merge_nq[a] * merge_nd[b] > 100000) continue;
          check_topk_merge(merge_nq[a], merge_nd[b], merge_k[c], 3, SCORES_SPREAD, 0);
          check_topk_merge(merge_nq[a], merge_nd[b], merge_k[c], 3, SCORES_TIED, 1);
          check_topk_merge(merge_nq[a], merge_nd[b], merge_k[c], 3, SCORES_EQUAL, 1);
        }
    check_topk_exact(5000, 300, 896, 100, 1);
    check_topk_exact(5000, 300, 896, 100, 0);
    check_topk_exact(5000, 300, 896, 1000, 0);
    check_topk_exact(7, 3, 64, 10, 1);                 // k clamped to N
    check_topk_exact(5000, 7, 64, SN_TOPK_MAX_K + 1, 1);  // deeper than topk_merge: the host search
    if (!quick) check_topk_exact(40000, 1100, 32, 100, 1);  // several document and query blocks
    // lists of 2048 keep 4096 queries a device slice (eval_search.c): two slices, the second short
    if (!quick) check_topk_exact(2500, 4100, 16, SN_TOPK_MAX_K, 1);
  }
  if (wanted("small")) {
    // linear_small: every epilogue at the tile edges: M of 1, part of an m-tile, exactly one, one
    // past two (M = 33: four m-tiles), the limit; N and K off the column tiles (72, 40) and on them.
    const int rows[] = {1, 7, 16, 33, SN_LINEAR_SMALL_MAX_ROWS};
    const int nk[][2] = {{72, 40}, {1152, 896}, {896, 4864}, {8, 8}, {13, 384}};
    for (size_t r = 0; r < SN_ARRAY_LEN(rows); r++)
      for (size_t s = 0; s < SN_ARRAY_LEN(nk); s++)
        for (int e = SN_EPILOGUE_NONE; e <= SN_EPILOGUE_RESIDUAL; e++) {
          if (quick && (size_t)nk[s][0] * nk[s][1] > 100000) continue;
          check_linear_small(rows[r], nk[s][0], nk[s][1], (sn_epilogue)e);
        }
    // The 0.5B's layer (gate|up of 2 x 4864 = 9728 weight rows) and the 384-wide student's, at a
    // query of 32 tokens, a batch of two and the limit.
    const int layer_rows[] = {32, 2 * 32, 1};
    for (size_t r = 0; r < SN_ARRAY_LEN(layer_rows); r++) {
      if (!quick) check_linear_small_layer(layer_rows[r], 896, (14 + 2 * 2) * 64, 4864, 1);
      check_linear_small_layer(layer_rows[r], 384, 3 * 384, 1536, 0);
    }
    // attention_rope_forward: one token, uneven packed lengths up to the limit, GQA 14/2 and 6/6,
    // D 64 and 128, B 1..8.
    int l1[] = {1};
    int l2[] = {32};
    int l3[] = {1, 17, 65, 3, 128, 31, 64, 2};
    int l4[] = {SN_ATTENTION_SHORT_MAX_SEQLEN, 100, 33};
    for (int causal = 1; causal >= 0; causal--) {
      check_attention_rope_short(l1, 1, 14, 2, 64, causal);
      check_attention_rope_short(l2, 1, 14, 2, 64, causal);
      check_attention_rope_short(l2, 1, 6, 6, 64, causal);
      for (int B = 1; B <= 8; B++) check_attention_rope_short(l3, B, 14, 2, 64, causal);
      check_attention_rope_short(l3, 8, 6, 6, 64, causal);
      check_attention_rope_short(l3, 8, 14, 2, 128, causal);
      check_attention_rope_short(l4, 3, 6, 6, 128, causal);
      check_attention_rope_short(l4, 3, 12, 2, 128, causal);  // Qwen2.5-1.5B heads
    }
  }
  if (wanted("pdl")) check_pdl_probe(quick);
  if (wanted("fused")) {
    // The student's shape (C 384, I 1536, 6/2 heads): one token, one m-tile and one past it, the
    // limit; uneven packed sequences; one block and six; Qwen2's, Llama's and every bias; GQA 6/6
    // and 6/1. The 6-block query of 32 tokens is timed.
    int one[] = {1}, query[] = {32}, edge[] = {16}, past[] = {17}, mixed[] = {5, 1, 12, 9}, pair2[] = {8, 8};
    check_decoder_fused(one, 1, 1, 384, 1536, 6, 2, 1, 0);
    check_decoder_fused(edge, 1, 2, 384, 1536, 6, 2, 1, 0);
    check_decoder_fused(past, 1, 2, 384, 1536, 6, 2, 0, 0);
    check_decoder_fused(mixed, 4, 2, 384, 1536, 6, 2, 2, 0);
    check_decoder_fused(pair2, 2, 2, 384, 1536, 6, 6, 1, 0);
    check_decoder_fused(query, 1, 2, 384, 1536, 6, 1, 1, 0);
    check_decoder_fused(query, 1, 6, 384, 1536, 6, 2, 1, quick ? 0 : 2000);
    check_decoder_fused(one, 1, 6, 384, 1536, 6, 2, 1, quick ? 0 : 2000);
    // The 0.5B tower's shape (C 896, I 4864, 14/2 heads): the same edges on fewer blocks (its CPU
    // twin is slow at this width); sn_bench times all 24.
    check_decoder_fused(one, 1, 1, 896, 4864, 14, 2, 1, 0);
    check_decoder_fused(past, 1, 2, 896, 4864, 14, 2, 0, 0);
    check_decoder_fused(mixed, 4, 2, 896, 4864, 14, 2, 2, 0);
    check_decoder_fused(pair2, 2, 2, 896, 4864, 14, 1, 1, 0);  // MQA: 14 kv heads do not fit its attention phase
    check_decoder_fused(query, 1, 3, 896, 4864, 14, 2, 1, quick ? 0 : 500);
  }
  return sn_test_finish("test_cuda_ops");
}
