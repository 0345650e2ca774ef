// The activation functions of one element, fp32: activations.cu applies them to whole tensors,
// linear_small.cu in its epilogues.
#pragma once
#include "common.cuh"

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float silu_f(float x) { return x * sigmoidf_(x); }
// GELU, erf form, and its derivative.
__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.0f + erff(x * INV_SQRT2)); }
__device__ __forceinline__ float gelu_grad_f(float x) {
  return 0.5f * (1.0f + erff(x * INV_SQRT2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
}
