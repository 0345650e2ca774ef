// Embedding lookup, forward and backward. The backward is deterministic without float atomics: the
// token ids are grouped by id in token order (a stable sort), and each distinct id's rows of dout
// are summed in fp32 in a fixed order and added into dtable once.
//
// Backward, three launches (replacing an iota kernel, a cub device radix sort of several small
// kernels, and one block of 128 threads per sorted position, most of them idle):
//   1. tile sort: one block per tile of 1024 consecutive tokens (4096 above 32k tokens) sorts its ids
//      with a stable block radix sort: each tile holds (id, token) in (id, token) order.
//   2. merge: thread per element; binary searches in every tile give its position in the global
//      (id, token) order and the bounds of its run of equal ids; writes (id, token, run start, run
//      end) per sorted position and zeroes the combine counters.
//   3. sums: warp per (sorted position, column piece); a warp works only where a segment starts
//      (every EMB_SEG rows of a run, counted from the run start). A run of <= EMB_SEG rows is one
//      segment: dtable row = old row + its dout rows in token order, fp32, rounded once (the bulk of
//      the traffic; the old row and the dout rows are loaded together). Longer runs write fp32
//      segment partials; the last segment of each group of EMB_FAN_IN to arrive (integer counter)
//      adds the group's partials in segment order, level by level, and the last one adds into dtable.
//      The order of every sum is fixed by the run lengths alone: bit-identical results run to run,
//      whichever warp arrives last.
#include <cub/block/block_radix_sort.cuh>

#include "common.cuh"

#define EMBED_THREADS 128

// out (T, C) = table[ids] (V, C), or += when accumulate. One block per token. Launched with
// programmatic dependent launch: BERT adds three tables in a row, each a few microseconds.
__global__ void embedding_forward_kernel(bf16 *out, const int32_t *ids, const bf16 *table, int C,
                                         int accumulate, int packed) {
  pdl_wait();  // out (when accumulating) and the uploaded ids come before
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
  launch_pdl(embedding_forward_kernel, dim3(T), dim3(EMBED_THREADS), 0, (bf16 *)out, ids, (const bf16 *)table, C,
             accumulate, packed);
  launchCheck();
}

// ---- backward ------------------------------------------------------------------------------------------
#define EMB_SORT_ITEMS 4              // ids per thread in the tile sort
#define EMB_SORT_THREADS_SMALL 256    // tile of 1024 ids, for T <= EMB_SMALL_TILE_MAX_T
#define EMB_SORT_BITS_SMALL 6         // radix bits per pass: 3 passes for ids < 2^18 (32 KB of counters)
#define EMB_SORT_THREADS_LARGE 1024   // tile of 4096 ids above that (fewer tiles to search)
#define EMB_SORT_BITS_LARGE 4         // 1024 threads: 4-bit digits keep the counters at 32 KB
#define EMB_SMALL_TILE_MAX_T 32768    // 32 tiles of 1024
#define EMB_MERGE_THREADS 128
#define EMB_MERGE_ILP 16              // tiles searched at once by one thread (independent loads in flight)
#define EMB_MERGE_SAMPLES 64          // ids per tile staged in shared memory for the first search steps
#define EMB_MERGE_SAMPLED_TILES 32    // staged when there are at most this many tiles (8 KB)
#define EMB_SEG 16                    // rows of a run one warp sums; runs up to this long take the direct path
#define EMB_FAN_IN 32                 // partials one combining warp adds per level
#define EMB_MAX_LEVELS 8              // EMB_SEG * EMB_FAN_IN^8 >> 2^31 tokens
#define EMB_WARPS 8                   // warps (sorted positions) per block of the sums kernel
#define EMB_UNITS 2                   // column units (16-byte packs, or single columns) per lane
#define EMB_CHUNK (EMB_UNITS * WARP_SIZE)  // units of one column piece (one warp)
#define EMB_ID_PAD 0xffffffffu        // sorts after every id; reads past a tile's end see it

// Tile sort: block b sorts ids [b * TILE, b * TILE + TILE) by id, stably (token order within equal
// ids). sorted_ids / sorted_tokens (T) hold the tiles one after the other. Padding keys of a short
// last tile sort after every real id (ties with a real id keep the real one first: stable), so the
// first n sorted entries of a tile are exactly its n real tokens.
template <int THREADS, int RADIX_BITS>
__global__ void __launch_bounds__(THREADS)
    embedding_tile_sort_kernel(uint32_t *sorted_ids, int32_t *sorted_tokens, const int32_t *ids, int T, int end_bit) {
  typedef cub::BlockRadixSort<uint32_t, THREADS, EMB_SORT_ITEMS, int32_t, RADIX_BITS> TileSort;
  __shared__ typename TileSort::TempStorage temp;
  const int base = blockIdx.x * THREADS * EMB_SORT_ITEMS;
  uint32_t keys[EMB_SORT_ITEMS];
  int32_t tokens[EMB_SORT_ITEMS];
#pragma unroll
  for (int k = 0; k < EMB_SORT_ITEMS; k++) {  // blocked arrangement: thread i holds items i*ITEMS..
    const int t = base + threadIdx.x * EMB_SORT_ITEMS + k;
    keys[k] = t < T ? (uint32_t)ids[t] : EMB_ID_PAD;
    tokens[k] = t;
  }
  TileSort(temp).SortBlockedToStriped(keys, tokens, 0, end_bit);
#pragma unroll
  for (int k = 0; k < EMB_SORT_ITEMS; k++) {  // striped: item k of thread i has rank k*THREADS + i
    const int i = base + k * THREADS + threadIdx.x;
    if (i < T) sorted_ids[i] = keys[k], sorted_tokens[i] = tokens[k];
  }
}

// Entry idx of a sorted tile of n ids; EMB_ID_PAD past the end.
__device__ __forceinline__ uint32_t tile_id(const uint32_t *tile, int n, int idx) {
  return idx < n ? __ldg(tile + idx) : EMB_ID_PAD;
}
// Number of ids < key in a sorted tile of n <= TILE ids (TILE a power of two; key < EMB_ID_PAD).
template <int TILE>
__device__ __forceinline__ int tile_lower_bound(const uint32_t *tile, int n, uint32_t key) {
  int lo = 0;
#pragma unroll
  for (int step = TILE / 2; step > 0; step >>= 1)
    if (tile_id(tile, n, lo + step - 1) < key) lo += step;
  return lo + (tile_id(tile, n, lo) < key ? 1 : 0);  // lo <= TILE - 1 here; this settles lo = TILE
}

// Merge: element e = (tile j, rank q) with id x and token t. Over all tiles, lo_i = ids < x in tile i
// and up_i = ids <= x; tokens of equal id in earlier tiles come first (tiles are consecutive token
// ranges), so its position in the global (id, token) order is
//   sum_{i<j} up_i + q + sum_{i>j} lo_i,
// and its run of equal ids is [sum_i lo_i, sum_i up_i). runs[pos] = (id, token, run start, run end);
// counters[c * T + pos] = 0 for the sums kernel's ncounters = levels * pieces combine counters.
// The lower bounds use binary lifting (steps TILE/2 .. 1, probe lo + step - 1). While step >= the
// sample stride the probes are the last ids of stride-blocks; with at most EMB_MERGE_SAMPLED_TILES
// tiles those come from EMB_MERGE_SAMPLES per tile staged in shared memory (the first 6 of 10 steps at
// TILE = 1024), the rest from L1/L2.
template <int TILE>
__global__ void __launch_bounds__(EMB_MERGE_THREADS)
    embedding_merge_kernel(int4 *runs, int *counters, const uint32_t *sorted_ids, const int32_t *sorted_tokens,
                           int T, int ncounters) {
  constexpr int STRIDE = TILE / EMB_MERGE_SAMPLES;
  __shared__ uint32_t samples[EMB_MERGE_SAMPLED_TILES * EMB_MERGE_SAMPLES];  // (tile, m): id m*STRIDE + STRIDE-1
  const int tiles = (T + TILE - 1) / TILE;
  const bool sampled = tiles <= EMB_MERGE_SAMPLED_TILES;  // uniform
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  const bool valid = e < T;
  const int j = e / TILE, q = e % TILE;
  const uint32_t *own = sorted_ids + (size_t)j * TILE;
  const int own_n = valid ? min(TILE, T - j * TILE) : 0;
  // This element and its neighbours in its tile (padding outside), loaded before the staging barrier.
  const uint32_t x = tile_id(own, own_n, q), prev = q > 0 ? tile_id(own, own_n, q - 1) : EMB_ID_PAD;
  const uint32_t next = tile_id(own, own_n, q + 1);
  if (sampled) {
    for (int k = threadIdx.x; k < tiles * EMB_MERGE_SAMPLES; k += blockDim.x) {
      const int i = k / EMB_MERGE_SAMPLES, idx = (k % EMB_MERGE_SAMPLES) * STRIDE + STRIDE - 1;
      samples[k] = tile_id(sorted_ids + (size_t)i * TILE, min(TILE, T - i * TILE), idx);
    }
    __syncthreads();
  }
  if (!valid) return;
  // Own tile: the neighbours say whether x repeats here (mostly not); search only if it does.
  int lo_own = q, up_own = q + 1;
  if (prev == x) lo_own = tile_lower_bound<TILE>(own, own_n, x);
  if (next == x) up_own = tile_lower_bound<TILE>(own, own_n, x + 1);
  int run_start = lo_own, run_end = up_own, pos = q;
  for (int i0 = 0; i0 < tiles; i0 += EMB_MERGE_ILP) {
    // EMB_MERGE_ILP lower-bound searches in step: their loads are independent. A skipped tile (own,
    // or past the last) gets n = 0: all its reads are padding, no loads.
    int lo[EMB_MERGE_ILP], n[EMB_MERGE_ILP];
#pragma unroll
    for (int g = 0; g < EMB_MERGE_ILP; g++) {
      const int i = i0 + g;
      lo[g] = 0;
      n[g] = (i < tiles && i != j) ? min(TILE, T - i * TILE) : 0;
    }
#pragma unroll
    for (int step = TILE / 2; step > 0; step >>= 1) {
#pragma unroll
      for (int g = 0; g < EMB_MERGE_ILP; g++) {
        // probe lo + step - 1; for step >= STRIDE, lo is a multiple of STRIDE: sample (lo + step) / STRIDE - 1
        uint32_t v;
        if (step >= STRIDE && sampled) {
          const int k = n[g] > 0 ? (i0 + g) * EMB_MERGE_SAMPLES + (lo[g] + step) / STRIDE - 1 : 0;  // in bounds
          v = n[g] > 0 ? samples[k] : EMB_ID_PAD;
        } else {
          v = tile_id(sorted_ids + (size_t)(i0 + g) * TILE, n[g], lo[g] + step - 1);
        }
        if (v < x) lo[g] += step;
      }
    }
#pragma unroll
    for (int g = 0; g < EMB_MERGE_ILP; g++) {
      const int i = i0 + g;
      if (n[g] == 0) continue;
      const uint32_t *tile = sorted_ids + (size_t)i * TILE;
      const uint32_t v = tile_id(tile, n[g], lo[g]);
      int up;
      if (v < x) up = ++lo[g];  // lo was TILE - 1: every id of the tile is < x
      else if (v == x) up = tile_lower_bound<TILE>(tile, n[g], x + 1);  // x repeats in tile i
      else up = lo[g];
      run_start += lo[g], run_end += up;
      pos += i < j ? up : lo[g];
    }
  }
  runs[pos] = make_int4((int)x, sorted_tokens[e], run_start, run_end);
  for (int c = 0; c < ncounters; c++) counters[(size_t)c * T + pos] = 0;
}

// ---- sums kernel helpers: a "unit" is a 16-byte pack of 8 columns (VEC = 8) or one column (VEC = 1).
// Packs travel as uint4 (4 registers; a struct of 8 bf16 can take 8) and are widened on use.
template <int VEC> struct emb_unit;
template <> struct emb_unit<BF16_PER_PACK> { typedef uint4 type; };
template <> struct emb_unit<1> { typedef bf16 type; };

template <int VEC>
__device__ __forceinline__ typename emb_unit<VEC>::type load_unit(const bf16 *row, int u) {
  if constexpr (VEC == BF16_PER_PACK) return *reinterpret_cast<const uint4 *>(row + (size_t)u * VEC);
  else return row[u];
}
template <int VEC>
__device__ __forceinline__ void add_unit(float (&acc)[VEC], const typename emb_unit<VEC>::type &x) {
  if constexpr (VEC == BF16_PER_PACK) {
    add_bf16x8_words(acc, x);
  } else {
    acc[0] += bf2f(x);
  }
}
// row[u] = acc, rounded.
template <int VEC>
__device__ __forceinline__ void store_unit(bf16 *row, int u, const float (&acc)[VEC]) {
  if constexpr (VEC == BF16_PER_PACK) {
    uint32_t o[4];
#pragma unroll
    for (int k = 0; k < 4; k++) o[k] = pack_bf16x2(acc[2 * k], acc[2 * k + 1]);
    *reinterpret_cast<uint4 *>(row + (size_t)u * VEC) = make_uint4(o[0], o[1], o[2], o[3]);
  } else {
    row[u] = f2bf(acc[0]);
  }
}
// row[u] = old + acc, rounded once.
template <int VEC>
__device__ __forceinline__ void store_unit_sum(bf16 *row, int u, const typename emb_unit<VEC>::type &old,
                                               const float (&acc)[VEC]) {
  if constexpr (VEC == BF16_PER_PACK) {
    const uint32_t w[4] = {old.x, old.y, old.z, old.w};
    uint32_t o[4];
#pragma unroll
    for (int k = 0; k < 4; k++) o[k] = pack_bf16x2(bf16_lo(w[k]) + acc[2 * k], bf16_hi(w[k]) + acc[2 * k + 1]);
    *reinterpret_cast<uint4 *>(row + (size_t)u * VEC) = make_uint4(o[0], o[1], o[2], o[3]);
  } else {
    row[u] = f2bf(bf2f(old) + acc[0]);
  }
}
// fp32 partials: read from L2 (written by other SMs), never from a stale L1 line.
template <int VEC>
__device__ __forceinline__ void add_partial(float (&acc)[VEC], const float *p) {
  if constexpr (VEC == BF16_PER_PACK) {
    const float4 a = __ldcg(reinterpret_cast<const float4 *>(p)), b = __ldcg(reinterpret_cast<const float4 *>(p) + 1);
    acc[0] += a.x, acc[1] += a.y, acc[2] += a.z, acc[3] += a.w;
    acc[4] += b.x, acc[5] += b.y, acc[6] += b.z, acc[7] += b.w;
  } else {
    acc[0] += __ldcg(p);
  }
}
template <int VEC>
__device__ __forceinline__ void store_partial(float *p, const float (&acc)[VEC]) {
  if constexpr (VEC == BF16_PER_PACK) {
    __stcg(reinterpret_cast<float4 *>(p), make_float4(acc[0], acc[1], acc[2], acc[3]));
    __stcg(reinterpret_cast<float4 *>(p) + 1, make_float4(acc[4], acc[5], acc[6], acc[7]));
  } else {
    __stcg(p, acc[0]);
  }
}

// Loads rows r and r + 1 (if `second`) of the segment over the chunk's units (lane's units
// u0 + lane + 32 k); row r's token is in lane r of `token`.
template <int VEC>
__device__ __forceinline__ void load_row_pair(typename emb_unit<VEC>::type (&x0)[EMB_UNITS],
                                              typename emb_unit<VEC>::type (&x1)[EMB_UNITS], const bf16 *dout,
                                              int token, int r, bool second, int C, int u0, int units, int lane) {
  const int tok0 = __shfl_sync(FULL_MASK, token, r), tok1 = __shfl_sync(FULL_MASK, token, second ? r + 1 : r);
  const bf16 *src0 = dout + (size_t)tok0 * C, *src1 = dout + (size_t)tok1 * C;
#pragma unroll
  for (int k = 0; k < EMB_UNITS; k++) {
    const int u = u0 + lane + k * WARP_SIZE;
    if (u < units) {
      x0[k] = load_unit<VEC>(src0, u);
      if (second) x1[k] = load_unit<VEC>(src1, u);
    }
  }
}
template <int VEC>
__device__ __forceinline__ void add_row_pair(float (&acc)[EMB_UNITS][VEC], const typename emb_unit<VEC>::type (&x0)[EMB_UNITS],
                                             const typename emb_unit<VEC>::type (&x1)[EMB_UNITS], bool second, int u0,
                                             int units, int lane) {
#pragma unroll
  for (int k = 0; k < EMB_UNITS; k++) {
    const int u = u0 + lane + k * WARP_SIZE;
    if (u < units) {
      add_unit<VEC>(acc[k], x0[k]);
      if (second) add_unit<VEC>(acc[k], x1[k]);
    }
  }
}

// acc = base row (if base; else 0) + the segment's rows in order, over the chunk's units. The base
// row and the first two rows are loaded together (the whole work of a 1- or 2-row segment in one
// round trip); then two rows at a time.
template <int VEC>
__device__ __forceinline__ void sum_segment_rows(float (&acc)[EMB_UNITS][VEC], const bf16 *base, const bf16 *dout,
                                                 int token, int rows, int C, int u0, int units, int lane) {
  typedef typename emb_unit<VEC>::type unit;
  unit x0[EMB_UNITS], x1[EMB_UNITS], b[EMB_UNITS];
  bool second = rows > 1;  // warp-uniform
#pragma unroll
  for (int k = 0; k < EMB_UNITS; k++) {
    const int u = u0 + lane + k * WARP_SIZE;
    if (base != nullptr && u < units) b[k] = load_unit<VEC>(base, u);
  }
  load_row_pair<VEC>(x0, x1, dout, token, 0, second, C, u0, units, lane);
#pragma unroll
  for (int k = 0; k < EMB_UNITS; k++) {
    const int u = u0 + lane + k * WARP_SIZE;
#pragma unroll
    for (int c = 0; c < VEC; c++) acc[k][c] = 0.0f;
    if (base != nullptr && u < units) add_unit<VEC>(acc[k], b[k]);
  }
  add_row_pair<VEC>(acc, x0, x1, second, u0, units, lane);
#pragma unroll 1
  for (int r = 2; r < rows; r += 2) {
    second = r + 1 < rows;
    load_row_pair<VEC>(x0, x1, dout, token, r, second, C, u0, units, lane);
    add_row_pair<VEC>(acc, x0, x1, second, u0, units, lane);
  }
}

// Partial slot of the segment starting at sorted position g of the run starting at run_start. Only
// runs longer than EMB_SEG use slots; within one EMB_SEG-aligned window of positions at most two of
// their segments start: a continuation segment (g > run_start) and then a run's first segment
// (g == run_start; that run leaves the window). So 2 slots per window, T/EMB_SEG windows.
__device__ __forceinline__ size_t emb_slot(long long g, int run_start) {
  return (size_t)(2 * (g / EMB_SEG) + (g == run_start ? 1 : 0));
}

// dtable (V, C) += sums over runs. runs (T) from the merge kernel; partials (2 * ceil(T / EMB_SEG), C)
// fp32; counters (levels, pieces, T) zero. Warp = (sorted position p, column piece): a piece is
// EMB_CHUNK units, EMB_UNITS per lane (C = 896: 2 pieces), so a warp's loads are all in flight at
// once and its registers stay few; pieces are independent down to their own combine counters.
// VEC = 8 needs C % 8 == 0 and 16-byte aligned rows.
template <int VEC>
__global__ void __launch_bounds__(EMB_WARPS *WARP_SIZE)
    embedding_backward_sums_kernel(bf16 *dtable, const bf16 *dout, const int4 *runs, float *partials, int *counters,
                                   int T, int C, int pieces) {
  const int lane = threadIdx.x % WARP_SIZE;
  const long long work = (long long)blockIdx.x * EMB_WARPS + threadIdx.x / WARP_SIZE;
  if (work >= (long long)T * pieces) return;  // whole warp
  const int p = (int)(work / pieces), piece = (int)(work % pieces);
  const int4 info = runs[p];  // id, token, run start, run end (one broadcast load)
  const int run_start = info.z, run_end = info.w;
  if ((p - run_start) % EMB_SEG != 0) return;  // inside a segment: its first row's warps sum it
  const int rows = min(EMB_SEG, run_end - p);
  const int nseg = (run_end - run_start + EMB_SEG - 1) / EMB_SEG;
  const int units = C / VEC, u0 = piece * EMB_CHUNK;
  bf16 *dst = dtable + (size_t)info.x * C;
  int token = info.y;  // lane r: token of the segment's row r
  if (rows > 1 && lane < rows) token = runs[p + lane].y;
  float acc[EMB_UNITS][VEC];

  if (nseg == 1) {  // the run is this segment: dtable row = (old row + its rows in order), rounded once
    sum_segment_rows<VEC>(acc, dst, dout, token, rows, C, u0, units, lane);
#pragma unroll
    for (int k = 0; k < EMB_UNITS; k++) {
      const int u = u0 + lane + k * WARP_SIZE;
      if (u < units) store_unit<VEC>(dst, u, acc[k]);
    }
    return;
  }

  // Long run: this segment's fp32 sum into its slot, then combine by levels.
  sum_segment_rows<VEC>(acc, nullptr, dout, token, rows, C, u0, units, lane);
  float *mine = partials + emb_slot(p, run_start) * C;
#pragma unroll
  for (int k = 0; k < EMB_UNITS; k++) {
    const int u = u0 + lane + k * WARP_SIZE;
    if (u < units) store_partial<VEC>(mine + (size_t)u * VEC, acc[k]);
  }
  // Level l: items are sums of EMB_FAN_IN^l consecutive segments (item i's partial is in the slot of
  // its first segment, i * span); groups of EMB_FAN_IN items. The last item of a group to arrive adds
  // the group's partials in item order and stores the sum in the group's first slot (or, at the top,
  // adds it into dtable: old row + total, rounded once).
  long long item = (p - run_start) / EMB_SEG, count = nseg, span = 1;
  for (int level = 0;; level++) {
    __threadfence();  // this lane's partial stores are visible device-wide before the arrival
    __syncwarp();
    const long long first = item / EMB_FAN_IN * EMB_FAN_IN;
    const int members = (int)min((long long)EMB_FAN_IN, count - first);
    const long long first_seg = first * span;
    int arrived = 0;
    if (lane == 0)
      arrived = atomicAdd(&counters[((size_t)level * pieces + piece) * T + run_start + first_seg * EMB_SEG], 1);
    arrived = __shfl_sync(FULL_MASK, arrived, 0);
    if (arrived != members - 1) return;  // not the last of its group
    __threadfence();                     // the other members' partials are read after their arrivals
    const long long next_count = (count + EMB_FAN_IN - 1) / EMB_FAN_IN;
#pragma unroll
    for (int k = 0; k < EMB_UNITS; k++)
#pragma unroll
      for (int c = 0; c < VEC; c++) acc[k][c] = 0.0f;
#pragma unroll 1
    for (int m = 0; m < members; m++) {
      const float *src = partials + emb_slot(run_start + (first + m) * span * EMB_SEG, run_start) * C;
#pragma unroll
      for (int k = 0; k < EMB_UNITS; k++) {
        const int u = u0 + lane + k * WARP_SIZE;
        if (u < units) add_partial<VEC>(acc[k], src + (size_t)u * VEC);
      }
    }
    float *group_slot = partials + emb_slot(run_start + first_seg * EMB_SEG, run_start) * C;
#pragma unroll
    for (int k = 0; k < EMB_UNITS; k++) {
      const int u = u0 + lane + k * WARP_SIZE;
      if (u >= units) continue;
      if (next_count == 1) store_unit_sum<VEC>(dst, u, load_unit<VEC>(dst, u), acc[k]);
      else store_partial<VEC>(group_slot + (size_t)u * VEC, acc[k]);
    }
    if (next_count == 1) return;
    item = first / EMB_FAN_IN, count = next_count, span *= EMB_FAN_IN;
  }
}

template <int THREADS, int RADIX_BITS>
static void embedding_backward_launch(bf16 *dtable, const bf16 *dout, const int32_t *ids, int T, int C, int V) {
  const int tile = THREADS * EMB_SORT_ITEMS, tiles = ceil_div_int(T, tile);
  int end_bit = 1;  // only the bits that ids < V can set take part in the sort
  while (end_bit < 32 && ((uint64_t)1 << end_bit) < (uint64_t)V) end_bit++;
  int levels = 1;  // combine levels: EMB_SEG * EMB_FAN_IN^levels >= T
  for (long long cover = (long long)EMB_SEG * EMB_FAN_IN; cover < T && levels < EMB_MAX_LEVELS; cover *= EMB_FAN_IN)
    levels++;
  const int packed = C % BF16_PER_PACK == 0 && aligned16(dtable) && aligned16(dout);
  const int pieces = ceil_div_int(packed ? C / BF16_PER_PACK : C, EMB_CHUNK);
  const size_t slots = 2 * (size_t)ceil_div_int(T, EMB_SEG);
  // Scratch (256-byte aligned parts): sorted ids and tokens (T each), runs (T int4), counters
  // (levels, pieces, T), partials (slots, C) fp32.
  const size_t align = 256;
  const size_t ids_bytes = ((size_t)T * sizeof(uint32_t) + align - 1) / align * align;
  const size_t runs_bytes = ((size_t)T * sizeof(int4) + align - 1) / align * align;
  const size_t counter_bytes = ((size_t)levels * pieces * T * sizeof(int) + align - 1) / align * align;
  const size_t off_tokens = ids_bytes, off_runs = 2 * ids_bytes, off_counters = off_runs + runs_bytes;
  const size_t off_partials = off_counters + counter_bytes;
  char *base = (char *)sn_cuda_scratch(SCRATCH_SORT, off_partials + slots * C * sizeof(float));
  uint32_t *sorted_ids = (uint32_t *)base;
  int32_t *sorted_tokens = (int32_t *)(base + off_tokens);
  int4 *runs = (int4 *)(base + off_runs);
  int *counters = (int *)(base + off_counters);
  float *partials = (float *)(base + off_partials);

  embedding_tile_sort_kernel<THREADS, RADIX_BITS><<<tiles, THREADS, 0, SN_STREAM>>>(sorted_ids, sorted_tokens, ids, T,
                                                                                  end_bit);
  launchCheck();
  embedding_merge_kernel<THREADS * EMB_SORT_ITEMS><<<ceil_div_int(T, EMB_MERGE_THREADS), EMB_MERGE_THREADS, 0,
                                                     SN_STREAM>>>(runs, counters, sorted_ids, sorted_tokens, T,
                                                                  levels * pieces);
  launchCheck();
  const int blocks = ceil_div_int((long long)T * pieces, EMB_WARPS);
  if (packed)
    embedding_backward_sums_kernel<BF16_PER_PACK><<<blocks, EMB_WARPS * WARP_SIZE, 0, SN_STREAM>>>(
        dtable, dout, runs, partials, counters, T, C, pieces);
  else
    embedding_backward_sums_kernel<1><<<blocks, EMB_WARPS * WARP_SIZE, 0, SN_STREAM>>>(dtable, dout, runs, partials,
                                                                                       counters, T, C, pieces);
  launchCheck();
}

size_t cuda_embedding_scratch_bytes(int T, int C) {
  // the layout of the launch below at its largest: every level, unpacked column pieces
  const size_t align = 256, ids = ((size_t)T * sizeof(uint32_t) + align - 1) / align * align;
  const size_t runs = ((size_t)T * sizeof(int4) + align - 1) / align * align;
  const size_t counters = (size_t)EMB_MAX_LEVELS * ceil_div_int(C, EMB_CHUNK) * T * sizeof(int) + align;
  return 2 * ids + runs + counters + 2 * (size_t)ceil_div_int(T, EMB_SEG) * C * sizeof(float);
}

void cuda_embedding_backward(void *dtable, const void *dout, const int32_t *ids, int T, int C, int V) {
  if (T == 0 || C == 0) return;
  if (T <= EMB_SMALL_TILE_MAX_T)
    embedding_backward_launch<EMB_SORT_THREADS_SMALL, EMB_SORT_BITS_SMALL>((bf16 *)dtable, (const bf16 *)dout, ids, T,
                                                                           C, V);
  else
    embedding_backward_launch<EMB_SORT_THREADS_LARGE, EMB_SORT_BITS_LARGE>((bf16 *)dtable, (const bf16 *)dout, ids, T,
                                                                           C, V);
}
