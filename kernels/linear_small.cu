// linear_small: a linear layer of at most SN_LINEAR_SMALL_MAX_ROWS rows (a query or a few), with the
// RMSNorm before it and the activation or residual add after it fused in (ops.h states the maths).
// At such M the GEMM reads each weight once and does little else: its time is the weight stream
// plus latency (launch, round trips to memory, the reduction). The design serves both:
// - a block owns LS_COLS (64) weight rows, a warp 8 of them (for SwiGLU warps 0-3 take gate rows,
//   4-7 the matching up rows), and one slice of K; the slices of a column tile form one thread-block
//   cluster (sm_90), as many as it takes for the grid to cover the multiprocessors (a narrow N = 896
//   with a long K = 4864: 14 tiles x 8 slices);
// - the weights stream through a ring of LS_RING 64-wide k steps in shared memory (cp.async, 8 KB a
//   step, so 48 KB in flight a block without holding registers). The first LS_RING steps are issued
//   before anything else and the kernel is launched with programmatic dependent launch (common.cuh):
//   they load while the previous kernel is still finishing; only then does the block wait for x;
// - x is staged in shared memory a chunk of LS_X_CHUNK steps at a time (rows padded to whole m-tiles
//   with zeros, the RMSNorm applied while staging and rounded to bf16 as rmsnorm_forward stores it;
//   the row statistics come from full rows read from L2, every load of a lane in flight together);
// - the products run on tensor cores (mma.sync m16n8k16, fp32 accumulation). The k order inside a
//   64-wide step is permuted the same way for x and W, so 16-byte packs feed the fragments without
//   shuffles: lane (g, q) holds k = 16q .. 16q + 15 of its rows, and mma sub-step s takes k 16q + 4s ..
//   16q + 4s + 3 as the fragment's logical k 2q, 2q + 1, 2q + 8, 2q + 9;
// - each block leaves its sums in shared memory; the blocks of a cluster then each take a share of the
//   outputs and add the slices' sums for them in slice order through distributed shared memory (the
//   result does not depend on timing: deterministic), apply the bias and the epilogue in fp32 and
//   round once.
// Measured on the H100 (sn_bench --filter linear_small, M = 32, 2026-12-06): on a par with cuBLASLt
// + the op the epilogue replaces at the narrow shapes (0.5B o_proj 8.9 against 9.1 µs, down 14.1
// against 13.5) but slower at the wide ones (gate|up + SwiGLU 22.1 against 18.3, normed QKV 12.6
// against 11.1): under ncu a block issues about one instruction a cycle and the weight stream uses
// 5-22% of DRAM bandwidth, so the time is the serial chain inside a block (x staging, statistics,
// barriers, the cluster epilogue). The model therefore uses it only when SN_SMALL_BATCH=1.
#include <algorithm>

#include <cooperative_groups.h>

#include "activations.cuh"

namespace cg = cooperative_groups;

#define LS_WARPS 8
#define LS_THREADS (LS_WARPS * WARP_SIZE)
#define LS_K_STEP 64          // k a warp takes per step: 4 lanes (q) x 16 consecutive k
#define LS_K_PER_LANE 16      // two 16-byte packs
#define LS_RING 6             // k steps of weights in flight a block (6 x 8 KB: two blocks fit a multiprocessor)
#define LS_X_CHUNK 8          // k steps of x staged at a time (32 KB at 32 rows)
#define LS_W_PAD 8            // bf16 appended to a ring row: a fragment load's rows g, g + 1 land 16 B apart
#define LS_TILE 16            // rows of an mma m-tile and k of an mma sub-step
#define LS_NTILE 8            // columns of an mma n-tile: the weight rows of one warp
#define LS_COLS (LS_WARPS * LS_NTILE)  // weight rows of a block
#define LS_X_PAD 8            // bf16 appended to a staged x row: a fragment load's rows g, g + 1 land 16 B apart
#define LS_RED_PAD 4          // floats appended to a reduction row (spreads the fragment stores over banks)
#define LS_STAT_PACKS 4       // packs of one x row a lane loads together in the statistics pass
#define LS_STAGE_BATCH 4      // packs of x a thread loads together while staging
#define LS_MAX_SPLITS 8       // K slices of a tile: one thread-block cluster, the portable cluster size
#define LS_MIN_BLOCKS 2       // resident blocks a multiprocessor: caps registers at 128
#define LS_W_LD (LS_K_STEP + LS_W_PAD)
#define LS_PACKS_PER_STEP (LS_COLS * LS_K_STEP / BF16_PER_PACK)  // 16-byte copies of a ring step: 2 a thread
static_assert(LS_PACKS_PER_STEP % LS_THREADS == 0, "every thread copies the same number of packs a step");
static_assert(SN_LINEAR_SMALL_MAX_ROWS % LS_TILE == 0, "rows are padded to whole m-tiles");
#define LS_MAX_MTILES (SN_LINEAR_SMALL_MAX_ROWS / LS_TILE)

// Word w (bf16 elements 2w, 2w + 1) of a 16-byte pack.
__device__ __forceinline__ uint32_t pack_word(uint4 v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

// bf16(x * rstd * norm_w) of a pack, in the unfused rmsnorm's order and rounding.
__device__ __forceinline__ uint4 normalize_pack(uint4 v, uint4 wv, float rstd) {
  uint32_t o[4];
#pragma unroll
  for (int w = 0; w < 4; w++) {
    const uint32_t xw = pack_word(v, w), ww = pack_word(wv, w);
    o[w] = pack_bf16x2(bf16_lo(xw) * rstd * bf16_lo(ww), bf16_hi(xw) * rstd * bf16_hi(ww));
  }
  return make_uint4(o[0], o[1], o[2], o[3]);
}

// Shared memory of a block: the weight ring (LS_RING, LS_COLS, LS_W_LD) bf16, staged x (MT*16, chunk +
// pad) bf16, the reduction (MT*16, LS_COLS + pad) fp32, the bias (LS_COLS) fp32, the row
// statistics (MT*16) fp32.
__host__ __device__ constexpr int ls_x_ld(void) { return LS_X_CHUNK * LS_K_STEP + LS_X_PAD; }
__host__ __device__ constexpr int ls_red_ld(void) { return LS_COLS + LS_RED_PAD; }
__host__ __device__ constexpr size_t ls_smem_bytes(int mtiles) {
  return (size_t)LS_RING * LS_COLS * LS_W_LD * sizeof(bf16) + (size_t)mtiles * LS_TILE * ls_x_ld() * sizeof(bf16) +
         (size_t)mtiles * LS_TILE * ls_red_ld() * sizeof(float) + LS_COLS * sizeof(float) +
         (size_t)mtiles * LS_TILE * sizeof(float);
}

// 1 / rms of each x row (full K, from L2), a warp per two rows at a time, every lane's packs loaded
// together before they are summed; the sums run in a fixed order.
__device__ void row_rstd(float *rstd_s, const bf16 *x, int M, int K, float eps, int warp, int lane) {
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int m0 = warp; m0 < M; m0 += 2 * LS_WARPS) {
    float ss[2] = {0.0f, 0.0f};
    for (int kb = lane * BF16_PER_PACK; kb < K; kb += WARP_SIZE * BF16_PER_PACK * LS_STAT_PACKS) {
      uint4 v[2][LS_STAT_PACKS];
#pragma unroll
      for (int r = 0; r < 2; r++)
#pragma unroll
        for (int i = 0; i < LS_STAT_PACKS; i++) {
          const int row = m0 + r * LS_WARPS, k = kb + i * WARP_SIZE * BF16_PER_PACK;
          v[r][i] = row < M && k < K ? __ldg(reinterpret_cast<const uint4 *>(x + (size_t)row * K + k)) : zero;
        }
#pragma unroll
      for (int r = 0; r < 2; r++)
#pragma unroll
        for (int i = 0; i < LS_STAT_PACKS; i++)
#pragma unroll
          for (int w = 0; w < 4; w++) {
            const float lo = bf16_lo(pack_word(v[r][i], w)), hi = bf16_hi(pack_word(v[r][i], w));
            ss[r] += lo * lo + hi * hi;
          }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const float total = warp_sum(ss[r]);
      const int row = m0 + r * LS_WARPS;
      if (lane == 0 && row < M) rstd_s[row] = rsqrtf(total / K + eps);
    }
  }
}

// Block row r (0 .. LS_COLS - 1) of column tile `tile`: its output column (the return value; past the
// layer when >= N) and its row of W in *w_row. SwiGLU: rows 0..31 are gate rows, 32..63 the matching
// up rows, which W holds N rows further on.
template <bool SWIGLU>
__device__ __forceinline__ int block_row_column(int tile, int r, int N, size_t *w_row) {
  constexpr int OUT_COLS = SWIGLU ? LS_COLS / 2 : LS_COLS;
  const int col = tile * OUT_COLS + (SWIGLU ? r % OUT_COLS : r);
  *w_row = (size_t)(SWIGLU && r >= OUT_COLS ? N : 0) + col;
  return col;
}

// Issues the copies of k step `step` of the block's weight rows into ring slot `slot` (zeros past K
// and for rows past N), as one cp.async group (an empty group past the slice, so the count stays
// uniform).
template <bool SWIGLU>
__device__ __forceinline__ void issue_weight_step(bf16 *ring, const bf16 *w, int tile, int N, int K, int k_begin,
                                                  int step, int steps, int slot) {
  if (step < steps) {
#pragma unroll
    for (int i = 0; i < LS_PACKS_PER_STEP / LS_THREADS; i++) {
      const int idx = threadIdx.x + i * LS_THREADS, r = idx / (LS_K_STEP / BF16_PER_PACK);
      const int kp = (idx % (LS_K_STEP / BF16_PER_PACK)) * BF16_PER_PACK, k = k_begin + step * LS_K_STEP + kp;
      size_t row;
      const bool ok = block_row_column<SWIGLU>(tile, r, N, &row) < N && k < K;
      cp_async16_zfill(ring + ((size_t)slot * LS_COLS + r) * LS_W_LD + kp, ok ? w + row * K + k : w, ok);
    }
  }
  cp_async_commit();
}

// out (M, N) = epilogue(prologue(x) (M, K) · W^T + bias). grid (column tiles, K slices), the slices of
// a tile one cluster (sm_90; one slice before); MT m-tiles of 16 rows; SWIGLU: W is the gate rows
// then the up rows, a tile is LS_COLS / 2 outputs.
template <int MT, bool SWIGLU, bool NORM>
__global__ void __launch_bounds__(LS_THREADS, LS_MIN_BLOCKS)
    linear_small_kernel(bf16 *out, const bf16 *x, const bf16 *norm_w, float eps, const bf16 *w, const bf16 *bias,
                        const bf16 *residual, int M, int N, int K, int slice_steps, int epilogue) {
  constexpr int ROWS = MT * LS_TILE;
  constexpr int OUT_COLS = SWIGLU ? LS_COLS / 2 : LS_COLS;  // outputs of a tile
  constexpr int XLD = ls_x_ld(), RLD = ls_red_ld();
  extern __shared__ __align__(16) unsigned char ls_smem[];
  bf16 *ring = reinterpret_cast<bf16 *>(ls_smem);                          // (LS_RING, LS_COLS, LS_W_LD)
  bf16 *xs = ring + (size_t)LS_RING * LS_COLS * LS_W_LD;                   // (ROWS, XLD)
  float *red = reinterpret_cast<float *>(xs + (size_t)ROWS * XLD);         // (ROWS, RLD)
  float *bias_s = red + ROWS * RLD;                                        // (LS_COLS)
  float *rstd_s = bias_s + LS_COLS;                                        // (ROWS)

  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, q = lane % 4;
  const int tile = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int k_begin = split * slice_steps * LS_K_STEP;
  const int steps = min(slice_steps, (K - k_begin + LS_K_STEP - 1) / LS_K_STEP);  // >= 1

  // Weights and bias first: nothing before this kernel writes them.
#pragma unroll
  for (int s = 0; s < LS_RING; s++) issue_weight_step<SWIGLU>(ring, w, tile, N, K, k_begin, s, steps, s);
  float bias_r = 0.0f;
  if (threadIdx.x < LS_COLS && bias) {
    size_t row;  // W's row and the bias's element
    if (block_row_column<SWIGLU>(tile, threadIdx.x, N, &row) < N) bias_r = bf2f(bias[row]);
  }
  pdl_launch_dependents();
  pdl_wait();  // x (and the residual) come from the kernels before
  if (threadIdx.x < LS_COLS) bias_s[threadIdx.x] = bias_r;

  if constexpr (NORM) {
    row_rstd(rstd_s, x, M, K, eps, warp, lane);
    __syncthreads();
  }
  const uint4 zero = make_uint4(0, 0, 0, 0);
  constexpr int PACKS_ROW = LS_X_CHUNK * LS_K_STEP / BF16_PER_PACK, X_PACKS = ROWS * PACKS_ROW;
  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;
  for (int s = 0; s < steps; s++) {
    if (s % LS_X_CHUNK == 0) {  // stage the chunk's steps of x (zeros past M and past K), normalised when NORM
      const int k_chunk = k_begin + s * LS_K_STEP;  // the previous chunk's fragments are read (the loop's last barrier)
      const int chunk_packs = min(LS_X_CHUNK, steps - s) * (LS_K_STEP / BF16_PER_PACK);  // of a row; the rest unread
      for (int e0 = threadIdx.x; e0 < X_PACKS; e0 += LS_THREADS * LS_STAGE_BATCH) {
        uint4 v[LS_STAGE_BATCH];
#pragma unroll
        for (int i = 0; i < LS_STAGE_BATCH; i++) {
          const int e = e0 + i * LS_THREADS, row = e / PACKS_ROW, kp = e % PACKS_ROW, k = k_chunk + kp * BF16_PER_PACK;
          v[i] = e < X_PACKS && kp < chunk_packs && row < M && k < K
                     ? __ldg(reinterpret_cast<const uint4 *>(x + (size_t)row * K + k))
                     : zero;
        }
#pragma unroll
        for (int i = 0; i < LS_STAGE_BATCH; i++) {
          const int e = e0 + i * LS_THREADS, row = e / PACKS_ROW, kp = e % PACKS_ROW, k = k_chunk + kp * BF16_PER_PACK;
          if (e >= X_PACKS) break;
          if (kp >= chunk_packs) continue;
          if (NORM && row < M && k < K)
            v[i] = normalize_pack(v[i], __ldg(reinterpret_cast<const uint4 *>(norm_w + k)), rstd_s[row]);
          *reinterpret_cast<uint4 *>(xs + (size_t)row * XLD + kp * BF16_PER_PACK) = v[i];
        }
      }
    }
    cp_async_wait<LS_RING - 1>();  // this thread's copies of step s have landed
    __syncthreads();               // and everyone's (and the staged x)
    const bf16 *w_step = ring + ((size_t)(s % LS_RING) * LS_COLS + warp * LS_NTILE + g) * LS_W_LD + q * LS_K_PER_LANE;
    const int kl = (s % LS_X_CHUNK) * LS_K_STEP + q * LS_K_PER_LANE;  // this lane's first k in the chunk
#pragma unroll
    for (int p = 0; p < 2; p++) {  // pack p holds the k of sub-steps 2p and 2p + 1
      const uint4 wp = *reinterpret_cast<const uint4 *>(w_step + p * BF16_PER_PACK);
      uint4 xa[MT][2];  // (m-tile, row g / g + 8)
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++)
          xa[mt][h] = *reinterpret_cast<const uint4 *>(xs + (size_t)(mt * LS_TILE + g + 8 * h) * XLD + kl + p * BF16_PER_PACK);
#pragma unroll
      for (int wd = 0; wd < 4; wd += 2) {  // sub-step 2p + wd / 2: k 16q + 8p + 2wd .. + 3 of each lane
        const uint32_t b[2] = {pack_word(wp, wd), pack_word(wp, wd + 1)};
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          const uint32_t a[4] = {pack_word(xa[mt][0], wd), pack_word(xa[mt][1], wd), pack_word(xa[mt][0], wd + 1),
                                 pack_word(xa[mt][1], wd + 1)};
          mma_bf16(acc[mt], a, b);
        }
      }
    }
    __syncthreads();  // the slot is read: refill it with step s + LS_RING
    issue_weight_step<SWIGLU>(ring, w, tile, N, K, k_begin, s + LS_RING, steps, s % LS_RING);
  }
  cp_async_wait<0>();  // no copy outlives the block (the trailing groups are empty)

  // The block's sums (ROWS, LS_COLS) into shared memory; the tile's slices (a cluster) then each take
  // a share of the outputs, add the slices' sums for them in slice order (deterministic), reading
  // the other blocks' shared memory (sm_90 distributed shared memory), and apply the epilogue.
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    const int r = mt * LS_TILE + g, c = warp * LS_NTILE + 2 * q;
    red[r * RLD + c] = acc[mt][0], red[r * RLD + c + 1] = acc[mt][1];
    red[(r + 8) * RLD + c] = acc[mt][2], red[(r + 8) * RLD + c + 1] = acc[mt][3];
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every slice's sums are in its shared memory
#else
  __syncthreads();  // one slice a tile before sm_90
#endif
  constexpr int SEGS = SWIGLU ? 2 : 1, COLS4 = OUT_COLS / F32_PER_PACK;
  for (int e = split * LS_THREADS + threadIdx.x; e < M * COLS4; e += splits * LS_THREADS) {
    const int m = e / COLS4, j = (e % COLS4) * F32_PER_PACK;  // outputs j .. j + 3 of row m
    float4 y[SEGS];
#pragma unroll
    for (int sg = 0; sg < SEGS; sg++) {
      const int at = m * RLD + sg * OUT_COLS + j;
      float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      for (int sp = 0; sp < splits; sp++) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        const float4 v = *reinterpret_cast<const float4 *>(cluster.map_shared_rank(red, sp) + at);
#else
        const float4 v = *reinterpret_cast<const float4 *>(red + at);
#endif
        sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
      }
      y[sg] = sum;
    }
    const float *ys[SEGS];
#pragma unroll
    for (int sg = 0; sg < SEGS; sg++) ys[sg] = &y[sg].x;
#pragma unroll
    for (int i = 0; i < F32_PER_PACK; i++) {
      const int n = tile * OUT_COLS + j + i;
      if (n >= N) break;
      float v[SEGS];
#pragma unroll
      for (int sg = 0; sg < SEGS; sg++) v[sg] = ys[sg][i] + bias_s[sg * OUT_COLS + j + i];
      float o;
      if (SWIGLU) o = silu_f(v[0]) * v[SEGS - 1];
      else if (epilogue == SN_EPILOGUE_GELU) o = gelu_f(v[0]);
      else if (epilogue == SN_EPILOGUE_RESIDUAL) o = bf2f(residual[(size_t)m * N + n]) + v[0];
      else o = v[0];
      out[(size_t)m * N + n] = f2bf(o);
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cluster.sync();  // no block leaves while another still reads its shared memory
#endif
}

// ---- launcher ----------------------------------------------------------------------------------------
template <int MT, bool SWIGLU, bool NORM>
static void launch_linear_small(bf16 *out, const bf16 *x, const bf16 *norm_w, float eps, const bf16 *w,
                                const bf16 *bias, const bf16 *residual, int M, int N, int K, int epilogue) {
  const int tiles = ceil_div_int(N, SWIGLU ? LS_COLS / 2 : LS_COLS);
  // K slices (a cluster a tile, sm_90): enough for the grid to cover the multiprocessors, at most a
  // portable cluster; the steps spread evenly over them.
  const int steps = ceil_div_int(K, LS_K_STEP);
  int splits = 1;
  if (sn_cuda_cc_major() >= 9)
    splits = std::min(std::min(LS_MAX_SPLITS, steps), ceil_div_int(sn_cuda_sm_count(), tiles));
  const int slice_steps = ceil_div_int(steps, splits);
  splits = ceil_div_int(steps, slice_steps);
  static std::atomic<bool> ready{false};
  const size_t smem = ls_smem_bytes(MT);
  allow_smem(linear_small_kernel<MT, SWIGLU, NORM>, smem, &ready);
  launch_pdl_cluster(linear_small_kernel<MT, SWIGLU, NORM>, dim3(tiles, splits), dim3(LS_THREADS), smem, splits, out,
                     x, norm_w, eps, w, bias, residual, M, N, K, slice_steps, epilogue);
  launchCheck();
}

template <int MT, bool SWIGLU>
static void dispatch_norm(bf16 *out, const bf16 *x, const bf16 *norm_w, float eps, const bf16 *w, const bf16 *bias,
                          const bf16 *residual, int M, int N, int K, int epilogue) {
  if (norm_w) launch_linear_small<MT, SWIGLU, true>(out, x, norm_w, eps, w, bias, residual, M, N, K, epilogue);
  else launch_linear_small<MT, SWIGLU, false>(out, x, norm_w, eps, w, bias, residual, M, N, K, epilogue);
}
template <int MT>
static void dispatch_epilogue(bf16 *out, const bf16 *x, const bf16 *norm_w, float eps, const bf16 *w, const bf16 *bias,
                              const bf16 *residual, int M, int N, int K, int epilogue) {
  if (epilogue == SN_EPILOGUE_SWIGLU) dispatch_norm<MT, true>(out, x, norm_w, eps, w, bias, residual, M, N, K, epilogue);
  else dispatch_norm<MT, false>(out, x, norm_w, eps, w, bias, residual, M, N, K, epilogue);
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
  if (mtiles == 1) dispatch_epilogue<1>(ob, xb, nw, eps, wb, bb, rb, M, N, K, epilogue);
  else if (mtiles == 2) dispatch_epilogue<2>(ob, xb, nw, eps, wb, bb, rb, M, N, K, epilogue);
  else dispatch_epilogue<4>(ob, xb, nw, eps, wb, bb, rb, M, N, K, epilogue);
}
