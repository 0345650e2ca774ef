// state_edit: damages a checkpoint's state file on purpose, for the tests of what a resume refuses
// (tests/cpu/test_resume_bad_state.sh). The file stays well formed (every checksum recomputed) and
// the folder's MANIFEST is rewritten, so only the restore's own checks can catch the damage.
//   state_edit FILE                       list the sections: name and bytes, a line each
//   state_edit FILE cut SECTION BYTES     keep the first BYTES bytes of SECTION
//   state_edit FILE set SECTION VALUE     make a u64 SECTION hold VALUE
// Several edits may follow FILE. Exit 0, or 1 with a message.
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "common.h"

#define MAX_EDITS 16

typedef struct {
  const char *section;
  int is_cut;
  uint64_t value;  // bytes kept (cut) or the new value (set)
  uint64_t stored;  // a set's value lives here until the file is written
} state_edit;

static int fail(const char *what) {
  fprintf(stderr, "state_edit: %s\n", what);
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2 || (argc - 2) % 3 != 0 || (argc - 2) / 3 > MAX_EDITS)
    return fail("usage: state_edit FILE [{cut SECTION BYTES | set SECTION VALUE}...]");
  const char *path = argv[1];
  state_edit edits[MAX_EDITS];
  const int nedits = (argc - 2) / 3;
  for (int e = 0; e < nedits; e++) {
    const char *op = argv[2 + 3 * e];
    if (strcmp(op, "cut") != 0 && strcmp(op, "set") != 0) return fail("an edit is 'cut' or 'set'");
    edits[e] = (state_edit){argv[3 + 3 * e], op[0] == 'c', strtoull(argv[4 + 3 * e], NULL, 10), 0};
  }
  char err[1024];
  sn_state_reader *r = sn_state_read(path, err, sizeof err);
  if (!r) return fail(err);
  if (nedits == 0) {
    for (int i = 0; sn_state_name(r, i); i++) {
      size_t bytes = 0;
      sn_state_get(r, sn_state_name(r, i), &bytes);
      printf("%s %zu\n", sn_state_name(r, i), bytes);
    }
    sn_state_reader_free(r);
    return 0;
  }
  sn_state_writer *w = sn_state_writer_new();
  int matched = 0;
  for (int i = 0; sn_state_name(r, i); i++) {
    const char *name = sn_state_name(r, i);
    size_t bytes = 0;
    const void *data = sn_state_get(r, name, &bytes);
    for (int e = 0; e < nedits; e++) {
      if (strcmp(edits[e].section, name) != 0) continue;
      matched++;
      if (edits[e].is_cut) {
        if (edits[e].value > bytes) return fail("a cut longer than its section");
        bytes = edits[e].value;
      } else {
        if (bytes != sizeof(uint64_t)) return fail("'set' takes a u64 section");
        edits[e].stored = edits[e].value;
        data = &edits[e].stored;
      }
    }
    sn_state_add(w, name, data, bytes);
  }
  if (matched != nedits) return fail("a section to edit is not in the file");
  if (sn_state_write(w, path) != 0) return fail("cannot write the file");
  sn_state_writer_free(w);
  sn_state_reader_free(r);
  char *dir = strdup(path);
  const int rc = sn_manifest_write(dirname(dir), err, sizeof err);
  free(dir);
  return rc == 0 ? 0 : fail(err);
}
