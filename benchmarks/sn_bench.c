// sn_bench: kernel microbenchmarks of the CUDA backend at realistic shapes.
//
// For each op: median time over many runs (CUDA events around each call, after warm-up), inputs
// rotated over enough copies that L2 (50 MB on the H100) cannot serve them, the fewest bytes the op
// must move (each input read once, each output written once) or the FLOPs it must do, and the
// fraction of the ceiling measured in this same run: device-to-device copy bandwidth (bytes read +
// written) for memory-bound ops, the cuBLASLt bf16 8192^3 GEMM for matrix ops.
//
// Calls run back to back behind a busy-wait kernel (see time_median_ms); --idle-gpu times every call
// from an idle GPU instead, the host's launch latency included (the method of tables before
// 2026-11-25 evening).
//
//   sn_bench [--csv] [--quick] [--idle-gpu] [--filter SUBSTRING]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: sn_bench [--csv] [--quick] [--idle-gpu] [--filter SUBSTRING]\n"
          "Kernel microbenchmarks of the CUDA backend (prints a note and exits 0 without a GPU).\n"
          "  --csv              CSV rows instead of a table\n"
          "  --quick            fewer repetitions per op\n"
          "  --idle-gpu         time each call from an idle GPU (launch latency included)\n"
          "  --filter SUBSTR    only the ops whose name contains SUBSTR\n"
          "  --help, -h         this text\n"
          "  --version          the scalingnote version\n");
}

typedef struct {
  int csv, quick, idle_gpu;
  const char *filter;
} bench_args;

// Parsed in both builds, so that --help, --version and bad flags behave the same without CUDA.
static bench_args parse_args(int argc, char **argv) {
  bench_args a = {0};
  sn_cli_init("sn_bench", usage);
  for (int i = 1; i < argc; i++) {
    sn_cli_std_flag(argv[i]);
    if (!strcmp(argv[i], "--csv")) a.csv = 1;
    else if (!strcmp(argv[i], "--quick")) a.quick = 1;
    else if (!strcmp(argv[i], "--idle-gpu")) a.idle_gpu = 1;
    else if (!strcmp(argv[i], "--filter") && i + 1 < argc) a.filter = argv[++i];
    else if (!strcmp(argv[i], "--filter")) sn_usage_error("--filter needs a SUBSTRING");
    else sn_usage_error("unknown argument: '%s'", argv[i]);
  }
  return a;
}

#ifndef SN_WITH_CUDA
int main(int argc, char **argv) {
  parse_args(argc, argv);
  printf("sn_bench: built without CUDA; the kernel microbenchmarks need the CUDA backend.\n");
  return 0;
}
#else
#include <cuda_runtime.h>
#include <math.h>

#define L2_FLUSH_BYTES ((size_t)200 << 20)  // rotate inputs over at least this many bytes (4x L2)
#define MAX_ROT 8
#define WARMUP_RUNS 5
#define BF16_BYTES 2
#define ROPE_BENCH_SEQLEN 2048  // positions in the rope benchmark restart every this many tokens
#define BUSY_WAIT_MIN_US 2000.0    // queue ahead of the timed calls: at least this long
#define BUSY_WAIT_MAX_US 200000.0  // and at most this long
#define BUSY_WAIT_MARGIN 3.0       // times the host's enqueue time measured on the warm-up calls

#define cudaCheck(call)                                                                    \
  do {                                                                                     \
    cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) sn_fatal("%s: %s", #call, cudaGetErrorString(e_));              \
  } while (0)

static const sn_ops *ops;
#define QUICK_REPS 10  // --quick
static int csv, quick, idle_gpu, reps = 50;
static const char *filter;
static double copy_gbps, gemm_tflops;

// ---- helpers ----------------------------------------------------------------------------------------------
static void fill_random_storage(void *dst, size_t n, float stddev, uint64_t seed) {
  float *h = mallocCheck(n * sizeof(float));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    h[i] = stddev * (((s >> 40) * (1.0f / 16777216.0f)) * 2.0f - 1.0f);
  }
  ops->upload_f32(dst, h, n);
  free(h);
}
static void fill_random_f32(float *dst, size_t n, float stddev, uint64_t seed) {
  float *h = mallocCheck(n * sizeof(float));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
  for (size_t i = 0; i < n; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    h[i] = stddev * (((s >> 40) * (1.0f / 16777216.0f)) * 2.0f - 1.0f);
  }
  ops->upload(dst, h, n * sizeof(float));
  free(h);
}
static void *rand_st(size_t n, float stddev) {
  void *p = ops->alloc(n * BF16_BYTES);
  fill_random_storage(p, n, stddev, (uint64_t)(uintptr_t)p);
  return p;
}
static float *rand_f32(size_t n, float stddev) {
  float *p = ops->alloc(n * sizeof(float));
  fill_random_f32(p, n, stddev, (uint64_t)(uintptr_t)p);
  return p;
}
// Copies of an input set so that rotating over them exceeds L2.
static int rotations_for(size_t set_bytes) {
  int r = (int)((L2_FLUSH_BYTES + set_bytes - 1) / set_bytes);
  return SN_MAX(1, SN_MIN(MAX_ROT, r));
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

typedef void (*bench_fn)(void *ctx, int rot);

// Median milliseconds of fn over `n` runs, rotating rot = 0..nrot-1. The stream is first kept busy
// (sn_cuda_busy_wait) for longer than the host takes to enqueue all n calls with their events, so
// the GPU runs them back to back and each event pair times one call on the GPU. With an idle GPU
// each pair would also time the host launching the call: 4-7 us here, most of a small kernel's
// row. If the host outruns the wait (an op that synchronizes inside), the rows are timed again
// behind a longer one; if it still does, they stand as measured, launch latency included.
static double time_median_ms(bench_fn fn, void *ctx, int nrot, int n) {
  cudaEvent_t *ev = mallocCheck(2 * n * sizeof(cudaEvent_t));
  for (int i = 0; i < 2 * n; i++) cudaCheck(cudaEventCreate(&ev[i]));
  fn(ctx, 0);  // first call: one-time setup (plans, scratch, attributes)
  cudaCheck(cudaDeviceSynchronize());
  double t0 = sn_now_s();
  for (int i = 1; i < WARMUP_RUNS; i++) fn(ctx, i % nrot);
  const double enqueue_per_call_us = (sn_now_s() - t0) * 1e6 / (WARMUP_RUNS - 1);  // the host's share
  cudaCheck(cudaDeviceSynchronize());
  double wait_us = SN_MIN(BUSY_WAIT_MAX_US, SN_MAX(BUSY_WAIT_MIN_US, BUSY_WAIT_MARGIN * enqueue_per_call_us * n));
  for (int attempt = 0; attempt < 2; attempt++) {
    if (!idle_gpu) sn_cuda_busy_wait(wait_us);  // --idle-gpu: every call starts from an idle GPU
    t0 = sn_now_s();
    for (int i = 0; i < n; i++) {
      cudaCheck(cudaEventRecord(ev[2 * i], 0));
      fn(ctx, i % nrot);
      cudaCheck(cudaEventRecord(ev[2 * i + 1], 0));
    }
    const double enqueue_us = (sn_now_s() - t0) * 1e6;
    cudaCheck(cudaDeviceSynchronize());
    if (idle_gpu || enqueue_us < wait_us || wait_us >= BUSY_WAIT_MAX_US) break;
    wait_us = SN_MIN(BUSY_WAIT_MAX_US, 2.0 * enqueue_us);
  }
  float *ms = mallocCheck(n * sizeof(float));
  for (int i = 0; i < n; i++) cudaCheck(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
  qsort(ms, n, sizeof(float), cmp_float);
  double med = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  for (int i = 0; i < 2 * n; i++) cudaCheck(cudaEventDestroy(ev[i]));
  free(ev), free(ms);
  return med;
}

static int selected(const char *name) { return !filter || strstr(name, filter); }

// bytes > 0: memory-bound row (GB/s vs copy). flops > 0: compute row (TFLOP/s vs GEMM).
static void report(const char *name, const char *shape, double ms, double bytes, double flops) {
  double gbps = bytes > 0 ? bytes / (ms * 1e-3) / 1e9 : 0;
  double tflops = flops > 0 ? flops / (ms * 1e-3) / 1e12 : 0;
  double frac = bytes > 0 ? gbps / copy_gbps : (flops > 0 ? tflops / gemm_tflops : 0);
  if (csv)
    printf("%s,\"%s\",%.4f,%.1f,%.1f,%.3f\n", name, shape, ms * 1e3, gbps, tflops, frac);
  else
    printf("%-24s %-40s %10.1f %9.0f %8.1f %7.1f%%\n", name, shape, ms * 1e3, gbps, tflops, 100 * frac);
  fflush(stdout);
}

// ---- ceilings ---------------------------------------------------------------------------------------------
typedef struct {
  void *dst, *src;
  size_t bytes;
} copy_ctx;
static void run_copy(void *c, int rot) {
  copy_ctx *x = c;
  (void)rot;
  ops->copy(x->dst, x->src, x->bytes);
}
typedef struct {
  void *C, *A[MAX_ROT], *B;
  const void *bias;
  int M, N, K, ta, tb;
} mm_ctx;
static void run_mm(void *c, int rot) {
  mm_ctx *x = c;
  ops->matmul(x->C, x->A[rot], x->B, x->bias, x->M, x->N, x->K, x->ta, x->tb, 0);
}

static void measure_ceilings(void) {
  copy_ctx cc = {NULL, NULL, (size_t)1 << 30};
  cc.src = rand_st(cc.bytes / BF16_BYTES, 1.0f);
  cc.dst = ops->alloc(cc.bytes);
  double ms = time_median_ms(run_copy, &cc, 1, 20);
  copy_gbps = 2.0 * cc.bytes / (ms * 1e-3) / 1e9;
  report("ceiling_copy_d2d", "1 GiB read + 1 GiB written", ms, 2.0 * cc.bytes, 0);
  ops->free(cc.src), ops->free(cc.dst);

  const int S = 8192;
  mm_ctx m = {0};
  m.M = m.N = m.K = S, m.tb = 1;
  m.A[0] = rand_st((size_t)S * S, 1.0f);
  m.B = rand_st((size_t)S * S, 1.0f);
  m.C = ops->alloc((size_t)S * S * BF16_BYTES);
  ms = time_median_ms(run_mm, &m, 1, 20);
  gemm_tflops = 2.0 * S * S * (double)S / (ms * 1e-3) / 1e12;
  report("ceiling_gemm_bf16", "8192^3 cuBLASLt, random data", ms, 0, 2.0 * S * S * (double)S);
  ops->free(m.A[0]), ops->free(m.B), ops->free(m.C);
}

// ---- memory-bound ops ---------------------------------------------------------------------------------------
// One generic context: up to 4 storage inputs per rotation, outputs, fp32 side buffers.
typedef struct {
  void *in[MAX_ROT][4];
  void *out[4];
  float *f[4];
  int32_t *ids;
  int T, C, I, V, Hq, Hkv, D, B;
  size_t n;
} ctx_t;

#define ROT_ALLOC(ctx, nrot, slot, count)                                   \
  for (int r_ = 0; r_ < (nrot); r_++) (ctx).in[r_][slot] = rand_st((count), 1.0f)

static void free_ctx(ctx_t *c, int nrot) {
  for (int r = 0; r < nrot; r++)
    for (int s = 0; s < 4; s++)
      if (c->in[r][s]) ops->free(c->in[r][s]);
  for (int s = 0; s < 4; s++) {
    if (c->out[s]) ops->free(c->out[s]);
    if (c->f[s]) ops->free(c->f[s]);
  }
  if (c->ids) ops->free(c->ids);
  memset(c, 0, sizeof *c);
}

static void run_add(void *p, int r) {
  ctx_t *c = p;
  ops->add(c->out[0], c->in[r][0], c->in[r][1], c->n);
}
static void run_rms_fwd(void *p, int r) {
  ctx_t *c = p;
  ops->rmsnorm_forward(c->out[0], c->f[0], c->in[r][0], c->in[0][2], c->T, c->C, 1e-6f);
}
static void run_add_rms_fwd(void *p, int r) {
  ctx_t *c = p;
  ops->add_rmsnorm_forward(c->out[1], c->out[0], c->f[0], c->in[r][0], c->in[r][1], c->in[0][2], c->T, c->C, 1e-6f);
}
static void run_rms_bwd(void *p, int r) {
  ctx_t *c = p;
  ops->rmsnorm_backward(c->out[0], c->out[1], c->in[r][1], c->in[r][0], c->in[0][2], c->f[0], c->T, c->C, 0);
}
static void run_ln_fwd(void *p, int r) {
  ctx_t *c = p;
  ops->layernorm_forward(c->out[0], c->f[1], c->f[0], c->in[r][0], c->in[0][2], c->in[0][3], c->T, c->C, 1e-12f);
}
static void run_ln_bwd(void *p, int r) {
  ctx_t *c = p;
  ops->layernorm_backward(c->out[0], c->out[1], c->out[2], c->in[r][1], c->in[r][0], c->in[0][2], c->f[1], c->f[0],
                          c->T, c->C, 0);
}
static void run_swiglu_fwd(void *p, int r) {
  ctx_t *c = p;
  ops->swiglu_forward(c->out[0], c->in[r][0], c->T, c->I);
}
static void run_swiglu_bwd(void *p, int r) {
  ctx_t *c = p;
  ops->swiglu_backward(c->out[0], c->in[r][1], c->in[r][0], c->T, c->I);
}
static void run_gelu_fwd(void *p, int r) {
  ctx_t *c = p;
  ops->gelu_forward(c->out[0], c->in[r][0], c->n);
}
static void run_gelu_bwd(void *p, int r) {
  ctx_t *c = p;
  ops->gelu_backward(c->out[0], c->in[r][1], c->in[r][0], c->n);
}
static void run_rope(void *p, int r) {
  ctx_t *c = p;
  ops->rope(c->in[r][0], c->ids, c->T, c->Hq, c->Hkv, c->D, 1e6f, 0);
}
static void run_embed_fwd(void *p, int r) {
  ctx_t *c = p;
  (void)r;
  ops->embedding_forward(c->out[0], c->ids, c->in[0][0], c->T, c->C, 0);
}
static void run_embed_bwd(void *p, int r) {
  ctx_t *c = p;
  ops->embedding_backward(c->out[0], c->in[r][1], c->ids, c->T, c->C, c->V);
}
static void run_sumsq(void *p, int r) {
  ctx_t *c = p;
  (void)r;
  ops->sum_squares(c->f[0], c->in[0][0], c->n);
}
static void run_adamw(void *p, int r) {
  ctx_t *c = p;
  (void)r;
  sn_param_span span = {0, c->n, 0.1f};
  sn_adamw_hparams hp = {.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step = 10, .grad_scale = 1.0f};
  ops->adamw(c->out[0], c->f[0], c->in[0][0], c->f[1], c->f[2], &span, 1, &hp);
}
static void run_adamw_bf16_state(void *p, int r) {  // the weights their own master, m and v in storage
  ctx_t *c = p;
  (void)r;
  sn_param_span span = {0, c->n, 0.1f};
  sn_adamw_hparams hp = {.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step = 10, .grad_scale = 1.0f,
                         .state_bf16 = 1, .round_key = 7};
  ops->adamw(c->out[0], NULL, c->in[0][0], c->in[0][1], c->in[0][2], &span, 1, &hp);
}
static void run_pool_mean(void *p, int r) {
  ctx_t *c = p;
  ops->pool_forward(c->out[0], c->in[r][0], c->ids, c->B, c->T, c->C, SN_POOL_MEAN);
}
static void run_sumsq_rotated(void *p, int r) {
  ctx_t *c = p;
  ops->sum_squares(c->f[1], c->in[r][0], (size_t)c->T * c->C);
}
static void run_pool_last(void *p, int r) {
  ctx_t *c = p;
  ops->pool_forward(c->out[0], c->in[r][0], c->ids, c->B, c->T, c->C, SN_POOL_LAST);
}
static void run_pool_l2(void *p, int r) {
  ctx_t *c = p;
  run_pool_last(p, r);
  ops->l2norm_forward(c->f[0], c->f[1], c->out[0], c->B, c->C);
}

static void bench_norms(int T, int C) {
  char shape[96];
  size_t n = (size_t)T * C, set = 2 * n * BF16_BYTES;
  int nrot = rotations_for(set);
  ctx_t c = {0};
  c.T = T, c.C = C;
  ROT_ALLOC(c, nrot, 0, n);
  ROT_ALLOC(c, nrot, 1, n);
  c.in[0][2] = rand_st(C, 1.0f), c.in[0][3] = rand_st(C, 1.0f);
  for (int s = 0; s < 3; s++) c.out[s] = ops->alloc(n * BF16_BYTES);
  c.f[0] = ops->alloc(T * sizeof(float)), c.f[1] = ops->alloc(T * sizeof(float));
  snprintf(shape, sizeof shape, "T=%d C=%d", T, C);
  double io = (double)n * BF16_BYTES;
  if (selected("rmsnorm_forward")) report("rmsnorm_forward", shape, time_median_ms(run_rms_fwd, &c, nrot, reps), 2 * io, 0);
  if (selected("add_rmsnorm_forward"))
    report("add_rmsnorm_forward", shape, time_median_ms(run_add_rms_fwd, &c, nrot, reps), 4 * io, 0);
  ops->rmsnorm_forward(c.out[0], c.f[0], c.in[0][0], c.in[0][2], T, C, 1e-6f);
  if (selected("rmsnorm_backward"))
    report("rmsnorm_backward", shape, time_median_ms(run_rms_bwd, &c, nrot, reps), 3 * io, 0);
  if (selected("layernorm_forward"))
    report("layernorm_forward", shape, time_median_ms(run_ln_fwd, &c, nrot, reps), 2 * io, 0);
  if (selected("layernorm_backward"))
    report("layernorm_backward", shape, time_median_ms(run_ln_bwd, &c, nrot, reps), 3 * io, 0);
  if (selected("add")) {
    c.n = n;
    report("add", shape, time_median_ms(run_add, &c, nrot, reps), 3 * io, 0);
  }
  free_ctx(&c, nrot);
}

static void bench_activations(int T, int I) {
  char shape[96];
  size_t n = (size_t)T * I;
  int nrot = rotations_for(3 * n * BF16_BYTES);
  ctx_t c = {0};
  c.T = T, c.I = I, c.n = 2 * n;  // gelu runs over the same 2n elements
  ROT_ALLOC(c, nrot, 0, 2 * n);
  ROT_ALLOC(c, nrot, 1, 2 * n);
  c.out[0] = ops->alloc(2 * n * BF16_BYTES);
  double e = BF16_BYTES;
  snprintf(shape, sizeof shape, "T=%d I=%d", T, I);
  if (selected("swiglu_forward")) report("swiglu_forward", shape, time_median_ms(run_swiglu_fwd, &c, nrot, reps), 3 * n * e, 0);
  if (selected("swiglu_backward"))
    report("swiglu_backward", shape, time_median_ms(run_swiglu_bwd, &c, nrot, reps), 5 * n * e, 0);
  snprintf(shape, sizeof shape, "n=%zu", 2 * n);
  if (selected("gelu_forward")) report("gelu_forward", shape, time_median_ms(run_gelu_fwd, &c, nrot, reps), 4 * n * e, 0);
  if (selected("gelu_backward")) report("gelu_backward", shape, time_median_ms(run_gelu_bwd, &c, nrot, reps), 6 * n * e, 0);
  free_ctx(&c, nrot);
}

static void bench_rope_embed(void) {
  char shape[96];
  ctx_t c = {0};
  c.T = 16384, c.Hq = 14, c.Hkv = 2, c.D = 64, c.C = 896, c.V = 151936;
  size_t qkv = (size_t)c.T * (c.Hq + 2 * c.Hkv) * c.D;
  int nrot = rotations_for(qkv * BF16_BYTES);
  ROT_ALLOC(c, nrot, 0, qkv);
  int32_t *pos = mallocCheck(c.T * sizeof(int32_t));
  // Positions of packed sequences of ROPE_BENCH_SEQLEN tokens (rope reads positions, not ids).
  for (int t = 0; t < c.T; t++) pos[t] = t % ROPE_BENCH_SEQLEN;
  c.ids = ops->alloc(c.T * sizeof(int32_t));
  ops->upload(c.ids, pos, c.T * sizeof(int32_t));
  snprintf(shape, sizeof shape, "T=%d (%d-token seqs) Hq=%d Hkv=%d D=%d", c.T, ROPE_BENCH_SEQLEN, c.Hq, c.Hkv, c.D);
  double rot_bytes = 2.0 * c.T * (c.Hq + c.Hkv) * c.D * BF16_BYTES;  // q and k heads read + written
  if (selected("rope")) report("rope", shape, time_median_ms(run_rope, &c, nrot, reps), rot_bytes, 0);
  free_ctx(&c, nrot);

  memset(&c, 0, sizeof c);
  c.T = 16384, c.C = 896, c.V = 151936;
  // Token ids: distinct, scattered over the vocabulary (a multiplicative hash).
  for (int t = 0; t < c.T; t++) pos[t] = (int)(((uint64_t)t * 2654435761u) % (uint64_t)c.V);
  c.ids = ops->alloc(c.T * sizeof(int32_t));
  ops->upload(c.ids, pos, c.T * sizeof(int32_t));
  size_t tc = (size_t)c.T * c.C;
  nrot = rotations_for(tc * BF16_BYTES);
  c.in[0][0] = rand_st((size_t)c.V * c.C, 1.0f);
  ROT_ALLOC(c, nrot, 1, tc);
  c.out[0] = rand_st((size_t)c.V * c.C, 1.0f);
  c.out[1] = ops->alloc(tc * BF16_BYTES);
  void *saved = c.out[0];
  c.out[0] = c.out[1];
  snprintf(shape, sizeof shape, "T=%d C=%d V=%d", c.T, c.C, c.V);
  if (selected("embedding_forward"))
    report("embedding_forward", shape, time_median_ms(run_embed_fwd, &c, 1, reps), 2.0 * tc * BF16_BYTES, 0);
  c.out[0] = saved;
  // backward: dout read once, each touched table row read + written (all ids distinct here)
  if (selected("embedding_backward"))
    report("embedding_backward", shape, time_median_ms(run_embed_bwd, &c, nrot, reps), 3.0 * tc * BF16_BYTES, 0);
  free_ctx(&c, nrot);
  free(pos);
}

static void bench_optimizer(size_t n) {
  char shape[96];
  ctx_t c = {0};
  c.n = n;
  c.in[0][0] = rand_st(n, 1e-3f);
  c.out[0] = ops->alloc(n * BF16_BYTES);
  c.f[0] = rand_f32(n, 1.0f), c.f[1] = rand_f32(n, 1e-3f), c.f[2] = ops->alloc(n * sizeof(float));
  ops->memset_zero(c.f[2], n * sizeof(float));
  snprintf(shape, sizeof shape, "n=%zu", n);
  if (selected("adamw"))  // grads r, params w, master/m/v r+w
    report("adamw", shape, time_median_ms(run_adamw, &c, 1, 20), (double)n * (2 + 2 + 3 * 8), 0);
  c.in[0][1] = rand_st(n, 1e-3f), c.in[0][2] = ops->alloc(n * ops->storage_size);
  ops->memset_zero(c.in[0][2], n * ops->storage_size);
  if (selected("adamw_bf16_state"))  // grads r, params r+w, m/v r+w, all in the storage dtype
    report("adamw_bf16_state", shape, time_median_ms(run_adamw_bf16_state, &c, 1, 20),
           (double)n * ops->storage_size * 7, 0);
  float *acc = ops->alloc(sizeof(float));
  float *keep = c.f[0];
  c.f[0] = acc;
  if (selected("sum_squares")) report("sum_squares", shape, time_median_ms(run_sumsq, &c, 1, reps), (double)n * 2, 0);
  c.f[0] = keep;
  ops->free(acc);
  free_ctx(&c, 1);
}

static void bench_matmul(int M, int N, int K, int with_bias, const char *label) {
  char shape[96];
  mm_ctx m = {0};
  m.M = M, m.N = N, m.K = K, m.tb = 1;
  int nrot = rotations_for((size_t)M * K * BF16_BYTES);
  for (int r = 0; r < nrot; r++) m.A[r] = rand_st((size_t)M * K, 1.0f);
  m.B = rand_st((size_t)N * K, 1.0f);
  void *bias = with_bias ? rand_st(N, 1.0f) : NULL;
  m.bias = bias;
  m.C = ops->alloc((size_t)M * N * BF16_BYTES);
  snprintf(shape, sizeof shape, "%s M=%d N=%d K=%d%s", label, M, N, K, with_bias ? " +bias" : "");
  if (selected("matmul")) report("matmul", shape, time_median_ms(run_mm, &m, nrot, reps), 0, 2.0 * M * N * (double)K);
  for (int r = 0; r < nrot; r++) ops->free(m.A[r]);
  ops->free(m.B), ops->free(m.C);
  if (bias) ops->free(bias);
}

// ---- small-batch inference (linear_small, attention_rope_forward) -------------------------------------------
// The weights rotate over enough copies to exceed L2 (more than MAX_ROT: one projection is a few MB),
// so each call streams its weight from HBM as the 0.5B tower's layers do; the row's bytes are the
// weight's alone (x, the output and the residual are a few KB). The same product through the
// unfused ops (matmul [+ the op the epilogue replaces]) follows as linear_small_unfused.
#define LINEAR_SMALL_MAX_ROT 256
typedef struct {
  void *x, *norm_w, *bias, *residual, *out, *tmp;
  void *w[LINEAR_SMALL_MAX_ROT];
  float *rstd;
  int M, N, K, n_w;
  sn_epilogue epilogue;
} small_ctx;
static void run_linear_small(void *p, int r) {
  small_ctx *c = p;
  ops->linear_small(c->out, c->x, c->norm_w, 1e-6f, c->w[r], c->bias, c->residual, c->M, c->N, c->K, c->epilogue);
}
static void run_linear_unfused(void *p, int r) {
  small_ctx *c = p;
  const void *a = c->x;
  if (c->norm_w) ops->rmsnorm_forward(c->tmp, c->rstd, c->x, c->norm_w, c->M, c->K, 1e-6f), a = c->tmp;
  void *y = c->epilogue == SN_EPILOGUE_NONE ? c->out : (char *)c->tmp + (size_t)c->M * c->K * BF16_BYTES;
  ops->matmul(y, a, c->w[r], c->bias, c->M, c->n_w, c->K, 0, 1, 0);
  if (c->epilogue == SN_EPILOGUE_SWIGLU) ops->swiglu_forward(c->out, y, c->M, c->N);
  if (c->epilogue == SN_EPILOGUE_GELU) ops->gelu_forward(c->out, y, (size_t)c->M * c->N);
  if (c->epilogue == SN_EPILOGUE_RESIDUAL) ops->add(c->out, c->residual, y, (size_t)c->M * c->N);
}
// c->w[0..nrot) = random (n_w, K) weights, as many copies as exceed L2; returns nrot.
static int rotated_weights(small_ctx *c) {
  const size_t w_bytes = (size_t)c->n_w * c->K * BF16_BYTES;
  const int nrot = (int)SN_MIN(LINEAR_SMALL_MAX_ROT, (L2_FLUSH_BYTES + w_bytes - 1) / w_bytes);
  for (int r = 0; r < nrot; r++) c->w[r] = rand_st((size_t)c->n_w * c->K, 1.0f / sqrtf((float)c->K));
  return nrot;
}
static void bench_linear_small(int M, int N, int K, sn_epilogue epilogue, int with_norm, const char *label) {
  if (!selected("linear_small")) return;
  static const char *epi_name[] = {"", " swiglu", " gelu", " +residual"};
  small_ctx c = {0};
  c.M = M, c.N = N, c.K = K, c.epilogue = epilogue, c.n_w = epilogue == SN_EPILOGUE_SWIGLU ? 2 * N : N;
  const size_t w_bytes = (size_t)c.n_w * K * BF16_BYTES;
  const int nrot = rotated_weights(&c);
  c.x = rand_st((size_t)M * K, 1.0f);
  c.norm_w = with_norm ? rand_st(K, 1.0f) : NULL;
  c.bias = rand_st(c.n_w, 1.0f);
  c.residual = epilogue == SN_EPILOGUE_RESIDUAL ? rand_st((size_t)M * N, 1.0f) : NULL;
  c.out = ops->alloc((size_t)M * N * BF16_BYTES);
  c.tmp = ops->alloc(((size_t)M * K + (size_t)M * c.n_w) * BF16_BYTES);
  c.rstd = ops->alloc((size_t)M * sizeof(float));
  char shape[96];
  snprintf(shape, sizeof shape, "%s M=%d N=%d K=%d%s%s", label, M, c.n_w, K, with_norm ? " norm" : "",
           epi_name[epilogue]);
  report("linear_small", shape, time_median_ms(run_linear_small, &c, nrot, reps), (double)w_bytes, 0);
  report("linear_small_unfused", shape, time_median_ms(run_linear_unfused, &c, nrot, reps), (double)w_bytes, 0);
  for (int r = 0; r < nrot; r++) ops->free(c.w[r]);
  ops->free(c.x), ops->free(c.bias), ops->free(c.out), ops->free(c.tmp), ops->free(c.rstd);
  if (c.norm_w) ops->free(c.norm_w);
  if (c.residual) ops->free(c.residual);
}
// A tower's layer at M rows: QKV with the norm, o_proj and down with the residual, the MLP's input.
static void bench_linear_small_layer(int M, int C, int qkv_dim, int I, int decoder, const char *label) {
  bench_linear_small(M, qkv_dim, C, SN_EPILOGUE_NONE, decoder, label);
  bench_linear_small(M, C, C, SN_EPILOGUE_RESIDUAL, 0, label);  // o_proj: Hq D = C in both towers
  bench_linear_small(M, I, C, decoder ? SN_EPILOGUE_SWIGLU : SN_EPILOGUE_GELU, decoder, label);
  bench_linear_small(M, C, I, SN_EPILOGUE_RESIDUAL, 0, label);
}

// ---- a query's GEMMs with their weights cold and in L2 ------------------------------------------------------
// The 0.5B's four projections at 32 rows through ops->matmul (cuBLASLt): the weight rotated over
// copies that exceed L2 (streamed from HBM, as in a forward), then one copy read again and again (in
// L2). Both rows' bytes are the weight's. Measured on the H100 (session 13, docs/PERFORMANCE.md):
// in L2 they take 0.6-3.2 µs less than cold (7.3-11.6 µs), still 6.6-9.4: at 32 rows they wait on
// latency more than on HBM bandwidth.
static void run_matmul_cold(void *p, int r) {
  small_ctx *c = p;
  ops->matmul(c->out, c->x, c->w[r], c->bias, c->M, c->n_w, c->K, 0, 1, 0);
}
static void run_matmul_l2(void *p, int r) {
  (void)r;
  run_matmul_cold(p, 0);
}
static void bench_small_gemm(int M, int N, int K, const char *label) {
  if (!selected("small_gemm")) return;
  small_ctx c = {0};
  c.M = M, c.n_w = N, c.K = K;
  const size_t w_bytes = (size_t)N * K * BF16_BYTES;
  const int nrot = rotated_weights(&c);
  c.x = rand_st((size_t)M * K, 1.0f);
  c.out = ops->alloc((size_t)M * N * BF16_BYTES);
  char shape[96];
  snprintf(shape, sizeof shape, "%s M=%d N=%d K=%d", label, M, N, K);
  report("small_gemm_cold", shape, time_median_ms(run_matmul_cold, &c, nrot, reps), (double)w_bytes, 0);
  report("small_gemm_l2", shape, time_median_ms(run_matmul_l2, &c, nrot, reps), (double)w_bytes, 0);
  for (int r = 0; r < nrot; r++) ops->free(c.w[r]);
  ops->free(c.x), ops->free(c.out);
}

// ---- the whole decoder in one kernel (decoder_fused_forward) ---------------------------------------------
// A query through a random decoder of the student's or the 0.5B tower's shape, its weights rotated
// over copies that together exceed L2 (each call streams them from HBM, as the first query after
// other work does); the row's bytes are the blocks' weights (the embedding rows read are a few KB).
#define FUSED_BENCH_VOCAB 1024
#define FUSED_BENCH_MAX_ROT 16
typedef struct {
  sn_decoder_block *blocks[FUSED_BENCH_MAX_ROT];
  sn_decoder_weights w[FUSED_BENCH_MAX_ROT];
  void *tensors[FUSED_BENCH_MAX_ROT][SN_DECODER_FUSED_MAX_LAYERS][6];
  void *embed, *final_norm, *out;
  int32_t *ids, *pos, *cu;
  int T;
} fused_ctx;
static void run_decoder_fused(void *p, int r) {
  fused_ctx *c = p;
  ops->decoder_fused_forward(c->out, c->ids, c->pos, c->cu, 1, c->T, &c->w[r]);
}
static void bench_decoder_fused(int L, int C, int I, int Hq, int Hkv, int T, const char *label) {
  if (!selected("decoder_fused")) return;
  const int D = C / Hq, qkv_dim = (Hq + 2 * Hkv) * D;
  const size_t block_elems = (size_t)qkv_dim * C + (size_t)C * C + 2 * (size_t)I * C + (size_t)C * I;
  const size_t w_bytes = (size_t)L * block_elems * BF16_BYTES;
  const int nrot = (int)SN_MIN(FUSED_BENCH_MAX_ROT, (L2_FLUSH_BYTES + w_bytes - 1) / w_bytes);
  fused_ctx c = {0};
  c.T = T;
  c.embed = rand_st((size_t)FUSED_BENCH_VOCAB * C, 1.0f), c.final_norm = rand_st(C, 1.0f);
  for (int r = 0; r < nrot; r++) {
    c.blocks[r] = mallocCheck(L * sizeof(sn_decoder_block));
    for (int l = 0; l < L; l++) {
      void **t = c.tensors[r][l];
      t[0] = rand_st((size_t)qkv_dim * C, 1.0f / sqrtf((float)C)), t[1] = rand_st(qkv_dim, 0.1f);
      t[2] = rand_st((size_t)C * C, 1.0f / sqrtf((float)C)), t[3] = rand_st((size_t)2 * I * C, 1.0f / sqrtf((float)C));
      t[4] = rand_st((size_t)C * I, 1.0f / sqrtf((float)I)), t[5] = rand_st(C, 1.0f);  // t[5]: both norms
      c.blocks[r][l] = (sn_decoder_block){t[5], t[0], t[1], t[2], NULL, t[5], t[3], NULL, t[4], NULL};
    }
    c.w[r] = (sn_decoder_weights){L, C, I, Hq, Hkv, D, 1e-6f, 1e6f, c.embed, c.final_norm, c.blocks[r]};
  }
  int32_t ids[SN_DECODER_FUSED_MAX_ROWS], pos[SN_DECODER_FUSED_MAX_ROWS], cu[2] = {0, T};
  for (int t = 0; t < T; t++) ids[t] = (t * 37) % FUSED_BENCH_VOCAB, pos[t] = t;
  c.ids = ops->alloc(sizeof ids), c.pos = ops->alloc(sizeof pos), c.cu = ops->alloc(sizeof cu);
  ops->upload(c.ids, ids, sizeof ids), ops->upload(c.pos, pos, sizeof pos), ops->upload(c.cu, cu, sizeof cu);
  c.out = ops->alloc((size_t)T * C * BF16_BYTES);
  char shape[96];
  snprintf(shape, sizeof shape, "%s L=%d C=%d I=%d T=%d", label, L, C, I, T);
  if (ops->decoder_fused_supports(&c.w[0], T))
    report("decoder_fused", shape, time_median_ms(run_decoder_fused, &c, nrot, reps), (double)w_bytes, 0);
  else
    printf("decoder_fused %s: not supported on this device\n", shape);
  for (int r = 0; r < nrot; r++) {
    for (int l = 0; l < L; l++)
      for (int k = 0; k < 6; k++) ops->free(c.tensors[r][l][k]);
    free(c.blocks[r]);
  }
  ops->free(c.embed), ops->free(c.final_norm), ops->free(c.out), ops->free(c.ids), ops->free(c.pos), ops->free(c.cu);
}

// ---- attention -------------------------------------------------------------------------------------------
typedef struct {
  void *qkv, *out, *dout, *dqkv;
  float *lse;
  int32_t *cu;
  int B, T, L, Hq, Hkv, D, causal;
} attn_ctx;
static void run_attn_fwd(void *p, int r) {
  attn_ctx *a = p;
  (void)r;
  ops->attention_forward(a->out, a->lse, a->qkv, a->cu, a->B, a->T, a->L, a->Hq, a->Hkv, a->D, a->causal,
                         1.0f / sqrtf((float)a->D));
}
static void run_attn_bwd(void *p, int r) {
  attn_ctx *a = p;
  (void)r;
  ops->attention_backward(a->dqkv, a->dout, a->qkv, a->out, a->lse, a->cu, a->B, a->T, a->L, a->Hq, a->Hkv, a->D,
                          a->causal, 1.0f / sqrtf((float)a->D));
}

static void bench_attention(int B, int L, int Hq, int Hkv, int D, int causal) {
  const int fwd = selected("attention_forward"), bwd = selected("attention_backward");
  if (!fwd && !bwd) return;
  char shape[96];
  attn_ctx a = {0};
  a.B = B, a.L = L, a.T = B * L, a.Hq = Hq, a.Hkv = Hkv, a.D = D, a.causal = causal;
  size_t row = (size_t)(Hq + 2 * Hkv) * D;
  a.qkv = rand_st((size_t)a.T * row, 1.0f);
  a.dout = rand_st((size_t)a.T * Hq * D, 1.0f);
  a.out = ops->alloc((size_t)a.T * Hq * D * BF16_BYTES);
  a.dqkv = ops->alloc((size_t)a.T * row * BF16_BYTES);
  a.lse = ops->alloc((size_t)Hq * a.T * sizeof(float));
  int32_t *cu = mallocCheck((B + 1) * sizeof(int32_t));
  for (int b = 0; b <= B; b++) cu[b] = b * L;
  a.cu = ops->alloc((B + 1) * sizeof(int32_t));
  ops->upload(a.cu, cu, (B + 1) * sizeof(int32_t));
  free(cu);
  // FLOPs as FlashAttention counts them: 4 B L^2 Hq D forward (halved when causal), 2.5x that backward.
  double fwd_flops = 4.0 * B * (double)L * L * Hq * D * (causal ? 0.5 : 1.0);
  snprintf(shape, sizeof shape, "B=%d L=%d Hq=%d Hkv=%d D=%d %s", B, L, Hq, Hkv, D, causal ? "causal" : "bidir");
  if (fwd) report("attention_forward", shape, time_median_ms(run_attn_fwd, &a, 1, reps), 0, fwd_flops);
  else run_attn_fwd(&a, 0);  // the backward reads its output and lse
  if (bwd) report("attention_backward", shape, time_median_ms(run_attn_bwd, &a, 1, reps), 0, 2.5 * fwd_flops);
  ops->free(a.qkv), ops->free(a.dout), ops->free(a.out), ops->free(a.dqkv), ops->free(a.lse), ops->free(a.cu);
}

// attention_rope_forward against rope + attention_forward at query lengths (FLOPs as bench_attention).
typedef struct {
  attn_ctx a;
  int32_t *pos;
  void *rotated;
} rope_attn_ctx;
static void run_attn_rope(void *p, int r) {
  rope_attn_ctx *c = p;
  (void)r;
  ops->attention_rope_forward(c->a.out, c->a.qkv, c->pos, c->a.cu, c->a.B, c->a.T, c->a.L, c->a.Hq, c->a.Hkv, c->a.D,
                              1000000.0f, c->a.causal, 1.0f / sqrtf((float)c->a.D));
}
static void run_rope_then_attn(void *p, int r) {
  rope_attn_ctx *c = p;
  (void)r;
  // rotates in place, further each run: the values do not change the time
  ops->rope(c->rotated, c->pos, c->a.T, c->a.Hq, c->a.Hkv, c->a.D, 1000000.0f, 0);
  ops->attention_forward(c->a.out, c->a.lse, c->rotated, c->a.cu, c->a.B, c->a.T, c->a.L, c->a.Hq, c->a.Hkv, c->a.D,
                         c->a.causal, 1.0f / sqrtf((float)c->a.D));
}
static void bench_attention_rope(int B, int L, int Hq, int Hkv, int D, int causal) {
  if (!selected("attention_rope")) return;
  rope_attn_ctx c = {0};
  attn_ctx *a = &c.a;
  a->B = B, a->L = L, a->T = B * L, a->Hq = Hq, a->Hkv = Hkv, a->D = D, a->causal = causal;
  const size_t row = (size_t)(Hq + 2 * Hkv) * D;
  a->qkv = rand_st((size_t)a->T * row, 1.0f);
  c.rotated = rand_st((size_t)a->T * row, 1.0f);
  a->out = ops->alloc((size_t)a->T * Hq * D * BF16_BYTES);
  a->lse = ops->alloc((size_t)Hq * a->T * sizeof(float));
  int32_t *cu = mallocCheck((B + 1) * sizeof(int32_t)), *pos = mallocCheck((size_t)a->T * sizeof(int32_t));
  for (int b = 0; b <= B; b++) cu[b] = b * L;
  for (int t = 0; t < a->T; t++) pos[t] = t % L;
  a->cu = ops->alloc((B + 1) * sizeof(int32_t));
  c.pos = ops->alloc((size_t)a->T * sizeof(int32_t));
  ops->upload(a->cu, cu, (B + 1) * sizeof(int32_t));
  ops->upload(c.pos, pos, (size_t)a->T * sizeof(int32_t));
  free(cu), free(pos);
  const double flops = 4.0 * B * (double)L * L * Hq * D * (causal ? 0.5 : 1.0);
  char shape[96];
  snprintf(shape, sizeof shape, "B=%d L=%d Hq=%d Hkv=%d D=%d %s", B, L, Hq, Hkv, D, causal ? "causal" : "bidir");
  report("attention_rope_forward", shape, time_median_ms(run_attn_rope, &c, 1, reps), 0, flops);
  report("attention_rope_unfused", shape, time_median_ms(run_rope_then_attn, &c, 1, reps), 0, flops);
  ops->free(a->qkv), ops->free(c.rotated), ops->free(a->out), ops->free(a->lse), ops->free(a->cu), ops->free(c.pos);
}

// ---- losses and pooling ------------------------------------------------------------------------------------
typedef struct {
  float *rows, *cols, *drows, *dcols, *loss;
  int32_t *target;
  int R, N, C;
} loss_ctx;
static void run_contrastive(void *p, int r) {
  loss_ctx *l = p;
  (void)r;
  ops->contrastive_loss(l->loss, l->drows, l->dcols, l->rows, l->cols, l->target, l->R, l->N, l->C, 20.0f,
                        1.0f / l->R);
}
static void bench_losses(int R, int N, int C) {
  if (!selected("contrastive")) return;
  char shape[96];
  loss_ctx l = {0};
  l.R = R, l.N = N, l.C = C;
  l.rows = rand_f32((size_t)R * C, 0.05f), l.cols = rand_f32((size_t)N * C, 0.05f);
  l.drows = rand_f32((size_t)R * C, 0.0f), l.dcols = rand_f32((size_t)N * C, 0.0f);
  l.loss = rand_f32(1, 0.0f);
  int32_t *t = mallocCheck(R * sizeof(int32_t));
  for (int i = 0; i < R; i++) t[i] = (i * 2) % N;
  l.target = ops->alloc(R * sizeof(int32_t));
  ops->upload(l.target, t, R * sizeof(int32_t));
  free(t);
  snprintf(shape, sizeof shape, "R=%d N=%d C=%d fp32 (3 GEMMs + fused CE)", R, N, C);
  // FLOPs of the three fp32 GEMMs; fraction is against the bf16 GEMM ceiling, so read it as a lower bound.
  report("contrastive_loss", shape, time_median_ms(run_contrastive, &l, 1, reps), 0, 3 * 2.0 * R * N * (double)C);
  ops->free(l.rows), ops->free(l.cols), ops->free(l.drows), ops->free(l.dcols), ops->free(l.loss), ops->free(l.target);
}

// The fused LM head + cross-entropy of stage 0: T positions over a V-entry vocabulary, backward included.
typedef struct {
  void *hidden, *weight, *dhidden, *dweight;
  float *loss;
  int32_t *target;
  int T, V, C;
} lm_head_ctx;
static void run_lm_head(void *p, int r) {
  lm_head_ctx *l = p;
  (void)r;
  ops->lm_head_xent(l->loss, l->dhidden, l->dweight, l->hidden, l->weight, l->target, l->T, l->V, l->C, 1.0f / l->T);
}
static void bench_lm_head(int T, int V, int C) {
  if (!selected("lm_head_xent")) return;
  char shape[96];
  lm_head_ctx l = {.T = T, .V = V, .C = C};
  l.hidden = rand_st((size_t)T * C, 1.0f), l.weight = rand_st((size_t)V * C, 0.05f);
  l.dhidden = rand_st((size_t)T * C, 0.0f), l.dweight = rand_st((size_t)V * C, 0.0f);
  l.loss = rand_f32(1, 0.0f);
  int32_t *t = mallocCheck((size_t)T * sizeof(int32_t));
  for (int i = 0; i < T; i++) t[i] = (int32_t)(((int64_t)i * 7919) % V);
  l.target = ops->alloc((size_t)T * sizeof(int32_t));
  ops->upload(l.target, t, (size_t)T * sizeof(int32_t));
  free(t);
  snprintf(shape, sizeof shape, "T=%d V=%d C=%d (4 GEMMs, chunked)", T, V, C);
  // the logits twice (both sweeps), dhidden, dweight
  report("lm_head_xent", shape, time_median_ms(run_lm_head, &l, 1, reps), 0, 4 * 2.0 * T * (double)V * C);
  ops->free(l.hidden), ops->free(l.weight), ops->free(l.dhidden), ops->free(l.dweight), ops->free(l.loss);
  ops->free(l.target);
}

static void bench_pool(int B, int L, int C) {
  if (!selected("pool")) return;
  char shape[96];
  ctx_t c = {0};
  c.B = B, c.T = B * L, c.C = C;
  int nrot = rotations_for((size_t)c.T * C * BF16_BYTES);
  ROT_ALLOC(c, nrot, 0, (size_t)c.T * C);
  int32_t *cu = mallocCheck((B + 1) * sizeof(int32_t));
  for (int b = 0; b <= B; b++) cu[b] = b * L;
  c.ids = ops->alloc((B + 1) * sizeof(int32_t));
  ops->upload(c.ids, cu, (B + 1) * sizeof(int32_t));
  free(cu);
  c.out[0] = ops->alloc((size_t)B * C * BF16_BYTES);
  c.f[0] = ops->alloc((size_t)B * C * sizeof(float)), c.f[1] = ops->alloc(B * sizeof(float));
  snprintf(shape, sizeof shape, "last-token + l2norm B=%d C=%d", B, C);
  report("pool_l2norm_forward", shape, time_median_ms(run_pool_l2, &c, nrot, reps), (double)B * C * (2 + 2 + 2 + 4), 0);
  // Reference for the row above (two launches on B rows, latency-bound): one launch that moves
  // almost nothing, timed the same way.
  const int full_B = c.B;
  c.B = 1;
  snprintf(shape, sizeof shape, "launch reference: last-token B=1 C=%d", C);
  if (selected("pool_l2norm")) report("pool_forward", shape, time_median_ms(run_pool_last, &c, nrot, reps), 4.0 * C, 0);
  c.B = full_B;
  // Mean pooling reads every token: the memory-bound case (BERT-style students).
  snprintf(shape, sizeof shape, "mean B=%d L=%d C=%d", B, L, C);
  report("pool_mean_forward", shape, time_median_ms(run_pool_mean, &c, nrot, reps),
         (double)c.T * C * BF16_BYTES + (double)B * C * BF16_BYTES, 0);
  // Reference: a plain read-only reduction (sum_squares) over the same buffers, what reading this
  // many bytes in one launch costs here; at tens of MB the launch and the single wave weigh.
  snprintf(shape, sizeof shape, "read reference: sum_squares n=%d (%.0f MB)", c.T * C, c.T * C * BF16_BYTES / 1e6);
  if (selected("pool_mean")) report("sum_squares", shape, time_median_ms(run_sumsq_rotated, &c, nrot, reps),
                                    (double)c.T * C * BF16_BYTES, 0);
  free_ctx(&c, nrot);
}

// ---- exact top-k for evaluation ----------------------------------------------------------------------------
typedef struct {
  float *queries, *docs, *scores, *best_score;
  int32_t *best_idx;
  int nq, nd, C, k, calls;
} topk_ctx;
static void run_scores_f32(void *p, int r) {
  topk_ctx *t = p;
  (void)r;
  ops->scores_f32(t->scores, t->queries, t->docs, t->nq, t->nd, t->C);
}
// Each call merges the block as documents never seen before (col0 moves on), into lists already
// full of equally good entries: the steady state of a search past its first block.
static void run_topk_merge(void *p, int r) {
  topk_ctx *t = p;
  (void)r;
  ops->topk_merge(t->best_score, t->best_idx, t->scores, t->nq, t->nd, t->k, t->calls++ * t->nd, NULL);
}

// The first block of a search: lists empty, so every call runs the radix select (the memset that
// empties them, 4 bytes per entry, is in the time).
static void run_topk_merge_first(void *p, int r) {
  topk_ctx *t = p;
  (void)r;
  cudaCheck(cudaMemsetAsync(t->best_idx, 0xff, (size_t)t->nq * t->k * sizeof(int32_t), 0));  // all -1
  ops->topk_merge(t->best_score, t->best_idx, t->scores, t->nq, t->nd, t->k, 0, NULL);
}

static void bench_topk(int nq, int nd, int C) {
  if (!selected("scores_f32") && !selected("topk_merge")) return;
  char shape[96];
  topk_ctx t = {0};
  t.nq = nq, t.nd = nd, t.C = C;
  t.queries = rand_f32((size_t)nq * C, 0.05f);
  t.docs = rand_f32((size_t)nd * C, 0.05f);  // 235 MB at 65536 x 896: no rotation needed
  t.scores = ops->alloc((size_t)nq * nd * sizeof(float));
  snprintf(shape, sizeof shape, "M=%d N=%d K=%d fp32, no TF32", nq, nd, C);
  // fraction against the bf16 GEMM ceiling: read it as a lower bound
  if (selected("scores_f32"))
    report("scores_f32", shape, time_median_ms(run_scores_f32, &t, 1, reps), 0, 2.0 * nq * nd * (double)C);
  {  // cosine-like: uniform in [0.25, 0.75], two binades (a retrieval model's scores crowd similarly)
    float *h = mallocCheck((size_t)nq * nd * sizeof(float));
    uint64_t st = 42;
    for (size_t i = 0; i < (size_t)nq * nd; i++) {
      st ^= st << 13, st ^= st >> 7, st ^= st << 17;
      h[i] = 0.25f + 0.5f * ((st >> 40) * (1.0f / 16777216.0f));
    }
    ops->upload(t.scores, h, (size_t)nq * nd * sizeof(float));
    free(h);
  }
  const int ks[] = {100, 1000};
  for (size_t i = 0; i < SN_ARRAY_LEN(ks) && selected("topk_merge"); i++) {
    t.k = ks[i], t.calls = 0;
    t.best_score = ops->alloc((size_t)nq * t.k * sizeof(float));
    t.best_idx = ops->alloc((size_t)nq * t.k * sizeof(int32_t));
    int32_t *empty = mallocCheck((size_t)nq * t.k * sizeof(int32_t));
    for (size_t j = 0; j < (size_t)nq * t.k; j++) empty[j] = -1;
    ops->upload(t.best_idx, empty, (size_t)nq * t.k * sizeof(int32_t));
    free(empty);
    // bytes: the score block read once (256 MB: out of L2); the old lists are ~1% more
    snprintf(shape, sizeof shape, "nq=%d nd=%d k=%d lists full", nq, nd, t.k);
    report("topk_merge", shape, time_median_ms(run_topk_merge, &t, 1, reps), (double)nq * nd * sizeof(float), 0);
    snprintf(shape, sizeof shape, "nq=%d nd=%d k=%d lists empty", nq, nd, t.k);
    report("topk_merge", shape, time_median_ms(run_topk_merge_first, &t, 1, reps), (double)nq * nd * sizeof(float), 0);
    ops->free(t.best_score), ops->free(t.best_idx);
  }
  ops->free(t.queries), ops->free(t.docs), ops->free(t.scores);
}

int main(int argc, char **argv) {
  bench_args a = parse_args(argc, argv);
  csv = a.csv, quick = a.quick, idle_gpu = a.idle_gpu, filter = a.filter;
  if (quick) reps = QUICK_REPS;
  const char *why = NULL;
  ops = sn_ops_cuda(&why);
  if (!ops) {
    printf("sn_bench: no CUDA device (%s); nothing to measure.\n", why ? why : "unknown");
    return 0;
  }
  struct cudaDeviceProp prop;
  cudaCheck(cudaGetDeviceProperties(&prop, 0));
  if (csv) printf("op,shape,median_us,GB_per_s,TFLOP_per_s,fraction_of_ceiling\n");
  else {
    printf("# sn_bench on %s (%d SMs, %.0f MB L2); median of %d runs after %d warm-up, inputs rotated over >= %zu MB; "
           "%s\n",
           prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6, reps, WARMUP_RUNS, L2_FLUSH_BYTES >> 20,
           idle_gpu ? "each call from an idle GPU (launch latency included)" : "calls back to back from a full queue");
    printf("%-24s %-40s %10s %9s %8s %8s\n", "op", "shape", "median_us", "GB/s", "TFLOP/s", "ceiling");
  }
  measure_ceilings();
  bench_norms(16384, 896);
  if (!quick) bench_norms(16384, 3584);
  bench_activations(16384, 4864);
  bench_rope_embed();
  bench_pool(128, 128, 896);    // 0.5B documents
  bench_pool(128, 512, 1536);   // 1.5B towers, 512-token documents
  bench_optimizer(quick ? (size_t)1 << 24 : (size_t)494032768);
  bench_matmul(16384, 4864 * 2, 896, 0, "gate_up 0.5B");
  bench_matmul(16384, 896, 896, 1, "q_proj 0.5B");
  bench_matmul(8192, 1536, 1536, 1, "q_proj 1.5B");
  bench_linear_small_layer(32, 896, 1152, 4864, 1, "0.5B");      // a 32-token query
  bench_small_gemm(32, 1152, 896, "qkv 0.5B");                   // the same query's four GEMMs alone
  bench_small_gemm(32, 896, 896, "o_proj 0.5B");
  bench_small_gemm(32, 2 * 4864, 896, "gate_up 0.5B");
  bench_small_gemm(32, 896, 4864, "down 0.5B");
  bench_linear_small_layer(32, 384, 1152, 1536, 0, "student");  // the 384-wide student
  if (!quick) bench_linear_small_layer(SN_LINEAR_SMALL_MAX_ROWS, 896, 1152, 4864, 1, "0.5B");
  bench_decoder_fused(6, 384, 1536, 6, 2, 32, "student");  // a 32-token query, every block
  bench_decoder_fused(6, 384, 1536, 6, 2, 1, "student");
  bench_decoder_fused(24, 896, 4864, 14, 2, 32, "0.5B tower");
  bench_decoder_fused(24, 896, 4864, 14, 2, 1, "0.5B tower");
  bench_attention_rope(1, 32, 14, 2, 64, 1);
  bench_attention_rope(8, 32, 14, 2, 64, 1);
  bench_attention_rope(4, 64, 14, 2, 64, 1);    // SN_SHORT_ATTENTION_MAX_TOKEN_KEYS (16384)
  bench_attention_rope(1, 128, 14, 2, 64, 1);   // the same work, one sequence
  bench_attention_rope(64, 128, 14, 2, 64, 1);  // far past it: where the flash kernel should win
  bench_attention(1, 32, 14, 2, 64, 1);   // a 0.5B query
  bench_attention(64, 32, 14, 2, 64, 1);  // a batch of 64 of them
  bench_attention(128, 128, 14, 2, 64, 1);
  bench_attention(32, 512, 12, 2, 128, 1);
  bench_attention(8, 2048, 14, 2, 64, 1);
  bench_attention(256, 32, 6, 6, 64, 0);
  bench_losses(64, 128, 896);
  bench_losses(512, 1024, 1536);
  bench_lm_head(8192, 151936, 896);  // stage 0 of a Qwen2.5-0.5B-sized model, 8k tokens a micro-batch
  bench_topk(1024, 65536, 896);  // a query block against a document block of an eval search
  return 0;
}
#endif
