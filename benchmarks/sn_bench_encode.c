// sn_bench_encode: what a serving process sees of the encoder library (include/scalingnote/encoder.h):
// the latency of one sn_encode_ids call of B queries of T tokens (p50, p99) and the throughput of a
// stream of such calls, for export folders or fresh towers of a given shape, beside the
// torch.compile(mode="reduce-overhead") anchor run in the same process tree. With --handles N, N
// handles of the tower stream at once, a thread each (a server's workers): the throughput of all.
//
//   sn_bench_encode [--device cpu|cuda] [--model DIR]... [--model-desc FILE]... [--batches 1,8,64]
//                   [--len T] [--queries N] [--warmup N] [--threads N] [--handles N] [--no-graphs]
//                   [--anchor SCRIPT]
//
// A --model-desc tower is random-initialised on the device (seeded) and exported in bf16 to a
// temporary folder, which the library opens like any export; it is removed afterwards. Queries
// are random ids of the vocabulary (tokenisation is not timed: sn_encode_ids). Every call returns
// its embeddings to host memory, as a server must. Without --model and --model-desc: the 0.5B
// tower (configs/models/qwen2.5-0.5b.json) and the 6-layer 384-wide student
// (configs/models/student-6l-384.json), the shapes the anchor script times.
#define _GNU_SOURCE
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "common.h"
#include "counter_rng.h"
#include "model.h"
#include "model_config.h"
#include "scalingnote/encoder.h"

#define MAX_SUBJECTS 8
#define MAX_BATCHES 16
#define MAX_HANDLES 64
#define DEFAULT_LEN 32        // tokens a query, the serving shape
#define DEFAULT_QUERIES 512   // queries each batch size streams through
#define DEFAULT_WARMUP 10     // untimed calls first (CUDA context, cuBLASLt plans, scratch)
#define SEED_TOWER 21
#define SEED_QUERIES 22
#define P50 0.50
#define P99 0.99
#define ANCHOR_LINE_MAX 4096

static void usage(FILE *out) {
  fprintf(out,
          "usage: sn_bench_encode [--device cpu|cuda] [--model DIR]... [--model-desc FILE]... [options]\n"
          "Query-encoding latency (p50/p99 per call) and throughput through the encoder library.\n"
          "  --device D         cpu or cuda (default cuda when a GPU is present, else cpu)\n"
          "  --model DIR        an exported tower to time (repeatable)\n"
          "  --model-desc FILE  a fresh random tower of this shape (repeatable; default: the 0.5B tower\n"
          "                     and the 6-layer 384-wide student of configs/models/)\n"
          "  --batches LIST     queries per call, comma-separated (default 1,8,64)\n"
          "  --len T            tokens a query (default %d)\n"
          "  --queries N        queries streamed per batch size (default %d)\n"
          "  --warmup N         untimed calls before each batch size (default %d)\n"
          "  --threads N        CPU threads of the library's calls (default: OpenMP's)\n"
          "  --handles N        N handles stream at once, a thread each (default 1); the line gives the\n"
          "                     median of their p50s and p99s and the queries/s of all together\n"
          "  --no-graphs        CUDA: launch every op instead of replaying a recorded graph a shape\n"
          "  --anchor SCRIPT    then run `python3 SCRIPT` (../shared/bench/torch_compiled_extra.py) and\n"
          "                     print its figures beside ours\n"
          "  --help, -h         this text\n"
          "  --version          the scalingnote version\n",
          DEFAULT_LEN, DEFAULT_QUERIES, DEFAULT_WARMUP);
}

typedef struct {
  const char *path;
  int is_desc;
} subject;

typedef struct {
  const char *device, *anchor;
  subject subjects[MAX_SUBJECTS];
  int nsubjects, batches[MAX_BATCHES], nbatches, len, queries, warmup, threads, handles, no_graphs;
} bench_args;

static void parse_batches(const char *flag, const char *v, bench_args *a) {
  char *copy = strdupCheck(v), *save = NULL;
  a->nbatches = 0;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (a->nbatches == MAX_BATCHES) sn_usage_error("%s: at most %d batch sizes", flag, MAX_BATCHES);
    a->batches[a->nbatches++] = (int)sn_flag_i64(flag, tok, 1, 1 << 16);
  }
  free(copy);
  if (a->nbatches == 0) sn_usage_error("%s needs at least one batch size", flag);
}

static void add_subject(bench_args *a, const char *flag, const char *path, int is_desc) {
  if (a->nsubjects == MAX_SUBJECTS) sn_usage_error("%s: at most %d towers", flag, MAX_SUBJECTS);
  sn_flag_path_kind(flag, path, !is_desc);
  a->subjects[a->nsubjects++] = (subject){path, is_desc};
}

static bench_args parse_args(int argc, char **argv) {
  bench_args a = {.batches = {1, 8, 64}, .nbatches = 3, .len = DEFAULT_LEN, .queries = DEFAULT_QUERIES,
                  .warmup = DEFAULT_WARMUP, .handles = 1};
  sn_cli_init("sn_bench_encode", usage);
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    sn_cli_std_flag(f);
    if (!strcmp(f, "--no-graphs")) {
      a.no_graphs = 1;
      continue;
    }
    if (i + 1 >= argc) sn_usage_error("unknown argument or missing value: '%s'", f);
    const char *v = argv[++i];
    if (!strcmp(f, "--device")) a.device = v;
    else if (!strcmp(f, "--model")) add_subject(&a, f, v, 0);
    else if (!strcmp(f, "--model-desc")) add_subject(&a, f, v, 1);
    else if (!strcmp(f, "--batches")) parse_batches(f, v, &a);
    else if (!strcmp(f, "--len")) a.len = (int)sn_flag_i64(f, v, 1, 1 << 16);
    else if (!strcmp(f, "--queries")) a.queries = (int)sn_flag_i64(f, v, 1, 1 << 24);
    else if (!strcmp(f, "--warmup")) a.warmup = (int)sn_flag_i64(f, v, 0, 1 << 16);
    else if (!strcmp(f, "--threads")) a.threads = (int)sn_flag_i64(f, v, 1, 1 << 12);
    else if (!strcmp(f, "--handles")) a.handles = (int)sn_flag_i64(f, v, 1, MAX_HANDLES);
    else if (!strcmp(f, "--anchor")) sn_flag_path_kind(f, v, 0), a.anchor = v;
    else sn_usage_error("unknown argument: '%s'", f);
  }
  if (a.nsubjects == 0) {
    a.subjects[a.nsubjects++] = (subject){SN_SOURCE_DIR "/configs/models/qwen2.5-0.5b.json", 1};
    a.subjects[a.nsubjects++] = (subject){SN_SOURCE_DIR "/configs/models/student-6l-384.json", 1};
  }
  return a;
}

// A fresh tower of the description's shape, exported (bf16) into a new temporary folder (into dir).
static void export_fresh_tower(const char *desc_path, const sn_ops *ops, char *dir, size_t size) {
  size_t len;
  char *desc = sn_read_file(desc_path, &len);
  if (!desc) sn_usage_error("--model-desc %s: cannot read it: %s", desc_path, strerror(errno));
  sn_model_config cfg;
  char err[1024];
  if (sn_config_parse_desc(&cfg, desc, len, desc_path, err, sizeof err) != 0) sn_usage_error("%s", err);
  free(desc);
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, size, "%s/sn_bench_encode_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(dir)) sn_fatal("mkdtemp %s: %s", dir, strerror(errno));
  sn_model *m = sn_model_new(&cfg, ops, SEED_TOWER);
  if (sn_model_export(m, dir, SN_DTYPE_BF16, err, sizeof err) != 0) sn_fatal("%s", err);
  sn_model_free(m);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// The q-quantile of n sorted samples (nearest rank).
static double quantile(const double *sorted, int n, double q) {
  int k = (int)ceil(q * n) - 1;
  return sorted[k < 0 ? 0 : k >= n ? n - 1 : k];
}

typedef struct {
  double p50_ms, p99_ms, queries_per_s;
} batch_result;

// Streams a->queries random queries through enc in calls of B; one latency sample a call. Handle
// `stream` draws its own queries.
static batch_result time_batch(sn_encoder *enc, const bench_args *a, int B, int vocab, int stream) {
  const int T = a->len, D = sn_encoder_dim(enc);
  int32_t *ids = mallocCheck((size_t)B * T * sizeof *ids);
  int64_t *offsets = mallocCheck(((size_t)B + 1) * sizeof *offsets);
  float *out = mallocCheck((size_t)B * D * sizeof *out);
  const uint64_t key = sn_rng_stream_key(SEED_QUERIES + (uint64_t)stream * MAX_BATCHES, (uint64_t)B);
  for (int b = 0; b <= B; b++) offsets[b] = (int64_t)b * T;
  const int calls = SN_MAX(1, a->queries / B);
  double *ms = mallocCheck((size_t)calls * sizeof *ms);
  for (int c = -a->warmup; c < calls; c++) {
    // fresh ids each call (untimed), so no cache sees the same query twice
    for (int i = 0; i < B * T; i++)
      ids[i] = (int32_t)(sn_uniform_at(key, ((uint64_t)(c + a->warmup) * B * T) + (uint64_t)i) * vocab) % vocab;
    const double t0 = sn_now_s();
    if (sn_encode_ids(enc, ids, offsets, B, out) != SN_OK) sn_fatal("sn_encode_ids: %s", sn_encoder_last_error(enc));
    if (c >= 0) ms[c] = (sn_now_s() - t0) * 1e3;
  }
  double norm = 0.0;  // the call did its work: unit rows
  for (int k = 0; k < D; k++) norm += (double)out[k] * out[k];
  if (fabs(norm - 1.0) > 1e-2) sn_fatal("the last call's first embedding has norm %g, not 1", sqrt(norm));
  double total = 0.0;
  for (int c = 0; c < calls; c++) total += ms[c];
  qsort(ms, (size_t)calls, sizeof *ms, cmp_double);
  batch_result r = {quantile(ms, calls, P50), quantile(ms, calls, P99), (double)calls * B / (total * 1e-3)};
  free(ms), free(ids), free(offsets), free(out);
  return r;
}

typedef struct {
  sn_encoder *enc;
  const bench_args *a;
  int B, vocab, stream;
  batch_result r;
} stream_job;

static void *run_stream(void *arg) {
  stream_job *j = arg;
  j->r = time_batch(j->enc, j->a, j->B, j->vocab, j->stream);
  return NULL;
}

static double median_of(double *x, int n) {
  qsort(x, (size_t)n, sizeof *x, cmp_double);
  return quantile(x, n, P50);
}

// The handles stream at once, a thread each: the medians of their p50 and p99 latencies, and the
// sum of their throughputs (each measured over its own calls, which all overlap but for warm-up).
static batch_result time_handles(sn_encoder **enc, int n, const bench_args *a, int B, int vocab) {
  if (n == 1) return time_batch(enc[0], a, B, vocab, 0);
  stream_job jobs[MAX_HANDLES];
  pthread_t tid[MAX_HANDLES];
  for (int h = 0; h < n; h++) {
    jobs[h] = (stream_job){enc[h], a, B, vocab, h, {0, 0, 0}};
    if (pthread_create(&tid[h], NULL, run_stream, &jobs[h]) != 0) sn_fatal("pthread_create: %s", strerror(errno));
  }
  double p50[MAX_HANDLES], p99[MAX_HANDLES], rate = 0.0;
  for (int h = 0; h < n; h++) {
    pthread_join(tid[h], NULL);
    p50[h] = jobs[h].r.p50_ms, p99[h] = jobs[h].r.p99_ms, rate += jobs[h].r.queries_per_s;
  }
  return (batch_result){median_of(p50, n), median_of(p99, n), rate};
}

// The anchor script's name of a shape we time (its "size" key), or NULL.
static const char *anchor_size_of(const char *path) {
  static const char *const NAMES[][2] = {{"qwen2.5-0.5b.json", "0.5B"}, {"student-6l-384.json", "student-6L384"}};
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  for (size_t i = 0; i < SN_ARRAY_LEN(NAMES); i++)
    if (!strcmp(base, NAMES[i][0])) return NAMES[i][1];
  return NULL;
}

typedef struct {
  const char *size;  // anchor name, NULL when the anchor does not time this shape
  int B;
  double p50_ms;
} our_row;

// Runs the anchor and prints each of its rows beside ours of the same shape and batch.
static void run_anchor(const char *script, const our_row *rows, int nrows) {
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "python3 '%s'", script);
  printf("anchor  %s\n", cmd);
  fflush(stdout);
  FILE *p = popen(cmd, "r");
  if (!p) sn_fatal("cannot run %s: %s", cmd, strerror(errno));
  char line[ANCHOR_LINE_MAX];
  while (fgets(line, sizeof line, p)) {
    cJSON *j = cJSON_Parse(line);
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(j, "size"), *B = cJSON_GetObjectItemCaseSensitive(j, "B"),
                *lat = cJSON_GetObjectItemCaseSensitive(j, "latency_ms");
    if (!cJSON_IsString(size) || !cJSON_IsNumber(B) || !cJSON_IsNumber(lat)) {
      printf("anchor  %s", line);  // not a row of figures: relayed as it is
      cJSON_Delete(j);
      continue;
    }
    printf("anchor  torch.compile(reduce-overhead)  %s  batch %d: %.3f ms a call", size->valuestring,
           (int)B->valuedouble, lat->valuedouble);
    for (int r = 0; r < nrows; r++)
      if (rows[r].size && !strcmp(rows[r].size, size->valuestring) && rows[r].B == (int)B->valuedouble)
        printf("  | sn p50 %.3f ms: %.2fx %s", rows[r].p50_ms,
               rows[r].p50_ms < lat->valuedouble ? lat->valuedouble / rows[r].p50_ms : rows[r].p50_ms / lat->valuedouble,
               rows[r].p50_ms < lat->valuedouble ? "faster" : "slower");
    printf("\n");
    cJSON_Delete(j);
  }
  const int rc = pclose(p);
  if (rc != 0) sn_warn("%s exited with status %d", cmd, rc);
}

int main(int argc, char **argv) {
  bench_args a = parse_args(argc, argv);
  const sn_ops *ops = a.device ? sn_ops_by_name(a.device) : sn_ops_cuda(NULL);
  if (!ops) ops = sn_ops_cpu();
  int max_batch = 0;
  for (int i = 0; i < a.nbatches; i++) max_batch = SN_MAX(max_batch, a.batches[i]);
  our_row rows[MAX_SUBJECTS * MAX_BATCHES];
  int nrows = 0;
  for (int s = 0; s < a.nsubjects; s++) {
    const subject *sub = &a.subjects[s];
    char dir[4096];
    if (sub->is_desc) export_fresh_tower(sub->path, ops, dir, sizeof dir);
    else snprintf(dir, sizeof dir, "%s", sub->path);
    sn_encoder_options o;
    sn_encoder_options_init(&o);
    o.device = ops->name;
    o.max_batch = max_batch;
    o.max_length = a.len;
    o.threads = a.threads;
    o.graphs = !a.no_graphs;
    sn_encoder *enc[MAX_HANDLES];
    char err[SN_ENCODER_ERR_LEN], handles[32] = "";
    for (int h = 0; h < a.handles; h++)
      if (sn_encoder_open(dir, &o, &enc[h], err, sizeof err) != SN_OK) sn_bad_input("%s: %s", sub->path, err);
    if (a.handles > 1) snprintf(handles, sizeof handles, " x%d handles", a.handles);
    sn_model_config cfg;
    sn_config_load_hf_dir(&cfg, dir);
    for (int i = 0; i < a.nbatches; i++) {
      const int B = a.batches[i];
      batch_result r = time_handles(enc, a.handles, &a, B, cfg.vocab);
      printf("encode  %s%s%s  %s  batch %d x %d tokens: p50 %.3f ms, p99 %.3f ms a call; %.3f ms a query; "
             "%.0f queries/s\n", ops->name, ops->graph_begin && !a.no_graphs ? "+graphs" : "", handles, sub->path,
             B, a.len, r.p50_ms, r.p99_ms, r.p50_ms / B, r.queries_per_s);
      fflush(stdout);
      // the anchor is one stream: compared with ours of one handle only
      if (a.handles == 1) rows[nrows++] = (our_row){sub->is_desc ? anchor_size_of(sub->path) : NULL, B, r.p50_ms};
    }
    for (int h = 0; h < a.handles; h++) sn_encoder_close(enc[h]);
    if (sub->is_desc && sn_remove_tree(dir) != 0) sn_warn("could not remove %s", dir);
  }
  if (a.anchor) run_anchor(a.anchor, rows, nrows);
  return 0;
}
