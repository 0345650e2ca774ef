// SwiGLU (Qwen2 MLP) and GELU, erf form (BERT), forward and backward. Memory-bound: 16-byte packs
// where shapes and alignment allow, fp32 math, one rounding per output.
#include "activations.cuh"

#define ACT_THREADS 256

// ---- SwiGLU --------------------------------------------------------------------------------------------
// gate_up (T, 2I); out (T, I) = silu(gate) * up. Thread j handles VEC consecutive columns of a row.
template <int VEC>
__global__ void swiglu_forward_kernel(bf16 *out, const bf16 *gate_up, int T, int I) {
  pdl_wait();  // gate_up comes from the projection before
  const int per_row = I / VEC;
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (size_t)T * per_row) return;
  size_t t = idx / per_row;
  int i = (idx % per_row) * VEC;
  const bf16 *g = gate_up + t * 2 * I + i, *u = g + I;
  float gv[VEC], uv[VEC];
  if constexpr (VEC == BF16_PER_PACK) {
    bf16x8 a = load_bf16x8(g), b = load_bf16x8(u), o;
#pragma unroll
    for (int k = 0; k < VEC; k++) gv[k] = bf2f(a.v[k]), uv[k] = bf2f(b.v[k]);
#pragma unroll
    for (int k = 0; k < VEC; k++) o.v[k] = f2bf(gv[k] * sigmoidf_(gv[k]) * uv[k]);
    store_bf16x8(out + t * I + i, o);
  } else {
    gv[0] = bf2f(*g), uv[0] = bf2f(*u);
    out[t * I + i] = f2bf(gv[0] * sigmoidf_(gv[0]) * uv[0]);
  }
}

// dgate = dout * up * s * (1 + g (1 - s)), dup = dout * g * s, s = sigmoid(g).
template <int VEC>
__global__ void swiglu_backward_kernel(bf16 *dgate_up, const bf16 *dout, const bf16 *gate_up, int T, int I) {
  const int per_row = I / VEC;
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (size_t)T * per_row) return;
  size_t t = idx / per_row;
  int i = (idx % per_row) * VEC;
  const bf16 *g = gate_up + t * 2 * I + i, *u = g + I, *d = dout + t * I + i;
  bf16 *dg = dgate_up + t * 2 * I + i, *du = dg + I;
  if constexpr (VEC == BF16_PER_PACK) {
    bf16x8 a = load_bf16x8(g), b = load_bf16x8(u), c = load_bf16x8(d), og, ou;
#pragma unroll
    for (int k = 0; k < VEC; k++) {
      float gv = bf2f(a.v[k]), uv = bf2f(b.v[k]), dv = bf2f(c.v[k]);
      float s = sigmoidf_(gv);
      og.v[k] = f2bf(dv * uv * s * (1.0f + gv * (1.0f - s)));
      ou.v[k] = f2bf(dv * gv * s);
    }
    store_bf16x8(dg, og);
    store_bf16x8(du, ou);
  } else {
    float gv = bf2f(*g), uv = bf2f(*u), dv = bf2f(*d);
    float s = sigmoidf_(gv);
    *dg = f2bf(dv * uv * s * (1.0f + gv * (1.0f - s)));
    *du = f2bf(dv * gv * s);
  }
}

static bool swiglu_packed(int I, const void *a, const void *b, const void *c) {
  return I % BF16_PER_PACK == 0 && aligned16(a) && aligned16(b) && aligned16(c);
}

void cuda_swiglu_forward(void *out, const void *gate_up, int T, int I) {
  if ((size_t)T * I == 0) return;
  if (swiglu_packed(I, out, gate_up, gate_up)) {
    size_t n = (size_t)T * I / BF16_PER_PACK;
    launch_pdl(swiglu_forward_kernel<BF16_PER_PACK>, dim3(ceil_div_int(n, ACT_THREADS)), dim3(ACT_THREADS), 0,
               (bf16 *)out, (const bf16 *)gate_up, T, I);
  } else {
    size_t n = (size_t)T * I;
    launch_pdl(swiglu_forward_kernel<1>, dim3(ceil_div_int(n, ACT_THREADS)), dim3(ACT_THREADS), 0, (bf16 *)out,
               (const bf16 *)gate_up, T, I);
  }
  launchCheck();
}

void cuda_swiglu_backward(void *dgate_up, const void *dout, const void *gate_up, int T, int I) {
  if ((size_t)T * I == 0) return;
  if (swiglu_packed(I, dgate_up, dout, gate_up)) {
    size_t n = (size_t)T * I / BF16_PER_PACK;
    swiglu_backward_kernel<BF16_PER_PACK><<<ceil_div_int(n, ACT_THREADS), ACT_THREADS, 0, SN_STREAM>>>(
        (bf16 *)dgate_up, (const bf16 *)dout, (const bf16 *)gate_up, T, I);
  } else {
    size_t n = (size_t)T * I;
    swiglu_backward_kernel<1><<<ceil_div_int(n, ACT_THREADS), ACT_THREADS, 0, SN_STREAM>>>(
        (bf16 *)dgate_up, (const bf16 *)dout, (const bf16 *)gate_up, T, I);
  }
  launchCheck();
}

// ---- GELU (erf) -----------------------------------------------------------------------------------------
// Packs of 8 first, then the n % 8 tail one element per thread (same layout as memory.cu).
__global__ void gelu_forward_kernel(bf16 *out, const bf16 *x, size_t n, int packed) {
  pdl_wait();  // x comes from the projection before
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t npacks = packed ? n / BF16_PER_PACK : 0;
  if (i < npacks) {
    bf16x8 v = load_bf16x8(x + i * BF16_PER_PACK), o;
#pragma unroll
    for (int k = 0; k < BF16_PER_PACK; k++) o.v[k] = f2bf(gelu_f(bf2f(v.v[k])));
    store_bf16x8(out + i * BF16_PER_PACK, o);
  } else {
    size_t j = npacks * BF16_PER_PACK + (i - npacks);
    if (j < n) out[j] = f2bf(gelu_f(bf2f(x[j])));
  }
}
__global__ void gelu_backward_kernel(bf16 *dx, const bf16 *dout, const bf16 *x, size_t n, int packed) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t npacks = packed ? n / BF16_PER_PACK : 0;
  if (i < npacks) {
    bf16x8 v = load_bf16x8(x + i * BF16_PER_PACK), d = load_bf16x8(dout + i * BF16_PER_PACK), o;
#pragma unroll
    for (int k = 0; k < BF16_PER_PACK; k++) o.v[k] = f2bf(bf2f(d.v[k]) * gelu_grad_f(bf2f(v.v[k])));
    store_bf16x8(dx + i * BF16_PER_PACK, o);
  } else {
    size_t j = npacks * BF16_PER_PACK + (i - npacks);
    if (j < n) dx[j] = f2bf(bf2f(dout[j]) * gelu_grad_f(bf2f(x[j])));
  }
}

void cuda_gelu_forward(void *out, const void *x, size_t n) {
  if (n == 0) return;
  int packed = aligned16(out) && aligned16(x);
  size_t threads = packed ? n / BF16_PER_PACK + n % BF16_PER_PACK : n;
  launch_pdl(gelu_forward_kernel, dim3(ceil_div_int(threads, ACT_THREADS)), dim3(ACT_THREADS), 0, (bf16 *)out,
             (const bf16 *)x, n, packed);
  launchCheck();
}
void cuda_gelu_backward(void *dx, const void *dout, const void *x, size_t n) {
  if (n == 0) return;
  int packed = aligned16(dx) && aligned16(dout) && aligned16(x);
  size_t threads = packed ? n / BF16_PER_PACK + n % BF16_PER_PACK : n;
  gelu_backward_kernel<<<ceil_div_int(threads, ACT_THREADS), ACT_THREADS, 0, SN_STREAM>>>(
      (bf16 *)dx, (const bf16 *)dout, (const bf16 *)x, n, packed);
  launchCheck();
}
