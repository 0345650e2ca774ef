// safetensors reading and writing (the format `transformers` and the `safetensors` library use):
// 8-byte little-endian header length N, N bytes of JSON header, then the data region. The header
// maps tensor name → {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
// region) plus an optional "__metadata__" object of string → string.
// A model folder holds model.safetensors, or model.safetensors.index.json naming shard files.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define SN_ST_MAX_DIMS 8

typedef struct {
  char *name;        // as written in the file
  sn_dtype dtype;    // F32, BF16 or F16 (others are rejected with an error naming the tensor, except
                     // integer "*position_ids" buffers of old BERT checkpoints, which are skipped)
  int ndim;
  int64_t shape[SN_ST_MAX_DIMS];
  int64_t numel;
  int file_index;    // into sn_st_archive.files
  uint64_t offset;   // absolute byte offset in that file
  uint64_t nbytes;
} sn_st_tensor;

typedef struct {
  int nfiles;
  char **files;      // paths of the shard files
  int ntensors;
  sn_st_tensor *tensors;
} sn_st_archive;

// Parses one safetensors header. buf holds the whole header JSON (header_len bytes, not
// NUL-terminated); file_size is the size of the whole file, for bounds checks. Validates dtypes,
// shapes, offsets (in range, consistent with shape × dtype size, not overlapping), UTF-8 names.
// Appends tensors to *a with file_index. Returns 0, or -1 with a message in err naming `path` and
// the tensor or field. Never exits: this is the function the fuzz target drives.
int sn_st_parse_header(sn_st_archive *a, const char *buf, size_t header_len, uint64_t file_size,
                       int file_index, const char *path, char *err, size_t errlen);

// Opens a model folder (model.safetensors or model.safetensors.index.json) or a single .safetensors
// file. Returns 0, or -1 with err naming the file and problem.
int sn_st_open(sn_st_archive *a, const char *path, char *err, size_t errlen);
void sn_st_close(sn_st_archive *a);

// Finds a tensor by name, also trying with and without the "model." prefix (and BERT's "bert.",
// which checkpoints saved from BertForMaskedLM & co. carry). NULL when absent.
const sn_st_tensor *sn_st_find(const sn_st_archive *a, const char *name);

// Reads a tensor into host fp32 (converting BF16/F16). Returns 0, or -1 with err.
int sn_st_read_f32(const sn_st_archive *a, const sn_st_tensor *t, float *dst, char *err, size_t errlen);
// The same, for weights that a model computes with: also -1 when a value is NaN or infinite, err
// naming the file, the tensor, the first bad element's index and its value (a NaN weight would
// otherwise give NaN embeddings and a run that "succeeds").
int sn_st_read_f32_finite(const sn_st_archive *a, const sn_st_tensor *t, float *dst, char *err, size_t errlen);

// Writer: collect tensors (host fp32 data, written as `dtype`), then write one file atomically
// (temp file, fsync, rename), streaming the data. The header is padded with spaces so the data
// region starts 8-byte aligned, as the safetensors library does; tensors are packed back to back in
// insertion order (that library rejects gaps between tensors).
typedef struct sn_st_writer sn_st_writer;
sn_st_writer *sn_st_writer_new(void);
void sn_st_writer_metadata(sn_st_writer *w, const char *key, const char *value);
// The writer keeps the pointer `data` (numel floats) until write; it does not copy.
void sn_st_writer_add(sn_st_writer *w, const char *name, sn_dtype dtype, int ndim,
                      const int64_t *shape, const float *data);
// A tensor whose data the writer asks for while it writes, a chunk at a time: source(ctx, start,
// count, dst) puts its fp32 elements [start, start + count) into dst. For data that is not in host
// memory (a model's weights on the device): a save then needs one chunk of host memory, not the
// whole model. ctx is kept until write.
typedef void (*sn_st_source)(const void *ctx, int64_t start, int64_t count, float *dst);
void sn_st_writer_add_source(sn_st_writer *w, const char *name, sn_dtype dtype, int ndim, const int64_t *shape,
                             sn_st_source source, const void *ctx);
// Returns 0, or -1 with err (errno-based message naming path); an existing file at path is
// untouched on failure.
int sn_st_writer_write(sn_st_writer *w, const char *path, char *err, size_t errlen);
void sn_st_writer_free(sn_st_writer *w);

// fp32 ↔ bf16/f16 conversions used by the reader, the writer and the CPU backend.
uint16_t sn_f32_to_bf16(float f);  // round to nearest even, NaN preserved
float sn_bf16_to_f32(uint16_t h);
uint16_t sn_f32_to_f16(float f);
float sn_f16_to_f32(uint16_t h);
