// SwiGLU (Qwen2/Llama MLP) and exact-erf GELU (BERT MLP), forward and backward.
#include <math.h>

#include "cpu_ops.h"

#define INV_SQRT_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

void sn_cpu_swiglu_forward(void *outv, const void *gate_upv, int T, int I) {
  float *out = outv;             // (T, I)
  const float *gate_up = gate_upv;  // (T, 2*I): gate | up
  size_t work = (size_t)T * I;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++) {
    const float *gate = gate_up + (size_t)t * 2 * I, *up = gate + I;
    float *o = out + (size_t)t * I;
    for (int i = 0; i < I; i++) o[i] = gate[i] * sigmoidf(gate[i]) * up[i];
  }
}

// d/dgate silu(g) = sigmoid(g) (1 + g (1 - sigmoid(g))); d/dup = silu(g).
void sn_cpu_swiglu_backward(void *dgate_upv, const void *doutv, const void *gate_upv, int T,
                            int I) {
  float *dgate_up = dgate_upv;
  const float *dout = doutv, *gate_up = gate_upv;
  size_t work = (size_t)T * I;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++) {
    const float *gate = gate_up + (size_t)t * 2 * I, *up = gate + I, *g = dout + (size_t)t * I;
    float *dgate = dgate_up + (size_t)t * 2 * I, *dup = dgate + I;
    for (int i = 0; i < I; i++) {
      float sig = sigmoidf(gate[i]), silu = gate[i] * sig;
      float dsilu = sig * (1.0f + gate[i] * (1.0f - sig));
      float d = g[i];  // read before writing: dgate_up may be the gate_up buffer
      float u = up[i];
      dgate[i] = d * u * dsilu;
      dup[i] = d * silu;
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
