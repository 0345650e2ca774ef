// Ownership of the run folder: one sn_train at a time (an advisory lock that the kernel releases
// when the holder exits or dies), and no silent reuse: a fresh start in a folder holding an
// earlier run refuses unless --overwrite, which first removes what sn_train wrote there.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "train_internal.h"

#define RUN_LOCK_FILE ".sn_train.lock"
#define PID_TEXT_MAX 32

void sn_run_dir_lock(const char *run_dir) {
  char path[SN_TRAIN_PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/%s", run_dir, RUN_LOCK_FILE);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) sn_bad_input("run_dir: cannot create the lock file %s: %s", path, strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) sn_fatal("cannot lock %s: %s", path, strerror(errno));
    char pid[PID_TEXT_MAX] = "";
    ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
    pid[n > 0 ? n : 0] = '\0';
    pid[strcspn(pid, "\n")] = '\0';
    sn_bad_input("run_dir %s is in use by another sn_train (pid %s, holding %s): wait for it to end, or "
                 "give this run another run_dir",
                 run_dir, pid[0] ? pid : "not written yet", path);
  }
  // Held until this process exits: the descriptor is never closed.
  char pid[PID_TEXT_MAX];
  int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len)
    sn_fatal("cannot write %s: %s", path, strerror(errno));
}

// What sn_train writes into a run folder; --overwrite removes exactly these (never other files,
// and not the token cache, whose shards validate themselves by content key).
#define METRICS_FILE "metrics.jsonl"
#define LOSS_PLOT_PREFIX "loss_stage"  // loss_stage<N>.svg

static int is_run_output(const char *name) {
  static const char *const FILES[] = {METRICS_FILE, "config.resolved.json", "final", "eval", "mined"};
  for (size_t i = 0; i < SN_ARRAY_LEN(FILES); i++)
    if (strcmp(name, FILES[i]) == 0) return 1;
  return sn_ckpt_is_name(name) || strncmp(name, LOSS_PLOT_PREFIX, strlen(LOSS_PLOT_PREFIX)) == 0;
}

// What marks a folder as holding a run: a metrics record or a checkpoint. (A run that stopped on
// bad input before its first step leaves an empty metrics.jsonl: nothing to lose.)
static int marks_a_run(const char *run_dir, const char *name) {
  if (strcmp(name, METRICS_FILE) == 0) {
    char path[SN_TRAIN_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", run_dir, name);
    struct stat st;
    return stat(path, &st) == 0 && st.st_size > 0;
  }
  return sn_ckpt_is_name(name);
}

void sn_run_dir_claim_fresh(const char *run_dir, int overwrite) {
  DIR *d = opendir(run_dir);
  if (!d) sn_bad_input("run_dir: cannot list %s: %s", run_dir, strerror(errno));
  sn_strbuf found = {0};
  int removed = 0;
  for (struct dirent *de; (de = readdir(d)) != NULL;) {
    if (!overwrite) {
      if (marks_a_run(run_dir, de->d_name) && found.len < SN_TRAIN_PATH_MAX)
        sn_strbuf_printf(&found, "%s%s", found.len ? ", " : "", de->d_name);
      continue;
    }
    if (!is_run_output(de->d_name)) continue;
    char path[SN_TRAIN_PATH_MAX + 300];
    snprintf(path, sizeof path, "%s/%s", run_dir, de->d_name);
    if (sn_remove_tree(path) != 0) sn_bad_input("--overwrite: cannot remove %s: %s", path, strerror(errno));
    removed++;
  }
  closedir(d);
  if (found.len)
    sn_bad_input("run_dir %s already holds a run (%s): continue it with --resume auto, or replace it with "
                 "--overwrite",
                 run_dir, found.s);
  if (removed) sn_log("--overwrite: removed %d entries of the earlier run in %s", removed, run_dir);
  free(found.s);
}
