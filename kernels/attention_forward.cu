// Attention, forward direction (the overall design and the mma.sync fragment layout are in
// attention_common.cuh).
//
// Forward: one block of 4 warps per (query tile of 64 rows, sequence, query head); each warp owns 16
// query rows, keeps Q in registers, streams K/V tiles of 64 keys through shared memory (cp.async,
// two stages: the next tile loads while this one is used; fragments via ldmatrix), and does the
// online softmax in registers (log2 domain). Saves lse (Hq, T), natural log of the scaled scores.
//
// attention_rope_forward (inference over short sequences) is the same kernel rotating Q and each K
// tile in shared memory once they land (RoPE on the fly: qkv stays unrotated, no lse): the separate
// rope pass, a launch and a read and write of q and k, disappears. The rotation is rope.cu's
// (rope_cos_sin, rope_rotate, rounded to bf16), so the result is rope + this kernel's, bit for bit.
// It replaced a scalar kernel (a warp a query row, no tensor cores) that took 17.3 us under ncu for
// a 32-token 0.5B query where rope + this kernel took 4.3 + 6.4.
#include "attention_common.cuh"

// RoPE while loading (attention_rope_forward): the tokens' positions and the rotation's base.
struct rope_args {
  const int32_t *pos;
  float theta;
};

// Rotates rows [0, rows) of a tile in shared memory (row stride D + ATTN_SMEM_PAD) to the positions
// pos[0 .. rows) as rope() rotates them in memory; inv_freq (D/2) is rope_inv_freq's table. A thread
// takes two adjacent pairs a step (a 32-bit word of each half).
template <int D, int THREADS>
__device__ __forceinline__ void rope_tile(bf16 *tile, int rows, const int32_t *pos, const float *inv_freq) {
  constexpr int HALF = D / 2, WORDS = HALF / 2, LD = D + ATTN_SMEM_PAD;
  static_assert(HALF % 2 == 0, "pairs are rotated two at a time");
  for (int e = threadIdx.x; e < rows * WORDS; e += THREADS) {
    const int r = e / WORDS, i = (e % WORDS) * 2;
    uint32_t *w1 = reinterpret_cast<uint32_t *>(tile + r * LD + i);
    uint32_t *w2 = reinterpret_cast<uint32_t *>(tile + r * LD + i + HALF);
    const float p = (float)pos[r];
    float c0, s0, c1, s1, lo1, lo2, hi1, hi2;
    sincosf(p * inv_freq[i], &s0, &c0);
    sincosf(p * inv_freq[i + 1], &s1, &c1);
    rope_rotate(bf16_lo(*w1), bf16_lo(*w2), c0, s0, &lo1, &lo2);
    rope_rotate(bf16_hi(*w1), bf16_hi(*w2), c1, s1, &hi1, &hi2);
    *w1 = pack_bf16x2(lo1, hi1);
    *w2 = pack_bf16x2(lo2, hi2);
  }
}

// K/V tiles of one sequence through NSTAGES shared-memory stages: starts the asynchronous copy of
// tile it + NSTAGES - 1 (into the stage tile it - 1 used, free since the previous iteration's closing
// barrier), waits until tile it is in shared memory, and returns its K (its V follows at
// + ATTN_TILE_K * LD). Tiles 0 .. NSTAGES - 2 were issued before the loop. One commit group per
// tile, empty past the last, so the wait count is the same every iteration.
template <int D, int LD, int STAGE, int THREADS, int NSTAGES>
__device__ __forceinline__ bf16 *kv_tile_ready(bf16 *stages, int it, int ntiles, const bf16 *k_base,
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
// way to registers. ROPE: q and k are rotated by rope's angles as they arrive (rope's table of
// D/2 inverse frequencies after the stages), and no lse is written.
template <int D, int WARPS, bool ROPE>
__global__ void __launch_bounds__(WARPS * WARP_SIZE, fwd_min_blocks<D>::N)
    attention_forward_kernel(bf16 *out, float *lse, const bf16 *qkv, const int32_t *cu_seqlens, attn_dims p,
                             rope_args rope) {
  constexpr int LD = D + ATTN_SMEM_PAD;
  constexpr int NK = ATTN_TILE_K / 8;  // n-tiles of scores per warp
  constexpr int ND = D / 8;            // n-tiles of the output
  constexpr int STAGE = 2 * ATTN_TILE_K * LD;  // K then V of one stage
  constexpr int NSTAGES = ATTN_FWD_STAGES;
  constexpr int TILE_Q = WARPS * ATTN_ROWS_PER_WARP;
  static_assert(TILE_Q <= 2 * ATTN_TILE_K, "the Q tile passes through one stage (K and V buffers)");
  constexpr int THREADS = WARPS * WARP_SIZE;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16 *stages = reinterpret_cast<bf16 *>(smem_raw);
  float *inv_freq = reinterpret_cast<float *>(stages + NSTAGES * STAGE);  // (D/2), ROPE only
  if constexpr (ROPE)  // nothing before this kernel writes it: overlaps the previous kernel's tail
    for (int i = threadIdx.x; i < D / 2; i += THREADS) inv_freq[i] = rope_inv_freq(i, D, rope.theta);
  pdl_wait();  // qkv comes from the kernels before

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
  if constexpr (ROPE) {
    rope_tile<D, THREADS>(q_stage, min(TILE_Q, L - q0), rope.pos + seq_start + q0, inv_freq);
    __syncthreads();
  }
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
    bf16 *Ks = kv_tile_ready<D, LD, STAGE, THREADS, NSTAGES>(stages, it, ntiles, k_base, v_base, stride, L);
    const bf16 *Vs = Ks + ATTN_TILE_K * LD;
    if constexpr (ROPE) {
      rope_tile<D, THREADS>(Ks, min(ATTN_TILE_K, L - k0), rope.pos + seq_start + k0, inv_freq);
      __syncthreads();
    }

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
    if (!ROPE && q == 0) lse[(size_t)h * p.T + seq_start + row_abs[r]] = (m_run[r] + log2f(l_run[r])) * LN2;
  }
}

// ---- launchers ---------------------------------------------------------------------------------------------
// Forward warps per block (16 query rows each). 8 warps (128 rows sharing each K/V tile) measured
// slower at every benchmark shape (e.g. 245 vs 224 us at L=512 D=128, 28.5 vs 17.0 us at L=32).
// Fewer for short sequences did not pay either (H100, 2026-12-06, docs/gpu_notes.md): blocks of one
// or two warps with one K/V stage when every sequence has at most 16 or 32 tokens took 64 queries
// of 32 tokens from 12.8 to 10.4 us but one query from 6.7 to 7.3, and the encoder end to end no
// faster (0.5B batch 1 0.957 against 0.948 ms, batch 64 3.25 against 3.27, student batch 64 0.328
// against 0.318).
#define ATTN_FWD_WARPS 4
template <int D, bool ROPE>
static size_t fwd_smem(void) {
  return (size_t)ATTN_FWD_STAGES * 2 * ATTN_TILE_K * (D + ATTN_SMEM_PAD) * sizeof(bf16) +
         (ROPE ? (size_t)(D / 2) * sizeof(float) : 0);
}

template <int D, bool ROPE>
static void launch_forward(bf16 *out, float *lse, const bf16 *qkv, const int32_t *cu, int B, int max_seqlen,
                           attn_dims p, rope_args rope) {
  constexpr int WARPS = ATTN_FWD_WARPS;
  static std::atomic<bool> ready{false};
  allow_smem(attention_forward_kernel<D, WARPS, ROPE>, fwd_smem<D, ROPE>(), &ready);
  dim3 grid(ceil_div_int(max_seqlen, WARPS * ATTN_ROWS_PER_WARP), B, p.Hq);
  launch_pdl(attention_forward_kernel<D, WARPS, ROPE>, grid, dim3(WARPS * WARP_SIZE), fwd_smem<D, ROPE>(), out, lse,
             qkv, cu, p, rope);
  launchCheck();
}

void cuda_attention_forward(void *out, float *lse, const void *qkv, const int32_t *cu_seqlens, int B, int T,
                            int max_seqlen, int Hq, int Hkv, int D, int causal, float scale) {
  if (T == 0 || B == 0) return;
  attn_dims p = make_dims(T, Hq, Hkv, D, causal, scale);
  const void *buffers[] = {out, qkv};
  check_aligned(buffers, 2);
  const rope_args none = {NULL, 0.0f};
#define FWD(DD) launch_forward<DD, false>((bf16 *)out, lse, (const bf16 *)qkv, cu_seqlens, B, max_seqlen, p, none)
  ATTN_DISPATCH(D, FWD)
#undef FWD
}

void cuda_attention_rope_forward(void *out, const void *qkv, const int32_t *pos, const int32_t *cu_seqlens, int B,
                                 int T, int max_seqlen, int Hq, int Hkv, int D, float theta, int causal, float scale) {
  if (T == 0 || B == 0) return;
  if (max_seqlen < 1 || max_seqlen > SN_ATTENTION_SHORT_MAX_SEQLEN) {
    fprintf(stderr, "error: %s:%d: attention_rope_forward: max_seqlen=%d (need 1 .. %d)\n", __FILE__, __LINE__,
            max_seqlen, SN_ATTENTION_SHORT_MAX_SEQLEN);
    exit(1);
  }
  attn_dims p = make_dims(T, Hq, Hkv, D, causal, scale);
  const void *buffers[] = {out, qkv};
  check_aligned(buffers, 2);
  const rope_args rope = {pos, theta};
#define FWD(DD) launch_forward<DD, true>((bf16 *)out, NULL, (const bf16 *)qkv, cu_seqlens, B, max_seqlen, p, rope)
  ATTN_DISPATCH(D, FWD)
#undef FWD
}
