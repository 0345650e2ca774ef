// decoder_fused: the whole inference forward of a small decoder (a distilled query student) over a
// few tokens in one launch (ops.h states the maths).
// Why: a 6-layer 384-wide student query is ~58 kernels of a few microseconds each on the general
// path, so its time is launch and ramp latency, not work (0.150-0.158 ms on the H100 against
// 26 MB of weights: 8 µs at the copy rate; docs/PERFORMANCE.md). Here one thread-block cluster
// runs every block and keeps the activations in shared memory:
// - the cluster's blocks (16 where the device schedules such a cluster, else the portable 8) split
//   every projection by output columns, n-tiles of 8 a warp (mma.sync m16n8k16, fp32 accumulation),
//   and write their columns into every block's copy (distributed shared memory), so each block
//   holds the full residual stream, q|k|v and attention output;
// - a tile's weights go straight from global memory into the warp's registers as mma fragments,
//   and the first tile of the next projection is loaded before the cluster barrier that waits for
//   its input: the barrier hides the load's latency; each block asks L2 for its share of the next
//   decoder block's weights a block ahead (prefetch.global.L2), so the loads find them there;
// - the attention of a (head, query) pair is one warp (at most 32 keys: a lane a key), with RoPE's
//   angles tabulated once for every layer;
// - gate|up gives each block its own slice of the MLP's width with SwiGLU applied in registers;
//   down then runs split over those slices (each block the whole output from its slice), and
//   each block adds the slices for its columns in rank order (deterministic) with the residual.
// Five cluster barriers a block; values are rounded to bf16 where the unfused ops store them, so
// the result is the general path's within bf16 rounding of the sums' order.
// Built for the shapes below (DF_VARIANTS); wider decoders go to decoder_fused_grid.cu, and the
// model falls back to the general path for what neither takes.
#include <cooperative_groups.h>

#include "decoder_fused.cuh"

namespace cg = cooperative_groups;

#define DF_WARPS 8
#define DF_THREADS (DF_WARPS * WARP_SIZE)
#define DF_CLUSTER_MAX 16     // the largest (non-portable) cluster sm_90 schedules
#define DF_CLUSTER_PORTABLE 8
#define DF_L2_LINE 128        // bytes a prefetch.global.L2 asks for

struct df_args {
  df_block blocks[DF_MAX_LAYERS];
  const bf16 *tok_embed, *final_norm_w;
  bf16 *out;
  const int32_t *ids, *pos, *cu_seqlens;
  int B, T, layers, I, Hq, Hkv;
  float eps, theta, scale;
};

// ---- shared memory ---------------------------------------------------------------------------------
struct df_smem {
  bf16 *h, *x, *xn, *qkv, *ff, *keys;  // xn doubles as the attention output (see the barriers below)
  float *partial, *cos_t, *sin_t, *q_rot;
  int *seq_start;
  int ld, qkv_ld, ff_ld, key_ld, table_ld;
};
// Carves `base` (NULL: only sizes it) for ROWS rows of width C, q|k|v of qkv_dim, Hkv key heads and a
// down slice of ff_cols; returns the bytes used.
__host__ __device__ inline size_t df_carve(unsigned char *base, df_smem *s, int C, int qkv_dim, int Hkv, int ff_cols,
                                           int rows) {
  s->ld = C + DF_ROW_PAD, s->qkv_ld = qkv_dim + DF_ROW_PAD, s->ff_ld = ff_cols + DF_ROW_PAD;
  s->key_ld = DF_HEAD_DIM + DF_KEY_PAD, s->table_ld = DF_HEAD_DIM / 2 + DF_TABLE_PAD;
  df_carver c = {base, 0};
  s->h = c.take<bf16>((size_t)rows * s->ld);
  s->x = c.take<bf16>((size_t)rows * s->ld);
  s->xn = c.take<bf16>((size_t)rows * s->ld);
  s->qkv = c.take<bf16>((size_t)rows * s->qkv_ld);
  s->ff = c.take<bf16>((size_t)rows * s->ff_ld);
  s->keys = c.take<bf16>((size_t)Hkv * rows * s->key_ld);
  s->partial = c.take<float>((size_t)rows * C);
  s->cos_t = c.take<float>((size_t)rows * s->table_ld);
  s->sin_t = c.take<float>((size_t)rows * s->table_ld);
  s->q_rot = c.take<float>((size_t)DF_WARPS * DF_HEAD_DIM);
  s->seq_start = c.take<int>(rows);
  return c.at;
}

// Thread-block clusters are sm_90's: other targets get an empty kernel (cuda_decoder_fused_supports
// refuses them first).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
// Writes the bf16 pair (lo, hi) at element `at` of `buf` in every block of the cluster.
__device__ __forceinline__ void broadcast_pair(cg::cluster_group &cluster, bf16 *buf, size_t at, float lo, float hi) {
  const uint32_t v = pack_bf16x2(lo, hi);
  const int blocks = (int)cluster.num_blocks();
  for (int r = 0; r < blocks; r++) *reinterpret_cast<uint32_t *>(cluster.map_shared_rank(buf + at, r)) = v;
}

// The mma B fragments of one n-tile: rows n0 + g of W (row stride ldw), KS k-steps from column k0.
template <int KS>
__device__ __forceinline__ void load_tile(uint32_t (&w)[KS][2], const bf16 *W, int ldw, int n0, int k0, int g, int q) {
  const bf16 *row = W + (size_t)(n0 + g) * ldw + k0 + 2 * q;
#pragma unroll
  for (int s = 0; s < KS; s++) {
    w[s][0] = ldg32(row + s * DF_MMA_K);
    w[s][1] = ldg32(row + s * DF_MMA_K + DF_MMA_K / 2);
  }
}

// acc (MT m-tiles of 16 rows x 8 columns) = A (rows of stride lda, k from 0) · the tile in w.
template <int KS, int MT>
__device__ __forceinline__ void tile_product(float (&acc)[MT][4], const bf16 *A, int lda, const uint32_t (&w)[KS][2],
                                             int g, int q) {
#pragma unroll
  for (int mt = 0; mt < MT; mt++) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;
#pragma unroll
  for (int s = 0; s < KS; s++) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
      const bf16 *a = A + (size_t)(mt * DF_MMA_ROWS + g) * lda + s * DF_MMA_K + 2 * q;
      const uint32_t frag[4] = {lds32(a), lds32(a + 8 * lda), lds32(a + DF_MMA_K / 2),
                                lds32(a + 8 * lda + DF_MMA_K / 2)};
      mma_bf16(acc[mt], frag, w[s]);
    }
  }
}

// This block's tiles of A · W^T (K = KS k-steps), a warp a tile at a time, each handed to
// epi(acc, n0). w holds the warp's first tile, loaded before the barrier that precedes the call.
template <int KS, int MT, typename Epi>
__device__ __forceinline__ void project(const bf16 *A, int lda, const bf16 *W, int ldw, df_range r,
                                        uint32_t (&w)[KS][2], int warp, int g, int q, Epi epi) {
  for (int t = r.begin + warp; t < r.end; t += DF_WARPS) {
    if (t != r.begin + warp) load_tile(w, W, ldw, t * DF_NTILE, 0, g, q);
    float acc[MT][4];
    tile_product<KS, MT>(acc, A, lda, w, g, q);
    epi(acc, t * DF_NTILE);
  }
}
template <int KS>
__device__ __forceinline__ void preload(uint32_t (&w)[KS][2], const bf16 *W, int ldw, df_range r, int warp, int g,
                                        int q) {
  if (r.begin + warp < r.end) load_tile(w, W, ldw, (r.begin + warp) * DF_NTILE, 0, g, q);
}

// Asks L2 for the lines of [p, p + bytes): a hint (prefetch.global.L2) that holds no register and
// that nothing waits for, spread over the block's threads.
__device__ __forceinline__ void prefetch_l2(const bf16 *p, size_t bytes, int first, int step) {
  if (bytes == 0) return;
  const char *c = reinterpret_cast<const char *>(p);
  for (size_t off = (size_t)first * DF_L2_LINE; off < bytes + DF_L2_LINE - 1; off += (size_t)step * DF_L2_LINE)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(c + (off < bytes ? off : bytes - 1)));
}
// This block's weights of one decoder block into L2, a block ahead of their use: its q|k|v and o
// rows, its gate and up rows, and its slice of each row of down.
__device__ void prefetch_weights(const df_block &blk, int C, int I, df_range qkv_tiles, df_range out_tiles, int ff0,
                                 int ff_cols) {
  const size_t tile_bytes = (size_t)DF_NTILE * C * sizeof(bf16);
  prefetch_l2(blk.qkv_w + (size_t)qkv_tiles.begin * DF_NTILE * C, (qkv_tiles.end - qkv_tiles.begin) * tile_bytes,
              threadIdx.x, DF_THREADS);
  prefetch_l2(blk.o_w + (size_t)out_tiles.begin * DF_NTILE * C, (out_tiles.end - out_tiles.begin) * tile_bytes,
              threadIdx.x, DF_THREADS);
  prefetch_l2(blk.up_w + (size_t)ff0 * C, (size_t)ff_cols * C * sizeof(bf16), threadIdx.x, DF_THREADS);
  prefetch_l2(blk.up_w + (size_t)(I + ff0) * C, (size_t)ff_cols * C * sizeof(bf16), threadIdx.x, DF_THREADS);
  for (int row = threadIdx.x; row < C; row += DF_THREADS)
    prefetch_l2(blk.down_w + (size_t)row * I + ff0, (size_t)ff_cols * sizeof(bf16), 0, 1);
}

// Attention of every (query head, row) pair of this block's share, RoPE applied as it reads: the
// keys of every kv head rotated into S.keys first (to bf16, as the rope op stores them), then a
// warp a pair: lane j scores key row j, the softmax over the lanes, lane d adds the value pairs.
__device__ void attention(cg::cluster_group &cluster, const df_smem &S, const df_args &p, int rank, int blocks,
                          int rows, int warp, int lane) {
  constexpr int D = DF_HEAD_DIM, HALF = D / 2;
  const int T = p.T, Hq = p.Hq, Hkv = p.Hkv;
  for (int e = threadIdx.x; e < Hkv * T * HALF; e += DF_THREADS) {
    const int i = e % HALF, t = (e / HALF) % T, kh = e / (HALF * T);
    const bf16 *k = S.qkv + (size_t)t * S.qkv_ld + (Hq + kh) * D;
    float r1, r2;
    rope_rotate(bf2f(k[i]), bf2f(k[i + HALF]), S.cos_t[t * S.table_ld + i], S.sin_t[t * S.table_ld + i], &r1, &r2);
    bf16 *key = S.keys + ((size_t)kh * rows + t) * S.key_ld;
    key[i] = f2bf(r1), key[i + HALF] = f2bf(r2);
  }
  __syncthreads();
  const int group = Hq / Hkv;
  for (int task = rank * DF_WARPS + warp; task < Hq * T; task += blocks * DF_WARPS) {
    const int h = task / T, t = task % T, kh = h / group;
    const bf16 *qrow = S.qkv + (size_t)t * S.qkv_ld + h * D;
    const float2 o = attend_row(bf2f(qrow[lane]), bf2f(qrow[lane + HALF]), S.cos_t[t * S.table_ld + lane],
                                S.sin_t[t * S.table_ld + lane], S.q_rot + warp * D,
                                S.keys + (size_t)kh * rows * S.key_ld, S.key_ld, S.qkv + (Hq + Hkv + kh) * D,
                                S.qkv_ld, S.seq_start[t], t, p.scale, lane);
    broadcast_pair(cluster, S.xn, (size_t)t * S.ld + h * D + 2 * lane, o.x, o.y);
  }
}

// ---- the kernel ------------------------------------------------------------------------------------
// KC = C / 16 k-steps across the hidden width, KD k-steps of a block's slice of the MLP's width,
// MT m-tiles of rows. The barriers (cluster-wide) of a block, and why each buffer is safe to
// overwrite when it is: (1) q|k|v complete; (2) the attention output (in xn, whose normed input
// the q|k|v projection has read) complete; (3) x = h + o complete; (4) every slice's down partials
// written; (5) h complete. Remote writes into a buffer happen only after the barrier that follows
// the last local read of its previous contents.
template <int KC, int KD, int MT>
__global__ void __launch_bounds__(DF_THREADS, 1) decoder_fused_kernel(const __grid_constant__ df_args p) {
  constexpr int C = KC * DF_MMA_K, ROWS = MT * DF_MMA_ROWS, D = DF_HEAD_DIM, FF_COLS = KD * DF_MMA_K;
  constexpr int DOWN_TILES = C / DF_NTILE / DF_WARPS;           // down n-tiles a warp
  constexpr int DOWN_ROUND = KD * 2 * DOWN_TILES <= 2 * KC ? DOWN_TILES : DOWN_TILES / 2;  // held at once
  static_assert(C % (DF_NTILE * DF_WARPS) == 0 && DOWN_TILES % DOWN_ROUND == 0, "down tiles split evenly");
  extern __shared__ __align__(16) unsigned char df_shared[];
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank(), blocks = (int)cluster.num_blocks();
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, q = lane % 4;
  const int T = p.T, I = p.I, qkv_dim = (p.Hq + 2 * p.Hkv) * D;
  df_smem S;
  const size_t bytes = df_carve(df_shared, &S, C, qkv_dim, p.Hkv, FF_COLS, ROWS);

  const df_range qkv_tiles = block_tiles(qkv_dim / DF_NTILE, rank, blocks);
  const df_range out_tiles = block_tiles(C / DF_NTILE, rank, blocks);
  const int ff0 = rank * FF_COLS;  // this block's slice of the MLP's width
  const df_range ff_tiles = {ff0 / DF_NTILE, (ff0 + FF_COLS) / DF_NTILE};
  prefetch_weights(p.blocks[0], C, I, qkv_tiles, out_tiles, ff0, FF_COLS);
  // Rows past T stay zero in every operand: the products read them, nothing writes them.
  for (size_t e = threadIdx.x; e < bytes / sizeof(uint4); e += DF_THREADS)
    reinterpret_cast<uint4 *>(df_shared)[e] = make_uint4(0, 0, 0, 0);
  __syncthreads();
  pdl_wait();  // the ids come from the work before
  for (int e = threadIdx.x; e < T * (C / BF16_PER_PACK); e += DF_THREADS) {
    const int t = e / (C / BF16_PER_PACK), c = e % (C / BF16_PER_PACK) * BF16_PER_PACK;
    *reinterpret_cast<uint4 *>(S.h + (size_t)t * S.ld + c) =
        __ldg(reinterpret_cast<const uint4 *>(p.tok_embed + (size_t)p.ids[t] * C + c));
  }
  for (int e = threadIdx.x; e < T * (D / 2); e += DF_THREADS) {
    const int t = e / (D / 2), i = e % (D / 2);
    rope_cos_sin(p.pos[t], i, D, p.theta, &S.cos_t[t * S.table_ld + i], &S.sin_t[t * S.table_ld + i]);
  }
  for (int t = threadIdx.x; t < T; t += DF_THREADS) {
    int b = 0;
    while (b + 1 < p.B && p.cu_seqlens[b + 1] <= t) b++;
    S.seq_start[t] = p.cu_seqlens[b];
  }
  uint32_t w[KC][2];
  preload(w, p.blocks[0].qkv_w, C, qkv_tiles, warp, g, q);
  cluster.sync();  // every block has started and zeroed its memory before anyone writes into it
  pdl_launch_dependents();

  for (int l = 0; l < p.layers; l++) {
    const df_block &blk = p.blocks[l];
    if (l + 1 < p.layers) prefetch_weights(p.blocks[l + 1], C, I, qkv_tiles, out_tiles, ff0, FF_COLS);
    norm_rows(S.xn, S.ld, S.h, S.ld, blk.norm_attn_w, warp, DF_WARPS, T, C, p.eps, lane);
    __syncthreads();
    project<KC, MT>(S.xn, S.ld, blk.qkv_w, C, qkv_tiles, w, warp, g, q, [&](const float(&acc)[MT][4], int n0) {
      for_each_pair<MT>(acc, n0, T, g, q, [&](int row, int col, float v0, float v1) {
        broadcast_pair(cluster, S.qkv, (size_t)row * S.qkv_ld + col, v0 + bias_at(blk.qkv_b, col),
                       v1 + bias_at(blk.qkv_b, col + 1));
      });
    });
    cluster.sync();  // (1)
    attention(cluster, S, p, rank, blocks, ROWS, warp, lane);
    preload(w, blk.o_w, C, out_tiles, warp, g, q);
    cluster.sync();  // (2)
    project<KC, MT>(S.xn, S.ld, blk.o_w, C, out_tiles, w, warp, g, q, [&](const float(&acc)[MT][4], int n0) {
      for_each_pair<MT>(acc, n0, T, g, q, [&](int row, int col, float v0, float v1) {
        const uint32_t h = lds32(S.h + (size_t)row * S.ld + col);
        const float o0 = round_bf16(v0 + bias_at(blk.o_b, col)), o1 = round_bf16(v1 + bias_at(blk.o_b, col + 1));
        broadcast_pair(cluster, S.x, (size_t)row * S.ld + col, bf16_lo(h) + o0, bf16_hi(h) + o1);
      });
    });
    uint32_t w_up[KC][2];
    preload(w, blk.up_w, C, ff_tiles, warp, g, q);
    if (ff_tiles.begin + warp < ff_tiles.end)
      load_tile(w_up, blk.up_w, C, I + (ff_tiles.begin + warp) * DF_NTILE, 0, g, q);
    cluster.sync();  // (3)
    norm_rows(S.xn, S.ld, S.x, S.ld, blk.norm_mlp_w, warp, DF_WARPS, T, C, p.eps, lane);
    __syncthreads();
    // gate|up: the gate tile and its up tile (I rows further) a warp; SwiGLU in registers
    for (int t = ff_tiles.begin + warp; t < ff_tiles.end; t += DF_WARPS) {
      if (t != ff_tiles.begin + warp) {
        load_tile(w, blk.up_w, C, t * DF_NTILE, 0, g, q);
        load_tile(w_up, blk.up_w, C, I + t * DF_NTILE, 0, g, q);
      }
      float gate[MT][4], up[MT][4];
      tile_product<KC, MT>(gate, S.xn, S.ld, w, g, q);
      tile_product<KC, MT>(up, S.xn, S.ld, w_up, g, q);
      const int c = t * DF_NTILE + 2 * q;
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
          const int row = mt * DF_MMA_ROWS + g + 8 * hh;
          if (row >= T) continue;
          float f[2];
#pragma unroll
          for (int k = 0; k < 2; k++) {
            const float gv = round_bf16(gate[mt][2 * hh + k] + bias_at(blk.up_b, c + k));
            const float uv = round_bf16(up[mt][2 * hh + k] + bias_at(blk.up_b, I + c + k));
            f[k] = silu_f(gv) * uv;
          }
          *reinterpret_cast<uint32_t *>(S.ff + (size_t)row * S.ff_ld + c - ff0) = pack_bf16x2(f[0], f[1]);
        }
    }
    // down over this block's slice: every output column, K = the slice; partial sums to S.partial
    uint32_t w_down[DOWN_ROUND][KD][2];
    for (int r0 = 0; r0 < DOWN_TILES; r0 += DOWN_ROUND) {
#pragma unroll
      for (int i = 0; i < DOWN_ROUND; i++)
        load_tile(w_down[i], blk.down_w, I, (warp + (r0 + i) * DF_WARPS) * DF_NTILE, ff0, g, q);
      if (r0 == 0) __syncthreads();  // the slice's SwiGLU outputs are all in S.ff
#pragma unroll
      for (int i = 0; i < DOWN_ROUND; i++) {
        float acc[MT][4];
        tile_product<KD, MT>(acc, S.ff, S.ff_ld, w_down[i], g, q);
        const int n0 = (warp + (r0 + i) * DF_WARPS) * DF_NTILE;
        for_each_pair<MT>(acc, n0, T, g, q, [&](int row, int col, float v0, float v1) {
          *reinterpret_cast<float2 *>(S.partial + (size_t)row * C + col) = make_float2(v0, v1);
        });
      }
    }
    cluster.sync();  // (4)
    // h = x + down: this block's columns, the slices' partials added in rank order
    const int out_cols = (out_tiles.end - out_tiles.begin) * DF_NTILE, col0 = out_tiles.begin * DF_NTILE;
    for (int e = threadIdx.x; e < T * (out_cols / 2); e += DF_THREADS) {
      const int row = e / (out_cols / 2), col = col0 + 2 * (e % (out_cols / 2));
      float2 part[DF_CLUSTER_MAX];
#pragma unroll
      for (int r = 0; r < DF_CLUSTER_MAX; r++)
        if (r < blocks)
          part[r] = *reinterpret_cast<const float2 *>(cluster.map_shared_rank(S.partial, r) + (size_t)row * C + col);
      float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
      for (int r = 0; r < DF_CLUSTER_MAX; r++)
        if (r < blocks) s0 += part[r].x, s1 += part[r].y;
      const uint32_t x = lds32(S.x + (size_t)row * S.ld + col);
      const float d0 = round_bf16(s0 + bias_at(blk.down_b, col));
      const float d1 = round_bf16(s1 + bias_at(blk.down_b, col + 1));
      broadcast_pair(cluster, S.h, (size_t)row * S.ld + col, bf16_lo(x) + d0, bf16_hi(x) + d1);
    }
    if (l + 1 < p.layers) preload(w, p.blocks[l + 1].qkv_w, C, qkv_tiles, warp, g, q);
    cluster.sync();  // (5)
  }
  // out = rmsnorm(h): this block's rows
  norm_rows(p.out, C, S.h, S.ld, p.final_norm_w, rank * DF_WARPS + warp, blocks * DF_WARPS, T, C, p.eps, lane);
}

#else
template <int KC, int KD, int MT>
__global__ void decoder_fused_kernel(const __grid_constant__ df_args p) {}
#endif

// ---- launcher ----------------------------------------------------------------------------------------
// The shapes built: (C / 16, k-steps of a block's slice of I). The 6-layer 384-wide student
// (configs/models/student-6l-384.json: C 384, I 1536) on 16 blocks (6 k-steps) or the portable 8
// (12). Another student shape is one more pair here.
typedef void (*df_kernel)(const df_args);
struct df_variant {
  int kc, kd, mt;
  df_kernel kernel;
};
#define DF_VARIANT(KC, KD) {KC, KD, 1, decoder_fused_kernel<KC, KD, 1>}, {KC, KD, 2, decoder_fused_kernel<KC, KD, 2>},
static const df_variant DF_VARIANTS[] = {DF_VARIANT(24, 6) DF_VARIANT(24, 12)};

// A variant that fits the shape and a cluster size the device schedules for it: the largest of 16
// and 8 that divides the MLP's width into whole k-steps, has a variant, fits shared memory and of
// which at least one cluster can be resident. Memoised per shape (the answer does not change).
struct df_plan {
  const df_variant *variant;
  int blocks;
  size_t smem;
};
static bool df_plan_for(const sn_decoder_weights *w, int T, df_plan *out) {
  struct entry {
    int C, I, Hkv, qkv_dim, mt;
    bool ok;
    df_plan plan;
  };
  static entry cache[DF_PLAN_CACHE];
  static int cached = 0;
  static std::mutex cache_lock;  // contexts of several threads plan at once
  std::lock_guard<std::mutex> hold(cache_lock);
  const int C = w->hidden, I = w->intermediate, qkv_dim = (w->heads + 2 * w->kv_heads) * w->head_dim;
  const int mt = T <= DF_MMA_ROWS ? 1 : 2;
  for (int i = 0; i < cached; i++)
    if (cache[i].C == C && cache[i].I == I && cache[i].Hkv == w->kv_heads && cache[i].qkv_dim == qkv_dim &&
        cache[i].mt == mt) {
      *out = cache[i].plan;
      return cache[i].ok;
    }
  entry e = {C, I, w->kv_heads, qkv_dim, mt, false, {nullptr, 0, 0}};
  const int smem_max = sn_cuda_smem_optin_max();
  const int sizes[] = {DF_CLUSTER_MAX, DF_CLUSTER_PORTABLE};
  for (int blocks : sizes) {
    if (e.ok || I % (blocks * DF_MMA_K) != 0) continue;
    const int kd = I / (blocks * DF_MMA_K);
    for (const df_variant &v : DF_VARIANTS) {
      if (v.kc * DF_MMA_K != C || v.kd != kd || v.mt != mt) continue;
      df_smem layout;
      const size_t smem = df_carve(nullptr, &layout, C, qkv_dim, w->kv_heads, kd * DF_MMA_K, mt * DF_MMA_ROWS);
      if (smem > (size_t)smem_max) continue;
      // the device's cap, not this shape's need: a kernel serves several shapes, whose plans must
      // not lower it under each other's launches
      cudaCheck(cudaFuncSetAttribute(v.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_max));
      if (blocks > DF_CLUSTER_PORTABLE)
        cudaCheck(cudaFuncSetAttribute(v.kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      cudaLaunchAttribute attr;
      attr.id = cudaLaunchAttributeClusterDimension;
      attr.val.clusterDim.x = 1, attr.val.clusterDim.y = blocks, attr.val.clusterDim.z = 1;
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(1, blocks), cfg.blockDim = dim3(DF_THREADS), cfg.dynamicSmemBytes = smem;
      cfg.attrs = &attr, cfg.numAttrs = 1;
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, v.kernel, &cfg) != cudaSuccess) {
        (void)cudaGetLastError();  // an unschedulable size is an answer, not an error
        clusters = 0;
      }
      if (clusters < 1) continue;
      e.ok = true, e.plan = {&v, blocks, smem};
      break;
    }
  }
  if (cached < DF_PLAN_CACHE) cache[cached++] = e;
  *out = e.plan;
  return e.ok;
}

// ---- both kernels' checks and the dispatch --------------------------------------------------------------
void df_blocks_from(const sn_decoder_weights *w, df_block *out) {
  for (int l = 0; l < w->layers; l++) {
    const sn_decoder_block &b = w->blocks[l];
    out[l] = {(const bf16 *)b.norm_attn_w, (const bf16 *)b.qkv_w, (const bf16 *)b.qkv_b, (const bf16 *)b.o_w,
              (const bf16 *)b.o_b, (const bf16 *)b.norm_mlp_w, (const bf16 *)b.up_w, (const bf16 *)b.up_b,
              (const bf16 *)b.down_w, (const bf16 *)b.down_b};
  }
}

bool df_tensors_aligned(const sn_decoder_weights *w) {
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

// Which kernel takes this decoder at T tokens: the cluster kernel where its shape is built and
// schedules (unless SN_FUSED_GRID=1, to time the other), else the grid kernel where the shape fits
// it; neither (false) sends the model to the general path. The shape both share: head dim 64,
// Hq * 64 = C, whole GQA groups, at most SN_DECODER_FUSED_MAX_ROWS tokens and DF_MAX_LAYERS blocks,
// every tensor on 16 bytes.
struct df_choice {
  bool cluster;
  df_plan cluster_plan;
  dg_plan grid_plan;
};
static bool df_choose(const sn_decoder_weights *w, int T, df_choice *c) {
  if (T < 1 || T > SN_DECODER_FUSED_MAX_ROWS || w->layers < 1 || w->layers > DF_MAX_LAYERS ||
      w->head_dim != DF_HEAD_DIM || w->heads * w->head_dim != w->hidden || w->kv_heads < 1 ||
      w->heads % w->kv_heads != 0 || !df_tensors_aligned(w))
    return false;
  static bool warned = false;  // read at each call: the op test and sn_bench set it between calls
  const bool grid_first = cuda_env_switch("SN_FUSED_GRID", false, &warned);
  c->cluster = !grid_first && sn_cuda_cc_major() >= 9 && df_plan_for(w, T, &c->cluster_plan);
  return c->cluster || dg_plan_for(w, &c->grid_plan);
}

int cuda_decoder_fused_supports(const sn_decoder_weights *w, int T) {
  df_choice c;
  return df_choose(w, T, &c) ? 1 : 0;
}

void cuda_decoder_fused_forward(void *out, const int32_t *ids, const int32_t *pos, const int32_t *cu_seqlens, int B,
                                int T, const sn_decoder_weights *w) {
  df_choice c;
  if (!df_choose(w, T, &c)) {
    fprintf(stderr, "error: %s:%d: decoder_fused_forward: shape not supported (T=%d C=%d I=%d heads %d/%d of %d; "
            "ask decoder_fused_supports first)\n", __FILE__, __LINE__, T, w->hidden, w->intermediate, w->heads,
            w->kv_heads, w->head_dim);
    exit(1);
  }
  if (!c.cluster) {
    dg_forward(&c.grid_plan, out, ids, pos, cu_seqlens, B, T, w);
    return;
  }
  df_args a = {};
  df_blocks_from(w, a.blocks);
  a.tok_embed = (const bf16 *)w->tok_embed, a.final_norm_w = (const bf16 *)w->final_norm_w, a.out = (bf16 *)out;
  a.ids = ids, a.pos = pos, a.cu_seqlens = cu_seqlens;
  a.B = B, a.T = T, a.layers = w->layers, a.I = w->intermediate, a.Hq = w->heads, a.Hkv = w->kv_heads;
  a.eps = w->norm_eps, a.theta = w->rope_theta, a.scale = 1.0f / sqrtf((float)w->head_dim);
  const df_plan &plan = c.cluster_plan;
  launch_pdl_cluster(plan.variant->kernel, dim3(1, plan.blocks), dim3(DF_THREADS), plan.smem, plan.blocks, a);
  launchCheck();
}
