// The fused decoder's two kernels (ops.h decoder_fused_forward) share these: the tile shape of
// their products, the blocks' tensors as the kernels take them, the row norm, the attention of one
// (head, row) pair by a warp, and the grid kernel's entry points for the dispatch in
// decoder_fused.cu. decoder_fused.cu: a student-sized decoder in one thread-block cluster, its
// activations in shared memory. decoder_fused_grid.cu: wider decoders (the 0.5B tower) over every
// multiprocessor, its activations in global memory.
#pragma once
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
#define DF_MAX_LAYERS SN_DECODER_FUSED_MAX_LAYERS  // blocks passed in the kernels' parameters (80 bytes each)
#define DF_SMEM_ALIGN 16
#define DF_PLAN_CACHE 8       // decoder shapes a process plans for (a tower and a student or two)

static_assert(DF_HEAD_DIM / 2 == WARP_SIZE, "a lane holds one rotation pair of a head");
static_assert(DF_ROWS == 2 * DF_MMA_ROWS, "rows are one or two m-tiles");

struct df_block {
  const bf16 *norm_attn_w, *qkv_w, *qkv_b, *o_w, *o_b, *norm_mlp_w, *up_w, *up_b, *down_w, *down_b;
};
// The blocks of w as the kernels take them (out: w->layers of them).
void df_blocks_from(const sn_decoder_weights *w, df_block *out);
// Whether every tensor of w is on 16 bytes (NULL, an absent bias, is).
bool df_tensors_aligned(const sn_decoder_weights *w);

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
// n0 + 2q, + 1 of rows g and g + 8 of each m-tile (the first at row0).
template <int MT, typename F>
__device__ __forceinline__ void for_each_pair(const float (&acc)[MT][4], int n0, int T, int g, int q, F f,
                                              int row0 = 0) {
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      const int row = row0 + mt * DF_MMA_ROWS + g + 8 * hh;
      if (row < T) f(row, n0 + 2 * q, acc[mt][2 * hh], acc[mt][2 * hh + 1]);
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

// ---- the grid kernel (decoder_fused_grid.cu) ----------------------------------------------------------
struct dg_plan {
  int blocks;  // 0: the shape is not taken
  size_t smem;
  int down_groups, down_chunks;  // down's work units: column groups x slices of the MLP's width
};
// Whether the grid kernel takes w on this device (*plan filled when it does): one plan serves every
// T up to DF_ROWS (the caller checks T).
bool dg_plan_for(const sn_decoder_weights *w, dg_plan *plan);
void dg_forward(const dg_plan *plan, void *out, const int32_t *ids, const int32_t *pos, const int32_t *cu_seqlens,
                int B, int T, const sn_decoder_weights *w);
