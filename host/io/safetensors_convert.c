// fp32 <-> bf16 / f16 conversions used by the safetensors reader and writer and the CPU backend
// (round to nearest even; inf and NaN preserved).
#include <string.h>

#include "safetensors.h"

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

#define F32_ABS_MASK 0x7FFFFFFFu
#define F32_INF_BITS 0x7F800000u
#define BF16_QUIET_BIT 0x0040u
#define F16_SIGN 0x8000u
#define F16_INF 0x7C00u
#define F16_QUIET_BIT 0x0200u
#define F16_MANT_MASK 0x03FFu
#define F32_TO_F16_BIAS (127 - 15)  // exponent bias difference
#define F32_F16_MANT_SHIFT 13       // 23 - 10 mantissa bits dropped

uint16_t sn_f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & F32_ABS_MASK) > F32_INF_BITS) return (uint16_t)((u >> 16) | BF16_QUIET_BIT);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest, ties to even (overflow carries into inf)
  return (uint16_t)(u >> 16);
}

float sn_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// Rounds `value >> shift` to nearest, ties to even.
static uint32_t shift_round_even(uint32_t value, int shift) {
  if (shift >= 32) return 0;
  uint32_t kept = value >> shift;
  uint32_t rest = value & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (kept & 1u))) kept++;
  return kept;
}

uint16_t sn_f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & F16_SIGN);
  uint32_t a = u & F32_ABS_MASK;
  if (a >= F32_INF_BITS) {  // inf stays inf; NaN stays a quiet NaN with its top payload bits
    if (a == F32_INF_BITS) return sign | F16_INF;
    return (uint16_t)(sign | F16_INF | F16_QUIET_BIT | ((a >> F32_F16_MANT_SHIFT) & F16_MANT_MASK));
  }
  int exp = (int)(a >> 23) - F32_TO_F16_BIAS;
  if (exp >= 31) return sign | F16_INF;                    // >= 2^16: past the largest half
  if (exp <= 0) {                                          // half subnormal (or zero)
    if (exp < -10) return sign;                            // below 2^-25: rounds to zero
    uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;           // with the implicit bit
    return (uint16_t)(sign | shift_round_even(mant, 14 - exp));  // units of 2^-24
  }
  // Normal: keep 10 mantissa bits; a carry out of the mantissa bumps the exponent (up to inf).
  uint32_t h = ((uint32_t)exp << 10) | ((a >> F32_F16_MANT_SHIFT) & F16_MANT_MASK);
  uint32_t rest = a & ((1u << F32_F16_MANT_SHIFT) - 1u), half = 1u << (F32_F16_MANT_SHIFT - 1);
  if (rest > half || (rest == half && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

float sn_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & F16_SIGN) << 16;
  int exp = (h >> 10) & 0x1F;
  uint32_t mant = h & F16_MANT_MASK;
  if (exp == 0x1F) return bits_f32(sign | F32_INF_BITS | (mant << F32_F16_MANT_SHIFT));
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);
    exp = 1;  // subnormal: normalise so the leading 1 becomes the implicit bit
    while (!(mant & 0x400u)) {
      mant <<= 1;
      exp--;
    }
    mant &= F16_MANT_MASK;
  }
  return bits_f32(sign | ((uint32_t)(exp + F32_TO_F16_BIAS) << 23) | (mant << F32_F16_MANT_SHIFT));
}
