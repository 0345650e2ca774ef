// safetensors writer: streams tensor data to a temp file, fsyncs and renames it, so an existing
// file survives any failure.
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "safetensors_internal.h"

#define ST_HEADER_ALIGN 8                        // data region starts 8-byte aligned

// ---- writer -------------------------------------------------------------------------------------

typedef struct {
  char *name;
  sn_dtype dtype;
  int ndim;           // -1: the caller passed an invalid shape (reported by write)
  int64_t shape[SN_ST_MAX_DIMS];
  int64_t numel;
  const float *data;    // host data, or NULL with a source
  sn_st_source source;  // sn_st_writer_add_source
  const void *source_ctx;
} st_writer_entry;

typedef struct {
  char *key, *value;
} st_meta;

struct sn_st_writer {
  int n;
  st_writer_entry *entries;
  int nmeta;
  st_meta *meta;
};

sn_st_writer *sn_st_writer_new(void) {
  sn_st_writer *w = callocCheck(1, sizeof *w);
  sn_st_writer_metadata(w, "format", "pt");  // what transformers expects in files it loads
  return w;
}

void sn_st_writer_metadata(sn_st_writer *w, const char *key, const char *value) {
  for (int i = 0; i < w->nmeta; i++) {
    if (strcmp(w->meta[i].key, key) != 0) continue;
    free(w->meta[i].value);
    w->meta[i].value = strdupCheck(value);
    return;
  }
  w->meta = reallocCheck(w->meta, (size_t)(w->nmeta + 1) * sizeof *w->meta);
  w->meta[w->nmeta++] = (st_meta){strdupCheck(key), strdupCheck(value)};
}

static void add_entry(sn_st_writer *w, const char *name, sn_dtype dtype, int ndim, const int64_t *shape,
                      const float *data, sn_st_source source, const void *source_ctx) {
  st_writer_entry e = {strdupCheck(name), dtype, ndim, {0}, 1, data, source, source_ctx};
  if (ndim < 0 || ndim > SN_ST_MAX_DIMS) e.ndim = -1;
  for (int i = 0; i < e.ndim; i++) {
    if (shape[i] < 0 || (shape[i] != 0 && e.numel > INT64_MAX / shape[i])) {
      e.ndim = -1;
      break;
    }
    e.shape[i] = shape[i];
    e.numel *= shape[i];
  }
  w->entries = reallocCheck(w->entries, (size_t)(w->n + 1) * sizeof *w->entries);
  w->entries[w->n++] = e;
}

void sn_st_writer_add(sn_st_writer *w, const char *name, sn_dtype dtype, int ndim, const int64_t *shape,
                      const float *data) {
  add_entry(w, name, dtype, ndim, shape, data, NULL, NULL);
}

void sn_st_writer_add_source(sn_st_writer *w, const char *name, sn_dtype dtype, int ndim, const int64_t *shape,
                             sn_st_source source, const void *ctx) {
  add_entry(w, name, dtype, ndim, shape, NULL, source, ctx);
}

void sn_st_writer_free(sn_st_writer *w) {
  if (!w) return;
  for (int i = 0; i < w->n; i++) free(w->entries[i].name);
  for (int i = 0; i < w->nmeta; i++) {
    free(w->meta[i].key);
    free(w->meta[i].value);
  }
  free(w->entries);
  free(w->meta);
  free(w);
}

// The header JSON is built in an sn_strbuf (host/base/common.h).
typedef sn_strbuf st_buf;

static void buf_put(st_buf *b, const char *s, size_t n) { sn_strbuf_append(b, s, n); }

static void buf_puts(st_buf *b, const char *s) { buf_put(b, s, strlen(s)); }

#define buf_printf sn_strbuf_printf

// JSON string with escapes for '"', '\\' and control bytes; UTF-8 passes through.
static void buf_json_string(st_buf *b, const char *s) {
  buf_puts(b, "\"");
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      char esc[2] = {'\\', (char)*p};
      buf_put(b, esc, 2);
    } else if (*p < 0x20) {
      buf_printf(b, "\\u%04x", *p);
    } else {
      buf_put(b, (const char *)p, 1);
    }
  }
  buf_puts(b, "\"");
}

static int check_writer_entries(const sn_st_writer *w, const char *path, char *err, size_t errlen) {
  for (int i = 0; i < w->n; i++) {
    const st_writer_entry *e = &w->entries[i];
    char q[QUOTABLE_BUF];
    sn_st_quotable(e->name, q, sizeof q);
    if (!e->name[0] || strcmp(e->name, ST_METADATA_KEY) == 0 ||
        !sn_st_utf8_valid((const unsigned char *)e->name, strlen(e->name)))
      return sn_st_fail(err, errlen, "%s: cannot write tensor '%s': the name must be non-empty UTF-8, not "
                        "\"" ST_METADATA_KEY "\"", path, q);
    if (e->ndim < 0) return sn_st_fail(err, errlen, "%s: cannot write tensor '%s': invalid shape", path, q);
    if (!sn_st_dtype_name(e->dtype))
      return sn_st_fail(err, errlen, "%s: cannot write tensor '%s': unknown dtype", path, q);
    if (e->numel > 0 && !e->data && !e->source)
      return sn_st_fail(err, errlen, "%s: cannot write tensor '%s': no data", path, q);
    for (int j = 0; j < i; j++)
      if (strcmp(w->entries[j].name, e->name) == 0)
        return sn_st_fail(err, errlen, "%s: cannot write tensor '%s' twice", path, q);
  }
  for (int i = 0; i < w->nmeta; i++)
    if (!sn_st_utf8_valid((const unsigned char *)w->meta[i].key, strlen(w->meta[i].key)) ||
        !sn_st_utf8_valid((const unsigned char *)w->meta[i].value, strlen(w->meta[i].value)))
      return sn_st_fail(err, errlen, "%s: cannot write metadata '%s': not valid UTF-8", path, w->meta[i].key);
  return 0;
}

// Header JSON padded with spaces so that the data region starts 8-byte aligned. Tensors are packed
// back to back in insertion order (the safetensors library rejects gaps between tensors).
static void build_header(const sn_st_writer *w, st_buf *b) {
  buf_puts(b, "{\"" ST_METADATA_KEY "\":{");
  for (int i = 0; i < w->nmeta; i++) {
    if (i) buf_puts(b, ",");
    buf_json_string(b, w->meta[i].key);
    buf_puts(b, ":");
    buf_json_string(b, w->meta[i].value);
  }
  buf_puts(b, "}");
  uint64_t offset = 0;
  for (int i = 0; i < w->n; i++) {
    const st_writer_entry *e = &w->entries[i];
    uint64_t nbytes = (uint64_t)e->numel * (uint64_t)sn_dtype_size(e->dtype);
    buf_puts(b, ",");
    buf_json_string(b, e->name);
    buf_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", sn_st_dtype_name(e->dtype));
    for (int d = 0; d < e->ndim; d++) buf_printf(b, "%s%" PRId64, d ? "," : "", e->shape[d]);
    buf_printf(b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset, offset + nbytes);
    offset += nbytes;
  }
  buf_puts(b, "}");
  while ((ST_LEN_PREFIX_BYTES + b->len) % ST_HEADER_ALIGN) buf_puts(b, " ");
}

static int write_full(int fd, const void *src, size_t n) {
  const char *p = src;
  while (n > 0) {
    ssize_t put = write(fd, p, n);
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) return -1;
    p += put;
    n -= (size_t)put;
  }
  return 0;
}

// One chunk of a tensor (at most ST_IO_CHUNK_ELEMS), as dtype: fp32 as it is, 2-byte dtypes through
// chunk16.
static int write_chunk(int fd, sn_dtype dtype, const float *src, size_t n, uint16_t *chunk16) {
  if (dtype == SN_DTYPE_F32) return write_full(fd, src, n * sizeof(float));
  for (size_t i = 0; i < n; i++) chunk16[i] = dtype == SN_DTYPE_BF16 ? sn_f32_to_bf16(src[i]) : sn_f32_to_f16(src[i]);
  return write_full(fd, chunk16, n * sizeof *chunk16);
}

// A tensor's data, chunk by chunk: from its host data, or asked of its source into chunk32.
static int write_tensor_data(int fd, const st_writer_entry *e, uint16_t *chunk16, float *chunk32) {
  for (int64_t done = 0; done < e->numel;) {
    const size_t n = (size_t)SN_MIN((int64_t)ST_IO_CHUNK_ELEMS, e->numel - done);
    const float *src = e->data ? e->data + done : chunk32;
    if (!e->data) e->source(e->source_ctx, done, (int64_t)n, chunk32);
    if (write_chunk(fd, e->dtype, src, n, chunk16) != 0) return -1;
    done += (int64_t)n;
  }
  return 0;
}

static int write_stream(int fd, const sn_st_writer *w, const st_buf *header) {
  unsigned char prefix[ST_LEN_PREFIX_BYTES];
  for (int i = 0; i < ST_LEN_PREFIX_BYTES; i++) prefix[i] = (unsigned char)((uint64_t)header->len >> (8 * i));
  if (write_full(fd, prefix, sizeof prefix) != 0 || write_full(fd, header->s, header->len) != 0) return -1;
  uint16_t *chunk16 = mallocCheck(ST_IO_CHUNK_ELEMS * sizeof *chunk16);
  float *chunk32 = mallocCheck(ST_IO_CHUNK_ELEMS * sizeof *chunk32);
  int rc = 0;
  for (int i = 0; i < w->n && rc == 0; i++) rc = write_tensor_data(fd, &w->entries[i], chunk16, chunk32);
  free(chunk16), free(chunk32);
  return rc;
}

int sn_st_writer_write(sn_st_writer *w, const char *path, char *err, size_t errlen) {
  if (check_writer_entries(w, path, err, errlen)) return -1;
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
    return sn_st_fail(err, errlen, "%s: path too long", path);
  st_buf header = {0};
  build_header(w, &header);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int rc = fd < 0 ? -1 : write_stream(fd, w, &header);
  if (rc == 0) rc = fsync(fd);
  int saved = errno;
  if (fd >= 0 && close(fd) != 0 && rc == 0) rc = -1, saved = errno;
  if (rc == 0 && rename(tmp, path) != 0) rc = -1, saved = errno;
  free(header.s);
  if (rc != 0) {
    if (fd >= 0) unlink(tmp);
    return sn_st_fail(err, errlen, "%s: cannot write%s%s: %s", path, fd < 0 ? " the temp file " : "",
                      fd < 0 ? tmp : "", strerror(saved));
  }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  if (sn_fsync_dir(dirname(dir)) != 0)
    return sn_st_fail(err, errlen, "%s: written, but syncing its folder failed: %s", path, strerror(errno));
  return 0;
}
