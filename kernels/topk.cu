// Exact top-k for evaluation: the fp32 score product and the merge of a block of candidates into
// running per-query lists, bit-identical to the CPU twin (host/backend/cpu/cpu_topk.c).
//
// Every candidate of a row, the nd new scores and the k old entries, gets one unique 64-bit key:
// the score's bits mapped so that unsigned order is float order (high 32 bits), then the tie key
// (low 32 bits); empty old entries get keys 1..k, below every real key. One block per row then
//   0. when the row's list is full, keeps only the new candidates above its k-th entry (the floor)
//      and, if they fit the sort buffer beside the old entries (the usual case past the first
//      document blocks), sorts those: one read of the scores,
//   1. else radix-selects the k-th largest key among the candidates at or above the floor's score,
//      most significant digit first: each pass histograms (in shared memory) the candidates that
//      start with the digits chosen so far and picks the digit holding the k-th; it stops as soon
//      as every candidate at or above that prefix fits the sort buffer (after two passes on real
//      scores; at the last digit exactly k do, keys being unique),
//   2. gathers those candidates (key >= prefix) into shared memory, bitonic-sorts them descending,
//      and writes the first k back.
#include "common.cuh"

#define TOPK_THREADS 1024
#define RADIX_PASSES 6
#define RADIX_MAX_BINS 4096  // 12-bit digits
#define SORT_CAP 4096        // candidates the final sort holds (a power of two)
#define SIGN_BIT 0x80000000u
#define EMPTY_IDX (-1)

// Room for k plus as many candidates tied with the k-th on the prefix, so a pass can stop early.
static_assert(SORT_CAP >= 2 * SN_TOPK_MAX_K, "the sort buffer must hold 2 * SN_TOPK_MAX_K");
static_assert((SORT_CAP & (SORT_CAP - 1)) == 0, "bitonic sort needs a power of two");
// The histogram lives in the sort buffer's key array until the gather.
static_assert(RADIX_MAX_BINS * sizeof(uint32_t) <= SORT_CAP * sizeof(uint64_t), "histogram too large");

// Digits, most significant first. None straddles bit 32, so passes over the score bits never read
// a tie key.
__constant__ int pass_shift[RADIX_PASSES] = {52, 40, 32, 20, 8, 0};
__constant__ int pass_bits[RADIX_PASSES] = {12, 12, 8, 12, 12, 8};

// ---- fp32 scores ---------------------------------------------------------------------------------------
// S (M, N) = A (M, K) · B (N, K)^T through cuBLASLt with CUBLAS_COMPUTE_32F: plain fp32 FMA, never
// TF32 (that would take CUBLAS_COMPUTE_32F_FAST_TF32).
void cuda_scores_f32(float *S, const float *A, const float *B, int M, int N, int K) {
  sn_cuda_matmul_f32(S, A, B, M, N, K, 0, 1, 1.0f, 0.0f);
}

// ---- keys ----------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t score_order_bits(float s) {
  uint32_t u = __float_as_uint(s == 0.0f ? 0.0f : s);  // -0.0 ranks (and is stored) as +0.0
  return (u & SIGN_BIT) ? ~u : (u | SIGN_BIT);
}
__device__ __forceinline__ float score_from_order_bits(uint32_t u) {
  return __uint_as_float((u & SIGN_BIT) ? (u & ~SIGN_BIT) : ~u);
}

struct topk_row {
  const float *scores;     // (nd) new candidates, candidate j = document col0 + j
  const float *old_score;  // (k) the running list
  const int32_t *old_idx;  // (k)
  const int32_t *tie_key;  // (N) by document, or NULL: the index itself
  int nd, k, col0;
};

// Key and document of candidate i of a row: the new candidates, then the old entries. FULL = false
// leaves the tie key out (zero), enough for digits above bit 32.
template <bool FULL>
__device__ __forceinline__ uint64_t candidate_key(const topk_row &r, int i, int32_t *idx) {
  float s;
  int32_t d;
  if (i < r.nd) {
    s = r.scores[i];
    d = r.col0 + i;
  } else {
    const int p = i - r.nd;
    d = r.old_idx[p];
    if (d < 0) {
      *idx = EMPTY_IDX;
      return (uint64_t)(p + 1);
    }
    s = r.old_score[p];
  }
  *idx = d;
  uint64_t key = (uint64_t)score_order_bits(s) << 32;
  if (FULL) key |= (uint32_t)(r.tie_key ? r.tie_key[d] : d);
  return key;
}

// ---- radix select ----------------------------------------------------------------------------------------
// hist[digit at shift] += 1 for each of the `total` candidates with score bits >= floor_hi whose
// key & mask == prefix.
template <bool FULL>
__device__ void histogram_pass(uint32_t *hist, const topk_row &r, int total, uint32_t floor_hi, uint64_t mask,
                               uint64_t prefix, int shift, int nbins) {
  // Plain shared atomics: on real scores (crowded into a few bins) they measured faster than
  // aggregating equal digits across the warp with __match_any_sync first.
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    int32_t d;
    const uint64_t key = candidate_key<FULL>(r, i, &d);
    if ((uint32_t)(key >> 32) >= floor_hi && (key & mask) == prefix)
      atomicAdd(&hist[(key >> shift) & (uint64_t)(nbins - 1)], 1u);
  }
}

// Appends (key, idx) at buf[offset + slot] for the lanes with keep set, slots handed out by one
// shared counter (one atomic per warp). Every lane of the warp must call it; slots past SORT_CAP
// are dropped (the caller sees the count).
__device__ __forceinline__ void append_kept(bool keep, uint64_t key, int32_t idx, uint64_t *sort_key,
                                            int32_t *sort_idx, int offset, int *counter) {
  const unsigned kept = __ballot_sync(FULL_MASK, keep);
  if (!kept) return;
  const int lane = threadIdx.x % WARP_SIZE;
  int base = 0;
  if (lane == 0) base = atomicAdd(counter, __popc(kept));
  base = __shfl_sync(FULL_MASK, base, 0);
  if (keep) {
    const int pos = offset + base + __popc(kept & ((1u << lane) - 1));
    if (pos < SORT_CAP) sort_key[pos] = key, sort_idx[pos] = idx;
  }
}

// Exclusive prefix sum of v over the block in thread order (blockDim.x <= 32 warps).
__device__ int block_exclusive_scan(int v, int *warp_sums) {
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int nwarps = blockDim.x / WARP_SIZE;
  int x = v;
#pragma unroll
  for (int o = 1; o < WARP_SIZE; o <<= 1) {
    const int y = __shfl_up_sync(FULL_MASK, x, o);
    if (lane >= o) x += y;
  }
  if (lane == WARP_SIZE - 1) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    const int own = lane < nwarps ? warp_sums[lane] : 0;
    int w = own;
#pragma unroll
    for (int o = 1; o < WARP_SIZE; o <<= 1) {
      const int y = __shfl_up_sync(FULL_MASK, w, o);
      if (lane >= o) w += y;
    }
    if (lane < nwarps) warp_sums[lane] = w - own;  // each lane rewrites only its own entry
  }
  __syncthreads();
  return x - v + warp_sums[warp];
}

struct digit_choice {
  int digit;  // bin holding the need-th largest matching candidate
  int above;  // matching candidates in higher bins (< need)
  int count;  // candidates in that bin
};

// Thread t owns bins in descending order from the top; the scan gives it the count above its
// bins, and the one thread whose bins cross `need` walks them. Ends with a barrier.
__device__ void choose_digit(const uint32_t *hist, int nbins, int need, digit_choice *out, int *warp_sums) {
  const int per = (nbins + blockDim.x - 1) / blockDim.x;
  const int first = threadIdx.x * per;  // rank from the top of this thread's first bin
  const int last = min(first + per, nbins);
  int local = 0;
  for (int t = first; t < last; t++) local += (int)hist[nbins - 1 - t];
  const int above = block_exclusive_scan(local, warp_sums);
  if (above < need && above + local >= need) {
    int cum = above;
    for (int t = first; t < last; t++) {
      const int b = nbins - 1 - t, h = (int)hist[b];
      if (cum + h >= need) {
        out->digit = b, out->above = cum, out->count = h;
        break;
      }
      cum += h;
    }
  }
  __syncthreads();
}

// ---- sort --------------------------------------------------------------------------------------------------
// key, idx (n) sorted by key descending in place; n a power of two.
__device__ void bitonic_sort_desc(uint64_t *key, int32_t *idx, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
        const int lo = 2 * t - (t & (stride - 1)), hi = lo + stride;
        const bool descending = (lo & size) == 0;  // the final merge (size = n) is descending
        const uint64_t a = key[lo], b = key[hi];
        if ((a < b) == descending) {
          key[lo] = b, key[hi] = a;
          const int32_t tmp = idx[lo];
          idx[lo] = idx[hi], idx[hi] = tmp;
        }
      }
      __syncthreads();
    }
  }
}

// Sorts the n gathered candidates (n >= k; buffer barrier-synced) descending, padded to a power
// of two with keys that sink, and writes the first k as the row's list. The old entries were all
// read before the caller's barrier.
__device__ void sort_and_write(uint64_t *sort_key, int32_t *sort_idx, int n, float *best_score, int32_t *best_idx,
                               int k) {
  int n2 = 1;
  while (n2 < n) n2 <<= 1;
  for (int i = n + threadIdx.x; i < n2; i += blockDim.x) sort_key[i] = 0, sort_idx[i] = EMPTY_IDX;
  __syncthreads();
  bitonic_sort_desc(sort_key, sort_idx, n2);
  for (int t = threadIdx.x; t < k; t += blockDim.x) {
    const int32_t d = sort_idx[t];
    best_idx[t] = d;
    best_score[t] = d < 0 ? -INFINITY : score_from_order_bits((uint32_t)(sort_key[t] >> 32));
  }
}

// ---- merge ---------------------------------------------------------------------------------------------
// One block per row of best_score, best_idx (nq, k) and scores (nq, nd).
__global__ void __launch_bounds__(TOPK_THREADS)
    topk_merge_kernel(float *best_score, int32_t *best_idx, const float *scores, int nd, int k, int col0,
                      const int32_t *tie_key) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint64_t *sort_key = (uint64_t *)smem_raw;             // (SORT_CAP)
  int32_t *sort_idx = (int32_t *)(sort_key + SORT_CAP);  // (SORT_CAP)
  uint32_t *hist = (uint32_t *)smem_raw;                 // (RADIX_MAX_BINS), over sort_key until the gather
  __shared__ int warp_sums[WARP_SIZE];
  __shared__ digit_choice choice;
  __shared__ int gathered;

  const size_t row = blockIdx.x;
  const topk_row r = {scores + row * nd, best_score + row * k, best_idx + row * k, tie_key, nd, k, col0};
  const int total = nd + k;
  // A full list's k-th entry is a floor: no candidate below it can enter.
  int32_t floor_doc;
  const uint64_t floor_key = candidate_key<true>(r, nd + k - 1, &floor_doc);  // one address: a broadcast
  const bool list_full = floor_doc >= 0;
  const uint32_t floor_hi = list_full ? (uint32_t)(floor_key >> 32) : 0;
  if (threadIdx.x == 0) gathered = 0;
  __syncthreads();

  if (list_full) {  // 0. the old entries, then the new candidates above the floor, if they fit
    for (int p = threadIdx.x; p < k; p += blockDim.x) {
      int32_t d;
      sort_key[p] = candidate_key<true>(r, nd + p, &d);
      sort_idx[p] = d;
    }
    for (int i0 = 0; i0 < nd; i0 += blockDim.x) {
      const int i = i0 + threadIdx.x;
      uint64_t key = 0;
      int32_t d = EMPTY_IDX;
      // the tie key is read only for scores equal to the floor's
      if (i < nd && score_order_bits(r.scores[i]) >= floor_hi) key = candidate_key<true>(r, i, &d);
      append_kept(key > floor_key, key, d, sort_key, sort_idx, k, &gathered);
    }
    __syncthreads();
    const int n = k + gathered;
    if (n <= SORT_CAP) {
      sort_and_write(sort_key, sort_idx, n, best_score + row * k, best_idx + row * k, k);
      return;
    }
    __syncthreads();  // everyone has read `gathered`
    if (threadIdx.x == 0) gathered = 0;
  }

  // 1. radix select among the candidates with score bits >= floor_hi (all of them when the list is
  // not full): the same set in every pass and in the gather
  uint64_t prefix = 0, mask = 0;  // digits chosen so far, and their bits
  int need = k, above = 0;        // still to take among the prefix's candidates; known above the prefix
  for (int pass = 0; pass < RADIX_PASSES; pass++) {
    const int shift = pass_shift[pass], nbins = 1 << pass_bits[pass];
    for (int b = threadIdx.x; b < nbins; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    if (shift >= 32) histogram_pass<false>(hist, r, total, floor_hi, mask, prefix, shift, nbins);
    else histogram_pass<true>(hist, r, total, floor_hi, mask, prefix, shift, nbins);
    __syncthreads();
    choose_digit(hist, nbins, need, &choice, warp_sums);
    const digit_choice c = choice;  // rewritten only after the next pass's barriers
    above += c.above, need -= c.above;
    prefix |= (uint64_t)c.digit << shift;
    mask |= (uint64_t)(nbins - 1) << shift;
    if (above + c.count <= SORT_CAP) break;
  }

  // 2. every candidate of the set with key >= prefix: exactly `above + count` (the guard in
  // append_kept only matters for duplicate tie keys, which the op does not allow). hist is dead:
  // choose_digit's barrier is behind us.
  for (int i0 = 0; i0 < total; i0 += blockDim.x) {
    const int i = i0 + threadIdx.x;
    uint64_t key = 0;
    int32_t d = EMPTY_IDX;
    if (i < total) key = candidate_key<true>(r, i, &d);
    append_kept(i < total && key >= prefix && (uint32_t)(key >> 32) >= floor_hi, key, d, sort_key, sort_idx, 0,
                &gathered);
  }
  __syncthreads();
  sort_and_write(sort_key, sort_idx, min(gathered, SORT_CAP), best_score + row * k, best_idx + row * k, k);
}

void cuda_topk_merge(float *best_score, int32_t *best_idx, const float *scores, int nq, int nd, int k, int col0,
                     const int32_t *tie_key) {
  if (k < 1 || k > SN_TOPK_MAX_K || nd < 0) {
    fprintf(stderr, "error: %s:%d: topk_merge: k = %d outside [1, %d] or nd = %d < 0\n", __FILE__, __LINE__, k,
            SN_TOPK_MAX_K, nd);
    exit(1);
  }
  if (nq == 0) return;
  const size_t smem = SORT_CAP * (sizeof(uint64_t) + sizeof(int32_t));
  static std::atomic<bool> smem_opted_in{false};  // above the default 48 KiB with the static part
  allow_smem(topk_merge_kernel, smem, &smem_opted_in);
  topk_merge_kernel<<<nq, TOPK_THREADS, smem, SN_STREAM>>>(best_score, best_idx, scores, nd, k, col0, tie_key);
  launchCheck();
}
