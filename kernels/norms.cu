// RMSNorm (Qwen2) and LayerNorm (BERT), forward and backward, and the forward passes fused with the
// residual add. Forward: one warp per row (T rows of C), fp32 statistics, the row re-read from L1
// between passes instead of held in registers (C varies). Backward (fused, 16-byte packs): a block
// owns a fixed range of rows, a warp per row writes dx and adds dout * xhat (and dout) into its own
// fp32 column sums in shared memory; the block then sums its warps in order into per-block partials,
// which sn_cuda_reduce_partials_into_bf16 adds into dweight/dbias in a fixed order: deterministic,
// no atomics, and x/dout are read from DRAM once. Unpacked shapes, or C too wide for shared memory,
// take a two-kernel path (dx, then the column sums re-reading x and dout).
#include "common.cuh"

#define NORM_WARPS 8                      // rows in flight per block (forward, and dx in backward)
#define NORM_THREADS (NORM_WARPS * WARP_SIZE)
#define NORM_BWD_ROWS_PER_BLOCK 64        // two-kernel path: rows whose column sums one block adds
// Fused path: rows per block, a function of C alone (so the summation order does not depend on the
// device): small enough that there are several blocks per SM, large enough that the partials stay
// a small fraction of the traffic.
static int fused_rows_per_block(int C) { return C <= 2048 ? 16 : 32; }
#define NORM_BWD_WARPS 4                  // fused backward: warps per block, each with C column sums
#define NORM_BWD_MAX_SMEM (120 * 1024)    // fused backward only while its column sums fit this (sm_80: 163 KB)

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
  const int lane = threadIdx.x % WARP_SIZE;
  const int t = blockIdx.x * NORM_WARPS + threadIdx.x / WARP_SIZE;
  if (t >= T) return;
  const size_t row = (size_t)t * C;
  bf16x8 xc[MAXP];
  float sum = 0.0f;
#pragma unroll
  for (int p = 0; p < MAXP; p++) {
    int c = p * STEP + lane * BF16_PER_PACK;
    if (c < C) {
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
      bf16x8 w = load_bf16x8(weight + c), bb, o;
      if (IS_LAYERNORM) bb = load_bf16x8(bias + c);
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
#define CACHED_FWD(P)                                                                                  \
  norm_forward_cached_kernel<P, IS_LAYERNORM><<<grid, NORM_THREADS, 0, SN_STREAM>>>(out, residual_out, mean, \
                                                                                  rstd, a, b, weight, bias, T, C, eps)
  if (cache == NORM_CACHE_SMALL) CACHED_FWD(NORM_CACHE_SMALL);
  else if (cache == NORM_CACHE_MEDIUM) CACHED_FWD(NORM_CACHE_MEDIUM);
  else if (cache == NORM_CACHE_LARGE) CACHED_FWD(NORM_CACHE_LARGE);
#undef CACHED_FWD
  else if (packed)
    norm_forward_kernel<BF16_PER_PACK, IS_LAYERNORM><<<grid, NORM_THREADS, 0, SN_STREAM>>>(
        out, residual_out, mean, rstd, a, b, weight, bias, T, C, eps);
  else
    norm_forward_kernel<1, IS_LAYERNORM><<<grid, NORM_THREADS, 0, SN_STREAM>>>(out, residual_out, mean, rstd,
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

// ---- backward: fused dx + column sums (VEC = 8) -------------------------------------------------------
// Pass 1 of a pack: the row sums of g = dout * w and g * xhat.
template <bool IS_LAYERNORM>
__device__ __forceinline__ void bwd_row_sums(bf16x8 x8, bf16x8 d8, const bf16 *w, float mean, float rstd,
                                             float &sum_g, float &sum_gx) {
  bf16x8 w8 = load_bf16x8(w);
#pragma unroll
  for (int k = 0; k < BF16_PER_PACK; k++) {
    float g = bf2f(d8.v[k]) * bf2f(w8.v[k]);
    sum_g += g;
    sum_gx += g * (bf2f(x8.v[k]) - mean) * rstd;
  }
}
// Pass 2 of a pack at column c: dx, and this warp's column sums (16 bytes at a time: a warp's float4
// accesses are bank-conflict free).
template <bool IS_LAYERNORM>
__device__ __forceinline__ void bwd_write_pack(bf16x8 x8, bf16x8 d8, const bf16 *weight, bf16 *o, float *acc_w,
                                               float *acc_b, int c, float mean, float rstd, float mean_g,
                                               float mean_gx, int accumulate) {
  bf16x8 w8 = load_bf16x8(weight + c), prev, out;
  if (accumulate) prev = load_bf16x8(o + c);
  f32x4 aw[2] = {load_f32x4(acc_w + c), load_f32x4(acc_w + c + F32_PER_PACK)}, ab[2];
  if (IS_LAYERNORM) ab[0] = load_f32x4(acc_b + c), ab[1] = load_f32x4(acc_b + c + F32_PER_PACK);
#pragma unroll
  for (int k = 0; k < BF16_PER_PACK; k++) {
    float d = bf2f(d8.v[k]), xhat = (bf2f(x8.v[k]) - mean) * rstd;
    aw[k / F32_PER_PACK].v[k % F32_PER_PACK] += d * xhat;
    if (IS_LAYERNORM) ab[k / F32_PER_PACK].v[k % F32_PER_PACK] += d;
    float v = rstd * (d * bf2f(w8.v[k]) - mean_g - xhat * mean_gx);
    out.v[k] = f2bf(accumulate ? v + bf2f(prev.v[k]) : v);
  }
  store_f32x4(acc_w + c, aw[0]), store_f32x4(acc_w + c + F32_PER_PACK, aw[1]);
  if (IS_LAYERNORM) store_f32x4(acc_b + c, ab[0]), store_f32x4(acc_b + c + F32_PER_PACK, ab[1]);
  store_bf16x8(o + c, out);
}

// partials_w/_b (nblocks, C): this block's rows' sums of dout * xhat and dout. The row is re-read
// for pass 2 (from L1/L2): holding x and dout in registers instead measured slower (51.3 vs 47.1 us
// at C=896: 123-255 registers a thread cut the warps in flight more than the re-reads cost).
template <bool IS_LAYERNORM>
__global__ void __launch_bounds__(NORM_BWD_WARPS *WARP_SIZE) norm_backward_fused_kernel(
    bf16 *dx, float *partials_w, float *partials_b, const bf16 *dout, const bf16 *x, const bf16 *weight,
    const float *mean_in, const float *rstd_in, int T, int C, int accumulate, int rows_per_block) {
  constexpr int VEC = BF16_PER_PACK, STEP = WARP_SIZE * VEC;
  extern __shared__ __align__(16) float col_sums[];  // [NORM_BWD_WARPS][C] w, then [NORM_BWD_WARPS][C] b
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int nsum = (IS_LAYERNORM ? 2 : 1) * NORM_BWD_WARPS * C;
  for (int i = threadIdx.x; i < nsum; i += blockDim.x) col_sums[i] = 0.0f;
  __syncthreads();
  float *acc_w = col_sums + warp * C, *acc_b = col_sums + (NORM_BWD_WARPS + warp) * C;
  const int t0 = blockIdx.x * rows_per_block, t1 = min(T, t0 + rows_per_block);
  for (int t = t0 + warp; t < t1; t += NORM_BWD_WARPS) {
    const bf16 *xr = x + (size_t)t * C, *dr = dout + (size_t)t * C;
    bf16 *o = dx + (size_t)t * C;
    const float mean = IS_LAYERNORM ? mean_in[t] : 0.0f, rstd = rstd_in[t];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int c = lane * VEC; c < C; c += STEP)
      bwd_row_sums<IS_LAYERNORM>(load_bf16x8(xr + c), load_bf16x8(dr + c), weight + c, mean, rstd, sum_g, sum_gx);
    const float mean_g = IS_LAYERNORM ? warp_sum(sum_g) / C : 0.0f, mean_gx = warp_sum(sum_gx) / C;
    for (int c = lane * VEC; c < C; c += STEP)
      bwd_write_pack<IS_LAYERNORM>(load_bf16x8(xr + c), load_bf16x8(dr + c), weight, o, acc_w, acc_b, c, mean, rstd,
                                   mean_g, mean_gx, accumulate);
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float w = 0.0f, b = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_BWD_WARPS; k++) {
      w += col_sums[k * C + c];
      if (IS_LAYERNORM) b += col_sums[(NORM_BWD_WARPS + k) * C + c];
    }
    partials_w[(size_t)blockIdx.x * C + c] = w;
    if (IS_LAYERNORM) partials_b[(size_t)blockIdx.x * C + c] = b;
  }
}

template <bool IS_LAYERNORM>
static void launch_norm_backward(bf16 *dx, bf16 *dweight, bf16 *dbias, const bf16 *dout, const bf16 *x,
                                 const bf16 *weight, const float *mean, const float *rstd, int T, int C,
                                 int accumulate) {
  if (T == 0) return;
  bool packed = C % BF16_PER_PACK == 0 && aligned16(dx) && aligned16(dout) && aligned16(x) && aligned16(weight);
  size_t fused_smem = (size_t)(IS_LAYERNORM ? 2 : 1) * NORM_BWD_WARPS * C * sizeof(float);
  if (packed && fused_smem <= NORM_BWD_MAX_SMEM) {
    static bool smem_raised = false;
    if (!smem_raised) {
      cudaCheck(cudaFuncSetAttribute(norm_backward_fused_kernel<IS_LAYERNORM>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, NORM_BWD_MAX_SMEM));
      smem_raised = true;
    }
    const int rows = fused_rows_per_block(C), nparts = ceil_div_int(T, rows);
    const size_t part_floats = (size_t)nparts * C;
    float *partials = (float *)sn_cuda_scratch(SCRATCH_REDUCE_PARTIALS,
                                               part_floats * sizeof(float) * (IS_LAYERNORM ? 2 : 1));
    norm_backward_fused_kernel<IS_LAYERNORM><<<nparts, NORM_BWD_WARPS * WARP_SIZE, fused_smem, SN_STREAM>>>(
        dx, partials, partials + part_floats, dout, x, weight, mean, rstd, T, C, accumulate, rows);
    launchCheck();
    sn_cuda_reduce_partials_into_bf16(dweight, partials, nparts, C);
    if (IS_LAYERNORM) sn_cuda_reduce_partials_into_bf16(dbias, partials + part_floats, nparts, C);
    return;
  }
  int grid = ceil_div_int(T, NORM_WARPS);
  if (packed)
    norm_backward_dx_kernel<BF16_PER_PACK, IS_LAYERNORM><<<grid, NORM_THREADS, 0, SN_STREAM>>>(
        dx, dout, x, weight, mean, rstd, T, C, accumulate);
  else
    norm_backward_dx_kernel<1, IS_LAYERNORM><<<grid, NORM_THREADS, 0, SN_STREAM>>>(dx, dout, x, weight, mean,
                                                                                  rstd, T, C, accumulate);
  launchCheck();

  const int nparts = ceil_div_int(T, NORM_BWD_ROWS_PER_BLOCK);
  const size_t part_floats = (size_t)nparts * C;
  float *partials = (float *)sn_cuda_scratch(SCRATCH_REDUCE_PARTIALS,
                                             part_floats * sizeof(float) * (IS_LAYERNORM ? 2 : 1));
  dim3 wgrid(ceil_div_int(C, NORM_THREADS), nparts);
  norm_backward_dweight_kernel<IS_LAYERNORM><<<wgrid, NORM_THREADS, 0, SN_STREAM>>>(
      partials, partials + part_floats, dout, x, mean, rstd, T, C);
  launchCheck();
  sn_cuda_reduce_partials_into_bf16(dweight, partials, nparts, C);
  if (IS_LAYERNORM) sn_cuda_reduce_partials_into_bf16(dbias, partials + part_floats, nparts, C);
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
