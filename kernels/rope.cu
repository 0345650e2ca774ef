// Rotary position embedding, Hugging Face rotate-half convention, in place on the q and k heads of
// the packed qkv tensor. One thread per rotated pair (x[i], x[i + D/2]); fp32 math, precise sincos
// (angles reach hundreds of radians: the fast intrinsics lose digits there).
#include "common.cuh"

#define ROPE_THREADS 256

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

void cuda_rope(void *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta, int inverse) {
  size_t n = (size_t)T * (Hq + Hkv) * (D / 2);
  if (n == 0) return;
  rope_kernel<<<ceil_div_int(n, ROPE_THREADS), ROPE_THREADS, 0, SN_STREAM>>>((bf16 *)qkv, pos, T, Hq, Hkv, D,
                                                                            theta, inverse ? -1.0f : 1.0f);
  launchCheck();
}
