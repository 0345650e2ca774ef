// safetensors header parsing: validates every field of one file's header before anything trusts it
// (the fuzz target drives sn_st_parse_header directly), plus the shared messages and dtype table.
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "common.h"
#include "safetensors_internal.h"

#define ST_MAX_HEADER_BYTES (100ull << 20)       // the safetensors library's own limit
#define ST_MAX_JSON_INT (1ull << 53)             // larger integers are not exact in a JSON double

// ---- messages -----------------------------------------------------------------------------------

int sn_st_fail(char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

// Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
int sn_st_utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80) { i++; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (n - i < len) return 0;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    i += len;
  }
  return 1;
}

// A name made safe to quote in one message line: control bytes (and all high bytes of a name that
// is not UTF-8) become \xNN; long names are cut.
const char *sn_st_quotable(const char *name, char *buf, size_t bufsize) {
  size_t n = strlen(name);
  int utf8 = sn_st_utf8_valid((const unsigned char *)name, n);
  size_t o = 0;
  for (size_t i = 0; i < n && o + 8 < bufsize; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c < 0x20 || c == 0x7F || (c >= 0x80 && !utf8)) o += (size_t)snprintf(buf + o, bufsize - o, "\\x%02X", c);
    else buf[o++] = (char)c;
    if (o >= ST_MSG_NAME_MAX) {
      o += (size_t)snprintf(buf + o, bufsize - o, "...");
      break;
    }
  }
  buf[o] = '\0';
  return buf;
}

// ---- dtypes -------------------------------------------------------------------------------------

typedef struct {
  const char *name;
  int supported;    // converted to fp32 by the reader
  int is_integer;   // integer buffers such as position_ids may be skipped
  sn_dtype dtype;
  int size;
} st_dtype_info;

static const st_dtype_info ST_DTYPES[] = {
    {"F32", 1, 0, SN_DTYPE_F32, 4},  {"BF16", 1, 0, SN_DTYPE_BF16, 2}, {"F16", 1, 0, SN_DTYPE_F16, 2},
    {"F64", 0, 0, SN_DTYPE_F32, 8},  {"I64", 0, 1, SN_DTYPE_F32, 8},   {"I32", 0, 1, SN_DTYPE_F32, 4},
    {"I16", 0, 1, SN_DTYPE_F32, 2},  {"I8", 0, 1, SN_DTYPE_F32, 1},    {"U64", 0, 1, SN_DTYPE_F32, 8},
    {"U32", 0, 1, SN_DTYPE_F32, 4},  {"U16", 0, 1, SN_DTYPE_F32, 2},   {"U8", 0, 1, SN_DTYPE_F32, 1},
    {"BOOL", 0, 0, SN_DTYPE_F32, 1}, {"F8_E4M3", 0, 0, SN_DTYPE_F32, 1}, {"F8_E5M2", 0, 0, SN_DTYPE_F32, 1},
};
#define ST_SUPPORTED_LIST "F32, BF16, F16"

static const st_dtype_info *dtype_by_name(const char *s) {
  for (size_t i = 0; i < SN_ARRAY_LEN(ST_DTYPES); i++)
    if (strcmp(ST_DTYPES[i].name, s) == 0) return &ST_DTYPES[i];
  return NULL;
}

const char *sn_st_dtype_name(sn_dtype d) {
  for (size_t i = 0; i < SN_ARRAY_LEN(ST_DTYPES); i++)
    if (ST_DTYPES[i].supported && ST_DTYPES[i].dtype == d) return ST_DTYPES[i].name;
  return NULL;
}

// Old BERT checkpoints carry the integer buffer "embeddings.position_ids" (0, 1, 2, ...): it is not
// a parameter, so it is skipped rather than rejected.
static int is_skippable_buffer(const char *name, const st_dtype_info *d) {
  static const char suffix[] = "position_ids";
  size_t n = strlen(name), k = sizeof suffix - 1;
  return d && d->is_integer && n >= k && strcmp(name + n - k, suffix) == 0;
}

// ---- header parsing -----------------------------------------------------------------------------

typedef struct {
  const char *path;
  char *err;
  size_t errlen;
} st_ctx;

// A non-negative JSON integer no larger than max (exact in a double).
static int json_uint(const cJSON *item, uint64_t max, uint64_t *out) {
  if (!cJSON_IsNumber(item)) return 0;
  double v = item->valuedouble;
  if (!(v >= 0.0) || v != floor(v) || v > (double)max) return 0;
  *out = (uint64_t)v;
  return 1;
}

// Lists the distinct unsupported dtype strings of a header into buf ("I64, U8").
static void list_unsupported_dtypes(const cJSON *root, char *buf, size_t bufsize) {
  size_t o = 0;
  buf[0] = '\0';
  for (const cJSON *e = root->child; e; e = e->next) {
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(d) || !d->valuestring) continue;
    const st_dtype_info *info = dtype_by_name(d->valuestring);
    if (info && info->supported) continue;
    if (info && is_skippable_buffer(e->string ? e->string : "", info)) continue;
    char q[QUOTABLE_BUF];
    sn_st_quotable(d->valuestring, q, sizeof q);
    if (strstr(buf, q)) continue;  // already listed (a prefix collision only shortens the list)
    if (o + strlen(q) + 3 >= bufsize) break;
    o += (size_t)snprintf(buf + o, bufsize - o, "%s%s", o ? ", " : "", q);
  }
}

static int parse_dtype(const st_ctx *c, const cJSON *root, const cJSON *entry, const char *qname,
                       const st_dtype_info **out) {
  const cJSON *d = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
  if (!d) return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': missing \"dtype\"", c->path, qname);
  if (!cJSON_IsString(d) || !d->valuestring)
    return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': \"dtype\" must be a string such as \"F32\"", c->path, qname);
  const st_dtype_info *info = dtype_by_name(d->valuestring);
  if (!info || (!info->supported && !is_skippable_buffer(entry->string, info))) {
    char found[256], q[QUOTABLE_BUF];
    list_unsupported_dtypes(root, found, sizeof found);
    return sn_st_fail(c->err, c->errlen,
                      "%s: tensor '%s' has dtype '%s', which is not supported (unsupported dtypes in this "
                      "file: %s; supported: " ST_SUPPORTED_LIST ")",
                      c->path, qname, sn_st_quotable(d->valuestring, q, sizeof q), found);
  }
  *out = info;
  return 0;
}

static int parse_shape(const st_ctx *c, const cJSON *entry, const char *qname, sn_st_tensor *t) {
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(entry, "shape");
  if (!s) return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': missing \"shape\"", c->path, qname);
  if (!cJSON_IsArray(s))
    return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': \"shape\" must be an array of integers", c->path, qname);
  int ndim = cJSON_GetArraySize(s);
  if (ndim > SN_ST_MAX_DIMS)
    return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': shape has %d dimensions (at most %d supported)",
                      c->path, qname, ndim, SN_ST_MAX_DIMS);
  t->ndim = 0;
  t->numel = 1;
  for (const cJSON *dim = s->child; dim; dim = dim->next) {
    uint64_t v;
    if (!json_uint(dim, ST_MAX_JSON_INT, &v))
      return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': shape[%d] must be a non-negative integer",
                        c->path, qname, t->ndim);
    if (v != 0 && (uint64_t)t->numel > (uint64_t)INT64_MAX / v)
      return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': shape overflows 64-bit element count", c->path, qname);
    t->shape[t->ndim++] = (int64_t)v;
    t->numel *= (int64_t)v;
  }
  return 0;
}

static int parse_offsets(const st_ctx *c, const cJSON *entry, const char *qname, uint64_t data_size,
                         uint64_t *begin, uint64_t *end) {
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
  if (!o) return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': missing \"data_offsets\"", c->path, qname);
  if (!cJSON_IsArray(o) || cJSON_GetArraySize(o) != 2 || !json_uint(o->child, ST_MAX_JSON_INT, begin) ||
      !json_uint(o->child->next, ST_MAX_JSON_INT, end))
    return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': \"data_offsets\" must be [begin, end] with non-negative "
                      "integers", c->path, qname);
  if (*end < *begin)
    return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': data_offsets end %" PRIu64 " < begin %" PRIu64,
                      c->path, qname, *end, *begin);
  if (*end > data_size)
    return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end of "
                      "the data region (%" PRIu64 " bytes; file truncated?)", c->path, qname, *begin, *end, data_size);
  return 0;
}

// Fills t from one header entry; *skip = 1 for integer buffers that are not parameters.
static int parse_tensor_entry(const st_ctx *c, const cJSON *root, const cJSON *entry, uint64_t data_start,
                              uint64_t data_size, sn_st_tensor *t, int *skip) {
  char qname[QUOTABLE_BUF];
  sn_st_quotable(entry->string, qname, sizeof qname);
  if (!sn_st_utf8_valid((const unsigned char *)entry->string, strlen(entry->string)))
    return sn_st_fail(c->err, c->errlen, "%s: tensor name '%s' is not valid UTF-8", c->path, qname);
  if (!cJSON_IsObject(entry))
    return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': entry must be an object with dtype, shape, data_offsets",
                      c->path, qname);
  const st_dtype_info *info = NULL;
  uint64_t begin = 0, end = 0;
  if (parse_dtype(c, root, entry, qname, &info) || parse_shape(c, entry, qname, t) ||
      parse_offsets(c, entry, qname, data_size, &begin, &end))
    return -1;
  uint64_t expected = (uint64_t)t->numel * (uint64_t)info->size;  // wraps only when numel is past the check
  if ((uint64_t)t->numel > ST_MAX_JSON_INT || expected != end - begin)
    return sn_st_fail(c->err, c->errlen, "%s: tensor '%s': shape has %" PRId64 " elements of %s (%d bytes each) but "
                      "data_offsets span %" PRIu64 " bytes", c->path, qname, t->numel, info->name, info->size,
                      end - begin);
  *skip = !info->supported;
  t->dtype = info->dtype;
  t->offset = data_start + begin;
  t->nbytes = end - begin;
  return 0;
}

static int check_metadata(const st_ctx *c, const cJSON *meta) {
  if (!cJSON_IsObject(meta))
    return sn_st_fail(c->err, c->errlen, "%s: \"" ST_METADATA_KEY "\" must be an object of string -> string", c->path);
  for (const cJSON *kv = meta->child; kv; kv = kv->next) {
    char q[QUOTABLE_BUF];
    sn_st_quotable(kv->string, q, sizeof q);
    if (!cJSON_IsString(kv) || !kv->valuestring)
      return sn_st_fail(c->err, c->errlen, "%s: \"" ST_METADATA_KEY "\" key '%s' must map to a string", c->path, q);
    if (!sn_st_utf8_valid((const unsigned char *)kv->string, strlen(kv->string)) ||
        !sn_st_utf8_valid((const unsigned char *)kv->valuestring, strlen(kv->valuestring)))
      return sn_st_fail(c->err, c->errlen, "%s: \"" ST_METADATA_KEY "\" entry '%s' is not valid UTF-8", c->path, q);
  }
  return 0;
}

static int cmp_str_ptr(const void *x, const void *y) {
  return strcmp(*(const char *const *)x, *(const char *const *)y);
}

// Duplicate names among this header's keys and the tensors already in the archive (other shards).
static int check_duplicates(const st_ctx *c, const sn_st_archive *a, int first_new, const cJSON *root) {
  int n = first_new + cJSON_GetArraySize(root);
  const char **names = mallocCheck((size_t)n * sizeof *names);
  int k = 0;
  for (int i = 0; i < first_new; i++) names[k++] = a->tensors[i].name;
  for (const cJSON *e = root->child; e; e = e->next) names[k++] = e->string;
  qsort(names, (size_t)k, sizeof *names, cmp_str_ptr);
  int rc = 0;
  for (int i = 1; i < k && rc == 0; i++) {
    if (strcmp(names[i - 1], names[i]) != 0) continue;
    char q[QUOTABLE_BUF];
    rc = sn_st_fail(c->err, c->errlen, "%s: tensor name '%s' appears twice%s", c->path,
                    sn_st_quotable(names[i], q, sizeof q), first_new ? " (in this file or another shard)" : "");
  }
  free(names);
  return rc;
}

static int cmp_tensor_offset(const void *x, const void *y) {
  const sn_st_tensor *a = *(const sn_st_tensor *const *)x, *b = *(const sn_st_tensor *const *)y;
  if (a->offset != b->offset) return a->offset < b->offset ? -1 : 1;
  return a->nbytes < b->nbytes ? -1 : a->nbytes > b->nbytes;
}

// Tensors of one file must not share bytes (empty tensors occupy none).
static int check_overlaps(const st_ctx *c, sn_st_tensor *ts, int n) {
  if (n < 2) return 0;
  sn_st_tensor **order = mallocCheck((size_t)n * sizeof *order);
  for (int i = 0; i < n; i++) order[i] = &ts[i];
  qsort(order, (size_t)n, sizeof *order, cmp_tensor_offset);
  int rc = 0;
  const sn_st_tensor *prev = NULL;
  for (int i = 0; i < n && rc == 0; i++) {
    const sn_st_tensor *t = order[i];
    if (t->nbytes == 0) continue;
    if (prev && t->offset < prev->offset + prev->nbytes) {
      char q1[QUOTABLE_BUF], q2[QUOTABLE_BUF];
      rc = sn_st_fail(c->err, c->errlen, "%s: tensors '%s' and '%s' overlap in the data region", c->path,
                      sn_st_quotable(prev->name, q1, sizeof q1), sn_st_quotable(t->name, q2, sizeof q2));
    }
    prev = t;
  }
  free(order);
  return rc;
}

static void drop_tensors_from(sn_st_archive *a, int first) {
  for (int i = first; i < a->ntensors; i++) free(a->tensors[i].name);
  a->ntensors = first;
}

// Only whitespace may follow the JSON object (writers pad the header with spaces).
static int only_whitespace(const char *p, const char *end) {
  for (; p < end; p++)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') return 0;
  return 1;
}

static cJSON *parse_header_json(const st_ctx *c, const char *buf, size_t header_len) {
  const char *parse_end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(buf, header_len, &parse_end, 0);
  if (!root) {
    size_t at = (parse_end && parse_end >= buf && parse_end <= buf + header_len) ? (size_t)(parse_end - buf) : 0;
    sn_st_fail(c->err, c->errlen, "%s: safetensors header (%zu bytes) is not valid JSON (error near byte %zu)",
               c->path, header_len, at);
    return NULL;
  }
  if (!only_whitespace(parse_end, buf + header_len)) {
    sn_st_fail(c->err, c->errlen, "%s: safetensors header has data after the JSON object (byte %zu)", c->path,
               (size_t)(parse_end - buf));
  } else if (!cJSON_IsObject(root)) {
    sn_st_fail(c->err, c->errlen, "%s: safetensors header is not a JSON object", c->path);
  } else {
    return root;
  }
  cJSON_Delete(root);
  return NULL;
}

// The archive has no capacity field: its array holds max(16, next power of two >= ntensors)
// entries, so it grows by doubling exactly when ntensors reaches a power of two. Memory follows the
// valid entries, not the entry count an arbitrary header claims.
#define ST_MIN_TENSOR_CAPACITY 16
static void append_tensor(sn_st_archive *a, const sn_st_tensor *t) {
  int n = a->ntensors;
  if (n == 0 && !a->tensors) a->tensors = mallocCheck(ST_MIN_TENSOR_CAPACITY * sizeof *a->tensors);
  else if (n >= ST_MIN_TENSOR_CAPACITY && (n & (n - 1)) == 0)
    a->tensors = reallocCheck(a->tensors, 2 * (size_t)n * sizeof *a->tensors);
  a->tensors[a->ntensors++] = *t;
}

static int parse_entries(const st_ctx *c, sn_st_archive *a, const cJSON *root, uint64_t data_start,
                         uint64_t data_size, int file_index) {
  int nmeta = 0;
  for (const cJSON *e = root->child; e; e = e->next) {
    if (strcmp(e->string, ST_METADATA_KEY) == 0) {
      if (++nmeta > 1) return sn_st_fail(c->err, c->errlen, "%s: \"" ST_METADATA_KEY "\" appears twice", c->path);
      if (check_metadata(c, e)) return -1;
      continue;
    }
    sn_st_tensor t = {0};
    int skip = 0;
    if (parse_tensor_entry(c, root, e, data_start, data_size, &t, &skip)) return -1;
    if (skip) continue;
    t.name = strdupCheck(e->string);
    t.file_index = file_index;
    append_tensor(a, &t);
  }
  return 0;
}

// The 8-byte length prefix must be sane before anything allocates or reads that many bytes.
int sn_st_check_header_len(const char *path, uint64_t header_len, uint64_t file_size, char *err, size_t errlen) {
  if (header_len > ST_MAX_HEADER_BYTES)
    return sn_st_fail(err, errlen, "%s: safetensors header length %" PRIu64 " is absurd (limit %llu bytes): not a "
                      "safetensors file?", path, header_len, ST_MAX_HEADER_BYTES);
  if (file_size < ST_LEN_PREFIX_BYTES || header_len > file_size - ST_LEN_PREFIX_BYTES)
    return sn_st_fail(err, errlen, "%s: safetensors header length %" PRIu64 " runs past the end of the file (%" PRIu64
                      " bytes; truncated?)", path, header_len, file_size);
  return 0;
}

int sn_st_parse_header(sn_st_archive *a, const char *buf, size_t header_len, uint64_t file_size,
                       int file_index, const char *path, char *err, size_t errlen) {
  st_ctx c = {path, err, errlen};
  if (sn_st_check_header_len(path, header_len, file_size, err, errlen)) return -1;
  cJSON *root = parse_header_json(&c, buf, header_len);
  if (!root) return -1;
  uint64_t data_start = ST_LEN_PREFIX_BYTES + header_len, data_size = file_size - data_start;
  int first_new = a->ntensors;
  int rc = parse_entries(&c, a, root, data_start, data_size, file_index);
  if (rc == 0) rc = check_duplicates(&c, a, first_new, root);
  if (rc == 0) rc = check_overlaps(&c, a->tensors + first_new, a->ntensors - first_new);
  if (rc != 0) drop_tensors_from(a, first_new);
  cJSON_Delete(root);
  return rc;
}
