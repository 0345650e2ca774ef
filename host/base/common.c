#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void sn_die_at(const char *src_file, int src_line, int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "error: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, " [%s:%d]\n", src_file, src_line);
  va_end(ap);
  fflush(stderr);
  exit(status);
}

int sn_errorf(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

void sn_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

void sn_warn(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "warning: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

void *sn_malloc_at(size_t bytes, const char *src_file, int src_line) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) sn_die_at(src_file, src_line, SN_EXIT_FAILURE, "malloc(%zu) failed: out of memory", bytes);
  return p;
}

void *sn_calloc_at(size_t count, size_t size, const char *src_file, int src_line) {
  void *p = calloc(count ? count : 1, size ? size : 1);
  if (!p) sn_die_at(src_file, src_line, SN_EXIT_FAILURE, "calloc(%zu, %zu) failed: out of memory", count, size);
  return p;
}

void *sn_realloc_at(void *p, size_t bytes, const char *src_file, int src_line) {
  void *q = realloc(p, bytes ? bytes : 1);
  if (!q) sn_die_at(src_file, src_line, SN_EXIT_FAILURE, "realloc(%zu) failed: out of memory", bytes);
  return q;
}

char *sn_strdup_at(const char *s, const char *src_file, int src_line) {
  size_t n = strlen(s) + 1;
  char *d = sn_malloc_at(n, src_file, src_line);
  memcpy(d, s, n);
  return d;
}

FILE *sn_fopen_at(const char *path, const char *mode, const char *src_file, int src_line) {
  FILE *f = fopen(path, mode);
  if (!f) {
    int status = (mode[0] == 'r') ? SN_EXIT_BAD_INPUT : SN_EXIT_FAILURE;
    sn_die_at(src_file, src_line, status, "cannot open '%s' (mode %s): %s", path, mode, strerror(errno));
  }
  return f;
}

void sn_fread_at(void *dst, size_t size, size_t count, FILE *f, const char *path,
                 const char *src_file, int src_line) {
  size_t got = fread(dst, size, count, f);
  if (got != count) {
    sn_die_at(src_file, src_line, SN_EXIT_BAD_INPUT, "%s: short read (%zu of %zu items of %zu bytes)%s",
              path, got, count, size, feof(f) ? ": file is truncated" : "");
  }
}

void sn_fwrite_at(const void *src, size_t size, size_t count, FILE *f, const char *path,
                  const char *src_file, int src_line) {
  if (fwrite(src, size, count, f) != count)
    sn_die_at(src_file, src_line, SN_EXIT_FAILURE, "%s: write failed: %s", path, strerror(errno));
}

void sn_fclose_at(FILE *f, const char *path, const char *src_file, int src_line) {
  if (fclose(f) != 0)
    sn_die_at(src_file, src_line, SN_EXIT_FAILURE, "%s: close failed: %s", path, strerror(errno));
}

char *sn_read_file(const char *path, size_t *len_out) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, len = 0;
  char *buf = mallocCheck(cap);
  for (;;) {
    if (len + 1 >= cap) buf = reallocCheck(buf, cap *= 2);
    size_t got = fread(buf + len, 1, cap - len - 1, f);
    len += got;
    if (got == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    errno = EIO;
    return NULL;
  }
  buf[len] = '\0';
  if (len_out) *len_out = len;
  return buf;
}

int sn_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  int saved = errno;
  close(fd);
  errno = saved;
  return rc;
}

int sn_write_file_atomic(const char *path, const void *data, size_t len) {
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return -1;
  const char *p = data;
  size_t left = len;
  while (left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      goto fail;
    }
    p += n;
    left -= (size_t)n;
  }
  if (fsync(fd) != 0) goto fail;
  if (close(fd) != 0) {
    fd = -1;
    goto fail;
  }
  fd = -1;
  if (rename(tmp, path) != 0) goto fail;
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  return sn_fsync_dir(dirname(dir));
fail:;
  int saved = errno;
  if (fd >= 0) close(fd);
  unlink(tmp);
  errno = saved;
  return -1;
}

int sn_mkdir_p(const char *path) {
  char buf[4096];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
    errno = ENAMETOOLONG;
    return -1;
  }
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
  return 0;
}

void sn_strbuf_append(sn_strbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    b->cap = SN_MAX(2 * b->cap, b->len + n + 1);
    b->s = reallocCheck(b->s, b->cap);
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = '\0';
}

void sn_strbuf_printf(sn_strbuf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int need = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (need < 0) sn_fatal("vsnprintf failed for format '%s'", fmt);
  if (b->len + (size_t)need + 1 > b->cap) {
    b->cap = SN_MAX(2 * b->cap, b->len + (size_t)need + 1);
    b->s = reallocCheck(b->s, b->cap);
  }
  va_start(ap, fmt);
  vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  b->len += (size_t)need;
}

// 64-bit hash: 4 multiply-rotate lanes over 32-byte stripes, then an avalanche -------------

#define HASH_PRIME_1 0x9E3779B185EBCA87ull
#define HASH_PRIME_2 0xC2B2AE3D27D4EB4Full
#define HASH_PRIME_3 0x165667B19E3779F9ull
#define HASH_PRIME_4 0x85EBCA77C2B2AE63ull
#define HASH_PRIME_5 0x27D4EB2F165667C5ull

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t load64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline uint64_t lane_step(uint64_t acc, uint64_t word) {
  return rotl64(acc + word * HASH_PRIME_2, 31) * HASH_PRIME_1;
}

#define HASH_STRIPE 32

void sn_hasher_init(sn_hasher *h, uint64_t seed) {
  *h = (sn_hasher){.lane = {seed + HASH_PRIME_1 + HASH_PRIME_2, seed + HASH_PRIME_2, seed, seed - HASH_PRIME_1},
                   .seed = seed};
}

static void hash_stripe(uint64_t lane[4], const unsigned char *p) {
  for (int i = 0; i < 4; i++) lane[i] = lane_step(lane[i], load64(p + 8 * i));
}

void sn_hasher_update(sn_hasher *h, const void *data, size_t len) {
  const unsigned char *p = data, *end = p + len;
  h->total += len;
  if (h->ntail) {  // finish the stripe a previous piece began
    const size_t take = SN_MIN(len, HASH_STRIPE - h->ntail);
    memcpy(h->tail + h->ntail, p, take);
    h->ntail += take;
    p += take;
    if (h->ntail < HASH_STRIPE) return;
    hash_stripe(h->lane, h->tail);
    h->ntail = 0;
  }
  for (; end - p >= HASH_STRIPE; p += HASH_STRIPE) hash_stripe(h->lane, p);
  memcpy(h->tail, p, (size_t)(end - p));
  h->ntail = (size_t)(end - p);
}

uint64_t sn_hasher_final(const sn_hasher *s) {
  const uint64_t *lane = s->lane;
  uint64_t h;
  if (s->total >= HASH_STRIPE) {
    h = rotl64(lane[0], 1) + rotl64(lane[1], 7) + rotl64(lane[2], 12) + rotl64(lane[3], 18);
    for (int i = 0; i < 4; i++) h = (h ^ lane_step(0, lane[i])) * HASH_PRIME_1 + HASH_PRIME_4;
  } else {
    h = s->seed + HASH_PRIME_5;
  }
  h += s->total;
  const unsigned char *p = s->tail, *end = p + s->ntail;
  for (; p + 8 <= end; p += 8) h = rotl64(h ^ lane_step(0, load64(p)), 27) * HASH_PRIME_1 + HASH_PRIME_4;
  for (; p < end; p++) h = rotl64(h ^ (*p * HASH_PRIME_5), 11) * HASH_PRIME_1;
  h ^= h >> 33;
  h *= HASH_PRIME_2;
  h ^= h >> 29;
  h *= HASH_PRIME_3;
  h ^= h >> 32;
  return h;
}

uint64_t sn_hash64(const void *data, size_t len, uint64_t seed) {
  sn_hasher h;
  sn_hasher_init(&h, seed);
  sn_hasher_update(&h, data, len);
  return sn_hasher_final(&h);
}

int sn_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

int sn_is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

size_t sn_mul_size(size_t a, size_t b, size_t limit, const char *what) {
  size_t out;
  if (sn_mul_size_ok(a, b, limit, &out) != 0)
    sn_bad_input("%s: %zu x %zu is more than %zu: choose smaller values", what, a, b, limit);
  return out;
}

int sn_mul_size_ok(size_t a, size_t b, size_t limit, size_t *out) {
  size_t p;
  if (__builtin_mul_overflow(a, b, &p) || p > limit) return -1;
  *out = p;
  return 0;
}

static size_t skip_digits(const char *s) {
  size_t n = 0;
  while (s[n] >= '0' && s[n] <= '9') n++;
  return n;
}

// Length of the decimal number at s (0 when there is none): -?D+ for integers,
// -?(D+(.D*)?|.D+)([eE][+-]?D+)? for reals.
static size_t decimal_length(const char *s, int real) {
  size_t i = (s[0] == '-'), whole = skip_digits(s + i);
  i += whole;
  if (!real) return whole ? i : 0;
  size_t frac = 0;
  if (s[i] == '.') {
    frac = skip_digits(s + i + 1);
    i += 1 + frac;
  }
  if (!whole && !frac) return 0;
  if (s[i] == 'e' || s[i] == 'E') {
    size_t j = i + 1 + (s[i + 1] == '+' || s[i + 1] == '-'), exp = skip_digits(s + j);
    if (!exp) return 0;
    i = j + exp;
  }
  return i;
}

int sn_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out) {
  size_t n = decimal_length(s, 0);
  if (n == 0 || s[n] != '\0') return -1;
  errno = 0;
  long long v = strtoll(s, NULL, 10);
  if (errno == ERANGE || v < min || v > max) return -1;
  *out = v;
  return 0;
}

int sn_parse_f64(const char *s, double min, double max, double *out) {
  size_t n = decimal_length(s, 1);
  if (n == 0 || s[n] != '\0') return -1;
  double v = strtod(s, NULL);
  if (!isfinite(v) || v < min || v > max) return -1;
  *out = v;
  return 0;
}

int64_t sn_flag_i64(const char *flag, const char *s, int64_t min, int64_t max) {
  int64_t v;
  if (sn_parse_i64(s, min, max, &v) != 0)
    sn_usage_error("%s: expected a whole decimal integer in [%lld, %lld], got '%s'", flag, (long long)min,
                   (long long)max, s);
  return v;
}

double sn_flag_f64(const char *flag, const char *s, double min, double max) {
  double v;
  if (sn_parse_f64(s, min, max, &v) != 0)
    sn_usage_error("%s: expected a decimal number in [%g, %g], got '%s'", flag, min, max, s);
  return v;
}

void sn_flag_path_kind(const char *flag, const char *path, int want_dir) {
  char err[4096 + 256];
  if (path && sn_check_path_kind(flag, path, want_dir, err, sizeof err) != 0) sn_usage_error("%s", err);
}

size_t sn_host_memory_bytes(void) {
  long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  size_t bytes;
  return sn_mul_size_ok((size_t)pages, (size_t)page_size, SIZE_MAX, &bytes) == 0 ? bytes : SIZE_MAX;
}

int sn_check_path_kind(const char *key, const char *path, int want_dir, char *err, size_t errlen) {
  struct stat st;
  if (!path[0] || stat(path, &st) != 0) return 0;
  int is_dir = S_ISDIR(st.st_mode);
  if (is_dir == want_dir) return 0;
  return sn_errorf(err, errlen, "%s: '%s' is %s, expected a %s", key, path, is_dir ? "a folder" : S_ISREG(st.st_mode) ? "a file" : "not a folder",
                   want_dir ? "folder" : "file");
}

double sn_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
