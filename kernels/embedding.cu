// Embedding lookup, forward and backward. The backward is deterministic without float atomics:
// a stable radix sort of the token ids groups equal ids (keeping token order), then one block per
// distinct id sums its tokens' gradient rows in fp32, in token order, and adds into dtable once.
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

#define EMBED_THREADS 128

// out (T, C) = table[ids] (V, C), or += when accumulate. One block per token.
__global__ void embedding_forward_kernel(bf16 *out, const int32_t *ids, const bf16 *table, int C,
                                         int accumulate, int packed) {
  int t = blockIdx.x;
  const bf16 *row = table + (size_t)ids[t] * C;
  bf16 *dst = out + (size_t)t * C;
  if (packed) {
    for (int c = threadIdx.x * BF16_PER_PACK; c < C; c += blockDim.x * BF16_PER_PACK) {
      bf16x8 v = load_bf16x8(row + c);
      if (accumulate) {
        bf16x8 o = load_bf16x8(dst + c);
#pragma unroll
        for (int k = 0; k < BF16_PER_PACK; k++) v.v[k] = f2bf(bf2f(v.v[k]) + bf2f(o.v[k]));
      }
      store_bf16x8(dst + c, v);
    }
  } else {
    for (int c = threadIdx.x; c < C; c += blockDim.x)
      dst[c] = accumulate ? f2bf(bf2f(row[c]) + bf2f(dst[c])) : row[c];
  }
}

void cuda_embedding_forward(void *out, const int32_t *ids, const void *table, int T, int C, int accumulate) {
  if (T == 0) return;
  int packed = C % BF16_PER_PACK == 0 && aligned16(out) && aligned16(table);
  embedding_forward_kernel<<<T, EMBED_THREADS, 0, SN_STREAM>>>((bf16 *)out, ids, (const bf16 *)table, C,
                                                               accumulate, packed);
  launchCheck();
}

// iota: token order 0..T-1, the values sorted along with the ids.
__global__ void iota_kernel(int32_t *x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = i;
}

// One block per position i of the sorted ids; only the first position of each run of equal ids
// works: it sums the dout rows of the run (token order kept by the stable sort) and adds to dtable.
__global__ void embedding_backward_kernel(bf16 *dtable, const bf16 *dout, const int32_t *sorted_ids,
                                          const int32_t *sorted_tokens, int T, int C, int packed) {
  int i = blockIdx.x;
  int id = sorted_ids[i];
  if (i > 0 && sorted_ids[i - 1] == id) return;
  int end = i + 1;
  while (end < T && sorted_ids[end] == id) end++;
  bf16 *dst = dtable + (size_t)id * C;
  if (packed) {
    for (int c = threadIdx.x * BF16_PER_PACK; c < C; c += blockDim.x * BF16_PER_PACK) {
      float sum[BF16_PER_PACK] = {0};
      for (int j = i; j < end; j++) {
        bf16x8 g = load_bf16x8(dout + (size_t)sorted_tokens[j] * C + c);
#pragma unroll
        for (int k = 0; k < BF16_PER_PACK; k++) sum[k] += bf2f(g.v[k]);
      }
      bf16x8 o = load_bf16x8(dst + c);
#pragma unroll
      for (int k = 0; k < BF16_PER_PACK; k++) o.v[k] = f2bf(bf2f(o.v[k]) + sum[k]);
      store_bf16x8(dst + c, o);
    }
    return;
  }
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float sum = 0.0f;
    for (int j = i; j < end; j++) sum += bf2f(dout[(size_t)sorted_tokens[j] * C + c]);
    dst[c] = f2bf(bf2f(dst[c]) + sum);
  }
}

void cuda_embedding_backward(void *dtable, const void *dout, const int32_t *ids, int T, int C, int V) {
  if (T == 0) return;
  // Only the bits that ids < V can set take part in the sort.
  int end_bit = 1;
  while (end_bit < 31 && (1LL << end_bit) < V) end_bit++;
  size_t temp_bytes = 0;
  cudaCheck(cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const int32_t *)NULL, (int32_t *)NULL,
                                            (const int32_t *)NULL, (int32_t *)NULL, T, 0, end_bit, SN_STREAM));
  size_t ints_bytes = (size_t)3 * T * sizeof(int32_t);
  size_t aligned_ints = (ints_bytes + 255) & ~(size_t)255;
  char *base = (char *)sn_cuda_scratch(SCRATCH_SORT, aligned_ints + temp_bytes);
  int32_t *order = (int32_t *)base, *sorted_ids = order + T, *sorted_tokens = order + 2 * T;
  iota_kernel<<<ceil_div_int(T, EMBED_THREADS), EMBED_THREADS, 0, SN_STREAM>>>(order, T);
  launchCheck();
  cudaCheck(cub::DeviceRadixSort::SortPairs(base + aligned_ints, temp_bytes, ids, sorted_ids, order,
                                            sorted_tokens, T, 0, end_bit, SN_STREAM));
  int packed = C % BF16_PER_PACK == 0 && aligned16(dtable) && aligned16(dout);
  embedding_backward_kernel<<<T, EMBED_THREADS, 0, SN_STREAM>>>((bf16 *)dtable, (const bf16 *)dout, sorted_ids,
                                                                sorted_tokens, T, C, packed);
  launchCheck();
}
