// linear_small: a linear layer of at most SN_LINEAR_SMALL_MAX_ROWS rows (a query or a few), with the
// RMSNorm before it and the activation or residual add after it fused in (ops.h states the maths).
// At such M the GEMM reads each weight once and does little else, and the neighbouring norm /
// activation / add cost a launch each. The design serves the weight stream (below), but as measured
// on the H100 it does not beat cuBLASLt's small-M kernels at the 0.5B's shapes (M = 32: gate|up +
// SwiGLU 26.4 µs against 18.8 for cuBLASLt + the SwiGLU kernel, 661 against 925 GB/s; it wins on
// the narrow o_proj and student shapes: docs/DESIGN.md), so the model uses it only when
// SN_SMALL_BATCH=1. What it lacks: a split-K across blocks (56 blocks for N = 896) and x staged in
// shared memory once per block instead of re-read from L2.
// - a block owns a narrow tile of output columns (8 or 16; for SwiGLU the matching gate and up
//   columns), so there are many blocks in flight even at N = 896;
// - its warps split K between them (warp w takes the 64-wide k steps w, w + WARPS, ...): every
//   weight element is read exactly once, in 128-byte row segments (each lane loads 16 consecutive
//   k of one weight row as two 16-byte packs);
// - the products run on tensor cores (mma.sync m16n8k16, fp32 accumulation) with the rows padded
//   to 16 by zeros in registers (rows past M are never read nor written). The k order inside a
//   step is permuted the same way for x and W, so the packs feed the fragments without shuffles:
//   lane (g, q) holds k = 16q .. 16q + 15 of its rows, and mma sub-step s takes its k 16q + 4s ..
//   16q + 4s + 3 as the fragment's logical k 2q, 2q + 1, 2q + 8, 2q + 9;
// - x is tiny and stays in L2: every block reads the rows it needs directly (with the RMSNorm
//   prologue applied while loading, from row statistics the block computes itself first), rounded
//   to bf16 as the unfused rmsnorm_forward stores them;
// - the warps' partial sums meet in shared memory and are added in warp order (deterministic, no
//   atomics); the bias and the epilogue are applied in fp32, and each output is rounded once.
#include "activations.cuh"

#define LS_WARPS 8
#define LS_THREADS (LS_WARPS * WARP_SIZE)
#define LS_K_STEP 64      // k a warp takes per step: 4 lanes (q) x 16 consecutive k
#define LS_K_PER_LANE 16  // two 16-byte packs
#define LS_TILE 16        // rows of an mma m-tile and k of an mma sub-step
#define LS_NTILE 8        // columns of an mma n-tile
#define LS_RED_PAD 4      // floats appended to a reduction row (spreads the fragment stores over banks)
#define LS_TILES_IN_FLIGHT 4  // n-tile steps of weight packs a warp loads before using them (4 x 1 KB)
static_assert(SN_LINEAR_SMALL_MAX_ROWS % LS_TILE == 0, "rows are padded to whole m-tiles");
#define LS_MAX_MTILES (SN_LINEAR_SMALL_MAX_ROWS / LS_TILE)

// Word w (bf16 elements 2w, 2w + 1) of a 16-byte pack.
__device__ __forceinline__ uint32_t pack_word(uint4 v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

// One pack (8 consecutive k) of an x row, normalised when NORM: bf16(x * rstd * norm_w) in the
// unfused rmsnorm's order and rounding.
template <bool NORM>
__device__ __forceinline__ uint4 load_x_pack(const bf16 *x, const bf16 *norm_w, float rstd, int K, int row, int k) {
  uint4 v = __ldg(reinterpret_cast<const uint4 *>(x + (size_t)row * K + k));
  if constexpr (NORM) {
    const uint4 wv = __ldg(reinterpret_cast<const uint4 *>(norm_w + k));
    uint32_t o[4];
#pragma unroll
    for (int w = 0; w < 4; w++) {
      const uint32_t xw = pack_word(v, w), ww = pack_word(wv, w);
      o[w] = pack_bf16x2(bf16_lo(xw) * rstd * bf16_lo(ww), bf16_hi(xw) * rstd * bf16_hi(ww));
    }
    v = make_uint4(o[0], o[1], o[2], o[3]);
  }
  return v;
}

// out (M, N) = epilogue(prologue(x) (M, K) · W^T + bias). grid: column tiles of NT n-tiles.
// MT m-tiles of 16 rows; SEGS = 2 for SwiGLU (a gate tile and its up tile), else 1. Shared memory:
// the reduction (WARPS, MT*16, SEGS*NT*8 + pad) fp32, then the row statistics (MT*16).
template <int MT, int NT, int SEGS, bool NORM>
__global__ void __launch_bounds__(LS_THREADS) linear_small_kernel(bf16 *out, const bf16 *x, const bf16 *norm_w,
                                                                  float eps, const bf16 *w, const bf16 *bias,
                                                                  const bf16 *residual, int M, int N, int K,
                                                                  int epilogue) {
  constexpr int ROWS = MT * LS_TILE;
  constexpr int TILES = SEGS * NT;                // n-tiles of weight rows this block reads
  constexpr int COLS = NT * LS_NTILE;             // output columns of this block
  constexpr int LD = TILES * LS_NTILE + LS_RED_PAD;  // reduction row stride
  extern __shared__ __align__(16) float ls_smem[];
  float *red = ls_smem;                           // (WARPS, ROWS, LD)
  float *rstd_s = red + LS_WARPS * ROWS * LD;     // (ROWS)

  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, q = lane % 4;
  const int n0 = blockIdx.x * COLS;

  if constexpr (NORM) {  // row statistics, a warp per row, packs in a fixed order
    for (int m = warp; m < M; m += LS_WARPS) {
      float ss = 0.0f;
      for (int k = lane * BF16_PER_PACK; k < K; k += WARP_SIZE * BF16_PER_PACK) {
        const uint4 v = __ldg(reinterpret_cast<const uint4 *>(x + (size_t)m * K + k));
#pragma unroll
        for (int i = 0; i < 4; i++) {
          const float lo = bf16_lo(pack_word(v, i)), hi = bf16_hi(pack_word(v, i));
          ss += lo * lo + hi * hi;
        }
      }
      ss = warp_sum(ss);
      if (lane == 0) rstd_s[m] = rsqrtf(ss / K + eps);
    }
    __syncthreads();
  }

  // This lane's weight rows: n-tile t of segment t / NT, column n0 + (t % NT) * 8 + g.
  const bf16 *w_row[TILES];
  bool w_ok[TILES];
#pragma unroll
  for (int t = 0; t < TILES; t++) {
    const int col = n0 + (t % NT) * LS_NTILE + g;
    w_ok[t] = col < N;
    w_row[t] = w + ((size_t)(t / NT) * N + (w_ok[t] ? col : 0)) * K;
  }
  float rstd_r[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int row = mt * LS_TILE + g + 8 * h;
      rstd_r[mt][h] = NORM && row < M ? rstd_s[row] : 1.0f;
    }

  float acc[MT][TILES][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int t = 0; t < TILES; t++) acc[mt][t][0] = acc[mt][t][1] = acc[mt][t][2] = acc[mt][t][3] = 0.0f;

  // A warp's weight loads for AHEAD of its k steps are issued together before any of them is used,
  // so each warp keeps LS_TILES_IN_FLIGHT n-tiles' packs (4 KB) in flight: with one n-tile a block,
  // a step alone would leave too few bytes in flight to cover the memory latency.
  constexpr int AHEAD = TILES >= LS_TILES_IN_FLIGHT ? 1 : LS_TILES_IN_FLIGHT / TILES;
  constexpr int WARP_STRIDE = LS_WARPS * LS_K_STEP;  // k between a warp's consecutive steps
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int k_first = warp * LS_K_STEP; k_first < K; k_first += AHEAD * WARP_STRIDE) {
    uint4 wb[AHEAD][TILES][2];  // weight packs past K (or past N) are zeros
#pragma unroll
    for (int u = 0; u < AHEAD; u++)
#pragma unroll
      for (int t = 0; t < TILES; t++)
#pragma unroll
        for (int p = 0; p < 2; p++) {
          const int k = k_first + u * WARP_STRIDE + q * LS_K_PER_LANE + p * BF16_PER_PACK;
          wb[u][t][p] = w_ok[t] && k < K ? __ldg(reinterpret_cast<const uint4 *>(w_row[t] + k)) : zero;
        }
#pragma unroll
    for (int u = 0; u < AHEAD; u++) {
      const int k0 = k_first + u * WARP_STRIDE;
      if (k0 >= K) break;  // the warp's step is past K (uniform across the warp)
      const int kl = k0 + q * LS_K_PER_LANE;  // this lane's first k; packs at kl and kl + 8
      uint4 xa[MT][2][2];  // (m-tile, row g / g + 8, pack)
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
          const int row = mt * LS_TILE + g + 8 * h;
#pragma unroll
          for (int p = 0; p < 2; p++) {
            const int k = kl + p * BF16_PER_PACK;
            xa[mt][h][p] = row < M && k < K ? load_x_pack<NORM>(x, norm_w, rstd_r[mt][h], K, row, k) : zero;
          }
        }
#pragma unroll
      for (int s = 0; s < LS_K_STEP / LS_TILE; s++) {  // k 16q + 4s .. + 3 of each lane
        const int p = s / 2, wd = (s % 2) * 2;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          const uint32_t a[4] = {pack_word(xa[mt][0][p], wd), pack_word(xa[mt][1][p], wd),
                                 pack_word(xa[mt][0][p], wd + 1), pack_word(xa[mt][1][p], wd + 1)};
#pragma unroll
          for (int t = 0; t < TILES; t++) {
            const uint32_t b[2] = {pack_word(wb[u][t][p], wd), pack_word(wb[u][t][p], wd + 1)};
            mma_bf16(acc[mt][t], a, b);
          }
        }
      }
    }
  }

  // The warps' partial sums into shared memory, then summed in warp order per output.
  float *mine = red + warp * ROWS * LD;
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int t = 0; t < TILES; t++) {
      const int r = mt * LS_TILE + g, c = t * LS_NTILE + 2 * q;
      mine[r * LD + c] = acc[mt][t][0], mine[r * LD + c + 1] = acc[mt][t][1];
      mine[(r + 8) * LD + c] = acc[mt][t][2], mine[(r + 8) * LD + c + 1] = acc[mt][t][3];
    }
  __syncthreads();
  for (int e = threadIdx.x; e < M * COLS; e += LS_THREADS) {
    const int m = e / COLS, c = e % COLS, n = n0 + c;
    if (n >= N) continue;
    float y[SEGS];
#pragma unroll
    for (int sg = 0; sg < SEGS; sg++) {
      float v = 0.0f;
      for (int wp = 0; wp < LS_WARPS; wp++) v += red[(wp * ROWS + m) * LD + sg * COLS + c];
      y[sg] = bias ? v + bf2f(bias[(size_t)sg * N + n]) : v;
    }
    float o;
    switch (epilogue) {
      case SN_EPILOGUE_SWIGLU: o = silu_f(y[0]) * y[SEGS - 1]; break;
      case SN_EPILOGUE_GELU: o = gelu_f(y[0]); break;
      case SN_EPILOGUE_RESIDUAL: o = bf2f(residual[(size_t)m * N + n]) + y[0]; break;
      default: o = y[0]; break;
    }
    out[(size_t)m * N + n] = f2bf(o);
  }
}

// ---- launcher ----------------------------------------------------------------------------------------
template <int MT, int NT, int SEGS, bool NORM>
static void launch_linear_small(bf16 *out, const bf16 *x, const bf16 *norm_w, float eps, const bf16 *w,
                                const bf16 *bias, const bf16 *residual, int M, int N, int K, int epilogue) {
  constexpr int LD = SEGS * NT * LS_NTILE + LS_RED_PAD;
  const size_t smem = ((size_t)LS_WARPS * MT * LS_TILE * LD + MT * LS_TILE) * sizeof(float);
  static bool ready = false;
  allow_smem(linear_small_kernel<MT, NT, SEGS, NORM>, smem, &ready);
  const int grid = ceil_div_int(N, NT * LS_NTILE);
  linear_small_kernel<MT, NT, SEGS, NORM><<<grid, LS_THREADS, smem, SN_STREAM>>>(out, x, norm_w, eps, w, bias, residual,
                                                                                  M, N, K, epilogue);
  launchCheck();
}

template <int MT, int NT, int SEGS>
static void dispatch_norm(bf16 *out, const bf16 *x, const bf16 *norm_w, float eps, const bf16 *w, const bf16 *bias,
                          const bf16 *residual, int M, int N, int K, int epilogue) {
  if (norm_w) launch_linear_small<MT, NT, SEGS, true>(out, x, norm_w, eps, w, bias, residual, M, N, K, epilogue);
  else launch_linear_small<MT, NT, SEGS, false>(out, x, norm_w, eps, w, bias, residual, M, N, K, epilogue);
}
template <int MT, int NT>
static void dispatch_segs(bf16 *out, const bf16 *x, const bf16 *norm_w, float eps, const bf16 *w, const bf16 *bias,
                          const bf16 *residual, int M, int N, int K, int epilogue) {
  if (epilogue == SN_EPILOGUE_SWIGLU) dispatch_norm<MT, NT, 2>(out, x, norm_w, eps, w, bias, residual, M, N, K, epilogue);
  else dispatch_norm<MT, NT, 1>(out, x, norm_w, eps, w, bias, residual, M, N, K, epilogue);
}
// Every block reads all of x (from L2): M / columns times the weight's bytes. Column tiles of 16
// (two n-tiles) halve that against tiles of 8, which give twice the blocks. Tiles of 16 where they
// alone fill the GPU, or where x is more than one m-tile (its re-reads would outweigh the weight's
// own bytes at 8 columns); tiles of 8 for a few rows on narrow layers.
#define LS_WIDE_TILE_MIN_ROWS (LS_TILE + 1)
template <int MT>
static void dispatch_tile(bf16 *out, const bf16 *x, const bf16 *norm_w, float eps, const bf16 *w, const bf16 *bias,
                          const bf16 *residual, int M, int N, int K, int epilogue) {
  if (ceil_div_int(N, 2 * LS_NTILE) >= sn_cuda_sm_count() || M >= LS_WIDE_TILE_MIN_ROWS)
    dispatch_segs<MT, 2>(out, x, norm_w, eps, w, bias, residual, M, N, K, epilogue);
  else
    dispatch_segs<MT, 1>(out, x, norm_w, eps, w, bias, residual, M, N, K, epilogue);
}

void cuda_linear_small(void *out, const void *x, const void *norm_w, float eps, const void *w, const void *bias,
                       const void *residual, int M, int N, int K, sn_epilogue epilogue) {
  if (M < 1 || M > SN_LINEAR_SMALL_MAX_ROWS || N < 1 || K < 1 || K % BF16_PER_PACK != 0) {
    fprintf(stderr, "error: %s:%d: linear_small: M=%d N=%d K=%d (need 1 <= M <= %d, N >= 1, K a positive multiple of 8)\n",
            __FILE__, __LINE__, M, N, K, SN_LINEAR_SMALL_MAX_ROWS);
    exit(1);
  }
  if ((epilogue == SN_EPILOGUE_RESIDUAL) != (residual != NULL) || (unsigned)epilogue > SN_EPILOGUE_RESIDUAL) {
    fprintf(stderr, "error: %s:%d: linear_small: epilogue %d with%s residual\n", __FILE__, __LINE__, (int)epilogue,
            residual ? " a" : "out a");
    exit(1);
  }
  if (!aligned16(x) || !aligned16(w) || (norm_w && !aligned16(norm_w))) {
    fprintf(stderr, "error: %s:%d: linear_small: x (%p), w (%p) and norm_w (%p) must be 16-byte aligned\n", __FILE__,
            __LINE__, x, w, norm_w);
    exit(1);
  }
  const bf16 *xb = (const bf16 *)x, *nw = (const bf16 *)norm_w, *wb = (const bf16 *)w, *bb = (const bf16 *)bias;
  const bf16 *rb = (const bf16 *)residual;
  bf16 *ob = (bf16 *)out;
  const int mtiles = ceil_div_int(M, LS_TILE);
  static_assert(LS_MAX_MTILES == 4, "the dispatch below covers 1, 2 and 4 m-tiles");
  if (mtiles == 1) dispatch_tile<1>(ob, xb, nw, eps, wb, bb, rb, M, N, K, epilogue);
  else if (mtiles == 2) dispatch_tile<2>(ob, xb, nw, eps, wb, bb, rb, M, N, K, epilogue);
  else dispatch_tile<4>(ob, xb, nw, eps, wb, bb, rb, M, N, K, epilogue);
}
