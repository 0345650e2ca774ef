// Collective benchmark for gradient-sized buffers, reported like nccl-tests.
//
//   mpirun -np N sn_bench_comm [--device cpu|cuda] [--min-bytes 1K] [--max-bytes 256M]
//                              [--step-factor 4] [--iters 20] [--warmup 5] [--dtype f32|bf16]
//                              [--ops all_reduce,all_gather,reduce_scatter] [--timeout S]
//
// For every op and size: the median time over --iters runs after --warmup runs (each run ends
// with the host waiting for the result), averaged over ranks; algbw = size / time; busbw = algbw
// times nccl-tests' factor, the fraction of the buffer each rank must send over its link:
// all-reduce 2(n-1)/n, all-gather and reduce-scatter (n-1)/n. As in nccl-tests, size is the
// all-reduce buffer, the all-gather output and the reduce-scatter input. Every op's result is
// checked once per size against the value computed locally (#wrong: elements off, summed over
// ranks); any wrong element makes the exit status 1.
#include <math.h>
#include <string.h>

#include "comm.h"
#include "common.h"
#include "ops.h"

#define KIB 1024ull
#define DEFAULT_MIN_BYTES (1 * KIB)
#define DEFAULT_MAX_BYTES (256 * KIB * KIB)
#define DEFAULT_STEP_FACTOR 4
#define DEFAULT_ITERS 20
#define DEFAULT_WARMUP 5
#define VALUE_PERIOD 5      // input values are small integers 0..4, so sums are exact
#define BF16_REL_TOL 0x1p-8 // bf16 has 8 significant bits: sums of many ranks may round
#define US_PER_S 1e6
#define BYTES_PER_GB 1e9

typedef enum { OP_ALL_REDUCE = 0, OP_ALL_GATHER = 1, OP_REDUCE_SCATTER = 2, OP_COUNT = 3 } bench_op;
static const char *const OP_NAMES[OP_COUNT] = {"all_reduce", "all_gather", "reduce_scatter"};

typedef struct {
  const char *device;
  size_t min_bytes, max_bytes;
  int step_factor, iters, warmup;
  int dtype_given;
  sn_dtype dtype;
  int run_op[OP_COUNT];
  double timeout_s;
} bench_args;

typedef struct {
  sn_comm *comm;
  const sn_ops *ops;
  sn_dtype dtype;
  size_t elt;
} bench_ctx;

static size_t parse_bytes(const char *s, const char *flag) {
  char *end = NULL;
  double v = strtod(s, &end);
  size_t mult = 1;
  if (*end == 'K' || *end == 'k') mult = KIB, end++;
  else if (*end == 'M' || *end == 'm') mult = KIB * KIB, end++;
  else if (*end == 'G' || *end == 'g') mult = KIB * KIB * KIB, end++;
  if (end == s || *end != '\0' || v <= 0) sn_bad_input("%s '%s': expected a size like 1024, 1K, 256M or 1G", flag, s);
  return (size_t)(v * (double)mult);
}

static int parse_positive(const char *s, const char *flag) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < 1 || v > 1000000) sn_bad_input("%s '%s': expected a positive integer", flag, s);
  return (int)v;
}

static void parse_ops(const char *list, int *run_op) {
  memset(run_op, 0, OP_COUNT * sizeof(int));
  char *copy = strdupCheck(list), *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    int found = 0;
    for (int op = 0; op < OP_COUNT; op++)
      if (strcmp(tok, OP_NAMES[op]) == 0) run_op[op] = found = 1;
    if (!found) sn_bad_input("--ops: unknown op '%s' (all_reduce, all_gather, reduce_scatter)", tok);
  }
  free(copy);
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: [mpirun -np N] sn_bench_comm [--device cpu|cuda] [--min-bytes 1K] [--max-bytes 256M]\n"
          "       [--step-factor 4] [--iters 20] [--warmup 5] [--dtype f32|bf16]\n"
          "       [--ops all_reduce,all_gather,reduce_scatter] [--timeout S]\n"
          "Collective bandwidth of the communicator over message sizes.\n"
          "  --device DEV       cpu or cuda buffers\n"
          "  --min-bytes B      smallest message (K, M, G suffixes)\n"
          "  --max-bytes B      largest message\n"
          "  --step-factor F    each size is F times the previous (at least 2)\n"
          "  --iters N          timed calls per size\n"
          "  --warmup N         untimed calls first\n"
          "  --dtype D          element type, f32 or bf16\n"
          "  --ops LIST         the collectives to time, comma-separated\n"
          "  --timeout S        give up on a hung collective after S seconds\n"
          "  --help, -h         this text\n"
          "  --version          the scalingnote version\n");
}

static bench_args parse_args(int argc, char **argv) {
  sn_cli_init("sn_bench_comm", usage);
  bench_args a = {.device = "cpu", .min_bytes = DEFAULT_MIN_BYTES, .max_bytes = DEFAULT_MAX_BYTES,
                  .step_factor = DEFAULT_STEP_FACTOR, .iters = DEFAULT_ITERS, .warmup = DEFAULT_WARMUP,
                  .run_op = {1, 1, 1}};
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
    sn_cli_std_flag(flag);
    if (!value) sn_usage_error("%s needs a value", flag);
    i++;
    if (strcmp(flag, "--device") == 0) a.device = value;
    else if (strcmp(flag, "--min-bytes") == 0) a.min_bytes = parse_bytes(value, flag);
    else if (strcmp(flag, "--max-bytes") == 0) a.max_bytes = parse_bytes(value, flag);
    else if (strcmp(flag, "--step-factor") == 0) a.step_factor = parse_positive(value, flag);
    else if (strcmp(flag, "--iters") == 0) a.iters = parse_positive(value, flag);
    else if (strcmp(flag, "--warmup") == 0) a.warmup = parse_positive(value, flag);
    else if (strcmp(flag, "--ops") == 0) parse_ops(value, a.run_op);
    else if (strcmp(flag, "--timeout") == 0) a.timeout_s = atof(value);
    else if (strcmp(flag, "--dtype") == 0) {
      a.dtype_given = 1;
      if (strcmp(value, "f32") == 0) a.dtype = SN_DTYPE_F32;
      else if (strcmp(value, "bf16") == 0) a.dtype = SN_DTYPE_BF16;
      else sn_bad_input("--dtype '%s': expected f32 or bf16", value);
    } else sn_usage_error("unknown option '%s'", flag);
  }
  if (a.step_factor < 2) sn_bad_input("--step-factor must be at least 2");
  if (a.min_bytes > a.max_bytes) sn_bad_input("--min-bytes is larger than --max-bytes");
  return a;
}

// The input element i of rank r: small integers, so every sum is exact in fp32.
static float input_value(int r, size_t i) { return (float)((i * 7 + (size_t)r * 3) % VALUE_PERIOD); }

// Host fp32 → backend buffer of the benchmark dtype (f32 raw, or the backend's storage dtype).
static void upload(const bench_ctx *b, void *dst, const float *src, size_t n) {
  if (b->dtype == SN_DTYPE_F32) b->ops->upload(dst, src, n * sizeof(float));
  else b->ops->upload_f32(dst, src, n);
}
static void download(const bench_ctx *b, float *dst, const void *src, size_t n) {
  if (b->dtype == SN_DTYPE_F32) b->ops->download(dst, src, n * sizeof(float));
  else b->ops->download_f32(dst, src, n);
}

static void fill_input(const bench_ctx *b, void *dst, size_t n) {
  float *host = mallocCheck(n * sizeof(float));
  for (size_t i = 0; i < n; i++) host[i] = input_value(b->comm->rank, i);
  upload(b, dst, host, n);
  free(host);
}

static void run_op(const bench_ctx *b, bench_op op, void *send, void *recv, size_t count) {
  switch (op) {
    case OP_ALL_REDUCE: sn_comm_all_reduce_sum(b->comm, send, count, b->dtype); break;
    case OP_ALL_GATHER: sn_comm_all_gather(b->comm, send, recv, count, b->dtype); break;
    case OP_REDUCE_SCATTER: sn_comm_reduce_scatter_sum(b->comm, send, recv, count, b->dtype); break;
    case OP_COUNT: break;
  }
  sn_comm_synchronize(b->comm);
  b->ops->synchronize();
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// Elements of the op's output that differ from the locally computed result.
static size_t count_wrong(const bench_ctx *b, bench_op op, const void *out, size_t out_count, size_t count) {
  float *got = mallocCheck(out_count * sizeof(float));
  download(b, got, out, out_count);
  int n = b->comm->world_size, rank = b->comm->rank;
  double tol_rel = b->dtype == SN_DTYPE_F32 ? 0.0 : BF16_REL_TOL;
  size_t wrong = 0;
  for (size_t i = 0; i < out_count; i++) {
    double want = 0;
    if (op == OP_ALL_GATHER) {
      want = input_value((int)(i / count), i % count);
    } else {
      size_t src_index = op == OP_REDUCE_SCATTER ? (size_t)rank * count + i : i;
      for (int r = 0; r < n; r++) want += input_value(r, src_index);
    }
    if (fabs((double)got[i] - want) > tol_rel * fabs(want)) wrong++;
  }
  free(got);
  return wrong;
}

typedef struct {
  size_t bytes, count;  // bytes as nccl-tests counts them; count per rank (all-reduce: total)
  double time_s, algbw, busbw;
  size_t wrong;
} bench_row;

static bench_row bench_one(const bench_ctx *b, bench_op op, size_t bytes, int iters, int warmup) {
  int n = b->comm->world_size;
  bench_row row = {0};
  size_t total = bytes / b->elt;
  size_t count = op == OP_ALL_REDUCE ? total : total / (size_t)n;
  if (count == 0) return row;
  size_t send_count = op == OP_ALL_GATHER ? count : op == OP_REDUCE_SCATTER ? count * n : count;
  size_t out_count = op == OP_ALL_GATHER ? count * n : count;
  row.count = count;
  row.bytes = (op == OP_ALL_REDUCE ? count : count * n) * b->elt;

  void *send = b->ops->alloc(send_count * b->elt);
  void *recv = op == OP_ALL_REDUCE ? send : b->ops->alloc(out_count * b->elt);
  fill_input(b, send, send_count);
  run_op(b, op, send, recv, count);
  row.wrong = count_wrong(b, op, recv, out_count, count);

  double *times = mallocCheck((size_t)iters * sizeof(double));
  for (int i = 0; i < warmup; i++) run_op(b, op, send, recv, count);
  sn_comm_barrier(b->comm);
  for (int i = 0; i < iters; i++) {
    double start = sn_now_s();
    run_op(b, op, send, recv, count);
    times[i] = sn_now_s() - start;
  }
  qsort(times, (size_t)iters, sizeof(double), compare_doubles);
  double stats[2] = {times[iters / 2], (double)row.wrong};  // median time; wrong elements
  sn_comm_all_reduce_f64_host(b->comm, stats, 2);
  row.time_s = stats[0] / n;  // mean over ranks of each rank's median
  row.wrong = (size_t)stats[1];
  row.algbw = (double)row.bytes / row.time_s / BYTES_PER_GB;
  double factor = op == OP_ALL_REDUCE ? 2.0 * (n - 1) / n : (double)(n - 1) / n;
  row.busbw = row.algbw * factor;

  free(times);
  if (recv != send) b->ops->free(recv);
  b->ops->free(send);
  return row;
}

int main(int argc, char **argv) {
  bench_args a = parse_args(argc, argv);
  sn_comm *comm = sn_comm_create(a.device, a.timeout_s);
  const sn_ops *ops = sn_ops_by_name(a.device);
  bench_ctx b = {.comm = comm, .ops = ops, .dtype = a.dtype_given ? a.dtype : ops->storage};
  if (b.dtype != SN_DTYPE_F32 && b.dtype != ops->storage)
    sn_bad_input("--dtype bf16 on device %s: its buffers are f32 only", a.device);
  b.elt = sn_dtype_size(b.dtype);
  int leader = comm->rank == 0;
  if (leader) {
    printf("# sn_bench_comm: %d ranks (%d on this node), backend %s, launcher %s, device %s, dtype %s\n",
           comm->world_size, comm->local_size, sn_comm_backend_name(comm->backend), comm->launcher,
           a.device, b.dtype == SN_DTYPE_F32 ? "f32" : "bf16");
    printf("# time: median of %d runs after %d warm-up runs, mean over ranks; algbw = size/time; "
           "busbw = algbw * 2(n-1)/n (all_reduce), (n-1)/n (all_gather, reduce_scatter)\n",
           a.iters, a.warmup);
    printf("# %-14s %12s %12s %12s %12s %12s %8s\n", "op", "size(B)", "count", "time(us)", "algbw(GB/s)",
           "busbw(GB/s)", "#wrong");
  }
  size_t total_wrong = 0;
  for (int op = 0; op < OP_COUNT; op++) {
    if (!a.run_op[op]) continue;
    for (size_t bytes = a.min_bytes; bytes <= a.max_bytes; bytes *= (size_t)a.step_factor) {
      bench_row row = bench_one(&b, (bench_op)op, bytes, a.iters, a.warmup);
      if (row.count == 0) continue;  // smaller than one element per rank
      total_wrong += row.wrong;
      if (leader)
        printf("  %-14s %12zu %12zu %12.1f %12.3f %12.3f %8zu\n", OP_NAMES[op], row.bytes, row.count,
               row.time_s * US_PER_S, row.algbw, row.busbw, row.wrong);
      fflush(stdout);
    }
  }
  if (leader) printf("# %s\n", total_wrong ? "WRONG RESULTS (see #wrong)" : "all results correct");
  sn_comm_destroy(comm);
  return total_wrong ? 1 : 0;
}
