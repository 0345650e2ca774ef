// SwiGLU (Qwen2/Llama MLP) and exact-erf GELU (BERT MLP), forward and backward.
#include <math.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

#define INV_SQRT_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

// sig[i] = 1 / (1 + exp(-x[i])) for i < n, with the vectorised exp (n may be any length).
static void sigmoid_row(float *sig, const float *x, int n) {
  int i = 0;
  for (; i + SN_CPU_EXP_LANES <= n; i += SN_CPU_EXP_LANES) {
    sn_v4f v;
    memcpy(&v, x + i, sizeof v);
    v = 1.0f / (1.0f + sn_cpu_exp_v4(-v));
    memcpy(sig + i, &v, sizeof v);
  }
  if (i < n) {  // the last partial vector; padding lanes are unused
    sn_v4f v = {0};
    for (int l = 0; i + l < n; l++) v[l] = x[i + l];
    v = 1.0f / (1.0f + sn_cpu_exp_v4(-v));
    for (int l = 0; i + l < n; l++) sig[i + l] = v[l];
  }
}

void sn_cpu_swiglu_forward(void *outv, const void *gate_upv, int T, int I) {
  float *out = outv;                // (T, I)
  const float *gate_up = gate_upv;  // (T, 2*I): gate | up
  size_t work = (size_t)T * I;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++) {
    const float *gate = gate_up + (size_t)t * 2 * I, *up = gate + I;
    float *o = out + (size_t)t * I;
    sigmoid_row(o, gate, I);
    for (int i = 0; i < I; i++) o[i] = gate[i] * o[i] * up[i];
  }
}

// d/dgate silu(g) = sigmoid(g) (1 + g (1 - sigmoid(g))); d/dup = silu(g).
void sn_cpu_swiglu_backward(void *dgate_upv, const void *doutv, const void *gate_upv, int T,
                            int I) {
  float *dgate_up = dgate_upv;
  const float *dout = doutv, *gate_up = gate_upv;
  size_t work = (size_t)T * I;
#pragma omp parallel if (work >= SN_CPU_PARALLEL_MIN_WORK)
  {
    float *sig = sn_cpu_scratch(SN_CPU_SCRATCH_OP, (size_t)SN_MAX(I, 1) * sizeof(float));
#pragma omp for schedule(static)
    for (int t = 0; t < T; t++) {
      const float *gate = gate_up + (size_t)t * 2 * I, *up = gate + I, *g = dout + (size_t)t * I;
      float *dgate = dgate_up + (size_t)t * 2 * I, *dup = dgate + I;
      sigmoid_row(sig, gate, I);
      for (int i = 0; i < I; i++) {
        float silu = gate[i] * sig[i], dsilu = sig[i] * (1.0f + gate[i] * (1.0f - sig[i]));
        float d = g[i], u = up[i];  // read before writing: dgate_up may be the gate_up buffer
        dgate[i] = d * u * dsilu;
        dup[i] = d * silu;
      }
    }
  }
}

void sn_cpu_gelu_forward(void *outv, const void *xv, size_t n) {
  float *out = outv;
  const float *x = xv;
#pragma omp parallel for schedule(static) if (n >= SN_CPU_PARALLEL_MIN_WORK)
  for (size_t i = 0; i < n; i++) out[i] = 0.5f * x[i] * (1.0f + erff(x[i] * INV_SQRT_2));
}

// d/dx [x Phi(x)] = Phi(x) + x phi(x).
void sn_cpu_gelu_backward(void *dxv, const void *doutv, const void *xv, size_t n) {
  float *dx = dxv;
  const float *dout = doutv, *x = xv;
#pragma omp parallel for schedule(static) if (n >= SN_CPU_PARALLEL_MIN_WORK)
  for (size_t i = 0; i < n; i++) {
    float cdf = 0.5f * (1.0f + erff(x[i] * INV_SQRT_2));
    float pdf = INV_SQRT_2PI * expf(-0.5f * x[i] * x[i]);
    dx[i] = dout[i] * (cdf + x[i] * pdf);
  }
}
