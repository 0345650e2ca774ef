// The harness of tests/gpu/test_cuda_ops.c: tensors on both backends (`pair`), NaN-poisoned outputs,
// bf16-rounded random inputs, the CPU-vs-GPU comparison and the repeat-bit-for-bit check, shared by
// the op checks (test_cuda_ops.c) and the search checks (cuda_ops_search.c).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "ops.h"
#include "test_util.h"

#define BF16_TOL 1e-2   // bf16 storage: one rounding of every output, and bf16 operands
#define F32_TOL 1e-4    // fp32 outputs of fp32 math (losses, optimizer state)
#define ATTN_BWD_TOL 1e-2  // attention backward: P and dS are rounded to bf16 as tensor-core operands (seen: 2.5e-3)
#define SCORES_TOL 1e-5    // fp32 search scores: fp32 GEMM (no TF32) vs the CPU's dot products, sum order only
#define SEARCH_DOC_BLOCK 16384  // documents per block of the device search (host/eval/eval_search.c)

extern const sn_ops *cpu, *gpu;
extern sn_test_rng rng;   // fresh inputs every run (seeded from the clock by main)
extern int verbose_rows;  // print one row per comparison

// A tensor on both backends.
typedef struct {
  void *c, *g;
  size_t n;
  int is_f32;  // fp32 buffer (float *) rather than storage dtype
} pair;

float round_bf16(float x);                   // round to nearest even, as the GPU's upload does
float *randn(size_t n, float stddev);        // host normals, rounded to bf16
float *nan_array(size_t n);
pair pair_new(size_t n, const float *host, int is_f32);  // host = NULL: poisoned with NaN
pair st_rand(size_t n, float stddev);        // storage dtype, random
pair f32_rand(size_t n, float stddev);       // fp32, random
pair st_poison(size_t n);
pair f32_poison(size_t n);
pair i32_new(size_t n, const int32_t *host); // int32 on both backends
void pair_free(pair *p);
// Downloads both sides as fp32 and compares; returns ||gpu - cpu|| / ||cpu||.
double compare(const char *what, pair p, double tol);
// The GPU op run twice on the same inputs must give the same bits (storage_bytes of each output).
void check_repeatable(const char *what, const void *first, const void *again, size_t storage_bytes);
int make_cu(int32_t *cu, const int *lens, int B);  // cu_seqlens (B+1) of the lengths; returns T
// Packed sequences of these lengths: *cu (B + 1) and *pos (T, each token's place in its sequence),
// host arrays the caller frees; returns T, the longest length in *max_len.
int packed_positions(const int *lens, int B, int32_t **cu, int32_t **pos, int *max_len);

// ---- search checks (cuda_ops_search.c) ------------------------------------------------------------
typedef enum {
  SCORES_SPREAD,  // cosine-like: 0.5 + 0.1 N(0, 1); ranks decided by the score bits
  SCORES_TIED,    // 8 values (with -0.0, +0.0 and -inf): ranks decided by the tie keys
  SCORES_EQUAL,   // one value: every radix pass runs
} score_kind;
void check_scores_f32(int M, int N, int K);
void check_topk_merge(int nq, int nd, int k, int nblocks, score_kind kind, int with_tie_key);
void check_topk_exact(int N, int Q, int C, int k, int quantized);

// ---- the fused decoder (cuda_ops_fused.c) ---------------------------------------------------------
// decoder_fused_forward of a random decoder of L blocks (C wide, MLP I, Hq/Hkv heads of 64) over
// packed sequences of these lengths against the CPU; with_bias: q|k|v biases (Qwen2) or none (Llama).
// bench_calls > 0: also times that many calls and prints the microseconds a call.
void check_decoder_fused(const int *lens, int B, int L, int C, int I, int Hq, int Hkv, int with_bias,
                         int bench_calls);
