// .npy format 1.0: magic "\x93NUMPY", version bytes 1 0, uint16 little-endian header length,
// then a Python dict literal {'descr': ..., 'fortran_order': ..., 'shape': (...), } padded with
// spaces and ending in '\n', then the raw data.
#include "npy.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_PREAMBLE_V1 10  // magic + 2 version bytes + uint16 header length
#define NPY_PREAMBLE_V2 12  // ... uint32 header length (read only)
#define NPY_ALIGN 64
#define NPY_DICT_MAX 1024


int sn_npy_write(const char *path, sn_npy_dtype dtype, int ndim, const int64_t *shape,
                 const void *data, char *err, size_t errlen) {
  if (ndim < 0 || ndim > SN_NPY_MAX_DIMS) return sn_errorf(err, errlen, "%s: %d dimensions unsupported", path, ndim);
  char dict[NPY_DICT_MAX];
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                   dtype == SN_NPY_F32 ? "<f4" : "<i4");
  size_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return sn_errorf(err, errlen, "%s: negative dimension %lld", path, (long long)shape[i]);
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)shape[i],
                  (ndim > 1 && i + 1 < ndim) ? " " : "");
    numel *= (size_t)shape[i];
  }
  // Python spells a 1-tuple "(5,)" and others "(3, 4)": drop the trailing comma unless 1-D.
  if (ndim > 1) n--;
  n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
  // pad with spaces so that preamble + dict + '\n' is a multiple of NPY_ALIGN
  size_t header = NPY_PREAMBLE_V1 + (size_t)n + 1;
  size_t padded = SN_CEIL_DIV(header, NPY_ALIGN) * NPY_ALIGN;
  size_t dict_len = padded - NPY_PREAMBLE_V1;
  size_t data_bytes = numel * 4;  // float32 and int32 alike
  unsigned char *buf = mallocCheck(padded + data_bytes);
  memcpy(buf, NPY_MAGIC, NPY_MAGIC_LEN);
  buf[6] = 1;
  buf[7] = 0;
  buf[8] = (unsigned char)(dict_len & 0xff);
  buf[9] = (unsigned char)(dict_len >> 8);
  memcpy(buf + NPY_PREAMBLE_V1, dict, (size_t)n);
  memset(buf + NPY_PREAMBLE_V1 + n, ' ', dict_len - (size_t)n - 1);
  buf[padded - 1] = '\n';
  if (data_bytes) memcpy(buf + padded, data, data_bytes);  // little-endian hosts only (x86, arm64)
  int rc = sn_write_file_atomic(path, buf, padded + data_bytes);
  free(buf);
  if (rc != 0) return sn_errorf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
  return 0;
}

// Finds 'key': in the header dict and returns the text after it (leading spaces skipped).
static const char *dict_value(const char *dict, const char *key) {
  char quoted[64];
  snprintf(quoted, sizeof quoted, "'%s':", key);
  const char *p = strstr(dict, quoted);
  if (!p) return NULL;
  p += strlen(quoted);
  while (*p == ' ') p++;
  return p;
}

static int parse_shape(const char *p, sn_npy_array *out, const char *path, char *err, size_t errlen) {
  if (*p != '(') return sn_errorf(err, errlen, "%s: npy header 'shape' is not a tuple", path);
  p++;
  out->ndim = 0;
  out->numel = 1;
  for (;;) {
    while (*p == ' ' || *p == ',') p++;
    if (*p == ')') break;
    if (out->ndim == SN_NPY_MAX_DIMS)
      return sn_errorf(err, errlen, "%s: more than %d dimensions", path, SN_NPY_MAX_DIMS);
    char *end;
    errno = 0;
    long long d = strtoll(p, &end, 10);
    if (end == p || errno || d < 0 || d > INT32_MAX)
      return sn_errorf(err, errlen, "%s: npy header has a bad dimension near \"%.16s\"", path, p);
    out->shape[out->ndim++] = d;
    if (d && out->numel > INT64_MAX / d) return sn_errorf(err, errlen, "%s: array too large", path);
    out->numel *= d;
    p = end;
  }
  return 0;
}

int sn_npy_read(const char *path, sn_npy_array *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  size_t len = 0;
  char *file = sn_read_file(path, &len);
  if (!file) return sn_errorf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
  const unsigned char *u = (const unsigned char *)file;
  int rc = -1;
  if (len < NPY_PREAMBLE_V1 || memcmp(file, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
    sn_errorf(err, errlen, "%s: not a .npy file (no \\x93NUMPY magic)", path);
    goto done;
  }
  size_t preamble, dict_len;
  if (u[6] == 1) {
    preamble = NPY_PREAMBLE_V1;
    dict_len = (size_t)u[8] | ((size_t)u[9] << 8);
  } else if ((u[6] == 2 || u[6] == 3) && len >= NPY_PREAMBLE_V2) {
    preamble = NPY_PREAMBLE_V2;
    dict_len = (size_t)u[8] | ((size_t)u[9] << 8) | ((size_t)u[10] << 16) | ((size_t)u[11] << 24);
  } else {
    sn_errorf(err, errlen, "%s: unsupported .npy version %d.%d", path, u[6], u[7]);
    goto done;
  }
  if (dict_len > len - preamble || dict_len >= NPY_DICT_MAX) {
    sn_errorf(err, errlen, "%s: .npy header length %zu does not fit the file (%zu bytes)", path, dict_len, len);
    goto done;
  }
  char dict[NPY_DICT_MAX];
  memcpy(dict, file + preamble, dict_len);
  dict[dict_len] = '\0';

  const char *descr = dict_value(dict, "descr");
  const char *fortran = dict_value(dict, "fortran_order");
  const char *shape = dict_value(dict, "shape");
  if (!descr || !fortran || !shape) {
    sn_errorf(err, errlen, "%s: .npy header lacks descr, fortran_order or shape: %s", path, dict);
    goto done;
  }
  if (strncmp(fortran, "False", 5) != 0) {
    sn_errorf(err, errlen, "%s: Fortran-order arrays are not supported (save with C order)", path);
    goto done;
  }
  int src_bytes;
  if (strncmp(descr, "'<f4'", 5) == 0) {
    out->dtype = SN_NPY_F32, src_bytes = 4;
  } else if (strncmp(descr, "'<i4'", 5) == 0) {
    out->dtype = SN_NPY_I32, src_bytes = 4;
  } else if (strncmp(descr, "'<f8'", 5) == 0) {
    out->dtype = SN_NPY_F32, src_bytes = 8;
  } else if (strncmp(descr, "'<i8'", 5) == 0) {
    out->dtype = SN_NPY_I32, src_bytes = 8;
  } else {
    const char *close_quote = *descr == '\'' ? strchr(descr + 1, '\'') : NULL;
    int shown = close_quote ? (int)(close_quote - descr + 1) : 8;
    sn_errorf(err, errlen, "%s: dtype %.*s unsupported (want '<f4', '<i4', '<f8' or '<i8')", path, shown, descr);
    goto done;
  }
  if (parse_shape(shape, out, path, err, errlen) != 0) goto done;
  const size_t data_off = preamble + dict_len;
  const size_t need = (size_t)out->numel * (size_t)src_bytes;
  if (len - data_off != need) {
    sn_errorf(err, errlen, "%s: data is %zu bytes, shape and dtype need %zu", path, len - data_off, need);
    goto done;
  }
  out->data = mallocCheck(SN_MAX((size_t)out->numel, (size_t)1) * 4);
  const unsigned char *src = u + data_off;
  if (src_bytes == 4) {
    memcpy(out->data, src, need);
  } else {
    for (int64_t i = 0; i < out->numel; i++) {
      if (out->dtype == SN_NPY_F32) {
        double v;
        memcpy(&v, src + 8 * i, 8);
        ((float *)out->data)[i] = (float)v;
      } else {
        int64_t v;
        memcpy(&v, src + 8 * i, 8);
        if (v < INT32_MIN || v > INT32_MAX) {
          sn_errorf(err, errlen, "%s: element %lld = %lld does not fit int32", path, (long long)i, (long long)v);
          free(out->data);
          out->data = NULL;
          goto done;
        }
        ((int32_t *)out->data)[i] = (int32_t)v;
      }
    }
  }
  rc = 0;
done:
  free(file);
  return rc;
}

void sn_npy_free(sn_npy_array *a) {
  free(a->data);
  a->data = NULL;
}
