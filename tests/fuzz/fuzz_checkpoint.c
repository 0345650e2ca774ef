// libFuzzer target for what --resume reads from a checkpoint folder before trusting it: arbitrary
// bytes as a state file (state.bin, a ZeRO shard) and as a MANIFEST. Neither parser may crash,
// leak or exit; a manifest that parses names only safe relative paths.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"

#define ERR_LEN 512

static void check_manifest(const sn_manifest *m) {
  for (int i = 0; i < m->n; i++) {
    const char *p = m->entries[i].path;
    size_t len = strlen(p);
    if (len == 0 || len >= SN_MANIFEST_PATH_MAX || p[0] == '/' || strstr(p, "//")) abort();
    if (strcmp(p, "..") == 0 || strncmp(p, "../", 3) == 0 || strstr(p, "/../") ||
        (len >= 3 && strcmp(p + len - 3, "/..") == 0))
      abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[ERR_LEN];
  char *copy = malloc(size + 1);  // the reader takes over a malloc'd, NUL-terminated buffer
  if (!copy) return 0;
  memcpy(copy, data, size);
  copy[size] = '\0';
  sn_state_reader *r = sn_state_parse(copy, size, "fuzz.bin", err, sizeof err);
  if (r) {
    size_t bytes = 0;
    const unsigned char *step = sn_state_get(r, "step", &bytes);
    if (step && bytes > size) abort();  // a section lies inside the file
    sn_state_reader_free(r);
  }
  sn_manifest m;
  if (sn_manifest_parse((const char *)data, size, &m, err, sizeof err) == 0) {
    check_manifest(&m);
    sn_manifest_free(&m);
  } else if (m.n != 0 || m.entries) {
    abort();  // a refused manifest leaves nothing behind
  }
  return 0;
}
