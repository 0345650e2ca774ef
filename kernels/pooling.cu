// Sequence pooling (last token, mean, first token) over packed sequences, and L2 normalisation of
// the pooled rows into fp32 embeddings; forward and backward. Small (B rows) except the pool
// backward, which writes all of dhidden (T, C). The forward kernels end a serving forward, a few
// microseconds each: launched with programmatic dependent launch (common.cuh) so their launch
// overlaps the kernel before.
#include "common.cuh"

#define POOL_THREADS 256
#define L2NORM_EPS 1e-12f  // as torch.nn.functional.normalize

// out (B, C) from hidden (T, C). One block per sequence; threads over columns.
__global__ void pool_forward_kernel(bf16 *out, const bf16 *hidden, const int32_t *cu_seqlens, int C, int mode) {
  pdl_wait();  // hidden comes from the kernels before
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

// Mean pooling, packed path (C % 8 == 0, 16-byte aligned). Grid (B * column chunks, splits): block
// (b * chunks + x, s) owns the x-th chunk of POOL_MEAN_PACKS packs of 8 columns (neighbouring blocks
// read neighbouring bytes of the same rows) over the s-th of `splits` equal token ranges of sequence
// b. Thread = (pack p, token lane r): lane r sums tokens start + r, start + r + lanes, ... with
// POOL_MEAN_UNROLL 16-byte loads in flight; then one thread per column adds the lanes' fp32 sums in
// lane order. With one split (B x chunks blocks are enough: B = 128, C = 896 gives 896 blocks) that
// is the mean, in one launch; otherwise fp32 partials (B, splits, C) and a second pass adds the splits
// in order. Block shape and splits depend on (B, T, C) only, so the summation order is the same on
// any GPU and every run: deterministic, no atomics.
#define POOL_MEAN_UNROLL 8
#define POOL_MEAN_PACKS 16               // packs of a block's column chunk: 256 bytes of each row
#define POOL_MEAN_TARGET_BLOCKS 512      // below this many (sequence, chunk) blocks, sequences are split
#define POOL_MEAN_MAX_SPLITS 16
#define POOL_MEAN_MIN_SPLIT_TOKENS 32    // average tokens per split at least this

__global__ void __launch_bounds__(POOL_THREADS)
    pool_mean_packed_kernel(bf16 *out, float *partial, const bf16 *hidden, const int32_t *cu_seqlens, int C) {
  __shared__ float4 lane_sums[POOL_THREADS * BF16_PER_PACK / F32_PER_PACK];  // (lanes, chunk packs, 8) fp32
  pdl_wait();  // hidden comes from the kernels before
  const int packs = C / BF16_PER_PACK;
  const int chunk_packs = min(POOL_MEAN_PACKS, packs), lanes = POOL_THREADS / chunk_packs;
  const int chunk_cols = chunk_packs * BF16_PER_PACK;
  const int chunks = (packs + chunk_packs - 1) / chunk_packs;
  const int b = blockIdx.x / chunks, chunk = blockIdx.x % chunks, split = blockIdx.y, splits = gridDim.y;
  const int seq_start = cu_seqlens[b], len = cu_seqlens[b + 1] - seq_start;
  const int per_split = (len + splits - 1) / splits;
  const int start = seq_start + min(len, split * per_split), end = seq_start + min(len, (split + 1) * per_split);
  const int pl = threadIdx.x % chunk_packs, r = threadIdx.x / chunk_packs;
  const int p = chunk * chunk_packs + pl;
  if (r < lanes) {
    float acc[BF16_PER_PACK] = {0};
    if (p < packs) {
      const bf16 *col = hidden + (size_t)p * BF16_PER_PACK;
      int t = start + r;
      for (; t + (POOL_MEAN_UNROLL - 1) * lanes < end; t += POOL_MEAN_UNROLL * lanes) {
        uint4 v[POOL_MEAN_UNROLL];
#pragma unroll
        for (int u = 0; u < POOL_MEAN_UNROLL; u++)
          v[u] = *reinterpret_cast<const uint4 *>(col + (size_t)(t + u * lanes) * C);
#pragma unroll
        for (int u = 0; u < POOL_MEAN_UNROLL; u++) add_bf16x8_words(acc, v[u]);
      }
      for (; t < end; t += lanes) add_bf16x8_words(acc, *reinterpret_cast<const uint4 *>(col + (size_t)t * C));
    }
    float4 *mine = lane_sums + (size_t)(r * chunk_cols + pl * BF16_PER_PACK) / F32_PER_PACK;
    mine[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    mine[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
  }
  __syncthreads();
  const int cc = threadIdx.x, c = chunk * chunk_cols + cc;
  if (cc >= chunk_cols || c >= C) return;
  const float *sums = reinterpret_cast<const float *>(lane_sums);
  float sum = 0.0f;
  for (int l = 0; l < lanes; l++) sum += sums[l * chunk_cols + cc];
  if (partial != nullptr) partial[((size_t)b * splits + split) * C + c] = sum;
  else out[(size_t)b * C + c] = f2bf(sum * (1.0f / (float)len));
}

// out (B, C) = (sum of the splits' partials, in split order) / length. Thread per output element.
__global__ void pool_mean_finish_kernel(bf16 *out, const float *partial, const int32_t *cu_seqlens, int B, int C,
                                        int splits) {
  pdl_wait();  // the partials come from the kernel before
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)B * C) return;
  const int b = (int)(i / C), c = (int)(i % C);
  const float *src = partial + (size_t)b * splits * C + c;
  float sum = 0.0f;
  for (int s = 0; s < splits; s++) sum += src[(size_t)s * C];
  out[i] = f2bf(sum * (1.0f / (float)(cu_seqlens[b + 1] - cu_seqlens[b])));
}

// Last / first token, packed path: thread per (sequence, pack of 8 columns), one 16-byte copy.
__global__ void pool_pick_packed_kernel(bf16 *out, const bf16 *hidden, const int32_t *cu_seqlens, int B, int C,
                                        int mode) {
  pdl_wait();  // hidden comes from the kernels before
  const int packs = C / BF16_PER_PACK;
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)B * packs) return;
  const int b = (int)(i / packs), p = (int)(i % packs);
  const int t = mode == SN_POOL_LAST ? cu_seqlens[b + 1] - 1 : cu_seqlens[b];
  *reinterpret_cast<uint4 *>(out + (size_t)b * C + (size_t)p * BF16_PER_PACK) =
      *reinterpret_cast<const uint4 *>(hidden + (size_t)t * C + (size_t)p * BF16_PER_PACK);
}

void cuda_pool_forward(void *out, const void *hidden, const int32_t *cu_seqlens, int B, int T, int C,
                       sn_pooling mode) {
  if (B == 0) return;
  const int packed = C % BF16_PER_PACK == 0 && aligned16(hidden) && aligned16(out);
  if (packed && mode != SN_POOL_MEAN) {
    const size_t threads = (size_t)B * (C / BF16_PER_PACK);
    if (threads == 0) return;
    launch_pdl(pool_pick_packed_kernel, dim3(ceil_div_int(threads, POOL_THREADS)), dim3(POOL_THREADS), 0, (bf16 *)out,
               (const bf16 *)hidden, cu_seqlens, B, C, (int)mode);
    launchCheck();
    return;
  }
  if (packed && C > 0) {
    const int packs = C / BF16_PER_PACK, chunks = ceil_div_int(packs, POOL_MEAN_PACKS);
    int splits = 1;
    if ((long long)B * chunks < POOL_MEAN_TARGET_BLOCKS) {
      splits = ceil_div_int(POOL_MEAN_TARGET_BLOCKS, (long long)B * chunks);
      const int by_length = (int)(T / ((long long)B * POOL_MEAN_MIN_SPLIT_TOKENS));
      splits = splits < by_length ? splits : by_length;
      splits = splits < POOL_MEAN_MAX_SPLITS ? splits : POOL_MEAN_MAX_SPLITS;
      splits = splits > 1 ? splits : 1;
    }
    float *partial = NULL;
    if (splits > 1)
      partial = (float *)sn_cuda_scratch(SCRATCH_REDUCE_PARTIALS, (size_t)B * splits * C * sizeof(float));
    launch_pdl(pool_mean_packed_kernel, dim3(B * chunks, splits), dim3(POOL_THREADS), 0, (bf16 *)out, partial,
               (const bf16 *)hidden, cu_seqlens, C);
    launchCheck();
    if (splits > 1) {
      launch_pdl(pool_mean_finish_kernel, dim3(ceil_div_int((long long)B * C, POOL_THREADS)), dim3(POOL_THREADS), 0,
                 (bf16 *)out, (const float *)partial, cu_seqlens, B, C, splits);
      launchCheck();
    }
    return;
  }
  launch_pdl(pool_forward_kernel, dim3(B), dim3(POOL_THREADS), 0, (bf16 *)out, (const bf16 *)hidden, cu_seqlens, C,
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
  pdl_wait();  // x comes from the kernels before
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
  launch_pdl(l2norm_forward_kernel, dim3(B), dim3(POOL_THREADS), 0, out, norm, (const bf16 *)x, C);
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
