// The counter-based generator of fresh towers, one definition for both backends: element j of the
// stream `key` is a normal(0, 1) from Box–Muller on two hashed counters (splitmix64's finaliser),
// so every element is computed independently — on all CPU cores or one GPU thread each — and the
// values depend on neither the thread count nor the backend (the GPU evaluates the same double-
// precision expression; tests/gpu/test_cuda_ops.c checks the bf16 bits against the CPU's).
// Fresh-model initialisation and dropout masks; not cryptographic.
#pragma once
#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define SN_RNG_FN static __host__ __device__ __forceinline__
#else
#define SN_RNG_FN static inline
#endif

#define SN_GOLDEN_GAMMA 0x9E3779B97F4A7C15ull  // 2^64 / golden ratio: splitmix64's stream increment
#define SN_TWO_POW_53 9007199254740992.0

SN_RNG_FN uint64_t sn_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The key of stream `stream` (a tensor's index) under `seed`.
SN_RNG_FN uint64_t sn_rng_stream_key(uint64_t seed, uint64_t stream) {
  return sn_mix64(seed + (stream + 1) * SN_GOLDEN_GAMMA);
}

SN_RNG_FN double sn_uniform_open01(uint64_t bits) {  // (0, 1): safe for log()
  return ((double)(bits >> 11) + 0.5) * (1.0 / SN_TWO_POW_53);
}

// Element j of stream `key` as a uniform in (0, 1): dropout masks (ops->dropout).
SN_RNG_FN double sn_uniform_at(uint64_t key, uint64_t j) {
  return sn_uniform_open01(sn_mix64(key + (j + 1) * SN_GOLDEN_GAMMA));
}

SN_RNG_FN float sn_normal_at(uint64_t key, uint64_t j) {
  const double two_pi = 6.283185307179586;
  double u1 = sn_uniform_open01(sn_mix64(key + (2 * j + 1) * SN_GOLDEN_GAMMA));
  double u2 = sn_uniform_open01(sn_mix64(key + (2 * j + 2) * SN_GOLDEN_GAMMA));
  return (float)(sqrt(-2.0 * log(u1)) * cos(two_pi * u2));
}
