// Tensors on both backends and their comparison: see cuda_ops_harness.h.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cuda_ops_harness.h"

const sn_ops *cpu, *gpu;
sn_test_rng rng;
int verbose_rows;

// ---- host helpers ---------------------------------------------------------------------------------------
float round_bf16(float x) {  // round to nearest even, as the GPU's upload does
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return x;
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  memcpy(&x, &u, 4);
  return x;
}
float *randn(size_t n, float stddev) {
  float *x = mallocCheck((n ? n : 1) * sizeof(float));
  sn_test_fill_normal(&rng, x, n, stddev);
  for (size_t i = 0; i < n; i++) x[i] = round_bf16(x[i]);
  return x;
}
float *nan_array(size_t n) {
  float *x = mallocCheck((n ? n : 1) * sizeof(float));
  for (size_t i = 0; i < n; i++) x[i] = NAN;
  return x;
}


pair pair_new(size_t n, const float *host, int is_f32) {
  pair p = {NULL, NULL, n, is_f32};
  size_t bytes_c = (n ? n : 1) * (is_f32 ? 4 : cpu->storage_size);
  size_t bytes_g = (n ? n : 1) * (is_f32 ? 4 : gpu->storage_size);
  p.c = cpu->alloc(bytes_c);
  p.g = gpu->alloc(bytes_g);
  float *poison = host ? NULL : nan_array(n);
  const float *src = host ? host : poison;
  if (n) {
    if (is_f32) {
      cpu->upload(p.c, src, n * 4);
      gpu->upload(p.g, src, n * 4);
    } else {
      cpu->upload_f32(p.c, src, n);
      gpu->upload_f32(p.g, src, n);
    }
  }
  free(poison);
  return p;
}
pair st_rand(size_t n, float stddev) {
  float *h = randn(n, stddev);
  pair p = pair_new(n, h, 0);
  free(h);
  return p;
}
pair f32_rand(size_t n, float stddev) {
  float *h = randn(n, stddev);
  pair p = pair_new(n, h, 1);
  free(h);
  return p;
}
pair st_poison(size_t n) { return pair_new(n, NULL, 0); }
pair f32_poison(size_t n) { return pair_new(n, NULL, 1); }
pair i32_new(size_t n, const int32_t *host) {
  pair p = {cpu->alloc((n ? n : 1) * 4), gpu->alloc((n ? n : 1) * 4), n, 0};
  if (n) {
    cpu->upload(p.c, host, n * 4);
    gpu->upload(p.g, host, n * 4);
  }
  return p;
}
void pair_free(pair *p) {
  cpu->free(p->c);
  gpu->free(p->g);
  p->c = p->g = NULL;
}

// Downloads both sides as fp32 and compares; returns the relative error.
double compare(const char *what, pair p, double tol) {
  float *a = mallocCheck((p.n ? p.n : 1) * 4), *b = mallocCheck((p.n ? p.n : 1) * 4);
  if (p.n) {
    if (p.is_f32) {
      gpu->download(a, p.g, p.n * 4);
      cpu->download(b, p.c, p.n * 4);
    } else {
      gpu->download_f32(a, p.g, p.n);
      cpu->download_f32(b, p.c, p.n);
    }
  }
  double err = sn_rel_err(a, b, p.n);
  CHECK(err <= tol, "%s: rel err %.3e > %.1e (n=%zu)", what, err, tol, p.n);
  if (verbose_rows) {
    printf("%-58s rel_err %.3e  %s\n", what, err, err <= tol ? "ok" : "FAIL");
    fflush(stdout);  // keep the rows in order with the FAIL lines on stderr
  }
  free(a);
  free(b);
  return err;
}

// cu_seqlens (B+1) for the given lengths; returns T.
// The GPU op run twice on the same inputs must give the same bits (no order-dependent float sums).
// storage_bytes: the size of the output buffers first and again.
void check_repeatable(const char *what, const void *first, const void *again, size_t storage_bytes) {
  unsigned char *a = mallocCheck(storage_bytes ? storage_bytes : 1), *b = mallocCheck(storage_bytes ? storage_bytes : 1);
  gpu->download(a, first, storage_bytes), gpu->download(b, again, storage_bytes);
  size_t differ = 0;
  for (size_t i = 0; i < storage_bytes; i++) differ += a[i] != b[i];
  CHECK(differ == 0, "%s: %zu of %zu bytes differ between two GPU runs", what, differ, storage_bytes);
  if (verbose_rows) {
    printf("%-58s %s\n", what, differ ? "FAIL" : "identical");
    fflush(stdout);
  }
  free(a), free(b);
}

int make_cu(int32_t *cu, const int *lens, int B) {
  cu[0] = 0;
  for (int b = 0; b < B; b++) cu[b + 1] = cu[b] + lens[b];
  return cu[B];
}

int packed_positions(const int *lens, int B, int32_t **cu, int32_t **pos, int *max_len) {
  *cu = mallocCheck((B + 1) * sizeof(int32_t));
  const int T = make_cu(*cu, lens, B);
  *max_len = 0;
  for (int b = 0; b < B; b++) *max_len = SN_MAX(*max_len, lens[b]);
  *pos = mallocCheck(T * sizeof(int32_t));
  for (int b = 0; b < B; b++)
    for (int i = 0; i < lens[b]; i++) (*pos)[(*cu)[b] + i] = i;
  return T;
}
