#define _GNU_SOURCE
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define STATE_NAME_MAX 64
#define COMPLETE_MARKER SN_CKPT_MARKER
#define REMOVE_TREE_FDS 16

// ---- state container ------------------------------------------------------------------------
// Layout: magic (8) | version u32 | section count u32 | sections...
// section: name (64, NUL-padded) | bytes u64 | sn_hash64 of data u64 | data

typedef struct {
  char name[STATE_NAME_MAX];
  uint64_t bytes;
  uint64_t checksum;
  const unsigned char *data;
  int owned;  // data was copied by sn_state_add_copy
  sn_state_source source;  // or data comes from here while the file is written
  const void *source_ctx;
} state_section;

struct sn_state_writer {
  state_section *sections;
  int n, cap;
};

struct sn_state_reader {
  char *buf;
  size_t mapped;  // bytes of buf mapped from the file (0: malloc'd)
  state_section *sections;
  int n;
  char path[SN_CKPT_PATH_MAX];
};

// Seed of the per-section checksums.
#define STATE_CHECKSUM_SEED 0x534e535441ull  // "SNSTA"

static uint64_t section_checksum(const void *data, size_t n) { return sn_hash64(data, n, STATE_CHECKSUM_SEED); }

sn_state_writer *sn_state_writer_new(void) { return callocCheck(1, sizeof(sn_state_writer)); }

static state_section *new_section(sn_state_writer *w, const char *name, const void *data, size_t bytes) {
  if (strlen(name) >= STATE_NAME_MAX) sn_fatal("state section name '%s' is too long", name);
  if (w->n == w->cap) {
    w->cap = w->cap ? 2 * w->cap : 16;
    w->sections = reallocCheck(w->sections, (size_t)w->cap * sizeof *w->sections);
  }
  state_section *s = &w->sections[w->n++];
  memset(s->name, 0, sizeof s->name);
  snprintf(s->name, sizeof s->name, "%s", name);
  s->bytes = bytes;
  s->data = data;
  s->owned = 0;
  s->source = NULL;
  s->checksum = data ? section_checksum(data, bytes) : 0;
  return s;
}

void sn_state_add(sn_state_writer *w, const char *name, const void *data, size_t bytes) {
  new_section(w, name, data, bytes);
}

void sn_state_add_copy(sn_state_writer *w, const char *name, const void *data, size_t bytes) {
  unsigned char *copy = mallocCheck(bytes);
  memcpy(copy, data, bytes);
  new_section(w, name, copy, bytes)->owned = 1;
}

void sn_state_add_u64(sn_state_writer *w, const char *name, uint64_t v) {
  sn_state_add_copy(w, name, &v, sizeof v);
}

void sn_state_add_source(sn_state_writer *w, const char *name, size_t bytes, sn_state_source source,
                         const void *ctx) {
  state_section *s = new_section(w, name, NULL, bytes);
  s->source = source;
  s->source_ctx = ctx;
}

static int write_all(FILE *f, const void *data, size_t bytes) {
  return fwrite(data, 1, bytes, f) == bytes ? 0 : -1;
}

// A streamed section's data, a chunk at a time through buf, and its checksum, known only at the
// end: written into the header's slot afterwards (the file is a temporary one until renamed).
static int write_source_section(FILE *f, const state_section *s, unsigned char *buf) {
  const off_t checksum_at = ftello(f) - (off_t)sizeof s->checksum;
  sn_hasher h;
  sn_hasher_init(&h, STATE_CHECKSUM_SEED);
  for (size_t done = 0; done < s->bytes;) {
    const size_t n = SN_MIN(SN_STATE_CHUNK_BYTES, s->bytes - done);
    s->source(s->source_ctx, done, n, buf);
    sn_hasher_update(&h, buf, n);
    if (write_all(f, buf, n) != 0) return -1;
    done += n;
  }
  const uint64_t checksum = sn_hasher_final(&h);
  if (checksum_at < 0 || fseeko(f, checksum_at, SEEK_SET) != 0 || write_all(f, &checksum, sizeof checksum) != 0)
    return -1;
  return fseeko(f, 0, SEEK_END);
}

int sn_state_write(sn_state_writer *w, const char *path) {
  char tmp[SN_CKPT_PATH_MAX + 32];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) return -1;
  uint32_t version = SN_STATE_VERSION, count = (uint32_t)w->n;
  int rc = write_all(f, SN_STATE_MAGIC, 8) | write_all(f, &version, 4) | write_all(f, &count, 4);
  unsigned char *chunk = NULL;  // for streamed sections
  for (int i = 0; i < w->n && rc == 0; i++) {
    const state_section *s = &w->sections[i];
    rc = write_all(f, s->name, STATE_NAME_MAX) | write_all(f, &s->bytes, 8) | write_all(f, &s->checksum, 8);
    if (rc != 0) break;
    if (!s->source) {
      rc = write_all(f, s->data, s->bytes);
      continue;
    }
    if (!chunk) chunk = mallocCheck(SN_STATE_CHUNK_BYTES);
    rc = write_source_section(f, s, chunk);
  }
  free(chunk);
  if (rc == 0 && fflush(f) != 0) rc = -1;
  if (rc == 0 && fsync(fileno(f)) != 0) rc = -1;
  int saved = errno;
  if (fclose(f) != 0 && rc == 0) {
    rc = -1;
    saved = errno;
  }
  if (rc == 0 && rename(tmp, path) != 0) {
    rc = -1;
    saved = errno;
  }
  if (rc != 0) unlink(tmp);
  errno = saved;
  return rc;
}

void sn_state_writer_free(sn_state_writer *w) {
  if (!w) return;
  for (int i = 0; i < w->n; i++)
    if (w->sections[i].owned) free((void *)w->sections[i].data);
  free(w->sections);
  free(w);
}

static sn_state_reader *parse_state(char *buf, size_t len, size_t mapped, const char *path, char *err,
                                    size_t errlen);

sn_state_reader *sn_state_read(const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  struct stat st;
  if (!f || fstat(fileno(f), &st) != 0) {
    snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    if (f) fclose(f);
    return NULL;
  }
  const size_t len = (size_t)st.st_size;
  void *map = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE, fileno(f), 0) : MAP_FAILED;
  fclose(f);  // a mapping stays valid
  if (map != MAP_FAILED) {
    madvise(map, len, MADV_SEQUENTIAL);  // the checksums read it front to back once
    return parse_state(map, len, len, path, err, errlen);
  }
  size_t got = 0;
  char *buf = sn_read_file(path, &got);  // empty, or a file system that cannot map files
  if (!buf) {
    snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    return NULL;
  }
  return parse_state(buf, got, 0, path, err, errlen);
}

sn_state_reader *sn_state_parse(char *buf, size_t len, const char *path, char *err, size_t errlen) {
  return parse_state(buf, len, 0, path, err, errlen);
}

static sn_state_reader *parse_state(char *buf, size_t len, size_t mapped, const char *path, char *err,
                                    size_t errlen) {
  sn_state_reader *r = callocCheck(1, sizeof *r);
  r->buf = buf;
  r->mapped = mapped;
  snprintf(r->path, sizeof r->path, "%s", path);
  const unsigned char *p = (const unsigned char *)buf, *end = p + len;
  uint32_t version, count;
  if (len < 16 || memcmp(p, SN_STATE_MAGIC, 8) != 0) {
    snprintf(err, errlen, "%s: not a scalingnote state file (bad magic)", path);
    goto fail;
  }
  memcpy(&version, p + 8, 4);
  memcpy(&count, p + 12, 4);
  if (version != SN_STATE_VERSION) {
    snprintf(err, errlen, "%s: state version %u, this build reads version %d", path, version, SN_STATE_VERSION);
    goto fail;
  }
  p += 16;
  if (count > (len - 16) / (STATE_NAME_MAX + 16)) {  // before allocating: count is untrusted
    snprintf(err, errlen, "%s: truncated: it claims %u sections, more than its %zu bytes can hold", path, count, len);
    goto fail;
  }
  r->sections = callocCheck(count ? count : 1, sizeof *r->sections);
  for (uint32_t i = 0; i < count; i++) {
    state_section *s = &r->sections[i];
    if ((size_t)(end - p) < STATE_NAME_MAX + 16) {
      snprintf(err, errlen, "%s: truncated in the header of section %u of %u", path, i, count);
      goto fail;
    }
    memcpy(s->name, p, STATE_NAME_MAX);
    s->name[STATE_NAME_MAX - 1] = '\0';
    memcpy(&s->bytes, p + STATE_NAME_MAX, 8);
    memcpy(&s->checksum, p + STATE_NAME_MAX + 8, 8);
    p += STATE_NAME_MAX + 16;
    if ((uint64_t)(end - p) < s->bytes) {
      snprintf(err, errlen, "%s: section '%s' is truncated", path, s->name);
      goto fail;
    }
    s->data = (unsigned char *)p;
    if (section_checksum(p, s->bytes) != s->checksum) {
      snprintf(err, errlen, "%s: section '%s' fails its checksum (corrupt file)", path, s->name);
      goto fail;
    }
    p += s->bytes;
    r->n++;
  }
  return r;
fail:
  sn_state_reader_free(r);
  return NULL;
}

const void *sn_state_get(const sn_state_reader *r, const char *name, size_t *bytes) {
  for (int i = 0; i < r->n; i++)
    if (strcmp(r->sections[i].name, name) == 0) {
      if (bytes) *bytes = r->sections[i].bytes;
      return r->sections[i].data;
    }
  return NULL;
}

void sn_state_get_exact(const sn_state_reader *r, const char *name, void *dst, size_t bytes) {
  size_t have = 0;
  const void *src = sn_state_get(r, name, &have);
  if (!src) sn_bad_input("%s: section '%s' is missing", r->path, name);
  if (have != bytes)
    sn_bad_input("%s: section '%s' has %zu bytes, expected %zu (a checkpoint of another model or config?)",
                 r->path, name, have, bytes);
  memcpy(dst, src, bytes);
}

uint64_t sn_state_get_u64(const sn_state_reader *r, const char *name) {
  uint64_t v;
  sn_state_get_exact(r, name, &v, sizeof v);
  return v;
}

const char *sn_state_name(const sn_state_reader *r, int i) {
  return i >= 0 && i < r->n ? r->sections[i].name : NULL;
}

void sn_state_reader_free(sn_state_reader *r) {
  if (!r) return;
  free(r->sections);
  if (r->mapped) munmap(r->buf, r->mapped);
  else free(r->buf);
  free(r);
}

// ---- folders --------------------------------------------------------------------------------

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

int sn_remove_tree(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
  return nftw(path, remove_entry, REMOVE_TREE_FDS, FTW_DEPTH | FTW_PHYS);
}

#define CKPT_NAME_FORMAT "%s/%sckpt-%d-%lld"
#define CKPT_TMP_PREFIX ".tmp-"

void sn_ckpt_dir(const char *run_dir, int stage, int64_t step, int temporary, char *out, size_t size) {
  snprintf(out, size, CKPT_NAME_FORMAT, run_dir, temporary ? CKPT_TMP_PREFIX : "", stage, (long long)step);
}

int sn_ckpt_begin(const char *run_dir, int stage, int64_t step, char *tmp_dir, size_t size,
                  char *err, size_t errlen) {
  sn_ckpt_dir(run_dir, stage, step, 1, tmp_dir, size);
  sn_remove_tree(tmp_dir);  // a leftover of an interrupted write
  if (sn_mkdir_p(tmp_dir) != 0) {
    snprintf(err, errlen, "cannot create checkpoint folder %s: %s", tmp_dir, strerror(errno));
    return -1;
  }
  return 0;
}

void sn_ckpt_abort(const char *tmp_dir) { sn_remove_tree(tmp_dir); }

typedef struct {
  int stage;
  int64_t step;
  char name[256];
} ckpt_entry;

static int parse_ckpt_name(const char *name, int *stage, int64_t *step) {
  long long s = 0, k = 0;
  int consumed = 0;
  if (sscanf(name, "ckpt-%lld-%lld%n", &s, &k, &consumed) != 2 || name[consumed] != '\0') return 0;
  *stage = (int)s;
  *step = (int64_t)k;
  return 1;
}

int sn_ckpt_is_name(const char *name) {
  int stage;
  int64_t step;
  if (strncmp(name, CKPT_TMP_PREFIX, strlen(CKPT_TMP_PREFIX)) == 0) name += strlen(CKPT_TMP_PREFIX);
  return parse_ckpt_name(name, &stage, &step);
}

static int compare_ckpt_newest_first(const void *a, const void *b) {
  const ckpt_entry *x = a, *y = b;
  if (x->stage != y->stage) return y->stage - x->stage;
  return (y->step > x->step) - (y->step < x->step);
}

// Checkpoint folders of run_dir, newest first. Caller frees.
static ckpt_entry *list_checkpoints(const char *run_dir, int *count) {
  *count = 0;
  DIR *d = opendir(run_dir);
  if (!d) return NULL;
  ckpt_entry *list = NULL;
  int cap = 0;
  for (struct dirent *de; (de = readdir(d)) != NULL;) {
    int stage;
    int64_t step;
    if (!parse_ckpt_name(de->d_name, &stage, &step)) continue;
    if (*count == cap) list = reallocCheck(list, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *list);
    list[*count] = (ckpt_entry){.stage = stage, .step = step};
    snprintf(list[*count].name, sizeof list[*count].name, "%s", de->d_name);
    (*count)++;
  }
  closedir(d);
  if (*count > 1) qsort(list, (size_t)*count, sizeof *list, compare_ckpt_newest_first);
  return list;
}

static int has_marker(const char *dir) {
  char path[SN_CKPT_PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/%s", dir, COMPLETE_MARKER);
  return access(path, F_OK) == 0;
}

int sn_ckpt_commit(const char *run_dir, const char *tmp_dir, int stage, int64_t step, int keep,
                   char *err, size_t errlen) {
  char marker[SN_CKPT_PATH_MAX + 32], final_dir[SN_CKPT_PATH_MAX];
  snprintf(marker, sizeof marker, "%s/%s", tmp_dir, COMPLETE_MARKER);
  sn_ckpt_dir(run_dir, stage, step, 0, final_dir, sizeof final_dir);
  const char note[] = "complete\n";
  if (sn_manifest_write(tmp_dir, err, errlen) != 0) {
    sn_ckpt_abort(tmp_dir);
    return -1;
  }
  if (sn_write_file_atomic(marker, note, sizeof note - 1) != 0) {
    snprintf(err, errlen, "cannot write %s: %s", marker, strerror(errno));
    sn_ckpt_abort(tmp_dir);
    return -1;
  }
  sn_remove_tree(final_dir);  // same step written again (a resumed run re-saving)
  if (rename(tmp_dir, final_dir) != 0 || sn_fsync_dir(run_dir) != 0) {
    snprintf(err, errlen, "cannot rename %s to %s: %s", tmp_dir, final_dir, strerror(errno));
    sn_ckpt_abort(tmp_dir);
    return -1;
  }
  int n = 0, kept = 0;
  ckpt_entry *list = list_checkpoints(run_dir, &n);
  for (int i = 0; i < n; i++) {
    char dir[SN_CKPT_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/%s", run_dir, list[i].name);
    if (!has_marker(dir)) continue;  // torn folders are left for a person to look at
    if (++kept > keep) sn_remove_tree(dir);
  }
  free(list);
  return 0;
}

int sn_ckpt_find_latest(const char *run_dir, char *path, size_t size, int *stage, int64_t *step) {
  int n = 0, found = -1;
  ckpt_entry *list = list_checkpoints(run_dir, &n);
  for (int i = 0; i < n && found < 0; i++) {
    char dir[SN_CKPT_PATH_MAX], err[1024];
    snprintf(dir, sizeof dir, "%s/%s", run_dir, list[i].name);
    if (sn_ckpt_validate(dir, err, sizeof err) != 0) {
      sn_warn("skipping %s: %s", dir, err);
      continue;
    }
    snprintf(path, size, "%s", dir);
    *stage = list[i].stage;
    *step = list[i].step;
    found = i;
  }
  free(list);
  return found >= 0 ? 0 : -1;
}

static const char *const TOKENIZER_FILES[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json",     "merges.txt",            "encoder.json",            "vocab.bpe",
};

int sn_copy_tokenizer_files(const char *src_dir, const char *dst_dir, char *err, size_t errlen) {
  for (size_t i = 0; i < SN_ARRAY_LEN(TOKENIZER_FILES); i++) {
    char src[SN_CKPT_PATH_MAX], dst[SN_CKPT_PATH_MAX];
    snprintf(src, sizeof src, "%s/%s", src_dir, TOKENIZER_FILES[i]);
    snprintf(dst, sizeof dst, "%s/%s", dst_dir, TOKENIZER_FILES[i]);
    size_t len = 0;
    char *data = sn_read_file(src, &len);
    if (!data) continue;
    int rc = sn_write_file_atomic(dst, data, len);
    free(data);
    if (rc != 0) {
      snprintf(err, errlen, "cannot write %s: %s", dst, strerror(errno));
      return -1;
    }
  }
  return 0;
}

int sn_tokenizer_files_checksum(const char *dir, uint64_t *checksum) {
  uint64_t h = 0;
  for (size_t i = 0; i < SN_ARRAY_LEN(TOKENIZER_FILES); i++) {
    char path[SN_CKPT_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, TOKENIZER_FILES[i]);
    uint64_t file[2];
    if (access(path, F_OK) != 0) continue;
    if (sn_file_checksum(path, &file[0], &file[1]) != 0) return -1;
    h = sn_hash64(TOKENIZER_FILES[i], strlen(TOKENIZER_FILES[i]), h);
    h = sn_hash64(file, sizeof file, h);
  }
  *checksum = h;
  return 0;
}
