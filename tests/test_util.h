// Helpers for the C tests: seeded random data, relative errors, checks that count failures, and
// the skip convention (exit 77, which ctest reports as skipped).
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SN_TEST_SKIP 77

extern int sn_test_failures;

// Prints "FAIL file:line: ..." and counts a failure when cond is false.
#define CHECK(cond, ...)                                                      \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                    \
      fprintf(stderr, __VA_ARGS__);                                           \
      fputc('\n', stderr);                                                    \
      sn_test_failures++;                                                     \
    }                                                                         \
  } while (0)

// Ends a test: prints a summary line and returns the exit status (0 or 1).
int sn_test_finish(const char *name);
// Skips the whole test with a reason (exit 77).
_Noreturn void sn_test_skip(const char *why);

// xorshift-based deterministic generator.
typedef struct { uint64_t s; } sn_test_rng;
void sn_test_rng_seed(sn_test_rng *r, uint64_t seed);
float sn_test_uniform(sn_test_rng *r);            // [0, 1)
float sn_test_normal(sn_test_rng *r);             // N(0, 1)
void sn_test_fill_normal(sn_test_rng *r, float *x, size_t n, float stddev);

// The bits of an fp32 value and back (memcpy, no aliasing games).
uint32_t sn_test_f32_bits(float f);
float sn_test_bits_f32(uint32_t u);

// ||a - b|| / max(||b||, tiny) in double precision; NaN anywhere gives +inf.
double sn_rel_err(const float *a, const float *b, size_t n);
// Largest |a - b|.
double sn_max_abs_err(const float *a, const float *b, size_t n);
// How many of the n floats differ in their bits (0: the same bits, signed zeros and NaNs included).
size_t sn_test_count_bit_diffs(const float *a, const float *b, size_t n);

// Directories from the environment ctest sets (fall back to "." / "../shared").
const char *sn_test_source_dir(void);
const char *sn_test_build_dir(void);
const char *sn_test_shared_dir(void);  // NULL when ../shared is absent
