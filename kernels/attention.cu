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
// Backward, deterministic (no atomics): delta = rowsum(dO * O) first; then two kernels that each
// recompute the probabilities: dQ per (query tile, sequence, query head) looping over key tiles, and
// dK/dV per (key tile, sequence, kv head) looping over the query heads of its group and their query
// tiles; the two run concurrently (fork/join on a side stream). That costs 7 tile products instead
// of 5, and buys run-to-run determinism.
//
// mma.sync m16n8k16 fragments (lane = 4 * g + q):
//   A (16x16, row-major): a[0] = (g, 2q..2q+1), a[1] = (g+8, 2q..), a[2] = (g, 2q+8..), a[3] = (g+8, 2q+8..)
//   B (16x8, k x n):      b[0] = (k = 2q..2q+1, n = g), b[1] = (k = 2q+8..2q+9, n = g)
//   C (16x8, fp32):       c[0..1] = (g, 2q..2q+1), c[2..3] = (g+8, 2q..2q+1)
#include "common.cuh"

#define ATTN_WARPS 4
#define ATTN_THREADS (ATTN_WARPS * WARP_SIZE)
#define ATTN_ROWS_PER_WARP 16
#define ATTN_TILE_Q (ATTN_WARPS * ATTN_ROWS_PER_WARP)  // 64 query rows per block
#define ATTN_TILE_K 64                                 // keys per shared-memory tile
#define DKV_WARPS 4  // dK/dV kernel warps (16 keys each); 8 measured slower (1.72 ms vs 1.62 ms, L=2048 D=64)
#define DKV_TILE_K (DKV_WARPS * ATTN_ROWS_PER_WARP)  // keys per dK/dV block
#define ATTN_SMEM_PAD 8  // bf16 per row: shifts rows by 4 banks, so fragment loads are conflict-free
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// ---- tensor-core and fragment helpers -----------------------------------------------------------------
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&v);
}
__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
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

// Starts copying a (TILE, D) tile from global (row stride `stride` elements) into shared memory
// (row stride D + pad) with cp.async, 16 bytes per thread per step; rows [valid, TILE) are
// zero-filled (source size 0) so that masked products stay finite. Completes at cp_async_wait.
template <int D, int TILE>
__device__ __forceinline__ void load_tile_async(bf16 *s, const bf16 *g, size_t stride, int valid) {
  constexpr int PACKS_PER_ROW = D / BF16_PER_PACK;
  for (int c = threadIdx.x; c < TILE * PACKS_PER_ROW; c += blockDim.x) {
    int row = c / PACKS_PER_ROW, col = (c % PACKS_PER_ROW) * BF16_PER_PACK;
    bool in = row < valid;
    const bf16 *src = g + (size_t)(in ? row : 0) * stride + col;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(s + row * (D + ATTN_SMEM_PAD) + col)),
                 "l"(src), "r"(in ? 16 : 0));
  }
}
__device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait(void) { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Double-buffered K/V tiles of one sequence: starts the asynchronous copy of tile it + 1 into the
// other stage, waits until tile it is in shared memory, and returns its K (its V follows at
// + ATTN_TILE_K * LD). The first tile was issued before the loop.
template <int D, int LD, int STAGE>
__device__ __forceinline__ const bf16 *kv_tile_ready(bf16 *stages, int it, int ntiles, const bf16 *k_base,
                                                     const bf16 *v_base, size_t stride, int L) {
  if (it + 1 < ntiles) {
    bf16 *next = stages + ((it + 1) & 1) * STAGE;
    const int nk0 = (it + 1) * ATTN_TILE_K, valid = min(ATTN_TILE_K, L - nk0);
    load_tile_async<D, ATTN_TILE_K>(next, k_base + (size_t)nk0 * stride, stride, valid);
    load_tile_async<D, ATTN_TILE_K>(next + ATTN_TILE_K * LD, v_base + (size_t)nk0 * stride, stride, valid);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
  return stages + (it & 1) * STAGE;
}

__device__ __forceinline__ int ceil_div_dev(int a, int b) { return (a + b - 1) / b; }

struct attn_dims {
  int Hq, Hkv, T;
  int causal;
  float scale, scale_log2;  // scale and scale * log2(e)
};

// ---- forward -----------------------------------------------------------------------------------------
// out (T, Hq*D), lse (Hq, T); qkv (T, (Hq + 2 Hkv) D). grid (query tiles, B, Hq).
// Shared memory: two K/V stages (the next tile's cp.async overlaps this tile's math); Q passes
// through the second stage's K buffer once on its way to registers.
template <int D, int WARPS>
__global__ void __launch_bounds__(WARPS * WARP_SIZE) attention_forward_kernel(bf16 *out, float *lse, const bf16 *qkv,
                                                                         const int32_t *cu_seqlens, attn_dims p) {
  constexpr int LD = D + ATTN_SMEM_PAD;
  constexpr int NK = ATTN_TILE_K / 8;  // n-tiles of scores per warp
  constexpr int ND = D / 8;            // n-tiles of the output
  constexpr int STAGE = 2 * ATTN_TILE_K * LD;  // K then V of one stage
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

  // Q into stage 1's K buffer, K/V tile 0 into stage 0, both in flight together.
  load_tile_async<D, TILE_Q>(stages + STAGE, q_base + (size_t)q0 * stride, stride, min(TILE_Q, L - q0));
  cp_async_commit();
  load_tile_async<D, ATTN_TILE_K>(stages, k_base, stride, min(ATTN_TILE_K, L));
  load_tile_async<D, ATTN_TILE_K>(stages + ATTN_TILE_K * LD, v_base, stride, min(ATTN_TILE_K, L));
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) load_a_frag(qf[kk], stages + STAGE, LD, wrow, kk * 16, lane);
  __syncthreads();  // stage 1 is free for tile 1

  float o[ND][4];
#pragma unroll
  for (int n = 0; n < ND; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const int row_abs[2] = {q0 + wrow + g, q0 + wrow + g + 8};  // rows within the sequence

  for (int it = 0; it < ntiles; it++) {
    const int k0 = it * ATTN_TILE_K;
    const bf16 *Ks = kv_tile_ready<D, LD, STAGE>(stages, it, ntiles, k_base, v_base, stride, L);
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
      corr[r] = exp2f(m_run[r] - m_use[r]);
      m_run[r] = m_new;
      l_run[r] *= corr[r];
    }
#pragma unroll
    for (int j = 0; j < NK; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        s[j][e] = exp2f(s[j][e] - m_use[e / 2]);
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
// delta (Hq, T); one warp per (token, head).
__global__ void attention_delta_kernel(float *delta, const bf16 *dout, const bf16 *out, int T, int Hq, int D) {
  const int lane = threadIdx.x % WARP_SIZE;
  const size_t w = (size_t)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
  if (w >= (size_t)T * Hq) return;
  const int t = w / Hq, h = w % Hq;
  const bf16 *a = dout + (size_t)t * Hq * D + (size_t)h * D, *b = out + (size_t)t * Hq * D + (size_t)h * D;
  float s = 0.0f;
  for (int d = lane; d < D; d += WARP_SIZE) s += bf2f(a[d]) * bf2f(b[d]);
  s = warp_sum(s);
  if (lane == 0) delta[(size_t)h * T + t] = s;
}

// ---- backward: dQ ----------------------------------------------------------------------------------------
// dQ rows of head h: dQ = scale * sum over key tiles of dS K, dS = P * (dO V^T - delta).
// Shared memory: Q and dO tiles, then two K/V stages.
template <int D>
__global__ void __launch_bounds__(ATTN_THREADS) attention_backward_dq_kernel(
    bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const float *lse, const float *delta,
    const int32_t *cu_seqlens, attn_dims p) {
  constexpr int LD = D + ATTN_SMEM_PAD;
  constexpr int NK = ATTN_TILE_K / 8, ND = D / 8;
  constexpr int STAGE = 2 * ATTN_TILE_K * LD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16 *Qs = reinterpret_cast<bf16 *>(smem_raw), *dOs = Qs + ATTN_TILE_Q * LD;
  bf16 *stages = dOs + ATTN_TILE_Q * LD;

  const int b = blockIdx.y, h = blockIdx.z;
  const int seq_start = cu_seqlens[b], L = cu_seqlens[b + 1] - seq_start;
  // Last query tiles first: under a causal mask they carry the most keys, so the long blocks start
  // early instead of forming a tail.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * ATTN_TILE_Q;
  if (q0 >= L) return;
  const int hk = h / (p.Hq / p.Hkv);
  const size_t stride = (size_t)(p.Hq + 2 * p.Hkv) * D, o_stride = (size_t)p.Hq * D;
  const bf16 *k_base = qkv + (size_t)seq_start * stride + (size_t)(p.Hq + hk) * D;
  const bf16 *v_base = qkv + (size_t)seq_start * stride + (size_t)(p.Hq + p.Hkv + hk) * D;
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, q = lane % 4;
  const int wrow = warp * ATTN_ROWS_PER_WARP;
  const int qvalid = min(ATTN_TILE_Q, L - q0);
  const int kv_end = p.causal ? min(L, q0 + ATTN_TILE_Q) : L;
  const int ntiles = ceil_div_dev(kv_end, ATTN_TILE_K);
  load_tile_async<D, ATTN_TILE_Q>(Qs, qkv + (size_t)(seq_start + q0) * stride + (size_t)h * D, stride, qvalid);
  load_tile_async<D, ATTN_TILE_Q>(dOs, dout + (size_t)(seq_start + q0) * o_stride + (size_t)h * D, o_stride, qvalid);
  load_tile_async<D, ATTN_TILE_K>(stages, k_base, stride, min(ATTN_TILE_K, L));
  load_tile_async<D, ATTN_TILE_K>(stages + ATTN_TILE_K * LD, v_base, stride, min(ATTN_TILE_K, L));
  cp_async_commit();

  const int row_abs[2] = {q0 + wrow + g, q0 + wrow + g + 8};
  float lse2[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    bool in = row_abs[r] < L;
    size_t idx = (size_t)h * p.T + seq_start + row_abs[r];
    lse2[r] = in ? lse[idx] * LOG2E : 0.0f;
    dlt[r] = in ? delta[idx] : 0.0f;
  }
  float dq[ND][4];
#pragma unroll
  for (int n = 0; n < ND; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

  for (int it = 0; it < ntiles; it++) {
    const int k0 = it * ATTN_TILE_K;
    const bf16 *Ks = kv_tile_ready<D, LD, STAGE>(stages, it, ntiles, k_base, v_base, stride, L);
    const bf16 *Vs = Ks + ATTN_TILE_K * LD;
    float s[NK][4], dp[NK][4];
#pragma unroll
    for (int j = 0; j < NK; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t qa[4], da[4];
      load_a_frag(qa, Qs, LD, wrow, kk * 16, lane);
      load_a_frag(da, dOs, LD, wrow, kk * 16, lane);
#pragma unroll
      for (int j = 0; j < NK; j += 2) {
        uint32_t k0f[2], k1f[2], v0f[2], v1f[2];
        load_b2_nk(k0f, k1f, Ks, LD, kk * 16, j * 8, lane);
        load_b2_nk(v0f, v1f, Vs, LD, kk * 16, j * 8, lane);
        mma_bf16(s[j], qa, k0f);  // S = Q K^T
        mma_bf16(s[j + 1], qa, k1f);
        mma_bf16(dp[j], da, v0f);  // dP = dO V^T
        mma_bf16(dp[j + 1], da, v1f);
      }
    }
    // dS = P (dP - delta), P = exp2(S scale_log2 - lse2), zero where masked.
#pragma unroll
    for (int j = 0; j < NK; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int key = k0 + j * 8 + 2 * q + (e & 1), r = e / 2;
        bool ok = key < L && row_abs[r] < L && (!p.causal || key <= row_abs[r]);
        float pr = ok ? exp2f(s[j][e] * p.scale_log2 - lse2[r]) : 0.0f;
        dp[j][e] = pr * (dp[j][e] - dlt[r]);
      }
    }
    // dQ += dS K
#pragma unroll
    for (int kk = 0; kk < ATTN_TILE_K / 16; kk++) {
      uint32_t a[4];
      c_to_a_frag(a, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int n = 0; n < ND; n += 2) {
        uint32_t b0[2], b1[2];
        load_b2_kn(b0, b1, Ks, LD, kk * 16, n * 8, lane);
        mma_bf16(dq[n], a, b0);
        mma_bf16(dq[n + 1], a, b1);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    if (row_abs[r] >= L) continue;
    bf16 *dst = dqkv + (size_t)(seq_start + row_abs[r]) * stride + (size_t)h * D;
#pragma unroll
    for (int n = 0; n < ND; n++)
      *reinterpret_cast<uint32_t *>(dst + n * 8 + 2 * q) =
          pack_bf16x2(dq[n][2 * r] * p.scale, dq[n][2 * r + 1] * p.scale);
  }
}

// ---- backward: dK, dV -----------------------------------------------------------------------------------
// One block per (key tile of DKV_TILE_K, sequence, kv head); warps own 16 keys each. Works in transposed form: S^T = K Q^T,
// so P^T and dS^T come out in registers with keys as rows, ready as A operands of dV += P^T dO and
// dK += dS^T Q. TQ query rows per step (fewer for D = 128 to keep the accumulators in registers).
// Shared memory: K and V tiles, then two stages of (Q, dO, lse, delta) for TQ query rows.
template <int D>
struct dkv_tile {
  static constexpr int TQ = D >= 128 ? 32 : 64;
};

template <int D>
__global__ void __launch_bounds__(DKV_WARPS * WARP_SIZE) attention_backward_dkv_kernel(
    bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const float *lse, const float *delta,
    const int32_t *cu_seqlens, attn_dims p) {
  constexpr int LD = D + ATTN_SMEM_PAD;
  constexpr int TQ = dkv_tile<D>::TQ;
  constexpr int NQ = TQ / 8, ND = D / 8;
  constexpr int STAGE_BYTES = 2 * TQ * LD * (int)sizeof(bf16) + 2 * TQ * (int)sizeof(float);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16 *Ks = reinterpret_cast<bf16 *>(smem_raw), *Vs = Ks + DKV_TILE_K * LD;
  unsigned char *stage_base = reinterpret_cast<unsigned char *>(Vs + DKV_TILE_K * LD);

  const int b = blockIdx.y, hk = blockIdx.z;
  const int seq_start = cu_seqlens[b], L = cu_seqlens[b + 1] - seq_start;
  const int k0 = blockIdx.x * DKV_TILE_K;
  if (k0 >= L) return;
  const int group = p.Hq / p.Hkv;
  const size_t stride = (size_t)(p.Hq + 2 * p.Hkv) * D, o_stride = (size_t)p.Hq * D;
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, q = lane % 4;
  const int wrow = warp * ATTN_ROWS_PER_WARP;
  const int kvalid = min(DKV_TILE_K, L - k0);
  // Causal: queries before k0 see none of these keys. Steps run over (query head, query tile).
  const int q_begin = p.causal ? (k0 / TQ) * TQ : 0;
  const int tiles_per_head = ceil_div_dev(L - q_begin, TQ);
  const int nsteps = group * tiles_per_head;

  // Issues the loads of step i into stage i & 1.
  auto issue = [&](int i) {
    unsigned char *st = stage_base + (i & 1) * STAGE_BYTES;
    bf16 *Qd = reinterpret_cast<bf16 *>(st), *dOd = Qd + TQ * LD;
    float *lse_d = reinterpret_cast<float *>(dOd + TQ * LD), *delta_d = lse_d + TQ;
    const int h = hk * group + i / tiles_per_head, q0 = q_begin + (i % tiles_per_head) * TQ;
    const int qvalid = min(TQ, L - q0);
    load_tile_async<D, TQ>(Qd, qkv + (size_t)(seq_start + q0) * stride + (size_t)h * D, stride, qvalid);
    load_tile_async<D, TQ>(dOd, dout + (size_t)(seq_start + q0) * o_stride + (size_t)h * D, o_stride, qvalid);
    cp_async_commit();
    for (int x = threadIdx.x; x < TQ; x += blockDim.x) {  // plain stores: ordered by the loop's barrier
      size_t idx = (size_t)h * p.T + seq_start + q0 + x;
      lse_d[x] = x < qvalid ? lse[idx] * LOG2E : 0.0f;
      delta_d[x] = x < qvalid ? delta[idx] : 0.0f;
    }
  };

  load_tile_async<D, DKV_TILE_K>(Ks, qkv + (size_t)(seq_start + k0) * stride + (size_t)(p.Hq + hk) * D, stride,
                                  kvalid);
  load_tile_async<D, DKV_TILE_K>(Vs, qkv + (size_t)(seq_start + k0) * stride + (size_t)(p.Hq + p.Hkv + hk) * D,
                                  stride, kvalid);
  issue(0);  // commits K, V and step 0 as one group
  const int key_abs[2] = {k0 + wrow + g, k0 + wrow + g + 8};

  float dk[ND][4], dv[ND][4];
#pragma unroll
  for (int n = 0; n < ND; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.0f;

  for (int i = 0; i < nsteps; i++) {
    if (i + 1 < nsteps) {
      issue(i + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const unsigned char *st = stage_base + (i & 1) * STAGE_BYTES;
    const bf16 *Qs = reinterpret_cast<const bf16 *>(st), *dOs = Qs + TQ * LD;
    const float *lse2_s = reinterpret_cast<const float *>(dOs + TQ * LD), *delta_s = lse2_s + TQ;
    const int q0 = q_begin + (i % tiles_per_head) * TQ;

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
    // P^T and dS^T = P^T (dP^T - delta[query]).
#pragma unroll
    for (int j = 0; j < NQ; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int qi = j * 8 + 2 * q + (e & 1), qrow = q0 + qi, r = e / 2;
        bool ok = qrow < L && key_abs[r] < L && (!p.causal || key_abs[r] <= qrow);
        float pr = ok ? exp2f(st_[j][e] * p.scale_log2 - lse2_s[qi]) : 0.0f;
        st_[j][e] = pr;
        dpt[j][e] = pr * (dpt[j][e] - delta_s[qi]);
      }
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
    __syncthreads();  // this stage is refilled two steps later
  }
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
static size_t fwd_smem(void) { return (size_t)2 * 2 * ATTN_TILE_K * (D + ATTN_SMEM_PAD) * sizeof(bf16); }
template <int D>
static size_t dq_smem(void) {
  return (size_t)(2 * ATTN_TILE_Q + 2 * 2 * ATTN_TILE_K) * (D + ATTN_SMEM_PAD) * sizeof(bf16);
}
template <int D>
static size_t dkv_smem(void) {
  constexpr int TQ = dkv_tile<D>::TQ;
  return (size_t)2 * DKV_TILE_K * (D + ATTN_SMEM_PAD) * sizeof(bf16) +
         2 * ((size_t)2 * TQ * (D + ATTN_SMEM_PAD) * sizeof(bf16) + 2 * TQ * sizeof(float));
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

// The dK/dV kernel has few blocks (B x Hkv x key tiles) of very uneven causal work; the dQ kernel
// runs beside it on a side stream, forked from and joined back to SN_STREAM with events, so its
// blocks fill the SMs the dK/dV tail leaves idle. They write disjoint parts of dqkv: still
// deterministic, and the caller still sees one stream.
static cudaStream_t side_stream;
static cudaEvent_t fork_event, join_event;

template <int D>
static void launch_backward(bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const float *lse, const float *delta,
                            const int32_t *cu, int B, int max_seqlen, attn_dims p) {
  static bool ready_dq = false, ready_dkv = false;
  allow_smem(attention_backward_dq_kernel<D>, dq_smem<D>(), &ready_dq);
  allow_smem(attention_backward_dkv_kernel<D>, dkv_smem<D>(), &ready_dkv);
  if (!side_stream) {
    cudaCheck(cudaStreamCreateWithFlags(&side_stream, cudaStreamNonBlocking));
    cudaCheck(cudaEventCreateWithFlags(&fork_event, cudaEventDisableTiming));
    cudaCheck(cudaEventCreateWithFlags(&join_event, cudaEventDisableTiming));
  }
  cudaCheck(cudaEventRecord(fork_event, SN_STREAM));  // delta and the inputs are ready
  cudaCheck(cudaStreamWaitEvent(side_stream, fork_event, 0));
  dim3 grid_kv(ceil_div_int(max_seqlen, DKV_TILE_K), B, p.Hkv);
  attention_backward_dkv_kernel<D><<<grid_kv, DKV_WARPS * WARP_SIZE, dkv_smem<D>(), side_stream>>>(
      dqkv, dout, qkv, lse, delta, cu, p);
  launchCheck();
  dim3 grid_q(ceil_div_int(max_seqlen, ATTN_TILE_Q), B, p.Hq);
  attention_backward_dq_kernel<D><<<grid_q, ATTN_THREADS, dq_smem<D>(), SN_STREAM>>>(dqkv, dout, qkv, lse, delta,
                                                                                     cu, p);
  launchCheck();
  cudaCheck(cudaEventRecord(join_event, side_stream));
  cudaCheck(cudaStreamWaitEvent(SN_STREAM, join_event, 0));
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
#define FWD(DD) launch_forward<DD>((bf16 *)out, lse, (const bf16 *)qkv, cu_seqlens, B, max_seqlen, p)
  ATTN_DISPATCH(D, FWD)
#undef FWD
}

void cuda_attention_backward(void *dqkv, const void *dout, const void *qkv, const void *out, const float *lse,
                             const int32_t *cu_seqlens, int B, int T, int max_seqlen, int Hq, int Hkv, int D,
                             int causal, float scale) {
  if (T == 0 || B == 0) return;
  attn_dims p = make_dims(T, Hq, Hkv, D, causal, scale);
  float *delta = (float *)sn_cuda_scratch(SCRATCH_ATTN_DELTA, (size_t)Hq * T * sizeof(float));
  const int warps_per_block = 8;
  attention_delta_kernel<<<ceil_div_int((size_t)T * Hq, warps_per_block), warps_per_block * WARP_SIZE, 0,
                           SN_STREAM>>>(delta, (const bf16 *)dout, (const bf16 *)out, T, Hq, D);
  launchCheck();
#define BWD(DD)                                                                                             \
  launch_backward<DD>((bf16 *)dqkv, (const bf16 *)dout, (const bf16 *)qkv, lse, delta, cu_seqlens, B, max_seqlen, \
                      p)
  ATTN_DISPATCH(D, BWD)
#undef BWD
}
