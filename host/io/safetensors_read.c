// safetensors reader: opens one file or a sharded folder (model.safetensors.index.json), finds
// tensors by name and reads their data with pread at 64-bit offsets, so files past 2 GB work.
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cJSON.h"
#include "common.h"
#include "safetensors_internal.h"

#define ST_SINGLE_FILE "model.safetensors"
#define ST_INDEX_FILE "model.safetensors.index.json"

// ---- opening files and folders ------------------------------------------------------------------

// Reads exactly n bytes at offset; -1 with errno (EIO at end of file).
static int pread_full(int fd, void *dst, size_t n, uint64_t offset) {
  char *p = dst;
  while (n > 0) {
    ssize_t got = pread(fd, p, n, (off_t)offset);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      if (got == 0) errno = EIO;
      return -1;
    }
    p += got;
    n -= (size_t)got;
    offset += (uint64_t)got;
  }
  return 0;
}

static uint64_t load_le64(const unsigned char *b) {
  uint64_t v = 0;
  for (int i = ST_LEN_PREFIX_BYTES - 1; i >= 0; i--) v = (v << 8) | b[i];
  return v;
}

static void append_file(sn_st_archive *a, const char *path) {
  a->files = reallocCheck(a->files, (size_t)(a->nfiles + 1) * sizeof *a->files);
  a->files[a->nfiles++] = strdupCheck(path);
}

static int open_single_file(sn_st_archive *a, const char *path, char *err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sn_st_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  unsigned char prefix[ST_LEN_PREFIX_BYTES];
  int rc = -1;
  char *header = NULL;
  if (fstat(fd, &st) != 0) {
    sn_st_fail(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    sn_st_fail(err, errlen, "%s: not a regular file", path);
  } else if ((uint64_t)st.st_size < ST_LEN_PREFIX_BYTES) {
    sn_st_fail(err, errlen, "%s: file is %lld bytes, too small for a safetensors file", path, (long long)st.st_size);
  } else if (pread_full(fd, prefix, sizeof prefix, 0) != 0) {
    sn_st_fail(err, errlen, "%s: cannot read the header length: %s", path, strerror(errno));
  } else {
    uint64_t file_size = (uint64_t)st.st_size, header_len = load_le64(prefix);
    if (sn_st_check_header_len(path, header_len, file_size, err, errlen) == 0) {
      header = mallocCheck((size_t)header_len + 1);
      if (pread_full(fd, header, (size_t)header_len, ST_LEN_PREFIX_BYTES) != 0)
        sn_st_fail(err, errlen, "%s: cannot read the %" PRIu64 "-byte header: %s", path, header_len, strerror(errno));
      else if ((rc = sn_st_parse_header(a, header, (size_t)header_len, file_size, a->nfiles, path, err, errlen)) == 0)
        append_file(a, path);
    }
  }
  free(header);
  close(fd);
  return rc;
}

static char *join_path(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = mallocCheck(n);
  snprintf(p, n, "%s/%s", dir, name);
  return p;
}

static int is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int index_of_string(char **list, int n, const char *s) {
  for (int i = 0; i < n; i++)
    if (strcmp(list[i], s) == 0) return i;
  return -1;
}

// Every tensor the index names must be in the shard it names.
static int check_index_matches(const sn_st_archive *a, const cJSON *weight_map, const char *index_path,
                               char **shard_paths, int nshards, char *err, size_t errlen) {
  for (const cJSON *e = weight_map->child; e; e = e->next) {
    int shard = index_of_string(shard_paths, nshards, e->valuestring);
    int found = 0;
    for (int i = 0; i < a->ntensors && !found; i++)
      found = a->tensors[i].file_index == shard && strcmp(a->tensors[i].name, e->string) == 0;
    if (!found) {
      char q[QUOTABLE_BUF];
      return sn_st_fail(err, errlen, "%s: weight_map says tensor '%s' is in '%s', but that file has no such tensor",
                        index_path, sn_st_quotable(e->string, q, sizeof q), e->valuestring);
    }
  }
  return 0;
}

// Shard names from the weight_map, each once, in order of first appearance.
static int collect_shards(const cJSON *weight_map, const char *index_path, char ***out, int *nout, char *err,
                          size_t errlen) {
  char **names = NULL;
  int n = 0;
  for (const cJSON *e = weight_map->child; e; e = e->next) {
    char q[QUOTABLE_BUF];
    if (!cJSON_IsString(e) || !e->valuestring || !e->valuestring[0] || strchr(e->valuestring, '/')) {
      free(names);
      return sn_st_fail(err, errlen, "%s: weight_map entry '%s' must name a shard file in the same folder", index_path,
                        sn_st_quotable(e->string, q, sizeof q));
    }
    if (index_of_string(names, n, e->valuestring) >= 0) continue;
    names = reallocCheck(names, (size_t)(n + 1) * sizeof *names);
    names[n++] = e->valuestring;  // borrowed from the JSON tree
  }
  *out = names;
  *nout = n;
  return 0;
}

static int open_sharded(sn_st_archive *a, const char *index_path, char *err, size_t errlen) {
  size_t len;
  char *text = sn_read_file(index_path, &len);
  if (!text) return sn_st_fail(err, errlen, "%s: cannot read: %s", index_path, strerror(errno));
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  const cJSON *weight_map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  int rc = 0;
  if (!root) rc = sn_st_fail(err, errlen, "%s: not valid JSON", index_path);
  else if (!cJSON_IsObject(weight_map))
    rc = sn_st_fail(err, errlen, "%s: missing \"weight_map\" object (tensor name -> shard file)", index_path);
  char **shards = NULL;
  int nshards = 0;
  if (rc == 0) rc = collect_shards(weight_map, index_path, &shards, &nshards, err, errlen);
  if (rc == 0 && nshards == 0) rc = sn_st_fail(err, errlen, "%s: \"weight_map\" is empty", index_path);
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", index_path);
  char *folder = dirname(dir);
  for (int i = 0; i < nshards && rc == 0; i++) {
    char *shard_path = join_path(folder, shards[i]);
    rc = open_single_file(a, shard_path, err, errlen);
    free(shard_path);
  }
  if (rc == 0) rc = check_index_matches(a, weight_map, index_path, shards, nshards, err, errlen);
  free(shards);
  cJSON_Delete(root);
  return rc;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

int sn_st_open(sn_st_archive *a, const char *path, char *err, size_t errlen) {
  memset(a, 0, sizeof *a);
  struct stat st;
  int rc;
  if (stat(path, &st) != 0) {
    rc = sn_st_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  } else if (S_ISDIR(st.st_mode)) {
    char *index = join_path(path, ST_INDEX_FILE), *single = join_path(path, ST_SINGLE_FILE);
    if (is_file(single)) rc = open_single_file(a, single, err, errlen);
    else if (is_file(index)) rc = open_sharded(a, index, err, errlen);
    else rc = sn_st_fail(err, errlen, "%s: folder has neither " ST_SINGLE_FILE " nor " ST_INDEX_FILE, path);
    free(index);
    free(single);
  } else if (ends_with(path, ".index.json")) {
    rc = open_sharded(a, path, err, errlen);
  } else {
    rc = open_single_file(a, path, err, errlen);
  }
  if (rc != 0) sn_st_close(a);
  return rc;
}

void sn_st_close(sn_st_archive *a) {
  for (int i = 0; i < a->ntensors; i++) free(a->tensors[i].name);
  for (int i = 0; i < a->nfiles; i++) free(a->files[i]);
  free(a->tensors);
  free(a->files);
  memset(a, 0, sizeof *a);
}

static const sn_st_tensor *find_exact(const sn_st_archive *a, const char *prefix, const char *name) {
  size_t k = strlen(prefix);
  for (int i = 0; i < a->ntensors; i++) {
    const char *n = a->tensors[i].name;
    if (strncmp(n, prefix, k) == 0 && strcmp(n + k, name) == 0) return &a->tensors[i];
  }
  return NULL;
}

// transformers' base-model prefixes: checkpoints saved from *ForCausalLM / BertFor* heads carry
// them, those saved from the bare *Model classes do not.
static const char *const ST_BASE_PREFIXES[] = {"model.", "bert."};

const sn_st_tensor *sn_st_find(const sn_st_archive *a, const char *name) {
  const sn_st_tensor *t = find_exact(a, "", name);
  for (size_t i = 0; i < SN_ARRAY_LEN(ST_BASE_PREFIXES) && !t; i++) {
    const char *prefix = ST_BASE_PREFIXES[i];
    size_t k = strlen(prefix);
    t = strncmp(name, prefix, k) == 0 ? find_exact(a, "", name + k) : find_exact(a, prefix, name);
  }
  return t;
}

// ---- reading tensor data ------------------------------------------------------------------------

static void half_to_f32(sn_dtype dtype, const uint16_t *src, float *dst, size_t n) {
  if (dtype == SN_DTYPE_BF16)
    for (size_t i = 0; i < n; i++) dst[i] = sn_bf16_to_f32(src[i]);
  else
    for (size_t i = 0; i < n; i++) dst[i] = sn_f16_to_f32(src[i]);
}

static int read_tensor_fd(int fd, const sn_st_tensor *t, float *dst) {
  if (t->dtype == SN_DTYPE_F32) return pread_full(fd, dst, (size_t)t->nbytes, t->offset);
  uint16_t *chunk = mallocCheck(ST_IO_CHUNK_ELEMS * sizeof *chunk);
  int rc = 0;
  for (uint64_t done = 0; done < (uint64_t)t->numel && rc == 0;) {
    size_t n = (size_t)SN_MIN((uint64_t)ST_IO_CHUNK_ELEMS, (uint64_t)t->numel - done);
    rc = pread_full(fd, chunk, n * sizeof *chunk, t->offset + done * sizeof *chunk);
    if (rc == 0) half_to_f32(t->dtype, chunk, dst + done, n);
    done += n;
  }
  free(chunk);
  return rc;
}

int sn_st_read_f32(const sn_st_archive *a, const sn_st_tensor *t, float *dst, char *err, size_t errlen) {
  if (t->file_index < 0 || t->file_index >= a->nfiles)
    return sn_st_fail(err, errlen, "tensor '%s': file index %d is not in this archive", t->name, t->file_index);
  const char *path = a->files[t->file_index];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sn_st_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  int rc = read_tensor_fd(fd, t, dst);
  int saved = errno;
  close(fd);
  if (rc != 0) {
    char q[QUOTABLE_BUF];
    return sn_st_fail(err, errlen, "%s: tensor '%s': cannot read %" PRIu64 " bytes at offset %" PRIu64 ": %s%s", path,
                      sn_st_quotable(t->name, q, sizeof q), t->nbytes, t->offset, strerror(saved),
                      saved == EIO ? " (file truncated?)" : "");
  }
  return 0;
}

int sn_st_read_f32_finite(const sn_st_archive *a, const sn_st_tensor *t, float *dst, char *err, size_t errlen) {
  if (sn_st_read_f32(a, t, dst, err, errlen) != 0) return -1;
  for (int64_t i = 0; i < t->numel; i++) {
    if (isfinite(dst[i])) continue;
    char q[QUOTABLE_BUF];
    return sn_st_fail(err, errlen, "%s: tensor '%s' holds a non-finite value (%f) at element %" PRId64
                      " of %" PRId64 "; the model cannot be used", a->files[t->file_index],
                      sn_st_quotable(t->name, q, sizeof q), dst[i], i, t->numel);
  }
  return 0;
}
