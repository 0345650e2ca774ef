// sn_path_normalize: paths printed by the programs read as a user would type them.
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "test_util.h"

int main(void) {
  static const struct {
    const char *in, *want;
  } cases[] = {
      {"runs/x", "runs/x"},         {"runs//x", "runs/x"},       {"./runs/x", "runs/x"},
      {"runs/./x/", "runs/x"},      {"runs/x/.", "runs/x"},      {"/abs//path/", "/abs/path"},
      {"/", "/"},                   {"//", "/"},                 {".", "."},
      {"./", "."},                  {"../up/./x", "../up/x"},    {"a/../b", "a/../b"},
      {".hidden/x", ".hidden/x"},   {"a/.b//c", "a/.b/c"},       {"x", "x"},
  };
  // ".." goes with the folder before it, not with a link (its ".." is above the target) or a
  // missing name; relative paths are read from the current folder, here a fresh one.
  char tmp[] = "/tmp/sn_path_normalize_XXXXXX";
  CHECK(mkdtemp(tmp) && chdir(tmp) == 0, "temporary folder");
  CHECK(mkdir("real", 0755) == 0 && mkdir("real/sub", 0755) == 0 && symlink("real/sub", "link") == 0,
        "folders and a link");
  static const struct {
    const char *in, *want;
  } dotdot[] = {
      {"real/../x", "x"},           {"real/sub/../../x", "x"},   {"real/sub/..", "real"},
      {"real/..", "."},             {"./real//sub/./../y/", "real/y"}, {"link/../x", "link/../x"},
      {"missing/../x", "missing/../x"}, {"../real/../x", "../real/../x"},
  };
  for (size_t i = 0; i < SN_ARRAY_LEN(dotdot); i++) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s", dotdot[i].in);
    const char *got = sn_path_normalize(buf);
    CHECK(strcmp(got, dotdot[i].want) == 0, "'%s' -> '%s', expected '%s'", dotdot[i].in, got, dotdot[i].want);
  }
  char abs_in[128], abs_want[128];
  snprintf(abs_in, sizeof abs_in, "%s/real/sub/../x", tmp);
  snprintf(abs_want, sizeof abs_want, "%s/real/x", tmp);
  CHECK(strcmp(sn_path_normalize(abs_in), abs_want) == 0, "absolute: got '%s', expected '%s'", abs_in, abs_want);
  for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s", cases[i].in);
    const char *got = sn_path_normalize(buf);
    CHECK(got == buf && strcmp(got, cases[i].want) == 0, "'%s' -> '%s', expected '%s'", cases[i].in, got,
          cases[i].want);
  }
  CHECK(unlink("link") == 0 && rmdir("real/sub") == 0 && rmdir("real") == 0 && chdir("/") == 0 && rmdir(tmp) == 0,
        "clean up");
  return sn_test_finish("test_path_normalize");
}
