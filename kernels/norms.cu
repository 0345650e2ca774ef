// RMSNorm (Qwen2) and LayerNorm (BERT), forward and backward, and the forward passes fused with the
// residual add. Forward: one warp per row (T rows of C), fp32 statistics, the row re-read from L1
// between passes instead of held in registers (C varies). Backward (fused, 16-byte packs): a row is
// spread over a group of threads, one pack each, so a thread owns the same 8 columns in every row it
// sees and adds dout * xhat (and dout) for them in registers; a block holds a few such groups and a
// fixed range of rows, combines its groups' column sums once at the end (in group order) into
// per-block partials, and a second kernel adds the partials into dweight/dbias in a fixed order:
// deterministic, no atomics, x and dout read from DRAM once. Unpacked shapes, or C too wide for one
// pack a thread, take a two-kernel path (dx, then the column sums re-reading x and dout).
#include "common.cuh"

#define NORM_WARPS 8                      // rows in flight per block (forward, and dx in backward)
#define NORM_THREADS (NORM_WARPS * WARP_SIZE)
#define NORM_BWD_ROWS_PER_BLOCK 64        // two-kernel path: rows whose column sums one block adds
// Cached forward: the weight's packs ride with the row's up to this many packs a lane (C <= 2048);
// past it (C = 3584: 14 packs) they would spill (380 bytes a thread for LayerNorm at -O3, sm_90).
#define NORM_EARLY_WEIGHT_PACKS 8
// Fused backward geometry, a function of C alone (so the summation order does not depend on the
// device): a row over row_threads = C / 8 threads rounded up to whole warps (one 16-byte pack each),
// max(1, NORM_BWD_BLOCK_THREADS / row_threads) row groups per block, NORM_BWD_FUSED_ROWS rows per
// block. 64 rows: T = 16384 gives 256 blocks, which fit an H100 in one wave at 2 blocks an SM, and
// the partials (nblocks, C) are 1/48 of the traffic (1/24 with LayerNorm's bias).
#define NORM_BWD_BLOCK_THREADS 512        // threads per block the row groups fill
#define NORM_BWD_MAX_THREADS 1024         // a row over at most this many threads: fused path for C <= 8192
#define NORM_BWD_MAX_WARPS (NORM_BWD_MAX_THREADS / WARP_SIZE)
#define NORM_BWD_FUSED_ROWS 64
#define NORM_BWD_SMEM_DEFAULT (48 * 1024) // dynamic shared memory usable without an opt-in attribute
// Fused backward ring depth: rows a thread's copies run ahead + 1. 4 stages at 512 threads is 64 KB
// a block, two blocks an SM (T = 16384: 256 blocks, one wave) in 128 KB of the 228 KB.
#define NORM_BWD_STAGES 4
static int fused_row_threads(int C) { return ceil_div_int(C / BF16_PER_PACK, WARP_SIZE) * WARP_SIZE; }
static int fused_row_groups(int C) {
  const int groups = NORM_BWD_BLOCK_THREADS / fused_row_threads(C);
  return groups > 1 ? groups : 1;
}

// ---- VEC-wide row access: VEC = 8 (16-byte packs, C % 8 == 0 and aligned) or 1 (anything) -------
template <int VEC>
__device__ __forceinline__ void load_vec(const bf16 *p, float *out) {
  if constexpr (VEC == BF16_PER_PACK) {
    bf16x8 v = load_bf16x8(p);
#pragma unroll
    for (int k = 0; k < VEC; k++) out[k] = bf2f(v.v[k]);
  } else {
    out[0] = bf2f(*p);
  }
}
template <int VEC>
__device__ __forceinline__ void store_vec(bf16 *p, const float *in) {
  if constexpr (VEC == BF16_PER_PACK) {
    bf16x8 v;
#pragma unroll
    for (int k = 0; k < VEC; k++) v.v[k] = f2bf(in[k]);
    store_bf16x8(p, v);
  } else {
    *p = f2bf(in[0]);
  }
}
// Rounds to storage precision: a fused residual is normalized as it is stored (bf16), so that
// forward and backward see the same x.
__device__ __forceinline__ float round_bf16(float x) { return bf2f(f2bf(x)); }

// ---- forward ---------------------------------------------------------------------------------------
// IS_LAYERNORM: out = (x - mean) * rstd * w + b, else out = x * rstd * w.
// a (T, C) is x; when b_in is non-NULL, x = a + b_in is computed and stored to residual_out first.
template <int VEC, bool IS_LAYERNORM>
__global__ void __launch_bounds__(NORM_THREADS) norm_forward_kernel(
    bf16 *out, bf16 *residual_out, float *mean_out, float *rstd_out, const bf16 *a, const bf16 *b_in,
    const bf16 *weight, const bf16 *bias, int T, int C, float eps) {
  pdl_wait();  // a and b_in come from the kernels before
  const int lane = threadIdx.x % WARP_SIZE;
  const int t = blockIdx.x * NORM_WARPS + threadIdx.x / WARP_SIZE;
  if (t >= T) return;
  const bf16 *x = a + (size_t)t * C;
  float v[VEC], w[VEC];
  float sum = 0.0f;
  if (b_in) {
    // Pass 0: residual = a + b, stored, and its sum for the mean.
    const bf16 *y = b_in + (size_t)t * C;
    bf16 *r = residual_out + (size_t)t * C;
    for (int c = lane * VEC; c < C; c += WARP_SIZE * VEC) {
      load_vec<VEC>(x + c, v);
      load_vec<VEC>(y + c, w);
#pragma unroll
      for (int k = 0; k < VEC; k++) {
        v[k] = round_bf16(v[k] + w[k]);
        sum += IS_LAYERNORM ? v[k] : v[k] * v[k];
      }
      store_vec<VEC>(r + c, v);
    }
    __syncwarp();  // this warp's residual stores are visible to its re-reads below
    x = r;
  } else {
    for (int c = lane * VEC; c < C; c += WARP_SIZE * VEC) {
      load_vec<VEC>(x + c, v);
#pragma unroll
      for (int k = 0; k < VEC; k++) sum += IS_LAYERNORM ? v[k] : v[k] * v[k];
    }
  }
  sum = warp_sum(sum);
  float mean = 0.0f, rstd;
  if (IS_LAYERNORM) {
    mean = sum / C;
    float var = 0.0f;  // second pass about the mean: no cancellation
    for (int c = lane * VEC; c < C; c += WARP_SIZE * VEC) {
      load_vec<VEC>(x + c, v);
#pragma unroll
      for (int k = 0; k < VEC; k++) var += (v[k] - mean) * (v[k] - mean);
    }
    var = warp_sum(var) / C;
    rstd = rsqrtf(var + eps);
  } else {
    rstd = rsqrtf(sum / C + eps);
  }
  bf16 *o = out + (size_t)t * C;
  for (int c = lane * VEC; c < C; c += WARP_SIZE * VEC) {
    load_vec<VEC>(x + c, v);
    load_vec<VEC>(weight + c, w);
    float bb[VEC];
    if (IS_LAYERNORM) load_vec<VEC>(bias + c, bb);
#pragma unroll
    for (int k = 0; k < VEC; k++) v[k] = (v[k] - mean) * rstd * w[k] + (IS_LAYERNORM ? bb[k] : 0.0f);
    store_vec<VEC>(o + c, v);
  }
  if (lane == 0) {
    rstd_out[t] = rstd;
    if (IS_LAYERNORM) mean_out[t] = mean;
  }
}

// Packed forward with the row kept in registers (C <= MAXP * 256): x is read from DRAM once and the
// statistics passes run on registers, so nothing depends on L1 holding the row.
template <int MAXP, bool IS_LAYERNORM>
__global__ void __launch_bounds__(NORM_THREADS) norm_forward_cached_kernel(
    bf16 *out, bf16 *residual_out, float *mean_out, float *rstd_out, const bf16 *a, const bf16 *b_in,
    const bf16 *weight, const bf16 *bias, int T, int C, float eps) {
  constexpr int STEP = WARP_SIZE * BF16_PER_PACK;
  pdl_wait();  // a and b_in come from the kernels before
  const int lane = threadIdx.x % WARP_SIZE;
  const int t = blockIdx.x * NORM_WARPS + threadIdx.x / WARP_SIZE;
  if (t >= T) return;
  const size_t row = (size_t)t * C;
  // The row, and (up to NORM_EARLY_WEIGHT_PACKS) the weight and bias loaded beside it: one round trip
  // to memory before the statistics instead of two.
  constexpr bool EARLY = MAXP <= NORM_EARLY_WEIGHT_PACKS;
  bf16x8 xc[MAXP], wc[EARLY ? MAXP : 1], bc[EARLY ? MAXP : 1];
  float sum = 0.0f;
#pragma unroll
  for (int p = 0; p < MAXP; p++) {
    int c = p * STEP + lane * BF16_PER_PACK;
    if (c < C) {
      if constexpr (EARLY) {
        wc[p] = load_bf16x8(weight + c);
        if (IS_LAYERNORM) bc[p] = load_bf16x8(bias + c);
      }
      bf16x8 v = load_bf16x8(a + row + c);
      if (b_in) {  // fused residual: x = a + b, stored as it is normalized (bf16)
        bf16x8 y = load_bf16x8(b_in + row + c);
#pragma unroll
        for (int k = 0; k < BF16_PER_PACK; k++) v.v[k] = f2bf(bf2f(v.v[k]) + bf2f(y.v[k]));
        store_bf16x8(residual_out + row + c, v);
      }
      xc[p] = v;
#pragma unroll
      for (int k = 0; k < BF16_PER_PACK; k++) {
        float f = bf2f(v.v[k]);
        sum += IS_LAYERNORM ? f : f * f;
      }
    }
  }
  sum = warp_sum(sum);
  float mean = 0.0f, rstd;
  if (IS_LAYERNORM) {
    mean = sum / C;
    float var = 0.0f;
#pragma unroll
    for (int p = 0; p < MAXP; p++) {
      int c = p * STEP + lane * BF16_PER_PACK;
      if (c < C)
#pragma unroll
        for (int k = 0; k < BF16_PER_PACK; k++) var += (bf2f(xc[p].v[k]) - mean) * (bf2f(xc[p].v[k]) - mean);
    }
    rstd = rsqrtf(warp_sum(var) / C + eps);
  } else {
    rstd = rsqrtf(sum / C + eps);
  }
#pragma unroll
  for (int p = 0; p < MAXP; p++) {
    int c = p * STEP + lane * BF16_PER_PACK;
    if (c < C) {
      bf16x8 w, bb, o;
      if constexpr (EARLY) w = wc[p], bb = bc[p];
      else w = load_bf16x8(weight + c), bb = IS_LAYERNORM ? load_bf16x8(bias + c) : w;
#pragma unroll
      for (int k = 0; k < BF16_PER_PACK; k++)
        o.v[k] = f2bf((bf2f(xc[p].v[k]) - mean) * rstd * bf2f(w.v[k]) + (IS_LAYERNORM ? bf2f(bb.v[k]) : 0.0f));
      store_bf16x8(out + row + c, o);
    }
  }
  if (lane == 0) {
    rstd_out[t] = rstd;
    if (IS_LAYERNORM) mean_out[t] = mean;
  }
}

// Register-cache sizes (16-byte packs per lane) built: C up to 1024, 2048, 3584 (Qwen2.5-7B).
#define NORM_CACHE_SMALL 4
#define NORM_CACHE_MEDIUM 8
#define NORM_CACHE_LARGE 14
static int norm_cache_packs(int C) {
  const int per_pack_step = WARP_SIZE * BF16_PER_PACK;
  if (C <= NORM_CACHE_SMALL * per_pack_step) return NORM_CACHE_SMALL;
  if (C <= NORM_CACHE_MEDIUM * per_pack_step) return NORM_CACHE_MEDIUM;
  if (C <= NORM_CACHE_LARGE * per_pack_step) return NORM_CACHE_LARGE;
  return 0;
}

template <bool IS_LAYERNORM>
static void launch_norm_forward(bf16 *out, bf16 *residual_out, float *mean, float *rstd, const bf16 *a,
                                const bf16 *b, const bf16 *weight, const bf16 *bias, int T, int C, float eps) {
  if (T == 0) return;
  bool packed = C % BF16_PER_PACK == 0 && aligned16(out) && aligned16(a) && aligned16(weight) &&
                (!b || (aligned16(b) && aligned16(residual_out))) && (!bias || aligned16(bias));
  int grid = ceil_div_int(T, NORM_WARPS);
  const int cache = packed ? norm_cache_packs(C) : 0;
#define CACHED_FWD(P)                                                                                    \
  launch_pdl(norm_forward_cached_kernel<P, IS_LAYERNORM>, dim3(grid), dim3(NORM_THREADS), 0, out, residual_out, mean, \
             rstd, a, b, weight, bias, T, C, eps)
  if (cache == NORM_CACHE_SMALL) CACHED_FWD(NORM_CACHE_SMALL);
  else if (cache == NORM_CACHE_MEDIUM) CACHED_FWD(NORM_CACHE_MEDIUM);
  else if (cache == NORM_CACHE_LARGE) CACHED_FWD(NORM_CACHE_LARGE);
#undef CACHED_FWD
  else if (packed)
    launch_pdl(norm_forward_kernel<BF16_PER_PACK, IS_LAYERNORM>, dim3(grid), dim3(NORM_THREADS), 0, out, residual_out,
               mean, rstd, a, b, weight, bias, T, C, eps);
  else
    launch_pdl(norm_forward_kernel<1, IS_LAYERNORM>, dim3(grid), dim3(NORM_THREADS), 0, out, residual_out, mean, rstd,
               a, b, weight, bias, T, C, eps);
  launchCheck();
}

void cuda_rmsnorm_forward(void *out, float *rstd, const void *x, const void *weight, int T, int C, float eps) {
  launch_norm_forward<false>((bf16 *)out, NULL, NULL, rstd, (const bf16 *)x, NULL, (const bf16 *)weight, NULL,
                             T, C, eps);
}
void cuda_add_rmsnorm_forward(void *residual_out, void *out, float *rstd, const void *a, const void *b,
                              const void *weight, int T, int C, float eps) {
  launch_norm_forward<false>((bf16 *)out, (bf16 *)residual_out, NULL, rstd, (const bf16 *)a, (const bf16 *)b,
                             (const bf16 *)weight, NULL, T, C, eps);
}
void cuda_layernorm_forward(void *out, float *mean, float *rstd, const void *x, const void *weight,
                            const void *bias, int T, int C, float eps) {
  launch_norm_forward<true>((bf16 *)out, NULL, mean, rstd, (const bf16 *)x, NULL, (const bf16 *)weight,
                            (const bf16 *)bias, T, C, eps);
}
void cuda_add_layernorm_forward(void *residual_out, void *out, float *mean, float *rstd, const void *a,
                                const void *b, const void *weight, const void *bias, int T, int C, float eps) {
  launch_norm_forward<true>((bf16 *)out, (bf16 *)residual_out, mean, rstd, (const bf16 *)a, (const bf16 *)b,
                            (const bf16 *)weight, (const bf16 *)bias, T, C, eps);
}

// ---- backward: dx ------------------------------------------------------------------------------------
// xhat = (x - mean) * rstd (mean = 0 for RMSNorm), g = dout * w.
// RMSNorm:   dx = rstd * (g - xhat * mean(g * xhat))
// LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
template <int VEC, bool IS_LAYERNORM>
__global__ void __launch_bounds__(NORM_THREADS) norm_backward_dx_kernel(
    bf16 *dx, const bf16 *dout, const bf16 *x, const bf16 *weight, const float *mean_in, const float *rstd_in,
    int T, int C, int accumulate) {
  const int lane = threadIdx.x % WARP_SIZE;
  const int t = blockIdx.x * NORM_WARPS + threadIdx.x / WARP_SIZE;
  if (t >= T) return;
  const bf16 *xr = x + (size_t)t * C, *dr = dout + (size_t)t * C;
  const float mean = IS_LAYERNORM ? mean_in[t] : 0.0f, rstd = rstd_in[t];
  float xv[VEC], dv[VEC], wv[VEC];
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (int c = lane * VEC; c < C; c += WARP_SIZE * VEC) {
    load_vec<VEC>(xr + c, xv);
    load_vec<VEC>(dr + c, dv);
    load_vec<VEC>(weight + c, wv);
#pragma unroll
    for (int k = 0; k < VEC; k++) {
      float g = dv[k] * wv[k];
      sum_g += g;
      sum_gx += g * (xv[k] - mean) * rstd;
    }
  }
  const float mean_g = IS_LAYERNORM ? warp_sum(sum_g) / C : 0.0f;
  const float mean_gx = warp_sum(sum_gx) / C;
  bf16 *o = dx + (size_t)t * C;
  for (int c = lane * VEC; c < C; c += WARP_SIZE * VEC) {
    load_vec<VEC>(xr + c, xv);
    load_vec<VEC>(dr + c, dv);
    load_vec<VEC>(weight + c, wv);
    float prev[VEC];
    if (accumulate) load_vec<VEC>(o + c, prev);
#pragma unroll
    for (int k = 0; k < VEC; k++) {
      float xhat = (xv[k] - mean) * rstd;
      xv[k] = rstd * (dv[k] * wv[k] - mean_g - xhat * mean_gx) + (accumulate ? prev[k] : 0.0f);
    }
    store_vec<VEC>(o + c, xv);
  }
}

// ---- backward: weight (and bias) gradient partials ---------------------------------------------------
// partials (nblocks, C) for dweight = sum_t dout * xhat; partials_bias likewise for dbias = sum_t dout.
// Each thread owns columns and sums the block's rows in order.
template <bool IS_LAYERNORM>
__global__ void norm_backward_dweight_kernel(float *partials_w, float *partials_b, const bf16 *dout,
                                             const bf16 *x, const float *mean_in, const float *rstd_in, int T,
                                             int C) {
  const int t0 = blockIdx.y * NORM_BWD_ROWS_PER_BLOCK;
  const int t1 = min(T, t0 + NORM_BWD_ROWS_PER_BLOCK);
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc_w = 0.0f, acc_b = 0.0f;
  for (int t = t0; t < t1; t++) {
    float d = bf2f(dout[(size_t)t * C + c]);
    float xhat = (bf2f(x[(size_t)t * C + c]) - (IS_LAYERNORM ? mean_in[t] : 0.0f)) * rstd_in[t];
    acc_w += d * xhat;
    acc_b += d;
  }
  partials_w[(size_t)blockIdx.y * C + c] = acc_w;
  if (IS_LAYERNORM) partials_b[(size_t)blockIdx.y * C + c] = acc_b;
}

// ---- backward: fused dx + column sums (16-byte packs, C <= 8192) ---------------------------------------
// Packs stay four 32-bit words (bf16 pairs): as bf16x8 the compiler splits them into eight 16-bit
// values of one register each.
__device__ __forceinline__ uint4 load_pack(const bf16 *p) { return *reinterpret_cast<const uint4 *>(p); }
// The 8 floats of a pack (exact: a bf16 is the top half of an fp32; element 2j is word j's low half).
__device__ __forceinline__ void unpack8(uint4 u, float *f) {
  const uint32_t w[F32_PER_PACK] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int j = 0; j < F32_PER_PACK; j++) f[2 * j] = bf16_lo(w[j]), f[2 * j + 1] = bf16_hi(w[j]);
}
// Rounds 8 floats to a pack (round to nearest even, as f2bf).
__device__ __forceinline__ uint4 pack8(const float *f) {
  uint32_t w[F32_PER_PACK];
#pragma unroll
  for (int j = 0; j < F32_PER_PACK; j++) w[j] = pack_bf16x2(f[2 * j], f[2 * j + 1]);
  return make_uint4(w[0], w[1], w[2], w[3]);
}
// One thread's pack of one row: x and dout at its 8 columns.
struct bwd_row {
  uint4 x, d;
};
// The column sums of one thread (8 columns) as two 16-byte stores.
__device__ __forceinline__ void store_col_sums(float *p, const float *acc) {
  store_f32x4(p, f32x4{{acc[0], acc[1], acc[2], acc[3]}});
  store_f32x4(p + F32_PER_PACK, f32x4{{acc[4], acc[5], acc[6], acc[7]}});
}
__device__ __forceinline__ void add_col_sums(float *acc, const float *p) {
  f32x4 lo = load_f32x4(p), hi = load_f32x4(p + F32_PER_PACK);
#pragma unroll
  for (int e = 0; e < F32_PER_PACK; e++) acc[e] += lo.v[e], acc[F32_PER_PACK + e] += hi.v[e];
}

// Block: `groups` row groups of row_threads threads (blockDim.x = groups * row_threads, a function of
// C). Thread i of group g owns columns c = 8i .. 8i + 7 (idle when c >= C) and handles rows t0 + g,
// t0 + g + groups, ... of the block's rows [t0, t1), one per step, all groups in step. Per step: the
// row sums (thread -> warp shuffle -> the group's warps through shared memory, one barrier), dx, and
// the column sums dout * xhat (and dout) added in registers. The rows stream through a ring of
// NORM_BWD_STAGES slots of shared memory ([stage][x, dout][thread] packs): a step first issues the
// copies of the row NORM_BWD_STAGES - 1 steps ahead into the slot the previous step consumed, so
// NORM_BWD_STAGES - 1 rows a group are in flight across each step's reductions and barrier (three
// times the bytes of a two-row register pipeline, at no register cost). The block's mean/rstd sit
// in shared memory, not in registers held across steps.
// At the end group 0 adds the other groups' column sums in group order (in the ring's memory, free
// by then) and writes the block's partials: partials_w/_b (nblocks, C). The summation order depends
// on C alone, not on the ring.
template <bool IS_LAYERNORM, bool ACCUMULATE>
__global__ void __launch_bounds__(NORM_BWD_MAX_THREADS) norm_backward_fused_kernel(
    bf16 *dx, float *partials_w, float *partials_b, const bf16 *dout, const bf16 *x, const bf16 *weight,
    const float *mean_in, const float *rstd_in, int T, int C, int row_threads) {
  constexpr int VEC = BF16_PER_PACK, ROWS = NORM_BWD_FUSED_ROWS, STAGES = NORM_BWD_STAGES;
  constexpr int SUM_GX = 0, SUM_G = 1;                 // the row sums of g * xhat and g (g = dout * w)
  constexpr int RING_X = 0, RING_D = 1, RING_ARRAYS = 2;
  __shared__ float row_red[2][2][NORM_BWD_MAX_WARPS];  // [step parity][SUM_GX, SUM_G][warp]
  __shared__ float row_mean[ROWS], row_rstd[ROWS];     // the block's rows' statistics
  extern __shared__ __align__(16) uint4 ring[];        // [STAGES][RING_X, RING_D][blockDim] packs
  float *group_sums = (float *)ring;                   // at the end: [groups - 1][C] w, then [groups - 1][C] b
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int groups = blockDim.x / row_threads, row_warps = row_threads / WARP_SIZE;
  const int g = threadIdx.x / row_threads, c = (threadIdx.x % row_threads) * VEC;
  const bool active = c < C;  // C / 8 not a multiple of 32: the group's last warp is partly idle
  const int t0 = blockIdx.x * ROWS, t1 = min(T, t0 + ROWS);
  const int nsteps = (t1 - t0 + groups - 1) / groups;  // the same for every thread: barriers match
  const float inv_C = 1.0f / C;                         // once, not an IEEE division per row
  uint4 *my_slot = ring + threadIdx.x;                  // stage s: my_slot[(s * RING_ARRAYS + array) * blockDim]
  const int stage_stride = RING_ARRAYS * blockDim.x;

  // Element offsets walked by adding: (t, c) for this step, (t + (STAGES - 1) groups, c) ahead.
  const size_t step_elems = (size_t)groups * C;
  int t = t0 + g;  // this group's row in the current step
  size_t off = (size_t)t * C + c;
  // The ring's first STAGES - 1 rows; a group is committed per row even when empty, so that the
  // count of groups newer than row s is always STAGES - 1 at step s.
#pragma unroll
  for (int st = 0; st < STAGES - 1; st++) {
    if (active && t + st * groups < t1) {
      cp_async16(my_slot + st * stage_stride + RING_X * blockDim.x, x + off + st * step_elems);
      cp_async16(my_slot + st * stage_stride + RING_D * blockDim.x, dout + off + st * step_elems);
    }
    cp_async_commit();
  }
  uint4 w8 = make_uint4(0, 0, 0, 0);
  if (active) w8 = load_pack(weight + c);
  for (int i = threadIdx.x; i < t1 - t0; i += blockDim.x) {
    row_rstd[i] = rstd_in[t0 + i];
    if (IS_LAYERNORM) row_mean[i] = mean_in[t0 + i];
  }
  __syncthreads();
  float acc_w[VEC], acc_b[VEC];
#pragma unroll
  for (int k = 0; k < VEC; k++) acc_w[k] = 0.0f, acc_b[k] = 0.0f;

  int stage = 0, ahead_stage = STAGES - 1;  // ring slots of this step's row and of the row issued now
  for (int s = 0; s < nsteps; s++) {
    const int b = s % 2;  // row_red parity
    const bool valid = active && t < t1;
    // The slot ahead_stage was read into registers by the previous step (whose dx depends on it):
    // the refill cannot overtake those reads.
    if (active && t + (STAGES - 1) * groups < t1) {
      const size_t ahead = off + (STAGES - 1) * step_elems;
      cp_async16(my_slot + ahead_stage * stage_stride + RING_X * blockDim.x, x + ahead);
      cp_async16(my_slot + ahead_stage * stage_stride + RING_D * blockDim.x, dout + ahead);
    }
    cp_async_commit();
    uint4 prev = make_uint4(0, 0, 0, 0);
    if (ACCUMULATE && valid) prev = load_pack(dx + off);  // issued now, used after the barrier
    cp_async_wait<STAGES - 1>();                      // this step's row (this thread's copies) landed
    bwd_row cur;
    cur.x = my_slot[stage * stage_stride + RING_X * blockDim.x];
    cur.d = my_slot[stage * stage_stride + RING_D * blockDim.x];
    float sum_gx = 0.0f, sum_g = 0.0f;
    if (valid) {
      const float mean = IS_LAYERNORM ? row_mean[t - t0] : 0.0f, rstd = row_rstd[t - t0];
      float xf[VEC], df[VEC], wf[VEC];
      unpack8(cur.x, xf), unpack8(cur.d, df), unpack8(w8, wf);
#pragma unroll
      for (int k = 0; k < VEC; k++) {
        float gk = df[k] * wf[k];
        sum_g += gk;
        sum_gx += gk * (xf[k] - mean) * rstd;
      }
    }
    sum_gx = warp_sum(sum_gx);
    if (IS_LAYERNORM) sum_g = warp_sum(sum_g);
    if (row_warps > 1) {  // the group's warps through shared memory; parity b lets one barrier do
      if (lane == 0) {
        row_red[b][SUM_GX][warp] = sum_gx;
        if (IS_LAYERNORM) row_red[b][SUM_G][warp] = sum_g;
      }
      __syncthreads();
      const int first = g * row_warps;  // every warp of the group adds the same values in the same order
      sum_gx = warp_sum(lane < row_warps ? row_red[b][SUM_GX][first + lane] : 0.0f);
      if (IS_LAYERNORM) sum_g = warp_sum(lane < row_warps ? row_red[b][SUM_G][first + lane] : 0.0f);
    }
    if (valid) {
      const float mean = IS_LAYERNORM ? row_mean[t - t0] : 0.0f, rstd = row_rstd[t - t0];
      const float mean_g = IS_LAYERNORM ? sum_g * inv_C : 0.0f, mean_gx = sum_gx * inv_C;
      float xf[VEC], df[VEC], wf[VEC], pf[VEC], out[VEC];
      unpack8(cur.x, xf), unpack8(cur.d, df), unpack8(w8, wf), unpack8(prev, pf);
#pragma unroll
      for (int k = 0; k < VEC; k++) {
        float xhat = (xf[k] - mean) * rstd;
        acc_w[k] += df[k] * xhat;
        if (IS_LAYERNORM) acc_b[k] += df[k];
        float v = rstd * (df[k] * wf[k] - mean_g - xhat * mean_gx);
        out[k] = ACCUMULATE ? v + pf[k] : v;
      }
      *reinterpret_cast<uint4 *>(dx + off) = pack8(out);
    }
    t += groups, off += step_elems;
    ahead_stage = stage;  // next step refills the slot just read
    stage = stage + 1 == STAGES ? 0 : stage + 1;
  }
  cp_async_wait<0>();  // only empty groups remain; none may write the ring once it holds group sums
  __syncthreads();          // every thread's ring reads are done before the group sums alias it

  // The groups' column sums in group order: groups 1.. park theirs in shared memory, group 0 adds.
  if (groups > 1) {
    const float *gw = group_sums, *gb = group_sums + (size_t)(groups - 1) * C;
    if (g > 0 && active) {
      store_col_sums(group_sums + (size_t)(g - 1) * C + c, acc_w);
      if (IS_LAYERNORM) store_col_sums(group_sums + (size_t)(groups - 1 + g - 1) * C + c, acc_b);
    }
    __syncthreads();
    if (g == 0 && active)
      for (int k = 0; k < groups - 1; k++) {
        add_col_sums(acc_w, gw + (size_t)k * C + c);
        if (IS_LAYERNORM) add_col_sums(acc_b, gb + (size_t)k * C + c);
      }
  }
  if (g == 0 && active) {
    store_col_sums(partials_w + (size_t)blockIdx.x * C + c, acc_w);
    if (IS_LAYERNORM) store_col_sums(partials_b + (size_t)blockIdx.x * C + c, acc_b);
  }
}

// Raises a kernel's dynamic shared memory limit to what a launch needs (once per larger size; the
// ring takes up to NORM_BWD_STAGES * 32 KB with 1024-thread blocks). Always explicit, never "only
// past 48 KB": the default limit covers static + dynamic shared memory, and the fused kernel's ~1 KB
// of static statistics made a 48 KB ring (C = 1536, Qwen2.5-1.5B) an invalid launch unless a shape with a larger ring
// (C = 896: 512 threads) had raised the limit first.
template <typename K>
static void norm_bwd_allow_smem(K kernel, size_t smem, size_t *allowed) {
  if (smem > *allowed) {
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    *allowed = smem;
  }
}
template <bool IS_LAYERNORM, bool ACCUMULATE>
static void launch_norm_backward_fused(int nparts, int threads, size_t smem, bf16 *dx, float *partials_w,
                                       float *partials_b, const bf16 *dout, const bf16 *x, const bf16 *weight,
                                       const float *mean, const float *rstd, int T, int C, int row_threads) {
  static size_t allowed = 0;  // this instantiation's limit as last set
  norm_bwd_allow_smem(norm_backward_fused_kernel<IS_LAYERNORM, ACCUMULATE>, smem, &allowed);
  norm_backward_fused_kernel<IS_LAYERNORM, ACCUMULATE><<<nparts, threads, smem, SN_STREAM>>>(
      dx, partials_w, partials_b, dout, x, weight, mean, rstd, T, C, row_threads);
  launchCheck();
}

template <bool IS_LAYERNORM>
static void launch_norm_backward(bf16 *dx, bf16 *dweight, bf16 *dbias, const bf16 *dout, const bf16 *x,
                                 const bf16 *weight, const float *mean, const float *rstd, int T, int C,
                                 int accumulate) {
  if (T == 0 || C == 0) return;
  const int nsum = IS_LAYERNORM ? 2 : 1;
  bool packed = C % BF16_PER_PACK == 0 && aligned16(dx) && aligned16(dout) && aligned16(x) && aligned16(weight);
  if (packed && C / BF16_PER_PACK <= NORM_BWD_MAX_THREADS) {
    const int row_threads = fused_row_threads(C), groups = fused_row_groups(C), threads = groups * row_threads;
    // groups > 1 only when groups * C <= 8 * NORM_BWD_BLOCK_THREADS: at most 32 KB with the bias
    const size_t group_smem = (size_t)nsum * (groups - 1) * C * sizeof(float);
    if (group_smem <= NORM_BWD_SMEM_DEFAULT) {
      // the ring (x and dout packs of every thread, NORM_BWD_STAGES rows) holds the group sums at the end
      const size_t ring_smem = (size_t)NORM_BWD_STAGES * 2 * threads * sizeof(uint4);
      const size_t smem = ring_smem > group_smem ? ring_smem : group_smem;
      const int nparts = ceil_div_int(T, NORM_BWD_FUSED_ROWS);
      const size_t part_floats = (size_t)nparts * C;
      float *partials = (float *)sn_cuda_scratch(SCRATCH_REDUCE_PARTIALS, part_floats * sizeof(float) * nsum);
      if (accumulate)
        launch_norm_backward_fused<IS_LAYERNORM, true>(nparts, threads, smem, dx, partials, partials + part_floats,
                                                       dout, x, weight, mean, rstd, T, C, row_threads);
      else
        launch_norm_backward_fused<IS_LAYERNORM, false>(nparts, threads, smem, dx, partials,
                                                        partials + part_floats, dout, x, weight, mean, rstd, T,
                                                        C, row_threads);
      // a frozen weight (LoRA) has no gradient: the partials are left unread
      if (dweight) sn_cuda_reduce_partials2_into_bf16(dweight, IS_LAYERNORM ? dbias : NULL, partials, nparts, C);
      return;
    }
  }
  int grid = ceil_div_int(T, NORM_WARPS);
  if (packed)
    norm_backward_dx_kernel<BF16_PER_PACK, IS_LAYERNORM><<<grid, NORM_THREADS, 0, SN_STREAM>>>(
        dx, dout, x, weight, mean, rstd, T, C, accumulate);
  else
    norm_backward_dx_kernel<1, IS_LAYERNORM><<<grid, NORM_THREADS, 0, SN_STREAM>>>(dx, dout, x, weight, mean,
                                                                                  rstd, T, C, accumulate);
  launchCheck();
  if (!dweight) return;  // a frozen weight (LoRA): dx only

  const int nparts = ceil_div_int(T, NORM_BWD_ROWS_PER_BLOCK);
  const size_t part_floats = (size_t)nparts * C;
  float *partials = (float *)sn_cuda_scratch(SCRATCH_REDUCE_PARTIALS, part_floats * sizeof(float) * nsum);
  dim3 wgrid(ceil_div_int(C, NORM_THREADS), nparts);
  norm_backward_dweight_kernel<IS_LAYERNORM><<<wgrid, NORM_THREADS, 0, SN_STREAM>>>(
      partials, partials + part_floats, dout, x, mean, rstd, T, C);
  launchCheck();
  sn_cuda_reduce_partials2_into_bf16(dweight, IS_LAYERNORM ? dbias : NULL, partials, nparts, C);
}

size_t cuda_norm_scratch_bytes(int T, int C) {
  // two partial blocks (weight and bias) of the larger of the fused and two-kernel row groups
  const int rows = NORM_BWD_FUSED_ROWS < NORM_BWD_ROWS_PER_BLOCK ? NORM_BWD_FUSED_ROWS : NORM_BWD_ROWS_PER_BLOCK;
  return 2 * (size_t)ceil_div_int(T, rows) * C * sizeof(float);
}

void cuda_rmsnorm_backward(void *dx, void *dweight, const void *dout, const void *x, const void *weight,
                           const float *rstd, int T, int C, int accumulate) {
  launch_norm_backward<false>((bf16 *)dx, (bf16 *)dweight, NULL, (const bf16 *)dout, (const bf16 *)x,
                              (const bf16 *)weight, NULL, rstd, T, C, accumulate);
}
void cuda_layernorm_backward(void *dx, void *dweight, void *dbias, const void *dout, const void *x,
                             const void *weight, const float *mean, const float *rstd, int T, int C,
                             int accumulate) {
  launch_norm_backward<true>((bf16 *)dx, (bf16 *)dweight, (bf16 *)dbias, (const bf16 *)dout, (const bf16 *)x,
                             (const bf16 *)weight, mean, rstd, T, C, accumulate);
}
