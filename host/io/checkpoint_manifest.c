// A checkpoint's MANIFEST: every file of the folder with its size and checksum, written before the
// COMPLETE marker, so `--resume auto` can tell a truncated tower or a deleted config.json from a
// good checkpoint and fall back to an earlier one. Text, one file a line:
//   scalingnote checkpoint manifest 1
//   <checksum: 16 hex digits> <size: decimal bytes> <relative path>
//   ...
//   end <checksum of every byte before this line: 16 hex digits>
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cJSON.h"
#include "checkpoint.h"
#include "common.h"

#define MANIFEST_HEADER "scalingnote checkpoint manifest 1\n"
#define MANIFEST_END "end "
#define CHECKSUM_HEX_DIGITS 16
// Files are hashed in chunks of this size (the checksum chains sn_hash64 through the chunks), so a
// 15 GB tower is streamed, never held in memory.
#define FILE_HASH_CHUNK (4u << 20)
#define FILE_CHECKSUM_SEED 0x534e4d414eull  // "SNMAN"

int sn_file_checksum(const char *path, uint64_t *size, uint64_t *checksum) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  unsigned char *buf = mallocCheck(FILE_HASH_CHUNK);
  uint64_t h = FILE_CHECKSUM_SEED, total = 0;
  int rc = 0;
  for (;;) {
    size_t have = 0;  // fill a whole chunk: the checksum must not depend on how read() splits
    while (have < FILE_HASH_CHUNK) {
      ssize_t got = read(fd, buf + have, FILE_HASH_CHUNK - have);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) rc = -1;
      if (got <= 0) break;
      have += (size_t)got;
    }
    if (rc != 0 || have == 0) break;
    h = sn_hash64(buf, have, h);
    total += have;
    if (have < FILE_HASH_CHUNK) break;
  }
  int saved = errno;
  free(buf);
  close(fd);
  errno = saved;
  *size = total;
  *checksum = h;
  return rc;
}

void sn_manifest_free(sn_manifest *m) {
  for (int i = 0; i < m->n; i++) free(m->entries[i].path);
  free(m->entries);
  memset(m, 0, sizeof *m);
}

static void manifest_push(sn_manifest *m, const char *path, size_t path_len, uint64_t size, uint64_t checksum) {
  if (m->n == m->cap) m->entries = reallocCheck(m->entries, (size_t)(m->cap = m->cap ? 2 * m->cap : 16) * sizeof *m->entries);
  char *copy = mallocCheck(path_len + 1);
  memcpy(copy, path, path_len);
  copy[path_len] = '\0';
  m->entries[m->n++] = (sn_manifest_entry){.path = copy, .size = size, .checksum = checksum};
}

// ---- parsing --------------------------------------------------------------------------------

static int parse_hex64(const char *s, const char *end, uint64_t *out) {
  if (end - s != CHECKSUM_HEX_DIGITS) return -1;
  uint64_t v = 0;
  for (; s < end; s++) {
    int d = (*s >= '0' && *s <= '9') ? *s - '0' : (*s >= 'a' && *s <= 'f') ? *s - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v << 4 | (uint64_t)d;
  }
  *out = v;
  return 0;
}

static int parse_size(const char *s, const char *end, uint64_t *out) {
  if (s == end || (*s == '0' && end - s > 1)) return -1;  // digits only, no leading zeros
  uint64_t v = 0;
  for (; s < end; s++) {
    if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10) return -1;
    v = v * 10 + (uint64_t)(*s - '0');
  }
  *out = v;
  return 0;
}

// A path a manifest may name: relative, inside the folder (no "..", "." or empty component), no
// control bytes, not longer than a checkpoint path allows.
static int path_is_safe(const char *p, size_t len) {
  if (len == 0 || len >= SN_MANIFEST_PATH_MAX || p[0] == '/') return 0;
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f) return 0;
  for (size_t start = 0; start <= len;) {
    size_t stop = start;
    while (stop < len && p[stop] != '/') stop++;
    size_t n = stop - start;
    if (n == 0 || (n == 1 && p[start] == '.') || (n == 2 && p[start] == '.' && p[start + 1] == '.')) return 0;
    start = stop + 1;
  }
  return 1;
}

int sn_manifest_parse(const char *text, size_t len, sn_manifest *m, char *err, size_t errlen) {
  memset(m, 0, sizeof *m);
  const size_t header_len = strlen(MANIFEST_HEADER);
  if (len < header_len || memcmp(text, MANIFEST_HEADER, header_len) != 0)
    return sn_errorf(err, errlen, "not a scalingnote checkpoint manifest (bad first line)");
  const char *p = text + header_len, *end = text + len;
  for (int line = 2;; line++) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) {
      sn_manifest_free(m);
      return sn_errorf(err, errlen, "line %d: truncated (no '%s' line)", line, "end");
    }
    if ((size_t)(nl - p) > strlen(MANIFEST_END) && memcmp(p, MANIFEST_END, strlen(MANIFEST_END)) == 0) {
      uint64_t want;
      if (parse_hex64(p + strlen(MANIFEST_END), nl, &want) != 0 || nl + 1 != end) {
        sn_manifest_free(m);
        return sn_errorf(err, errlen, "line %d: malformed end line, or content after it", line);
      }
      if (sn_hash64(text, (size_t)(p - text), FILE_CHECKSUM_SEED) != want) {
        sn_manifest_free(m);
        return sn_errorf(err, errlen, "fails its own checksum (corrupt)");
      }
      return 0;
    }
    // <checksum> <size> <path>
    const char *sp1 = memchr(p, ' ', (size_t)(nl - p));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(nl - sp1 - 1)) : NULL;
    uint64_t checksum, size;
    if (!sp2 || parse_hex64(p, sp1, &checksum) != 0 || parse_size(sp1 + 1, sp2, &size) != 0 ||
        !path_is_safe(sp2 + 1, (size_t)(nl - sp2 - 1))) {
      sn_manifest_free(m);
      return sn_errorf(err, errlen, "line %d: expected '<16 hex digits> <bytes> <relative path>'", line);
    }
    size_t path_len = (size_t)(nl - sp2 - 1);
    for (int i = 0; i < m->n; i++)
      if (strlen(m->entries[i].path) == path_len && memcmp(m->entries[i].path, sp2 + 1, path_len) == 0) {
        sn_manifest_free(m);
        return sn_errorf(err, errlen, "line %d: file listed twice", line);
      }
    manifest_push(m, sp2 + 1, path_len, size, checksum);
    p = nl + 1;
  }
}

// ---- writing --------------------------------------------------------------------------------

static int compare_entry_paths(const void *a, const void *b) {
  return strcmp(((const sn_manifest_entry *)a)->path, ((const sn_manifest_entry *)b)->path);
}

// Adds every regular file under root/rel (rel "" = root itself), except the manifest and marker.
static int collect_files(const char *root, const char *rel, sn_manifest *m, char *err, size_t errlen) {
  char dir[SN_CKPT_PATH_MAX + SN_MANIFEST_PATH_MAX];
  snprintf(dir, sizeof dir, "%s%s%s", root, rel[0] ? "/" : "", rel);
  DIR *d = opendir(dir);
  if (!d) return sn_errorf(err, errlen, "cannot list %s: %s", dir, strerror(errno));
  int rc = 0;
  for (struct dirent *de; rc == 0 && (de = readdir(d)) != NULL;) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    if (!rel[0] && (strcmp(de->d_name, SN_CKPT_MANIFEST) == 0 || strcmp(de->d_name, SN_CKPT_MARKER) == 0)) continue;
    char child[SN_MANIFEST_PATH_MAX], full[SN_CKPT_PATH_MAX + SN_MANIFEST_PATH_MAX];
    int n = snprintf(child, sizeof child, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name);
    if (n < 0 || (size_t)n >= sizeof child) {
      rc = sn_errorf(err, errlen, "%s/%s: path too long for a manifest", dir, de->d_name);
      break;
    }
    snprintf(full, sizeof full, "%s/%s", root, child);
    struct stat st;
    if (lstat(full, &st) != 0) {
      rc = sn_errorf(err, errlen, "cannot stat %s: %s", full, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
      rc = collect_files(root, child, m, err, errlen);
    } else if (S_ISREG(st.st_mode)) {
      uint64_t size, checksum;
      if (sn_file_checksum(full, &size, &checksum) != 0) rc = sn_errorf(err, errlen, "cannot read %s: %s", full, strerror(errno));
      else manifest_push(m, child, strlen(child), size, checksum);
    }  // anything else (a socket, a link) is not checkpoint data
  }
  closedir(d);
  return rc;
}

int sn_manifest_write(const char *dir, char *err, size_t errlen) {
  sn_manifest m = {0};
  if (collect_files(dir, "", &m, err, errlen) != 0) {
    sn_manifest_free(&m);
    return -1;
  }
  qsort(m.entries, (size_t)m.n, sizeof *m.entries, compare_entry_paths);
  sn_strbuf text = {0};
  sn_strbuf_printf(&text, "%s", MANIFEST_HEADER);
  for (int i = 0; i < m.n; i++)
    sn_strbuf_printf(&text, "%016llx %llu %s\n", (unsigned long long)m.entries[i].checksum,
                     (unsigned long long)m.entries[i].size, m.entries[i].path);
  sn_strbuf_printf(&text, MANIFEST_END "%016llx\n", (unsigned long long)sn_hash64(text.s, text.len, FILE_CHECKSUM_SEED));
  char path[SN_CKPT_PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/%s", dir, SN_CKPT_MANIFEST);
  int rc = sn_write_file_atomic(path, text.s, text.len);
  if (rc != 0) sn_errorf(err, errlen, "cannot write %s: %s", path, strerror(errno));
  free(text.s);
  sn_manifest_free(&m);
  return rc;
}

// ---- validation -----------------------------------------------------------------------------

static int has_suffix(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

// Every listed file present with its size and checksum; every JSON file (a tower's config.json,
// tokenizer files) parses.
static int check_entry(const char *dir, const sn_manifest_entry *e, char *err, size_t errlen) {
  char path[SN_CKPT_PATH_MAX + SN_MANIFEST_PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", dir, e->path);
  struct stat st;
  if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) return sn_errorf(err, errlen, "%s is missing", e->path);
  if ((uint64_t)st.st_size != e->size)
    return sn_errorf(err, errlen, "%s has %lld bytes, the manifest says %llu (truncated or replaced)", e->path,
                     (long long)st.st_size, (unsigned long long)e->size);
  uint64_t size, checksum;
  if (sn_file_checksum(path, &size, &checksum) != 0)
    return sn_errorf(err, errlen, "cannot read %s: %s", e->path, strerror(errno));
  if (size != e->size || checksum != e->checksum)
    return sn_errorf(err, errlen, "%s fails its checksum (corrupt)", e->path);
  if (has_suffix(e->path, ".json")) {
    char *text = sn_read_file(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!j) return sn_errorf(err, errlen, "%s does not parse as JSON", e->path);
    cJSON_Delete(j);
  }
  return 0;
}

int sn_ckpt_validate(const char *dir, char *err, size_t errlen) {
  char path[SN_CKPT_PATH_MAX + 32], why[512];
  snprintf(path, sizeof path, "%s/%s", dir, SN_CKPT_MARKER);
  if (access(path, F_OK) != 0) return sn_errorf(err, errlen, "no %s marker (a checkpoint torn by a crash)", SN_CKPT_MARKER);
  snprintf(path, sizeof path, "%s/%s", dir, SN_CKPT_MANIFEST);
  size_t len = 0;
  char *text = sn_read_file(path, &len);
  if (text) {  // checkpoints of older builds have none: their state.bin is checked below, as then
    sn_manifest m;
    int rc = sn_manifest_parse(text, len, &m, why, sizeof why);
    free(text);
    if (rc != 0) return sn_errorf(err, errlen, "%s: %s", SN_CKPT_MANIFEST, why);
    int has_state = 0;
    for (int i = 0; i < m.n && rc == 0; i++) {
      rc = check_entry(dir, &m.entries[i], err, errlen);
      has_state |= strcmp(m.entries[i].path, SN_CKPT_STATE) == 0;
    }
    sn_manifest_free(&m);
    if (rc != 0) return -1;
    if (!has_state) return sn_errorf(err, errlen, "%s does not list %s", SN_CKPT_MANIFEST, SN_CKPT_STATE);
  } else if (errno != ENOENT) {
    return sn_errorf(err, errlen, "cannot read %s: %s", path, strerror(errno));
  }
  snprintf(path, sizeof path, "%s/%s", dir, SN_CKPT_STATE);
  sn_state_reader *r = sn_state_read(path, why, sizeof why);
  if (!r) return sn_errorf(err, errlen, "%s", why);
  sn_state_reader_free(r);
  return 0;
}
