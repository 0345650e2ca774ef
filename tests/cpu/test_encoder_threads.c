// The encoder library from several threads at once (encoder.h, "Threads"). THREADS threads open a
// handle each on one exported decoder tower, all at once, then encode the same batches of several
// shapes concurrently, round after round, each thread starting at another shape: every call must
// return exactly the embeddings one handle gives alone. Then all threads share one handle (its
// mutex serialises them) and must get them too. On the CPU (label cpu) and on CUDA
// (`test_encoder_threads cuda`, gpu/test_encoder_threads_cuda), where every handle has its own
// stream, scratch and GEMM plans (ops.h context_new), so concurrent handles also record and replay
// their graphs concurrently: a buffer shared by two streams would show as a differing embedding.
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "model.h"
#include "scalingnote/encoder.h"
#include "test_model_util.h"

#define THREADS 4
#define ROUNDS 4           // passes over the batches a thread makes (a shape is recorded on its second)
#define MAX_BATCH 8
#define MAX_LEN 24
#define NBATCHES 4
#define TOWER_SEED 31
#define IDS_SEED 32
#define HIDDEN 128         // head dim 64, the CUDA attention's
#define HEADS 2
#define KV_HEADS 1
#define HEAD_DIM 64
#define INTERMEDIATE 256
#define MAX_POSITIONS 64
#define UNIT_TOL 1e-4

static const int BATCH_SIZES[NBATCHES] = {1, 3, MAX_BATCH, 2};

typedef struct {
  int n;
  int32_t ids[MAX_BATCH * MAX_LEN];
  int64_t offsets[MAX_BATCH + 1];
  float *want;  // (n, dim): one handle alone
} batch;

typedef struct {
  const char *dir, *device;
  sn_encoder *shared;  // NULL: the thread opens its own handle
  batch *batches;
  int dim, first, mismatches, failed_calls;
  char error[SN_ENCODER_ERR_LEN];
} worker;

static sn_encoder_options options(const char *device) {
  sn_encoder_options o;
  sn_encoder_options_init(&o);
  o.device = device, o.max_batch = MAX_BATCH, o.max_length = MAX_LEN;
  o.threads = 1;  // THREADS handles on a machine of few cores: no OpenMP team each
  return o;
}

static sn_encoder *open_handle(const char *dir, const char *device, char *err) {
  sn_encoder *enc = NULL;
  const sn_encoder_options o = options(device);
  if (sn_encoder_open(dir, &o, &enc, err, SN_ENCODER_ERR_LEN) != SN_OK) return NULL;
  return enc;
}

static void *run_worker(void *arg) {
  worker *w = arg;
  sn_encoder *enc = w->shared ? w->shared : open_handle(w->dir, w->device, w->error);
  if (!enc) {
    w->failed_calls++;
    return NULL;
  }
  float *got = mallocCheck((size_t)MAX_BATCH * w->dim * sizeof(float));
  for (int r = 0; r < ROUNDS; r++)
    for (int k = 0; k < NBATCHES; k++) {
      const batch *b = &w->batches[(w->first + k) % NBATCHES];
      if (sn_encode_ids(enc, b->ids, b->offsets, b->n, got) != SN_OK) {
        snprintf(w->error, sizeof w->error, "%s", sn_encoder_last_error(enc));
        w->failed_calls++;
        continue;
      }
      if (memcmp(got, b->want, (size_t)b->n * w->dim * sizeof(float)) != 0) w->mismatches++;
    }
  free(got);
  if (!w->shared) sn_encoder_close(enc);
  return NULL;
}

// THREADS workers at once, each starting at another batch; shared NULL: a handle each.
static void run_workers(const char *label, const char *dir, const char *device, sn_encoder *shared, batch *batches,
                        int dim) {
  pthread_t tid[THREADS];
  worker w[THREADS];
  for (int t = 0; t < THREADS; t++) {
    w[t] = (worker){dir, device, shared, batches, dim, t % NBATCHES, 0, 0, ""};
    CHECK(pthread_create(&tid[t], NULL, run_worker, &w[t]) == 0, "pthread_create");
  }
  for (int t = 0; t < THREADS; t++) {
    pthread_join(tid[t], NULL);
    CHECK(w[t].failed_calls == 0, "%s %s, thread %d: %d failed calls: %s", device, label, t, w[t].failed_calls,
          w[t].error);
    CHECK(w[t].mismatches == 0, "%s %s, thread %d: %d of %d calls differ from one handle alone", device, label, t,
          w[t].mismatches, ROUNDS * NBATCHES);
  }
}

static void make_batches(batch *batches) {
  sn_test_rng rng;
  sn_test_rng_seed(&rng, IDS_SEED);
  for (int k = 0; k < NBATCHES; k++) {
    batch *b = &batches[k];
    b->n = BATCH_SIZES[k];
    b->offsets[0] = 0;
    for (int i = 0; i < b->n; i++) {
      const int len = 1 + (int)(sn_test_uniform(&rng) * MAX_LEN) % MAX_LEN;
      for (int j = 0; j < len; j++) b->ids[b->offsets[i] + j] = 1 + (int)(sn_test_uniform(&rng) * 48);
      b->offsets[i + 1] = b->offsets[i] + len;
    }
  }
}

// The embeddings of one handle alone, each batch encoded ROUNDS times (direct, recorded, replayed):
// the same every time.
static int reference(const char *dir, const char *device, batch *batches) {
  char err[SN_ENCODER_ERR_LEN];
  sn_encoder *enc = open_handle(dir, device, err);
  CHECK(enc, "open %s on %s: %s", dir, device, err);
  if (!enc) return 0;
  const int dim = sn_encoder_dim(enc);
  float *got = mallocCheck((size_t)MAX_BATCH * dim * sizeof(float));
  for (int k = 0; k < NBATCHES; k++) {
    batch *b = &batches[k];
    b->want = mallocCheck((size_t)b->n * dim * sizeof(float));
    for (int r = 0; r < ROUNDS; r++) {
      float *dst = r == 0 ? b->want : got;
      CHECK(sn_encode_ids(enc, b->ids, b->offsets, b->n, dst) == SN_OK, "%s", sn_encoder_last_error(enc));
      if (r > 0) CHECK(memcmp(dst, b->want, (size_t)b->n * dim * sizeof(float)) == 0, "batch %d call %d", k, r);
    }
    for (int i = 0; i < b->n; i++) {  // real embeddings: unit vectors (the export normalises)
      double sq = 0;
      for (int c = 0; c < dim; c++) sq += (double)b->want[(size_t)i * dim + c] * b->want[(size_t)i * dim + c];
      CHECK(fabs(sq - 1) < UNIT_TOL, "batch %d row %d: squared norm %g, expected 1", k, i, sq);
    }
  }
  free(got);
  sn_encoder_close(enc);
  return dim;
}

int main(int argc, char **argv) {
  const sn_ops *backend = sn_test_backend_from_args(argc, argv, "test_encoder_threads");
  const char *device = backend->name;
  char dir[] = "/tmp/sn_encoder_threads_XXXXXX";
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  sn_model_config cfg =
      sn_test_tiny_config(SN_ARCH_QWEN2, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, MAX_POSITIONS);
  cfg.attn_bias = 1;  // Qwen2's q/k/v biases
  sn_model *m = sn_model_new(&cfg, sn_ops_cpu(), TOWER_SEED);
  char err[1024];
  CHECK(sn_model_export(m, dir, SN_DTYPE_BF16, err, sizeof err) == 0, "%s", err);  // what both backends load
  sn_model_free(m);

  batch batches[NBATCHES];
  make_batches(batches);
  const int dim = reference(dir, device, batches);
  if (dim > 0) {
    run_workers("a handle a thread", dir, device, NULL, batches, dim);
    sn_encoder *shared = open_handle(dir, device, err);
    CHECK(shared, "open: %s", err);
    if (shared) run_workers("one shared handle", dir, device, shared, batches, dim);
    sn_encoder_close(shared);
    for (int k = 0; k < NBATCHES; k++) free(batches[k].want);
  }
  char cmd[sizeof dir + 16];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0, "%s", cmd);
  return sn_test_finish("test_encoder_threads");
}
