// Cache-blocked fp32 matmul (the BLIS loop nest) and the bias gradient.
//
// C (M, N) = op(A) (M, K) @ op(B) (K, N) [+ bias] [+ C]
//   C is cut into MC x NC tiles, spread over the threads (static schedule). For each KC slice of
//   K, a thread packs the tile's MC x KC block of op(A) into MR-tall row panels, (KC, MR) each, and
//   its KC x NC block of op(B) into NR-wide column panels, (KC, NR) each, then runs the MR x NR
//   micro-kernel over the tile: it streams both with unit stride whatever the transposes, the B
//   micro-panel (KC x NR) stays in L1, the A block in L2.
// Each element of C is computed by one thread, in the same order whatever the thread count, so
// the result is deterministic and independent of OMP_NUM_THREADS.
// The micro-kernel is written with GCC/Clang vector extensions in two widths: 8 floats compiled
// for AVX2 + FMA, used where the CPU has them (picked at run time: the build uses no -march flag),
// and 4 floats for the baseline ISA (SSE2 on x86-64, NEON on arm64).
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

#define MR 6                // micro-tile rows: 6 x 2 accumulators of 8 floats + 2 B vectors + 1
#define NR 16               //   broadcast fit the 16 AVX2 registers
#define KC 256              // K slice: a (KC, NR) B micro-panel is 16 KiB, in L1
#define MC (MR * 16)        // rows of a C tile: the (MC, KC) packed A block is 96 KiB, in L2
#define NC (NR * 16)        // columns of a C tile
#define VEC 8               // floats per vector
#define TILES_PER_THREAD 4  // C tiles per thread at least, when M allows, for load balance

typedef float v8 __attribute__((vector_size(VEC * sizeof(float))));
// Unaligned vector load/store (memcpy compiles to one vmovups).
#define LOAD8(dst, src) memcpy(&(dst), (src), sizeof(v8))
#define STORE8(dst, src) memcpy((dst), &(src), sizeof(v8))

// ---- micro-kernel -------------------------------------------------------------------------------
// C[0:m, 0:n] (row stride ldc) += a (kc, MR) panel @ b (kc, NR) panel.
static inline __attribute__((always_inline)) void micro_kernel_body_v8(
    int kc, const float *restrict a, const float *restrict b, float *restrict c, int ldc, int m,
    int n) {
  v8 acc[MR][2];
  for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = (v8){0};
  for (int k = 0; k < kc; k++) {
    v8 b0, b1;
    LOAD8(b0, b + k * NR);
    LOAD8(b1, b + k * NR + VEC);
    for (int i = 0; i < MR; i++) {
      float s = a[k * MR + i];
      v8 ai = {s, s, s, s, s, s, s, s};
      acc[i][0] = acc[i][0] + ai * b0;
      acc[i][1] = acc[i][1] + ai * b1;
    }
  }
  if (m == MR && n == NR) {
    for (int i = 0; i < MR; i++) {
      v8 c0, c1;
      LOAD8(c0, c + i * ldc);
      LOAD8(c1, c + i * ldc + VEC);
      c0 = c0 + acc[i][0];
      c1 = c1 + acc[i][1];
      STORE8(c + i * ldc, c0);
      STORE8(c + i * ldc + VEC, c1);
    }
    return;
  }
  float tile[MR][NR];  // edge tile: spill, then add the valid part
  for (int i = 0; i < MR; i++) {
    STORE8(&tile[i][0], acc[i][0]);
    STORE8(&tile[i][VEC], acc[i][1]);
  }
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) c[i * ldc + j] += tile[i][j];
}

typedef void (*micro_kernel_fn)(int kc, const float *a, const float *b, float *c, int ldc, int m,
                                int n);

// The portable kernel uses 4-float vectors (SSE2, NEON): 8-float ones without AVX are split by
// the compiler and spill. The NR columns are done in halves so 12 accumulators stay in registers.
#define VEC4 4
typedef float v4 __attribute__((vector_size(VEC4 * sizeof(float))));
#define HALF_NR (NR / 2)

static void micro_kernel_baseline(int kc, const float *restrict a, const float *restrict b,
                                  float *restrict c, int ldc, int m, int n) {
  float tile[MR][NR];
  for (int half = 0; half < NR; half += HALF_NR) {
    v4 acc[MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = (v4){0};
    for (int k = 0; k < kc; k++) {
      v4 b0, b1;
      memcpy(&b0, b + k * NR + half, sizeof b0);
      memcpy(&b1, b + k * NR + half + VEC4, sizeof b1);
      for (int i = 0; i < MR; i++) {
        float s = a[k * MR + i];
        v4 ai = {s, s, s, s};
        acc[i][0] = acc[i][0] + ai * b0;
        acc[i][1] = acc[i][1] + ai * b1;
      }
    }
    for (int i = 0; i < MR; i++) {
      memcpy(&tile[i][half], &acc[i][0], sizeof acc[i][0]);
      memcpy(&tile[i][half + VEC4], &acc[i][1], sizeof acc[i][1]);
    }
  }
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) c[i * ldc + j] += tile[i][j];
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) static void micro_kernel_avx2(int kc, const float *a,
                                                                  const float *b, float *c,
                                                                  int ldc, int m, int n) {
  micro_kernel_body_v8(kc, a, b, c, ldc, m, n);
}
#endif

// SN_CPU_KERNEL=baseline forces the portable kernel (to test it, or to compare bits across CPUs).
static micro_kernel_fn pick_micro_kernel(void) {
  const char *forced = getenv("SN_CPU_KERNEL");
  if (forced && strcmp(forced, "baseline") == 0) return micro_kernel_baseline;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return micro_kernel_avx2;
#endif
  return micro_kernel_baseline;
}

// ---- packing ------------------------------------------------------------------------------------
// Bp (ceil(nc/NR) panels of (kc, NR)) = op(B)[k0:k0+kc, j0:j0+nc], zero-padded past column
// j0+nc. Each loop nest reads B with unit stride.
static void pack_b_block(float *restrict dst, const float *restrict B, int ldb, int trans_b, int j0,
                         int nc, int k0, int kc) {
  for (int p = 0; p * NR < nc; p++) {
    float *panel = dst + (size_t)p * kc * NR;
    int cols = SN_MIN(NR, nc - p * NR);
    if (trans_b) {  // B (N, K): row j of B is column j of op(B)
      for (int j = 0; j < cols; j++) {
        const float *src = B + (size_t)(j0 + p * NR + j) * ldb + k0;
        for (int k = 0; k < kc; k++) panel[k * NR + j] = src[k];
      }
    } else {  // B (K, N)
      for (int k = 0; k < kc; k++) {
        const float *src = B + (size_t)(k0 + k) * ldb + j0 + p * NR;
        for (int j = 0; j < cols; j++) panel[k * NR + j] = src[j];
      }
    }
    for (int k = 0; k < kc; k++)
      for (int j = cols; j < NR; j++) panel[k * NR + j] = 0.0f;
  }
}

// Ap (ceil(mc/MR) panels of (kc, MR)) = op(A)[i0:i0+mc, k0:k0+kc], zero-padded past row i0+mc.
static void pack_a_block(float *restrict dst, const float *restrict A, int lda, int trans_a, int i0,
                         int mc, int k0, int kc) {
  for (int p = 0; p * MR < mc; p++) {
    float *panel = dst + (size_t)p * kc * MR;
    int rows = SN_MIN(MR, mc - p * MR);
    if (trans_a) {  // A (K, M): op(A) rows are contiguous in each row of A
      for (int k = 0; k < kc; k++) {
        const float *src = A + (size_t)(k0 + k) * lda + i0 + p * MR;
        for (int r = 0; r < rows; r++) panel[k * MR + r] = src[r];
      }
    } else {  // A (M, K)
      for (int r = 0; r < rows; r++) {
        const float *src = A + (size_t)(i0 + p * MR + r) * lda + k0;
        for (int k = 0; k < kc; k++) panel[k * MR + r] = src[k];
      }
    }
    for (int k = 0; k < kc; k++)
      for (int r = rows; r < MR; r++) panel[k * MR + r] = 0.0f;
  }
}

// C tile = (accumulate ? C : 0) + bias, before the K slices add into it.
static void init_c_tile(float *C, int ldc, const float *bias, int i0, int mc, int j0, int nc,
                        int accumulate) {
  for (int i = i0; i < i0 + mc; i++) {
    float *row = C + (size_t)i * ldc;
    for (int j = j0; j < j0 + nc; j++) {
      float base = accumulate ? row[j] : 0.0f;
      row[j] = bias ? base + bias[j] : base;
    }
  }
}

// ---- the loop nest ------------------------------------------------------------------------------
typedef struct {
  float *C;
  const float *A, *B, *bias;
  int ldc, lda, ldb, trans_a, trans_b;
  int M, N, K, accumulate;
  int mc_max;  // rows per C tile (a multiple of MR, at most MC)
  micro_kernel_fn micro_kernel;
} gemm_problem;

// One tile of C, every K slice. Each thread packs its own A and B blocks, so a parallel matmul has
// no barrier but the final one: on a shared, oversubscribed CI machine every barrier can cost a
// scheduler time slice.
static void gemm_tile(const gemm_problem *g, float *apack, float *bpack, int mt, int nt) {
  int i0 = mt * g->mc_max, mc = SN_MIN(g->mc_max, g->M - i0);
  int j0 = nt * NC, nc = SN_MIN(NC, g->N - j0);
  init_c_tile(g->C, g->ldc, g->bias, i0, mc, j0, nc, g->accumulate);
  for (int k0 = 0; k0 < g->K; k0 += KC) {
    int kc = SN_MIN(KC, g->K - k0);
    pack_a_block(apack, g->A, g->lda, g->trans_a, i0, mc, k0, kc);
    pack_b_block(bpack, g->B, g->ldb, g->trans_b, j0, nc, k0, kc);
    for (int jr = 0; jr < nc; jr += NR) {
      const float *bpanel = bpack + (size_t)(jr / NR) * kc * NR;
      for (int ir = 0; ir < mc; ir += MR) {
        g->micro_kernel(kc, apack + (size_t)(ir / MR) * kc * MR, bpanel,
                        g->C + (size_t)(i0 + ir) * g->ldc + j0 + jr, g->ldc, SN_MIN(MR, mc - ir),
                        SN_MIN(NR, nc - jr));
      }
    }
  }
}

void sn_cpu_gemm(float *C, int ldc, const float *A, int lda, int trans_a, const float *B, int ldb,
                 int trans_b, const float *bias, int M, int N, int K, int accumulate,
                 int allow_threads) {
  if (M <= 0 || N <= 0) return;
  static micro_kernel_fn micro_kernel = NULL;  // benign race: every thread stores the same value
  if (!micro_kernel) micro_kernel = pick_micro_kernel();

  double flops = 2.0 * M * N * (double)K;
  int threads = allow_threads && !omp_in_parallel() && flops >= SN_CPU_PARALLEL_MIN_FLOPS
                    ? omp_get_max_threads() : 1;
  // Shorter tiles when M is small, so every thread gets several (the tiling does not change any
  // result bit: each element is summed over the same KC slices in the same order).
  int rows_per_tile = threads > 1 ? SN_CEIL_DIV(M, threads * TILES_PER_THREAD) : MC;
  int mc_max = SN_MIN(MC, SN_MAX(MR, SN_CEIL_DIV(rows_per_tile, MR) * MR));
  int m_tiles = SN_CEIL_DIV(M, mc_max), n_tiles = SN_CEIL_DIV(N, NC);
  if (m_tiles * n_tiles == 1) threads = 1;
  size_t a_floats = (size_t)MC * KC, b_floats = (size_t)KC * NC, per_thread = a_floats + b_floats;
  float *scratch = sn_cpu_scratch(SN_CPU_SCRATCH_MATMUL, per_thread * threads * sizeof(float));
  gemm_problem g = {C, A, B, bias, ldc, lda, ldb, trans_a, trans_b, M, N, K, accumulate, mc_max,
                    micro_kernel};

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    float *apack = scratch + per_thread * omp_get_thread_num(), *bpack = apack + a_floats;
#pragma omp for schedule(static) nowait
    for (int tile = 0; tile < n_tiles * m_tiles; tile++)  // consecutive tiles share a column block
      gemm_tile(&g, apack, bpack, tile % m_tiles, tile / m_tiles);
  }
}

void sn_cpu_matmul(void *C, const void *A, const void *B, const void *bias, int M, int N, int K,
                   int trans_a, int trans_b, int accumulate) {
  sn_cpu_gemm(C, N, A, trans_a ? M : K, trans_a, B, trans_b ? K : N, trans_b, bias, M, N, K,
              accumulate, 1);
}

void sn_cpu_matmul_strided(void *C, int ldc, const void *A, int lda, const void *B, int ldb,
                           const void *bias, int M, int N, int K, int trans_a, int trans_b,
                           int accumulate) {
  sn_cpu_gemm(C, ldc, A, lda, trans_a, B, ldb, trans_b, bias, M, N, K, accumulate, 1);
}

// dbias (N) += column sums of dout (M, N): threads own column blocks and sum the rows in order.
void sn_cpu_bias_backward(void *dbiasv, const void *doutv, int M, int N) {
  float *dbias = dbiasv;
  const float *dout = doutv;
  int nblocks = SN_CEIL_DIV(N, SN_CPU_COL_BLOCK);
  size_t work = (size_t)M * N;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int blk = 0; blk < nblocks; blk++) {
    int j0 = blk * SN_CPU_COL_BLOCK, width = SN_MIN(N - j0, SN_CPU_COL_BLOCK);
    double acc[SN_CPU_COL_BLOCK] = {0};
    for (int i = 0; i < M; i++) {
      const float *row = dout + (size_t)i * N + j0;
      for (int j = 0; j < width; j++) acc[j] += row[j];
    }
    for (int j = 0; j < width; j++) dbias[j0 + j] += (float)acc[j];
  }
}
