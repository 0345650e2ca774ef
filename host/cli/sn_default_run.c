// sn_default_run [--set key=value ...]: the built-in default run (README's first command).
// Builds the Debian package-description retrieval set (once), then runs sn_train on
// configs/default.json: stage 1, stage 2 and evaluation of the untrained towers, the stage-1 towers
// and the student, printed side by side. Extra arguments go to sn_train.
#define _GNU_SOURCE
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#ifndef SN_SOURCE_DIR
#define SN_SOURCE_DIR "."
#endif
#define MAX_ARGS 512

extern char **environ;

// Runs argv[0] (a path) and waits; returns its exit status.
static int run(char *const argv[]) {
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], NULL, NULL, argv, environ);
  if (rc != 0) sn_fatal("cannot start %s: %s", argv[0], strerror(rc));
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) sn_fatal("waitpid: %s", strerror(errno));
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

int main(int argc, char **argv) {
  if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    printf("usage: sn_default_run [sn_train arguments, e.g. --set stage1.steps=50]\n"
           "Builds runs/default-data from Debian's package descriptions (needs the English\n"
           "translation lists: apt-get update -o Acquire::Languages=en), then trains and evaluates\n"
           "with %s/configs/default.json.\n", SN_SOURCE_DIR);
    return 0;
  }
  if (argc > MAX_ARGS - 8) sn_bad_input("too many arguments");
  char exe[PATH_MAX], bindir[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n < 0) sn_fatal("readlink /proc/self/exe: %s", strerror(errno));
  exe[n] = '\0';
  snprintf(bindir, sizeof bindir, "%s", dirname(exe));

  char data_dir[PATH_MAX], train_file[PATH_MAX + 32], make[PATH_MAX + 32], train[PATH_MAX + 32],
      config[PATH_MAX + 32];
  snprintf(data_dir, sizeof data_dir, "%s/runs/default-data", SN_SOURCE_DIR);
  snprintf(train_file, sizeof train_file, "%s/train.jsonl", data_dir);
  snprintf(make, sizeof make, "%s/sn_make_dataset", bindir);
  snprintf(train, sizeof train, "%s/sn_train", bindir);
  snprintf(config, sizeof config, "%s/configs/default.json", SN_SOURCE_DIR);

  struct stat st;
  if (stat(train_file, &st) != 0) {
    sn_log("sn_default_run: building the dataset in %s", data_dir);
    char *make_argv[] = {make, "--out", data_dir, NULL};
    int rc = run(make_argv);
    if (rc != 0) return rc;
  } else {
    sn_log("sn_default_run: dataset %s exists (delete it to rebuild)", data_dir);
  }
  char *train_argv[MAX_ARGS];
  int k = 0;
  train_argv[k++] = train;
  train_argv[k++] = "--config";
  train_argv[k++] = config;
  for (int i = 1; i < argc; i++) train_argv[k++] = argv[i];
  train_argv[k] = NULL;
  return run(train_argv);
}
