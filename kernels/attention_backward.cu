// Attention, backward direction (the overall design and the mma.sync fragment layout are in
// attention_common.cuh).
//
// Backward, deterministic (no atomics on data): delta = rowsum(dO * O) first; then one kernel per
// (key tile of 64 keys, or 128 from BWD_WIDE_MIN_SEQLEN on, sequence, kv head) that loops over the
// query tiles and the group's query heads, recomputes the probabilities once, and makes dK, dV and
// a dQ contribution from them (5 tile products). The dQ contributions of the key tiles are added
// into an fp32 accumulator in a fixed order (key tile 0 first), each key tile waiting on a counter
// its predecessor releases.
#include "attention_common.cuh"

#define DQ_POLL_NS 32  // backoff between polls of the dQ order counter
// Backward blocks of 8 warps (128 keys) from this longest sequence on, 4 warps (64 keys) below: the
// wider block halves the dQ accumulator traffic (H100: 1343 vs 1515 us at L=2048, 662 vs 722 at
// L=512 D=128) but leaves too few blocks for short sequences (201 vs 187 us at L=128, 94 vs 63 at L=32;
// again after the chunk loops were tightened: 132 vs 127 at L=128, 107 vs 49 at L=32).
#define BWD_WIDE_MIN_SEQLEN 512
#define DELTA_THREADS 256

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

template <int D, int WARPS>
static void launch_backward_warps(bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const float *lse,
                                  const float *delta, const int32_t *cu, int B, int max_seqlen, attn_dims p) {
  using F = fused_bwd_tile<D, WARPS>;
  static std::atomic<bool> ready_smem{false};
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

size_t cuda_attention_scratch_bytes(scratch_slot slot, int T, int Hq, int D) {
  switch (slot) {
    case SCRATCH_ATTN_DELTA: return (size_t)Hq * T * sizeof(float);
    case SCRATCH_ATTN_DQ_ACCUM: return (size_t)T * Hq * D * sizeof(float);
    // B * Hq * ceil(max_seqlen / TQ) counters: at most one per (token, head)
    case SCRATCH_ATTN_DQ_ORDER: return (size_t)T * Hq * sizeof(int);
    default: return 0;
  }
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
