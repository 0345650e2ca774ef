// safetensors: writer → reader round trips in every dtype (the conversions themselves are
// test_half_conversions.c), sharded folders, the "model." prefix lookup, and every malformed
// header the reader must reject with a message naming the file and the tensor or field.
#define _GNU_SOURCE
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "safetensors_internal.h"
#include "test_util.h"

#define ERR_LEN 1024
#define PATH_LEN 4096

#define DIR_LEN 256  // the temp folder; file paths inside it get PATH_LEN
static char g_dir[DIR_LEN];

static void path_in_dir(char *out, const char *name) { snprintf(out, PATH_LEN, "%s/%s", g_dir, name); }


static void write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, n, f) != n) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(1);
  }
  fclose(f);
}

// A safetensors file made by hand: length prefix, header text as given, data_len zero bytes.
static void write_raw(const char *path, const char *header, size_t data_len) {
  size_t hlen = strlen(header), total = 8 + hlen + data_len;
  unsigned char *buf = calloc(1, total);
  for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  memcpy(buf + 8, header, hlen);
  write_bytes(path, buf, total);
  free(buf);
}

// sn_st_open must fail with a message that names the file and contains `what` (and `what2`).
static void expect_bad_header(const char *name, const char *header, size_t data_len, const char *what,
                              const char *what2) {
  char path[PATH_LEN], err[ERR_LEN] = "";
  path_in_dir(path, name);
  write_raw(path, header, data_len);
  sn_st_archive a;
  int rc = sn_st_open(&a, path, err, sizeof err);
  CHECK(rc == -1, "%s: sn_st_open accepted a bad file (header %s)", name, header);
  CHECK(strstr(err, path) != NULL, "%s: message does not name the file: %s", name, err);
  CHECK(strstr(err, what) != NULL, "%s: message lacks '%s': %s", name, what, err);
  CHECK(!what2 || strstr(err, what2) != NULL, "%s: message lacks '%s': %s", name, what2, err);
  CHECK(a.ntensors == 0 && a.nfiles == 0 && a.tensors == NULL, "%s: archive not left empty", name);
  if (rc == 0) sn_st_close(&a);
}

// ---- writer / reader round trip -----------------------------------------------------------------

static int read_whole(const char *path, unsigned char **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  *out = malloc(*len + 1);
  size_t got = fread(*out, 1, *len, f);
  fclose(f);
  (*out)[*len] = 0;
  return got == *len ? 0 : -1;
}

typedef struct {
  const char *name;
  sn_dtype dtype;
  int ndim;
  int64_t shape[3];
  int64_t numel;
  float *data;
} tensor_spec;

// Values every dtype represents exactly (small integers and halves), plus fp32-only detail.
static void fill_exact(float *x, int64_t n, sn_dtype dtype, int seed) {
  for (int64_t i = 0; i < n; i++) {
    float v = (float)((i * 7 + seed) % 41 - 20) * 0.5f;
    if (dtype == SN_DTYPE_F32) v += 1e-3f * (float)i;
    x[i] = v;
  }
}

static void check_tensor_readback(const sn_st_archive *a, const tensor_spec *s) {
  const sn_st_tensor *t = sn_st_find(a, s->name);
  CHECK(t != NULL, "tensor %s not found after writing", s->name);
  if (!t) return;
  CHECK(t->dtype == s->dtype && t->ndim == s->ndim && t->numel == s->numel, "tensor %s: dtype/ndim/numel differ",
        s->name);
  for (int d = 0; d < s->ndim && d < t->ndim; d++) CHECK(t->shape[d] == s->shape[d], "tensor %s: shape[%d]", s->name, d);
  float *back = malloc((size_t)(s->numel ? s->numel : 1) * sizeof(float));
  char err[ERR_LEN];
  int rc = sn_st_read_f32(a, t, back, err, sizeof err);
  CHECK(rc == 0, "read %s: %s", s->name, err);
  for (int64_t i = 0; i < s->numel && rc == 0; i++)
    if (sn_test_f32_bits(back[i]) != sn_test_f32_bits(s->data[i])) {
      CHECK(0, "tensor %s[%lld] = %a, wrote %a", s->name, (long long)i, (double)back[i], (double)s->data[i]);
      break;
    }
  free(back);
}

static void test_round_trip(void) {
  tensor_spec specs[] = {
      {"model.embed_tokens.weight", SN_DTYPE_F32, 2, {5, 3}, 15, NULL},
      {"model.layers.0.self_attn.q_proj.weight", SN_DTYPE_BF16, 2, {4, 3}, 12, NULL},
      {"model.norm.weight", SN_DTYPE_F16, 1, {7}, 7, NULL},
      {"scalar", SN_DTYPE_F32, 0, {0}, 1, NULL},
      {"empty", SN_DTYPE_BF16, 2, {0, 5}, 0, NULL},
      {"big_bf16", SN_DTYPE_BF16, 1, {1500001}, 1500001, NULL},  // crosses the writer's chunk size
      {"big_f16", SN_DTYPE_F16, 3, {3, 1000, 501}, 1503000, NULL},
      {"caf\xC3\xA9 \"quoted\"\\", SN_DTYPE_F32, 1, {2}, 2, NULL},  // UTF-8 and JSON escapes
  };
  sn_st_writer *w = sn_st_writer_new();
  sn_st_writer_metadata(w, "producer", "scalingnote test");
  for (size_t i = 0; i < SN_ARRAY_LEN(specs); i++) {
    specs[i].data = malloc((size_t)(specs[i].numel ? specs[i].numel : 1) * sizeof(float));
    fill_exact(specs[i].data, specs[i].numel, specs[i].dtype, (int)i);
    sn_st_writer_add(w, specs[i].name, specs[i].dtype, specs[i].ndim, specs[i].shape, specs[i].data);
  }
  char path[PATH_LEN], err[ERR_LEN];
  path_in_dir(path, "round_trip.safetensors");
  int rc = sn_st_writer_write(w, path, err, sizeof err);
  CHECK(rc == 0, "write: %s", err);
  sn_st_writer_free(w);

  unsigned char *bytes;
  size_t len;
  CHECK(read_whole(path, &bytes, &len) == 0, "cannot read back %s", path);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | bytes[i];
  CHECK((8 + hlen) % 8 == 0, "data region starts at %llu, not 8-aligned", (unsigned long long)(8 + hlen));
  char *header = strndup((const char *)bytes + 8, (size_t)hlen);
  CHECK(strstr(header, "\"__metadata__\":{\"format\":\"pt\",\"producer\":\"scalingnote test\"}") != NULL,
        "metadata missing: %s", header);
  const char *prev = header;  // tensors appear in insertion order
  for (size_t i = 0; i < 3; i++) {
    const char *at = strstr(header, specs[i].name);
    CHECK(at && at >= prev, "tensor %s out of insertion order in the header", specs[i].name);
    if (at) prev = at;
  }
  free(header);
  free(bytes);

  sn_st_archive a;
  rc = sn_st_open(&a, path, err, sizeof err);
  CHECK(rc == 0, "open: %s", err);
  if (rc == 0) {
    CHECK(a.ntensors == (int)SN_ARRAY_LEN(specs) && a.nfiles == 1, "ntensors %d nfiles %d", a.ntensors, a.nfiles);
    for (size_t i = 0; i < SN_ARRAY_LEN(specs); i++) check_tensor_readback(&a, &specs[i]);
    sn_st_close(&a);
  }
  for (size_t i = 0; i < SN_ARRAY_LEN(specs); i++) free(specs[i].data);
}

// Values the target dtype cannot hold are rounded exactly as sn_f32_to_* says.
static void test_write_rounds(void) {
  float x[6] = {1.00390625f, 1.01171875f, 0.1f, 65520.0f, 0x1p-25f, NAN};
  int64_t shape[1] = {6};
  sn_dtype dtypes[2] = {SN_DTYPE_BF16, SN_DTYPE_F16};
  for (int k = 0; k < 2; k++) {
    sn_st_writer *w = sn_st_writer_new();
    sn_st_writer_add(w, "x", dtypes[k], 1, shape, x);
    char path[PATH_LEN], err[ERR_LEN];
    path_in_dir(path, "rounds.safetensors");
    CHECK(sn_st_writer_write(w, path, err, sizeof err) == 0, "write: %s", err);
    sn_st_writer_free(w);
    sn_st_archive a;
    float back[6];
    if (sn_st_open(&a, path, err, sizeof err) != 0 || sn_st_read_f32(&a, &a.tensors[0], back, err, sizeof err) != 0) {
      CHECK(0, "%s", err);
      continue;
    }
    for (int i = 0; i < 6; i++) {
      float want = dtypes[k] == SN_DTYPE_BF16 ? sn_bf16_to_f32(sn_f32_to_bf16(x[i])) : sn_f16_to_f32(sn_f32_to_f16(x[i]));
      CHECK(sn_test_f32_bits(back[i]) == sn_test_f32_bits(want) || (isnan(want) && isnan(back[i])), "dtype %d x[%d]: %a vs %a",
            (int)dtypes[k], i, (double)back[i], (double)want);
    }
    sn_st_close(&a);
  }
}

// A tensor added with a source is asked for in chunks (the source records the ranges) and written
// byte for byte as the same data added from host memory, in each dtype; this one spans three chunks.
typedef struct {
  const float *data;
  int64_t next, calls;  // the next start the writer should ask for; calls so far
  int in_order;         // every call began where the previous ended
} recorded_source;
static void read_recorded(const void *ctx, int64_t start, int64_t count, float *dst) {
  recorded_source *src = (recorded_source *)ctx;
  if (start != src->next) src->in_order = 0;
  memcpy(dst, src->data + start, (size_t)count * sizeof(float));
  src->next = start + count, src->calls++;
}
static void test_write_from_source(void) {
  const int64_t n = 2100000, shape[2] = {n / 5, 5};  // past two chunks of the writer's
  CHECK(n > 2 * (int64_t)ST_IO_CHUNK_ELEMS && n <= 3 * (int64_t)ST_IO_CHUNK_ELEMS, "the tensor should span 3 chunks");
  float *x = mallocCheck((size_t)n * sizeof(float));
  fill_exact(x, n, SN_DTYPE_F32, 7);
  const sn_dtype dtypes[3] = {SN_DTYPE_F32, SN_DTYPE_BF16, SN_DTYPE_F16};
  for (int k = 0; k < 3; k++) {
    char path[2][PATH_LEN], err[ERR_LEN];
    recorded_source src = {x, 0, 0, 1};
    for (int from_source = 0; from_source < 2; from_source++) {
      sn_st_writer *w = sn_st_writer_new();
      sn_st_writer_add(w, "small", dtypes[k], 1, shape + 1, x);
      if (from_source)
        sn_st_writer_add_source(w, "big", dtypes[k], 2, shape, read_recorded, &src);
      else
        sn_st_writer_add(w, "big", dtypes[k], 2, shape, x);
      path_in_dir(path[from_source], from_source ? "source.safetensors" : "host.safetensors");
      CHECK(sn_st_writer_write(w, path[from_source], err, sizeof err) == 0, "write: %s", err);
      sn_st_writer_free(w);
    }
    CHECK(src.in_order && src.next == n && src.calls == 3, "dtype %d: the source was asked %lld times up to %lld%s",
          (int)dtypes[k], (long long)src.calls, (long long)src.next, src.in_order ? "" : ", out of order");
    size_t na = 0, nb = 0;
    char *a = sn_read_file(path[0], &na), *b = sn_read_file(path[1], &nb);
    CHECK(a && b && na == nb && memcmp(a, b, na) == 0, "dtype %d: the file from a source differs from the host one",
          (int)dtypes[k]);
    free(a), free(b);
  }
  free(x);
}

// ---- sharded folders and lookup ----------------------------------------------------------------

static void write_shard(const char *name, const char *const *tensors, int n, float *values) {
  sn_st_writer *w = sn_st_writer_new();
  int64_t shape[1] = {2};
  for (int i = 0; i < n; i++) sn_st_writer_add(w, tensors[i], SN_DTYPE_F32, 1, shape, values + 2 * i);
  char path[PATH_LEN], err[ERR_LEN];
  path_in_dir(path, name);
  CHECK(sn_st_writer_write(w, path, err, sizeof err) == 0, "write shard: %s", err);
  sn_st_writer_free(w);
}

// BERT checkpoints saved from BertForMaskedLM carry "bert."; BertModel names have none.
static void test_find_bert_prefix(void) {
  char path[PATH_LEN], err[ERR_LEN];
  path_in_dir(path, "bert_mlm.safetensors");
  float x[2] = {1, 2};
  int64_t shape[1] = {2};
  sn_st_writer *w = sn_st_writer_new();
  sn_st_writer_add(w, "bert.embeddings.word_embeddings.weight", SN_DTYPE_F32, 1, shape, x);
  sn_st_writer_add(w, "cls.predictions.bias", SN_DTYPE_F32, 1, shape, x);
  CHECK(sn_st_writer_write(w, path, err, sizeof err) == 0, "%s", err);
  sn_st_writer_free(w);
  sn_st_archive a;
  if (sn_st_open(&a, path, err, sizeof err) != 0) {
    CHECK(0, "%s", err);
    return;
  }
  const sn_st_tensor *t = sn_st_find(&a, "embeddings.word_embeddings.weight");
  CHECK(t && strcmp(t->name, "bert.embeddings.word_embeddings.weight") == 0, "bert. prefix not tried");
  CHECK(sn_st_find(&a, "bert.cls.predictions.bias") != NULL, "bert. prefix not stripped");
  CHECK(sn_st_find(&a, "embeddings.position_embeddings.weight") == NULL, "absent BERT tensor found");
  sn_st_close(&a);
}

static void test_sharded(void) {
  char dir[PATH_LEN], path[PATH_LEN], err[ERR_LEN];
  path_in_dir(dir, "sharded");
  mkdir(dir, 0755);
  float values[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const char *shard1[] = {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"};
  const char *shard2[] = {"model.norm.weight", "lm_head.weight"};
  write_shard("sharded/model-00001-of-00002.safetensors", shard1, 2, values);
  write_shard("sharded/model-00002-of-00002.safetensors", shard2, 2, values + 4);
  const char *index =
      "{\"metadata\": {\"total_size\": 32}, \"weight_map\": {\n"
      "  \"lm_head.weight\": \"model-00002-of-00002.safetensors\",\n"
      "  \"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\",\n"
      "  \"model.layers.0.mlp.up_proj.weight\": \"model-00001-of-00002.safetensors\",\n"
      "  \"model.norm.weight\": \"model-00002-of-00002.safetensors\"}}";
  path_in_dir(path, "sharded/model.safetensors.index.json");
  write_bytes(path, index, strlen(index));

  sn_st_archive a;
  int rc = sn_st_open(&a, dir, err, sizeof err);
  CHECK(rc == 0, "open sharded: %s", err);
  if (rc == 0) {
    CHECK(a.nfiles == 2 && a.ntensors == 4, "nfiles %d (each shard once), ntensors %d", a.nfiles, a.ntensors);
    const sn_st_tensor *t = sn_st_find(&a, "norm.weight");
    CHECK(t && strstr(a.files[t->file_index], "00002"), "norm.weight in the wrong shard");
    float back[2] = {0};
    CHECK(t && sn_st_read_f32(&a, t, back, err, sizeof err) == 0 && back[0] == 5 && back[1] == 6,
          "norm.weight values %g %g", back[0], back[1]);
    // the "model." prefix logic
    CHECK(sn_st_find(&a, "embed_tokens.weight") == sn_st_find(&a, "model.embed_tokens.weight"), "prefix add");
    CHECK(sn_st_find(&a, "model.lm_head.weight") == sn_st_find(&a, "lm_head.weight"), "prefix strip");
    CHECK(sn_st_find(&a, "lm_head.weight") != NULL, "exact name");
    CHECK(sn_st_find(&a, "layers.0.mlp.gate_proj.weight") == NULL, "absent tensor found");
    CHECK(sn_st_find(&a, "model.layers.0.mlp.gate_proj.weight") == NULL, "absent tensor found");
    sn_st_close(&a);
  }
  // Opening the index file itself works too.
  rc = sn_st_open(&a, path, err, sizeof err);
  CHECK(rc == 0 && a.ntensors == 4, "open index path: %s", err);
  if (rc == 0) sn_st_close(&a);

  // An index that names a tensor its shard lacks, and one naming a missing shard.
  const char *bad_index = "{\"weight_map\": {\"model.ghost\": \"model-00001-of-00002.safetensors\"}}";
  write_bytes(path, bad_index, strlen(bad_index));
  CHECK(sn_st_open(&a, dir, err, sizeof err) == -1 && strstr(err, "model.ghost") && strstr(err, "index.json"),
        "index naming an absent tensor: %s", err);
  const char *missing_shard = "{\"weight_map\": {\"model.norm.weight\": \"model-00003-of-00003.safetensors\"}}";
  write_bytes(path, missing_shard, strlen(missing_shard));
  CHECK(sn_st_open(&a, dir, err, sizeof err) == -1 && strstr(err, "model-00003-of-00003.safetensors"),
        "missing shard: %s", err);
  const char *no_map = "{\"metadata\": {}}";
  write_bytes(path, no_map, strlen(no_map));
  CHECK(sn_st_open(&a, dir, err, sizeof err) == -1 && strstr(err, "weight_map"), "index without weight_map: %s", err);
  // the same tensor in two shards
  const char *dup_index =
      "{\"weight_map\": {\"model.norm.weight\": \"model-00002-of-00002.safetensors\","
      " \"x\": \"dup.safetensors\"}}";
  const char *dup[] = {"model.norm.weight"};
  write_shard("sharded/dup.safetensors", dup, 1, values);
  write_bytes(path, dup_index, strlen(dup_index));
  CHECK(sn_st_open(&a, dir, err, sizeof err) == -1 && strstr(err, "model.norm.weight") && strstr(err, "twice"),
        "tensor in two shards: %s", err);
}

// ---- malformed files ----------------------------------------------------------------------------

static void test_malformed(void) {
  char path[PATH_LEN], err[ERR_LEN];
  sn_st_archive a;
  path_in_dir(path, "tiny.safetensors");
  write_bytes(path, "abc", 3);
  CHECK(sn_st_open(&a, path, err, sizeof err) == -1 && strstr(err, path) && strstr(err, "too small"), "tiny: %s", err);

  unsigned char past_end[16] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
  path_in_dir(path, "past_end.safetensors");
  write_bytes(path, past_end, sizeof past_end);
  CHECK(sn_st_open(&a, path, err, sizeof err) == -1 && strstr(err, path) && strstr(err, "past the end"),
        "header past end: %s", err);
  unsigned char absurd[16] = {0, 0, 0, 0, 0, 1, 0, 0, '{', '}'};
  path_in_dir(path, "absurd.safetensors");
  write_bytes(path, absurd, sizeof absurd);
  CHECK(sn_st_open(&a, path, err, sizeof err) == -1 && strstr(err, path) && strstr(err, "absurd"),
        "absurd header length: %s", err);
  path_in_dir(path, "does_not_exist.safetensors");
  CHECK(sn_st_open(&a, path, err, sizeof err) == -1 && strstr(err, path), "missing file: %s", err);
  CHECK(sn_st_open(&a, g_dir, err, sizeof err) == -1 && strstr(err, "model.safetensors"), "empty folder: %s", err);

  const char *ok_w = "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
  char header[512];
  expect_bad_header("not_json.safetensors", "{\"w\": {\"dtype\": ", 0, "not valid JSON", NULL);
  expect_bad_header("array.safetensors", "[1, 2, 3]", 0, "not a JSON object", NULL);
  expect_bad_header("trailing.safetensors", "{} x", 0, "after the JSON object", NULL);
  expect_bad_header("entry_not_object.safetensors", "{\"w\": 5}", 0, "'w'", "object");
  expect_bad_header("no_dtype.safetensors", "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'w'", "dtype");
  expect_bad_header("no_shape.safetensors", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "'w'", "shape");
  expect_bad_header("no_offsets.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "'w'", "data_offsets");
  expect_bad_header("dtype_type.safetensors", "{\"w\":{\"dtype\":3,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'w'",
                    "dtype");
  snprintf(header, sizeof header, "{%s,\"ids\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[8,10]},"
                                  "\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[10,18]}}", ok_w);
  expect_bad_header("int8.safetensors", header, 18, "'ids'", "I8, F64");
  expect_bad_header("unknown_dtype.safetensors", "{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                    8, "'w'", "F32, BF16, F16");
  expect_bad_header("neg_dim.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                    "'w'", "shape[0]");
  expect_bad_header("frac_dim.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,8]}}",
                    8, "'w'", "shape[1]");
  expect_bad_header("str_dim.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
                    "'w'", "shape[0]");
  expect_bad_header("shape_type.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8,
                    "'w'", "shape");
  expect_bad_header("nine_dims.safetensors",
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, "'w'",
                    "9 dimensions");
  expect_bad_header("offsets_len.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", 8,
                    "'w'", "data_offsets");
  expect_bad_header("offsets_neg.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}",
                    8, "'w'", "data_offsets");
  expect_bad_header("offsets_str.safetensors",
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[\"0\",\"8\"]}}", 8, "'w'", "data_offsets");
  expect_bad_header("out_of_range.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                    4, "'w'", "past the end of the data region");
  expect_bad_header("end_before_begin.safetensors",
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, "'w'", "< begin");
  expect_bad_header("size_mismatch.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",
                    8, "'w'", "span 4 bytes");
  expect_bad_header("huge_shape.safetensors",
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, "'w'",
                    "overflows");
  expect_bad_header("big_shape.safetensors",
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[65536,65536],\"data_offsets\":[0,8]}}", 8, "'w'",
                    "elements");
  snprintf(header, sizeof header, "{%s,\"v\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[4,12]}}", ok_w);
  expect_bad_header("overlap.safetensors", header, 12, "'w'", "'v' overlap");
  expect_bad_header("bad_utf8.safetensors",
                    "{\"w\xFF\xFE\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "w\\xFF\\xFE",
                    "UTF-8");
  expect_bad_header("overlong_utf8.safetensors",
                    "{\"\xC0\xAF\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "\\xC0\\xAF", "UTF-8");
  snprintf(header, sizeof header, "{%s,%s}", ok_w, ok_w);
  expect_bad_header("duplicate.safetensors", header, 8, "'w'", "twice");
  snprintf(header, sizeof header, "{\"__metadata__\":{\"format\":1},%s}", ok_w);
  expect_bad_header("meta_value.safetensors", header, 8, "__metadata__", "'format'");
  snprintf(header, sizeof header, "{\"__metadata__\":[\"pt\"],%s}", ok_w);
  expect_bad_header("meta_array.safetensors", header, 8, "__metadata__", "string");

  // Accepted oddities: a skipped integer position_ids buffer, empty tensors sharing an offset,
  // trailing padding spaces, gaps between tensors.
  snprintf(header, sizeof header,
           "{\"embeddings.position_ids\":{\"dtype\":\"I64\",\"shape\":[1,2],\"data_offsets\":[8,24]},%s,"
           "\"e1\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[8,8]},"
           "\"e2\":{\"dtype\":\"F16\",\"shape\":[3,0],\"data_offsets\":[8,8]}}     ", ok_w);
  path_in_dir(path, "accepted.safetensors");
  write_raw(path, header, 32);
  int rc = sn_st_open(&a, path, err, sizeof err);
  CHECK(rc == 0, "accepted.safetensors rejected: %s", err);
  if (rc == 0) {
    CHECK(a.ntensors == 3 && !sn_st_find(&a, "embeddings.position_ids") && sn_st_find(&a, "e2"),
          "position_ids should be skipped, others kept (ntensors %d)", a.ntensors);
    sn_st_close(&a);
  }
}

// A file cut short after it was opened: the read fails with a message, it does not crash.
static void test_truncated_after_open(void) {
  char path[PATH_LEN], err[ERR_LEN];
  path_in_dir(path, "shrinks.safetensors");
  float x[64] = {0};
  int64_t shape[1] = {64};
  sn_st_writer *w = sn_st_writer_new();
  sn_st_writer_add(w, "x", SN_DTYPE_F32, 1, shape, x);
  CHECK(sn_st_writer_write(w, path, err, sizeof err) == 0, "%s", err);
  sn_st_writer_free(w);
  sn_st_archive a;
  if (sn_st_open(&a, path, err, sizeof err) != 0) {
    CHECK(0, "%s", err);
    return;
  }
  CHECK(truncate(path, 100) == 0, "truncate");
  float back[64];
  CHECK(sn_st_read_f32(&a, &a.tensors[0], back, err, sizeof err) == -1 && strstr(err, path) && strstr(err, "'x'"),
        "read of truncated file: %s", err);
  sn_st_close(&a);
}

// Tensors past 4 GB in a file (sparse, so it costs no disk): 64-bit offsets all the way.
static void test_offsets_past_4gb(void) {
  const uint64_t far = (9ull << 29) + 4;  // 4.5 GB + 4: past both 2^31 and 2^32
  char path[PATH_LEN], header[256], err[ERR_LEN];
  path_in_dir(path, "sparse.safetensors");
  snprintf(header, sizeof header,
           "{\"near\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
           "\"far\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[%llu,%llu]}}",
           (unsigned long long)far, (unsigned long long)far + 8);
  write_raw(path, header, 4);
  FILE *f = fopen(path, "r+b");
  float far_values[2] = {3.5f, -1.25f};
  uint64_t at = 8 + strlen(header) + far;
  int ok = f && fseeko(f, (off_t)at, SEEK_SET) == 0 && fwrite(far_values, sizeof far_values, 1, f) == 1;
  if (f) ok = (fclose(f) == 0) && ok;
  if (!ok) {
    fprintf(stderr, "note: cannot make a sparse 4.5 GB file here; skipping the 64-bit offset check\n");
    unlink(path);
    return;
  }
  sn_st_archive a;
  int rc = sn_st_open(&a, path, err, sizeof err);
  CHECK(rc == 0, "sparse file: %s", err);
  if (rc == 0) {
    const sn_st_tensor *t = sn_st_find(&a, "far");
    float back[2] = {0};
    CHECK(t && t->offset == at, "far tensor offset");
    CHECK(t && sn_st_read_f32(&a, t, back, err, sizeof err) == 0 && back[0] == 3.5f && back[1] == -1.25f,
          "far tensor values %g %g (%s)", back[0], back[1], err);
    sn_st_close(&a);
  }
  unlink(path);
}

// The writer refuses bad input without touching an existing file.
static void test_writer_failures(void) {
  char path[PATH_LEN], err[ERR_LEN];
  path_in_dir(path, "keep.safetensors");
  const char *old = "old contents";
  write_bytes(path, old, strlen(old));
  float x[2] = {1, 2};
  int64_t shape[1] = {2}, bad_shape[1] = {-1};
  struct { const char *n1, *n2; const int64_t *shape2; const char *want; } cases[] = {
      {"a", "a", shape, "twice"},
      {"a", "b", bad_shape, "invalid shape"},
      {"a", "\xFF", shape, "UTF-8"},
      {"a", "__metadata__", shape, "__metadata__"},
  };
  for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
    sn_st_writer *w = sn_st_writer_new();
    sn_st_writer_add(w, cases[i].n1, SN_DTYPE_F32, 1, shape, x);
    sn_st_writer_add(w, cases[i].n2, SN_DTYPE_F32, 1, cases[i].shape2, x);
    CHECK(sn_st_writer_write(w, path, err, sizeof err) == -1 && strstr(err, cases[i].want) && strstr(err, path),
          "writer case %zu: %s", i, err);
    sn_st_writer_free(w);
  }
  unsigned char *bytes;
  size_t len;
  CHECK(read_whole(path, &bytes, &len) == 0 && len == strlen(old) && memcmp(bytes, old, len) == 0,
        "existing file changed by a failed write");
  free(bytes);
  char nodir[PATH_LEN];
  path_in_dir(nodir, "no/such/folder/x.safetensors");
  sn_st_writer *w = sn_st_writer_new();
  sn_st_writer_add(w, "x", SN_DTYPE_F32, 1, shape, x);
  CHECK(sn_st_writer_write(w, nodir, err, sizeof err) == -1 && strstr(err, nodir), "write to missing folder: %s", err);
  sn_st_writer_free(w);
  DIR *d = opendir(g_dir);  // no temp files left behind
  for (struct dirent *e; d && (e = readdir(d));) CHECK(!strstr(e->d_name, ".tmp."), "temp file left: %s", e->d_name);
  if (d) closedir(d);
}

// sn_inspect exits 2 on a bad file and names it (when the CLI has been built).
static void test_cli_bad_input(void) {
  char exe[PATH_LEN], path[PATH_LEN], cmd[3 * PATH_LEN];
  snprintf(exe, sizeof exe, "%s/sn_inspect", sn_test_build_dir());
  if (access(exe, X_OK) != 0) {
    fprintf(stderr, "note: %s not built; CLI checks are left to test_safetensors_python\n", exe);
    return;
  }
  path_in_dir(path, "size_mismatch.safetensors");
  snprintf(cmd, sizeof cmd, "'%s' '%s' >/dev/null 2>&1", exe, path);
  int status = system(cmd);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2, "sn_inspect on a bad file: status %d", status);
  path_in_dir(path, "round_trip.safetensors");
  snprintf(cmd, sizeof cmd, "'%s' '%s' >/dev/null 2>&1", exe, path);
  status = system(cmd);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sn_inspect on a good file: status %d", status);
}

static void remove_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d));) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char p[PATH_LEN];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) remove_dir(p);
    else unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/sn_test_safetensors_XXXXXX");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_round_trip();
  test_write_rounds();
  test_write_from_source();
  test_sharded();
  test_find_bert_prefix();
  test_malformed();
  test_truncated_after_open();
  test_offsets_past_4gb();
  test_writer_failures();
  test_cli_bad_input();
  remove_dir(g_dir);
  return sn_test_finish("test_safetensors");
}
