// EXPERIMENT (session 13): RMSNorm weights folded into the next projection; the norm's row scale
// applied after the GEMM by the kernel that follows it (rope for QKV, SwiGLU for gate|up).
#include "activations.cuh"

#define FOLD_THREADS 256

// dst (rows, cols) = src * w[col]
__global__ void fold_scale_columns_kernel(bf16 *dst, const bf16 *src, const bf16 *w, size_t rows, int cols) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  dst[i] = f2bf(bf2f(src[i]) * bf2f(w[i % cols]));
}
void cuda_fold_scale_columns(void *dst, const void *src, const void *w, size_t rows, int cols) {
  const size_t n = rows * cols;
  fold_scale_columns_kernel<<<(unsigned)((n + FOLD_THREADS - 1) / FOLD_THREADS), FOLD_THREADS, 0, SN_STREAM>>>(
      (bf16 *)dst, (const bf16 *)src, (const bf16 *)w, rows, cols);
  launchCheck();
}

__device__ float row_rstd_block(const bf16 *x, int C, float eps, float *shared) {
  float ss = 0.0f;
  for (int k = threadIdx.x; k < C; k += blockDim.x) {
    const float v = bf2f(x[k]);
    ss += v * v;
  }
  return rsqrtf(block_sum(ss, shared) / C + eps);
}

// qkv (T, (Hq + 2Hkv) D) = rstd(h) * qkv + bias, then q and k heads rotated. A block per token.
__global__ void rope_rescale_kernel(bf16 *qkv, const bf16 *h, const bf16 *bias, const int32_t *pos, int C, int Hq,
                                    int Hkv, int D, float theta, float eps) {
  __shared__ float red[WARP_SIZE];
  pdl_wait();
  const int t = blockIdx.x, half = D / 2, width = (Hq + 2 * Hkv) * D;
  const float rstd = row_rstd_block(h + (size_t)t * C, C, eps, red);
  bf16 *row = qkv + (size_t)t * width;
  const int p = pos[t];
  for (int j = threadIdx.x; j < (Hq + Hkv) * half; j += blockDim.x) {
    const int c0 = (j / half) * D + j % half, c1 = c0 + half, i = j % half;
    float x0 = rstd * bf2f(row[c0]) + (bias ? bf2f(bias[c0]) : 0.0f);
    float x1 = rstd * bf2f(row[c1]) + (bias ? bf2f(bias[c1]) : 0.0f);
    x0 = bf2f(f2bf(x0)), x1 = bf2f(f2bf(x1));  // as the unfused path stores qkv before rope
    float cs, sn, r1, r2;
    rope_cos_sin(p, i, D, theta, &cs, &sn);
    rope_rotate(x0, x1, cs, sn, &r1, &r2);
    row[c0] = f2bf(r1), row[c1] = f2bf(r2);
  }
  for (int j = threadIdx.x; j < Hkv * D; j += blockDim.x) {
    const int c = (Hq + Hkv) * D + j;
    row[c] = f2bf(rstd * bf2f(row[c]) + (bias ? bf2f(bias[c]) : 0.0f));
  }
}
void cuda_rope_rescale(void *qkv, const void *h, const void *bias, const int32_t *pos, int T, int C, int Hq, int Hkv,
                       int D, float theta, float eps) {
  launch_pdl(rope_rescale_kernel, dim3(T), dim3(FOLD_THREADS), 0, (bf16 *)qkv, (const bf16 *)h, (const bf16 *)bias,
             pos, C, Hq, Hkv, D, theta, eps);
  launchCheck();
}

// out (T, I) = silu(rstd(x) g + bg) * (rstd(x) u + bu), gate_up (T, 2I). A block per token.
__global__ void swiglu_rescale_kernel(bf16 *out, const bf16 *gate_up, const bf16 *x, const bf16 *bias, int C, int I,
                                      float eps) {
  __shared__ float red[WARP_SIZE];
  pdl_wait();
  const int t = blockIdx.x;
  const float rstd = row_rstd_block(x + (size_t)t * C, C, eps, red);
  const bf16 *g = gate_up + (size_t)t * 2 * I, *u = g + I;
  for (int j = threadIdx.x; j < I; j += blockDim.x) {
    const float gv = bf2f(f2bf(rstd * bf2f(g[j]) + (bias ? bf2f(bias[j]) : 0.0f)));
    const float uv = bf2f(f2bf(rstd * bf2f(u[j]) + (bias ? bf2f(bias[I + j]) : 0.0f)));
    out[(size_t)t * I + j] = f2bf(gv * sigmoidf_(gv) * uv);
  }
}
void cuda_swiglu_rescale(void *out, const void *gate_up, const void *x, const void *bias, int T, int C, int I,
                         float eps) {
  launch_pdl(swiglu_rescale_kernel, dim3(T), dim3(FOLD_THREADS), 0, (bf16 *)out, (const bf16 *)gate_up,
             (const bf16 *)x, (const bf16 *)bias, C, I, eps);
  launchCheck();
}
