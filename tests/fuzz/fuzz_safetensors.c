// libFuzzer target: arbitrary bytes as a whole .safetensors file. Two paths: the header parser on
// the bytes in memory (what every other path calls), and the full open + read of every tensor
// through a memory-backed file descriptor. Any crash, leak, UB or an accepted tensor whose bytes
// lie outside the data is a bug.
#define _GNU_SOURCE  // memfd_create
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "safetensors.h"

#define ERR_LEN 512
#define LEN_PREFIX 8
#define MAX_READ_ELEMS (1 << 20)  // skip reading absurdly large (but valid) tensors

static void check_tensors(const sn_st_archive *a, uint64_t file_size) {
  for (int i = 0; i < a->ntensors; i++) {
    const sn_st_tensor *t = &a->tensors[i];
    if (t->offset + t->nbytes > file_size || t->file_index < 0 || t->file_index >= (a->nfiles ? a->nfiles : 1))
      abort();  // the parser accepted a tensor outside the file
    if (sn_st_find(a, t->name) == NULL) abort();
  }
}

static void parse_in_memory(const uint8_t *data, size_t size) {
  if (size < LEN_PREFIX) return;
  uint64_t header_len = 0;
  for (int i = LEN_PREFIX - 1; i >= 0; i--) header_len = header_len << 8 | data[i];
  if (header_len > size - LEN_PREFIX) header_len = size - LEN_PREFIX;  // the length check has its own path
  sn_st_archive a = {0};
  char err[ERR_LEN];
  if (sn_st_parse_header(&a, (const char *)data + LEN_PREFIX, (size_t)header_len, size, 0, "fuzz.safetensors", err,
                         sizeof err) == 0)
    check_tensors(&a, size);
  sn_st_close(&a);
}

static void open_and_read(const uint8_t *data, size_t size) {
  int fd = memfd_create("fuzz", 0);
  if (fd < 0) return;
  if (write(fd, data, size) != (ssize_t)size) {
    close(fd);
    return;
  }
  char path[64], err[ERR_LEN];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  sn_st_archive a;
  if (sn_st_open(&a, path, err, sizeof err) == 0) {
    check_tensors(&a, size);
    for (int i = 0; i < a.ntensors; i++) {
      if (a.tensors[i].numel > MAX_READ_ELEMS) continue;
      float *dst = malloc((size_t)(a.tensors[i].numel ? a.tensors[i].numel : 1) * sizeof(float));
      if (sn_st_read_f32(&a, &a.tensors[i], dst, err, sizeof err) != 0) abort();  // validated: must read
      free(dst);
    }
    sn_st_close(&a);
  }
  close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  parse_in_memory(data, size);
  open_and_read(data, size);
  return 0;
}
