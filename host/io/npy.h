// NumPy .npy files (format version 1.0) of little-endian float32 or int32 arrays: embeddings out
// of sn_embed, reference fixtures into the tests. Row-major (C order) only.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define SN_NPY_MAX_DIMS 4

typedef enum { SN_NPY_F32 = 0, SN_NPY_I32 = 1 } sn_npy_dtype;

typedef struct {
  sn_npy_dtype dtype;
  int ndim;                         // 0 for a scalar
  int64_t shape[SN_NPY_MAX_DIMS];
  int64_t numel;
  void *data;                       // numel float or int32_t values (malloc'd)
} sn_npy_array;

// Writes an array durably (temp file, fsync, rename), header padded so the data starts at a
// multiple of 64 bytes as numpy does. Returns 0, or -1 with err naming the path.
int sn_npy_write(const char *path, sn_npy_dtype dtype, int ndim, const int64_t *shape,
                 const void *data, char *err, size_t errlen);

// Reads '<f4' or '<i4' (and '<f8' / '<i8', converted to float32 / int32, since numpy's defaults
// are 64-bit). Returns 0, or -1 with err naming the path and what is wrong.
int sn_npy_read(const char *path, sn_npy_array *out, char *err, size_t errlen);
void sn_npy_free(sn_npy_array *a);
