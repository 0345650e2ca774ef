// fp32 ↔ bf16 / f16 conversions of the safetensors reader and writer (host/io/safetensors_convert.c)
// against independent references: hand-picked ties, subnormals, inf and NaN, every bf16 and f16
// encoding, and random fp32 inputs against a brute-force nearest-even rounding.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "safetensors.h"
#include "test_util.h"

// Reference rounding by brute force: the nearest of the two neighbouring encodings, ties to even.
static uint16_t nearest_of(float f, uint16_t lo, float vlo, float vhi) {
  double dlo = fabs((double)f - (double)vlo), dhi = fabs((double)vhi - (double)f);
  if (dlo < dhi) return lo;
  if (dhi < dlo) return (uint16_t)(lo + 1);
  return (lo & 1) ? (uint16_t)(lo + 1) : lo;
}

static uint16_t reference_bf16(float f) {
  uint16_t lo = (uint16_t)(sn_test_f32_bits(f) >> 16);  // truncation: toward zero
  if ((lo & 0x7FFF) == 0x7F7F && sn_test_f32_bits(f) & 0xFFFF) {  // between the largest bf16 and inf
    double max = (double)sn_bf16_to_f32(lo), next = ldexp(1.0, 128);  // inf "value" 2^128 as IEEE rounds
    double d = fabs((double)f);
    if (d - max < next - d || (d - max == next - d && !(lo & 1))) return lo;
    return (uint16_t)(lo + 1);
  }
  return nearest_of(f, lo, sn_bf16_to_f32(lo), sn_bf16_to_f32((uint16_t)(lo + 1)));
}

static void test_bf16_conversions(void) {
  struct { uint32_t in; uint16_t out; } cases[] = {
      {0x3F800000, 0x3F80},  // 1
      {0x3F808000, 0x3F80},  // tie, even below
      {0x3F818000, 0x3F82},  // tie, odd below: rounds up
      {0x3F808001, 0x3F81},  // just past the tie
      {0x3F807FFF, 0x3F80},  // just below the tie
      {0x80000000, 0x8000},  // -0
      {0x7F800000, 0x7F80},  // inf
      {0xFF800000, 0xFF80},  // -inf
      {0x7F7FFFFF, 0x7F80},  // largest float rounds to inf
      {0x7F7F8000, 0x7F80},  // tie at the top, odd below: inf
      {0x00000001, 0x0000},  // tiny subnormal
      {0x00008000, 0x0000},  // subnormal tie, even below
      {0x00018000, 0x0002},  // subnormal tie, odd below
  };
  for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
    uint16_t got = sn_f32_to_bf16(sn_test_bits_f32(cases[i].in));
    CHECK(got == cases[i].out, "bf16(0x%08X) = 0x%04X, expected 0x%04X", cases[i].in, got, cases[i].out);
  }
  uint32_t nans[] = {0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7F80FFFF};
  for (size_t i = 0; i < SN_ARRAY_LEN(nans); i++) {
    uint16_t h = sn_f32_to_bf16(sn_test_bits_f32(nans[i]));
    CHECK(isnan(sn_bf16_to_f32(h)) && (h & 0x0040) && (h >> 15) == (nans[i] >> 31),
          "bf16(NaN 0x%08X) = 0x%04X: not a quiet NaN of the same sign", nans[i], h);
  }
  for (uint32_t h = 0; h <= 0xFFFF; h++) {  // every bf16 survives the round trip exactly
    float f = sn_bf16_to_f32((uint16_t)h);
    CHECK(sn_test_f32_bits(f) == h << 16, "bf16 0x%04X -> f32 bits 0x%08X", h, sn_test_f32_bits(f));
    if (!isnan(f)) CHECK(sn_f32_to_bf16(f) == h, "bf16 0x%04X does not round-trip", h);
  }
  sn_test_rng rng;
  sn_test_rng_seed(&rng, 7);
  for (int i = 0; i < 200000; i++) {  // random bit patterns against the brute-force reference
    uint32_t u = (uint32_t)(sn_test_uniform(&rng) * 65536.0f) << 16 | (uint32_t)(sn_test_uniform(&rng) * 65536.0f);
    float f = sn_test_bits_f32(u);
    if (isnan(f) || isinf(f)) continue;
    uint16_t want = reference_bf16(f), got = sn_f32_to_bf16(f);
    CHECK(got == want, "bf16(0x%08X) = 0x%04X, reference 0x%04X", u, got, want);
  }
}

// The largest finite non-negative half not above x (halves 0x0000..0x7BFF increase with their bits).
static uint16_t half_at_or_below(float x) {
  uint32_t lo = 0, hi = 0x7BFF;
  while (lo < hi) {
    uint32_t mid = (lo + hi + 1) / 2;
    if (sn_f16_to_f32((uint16_t)mid) <= x) lo = mid;
    else hi = mid - 1;
  }
  return (uint16_t)lo;
}

static void test_f16_conversions(void) {
  struct { float in; uint16_t out; } cases[] = {
      {1.0f, 0x3C00},
      {-2.0f, 0xC000},
      {65504.0f, 0x7BFF},                                  // largest half
      {65519.99f, 0x7BFF},                                 // below the tie
      {65520.0f, 0x7C00},                                  // tie, odd below: inf
      {1e10f, 0x7C00},
      {-1e10f, 0xFC00},
      {0x1p-14f, 0x0400},                                  // smallest normal
      {0x1p-24f, 0x0001},                                  // smallest subnormal
      {0x1p-25f, 0x0000},                                  // tie, even below: 0
      {0x1.000002p-25f, 0x0001},                           // just past the tie
      {0x3p-25f, 0x0002},                                  // 1.5 units: tie, odd below: up
      {0x5p-25f, 0x0002},                                  // 2.5 units: tie, even below: down
      {0x3FFp-24f, 0x03FF},                                // largest subnormal
      {0x1p-14f - 0x1p-25f, 0x0400},                       // tie between subnormal and normal
      {1.0f + 0x1p-11f, 0x3C00},                           // tie, even below
      {1.0f + 0x3p-11f, 0x3C02},                           // tie, odd below
      {1e-30f, 0x0000},
      {-1e-30f, 0x8000},
      {-0.0f, 0x8000},
      {INFINITY, 0x7C00},
      {-INFINITY, 0xFC00},
  };
  for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
    uint16_t got = sn_f32_to_f16(cases[i].in);
    CHECK(got == cases[i].out, "f16(%a) = 0x%04X, expected 0x%04X", (double)cases[i].in, got, cases[i].out);
  }
  uint32_t nans[] = {0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF};
  for (size_t i = 0; i < SN_ARRAY_LEN(nans); i++) {
    uint16_t h = sn_f32_to_f16(sn_test_bits_f32(nans[i]));
    CHECK((h & 0x7C00) == 0x7C00 && (h & 0x03FF) && (h & 0x0200) && (h >> 15) == (nans[i] >> 31),
          "f16(NaN 0x%08X) = 0x%04X: not a quiet NaN of the same sign", nans[i], h);
  }
  for (uint32_t h = 0; h <= 0xFFFF; h++) {  // every half, against its definition
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    double mag = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    double want = (h & 0x8000) ? -mag : mag;
    float got = sn_f16_to_f32((uint16_t)h);
    if (isnan(want)) {
      CHECK(isnan(got), "f16 0x%04X should be NaN", h);
      continue;
    }
    CHECK((double)got == want && !!signbit(got) == !!signbit(want), "f16 0x%04X -> %a, expected %a", h, (double)got, want);
    CHECK(sn_f32_to_f16(got) == h, "f16 0x%04X does not round-trip", h);
  }
  // Random floats in the half range against the brute-force reference (neighbours by encoding).
  sn_test_rng rng;
  sn_test_rng_seed(&rng, 11);
  for (int i = 0; i < 200000; i++) {
    float f = ldexpf(sn_test_uniform(&rng) + 0.5f, (int)(sn_test_uniform(&rng) * 44.0f) - 28);
    if (sn_test_uniform(&rng) < 0.5f) f = -f;
    uint16_t lo = half_at_or_below(fabsf(f)) | (f < 0 ? 0x8000 : 0);
    if ((lo & 0x7FFF) >= 0x7BFF) continue;  // top of the range: covered by the cases
    uint16_t want = nearest_of(f, lo, sn_f16_to_f32(lo), sn_f16_to_f32((uint16_t)(lo + 1)));
    uint16_t got = sn_f32_to_f16(f);
    CHECK(got == want, "f16(%a) = 0x%04X, reference 0x%04X", (double)f, got, want);
  }
}

int main(void) {
  test_bf16_conversions();
  test_f16_conversions();
  return sn_test_finish("test_half_conversions");
}
