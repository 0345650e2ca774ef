// The small-batch inference ops (ops.h: linear_small, attention_rope_forward, decoder_fused_forward)
// as the unfused ops they replace, called in the same order on the same values: the CPU gains
// nothing from fusing (a launch costs nothing here), and composing keeps the CPU's fused model path
// bit-identical to the unfused one. The intermediates live in this thread's SN_CPU_SCRATCH_FUSED
// scratch.
#include <math.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

// Scratch split into 64-byte aligned float regions.
#define FUSED_ALIGN_FLOATS 16
static size_t aligned_floats(size_t n) {
  return (n + FUSED_ALIGN_FLOATS - 1) / FUSED_ALIGN_FLOATS * FUSED_ALIGN_FLOATS;
}

static void check_linear_small_shape(int M, int N, int K, sn_epilogue epilogue,
                                     const void *residual) {
  if (M < 1 || M > SN_LINEAR_SMALL_MAX_ROWS || N < 1 || K < 1 || K % 8 != 0)
    sn_fatal("linear_small: M=%d N=%d K=%d (need 1 <= M <= %d, N >= 1, K a positive multiple of 8)",
             M, N, K, SN_LINEAR_SMALL_MAX_ROWS);
  if ((epilogue == SN_EPILOGUE_RESIDUAL) != (residual != NULL))
    sn_fatal("linear_small: a residual goes with SN_EPILOGUE_RESIDUAL only (epilogue %d)",
             (int)epilogue);
}

void sn_cpu_linear_small(void *out, const void *x, const void *norm_w, float eps, const void *w,
                         const void *bias, const void *residual, int M, int N, int K,
                         sn_epilogue epilogue) {
  check_linear_small_shape(M, N, K, epilogue, residual);
  const int n_w = epilogue == SN_EPILOGUE_SWIGLU ? 2 * N : N;  // rows of W
  const size_t xn_floats = norm_w ? aligned_floats((size_t)M * K) : 0;
  const size_t rstd_floats = norm_w ? aligned_floats(M) : 0;
  const size_t y_floats = epilogue == SN_EPILOGUE_NONE ? 0 : (size_t)M * n_w;
  float *scratch = sn_cpu_scratch(SN_CPU_SCRATCH_FUSED,
                                  (xn_floats + rstd_floats + y_floats + 1) * sizeof(float));
  float *xn = scratch, *rstd = xn + xn_floats, *y = rstd + rstd_floats;  // (M, K), (M), (M, n_w)
  if (norm_w) sn_cpu_rmsnorm_forward(xn, rstd, x, norm_w, M, K, eps);
  const void *a = norm_w ? (const void *)xn : x;
  switch (epilogue) {
    case SN_EPILOGUE_NONE: sn_cpu_matmul(out, a, w, bias, M, N, K, 0, 1, 0); break;
    case SN_EPILOGUE_SWIGLU:
      sn_cpu_matmul(y, a, w, bias, M, n_w, K, 0, 1, 0);
      sn_cpu_swiglu_forward(out, y, M, N);
      break;
    case SN_EPILOGUE_GELU:
      sn_cpu_matmul(y, a, w, bias, M, N, K, 0, 1, 0);
      sn_cpu_gelu_forward(out, y, (size_t)M * N);
      break;
    case SN_EPILOGUE_RESIDUAL:
      sn_cpu_matmul(y, a, w, bias, M, N, K, 0, 1, 0);
      sn_cpu_add(out, residual, y, (size_t)M * N);
      break;
    default: sn_fatal("linear_small: unknown epilogue %d", (int)epilogue);
  }
}

void sn_cpu_attention_rope_forward(void *out, const void *qkv, const int32_t *pos,
                                   const int32_t *cu_seqlens, int B, int T, int max_seqlen, int Hq,
                                   int Hkv, int D, float theta, int causal, float scale) {
  if (max_seqlen > SN_ATTENTION_SHORT_MAX_SEQLEN || D % 2 != 0 ||
      D > SN_ATTENTION_SHORT_MAX_HEAD_DIM)
    sn_fatal("attention_rope_forward: max_seqlen=%d D=%d (need max_seqlen <= %d, D even, <= %d)",
             max_seqlen, D, SN_ATTENTION_SHORT_MAX_SEQLEN, SN_ATTENTION_SHORT_MAX_HEAD_DIM);
  const size_t qkv_floats = aligned_floats((size_t)T * (Hq + 2 * Hkv) * D);
  float *rotated = sn_cpu_scratch(SN_CPU_SCRATCH_FUSED,
                                  (qkv_floats + (size_t)Hq * T + 1) * sizeof(float));
  float *lse = rotated + qkv_floats;  // (Hq, T), not wanted
  memcpy(rotated, qkv, (size_t)T * (Hq + 2 * Hkv) * D * sizeof(float));
  sn_cpu_rope(rotated, pos, T, Hq, Hkv, D, theta, 0);
  sn_cpu_attention_forward(out, lse, rotated, cu_seqlens, B, T, max_seqlen, Hq, Hkv, D, causal,
                           scale);
}

int sn_cpu_decoder_fused_supports(const sn_decoder_weights *w, int T) {
  return w->layers >= 0 && w->layers <= SN_DECODER_FUSED_MAX_LAYERS && T >= 1 && T <= SN_DECODER_FUSED_MAX_ROWS;
}

// The model's decoder forward (model_decoder.c), op for op: embedding, then per block rmsnorm,
// q|k|v, rope, attention, o_proj, residual + rmsnorm, gate|up, SwiGLU, down, residual; the final norm.
void sn_cpu_decoder_fused_forward(void *out, const int32_t *ids, const int32_t *pos,
                                  const int32_t *cu_seqlens, int B, int T, const sn_decoder_weights *w) {
  if (!sn_cpu_decoder_fused_supports(w, T))
    sn_fatal("decoder_fused_forward: T=%d, %d layers (need 1 <= T <= %d, at most %d layers)", T, w->layers,
             SN_DECODER_FUSED_MAX_ROWS, SN_DECODER_FUSED_MAX_LAYERS);
  const int C = w->hidden, I = w->intermediate, Hq = w->heads, Hkv = w->kv_heads, D = w->head_dim;
  const int qkv_dim = (Hq + 2 * Hkv) * D, attn_dim = Hq * D;
  int max_seqlen = 0;
  for (int b = 0; b < B; b++) max_seqlen = SN_MAX(max_seqlen, cu_seqlens[b + 1] - cu_seqlens[b]);
  const size_t row_floats[] = {C, C, C, qkv_dim, attn_dim, 2 * (size_t)I, I, C};
  enum { H, X, XN, QKV, ATT, GATE_UP, FF, PROJ, BUFFERS };
  size_t total = aligned_floats((size_t)Hq * T) + aligned_floats(T);  // lse, rstd
  for (int i = 0; i < BUFFERS; i++) total += aligned_floats(row_floats[i] * T);
  float *scratch = sn_cpu_scratch(SN_CPU_SCRATCH_FUSED, total * sizeof(float)), *buf[BUFFERS];
  float *next = scratch;
  for (int i = 0; i < BUFFERS; i++) buf[i] = next, next += aligned_floats(row_floats[i] * T);
  float *lse = next, *rstd = lse + aligned_floats((size_t)Hq * T);
  const float scale = 1.0f / sqrtf((float)D);
  sn_cpu_embedding_forward(buf[H], ids, w->tok_embed, T, C, 0);
  for (int l = 0; l < w->layers; l++) {
    const sn_decoder_block *p = &w->blocks[l];
    sn_cpu_rmsnorm_forward(buf[XN], rstd, buf[H], p->norm_attn_w, T, C, w->norm_eps);
    sn_cpu_matmul(buf[QKV], buf[XN], p->qkv_w, p->qkv_b, T, qkv_dim, C, 0, 1, 0);
    sn_cpu_rope(buf[QKV], pos, T, Hq, Hkv, D, w->rope_theta, 0);
    sn_cpu_attention_forward(buf[ATT], lse, buf[QKV], cu_seqlens, B, T, max_seqlen, Hq, Hkv, D, 1, scale);
    sn_cpu_matmul(buf[PROJ], buf[ATT], p->o_w, p->o_b, T, C, attn_dim, 0, 1, 0);
    sn_cpu_add_rmsnorm_forward(buf[X], buf[XN], rstd, buf[H], buf[PROJ], p->norm_mlp_w, T, C, w->norm_eps);
    sn_cpu_matmul(buf[GATE_UP], buf[XN], p->up_w, p->up_b, T, 2 * I, C, 0, 1, 0);
    sn_cpu_swiglu_forward(buf[FF], buf[GATE_UP], T, I);
    sn_cpu_matmul(buf[PROJ], buf[FF], p->down_w, p->down_b, T, C, I, 0, 1, 0);
    sn_cpu_add(buf[H], buf[X], buf[PROJ], (size_t)T * C);
  }
  sn_cpu_rmsnorm_forward(out, rstd, buf[H], w->final_norm_w, T, C, w->norm_eps);
}
