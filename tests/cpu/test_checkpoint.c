// Checkpoint folders and state files: round trip, corruption detected by checksums, torn
// checkpoints skipped, only the newest K kept, and a failed write leaving the previous one intact.
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

static int make_checkpoint(const char *run, int stage, int64_t step, int keep, char *err) {
  char tmp[1200], path[1300];
  if (sn_ckpt_begin(run, stage, step, tmp, sizeof tmp, err, 1024) != 0) return -1;
  float payload[4] = {1, 2, 3, (float)step};
  snprintf(path, sizeof path, "%s/state.bin", tmp);
  write_state(path, (uint64_t)step, payload, 4);
  return sn_ckpt_commit(run, tmp, stage, step, keep, err, 1024);
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
  return sn_test_finish("test_checkpoint");
}
