// One AdamW element, the one definition for both backends (the CPU op and the CUDA kernel): the
// moment updates, the bias-corrected step with decoupled weight decay, and the stochastic rounding
// to bf16 that the bf16 optimizer state uses (ops.h, sn_adamw_hparams.state_bf16).
//
// Why stochastic rounding: with bf16 weights and moments and no fp32 master, most AdamW updates are
// smaller than half a bf16 step of the value they change (an update of lr 1e-5 against a weight of
// 1e-2 is 1e-3 relative; bf16 resolves 2^-8 = 3.9e-3), so rounding to nearest drops them all, and
// beta2 = 0.999 moves v by 1e-3 relative each step, also below a step. Rounding up with the
// probability of the remainder keeps every update in expectation (the result is unbiased), so the
// state can be half the bytes without the updates being lost. The random bits come from the
// counter-based generator (counter_rng.h), keyed by the step and indexed by the element's place in
// the whole buffer: the same values on either backend, any thread count and any ZeRO slicing.
#pragma once
#include <stdint.h>
#include <string.h>

#include "counter_rng.h"

typedef struct {
  float lr, beta1, beta2, eps, grad_scale;
  float bias_correction1, bias_correction2;  // 1 - beta^step
} sn_adamw_consts;

typedef struct {
  float w, m, v;
} sn_adamw_elem;

// The step of one element: gradient g (before grad_scale), weight w, moments m and v in; the new
// weight and moments out, in fp32. wd: the element's weight decay. k by value: in a kernel, taking
// the address of a parameter can make the compiler copy it to local memory.
SN_RNG_FN sn_adamw_elem sn_adamw_update(float w, float m, float v, float g, float wd, sn_adamw_consts k) {
  const float gs = g * k.grad_scale;
  sn_adamw_elem e;
  e.m = k.beta1 * m + (1.0f - k.beta1) * gs;
  e.v = k.beta2 * v + (1.0f - k.beta2) * gs * gs;
  const float update = (e.m / k.bias_correction1) / (sqrtf(e.v / k.bias_correction2) + k.eps) + wd * w;
  e.w = w - k.lr * update;
  return e;
}

#define SN_BF16_DROPPED_BITS 16      // an fp32's low half, which bf16 does not keep
#define SN_BF16_DROPPED_MASK 0xFFFFu

// x rounded to a bf16 value (returned as the fp32 that holds it exactly): away from zero with the
// probability of the dropped bits' share of a step (`noise`: 16 uniform random bits), else toward
// zero. NaN and infinities are kept as they are.
SN_RNG_FN float sn_bf16_round_stochastic(float x, uint32_t noise) {
  if (!isfinite(x)) return x;
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  bits = (bits + (noise & SN_BF16_DROPPED_MASK)) & ~SN_BF16_DROPPED_MASK;  // a carry rounds the magnitude up
  float r;
  memcpy(&r, &bits, sizeof r);
  return r;
}

// The element's weight and moments rounded to bf16 stochastically: three independent 16-bit draws
// from one counter of stream `key` (the step's), at `index` (the element's place in the buffer).
SN_RNG_FN void sn_adamw_round_bf16(sn_adamw_elem *e, uint64_t key, uint64_t index) {
  const uint64_t bits = sn_mix64(key + (index + 1) * SN_GOLDEN_GAMMA);
  e->w = sn_bf16_round_stochastic(e->w, (uint32_t)bits);
  e->m = sn_bf16_round_stochastic(e->m, (uint32_t)(bits >> SN_BF16_DROPPED_BITS));
  e->v = sn_bf16_round_stochastic(e->v, (uint32_t)(bits >> (2 * SN_BF16_DROPPED_BITS)));
}

// The constants of step `step` (1-based) for the element function (host side).
static inline sn_adamw_consts sn_adamw_consts_at(float lr, float beta1, float beta2, float eps, float grad_scale,
                                                 int64_t step) {
  sn_adamw_consts k = {.lr = lr, .beta1 = beta1, .beta2 = beta2, .eps = eps, .grad_scale = grad_scale};
  k.bias_correction1 = (float)(1.0 - pow((double)beta1, (double)step));
  k.bias_correction2 = (float)(1.0 - pow((double)beta2, (double)step));
  return k;
}
