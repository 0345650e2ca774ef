// Internal header of the CPU reference backend: one function per entry of the sn_ops table
// (host/backend/ops.h documents the semantics), plus the few helpers the op files share.
//
// Storage dtype is fp32, so every `void *` tensor is a float array in host memory.
//
// Determinism: every op partitions its work so that each output element (or each partial sum) is
// computed by exactly one thread in a fixed order that does not depend on how many threads run.
// The results are therefore bitwise identical run to run *and* across OpenMP thread counts
// (on the same machine: the matmul micro-kernel uses FMA where the CPU has it).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../ops.h"

// ---- shared helpers ---------------------------------------------------------------------------
// Below this many elements (streaming ops) or flops (matmul, attention) an op runs on one thread.
// Waking the team and joining it costs microseconds on an idle machine but can cost a scheduler
// time slice on an oversubscribed one (CI runs tests in parallel on 2 cores), so only work worth
// well over 100 us goes parallel.
#define SN_CPU_PARALLEL_MIN_WORK (1 << 18)
#define SN_CPU_PARALLEL_MIN_FLOPS (4.0 * (1 << 20))

// Column-block width for "parallel over columns, rows in order" reductions (weight gradients):
// wide enough for vector loads, narrow enough to give every thread a block when C is small.
#define SN_CPU_COL_BLOCK 64

// Sums in double over SN_CPU_SUM_LANES interleaved partial sums: a fixed order (deterministic)
// that still vectorises, where one running double sum is a chain of dependent adds.
#define SN_CPU_SUM_LANES 8
// sum of a[i] * b[i] over i < n (pass b = a for a sum of squares)
static inline double sn_cpu_dot_f64(const float *a, const float *b, int n) {
  double lanes[SN_CPU_SUM_LANES] = {0};
  int i = 0;
  for (; i + SN_CPU_SUM_LANES <= n; i += SN_CPU_SUM_LANES)
    for (int l = 0; l < SN_CPU_SUM_LANES; l++) lanes[l] += (double)a[i + l] * b[i + l];
  double sum = 0.0;
  for (int l = 0; l < SN_CPU_SUM_LANES; l++) sum += lanes[l];
  for (; i < n; i++) sum += (double)a[i] * b[i];
  return sum;
}
// sum of x[i] over i < n
static inline double sn_cpu_sum_f64(const float *x, int n) {
  double lanes[SN_CPU_SUM_LANES] = {0};
  int i = 0;
  for (; i + SN_CPU_SUM_LANES <= n; i += SN_CPU_SUM_LANES)
    for (int l = 0; l < SN_CPU_SUM_LANES; l++) lanes[l] += x[i + l];
  double sum = 0.0;
  for (int l = 0; l < SN_CPU_SUM_LANES; l++) sum += lanes[l];
  for (; i < n; i++) sum += x[i];
  return sum;
}

// exp of 4 floats with GCC/Clang vector extensions, branch-free so loops over rows vectorise
// (libm's expf is a scalar call: in attention and SwiGLU it cost more than the matmuls).
// 2^n e^r with n = round(x / ln 2), |r| <= ln(2)/2, e^r by its degree-6 Taylor polynomial: within
// 3e-7 relative of exp (checked over every float in [-87, 0]). x is clamped to [-87, 88]: e^-87
// ~ 1.6e-38 stands for 0, e^88 ~ 1.7e38 for overflow.
#define SN_CPU_EXP_LANES 4
typedef float sn_v4f __attribute__((vector_size(SN_CPU_EXP_LANES * sizeof(float))));
typedef int32_t sn_v4i __attribute__((vector_size(SN_CPU_EXP_LANES * sizeof(int32_t))));
#define SN_CPU_EXP_MIN_ARG -87.0f
#define SN_CPU_EXP_MAX_ARG 88.0f
static inline sn_v4f sn_cpu_exp_v4(sn_v4f x) {
  const float log2e = 1.44269504088896341f;
  const float ln2_hi = 0.693145751953125f, ln2_lo = 1.42860682030941723e-6f;  // n ln2_hi exact
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds a float to an integer
  const int exp_bias = 127, mantissa_bits = 23;
  sn_v4f lo = x - x + SN_CPU_EXP_MIN_ARG, hi = x - x + SN_CPU_EXP_MAX_ARG;
  sn_v4i below = x < lo, above = x > hi;  // all-ones lanes where x is clamped
  x = (sn_v4f)(((sn_v4i)x & ~below) | ((sn_v4i)lo & below));
  x = (sn_v4f)(((sn_v4i)x & ~above) | ((sn_v4i)hi & above));
  sn_v4f n = (x * log2e + round_magic) - round_magic;
  sn_v4f r = (x - n * ln2_hi) - n * ln2_lo;
  sn_v4f p = 1.0f + r * (1.0f + r * (1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
                                                                       r * (1.0f / 720))))));
  sn_v4i two_n = (__builtin_convertvector(n, sn_v4i) + exp_bias) << mantissa_bits;
  return p * (sn_v4f)two_n;
}

// Grows-on-demand scratch owned by the calling thread, so hot ops do not mmap/munmap large
// buffers every call. `slot` separates scratch users that can be live at the same time.
// Returns 64-byte aligned memory of at least `bytes`; contents undefined.
// SN_CPU_SCRATCH_FUSED holds the intermediates of the fused small-batch ops (cpu_small_batch.c),
// which call ops that use the other two slots.
enum {
  SN_CPU_SCRATCH_MATMUL = 0,
  SN_CPU_SCRATCH_OP = 1,
  SN_CPU_SCRATCH_FUSED = 2,
  SN_CPU_SCRATCH_SLOTS = 3
};
void *sn_cpu_scratch(int slot, size_t bytes);

// ---- memory -------------------------------------------------------------------------------------
void *sn_cpu_alloc(size_t bytes);
void sn_cpu_free(void *p);
void sn_cpu_memset_zero(void *p, size_t bytes);
void sn_cpu_copy(void *dst, const void *src, size_t bytes);
void sn_cpu_upload_f32(void *dst, const float *host_src, size_t n);
void sn_cpu_download_f32(float *host_dst, const void *src, size_t n);
void sn_cpu_storage_to_f32(float *dst, const void *src, size_t n);
void sn_cpu_f32_to_storage(void *dst, const float *src, size_t n);
void sn_cpu_synchronize(void);
sn_alloc_stats sn_cpu_memory_stats(void);
void sn_cpu_memory_reset_peak(void);
void sn_cpu_device_memory(size_t *free_bytes, size_t *total_bytes);
size_t sn_cpu_workspace_bytes(const sn_workspace_shape *shape);

// ---- elementwise --------------------------------------------------------------------------------
void sn_cpu_fill_normal(void *x, size_t n, uint64_t key, float stddev);
void sn_cpu_fill(void *x, size_t n, float value);
void sn_cpu_dropout(void *out, const void *x, size_t n, uint64_t key, float p, int accumulate);
void sn_cpu_add(void *out, const void *a, const void *b, size_t n);
void sn_cpu_add_f32(float *out, const float *a, const float *b, size_t n);
void sn_cpu_scale_f32(float *x, float s, size_t n);
void sn_cpu_axpy_2d(void *dst, int ld_dst, const void *src, int ld_src, int rows, int cols, float alpha,
                    int accumulate);

// ---- embedding ----------------------------------------------------------------------------------
void sn_cpu_embedding_forward(void *out, const int32_t *ids, const void *table, int T, int C,
                              int accumulate);
void sn_cpu_embedding_backward(void *dtable, const void *dout, const int32_t *ids, int T, int C,
                               int V);

// ---- norms --------------------------------------------------------------------------------------
void sn_cpu_rmsnorm_forward(void *out, float *rstd, const void *x, const void *weight, int T, int C,
                            float eps);
void sn_cpu_rmsnorm_backward(void *dx, void *dweight, const void *dout, const void *x,
                             const void *weight, const float *rstd, int T, int C, int accumulate);
void sn_cpu_add_rmsnorm_forward(void *residual_out, void *out, float *rstd, const void *a,
                                const void *b, const void *weight, int T, int C, float eps);
void sn_cpu_layernorm_forward(void *out, float *mean, float *rstd, const void *x,
                              const void *weight, const void *bias, int T, int C, float eps);
void sn_cpu_layernorm_backward(void *dx, void *dweight, void *dbias, const void *dout,
                               const void *x, const void *weight, const float *mean,
                               const float *rstd, int T, int C, int accumulate);
void sn_cpu_add_layernorm_forward(void *residual_out, void *out, float *mean, float *rstd,
                                  const void *a, const void *b, const void *weight,
                                  const void *bias, int T, int C, float eps);

// ---- matmul -------------------------------------------------------------------------------------
void sn_cpu_matmul(void *C, const void *A, const void *B, const void *bias, int M, int N, int K,
                   int trans_a, int trans_b, int accumulate);
void sn_cpu_matmul_strided(void *C, int ldc, const void *A, int lda, const void *B, int ldb,
                           const void *bias, int M, int N, int K, int trans_a, int trans_b,
                           int accumulate);
void sn_cpu_bias_backward(void *dbias, const void *dout, int M, int N);
// The fused small-batch ops (cpu_small_batch.c): the unfused ops above, composed in their order.
void sn_cpu_linear_small(void *out, const void *x, const void *norm_w, float eps, const void *w,
                         const void *bias, const void *residual, int M, int N, int K,
                         sn_epilogue epilogue);
void sn_cpu_attention_rope_forward(void *out, const void *qkv, const int32_t *pos,
                                   const int32_t *cu_seqlens, int B, int T, int max_seqlen, int Hq,
                                   int Hkv, int D, float theta, int causal, float scale);
int sn_cpu_decoder_fused_supports(const sn_decoder_weights *w, int T);
void sn_cpu_decoder_fused_forward(void *out, const int32_t *ids, const int32_t *pos,
                                  const int32_t *cu_seqlens, int B, int T, const sn_decoder_weights *w);
// The matmul with row strides (lda, ldb, ldc: floats between consecutive rows of each *stored*
// matrix), for operands that are slices of wider rows (attention heads inside qkv rows).
// allow_threads = 0, or a call from inside a parallel region, runs on the calling thread only.
void sn_cpu_gemm(float *C, int ldc, const float *A, int lda, int trans_a, const float *B, int ldb,
                 int trans_b, const float *bias, int M, int N, int K, int accumulate,
                 int allow_threads);

// ---- rope and attention -------------------------------------------------------------------------
void sn_cpu_rope(void *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta,
                 int inverse);
void sn_cpu_attention_forward(void *out, float *lse, const void *qkv, const int32_t *cu_seqlens,
                              int B, int T, int max_seqlen, int Hq, int Hkv, int D, int causal,
                              float scale);
void sn_cpu_attention_backward(void *dqkv, const void *dout, const void *qkv, const void *out,
                               const float *lse, const int32_t *cu_seqlens, int B, int T,
                               int max_seqlen, int Hq, int Hkv, int D, int causal, float scale);

// ---- activations --------------------------------------------------------------------------------
void sn_cpu_swiglu_forward(void *out, const void *gate_up, int T, int I);
void sn_cpu_swiglu_backward(void *dgate_up, const void *dout, const void *gate_up, int T, int I);
void sn_cpu_gelu_forward(void *out, const void *x, size_t n);
void sn_cpu_gelu_backward(void *dx, const void *dout, const void *x, size_t n);

// ---- pooling and L2 normalisation ---------------------------------------------------------------
// The floor of the norm in l2norm (as torch.nn.functional.normalize): x / max(||x||, eps).
#define SN_L2NORM_EPS 1e-12f
void sn_cpu_pool_forward(void *out, const void *hidden, const int32_t *cu_seqlens, int B, int T,
                         int C, sn_pooling mode);
void sn_cpu_pool_backward(void *dhidden, const void *dout, const int32_t *cu_seqlens, int B, int T,
                          int C, sn_pooling mode);
void sn_cpu_l2norm_forward(float *out, float *norm, const void *x, int B, int C);
void sn_cpu_l2norm_backward(void *dx, const float *dout, const float *out, const float *norm, int B,
                            int C);

// ---- losses -------------------------------------------------------------------------------------
// The floor of each vector norm in the distillation cosine (as torch.cosine_similarity).
#define SN_COSINE_EPS 1e-8f
void sn_cpu_contrastive_loss(float *loss, float *drows, float *dcols, const float *rows,
                             const float *cols, const int32_t *target, int R, int N, int C,
                             float inv_temp, float scale);
void sn_cpu_distill_loss(float *loss_terms, float *dstudent, const float *student,
                         const float *teacher, int B, int C, float alpha, float beta);
void sn_cpu_kl_distill_loss(float *loss, float *dq, float *dd, const float *q, const float *d,
                            const float *teacher, int B, int G, int C, float inv_temp_student,
                            float inv_temp_teacher, float scale);
void sn_cpu_lm_head_xent(float *loss, void *dhidden, void *dweight, const void *hidden, const void *weight,
                         const int32_t *targets, int N, int V, int C, float scale);  // cpu_lm_head.c

// ---- exact top-k for evaluation (cpu_topk.c) ----------------------------------------------------
void sn_cpu_scores_f32(float *S, const float *A, const float *B, int M, int N, int K);
void sn_cpu_topk_merge(float *best_score, int32_t *best_idx, const float *scores, int nq, int nd,
                       int k, int col0, const int32_t *tie_key);

// ---- optimizer ----------------------------------------------------------------------------------
void sn_cpu_sum_squares(float *out, const void *grads, size_t n);
void sn_cpu_adamw(void *params, float *master, const void *grads, void *m, void *v,
                  const sn_param_span *spans, int nspans, const sn_adamw_hparams *hp);
