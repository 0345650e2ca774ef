// CPU backend microbenchmark: matmul GFLOP/s for square and model-like shapes, all transposes.
//   sn_bench_cpu [--quick]      (OMP_NUM_THREADS picks the thread count)
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "ops.h"

#define MIN_SECONDS 0.5  // repeat each shape at least this long
#define WARMUP_CALLS 2

typedef struct {
  const char *what;
  int M, N, K, trans_a, trans_b;
} matmul_shape;

static void fill(float *x, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
  }
}

static double bench_matmul(const sn_ops *ops, const matmul_shape *s, double min_seconds) {
  size_t a_n = (size_t)s->M * s->K, b_n = (size_t)s->K * s->N, c_n = (size_t)s->M * s->N;
  float *A = ops->alloc(a_n * sizeof(float)), *B = ops->alloc(b_n * sizeof(float));
  float *C = ops->alloc(c_n * sizeof(float)), *bias = ops->alloc((size_t)s->N * sizeof(float));
  fill(A, a_n, 1);
  fill(B, b_n, 2);
  fill(bias, (size_t)s->N, 3);
  for (int i = 0; i < WARMUP_CALLS; i++)
    ops->matmul(C, A, B, bias, s->M, s->N, s->K, s->trans_a, s->trans_b, 0);
  int calls = 0;
  double t0 = sn_now_s(), elapsed;
  do {
    ops->matmul(C, A, B, bias, s->M, s->N, s->K, s->trans_a, s->trans_b, 0);
    calls++;
    elapsed = sn_now_s() - t0;
  } while (elapsed < min_seconds);
  ops->free(A);
  ops->free(B);
  ops->free(C);
  ops->free(bias);
  return 2.0 * s->M * s->N * (double)s->K * calls / elapsed * 1e-9;
}

// Attention forward + backward over B sequences of L tokens; GFLOP/s counts the 4 (forward) and
// 10 (backward, with the recomputed scores) D-long multiply-adds per visible (query, key) pair.
static double bench_attention(const sn_ops *ops, int B, int L, int Hq, int Hkv, int D, int causal,
                              double min_seconds, double *fwd_ms) {
  int T = B * L;
  size_t n_qkv = (size_t)T * (Hq + 2 * Hkv) * D, n_out = (size_t)T * Hq * D;
  float *qkv = ops->alloc(n_qkv * sizeof(float)), *dqkv = ops->alloc(n_qkv * sizeof(float));
  float *out = ops->alloc(n_out * sizeof(float)), *dout = ops->alloc(n_out * sizeof(float));
  float *lse = ops->alloc((size_t)Hq * T * sizeof(float));
  int32_t *cu = ops->alloc((size_t)(B + 1) * sizeof(int32_t));
  for (int b = 0; b <= B; b++) cu[b] = b * L;
  fill(qkv, n_qkv, 4);
  fill(dout, n_out, 5);
  float scale = 1.0f / sqrtf((float)D);
  int calls = 0;
  double t_fwd = 0, t0 = sn_now_s(), elapsed;
  do {
    double t1 = sn_now_s();
    ops->attention_forward(out, lse, qkv, cu, B, T, L, Hq, Hkv, D, causal, scale);
    t_fwd += sn_now_s() - t1;
    ops->attention_backward(dqkv, dout, qkv, out, lse, cu, B, T, L, Hq, Hkv, D, causal, scale);
    calls++;
    elapsed = sn_now_s() - t0;
  } while (elapsed < min_seconds);
  double pairs = (double)B * Hq * (causal ? L * (L + 1) / 2.0 : (double)L * L);
  *fwd_ms = t_fwd / calls * 1e3;
  ops->free(qkv), ops->free(dqkv), ops->free(out), ops->free(dout), ops->free(lse), ops->free(cu);
  return 2.0 * D * pairs * (4 + 10) * calls / elapsed * 1e-9;
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: sn_bench_cpu [--quick]\n"
          "CPU backend microbenchmark: matmul GFLOP/s (OMP_NUM_THREADS picks the thread count).\n"
          "  --quick            only the four square shapes\n"
          "  --help, -h         this text\n"
          "  --version          the scalingnote version\n");
}

int main(int argc, char **argv) {
  sn_cli_init("sn_bench_cpu", usage);
  int quick = 0;
  for (int i = 1; i < argc; i++) {
    sn_cli_std_flag(argv[i]);
    if (strcmp(argv[i], "--quick") == 0) quick = 1;
    else sn_usage_error("unknown argument '%s'", argv[i]);
  }
  const sn_ops *ops = sn_ops_cpu();
  const matmul_shape shapes[] = {
      {"square NN", 512, 512, 512, 0, 0},
      {"square NT (linear)", 512, 512, 512, 0, 1},
      {"square TN (weight grad)", 512, 512, 512, 1, 0},
      {"square TT", 512, 512, 512, 1, 1},
      {"qwen0.5b qkv fwd T=1024", 1024, 1152, 896, 0, 1},
      {"qwen0.5b mlp up T=1024", 1024, 9728, 896, 0, 1},
      {"qwen0.5b mlp down dX T=1024", 1024, 896, 4864, 0, 0},
      {"qwen0.5b mlp down dW T=1024", 896, 4864, 1024, 1, 0},
      {"tiny model T=256", 256, 256, 256, 0, 1},
  };
  int n_shapes = quick ? 4 : (int)SN_ARRAY_LEN(shapes);
  printf("cpu matmul, %d OpenMP threads\n", omp_get_max_threads());
  printf("%-30s %6s %6s %6s %4s %8s\n", "shape", "M", "N", "K", "op", "GFLOP/s");
  for (int i = 0; i < n_shapes; i++) {
    const matmul_shape *s = &shapes[i];
    double gflops = bench_matmul(ops, s, MIN_SECONDS);
    printf("%-30s %6d %6d %6d   %c%c %8.1f\n", s->what, s->M, s->N, s->K, s->trans_a ? 'T' : 'N',
           s->trans_b ? 'T' : 'N', gflops);
    fflush(stdout);
  }
  printf("\n%-30s %6s %6s %4s %4s %9s %8s\n", "attention fwd+bwd", "B", "L", "Hq", "Hkv",
         "fwd ms", "GFLOP/s");
  const int att[][5] = {{16, 256, 8, 2, 64}, {64, 32, 8, 2, 64}};  // docs, queries (B, L, Hq, Hkv, D)
  for (size_t i = 0; i < SN_ARRAY_LEN(att); i++) {
    double fwd_ms, gflops = bench_attention(ops, att[i][0], att[i][1], att[i][2], att[i][3],
                                            att[i][4], 1, MIN_SECONDS, &fwd_ms);
    printf("%-30s %6d %6d %4d %4d %9.2f %8.1f\n", "causal", att[i][0], att[i][1], att[i][2],
           att[i][3], fwd_ms, gflops);
  }
  return 0;
}
