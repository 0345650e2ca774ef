// decoder_fused: the whole inference forward of a decoder over a few tokens in one launch (ops.h
// decoder_fused_forward states the maths): a query through the 0.5B tower or a distilled student.
// Why: a 32-token query is about 240 kernels through the 0.5B tower on the general path (58 through
// the 6-layer student), 39 µs a decoder block in a CUDA graph on the H100 against 9 µs of weight
// reads at the copy rate (docs/PERFORMANCE.md): each kernel's launch, ramp and tail cost more than
// its work. Here one persistent grid, a block per multiprocessor, launched cooperatively so that
// every block is resident and they can wait for each other, runs every decoder block:
// - phases, each ended by a grid barrier: A rmsnorm + q|k|v; B attention (RoPE as it reads, a warp
//   a (head, row) pair); C o_proj + residual; D rmsnorm + gate|up + SwiGLU; E down + residual;
// - the activations ((T, C) rows, T <= 32) live in global memory, where at this size they stay in
//   L2; each block copies the rows a phase reads into its shared memory (loads that bypass L1, as
//   other blocks wrote them);
// - a projection is split over the blocks by m-tiles of 16 weight rows (the mma's A operand, the
//   tokens its n: mma.sync m16n8k16, fp32 accumulation), and inside a block over its warps by
//   (tile, 32-wide k chunk) items, in equal runs; the weights go from memory straight into
//   registers as fragments (16 bytes a lane, DG_BATCH chunks in flight), the tokens' fragments come
//   from shared memory, and each warp leaves its sums in a slot that the block adds in warp order
//   (deterministic). Weights are used once a query, so nothing is gained by staging them in shared
//   memory: session 11's version did, and its products were bound by those reads (6 of 7 bytes a
//   product moved were fragments re-read from shared memory);
// - each block asks L2 for its share of the weights three phases ahead (cp.async.bulk.prefetch,
//   one instruction a contiguous range, nothing held), so HBM streams during the barriers and the
//   phases' latency and the loads find the weights in L2; three phases are at most 30 MB of the
//   0.5B tower, inside the 50 MB L2;
// - down is split in two dimensions (column groups x slices of the MLP's width) by a cost model
//   (weights a unit plus the partial sums its group's last unit adds); each unit writes fp32 partial
//   sums, and the last unit of a group to finish (an acq_rel counter) adds them in slice order
//   (deterministic), the bias and the residual.
// Values are rounded to bf16 where the unfused ops store them, so the result is the general path's
// within bf16 rounding of the sums' order.
// Measured on the H100 (docs/PERFORMANCE.md): session 11's version took 1211 µs at 32 tokens (a
// barrier 0.7-1.0 µs, a decoder block 50 µs) against 947 µs for the unfused path; this version has
// not yet run on a GPU, so it stays opt-in (SN_FUSED_DECODER=1). SN_FUSED_TRACE=N shows where a
// launch's time goes, phase by phase.
#include <algorithm>
#include <atomic>
#include <climits>
#include <mutex>

#include "activations.cuh"

#define DG_WARPS 16  // the phases' items are few per block: more warps finish a phase in fewer rounds
#define DG_THREADS (DG_WARPS * WARP_SIZE)
#define DG_WTILE 16          // weight rows of an m-tile: the mma's M
#define DG_TOKEN_TILE 8      // tokens of an mma n-tile
#define DG_ROWS SN_DECODER_FUSED_MAX_ROWS  // activation rows held
#define DG_TOKEN_TILES (DG_ROWS / DG_TOKEN_TILE)
#define DG_MMA_K 16
#define DG_CHUNK 32          // k a warp covers with one 16-byte load a lane: lane (g, q) k 8q .. 8q + 7
#define DG_BATCH 2           // chunks whose weights a warp loads before using them: 4 x 16 bytes a lane
                             // (32 KB a multiprocessor; 4 spilled the kernel's registers)
#define DG_SLOT_LD 40        // floats a slot row (a weight row's sums over the tokens): 32 + 8, so the
                             // float2 stores of lanes g = 0..3 (rows 40 words apart) hit 32 banks
#define DG_X_SKEW 64         // bytes: a staged row's stride is 64 past a multiple of 128, so the
                             // 16-byte loads of rows g, g + 1 (64 bytes each) hit 32 banks
#define DG_HEAD_DIM 64       // the attention's lane layout: a lane holds one rotation pair of a head
#define DG_KEY_PAD 2         // bf16 appended to a rotated key row: 33 words, lanes reading keys
                             // 0..31 at one column hit 32 banks
#define DG_TABLE_PAD 1       // floats appended to a row of the angle table
#define DG_MAX_LAYERS SN_DECODER_FUSED_MAX_LAYERS  // blocks passed in the kernel's parameters (80 bytes each)
#define DG_SMEM_ALIGN 16
#define DG_PLAN_CACHE 8      // decoder shapes a process plans for (a tower and a student or two)
#define DG_PHASES 5          // phases (and grid barriers) a decoder block
#define DG_PREFETCH_AHEAD 3  // phases between a share's L2 prefetch and its use
#define DG_GROUP_COUNTS 2    // barrier words: arrival count, its value when the running launch started, then
#define DG_MAX_GROUPS 256    // a unit count for each of down's column groups (last_of_group)
#define DG_BARRIER_WORDS (DG_GROUP_COUNTS + DG_MAX_GROUPS)
#define DG_LOADS_IN_FLIGHT 8 // 16-byte loads a thread issues before its stores when staging rows

static_assert(DG_HEAD_DIM / 2 == WARP_SIZE, "a lane holds one rotation pair of a head");
static_assert(DG_ROWS % DG_TOKEN_TILE == 0 && DG_ROWS <= WARP_SIZE, "whole token tiles; a lane a key");
static_assert(DG_CHUNK == 4 * BF16_PER_PACK, "a chunk is one 16-byte pack of each of a row's 4 lanes");
static_assert(DG_SLOT_LD >= DG_ROWS, "a slot row holds every token");

struct dg_block {
  const bf16 *norm_attn_w, *qkv_w, *qkv_b, *o_w, *o_b, *norm_mlp_w, *up_w, *up_b, *down_w, *down_b;
};
struct dg_args {
  dg_block blocks[DG_MAX_LAYERS];
  const bf16 *tok_embed, *final_norm_w;
  bf16 *out;
  const int32_t *ids, *pos, *cu_seqlens;
  bf16 *h, *x, *qkv, *attn, *ff;  // workspace: (T, C), (T, C), (T, qkv_dim), (T, C), (T, I)
  float *partial;                 // (down_chunks, T, C)
  unsigned int *barrier;          // DG_BARRIER_WORDS (grid_barrier), zero before the first launch
  unsigned long long *trace;      // NULL, or (barriers, blocks + 1) stamps (SN_FUSED_TRACE)
  int B, T, layers, C, I, Hq, Hkv;
  int down_groups, down_chunks;
  int prefetch;  // dg_prefetch_mode
  float eps, theta, scale;
};

// ---- the work split ----------------------------------------------------------------------------------
__host__ __device__ constexpr size_t dg_round(size_t bytes) {
  return (bytes + DG_SMEM_ALIGN - 1) / DG_SMEM_ALIGN * DG_SMEM_ALIGN;
}
// [begin, end) of `count` things split evenly over `parts`: part `rank`'s share.
struct dg_range {
  int begin, end;
  __host__ __device__ int size() const { return end - begin; }
};
__host__ __device__ inline dg_range dg_split(int count, int rank, int parts) {
  return {(int)((long long)rank * count / parts), (int)((long long)(rank + 1) * count / parts)};
}
// The shape and how the projections split over the blocks.
struct dg_shape {
  int C, I, qkv_dim, Hkv, blocks, down_groups, down_chunks;
  __host__ __device__ int max_share(int tiles) const { return (tiles + blocks - 1) / blocks; }
  __host__ __device__ int group_tiles() const { return C / DG_WTILE / down_groups; }
  __host__ __device__ dg_range down_slice(int chunk) const {  // in k chunks
    return dg_split(I / DG_CHUNK, chunk, down_chunks);
  }
  // the most m-tiles a block takes in one phase (its slots)
  __host__ __device__ int max_tiles() const {
    return max(max(max_share(qkv_dim / DG_WTILE), max_share(C / DG_WTILE)),
               max(2 * max_share(I / DG_WTILE), group_tiles()));
  }
  __host__ __device__ int max_slice() const { return (I / DG_CHUNK + down_chunks - 1) / down_chunks * DG_CHUNK; }
};
// A staged row's stride (bf16) for a width that is a multiple of DG_CHUNK.
__host__ __device__ inline int dg_x_ld(int width) {
  const int bytes = width * (int)sizeof(bf16);
  return width + (DG_X_SKEW - bytes % (2 * DG_X_SKEW) + 2 * DG_X_SKEW) % (2 * DG_X_SKEW) / (int)sizeof(bf16);
}

// ---- shared memory ---------------------------------------------------------------------------------
// xa: the rows a phase reads (DG_ROWS of C, or of a down slice); slots: each warp's sums of a tile
// (16 weight rows x the tokens, fp32), DG_WARPS + the block's tiles of them (product's indexing).
// During attention xa holds the angle table, the rotated keys and the values of every kv head and a
// query row a warp instead.
struct dg_smem {
  bf16 *xa, *norm_w;  // norm_w: the next norm's weight (C)
  float *slots;
  int *seq_start, *flag;
};
struct dg_attn_smem {
  float *cos_t, *sin_t, *q_buf;
  bf16 *keys, *values;
  int table_ld, key_ld;
};
struct dg_carver {  // consecutive aligned pieces of base (NULL: only counts the bytes, in `at`)
  unsigned char *base;
  size_t at;
  template <typename T>
  __host__ __device__ T *take(size_t count) {
    unsigned char *p = base ? base + at : nullptr;
    at += dg_round(count * sizeof(T));
    return reinterpret_cast<T *>(p);
  }
};
__host__ __device__ inline size_t dg_attn_carve(unsigned char *base, dg_attn_smem *s, int Hkv) {
  s->table_ld = DG_HEAD_DIM / 2 + DG_TABLE_PAD, s->key_ld = DG_HEAD_DIM + DG_KEY_PAD;
  dg_carver c = {base, 0};
  s->cos_t = c.take<float>((size_t)DG_ROWS * s->table_ld);
  s->sin_t = c.take<float>((size_t)DG_ROWS * s->table_ld);
  s->q_buf = c.take<float>((size_t)DG_WARPS * DG_HEAD_DIM);
  s->keys = c.take<bf16>((size_t)Hkv * DG_ROWS * s->key_ld);
  s->values = c.take<bf16>((size_t)Hkv * DG_ROWS * DG_HEAD_DIM);
  return c.at;
}
#define DG_SLOT_FLOATS (DG_WTILE * DG_SLOT_LD)
__host__ __device__ inline size_t dg_carve(unsigned char *base, dg_smem *s, const dg_shape &sh) {
  dg_attn_smem attn;
  const size_t rows = (size_t)DG_ROWS * max(dg_x_ld(sh.C), dg_x_ld(sh.max_slice())) * sizeof(bf16);
  const size_t xa = max(rows, dg_attn_carve(nullptr, &attn, sh.Hkv));
  dg_carver c = {base, 0};
  s->xa = c.take<bf16>(xa / sizeof(bf16));
  s->norm_w = c.take<bf16>(sh.C);
  s->slots = c.take<float>((size_t)(DG_WARPS + sh.max_tiles()) * DG_SLOT_FLOATS);
  s->seq_start = c.take<int>(DG_ROWS);
  s->flag = c.take<int>(1);
  return c.at;
}

// ---- small helpers -----------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t lds32(const bf16 *p) { return *reinterpret_cast<const uint32_t *>(p); }
__device__ __forceinline__ uint32_t ldg32(const bf16 *p) { return __ldg(reinterpret_cast<const unsigned int *>(p)); }
__device__ __forceinline__ uint32_t ldcg32(const bf16 *p) { return __ldcg(reinterpret_cast<const unsigned int *>(p)); }
__device__ __forceinline__ float bias_at(const bf16 *bias, int n) { return bias ? bf2f(bias[n]) : 0.0f; }
__device__ __forceinline__ float round_bf16(float v) { return bf2f(f2bf(v)); }
__device__ __forceinline__ void st32(bf16 *p, float lo, float hi) {
  *reinterpret_cast<uint32_t *>(p) = pack_bf16x2(lo, hi);
}
// How a block asks L2 for the weights ahead (SN_FUSED_PREFETCH, read once): not at all, one bulk
// prefetch a contiguous range (sm_90's cp.async.bulk.prefetch: one instruction, no register held),
// or a prefetch.global.L2 a 128-byte line spread over the block's threads.
enum dg_prefetch_mode { DG_PREFETCH_NONE, DG_PREFETCH_BULK, DG_PREFETCH_LINES, DG_PREFETCH_MODES };
#define DG_L2_LINE 128
// [p, p + bytes) into L2; bulk: p and bytes on 16 bytes, one thread's call; lines: every thread's.
__device__ __forceinline__ void prefetch_l2(const void *p, size_t bytes, int mode) {
  const char *c = reinterpret_cast<const char *>(p);
  if (mode == DG_PREFETCH_LINES) {
    for (size_t off = (size_t)threadIdx.x * DG_L2_LINE; off < bytes; off += (size_t)DG_THREADS * DG_L2_LINE)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
  } else if (mode == DG_PREFETCH_BULK && bytes > 0) {
#if __CUDA_ARCH__ >= 900  // the plan refuses older devices; their build of the kernel does without
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(c), "r"((unsigned)bytes) : "memory");
#endif
  }
}

// Activations other blocks wrote: rows x cols of src into shared memory, through L2 (ld.global.cg:
// L1 may hold the lines' older contents). A thread's packs are DG_THREADS apart, their (row, pack)
// stepped without dividing; DG_LOADS_IN_FLIGHT loads a thread before its stores (the 0.5B tower's
// 32 rows are 7 packs a thread: one round trip).
__device__ inline void load_rows(bf16 *dst, int dst_ld, const bf16 *src, size_t src_ld, int rows, int cols) {
  const int packs = cols / BF16_PER_PACK, n = rows * packs;
  const int step_r = DG_THREADS / packs, step_c = DG_THREADS % packs;
  int r = threadIdx.x / packs, c = threadIdx.x % packs;
  auto step = [&](int &row, int &pack) {
    row += step_r, pack += step_c;
    if (pack >= packs) pack -= packs, row++;
  };
  for (int e0 = threadIdx.x; e0 < n; e0 += DG_LOADS_IN_FLIGHT * DG_THREADS) {
    uint4 v[DG_LOADS_IN_FLIGHT];
    int r0 = r, c0 = c;
#pragma unroll
    for (int i = 0; i < DG_LOADS_IN_FLIGHT; i++, step(r, c))
      if (e0 + i * DG_THREADS < n) v[i] = __ldcg(reinterpret_cast<const uint4 *>(src + (size_t)r * src_ld + c * BF16_PER_PACK));
#pragma unroll
    for (int i = 0; i < DG_LOADS_IN_FLIGHT; i++, step(r0, c0))
      if (e0 + i * DG_THREADS < n) *reinterpret_cast<uint4 *>(dst + r0 * dst_ld + c0 * BF16_PER_PACK) = v[i];
  }
}
// A norm's weight (C) into shared memory ahead of its phase (cp.async, its own group); the phase
// waits for every group before its norm. Inside a norm's loop the weight's global loads were
// serialised behind the stores (their pointers may alias): 7% of session 11's stall samples.
__device__ inline void stage_norm_weight(bf16 *dst, const bf16 *w, int C) {
  for (int i = threadIdx.x; i < C / BF16_PER_PACK; i += DG_THREADS)
    cp_async16(dst + i * BF16_PER_PACK, w + i * BF16_PER_PACK);
  cp_async_commit();
}

// dst rows t = first, first + step, ... < T (stride dst_ld) = bf16(src * rstd * weight) as
// rmsnorm_forward computes it; a warp a row. src and weight are shared memory; dst may be src.
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
      const uint32_t v = lds32(x + c), wv = lds32(weight + c);
      *reinterpret_cast<uint32_t *>(dst + (size_t)t * dst_ld + c) =
          pack_bf16x2(bf16_lo(v) * rstd * bf16_lo(wv), bf16_hi(v) * rstd * bf16_hi(wv));
    }
  }
}

// The attention of query row t of one head, by one warp, RoPE applied as the unfused ops apply it.
// (q1, q2): the row's unrotated pair `lane` (elements lane and lane + 32), (c, s) its angle; q_buf:
// the warp's DG_HEAD_DIM floats of shared memory; keys: the head's rotated keys (bf16, rows of
// key_ld, shared memory), values its value rows (of v_ld, shared memory); rows [first, t] attended
// (causal, inside the row's sequence), a lane a key. Returns the lane's output pair, columns
// 2 lane and 2 lane + 1.
__device__ inline float2 attend_row(float q1, float q2, float c, float s, float *q_buf, const bf16 *keys, int key_ld,
                                    const bf16 *values, int v_ld, int first, int t, float scale, int lane) {
  constexpr int D = DG_HEAD_DIM, HALF = D / 2;
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

// ---- the grid barrier ------------------------------------------------------------------------------
// barrier[0] counts every block's arrivals since the words were zeroed (wrapping); barrier[1] holds
// its value when the running launch started (block 0 advances it past the launch's arrivals at the
// end, when every block has read it). Barrier k of a launch is passed once the count reaches
// base + (k + 1) blocks. An arrival is a release (fire and forget: every write of the block before
// the barrier is visible to a block that acquires the count after it), the wait an acquire poll:
// one one-way trip to L2 and a poll, where a count that is reset needs two round trips more. Sound
// because the launch is cooperative: every block is resident. With a trace, each block's arrival
// and block 0's departure are stamped (global ns), a row a barrier.
struct dg_sync {
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
__device__ inline void grid_barrier(dg_sync &sync) {
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

// ---- products ----------------------------------------------------------------------------------------
// A block's share of a projection: `tiles` m-tiles of 16 weight rows, k chunks [k0 / 32, + chunks)
// of each. Tile i's first row is 16 (tile0 + i); with `paired` (gate|up) tile 2j is gate tile
// tile0 + j and 2j + 1 the matching up tile, `paired` rows further.
struct dg_share {
  const bf16 *W;
  size_t ldw;
  int tile0, tiles, k0, chunks, paired;
  __device__ int row(int i) const {
    return paired ? (tile0 + i / 2) * DG_WTILE + (i % 2) * paired : (tile0 + i) * DG_WTILE;
  }
  // the items (tile, chunk), tile-major, of warp w: an equal run each
  __device__ dg_range items(int w) const { return dg_split(tiles * chunks, w, DG_WARPS); }
  // This block's weights into L2 (a range of whole rows, or a slice of each row); mode:
  // dg_prefetch_mode.
  __device__ void prefetch(int mode) const {
    const size_t row_bytes = (size_t)chunks * DG_CHUNK * sizeof(bf16);
    if (chunks * DG_CHUNK == (int)ldw) {  // whole rows: a range a run of consecutive tiles
      const int runs = paired ? 2 : 1, run_tiles = paired ? tiles / 2 : tiles;
      const size_t bytes = run_tiles * DG_WTILE * row_bytes;
      for (int run = 0; run < runs; run++)
        if (mode == DG_PREFETCH_LINES || threadIdx.x == run) prefetch_l2(W + (size_t)row(run) * ldw, bytes, mode);
    } else if (mode == DG_PREFETCH_LINES) {  // a line a thread over every (row, line) pair
      const int lines = (int)((row_bytes + DG_L2_LINE - 1) / DG_L2_LINE);
      for (int e = threadIdx.x; e < tiles * DG_WTILE * lines; e += DG_THREADS) {
        const int r = e / lines;
        const char *at = reinterpret_cast<const char *>(W + ((size_t)row(r / DG_WTILE) + r % DG_WTILE) * ldw + k0);
        asm volatile("prefetch.global.L2 [%0];" ::"l"(at + (size_t)(e % lines) * DG_L2_LINE));
      }
    } else {
      for (int r = threadIdx.x; r < tiles * DG_WTILE; r += DG_THREADS)
        prefetch_l2(W + ((size_t)row(r / DG_WTILE) + r % DG_WTILE) * ldw + k0, row_bytes, mode);
    }
  }
};
__device__ __forceinline__ uint4 ldg128(const bf16 *p) { return __ldg(reinterpret_cast<const uint4 *>(p)); }
__device__ __forceinline__ uint4 lds128(const bf16 *p) { return *reinterpret_cast<const uint4 *>(p); }

// Each warp's items of the share times the staged rows X (T tokens of the share's k slice, stride
// x_ld): lane (g, q) loads 16 bytes of weight rows g and g + 8 of the tile and of token rows g of
// each token tile, k 8q .. 8q + 7 of a chunk, so one chunk is two mma steps whose k order is the
// same permutation for both operands (the sum is over the same products). A warp's sums of tile i
// go to slot warp + i: the warps are in order along the items, so warp + i is unique to a (warp,
// tile) pair that has items.
__device__ void share_product(const dg_share &s, const bf16 *X, int x_ld, int T, float *slots, int warp, int g,
                              int q) {
  const dg_range mine = s.items(warp);
  const int token_tiles = (T + DG_TOKEN_TILE - 1) / DG_TOKEN_TILE;
  const bf16 *x = X + (size_t)g * x_ld + BF16_PER_PACK * q;
  for (int it = mine.begin; it < mine.end;) {
    const int i = it / s.chunks, run_end = min(mine.end, (i + 1) * s.chunks);
    const bf16 *w_lo = s.W + (size_t)(s.row(i) + g) * s.ldw + s.k0 + BF16_PER_PACK * q;
    const bf16 *w_hi = w_lo + (size_t)8 * s.ldw;
    float acc[DG_TOKEN_TILES][4] = {};
    for (; it < run_end; it += DG_BATCH) {
      const int c0 = it - i * s.chunks, n = min(DG_BATCH, run_end - it);
      uint4 lo[DG_BATCH], hi[DG_BATCH];
#pragma unroll
      for (int b = 0; b < DG_BATCH; b++)
        if (b < n) lo[b] = ldg128(w_lo + (c0 + b) * DG_CHUNK), hi[b] = ldg128(w_hi + (c0 + b) * DG_CHUNK);
#pragma unroll
      for (int b = 0; b < DG_BATCH; b++) {
        if (b >= n) break;
        const uint32_t a0[4] = {lo[b].x, hi[b].x, lo[b].y, hi[b].y}, a1[4] = {lo[b].z, hi[b].z, lo[b].w, hi[b].w};
#pragma unroll
        for (int j = 0; j < DG_TOKEN_TILES; j++) {
          if (j >= token_tiles) break;
          const uint4 xv = lds128(x + (size_t)j * DG_TOKEN_TILE * x_ld + (c0 + b) * DG_CHUNK);
          const uint32_t b0[2] = {xv.x, xv.y}, b1[2] = {xv.z, xv.w};
          mma_bf16(acc[j], a0, b0);
          mma_bf16(acc[j], a1, b1);
        }
      }
    }
    it = run_end;  // the last batch may stop short of DG_BATCH
    // acc[j]: weight rows g, g + 8 x tokens 8j + 2q, + 1
    float *slot = slots + (size_t)(warp + i) * DG_SLOT_FLOATS;
#pragma unroll
    for (int j = 0; j < DG_TOKEN_TILES; j++) {
      if (j >= token_tiles) break;
      const int t = j * DG_TOKEN_TILE + 2 * q;
      *reinterpret_cast<float2 *>(slot + g * DG_SLOT_LD + t) = make_float2(acc[j][0], acc[j][1]);
      *reinterpret_cast<float2 *>(slot + (g + 8) * DG_SLOT_LD + t) = make_float2(acc[j][2], acc[j][3]);
    }
  }
}
// The share's sum for weight row r (0..15) of tile i and token t: the slots of the warps whose items
// cover the tile (from the warp of its first item to that of its last), in warp order. After
// share_product and a __syncthreads.
__device__ __forceinline__ float tile_sum(const dg_share &s, const float *slots, int i, int r, int t) {
  const int items = s.tiles * s.chunks;
  const int first = (DG_WARPS * (i * s.chunks + 1) - 1) / items, last = (DG_WARPS * (i + 1) * s.chunks - 1) / items;
  const bool every_warp = items >= DG_WARPS;  // then no warp's run is empty
  float sum = 0.0f;
#pragma unroll 4
  for (int w = first; w <= last; w++)
    if (every_warp || s.items(w).size() > 0) sum += slots[(size_t)(w + i) * DG_SLOT_FLOATS + r * DG_SLOT_LD + t];
  return sum;
}
// Calls f(i, r, t) for the pairs of weight rows (r, r + 1) of `tiles` tiles and tokens t < T, the
// tokens fastest (consecutive threads read consecutive slot words).
template <typename F>
__device__ __forceinline__ void for_each_output(int tiles, int T, F f) {
  const int per_tile = DG_WTILE / 2 * T;
  for (int e = threadIdx.x; e < tiles * per_tile; e += DG_THREADS) {
    const int i = e / per_tile, r = e % per_tile / T * 2, t = e % T;
    f(i, r, t);
  }
}

// This block's shares of each projection of a decoder block: m-tile ranges of q|k|v, o and the
// gate|up pairs, and its unit of down (column group x slice of I) if it has one.
struct dg_layout {
  dg_range qkv_tiles, o_tiles, pairs, slice;
  int C, I, group, group_tiles, chunk;
  bool has_unit;
  __device__ dg_layout(const dg_shape &sh, int rank)
      : qkv_tiles(dg_split(sh.qkv_dim / DG_WTILE, rank, sh.blocks)), o_tiles(dg_split(sh.C / DG_WTILE, rank, sh.blocks)),
        pairs(dg_split(sh.I / DG_WTILE, rank, sh.blocks)), slice(sh.down_slice(rank / sh.down_groups)), C(sh.C),
        I(sh.I), group(rank % sh.down_groups), group_tiles(sh.group_tiles()), chunk(rank / sh.down_groups),
        has_unit(rank < sh.down_groups * sh.down_chunks) {}
  __device__ dg_share qkv(const dg_block &b) const {
    return {b.qkv_w, (size_t)C, qkv_tiles.begin, qkv_tiles.size(), 0, C / DG_CHUNK, 0};
  }
  __device__ dg_share o(const dg_block &b) const {
    return {b.o_w, (size_t)C, o_tiles.begin, o_tiles.size(), 0, C / DG_CHUNK, 0};
  }
  __device__ dg_share gate_up(const dg_block &b) const {
    return {b.up_w, (size_t)C, pairs.begin, 2 * pairs.size(), 0, C / DG_CHUNK, I};
  }
  __device__ dg_share down(const dg_block &b) const {
    return {b.down_w, (size_t)I, group * group_tiles, has_unit ? group_tiles : 0, slice.begin * DG_CHUNK,
            slice.size(), 0};
  }
};
// Phase s = DG_PHASES l + k (k: A .. E) of the launch: this block's share of the weights it reads
// into L2. Not inlined: it runs five times a decoder block, and inlined its registers spilled the
// kernel's.
__device__ __noinline__ void prefetch_phase(const dg_args &p, const dg_layout &L, int s) {
  const int l = s / DG_PHASES;
  if (l >= p.layers || p.prefetch == DG_PREFETCH_NONE) return;
  const dg_block &b = p.blocks[l];
  switch (s % DG_PHASES) {
    case 0: L.qkv(b).prefetch(p.prefetch); break;
    case 2: L.o(b).prefetch(p.prefetch); break;
    case 3: L.gate_up(b).prefetch(p.prefetch); break;
    case 4: L.down(b).prefetch(p.prefetch); break;
    default: break;  // attention reads no weights
  }
}

// ---- the kernel ------------------------------------------------------------------------------------
// Each block prefetches the share phase s + DG_PREFETCH_AHEAD reads as phase s starts.
__global__ void __launch_bounds__(DG_THREADS, 1) decoder_fused_kernel(const __grid_constant__ dg_args p) {
  extern __shared__ __align__(16) unsigned char dg_shared[];
  constexpr int D = DG_HEAD_DIM, HALF = D / 2;
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, q = lane % 4;
  const int T = p.T, C = p.C, I = p.I, Hq = p.Hq, Hkv = p.Hkv, qkv_dim = (Hq + 2 * Hkv) * D;
  const int rank = blockIdx.x, blocks = gridDim.x;
  const dg_shape sh = {C, I, qkv_dim, Hkv, blocks, p.down_groups, p.down_chunks};
  dg_smem S;
  dg_carve(dg_shared, &S, sh);
  const int ld = dg_x_ld(C);
  dg_sync sync = {p.barrier, p.trace, threadIdx.x == 0 ? ld_acquire(p.barrier + 1) : 0u, 0};

  const dg_layout L(sh, rank);
  const int slice_ld = dg_x_ld(L.slice.size() * DG_CHUNK), group_cols = sh.group_tiles() * DG_WTILE;
  for (int s = 0; s < DG_PREFETCH_AHEAD; s++) prefetch_phase(p, L, s);

  // h = the token embeddings
  for (int e = rank * DG_THREADS + threadIdx.x; e < T * (C / BF16_PER_PACK); e += blocks * DG_THREADS) {
    const int t = e / (C / BF16_PER_PACK), c = e % (C / BF16_PER_PACK) * BF16_PER_PACK;
    *reinterpret_cast<uint4 *>(p.h + (size_t)t * C + c) =
        __ldg(reinterpret_cast<const uint4 *>(p.tok_embed + (size_t)p.ids[t] * C + c));
  }
  for (int t = threadIdx.x; t < T; t += DG_THREADS) {
    int b = 0;
    while (b + 1 < p.B && p.cu_seqlens[b + 1] <= t) b++;
    S.seq_start[t] = p.cu_seqlens[b];
  }
  stage_norm_weight(S.norm_w, p.blocks[0].norm_attn_w, C);
  grid_barrier(sync);

  for (int l = 0; l < p.layers; l++) {
    const dg_block &blk = p.blocks[l];
    const int s0 = l * DG_PHASES;
    // A: xn = rmsnorm(h) (every block, all rows); q|k|v = xn W_qkv^T + b, this block's rows of W
    prefetch_phase(p, L, s0 + DG_PREFETCH_AHEAD);
    const dg_share qkv = L.qkv(blk);
    if (qkv.tiles > 0) {
      load_rows(S.xa, ld, p.h, C, T, C);
      cp_async_wait<0>();  // the norm's weight
      __syncthreads();
      norm_rows(S.xa, ld, S.xa, ld, S.norm_w, warp, DG_WARPS, T, C, p.eps, lane);
      __syncthreads();
      share_product(qkv, S.xa, ld, T, S.slots, warp, g, q);
      __syncthreads();
      for_each_output(qkv.tiles, T, [&](int i, int r, int t) {
        const int col = qkv.row(i) + r;
        st32(p.qkv + (size_t)t * qkv_dim + col, tile_sum(qkv, S.slots, i, r, t) + bias_at(blk.qkv_b, col),
             tile_sum(qkv, S.slots, i, r + 1, t) + bias_at(blk.qkv_b, col + 1));
      });
    }
    grid_barrier(sync);

    // B: attention, a warp a (head, row) pair over the grid; the angles, rotated keys and values of
    // every kv head into xa first (blocks with pairs only)
    prefetch_phase(p, L, s0 + 1 + DG_PREFETCH_AHEAD);
    cp_async_wait<0>();  // a block that skipped A's norm: its copy lands before the next one
    stage_norm_weight(S.norm_w, blk.norm_mlp_w, C);
    if (rank * DG_WARPS < Hq * T) {
      dg_attn_smem A;
      dg_attn_carve(reinterpret_cast<unsigned char *>(S.xa), &A, Hkv);
      for (int e = threadIdx.x; e < T * HALF; e += DG_THREADS) {
        const int t = e / HALF, i = e % HALF;
        rope_cos_sin(p.pos[t], i, D, p.theta, &A.cos_t[t * A.table_ld + i], &A.sin_t[t * A.table_ld + i]);
      }
      __syncthreads();
      for (int e = threadIdx.x; e < Hkv * T * HALF; e += DG_THREADS) {
        const int i = e % HALF, t = (e / HALF) % T, kh = e / (HALF * T);
        const bf16 *k = p.qkv + (size_t)t * qkv_dim + (Hq + kh) * D;
        float r1, r2;
        rope_rotate(bf2f(__ldcg(k + i)), bf2f(__ldcg(k + i + HALF)), A.cos_t[t * A.table_ld + i],
                    A.sin_t[t * A.table_ld + i], &r1, &r2);
        bf16 *key = A.keys + ((size_t)kh * DG_ROWS + t) * A.key_ld;
        key[i] = f2bf(r1), key[i + HALF] = f2bf(r2);
      }
      for (int kh = 0; kh < Hkv; kh++)
        load_rows(A.values + (size_t)kh * DG_ROWS * D, D, p.qkv + (Hq + Hkv + kh) * D, qkv_dim, T, D);
      __syncthreads();
      const int per_group = Hq / Hkv;
      for (int task = rank * DG_WARPS + warp; task < Hq * T; task += blocks * DG_WARPS) {
        const int h = task / T, t = task % T, kh = h / per_group;
        const bf16 *qrow = p.qkv + (size_t)t * qkv_dim + h * D;
        const float2 o = attend_row(bf2f(__ldcg(qrow + lane)), bf2f(__ldcg(qrow + lane + HALF)),
                                    A.cos_t[t * A.table_ld + lane], A.sin_t[t * A.table_ld + lane],
                                    A.q_buf + warp * D, A.keys + (size_t)kh * DG_ROWS * A.key_ld, A.key_ld,
                                    A.values + (size_t)kh * DG_ROWS * D, D, S.seq_start[t], t, p.scale, lane);
        st32(p.attn + (size_t)t * C + h * D + 2 * lane, o.x, o.y);
      }
    }
    grid_barrier(sync);

    // C: x = h + attn W_o^T + b, this block's rows of W
    prefetch_phase(p, L, s0 + 2 + DG_PREFETCH_AHEAD);
    const dg_share o = L.o(blk);
    if (o.tiles > 0) {
      load_rows(S.xa, ld, p.attn, C, T, C);
      __syncthreads();
      share_product(o, S.xa, ld, T, S.slots, warp, g, q);
      __syncthreads();
      for_each_output(o.tiles, T, [&](int i, int r, int t) {
        const int col = o.row(i) + r;
        const uint32_t h = ldcg32(p.h + (size_t)t * C + col);
        const float o0 = round_bf16(tile_sum(o, S.slots, i, r, t) + bias_at(blk.o_b, col));
        const float o1 = round_bf16(tile_sum(o, S.slots, i, r + 1, t) + bias_at(blk.o_b, col + 1));
        st32(p.x + (size_t)t * C + col, bf16_lo(h) + o0, bf16_hi(h) + o1);
      });
    }
    grid_barrier(sync);

    // D: ff = swiglu(rmsnorm(x) W_gate|up^T + b), this block's gate rows and the matching up rows
    prefetch_phase(p, L, s0 + 3 + DG_PREFETCH_AHEAD);
    const dg_share gu = L.gate_up(blk);
    if (gu.tiles > 0) {
      load_rows(S.xa, ld, p.x, C, T, C);
      cp_async_wait<0>();  // the norm's weight
      __syncthreads();
      norm_rows(S.xa, ld, S.xa, ld, S.norm_w, warp, DG_WARPS, T, C, p.eps, lane);
      __syncthreads();
      share_product(gu, S.xa, ld, T, S.slots, warp, g, q);
      __syncthreads();
      for_each_output(gu.tiles / 2, T, [&](int j, int r, int t) {
        const int c = (gu.tile0 + j) * DG_WTILE + r;
        float f[2];
#pragma unroll
        for (int k = 0; k < 2; k++) {
          const float gv = round_bf16(tile_sum(gu, S.slots, 2 * j, r + k, t) + bias_at(blk.up_b, c + k));
          const float uv = round_bf16(tile_sum(gu, S.slots, 2 * j + 1, r + k, t) + bias_at(blk.up_b, I + c + k));
          f[k] = silu_f(gv) * uv;
        }
        st32(p.ff + (size_t)t * I + c, f[0], f[1]);
      });
    }
    grid_barrier(sync);

    // E: partial[chunk] = ff[:, slice] W_down[group's rows, slice]^T; the group's last unit to
    // finish adds the group's partials (chunk order) + b to x into h
    prefetch_phase(p, L, s0 + 4 + DG_PREFETCH_AHEAD);
    cp_async_wait<0>();
    stage_norm_weight(S.norm_w, l + 1 < p.layers ? p.blocks[l + 1].norm_attn_w : p.final_norm_w, C);
    if (L.has_unit) {
      const dg_share dn = L.down(blk);
      load_rows(S.xa, slice_ld, p.ff + dn.k0, I, T, dn.chunks * DG_CHUNK);
      __syncthreads();
      share_product(dn, S.xa, slice_ld, T, S.slots, warp, g, q);
      __syncthreads();
      for_each_output(dn.tiles, T, [&](int i, int r, int t) {
        *reinterpret_cast<float2 *>(p.partial + ((size_t)L.chunk * T + t) * C + dn.row(i) + r) =
            make_float2(tile_sum(dn, S.slots, i, r, t), tile_sum(dn, S.slots, i, r + 1, t));
      });
      if (last_of_group(p.barrier + DG_GROUP_COUNTS + L.group, p.down_chunks, S.flag)) {
        for (int e = threadIdx.x; e < T * (group_cols / 2); e += DG_THREADS) {
          const int t = e / (group_cols / 2), col = L.group * group_cols + 2 * (e % (group_cols / 2));
          float s0v = 0.0f, s1v = 0.0f;
          for (int k = 0; k < p.down_chunks; k++) {
            const float2 v = __ldcg(reinterpret_cast<const float2 *>(p.partial + ((size_t)k * T + t) * C + col));
            s0v += v.x, s1v += v.y;
          }
          const uint32_t x = ldcg32(p.x + (size_t)t * C + col);
          const float d0 = round_bf16(s0v + bias_at(blk.down_b, col));
          const float d1 = round_bf16(s1v + bias_at(blk.down_b, col + 1));
          st32(p.h + (size_t)t * C + col, bf16_lo(x) + d0, bf16_hi(x) + d1);
        }
      }
    }
    grid_barrier(sync);
  }
  // every block has read the base (before its first arrival): the next launch's starts here
  if (rank == 0 && threadIdx.x == 0) p.barrier[1] = sync.base + (unsigned int)sync.passed * blocks;
  // out = rmsnorm(h, final_norm_w): row t by block t
  cp_async_wait<0>();  // the final norm's weight
  for (int t = rank; t < T; t += blocks) {
    load_rows(S.xa, ld, p.h + (size_t)t * C, C, 1, C);
    __syncthreads();
    if (warp == 0) norm_rows(p.out + (size_t)t * C, C, S.xa, ld, S.norm_w, 0, 1, 1, C, p.eps, lane);
    __syncthreads();
  }
}

// ---- the plan ----------------------------------------------------------------------------------------
// down's units: column groups (whole m-tiles) x slices of I (whole chunks), at most a unit a block,
// chosen for the least bytes the busiest block reads: a unit's weights plus, for its group's last
// unit, every slice's partial sums of the group's columns (at DG_ROWS tokens); the layout must fit
// shared memory. Returns false when no split fits.
static bool dg_down_split(dg_shape *sh, size_t smem_max) {
  const int tiles = sh->C / DG_WTILE, chunks_max = sh->I / DG_CHUNK;
  double best_cost = 0.0;
  dg_shape best = *sh;
  for (int groups = 1; groups <= std::min(tiles, DG_MAX_GROUPS); groups++) {
    if (tiles % groups) continue;
    for (int chunks = 1; chunks <= chunks_max && groups * chunks <= sh->blocks; chunks++) {
      const double cols = (double)sh->C / groups;
      const double cost = cols * ((double)sh->I / chunks) * sizeof(bf16) + chunks * cols * DG_ROWS * sizeof(float);
      dg_shape trial = *sh;
      trial.down_groups = groups, trial.down_chunks = chunks;
      dg_smem layout;
      if ((best_cost > 0.0 && cost >= best_cost) || dg_carve(nullptr, &layout, trial) > smem_max) continue;
      best_cost = cost, best = trial;
    }
  }
  *sh = best;
  return best_cost > 0.0;
}

struct dg_plan {
  int blocks;  // 0: the shape is not taken
  size_t smem;
  int down_groups, down_chunks;
};
// Whether the kernel takes w on this device (*out filled when it does): one plan serves every T up
// to DG_ROWS (the caller checks T). Memoised per shape (the answer does not change).
static bool dg_plan_for(const sn_decoder_weights *w, dg_plan *out) {
  struct entry {
    int C, I, Hkv, qkv_dim;
    dg_plan plan;
  };
  static entry cache[DG_PLAN_CACHE];
  static int cached = 0;
  static std::mutex cache_lock;  // contexts of several threads plan at once
  std::lock_guard<std::mutex> hold(cache_lock);
  const int C = w->hidden, I = w->intermediate, qkv_dim = (w->heads + 2 * w->kv_heads) * w->head_dim;
  for (int i = 0; i < cached; i++)
    if (cache[i].C == C && cache[i].I == I && cache[i].Hkv == w->kv_heads && cache[i].qkv_dim == qkv_dim) {
      *out = cache[i].plan;
      return out->blocks > 0;
    }
  dg_plan plan = {0, 0, 0, 0};
  const int smem_max = sn_cuda_smem_optin_max();
  dg_shape sh = {C, I, qkv_dim, w->kv_heads, sn_cuda_sm_count(), 0, 0};
  if (sn_cuda_cooperative_launch() && sn_cuda_cc_major() >= 9 && C % DG_CHUNK == 0 && I % DG_CHUNK == 0 &&
      C % (2 * DG_WTILE) == 0 && dg_down_split(&sh, (size_t)smem_max)) {
    dg_smem layout;
    const size_t smem = dg_carve(nullptr, &layout, sh);
    // the device's cap (every shape's plan sets the same)
    cudaCheck(cudaFuncSetAttribute(decoder_fused_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_max));
    int per_sm = 0;
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decoder_fused_kernel, DG_THREADS, smem));
    if (per_sm >= 1) plan = {sh.blocks, smem, sh.down_groups, sh.down_chunks};
  }
  if (cached < DG_PLAN_CACHE) cache[cached++] = {C, I, w->kv_heads, qkv_dim, plan};
  *out = plan;
  return plan.blocks > 0;
}

// The current context's barrier words: allocated and zeroed once (each launch leaves the base at the
// count), one set a context so that launches on two streams never count on the same words.
static unsigned int *dg_barrier(void) {
  cuda_context *ctx = cuda_context_current();
  if (!ctx->grid_barrier) {
    ctx->grid_barrier = (unsigned int *)cuda_alloc(DG_BARRIER_WORDS * sizeof(unsigned int));
    cudaCheck(cudaMemsetAsync(ctx->grid_barrier, 0, DG_BARRIER_WORDS * sizeof(unsigned int), SN_STREAM));
  }
  return ctx->grid_barrier;
}

// ---- the phase trace (SN_FUSED_TRACE=N: every Nth launch of the process) ------------------------
static const char *const DG_PHASE_NAMES[DG_PHASES] = {"A norm+qkv", "B attention", "C o_proj", "D norm+gate|up",
                                                      "E down + sum"};
// Every how many launches to trace one (0: none), read once; anything but a count is warned about
// and read as 0.
static int dg_read_trace_every(void) {
  const char *v = getenv("SN_FUSED_TRACE");
  char *end = nullptr;
  const long n = v ? strtol(v, &end, 10) : 0;
  if (v && (end == v || *end != '\0' || n < 0 || n > INT_MAX)) {
    fprintf(stderr, "warning: environment variable SN_FUSED_TRACE='%s' is not a launch count; read as 0\n", v);
    return 0;
  }
  return (int)n;
}
// SN_FUSED_PREFETCH (dg_prefetch_mode, default bulk), read once; another value is warned about
// and read as the default.
static int dg_read_prefetch_mode(void) {
  const char *v = getenv("SN_FUSED_PREFETCH");
  if (!v) return DG_PREFETCH_BULK;
  if (v[0] >= '0' && v[0] < '0' + DG_PREFETCH_MODES && v[1] == '\0') return v[0] - '0';
  fprintf(stderr, "warning: environment variable SN_FUSED_PREFETCH='%s' is not 0 (none), 1 (bulk) or 2 (lines); "
          "read as 1\n", v);
  return DG_PREFETCH_BULK;
}
static int dg_prefetch_mode(void) {
  static const int mode = dg_read_prefetch_mode();
  return mode;
}
static int dg_trace_launch(void) {
  static const int every = dg_read_trace_every();  // once, also when contexts race to the first launch
  return every;
}
// Prints, per phase and averaged over the decoder blocks: the work (from block 0 leaving the barrier
// before to the last block's arrival), the spread of the arrivals (last - first), and the barrier's
// own latency (block 0 leaving after the last arrival).
static void dg_print_trace(const unsigned long long *t, int barriers, int blocks, int layers, int T) {
  double work[DG_PHASES] = {0}, spread[DG_PHASES] = {0}, latency[DG_PHASES] = {0};
  const int row = blocks + 1;
  unsigned long long first_start = ~0ull;
  for (int b = 0; b < blocks; b++) first_start = std::min(first_start, t[b]);
  for (int k = 1; k < barriers; k++) {
    const unsigned long long *r = t + (size_t)k * row;
    unsigned long long first = ~0ull, last = 0;
    for (int b = 0; b < blocks; b++) first = std::min(first, r[b]), last = std::max(last, r[b]);
    const int phase = (k - 1) % DG_PHASES;
    work[phase] += 1e-3 * (double)(last - t[(size_t)(k - 1) * row + blocks]);
    spread[phase] += 1e-3 * (double)(last - first);
    latency[phase] += 1e-3 * (double)(r[blocks] - last);
  }
  fprintf(stderr, "decoder_fused trace: %d blocks, %d decoder blocks, T=%d: %.1f us from the first arrival "
          "to the last departure\n", blocks, layers, T, 1e-3 * (double)(t[(size_t)(barriers - 1) * row + blocks] -
                                                                       first_start));
  for (int p = 0; p < DG_PHASES; p++)
    fprintf(stderr, "  %-15s work %6.2f us, arrival spread %6.2f us, barrier %5.2f us (a decoder block)\n",
            DG_PHASE_NAMES[p], work[p] / layers, spread[p] / layers, latency[p] / layers);
}

// ---- the checks and the launch ---------------------------------------------------------------------
static bool dg_tensors_aligned(const sn_decoder_weights *w) {
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
// Whether the kernel takes this decoder at T tokens (*plan filled when it does): head dim 64,
// Hq * 64 = C, whole GQA groups, at most DG_ROWS tokens and DG_MAX_LAYERS blocks, every tensor on
// 16 bytes, and a plan for the device; false sends the model to the general path.
static bool dg_supports(const sn_decoder_weights *w, int T, dg_plan *plan) {
  if (T < 1 || T > DG_ROWS || w->layers < 1 || w->layers > DG_MAX_LAYERS || w->head_dim != DG_HEAD_DIM ||
      w->heads * w->head_dim != w->hidden || w->kv_heads < 1 || w->heads % w->kv_heads != 0 ||
      !dg_tensors_aligned(w))
    return false;
  return dg_plan_for(w, plan);
}

int cuda_decoder_fused_supports(const sn_decoder_weights *w, int T) {
  dg_plan plan;
  return dg_supports(w, T, &plan) ? 1 : 0;
}

void cuda_decoder_fused_forward(void *out, const int32_t *ids, const int32_t *pos, const int32_t *cu_seqlens, int B,
                                int T, const sn_decoder_weights *w) {
  dg_plan plan;
  if (!dg_supports(w, T, &plan)) {
    fprintf(stderr, "error: %s:%d: decoder_fused_forward: shape not supported (T=%d C=%d I=%d heads %d/%d of %d; "
            "ask decoder_fused_supports first)\n", __FILE__, __LINE__, T, w->hidden, w->intermediate, w->heads,
            w->kv_heads, w->head_dim);
    exit(1);
  }
  const int C = w->hidden, I = w->intermediate, qkv_dim = (w->heads + 2 * w->kv_heads) * w->head_dim;
  const size_t act = dg_round((size_t)DG_ROWS * C * sizeof(bf16));
  const size_t qkv_bytes = dg_round((size_t)DG_ROWS * qkv_dim * sizeof(bf16));
  const size_t ff_bytes = dg_round((size_t)DG_ROWS * I * sizeof(bf16));
  const size_t partial_bytes = (size_t)plan.down_chunks * DG_ROWS * C * sizeof(float);
  unsigned char *ws = (unsigned char *)sn_cuda_scratch(SCRATCH_DECODER_FUSED, 3 * act + qkv_bytes + ff_bytes +
                                                                                 partial_bytes);
  dg_args a = {};
  for (int l = 0; l < w->layers; l++) {
    const sn_decoder_block &b = w->blocks[l];
    a.blocks[l] = {(const bf16 *)b.norm_attn_w, (const bf16 *)b.qkv_w, (const bf16 *)b.qkv_b, (const bf16 *)b.o_w,
                   (const bf16 *)b.o_b, (const bf16 *)b.norm_mlp_w, (const bf16 *)b.up_w, (const bf16 *)b.up_b,
                   (const bf16 *)b.down_w, (const bf16 *)b.down_b};
  }
  a.tok_embed = (const bf16 *)w->tok_embed, a.final_norm_w = (const bf16 *)w->final_norm_w, a.out = (bf16 *)out;
  a.ids = ids, a.pos = pos, a.cu_seqlens = cu_seqlens;
  a.h = (bf16 *)ws, a.x = (bf16 *)(ws + act), a.attn = (bf16 *)(ws + 2 * act), a.qkv = (bf16 *)(ws + 3 * act);
  a.ff = (bf16 *)(ws + 3 * act + qkv_bytes), a.partial = (float *)(ws + 3 * act + qkv_bytes + ff_bytes);
  a.barrier = dg_barrier();
  a.B = B, a.T = T, a.layers = w->layers, a.C = C, a.I = I, a.Hq = w->heads, a.Hkv = w->kv_heads;
  a.down_groups = plan.down_groups, a.down_chunks = plan.down_chunks, a.prefetch = dg_prefetch_mode();
  a.eps = w->norm_eps, a.theta = w->rope_theta, a.scale = 1.0f / sqrtf((float)w->head_dim);
  static std::atomic<int> launches{0};
  const int barriers = 1 + DG_PHASES * w->layers;
  bool trace = dg_trace_launch() > 0 && (launches.fetch_add(1) + 1) % dg_trace_launch() == 0;
  if (trace) {  // not while a graph records (the trace synchronizes); asked only here, off the hot path
    cudaStreamCaptureStatus capturing;
    cudaCheck(cudaStreamIsCapturing(SN_STREAM, &capturing));
    trace = capturing == cudaStreamCaptureStatusNone;
  }
  const size_t trace_bytes = (size_t)barriers * (plan.blocks + 1) * sizeof(unsigned long long);
  a.trace = trace ? (unsigned long long *)cuda_alloc(trace_bytes) : nullptr;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeCooperative;
  attr.val.cooperative = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(plan.blocks), cfg.blockDim = dim3(DG_THREADS), cfg.dynamicSmemBytes = plan.smem;
  cfg.stream = SN_STREAM, cfg.attrs = &attr, cfg.numAttrs = 1;
  cudaCheck(cudaLaunchKernelEx(&cfg, decoder_fused_kernel, a));
  launchCheck();
  if (trace) {
    unsigned long long *stamps = (unsigned long long *)malloc(trace_bytes);
    cudaCheck(cudaMemcpyAsync(stamps, a.trace, trace_bytes, cudaMemcpyDeviceToHost, SN_STREAM));
    cudaCheck(cudaStreamSynchronize(SN_STREAM));
    dg_print_trace(stamps, barriers, plan.blocks, w->layers, T);
    free(stamps);
    cuda_free(a.trace);
  }
}
