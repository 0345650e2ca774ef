// Checkpoint folders and state files: round trip, streamed sections (the same bytes as in-memory
// ones, over several chunks and a partial one), the piecewise hash, corruption detected by checksums, torn
// checkpoints skipped, only the newest K kept, and a failed write leaving the previous one intact;
// manifests: every file's damage (truncated, deleted, rewritten, unparsable JSON, a damaged
// manifest) makes --resume auto fall back, and checkpoints without a manifest still load.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "common.h"
#include "test_util.h"

static void write_state(const char *path, uint64_t step, const float *data, size_t n) {
  sn_state_writer *w = sn_state_writer_new();
  sn_state_add_u64(w, "step", step);
  sn_state_add(w, "data", data, n * sizeof(float));
  CHECK(sn_state_write(w, path) == 0, "write %s", path);
  sn_state_writer_free(w);
}

// A streamed section's source: bytes [offset, offset + bytes) of ctx's buffer, and a count of calls.
typedef struct {
  const unsigned char *data;
  int calls;
} counting_source;
static void read_counting(const void *ctx, size_t offset, size_t bytes, void *dst) {
  counting_source *src = (counting_source *)ctx;
  memcpy(dst, src->data + offset, bytes);
  src->calls++;
}

// sn_hasher over pieces split at every kind of boundary equals sn_hash64 over the whole.
static void check_piecewise_hash(void) {
  unsigned char data[300];
  for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 37 + 11);
  const size_t lens[] = {0, 1, 7, 31, 32, 33, 64, 100, 300};
  const size_t cuts[] = {1, 3, 8, 31, 32, 33, 65};
  for (size_t li = 0; li < sizeof lens / sizeof *lens; li++)
    for (size_t ci = 0; ci < sizeof cuts / sizeof *cuts; ci++) {
      sn_hasher h;
      sn_hasher_init(&h, 99);
      for (size_t done = 0; done < lens[li];) {
        const size_t n = SN_MIN(cuts[ci], lens[li] - done);
        sn_hasher_update(&h, data + done, n);
        done += n;
      }
      CHECK(sn_hasher_final(&h) == sn_hash64(data, lens[li], 99), "hash of %zu bytes in pieces of %zu", lens[li],
            cuts[ci]);
    }
}

// A section streamed from a source over 2.5 chunks is the same file, byte for byte, as the section
// held in memory; it reads back and its checksum still catches a flipped byte.
static void check_streamed_section(const char *dir) {
  const size_t bytes = 2 * SN_STATE_CHUNK_BYTES + SN_STATE_CHUNK_BYTES / 2 + 12;
  unsigned char *data = mallocCheck(bytes);
  for (size_t i = 0; i < bytes; i++) data[i] = (unsigned char)((i * 2654435761u) >> 13);
  char in_memory[1300], streamed[1300];
  snprintf(in_memory, sizeof in_memory, "%s/memory.bin", dir);
  snprintf(streamed, sizeof streamed, "%s/streamed.bin", dir);
  for (int pass = 0; pass < 2; pass++) {
    counting_source src = {data, 0};
    sn_state_writer *w = sn_state_writer_new();
    sn_state_add_u64(w, "step", 7);
    if (pass == 0) sn_state_add(w, "big", data, bytes);
    else sn_state_add_source(w, "big", bytes, read_counting, &src);
    sn_state_add_u64(w, "after", 8);
    CHECK(sn_state_write(w, pass == 0 ? in_memory : streamed) == 0, "write pass %d", pass);
    sn_state_writer_free(w);
    if (pass == 1) CHECK(src.calls == 3, "streamed in 3 chunks (got %d)", src.calls);
  }
  size_t la = 0, lb = 0;
  char *a = sn_read_file(in_memory, &la), *b = sn_read_file(streamed, &lb);
  CHECK(a && b && la == lb && memcmp(a, b, la) == 0, "streamed file equals the in-memory one (%zu, %zu bytes)", la,
        lb);
  free(a);
  free(b);
  char err[1024];
  sn_state_reader *r = sn_state_read(streamed, err, sizeof err);
  CHECK(r != NULL, "read streamed: %s", err);
  if (r) {
    size_t got = 0;
    const void *back = sn_state_get(r, "big", &got);
    CHECK(back && got == bytes && memcmp(back, data, bytes) == 0, "streamed section reads back");
    CHECK(sn_state_get_u64(r, "after") == 8, "section after the streamed one");
    sn_state_reader_free(r);
  }
  FILE *f = fopen(streamed, "r+b");
  const long flip_at = (long)(SN_STATE_CHUNK_BYTES + 100);  // inside the second chunk
  fseek(f, flip_at, SEEK_SET);
  const int byte = fgetc(f);
  fseek(f, flip_at, SEEK_SET);
  fputc(byte ^ 0x40, f);
  fclose(f);
  r = sn_state_read(streamed, err, sizeof err);
  CHECK(r == NULL && strstr(err, "'big'") && strstr(err, "checksum"), "flip in a streamed section caught: %s", err);
  free(data);
}

static void write_text(const char *path, const char *text) {
  CHECK(sn_write_file_atomic(path, text, strlen(text)) == 0, "write %s", path);
}

// A checkpoint shaped like sn_train's: state.bin and a tower folder (config.json, weights).
static int make_checkpoint(const char *run, int stage, int64_t step, int keep, char *err) {
  char tmp[1200], path[1300];
  if (sn_ckpt_begin(run, stage, step, tmp, sizeof tmp, err, 1024) != 0) return -1;
  float payload[4] = {1, 2, 3, (float)step};
  snprintf(path, sizeof path, "%s/state.bin", tmp);
  write_state(path, (uint64_t)step, payload, 4);
  snprintf(path, sizeof path, "%s/query_tower", tmp);
  sn_mkdir_p(path);
  snprintf(path, sizeof path, "%s/query_tower/config.json", tmp);
  write_text(path, "{\"model_type\": \"qwen2\"}");
  snprintf(path, sizeof path, "%s/query_tower/model.safetensors", tmp);
  write_text(path, "weights weights weights weights weights");
  return sn_ckpt_commit(run, tmp, stage, step, keep, err, 1024);
}

// Damages one file of run/ckpt-1-<step> by `how`; find_latest must skip it with a warning.
typedef enum { TRUNCATE, DELETE, REWRITE_SAME_SIZE, MANIFEST_EDIT } damage;

static void damage_file(const char *run, int64_t step, const char *file, damage how) {
  char path[1300];
  snprintf(path, sizeof path, "%s/ckpt-1-%lld/%s", run, (long long)step, file);
  if (how == TRUNCATE) CHECK(truncate(path, 5) == 0, "truncate %s", path);
  if (how == DELETE) CHECK(unlink(path) == 0, "unlink %s", path);
  if (how == REWRITE_SAME_SIZE || how == MANIFEST_EDIT) {
    size_t len = 0;
    char *text = sn_read_file(path, &len);
    CHECK(text && len > (how == MANIFEST_EDIT ? 40u : 0u), "read %s", path);
    if (!text) return;
    text[how == MANIFEST_EDIT ? 40 : 0] ^= 1;  // past the manifest's first line
    CHECK(sn_write_file_atomic(path, text, len) == 0, "rewrite %s", path);
    free(text);
  }
}

static void check_manifests(const char *run) {
  char err[1024], path[1300];
  int stage;
  int64_t step;
  static const struct {
    const char *file;
    damage how;
    const char *said;
  } cases[] = {
      {"query_tower/model.safetensors", TRUNCATE, "query_tower/model.safetensors has 5 bytes"},
      {"query_tower/config.json", DELETE, "query_tower/config.json is missing"},
      {"query_tower/config.json", REWRITE_SAME_SIZE, "query_tower/config.json fails its checksum"},
      {"state.bin", DELETE, "state.bin is missing"},
      {"MANIFEST", MANIFEST_EDIT, "MANIFEST"},
      {"MANIFEST", TRUNCATE, "MANIFEST"},
  };
  for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
    CHECK(make_checkpoint(run, 1, 10, 3, err) == 0 && make_checkpoint(run, 1, 11, 3, err) == 0, "ckpts: %s", err);
    snprintf(path, sizeof path, "%s/ckpt-1-11", run);
    CHECK(sn_ckpt_validate(path, err, sizeof err) == 0, "intact checkpoint validates: %s", err);
    damage_file(run, 11, cases[i].file, cases[i].how);
    CHECK(sn_ckpt_validate(path, err, sizeof err) != 0 && strstr(err, cases[i].said), "%s damaged: '%s' lacks '%s'",
          cases[i].file, err, cases[i].said);
    CHECK(sn_ckpt_find_latest(run, path, sizeof path, &stage, &step) == 0 && step == 10,
          "damaged %s: fell back to step 10 (got %lld)", cases[i].file, (long long)step);
    snprintf(path, sizeof path, "%s/ckpt-1-11", run);
    sn_remove_tree(path);
  }
  // A valid config.json rewritten into invalid JSON, with the manifest rewritten to match: the
  // JSON check catches what the checksums cannot.
  snprintf(path, sizeof path, "%s/ckpt-1-10/query_tower/config.json", run);
  write_text(path, "{\"model_type\": ");
  snprintf(path, sizeof path, "%s/ckpt-1-10", run);
  CHECK(sn_manifest_write(path, err, sizeof err) == 0, "manifest rewrite: %s", err);
  CHECK(sn_ckpt_validate(path, err, sizeof err) != 0 && strstr(err, "config.json does not parse as JSON"),
        "unparsable config.json: %s", err);
  // A checkpoint of an older build (no manifest) keeps the old validation: marker and state.bin.
  CHECK(make_checkpoint(run, 1, 12, 3, err) == 0, "ckpt 12: %s", err);
  snprintf(path, sizeof path, "%s/ckpt-1-12/MANIFEST", run);
  CHECK(unlink(path) == 0, "drop the manifest");
  snprintf(path, sizeof path, "%s/ckpt-1-12", run);
  CHECK(sn_ckpt_validate(path, err, sizeof err) == 0, "no manifest: still valid: %s", err);

  // The parser: a written manifest round-trips; malformed ones are refused.
  snprintf(path, sizeof path, "%s/ckpt-1-12", run);
  CHECK(sn_manifest_write(path, err, sizeof err) == 0, "write: %s", err);
  snprintf(path, sizeof path, "%s/ckpt-1-12/MANIFEST", run);
  size_t len = 0;
  char *text = sn_read_file(path, &len);
  sn_manifest m;
  CHECK(text && sn_manifest_parse(text, len, &m, err, sizeof err) == 0 && m.n == 3 &&
            strcmp(m.entries[0].path, "query_tower/config.json") == 0 && strcmp(m.entries[2].path, "state.bin") == 0,
        "manifest round trip: %s", err);
  sn_manifest_free(&m);
  free(text);
  static const char *const bad[] = {
      "",
      "scalingnote checkpoint manifest 1\n",
      "scalingnote checkpoint manifest 1\n0123456789abcdef 12 ../escape\nend 0000000000000000\n",
      "scalingnote checkpoint manifest 1\n0123456789abcdef 12 /abs\nend 0000000000000000\n",
      "scalingnote checkpoint manifest 1\n0123456789abcdef -12 a\nend 0000000000000000\n",
      "scalingnote checkpoint manifest 1\n0123456789ABCDEF 12 a\nend 0000000000000000\n",
      "scalingnote checkpoint manifest 1\nend 0000000000000000\n",  // self-checksum wrong
  };
  for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
    CHECK(sn_manifest_parse(bad[i], strlen(bad[i]), &m, err, sizeof err) != 0 && m.n == 0, "bad manifest %zu refused", i);
  }
}

int main(void) {
  char run[] = "/tmp/sn_test_ckpt_XXXXXX";
  CHECK(mkdtemp(run) != NULL, "mkdtemp");
  char path[1300], err[1024];

  // State round trip.
  float data[5] = {0.5f, -1, 3, 4, 1e-20f};
  snprintf(path, sizeof path, "%s/s.bin", run);
  write_state(path, 42, data, 5);
  sn_state_reader *r = sn_state_read(path, err, sizeof err);
  CHECK(r != NULL, "read: %s", err);
  if (r) {
    CHECK(sn_state_get_u64(r, "step") == 42, "step");
    float back[5];
    sn_state_get_exact(r, "data", back, sizeof back);
    CHECK(memcmp(back, data, sizeof data) == 0, "data round trip");
    CHECK(sn_state_get(r, "absent", NULL) == NULL, "absent section");
    sn_state_reader_free(r);
  }
  // Flip one byte of the data: the checksum catches it.
  FILE *f = fopen(path, "r+b");
  fseek(f, -3, SEEK_END);
  fputc(0x7f, f);
  fclose(f);
  r = sn_state_read(path, err, sizeof err);
  CHECK(r == NULL && strstr(err, "checksum") && strstr(err, "'data'"), "corruption detected: %s", err);
  // Truncation and bad magic.
  write_state(path, 1, data, 5);
  CHECK(truncate(path, 40) == 0, "truncate");
  r = sn_state_read(path, err, sizeof err);
  CHECK(r == NULL && strstr(err, "truncated"), "truncation detected: %s", err);
  FILE *g = fopen(path, "wb");
  fputs("not a state file at all", g);
  fclose(g);
  r = sn_state_read(path, err, sizeof err);
  CHECK(r == NULL && strstr(err, "magic"), "bad magic: %s", err);

  // Checkpoints: keep the newest 2; torn ones skipped.
  for (int step = 1; step <= 4; step++) CHECK(make_checkpoint(run, 1, step, 2, err) == 0, "ckpt %d: %s", step, err);
  char dir[1300];
  snprintf(dir, sizeof dir, "%s/ckpt-1-2", run);
  CHECK(access(dir, F_OK) != 0, "old checkpoint pruned");
  snprintf(dir, sizeof dir, "%s/ckpt-1-3", run);
  CHECK(access(dir, F_OK) == 0, "second newest kept");
  int stage;
  int64_t step;
  CHECK(sn_ckpt_find_latest(run, path, sizeof path, &stage, &step) == 0 && stage == 1 && step == 4, "latest is 1-4");
  // A stage-2 folder without its marker (torn by a crash) is skipped.
  snprintf(dir, sizeof dir, "%s/ckpt-2-1", run);
  sn_mkdir_p(dir);
  CHECK(sn_ckpt_find_latest(run, path, sizeof path, &stage, &step) == 0 && stage == 1 && step == 4,
        "torn checkpoint skipped");
  // A complete stage-2 checkpoint wins over stage 1.
  CHECK(make_checkpoint(run, 2, 5, 2, err) == 0, "stage 2 ckpt: %s", err);
  CHECK(sn_ckpt_find_latest(run, path, sizeof path, &stage, &step) == 0 && stage == 2 && step == 5, "stage 2 newest");
  // Corrupt the newest state: find_latest falls back to the previous complete one.
  snprintf(path, sizeof path, "%s/ckpt-2-5/state.bin", run);
  g = fopen(path, "r+b");
  fseek(g, -1, SEEK_END);
  fputc(0x55, g);
  fclose(g);
  CHECK(sn_ckpt_find_latest(run, path, sizeof path, &stage, &step) == 0 && stage == 1 && step == 4,
        "corrupt newest skipped (got %d-%lld)", stage, (long long)step);

  // A failed write (read-only run folder) leaves the existing checkpoints intact.
  if (geteuid() != 0) {  // root ignores permissions
    chmod(run, 0555);
    CHECK(make_checkpoint(run, 1, 9, 2, err) == -1, "write into a read-only folder fails");
    chmod(run, 0755);
    CHECK(sn_ckpt_find_latest(run, path, sizeof path, &stage, &step) == 0 && step == 4, "previous kept");
  } else {
    // As root: make the commit's rename fail by occupying the temp folder name with a file.
    char tmp[1300];
    CHECK(sn_ckpt_begin(run, 1, 9, tmp, sizeof tmp, err, sizeof err) == 0, "begin");
    sn_remove_tree(tmp);
    FILE *blocker = fopen(tmp, "w");
    fclose(blocker);
    CHECK(sn_ckpt_commit(run, tmp, 1, 9, 2, err, sizeof err) == -1, "commit into a broken folder fails");
    CHECK(strstr(err, "cannot") != NULL, "says why: %s", err);
    CHECK(sn_ckpt_find_latest(run, path, sizeof path, &stage, &step) == 0 && step == 4, "previous kept");
  }
  sn_remove_tree(run);
  CHECK(mkdtemp(strcpy(run, "/tmp/sn_test_ckpt_XXXXXX")) != NULL, "mkdtemp");
  check_piecewise_hash();
  check_streamed_section(run);
  check_manifests(run);
  sn_remove_tree(run);
  return sn_test_finish("test_checkpoint");
}
