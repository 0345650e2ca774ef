// Flash-style attention over packed variable-length sequences: causal or bidirectional, grouped-
// query heads, head dims 16..128 (multiples of 16). Scores live only in registers: no (T, T) matrix
// in memory. Matrix products use the bf16 tensor-core instruction mma.sync m16n8k16 (fp32
// accumulation), available from sm_80 on.
//
// Split by direction: this header holds what both use (the tensor-core and fragment helpers, the
// cp.async tile loaders, the shared constants and attn_dims, and the host helpers that check the
// buffers, build attn_dims, raise the shared-memory limit and dispatch on the head dim);
// attention_forward.cu and attention_backward.cu each hold one direction's kernels, launchers and
// entry point (declared in common.cuh). Everything here is __device__ __forceinline__, a template or
// static, so both files include it.
//
// mma.sync m16n8k16 fragments (lane = 4 * g + q):
//   A (16x16, row-major): a[0] = (g, 2q..2q+1), a[1] = (g+8, 2q..), a[2] = (g, 2q+8..), a[3] = (g+8, 2q+8..)
//   B (16x8, k x n):      b[0] = (k = 2q..2q+1, n = g), b[1] = (k = 2q+8..2q+9, n = g)
//   C (16x8, fp32):       c[0..1] = (g, 2q..2q+1), c[2..3] = (g+8, 2q..2q+1)
#pragma once
#include "common.cuh"

#define ATTN_ROWS_PER_WARP 16
#define ATTN_TILE_K 64                                 // keys per shared-memory tile
#define ATTN_SMEM_PAD 8  // bf16 per row: shifts rows by 4 banks, so fragment loads are conflict-free
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// ---- tensor-core and fragment helpers (mma_bf16 is in common.cuh) ---------------------------------------
// 2^x by the special-function unit alone (exp2f adds a range check and two multiplies for inputs
// below -126, whose results flush to zero here: far under bf16's resolution of a probability).
// Relative error about 2^-22; ex2(-inf) = 0, as masking needs.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// ldmatrix x4: threads 0-7, 8-15, 16-23, 24-31 give the row addresses of matrices 0..3; r[j] is
// this lane's part of matrix j (row lane/4, columns 2(lane%4)..+1; transposed with .trans).
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16 *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const bf16 *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
// A fragment at (m0, k0) of a row-major [m][k] tile with row stride ld.
__device__ __forceinline__ void load_a_frag(uint32_t a[4], const bf16 *s, int ld, int m0, int k0, int lane) {
  ldsm_x4(a, s + (m0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8);
}
// B fragments of n-tiles n0 and n0 + 8 (k0..k0+15) from a tile stored [n][k] (K[key][d] for Q K^T).
__device__ __forceinline__ void load_b2_nk(uint32_t b0[2], uint32_t b1[2], const bf16 *s, int ld, int k0, int n0,
                                           int lane) {
  uint32_t r[4];
  ldsm_x4(r, s + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
  b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}
// B fragments of n-tiles n0 and n0 + 8 (k0..k0+15) from a tile stored [k][n] (V[key][d] for P V).
__device__ __forceinline__ void load_b2_kn(uint32_t b0[2], uint32_t b1[2], const bf16 *s, int ld, int k0, int n0,
                                           int lane) {
  uint32_t r[4];
  ldsm_x4_trans(r, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
  b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}
// Converts the C fragments of a 16x16 block (n-tiles j and j+1) into an A fragment (bf16).
__device__ __forceinline__ void c_to_a_frag(uint32_t a[4], const float c0[4], const float c1[4]) {
  a[0] = pack_bf16x2(c0[0], c0[1]);
  a[1] = pack_bf16x2(c0[2], c0[3]);
  a[2] = pack_bf16x2(c1[0], c1[1]);
  a[3] = pack_bf16x2(c1[2], c1[3]);
}

// Calls f(row, chunk) for the 16-byte chunks of a (ROWS, CPR chunks a row) tile that this thread
// owns: chunk threadIdx.x + k * THREADS for k = 0, 1, ... When THREADS is a multiple of CPR, a
// thread keeps one chunk column and its rows step by a constant, with a trip count known at compile
// time: the loop unrolls and the caller's addresses advance by a constant instead of being
// recomputed from a division and 64-bit products per chunk (a tenth of the backward's step time).
template <int ROWS, int CPR, int THREADS, typename F>
__device__ __forceinline__ void for_each_chunk(F f) {
  if constexpr (THREADS % CPR == 0) {
    constexpr int ROW_STEP = THREADS / CPR;
    const int row0 = threadIdx.x / CPR, col = threadIdx.x % CPR;
#pragma unroll
    for (int k = 0; k < (ROWS + ROW_STEP - 1) / ROW_STEP; k++) {
      const int row = row0 + k * ROW_STEP;
      if (ROWS % ROW_STEP == 0 || row < ROWS) f(row, col);
    }
  } else {
    for (int c = threadIdx.x; c < ROWS * CPR; c += THREADS) f(c / CPR, c % CPR);
  }
}

// Starts copying a (TILE, D) tile from global (row stride `stride` elements) into shared memory
// (row stride D + pad) with cp.async, 16 bytes per chunk; rows [valid, TILE) are zero-filled (source
// size 0) so that masked products stay finite. Completes at cp_async_wait.
template <int D, int TILE, int THREADS>
__device__ __forceinline__ void load_tile_async(bf16 *s, const bf16 *g, size_t stride, int valid) {
  for_each_chunk<TILE, D / BF16_PER_PACK, THREADS>([&](int row, int chunk) {
    const bool in = row < valid;
    const int col = chunk * BF16_PER_PACK;
    cp_async16_zfill(s + row * (D + ATTN_SMEM_PAD) + col, g + (size_t)(in ? row : 0) * stride + col, in);
  });
}

__device__ __forceinline__ int ceil_div_dev(int a, int b) { return (a + b - 1) / b; }

struct attn_dims {
  int Hq, Hkv, T;
  int causal;
  float scale, scale_log2;  // scale and scale * log2(e)
};

// The kernels copy 16-byte packs (cp.async, vector loads): every buffer must start on 16 bytes, as
// the allocator's do.
static inline void check_aligned(const void *const *buffers, int n) {
  for (int i = 0; i < n; i++)
    if (!aligned16(buffers[i])) {
      fprintf(stderr, "error: %s:%d: attention buffer %d (%p) is not 16-byte aligned\n", __FILE__, __LINE__, i,
              buffers[i]);
      exit(1);
    }
}

static inline attn_dims make_dims(int T, int Hq, int Hkv, int D, int causal, float scale) {
  if (Hkv <= 0 || Hq % Hkv != 0) {
    fprintf(stderr, "error: %s:%d: attention needs Hq (%d) to be a multiple of Hkv (%d)\n", __FILE__, __LINE__, Hq,
            Hkv);
    exit(1);
  }
  attn_dims p;
  p.Hq = Hq, p.Hkv = Hkv, p.T = T, p.causal = causal, p.scale = scale, p.scale_log2 = scale * LOG2E;
  return p;
}

#define ATTN_DISPATCH(D_, CALL)                                                                          \
  switch (D_) {                                                                                          \
    case 16: CALL(16); break;                                                                            \
    case 32: CALL(32); break;                                                                            \
    case 64: CALL(64); break;                                                                            \
    case 96: CALL(96); break;                                                                            \
    case 128: CALL(128); break;                                                                          \
    default:                                                                                             \
      fprintf(stderr, "error: %s:%d: attention head dim %d not built (16, 32, 64, 96, 128)\n", __FILE__, \
              __LINE__, D_);                                                                             \
      exit(1);                                                                                           \
  }
