// Rotary position embedding, Hugging Face rotate-half convention, in place on the q and k heads of
// the packed qkv tensor; fp32 math, precise sincos (angles reach hundreds of radians: the fast
// intrinsics lose digits there). Packed path (D/2 % 8 == 0): one thread per (token, 8 pairs, group of
// ROPE_HEADS_PER_THREAD heads), the 8 angles computed once and applied to the group's heads with
// 16-byte loads. Otherwise one thread per pair.
#include "common.cuh"

#define ROPE_THREADS 256
#define ROPE_HEADS_PER_THREAD 4  // heads one thread rotates: their loads are in flight together

// qkv (T, (Hq + 2*Hkv) * D); pos (T). Rotates heads [0, Hq + Hkv) of each token by pos * theta^(-2i/D).
__global__ void rope_kernel(bf16 *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta,
                            float sign) {
  const int half = D / 2;
  const int rotated_heads = Hq + Hkv;
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (size_t)T * rotated_heads * half) return;
  int i = idx % half;
  int head = (idx / half) % rotated_heads;
  int t = idx / ((size_t)half * rotated_heads);
  float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)D);
  float s, c;
  sincosf((float)pos[t] * inv_freq, &s, &c);
  s *= sign;
  bf16 *x = qkv + (size_t)t * (Hq + 2 * Hkv) * D + (size_t)head * D;
  float x1 = bf2f(x[i]), x2 = bf2f(x[i + half]);
  x[i] = f2bf(x1 * c - x2 * s);
  x[i + half] = f2bf(x2 * c + x1 * s);
}

// Packed path: thread = (token t, pairs i0..i0+7, heads h0..h0+ROPE_HEADS_PER_THREAD-1). Splitting the
// heads over threads (instead of one thread looping over all of them) gives 4x the threads: with
// one thread per (token, pair group) an SM had ~16 warps, too few to cover the memory latency.
__global__ void rope_packed_kernel(bf16 *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta,
                                   float sign) {
  const int half = D / 2, groups = half / BF16_PER_PACK;
  const int heads = Hq + Hkv, head_groups = (heads + ROPE_HEADS_PER_THREAD - 1) / ROPE_HEADS_PER_THREAD;
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (size_t)T * groups * head_groups) return;
  // Consecutive threads take consecutive pair groups of one head group, then the next head group:
  // neighbouring lanes touch neighbouring 16-byte packs.
  const int g = idx % groups, hg = (idx / groups) % head_groups;
  const int t = idx / ((size_t)groups * head_groups), i0 = g * BF16_PER_PACK, h0 = hg * ROPE_HEADS_PER_THREAD;
  bf16 *row = qkv + (size_t)t * (Hq + 2 * Hkv) * D;
  // Loads of all the group's heads are issued before any store: the stores could alias the next
  // loads as far as the compiler knows, which would otherwise serialize one head at a time.
  bf16x8 a[ROPE_HEADS_PER_THREAD], b[ROPE_HEADS_PER_THREAD];
#pragma unroll
  for (int j = 0; j < ROPE_HEADS_PER_THREAD; j++) {
    if (h0 + j < heads) {
      const bf16 *x = row + (size_t)(h0 + j) * D + i0;
      a[j] = load_bf16x8(x), b[j] = load_bf16x8(x + half);
    }
  }
  float c[BF16_PER_PACK], s[BF16_PER_PACK];
#pragma unroll
  for (int k = 0; k < BF16_PER_PACK; k++) {
    float inv_freq = 1.0f / powf(theta, (float)(2 * (i0 + k)) / (float)D);
    sincosf((float)pos[t] * inv_freq, &s[k], &c[k]);
    s[k] *= sign;
  }
#pragma unroll
  for (int j = 0; j < ROPE_HEADS_PER_THREAD; j++) {
    if (h0 + j < heads) {
      bf16x8 oa, ob;
#pragma unroll
      for (int k = 0; k < BF16_PER_PACK; k++) {
        float x1 = bf2f(a[j].v[k]), x2 = bf2f(b[j].v[k]);
        oa.v[k] = f2bf(x1 * c[k] - x2 * s[k]);
        ob.v[k] = f2bf(x2 * c[k] + x1 * s[k]);
      }
      bf16 *x = row + (size_t)(h0 + j) * D + i0;
      store_bf16x8(x, oa);
      store_bf16x8(x + half, ob);
    }
  }
}

void cuda_rope(void *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta, int inverse) {
  size_t n = (size_t)T * (Hq + Hkv) * (D / 2);
  if (n == 0) return;
  if ((D / 2) % BF16_PER_PACK == 0 && aligned16(qkv)) {
    size_t threads = (size_t)T * (D / 2 / BF16_PER_PACK) * ceil_div_int(Hq + Hkv, ROPE_HEADS_PER_THREAD);
    rope_packed_kernel<<<ceil_div_int(threads, ROPE_THREADS), ROPE_THREADS, 0, SN_STREAM>>>(
        (bf16 *)qkv, pos, T, Hq, Hkv, D, theta, inverse ? -1.0f : 1.0f);
    launchCheck();
    return;
  }
  rope_kernel<<<ceil_div_int(n, ROPE_THREADS), ROPE_THREADS, 0, SN_STREAM>>>((bf16 *)qkv, pos, T, Hq, Hkv, D,
                                                                            theta, inverse ? -1.0f : 1.0f);
  launchCheck();
}
