// Optimizer kernels: the gradient sum of squares (for the global norm and clipping) and fused
// multi-tensor AdamW over a flat parameter buffer, with fp32 master and moments or the bf16 state
// (the element's maths is host/backend/adamw_math.h, shared with the CPU op). Deterministic: the sum
// of squares uses a fixed grid and a fixed-order second stage. AdamW is one launch for all spans:
// each block owns a chunk of one span, found by binary search in a device table of the spans' first
// chunk numbers; the table is uploaded only when the spans change (it lives in a growable scratch
// buffer: no cudaMalloc per step).
#include "adamw_math.h"
#include "common.cuh"

#define SUMSQ_BLOCKS 1024  // fixed, so the summation order does not depend on the device
#define SUMSQ_THREADS 256
#define ADAMW_THREADS 256
// One vector a thread under the bf16 state, two under the fp32 one. Measured (H100, sn_bench
// --filter adamw, n = 494M, 2026-12-08): 8 elements 99.0% of the copy rate (fp32 state) and 72.5%
// (bf16 state); 16 elements 97.8% and 60.5%; 8 with __launch_bounds__(256, 8) 83.2% and 44.0%.
#define ADAMW_PER_THREAD 8
#define ADAMW_CHUNK (ADAMW_THREADS * ADAMW_PER_THREAD)

// partials (SUMSQ_BLOCKS) = per-block sums of squares of grads (n).
__global__ void sum_squares_partials_kernel(float *partials, const bf16 *grads, size_t n, int packed) {
  __shared__ float red[WARP_SIZE];
  float acc = 0.0f;
  size_t stride = (size_t)gridDim.x * blockDim.x;
  size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t npacks = packed ? n / BF16_PER_PACK : 0;
  for (size_t i = tid; i < npacks; i += stride) {
    bf16x8 v = load_bf16x8(grads + i * BF16_PER_PACK);
#pragma unroll
    for (int k = 0; k < BF16_PER_PACK; k++) acc += bf2f(v.v[k]) * bf2f(v.v[k]);
  }
  for (size_t j = npacks * BF16_PER_PACK + tid; j < n; j += stride) acc += bf2f(grads[j]) * bf2f(grads[j]);
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(float *out, const float *partials, int n) {
  __shared__ float red[WARP_SIZE];
  float s = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += partials[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) out[0] += s;
}

void cuda_sum_squares(float *out, const void *grads, size_t n) {
  if (n == 0) return;
  float *partials = (float *)sn_cuda_scratch(SCRATCH_REDUCE_PARTIALS, SUMSQ_BLOCKS * sizeof(float));
  sum_squares_partials_kernel<<<SUMSQ_BLOCKS, SUMSQ_THREADS, 0, SN_STREAM>>>(partials, (const bf16 *)grads, n,
                                                                           aligned16(grads));
  launchCheck();
  sum_partials_kernel<<<1, SUMSQ_THREADS, 0, SN_STREAM>>>(out, partials, SUMSQ_BLOCKS);
  launchCheck();
}

// ---- AdamW ---------------------------------------------------------------------------------------------
typedef struct {
  size_t offset, count;
  float weight_decay;
  int first_chunk;  // number of chunks in the spans before this one
} adamw_span;

// The state of one element: fp32 moments and master, or (BF16_STATE) bf16 moments and the bf16
// weights themselves as the master, rounded stochastically (adamw_math.h).
template <bool BF16_STATE>
struct adamw_state {
  typedef float moment;
};
template <>
struct adamw_state<true> {
  typedef bf16 moment;
};

// Elements a thread handles at once: one 16-byte load of each bf16 array under the bf16 state, one
// of each fp32 array (and 8 bytes of each bf16 one) under the fp32 state. Whole vectors took the
// fp32 state from 91% of the copy rate (element-wise loads) to 99%. The bf16 state stays at 72%: per
// element it does the same maths plus the hash and three roundings for half the bytes, so it is
// bound by instructions (docs/PERFORMANCE.md, "The bf16 optimizer state").
template <bool BF16_STATE>
struct adamw_vec {
  static constexpr int n = BF16_STATE ? BF16_PER_PACK : F32_PER_PACK;
};
static_assert(ADAMW_PER_THREAD % BF16_PER_PACK == 0 && ADAMW_PER_THREAD % F32_PER_PACK == 0,
              "a thread's elements are whole vectors");

template <typename T, int N>
struct __align__(sizeof(T) * N) adamw_pack {
  T v[N];
};
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return bf2f(x); }
__device__ __forceinline__ void from_f32(float *p, float x) { *p = x; }
// Rounds to nearest: exact for the bf16 state's values (already rounded stochastically), the weight's
// bf16 copy under the fp32 state.
__device__ __forceinline__ void from_f32(bf16 *p, float x) { *p = f2bf(x); }

// d[0..n) = p[0..n) as floats: one vector load when `vec`, else n scalar loads (a span's tail or an
// unaligned span).
template <int N, typename T>
__device__ __forceinline__ void adamw_load(float (&d)[N], const T *p, int n, bool vec) {
  if (vec) {
    const adamw_pack<T, N> x = *reinterpret_cast<const adamw_pack<T, N> *>(p);
#pragma unroll
    for (int k = 0; k < N; k++) d[k] = to_f32(x.v[k]);
  } else {  // unrolled with a guard, so d stays in registers
#pragma unroll
    for (int k = 0; k < N; k++)
      if (k < n) d[k] = to_f32(p[k]);
  }
}
template <int N, typename T>
__device__ __forceinline__ void adamw_store(T *p, const float (&s)[N], int n, bool vec) {
  if (vec) {
    adamw_pack<T, N> x;
#pragma unroll
    for (int k = 0; k < N; k++) from_f32(&x.v[k], s[k]);
    *reinterpret_cast<adamw_pack<T, N> *>(p) = x;
  } else {
#pragma unroll
    for (int k = 0; k < N; k++)
      if (k < n) from_f32(&p[k], s[k]);
  }
}
template <int N, typename T>
__device__ __forceinline__ bool adamw_aligned(const T *p) {
  return ((uintptr_t)p % sizeof(adamw_pack<T, N>)) == 0;
}

// A block owns ADAMW_CHUNK elements of one span; within it, vector g of thread t starts at element
// (g * ADAMW_THREADS + t) * N, so each load instruction of a warp reads one contiguous range.
template <bool BF16_STATE>
__global__ void __launch_bounds__(ADAMW_THREADS)
    adamw_kernel(bf16 *params, float *master, const bf16 *grads, typename adamw_state<BF16_STATE>::moment *m,
                 typename adamw_state<BF16_STATE>::moment *v, const adamw_span *spans, int nspans,
                 sn_adamw_consts k, uint64_t round_key, uint64_t index_base) {
  constexpr int N = adamw_vec<BF16_STATE>::n;
  typedef typename adamw_state<BF16_STATE>::moment moment;
  // Span of this block: the last span whose first chunk <= blockIdx.x.
  int lo = 0, hi = nspans;
  while (hi - lo > 1) {
    int mid = (lo + hi) / 2;
    if (spans[mid].first_chunk <= (int)blockIdx.x) lo = mid;
    else hi = mid;
  }
  const adamw_span sp = spans[lo];
  const size_t chunk_start = (size_t)(blockIdx.x - sp.first_chunk) * ADAMW_CHUNK;
#pragma unroll
  for (int g = 0; g < ADAMW_PER_THREAD / N; g++) {
    const size_t j = chunk_start + ((size_t)g * ADAMW_THREADS + threadIdx.x) * N;
    if (j >= sp.count) break;
    const size_t i = sp.offset + j;
    const int n = (int)min((size_t)N, sp.count - j);
    const bool vec = n == N && adamw_aligned<N>(params + i) && adamw_aligned<N>(grads + i) &&
                     adamw_aligned<N>(m + i) && adamw_aligned<N>(v + i) && (BF16_STATE || adamw_aligned<N>(master + i));
    float w[N], mo[N], ve[N], gr[N];
    if (BF16_STATE) adamw_load(w, params + i, n, vec);
    else adamw_load(w, master + i, n, vec);
    adamw_load(mo, (const moment *)m + i, n, vec);
    adamw_load(ve, (const moment *)v + i, n, vec);
    adamw_load(gr, grads + i, n, vec);
#pragma unroll
    for (int e = 0; e < N; e++) {
      if (e >= n) break;
      sn_adamw_elem u = sn_adamw_update(w[e], mo[e], ve[e], gr[e], sp.weight_decay, k);
      if (BF16_STATE) sn_adamw_round_bf16(&u, round_key, index_base + i + e);
      w[e] = u.w, mo[e] = u.m, ve[e] = u.v;
    }
    adamw_store(m + i, mo, n, vec);
    adamw_store(v + i, ve, n, vec);
    if (!BF16_STATE) adamw_store(master + i, w, n, vec);
    adamw_store(params + i, w, n, vec);
  }
}

// Host copy of the spans last uploaded: skip the upload when nothing changed.
static sn_param_span *last_spans;
static int last_nspans = -1;
static int last_total_chunks;

size_t cuda_optimizer_scratch_bytes(scratch_slot slot, int nspans) {
  if (slot == SCRATCH_ADAMW_TABLE) return (size_t)nspans * sizeof(adamw_span);
  if (slot == SCRATCH_REDUCE_PARTIALS) return SUMSQ_BLOCKS * sizeof(float);  // the gradient norm
  return 0;
}

void cuda_adamw(void *params, float *master, const void *grads, void *m, void *v, const sn_param_span *spans,
                int nspans, const sn_adamw_hparams *hp) {
  if (nspans <= 0) return;
  adamw_span *dev_spans = (adamw_span *)sn_cuda_scratch(SCRATCH_ADAMW_TABLE, (size_t)nspans * sizeof(adamw_span));
  bool same = nspans == last_nspans && memcmp(last_spans, spans, (size_t)nspans * sizeof *spans) == 0;
  if (!same) {
    adamw_span *host = (adamw_span *)malloc((size_t)nspans * sizeof(adamw_span));
    if (!host) {
      fprintf(stderr, "error: %s:%d: out of host memory\n", __FILE__, __LINE__);
      exit(1);
    }
    long long chunks = 0;
    for (int s = 0; s < nspans; s++) {
      host[s].offset = spans[s].offset;
      host[s].count = spans[s].count;
      host[s].weight_decay = spans[s].weight_decay;
      host[s].first_chunk = (int)chunks;
      chunks += (spans[s].count + ADAMW_CHUNK - 1) / ADAMW_CHUNK;
    }
    cudaCheck(cudaMemcpy(dev_spans, host, (size_t)nspans * sizeof(adamw_span), cudaMemcpyHostToDevice));
    free(host);
    free(last_spans);
    last_spans = (sn_param_span *)malloc((size_t)nspans * sizeof *spans);
    memcpy(last_spans, spans, (size_t)nspans * sizeof *spans);
    last_nspans = nspans;
    last_total_chunks = (int)chunks;
  }
  if (last_total_chunks == 0) return;
  const sn_adamw_consts k = sn_adamw_consts_at(hp->lr, hp->beta1, hp->beta2, hp->eps, hp->grad_scale, hp->step);
  if (hp->state_bf16) {
    if (master) {
      fprintf(stderr, "error: %s:%d: adamw: the bf16 state has no master copy\n", __FILE__, __LINE__);
      exit(1);
    }
    adamw_kernel<true><<<last_total_chunks, ADAMW_THREADS, 0, SN_STREAM>>>(
        (bf16 *)params, NULL, (const bf16 *)grads, (bf16 *)m, (bf16 *)v, dev_spans, nspans, k, hp->round_key,
        hp->index_base);
  } else {
    adamw_kernel<false><<<last_total_chunks, ADAMW_THREADS, 0, SN_STREAM>>>(
        (bf16 *)params, master, (const bf16 *)grads, (float *)m, (float *)v, dev_spans, nspans, k, 0, 0);
  }
  launchCheck();
}
