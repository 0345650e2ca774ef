#include "test_util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int sn_test_failures = 0;

int sn_test_finish(const char *name) {
  if (sn_test_failures) {
    fprintf(stderr, "%s: %d check(s) failed\n", name, sn_test_failures);
    return 1;
  }
  fprintf(stderr, "%s: all checks passed\n", name);
  return 0;
}

void sn_test_skip(const char *why) {
  fprintf(stderr, "SKIP: %s\n", why);
  exit(SN_TEST_SKIP);
}

void sn_test_rng_seed(sn_test_rng *r, uint64_t seed) { r->s = seed * 0x9E3779B97F4A7C15ull + 1; }

static uint64_t next_u64(sn_test_rng *r) {
  uint64_t x = r->s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return r->s = x;
}

float sn_test_uniform(sn_test_rng *r) { return (float)((next_u64(r) >> 40) * (1.0 / 16777216.0)); }

float sn_test_normal(sn_test_rng *r) {
  double u1 = ((next_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
  double u2 = (next_u64(r) >> 11) * (1.0 / 9007199254740992.0);
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void sn_test_fill_normal(sn_test_rng *r, float *x, size_t n, float stddev) {
  for (size_t i = 0; i < n; i++) x[i] = stddev * sn_test_normal(r);
}

double sn_rel_err(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (isnan(a[i]) || isnan(b[i])) return INFINITY;
    double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * (double)b[i];
  }
  return sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
}

size_t sn_test_count_bit_diffs(const float *a, const float *b, size_t n) {
  size_t differ = 0;
  for (size_t i = 0; i < n; i++) differ += sn_test_f32_bits(a[i]) != sn_test_f32_bits(b[i]);
  return differ;
}

double sn_max_abs_err(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (isnan(d)) return INFINITY;
    if (d > m) m = d;
  }
  return m;
}

static const char *env_or(const char *name, const char *fallback) {
  const char *v = getenv(name);
  return (v && *v) ? v : fallback;
}

const char *sn_test_source_dir(void) { return env_or("SN_SOURCE_DIR", "."); }
const char *sn_test_build_dir(void) { return env_or("SN_BUILD_DIR", "."); }

const char *sn_test_shared_dir(void) {
  const char *d = env_or("SN_SHARED_DIR", "../shared");
  struct stat st;
  return (stat(d, &st) == 0 && S_ISDIR(st.st_mode)) ? d : NULL;
}

uint32_t sn_test_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

float sn_test_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
