// attention_rope_forward: inference attention over short sequences (at most
// SN_ATTENTION_SHORT_MAX_SEQLEN tokens: queries) with RoPE applied while loading, so the separate
// rope pass (a launch, and a read and write of q and k) disappears and qkv stays unrotated.
// One block per (query head, sequence, SHORT_WARPS query rows): it rotates the keys its rows can see
// once into shared memory (fp32, rounded through bf16 as the unfused rope stores them), copies the
// values beside them, and each warp takes one query row: rotates it, scores it against every visible
// key (a lane per key), softmax over the warp, and P V (a lane per output column). At these lengths
// the work is a few microseconds of latency, not of throughput, so the rows are spread over blocks
// (a 32-token query of 14 heads is 56 blocks, each warp one row) rather than looped over by warps;
// no lse is written (nothing backward). Launched with programmatic dependent launch (common.cuh).
// Measured slower than rope + the flash kernel, so the model runs it only with SN_SHORT_ATTENTION=1:
// ncu on the H100 (2026-12-06), one 32-token query of the 0.5B's 14 heads: 17.3 µs against 4.3 +
// 6.4. The blocks are instruction-bound (about one instruction a cycle with 8 warps on 56 SMs): each
// key pair's angle is a precise powf + sincosf, and every warp walks its dot products serially. A
// table of angles per position and tensor-core scores are what it needs.
#include "common.cuh"

#define SHORT_WARPS 8
#define SHORT_THREADS (SHORT_WARPS * WARP_SIZE)
#define SHORT_KEYS_PER_LANE (SN_ATTENTION_SHORT_MAX_SEQLEN / WARP_SIZE)
#define SHORT_DEFAULT_SMEM (48 << 10)  // dynamic shared memory a kernel gets without opting in
#define SHORT_K_PAD 1  // floats appended to a key row: lane j reads key j's element d, banks (j + d) % 32
static_assert(SN_ATTENTION_SHORT_MAX_SEQLEN % WARP_SIZE == 0, "keys are spread evenly over the lanes");

// Shared memory for sequences of up to L tokens: keys (L, D + pad), values (L, D), a rotated query
// row (warps, D) and a row of probabilities (warps, L), all fp32.
static size_t short_smem_bytes(int L, int D) {
  return ((size_t)L * (D + SHORT_K_PAD) + (size_t)L * D + (size_t)SHORT_WARPS * D + (size_t)SHORT_WARPS * L) *
         sizeof(float);
}

// The pair (x1, x2) = (head[i], head[i + D/2]) of a head rotated by pos's angle, each rounded to bf16.
__device__ __forceinline__ void rotate_pair(const bf16 *head, int i, int half, int pos, int D, float theta, float *r1,
                                            float *r2) {
  float c, s;
  rope_cos_sin(pos, i, D, theta, &c, &s);
  const float x1 = bf2f(head[i]), x2 = bf2f(head[i + half]);
  *r1 = bf2f(f2bf(x1 * c - x2 * s));
  *r2 = bf2f(f2bf(x2 * c + x1 * s));
}

// out (T, Hq D); qkv (T, (Hq + 2 Hkv) D) unrotated; pos (T). grid (Hq, B, row chunks of SHORT_WARPS);
// L_cap = max_seqlen sizes smem.
__global__ void __launch_bounds__(SHORT_THREADS)
    attention_rope_short_kernel(bf16 *out, const bf16 *qkv, const int32_t *pos, const int32_t *cu_seqlens, int Hq,
                                int Hkv, int D, int L_cap, float theta, int causal, float scale) {
  extern __shared__ __align__(16) float short_smem[];
  pdl_wait();  // qkv comes from the kernel before
  pdl_launch_dependents();  // the next projection may start loading its weights
  const int h = blockIdx.x, b = blockIdx.y, row_first = blockIdx.z * SHORT_WARPS;
  const int seq_start = cu_seqlens[b], L = cu_seqlens[b + 1] - seq_start;
  if (row_first >= L) return;
  const int row_end = min(L, row_first + SHORT_WARPS), keys = causal ? row_end : L;  // keys the rows see
  const int hk = h / (Hq / Hkv), half = D / 2, KLD = D + SHORT_K_PAD;
  float *Ks = short_smem, *Vs = Ks + (size_t)L_cap * KLD;
  float *qs = Vs + (size_t)L_cap * D, *ps = qs + SHORT_WARPS * D;
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
  float *q_row = qs + warp * D, *p_row = ps + warp * L_cap;
  const size_t stride = (size_t)(Hq + 2 * Hkv) * D;
  const bf16 *base = qkv + (size_t)seq_start * stride;

  for (int e = threadIdx.x; e < keys * half; e += SHORT_THREADS) {  // rotated keys
    const int t = e / half, i = e % half;
    rotate_pair(base + t * stride + (size_t)(Hq + hk) * D, i, half, pos[seq_start + t], D, theta, &Ks[t * KLD + i],
                &Ks[t * KLD + i + half]);
  }
  for (int e = threadIdx.x; e < keys * D; e += SHORT_THREADS) {  // values
    const int t = e / D, d = e % D;
    Vs[t * D + d] = bf2f(base[t * stride + (size_t)(Hq + Hkv + hk) * D + d]);
  }
  __syncthreads();

  for (int r = row_first + warp; r < row_end; r += SHORT_WARPS) {  // one row a warp
    for (int i = lane; i < half; i += WARP_SIZE)
      rotate_pair(base + r * stride + (size_t)h * D, i, half, pos[seq_start + r], D, theta, &q_row[i],
                  &q_row[i + half]);
    __syncwarp();
    const int visible = causal ? r + 1 : L;  // <= keys
    float s[SHORT_KEYS_PER_LANE], mx = -INFINITY;
#pragma unroll
    for (int u = 0; u < SHORT_KEYS_PER_LANE; u++) {
      const int j = lane + u * WARP_SIZE;
      s[u] = -INFINITY;
      if (j < visible) {
        float dot = 0.0f;
#pragma unroll 8
        for (int d = 0; d < D; d++) dot += q_row[d] * Ks[j * KLD + d];
        s[u] = dot * scale;
      }
      mx = fmaxf(mx, s[u]);
    }
    mx = warp_max(mx);  // finite: key 0 is always visible
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < SHORT_KEYS_PER_LANE; u++) {
      const int j = lane + u * WARP_SIZE;
      const float p = j < visible ? expf(s[u] - mx) : 0.0f;
      if (j < visible) p_row[j] = p;
      sum += p;
    }
    const float inv_sum = 1.0f / warp_sum(sum);
    __syncwarp();
    bf16 *dst = out + (size_t)(seq_start + r) * Hq * D + (size_t)h * D;
    for (int d = lane; d < D; d += WARP_SIZE) {
      float o = 0.0f;
#pragma unroll 8
      for (int j = 0; j < visible; j++) o += p_row[j] * Vs[j * D + d];
      dst[d] = f2bf(o * inv_sum);
    }
    __syncwarp();  // q_row and p_row are rewritten by the next row
  }
}

void cuda_attention_rope_forward(void *out, const void *qkv, const int32_t *pos, const int32_t *cu_seqlens, int B,
                                 int T, int max_seqlen, int Hq, int Hkv, int D, float theta, int causal, float scale) {
  if (T == 0 || B == 0) return;
  if (max_seqlen < 1 || max_seqlen > SN_ATTENTION_SHORT_MAX_SEQLEN || D < 2 || D % 2 != 0 ||
      D > SN_ATTENTION_SHORT_MAX_HEAD_DIM || Hkv <= 0 || Hq % Hkv != 0) {
    fprintf(stderr,
            "error: %s:%d: attention_rope_forward: max_seqlen=%d D=%d Hq=%d Hkv=%d (need max_seqlen <= %d, D even "
            "and <= %d, Hq a multiple of Hkv)\n",
            __FILE__, __LINE__, max_seqlen, D, Hq, Hkv, SN_ATTENTION_SHORT_MAX_SEQLEN, SN_ATTENTION_SHORT_MAX_HEAD_DIM);
    exit(1);
  }
  // The shared-memory limit is raised to what the launch needs only (the longest sequences at
  // D = 128 take 137 KB: more than some GPUs allow, where short queries still fit).
  static size_t granted = SHORT_DEFAULT_SMEM;
  const size_t smem = short_smem_bytes(max_seqlen, D);
  if (smem > granted) {
    cudaCheck(cudaFuncSetAttribute(attention_rope_short_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    granted = smem;
  }
  launch_pdl(attention_rope_short_kernel, dim3(Hq, B, ceil_div_int(max_seqlen, SHORT_WARPS)), dim3(SHORT_THREADS), smem,
             (bf16 *)out, (const bf16 *)qkv, pos, cu_seqlens, Hq, Hkv, D, max_seqlen, theta, causal, scale);
  launchCheck();
}
