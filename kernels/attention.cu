// Flash-style attention over packed variable-length sequences: causal or bidirectional, grouped-
// query heads, head dims 16..128 (multiples of 16). Scores live only in registers: no (T, T) matrix
// in memory. Matrix products use the bf16 tensor-core instruction mma.sync m16n8k16 (fp32
// accumulation), available from sm_80 on.
//
// Forward: one block of 4 warps per (query tile of 64 rows, sequence, query head); each warp owns 16
// query rows, keeps Q in registers, streams K/V tiles of 64 keys through shared memory (cp.async,
// two stages: the next tile loads while this one is used; fragments via ldmatrix), and does the
// online softmax in registers (log2 domain). Saves lse (Hq, T), natural log of the scaled scores.
//
// Backward, deterministic (no atomics on data): delta = rowsum(dO * O) first; then one kernel per
// (key tile of 64 keys, or 128 from BWD_WIDE_MIN_SEQLEN on, sequence, kv head) that loops over the
// query tiles and the group's query heads, recomputes the probabilities once, and makes dK, dV and
// a dQ contribution from them (5 tile products). The dQ contributions of the key tiles are added
// into an fp32 accumulator in a fixed order (key tile 0 first), each key tile waiting on a counter
// its predecessor releases.
//
// mma.sync m16n8k16 fragments (lane = 4 * g + q):
//   A (16x16, row-major): a[0] = (g, 2q..2q+1), a[1] = (g+8, 2q..), a[2] = (g, 2q+8..), a[3] = (g+8, 2q+8..)
//   B (16x8, k x n):      b[0] = (k = 2q..2q+1, n = g), b[1] = (k = 2q+8..2q+9, n = g)
//   C (16x8, fp32):       c[0..1] = (g, 2q..2q+1), c[2..3] = (g+8, 2q..2q+1)
#include "common.cuh"

#define ATTN_ROWS_PER_WARP 16
#define ATTN_TILE_K 64                                 // keys per shared-memory tile
#define ATTN_SMEM_PAD 8  // bf16 per row: shifts rows by 4 banks, so fragment loads are conflict-free
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define DQ_POLL_NS 32  // backoff between polls of the dQ order counter
// Backward blocks of 8 warps (128 keys) from this longest sequence on, 4 warps (64 keys) below: the
// wider block halves the dQ accumulator traffic (H100: 1343 vs 1515 us at L=2048, 662 vs 722 at
// L=512 D=128) but leaves too few blocks for short sequences (201 vs 187 us at L=128, 94 vs 63 at L=32;
// again after the chunk loops were tightened: 132 vs 127 at L=128, 107 vs 49 at L=32).
#define BWD_WIDE_MIN_SEQLEN 512
#define DELTA_THREADS 256

// ---- tensor-core and fragment helpers -----------------------------------------------------------------
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
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

// K/V tiles of one sequence through NSTAGES shared-memory stages: starts the asynchronous copy of
// tile it + NSTAGES - 1 (into the stage tile it - 1 used, free since the previous iteration's closing
// barrier), waits until tile it is in shared memory, and returns its K (its V follows at
// + ATTN_TILE_K * LD). Tiles 0 .. NSTAGES - 2 were issued before the loop. One commit group per
// tile, empty past the last, so the wait count is the same every iteration.
template <int D, int LD, int STAGE, int THREADS, int NSTAGES>
__device__ __forceinline__ const bf16 *kv_tile_ready(bf16 *stages, int it, int ntiles, const bf16 *k_base,
                                                     const bf16 *v_base, size_t stride, int L) {
  const int ahead = it + NSTAGES - 1;
  if (ahead < ntiles) {
    bf16 *next = stages + (ahead % NSTAGES) * STAGE;
    const int nk0 = ahead * ATTN_TILE_K, valid = min(ATTN_TILE_K, L - nk0);
    load_tile_async<D, ATTN_TILE_K, THREADS>(next, k_base + (size_t)nk0 * stride, stride, valid);
    load_tile_async<D, ATTN_TILE_K, THREADS>(next + ATTN_TILE_K * LD, v_base + (size_t)nk0 * stride, stride, valid);
  }
  cp_async_commit();
  cp_async_wait<NSTAGES - 1>();
  __syncthreads();
  return stages + (it % NSTAGES) * STAGE;
}

__device__ __forceinline__ int ceil_div_dev(int a, int b) { return (a + b - 1) / b; }

struct attn_dims {
  int Hq, Hkv, T;
  int causal;
  float scale, scale_log2;  // scale and scale * log2(e)
};

// K/V tile stages of the forward pass (cp.async of the next tiles overlaps this tile's math), and
// the blocks an SM its registers must allow: for D <= 64 four (at most 128 registers a thread; 130
// otherwise, which leaves three). Measured on the H100 at L=2048 D=64: 318-320 us against 351-354;
// deeper pipelines were slower (3 stages 342-351 us, 4 stages 369-371), as were two 16-row groups a
// warp (415-419 us: 247 registers), 128-key tiles (409) and 8 warps a block (471-511).
#define ATTN_FWD_STAGES 2
template <int D>
struct fwd_min_blocks {
  static constexpr int N = D <= 64 ? 4 : 1;
};

// ---- forward -----------------------------------------------------------------------------------------
// out (T, Hq*D), lse (Hq, T); qkv (T, (Hq + 2 Hkv) D). grid (query tiles, B, Hq).
// Shared memory: ATTN_FWD_STAGES K/V stages; Q passes through the last stage's K buffer once on its
// way to registers.
template <int D, int WARPS>
__global__ void __launch_bounds__(WARPS * WARP_SIZE, fwd_min_blocks<D>::N) attention_forward_kernel(bf16 *out, float *lse, const bf16 *qkv,
                                                                         const int32_t *cu_seqlens, attn_dims p) {
  constexpr int LD = D + ATTN_SMEM_PAD;
  constexpr int NK = ATTN_TILE_K / 8;  // n-tiles of scores per warp
  constexpr int ND = D / 8;            // n-tiles of the output
  constexpr int STAGE = 2 * ATTN_TILE_K * LD;  // K then V of one stage
  constexpr int NSTAGES = ATTN_FWD_STAGES;
  constexpr int TILE_Q = WARPS * ATTN_ROWS_PER_WARP;
  static_assert(TILE_Q <= 2 * ATTN_TILE_K, "the Q tile passes through one stage (K and V buffers)");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16 *stages = reinterpret_cast<bf16 *>(smem_raw);

  const int b = blockIdx.y, h = blockIdx.z;
  const int seq_start = cu_seqlens[b], L = cu_seqlens[b + 1] - seq_start;
  // Last query tiles first: under a causal mask they carry the most keys, so the long blocks start
  // early instead of forming a tail.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * TILE_Q;
  if (q0 >= L) return;
  const int hk = h / (p.Hq / p.Hkv);
  const size_t stride = (size_t)(p.Hq + 2 * p.Hkv) * D;
  const bf16 *q_base = qkv + (size_t)seq_start * stride + (size_t)h * D;
  const bf16 *k_base = qkv + (size_t)seq_start * stride + (size_t)(p.Hq + hk) * D;
  const bf16 *v_base = qkv + (size_t)seq_start * stride + (size_t)(p.Hq + p.Hkv + hk) * D;
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, q = lane % 4;
  const int wrow = warp * ATTN_ROWS_PER_WARP;  // this warp's first row within the tile
  const int kv_end = p.causal ? min(L, q0 + TILE_Q) : L;
  const int ntiles = ceil_div_dev(kv_end, ATTN_TILE_K);

  // Q into the last stage (the first one the loop refills), K/V tiles 0 .. NSTAGES - 2 into the
  // others, all in flight together; only Q is waited for here.
  constexpr int THREADS = WARPS * WARP_SIZE;
  bf16 *q_stage = stages + (NSTAGES - 1) * STAGE;
  load_tile_async<D, TILE_Q, THREADS>(q_stage, q_base + (size_t)q0 * stride, stride, min(TILE_Q, L - q0));
  cp_async_commit();
#pragma unroll
  for (int t = 0; t < NSTAGES - 1; t++) {
    const int valid = min(ATTN_TILE_K, L - t * ATTN_TILE_K);
    if (t < ntiles) {
      load_tile_async<D, ATTN_TILE_K, THREADS>(stages + t * STAGE, k_base + (size_t)t * ATTN_TILE_K * stride, stride,
                                               valid);
      load_tile_async<D, ATTN_TILE_K, THREADS>(stages + t * STAGE + ATTN_TILE_K * LD,
                                               v_base + (size_t)t * ATTN_TILE_K * stride, stride, valid);
    }
    cp_async_commit();
  }
  cp_async_wait<NSTAGES - 1>();
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) load_a_frag(qf[kk], q_stage, LD, wrow, kk * 16, lane);
  __syncthreads();  // the last stage is free for tile NSTAGES - 1

  float o[ND][4];
#pragma unroll
  for (int n = 0; n < ND; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const int row_abs[2] = {q0 + wrow + g, q0 + wrow + g + 8};  // rows within the sequence

  for (int it = 0; it < ntiles; it++) {
    const int k0 = it * ATTN_TILE_K;
    const bf16 *Ks = kv_tile_ready<D, LD, STAGE, THREADS, NSTAGES>(stages, it, ntiles, k_base, v_base, stride, L);
    const bf16 *Vs = Ks + ATTN_TILE_K * LD;

    // S (16, 64) = Q K^T for this warp's rows.
    float s[NK][4];
#pragma unroll
    for (int j = 0; j < NK; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
      for (int j = 0; j < NK; j += 2) {
        uint32_t b0[2], b1[2];
        load_b2_nk(b0, b1, Ks, LD, kk * 16, j * 8, lane);
        mma_bf16(s[j], qf[kk], b0);
        mma_bf16(s[j + 1], qf[kk], b1);
      }
    }
    // Scale into the log2 domain, mask, and find the new row maxima.
    const bool need_mask = k0 + ATTN_TILE_K > L || (p.causal && k0 + ATTN_TILE_K > q0 + wrow);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < NK; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int key = k0 + j * 8 + 2 * q + (e & 1);
        int r = e / 2;
        bool ok = !need_mask || (key < L && (!p.causal || key <= row_abs[r]));
        s[j][e] = ok ? s[j][e] * p.scale_log2 : -INFINITY;
        mx[r] = fmaxf(mx[r], s[j][e]);
      }
    }
    float corr[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
      float m_new = fmaxf(m_run[r], mx[r]);
      m_use[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet stays at 0
      corr[r] = fast_exp2(m_run[r] - m_use[r]);
      m_run[r] = m_new;
      l_run[r] *= corr[r];
    }
#pragma unroll
    for (int j = 0; j < NK; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        s[j][e] = fast_exp2(s[j][e] - m_use[e / 2]);
        l_run[e / 2] += s[j][e];
      }
    }
#pragma unroll
    for (int n = 0; n < ND; n++) {
      o[n][0] *= corr[0], o[n][1] *= corr[0], o[n][2] *= corr[1], o[n][3] *= corr[1];
    }
    // O += P V
#pragma unroll
    for (int kk = 0; kk < ATTN_TILE_K / 16; kk++) {
      uint32_t pa[4];
      c_to_a_frag(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int n = 0; n < ND; n += 2) {
        uint32_t b0[2], b1[2];
        load_b2_kn(b0, b1, Vs, LD, kk * 16, n * 8, lane);
        mma_bf16(o[n], pa, b0);
        mma_bf16(o[n + 1], pa, b1);
      }
    }
    __syncthreads();  // everyone is done with this stage before it is refilled
  }

  // Normalize, write out and lse.
#pragma unroll
  for (int r = 0; r < 2; r++) {
    l_run[r] += __shfl_xor_sync(FULL_MASK, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(FULL_MASK, l_run[r], 2);
  }
  const size_t out_stride = (size_t)p.Hq * D;
#pragma unroll
  for (int r = 0; r < 2; r++) {
    if (row_abs[r] >= L) continue;
    const float inv_l = 1.0f / l_run[r];
    bf16 *dst = out + (size_t)(seq_start + row_abs[r]) * out_stride + (size_t)h * D;
#pragma unroll
    for (int n = 0; n < ND; n++)
      *reinterpret_cast<uint32_t *>(dst + n * 8 + 2 * q) = pack_bf16x2(o[n][2 * r] * inv_l, o[n][2 * r + 1] * inv_l);
    if (q == 0) lse[(size_t)h * p.T + seq_start + row_abs[r]] = (m_run[r] + log2f(l_run[r])) * LN2;
  }
}

// ---- backward: delta = rowsum(dO * O) ------------------------------------------------------------------
// delta (Hq, T). `lanes` threads (a power of two >= D / 8) per (token, head) row, one 16-byte pack of
// dO and of O each, summed across the row's lanes by shuffles.
__global__ void attention_delta_kernel(float *delta, const bf16 *dout, const bf16 *out, int T, int Hq, int D,
                                       int lanes) {
  const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  const size_t row = tid / lanes, rows = (size_t)T * Hq;  // row = t * Hq + h
  const int pack = (int)(tid % lanes);
  float s = 0.0f;
  if (row < rows && pack * BF16_PER_PACK < D) {
    const size_t at = row * D + (size_t)pack * BF16_PER_PACK;
    const uint4 a = *reinterpret_cast<const uint4 *>(dout + at), b = *reinterpret_cast<const uint4 *>(out + at);
    const uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int k = 0; k < 4; k++) s += bf16_lo(wa[k]) * bf16_lo(wb[k]) + bf16_hi(wa[k]) * bf16_hi(wb[k]);
  }
  for (int offset = lanes / 2; offset > 0; offset /= 2) s += __shfl_xor_sync(FULL_MASK, s, offset);
  if (row < rows && pack == 0) delta[(row % Hq) * T + row / Hq] = s;
}

// ---- backward: query rows per step of the key-block kernel ------------------------------------------------
// TQ query rows per step: fewer for D = 128 to keep the accumulators in registers; 128 for the wide
// (8-warp) D = 64 block, which halves the steps and their barriers (H100, L=2048: 1153-1160 us
// against 1246 with 64 rows, despite 40 bytes of register spills then).
template <int D, int WARPS>
struct dkv_tile {
  static constexpr int TQ = D >= 128 ? 32 : (D == 64 && WARPS == 8 ? 128 : 64);
};

// ---- backward: dK, dV and dQ in one pass (5 tile products) -----------------------------------------------
// The dK/dV kernel above plus dQ: each step's dS tile (keys x TQ queries) goes to shared memory, the
// block multiplies it by its K tile into a dQ contribution (TQ, D) and adds that into an fp32
// accumulator (T, Hq, D) in a fixed order. For every (sequence, query head, query tile) the key
// blocks contribute in ascending order, each waiting on a counter that its predecessor releases; the
// first stores, the last adds, scales and writes bf16 dQ. No atomics on data: run-to-run
// deterministic.
// Hiding the ordering's latency (two L2 round trips a step: counter, accumulator) is what makes
// this pay: a step's contribution is parked in shared memory and added one step later, its
// accumulator tile fetched by cp.async while the next step's products run, and its counter released
// at the start of the step after that, when its stores have long landed. A key block therefore runs
// about one step behind its predecessor; under a causal mask the later key blocks have fewer steps,
// so this lag stays off the critical path. What the order still costs, measured on the H100 at
// L=2048 against the same kernel adding with fp32 atomics instead (non-deterministic, not kept):
// 1083 vs 778 us before the chunk loops were tightened (for_each_chunk), when each step's address
// arithmetic was a tenth of its time.
// Steps run query tiles (last first) outer and the group's query heads inner, so every key block of
// a (sequence, kv head) meets the (query head, query tile) tiles in the same order. Blocks are
// numbered key block major (every sequence's key block 0, then 1, ...): the block waited for has the
// lower linear index, so it was dispatched first (no deadlock), and the heaviest causal blocks start
// first.
// Shared memory: K and V tiles, two stages of (Q, dO, lse, delta), the dS tile, and two fp32 (TQ, D)
// tiles: the parked contribution and the fetched accumulator.
__device__ __forceinline__ int ld_acquire_gpu(const int *p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_gpu(int *p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
// A fragment at (m0, k0) of a tile stored transposed, [k][m] with row stride ld (dS^T for dQ = dS K).
__device__ __forceinline__ void load_a_frag_trans(uint32_t a[4], const bf16 *s, int ld, int m0, int k0, int lane) {
  ldsm_x4_trans(a, s + (k0 + (lane & 7) + (lane >> 4) * 8) * ld + m0 + ((lane >> 3) & 1) * 8);
}

// WARPS warps of 16 keys each: a block owns KEYS = 16 WARPS keys. The dQ product (TQ, D) is cut into
// column pairs (16 columns) and, when there are more warps than pairs, into ROW_SPLIT row ranges:
// a warp makes rows m0 * 16 .. of M_SPAN row tiles for up to PAIR_SPAN pairs (pair, pair + COL_GROUPS, ...).
template <int D, int WARPS>
struct fused_bwd_tile {
  static constexpr int TQ = dkv_tile<D, WARPS>::TQ;
  static constexpr int KEYS = WARPS * ATTN_ROWS_PER_WARP;  // keys per block
  static constexpr int LDS = TQ + ATTN_SMEM_PAD;           // dS^T row stride (bf16)
  static constexpr int LDQ = D + 2 * F32_PER_PACK;         // fp32 dQ tile row stride: float2 writes conflict-free
  static constexpr int N_PAIRS = D / 16;                   // dQ column pairs of n-tiles
  static constexpr int M_TILES = TQ / 16;                  // dQ row tiles
  static constexpr int ROW_SPLIT_WANTED = WARPS > N_PAIRS ? WARPS / N_PAIRS : 1;
  static constexpr int ROW_SPLIT = ROW_SPLIT_WANTED < M_TILES ? ROW_SPLIT_WANTED : M_TILES;
  static constexpr int M_SPAN = M_TILES / ROW_SPLIT;
  static constexpr int COL_GROUPS = WARPS / ROW_SPLIT;
  static constexpr int PAIR_SPAN = (N_PAIRS + COL_GROUPS - 1) / COL_GROUPS;
  static_assert(M_TILES % ROW_SPLIT == 0 && WARPS % ROW_SPLIT == 0, "the dQ rows split evenly over the warps");
};

// The dQ tile (query head h, rows q0..) a step contributed to, parked until the next step adds it.
// Its query tile (q0 / TQ) and last contributing key block are derived where needed: fewer live
// registers in a kernel at the 255 limit.
struct dq_pending {
  int live, h, q0;
};

template <int D, int WARPS>
__global__ void __launch_bounds__(WARPS * WARP_SIZE) attention_backward_fused_kernel(
    bf16 *dqkv, float *dq_accum, int *dq_ready, const bf16 *dout, const bf16 *qkv, const float *lse,
    const float *delta, const int32_t *cu_seqlens, int B, int max_q_tiles, attn_dims p) {
  using F = fused_bwd_tile<D, WARPS>;
  constexpr int KEYS = F::KEYS;
  constexpr int LD = D + ATTN_SMEM_PAD;
  constexpr int TQ = F::TQ;
  constexpr int NQ = TQ / 8, ND = D / 8;
  constexpr int STAGE_BYTES = 2 * TQ * LD * (int)sizeof(bf16) + 2 * TQ * (int)sizeof(float);
  constexpr int CHUNKS_PER_ROW = D / F32_PER_PACK;  // of an fp32 dQ row
  constexpr int THREADS = WARPS * WARP_SIZE;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16 *Ks = reinterpret_cast<bf16 *>(smem_raw), *Vs = Ks + KEYS * LD;
  unsigned char *stage_base = reinterpret_cast<unsigned char *>(Vs + KEYS * LD);
  bf16 *dSs = reinterpret_cast<bf16 *>(stage_base + 2 * STAGE_BYTES);  // (KEYS, TQ) dS^T
  float *parked = reinterpret_cast<float *>(dSs + KEYS * F::LDS);  // (TQ, D) contribution
  float *fetched = parked + TQ * F::LDQ;                                // (TQ, D) accumulator so far

  const int groups = B * p.Hkv;
  const int kb = blockIdx.x / groups, b = (blockIdx.x % groups) / p.Hkv, hk = blockIdx.x % p.Hkv;
  const int seq_start = cu_seqlens[b], L = cu_seqlens[b + 1] - seq_start;
  const int k0 = kb * KEYS;
  if (k0 >= L) return;
  const int group = p.Hq / p.Hkv;
  const size_t stride = (size_t)(p.Hq + 2 * p.Hkv) * D, o_stride = (size_t)p.Hq * D;
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, q = lane % 4;
  const int wrow = warp * ATTN_ROWS_PER_WARP;
  const int kvalid = min(KEYS, L - k0);
  const int n_qt = ceil_div_dev(L, TQ), n_kb = ceil_div_dev(L, KEYS);
  // Causal: query tiles before qt_first see none of these keys.
  const int qt_first = p.causal ? k0 / TQ : 0;
  const int nsteps = group * (n_qt - qt_first);

  // Step i = (query tile n_qt - 1 - i / group, head hk * group + i % group), walked by counters.
  int cur_head = hk * group, cur_q0 = (n_qt - 1) * TQ;  // step i
  int next_head = cur_head, next_q0 = cur_q0;           // step i + 1, once advanced
  auto advance = [&](int &head, int &q0_) {
    if (++head == (hk + 1) * group) head = hk * group, q0_ -= TQ;
  };
  auto counter = [&](const dq_pending &t) { return dq_ready + ((size_t)b * p.Hq + t.h) * max_q_tiles + t.q0 / TQ; };
  // The last key block that sees query tile q0 / TQ (under a causal mask, the one holding its last row).
  auto kb_last = [&](const dq_pending &t) { return p.causal ? min(n_kb - 1, (t.q0 + TQ - 1) / KEYS) : n_kb - 1; };
  const size_t accum_stride = (size_t)p.Hq * D;  // dq_accum (T, Hq, D) fp32
  auto accum_row = [&](const dq_pending &t, int row) {
    return dq_accum + (size_t)(seq_start + t.q0 + row) * accum_stride + (size_t)t.h * D;
  };
  // Issues the loads of step i, (query head h, rows q0..), into stage i & 1.
  auto issue = [&](int i, int h, int q0) {
    unsigned char *st = stage_base + (i & 1) * STAGE_BYTES;
    bf16 *Qd = reinterpret_cast<bf16 *>(st), *dOd = Qd + TQ * LD;
    float *lse_d = reinterpret_cast<float *>(dOd + TQ * LD);  // then delta: TQ floats each
    const int qvalid = min(TQ, L - q0);
    load_tile_async<D, TQ, THREADS>(Qd, qkv + (size_t)(seq_start + q0) * stride + (size_t)h * D, stride, qvalid);
    load_tile_async<D, TQ, THREADS>(dOd, dout + (size_t)(seq_start + q0) * o_stride + (size_t)h * D, o_stride, qvalid);
    // lse then delta (contiguous in shared memory), zero past the end; asynchronous like the tiles, so
    // no thread waits on a global load here.
    const size_t row0 = (size_t)h * p.T + seq_start + q0;
    for (int x = threadIdx.x; x < 2 * TQ; x += THREADS) {
      const int r = x % TQ;
      const float *src = (x < TQ ? lse : delta) + row0 + (r < qvalid ? r : 0);
      cp_async4_zfill(lse_d + x, src, r < qvalid);
    }
    cp_async_commit();
  };
  // Waits until key blocks 0..kb-1 have added into tile t, then starts fetching the accumulator:
  // each thread copies the 16-byte chunks it will add (no barrier needed before its own reads).
  auto fetch = [&](const dq_pending &t) {
    if (kb == 0) return;
    if (lane == 0)
      while (ld_acquire_gpu(counter(t)) < kb) __nanosleep(DQ_POLL_NS);
    __syncwarp();
    const float *accum = accum_row(t, 0);
    for_each_chunk<TQ, CHUNKS_PER_ROW, THREADS>([&](int row, int chunk) {
      const int col = chunk * F32_PER_PACK;
      if (t.q0 + row < L) cp_async16(fetched + row * F::LDQ + col, accum + (size_t)row * accum_stride + col);
    });
    cp_async_commit();
  };
  // Adds the parked contribution of tile t (and what was fetched) and stores: fp32 for the next key
  // block, or bf16 dQ (scaled) from the last one.
  auto add_parked = [&](const dq_pending &t) {
    cp_async_wait<0>();
    auto sum = [&](int row, int col) {
      f32x4 v = load_f32x4(parked + row * F::LDQ + col);
      if (kb > 0) {
        const f32x4 prev = load_f32x4(fetched + row * F::LDQ + col);
#pragma unroll
        for (int e = 0; e < F32_PER_PACK; e++) v.v[e] += prev.v[e];
      }
      return v;
    };
    if (kb == kb_last(t)) {
      bf16 *dq = dqkv + (size_t)(seq_start + t.q0) * stride + (size_t)t.h * D;
      for_each_chunk<TQ, CHUNKS_PER_ROW, THREADS>([&](int row, int chunk) {
        const int col = chunk * F32_PER_PACK;
        if (t.q0 + row >= L) return;
        const f32x4 v = sum(row, col);
        *reinterpret_cast<uint2 *>(dq + (size_t)row * stride + col) = make_uint2(
            pack_bf16x2(v.v[0] * p.scale, v.v[1] * p.scale), pack_bf16x2(v.v[2] * p.scale, v.v[3] * p.scale));
      });
    } else {
      float *accum = accum_row(t, 0);
      for_each_chunk<TQ, CHUNKS_PER_ROW, THREADS>([&](int row, int chunk) {
        const int col = chunk * F32_PER_PACK;
        if (t.q0 + row >= L) return;
        const f32x4 v = sum(row, col);
        __stcg(reinterpret_cast<float4 *>(accum + (size_t)row * accum_stride + col),
               make_float4(v.v[0], v.v[1], v.v[2], v.v[3]));
      });
    }
  };
  // Thread 0, after a barrier that follows every thread's stores of tile t. The barrier orders those
  // stores before thread 0's release (causality is transitive in the PTX memory model), and the
  // release store (an acq_rel fence, then the store) makes them visible at gpu scope to whoever
  // acquires the counter: the grid-barrier pattern. A sequentially consistent fence
  // (__threadfence) in front of it is not needed and stalls warp 0 every step.
  auto release = [&](const dq_pending &t) {
    if (threadIdx.x == 0 && t.live && kb < kb_last(t)) st_release_gpu(counter(t), kb + 1);
  };

  load_tile_async<D, KEYS, THREADS>(Ks, qkv + (size_t)(seq_start + k0) * stride + (size_t)(p.Hq + hk) * D, stride,
                                  kvalid);
  load_tile_async<D, KEYS, THREADS>(Vs, qkv + (size_t)(seq_start + k0) * stride + (size_t)(p.Hq + p.Hkv + hk) * D,
                                  stride, kvalid);
  issue(0, cur_head, cur_q0);  // commits K, V and step 0 as one group
  const int key_abs[2] = {k0 + wrow + g, k0 + wrow + g + 8};

  float dk[ND][4], dv[ND][4];
#pragma unroll
  for (int n = 0; n < ND; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.0f;
  dq_pending pend = {0, 0, 0};    // parked in the previous step, added in this one
  dq_pending stored = {0, 0, 0};  // added in the previous step, released in this one

  for (int i = 0; i < nsteps; i++) {
    cp_async_wait<0>();
    // Step i's stage has landed, and every thread is past step i - 1: its stage, the dS tile and the
    // fetched tile are free, the parked tile complete. One barrier a step for all of these.
    __syncthreads();
    if (i + 1 < nsteps) {
      advance(next_head, next_q0);
      issue(i + 1, next_head, next_q0);
    }
    release(stored);
    if (pend.live) fetch(pend);  // lands while this step's products run
    const unsigned char *st = stage_base + (i & 1) * STAGE_BYTES;
    const bf16 *Qs = reinterpret_cast<const bf16 *>(st), *dOs = Qs + TQ * LD;
    const float *lse_s = reinterpret_cast<const float *>(dOs + TQ * LD), *delta_s = lse_s + TQ;
    const int h = cur_head, q0 = cur_q0;
    cur_head = next_head, cur_q0 = next_q0;

    float st_[NQ][4], dpt[NQ][4];
#pragma unroll
    for (int j = 0; j < NQ; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) st_[j][e] = dpt[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t ka[4], va[4];
      load_a_frag(ka, Ks, LD, wrow, kk * 16, lane);
      load_a_frag(va, Vs, LD, wrow, kk * 16, lane);
#pragma unroll
      for (int j = 0; j < NQ; j += 2) {
        uint32_t q0f[2], q1f[2], o0f[2], o1f[2];
        load_b2_nk(q0f, q1f, Qs, LD, kk * 16, j * 8, lane);
        load_b2_nk(o0f, o1f, dOs, LD, kk * 16, j * 8, lane);
        mma_bf16(st_[j], ka, q0f);  // S^T = K Q^T
        mma_bf16(st_[j + 1], ka, q1f);
        mma_bf16(dpt[j], va, o0f);  // dP^T = V dO^T
        mma_bf16(dpt[j + 1], va, o1f);
      }
    }
    // P^T and dS^T = P^T (dP^T - delta[query]); dS^T also to shared memory for dQ. One compare a
    // score: query qi = j * 8 + 2q + (e & 1) is visible to key row r when lim[r] <= j * 8 + (e & 1).
    // Query rows past the end need no mask (their Q and dO rows are zero-filled and their lse and
    // delta 0: P = 1, dS = 0); key rows past the end are masked (a score against a zero K row over
    // a very negative lse could overflow, and dS reaches dQ). Every tile is masked: an unmasked path
    // for tiles off the diagonal measured slower (the loop body doubles).
    int lim[2];
#pragma unroll
    for (int r = 0; r < 2; r++) lim[r] = key_abs[r] >= L ? INT_MAX : (p.causal ? key_abs[r] - q0 - 2 * q : INT_MIN);
#pragma unroll
    for (int j = 0; j < NQ; j++) {
      const float2 lse_pair = *reinterpret_cast<const float2 *>(lse_s + j * 8 + 2 * q);
      const float2 delta_pair = *reinterpret_cast<const float2 *>(delta_s + j * 8 + 2 * q);
      const float lse2[2] = {lse_pair.x * LOG2E, lse_pair.y * LOG2E}, dl[2] = {delta_pair.x, delta_pair.y};
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int c = e & 1, r = e / 2;
        const float e2 = fast_exp2(st_[j][e] * p.scale_log2 - lse2[c]);
        const float pr = lim[r] <= j * 8 + c ? e2 : 0.0f;
        st_[j][e] = pr;
        dpt[j][e] = pr * (dpt[j][e] - dl[c]);
      }
#pragma unroll
      for (int r = 0; r < 2; r++)
        *reinterpret_cast<uint32_t *>(dSs + (wrow + g + 8 * r) * F::LDS + j * 8 + 2 * q) =
            pack_bf16x2(dpt[j][2 * r], dpt[j][2 * r + 1]);
    }
    // dV += P^T dO, dK += dS^T Q
#pragma unroll
    for (int kk = 0; kk < TQ / 16; kk++) {
      uint32_t pa[4], sa[4];
      c_to_a_frag(pa, st_[2 * kk], st_[2 * kk + 1]);
      c_to_a_frag(sa, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
      for (int n = 0; n < ND; n += 2) {
        uint32_t o0f[2], o1f[2], q0f[2], q1f[2];
        load_b2_kn(o0f, o1f, dOs, LD, kk * 16, n * 8, lane);
        load_b2_kn(q0f, q1f, Qs, LD, kk * 16, n * 8, lane);
        mma_bf16(dv[n], pa, o0f);
        mma_bf16(dv[n + 1], pa, o1f);
        mma_bf16(dk[n], sa, q0f);
        mma_bf16(dk[n + 1], sa, q1f);
      }
    }
    if (pend.live) add_parked(pend);
    stored = pend;
    __syncthreads();  // the whole dS tile is in shared memory; the parked tile has been read

    // This step's dQ contribution (TQ, D) = dS K: warps split the columns in pairs of n-tiles (and the
    // rows, when there are more warps than pairs); parked in shared memory for the next step.
    const int m0 = (warp % F::ROW_SPLIT) * F::M_SPAN, col_group = warp / F::ROW_SPLIT;
    float dq[F::M_SPAN][F::PAIR_SPAN][2][4];
#pragma unroll
    for (int m = 0; m < F::M_SPAN; m++)
#pragma unroll
      for (int np = 0; np < F::PAIR_SPAN; np++)
#pragma unroll
        for (int e = 0; e < 4; e++) dq[m][np][0][e] = dq[m][np][1][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; kk++) {
#pragma unroll
      for (int np = 0; np < F::PAIR_SPAN; np++) {
        const int pair = col_group + np * F::COL_GROUPS;
        if (pair >= F::N_PAIRS) break;
        uint32_t b0[2], b1[2];
        load_b2_kn(b0, b1, Ks, LD, kk * 16, pair * 16, lane);
#pragma unroll
        for (int m = 0; m < F::M_SPAN; m++) {
          uint32_t a[4];
          load_a_frag_trans(a, dSs, F::LDS, (m0 + m) * 16, kk * 16, lane);
          mma_bf16(dq[m][np][0], a, b0);
          mma_bf16(dq[m][np][1], a, b1);
        }
      }
    }
#pragma unroll
    for (int m = 0; m < F::M_SPAN; m++)
#pragma unroll
      for (int np = 0; np < F::PAIR_SPAN; np++) {
        const int pair = col_group + np * F::COL_GROUPS;
        if (pair >= F::N_PAIRS) break;
#pragma unroll
        for (int half = 0; half < 2; half++)
#pragma unroll
          for (int r = 0; r < 2; r++)
            *reinterpret_cast<float2 *>(parked + ((m0 + m) * 16 + g + 8 * r) * F::LDQ + pair * 16 + half * 8 +
                                        2 * q) = make_float2(dq[m][np][half][2 * r], dq[m][np][half][2 * r + 1]);
      }
    pend.live = 1, pend.h = h, pend.q0 = q0;
  }
  // The last step's contribution (parked by every warp: a barrier first), then both outstanding
  // releases.
  __syncthreads();
  release(stored);
  fetch(pend);
  add_parked(pend);
  __syncthreads();
  release(pend);

#pragma unroll
  for (int r = 0; r < 2; r++) {
    if (key_abs[r] >= L) continue;
    bf16 *dk_dst = dqkv + (size_t)(seq_start + key_abs[r]) * stride + (size_t)(p.Hq + hk) * D;
    bf16 *dv_dst = dqkv + (size_t)(seq_start + key_abs[r]) * stride + (size_t)(p.Hq + p.Hkv + hk) * D;
#pragma unroll
    for (int n = 0; n < ND; n++) {
      *reinterpret_cast<uint32_t *>(dk_dst + n * 8 + 2 * q) =
          pack_bf16x2(dk[n][2 * r] * p.scale, dk[n][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t *>(dv_dst + n * 8 + 2 * q) = pack_bf16x2(dv[n][2 * r], dv[n][2 * r + 1]);
    }
  }
}

// ---- launchers ---------------------------------------------------------------------------------------------
// Forward warps per block (16 query rows each). 8 warps (128 rows sharing each K/V tile) measured
// slower at every benchmark shape (e.g. 245 vs 224 us at L=512 D=128, 28.5 vs 17.0 us at L=32).
#define ATTN_FWD_WARPS 4
template <int D>
static size_t fwd_smem(void) {
  return (size_t)ATTN_FWD_STAGES * 2 * ATTN_TILE_K * (D + ATTN_SMEM_PAD) * sizeof(bf16);
}
template <int D, int WARPS>
static size_t bwd_smem(void) {
  using F = fused_bwd_tile<D, WARPS>;
  constexpr size_t KEYS = F::KEYS;
  constexpr size_t LD = D + ATTN_SMEM_PAD;
  const size_t kv = (size_t)2 * KEYS * LD * sizeof(bf16);
  const size_t stages = 2 * ((size_t)2 * F::TQ * LD * sizeof(bf16) + 2 * F::TQ * sizeof(float));
  const size_t ds = (size_t)KEYS * F::LDS * sizeof(bf16);
  const size_t dq_tiles = (size_t)2 * F::TQ * F::LDQ * sizeof(float);
  return kv + stages + ds + dq_tiles;
}

// Raises a kernel's dynamic shared-memory limit once (needed past 48 KB).
template <typename K>
static void allow_smem(K kernel, size_t bytes, bool *done) {
  if (*done) return;
  cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  *done = true;
}

template <int D, int WARPS>
static void launch_forward_warps(bf16 *out, float *lse, const bf16 *qkv, const int32_t *cu, int B, int max_seqlen,
                                 attn_dims p) {
  static bool ready = false;
  allow_smem(attention_forward_kernel<D, WARPS>, fwd_smem<D>(), &ready);
  dim3 grid(ceil_div_int(max_seqlen, WARPS * ATTN_ROWS_PER_WARP), B, p.Hq);
  attention_forward_kernel<D, WARPS><<<grid, WARPS * WARP_SIZE, fwd_smem<D>(), SN_STREAM>>>(out, lse, qkv, cu, p);
  launchCheck();
}
template <int D>
static void launch_forward(bf16 *out, float *lse, const bf16 *qkv, const int32_t *cu, int B, int max_seqlen,
                           attn_dims p) {
  launch_forward_warps<D, ATTN_FWD_WARPS>(out, lse, qkv, cu, B, max_seqlen, p);
}

template <int D, int WARPS>
static void launch_backward_warps(bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const float *lse,
                                  const float *delta, const int32_t *cu, int B, int max_seqlen, attn_dims p) {
  using F = fused_bwd_tile<D, WARPS>;
  static bool ready_smem = false;
  allow_smem(attention_backward_fused_kernel<D, WARPS>, bwd_smem<D, WARPS>(), &ready_smem);
  const int max_q_tiles = ceil_div_int(max_seqlen, F::TQ);
  const int n_kb = ceil_div_int(max_seqlen, F::KEYS);
  float *dq_accum = (float *)sn_cuda_scratch(SCRATCH_ATTN_DQ_ACCUM, (size_t)p.T * p.Hq * D * sizeof(float));
  const size_t counters = (size_t)B * p.Hq * max_q_tiles * sizeof(int);
  int *dq_ready = (int *)sn_cuda_scratch(SCRATCH_ATTN_DQ_ORDER, counters);
  cudaCheck(cudaMemsetAsync(dq_ready, 0, counters, SN_STREAM));
  attention_backward_fused_kernel<D, WARPS><<<n_kb * B * p.Hkv, WARPS * WARP_SIZE, bwd_smem<D, WARPS>(), SN_STREAM>>>(
      dqkv, dq_accum, dq_ready, dout, qkv, lse, delta, cu, B, max_q_tiles, p);
  launchCheck();
}
template <int D>
static void launch_backward(bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const float *lse, const float *delta,
                            const int32_t *cu, int B, int max_seqlen, attn_dims p) {
  if (max_seqlen >= BWD_WIDE_MIN_SEQLEN)
    launch_backward_warps<D, 8>(dqkv, dout, qkv, lse, delta, cu, B, max_seqlen, p);
  else
    launch_backward_warps<D, 4>(dqkv, dout, qkv, lse, delta, cu, B, max_seqlen, p);
}

// The kernels copy 16-byte packs (cp.async, vector loads): every buffer must start on 16 bytes, as
// the allocator's do.
static void check_aligned(const void *const *buffers, int n) {
  for (int i = 0; i < n; i++)
    if (!aligned16(buffers[i])) {
      fprintf(stderr, "error: %s:%d: attention buffer %d (%p) is not 16-byte aligned\n", __FILE__, __LINE__, i,
              buffers[i]);
      exit(1);
    }
}

static attn_dims make_dims(int T, int Hq, int Hkv, int D, int causal, float scale) {
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

void cuda_attention_forward(void *out, float *lse, const void *qkv, const int32_t *cu_seqlens, int B, int T,
                            int max_seqlen, int Hq, int Hkv, int D, int causal, float scale) {
  if (T == 0 || B == 0) return;
  attn_dims p = make_dims(T, Hq, Hkv, D, causal, scale);
  const void *buffers[] = {out, qkv};
  check_aligned(buffers, 2);
#define FWD(DD) launch_forward<DD>((bf16 *)out, lse, (const bf16 *)qkv, cu_seqlens, B, max_seqlen, p)
  ATTN_DISPATCH(D, FWD)
#undef FWD
}

void cuda_attention_backward(void *dqkv, const void *dout, const void *qkv, const void *out, const float *lse,
                             const int32_t *cu_seqlens, int B, int T, int max_seqlen, int Hq, int Hkv, int D,
                             int causal, float scale) {
  if (T == 0 || B == 0) return;
  attn_dims p = make_dims(T, Hq, Hkv, D, causal, scale);
  const void *buffers[] = {dqkv, dout, qkv, out};
  check_aligned(buffers, 4);
  float *delta = (float *)sn_cuda_scratch(SCRATCH_ATTN_DELTA, (size_t)Hq * T * sizeof(float));
  int lanes = 1;  // D is a multiple of 16 and at most 128: 2..16 lanes, dividing a warp
  while (lanes * BF16_PER_PACK < D) lanes *= 2;
  const size_t threads = (size_t)T * Hq * lanes;
  attention_delta_kernel<<<ceil_div_int(threads, DELTA_THREADS), DELTA_THREADS, 0, SN_STREAM>>>(
      delta, (const bf16 *)dout, (const bf16 *)out, T, Hq, D, lanes);
  launchCheck();
#define BWD(DD)                                                                                             \
  launch_backward<DD>((bf16 *)dqkv, (const bf16 *)dout, (const bf16 *)qkv, lse, delta, cu_seqlens, B, max_seqlen, \
                      p)
  ATTN_DISPATCH(D, BWD)
#undef BWD
}
