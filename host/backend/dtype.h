// Element types of tensors and of collective buffers: the one definition shared by the op table
// (host/backend/ops.h) and the communicator (dist/), which must know dtypes but nothing of ops or models.
#pragma once
#include <stddef.h>

typedef enum { SN_DTYPE_F32 = 0, SN_DTYPE_BF16 = 1, SN_DTYPE_F16 = 2 } sn_dtype;

// Bytes of one element.
static inline size_t sn_dtype_size(sn_dtype d) { return d == SN_DTYPE_F32 ? 4 : 2; }

// "fp32" | "bf16" | "fp16", for messages.
static inline const char *sn_dtype_name(sn_dtype d) {
  return d == SN_DTYPE_BF16 ? "bf16" : d == SN_DTYPE_F16 ? "fp16" : "fp32";
}
