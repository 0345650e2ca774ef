// Command-line conventions shared by every program (host/cli/, benchmarks/): --help and --version,
// usage errors, and paths printed the way a user would type them.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

// Whether "prefix/.." (prefix: path[0, end)) is the folder above prefix's last component: that
// component is a real folder, not a link (whose ".." is above its target) nor a missing name.
static int parent_is_lexical(char *path, char *end) {
  char saved = *end;  // end <= the reader's position: the character is restored at once
  *end = '\0';
  struct stat st;
  int real_dir = lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
  *end = saved;
  return real_dir;
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
    if (in[0] == '.' && in[1] == '.' && (in[2] == '/' || in[2] == '\0')) {  // "a/..": gone where a is a folder
      char *last = out;  // the last component written
      while (last > path + absolute && last[-1] != '/') last--;
      int is_dotdot = out - last == 2 && last[0] == '.' && last[1] == '.';
      if (out > last && !is_dotdot && parent_is_lexical(path, out)) {
        out = last > path + absolute ? last - 1 : last;  // the component and the separator before it
        in += 2;
        continue;
      }
    }
    if (!*in) break;
    if (out > path && out[-1] != '/') *out++ = '/';
    while (*in && *in != '/') *out++ = *in++;
  }
  if (out == path) *out++ = '.';  // "." or "./": the current folder
  *out = '\0';
  return path;
}
