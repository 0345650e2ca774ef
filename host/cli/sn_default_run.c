// sn_default_run [--set key=value ...]: the built-in default run (README's first command).
// Builds the Debian package-description retrieval set (once), then runs sn_train on
// configs/default.json: stage 1, stage 2 and evaluation of the untrained towers, the stage-1 towers
// and the student, printed side by side. Extra arguments go to sn_train.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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

static void usage(FILE *out) {
  fprintf(out,
          "usage: sn_default_run [ARGS...]\n"
          "Builds runs/default-data from Debian's package descriptions (needs the English\n"
          "translation lists: apt-get update -o Acquire::Languages=en), then trains and evaluates\n"
          "with %s/configs/default.json.\n"
          "  ARGS...            passed to sn_train (see sn_train --help), e.g. --set stage1.steps=50;\n"
          "                     checked before the dataset is built\n"
          "  --help, -h         this text\n"
          "  --version          the scalingnote version\n",
          SN_SOURCE_DIR);
}

// Runs argv[0] (a path) and waits; returns its exit status. quiet: its stdout goes to /dev/null.
static int run(char *const argv[], int quiet) {
  pid_t pid;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (quiet) posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  int rc = posix_spawn(&pid, argv[0], &actions, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) sn_fatal("cannot start %s: %s", argv[0], strerror(rc));
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) sn_fatal("waitpid: %s", strerror(errno));
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

int main(int argc, char **argv) {
  sn_cli_init("sn_default_run", usage);
  for (int i = 1; i < argc; i++) sn_cli_std_flag(argv[i]);
  if (argc > MAX_ARGS - 8) sn_usage_error("too many arguments");
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

  char *train_argv[MAX_ARGS];
  int k = 0;
  train_argv[k++] = train;
  train_argv[k++] = "--config";
  train_argv[k++] = config;
  for (int i = 1; i < argc; i++) train_argv[k++] = argv[i];
  // sn_train's own check of the arguments (its usage on a bad one), before minutes of dataset work.
  train_argv[k] = "--print-config";
  train_argv[k + 1] = NULL;
  int rc = run(train_argv, 1);
  if (rc != 0) return rc;
  train_argv[k] = NULL;

  struct stat st;
  if (stat(train_file, &st) != 0) {
    sn_log("sn_default_run: building the dataset in %s", data_dir);
    char *make_argv[] = {make, "--out", data_dir, NULL};
    rc = run(make_argv, 0);
    if (rc != 0) return rc;
  } else {
    sn_log("sn_default_run: dataset %s exists (delete it to rebuild)", data_dir);
  }
  return run(train_argv, 0);
}
