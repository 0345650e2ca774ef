// safetensors reader and writer. The reader validates every header field before anything trusts
// it (the fuzz target drives sn_st_parse_header directly); tensor data is read with pread at 64-bit
// offsets, so files past 2 GB work. The writer streams tensor data to a temp file, fsyncs and
// renames it, so an existing file survives any failure.
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cJSON.h"
#include "common.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader copies it as host memory"
#endif

#define ST_LEN_PREFIX_BYTES 8                   // u64 little-endian header length
#define ST_MAX_HEADER_BYTES (100ull << 20)       // the safetensors library's own limit
#define ST_MAX_JSON_INT (1ull << 53)             // larger integers are not exact in a JSON double
#define ST_HEADER_ALIGN 8                        // data region starts 8-byte aligned
#define ST_IO_CHUNK_ELEMS (1u << 20)             // conversion buffer for 2-byte dtypes
#define ST_MSG_NAME_MAX 160                      // longest tensor name quoted in a message
#define ST_SINGLE_FILE "model.safetensors"
#define ST_INDEX_FILE "model.safetensors.index.json"
#define ST_METADATA_KEY "__metadata__"

// ---- messages -----------------------------------------------------------------------------------

static int st_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int st_fail(char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

// Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
static int utf8_valid(const unsigned char *s, size_t n) {
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
static const char *quotable(const char *name, char *buf, size_t bufsize) {
  size_t n = strlen(name);
  int utf8 = utf8_valid((const unsigned char *)name, n);
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
#define QUOTABLE_BUF (ST_MSG_NAME_MAX + 16)

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

static const char *dtype_name(sn_dtype d) {
  for (size_t i = 0; i < SN_ARRAY_LEN(ST_DTYPES); i++)
    if (ST_DTYPES[i].supported && ST_DTYPES[i].dtype == d) return ST_DTYPES[i].name;
  return NULL;
}

static int dtype_size(sn_dtype d) { return d == SN_DTYPE_F32 ? 4 : 2; }

// Old BERT checkpoints carry the integer buffer "embeddings.position_ids" (0, 1, 2, ...): it is not
// a parameter, so it is skipped rather than rejected.
static int is_skippable_buffer(const char *name, const st_dtype_info *d) {
  static const char suffix[] = "position_ids";
  size_t n = strlen(name), k = sizeof suffix - 1;
  return d && d->is_integer && n >= k && strcmp(name + n - k, suffix) == 0;
}

// ---- fp32 <-> bf16 / f16 ------------------------------------------------------------------------

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

#define F32_ABS_MASK 0x7FFFFFFFu
#define F32_INF_BITS 0x7F800000u
#define BF16_QUIET_BIT 0x0040u
#define F16_SIGN 0x8000u
#define F16_INF 0x7C00u
#define F16_QUIET_BIT 0x0200u
#define F16_MANT_MASK 0x03FFu
#define F32_TO_F16_BIAS (127 - 15)  // exponent bias difference
#define F32_F16_MANT_SHIFT 13       // 23 - 10 mantissa bits dropped

uint16_t sn_f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & F32_ABS_MASK) > F32_INF_BITS) return (uint16_t)((u >> 16) | BF16_QUIET_BIT);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest, ties to even (overflow carries into inf)
  return (uint16_t)(u >> 16);
}

float sn_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// Rounds `value >> shift` to nearest, ties to even.
static uint32_t shift_round_even(uint32_t value, int shift) {
  if (shift >= 32) return 0;
  uint32_t kept = value >> shift;
  uint32_t rest = value & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (kept & 1u))) kept++;
  return kept;
}

uint16_t sn_f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & F16_SIGN);
  uint32_t a = u & F32_ABS_MASK;
  if (a >= F32_INF_BITS) {  // inf stays inf; NaN stays a quiet NaN with its top payload bits
    if (a == F32_INF_BITS) return sign | F16_INF;
    return (uint16_t)(sign | F16_INF | F16_QUIET_BIT | ((a >> F32_F16_MANT_SHIFT) & F16_MANT_MASK));
  }
  int exp = (int)(a >> 23) - F32_TO_F16_BIAS;
  if (exp >= 31) return sign | F16_INF;                    // >= 2^16: past the largest half
  if (exp <= 0) {                                          // half subnormal (or zero)
    if (exp < -10) return sign;                            // below 2^-25: rounds to zero
    uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;           // with the implicit bit
    return (uint16_t)(sign | shift_round_even(mant, 14 - exp));  // units of 2^-24
  }
  // Normal: keep 10 mantissa bits; a carry out of the mantissa bumps the exponent (up to inf).
  uint32_t h = ((uint32_t)exp << 10) | ((a >> F32_F16_MANT_SHIFT) & F16_MANT_MASK);
  uint32_t rest = a & ((1u << F32_F16_MANT_SHIFT) - 1u), half = 1u << (F32_F16_MANT_SHIFT - 1);
  if (rest > half || (rest == half && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

float sn_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & F16_SIGN) << 16;
  int exp = (h >> 10) & 0x1F;
  uint32_t mant = h & F16_MANT_MASK;
  if (exp == 0x1F) return bits_f32(sign | F32_INF_BITS | (mant << F32_F16_MANT_SHIFT));
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);
    exp = 1;  // subnormal: normalise so the leading 1 becomes the implicit bit
    while (!(mant & 0x400u)) {
      mant <<= 1;
      exp--;
    }
    mant &= F16_MANT_MASK;
  }
  return bits_f32(sign | ((uint32_t)(exp + F32_TO_F16_BIAS) << 23) | (mant << F32_F16_MANT_SHIFT));
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
    quotable(d->valuestring, q, sizeof q);
    if (strstr(buf, q)) continue;  // already listed (a prefix collision only shortens the list)
    if (o + strlen(q) + 3 >= bufsize) break;
    o += (size_t)snprintf(buf + o, bufsize - o, "%s%s", o ? ", " : "", q);
  }
}

static int parse_dtype(const st_ctx *c, const cJSON *root, const cJSON *entry, const char *qname,
                       const st_dtype_info **out) {
  const cJSON *d = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
  if (!d) return st_fail(c->err, c->errlen, "%s: tensor '%s': missing \"dtype\"", c->path, qname);
  if (!cJSON_IsString(d) || !d->valuestring)
    return st_fail(c->err, c->errlen, "%s: tensor '%s': \"dtype\" must be a string such as \"F32\"", c->path, qname);
  const st_dtype_info *info = dtype_by_name(d->valuestring);
  if (!info || (!info->supported && !is_skippable_buffer(entry->string, info))) {
    char found[256], q[QUOTABLE_BUF];
    list_unsupported_dtypes(root, found, sizeof found);
    return st_fail(c->err, c->errlen,
                   "%s: tensor '%s' has dtype '%s', which is not supported (unsupported dtypes in this "
                   "file: %s; supported: " ST_SUPPORTED_LIST ")",
                   c->path, qname, quotable(d->valuestring, q, sizeof q), found);
  }
  *out = info;
  return 0;
}

static int parse_shape(const st_ctx *c, const cJSON *entry, const char *qname, sn_st_tensor *t) {
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(entry, "shape");
  if (!s) return st_fail(c->err, c->errlen, "%s: tensor '%s': missing \"shape\"", c->path, qname);
  if (!cJSON_IsArray(s))
    return st_fail(c->err, c->errlen, "%s: tensor '%s': \"shape\" must be an array of integers", c->path, qname);
  int ndim = cJSON_GetArraySize(s);
  if (ndim > SN_ST_MAX_DIMS)
    return st_fail(c->err, c->errlen, "%s: tensor '%s': shape has %d dimensions (at most %d supported)",
                   c->path, qname, ndim, SN_ST_MAX_DIMS);
  t->ndim = 0;
  t->numel = 1;
  for (const cJSON *dim = s->child; dim; dim = dim->next) {
    uint64_t v;
    if (!json_uint(dim, ST_MAX_JSON_INT, &v))
      return st_fail(c->err, c->errlen, "%s: tensor '%s': shape[%d] must be a non-negative integer",
                     c->path, qname, t->ndim);
    if (v != 0 && (uint64_t)t->numel > (uint64_t)INT64_MAX / v)
      return st_fail(c->err, c->errlen, "%s: tensor '%s': shape overflows 64-bit element count", c->path, qname);
    t->shape[t->ndim++] = (int64_t)v;
    t->numel *= (int64_t)v;
  }
  return 0;
}

static int parse_offsets(const st_ctx *c, const cJSON *entry, const char *qname, uint64_t data_size,
                         uint64_t *begin, uint64_t *end) {
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
  if (!o) return st_fail(c->err, c->errlen, "%s: tensor '%s': missing \"data_offsets\"", c->path, qname);
  if (!cJSON_IsArray(o) || cJSON_GetArraySize(o) != 2 || !json_uint(o->child, ST_MAX_JSON_INT, begin) ||
      !json_uint(o->child->next, ST_MAX_JSON_INT, end))
    return st_fail(c->err, c->errlen, "%s: tensor '%s': \"data_offsets\" must be [begin, end] with non-negative "
                   "integers", c->path, qname);
  if (*end < *begin)
    return st_fail(c->err, c->errlen, "%s: tensor '%s': data_offsets end %" PRIu64 " < begin %" PRIu64,
                   c->path, qname, *end, *begin);
  if (*end > data_size)
    return st_fail(c->err, c->errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end of "
                   "the data region (%" PRIu64 " bytes; file truncated?)", c->path, qname, *begin, *end, data_size);
  return 0;
}

// Fills t from one header entry; *skip = 1 for integer buffers that are not parameters.
static int parse_tensor_entry(const st_ctx *c, const cJSON *root, const cJSON *entry, uint64_t data_start,
                              uint64_t data_size, sn_st_tensor *t, int *skip) {
  char qname[QUOTABLE_BUF];
  quotable(entry->string, qname, sizeof qname);
  if (!utf8_valid((const unsigned char *)entry->string, strlen(entry->string)))
    return st_fail(c->err, c->errlen, "%s: tensor name '%s' is not valid UTF-8", c->path, qname);
  if (!cJSON_IsObject(entry))
    return st_fail(c->err, c->errlen, "%s: tensor '%s': entry must be an object with dtype, shape, data_offsets",
                   c->path, qname);
  const st_dtype_info *info = NULL;
  uint64_t begin = 0, end = 0;
  if (parse_dtype(c, root, entry, qname, &info) || parse_shape(c, entry, qname, t) ||
      parse_offsets(c, entry, qname, data_size, &begin, &end))
    return -1;
  uint64_t expected = (uint64_t)t->numel * (uint64_t)info->size;  // wraps only when numel is past the check
  if ((uint64_t)t->numel > ST_MAX_JSON_INT || expected != end - begin)
    return st_fail(c->err, c->errlen, "%s: tensor '%s': shape has %" PRId64 " elements of %s (%d bytes each) but "
                   "data_offsets span %" PRIu64 " bytes", c->path, qname, t->numel, info->name, info->size, end - begin);
  *skip = !info->supported;
  t->dtype = info->dtype;
  t->offset = data_start + begin;
  t->nbytes = end - begin;
  return 0;
}

static int check_metadata(const st_ctx *c, const cJSON *meta) {
  if (!cJSON_IsObject(meta))
    return st_fail(c->err, c->errlen, "%s: \"" ST_METADATA_KEY "\" must be an object of string -> string", c->path);
  for (const cJSON *kv = meta->child; kv; kv = kv->next) {
    char q[QUOTABLE_BUF];
    quotable(kv->string, q, sizeof q);
    if (!cJSON_IsString(kv) || !kv->valuestring)
      return st_fail(c->err, c->errlen, "%s: \"" ST_METADATA_KEY "\" key '%s' must map to a string", c->path, q);
    if (!utf8_valid((const unsigned char *)kv->string, strlen(kv->string)) ||
        !utf8_valid((const unsigned char *)kv->valuestring, strlen(kv->valuestring)))
      return st_fail(c->err, c->errlen, "%s: \"" ST_METADATA_KEY "\" entry '%s' is not valid UTF-8", c->path, q);
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
    rc = st_fail(c->err, c->errlen, "%s: tensor name '%s' appears twice%s", c->path, quotable(names[i], q, sizeof q),
                 first_new ? " (in this file or another shard)" : "");
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
      rc = st_fail(c->err, c->errlen, "%s: tensors '%s' and '%s' overlap in the data region", c->path,
                   quotable(prev->name, q1, sizeof q1), quotable(t->name, q2, sizeof q2));
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
    st_fail(c->err, c->errlen, "%s: safetensors header (%zu bytes) is not valid JSON (error near byte %zu)",
            c->path, header_len, at);
    return NULL;
  }
  if (!only_whitespace(parse_end, buf + header_len)) {
    st_fail(c->err, c->errlen, "%s: safetensors header has data after the JSON object (byte %zu)", c->path,
            (size_t)(parse_end - buf));
  } else if (!cJSON_IsObject(root)) {
    st_fail(c->err, c->errlen, "%s: safetensors header is not a JSON object", c->path);
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
      if (++nmeta > 1) return st_fail(c->err, c->errlen, "%s: \"" ST_METADATA_KEY "\" appears twice", c->path);
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
static int check_header_len(const char *path, uint64_t header_len, uint64_t file_size, char *err, size_t errlen) {
  if (header_len > ST_MAX_HEADER_BYTES)
    return st_fail(err, errlen, "%s: safetensors header length %" PRIu64 " is absurd (limit %llu bytes): not a "
                   "safetensors file?", path, header_len, ST_MAX_HEADER_BYTES);
  if (file_size < ST_LEN_PREFIX_BYTES || header_len > file_size - ST_LEN_PREFIX_BYTES)
    return st_fail(err, errlen, "%s: safetensors header length %" PRIu64 " runs past the end of the file (%" PRIu64
                   " bytes; truncated?)", path, header_len, file_size);
  return 0;
}

int sn_st_parse_header(sn_st_archive *a, const char *buf, size_t header_len, uint64_t file_size,
                       int file_index, const char *path, char *err, size_t errlen) {
  st_ctx c = {path, err, errlen};
  if (check_header_len(path, header_len, file_size, err, errlen)) return -1;
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
  if (fd < 0) return st_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  unsigned char prefix[ST_LEN_PREFIX_BYTES];
  int rc = -1;
  char *header = NULL;
  if (fstat(fd, &st) != 0) {
    st_fail(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    st_fail(err, errlen, "%s: not a regular file", path);
  } else if ((uint64_t)st.st_size < ST_LEN_PREFIX_BYTES) {
    st_fail(err, errlen, "%s: file is %lld bytes, too small for a safetensors file", path, (long long)st.st_size);
  } else if (pread_full(fd, prefix, sizeof prefix, 0) != 0) {
    st_fail(err, errlen, "%s: cannot read the header length: %s", path, strerror(errno));
  } else {
    uint64_t file_size = (uint64_t)st.st_size, header_len = load_le64(prefix);
    if (check_header_len(path, header_len, file_size, err, errlen) == 0) {
      header = mallocCheck((size_t)header_len + 1);
      if (pread_full(fd, header, (size_t)header_len, ST_LEN_PREFIX_BYTES) != 0)
        st_fail(err, errlen, "%s: cannot read the %" PRIu64 "-byte header: %s", path, header_len, strerror(errno));
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
      return st_fail(err, errlen, "%s: weight_map says tensor '%s' is in '%s', but that file has no such tensor",
                     index_path, quotable(e->string, q, sizeof q), e->valuestring);
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
      return st_fail(err, errlen, "%s: weight_map entry '%s' must name a shard file in the same folder", index_path,
                     quotable(e->string, q, sizeof q));
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
  if (!text) return st_fail(err, errlen, "%s: cannot read: %s", index_path, strerror(errno));
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  const cJSON *weight_map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  int rc = 0;
  if (!root) rc = st_fail(err, errlen, "%s: not valid JSON", index_path);
  else if (!cJSON_IsObject(weight_map))
    rc = st_fail(err, errlen, "%s: missing \"weight_map\" object (tensor name -> shard file)", index_path);
  char **shards = NULL;
  int nshards = 0;
  if (rc == 0) rc = collect_shards(weight_map, index_path, &shards, &nshards, err, errlen);
  if (rc == 0 && nshards == 0) rc = st_fail(err, errlen, "%s: \"weight_map\" is empty", index_path);
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
    rc = st_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  } else if (S_ISDIR(st.st_mode)) {
    char *index = join_path(path, ST_INDEX_FILE), *single = join_path(path, ST_SINGLE_FILE);
    if (is_file(single)) rc = open_single_file(a, single, err, errlen);
    else if (is_file(index)) rc = open_sharded(a, index, err, errlen);
    else rc = st_fail(err, errlen, "%s: folder has neither " ST_SINGLE_FILE " nor " ST_INDEX_FILE, path);
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
    return st_fail(err, errlen, "tensor '%s': file index %d is not in this archive", t->name, t->file_index);
  const char *path = a->files[t->file_index];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return st_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  int rc = read_tensor_fd(fd, t, dst);
  int saved = errno;
  close(fd);
  if (rc != 0) {
    char q[QUOTABLE_BUF];
    return st_fail(err, errlen, "%s: tensor '%s': cannot read %" PRIu64 " bytes at offset %" PRIu64 ": %s%s", path,
                   quotable(t->name, q, sizeof q), t->nbytes, t->offset, strerror(saved),
                   saved == EIO ? " (file truncated?)" : "");
  }
  return 0;
}

// ---- writer -------------------------------------------------------------------------------------

typedef struct {
  char *name;
  sn_dtype dtype;
  int ndim;           // -1: the caller passed an invalid shape (reported by write)
  int64_t shape[SN_ST_MAX_DIMS];
  int64_t numel;
  const float *data;
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

void sn_st_writer_add(sn_st_writer *w, const char *name, sn_dtype dtype, int ndim, const int64_t *shape,
                      const float *data) {
  st_writer_entry e = {strdupCheck(name), dtype, ndim, {0}, 1, data};
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
    quotable(e->name, q, sizeof q);
    if (!e->name[0] || strcmp(e->name, ST_METADATA_KEY) == 0 ||
        !utf8_valid((const unsigned char *)e->name, strlen(e->name)))
      return st_fail(err, errlen, "%s: cannot write tensor '%s': the name must be non-empty UTF-8, not "
                     "\"" ST_METADATA_KEY "\"", path, q);
    if (e->ndim < 0) return st_fail(err, errlen, "%s: cannot write tensor '%s': invalid shape", path, q);
    if (!dtype_name(e->dtype)) return st_fail(err, errlen, "%s: cannot write tensor '%s': unknown dtype", path, q);
    if (e->numel > 0 && !e->data) return st_fail(err, errlen, "%s: cannot write tensor '%s': no data", path, q);
    for (int j = 0; j < i; j++)
      if (strcmp(w->entries[j].name, e->name) == 0)
        return st_fail(err, errlen, "%s: cannot write tensor '%s' twice", path, q);
  }
  for (int i = 0; i < w->nmeta; i++)
    if (!utf8_valid((const unsigned char *)w->meta[i].key, strlen(w->meta[i].key)) ||
        !utf8_valid((const unsigned char *)w->meta[i].value, strlen(w->meta[i].value)))
      return st_fail(err, errlen, "%s: cannot write metadata '%s': not valid UTF-8", path, w->meta[i].key);
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
    uint64_t nbytes = (uint64_t)e->numel * (uint64_t)dtype_size(e->dtype);
    buf_puts(b, ",");
    buf_json_string(b, e->name);
    buf_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(e->dtype));
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

static int write_tensor_data(int fd, const st_writer_entry *e, uint16_t *chunk) {
  if (e->dtype == SN_DTYPE_F32) return write_full(fd, e->data, (size_t)e->numel * sizeof(float));
  for (int64_t done = 0; done < e->numel;) {
    size_t n = (size_t)SN_MIN((int64_t)ST_IO_CHUNK_ELEMS, e->numel - done);
    for (size_t i = 0; i < n; i++)
      chunk[i] = e->dtype == SN_DTYPE_BF16 ? sn_f32_to_bf16(e->data[done + i]) : sn_f32_to_f16(e->data[done + i]);
    if (write_full(fd, chunk, n * sizeof *chunk) != 0) return -1;
    done += (int64_t)n;
  }
  return 0;
}

static int write_stream(int fd, const sn_st_writer *w, const st_buf *header) {
  unsigned char prefix[ST_LEN_PREFIX_BYTES];
  for (int i = 0; i < ST_LEN_PREFIX_BYTES; i++) prefix[i] = (unsigned char)((uint64_t)header->len >> (8 * i));
  if (write_full(fd, prefix, sizeof prefix) != 0 || write_full(fd, header->s, header->len) != 0) return -1;
  uint16_t *chunk = mallocCheck(ST_IO_CHUNK_ELEMS * sizeof *chunk);
  int rc = 0;
  for (int i = 0; i < w->n && rc == 0; i++) rc = write_tensor_data(fd, &w->entries[i], chunk);
  free(chunk);
  return rc;
}

int sn_st_writer_write(sn_st_writer *w, const char *path, char *err, size_t errlen) {
  if (check_writer_entries(w, path, err, errlen)) return -1;
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
    return st_fail(err, errlen, "%s: path too long", path);
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
    return st_fail(err, errlen, "%s: cannot write%s%s: %s", path, fd < 0 ? " the temp file " : "",
                   fd < 0 ? tmp : "", strerror(saved));
  }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  if (sn_fsync_dir(dirname(dir)) != 0)
    return st_fail(err, errlen, "%s: written, but syncing its folder failed: %s", path, strerror(errno));
  return 0;
}
