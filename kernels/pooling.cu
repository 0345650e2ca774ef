// Sequence pooling (last token, mean, first token) over packed sequences, and L2 normalisation of
// the pooled rows into fp32 embeddings; forward and backward. Small (B rows) except the pool
// backward, which writes all of dhidden (T, C).
#include "common.cuh"

#define POOL_THREADS 256
#define L2NORM_EPS 1e-12f  // as torch.nn.functional.normalize

// out (B, C) from hidden (T, C). One block per sequence; threads over columns.
__global__ void pool_forward_kernel(bf16 *out, const bf16 *hidden, const int32_t *cu_seqlens, int C, int mode) {
  int b = blockIdx.x;
  int start = cu_seqlens[b], end = cu_seqlens[b + 1];
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float v;
    if (mode == SN_POOL_MEAN) {
      v = 0.0f;
      for (int t = start; t < end; t++) v += bf2f(hidden[(size_t)t * C + c]);
      v /= (float)(end - start);
    } else {
      int t = mode == SN_POOL_LAST ? end - 1 : start;
      v = bf2f(hidden[(size_t)t * C + c]);
    }
    out[(size_t)b * C + c] = f2bf(v);
  }
}

// Mean pooling, packed path (C % 8 == 0, 16-byte aligned): one block per sequence; thread = (pack
// of 8 columns p, token lane r): lane r sums tokens start + r, start + r + lanes, ... with
// POOL_MEAN_UNROLL 16-byte loads in flight, then lane 0 adds the lanes' fp32 partial sums in lane
// order (deterministic). Several lanes per pack keep enough loads in flight with one block per
// sequence; a C too wide for one lane per pack loops over packs.
#define POOL_MEAN_UNROLL 8
#define POOL_MEAN_MAX_SMEM (48 << 10)  // the default dynamic shared memory limit (C up to 12288)

__global__ void pool_mean_packed_kernel(bf16 *out, const bf16 *hidden, const int32_t *cu_seqlens, int C) {
  extern __shared__ float partial[];  // (lanes, C) fp32
  const int packs = C / BF16_PER_PACK;
  const int lanes = max(1, (int)blockDim.x / packs);
  const int b = blockIdx.x, start = cu_seqlens[b], end = cu_seqlens[b + 1];
  const int r = threadIdx.x / packs;
  if (r < lanes) {
    for (int p = threadIdx.x % packs; p < packs; p += (lanes == 1 ? blockDim.x : packs)) {
      float acc[BF16_PER_PACK] = {0};
      const bf16 *col = hidden + (size_t)p * BF16_PER_PACK;
      int t = start + r;
      for (; t + (POOL_MEAN_UNROLL - 1) * lanes < end; t += POOL_MEAN_UNROLL * lanes) {
        bf16x8 v[POOL_MEAN_UNROLL];
#pragma unroll
        for (int u = 0; u < POOL_MEAN_UNROLL; u++) v[u] = load_bf16x8(col + (size_t)(t + u * lanes) * C);
#pragma unroll
        for (int u = 0; u < POOL_MEAN_UNROLL; u++)
#pragma unroll
          for (int k = 0; k < BF16_PER_PACK; k++) acc[k] += bf2f(v[u].v[k]);
      }
      for (; t < end; t += lanes) {
        bf16x8 v = load_bf16x8(col + (size_t)t * C);
#pragma unroll
        for (int k = 0; k < BF16_PER_PACK; k++) acc[k] += bf2f(v.v[k]);
      }
#pragma unroll
      for (int k = 0; k < BF16_PER_PACK; k++) partial[(size_t)r * C + p * BF16_PER_PACK + k] = acc[k];
    }
  }
  __syncthreads();
  const float inv_len = 1.0f / (float)(end - start);
  for (int p = threadIdx.x; p < packs; p += blockDim.x) {
    bf16x8 o;
#pragma unroll
    for (int k = 0; k < BF16_PER_PACK; k++) {
      float sum = 0.0f;
      for (int l = 0; l < lanes; l++) sum += partial[(size_t)l * C + p * BF16_PER_PACK + k];
      o.v[k] = f2bf(sum * inv_len);
    }
    store_bf16x8(out + (size_t)b * C + p * BF16_PER_PACK, o);
  }
}

void cuda_pool_forward(void *out, const void *hidden, const int32_t *cu_seqlens, int B, int T, int C,
                       sn_pooling mode) {
  if (B == 0) return;
  int packs = C / BF16_PER_PACK, lanes = packs >= POOL_THREADS ? 1 : POOL_THREADS / packs;
  size_t smem = (size_t)lanes * C * sizeof(float);
  if (mode == SN_POOL_MEAN && C % BF16_PER_PACK == 0 && aligned16(hidden) && aligned16(out) &&
      smem <= POOL_MEAN_MAX_SMEM) {
    pool_mean_packed_kernel<<<B, POOL_THREADS, smem, SN_STREAM>>>((bf16 *)out, (const bf16 *)hidden, cu_seqlens, C);
    launchCheck();
    return;
  }
  pool_forward_kernel<<<B, POOL_THREADS, 0, SN_STREAM>>>((bf16 *)out, (const bf16 *)hidden, cu_seqlens, C,
                                                         (int)mode);
  launchCheck();
}

// dhidden (T, C), written in full. One block per token: finds its sequence by binary search.
__global__ void pool_backward_kernel(bf16 *dhidden, const bf16 *dout, const int32_t *cu_seqlens, int B, int C,
                                     int mode) {
  int t = blockIdx.x;
  int lo = 0, hi = B;  // find b with cu_seqlens[b] <= t < cu_seqlens[b + 1]
  while (hi - lo > 1) {
    int mid = (lo + hi) / 2;
    if (cu_seqlens[mid] <= t) lo = mid;
    else hi = mid;
  }
  int b = lo, start = cu_seqlens[b], end = cu_seqlens[b + 1];
  float factor;
  if (mode == SN_POOL_MEAN) factor = 1.0f / (float)(end - start);
  else factor = (t == (mode == SN_POOL_LAST ? end - 1 : start)) ? 1.0f : 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    dhidden[(size_t)t * C + c] = f2bf(factor * bf2f(dout[(size_t)b * C + c]));
}

void cuda_pool_backward(void *dhidden, const void *dout, const int32_t *cu_seqlens, int B, int T, int C,
                        sn_pooling mode) {
  if (T == 0) return;
  pool_backward_kernel<<<T, POOL_THREADS, 0, SN_STREAM>>>((bf16 *)dhidden, (const bf16 *)dout, cu_seqlens, B, C,
                                                          (int)mode);
  launchCheck();
}

// out (B, C) fp32 = x / max(||x||, eps); norm (B) = ||x||. One block per row.
__global__ void l2norm_forward_kernel(float *out, float *norm, const bf16 *x, int C) {
  __shared__ float red[WARP_SIZE];
  int b = blockIdx.x;
  const bf16 *row = x + (size_t)b * C;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) ss += bf2f(row[c]) * bf2f(row[c]);
  float n = sqrtf(block_sum(ss, red));
  float inv = 1.0f / fmaxf(n, L2NORM_EPS);
  for (int c = threadIdx.x; c < C; c += blockDim.x) out[(size_t)b * C + c] = bf2f(row[c]) * inv;
  if (threadIdx.x == 0) norm[b] = n;
}

void cuda_l2norm_forward(float *out, float *norm, const void *x, int B, int C) {
  if (B == 0) return;
  l2norm_forward_kernel<<<B, POOL_THREADS, 0, SN_STREAM>>>(out, norm, (const bf16 *)x, C);
  launchCheck();
}

// dx = (dout - y (y . dout)) / n for n > eps (y = out), else dout / eps (the clamp is constant).
__global__ void l2norm_backward_kernel(bf16 *dx, const float *dout, const float *out, const float *norm, int C) {
  __shared__ float red[WARP_SIZE];
  int b = blockIdx.x;
  const float *d = dout + (size_t)b * C, *y = out + (size_t)b * C;
  float n = norm[b];
  float dot = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dot += d[c] * y[c];
  dot = block_sum(dot, red);
  bool clamped = n <= L2NORM_EPS;
  float inv = 1.0f / fmaxf(n, L2NORM_EPS);
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    dx[(size_t)b * C + c] = f2bf(clamped ? d[c] * inv : (d[c] - y[c] * dot) * inv);
}

void cuda_l2norm_backward(void *dx, const float *dout, const float *out, const float *norm, int B, int C) {
  if (B == 0) return;
  l2norm_backward_kernel<<<B, POOL_THREADS, 0, SN_STREAM>>>((bf16 *)dx, dout, out, norm, C);
  launchCheck();
}
