// Command-line conventions shared by every program (host/cli/, benchmarks/): --help and --version,
// usage errors, and paths printed the way a user would type them.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#ifndef SN_VERSION
#error "SN_VERSION comes from CMake's project(VERSION) (host/base/CMakeLists.txt)"
#endif

static const char *cli_prog = "scalingnote";
static void (*cli_usage)(FILE *) = NULL;

void sn_cli_init(const char *prog, void (*usage)(FILE *)) {
  cli_prog = prog;
  cli_usage = usage;
}

const char *sn_version(void) { return SN_VERSION; }

void sn_cli_std_flag(const char *arg) {
  if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
    if (cli_usage) cli_usage(stdout);
    exit(0);
  }
  if (!strcmp(arg, "--version")) {
    printf("%s (scalingnote) %s\n", cli_prog, SN_VERSION);
    exit(0);
  }
}

void sn_usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "error: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  if (cli_usage) cli_usage(stderr);
  fflush(stderr);
  exit(SN_EXIT_BAD_INPUT);
}

char *sn_path_normalize(char *path) {
  char *out = path;
  const char *in = path;
  int absolute = in[0] == '/';
  if (absolute) *out++ = *in++;
  while (*in) {
    while (*in == '/') in++;                                   // "a//b": one separator
    if (in[0] == '.' && (in[1] == '/' || in[1] == '\0')) {     // "./a", "a/./b", "a/.": no "."
      in++;
      continue;
    }
    if (!*in) break;
    if (out > path && out[-1] != '/') *out++ = '/';
    while (*in && *in != '/') *out++ = *in++;
  }
  if (out == path) *out++ = '.';  // "." or "./": the current folder
  *out = '\0';
  return path;
}
