// sn_path_normalize: paths printed by the programs read as a user would type them.
#include <string.h>

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
  for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s", cases[i].in);
    const char *got = sn_path_normalize(buf);
    CHECK(got == buf && strcmp(got, cases[i].want) == 0, "'%s' -> '%s', expected '%s'", cases[i].in, got,
          cases[i].want);
  }
  return sn_test_finish("test_path_normalize");
}
