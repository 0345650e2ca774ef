// Rotary position embedding, Hugging Face rotate-half convention, in place on the q and k heads of
// the packed qkv tensor; fp32 math, the angles from rope_cos_sin and the rotation from rope_rotate
// (common.cuh). Packed path (D/2 % 8 == 0): a block per few whole tokens; each thread owns one
// (token, head, pack of 8 pairs) and issues its two 16-byte loads first, then the block computes each
// token's D/2 (cos, sin) once into shared memory (one powf + sincosf per (token, pair), not per
// head), then every thread rotates its pack. Otherwise one thread per pair.
#include "common.cuh"

#define ROPE_THREADS 256
#define ROPE_MAX_BLOCK 1024        // packed path: one token's (head, pack) threads must fit a block
#define ROPE_MAX_SMEM (48 << 10)   // packed path: the angle table within the default dynamic smem limit

// qkv (T, (Hq + 2*Hkv) * D); pos (T). Rotates heads [0, Hq + Hkv) of each token by pos * theta^(-2i/D).
__global__ void rope_kernel(bf16 *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta,
                            float sign) {
  pdl_wait();  // qkv comes from the projection before
  const int half = D / 2;
  const int rotated_heads = Hq + Hkv;
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (size_t)T * rotated_heads * half) return;
  int i = idx % half;
  int head = (idx / half) % rotated_heads;
  int t = idx / ((size_t)half * rotated_heads);
  float s, c;
  rope_cos_sin(pos[t], i, D, theta, &c, &s);
  s *= sign;
  bf16 *x = qkv + (size_t)t * (Hq + 2 * Hkv) * D + (size_t)head * D;
  float r1, r2;
  rope_rotate(bf2f(x[i]), bf2f(x[i + half]), c, s, &r1, &r2);
  x[i] = f2bf(r1);
  x[i + half] = f2bf(r2);
}

// Packed path: a block rotates `tokens` = blockDim.x / per_token whole tokens, per_token = heads * D/16
// threads each. Thread = (token, head, pack of 8 pairs), packs fastest: a warp's loads cover
// consecutive heads' contiguous bytes (D = 64: 8 heads = 1 KB). The loads are issued before the
// angles are computed, so the powf/sincosf work and the barrier overlap the memory latency.
__global__ void __launch_bounds__(ROPE_MAX_BLOCK)
    rope_packed_kernel(bf16 *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta, float sign) {
  extern __shared__ float angles[];  // (tokens, D/2) cos, then (tokens, D/2) sin
  pdl_wait();                        // qkv comes from the projection before
  pdl_launch_dependents();           // attention may get its blocks resident meanwhile
  const int half = D / 2, groups = half / BF16_PER_PACK, heads = Hq + Hkv;
  const int per_token = heads * groups, tokens = blockDim.x / per_token;
  const int t0 = blockIdx.x * tokens;
  float *cos_t = angles, *sin_t = angles + tokens * half;
  const int local = threadIdx.x / per_token, rem = threadIdx.x % per_token;
  const int t = t0 + local;
  const bool active = local < tokens && t < T;
  const int head = rem / groups, i0 = (rem % groups) * BF16_PER_PACK;
  bf16 *x = qkv + (size_t)t * (Hq + 2 * Hkv) * D + (size_t)head * D + i0;
  uint4 a, b;  // 8 bf16 each, as 4 words (a struct of 8 bf16 can take 8 registers)
  if (active) a = *reinterpret_cast<const uint4 *>(x), b = *reinterpret_cast<const uint4 *>(x + half);
  for (int j = threadIdx.x; j < tokens * half; j += blockDim.x) {
    const int tj = t0 + j / half, i = j % half;
    if (tj < T) {
      float sn, cs;
      rope_cos_sin(pos[tj], i, D, theta, &cs, &sn);
      cos_t[j] = cs, sin_t[j] = sign * sn;
    }
  }
  __syncthreads();
  if (!active) return;
  const float *c = cos_t + local * half + i0, *sn = sin_t + local * half + i0;
  const uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
  uint32_t oa[4], ob[4];
#pragma unroll
  for (int w = 0; w < 4; w++) {  // word w holds pairs 2w (low half) and 2w + 1 (high half)
    const int k = 2 * w;
    float lo1, lo2, hi1, hi2;
    rope_rotate(bf16_lo(wa[w]), bf16_lo(wb[w]), c[k], sn[k], &lo1, &lo2);
    rope_rotate(bf16_hi(wa[w]), bf16_hi(wb[w]), c[k + 1], sn[k + 1], &hi1, &hi2);
    oa[w] = pack_bf16x2(lo1, hi1);
    ob[w] = pack_bf16x2(lo2, hi2);
  }
  *reinterpret_cast<uint4 *>(x) = make_uint4(oa[0], oa[1], oa[2], oa[3]);
  *reinterpret_cast<uint4 *>(x + half) = make_uint4(ob[0], ob[1], ob[2], ob[3]);
}

void cuda_rope(void *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta, int inverse) {
  size_t n = (size_t)T * (Hq + Hkv) * (D / 2);
  if (n == 0) return;
  const int per_token = (Hq + Hkv) * (D / 2 / BF16_PER_PACK);
  const int tokens = per_token >= ROPE_THREADS || per_token == 0 ? 1 : ROPE_THREADS / per_token;
  const size_t smem = (size_t)2 * tokens * (D / 2) * sizeof(float);
  if ((D / 2) % BF16_PER_PACK == 0 && aligned16(qkv) && per_token <= ROPE_MAX_BLOCK && smem <= ROPE_MAX_SMEM) {
    launch_pdl(rope_packed_kernel, dim3(ceil_div_int(T, tokens)), dim3(tokens * per_token), smem, (bf16 *)qkv, pos, T,
               Hq, Hkv, D, theta, inverse ? -1.0f : 1.0f);
    launchCheck();
    return;
  }
  launch_pdl(rope_kernel, dim3(ceil_div_int(n, ROPE_THREADS)), dim3(ROPE_THREADS), 0, (bf16 *)qkv, pos, T, Hq, Hkv, D,
             theta, inverse ? -1.0f : 1.0f);
  launchCheck();
}
