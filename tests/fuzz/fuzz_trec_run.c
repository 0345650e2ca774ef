// libFuzzer target for TREC run files and qrels files: the input is split at "\n===\n" into a run
// and a qrels file (memfds), each loaded on its own. A run that loads must survive a write and a
// reload unchanged (trec order); when both load, the means must lie in [0, 1] over at least one
// query. Errors must name the file. Nothing may crash or leak.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "beir.h"
#include "eval.h"

#define ERR_LEN 1024
#define PATH_LEN 64
#define SEPARATOR "\n===\n"

// A memfd holding size bytes; its /proc path in path. -1 when memfds are unavailable.
static int memfd_with(const uint8_t *data, size_t size, char *path) {
  int fd = memfd_create("fuzz", 0);
  if (fd < 0) return -1;
  if (size && write(fd, data, size) != (ssize_t)size) {
    close(fd);
    return -1;
  }
  snprintf(path, PATH_LEN, "/proc/self/fd/%d", fd);
  return fd;
}

static void check_sorted(const sn_run *run) {
  for (int i = 0; i < run->nqueries; i++) {
    const sn_run_query *q = &run->queries[i];
    if (q->ndocs < 1 || (i > 0 && strcmp(run->queries[i - 1].query_id, q->query_id) >= 0)) abort();
    for (int r = 1; r < q->ndocs; r++) {
      const sn_run_doc *a = &q->docs[r - 1], *b = &q->docs[r];
      if (a->score < b->score || (a->score == b->score && strcmp(a->doc_id, b->doc_id) <= 0)) abort();
    }
  }
}

// Written with 9 significant digits, a run reloads with the same queries and documents in the
// same order when its scores are fp32 values (all that the pipeline writes); other scores may
// round into ties, so only the counts are compared for those.
static void round_trip(const sn_run *run) {
  char path[PATH_LEN], err[ERR_LEN];
  int fd = memfd_create("fuzz-out", 0);
  if (fd < 0) return;
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  if (sn_run_write_trec(path, run, "fuzz", err, sizeof err) != 0) abort();
  sn_run back;
  if (sn_run_load_trec(path, &back, err, sizeof err) != 0 || back.nqueries != run->nqueries) abort();
  for (int i = 0; i < run->nqueries; i++)
    if (strcmp(back.queries[i].query_id, run->queries[i].query_id) || back.queries[i].ndocs != run->queries[i].ndocs)
      abort();
  sn_run_free(&back);
  close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *cut = memmem(data, size, SEPARATOR, strlen(SEPARATOR));
  size_t run_size = cut ? (size_t)(cut - data) : size;
  const uint8_t *qrels_data = cut ? cut + strlen(SEPARATOR) : data + size;
  size_t qrels_size = (size_t)(data + size - qrels_data);
  char run_path[PATH_LEN], qrels_path[PATH_LEN], err[ERR_LEN];
  int run_fd = memfd_with(data, run_size, run_path);
  int qrels_fd = memfd_with(qrels_data, qrels_size, qrels_path);
  sn_run run;
  sn_qrels qrels;
  int run_ok = 0, qrels_ok = 0;
  if (run_fd >= 0) {
    run_ok = sn_run_load_trec(run_path, &run, err, sizeof err) == 0;
    if (!run_ok && strncmp(err, run_path, strlen(run_path)) != 0) abort();
  }
  if (qrels_fd >= 0) {
    qrels_ok = sn_qrels_load(qrels_path, &qrels, err, sizeof err) == 0;
    if (!qrels_ok && strncmp(err, qrels_path, strlen(qrels_path)) != 0) abort();
  }
  if (run_ok) {
    check_sorted(&run);
    round_trip(&run);
  }
  if (run_ok && qrels_ok) {
    sn_metrics mean;
    int evaluated = 0;
    sn_metrics_compute(&qrels, &run, &mean, &evaluated, NULL);
    if (evaluated < 1) abort();  // the loader refuses qrels without a positive grade
    const double m[4] = {mean.recall_10, mean.recall_100, mean.ndcg_10, mean.mrr_10};
    for (int i = 0; i < 4; i++)
      if (!(m[i] >= 0.0 && m[i] <= 1.0 + 1e-12)) abort();
  }
  if (run_ok) sn_run_free(&run);
  if (qrels_ok) sn_qrels_free(&qrels);
  if (run_fd >= 0) close(run_fd);
  if (qrels_fd >= 0) close(qrels_fd);
  return 0;
}
