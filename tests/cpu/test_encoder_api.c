// The encoder library's C API (include/scalingnote/encoder.h) on a tiny BERT tower saved without a
// tokenizer: ids embed the same alone or in a batch, unit norm unless normalize = 0, the pooling
// option is honoured; every misuse and broken folder is a status and a message, never an exit, and
// the handle keeps working after a failed call (CI reruns this under ASan/UBSan: no leaks on the
// error paths).
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "model.h"
#include "scalingnote/encoder.h"
#include "test_util.h"

#define TINY_BERT "{\"arch\": \"bert\", \"layers\": 2, \"hidden\": 16, \"heads\": 2, \"intermediate\": 32, " \
                  "\"vocab\": 64, \"max_positions\": 12}"
#define NSEQ 3

static const int32_t IDS[] = {2, 5, 7, 9, 1, 3, 4, 60, 61, 62, 63, 0};
static const int64_t OFFSETS[NSEQ + 1] = {0, 4, 5, 12};  // 4, 1 and 7 tokens

static void save_tower(const char *dir) {
  sn_model_config cfg;
  char err[1024];
  CHECK(sn_config_parse_desc(&cfg, TINY_BERT, strlen(TINY_BERT), "desc", err, sizeof err) == 0, "%s", err);
  sn_model *m = sn_model_new(&cfg, sn_ops_cpu(), 7);
  CHECK(sn_model_export(m, dir, SN_DTYPE_F32, err, sizeof err) == 0, "%s", err);
  sn_model_free(m);
}

static sn_encoder *open_or_fail(const char *dir, const sn_encoder_options *o) {
  sn_encoder *enc = NULL;
  char err[SN_ENCODER_ERR_LEN];
  sn_status st = sn_encoder_open(dir, o, &enc, err, sizeof err);
  CHECK(st == SN_OK && enc, "open %s: %s: %s", dir, sn_status_name(st), err);
  return enc;
}

static void test_embeddings(const char *dir) {
  sn_encoder *enc = open_or_fail(dir, NULL);
  if (!enc) return;
  const int D = sn_encoder_dim(enc);
  CHECK(D == 16, "dim %d, expected the hidden size 16", D);
  float all[NSEQ * 16], one[16];
  CHECK(sn_encode_ids(enc, IDS, OFFSETS, NSEQ, all) == SN_OK, "%s", sn_encoder_last_error(enc));
  CHECK(strcmp(sn_encoder_last_error(enc), "") == 0, "error after a success: %s", sn_encoder_last_error(enc));
  for (int i = 0; i < NSEQ; i++) {
    const int64_t off[2] = {0, OFFSETS[i + 1] - OFFSETS[i]};
    CHECK(sn_encode_ids(enc, IDS + OFFSETS[i], off, 1, one) == SN_OK, "%s", sn_encoder_last_error(enc));
    CHECK(memcmp(one, all + i * D, sizeof one) == 0, "sequence %d alone differs from the batch", i);
    double norm = 0;
    for (int k = 0; k < D; k++) norm += (double)one[k] * one[k];
    CHECK(fabs(norm - 1) < 1e-5, "sequence %d: squared norm %g, expected 1", i, norm);
  }
  // Texts need a tokenizer: a status naming the file, and ids still work afterwards.
  const char *texts[] = {"hello"};
  CHECK(sn_encode(enc, texts, 1, one) == SN_ERR_MODEL, "sn_encode without a tokenizer");
  CHECK(strstr(sn_encoder_last_error(enc), "tokenizer.json"), "message: %s", sn_encoder_last_error(enc));
  // Misuse: statuses, the handle survives.
  const int32_t bad_ids[] = {1, 64};
  const int64_t bad_off[] = {0, 2}, shifted[] = {1, 2}, too_long[] = {0, 13};
  CHECK(sn_encode_ids(enc, bad_ids, bad_off, 1, one) == SN_ERR_INPUT, "id 64 of a vocabulary of 64");
  CHECK(strstr(sn_encoder_last_error(enc), "vocabulary"), "message: %s", sn_encoder_last_error(enc));
  CHECK(sn_encode_ids(enc, IDS, shifted, 1, one) == SN_ERR_ARGUMENT, "offsets[0] = 1");
  CHECK(sn_encode_ids(enc, IDS, too_long, 1, one) == SN_ERR_INPUT, "13 tokens, 12 positions");
  CHECK(sn_encode_ids(enc, IDS, OFFSETS, -1, one) == SN_ERR_ARGUMENT, "n = -1");
  CHECK(sn_encode_ids(enc, NULL, OFFSETS, 1, one) == SN_ERR_ARGUMENT, "ids NULL");
  CHECK(sn_encode(enc, NULL, 1, one) == SN_ERR_ARGUMENT, "texts NULL");
  CHECK(sn_encode_ids(enc, IDS, OFFSETS, 0, NULL) == SN_OK, "n = 0 is a no-op");
  CHECK(sn_encode_ids(enc, IDS, OFFSETS, 1, one) == SN_OK && memcmp(one, all, sizeof one) == 0,
        "the handle after failed calls");
  sn_encoder_close(enc);

  // Options: no normalisation keeps the raw CLS vector; mean pooling differs from CLS.
  sn_encoder_options o;
  sn_encoder_options_init(&o);
  o.normalize = 0;
  o.max_batch = 1;
  enc = open_or_fail(dir, &o);
  if (enc) {
    CHECK(sn_encode_ids(enc, IDS, OFFSETS, 1, one) == SN_OK, "%s", sn_encoder_last_error(enc));
    double norm = 0, dot = 0;
    for (int k = 0; k < D; k++) norm += (double)one[k] * one[k];
    for (int k = 0; k < D; k++) dot += (double)one[k] * all[k];
    CHECK(fabs(norm - 1) > 1e-3 && fabs(dot / sqrt(norm) - 1) < 1e-5, "raw vector: norm^2 %g, cos %g", norm,
          dot / sqrt(norm));
    sn_encoder_close(enc);
  }
  sn_encoder_options_init(&o);
  o.pooling = "mean";
  enc = open_or_fail(dir, &o);
  if (enc) {
    CHECK(sn_encode_ids(enc, IDS, OFFSETS, 1, one) == SN_OK, "%s", sn_encoder_last_error(enc));
    CHECK(memcmp(one, all, sizeof one) != 0, "mean pooling gave CLS's vector");
    sn_encoder_close(enc);
  }
}

static void expect_open_error(const char *dir, const sn_encoder_options *o, sn_status want, const char *needle) {
  sn_encoder *enc = (sn_encoder *)&enc;  // must be reset to NULL
  char err[SN_ENCODER_ERR_LEN];
  sn_status st = sn_encoder_open(dir, o, &enc, err, sizeof err);
  CHECK(st == want && enc == NULL && strstr(err, needle), "open %s: got %s '%s', expected %s '%s'", dir,
        sn_status_name(st), err, sn_status_name(want), needle);
  if (st == SN_OK) sn_encoder_close(enc);
}

static void test_open_errors(const char *dir, const char *tmp) {
  sn_encoder_options o;
  sn_encoder_options_init(&o);
  o.max_length = 13;
  expect_open_error(dir, &o, SN_ERR_ARGUMENT, "12 positions");
  sn_encoder_options_init(&o);
  o.device = "tpu";
  expect_open_error(dir, &o, SN_ERR_ARGUMENT, "tpu");
  if (!sn_ops_cuda(NULL)) {  // a build without CUDA, or no GPU: a status, not an exit
    sn_encoder_options_init(&o);
    o.device = "cuda";
    expect_open_error(dir, &o, SN_ERR_DEVICE, "device 'cuda' is not available");
  }
  sn_encoder_options_init(&o);
  o.pooling = "max";
  expect_open_error(dir, &o, SN_ERR_ARGUMENT, "pooling");
  sn_encoder_options_init(&o);
  o.threads = -2;
  expect_open_error(dir, &o, SN_ERR_ARGUMENT, "threads");
  expect_open_error(NULL, NULL, SN_ERR_ARGUMENT, "dir");
  char path[1200], broken[1100];
  snprintf(path, sizeof path, "%s/missing", tmp);
  expect_open_error(path, NULL, SN_ERR_MODEL, "missing");
  // A copy with a malformed side file, then weights cut short, then a config.json that is not JSON.
  snprintf(broken, sizeof broken, "%s/broken", tmp);
  save_tower(broken);
  snprintf(path, sizeof path, "%s/modules.json", broken);
  CHECK(sn_write_file_atomic(path, "{}", 2) == 0, "write %s", path);
  expect_open_error(broken, NULL, SN_ERR_MODEL, "modules.json: expected an array of modules");
  CHECK(unlink(path) == 0, "unlink %s", path);
  snprintf(path, sizeof path, "%s/model.safetensors", broken);
  CHECK(truncate(path, 100) == 0, "truncate %s", path);
  expect_open_error(broken, NULL, SN_ERR_MODEL, "model.safetensors");
  snprintf(path, sizeof path, "%s/config.json", broken);
  CHECK(sn_write_file_atomic(path, "{\"arch\": ", 9) == 0, "write %s", path);
  expect_open_error(broken, NULL, SN_ERR_MODEL, "config.json");
  CHECK(sn_encoder_open(broken, NULL, NULL, NULL, 0) == SN_ERR_ARGUMENT, "out NULL");
  sn_encoder_close(NULL);
}

int main(void) {
  char tmp[] = "/tmp/sn_test_encoder_XXXXXX", dir[64];
  CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
  snprintf(dir, sizeof dir, "%s/tower", tmp);
  save_tower(dir);
  test_embeddings(dir);
  test_open_errors(dir, tmp);
  CHECK(strcmp(sn_encoder_version(), sn_version()) == 0, "version %s", sn_encoder_version());
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  CHECK(system(cmd) == 0, "%s", cmd);
  return sn_test_finish("test_encoder_api");
}
