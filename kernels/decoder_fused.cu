// decoder_fused: the whole inference forward of a decoder over at most 32 tokens in one launch (ops.h
// decoder_fused_forward states the maths): a query through the 0.5B tower (C 896, I 4864, 24
// blocks) or a distilled student. One persistent grid, a block per multiprocessor, launched
// cooperatively so that every block is resident and they can wait for each other.
// Why: a 32-token query through the 0.5B tower is about 240 kernels on the general path, 39 µs a
// block in a CUDA graph on the H100 against 9 µs of weight reads at the copy rate (docs/PERFORMANCE.md):
// each kernel's launch, ramp and tail cost more than its work. Here a block costs five grid barriers
// and the weights stream continuously:
// - every projection is split over the blocks by output n-tiles of 8 rows (mma.sync m16n8k16, fp32
//   accumulation); a block's share of the weights is copied into its shared memory (cp.async, which
//   holds no registers) as soon as the region it goes to is free, so each share is in flight during
//   the phases and barriers before the one that uses it: q|k|v and o take turns in one region,
//   gate|up and down in the other, and gate|up's (the largest) starts a whole block ahead;
// - the activations ((T, C) rows, at most 32) live in global memory, where at this size they stay
//   in L2; each block copies the rows a phase reads into its shared memory (loads that bypass L1, as
//   other blocks wrote them) and writes its output columns back;
// - down is split in two dimensions (column groups x slices of the MLP's width), each unit's fp32
//   partial sums written out; the last unit of a column group to finish (an acq_rel counter) adds
//   the group's partials in slice order (deterministic), the bias and the residual.
// Phases of a decoder block, each ended by a grid barrier: A rmsnorm + q|k|v; B attention (RoPE as
// it reads); C o_proj + residual; D rmsnorm + gate|up + SwiGLU; E down and its sum + residual.
// Values are rounded to bf16 where the unfused ops store them, so the result is the general path's
// within bf16 rounding of the sums' order.
// Measured on the H100 (docs/PERFORMANCE.md, session 12): 1210 µs at 32 tokens and 848 µs at one
// for the 24 blocks, against 0.94 ms for the unfused path's whole query, so it stays opt-in; the
// student 175 µs at 32 tokens against 0.16 ms. A barrier costs 0.7-1.0 µs; ncu puts the rest in
// latency chains inside each phase (staging rows, the norm, warps idle at a block's barriers), not
// in the products (SN_FUSED_TRACE=N shows where a launch's time goes, phase by phase). Two designs
// measured slower and were removed (docs/DESIGN.md): the student in one thread-block cluster (265
// against 175 µs) and weights streamed from memory straight into registers with L2 prefetches
// (1390-1736 against 1210 µs).
#include <algorithm>
#include <atomic>
#include <climits>
#include <mutex>

#include "activations.cuh"

#define DF_MMA_ROWS 16        // rows of an mma m-tile
#define DF_MMA_K 16           // k of an mma step
#define DF_NTILE 8            // columns of an mma n-tile: 8 weight rows
#define DF_ROWS SN_DECODER_FUSED_MAX_ROWS  // activation rows held: two m-tiles
#define DF_HEAD_DIM 64        // the attention's lane layout: a lane holds one rotation pair of a head
#define DF_ROW_PAD 8          // bf16 appended to a row whose width is a multiple of 16: its stride is
                              // then 4 words past a multiple of 8, so the fragment loads of rows
                              // g = 0..7 (4 words each) hit 32 banks
#define DF_KEY_PAD 2          // bf16 appended to a rotated key row: 33 words, so lanes reading keys
                              // 0..31 at one column hit 32 banks
#define DF_TABLE_PAD 1        // floats appended to a row of the angle table
#define DF_MAX_LAYERS SN_DECODER_FUSED_MAX_LAYERS  // blocks passed in the kernel's parameters (80 bytes each)
#define DF_SMEM_ALIGN 16
#define DF_PLAN_CACHE 8       // decoder shapes a process plans for (a tower and a student or two)

static_assert(DF_HEAD_DIM / 2 == WARP_SIZE, "a lane holds one rotation pair of a head");
static_assert(DF_ROWS == 2 * DF_MMA_ROWS, "rows are one or two m-tiles");

struct df_block {
  const bf16 *norm_attn_w, *qkv_w, *qkv_b, *o_w, *o_b, *norm_mlp_w, *up_w, *up_b, *down_w, *down_b;
};

__host__ __device__ constexpr size_t df_round(size_t bytes) {
  return (bytes + DF_SMEM_ALIGN - 1) / DF_SMEM_ALIGN * DF_SMEM_ALIGN;
}
// Carves consecutive aligned pieces out of base (NULL: only counts the bytes, in `at`).
struct df_carver {
  unsigned char *base;
  size_t at;
  template <typename T>
  __host__ __device__ T *take(size_t count) {
    unsigned char *p = base ? base + at : nullptr;
    at += df_round(count * sizeof(T));
    return reinterpret_cast<T *>(p);
  }
};

// ---- small helpers ---------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t lds32(const bf16 *p) { return *reinterpret_cast<const uint32_t *>(p); }
__device__ __forceinline__ uint32_t ldg32(const bf16 *p) { return __ldg(reinterpret_cast<const unsigned int *>(p)); }
__device__ __forceinline__ float bias_at(const bf16 *bias, int n) { return bias ? bf2f(bias[n]) : 0.0f; }
__device__ __forceinline__ float round_bf16(float v) { return bf2f(f2bf(v)); }

// Calls f(row, column, v0, v1) for the accumulator pairs of rows < T: lane (g, q) holds columns
// n0 + 2q, + 1 of rows row0 + g and row0 + g + 8 of the m-tile.
template <typename F>
__device__ __forceinline__ void for_each_pair(const float (&acc)[4], int n0, int T, int g, int q, F f, int row0) {
#pragma unroll
  for (int hh = 0; hh < 2; hh++) {
    const int row = row0 + g + 8 * hh;
    if (row < T) f(row, n0 + 2 * q, acc[2 * hh], acc[2 * hh + 1]);
  }
}

// The n-tiles [begin, end) of a projection split over `parts` workers: worker `rank`'s share.
struct df_range {
  int begin, end;
};
__host__ __device__ __forceinline__ int df_share(int tiles, int parts) { return (tiles + parts - 1) / parts; }
__device__ __forceinline__ df_range block_tiles(int tiles, int rank, int parts) {
  const int per = df_share(tiles, parts);
  return {min(tiles, rank * per), min(tiles, (rank + 1) * per)};
}

// dst rows t = first, first + step, ... < T (stride dst_ld) = bf16(src * rstd * weight) as
// rmsnorm_forward computes it; a warp a row. src is shared memory; dst may be src.
__device__ inline void norm_rows(bf16 *dst, int dst_ld, const bf16 *src, int src_ld, const bf16 *weight, int first,
                                 int step, int T, int C, float eps, int lane) {
  for (int t = first; t < T; t += step) {
    const bf16 *x = src + (size_t)t * src_ld;
    float ss = 0.0f;
    for (int c = 2 * lane; c < C; c += 2 * WARP_SIZE) {
      const uint32_t v = lds32(x + c);
      ss += bf16_lo(v) * bf16_lo(v) + bf16_hi(v) * bf16_hi(v);
    }
    const float rstd = rsqrtf(warp_sum(ss) / C + eps);
    for (int c = 2 * lane; c < C; c += 2 * WARP_SIZE) {
      const uint32_t v = lds32(x + c), wv = ldg32(weight + c);
      *reinterpret_cast<uint32_t *>(dst + (size_t)t * dst_ld + c) =
          pack_bf16x2(bf16_lo(v) * rstd * bf16_lo(wv), bf16_hi(v) * rstd * bf16_hi(wv));
    }
  }
}

// The attention of query row t of one head, by one warp, RoPE applied as the unfused ops apply it.
// (q1, q2): the row's unrotated pair `lane` (elements lane and lane + 32), (c, s) its angle; q_buf:
// the warp's DF_HEAD_DIM floats of shared memory; keys: the head's rotated keys (bf16, rows of
// key_ld, shared memory), values its value rows (of v_ld, shared memory); rows [first, t] attended
// (causal, inside the row's sequence), a lane a key. Returns the lane's output pair, columns
// 2 lane and 2 lane + 1.
__device__ inline float2 attend_row(float q1, float q2, float c, float s, float *q_buf, const bf16 *keys, int key_ld,
                                    const bf16 *values, int v_ld, int first, int t, float scale, int lane) {
  constexpr int D = DF_HEAD_DIM, HALF = D / 2;
  float r1, r2;
  rope_rotate(q1, q2, c, s, &r1, &r2);
  q_buf[lane] = round_bf16(r1), q_buf[lane + HALF] = round_bf16(r2);
  __syncwarp();
  const bool valid = lane >= first && lane <= t;
  float score = -INFINITY;
  if (valid) {
    const bf16 *key = keys + (size_t)lane * key_ld;
    float dot = 0.0f;
#pragma unroll 8
    for (int d = 0; d < D; d += 2) {
      const uint32_t kv = lds32(key + d);
      dot += q_buf[d] * bf16_lo(kv) + q_buf[d + 1] * bf16_hi(kv);
    }
    score = dot * scale;
  }
  const float top = warp_max(score);
  const float e = valid ? expf(score - top) : 0.0f;
  const float inv_sum = 1.0f / warp_sum(e);
  float o0 = 0.0f, o1 = 0.0f;
  for (int j = first; j <= t; j++) {
    const float pj = __shfl_sync(FULL_MASK, e, j);
    const uint32_t v = lds32(values + (size_t)j * v_ld + 2 * lane);
    o0 += pj * bf16_lo(v), o1 += pj * bf16_hi(v);
  }
  __syncwarp();  // every lane has read q_buf before the warp's next pair rotates into it
  return make_float2(o0 * inv_sum, o1 * inv_sum);
}

#define DF_WARPS 16  // 16 warps a block: the phases' jobs ((tile, m-tile) pairs) are few per block,
                     // so more warps finish a phase in fewer rounds; at most 128 registers a thread
#define DF_THREADS (DF_WARPS * WARP_SIZE)
#define DF_GROUP_COUNTS 2    // barrier words: arrival count, its value when the running launch started, then
#define DF_MAX_GROUPS 256    // a unit count for each of down's column groups (last_of_group)
#define DF_BARRIER_WORDS (DF_GROUP_COUNTS + DF_MAX_GROUPS)

struct df_args {
  df_block blocks[DF_MAX_LAYERS];
  const bf16 *tok_embed, *final_norm_w;
  bf16 *out;
  const int32_t *ids, *pos, *cu_seqlens;
  bf16 *h, *x, *qkv, *attn, *ff;  // workspace: (T, C), (T, C), (T, qkv_dim), (T, C), (T, I)
  float *partial;                 // (down_chunks, T, C)
  unsigned int *barrier;          // DF_BARRIER_WORDS (grid_barrier), zero before the first launch
  unsigned long long *trace;      // NULL, or (barriers, blocks + 1) stamps (SN_FUSED_TRACE)
  int B, T, layers, C, I, Hq, Hkv;
  int down_groups, down_chunks;
  float eps, theta, scale;
};

// ---- shared memory ---------------------------------------------------------------------------------
// xa: the rows a phase reads (DF_ROWS of C, or of a down slice); wb: this block's q|k|v rows, then
// its o rows; wa: its gate rows, up rows, then its down unit. During attention xa holds the angle
// table, the rotated keys and the values of every kv head and a query row a warp instead.
struct df_smem {
  bf16 *xa, *wb, *wa;
  int *seq_start, *flag;
  int ld;  // C + DF_ROW_PAD
};
struct df_shape {
  int C, I, qkv_dim, Hkv, blocks, down_groups, down_chunks;
  // n-tiles a block of each projection (gate|up: pairs of a gate and an up tile)
  __host__ __device__ int qkv_share() const { return df_share(qkv_dim / DF_NTILE, blocks); }
  __host__ __device__ int o_share() const { return df_share(C / DF_NTILE, blocks); }
  __host__ __device__ int pair_share() const { return df_share(I / DF_NTILE, blocks); }
  __host__ __device__ int down_cols() const { return C / down_groups; }
  __host__ __device__ int down_k() const { return I / down_chunks; }
};
// The attention phase's carve of xa.
struct df_attn_smem {
  float *cos_t, *sin_t, *q_buf;
  bf16 *keys, *values;
  int table_ld, key_ld;
};
__host__ __device__ inline size_t df_attn_carve(unsigned char *base, df_attn_smem *s, int Hkv) {
  s->table_ld = DF_HEAD_DIM / 2 + DF_TABLE_PAD, s->key_ld = DF_HEAD_DIM + DF_KEY_PAD;
  df_carver c = {base, 0};
  s->cos_t = c.take<float>((size_t)DF_ROWS * s->table_ld);
  s->sin_t = c.take<float>((size_t)DF_ROWS * s->table_ld);
  s->q_buf = c.take<float>((size_t)DF_WARPS * DF_HEAD_DIM);
  s->keys = c.take<bf16>((size_t)Hkv * DF_ROWS * s->key_ld);
  s->values = c.take<bf16>((size_t)Hkv * DF_ROWS * DF_HEAD_DIM);
  return c.at;
}

__host__ __device__ inline size_t df_carve(unsigned char *base, df_smem *s, const df_shape &sh) {
  const int ld = sh.C + DF_ROW_PAD, k_ld = sh.down_k() + DF_ROW_PAD;
  const size_t tile = (size_t)DF_NTILE * ld * sizeof(bf16);
  const size_t wb = (size_t)max(sh.qkv_share(), sh.o_share()) * tile;  // bytes
  const size_t wa = max((size_t)2 * sh.pair_share() * tile, (size_t)sh.down_cols() * k_ld * sizeof(bf16));
  df_attn_smem attn;  // the attention phase's carve of xa, which a narrow decoder's rows may not cover
  const size_t xa = max((size_t)DF_ROWS * ld * sizeof(bf16), df_attn_carve(nullptr, &attn, sh.Hkv));
  s->ld = ld;
  df_carver c = {base, 0};
  s->xa = c.take<bf16>(xa / sizeof(bf16));
  s->wb = c.take<bf16>(wb / sizeof(bf16));
  s->wa = c.take<bf16>(wa / sizeof(bf16));
  s->seq_start = c.take<int>(DF_ROWS);
  s->flag = c.take<int>(1);
  return c.at;
}
// ---- copies --------------------------------------------------------------------------------------------
// Weights: rows x cols (a multiple of 8) of src (row stride src_ld) into dst (stride dst_ld) with
// cp.async, spread over the block; the caller commits the group.
__device__ inline void stage_weights(bf16 *dst, int dst_ld, const bf16 *src, size_t src_ld, int rows, int cols) {
  const int packs = cols / BF16_PER_PACK;
  for (int e = threadIdx.x; e < rows * packs; e += DF_THREADS) {
    const int r = e / packs, c = e % packs * BF16_PER_PACK;
    cp_async16(dst + (size_t)r * dst_ld + c, src + (size_t)r * src_ld + c);
  }
}
// Activations other blocks wrote: rows x cols of src into shared memory, through L2 (ld.global.cg:
// L1 may hold the lines' older contents).
// DF_LOADS_IN_FLIGHT loads a thread before its stores: the phase waits on this copy's latency.
#define DF_LOADS_IN_FLIGHT 4
__device__ inline void load_rows(bf16 *dst, int dst_ld, const bf16 *src, size_t src_ld, int rows, int cols) {
  const int packs = cols / BF16_PER_PACK, n = rows * packs;
  for (int e0 = threadIdx.x; e0 < n; e0 += DF_LOADS_IN_FLIGHT * DF_THREADS) {
    uint4 v[DF_LOADS_IN_FLIGHT];
#pragma unroll
    for (int i = 0; i < DF_LOADS_IN_FLIGHT; i++) {
      const int e = e0 + i * DF_THREADS;
      const bf16 *from = src + (size_t)(e / packs) * src_ld + e % packs * BF16_PER_PACK;
      if (e < n) v[i] = __ldcg(reinterpret_cast<const uint4 *>(from));
    }
#pragma unroll
    for (int i = 0; i < DF_LOADS_IN_FLIGHT; i++) {
      const int e = e0 + i * DF_THREADS;
      if (e < n) *reinterpret_cast<uint4 *>(dst + (size_t)(e / packs) * dst_ld + e % packs * BF16_PER_PACK) = v[i];
    }
  }
}
__device__ __forceinline__ uint32_t ldcg32(const bf16 *p) {
  return __ldcg(reinterpret_cast<const unsigned int *>(p));
}
__device__ __forceinline__ void st32(bf16 *p, float lo, float hi) {
  *reinterpret_cast<uint32_t *>(p) = pack_bf16x2(lo, hi);
}

// ---- the grid barrier ------------------------------------------------------------------------------
// barrier[0] counts every block's arrivals since the words were zeroed (wrapping); barrier[1] holds
// its value when the running launch started (block 0 advances it past the launch's arrivals at the
// end, when every block has read it). Barrier k of a launch is passed once the count reaches
// base + (k + 1) blocks. An arrival is a release (fire and forget: every write of the block before
// the barrier is visible to a block that acquires the count after it), the wait an acquire poll:
// one one-way trip to L2 and a poll, where a count that is reset needs two round trips more. Sound
// because the launch is cooperative: every block is resident. With a trace, each block's arrival
// and block 0's departure are stamped (global ns), a row a barrier.
struct df_sync {
  unsigned int *barrier;
  unsigned long long *trace;
  unsigned int base;  // barrier[0] when this launch started (thread 0 of each block holds it)
  int passed;         // barriers this launch has passed
};
__device__ __forceinline__ void red_release_add(unsigned int *p, unsigned int v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned int ld_acquire(const unsigned int *p) {
  unsigned int v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ inline void grid_barrier(df_sync &sync) {
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long *stamps = sync.trace ? sync.trace + (size_t)sync.passed * (gridDim.x + 1) : nullptr;
    if (stamps) stamps[blockIdx.x] = global_ns();
    red_release_add(sync.barrier, 1u);
    const unsigned int target = sync.base + (unsigned int)(sync.passed + 1) * gridDim.x;
    while ((int)(ld_acquire(sync.barrier) - target) < 0) {
    }
    if (stamps && blockIdx.x == 0) stamps[gridDim.x] = global_ns();
  }
  sync.passed++;
  __syncthreads();
}
// Whether this block is the last of `units` to arrive at *count (then it resets the count, which no
// unit touches again before the next grid barrier, and every thread of the block sees what the
// others wrote before they arrived). Called by the whole block; flag: an int of shared memory.
__device__ __forceinline__ unsigned int atom_add_acq_rel(unsigned int *p, unsigned int v) {
  unsigned int old;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}
__device__ inline bool last_of_group(unsigned int *count, int units, int *flag) {
  __syncthreads();  // the block's writes before thread 0's release
  if (threadIdx.x == 0) {
    *flag = atom_add_acq_rel(count, 1u) + 1 == (unsigned int)units;
    if (*flag) *count = 0;
  }
  __syncthreads();
  return *flag;
}

// ---- products --------------------------------------------------------------------------------------
// acc (16 rows from row0 x 8 columns) = A (shared, rows of lda) · B^T, B the tile's 8 weight rows
// (shared, rows of ldb), over ksteps k-steps of 16. A warp has one or two such jobs a phase, so the
// product's latency is the chain of dependent mma: DF_CHAINS accumulators take turns over the
// k-steps (a chain DF_CHAINS times shorter) and are added at the end.
#define DF_CHAINS 4
__device__ __forceinline__ void mma_step(float (&acc)[4], const bf16 *a, int lda, const bf16 *b) {
  const uint32_t frag[4] = {lds32(a), lds32(a + 8 * lda), lds32(a + DF_MMA_K / 2), lds32(a + 8 * lda + DF_MMA_K / 2)};
  const uint32_t w[2] = {lds32(b), lds32(b + DF_MMA_K / 2)};
  mma_bf16(acc, frag, w);
}
__device__ __forceinline__ void smem_product(float (&acc)[4], const bf16 *A, int lda, int row0, const bf16 *B,
                                             int ldb, int ksteps, int g, int q) {
  float part[DF_CHAINS][4] = {};
  const bf16 *a = A + (size_t)(row0 + g) * lda + 2 * q, *b = B + (size_t)g * ldb + 2 * q;
  int s = 0;
  for (; s + DF_CHAINS <= ksteps; s += DF_CHAINS)
#pragma unroll
    for (int c = 0; c < DF_CHAINS; c++) mma_step(part[c], a + (s + c) * DF_MMA_K, lda, b + (s + c) * DF_MMA_K);
  for (; s < ksteps; s++) mma_step(part[0], a + s * DF_MMA_K, lda, b + s * DF_MMA_K);
#pragma unroll
  for (int i = 0; i < 4; i++) acc[i] = (part[0][i] + part[1][i]) + (part[2][i] + part[3][i]);
}
static_assert(DF_CHAINS == 4, "the sum above adds four chains");
// The block's `tiles` staged n-tiles (tile i's rows at W + 8 i ldw) times A, a warp a (tile, m-tile)
// job; epi(acc, i, row0) gets each.
template <typename Epi>
__device__ __forceinline__ void project(const bf16 *A, int lda, const bf16 *W, int ldw, int tiles, int ksteps, int T,
                                        int warp, int g, int q, Epi epi) {
  const int mtiles = (T + DF_MMA_ROWS - 1) / DF_MMA_ROWS;
  for (int job = warp; job < tiles * mtiles; job += DF_WARPS) {
    const int i = job / mtiles, row0 = job % mtiles * DF_MMA_ROWS;
    float acc[4];
    smem_product(acc, A, lda, row0, W + (size_t)i * DF_NTILE * ldw, ldw, ksteps, g, q);
    epi(acc, i, row0);
  }
}

// ---- the kernel ------------------------------------------------------------------------------------
// The copy groups each thread commits, in order: q|k|v(0), gate|up(0); then per block l: o(l) after
// A, q|k|v(l+1) after C, down(l) after D, gate|up(l+1) after E (empty groups past the last block).
// Each phase waits for what it reads: A for all but the newest group (gate|up may stay in flight),
// C, E for all.
__global__ void __launch_bounds__(DF_THREADS, 1) decoder_fused_kernel(const __grid_constant__ df_args p) {
  extern __shared__ __align__(16) unsigned char df_shared[];
  constexpr int D = DF_HEAD_DIM, HALF = D / 2;
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, q = lane % 4;
  const int T = p.T, C = p.C, I = p.I, Hq = p.Hq, Hkv = p.Hkv, qkv_dim = (Hq + 2 * Hkv) * D;
  const int rank = blockIdx.x, blocks = gridDim.x;
  const df_shape sh = {C, I, qkv_dim, Hkv, blocks, p.down_groups, p.down_chunks};
  df_smem S;
  df_carve(df_shared, &S, sh);
  const int ld = S.ld, KC = C / DF_MMA_K;
  df_sync sync = {p.barrier, p.trace, threadIdx.x == 0 ? ld_acquire(p.barrier + 1) : 0u, 0};

  const df_range qkv_tiles = block_tiles(qkv_dim / DF_NTILE, rank, blocks);
  const df_range o_tiles = block_tiles(C / DF_NTILE, rank, blocks);
  const df_range pairs = block_tiles(I / DF_NTILE, rank, blocks);
  const int n_qkv = qkv_tiles.end - qkv_tiles.begin, n_o = o_tiles.end - o_tiles.begin;
  const int n_pairs = pairs.end - pairs.begin, pair_rows = n_pairs * DF_NTILE;
  const bool has_unit = rank < p.down_groups * p.down_chunks;
  const int group = rank % p.down_groups, chunk = rank / p.down_groups;
  const int down_cols = sh.down_cols(), down_k = sh.down_k(), k_ld = down_k + DF_ROW_PAD;

  auto stage_qkv = [&](const df_block &blk) {
    stage_weights(S.wb, ld, blk.qkv_w + (size_t)qkv_tiles.begin * DF_NTILE * C, C, n_qkv * DF_NTILE, C);
  };
  auto stage_gate_up = [&](const df_block &blk) {
    stage_weights(S.wa, ld, blk.up_w + (size_t)pairs.begin * DF_NTILE * C, C, pair_rows, C);
    stage_weights(S.wa + (size_t)pair_rows * ld, ld, blk.up_w + ((size_t)I + pairs.begin * DF_NTILE) * C, C,
                  pair_rows, C);
  };
  stage_qkv(p.blocks[0]);
  cp_async_commit();
  stage_gate_up(p.blocks[0]);
  cp_async_commit();

  // h = the token embeddings
  for (int e = rank * DF_THREADS + threadIdx.x; e < T * (C / BF16_PER_PACK); e += blocks * DF_THREADS) {
    const int t = e / (C / BF16_PER_PACK), c = e % (C / BF16_PER_PACK) * BF16_PER_PACK;
    *reinterpret_cast<uint4 *>(p.h + (size_t)t * C + c) =
        __ldg(reinterpret_cast<const uint4 *>(p.tok_embed + (size_t)p.ids[t] * C + c));
  }
  for (int t = threadIdx.x; t < T; t += DF_THREADS) {
    int b = 0;
    while (b + 1 < p.B && p.cu_seqlens[b + 1] <= t) b++;
    S.seq_start[t] = p.cu_seqlens[b];
  }
  grid_barrier(sync);

  for (int l = 0; l < p.layers; l++) {
    const df_block &blk = p.blocks[l];
    const bool more = l + 1 < p.layers;
    // A: xn = rmsnorm(h) (every block, all rows); q|k|v = xn W_qkv^T + b, this block's columns
    load_rows(S.xa, ld, p.h, C, T, C);
    __syncthreads();
    norm_rows(S.xa, ld, S.xa, ld, blk.norm_attn_w, warp, DF_WARPS, T, C, p.eps, lane);
    cp_async_wait<1>();
    __syncthreads();
    project(S.xa, ld, S.wb, ld, n_qkv, KC, T, warp, g, q, [&](const float(&acc)[4], int i, int row0) {
      for_each_pair(acc, (qkv_tiles.begin + i) * DF_NTILE, T, g, q, [&](int row, int col, float v0, float v1) {
        st32(p.qkv + (size_t)row * qkv_dim + col, v0 + bias_at(blk.qkv_b, col), v1 + bias_at(blk.qkv_b, col + 1));
      }, row0);
    });
    __syncthreads();  // wb read: o's rows go there
    stage_weights(S.wb, ld, blk.o_w + (size_t)o_tiles.begin * DF_NTILE * C, C, n_o * DF_NTILE, C);
    cp_async_commit();
    grid_barrier(sync);

    // B: attention, a warp a (head, row) pair over the grid; the angles, rotated keys and values of
    // every kv head into xa first (blocks with pairs only)
    if (rank * DF_WARPS < Hq * T) {
      df_attn_smem A;
      df_attn_carve(reinterpret_cast<unsigned char *>(S.xa), &A, Hkv);
      for (int e = threadIdx.x; e < T * HALF; e += DF_THREADS) {
        const int t = e / HALF, i = e % HALF;
        rope_cos_sin(p.pos[t], i, D, p.theta, &A.cos_t[t * A.table_ld + i], &A.sin_t[t * A.table_ld + i]);
      }
      __syncthreads();
      for (int e = threadIdx.x; e < Hkv * T * HALF; e += DF_THREADS) {
        const int i = e % HALF, t = (e / HALF) % T, kh = e / (HALF * T);
        const bf16 *k = p.qkv + (size_t)t * qkv_dim + (Hq + kh) * D;
        float r1, r2;
        rope_rotate(bf2f(__ldcg(k + i)), bf2f(__ldcg(k + i + HALF)), A.cos_t[t * A.table_ld + i],
                    A.sin_t[t * A.table_ld + i], &r1, &r2);
        bf16 *key = A.keys + ((size_t)kh * DF_ROWS + t) * A.key_ld;
        key[i] = f2bf(r1), key[i + HALF] = f2bf(r2);
      }
      for (int kh = 0; kh < Hkv; kh++)
        load_rows(A.values + (size_t)kh * DF_ROWS * D, D, p.qkv + (Hq + Hkv + kh) * D, qkv_dim, T, D);
      __syncthreads();
      const int per_group = Hq / Hkv;
      for (int task = rank * DF_WARPS + warp; task < Hq * T; task += blocks * DF_WARPS) {
        const int h = task / T, t = task % T, kh = h / per_group;
        const bf16 *qrow = p.qkv + (size_t)t * qkv_dim + h * D;
        const float2 o = attend_row(bf2f(__ldcg(qrow + lane)), bf2f(__ldcg(qrow + lane + HALF)),
                                    A.cos_t[t * A.table_ld + lane], A.sin_t[t * A.table_ld + lane],
                                    A.q_buf + warp * D, A.keys + (size_t)kh * DF_ROWS * A.key_ld, A.key_ld,
                                    A.values + (size_t)kh * DF_ROWS * D, D, S.seq_start[t], t, p.scale, lane);
        st32(p.attn + (size_t)t * C + h * D + 2 * lane, o.x, o.y);
      }
    }
    grid_barrier(sync);

    // C: x = h + attn W_o^T + b, this block's columns
    load_rows(S.xa, ld, p.attn, C, T, C);
    cp_async_wait<0>();
    __syncthreads();
    project(S.xa, ld, S.wb, ld, n_o, KC, T, warp, g, q, [&](const float(&acc)[4], int i, int row0) {
      for_each_pair(acc, (o_tiles.begin + i) * DF_NTILE, T, g, q, [&](int row, int col, float v0, float v1) {
        const uint32_t h = ldcg32(p.h + (size_t)row * C + col);
        const float o0 = round_bf16(v0 + bias_at(blk.o_b, col)), o1 = round_bf16(v1 + bias_at(blk.o_b, col + 1));
        st32(p.x + (size_t)row * C + col, bf16_lo(h) + o0, bf16_hi(h) + o1);
      }, row0);
    });
    __syncthreads();  // wb read: the next block's q|k|v rows go there
    if (more) stage_qkv(p.blocks[l + 1]);
    cp_async_commit();
    grid_barrier(sync);

    // D: ff = swiglu(rmsnorm(x) W_gate|up^T + b), this block's columns of the MLP's width
    load_rows(S.xa, ld, p.x, C, T, C);
    __syncthreads();
    norm_rows(S.xa, ld, S.xa, ld, blk.norm_mlp_w, warp, DF_WARPS, T, C, p.eps, lane);
    __syncthreads();
    const int mtiles = (T + DF_MMA_ROWS - 1) / DF_MMA_ROWS;
    for (int job = warp; job < n_pairs * mtiles; job += DF_WARPS) {
      const int i = job / mtiles, row0 = job % mtiles * DF_MMA_ROWS;
      float gate[4], up[4];
      smem_product(gate, S.xa, ld, row0, S.wa + (size_t)i * DF_NTILE * ld, ld, KC, g, q);
      smem_product(up, S.xa, ld, row0, S.wa + (size_t)(pair_rows + i * DF_NTILE) * ld, ld, KC, g, q);
      const int c = (pairs.begin + i) * DF_NTILE + 2 * q;
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        const int row = row0 + g + 8 * hh;
        if (row >= T) continue;
        float f[2];
#pragma unroll
        for (int k = 0; k < 2; k++) {
          const float gv = round_bf16(gate[2 * hh + k] + bias_at(blk.up_b, c + k));
          const float uv = round_bf16(up[2 * hh + k] + bias_at(blk.up_b, I + c + k));
          f[k] = silu_f(gv) * uv;
        }
        st32(p.ff + (size_t)row * I + c, f[0], f[1]);
      }
    }
    __syncthreads();  // wa read: down's unit goes there
    if (has_unit)
      stage_weights(S.wa, k_ld, blk.down_w + (size_t)group * down_cols * I + (size_t)chunk * down_k, I, down_cols,
                    down_k);
    cp_async_commit();
    grid_barrier(sync);

    // E: partial[chunk] = ff[:, chunk's slice] W_down[group's columns, slice]^T; the group's last
    // unit to finish adds the group's partials (chunk order) + b to x into h
    if (has_unit) {
      load_rows(S.xa, k_ld, p.ff + (size_t)chunk * down_k, I, T, down_k);
      cp_async_wait<0>();
      __syncthreads();
      project(S.xa, k_ld, S.wa, k_ld, down_cols / DF_NTILE, down_k / DF_MMA_K, T, warp, g, q,
              [&](const float(&acc)[4], int i, int row0) {
                for_each_pair(acc, group * down_cols + i * DF_NTILE, T, g, q,
                                 [&](int row, int col, float v0, float v1) {
                                   *reinterpret_cast<float2 *>(p.partial + ((size_t)chunk * T + row) * C + col) =
                                       make_float2(v0, v1);
                                 }, row0);
              });
      if (last_of_group(p.barrier + DF_GROUP_COUNTS + group, p.down_chunks, S.flag)) {
        for (int e = threadIdx.x; e < T * (down_cols / 2); e += DF_THREADS) {
          const int row = e / (down_cols / 2), col = group * down_cols + 2 * (e % (down_cols / 2));
          float s0 = 0.0f, s1 = 0.0f;
#pragma unroll 8
          for (int k = 0; k < p.down_chunks; k++) {
            const float2 v = __ldcg(reinterpret_cast<const float2 *>(p.partial + ((size_t)k * T + row) * C + col));
            s0 += v.x, s1 += v.y;
          }
          const uint32_t x = ldcg32(p.x + (size_t)row * C + col);
          const float d0 = round_bf16(s0 + bias_at(blk.down_b, col));
          const float d1 = round_bf16(s1 + bias_at(blk.down_b, col + 1));
          st32(p.h + (size_t)row * C + col, bf16_lo(x) + d0, bf16_hi(x) + d1);
        }
      }
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // wa read: the next block's gate|up rows go there
    if (more) stage_gate_up(p.blocks[l + 1]);
    cp_async_commit();
    grid_barrier(sync);
  }
  // every block has read the base (before its first arrival): the next launch's starts here
  if (rank == 0 && threadIdx.x == 0) p.barrier[1] = sync.base + (unsigned int)sync.passed * blocks;
  // out = rmsnorm(h, final_norm_w): row t by block t
  for (int t = rank; t < T; t += blocks) {
    load_rows(S.xa, ld, p.h + (size_t)t * C, C, 1, C);
    __syncthreads();
    if (warp == 0) norm_rows(p.out + (size_t)t * C, C, S.xa, ld, p.final_norm_w, 0, 1, 1, C, p.eps, lane);
    __syncthreads();
  }
}

// ---- the checks and the dispatch --------------------------------------------------------------
// The blocks of w as the kernel takes them (out: w->layers of them).
static void df_blocks_from(const sn_decoder_weights *w, df_block *out) {
  for (int l = 0; l < w->layers; l++) {
    const sn_decoder_block &b = w->blocks[l];
    out[l] = {(const bf16 *)b.norm_attn_w, (const bf16 *)b.qkv_w, (const bf16 *)b.qkv_b, (const bf16 *)b.o_w,
              (const bf16 *)b.o_b, (const bf16 *)b.norm_mlp_w, (const bf16 *)b.up_w, (const bf16 *)b.up_b,
              (const bf16 *)b.down_w, (const bf16 *)b.down_b};
  }
}

// Whether every tensor of w is on 16 bytes (NULL, an absent bias, is).
static bool df_tensors_aligned(const sn_decoder_weights *w) {
  if (!aligned16(w->tok_embed) || !aligned16(w->final_norm_w)) return false;
  for (int l = 0; l < w->layers; l++) {
    const sn_decoder_block &b = w->blocks[l];
    const void *block_tensors[] = {b.norm_attn_w, b.qkv_w, b.qkv_b, b.o_w, b.o_b, b.norm_mlp_w, b.up_w, b.up_b,
                                   b.down_w, b.down_b};
    for (const void *t : block_tensors)
      if (!aligned16(t)) return false;  // NULL (no bias) is aligned
  }
  return true;
}

// ---- launcher ----------------------------------------------------------------------------------------
// down's units: column groups (whole n-tiles) x slices of I (whole k-steps) with at most a unit a
// block and as many units as that allows, fewer slices first (less partial traffic); the unit's
// rows and slice must fit wa and xa. Returns false when no split fits.
static bool df_down_split(df_shape *sh, size_t smem_max) {
  const int tiles = sh->C / DF_NTILE, ksteps = sh->I / DF_MMA_K;
  int best_units = 0;
  df_shape best = *sh;
  for (int chunks = 1; chunks <= ksteps; chunks++) {
    if (ksteps % chunks) continue;
    for (int groups = 1; groups <= tiles; groups++) {
      const int units = groups * chunks;
      if (tiles % groups || groups > DF_MAX_GROUPS || units > sh->blocks || units <= best_units) continue;
      df_shape trial = *sh;
      trial.down_groups = groups, trial.down_chunks = chunks;
      df_smem layout;
      if (trial.down_k() > sh->C || df_carve(nullptr, &layout, trial) > smem_max) continue;
      best_units = units, best = trial;
    }
  }
  *sh = best;
  return best_units > 0;
}

struct df_plan {
  int blocks;  // 0: the shape is not taken
  size_t smem;
  int down_groups, down_chunks;  // down's work units: column groups x slices of the MLP's width
};
// Whether the kernel takes w on this device (*out filled when it does): one plan serves every T up
// to DF_ROWS (the caller checks T). Memoised per shape (the answer does not change).
static bool df_plan_for(const sn_decoder_weights *w, df_plan *out) {
  struct entry {
    int C, I, Hkv, qkv_dim;
    df_plan plan;
  };
  static entry cache[DF_PLAN_CACHE];
  static int cached = 0;
  static std::mutex cache_lock;  // contexts of several threads plan at once
  std::lock_guard<std::mutex> hold(cache_lock);
  const int C = w->hidden, I = w->intermediate, qkv_dim = (w->heads + 2 * w->kv_heads) * w->head_dim;
  for (int i = 0; i < cached; i++)
    if (cache[i].C == C && cache[i].I == I && cache[i].Hkv == w->kv_heads && cache[i].qkv_dim == qkv_dim) {
      *out = cache[i].plan;
      return out->blocks > 0;
    }
  df_plan plan = {0, 0, 0, 0};
  const int smem_max = sn_cuda_smem_optin_max();
  df_shape sh = {C, I, qkv_dim, w->kv_heads, sn_cuda_sm_count(), 0, 0};
  if (sn_cuda_cooperative_launch() && sn_cuda_cc_major() >= 8 && C % DF_MMA_K == 0 && I % DF_MMA_K == 0 &&
      df_down_split(&sh, (size_t)smem_max)) {
    df_smem layout;
    const size_t smem = df_carve(nullptr, &layout, sh);
    // the device's cap (every shape's plan sets the same)
    cudaCheck(cudaFuncSetAttribute(decoder_fused_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_max));
    int per_sm = 0;
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decoder_fused_kernel, DF_THREADS, smem));
    if (per_sm >= 1) plan = {sh.blocks, smem, sh.down_groups, sh.down_chunks};
  }
  if (cached < DF_PLAN_CACHE) cache[cached++] = {C, I, w->kv_heads, qkv_dim, plan};
  *out = plan;
  return plan.blocks > 0;
}

// The current context's barrier words: allocated and zeroed once (each launch leaves the base at the
// count), one set a context so that launches on two streams never count on the same words.
static unsigned int *df_barrier(void) {
  cuda_context *ctx = cuda_context_current();
  if (!ctx->grid_barrier) {
    ctx->grid_barrier = (unsigned int *)cuda_alloc(DF_BARRIER_WORDS * sizeof(unsigned int));
    cudaCheck(cudaMemsetAsync(ctx->grid_barrier, 0, DF_BARRIER_WORDS * sizeof(unsigned int), SN_STREAM));
  }
  return ctx->grid_barrier;
}

// ---- the phase trace (SN_FUSED_TRACE=N: every Nth launch of the process) ------------------------
#define DF_PHASES 5  // barriers a decoder block
static const char *const DF_PHASE_NAMES[DF_PHASES] = {"A norm+qkv", "B attention", "C o_proj", "D norm+gate|up",
                                                      "E down + sum"};
// Every how many launches to trace one (0: none), read once; anything but a count is warned about
// and read as 0.
static int df_read_trace_every(void) {
  const char *v = getenv("SN_FUSED_TRACE");
  char *end = nullptr;
  const long n = v ? strtol(v, &end, 10) : 0;
  if (v && (end == v || *end != '\0' || n < 0 || n > INT_MAX)) {
    fprintf(stderr, "warning: environment variable SN_FUSED_TRACE='%s' is not a launch count; read as 0\n", v);
    return 0;
  }
  return (int)n;
}
static int df_trace_launch(void) {
  static const int every = df_read_trace_every();  // once, also when contexts race to the first launch
  return every;
}
// Prints, per phase and averaged over the decoder blocks: the work (from block 0 leaving the barrier
// before to the last block's arrival), the spread of the arrivals (last - first), and the barrier's
// own latency (block 0 leaving after the last arrival).
static void df_print_trace(const unsigned long long *t, int barriers, int blocks, int layers, int T) {
  double work[DF_PHASES] = {0}, spread[DF_PHASES] = {0}, latency[DF_PHASES] = {0};
  const int row = blocks + 1;
  unsigned long long first_start = ~0ull;
  for (int b = 0; b < blocks; b++) first_start = std::min(first_start, t[b]);
  for (int k = 1; k < barriers; k++) {
    const unsigned long long *r = t + (size_t)k * row;
    unsigned long long first = ~0ull, last = 0;
    for (int b = 0; b < blocks; b++) first = std::min(first, r[b]), last = std::max(last, r[b]);
    const int phase = (k - 1) % DF_PHASES;
    work[phase] += 1e-3 * (double)(last - t[(size_t)(k - 1) * row + blocks]);
    spread[phase] += 1e-3 * (double)(last - first);
    latency[phase] += 1e-3 * (double)(r[blocks] - last);
  }
  fprintf(stderr, "decoder_fused trace: %d blocks, %d decoder blocks, T=%d: %.1f us from the first arrival "
          "to the last departure\n", blocks, layers, T, 1e-3 * (double)(t[(size_t)(barriers - 1) * row + blocks] -
                                                                       first_start));
  for (int p = 0; p < DF_PHASES; p++)
    fprintf(stderr, "  %-15s work %6.2f us, arrival spread %6.2f us, barrier %5.2f us (a decoder block)\n",
            DF_PHASE_NAMES[p], work[p] / layers, spread[p] / layers, latency[p] / layers);
}

static void df_forward(const df_plan *plan, void *out, const int32_t *ids, const int32_t *pos,
                       const int32_t *cu_seqlens, int B, int T, const sn_decoder_weights *w) {
  const int C = w->hidden, I = w->intermediate, qkv_dim = (w->heads + 2 * w->kv_heads) * w->head_dim;
  const size_t act = df_round((size_t)DF_ROWS * C * sizeof(bf16));
  const size_t qkv_bytes = df_round((size_t)DF_ROWS * qkv_dim * sizeof(bf16));
  const size_t ff_bytes = df_round((size_t)DF_ROWS * I * sizeof(bf16));
  const size_t partial_bytes = (size_t)plan->down_chunks * DF_ROWS * C * sizeof(float);
  unsigned char *ws = (unsigned char *)sn_cuda_scratch(SCRATCH_DECODER_FUSED, 3 * act + qkv_bytes + ff_bytes +
                                                                                 partial_bytes);
  df_args a = {};
  df_blocks_from(w, a.blocks);
  a.tok_embed = (const bf16 *)w->tok_embed, a.final_norm_w = (const bf16 *)w->final_norm_w, a.out = (bf16 *)out;
  a.ids = ids, a.pos = pos, a.cu_seqlens = cu_seqlens;
  a.h = (bf16 *)ws, a.x = (bf16 *)(ws + act), a.attn = (bf16 *)(ws + 2 * act), a.qkv = (bf16 *)(ws + 3 * act);
  a.ff = (bf16 *)(ws + 3 * act + qkv_bytes), a.partial = (float *)(ws + 3 * act + qkv_bytes + ff_bytes);
  a.barrier = df_barrier();
  a.B = B, a.T = T, a.layers = w->layers, a.C = C, a.I = I, a.Hq = w->heads, a.Hkv = w->kv_heads;
  a.down_groups = plan->down_groups, a.down_chunks = plan->down_chunks;
  a.eps = w->norm_eps, a.theta = w->rope_theta, a.scale = 1.0f / sqrtf((float)w->head_dim);
  static std::atomic<int> launches{0};
  const int barriers = 1 + DF_PHASES * w->layers;
  bool trace = df_trace_launch() > 0 && (launches.fetch_add(1) + 1) % df_trace_launch() == 0;
  if (trace) {  // not while a graph records (the trace synchronizes); asked only here, off the hot path
    cudaStreamCaptureStatus capturing;
    cudaCheck(cudaStreamIsCapturing(SN_STREAM, &capturing));
    trace = capturing == cudaStreamCaptureStatusNone;
  }
  const size_t trace_bytes = (size_t)barriers * (plan->blocks + 1) * sizeof(unsigned long long);
  a.trace = trace ? (unsigned long long *)cuda_alloc(trace_bytes) : nullptr;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeCooperative;
  attr.val.cooperative = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(plan->blocks), cfg.blockDim = dim3(DF_THREADS), cfg.dynamicSmemBytes = plan->smem;
  cfg.stream = SN_STREAM, cfg.attrs = &attr, cfg.numAttrs = 1;
  cudaCheck(cudaLaunchKernelEx(&cfg, decoder_fused_kernel, a));
  launchCheck();
  if (trace) {
    unsigned long long *stamps = (unsigned long long *)malloc(trace_bytes);
    cudaCheck(cudaMemcpyAsync(stamps, a.trace, trace_bytes, cudaMemcpyDeviceToHost, SN_STREAM));
    cudaCheck(cudaStreamSynchronize(SN_STREAM));
    df_print_trace(stamps, barriers, plan->blocks, w->layers, T);
    free(stamps);
    cuda_free(a.trace);
  }
}

// Whether the kernel takes this decoder at T tokens (*plan filled when it does): head dim 64,
// Hq * 64 = C, whole GQA groups, at most SN_DECODER_FUSED_MAX_ROWS tokens and DF_MAX_LAYERS blocks,
// every tensor on 16 bytes, and a plan for the device; false sends the model to the general path.
static bool df_supports(const sn_decoder_weights *w, int T, df_plan *plan) {
  if (T < 1 || T > SN_DECODER_FUSED_MAX_ROWS || w->layers < 1 || w->layers > DF_MAX_LAYERS ||
      w->head_dim != DF_HEAD_DIM || w->heads * w->head_dim != w->hidden || w->kv_heads < 1 ||
      w->heads % w->kv_heads != 0 || !df_tensors_aligned(w))
    return false;
  return df_plan_for(w, plan);
}

int cuda_decoder_fused_supports(const sn_decoder_weights *w, int T) {
  df_plan plan;
  return df_supports(w, T, &plan) ? 1 : 0;
}

void cuda_decoder_fused_forward(void *out, const int32_t *ids, const int32_t *pos, const int32_t *cu_seqlens, int B,
                                int T, const sn_decoder_weights *w) {
  df_plan plan;
  if (!df_supports(w, T, &plan)) {
    fprintf(stderr, "error: %s:%d: decoder_fused_forward: shape not supported (T=%d C=%d I=%d heads %d/%d of %d; "
            "ask decoder_fused_supports first)\n", __FILE__, __LINE__, T, w->hidden, w->intermediate, w->heads,
            w->kv_heads, w->head_dim);
    exit(1);
  }
  df_forward(&plan, out, ids, pos, cu_seqlens, B, T, w);
}
