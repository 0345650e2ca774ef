// decoder_fused_forward against its CPU twin (the unfused ops in order): a random decoder whose
// projections keep activations of order one (weights of stddev 1/sqrt(fan-in)), so every block's
// rounding shows in the output.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "cuda_ops_harness.h"

#define FUSED_VOCAB 1000          // ids drawn below this; the table is (FUSED_VOCAB, C)
#define FUSED_HEAD_DIM 64
#define FUSED_THETA 1000000.0f    // Qwen2's
#define FUSED_EPS 1e-6f
#define FUSED_NORM_W_STD 0.1f     // norm weights 1 + this N(0, 1)
#define FUSED_BIAS_STD 0.1f

enum { NORM_ATTN, QKV_W, QKV_B, O_W, O_B, NORM_MLP, UP_W, UP_B, DOWN_W, DOWN_B, BLOCK_TENSORS };

static pair norm_weight(int C) {
  float *w = randn(C, FUSED_NORM_W_STD);
  for (int i = 0; i < C; i++) w[i] = round_bf16(1.0f + w[i]);
  pair p = pair_new(C, w, 0);
  free(w);
  return p;
}

void check_decoder_fused(const int *lens, int B, int L, int C, int I, int Hq, int Hkv, int with_bias,
                         int bench_calls) {
  int32_t *cu, *pos;
  int max_len;
  const int T = packed_positions(lens, B, &cu, &pos, &max_len);
  const int qkv_dim = (Hq + 2 * Hkv) * FUSED_HEAD_DIM;
  int32_t *ids = mallocCheck(T * sizeof(int32_t));
  for (int t = 0; t < T; t++) ids[t] = (int32_t)(sn_test_uniform(&rng) * FUSED_VOCAB) % FUSED_VOCAB;
  pair idp = i32_new(T, ids), posp = i32_new(T, pos), cup = i32_new(B + 1, cu);
  pair embed = st_rand((size_t)FUSED_VOCAB * C, 1.0f), final_norm = norm_weight(C);
  pair *t = mallocCheck((size_t)L * BLOCK_TENSORS * sizeof(pair));
  sn_decoder_block *blocks_c = mallocCheck(L * sizeof *blocks_c), *blocks_g = mallocCheck(L * sizeof *blocks_g);
  for (int l = 0; l < L; l++) {
    pair *b = t + (size_t)l * BLOCK_TENSORS;
    b[NORM_ATTN] = norm_weight(C), b[NORM_MLP] = norm_weight(C);
    b[QKV_W] = st_rand((size_t)qkv_dim * C, 1.0f / sqrtf((float)C));
    b[QKV_B] = st_rand(qkv_dim, FUSED_BIAS_STD);
    b[O_W] = st_rand((size_t)C * C, 1.0f / sqrtf((float)C));
    b[O_B] = st_rand(C, FUSED_BIAS_STD);
    b[UP_W] = st_rand((size_t)2 * I * C, 1.0f / sqrtf((float)C));
    b[UP_B] = st_rand((size_t)2 * I, FUSED_BIAS_STD);
    b[DOWN_W] = st_rand((size_t)C * I, 1.0f / sqrtf((float)I));
    b[DOWN_B] = st_rand(C, FUSED_BIAS_STD);
    // with_bias 1: Qwen2's layout, q|k|v biases only; 0: Llama's, none; 2: every projection's
    const int qkv_bias = with_bias != 0, mlp_bias = with_bias == 2;
#define FUSED_BLOCK(side)                                                                                  \
  (sn_decoder_block){b[NORM_ATTN].side, b[QKV_W].side,  qkv_bias ? b[QKV_B].side : NULL,                  \
                     b[O_W].side,       mlp_bias ? b[O_B].side : NULL, b[NORM_MLP].side, b[UP_W].side,     \
                     mlp_bias ? b[UP_B].side : NULL, b[DOWN_W].side, mlp_bias ? b[DOWN_B].side : NULL}
    blocks_c[l] = FUSED_BLOCK(c), blocks_g[l] = FUSED_BLOCK(g);
#undef FUSED_BLOCK
  }
  const sn_decoder_weights wc = {L, C, I, Hq, Hkv, FUSED_HEAD_DIM, FUSED_EPS, FUSED_THETA, embed.c, final_norm.c,
                                 blocks_c};
  const sn_decoder_weights wg = {L, C, I, Hq, Hkv, FUSED_HEAD_DIM, FUSED_EPS, FUSED_THETA, embed.g, final_norm.g,
                                 blocks_g};
  char name[200];
  snprintf(name, sizeof name, "decoder_fused_forward L=%d C=%d I=%d Hq=%d Hkv=%d B=%d T=%d bias=%d", L, C, I, Hq,
           Hkv, B, T, with_bias);
  const int supported = gpu->decoder_fused_supports(&wg, T);
  CHECK(supported, "%s: the CUDA backend does not take this shape (an sm_90 device takes it)", name);
  if (supported) {
    pair out = st_poison((size_t)T * C);
    cpu->decoder_fused_forward(out.c, idp.c, posp.c, cup.c, B, T, &wc);
    gpu->decoder_fused_forward(out.g, idp.g, posp.g, cup.g, B, T, &wg);
    compare(name, out, BF16_TOL);
    const size_t out_bytes = (size_t)T * C * gpu->storage_size;
    void *again = gpu->alloc(out_bytes);
    gpu->decoder_fused_forward(again, idp.g, posp.g, cup.g, B, T, &wg);
    check_repeatable("  decoder_fused_forward again: the same bits", out.g, again, out_bytes);
    if (bench_calls > 0) {
      gpu->synchronize();
      const double t0 = sn_now_s();
      for (int i = 0; i < bench_calls; i++) gpu->decoder_fused_forward(again, idp.g, posp.g, cup.g, B, T, &wg);
      gpu->synchronize();
      printf("  decoder_fused_forward L=%d C=%d T=%d: %.1f us a call (%d calls, launched back to back)\n", L, C, T,
             1e6 * (sn_now_s() - t0) / bench_calls, bench_calls);
    }
    gpu->free(again);
    pair_free(&out);
  }
  for (size_t i = 0; i < (size_t)L * BLOCK_TENSORS; i++) pair_free(&t[i]);
  free(t), free(blocks_c), free(blocks_g);
  pair_free(&idp), pair_free(&posp), pair_free(&cup), pair_free(&embed), pair_free(&final_norm);
  free(ids), free(cu), free(pos);
}
